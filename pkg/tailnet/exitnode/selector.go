package exitnode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"sync"
	"time"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
	"k8s.io/utils/clock"
	"tailscale.com/client/local"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/tailcfg"
)

// CheckName is the readiness check the Selector publishes: OK when the
// current exit node answered its last tailnet ping.
const CheckName = "exit-node-ping"

// Checks declares what a Selector publishes: exit-node-ping gates the
// worker role.
func Checks() []snapshot.CheckDeclaration {
	return []snapshot.CheckDeclaration{{Name: CheckName, Gates: []snapshot.Role{snapshot.RoleWorker}}}
}

// LoopName is the heartbeat name of the Selector's loop in the snapshot.
const LoopName = "exitnode"

// Defaults of Options (DESIGN section 3).
const (
	DefaultFailbackAfter = 60 * time.Second
	DefaultPingInterval  = 2 * time.Second
	DefaultPingTimeout   = 2 * time.Second
)

// ExitNodeSetter makes tailscaled use the exit node id ("" for none). The
// pkg/tailnet Manager satisfies it; it owns tailscaled's prefs.
type ExitNodeSetter interface {
	SetExitNode(ctx context.Context, id tailcfg.StableNodeID) error
}

// Pinger pings a tailnet IP. *local.Client satisfies it.
type Pinger interface {
	Ping(ctx context.Context, ip netip.Addr, pingtype tailcfg.PingType) (*ipnstate.PingResult, error)
}

var _ Pinger = (*local.Client)(nil)

// Options configures a Selector. Start from Defaults; a zero duration, an
// empty Fallback and empty Candidates also mean the default.
type Options struct {
	// Candidates are the --exit-nodes entries, best first (ParseCandidate).
	Candidates []string
	// FailbackAfter is how long a better candidate must stay healthy
	// before switching back to it. Zero fails back as soon as it is
	// healthy and answered a ping.
	FailbackAfter time.Duration
	// Fallback is what to do with no healthy candidate.
	Fallback Fallback
	// PingInterval is how often the current exit node and the candidates
	// are pinged.
	PingInterval time.Duration
	// PingTimeout bounds one ping.
	PingTimeout time.Duration
}

// Defaults sets every field to its default.
func (o *Options) Defaults() {
	*o = Options{
		Candidates:    []string{Auto},
		FailbackAfter: DefaultFailbackAfter,
		Fallback:      FallbackBlock,
		PingInterval:  DefaultPingInterval,
		PingTimeout:   DefaultPingTimeout,
	}
}

// Validate reports every problem of o at once.
func (o Options) Validate() error {
	var errs []error
	if _, err := ParseCandidates(o.Candidates); err != nil {
		errs = append(errs, err)
	}
	switch o.Fallback {
	case "", FallbackBlock, FallbackDirect:
	default:
		errs = append(errs, fmt.Errorf("exit fallback %q: accepted: %s, %s", o.Fallback, FallbackBlock, FallbackDirect))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"failback after", o.FailbackAfter},
		{"ping interval", o.PingInterval},
		{"ping timeout", o.PingTimeout},
	} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s %v: must not be negative", d.name, d.v))
		}
	}
	return errors.Join(errs...)
}

// timings are the Selector's internal limits; tests may shorten them.
type timings struct {
	heartbeat     time.Duration // loop heartbeat
	callTimeout   time.Duration // bound of one setter call
	retry         time.Duration // a failed setter call is retried after this
	reassert      time.Duration // prefs that still differ from the choice this long after it was set are set again
	maxConcurrent int           // pings in flight at once
	maxTargets    int           // peers pinged per round
}

var defaultTimings = timings{
	heartbeat:     5 * time.Second,
	callTimeout:   10 * time.Second,
	retry:         2 * time.Second,
	reassert:      10 * time.Second,
	maxConcurrent: 4,
	maxTargets:    8,
}

// Option configures a Selector.
type Option func(*Selector)

// WithLogger sets the logger (default slog.Default()); the Selector adds
// component=exitnode.
func WithLogger(l *slog.Logger) Option { return func(s *Selector) { s.log = l } }

// WithClock sets the clock of ping intervals, failback and heartbeats.
func WithClock(c clock.WithTicker) Option { return func(s *Selector) { s.clock = c } }

