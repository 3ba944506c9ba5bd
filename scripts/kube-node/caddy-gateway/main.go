// caddy-gateway: the throwaway cluster's Gateway API and Ingress controller (tests only), with
// Caddy as its data plane. It watches GatewayClasses whose controllerName is --controller-name,
// their Gateways and the HTTPRoutes attached to them, and the Ingresses of every IngressClass
// whose spec.controller is --controller-name; it renders one Caddy JSON config from all of them,
// loads it through Caddy's admin API (a unix socket) when it changed, and writes the status a
// Gateway API / Ingress controller owes:
//
//   - GatewayClass: Accepted;
//   - Gateway: Accepted, Programmed, status.addresses (--address); per listener Accepted,
//     ResolvedRefs (the TLS certificateRefs: Secrets of type kubernetes.io/tls), Programmed,
//     Conflicted, supportedKinds and attachedRoutes;
//   - HTTPRoute: per parent Gateway of ours, Accepted (sectionName, allowedRoutes, hostnames)
//     and ResolvedRefs (backendRefs to Services and their ports);
//   - Ingress: status.loadBalancer.ingress (--address).
//
// Routing: to the Service's ClusterIP and port (kube-proxy runs where Caddy does). Caddy's
// reverse_proxy passes WebSocket upgrades and sets no idle timeout on them. HTTPS listeners
// terminate TLS with the referenced Secret, chosen by SNI; Ingress TLS the same with spec.tls.
// Supported HTTPRoute matches: path (PathPrefix, Exact, RegularExpression), headers (Exact),
// method. Filters, weights, timeouts and ReferenceGrants are not implemented: a cross-namespace
// reference is reported RefNotPermitted.
//
// Caddy (v2.11.9, built by scripts/kube) closes proxied WebSockets when its config is reloaded,
// unless reverse_proxy's stream_close_delay keeps them: set to --stream-close-delay (1 h, the
// model's WebSocket timeout), so adding a tenant's route does not cut another tenant's open
// WebSockets. (Debian's caddy 2.6.2 has no such option: every reload sent 1001 "going away".)
// The config is also loaded only when its bytes change: routes go to ClusterIPs, which pod
// restarts do not change.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	gw "sigs.k8s.io/gateway-api/apis/v1"
)

var (
	gvrClass = schema.GroupVersionResource{Group: gw.GroupName, Version: "v1", Resource: "gatewayclasses"}
	gvrGW    = schema.GroupVersionResource{Group: gw.GroupName, Version: "v1", Resource: "gateways"}
	gvrRoute = schema.GroupVersionResource{Group: gw.GroupName, Version: "v1", Resource: "httproutes"}
)

type controller struct {
	name        gw.GatewayController
	address     string
	adminSock   string
	storage     string
	ingressTLS  int
	ingressTCP  int
	streamDelay string
	kube        kubernetes.Interface
	dyn         dynamic.Interface
	classes     cache.GenericLister
	gateways    cache.GenericLister
	routes      cache.GenericLister
	factory     informers.SharedInformerFactory
	loaded      [32]byte
	loadErr     error
}

