package config

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	"github.com/ts-node-agent/ts-node-agent/pkg/authkey"
	"github.com/ts-node-agent/ts-node-agent/pkg/hostnet"
	"github.com/ts-node-agent/ts-node-agent/pkg/redact"
	"github.com/ts-node-agent/ts-node-agent/pkg/validate"
)

// Role is what a node does on the tailnet.
type Role string

const (
	// RoleFromLabel reads the role from the Node's --role-label label.
	RoleFromLabel Role = "label"
	// RoleExit advertises the node as an exit node.
	RoleExit Role = "exit"
	// RoleWorker routes the node's internet traffic through an exit node.
	RoleWorker Role = "worker"
	// RoleNone only joins the tailnet.
	RoleNone Role = "none"
)

// ExitFallback is what a worker does when no exit node candidate is healthy.
type ExitFallback string

const (
	// FallbackBlock keeps the exit node set: no internet (fail closed).
	FallbackBlock ExitFallback = "block"
	// FallbackDirect clears the exit node: direct internet (fail open).
	FallbackDirect ExitFallback = "direct"
)

// LogFormat is the log/slog handler of the agent.
type LogFormat string

const (
	LogFormatJSON LogFormat = "json"
	LogFormatText LogFormat = "text"
)

const (
	// ExitNodeAuto is the --exit-nodes candidate meaning "any approved exit
	// node of the tailnet".
	ExitNodeAuto = validate.ExitNodeAuto
	// TUNUserspace is the --tun value for userspace networking (no TUN).
	TUNUserspace = "userspace-networking"
)

// TCPTarget is a --check-tcp reachability check: dial Addr (host:port) and
// report it under Name (readiness name "tcp:NAME").
type TCPTarget struct {
	Name string
	Addr string
}

// String returns the target as written on the command line, name=host:port.
func (t TCPTarget) String() string { return t.Name + "=" + t.Addr }

// Config is the whole configuration of ts-node-agent. Build one with Parse
// (flags and environment) or Defaults (tests); Validate checks it.
type Config struct {
	// Role: label (read from the Node), or forced exit, worker or none.
	Role Role
	// RoleLabel is the Node label key whose value is the role.
	RoleLabel string
	// DefaultRole is the role when the label is absent (exit, worker, none).
	DefaultRole Role
	// NodeName is this node's name; required with Role=label.
	NodeName string
	// Kubeconfig is a kubeconfig path; "" means in-cluster config.
	Kubeconfig string
	// PodName and PodNamespace (downward API) locate this pod for
	// Kubernetes Events; without them no Events are emitted.
	PodName      string
	PodNamespace string

	// ExitNodes are the worker's ordered exit node candidates: tailnet IP,
	// hostname, tag:NAME or auto.
	ExitNodes []string
	// ExitNodeAllowLANAccess keeps the LAN reachable while using an exit node.
	ExitNodeAllowLANAccess bool
	// ExitFallback is what a worker does with no healthy candidate.
	ExitFallback ExitFallback
	// FailbackAfter is how long a better candidate must stay healthy before
	// the worker switches back to it.
	FailbackAfter time.Duration
	// RequireExitApproval: an exit node is not ready until control approved
	// 0.0.0.0/0 and ::/0.
	RequireExitApproval bool
	// ForwardingOptimizations enables UDP GRO forwarding on an exit node.
	ForwardingOptimizations bool
	// BypassCIDRs never use the exit node (service CIDR, ...).
	BypassCIDRs []netip.Prefix
	// ExitCommitTimeout is how long a worker has to confirm that the API
	// server and other nodes are still reachable after turning the exit node
	// on, before it rolls back.
	ExitCommitTimeout time.Duration
	// BypassMark is the reply-bypass firewall and connection mark.
	BypassMark hostnet.Mark
	// PodEgressSource is the source address of the egress-ip-pod check;
	// unset, the node's address inside its pod CIDR.
	PodEgressSource netip.Addr

	// AdvertiseExitNode reports that TS_EXTRA_ARGS held --advertise-exit-node.
	// It is already folded into Role (exit, unless the role was explicit);
	// act on Role, not on this.
	AdvertiseExitNode bool
	// ExitNodeFromExtraArgs is the value of TS_EXTRA_ARGS --exit-node, already
	// folded into ExitNodes and Role (worker) unless those were explicit.
	ExitNodeFromExtraArgs string

	// EgressCheckURLs answer the caller's IP (plain text or JSON "ip").
	EgressCheckURLs []string
	// ExpectedEgressIPs: readiness requires the observed egress IP to be one
	// of these (when set).
	ExpectedEgressIPs []netip.Addr
	// EgressCheckInterval is the period of the egress IP check and of the TCP checks.
	EgressCheckInterval time.Duration
	// CheckTCP are TCP reachability checks.
	CheckTCP []TCPTarget
	// ReadyRequires are extra check names that gate readiness (tcp:NAME, ...).
	ReadyRequires []string

	// AuthKey is the auth key, by value or file; it never prints. It may
	// hold an OAuth client secret (authkey.ClientSecretPrefix).
	AuthKey Secret
	// ClientID is TS_CLIENT_ID: the OAuth client of TS_CLIENT_SECRET, or
	// of workload identity with TS_ID_TOKEN. It may carry attributes
	// (?ephemeral=&preauthorized=&baseURL=).
	ClientID string
	// ClientSecret is TS_CLIENT_SECRET, by value or file.
	ClientSecret Secret
	// IDToken is TS_ID_TOKEN, by value or file (re-read at every login).
	IDToken Secret
	// Audience is TS_AUDIENCE: the audience IDToken must have.
	Audience string
	// APIURL is the Tailscale API that mints keys for an OAuth client or
	// workload identity.
	APIURL string
	// LoginServer is the control server URL; "" means Tailscale's.
	LoginServer string
	// Hostname is the tailnet hostname; defaults to NodeName.
	Hostname string
	// AdvertiseTags are ACL tags (tag:NAME) to request.
	AdvertiseTags []string
	AcceptDNS     bool
	AcceptRoutes  bool
	// AuthOnce logs in only when tailscaled needs a login.
	AuthOnce bool

	// Tailscaled is the tailscaled binary (looked up in PATH if bare).
	Tailscaled string
	// TailscaledArgs are extra tailscaled arguments.
	TailscaledArgs []string
	StateDir       string
	// Socket is the LocalAPI socket path.
	Socket string
	// TUN is the TUN device name, or TUNUserspace.
	TUN string

	// Listen is the host:port of the probes and metrics server.
	Listen string
	// AllowFrom are the CIDRs that may connect to Listen besides the node
	// itself and (with Kubernetes) the cluster's nodes and pods.
	AllowFrom []netip.Prefix
	// ShutdownTimeout is SIGTERM -> SIGKILL for tailscaled.
	ShutdownTimeout time.Duration
	// LivenessGrace is how long tailscaled may be down, or run with its
	// LocalAPI not answering, before /livez fails.
	LivenessGrace time.Duration
	LogFormat     LogFormat

	// Warnings are non-fatal notes from Parse (a setting overridden by a
	// more explicit one, a compatibility variable that is ignored); main
	// logs them once the logger exists.
	Warnings []string `json:"-"`
}

