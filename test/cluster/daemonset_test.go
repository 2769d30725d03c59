package cluster_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/ts-node-agent/ts-node-agent/internal/testenv"
	"github.com/ts-node-agent/ts-node-agent/pkg/hostnet"
	"github.com/ts-node-agent/ts-node-agent/test/cluster"
	"github.com/ts-node-agent/ts-node-agent/test/lab"
)

// agentImage is the image `make image` built (make test passes its name
// and OCI archive).
func agentImage(t *testing.T) (name, archive string) {
	name, archive = os.Getenv("TSNA_TEST_IMAGE"), os.Getenv("TSNA_TEST_IMAGE_ARCHIVE")
	if name == "" || archive == "" {
		testenv.SkipOrFail(t, "TSNA_TEST_IMAGE and TSNA_TEST_IMAGE_ARCHIVE are not set: run through `make test`, which builds the image (make image-oci)")
	}
	if _, err := os.Stat(archive); err != nil {
		testenv.SkipOrFail(t, "the image archive: %v (make image-oci)", err)
	}
	return name, archive
}

// agentCluster starts the lab cp1, exit1 and worker1 (exit routes
// approved) and a real cluster on it with the agent's image imported and
// the role labels exit1=exit, worker1=worker; externalCP makes the
// control plane external (see cluster.Options.ExternalControlPlane). When
// the test ends it logs the agents' logs (if it failed) and deletes the
// DaemonSet, so that every agent gets kubelet's SIGTERM.
func agentCluster(t *testing.T, externalCP bool) (image string, l *lab.Lab, c *cluster.Cluster) {
	t.Helper()
	image, archive := agentImage(t)
	l = lab.NewForTest(t, lab.Options{Nodes: []string{"cp1", "exit1", "worker1"}, ApproveExitRoutes: true})
	c = cluster.Start(t, cluster.Options{
		Lab:                  l,
		ExternalControlPlane: externalCP,
		Images:               []string{archive},
		NodeLabels: map[string]map[string]string{
			"exit1":   {cluster.RoleLabel: "exit"},
			"worker1": {cluster.RoleLabel: "worker"},
		},
	})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if t.Failed() {
			t.Log(c.AgentLogs(ctx, 60))
		}
		if err := c.DeleteAgents(ctx); err != nil {
			t.Log(err)
		}
	})
	return image, l, c
}

