package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ts-node-agent/ts-node-agent/pkg/hostnet"
	"github.com/ts-node-agent/ts-node-agent/test/lab"
)

// Pods and the windows (issue "Pods leave through the exit node, and
// fail-closed holds in every window"): a pod netns behind the worker's
// cni0 bridge, with the NAT of a flannel-like, a Cilium-like or no CNI,
// must leave through the exit node; and from the first committed exit
// node on, nothing the worker or its pods send may reach the internet
// directly, whatever happens to tailscaled or the agent.

// sprayTarget is where the leak probes go: an internet address of the
// lab (nothing listens on the port; only the source the router sees
// matters).
var sprayTarget = netip.AddrPortFrom(lab.InternetIP, 9)

// podEgress asks the echo service from the pod.
func podEgress(ctx context.Context, p *lab.Pod) (netip.Addr, error) {
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	return p.EgressIP(cctx)
}

// waitPodEgress polls the pod's egress IP until it is want.
func waitPodEgress(ctx context.Context, t *testing.T, p *lab.Pod, want netip.Addr) {
	t.Helper()
	var got netip.Addr
	var err error
	for {
		if got, err = podEgress(ctx, p); err == nil && got == want {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("pod on %s: egress IP %v (err %v), want %v", p.Node().Name(), got, err, want)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// leakWatch sprays from the worker and its pod towards the internet and
// counts what arrives there directly (with the worker's or the pod CIDR's
// address as source).
type leakWatch struct {
	t     *testing.T
	watch *lab.DirectWatch
	stops []func() int
}

func watchLeaks(ctx context.Context, t *testing.T, l *lab.Lab, worker *lab.Node) *leakWatch {
	t.Helper()
	w, err := l.WatchDirect(netip.PrefixFrom(worker.Addr(), 32), worker.PodCIDR())
	if err != nil {
		t.Fatal(err)
	}
	lw := &leakWatch{t: t, watch: w}
	lw.stops = append(lw.stops, worker.Spray(ctx, sprayTarget, 20*time.Millisecond))
	if p := worker.Pod(); p != nil {
		lw.stops = append(lw.stops, p.Spray(ctx, sprayTarget, 20*time.Millisecond))
	}
	t.Cleanup(func() { lw.stop(); w.Close() })
	return lw
}

func (lw *leakWatch) reset() {
	lw.t.Helper()
	if err := lw.watch.Reset(); err != nil {
		lw.t.Fatal(err)
	}
}

// leaked is the number of direct packets since the last reset.
func (lw *leakWatch) leaked() uint64 {
	lw.t.Helper()
	n, err := lw.watch.Count()
	if err != nil {
		lw.t.Fatal(err)
	}
	return n
}

func (lw *leakWatch) stop() (sent int) {
	for _, s := range lw.stops {
		sent += s()
	}
	lw.stops = nil
	return sent
}

// requireNoLeak fails when anything left directly since the last reset.
func (lw *leakWatch) requireNoLeak(window string) {
	lw.t.Helper()
	if n := lw.leaked(); n > 0 {
		lw.t.Fatalf("%s: %d packets of the worker or its pod reached the internet directly", window, n)
	}
	lw.t.Logf("%s: no direct packet", window)
}

// leftovers is what of the agent is in a node's kernel and state dir.
type leftovers struct {
	rules     []string // policy rules tagged with the agent's protocol (v4 and v6)
	table     bool     // nftables table inet ts-node-agent
	routes    []string // routes of the kill switch's table
	stateFile bool
}

func (lo leftovers) none() bool {
	return len(lo.rules) == 0 && !lo.table && len(lo.routes) == 0 && !lo.stateFile
}

func (lo leftovers) String() string {
	return fmt.Sprintf("rules %q, nftables table %v, routes of table %d %q, state file %v",
		lo.rules, lo.table, hostnet.KillSwitchTable, lo.routes, lo.stateFile)
}

func agentLeftovers(ctx context.Context, t *testing.T, n *lab.Node) leftovers {
	t.Helper()
	var lo leftovers
	lo.rules, lo.table = bypassLeft(ctx, t, n)
	for _, fam := range []string{"-4", "-6"} {
		out, err := n.Exec(ctx, "ip", fam, "route", "show", "table", fmt.Sprint(hostnet.KillSwitchTable))
		if strings.Contains(string(out), "FIB table does not exist") {
			continue // never had a route: nothing left
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if line != "" {
				lo.routes = append(lo.routes, fam+" "+line)
			}
		}
	}
	_, err := os.Stat(filepath.Join(n.StateDir(), hostnet.KillSwitchStateFile))
	lo.stateFile = err == nil
	return lo
}

// podLab is the lab of the tests here: exit1 with approved exit routes and
// its agent ready, worker1, and (unless nat is "") a pod behind worker1.
type podLab struct {
	l              *lab.Lab
	ctx            context.Context
	exit1, worker1 *lab.Node
	pod            *lab.Pod
	ea             *lab.Agent
}

func newPodLab(t *testing.T, timeout time.Duration, nat lab.PodNAT) *podLab {
	t.Helper()
	l := lab.NewForTest(t, lab.Options{Nodes: []string{"exit1", "worker1"}, ApproveExitRoutes: true})
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	pl := &podLab{l: l, ctx: ctx, exit1: l.Node("exit1"), worker1: l.Node("worker1")}
	if nat != "" {
		var err error
		if pl.pod, err = pl.worker1.AddPod(lab.PodOptions{NAT: nat}); err != nil {
			t.Fatal(err)
		}
	}
	pl.ea = mustStart(t, l, pl.exit1, "exit")
	mustWait(ctx, t, pl.ea, "/readyz", http.StatusOK)
	return pl
}

// TestPodEgressThroughExitNode: a pod behind the worker's bridge leaves
// through the exit node whatever its CNI's NAT does: masquerade on every
// interface (flannel, k3s), only on the uplink (Cilium's BPF masquerading,
// Calico eBPF: its packets enter the TUN with the pod's address), or none
// (a routed pod network). A 4 MiB download completes (MTU 1500 behind a
// TUN of 1280: the MSS clamp). egress-ip-pod passes, and fails, naming
// the pod source, when the pods' path is broken while the host's is fine.
func TestPodEgressThroughExitNode(t *testing.T) {
	pl := newPodLab(t, 4*time.Minute, lab.PodNATUplink)
	l, ctx, exit1, worker1, pod := pl.l, pl.ctx, pl.exit1, pl.worker1, pl.pod
	wa := mustStart(t, l, worker1, "worker", "--exit-nodes=exit1",
		"--egress-check-url="+l.EchoURL(), "--expected-egress-ip="+exit1.Addr().String(),
		"--egress-check-interval=10s", "--pod-egress-source="+pod.Gateway().String()) // the minimum
	mustWait(ctx, t, wa, "/readyz", http.StatusOK)
	waitEgress(ctx, t, worker1, exit1.Addr())
	body := waitBody(ctx, t, wa, "/readyz?verbose", "[+]egress-ip-pod ok")
	t.Logf("worker /readyz?verbose:\n%s", body)
	if lines := wa.MetricLines(ctx, "ts_node_agent_egress_ip_info"); !containsLine(lines, `from="pod"`, exit1.Addr().String()) {
		t.Errorf("no egress_ip_info{from=\"pod\"} for %s: %q", exit1.Addr(), lines)
	}

	for _, mode := range []lab.PodNAT{lab.PodNATUplink, lab.PodNATEverywhere, lab.PodNATNone} {
		if err := pod.SetNAT(mode); err != nil {
			t.Fatal(err)
		}
		waitPodEgress(ctx, t, pod, exit1.Addr())
		dctx, dcancel := context.WithTimeout(ctx, 30*time.Second)
		n, err := pod.Download(dctx, l.DownloadURL(4<<20))
		dcancel()
		if err != nil || n != 4<<20 {
			t.Fatalf("NAT %s: 4 MiB download from the pod through the exit node: %d bytes, %v", mode, n, err)
		}
		t.Logf("NAT %s: the pod leaves as %s and downloaded 4 MiB", mode, exit1.Addr())
	}

	// A CNI policy that drops the pods' traffic into the TUN: the host's
	// egress check still passes, the pods' fails and says from where.
	nft(ctx, t, worker1, "add table inet lab-broken-cni",
		"add chain inet lab-broken-cni post { type filter hook postrouting priority -300 ; }",
		fmt.Sprintf("add rule inet lab-broken-cni post ip saddr %s oifname %s drop", pod.CIDR(), lab.TUNName))
	body = waitBody(ctx, t, wa, "/readyz?verbose", "[-]egress-ip-pod failed: from pod source "+pod.Gateway().String())
	if !strings.Contains(body, "[+]egress-ip ok") {
		t.Errorf("the host's egress check failed too:\n%s", body)
	}
	if code, _, _ := wa.Get(ctx, "/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz = %d with the pods cut off, want 503", code)
	}
	nft(ctx, t, worker1, "delete table inet lab-broken-cni")
	mustWait(ctx, t, wa, "/readyz", http.StatusOK)
}

// nft runs nft commands in the node's namespace, one per argument.
func nft(ctx context.Context, t *testing.T, n *lab.Node, cmds ...string) {
	t.Helper()
	for _, c := range cmds {
		if out, err := n.Exec(ctx, append([]string{"nft"}, strings.Fields(c)...)...); err != nil {
			t.Fatalf("nft %s: %v: %s", c, err, out)
		}
	}
}

func containsLine(lines []string, parts ...string) bool {
	for _, l := range lines {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(l, p)
		}
		if ok {
			return true
		}
	}
	return false
}

// TestPodEgressCheckWithoutPodCIDR: with no pod CIDR known (no Kubernetes
// here, no --pod-egress-source) egress-ip-pod says so and does not gate.
func TestPodEgressCheckWithoutPodCIDR(t *testing.T) {
	pl := newPodLab(t, 3*time.Minute, "")
	l, ctx, exit1, worker1 := pl.l, pl.ctx, pl.exit1, pl.worker1
	wa := mustStart(t, l, worker1, "worker", "--exit-nodes=exit1",
		"--egress-check-url="+l.EchoURL(), "--expected-egress-ip="+exit1.Addr().String())
	mustWait(ctx, t, wa, "/readyz", http.StatusOK)
	waitBody(ctx, t, wa, "/readyz?verbose", "egress-ip-pod failed (informational, not required): skipped: no pod CIDR known")
}

// TestFailClosedAcrossRestarts: with --exit-fallback=block, from the first
// committed exit node on, no packet of the worker or of its pod reaches
// the internet directly: across an agent SIGTERM and restart (a rolling
// update), an agent SIGKILL (tailscaled dies with it) and restart, and a
// restart while the control server is unreachable (tailscaled never gets
// to Running). Traffic leaves through the exit node again afterwards.
func TestFailClosedAcrossRestarts(t *testing.T) {
	pl := newPodLab(t, 6*time.Minute, lab.PodNATUplink)
	l, ctx, exit1, worker1, pod := pl.l, pl.ctx, pl.exit1, pl.worker1, pl.pod
	args := []string{"--exit-nodes=exit1", "--exit-fallback=block"}
	wa := mustStart(t, l, worker1, "worker", args...)
	mustWait(ctx, t, wa, "/readyz", http.StatusOK)
	waitEgress(ctx, t, worker1, exit1.Addr())
	waitPodEgress(ctx, t, pod, exit1.Addr())

	lw := watchLeaks(ctx, t, l, worker1)
	time.Sleep(time.Second) // the spray runs through the exit node for a while
	lw.requireNoLeak("steady state")

	restart := func(window string, sig syscall.Signal, before, during func()) {
		t.Helper()
		lw.reset()
		if err := wa.Signal(sig); err != nil {
			t.Fatal(err)
		}
		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		err := wa.Wait(wctx)
		wcancel()
		if sig == syscall.SIGTERM && err != nil {
			t.Fatalf("%s: the agent did not exit cleanly: %v", window, err)
		}
		if wa.Exited() == false {
			t.Fatalf("%s: the agent did not exit", window)
		}
		// No agent, no tailscaled: the window a rolling update opens.
		time.Sleep(2 * time.Second)
		if pids, _ := worker1.SignalProcesses("tailscaled", 0); len(pids) != 0 {
			t.Fatalf("%s: tailscaled still runs without its agent: %v", window, pids)
		}
		if lo := agentLeftovers(ctx, t, worker1); len(lo.rules) == 0 || !lo.stateFile {
			t.Fatalf("%s: the stopped agent left no kill switch: %s", window, lo)
		}
		if before != nil {
			before()
		}
		wa = mustStart(t, l, worker1, "worker", args...)
		if during != nil {
			during()
		}
		mustWait(ctx, t, wa, "/readyz", http.StatusOK)
		waitEgress(ctx, t, worker1, exit1.Addr())
		waitPodEgress(ctx, t, pod, exit1.Addr())
		lw.requireNoLeak(window)
	}
	restart("SIGTERM and restart", syscall.SIGTERM, nil, nil)
	restart("SIGKILL and restart", syscall.SIGKILL, nil, nil)

	// The control server unreachable while the new agent boots: tailscaled
	// starts, but never gets to Running for 8 s.
	restart("restart with the control server unreachable", syscall.SIGKILL, func() {
		nft(ctx, t, worker1, "add table inet lab-no-control",
			"add chain inet lab-no-control out { type filter hook output priority -300 ; }",
			fmt.Sprintf("add rule inet lab-no-control out ip daddr %s drop", lab.RouterIP))
	}, func() {
		time.Sleep(8 * time.Second)
		if code, _, _ := wa.Get(ctx, "/readyz"); code == http.StatusOK {
			t.Error("the worker is ready with the control server unreachable")
		}
		if ip, err := podEgress(ctx, pod); err == nil {
			t.Errorf("the pod reached the internet as %s while tailscaled could not reach control", ip)
		}
		nft(ctx, t, worker1, "delete table inet lab-no-control")
	})
	if sent := lw.stop(); sent == 0 {
		t.Fatal("the spray sent nothing")
	}
}

// TestFailClosedAfterRollback: under --exit-fallback=block a rolled-back
// exit node leaves the node closed (exit node off, kill switch on), not on
// direct egress.
func TestFailClosedAfterRollback(t *testing.T) {
	pl := newPodLab(t, 3*time.Minute, lab.PodNATNone)
	l, ctx, exit1, worker1 := pl.l, pl.ctx, pl.exit1, pl.worker1
	api := netip.MustParseAddrPort("198.18.0.250:443") // nothing answers there
	wa := mustStart(t, l, worker1, "worker", append(commitTargetFlags("api", api),
		"--exit-nodes=exit1", "--exit-commit-timeout=3s", "--exit-fallback=block")...)
	waitBody(ctx, t, wa, "/readyz?verbose", "[-]exit-commit failed: rolled back exit node exit1")

	lw := watchLeaks(ctx, t, l, worker1)
	time.Sleep(3 * time.Second)
	lw.requireNoLeak("after the rollback")
	if ip, err := worker1.EgressIP(ctx); err == nil {
		t.Errorf("the worker reached the internet as %s after a rollback under --exit-fallback=block", ip)
	}
	if ip, err := podEgress(ctx, worker1.Pod()); err == nil {
		t.Errorf("the pod reached the internet as %s after a rollback under --exit-fallback=block", ip)
	}
	// The LAN, and the bypassed destinations, still answer.
	dctx, dcancel := context.WithTimeout(ctx, 2*time.Second)
	defer dcancel()
	if c, err := worker1.DialContext(dctx, "tcp", netip.AddrPortFrom(exit1.Addr(), lab.AgentPort).String()); err == nil {
		c.Close()
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("the LAN is blocked too: %v", err)
	}
}

// udpEcho answers every datagram on pc with "echo " + the datagram.
func udpEcho(t *testing.T, pc net.PacketConn) {
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(append([]byte("echo "), buf[:n]...), from)
		}
	}()
}

