package kube

import (
	"context"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Uninstalling tells, when the agent stops, whether it is being
// uninstalled (its DaemonSet deleted, or the agent's API access revoked,
// as `kubectl delete -k deploy/daemonset` does) rather than restarted (a
// rolling update, a deleted pod, a liveness restart, a drained node): only
// an uninstall may remove the kill switch, which otherwise stays for the
// next agent. It reads the agent's Pod (namespace, pod), follows its
// controller reference to the DaemonSet and reads that. why explains the
// verdict; err is set when it cannot tell (the API server unreachable),
// and the verdict is then false: keeping the node closed is the safe side.
func Uninstalling(ctx context.Context, client Client, namespace, pod string) (uninstall bool, why string, err error) {
	if namespace == "" || pod == "" {
		return false, "the agent does not know its pod (--pod-name, --pod-namespace)", nil
	}
	p, err := getNotRefused(ctx, func() (*metav1.PartialObjectMetadata, error) {
		return client.Pods(namespace).Get(ctx, pod, metav1.GetOptions{})
	})
	switch {
	case revoked(err):
		return true, fmt.Sprintf("the agent's API access was revoked (%v): its ServiceAccount or RBAC was deleted", err), nil
	case err != nil:
		return false, "", fmt.Errorf("reading pod %s/%s: %w", namespace, pod, err)
	}
	ref := metav1.GetControllerOf(p)
	if ref == nil || ref.Kind != "DaemonSet" {
		return false, fmt.Sprintf("pod %s/%s is not run by a DaemonSet", namespace, pod), nil
	}
	ds, err := getNotRefused(ctx, func() (*metav1.PartialObjectMetadata, error) {
		return client.DaemonSets(namespace).Get(ctx, ref.Name, metav1.GetOptions{})
	})
	switch {
	case apierrors.IsNotFound(err):
		return true, fmt.Sprintf("DaemonSet %s/%s was deleted", namespace, ref.Name), nil
	case revoked(err):
		return true, fmt.Sprintf("the agent's API access was revoked (%v): its ServiceAccount or RBAC was deleted", err), nil
	case err != nil:
		return false, "", fmt.Errorf("reading DaemonSet %s/%s: %w", namespace, ref.Name, err)
	case ds.UID != ref.UID:
		return false, fmt.Sprintf("DaemonSet %s/%s was re-created: a restart", namespace, ref.Name), nil
	case ds.DeletionTimestamp != nil:
		return true, fmt.Sprintf("DaemonSet %s/%s is being deleted", namespace, ref.Name), nil
	}
	return false, fmt.Sprintf("DaemonSet %s/%s is in place: a restart, not an uninstall", namespace, ref.Name), nil
}

// Right after an API server (re)start its RBAC cache refuses everything
// for a moment: a refusal counts as revoked only when it lasts.
const (
	revokedAttempts = 4
	revokedPause    = time.Second
)

// getNotRefused calls get until it is not refused (revoked), at most
// revokedAttempts times, revokedPause apart, or until ctx is done.
func getNotRefused[T any](ctx context.Context, get func() (T, error)) (T, error) {
	for i := 1; ; i++ {
		v, err := get()
		if !revoked(err) || i == revokedAttempts {
			return v, err
		}
		select {
		case <-ctx.Done():
			return v, err
		case <-time.After(revokedPause):
		}
	}
}

// revoked: the API server no longer accepts the agent's credentials, or no
// longer lets it read what it could read before.
func revoked(err error) bool {
	return apierrors.IsUnauthorized(err) || apierrors.IsForbidden(err)
}
