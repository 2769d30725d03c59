package config

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// setting is one configuration knob: a flag, its environment variables and
// the binder to its Config field.
type setting struct {
	name  string   // flag name, kebab-case
	env   []string // environment variables, first found wins; env[0] is the documented one
	usage string
	b     binder

	helpEnv string // overrides the "(env ...)" text; for settings read specially
	helpDef string // overrides the "(default ...)" text
}

func (s *setting) isBool() bool { return s.b.typ() == "bool" }

// settings lists every setting bound to c's fields, in --help order.
func (c *Config) settings() []*setting {
	return []*setting{
		// Role.
		{name: "role", env: env("TS_NODE_AGENT_ROLE"),
			usage: "role of this node: label (read from the Node's --role-label), or force exit, worker or none",
			b:     enumVar(&c.Role, RoleFromLabel, RoleExit, RoleWorker, RoleNone)},
		{name: "role-label", env: env("TS_NODE_AGENT_ROLE_LABEL"),
			usage: "Node label key whose value (exit, worker, none) is the role",
			b:     stringVar(&c.RoleLabel, "string", checkLabelKey)},
		{name: "default-role", env: env("TS_NODE_AGENT_DEFAULT_ROLE"),
			usage: "role when the Node has no --role-label label: exit, worker or none",
			b:     enumVar(&c.DefaultRole, RoleExit, RoleWorker, RoleNone)},
		{name: "node-name", env: env("NODE_NAME"),
			usage: "this node's name (downward API spec.nodeName); required with --role=label",
			b:     stringVar(&c.NodeName, "string", checkNodeName)},
		{name: "kubeconfig", env: env("KUBECONFIG"),
			usage:   "kubeconfig file for API access outside a pod",
			helpDef: "in-cluster config",
			b:       stringVar(&c.Kubeconfig, "path", nil)},
		{name: "pod-name", env: env("POD_NAME"),
			usage: "this pod's name (downward API metadata.name), for Kubernetes Events; none without it",
			b:     stringVar(&c.PodName, "string", nil)},
		{name: "pod-namespace", env: env("POD_NAMESPACE"),
			usage: "this pod's namespace (downward API metadata.namespace), for Kubernetes Events",
			b:     stringVar(&c.PodNamespace, "string", nil)},

		// Exit nodes.
		{name: "exit-nodes", env: env("TS_NODE_AGENT_EXIT_NODES"),
			usage: "worker: ordered exit node candidates: tailnet IP, hostname or MagicDNS name, tag:NAME or auto (repeatable, comma-separated)",
			b: &list[string]{p: &c.ExitNodes, kind: "candidates", parse: identity, check: checkExitCandidate, format: same,
				required: "accepted: at least one candidate (tailnet IP, hostname, tag:NAME or auto)"}},
		{name: "exit-node-allow-lan-access", env: env("TS_NODE_AGENT_EXIT_NODE_ALLOW_LAN_ACCESS"),
			usage: "worker: keep the LAN reachable while using the exit node",
			b:     boolVar(&c.ExitNodeAllowLANAccess)},
		{name: "exit-fallback", env: env("TS_NODE_AGENT_EXIT_FALLBACK"),
			usage: "worker with no healthy exit node: block (fail closed) or direct (fail open)",
			b:     enumVar(&c.ExitFallback, FallbackBlock, FallbackDirect)},
		{name: "failback-after", env: env("TS_NODE_AGENT_FAILBACK_AFTER"),
			usage: "worker: a better candidate must stay healthy this long before switching back to it, at least 1s",
			b:     durationVar(&c.FailbackAfter, time.Second)},
		{name: "require-exit-approval", env: env("TS_NODE_AGENT_REQUIRE_EXIT_APPROVAL"),
			usage: "exit: not ready until the control server approved 0.0.0.0/0 and ::/0",
			b:     boolVar(&c.RequireExitApproval)},
		{name: "forwarding-optimizations",
			env:   env("TS_NODE_AGENT_FORWARDING_OPTIMIZATIONS", "TS_EXPERIMENTAL_ENABLE_FORWARDING_OPTIMIZATIONS"),
			usage: "exit: enable UDP GRO forwarding on the default-route interface",
			b:     boolVar(&c.ForwardingOptimizations)},
		{name: "bypass-cidrs", env: env("TS_NODE_AGENT_BYPASS_CIDRS"),
			usage: "worker: extra destinations that never use the exit node, e.g. the service CIDR; at least /8 (IPv6: /16), outside the tailnet ranges (repeatable, comma-separated)",
			b:     bypassList(&c.BypassCIDRs)},
		{name: "exit-commit-timeout", env: env("TS_NODE_AGENT_EXIT_COMMIT_TIMEOUT"),
			usage: "worker: the API server and other nodes must be confirmed reachable within this after the exit node is turned on, else it is rolled back; at least 1s",
			b:     durationVar(&c.ExitCommitTimeout, time.Second)},
		{name: "bypass-mark", env: env("TS_NODE_AGENT_BYPASS_MARK"),
			usage: "worker: firewall and connection mark VALUE[/MASK] of the replies of inbound connections, which bypass the exit node; the default is safe with Calico, Cilium, kube-proxy and kube-router",
			b:     markVar(&c.BypassMark)},
		{name: "pod-egress-source", env: env("TS_NODE_AGENT_POD_EGRESS_SOURCE"),
			usage:   "worker: source address of the egress-ip-pod check, a node address inside the pod CIDR (the CNI's gateway)",
			helpDef: "the node's address inside Node.spec.podCIDRs",
			b:       addrVar(&c.PodEgressSource)},

		// Checks.
		{name: "egress-check-url", env: env("TS_NODE_AGENT_EGRESS_CHECK_URL"),
			usage: "URL answering the caller's IP, as plain text or JSON \"ip\" (repeatable, comma-separated)",
			b:     stringList(&c.EgressCheckURLs, "url", checkURL, nil)},
		{name: "expected-egress-ip", env: env("TS_NODE_AGENT_EXPECTED_EGRESS_IP"),
			usage: "readiness requires the observed egress IP to be one of these (repeatable, comma-separated)",
			b:     addrList(&c.ExpectedEgressIPs)},
		{name: "egress-check-interval", env: env("TS_NODE_AGENT_EGRESS_CHECK_INTERVAL"),
			usage: "period of the egress IP check and of the --check-tcp checks, at least 10s",
			b:     durationVar(&c.EgressCheckInterval, 10*time.Second)},
		{name: "check-tcp", env: env("TS_NODE_AGENT_CHECK_TCP"),
			usage: "TCP reachability check NAME=HOST:PORT, check name tcp:NAME (repeatable, comma-separated)",
			b:     tcpTargetList(&c.CheckTCP)},
		{name: "ready-requires", env: env("TS_NODE_AGENT_READY_REQUIRES"),
			usage:   "extra check names that gate readiness, e.g. tcp:db (repeatable, comma-separated)",
			helpDef: "the role's checks",
			b:       stringList(&c.ReadyRequires, "checks", checkReadyRequires, nil)},

		// Login and prefs.
		{name: "authkey-file", helpEnv: "TS_AUTHKEY=file:PATH",
			usage: "file holding the auth key, re-read at every login (the key itself is env-only: TS_AUTHKEY or TS_AUTH_KEY)",
			b:     &authKeyFile{p: &c.AuthKey}},
		{name: "api-url", env: env("TS_NODE_AGENT_API_URL"),
			usage: "Tailscale API that mints login keys for an OAuth client or workload identity (a baseURL attribute of the secret wins)",
			b:     stringVar(&c.APIURL, "url", checkAPIURL)},
		{name: "login-server", env: env("TS_NODE_AGENT_LOGIN_SERVER"),
			usage:   "control server URL (Headscale, ...)",
			helpDef: "Tailscale's",
			b:       stringVar(&c.LoginServer, "url", checkLoginServer)},
		{name: "hostname", env: env("TS_HOSTNAME"),
			usage:   "tailnet hostname, a DNS name as tailscale up accepts it: labels of letters, digits and '-', such as node-1",
			helpDef: "the node name",
			b:       stringVar(&c.Hostname, "string", checkHostname)},
		{name: "advertise-tags", env: env("TS_NODE_AGENT_ADVERTISE_TAGS"),
			usage: "ACL tags to request, tag:NAME (repeatable, comma-separated)",
			b:     stringList(&c.AdvertiseTags, "tags", checkTag, nil)},
		{name: "accept-dns", env: env("TS_ACCEPT_DNS"),
			usage: "use the tailnet's DNS configuration",
			b:     boolVar(&c.AcceptDNS)},
		{name: "accept-routes", env: env("TS_NODE_AGENT_ACCEPT_ROUTES"),
			usage: "accept subnet routes advertised by other nodes",
			b:     boolVar(&c.AcceptRoutes)},
		{name: "auth-once", env: env("TS_AUTH_ONCE"),
			usage: "log in only when tailscaled needs a login",
			b:     boolVar(&c.AuthOnce)},

		// tailscaled.
		{name: "tailscaled", env: env("TS_NODE_AGENT_TAILSCALED"),
			usage: "tailscaled binary, looked up in PATH if it has no slash",
			b:     stringVar(&c.Tailscaled, "path", checkNonEmpty("a path or a command name"))},
		{name: "tailscaled-arg", env: env("TS_TAILSCALED_EXTRA_ARGS"),
			usage:   "extra tailscaled argument (repeatable, comma-separated)",
			helpEnv: "TS_TAILSCALED_EXTRA_ARGS, space-separated",
			b:       stringList(&c.TailscaledArgs, "arg", checkTailscaledArg, strings.Fields)},
		{name: "state-dir", env: env("TS_STATE_DIR"),
			usage: "tailscaled state directory, an absolute path (a hostPath, to keep the node's identity)",
			b:     stringVar(&c.StateDir, "path", checkStateDir)},
		{name: "socket", env: env("TS_SOCKET"),
			usage: "tailscaled LocalAPI socket, an absolute path of at most 107 bytes (sun_path)",
			b:     stringVar(&c.Socket, "path", checkSocket)},
		{name: "tun", env: env("TS_NODE_AGENT_TUN"),
			usage: "TUN device name, or " + TUNUserspace + " (also TS_USERSPACE=true)",
			b:     stringVar(&c.TUN, "string", checkTUN)},

		// Agent.
		{name: "listen", env: env("TS_LOCAL_ADDR_PORT"),
			usage: "address of the probes (/startupz, /livez, /readyz, /healthz) and /metrics",
			b:     stringVar(&c.Listen, "host:port", checkListen)},
		{name: "allow-from", env: env("TS_NODE_AGENT_ALLOW_FROM"),
			usage:   "CIDRs that may connect to --listen besides loopback, the node's own addresses and, with Kubernetes, every Node's addresses and pod CIDRs; everyone else is refused at accept (repeatable, comma-separated)",
			helpDef: "none extra",
			b:       prefixList(&c.AllowFrom)},
		{name: "shutdown-timeout", env: env("TS_NODE_AGENT_SHUTDOWN_TIMEOUT"),
			usage: "time between SIGTERM and SIGKILL for tailscaled at shutdown, at least 1s",
			b:     durationVar(&c.ShutdownTimeout, time.Second)},
		{name: "liveness-grace", env: env("TS_NODE_AGENT_LIVENESS_GRACE"),
			usage: "tailscaled may be down, or run with its LocalAPI not answering, this long before /livez fails, at least 10s",
			b:     durationVar(&c.LivenessGrace, 10*time.Second)},
		{name: "log-format", env: env("TS_NODE_AGENT_LOG_FORMAT"),
			usage: "log format: json or text",
			b:     enumVar(&c.LogFormat, LogFormatJSON, LogFormatText)},
	}
}

