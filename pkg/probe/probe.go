// Package probe owns the agent's health model: it turns a snapshot into the
// startup, liveness and readiness verdicts of DESIGN section 5 and serves
// them as kubelet HTTP probes (/startupz, /livez, /readyz, /healthz).
//
// The heart is the pure function Evaluate (snapshot + options + time ->
// Report). The Tracker runs it whenever the snapshot changes, records the
// first time the node is ready (Store.MarkReady) and logs readiness
// transitions; the HTTP handlers run it on every request.
//
// It also bounds the cost of the --listen port, which a hostNetwork pod
// exposes to anyone who can reach the node: NewServer sets header size
// and timeouts, LimitListener caps the connections from peers that are
// not local and closes the others at accept, and LocalAddrs says which
// peers are local (loopback and the node's own addresses, where kubelet
// probes come from), so that local probes keep answering during a flood.
//
// What this package must not do: call the LocalAPI, the network or the
// Kubernetes API, or block on anything (the one read of its own is
// LocalAddrs' listing of the host's interface addresses, a local query
// made at most every LocalAddrsRefresh). Probes read Store.Load() only, so
// kubelet load can never slow or break tailscaled. Checks that need I/O are
// run by their owners (hostnet, tailnet, netcheck), which publish results
// with Store.SetCheck; this package only decides which of them gate
// readiness for the current role.
package probe

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

// Default option values (DESIGN section 3).
const (
	DefaultLivenessGrace    = 120 * time.Second
	DefaultHeartbeatTimeout = 90 * time.Second
)

// Names of the checks this package derives from the snapshot itself.
const (
	CheckTailscaled = "tailscaled" // readiness: running; liveness: running and answering, or within grace
	CheckBackend    = "backend"    // readiness: BackendState is Running
	CheckTailnetIP  = "tailnet-ip" // readiness: a tailnet IPv4; healthz: any tailnet IP
	CheckExitRoutes = "exit-routes"
	CheckExitNode   = "exit-node"
	CheckLoops      = "loops"      // liveness: no stuck loop
	CheckReadyOnce  = "ready-once" // startup: the node has been ready once
	// CheckNodeKeyExpiry is informational: it fails KeyExpiryWarning
	// before the node's key expires, and is absent when expiry is
	// disabled.
	CheckNodeKeyExpiry = "node-key-expiry"
)

// KeyExpiryWarning is how long before the node key expires the
// node-key-expiry check fails (and the shipped alert fires).
const KeyExpiryWarning = 14 * 24 * time.Hour

// ReasonExitNotApproved is the readiness reason of an exit node whose exit
// routes control has not approved (issue 6 fixes the text; alerts and
// e2e tests match it).
const ReasonExitNotApproved = "exit routes advertised but not approved by the control server"

// ReasonInteractiveLogin is the backend reason while tailscaled waits for
// a human to open its login URL. The URL is in the agent's log only: a
// probe answers anyone who can reach --listen, and whoever opens the URL
// first enrols the node into their tailnet.
const ReasonInteractiveLogin = "needs interactive login (see the agent's log)"

// ReasonNotCheckedYet is the reason of a required published check that has
// no result yet.
const ReasonNotCheckedYet = "not checked yet"

// Options decides which checks gate the probes. The zero value of a
// duration means its default; use DefaultOptions for the documented
// defaults of the booleans too.
type Options struct {
	// LivenessGrace is how long tailscaled may be down, or run without
	// its LocalAPI answering, before liveness fails.
	LivenessGrace time.Duration
	// HeartbeatTimeout: a loop whose last heartbeat is older than this is
	// stuck, which fails liveness. A loop that never beat is not stuck.
	HeartbeatTimeout time.Duration
	// RequireExitApproval: the exit role is ready only once control approved
	// both exit routes.
	RequireExitApproval bool
	// ReadyRequires are extra published check names (for example "tcp:db")
	// that gate readiness in every role.
	ReadyRequires []string
	// RoleChecks are the published check names each role requires (for
	// example exit: forwarding, tun; worker: exit-node-ping, egress-ip).
	RoleChecks map[snapshot.Role][]string
	// Informational are published check names shown in /readyz?verbose
	// (when published) that never gate readiness, e.g. role-watch.
	Informational []string
}