// Selector chooses a worker's exit node and keeps it healthy. Create it
// with New and run it with Run.
type Selector struct {
	store  *snapshot.Store
	setter ExitNodeSetter
	pinger Pinger
	opts   Options
	cands  []Candidate
	log    *slog.Logger
	clock  clock.WithTicker
	t      timings

	// Owned by the Run goroutine.
	worker       bool // the role was worker at the last step
	active       bool // worker and the backend Running: selecting and pinging
	st           State
	pings        map[string]pingStat // by peer ID
	pingDue      bool
	resolved     []snapshot.Peer          // candidates at the last step
	peers        map[string]snapshot.Peer // peers by ID at the last step
	apply        applyState
	pub          *snapshot.ExitNode // last published, nil if none
	check        *snapshot.Check    // last published, nil if none
	forceCheck   bool               // publish the check even if unchanged (fresh pings)
	lastFallback Fallback
	blockWarned  bool
}

// pingStat is what the Selector knows of the pings to one peer.
type pingStat struct {
	failures int // consecutive
	ok       bool
	err      string
	latency  time.Duration
	at       time.Time
}

// applyState tracks the setter calls.
type applyState struct {
	done      bool   // id was set successfully
	id        string // last id set successfully
	at        time.Time
	attempted bool // a call was made for attemptID
	attemptID string
	attemptAt time.Time
	err       error // error of the last call, nil if it succeeded
}

// New returns a Selector that reads from and publishes into store, sets
// the exit node through setter and pings through pinger (production: the
// pkg/tailnet Manager and the *local.Client). opts must be valid.
func New(store *snapshot.Store, setter ExitNodeSetter, pinger Pinger, opts Options, options ...Option) (*Selector, error) {
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("exit node options: %w", err)
	}
	if len(opts.Candidates) == 0 {
		opts.Candidates = []string{Auto}
	}
	if opts.Fallback == "" {
		opts.Fallback = FallbackBlock
	}
	if opts.PingInterval == 0 {
		opts.PingInterval = DefaultPingInterval
	}
	if opts.PingTimeout == 0 {
		opts.PingTimeout = DefaultPingTimeout
	}
	cands, err := ParseCandidates(opts.Candidates)
	if err != nil {
		return nil, fmt.Errorf("exit node options: %w", err)
	}
	opts.Candidates = append([]string(nil), opts.Candidates...)
	s := &Selector{
		store:  store,
		setter: setter,
		pinger: pinger,
		opts:   opts,
		cands:  cands,
		log:    slog.Default(),
		clock:  clock.RealClock{},
		t:      defaultTimings,
		pings:  map[string]pingStat{},
	}
	for _, o := range options {
		o(s)
	}
	s.log = s.log.With("component", "exitnode")
	return s, nil
}

// pingTarget is one peer to ping.
type pingTarget struct {
	id   string
	name string
	ip   netip.Addr
}

// pingResult is the outcome of one ping.
type pingResult struct {
	pingTarget
	ok      bool
	latency time.Duration
	path    string
	err     string
	at      time.Time
}

