// Command demo is `make demo`: it starts the netns lab (a control server
// with DERP and STUN, an "internet" echo service, an exit node and a
// worker, each running ts-node-agent with its own tailscaled on a kernel
// TUN, and a pod behind the worker's bridge) and narrates what happens: the
// egress IP of the worker and of its pod before, the exit node waiting for
// approval, approval, the worker switching, both egress IPs after, the
// probes and a few metrics. It then keeps the lab running until
// Ctrl-C (or exits with --once). Needs root.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/ts-node-agent/ts-node-agent/test/lab"
)

func main() { os.Exit(run()) }

func run() int {
	once := flag.Bool("once", false, "exit after the narration instead of keeping the lab running")
	timeout := flag.Duration("timeout", 3*time.Minute, "give up if the lab does not converge within this")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "demo: needs root to create network namespaces: run `sudo make demo`")
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := demo(ctx, *once, *timeout); err != nil {
		fmt.Fprintf(os.Stderr, "\ndemo failed: %v\n", err)
		return 1
	}
	return 0
}

func say(format string, args ...any) { fmt.Printf(format+"\n", args...) }

func step(format string, args ...any) {
	fmt.Printf("\n\033[1m==> "+format+"\033[0m\n", args...)
}

func demo(ctx context.Context, once bool, timeout time.Duration) error {
	step("building the lab: wan router + control server, exit1 and worker1 namespaces")
	l, err := lab.New(ctx, lab.Options{Nodes: []string{"exit1", "worker1"}, ApproveExitRoutes: false})
	if err != nil {
		return err
	}
	defer func() {
		step("tearing the lab down")
		if err := l.Close(); err != nil {
			say("teardown: %v", err)
			return
		}
		say("nothing left behind")
	}()
	exit1, worker1 := l.Node("exit1"), l.Node("worker1")
	// A pod behind worker1's cni0 bridge, with a CNI that masquerades only
	// out of the node's uplink (like Cilium's BPF masquerading): without
	// the agent's own masquerade, its packets would enter the TUN with the
	// pod's address and be dropped.
	pod, err := worker1.AddPod(lab.PodOptions{NAT: lab.PodNATUplink})
	if err != nil {
		return err
	}
	say("control server  %s", l.ControlURL())
	say("internet echo   %s (answers the caller's IP)", l.EchoURL())
	say("exit1           %s", exit1.Addr())
	say("worker1         %s", worker1.Addr())
	say("pod on worker1  %s (pod CIDR %s, CNI masquerades on eth0 only, like Cilium)", pod.Addr(), pod.CIDR())

	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	step("worker1's egress IP before anything runs")
	ip, err := worker1.EgressIP(wctx)
	if err != nil {
		return fmt.Errorf("worker1 egress: %w", err)
	}
	say("worker1 -> internet seen as %s (its own address)", ip)
	podIP, err := pod.EgressIP(wctx)
	if err != nil {
		return fmt.Errorf("pod egress: %w", err)
	}
	say("pod     -> internet seen as %s (worker1's address: the CNI's masquerade)", podIP)

	step("starting ts-node-agent: exit1 with --role=exit, worker1 with --role=worker --exit-nodes=exit1")
	ea, err := l.StartAgent(exit1, "exit")
	if err != nil {
		return err
	}
	wa, err := l.StartAgent(worker1, "worker", "--exit-nodes=exit1",
		"--egress-check-url="+l.EchoURL(), "--expected-egress-ip="+exit1.Addr().String(),
		"--pod-egress-source="+pod.Gateway().String())
	if err != nil {
		return err
	}
	say("agent logs: %s, %s", ea.LogPath(), wa.LogPath())

	step("exit1 advertises 0.0.0.0/0 and ::/0, but control has not approved them yet")
	body, err := waitContains(wctx, ea, "/readyz?verbose", "not approved")
	if err != nil {
		return err
	}
	printProbe("exit1 /readyz?verbose", body)

	step("approving the exit routes on the control server (as an admin or autoApprovers would)")
	l.SetApproveExitRoutes(true)
	if body, err = ea.WaitStatus(wctx, "/readyz?verbose", http.StatusOK); err != nil {
		return err
	}
	printProbe("exit1 /readyz?verbose", body)

	step("worker1 selects exit1 and becomes ready")
	if body, err = wa.WaitStatus(wctx, "/readyz?verbose", http.StatusOK); err != nil {
		return err
	}
	printProbe("worker1 /readyz?verbose", body)

	step("worker1's egress IP now")
	after, err := waitEgress(wctx, worker1.NetNS, exit1.Addr())
	if err != nil {
		return err
	}
	say("worker1 -> internet seen as %s: exit1's address (was %s)", after, ip)
	podAfter, err := waitEgress(wctx, pod.NetNS, exit1.Addr())
	if err != nil {
		return err
	}
	say("pod     -> internet seen as %s: exit1's address too (was %s)", podAfter, podIP)

	step("a few metrics")
	for _, p := range []struct {
		a      *lab.Agent
		prefix []string
	}{
		{ea, []string{"ts_node_agent_ready ", "ts_node_agent_role{", "ts_node_agent_exit_route_approved", "ts_node_agent_ip_forwarding_enabled"}},
		{wa, []string{"ts_node_agent_ready ", "ts_node_agent_egress_ip_info", "ts_node_agent_exit_node_info", "ts_node_agent_exit_node_online", "ts_node_agent_exit_node_switches_total", "ts_node_agent_tailnet_ping_seconds", "ts_node_agent_startup_duration_seconds"}},
	} {
		for _, pre := range p.prefix {
			for _, line := range p.a.MetricLines(wctx, pre) {
				if strings.HasSuffix(line, " 0") && strings.HasPrefix(line, "ts_node_agent_role{") {
					continue
				}
				say("%-8s %s", p.a.Node.Name(), line)
			}
		}
	}

	if once {
		say("\n--once: done")
		return nil
	}
	step("the lab keeps running; Ctrl-C to tear it down. Try:")
	for _, n := range []*lab.Node{exit1, worker1} {
		say("  ip netns exec %s curl -s localhost:%d/readyz?verbose", n.NSName(), lab.AgentPort)
	}
	say("  ip netns exec %s curl -s localhost:%d/metrics | grep ts_node_agent_", worker1.NSName(), lab.AgentPort)
	say("  ip netns exec %s curl -s %s", worker1.NSName(), l.EchoURL())
	say("  ip netns exec %s curl -s %s   # the pod", pod.NSName(), l.EchoURL())
	say("  ip netns exec %s ip link set eth0 down   # then watch worker1's /readyz", exit1.NSName())
	<-ctx.Done()
	return nil
}

func printProbe(title, body string) {
	say("%s:", title)
	for _, line := range strings.Split(strings.TrimRight(body, "\n"), "\n") {
		say("    %s", line)
	}
}

func waitContains(ctx context.Context, a *lab.Agent, path, want string) (string, error) {
	var body string
	for {
		if _, b, err := a.Get(ctx, path); err == nil {
			body = b
			if strings.Contains(b, want) {
				return b, nil
			}
		}
		select {
		case <-ctx.Done():
			return body, fmt.Errorf("%s on %s never said %q: %w\n%s", path, a.Node.Name(), want, ctx.Err(), body)
		case <-a.Done():
			return body, fmt.Errorf("agent on %s exited: %v", a.Node.Name(), a.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func waitEgress(ctx context.Context, n *lab.NetNS, want netip.Addr) (netip.Addr, error) {
	var got netip.Addr
	var err error
	for {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		got, err = n.EgressIP(cctx)
		cancel()
		if err == nil && got == want {
			return got, nil
		}
		select {
		case <-ctx.Done():
			return got, errors.Join(fmt.Errorf("%s egress IP is %v, want %v", n.Name(), got, want), err, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}
