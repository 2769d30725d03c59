package kube

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	discoveryv1client "k8s.io/client-go/kubernetes/typed/discovery/v1"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

var podEvents = &EventsOptions{PodName: "agent-x7k2p", PodNamespace: "ts-node-agent", PodUID: "uid-1", NodeName: "node-a"}

func TestRoleFromLabels(t *testing.T) {
	const key = DefaultLabel
	tests := []struct {
		name    string
		labels  map[string]string
		def     snapshot.Role
		want    snapshot.Role
		wantErr string
	}{
		{"exit", roleLabel("exit"), snapshot.RoleWorker, snapshot.RoleExit, ""},
		{"worker", roleLabel("worker"), snapshot.RoleNone, snapshot.RoleWorker, ""},
		{"none", roleLabel("none"), snapshot.RoleWorker, snapshot.RoleNone, ""},
		{"absent", map[string]string{"other": "exit"}, snapshot.RoleWorker, snapshot.RoleWorker, ""},
		{"nil labels", nil, snapshot.RoleNone, snapshot.RoleNone, ""},
		{"unknown", roleLabel("gateway"), snapshot.RoleWorker, snapshot.RoleWorker,
			`node label ts-node-agent/role="gateway" is not a role (accepted: exit, worker, none); using the default role worker`},
		{"empty value", roleLabel(""), snapshot.RoleNone, snapshot.RoleNone, `ts-node-agent/role="" is not a role`},
		{"case sensitive", roleLabel("Exit"), snapshot.RoleWorker, snapshot.RoleWorker, `"Exit" is not a role`},
		{"other key ignored", map[string]string{"role": "exit"}, snapshot.RoleNone, snapshot.RoleNone, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := RoleFromLabels(tt.labels, key, tt.def)
			if got != tt.want {
				t.Errorf("role = %q, want %q", got, tt.want)
			}
			if tt.wantErr == "" {
				if err != nil {
					t.Errorf("err = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("err = %v, want it to contain %q", err, tt.wantErr)
			}
			var ue *UnknownRoleError
			if !errors.As(err, &ue) || ue.Value != tt.labels[key] || ue.Default != tt.def {
				t.Errorf("err = %#v, want an *UnknownRoleError for %q", err, tt.labels[key])
			}
		})
	}
}

func TestOptionsValidate(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		want []string // substrings of the error; none: valid
	}{
		{"defaults", Options{NodeName: "node-a"}, nil},
		{"forced", Options{NodeName: "node-a", ForceRole: snapshot.RoleExit}, nil},
		{"custom label", Options{NodeName: "n1.example.com", Label: "example.com/egress-role"}, nil},
		{"everything wrong", Options{NodeName: "Node_A", Label: "bad key/x/y", DefaultRole: "gateway", ForceRole: "boss"},
			[]string{`node name "Node_A"`, `role label "bad key/x/y"`, `default role "gateway": accepted: exit, worker, none`, `forced role "boss"`}},
		{"no node name", Options{}, []string{"node name: required (--node-name or NODE_NAME"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := withDefaults(tt.opts).Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Validate: nil, want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestNewRejects(t *testing.T) {
	e := newEnv(t, nil, envConfig{})
	if _, err := New(nil, e.store, Options{NodeName: "a"}); err == nil {
		t.Error("New with a nil client: no error")
	}
	if _, err := New(fakeClient{e.client}, nil, Options{NodeName: "a"}); err == nil {
		t.Error("New with a nil store: no error")
	}
	if _, err := New(fakeClient{e.client}, e.store, Options{}); err == nil || !strings.Contains(err.Error(), "node name") {
		t.Errorf("New without a node name: %v", err)
	}
}

func TestInitialRoleFromLabel(t *testing.T) {
	e := newEnv(t, []k8sruntime.Object{
		node("node-a", roleLabel("exit"), nil),
		node("node-b", roleLabel("worker"), nil), // another node: not ours
	}, envConfig{start: true, events: podEvents})

	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	r, err := e.w.WaitForRole(ctx)
	if err != nil || r != snapshot.RoleExit {
		t.Fatalf("WaitForRole = %q, %v; want exit", r, err)
	}
	select {
	case <-e.w.Synced():
	default:
		t.Error("Synced not closed after WaitForRole")
	}
	s := e.waitRole(snapshot.RoleExit)
	if c := s.Checks[CheckName]; c.Reason != "" || !c.CheckedAt.Equal(t0) {
		t.Errorf("check = %+v, want OK at %v", c, t0)
	}
	if hb := s.Heartbeats[HeartbeatName]; !hb.Equal(t0) {
		t.Errorf("heartbeat = %v, want %v", hb, t0)
	}
	if !e.logContains(`msg=role`) || !e.logContains(`role=exit`) {
		t.Errorf("no role log line")
	}
	e.noEvent() // the first role is not a change

	// Only this node is listed and watched: a field selector, no
	// informer on all nodes without the bypass option.
	for _, a := range e.client.Actions() {
		if a.GetResource().Resource != "nodes" || (a.GetVerb() != "list" && a.GetVerb() != "watch") {
			continue
		}
		var fs string
		switch a := a.(type) {
		case k8stesting.ListActionImpl:
			fs = a.ListOptions.FieldSelector
		case k8stesting.WatchActionImpl:
			fs = a.ListOptions.FieldSelector
		}
		if fs != "metadata.name=node-a" {
			t.Errorf("%s nodes with field selector %q, want metadata.name=node-a", a.GetVerb(), fs)
		}
	}
}

func TestLabelAbsentUsesDefault(t *testing.T) {
	e := newEnv(t, []k8sruntime.Object{node("node-a", nil, nil)}, envConfig{
		start: true, events: podEvents, opts: Options{DefaultRole: snapshot.RoleExit},
	})
	e.waitRole(snapshot.RoleExit)
	if !e.logContains("absent, default role") {
		t.Error("log does not say the role is the default")
	}
	e.noEvent()
}

func TestRelabelAtRunTime(t *testing.T) {
	e := newEnv(t, []k8sruntime.Object{node("node-a", roleLabel("exit"), nil)},
		envConfig{start: true, events: podEvents, opts: Options{DefaultRole: snapshot.RoleNone}})
	e.waitRole(snapshot.RoleExit)

	e.updateNode(node("node-a", roleLabel("worker"), nil))
	e.waitRole(snapshot.RoleWorker)
	ev := e.waitEvent(ReasonRoleChanged)
	if ev.Type != corev1.EventTypeNormal || ev.Message != `Role changed from exit to worker (node label ts-node-agent/role="worker")` {
		t.Errorf("Event = %s %q", ev.Type, ev.Message)
	}
	if !e.logContains("role changed") {
		t.Error("no role change log line")
	}

	// Removing the label falls back to the default role.
	e.updateNode(node("node-a", nil, nil))
	e.waitRole(snapshot.RoleNone)
	ev = e.waitEvent(ReasonRoleChanged)
	if want := "Role changed from worker to none (node label ts-node-agent/role absent, default role)"; ev.Message != want {
		t.Errorf("Event message %q, want %q", ev.Message, want)
	}
}

func TestUnknownLabelValue(t *testing.T) {
	e := newEnv(t, []k8sruntime.Object{node("node-a", roleLabel("gateway"), nil)},
		envConfig{start: true, events: podEvents})
	e.waitRole(snapshot.RoleWorker) // the default role

	ev := e.waitEvent(ReasonUnknownRoleLabel)
	want := `Node label ts-node-agent/role="gateway" is not a role (accepted: exit, worker, none); using the default role worker`
	if ev.Type != corev1.EventTypeWarning || ev.Message != want {
		t.Errorf("Event = %s %q, want Warning %q", ev.Type, ev.Message, want)
	}
	if ev.InvolvedObject.Kind != "Pod" || ev.InvolvedObject.Name != "agent-x7k2p" ||
		ev.InvolvedObject.Namespace != "ts-node-agent" || ev.Namespace != "ts-node-agent" {
		t.Errorf("involvedObject = %+v in namespace %q", ev.InvolvedObject, ev.Namespace)
	}
	if !e.logContains("unknown role label value") || !e.logContains("value=gateway") {
		t.Error("no log line about the unknown value")
	}

	// The Event is also stored in the fake API server.
	list, err := e.client.CoreV1().Events("ts-node-agent").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) == 0 || list.Items[0].Reason != ReasonUnknownRoleLabel {
		t.Errorf("stored Events = %+v", list.Items)
	}

	// Node updates with the same bad value do not repeat the warning; a
	// valid value then applies.
	n := node("node-a", roleLabel("gateway"), nil)
	n.Status.NodeInfo.KernelVersion = "6.12.1"
	e.updateNode(n)
	e.updateNode(node("node-a", roleLabel("exit"), nil))
	e.waitRole(snapshot.RoleExit)
	if ev := e.waitEvent(ReasonRoleChanged); !strings.Contains(ev.Message, "from worker to exit") {
		t.Errorf("Event message %q", ev.Message)
	}
	e.noEvent()
}

func TestForceRoleIgnoresLabel(t *testing.T) {
	e := newEnv(t, []k8sruntime.Object{node("node-a", roleLabel("gateway"), nil)}, envConfig{
		start: true, events: podEvents, opts: Options{ForceRole: snapshot.RoleExit},
		options: []Option{WithCluster()},
	})
	bypass := clusterUpdates(t, e.store)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if r, err := e.w.WaitForRole(ctx); r != snapshot.RoleExit || err != nil {
		t.Fatalf("WaitForRole = %q, %v; want exit", r, err)
	}
	e.waitRole(snapshot.RoleExit)
	recv(t, bypass)
	e.updateNode(node("node-a", roleLabel("worker"), []string{"10.42.0.0/24"}))
	// The pod CIDRs show the update was processed.
	if b := recv(t, bypass); !equalPrefixes(b.OwnPodCIDRs, prefixes("10.42.0.0/24")) {
		t.Fatalf("pod CIDRs = %v", b.OwnPodCIDRs)
	}
	if r := e.store.Load().Role; r != snapshot.RoleExit {
		t.Errorf("role = %q, want the forced exit", r)
	}
	e.noEvent()
}

func TestNodeNotFound(t *testing.T) {
	e := newEnv(t, []k8sruntime.Object{node("node-b", roleLabel("exit"), nil)}, envConfig{start: true})
	s := e.waitFor("a not found check", func(s *snapshot.Snapshot) bool {
		return strings.Contains(s.Checks[CheckName].Reason, "not found")
	})
	if want := `node "node-a" not found (check --node-name / NODE_NAME)`; s.Checks[CheckName].Reason != want {
		t.Errorf("reason = %q, want %q", s.Checks[CheckName].Reason, want)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := e.w.WaitForRole(ctx)
	if err == nil || !strings.Contains(err.Error(), "not found") || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitForRole = %v, want a not-found deadline error", err)
	}

	// The node joins later.
	if _, err := e.client.CoreV1().Nodes().Create(context.Background(),
		node("node-a", roleLabel("none"), nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitRole(snapshot.RoleNone)
}

func TestNodeDeletedKeepsRole(t *testing.T) {
	e := newEnv(t, []k8sruntime.Object{node("node-a", roleLabel("exit"), nil)}, envConfig{start: true})
	e.waitRole(snapshot.RoleExit)
	if err := e.client.CoreV1().Nodes().Delete(context.Background(), "node-a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	s := e.waitFor("a deleted check", func(s *snapshot.Snapshot) bool { return !s.Checks[CheckName].OK })
	if want := `node "node-a" was deleted, keeping last known role exit`; s.Checks[CheckName].Reason != want || s.Role != snapshot.RoleExit {
		t.Errorf("role %q, reason %q; want exit, %q", s.Role, s.Checks[CheckName].Reason, want)
	}
}

// connRefused is what a dial to a stopped API server returns; client-go
// retries it inside the watch loop without calling the watch error
// handler.
var connRefused = fmt.Errorf("Get \"https://10.43.0.1:443/api/v1/nodes\": dial tcp 10.43.0.1:443: connect: %w", syscall.ECONNREFUSED)

func TestOutageKeepsLastRole(t *testing.T) {
	e := newEnv(t, []k8sruntime.Object{node("node-a", roleLabel("exit"), nil)},
		envConfig{start: true, events: podEvents})
	e.waitRole(snapshot.RoleExit)

	e.clock.SetTime(t0.Add(time.Hour))
	e.fail(connRefused, true)
	s := e.waitFor("the outage in the check", func(s *snapshot.Snapshot) bool { return !s.Checks[CheckName].OK })
	want := "API server unreachable since 2026-01-02T04:04:05Z, keeping last known role exit: " + connRefused.Error()
	if got := s.Checks[CheckName].Reason; got != want {
		t.Errorf("reason = %q\nwant     %q", got, want)
	}
	if s.Role != snapshot.RoleExit {
		t.Errorf("role = %q during the outage, want exit", s.Role)
	}
	if !e.logContains("Kubernetes API server unreachable") {
		t.Error("no log line about the outage")
	}
	// The loop keeps beating: an outage never fails liveness.
	e.clock.Step(HeartbeatInterval)
	deadline := time.Now().Add(waitTimeout)
	for !e.store.Load().Heartbeats[HeartbeatName].Equal(e.clock.Now()) {
		if time.Now().After(deadline) {
			t.Fatalf("heartbeat = %v during the outage, want %v", e.store.Load().Heartbeats[HeartbeatName], e.clock.Now())
		}
		time.Sleep(5 * time.Millisecond)
	}

	// Relabelled while the agent could not see it; seen after the
	// reconnect.
	e.updateNode(node("node-a", roleLabel("worker"), nil))
	e.fail(nil, false)
	e.waitRole(snapshot.RoleWorker)
	if !e.logContains("reachable again") {
		t.Error("no log line about the recovery")
	}
	e.waitEvent(ReasonRoleChanged)
}

func TestUnreachableAtBoot(t *testing.T) {
	boom := errors.New(`Get "https://10.43.0.1:443/api/v1/nodes": dial tcp 10.43.0.1:443: i/o timeout`)
	e := newEnv(t, []k8sruntime.Object{node("node-a", roleLabel("exit"), nil)},
		envConfig{start: true, failing: boom})
	s := e.waitFor("the outage in the check", func(s *snapshot.Snapshot) bool {
		return strings.HasPrefix(s.Checks[CheckName].Reason, "API server unreachable")
	})
	want := "API server unreachable since 2026-01-02T03:04:05Z, no role known yet: " + boom.Error()
	if got := s.Checks[CheckName].Reason; got != want {
		t.Errorf("reason = %q\nwant     %q", got, want)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := e.w.WaitForRole(ctx); err == nil || !strings.Contains(err.Error(), "i/o timeout") {
		t.Errorf("WaitForRole = %v, want the API error", err)
	}
	e.fail(nil, false)
	e.waitRole(snapshot.RoleExit)
}

// TestCluster: the snapshot's Cluster follows Nodes joining, leaving,
// changing readiness, addresses and pod CIDRs, and nothing else.
func TestCluster(t *testing.T) {
	e := newEnv(t, []k8sruntime.Object{
		node("node-a", roleLabel("worker"), []string{"10.42.0.0/24", "fd00:42::/64"}, "192.168.1.1", "203.0.113.1"),
		node("node-b", nil, []string{"10.42.2.0/24"}, "192.168.1.2", "203.0.113.2"),
		node("node-c", nil, nil, "192.168.1.3", "192.168.1.3", "2001:db8::3"),
	}, envConfig{start: true, options: []Option{WithCluster()}})
	got := clusterUpdates(t, e.store)
	next := func(want snapshot.Cluster) {
		t.Helper()
		want.Synced = true
		if b := recv(t, got); !b.Equal(want) {
			t.Fatalf("cluster = %+v\nwant %+v", b, want)
		}
	}
	next(snapshot.Cluster{
		OwnPodCIDRs:    prefixes("10.42.0.0/24", "fd00:42::/64"),
		NodeAddrs:      addrs("192.168.1.2", "192.168.1.3", "203.0.113.2", "2001:db8::3"),
		ReadyNodeAddrs: addrs("192.168.1.2", "192.168.1.3", "203.0.113.2", "2001:db8::3"),
		PodCIDRs:       prefixes("10.42.0.0/24", "10.42.2.0/24", "fd00:42::/64"),
	})

	// The cache holds addresses only (checked here, after the first
	// publication, which happens after Run set e.w.nodes): nodeAddrs has
	// no room for anything else.
	for _, obj := range e.w.nodes.List() {
		if _, ok := obj.(*nodeAddrs); !ok {
			t.Fatalf("cached %T, want *nodeAddrs", obj)
		}
	}

	// A node joins.
	if _, err := e.client.CoreV1().Nodes().Create(context.Background(),
		node("node-d", nil, nil, "192.168.1.4"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	next(snapshot.Cluster{
		OwnPodCIDRs:    prefixes("10.42.0.0/24", "fd00:42::/64"),
		NodeAddrs:      addrs("192.168.1.2", "192.168.1.3", "192.168.1.4", "203.0.113.2", "2001:db8::3"),
		ReadyNodeAddrs: addrs("192.168.1.2", "192.168.1.3", "192.168.1.4", "203.0.113.2", "2001:db8::3"),
		PodCIDRs:       prefixes("10.42.0.0/24", "10.42.2.0/24", "fd00:42::/64"),
	})
	// A node leaves.
	if err := e.client.CoreV1().Nodes().Delete(context.Background(), "node-b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	next(snapshot.Cluster{
		OwnPodCIDRs:    prefixes("10.42.0.0/24", "fd00:42::/64"),
		NodeAddrs:      addrs("192.168.1.3", "192.168.1.4", "2001:db8::3"),
		ReadyNodeAddrs: addrs("192.168.1.3", "192.168.1.4", "2001:db8::3"),
		PodCIDRs:       prefixes("10.42.0.0/24", "fd00:42::/64"),
	})
	// A node goes NotReady: still bypassed, no longer preferred by the
	// commit check.
	c := node("node-c", nil, nil, "192.168.1.3", "192.168.1.3", "2001:db8::3")
	c.Status.Conditions[0].Status = corev1.ConditionFalse
	e.updateNode(c)
	next(snapshot.Cluster{
		OwnPodCIDRs:    prefixes("10.42.0.0/24", "fd00:42::/64"),
		NodeAddrs:      addrs("192.168.1.3", "192.168.1.4", "2001:db8::3"),
		ReadyNodeAddrs: addrs("192.168.1.4"),
		PodCIDRs:       prefixes("10.42.0.0/24", "fd00:42::/64"),
	})
	// A status-only update changes nothing we publish; the next change
	// proves it was not published.
	c = c.DeepCopy()
	c.Status.Images = nil
	e.updateNode(c)
	// This node's pod CIDRs change.
	e.updateNode(node("node-a", roleLabel("worker"), []string{"10.42.1.0/24"}, "192.168.1.1"))
	next(snapshot.Cluster{
		OwnPodCIDRs:    prefixes("10.42.1.0/24"),
		NodeAddrs:      addrs("192.168.1.3", "192.168.1.4", "2001:db8::3"),
		ReadyNodeAddrs: addrs("192.168.1.4"),
		PodCIDRs:       prefixes("10.42.1.0/24"),
	})
	// Another node's address changes.
	e.updateNode(node("node-d", nil, nil, "192.168.1.40"))
	next(snapshot.Cluster{
		OwnPodCIDRs:    prefixes("10.42.1.0/24"),
		NodeAddrs:      addrs("192.168.1.3", "192.168.1.40", "2001:db8::3"),
		ReadyNodeAddrs: addrs("192.168.1.40"),
		PodCIDRs:       prefixes("10.42.1.0/24"),
	})
	// Another node gets its pod CIDR after registering (node IPAM).
	e.updateNode(node("node-d", nil, []string{"10.42.4.0/24"}, "192.168.1.40"))
	next(snapshot.Cluster{
		OwnPodCIDRs:    prefixes("10.42.1.0/24"),
		NodeAddrs:      addrs("192.168.1.3", "192.168.1.40", "2001:db8::3"),
		ReadyNodeAddrs: addrs("192.168.1.40"),
		PodCIDRs:       prefixes("10.42.1.0/24", "10.42.4.0/24"),
	})
	select {
	case b := <-got:
		t.Errorf("unexpected cluster %+v", b)
	default:
	}
}

func TestTransforms(t *testing.T) {
	fat := node("node-b", roleLabel("exit"), []string{"10.42.3.0/24", "fd00:42:3::/64"},
		"192.168.1.2", "::ffff:203.0.113.2", "not-an-ip", "192.168.1.2")
	fat.UID = "uid-b"
	fat.ResourceVersion = "42"

	obj, err := toNodeAddrs(fat)
	if err != nil {
		t.Fatal(err)
	}
	n := obj.(*nodeAddrs)
	if n.Name != "node-b" || n.ResourceVersion != "42" {
		t.Errorf("name, resource version = %q, %q", n.Name, n.ResourceVersion)
	}
	if want := addrs("192.168.1.2", "203.0.113.2"); !equalAddrs(n.Addrs, want) {
		t.Errorf("addresses = %v, want %v (InternalIP/ExternalIP only, unmapped, deduplicated)", n.Addrs, want)
	}
	if want := prefixes("10.42.3.0/24", "fd00:42:3::/64"); !equalPrefixes(n.PodCIDRs, want) {
		t.Errorf("pod CIDRs = %v, want %v", n.PodCIDRs, want)
	}
	// The informer's key function and resource version comparison see
	// the name and resource version, nothing else.
	m, err := meta.Accessor(n)
	if err != nil || m.GetName() != "node-b" || m.GetResourceVersion() != "42" || m.GetUID() != "" || m.GetLabels() != nil {
		t.Errorf("meta.Accessor = %+v, %v; want name node-b, resource version 42, nothing else", m, err)
	}
	if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(n); key != "node-b" || err != nil {
		t.Errorf("key = %q, %v", key, err)
	}
	if again, _ := toNodeAddrs(n); again != n {
		t.Error("toNodeAddrs is not idempotent")
	}
	tomb := cache.DeletedFinalStateUnknown{Key: "node-b", Obj: n}
	if out, _ := toNodeAddrs(tomb); out != tomb {
		t.Error("toNodeAddrs changed a tombstone")
	}

	obj, err = toOwnNode(DefaultLabel)(fat)
	if err != nil {
		t.Fatal(err)
	}
	own := obj.(*corev1.Node)
	if own.Name != "node-b" || own.ResourceVersion != "42" || len(own.Labels) != 1 || own.Labels[DefaultLabel] != "exit" {
		t.Errorf("own node metadata = %+v", own.ObjectMeta)
	}
	if own.Annotations != nil || own.ManagedFields != nil || own.Status.Images != nil ||
		own.Status.Addresses != nil || own.Spec.ProviderID != "" || own.Status.NodeInfo.KernelVersion != "" {
		t.Errorf("own node keeps dropped fields: %+v", own)
	}
	if p, _ := podCIDRs(own); !equalPrefixes(p, prefixes("10.42.3.0/24", "fd00:42:3::/64")) {
		t.Errorf("pod CIDRs = %v", p)
	}
}

func TestPodCIDRs(t *testing.T) {
	tests := []struct {
		name     string
		podCIDR  string
		podCIDRs []string
		want     []string
		bad      []string
	}{
		{"none", "", nil, nil, nil},
		{"single-stack legacy field", "10.42.0.0/24", nil, []string{"10.42.0.0/24"}, nil},
		{"dual-stack sorted", "fd00::/64", []string{"fd00::/64", "10.42.0.0/24"}, []string{"10.42.0.0/24", "fd00::/64"}, nil},
		{"masked and deduplicated", "", []string{"10.42.0.1/24", "10.42.0.0/24"}, []string{"10.42.0.0/24"}, nil},
		{"bad skipped", "", []string{"10.42.0.0/24", "garbage"}, []string{"10.42.0.0/24"}, []string{"garbage"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := &corev1.Node{Spec: corev1.NodeSpec{PodCIDR: tt.podCIDR, PodCIDRs: tt.podCIDRs}}
			got, bad := podCIDRs(n)
			if !equalPrefixes(got, prefixes(tt.want...)) || fmt.Sprint(bad) != fmt.Sprint(tt.bad) {
				t.Errorf("podCIDRs = %v, %v; want %v, %v", got, bad, tt.want, tt.bad)
			}
		})
	}
}

// TestAddressCacheSize checks the DESIGN section 8 bar: the all-nodes
// cache costs under 1 KiB per node.
func TestAddressCacheSize(t *testing.T) {
	const count = 5000
	store := cache.NewStore(cache.DeletionHandlingMetaNamespaceKeyFunc)
	before := heapInUse()
	for i := range count {
		// A full Node as decoded from the API server; garbage once
		// transformed.
		n := node(fmt.Sprintf("node-%05d.example.internal", i), roleLabel("worker"),
			[]string{"10.42.0.0/24"}, fmt.Sprintf("10.0.%d.%d", i/250, i%250), fmt.Sprintf("203.0.%d.%d", i/250, i%250))
		n.ResourceVersion = fmt.Sprint(1000000 + i)
		obj, err := toNodeAddrs(n)
		if err != nil {
			t.Fatal(err)
		}
		if err := store.Add(obj); err != nil {
			t.Fatal(err)
		}
	}
	after := heapInUse()
	if len(store.List()) != count {
		t.Fatal("store lost nodes")
	}
	perNode := (int64(after) - int64(before)) / count
	t.Logf("%d bytes per cached node", perNode)
	if perNode >= 512 {
		t.Errorf("%d bytes per cached node, want under 0.5 KiB", perNode)
	}
}

func heapInUse() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

func equalAddrs(a, b []netip.Addr) bool { return slices.Equal(a, b) }

func equalPrefixes(a, b []netip.Prefix) bool { return slices.Equal(a, b) }

// apiSlice is an EndpointSlice as kube-apiserver keeps its own endpoints.
func apiSlice(name string, ready map[string]*bool, ports map[string]int32) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: name},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
	for addr, r := range ready {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{addr}, Conditions: discoveryv1.EndpointConditions{Ready: r}})
	}
	for n, p := range ports {
		es.Ports = append(es.Ports, discoveryv1.EndpointPort{Name: ptr.To(n), Port: ptr.To(p)})
	}
	return es
}

// TestClusterAPIEndpoints: the API server's ready endpoints from the
// EndpointSlice default/kubernetes are bypass inputs, and a change of the
// slice publishes them again; other slices are ignored.
func TestClusterAPIEndpoints(t *testing.T) {
	e := newEnv(t, []k8sruntime.Object{
		node("node-a", roleLabel("worker"), nil, "192.168.1.1"),
		apiSlice("kubernetes", map[string]*bool{"203.0.113.10": nil, "203.0.113.11": ptr.To(false)}, map[string]int32{"https": 6443}),
		apiSlice("other", map[string]*bool{"203.0.113.99": nil}, map[string]int32{"https": 443}),
	}, envConfig{})
	// The EndpointSlice answers after the Nodes, and the ServiceCIDRs
	// not at all (a cluster before 1.33): the first inputs wait for the
	// one, not for the other.
	slow := make(chan struct{})
	e.client.PrependReactor("list", "servicecidrs", func(k8stesting.Action) (bool, k8sruntime.Object, error) {
		return true, nil, apierrors.NewNotFound(schema.GroupResource{Group: "networking.k8s.io", Resource: "servicecidrs"}, "")
	})
	log, _ := newLogger(t)
	w, err := New(slowSlices{fakeClient{e.client}, slow}, e.store, withDefaults(Options{NodeName: "node-a"}),
		WithLogger(log), WithClock(e.clock), WithCluster())
	if err != nil {
		t.Fatal(err)
	}
	got := clusterUpdates(t, e.store)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case b := <-got:
		t.Fatalf("a synced cluster before the API server's EndpointSlice was read: %+v", b)
	case <-time.After(200 * time.Millisecond):
	}
	close(slow)
	b := recv(t, got)
	if want := []netip.AddrPort{netip.MustParseAddrPort("203.0.113.10:6443")}; !slices.Equal(b.APIEndpoints, want) {
		t.Fatalf("first API endpoints = %v, want %v (ready ones of default/kubernetes only)", b.APIEndpoints, want)
	}
	// The second API server becomes ready (a control plane upgrade).
	_, err = e.client.DiscoveryV1().EndpointSlices("default").Update(context.Background(),
		apiSlice("kubernetes", map[string]*bool{"203.0.113.10": nil, "203.0.113.11": ptr.To(true)}, map[string]int32{"https": 6443}), metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b = recv(t, got)
	if want := []netip.AddrPort{netip.MustParseAddrPort("203.0.113.10:6443"), netip.MustParseAddrPort("203.0.113.11:6443")}; !slices.Equal(b.APIEndpoints, want) {
		t.Fatalf("after the update: API endpoints = %v, want %v", b.APIEndpoints, want)
	}
}

func TestToAPIEndpointsPorts(t *testing.T) {
	for _, tc := range []struct {
		ports map[string]int32
		want  []string
	}{
		{map[string]int32{"https": 6443, "metrics": 9090}, []string{"198.18.0.1:6443"}},
		{map[string]int32{"": 443}, []string{"198.18.0.1:443"}},
		{map[string]int32{"": 0}, nil},
	} {
		obj, err := toAPIEndpoints(apiSlice("kubernetes", map[string]*bool{"198.18.0.1": nil, "bogus": nil}, tc.ports))
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, ap := range obj.(*apiEndpoints).Endpoints {
			got = append(got, ap.String())
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("ports %v: endpoints %v, want %v", tc.ports, got, tc.want)
		}
	}
}

// TestEndpointsErrorGrace: a refused EndpointSlice watch (an API server
// whose RBAC cache is still empty after a restart, or RBAC without the
// slice) is a warning only once it lasts optionalErrorGrace, and its end
// is logged.
func TestEndpointsErrorGrace(t *testing.T) {
	e := newEnv(t, []k8sruntime.Object{node("node-a", roleLabel("worker"), nil, "192.168.1.1")},
		envConfig{options: []Option{WithCluster()}})
	var refuse atomic.Bool
	refuse.Store(true)
	var calls atomic.Int32
	forbidden := apierrors.NewForbidden(schema.GroupResource{Group: "discovery.k8s.io", Resource: "endpointslices"}, "kubernetes", errors.New("RBAC: not yet"))
	e.client.PrependReactor("list", "endpointslices", func(k8stesting.Action) (bool, k8sruntime.Object, error) {
		calls.Add(1)
		if refuse.Load() {
			return true, nil, forbidden
		}
		return false, nil, nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	const warning = "cannot watch the API server's EndpointSlice default/kubernetes"
	waitCalls := func(n int32) {
		t.Helper()
		deadline := time.Now().Add(waitTimeout)
		for calls.Load() < n {
			if time.Now().After(deadline) {
				t.Fatalf("%d EndpointSlice lists, want %d", calls.Load(), n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitCalls(2)
	if e.logContains(warning) {
		t.Fatal("warned about a refusal that has lasted less than the grace")
	}
	e.clock.Step(optionalErrorGrace)
	waitCalls(calls.Load() + 1)
	deadline := time.Now().Add(waitTimeout)
	for !e.logContains(warning) {
		if time.Now().After(deadline) {
			t.Fatalf("no warning after the grace; logs:\n%s", e.logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	refuse.Store(false)
	for !e.logContains("watching the API server's EndpointSlice default/kubernetes again") {
		if time.Now().After(deadline.Add(waitTimeout)) {
			t.Fatalf("the end of the refusal is not logged")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestClusterServiceCIDRs: the ranges of every ServiceCIDR object are in
// the cluster, and a new one publishes them again.
func TestClusterServiceCIDRs(t *testing.T) {
	sc := func(name string, cidrs ...string) *networkingv1.ServiceCIDR {
		return &networkingv1.ServiceCIDR{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: networkingv1.ServiceCIDRSpec{CIDRs: cidrs}}
	}
	e := newEnv(t, []k8sruntime.Object{
		node("node-a", roleLabel("worker"), nil, "192.168.1.1"),
		sc("kubernetes", "10.43.0.0/16", "fd00:43::/108"),
	}, envConfig{start: true, options: []Option{WithCluster()}})
	got := clusterUpdates(t, e.store)
	want := func(cidrs ...string) {
		t.Helper()
		deadline := time.After(waitTimeout)
		for {
			select {
			case b := <-got:
				if slices.Equal(b.ServiceCIDRs, prefixes(cidrs...)) {
					return
				}
			case <-deadline:
				t.Fatalf("no bypass inputs with ServiceCIDRs %v", cidrs)
			}
		}
	}
	want("10.43.0.0/16", "fd00:43::/108")
	if _, err := e.client.NetworkingV1().ServiceCIDRs().Create(context.Background(), sc("extra", "10.44.0.0/16"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	want("10.43.0.0/16", "10.44.0.0/16", "fd00:43::/108")
}

// slowSlices is a client whose EndpointSlice lists wait for release
// (outside the fake clientset's lock, which a blocking reactor would hold
// for every other call).
type slowSlices struct {
	fakeClient
	release <-chan struct{}
}

func (c slowSlices) EndpointSlices(ns string) ListWatcher[*discoveryv1.EndpointSliceList] {
	return slowSliceList{c.Clientset.DiscoveryV1().EndpointSlices(ns), c.release}
}

type slowSliceList struct {
	discoveryv1client.EndpointSliceInterface
	release <-chan struct{}
}

func (l slowSliceList) List(ctx context.Context, o metav1.ListOptions) (*discoveryv1.EndpointSliceList, error) {
	select {
	case <-l.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return l.EndpointSliceInterface.List(ctx, o)
}
