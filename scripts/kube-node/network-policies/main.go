// The NetworkPolicy enforcer of the throwaway cluster's real node (tests only):
// sigs.k8s.io/kube-network-policies' controller (pkg/networkpolicy, v0.8.0), started with a
// kubeconfig instead of the in-cluster config its own cmd/ needs. It runs inside the node's
// network namespace (scripts/kube): nftables rules there send the first packet of each
// connection from or to a local pod that a NetworkPolicy selects to this process through
// NFQUEUE; it answers accept or drop from the policies, namespaces and pods it watches.
//
// This kernel has no nft `queue` expression (CONFIG_NFT_QUEUE unset), but has xt_NFQUEUE and
// nft_compat: scripts/kube-node/patch-kube-network-policies.sh swaps the expression for the
// xtables NFQUEUE target (what `iptables -j NFQUEUE` installs). NRI is off (containerd 1.6 has
// none), and so is the DNS-race workaround (fixed in kernels >= 6.12).
package main

import (
	"context"
	"flag"
	"os"
	"os/signal"
	"syscall"
	"time"

	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"sigs.k8s.io/kube-network-policies/pkg/networkpolicy"
)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig")
	node := flag.String("node", "", "the node whose pods this enforcer guards")
	queue := flag.Int("nfqueue-id", 100, "NFQUEUE number")
	failOpen := flag.Bool("fail-open", false, "accept packets while this process is not running")
	klog.InitFlags(nil)
	flag.Parse()
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		klog.Fatal(err)
	}
	client := kubernetes.NewForConfigOrDie(cfg)
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	factory := informers.NewSharedInformerFactory(client, 0)
	c, err := networkpolicy.NewController(client,
		factory.Networking().V1().NetworkPolicies(), factory.Core().V1().Namespaces(), factory.Core().V1().Pods(),
		nil, nil, nil, nil,
		networkpolicy.Config{
			QueueID: *queue, NodeName: *node, FailOpen: *failOpen,
			NetfilterBug1766Fix: false, NRIdisabled: true,
		})
	if err != nil {
		klog.Fatal(err)
	}
	go func() {
		if err := c.Run(ctx); err != nil {
			klog.Error(err)
			cancel()
		}
	}()
	factory.Start(ctx.Done())
	<-ctx.Done()
	time.Sleep(time.Second) // Run removes its nftables table on the way out
}
