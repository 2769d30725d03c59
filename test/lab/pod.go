package lab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
)

// Pods. A node can have one pod: a namespace tsl-<id>-<node>-pod behind a
// bridge in the node, wired the way a CNI plugin (bridge + host-local +
// portmap, flannel, k3s) wires one:
//
//	namespace tsl-<id>-<node>-pod       namespace tsl-<id>-<node>
//	eth0 198.18.(128+i).2/24 ==veth== veth-pod -- cni0 198.18.(128+i).1/24    eth0 198.18.0.(10+i)/24
//	default via 198.18.(128+i).1                 ip_forward=1, table inet lab-cni
//
// The wan router has a route to every pod CIDR via its node's LAN address
// (a routed network, as with BGP or cloud routes), so a pod whose node
// does not masquerade reaches the internet with its own address. The
// node's masquerading and marking of pod traffic are in the nftables table
// PodNftTable (see PodNAT, PodOptions.Mark).

// Names of what AddPod creates in the node namespace.
const (
	// PodBridge is the bridge of the pod network in the node namespace.
	PodBridge = "cni0"
	// PodVeth is the node end of the pod's veth, a port of PodBridge.
	PodVeth = "veth-pod"
	// PodNftTable is the node's nftables table (family inet) of pod
	// masquerading and marking. The lab touches no other table.
	PodNftTable = "lab-cni"
)

// PodMTU is the MTU of the bridge and of both ends of the pod's veth.
const PodMTU = 1500

// MaxPodNodes bounds the nodes that can have a pod: node i's pod CIDR is
// 198.18.(128+i).0/24, for i < MaxPodNodes.
const MaxPodNodes = 100

// PodNAT is how a node masquerades the traffic of its pod.
type PodNAT string

const (
	// PodNATEverywhere masquerades traffic from the pod CIDR to anything
	// outside it, whatever the output interface (flannel, k3s,
	// ip-masq-agent defaults): through an exit node, the pod's traffic
	// leaves the node with the node's tailnet address.
	PodNATEverywhere PodNAT = "everywhere"
	// PodNATUplink masquerades only traffic leaving through the node's
	// eth0 (Cilium BPF masquerading, Calico eBPF: bound to the uplink
	// device): through an exit node, the pod's traffic reaches the
	// tailnet interface with the pod's own address.
	PodNATUplink PodNAT = "uplink"
	// PodNATNone never masquerades: the pod reaches the internet with its
	// own address (the wan router routes pod CIDRs).
	PodNATNone PodNAT = "none"
)

func (m PodNAT) valid() bool {
	switch m {
	case PodNATEverywhere, PodNATUplink, PodNATNone:
		return true
	}
	return false
}

// orDefault is m, or PodNATEverywhere when m is empty.
func (m PodNAT) orDefault() PodNAT {
	if m == "" {
		return PodNATEverywhere
	}
	return m
}

// PodOptions configure a pod's node side.
type PodOptions struct {
	// NAT is the node's masquerading of the pod's traffic. Empty means
	// PodNATEverywhere.
	NAT PodNAT
	// Mark, when non-zero, is set as the packet mark (meta mark set) of
	// every packet arriving from the pod on PodBridge, in the node's
	// prerouting at raw priority (-300), before any other table sees it:
	// what a CNI's tc program does (Calico eBPF 0x01000000, Cilium
	// 0x0f000f00).
	Mark uint32
}

// Pod is a pod namespace on a node. It embeds the namespace's helpers
// (Do, DialContext, HTTPGet, EgressIP, Download, Exec, Start, ...), which
// act from inside the pod.
type Pod struct {
	*NetNS
	node *Node
	cidr netip.Prefix

	mu   sync.Mutex // serializes SetNAT and SetMark
	opts PodOptions
}

// PodCIDR is the node's pod CIDR, 198.18.(128+i).0/24 for node i. It is
// the zero Prefix for nodes from MaxPodNodes on, which cannot have a pod.
func (n *Node) PodCIDR() netip.Prefix {
	if n.index < 0 || n.index >= MaxPodNodes {
		return netip.Prefix{}
	}
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(128 + n.index), 0}), 24)
}

// Pod returns the node's pod, or nil.
func (n *Node) Pod() *Pod {
	n.podMu.Lock()
	defer n.podMu.Unlock()
	return n.pod
}

