package hostnet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/ts-node-agent/ts-node-agent/pkg/probe"
	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func addr(s string) netip.Addr  { return netip.MustParseAddr(s) }

// dstRule is the destination for prefix s.
func dstRule(s string) BypassRule {
	p := pfx(s)
	fam := unix.AF_INET
	if p.Addr().Is6() {
		fam = unix.AF_INET6
	}
	return BypassRule{Family: fam, Dst: p}
}

// legacyRule is the policy rule an earlier agent installed for prefix s.
func legacyRule(s string) BypassRule {
	r := dstRule(s)
	r.Priority = legacyBypassPriority
	return r
}

// markRules are the fwmark rules of both families for mark.
func markRules(mark Mark) []BypassRule {
	return []BypassRule{
		{Family: unix.AF_INET, Priority: BypassMarkPriority, Mark: mark.Value, Mask: mark.Mask},
		{Family: unix.AF_INET6, Priority: BypassMarkPriority, Mark: mark.Value, Mask: mark.Mask},
	}
}

func TestBypassRules(t *testing.T) {
	tests := []struct {
		name    string
		in      BypassInputs
		mark    Mark
		want    []string // destination prefixes, in order
		skipped []string
	}{
		{
			name: "no inputs: only the fwmark rules",
		},
		{
			name: "every kind of input, sorted v4 then v6",
			in: BypassInputs{
				CIDRs:      []netip.Prefix{pfx("10.43.0.0/16"), pfx("fd00:43::/108")},
				PodCIDRs:   []netip.Prefix{pfx("10.42.1.0/24"), pfx("fd00:42:1::/64")},
				NodeAddrs:  []netip.Addr{addr("198.18.0.12"), addr("2001:db8::12")},
				APIServers: []netip.Addr{addr("198.18.0.5")},
				Control:    []netip.Addr{addr("192.0.2.7")},
			},
			want: []string{"10.42.1.0/24", "10.43.0.0/16", "192.0.2.7/32", "198.18.0.5/32", "198.18.0.12/32",
				"2001:db8::12/128", "fd00:42:1::/64", "fd00:43::/108"},
		},
		{
			name: "duplicates across inputs",
			in: BypassInputs{
				CIDRs:      []netip.Prefix{pfx("198.18.0.5/32"), pfx("198.18.0.5/32")},
				NodeAddrs:  []netip.Addr{addr("198.18.0.5"), addr("198.18.0.6")},
				APIServers: []netip.Addr{addr("198.18.0.5"), addr("198.18.0.6")},
			},
			want: []string{"198.18.0.5/32", "198.18.0.6/32"},
		},
		{
			name: "prefixes covered by a broader one are dropped",
			in: BypassInputs{
				CIDRs:     []netip.Prefix{pfx("10.42.0.0/16"), pfx("10.0.0.0/8"), pfx("11.0.0.0/8")},
				PodCIDRs:  []netip.Prefix{pfx("10.42.3.0/24")},
				NodeAddrs: []netip.Addr{addr("10.1.2.3"), addr("12.0.0.1"), addr("11.255.255.255")},
			},
			want: []string{"10.0.0.0/8", "11.0.0.0/8", "12.0.0.1/32"},
		},
		{
			name: "a v4 prefix never covers v6 and the other way round",
			in: BypassInputs{
				CIDRs:     []netip.Prefix{pfx("128.0.0.0/1"), pfx("::/1")},
				NodeAddrs: []netip.Addr{addr("::1:2"), addr("200.1.2.3"), addr("::ffff:200.1.2.4")},
			},
			want: []string{"128.0.0.0/1", "::/1"},
		},
		{
			name: "unmasked prefixes are masked, IPv4-mapped and zoned addresses normalised",
			in: BypassInputs{
				CIDRs:     []netip.Prefix{pfx("10.43.7.9/16"), pfx("::ffff:192.0.2.0/120")},
				NodeAddrs: []netip.Addr{addr("::ffff:198.18.0.9"), addr("fe80::1%eth0")},
			},
			want: []string{"10.43.0.0/16", "192.0.2.0/24", "198.18.0.9/32", "fe80::1/128"},
		},
		{
			name: "zero values are ignored",
			in: BypassInputs{
				CIDRs:     []netip.Prefix{{}},
				NodeAddrs: []netip.Addr{{}},
			},
		},
		{
			name: "tailnet ranges are never bypassed",
			in: BypassInputs{
				CIDRs:     []netip.Prefix{pfx("100.0.0.0/8"), pfx("0.0.0.0/0"), pfx("fd7a:115c:a1e0::/48")},
				NodeAddrs: []netip.Addr{addr("100.100.100.100"), addr("100.63.255.255"), addr("100.128.0.1")},
			},
			want:    []string{"100.63.255.255/32", "100.128.0.1/32"},
			skipped: []string{"0.0.0.0/0", "100.0.0.0/8", "100.100.100.100/32", "fd7a:115c:a1e0::/48"},
		},
		{
			name: "explicit mark",
			mark: Mark{Value: 0x2000, Mask: 0x2000},
			in:   BypassInputs{CIDRs: []netip.Prefix{pfx("10.43.0.0/16")}},
			want: []string{"10.43.0.0/16"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mark := tt.mark
			if mark.IsZero() {
				mark = DefaultBypassMark
			}
			want := markRules(mark)
			for _, s := range tt.want {
				want = append(want, dstRule(s))
			}
			got := BypassRules(tt.in, tt.mark)
			if !slices.Equal(got, want) {
				t.Errorf("BypassRules:\n got %s\nwant %s", describeRules(got), describeRules(want))
			}
			var skipped []string
			for _, p := range BypassSkipped(tt.in) {
				skipped = append(skipped, p.String())
			}
			if !slices.Equal(skipped, tt.skipped) {
				t.Errorf("BypassSkipped = %v, want %v", skipped, tt.skipped)
			}
		})
	}
}

