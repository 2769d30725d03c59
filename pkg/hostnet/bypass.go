package hostnet

// Never cut a node off (DESIGN section 4): while a worker uses an exit
// node, tailscaled sends all of the host's traffic through table 52. The
// bypass keeps what the node needs to stay a node off that table:
//
//   - the destination prefixes are elements of two interval sets of the
//     nftables table "ts-node-agent" (family inet), BypassSetIPv4 and
//     BypassSetIPv6 (see bypassset.go); its prerouting and output chains
//     give packets to them the mark M, and the connection too, so that
//     replies carry it back (tailscaled turns src_valid_mark on, and the
//     reverse-path filter then sees the mark);
//   - one policy rule per family, "fwmark M/M lookup main", at
//     BypassMarkPriority (5099), above tailscaled's rules (5210-5270),
//     routes marked packets through the main table: packets to the
//     destinations, and the replies of connections that arrived on a
//     non-tailnet interface (the table marks such connections, ct mark |=
//     M, and copies the bit into the packet mark of their replies, so a
//     reply leaves the way its connection came in: an SSH session to the
//     node's public IP survives the exit node);
//   - the host's own packets to a destination were routed, before the
//     output chain marked them, through table 52, and carry the tailnet
//     address as their source: the table masquerades them to the address
//     of the interface they leave by.
//
// The number of policy rules is constant, whatever the size of the
// cluster. The rules carry the routing protocol BypassProtocol, so the
// agent knows its own: a restarted agent deletes the owned rules it no
// longer wants (a crashed agent's leftovers, among them the one rule per
// destination that earlier agents installed) and Remove deletes them all,
// never anyone else's. Bypass.Run follows rule and nftables changes and puts back
// within a second what something else deleted.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"k8s.io/utils/clock"
)

// Policy rule layout of the bypass. The kernel evaluates rules in
// ascending priority.
const (
	// BypassMarkPriority is the priority of the fwmark rules (packets to
	// the destinations, replies of inbound connections). tailscaled
	// installs its rules at 5210, 5230, 5250 and 5270 (osrouter
	// baseIPRules at base 5200), so anything below 5210 wins.
	BypassMarkPriority = 5099
	// legacyBypassPriority is where earlier agents put one rule per
	// destination; a current agent adopts them into the sets (see
	// Guard.Prepare) and deletes the rules.
	legacyBypassPriority = 5100
	// BypassProtocol tags the agent's policy rules (FRA_PROTOCOL, shown
	// as "proto 167" by `ip rule`): it is not one of the numbers reserved
	// in iproute2's rt_protos. Kernels before 4.17 do not keep it.
	BypassProtocol uint8 = 0xa7
	// BypassNftTable is the nftables table (family inet) of the marks.
	BypassNftTable = "ts-node-agent"
)

// TailnetPrefixes are the addresses tailscale assigns. Traffic to them must
// keep going through table 52, so they are never bypassed.
var TailnetPrefixes = []netip.Prefix{
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("fd7a:115c:a1e0::/48"),
}

// BypassInputs are the destinations that never use the exit node.
type BypassInputs struct {
	// CIDRs are --bypass-cidrs (anything the operator declares) and the
	// cluster's Service ranges (ServiceCIDR objects).
	CIDRs []netip.Prefix
	// PodCIDRs are the pod CIDRs of every Node (Node.spec.podCIDRs).
	PodCIDRs []netip.Prefix
	// NodeAddrs are the InternalIP and ExternalIP addresses of the other
	// Nodes.
	NodeAddrs []netip.Addr
	// ReadyNodeAddrs are the NodeAddrs of the Nodes whose Ready condition
	// is True. They add no bypass: the commit check dials them first, so
	// that NotReady (often unreachable) Nodes do not roll a working exit
	// node back.
	ReadyNodeAddrs []netip.Addr
	// APIServers are more addresses of the API server: the kubernetes
	// Service's ClusterIP (KUBERNETES_SERVICE_HOST).
	APIServers []netip.Addr
	// APIEndpoints are the API server's real endpoints (the
	// default/kubernetes EndpointSlice): bypassed, and dialled by the
	// commit check (at least one must answer). Behind a ClusterIP they are
	// kube-proxy's DNAT targets; with a load balancer or a managed control
	// plane they are not Nodes, so no node address covers them.
	APIEndpoints []netip.AddrPort
	// Control are the control server's and DERP servers' addresses.
	// tailscaled's own connections to them already avoid table 52 (its
	// fwmark 0x80000); these rules cover other processes.
	Control []netip.Addr
}

// Equal reports whether in and o hold the same values in the same order.
func (in BypassInputs) Equal(o BypassInputs) bool {
	return slices.Equal(in.CIDRs, o.CIDRs) && slices.Equal(in.PodCIDRs, o.PodCIDRs) &&
		slices.Equal(in.NodeAddrs, o.NodeAddrs) && slices.Equal(in.ReadyNodeAddrs, o.ReadyNodeAddrs) &&
		slices.Equal(in.APIServers, o.APIServers) &&
		slices.Equal(in.APIEndpoints, o.APIEndpoints) && slices.Equal(in.Control, o.Control)
}

// clone returns a deep copy of in.
func (in BypassInputs) clone() BypassInputs {
	return BypassInputs{
		CIDRs:          slices.Clone(in.CIDRs),
		PodCIDRs:       slices.Clone(in.PodCIDRs),
		NodeAddrs:      slices.Clone(in.NodeAddrs),
		ReadyNodeAddrs: slices.Clone(in.ReadyNodeAddrs),
		APIServers:     slices.Clone(in.APIServers),
		APIEndpoints:   slices.Clone(in.APIEndpoints),
		Control:        slices.Clone(in.Control),
	}
}

// Kill switch (--exit-fallback=block, from the first exit node a worker
// turns on until it stops being a worker): rules right after tailscaled's
// last one (5270, lookup 52) that keep internet traffic off the main
// table's default route whenever table 52 has none: while tailscaled
// restarts or boots (its TUN, and the routes through it, are gone), while
// the agent restarts, after a rolled-back exit node. Everything else in
// the main table (the LAN, node addresses) still routes, and so do
// tailscaled's own connections and the replies of inbound connections:
//
//	5279 fwmark 0x80000/0xff0000 lookup main  tailscaled's own traffic (control, DERP) while it boots
//	5280 lookup main suppress_prefixlength 0  the main table without its default route
//	5281 iif lo lookup 5281                   the host's own packets: table 5281 "default dev lo"
//	5282 unreachable                          forwarded packets (pods): ICMP unreachable
//
// The host's own packets get a route (to lo) instead of an error so that
// they reach the output hook: there the nftables table gives the replies
// of inbound connections their mark and re-routes them through the main
// table (an SSH SYN-ACK to an internet address, a UDP answer), and rejects
// everything else that the sink route caught.
const (
	// KillSwitchTailscaledPriority: "fwmark 0x80000/0xff0000 lookup main".
	KillSwitchTailscaledPriority = 5279
	// KillSwitchPriority: "lookup main suppress_prefixlength 0".
	KillSwitchPriority = 5280
	// KillSwitchSinkPriority: "iif lo lookup KillSwitchTable".
	KillSwitchSinkPriority = 5281
	// KillSwitchBlockPriority: "unreachable".
	KillSwitchBlockPriority = 5282
	// KillSwitchTable is the routing table of the sink route.
	KillSwitchTable = 5281
)

