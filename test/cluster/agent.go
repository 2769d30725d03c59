package cluster

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// The agent's objects as deploy/daemonset names them.
const (
	AgentNamespace = "ts-node-agent"
	AgentDaemonSet = "ts-node-agent"
	AgentSelector  = "app.kubernetes.io/name=ts-node-agent"
	RoleLabel      = "ts-node-agent/role"
)

// AgentKustomization is the overlay of deploy/daemonset for the lab: what
// a user changes for their cluster and nothing else. The image is the one
// `make image` built, imported into every node (no registry, so never
// pulled); the control server is the lab's; the egress check asks the
// lab's echo service and expects the exit node's address.
func AgentKustomization(image string, expected netip.Addr, loginServer, egressURL string) string {
	slash := strings.LastIndex(image, "/")
	repo, tag, _ := strings.Cut(image[slash+1:], ":")
	return fmt.Sprintf(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../../base
images:
  - name: ghcr.io/ts-node-agent/ts-node-agent
    newName: %q
    newTag: %q
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
                    value: %q
                  - name: TS_NODE_AGENT_EGRESS_CHECK_URL
                    value: %q
                  - name: TS_NODE_AGENT_EXPECTED_EGRESS_IP
                    value: %q
`, image[:slash+1]+repo, tag, loginServer, egressURL, expected.String())
}

// DeployAgent applies AgentKustomization (as `kubectl apply -k` would)
// and creates the auth key Secret with the lab's key.
func (c *Cluster) DeployAgent(ctx context.Context, image string, expected netip.Addr) error {
	objs, err := Render(AgentKustomization(image, expected, c.opts.Lab.ControlURL(), c.opts.Lab.EchoURL()))
	if err != nil {
		return err
	}
	if err := c.Apply(ctx, objs); err != nil {
		return err
	}
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: AgentNamespace, Name: "ts-node-agent-auth"},
		StringData: map[string]string{"authkey": c.opts.Lab.AuthKey()},
	}
	if _, err := c.Client().CoreV1().Secrets(AgentNamespace).Create(ctx, secret, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("cluster: the auth key Secret: %w", err)
	}
	return nil
}

// WaitAgentsReady waits until every node has an agent pod that is Ready
// (kubelet's readiness probe passed) and, for the nodes in replaced, is
// not the pod with that UID; it returns them by node.
func (c *Cluster) WaitAgentsReady(ctx context.Context, replaced map[string]types.UID) (map[string]*corev1.Pod, error) {
	var last string
	for {
		list, err := c.Client().CoreV1().Pods(AgentNamespace).List(ctx, metav1.ListOptions{LabelSelector: AgentSelector})
		if err == nil {
			ready := map[string]*corev1.Pod{}
			for i := range list.Items {
				p := &list.Items[i]
				if p.DeletionTimestamp == nil && PodReady(p) && p.UID != replaced[p.Spec.NodeName] {
					ready[p.Spec.NodeName] = p
				}
			}
			var waiting []string
			for _, n := range c.nodes {
				if ready[n.Name()] == nil {
					waiting = append(waiting, n.Name())
				}
			}
			if len(waiting) == 0 {
				return ready, nil
			}
			last = fmt.Sprintf("no Ready agent pod on %v (%d pods)", waiting, len(list.Items))
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("cluster: agents not Ready: %s", last)
		case <-time.After(time.Second):
		}
	}
}

// PodReady reports the pod's Ready condition.
func PodReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// Restarts is the sum of the restart counts of the pod's containers.
func Restarts(p *corev1.Pod) int32 {
	var n int32
	for _, s := range p.Status.ContainerStatuses {
		n += s.RestartCount
	}
	return n
}

// SetRole sets the node's role label.
func (c *Cluster) SetRole(ctx context.Context, node, role string) error {
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, RoleLabel, role)
	_, err := c.Client().CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
	return err
}

// AgentLogs returns the last lines of every agent pod's log (kubectl logs).
func (c *Cluster) AgentLogs(ctx context.Context, lines int64) string {
	list, err := c.Client().CoreV1().Pods(AgentNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Sprintf("agent pods: %v", err)
	}
	var b strings.Builder
	for _, p := range list.Items {
		out, err := c.Client().CoreV1().Pods(AgentNamespace).GetLogs(p.Name, &corev1.PodLogOptions{TailLines: &lines}).DoRaw(ctx)
		fmt.Fprintf(&b, "logs of %s on %s (phase %s, restarts %d, err %v):\n%s\n", p.Name, p.Spec.NodeName, p.Status.Phase, Restarts(&p), err, out)
	}
	return b.String()
}

// DeleteAgents deletes the DaemonSet and waits until its pods are gone,
// so that each agent ends through kubelet's SIGTERM and its grace period.
func (c *Cluster) DeleteAgents(ctx context.Context) error {
	bg := metav1.DeletePropagationBackground
	err := c.Client().AppsV1().DaemonSets(AgentNamespace).Delete(ctx, AgentDaemonSet, metav1.DeleteOptions{PropagationPolicy: &bg})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("cluster: delete the DaemonSet: %w", err)
	}
	for {
		list, err := c.Client().CoreV1().Pods(AgentNamespace).List(ctx, metav1.ListOptions{LabelSelector: AgentSelector})
		if err == nil && len(list.Items) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster: agent pods still there after the DaemonSet's deletion")
		case <-time.After(500 * time.Millisecond):
		}
	}
}
