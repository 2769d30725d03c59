package main

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// localClientChild makes the test binary run TestLocalClientFailsFast's
// check in a fresh process.
const localClientChild = "TSNA_TEST_LOCALCLIENT_CHILD"

// TestLocalClientFailsFast: before tailscaled has its socket, a LocalAPI
// call fails with the connect error at once. local.Client's default dialer
// retries every 250 ms for the first two seconds of the calling process,
// so the agent's first calls slept, and its first connection to the
// tailscaled it had just started came up to 250 ms late. That window is
// the process's own first two seconds, so the check runs in a new process
// (this test binary again).
func TestLocalClientFailsFast(t *testing.T) {
	if os.Getenv(localClientChild) != "" {
		checkLocalClientFailsFast(t)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestLocalClientFailsFast$", "-test.count=1")
	cmd.Env = append(os.Environ(), localClientChild+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("in a new process: %v\n%s", err, out)
	}
}

func checkLocalClientFailsFast(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "tailscaled.sock")
	lc := localClient(socket)
	// Well within the retry window, and longer than one retry's sleep.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := lc.StatusWithoutPeers(ctx); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("status before the socket exists: got %v, want the connect error (ENOENT) before the call's deadline", err)
	}

	// And it does reach the socket once there is one.
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan struct{})
	go func() {
		if c, err := ln.Accept(); err == nil {
			close(accepted)
			c.Close()
		}
	}()
	lc.StatusWithoutPeers(ctx) // the listener hangs up at once: only the dial matters
	select {
	case <-accepted:
	case <-ctx.Done():
		t.Fatal("the client did not dial the socket")
	}
}
