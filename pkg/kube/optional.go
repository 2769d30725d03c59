package kube

import (
	"context"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
)

// Optional watches add bypass inputs that Kubernetes knows besides the
// Nodes: the API server's own endpoints and the Service ranges. Their
// failure (an older cluster, RBAC without them) leaves every other bypass
// alone; it is a warning once it lasts optionalErrorGrace.

// The EndpointSlice that kube-apiserver keeps of its own endpoints (the
// kubernetes Service's), named like the Service. The manifests' RBAC
// grants exactly this object, so it is watched by name.
const (
	apiEndpointsNamespace = "default"
	apiEndpointsName      = "kubernetes"
)

// optionalErrorGrace is how long an optional watch may fail before it is
// a warning: right after an API server (re)start its RBAC cache is not
// filled yet and refuses everything for a moment.
const optionalErrorGrace = 30 * time.Second

// optionalWatch is the inbox's state of one optional watch.
type optionalWatch struct {
	gen      uint64    // bumped when what it caches changes
	synced   bool      // its informer has synced once
	errSince time.Time // first of its failing calls; zero while it works
	warned   bool      // its failure was logged as a warning
}

// settled: the first cluster publication waits for it, until it synced or failed
// (a cluster without it must not wait for it).
func (s optionalWatch) settled() bool { return s.synced || !s.errSince.IsZero() }

func endpointsState(in *inbox) *optionalWatch    { return &in.endpoints }
func serviceCIDRsState(in *inbox) *optionalWatch { return &in.serviceCIDRs }

// apiEndpoints is what the endpoints informer caches of the API server's
// EndpointSlice: its ready endpoints' addresses with the https port.
type apiEndpoints struct {
	cachedMeta
	Endpoints []netip.AddrPort // sorted, without duplicates
}

// toAPIEndpoints is the endpoints informer's transform. Endpoints whose
// ready condition is false are left out (nil means ready). The port is
// the one named https, or every port when none is.
func toAPIEndpoints(obj any) (any, error) {
	es, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return obj, nil
	}
	out := &apiEndpoints{cachedMeta: metaOf(es)}
	var ports []uint16
	for _, p := range es.Ports {
		if p.Port == nil || *p.Port <= 0 || *p.Port > 65535 {
			continue
		}
		if p.Name != nil && *p.Name == "https" {
			ports = []uint16{uint16(*p.Port)}
			break
		}
		ports = append(ports, uint16(*p.Port))
	}
	for _, e := range es.Endpoints {
		if e.Conditions.Ready != nil && !*e.Conditions.Ready {
			continue
		}
		for _, a := range e.Addresses {
			ip, err := netip.ParseAddr(a)
			if err != nil {
				continue
			}
			for _, port := range ports {
				out.Endpoints = append(out.Endpoints, netip.AddrPortFrom(ip.Unmap().WithZone(""), port))
			}
		}
	}
	slices.SortFunc(out.Endpoints, netip.AddrPort.Compare)
	out.Endpoints = slices.Clip(slices.Compact(out.Endpoints))
	return out, nil
}

// serviceCIDRs is what the ServiceCIDR informer caches of one
// networking.k8s.io/v1 ServiceCIDR: its ranges.
type serviceCIDRs struct {
	cachedMeta
	CIDRs []netip.Prefix // masked, sorted
}

// toServiceCIDRs is the ServiceCIDR informer's transform.
func toServiceCIDRs(obj any) (any, error) {
	sc, ok := obj.(*networkingv1.ServiceCIDR)
	if !ok {
		return obj, nil
	}
	out := &serviceCIDRs{cachedMeta: metaOf(sc)}
	for _, c := range sc.Spec.CIDRs {
		if p, err := netip.ParsePrefix(c); err == nil {
			out.CIDRs = append(out.CIDRs, p.Masked())
		}
	}
	slices.SortFunc(out.CIDRs, comparePrefix)
	out.CIDRs = slices.Clip(slices.Compact(out.CIDRs))
	return out, nil
}

// endpointsInformer is the informer on the API server's EndpointSlice.
func (w *Watcher) endpointsInformer() (cache.SharedIndexInformer, cache.ResourceEventHandlerRegistration, error) {
	client := w.client.EndpointSlices(apiEndpointsNamespace)
	sel := fields.OneTermEqualSelector(metav1.ObjectNameField, apiEndpointsName).String()
	return w.optionalInformer("the API server's EndpointSlice default/kubernetes", endpointsState,
		func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = sel
			return client.List(ctx, o)
		},
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = sel
			return client.Watch(ctx, o)
		},
		&discoveryv1.EndpointSlice{}, toAPIEndpoints)
}

