package lab

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
)

// probe installs a counter table of the test's own in ns (see
// counterTable) with one chain, removed at the end of the test.
func probe(t *testing.T, ns *NetNS, table string, chain counterChain) *counterTable {
	t.Helper()
	ct, err := installCounterTable(ns, table, []counterChain{chain})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if ns.handle >= 0 {
			ct.remove()
		}
	})
	return ct
}

func count(t *testing.T, ct *counterTable) uint64 {
	t.Helper()
	n, err := ct.packets(false)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func matches(parts ...[]expr.Any) []expr.Any {
	var e []expr.Any
	for _, p := range parts {
		e = append(e, p...)
	}
	return e
}

func linkMTU(t *testing.T, ns *NetNS, name string) int {
	t.Helper()
	h, err := netlink.NewHandleAt(ns.handle)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	link, err := h.LinkByName(name)
	if err != nil {
		t.Fatalf("%s: %s: %v", ns.Name(), name, err)
	}
	return link.Attrs().MTU
}

// TestPodCIDRAndOptions needs no root: the addressing plan and the
// argument checks that come before anything is created.
func TestPodCIDRAndOptions(t *testing.T) {
	for _, tt := range []struct {
		index int
		want  string
	}{{0, "198.18.128.0/24"}, {1, "198.18.129.0/24"}, {99, "198.18.227.0/24"}, {100, "invalid Prefix"}, {199, "invalid Prefix"}} {
		n := &Node{NetNS: &NetNS{label: "x", handle: -1}, index: tt.index}
		if got := n.PodCIDR().String(); got != tt.want {
			t.Errorf("node %d: PodCIDR = %s, want %s", tt.index, got, tt.want)
		}
		if tt.index >= MaxPodNodes {
			if _, err := n.AddPod(PodOptions{}); err == nil || !strings.Contains(err.Error(), "no pod CIDR") {
				t.Errorf("node %d: AddPod: %v", tt.index, err)
			}
		}
	}
	n := &Node{NetNS: &NetNS{label: "x", handle: -1}}
	if _, err := n.AddPod(PodOptions{NAT: "masquerade"}); err == nil || !strings.Contains(err.Error(), `unknown NAT mode "masquerade"`) {
		t.Errorf("AddPod with a bad NAT mode: %v", err)
	}
	p := &Pod{NetNS: &NetNS{label: "x-pod", handle: -1}, cidr: netip.MustParsePrefix("198.18.130.0/24")}
	if p.Addr().String() != "198.18.130.2" || p.Gateway().String() != "198.18.130.1" {
		t.Errorf("pod addr %v, gateway %v", p.Addr(), p.Gateway())
	}
	if err := p.SetNAT("bogus"); err == nil {
		t.Errorf("SetNAT(bogus) succeeded")
	}
}

// TestPod: a pod behind cni0 on a node, wired like a CNI does it; its
// egress address in each NAT mode, and a 4 MiB download.
func TestPod(t *testing.T) {
	l := NewForTest(t, Options{Nodes: []string{"n1"}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n := l.Node("n1")
	if n.Pod() != nil {
		t.Fatal("Pod() before AddPod")
	}
	p, err := n.AddPod(PodOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if n.Pod() != p || p.Node() != n {
		t.Errorf("Pod() = %p, Node() = %p", n.Pod(), p.Node())
	}
	if p.CIDR() != netip.MustParsePrefix("198.18.128.0/24") || p.Addr() != netip.MustParseAddr("198.18.128.2") ||
		p.Gateway() != netip.MustParseAddr("198.18.128.1") || p.CIDR() != n.PodCIDR() {
		t.Errorf("pod CIDR %v, addr %v, gateway %v", p.CIDR(), p.Addr(), p.Gateway())
	}
	if p.Name() != "n1-pod" || p.NSName() != l.prefix()+"n1-pod" {
		t.Errorf("pod names %q, %q", p.Name(), p.NSName())
	}
	if p.NAT() != PodNATEverywhere || p.Mark() != 0 {
		t.Errorf("defaults: NAT %q, mark %#x", p.NAT(), p.Mark())
	}
	if _, err := n.AddPod(PodOptions{}); err == nil || !strings.Contains(err.Error(), "already has a pod") {
		t.Errorf("second AddPod: %v", err)
	}
	if v, err := n.ReadSysctl("net.ipv4.ip_forward"); err != nil || v != "1" {
		t.Errorf("node ip_forward = %q, %v; want 1", v, err)
	}
	for _, c := range []struct {
		ns   *NetNS
		link string
	}{{n.NetNS, PodBridge}, {n.NetNS, PodVeth}, {p.NetNS, "eth0"}} {
		if mtu := linkMTU(t, c.ns, c.link); mtu != PodMTU {
			t.Errorf("%s %s: MTU %d, want %d", c.ns.Name(), c.link, mtu, PodMTU)
		}
	}
	out, err := p.Exec(ctx, "ip", "-4", "-o", "addr", "show", "dev", "eth0")
	if err != nil || !strings.Contains(string(out), "198.18.128.2/24") {
		t.Errorf("pod eth0: %q, %v", out, err)
	}
	out, err = p.Exec(ctx, "ip", "-4", "route", "show", "default")
	if err != nil || !strings.Contains(string(out), "default via 198.18.128.1 dev eth0") {
		t.Errorf("pod default route: %q, %v", out, err)
	}
	out, err = n.Exec(ctx, "ip", "-o", "link", "show", "master", PodBridge)
	if err != nil || !strings.Contains(string(out), PodVeth+"@") {
		t.Errorf("ports of %s: %q, %v", PodBridge, out, err)
	}
	out, err = l.WAN().Exec(ctx, "ip", "-4", "route", "show", "198.18.128.0/24")
	if err != nil || !strings.Contains(string(out), "198.18.128.0/24 via 198.18.0.10 dev br0") {
		t.Errorf("wan route to the pod CIDR: %q, %v", out, err)
	}
	if ok, err := n.hasNftTable(PodNftTable); err != nil || !ok {
		t.Errorf("table inet %s in the node: %v, %v", PodNftTable, ok, err)
	}

	for _, tt := range []struct {
		mode PodNAT
		want netip.Addr
	}{
		{PodNATEverywhere, n.Addr()},
		{PodNATUplink, n.Addr()},
		{PodNATNone, p.Addr()},
		{"", n.Addr()},
	} {
		t.Run(fmt.Sprintf("nat=%q", tt.mode), func(t *testing.T) {
			if err := p.SetNAT(tt.mode); err != nil {
				t.Fatal(err)
			}
			if got, err := p.EgressIP(ctx); err != nil || got != tt.want {
				t.Errorf("pod egress IP %v, %v; want %v", got, err, tt.want)
			}
			got, err := p.Download(ctx, l.DownloadURL(4<<20))
			if err != nil || got != 4<<20 {
				t.Errorf("pod download: %d bytes, %v", got, err)
			}
			// The node's own traffic is never masqueraded.
			if got, err := n.EgressIP(ctx); err != nil || got != n.Addr() {
				t.Errorf("node egress IP %v, %v", got, err)
			}
		})
	}
}

// TestPodNATUplinkOnlyOnEth0: with PodNATUplink, pod traffic that leaves
// the node through another interface (here a TUN device standing in for
// tailscale0, which drops everything) keeps the pod's address; with
// PodNATEverywhere it gets the interface's address.
func TestPodNATUplinkOnlyOnEth0(t *testing.T) {
	l := NewForTest(t, Options{Nodes: []string{"n1"}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n := l.Node("n1")
	p, err := n.AddPod(PodOptions{NAT: PodNATUplink})
	if err != nil {
		t.Fatal(err)
	}
	// A TUN device no process has open, like tailscale0 without
	// tailscaled: it takes packets and drops them.
	const tun = "tun-lab"
	tunAddr := netip.MustParseAddr("198.18.255.1")
	if _, err := n.Exec(ctx, "ip", "tuntap", "add", "dev", tun, "mode", "tun"); err != nil {
		t.Fatal(err)
	}
	h, err := netlink.NewHandleAt(n.handle)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	d, err := h.LinkByName(tun)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(d, nlAddr(netip.PrefixFrom(tunAddr, 32))); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(d); err != nil {
		t.Fatal(err)
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: d.Attrs().Index, Dst: nlAddr(netip.PrefixFrom(AltInternetIP, 32)).IPNet}); err != nil {
		t.Fatal(err)
	}
	// After the masquerade (srcnat, 100): the source as it leaves.
	after := func(table string, src netip.Addr) *counterTable {
		return probe(t, n.NetNS, table, counterChain{
			name: "postrouting", typ: nftables.ChainTypeFilter, hook: nftables.ChainHookPostrouting,
			prio:    nftables.ChainPriorityRef(*nftables.ChainPriorityNATSource + 1),
			matches: [][]expr.Any{matches(matchOIF(tun), matchIPv4(), matchIPv4Prefix(ipv4SrcOffset, netip.PrefixFrom(src, 32), expr.CmpOpEq))},
		})
	}
	podSrc := after("lab-test-podsrc", p.Addr())
	tunSrc := after("lab-test-tunsrc", tunAddr)

	for _, tt := range []struct {
		mode      PodNAT
		wantPod   bool // seen with the pod's address on the TUN
		wantTunIP bool // seen with the TUN's address
	}{
		{PodNATUplink, true, false},
		{PodNATEverywhere, false, true},
		{PodNATNone, true, false},
	} {
		t.Run(string(tt.mode), func(t *testing.T) {
			if err := p.SetNAT(tt.mode); err != nil {
				t.Fatal(err)
			}
			for _, ct := range []*counterTable{podSrc, tunSrc} {
				if _, err := ct.packets(true); err != nil {
					t.Fatal(err)
				}
			}
			stop := p.Spray(ctx, netip.AddrPortFrom(AltInternetIP, 9), 10*time.Millisecond)
			waitFor(t, 5*time.Second, "pod traffic on "+tun, func() bool { return count(t, podSrc)+count(t, tunSrc) >= 4 })
			sent := stop()
			gotPod, gotTun := count(t, podSrc), count(t, tunSrc)
			t.Logf("%d rounds: %d packets from the pod's address, %d from %s's", sent, gotPod, gotTun, tun)
			if (gotPod > 0) != tt.wantPod || (gotTun > 0) != tt.wantTunIP {
				t.Errorf("nat %s: %d packets with the pod's source, %d with %s's; want pod=%v tun=%v", tt.mode, gotPod, gotTun, tun, tt.wantPod, tt.wantTunIP)
			}
			// Through eth0 every masquerading mode masquerades.
			want := n.Addr()
			if tt.mode == PodNATNone {
				want = p.Addr()
			}
			if got, err := p.EgressIP(ctx); err != nil || got != want {
				t.Errorf("egress through eth0: %v, %v; want %v", got, err, want)
			}
		})
	}
}

// settled waits until get returns the same value for 300 ms (at most 5 s).
func settled(t *testing.T, get func() uint64) {
	t.Helper()
	last, since := get(), time.Now()
	deadline := since.Add(5 * time.Second)
	for time.Since(since) < 300*time.Millisecond {
		if time.Now().After(deadline) {
			t.Fatalf("count still changing after 5s: %d", last)
		}
		time.Sleep(20 * time.Millisecond)
		if v := get(); v != last {
			last, since = v, time.Now()
		}
	}
}

// pollUntil polls cond every 10 ms until it holds or within passes, and
// reports whether it held.
func pollUntil(within time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// TestPodMark: PodOptions.Mark and SetMark mark the pod's packets before
// the node forwards them, in a chain at raw priority.
func TestPodMark(t *testing.T) {
	l := NewForTest(t, Options{Nodes: []string{"n1"}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n := l.Node("n1")
	const calico, cilium = 0x01000000, 0x0f000f00
	p, err := n.AddPod(PodOptions{Mark: calico})
	if err != nil {
		t.Fatal(err)
	}
	if p.Mark() != calico {
		t.Errorf("Mark() = %#x", p.Mark())
	}

	c, err := n.nftConn()
	if err != nil {
		t.Fatal(err)
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	var seen bool
	for _, ch := range chains {
		if ch.Table.Name == PodNftTable && ch.Name == "prerouting" {
			seen = true
			if ch.Hooknum == nil || *ch.Hooknum != *nftables.ChainHookPrerouting || ch.Priority == nil || *ch.Priority != -300 {
				t.Errorf("prerouting chain: hook %v, priority %v", ch.Hooknum, ch.Priority)
			}
		}
	}
	if !seen {
		t.Errorf("no prerouting chain in table inet %s", PodNftTable)
	}

	marked := func(table string, mark uint32) *counterTable {
		return probe(t, n.NetNS, table, counterChain{
			name: "forward", typ: nftables.ChainTypeFilter, hook: nftables.ChainHookForward, prio: nftables.ChainPriorityFilter,
			matches: [][]expr.Any{matches(matchIIF(PodBridge), matchMark(mark))},
		})
	}
	fromPod := probe(t, n.NetNS, "lab-test-frompod", counterChain{
		name: "forward", typ: nftables.ChainTypeFilter, hook: nftables.ChainHookForward, prio: nftables.ChainPriorityFilter,
		matches: [][]expr.Any{matchIIF(PodBridge)},
	})
	calicoMarked := marked("lab-test-calico", calico)
	ciliumMarked := marked("lab-test-cilium", cilium)

	for _, tt := range []struct {
		set    uint32
		expect *counterTable // nil: no mark
	}{
		{calico, calicoMarked}, // from AddPod
		{cilium, ciliumMarked},
		{0, nil},
		{calico, calicoMarked},
	} {
		if err := p.SetMark(tt.set); err != nil {
			t.Fatal(err)
		}
		for _, ct := range []*counterTable{fromPod, calicoMarked, ciliumMarked} {
			if _, err := ct.packets(true); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := p.EgressIP(ctx); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, "forwarded pod packets", func() bool { return count(t, fromPod) > 0 })
		all, cal, cil := count(t, fromPod), count(t, calicoMarked), count(t, ciliumMarked)
		t.Logf("mark %#x: %d forwarded from the pod, %d with %#x, %d with %#x", tt.set, all, cal, calico, cil, cilium)
		switch tt.expect {
		case nil:
			if cal+cil != 0 {
				t.Errorf("mark 0: %d packets still marked", cal+cil)
			}
		default:
			// The connection's last packets may still be on their way
			// between the two counters' reads: wait until they agree.
			ok := pollUntil(2*time.Second, func() bool { return count(t, tt.expect) == count(t, fromPod) })
			if got, all := count(t, tt.expect), count(t, fromPod); !ok {
				t.Errorf("mark %#x: %d of %d forwarded packets marked", tt.set, got, all)
			}
		}
	}
	// The node's own traffic is not marked (nor forwarded): only the
	// pod's is.
	if got, err := n.EgressIP(ctx); err != nil || got != n.Addr() {
		t.Errorf("node egress %v, %v", got, err)
	}
}

// TestPodAddFailureLeavesNothing: an AddPod that fails half-way (the
// bridge name is taken) removes what it created and restores the node's
// ip_forward; once the squatter is gone AddPod works. A node named like a
// pod namespace blocks the pod of the other node.
func TestPodAddFailureLeavesNothing(t *testing.T) {
	l := NewForTest(t, Options{Nodes: []string{"a", "a-pod"}})
	n := l.Node("a")
	if _, err := l.Node("a-pod").AddPod(PodOptions{}); err != nil {
		t.Fatalf("AddPod on a-pod: %v", err)
	}
	if _, err := n.AddPod(PodOptions{}); err == nil || !strings.Contains(err.Error(), "is taken") {
		t.Errorf("AddPod on a with a node a-pod: %v", err)
	}
	// Fresh lab for the rollback.
	l = NewForTest(t, Options{Nodes: []string{"b"}})
	n = l.Node("b")
	h, err := netlink.NewHandleAt(n.handle)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	squat := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: PodBridge}}
	if err := h.LinkAdd(squat); err != nil {
		t.Fatal(err)
	}
	before, _ := labNamespaces(l.ID())
	if _, err := n.AddPod(PodOptions{Mark: 1}); err == nil {
		t.Fatal("AddPod with cni0 taken succeeded")
	} else {
		t.Logf("AddPod: %v", err)
	}
	after, _ := labNamespaces(l.ID())
	if len(after) != len(before) {
		t.Errorf("namespaces %v after a failed AddPod, %v before", after, before)
	}
	if n.Pod() != nil {
		t.Errorf("Pod() after a failed AddPod")
	}
	if v, _ := n.ReadSysctl("net.ipv4.ip_forward"); v != "0" {
		t.Errorf("ip_forward = %q after a failed AddPod", v)
	}
	if ok, _ := n.hasNftTable(PodNftTable); ok {
		t.Errorf("table %s left", PodNftTable)
	}
	if err := h.LinkDel(squat); err != nil {
		t.Fatal(err)
	}
	p, err := n.AddPod(PodOptions{NAT: PodNATNone})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if got, err := p.EgressIP(ctx); err != nil || got != p.Addr() {
		t.Errorf("pod egress %v, %v", got, err)
	}
}

// TestPodClose: Close removes pods with everything else.
func TestPodClose(t *testing.T) {
	l := NewForTest(t, Options{Nodes: []string{"n1", "n2"}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, n := range l.Nodes() {
		if _, err := n.AddPod(PodOptions{Mark: 0x01000000}); err != nil {
			t.Fatal(err)
		}
	}
	p := l.Node("n2").Pod()
	if _, err := p.Start([]string{"sleep", "600"}, nil); err != nil {
		t.Fatal(err)
	}
	w, err := l.WatchDirect(p.CIDR())
	if err != nil {
		t.Fatal(err)
	}
	stop := p.Spray(ctx, netip.AddrPortFrom(InternetIP, 9), 20*time.Millisecond)
	defer stop()
	names, _ := labNamespaces(l.ID())
	if len(names) != 5 {
		t.Errorf("namespaces %v, want wan, 2 nodes, 2 pods", names)
	}
	id := l.ID()
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	stop()
	assertNothingLeft(t, id)
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v: %s", err, out)
	}
	if strings.Contains(string(out), Prefix+id+"-") {
		t.Errorf("ip netns list after Close:\n%s", out)
	}
	if _, err := w.Count(); err == nil {
		t.Errorf("Count after Lab.Close succeeded")
	}
	if err := w.Close(); err != nil {
		t.Errorf("DirectWatch.Close after Lab.Close: %v", err)
	}
	if _, err := l.Node("n1").AddPod(PodOptions{}); err == nil {
		t.Errorf("AddPod after Close succeeded")
	}
}

// TestDownload: GET /bytes/{n} and NetNS.Download, including the failures
// Download must report.
func TestDownload(t *testing.T) {
	l := NewForTest(t, Options{Nodes: []string{"n1"}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n := l.Node("n1")
	for _, size := range []int{0, 1, 100_000, 4 << 20, MaxDownload} {
		got, err := n.Download(ctx, l.DownloadURL(size))
		if err != nil || got != int64(size) {
			t.Errorf("Download(%d): %d, %v", size, got, err)
		}
	}
	for _, bad := range []string{l.DownloadURL(MaxDownload + 1), l.DownloadURL(-1), EchoURLFor(InternetIP) + "bytes/x", EchoURLFor(InternetIP) + "nothing"} {
		if got, err := n.Download(ctx, bad); err == nil {
			t.Errorf("Download(%s): %d bytes, no error", bad, got)
		} else {
			t.Logf("Download(%s): %v", bad, err)
		}
	}
	if body, err := n.HTTPGet(ctx, l.DownloadURL(MaxDownload+1)); err == nil || !strings.Contains(err.Error(), "400") {
		t.Errorf("GET beyond MaxDownload: %q, %v", body, err)
	}

	// A server that promises more than it sends.
	ln, err := l.WAN().Listen("tcp4", netip.AddrPortFrom(InternetIP, 8081).String())
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000")
		w.Write(make([]byte, 10))
	})}
	go srv.Serve(ln)
	defer srv.Close()
	got, err := n.Download(ctx, httpURL(InternetIP, 8081)+"/short")
	if err == nil || got != 10 {
		t.Errorf("short body: %d bytes, %v", got, err)
	} else {
		t.Logf("short body: %v", err)
	}
}

// TestWatchDirect: the witness counts what reaches the router from the
// watched sources, and nothing else.
func TestWatchDirect(t *testing.T) {
	l := NewForTest(t, Options{Nodes: []string{"n1", "n2"}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n1, n2 := l.Node("n1"), l.Node("n2")
	p, err := n1.AddPod(PodOptions{NAT: PodNATNone})
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][]netip.Prefix{nil, {netip.MustParsePrefix("fd00::/64")}, {{}}} {
		if _, err := l.WatchDirect(bad...); err == nil {
			t.Errorf("WatchDirect(%v) succeeded", bad)
		}
	}
	podW, err := l.WatchDirect(p.CIDR())
	if err != nil {
		t.Fatal(err)
	}
	nodeW, err := l.WatchDirect(netip.PrefixFrom(n1.Addr(), 32))
	if err != nil {
		t.Fatal(err)
	}
	get := func(w *DirectWatch) uint64 {
		t.Helper()
		c, err := w.Count()
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	if a, b := get(podW), get(nodeW); a != 0 || b != 0 {
		t.Fatalf("counts before any traffic: %d, %d", a, b)
	}

	// Not watched: another node, and the router's own traffic to the
	// internet addresses (on lo).
	if _, err := n2.EgressIP(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := l.WAN().HTTPGet(ctx, l.EchoURL()); err != nil {
		t.Fatal(err)
	}
	if a, b := get(podW), get(nodeW); a != 0 || b != 0 {
		t.Errorf("counts after unwatched traffic: %d, %d", a, b)
	}

	// No NAT: the pod's own address reaches the internet.
	if ip, err := p.EgressIP(ctx); err != nil || ip != p.Addr() {
		t.Fatalf("pod egress %v, %v", ip, err)
	}
	waitFor(t, 5*time.Second, "pod packets counted", func() bool { return get(podW) > 0 })
	// The connection's last packets (the final ACK) may come a moment
	// after EgressIP returned: let the count settle first.
	settled(t, func() uint64 { return get(podW) })
	t.Logf("pod CIDR: %d packets", get(podW))
	if c := get(nodeW); c != 0 {
		t.Errorf("node watch counted %d packets of the pod", c)
	}
	if err := podW.Reset(); err != nil {
		t.Fatal(err)
	}
	if c := get(podW); c != 0 {
		t.Errorf("count after Reset: %d", c)
	}

	// Masqueraded: the pod is seen as its node.
	if err := p.SetNAT(PodNATEverywhere); err != nil {
		t.Fatal(err)
	}
	if ip, err := p.EgressIP(ctx); err != nil || ip != n1.Addr() {
		t.Fatalf("pod egress %v, %v", ip, err)
	}
	waitFor(t, 5*time.Second, "masqueraded pod packets counted as the node's", func() bool { return get(nodeW) > 0 })
	if c := get(podW); c != 0 {
		t.Errorf("pod watch counted %d masqueraded packets", c)
	}
	before := get(nodeW)
	if _, err := n1.Download(ctx, l.DownloadURL(1<<20)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "node packets counted", func() bool { return get(nodeW) > before })
	t.Logf("node: %d packets", get(nodeW))

	// Several sources in one watch.
	both, err := l.WatchDirect(p.CIDR(), netip.PrefixFrom(n2.Addr(), 32))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.SetNAT(PodNATNone); err != nil {
		t.Fatal(err)
	}
	for _, ns := range []*NetNS{p.NetNS, n2.NetNS} {
		if _, err := ns.EgressIP(ctx); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, "both sources counted", func() bool { return get(both) > get(podW) && get(podW) > 0 })

	if err := podW.Close(); err != nil {
		t.Fatal(err)
	}
	if err := podW.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := podW.Count(); err == nil {
		t.Errorf("Count after Close succeeded")
	}
	if err := podW.Reset(); err == nil {
		t.Errorf("Reset after Close succeeded")
	}
	if ok, err := l.WAN().hasNftTable(podW.ct.table.Name); err != nil || ok {
		t.Errorf("table %s after Close: %v, %v", podW.ct.table.Name, ok, err)
	}
	if ok, err := l.WAN().hasNftTable(nodeW.ct.table.Name); err != nil || !ok {
		t.Errorf("another watch's table %s after Close: %v, %v", nodeW.ct.table.Name, ok, err)
	}
}

// TestSpray: Spray's datagrams and connection attempts reach the target;
// the witness counts both; stop and ctx end it.
func TestSpray(t *testing.T) {
	l := NewForTest(t, Options{Nodes: []string{"n1"}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n := l.Node("n1")

	// A reachable target: both kinds arrive.
	target := netip.AddrPortFrom(InternetIP, 9100)
	ln, err := l.WAN().Listen("tcp4", target.String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pc, err := l.WAN().ListenPacket("udp4", target.String())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	accepted := make(chan net.Addr, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c.RemoteAddr()
			c.Close()
		}
	}()
	received := make(chan net.Addr, 1)
	go func() {
		b := make([]byte, 100)
		if _, from, err := pc.ReadFrom(b); err == nil && string(b[:len(sprayPayload)]) == string(sprayPayload) {
			received <- from
		}
	}()
	stop := n.Spray(ctx, target, 20*time.Millisecond)
	for range 2 {
		select {
		case a := <-accepted:
			t.Logf("TCP connection from %v", a)
		case a := <-received:
			t.Logf("UDP datagram from %v", a)
		case <-ctx.Done():
			t.Fatal("spray did not arrive")
		}
	}
	if sent := stop(); sent < 1 {
		t.Errorf("stop: %d rounds", sent)
	}

	// A closed port, watched: every round is a datagram and a SYN.
	w, err := l.WatchDirect(netip.PrefixFrom(n.Addr(), 32))
	if err != nil {
		t.Fatal(err)
	}
	get := func() uint64 {
		c, err := w.Count()
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	stop = n.Spray(ctx, netip.AddrPortFrom(InternetIP, 9), 5*time.Millisecond)
	waitFor(t, 5*time.Second, "20 packets", func() bool { return get() >= 20 })
	sent := stop()
	if again := stop(); again != sent {
		t.Errorf("second stop: %d, first %d", again, sent)
	}
	waitFor(t, 5*time.Second, "2 packets per round", func() bool { return get() >= uint64(2*sent) })
	t.Logf("%d rounds, %d packets", sent, get())

	// Cancelling ctx ends the sending.
	if err := w.Reset(); err != nil {
		t.Fatal(err)
	}
	cctx, ccancel := context.WithCancel(ctx)
	stop = n.Spray(cctx, netip.AddrPortFrom(InternetIP, 9), 5*time.Millisecond)
	waitFor(t, 5*time.Second, "packets", func() bool { return get() > 0 })
	ccancel()
	sent = stop()
	if sent < 1 {
		t.Errorf("rounds before cancel: %d", sent)
	}
	// An already cancelled context sends nothing.
	if got := n.Spray(cctx, netip.AddrPortFrom(InternetIP, 9), time.Millisecond)(); got != 0 {
		t.Errorf("spray with a cancelled context: %d rounds", got)
	}
}

// TestSprayRefusesOutsideLab needs no root: Spray panics on a destination
// outside the lab before it sends anything (the namespace here is not
// even open, so nothing could be sent anyway).
func TestSprayRefusesOutsideLab(t *testing.T) {
	ns := &NetNS{label: "x", handle: -1}
	for _, dst := range []string{"192.0.2.1:9", "[2001:db8::1]:9", "198.20.0.1:9"} {
		func() {
			defer func() {
				if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), "not a lab address") {
					t.Errorf("Spray to %s: recovered %v", dst, r)
				}
			}()
			ns.Spray(context.Background(), netip.MustParseAddrPort(dst), time.Second)
		}()
	}
	for _, ok := range []string{"198.18.0.1", "198.19.255.255", "127.0.0.1", "::1", "::ffff:198.19.0.1"} {
		if !inLab(netip.MustParseAddr(ok)) {
			t.Errorf("inLab(%s) = false", ok)
		}
	}
	for _, bad := range []string{"198.17.255.255", "198.20.0.0", "10.0.0.1", "::ffff:10.0.0.1", "fd00::1"} {
		if inLab(netip.MustParseAddr(bad)) {
			t.Errorf("inLab(%s) = true", bad)
		}
	}
}