// tailscaledBypassMark is the fwmark tailscaled puts on its own sockets
// (linuxfw.TailscaleBypassMarkNum) under tailscaledMarkMask.
const tailscaledBypassMark uint32 = 0x80000

// BypassAction is what a BypassRule does with the packets it matches.
type BypassAction uint8

const (
	// BypassLookupMain routes through the main table.
	BypassLookupMain BypassAction = iota
	// BypassNoDefault routes through the main table, ignoring
	// its default route (suppress_prefixlength 0).
	BypassNoDefault
	// BypassUnreachable answers "network unreachable".
	BypassUnreachable
	// BypassSink routes the host's own packets ("iif lo") through
	// KillSwitchTable.
	BypassSink
)

// BypassRule is one rule of the bypass: a destination, "to Dst lookup
// main", when Dst is valid (in the kernel, an element of a destination set,
// which the fwmark rule routes; Priority is 0), and otherwise a policy rule
// owned by the agent: "fwmark Mark/Mask lookup main" when Mask is set, or
// a kill switch rule (Action). The protocol of the policy rules is always
// BypassProtocol.
type BypassRule struct {
	Family   int // unix.AF_INET or unix.AF_INET6
	Priority int
	Dst      netip.Prefix // destinations only
	Mark     uint32       // fwmark rules only
	Mask     uint32       // fwmark rules only
	Action   BypassAction
}

// String describes the rule the way `ip rule` prints it, without the
// priority: "to 10.43.0.0/16 lookup main".
func (r BypassRule) String() string {
	switch {
	case r.Action == BypassUnreachable:
		return "unreachable"
	case r.Action == BypassNoDefault:
		return "lookup main suppress_prefixlength 0"
	case r.Action == BypassSink:
		return fmt.Sprintf("iif lo lookup %d", KillSwitchTable)
	case r.Dst.IsValid():
		return "to " + r.Dst.String() + " lookup main"
	}
	return fmt.Sprintf("fwmark %#x/%#x lookup main", r.Mark, r.Mask)
}

// KillSwitchRules are the kill switch's rules for both families.
func KillSwitchRules() []BypassRule {
	var rules []BypassRule
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		rules = append(rules,
			BypassRule{Family: fam, Priority: KillSwitchTailscaledPriority, Mark: tailscaledBypassMark, Mask: tailscaledMarkMask},
			BypassRule{Family: fam, Priority: KillSwitchPriority, Action: BypassNoDefault},
			BypassRule{Family: fam, Priority: KillSwitchSinkPriority, Action: BypassSink},
			BypassRule{Family: fam, Priority: KillSwitchBlockPriority, Action: BypassUnreachable},
		)
	}
	return rules
}

// HasKillSwitch reports whether rules hold the kill switch.
func HasKillSwitch(rules []BypassRule) bool {
	return slices.ContainsFunc(rules, func(r BypassRule) bool { return r.Action == BypassSink })
}

// netlinkRule is r as vishvananda/netlink adds and deletes it.
func (r BypassRule) netlinkRule() *netlink.Rule {
	nr := netlink.NewRule()
	nr.Family = r.Family
	nr.Priority = r.Priority
	nr.Table = unix.RT_TABLE_MAIN
	nr.Protocol = BypassProtocol
	switch r.Action {
	case BypassUnreachable:
		nr.Table = unix.RT_TABLE_UNSPEC
		nr.Type = unix.RTN_UNREACHABLE
		return nr
	case BypassNoDefault:
		nr.SuppressPrefixlen = 0
		return nr
	case BypassSink:
		nr.Table = KillSwitchTable
		nr.IifName = "lo"
		return nr
	}
	if r.Dst.IsValid() {
		nr.Dst = &net.IPNet{IP: r.Dst.Addr().AsSlice(), Mask: net.CIDRMask(r.Dst.Bits(), r.Dst.Addr().BitLen())}
	}
	if r.Mask != 0 {
		nr.Mark = r.Mark
		mask := r.Mask
		nr.Mask = &mask
	}
	return nr
}

// bypassRuleOf converts a listed rule to a BypassRule; ok is false when
// the rule has a selector or action a BypassRule cannot express (it is
// then never wanted, so an owned one is deleted).
func bypassRuleOf(nr netlink.Rule) (r BypassRule, ok bool) {
	r = BypassRule{Family: nr.Family, Priority: nr.Priority, Mark: nr.Mark}
	noSelectors := nr.Src == nil && nr.Dst == nil && !nr.Invert && nr.IifName == "" && nr.OifName == "" &&
		nr.Goto < 0 && nr.Tos == 0 && nr.IPProto == 0 && nr.Dport == nil && nr.Sport == nil &&
		nr.UIDRange == nil && nr.Mask == nil && nr.Mark == 0
	switch {
	case nr.Priority == KillSwitchBlockPriority && nr.Table == unix.RT_TABLE_UNSPEC:
		// netlink.RuleList drops the rule's action; an owned rule without
		// a table at this priority is the kill switch's unreachable.
		r.Action = BypassUnreachable
		return r, noSelectors
	case nr.Priority == KillSwitchPriority && nr.SuppressPrefixlen == 0:
		r.Action = BypassNoDefault
		return r, noSelectors && nr.Table == unix.RT_TABLE_MAIN
	case nr.Priority == KillSwitchSinkPriority && nr.Table == KillSwitchTable:
		r.Action = BypassSink
		nr.IifName = ""
		sinkOnly := nr.Src == nil && nr.Dst == nil && !nr.Invert && nr.OifName == "" &&
			nr.Goto < 0 && nr.Tos == 0 && nr.IPProto == 0 && nr.Dport == nil && nr.Sport == nil &&
			nr.UIDRange == nil && nr.Mask == nil && nr.Mark == 0
		return r, sinkOnly
	}
	if nr.Mask != nil {
		r.Mask = *nr.Mask
	}
	if nr.Dst != nil {
		p, ok := prefixOf(nr.Dst)
		if !ok {
			return r, false
		}
		r.Dst = p
	}
	plain := nr.Table == unix.RT_TABLE_MAIN && nr.Src == nil && !nr.Invert && nr.IifName == "" &&
		nr.OifName == "" && nr.Goto < 0 && nr.Tos == 0 && nr.IPProto == 0 && nr.Dport == nil &&
		nr.Sport == nil && nr.UIDRange == nil && (nr.SuppressPrefixlen < 0 || nr.SuppressPrefixlen == 0xffffffff) &&
		(nr.SuppressIfgroup < 0 || nr.SuppressIfgroup == 0xffffffff)
	return r, plain
}