// Declare adds the publishers' check declarations to RoleChecks and
// Informational, in order, without duplicates.
func (o *Options) Declare(decls ...snapshot.CheckDeclaration) {
	if o.RoleChecks == nil {
		o.RoleChecks = map[snapshot.Role][]string{}
	}
	for _, d := range decls {
		for _, r := range d.Gates {
			if !slices.Contains(o.RoleChecks[r], d.Name) {
				o.RoleChecks[r] = append(o.RoleChecks[r], d.Name)
			}
		}
		if d.Informational && !slices.Contains(o.Informational, d.Name) {
			o.Informational = append(o.Informational, d.Name)
		}
	}
}

// DefaultOptions returns the defaults of DESIGN section 3.
func DefaultOptions() Options {
	return Options{
		LivenessGrace:       DefaultLivenessGrace,
		HeartbeatTimeout:    DefaultHeartbeatTimeout,
		RequireExitApproval: true,
	}
}

// Validate reports every problem of o at once.
func (o Options) Validate() error {
	var errs []error
	if o.LivenessGrace < 0 {
		errs = append(errs, fmt.Errorf("liveness grace %v: must not be negative", o.LivenessGrace))
	}
	if o.HeartbeatTimeout < 0 {
		errs = append(errs, fmt.Errorf("heartbeat timeout %v: must not be negative", o.HeartbeatTimeout))
	}
	for _, n := range o.ReadyRequires {
		if strings.TrimSpace(n) == "" {
			errs = append(errs, errors.New("ready-requires: empty check name"))
		}
	}
	for r, names := range o.RoleChecks {
		for _, n := range names {
			if strings.TrimSpace(n) == "" {
				errs = append(errs, fmt.Errorf("role checks of %q: empty check name", r))
			}
		}
	}
	return errors.Join(errs...)
}

func (o Options) livenessGrace() time.Duration {
	if o.LivenessGrace == 0 {
		return DefaultLivenessGrace
	}
	return o.LivenessGrace
}

func (o Options) heartbeatTimeout() time.Duration {
	if o.HeartbeatTimeout == 0 {
		return DefaultHeartbeatTimeout
	}
	return o.HeartbeatTimeout
}

// CheckResult is the verdict of one named check. Reason says why it
// failed; when OK it is empty or a note (what the check found).
type CheckResult struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Reason string `json:"reason,omitempty"`
	// Informational checks are shown but never fail their probe (for
	// example role-watch: an API server outage is worth seeing, not worth
	// taking the node out of service).
	Informational bool `json:"informational,omitempty"`
}

// Result is the verdict of one probe: OK when every check passes.
type Result struct {
	OK     bool
	Checks []CheckResult
}

// Failed returns the checks that failed, in order.
func (r Result) Failed() []CheckResult {
	var out []CheckResult
	for _, c := range r.Checks {
		if !c.OK {
			out = append(out, c)
		}
	}
	return out
}

// Check returns the named check, if r has it.
func (r Result) Check(name string) (CheckResult, bool) {
	for _, c := range r.Checks {
		if c.Name == name {
			return c, true
		}
	}
	return CheckResult{}, false
}

func newResult(checks []CheckResult) Result {
	r := Result{OK: true, Checks: checks}
	for _, c := range checks {
		if !c.OK && !c.Informational {
			r.OK = false
		}
	}
	return r
}

// Report is the health of the node at one instant.
type Report struct {
	Startup Result // /startupz
	Live    Result // /livez
	Ready   Result // /readyz
	Health  Result // /healthz: the node has a tailnet IP (containerboot's meaning)
}

// Evaluate computes the Report of sn at now. It is pure: no I/O, no locks,
// and it does not modify sn.
func Evaluate(sn *snapshot.Snapshot, opts Options, now time.Time) Report {
	var rep Report
	rep.Ready = newResult(readiness(sn, opts, now))
	rep.Live = newResult(liveness(sn, opts, now))
	rep.Health = newResult([]CheckResult{healthz(sn)})
	rep.Startup = startup(sn, rep.Ready)
	return rep
}

