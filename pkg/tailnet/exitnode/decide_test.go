package exitnode

import (
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

var t0 = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

func candPeer(id, host, ip string) snapshot.Peer {
	return snapshot.Peer{ID: id, HostName: host, TailscaleIPs: addrs(ip), Online: true, ExitNodeOption: true}
}

var (
	e1 = candPeer("n1", "exit1", "100.64.0.1")
	e2 = candPeer("n2", "exit2", "100.64.0.2")
	e3 = candPeer("n3", "exit3", "100.64.0.3")

	up         = Health{Online: true, Offered: true, LastPingOK: true}
	unpinged   = Health{Online: true, Offered: true}
	offline    = Health{Offered: true, LastPingOK: true}
	notOffered = Health{Online: true, LastPingOK: true}
)

// pingDown is a peer the Detection found down, n pings unanswered.
func pingDown(n int) Health {
	return Health{Online: true, Offered: true, PingDown: true, Silence: 1500 * time.Millisecond, Unanswered: n}
}

func TestDecide(t *testing.T) {
	using := func(id string) State {
		return State{Chosen: true, Current: id, Reason: ReasonInitial, Switches: map[string]uint64{ReasonInitial: 1}}
	}
	tests := []struct {
		name string
		st   State
		in   Input
		now  time.Time

		wantID              string
		wantSwitched        bool
		wantReason          string // when switched
		wantHealthy         bool
		wantFallback        Fallback
		wantBlockImpossible bool
		wantSwitches        map[string]uint64
		wantDetail          string // substring
	}{
		{
			name:   "initial: first healthy candidate",
			in:     Input{Candidates: []snapshot.Peer{e1, e2}, Health: map[string]Health{"n1": up, "n2": up}},
			wantID: "n1", wantSwitched: true, wantReason: ReasonInitial, wantHealthy: true,
			wantSwitches: map[string]uint64{ReasonInitial: 1}, wantDetail: "exit1 is the first healthy candidate",
		},
		{
			name:   "initial: not pinged yet is healthy",
			in:     Input{Candidates: []snapshot.Peer{e1, e2}, Health: map[string]Health{"n1": unpinged, "n2": unpinged}},
			wantID: "n1", wantSwitched: true, wantReason: ReasonInitial, wantHealthy: true,
			wantSwitches: map[string]uint64{ReasonInitial: 1},
		},
		{
			name:   "initial: skips an offline candidate",
			in:     Input{Candidates: []snapshot.Peer{e1, e2}, Health: map[string]Health{"n1": offline, "n2": up}},
			wantID: "n2", wantSwitched: true, wantReason: ReasonInitial, wantHealthy: true,
			wantSwitches: map[string]uint64{ReasonInitial: 1},
		},
		{
			name:   "initial: best candidate wins over the exit node prefs use",
			in:     Input{Candidates: []snapshot.Peer{e1, e2}, Health: map[string]Health{"n1": up, "n2": up}, CurrentID: "n2"},
			wantID: "n1", wantSwitched: true, wantReason: ReasonInitial, wantHealthy: true,
			wantSwitches: map[string]uint64{ReasonInitial: 1},
		},
		{
			name:   "healthy current: stay",
			st:     using("n1"),
			in:     Input{Candidates: []snapshot.Peer{e1, e2}, Health: map[string]Health{"n1": up, "n2": up}},
			wantID: "n1", wantHealthy: true, wantSwitches: map[string]uint64{ReasonInitial: 1},
		},
		{
			name:   "offline: switch to the next healthy candidate",
			st:     using("n1"),
			in:     Input{Candidates: []snapshot.Peer{e1, e2}, Health: map[string]Health{"n1": offline, "n2": up}},
			wantID: "n2", wantSwitched: true, wantReason: ReasonOffline, wantHealthy: true,
			wantSwitches: map[string]uint64{ReasonInitial: 1, ReasonOffline: 1},
			wantDetail:   "exit1 is offline: switching to exit2",
		},
		{
			name:   "offline: skips unhealthy candidates",
			st:     using("n1"),
			in:     Input{Candidates: []snapshot.Peer{e1, e2, e3}, Health: map[string]Health{"n1": offline, "n2": pingDown(3), "n3": up}},
			wantID: "n3", wantSwitched: true, wantReason: ReasonOffline, wantHealthy: true,
			wantSwitches: map[string]uint64{ReasonInitial: 1, ReasonOffline: 1},
		},
		{
			name:   "gone from the peer list counts as offline",
			st:     using("n1"),
			in:     Input{Candidates: []snapshot.Peer{e2}, Health: map[string]Health{"n2": up}},
			wantID: "n2", wantSwitched: true, wantReason: ReasonOffline, wantHealthy: true,
			wantSwitches: map[string]uint64{ReasonInitial: 1, ReasonOffline: 1},
			wantDetail:   "n1 is not in the peer list",
		},
		{
			name:   "down by its pings: switch",
			st:     using("n1"),
			in:     Input{Candidates: []snapshot.Peer{e1, e2}, Health: map[string]Health{"n1": pingDown(3), "n2": up}},
			wantID: "n2", wantSwitched: true, wantReason: ReasonPing, wantHealthy: true,
			wantSwitches: map[string]uint64{ReasonInitial: 1, ReasonPing: 1},
			wantDetail:   "exit1 answered none of 3 tailnet pings in 1.5s",
		},
		{
			name:   "pings lost but not down: stay",
			st:     using("n1"),
			in:     Input{Candidates: []snapshot.Peer{e1, e2}, Health: map[string]Health{"n1": {Online: true, Offered: true, Unanswered: 7}, "n2": up}},
			wantID: "n1", wantHealthy: true, wantSwitches: map[string]uint64{ReasonInitial: 1},
		},
		{
			name: "no longer offered: switch",
			st:   using("n1"),
			// Resolve drops a peer that stops offering an exit node.
			in:     Input{Candidates: []snapshot.Peer{e2}, Health: map[string]Health{"n1": notOffered, "n2": up}},
			wantID: "n2", wantSwitched: true, wantReason: ReasonNotOffered, wantHealthy: true,
			wantSwitches: map[string]uint64{ReasonInitial: 1, ReasonNotOffered: 1},
		},
		{
			name:   "current is not a candidate: switch",
			st:     using("n9"),
			in:     Input{Candidates: []snapshot.Peer{e1}, Health: map[string]Health{"n1": up, "n9": up}},
			wantID: "n1", wantSwitched: true, wantReason: ReasonNotCandidate, wantHealthy: true,
			wantSwitches: map[string]uint64{ReasonInitial: 1, ReasonNotCandidate: 1},
		},
		{
			name:   "none healthy, block: keep the current exit node",
			st:     using("n1"),
			in:     Input{Candidates: []snapshot.Peer{e1, e2}, Health: map[string]Health{"n1": offline, "n2": pingDown(4)}, Fallback: FallbackBlock},
			wantID: "n1", wantFallback: FallbackBlock, wantSwitches: map[string]uint64{ReasonInitial: 1},
			wantDetail: "exit1 is offline; exit2 answered none of 4 tailnet pings in 1.5s): --exit-fallback=block keeps exit1",
		},
		{
			name:   "none healthy, empty fallback means block",
			st:     using("n1"),
			in:     Input{Candidates: []snapshot.Peer{e1}, Health: map[string]Health{"n1": offline}},
			wantID: "n1", wantFallback: FallbackBlock, wantSwitches: map[string]uint64{ReasonInitial: 1},
		},
		{
			name:   "none healthy, block, nothing chosen yet: keep what prefs use",
			in:     Input{Candidates: []snapshot.Peer{e1}, Health: map[string]Health{"n1": offline}, CurrentID: "n7", Fallback: FallbackBlock},
			wantID: "n7", wantFallback: FallbackBlock,
		},
		{
			name:   "none healthy, block, nothing chosen nor in prefs: first candidate",
			in:     Input{Candidates: []snapshot.Peer{e1, e2}, Health: map[string]Health{"n1": offline, "n2": offline}, Fallback: FallbackBlock},
			wantID: "n1", wantSwitched: true, wantReason: ReasonInitial, wantFallback: FallbackBlock,
			wantSwitches: map[string]uint64{ReasonInitial: 1}, wantDetail: "uses exit1, the first candidate",
		},
		{
			name:         "none healthy, block, no candidate at all: impossible",
			in:           Input{Fallback: FallbackBlock},
			wantFallback: FallbackBlock, wantBlockImpossible: true,
			wantDetail: "no exit node to block with",
		},
		{
			name:   "none healthy, direct: clear the exit node",
			st:     using("n1"),
			in:     Input{Candidates: []snapshot.Peer{e1, e2}, Health: map[string]Health{"n1": pingDown(3), "n2": offline}, Fallback: FallbackDirect},
			wantID: "", wantSwitched: true, wantReason: ReasonPing, wantFallback: FallbackDirect,
			wantSwitches: map[string]uint64{ReasonInitial: 1, ReasonPing: 1}, wantDetail: "--exit-fallback=direct cleared the exit node",
		},
		{
			name:   "none healthy, direct, nothing chosen yet: none, no switch",
			in:     Input{Candidates: []snapshot.Peer{e1}, Health: map[string]Health{"n1": offline}, CurrentID: "n1", Fallback: FallbackDirect},
			wantID: "", wantFallback: FallbackDirect,
		},
		{
			name: "recovery from block: another candidate healthy",
			st: State{Chosen: true, Current: "n1", Fallback: FallbackBlock,
				Switches: map[string]uint64{ReasonInitial: 1, ReasonOffline: 1}},
			in:     Input{Candidates: []snapshot.Peer{e1, e2}, Health: map[string]Health{"n1": offline, "n2": up}, Fallback: FallbackBlock},
			wantID: "n2", wantSwitched: true, wantReason: ReasonRecovery, wantHealthy: true,
			wantSwitches: map[string]uint64{ReasonInitial: 1, ReasonOffline: 1, ReasonRecovery: 1},
		},
		{
			name:   "recovery from block: the kept exit node healthy again",
			st:     State{Chosen: true, Current: "n1", Fallback: FallbackBlock, Switches: map[string]uint64{ReasonInitial: 1}},
			in:     Input{Candidates: []snapshot.Peer{e1, e2}, Health: map[string]Health{"n1": up, "n2": up}, Fallback: FallbackBlock},
			wantID: "n1", wantHealthy: true, wantSwitches: map[string]uint64{ReasonInitial: 1},
			wantDetail: "exit1 is healthy again",
		},
		{
			name:   "recovery from direct",
			st:     State{Chosen: true, Current: "", Fallback: FallbackDirect, Switches: map[string]uint64{ReasonInitial: 1, ReasonOffline: 1}},
			in:     Input{Candidates: []snapshot.Peer{e1, e2}, Health: map[string]Health{"n1": offline, "n2": up}, Fallback: FallbackDirect},
			wantID: "n2", wantSwitched: true, wantReason: ReasonRecovery, wantHealthy: true,
			wantSwitches: map[string]uint64{ReasonInitial: 1, ReasonOffline: 1, ReasonRecovery: 1},
		},
		{
			name:   "failback: not before FailbackAfter",
			st:     State{Chosen: true, Current: "n2", HealthySince: map[string]time.Time{"n1": t0}},
			in:     Input{Candidates: []snapshot.Peer{e1, e2}, Health: map[string]Health{"n1": up, "n2": up}, FailbackAfter: time.Minute},
			now:    t0.Add(time.Minute - time.Second),
			wantID: "n2", wantHealthy: true,
		},
		{
			name:   "failback: after FailbackAfter",
			st:     State{Chosen: true, Current: "n2", HealthySince: map[string]time.Time{"n1": t0}},
			in:     Input{Candidates: []snapshot.Peer{e1, e2}, Health: map[string]Health{"n1": up, "n2": up}, FailbackAfter: time.Minute},
			now:    t0.Add(time.Minute),
			wantID: "n1", wantSwitched: true, wantReason: ReasonFailback, wantHealthy: true,
			wantSwitches: map[string]uint64{ReasonFailback: 1}, wantDetail: "exit1 has been healthy for 1m0s",
		},
		{
			name:   "failback: needs an answered ping",
			st:     State{Chosen: true, Current: "n2", HealthySince: map[string]time.Time{"n1": t0}},
			in:     Input{Candidates: []snapshot.Peer{e1, e2}, Health: map[string]Health{"n1": unpinged, "n2": up}, FailbackAfter: time.Minute},
			now:    t0.Add(time.Hour),
			wantID: "n2", wantHealthy: true,
		},
		{
			name:   "failback: first candidate healthy long enough, not the best",
			st:     State{Chosen: true, Current: "n3", HealthySince: map[string]time.Time{"n1": t0.Add(50 * time.Second), "n2": t0}},
			in:     Input{Candidates: []snapshot.Peer{e1, e2, e3}, Health: map[string]Health{"n1": up, "n2": up, "n3": up}, FailbackAfter: time.Minute},
			now:    t0.Add(time.Minute),
			wantID: "n2", wantSwitched: true, wantReason: ReasonFailback, wantHealthy: true,
			wantSwitches: map[string]uint64{ReasonFailback: 1},
		},
		{
			name:   "failback: zero FailbackAfter is immediate once pinged",
			st:     State{Chosen: true, Current: "n2"},
			in:     Input{Candidates: []snapshot.Peer{e1, e2}, Health: map[string]Health{"n1": up, "n2": up}},
			now:    t0,
			wantID: "n1", wantSwitched: true, wantReason: ReasonFailback, wantHealthy: true,
			wantSwitches: map[string]uint64{ReasonFailback: 1},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			now := tc.now
			if now.IsZero() {
				now = t0
			}
			before := maps.Clone(tc.st.Switches)
			sinceBefore := maps.Clone(tc.st.HealthySince)
			d, st := Decide(tc.st, tc.in, now)
			if d.ExitNodeID != tc.wantID || d.Switched != tc.wantSwitched || d.Healthy != tc.wantHealthy ||
				d.Fallback != tc.wantFallback || d.BlockImpossible != tc.wantBlockImpossible {
				t.Errorf("Decide = %+v\nwant ID %q switched %v healthy %v fallback %q blockImpossible %v",
					d, tc.wantID, tc.wantSwitched, tc.wantHealthy, tc.wantFallback, tc.wantBlockImpossible)
			}
			if tc.wantSwitched && d.Reason != tc.wantReason {
				t.Errorf("reason = %q, want %q", d.Reason, tc.wantReason)
			}
			if !strings.Contains(d.Detail, tc.wantDetail) {
				t.Errorf("detail = %q, want it to contain %q", d.Detail, tc.wantDetail)
			}
			if !maps.Equal(st.Switches, tc.wantSwitches) {
				t.Errorf("switches = %v, want %v", st.Switches, tc.wantSwitches)
			}
			if st.Current != d.ExitNodeID || st.Fallback != d.Fallback {
				t.Errorf("state current %q fallback %q, decision %q %q", st.Current, st.Fallback, d.ExitNodeID, d.Fallback)
			}
			if d.Switched && (!st.SwitchedAt.Equal(now) || st.Reason != d.Reason) {
				t.Errorf("state after a switch: at %v reason %q", st.SwitchedAt, st.Reason)
			}
			if !maps.Equal(tc.st.Switches, before) || !maps.Equal(tc.st.HealthySince, sinceBefore) {
				t.Errorf("Decide modified its input state")
			}
		})
	}
}

