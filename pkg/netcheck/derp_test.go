package netcheck

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"tailscale.com/tailcfg"

	"github.com/ts-node-agent/ts-node-agent/internal/tstest"
)

// TestDERPProberMeasuresRealSTUN runs the prober against the in-process
// DERP and STUN servers of the test control server: the region of the map
// gets a latency series.
func TestDERPProberMeasuresRealSTUN(t *testing.T) {
	c := tstest.StartControl(t, nil)
	reg := prometheus.NewPedanticRegistry()
	calls := 0
	p, err := NewDERPProber(reg, func(context.Context) (*tailcfg.DERPMap, error) {
		calls++
		if calls == 1 {
			return nil, errors.New("tailscaled not up yet")
		}
		return c.DERPMap, nil
	}, time.Hour, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	// The first map read fails (tailscaled not up): the prober retries
	// 10s later instead of waiting for the hour-long interval.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	deadline := time.Now().Add(25 * time.Second)
	for {
		n, err := testutil.GatherAndCount(reg, "ts_node_agent_derp_latency_seconds")
		if err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no DERP latency series after %d map reads", calls)
		}
		time.Sleep(100 * time.Millisecond)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
	mfs, _ := reg.Gather()
	if got := mfs[0].GetMetric()[0].GetLabel()[0].GetValue(); strings.TrimSpace(got) == "" {
		t.Fatal("empty region label")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
