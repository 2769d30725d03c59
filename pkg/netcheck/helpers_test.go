package netcheck

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

// t0 is the fake clock's start.
var t0 = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

// waitTimeout bounds every wait for a condition (real time).
const waitTimeout = 10 * time.Second

// echo is an egress echo service on loopback whose answer tests change.
type echo struct {
	srv      *httptest.Server
	body     atomic.Value // string
	status   atomic.Int32
	requests atomic.Int64
}

func newEcho(t *testing.T, body string) *echo {
	t.Helper()
	e := &echo{}
	e.set(http.StatusOK, body)
	e.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.requests.Add(1)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(int(e.status.Load()))
		io.WriteString(w, e.body.Load().(string))
	}))
	t.Cleanup(e.srv.Close)
	return e
}

func (e *echo) set(status int, body string) {
	e.body.Store(body)
	e.status.Store(int32(status))
}

// URL is the URL given to the Checker (and named in reasons).
func (e *echo) URL() string { return e.srv.URL + "/" }

// fakeDurations is a DurationObserver that remembers the check names.
type fakeDurations struct {
	mu     sync.Mutex
	checks []string
}

var _ DurationObserver = (*fakeDurations)(nil)

func (f *fakeDurations) Observe(check string, _ time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.checks = append(f.checks, check)
}

func (f *fakeDurations) observed(check string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Contains(f.checks, check)
}

// logCapture is a slog handler that sends every message to ch (dropping
// them when nobody reads) and, when all is set, appends every record with
// its attributes to all.
type logCapture struct {
	ch    chan string
	all   *logText
	attrs []slog.Attr
}

func (h logCapture) Enabled(context.Context, slog.Level) bool { return true }
func (h logCapture) Handle(_ context.Context, r slog.Record) error {
	select {
	case h.ch <- r.Message:
	default:
	}
	if h.all != nil {
		line := r.Level.String() + " " + r.Message
		for _, a := range h.attrs {
			line += " " + a.String()
		}
		r.Attrs(func(a slog.Attr) bool {
			line += " " + a.String()
			return true
		})
		h.all.add(line)
	}
	return nil
}
func (h logCapture) WithAttrs(as []slog.Attr) slog.Handler {
	h.attrs = append(slices.Clip(h.attrs), as...)
	return h
}
func (h logCapture) WithGroup(string) slog.Handler { return h }

// logText is every log line of a Checker, attributes included.
type logText struct {
	mu    sync.Mutex
	lines []string
}

func (l *logText) add(line string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, line)
}

func (l *logText) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// harness runs a Checker on a fake clock, a pedantic registry and a fresh
// store, and stops it at the end of the test.
type harness struct {
	t         *testing.T
	store     *snapshot.Store
	clock     *testingclock.FakeClock
	reg       *prometheus.Registry
	durations *fakeDurations
	logs      chan string
	logText   *logText // every log line, attributes included
	c         *Checker
}

func start(t *testing.T, opts Options, extra ...Option) *harness {
	t.Helper()
	h := &harness{
		t:         t,
		store:     snapshot.New(t0, snapshot.RoleWorker),
		clock:     testingclock.NewFakeClock(t0),
		reg:       prometheus.NewPedanticRegistry(),
		durations: &fakeDurations{},
		logs:      make(chan string, 1000),
		logText:   &logText{},
	}
	options := append([]Option{
		WithClock(h.clock),
		WithRegisterer(h.reg),
		WithDurations(h.durations),
		WithRand(func() float64 { return 0.5 }), // no jitter
		WithLogger(slog.New(logCapture{ch: h.logs, all: h.logText})),
	}, extra...)
	c, err := New(h.store, opts, options...)
	if err != nil {
		t.Fatal(err)
	}
	h.c = c
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(waitTimeout):
			t.Errorf("Run did not return within %v of cancel", waitTimeout)
		}
	})
	return h
}

// waitCheck waits until the named check satisfies ok, and returns it.
func (h *harness) waitCheck(name string, ok func(snapshot.Check) bool) snapshot.Check {
	h.t.Helper()
	deadline := time.After(waitTimeout)
	for {
		changed := h.store.Changed()
		if c, found := h.store.Load().Checks[name]; found && ok(c) {
			return c
		}
		select {
		case <-changed:
		case <-deadline:
			c, found := h.store.Load().Checks[name]
			h.t.Fatalf("check %q: condition not met within %v; last: %+v (published: %v)", name, waitTimeout, c, found)
		}
	}
}

// checkedAt matches a check result made at t (the fake clock's time).
func checkedAt(t time.Time) func(snapshot.Check) bool {
	return func(c snapshot.Check) bool { return c.CheckedAt.Equal(t) }
}

// first waits for the first result of the named check.
func (h *harness) first(name string) snapshot.Check {
	h.t.Helper()
	return h.waitCheck(name, checkedAt(t0))
}

// recheck moves the fake clock by a second (far from any interval), calls
// Trigger and waits for the egress round it causes.
func (h *harness) recheck() snapshot.Check {
	h.t.Helper()
	h.clock.Step(time.Second)
	want := h.clock.Now()
	h.c.Trigger()
	return h.waitCheck(CheckEgressIP, checkedAt(want))
}

// waitWaiters waits until n timers and tickers wait on the fake clock
// (polled with a deadline: the fake clock has no notification).
func (h *harness) waitWaiters(n int) {
	h.t.Helper()
	deadline := time.After(waitTimeout)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for h.clock.Waiters() != n {
		select {
		case <-tick.C:
		case <-deadline:
			h.t.Fatalf("fake clock: %d waiters, want %d", h.clock.Waiters(), n)
		}
	}
}

// waitLog waits for a log message.
func (h *harness) waitLog(msg string) {
	h.t.Helper()
	deadline := time.After(waitTimeout)
	for {
		select {
		case m := <-h.logs:
			if m == msg {
				return
			}
		case <-deadline:
			h.t.Fatalf("no log %q within %v", msg, waitTimeout)
		}
	}
}

// egressIP returns EgressIP as a string, "" when unknown.
func (h *harness) egressIP() string {
	ip, ok := h.c.EgressIP()
	if !ok {
		return ""
	}
	return ip.String()
}