// BypassRules returns the rules for in, in a stable order: the fwmark
// policy rule of each family (a zero mark means DefaultBypassMark), then
// one destination per prefix. Addresses become /32 or /128 prefixes,
// IPv4-mapped IPv6 becomes IPv4, duplicates and prefixes covered by a
// broader one are dropped, and so is anything that overlaps the tailnet
// ranges (see BypassSkipped): traffic to tailnet addresses must keep using
// table 52.
func BypassRules(in BypassInputs, mark Mark) []BypassRule {
	if mark.IsZero() {
		mark = DefaultBypassMark
	}
	rules := []BypassRule{
		{Family: unix.AF_INET, Priority: BypassMarkPriority, Mark: mark.Value, Mask: mark.Mask},
		{Family: unix.AF_INET6, Priority: BypassMarkPriority, Mark: mark.Value, Mask: mark.Mask},
	}
	keep, _ := bypassPrefixes(in)
	for _, p := range keep {
		fam := unix.AF_INET
		if p.Addr().Is6() {
			fam = unix.AF_INET6
		}
		rules = append(rules, BypassRule{Family: fam, Dst: p})
	}
	return rules
}

// BypassSkipped returns the prefixes of in that are not bypassed because
// they overlap the tailnet ranges, for a log line.
func BypassSkipped(in BypassInputs) []netip.Prefix {
	_, skipped := bypassPrefixes(in)
	return skipped
}

// bypassPrefixes normalises, sorts and reduces the destinations of in.
func bypassPrefixes(in BypassInputs) (keep, skipped []netip.Prefix) {
	var all []netip.Prefix
	addPrefix := func(p netip.Prefix) {
		if !p.IsValid() {
			return
		}
		a, bits := p.Addr(), p.Bits()
		if a.Is4In6() && bits >= 96 {
			a, bits = a.Unmap(), bits-96
		}
		p, err := a.WithZone("").Prefix(bits)
		if err != nil {
			return
		}
		all = append(all, p)
	}
	addAddr := func(a netip.Addr) {
		if a.IsValid() {
			a = a.Unmap().WithZone("")
			addPrefix(netip.PrefixFrom(a, a.BitLen()))
		}
	}
	for _, ps := range [][]netip.Prefix{in.CIDRs, in.PodCIDRs} {
		for _, p := range ps {
			addPrefix(p)
		}
	}
	for _, as := range [][]netip.Addr{in.NodeAddrs, in.APIServers, in.Control} {
		for _, a := range as {
			addAddr(a)
		}
	}
	for _, ap := range in.APIEndpoints {
		addAddr(ap.Addr())
	}
	return reducePrefixes(all)
}

// reducePrefixes sorts the normalised prefixes all, drops duplicates and
// prefixes covered by a broader one, and sets apart those that overlap
// the tailnet ranges. It sorts all in place.
func reducePrefixes(all []netip.Prefix) (keep, skipped []netip.Prefix) {
	// By family, then start address, then broadest first: a prefix that
	// covers others comes right before them, so comparing with the last
	// kept prefix finds every covered one.
	slices.SortFunc(all, func(a, b netip.Prefix) int {
		if a.Addr().Is4() != b.Addr().Is4() {
			if a.Addr().Is4() {
				return -1
			}
			return 1
		}
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	all = slices.Compact(all)
	for _, p := range all {
		if slices.ContainsFunc(TailnetPrefixes, p.Overlaps) {
			skipped = append(skipped, p)
			continue
		}
		if n := len(keep); n > 0 && keep[n-1].Addr().Is4() == p.Addr().Is4() &&
			keep[n-1].Bits() <= p.Bits() && keep[n-1].Contains(p.Addr()) {
			continue
		}
		keep = append(keep, p)
	}
	return keep, skipped
}

// Timing of the Bypass reconciler.
const (
	// bypassDebounce groups the burst of notifications one change makes.
	bypassDebounce = 50 * time.Millisecond
	// bypassRetry is the wait before retrying a failed apply or a broken
	// subscription.
	bypassRetry = time.Second
)

// BypassOptions configure a Bypass.
type BypassOptions struct {
	// TUNName is tailscaled's TUN: connections that arrive on it are the
	// tailnet's and are not marked.
	TUNName string
	// Mark is the firewall and connection mark (DefaultBypassMark).
	Mark Mark
}

// BypassOption configures a Bypass.
type BypassOption func(*Bypass)

// WithBypassLogger sets the logger; the Bypass adds component=bypass.
func WithBypassLogger(l *slog.Logger) BypassOption { return func(b *Bypass) { b.log = l } }

// WithBypassNetNS makes the Bypass act in the network namespace ns instead
// of the agent's own. ns must stay open while the Bypass is used.
func WithBypassNetNS(ns netns.NsHandle) BypassOption { return func(b *Bypass) { b.ns = ns } }

// WithBypassClock sets the clock of Run's debounce, retry and heartbeat
// timers (clock.RealClock by default).
func WithBypassClock(c clock.WithTicker) BypassOption { return func(b *Bypass) { b.clock = c } }

// WithBypassBeat makes Run call beat on every turn of its loop and at
// least every HeartbeatInterval (the Guard beats the snapshot's
// heartbeat there): a reconcile stuck in the kernel stops the beats.
func WithBypassBeat(beat func()) BypassOption { return func(b *Bypass) { b.beat = beat } }

// Bypass owns the bypass policy rules and the nftables table in one
// network namespace. Apply, Remove and Run may be called from any
// goroutine.
type Bypass struct {
	opts BypassOptions
	log  *slog.Logger
	ns   netns.NsHandle

	mu     sync.Mutex // serialises kernel changes and guards the fields below
	want   []BypassRule
	active bool  // Apply was called after the last Remove
	err    error // of the last sync, nil if it succeeded
	// sets is what the destination sets held after the last sync that
	// succeeded, when setsKnown: Apply changes the difference without
	// reading the sets back, so a node that joins costs one small batch.
	// The reconciler reads them back (something else may have changed
	// them).
	sets      [2]setContent
	setsKnown bool

	kick  chan struct{} // wakes Run after a failed Apply
	beat  func()        // called by Run on every turn; nil: none
	clock clock.WithTicker
}

// NewBypass returns a Bypass; empty options take their defaults
// (tailscale0, DefaultBypassMark).
func NewBypass(opts BypassOptions, options ...BypassOption) *Bypass {
	if opts.TUNName == "" {
		opts.TUNName = Defaults().TUNName
	}
	if opts.Mark.IsZero() {
		opts.Mark = DefaultBypassMark
	}
	b := &Bypass{opts: opts, log: slog.Default(), ns: netns.None(), kick: make(chan struct{}, 1), clock: clock.RealClock{}}
	for _, o := range options {
		o(b)
	}
	b.log = b.log.With("component", "bypass")
	return b
}

// Apply makes the owned policy rules exactly desired (adding the missing,
// deleting owned rules that are not desired, among them what a crashed
// agent left) and installs the nftables table. Foreign rules are never
// touched. From now on Run keeps them so; a failure is retried by Run
// every second, and returned.
func (b *Bypass) Apply(desired []BypassRule) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.want = slices.Clone(desired)
	b.active = true
	ch, err := b.sync(false)
	b.err = err
	if err != nil {
		b.log.Error("cannot install the bypass; retrying", "err", err, "in", bypassRetry)
		select {
		case b.kick <- struct{}{}:
		default:
		}
		return err
	}
	if ch.any() {
		b.log.Info("bypass applied", "policy_rules", len(desired)-countDestinations(desired),
			"destinations", len(b.sets[0].prefixes)+len(b.sets[1].prefixes), "rules_added", ch.added, "rules_deleted", ch.deleted,
			"destinations_added", ch.dstAdded, "destinations_deleted", ch.dstDeleted, "nftables_table_created", ch.table)
	}
	return nil
}

// Remove deletes every owned policy rule and the nftables table, and stops
// Run from re-creating them until the next Apply. It is safe to call when
// nothing is installed (at start, it cleans what a crashed agent left).
func (b *Bypass) Remove() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.active, b.want, b.err = false, nil, nil
	b.setsKnown = false
	_, deleted, err := b.syncRules(nil)
	routes, serr := b.syncSinkRoutes(false)
	table, terr := b.deleteTable()
	if deleted > 0 || table || routes > 0 {
		b.log.Info("bypass removed", "rules_deleted", deleted, "routes_deleted", routes, "nftables_table_deleted", table)
	}
	return errors.Join(err, serr, terr)
}