// serviceCIDRsInformer is the informer on the cluster's ServiceCIDRs.
func (w *Watcher) serviceCIDRsInformer() (cache.SharedIndexInformer, cache.ResourceEventHandlerRegistration, error) {
	client := w.client.ServiceCIDRs()
	return w.optionalInformer("the cluster's ServiceCIDRs", serviceCIDRsState,
		func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return client.List(ctx, o) },
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) { return client.Watch(ctx, o) },
		&networkingv1.ServiceCIDR{}, toServiceCIDRs)
}

// optionalInformer is an informer whose calls report to the optional
// watch which, whose objects are transformed, and whose changes (not its
// resyncs) bump the watch's generation. Its handler registration tells
// when it synced.
func (w *Watcher) optionalInformer(what string, which func(*inbox) *optionalWatch,
	list func(context.Context, metav1.ListOptions) (runtime.Object, error),
	watchFn func(context.Context, metav1.ListOptions) (watch.Interface, error),
	obj runtime.Object, transform cache.TransformFunc) (cache.SharedIndexInformer, cache.ResourceEventHandlerRegistration, error) {
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			l, err := list(ctx, o)
			w.optionalResult(ctx, what, which, err)
			return l, err
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			wi, err := watchFn(ctx, o)
			w.optionalResult(ctx, what, which, err)
			return wi, err
		},
	}
	inf := cache.NewSharedIndexInformer(cache.ToListWatcherWithWatchListSemantics(lw, w.client), obj, 0, cache.Indexers{})
	if err := inf.SetTransform(transform); err != nil {
		return nil, nil, fmt.Errorf("role: %s informer: %w", what, err)
	}
	if err := inf.SetWatchErrorHandlerWithContext(func(ctx context.Context, _ *cache.Reflector, err error) {
		w.optionalResult(ctx, what, which, err)
	}); err != nil {
		return nil, nil, fmt.Errorf("role: %s informer: %w", what, err)
	}
	changed := func(any) { w.update(func(in *inbox) { which(in).gen++ }) }
	reg, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: changed,
		UpdateFunc: func(old, obj any) {
			if reflect.DeepEqual(withoutVersion(old), withoutVersion(obj)) {
				return // a resync or a change of nothing we keep
			}
			changed(obj)
		},
		DeleteFunc: changed,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("role: %s informer: %w", what, err)
	}
	return inf, reg, nil
}

// withoutVersion returns a transformed object without its resource
// version, for comparing what the informer keeps.
func withoutVersion(obj any) any {
	switch o := obj.(type) {
	case *apiEndpoints:
		c := *o
		c.ResourceVersion = ""
		return &c
	case *serviceCIDRs:
		c := *o
		c.ResourceVersion = ""
		return &c
	}
	return obj
}

// optionalResult records the outcome of an optional watch's list or watch
// call: an error is logged once, as a warning, when it persists for
// optionalErrorGrace (the node watches already report an unreachable API
// server); a success ends it.
func (w *Watcher) optionalResult(ctx context.Context, what string, which func(*inbox) *optionalWatch, err error) {
	if ctx.Err() != nil || (err != nil && (apierrors.IsResourceExpired(err) || apierrors.IsGone(err))) {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	s := which(&w.in)
	if err == nil {
		if s.warned {
			w.log.Info("watching " + what + " again")
		}
		s.errSince, s.warned = time.Time{}, false
		return
	}
	now := w.clock.Now()
	if s.errSince.IsZero() {
		s.errSince = now
		// The first cluster publication may have waited for this watch.
		select {
		case w.kick <- struct{}{}:
		default:
		}
	}
	if !s.warned && now.Sub(s.errSince) >= optionalErrorGrace {
		s.warned = true
		w.log.Warn("cannot watch "+what+"; what it tells is not bypassed until it works", "since", s.errSince, "err", err)
		return
	}
	w.log.Debug(what+": list or watch failed", "err", err)
}

// cachedAPIEndpoints merges the endpoints of the cached slices.
func cachedAPIEndpoints(objs []any) []netip.AddrPort {
	var out []netip.AddrPort
	for _, o := range objs {
		if e, ok := o.(*apiEndpoints); ok && e.Name == apiEndpointsName {
			out = append(out, e.Endpoints...)
		}
	}
	slices.SortFunc(out, netip.AddrPort.Compare)
	return slices.Compact(out)
}

// cachedServiceCIDRs merges the ranges of the cached ServiceCIDRs.
func cachedServiceCIDRs(objs []any) []netip.Prefix {
	var out []netip.Prefix
	for _, o := range objs {
		if s, ok := o.(*serviceCIDRs); ok {
			out = append(out, s.CIDRs...)
		}
	}
	slices.SortFunc(out, comparePrefix)
	return slices.Compact(out)
}
