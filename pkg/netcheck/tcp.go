package netcheck

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

// tcpLoop dials every target at once, then every TCPInterval, until ctx is
// done.
func (c *Checker) tcpLoop(ctx context.Context) {
	for {
		c.tcpRound(ctx)
		if !c.wait(ctx, c.opts.TCPInterval, nil) {
			return
		}
	}
}

// tcpRound dials every target, at most maxParallel at once, and publishes
// each result as soon as it is known.
func (c *Checker) tcpRound(ctx context.Context) {
	c.setBusy(loopTCP, c.opts.TCPTimeout*time.Duration(batches(len(c.opts.TCPTargets))))
	defer c.setBusy(loopTCP, 0)
	sem := make(chan struct{}, maxParallel)
	var wg sync.WaitGroup
	for _, t := range c.opts.TCPTargets {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			c.checkTCP(ctx, t)
		})
	}
	wg.Wait()
}

// checkTCP dials one target and publishes check "tcp:NAME" and its metrics.
func (c *Checker) checkTCP(ctx context.Context, t TCPTarget) {
	start := c.clock.Now()
	err := c.dialTCP(ctx, t.Addr)
	if ctx.Err() != nil {
		return // shutting down
	}
	d := c.clock.Since(start)
	chk := snapshot.Check{OK: err == nil, Duration: d, CheckedAt: c.clock.Now()}
	c.m.tcpUp.WithLabelValues(t.Name).Set(boolGauge(err == nil))
	if err == nil {
		c.m.tcpSeconds.WithLabelValues(t.Name).Set(d.Seconds())
	} else {
		chk.Reason = err.Error()
	}
	c.observe(t.CheckName(), d)
	c.publish(t.CheckName(), chk)
}

func (c *Checker) dialTCP(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, c.opts.TCPTimeout)
	defer cancel()
	conn, err := c.dial(ctx, "tcp", addr)
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fmt.Errorf("no TCP connection to %s within %v", addr, c.opts.TCPTimeout)
		}
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Err != nil {
			err = oe.Err // "dial tcp ADDR:" would repeat the address
		}
		return fmt.Errorf("cannot connect to %s: %w", addr, err)
	}
	conn.Close() // connected is all this check asks
	return nil
}