// Owned lists the policy rules the agent owns in the kernel now (what a
// previous agent left, at start), as BypassRules; rules it cannot express
// are left out.
func (b *Bypass) Owned() ([]BypassRule, error) {
	h, err := b.handle()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	owned, err := ownedRules(h)
	if err != nil {
		return nil, err
	}
	var out []BypassRule
	for _, nr := range owned {
		if r, ok := bypassRuleOf(nr); ok {
			out = append(out, r)
		}
	}
	c, err := b.nftConn()
	if err != nil {
		return out, err
	}
	t := &nftables.Table{Name: BypassNftTable, Family: nftables.TableFamilyINet}
	if ok, err := setsMatch(c, t); err != nil || !ok {
		return out, nil // no table, or not one the agent wrote: no destinations
	}
	sets, err := readSets(c, t)
	if err != nil {
		return out, err
	}
	for _, sc := range sets {
		for _, p := range sc.prefixes {
			out = append(out, BypassRule{Family: familyOf(p.Addr()), Dst: p})
		}
	}
	return out, nil
}

// Active reports whether the bypass is applied (Apply called after the
// last Remove), whether or not the last attempt succeeded.
func (b *Bypass) Active() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.active
}

// Err is the error of the last attempt to install the bypass, nil if it
// succeeded or nothing is applied.
func (b *Bypass) Err() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

// reconcile puts back what is missing while the bypass is active.
func (b *Bypass) reconcile() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.active {
		return nil
	}
	ch, err := b.sync(true)
	b.err = err
	if err != nil {
		return err
	}
	if ch.any() {
		b.log.Warn("bypass changed behind the agent's back; restored", "rules_added", ch.added,
			"rules_deleted", ch.deleted, "destinations_added", ch.dstAdded, "destinations_deleted", ch.dstDeleted,
			"nftables_table_recreated", ch.table)
	}
	return nil
}

// changes counts what a sync changed.
type changes struct {
	added, deleted       int  // policy rules
	dstAdded, dstDeleted int  // destinations (set intervals)
	table                bool // the nftables table, or its chains, were (re)created
	routes               int  // sink routes added or deleted
}

func (c changes) any() bool {
	return c.added > 0 || c.deleted > 0 || c.dstAdded > 0 || c.dstDeleted > 0 || c.table || c.routes > 0
}

// sync makes the kernel match b.want; b.mu must be held. verify reads the
// destination sets back instead of trusting what the last sync left. What
// the policy rules route to comes first: the table with its sets (so a
// legacy per-destination rule is deleted only once its destination is in
// a set), then the kill switch's sink routes, then the rules; the sink
// routes go last when the kill switch goes. A half-applied change is never
// a leak.
func (b *Bypass) sync(verify bool) (changes, error) {
	var ch changes
	var rerr, terr, serr error
	ks := HasKillSwitch(b.want)
	ch.table, ch.dstAdded, ch.dstDeleted, terr = b.syncTable(ks, prefixesOf(b.want), verify)
	if ks {
		ch.routes, serr = b.syncSinkRoutes(true)
	}
	ch.added, ch.deleted, rerr = b.syncRules(b.want)
	if !ks {
		ch.routes, serr = b.syncSinkRoutes(false)
	}
	return ch, errors.Join(terr, serr, rerr)
}

// sinkRoutes are the kill switch's routes: "default dev lo table
// KillSwitchTable proto 167", one per family.
func sinkRoutes() []*netlink.Route {
	var out []*netlink.Route
	for _, p := range []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")} {
		out = append(out, &netlink.Route{
			LinkIndex: 1, // lo
			Dst:       &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(0, p.Addr().BitLen())},
			Table:     KillSwitchTable,
			Protocol:  netlink.RouteProtocol(BypassProtocol),
			Family:    familyOf(p.Addr()),
		})
	}
	return out
}

func familyOf(a netip.Addr) int {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// syncSinkRoutes adds (want) or deletes the sink routes; it returns how
// many it changed.
func (b *Bypass) syncSinkRoutes(want bool) (int, error) {
	h, err := b.handle()
	if err != nil {
		return 0, err
	}
	defer h.Close()
	n := 0
	var errs []error
	for _, r := range sinkRoutes() {
		have, err := h.RouteListFiltered(r.Family, &netlink.Route{Table: KillSwitchTable}, netlink.RT_FILTER_TABLE)
		if err != nil {
			if r.Family == unix.AF_INET6 && errors.Is(err, unix.EAFNOSUPPORT) {
				continue
			}
			errs = append(errs, fmt.Errorf("list routes of table %d: %w", KillSwitchTable, err))
			continue
		}
		found := false
		for _, hr := range have {
			if hr.Protocol != netlink.RouteProtocol(BypassProtocol) {
				continue // not ours: leave it
			}
			if want && !found && hr.LinkIndex == 1 && (hr.Dst == nil || isDefault(hr.Dst)) {
				found = true
				continue
			}
			if err := h.RouteDel(&hr); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("delete route %s: %w", hr, err))
				continue
			}
			n++
		}
		if want && !found {
			if err := h.RouteAdd(r); err != nil && !errors.Is(err, unix.EEXIST) {
				if r.Family == unix.AF_INET6 && errors.Is(err, unix.EAFNOSUPPORT) {
					continue
				}
				errs = append(errs, fmt.Errorf("add route default dev lo table %d: %w", KillSwitchTable, err))
				continue
			}
			n++
		}
	}
	return n, errors.Join(errs...)
}

