// Package config owns ts-node-agent's configuration: the Config struct, its
// defaults, the binding of every setting to a pflag flag and an environment
// variable (precedence flag > environment > default), the migration mapping of
// containerboot's variables (TS_EXTRA_ARGS, TS_USERSPACE, ...), and validation
// that reports every problem at once, one line per problem naming the flag or
// variable, the bad value and what is accepted.
//
// Validation here comes first: every value is checked before the agent
// opens a socket or touches the host network, with the same rules the other
// packages' Options.Validate apply (pkg/validate for hostnames, tags, exit
// node candidates, URLs, paths and interface names; Kubernetes' own
// validation for the node name and the role label; hostnet's mark and tailnet
// ranges), plus minimums for intervals and timeouts and limits on
// --bypass-cidrs. A value accepted here never fails another package's
// Options.Validate later, after side effects, with exit status 1.
//
// It also owns Secret, the redacting type of the auth key: the key's value is
// never printed, logged, marshalled or accepted as a flag, and a file-based key
// is re-read at every use so that it can be rotated without a restart.
// Config.LogValue, the startup log line, shows every URL (egress check URLs,
// the login server) without its user info and query, through redact.URL.
//
// The package must not: start processes, talk to tailscaled, Kubernetes or the
// network, log, write to stdout/stderr (except Usage, to the writer it is
// given), call os.Exit, read the process environment directly (Parse is given a
// lookup function), or keep package-level flag variables or other global
// mutable state. Its only I/O is checking that a credential file (the auth key,
// TS_CLIENT_SECRET=file:, TS_ID_TOKEN=file:) is readable at startup, reading
// the auth key file once then (an OAuth client secret in it needs tags), and
// reading them in Secret.Reveal.
//
// # Environment variables
//
// Empty environment variables count as unset (Kubernetes manifests often set
// `value: ""`). Containerboot names are used where the meaning is the same;
// the others are TS_NODE_AGENT_<FLAG>. Containerboot variables are handled as
// follows:
//
//   - Mapped with the same meaning: TS_AUTHKEY and TS_AUTH_KEY (value, or
//     file:PATH; an auth key or an OAuth client secret), TS_CLIENT_ID and
//     TS_CLIENT_SECRET (an OAuth client), TS_ID_TOKEN (workload identity:
//     value or file:PATH; unlike containerboot, TS_AUDIENCE is the audience
//     it must have, and ID tokens are never fetched from a cloud provider's
//     metadata service), TS_HOSTNAME, TS_ACCEPT_DNS, TS_AUTH_ONCE, TS_STATE_DIR,
//     TS_SOCKET, TS_TAILSCALED_EXTRA_ARGS (whitespace-separated, as
//     containerboot splits it), TS_LOCAL_ADDR_PORT (--listen),
//     TS_USERSPACE (true selects --tun=userspace-networking unless --tun or
//     TS_NODE_AGENT_TUN is set; unlike containerboot the default is kernel
//     networking, which a hostNetwork DaemonSet needs),
//     TS_EXPERIMENTAL_ENABLE_FORWARDING_OPTIMIZATIONS (an alias of
//     TS_NODE_AGENT_FORWARDING_OPTIMIZATIONS, which wins when both are set)
//     and TS_EXTRA_ARGS (see below).
//   - Accepted and ignored, with a warning when they ask for something the
//     agent does anyway or cannot turn off: TS_ENABLE_HEALTH_CHECK and
//     TS_ENABLE_METRICS (the agent always serves /healthz and /metrics on
//     --listen; the value must still be a valid boolean),
//     TS_EXPERIMENTAL_SERVICE_AUTO_ADVERTISEMENT (only meaningful with
//     TS_SERVE_CONFIG, which is rejected), and variables that describe the
//     environment rather than configure a feature (POD_IP, POD_IPS, POD_UID,
//     KUBERNETES_SERVICE_HOST, TS_KUBERNETES_READ_API_SERVER_ADDRESS_FROM_ENV,
//     TS_TEST_*).
//   - Unsupported, a startup error naming the variable when it is non-empty:
//     see the unsupportedEnv table (proxies, serve, subnet routes, Secret
//     state, tailscaled config files,
//     TS_HEALTHCHECK_ADDR_PORT, TS_DEBUG_ADDR_PORT, TS_BOOT_TIMEOUT, ...).
//     TS_KUBE_SECRET is rejected whenever it is non-empty: containerboot
//     defaults it to "tailscale" in a pod, so a non-empty value always means
//     state in a Secret, which this agent does not do (state lives in
//     --state-dir on a hostPath). Boolean feature switches
//     (TS_EXPERIMENTAL_CERT_SHARE,
//     EXPERIMENTAL_ALLOW_PROXYING_CLUSTER_TRAFFIC_VIA_INGRESS) are rejected
//     unless they are false.
//
// An unknown TS_NODE_AGENT_* variable (a typo) is an error when Parse is given
// the environment with WithEnviron.
//
// # TS_EXTRA_ARGS
//
// TS_EXTRA_ARGS holds `tailscale up` flags, split on whitespace like
// containerboot does. --login-server, --hostname, --advertise-tags,
// --accept-routes, --accept-dns and --exit-node-allow-lan-access set the
// setting of the same name. Flags take `--flag=value` or `--flag value`;
// boolean flags take `--flag` or `--flag=true|false`. Any other flag is an
// error naming it. A setting given explicitly by flag or environment variable
// wins over TS_EXTRA_ARGS (with a warning). The two exit-node flags map to
// roles, because that is what they mean for a node:
//
//   - --advertise-exit-node sets AdvertiseExitNode and Role=exit, unless the
//     role was given explicitly (--role or TS_NODE_AGENT_ROLE), in which case
//     the explicit role wins and a warning says so.
//   - --exit-node=X sets ExitNodeFromExtraArgs=X, ExitNodes=[X] (unless
//     --exit-nodes/TS_NODE_AGENT_EXIT_NODES is set) and Role=worker (unless
//     the role was given explicitly). An empty --exit-node= is a no-op.
//   - Both together is an error, as it is for `tailscale up`.
package config
