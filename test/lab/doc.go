// Package lab builds a throw-away network on one Linux machine for the
// end-to-end tests, the demo and the benchmarks: a router with an
// "internet", a Tailscale control server, and node namespaces that run
// real processes (tailscaled, ts-node-agent) with kernel TUN devices.
//
// It owns namespaces, links, in-process servers and the processes it
// starts, and nothing else: it does not run or configure the agent (that
// is the e2e tests' job), never touches the host's own namespace beyond
// creating /run/netns/tsl-* and /etc/netns/tsl-* entries, and never sends
// traffic outside the lab (it dials and listens on IP literals only, from
// inside lab namespaces). It needs root and iproute2's ip command.
//
// # Topology
//
//	                     namespace tsl-<id>-wan ("the router")
//	lo:  198.19.0.1, 198.19.0.2   echo service on :80 (GET / -> caller IP, GET /json -> {"ip":...}, GET /bytes/N)
//	br0: 198.18.0.1/24            control (testcontrol) :80 and (TLS, Lab CA) :443, DERP (TLS) :8443, STUN :3478
//	 |  ip_forward=1, no NAT, no route anywhere else
//	 +-- v-exit1 ==veth== eth0 198.18.0.10/24  namespace tsl-<id>-exit1   default via 198.18.0.1
//	 +-- v-worker1 ==veth== eth0 198.18.0.11/24  namespace tsl-<id>-worker1
//	 ...                    node i gets 198.18.0.(10+i)
//	    route 198.18.(128+i).0/24 via 198.18.0.(10+i) for node i's pod, if it has one
//
//	node i's pod (Node.AddPod), behind a bridge in the node namespace:
//	cni0 198.18.(128+i).1/24 -- veth-pod ==veth== eth0 198.18.(128+i).2/24  namespace tsl-<id>-<node>-pod   default via 198.18.(128+i).1
//
// A node reaches the internet addresses only through the router, and the
// echo service sees the node's own LAN address, because nothing in the
// wan namespace rewrites sources. A worker that uses an exit node is seen
// with the exit node's LAN address: tailscaled on the exit node
// masquerades. Everything is in 198.18.0.0/15 (RFC 2544) and the wan
// namespace has no route out, so nothing can leak to a real network.
//
// The control server is tailscale.com/tstest/integration/testcontrol, with
// an in-process DERP and STUN server that are the only entries in its DERP
// map; it accepts exactly one auth key (Lab.AuthKey). testcontrol never
// approves routes by itself: the lab runs a loop that calls
// testcontrol.Server.SetSubnetRoutes for every node according to a switch
// (Options.ApproveExitRoutes, Lab.SetApproveExitRoutes): when on, the exit
// routes (0.0.0.0/0, ::/0) a node advertises in its Hostinfo.RoutableIPs
// are approved, which puts them in its PrimaryRoutes and AllowedIPs, so the
// node sees its approval in Status().Self.AllowedIPs and peers see it as
// ExitNodeOption; when off, or when a node stops advertising, the lab's
// approvals are withdrawn. That is a real control server with or without
// an autoApprovers policy. testcontrol has no per-node online tracking, so
// it runs with AllOnline: peers are always reported online, and a node
// whose cable is cut (Node.SetLinkDown) must be detected by tailnet pings.
//
// # Pods
//
// Node.AddPod gives a node one pod the way a CNI plugin does: a namespace
// behind the bridge cni0, the node's ip_forward on, and the node's
// masquerading and marking of the pod's traffic in the nftables table
// inet lab-cni (PodOptions, Pod.SetNAT, Pod.SetMark): PodNATEverywhere
// (flannel, k3s: masquerade on every interface), PodNATUplink (Cilium,
// Calico eBPF: only out of eth0), PodNATNone (the pod reaches the internet
// with its own address, which the router routes back to the node), and
// optionally a packet mark set on everything from cni0 at raw priority
// (Calico eBPF 0x01000000, Cilium 0x0f000f00).
//
// # Leak witness
//
// Lab.WatchDirect counts, in the wan namespace, the packets that arrive
// from the LAN with given sources (a worker's address, its pod CIDR) and
// an internet destination (198.19.0.0/16): traffic through an exit node
// arrives with the exit node's address, so every counted packet left its
// node directly. NetNS.Spray is the steady UDP and TCP traffic to watch
// through restart windows; NetNS.Download and Lab.DownloadURL move a
// few MiB (the echo service's GET /bytes/{n}).
//
// # API
//
//	l, err := lab.New(ctx, lab.Options{Nodes: []string{"exit1", "worker1"}, ApproveExitRoutes: false, Logf: log.Printf})
//	defer l.Close()                      // tests: l := lab.NewForTest(t, opts) closes in t.Cleanup
//	l.ControlURL(), l.AuthKey()          // --login-server, TS_AUTHKEY
//	l.SetApproveExitRoutes(true)         // also approves routes already advertised
//	l.EchoURL(), l.EchoJSONURL(), lab.EchoURLFor(lab.AltInternetIP), l.InternetIP()
//	l.WAN()                              // *NetNS of the router: servers/clients on the internet side
//	n := l.Node("worker1")               // *Node, embeds *NetNS
//	n.Addr()                             // 198.18.0.11
//	p, err := n.Start(argv, env)         // background process in the namespace (own process group)
//	out, err := n.Exec(ctx, "ip", "rule") // run and wait
//	ip, err := n.EgressIP(ctx)           // what the echo service sees from this node
//	body, err := n.HTTPGet(ctx, url)     // in-process, from inside the namespace
//	conn, err := n.DialContext(ctx, "tcp", "198.19.0.1:80"); ln, err := n.Listen("tcp", ":9002")
//	n.WriteSysctl("net.ipv4.ip_forward", "1"); n.ReadSysctl(...)
//	n.SetLinkDown(); n.SetLinkUp()       // unplug / replug the node's cable
//	pod, err := n.AddPod(lab.PodOptions{NAT: lab.PodNATUplink, Mark: 0x01000000}) // *Pod, embeds *NetNS
//	pod.Addr(), pod.Gateway(), pod.CIDR(), pod.Node(), n.Pod(), n.PodCIDR()
//	pod.SetNAT(lab.PodNATNone); pod.SetMark(0)
//	nbytes, err := pod.Download(ctx, l.DownloadURL(4<<20))
//	w, err := l.WatchDirect(netip.PrefixFrom(n.Addr(), 32), n.PodCIDR()); w.Count(); w.Reset(); w.Close()
//	stop := pod.Spray(ctx, netip.AddrPortFrom(lab.InternetIP, 9), 10*time.Millisecond); sent := stop()
//	n.Processes(); n.SignalProcesses("tailscaled", syscall.SIGKILL)
//	n.StartTailscaled(bin, extraArgs...) // convenience: TailscaledArgs + TailscaledEnv
//	n.SocketPath(), n.StateDir(), n.LocalClient()
//	p.Stop(timeout), p.Kill(), p.Signal(sig), p.Wait(ctx), p.Done(), p.LogPath()
//	lab.CleanupStale(logf)               // remove labs whose owner process died
//	lab.TailscaledBinary(), lab.Binary(env, name) // binaries the Makefile built
//
// # What tailscaled needs in a node namespace
//
// With kernel TUN (--tun=tailscale0): /dev/net/tun (the host's device node
// works in any network namespace; the TUN is created in the namespace of
// the process), the kernel's nf_tables with NAT and masquerade (the exit
// node's SNAT of forwarded traffic), and net.ipv4.ip_forward (plus
// net.ipv6.conf.all.forwarding) set to 1 inside the exit node's namespace
// (nodes start with 0). Node.TailscaledEnv forces nftables mode through
// netlink (TS_DEBUG_FIREWALL_MODE=nftables), so neither the nft nor the
// iptables command is needed; without it tailscaled uses iptables
// whenever an iptables command is installed. Log upload is off
// (--no-logs-no-support, TS_NO_LOGS_NO_SUPPORT=true, TS_LOGS_DIR in the
// node's directory), TS_PANIC_IF_HIT_MAIN_CONTROL=1 turns an accidental
// use of the production control server into a crash, and the DERP map
// holds only the lab's DERP, so netcheck stays in the lab. Prefs must keep
// CorpDNS off (--accept-dns=false); as a second safety net each
// namespace gets its own /etc/netns/<ns>/resolv.conf, which `ip netns exec`
// mounts over /etc/resolv.conf, so a tailscaled rewriting DNS settings
// cannot touch the host's. State goes to --statedir in the node's
// directory, the LocalAPI socket to /tmp/tsl-<id>/<node>/tailscaled.sock
// (short enough for a unix socket); --encrypt-state=false because there
// is no TPM.
//
// # Processes and teardown
//
// Processes run through `ip netns exec <ns>` (which also remounts /sys for
// the namespace), in their own process group, with SIGKILL as parent-death
// signal, output appended to <node dir>/<argv0>.log (and optionally
// Options.ProcessOutput). Close stops them (SIGTERM, SIGKILL after 5 s),
// kills anything else still running in a lab namespace (found by comparing
// /proc/PID/ns/net with the namespace inodes), stops the servers, deletes
// the namespaces (their links go with them), and verifies that no
// namespace or process is left. Tests get this from t.Cleanup (NewForTest),
// also on failure and panic; NewForTest also closes its labs on SIGINT
// (Ctrl-C of go test) and SIGTERM before the test binary dies. A run killed
// outright (SIGKILL, the go test -timeout panic) leaves its lab behind:
// every New first calls CleanupStale, which removes the labs whose owner
// process (pid and start time in /tmp/tsl-<id>/owner) is gone and leaves
// labs of live processes alone, so test packages can build labs in
// parallel. `go run ./test/lab/cmd/labctl cleanup` does the same from a
// shell; `labctl run` builds a lab to poke at by hand.
package lab
