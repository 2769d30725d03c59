package metrics_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/ts-node-agent/ts-node-agent/pkg/metrics"
	"github.com/ts-node-agent/ts-node-agent/pkg/probe"
	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

// benchStore is a ready worker with peers peers (every tenth offline),
// pinging its exit node, the last peer.
func benchStore(peers int, now time.Time) *snapshot.Store {
	start := now.Add(-10 * time.Minute)
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
	exit.Online, exit.ExitNodeOption, exit.ExitNode = true, true, true

	st := snapshot.New(start, snapshot.RoleWorker)
	st.SetSupervisor(snapshot.Supervisor{Running: true, PID: 42, StartedAt: start})
	st.SetTailnet(snapshot.Tailnet{
		Connected:    true,
		BackendState: "Running",
		TailscaleIPs: []netip.Addr{netip.MustParseAddr("100.127.0.1")},
		HostName:     "self",
		Peers:        ps,
		ExitNodeID:   exit.ID,
		UpdatedAt:    now,
		// The LocalAPI answered a moment ago.
		LocalAPIAnsweredAt: now,
	})
	st.SetHost(snapshot.Host{Known: true})
	st.SetExitNode(snapshot.ExitNode{
		CurrentID: exit.ID, CurrentName: exit.HostName, CurrentIP: exit.TailscaleIPs[0], Healthy: true,
		Switches: map[string]uint64{"initial": 1}, SwitchedAt: start,
	})
	st.SetPing(snapshot.Ping{PeerName: exit.HostName, PeerIP: exit.TailscaleIPs[0], OK: true, Latency: 2 * time.Millisecond, Path: "direct", At: now})
	for _, c := range []string{"tun", "exit-node-ping", "exit-route-kernel"} {
		st.SetCheck(c, snapshot.Check{OK: true, Duration: time.Millisecond, CheckedAt: now})
	}
	st.Beat("tailnet", now)
	st.MarkReady(start.Add(3 * time.Second))
	return st
}

// BenchmarkCollectByPeers is the Collector's part of one /metrics scrape
// (turning the snapshot into metrics, without the registry's gathering and
// sorting that BenchmarkCollect includes), over tailnets of 100 and 1000
// peers. DESIGN section 8 wants it not to grow with the peers.
func BenchmarkCollectByPeers(b *testing.B) {
	now := time.Date(2026, 3, 1, 12, 10, 0, 0, time.UTC)
	opts := probe.DefaultOptions()
	opts.RoleChecks = map[snapshot.Role][]string{snapshot.RoleWorker: {"exit-node-ping", "tun", "exit-route-kernel"}}
	info := metrics.BuildInfo{Version: "bench", TailscaleVersion: "v1.102.5", GoVersion: "go1.26"}
	for _, peers := range []int{100, 1000} {
		b.Run(fmt.Sprintf("peers=%d", peers), func(b *testing.B) {
			c := metrics.New(benchStore(peers, now), info, opts, metrics.WithClock(testingclock.NewFakeClock(now)))
			ch := make(chan prometheus.Metric, 256)
			done := make(chan int)
			go func() {
				n := 0
				for range ch {
					n++
				}
				done <- n
			}()
			b.ReportAllocs()
			for b.Loop() {
				c.Collect(ch)
			}
			close(ch)
			if n := <-done; n == 0 {
				b.Fatal("Collect emitted no metrics")
			}
		})
	}
}
