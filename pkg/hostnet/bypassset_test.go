package hostnet

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ts-node-agent/ts-node-agent/internal/testenv"
)

// TestSetElements: a prefix is a start element and an end element (the
// first address after it), none at the top of the family; reading the
// elements of prefixes that do not overlap (as in a set) back gives the
// prefixes, in any order, and sets apart what is no prefix.
func TestSetElements(t *testing.T) {
	ends := map[string]string{
		"10.0.0.0/8":         "11.0.0.0",
		"198.18.0.7/32":      "198.18.0.8",
		"12.0.0.0/31":        "12.0.0.2",
		"255.255.255.255/32": "",
		"224.0.0.0/4":        "240.0.0.0",
		"fd00::/8":           "fe00::",
		"2001:db8::1/128":    "2001:db8::2",
		"ffff::/16":          "",
	}
	var v4, v6 []nftables.SetElement
	var want4, want6 []netip.Prefix
	for s, end := range ends {
		p := pfx(s)
		elems := prefixElements(p)
		if elems[0].IntervalEnd || !slices.Equal(elems[0].Key, p.Addr().AsSlice()) {
			t.Errorf("%s: start element %+v", s, elems[0])
		}
		switch {
		case end == "" && len(elems) != 1:
			t.Errorf("%s reaches the top: elements %+v, want only the start", s, elems)
		case end != "" && (len(elems) != 2 || !elems[1].IntervalEnd || !slices.Equal(elems[1].Key, addr(end).AsSlice())):
			t.Errorf("%s: elements %+v, want the end %s flagged", s, elems, end)
		}
		if p.Addr().Is4() {
			v4, want4 = append(elems, v4...), append(want4, p)
		} else {
			v6, want6 = append(v6, elems...), append(want6, p)
		}
	}
	for _, tt := range []struct {
		elems []nftables.SetElement
		bits  int
		want  []netip.Prefix
	}{{v4, 32, want4}, {v6, 128, want6}} {
		c := parseSetElements(tt.elems, tt.bits)
		slices.SortFunc(c.prefixes, netip.Prefix.Compare)
		slices.SortFunc(tt.want, netip.Prefix.Compare)
		if !slices.Equal(c.prefixes, tt.want) || len(c.junk) != 0 {
			t.Errorf("parsed %v, junk %v; want %v", c.prefixes, c.junk, tt.want)
		}
	}

	// Not prefixes: a range of six addresses, a lone end, a start
	// followed by another start.
	junk := []nftables.SetElement{
		{Key: addr("10.1.0.0").AsSlice()}, {Key: addr("10.1.0.6").AsSlice(), IntervalEnd: true},
		{Key: addr("10.2.0.0").AsSlice(), IntervalEnd: true},
		{Key: addr("10.3.0.0").AsSlice()}, {Key: addr("10.3.0.4").AsSlice()}, {Key: addr("10.3.0.8").AsSlice(), IntervalEnd: true},
	}
	c := parseSetElements(junk, 32)
	if !slices.Equal(c.prefixes, []netip.Prefix{pfx("10.3.0.4/30")}) || len(c.junk) != 4 {
		t.Errorf("parsed %v, junk %+v; want 10.3.0.4/30 and 4 junk elements", c.prefixes, c.junk)
	}
}

