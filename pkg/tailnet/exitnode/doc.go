// Package exitnode owns a worker's choice of exit node: which of the
// --exit-nodes candidates it uses, when it fails over to another one, when
// it fails back, and what it does when none is healthy (--exit-fallback).
//
// The heart is pure and table-tested:
//
//   - ParseCandidate parses one --exit-nodes entry: a tailnet IP, a
//     hostname (the peer's HostName or its MagicDNS name, or the first
//     label of it, case-insensitive), tag:NAME, or auto (every peer that
//     offers an approved exit node, ordered by hostname). Unlike
//     tailscaled's own "auto:any", our auto never lets tailscaled pick by
//     latency: the agent always sets an explicit exit node ID, so failover
//     and failback follow the documented order.
//   - Resolve turns candidates into an ordered, de-duplicated list of the
//     peers that offer an approved exit node now.
//   - Decide takes the candidates, their health and the previous State and
//     returns the exit node to use (DESIGN section 4): the first healthy
//     candidate; immediate failover when the current exit node is offline
//     per control, no longer offers an exit node, or stopped answering
//     tailnet pings (Detection); failback to a better
//     candidate only after it stayed healthy for FailbackAfter; with no
//     healthy candidate, FallbackBlock keeps an exit node set (so internet
//     traffic is blackholed rather than leaked) and FallbackDirect clears
//     it.
//
// The Selector is the I/O around it. It reads the role, the backend state
// and the peers from the snapshot, pings the exit node in use, a warm
// standby and the better candidates (each on its own schedule, repeated
// quickly while one is late), re-decides on every snapshot change, ping
// result and deadline, applies decisions through an ExitNodeSetter in the
// background (a commit check in progress never delays the detection of
// the next failure) and publishes snapshot.ExitNode, snapshot.Ping
// results and the readiness check "exit-node-ping".
//
// This package must not touch netlink, and must not change tailscaled's
// prefs other than through the ExitNodeSetter it is given (in production,
// the pkg/tailnet Manager, which owns prefs). The only LocalAPI call it
// makes itself is Ping, through the Pinger it is given. It never shells
// out to the tailscale CLI.
package exitnode