// Run selects the exit node until ctx is done, then returns nil.
//
// It acts only while the snapshot's role is worker, the tailnet Manager
// is connected to the LocalAPI and tailscaled's backend is Running: it
// re-decides on every snapshot change (a peer going offline reaches the
// snapshot from the IPN bus within seconds) and after every ping round,
// and pings the current exit node and the online candidates every
// PingInterval (and at once after a switch).
//
// When the role changes away from worker it clears the exit node it set,
// deletes its check and idles until the role is worker again; then it
// starts over with an initial choice. While the backend is not Running or
// the LocalAPI is not connected, it keeps its choice, stops pinging and
// fails its check. When ctx is done it leaves the exit node as it is:
// tailscaled is being stopped too, and with FallbackBlock the choice must
// outlive the agent.
func (s *Selector) Run(ctx context.Context) error {
	tick := s.clock.NewTicker(s.opts.PingInterval)
	defer tick.Stop()
	hb := s.clock.NewTicker(s.t.heartbeat)
	defer hb.Stop()

	results := make(chan []pingResult, 1)
	inFlight := false
	roundCtx, cancelRounds := context.WithCancel(ctx)
	defer func() {
		cancelRounds()
		if inFlight {
			<-results // no goroutine outlives Run
		}
	}()

	for {
		changed := s.store.Changed()
		s.store.Beat(LoopName, s.clock.Now())
		s.step(ctx)
		if s.active && s.pingDue && !inFlight {
			s.pingDue = false
			if targets := s.targets(); len(targets) > 0 {
				inFlight = true
				go s.pingRound(roundCtx, targets, results)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-tick.C():
			s.pingDue = true
		case res := <-results:
			inFlight = false
			s.record(res)
		case <-hb.C():
		}
	}
}

// step reads the snapshot, decides, applies and publishes.
func (s *Selector) step(ctx context.Context) {
	sn := s.store.Load()
	now := s.clock.Now()
	if sn.Role != snapshot.RoleWorker {
		if s.worker {
			s.leave(ctx, sn.Role)
		}
		return
	}
	if !s.worker {
		s.worker = true
		s.log.Info("worker role: choosing an exit node", "candidates", s.opts.Candidates,
			"fallback", s.opts.Fallback, "failback_after", s.opts.FailbackAfter)
	}
	if why := notRunning(sn.Tailnet); why != "" {
		if s.active {
			s.active = false
			s.log.Info("pausing exit node selection", "why", why)
		}
		s.publishCheck(snapshot.Check{Reason: why, CheckedAt: now})
		return
	}
	if !s.active {
		s.active = true
		s.pingDue = true
	}

	s.peers = make(map[string]snapshot.Peer, len(sn.Tailnet.Peers))
	for _, p := range sn.Tailnet.Peers {
		s.peers[p.ID] = p
	}
	for id := range s.pings {
		if _, ok := s.peers[id]; !ok {
			delete(s.pings, id)
		}
	}
	s.resolved = Resolve(s.cands, sn.Tailnet.Peers)
	d, st := Decide(s.st, s.input(sn), now)
	s.st = st
	s.logDecision(d)
	s.applyDecision(ctx, d, sn.Tailnet.ExitNodeID, now)
	s.publishExitNode(d)
	s.publishCheck(s.pingCheck(d, now))
}

// notRunning says why the Selector cannot act on tn, "" if it can. Without
// the LocalAPI the peer list is stale and pings cannot tell a dead exit
// node from a dead tailscaled, so the choice is kept as it is.
func notRunning(tn snapshot.Tailnet) string {
	switch {
	case !tn.Connected:
		return "not connected to tailscaled's LocalAPI"
	case tn.BackendState != "Running":
		state := tn.BackendState
		if state == "" {
			state = "unknown"
		}
		return fmt.Sprintf("tailscale backend is %s, not Running", state)
	}
	return ""
}

// input builds Decide's input from the snapshot and the ping stats.
func (s *Selector) input(sn *snapshot.Snapshot) Input {
	health := make(map[string]Health, len(s.resolved)+2)
	add := func(id string) {
		p, ok := s.peers[id]
		if !ok || id == "" {
			return
		}
		ps := s.pings[id]
		health[id] = Health{Online: p.Online, Offered: p.ExitNodeOption, PingFailures: ps.failures, LastPingOK: ps.ok}
	}
	for _, p := range s.resolved {
		add(p.ID)
	}
	add(s.st.Current)
	add(sn.Tailnet.ExitNodeID)
	return Input{
		Candidates:    s.resolved,
		Health:        health,
		CurrentID:     sn.Tailnet.ExitNodeID,
		FailbackAfter: s.opts.FailbackAfter,
		Fallback:      s.opts.Fallback,
	}
}

// describeID is "name (ip)" for a peer ID, "none" for "".
func (s *Selector) describeID(id string) string {
	if id == "" {
		return "none"
	}
	if p, ok := s.peers[id]; ok {
		return describe(p)
	}
	return id
}

func (s *Selector) logDecision(d Decision) {
	if d.Switched {
		s.log.Info("exit node switched", "from", s.describeID(d.From), "to", s.describeID(d.ExitNodeID),
			"reason", d.Reason, "healthy", d.Healthy, "detail", d.Detail)
		s.pingDue = true // confirm the new exit node answers at once
	}
	if d.Fallback != s.lastFallback {
		if d.Fallback != "" {
			s.log.Warn("no healthy exit node candidate: fallback in force", "fallback", d.Fallback,
				"exit_node", s.describeID(d.ExitNodeID), "detail", d.Detail)
		} else {
			s.log.Info("healthy exit node in use: fallback over", "exit_node", s.describeID(d.ExitNodeID))
		}
		s.lastFallback = d.Fallback
	}
	if d.BlockImpossible != s.blockWarned {
		if d.BlockImpossible {
			s.log.Warn("exit fallback block is impossible: no exit node to block with", "detail", d.Detail)
		}
		s.blockWarned = d.BlockImpossible
	}
}

// applyDecision sets the chosen exit node through the setter when it
// changed, when the last call failed (after a retry delay), or when
// tailscaled's prefs still disagree long after it was set.
func (s *Selector) applyDecision(ctx context.Context, d Decision, prefsID string, now time.Time) {
	want := d.ExitNodeID
	a := &s.apply
	switch {
	case !a.done || a.id != want:
	case prefsID != want && now.Sub(a.at) >= s.t.reassert && now.Sub(a.attemptAt) >= s.t.reassert:
		s.log.Warn("tailscaled's exit node differs from the choice: setting it again",
			"prefs", s.describeID(prefsID), "want", s.describeID(want))
	default:
		return
	}
	if a.attempted && a.err != nil && a.attemptID == want && now.Sub(a.attemptAt) < s.t.retry {
		return
	}
	a.attempted, a.attemptID, a.attemptAt = true, want, now
	cctx, cancel := context.WithTimeout(ctx, s.t.callTimeout)
	defer cancel()
	if err := s.setter.SetExitNode(cctx, tailcfg.StableNodeID(want)); err != nil {
		a.err = err
		s.log.Warn("setting the exit node failed; will retry", "exit_node", s.describeID(want), "err", err)
		return
	}
	a.err = nil
	a.done, a.id, a.at = true, want, now
}

// applyFailed returns the error of setting id, nil if it did not fail.
func (s *Selector) applyFailed(id string) error {
	if s.apply.err != nil && s.apply.attemptID == id {
		return s.apply.err
	}
	return nil
}

func (s *Selector) publishExitNode(d Decision) {
	en := snapshot.ExitNode{
		CurrentID:  d.ExitNodeID,
		Healthy:    d.Healthy,
		Fallback:   string(d.Fallback),
		Reason:     d.Detail,
		Switches:   s.st.Switches,
		SwitchedAt: s.st.SwitchedAt,
	}
	if p, ok := s.peers[d.ExitNodeID]; ok {
		en.CurrentName = peerName(p)
		en.CurrentIP, _ = peerIP(p)
	} else if d.ExitNodeID != "" {
		en.CurrentName = d.ExitNodeID
	}
	if err := s.applyFailed(d.ExitNodeID); err != nil {
		en.Healthy = false
		en.Reason = fmt.Sprintf("setting exit node %s failed: %v (%s)", s.describeID(d.ExitNodeID), err, d.Detail)
	}
	if s.pub != nil && sameExitNode(*s.pub, en) {
		return
	}
	en.Switches = maps.Clone(en.Switches)
	s.pub = &en
	s.store.SetExitNode(en)
}

func sameExitNode(a, b snapshot.ExitNode) bool {
	return a.CurrentID == b.CurrentID && a.CurrentName == b.CurrentName && a.CurrentIP == b.CurrentIP &&
		a.Healthy == b.Healthy && a.Fallback == b.Fallback && a.Reason == b.Reason &&
		a.SwitchedAt.Equal(b.SwitchedAt) && maps.Equal(a.Switches, b.Switches)
}

// pingCheck is the "exit-node-ping" check for decision d: OK when the
// exit node in use is healthy and answered its last ping. It also fails
// while a fallback is in force, so the node is never ready without a
// healthy exit node.
func (s *Selector) pingCheck(d Decision, now time.Time) snapshot.Check {
	id := d.ExitNodeID
	fail := func(format string, args ...any) snapshot.Check {
		return snapshot.Check{Reason: fmt.Sprintf(format, args...), CheckedAt: now}
	}
	if id == "" {
		return fail("no exit node in use: %s", d.Detail)
	}
	if err := s.applyFailed(id); err != nil {
		return fail("setting exit node %s failed: %v", s.describeID(id), err)
	}
	if _, ok := s.peers[id]; !ok {
		return fail("exit node %s is not in the peer list", id)
	}
	ps, pinged := s.pings[id]
	switch {
	case pinged && !ps.ok && ps.failures == 1:
		return fail("exit node %s: ping failed: %s", s.describeID(id), ps.err)
	case pinged && !ps.ok:
		return fail("exit node %s: %d consecutive pings failed: %s", s.describeID(id), ps.failures, ps.err)
	case !d.Healthy:
		// In use only as the block fallback: never ready, even if it
		// answers pings (it is offline per control, no longer offered,
		// or no candidate).
		return fail("exit node %s is not healthy: %s", s.describeID(id), d.Detail)
	case !pinged:
		return fail("exit node %s: not pinged yet", s.describeID(id))
	}
	return snapshot.Check{OK: true, Duration: ps.latency, CheckedAt: ps.at}
}

// publishCheck publishes c when its outcome changed, or after fresh pings.
func (s *Selector) publishCheck(c snapshot.Check) {
	force := s.forceCheck
	s.forceCheck = false
	if !force && s.check != nil && s.check.OK == c.OK && s.check.Reason == c.Reason {
		return
	}
	s.check = &c
	s.store.SetCheck(CheckName, c)
}

// leave undoes the worker role: the exit node is cleared, the check
// deleted and the state forgotten (but not the switch counts, which are
// counters).
func (s *Selector) leave(ctx context.Context, role snapshot.Role) {
	s.log.Info("role is no longer worker: clearing the exit node", "role", role,
		"exit_node", s.describeID(s.st.Current))
	if (s.apply.done && s.apply.id != "") || (s.apply.attempted && s.apply.attemptID != "") {
		cctx, cancel := context.WithTimeout(ctx, s.t.callTimeout)
		err := s.setter.SetExitNode(cctx, "")
		cancel()
		if err != nil {
			// The tailnet Manager drops the exit node itself when it
			// learns of the new role; this call only makes it sooner.
			s.log.Info("clearing the exit node failed; the tailnet manager clears it for the new role", "err", err)
		}
	}
	s.store.DeleteCheck(CheckName)
	s.store.SetExitNode(snapshot.ExitNode{Switches: maps.Clone(s.st.Switches)})
	*s = Selector{
		store: s.store, setter: s.setter, pinger: s.pinger, opts: s.opts, cands: s.cands,
		log: s.log, clock: s.clock, t: s.t,
		st:    State{Switches: s.st.Switches},
		pings: map[string]pingStat{},
	}
}

// targets are the peers to ping: the current exit node first, then the
// online candidates in order, at most maxTargets.
func (s *Selector) targets() []pingTarget {
	var out []pingTarget
	seen := map[string]bool{}
	add := func(p snapshot.Peer) {
		if seen[p.ID] || len(out) >= s.t.maxTargets {
			return
		}
		ip, ok := peerIP(p)
		if !ok {
			return
		}
		seen[p.ID] = true
		out = append(out, pingTarget{id: p.ID, name: peerName(p), ip: ip})
	}
	if p, ok := s.peers[s.st.Current]; ok {
		add(p)
	}
	for _, p := range s.resolved {
		if p.Online {
			add(p)
		}
	}
	return out
}

// pingRound pings targets, at most maxConcurrent at a time, and sends the
// results to out.
func (s *Selector) pingRound(ctx context.Context, targets []pingTarget, out chan<- []pingResult) {
	res := make([]pingResult, len(targets))
	sem := make(chan struct{}, max(1, s.t.maxConcurrent))
	var wg sync.WaitGroup
	for i, t := range targets {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			res[i] = s.ping(ctx, t)
		})
	}
	wg.Wait()
	out <- res
}

