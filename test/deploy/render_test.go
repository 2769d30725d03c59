package deploy_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/ts-node-agent/ts-node-agent/test/cluster"
)

// The names the manifests must agree on.
const (
	agentNamespace = "ts-node-agent"
	agentName      = "ts-node-agent"
	authSecretName = "ts-node-agent-auth"
	authSecretKey  = "authkey"
)

// variant is a kustomization that an operator may apply.
type variant struct {
	name       string
	dir        string // relative to the repository root
	privileged bool   // includes components/privileged
}

// daemonSetVariants are the DaemonSet kustomizations: the base, its
// overlays, and the example overlay with the privileged component (which
// exists only in memory, as an operator would write it).
var daemonSetVariants = []variant{
	{name: "base", dir: "deploy/daemonset/base"},
	{name: "default", dir: "deploy/daemonset"},
	{name: "example", dir: "deploy/daemonset/overlays/example"},
	{name: "headscale", dir: "deploy/daemonset/overlays/headscale"},
	{name: "oauth-client", dir: "deploy/daemonset/overlays/oauth-client"},
	{name: "workload-identity", dir: "deploy/daemonset/overlays/workload-identity"},
	{name: "example+privileged", dir: privilegedOverlay, privileged: true},
}

// privilegedOverlay is written into the in-memory copy of deploy/ only.
const privilegedOverlay = "deploy/daemonset/overlays/test-privileged"

const privilegedOverlayKustomization = `apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../example
components:
  - ../../components/privileged
`

// repoRoot is the repository root, two levels above this package.
func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatalf("repository root: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		t.Fatalf("repository root %s: %v", dir, err)
	}
	return dir
}

// objects is a rendered kustomization, each object decoded strictly into
// its API type.
type objects struct {
	Namespaces          []corev1.Namespace
	ServiceAccounts     []corev1.ServiceAccount
	ConfigMaps          []corev1.ConfigMap
	ClusterRoles        []rbacv1.ClusterRole
	ClusterRoleBindings []rbacv1.ClusterRoleBinding
	Roles               []rbacv1.Role
	RoleBindings        []rbacv1.RoleBinding
	DaemonSets          []appsv1.DaemonSet
	PodMonitors         []monitoringv1.PodMonitor
	PrometheusRules     []monitoringv1.PrometheusRule

	// raw are the rendered objects as JSON, in kustomize's order
	// (namespaces first), for applying them to an API server.
	raw []rawObject
}

type rawObject struct {
	apiVersion, kind, namespace, name string
	json                              []byte
}

// add decodes one rendered object (JSON) by its apiVersion and kind.
// Unknown kinds, unknown fields and duplicate fields are errors.
func (o *objects) add(apiVersion, kind string, data []byte) error {
	switch apiVersion + " " + kind {
	case "v1 Namespace":
		return decodeStrict(data, &o.Namespaces)
	case "v1 ServiceAccount":
		return decodeStrict(data, &o.ServiceAccounts)
	case "v1 ConfigMap":
		return decodeStrict(data, &o.ConfigMaps)
	case "rbac.authorization.k8s.io/v1 ClusterRole":
		return decodeStrict(data, &o.ClusterRoles)
	case "rbac.authorization.k8s.io/v1 ClusterRoleBinding":
		return decodeStrict(data, &o.ClusterRoleBindings)
	case "rbac.authorization.k8s.io/v1 Role":
		return decodeStrict(data, &o.Roles)
	case "rbac.authorization.k8s.io/v1 RoleBinding":
		return decodeStrict(data, &o.RoleBindings)
	case "apps/v1 DaemonSet":
		return decodeStrict(data, &o.DaemonSets)
	case "monitoring.coreos.com/v1 PodMonitor":
		return decodeStrict(data, &o.PodMonitors)
	case "monitoring.coreos.com/v1 PrometheusRule":
		return decodeStrict(data, &o.PrometheusRules)
	}
	return fmt.Errorf("unexpected object %s %s: add it to the test's decoder with its API type", apiVersion, kind)
}

