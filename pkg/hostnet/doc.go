// Package hostnet owns the host side of networking for the agent: what
// tailscaled needs from the kernel before it starts, and the proof, read
// from the kernel itself, that packets will go where the node's role says.
//
// Before tailscaled starts (Watcher.Prepare, or the functions it calls):
//
//   - EnsureTUNDevice makes sure /dev/net/tun exists (character device
//     10:200, created if missing) and that the kernel and the container's
//     capabilities let tailscaled use it;
//   - EnableForwarding turns on net.ipv4.ip_forward and
//     net.ipv6.conf.all.forwarding for the exit role, and remembers which of
//     them the agent turned on. Nothing turns forwarding off again, not
//     even when the node leaves the exit role: pod networking on a
//     Kubernetes node depends on it.
//
// After tailscaled is up, Watcher.Run follows the kernel through one netlink
// multicast subscription (links, addresses, routes of every table, policy
// rules) and re-reads the forwarding sysctls twice a second (sysctls have no
// change notification). On every relevant change it reads the current state
// (KernelState), compares it with what the role expects
// (ExpectedKernelState, Evaluate) and publishes the named checks "tun",
// "forwarding" (exit role) and "exit-route-kernel" (worker using an exit
// node) into the snapshot, with precise failure reasons. For the exit role
// with forwarding optimizations it enables UDP GRO forwarding on the
// default-route interface once tailscaled's TUN exists (check
// "udp-gro-forwarding", informational: a failure is a warning, not a
// reason to be unready).
//
// For a worker, Bypass and Guard keep the node reachable while it uses an
// exit node: the bypassed destinations are elements of the interval sets
// of the nftables table inet ts-node-agent, which marks packets to them
// and connections that arrived on a non-tailnet interface, and one policy
// rule per family tagged proto 167 at priority 5099 (above tailscaled's
// 5210-5270) sends marked packets to the main table; the rule count does
// not depend on the cluster's size. Guard wraps the exit
// node setter: it turns an exit node on only behind the bypasses, confirms
// within the commit timeout that the API server and another node still
// answer, and rolls back otherwise (check "exit-commit"). It reaches
// tailscaled only through the ExitNodeSetter it is given.
//
// The same table masquerades traffic that leaves through the TUN with a
// non-tailnet source (pods behind a CNI that does not NAT there) and
// clamps the MSS of forwarded SYNs through the TUN. With the kill switch
// (--exit-fallback=block, armed by the first exit node and kept until the
// role leaves worker) rules 5279-5282 and the sink route of table 5281
// keep the host's and the pods' traffic off the main table's default
// route whenever table 52 has none, while replies of inbound connections
// are still re-routed out the way they came. All of it outlives the
// agent: Guard.Close leaves it for the next agent, whose Prepare adopts
// it (the kernel, or the state file after a reboot); Guard.Uninstall and
// Cleanup (`ts-node-agent cleanup`) remove it. The reply-bypass mark is a
// VALUE/MASK pattern no CNI uses (DefaultBypassMark), and cni-marks says
// which mark-setting CNIs are on the node.
//
// With --tun=userspace-networking there is no TUN, no kernel routing and no
// kernel forwarding to prepare or to check: all of the above is skipped.
//
// This package must not call the LocalAPI or import tailscaled's client
// packages, and must not shell out (no ip, ethtool, sysctl or modprobe
// commands): everything goes through netlink, ioctls and /proc/sys files.
// It never turns forwarding on for a role other than exit, and never
// restores anything on exit that other software may rely on.
package hostnet
