package metrics

import (
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/ts-node-agent/ts-node-agent/pkg/probe"
	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

var (
	t0   = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	now  = t0.Add(10 * time.Minute)
	info = BuildInfo{Version: "v0.3.0", TailscaleVersion: "v1.102.5", GoVersion: "go1.26.8"}
)

// storeOf returns a store holding a copy of sn.
func storeOf(sn *snapshot.Snapshot) *snapshot.Store {
	st := snapshot.New(sn.StartedAt, sn.Role)
	st.SetSupervisor(sn.Supervisor)
	st.SetTailnet(sn.Tailnet)
	st.SetHost(sn.Host)
	st.SetExitNode(sn.ExitNode)
	for _, p := range sn.Pings {
		st.SetPing(p)
	}
	for name, c := range sn.Checks {
		st.SetCheck(name, c)
	}
	for name, at := range sn.Heartbeats {
		st.Beat(name, at)
	}
	if !sn.FirstReadyAt.IsZero() {
		st.MarkReady(sn.FirstReadyAt)
	}
	return st
}

func peers() []snapshot.Peer {
	return []snapshot.Peer{
		{ID: "nDB", HostName: "db", TailscaleIPs: []netip.Addr{netip.MustParseAddr("100.64.0.5")}, Online: true},
		{ID: "nEXIT1", HostName: "exit-1", TailscaleIPs: []netip.Addr{netip.MustParseAddr("fd7a:115c:a1e0::9"), netip.MustParseAddr("100.64.0.9")}, Online: true, ExitNodeOption: true},
		{ID: "nOLD", HostName: "old-laptop", Online: false},
	}
}

func running(role snapshot.Role) *snapshot.Snapshot {
	return &snapshot.Snapshot{
		StartedAt:  t0,
		Role:       role,
		Supervisor: snapshot.Supervisor{Running: true, PID: 42, StartedAt: t0, Restarts: 2},
		Tailnet: snapshot.Tailnet{
			Connected:    true,
			BackendState: "Running",
			TailscaleIPs: []netip.Addr{netip.MustParseAddr("100.64.0.1")},
			Peers:        peers(),
			// The LocalAPI answered a moment ago.
			LocalAPIAnsweredAt: now.Add(-time.Second),
		},
		Checks:     map[string]snapshot.Check{},
		Heartbeats: map[string]time.Time{"tailnet": now.Add(-time.Second)},
	}
}

func probeOpts() probe.Options {
	o := probe.DefaultOptions()
	o.RoleChecks = map[snapshot.Role][]string{
		snapshot.RoleExit:   {"forwarding", "tun"},
		snapshot.RoleWorker: {"exit-node-ping"},
	}
	return o
}

// backendStates is the backend_state family with cur set to 1 (none if "").
func backendStates(cur string) string {
	var b strings.Builder
	b.WriteString("# HELP ts_node_agent_backend_state 1 for tailscaled's current backend state; all 0 without a LocalAPI connection.\n")
	b.WriteString("# TYPE ts_node_agent_backend_state gauge\n")
	for _, s := range []string{"InUseOtherUser", "NeedsLogin", "NeedsMachineAuth", "NoState", "Running", "Starting", "Stopped"} {
		v := "0"
		if s == cur {
			v = "1"
		}
		b.WriteString(`ts_node_agent_backend_state{state="` + s + `"} ` + v + "\n")
	}
	return b.String()
}

const (
	helpBuildInfo = `# HELP ts_node_agent_build_info Always 1; the labels say which build of the agent runs.
# TYPE ts_node_agent_build_info gauge
ts_node_agent_build_info{goversion="go1.26.8",tailscale_version="v1.102.5",version="v0.3.0"} 1
`
	helpCheckUp = `# HELP ts_node_agent_check_up 1 when the named readiness or liveness check, or published check, passes.
# TYPE ts_node_agent_check_up gauge
`
	helpRole = `# HELP ts_node_agent_role 1 for the node's current role (exit, worker, none), 0 for the others.
# TYPE ts_node_agent_role gauge
`
	helpReady = `# HELP ts_node_agent_ready 1 when every readiness check of the role passes (/readyz 200).
# TYPE ts_node_agent_ready gauge
`
	helpLive = `# HELP ts_node_agent_live 1 when the agent is live (/livez 200).
# TYPE ts_node_agent_live gauge
`
	helpPeers = `# HELP ts_node_agent_peers Tailnet peers seen by this node, by online status.
# TYPE ts_node_agent_peers gauge
`
	helpStartup = `# HELP ts_node_agent_startup_duration_seconds Time from agent start to the node's first ready; absent until then.
# TYPE ts_node_agent_startup_duration_seconds gauge
`
	helpTailscaledUp = `# HELP ts_node_agent_tailscaled_up 1 while the tailscaled child process runs.
# TYPE ts_node_agent_tailscaled_up gauge
`
	helpRestarts = `# HELP ts_node_agent_tailscaled_restarts_total Restarts of tailscaled after an unexpected exit since the agent started.
# TYPE ts_node_agent_tailscaled_restarts_total counter
`
	helpExitRouteApproved = `# HELP ts_node_agent_exit_route_approved Exit role: 1 when control approved both exit routes of this node.
# TYPE ts_node_agent_exit_route_approved gauge
`
	helpForwarding = `# HELP ts_node_agent_ip_forwarding_enabled 1 when the kernel forwards IP packets of the family.
# TYPE ts_node_agent_ip_forwarding_enabled gauge
`
	helpExitNodeInfo = `# HELP ts_node_agent_exit_node_info Worker: always 1; the labels name the exit node in use.
# TYPE ts_node_agent_exit_node_info gauge
`
	helpExitNodeOnline = `# HELP ts_node_agent_exit_node_online Worker: 1 when control reports the selected exit node online.
# TYPE ts_node_agent_exit_node_online gauge
`
)

// allNames are every family the Collector can emit; a family missing
// from an expected text must be absent.
var allNames = []string{
	"ts_node_agent_exit_node_switches_total", "ts_node_agent_tailnet_ping_seconds",
	"ts_node_agent_build_info", "ts_node_agent_role", "ts_node_agent_startup_duration_seconds",
	"ts_node_agent_ready", "ts_node_agent_live", "ts_node_agent_check_up",
	"ts_node_agent_tailscaled_up", "ts_node_agent_tailscaled_restarts_total",
	"ts_node_agent_backend_state", "ts_node_agent_peers", "ts_node_agent_exit_route_approved",
	"ts_node_agent_ip_forwarding_enabled", "ts_node_agent_exit_node_info", "ts_node_agent_exit_node_online",
	"ts_node_agent_node_key_expiry_timestamp_seconds",
}

func roles(cur snapshot.Role) string {
	var b strings.Builder
	b.WriteString(helpRole)
	for _, r := range []string{"exit", "none", "worker"} {
		v := "0"
		if r == string(cur) {
			v = "1"
		}
		b.WriteString(`ts_node_agent_role{role="` + r + `"} ` + v + "\n")
	}
	return b.String()
}

func TestCollector(t *testing.T) {
	tests := []struct {
		name string
		sn   func() *snapshot.Snapshot
		want string
	}{
		{
			name: "exit ready once, now not approved",
			sn: func() *snapshot.Snapshot {
				sn := running(snapshot.RoleExit)
				sn.FirstReadyAt = t0.Add(4500 * time.Millisecond)
				sn.Tailnet.ExitRoutesAdvertised = true
				sn.Host = snapshot.Host{Known: true, IPv4Forwarding: true, IPv6Forwarding: false}
				sn.Checks["forwarding"] = snapshot.Check{Reason: "net.ipv6.conf.all.forwarding is 0"}
				sn.Checks["tun"] = snapshot.Check{OK: true}
				sn.Checks["tcp:db"] = snapshot.Check{OK: true}
				return sn
			},
			want: helpBuildInfo + roles(snapshot.RoleExit) +
				helpStartup + "ts_node_agent_startup_duration_seconds 4.5\n" +
				helpReady + "ts_node_agent_ready 0\n" +
				helpLive + "ts_node_agent_live 1\n" +
				helpCheckUp +
				`ts_node_agent_check_up{check="backend"} 1
ts_node_agent_check_up{check="exit-routes"} 0
ts_node_agent_check_up{check="forwarding"} 0
ts_node_agent_check_up{check="loops"} 1
ts_node_agent_check_up{check="tailnet-ip"} 1
ts_node_agent_check_up{check="tailscaled"} 1
ts_node_agent_check_up{check="tcp:db"} 1
ts_node_agent_check_up{check="tun"} 1
` +
				helpTailscaledUp + "ts_node_agent_tailscaled_up 1\n" +
				helpRestarts + "ts_node_agent_tailscaled_restarts_total 2\n" +
				backendStates("Running") +
				helpPeers + `ts_node_agent_peers{online="false"} 1
ts_node_agent_peers{online="true"} 2
` +
				helpExitRouteApproved + "ts_node_agent_exit_route_approved 0\n" +
				helpForwarding + `ts_node_agent_ip_forwarding_enabled{family="ipv4"} 1
ts_node_agent_ip_forwarding_enabled{family="ipv6"} 0
`,
		},
		{
			name: "exit approved and ready",
			sn: func() *snapshot.Snapshot {
				sn := running(snapshot.RoleExit)
				sn.FirstReadyAt = t0.Add(2 * time.Second)
				sn.Tailnet.ExitRoutesAdvertised = true
				sn.Tailnet.ExitRoutesApproved = true
				sn.Host = snapshot.Host{Known: true, IPv4Forwarding: true, IPv6Forwarding: true}
				sn.Checks["forwarding"] = snapshot.Check{OK: true}
				sn.Checks["tun"] = snapshot.Check{OK: true}
				return sn
			},
			want: helpBuildInfo + roles(snapshot.RoleExit) +
				helpStartup + "ts_node_agent_startup_duration_seconds 2\n" +
				helpReady + "ts_node_agent_ready 1\n" +
				helpLive + "ts_node_agent_live 1\n" +
				helpCheckUp +
				`ts_node_agent_check_up{check="backend"} 1
ts_node_agent_check_up{check="exit-routes"} 1
ts_node_agent_check_up{check="forwarding"} 1
ts_node_agent_check_up{check="loops"} 1
ts_node_agent_check_up{check="tailnet-ip"} 1
ts_node_agent_check_up{check="tailscaled"} 1
ts_node_agent_check_up{check="tun"} 1
` +
				helpTailscaledUp + "ts_node_agent_tailscaled_up 1\n" +
				helpRestarts + "ts_node_agent_tailscaled_restarts_total 2\n" +
				backendStates("Running") +
				helpPeers + `ts_node_agent_peers{online="false"} 1
ts_node_agent_peers{online="true"} 2
` +
				helpExitRouteApproved + "ts_node_agent_exit_route_approved 1\n" +
				helpForwarding + `ts_node_agent_ip_forwarding_enabled{family="ipv4"} 1
ts_node_agent_ip_forwarding_enabled{family="ipv6"} 1
`,
		},
		{
			name: "worker using an exit node, not ready yet",
			sn: func() *snapshot.Snapshot {
				sn := running(snapshot.RoleWorker)
				sn.Tailnet.ExitNodeID = "nEXIT1"
				sn.Heartbeats["netcheck"] = now.Add(-5 * time.Minute)
				return sn
			},
			want: helpBuildInfo + roles(snapshot.RoleWorker) +
				helpReady + "ts_node_agent_ready 0\n" +
				helpLive + "ts_node_agent_live 0\n" +
				helpCheckUp +
				`ts_node_agent_check_up{check="backend"} 1
ts_node_agent_check_up{check="exit-node"} 1
ts_node_agent_check_up{check="exit-node-ping"} 0
ts_node_agent_check_up{check="loops"} 0
ts_node_agent_check_up{check="tailnet-ip"} 1
ts_node_agent_check_up{check="tailscaled"} 1
` +
				helpTailscaledUp + "ts_node_agent_tailscaled_up 1\n" +
				helpRestarts + "ts_node_agent_tailscaled_restarts_total 2\n" +
				backendStates("Running") +
				helpPeers + `ts_node_agent_peers{online="false"} 1
ts_node_agent_peers{online="true"} 2
` +
				helpExitNodeInfo + `ts_node_agent_exit_node_info{ip="100.64.0.9",name="exit-1"} 1
` +
				helpExitNodeOnline + "ts_node_agent_exit_node_online 1\n",
		},
		{
			name: "worker whose exit node left the tailnet",
			sn: func() *snapshot.Snapshot {
				sn := running(snapshot.RoleWorker)
				sn.Tailnet.ExitNodeID = "nGONE"
				sn.Checks["exit-node-ping"] = snapshot.Check{Reason: "3 pings failed"}
				return sn
			},
			want: helpBuildInfo + roles(snapshot.RoleWorker) +
				helpReady + "ts_node_agent_ready 0\n" +
				helpLive + "ts_node_agent_live 1\n" +
				helpCheckUp +
				`ts_node_agent_check_up{check="backend"} 1
ts_node_agent_check_up{check="exit-node"} 0
ts_node_agent_check_up{check="exit-node-ping"} 0
ts_node_agent_check_up{check="loops"} 1
ts_node_agent_check_up{check="tailnet-ip"} 1
ts_node_agent_check_up{check="tailscaled"} 1
` +
				helpTailscaledUp + "ts_node_agent_tailscaled_up 1\n" +
				helpRestarts + "ts_node_agent_tailscaled_restarts_total 2\n" +
				backendStates("Running") +
				helpPeers + `ts_node_agent_peers{online="false"} 1
ts_node_agent_peers{online="true"} 2
` +
				helpExitNodeOnline + "ts_node_agent_exit_node_online 0\n",
		},
		{
			name: "worker without exit node",
			sn: func() *snapshot.Snapshot {
				sn := running(snapshot.RoleWorker)
				sn.Checks["exit-node-ping"] = snapshot.Check{OK: true}
				return sn
			},
			want: helpBuildInfo + roles(snapshot.RoleWorker) +
				helpReady + "ts_node_agent_ready 0\n" +
				helpLive + "ts_node_agent_live 1\n" +
				helpCheckUp +
				`ts_node_agent_check_up{check="backend"} 1
ts_node_agent_check_up{check="exit-node"} 0
ts_node_agent_check_up{check="exit-node-ping"} 1
ts_node_agent_check_up{check="loops"} 1
ts_node_agent_check_up{check="tailnet-ip"} 1
ts_node_agent_check_up{check="tailscaled"} 1
` +
				helpTailscaledUp + "ts_node_agent_tailscaled_up 1\n" +
				helpRestarts + "ts_node_agent_tailscaled_restarts_total 2\n" +
				backendStates("Running") +
				helpPeers + `ts_node_agent_peers{online="false"} 1
ts_node_agent_peers{online="true"} 2
`,
		},
		{
			name: "none with tailscaled down, within grace",
			sn: func() *snapshot.Snapshot {
				sn := running(snapshot.RoleNone)
				sn.FirstReadyAt = t0.Add(time.Second)
				sn.Supervisor = snapshot.Supervisor{DownSince: now.Add(-30 * time.Second), LastExit: "signal: killed", Restarts: 3}
				sn.Tailnet.Connected = false // stale state below must not show
				sn.Host = snapshot.Host{Known: true}
				return sn
			},
			want: helpBuildInfo + roles(snapshot.RoleNone) +
				helpStartup + "ts_node_agent_startup_duration_seconds 1\n" +
				helpReady + "ts_node_agent_ready 0\n" +
				helpLive + "ts_node_agent_live 1\n" +
				helpCheckUp +
				`ts_node_agent_check_up{check="backend"} 0
ts_node_agent_check_up{check="loops"} 1
ts_node_agent_check_up{check="tailnet-ip"} 1
ts_node_agent_check_up{check="tailscaled"} 0
` +
				helpTailscaledUp + "ts_node_agent_tailscaled_up 0\n" +
				helpRestarts + "ts_node_agent_tailscaled_restarts_total 3\n" +
				backendStates("") +
				helpPeers + `ts_node_agent_peers{online="false"} 1
ts_node_agent_peers{online="true"} 2
` +
				helpForwarding + `ts_node_agent_ip_forwarding_enabled{family="ipv4"} 0
ts_node_agent_ip_forwarding_enabled{family="ipv6"} 0
`,
		},
		{
			name: "none needing login, state unknown to this list",
			sn: func() *snapshot.Snapshot {
				sn := running(snapshot.RoleNone)
				sn.Tailnet.BackendState = "Frobnicating"
				sn.Tailnet.TailscaleIPs = nil
				sn.Tailnet.Peers = nil
				return sn
			},
			want: helpBuildInfo + roles(snapshot.RoleNone) +
				helpReady + "ts_node_agent_ready 0\n" +
				helpLive + "ts_node_agent_live 1\n" +
				helpCheckUp +
				`ts_node_agent_check_up{check="backend"} 0
ts_node_agent_check_up{check="loops"} 1
ts_node_agent_check_up{check="tailnet-ip"} 0
ts_node_agent_check_up{check="tailscaled"} 1
` +
				helpTailscaledUp + "ts_node_agent_tailscaled_up 1\n" +
				helpRestarts + "ts_node_agent_tailscaled_restarts_total 2\n" +
				strings.Replace(backendStates(""), `ts_node_agent_backend_state{state="InUseOtherUser"} 0`,
					`ts_node_agent_backend_state{state="Frobnicating"} 1`+"\n"+`ts_node_agent_backend_state{state="InUseOtherUser"} 0`, 1) +
				helpPeers + `ts_node_agent_peers{online="false"} 0
ts_node_agent_peers{online="true"} 0
`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewPedanticRegistry()
			if _, err := Register(reg, storeOf(tt.sn()), info, probeOpts(), WithClock(testingclock.NewFakeClock(now))); err != nil {
				t.Fatal(err)
			}
			if err := testutil.GatherAndCompare(reg, strings.NewReader(tt.want), allNames...); err != nil {
				t.Error(err)
			}
			problems, err := testutil.GatherAndLint(reg)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range problems {
				t.Errorf("lint: %s: %s", p.Metric, p.Text)
			}
		})
	}
}

