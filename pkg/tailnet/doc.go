// Package tailnet owns the LocalAPI side of the agent: it logs tailscaled in
// (with the auth key only when needed), keeps the prefs the node's role asks
// for (hostname, tags, DNS and routes acceptance, login server, advertising
// the exit routes, using an exit node), watches the IPN bus and publishes
// tailscaled's state (backend state, addresses, peers, health, exit route
// approval) into the snapshot. It re-applies all of it after tailscaled
// restarts. It also records when the LocalAPI last answered
// (Tailnet.LocalAPIAnsweredAt: a call that succeeded, a bus notification),
// with a cheap call when nothing else answered for AnswerInterval, so that
// liveness can tell a tailscaled that runs but no longer answers.
//
// It talks to tailscaled only through the LocalAPI interface it owns
// (tailscale.com/client/local in production). It must not shell out to the
// tailscale CLI, touch netlink or the kernel (that is pkg/hostnet), manage
// the tailscaled process (pkg/supervisor), or serve probes. The auth key
// (configured, or minted for one login by pkg/authkey) is never logged,
// published or included in an error. Without an auth key,
// tailscaled's interactive login URL is logged at Warn, once per distinct
// URL, and never published into the snapshot (so never served by a probe or
// a metric): whoever opens it first enrols the node into their tailnet.
package tailnet
