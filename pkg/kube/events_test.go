package kube

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

func TestEventsNoopWithoutPod(t *testing.T) {
	for _, opts := range []EventsOptions{{}, {PodName: "agent"}, {PodNamespace: "ns"}} {
		client := fake.NewClientset()
		log, logs := newLogger(t)
		e := NewEvents(fakeClient{client}, opts, WithEventsLogger(log))
		if e.Enabled() {
			t.Errorf("%+v: enabled", opts)
		}
		e.RoleChanged(snapshot.RoleExit, snapshot.RoleWorker, "test")
		e.UnknownRoleLabel("k", "v", snapshot.RoleWorker)
		e.ExitNodeSwitched("a", "b", "offline")
		e.ExitRouteNotApproved()
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := e.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
		if n := len(client.Actions()); n != 0 {
			t.Errorf("%+v: %d API calls, want none", opts, n)
		}
		if !strings.Contains(logs.String(), "Kubernetes Events disabled") {
			t.Errorf("%+v: no log line saying Events are disabled", opts)
		}
	}

	// Without a client, and a nil *Events, too.
	log, _ := newLogger(t)
	NewEvents(nil, *podEvents, WithEventsLogger(log)).ExitRouteNotApproved()
	var nilEvents *Events
	nilEvents.RoleChanged(snapshot.RoleExit, snapshot.RoleNone, "test")
	nilEvents.ExitNodeSwitched("", "b", "initial")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := nilEvents.Run(ctx); err != nil {
		t.Errorf("nil Run: %v", err)
	}
}

// startEvents runs Events on a fake clientset whose created Events arrive
// on the returned channel.
func startEvents(t *testing.T, clock *clocktesting.FakeClock) (*Events, chan *corev1.Event, *logBuffer) {
	t.Helper()
	client := fake.NewClientset()
	got := make(chan *corev1.Event, 10)
	client.PrependReactor("create", "events", func(a k8stesting.Action) (bool, runtime.Object, error) {
		got <- a.(k8stesting.CreateAction).GetObject().(*corev1.Event).DeepCopy()
		return false, nil, nil
	})
	log, logs := newLogger(t)
	e := NewEvents(fakeClient{client}, *podEvents, WithEventsLogger(log), WithEventsClock(clock))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- e.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return e, got, logs
}

func nextEvent(t *testing.T, got chan *corev1.Event) *corev1.Event {
	t.Helper()
	select {
	case ev := <-got:
		return ev
	case <-time.After(waitTimeout):
		t.Fatal("timed out waiting for an Event")
		return nil
	}
}

func TestEventsPosted(t *testing.T) {
	clock := clocktesting.NewFakeClock(t0)
	e, got, _ := startEvents(t, clock)

	e.ExitNodeSwitched("exit-1 (100.64.0.1)", "exit-2 (100.64.0.2)", "offline")
	ev := nextEvent(t, got)
	if ev.Type != corev1.EventTypeNormal || ev.Reason != ReasonExitNodeSwitched ||
		ev.Message != "Exit node switched from exit-1 (100.64.0.1) to exit-2 (100.64.0.2): offline" {
		t.Errorf("Event = %s %s %q", ev.Type, ev.Reason, ev.Message)
	}
	want := corev1.ObjectReference{APIVersion: "v1", Kind: "Pod", Namespace: "ts-node-agent", Name: "agent-x7k2p", UID: "uid-1"}
	if ev.InvolvedObject != want {
		t.Errorf("involvedObject = %+v, want %+v", ev.InvolvedObject, want)
	}
	if ev.Namespace != "ts-node-agent" || !strings.HasPrefix(ev.Name, "agent-x7k2p.") || ev.Count != 1 ||
		!ev.FirstTimestamp.Time.Equal(t0) || ev.Source.Component != Component || ev.Source.Host != "node-a" {
		t.Errorf("Event metadata = %+v", ev)
	}

	e.ExitRouteNotApproved()
	ev = nextEvent(t, got)
	if ev.Type != corev1.EventTypeWarning || ev.Reason != ReasonExitRouteNotApproved ||
		!strings.Contains(ev.Message, "advertised but not approved by the control server") {
		t.Errorf("Event = %s %s %q", ev.Type, ev.Reason, ev.Message)
	}

	e.ExitNodeSwitched("", "exit-1", "initial")
	if ev := nextEvent(t, got); ev.Message != "Exit node switched from none to exit-1: initial" {
		t.Errorf("message = %q", ev.Message)
	}
}

func TestEventsDeduplicated(t *testing.T) {
	clock := clocktesting.NewFakeClock(t0)
	e, got, _ := startEvents(t, clock)

	e.ExitRouteNotApproved()
	first := nextEvent(t, got)
	e.ExitRouteNotApproved() // within the window: dropped
	clock.Step(EventDedupWindow)
	e.ExitRouteNotApproved() // window passed: posted again
	second := nextEvent(t, got)
	if first.Name == second.Name {
		t.Errorf("two Events named %s", first.Name)
	}
	select {
	case ev := <-got:
		t.Errorf("unexpected Event %s %q", ev.Reason, ev.Message)
	default:
	}
}

func TestEventsNeverBlock(t *testing.T) {
	client := fake.NewClientset()
	log, logs := newLogger(t)
	e := NewEvents(fakeClient{client}, *podEvents, WithEventsLogger(log))
	// Run is not running: the queue fills, then Events are dropped.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range EventQueueSize + 10 {
			e.ExitNodeSwitched("a", "b", strings.Repeat("x", i))
		}
	}()
	select {
	case <-done:
	case <-time.After(waitTimeout):
		t.Fatal("posting Events blocked")
	}
	if !strings.Contains(logs.String(), "Kubernetes Event queue full; dropping Event") {
		t.Error("no log line about dropped Events")
	}
}

func TestEventsLongMessageTruncated(t *testing.T) {
	e, got, _ := startEvents(t, clocktesting.NewFakeClock(t0))
	e.ExitNodeSwitched("a", "b", strings.Repeat("x", 5000))
	if ev := nextEvent(t, got); len(ev.Message) != maxMessage || !strings.HasSuffix(ev.Message, "...") {
		t.Errorf("message of %d bytes", len(ev.Message))
	}
}