func TestBypassRuleString(t *testing.T) {
	for _, tt := range []struct {
		r    BypassRule
		want string
	}{
		{dstRule("10.43.0.0/16"), "to 10.43.0.0/16 lookup main"},
		{dstRule("fd00::/8"), "to fd00::/8 lookup main"},
		{markRules(DefaultBypassMark)[0], "fwmark 0x600/0xf00 lookup main"},
		{KillSwitchRules()[0], "fwmark 0x80000/0xff0000 lookup main"},
		{KillSwitchRules()[1], "lookup main suppress_prefixlength 0"},
		{KillSwitchRules()[2], "iif lo lookup 5281"},
		{KillSwitchRules()[3], "unreachable"},
	} {
		if got := tt.r.String(); got != tt.want {
			t.Errorf("%+v.String() = %q, want %q", tt.r, got, tt.want)
		}
	}
}

func TestMark(t *testing.T) {
	for _, tt := range []struct {
		in      string
		want    Mark
		wantErr string // of ParseMark or Validate
	}{
		{"0x600/0xf00", DefaultBypassMark, ""},
		{"0x2000", Mark{0x2000, 0x2000}, ""},
		{" 4096 / 0x1000 ", Mark{0x1000, 0x1000}, ""},
		{"0", Mark{}, "want a non-zero value"},
		{"0x1/0", Mark{1, 0}, "want a non-zero value"},
		{"0x80000", Mark{0x80000, 0x80000}, "overlaps tailscaled's fwmark mask 0xff0000"},
		{"0x600/0xff0f00", Mark{0x600, 0xff0f00}, "overlaps"},
		{"0x1600/0xf00", Mark{0x1600, 0xf00}, "bits outside the mask"},
		{"0x1/0x1/0x1", Mark{}, "want VALUE[/MASK]"},
		{"mark", Mark{}, "want VALUE[/MASK]"},
		{"0x100000000", Mark{}, "want VALUE[/MASK]"},
	} {
		got, err := ParseMark(tt.in)
		if err == nil {
			if got != tt.want {
				t.Errorf("ParseMark(%q) = %v, want %v", tt.in, got, tt.want)
			}
			err = got.Validate()
		}
		if (err == nil) != (tt.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("ParseMark(%q) then Validate: %v, want %q", tt.in, err, tt.wantErr)
		}
	}
}

