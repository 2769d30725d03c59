package netcheck

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"

	"github.com/ts-node-agent/ts-node-agent/pkg/redact"
	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
	"github.com/ts-node-agent/ts-node-agent/pkg/validate"
)

// Check and loop names published into the snapshot.
const (
	// CheckEgressIP is the egress IP check. It is published whenever egress
	// URLs are configured; the caller decides whether it gates readiness
	// (main: when --expected-egress-ip is set).
	CheckEgressIP = "egress-ip"
	// CheckEgressIPPod is the egress IP check along a pod's path: the
	// same URLs, asked from a source address inside the node's pod CIDR
	// (Options.PodEgress, workers only). It gates like egress-ip; with no
	// such source known it is published Skipped.
	CheckEgressIPPod = "egress-ip-pod"
	// TCPCheckPrefix prefixes the name of every TCP check ("tcp:db").
	TCPCheckPrefix = "tcp:"
	// HeartbeatName is the loop name the Checker beats under.
	HeartbeatName = "netcheck"
)

// Defaults of Options (DESIGN section 3 and issue 7).
const (
	DefaultEgressInterval = 60 * time.Second
	DefaultEgressTimeout  = 10 * time.Second
	DefaultTCPInterval    = 30 * time.Second
	DefaultTCPTimeout     = 5 * time.Second
)

// TCPTarget is a --check-tcp reachability check: dial Addr (host:port) and
// publish the result as check "tcp:Name".
type TCPTarget struct {
	Name string
	Addr string
}

// CheckName returns the name of the target's check, "tcp:NAME".
func (t TCPTarget) CheckName() string { return TCPCheckPrefix + t.Name }

// Options configure the Checker. A zero duration means its default.
type Options struct {
	// EgressURLs answer the caller's IP as plain text or as JSON with an
	// "ip" field (--egress-check-url). None: no egress check at all.
	// Use URLs of one address family: a dual-stack echo service may answer
	// the IPv6 address where another answers the IPv4 one, which is a
	// disagreement.
	EgressURLs []string
	// ExpectedEgressIPs (--expected-egress-ip): when set, the egress-ip
	// check passes only if the observed IP is one of them.
	ExpectedEgressIPs []netip.Addr
	// EgressInterval is the period of the egress check (±10% jitter).
	EgressInterval time.Duration
	// EgressTimeout bounds each request, reading the body included.
	EgressTimeout time.Duration
	// PodEgress enables the egress-ip-pod check while the role is worker:
	// every round also asks the URLs from a source address inside the
	// node's pod CIDR (snapshot PodCIDRs), so that the request leaves the
	// way a pod's packet does: through the exit node, the agent's
	// masquerade and the CNI's NAT rules for the pod CIDR.
	PodEgress bool
	// PodEgressSource overrides that source address
	// (--pod-egress-source); it must be an address of the node.
	PodEgressSource netip.Addr
	// TCPTargets are the --check-tcp targets.
	TCPTargets []TCPTarget
	// TCPInterval is the period of the TCP checks (±10% jitter).
	TCPInterval time.Duration
	// TCPTimeout bounds each dial, name resolution included.
	TCPTimeout time.Duration
}

// Checks declares what the Checker publishes with these options:
// egress-ip gates the exit and worker roles when expected egress IPs are
// set, and so does egress-ip-pod for a worker with PodEgress (its pods
// must leave through the exit node too); both, and every "tcp:NAME"
// check, are informational otherwise (a TCP check gates readiness only
// when --ready-requires names it). A none node does not use the exit
// node, so it is not held to the egress IP.
func (o Options) Checks() []snapshot.CheckDeclaration {
	var gates, podGates []snapshot.Role
	if len(o.ExpectedEgressIPs) > 0 {
		gates = []snapshot.Role{snapshot.RoleExit, snapshot.RoleWorker}
		if o.PodEgress {
			podGates = []snapshot.Role{snapshot.RoleWorker}
		}
	}
	decls := []snapshot.CheckDeclaration{
		{Name: CheckEgressIP, Gates: gates, Informational: true},
		{Name: CheckEgressIPPod, Gates: podGates, Informational: true},
	}
	for _, t := range o.TCPTargets {
		decls = append(decls, snapshot.CheckDeclaration{Name: TCPCheckPrefix + t.Name, Informational: true})
	}
	return decls
}

// Defaults returns the documented defaults (no URLs, no targets).
func Defaults() Options {
	return Options{
		EgressInterval: DefaultEgressInterval,
		EgressTimeout:  DefaultEgressTimeout,
		TCPInterval:    DefaultTCPInterval,
		TCPTimeout:     DefaultTCPTimeout,
	}
}

// withDefaults fills in the zero durations.
func (o Options) withDefaults() Options {
	d := Defaults()
	if o.EgressInterval == 0 {
		o.EgressInterval = d.EgressInterval
	}
	if o.EgressTimeout == 0 {
		o.EgressTimeout = d.EgressTimeout
	}
	if o.TCPInterval == 0 {
		o.TCPInterval = d.TCPInterval
	}
	if o.TCPTimeout == 0 {
		o.TCPTimeout = d.TCPTimeout
	}
	return o
}

