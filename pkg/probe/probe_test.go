package probe

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const (
	exitPeerID = "nEXIT1CNTRL"
)

var (
	selfV4 = netip.MustParseAddr("100.64.0.1")
	selfV6 = netip.MustParseAddr("fd7a:115c:a1e0::1")
	exitV4 = netip.MustParseAddr("100.64.0.9")
	exitV6 = netip.MustParseAddr("fd7a:115c:a1e0::9")
)

// healthy returns a snapshot in which a node of role passes every derived
// readiness and liveness check, taken 5 minutes after start.
func healthy(role snapshot.Role) *snapshot.Snapshot {
	sn := &snapshot.Snapshot{
		StartedAt:  t0,
		Role:       role,
		Supervisor: snapshot.Supervisor{Running: true, PID: 42, StartedAt: t0},
		Tailnet: snapshot.Tailnet{
			Connected:    true,
			BackendState: "Running",
			TailscaleIPs: []netip.Addr{selfV4, selfV6},
			HostName:     "node-1",
			// The LocalAPI answered a moment ago.
			LocalAPIAnsweredAt: now.Add(-time.Second),
			Peers: []snapshot.Peer{
				{ID: "nOTHER", HostName: "db", TailscaleIPs: []netip.Addr{netip.MustParseAddr("100.64.0.5")}, Online: true},
				{ID: exitPeerID, HostName: "exit-1", TailscaleIPs: []netip.Addr{exitV6, exitV4}, Online: true, ExitNodeOption: true},
			},
		},
		Checks:     map[string]snapshot.Check{},
		Heartbeats: map[string]time.Time{},
	}
	switch role {
	case snapshot.RoleExit:
		sn.Tailnet.ExitRoutesAdvertised = true
		sn.Tailnet.ExitRoutesApproved = true
	case snapshot.RoleWorker:
		sn.Tailnet.ExitNodeID = exitPeerID
		sn.Tailnet.Peers[1].ExitNode = true
	}
	return sn
}

var now = t0.Add(5 * time.Minute)

func roleChecks() map[snapshot.Role][]string {
	return map[snapshot.Role][]string{
		snapshot.RoleExit:   {"forwarding", "tun"},
		snapshot.RoleWorker: {"exit-node-ping", "exit-route-kernel"},
	}
}

