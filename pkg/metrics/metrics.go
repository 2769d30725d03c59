// Package metrics owns the agent's Prometheus side (DESIGN section 6): a
// Collector that turns the snapshot into ts_node_agent_* metrics at scrape
// time, the ts_node_agent_check_duration_seconds histogram the checkers
// observe, and the /metrics handler that appends tailscaled's own user
// metrics (cached by UserMetrics) to ours.
//
// The registry is created by main and injected as a prometheus.Registerer
// or Gatherer: this package never uses the global registry and registers
// nothing in init.
//
// What this package must not do: call the LocalAPI, the network or the
// Kubernetes API while serving a scrape. The Collector reads Store.Load()
// only; tailscaled's metrics are fetched in the background by
// UserMetrics.Run and a scrape only reads the last good copy, so Prometheus
// load can never slow or break tailscaled. Metrics owned by other packages
// (egress IP, TCP checks, tailnet ping, exit node switches) are registered
// by those packages on the same injected registerer.
package metrics

import (
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"

	"github.com/ts-node-agent/ts-node-agent/pkg/probe"
	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

// Namespace prefixes every metric of the agent.
const Namespace = "ts_node_agent"

// BackendStates are tailscaled's ipn.State names, in the order of the enum;
// ts_node_agent_backend_state has one series for each.
var BackendStates = []string{
	"NoState", "InUseOtherUser", "NeedsLogin", "NeedsMachineAuth", "Stopped", "Starting", "Running",
}

// BuildInfo labels ts_node_agent_build_info.
type BuildInfo struct {
	Version          string // the agent's version
	TailscaleVersion string // the tailscale.com module version it is built with
	GoVersion        string // runtime.Version()
}

// DefaultBuildInfo returns the BuildInfo of the running binary: version as
// given, the tailscale.com module version from the build information and
// the Go runtime version.
func DefaultBuildInfo(version string) BuildInfo {
	info := BuildInfo{Version: version, GoVersion: runtime.Version()}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, m := range bi.Deps {
			if m.Path == "tailscale.com" {
				info.TailscaleVersion = m.Version
				if m.Replace != nil && m.Replace.Version != "" {
					info.TailscaleVersion = m.Replace.Version
				}
			}
		}
	}
	return info
}

// Option configures the Collector, UserMetrics and Handler.
type Option func(*settings)

type settings struct {
	clock  clock.WithTicker
	logger *slog.Logger
}

func newSettings(opts []Option) settings {
	s := settings{clock: clock.RealClock{}, logger: slog.Default()}
	for _, o := range opts {
		o(&s)
	}
	s.logger = s.logger.With("component", "metrics")
	return s
}

// WithClock sets the clock (default: real time): the time the Collector
// evaluates probes at, and UserMetrics' ticker.
func WithClock(c clock.WithTicker) Option {
	return func(s *settings) {
		if c != nil {
			s.clock = c
		}
	}
}

// WithLogger sets the logger (default: slog.Default()); component=metrics
// is added to it.
func WithLogger(l *slog.Logger) Option {
	return func(s *settings) {
		if l != nil {
			s.logger = l
		}
	}
}

func newDesc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", name), help, labels, nil)
}

var (
	descBuildInfo = newDesc("build_info",
		"Always 1; the labels say which build of the agent runs.", "version", "tailscale_version", "goversion")
	descRole = newDesc("role",
		"1 for the node's current role (exit, worker, none), 0 for the others.", "role")
	descStartupDuration = newDesc("startup_duration_seconds",
		"Time from agent start to the node's first ready; absent until then.")
	descReady = newDesc("ready",
		"1 when every readiness check of the role passes (/readyz 200).")
	descLive = newDesc("live",
		"1 when the agent is live (/livez 200).")
	descCheckUp = newDesc("check_up",
		"1 when the named readiness or liveness check, or published check, passes.", "check")
	descTailscaledUp = newDesc("tailscaled_up",
		"1 while the tailscaled child process runs.")
	descTailscaledRestarts = newDesc("tailscaled_restarts_total",
		"Restarts of tailscaled after an unexpected exit since the agent started.")
	descBackendState = newDesc("backend_state",
		"1 for tailscaled's current backend state; all 0 without a LocalAPI connection.", "state")
	descPeers = newDesc("peers",
		"Tailnet peers seen by this node, by online status.", "online")
	descExitRouteApproved = newDesc("exit_route_approved",
		"Exit role: 1 when control approved both exit routes of this node.")
	descIPForwarding = newDesc("ip_forwarding_enabled",
		"1 when the kernel forwards IP packets of the family.", "family")
	descExitNodeInfo = newDesc("exit_node_info",
		"Worker: always 1; the labels name the exit node in use.", "ip", "name")
	descExitNodeOnline = newDesc("exit_node_online",
		"Worker: 1 when control reports the selected exit node online.")
	descExitNodeSwitches = newDesc("exit_node_switches_total",
		"Worker: exit node switches since agent start, by reason.", "reason")
	descNodeKeyExpiry = newDesc("node_key_expiry_timestamp_seconds",
		"When this node's key expires, in seconds since the Unix epoch; absent when key expiry is disabled.")
	descTailnetPing = newDesc("tailnet_ping_seconds",
		"Latency of the latest successful tailnet ping to a peer, by path (direct, derp, relay).", "peer", "path")
)

// Collector exposes the snapshot as metrics, computed at scrape time. It is
// a checked collector: Describe lists every metric it may emit.
type Collector struct {
	store *snapshot.Store
	info  BuildInfo
	opts  probe.Options
	s     settings
}