// TestBypassScale: at 5000 Nodes (5000 node addresses, 5000 pod CIDRs)
// the number of policy rules is what it is with one destination; a Node
// that joins or leaves changes its own elements and nothing else, with
// no policy rule touched; the sets hold exactly the destinations.
func TestBypassScale(t *testing.T) {
	requireRoot(t)
	ns := newNetNS(t)
	h := nsHandle(t, ns)
	b := NewBypass(BypassOptions{TUNName: "tailscale0"}, WithBypassNetNS(ns), WithBypassLogger(testLogger(t)))

	if err := b.Apply(BypassRules(BypassInputs{NodeAddrs: []netip.Addr{addr("198.18.0.2")}}, Mark{})); err != nil {
		t.Fatal(err)
	}
	small := len(ownedPolicyRules(t, h))

	in := scaleInputs(5000)
	start := time.Now()
	if err := b.Apply(BypassRules(in, Mark{})); err != nil {
		t.Fatal(err)
	}
	t.Logf("apply of %d destinations: %v", 10000, time.Since(start).Round(time.Millisecond))
	if got := len(ownedPolicyRules(t, h)); got != small {
		t.Fatalf("%d policy rules with 5000 Nodes, %d with one: the rule count grows with the cluster", got, small)
	}
	if got, want := len(setPrefixesIn(t, ns)), 10000; got != want {
		t.Fatalf("%d destinations in the sets, want %d", got, want)
	}

	events := subscribeBypassEvents(t, ns)
	joined := in
	joined.NodeAddrs = append(slices.Clone(in.NodeAddrs), addr("198.19.255.1"))
	joined.PodCIDRs = append(slices.Clone(in.PodCIDRs), pfx("10.200.0.0/24"))
	for _, step := range []struct {
		name string
		in   BypassInputs
	}{{"join", joined}, {"leave", in}} {
		events.reset()
		if err := b.Apply(BypassRules(step.in, Mark{})); err != nil {
			t.Fatal(err)
		}
		elems, rules := events.quiet(t)
		t.Logf("%s: %d set element notifications, %d policy rule notifications", step.name, elems, rules)
		// Two destinations, of two elements each.
		if elems > 4 || elems == 0 || rules != 0 {
			t.Errorf("%s: %d set element and %d policy rule notifications, want at most 4 and none", step.name, elems, rules)
		}
	}
	got := setPrefixesIn(t, ns)
	slices.SortFunc(got, netip.Prefix.Compare)
	want := prefixesOf(BypassRules(in, Mark{}))
	slices.SortFunc(want, netip.Prefix.Compare)
	if !slices.Equal(got, want) {
		t.Fatalf("the sets hold %d destinations, want %d", len(got), len(want))
	}
	if err := b.Remove(); err != nil {
		t.Fatal(err)
	}
}

// scaleInputs are the destinations of a cluster of n Nodes: an address
// and a /24 pod CIDR each.
func scaleInputs(n int) BypassInputs {
	var in BypassInputs
	for i := range n {
		in.NodeAddrs = append(in.NodeAddrs, netip.AddrFrom4([4]byte{198, 18, byte(i / 250), byte(i%250 + 2)}))
		in.PodCIDRs = append(in.PodCIDRs, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i / 256), byte(i % 256), 0}), 24))
	}
	return in
}

// ownedPolicyRules are the policy rules tagged with BypassProtocol.
func ownedPolicyRules(t *testing.T, h *netlink.Handle) []netlink.Rule {
	t.Helper()
	return slices.DeleteFunc(rulesIn(t, h), func(r netlink.Rule) bool { return r.Protocol != BypassProtocol })
}

// bypassEvents counts the kernel's notifications of changes to set
// elements and to policy rules in one namespace.
type bypassEvents struct {
	elems, rules chan int
	resetc       chan struct{}
}

func subscribeBypassEvents(t *testing.T, ns netns.NsHandle) *bypassEvents {
	t.Helper()
	e := &bypassEvents{elems: make(chan int, 1024), rules: make(chan int, 1024)}
	for _, sub := range []struct {
		proto  int
		groups []uint
		count  func(syscall.NetlinkMessage) (elem, rule bool)
	}{
		{unix.NETLINK_NETFILTER, []uint{unix.NFNLGRP_NFTABLES}, func(m syscall.NetlinkMessage) (bool, bool) {
			typ := m.Header.Type & 0xff
			return m.Header.Type>>8 == unix.NFNL_SUBSYS_NFTABLES && (typ == unix.NFT_MSG_NEWSETELEM || typ == unix.NFT_MSG_DELSETELEM), false
		}},
		{unix.NETLINK_ROUTE, []uint{unix.RTNLGRP_IPV4_RULE, unix.RTNLGRP_IPV6_RULE}, func(m syscall.NetlinkMessage) (bool, bool) {
			return false, m.Header.Type == unix.RTM_NEWRULE || m.Header.Type == unix.RTM_DELRULE
		}},
	} {
		s, err := nl.SubscribeAt(ns, netns.None(), sub.proto, sub.groups...)
		if err != nil {
			t.Fatal(err)
		}
		_ = s.SetReceiveBufferSize(1<<22, true)
		t.Cleanup(s.Close)
		go func() {
			for {
				msgs, _, err := s.Receive()
				if err != nil {
					return
				}
				for _, m := range msgs {
					if elem, rule := sub.count(m); elem {
						e.elems <- 1
					} else if rule {
						e.rules <- 1
					}
				}
			}
		}()
	}
	return e
}

// reset drops what was counted so far.
func (e *bypassEvents) reset() {
	for {
		select {
		case <-e.elems:
		case <-e.rules:
		default:
			return
		}
	}
}

// quiet counts notifications until none came for 200ms.
func (e *bypassEvents) quiet(t *testing.T) (elems, rules int) {
	for {
		select {
		case <-e.elems:
			elems++
		case <-e.rules:
			rules++
		case <-time.After(200 * time.Millisecond):
			return elems, rules
		}
	}
}

