// Package netcheck owns the agent's active checks of the world outside the
// node: what egress IP the internet sees, and whether the TCP targets that
// matter (a database, S3, ...) are reachable. It is what proves the point of
// the whole setup, one egress IP, on every node and continuously.
//
// The Checker runs two loops on their own goroutines:
//
//   - Egress IP (check "egress-ip", only when --egress-check-url is set):
//     every --egress-check-interval (±10% jitter, so a DaemonSet does not hit
//     the echo service in lockstep) it GETs every URL concurrently (at most
//     maxParallel at once), through a plain net/http client that follows the
//     node's normal routing and never an HTTP proxy, so a worker's check
//     really leaves through its exit node. It never follows a redirect: a 3xx
//     is a failed answer naming its status, so an echo service cannot point
//     the agent at a service of the node. Each request, body included, has its
//     own timeout and a bounded body (MaxResponseBytes), so a hung or hostile
//     echo service costs one timeout. ParseEgressResponse, a pure function,
//     reads the answer: a plain-text IP or a JSON object with an "ip" string.
//     What an answer's body says never reaches a check reason or a log line: a
//     non-2xx answer is named by its status code, a body that is no IP address
//     is described, not quoted. URLs that disagree are their own failure; with
//     --expected-egress-ip the observed IP must be one of the expected ones.
//     The loop also re-checks at once on Trigger and whenever the snapshot
//     shows another exit node (ExitNode.CurrentID, Tailnet.ExitNodeID) or
//     another role, not only on the interval.
//   - TCP reachability (check "tcp:NAME" per --check-tcp target): every
//     TCPInterval (±10% jitter) it dials each target with a timeout.
//
// Results go only to the snapshot (checks, the "netcheck" heartbeat) and to
// the package's own Prometheus collectors on an injected Registerer
// (ts_node_agent_egress_ip_info, _egress_ip_match, _egress_ip_changes_total,
// _tcp_check_up, _tcp_check_seconds; the check duration histogram belongs to
// pkg/metrics and is fed through a DurationObserver). Nothing here is ever
// called from a probe or a scrape, so a slow network never slows those.
//
// The "egress-ip" check is published whenever egress URLs are configured;
// Options.Checks declares the roles it gates (exit and worker, when
// --expected-egress-ip is set). "tcp:NAME" gates readiness only when named
// in --ready-requires.
//
// DERPProber measures the latency to every DERP region with STUN, the way
// `tailscale netcheck` does, from the DERP map a function gives it (main
// passes the LocalAPI's), into ts_node_agent_derp_latency_seconds.
//
// This package has no LocalAPI dependency at all and must not acquire one:
// the tailnet ping to the exit node lives in pkg/tailnet/exitnode. It must not shell out, touch netlink, or use an HTTP proxy for the
// egress check, and it must never be called synchronously from a probe or a
// scrape.
package netcheck