func TestEvaluateReadiness(t *testing.T) {
	tests := []struct {
		name   string
		role   snapshot.Role
		opts   func(*Options)
		mutate func(*snapshot.Snapshot)
		// wantFailed is every failing readiness check, in order; empty
		// means ready.
		wantFailed []CheckResult
		wantNames  []string // when set, every readiness check name, in order
	}{
		{
			name:      "none healthy",
			role:      snapshot.RoleNone,
			wantNames: []string{"tailscaled", "backend", "tailnet-ip"},
		},
		{
			name:      "exit healthy",
			role:      snapshot.RoleExit,
			wantNames: []string{"tailscaled", "backend", "tailnet-ip", "exit-routes"},
		},
		{
			name:      "worker healthy",
			role:      snapshot.RoleWorker,
			wantNames: []string{"tailscaled", "backend", "tailnet-ip", "exit-node"},
		},
		{
			name: "tailscaled down with last exit",
			role: snapshot.RoleNone,
			mutate: func(sn *snapshot.Snapshot) {
				sn.Supervisor = snapshot.Supervisor{DownSince: now.Add(-12 * time.Second), LastExit: "signal: killed", Restarts: 1}
			},
			wantFailed: []CheckResult{{Name: "tailscaled", Reason: "tailscaled is not running (down for 12s, last exit: signal: killed)"}},
		},
		{
			name: "tailscaled never started uses agent start",
			role: snapshot.RoleNone,
			mutate: func(sn *snapshot.Snapshot) {
				sn.Supervisor = snapshot.Supervisor{}
			},
			wantFailed: []CheckResult{{Name: "tailscaled", Reason: "tailscaled is not running (down for 5m0s)"}},
		},
		{
			name: "tailscaled down, nothing known",
			role: snapshot.RoleNone,
			mutate: func(sn *snapshot.Snapshot) {
				sn.StartedAt = time.Time{}
				sn.Supervisor = snapshot.Supervisor{}
			},
			wantFailed: []CheckResult{{Name: "tailscaled", Reason: "tailscaled is not running"}},
		},
		{
			name:       "no LocalAPI connection",
			role:       snapshot.RoleNone,
			mutate:     func(sn *snapshot.Snapshot) { sn.Tailnet.Connected = false },
			wantFailed: []CheckResult{{Name: "backend", Reason: "no LocalAPI connection to tailscaled"}},
		},
		{
			name: "needs interactive login",
			role: snapshot.RoleNone,
			mutate: func(sn *snapshot.Snapshot) {
				sn.Tailnet.BackendState = "NeedsLogin"
				sn.Tailnet.InteractiveLogin = true
				sn.Tailnet.TailscaleIPs = nil
			},
			wantFailed: []CheckResult{
				{Name: "backend", Reason: "needs interactive login (see the agent's log)"},
				{Name: "tailnet-ip", Reason: "no tailnet IPv4 address yet"},
			},
		},
		{
			name: "needs login with login error",
			role: snapshot.RoleNone,
			mutate: func(sn *snapshot.Snapshot) {
				sn.Tailnet.BackendState = "NeedsLogin"
				sn.Tailnet.LoginError = "invalid key: unable to validate API key"
			},
			wantFailed: []CheckResult{{Name: "backend", Reason: "needs login (login error: invalid key: unable to validate API key)"}},
		},
		{
			name: "needs interactive login with login error",
			role: snapshot.RoleNone,
			mutate: func(sn *snapshot.Snapshot) {
				sn.Tailnet.BackendState = "NeedsLogin"
				sn.Tailnet.InteractiveLogin = true
				sn.Tailnet.LoginError = "boom"
			},
			wantFailed: []CheckResult{{Name: "backend", Reason: "needs interactive login (see the agent's log) (login error: boom)"}},
		},
		{
			name: "not connected with login error",
			role: snapshot.RoleNone,
			mutate: func(sn *snapshot.Snapshot) {
				sn.Tailnet.Connected = false
				sn.Tailnet.LoginError = "boom"
			},
			wantFailed: []CheckResult{{Name: "backend", Reason: "no LocalAPI connection to tailscaled (login error: boom)"}},
		},
		{
			name:       "needs machine auth",
			role:       snapshot.RoleNone,
			mutate:     func(sn *snapshot.Snapshot) { sn.Tailnet.BackendState = "NeedsMachineAuth" },
			wantFailed: []CheckResult{{Name: "backend", Reason: "needs machine authorization by a tailnet admin"}},
		},
		{
			name:       "starting",
			role:       snapshot.RoleNone,
			mutate:     func(sn *snapshot.Snapshot) { sn.Tailnet.BackendState = "Starting" },
			wantFailed: []CheckResult{{Name: "backend", Reason: "backend state is Starting, not Running"}},
		},
		{
			name:       "stopped",
			role:       snapshot.RoleNone,
			mutate:     func(sn *snapshot.Snapshot) { sn.Tailnet.BackendState = "Stopped" },
			wantFailed: []CheckResult{{Name: "backend", Reason: "backend state is Stopped, not Running"}},
		},
		{
			name:       "unknown backend state",
			role:       snapshot.RoleNone,
			mutate:     func(sn *snapshot.Snapshot) { sn.Tailnet.BackendState = "" },
			wantFailed: []CheckResult{{Name: "backend", Reason: "backend state unknown"}},
		},
		{
			name:       "only a tailnet IPv6",
			role:       snapshot.RoleNone,
			mutate:     func(sn *snapshot.Snapshot) { sn.Tailnet.TailscaleIPs = []netip.Addr{selfV6} },
			wantFailed: []CheckResult{{Name: "tailnet-ip", Reason: "no tailnet IPv4 address yet"}},
		},
		{
			name: "exit routes not advertised",
			role: snapshot.RoleExit,
			mutate: func(sn *snapshot.Snapshot) {
				sn.Tailnet.ExitRoutesAdvertised, sn.Tailnet.ExitRoutesApproved = false, false
			},
			wantFailed: []CheckResult{{Name: "exit-routes", Reason: "exit routes 0.0.0.0/0 and ::/0 are not advertised"}},
		},
		{
			name:       "exit routes advertised but not approved",
			role:       snapshot.RoleExit,
			mutate:     func(sn *snapshot.Snapshot) { sn.Tailnet.ExitRoutesApproved = false },
			wantFailed: []CheckResult{{Name: "exit-routes", Reason: "exit routes advertised but not approved by the control server"}},
		},
		{
			name:   "exit routes not approved, approval not required",
			role:   snapshot.RoleExit,
			opts:   func(o *Options) { o.RequireExitApproval = false },
			mutate: func(sn *snapshot.Snapshot) { sn.Tailnet.ExitRoutesApproved = false },
		},
		{
			name: "exit routes not advertised, approval not required",
			role: snapshot.RoleExit,
			opts: func(o *Options) { o.RequireExitApproval = false },
			mutate: func(sn *snapshot.Snapshot) {
				sn.Tailnet.ExitRoutesAdvertised, sn.Tailnet.ExitRoutesApproved = false, false
			},
			wantFailed: []CheckResult{{Name: "exit-routes", Reason: "exit routes 0.0.0.0/0 and ::/0 are not advertised"}},
		},
		{
			name:   "approval is not an exit check for a worker",
			role:   snapshot.RoleWorker,
			mutate: func(sn *snapshot.Snapshot) { sn.Tailnet.ExitRoutesAdvertised = true },
		},
		{
			name:       "worker without exit node",
			role:       snapshot.RoleWorker,
			mutate:     func(sn *snapshot.Snapshot) { sn.Tailnet.ExitNodeID = "" },
			wantFailed: []CheckResult{{Name: "exit-node", Reason: "no exit node selected"}},
		},
		{
			name:       "worker exit node not a peer",
			role:       snapshot.RoleWorker,
			mutate:     func(sn *snapshot.Snapshot) { sn.Tailnet.ExitNodeID = "nGONE" },
			wantFailed: []CheckResult{{Name: "exit-node", Reason: "exit node nGONE is not in the peer list"}},
		},
		{
			name:       "worker exit node offline",
			role:       snapshot.RoleWorker,
			mutate:     func(sn *snapshot.Snapshot) { sn.Tailnet.Peers[1].Online = false },
			wantFailed: []CheckResult{{Name: "exit-node", Reason: "exit node exit-1 (100.64.0.9) is offline"}},
		},
		{
			name:       "worker exit node not offering exit",
			role:       snapshot.RoleWorker,
			mutate:     func(sn *snapshot.Snapshot) { sn.Tailnet.Peers[1].ExitNodeOption = false },
			wantFailed: []CheckResult{{Name: "exit-node", Reason: "exit node exit-1 (100.64.0.9) does not offer an approved exit node"}},
		},
		{
			name: "worker exit node without host name or IPs",
			role: snapshot.RoleWorker,
			mutate: func(sn *snapshot.Snapshot) {
				sn.Tailnet.Peers[1].HostName = ""
				sn.Tailnet.Peers[1].DNSName = "exit-1.tail1234.ts.net."
				sn.Tailnet.Peers[1].TailscaleIPs = nil
				sn.Tailnet.Peers[1].Online = false
			},
			wantFailed: []CheckResult{{Name: "exit-node", Reason: "exit node exit-1.tail1234.ts.net is offline"}},
		},
		{
			name:      "exit role checks all passing",
			role:      snapshot.RoleExit,
			opts:      func(o *Options) { o.RoleChecks = roleChecks() },
			mutate:    func(sn *snapshot.Snapshot) { setChecks(sn, "forwarding", "tun") },
			wantNames: []string{"tailscaled", "backend", "tailnet-ip", "exit-routes", "forwarding", "tun"},
		},
		{
			name: "exit role checks missing and failed",
			role: snapshot.RoleExit,
			opts: func(o *Options) { o.RoleChecks = roleChecks() },
			mutate: func(sn *snapshot.Snapshot) {
				sn.Checks["tun"] = snapshot.Check{Reason: "/dev/net/tun: no such file or directory", CheckedAt: now}
				sn.Checks["exit-node-ping"] = snapshot.Check{Reason: "a worker check: ignored here"}
			},
			wantFailed: []CheckResult{
				{Name: "forwarding", Reason: "not checked yet"},
				{Name: "tun", Reason: "/dev/net/tun: no such file or directory"},
			},
		},
		{
			name:   "worker role checks",
			role:   snapshot.RoleWorker,
			opts:   func(o *Options) { o.RoleChecks = roleChecks() },
			mutate: func(sn *snapshot.Snapshot) { sn.Checks["exit-node-ping"] = snapshot.Check{OK: true} },
			wantFailed: []CheckResult{
				{Name: "exit-route-kernel", Reason: "not checked yet"},
			},
		},
		{
			name: "ready requires, deduplicated, failed without reason",
			role: snapshot.RoleWorker,
			opts: func(o *Options) {
				o.RoleChecks = roleChecks()
				o.ReadyRequires = []string{"tcp:db", "exit-node-ping", "backend", "tcp:db", "tcp:s3"}
			},
			mutate: func(sn *snapshot.Snapshot) {
				setChecks(sn, "exit-node-ping", "exit-route-kernel", "tcp:s3")
				sn.Checks["tcp:db"] = snapshot.Check{}
			},
			wantFailed: []CheckResult{{Name: "tcp:db", Reason: "failed"}},
			wantNames:  []string{"tailscaled", "backend", "tailnet-ip", "exit-node", "exit-node-ping", "exit-route-kernel", "tcp:db", "tcp:s3"},
		},
		{
			name: "control plane outage with everything down",
			role: snapshot.RoleExit,
			mutate: func(sn *snapshot.Snapshot) {
				sn.Supervisor = snapshot.Supervisor{DownSince: now.Add(-3 * time.Second)}
				sn.Tailnet = snapshot.Tailnet{}
			},
			wantFailed: []CheckResult{
				{Name: "tailscaled", Reason: "tailscaled is not running (down for 3s)"},
				{Name: "backend", Reason: "no LocalAPI connection to tailscaled"},
				{Name: "tailnet-ip", Reason: "no tailnet IPv4 address yet"},
				{Name: "exit-routes", Reason: "exit routes 0.0.0.0/0 and ::/0 are not advertised"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sn := healthy(tt.role)
			if tt.mutate != nil {
				tt.mutate(sn)
			}
			opts := DefaultOptions()
			if tt.opts != nil {
				tt.opts(&opts)
			}
			rep := Evaluate(sn, opts, now)
			if diff := cmp.Diff(tt.wantFailed, rep.Ready.Failed()); diff != "" {
				t.Errorf("failed readiness checks (-want +got):\n%s", diff)
			}
			if got, want := rep.Ready.OK, len(tt.wantFailed) == 0; got != want {
				t.Errorf("Ready.OK = %v, want %v", got, want)
			}
			if tt.wantNames != nil {
				if diff := cmp.Diff(tt.wantNames, checkNames(rep.Ready.Checks)); diff != "" {
					t.Errorf("readiness check names (-want +got):\n%s", diff)
				}
			}
			for _, c := range rep.Ready.Checks {
				if c.OK && c.Reason != "" {
					t.Errorf("passing check %s has reason %q", c.Name, c.Reason)
				}
				if !c.OK && c.Reason == "" {
					t.Errorf("failing check %s has no reason", c.Name)
				}
			}
		})
	}
}

func setChecks(sn *snapshot.Snapshot, names ...string) {
	for _, n := range names {
		sn.Checks[n] = snapshot.Check{OK: true, CheckedAt: now}
	}
}

func TestEvaluateLiveness(t *testing.T) {
	tests := []struct {
		name       string
		opts       func(*Options)
		mutate     func(*snapshot.Snapshot)
		at         time.Duration // evaluation time after now
		wantFailed []CheckResult
	}{
		{name: "running"},
		{
			name:   "down within grace",
			mutate: func(sn *snapshot.Snapshot) { sn.Supervisor = snapshot.Supervisor{DownSince: now} },
			at:     119 * time.Second,
		},
		{
			name:   "down exactly the grace",
			mutate: func(sn *snapshot.Snapshot) { sn.Supervisor = snapshot.Supervisor{DownSince: now} },
			at:     120 * time.Second,
			wantFailed: []CheckResult{
				{Name: "tailscaled", Reason: "tailscaled has been down for 2m0s (liveness grace 2m0s)"},
			},
		},
		{
			name: "down past grace with last exit",
			mutate: func(sn *snapshot.Snapshot) {
				sn.Supervisor = snapshot.Supervisor{DownSince: now, LastExit: "exit status 1", Restarts: 7}
			},
			at: 121 * time.Second,
			wantFailed: []CheckResult{
				{Name: "tailscaled", Reason: "tailscaled has been down for 2m1s (liveness grace 2m0s), last exit: exit status 1"},
			},
		},
		{
			name:   "zero grace means the default",
			opts:   func(o *Options) { o.LivenessGrace = 0 },
			mutate: func(sn *snapshot.Snapshot) { sn.Supervisor = snapshot.Supervisor{DownSince: now} },
			at:     100 * time.Second,
		},
		{
			name:   "short grace",
			opts:   func(o *Options) { o.LivenessGrace = 10 * time.Second },
			mutate: func(sn *snapshot.Snapshot) { sn.Supervisor = snapshot.Supervisor{DownSince: now} },
			at:     11 * time.Second,
			wantFailed: []CheckResult{
				{Name: "tailscaled", Reason: "tailscaled has been down for 11s (liveness grace 10s)"},
			},
		},
		{
			name:   "never started: grace counts from agent start",
			mutate: func(sn *snapshot.Snapshot) { sn.Supervisor = snapshot.Supervisor{} },
			wantFailed: []CheckResult{
				{Name: "tailscaled", Reason: "tailscaled has been down for 5m0s (liveness grace 2m0s)"},
			},
		},
		{
			name: "control plane outage never fails liveness",
			mutate: func(sn *snapshot.Snapshot) {
				sn.Tailnet.Connected = false
				sn.Tailnet.BackendState = "NeedsLogin"
				sn.Tailnet.TailscaleIPs = nil
				sn.Tailnet.LoginError = "control unreachable"
				sn.Tailnet.LocalAPIAnsweredAt = now.Add(time.Hour - 5*time.Second) // the LocalAPI still answers
			},
			at: time.Hour,
		},
		{
			name:   "LocalAPI answered within the grace",
			mutate: func(sn *snapshot.Snapshot) { sn.Tailnet.LocalAPIAnsweredAt = now.Add(-119 * time.Second) },
		},
		{
			name:   "LocalAPI answered exactly the grace ago",
			mutate: func(sn *snapshot.Snapshot) { sn.Tailnet.LocalAPIAnsweredAt = now.Add(-120 * time.Second) },
		},
		{
			name:   "LocalAPI stuck past the grace",
			mutate: func(sn *snapshot.Snapshot) { sn.Tailnet.LocalAPIAnsweredAt = now.Add(-125 * time.Second) },
			wantFailed: []CheckResult{
				{Name: "tailscaled", Reason: "tailscaled runs but its LocalAPI has not answered for 2m5s (liveness grace 2m0s)"},
			},
		},
		{
			name: "LocalAPI stuck, with a short grace",
			opts: func(o *Options) { o.LivenessGrace = 30 * time.Second },
			mutate: func(sn *snapshot.Snapshot) {
				sn.Tailnet.Connected = false // the bus watch broke too
				sn.Tailnet.LocalAPIAnsweredAt = now.Add(-31 * time.Second)
			},
			wantFailed: []CheckResult{
				{Name: "tailscaled", Reason: "tailscaled runs but its LocalAPI has not answered for 31s (liveness grace 30s)"},
			},
		},
		{
			name: "just restarted: an answer of the previous tailscaled counts from the start",
			mutate: func(sn *snapshot.Snapshot) {
				sn.Supervisor = snapshot.Supervisor{Running: true, PID: 43, Restarts: 1, StartedAt: now.Add(-10 * time.Second)}
				sn.Tailnet.LocalAPIAnsweredAt = now.Add(-10 * time.Minute)
			},
		},
		{
			name: "restarted and no answer since, past the grace",
			mutate: func(sn *snapshot.Snapshot) {
				sn.Supervisor = snapshot.Supervisor{Running: true, PID: 43, Restarts: 1, StartedAt: now.Add(-3 * time.Minute)}
				sn.Tailnet.LocalAPIAnsweredAt = now.Add(-10 * time.Minute)
			},
			wantFailed: []CheckResult{
				{Name: "tailscaled", Reason: "tailscaled runs but its LocalAPI has not answered since it started 3m0s ago (liveness grace 2m0s)"},
			},
		},
		{
			name: "never answered, started within the grace",
			mutate: func(sn *snapshot.Snapshot) {
				sn.Supervisor.StartedAt = now.Add(-time.Minute)
				sn.Tailnet = snapshot.Tailnet{}
			},
		},
		{
			name:   "never answered, started past the grace",
			mutate: func(sn *snapshot.Snapshot) { sn.Tailnet = snapshot.Tailnet{} },
			wantFailed: []CheckResult{
				{Name: "tailscaled", Reason: "tailscaled runs but its LocalAPI has not answered since it started 5m0s ago (liveness grace 2m0s)"},
			},
		},
		{
			name: "running, start and answer unknown",
			mutate: func(sn *snapshot.Snapshot) {
				sn.Supervisor = snapshot.Supervisor{Running: true}
				sn.Tailnet = snapshot.Tailnet{}
			},
		},
		{
			name: "not running: an old answer does not matter within the down grace",
			mutate: func(sn *snapshot.Snapshot) {
				sn.Supervisor = snapshot.Supervisor{DownSince: now.Add(-30 * time.Second), LastExit: "signal: killed"}
				sn.Tailnet.LocalAPIAnsweredAt = now.Add(-10 * time.Minute)
			},
		},
		{
			name: "fresh heartbeats and a loop that never beat",
			mutate: func(sn *snapshot.Snapshot) {
				sn.Heartbeats = map[string]time.Time{"probe": now.Add(-time.Second), "tailnet": now.Add(-90 * time.Second), "role": {}}
			},
		},
		{
			name: "stuck loops",
			mutate: func(sn *snapshot.Snapshot) {
				sn.Heartbeats = map[string]time.Time{
					"tailnet":  now.Add(-100 * time.Second),
					"probe":    now.Add(-time.Second),
					"hostnet":  now.Add(-10 * time.Minute),
					"netcheck": now.Add(-91 * time.Second),
				}
			},
			wantFailed: []CheckResult{{
				Name:   "loops",
				Reason: "loop hostnet has not run for 10m0s; loop netcheck has not run for 1m31s; loop tailnet has not run for 1m40s (heartbeat timeout 1m30s)",
			}},
		},
		{
			name: "custom heartbeat timeout",
			opts: func(o *Options) { o.HeartbeatTimeout = 5 * time.Second },
			mutate: func(sn *snapshot.Snapshot) {
				sn.Heartbeats = map[string]time.Time{"probe": now.Add(-6 * time.Second)}
			},
			wantFailed: []CheckResult{{Name: "loops", Reason: "loop probe has not run for 6s (heartbeat timeout 5s)"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sn := healthy(snapshot.RoleWorker)
			if tt.mutate != nil {
				tt.mutate(sn)
			}
			opts := DefaultOptions()
			if tt.opts != nil {
				tt.opts(&opts)
			}
			rep := Evaluate(sn, opts, now.Add(tt.at))
			if diff := cmp.Diff(tt.wantFailed, rep.Live.Failed()); diff != "" {
				t.Errorf("failed liveness checks (-want +got):\n%s", diff)
			}
			if got, want := rep.Live.OK, len(tt.wantFailed) == 0; got != want {
				t.Errorf("Live.OK = %v, want %v", got, want)
			}
			if diff := cmp.Diff([]string{"tailscaled", "loops"}, checkNames(rep.Live.Checks)); diff != "" {
				t.Errorf("liveness check names (-want +got):\n%s", diff)
			}
		})
	}
}

func TestEvaluateStartup(t *testing.T) {
	notReady := func(sn *snapshot.Snapshot) { sn.Tailnet.BackendState = "Starting" }
	tests := []struct {
		name       string
		mutate     func(*snapshot.Snapshot)
		wantOK     bool
		wantChecks []CheckResult
	}{
		{
			name:   "not ready yet",
			mutate: notReady,
			wantChecks: []CheckResult{
				{Name: "ready-once", Reason: "not ready yet since start"},
				{Name: "tailscaled", OK: true},
				{Name: "backend", Reason: "backend state is Starting, not Running"},
				{Name: "tailnet-ip", OK: true},
				{Name: "exit-node", OK: true},
			},
		},
		{
			name:       "ready now, not recorded yet",
			wantOK:     true,
			wantChecks: []CheckResult{{Name: "ready-once", OK: true}},
		},
		{
			name: "was ready once, not ready now",
			mutate: func(sn *snapshot.Snapshot) {
				notReady(sn)
				sn.Supervisor = snapshot.Supervisor{DownSince: now.Add(-time.Hour)}
				sn.FirstReadyAt = t0.Add(3 * time.Second)
			},
			wantOK:     true,
			wantChecks: []CheckResult{{Name: "ready-once", OK: true}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sn := healthy(snapshot.RoleWorker)
			if tt.mutate != nil {
				tt.mutate(sn)
			}
			rep := Evaluate(sn, DefaultOptions(), now)
			if rep.Startup.OK != tt.wantOK {
				t.Errorf("Startup.OK = %v, want %v", rep.Startup.OK, tt.wantOK)
			}
			if diff := cmp.Diff(tt.wantChecks, rep.Startup.Checks); diff != "" {
				t.Errorf("startup checks (-want +got):\n%s", diff)
			}
		})
	}
}

func TestEvaluateHealthz(t *testing.T) {
	tests := []struct {
		name       string
		mutate     func(*snapshot.Snapshot)
		wantReason string // "" means OK
	}{
		{name: "tailnet IPs"},
		{
			name:   "only IPv6 is enough",
			mutate: func(sn *snapshot.Snapshot) { sn.Tailnet.TailscaleIPs = []netip.Addr{selfV6} },
		},
		{
			name: "not logged in: healthz ignores backend state with an IP",
			mutate: func(sn *snapshot.Snapshot) {
				sn.Tailnet.BackendState = "Starting"
			},
		},
		{
			name:       "no IP",
			mutate:     func(sn *snapshot.Snapshot) { sn.Tailnet.TailscaleIPs = nil },
			wantReason: "no tailnet IP address yet",
		},
		{
			name:       "stale IP while tailscaled is down",
			mutate:     func(sn *snapshot.Snapshot) { sn.Supervisor = snapshot.Supervisor{DownSince: now} },
			wantReason: "tailscaled is not running",
		},
		{
			name:       "stale IP without LocalAPI connection",
			mutate:     func(sn *snapshot.Snapshot) { sn.Tailnet.Connected = false },
			wantReason: "no LocalAPI connection to tailscaled",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sn := healthy(snapshot.RoleNone)
			if tt.mutate != nil {
				tt.mutate(sn)
			}
			rep := Evaluate(sn, DefaultOptions(), now)
			want := []CheckResult{{Name: "tailnet-ip", OK: tt.wantReason == "", Reason: tt.wantReason}}
			if diff := cmp.Diff(want, rep.Health.Checks); diff != "" {
				t.Errorf("healthz checks (-want +got):\n%s", diff)
			}
			if rep.Health.OK != (tt.wantReason == "") {
				t.Errorf("Health.OK = %v", rep.Health.OK)
			}
		})
	}
}

func TestEvaluateDoesNotModifySnapshot(t *testing.T) {
	sn := healthy(snapshot.RoleWorker)
	sn.Heartbeats["x"] = now
	before := *sn
	before.Checks = map[string]snapshot.Check{}
	before.Heartbeats = map[string]time.Time{"x": now}
	peers := slices.Clone(sn.Tailnet.Peers)
	opts := DefaultOptions()
	opts.RoleChecks = roleChecks()
	opts.ReadyRequires = []string{"tcp:db"}
	Evaluate(sn, opts, now)
	if diff := cmp.Diff(before, *sn, cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmpopts.IgnoreUnexported(snapshot.Tailnet{})); diff != "" {
		t.Errorf("snapshot changed (-before +after):\n%s", diff)
	}
	if !slices.EqualFunc(peers, sn.Tailnet.Peers, func(a, b snapshot.Peer) bool { return a.ID == b.ID }) {
		t.Error("peers changed")
	}
}

func TestEvaluateFreshStore(t *testing.T) {
	// A store just created: nothing is known, nothing is fatal yet.
	st := snapshot.New(t0, snapshot.RoleExit)
	rep := Evaluate(st.Load(), DefaultOptions(), t0.Add(time.Second))
	if rep.Ready.OK || rep.Startup.OK || rep.Health.OK {
		t.Errorf("fresh store: ready=%v startup=%v health=%v, want all false", rep.Ready.OK, rep.Startup.OK, rep.Health.OK)
	}
	if !rep.Live.OK {
		t.Errorf("fresh store not live: %v", rep.Live.Failed())
	}
	if c, _ := rep.Ready.Check("tailscaled"); c.Reason != "tailscaled is not running (down for 1s)" {
		t.Errorf("tailscaled reason = %q", c.Reason)
	}
}

func TestOptionsValidate(t *testing.T) {
	if err := DefaultOptions().Validate(); err != nil {
		t.Errorf("defaults: %v", err)
	}
	bad := Options{
		LivenessGrace:    -time.Second,
		HeartbeatTimeout: -time.Second,
		ReadyRequires:    []string{"tcp:db", " "},
		RoleChecks:       map[snapshot.Role][]string{snapshot.RoleExit: {""}},
	}
	err := bad.Validate()
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"liveness grace -1s", "heartbeat timeout -1s", "ready-requires: empty check name", `role checks of "exit": empty check name`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
}

func BenchmarkEvaluate(b *testing.B) {
	sn := healthy(snapshot.RoleWorker)
	var others []snapshot.Peer // the exit node last: worst case lookup
	for i := range 1000 {
		others = append(others, snapshot.Peer{ID: fmt.Sprintf("nPEER%d", i), HostName: fmt.Sprintf("peer-%d", i)})
	}
	sn.Tailnet.Peers = append(others, sn.Tailnet.Peers...)
	opts := DefaultOptions()
	opts.RoleChecks = roleChecks()
	setChecks(sn, "exit-node-ping", "exit-route-kernel")
	b.ReportAllocs()
	for b.Loop() {
		if rep := Evaluate(sn, opts, now); !rep.Ready.OK {
			b.Fatal(rep.Ready.Failed())
		}
	}
}

func TestInformationalChecksNeverGate(t *testing.T) {
	store := snapshot.New(time.Unix(0, 0), snapshot.RoleNone)
	store.SetSupervisor(snapshot.Supervisor{Running: true})
	store.SetTailnet(snapshot.Tailnet{Connected: true, BackendState: "Running",
		TailscaleIPs: []netip.Addr{netip.MustParseAddr("100.64.0.1")}})
	store.SetCheck("role-watch", snapshot.Check{Reason: "API server unreachable"})
	opts := DefaultOptions()
	opts.Informational = []string{"role-watch", "absent"}
	rep := Evaluate(store.Load(), opts, time.Unix(10, 0))
	if !rep.Ready.OK {
		t.Fatalf("an informational check failed readiness: %+v", rep.Ready)
	}
	c, ok := rep.Ready.Check("role-watch")
	if !ok || c.OK || !c.Informational {
		t.Fatalf("role-watch = %+v, %v; want listed, failed, informational", c, ok)
	}
	if _, ok := rep.Ready.Check("absent"); ok {
		t.Fatal("an unpublished informational check is listed")
	}
	var b bytes.Buffer
	writeText(&b, "readyz", rep.Ready, true)
	if !strings.Contains(b.String(), "[-]role-watch failed (informational, not required): API server unreachable") ||
		!strings.Contains(b.String(), "readyz check passed") {
		t.Fatalf("verbose output:\n%s", b.String())
	}
	b.Reset()
	writeText(&b, "readyz", rep.Ready, false)
	if b.String() != "ok\n" {
		t.Fatalf("plain output = %q", b.String())
	}
}

// The node key's expiry is shown in /readyz?verbose, fails 14 days before
// the key expires, never gates readiness, and is absent when expiry is
// disabled.
func TestNodeKeyExpiryCheck(t *testing.T) {
	opts := DefaultOptions()
	opts.RoleChecks = roleChecks()
	for _, tc := range []struct {
		name   string
		expiry time.Time
		ok     bool
		reason string
	}{
		{"far", now.Add(89*24*time.Hour + 3*time.Hour), true, "the node key expires in 89d3h, at 2026-05-29T15:05:00Z"},
		{"within 14 days", now.Add(13 * 24 * time.Hour), false, "the node key expires in 13d, at 2026-03-14T12:05:00Z: disable key expiry"},
		{"within a day", now.Add(90 * time.Minute), false, "the node key expires in 1h30m0s"},
		{"expired", now.Add(-time.Minute), false, "the node key expired at 2026-03-01T12:04:00Z"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sn := healthy(snapshot.RoleNone)
			sn.Tailnet.KeyExpiry = tc.expiry
			rep := Evaluate(sn, opts, now)
			if !rep.Ready.OK {
				t.Fatalf("the key expiry gated readiness: %+v", rep.Ready.Failed())
			}
			c, found := rep.Ready.Check(CheckNodeKeyExpiry)
			if !found || c.OK != tc.ok || !c.Informational || !strings.HasPrefix(c.Reason, tc.reason) {
				t.Fatalf("check = %+v (found %v), want ok %v, informational, reason %q", c, found, tc.ok, tc.reason)
			}
		})
	}
	rep := Evaluate(healthy(snapshot.RoleNone), opts, now)
	if c, found := rep.Ready.Check(CheckNodeKeyExpiry); found {
		t.Fatalf("key expiry disabled, yet the check is listed: %+v", c)
	}
}