// step is one Decide call in a sequence.
type step struct {
	at     time.Duration // after t0
	health map[string]Health
	wantID string
	reason string // reason of a switch expected at this step, "" for none
}

func runSteps(t *testing.T, in Input, steps []step) State {
	t.Helper()
	var st State
	for i, s := range steps {
		in.Health = s.health
		d, next := Decide(st, in, t0.Add(s.at))
		if d.ExitNodeID != s.wantID {
			t.Fatalf("step %d (t0+%v): exit node %q, want %q (%s)", i, s.at, d.ExitNodeID, s.wantID, d.Detail)
		}
		switch {
		case s.reason == "" && d.Switched:
			t.Fatalf("step %d (t0+%v): unexpected switch %q: %s", i, s.at, d.Reason, d.Detail)
		case s.reason != "" && (!d.Switched || d.Reason != s.reason):
			t.Fatalf("step %d (t0+%v): switched %v reason %q, want a switch for %q", i, s.at, d.Switched, d.Reason, s.reason)
		}
		st = next
	}
	return st
}

func TestDecideFailbackTiming(t *testing.T) {
	in := Input{Candidates: []snapshot.Peer{e1, e2}, FailbackAfter: time.Minute, Fallback: FallbackBlock}
	both := map[string]Health{"n1": up, "n2": up}
	st := runSteps(t, in, []step{
		{0, both, "n1", ReasonInitial},
		{5 * time.Second, map[string]Health{"n1": offline, "n2": up}, "n2", ReasonOffline},
		{10 * time.Second, both, "n2", ""}, // healthy from here
		{30 * time.Second, both, "n2", ""},
		{69 * time.Second, both, "n2", ""},
		{70 * time.Second, both, "n1", ReasonFailback},
		{80 * time.Second, both, "n1", ""},
	})
	want := map[string]uint64{ReasonInitial: 1, ReasonOffline: 1, ReasonFailback: 1}
	if !maps.Equal(st.Switches, want) {
		t.Errorf("switches = %v, want %v", st.Switches, want)
	}
}

