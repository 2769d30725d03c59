package hostnet

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
	"tailscale.com/tsconst"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

// The names of the checks this package publishes.
const (
	CheckTUN             = "tun"
	CheckForwarding      = "forwarding"
	CheckExitRouteKernel = "exit-route-kernel"
	// CheckUDPGROForwarding is informational: UDP GRO forwarding is a
	// throughput optimisation, so its failure must not gate readiness.
	CheckUDPGROForwarding = "udp-gro-forwarding"
)

// checkNames lists every check this package may publish, so that the ones
// that no longer apply can be deleted.
var checkNames = []string{CheckTUN, CheckForwarding, CheckExitRouteKernel, CheckUDPGROForwarding}

// UserspaceNetworking is the --tun value that makes tailscaled use its
// userspace network stack: no TUN, no kernel routes, no kernel forwarding.
const UserspaceNetworking = "userspace-networking"

// TailscaleTable is the routing table tailscaled installs its routes in.
const TailscaleTable = 52

// Rule actions (linux/fib_rules.h FR_ACT_*).
const (
	ActionToTable     uint8 = 1 // FR_ACT_TO_TBL: "lookup TABLE"
	ActionUnreachable uint8 = 7 // FR_ACT_UNREACHABLE
)

// Rule is a policy routing rule, reduced to what identifies tailscaled's.
type Rule struct {
	Family   int // unix.AF_INET or unix.AF_INET6
	Priority int
	Table    int // 0 for rules that do not look up a table
	Mark     uint32
	Mask     uint32 // 0 when the rule has no fwmark mask
	Action   uint8  // ActionToTable, ActionUnreachable, ...
	Invert   bool   // "not" rule
}

// String describes the rule the way `ip rule` prints its selector and
// action, without the priority: "fwmark 0x80000/0xff0000 lookup main",
// "lookup 52".
func (r Rule) String() string {
	var parts []string
	if r.Invert {
		parts = append(parts, "not")
	}
	if r.Mark != 0 || r.Mask != 0 {
		if r.Mask != 0 && r.Mask != 0xffffffff {
			parts = append(parts, fmt.Sprintf("fwmark %#x/%#x", r.Mark, r.Mask))
		} else {
			parts = append(parts, fmt.Sprintf("fwmark %#x", r.Mark))
		}
	}
	switch r.Action {
	case ActionToTable:
		parts = append(parts, "lookup "+tableName(r.Table))
	case ActionUnreachable:
		parts = append(parts, "unreachable")
	default:
		parts = append(parts, fmt.Sprintf("action %d table %s", r.Action, tableName(r.Table)))
	}
	return strings.Join(parts, " ")
}

func tableName(t int) string {
	switch t {
	case unix.RT_TABLE_MAIN:
		return "main"
	case unix.RT_TABLE_DEFAULT:
		return "default"
	case unix.RT_TABLE_LOCAL:
		return "local"
	}
	return fmt.Sprint(t)
}

// TailscaledRules returns the IPv4 policy rules tailscaled installs on
// Linux (wgengine/router/osrouter baseIPRules with its 5200 priority
// base): its own fwmarked packets use the main and default tables or are
// dropped, everything else looks up table 52 first.
func TailscaledRules() []Rule {
	const base = 5200
	mark, mask := uint32(tsconst.LinuxBypassMarkNum), uint32(tsconst.LinuxFwmarkMaskNum)
	return []Rule{
		{Family: unix.AF_INET, Priority: base + 10, Mark: mark, Mask: mask, Table: unix.RT_TABLE_MAIN, Action: ActionToTable},
		{Family: unix.AF_INET, Priority: base + 30, Mark: mark, Mask: mask, Table: unix.RT_TABLE_DEFAULT, Action: ActionToTable},
		{Family: unix.AF_INET, Priority: base + 50, Mark: mark, Mask: mask, Action: ActionUnreachable},
		{Family: unix.AF_INET, Priority: base + 70, Table: TailscaleTable, Action: ActionToTable},
	}
}

