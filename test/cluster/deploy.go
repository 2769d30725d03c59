package cluster

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// LabOverlay is the directory, next to the project's own overlays, where
// Render puts the kustomization it is given.
const LabOverlay = "deploy/daemonset/overlays/tsna-lab"

// Render builds, as `kubectl apply -k` would, the kustomization text
// placed at LabOverlay in an in-memory copy of the repository's deploy/
// (so that it can refer to ../../base), and returns the objects.
func Render(kustomization string) ([]*unstructured.Unstructured, error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	mem, err := DeployFS(root)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(root, LabOverlay)
	if err := mem.MkdirAll(dir); err != nil {
		return nil, err
	}
	if err := mem.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(kustomization)); err != nil {
		return nil, err
	}
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(mem, dir)
	if err != nil {
		return nil, fmt.Errorf("cluster: kustomize build %s: %w", LabOverlay, err)
	}
	var objs []*unstructured.Unstructured
	for _, r := range m.Resources() {
		data, err := r.MarshalJSON()
		if err != nil {
			return nil, err
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(data); err != nil {
			return nil, fmt.Errorf("cluster: %s: %w", r.CurId(), err)
		}
		objs = append(objs, u)
	}
	return objs, nil
}

// DeployFS copies root's deploy/ into an in-memory file system, at the
// same paths, for kustomizations that exist only in tests.
func DeployFS(root string) (filesys.FileSystem, error) {
	mem := filesys.MakeFsInMemory()
	err := filepath.WalkDir(filepath.Join(root, "deploy"), func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return mem.MkdirAll(path)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return mem.WriteFile(path, b)
	})
	if err != nil {
		return nil, fmt.Errorf("cluster: copy deploy/: %w", err)
	}
	return mem, nil
}

// Apply server-side applies objs in order as the admin (kubectl apply
// --server-side), with strict field validation.
func (c *Cluster) Apply(ctx context.Context, objs []*unstructured.Unstructured) error {
	dc, err := discovery.NewDiscoveryClientForConfig(c.Config())
	if err != nil {
		return err
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	dyn, err := dynamic.NewForConfig(c.Config())
	if err != nil {
		return err
	}
	for _, o := range objs {
		gvk := o.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			return fmt.Errorf("cluster: apply %s %s: %w", gvk.Kind, o.GetName(), err)
		}
		data, err := o.MarshalJSON()
		if err != nil {
			return err
		}
		ri := dynamic.ResourceInterface(dyn.Resource(m.Resource))
		if o.GetNamespace() != "" {
			ri = dyn.Resource(m.Resource).Namespace(o.GetNamespace())
		}
		_, err = ri.Patch(ctx, o.GetName(), types.ApplyPatchType, data, metav1.PatchOptions{
			FieldManager: "tsna-cluster", Force: ptr.To(true), FieldValidation: "Strict",
		})
		if err != nil {
			return fmt.Errorf("cluster: apply %s %s/%s: %w", gvk.Kind, o.GetNamespace(), o.GetName(), err)
		}
	}
	return nil
}