func TestDecideFlappingResetsFailbackTimer(t *testing.T) {
	in := Input{Candidates: []snapshot.Peer{e1, e2}, FailbackAfter: time.Minute, Fallback: FallbackBlock}
	both := map[string]Health{"n1": up, "n2": up}
	e1Down := map[string]Health{"n1": offline, "n2": up}
	e1PingDown := map[string]Health{"n1": pingDown(3), "n2": up}
	e1OnePingLost := map[string]Health{"n1": {Online: true, Offered: true, Unanswered: 1}, "n2": up}
	runSteps(t, in, []step{
		{0, e1Down, "n2", ReasonInitial},
		{10 * time.Second, both, "n2", ""}, // healthy since 10s
		{40 * time.Second, e1Down, "n2", ""},
		{50 * time.Second, both, "n2", ""},           // healthy since 50s
		{70 * time.Second, both, "n2", ""},           // 60s after the first recovery: too early
		{100 * time.Second, e1PingDown, "n2", ""},    // pings failing: unhealthy again
		{102 * time.Second, both, "n2", ""},          // healthy since 102s
		{150 * time.Second, e1OnePingLost, "n2", ""}, // one lost ping is no flap, but no failback without an answer
		{161 * time.Second, e1OnePingLost, "n2", ""},
		{162 * time.Second, both, "n1", ReasonFailback},
	})
}

