// Command ts-node-agent is the container entrypoint of a Tailscale DaemonSet
// pod: it prepares the host network, supervises tailscaled, makes the node an
// exit node or a consumer of one, verifies that it really does what its role
// says and serves kubelet probes and Prometheus metrics about it.
//
// Every setting is a flag that also reads an environment variable
// (precedence: flag > env > default); `ts-node-agent --help` lists them all:
//
//	--role                         TS_NODE_AGENT_ROLE                         label | exit | worker | none
//	--role-label                   TS_NODE_AGENT_ROLE_LABEL                   Node label key holding the role
//	--default-role                 TS_NODE_AGENT_DEFAULT_ROLE                 role when the label is absent
//	--node-name                    NODE_NAME                                  this node (downward API)
//	--pod-name                     POD_NAME                                   this pod, for Events
//	--pod-namespace                POD_NAMESPACE                              this pod's namespace, for Events
//	--kubeconfig                   KUBECONFIG                                 API access outside a pod
//	--exit-nodes                   TS_NODE_AGENT_EXIT_NODES                   worker: ordered exit node candidates
//	--exit-node-allow-lan-access   TS_NODE_AGENT_EXIT_NODE_ALLOW_LAN_ACCESS   keep the LAN reachable
//	--exit-fallback                TS_NODE_AGENT_EXIT_FALLBACK                block | direct with no healthy exit node
//	--failback-after               TS_NODE_AGENT_FAILBACK_AFTER               delay before switching back
//	--require-exit-approval        TS_NODE_AGENT_REQUIRE_EXIT_APPROVAL        exit: ready only once approved
//	--forwarding-optimizations     TS_NODE_AGENT_FORWARDING_OPTIMIZATIONS     exit: UDP GRO forwarding
//	--bypass-cidrs                 TS_NODE_AGENT_BYPASS_CIDRS                 never through the exit node
//	--exit-commit-timeout          TS_NODE_AGENT_EXIT_COMMIT_TIMEOUT          reachability confirmation deadline
//	--bypass-mark                  TS_NODE_AGENT_BYPASS_MARK                  reply-bypass mark VALUE[/MASK]
//	--pod-egress-source            TS_NODE_AGENT_POD_EGRESS_SOURCE            source of the egress-ip-pod check
//	--egress-check-url             TS_NODE_AGENT_EGRESS_CHECK_URL             URL answering the caller's IP
//	--expected-egress-ip           TS_NODE_AGENT_EXPECTED_EGRESS_IP           readiness requires one of these
//	--egress-check-interval        TS_NODE_AGENT_EGRESS_CHECK_INTERVAL
//	--check-tcp                    TS_NODE_AGENT_CHECK_TCP                    name=host:port reachability checks
//	--ready-requires               TS_NODE_AGENT_READY_REQUIRES               extra checks gating readiness
//	--authkey-file                 TS_AUTHKEY=file:PATH                       auth key file, re-read at every login
//	(env only)                     TS_AUTHKEY, TS_AUTH_KEY                    auth key or OAuth client secret, never logged
//	(env only)                     TS_CLIENT_ID, TS_CLIENT_SECRET             OAuth client: mint a key for --advertise-tags
//	(env only)                     TS_ID_TOKEN, TS_AUDIENCE                   workload identity with TS_CLIENT_ID
//	--api-url                      TS_NODE_AGENT_API_URL                      Tailscale API that mints the keys
//	--login-server                 TS_NODE_AGENT_LOGIN_SERVER                 control server URL
//	--hostname                     TS_HOSTNAME                                tailnet hostname
//	--advertise-tags               TS_NODE_AGENT_ADVERTISE_TAGS
//	--accept-dns                   TS_ACCEPT_DNS
//	--accept-routes                TS_NODE_AGENT_ACCEPT_ROUTES
//	--auth-once                    TS_AUTH_ONCE                               log in only when needed
//	--tailscaled                   TS_NODE_AGENT_TAILSCALED                   tailscaled binary
//	--tailscaled-arg               TS_TAILSCALED_EXTRA_ARGS                   extra tailscaled arguments
//	--state-dir                    TS_STATE_DIR                               tailscaled state
//	--socket                       TS_SOCKET                                  LocalAPI socket
//	--tun                          TS_NODE_AGENT_TUN                          TUN name or userspace-networking (TS_USERSPACE)
//	--listen                       TS_LOCAL_ADDR_PORT                         probes and metrics
//	--allow-from                   TS_NODE_AGENT_ALLOW_FROM                   who else may connect to --listen
//	--shutdown-timeout             TS_NODE_AGENT_SHUTDOWN_TIMEOUT             SIGTERM -> SIGKILL for tailscaled
//	--liveness-grace               TS_NODE_AGENT_LIVENESS_GRACE               tailscaled may be down (or its LocalAPI silent) this long
//	--log-format                   TS_NODE_AGENT_LOG_FORMAT                   json | text
//	(env only)                     TS_EXTRA_ARGS                              mapped `tailscale up` flags
//
// TS_AUTHKEY, TS_AUTH_KEY, TS_CLIENT_SECRET and TS_ID_TOKEN are removed
// from the agent's environment as soon as the configuration is parsed, so that nothing the agent starts
// inherits them (tailscaled never does: it is logged in through the
// LocalAPI), and their values are cleared in the kernel's copy of the
// initial environment, /proc/<agent-pid>/environ, too; --authkey-file or
// TS_AUTHKEY=file:PATH keep only a path anywhere.
//
// `ts-node-agent cleanup [--state-dir PATH] [--log-format json|text]` is the
// explicit uninstall path of a worker: it removes every policy rule, route
// and nftables table the agent installs, and the kill switch state file.
// A stopping agent leaves them in place on purpose, so that a rolling
// update or a crash never lets a worker's traffic leave directly.
//
// Exit status: 0 after a clean shutdown (SIGTERM/SIGINT) or --help, 2 for
// invalid configuration, 1 for any other failure.
package main

import (
	"os"
)

// version is set by the linker (-X main.version=...).
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.LookupEnv, os.Environ(), os.Stdout, os.Stderr))
}