// Validate returns every problem of o at once. Zero durations are valid
// (they mean the default).
func (o Options) Validate() error {
	var errs []error
	seenURL := map[string]bool{}
	for _, u := range o.EgressURLs {
		if err := checkURL(u); err != nil {
			errs = append(errs, err)
		}
		if seenURL[u] {
			errs = append(errs, fmt.Errorf("egress check URL %q is listed twice", redact.URL(u)))
		}
		seenURL[u] = true
	}
	for _, a := range o.ExpectedEgressIPs {
		if !a.IsValid() || a.Zone() != "" || a.IsUnspecified() {
			errs = append(errs, fmt.Errorf("expected egress IP %q: want an IPv4 or IPv6 address without zone", a))
		}
	}
	if a := o.PodEgressSource; a.IsValid() && (a.Zone() != "" || a.IsUnspecified() || a.IsMulticast()) {
		errs = append(errs, fmt.Errorf("pod egress source %q: want a unicast address of this node without zone", a))
	}
	if len(o.ExpectedEgressIPs) > 0 && len(o.EgressURLs) == 0 {
		errs = append(errs, errors.New("expected egress IPs need at least one egress check URL to observe the egress IP"))
	}
	seenName := map[string]bool{}
	for _, t := range o.TCPTargets {
		if err := checkTCPTarget(t); err != nil {
			errs = append(errs, err)
		}
		if seenName[t.Name] {
			errs = append(errs, fmt.Errorf("TCP check name %q is used twice", t.Name))
		}
		seenName[t.Name] = true
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"egress interval", o.EgressInterval},
		{"egress timeout", o.EgressTimeout},
		{"TCP interval", o.TCPInterval},
		{"TCP timeout", o.TCPTimeout},
	} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s %v: must not be negative", d.name, d.v))
		}
	}
	return errors.Join(errs...)
}

// checkURL applies validate.HTTPURL, the rule pkg/config checks at startup.
func checkURL(s string) error {
	if err := validate.HTTPURL(s); err != nil {
		return fmt.Errorf("egress check URL %q: want an http:// or https:// URL with a host: %w", redact.URL(s), err)
	}
	return nil
}

func checkTCPTarget(t TCPTarget) error {
	if t.Name == "" || strings.ContainsAny(t.Name, " \t\n=,") {
		return fmt.Errorf("TCP check %s=%s: want a non-empty name without spaces, '=' or ','", t.Name, t.Addr)
	}
	host, port, err := net.SplitHostPort(t.Addr)
	if err != nil {
		return fmt.Errorf("TCP check %s=%s: %w", t.Name, t.Addr, err)
	}
	if host == "" {
		return fmt.Errorf("TCP check %s=%s: missing host", t.Name, t.Addr)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return fmt.Errorf("TCP check %s=%s: port %q is not a number from 1 to 65535", t.Name, t.Addr, port)
	}
	return nil
}

// DurationObserver records how long a check took. In production it is
// *metrics.CheckDurations (ts_node_agent_check_duration_seconds).
type DurationObserver interface {
	Observe(check string, d time.Duration)
}

// DialFunc dials a network connection, like net.Dialer.DialContext.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Option configures a Checker.
type Option func(*Checker)

// WithRegisterer registers the Checker's metrics on reg. Without it the
// metrics are kept but not exposed.
func WithRegisterer(reg prometheus.Registerer) Option {
	return func(c *Checker) { c.reg = reg }
}

// WithDurations sets where check durations are observed.
func WithDurations(d DurationObserver) Option {
	return func(c *Checker) { c.durations = d }
}

// WithHTTPClient sets the client of the egress check. The default one
// follows the node's routing, uses no proxy and no keep-alive (a
// connection opened before an exit node change would still take the old
// path, or hang). The Checker bounds every request with its own timeout,
// and uses a copy of hc that never follows redirects.
func WithHTTPClient(hc *http.Client) Option {
	return func(c *Checker) { c.client = hc }
}

// WithDialer sets the dialer of the TCP checks, and of the default HTTP
// client unless WithHTTPClient is given.
func WithDialer(dial DialFunc) Option {
	return func(c *Checker) { c.dial = dial }
}

// WithPodDialer sets how the egress-ip-pod check dials from a source
// address (default: net.Dialer with LocalAddr).
func WithPodDialer(f func(src netip.Addr) DialFunc) Option {
	return func(c *Checker) { c.podDial = f }
}

// WithLocalAddrs sets how the node's own addresses are listed, to find
// the one inside the pod CIDR (default: net.InterfaceAddrs).
func WithLocalAddrs(f func() ([]netip.Prefix, error)) Option {
	return func(c *Checker) { c.localAddrs = f }
}

// WithClock sets the clock (intervals, timestamps, durations).
func WithClock(clk clock.WithTicker) Option {
	return func(c *Checker) { c.clock = clk }
}

// WithLogger sets the logger; the Checker adds component=netcheck.
func WithLogger(l *slog.Logger) Option {
	return func(c *Checker) { c.log = l }
}

// WithRand sets the source of the interval jitter: a function returning a
// number in [0, 1), safe for concurrent use. 0.5 means no jitter.
func WithRand(f func() float64) Option {
	return func(c *Checker) { c.rand = f }
}