// AddPod creates the node's pod (see the topology above): the pod
// namespace with eth0 at .2 of the node's pod CIDR and a default route via
// .1, the bridge PodBridge at .1 in the node with the pod's veth attached,
// net.ipv4.ip_forward=1 in the node (nodes otherwise start with 0), the
// nftables table PodNftTable for opts, and the wan router's route to the
// pod CIDR via the node. A node has at most one pod; Close removes it with
// the rest of the lab. On error nothing of the pod is left.
func (n *Node) AddPod(opts PodOptions) (_ *Pod, err error) {
	opts.NAT = opts.NAT.orDefault()
	if !opts.NAT.valid() {
		return nil, fmt.Errorf("lab: %s: AddPod: unknown NAT mode %q", n.label, opts.NAT)
	}
	cidr := n.PodCIDR()
	if !cidr.IsValid() {
		return nil, fmt.Errorf("lab: %s: AddPod: node %d has no pod CIDR, only the first %d nodes can have a pod", n.label, n.index, MaxPodNodes)
	}
	n.podMu.Lock()
	defer n.podMu.Unlock()
	if n.pod != nil {
		return nil, fmt.Errorf("lab: %s: AddPod: the node already has a pod (%s)", n.label, n.pod.name)
	}
	l := n.lab
	label := n.label + "-pod"
	l.mu.Lock()
	closed := l.closed
	taken := false
	for _, ns := range l.allNS {
		taken = taken || ns.label == label
	}
	l.mu.Unlock()
	switch {
	case closed:
		return nil, fmt.Errorf("lab: %s: AddPod: the lab is closed", n.label)
	case taken:
		return nil, fmt.Errorf("lab: %s: AddPod: namespace name %q is taken (a node of that name?)", n.label, label)
	}

	ns, err := l.newNS(label)
	if err != nil {
		return nil, err
	}
	p := &Pod{NetNS: ns, node: n, cidr: cidr, opts: opts}
	// undo removes, last first, what this AddPod created, if it fails.
	undo := []func() error{func() error { return l.dropNS(ns) }}
	defer func() {
		if err != nil {
			for _, u := range slices.Backward(undo) {
				if uerr := u(); uerr != nil {
					err = errors.Join(err, uerr)
				}
			}
		}
	}()
	if err := p.wire(&undo); err != nil {
		return nil, err
	}
	forward, err := n.ReadSysctl("net.ipv4.ip_forward")
	if err != nil {
		return nil, err
	}
	if err := n.WriteSysctl("net.ipv4.ip_forward", "1"); err != nil {
		return nil, err
	}
	undo = append(undo, func() error { return n.WriteSysctl("net.ipv4.ip_forward", forward) })
	if err := n.replaceNftTable(p.nftSpec(opts)); err != nil {
		return nil, err
	}
	undo = append(undo, func() error {
		return n.deleteNftTable(&nftables.Table{Name: PodNftTable, Family: nftables.TableFamilyINet})
	})
	if err := p.addWANRoute(); err != nil {
		return nil, err
	}
	n.pod = p
	l.logf("%s: pod %s at %s on %s, nat %s, mark %#x", n.label, ns.name, p.Addr(), PodBridge, opts.NAT, opts.Mark)
	return p, nil
}

