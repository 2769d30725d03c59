package hostnet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"tailscale.com/net/netkernelconf"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

// How fast a change made behind the agent's back must show (issue 4).
const within = time.Second

// TUN offload flags (linux/if_tun.h), as tailscaled's wireguard-go sets
// them: checksum, TCP and UDP segmentation.
const (
	tunFCSUM = 0x01
	tunFTSO4 = 0x02
	tunFTSO6 = 0x04
	tunFUSO4 = 0x20
	tunFUSO6 = 0x40
)

// createTUN creates the TUN device name in ns the way tailscaled does
// (open /dev/net/tun, TUNSETIFF, keep the file open; with offload, the
// virtio header and UDP segmentation offload too). Closing the returned
// file removes the device, like tailscaled exiting.
func createTUN(t *testing.T, ns netns.NsHandle, name string, offload bool) *os.File {
	t.Helper()
	var f *os.File
	inNS(t, ns, func() error {
		fd, err := unix.Open(DefaultTUNDevice, unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			unix.Close(fd)
			return err
		}
		flags := uint16(unix.IFF_TUN | unix.IFF_NO_PI)
		if offload {
			flags |= unix.IFF_VNET_HDR
		}
		ifr.SetUint16(flags)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			return fmt.Errorf("TUNSETIFF: %w", err)
		}
		if offload {
			if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, tunFCSUM|tunFTSO4|tunFTSO6|tunFUSO4|tunFUSO6); err != nil {
				unix.Close(fd)
				return fmt.Errorf("TUNSETOFFLOAD: %w", err)
			}
		}
		f = os.NewFile(uintptr(fd), name)
		return nil
	})
	t.Cleanup(func() { f.Close() })
	return f
}

func nsHandle(t *testing.T, ns netns.NsHandle) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

func mustLink(t *testing.T, h *netlink.Handle, name string) netlink.Link {
	t.Helper()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func mustAddr(t *testing.T, s string) *netlink.Addr {
	t.Helper()
	a, err := netlink.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// netlinkRule turns one of tailscaled's rules into what RuleAdd takes.
func netlinkRule(r Rule) *netlink.Rule {
	nr := netlink.NewRule()
	nr.Family = r.Family
	nr.Priority = r.Priority
	nr.Table = r.Table
	nr.Mark = r.Mark
	if r.Mask != 0 {
		m := r.Mask
		nr.Mask = &m
	}
	if r.Action == ActionUnreachable {
		nr.Type = unix.RTN_UNREACHABLE
	}
	nr.Invert = r.Invert
	return nr
}

func defaultRoute(link netlink.Link) *netlink.Route {
	return &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Dst:       &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)},
		Table:     TailscaleTable,
		Scope:     netlink.SCOPE_LINK,
	}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// startWatcher runs w until the test ends, and checks it returns cleanly.
func startWatcher(t *testing.T, w *Watcher) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
}

// readNSForwarding reads the forwarding sysctls of ns.
func readNSForwarding(t *testing.T, ns netns.NsHandle) ForwardingState {
	t.Helper()
	var st ForwardingState
	inNS(t, ns, func() (err error) {
		st, err = ReadForwarding(DefaultProcSys)
		return err
	})
	return st
}

