package probe_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/ts-node-agent/ts-node-agent/pkg/probe"
	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

// benchSnapshot is a healthy node of role with peers peers, the last of
// which is the exit node a worker uses (the worst case for its lookup).
func benchSnapshot(role snapshot.Role, peers int) (*snapshot.Snapshot, time.Time) {
	start := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	now := start.Add(10 * time.Minute)
	ps := make([]snapshot.Peer, peers)
	for i := range ps {
		ps[i] = snapshot.Peer{
			ID:           fmt.Sprintf("n%05dCNTRL", i),
			HostName:     fmt.Sprintf("node-%05d", i),
			TailscaleIPs: []netip.Addr{netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)})},
			Online:       i%10 != 0,
		}
	}
	exit := &ps[len(ps)-1]
	exit.Online, exit.ExitNodeOption = true, true
	sn := &snapshot.Snapshot{
		StartedAt:  start,
		Role:       role,
		Supervisor: snapshot.Supervisor{Running: true, PID: 42, StartedAt: start},
		Tailnet: snapshot.Tailnet{
			Connected:    true,
			BackendState: "Running",
			TailscaleIPs: []netip.Addr{netip.MustParseAddr("100.127.0.1")},
			HostName:     "self",
			Peers:        ps,
			// The LocalAPI answered a moment ago.
			LocalAPIAnsweredAt: now,
		},
		Host: snapshot.Host{Known: true, IPv4Forwarding: role == snapshot.RoleExit, IPv6Forwarding: role == snapshot.RoleExit},
		Checks: map[string]snapshot.Check{
			"tun":               {OK: true, CheckedAt: now},
			"forwarding":        {OK: true, CheckedAt: now},
			"exit-node-ping":    {OK: true, CheckedAt: now},
			"exit-route-kernel": {OK: true, CheckedAt: now},
		},
		Heartbeats:   map[string]time.Time{"tailnet": now, "probe": now, "netcheck": now},
		FirstReadyAt: start.Add(3 * time.Second),
	}
	switch role {
	case snapshot.RoleExit:
		sn.Tailnet.ExitRoutesAdvertised, sn.Tailnet.ExitRoutesApproved = true, true
	case snapshot.RoleWorker:
		exit.ExitNode = true
		sn.Tailnet.ExitNodeID = exit.ID
		sn.ExitNode = snapshot.ExitNode{CurrentID: exit.ID, CurrentName: exit.HostName, CurrentIP: exit.TailscaleIPs[0], Healthy: true}
	}
	// As the Store publishes it: with the peer index.
	sn.Tailnet = sn.Tailnet.Indexed()
	return sn, now
}

// BenchmarkEvaluateByRole is the cost of one probe request (or one Tracker
// round): readiness, liveness, startup and health of a healthy node, for
// each role and for 10, 1000 and 10 000 peers (BenchmarkEvaluate is the worker at
// 1000 peers alone). DESIGN section 8 wants it not to grow with the peers;
// a worker looks its exit node up among them.
func BenchmarkEvaluateByRole(b *testing.B) {
	opts := probe.DefaultOptions()
	opts.RoleChecks = map[snapshot.Role][]string{
		snapshot.RoleExit:   {"tun", "forwarding"},
		snapshot.RoleWorker: {"exit-node-ping", "tun", "exit-route-kernel"},
		snapshot.RoleNone:   {"tun"},
	}
	for _, role := range snapshot.Roles {
		for _, peers := range []int{10, 1000, 10000} {
			b.Run(fmt.Sprintf("role=%s/peers=%d", role, peers), func(b *testing.B) {
				sn, now := benchSnapshot(role, peers)
				if rep := probe.Evaluate(sn, opts, now); !rep.Ready.OK || !rep.Live.OK {
					b.Fatalf("benchmark snapshot is not ready and live: %+v %+v", rep.Ready.Failed(), rep.Live.Failed())
				}
				b.ReportAllocs()
				for b.Loop() {
					probe.Evaluate(sn, opts, now)
				}
			})
		}
	}
}