// wire creates the bridge, the veth and the pod's addresses and route. It
// appends to undo the removal of the links it created in the node (the
// pod's namespace takes its own links along).
func (p *Pod) wire(undo *[]func() error) error {
	n := p.node
	hn, err := netlink.NewHandleAt(n.handle)
	if err != nil {
		return fmt.Errorf("lab: netlink in %s: %w", n.label, err)
	}
	defer hn.Close()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: PodBridge, MTU: PodMTU}}
	if err := hn.LinkAdd(br); err != nil {
		return fmt.Errorf("lab: %s: add bridge %s: %w", n.label, PodBridge, err)
	}
	*undo = append(*undo, func() error { return n.deleteLink(PodBridge) })
	if err := hn.AddrAdd(br, nlAddr(netip.PrefixFrom(p.Gateway(), p.cidr.Bits()))); err != nil {
		return fmt.Errorf("lab: %s: address on %s: %w", n.label, PodBridge, err)
	}
	if err := hn.LinkSetUp(br); err != nil {
		return fmt.Errorf("lab: %s: %s up: %w", n.label, PodBridge, err)
	}
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: PodVeth, MTU: PodMTU, MasterIndex: br.Index},
		PeerName:      "eth0",
		PeerMTU:       PodMTU,
		PeerNamespace: netlink.NsFd(int(p.handle)),
	}
	if err := hn.LinkAdd(veth); err != nil {
		return fmt.Errorf("lab: %s: veth for the pod: %w", n.label, err)
	}
	*undo = append(*undo, func() error { return n.deleteLink(PodVeth) })
	vl, err := hn.LinkByName(PodVeth)
	if err != nil {
		return fmt.Errorf("lab: %s: veth for the pod: %w", n.label, err)
	}
	if err := hn.LinkSetMaster(vl, br); err != nil {
		return fmt.Errorf("lab: %s: attach %s to %s: %w", n.label, PodVeth, PodBridge, err)
	}
	if err := hn.LinkSetUp(vl); err != nil {
		return fmt.Errorf("lab: %s: %s up: %w", n.label, PodVeth, err)
	}

	hp, err := netlink.NewHandleAt(p.handle)
	if err != nil {
		return fmt.Errorf("lab: netlink in %s: %w", p.label, err)
	}
	defer hp.Close()
	if err := setLoUp(hp); err != nil {
		return fmt.Errorf("lab: %s: %w", p.label, err)
	}
	eth, err := hp.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("lab: %s eth0: %w", p.label, err)
	}
	if err := hp.AddrAdd(eth, nlAddr(netip.PrefixFrom(p.Addr(), p.cidr.Bits()))); err != nil {
		return fmt.Errorf("lab: %s: address: %w", p.label, err)
	}
	if err := hp.LinkSetUp(eth); err != nil {
		return fmt.Errorf("lab: %s: eth0 up: %w", p.label, err)
	}
	if err := hp.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: p.Gateway().AsSlice()}); err != nil {
		return fmt.Errorf("lab: %s: default route: %w", p.label, err)
	}
	return nil
}

// addWANRoute adds the wan router's route to the pod CIDR via the node's
// LAN address.
func (p *Pod) addWANRoute() error { return p.node.routeVia(p.cidr) }

// RoutePodCIDR adds the wan router's route to the node's PodCIDR via the
// node's LAN address, for pods that a real CNI plugin wires up instead of
// AddPod (test/cluster). Close removes it with the router.
func (n *Node) RoutePodCIDR() error {
	cidr := n.PodCIDR()
	if !cidr.IsValid() {
		return fmt.Errorf("lab: %s: node %d has no pod CIDR (at most %d nodes do)", n.label, n.index, MaxPodNodes)
	}
	return n.routeVia(cidr)
}