func pass(name string) CheckResult { return CheckResult{Name: name, OK: true} }

func fail(name, format string, args ...any) CheckResult {
	return CheckResult{Name: name, Reason: fmt.Sprintf(format, args...)}
}

// readiness lists the readiness checks of sn's role, in a stable order:
// the derived ones first, then the published ones the role and
// ReadyRequires name.
func readiness(sn *snapshot.Snapshot, opts Options, now time.Time) []CheckResult {
	checks := make([]CheckResult, 0, 8)
	checks = append(checks, tailscaledRunning(sn, now), backend(sn.Tailnet), tailnetIPv4(sn.Tailnet))
	switch sn.Role {
	case snapshot.RoleExit:
		checks = append(checks, exitRoutes(sn.Tailnet, opts.RequireExitApproval))
	case snapshot.RoleWorker:
		checks = append(checks, exitNode(sn.Tailnet))
	}
	seen := make(map[string]bool, len(checks))
	for _, c := range checks {
		seen[c.Name] = true
	}
	for _, names := range [][]string{opts.RoleChecks[sn.Role], opts.ReadyRequires} {
		for _, name := range names {
			if name == "" || seen[name] {
				continue
			}
			seen[name] = true
			checks = append(checks, published(sn, name))
		}
	}
	if c, ok := nodeKeyExpiry(sn.Tailnet, now); ok {
		seen[c.Name] = true
		checks = append(checks, c)
	}
	for _, name := range opts.Informational {
		if _, ok := sn.Checks[name]; !ok || seen[name] {
			continue
		}
		seen[name] = true
		c := published(sn, name)
		c.Informational = true
		checks = append(checks, c)
	}
	return checks
}

func tailscaledRunning(sn *snapshot.Snapshot, now time.Time) CheckResult {
	sv := sn.Supervisor
	if sv.Running {
		return pass(CheckTailscaled)
	}
	var details []string
	if since := downSince(sn); !since.IsZero() {
		details = append(details, "down for "+roundDuration(now.Sub(since)))
	}
	if sv.LastExit != "" {
		details = append(details, "last exit: "+sv.LastExit)
	}
	if len(details) == 0 {
		return fail(CheckTailscaled, "tailscaled is not running")
	}
	return fail(CheckTailscaled, "tailscaled is not running (%s)", strings.Join(details, ", "))
}

// downSince is when tailscaled went down: Supervisor.DownSince, or the
// agent start when the supervisor has not said yet.
func downSince(sn *snapshot.Snapshot) time.Time {
	if !sn.Supervisor.DownSince.IsZero() {
		return sn.Supervisor.DownSince
	}
	return sn.StartedAt
}

func backend(t snapshot.Tailnet) CheckResult {
	if !t.Connected {
		return withLoginError(fail(CheckBackend, "no LocalAPI connection to tailscaled"), t)
	}
	var r CheckResult
	switch t.BackendState {
	case "Running":
		return pass(CheckBackend)
	case "NeedsLogin":
		if t.InteractiveLogin {
			r = fail(CheckBackend, "%s", ReasonInteractiveLogin)
		} else {
			r = fail(CheckBackend, "needs login")
		}
	case "NeedsMachineAuth":
		r = fail(CheckBackend, "needs machine authorization by a tailnet admin")
	case "":
		r = fail(CheckBackend, "backend state unknown")
	default:
		r = fail(CheckBackend, "backend state is %s, not Running", t.BackendState)
	}
	return withLoginError(r, t)
}

func withLoginError(r CheckResult, t snapshot.Tailnet) CheckResult {
	if t.LoginError != "" {
		r.Reason += " (login error: " + t.LoginError + ")"
	}
	return r
}