// askUDP sends msg from the internet address to addr and waits for the
// echo.
func askUDP(l *lab.Lab, addr netip.AddrPort, msg string) error {
	return l.WAN().Do(func() error {
		c, err := net.DialUDP("udp4", &net.UDPAddr{IP: lab.InternetIP.AsSlice()}, net.UDPAddrFromAddrPort(addr))
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Write([]byte(msg)); err != nil {
			return err
		}
		buf := make([]byte, 100)
		n, err := c.Read(buf)
		if err != nil {
			return fmt.Errorf("UDP %s from %s: no answer: %w", addr, lab.InternetIP, err)
		}
		if got := string(buf[:n]); got != "echo "+msg {
			return fmt.Errorf("UDP %s: got %q", addr, got)
		}
		return nil
	})
}

// TestInboundAnsweredWhileTailscaledIsDown: new inbound TCP and UDP
// connections from an internet address are answered by the worker while
// it uses the exit node and while tailscaled is dead with the kill switch
// on (the agent is stopped with SIGSTOP so that the window stays open).
func TestInboundAnsweredWhileTailscaledIsDown(t *testing.T) {
	pl := newPodLab(t, 3*time.Minute, "")
	l, ctx, exit1, worker1 := pl.l, pl.ctx, pl.exit1, pl.worker1
	const sshPort = 2222
	sshd := startSSHStandIn(t, worker1, sshPort)
	bound, err := worker1.ListenPacket("udp4", netip.AddrPortFrom(worker1.Addr(), 5353).String())
	if err != nil {
		t.Fatal(err)
	}
	udpEcho(t, bound)
	wild, err := worker1.ListenPacket("udp4", ":5354")
	if err != nil {
		t.Fatal(err)
	}
	udpEcho(t, wild)

	wa := mustStart(t, l, worker1, "worker", "--exit-nodes=exit1", "--exit-fallback=block")
	mustWait(ctx, t, wa, "/readyz", http.StatusOK)
	waitEgress(ctx, t, worker1, exit1.Addr())

	inbound := func(when string, udpPorts ...uint16) {
		t.Helper()
		s := openSession(ctx, t, l, worker1, sshd, sshPort, when)
		if err := s.clientFirst("hello"); err != nil {
			t.Errorf("%s: %v", when, err)
		}
		for _, port := range udpPorts {
			if err := askUDP(l, netip.AddrPortFrom(worker1.Addr(), port), "ping"); err != nil {
				t.Errorf("%s: %v", when, err)
			}
		}
	}
	// A UDP socket bound to the wildcard address answers from the source
	// the route lookup picks: with tailscaled up that is the TUN's (see
	// the README), so only the bound one is asked then.
	inbound("tailscaled up", 5353)

	if err := wa.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer wa.Signal(syscall.SIGCONT)
	if pids, err := worker1.SignalProcesses("tailscaled", syscall.SIGKILL); err != nil || len(pids) != 1 {
		t.Fatalf("kill -9 tailscaled: %v %v", pids, err)
	}
	time.Sleep(time.Second) // the TUN and table 52 go with tailscaled
	if ip, err := worker1.EgressIP(ctx); err == nil {
		t.Fatalf("the worker reached the internet as %s with tailscaled down", ip)
	}
	inbound("tailscaled down, kill switch on", 5353, 5354)

	if err := wa.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	mustWait(ctx, t, wa, "/readyz", http.StatusOK)
	waitEgress(ctx, t, worker1, exit1.Addr())
}

