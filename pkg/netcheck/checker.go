package netcheck

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"

	"github.com/ts-node-agent/ts-node-agent/pkg/redact"
	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

// Timing and bounds of the Checker.
const (
	// maxParallel bounds the concurrent requests of one egress round and
	// the concurrent dials of one TCP round.
	maxParallel = 4
	// jitterFraction spreads the intervals by ±10%.
	jitterFraction = 0.1
	// heartbeatInterval is how often Run beats while no round is stuck.
	heartbeatInterval = 15 * time.Second
	// stuckGrace is how far past its worst-case duration a round may run
	// before the Checker counts as stuck and stops beating (every request
	// and dial has a timeout, so only a bug gets there).
	stuckGrace = 30 * time.Second
	// maxResponseHeaderBytes bounds the headers of an egress answer.
	maxResponseHeaderBytes = 16 << 10
)

// Loop names of the busy bookkeeping (and of log lines).
const (
	loopEgress = "egress"
	loopTCP    = "tcp"
)

// Checker runs the egress IP and TCP checks and publishes their results.
// Create one with New, run it with Run.
type Checker struct {
	store  *snapshot.Store
	opts   Options
	log    *slog.Logger
	clock  clock.WithTicker
	rand   func() float64
	client *http.Client
	dial   DialFunc
	// podDial dials from a source address (the egress-ip-pod check).
	podDial    func(src netip.Addr) DialFunc
	localAddrs func() ([]netip.Prefix, error)
	durations  DurationObserver
	reg        prometheus.Registerer
	m          *checkMetrics

	trigger chan struct{} // buffered 1: a pending re-check of the egress IP
	running atomic.Bool

	mu        sync.Mutex
	egressIP  netip.Addr           // current egress IP; invalid while unknown
	podIP     netip.Addr           // current egress IP of the pod path; invalid while unknown
	busy      map[string]time.Time // loop -> when its current round is overdue
	stuck     string               // loop reported stuck, "" if none
	published map[string]snapshot.Check

	// lastObserved is the last egress IP any round observed (egress loop
	// only): changes are counted against it, gaps (failed rounds) ignored.
	lastObserved netip.Addr
}

// New returns a Checker that publishes into store. Zero durations in opts
// take their Defaults; invalid options or a failed metrics registration
// are an error.
func New(store *snapshot.Store, opts Options, options ...Option) (*Checker, error) {
	if store == nil {
		return nil, errors.New("netcheck: nil snapshot store")
	}
	opts = opts.withDefaults()
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("netcheck: %w", err)
	}
	// Own copies: the caller keeps its slices.
	opts.EgressURLs = slices.Clone(opts.EgressURLs)
	opts.TCPTargets = slices.Clone(opts.TCPTargets)
	opts.ExpectedEgressIPs = slices.Clone(opts.ExpectedEgressIPs)
	for i, a := range opts.ExpectedEgressIPs {
		opts.ExpectedEgressIPs[i] = a.Unmap()
	}
	c := &Checker{
		store:     store,
		opts:      opts,
		log:       slog.Default(),
		clock:     clock.RealClock{},
		rand:      rand.Float64,
		trigger:   make(chan struct{}, 1),
		busy:      map[string]time.Time{},
		published: map[string]snapshot.Check{},
	}
	for _, o := range options {
		o(c)
	}
	c.log = c.log.With("component", "netcheck")
	if c.dial == nil {
		c.dial = (&net.Dialer{}).DialContext
	}
	if c.client == nil {
		c.client = defaultHTTPClient(c.dial)
	} else {
		hc := *c.client // the caller keeps its client and its redirect policy
		hc.CheckRedirect = noRedirects
		c.client = &hc
	}
	if c.podDial == nil {
		c.podDial = func(src netip.Addr) DialFunc {
			d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
			return d.DialContext
		}
	}
	if c.localAddrs == nil {
		c.localAddrs = interfaceAddrs
	}
	c.m = newCheckMetrics(opts)
	if c.reg != nil {
		if err := c.m.register(c.reg); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// defaultHTTPClient is the egress check's client: the node's own routing
// (no proxy, whatever the environment says), a fresh connection for every
// request (a kept-alive connection would outlive an exit node change), and
// no redirects.
func defaultHTTPClient(dial DialFunc) *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			Proxy:                  nil, // an egress check must never go through a proxy
			DialContext:            dial,
			ForceAttemptHTTP2:      true,
			DisableKeepAlives:      true,
			MaxResponseHeaderBytes: maxResponseHeaderBytes,
		},
		CheckRedirect: noRedirects,
	}
}

// noRedirects is the redirect policy of every egress check client: the 3xx
// answer itself is the result (a failed check). Following it would let the
// echo service, or anyone on its path, point the agent at a service of the
// node or the cluster (http://127.0.0.1:8082/...) and have its answer
// judged, and described, as an egress IP.
func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// interfaceAddrs lists the node's addresses with their prefix lengths.
func interfaceAddrs() ([]netip.Prefix, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	var out []netip.Prefix
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok {
			ip, ok := netip.AddrFromSlice(ipn.IP)
			ones, _ := ipn.Mask.Size()
			if ok {
				out = append(out, netip.PrefixFrom(ip.Unmap(), ones))
			}
		}
	}
	return out, nil
}

// Trigger asks for an egress check now, without waiting for the interval
// (main calls it when the exit node changes). It never blocks; triggers
// during a round cause one more round right after it.
func (c *Checker) Trigger() {
	select {
	case c.trigger <- struct{}{}:
	default:
	}
}