func main() {
	c := &controller{}
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig")
	name := flag.String("controller-name", "openhands.dev/caddy-gateway", "GatewayClass controllerName and IngressClass spec.controller")
	flag.StringVar(&c.address, "address", "", "the address published in Gateway and Ingress status (where Caddy listens)")
	flag.StringVar(&c.adminSock, "caddy-admin", "", "Caddy's admin API unix socket")
	flag.StringVar(&c.storage, "caddy-storage", "", "Caddy's storage directory")
	flag.IntVar(&c.ingressTLS, "ingress-https-port", 443, "port serving Ingress rules whose host has spec.tls")
	flag.IntVar(&c.ingressTCP, "ingress-http-port", 80, "port serving the other Ingress rules")
	flag.StringVar(&c.streamDelay, "stream-close-delay", "1h", "how long proxied WebSockets survive a config reload")
	flag.Parse()
	c.name = gw.GatewayController(*name)
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		log.Fatal(err)
	}
	c.kube = kubernetes.NewForConfigOrDie(cfg)
	c.dyn = dynamic.NewForConfigOrDie(cfg)
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()

	poke := make(chan struct{}, 1)
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { notify(poke) },
		UpdateFunc: func(any, any) { notify(poke) },
		DeleteFunc: func(any) { notify(poke) },
	}
	dfactory := dynamicinformer.NewDynamicSharedInformerFactory(c.dyn, 0)
	for _, r := range []struct {
		gvr    schema.GroupVersionResource
		lister *cache.GenericLister
	}{{gvrClass, &c.classes}, {gvrGW, &c.gateways}, {gvrRoute, &c.routes}} {
		inf := dfactory.ForResource(r.gvr)
		inf.Informer().AddEventHandler(handler) //nolint:errcheck
		*r.lister = inf.Lister()
	}
	c.factory = informers.NewSharedInformerFactory(c.kube, 0)
	for _, inf := range []cache.SharedIndexInformer{
		c.factory.Networking().V1().Ingresses().Informer(), c.factory.Networking().V1().IngressClasses().Informer(),
		c.factory.Core().V1().Services().Informer(), c.factory.Core().V1().Secrets().Informer(),
		c.factory.Core().V1().Namespaces().Informer(),
	} {
		inf.AddEventHandler(handler) //nolint:errcheck
	}
	dfactory.Start(ctx.Done())
	c.factory.Start(ctx.Done())
	dfactory.WaitForCacheSync(ctx.Done())
	c.factory.WaitForCacheSync(ctx.Done())
	log.Printf("caddy-gateway %s: caches synced; Caddy admin at %s; publishing %s", c.name, c.adminSock, c.address)
	tick := time.NewTicker(30 * time.Second) // retries what failed (a conflict, Caddy not up yet)
	defer tick.Stop()
	notify(poke)
	for {
		select {
		case <-ctx.Done():
			return
		case <-poke:
		case <-tick.C:
		}
		time.Sleep(100 * time.Millisecond) // gather a burst of events into one pass
		select {
		case <-poke:
		default:
		}
		if err := c.reconcile(ctx); err != nil {
			log.Printf("reconcile: %v", err)
		}
	}
}

