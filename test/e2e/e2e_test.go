// Package e2e runs ts-node-agent end to end on the netns lab: real
// tailscaled with kernel TUN, a real control server, an "internet" echo
// service, and the agent binary as it runs in a pod. Needs root.
package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ts-node-agent/ts-node-agent/pkg/supervisor"
	"github.com/ts-node-agent/ts-node-agent/test/lab"
)

// waitEgress polls the node's egress IP until it is want.
func waitEgress(ctx context.Context, t *testing.T, n *lab.Node, want netip.Addr) {
	t.Helper()
	var got netip.Addr
	var err error
	for {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		got, err = n.EgressIP(cctx)
		cancel()
		if err == nil && got == want {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: egress IP %v (err %v), want %v", n.Name(), got, err, want)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func mustStart(t *testing.T, l *lab.Lab, n *lab.Node, role string, extra ...string) *lab.Agent {
	t.Helper()
	a, err := l.StartAgent(n, role, extra...)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func mustWait(ctx context.Context, t *testing.T, a *lab.Agent, path string, code int) string {
	t.Helper()
	body, err := a.WaitStatus(ctx, path, code)
	if err != nil {
		t.Fatal(err)
	}
	return body
}

// waitBody polls path until its body contains want.
func waitBody(ctx context.Context, t *testing.T, a *lab.Agent, path, want string) string {
	t.Helper()
	var body string
	for {
		_, b, err := a.Get(ctx, path)
		if err == nil {
			body = b
			if strings.Contains(body, want) {
				return body
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s on %s never contained %q; last:\n%s", path, a.Node.Name(), want, body)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// TestExitNodeEgress is the product's promise: a worker's internet traffic
// leaves through the exit node once control approved it, and not before.
func TestExitNodeEgress(t *testing.T) {
	l := lab.NewForTest(t, lab.Options{Nodes: []string{"exit1", "worker1"}, ApproveExitRoutes: false})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	exit1, worker1 := l.Node("exit1"), l.Node("worker1")

	// Before: the worker leaves with its own address.
	waitEgress(ctx, t, worker1, worker1.Addr())

	ea := mustStart(t, l, exit1, "exit")
	wa := mustStart(t, l, worker1, "worker", "--exit-nodes=exit1")

	// Advertised, not approved: the exit node says so, the worker is not
	// ready either and still leaves directly.
	body := waitBody(ctx, t, ea, "/readyz?verbose", "[-]exit-routes failed: exit routes advertised but not approved by the control server")
	if code, _, _ := ea.Get(ctx, "/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("exit /readyz = %d while not approved:\n%s", code, body)
	}
	if v, ok := ea.Metric(ctx, "ts_node_agent_exit_route_approved"); !ok || v != "0" {
		t.Fatalf("ts_node_agent_exit_route_approved = %q (%v), want 0", v, ok)
	}
	if code, _, _ := wa.Get(ctx, "/readyz"); code != http.StatusServiceUnavailable {
		t.Fatal("worker ready while the exit node is not approved")
	}
	waitEgress(ctx, t, worker1, worker1.Addr())

	// Exit node: forwarding turned on by the agent in its namespace.
	for _, s := range []string{"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"} {
		if v, err := exit1.ReadSysctl(s); err != nil || strings.TrimSpace(v) != "1" {
			t.Fatalf("exit1 %s = %q (%v), want 1", s, v, err)
		}
	}
	if v, _ := worker1.ReadSysctl("net.ipv4.ip_forward"); strings.TrimSpace(v) != "0" {
		t.Fatalf("worker1 net.ipv4.ip_forward = %q: the agent must never enable forwarding on a worker", v)
	}

	// Approval arrives later: both become ready without a restart, and the
	// worker's egress IP is now the exit node's.
	l.SetApproveExitRoutes(true)
	mustWait(ctx, t, ea, "/readyz", http.StatusOK)
	mustWait(ctx, t, wa, "/readyz", http.StatusOK)
	waitEgress(ctx, t, worker1, exit1.Addr())
	if v, ok := wa.Metric(ctx, `ts_node_agent_check_up{check="exit-route-kernel"}`); !ok || v != "1" {
		t.Fatalf("worker exit-route-kernel check_up = %q (%v)", v, ok)
	}
	if v, ok := ea.Metric(ctx, `ts_node_agent_ip_forwarding_enabled{family="ipv4"}`); !ok || v != "1" {
		t.Fatalf("exit ip_forwarding_enabled{ipv4} = %q (%v)", v, ok)
	}
	// UDP GRO forwarding set on the exit node's default-route interface.
	waitMetric(ctx, t, ea, `ts_node_agent_check_up{check="udp-gro-forwarding"}`, "1")
	if out, err := exit1.Exec(ctx, "cat", "/proc/sys/net/ipv4/ip_forward"); err != nil || strings.TrimSpace(string(out)) != "1" {
		t.Fatalf("exit1 ip_forward via exec = %q (%v)", out, err)
	}
	if ea.Exited() || wa.Exited() {
		t.Fatal("an agent restarted during approval")
	}

	// kill -9 tailscaled on the worker: restarted, ready again, and the
	// egress still goes through the exit node. The restarted tailscaled
	// listens on the same UDP port (peers still send to it).
	requireUDPPort(ctx, t, worker1, supervisor.DefaultPort)
	pids, err := worker1.SignalProcesses("tailscaled", syscall.SIGKILL)
	if err != nil || len(pids) != 1 {
		t.Fatalf("kill -9 tailscaled on worker1: pids %v, err %v", pids, err)
	}
	// The first restart is immediate: the not-ready window may be shorter
	// than a poll, so the restart is read from the metric.
	waitMetric(ctx, t, wa, "ts_node_agent_tailscaled_restarts_total", "1")
	mustWait(ctx, t, wa, "/readyz", http.StatusOK)
	waitEgress(ctx, t, worker1, exit1.Addr())
	requireUDPPort(ctx, t, worker1, supervisor.DefaultPort)
}

// requireUDPPort fails the test unless a UDP socket of the node's
// namespace is bound to port (tailscaled's, the only UDP listener there).
func requireUDPPort(ctx context.Context, t *testing.T, n *lab.Node, port int) {
	t.Helper()
	out, err := n.Exec(ctx, "cat", "/proc/net/udp", "/proc/net/udp6")
	if err != nil {
		t.Fatalf("read %s's UDP sockets: %v", n.Name(), err)
	}
	want := fmt.Sprintf(":%04X ", port)
	for line := range strings.Lines(string(out)) {
		if f := strings.Fields(line); len(f) > 1 && strings.HasSuffix(f[1]+" ", want) {
			return
		}
	}
	t.Fatalf("no UDP socket on port %d in %s:\n%s", port, n.Name(), out)
}

// TestKernelRouteDeleted: the worker's exit-route-kernel check is about the
// kernel, not tailscaled's opinion: deleting the table-52 default route by
// hand makes the worker unready with the reason, within a second or two.
func TestKernelRouteDeleted(t *testing.T) {
	l := lab.NewForTest(t, lab.Options{Nodes: []string{"exit1", "worker1"}, ApproveExitRoutes: true})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	exit1, worker1 := l.Node("exit1"), l.Node("worker1")
	ea := mustStart(t, l, exit1, "exit")
	wa := mustStart(t, l, worker1, "worker", "--exit-nodes=auto")
	mustWait(ctx, t, ea, "/readyz", http.StatusOK)
	mustWait(ctx, t, wa, "/readyz", http.StatusOK)
	waitEgress(ctx, t, worker1, exit1.Addr())

	if out, err := worker1.Exec(ctx, "ip", "route", "del", "default", "dev", lab.TUNName, "table", "52"); err != nil {
		t.Fatalf("deleting the table-52 default route: %v\n%s", err, out)
	}
	deleted := time.Now()
	fctx, fcancel := context.WithTimeout(ctx, 3*time.Second)
	defer fcancel()
	body := waitBody(fctx, t, wa, "/readyz?verbose", `[-]exit-route-kernel failed`)
	t.Logf("noticed after %s", time.Since(deleted).Round(time.Millisecond))
	if !strings.Contains(body, "table 52") {
		t.Fatalf("reason does not name table 52:\n%s", body)
	}
	if code, _, _ := wa.Get(ctx, "/readyz"); code != http.StatusServiceUnavailable {
		t.Fatal("worker still ready without its table-52 route")
	}
}

// TestEgressAndTCPChecks: the agent proves the egress IP itself. The
// worker's egress_ip_info shows the exit node's address while it uses it,
// a node that uses none shows its own, an expected IP that matches makes
// the worker ready and one that does not names both addresses; a
// --check-tcp target in the wan namespace going down and up shows in
// /readyz when it is required.
func TestEgressAndTCPChecks(t *testing.T) {
	l := lab.NewForTest(t, lab.Options{Nodes: []string{"exit1", "worker1", "worker2", "plain1"}, ApproveExitRoutes: true})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	exit1, worker1, worker2, plain1 := l.Node("exit1"), l.Node("worker1"), l.Node("worker2"), l.Node("plain1")

	db := netip.AddrPortFrom(lab.AltInternetIP, 5432)
	ln, err := l.WAN().Listen("tcp", db.String())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { ln.Close() }()
	go acceptAll(ln)

	// The shortest interval the agent accepts: the TCP check notices the
	// database going away and coming back within it (±10%).
	egress := []string{"--egress-check-url=" + l.EchoURL(), "--egress-check-url=" + l.EchoJSONURL(), "--egress-check-interval=10s"}
	ea := mustStart(t, l, exit1, "exit")
	w1 := mustStart(t, l, worker1, "worker", append(egress,
		"--exit-nodes=exit1",
		"--expected-egress-ip="+exit1.Addr().String(),
		"--check-tcp=db="+db.String(),
		"--ready-requires=tcp:db")...)
	w2 := mustStart(t, l, worker2, "worker", append(egress,
		"--exit-nodes=exit1",
		"--expected-egress-ip=198.18.0.99")...)
	p1 := mustStart(t, l, plain1, "none", egress...)

	mustWait(ctx, t, ea, "/readyz", http.StatusOK)
	mustWait(ctx, t, w1, "/readyz", http.StatusOK)
	waitMetric(ctx, t, w1, `ts_node_agent_egress_ip_info{from="host",ip="`+exit1.Addr().String()+`"}`, "1")
	waitMetric(ctx, t, w1, "ts_node_agent_egress_ip_match", "1")
	waitMetric(ctx, t, p1, `ts_node_agent_egress_ip_info{from="host",ip="`+plain1.Addr().String()+`"}`, "1")
	waitMetric(ctx, t, w1, `ts_node_agent_tcp_check_up{target="db"}`, "1")

	// Wrong expectation: not ready, and once worker2 uses the exit node the
	// reason names both addresses.
	body := waitBody(ctx, t, w2, "/readyz?verbose",
		"[-]egress-ip failed: egress IP is "+exit1.Addr().String()+", expected 198.18.0.99")
	if code, _, _ := w2.Get(ctx, "/readyz"); code != http.StatusServiceUnavailable {
		t.Error("worker2 ready with the wrong egress IP")
	}
	waitMetric(ctx, t, w2, "ts_node_agent_egress_ip_match", "0")

	// The database goes away, then comes back.
	ln.Close()
	body = waitBody(ctx, t, w1, "/readyz?verbose", "[-]tcp:db failed")
	if code, _, _ := w1.Get(ctx, "/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("worker1 ready while its required tcp:db is down:\n%s", body)
	}
	waitMetric(ctx, t, w1, `ts_node_agent_tcp_check_up{target="db"}`, "0")
	ln, err = l.WAN().Listen("tcp", db.String())
	if err != nil {
		t.Fatal(err)
	}
	go acceptAll(ln)
	mustWait(ctx, t, w1, "/readyz", http.StatusOK)
}

func acceptAll(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		c.Close()
	}
}

// waitMetricAtLeast polls /metrics until series is at least min.
func waitMetricAtLeast(ctx context.Context, t *testing.T, a *lab.Agent, series string, min float64) {
	t.Helper()
	var got string
	for {
		var ok bool
		got, ok = a.Metric(ctx, series)
		if v, err := strconv.ParseFloat(got, 64); ok && err == nil && v >= min {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s on %s = %q, want at least %v", series, a.Node.Name(), got, min)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// waitMetric polls /metrics until series has value want.
func waitMetric(ctx context.Context, t *testing.T, a *lab.Agent, series, want string) {
	t.Helper()
	var got string
	var ok bool
	for {
		got, ok = a.Metric(ctx, series)
		if ok && got == want {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s on %s = %q (present %v), want %s; metrics:\n%s", series, a.Node.Name(), got, ok, want,
				strings.Join(a.MetricLines(context.Background(), "ts_node_agent_egress"), "\n"))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// TestFailover: a worker with two exit node candidates moves to the second
// within seconds when the first loses its network, counts the switch,
// fails back after --failback-after, and with both gone and
// --exit-fallback=block has no internet and is not ready.
func TestFailover(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	exit1, exit2, worker1, wa := twoExitNodes(ctx, t, "--failback-after=5s")

	// exit1 loses its network.
	if err := exit1.SetLinkDown(); err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	fctx, fcancel := context.WithTimeout(ctx, 15*time.Second)
	waitEgress(fctx, t, worker1, exit2.Addr())
	fcancel()
	t.Logf("failover to exit2 after %s", time.Since(cut).Round(100*time.Millisecond))
	waitMetric(ctx, t, wa, `ts_node_agent_exit_node_info{ip="`+peerIP(ctx, t, wa, "exit2")+`",name="exit2"}`, "1")
	if got := switches(ctx, wa); got < 2 {
		t.Fatalf("exit node switches = %d, want the initial one and the failover", got)
	}

	// exit1 comes back: failback only after --failback-after.
	if err := exit1.SetLinkUp(); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	waitEgress(ctx, t, worker1, exit1.Addr())
	if d := time.Since(back); d < 5*time.Second {
		t.Fatalf("failed back after %s, before --failback-after=5s", d)
	}
	// At least one failback (on a loaded machine exit1's first pings after
	// its link came back may fail, and the worker may move once more).
	waitMetricAtLeast(ctx, t, wa, `ts_node_agent_exit_node_switches_total{reason="failback"}`, 1)

	// Both exit nodes gone, block: no internet and not ready.
	if err := exit1.SetLinkDown(); err != nil {
		t.Fatal(err)
	}
	if err := exit2.SetLinkDown(); err != nil {
		t.Fatal(err)
	}
	mustWait(ctx, t, wa, "/readyz", http.StatusServiceUnavailable)
	body := waitBody(ctx, t, wa, "/readyz?verbose", "[-]exit-node-ping failed")
	ectx, ecancel := context.WithTimeout(ctx, 3*time.Second)
	defer ecancel()
	if ip, err := worker1.EgressIP(ectx); err == nil {
		t.Fatalf("worker reached the internet as %s with both exit nodes gone and --exit-fallback=block:\n%s", ip, body)
	}
}

// twoExitNodes starts a lab of exit1, exit2 and worker1, the worker with
// --exit-nodes=exit1,exit2 --exit-fallback=block and extra, and returns
// once all three are ready and the worker leaves through exit1.
func twoExitNodes(ctx context.Context, t *testing.T, extra ...string) (exit1, exit2, worker1 *lab.Node, wa *lab.Agent) {
	t.Helper()
	l := lab.NewForTest(t, lab.Options{Nodes: []string{"exit1", "exit2", "worker1"}, ApproveExitRoutes: true})
	exit1, exit2, worker1 = l.Node("exit1"), l.Node("exit2"), l.Node("worker1")
	e1 := mustStart(t, l, exit1, "exit")
	e2 := mustStart(t, l, exit2, "exit")
	wa = mustStart(t, l, worker1, "worker", append([]string{"--exit-nodes=exit1,exit2", "--exit-fallback=block"}, extra...)...)
	mustWait(ctx, t, e1, "/readyz", http.StatusOK)
	mustWait(ctx, t, e2, "/readyz", http.StatusOK)
	mustWait(ctx, t, wa, "/readyz", http.StatusOK)
	waitEgress(ctx, t, worker1, exit1.Addr())
	return exit1, exit2, worker1, wa
}

// TestNoFalseFailoverOnLossyPath: the exit node in use loses one in three
// of its incoming UDP packets at random (disco pings and WireGuard alike).
// It is alive: the worker must stay on it, ready, and leave through it.
func TestNoFalseFailoverOnLossyPath(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	exit1, _, worker1, wa := twoExitNodes(ctx, t)
	// The standby is pinged before it is needed.
	waitMetricAtLeast(ctx, t, wa, `ts_node_agent_tailnet_ping_seconds{path="direct",peer="exit2"}`, 0)
	before := switches(ctx, wa)

	loss, err := exit1.LoseIncomingUDP(3)
	if err != nil {
		t.Fatal(err)
	}
	const window = 40 * time.Second
	end := time.Now().Add(window)
	for time.Now().Before(end) {
		if n := switches(ctx, wa); n != before {
			t.Fatalf("exit node switches went from %d to %d under 1-in-3 loss: a false failover", before, n)
		}
		time.Sleep(500 * time.Millisecond)
	}
	dropped, err := loss.Dropped()
	if err != nil {
		t.Fatal(err)
	}
	if dropped < 20 {
		t.Fatalf("only %d packets dropped in %v: the test proves nothing", dropped, window)
	}
	t.Logf("%d of exit1's incoming UDP packets dropped in %v; no switch", dropped, window)
	mustWait(ctx, t, wa, "/readyz", http.StatusOK)
	waitEgress(ctx, t, worker1, exit1.Addr())
	if err := loss.Remove(); err != nil {
		t.Fatal(err)
	}
}

// peerIP is the tailnet IPv4 of a peer as the agent's metrics show it (the
// exit_node_info of whichever is selected, or the ping series).
func peerIP(ctx context.Context, t *testing.T, a *lab.Agent, name string) string {
	t.Helper()
	for {
		for _, line := range a.MetricLines(ctx, "ts_node_agent_exit_node_info{") {
			if strings.Contains(line, `name="`+name+`"`) {
				_, rest, _ := strings.Cut(line, `ip="`)
				ip, _, _ := strings.Cut(rest, `"`)
				return ip
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no exit_node_info for %s", name)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func switches(ctx context.Context, a *lab.Agent) int {
	n := 0
	for _, line := range a.MetricLines(ctx, "ts_node_agent_exit_node_switches_total{") {
		f := strings.Fields(line)
		v, _ := strconv.Atoi(f[len(f)-1])
		n += v
	}
	return n
}

// TestKillSwitchWhileTailscaledIsDown: with --exit-fallback=block, a worker
// whose tailscaled is dead (its TUN and table-52 routes gone) must not
// reach the internet directly. The agent is stopped (SIGSTOP) so that it
// cannot restart tailscaled and the window stays open for the test.
func TestKillSwitchWhileTailscaledIsDown(t *testing.T) {
	l := lab.NewForTest(t, lab.Options{Nodes: []string{"exit1", "worker1"}, ApproveExitRoutes: true})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	exit1, worker1 := l.Node("exit1"), l.Node("worker1")
	ea := mustStart(t, l, exit1, "exit")
	wa := mustStart(t, l, worker1, "worker", "--exit-nodes=exit1", "--exit-fallback=block")
	mustWait(ctx, t, ea, "/readyz", http.StatusOK)
	mustWait(ctx, t, wa, "/readyz", http.StatusOK)
	waitEgress(ctx, t, worker1, exit1.Addr())

	if err := wa.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer wa.Signal(syscall.SIGCONT)
	if pids, err := worker1.SignalProcesses("tailscaled", syscall.SIGKILL); err != nil || len(pids) != 1 {
		t.Fatalf("kill -9 tailscaled: %v %v", pids, err)
	}
	// Give the kernel a moment to tear the TUN down, then try repeatedly.
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		ectx, ecancel := context.WithTimeout(ctx, time.Second)
		ip, err := worker1.EgressIP(ectx)
		ecancel()
		if err == nil {
			t.Fatalf("worker reached the internet as %s while tailscaled was down with --exit-fallback=block", ip)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The LAN still works: the exit node's address is in the main table.
	dctx, dcancel := context.WithTimeout(ctx, 2*time.Second)
	defer dcancel()
	c, err := worker1.DialContext(dctx, "tcp", netip.AddrPortFrom(exit1.Addr(), lab.AgentPort).String())
	if err == nil {
		c.Close()
	} else if !strings.Contains(err.Error(), "refused") {
		t.Fatalf("the LAN is blocked too: %v", err)
	}

	// The agent resumes: tailscaled restarts and traffic goes through the
	// exit node again.
	if err := wa.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	mustWait(ctx, t, wa, "/readyz", http.StatusOK)
	waitEgress(ctx, t, worker1, exit1.Addr())
}