// EgressIP returns the egress IP the last egress round observed, and false
// while it is unknown (no round yet, every URL failed, or they disagree).
func (c *Checker) EgressIP() (netip.Addr, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.egressIP, c.egressIP.IsValid()
}

// Run runs the checks until ctx is done, then returns nil once every
// goroutine it started has stopped. The first round of each check starts
// at once. Run may be called only once.
func (c *Checker) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("netcheck: Run called twice")
	}
	urls := make([]string, len(c.opts.EgressURLs))
	for i, u := range c.opts.EgressURLs {
		urls[i] = redact.URL(u)
	}
	c.log.Info("starting network checks",
		"egress_urls", urls, "expected_egress_ips", c.opts.ExpectedEgressIPs,
		"egress_interval", c.opts.EgressInterval, "tcp_targets", len(c.opts.TCPTargets),
		"tcp_interval", c.opts.TCPInterval)
	var wg sync.WaitGroup
	if len(c.opts.EgressURLs) > 0 {
		// The path is read here, not in the goroutine: a change between
		// Run and the goroutine's first line must still trigger a round.
		prev := egressKey(c.store.Load())
		wg.Go(func() { c.egressLoop(ctx) })
		wg.Go(func() { c.watchExitNode(ctx, prev) })
	}
	if len(c.opts.TCPTargets) > 0 {
		wg.Go(func() { c.tcpLoop(ctx) })
	}
	c.heartbeat(ctx)
	wg.Wait()
	return nil
}

// heartbeat beats every heartbeatInterval until ctx is done, except while
// a round is overdue: a stuck check must show in liveness.
func (c *Checker) heartbeat(ctx context.Context) {
	c.beat()
	tick := c.clock.NewTicker(heartbeatInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C():
			c.beat()
		}
	}
}

func (c *Checker) beat() {
	now := c.clock.Now()
	c.mu.Lock()
	stuck := ""
	var since time.Time
	for loop, overdue := range c.busy {
		if !overdue.IsZero() && now.After(overdue) {
			stuck, since = loop, overdue
			break
		}
	}
	report := stuck != "" && stuck != c.stuck
	c.stuck = stuck
	c.mu.Unlock()
	if report {
		c.log.Error("a check round is stuck; no longer beating", "loop", stuck, "overdue_since", since)
	}
	if stuck == "" {
		c.store.Beat(HeartbeatName, now)
	}
}

// setBusy records that loop's round started and must end within d; d=0
// records that it ended.
func (c *Checker) setBusy(loop string, d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if d == 0 {
		delete(c.busy, loop)
		return
	}
	c.busy[loop] = c.clock.Now().Add(d + stuckGrace)
}

// watchExitNode triggers an egress check whenever the snapshot shows
// another exit node in use or asked for, or another role than prev.
func (c *Checker) watchExitNode(ctx context.Context, prev egressPath) {
	for {
		changed := c.store.Changed()
		if k := egressKey(c.store.Load()); k != prev {
			c.log.Debug("exit node changed; re-checking the egress IP",
				"role", k.role, "exit_node", k.current, "prefs_exit_node", k.prefs)
			prev = k
			c.Trigger()
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

// egressPath is what in the snapshot decides the egress path.
type egressPath struct {
	role    snapshot.Role
	current string // ExitNode.CurrentID
	prefs   string // Tailnet.ExitNodeID
}

func egressKey(sn *snapshot.Snapshot) egressPath {
	return egressPath{role: sn.Role, current: sn.ExitNode.CurrentID, prefs: sn.Tailnet.ExitNodeID}
}

// jittered returns d spread by ±jitterFraction.
func (c *Checker) jittered(d time.Duration) time.Duration {
	f := c.rand()
	if !(f >= 0 && f < 1) { // also NaN
		f = 0.5
	}
	return time.Duration(float64(d) * (1 + jitterFraction*(2*f-1)))
}

// wait waits for the next round: d (jittered) or, when trigger is not
// nil, a trigger. It returns false when ctx is done.
func (c *Checker) wait(ctx context.Context, d time.Duration, trigger <-chan struct{}) bool {
	t := c.clock.NewTimer(c.jittered(d))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C():
	case <-trigger:
	}
	return true
}

// publish stores a check result and logs when its verdict changes.
// unpublish withdraws the named check (a role that has no such check).
func (c *Checker) unpublish(name string) {
	c.mu.Lock()
	_, seen := c.published[name]
	delete(c.published, name)
	c.mu.Unlock()
	if seen {
		c.store.DeleteCheck(name)
	}
}

func (c *Checker) publish(name string, chk snapshot.Check) {
	c.mu.Lock()
	prev, seen := c.published[name]
	c.published[name] = chk
	c.mu.Unlock()
	c.store.SetCheck(name, chk)
	if seen && prev.OK == chk.OK && prev.Reason == chk.Reason {
		return
	}
	switch {
	case chk.Skipped:
		c.log.Info("check skipped", "check", name, "reason", chk.Reason)
		return
	case chk.OK:
		c.log.Info("check passes", "check", name)
	default:
		c.log.Warn("check fails", "check", name, "reason", chk.Reason)
	}
}

func (c *Checker) observe(check string, d time.Duration) {
	if c.durations != nil {
		c.durations.Observe(check, d)
	}
}
