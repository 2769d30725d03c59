package kube

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

// Event reasons, as shown by kubectl describe pod and matched by alerts.
const (
	ReasonRoleChanged          = "RoleChanged"          // Normal
	ReasonUnknownRoleLabel     = "UnknownRoleLabel"     // Warning
	ReasonExitNodeSwitched     = "ExitNodeSwitched"     // Normal
	ReasonExitRouteNotApproved = "ExitRouteNotApproved" // Warning
)

// Component is the Event source and reporting controller.
const Component = "ts-node-agent"

// Tuning of Events.
const (
	// EventQueueSize is how many Events may wait for the API server; more
	// are dropped with a log line.
	EventQueueSize = 64
	// EventDedupWindow: an Event with the same type, reason and message as
	// one posted less than this ago is not posted again.
	EventDedupWindow = 10 * time.Minute
	// eventTimeout bounds one Event create.
	eventTimeout = 10 * time.Second
	// maxMessage is the longest Event message posted.
	maxMessage = 1024
)

// EventsOptions names the Pod that Events are about: the agent's own pod,
// from the downward API.
type EventsOptions struct {
	PodName      string // POD_NAME (metadata.name)
	PodNamespace string // POD_NAMESPACE (metadata.namespace)
	// PodUID (metadata.uid) is optional; kubectl describe pod shows only
	// the Events that carry the pod's UID, kubectl get events shows all.
	PodUID string
	// NodeName is the Event source host.
	NodeName string
}

// EventsOption configures Events.
type EventsOption func(*Events)

// WithEventsLogger sets the base logger; Events adds component=events. The
// default is slog.Default().
func WithEventsLogger(l *slog.Logger) EventsOption { return func(e *Events) { e.log = l } }

// WithEventsClock sets the clock of Event timestamps and deduplication.
// The default is the real clock.
func WithEventsClock(c clock.PassiveClock) EventsOption {
	return func(e *Events) { e.clock = c }
}

// Events posts Kubernetes Events (core/v1) on the agent's pod. Its methods
// never block and are safe for concurrent use; a nil *Events, or one made
// without a client or without the pod's name and namespace, does nothing.
// Events are sent by Run, which main must run.
type Events struct {
	client Client // nil: disabled
	opts   EventsOptions
	log    *slog.Logger
	clock  clock.PassiveClock
	queue  chan *corev1.Event
	ran    atomic.Bool

	mu       sync.Mutex
	recent   map[string]time.Time // dedup key -> when posted
	lastName int64                // last UnixNano used in an Event name
}

// NewEvents returns Events about the pod opts names, created through
// client. Without a client, PodName or PodNamespace the result is a no-op
// (which it logs once): Events are optional, never an error.
func NewEvents(client Client, opts EventsOptions, options ...EventsOption) *Events {
	e := &Events{
		opts:   opts,
		log:    slog.Default(),
		clock:  clock.RealClock{},
		recent: map[string]time.Time{},
	}
	for _, o := range options {
		o(e)
	}
	e.log = e.log.With("component", "events")
	switch {
	case client == nil:
		e.log.Info("no Kubernetes API access: Kubernetes Events disabled")
	case opts.PodName == "" || opts.PodNamespace == "":
		e.log.Info("POD_NAME or POD_NAMESPACE not set: Kubernetes Events disabled")
	default:
		e.client = client
		e.queue = make(chan *corev1.Event, EventQueueSize)
	}
	return e
}

// Enabled reports whether Events are posted at all.
func (e *Events) Enabled() bool { return e != nil && e.client != nil }

// Run sends queued Events until ctx is done, then returns nil; queued
// Events are then dropped. Each create has its own timeout and is not
// retried: a failure is logged. Run may be called once.
func (e *Events) Run(ctx context.Context) error {
	if e == nil {
		<-ctx.Done()
		return nil
	}
	if !e.ran.CompareAndSwap(false, true) {
		return fmt.Errorf("events: Run called twice")
	}
	if e.client == nil {
		<-ctx.Done()
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-e.queue:
			e.send(ctx, ev)
		}
	}
}

func (e *Events) send(ctx context.Context, ev *corev1.Event) {
	sendCtx, cancel := context.WithTimeout(ctx, eventTimeout)
	defer cancel()
	_, err := e.client.Events(ev.Namespace).Create(sendCtx, ev, metav1.CreateOptions{})
	if err != nil {
		if ctx.Err() != nil {
			return // shutting down
		}
		e.log.Warn("posting Kubernetes Event failed", "reason", ev.Reason, "type", ev.Type,
			"message", ev.Message, "err", err)
		// Let the same Event be posted again.
		e.mu.Lock()
		delete(e.recent, dedupKey(ev.Type, ev.Reason, ev.Message))
		e.mu.Unlock()
		return
	}
	e.log.Debug("posted Kubernetes Event", "reason", ev.Reason, "type", ev.Type, "message", ev.Message)
}