// AddRoutedAddr gives the node one more address, a on its lo, that is
// not on the LAN: the wan router routes a/32 via the node, so that other
// nodes reach it through their default route, as a service address
// behind a load balancer or in another network (test/cluster's API server
// of a managed control plane). a must be inside 198.18.0.0/15 and off the
// LAN and pod ranges. Close removes it with the namespaces.
func (n *Node) AddRoutedAddr(a netip.Addr) error {
	if !inLab(a) || !a.Is4() || LANPrefix.Contains(a) || netip.MustParsePrefix("198.18.128.0/17").Contains(a) {
		return fmt.Errorf("lab: %s: AddRoutedAddr %s: want an IPv4 address in 198.18.0.0/15 off the LAN and the pod CIDRs", n.label, a)
	}
	h, err := netlink.NewHandleAt(n.handle)
	if err != nil {
		return fmt.Errorf("lab: netlink in %s: %w", n.label, err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err == nil {
		err = h.AddrAdd(lo, nlAddr(netip.PrefixFrom(a, 32)))
	}
	if err != nil {
		return fmt.Errorf("lab: %s: address %s on lo: %w", n.label, a, err)
	}
	return n.routeVia(netip.PrefixFrom(a, 32))
}

// routeVia adds the wan router's route to cidr via the node's LAN address.
func (n *Node) routeVia(cidr netip.Prefix) error {
	wan := n.lab.wan
	hw, err := netlink.NewHandleAt(wan.handle)
	if err != nil {
		return fmt.Errorf("lab: netlink in wan: %w", err)
	}
	defer hw.Close()
	r := &netlink.Route{
		Dst: &net.IPNet{IP: cidr.Addr().AsSlice(), Mask: net.CIDRMask(cidr.Bits(), 32)},
		Gw:  n.addr.AsSlice(),
	}
	if err := hw.RouteAdd(r); err != nil {
		return fmt.Errorf("lab: wan: route %s via %s: %w", cidr, n.addr, err)
	}
	return nil
}

// deleteLink deletes the named link of the node, if it is there.
func (n *Node) deleteLink(name string) error {
	h, err := netlink.NewHandleAt(n.handle)
	if err != nil {
		return fmt.Errorf("lab: netlink in %s: %w", n.label, err)
	}
	defer h.Close()
	link, err := h.LinkByName(name)
	if err != nil {
		return nil // gone with its peer
	}
	if err := h.LinkDel(link); err != nil {
		return fmt.Errorf("lab: %s: delete %s: %w", n.label, name, err)
	}
	return nil
}

// nftSpec is the node's table PodNftTable for opts:
//
//	table inet lab-cni {
//		chain prerouting { type filter hook prerouting priority raw; iifname "cni0" meta mark set MARK }
//		chain postrouting { type nat hook postrouting priority srcnat;
//			[oifname "eth0"] ip saddr POD-CIDR ip daddr != POD-CIDR masquerade }
//	}
//
// without the mark rule when Mark is 0 and without the masquerade rule for
// PodNATNone.
func (p *Pod) nftSpec(opts PodOptions) nftTable {
	t := &nftables.Table{Name: PodNftTable, Family: nftables.TableFamilyINet}
	pre := &nftables.Chain{
		Name: "prerouting", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRaw,
	}
	post := &nftables.Chain{
		Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource,
	}
	spec := nftTable{table: t, chains: []*nftables.Chain{pre, post}}
	if opts.Mark != 0 {
		var e []expr.Any
		e = append(e, matchIIF(PodBridge)...)
		e = append(e, setMark(opts.Mark)...)
		spec.rules = append(spec.rules, &nftables.Rule{Table: t, Chain: pre, Exprs: e})
	}
	if opts.NAT != PodNATNone {
		var e []expr.Any
		if opts.NAT == PodNATUplink {
			e = append(e, matchOIF("eth0")...)
		}
		e = append(e, matchIPv4()...)
		e = append(e, matchIPv4Prefix(ipv4SrcOffset, p.cidr, expr.CmpOpEq)...)
		e = append(e, matchIPv4Prefix(ipv4DstOffset, p.cidr, expr.CmpOpNeq)...)
		e = append(e, &expr.Masq{})
		spec.rules = append(spec.rules, &nftables.Rule{Table: t, Chain: post, Exprs: e})
	}
	return spec
}

// Addr is the pod's address, .2 of the node's pod CIDR: what the echo
// service sees when nothing masquerades the pod's traffic.
func (p *Pod) Addr() netip.Addr { return p.cidr.Addr().Next().Next() }

// Gateway is the pod's default gateway, PodBridge's address (.1).
func (p *Pod) Gateway() netip.Addr { return p.cidr.Addr().Next() }

// CIDR is the node's pod CIDR (Node.PodCIDR).
func (p *Pod) CIDR() netip.Prefix { return p.cidr }

// Node is the pod's node.
func (p *Pod) Node() *Node { return p.node }

// NAT is the node's current masquerading mode for the pod.
func (p *Pod) NAT() PodNAT {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.opts.NAT
}

// Mark is the packet mark the node currently sets on the pod's packets
// (0: none).
func (p *Pod) Mark() uint32 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.opts.Mark
}

// SetNAT changes the node's masquerading of the pod's traffic (empty means
// PodNATEverywhere). Connections already masqueraded keep their
// translation (conntrack); new ones follow the new mode.
func (p *Pod) SetNAT(mode PodNAT) error {
	mode = mode.orDefault()
	if !mode.valid() {
		return fmt.Errorf("lab: %s: SetNAT: unknown NAT mode %q", p.label, mode)
	}
	return p.update(func(o *PodOptions) { o.NAT = mode })
}

// SetMark changes the packet mark the node sets on packets from the pod
// (0: none).
func (p *Pod) SetMark(mark uint32) error {
	return p.update(func(o *PodOptions) { o.Mark = mark })
}

func (p *Pod) update(change func(*PodOptions)) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	opts := p.opts
	change(&opts)
	if err := p.node.replaceNftTable(p.nftSpec(opts)); err != nil {
		return err
	}
	p.opts = opts
	p.lab.logf("%s: pod nat %s, mark %#x", p.node.label, opts.NAT, opts.Mark)
	return nil
}
