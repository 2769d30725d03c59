package deploy_test

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/ts-node-agent/ts-node-agent/test/apiserver"
)

// resources maps the kinds the DaemonSet manifests render to their API
// resources (the monitoring objects need the Prometheus Operator's CRDs,
// which the test API server does not have).
var resources = map[string]schema.GroupVersionResource{
	"v1 Namespace":      {Version: "v1", Resource: "namespaces"},
	"v1 ServiceAccount": {Version: "v1", Resource: "serviceaccounts"},
	"rbac.authorization.k8s.io/v1 ClusterRole":        {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"},
	"rbac.authorization.k8s.io/v1 ClusterRoleBinding": {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterrolebindings"},
	"rbac.authorization.k8s.io/v1 Role":               {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "roles"},
	"rbac.authorization.k8s.io/v1 RoleBinding":        {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "rolebindings"},
	"apps/v1 DaemonSet":                               {Group: "apps", Version: "v1", Resource: "daemonsets"},
}

// apply server-side applies every rendered object as the admin, with
// strict field validation; dryRun applies nothing.
func apply(ctx context.Context, t *testing.T, dyn dynamic.Interface, o objects, dryRun bool) {
	t.Helper()
	opts := metav1.PatchOptions{FieldManager: "ts-node-agent-deploy-test", Force: ptr.To(true), FieldValidation: "Strict"}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	for _, r := range o.raw {
		gvr, ok := resources[r.apiVersion+" "+r.kind]
		if !ok {
			t.Errorf("%s %s: no API resource known to the test", r.apiVersion, r.kind)
			continue
		}
		var ri dynamic.ResourceInterface = dyn.Resource(gvr)
		if r.namespace != "" {
			ri = dyn.Resource(gvr).Namespace(r.namespace)
		}
		if _, err := ri.Patch(ctx, r.name, types.ApplyPatchType, r.json, opts); err != nil {
			t.Errorf("server-side apply (dry run %v) of %s %s/%s: %v", dryRun, r.kind, r.namespace, r.name, err)
		}
	}
}

// TestManifestsOnRealAPIServer applies the base to a real kube-apiserver
// (server-side apply; the overlays as a dry run), then acts as the
// manifests' ServiceAccount with a token from the TokenRequest API: every
// call the agent makes succeeds, anything beyond it is forbidden.
func TestManifestsOnRealAPIServer(t *testing.T) {
	s := apiserver.Start(t, apiserver.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dyn, err := dynamic.NewForConfig(s.AdminConfig())
	if err != nil {
		t.Fatal(err)
	}
	apply(ctx, t, dyn, render(t, "deploy/daemonset/base"), false)
	for _, v := range daemonSetVariants {
		t.Run("dry-run "+v.name, func(t *testing.T) {
			o := render(t, v.dir)
			apply(ctx, t, dyn, o, true)
			// The DaemonSet controller's pod: Pod Security (enforce), the
			// priority class, privileged and hostNetwork are checked at pod
			// admission, not on the DaemonSet.
			ds := o.DaemonSets[0]
			pod := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: "ts-node-agent-x7k2q", Namespace: ds.Namespace, Labels: ds.Spec.Template.Labels},
				Spec:       *ds.Spec.Template.Spec.DeepCopy(),
			}
			pod.Spec.NodeName = "node-1"
			_, err := s.AdminClient().CoreV1().Pods(ds.Namespace).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
			if err != nil {
				t.Errorf("the DaemonSet's pod is not admitted: %v", err)
			}
		})
	}
	if t.Failed() {
		return
	}

	// What the agent reads: its Node, the API server's EndpointSlice (the
	// test server runs no endpoint reconciler: create it as kube-apiserver
	// would), and a Secret it must not be able to read.
	admin := s.AdminClient()
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	_, err = admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name: "node-1", Labels: map[string]string{"ts-node-agent/role": "exit"},
	}}, metav1.CreateOptions{})
	must("create Node", err)
	_, err = admin.DiscoveryV1().EndpointSlices("default").Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "kubernetes", Labels: map[string]string{discoveryv1.LabelServiceName: "kubernetes"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"192.0.2.1"}}},
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("https"), Port: ptr.To[int32](6443), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}, metav1.CreateOptions{})
	must("create EndpointSlice default/kubernetes", err)
	_, err = admin.CoreV1().Secrets(agentNamespace).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: authSecretName},
		StringData: map[string]string{authSecretKey: "tskey-auth-test"},
	}, metav1.CreateOptions{})
	must("create Secret", err)

	token, err := s.ServiceAccountToken(ctx, agentNamespace, agentName)
	must("ServiceAccount token", err)
	agent := s.Client(token)
	for _, c := range agentCalls(ctx, agent) {
		err := c.call()
		switch {
		case c.allowed && err != nil:
			t.Errorf("the agent needs to %s, but: %v", c.what, err)
		case !c.allowed && !apierrors.IsForbidden(err):
			t.Errorf("the agent can %s (err=%v): not least privilege", c.what, err)
		}
	}
}