// Route is a route of table 52, reduced to what the checks need.
type Route struct {
	Family    int
	Table     int
	Dst       netip.Prefix // 0.0.0.0/0 for a default route
	LinkIndex int          // output interface; 0 if none (or multipath)
	LinkName  string       // its name, when known
	Type      int          // unix.RTN_UNICAST, RTN_THROW, ...
}

// Link is the state of the TUN link.
type Link struct {
	Name  string
	Index int
	Up    bool // administratively up (IFF_UP)
	Addrs []netip.Prefix
}

// ForwardingState is what the forwarding sysctls read.
type ForwardingState struct {
	IPv4 bool // net.ipv4.ip_forward != 0
	IPv6 bool // net.ipv6.conf.all.forwarding != 0
	// IPv6Missing is true when the kernel has no IPv6 (net.ipv6 does not
	// exist, for example ipv6.disable=1): there is nothing to forward.
	IPv6Missing bool
}

// KernelState is what the kernel says, read through netlink and /proc/sys.
// It is plain data so that Evaluate can be table-tested.
type KernelState struct {
	// ReadErr is why the netlink state (Link, Rules, Routes) could not be
	// read; "" when it was.
	ReadErr string
	Link    *Link   // the TUN link; nil when it does not exist
	Rules   []Rule  // every policy rule, both families
	Routes  []Route // the routes of table 52, both families

	Forwarding ForwardingState
	// ForwardingErr is why the forwarding sysctls could not be read.
	ForwardingErr string
	// EnableErr is why the agent's last attempt to enable forwarding
	// failed (exit role); "" if it did not fail.
	EnableErr string
}

// Expectation is what the kernel must look like for a role.
type Expectation struct {
	// TUN is the TUN link that must exist, be up and carry TailnetAddrs;
	// "" when no TUN is expected (userspace networking).
	TUN          string
	TailnetAddrs []netip.Addr
	// Forwarding is true when IPv4 and IPv6 forwarding must be on.
	Forwarding bool
	// ExitRoute is true when tailscaled's Rules and a default route
	// through the TUN in table 52 must be present.
	ExitRoute bool
	Rules     []Rule
}

// ExpectedKernelState returns what the kernel must look like for role. A
// worker that uses an exit node (exitNodeActive) needs tailscaled's policy
// rules and the table-52 default route through the TUN; an exit node needs
// forwarding; every role with a TUN needs the link up with the tailnet
// addresses. tunName UserspaceNetworking expects nothing.
func ExpectedKernelState(role snapshot.Role, exitNodeActive bool, tunName string, tailnetIPs []netip.Addr) Expectation {
	if tunName == UserspaceNetworking || tunName == "" {
		return Expectation{}
	}
	e := Expectation{
		TUN:          tunName,
		TailnetAddrs: slices.Clone(tailnetIPs),
		Forwarding:   role == snapshot.RoleExit,
	}
	if role == snapshot.RoleWorker && exitNodeActive {
		e.ExitRoute = true
		e.Rules = TailscaledRules()
	}
	return e
}

// Evaluate compares the kernel with the expectation and returns the checks
// that apply, by name, with OK and Reason set (the caller stamps Duration
// and CheckedAt). Checks that do not apply are absent.
func Evaluate(exp Expectation, ks KernelState) map[string]snapshot.Check {
	out := map[string]snapshot.Check{}
	if exp.TUN != "" {
		out[CheckTUN] = result(CheckTUN, evalTUN(exp, ks))
	}
	if exp.Forwarding {
		out[CheckForwarding] = result(CheckForwarding, evalForwarding(ks))
	}
	if exp.ExitRoute {
		out[CheckExitRouteKernel] = result(CheckExitRouteKernel, evalExitRoute(exp, ks))
	}
	return out
}