func isDefault(n *net.IPNet) bool {
	ones, _ := n.Mask.Size()
	return ones == 0
}

// tunMTU is the MTU of tailscaled's TUN, or tailscaled's default when it
// does not exist (yet).
func (b *Bypass) tunMTU() int {
	h, err := b.handle()
	if err != nil {
		return defaultTUNMTU
	}
	defer h.Close()
	l, err := h.LinkByName(b.opts.TUNName)
	if err != nil || l.Attrs().MTU < 1280 {
		return defaultTUNMTU
	}
	return l.Attrs().MTU
}

// handle opens a netlink handle in the Bypass's namespace.
func (b *Bypass) handle() (*netlink.Handle, error) {
	var (
		h   *netlink.Handle
		err error
	)
	if b.ns.IsOpen() {
		h, err = netlink.NewHandleAt(b.ns, unix.NETLINK_ROUTE)
	} else {
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	}
	if err != nil {
		return nil, fmt.Errorf("open netlink: %w", err)
	}
	if err := h.SetSocketTimeout(netlinkTimeout); err != nil {
		h.Close()
		return nil, fmt.Errorf("open netlink: %w", err)
	}
	return h, nil
}

// ownedRules lists the policy rules tagged with BypassProtocol.
func ownedRules(h *netlink.Handle) ([]netlink.Rule, error) {
	var (
		all []netlink.Rule
		err error
	)
	for range 3 {
		all, err = h.RuleList(netlink.FAMILY_ALL)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("list policy rules: %w", err)
	}
	var owned []netlink.Rule
	for _, r := range all {
		if r.Protocol == BypassProtocol {
			owned = append(owned, r)
		}
	}
	return owned, nil
}

// syncRules deletes the owned policy rules not in want and adds the
// missing ones; the destinations of want are not policy rules (syncTable
// puts them in the sets).
func (b *Bypass) syncRules(want []BypassRule) (added, deleted int, err error) {
	want = slices.DeleteFunc(slices.Clone(want), func(r BypassRule) bool { return r.Dst.IsValid() })
	h, err := b.handle()
	if err != nil {
		return 0, 0, err
	}
	defer h.Close()
	owned, err := ownedRules(h)
	if err != nil {
		return 0, 0, err
	}
	have := map[BypassRule]bool{}
	var errs []error
	for _, nr := range owned {
		r, ok := bypassRuleOf(nr)
		if ok && slices.Contains(want, r) && !have[r] {
			have[r] = true
			continue
		}
		if err := h.RuleDel(&nr); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete stale rule %d %q: %w", nr.Priority, describeNetlinkRule(nr), err))
			continue
		}
		deleted++
	}
	for _, r := range want {
		if have[r] {
			continue
		}
		if err := h.RuleAdd(r.netlinkRule()); err != nil && !errors.Is(err, unix.EEXIST) {
			if r.Family == unix.AF_INET6 && errors.Is(err, unix.EAFNOSUPPORT) {
				continue // a kernel without IPv6 has nothing to route there
			}
			errs = append(errs, fmt.Errorf("add rule %d %q: %w", r.Priority, r.String(), err))
			continue
		}
		have[r] = true
		added++
	}
	return added, deleted, errors.Join(errs...)
}

func describeNetlinkRule(nr netlink.Rule) string {
	if r, ok := bypassRuleOf(nr); ok {
		return r.String()
	}
	return nr.String()
}

// nftSpec is the nftables table of the bypass: what it must contain, and
// a tag per rule (its UserData) that says which rule it is, for which TUN
// and mark, so that a table left by another configuration is replaced.
type nftSpec struct {
	table  *nftables.Table
	sets   [2]*nftables.Set // destinationSets
	chains []*nftables.Chain
	rules  []*nftables.Rule
}

