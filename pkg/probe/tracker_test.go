package probe

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	testingclock "k8s.io/utils/clock/testing"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

// syncBuffer is a log sink safe for the tracker goroutine and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitFor polls cond until it holds or a deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		case <-tick.C:
		}
	}
}

func TestTracker(t *testing.T) {
	clk := testingclock.NewFakeClock(t0)
	st := snapshot.New(t0, snapshot.RoleWorker)
	var logs syncBuffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	opts := DefaultOptions()
	opts.RoleChecks = map[snapshot.Role][]string{snapshot.RoleWorker: {"egress-ip"}}
	tr := NewTracker(st, opts, clk, WithLogger(logger))

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tr.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	hasLog := func(s string) func() bool {
		return func() bool { return strings.Contains(logs.String(), s) }
	}
	defer func() {
		if t.Failed() {
			t.Logf("logs:\n%s", logs.String())
		}
	}()

	// First evaluation: not ready, says why, and beats.
	waitFor(t, "first heartbeat", func() bool { return !st.Load().Heartbeats[HeartbeatLoop].IsZero() })
	waitFor(t, "not ready log", hasLog(`msg="node not ready yet"`))
	if got := st.Load().Heartbeats[HeartbeatLoop]; !got.Equal(t0) {
		t.Errorf("heartbeat at %v, want %v", got, t0)
	}
	for _, want := range []string{"component=probe", "tailscaled: tailscaled is not running", "egress-ip: not checked yet"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs.String())
		}
	}

	// The node becomes ready: first ready is recorded at the clock's time.
	clk.SetTime(t0.Add(4 * time.Second))
	sn := healthy(snapshot.RoleWorker)
	st.SetSupervisor(sn.Supervisor)
	st.SetTailnet(sn.Tailnet)
	st.SetCheck("egress-ip", snapshot.Check{OK: true})
	waitFor(t, "first ready", func() bool { return !st.Load().FirstReadyAt.IsZero() })
	if got := st.Load().FirstReadyAt; !got.Equal(t0.Add(4 * time.Second)) {
		t.Errorf("FirstReadyAt = %v, want start+4s", got)
	}
	waitFor(t, "first ready log", hasLog("startup_duration=4s"))

	// Ready -> not ready names the failing check.
	st.SetCheck("egress-ip", snapshot.Check{Reason: "egress IP 203.0.113.7 is not one of 198.51.100.1"})
	waitFor(t, "not ready log", hasLog(`msg="node is no longer ready" component=probe failing="[egress-ip: egress IP 203.0.113.7 is not one of 198.51.100.1]"`))

	// Back to ready; first ready does not move.
	st.SetCheck("egress-ip", snapshot.Check{OK: true})
	waitFor(t, "ready log", hasLog(`msg="node is ready"`))
	if got := st.Load().FirstReadyAt; !got.Equal(t0.Add(4 * time.Second)) {
		t.Errorf("FirstReadyAt moved to %v", got)
	}

	// tailscaled dies; liveness fails only after the grace, which the
	// tracker notices from its ticker alone (no snapshot change).
	st.SetSupervisor(snapshot.Supervisor{DownSince: clk.Now(), LastExit: "signal: killed", Restarts: 1})
	waitFor(t, "down log", hasLog("tailscaled: tailscaled is not running (down for 0s, last exit: signal: killed)"))
	if strings.Contains(logs.String(), "liveness failing") {
		t.Fatalf("liveness failed within grace:\n%s", logs.String())
	}
	waitFor(t, "ticker", clk.HasWaiters)
	clk.Step(DefaultLivenessGrace + time.Second)
	waitFor(t, "liveness log", hasLog(`level=ERROR msg="liveness failing, kubelet will restart the pod" component=probe failing="[tailscaled: tailscaled has been down for 2m1s (liveness grace 2m0s), last exit: signal: killed]"`))
	waitFor(t, "heartbeat after step", func() bool {
		return st.Load().Heartbeats[HeartbeatLoop].Equal(clk.Now())
	})

	st.SetSupervisor(snapshot.Supervisor{Running: true, PID: 9, Restarts: 1, StartedAt: clk.Now()})
	waitFor(t, "liveness recovered log", hasLog(`msg="liveness recovered"`))
}

// TestTrackerQuiet: once the first ready is recorded, an evaluation that
// changes nothing does not signal the store (which would spin Run).
func TestTrackerQuiet(t *testing.T) {
	st := newStore(healthy(snapshot.RoleNone))
	st.MarkReady(t0.Add(time.Second))
	tr := NewTracker(st, DefaultOptions(), nil, WithLogger(slog.New(slog.DiscardHandler)))
	changed := st.Changed()
	for range 3 {
		rep := Evaluate(st.Load(), tr.opts, now)
		if !rep.Ready.OK {
			t.Fatalf("not ready: %v", rep.Ready.Failed())
		}
		tr.observe(rep, now)
	}
	select {
	case <-changed:
		t.Error("observing a ready node signalled a snapshot change")
	default:
	}
}

func TestTrackerStopsOnCancel(t *testing.T) {
	st := snapshot.New(t0, snapshot.RoleNone)
	tr := NewTracker(st, DefaultOptions(), nil, WithLogger(slog.New(slog.DiscardHandler)), WithInterval(time.Hour))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := tr.Run(ctx); err != nil {
		t.Errorf("Run after cancel: %v", err)
	}
	if st.Load().Heartbeats[HeartbeatLoop].IsZero() {
		t.Error("no heartbeat")
	}
}
