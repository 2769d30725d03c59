package kube

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

// waitTimeout bounds every wait of these tests.
const waitTimeout = 20 * time.Second

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// logBuffer is a goroutine-safe log sink.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func newLogger(t *testing.T) (*slog.Logger, *logBuffer) {
	t.Helper()
	b := &logBuffer{}
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug})), b
}

// node returns a Node as the API server would send it, with the fields the
// transforms must drop.
func node(name string, labels map[string]string, podCIDRs []string, addrs ...string) *corev1.Node {
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Labels:      map[string]string{"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
			Annotations: map[string]string{"node.alpha.kubernetes.io/ttl": "0", "flannel.alpha.coreos.com/public-ip": "203.0.113.9"},
			ManagedFields: []metav1.ManagedFieldsEntry{{
				Manager: "kubelet", Operation: metav1.ManagedFieldsOperationUpdate, APIVersion: "v1",
				FieldsType: "FieldsV1", FieldsV1: &metav1.FieldsV1{Raw: []byte(`{"f:status":{}}`)},
			}},
		},
		Spec: corev1.NodeSpec{PodCIDRs: podCIDRs, ProviderID: "k3s://" + name},
		Status: corev1.NodeStatus{
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}},
			Images: []corev1.ContainerImage{{
				Names: []string{"docker.io/tailscale/tailscale@sha256:0123456789abcdef"}, SizeBytes: 1 << 25,
			}},
			NodeInfo: corev1.NodeSystemInfo{KernelVersion: "6.12.0", OSImage: "Debian GNU/Linux 13"},
		},
	}
	if len(podCIDRs) > 0 {
		n.Spec.PodCIDR = podCIDRs[0]
	}
	for k, v := range labels {
		n.Labels[k] = v
	}
	for i, a := range addrs {
		typ := corev1.NodeInternalIP
		if i%2 == 1 {
			typ = corev1.NodeExternalIP
		}
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: typ, Address: a})
	}
	n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeHostName, Address: name})
	return n
}

func roleLabel(v string) map[string]string { return map[string]string{DefaultLabel: v} }

// env is one Watcher under test with its fakes.
type env struct {
	t      *testing.T
	client *fake.Clientset
	store  *snapshot.Store
	clock  *clocktesting.FakeClock
	w      *Watcher
	logs   *logBuffer
	events chan *corev1.Event // every Event created through client

	failing atomic.Pointer[error] // non-nil: node lists and watches fail with it
	mu      sync.Mutex
	watches []watch.Interface // node watches handed out
}

type envConfig struct {
	opts    Options
	options []Option
	events  *EventsOptions // nil: no Events
	failing error          // node lists and watches fail from the start
	start   bool           // run the Watcher (and Events)
}

func newEnv(t *testing.T, objs []runtime.Object, cfg envConfig) *env {
	t.Helper()
	e := &env{
		t:      t,
		client: fake.NewClientset(objs...),
		store:  snapshot.New(t0, snapshot.RoleNone),
		clock:  clocktesting.NewFakeClock(t0),
		events: make(chan *corev1.Event, 100),
	}
	if cfg.failing != nil {
		e.failing.Store(&cfg.failing)
	}
	log, logs := newLogger(t)
	e.logs = logs
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs:\n%s", logs.String())
		}
	})

	e.client.PrependReactor("create", "events", func(a k8stesting.Action) (bool, runtime.Object, error) {
		ev := a.(k8stesting.CreateAction).GetObject().(*corev1.Event)
		select {
		case e.events <- ev.DeepCopy():
		default:
			t.Errorf("too many events")
		}
		return false, nil, nil
	})
	e.client.PrependReactor("list", "nodes", func(k8stesting.Action) (bool, runtime.Object, error) {
		if err := e.failing.Load(); err != nil {
			return true, nil, *err
		}
		return false, nil, nil
	})
	// Node watches: fail on demand, else open them on the tracker as the
	// default reactor does, and remember them so a test can break them.
	e.client.PrependWatchReactor("nodes", func(a k8stesting.Action) (bool, watch.Interface, error) {
		if err := e.failing.Load(); err != nil {
			return true, nil, *err
		}
		wa := a.(k8stesting.WatchActionImpl)
		wi, err := e.client.Tracker().Watch(a.GetResource(), a.GetNamespace(), wa.ListOptions)
		if err != nil {
			return true, nil, err
		}
		e.mu.Lock()
		e.watches = append(e.watches, wi)
		e.mu.Unlock()
		return true, wi, nil
	})

	opts := withDefaults(cfg.opts)
	if opts.NodeName == "" {
		opts.NodeName = "node-a"
	}
	options := []Option{WithLogger(log), WithClock(e.clock)}
	var events *Events
	if cfg.events != nil {
		events = NewEvents(fakeClient{e.client}, *cfg.events, WithEventsLogger(log), WithEventsClock(e.clock))
		options = append(options, WithEvents(events))
	}
	options = append(options, cfg.options...)
	w, err := New(fakeClient{e.client}, e.store, opts, options...)
	if err != nil {
		t.Fatal(err)
	}
	e.w = w
	if cfg.start {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 2)
		go func() { done <- w.Run(ctx) }()
		go func() { done <- events.Run(ctx) }()
		t.Cleanup(func() {
			cancel()
			for range 2 {
				select {
				case err := <-done:
					if err != nil {
						t.Errorf("Run: %v", err)
					}
				case <-time.After(waitTimeout):
					t.Errorf("Run did not return after cancel")
				}
			}
		})
	}
	return e
}

