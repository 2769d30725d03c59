package lab

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"tailscale.com/client/local"
	"tailscale.com/ipn"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/net/tsaddr"
)

// tailscaledBinary returns the pinned tailscaled, failing (not skipping)
// when it has not been built: `make test` builds it first.
func tailscaledBinary(t *testing.T) string {
	t.Helper()
	bin, err := TailscaledBinary()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// up logs the node's tailscaled in to the lab's control server with the
// lab's auth key, like `tailscale up --login-server=... --authkey=...
// --accept-dns=false [--advertise-exit-node]`, and waits for Running.
func up(ctx context.Context, t *testing.T, l *Lab, n *Node, advertiseExit bool) *ipnstate.Status {
	t.Helper()
	lc := n.LocalClient()
	waitLocalAPI(ctx, t, lc)
	prefs := ipn.NewPrefs()
	prefs.ControlURL = l.ControlURL()
	prefs.WantRunning = true
	prefs.CorpDNS = false // never touch resolv.conf
	prefs.Hostname = n.Name()
	if advertiseExit {
		prefs.AdvertiseRoutes = tsaddr.ExitRoutes()
	}
	if err := lc.Start(ctx, ipn.Options{AuthKey: l.AuthKey(), UpdatePrefs: prefs}); err != nil {
		t.Fatalf("%s: Start: %v", n.Name(), err)
	}
	if err := lc.StartLoginInteractive(ctx); err != nil {
		t.Fatalf("%s: StartLoginInteractive: %v", n.Name(), err)
	}
	return waitStatus(ctx, t, n, "Running with a tailnet IPv4", func(st *ipnstate.Status) bool {
		return st.BackendState == ipn.Running.String() && len(st.TailscaleIPs) > 0
	})
}

func waitLocalAPI(ctx context.Context, t *testing.T, lc *local.Client) {
	t.Helper()
	for {
		c, cancel := context.WithTimeout(ctx, time.Second)
		_, err := lc.StatusWithoutPeers(c)
		cancel()
		if err == nil {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("LocalAPI at %s: %v", lc.Socket, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func waitStatus(ctx context.Context, t *testing.T, n *Node, what string, cond func(*ipnstate.Status) bool) *ipnstate.Status {
	t.Helper()
	var last *ipnstate.Status
	var lastErr error
	for {
		st, err := n.LocalClient().Status(ctx)
		if err == nil && cond(st) {
			return st
		}
		last, lastErr = st, err
		select {
		case <-ctx.Done():
			state := "<nil>"
			if last != nil {
				state = last.BackendState
				if last.Self != nil {
					state += fmt.Sprintf(" self.AllowedIPs=%v", last.Self.AllowedIPs)
				}
				for _, p := range last.Peer {
					state += fmt.Sprintf(" peer %s online=%v exitOption=%v exitNode=%v", p.HostName, p.Online, p.ExitNodeOption, p.ExitNode)
				}
			}
			t.Fatalf("%s: timed out waiting for %s; last status: %s, err %v", n.Name(), what, state, lastErr)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func peerByHost(st *ipnstate.Status, host string) *ipnstate.PeerStatus {
	for _, p := range st.Peer {
		if p.HostName == host {
			return p
		}
	}
	return nil
}

func selfApproved(st *ipnstate.Status) bool {
	return st.Self != nil && st.Self.AllowedIPs != nil &&
		st.Self.AllowedIPs.ContainsFunc(tsaddr.IsExitRoute)
}

// egressEventually polls the worker's egress IP until it is want (or, with
// want invalid, until the echo is unreachable or answers anything but
// notWant).
func egressEventually(ctx context.Context, t *testing.T, n *Node, want, notWant netip.Addr) {
	t.Helper()
	var got string
	for {
		c, cancel := context.WithTimeout(ctx, 2*time.Second)
		ip, err := n.EgressIP(c)
		cancel()
		if err == nil {
			got = ip.String()
		} else {
			got = err.Error()
		}
		switch {
		case want.IsValid() && err == nil && ip == want:
			return
		case !want.IsValid() && (err != nil || ip != notWant):
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: egress: got %s, want %v (not %v)", n.Name(), got, want, notWant)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// TestExitNode runs two real tailscaled with kernel TUN: the exit node
// advertises, the lab's switch approves, the worker uses it, and the echo
// service sees the exit node's LAN address instead of the worker's.
func TestExitNode(t *testing.T) {
	SkipUnlessRoot(t)
	bin := tailscaledBinary(t)
	l := NewForTest(t, Options{Nodes: []string{"exit1", "worker1"}, StrictAuthKey: true})
	exit, worker := l.Node("exit1"), l.Node("worker1")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// What the agent's hostnet does on an exit node.
	for _, s := range []string{"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"} {
		if err := exit.WriteSysctl(s, "1"); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []*Node{exit, worker} {
		if _, err := n.StartTailscaled(bin); err != nil {
			t.Fatal(err)
		}
	}
	egressEventually(ctx, t, worker, worker.Addr(), netip.Addr{})

	up(ctx, t, l, exit, true)
	wst := up(ctx, t, l, worker, false)
	t.Logf("worker tailnet IPs %v", wst.TailscaleIPs)

	// Not approved yet: the exit node knows it, the worker is not offered it.
	est := waitStatus(ctx, t, exit, "advertised routes reach control", func(st *ipnstate.Status) bool {
		for _, n := range l.ControlServer().AllNodes() {
			if n.Hostinfo.Valid() && n.Hostinfo.Hostname() == "exit1" && n.Hostinfo.RoutableIPs().Len() == 2 {
				return true
			}
		}
		return false
	})
	if selfApproved(est) {
		t.Fatalf("exit routes approved with the switch off: %v", est.Self.AllowedIPs)
	}
	waitStatus(ctx, t, worker, "exit1 as an unapproved peer", func(st *ipnstate.Status) bool {
		p := peerByHost(st, "exit1")
		return p != nil && !p.ExitNodeOption
	})

	l.SetApproveExitRoutes(true)
	waitStatus(ctx, t, exit, "exit routes approved", selfApproved)
	wst = waitStatus(ctx, t, worker, "exit1 offered as exit node", func(st *ipnstate.Status) bool {
		p := peerByHost(st, "exit1")
		return p != nil && p.ExitNodeOption && p.Online
	})
	exitIP := peerByHost(wst, "exit1").TailscaleIPs[0]
	if !exitIP.Is4() {
		exitIP = peerByHost(wst, "exit1").TailscaleIPs[1]
	}

	if _, err := worker.LocalClient().EditPrefs(ctx, &ipn.MaskedPrefs{
		Prefs:                     ipn.Prefs{ExitNodeIP: exitIP, ExitNodeAllowLANAccess: true},
		ExitNodeIPSet:             true,
		ExitNodeAllowLANAccessSet: true,
	}); err != nil {
		t.Fatal(err)
	}
	egressEventually(ctx, t, worker, exit.Addr(), netip.Addr{})
	t.Logf("worker egress: %v (exit node's LAN address)", exit.Addr())

	// For the record: tailscaled's NAT on the exit node (nftables through
	// netlink; the nft command is only used here, if installed).
	if _, err := exec.LookPath("nft"); err == nil {
		out, err := exit.Exec(ctx, "nft", "list", "ruleset")
		var masq []string
		for _, line := range strings.Split(string(out), "\n") {
			if strings.Contains(line, "masquerade") {
				masq = append(masq, strings.TrimSpace(line))
			}
		}
		if err != nil || len(masq) == 0 {
			t.Errorf("no masquerade rule on the exit node (%v):\n%s", err, out)
		} else {
			t.Logf("exit1 nftables masquerade: %q", masq)
		}
	}

	// The exit node itself still goes out directly.
	egressEventually(ctx, t, exit, exit.Addr(), netip.Addr{})

	// Withdrawn approval: the worker no longer leaves through exit1.
	l.SetApproveExitRoutes(false)
	waitStatus(ctx, t, worker, "exit1 no longer offered", func(st *ipnstate.Status) bool {
		p := peerByHost(st, "exit1")
		return p != nil && !p.ExitNodeOption
	})
	egressEventually(ctx, t, worker, netip.Addr{}, exit.Addr())

	// Approved again: back through exit1; exit node cleared: direct.
	l.SetApproveExitRoutes(true)
	egressEventually(ctx, t, worker, exit.Addr(), netip.Addr{})
	if _, err := worker.LocalClient().EditPrefs(ctx, &ipn.MaskedPrefs{
		Prefs:         ipn.Prefs{ExitNodeID: "", ExitNodeIP: netip.Addr{}},
		ExitNodeIDSet: true,
		ExitNodeIPSet: true,
	}); err != nil {
		t.Fatal(err)
	}
	egressEventually(ctx, t, worker, worker.Addr(), netip.Addr{})

	// Routes advertised while the switch is on are approved by themselves.
	if _, err := worker.LocalClient().EditPrefs(ctx, &ipn.MaskedPrefs{
		Prefs:              ipn.Prefs{AdvertiseRoutes: tsaddr.ExitRoutes()},
		AdvertiseRoutesSet: true,
	}); err != nil {
		t.Fatal(err)
	}
	waitStatus(ctx, t, worker, "worker's own exit routes approved", selfApproved)
	waitStatus(ctx, t, exit, "worker1 offered as exit node", func(st *ipnstate.Status) bool {
		p := peerByHost(st, "worker1")
		return p != nil && p.ExitNodeOption
	})

	// tailscaled ran with kernel TUN and nftables in the namespace.
	out, err := exit.Exec(ctx, "ip", "-o", "link", "show", TUNName)
	if err != nil || !strings.Contains(string(out), TUNName) {
		t.Errorf("no %s in exit1: %q, %v", TUNName, out, err)
	}
	procs, err := worker.Processes()
	if err != nil || !slices.Contains(mapValues(procs), "tailscaled") {
		t.Errorf("worker processes: %v, %v", procs, err)
	}

	// Crash: SignalProcesses finds tailscaled by name.
	pids, err := worker.SignalProcesses("tailscaled", 9)
	if err != nil || len(pids) != 1 {
		t.Errorf("SignalProcesses: %v, %v", pids, err)
	}

	id := l.ID()
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	assertNothingLeft(t, id)
}

func mapValues(m map[int]string) []string {
	var out []string
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

// TestControlOverTLS logs a tailscaled in through the control client's
// HTTPS fallback only. tailscaled takes that fallback, and nothing else,
// whenever a Noise dial follows another within two minutes; a lab without
// it left such a node cut off from control for good (TestUninstall's
// worker, once, in CI). TS_FORCE_NOISE_443 takes the fallback from the
// first dial, so this fails without the lab's TLS listener or its CA.
func TestControlOverTLS(t *testing.T) {
	SkipUnlessRoot(t)
	bin := tailscaledBinary(t)
	l := NewForTest(t, Options{Nodes: []string{"node1"}})
	n := l.Node("node1")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	if err := os.MkdirAll(n.StateDir(), 0o700); err != nil {
		t.Fatal(err)
	}
	argv := append([]string{bin}, n.TailscaledArgs()...)
	if _, err := n.Start(argv, append(n.TailscaledEnv(), "TS_FORCE_NOISE_443=true")); err != nil {
		t.Fatal(err)
	}
	up(ctx, t, l, n, false)
}