// Defaults returns a Config holding the default of every setting (DESIGN
// section 3). Hostname's default, the node name, is applied by Parse.
func Defaults() *Config {
	return &Config{
		Role:                    RoleFromLabel,
		RoleLabel:               "ts-node-agent/role",
		DefaultRole:             RoleWorker,
		ExitNodes:               []string{ExitNodeAuto},
		ExitNodeAllowLANAccess:  true,
		ExitFallback:            FallbackBlock,
		FailbackAfter:           60 * time.Second,
		RequireExitApproval:     true,
		ForwardingOptimizations: true,
		ExitCommitTimeout:       15 * time.Second,
		BypassMark:              hostnet.DefaultBypassMark,
		EgressCheckInterval:     60 * time.Second,
		AuthOnce:                true,
		APIURL:                  authkey.DefaultAPIURL,
		Tailscaled:              "tailscaled",
		StateDir:                "/var/lib/tailscale",
		Socket:                  "/var/run/tailscale/tailscaled.sock",
		TUN:                     "tailscale0",
		Listen:                  ":9002",
		ShutdownTimeout:         10 * time.Second,
		LivenessGrace:           120 * time.Second,
		LogFormat:               LogFormatJSON,
	}
}

// Validate checks every setting and the rules between them, and returns
// errors.Join of all problems (nil if none), one line each, naming the flag.
func (c *Config) Validate() error {
	return errors.Join(c.validate(nil)...)
}

// validate checks every setting except those in skip (already reported by
// Parse), then the rules between settings.
func (c *Config) validate(skip map[string]bool) []error {
	var errs []error
	for _, s := range c.settings() {
		if !skip[s.name] {
			errs = append(errs, s.b.validate("--"+s.name)...)
		}
	}
	return append(errs, c.crossChecks(skip)...)
}