func env(names ...string) []string { return names }

// flagValue adapts a setting to pflag.Value. When report is set, bad values
// go to it and Set returns nil, so that parsing goes on and every problem is
// reported at once; otherwise Set fails like a plain pflag value.
type flagValue struct {
	s       *setting
	started bool // a list has dropped its default
	report  func(*setting, []error)
}

func (f *flagValue) Set(raw string) error {
	if !f.started {
		f.s.b.reset()
		f.started = true
	}
	errs := f.s.b.set("--"+f.s.name, raw, false)
	if f.report != nil {
		f.report(f.s, errs)
		return nil
	}
	return errors.Join(errs...)
}

func (f *flagValue) String() string   { return f.s.b.show() }
func (f *flagValue) Type() string     { return f.s.b.typ() }
func (f *flagValue) IsBoolFlag() bool { return f.s.isBool() }

// AddFlags registers every setting of c on fs, with c's current values as
// defaults (call it on Defaults()). Each usage text names the environment
// variable. Parse is the entry point that also reads the environment; use
// AddFlags alone only when the environment is not wanted.
func (c *Config) AddFlags(fs *pflag.FlagSet) {
	addFlags(fs, c.settings(), nil)
}

func addFlags(fs *pflag.FlagSet, settings []*setting, report func(*setting, []error)) {
	for _, s := range settings {
		usage := s.usage
		if e := s.envHelp(); e != "" {
			usage += " (env " + e + ")"
		}
		if s.helpDef != "" {
			usage += " (default " + s.helpDef + ")"
		}
		f := fs.VarPF(&flagValue{s: s, report: report}, s.name, "", usage)
		if s.isBool() {
			f.NoOptDefVal = "true"
		}
		if s.helpDef != "" {
			f.DefValue = "" // shown in usage instead
		}
	}
}

