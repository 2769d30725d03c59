package supervisor

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// shortTempDir is a temporary directory with a path short enough for unix
// sockets.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sup")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func TestWaitSocket(t *testing.T) {
	t.Parallel()
	dir := shortTempDir(t)

	t.Run("listening", func(t *testing.T) {
		p := filepath.Join(dir, "a.sock")
		l, err := net.Listen("unix", p)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := WaitSocket(ctx, p); err != nil {
			t.Fatalf("WaitSocket = %v", err)
		}
	})

	t.Run("appears later", func(t *testing.T) {
		p := filepath.Join(dir, "b.sock")
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		listening := make(chan net.Listener, 1)
		go func() {
			l, err := net.Listen("unix", p)
			if err != nil {
				t.Error(err)
			}
			listening <- l
		}()
		if err := WaitSocket(ctx, p); err != nil {
			t.Fatalf("WaitSocket = %v", err)
		}
		if l := <-listening; l != nil {
			l.Close()
		}
	})

	t.Run("stale file is not ready", func(t *testing.T) {
		p := filepath.Join(dir, "c.sock")
		l, err := net.Listen("unix", p)
		if err != nil {
			t.Fatal(err)
		}
		l.(*net.UnixListener).SetUnlinkOnClose(false)
		l.Close()
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("socket file gone: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		err = WaitSocket(ctx, p)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("WaitSocket = %v, want a deadline error", err)
		}
	})

	t.Run("missing", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		err := WaitSocket(ctx, filepath.Join(dir, "none.sock"))
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("WaitSocket = %v, want context.Canceled", err)
		}
	})
}
