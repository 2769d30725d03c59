// Command demo-cluster is `make demo-cluster`: the DaemonSet on a real
// cluster in the netns lab (test/cluster). A control-plane node (etcd,
// kube-apiserver, kube-controller-manager, kube-scheduler), an exit node
// and a worker, each with a kubelet and its own containerd, run
// deploy/daemonset from the image `make image` built. It narrates the
// nodes, a pod's egress IP before the agent, `kubectl apply -k`, the
// agent pods becoming Ready through kubelet's probes, the pod's egress
// switching to the exit node, the worker's probes, a few metrics and the
// agent's Events. It then keeps the cluster running until Ctrl-C (or
// exits with --once) and tears everything down. Needs root.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ts-node-agent/ts-node-agent/test/cluster"
	"github.com/ts-node-agent/ts-node-agent/test/lab"
)

func main() { os.Exit(run()) }

func run() int {
	once := flag.Bool("once", false, "exit after the narration instead of keeping the cluster running")
	image := flag.String("image", "", "the agent image `make image-oci` built (repo:tag); required")
	archive := flag.String("archive", "", "its OCI archive (out/ts-node-agent-oci.tar); required")
	timeout := flag.Duration("timeout", 6*time.Minute, "give up if the cluster does not converge within this")
	flag.Parse()
	var bad []string
	if *image == "" {
		bad = append(bad, "--image is required (the image `make image-oci` built, e.g. ghcr.io/ts-node-agent/ts-node-agent:dev)")
	}
	if *archive == "" {
		bad = append(bad, "--archive is required (the OCI archive `make image-oci` wrote, out/ts-node-agent-oci.tar)")
	} else if _, err := os.Stat(*archive); err != nil {
		bad = append(bad, fmt.Sprintf("--archive %q: %v (run make image-oci)", *archive, err))
	}
	if len(bad) > 0 {
		fmt.Fprintln(os.Stderr, "demo-cluster: "+strings.Join(bad, "\ndemo-cluster: "))
		return 2
	}
	if err := cluster.CheckHost(); err != nil {
		fmt.Fprintf(os.Stderr, "demo-cluster: %v\n", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := demo(ctx, *once, *image, *archive, *timeout); err != nil {
		fmt.Fprintf(os.Stderr, "\ndemo-cluster failed: %v\n", err)
		return 1
	}
	return 0
}

func say(format string, args ...any) { fmt.Printf(format+"\n", args...) }

func step(format string, args ...any) {
	fmt.Printf("\n\033[1m==> "+format+"\033[0m\n", args...)
}

func demo(ctx context.Context, once bool, image, archive string, timeout time.Duration) (err error) {
	step("building the lab: wan router + tailnet control server, and the nodes cp1, exit1, worker1")
	l, err := lab.New(ctx, lab.Options{Nodes: []string{"cp1", "exit1", "worker1"}, ApproveExitRoutes: true})
	if err != nil {
		return err
	}
	defer func() {
		step("tearing everything down")
		if cerr := l.Close(); cerr != nil {
			err = errors.Join(err, cerr)
			return
		}
		say("nothing left behind")
	}()
	exit1, worker1 := l.Node("exit1"), l.Node("worker1")

	step("starting Kubernetes: control plane on cp1, a kubelet and containerd on every node")
	c, err := cluster.New(ctx, cluster.Options{
		Lab:    l,
		Images: []string{archive},
		NodeLabels: map[string]map[string]string{
			"exit1":   {cluster.RoleLabel: "exit"},
			"worker1": {cluster.RoleLabel: "worker"},
		},
		Logf: func(format string, args ...any) { say("    "+format, args...) },
	})
	if err != nil {
		return err
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		say("deleting the DaemonSet (each agent gets kubelet's SIGTERM), then stopping the kubelets and the control plane")
		err = errors.Join(err, c.DeleteAgents(dctx), c.Close())
	}()
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	kube := c.Client()
	nodes, err := kube.CoreV1().Nodes().List(wctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	say("$ kubectl get nodes -L %s -o wide", cluster.RoleLabel)
	say("%-8s %-6s %-14s %-18s %s", "NAME", "STATUS", "INTERNAL-IP", "POD-CIDR", "ROLE")
	for _, n := range nodes.Items {
		var ip string
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP {
				ip = a.Address
			}
		}
		role := n.Labels[cluster.RoleLabel]
		if role == "" {
			role = "(no label: the agent's --default-role, worker)"
		}
		say("%-8s %-6s %-14s %-18s %s", n.Name, "Ready", ip, n.Spec.PodCIDR, role)
	}

	step("a pod on worker1 (its own image, the CNI bridge, no masquerade), before the agent")
	if _, err := kube.CoreV1().Pods("default").Create(wctx, cluster.EgressPod("default", "egress", "worker1", l.EchoURL()), metav1.CreateOptions{}); err != nil {
		return err
	}
	pod, err := c.WaitPodRunning(wctx, "default", "egress")
	if err != nil {
		return err
	}
	if _, err := c.WaitEgress(wctx, "default", "egress", pod.Status.PodIP); err != nil {
		return err
	}
	say("pod %s -> internet seen as %s (its own address)", pod.Name, pod.Status.PodIP)

	step("kubectl apply -k deploy/daemonset, through an overlay with the image, imagePullPolicy: Never, the login server and the egress check")
	say("%s", indent(cluster.AgentKustomization(image, exit1.Addr(), l.ControlURL(), l.EchoURL())))
	start := time.Now()
	if err := c.DeployAgent(wctx, image, exit1.Addr()); err != nil {
		return err
	}
	agents, err := c.WaitAgentsReady(wctx, nil)
	if err != nil {
		return errors.Join(err, errors.New(c.AgentLogs(context.Background(), 30)))
	}
	say("every agent pod Ready through kubelet's startup and readiness probes in %v", time.Since(start).Round(time.Second))
	say("$ kubectl -n %s get pods -o wide", cluster.AgentNamespace)
	say("%-20s %-6s %-8s %-9s %-14s %s", "NAME", "READY", "STATUS", "RESTARTS", "IP", "NODE")
	names := make([]string, 0, len(agents))
	for n := range agents {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		p := agents[n]
		say("%-20s %-6s %-8s %-9d %-14s %s", p.Name, "1/1", p.Status.Phase, cluster.Restarts(p), p.Status.PodIP, n)
	}

	step("the pod's egress IP now")
	if _, err := c.WaitEgress(wctx, "default", "egress", exit1.Addr().String()); err != nil {
		return err
	}
	say("pod %s -> internet seen as %s: exit1's address (was %s)", pod.Name, exit1.Addr(), pod.Status.PodIP)

	step("what kubelet asks worker1's agent (GET /readyz?verbose on the node's port 9002)")
	body, err := worker1.HTTPGet(wctx, fmt.Sprintf("http://%s/readyz?verbose", netip.AddrPortFrom(worker1.Addr(), 9002)))
	if err != nil {
		return err
	}
	say("%s", indent(body))

	step("a few of worker1's metrics")
	metrics, err := worker1.HTTPGet(wctx, fmt.Sprintf("http://%s/metrics", netip.AddrPortFrom(worker1.Addr(), 9002)))
	if err != nil {
		return err
	}
	for _, line := range strings.Split(metrics, "\n") {
		for _, pre := range []string{"ts_node_agent_ready ", "ts_node_agent_egress_ip_info", "ts_node_agent_exit_node_info", "ts_node_agent_kill_switch"} {
			if strings.HasPrefix(line, pre) {
				say("    %s", line)
			}
		}
	}

	step("$ kubectl -n %s get events", cluster.AgentNamespace)
	events, err := kube.CoreV1().Events(cluster.AgentNamespace).List(wctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, e := range events.Items {
		if e.Source.Component == "ts-node-agent" || e.ReportingController == "ts-node-agent" {
			say("    %-7s %-22s pod/%-20s %s", e.Type, e.Reason, e.InvolvedObject.Name, e.Message)
		}
	}

	if once {
		say("\n--once: done")
		return nil
	}
	step("the cluster keeps running; Ctrl-C to tear it down. Its files and logs: %s", c.Dir())
	say("  the API server: %s (admin token in %s/tokens.csv)", c.APIServer().URL(), c.APIServer().Dir())
	say("  ip netns exec %s curl -s %s:9002/readyz?verbose", worker1.NSName(), worker1.Addr())
	say("  ip netns exec %s curl -s %s", worker1.NSName(), l.EchoURL())
	<-ctx.Done()
	return nil
}

func indent(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = "    " + l
	}
	return strings.Join(lines, "\n")
}
