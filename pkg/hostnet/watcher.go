package hostnet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"k8s.io/utils/clock"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
	"github.com/ts-node-agent/ts-node-agent/pkg/validate"
)

// HeartbeatName is the loop name the Watcher beats under.
const HeartbeatName = "hostnet"

// Timing of the Watcher.
const (
	// debounceDelay groups the burst of notifications one change makes
	// (tailscaled adds four rules and several routes at once).
	debounceDelay = 50 * time.Millisecond
	// sysctlInterval is how often the forwarding sysctls are re-read (and
	// the heartbeat beats): sysctls have no change notification, and a
	// change must show within a second, reading included.
	sysctlInterval = 500 * time.Millisecond
	// retryDelay is the wait before re-reading after a netlink read error,
	// and before re-subscribing after the subscription broke.
	retryDelay = time.Second
	// republishInterval refreshes an unchanged check's CheckedAt, so that
	// readers can tell a current result from a stale one.
	republishInterval = 30 * time.Second
)

// Options configure the host networking part of the agent.
type Options struct {
	// TUNName is tailscaled's TUN interface (--tun); UserspaceNetworking
	// skips everything about the TUN, kernel routes and forwarding.
	TUNName string
	// TUNDevice is the TUN clone device (DefaultTUNDevice).
	TUNDevice string
	// ProcSys is where the sysctls are (DefaultProcSys).
	ProcSys string
	// ForwardingOptimizations enables UDP GRO forwarding on the
	// default-route interface for the exit role.
	ForwardingOptimizations bool
}

// Defaults returns the production options.
func Defaults() Options {
	return Options{
		TUNName:                 "tailscale0",
		TUNDevice:               DefaultTUNDevice,
		ProcSys:                 DefaultProcSys,
		ForwardingOptimizations: true,
	}
}

// Checks declares what the Watcher publishes with these options: tun
// gates every role, forwarding the exit role, exit-route-kernel the
// worker role, udp-gro-forwarding none; nothing in userspace networking.
func (o Options) Checks() []snapshot.CheckDeclaration {
	if o.Userspace() {
		return nil
	}
	return []snapshot.CheckDeclaration{
		{Name: CheckTUN, Gates: []snapshot.Role{snapshot.RoleExit, snapshot.RoleWorker, snapshot.RoleNone}},
		{Name: CheckForwarding, Gates: []snapshot.Role{snapshot.RoleExit}},
		{Name: CheckExitRouteKernel, Gates: []snapshot.Role{snapshot.RoleWorker}},
		{Name: CheckUDPGROForwarding, Informational: true},
	}
}

// Userspace reports whether tailscaled runs without a TUN.
func (o Options) Userspace() bool { return o.TUNName == UserspaceNetworking }

// Validate returns every problem of o at once.
func (o Options) Validate() error {
	var errs []error
	if !o.Userspace() {
		if err := validate.InterfaceName(o.TUNName); err != nil {
			errs = append(errs, fmt.Errorf("invalid TUN name %q: %v; want an interface name of 1 to %d characters without '/', ':' or spaces, or %q",
				o.TUNName, err, validate.MaxInterfaceName, UserspaceNetworking))
		}
		if !filepath.IsAbs(o.TUNDevice) {
			errs = append(errs, fmt.Errorf("invalid TUN device %q: want an absolute path", o.TUNDevice))
		}
	}
	if !filepath.IsAbs(o.ProcSys) {
		errs = append(errs, fmt.Errorf("invalid /proc/sys root %q: want an absolute path", o.ProcSys))
	}
	return errors.Join(errs...)
}

// Option configures a Watcher.
type Option func(*Watcher)

// WithLogger sets the logger; the Watcher adds component=hostnet.
func WithLogger(l *slog.Logger) Option { return func(w *Watcher) { w.log = l } }

// WithClock sets the clock (timestamps, the sysctl ticker, timers).
func WithClock(c clock.WithTicker) Option { return func(w *Watcher) { w.clock = c } }

// WithNetNS makes the Watcher prepare and watch the network namespace ns
// instead of the agent's own (tests, tools driving several namespaces).
// ns must stay open while the Watcher is used. The /proc/sys root must
// then be the real /proc/sys (read from a thread in ns) or a directory.
func WithNetNS(ns netns.NsHandle) Option { return func(w *Watcher) { w.ns = ns } }