// nodeKeyExpiry is the informational check of the node key's expiry;
// false when expiry is disabled.
func nodeKeyExpiry(t snapshot.Tailnet, now time.Time) (CheckResult, bool) {
	if t.KeyExpiry.IsZero() {
		return CheckResult{}, false
	}
	at := t.KeyExpiry.UTC().Format(time.RFC3339)
	left := t.KeyExpiry.Sub(now)
	var r CheckResult
	switch {
	case left <= 0:
		r = fail(CheckNodeKeyExpiry, "the node key expired at %s: log the node in again (a new auth key), or disable key expiry for it in the admin console", at)
	case left <= KeyExpiryWarning:
		r = fail(CheckNodeKeyExpiry, "the node key expires in %s, at %s: disable key expiry for the node in the admin console, or plan a new login", roundDays(left), at)
	default:
		r = pass(CheckNodeKeyExpiry)
		r.Reason = "the node key expires in " + roundDays(left) + ", at " + at
	}
	r.Informational = true
	return r, true
}

// roundDays shows a long duration in days and hours.
func roundDays(d time.Duration) string {
	days, hours := int(d/(24*time.Hour)), int(d%(24*time.Hour)/time.Hour)
	switch {
	case days == 0:
		return roundDuration(d)
	case hours == 0:
		return fmt.Sprintf("%dd", days)
	}
	return fmt.Sprintf("%dd%dh", days, hours)
}

func tailnetIPv4(t snapshot.Tailnet) CheckResult {
	if _, ok := t.IPv4(); ok {
		return pass(CheckTailnetIP)
	}
	return fail(CheckTailnetIP, "no tailnet IPv4 address yet")
}

func exitRoutes(t snapshot.Tailnet, requireApproval bool) CheckResult {
	switch {
	case !t.ExitRoutesAdvertised:
		return fail(CheckExitRoutes, "exit routes 0.0.0.0/0 and ::/0 are not advertised")
	case requireApproval && !t.ExitRoutesApproved:
		return fail(CheckExitRoutes, "%s", ReasonExitNotApproved)
	}
	return pass(CheckExitRoutes)
}

func exitNode(t snapshot.Tailnet) CheckResult {
	if t.ExitNodeID == "" {
		return fail(CheckExitNode, "no exit node selected")
	}
	p, ok := t.Peer(t.ExitNodeID)
	switch {
	case !ok:
		return fail(CheckExitNode, "exit node %s is not in the peer list", t.ExitNodeID)
	case !p.Online:
		return fail(CheckExitNode, "exit node %s is offline", describePeer(p))
	case !p.ExitNodeOption:
		return fail(CheckExitNode, "exit node %s does not offer an approved exit node", describePeer(p))
	}
	return pass(CheckExitNode)
}

// PeerName is the name a peer is shown with: its host name, else its DNS
// name without the trailing dot, else its ID.
func PeerName(p snapshot.Peer) string {
	switch {
	case p.HostName != "":
		return p.HostName
	case p.DNSName != "":
		return strings.TrimSuffix(p.DNSName, ".")
	}
	return p.ID
}

// PeerIP is a peer's first tailnet IPv4 address, else its first address.
func PeerIP(p snapshot.Peer) (netip.Addr, bool) {
	for _, a := range p.TailscaleIPs {
		if a.Is4() {
			return a, true
		}
	}
	if len(p.TailscaleIPs) > 0 {
		return p.TailscaleIPs[0], true
	}
	return netip.Addr{}, false
}

func describePeer(p snapshot.Peer) string {
	if ip, ok := PeerIP(p); ok {
		return fmt.Sprintf("%s (%s)", PeerName(p), ip)
	}
	return PeerName(p)
}

func published(sn *snapshot.Snapshot, name string) CheckResult {
	c, ok := sn.Checks[name]
	switch {
	case !ok:
		return fail(name, ReasonNotCheckedYet)
	case c.Skipped:
		r := fail(name, "skipped: %s", c.Reason)
		r.Informational = true
		return r
	case c.OK:
		r := pass(name)
		r.Reason = c.Reason // a note, if any
		return r
	case c.Reason == "":
		return fail(name, "failed")
	}
	return fail(name, "%s", c.Reason)
}

func liveness(sn *snapshot.Snapshot, opts Options, now time.Time) []CheckResult {
	return []CheckResult{tailscaledAlive(sn, opts, now), loops(sn, opts, now)}
}