// TestWatcherWorkerExitRoute plays a worker using an exit node: the kernel
// looks the way tailscaled leaves it, then pieces disappear behind the
// agent's back and come back, and each change must show within a second.
func TestWatcherWorkerExitRoute(t *testing.T) {
	requireRoot(t)
	ns := newNetNS(t)
	h := nsHandle(t, ns)

	tunFile := createTUN(t, ns, "tailscale0", false)
	tun := mustLink(t, h, "tailscale0")
	if err := h.AddrAdd(tun, mustAddr(t, "100.64.0.1/32")); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(tun); err != nil {
		t.Fatal(err)
	}
	for _, r := range TailscaledRules() {
		if err := h.RuleAdd(netlinkRule(r)); err != nil {
			t.Fatalf("add rule %d: %v", r.Priority, err)
		}
	}
	route := defaultRoute(tun)
	if err := h.RouteAdd(route); err != nil {
		t.Fatal(err)
	}

	store := snapshot.New(time.Now(), snapshot.RoleWorker)
	store.SetTailnet(snapshot.Tailnet{TailscaleIPs: []netip.Addr{tsIP4}, ExitNodeID: "nExit"})
	w := New(store, Options{TUNName: "tailscale0", TUNDevice: filepath.Join(t.TempDir(), "tun")},
		WithNetNS(ns), WithLogger(testLogger(t)))

	// A worker never turns forwarding on.
	inNS(t, ns, func() error { return forwardingOff(DefaultProcSys) })
	if err := w.Prepare(); err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	if st := readNSForwarding(t, ns); st.IPv4 || st.IPv6 {
		t.Errorf("a worker's Prepare turned forwarding on: %+v", st)
	}
	if h := store.Load().Host; !h.Known || h.IPv4Forwarding || h.ForwardingEnabledByAgent {
		t.Errorf("Host after Prepare = %+v", h)
	}

	startWatcher(t, w)
	waitFor(t, store, 2*time.Second, "tun passes", checkIs(CheckTUN, true, ""))
	waitFor(t, store, within, "exit-route-kernel passes", checkIs(CheckExitRouteKernel, true, ""))
	waitFor(t, store, within, "no forwarding check for a worker", checkAbsent(CheckForwarding))
	if _, ok := store.Load().Heartbeats[HeartbeatName]; !ok {
		t.Error("no heartbeat")
	}

	// The table-52 default route disappears, and comes back.
	if err := h.RouteDel(route); err != nil {
		t.Fatal(err)
	}
	waitFor(t, store, within, "deleted route noticed",
		checkIs(CheckExitRouteKernel, false, `exit-route-kernel: no default route via "tailscale0" in table 52`))
	if err := h.RouteAdd(route); err != nil {
		t.Fatal(err)
	}
	waitFor(t, store, within, "re-added route noticed", checkIs(CheckExitRouteKernel, true, ""))

	// tailscaled's rule to table 52 disappears, and comes back.
	lookup52 := netlinkRule(TailscaledRules()[3])
	if err := h.RuleDel(lookup52); err != nil {
		t.Fatal(err)
	}
	waitFor(t, store, within, "deleted rule noticed",
		checkIs(CheckExitRouteKernel, false, `exit-route-kernel: no rule "lookup 52" (priority 5270) in the kernel`))
	if err := h.RuleAdd(lookup52); err != nil {
		t.Fatal(err)
	}
	waitFor(t, store, within, "re-added rule noticed", checkIs(CheckExitRouteKernel, true, ""))

	// The unreachable rule differs from a lookup only by its action.
	unreachable := netlinkRule(TailscaledRules()[2])
	if err := h.RuleDel(unreachable); err != nil {
		t.Fatal(err)
	}
	waitFor(t, store, within, "deleted unreachable rule noticed",
		checkIs(CheckExitRouteKernel, false, `exit-route-kernel: no rule "fwmark 0x80000/0xff0000 unreachable" (priority 5250) in the kernel`))
	if err := h.RuleAdd(unreachable); err != nil {
		t.Fatal(err)
	}
	waitFor(t, store, within, "re-added unreachable rule noticed", checkIs(CheckExitRouteKernel, true, ""))

	// The tailnet address disappears, and comes back.
	if err := h.AddrDel(tun, mustAddr(t, "100.64.0.1/32")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, store, within, "deleted address noticed",
		checkIs(CheckTUN, false, `tun: link "tailscale0" has no tailnet address (want 100.64.0.1)`))
	if err := h.AddrAdd(tun, mustAddr(t, "100.64.0.1/32")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, store, within, "re-added address noticed", checkIs(CheckTUN, true, ""))
	// Removing the link's last IPv4 address flushed the routes through it
	// (tailscaled would put them back): so does the test.
	waitFor(t, store, within, "route flushed with the address",
		checkIs(CheckExitRouteKernel, false, `exit-route-kernel: no default route via "tailscale0" in table 52`))
	if err := h.RouteAdd(route); err != nil {
		t.Fatal(err)
	}
	waitFor(t, store, within, "route back", checkIs(CheckExitRouteKernel, true, ""))

	// tailscaled learns another address: the expectation follows the snapshot.
	store.UpdateTailnet(func(tn *snapshot.Tailnet) {
		tn.TailscaleIPs = []netip.Addr{netip.MustParseAddr("100.64.0.2")}
	})
	waitFor(t, store, within, "new tailnet IP expected",
		checkIs(CheckTUN, false, `tun: link "tailscale0" has no tailnet address (want 100.64.0.2)`))
	store.UpdateTailnet(func(tn *snapshot.Tailnet) { tn.TailscaleIPs = []netip.Addr{tsIP4} })
	waitFor(t, store, within, "old tailnet IP back", checkIs(CheckTUN, true, ""))

	// The link goes down (which also flushes its routes).
	if err := h.LinkSetDown(tun); err != nil {
		t.Fatal(err)
	}
	waitFor(t, store, within, "link down noticed", checkIs(CheckTUN, false, `tun: link "tailscale0" is down`))
	waitFor(t, store, within, "route gone with the link",
		checkIs(CheckExitRouteKernel, false, `exit-route-kernel: no default route via "tailscale0" in table 52`))
	if err := h.LinkSetUp(tun); err != nil {
		t.Fatal(err)
	}
	waitFor(t, store, within, "link up noticed", checkIs(CheckTUN, true, ""))

	// tailscaled exits: its TUN goes away.
	tunFile.Close()
	waitFor(t, store, within, "TUN removal noticed", checkIs(CheckTUN, false, `tun: link "tailscale0" not found`))

	// The worker stops using an exit node: the check no longer applies.
	store.UpdateTailnet(func(tn *snapshot.Tailnet) { tn.ExitNodeID = "" })
	waitFor(t, store, within, "exit-route-kernel withdrawn", checkAbsent(CheckExitRouteKernel))
}