func (s *setting) envHelp() string {
	if s.helpEnv != "" {
		return s.helpEnv
	}
	return strings.Join(s.env, " or ")
}

// Usage writes the full --help text to w.
func Usage(w io.Writer) {
	fs := pflag.NewFlagSet("ts-node-agent", pflag.ContinueOnError)
	fs.SortFlags = false
	Defaults().AddFlags(fs)
	fmt.Fprint(w, `Usage: ts-node-agent [flags]

ts-node-agent is the entrypoint of a Tailscale DaemonSet pod: it supervises
tailscaled, makes the node an exit node or an exit-node consumer according to
its role, verifies it, and serves probes and metrics.

Every flag can also be set by the environment variable named in its
description. Precedence: flag > environment variable > default. Empty
environment variables count as unset. Repeatable flags also take
comma-separated values, and so do their environment variables.

Flags:
`)
	fmt.Fprint(w, fs.FlagUsages())
	fmt.Fprintf(w, `
Environment only:
  TS_AUTHKEY, TS_AUTH_KEY  the auth key, or file:PATH to read it from a file at
                           every login; never logged. There is no flag for the
                           value, so it never shows in ps or --help. Removed
                           from the agent's environment once read, and cleared
                           in /proc/<agent-pid>/environ; still, the pod spec
                           holds it: prefer file:PATH or --authkey-file.
                           An OAuth client secret (tskey-client-...) is
                           accepted here too, see TS_CLIENT_SECRET.
  TS_CLIENT_SECRET         an OAuth client secret, or file:PATH: every login
                           mints a single-use key for --advertise-tags
                           (required) through --api-url. Attributes may
                           follow, as tailscale up reads them:
                           ?ephemeral=false&preauthorized=true&baseURL=URL
                           (defaults: ephemeral, not preauthorized).
  TS_CLIENT_ID             the OAuth client's ID: optional with
                           TS_CLIENT_SECRET, required with TS_ID_TOKEN. The
                           attributes may follow it instead of the secret
                           (baseURL too, which tailscale up does not read
                           there).
  TS_ID_TOKEN              workload identity: an OIDC ID token, or file:PATH
                           re-read at every login (a projected
                           ServiceAccount token), exchanged for an API token
                           that mints the key. Needs TS_CLIENT_ID.
  TS_AUDIENCE              with TS_ID_TOKEN: the token must have this
                           audience (checked before the exchange).
  TS_EXTRA_ARGS            'tailscale up' flags, for migration from
                           containerboot:
%s.
                           --advertise-exit-node means --role=exit and
                           --exit-node=X means --role=worker --exit-nodes=X,
                           unless the role or candidates are set explicitly.
                           Explicit flags and variables win. Other flags are
                           an error.
  TS_USERSPACE             true means --tun=%s unless --tun or
                           TS_NODE_AGENT_TUN is set (default: kernel TUN).
  TS_EXPERIMENTAL_ENABLE_FORWARDING_OPTIMIZATIONS
                           alias of TS_NODE_AGENT_FORWARDING_OPTIMIZATIONS.
  TS_ENABLE_HEALTH_CHECK, TS_ENABLE_METRICS
                           accepted and ignored: /healthz and /metrics are
                           always served on --listen.

Unsupported containerboot variables (a startup error when set):
%s
`, wrap(extraArgNames(), 27, 78), TUNUserspace, wrap(unsupportedNames(), 2, 78))
}

// wrap joins words with ", " into lines of at most width columns, indented.
func wrap(words []string, indent, width int) string {
	var b strings.Builder
	line := strings.Repeat(" ", indent)
	for i, w := range words {
		if i < len(words)-1 {
			w += ","
		}
		if len(line)+len(w)+1 > width && strings.TrimSpace(line) != "" {
			b.WriteString(strings.TrimRight(line, " ") + "\n")
			line = strings.Repeat(" ", indent)
		}
		line += w + " "
	}
	b.WriteString(strings.TrimRight(line, " "))
	return b.String()
}
