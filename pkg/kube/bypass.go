package kube

import (
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// cachedMeta is what the transformed caches (nodeAddrs, apiEndpoints,
// serviceCIDRs) keep of an object's metadata: the informer keys objects by
// name and namespace and tells updates from resyncs by the resource
// version. It is no metav1.Object (an ObjectMeta alone is 248 bytes, for
// every Node): GetObjectMeta builds one on demand for meta.Accessor.
type cachedMeta struct {
	Name, Namespace, ResourceVersion string
}

// metaOf copies o's name, namespace and resource version, cloned so that
// the cache never pins the decoded object's memory.
func metaOf(o metav1.Object) cachedMeta {
	return cachedMeta{
		Name:            strings.Clone(o.GetName()),
		Namespace:       strings.Clone(o.GetNamespace()),
		ResourceVersion: strings.Clone(o.GetResourceVersion()),
	}
}

// GetObjectMeta makes the caches' objects metav1.ObjectMetaAccessors,
// which meta.Accessor (the informer's key function) accepts.
func (m *cachedMeta) GetObjectMeta() metav1.Object {
	return &metav1.ObjectMeta{Name: m.Name, Namespace: m.Namespace, ResourceVersion: m.ResourceVersion}
}

// nodeAddrs is what the all-nodes informer caches of another Node: its
// metadata, its InternalIP/ExternalIP addresses, pod CIDRs and readiness.
// Nothing else is kept: with the informer's map entry it is about 300
// bytes per Node (TestAddressCacheSize).
type nodeAddrs struct {
	cachedMeta
	Addrs    []netip.Addr   // sorted, without duplicates
	PodCIDRs []netip.Prefix // spec.podCIDRs, masked, sorted, without duplicates
	Ready    bool           // the Ready condition is True
}

// toNodeAddrs is the all-nodes informer's transform: it replaces a Node by
// its nodeAddrs. It is idempotent, and leaves tombstones and other types
// alone.
func toNodeAddrs(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	out := &nodeAddrs{cachedMeta: metaOf(n)}
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP && a.Type != corev1.NodeExternalIP {
			continue
		}
		ip, err := netip.ParseAddr(a.Address)
		if err != nil {
			continue
		}
		out.Addrs = append(out.Addrs, ip.Unmap().WithZone(""))
	}
	slices.SortFunc(out.Addrs, netip.Addr.Compare)
	out.Addrs = slices.Clip(slices.Compact(out.Addrs))
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			out.Ready = c.Status == corev1.ConditionTrue
		}
	}
	if p, _ := podCIDRs(n); len(p) > 0 {
		out.PodCIDRs = slices.Clip(p)
	}
	return out, nil
}

// toOwnNode is the own-node informer's transform: it keeps the name, the
// resource version, the role label and the pod CIDRs, and drops the rest
// (managed fields, annotations, the image list of the status, ...). It is
// idempotent.
func toOwnNode(label string) func(any) (any, error) {
	return func(obj any) (any, error) {
		n, ok := obj.(*corev1.Node)
		if !ok {
			return obj, nil
		}
		out := &corev1.Node{ObjectMeta: metav1.ObjectMeta{
			Name:            strings.Clone(n.Name),
			ResourceVersion: strings.Clone(n.ResourceVersion),
		}}
		if v, ok := n.Labels[label]; ok {
			out.Labels = map[string]string{label: strings.Clone(v)}
		}
		out.Spec.PodCIDR = strings.Clone(n.Spec.PodCIDR)
		for _, c := range n.Spec.PodCIDRs {
			out.Spec.PodCIDRs = append(out.Spec.PodCIDRs, strings.Clone(c))
		}
		return out, nil
	}
}

// podCIDRs parses a Node's pod CIDRs (spec.podCIDRs, else spec.podCIDR);
// it returns them masked, sorted and without duplicates, and the values it
// could not parse.
func podCIDRs(n *corev1.Node) (prefixes []netip.Prefix, bad []string) {
	raw := n.Spec.PodCIDRs
	if len(raw) == 0 && n.Spec.PodCIDR != "" {
		raw = []string{n.Spec.PodCIDR}
	}
	for _, s := range raw {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			bad = append(bad, s)
			continue
		}
		prefixes = append(prefixes, p.Masked())
	}
	slices.SortFunc(prefixes, comparePrefix)
	return slices.Compact(prefixes), bad
}

// otherNodeAddrs merges the addresses of every cached node but self, and
// of those that are Ready.
func otherNodeAddrs(objs []any, self string) (all, ready []netip.Addr) {
	for _, o := range objs {
		n, ok := o.(*nodeAddrs)
		if !ok || n.Name == self {
			continue
		}
		all = append(all, n.Addrs...)
		if n.Ready {
			ready = append(ready, n.Addrs...)
		}
	}
	for _, s := range []*[]netip.Addr{&all, &ready} {
		slices.SortFunc(*s, netip.Addr.Compare)
		*s = slices.Compact(*s)
	}
	return all, ready
}

// clusterPodCIDRs merges own (this node's, from its own watch, which is
// ahead of the all-nodes cache) with the pod CIDRs of every other cached
// node.
func clusterPodCIDRs(objs []any, self string, own []netip.Prefix) []netip.Prefix {
	out := slices.Clone(own)
	for _, o := range objs {
		if n, ok := o.(*nodeAddrs); ok && n.Name != self {
			out = append(out, n.PodCIDRs...)
		}
	}
	slices.SortFunc(out, comparePrefix)
	return slices.Compact(out)
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}