// RoleChanged posts that the node's role changed from one role to another;
// cause says why (for example which label value).
func (e *Events) RoleChanged(from, to snapshot.Role, cause string) {
	e.post(corev1.EventTypeNormal, ReasonRoleChanged,
		fmt.Sprintf("Role changed from %s to %s (%s)", from, to, cause))
}

// UnknownRoleLabel posts a Warning that the role label has a value that is
// not a role, so the default role is used.
func (e *Events) UnknownRoleLabel(key, value string, def snapshot.Role) {
	err := &UnknownRoleError{Key: key, Value: value, Default: def}
	e.post(corev1.EventTypeWarning, ReasonUnknownRoleLabel, upperFirst(err.Error()))
}

// ExitNodeSwitched posts that the worker switched exit nodes, from one to
// another ("" for none), and why (initial, offline, ping, failback, ...).
func (e *Events) ExitNodeSwitched(from, to, reason string) {
	if from == "" {
		from = "none"
	}
	if to == "" {
		to = "none"
	}
	e.post(corev1.EventTypeNormal, ReasonExitNodeSwitched,
		fmt.Sprintf("Exit node switched from %s to %s: %s", from, to, reason))
}

// ExitRouteNotApproved posts a Warning that this exit node advertises the
// exit routes but the control server has not approved them.
func (e *Events) ExitRouteNotApproved() {
	e.post(corev1.EventTypeWarning, ReasonExitRouteNotApproved,
		"Exit routes 0.0.0.0/0 and ::/0 advertised but not approved by the control server; "+
			"approve them in the admin console or with autoApprovers")
}

// post queues an Event unless an identical one was posted within
// EventDedupWindow. It never blocks.
func (e *Events) post(eventType, reason, msg string) {
	if !e.Enabled() {
		return
	}
	if len(msg) > maxMessage {
		msg = msg[:maxMessage-3] + "..."
	}
	now := e.clock.Now()
	key := dedupKey(eventType, reason, msg)

	e.mu.Lock()
	if t, ok := e.recent[key]; ok && now.Sub(t) < EventDedupWindow {
		e.mu.Unlock()
		e.log.Debug("not posting duplicate Kubernetes Event", "reason", reason, "message", msg)
		return
	}
	for k, t := range e.recent {
		if now.Sub(t) >= EventDedupWindow {
			delete(e.recent, k)
		}
	}
	e.recent[key] = now
	// Event names must be unique: <pod>.<nanoseconds in hex>, strictly
	// increasing even when the clock is not.
	nanos := max(now.UnixNano(), e.lastName+1)
	e.lastName = nanos
	e.mu.Unlock()

	prefix := e.opts.PodName
	if len(prefix) > 200 {
		prefix = prefix[:200]
	}
	ts := metav1.NewTime(now)
	ev := &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{
			Name:      fmt.Sprintf("%s.%x", prefix, nanos),
			Namespace: e.opts.PodNamespace,
		},
		InvolvedObject: corev1.ObjectReference{
			APIVersion: "v1",
			Kind:       "Pod",
			Namespace:  e.opts.PodNamespace,
			Name:       e.opts.PodName,
			UID:        types.UID(e.opts.PodUID),
		},
		Reason:              reason,
		Message:             msg,
		Type:                eventType,
		FirstTimestamp:      ts,
		LastTimestamp:       ts,
		Count:               1,
		Source:              corev1.EventSource{Component: Component, Host: e.opts.NodeName},
		ReportingController: Component,
		ReportingInstance:   e.opts.PodName,
	}
	select {
	case e.queue <- ev:
	default:
		e.mu.Lock()
		delete(e.recent, key)
		e.mu.Unlock()
		e.log.Warn("Kubernetes Event queue full; dropping Event", "reason", reason, "type", eventType,
			"message", msg)
	}
}

func dedupKey(eventType, reason, msg string) string {
	return eventType + "\x00" + reason + "\x00" + msg
}

func upperFirst(s string) string {
	if s == "" || s[0] < 'a' || s[0] > 'z' {
		return s
	}
	return string(s[0]-'a'+'A') + s[1:]
}