func notify(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// ------------------------------------------------------------------ the model of what to serve

type cert struct {
	tag       string
	certPEM   string
	keyPEM    string
	hostnames []string // SNI names (empty: any)
}

type backend struct{ dial string }

type route struct {
	port      int
	tls       bool
	hosts     []string // empty: any host
	pathType  string   // Exact, PathPrefix, RegularExpression
	path      string
	headers   map[string]string
	method    string
	backends  []backend
	status500 bool // no backend resolved: Gateway API says 500
	order     string
	created   time.Time
}

type plan struct {
	certs  []cert
	routes []route
	ports  map[int]bool // port -> TLS
}

// cert: one TLS connection policy (SNI names -> the Secret's certificate). Caddy's certificate
// cache holds each certificate once (by its hash) with the tags of its first load, so the tag is
// the content's hash: two listeners or Ingresses sharing a Secret share it.
func (p *plan) cert(sec *corev1.Secret, hosts []string) {
	sum := sha256.Sum256(append(append([]byte{}, sec.Data[corev1.TLSCertKey]...), sec.Data[corev1.TLSPrivateKeyKey]...))
	p.certs = append(p.certs, cert{tag: fmt.Sprintf("sha256-%x", sum[:12]),
		certPEM: string(sec.Data[corev1.TLSCertKey]), keyPEM: string(sec.Data[corev1.TLSPrivateKeyKey]), hostnames: hosts})
}

// ------------------------------------------------------------------ reconcile

func (c *controller) reconcile(ctx context.Context) error {
	p := &plan{ports: map[int]bool{}}
	ours := map[string]bool{}
	var errs []string
	note := func(err error) {
		if err != nil {
			errs = append(errs, err.Error())
		}
	}

	// GatewayClasses.
	objs, _ := c.classes.List(labels.Everything())
	for _, o := range objs {
		var gc gw.GatewayClass
		if !convert(o, &gc) || gc.Spec.ControllerName != c.name {
			continue
		}
		ours[gc.Name] = true
		st := gc.Status.DeepCopy()
		setCond(&st.Conditions, string(gw.GatewayClassConditionStatusAccepted), true, "Accepted", "handled by caddy-gateway", gc.Generation)
		if !equality.Semantic.DeepEqual(st, &gc.Status) {
			gc.Status = *st
			note(c.updateStatus(ctx, gvrClass, &gc))
		}
	}

	// Gateways and their listeners.
	type listener struct {
		gw       *gw.Gateway
		spec     gw.Listener
		ok       bool
		attached int32
	}
	var listeners []*listener
	gateways := map[string]*gw.Gateway{}
	objs, _ = c.gateways.List(labels.Everything())
	sort.Slice(objs, func(i, j int) bool { return key(objs[i]) < key(objs[j]) })
	portHosts := map[string]string{} // port/hostname -> the first listener that claimed it
	gwStatus := map[string]*gw.GatewayStatus{}
	for _, o := range objs {
		g := &gw.Gateway{}
		if !convert(o, g) || !ours[string(g.Spec.GatewayClassName)] {
			continue
		}
		gateways[g.Namespace+"/"+g.Name] = g
		st := g.Status.DeepCopy()
		var ls []gw.ListenerStatus
		for _, l := range g.Spec.Listeners {
			ls2 := gw.ListenerStatus{Name: l.Name, SupportedKinds: []gw.RouteGroupKind{{Group: ptr(gw.Group(gw.GroupName)), Kind: "HTTPRoute"}}}
			for _, old := range st.Listeners {
				if old.Name == l.Name {
					ls2.Conditions = old.Conditions
				}
			}
			li := &listener{gw: g, spec: l}
			accepted, reason, msg := true, "Accepted", "listening"
			resolved, rreason, rmsg := true, "ResolvedRefs", "references resolved"
			conflicted := false
			hostname := ""
			if l.Hostname != nil {
				hostname = string(*l.Hostname)
			}
			ph := fmt.Sprintf("%d/%s", l.Port, hostname)
			switch l.Protocol {
			case gw.HTTPProtocolType, gw.HTTPSProtocolType:
			default:
				accepted, reason, msg = false, "UnsupportedProtocol", "only HTTP and HTTPS listeners"
				ls2.SupportedKinds = []gw.RouteGroupKind{}
			}
			isTLS := l.Protocol == gw.HTTPSProtocolType
			if prev, dup := portHosts[ph]; dup && accepted {
				conflicted, accepted, reason, msg = true, false, "HostnameConflict", "port and hostname already served by "+prev
			}
			if tls, exists := p.ports[int(l.Port)]; exists && tls != isTLS && accepted {
				conflicted, accepted, reason, msg = true, false, "ProtocolConflict", "port already serves another protocol"
			}
			if accepted && isTLS {
				if l.TLS == nil || len(l.TLS.CertificateRefs) == 0 || (l.TLS.Mode != nil && *l.TLS.Mode != gw.TLSModeTerminate) {
					accepted, reason, msg = false, "Invalid", "HTTPS needs tls.mode Terminate and a certificateRef"
				} else {
					for _, ref := range l.TLS.CertificateRefs {
						ns := g.Namespace
						if ref.Namespace != nil {
							ns = string(*ref.Namespace)
						}
						switch {
						case (ref.Group != nil && *ref.Group != "") || (ref.Kind != nil && *ref.Kind != "Secret"):
							resolved, rreason, rmsg = false, "InvalidCertificateRef", "only core Secrets"
						case ns != g.Namespace:
							resolved, rreason, rmsg = false, "RefNotPermitted", "cross-namespace certificateRefs need a ReferenceGrant (not implemented)"
						default:
							sec, err := c.factory.Core().V1().Secrets().Lister().Secrets(ns).Get(string(ref.Name))
							if err != nil || len(sec.Data[corev1.TLSCertKey]) == 0 || len(sec.Data[corev1.TLSPrivateKeyKey]) == 0 {
								resolved, rreason, rmsg = false, "InvalidCertificateRef", fmt.Sprintf("Secret %s/%s missing or without tls.crt/tls.key", ns, ref.Name)
								continue
							}
							var sni []string
							if hostname != "" {
								sni = []string{hostname}
							}
							p.cert(sec, sni)
						}
					}
				}
			}
			li.ok = accepted && resolved
			if li.ok {
				portHosts[ph] = g.Namespace + "/" + g.Name + "/" + string(l.Name)
				p.ports[int(l.Port)] = isTLS
			}
			setCond(&ls2.Conditions, string(gw.ListenerConditionAccepted), accepted, reason, msg, g.Generation)
			setCond(&ls2.Conditions, string(gw.ListenerConditionResolvedRefs), resolved, rreason, rmsg, g.Generation)
			setCond(&ls2.Conditions, string(gw.ListenerConditionConflicted), conflicted, map[bool]string{true: reason, false: "NoConflicts"}[conflicted], msg, g.Generation)
			setCond(&ls2.Conditions, string(gw.ListenerConditionProgrammed), li.ok, map[bool]string{true: "Programmed", false: "Invalid"}[li.ok], msg, g.Generation)
			ls = append(ls, ls2)
			listeners = append(listeners, li)
		}
		st.Listeners = ls
		gwStatus[g.Namespace+"/"+g.Name] = st
	}

	// HTTPRoutes attached to our Gateways.
	nsLister := c.factory.Core().V1().Namespaces().Lister()
	objs, _ = c.routes.List(labels.Everything())
	for _, o := range objs {
		var r gw.HTTPRoute
		if !convert(o, &r) {
			continue
		}
		st := r.Status.DeepCopy()
		var kept []gw.RouteParentStatus
		for _, ps := range st.Parents {
			if ps.ControllerName != c.name {
				kept = append(kept, ps)
			}
		}
		mine := false
		// Backends: resolved once per route.
		resolved, rreason, rmsg := true, "ResolvedRefs", "backends resolved"
		ruleBackends := make([][]backend, len(r.Spec.Rules))
		for i, rule := range r.Spec.Rules {
			for _, br := range rule.BackendRefs {
				b, reason, err := c.service(r.Namespace, br.BackendObjectReference)
				if err != nil {
					resolved, rreason, rmsg = false, reason, err.Error()
					continue
				}
				ruleBackends[i] = append(ruleBackends[i], b)
			}
		}
		for _, pr := range r.Spec.ParentRefs {
			if (pr.Group != nil && *pr.Group != gw.GroupName) || (pr.Kind != nil && *pr.Kind != "Gateway") {
				continue
			}
			ns := r.Namespace
			if pr.Namespace != nil {
				ns = string(*pr.Namespace)
			}
			g := gateways[ns+"/"+string(pr.Name)]
			if g == nil {
				continue // not ours (or absent): another controller's to report
			}
			mine = true
			accepted, reason, msg := false, "NoMatchingParent", "no listener matches sectionName/port"
			var routeNS *corev1.Namespace
			if n, err := nsLister.Get(r.Namespace); err == nil {
				routeNS = n
			}
			for _, li := range listeners {
				if li.gw != g || !li.ok {
					continue
				}
				if pr.SectionName != nil && *pr.SectionName != li.spec.Name {
					continue
				}
				if pr.Port != nil && *pr.Port != li.spec.Port {
					continue
				}
				if !allowed(li.spec.AllowedRoutes, g.Namespace, routeNS) {
					if !accepted {
						reason, msg = "NotAllowedByListeners", "the listener's allowedRoutes exclude this route"
					}
					continue
				}
				hosts, ok := intersect(li.spec.Hostname, r.Spec.Hostnames)
				if !ok {
					if !accepted {
						reason, msg = "NoMatchingListenerHostname", "no hostname in common with the listener"
					}
					continue
				}
				accepted, reason, msg = true, "Accepted", "attached"
				li.attached++
				for i, rule := range r.Spec.Rules {
					matches := rule.Matches
					if len(matches) == 0 {
						matches = []gw.HTTPRouteMatch{{}}
					}
					for _, m := range matches {
						rt := route{port: int(li.spec.Port), tls: li.spec.Protocol == gw.HTTPSProtocolType, hosts: hosts,
							pathType: "PathPrefix", path: "/", backends: ruleBackends[i], status500: len(ruleBackends[i]) == 0,
							created: r.CreationTimestamp.Time, order: r.Namespace + "/" + r.Name}
						if m.Path != nil {
							if m.Path.Type != nil {
								rt.pathType = string(*m.Path.Type)
							}
							if m.Path.Value != nil {
								rt.path = *m.Path.Value
							}
						}
						for _, h := range m.Headers {
							if h.Type == nil || *h.Type == gw.HeaderMatchExact {
								if rt.headers == nil {
									rt.headers = map[string]string{}
								}
								rt.headers[string(h.Name)] = h.Value
							}
						}
						if m.Method != nil {
							rt.method = string(*m.Method)
						}
						p.routes = append(p.routes, rt)
					}
				}
			}
			ps := gw.RouteParentStatus{ParentRef: pr, ControllerName: c.name}
			for _, old := range st.Parents {
				if old.ControllerName == c.name && equality.Semantic.DeepEqual(old.ParentRef, pr) {
					ps.Conditions = old.Conditions
				}
			}
			setCond(&ps.Conditions, string(gw.RouteConditionAccepted), accepted, reason, msg, r.Generation)
			setCond(&ps.Conditions, string(gw.RouteConditionResolvedRefs), resolved, rreason, rmsg, r.Generation)
			kept = append(kept, ps)
		}
		if !mine && len(kept) == len(st.Parents) {
			continue
		}
		st.Parents = kept
		if st.Parents == nil {
			st.Parents = []gw.RouteParentStatus{}
		}
		if !equality.Semantic.DeepEqual(st, &r.Status) {
			r.Status = *st
			note(c.updateStatus(ctx, gvrRoute, &r))
		}
	}

	// Ingresses of our IngressClasses.
	ingClasses := map[string]bool{}
	defaultClass := ""
	ics, _ := c.factory.Networking().V1().IngressClasses().Lister().List(labels.Everything())
	for _, ic := range ics {
		if ic.Spec.Controller == string(c.name) {
			ingClasses[ic.Name] = true
			if ic.Annotations[networkingv1.AnnotationIsDefaultIngressClass] == "true" {
				defaultClass = ic.Name
			}
		}
	}
	ings, _ := c.factory.Networking().V1().Ingresses().Lister().List(labels.Everything())
	// The lister's order is random: unsorted, an unchanged set of Ingresses renders a different config
	// and every Secret or Service event would reload Caddy (closing idle keep-alive connections).
	sort.Slice(ings, func(i, j int) bool {
		return ings[i].Namespace+"/"+ings[i].Name < ings[j].Namespace+"/"+ings[j].Name
	})
	var ourIngs []*networkingv1.Ingress
	for _, ing := range ings {
		class := ""
		switch {
		case ing.Spec.IngressClassName != nil:
			class = *ing.Spec.IngressClassName
		case ing.Annotations["kubernetes.io/ingress.class"] != "":
			class = ing.Annotations["kubernetes.io/ingress.class"]
		default:
			class = defaultClass
		}
		if !ingClasses[class] {
			continue
		}
		ourIngs = append(ourIngs, ing)
		tlsHosts := map[string]bool{}
		for _, t := range ing.Spec.TLS {
			for _, h := range t.Hosts {
				tlsHosts[h] = true
			}
			if t.SecretName == "" {
				continue
			}
			sec, err := c.factory.Core().V1().Secrets().Lister().Secrets(ing.Namespace).Get(t.SecretName)
			if err != nil || len(sec.Data[corev1.TLSCertKey]) == 0 {
				log.Printf("ingress %s/%s: TLS secret %s missing or without tls.crt", ing.Namespace, ing.Name, t.SecretName)
				continue
			}
			p.cert(sec, t.Hosts)
		}
		add := func(host string, path networkingv1.HTTPIngressPath, be *networkingv1.IngressBackend) {
			port, isTLS := c.ingressTCP, false
			if tlsHosts[host] || (host == "" && len(ing.Spec.TLS) > 0) {
				port, isTLS = c.ingressTLS, true
			}
			if prevTLS, exists := p.ports[port]; exists && prevTLS != isTLS {
				log.Printf("ingress %s/%s: port %d serves the other protocol; rule for %q skipped", ing.Namespace, ing.Name, port, host)
				return
			}
			p.ports[port] = isTLS
			rt := route{port: port, tls: isTLS, pathType: "PathPrefix", path: "/", created: ing.CreationTimestamp.Time,
				order: "~ingress/" + ing.Namespace + "/" + ing.Name}
			if host != "" {
				rt.hosts = []string{host}
			}
			if path.Path != "" {
				rt.path = path.Path
			}
			if path.PathType != nil && *path.PathType == networkingv1.PathTypeExact {
				rt.pathType = "Exact"
			}
			if be != nil && be.Service != nil {
				ref := gw.BackendObjectReference{Name: gw.ObjectName(be.Service.Name)}
				if be.Service.Port.Name != "" {
					b, _, err := c.servicePortName(ing.Namespace, be.Service.Name, be.Service.Port.Name)
					if err == nil {
						rt.backends = []backend{b}
					}
				} else {
					ref.Port = ptr(gw.PortNumber(be.Service.Port.Number))
					if b, _, err := c.service(ing.Namespace, ref); err == nil {
						rt.backends = []backend{b}
					}
				}
			}
			rt.status500 = len(rt.backends) == 0
			if rt.status500 {
				log.Printf("ingress %s/%s: backend for %q%s not resolved (503)", ing.Namespace, ing.Name, host, rt.path)
			}
			p.routes = append(p.routes, rt)
		}
		for _, rule := range ing.Spec.Rules {
			if rule.HTTP == nil {
				continue
			}
			for _, path := range rule.HTTP.Paths {
				add(rule.Host, path, &path.Backend)
			}
		}
		if ing.Spec.DefaultBackend != nil {
			add("", networkingv1.HTTPIngressPath{Path: "/"}, ing.Spec.DefaultBackend)
		}
	}

	// Caddy.
	body := c.caddyConfig(p)
	sum := sha256.Sum256(body)
	if sum != c.loaded || c.loadErr != nil {
		c.loadErr = c.load(body)
		if c.loadErr == nil {
			c.loaded = sum
			log.Printf("caddy: loaded %d routes, %d certificates, ports %v", len(p.routes), len(p.certs), keys(p.ports))
		}
	}
	programmed, preason, pmsg := c.loadErr == nil, "Programmed", "configured in Caddy"
	if c.loadErr != nil {
		programmed, preason, pmsg = false, "Pending", "Caddy refused the config: "+c.loadErr.Error()
		note(c.loadErr)
	}

	// Gateway status (after the load: Programmed says whether Caddy took it).
	for k, g := range gateways {
		st := gwStatus[k]
		for i := range st.Listeners {
			for _, li := range listeners {
				if li.gw == g && li.spec.Name == st.Listeners[i].Name {
					st.Listeners[i].AttachedRoutes = li.attached
					if li.ok && !programmed {
						setCond(&st.Listeners[i].Conditions, string(gw.ListenerConditionProgrammed), false, preason, pmsg, g.Generation)
					}
				}
			}
		}
		setCond(&st.Conditions, string(gw.GatewayConditionAccepted), true, "Accepted", "handled by caddy-gateway", g.Generation)
		setCond(&st.Conditions, string(gw.GatewayConditionProgrammed), programmed, preason, pmsg, g.Generation)
		st.Addresses = []gw.GatewayStatusAddress{{Type: ptr(gw.IPAddressType), Value: c.address}}
		if !equality.Semantic.DeepEqual(st, &g.Status) {
			g.Status = *st
			note(c.updateStatus(ctx, gvrGW, g))
		}
	}
	// Ingress status.
	for _, ing := range ourIngs {
		want := []networkingv1.IngressLoadBalancerIngress{{IP: c.address}}
		if programmed && !equality.Semantic.DeepEqual(ing.Status.LoadBalancer.Ingress, want) {
			cp := ing.DeepCopy()
			cp.Status.LoadBalancer.Ingress = want
			_, err := c.kube.NetworkingV1().Ingresses(ing.Namespace).UpdateStatus(ctx, cp, metav1.UpdateOptions{})
			note(err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

func keys(m map[int]bool) []int {
	var out []int
	for k := range m {
		out = append(out, k)
	}
	sort.Ints(out)
	return out
}

func (c *controller) service(ns string, ref gw.BackendObjectReference) (backend, string, error) {
	if (ref.Group != nil && *ref.Group != "") || (ref.Kind != nil && *ref.Kind != "Service") {
		return backend{}, "InvalidKind", fmt.Errorf("backend %s: only core Services", ref.Name)
	}
	if ref.Namespace != nil && string(*ref.Namespace) != ns {
		return backend{}, "RefNotPermitted", fmt.Errorf("backend %s/%s: cross-namespace backendRefs need a ReferenceGrant (not implemented)", *ref.Namespace, ref.Name)
	}
	svc, err := c.factory.Core().V1().Services().Lister().Services(ns).Get(string(ref.Name))
	if err != nil {
		return backend{}, "BackendNotFound", fmt.Errorf("Service %s/%s not found", ns, ref.Name)
	}
	if ref.Port == nil {
		return backend{}, "UnsupportedValue", fmt.Errorf("backend %s: port is required", ref.Name)
	}
	for _, sp := range svc.Spec.Ports {
		if sp.Port == int32(*ref.Port) {
			return c.dial(svc, sp)
		}
	}
	return backend{}, "BackendNotFound", fmt.Errorf("Service %s/%s has no port %d", ns, ref.Name, *ref.Port)
}

func (c *controller) servicePortName(ns, name, port string) (backend, string, error) {
	svc, err := c.factory.Core().V1().Services().Lister().Services(ns).Get(name)
	if err != nil {
		return backend{}, "BackendNotFound", err
	}
	for _, sp := range svc.Spec.Ports {
		if sp.Name == port {
			return c.dial(svc, sp)
		}
	}
	return backend{}, "BackendNotFound", fmt.Errorf("Service %s/%s has no port named %s", ns, name, port)
}

func (c *controller) dial(svc *corev1.Service, sp corev1.ServicePort) (backend, string, error) {
	ip := svc.Spec.ClusterIP
	if ip == "" || ip == corev1.ClusterIPNone {
		return backend{}, "UnsupportedValue", fmt.Errorf("Service %s/%s has no ClusterIP (headless)", svc.Namespace, svc.Name)
	}
	return backend{dial: net.JoinHostPort(ip, strconv.Itoa(int(sp.Port)))}, "", nil
}

// allowed: a listener's allowedRoutes.namespaces (default Same) against the route's namespace.
func allowed(ar *gw.AllowedRoutes, gwNS string, routeNS *corev1.Namespace) bool {
	if routeNS == nil {
		return false
	}
	if ar != nil {
		for _, k := range ar.Kinds {
			if k.Kind == "HTTPRoute" && (k.Group == nil || *k.Group == gw.GroupName) {
				goto kindOK
			}
		}
		if len(ar.Kinds) > 0 {
			return false
		}
	}
kindOK:
	from := gw.NamespacesFromSame
	var sel *metav1.LabelSelector
	if ar != nil && ar.Namespaces != nil {
		if ar.Namespaces.From != nil {
			from = *ar.Namespaces.From
		}
		sel = ar.Namespaces.Selector
	}
	switch from {
	case gw.NamespacesFromAll:
		return true
	case gw.NamespacesFromSelector:
		s, err := metav1.LabelSelectorAsSelector(sel)
		return err == nil && s.Matches(labels.Set(routeNS.Labels))
	default:
		return routeNS.Name == gwNS
	}
}

// intersect: the hostnames a route serves on a listener (nil: any), and whether any remain.
func intersect(lh *gw.Hostname, rhs []gw.Hostname) ([]string, bool) {
	if lh == nil || *lh == "" {
		var out []string
		for _, h := range rhs {
			out = append(out, string(h))
		}
		return out, true
	}
	l := string(*lh)
	if len(rhs) == 0 {
		return []string{l}, true
	}
	var out []string
	for _, h := range rhs {
		r := string(h)
		switch {
		case r == l:
			out = append(out, r)
		case strings.HasPrefix(l, "*.") && !strings.HasPrefix(r, "*.") && strings.HasSuffix(r, l[1:]):
			out = append(out, r)
		case strings.HasPrefix(r, "*.") && !strings.HasPrefix(l, "*.") && strings.HasSuffix(l, r[1:]):
			out = append(out, l)
		}
	}
	return out, len(out) > 0
}

// ------------------------------------------------------------------ Caddy

type obj = map[string]any

func (c *controller) caddyConfig(p *plan) []byte {
	// Gateway API precedence, roughly: exact paths, then longer prefixes, then more header
	// matches, then a method; then the older route. Exact hosts before wildcards and no host.
	rank := func(r route) int {
		if len(r.hosts) == 0 {
			return 2
		}
		for _, h := range r.hosts {
			if strings.HasPrefix(h, "*") {
				return 1
			}
		}
		return 0
	}
	sort.SliceStable(p.routes, func(i, j int) bool {
		a, b := p.routes[i], p.routes[j]
		if rank(a) != rank(b) {
			return rank(a) < rank(b)
		}
		if (a.pathType == "Exact") != (b.pathType == "Exact") {
			return a.pathType == "Exact"
		}
		if len(a.path) != len(b.path) {
			return len(a.path) > len(b.path)
		}
		if len(a.headers) != len(b.headers) {
			return len(a.headers) > len(b.headers)
		}
		if (a.method != "") != (b.method != "") {
			return a.method != ""
		}
		if !a.created.Equal(b.created) {
			return a.created.Before(b.created)
		}
		return a.order < b.order
	})
	servers := obj{}
	for _, port := range keys(p.ports) {
		isTLS := p.ports[port]
		var routes []any
		for _, r := range p.routes {
			if r.port != port {
				continue
			}
			m := obj{}
			if len(r.hosts) > 0 {
				m["host"] = r.hosts
			}
			switch r.pathType {
			case "Exact":
				m["path"] = []string{r.path}
			case "RegularExpression":
				m["path_regexp"] = obj{"pattern": "^" + r.path + "$"}
			default:
				if p := strings.TrimSuffix(r.path, "/"); p != "" {
					m["path"] = []string{p, p + "/*"}
				}
			}
			if len(r.headers) > 0 {
				h := obj{}
				for k, v := range r.headers {
					h[k] = []string{v}
				}
				m["header"] = h
			}
			if r.method != "" {
				m["method"] = []string{r.method}
			}
			var handle obj
			if r.status500 {
				handle = obj{"handler": "static_response", "status_code": 500}
			} else {
				var ups []any
				for _, b := range r.backends {
					ups = append(ups, obj{"dial": b.dial})
				}
				handle = obj{"handler": "reverse_proxy", "upstreams": ups, "stream_close_delay": c.streamDelay}
			}
			rt := obj{"handle": []any{handle}, "terminal": true}
			if len(m) > 0 {
				rt["match"] = []any{m}
			}
			routes = append(routes, rt)
		}
		srv := obj{"listen": []string{":" + strconv.Itoa(port)}, "protocols": []string{"h1", "h2"},
			"automatic_https": obj{"disable": true}, "routes": routes}
		if routes == nil {
			srv["routes"] = []any{}
		}
		if isTLS {
			var pols []any
			for _, ct := range p.certs {
				pol := obj{"certificate_selection": obj{"any_tag": []string{ct.tag}}}
				if len(ct.hostnames) > 0 {
					pol["match"] = obj{"sni": ct.hostnames}
				}
				pols = append(pols, pol)
			}
			pols = append(pols, obj{}) // any other SNI: a certificate whose names match it
			srv["tls_connection_policies"] = pols
		}
		servers[fmt.Sprintf("port-%d", port)] = srv
	}
	var pems []any
	seen := map[string]bool{}
	for _, ct := range p.certs {
		if !seen[ct.tag] {
			seen[ct.tag] = true
			pems = append(pems, obj{"certificate": ct.certPEM, "key": ct.keyPEM, "tags": []string{ct.tag}})
		}
	}
	cfg := obj{
		"admin":   obj{"listen": "unix/" + c.adminSock, "origins": []string{"caddy"}, "config": obj{"persist": false}},
		"storage": obj{"module": "file_system", "root": c.storage},
		"apps": obj{
			"http": obj{"servers": servers},
			"tls":  obj{"certificates": obj{"load_pem": nonNil(pems)}},
		},
	}
	b, _ := json.Marshal(cfg)
	return b
}

func nonNil(a []any) []any {
	if a == nil {
		return []any{}
	}
	return a
}

func (c *controller) load(body []byte) error {
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", c.adminSock)
		}}}
	req, _ := http.NewRequest(http.MethodPost, "http://caddy/load", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("caddy /load: %s: %s", resp.Status, strings.TrimSpace(string(msg)))
	}
	return nil
}

// ------------------------------------------------------------------ helpers

func ptr[T any](v T) *T { return &v }

func key(o runtime.Object) string {
	u := o.(*unstructured.Unstructured)
	return u.GetCreationTimestamp().UTC().Format(time.RFC3339) + "/" + u.GetNamespace() + "/" + u.GetName()
}

func convert(o runtime.Object, into any) bool {
	u, ok := o.(*unstructured.Unstructured)
	if !ok {
		return false
	}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, into); err != nil {
		log.Printf("%s/%s: %v", u.GetNamespace(), u.GetName(), err)
		return false
	}
	return true
}

var reasonRE = regexp.MustCompile(`^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$`)

func setCond(conds *[]metav1.Condition, typ string, ok bool, reason, msg string, gen int64) {
	status := metav1.ConditionFalse
	if ok {
		status = metav1.ConditionTrue
	}
	if !reasonRE.MatchString(reason) {
		reason = "Unknown"
	}
	meta.SetStatusCondition(conds, metav1.Condition{Type: typ, Status: status, Reason: reason, Message: msg, ObservedGeneration: gen})
}

func (c *controller) updateStatus(ctx context.Context, gvr schema.GroupVersionResource, o any) error {
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(o)
	if err != nil {
		return err
	}
	u := &unstructured.Unstructured{Object: m}
	var ri dynamic.ResourceInterface = c.dyn.Resource(gvr)
	if ns := u.GetNamespace(); ns != "" {
		ri = c.dyn.Resource(gvr).Namespace(ns)
	}
	_, err = ri.UpdateStatus(ctx, u, metav1.UpdateOptions{})
	return err
}
