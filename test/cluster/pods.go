package cluster

import (
	"bufio"
	"context"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// EgressPod is a Pod on node that asks url every second and logs the
// answer (labpod egress): with the lab's echo service, the pod's egress IP.
func EgressPod(namespace, name, node, url string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{
			NodeSelector:                  map[string]string{"kubernetes.io/hostname": node},
			AutomountServiceAccountToken:  ptr.To(false),
			TerminationGracePeriodSeconds: ptr.To[int64](2),
			Containers: []corev1.Container{{
				Name:            "egress",
				Image:           LabPodImage,
				ImagePullPolicy: corev1.PullNever,
				Command:         []string{"/labpod", "egress", url},
			}},
		},
	}
}

// WaitPodRunning waits until the pod runs and returns it.
func (c *Cluster) WaitPodRunning(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	var last string
	for {
		p, err := c.Client().CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		if err == nil && p.Status.Phase == corev1.PodRunning {
			return p, nil
		}
		if err != nil {
			last = err.Error()
		} else {
			last = fmt.Sprintf("phase %s, conditions %v", p.Status.Phase, p.Status.Conditions)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("pod %s/%s not running: %s", namespace, name, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// EgressLog returns the "egress ..." lines the pod logged since since
// (kubectl logs, through the API server and the node's kubelet), without
// the prefix.
func (c *Cluster) EgressLog(ctx context.Context, namespace, name string, since time.Time) ([]string, error) {
	opts := &corev1.PodLogOptions{Timestamps: false}
	if !since.IsZero() {
		opts.SinceTime = &metav1.Time{Time: since}
	}
	b, err := c.Client().CoreV1().Pods(namespace).GetLogs(name, opts).DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("logs of %s/%s: %w", namespace, name, err)
	}
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		if s, ok := strings.CutPrefix(sc.Text(), "egress "); ok {
			lines = append(lines, s)
		}
	}
	return lines, nil
}

// WaitEgress waits until the egress pod's last logged answer is want, and
// returns the lines logged meanwhile.
func (c *Cluster) WaitEgress(ctx context.Context, namespace, name, want string) ([]string, error) {
	since := time.Now().Add(-time.Second)
	var lines []string
	for {
		l, err := c.EgressLog(ctx, namespace, name, since)
		if err == nil {
			lines = l
			if len(lines) > 0 && lines[len(lines)-1] == want {
				return lines, nil
			}
		}
		select {
		case <-ctx.Done():
			return lines, fmt.Errorf("pod %s/%s: egress not %s (last lines %q, err %v)", namespace, name, want, lastN(lines, 5), err)
		case <-time.After(time.Second):
		}
	}
}

func lastN(s []string, n int) []string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