// TestBypassAdjacentDestinations: prefixes that touch (one's end element
// is the next one's start, as the pod CIDRs of consecutive Nodes do) mark
// exactly their own packets: the host's packets to each are marked, those
// to the gap between them and past the last are not. (Counted by a second
// table's output chain after the route chain; UDP, so nothing must
// answer.)
func TestBypassAdjacentDestinations(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("nft"); err != nil {
		testenv.SkipOrFail(t, "needs the nft command (apt-get install nftables)")
	}
	ns := newNetNS(t)
	h := nsHandle(t, ns)
	b := NewBypass(BypassOptions{TUNName: "tailscale0"}, WithBypassNetNS(ns), WithBypassLogger(testLogger(t)))
	in := BypassInputs{
		PodCIDRs:  []netip.Prefix{pfx("10.0.0.0/24"), pfx("10.0.1.0/24"), pfx("10.0.3.0/24")},
		NodeAddrs: []netip.Addr{addr("10.9.0.1"), addr("10.9.0.2"), addr("10.9.0.3")},
	}
	if err := b.Apply(BypassRules(in, Mark{})); err != nil {
		t.Fatal(err)
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "v0"}, PeerName: "v1"}
	if err := h.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"lo", "v0", "v1"} {
		if err := h.LinkSetUp(mustLink(t, h, n)); err != nil {
			t.Fatal(err)
		}
	}
	v0 := mustLink(t, h, "v0")
	if err := h.AddrAdd(v0, mustAddr(t, "192.168.5.1/24")); err != nil {
		t.Fatal(err)
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: v0.Attrs().Index, Dst: mustAddr(t, "10.0.0.0/8").IPNet, Gw: net.ParseIP("192.168.5.2")}); err != nil {
		t.Fatal(err)
	}
	if err := h.NeighAdd(&netlink.Neigh{LinkIndex: v0.Attrs().Index, State: netlink.NUD_PERMANENT, IP: net.ParseIP("192.168.5.2"),
		HardwareAddr: net.HardwareAddr{2, 0, 0, 0, 0, 2}}); err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"10.0.0.5": true, "10.0.0.255": true, "10.0.1.0": true, "10.0.1.5": true, "10.0.2.5": false,
		"10.0.3.5": true, "10.0.4.0": false, "10.9.0.1": true, "10.9.0.2": true, "10.9.0.3": true, "10.9.0.4": false}
	script := "add table inet count\nadd chain inet count out { type filter hook output priority 10; }\n"
	for a := range want {
		script += fmt.Sprintf("add rule inet count out ip daddr %s meta mark & 0xf00 == 0x600 counter comment \"%s\"\n", a, a)
	}
	inNS(t, ns, func() error {
		cmd := exec.Command("nft", "-f", "-")
		cmd.Stdin = strings.NewReader(script)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("nft: %v: %s", err, out)
		}
		for a := range want {
			c, err := net.Dial("udp4", a+":9")
			if err != nil {
				return err
			}
			c.Write([]byte("x"))
			c.Close()
		}
		out, err := exec.Command("nft", "list", "chain", "inet", "count", "out").CombinedOutput()
		if err != nil {
			return fmt.Errorf("nft list: %v: %s", err, out)
		}
		for _, line := range strings.Split(string(out), "\n") {
			for a, marked := range want {
				if !strings.Contains(line, `comment "`+a+`"`) {
					continue
				}
				if got := !strings.Contains(line, "packets 0 "); got != marked {
					t.Errorf("%s: marked %v, want %v (%s)", a, got, marked, strings.TrimSpace(line))
				}
			}
		}
		return nil
	})
}

// BenchmarkSetDiffJoin is the set change a Node joining a 5000-Node
// cluster costs the agent (10 000 destinations diffed); `make bench`
// measures the kernel's side.
func BenchmarkSetDiffJoin(b *testing.B) {
	in := scaleInputs(5000)
	var have [2]setContent
	for _, p := range prefixesOf(BypassRules(in, Mark{})) {
		have[setOf(p)].prefixes = append(have[setOf(p)].prefixes, p)
	}
	in.NodeAddrs = append(in.NodeAddrs, addr("198.19.255.1"))
	want := prefixesOf(BypassRules(in, Mark{}))
	for b.Loop() {
		if _, added, deleted := setDiff(nil, have, want); added != 1 || deleted != 0 {
			b.Fatalf("added %d, deleted %d", added, deleted)
		}
	}
}
