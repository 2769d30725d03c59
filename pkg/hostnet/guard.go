package hostnet

// The Guard makes a worker's use of an exit node "commit confirmed"
// (DESIGN section 4): it sits between the exit node selector and the real
// setter (the tailnet Manager). Before an exit node is turned on, the
// bypass is in place; after it is on, the destinations that must stay
// reachable are dialled; if they do not answer within the commit timeout,
// the exit node is turned off again, the bypass stays, the reason is
// published as the "exit-commit" check, and the same exit node is not
// tried again before a backoff (15 s doubling to 5 min).

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"k8s.io/utils/clock"
	"tailscale.com/tailcfg"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

// CheckExitCommit is the check the Guard publishes: OK when the last exit
// node turned on was confirmed not to cut the node off; failed with the
// reason when it was rolled back (or could not be turned on safely).
const CheckExitCommit = "exit-commit"

// GuardChecks declares what a Guard publishes: exit-commit gates the
// worker role, cni-marks is informational.
func GuardChecks() []snapshot.CheckDeclaration {
	return []snapshot.CheckDeclaration{
		{Name: CheckExitCommit, Gates: []snapshot.Role{snapshot.RoleWorker}},
		{Name: CheckCNIMarks, Informational: true},
	}
}

// Defaults and limits of the Guard.
const (
	// DefaultCommitTimeout is --exit-commit-timeout's default.
	DefaultCommitTimeout = 15 * time.Second
	// DefaultNodeConfirmPort is the port dialled on other Nodes (the
	// kubelet's, which every node must reach on every node).
	DefaultNodeConfirmPort = 10250

	commitBackoffMin = 15 * time.Second
	commitBackoffMax = 5 * time.Minute
	// rollbackTimeout bounds turning a failed exit node off again.
	rollbackTimeout = 10 * time.Second
	// dialAttemptTimeout bounds one dial of a confirm target; a target is
	// dialled again until the commit timeout.
	dialAttemptTimeout = 3 * time.Second
	// dialRetryPause separates dials that failed fast (no route, ...).
	dialRetryPause = 250 * time.Millisecond
	// maxNodeProbes is how many other nodes are dialled at once; one
	// answer is enough.
	maxNodeProbes = 8
	// leaveWait is how long the bypass stays after the role stopped being
	// worker while tailscaled still uses an exit node.
	leaveWait = 10 * time.Second
	// cniRecheck is how often a worker looks again for CNIs that mark
	// packets (a hostNetwork agent may start before the CNI).
	cniRecheck = time.Minute
)

// ErrRolledBack is returned (wrapped) by Guard.SetExitNode when the exit
// node was turned on, failed its commit check and was turned off again.
var ErrRolledBack = errors.New("exit node rolled back")

// ErrCommitBackoff is returned (wrapped) by Guard.SetExitNode when the
// exit node was rolled back recently and is not tried again yet.
var ErrCommitBackoff = errors.New("exit node not retried yet")

// errAborted: the confirmation was interrupted: by shutdown, or because
// the caller cancelled it for a newer exit node (no rollback either way:
// the exit node stays as it is until the next call).
var errAborted = errors.New("commit check interrupted by shutdown or a newer exit node")

// ExitNodeSetter makes tailscaled use the exit node id ("" for none). The
// tailnet Manager satisfies it, and so does the Guard.
type ExitNodeSetter interface {
	SetExitNode(ctx context.Context, id tailcfg.StableNodeID) error
}

// DialFunc dials like net.Dialer.DialContext.
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// Heartbeats of the Guard's loop and of its Bypass reconciler in the
// snapshot (snapshot.Store.Beat), every HeartbeatInterval while they run.
const (
	GuardHeartbeatName  = "bypass-guard"
	BypassHeartbeatName = "bypass"
	HeartbeatInterval   = 5 * time.Second
)