// fail makes node lists and watches fail with err (nil: succeed again);
// breaking also ends the open watches, as a dying API server does.
func (e *env) fail(err error, breakWatches bool) {
	if err == nil {
		e.failing.Store(nil)
	} else {
		e.failing.Store(&err)
	}
	if breakWatches {
		e.mu.Lock()
		ws := e.watches
		e.watches = nil
		e.mu.Unlock()
		for _, w := range ws {
			w.Stop()
		}
	}
}

// waitFor waits until cond holds for the store's snapshot.
func (e *env) waitFor(what string, cond func(*snapshot.Snapshot) bool) *snapshot.Snapshot {
	e.t.Helper()
	deadline := time.After(waitTimeout)
	for {
		ch := e.store.Changed()
		if s := e.store.Load(); cond(s) {
			return s
		}
		select {
		case <-ch:
		case <-deadline:
			s := e.store.Load()
			e.t.Fatalf("timed out waiting for %s; role %q, checks %+v", what, s.Role, s.Checks)
			return nil
		}
	}
}

func (e *env) waitRole(r snapshot.Role) *snapshot.Snapshot {
	e.t.Helper()
	return e.waitFor(fmt.Sprintf("role %s with a healthy watch", r), func(s *snapshot.Snapshot) bool {
		return s.Role == r && s.Checks[CheckName].OK
	})
}

// waitEvent returns the next Event created, which must have reason.
func (e *env) waitEvent(reason string) *corev1.Event {
	e.t.Helper()
	select {
	case ev := <-e.events:
		if ev.Reason != reason {
			e.t.Fatalf("next Event is %s %q, want %s", ev.Reason, ev.Message, reason)
		}
		return ev
	case <-time.After(waitTimeout):
		e.t.Fatalf("timed out waiting for Event %s", reason)
		return nil
	}
}

// noEvent fails if an Event is pending (after the loop went idle: callers
// wait for the state that would have caused it first).
func (e *env) noEvent() {
	e.t.Helper()
	select {
	case ev := <-e.events:
		e.t.Errorf("unexpected Event %s: %s", ev.Reason, ev.Message)
	default:
	}
}

func (e *env) updateNode(n *corev1.Node) {
	e.t.Helper()
	old, err := e.client.CoreV1().Nodes().Get(context.Background(), n.Name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	n.ResourceVersion = old.ResourceVersion
	if _, err := e.client.CoreV1().Nodes().Update(context.Background(), n, metav1.UpdateOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) logContains(s string) bool { return strings.Contains(e.logs.String(), s) }

// recv receives from ch, failing the test after waitTimeout.
func recv[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitTimeout):
		var zero T
		t.Fatalf("timed out waiting for a %T", zero)
		return zero
	}
}

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// withDefaults is o with Defaults in its zero fields: the tests name only
// what they change.
func withDefaults(o Options) Options {
	var d Options
	d.Defaults()
	if o.Label == "" {
		o.Label = d.Label
	}
	if o.DefaultRole == "" {
		o.DefaultRole = d.DefaultRole
	}
	return o
}

// clusterUpdates sends every new Synced Cluster the store gets, from the
// current one on, until the test ends.
func clusterUpdates(t *testing.T, store *snapshot.Store) <-chan snapshot.Cluster {
	ch := make(chan snapshot.Cluster, 100)
	done := make(chan struct{})
	stopped := make(chan struct{})
	t.Cleanup(func() { close(done); <-stopped })
	go func() {
		defer close(stopped)
		var last snapshot.Cluster
		for {
			changed := store.Changed()
			if c := store.Load().Cluster; c.Synced && !c.Equal(last) {
				last = c.Clone()
				ch <- last
			}
			select {
			case <-done:
				return
			case <-changed:
			}
		}
	}()
	return ch
}

// fakeClient is the Client of client-go's fake Clientset: its typed
// clients have the methods Client asks for. Embedding the Clientset also
// tells informers that it does not stream lists.
type fakeClient struct{ *fake.Clientset }

func (c fakeClient) Nodes() ListWatcher[*corev1.NodeList] { return c.CoreV1().Nodes() }
func (c fakeClient) EndpointSlices(ns string) ListWatcher[*discoveryv1.EndpointSliceList] {
	return c.DiscoveryV1().EndpointSlices(ns)
}
func (c fakeClient) ServiceCIDRs() ListWatcher[*networkingv1.ServiceCIDRList] {
	return c.NetworkingV1().ServiceCIDRs()
}
func (c fakeClient) Events(ns string) Creator[*corev1.Event] { return c.CoreV1().Events(ns) }
func (c fakeClient) Pods(ns string) Getter[*metav1.PartialObjectMetadata] {
	return fakeMetadata[*corev1.Pod](c.CoreV1().Pods(ns).Get)
}

func (c fakeClient) DaemonSets(ns string) Getter[*metav1.PartialObjectMetadata] {
	return fakeMetadata[*appsv1.DaemonSet](c.AppsV1().DaemonSets(ns).Get)
}

// fakeMetadata is a typed Get that answers with the object's metadata
// alone, as the metadata client does.
type fakeMetadata[T metav1.ObjectMetaAccessor] func(context.Context, string, metav1.GetOptions) (T, error)

func (f fakeMetadata[T]) Get(ctx context.Context, name string, opts metav1.GetOptions) (*metav1.PartialObjectMetadata, error) {
	o, err := f(ctx, name, opts)
	if err != nil {
		return nil, err
	}
	return &metav1.PartialObjectMetadata{ObjectMeta: *o.GetObjectMeta().(*metav1.ObjectMeta)}, nil
}