// TestCollectorLint lints every family the collector can emit at once.
func TestCollectorLint(t *testing.T) {
	for _, role := range snapshot.Roles {
		sn := running(role)
		sn.FirstReadyAt = t0.Add(time.Second)
		sn.Host.Known = true
		sn.Tailnet.ExitNodeID = "nEXIT1"
		c := New(storeOf(sn), info, probeOpts(), WithClock(testingclock.NewFakeClock(now)))
		problems, err := testutil.CollectAndLint(c)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range problems {
			t.Errorf("%s: lint: %s: %s", role, p.Metric, p.Text)
		}
		// Every described family is emitted for some role.
		if n := testutil.CollectAndCount(c); n < 20 {
			t.Errorf("%s: %d series, want at least 20", role, n)
		}
	}
}

func TestCollectorFollowsStore(t *testing.T) {
	clk := testingclock.NewFakeClock(t0)
	st := snapshot.New(t0, snapshot.RoleNone)
	c := New(st, info, probeOpts(), WithClock(clk))
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)

	value := func(name string) float64 {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == name {
				m := mf.GetMetric()[0]
				return m.GetGauge().GetValue() + m.GetCounter().GetValue()
			}
		}
		return -1
	}
	if got := value("ts_node_agent_startup_duration_seconds"); got != -1 {
		t.Errorf("startup duration before first ready = %v, want absent", got)
	}
	if got := value("ts_node_agent_live"); got != 1 {
		t.Errorf("live at start = %v", got)
	}
	clk.Step(probe.DefaultLivenessGrace)
	if got := value("ts_node_agent_live"); got != 0 {
		t.Errorf("live after grace without tailscaled = %v", got)
	}
	sn := running(snapshot.RoleNone)
	st.SetSupervisor(sn.Supervisor)
	st.SetTailnet(sn.Tailnet)
	st.MarkReady(t0.Add(1500 * time.Millisecond))
	for name, want := range map[string]float64{
		"ts_node_agent_startup_duration_seconds":  1.5,
		"ts_node_agent_ready":                     1,
		"ts_node_agent_live":                      1,
		"ts_node_agent_tailscaled_restarts_total": 2,
	} {
		if got := value(name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
}

func TestCheckDurations(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	d, err := NewCheckDurations(reg)
	if err != nil {
		t.Fatal(err)
	}
	d.Observe("egress-ip", 150*time.Millisecond)
	d.Observe("egress-ip", 3*time.Second)
	d.Observe("tcp:db", 2*time.Millisecond)
	d.Delete("tcp:db")
	const want = `# HELP ts_node_agent_check_duration_seconds Time the named check took to run.
# TYPE ts_node_agent_check_duration_seconds histogram
ts_node_agent_check_duration_seconds_bucket{check="egress-ip",le="0.001"} 0
ts_node_agent_check_duration_seconds_bucket{check="egress-ip",le="0.005"} 0
ts_node_agent_check_duration_seconds_bucket{check="egress-ip",le="0.01"} 0
ts_node_agent_check_duration_seconds_bucket{check="egress-ip",le="0.025"} 0
ts_node_agent_check_duration_seconds_bucket{check="egress-ip",le="0.05"} 0
ts_node_agent_check_duration_seconds_bucket{check="egress-ip",le="0.1"} 0
ts_node_agent_check_duration_seconds_bucket{check="egress-ip",le="0.25"} 1
ts_node_agent_check_duration_seconds_bucket{check="egress-ip",le="0.5"} 1
ts_node_agent_check_duration_seconds_bucket{check="egress-ip",le="1"} 1
ts_node_agent_check_duration_seconds_bucket{check="egress-ip",le="2.5"} 1
ts_node_agent_check_duration_seconds_bucket{check="egress-ip",le="5"} 2
ts_node_agent_check_duration_seconds_bucket{check="egress-ip",le="10"} 2
ts_node_agent_check_duration_seconds_bucket{check="egress-ip",le="30"} 2
ts_node_agent_check_duration_seconds_bucket{check="egress-ip",le="+Inf"} 2
ts_node_agent_check_duration_seconds_sum{check="egress-ip"} 3.15
ts_node_agent_check_duration_seconds_count{check="egress-ip"} 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "ts_node_agent_check_duration_seconds"); err != nil {
		t.Error(err)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}

	// Registering twice is an error, not a panic.
	if _, err := NewCheckDurations(reg); err == nil {
		t.Error("second registration: no error")
	}
	if _, err := NewCheckDurations(nil); err == nil {
		t.Error("nil registerer: no error")
	}
	var none *CheckDurations
	none.Observe("x", time.Second) // must not panic
	none.Delete("x")
}

func TestRegisterTwice(t *testing.T) {
	reg := prometheus.NewRegistry()
	st := snapshot.New(t0, snapshot.RoleNone)
	if _, err := Register(reg, st, info, probeOpts()); err != nil {
		t.Fatal(err)
	}
	if _, err := Register(reg, st, info, probeOpts()); err == nil {
		t.Error("second Register: no error")
	}
	if _, err := Register(nil, st, info, probeOpts()); err == nil {
		t.Error("nil registerer: no error")
	}
}

func TestDefaultBuildInfo(t *testing.T) {
	bi := DefaultBuildInfo("v9.9.9")
	if bi.Version != "v9.9.9" || bi.GoVersion != runtime.Version() {
		t.Errorf("DefaultBuildInfo = %+v", bi)
	}
}

func BenchmarkCollect(b *testing.B) {
	sn := running(snapshot.RoleWorker)
	for i := range 1000 {
		sn.Tailnet.Peers = append(sn.Tailnet.Peers, snapshot.Peer{ID: "p" + strconv.Itoa(i), Online: i%3 == 0})
	}
	sn.Tailnet.ExitNodeID = "nEXIT1"
	reg := prometheus.NewRegistry()
	if _, err := Register(reg, storeOf(sn), info, probeOpts()); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := reg.Gather(); err != nil {
			b.Fatal(err)
		}
	}
}

func TestCollectorExitSwitchesAndPings(t *testing.T) {
	sn := running(snapshot.RoleWorker)
	sn.ExitNode.Switches = map[string]uint64{"initial": 1, "offline": 2}
	sn.Pings = map[string]snapshot.Ping{
		"100.64.0.2": {PeerName: "exit1", PeerIP: netip.MustParseAddr("100.64.0.2"), OK: true, Latency: 1500 * time.Microsecond, Path: "direct"},
		"100.64.0.3": {PeerName: "exit2", PeerIP: netip.MustParseAddr("100.64.0.3"), OK: false, Err: "timeout"},
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(New(storeOf(sn), info, probeOpts(), WithClock(testingclock.NewFakeClock(now))))
	want := `# HELP ts_node_agent_exit_node_switches_total Worker: exit node switches since agent start, by reason.
# TYPE ts_node_agent_exit_node_switches_total counter
ts_node_agent_exit_node_switches_total{reason="initial"} 1
ts_node_agent_exit_node_switches_total{reason="offline"} 2
# HELP ts_node_agent_tailnet_ping_seconds Latency of the latest successful tailnet ping to a peer, by path (direct, derp, relay).
# TYPE ts_node_agent_tailnet_ping_seconds gauge
ts_node_agent_tailnet_ping_seconds{path="direct",peer="exit1"} 0.0015
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"ts_node_agent_exit_node_switches_total", "ts_node_agent_tailnet_ping_seconds"); err != nil {
		t.Fatal(err)
	}
}

// The node key's expiry is a timestamp gauge, absent when expiry is
// disabled.
func TestCollectorNodeKeyExpiry(t *testing.T) {
	sn := running(snapshot.RoleNone)
	gather := func(sn *snapshot.Snapshot, want string) {
		t.Helper()
		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(New(storeOf(sn), info, probeOpts(), WithClock(testingclock.NewFakeClock(now))))
		if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "ts_node_agent_node_key_expiry_timestamp_seconds"); err != nil {
			t.Fatal(err)
		}
	}
	gather(sn, "")
	sn.Tailnet.KeyExpiry = time.Date(2026, 5, 30, 12, 0, 0, 500e6, time.UTC)
	gather(sn, `# HELP ts_node_agent_node_key_expiry_timestamp_seconds When this node's key expires, in seconds since the Unix epoch; absent when key expiry is disabled.
# TYPE ts_node_agent_node_key_expiry_timestamp_seconds gauge
ts_node_agent_node_key_expiry_timestamp_seconds 1.7801424005e+09
`)
}