// TestWatcherExitForwarding plays an exit node: forwarding is turned on
// by Prepare, someone turns it off and on behind the agent's back, UDP GRO
// forwarding is enabled once the TUN exists, and a role change to worker
// leaves forwarding on (pod networking needs it).
func TestWatcherExitForwarding(t *testing.T) {
	requireRoot(t)
	hostBefore, err := ReadForwarding(DefaultProcSys)
	if err != nil {
		t.Fatal(err)
	}
	ns := newNetNS(t)
	h := nsHandle(t, ns)

	// The node's uplink: a veth with the default route.
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth1"}
	if err := h.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	eth0 := mustLink(t, h, "eth0")
	for _, name := range []string{"eth0", "eth1"} {
		if err := h.LinkSetUp(mustLink(t, h, name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.AddrAdd(eth0, mustAddr(t, "198.18.0.2/24")); err != nil {
		t.Fatal(err)
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.ParseIP("198.18.0.1")}); err != nil {
		t.Fatal(err)
	}
	inNS(t, ns, func() error { return forwardingOff(DefaultProcSys) })

	store := snapshot.New(time.Now(), snapshot.RoleExit)
	store.SetTailnet(snapshot.Tailnet{TailscaleIPs: []netip.Addr{tsIP4}})
	w := New(store, Options{TUNName: "tailscale0", TUNDevice: filepath.Join(t.TempDir(), "tun"), ForwardingOptimizations: true},
		WithNetNS(ns), WithLogger(testLogger(t)))
	// netmon reads /proc/net/route, which shows the namespace of the
	// process's main thread, not of the thread in ns: look up in ns.
	w.defaultRouteIface = netlinkDefaultRouteInterface

	if err := w.Prepare(); err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	st := readNSForwarding(t, ns)
	if !st.IPv4 || (!st.IPv6 && !st.IPv6Missing) {
		t.Fatalf("forwarding in ns after Prepare: %+v", st)
	}
	if h := store.Load().Host; !h.Known || !h.IPv4Forwarding || !h.ForwardingEnabledByAgent {
		t.Errorf("Host after Prepare = %+v, want forwarding on, enabled by the agent", h)
	}

	startWatcher(t, w)
	waitFor(t, store, 2*time.Second, "forwarding passes", checkIs(CheckForwarding, true, ""))
	waitFor(t, store, within, "tun fails before tailscaled", checkIs(CheckTUN, false, `tun: link "tailscale0" not found`))
	waitFor(t, store, within, "GRO waits for the TUN",
		checkIs(CheckUDPGROForwarding, false, `udp-gro-forwarding: link "tailscale0" not found`))

	// tailscaled starts: TUN with UDP segmentation offload, address, up.
	createTUN(t, ns, "tailscale0", true)
	tun := mustLink(t, h, "tailscale0")
	if err := h.AddrAdd(tun, mustAddr(t, "100.64.0.1/32")); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(tun); err != nil {
		t.Fatal(err)
	}
	waitFor(t, store, within, "tun passes", checkIs(CheckTUN, true, ""))
	waitFor(t, store, within, "GRO enabled", checkIs(CheckUDPGROForwarding, true, ""))
	inNS(t, ns, func() error {
		warn, err := netkernelconf.CheckUDPGROForwarding("tailscale0", "eth0")
		if err != nil {
			return err
		}
		if warn != nil {
			return fmt.Errorf("after the watcher enabled it: %v", warn)
		}
		return nil
	})

	// Someone turns forwarding off behind the agent's back, then on.
	writeNS := func(key, v string) {
		inNS(t, ns, func() error { return writeSysctl(DefaultProcSys, key, v) })
	}
	writeNS(SysctlIPv4Forward, "0")
	waitFor(t, store, within, "forwarding off noticed",
		checkIs(CheckForwarding, false, "forwarding: net.ipv4.ip_forward is 0"))
	if h := store.Load().Host; h.IPv4Forwarding {
		t.Errorf("Host.IPv4Forwarding still true: %+v", h)
	}
	writeNS(SysctlIPv4Forward, "1")
	waitFor(t, store, within, "forwarding on noticed", checkIs(CheckForwarding, true, ""))

	// The node becomes a worker: the exit-only checks go, and forwarding
	// stays on: nothing ever turns it off.
	store.SetRole(snapshot.RoleWorker)
	waitFor(t, store, within, "forwarding check withdrawn", checkAbsent(CheckForwarding))
	waitFor(t, store, within, "GRO check withdrawn", checkAbsent(CheckUDPGROForwarding))
	// Give a wrong implementation time to act: the sysctls are re-read
	// every 500ms and the role is applied at once.
	time.Sleep(time.Second)
	if st := readNSForwarding(t, ns); !st.IPv4 || (!st.IPv6 && !st.IPv6Missing) {
		t.Errorf("forwarding in ns after exit -> worker: %+v, want still on", st)
	}
	if h := store.Load().Host; !h.IPv4Forwarding {
		t.Errorf("Host after exit -> worker = %+v, want forwarding still on", h)
	}

	// And an exit node again.
	store.SetRole(snapshot.RoleExit)
	waitFor(t, store, within, "forwarding back on", checkIs(CheckForwarding, true, ""))
	if h := store.Load().Host; !h.ForwardingEnabledByAgent {
		t.Errorf("Host = %+v, want enabled by the agent", h)
	}

	if hostAfter, err := ReadForwarding(DefaultProcSys); err != nil || hostAfter != hostBefore {
		t.Errorf("the host's forwarding changed: %+v -> %+v (%v)", hostBefore, hostAfter, err)
	}
}

// TestWatcherLeavesForeignForwardingAlone: forwarding that was on before
// the agent (the usual case on a Kubernetes node) stays on when the node
// stops being an exit node.
func TestWatcherLeavesForeignForwardingAlone(t *testing.T) {
	root := fakeProcSys(t, "1", "1")
	store := snapshot.New(time.Now(), snapshot.RoleExit)
	w := New(store, Options{TUNName: UserspaceNetworking, ProcSys: root}, WithLogger(testLogger(t)))
	if err := w.Prepare(); err != nil {
		t.Fatal(err)
	}
	if h := store.Load().Host; h.ForwardingEnabledByAgent {
		t.Fatalf("Host = %+v: the agent did not turn anything on", h)
	}
	if err := w.applyRole(snapshot.RoleWorker); err != nil {
		t.Fatal(err)
	}
	if v4, v6 := readKey(t, root, SysctlIPv4Forward), readKey(t, root, SysctlIPv6Forward); v4 != "1" || v6 != "1" {
		t.Errorf("forwarding after exit -> worker: %s %s, want it left on", v4, v6)
	}
}

// TestWatcherNeverTurnsForwardingOff: forwarding the agent itself turned
// on for the exit role stays on when the node becomes a worker or none: on
// a Kubernetes node pod networking depends on it.
func TestWatcherNeverTurnsForwardingOff(t *testing.T) {
	for _, next := range []snapshot.Role{snapshot.RoleWorker, snapshot.RoleNone} {
		t.Run(string(next), func(t *testing.T) {
			root := fakeProcSys(t, "0", "0")
			store := snapshot.New(time.Now(), snapshot.RoleExit)
			w := New(store, Options{TUNName: "tailscale0", TUNDevice: filepath.Join(t.TempDir(), "tun"), ProcSys: root},
				WithLogger(testLogger(t)))
			if err := w.applyRole(snapshot.RoleExit); err != nil {
				t.Fatal(err)
			}
			if v4 := readKey(t, root, SysctlIPv4Forward); v4 != "1" {
				t.Fatalf("exit role: %s=%s, want 1", SysctlIPv4Forward, v4)
			}
			if err := w.applyRole(next); err != nil {
				t.Fatal(err)
			}
			if v4, v6 := readKey(t, root, SysctlIPv4Forward), readKey(t, root, SysctlIPv6Forward); v4 != "1" || v6 != "1" {
				t.Errorf("forwarding after exit -> %s: %s %s, want it left on", next, v4, v6)
			}
		})
	}
}

// TestWatcherUserspace: with userspace networking there is nothing in the
// kernel to prepare or check, but the forwarding state is still reported
// and the loop beats.
func TestWatcherUserspace(t *testing.T) {
	root := fakeProcSys(t, "0", "1")
	store := snapshot.New(time.Now(), snapshot.RoleExit)
	store.SetCheck(CheckTUN, snapshot.Check{OK: true}) // stale, from an earlier configuration
	w := New(store, Options{TUNName: UserspaceNetworking, TUNDevice: "/nonexistent/tun", ProcSys: root}, WithLogger(testLogger(t)))
	if err := w.Prepare(); err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	if v4 := readKey(t, root, SysctlIPv4Forward); v4 != "0" {
		t.Errorf("userspace exit node turned kernel forwarding on")
	}
	startWatcher(t, w)
	waitFor(t, store, within, "no kernel checks", func(sn *snapshot.Snapshot) string {
		for _, name := range checkNames {
			if _, ok := sn.Checks[name]; ok {
				return "check " + name + " published"
			}
		}
		if _, ok := sn.Heartbeats[HeartbeatName]; !ok {
			return "no heartbeat"
		}
		if h := sn.Host; !h.Known || h.IPv4Forwarding || !h.IPv6Forwarding {
			return fmt.Sprintf("Host = %+v", h)
		}
		return ""
	})
}

func TestOptionsValidate(t *testing.T) {
	if err := Defaults().Validate(); err != nil {
		t.Errorf("Defaults: %v", err)
	}
	o := Defaults()
	o.TUNName = UserspaceNetworking
	o.TUNDevice = ""
	if err := o.Validate(); err != nil {
		t.Errorf("userspace: %v", err)
	}
	bad := Options{TUNName: "a/very/long/interface/name", TUNDevice: "dev/net/tun", ProcSys: "proc"}
	err := bad.Validate()
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"invalid TUN name", "invalid TUN device", "invalid /proc/sys root"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q lacks %q", err, want)
		}
	}
}

// netlinkDefaultRouteInterface finds the default-route interface of the
// calling thread's network namespace.
func netlinkDefaultRouteInterface() (string, error) {
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return "", err
	}
	for _, r := range routes {
		if r.Gw != nil && (r.Dst == nil || r.Dst.IP.IsUnspecified()) {
			l, err := netlink.LinkByIndex(r.LinkIndex)
			if err != nil {
				return "", err
			}
			return l.Attrs().Name, nil
		}
	}
	return "", errors.New("no default route")
}
