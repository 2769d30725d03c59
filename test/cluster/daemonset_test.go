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
	"github.com/ts-node-agent/ts-node-agent/test/cluster"
	"github.com/ts-node-agent/ts-node-agent/test/lab"
)

const (
	agentNamespace = "ts-node-agent"
	roleLabel      = "ts-node-agent/role"
	agentSelector  = "app.kubernetes.io/name=ts-node-agent"
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

// labKustomization is the overlay of deploy/daemonset for the lab: what a
// user changes for their cluster and nothing else. The image is the one
// `make image` built, imported into every node (no registry, so never
// pulled); the control server is the lab's; the egress check asks the
// lab's echo service and expects the exit node's address.
func labKustomization(image string, l *lab.Lab, expected netip.Addr) string {
	repo, tag, _ := strings.Cut(image[strings.LastIndex(image, "/")+1:], ":")
	repo = image[:strings.LastIndex(image, "/")+1] + repo
	return fmt.Sprintf(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../../base
images:
  - name: ghcr.io/ts-node-agent/ts-node-agent
    newName: %s
    newTag: %s
patches:
  - patch: |-
      apiVersion: apps/v1
      kind: DaemonSet
      metadata:
        name: ts-node-agent
        namespace: ts-node-agent
      spec:
        template:
          spec:
            containers:
              - name: ts-node-agent
                imagePullPolicy: Never
                env:
                  - name: TS_NODE_AGENT_LOGIN_SERVER
                    value: %s
                  - name: TS_NODE_AGENT_EGRESS_CHECK_URL
                    value: %s
                  - name: TS_NODE_AGENT_EXPECTED_EGRESS_IP
                    value: %s
`, repo, tag, l.ControlURL(), l.EchoURL(), expected)
}

// TestDaemonSetOnRealCluster deploys deploy/daemonset, as `kubectl apply
// -k` does, on a real cluster of three lab nodes (control plane, exit
// node, worker; roles from Node labels) and follows what users meet: the
// agent's pods Ready through kubelet's probes, a workload pod leaving
// through the exit node, a relabel, a pod deleted and recreated by the
// DaemonSet with no direct egress meanwhile, and the agent's Events.
func TestDaemonSetOnRealCluster(t *testing.T) {
	image, archive := agentImage(t)
	l := lab.NewForTest(t, lab.Options{Nodes: []string{"cp1", "exit1", "worker1"}, ApproveExitRoutes: true})
	exit, worker := l.Node("exit1"), l.Node("worker1")
	c := cluster.Start(t, cluster.Options{
		Lab:    l,
		Images: []string{archive},
		NodeLabels: map[string]map[string]string{
			"exit1":   {roleLabel: "exit"},
			"worker1": {roleLabel: "worker"},
		},
	})
	t.Cleanup(func() {
		if t.Failed() {
			dumpAgentLogs(t, c)
		}
		deleteAgents(t, c)
	})
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

	objs, err := cluster.Render(labKustomization(image, l, exit.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Apply(ctx, objs); err != nil {
		t.Fatal(err)
	}
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: agentNamespace, Name: "ts-node-agent-auth"},
		StringData: map[string]string{"authkey": l.AuthKey()},
	}
	if _, err := kube.CoreV1().Secrets(agentNamespace).Create(ctx, secret, metav1.CreateOptions{}); err != nil {
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
	if after["worker1"].UID != pods["worker1"].UID || restarts(after["worker1"]) != 0 {
		t.Errorf("the relabels restarted the worker's agent: pod %s (restarts %d), was %s",
			after["worker1"].UID, restarts(after["worker1"]), pods["worker1"].UID)
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
	if err := kube.CoreV1().Pods(agentNamespace).Delete(ctx, old.Name, metav1.DeleteOptions{}); err != nil {
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
	events, err := kube.CoreV1().Events(agentNamespace).List(ctx, metav1.ListOptions{})
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
		t.Errorf("no RoleChanged Event from the agent in %s (got %q)", agentNamespace, reasons)
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

// waitAgentsReady waits until every node has an agent pod that is Ready
// and, for the nodes in replaced, is not the pod with that UID.
func waitAgentsReady(ctx context.Context, t *testing.T, c *cluster.Cluster, replaced map[string]types.UID) map[string]*corev1.Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
	defer cancel()
	var last string
	for {
		list, err := c.Client().CoreV1().Pods(agentNamespace).List(ctx, metav1.ListOptions{LabelSelector: agentSelector})
		if err == nil {
			ready := map[string]*corev1.Pod{}
			var waiting []string
			for i := range list.Items {
				p := &list.Items[i]
				if p.DeletionTimestamp == nil && podReady(p) && p.UID != replaced[p.Spec.NodeName] {
					ready[p.Spec.NodeName] = p
				}
			}
			for _, n := range c.Nodes() {
				if ready[n.Name()] == nil {
					waiting = append(waiting, n.Name())
				}
			}
			if len(waiting) == 0 {
				return ready
			}
			last = fmt.Sprintf("no Ready agent pod on %v (%d pods)", waiting, len(list.Items))
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			t.Fatalf("agents not Ready within 4 minutes: %s", last)
		case <-time.After(time.Second):
		}
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func restarts(p *corev1.Pod) int32 {
	var n int32
	for _, s := range p.Status.ContainerStatuses {
		n += s.RestartCount
	}
	return n
}

func relabel(ctx context.Context, t *testing.T, c *cluster.Cluster, node, role string) {
	t.Helper()
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, roleLabel, role)
	if _, err := c.Client().CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Logf("labelled %s %s=%s", node, roleLabel, role)
}

// dumpAgentLogs logs the tail of every agent pod's log (kubectl logs).
func dumpAgentLogs(t *testing.T, c *cluster.Cluster) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	list, err := c.Client().CoreV1().Pods(agentNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Logf("agent pods: %v", err)
		return
	}
	tailLines := int64(60)
	for _, p := range list.Items {
		b, err := c.Client().CoreV1().Pods(agentNamespace).GetLogs(p.Name, &corev1.PodLogOptions{TailLines: &tailLines}).DoRaw(ctx)
		t.Logf("logs of %s on %s (phase %s, restarts %d, err %v):\n%s", p.Name, p.Spec.NodeName, p.Status.Phase, restarts(&p), err, b)
	}
}

// deleteAgents deletes the DaemonSet and waits for its pods to be gone,
// so that each agent ends through kubelet's SIGTERM before the cluster
// stops.
func deleteAgents(t *testing.T, c *cluster.Cluster) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	kube := c.Client()
	bg := metav1.DeletePropagationBackground
	if err := kube.AppsV1().DaemonSets(agentNamespace).Delete(ctx, "ts-node-agent", metav1.DeleteOptions{PropagationPolicy: &bg}); err != nil {
		t.Logf("delete the DaemonSet: %v", err)
		return
	}
	for {
		list, err := kube.CoreV1().Pods(agentNamespace).List(ctx, metav1.ListOptions{LabelSelector: agentSelector})
		if err == nil && len(list.Items) == 0 {
			return
		}
		select {
		case <-ctx.Done():
			t.Logf("agent pods still there a minute after the DaemonSet's deletion")
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
}
