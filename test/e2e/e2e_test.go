// Package e2e runs ts-node-agent end to end on the netns lab: real
// tailscaled with kernel TUN, a real control server, an "internet" echo
// service, and the agent binary as it runs in a pod. Needs root.
package e2e

import (
	"context"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

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
	if ea.Exited() || wa.Exited() {
		t.Fatal("an agent restarted during approval")
	}

	// kill -9 tailscaled on the worker: restarted, ready again, and the
	// egress still goes through the exit node.
	pids, err := worker1.SignalProcesses("tailscaled", syscall.SIGKILL)
	if err != nil || len(pids) != 1 {
		t.Fatalf("kill -9 tailscaled on worker1: pids %v, err %v", pids, err)
	}
	mustWait(ctx, t, wa, "/readyz", http.StatusServiceUnavailable)
	mustWait(ctx, t, wa, "/readyz", http.StatusOK)
	waitEgress(ctx, t, worker1, exit1.Addr())
	if v, ok := wa.Metric(ctx, "ts_node_agent_tailscaled_restarts_total"); !ok || v != "1" {
		t.Fatalf("worker restarts_total = %q (%v), want 1", v, ok)
	}
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