// TestPreMarkedPodPacketsUseTheExitNode: pod packets that already carry a
// CNI's mark (Calico eBPF 0x01000000, with NAT outgoing 0x03800000, a
// Cilium identity 0x0f000f00) still leave through the exit node, and not
// at all with tailscaled down; inbound sessions still take the reply
// bypass.
func TestPreMarkedPodPacketsUseTheExitNode(t *testing.T) {
	pl := newPodLab(t, 4*time.Minute, lab.PodNATUplink)
	l, ctx, exit1, worker1, pod := pl.l, pl.ctx, pl.exit1, pl.worker1, pl.pod
	const sshPort = 2222
	sshd := startSSHStandIn(t, worker1, sshPort)
	wa := mustStart(t, l, worker1, "worker", "--exit-nodes=exit1", "--exit-fallback=block")
	mustWait(ctx, t, wa, "/readyz", http.StatusOK)
	waitEgress(ctx, t, worker1, exit1.Addr())

	marks := []uint32{0x01000000, 0x03800000, 0x0f000f00}
	for _, m := range marks {
		if err := pod.SetMark(m); err != nil {
			t.Fatal(err)
		}
		if ip, err := podEgress(ctx, pod); err != nil || ip != exit1.Addr() {
			t.Errorf("pod packets marked %#x: egress %v (%v), want the exit node's %s", m, ip, err, exit1.Addr())
		}
	}
	s := openSession(ctx, t, l, worker1, sshd, sshPort, "with marked pods")
	if err := s.clientFirst("hello"); err != nil {
		t.Error(err)
	}

	lw := watchLeaks(ctx, t, l, worker1)
	if err := wa.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer wa.Signal(syscall.SIGCONT)
	if pids, err := worker1.SignalProcesses("tailscaled", syscall.SIGKILL); err != nil || len(pids) != 1 {
		t.Fatalf("kill -9 tailscaled: %v %v", pids, err)
	}
	for _, m := range marks {
		if err := pod.SetMark(m); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
	}
	lw.requireNoLeak("marked pod packets with tailscaled down")
	if err := wa.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	mustWait(ctx, t, wa, "/readyz", http.StatusOK)
}

