package hostnet

import (
	"errors"
	"net"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestKillSwitchBlocksTheDefaultRouteOnly installs the kill switch in a
// throw-away netns whose main table has a LAN and a default route, and no
// table 52 (tailscaled down): internet destinations are unreachable, the
// LAN still routes; the rules survive a second sync unchanged (RuleList
// drops the unreachable action, so this proves they are recognised), and
// Remove takes them away.
func TestKillSwitchBlocksTheDefaultRouteOnly(t *testing.T) {
	requireRoot(t)
	ns := newNetNS(t)
	h := nsHandle(t, ns)

	// A veth pair in the netns stands for the LAN: 198.18.5.2/24, default
	// via 198.18.5.1.
	la := netlink.NewLinkAttrs()
	la.Name = "lan0"
	veth := &netlink.Veth{LinkAttrs: la, PeerName: "lan1"}
	if err := h.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"lan0", "lan1", "lo"} {
		l, err := h.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	lan, _ := h.LinkByName("lan0")
	a, _ := netlink.ParseAddr("198.18.5.2/24")
	if err := h.AddrAdd(lan, a); err != nil {
		t.Fatal(err)
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: lan.Attrs().Index, Gw: net.ParseIP("198.18.5.1")}); err != nil {
		t.Fatal(err)
	}
	internet, lanPeer := net.ParseIP("198.19.0.1"), net.ParseIP("198.18.5.7")
	if _, err := h.RouteGet(internet); err != nil {
		t.Fatalf("before the kill switch the internet routes: %v", err)
	}

	b := NewBypass(BypassOptions{}, WithBypassNetNS(ns), WithBypassLogger(testLogger(t)))
	want := append(BypassRules(testInputs, Mark{}), KillSwitchRules()...)
	if err := b.Apply(want); err != nil {
		t.Fatal(err)
	}
	if got := ownedIn(t, h, ns); !sameRules(got, want) {
		t.Fatalf("owned rules:\n got %s\nwant %s", describeRules(got), describeRules(want))
	}
	added, deleted, err := b.syncRules(want)
	if err != nil || added != 0 || deleted != 0 {
		t.Fatalf("a second sync changed rules (added %d, deleted %d, err %v): the kill switch is not recognised", added, deleted, err)
	}
	// The host's own packets to the internet are routed to the sink (lo),
	// where the nftables table rejects them: a TCP connect is refused at
	// once, nothing reaches lan0.
	if rs, err := h.RouteGet(internet); err != nil || len(rs) != 1 || rs[0].LinkIndex != 1 {
		t.Fatalf("internet with the kill switch and no table 52: %v %v, want the sink route via lo", rs, err)
	}
	var dialErr error
	inNS(t, ns, func() error {
		c, err := net.DialTimeout("tcp4", net.JoinHostPort(internet.String(), "443"), 2*time.Second)
		if err == nil {
			c.Close()
		}
		dialErr = err
		return nil
	})
	if !errors.Is(dialErr, unix.ECONNREFUSED) {
		t.Fatalf("TCP to the internet with the kill switch: %v, want connection refused by the kill switch", dialErr)
	}
	if _, err := h.RouteGet(lanPeer); err != nil {
		t.Fatalf("the LAN no longer routes with the kill switch: %v", err)
	}

	// Without it again (the exit node turned off): direct.
	if err := b.Apply(BypassRules(testInputs, Mark{})); err != nil {
		t.Fatal(err)
	}
	if _, err := h.RouteGet(internet); err != nil {
		t.Fatalf("after removing the kill switch the internet does not route: %v", err)
	}
	if err := b.Remove(); err != nil {
		t.Fatal(err)
	}
	if got := ownedIn(t, h, ns); len(got) != 0 {
		t.Fatalf("owned rules left after Remove: %s", describeRules(got))
	}
	if rs, err := h.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: KillSwitchTable}, netlink.RT_FILTER_TABLE); err != nil || len(rs) != 0 {
		t.Fatalf("sink routes left after Remove: %v %v", rs, err)
	}
}

func TestKillSwitchRuleStrings(t *testing.T) {
	got := map[string]bool{}
	for _, r := range KillSwitchRules() {
		got[r.String()] = true
		if back, ok := bypassRuleOf(*r.netlinkRule()); !ok || back != r {
			t.Errorf("%s: round trip gives %+v, %v", r, back, ok)
		}
	}
	for _, want := range []string{"fwmark 0x80000/0xff0000 lookup main", "lookup main suppress_prefixlength 0", "iif lo lookup 5281", "unreachable"} {
		if !got[want] {
			t.Errorf("no kill switch rule %q", want)
		}
	}
}
