// Package kube is the agent's whole Kubernetes side, for every role: its
// own Node (the role label, the pod CIDRs), the other Nodes' addresses,
// the API server's EndpointSlice, the ServiceCIDRs, and the Events it
// posts on its own Pod.
//
// The Watcher follows this node's Node object with a single-object
// informer (a metadata.name field selector, list once then watch: no
// polling), maps the --role-label value to a role through the pure function
// RoleFromLabels (an absent label means --default-role; an unknown value
// means --default-role plus a Warning Event and a log line) and publishes
// it with snapshot.Store.SetRole. It reports the health of the watch as the
// "role-watch" check: during an API server outage client-go reconnects with
// backoff, the last known role stays in force and the check says since when
// the API server is unreachable. The check is informational (main does not
// make it gate readiness by default) and an outage never stops the
// Watcher's heartbeat, so it never fails liveness.
//
// With WithCluster the Watcher also publishes one snapshot.Cluster value
// (Store.SetCluster), which the bypass and its commit check, --allow-from
// and the egress-ip-pod check read: this node's pod CIDRs (from the same
// single-object informer), every Node's InternalIP/ExternalIP addresses,
// readiness and pod CIDRs, from a second informer on all Nodes whose
// transform keeps only those (under 0.5 KiB per node), the API server's
// endpoints (the EndpointSlice default/kubernetes, watched by name) and
// the Service ranges (ServiceCIDR objects). Those informers are off
// without WithCluster.
//
// Events posts Kubernetes Events (core/v1) on this pod: role changes,
// unknown label values, exit node switches, exit routes not approved. It
// never blocks its caller: Events are queued, deduplicated and dropped with
// a log line when the queue is full. Without POD_NAME and POD_NAMESPACE it
// is a no-op.
//
// This package must not poll the API server, must not list or cache all
// Nodes without the address-only transform, and must not talk to
// tailscaled or the network beyond the Kubernetes API. It decides the role;
// acting on it (prefs, forwarding, bypass routes) is other packages' job.
package kube
