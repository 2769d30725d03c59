package supervisor

import (
	"context"
	"fmt"
	"net"
	"time"
)

// socketPollInterval is how often WaitSocket retries the dial.
const socketPollInterval = 50 * time.Millisecond

// WaitSocket waits until the unix socket at path accepts connections, or ctx
// is done. It dials and hangs up: it speaks no protocol, so a socket file
// left behind by a dead tailscaled (connection refused) does not count.
//
// Dialing is the only readiness signal tailscaled gives, so this polls, every
// 50ms; bound the wait with ctx.
func WaitSocket(ctx context.Context, path string) error {
	var d net.Dialer
	t := time.NewTicker(socketPollInterval)
	defer t.Stop()
	for {
		c, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for socket %s: %w (last dial error: %v)", path, context.Cause(ctx), err)
		case <-t.C:
		}
	}
}
