package role

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
)

// The EndpointSlice that kube-apiserver keeps of its own endpoints (the
// kubernetes Service's), named like the Service. The manifests' RBAC
// grants exactly this object, so it is watched by name.
const (
	apiEndpointsNamespace = "default"
	apiEndpointsName      = "kubernetes"
)

// apiEndpoints is what the endpoints informer caches of the API server's
// EndpointSlice: its ready endpoints' addresses with the https port.
type apiEndpoints struct {
	metav1.ObjectMeta
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
	out := &apiEndpoints{ObjectMeta: metav1.ObjectMeta{
		Name:            strings.Clone(es.Name),
		Namespace:       strings.Clone(es.Namespace),
		ResourceVersion: strings.Clone(es.ResourceVersion),
	}}
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

// endpointsInformer is the informer on the API server's EndpointSlice.
func (w *Watcher) endpointsInformer() (cache.SharedIndexInformer, error) {
	client := w.client.DiscoveryV1().EndpointSlices(apiEndpointsNamespace)
	sel := fields.OneTermEqualSelector(metav1.ObjectNameField, apiEndpointsName).String()
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = sel
			l, err := client.List(ctx, o)
			w.endpointsResult(ctx, err)
			return l, err
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = sel
			wi, err := client.Watch(ctx, o)
			w.endpointsResult(ctx, err)
			return wi, err
		},
	}
	inf := cache.NewSharedIndexInformer(cache.ToListWatcherWithWatchListSemantics(lw, w.client),
		&discoveryv1.EndpointSlice{}, 0, cache.Indexers{})
	if err := inf.SetTransform(toAPIEndpoints); err != nil {
		return nil, fmt.Errorf("role: API server endpoints informer: %w", err)
	}
	if err := inf.SetWatchErrorHandlerWithContext(func(ctx context.Context, _ *cache.Reflector, err error) {
		w.endpointsResult(ctx, err)
	}); err != nil {
		return nil, fmt.Errorf("role: API server endpoints informer: %w", err)
	}
	changed := func(any) { w.update(func(in *inbox) { in.endpointsGen++ }) }
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: changed,
		UpdateFunc: func(old, obj any) {
			o, ok1 := old.(*apiEndpoints)
			n, ok2 := obj.(*apiEndpoints)
			if ok1 && ok2 && slices.Equal(o.Endpoints, n.Endpoints) {
				return
			}
			changed(obj)
		},
		DeleteFunc: changed,
	}); err != nil {
		return nil, fmt.Errorf("role: API server endpoints informer: %w", err)
	}
	return inf, nil
}

// endpointsErrorGrace is how long the EndpointSlice watch may fail before
// it is a warning: right after an API server (re)start its RBAC cache is
// not filled yet and refuses everything for a moment.
const endpointsErrorGrace = 30 * time.Second

// endpointsResult records the outcome of an EndpointSlice list or watch
// call. An error is logged once, as a warning, when it persists for
// endpointsErrorGrace (the node watches already report an unreachable API
// server; a cluster whose RBAC does not grant the slice still gets every
// other bypass); a success ends it.
func (w *Watcher) endpointsResult(ctx context.Context, err error) {
	if ctx.Err() != nil || (err != nil && (apierrors.IsResourceExpired(err) || apierrors.IsGone(err))) {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	in := &w.in
	if err == nil {
		if in.endpointsWarned {
			w.log.Info("watching the API server's EndpointSlice default/kubernetes again")
		}
		in.endpointsErrSince, in.endpointsWarned = time.Time{}, false
		return
	}
	now := w.clock.Now()
	if in.endpointsErrSince.IsZero() {
		in.endpointsErrSince = now
	}
	if !in.endpointsWarned && now.Sub(in.endpointsErrSince) >= endpointsErrorGrace {
		in.endpointsWarned = true
		w.log.Warn("cannot watch the API server's EndpointSlice default/kubernetes; its endpoints are not bypassed until it works",
			"since", in.endpointsErrSince, "err", err)
		return
	}
	w.log.Debug("EndpointSlice default/kubernetes: list or watch failed", "err", err)
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
