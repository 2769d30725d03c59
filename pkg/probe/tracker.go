package probe

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"time"

	"k8s.io/utils/clock"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

// DefaultTrackerInterval is how often the Tracker re-evaluates without a
// snapshot change, for time-based transitions (liveness grace, stuck loops).
const DefaultTrackerInterval = time.Second

// HeartbeatLoop is the loop name the Tracker beats under.
const HeartbeatLoop = "probe"

// Option configures the Tracker, the HTTP handlers and the --listen server
// parts (NewServer, LimitListener, LocalAddrs); each says which it uses.
type Option func(*settings)

type settings struct {
	clock          clock.PassiveClock
	logger         *slog.Logger
	interval       time.Duration
	interfaceAddrs func() ([]net.Addr, error)
	allow          func(netip.Addr) bool // LimitListener: who besides the local peers
}

func newSettings(options []Option) settings {
	s := settings{clock: clock.RealClock{}, logger: slog.Default(), interval: DefaultTrackerInterval, interfaceAddrs: net.InterfaceAddrs}
	for _, o := range options {
		o(&s)
	}
	s.logger = s.logger.With("component", "probe")
	return s
}

// WithClock sets the clock the handlers evaluate with, and LimitListener
// and LocalAddrs go by (default: real time). NewTracker takes its clock as
// a parameter instead.
func WithClock(c clock.PassiveClock) Option {
	return func(s *settings) {
		if c != nil {
			s.clock = c
		}
	}
}

// WithLogger sets the logger (default: slog.Default()); component=probe is
// added to it.
func WithLogger(l *slog.Logger) Option {
	return func(s *settings) {
		if l != nil {
			s.logger = l
		}
	}
}

// WithInterval sets how often the Tracker re-evaluates without a change
// (default DefaultTrackerInterval).
func WithInterval(d time.Duration) Option {
	return func(s *settings) {
		if d > 0 {
			s.interval = d
		}
	}
}

// Tracker follows the snapshot: it evaluates it at every change (and every
// interval, for time-based transitions), records the first time the node
// is ready with Store.MarkReady, logs readiness and liveness transitions,
// and beats the "probe" heartbeat.
type Tracker struct {
	store *snapshot.Store
	opts  Options
	clock clock.WithTicker
	s     settings

	// state of the last evaluation, owned by Run's goroutine
	evaluated   bool
	ready, live bool
	failing     []string // names of the failing readiness checks
}

// NewTracker returns a Tracker of store. A nil clk means real time.
func NewTracker(store *snapshot.Store, opts Options, clk clock.WithTicker, options ...Option) *Tracker {
	if clk == nil {
		clk = clock.RealClock{}
	}
	return &Tracker{store: store, opts: opts, clock: clk, s: newSettings(options)}
}

// Run tracks the snapshot until ctx is done; it then returns nil.
func (t *Tracker) Run(ctx context.Context) error {
	ticker := t.clock.NewTicker(t.s.interval)
	defer ticker.Stop()
	for {
		changed := t.store.Changed() // before Load: no change is missed
		now := t.clock.Now()
		// Beat first: after a long pause (a stepped clock, a suspended
		// VM) the tracker must not find itself stuck.
		t.store.Beat(HeartbeatLoop, now)
		t.observe(Evaluate(t.store.Load(), t.opts, now), now)
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-ticker.C():
		}
	}
}

func (t *Tracker) observe(rep Report, now time.Time) {
	log := t.s.logger
	// Store.MarkReady signals a change even when it is a no-op, so call it
	// only until it took: otherwise a ready node would spin this loop.
	firstReady := rep.Ready.OK && t.store.Load().FirstReadyAt.IsZero() && t.store.MarkReady(now)
	if firstReady {
		sn := t.store.Load()
		log.Info("node ready for the first time", "role", sn.Role,
			"startup_duration", sn.FirstReadyAt.Sub(sn.StartedAt).String())
	}

	failing := checkNames(rep.Ready.Failed())
	switch {
	case !t.evaluated && !rep.Ready.OK:
		log.Info("node not ready yet", "failing", reasons(rep.Ready.Failed()))
	case t.evaluated && t.ready && !rep.Ready.OK:
		log.Warn("node is no longer ready", "failing", reasons(rep.Ready.Failed()))
	case t.evaluated && !t.ready && rep.Ready.OK && !firstReady:
		log.Info("node is ready")
	case t.evaluated && !rep.Ready.OK && !slices.Equal(failing, t.failing):
		log.Info("node still not ready", "failing", reasons(rep.Ready.Failed()))
	}

	switch {
	case (!t.evaluated || t.live) && !rep.Live.OK:
		log.Error("liveness failing, kubelet will restart the pod", "failing", reasons(rep.Live.Failed()))
	case t.evaluated && !t.live && rep.Live.OK:
		log.Info("liveness recovered")
	}

	t.evaluated, t.ready, t.live, t.failing = true, rep.Ready.OK, rep.Live.OK, failing
}

func checkNames(cs []CheckResult) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.Name
	}
	return out
}

func reasons(cs []CheckResult) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.Name + ": " + c.Reason
	}
	return out
}