// ifname is the nftables form of an interface name: NUL-padded to
// IFNAMSIZ, for an exact match.
func ifname(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

// defaultTUNMTU is tailscaled's TUN MTU (tstun.DefaultTUNMTU), used for
// the MSS clamp when the TUN does not exist yet.
const defaultTUNMTU = 1280

// nftSpec is the table for the Bypass's options, the TUN's MTU, and
// whether the kill switch is on.
func (b *Bypass) nftSpec(killSwitch bool, tunMTU int) nftSpec {
	mark := b.opts.Mark
	tun := b.opts.TUNName
	t := &nftables.Table{Name: BypassNftTable, Family: nftables.TableFamilyINet}
	pre := &nftables.Chain{
		Name: "prerouting", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityMangle,
	}
	out := &nftables.Chain{
		Name: "output", Table: t, Type: nftables.ChainTypeRoute,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityMangle,
	}
	fwd := &nftables.Chain{
		Name: "forward", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityMangle,
	}
	post := &nftables.Chain{
		Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource,
	}
	native := binaryutil.NativeEndian
	be := binaryutil.BigEndian
	tag := func(name string) []byte {
		return fmt.Appendf(nil, "ts-node-agent/v3 %s tun=%s mark=%s mtu=%d", name, tun, mark, tunMTU)
	}
	// reg1 = KEY & mask; compare with op against value.
	masked := func(load expr.Any, op expr.CmpOp, value uint32) []expr.Any {
		return []expr.Any{
			load,
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native.PutUint32(mark.Mask), Xor: native.PutUint32(0)},
			&expr.Cmp{Op: op, Register: 1, Data: native.PutUint32(value)},
		}
	}
	ctMark := &expr.Ct{Key: expr.CtKeyMARK, Register: 1}
	metaMark := &expr.Meta{Key: expr.MetaKeyMARK, Register: 1}
	direction := func(d byte) []expr.Any {
		return []expr.Any{
			&expr.Ct{Key: expr.CtKeyDIRECTION, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{d}},
		}
	}
	// reg1 = reg1 &^ mask | value: writes the pattern, keeps every other
	// bit (tailscaled's, kube-proxy's, a CNI's).
	setPattern := &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native.PutUint32(^mark.Mask), Xor: native.PutUint32(mark.Value)}
	setMetaMark := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		setPattern,
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1, SourceRegister: true},
	}
	ifName := func(key expr.MetaKey, op expr.CmpOp, name string) []expr.Any {
		return []expr.Any{
			&expr.Meta{Key: key, Register: 1},
			&expr.Cmp{Op: op, Register: 1, Data: ifname(name)},
		}
	}
	l4 := func(proto byte) []expr.Any {
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		}
	}
	nfproto := func(p byte) []expr.Any {
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
		}
	}
	// tcp flags & (syn|rst) == syn
	synOnly := append(l4(unix.IPPROTO_TCP),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0x06}, Xor: []byte{0x00}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0x02}},
	)
	const original, reply = 0, 1 // IP_CT_DIR_*
	join := func(parts ...[]expr.Any) []expr.Any {
		var out []expr.Any
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}

	// Mark connections that came in from outside the tailnet to this host:
	// original direction, not on the TUN, destination a local address,
	// and no other software's value in the mark's bits.
	// Not only "ct state new": connections opened before the table
	// existed (an SSH session older than the agent) are marked by their
	// next inbound packet. The destination test runs before DNAT (mangle
	// < dstnat), so NodePort connections to pods count too, while pods'
	// own connections to the internet (forwarded, not local) do not.
	markIn := join(
		ifName(expr.MetaKeyIIFNAME, expr.CmpOpNeq, tun),
		direction(original),
		masked(ctMark, expr.CmpOpEq, 0),
		[]expr.Any{
			&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: native.PutUint32(unix.RTN_LOCAL)},
			&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
			setPattern,
			&expr.Ct{Key: expr.CtKeyMARK, Register: 1, SourceRegister: true},
		},
	)
	// Replies of such connections get the packet mark: forwarded ones (a
	// pod answering a NodePort connection) before routing, the host's own
	// in the route chain, which re-routes them with the mark, so the
	// fwmark rule picks the main table. A packet mark that already has a
	// value in the mark's bits (a CNI's) is left alone.
	restoreReply := join(direction(reply), masked(ctMark, expr.CmpOpEq, mark.Value), masked(metaMark, expr.CmpOpEq, 0), setMetaMark)

	// Pods behind a CNI that masquerades only on its own uplink (Cilium's
	// BPF masquerading, Calico eBPF) send through the TUN with their pod
	// address, which tailscaled drops: masquerade every source outside
	// the tailnet ranges to the node's tailnet address.
	masq4 := join(ifName(expr.MetaKeyOIFNAME, expr.CmpOpEq, tun), nfproto(unix.NFPROTO_IPV4), []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: []byte{255, 192, 0, 0}, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{100, 64, 0, 0}},
		&expr.Masq{},
	})
	v6net := TailnetPrefixes[1].Addr().As16()
	v6mask := net.CIDRMask(TailnetPrefixes[1].Bits(), 128)
	masq6 := join(ifName(expr.MetaKeyOIFNAME, expr.CmpOpEq, tun), nfproto(unix.NFPROTO_IPV6), []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 8, Len: 16},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 16, Mask: v6mask, Xor: make([]byte, 16)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: v6net[:]},
		&expr.Masq{},
	})
	// TCP MSS of forwarded connections through the TUN (pods, MTU 1500,
	// behind a TUN of 1280): SYNs out of the TUN are clamped to the route's
	// MTU, SYNs in from the TUN to the TUN's MTU.
	clampOut := join(ifName(expr.MetaKeyOIFNAME, expr.CmpOpEq, tun), synOnly, []expr.Any{
		&expr.Rt{Register: 1, Key: expr.RtTCPMSS},
		&expr.Byteorder{SourceRegister: 1, DestRegister: 1, Op: expr.ByteorderHton, Len: 2, Size: 2},
		&expr.Exthdr{SourceRegister: 1, Op: expr.ExthdrOpTcpopt, Type: 2, Offset: 2, Len: 2},
	})
	clampIn := func(proto byte, mss int) []expr.Any {
		return join(ifName(expr.MetaKeyIIFNAME, expr.CmpOpEq, tun), nfproto(proto), synOnly, []expr.Any{
			&expr.Exthdr{DestRegister: 1, Op: expr.ExthdrOpTcpopt, Type: 2, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpGt, Register: 1, Data: be.PutUint16(uint16(mss))},
			&expr.Immediate{Register: 1, Data: be.PutUint16(uint16(mss))},
			&expr.Exthdr{SourceRegister: 1, Op: expr.ExthdrOpTcpopt, Type: 2, Offset: 2, Len: 2},
		})
	}

	// Packets to a destination of the sets get the mark, before routing
	// (forwarded: pods) or in the route chain (the host's own, re-routed
	// with it), when the mark's bits are free; their connection gets it
	// too, for the replies (restoreReply).
	sets := destinationSets(t)
	toDestination := func(proto byte, set *nftables.Set, offset, n uint32) []expr.Any {
		return join(nfproto(proto), []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: n},
			&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
		}, masked(metaMark, expr.CmpOpEq, 0), setMetaMark)
	}
	dst4 := toDestination(unix.NFPROTO_IPV4, sets[0], 16, 4)
	dst6 := toDestination(unix.NFPROTO_IPV6, sets[1], 24, 16)
	saveDestination := join(direction(original), masked(metaMark, expr.CmpOpEq, mark.Value), masked(ctMark, expr.CmpOpEq, 0), []expr.Any{
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
		setPattern,
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1, SourceRegister: true},
	})
	// The host's own packets to a destination left the route lookup of
	// their socket with table 52's source, the tailnet address; the mark
	// re-routed them through the main table, whose interfaces cannot
	// answer for that address.
	rerouted := func(proto byte, src []expr.Any) []expr.Any {
		return join(ifName(expr.MetaKeyOIFNAME, expr.CmpOpNeq, tun), masked(metaMark, expr.CmpOpEq, mark.Value), nfproto(proto), src)
	}
	v4net := TailnetPrefixes[0].Addr().As4()
	masqRerouted4 := rerouted(unix.NFPROTO_IPV4, []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: net.CIDRMask(TailnetPrefixes[0].Bits(), 32), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: v4net[:]},
		&expr.Masq{},
	})
	masqRerouted6 := rerouted(unix.NFPROTO_IPV6, []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 8, Len: 16},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 16, Mask: v6mask, Xor: make([]byte, 16)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: v6net[:]},
		&expr.Masq{},
	})

	spec := nftSpec{
		table:  t,
		sets:   sets,
		chains: []*nftables.Chain{pre, out, fwd, post},
		rules: []*nftables.Rule{
			{Table: t, Chain: pre, Exprs: markIn, UserData: tag("mark-inbound")},
			{Table: t, Chain: pre, Exprs: restoreReply, UserData: tag("restore-forwarded-reply")},
			{Table: t, Chain: pre, Exprs: dst4, UserData: tag("mark-forwarded-to-destination-ipv4")},
			{Table: t, Chain: pre, Exprs: dst6, UserData: tag("mark-forwarded-to-destination-ipv6")},
			{Table: t, Chain: pre, Exprs: saveDestination, UserData: tag("save-forwarded-destination-mark")},
			{Table: t, Chain: out, Exprs: restoreReply, UserData: tag("restore-local-reply")},
			{Table: t, Chain: out, Exprs: dst4, UserData: tag("mark-local-to-destination-ipv4")},
			{Table: t, Chain: out, Exprs: dst6, UserData: tag("mark-local-to-destination-ipv6")},
			{Table: t, Chain: out, Exprs: saveDestination, UserData: tag("save-local-destination-mark")},
			{Table: t, Chain: fwd, Exprs: clampOut, UserData: tag("clamp-mss-out")},
			{Table: t, Chain: fwd, Exprs: clampIn(unix.NFPROTO_IPV4, tunMTU-40), UserData: tag("clamp-mss-in-ipv4")},
			{Table: t, Chain: fwd, Exprs: clampIn(unix.NFPROTO_IPV6, tunMTU-60), UserData: tag("clamp-mss-in-ipv6")},
			{Table: t, Chain: post, Exprs: masq4, UserData: tag("masquerade-ipv4")},
			{Table: t, Chain: post, Exprs: masq6, UserData: tag("masquerade-ipv6")},
			{Table: t, Chain: post, Exprs: masqRerouted4, UserData: tag("masquerade-rerouted-ipv4")},
			{Table: t, Chain: post, Exprs: masqRerouted6, UserData: tag("masquerade-rerouted-ipv6")},
		},
	}
	if !killSwitch {
		return spec
	}
	// The kill switch's sink route sends the host's own internet packets
	// to lo; those that are not re-routed replies (they would carry the
	// mark) are rejected here: TCP with a reset, the rest with ICMP.
	// Filter priority, after the route chain: "oif" is still the sink's
	// lo there, the mark tells the re-routed replies apart.
	ks := &nftables.Chain{
		Name: "killswitch", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter,
	}
	sunk := join(
		[]expr.Any{
			&expr.Meta{Key: expr.MetaKeyOIF, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: native.PutUint32(1)}, // lo is ifindex 1 in every namespace
		},
		masked(metaMark, expr.CmpOpNeq, mark.Value),
		[]expr.Any{
			&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: native.PutUint32(unix.RTN_LOCAL)},
		},
	)
	spec.chains = append(spec.chains, ks)
	spec.rules = append(spec.rules,
		&nftables.Rule{Table: t, Chain: ks, Exprs: join(sunk, l4(unix.IPPROTO_TCP), []expr.Any{
			&expr.Reject{Type: unix.NFT_REJECT_TCP_RST},
		}), UserData: tag("killswitch-reject-tcp")},
		&nftables.Rule{Table: t, Chain: ks, Exprs: join(sunk, []expr.Any{
			&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_HOST_UNREACH},
		}), UserData: tag("killswitch-reject")},
	)
	return spec
}