// TestDefaultMarkSafeWithCNIs: no mark a CNI puts on pod packets carries
// the default bypass mark, so such packets never take the reply bypass
// (fwmark rule) past the exit node.
func TestDefaultMarkSafeWithCNIs(t *testing.T) {
	cni := map[string][]uint32{
		"calico-ebpf": {0x01000000, 0x03000000, 0x03300000, 0x03800000, 0x03600000, 0x41000000, 0x81000000, 0x1ff00000},
		"cilium":      {0x0f000f00, 0x00000200, 0x00000300, 0x00000a00, 0x00000b00, 0x00000c00, 0x00000d00, 0x00000e00, 0xffff0fff, 0x0000fe00, 0x00001e00, 0x00001d00, 0x00001400, 0x00001500},
		"kube-proxy":  {0x4000, 0x8000},
		"istio":       {0x539, 0x111},
		"antrea":      {0x80000000, 0x40000000, 0xff},
		"aws-vpc-cni": {0x80},
	}
	for name, marks := range cni {
		for _, m := range marks {
			if DefaultBypassMark.Matches(m) {
				t.Errorf("%s mark %#x matches the default bypass mark %s", name, m, DefaultBypassMark)
			}
		}
	}
	if err := DefaultBypassMark.Validate(); err != nil {
		t.Error(err)
	}
}

