package cluster_test

import (
	"context"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ts-node-agent/ts-node-agent/test/cluster"
	"github.com/ts-node-agent/ts-node-agent/test/lab"
)

// TestPodEgressWithoutAgent: a pod the scheduler puts on a node leaves
// with its own pod address (the lab's routed pod network), the baseline
// that the agent's tests change.
func TestPodEgressWithoutAgent(t *testing.T) {
	l := lab.NewForTest(t, lab.Options{Nodes: []string{"cp1", "worker1"}})
	c := cluster.Start(t, cluster.Options{Lab: l})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pod := cluster.EgressPod("default", "egress", "worker1", l.EchoURL())
	if _, err := c.Client().CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	p, err := c.WaitPodRunning(ctx, "default", "egress")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitEgress(ctx, "default", "egress", p.Status.PodIP); err != nil {
		t.Fatal(err)
	}
}