// Watcher prepares the host for tailscaled and then proves, from the
// kernel, that the host side of networking matches the node's role.
type Watcher struct {
	store *snapshot.Store
	opts  Options
	log   *slog.Logger
	clock clock.WithTicker
	ns    netns.NsHandle

	// defaultRouteIface finds the default-route interface (netmon's
	// lookup; replaced in tests, where /proc/net shows another namespace).
	defaultRouteIface func() (string, error)

	mu sync.Mutex // guards the forwarding state below (Prepare vs Run)
	// actedRole is the role whose forwarding was last applied.
	actedRole   snapshot.Role
	roleApplied bool
	// enabled is which forwarding the agent itself turned on.
	enabled Forwarding
	// enableErr is why the last attempt to enable forwarding failed.
	enableErr string

	// Run's own state (only its goroutine touches these).
	ks         KernelState
	netlinkDur time.Duration
	sysctlDur  time.Duration
	tunIndex   atomic.Int32
	gro        groState
	published  map[string]publishedCheck
}

type groState struct {
	tunIndex int
	iface    string
	tried    bool
	check    snapshot.Check
}

type publishedCheck struct {
	c  snapshot.Check
	at time.Time
}

// New returns a Watcher that publishes into store. Empty string options
// take their Defaults.
func New(store *snapshot.Store, opts Options, options ...Option) *Watcher {
	d := Defaults()
	if opts.TUNName == "" {
		opts.TUNName = d.TUNName
	}
	if opts.TUNDevice == "" {
		opts.TUNDevice = d.TUNDevice
	}
	if opts.ProcSys == "" {
		opts.ProcSys = d.ProcSys
	}
	w := &Watcher{
		store:     store,
		opts:      opts,
		log:       slog.Default(),
		clock:     clock.RealClock{},
		ns:        netns.None(),
		published: map[string]publishedCheck{},
	}
	w.defaultRouteIface = defaultRouteInterface
	for _, o := range options {
		o(w)
	}
	w.log = w.log.With("component", "hostnet")
	return w
}

// Prepare readies the host before tailscaled starts: the TUN device
// (unless userspace networking) and, for the exit role (read from the
// store: publish the initial role first), IP forwarding. It publishes the
// forwarding state (snapshot.Host). An error means tailscaled cannot do
// the job: for a missing TUN it cannot start at all; for the exit role,
// forwarding is off and could not be turned on (the "forwarding" check
// will say so too).
func (w *Watcher) Prepare() error {
	if !w.opts.Userspace() {
		if err := EnsureTUNDevice(w.opts.TUNDevice); err != nil {
			return err
		}
	}
	err := w.applyRole(w.store.Load().Role)
	st, rerr := w.readSysctls()
	if rerr == nil {
		w.publishHost(st)
	}
	return errors.Join(err, rerr)
}

// applyRole does what a role needs from forwarding, once per role change:
// the exit role turns forwarding on. Leaving it turns nothing off (pod
// networking on a Kubernetes node needs forwarding), and no other role
// ever turns it on.
// With userspace networking the kernel does not forward: nothing to do.
func (w *Watcher) applyRole(role snapshot.Role) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.roleApplied && role == w.actedRole {
		return nil
	}
	w.actedRole, w.roleApplied = role, true
	w.enableErr = ""
	if w.opts.Userspace() {
		return nil
	}
	if role == snapshot.RoleExit {
		var changed Forwarding
		err := inNetNS(w.ns, func() (err error) {
			changed, err = EnableForwarding(w.opts.ProcSys)
			return err
		})
		w.enabled.IPv4 = w.enabled.IPv4 || changed.IPv4
		w.enabled.IPv6 = w.enabled.IPv6 || changed.IPv6
		if err != nil {
			w.enableErr = err.Error()
			w.log.Error("cannot enable IP forwarding for the exit role", "err", err)
			return err
		}
		if changed.Any() {
			w.log.Info("enabled IP forwarding for the exit role", "ipv4", changed.IPv4, "ipv6", changed.IPv6)
		}
	}
	return nil
}

func (w *Watcher) forwardingState() (enabled Forwarding, enableErr string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.enabled, w.enableErr
}

func (w *Watcher) readSysctls() (ForwardingState, error) {
	var st ForwardingState
	err := inNetNS(w.ns, func() (err error) {
		st, err = ReadForwarding(w.opts.ProcSys)
		return err
	})
	return st, err
}

// publishHost publishes the forwarding state if it changed.
func (w *Watcher) publishHost(st ForwardingState) {
	enabled, _ := w.forwardingState()
	h := snapshot.Host{
		Known:                    true,
		IPv4Forwarding:           st.IPv4,
		IPv6Forwarding:           st.IPv6,
		ForwardingEnabledByAgent: enabled.Any(),
	}
	if w.store.Load().Host != h {
		w.store.SetHost(h)
	}
}