// TestUninstall: the explicit paths remove everything the agent leaves in
// place when it stops: `ts-node-agent cleanup` on the node, and the role
// leaving worker (the node's label set to none; here the agent restarted
// with --role=none).
func TestUninstall(t *testing.T) {
	pl := newPodLab(t, 4*time.Minute, "")
	l, ctx, worker1 := pl.l, pl.ctx, pl.worker1

	armed := func() {
		t.Helper()
		wa := mustStart(t, l, worker1, "worker", "--exit-nodes=exit1", "--exit-fallback=block")
		mustWait(ctx, t, wa, "/readyz", http.StatusOK)
		if err := wa.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := wa.Wait(ctx); err != nil {
			t.Fatal(err)
		}
		lo := agentLeftovers(ctx, t, worker1)
		if len(lo.rules) == 0 || !lo.table || len(lo.routes) == 0 || !lo.stateFile {
			t.Fatalf("after SIGTERM the kill switch must stay for the next agent: %s", lo)
		}
		if _, err := worker1.EgressIP(ctx); err == nil {
			t.Fatal("a stopped worker with the kill switch reached the internet")
		}
	}

	// ts-node-agent cleanup.
	armed()
	bin, err := lab.AgentBinary()
	if err != nil {
		t.Fatal(err)
	}
	out, err := worker1.Exec(ctx, bin, "cleanup", "--state-dir="+worker1.StateDir(), "--log-format=text")
	t.Logf("cleanup:\n%s", out)
	if err != nil {
		t.Fatal(err)
	}
	if lo := agentLeftovers(ctx, t, worker1); !lo.none() {
		t.Fatalf("left after cleanup: %s", lo)
	}
	waitEgress(ctx, t, worker1, worker1.Addr())
	out, err = worker1.Exec(ctx, bin, "cleanup", "--state-dir=relative")
	if err == nil || !strings.Contains(string(out), `invalid --state-dir "relative"`) {
		t.Errorf("cleanup with a relative state dir: %v: %s", err, out)
	}

	// The role leaves worker.
	armed()
	na := mustStart(t, l, worker1, "none")
	mustWait(ctx, t, na, "/readyz", http.StatusOK)
	if lo := agentLeftovers(ctx, t, worker1); !lo.none() {
		t.Fatalf("left after the role became none: %s", lo)
	}
	waitEgress(ctx, t, worker1, worker1.Addr())
}
