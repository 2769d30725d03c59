package hostnet

import (
	"net/netip"
	"reflect"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

var (
	tsIP4 = netip.MustParseAddr("100.64.0.1")
	tsIP6 = netip.MustParseAddr("fd7a:115c:a1e0::1")
)

func TestExpectedKernelState(t *testing.T) {
	ips := []netip.Addr{tsIP4, tsIP6}
	tests := []struct {
		name     string
		role     snapshot.Role
		exitNode bool
		tun      string
		want     Expectation
	}{
		{
			name: "exit needs forwarding, no table-52 route",
			role: snapshot.RoleExit, tun: "tailscale0",
			want: Expectation{TUN: "tailscale0", TailnetAddrs: ips, Forwarding: true},
		},
		{
			name: "exit ignores an exit node it could not use anyway",
			role: snapshot.RoleExit, exitNode: true, tun: "tailscale0",
			want: Expectation{TUN: "tailscale0", TailnetAddrs: ips, Forwarding: true},
		},
		{
			name: "worker using an exit node needs tailscaled's rules and route, never forwarding",
			role: snapshot.RoleWorker, exitNode: true, tun: "tailscale0",
			want: Expectation{TUN: "tailscale0", TailnetAddrs: ips, ExitRoute: true, Rules: TailscaledRules()},
		},
		{
			name: "worker without an exit node only needs the TUN",
			role: snapshot.RoleWorker, tun: "tailscale0",
			want: Expectation{TUN: "tailscale0", TailnetAddrs: ips},
		},
		{
			name: "none only needs the TUN",
			role: snapshot.RoleNone, exitNode: true, tun: "ts1",
			want: Expectation{TUN: "ts1", TailnetAddrs: ips},
		},
		{
			name: "userspace networking expects nothing from the kernel",
			role: snapshot.RoleExit, tun: UserspaceNetworking,
			want: Expectation{},
		},
		{
			name: "userspace worker with an exit node expects nothing either",
			role: snapshot.RoleWorker, exitNode: true, tun: UserspaceNetworking,
			want: Expectation{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ExpectedKernelState(tt.role, tt.exitNode, tt.tun, ips)
			if tt.want.TUN == "" {
				tt.want.TailnetAddrs = nil
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestTailscaledRules(t *testing.T) {
	// The rules as `ip rule` prints them on a node running tailscaled.
	want := []string{
		"5210: fwmark 0x80000/0xff0000 lookup main",
		"5230: fwmark 0x80000/0xff0000 lookup default",
		"5250: fwmark 0x80000/0xff0000 unreachable",
		"5270: lookup 52",
	}
	rules := TailscaledRules()
	if len(rules) != len(want) {
		t.Fatalf("got %d rules, want %d", len(rules), len(want))
	}
	for i, r := range rules {
		if got := strconv.Itoa(r.Priority) + ": " + r.String(); got != want[i] {
			t.Errorf("rule %d = %q, want %q", i, got, want[i])
		}
		if r.Family != unix.AF_INET {
			t.Errorf("rule %d family %d, want AF_INET", i, r.Family)
		}
	}
}

func TestRuleString(t *testing.T) {
	tests := []struct {
		r    Rule
		want string
	}{
		{Rule{Table: 52, Action: ActionToTable}, "lookup 52"},
		{Rule{Table: 254, Action: ActionToTable, Mark: 0x80000, Mask: 0xff0000}, "fwmark 0x80000/0xff0000 lookup main"},
		{Rule{Table: 255, Action: ActionToTable, Mark: 0x1, Mask: 0xffffffff}, "fwmark 0x1 lookup local"},
		{Rule{Table: 52, Action: ActionToTable, Mark: 0x80000, Mask: 0xff0000, Invert: true}, "not fwmark 0x80000/0xff0000 lookup 52"},
		{Rule{Action: ActionUnreachable, Mark: 0x80000, Mask: 0xff0000}, "fwmark 0x80000/0xff0000 unreachable"},
		{Rule{Action: 6, Table: 0}, "action 6 table 0"},
	}
	for _, tt := range tests {
		if got := tt.r.String(); got != tt.want {
			t.Errorf("%+v.String() = %q, want %q", tt.r, got, tt.want)
		}
	}
}

// kernelWithExitRoute is what a worker's kernel looks like while tailscaled
// uses an exit node: TUN up with its addresses, tailscaled's rules, the
// table-52 default route through the TUN.
func kernelWithExitRoute() KernelState {
	return KernelState{
		Link: &Link{Name: "tailscale0", Index: 7, Up: true, Addrs: []netip.Prefix{
			netip.MustParsePrefix("100.64.0.1/32"),
			netip.MustParsePrefix("fd7a:115c:a1e0::1/128"),
		}},
		Rules: append([]Rule{
			{Family: unix.AF_INET, Priority: 0, Table: 255, Action: ActionToTable},
			{Family: unix.AF_INET, Priority: 32766, Table: 254, Action: ActionToTable},
		}, TailscaledRules()...),
		Routes: []Route{
			{Family: unix.AF_INET, Table: 52, Dst: netip.MustParsePrefix("100.100.100.100/32"), LinkIndex: 7, Type: unix.RTN_UNICAST},
			{Family: unix.AF_INET, Table: 52, Dst: netip.MustParsePrefix("0.0.0.0/0"), LinkIndex: 7, LinkName: "tailscale0", Type: unix.RTN_UNICAST},
			{Family: unix.AF_INET, Table: 52, Dst: netip.MustParsePrefix("192.168.0.0/16"), Type: unix.RTN_THROW},
		},
		Forwarding: ForwardingState{IPv4: true, IPv6: true},
	}
}

func TestEvaluate(t *testing.T) {
	ips := []netip.Addr{tsIP4, tsIP6}
	worker := ExpectedKernelState(snapshot.RoleWorker, true, "tailscale0", ips)
	exit := ExpectedKernelState(snapshot.RoleExit, false, "tailscale0", ips)
	none := ExpectedKernelState(snapshot.RoleNone, false, "tailscale0", ips)
	ok := snapshot.Check{OK: true}
	fail := func(reason string) snapshot.Check { return snapshot.Check{Reason: reason} }

	tests := []struct {
		name   string
		exp    Expectation
		modify func(*KernelState)
		want   map[string]snapshot.Check
	}{
		{
			name: "worker all present",
			exp:  worker,
			want: map[string]snapshot.Check{CheckTUN: ok, CheckExitRouteKernel: ok},
		},
		{
			name:   "worker: link missing",
			exp:    worker,
			modify: func(ks *KernelState) { ks.Link, ks.Routes = nil, nil },
			want: map[string]snapshot.Check{
				CheckTUN:             fail(`tun: link "tailscale0" not found`),
				CheckExitRouteKernel: fail(`exit-route-kernel: no default route via "tailscale0" in table 52`),
			},
		},
		{
			name:   "link down",
			exp:    none,
			modify: func(ks *KernelState) { ks.Link.Up = false },
			want:   map[string]snapshot.Check{CheckTUN: fail(`tun: link "tailscale0" is down`)},
		},
		{
			name:   "tailnet address missing",
			exp:    none,
			modify: func(ks *KernelState) { ks.Link.Addrs = ks.Link.Addrs[1:] },
			want:   map[string]snapshot.Check{CheckTUN: fail(`tun: link "tailscale0" has no tailnet address (want 100.64.0.1)`)},
		},
		{
			name:   "no addresses at all",
			exp:    none,
			modify: func(ks *KernelState) { ks.Link.Addrs = nil },
			want:   map[string]snapshot.Check{CheckTUN: fail(`tun: link "tailscale0" has no tailnet address (want 100.64.0.1, fd7a:115c:a1e0::1)`)},
		},
		{
			name: "an IPv6 tailnet address is not expected on a kernel without IPv6",
			exp:  none,
			modify: func(ks *KernelState) {
				ks.Link.Addrs = ks.Link.Addrs[:1]
				ks.Forwarding = ForwardingState{IPv4: true, IPv6Missing: true}
			},
			want: map[string]snapshot.Check{CheckTUN: ok},
		},
		{
			name: "no tailnet IPs known yet: the link only has to be up",
			exp:  ExpectedKernelState(snapshot.RoleNone, false, "tailscale0", nil),
			modify: func(ks *KernelState) {
				ks.Link.Addrs = nil
			},
			want: map[string]snapshot.Check{CheckTUN: ok},
		},
		{
			name: "rule lookup 52 missing",
			exp:  worker,
			modify: func(ks *KernelState) {
				ks.Rules = ks.Rules[:len(ks.Rules)-1]
			},
			want: map[string]snapshot.Check{
				CheckTUN:             ok,
				CheckExitRouteKernel: fail(`exit-route-kernel: no rule "lookup 52" (priority 5270) in the kernel`),
			},
		},
		{
			name: "rule at another priority does not count",
			exp:  worker,
			modify: func(ks *KernelState) {
				ks.Rules[len(ks.Rules)-1].Priority = 5271
			},
			want: map[string]snapshot.Check{
				CheckTUN:             ok,
				CheckExitRouteKernel: fail(`exit-route-kernel: no rule "lookup 52" (priority 5270) in the kernel`),
			},
		},
		{
			name: "an IPv6 copy of the rule does not count for IPv4",
			exp:  worker,
			modify: func(ks *KernelState) {
				ks.Rules[len(ks.Rules)-1].Family = unix.AF_INET6
			},
			want: map[string]snapshot.Check{
				CheckTUN:             ok,
				CheckExitRouteKernel: fail(`exit-route-kernel: no rule "lookup 52" (priority 5270) in the kernel`),
			},
		},
		{
			name: "bypass rule missing and the default route missing: both reported",
			exp:  worker,
			modify: func(ks *KernelState) {
				ks.Rules = ks.Rules[:2] // only the kernel's own rules
				ks.Routes = ks.Routes[:1]
			},
			want: map[string]snapshot.Check{
				CheckTUN: ok,
				CheckExitRouteKernel: fail(`exit-route-kernel: no rule "fwmark 0x80000/0xff0000 lookup main" (priority 5210) in the kernel; ` +
					`no rule "fwmark 0x80000/0xff0000 lookup default" (priority 5230) in the kernel; ` +
					`no rule "fwmark 0x80000/0xff0000 unreachable" (priority 5250) in the kernel; ` +
					`no rule "lookup 52" (priority 5270) in the kernel; ` +
					`no default route via "tailscale0" in table 52`),
			},
		},
		{
			name: "default route missing",
			exp:  worker,
			modify: func(ks *KernelState) {
				ks.Routes = []Route{ks.Routes[0], ks.Routes[2]}
			},
			want: map[string]snapshot.Check{
				CheckTUN:             ok,
				CheckExitRouteKernel: fail(`exit-route-kernel: no default route via "tailscale0" in table 52`),
			},
		},
		{
			name: "an IPv6 default route does not count for IPv4",
			exp:  worker,
			modify: func(ks *KernelState) {
				ks.Routes[1].Family = unix.AF_INET6
				ks.Routes[1].Dst = netip.MustParsePrefix("::/0")
			},
			want: map[string]snapshot.Check{
				CheckTUN:             ok,
				CheckExitRouteKernel: fail(`exit-route-kernel: no default route via "tailscale0" in table 52`),
			},
		},
		{
			name: "default route through another device",
			exp:  worker,
			modify: func(ks *KernelState) {
				ks.Routes[1].LinkIndex, ks.Routes[1].LinkName = 2, "eth0"
			},
			want: map[string]snapshot.Check{
				CheckTUN:             ok,
				CheckExitRouteKernel: fail(`exit-route-kernel: the default route in table 52 is unicast dev "eth0", want dev "tailscale0"`),
			},
		},
		{
			name: "default route is a blackhole",
			exp:  worker,
			modify: func(ks *KernelState) {
				ks.Routes[1] = Route{Family: unix.AF_INET, Table: 52, Dst: netip.MustParsePrefix("0.0.0.0/0"), Type: unix.RTN_BLACKHOLE}
			},
			want: map[string]snapshot.Check{
				CheckTUN:             ok,
				CheckExitRouteKernel: fail(`exit-route-kernel: the default route in table 52 is blackhole, want dev "tailscale0"`),
			},
		},
		{
			name: "kernel state unreadable",
			exp:  worker,
			modify: func(ks *KernelState) {
				*ks = KernelState{ReadErr: "list rules: permission denied"}
			},
			want: map[string]snapshot.Check{
				CheckTUN:             fail("tun: cannot read the kernel state: list rules: permission denied"),
				CheckExitRouteKernel: fail("exit-route-kernel: cannot read the kernel state: list rules: permission denied"),
			},
		},
		{
			name: "exit with forwarding on",
			exp:  exit,
			want: map[string]snapshot.Check{CheckTUN: ok, CheckForwarding: ok},
		},
		{
			name:   "exit with IPv4 forwarding off",
			exp:    exit,
			modify: func(ks *KernelState) { ks.Forwarding.IPv4 = false },
			want:   map[string]snapshot.Check{CheckTUN: ok, CheckForwarding: fail("forwarding: net.ipv4.ip_forward is 0")},
		},
		{
			name:   "exit with both off",
			exp:    exit,
			modify: func(ks *KernelState) { ks.Forwarding = ForwardingState{} },
			want: map[string]snapshot.Check{CheckTUN: ok, CheckForwarding: fail(
				"forwarding: net.ipv4.ip_forward is 0; net.ipv6.conf.all.forwarding is 0")},
		},
		{
			name:   "exit on a kernel without IPv6 needs only IPv4",
			exp:    exit,
			modify: func(ks *KernelState) { ks.Forwarding = ForwardingState{IPv4: true, IPv6Missing: true} },
			want:   map[string]snapshot.Check{CheckTUN: ok, CheckForwarding: ok},
		},
		{
			name: "exit: enabling failed",
			exp:  exit,
			modify: func(ks *KernelState) {
				ks.Forwarding = ForwardingState{IPv6: true}
				ks.EnableErr = "enable IP forwarding: read-only file system"
			},
			want: map[string]snapshot.Check{CheckTUN: ok, CheckForwarding: fail(
				"forwarding: net.ipv4.ip_forward is 0; enabling it failed: enable IP forwarding: read-only file system")},
		},
		{
			name: "exit: sysctls unreadable",
			exp:  exit,
			modify: func(ks *KernelState) {
				ks.ForwardingErr = "read net.ipv4.ip_forward: no such file or directory"
			},
			want: map[string]snapshot.Check{CheckTUN: ok, CheckForwarding: fail(
				"forwarding: read net.ipv4.ip_forward: no such file or directory")},
		},
		{
			name:   "worker ignores forwarding",
			exp:    worker,
			modify: func(ks *KernelState) { ks.Forwarding = ForwardingState{} },
			want:   map[string]snapshot.Check{CheckTUN: ok, CheckExitRouteKernel: ok},
		},
		{
			name:   "userspace networking has no checks",
			exp:    ExpectedKernelState(snapshot.RoleWorker, true, UserspaceNetworking, ips),
			modify: func(ks *KernelState) { *ks = KernelState{} },
			want:   map[string]snapshot.Check{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ks := kernelWithExitRoute()
			if tt.modify != nil {
				tt.modify(&ks)
			}
			got := Evaluate(tt.exp, ks)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Evaluate:\n got  %v\n want %v", got, tt.want)
			}
		})
	}
}