// inputs is what the Watcher needs from the snapshot.
type inputs struct {
	role     snapshot.Role
	exitNode bool
	ips      string // the tailnet IPs, comparable
	addrs    []netip.Addr
}

func inputsOf(sn *snapshot.Snapshot) inputs {
	in := inputs{
		role:     sn.Role,
		exitNode: sn.Tailnet.ExitNodeID != "",
		addrs:    sn.Tailnet.TailscaleIPs,
	}
	var b strings.Builder
	for _, a := range in.addrs {
		b.WriteString(a.String())
		b.WriteByte(' ')
	}
	in.ips = b.String()
	return in
}

func (in inputs) same(o inputs) bool {
	return in.role == o.role && in.exitNode == o.exitNode && in.ips == o.ips
}

// Run watches the kernel until ctx is done, keeping the checks "tun",
// "forwarding" (exit role), "exit-route-kernel" (worker using an exit node)
// and "udp-gro-forwarding" (exit role with forwarding optimizations) up to
// date in the store, and beating the "hostnet" heartbeat twice a second. It
// follows role changes (forwarding on for exit, off again on leaving exit
// if the agent turned it on). Start it once tailscaled is up. It returns
// nil when ctx is done, or an error if netlink cannot be used at all.
func (w *Watcher) Run(ctx context.Context) error {
	var k *kernel
	f := newFollower(w.ns, w.clock, debounceDelay, retryDelay, netlinkSub{
		proto:  unix.NETLINK_ROUTE,
		groups: watchGroups,
		relevant: func(m syscall.NetlinkMessage) bool {
			return relevantEvent(m, w.opts.TUNName, int(w.tunIndex.Load()))
		},
	})
	defer f.close()
	if !w.opts.Userspace() {
		var err error
		if k, err = openKernel(w.ns); err != nil {
			return fmt.Errorf("hostnet: open netlink: %w", err)
		}
		defer k.close()
		// Subscribe before the first read, so no change falls in between.
		if err := f.start(); err != nil {
			return fmt.Errorf("hostnet: %w", err)
		}
	}

	ticker := w.clock.NewTicker(sysctlInterval)
	defer ticker.Stop()
	changed := w.store.Changed()
	in := inputsOf(w.store.Load())
	w.applyRole(in.role)
	w.store.Beat(HeartbeatName, w.clock.Now())
	w.refresh(k, in)
	if w.ks.ReadErr != "" {
		f.after(retryDelay)
	}

	for {
		select {
		case <-ctx.Done():
			return nil
		case <-f.events:
			f.notified()
		case err := <-f.broken:
			w.log.Warn("netlink subscription broke; re-subscribing", "err", err, "in", retryDelay)
			f.broke()
		case <-f.due():
			if err := f.fired(); err != nil {
				w.log.Warn("cannot re-subscribe to netlink events", "err", err)
				continue
			}
			w.refresh(k, in)
			if w.ks.ReadErr != "" {
				f.after(retryDelay)
			}
		case <-changed:
			changed = w.store.Changed()
			next := inputsOf(w.store.Load())
			if next.same(in) {
				continue
			}
			in = next
			w.applyRole(in.role)
			w.refresh(k, in)
		case <-ticker.C():
			now := w.clock.Now()
			w.store.Beat(HeartbeatName, now)
			w.refreshSysctls(in)
		}
	}
}

// refresh reads the whole kernel state and publishes the checks.
func (w *Watcher) refresh(k *kernel, in inputs) {
	fwd, fwdErr := w.ks.Forwarding, w.ks.ForwardingErr
	if k != nil {
		start := w.clock.Now()
		w.ks = k.read(w.opts.TUNName, func(i int) { w.tunIndex.Store(int32(i)) })
		w.netlinkDur = w.clock.Since(start)
		if w.ks.ReadErr != "" {
			w.log.Warn("cannot read the kernel's network state", "err", w.ks.ReadErr)
		}
	}
	w.ks.Forwarding, w.ks.ForwardingErr = fwd, fwdErr
	w.readForwardingInto()
	w.evaluateAndPublish(in, true)
}

// refreshSysctls re-reads the forwarding sysctls and publishes what
// changed.
func (w *Watcher) refreshSysctls(in inputs) {
	before, beforeErr := w.ks.Forwarding, w.ks.ForwardingErr
	w.readForwardingInto()
	if w.ks.Forwarding == before && w.ks.ForwardingErr == beforeErr {
		w.republishStale()
		return
	}
	w.evaluateAndPublish(in, false)
}