func result(name string, problems []string) snapshot.Check {
	if len(problems) == 0 {
		return snapshot.Check{OK: true}
	}
	return snapshot.Check{Reason: name + ": " + strings.Join(problems, "; ")}
}

func evalTUN(exp Expectation, ks KernelState) []string {
	if ks.ReadErr != "" {
		return []string{"cannot read the kernel state: " + ks.ReadErr}
	}
	l := ks.Link
	if l == nil {
		return []string{fmt.Sprintf("link %q not found", exp.TUN)}
	}
	if !l.Up {
		return []string{fmt.Sprintf("link %q is down", exp.TUN)}
	}
	var missing []string
	for _, want := range exp.TailnetAddrs {
		if want.Is6() && ks.Forwarding.IPv6Missing {
			continue // tailscaled does not configure IPv6 on a kernel without it
		}
		if !slices.ContainsFunc(l.Addrs, func(p netip.Prefix) bool { return p.Addr() == want }) {
			missing = append(missing, want.String())
		}
	}
	if len(missing) > 0 {
		return []string{fmt.Sprintf("link %q has no tailnet address (want %s)", exp.TUN, strings.Join(missing, ", "))}
	}
	return nil
}

func evalForwarding(ks KernelState) []string {
	var problems []string
	if ks.ForwardingErr != "" {
		problems = append(problems, ks.ForwardingErr)
	} else {
		if !ks.Forwarding.IPv4 {
			problems = append(problems, "net.ipv4.ip_forward is 0")
		}
		if !ks.Forwarding.IPv6 && !ks.Forwarding.IPv6Missing {
			problems = append(problems, "net.ipv6.conf.all.forwarding is 0")
		}
	}
	if len(problems) > 0 && ks.EnableErr != "" {
		problems = append(problems, "enabling it failed: "+ks.EnableErr)
	}
	return problems
}

func evalExitRoute(exp Expectation, ks KernelState) []string {
	if ks.ReadErr != "" {
		return []string{"cannot read the kernel state: " + ks.ReadErr}
	}
	var problems []string
	for _, want := range exp.Rules {
		if !slices.Contains(ks.Rules, want) {
			problems = append(problems, fmt.Sprintf("no rule %q (priority %d) in the kernel", want.String(), want.Priority))
		}
	}
	problems = append(problems, evalDefaultRoute(exp, ks)...)
	return problems
}

// evalDefaultRoute checks for the IPv4 default route through the TUN in
// table 52.
func evalDefaultRoute(exp Expectation, ks KernelState) []string {
	var others []string
	for _, r := range ks.Routes {
		if r.Family != unix.AF_INET || r.Table != TailscaleTable || r.Dst.Bits() != 0 {
			continue
		}
		if r.Type == unix.RTN_UNICAST && ks.Link != nil && r.LinkIndex == ks.Link.Index {
			return nil
		}
		others = append(others, describeRoute(r))
	}
	if len(others) > 0 {
		return []string{fmt.Sprintf("the default route in table %d is %s, want dev %q", TailscaleTable, strings.Join(others, ", "), exp.TUN)}
	}
	return []string{fmt.Sprintf("no default route via %q in table %d", exp.TUN, TailscaleTable)}
}

func describeRoute(r Route) string {
	var s string
	switch r.Type {
	case unix.RTN_UNICAST:
		s = "unicast"
	case unix.RTN_THROW:
		s = "throw"
	case unix.RTN_UNREACHABLE:
		s = "unreachable"
	case unix.RTN_BLACKHOLE:
		s = "blackhole"
	case unix.RTN_PROHIBIT:
		s = "prohibit"
	default:
		s = fmt.Sprintf("type %d", r.Type)
	}
	switch {
	case r.LinkName != "":
		s += fmt.Sprintf(" dev %q", r.LinkName)
	case r.LinkIndex != 0:
		s += fmt.Sprintf(" dev ifindex %d", r.LinkIndex)
	}
	return s
}