// tailscaledAlive passes while tailscaled runs and its LocalAPI answers,
// or has been down less than the grace. The backend state (a control-plane
// outage) does not matter: the LocalAPI answers then.
func tailscaledAlive(sn *snapshot.Snapshot, opts Options, now time.Time) CheckResult {
	if sn.Supervisor.Running {
		return localAPIAnswers(sn, opts.livenessGrace(), now)
	}
	since := downSince(sn)
	grace := opts.livenessGrace()
	if since.IsZero() || now.Sub(since) < grace {
		return pass(CheckTailscaled)
	}
	r := fail(CheckTailscaled, "tailscaled has been down for %s (liveness grace %s)",
		roundDuration(now.Sub(since)), grace)
	if sn.Supervisor.LastExit != "" {
		r.Reason += ", last exit: " + sn.Supervisor.LastExit
	}
	return r
}

// localAPIAnswers fails when tailscaled runs but its LocalAPI has not
// answered for longer than the grace (a wedged tailscaled, which
// supervision alone cannot see). Until its first answer since it started,
// the time counts from that start. Nothing known (no start, no answer)
// passes.
func localAPIAnswers(sn *snapshot.Snapshot, grace time.Duration, now time.Time) CheckResult {
	started, answered := sn.Supervisor.StartedAt, sn.Tailnet.LocalAPIAnsweredAt
	since := answered
	if since.Before(started) {
		since = started // no answer from this tailscaled yet
	}
	if since.IsZero() || now.Sub(since) <= grace {
		return pass(CheckTailscaled)
	}
	if since.Equal(started) && !answered.Equal(started) {
		return fail(CheckTailscaled, "tailscaled runs but its LocalAPI has not answered since it started %s ago (liveness grace %s)",
			roundDuration(now.Sub(since)), grace)
	}
	return fail(CheckTailscaled, "tailscaled runs but its LocalAPI has not answered for %s (liveness grace %s)",
		roundDuration(now.Sub(since)), grace)
}

func loops(sn *snapshot.Snapshot, opts Options, now time.Time) CheckResult {
	timeout := opts.heartbeatTimeout()
	var stuck []string
	for _, name := range slices.Sorted(maps.Keys(sn.Heartbeats)) {
		at := sn.Heartbeats[name]
		if at.IsZero() {
			continue // never beat yet: not stuck
		}
		if age := now.Sub(at); age > timeout {
			stuck = append(stuck, fmt.Sprintf("loop %s has not run for %s", name, roundDuration(age)))
		}
	}
	if len(stuck) == 0 {
		return pass(CheckLoops)
	}
	return fail(CheckLoops, "%s (heartbeat timeout %s)", strings.Join(stuck, "; "), timeout)
}

func healthz(sn *snapshot.Snapshot) CheckResult {
	switch {
	case !sn.Supervisor.Running:
		return fail(CheckTailnetIP, "tailscaled is not running")
	case !sn.Tailnet.Connected:
		return fail(CheckTailnetIP, "no LocalAPI connection to tailscaled")
	case len(sn.Tailnet.TailscaleIPs) == 0:
		return fail(CheckTailnetIP, "no tailnet IP address yet")
	}
	return pass(CheckTailnetIP)
}

// startup passes once the node has been ready since start, and stays so.
// It also passes when the node is ready right now and the Tracker has not
// recorded it yet, so /startupz never lags /readyz. While it fails, the
// readiness checks are listed too, so ?verbose says what is missing.
func startup(sn *snapshot.Snapshot, ready Result) Result {
	if !sn.FirstReadyAt.IsZero() || ready.OK {
		return newResult([]CheckResult{pass(CheckReadyOnce)})
	}
	checks := make([]CheckResult, 0, 1+len(ready.Checks))
	checks = append(checks, fail(CheckReadyOnce, "not ready yet since start"))
	checks = append(checks, ready.Checks...)
	return newResult(checks)
}

// roundDuration shows d to the second (to the millisecond below a second).
func roundDuration(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	if d < time.Second {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}
