package kube

import (
	"context"
	"errors"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

func TestUninstalling(t *testing.T) {
	const ns, name = "ts-node-agent", "ts-node-agent-x1"
	ds := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "ts-node-agent", UID: "ds-1"}}
	isController := true
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, OwnerReferences: []metav1.OwnerReference{{
		APIVersion: "apps/v1", Kind: "DaemonSet", Name: "ts-node-agent", UID: "ds-1", Controller: &isController,
	}}}}
	deleting := ds.DeepCopy()
	now := metav1.Now()
	deleting.DeletionTimestamp = &now
	deleting.Finalizers = []string{"foregroundDeletion"}
	recreated := ds.DeepCopy()
	recreated.UID = "ds-2"
	orphan := pod.DeepCopy()
	orphan.OwnerReferences = nil
	gr := schema.GroupResource{Resource: "pods"}

	for _, tt := range []struct {
		name      string
		objects   []runtime.Object
		react     func(action k8stesting.Action) (bool, runtime.Object, error)
		want      bool
		wantWhy   string
		wantError bool
	}{
		{name: "rolling update", objects: []runtime.Object{pod, ds}, wantWhy: "is in place: a restart"},
		{name: "DaemonSet deleted", objects: []runtime.Object{pod}, want: true, wantWhy: "was deleted"},
		{name: "DaemonSet being deleted", objects: []runtime.Object{pod, deleting}, want: true, wantWhy: "is being deleted"},
		{name: "DaemonSet re-created", objects: []runtime.Object{pod, recreated}, wantWhy: "re-created"},
		{name: "not a DaemonSet pod", objects: []runtime.Object{orphan, ds}, wantWhy: "not run by a DaemonSet"},
		{name: "access revoked", objects: []runtime.Object{pod, ds}, want: true, wantWhy: "API access was revoked",
			react: func(k8stesting.Action) (bool, runtime.Object, error) {
				return true, nil, apierrors.NewForbidden(gr, name, errors.New("RBAC: role not found"))
			}},
		{name: "refused for a moment (RBAC cache after an API server restart)", objects: []runtime.Object{pod, ds}, wantWhy: "is in place: a restart",
			react: refusedOnce(gr, name)},
		{name: "API server unreachable", objects: []runtime.Object{pod, ds}, wantError: true,
			react: func(k8stesting.Action) (bool, runtime.Object, error) {
				return true, nil, errors.New("dial tcp 10.43.0.1:443: connect: connection refused")
			}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			client := fake.NewClientset(tt.objects...)
			if tt.react != nil {
				client.PrependReactor("get", "pods", tt.react)
			}
			got, why, err := Uninstalling(context.Background(), fakeClient{client}, ns, name)
			if (err != nil) != tt.wantError {
				t.Fatalf("err = %v, want error %v", err, tt.wantError)
			}
			if got != tt.want || !strings.Contains(why, tt.wantWhy) {
				t.Errorf("Uninstalling = %v, %q; want %v, %q", got, why, tt.want, tt.wantWhy)
			}
		})
	}
	if got, why, _ := Uninstalling(context.Background(), fakeClient{fake.NewClientset()}, "", ""); got || !strings.Contains(why, "does not know its pod") {
		t.Errorf("without a pod name: %v %q", got, why)
	}
}

// refusedOnce refuses the first call, then lets the others through.
func refusedOnce(gr schema.GroupResource, name string) func(k8stesting.Action) (bool, runtime.Object, error) {
	refused := false
	return func(k8stesting.Action) (bool, runtime.Object, error) {
		if refused {
			return false, nil, nil
		}
		refused = true
		return true, nil, apierrors.NewForbidden(gr, name, errors.New("RBAC: cache not synced"))
	}
}