// nftConn opens an nftables connection in the Bypass's namespace.
func (b *Bypass) nftConn() (*nftables.Conn, error) {
	var opts []nftables.ConnOption
	if b.ns.IsOpen() {
		opts = append(opts, nftables.WithNetNSFd(int(b.ns)))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("open nftables: %w", err)
	}
	return c, nil
}

// tableState is how the table in the kernel compares with a spec.
type tableState int

const (
	tableMissing   tableState = iota // no table, or its sets are not the spec's: re-create it all
	tableChainsOff                   // the sets are right, some chain or rule is not
	tableOK
)

// compareTable compares the table in the kernel with spec. It also
// returns the chains the table has.
func compareTable(c *nftables.Conn, spec nftSpec) (tableState, []*nftables.Chain, error) {
	tables, err := c.ListTablesOfFamily(spec.table.Family)
	if err != nil {
		return tableMissing, nil, fmt.Errorf("list nftables tables: %w", err)
	}
	if !slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == spec.table.Name }) {
		return tableMissing, nil, nil
	}
	if ok, err := setsMatch(c, spec.table); err != nil || !ok {
		return tableMissing, nil, err
	}
	all, err := c.ListChainsOfTableFamily(spec.table.Family)
	if err != nil {
		return tableMissing, nil, fmt.Errorf("list nftables chains: %w", err)
	}
	var chains []*nftables.Chain
	for _, ch := range all {
		if ch.Table != nil && ch.Table.Name == spec.table.Name {
			chains = append(chains, ch)
		}
	}
	if len(chains) != len(spec.chains) {
		return tableChainsOff, chains, nil
	}
	for _, ch := range chains {
		i := slices.IndexFunc(spec.chains, func(w *nftables.Chain) bool { return w.Name == ch.Name })
		if i < 0 {
			return tableChainsOff, chains, nil
		}
		w := spec.chains[i]
		if ch.Type != w.Type || ch.Hooknum == nil || *ch.Hooknum != *w.Hooknum || ch.Priority == nil || *ch.Priority != *w.Priority {
			return tableChainsOff, chains, nil
		}
	}
	for _, ch := range spec.chains {
		got, err := c.GetRules(spec.table, ch)
		if err != nil {
			return tableMissing, chains, fmt.Errorf("list nftables rules of chain %s: %w", ch.Name, err)
		}
		var want []*nftables.Rule
		for _, r := range spec.rules {
			if r.Chain == ch {
				want = append(want, r)
			}
		}
		if !slices.EqualFunc(got, want, func(g, w *nftables.Rule) bool { return string(g.UserData) == string(w.UserData) }) {
			return tableChainsOff, chains, nil
		}
	}
	return tableOK, chains, nil
}

// syncTable makes the nftables table exactly as wanted, with dsts in its
// sets. A table that is missing or has other sets is re-created in one
// transaction with its chains and rules (and, when there are many, the
// destinations follow in more batches); wrong chains or rules are
// replaced in one transaction that keeps the sets; the sets change by
// difference, from b.sets unless verify or they are not known, and then
// from a dump. It reports whether the table or its chains were
// (re)created, and how many destinations it added and deleted.
func (b *Bypass) syncTable(killSwitch bool, dsts []netip.Prefix, verify bool) (created bool, added, deleted int, err error) {
	c, err := b.nftConn()
	if err != nil {
		return false, 0, 0, err
	}
	spec := b.nftSpec(killSwitch, b.tunMTU())
	state, have, err := compareTable(c, spec)
	if err != nil {
		b.setsKnown = false
		return false, 0, 0, err
	}
	switch state {
	case tableMissing:
		b.setsKnown = false
		c.AddTable(spec.table) // so that the delete below cannot fail
		c.DelTable(spec.table)
		c.AddTable(spec.table)
		for _, set := range spec.sets {
			if err := c.AddSet(set, nil); err != nil {
				return false, 0, 0, fmt.Errorf("install nftables set %s: %w", set.Name, err)
			}
		}
		b.addChains(c, spec)
		// The sets are empty now.
		b.sets, b.setsKnown, created = [2]setContent{}, true, true
	case tableChainsOff:
		for _, ch := range have {
			c.FlushChain(ch)
			c.DelChain(ch)
		}
		b.addChains(c, spec)
		created = true
	}
	if verify || !b.setsKnown {
		if state != tableMissing {
			if b.sets, err = readSets(c, spec.table); err != nil {
				b.setsKnown = false
				return false, 0, 0, err
			}
		}
		b.setsKnown = true
	}
	ops, added, deleted := setDiff(spec.table, b.sets, dsts)
	if _, err := queueElements(c, ops); err == nil {
		err = c.Flush()
	}
	if err != nil {
		// The sets may hold something else than b.sets: read them the
		// next time.
		b.setsKnown = false
		return false, 0, 0, fmt.Errorf("install nftables table inet %s: %w", spec.table.Name, err)
	}
	for i := range b.sets {
		b.sets[i] = setContent{}
	}
	for _, p := range dsts {
		b.sets[setOf(p)].prefixes = append(b.sets[setOf(p)].prefixes, p)
	}
	return created, added, deleted, nil
}