func TestRelevantEvents(t *testing.T) {
	native := func(v uint32) []byte { b := make([]byte, 4); nlNativeEndian.PutUint32(b, v); return b }
	ruleMsg := func(typ uint16, proto byte) syscall.NetlinkMessage {
		data := make([]byte, unix.SizeofRtMsg)
		data = append(data, rtattr(unix.FRA_PRIORITY, native(5100))...)
		data = append(data, rtattr(unix.FRA_PROTOCOL, []byte{proto})...)
		return syscall.NetlinkMessage{Header: syscall.NlMsghdr{Type: typ}, Data: data}
	}
	for _, tt := range []struct {
		name string
		m    syscall.NetlinkMessage
		want bool
	}{
		{"own rule deleted", ruleMsg(unix.RTM_DELRULE, BypassProtocol), true},
		{"own rule added", ruleMsg(unix.RTM_NEWRULE, BypassProtocol), false},
		{"foreign rule deleted", ruleMsg(unix.RTM_DELRULE, unix.RTPROT_BOOT), false},
		{"truncated", syscall.NetlinkMessage{Header: syscall.NlMsghdr{Type: unix.RTM_DELRULE}}, true},
	} {
		if got := relevantRuleEvent(tt.m); got != tt.want {
			t.Errorf("relevantRuleEvent(%s) = %v, want %v", tt.name, got, tt.want)
		}
	}
	nftMsg := func(msg int, family byte, table string) syscall.NetlinkMessage {
		data := []byte{family, 0, 0, 0}
		data = append(data, rtattr(unix.NFTA_TABLE_NAME, []byte(table+"\x00"))...)
		return syscall.NetlinkMessage{Header: syscall.NlMsghdr{Type: uint16(unix.NFNL_SUBSYS_NFTABLES<<8 | msg)}, Data: data}
	}
	for _, tt := range []struct {
		name string
		m    syscall.NetlinkMessage
		want bool
	}{
		{"own table deleted", nftMsg(unix.NFT_MSG_DELTABLE, unix.NFPROTO_INET, BypassNftTable), true},
		{"own rule deleted", nftMsg(unix.NFT_MSG_DELRULE, unix.NFPROTO_INET, BypassNftTable), true},
		{"own chain deleted", nftMsg(unix.NFT_MSG_DELCHAIN, unix.NFPROTO_INET, BypassNftTable), true},
		{"other table", nftMsg(unix.NFT_MSG_DELRULE, unix.NFPROTO_INET, "kube-proxy"), false},
		{"same name, other family", nftMsg(unix.NFT_MSG_DELTABLE, unix.NFPROTO_IPV4, BypassNftTable), false},
		{"generation", nftMsg(unix.NFT_MSG_NEWGEN, unix.NFPROTO_UNSPEC, ""), false},
	} {
		if got := relevantNftEvent(tt.m); got != tt.want {
			t.Errorf("relevantNftEvent(%s) = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// --- Kernel tests in throw-away network namespaces. ---

// rulesIn lists the rules of ns as "PRIO: proto N to X table T fwmark M/K".
func rulesIn(t *testing.T, h *netlink.Handle) []netlink.Rule {
	t.Helper()
	rules, err := h.RuleList(netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	return rules
}

// ownedIn returns the owned policy rules of ns (h is a handle in it) and
// the destinations in the bypass table's sets, as BypassRules.
func ownedIn(t *testing.T, h *netlink.Handle, ns netns.NsHandle) []BypassRule {
	t.Helper()
	var out []BypassRule
	for _, p := range setPrefixesIn(t, ns) {
		out = append(out, BypassRule{Family: familyOf(p.Addr()), Dst: p})
	}
	for _, nr := range rulesIn(t, h) {
		if nr.Protocol != BypassProtocol {
			continue
		}
		r, ok := bypassRuleOf(nr)
		if !ok {
			t.Errorf("owned rule %v cannot be expressed as a BypassRule", nr)
		}
		out = append(out, r)
	}
	return out
}

func sameRules(a, b []BypassRule) bool {
	key := func(r BypassRule) string { return fmt.Sprintf("%d %d %s", r.Family, r.Priority, r) }
	cmp := func(x, y BypassRule) int { return strings.Compare(key(x), key(y)) }
	a, b = slices.Clone(a), slices.Clone(b)
	slices.SortFunc(a, cmp)
	slices.SortFunc(b, cmp)
	return slices.Equal(a, b)
}

// setPrefixesIn returns the prefixes in the destination sets of ns, none
// when the table is not there.
func setPrefixesIn(t *testing.T, ns netns.NsHandle) []netip.Prefix {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatal(err)
	}
	tb := &nftables.Table{Name: BypassNftTable, Family: nftables.TableFamilyINet}
	if ok, _ := nftTableIn(t, ns); !ok {
		return nil
	}
	var out []netip.Prefix
	for _, s := range destinationSets(tb) {
		elems, err := c.GetSetElements(s)
		if err != nil {
			t.Fatalf("elements of set %s: %v", s.Name, err)
		}
		sc := parseSetElements(elems, int(s.KeyType.Bytes)*8)
		if len(sc.junk) > 0 {
			t.Errorf("set %s holds elements that are no prefix: %v", s.Name, sc.junk)
		}
		out = append(out, sc.prefixes...)
	}
	return out
}

// nftTableIn reports whether the bypass table exists in ns, and its rule
// tags.
func nftTableIn(t *testing.T, ns netns.NsHandle) (bool, []string) {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatal(err)
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(tables, func(tb *nftables.Table) bool { return tb.Name == BypassNftTable }) {
		return false, nil
	}
	tb := &nftables.Table{Name: BypassNftTable, Family: nftables.TableFamilyINet}
	var tags []string
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	for _, chain := range chains {
		if chain.Table.Name != BypassNftTable {
			continue
		}
		ch := chain.Name
		rules, err := c.GetRules(tb, &nftables.Chain{Name: ch, Table: tb})
		if err != nil {
			t.Fatalf("rules of chain %s: %v", ch, err)
		}
		for _, r := range rules {
			tags = append(tags, string(r.UserData))
		}
	}
	return true, tags
}

// waitUntil polls cond until it returns "" or within passes.
func waitUntil(t *testing.T, within time.Duration, what string, cond func() string) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(within)
	for {
		msg := cond()
		if msg == "" {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %s", what, within, msg)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// bypassTableRules is the number of rules of the bypass table without the
// kill switch.
const bypassTableRules = 16

var testInputs = BypassInputs{
	CIDRs:     []netip.Prefix{pfx("10.43.0.0/16"), pfx("fd00:43::/108")},
	PodCIDRs:  []netip.Prefix{pfx("10.42.1.0/24")},
	NodeAddrs: []netip.Addr{addr("198.18.0.12"), addr("198.18.0.13")},
}

// TestBypassApplyRemove: Apply installs exactly the desired owned rules
// and the nftables table, cleans the stale owned rules of a "crashed"
// agent, never touches foreign rules; Remove leaves nothing of its own.
func TestBypassApplyRemove(t *testing.T) {
	requireRoot(t)
	ns := newNetNS(t)
	h := nsHandle(t, ns)

	// A foreign rule that looks like an earlier agent's but is not
	// tagged, and stale owned ones left by a crashed earlier agent (a
	// per-destination rule, another mark).
	foreign := legacyRule("192.0.2.0/24").netlinkRule()
	foreign.Protocol = unix.RTPROT_STATIC
	stale := []BypassRule{legacyRule("203.0.113.0/24"), {Family: unix.AF_INET, Priority: BypassMarkPriority, Mark: 0x2000000, Mask: 0x2000000}}
	if err := h.RuleAdd(foreign); err != nil {
		t.Fatal(err)
	}
	for _, r := range stale {
		if err := h.RuleAdd(r.netlinkRule()); err != nil {
			t.Fatal(err)
		}
	}

	b := NewBypass(BypassOptions{TUNName: "tailscale0"}, WithBypassNetNS(ns), WithBypassLogger(testLogger(t)))
	want := BypassRules(testInputs, Mark{})
	if err := b.Apply(want); err != nil {
		t.Fatal(err)
	}
	if got := ownedIn(t, h, ns); !sameRules(got, want) {
		t.Fatalf("owned rules after Apply:\n got %s\nwant %s", describeRules(got), describeRules(want))
	}
	if !slices.ContainsFunc(rulesIn(t, h), func(r netlink.Rule) bool {
		return r.Protocol == unix.RTPROT_STATIC && r.Priority == legacyBypassPriority
	}) {
		t.Fatal("the foreign rule was deleted")
	}
	ok, tags := nftTableIn(t, ns)
	if !ok || len(tags) != bypassTableRules {
		t.Fatalf("nftables table after Apply: exists %v, rule tags %q", ok, tags)
	}
	for _, tag := range tags {
		if !strings.Contains(tag, "tun=tailscale0 mark=0x600/0xf00") {
			t.Errorf("rule tag %q does not name the TUN and the mark", tag)
		}
	}

	// Applying the same again changes nothing; fewer inputs delete.
	if err := b.Apply(want); err != nil {
		t.Fatal(err)
	}
	fewer := BypassRules(BypassInputs{CIDRs: testInputs.CIDRs}, Mark{})
	if err := b.Apply(fewer); err != nil {
		t.Fatal(err)
	}
	if got := ownedIn(t, h, ns); !sameRules(got, fewer) {
		t.Fatalf("owned rules after a smaller Apply:\n got %s\nwant %s", describeRules(got), describeRules(fewer))
	}

	if err := b.Remove(); err != nil {
		t.Fatal(err)
	}
	if got := ownedIn(t, h, ns); len(got) != 0 {
		t.Fatalf("owned rules left after Remove: %s", describeRules(got))
	}
	if ok, _ := nftTableIn(t, ns); ok {
		t.Fatal("nftables table left after Remove")
	}
	if !slices.ContainsFunc(rulesIn(t, h), func(r netlink.Rule) bool { return r.Protocol == unix.RTPROT_STATIC }) {
		t.Fatal("Remove deleted the foreign rule")
	}
	// Remove with nothing installed is fine (startup cleanup).
	if err := b.Remove(); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
}

// TestBypassReconcile: what is deleted behind the Bypass's back comes
// back within a second while it is applied, and not after Remove.
func TestBypassReconcile(t *testing.T) {
	requireRoot(t)
	ns := newNetNS(t)
	h := nsHandle(t, ns)
	b := NewBypass(BypassOptions{}, WithBypassNetNS(ns), WithBypassLogger(testLogger(t)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	want := BypassRules(testInputs, Mark{})
	if err := b.Apply(want); err != nil {
		t.Fatal(err)
	}
	victim := markRules(DefaultBypassMark)[0]
	if err := h.RuleDel(victim.netlinkRule()); err != nil {
		t.Fatalf("deleting a rule by hand: %v", err)
	}
	d := waitUntil(t, time.Second, "deleted rule re-added", func() string {
		if got := ownedIn(t, h, ns); !sameRules(got, want) {
			return "owned rules: " + describeRules(got)
		}
		return ""
	})
	t.Logf("rule re-added after %v", d.Round(time.Millisecond))

	// A destination deleted from its set.
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatal(err)
	}
	tb := &nftables.Table{Name: BypassNftTable, Family: nftables.TableFamilyINet}
	if err := c.SetDeleteElements(destinationSets(tb)[0], prefixElements(pfx("10.43.0.0/16"))); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatalf("deleting a destination by hand: %v", err)
	}
	d = waitUntil(t, time.Second, "deleted destination re-added", func() string {
		if got := ownedIn(t, h, ns); !sameRules(got, want) {
			return "owned rules: " + describeRules(got)
		}
		return ""
	})
	t.Logf("destination re-added after %v", d.Round(time.Millisecond))

	// Every rule flushed at once (ip rule flush keeps only the defaults).
	for _, r := range rulesIn(t, h) {
		if r.Protocol == BypassProtocol {
			if err := h.RuleDel(&r); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitUntil(t, time.Second, "flushed rules re-added", func() string {
		if got := ownedIn(t, h, ns); !sameRules(got, want) {
			return "owned rules: " + describeRules(got)
		}
		return ""
	})

	// The nftables table deleted, then one of its rules.
	c.DelTable(tb)
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	d = waitUntil(t, time.Second, "deleted nftables table re-created", func() string {
		if ok, tags := nftTableIn(t, ns); !ok || len(tags) != bypassTableRules {
			return fmt.Sprintf("table exists %v, rules %q", ok, tags)
		}
		return ""
	})
	t.Logf("nftables table re-created after %v", d.Round(time.Millisecond))
	if got := ownedIn(t, h, ns); !sameRules(got, want) {
		t.Fatalf("after the table came back: %s", describeRules(got))
	}
	rules, err := c.GetRules(tb, &nftables.Chain{Name: "output", Table: tb})
	if err != nil || len(rules) != 4 {
		t.Fatalf("output chain rules: %v, %v", rules, err)
	}
	if err := c.DelRule(rules[0]); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, time.Second, "deleted nftables rule restored", func() string {
		if ok, tags := nftTableIn(t, ns); !ok || len(tags) != bypassTableRules {
			return fmt.Sprintf("table exists %v, rules %q", ok, tags)
		}
		return ""
	})

	// After Remove, nothing comes back.
	if err := b.Remove(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // a reconcile would take bypassDebounce
	if got := ownedIn(t, h, ns); len(got) != 0 {
		t.Fatalf("owned rules re-created after Remove: %s", describeRules(got))
	}
	if ok, _ := nftTableIn(t, ns); ok {
		t.Fatal("nftables table re-created after Remove")
	}
}

// TestBypassRoutesReplies proves the bypass with packets: in a "worker"
// namespace whose table 52 captures everything (an unreachable default
// route, as if the exit node swallowed the traffic), inbound connections
// from an off-LAN address are answered only with the bypass (their
// replies carry the connection mark), including one opened before the
// capture and the bypass existed; an outbound connection to a bypassed
// destination works while one to another destination does not.
func TestBypassRoutesReplies(t *testing.T) {
	requireRoot(t)
	worker, router := newNetNS(t), newNetNS(t)
	hw, hr := nsHandle(t, worker), nsHandle(t, router)
	var (
		workerIP = addr("198.18.0.11")
		routerIP = addr("198.18.0.1")
		remote   = addr("198.19.0.1") // on the router's lo: "the internet"
		other    = addr("198.19.0.2")
	)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(router))}
	if err := hw.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	setup := func(h *netlink.Handle, ip netip.Addr, extra ...netip.Addr) {
		for _, name := range []string{"lo", "eth0"} {
			if err := h.LinkSetUp(mustLink(t, h, name)); err != nil {
				t.Fatal(err)
			}
		}
		if err := h.AddrAdd(mustLink(t, h, "eth0"), mustAddr(t, ip.String()+"/24")); err != nil {
			t.Fatal(err)
		}
		for _, a := range extra {
			if err := h.AddrAdd(mustLink(t, h, "lo"), mustAddr(t, a.String()+"/32")); err != nil {
				t.Fatal(err)
			}
		}
	}
	setup(hw, workerIP)
	setup(hr, routerIP, remote, other)
	if err := hw.RouteAdd(&netlink.Route{LinkIndex: mustLink(t, hw, "eth0").Attrs().Index, Gw: routerIP.AsSlice()}); err != nil {
		t.Fatal(err)
	}

	// The worker runs an echo server; the router serves "the internet".
	var ln, remoteLn net.Listener
	inNS(t, worker, func() (err error) { ln, err = net.Listen("tcp4", ":2222"); return err })
	defer ln.Close()
	go acceptLoop(ln, func(c net.Conn) { defer c.Close(); io.Copy(c, c) })
	inNS(t, router, func() (err error) { remoteLn, err = net.Listen("tcp4", ":80"); return err })
	defer remoteLn.Close()
	peers := make(chan netip.Addr, 16) // the source addresses "the internet" sees
	go acceptLoop(remoteLn, func(c net.Conn) {
		peers <- c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
		c.Close()
	})

	const timeout = 700 * time.Millisecond
	dial := func(ns netns.NsHandle, from netip.Addr, to netip.AddrPort) (c net.Conn, err error) {
		err = inNetNS(ns, func() error {
			d := net.Dialer{Timeout: timeout}
			if from.IsValid() {
				d.LocalAddr = &net.TCPAddr{IP: from.AsSlice()}
			}
			c, err = d.Dial("tcp4", to.String())
			return err
		})
		return c, err
	}
	echo := func(c net.Conn, msg string) error {
		c.SetDeadline(time.Now().Add(timeout))
		if _, err := c.Write([]byte(msg)); err != nil {
			return err
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(c, buf); err != nil {
			return err
		}
		if string(buf) != msg {
			return fmt.Errorf("echo: got %q, want %q", buf, msg)
		}
		return nil
	}
	inbound := func() error {
		c, err := dial(router, remote, netip.AddrPortFrom(workerIP, 2222))
		if err != nil {
			return err
		}
		defer c.Close()
		return echo(c, "new")
	}
	outbound := func(to netip.Addr) error {
		c, err := dial(worker, netip.Addr{}, netip.AddrPortFrom(to, 80))
		if err == nil {
			c.Close()
		}
		return err
	}

	// An SSH-like session opened before anything happens.
	old, err := dial(router, remote, netip.AddrPortFrom(workerIP, 2222))
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := echo(old, "before"); err != nil {
		t.Fatal(err)
	}

	// tailscaled with an exit node: everything looks up table 52 first,
	// whose default route goes into a TUN nobody reads.
	addExitNodeModel(t, worker, hw, addr("100.64.0.11"))
	// Without the bypass: the node is cut off.
	if err := inbound(); err == nil {
		t.Fatal("inbound connection answered without the bypass: the test does not model the exit node")
	}
	if err := outbound(remote); err == nil {
		t.Fatal("outbound connection worked without the bypass: the test does not model the exit node")
	}

	b := NewBypass(BypassOptions{TUNName: "tailscale0"}, WithBypassNetNS(worker), WithBypassLogger(testLogger(t)))
	if err := b.Apply(BypassRules(BypassInputs{NodeAddrs: []netip.Addr{remote}}, Mark{})); err != nil {
		t.Fatal(err)
	}
	if err := inbound(); err != nil {
		t.Errorf("inbound connection from %s with the bypass: %v", remote, err)
	}
	if err := echo(old, "after"); err != nil {
		t.Errorf("connection opened before the bypass: %v", err)
	}
	if err := outbound(remote); err != nil {
		t.Errorf("connection to the bypassed %s: %v", remote, err)
	} else if from := <-peers; from != workerIP {
		// The socket's route lookup went through table 52 and picked
		// the tailnet address; the re-routed packet must not keep it.
		t.Errorf("the bypassed %s saw the connection come from %s, want the worker's %s", remote, from, workerIP)
	}
	if err := outbound(other); err == nil {
		t.Errorf("connection to %s (not bypassed) avoided table 52", other)
	}

	if err := b.Remove(); err != nil {
		t.Fatal(err)
	}
	if err := inbound(); err == nil {
		t.Error("inbound connection answered after Remove")
	}

	// tailscaled down with the kill switch: table 52 is empty, the
	// host's lookups end at the sink route (lo); a destination still
	// leaves through the main table, from the worker's address.
	tun := mustLink(t, hw, "tailscale0")
	if err := hw.LinkDel(tun); err != nil {
		t.Fatal(err)
	}
	if err := b.Apply(append(BypassRules(BypassInputs{NodeAddrs: []netip.Addr{remote}}, Mark{}), KillSwitchRules()...)); err != nil {
		t.Fatal(err)
	}
	if err := outbound(remote); err != nil {
		t.Errorf("kill switch: connection to the bypassed %s: %v", remote, err)
	} else if from := <-peers; from != workerIP {
		t.Errorf("kill switch: the bypassed %s saw the connection come from %s, want the worker's %s", remote, from, workerIP)
	}
	if err := outbound(other); !errors.Is(err, unix.ECONNREFUSED) {
		t.Errorf("kill switch: connection to %s (not bypassed): %v, want refused", other, err)
	}
	if err := inbound(); err != nil {
		t.Errorf("kill switch: inbound connection from %s: %v", remote, err)
	}
	if err := b.Remove(); err != nil {
		t.Fatal(err)
	}
}

func acceptLoop(ln net.Listener, handle func(net.Conn)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go handle(c)
	}
}

// nlNativeEndian is the host byte order, for building netlink attributes.
var nlNativeEndian = nl.NativeEndian()

// rtattr encodes one netlink attribute.
func rtattr(typ int, value []byte) []byte {
	l := unix.SizeofRtAttr + len(value)
	b := make([]byte, (l+3)&^3)
	nlNativeEndian.PutUint16(b[0:2], uint16(l))
	nlNativeEndian.PutUint16(b[2:4], uint16(typ))
	copy(b[4:], value)
	return b
}

// describeRules is a compact list of rules for logs and errors.
func describeRules(rules []BypassRule) string {
	var b strings.Builder
	for i, r := range rules {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%d: %s", r.Priority, r.String())
	}
	return b.String()
}

// TestBypassRunUsesTheClock: Run's heartbeat follows the injected clock;
// once Run stops beating, /livez fails.
func TestBypassRunUsesTheClock(t *testing.T) {
	ns := newNetNS(t)
	fc := clocktesting.NewFakeClock(time.Now())
	store := snapshot.New(fc.Now(), snapshot.RoleWorker)
	b := NewBypass(BypassOptions{TUNName: "tailscale0"}, WithBypassNetNS(ns), WithBypassLogger(testLogger(t)),
		WithBypassClock(fc), WithBypassBeat(func() { store.Beat(BypassHeartbeatName, fc.Now()) }))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	beat := func() time.Time { return store.Load().Heartbeats[BypassHeartbeatName] }
	waitUntil(t, 2*time.Second, "a beat at start", func() string {
		if beat().IsZero() {
			return "no beat"
		}
		return ""
	})
	waitUntil(t, 2*time.Second, "the heartbeat ticker armed", func() string {
		if !fc.HasWaiters() {
			return "no timer on the fake clock"
		}
		return ""
	})
	for range 3 {
		before := beat()
		fc.Step(HeartbeatInterval)
		waitUntil(t, 2*time.Second, "a beat after HeartbeatInterval of the fake clock", func() string {
			if !beat().After(before) {
				return fmt.Sprintf("last beat %v, clock %v", beat(), fc.Now())
			}
			return ""
		})
	}
	// Stopped: /livez fails once the heartbeat timeout passed.
	cancel()
	<-done
	done <- nil
	live := probe.Evaluate(store.Load(), probe.DefaultOptions(), fc.Now().Add(probe.DefaultHeartbeatTimeout+time.Second)).Live
	if live.OK {
		t.Fatal("/livez passes with the bypass loop stopped")
	}
}

// TestBypassRunBeats: Run beats when it starts and on every turn of its
// loop (here, the reconcile after its rules were deleted), and stops with
// it.
func TestBypassRunBeats(t *testing.T) {
	ns := newNetNS(t)
	var beats atomic.Int32
	b := NewBypass(BypassOptions{TUNName: "tailscale0"}, WithBypassNetNS(ns), WithBypassLogger(testLogger(t)),
		WithBypassBeat(func() { beats.Add(1) }))
	if err := b.Apply(BypassRules(testInputs, Mark{})); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	waitUntil(t, 2*time.Second, "a beat at start", func() string {
		if beats.Load() == 0 {
			return "no beat"
		}
		return ""
	})
	before := beats.Load()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for _, r := range ownedIn(t, h, ns) {
		h.RuleDel(r.netlinkRule())
	}
	waitUntil(t, 5*time.Second, "a beat after the reconcile", func() string {
		if beats.Load() <= before {
			return fmt.Sprintf("%d beats", beats.Load())
		}
		return ""
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	after := beats.Load()
	time.Sleep(50 * time.Millisecond)
	if beats.Load() != after {
		t.Fatal("beats after Run returned")
	}
}
