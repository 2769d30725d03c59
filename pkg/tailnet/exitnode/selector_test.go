package exitnode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
	"k8s.io/utils/clock"
	testingclock "k8s.io/utils/clock/testing"
	"tailscale.com/ipn/ipnstate"
)

type harness struct {
	t      *testing.T
	store  *snapshot.Store
	clock  *testingclock.FakeClock
	real   bool // run on the real clock (set by a prep function); clock is then unused
	setter *fakeSetter
	pinger *fakePinger
	sel    *Selector
}

func testPeers() []snapshot.Peer {
	return []snapshot.Peer{
		candPeer("n1", "exit1", "100.64.0.1"),
		candPeer("n2", "exit2", "100.64.0.2"),
		{ID: "n9", HostName: "worker9", TailscaleIPs: addrs("100.64.0.9"), Online: true},
	}
}

// newHarness starts a Selector for a worker whose tailscaled is Running
// with peers. The fake setter reflects a successful call in the
// snapshot's prefs, as the tailnet Manager does through the IPN bus.
func newHarness(t *testing.T, opts Options, peers []snapshot.Peer, prep ...func(*harness)) *harness {
	t.Helper()
	h := &harness{
		t:      t,
		store:  snapshot.New(t0, snapshot.RoleWorker),
		clock:  testingclock.NewFakeClock(t0),
		setter: &fakeSetter{},
		pinger: newFakePinger(),
	}
	h.store.SetTailnet(snapshot.Tailnet{Connected: true, BackendState: "Running", Peers: peers})
	h.setter.onSet = func(id string) {
		h.store.UpdateTailnet(func(tn *snapshot.Tailnet) { tn.ExitNodeID = id })
	}
	for _, p := range prep {
		p(h)
	}
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	var c clock.WithTicker = h.clock
	if h.real {
		c = clock.RealClock{}
	}
	sel, err := New(h.store, h.setter, h.pinger, opts, WithClock(c), WithLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	h.sel = sel
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sel.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	return h
}

// waitFor waits until cond holds for the snapshot, failing after a
// deadline.
func (h *harness) waitFor(what string, cond func(*snapshot.Snapshot) bool) *snapshot.Snapshot {
	h.t.Helper()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for {
		changed := h.store.Changed()
		sn := h.store.Load()
		if cond(sn) {
			return sn
		}
		select {
		case <-changed:
		case <-deadline.C:
			h.t.Fatalf("timed out waiting for %s; exit node %+v; checks %+v; setter calls %q",
				what, sn.ExitNode, sn.Checks, h.setter.Calls())
		}
	}
}

// waitExitNode waits until id is the choice and the (fake) setter has
// put it into the prefs: setter calls run in the background.
func (h *harness) waitExitNode(id string) *snapshot.Snapshot {
	h.t.Helper()
	return h.waitFor("exit node "+id, func(sn *snapshot.Snapshot) bool {
		return sn.ExitNode.CurrentID == id && sn.Tailnet.ExitNodeID == id
	})
}

func (h *harness) waitCheck(ok bool, reason string) *snapshot.Snapshot {
	h.t.Helper()
	return h.waitFor(fmt.Sprintf("check ok=%v reason~%q", ok, reason), func(sn *snapshot.Snapshot) bool {
		c, found := sn.Checks[CheckName]
		return found && c.OK == ok && strings.Contains(c.Reason, reason)
	})
}

// waitRound waits for the decision after the ping round at the fake
// clock's current time: the check is republished with that ping's time.
func (h *harness) waitRound() *snapshot.Snapshot {
	h.t.Helper()
	now := h.clock.Now()
	return h.waitFor("ping round at "+now.String(), func(sn *snapshot.Snapshot) bool {
		c, found := sn.Checks[CheckName]
		return found && !c.CheckedAt.Before(now)
	})
}

func (h *harness) updatePeer(id string, fn func(*snapshot.Peer)) {
	h.store.UpdateTailnet(func(tn *snapshot.Tailnet) {
		tn.Peers = slices.Clone(tn.Peers)
		for i := range tn.Peers {
			if tn.Peers[i].ID == id {
				fn(&tn.Peers[i])
			}
		}
	})
}

func defaultOpts(cands ...string) Options {
	var o Options
	o.Defaults()
	if len(cands) > 0 {
		o.Candidates = cands
	}
	return o
}

func TestSelectorInitialChoiceAndPings(t *testing.T) {
	peers := append(testPeers(), candPeer("n3", "exit3", "100.64.0.3"))
	h := newHarness(t, defaultOpts("exit1", "exit2", "exit3"), peers, func(h *harness) {
		h.pinger.setResult("100.64.0.2", ipnstate.PingResult{LatencySeconds: 0.05, DERPRegionID: 1, DERPRegionCode: "nyc"})
		h.pinger.setResult("100.64.0.3", ipnstate.PingResult{LatencySeconds: 0.02, PeerRelay: "192.0.2.3:7777:vni:1"})
	})
	h.waitExitNode("n1")
	sn := h.waitCheck(true, "")
	en := sn.ExitNode
	if en.CurrentID != "n1" || en.CurrentName != "exit1" || en.CurrentIP.String() != "100.64.0.1" ||
		!en.Healthy || en.Fallback != "" || !en.SwitchedAt.Equal(t0) {
		t.Errorf("exit node = %+v", en)
	}
	if want := map[string]uint64{ReasonInitial: 1}; !maps.Equal(en.Switches, want) {
		t.Errorf("switches = %v, want %v", en.Switches, want)
	}
	if got := h.setter.Calls(); !slices.Equal(got, []string{"n1"}) {
		t.Errorf("setter calls = %q, want [n1]", got)
	}
	if sn.Tailnet.ExitNodeID != "n1" {
		t.Errorf("prefs exit node = %q", sn.Tailnet.ExitNodeID)
	}

	sn = h.waitFor("three pings", func(sn *snapshot.Snapshot) bool { return len(sn.Pings) == 3 })
	want := map[string]snapshot.Ping{
		"100.64.0.1": {PeerName: "exit1", OK: true, Latency: 10 * time.Millisecond, Path: "direct"},
		"100.64.0.2": {PeerName: "exit2", OK: true, Latency: 50 * time.Millisecond, Path: "derp"},
		"100.64.0.3": {PeerName: "exit3", OK: true, Latency: 20 * time.Millisecond, Path: "relay"},
	}
	for ip, w := range want {
		p := sn.Pings[ip]
		if p.PeerName != w.PeerName || p.OK != w.OK || p.Latency != w.Latency || p.Path != w.Path ||
			p.PeerIP.String() != ip || !p.At.Equal(t0) || p.Err != "" {
			t.Errorf("ping %s = %+v, want %+v", ip, p, w)
		}
	}
	if _, ok := sn.Pings["100.64.0.9"]; ok {
		t.Error("pinged a peer that is no candidate")
	}
	if c := sn.Checks[CheckName]; c.Duration != 10*time.Millisecond {
		t.Errorf("check duration = %v", c.Duration)
	}
	if _, ok := sn.Heartbeats[LoopName]; !ok {
		t.Error("no heartbeat")
	}

	// Every PingInterval, another round.
	h.clock.Step(DefaultPingInterval)
	h.waitRound()
	if n := h.pinger.Calls("100.64.0.1"); n != 2 {
		t.Errorf("exit1 pinged %d times after one interval, want 2", n)
	}
}

func TestSelectorSwitchesOnOfflineWithinOneEvent(t *testing.T) {
	h := newHarness(t, defaultOpts("exit1", "exit2"), testPeers())
	h.waitCheck(true, "")

	h.updatePeer("n1", func(p *snapshot.Peer) { p.Online = false })
	sn := h.waitExitNode("n2") // no clock step: the peer change alone
	en := sn.ExitNode
	if want := map[string]uint64{ReasonInitial: 1, ReasonOffline: 1}; !maps.Equal(en.Switches, want) {
		t.Errorf("switches = %v, want %v", en.Switches, want)
	}
	if !en.Healthy || !strings.Contains(en.Reason, "exit1 is offline") {
		t.Errorf("exit node = %+v", en)
	}
	if got := h.setter.Calls(); !slices.Equal(got, []string{"n1", "n2"}) {
		t.Errorf("setter calls = %q", got)
	}
	if !h.clock.Now().Equal(t0) {
		t.Error("the clock moved")
	}
	// The new exit node is pinged at once.
	h.waitFor("exit2 pinged after the switch", func(sn *snapshot.Snapshot) bool {
		c := sn.Checks[CheckName]
		return c.OK && h.pinger.Calls("100.64.0.2") >= 1
	})
}

// realTime runs the harness on the real clock.
func realTime(h *harness) { h.real = true }

// fastOpts are options whose Detection works in a few hundred
// milliseconds of real time, with margins wide enough for a loaded CI
// machine.
func fastOpts(cands ...string) Options {
	o := defaultOpts(cands...)
	o.PingInterval = 100 * time.Millisecond
	o.PingTimeout = time.Second
	o.Detection = Detection{Late: 50 * time.Millisecond, Reprobe: 10 * time.Millisecond, DownAfter: 600 * time.Millisecond}
	return o
}

func TestSelectorSwitchesWhenPingsStop(t *testing.T) {
	h := newHarness(t, fastOpts("exit1", "exit2"), testPeers(), realTime)
	h.waitCheck(true, "")
	// The standby is pinged before it is needed.
	h.waitFor("the standby pinged", func(sn *snapshot.Snapshot) bool { return sn.Pings["100.64.0.2"].OK })

	before := h.pinger.Calls("100.64.0.1")
	h.pinger.setSilent("100.64.0.1", true)
	sn := h.waitExitNode("n2")
	if want := map[string]uint64{ReasonInitial: 1, ReasonPing: 1}; !maps.Equal(sn.ExitNode.Switches, want) {
		t.Errorf("switches = %v, want %v", sn.ExitNode.Switches, want)
	}
	if !strings.Contains(sn.ExitNode.Reason, "exit1 answered none of ") || !sn.ExitNode.Healthy {
		t.Errorf("exit node = %+v", sn.ExitNode)
	}
	// A late exit node is asked again and again before it is given up.
	if n := h.pinger.Calls("100.64.0.1") - before; n < MaxPingFailures {
		t.Errorf("exit1 pinged %d times before the failover, want at least %d", n, MaxPingFailures)
	}
	h.waitCheck(true, "")
	if got := h.setter.Calls(); !slices.Equal(got, []string{"n1", "n2"}) {
		t.Errorf("setter calls = %q", got)
	}
}

// One ping in three lost at random is no failover, and no failed check
// once the exit node answered.
func TestSelectorNoFalseFailoverUnderLoss(t *testing.T) {
	h := newHarness(t, fastOpts("exit1", "exit2"), testPeers(), realTime, func(h *harness) {
		h.pinger.setLoss("100.64.0.1", 1.0/3)
	})
	h.waitCheck(true, "")
	failed := h.watchCheckFailures()
	time.Sleep(4 * time.Second) // 40 ping intervals
	if got := h.setter.Calls(); !slices.Equal(got, []string{"n1"}) {
		t.Errorf("setter calls = %q: a false failover", got)
	}
	if n := failed(); n != 0 {
		t.Errorf("the check failed %d times under random loss", n)
	}
	if n := h.pinger.Lost(); n < 5 {
		t.Fatalf("only %d pings lost: the test proves nothing", n)
	}
}

// A path that is slow but alive answers late, but as often as it is
// pinged: no failover.
func TestSelectorSlowPathIsNoFailover(t *testing.T) {
	h := newHarness(t, fastOpts("exit1", "exit2"), testPeers(), realTime, func(h *harness) {
		// Slower than the ping interval and its grace, well inside the
		// ping timeout.
		h.pinger.setDelay("100.64.0.1", 400*time.Millisecond)
	})
	h.waitCheck(true, "")
	failed := h.watchCheckFailures()
	time.Sleep(3 * time.Second)
	if got := h.setter.Calls(); !slices.Equal(got, []string{"n1"}) {
		t.Errorf("setter calls = %q: a slow exit node was failed over", got)
	}
	if n := failed(); n != 0 {
		t.Errorf("the check failed %d times on a slow path", n)
	}
}

// A setter call in progress (the Guard's commit check) does not delay the
// detection of the next failure: the newer choice cancels it.
func TestSelectorSwitchInProgressDoesNotBlockDetection(t *testing.T) {
	peers := append(testPeers(), candPeer("n3", "exit3", "100.64.0.3"))
	h := newHarness(t, fastOpts("exit1", "exit2", "exit3"), peers, realTime, func(h *harness) {
		h.setter.block = map[string]chan struct{}{"n2": make(chan struct{})} // never confirmed
		h.setter.aborted = make(chan string, 1)
	})
	h.waitCheck(true, "")
	h.pinger.setSilent("100.64.0.1", true)
	h.waitFor("switch to exit2", func(sn *snapshot.Snapshot) bool { return sn.ExitNode.CurrentID == "n2" })
	h.pinger.setSilent("100.64.0.2", true) // while exit2 is being set
	sn := h.waitFor("exit3 in use", func(sn *snapshot.Snapshot) bool { return sn.Tailnet.ExitNodeID == "n3" })
	select {
	case id := <-h.setter.aborted:
		if id != "n2" {
			t.Errorf("aborted call for %s, want n2", id)
		}
	case <-time.After(5 * time.Second):
		t.Error("the call for exit2 was not cancelled")
	}
	if got := h.setter.Calls(); !slices.Equal(got, []string{"n1", "n2", "n3"}) {
		t.Errorf("setter calls = %q", got)
	}
	if sn.ExitNode.Switches[ReasonPing] != 2 {
		t.Errorf("switches = %v", sn.ExitNode.Switches)
	}
}

// watchCheckFailures counts, from now until the test ends, the times the
// check is published failed; it returns the count so far.
func (h *harness) watchCheckFailures() func() int {
	var mu sync.Mutex
	n := 0
	ctx, cancel := context.WithCancel(context.Background())
	h.t.Cleanup(cancel)
	go func() {
		last := h.store.Load().Checks[CheckName]
		for {
			changed := h.store.Changed()
			c := h.store.Load().Checks[CheckName]
			if !c.OK && (last.OK || c.Reason != last.Reason) {
				mu.Lock()
				n++
				mu.Unlock()
				h.t.Logf("check failed: %s", c.Reason)
			}
			last = c
			select {
			case <-changed:
			case <-ctx.Done():
				return
			}
		}
	}()
	return func() int {
		mu.Lock()
		defer mu.Unlock()
		return n
	}
}

func TestSelectorPingErrorText(t *testing.T) {
	h := newHarness(t, defaultOpts("exit1"), testPeers(), func(h *harness) {
		h.pinger.setErr("100.64.0.1", errors.New("no matching peer"))
	})
	h.waitCheck(false, "exit node exit1 (100.64.0.1): no tailnet ping answered yet: no matching peer")
	h.pinger.setErr("100.64.0.1", nil)
	h.pinger.setResult("100.64.0.1", ipnstate.PingResult{Err: "pong timeout"})
	h.clock.Step(DefaultPingInterval)
	h.waitCheck(false, "exit node exit1 (100.64.0.1): no tailnet ping answered yet: pong timeout")
}

func TestSelectorFailbackAfter(t *testing.T) {
	opts := defaultOpts("exit1", "exit2")
	opts.FailbackAfter = time.Minute
	peers := testPeers()
	peers[0].Online = false
	h := newHarness(t, opts, peers)
	h.waitExitNode("n2")
	h.waitCheck(true, "")

	h.updatePeer("n1", func(p *snapshot.Peer) { p.Online = true })
	// exit1 is pinged from now on, at once.
	sn := h.waitFor("exit1 pinged", func(sn *snapshot.Snapshot) bool { return sn.Pings["100.64.0.1"].OK })
	if sn.ExitNode.CurrentID != "n2" {
		t.Fatalf("failed back at once: %+v", sn.ExitNode)
	}

	h.clock.Step(57 * time.Second) // t0+59s: healthy for 57 to 59 seconds
	sn = h.waitRound()
	if sn.ExitNode.CurrentID != "n2" {
		t.Fatalf("failed back before --failback-after: %+v", sn.ExitNode)
	}

	h.clock.Step(3 * time.Second) // t0+62s
	sn = h.waitExitNode("n1")
	if want := map[string]uint64{ReasonInitial: 1, ReasonFailback: 1}; !maps.Equal(sn.ExitNode.Switches, want) {
		t.Errorf("switches = %v, want %v", sn.ExitNode.Switches, want)
	}
	if got := h.setter.Calls(); !slices.Equal(got, []string{"n2", "n1"}) {
		t.Errorf("setter calls = %q", got)
	}
}

func TestSelectorFallback(t *testing.T) {
	allOffline := func() []snapshot.Peer {
		p := testPeers()
		p[0].Online, p[1].Online = false, false
		return p
	}
	t.Run("block keeps an exit node", func(t *testing.T) {
		h := newHarness(t, defaultOpts("exit1", "exit2"), allOffline())
		sn := h.waitFor("block", func(sn *snapshot.Snapshot) bool {
			return sn.ExitNode.Fallback == "block" && sn.Tailnet.ExitNodeID == "n1"
		})
		if sn.ExitNode.CurrentID != "n1" || sn.ExitNode.Healthy {
			t.Errorf("exit node = %+v", sn.ExitNode)
		}
		h.waitCheck(false, "exit node exit1 (100.64.0.1) is not healthy: no healthy exit node candidate (exit1 is offline; exit2 is offline): --exit-fallback=block keeps exit1")
		if got := h.setter.Calls(); !slices.Equal(got, []string{"n1"}) {
			t.Errorf("setter calls = %q", got)
		}
		// Recovery.
		h.updatePeer("n2", func(p *snapshot.Peer) { p.Online = true })
		sn = h.waitExitNode("n2")
		if sn.ExitNode.Switches[ReasonRecovery] != 1 || sn.ExitNode.Fallback != "" || !sn.ExitNode.Healthy {
			t.Errorf("exit node = %+v", sn.ExitNode)
		}
	})
	t.Run("direct clears the exit node", func(t *testing.T) {
		opts := defaultOpts("exit1", "exit2")
		opts.Fallback = FallbackDirect
		h := newHarness(t, opts, testPeers())
		h.waitCheck(true, "")
		h.updatePeer("n1", func(p *snapshot.Peer) { p.Online = false })
		h.updatePeer("n2", func(p *snapshot.Peer) { p.Online = false })
		sn := h.waitFor("direct", func(sn *snapshot.Snapshot) bool {
			return sn.ExitNode.Fallback == "direct" && sn.Tailnet.ExitNodeID == ""
		})
		if sn.ExitNode.CurrentID != "" || sn.ExitNode.Healthy {
			t.Errorf("exit node = %+v", sn.ExitNode)
		}
		if got := h.setter.Calls(); got[len(got)-1] != "" {
			t.Errorf("setter calls = %q, want the last to clear", got)
		}
		h.waitCheck(false, "no exit node in use: no healthy exit node candidate")
	})
	t.Run("block without any candidate is reported", func(t *testing.T) {
		h := newHarness(t, defaultOpts("tag:nope"), testPeers())
		sn := h.waitCheck(false, "no exit node to block with")
		if sn.ExitNode.CurrentID != "" || sn.ExitNode.Fallback != "block" || sn.ExitNode.Healthy {
			t.Errorf("exit node = %+v", sn.ExitNode)
		}
	})
}

func TestSelectorRoleChangeAwayClears(t *testing.T) {
	h := newHarness(t, defaultOpts("exit1", "exit2"), testPeers())
	h.waitCheck(true, "")

	h.store.SetRole(snapshot.RoleExit)
	sn := h.waitFor("check deleted and exit node cleared", func(sn *snapshot.Snapshot) bool {
		_, found := sn.Checks[CheckName]
		return !found && sn.ExitNode.CurrentID == "" && sn.Tailnet.ExitNodeID == ""
	})
	if got := h.setter.Calls(); !slices.Equal(got, []string{"n1", ""}) {
		t.Errorf("setter calls = %q, want [n1 \"\"]", got)
	}
	if want := map[string]uint64{ReasonInitial: 1}; !maps.Equal(sn.ExitNode.Switches, want) {
		t.Errorf("switch counts lost: %v", sn.ExitNode.Switches)
	}

	// Back to worker: a fresh initial choice, pinged at once.
	calls := h.pinger.Calls("100.64.0.1")
	h.store.SetRole(snapshot.RoleWorker)
	sn = h.waitExitNode("n1")
	if want := map[string]uint64{ReasonInitial: 2}; !maps.Equal(sn.ExitNode.Switches, want) {
		t.Errorf("switches = %v, want %v", sn.ExitNode.Switches, want)
	}
	h.waitCheck(true, "")
	if got := h.pinger.Calls("100.64.0.1"); got != calls+1 {
		t.Errorf("exit1 pinged %d times after becoming a worker again, want 1", got-calls)
	}
	if got := h.setter.Calls(); !slices.Equal(got, []string{"n1", "", "n1"}) {
		t.Errorf("setter calls = %q", got)
	}
}

func TestSelectorWaitsForRunningBackend(t *testing.T) {
	h := newHarness(t, defaultOpts("exit1"), testPeers(), func(h *harness) {
		h.store.UpdateTailnet(func(tn *snapshot.Tailnet) { tn.BackendState = "Starting" })
	})
	h.waitCheck(false, "tailscale backend is Starting, not Running")
	if n := len(h.setter.Calls()); n != 0 {
		t.Errorf("setter called %d times before Running", n)
	}
	h.store.UpdateTailnet(func(tn *snapshot.Tailnet) { tn.BackendState = "Running" })
	h.waitCheck(true, "")
	if n := h.pinger.Calls("100.64.0.1"); n != 1 {
		t.Errorf("pinged %d times, want 1 (none before Running)", n)
	}

	// Losing the LocalAPI pauses too, keeping the choice.
	h.store.UpdateTailnet(func(tn *snapshot.Tailnet) { tn.Connected = false })
	sn := h.waitCheck(false, "not connected to tailscaled's LocalAPI")
	if sn.ExitNode.CurrentID != "n1" {
		t.Errorf("exit node = %+v", sn.ExitNode)
	}
	h.store.UpdateTailnet(func(tn *snapshot.Tailnet) { tn.Connected = true })
	h.waitCheck(true, "")
	if got := h.setter.Calls(); !slices.Equal(got, []string{"n1"}) {
		t.Errorf("setter calls = %q", got)
	}
}

func TestSelectorRetriesFailedSetter(t *testing.T) {
	h := newHarness(t, defaultOpts("exit1"), testPeers(), func(h *harness) {
		h.setter.setErr(errors.New("role is none, not worker"))
	})
	sn := h.waitCheck(false, "setting exit node exit1 (100.64.0.1) failed")
	if sn.ExitNode.Healthy || !strings.Contains(sn.ExitNode.Reason, "role is none, not worker") {
		t.Errorf("exit node = %+v", sn.ExitNode)
	}
	h.setter.setErr(nil)
	h.clock.Step(defaultTimings.retry)
	sn = h.waitCheck(true, "")
	if !sn.ExitNode.Healthy || sn.Tailnet.ExitNodeID != "n1" {
		t.Errorf("after retry: %+v", sn.ExitNode)
	}
	if want := map[string]uint64{ReasonInitial: 1}; !maps.Equal(sn.ExitNode.Switches, want) {
		t.Errorf("a retry counted as a switch: %v", sn.ExitNode.Switches)
	}
}

func TestSelectorBoundsPings(t *testing.T) {
	var peers []snapshot.Peer
	for i := range 10 {
		peers = append(peers, candPeer(fmt.Sprintf("n%02d", i), fmt.Sprintf("exit%02d", i), fmt.Sprintf("100.64.0.%d", 10+i)))
	}
	h := newHarness(t, defaultOpts("auto"), peers, func(h *harness) { h.pinger.setSilent("100.64.0.10", true) })
	// The exit node in use is late, then re-pinged every Reprobe, until
	// maxInFlight pings wait for it (their timeout is 2s of real time).
	for i := 0; i < 400 && h.pinger.MaxInFlight("100.64.0.10") < defaultTimings.maxInFlight; i++ {
		h.clock.Step(DefaultDetection.Reprobe)
		time.Sleep(time.Millisecond)
	}
	for range 20 {
		h.clock.Step(DefaultDetection.Reprobe)
		time.Sleep(time.Millisecond)
	}
	if n := h.pinger.MaxInFlight("100.64.0.10"); n != defaultTimings.maxInFlight {
		t.Errorf("at most %d pings in flight to exit00, want %d", n, defaultTimings.maxInFlight)
	}
	pinged := 0
	for i := range 10 {
		if h.pinger.Calls(fmt.Sprintf("100.64.0.%d", 10+i)) > 0 {
			pinged++
		}
	}
	if pinged != defaultTimings.maxTargets {
		t.Errorf("%d peers pinged, want %d", pinged, defaultTimings.maxTargets)
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	opts := defaultOpts("exit1", "tag:")
	opts.Fallback = "sometimes"
	opts.FailbackAfter = -time.Second
	_, err := New(snapshot.New(t0, snapshot.RoleWorker), &fakeSetter{}, newFakePinger(), opts)
	if err == nil {
		t.Fatal("want an error")
	}
	for _, want := range []string{`"tag:"`, `"sometimes"`, "failback after -1s"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}
