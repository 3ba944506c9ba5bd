// A dynamic provisioner for the throwaway cluster (tests only): for each pending claim of a
// StorageClass naming it, a directory under --root becomes a `local` PersistentVolume pinned
// to the claim's node (the scheduler's selected-node with WaitForFirstConsumer, else --node).
// A `local` volume gets the pod's fsGroup applied by the kubelet, as a cloud disk would; the
// directory starts as root:root 0755, like a fresh filesystem. Released volumes of a Delete
// class are removed with their directory. Polls the API server every 500 ms.
package main

import (
	"context"
	"flag"
	"log"
	"os"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

const (
	selectedNode  = "volume.kubernetes.io/selected-node"
	storageProv   = "volume.kubernetes.io/storage-provisioner"
	provisionedBy = "pv.kubernetes.io/provisioned-by"
)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig")
	name := flag.String("name", "openhands.dev/local-path", "provisioner name (StorageClass.provisioner)")
	root := flag.String("root", "", "directory holding the volumes")
	node := flag.String("node", "", "node for claims of an Immediate class")
	flag.Parse()
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		log.Fatal(err)
	}
	c := kubernetes.NewForConfigOrDie(cfg)
	log.Printf("provisioner %s: volumes under %s", *name, *root)
	for {
		if err := pass(context.Background(), c, *name, *root, *node); err != nil {
			log.Print(err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func pass(ctx context.Context, c *kubernetes.Clientset, name, root, node string) error {
	scs, err := c.StorageV1().StorageClasses().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	classes := map[string]storagev1.StorageClass{}
	for _, sc := range scs.Items {
		if sc.Provisioner == name {
			classes[sc.Name] = sc
		}
	}
	pvcs, err := c.CoreV1().PersistentVolumeClaims("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for i := range pvcs.Items {
		pvc := &pvcs.Items[i]
		if pvc.Status.Phase != corev1.ClaimPending || pvc.Spec.VolumeName != "" || pvc.Spec.StorageClassName == nil ||
			pvc.DeletionTimestamp != nil || pvc.Annotations[storageProv] != name {
			continue
		}
		sc, ok := classes[*pvc.Spec.StorageClassName]
		if !ok {
			continue
		}
		target := node
		if sc.VolumeBindingMode != nil && *sc.VolumeBindingMode == storagev1.VolumeBindingWaitForFirstConsumer {
			target = pvc.Annotations[selectedNode]
			if target == "" {
				continue // the scheduler has not picked a node yet
			}
		}
		if err := provision(ctx, c, name, root, target, &sc, pvc); err != nil {
			log.Printf("claim %s/%s: %v", pvc.Namespace, pvc.Name, err)
		}
	}
	pvs, err := c.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, pv := range pvs.Items {
		if pv.Annotations[provisionedBy] != name || pv.Status.Phase != corev1.VolumeReleased ||
			pv.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete || pv.Spec.Local == nil {
			continue
		}
		if filepath.Dir(pv.Spec.Local.Path) == filepath.Clean(root) {
			if err := os.RemoveAll(pv.Spec.Local.Path); err != nil {
				log.Printf("volume %s: %v", pv.Name, err)
				continue
			}
		}
		err := c.CoreV1().PersistentVolumes().Delete(ctx, pv.Name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			log.Printf("volume %s: %v", pv.Name, err)
			continue
		}
		log.Printf("deleted %s (%s)", pv.Name, pv.Spec.Local.Path)
	}
	return nil
}

func provision(ctx context.Context, c *kubernetes.Clientset, name, root, node string, sc *storagev1.StorageClass,
	pvc *corev1.PersistentVolumeClaim) error {
	pvName := "pvc-" + string(pvc.UID)
	dir := filepath.Join(root, pvName)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	reclaim := corev1.PersistentVolumeReclaimDelete
	if sc.ReclaimPolicy != nil {
		reclaim = *sc.ReclaimPolicy
	}
	mode := corev1.PersistentVolumeFilesystem
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: pvName, Annotations: map[string]string{provisionedBy: name}},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: pvc.Spec.Resources.Requests[corev1.ResourceStorage]},
			AccessModes:                   pvc.Spec.AccessModes,
			PersistentVolumeReclaimPolicy: reclaim,
			StorageClassName:              sc.Name,
			MountOptions:                  sc.MountOptions,
			VolumeMode:                    &mode,
			PersistentVolumeSource:        corev1.PersistentVolumeSource{Local: &corev1.LocalVolumeSource{Path: dir}},
			ClaimRef: &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1",
				Namespace: pvc.Namespace, Name: pvc.Name, UID: pvc.UID, ResourceVersion: pvc.ResourceVersion},
			NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
				MatchExpressions: []corev1.NodeSelectorRequirement{{
					Key: "kubernetes.io/hostname", Operator: corev1.NodeSelectorOpIn, Values: []string{node}}}}}}},
		},
	}
	_, err := c.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	if err == nil {
		log.Printf("provisioned %s for %s/%s on %s (%s)", pvName, pvc.Namespace, pvc.Name, node, dir)
	}
	return err
}
