package netcheck

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

// TestTCPUpDown dials a loopback listener, then the same address once the
// listener is closed.
func TestTCPUpDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	h := start(t, Options{TCPTargets: []TCPTarget{{Name: "db", Addr: addr}}, TCPInterval: 20 * time.Second})

	if c := h.first("tcp:db"); !c.OK || c.Reason != "" {
		t.Fatalf("listening: got %+v, want OK", c)
	}
	const up = `
# HELP ts_node_agent_tcp_check_seconds Time the last successful TCP connect to the target took, name resolution included.
# TYPE ts_node_agent_tcp_check_seconds gauge
ts_node_agent_tcp_check_seconds{target="db"} 0
# HELP ts_node_agent_tcp_check_up 1 when the last TCP connect to the target succeeded, else 0.
# TYPE ts_node_agent_tcp_check_up gauge
ts_node_agent_tcp_check_up{target="db"} 1
`
	if err := testutil.GatherAndCompare(h.reg, strings.NewReader(up)); err != nil {
		t.Error(err)
	}
	if !h.durations.observed("tcp:db") {
		t.Error("no duration observed for tcp:db")
	}

	ln.Close()
	h.waitWaiters(2) // the heartbeat ticker and the TCP timer
	h.clock.Step(20 * time.Second)
	c := h.waitCheck("tcp:db", checkedAt(t0.Add(20*time.Second)))
	if want := "cannot connect to " + addr + ": connect: connection refused"; c.OK || c.Reason != want {
		t.Errorf("closed: got %+v, want reason %q", c, want)
	}
	// The latency stays that of the last successful connect.
	down := strings.Replace(up, `tcp_check_up{target="db"} 1`, `tcp_check_up{target="db"} 0`, 1)
	if err := testutil.GatherAndCompare(h.reg, strings.NewReader(down)); err != nil {
		t.Error(err)
	}
}

// TestTCPTimeout: a dial that hangs costs one timeout.
func TestTCPTimeout(t *testing.T) {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	h := start(t, Options{
		TCPTargets: []TCPTarget{{Name: "s3", Addr: "s3.example.com:443"}, {Name: "db", Addr: "db.example.com:5432"}},
		TCPTimeout: 100 * time.Millisecond,
	}, WithDialer(dial))
	for _, tgt := range []string{"s3.example.com:443", "db.example.com:5432"} {
		name := "tcp:" + strings.Split(tgt, ".")[0]
		c := h.first(name)
		if want := "no TCP connection to " + tgt + " within 100ms"; c.OK || c.Reason != want {
			t.Errorf("%s: got %+v, want reason %q", name, c, want)
		}
	}
}

// TestTCPDialError: the dialer's error is the reason, without repeating
// the address.
func TestTCPDialError(t *testing.T) {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		return nil, &net.OpError{Op: "dial", Net: network, Err: errors.New("lookup db.example.com: no such host")}
	}
	h := start(t, Options{TCPTargets: []TCPTarget{{Name: "db", Addr: "db.example.com:5432"}}}, WithDialer(dial))
	c := h.first("tcp:db")
	if want := "cannot connect to db.example.com:5432: lookup db.example.com: no such host"; c.OK || c.Reason != want {
		t.Errorf("got %+v, want reason %q", c, want)
	}
}

// TestStuckRoundStopsHeartbeat: a round that outlives every timeout (a
// dialer that ignores its context) stops the heartbeat, so liveness shows
// it; the heartbeat resumes once the round ends.
func TestStuckRoundStopsHeartbeat(t *testing.T) {
	release := make(chan struct{})
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		<-release
		return nil, errors.New("released")
	}
	h := start(t, Options{TCPTargets: []TCPTarget{{Name: "db", Addr: "db.example.com:5432"}}}, WithDialer(dial))
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	h.waitWaiters(1) // the heartbeat ticker; the round is in flight
	if hb := h.store.Load().Heartbeats[HeartbeatName]; !hb.Equal(t0) {
		t.Fatalf("heartbeat %v, want %v", hb, t0)
	}
	h.clock.Step(DefaultTCPTimeout + stuckGrace + heartbeatInterval)
	h.waitLog("a check round is stuck; no longer beating")
	if hb := h.store.Load().Heartbeats[HeartbeatName]; !hb.Equal(t0) {
		t.Errorf("heartbeat %v while stuck, want still %v", hb, t0)
	}

	close(release)
	h.waitCheck("tcp:db", func(c snapshot.Check) bool { return !c.OK })
	h.waitWaiters(2)
	h.clock.Step(heartbeatInterval)
	want := h.clock.Now()
	deadline := time.After(waitTimeout)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !h.store.Load().Heartbeats[HeartbeatName].Equal(want) {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("heartbeat %v after the round ended, want %v", h.store.Load().Heartbeats[HeartbeatName], want)
		}
	}
}