// TestDaemonSetOnRealCluster deploys deploy/daemonset, as `kubectl apply
// -k` does, on a real cluster of three lab nodes (control plane, exit
// node, worker; roles from Node labels) and follows what users meet: the
// agent's pods Ready through kubelet's probes, a workload pod leaving
// through the exit node, a relabel, a pod deleted and recreated by the
// DaemonSet with no direct egress meanwhile, and the agent's Events.
func TestDaemonSetOnRealCluster(t *testing.T) {
	image, l, c := agentCluster(t, false)
	exit, worker := l.Node("exit1"), l.Node("worker1")
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	kube := c.Client()

	// A workload on the worker, before the agent: it leaves with its own
	// pod address.
	if _, err := kube.CoreV1().Pods("default").Create(ctx, cluster.EgressPod("default", "egress", "worker1", l.EchoURL()), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	egressPod, err := c.WaitPodRunning(ctx, "default", "egress")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitEgress(ctx, "default", "egress", egressPod.Status.PodIP); err != nil {
		t.Fatal(err)
	}
	t.Logf("before the agent: the pod %s on worker1 leaves with its own address", egressPod.Status.PodIP)

	if err := c.DeployAgent(ctx, image, exit.Addr()); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	pods := waitAgentsReady(ctx, t, c, nil)
	t.Logf("every agent pod Ready through kubelet's probes in %v", time.Since(start).Round(time.Second))

	if _, err := c.WaitEgress(ctx, "default", "egress", exit.Addr().String()); err != nil {
		t.Fatal(err)
	}
	t.Logf("the pod on worker1 leaves through exit1 (%s)", exit.Addr())

	// kubelet ran the manifests' three probes, and they passed (liveness
	// starts after the startup probe's success: wait for its first round).
	waitProbesCounted(ctx, t, c, pods["worker1"])

	// A relabel moves the role at run time: no pod restarts.
	relabel(ctx, t, c, "worker1", "none")
	if _, err := c.WaitEgress(ctx, "default", "egress", egressPod.Status.PodIP); err != nil {
		t.Fatal(err)
	}
	relabel(ctx, t, c, "worker1", "worker")
	if _, err := c.WaitEgress(ctx, "default", "egress", exit.Addr().String()); err != nil {
		t.Fatal(err)
	}
	after := waitAgentsReady(ctx, t, c, nil)
	if after["worker1"].UID != pods["worker1"].UID || cluster.Restarts(after["worker1"]) != 0 {
		t.Errorf("the relabels restarted the worker's agent: pod %s (restarts %d), was %s",
			after["worker1"].UID, cluster.Restarts(after["worker1"]), pods["worker1"].UID)
	}
	t.Log("relabel worker→none→worker: egress direct, then through exit1 again, with the same agent pod")

	// Delete the worker's agent pod: kubelet's SIGTERM, the grace period,
	// the DaemonSet's new pod. The workload and the host keep sending
	// meanwhile; the lab's router counts what leaves the worker directly.
	watch, err := l.WatchDirect(netip.PrefixFrom(worker.Addr(), 32), worker.PodCIDR())
	if err != nil {
		t.Fatal(err)
	}
	spray := worker.Spray(ctx, netip.AddrPortFrom(l.InternetIP(), 9), 20*time.Millisecond)
	old := pods["worker1"]
	if err := kube.CoreV1().Pods(cluster.AgentNamespace).Delete(ctx, old.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	recreated := waitAgentsReady(ctx, t, c, map[string]types.UID{"worker1": old.UID})
	if _, err := c.WaitEgress(ctx, "default", "egress", exit.Addr().String()); err != nil {
		t.Fatal(err)
	}
	sent := spray()
	direct, err := watch.Count()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("agent pod %s deleted, %s Ready in %v; %d packets sent by the worker meanwhile, %d left it directly",
		old.Name, recreated["worker1"].Name, time.Since(start).Round(time.Second), sent, direct)
	if sent == 0 {
		t.Error("the worker sent nothing during the restart: the witness proves nothing")
	}
	if direct != 0 {
		t.Errorf("%d packets left the worker directly while its agent pod was replaced", direct)
	}

	// The agent's Events, as `kubectl -n ts-node-agent get events` shows.
	events, err := kube.CoreV1().Events(cluster.AgentNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var reasons []string
	for _, e := range events.Items {
		if e.Source.Component == "ts-node-agent" || e.ReportingController == "ts-node-agent" {
			reasons = append(reasons, e.Reason+" "+e.InvolvedObject.Name)
		}
	}
	t.Logf("the agent's Events: %q", reasons)
	if !slices.ContainsFunc(reasons, func(r string) bool { return strings.HasPrefix(r, "RoleChanged ") }) {
		t.Errorf("no RoleChanged Event from the agent in %s (got %q)", cluster.AgentNamespace, reasons)
	}
}

// waitProbesCounted waits until kubelet's /metrics/probes on the pod's
// node counts a successful startup, readiness and liveness probe of it.
func waitProbesCounted(ctx context.Context, t *testing.T, c *cluster.Cluster, pod *corev1.Pod) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var missing []string
	for {
		probes, err := c.Client().CoreV1().RESTClient().Get().AbsPath("/api/v1/nodes", pod.Spec.NodeName, "proxy/metrics/probes").DoRaw(ctx)
		missing = nil
		for _, probe := range []string{"Startup", "Readiness", "Liveness"} {
			want := fmt.Sprintf(`container="ts-node-agent",namespace="ts-node-agent",pod=%q,pod_uid=%q,probe_type=%q,result="successful"`,
				pod.Name, pod.UID, probe)
			if err != nil || !strings.Contains(string(probes), want) {
				missing = append(missing, probe)
			}
		}
		if len(missing) == 0 {
			t.Logf("kubelet on %s counted successful startup, readiness and liveness probes of %s", pod.Spec.NodeName, pod.Name)
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("kubelet's /metrics/probes on %s: no successful %v probe of %s (err %v)", pod.Spec.NodeName, missing, pod.Name, err)
		case <-time.After(2 * time.Second):
		}
	}
}

// waitAgentsReady is Cluster.WaitAgentsReady within 4 minutes.
func waitAgentsReady(ctx context.Context, t *testing.T, c *cluster.Cluster, replaced map[string]types.UID) map[string]*corev1.Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
	defer cancel()
	pods, err := c.WaitAgentsReady(ctx, replaced)
	if err != nil {
		t.Fatal(err)
	}
	return pods
}

func relabel(ctx context.Context, t *testing.T, c *cluster.Cluster, node, role string) {
	t.Helper()
	if err := c.SetRole(ctx, node, role); err != nil {
		t.Fatal(err)
	}
	t.Logf("labelled %s %s=%s", node, cluster.RoleLabel, role)
}

// TestExternalControlPlaneBypassed: with an API server that is not a Node
// and not on the nodes' LAN (a managed control plane, a load balancer's
// address), the worker still reaches it around the exit node: the agent
// bypasses the endpoints of the EndpointSlice default/kubernetes, not only
// the Service's ClusterIP, whose DNAT target would otherwise go into the
// tailnet (and the commit check would confirm through the exit node).
func TestExternalControlPlaneBypassed(t *testing.T) {
	image, l, c := agentCluster(t, true)
	exit, worker := l.Node("exit1"), l.Node("worker1")
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	if len(c.Nodes()) != 2 {
		t.Fatalf("%d Nodes, want exit1 and worker1 only", len(c.Nodes()))
	}
	if err := c.DeployAgent(ctx, image, exit.Addr()); err != nil {
		t.Fatal(err)
	}
	waitAgentsReady(ctx, t, c, nil)
	// The worker's kernel, once the exit node is in use (the internet is
	// routed into the tailnet): the API server's real endpoint (from the
	// EndpointSlice: not a Node, not on the LAN), the Service range (from
	// the ServiceCIDR object) and the exit node's pod CIDR (another
	// Node's) are bypass destinations, so that packets to them (kubelet's)
	// get the bypass mark, with which they take the main table.
	mark := fmt.Sprintf("%#x", hostnet.DefaultBypassMark.Value)
	deadline := time.Now().Add(time.Minute)
	for {
		inet, err1 := worker.Exec(ctx, "ip", "-4", "route", "get", l.InternetIP().String())
		api, err2 := worker.Exec(ctx, "ip", "-4", "route", "get", c.APIServerAddr().String(), "mark", mark)
		viaExit := err1 == nil && strings.Contains(string(inet), " dev tailscale0 ")
		bypassed := err2 == nil && strings.Contains(string(api), " dev eth0 ")
		// The set's elements as nft lists them (one per prefix: the
		// agent writes prefixes, adjacent ones included; `nft get
		// element` cannot find an interval that touches the next one).
		set, _ := worker.Exec(ctx, "nft", "list", "set", "inet", hostnet.BypassNftTable, hostnet.BypassSetIPv4)
		elems := strings.FieldsFunc(string(set), func(r rune) bool { return r == ' ' || r == ',' || r == '\n' || r == '\t' || r == '{' || r == '}' })
		for _, p := range []string{c.APIServerAddr().String(), cluster.ServiceCIDR.String(), exit.PodCIDR().String()} {
			bypassed = bypassed && slices.Contains(elems, p)
		}
		if viaExit && bypassed {
			t52, _ := worker.Exec(ctx, "ip", "-4", "route", "show", "table", "52")
			t.Logf("worker1's bypass destinations:\n%s\ntable 52:\n%s", set, t52)
			t.Logf("worker1 -> internet: %s", strings.TrimSpace(string(inet)))
			t.Logf("worker1 -> API server %s, with the bypass mark: %s", c.APIServerAddr(), strings.TrimSpace(string(api)))
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("worker1's routes: to the internet %q (want dev tailscale0), to the API server %s with the bypass mark %q (want dev eth0); bypass destinations (want %s, %s and %s):\n%s",
				strings.TrimSpace(string(inet)), c.APIServerAddr(), strings.TrimSpace(string(api)), c.APIServerAddr(), cluster.ServiceCIDR, exit.PodCIDR(), set)
		}
		time.Sleep(time.Second)
	}
}