var _ prometheus.Collector = (*Collector)(nil)

// New returns a Collector of store. probeOpts must be the Options the probe
// handlers use, so ts_node_agent_ready agrees with /readyz.
func New(store *snapshot.Store, info BuildInfo, probeOpts probe.Options, opts ...Option) *Collector {
	return &Collector{store: store, info: info, opts: probeOpts, s: newSettings(opts)}
}

// Register creates the Collector of store and the check duration histogram
// and registers both on reg. It returns the histogram, for the checkers.
func Register(reg prometheus.Registerer, store *snapshot.Store, info BuildInfo, probeOpts probe.Options, opts ...Option) (*CheckDurations, error) {
	if reg == nil {
		return nil, errNilRegisterer
	}
	if err := reg.Register(New(store, info, probeOpts, opts...)); err != nil {
		return nil, fmt.Errorf("registering the snapshot collector: %w", err)
	}
	return NewCheckDurations(reg)
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		descBuildInfo, descRole, descStartupDuration, descReady, descLive, descCheckUp,
		descTailscaledUp, descTailscaledRestarts, descBackendState, descPeers,
		descExitRouteApproved, descIPForwarding, descExitNodeInfo, descExitNodeOnline,
		descExitNodeSwitches, descTailnetPing, descNodeKeyExpiry,
	} {
		ch <- d
	}
}

// Collect implements prometheus.Collector. It reads one snapshot and does
// no I/O.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	sn := c.store.Load()
	rep := probe.Evaluate(sn, c.opts, c.s.clock.Now())
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		emit(ch, d, prometheus.GaugeValue, v, labels...)
	}

	gauge(descBuildInfo, 1, c.info.Version, c.info.TailscaleVersion, c.info.GoVersion)
	for _, r := range snapshot.Roles {
		gauge(descRole, b2f(sn.Role == r), string(r))
	}
	if !sn.FirstReadyAt.IsZero() {
		gauge(descStartupDuration, sn.FirstReadyAt.Sub(sn.StartedAt).Seconds())
	}
	gauge(descReady, b2f(rep.Ready.OK))
	gauge(descLive, b2f(rep.Live.OK))
	for name, ok := range checkUps(sn, rep) {
		gauge(descCheckUp, b2f(ok), name)
	}

	gauge(descTailscaledUp, b2f(sn.Supervisor.Running))
	emit(ch, descTailscaledRestarts, prometheus.CounterValue, float64(sn.Supervisor.Restarts))

	tn := sn.Tailnet
	known := false
	for _, st := range BackendStates {
		cur := tn.Connected && tn.BackendState == st
		known = known || cur
		gauge(descBackendState, b2f(cur), st)
	}
	if tn.Connected && !known && tn.BackendState != "" {
		// A state newer than this list: still say which.
		gauge(descBackendState, 1, tn.BackendState)
	}

	online, offline := tn.PeerCounts()
	gauge(descPeers, float64(online), "true")
	gauge(descPeers, float64(offline), "false")

	if sn.Role == snapshot.RoleExit {
		gauge(descExitRouteApproved, b2f(tn.ExitRoutesApproved))
	}
	if sn.Host.Known {
		gauge(descIPForwarding, b2f(sn.Host.IPv4Forwarding), "ipv4")
		gauge(descIPForwarding, b2f(sn.Host.IPv6Forwarding), "ipv6")
	}
	if sn.Role == snapshot.RoleWorker && tn.ExitNodeID != "" {
		p, found := tn.Peer(tn.ExitNodeID)
		if found {
			ip := ""
			if a, ok := probe.PeerIP(p); ok {
				ip = a.String()
			}
			gauge(descExitNodeInfo, 1, ip, probe.PeerName(p))
		}
		gauge(descExitNodeOnline, b2f(found && p.Online))
	}
	for reason, n := range sn.ExitNode.Switches {
		emit(ch, descExitNodeSwitches, prometheus.CounterValue, float64(n), reason)
	}
	for _, p := range sn.Pings {
		if p.OK {
			gauge(descTailnetPing, p.Latency.Seconds(), p.PeerName, p.Path)
		}
	}
	if !tn.KeyExpiry.IsZero() {
		gauge(descNodeKeyExpiry, float64(tn.KeyExpiry.UnixMilli())/1000)
	}
}

// checkUps merges the readiness and liveness checks of rep with the
// published checks of sn. A name in both readiness and liveness (the
// "tailscaled" check) takes the readiness verdict, the stricter one;
// ts_node_agent_live covers the other.
func checkUps(sn *snapshot.Snapshot, rep probe.Report) map[string]bool {
	up := make(map[string]bool, len(rep.Ready.Checks)+len(rep.Live.Checks)+len(sn.Checks))
	for name, c := range sn.Checks {
		up[name] = c.OK
	}
	for _, c := range rep.Live.Checks {
		up[c.Name] = c.OK
	}
	for _, c := range rep.Ready.Checks {
		up[c.Name] = c.OK
	}
	return up
}

func emit(ch chan<- prometheus.Metric, d *prometheus.Desc, t prometheus.ValueType, v float64, labels ...string) {
	m, err := prometheus.NewConstMetric(d, t, v, labels...)
	if err != nil {
		// For example a peer name that is not valid UTF-8: report it
		// and let the rest of the scrape through (ContinueOnError).
		m = prometheus.NewInvalidMetric(d, err)
	}
	ch <- m
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// errNilRegisterer guards Register and NewCheckDurations.
var errNilRegisterer = errors.New("metrics: nil registerer")