// crossChecks are the rules that involve more than one setting; those about
// a setting in skip (already reported as invalid) are left out.
func (c *Config) crossChecks(skip map[string]bool) []error {
	var errs []error
	if c.Role == RoleFromLabel && c.NodeName == "" && !skip["node-name"] {
		errs = append(errs, errors.New("--role=label needs the node name: set --node-name or NODE_NAME "+
			"(downward API spec.nodeName), or force a role with --role=exit, worker or none"))
	}
	if len(c.ExpectedEgressIPs) > 0 && len(c.EgressCheckURLs) == 0 {
		errs = append(errs, errors.New("--expected-egress-ip needs at least one --egress-check-url "+
			"(TS_NODE_AGENT_EGRESS_CHECK_URL) to observe the egress IP; without one the node could never be ready"))
	}
	// netcheck rejects a URL given twice (it would be asked twice per round).
	seenURL := map[string]bool{}
	for _, u := range c.EgressCheckURLs {
		if seenURL[u] {
			errs = append(errs, fmt.Errorf("invalid --egress-check-url %q: listed twice; accepted: each URL once", u))
		}
		seenURL[u] = true
	}
	seen := map[string]bool{}
	for _, t := range c.CheckTCP {
		if seen[t.Name] {
			errs = append(errs, fmt.Errorf("invalid --check-tcp %q: the name %q is used twice; accepted: unique names", t.String(), t.Name))
		}
		seen[t.Name] = true
	}
	for _, r := range c.ReadyRequires {
		if name, ok := strings.CutPrefix(r, "tcp:"); ok && !seen[name] {
			errs = append(errs, fmt.Errorf("invalid --ready-requires %q: no --check-tcp named %q; accepted: tcp:NAME for a NAME of --check-tcp (%s)",
				r, name, strings.Join(tcpNames(c.CheckTCP), ", ")))
		}
	}
	errs = append(errs, c.credentialChecks(skip)...)
	if c.AdvertiseExitNode && c.ExitNodeFromExtraArgs != "" {
		errs = append(errs, errors.New("invalid TS_EXTRA_ARGS: --advertise-exit-node and --exit-node cannot be combined; "+
			"accepted: one of them (a node is either an exit node or uses one)"))
	}
	return errs
}

func tcpNames(ts []TCPTarget) []string {
	if len(ts) == 0 {
		return []string{"none defined"}
	}
	names := make([]string, len(ts))
	for i, t := range ts {
		names[i] = t.Name
	}
	return names
}

// LogValue implements slog.LogValuer: the effective configuration for the
// startup log line, with the auth key redacted and every URL shown without
// its user info and query (redact.URL), which may hold a password or an API
// token.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("role", string(c.Role)),
		slog.String("role_label", c.RoleLabel),
		slog.String("default_role", string(c.DefaultRole)),
		slog.String("node_name", c.NodeName),
		slog.String("kubeconfig", c.Kubeconfig),
		slog.String("pod_name", c.PodName),
		slog.String("pod_namespace", c.PodNamespace),
		slog.Any("exit_nodes", c.ExitNodes),
		slog.Bool("exit_node_allow_lan_access", c.ExitNodeAllowLANAccess),
		slog.String("exit_fallback", string(c.ExitFallback)),
		slog.String("failback_after", formatDuration(c.FailbackAfter)),
		slog.Bool("require_exit_approval", c.RequireExitApproval),
		slog.Bool("forwarding_optimizations", c.ForwardingOptimizations),
		slog.Any("bypass_cidrs", stringsOf(c.BypassCIDRs)),
		slog.String("exit_commit_timeout", formatDuration(c.ExitCommitTimeout)),
		slog.String("bypass_mark", c.BypassMark.String()),
		slog.String("pod_egress_source", addrString(c.PodEgressSource)),
		slog.Bool("advertise_exit_node", c.AdvertiseExitNode),
		slog.String("exit_node_from_extra_args", c.ExitNodeFromExtraArgs),
		slog.Any("egress_check_urls", redactURLs(c.EgressCheckURLs)),
		slog.Any("expected_egress_ips", stringsOf(c.ExpectedEgressIPs)),
		slog.String("egress_check_interval", formatDuration(c.EgressCheckInterval)),
		slog.Any("check_tcp", stringsOf(c.CheckTCP)),
		slog.Any("ready_requires", c.ReadyRequires),
		slog.Any("auth_key", c.AuthKey),
		slog.String("client_id", redact.URL(c.ClientID)),
		slog.Any("client_secret", c.ClientSecret),
		slog.Any("id_token", c.IDToken),
		slog.String("audience", c.Audience),
		slog.String("api_url", redact.URL(c.APIURL)),
		slog.String("login_server", redact.URL(c.LoginServer)),
		slog.String("hostname", c.Hostname),
		slog.Any("advertise_tags", c.AdvertiseTags),
		slog.Bool("accept_dns", c.AcceptDNS),
		slog.Bool("accept_routes", c.AcceptRoutes),
		slog.Bool("auth_once", c.AuthOnce),
		slog.String("tailscaled", c.Tailscaled),
		slog.Any("tailscaled_args", c.TailscaledArgs),
		slog.String("state_dir", c.StateDir),
		slog.String("socket", c.Socket),
		slog.String("tun", c.TUN),
		slog.String("listen", c.Listen),
		slog.Any("allow_from", stringsOf(c.AllowFrom)),
		slog.String("shutdown_timeout", formatDuration(c.ShutdownTimeout)),
		slog.String("liveness_grace", formatDuration(c.LivenessGrace)),
		slog.String("log_format", string(c.LogFormat)),
	)
}

func redactURLs(urls []string) []string {
	out := make([]string, len(urls))
	for i, u := range urls {
		out[i] = redact.URL(u)
	}
	return out
}

func stringsOf[T fmt.Stringer](vs []T) []string {
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = v.String()
	}
	return out
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}