// notFoundOK: a get that was allowed but found nothing is allowed.
func notFoundOK(err error) error {
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

type apiCall struct {
	what    string
	allowed bool
	call    func() error
}

// agentCalls are the calls the agent makes (allowed) and a sample of what
// it must not be able to do.
func agentCalls(ctx context.Context, c kubernetes.Interface) []apiCall {
	nodes := c.CoreV1().Nodes()
	slices := c.DiscoveryV1().EndpointSlices("default")
	byName := func(name string) metav1.ListOptions {
		return metav1.ListOptions{FieldSelector: "metadata.name=" + name}
	}
	watch := func(w interface{ Stop() }, err error) error {
		if err == nil {
			w.Stop()
		}
		return err
	}
	event := func(ns string) *corev1.Event {
		return &corev1.Event{
			ObjectMeta:     metav1.ObjectMeta{GenerateName: "ts-node-agent-", Namespace: ns},
			InvolvedObject: corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: "ts-node-agent-x7k2q", APIVersion: "v1"},
			Reason:         "RoleChanged",
			Message:        "role exit",
			Type:           corev1.EventTypeNormal,
			Source:         corev1.EventSource{Component: "ts-node-agent", Host: "node-1"},
		}
	}
	return []apiCall{
		// The role watch: its own Node, by name (list, then watch).
		{"get its Node", true, func() error { _, err := nodes.Get(ctx, "node-1", metav1.GetOptions{}); return err }},
		{"list its Node by name", true, func() error { _, err := nodes.List(ctx, byName("node-1")); return err }},
		{"watch its Node by name", true, func() error { return watch(nodes.Watch(ctx, byName("node-1"))) }},
		// The bypass inputs: every Node's addresses.
		{"list all Nodes", true, func() error { _, err := nodes.List(ctx, metav1.ListOptions{}); return err }},
		{"watch all Nodes", true, func() error { return watch(nodes.Watch(ctx, metav1.ListOptions{})) }},
		// The API server endpoints for the bypass.
		{"get EndpointSlice default/kubernetes", true, func() error { _, err := slices.Get(ctx, "kubernetes", metav1.GetOptions{}); return err }},
		{"list EndpointSlice default/kubernetes by name", true, func() error { _, err := slices.List(ctx, byName("kubernetes")); return err }},
		{"watch EndpointSlice default/kubernetes by name", true, func() error { return watch(slices.Watch(ctx, byName("kubernetes"))) }},
		// The Service ranges for the bypass.
		{"list ServiceCIDRs", true, func() error { _, err := c.NetworkingV1().ServiceCIDRs().List(ctx, metav1.ListOptions{}); return err }},
		{"watch ServiceCIDRs", true, func() error { return watch(c.NetworkingV1().ServiceCIDRs().Watch(ctx, metav1.ListOptions{})) }},
		// Events on its Pod.
		{"create an Event in its namespace", true, func() error {
			_, err := c.CoreV1().Events(agentNamespace).Create(ctx, event(agentNamespace), metav1.CreateOptions{})
			return err
		}},

		// The uninstall path: its Pod and its DaemonSet.
		{"get its Pod", true, func() error {
			_, err := c.CoreV1().Pods(agentNamespace).Get(ctx, "ts-node-agent-x7k2q", metav1.GetOptions{})
			return notFoundOK(err)
		}},
		{"get its DaemonSet", true, func() error {
			_, err := c.AppsV1().DaemonSets(agentNamespace).Get(ctx, agentName, metav1.GetOptions{})
			return notFoundOK(err)
		}},
		{"get a Pod in another namespace", false, func() error {
			_, err := c.CoreV1().Pods("default").Get(ctx, "x", metav1.GetOptions{})
			return err
		}},
		{"delete its DaemonSet", false, func() error {
			return c.AppsV1().DaemonSets(agentNamespace).Delete(ctx, agentName, metav1.DeleteOptions{})
		}},
		{"read the auth key Secret", false, func() error {
			_, err := c.CoreV1().Secrets(agentNamespace).Get(ctx, authSecretName, metav1.GetOptions{})
			return err
		}},
		{"list Secrets", false, func() error { _, err := c.CoreV1().Secrets("").List(ctx, metav1.ListOptions{}); return err }},
		{"relabel a Node", false, func() error {
			_, err := nodes.Patch(ctx, "node-1", types.MergePatchType, []byte(`{"metadata":{"labels":{"ts-node-agent/role":"worker"}}}`), metav1.PatchOptions{})
			return err
		}},
		{"delete a Node", false, func() error { return nodes.Delete(ctx, "node-1", metav1.DeleteOptions{}) }},
		{"update Node status", false, func() error {
			_, err := nodes.Patch(ctx, "node-1", types.MergePatchType, []byte(`{"status":{"phase":"Running"}}`), metav1.PatchOptions{}, "status")
			return err
		}},
		{"list Pods", false, func() error { _, err := c.CoreV1().Pods("").List(ctx, metav1.ListOptions{}); return err }},
		{"list every EndpointSlice of default", false, func() error { _, err := slices.List(ctx, metav1.ListOptions{}); return err }},
		{"get another EndpointSlice", false, func() error { _, err := slices.Get(ctx, "other", metav1.GetOptions{}); return err }},
		{"list EndpointSlices cluster-wide", false, func() error {
			_, err := c.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{})
			return err
		}},
		{"change the API server's EndpointSlice", false, func() error {
			return c.DiscoveryV1().EndpointSlices("default").Delete(ctx, "kubernetes", metav1.DeleteOptions{})
		}},
		{"create an Event in another namespace", false, func() error {
			_, err := c.CoreV1().Events("default").Create(ctx, event("default"), metav1.CreateOptions{})
			return err
		}},
		{"read Events", false, func() error { _, err := c.CoreV1().Events(agentNamespace).List(ctx, metav1.ListOptions{}); return err }},
		{"change its own RBAC", false, func() error {
			return c.RbacV1().ClusterRoles().Delete(ctx, "ts-node-agent", metav1.DeleteOptions{})
		}},
		{"read ServiceAccounts", false, func() error {
			_, err := c.CoreV1().ServiceAccounts(agentNamespace).Get(ctx, agentName, metav1.GetOptions{})
			return err
		}},
	}
}