func (w *Watcher) readForwardingInto() {
	start := w.clock.Now()
	st, err := w.readSysctls()
	w.sysctlDur = w.clock.Since(start)
	if err != nil {
		w.ks.ForwardingErr = err.Error()
		return
	}
	w.ks.Forwarding, w.ks.ForwardingErr = st, ""
	w.publishHost(st)
}

// evaluateAndPublish computes the checks for the current inputs and kernel
// state and publishes those that changed; full is true after a netlink
// read (UDP GRO forwarding is only reconsidered then).
func (w *Watcher) evaluateAndPublish(in inputs, full bool) {
	_, w.ks.EnableErr = w.forwardingState()
	exp := ExpectedKernelState(in.role, in.exitNode, w.opts.TUNName, in.addrs)
	checks := Evaluate(exp, w.ks)
	for name, c := range checks {
		c.Duration = w.netlinkDur
		if name == CheckForwarding {
			c.Duration = w.sysctlDur
		}
		checks[name] = c
	}
	if w.groApplies(in) {
		if full {
			w.updateGRO()
		}
		checks[CheckUDPGROForwarding] = w.gro.check
	} else {
		w.gro = groState{}
	}
	w.publish(checks)
}

func (w *Watcher) groApplies(in inputs) bool {
	return in.role == snapshot.RoleExit && w.opts.ForwardingOptimizations && !w.opts.Userspace()
}

// updateGRO enables UDP GRO forwarding when the TUN or the default-route
// interface changed since the last attempt.
func (w *Watcher) updateGRO() {
	if w.ks.ReadErr != "" {
		return // keep the last result until the state can be read
	}
	if w.ks.Link == nil {
		w.gro = groState{check: snapshot.Check{Reason: fmt.Sprintf("%s: link %q not found", CheckUDPGROForwarding, w.opts.TUNName)}}
		return
	}
	start := w.clock.Now()
	var iface string
	var ifaceErr error
	_ = inNetNS(w.ns, func() error {
		iface, ifaceErr = w.defaultRouteIface()
		return nil
	})
	if w.gro.tried && w.gro.tunIndex == w.ks.Link.Index && w.gro.iface == iface {
		return
	}
	w.gro = groState{tunIndex: w.ks.Link.Index, iface: iface, tried: true}
	err := inNetNS(w.ns, func() error {
		_, err := enableUDPGROForwarding(w.opts.TUNName, func() (string, error) { return iface, ifaceErr })
		return err
	})
	w.gro.check = snapshot.Check{OK: err == nil, Duration: w.clock.Since(start)}
	if err != nil {
		w.gro.check.Reason = CheckUDPGROForwarding + ": " + err.Error()
		w.log.Warn("UDP GRO forwarding not enabled; exit node throughput may be lower", "tun", w.opts.TUNName, "iface", iface, "err", err)
		return
	}
	w.log.Info("UDP GRO forwarding is enabled", "tun", w.opts.TUNName, "iface", iface)
}

// publish sets the checks that changed (or whose CheckedAt is stale) and
// deletes the ones of this package that no longer apply.
func (w *Watcher) publish(checks map[string]snapshot.Check) {
	now := w.clock.Now()
	for _, name := range checkNames {
		c, ok := checks[name]
		if !ok {
			if _, was := w.published[name]; was {
				delete(w.published, name)
			}
			if _, exists := w.store.Load().Checks[name]; exists {
				w.store.DeleteCheck(name)
			}
			continue
		}
		last, was := w.published[name]
		if was && last.c.OK == c.OK && last.c.Reason == c.Reason && now.Sub(last.at) < republishInterval {
			continue
		}
		if !was || last.c.OK != c.OK || last.c.Reason != c.Reason {
			if c.OK {
				w.log.Info("check passes", "check", name)
			} else {
				w.log.Warn("check fails", "check", name, "reason", c.Reason)
			}
		}
		c.CheckedAt = now
		w.store.SetCheck(name, c)
		w.published[name] = publishedCheck{c: c, at: now}
	}
}

// republishStale refreshes CheckedAt of checks unchanged for
// republishInterval.
func (w *Watcher) republishStale() {
	now := w.clock.Now()
	for _, name := range slices.Sorted(maps.Keys(w.published)) {
		p := w.published[name]
		if now.Sub(p.at) < republishInterval {
			continue
		}
		p.c.CheckedAt = now
		w.store.SetCheck(name, p.c)
		p.at = now
		w.published[name] = p
	}
}
