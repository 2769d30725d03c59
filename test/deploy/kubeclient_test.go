package deploy

import (
	"context"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"

	"github.com/ts-node-agent/ts-node-agent/pkg/kube"
	"github.com/ts-node-agent/ts-node-agent/test/apiserver"
)

// TestAgentClientAgainstAPIServer runs the agent's own Kubernetes client
// (pkg/kube: REST clients over a scheme of three groups, the metadata
// client for its Pod and DaemonSet) against a real kube-apiserver: every
// verb it uses, in protobuf, and the uninstall verdicts it reads from
// PartialObjectMetadata. The fake Clientset of the unit tests cannot tell
// whether the requests are right.
func TestAgentClientAgainstAPIServer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s := apiserver.Start(t, apiserver.Options{})
	admin := s.AdminClient()
	c, err := kube.NewClientForConfig(s.AdminConfig())
	if err != nil {
		t.Fatal(err)
	}

	// Nodes: list, then a watch that sees a new Node.
	if _, err := admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	nodes, err := c.Nodes().List(ctx, metav1.ListOptions{})
	if err != nil || len(nodes.Items) != 1 || nodes.Items[0].Name != "node-a" {
		t.Fatalf("list Nodes: %v, %+v", err, nodes)
	}
	w, err := c.Nodes().Watch(ctx, metav1.ListOptions{ResourceVersion: nodes.ResourceVersion})
	if err != nil {
		t.Fatalf("watch Nodes: %v", err)
	}
	defer w.Stop()
	if _, err := admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-b"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-w.ResultChan():
		n, ok := ev.Object.(*corev1.Node)
		if ev.Type != watch.Added || !ok || n.Name != "node-b" {
			t.Fatalf("watch Nodes: got %s %T %+v, want node-b added", ev.Type, ev.Object, ev.Object)
		}
	case <-ctx.Done():
		t.Fatal("watch Nodes: no event for node-b")
	}

	// An EndpointSlice like the API server's (the harness runs no
	// controller that would write it), and the ServiceCIDRs.
	if _, err := admin.DiscoveryV1().EndpointSlices("default").Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "kubernetes", Labels: map[string]string{discoveryv1.LabelServiceName: "kubernetes"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"192.0.2.1"}}},
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("https"), Port: ptr.To[int32](6443), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	slices, err := c.EndpointSlices("default").List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=kubernetes"})
	if err != nil || len(slices.Items) != 1 || len(slices.Items[0].Endpoints) != 1 || slices.Items[0].Endpoints[0].Addresses[0] != "192.0.2.1" {
		t.Fatalf("list the EndpointSlice default/kubernetes: %v, %+v", err, slices)
	}
	if _, err := c.ServiceCIDRs().List(ctx, metav1.ListOptions{}); err != nil {
		t.Fatalf("list ServiceCIDRs: %v", err)
	}

	// Events.
	ev := &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{GenerateName: "ts-node-agent-", Namespace: "default"},
		InvolvedObject: corev1.ObjectReference{Kind: "Node", Name: "node-a"},
		Reason:         "Test", Message: "from the agent's client", Type: corev1.EventTypeNormal,
		Source: corev1.EventSource{Component: "ts-node-agent"}, Count: 1,
		FirstTimestamp: metav1.Now(), LastTimestamp: metav1.Now(),
	}
	if got, err := c.Events("default").Create(ctx, ev, metav1.CreateOptions{}); err != nil || got.Name == "" {
		t.Fatalf("create an Event: %v, %+v", err, got)
	}

	// Pod and DaemonSet metadata, and the uninstall verdicts. (No
	// controller creates the default ServiceAccount the Pod needs.)
	if _, err := admin.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ds, err := admin.AppsV1().DaemonSets("default").Create(ctx, &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "ts-node-agent"},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "ts-node-agent"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "ts-node-agent"}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "agent", Image: "ts-node-agent"}}},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "ts-node-agent-x7k2q", OwnerReferences: []metav1.OwnerReference{{
			APIVersion: "apps/v1", Kind: "DaemonSet", Name: ds.Name, UID: ds.UID, Controller: ptr.To(true),
		}}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "agent", Image: "ts-node-agent"}}},
	}
	if _, err := admin.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if m, err := c.Pods("default").Get(ctx, pod.Name, metav1.GetOptions{}); err != nil || m.Name != pod.Name || len(m.OwnerReferences) != 1 {
		t.Fatalf("the Pod's metadata: %v, %+v", err, m)
	}
	if m, err := c.DaemonSets("default").Get(ctx, ds.Name, metav1.GetOptions{}); err != nil || m.UID != ds.UID {
		t.Fatalf("the DaemonSet's metadata: %v, %+v", err, m)
	}
	if gone, why, err := kube.Uninstalling(ctx, c, "default", pod.Name); err != nil || gone || !strings.Contains(why, "is in place") {
		t.Fatalf("with the DaemonSet in place: uninstalling=%v (%s), %v", gone, why, err)
	}
	if err := admin.AppsV1().DaemonSets("default").Delete(ctx, ds.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if gone, why, err := kube.Uninstalling(ctx, c, "default", pod.Name); err != nil || !gone || !strings.Contains(why, "was deleted") {
		t.Fatalf("after deleting the DaemonSet: uninstalling=%v (%s), %v", gone, why, err)
	}
}
