package main

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ts-node-agent/ts-node-agent/test/apiserver"
	"github.com/ts-node-agent/ts-node-agent/test/lab"
)

// footprintAPIServer starts a kube-apiserver (and its etcd) in the lab's
// router namespace, on the router address the nodes reach, with a Node
// object for every lab node (its LAN address as InternalIP, the pod CIDR
// the lab routes to it), so that the footprint's worker runs the agent's
// whole Kubernetes side: its own Node, all Nodes and the API server's
// endpoints for the bypass, Events. It returns a kubeconfig (admin) for
// the agent and a function that stops the server.
func (b *bench) footprintAPIServer(ctx context.Context) (kubeconfig string, stop func(), err error) {
	wan := b.lab.WAN()
	srv, err := apiserver.New(ctx, apiserver.Options{
		Logf:    b.logf,
		Wrap:    []string{"nsenter", "--net=/run/netns/" + wan.NSName(), "--"},
		Address: lab.RouterIP.String(),
		Dial:    wan.DialContext,
	})
	if err != nil {
		return "", nil, fmt.Errorf("footprint: kube-apiserver: %w", err)
	}
	nodes := srv.AdminClient().CoreV1().Nodes()
	for i, n := range b.lab.Nodes() {
		cidr := fmt.Sprintf("198.18.%d.0/24", 128+i) // lab.Node.AddPod's
		created, err := nodes.Create(ctx, &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: n.Name(), Labels: map[string]string{"kubernetes.io/os": "linux"}},
			Spec:       corev1.NodeSpec{PodCIDR: cidr, PodCIDRs: []string{cidr}},
		}, metav1.CreateOptions{})
		if err == nil {
			created.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.Addr().String()}}
			created.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}
			_, err = nodes.UpdateStatus(ctx, created, metav1.UpdateOptions{})
		}
		if err != nil {
			srv.Close()
			return "", nil, fmt.Errorf("footprint: Node %s: %w", n.Name(), err)
		}
	}
	return srv.Kubeconfig(srv.AdminToken()), func() {
		if err := srv.Close(); err != nil {
			b.logf("footprint: stopping kube-apiserver: %v", err)
		}
	}, nil
}