func TestDecideFallbackSequences(t *testing.T) {
	t.Run("block", func(t *testing.T) {
		in := Input{Candidates: []snapshot.Peer{e1, e2}, FailbackAfter: time.Minute, Fallback: FallbackBlock}
		runSteps(t, in, []step{
			{0, map[string]Health{"n1": up, "n2": up}, "n1", ReasonInitial},
			{time.Second, map[string]Health{"n1": offline, "n2": up}, "n2", ReasonOffline},
			{2 * time.Second, map[string]Health{"n1": offline, "n2": offline}, "n2", ""}, // blocked on n2
			{3 * time.Second, map[string]Health{"n1": up, "n2": offline}, "n1", ReasonRecovery},
		})
	})
	t.Run("direct", func(t *testing.T) {
		in := Input{Candidates: []snapshot.Peer{e1, e2}, FailbackAfter: time.Minute, Fallback: FallbackDirect}
		st := runSteps(t, in, []step{
			{0, map[string]Health{"n1": up, "n2": up}, "n1", ReasonInitial},
			{time.Second, map[string]Health{"n1": pingDown(3), "n2": offline}, "", ReasonPing},
			{2 * time.Second, map[string]Health{"n1": pingDown(4), "n2": offline}, "", ""},
			{3 * time.Second, map[string]Health{"n1": pingDown(4), "n2": up}, "n2", ReasonRecovery},
		})
		if st.Fallback != "" {
			t.Errorf("fallback %q after recovery", st.Fallback)
		}
	})
	t.Run("block impossible, then a candidate appears", func(t *testing.T) {
		in := Input{FailbackAfter: time.Minute, Fallback: FallbackBlock}
		d, st := Decide(State{}, in, t0)
		if !d.BlockImpossible || d.ExitNodeID != "" || st.Chosen {
			t.Fatalf("no candidates: %+v, chosen %v", d, st.Chosen)
		}
		in.Candidates = []snapshot.Peer{e1}
		in.Health = map[string]Health{"n1": offline}
		d, st = Decide(st, in, t0.Add(time.Second))
		if d.BlockImpossible || d.ExitNodeID != "n1" || d.Reason != ReasonInitial || d.Healthy {
			t.Fatalf("unhealthy candidate: %+v", d)
		}
		in.Health = map[string]Health{"n1": up}
		d, _ = Decide(st, in, t0.Add(2*time.Second))
		if d.Switched || d.ExitNodeID != "n1" || !d.Healthy || d.Fallback != "" {
			t.Fatalf("healthy candidate: %+v", d)
		}
	})
}