// GuardOptions configure a Guard.
type GuardOptions struct {
	// Inputs are the static bypass destinations (--bypass-cidrs, the
	// kubernetes Service's ClusterIP, control): the Guard adds what the
	// snapshot's Cluster says (every Node's pod CIDRs and addresses, the
	// API server's endpoints, the Service ranges) whenever that changes.
	Inputs BypassInputs
	// ConfirmTargets are IP:port destinations that must answer a TCP dial
	// (a refused connection counts: the host answered) after the exit
	// node is turned on: the API server endpoints in Kubernetes, the
	// configured bypass probe targets outside. Their addresses are
	// bypassed too.
	ConfirmTargets []string
	// NodeConfirmPort is dialled on the other Nodes (Inputs.NodeAddrs):
	// at least one must answer. 0 skips the node check.
	NodeConfirmPort int
	// CommitTimeout is --exit-commit-timeout: the confirmation must
	// succeed within it (0: DefaultCommitTimeout).
	CommitTimeout time.Duration
	// Mark is the firewall mark of the bypass (zero: DefaultBypassMark).
	Mark Mark
	// TUNName is tailscaled's TUN ("": tailscale0).
	TUNName string
	// KillSwitch (--exit-fallback=block) keeps internet traffic off the
	// main table's default route from the first exit node the worker
	// turns on until it stops being a worker (see KillSwitchRules): while
	// tailscaled restarts or boots, across agent restarts and crashes
	// (it stays in the kernel, and StateFile remembers it across
	// reboots), after a rolled-back exit node.
	KillSwitch bool
	// StateFile remembers that the kill switch is armed, so that a new
	// agent (or the node after a reboot) puts it back before tailscaled
	// starts. Empty: only the kernel remembers it.
	StateFile string
	// InputsPending says that the snapshot's Cluster will deliver the
	// destinations that are not known yet (pkg/kube publishes it): until
	// it is Synced Prepare keeps the destinations a previous agent left,
	// so that a restart never drops the bypass of the API server or
	// another node.
	InputsPending bool
}

// GuardDefaults returns the production options.
func GuardDefaults() GuardOptions {
	return GuardOptions{
		NodeConfirmPort: DefaultNodeConfirmPort,
		CommitTimeout:   DefaultCommitTimeout,
		Mark:            DefaultBypassMark,
		TUNName:         Defaults().TUNName,
	}
}

