package apiserver

import (
	"context"
	"slices"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

func TestKubernetesVersion(t *testing.T) {
	for _, tc := range []struct{ gomod, want string }{
		{"module x\n\nrequire k8s.io/kubernetes v1.37.2\n", "v1.37.2"},
		{"module x\n\nrequire (\n\tk8s.io/kubernetes v1.37.2\n\tk8s.io/kubernetes-x v9\n)\n", "v1.37.2"},
		{"module x\n\nreplace (\n\tk8s.io/api => k8s.io/api v0.37.2\n)\n", ""},
		{"module x\nrequire k8s.io/kubernetes/foo v1\n", ""},
	} {
		if got := kubernetesVersion([]byte(tc.gomod)); got != tc.want {
			t.Errorf("kubernetesVersion(%q) = %q, want %q", tc.gomod, got, tc.want)
		}
	}
}

func TestRealAPIServer(t *testing.T) {
	start := time.Now()
	s := Start(t, Options{Users: []User{{Name: "alice", Groups: []string{"team-a"}}}})
	t.Logf("etcd + kube-apiserver started in %v at %s", time.Since(start).Round(time.Millisecond), s.URL())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin := s.AdminClient()

	// Admin: a Node, and a ServiceAccount that may only read Nodes.
	const ns, saName = "ts-node-agent", "ts-node-agent"
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name:   "node-a",
		Labels: map[string]string{"ts-node-agent.io/role": "exit"},
	}}
	mustCreate(t, func() error { _, err := admin.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); return err })
	mustCreate(t, func() error {
		_, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		return err
	})
	mustCreate(t, func() error {
		_, err := admin.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: "authkey"},
			StringData: map[string]string{"authkey": "tskey-test"},
		}, metav1.CreateOptions{})
		return err
	})
	mustCreate(t, func() error {
		_, err := admin.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: saName}}, metav1.CreateOptions{})
		return err
	})
	mustCreate(t, func() error {
		_, err := admin.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
			ObjectMeta: metav1.ObjectMeta{Name: "ts-node-agent"},
			Rules: []rbacv1.PolicyRule{{
				APIGroups: []string{""},
				Resources: []string{"nodes"},
				Verbs:     []string{"get", "list", "watch"},
			}},
		}, metav1.CreateOptions{})
		return err
	})
	mustCreate(t, func() error {
		_, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "ts-node-agent"},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "ts-node-agent"},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: saName}},
		}, metav1.CreateOptions{})
		return err
	})

	token, err := s.ServiceAccountToken(ctx, ns, saName)
	if err != nil {
		t.Fatal(err)
	}
	// The agent's view, through a kubeconfig file as a binary would use it.
	cfg, err := clientcmd.BuildConfigFromFlags("", s.Kubeconfig(token))
	if err != nil {
		t.Fatalf("kubeconfig: %v", err)
	}
	agent, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}

	checkAgent := func(t *testing.T) {
		t.Helper()
		ssr, err := agent.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("whoami: %v", err)
		}
		if got, want := ssr.Status.UserInfo.Username, "system:serviceaccount:"+ns+":"+saName; got != want {
			t.Errorf("token is user %q, want %q", got, want)
		}
		nodes, err := agent.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatalf("list nodes as the ServiceAccount: %v", err)
		}
		if len(nodes.Items) != 1 || nodes.Items[0].Name != "node-a" || nodes.Items[0].Labels["ts-node-agent.io/role"] != "exit" {
			t.Errorf("nodes = %+v, want node-a with role exit", nodes.Items)
		}
		if _, err := agent.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("list secrets as the ServiceAccount: err = %v, want 403 Forbidden", err)
		}
		if _, err := agent.CoreV1().Secrets(ns).Get(ctx, "authkey", metav1.GetOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("get secret as the ServiceAccount: err = %v, want 403 Forbidden", err)
		}
		if err := agent.CoreV1().Nodes().Delete(ctx, "node-a", metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("delete node as the ServiceAccount: err = %v, want 403 Forbidden", err)
		}
	}
	t.Run("ServiceAccountRBAC", checkAgent)

	t.Run("StaticUser", func(t *testing.T) {
		alice := s.Client(s.UserToken("alice"))
		ssr, err := alice.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("whoami: %v", err)
		}
		if u := ssr.Status.UserInfo; u.Username != "alice" || !slices.Contains(u.Groups, "team-a") {
			t.Errorf("user = %+v, want alice in team-a", u)
		}
		if _, err := alice.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("list nodes without RBAC: err = %v, want 403 Forbidden", err)
		}
		bad := s.Client("not-a-token")
		if _, err := bad.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); !apierrors.IsUnauthorized(err) {
			t.Errorf("list nodes with a wrong token: err = %v, want 401 Unauthorized", err)
		}
	})

	t.Run("Restart", func(t *testing.T) {
		url := s.URL()
		if err := s.StopAPIServer(); err != nil {
			t.Fatal(err)
		}
		if _, err := admin.CoreV1().Nodes().Get(ctx, "node-a", metav1.GetOptions{}); err == nil {
			t.Fatal("API server answers while stopped")
		}
		restart := time.Now()
		if err := s.StartAPIServer(ctx); err != nil {
			t.Fatal(err)
		}
		t.Logf("kube-apiserver restarted in %v", time.Since(restart).Round(time.Millisecond))
		if s.URL() != url {
			t.Errorf("URL after restart = %s, want %s", s.URL(), url)
		}
		// Same etcd: the objects are still there; same keys: the old
		// ServiceAccount token and the old clients still work.
		checkAgent(t)
		s.Restart(t)
		if _, err := admin.CoreV1().Secrets(ns).Get(ctx, "authkey", metav1.GetOptions{}); err != nil {
			t.Errorf("secret after restart: %v", err)
		}
	})
}

func mustCreate(t *testing.T, create func() error) {
	t.Helper()
	if err := create(); err != nil {
		t.Fatalf("create: %v", err)
	}
}