// ping sends one disco ping.
func (s *Selector) ping(ctx context.Context, t pingTarget) pingResult {
	ctx, cancel := context.WithTimeout(ctx, s.opts.PingTimeout)
	defer cancel()
	pr, err := s.pinger.Ping(ctx, t.ip, tailcfg.PingDisco)
	r := pingResult{pingTarget: t, at: s.clock.Now()}
	switch {
	case err != nil && (errors.Is(err, context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded)):
		r.err = fmt.Sprintf("no reply within %v", s.opts.PingTimeout)
	case err != nil:
		r.err = err.Error()
	case pr == nil:
		r.err = "empty ping result"
	case pr.Err != "":
		r.err = pr.Err
	default:
		r.ok = true
		r.latency = time.Duration(pr.LatencySeconds * float64(time.Second))
		r.path = PingPath(pr)
	}
	return r
}

// PingPath is the path a ping took: "relay" through a peer relay, "derp"
// through a DERP server, "direct" over a direct UDP path, "" when the
// result does not say (TSMP pings).
func PingPath(pr *ipnstate.PingResult) string {
	switch {
	case pr.PeerRelay != "":
		return "relay"
	case pr.DERPRegionID != 0:
		return "derp"
	case pr.Endpoint != "":
		return "direct"
	}
	return ""
}

// record updates the ping stats and publishes the pings.
func (s *Selector) record(res []pingResult) {
	if !s.active {
		return // the role or the backend changed during the round
	}
	for _, r := range res {
		ps := s.pings[r.id]
		ps.at = r.at
		if r.ok {
			ps.failures, ps.ok, ps.err, ps.latency = 0, true, "", r.latency
		} else {
			ps.failures++
			ps.ok, ps.err = false, r.err
		}
		if _, ok := s.peers[r.id]; ok {
			s.pings[r.id] = ps
		}
		s.store.SetPing(snapshot.Ping{
			PeerName: r.name,
			PeerIP:   r.ip,
			OK:       r.ok,
			Latency:  r.latency,
			Path:     r.path,
			Err:      r.err,
			At:       r.at,
		})
	}
	s.forceCheck = true
}