// Validate returns every problem of o at once.
func (o GuardOptions) Validate() error {
	var errs []error
	for _, t := range o.ConfirmTargets {
		if _, err := parseConfirmTarget(t); err != nil {
			errs = append(errs, err)
		}
	}
	if o.NodeConfirmPort < 0 || o.NodeConfirmPort > 65535 {
		errs = append(errs, fmt.Errorf("node confirm port %d: want 1-65535, or 0 to skip the node check", o.NodeConfirmPort))
	}
	if o.CommitTimeout < 0 {
		errs = append(errs, fmt.Errorf("exit commit timeout %v: must not be negative", o.CommitTimeout))
	}
	if !o.Mark.IsZero() {
		if err := o.Mark.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if o.TUNName == UserspaceNetworking {
		errs = append(errs, errors.New("the bypass guard needs a kernel TUN: with userspace networking tailscaled does not route the host's traffic"))
	}
	return errors.Join(errs...)
}

func parseConfirmTarget(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil || ap.Port() == 0 {
		return netip.AddrPort{}, fmt.Errorf("exit commit target %q: want IP:port (an IPv6 address in brackets), with a port of 1-65535", s)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// BypassedTargets returns the addresses (host:port) whose host is an IP
// inside one of bypass, in their order: outside Kubernetes, the
// --check-tcp targets that --bypass-cidrs declares to stay off the exit
// node are the commit targets.
func BypassedTargets(bypass []netip.Prefix, addrs []string) []string {
	var out []string
	for _, a := range addrs {
		ap, err := netip.ParseAddrPort(a)
		if err != nil {
			continue
		}
		ip := ap.Addr().Unmap()
		if slices.ContainsFunc(bypass, func(p netip.Prefix) bool { return p.Contains(ip) }) && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// bypassEngine is what the Guard needs of a Bypass (a fake in tests).
type bypassEngine interface {
	Apply(desired []BypassRule) error
	Remove() error
	Run(ctx context.Context) error
	Owned() ([]BypassRule, error)
}

var _ bypassEngine = (*Bypass)(nil)

// GuardOption configures a Guard.
type GuardOption func(*Guard)

// WithGuardLogger sets the logger; the Guard adds component=bypass.
func WithGuardLogger(l *slog.Logger) GuardOption { return func(g *Guard) { g.log = l } }

// WithGuardClock sets the clock of the retry backoff, of timestamps, of
// the heartbeats, and of the timers of the Guard's Bypass.
func WithGuardClock(c clock.WithTicker) GuardOption { return func(g *Guard) { g.clock = c } }

// WithGuardNetNS makes the Guard install the bypass and dial its confirm
// targets in the network namespace ns (tests, tools).
func WithGuardNetNS(ns netns.NsHandle) GuardOption { return func(g *Guard) { g.ns = ns } }

// WithGuardDialer replaces the dialer of the confirm targets.
func WithGuardDialer(d DialFunc) GuardOption { return func(g *Guard) { g.dial = d } }

// Guard is an ExitNodeSetter that turns an exit node on only behind the
// bypass, and keeps it on only once the node is confirmed still reachable.
// Run it (it follows the role: bypass in place while the role is worker,
// removed otherwise) and Close it on shutdown.
type Guard struct {
	store   *snapshot.Store
	inner   ExitNodeSetter
	opts    GuardOptions
	targets []netip.AddrPort
	log     *slog.Logger
	clock   clock.WithTicker
	ns      netns.NsHandle
	dial    DialFunc
	bypass  bypassEngine
	// links lists the node's link names (CNI detection); nil skips it.
	links func() ([]string, error)
	cniAt time.Time // of the last CNI detection; g.mu

	callMu sync.Mutex // serialises SetExitNode

	mu         sync.Mutex // guards the fields below
	inputs     BypassInputs
	gen        uint64 // of inputs
	applied    bool   // the bypass is installed (Apply called since the last Remove)
	appliedGen uint64
	lastRules  []BypassRule
	cleaned    bool      // Remove succeeded since the last Apply
	leftAt     time.Time // when the role stopped being worker with the bypass installed
	closed     bool
	life       context.Context // Run's, nil before Run
	fails      map[tailcfg.StableNodeID]commitFailure
	noTargets  bool // warned that nothing is confirmed
	// armed: the kill switch is on (KillSwitch, and an exit node was
	// turned on since the role became worker); persisted in StateFile.
	armed bool
	// adopted are destination rules a previous agent left, kept until
	// the pending inputs arrive (InputsPending).
	adopted []BypassRule
	// base are Options.Inputs; cluster is the snapshot's Cluster last
	// merged into inputs.
	base    BypassInputs
	cluster snapshot.Cluster

	kick chan struct{}
}

// commitFailure is the backoff state of one exit node.
type commitFailure struct {
	count   int
	retryAt time.Time
	reason  string
}

var _ ExitNodeSetter = (*Guard)(nil)

// NewGuard returns a Guard that publishes into store and turns exit nodes
// on and off through inner.
func NewGuard(store *snapshot.Store, inner ExitNodeSetter, opts GuardOptions, options ...GuardOption) (*Guard, error) {
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("bypass guard options: %w", err)
	}
	d := GuardDefaults()
	if opts.CommitTimeout == 0 {
		opts.CommitTimeout = d.CommitTimeout
	}
	if opts.Mark.IsZero() {
		opts.Mark = d.Mark
	}
	if opts.TUNName == "" {
		opts.TUNName = d.TUNName
	}
	g := &Guard{
		store:  store,
		inner:  inner,
		opts:   opts,
		log:    slog.Default(),
		clock:  clock.RealClock{},
		ns:     netns.None(),
		inputs: opts.Inputs.clone(),
		base:   opts.Inputs.clone(),
		fails:  map[tailcfg.StableNodeID]commitFailure{},
		kick:   make(chan struct{}, 1),
	}
	for _, t := range opts.ConfirmTargets {
		ap, _ := parseConfirmTarget(t)
		if !slices.Contains(g.targets, ap) {
			g.targets = append(g.targets, ap)
		}
	}
	for _, o := range options {
		o(g)
	}
	if g.bypass == nil {
		g.bypass = NewBypass(BypassOptions{TUNName: opts.TUNName, Mark: opts.Mark},
			WithBypassLogger(g.log), WithBypassNetNS(g.ns), WithBypassClock(g.clock),
			WithBypassBeat(func() { g.store.Beat(BypassHeartbeatName, g.clock.Now()) }))
	}
	g.log = g.log.With("component", "bypass")
	if g.dial == nil {
		g.dial = g.defaultDial
	}
	if g.links == nil {
		g.links = g.linkNames
	}
	return g, nil
}

// defaultDial dials from the Guard's namespace.
func (g *Guard) defaultDial(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := inNetNS(g.ns, func() (err error) {
		c, err = (&net.Dialer{}).DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// linkNames lists the links of the Guard's namespace.
func (g *Guard) linkNames() ([]string, error) {
	var names []string
	err := inNetNS(g.ns, func() error {
		links, err := netlink.LinkList()
		for _, l := range links {
			names = append(names, l.Attrs().Name)
		}
		return err
	})
	return names, err
}

// reportCNIs publishes the informational check "cni-marks": the CNIs on
// the node that mark packets, and whether the bypass mark is clear of
// them (logged when it changes).
func (g *Guard) reportCNIs() {
	if g.links == nil {
		return
	}
	names, err := g.links()
	if err != nil {
		g.log.Warn("cannot list links to detect the CNI", "err", err)
		return
	}
	found := DetectCNIs(names)
	ok, report := CNIMarksReport(found, g.opts.Mark)
	prev, had := g.store.Load().Checks[CheckCNIMarks]
	g.store.SetCheck(CheckCNIMarks, snapshot.Check{OK: ok, Reason: report, CheckedAt: g.clock.Now()})
	if had && prev.OK == ok && prev.Reason == report {
		return
	}
	switch {
	case !ok:
		g.log.Warn("a CNI on this node marks pod packets with the bypass mark", "report", report)
	case len(found) > 0:
		g.log.Info("CNI that marks packets detected", "report", report)
	}
}

// SetInputs replaces every field of the bypass destinations, until the
// snapshot's Cluster changes again (the Guard then merges it with
// Options.Inputs itself). Safe to call from any goroutine, before or
// after Run; a running Guard applies them at once while the role is
// worker.
func (g *Guard) SetInputs(in BypassInputs) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.setInputsLocked(in) {
		select {
		case g.kick <- struct{}{}:
		default:
		}
	}
}

// setInputsLocked replaces the destinations; g.mu must be held. It
// reports whether they changed.
func (g *Guard) setInputsLocked(in BypassInputs) bool {
	if in.Equal(g.inputs) {
		return false
	}
	g.inputs = in.clone()
	g.adopted = nil
	g.gen++
	return true
}

// followCluster merges a new Synced Cluster of the snapshot into the
// destinations; g.mu must be held. The Cluster gives every Node's pod
// CIDRs (pod-to-pod traffic between nodes stays on the overlay), the
// other Nodes' addresses, the API server's endpoints and the Service
// ranges, which add to --bypass-cidrs.
func (g *Guard) followCluster(c snapshot.Cluster) {
	if !c.Synced || c.Equal(g.cluster) {
		return
	}
	g.cluster = c // a snapshot's value: never modified
	in := g.base.clone()
	in.PodCIDRs, in.NodeAddrs, in.ReadyNodeAddrs = g.cluster.PodCIDRs, g.cluster.NodeAddrs, g.cluster.ReadyNodeAddrs
	in.APIEndpoints = g.cluster.APIEndpoints
	in.CIDRs = append(in.CIDRs, g.cluster.ServiceCIDRs...)
	g.setInputsLocked(in)
}

// rulesLocked computes the bypass rules; g.mu must be held.
func (g *Guard) rulesLocked() []BypassRule {
	in := g.inputs.clone()
	for _, t := range g.targets {
		in.APIServers = append(in.APIServers, t.Addr())
	}
	rules := BypassRules(in, g.opts.Mark)
	for _, r := range g.adopted {
		if !slices.Contains(rules, r) {
			rules = append(rules, r)
		}
	}
	if g.opts.KillSwitch && g.armed {
		rules = append(rules, KillSwitchRules()...)
	}
	return rules
}

// setArmedLocked arms or disarms the kill switch and records it in the
// state file; g.mu must be held. It does not touch the kernel.
func (g *Guard) setArmedLocked(armed bool) {
	if g.armed != armed {
		if armed {
			g.log.Info("kill switch armed: from now on, until the node stops being a worker, nothing leaves through the main table's default route",
				"rules", fmt.Sprintf("%d-%d", KillSwitchTailscaledPriority, KillSwitchBlockPriority))
		} else {
			g.log.Info("kill switch disarmed")
		}
	}
	g.armed = armed
	if g.opts.StateFile == "" {
		return
	}
	if err := writeArmed(g.opts.StateFile, armed); err != nil {
		g.log.Error("recording the kill switch in the state dir; the kernel still holds it", "file", g.opts.StateFile, "err", err)
	}
}

// applyLocked installs the bypass for the current inputs; g.mu must be
// held. Even when it fails the bypass counts as applied: the Bypass keeps
// retrying it.
func (g *Guard) applyLocked() error {
	rules := g.rulesLocked()
	if !slices.Equal(rules, g.lastRules) {
		in := g.inputs
		g.log.Info("bypass destinations", "rules", len(rules), "cidrs", len(in.CIDRs), "pod_cidrs", len(in.PodCIDRs),
			"node_addresses", len(in.NodeAddrs), "api_servers", len(in.APIServers), "api_endpoints", len(in.APIEndpoints),
			"confirm_targets", len(g.targets))
		if skipped := BypassSkipped(in); len(skipped) > 0 {
			g.log.Warn("not bypassing destinations in the tailnet ranges: they must use the tailnet", "prefixes", skipped)
		}
	}
	err := g.bypass.Apply(rules)
	g.applied, g.appliedGen, g.lastRules, g.cleaned, g.leftAt = true, g.gen, rules, false, time.Time{}
	return err
}

// Prepare installs the bypass at once when the role is worker, and
// otherwise removes what a crashed agent may have left. Call it before
// tailscaled starts: tailscaled may come up using the exit node of its
// saved prefs, before Run gets going. A failure is logged, returned, and
// retried (by the Bypass's reconciler once Run runs).
//
// A worker adopts what a previous agent left: the kill switch, when the
// kernel or the state file holds it (so fail closed survives agent
// restarts, crashes and reboots), and, while InputsPending, the
// destination rules.
func (g *Guard) Prepare() error {
	sn := g.store.Load()
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil
	}
	if sn.Role != snapshot.RoleWorker {
		return g.removeLocked()
	}
	owned, err := g.bypass.Owned()
	if err != nil {
		g.log.Warn("cannot list the bypass a previous agent left", "err", err)
	}
	inKernel := HasKillSwitch(owned)
	inFile := g.opts.StateFile != "" && readArmed(g.opts.StateFile)
	switch {
	case g.opts.KillSwitch && (inKernel || inFile):
		g.log.Info("adopting the kill switch of a previous agent", "in_kernel", inKernel, "in_state_dir", inFile)
		g.setArmedLocked(true)
	case inKernel || inFile:
		g.log.Info("removing the kill switch of a previous agent: --exit-fallback is direct now")
		g.setArmedLocked(false)
	}
	g.cniAt = g.clock.Now()
	g.reportCNIs()
	if g.opts.InputsPending {
		for _, r := range owned {
			if r.Dst.IsValid() {
				// In a set, or a rule of an earlier agent: a set's now.
				g.adopted = append(g.adopted, BypassRule{Family: r.Family, Dst: r.Dst})
			}
		}
	}
	return g.applyLocked()
}

// Run keeps the bypass in line with the role until ctx is done: installed
// (and kept, see Bypass.Run) while the role is worker, removed when it is
// not (after tailscaled stopped using an exit node, or leaveWait), and
// re-applied when the destinations change (the snapshot's Cluster, or
// SetInputs). At the start, a
// non-worker role removes what a crashed agent may have left. Run never
// removes the bypass on return: Close does. It returns nil.
func (g *Guard) Run(ctx context.Context) error {
	g.mu.Lock()
	g.life = ctx
	g.mu.Unlock()
	bypassDone := make(chan struct{})
	go func() {
		defer close(bypassDone)
		if err := g.bypass.Run(ctx); err != nil {
			g.log.Error("bypass reconciler stopped", "err", err)
		}
	}()
	defer func() { <-bypassDone }()

	var timer clock.Timer
	var timerC <-chan time.Time
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	// The loop beats while it runs: a step stuck in the kernel (or behind
	// a stuck commit) stops the beats, and /livez fails.
	heartbeat := g.clock.NewTicker(HeartbeatInterval)
	defer heartbeat.Stop()
	for {
		changed := g.store.Changed()
		g.store.Beat(GuardHeartbeatName, g.clock.Now())
		if wait := g.step(); wait > 0 && timerC == nil {
			timer = g.clock.NewTimer(wait)
			timerC = timer.C()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-g.kick:
		case <-heartbeat.C():
		case <-timerC:
			timerC = nil
		}
	}
}

// step applies or removes the bypass for the current role. It returns
// when to look again without a change, 0 for never.
func (g *Guard) step() time.Duration {
	sn := g.store.Load()
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return 0
	}
	g.followCluster(sn.Cluster)
	if sn.Role == snapshot.RoleWorker {
		if now := g.clock.Now(); !g.applied || now.Sub(g.cniAt) >= cniRecheck {
			// A hostNetwork agent may start before the CNI: look again.
			g.cniAt = now
			g.reportCNIs()
		}
		if g.applied && g.appliedGen == g.gen {
			return 0
		}
		// Apply logs and retries its own failures.
		_ = g.applyLocked()
		return 0
	}
	if !g.applied && g.cleaned {
		return 0
	}
	if g.applied && sn.Tailnet.ExitNodeID != "" {
		now := g.clock.Now()
		if g.leftAt.IsZero() {
			g.leftAt = now
			g.log.Info("role is no longer worker: keeping the bypass until tailscaled stops using the exit node",
				"role", sn.Role, "at_most", leaveWait)
		}
		if wait := leaveWait - now.Sub(g.leftAt); wait > 0 {
			return wait
		}
		g.log.Warn("tailscaled still uses an exit node; removing the bypass anyway", "role", sn.Role, "after", leaveWait)
	}
	if err := g.removeLocked(); err != nil {
		g.log.Error("cannot remove the bypass; retrying", "err", err, "in", bypassRetry)
		return bypassRetry
	}
	g.store.DeleteCheck(CheckExitCommit)
	g.store.DeleteCheck(CheckCNIMarks)
	return 0
}

// removeLocked removes the bypass and disarms the kill switch: the node
// is no longer a worker. g.mu must be held.
func (g *Guard) removeLocked() error {
	err := g.bypass.Remove()
	g.applied, g.lastRules, g.leftAt, g.adopted = false, nil, time.Time{}, nil
	g.setArmedLocked(false)
	g.cleaned = err == nil
	return err
}

// Close ends the Guard at shutdown: later calls of SetExitNode fail. It
// leaves the bypass and the kill switch in the kernel (and the state
// file) for the next agent to adopt: a rolling update, a liveness restart
// or a crash must not open a window in which the node's traffic leaves
// directly. Removing them is explicit: the role stops being worker, or
// Cleanup (`ts-node-agent cleanup`).
func (g *Guard) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = true
	if g.applied {
		g.log.Info("leaving the bypass in place for the next agent", "kill_switch", g.opts.KillSwitch && g.armed,
			"remove_with", "ts-node-agent cleanup, or the role label set to none")
	}
	return nil
}

// Uninstall removes the bypass and the kill switch for good (the node's
// agent is being uninstalled; call it after tailscaled has stopped).
// Later calls of SetExitNode fail.
func (g *Guard) Uninstall() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = true
	if err := g.removeLocked(); err != nil {
		return fmt.Errorf("removing the bypass: %w", err)
	}
	return nil
}

// SetExitNode turns the exit node id on behind the bypass and confirms the
// node is still reachable, or turns it off ("" passes straight through).
// A failed confirmation turns the exit node off again, publishes the
// reason as the "exit-commit" check and returns an error wrapping
// ErrRolledBack; until the backoff of id has passed, attempts for id fail
// at once with ErrCommitBackoff. The confirmation may take up to the
// commit timeout beyond ctx's deadline (a caller's per-call timeout is
// shorter than the confirmation it asks for); ctx's cancellation and the
// end of Run stop it.
func (g *Guard) SetExitNode(ctx context.Context, id tailcfg.StableNodeID) error {
	g.callMu.Lock()
	defer g.callMu.Unlock()
	if id == "" {
		// An armed kill switch stays: with --exit-fallback=block, no exit
		// node means no internet, never a direct one.
		return g.inner.SetExitNode(ctx, "")
	}
	g.mu.Lock()
	closed := g.closed
	g.mu.Unlock()
	if closed {
		return fmt.Errorf("set exit node %s: the bypass guard is closed", id)
	}
	name := g.describe(id)
	if err := g.backoff(id, name); err != nil {
		return err
	}
	if role := g.store.Load().Role; role != snapshot.RoleWorker {
		// Only a worker uses an exit node; the setter refuses it.
		return g.inner.SetExitNode(ctx, id)
	}

	g.mu.Lock()
	if g.opts.KillSwitch && !g.armed {
		// From the first exit node on: also across a failed commit, whose
		// rollback must leave the node closed, not direct.
		g.setArmedLocked(true)
	}
	err := g.applyLocked()
	g.mu.Unlock()
	if err != nil {
		reason := fmt.Sprintf("exit node %s not turned on: the bypass could not be installed: %v", name, err)
		g.publish(snapshot.Check{Reason: reason})
		g.log.Error("exit node not turned on: no bypass", "exit_node", name, "err", err)
		return errors.New(reason)
	}
	if err := g.inner.SetExitNode(ctx, id); err != nil {
		return err
	}
	start := time.Now()
	err = g.confirm(ctx, id)
	took := time.Since(start)
	switch {
	case err == nil:
		g.mu.Lock()
		delete(g.fails, id)
		g.mu.Unlock()
		g.publish(snapshot.Check{OK: true, Duration: took})
		g.log.Info("exit node committed: the node is still reachable", "exit_node", name,
			"confirmed", g.describeTargets(), "after", took.Round(time.Millisecond))
		return nil
	case errors.Is(err, errAborted):
		return fmt.Errorf("confirming exit node %s: %w", name, err)
	}

	rerr := g.rollback(ctx)
	f := g.recordFailure(id)
	reason := fmt.Sprintf("rolled back exit node %s: %v", name, err)
	if rerr != nil {
		reason = fmt.Sprintf("exit node %s failed its commit check (%v) and turning it off failed: %v", name, err, rerr)
	}
	g.mu.Lock()
	g.fails[id] = commitFailure{count: f.count, retryAt: f.retryAt, reason: reason}
	g.mu.Unlock()
	g.publish(snapshot.Check{Reason: fmt.Sprintf("%s; next attempt after %s", reason, f.retryAt.UTC().Format(time.RFC3339)), Duration: took})
	g.log.Error("exit node rolled back: it would cut the node off", "exit_node", name, "reason", err,
		"rollback_err", rerr, "failures", f.count, "next_attempt", f.retryAt)
	return fmt.Errorf("%w: %s", ErrRolledBack, reason)
}

// rollback turns the exit node off, retrying within rollbackTimeout.
func (g *Guard) rollback(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
	defer cancel()
	var err error
	for {
		if err = g.inner.SetExitNode(rctx, ""); err == nil {
			return nil
		}
		select {
		case <-rctx.Done():
			return err
		case <-time.After(time.Second):
		}
	}
}

// backoff returns an error wrapping ErrCommitBackoff while id may not be
// tried again.
func (g *Guard) backoff(id tailcfg.StableNodeID, name string) error {
	g.mu.Lock()
	f, ok := g.fails[id]
	g.mu.Unlock()
	now := g.clock.Now()
	if !ok || !now.Before(f.retryAt) {
		return nil
	}
	return fmt.Errorf("%w: exit node %s: next attempt after %s (in %s): %s", ErrCommitBackoff, name,
		f.retryAt.UTC().Format(time.RFC3339), f.retryAt.Sub(now).Round(time.Second), f.reason)
}

// recordFailure counts a failed commit of id and computes its backoff.
func (g *Guard) recordFailure(id tailcfg.StableNodeID) commitFailure {
	g.mu.Lock()
	defer g.mu.Unlock()
	f := g.fails[id]
	f.count++
	d := commitBackoffMin
	for i := 1; i < f.count && d < commitBackoffMax; i++ {
		d *= 2
	}
	f.retryAt = g.clock.Now().Add(min(d, commitBackoffMax))
	return f
}

func (g *Guard) publish(c snapshot.Check) {
	c.CheckedAt = g.clock.Now()
	g.store.SetCheck(CheckExitCommit, c)
}

// describe names an exit node "name (id)" when the peer list knows it.
func (g *Guard) describe(id tailcfg.StableNodeID) string {
	if p, ok := g.store.Load().Tailnet.Peer(string(id)); ok {
		name := p.HostName
		if name == "" {
			name, _, _ = strings.Cut(p.DNSName, ".")
		}
		if name != "" {
			return fmt.Sprintf("%s (%s)", name, id)
		}
	}
	return string(id)
}

func (g *Guard) describeTargets() string {
	var parts []string
	for _, t := range g.targets {
		parts = append(parts, t.String())
	}
	g.mu.Lock()
	nodes, endpoints := len(g.inputs.NodeAddrs), len(g.inputs.APIEndpoints)
	g.mu.Unlock()
	if endpoints > 0 {
		parts = append(parts, fmt.Sprintf("one of %d API server endpoints", endpoints))
	}
	if g.opts.NodeConfirmPort > 0 && nodes > 0 {
		parts = append(parts, fmt.Sprintf("one of %d other node addresses on port %d", nodes, g.opts.NodeConfirmPort))
	}
	if len(parts) == 0 {
		return "nothing (no confirm targets)"
	}
	return strings.Join(parts, ", ")
}

// confirm checks, within the commit timeout, that the node is still
// reachable with the exit node id on: it waits (for at most half the
// timeout) until tailscaled's exit route is in the kernel, then dials.
func (g *Guard) confirm(ctx context.Context, id tailcfg.StableNodeID) error {
	timeout := g.opts.CommitTimeout
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	var aborted atomic.Bool
	abort := func() { aborted.Store(true); cancel() }
	defer context.AfterFunc(ctx, func() {
		if errors.Is(ctx.Err(), context.Canceled) {
			abort()
		}
	})()
	g.mu.Lock()
	life := g.life
	nodes := slices.Clone(g.inputs.NodeAddrs)
	ready := slices.Clone(g.inputs.ReadyNodeAddrs)
	endpoints := slices.Clone(g.inputs.APIEndpoints)
	g.mu.Unlock()
	if life != nil {
		defer context.AfterFunc(life, abort)()
	}

	if len(g.targets) == 0 && len(endpoints) == 0 && (g.opts.NodeConfirmPort == 0 || len(nodes) == 0) {
		g.mu.Lock()
		warn := !g.noTargets
		g.noTargets = true
		g.mu.Unlock()
		if warn {
			g.log.Warn("no exit commit targets (API server endpoints, bypass probe targets, other nodes): exit nodes are used without confirming the node stays reachable")
		}
		return nil
	}
	if !g.waitSettled(cctx, id, timeout/2) && cctx.Err() == nil {
		g.log.Warn("tailscaled's exit route is not in the kernel yet; confirming anyway", "exit_node", id)
	}

	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []string
	)
	fail := func(s string) {
		mu.Lock()
		errs = append(errs, s)
		mu.Unlock()
	}
	for _, t := range g.targets {
		wg.Go(func() {
			if err := g.reach(cctx, t.String()); err != nil {
				fail(fmt.Sprintf("%s unreachable within %s through the bypass: %v", t, timeout, err))
			}
		})
	}
	if len(endpoints) > 0 {
		wg.Go(func() {
			if err := g.reachAny(cctx, endpoints, "API server endpoints"); err != nil {
				fail(fmt.Sprintf("no API server endpoint answered within %s: %v", timeout, err))
			}
		})
	}
	if g.opts.NodeConfirmPort > 0 && len(nodes) > 0 {
		wg.Go(func() {
			aps := nodeTargets(nodes, ready, uint16(g.opts.NodeConfirmPort))
			if err := g.reachAny(cctx, aps, "node addresses"); err != nil {
				fail(fmt.Sprintf("no other node answered on port %d within %s: %v", g.opts.NodeConfirmPort, timeout, err))
			}
		})
	}
	wg.Wait()
	if aborted.Load() {
		return errAborted
	}
	if len(errs) > 0 {
		slices.Sort(errs)
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}

// waitSettled waits until the snapshot shows tailscaled using id and its
// exit route in the kernel (the "exit-route-kernel" check), for at most
// limit. It reports whether that happened.
func (g *Guard) waitSettled(ctx context.Context, id tailcfg.StableNodeID, limit time.Duration) bool {
	timer := time.NewTimer(limit)
	defer timer.Stop()
	for {
		changed := g.store.Changed()
		sn := g.store.Load()
		if sn.Tailnet.ExitNodeID == string(id) && sn.Checks[CheckExitRouteKernel].OK {
			return true
		}
		select {
		case <-changed:
		case <-timer.C:
			return false
		case <-ctx.Done():
			return false
		}
	}
}

// reach dials address until it answers (a refused connection answers
// too) or ctx is done; it returns the last error.
func (g *Guard) reach(ctx context.Context, address string) error {
	for {
		err := g.dialOnce(ctx, address)
		if err == nil || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(dialRetryPause):
		}
	}
}

// nodeTargets orders the other nodes' addresses for the commit check:
// those of Ready Nodes first, then the rest, each group shuffled.
func nodeTargets(nodes, ready []netip.Addr, port uint16) []netip.AddrPort {
	isReady := make(map[netip.Addr]bool, len(ready))
	for _, a := range ready {
		isReady[a] = true
	}
	var first, rest []netip.AddrPort
	for _, a := range nodes {
		if isReady[a] {
			first = append(first, netip.AddrPortFrom(a, port))
		} else {
			rest = append(rest, netip.AddrPortFrom(a, port))
		}
	}
	for _, s := range [][]netip.AddrPort{first, rest} {
		rand.Shuffle(len(s), func(i, j int) { s[i], s[j] = s[j], s[i] })
	}
	return append(first, rest...)
}

// reachAny dials addrs, in their order and maxNodeProbes at a time, each
// address once per round and round after round, until one answers or ctx
// is done: a dead address gives its place to the next one, so that many
// unreachable addresses cannot hide a reachable one. what names them in
// the error.
func (g *Guard) reachAny(ctx context.Context, addrs []netip.AddrPort, what string) error {
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu      sync.Mutex
		next    int
		dialled = map[netip.AddrPort]bool{}
		order   []netip.AddrPort
		first   error
	)
	// take returns the next address, and whether every address has been
	// dialled once already (from then on, failing fast means pausing).
	take := func() (netip.AddrPort, bool) {
		mu.Lock()
		defer mu.Unlock()
		a := addrs[next%len(addrs)]
		next++
		if !dialled[a] {
			dialled[a] = true
			order = append(order, a)
		}
		return a, next > len(addrs)
	}
	found := make(chan struct{})
	var once sync.Once
	var wg sync.WaitGroup
	for range min(maxNodeProbes, len(addrs)) {
		wg.Go(func() {
			for actx.Err() == nil {
				a, again := take()
				err := g.dialOnce(actx, a.String())
				if err == nil {
					once.Do(func() { close(found) })
					cancel()
					return
				}
				mu.Lock()
				if first == nil {
					first = err
				}
				mu.Unlock()
				if again && !errors.Is(err, context.DeadlineExceeded) && !isTimeout(err) {
					select { // failed fast (no route, ...) a second time round: do not spin
					case <-actx.Done():
					case <-time.After(dialRetryPause):
					}
				}
			}
		})
	}
	wg.Wait()
	select {
	case <-found:
		return nil
	default:
	}
	mu.Lock()
	defer mu.Unlock()
	if first == nil {
		first = ctx.Err()
	}
	names := make([]string, 0, min(len(order), maxNodeProbes))
	for _, a := range order[:min(len(order), maxNodeProbes)] {
		names = append(names, a.String())
	}
	if len(order) > maxNodeProbes {
		names = append(names, "...")
	}
	return fmt.Errorf("dialled %d of %d %s (%s): %w", len(order), len(addrs), what, strings.Join(names, ", "), first)
}

// dialOnce is one dial of reach: nil when the host answered (connected
// or refused).
func (g *Guard) dialOnce(ctx context.Context, address string) error {
	actx, cancel := context.WithTimeout(ctx, dialAttemptTimeout)
	defer cancel()
	c, err := g.dial(actx, "tcp", address)
	if err == nil {
		c.Close()
		return nil
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return nil
	}
	return err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
