package main

import (
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/ts-node-agent/ts-node-agent/pkg/config"
)

// TestBuildHasNoSideEffect: build makes and validates every part, and
// does nothing: no file in the state dir, the --listen port still free,
// the socket's directory untouched.
func TestBuildHasNoSideEffect(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	noEnv := func(string) (string, bool) { return "", false }
	for _, role := range []string{"worker", "exit", "none"} {
		cfg, err := config.Parse([]string{"--role=" + role, "--state-dir=" + state, "--listen=" + addr,
			"--socket=" + filepath.Join(dir, "run", "tailscaled.sock"), "--exit-nodes=exit1"}, noEnv)
		if err != nil {
			t.Fatal(err)
		}
		a, err := build(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), noEnv)
		if err != nil {
			t.Fatalf("%s: build: %v", role, err)
		}
		if a.guard == nil && role == "worker" {
			t.Errorf("%s: no Guard with the kernel TUN", role)
		}
		entries, _ := os.ReadDir(dir)
		if len(entries) != 0 {
			t.Errorf("%s: build wrote %v into %s", role, entries, dir)
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Errorf("%s: build took the --listen port: %v", role, err)
			continue
		}
		l.Close()
	}
}