// decodeStrict decodes data into a new T, as the API server's strict field
// validation does (case-sensitive, no unknown or duplicate fields), and
// appends it to list.
func decodeStrict[T any](data []byte, list *[]T) error {
	var v T
	strictErrs, err := kjson.UnmarshalStrict(data, &v, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	if len(strictErrs) > 0 {
		return errors.Join(strictErrs...)
	}
	*list = append(*list, v)
	return nil
}

// render renders the kustomization at dir (relative to the repository root)
// from disk, or from an in-memory copy of deploy/ for the variants that
// exist only in the test.
func render(t *testing.T, dir string) objects {
	t.Helper()
	root := repoRoot(t)
	fsys := filesys.MakeFsOnDisk()
	if dir == privilegedOverlay {
		fsys = memDeploy(t, root)
	}
	return renderFS(t, fsys, filepath.Join(root, dir))
}

func renderFS(t *testing.T, fsys filesys.FileSystem, dir string) objects {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(fsys, dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	var o objects
	for _, r := range m.Resources() {
		data, err := r.MarshalJSON()
		if err != nil {
			t.Fatalf("%s: %s: %v", dir, r.CurId(), err)
		}
		if err := o.add(r.GetApiVersion(), r.GetKind(), data); err != nil {
			t.Errorf("%s: %s/%s %s: strict decoding: %v", dir, r.GetNamespace(), r.GetName(), r.GetKind(), err)
		}
		o.raw = append(o.raw, rawObject{r.GetApiVersion(), r.GetKind(), r.GetNamespace(), r.GetName(), data})
	}
	return o
}

// memDeploy copies deploy/ into an in-memory file system at the same paths
// and adds the privileged test overlay.
func memDeploy(t *testing.T, root string) filesys.FileSystem {
	t.Helper()
	mem, err := cluster.DeployFS(root)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, privilegedOverlay)
	if err := mem.MkdirAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := mem.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(privilegedOverlayKustomization)); err != nil {
		t.Fatal(err)
	}
	return mem
}

// TestRenderStrict renders every kustomization and decodes every object
// strictly: a misspelled or misplaced field fails here, not at apply time.
func TestRenderStrict(t *testing.T) {
	for _, v := range daemonSetVariants {
		t.Run(v.name, func(t *testing.T) {
			o := render(t, v.dir)
			if len(o.DaemonSets) != 1 {
				t.Errorf("%d DaemonSets, want exactly one for all nodes", len(o.DaemonSets))
			}
			if len(o.Namespaces) != 1 || o.Namespaces[0].Name != agentNamespace {
				t.Errorf("want the Namespace %s, got %d Namespaces", agentNamespace, len(o.Namespaces))
			}
			if len(o.ServiceAccounts) != 1 {
				t.Errorf("%d ServiceAccounts, want 1", len(o.ServiceAccounts))
			}
		})
	}
	t.Run("monitoring", func(t *testing.T) {
		o := render(t, "deploy/monitoring")
		if len(o.PodMonitors) != 1 || len(o.PrometheusRules) != 1 || len(o.ConfigMaps) != 1 {
			t.Errorf("want one PodMonitor, PrometheusRule and dashboard ConfigMap; got %d, %d, %d",
				len(o.PodMonitors), len(o.PrometheusRules), len(o.ConfigMaps))
		}
	})
}

// TestStrictDecodingRejectsUnknownFields proves that the decoder used above
// does fail on a field the API type does not have.
func TestStrictDecodingRejectsUnknownFields(t *testing.T) {
	var o objects
	err := o.add("apps/v1", "DaemonSet", []byte(`{"apiVersion":"apps/v1","kind":"DaemonSet","spec":{"template":{"spec":{"hostNetwrok":true}}}}`))
	if err == nil {
		t.Fatal("a misspelled field (hostNetwrok) decoded without error")
	}
	err = o.add("v1", "Namespace", []byte(`{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"a","name":"b"}}`))
	if err == nil {
		t.Fatal("a duplicate field decoded without error")
	}
	if err := o.add("v1", "Secret", []byte(`{}`)); err == nil {
		t.Fatal("an unexpected kind was accepted")
	}
}
