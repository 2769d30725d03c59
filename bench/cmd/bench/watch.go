package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"tailscale.com/client/local"
	"tailscale.com/ipn"

	"github.com/ts-node-agent/ts-node-agent/test/lab"
)

// Egress attempts: a new one every egressEvery, each bounded by
// egressTimeout, so that a request stuck on a dead path does not hide the
// moment a new one gets through.
const (
	egressEvery   = 50 * time.Millisecond
	egressTimeout = 2 * time.Second
)

// egressTrace is what the echo service answered while waiting.
type egressTrace struct {
	Seen   map[netip.Addr]int // answers by source address
	Errors int                // attempts that failed or timed out
}

// waitEgress starts an egress request from n every egressEvery until one
// is answered with want, and returns when that answer arrived. It gives up
// after timeout.
func waitEgress(ctx context.Context, n *lab.Node, want netip.Addr, timeout time.Duration) (time.Time, egressTrace, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	type answer struct {
		ip  netip.Addr
		err error
		at  time.Time
	}
	answers := make(chan answer, 64)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	tr := egressTrace{Seen: map[netip.Addr]int{}}
	tick := time.NewTicker(egressEvery)
	defer tick.Stop()
	attempt := func() {
		wg.Go(func() {
			actx, acancel := context.WithTimeout(ctx, egressTimeout)
			defer acancel()
			ip, err := n.EgressIP(actx)
			select {
			case answers <- answer{ip, err, time.Now()}:
			case <-ctx.Done():
			}
		})
	}
	attempt()
	for {
		select {
		case <-ctx.Done():
			return time.Time{}, tr, fmt.Errorf("%s: egress never %s (seen %v, %d failed attempts): %w", n.Name(), want, tr.Seen, tr.Errors, ctx.Err())
		case <-tick.C:
			attempt()
		case a := <-answers:
			if a.err != nil {
				tr.Errors++
				continue
			}
			tr.Seen[a.ip]++
			if a.ip == want {
				return a.at, tr, nil
			}
		}
	}
}

// observeEgress makes egress attempts from n for d and reports what came
// back (for the supervisor that has no failover).
func observeEgress(ctx context.Context, n *lab.Node, d time.Duration) egressTrace {
	_, tr, _ := waitEgress(ctx, n, netip.Addr{}, d)
	return tr
}

// watchRunning reports when tailscaled's backend state becomes Running,
// through an IPN bus watch on its real LocalAPI socket (waiting for the
// socket to appear first).
func watchRunning(ctx context.Context, socket string) (time.Time, error) {
	lc := &local.Client{Socket: socket, UseSocketOnly: true}
	var lastErr error
	for {
		w, err := lc.WatchIPNBus(ctx, ipn.NotifyInitialState)
		if err == nil {
			for {
				n, err := w.Next()
				if err != nil {
					lastErr = err
					break
				}
				if n.State != nil && *n.State == ipn.Running {
					at := time.Now()
					w.Close()
					return at, nil
				}
			}
			w.Close()
		} else {
			lastErr = err
		}
		select {
		case <-ctx.Done():
			return time.Time{}, errors.Join(ctx.Err(), lastErr)
		case <-time.After(10 * time.Millisecond):
		}
	}
}