// addChains queues the spec's chains and rules.
func (b *Bypass) addChains(c *nftables.Conn, spec nftSpec) {
	for _, ch := range spec.chains {
		c.AddChain(ch)
	}
	for _, r := range spec.rules {
		c.AddRule(r)
	}
}

// deleteTable deletes the nftables table if it exists. A kernel without
// nftables has no table to delete.
func (b *Bypass) deleteTable() (deleted bool, err error) {
	c, err := b.nftConn()
	if err != nil {
		return false, err
	}
	t := &nftables.Table{Name: BypassNftTable, Family: nftables.TableFamilyINet}
	tables, err := c.ListTablesOfFamily(t.Family)
	switch {
	case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.EPROTONOSUPPORT), errors.Is(err, unix.EAFNOSUPPORT):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("list nftables tables: %w", err)
	case !slices.ContainsFunc(tables, func(x *nftables.Table) bool { return x.Name == t.Name }):
		return false, nil
	}
	c.DelTable(t)
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return false, fmt.Errorf("delete nftables table inet %s: %w", t.Name, err)
	}
	return true, nil
}

// Run keeps the bypass in place until ctx is done: it follows policy rule
// and nftables notifications (netlink multicast, no polling) and, while
// the bypass is active, restores within a second what something else
// deleted, and retries a failed Apply every second. It never removes the
// bypass itself (Remove does). It returns nil when ctx is done.
func (b *Bypass) Run(ctx context.Context) error {
	f := newFollower(b.ns, b.clock, bypassDebounce, bypassRetry,
		netlinkSub{unix.NETLINK_ROUTE, []uint{unix.RTNLGRP_IPV4_RULE, unix.RTNLGRP_IPV6_RULE}, relevantRuleEvent},
		netlinkSub{unix.NETLINK_ROUTE, []uint{unix.RTNLGRP_IPV4_ROUTE, unix.RTNLGRP_IPV6_ROUTE}, relevantRouteEvent},
		netlinkSub{unix.NETLINK_NETFILTER, []uint{unix.NFNLGRP_NFTABLES}, relevantNftEvent},
	)
	defer f.close()
	if err := f.start(); err != nil {
		b.log.Warn("cannot follow policy rule and nftables changes; retrying", "err", err, "in", bypassRetry)
	} else {
		f.notified() // catch what changed before the subscription
	}
	heartbeat := b.clock.NewTicker(HeartbeatInterval)
	defer heartbeat.Stop()
	for {
		if b.beat != nil {
			b.beat()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-heartbeat.C():
		case <-f.events:
			f.notified()
		case <-b.kick:
			f.after(bypassRetry)
		case err := <-f.broken:
			b.log.Warn("netlink subscription broke; re-subscribing", "err", err, "in", bypassRetry)
			f.broke()
		case <-f.due():
			if err := f.fired(); err != nil {
				b.log.Warn("cannot follow policy rule and nftables changes; retrying", "err", err, "in", bypassRetry)
			}
			if err := b.reconcile(); err != nil {
				b.log.Error("cannot restore the bypass; retrying", "err", err, "in", bypassRetry)
				f.after(bypassRetry)
			}
		}
	}
}

// relevantRuleEvent: a policy rule carrying BypassProtocol was deleted, or
// the message cannot be decoded.
func relevantRuleEvent(m syscall.NetlinkMessage) bool {
	if m.Header.Type != unix.RTM_DELRULE {
		return false
	}
	if len(m.Data) < unix.SizeofRtMsg {
		return true
	}
	attrs, err := nl.ParseRouteAttr(m.Data[unix.SizeofRtMsg:])
	if err != nil {
		return true
	}
	for _, a := range attrs {
		if a.Attr.Type == nl.FRA_PROTOCOL && len(a.Value) >= 1 {
			return a.Value[0] == BypassProtocol
		}
	}
	return false
}

// relevantRouteEvent: a route of KillSwitchTable was deleted, or the
// message cannot be decoded.
func relevantRouteEvent(m syscall.NetlinkMessage) bool {
	if m.Header.Type != unix.RTM_DELROUTE {
		return false
	}
	if len(m.Data) < unix.SizeofRtMsg {
		return true
	}
	table := uint32(m.Data[4]) // rtmsg.rtm_table
	attrs, err := nl.ParseRouteAttr(m.Data[unix.SizeofRtMsg:])
	if err != nil {
		return true
	}
	for _, a := range attrs {
		if a.Attr.Type == unix.RTA_TABLE && len(a.Value) >= 4 {
			table = binaryutil.NativeEndian.Uint32(a.Value[:4])
		}
	}
	return table == KillSwitchTable
}

// relevantNftEvent: anything that happened to the bypass table (its
// tables, chains and rules messages, and the deletion of its sets or of
// set elements, name the table in their first attribute), or a message
// that cannot be decoded. Elements added are not: the agent adds many, and
// an element someone else added only bypasses more.
func relevantNftEvent(m syscall.NetlinkMessage) bool {
	if m.Header.Type>>8 != unix.NFNL_SUBSYS_NFTABLES {
		return false
	}
	switch m.Header.Type & 0xff {
	case unix.NFT_MSG_NEWTABLE, unix.NFT_MSG_DELTABLE, unix.NFT_MSG_NEWCHAIN, unix.NFT_MSG_DELCHAIN,
		unix.NFT_MSG_NEWRULE, unix.NFT_MSG_DELRULE, unix.NFT_MSG_DELSET, unix.NFT_MSG_DELSETELEM:
	default:
		return false
	}
	const nfgenmsgLen = 4
	if len(m.Data) < nfgenmsgLen {
		return true
	}
	if m.Data[0] != unix.NFPROTO_INET {
		return false
	}
	attrs, err := nl.ParseRouteAttr(m.Data[nfgenmsgLen:])
	if err != nil {
		return true
	}
	for _, a := range attrs {
		// NFTA_TABLE_NAME, NFTA_CHAIN_TABLE and NFTA_RULE_TABLE are all 1.
		if a.Attr.Type&nl.NLA_TYPE_MASK == unix.NFTA_TABLE_NAME {
			return cString(a.Value) == BypassNftTable
		}
	}
	return false
}
