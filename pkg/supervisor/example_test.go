//go:build linux

package supervisor_test

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
	"github.com/ts-node-agent/ts-node-agent/pkg/supervisor"
)

// How main wires the supervisor: the signal context stops it, the reaper runs
// only as PID 1, and the tailnet side re-applies prefs on every (re)start.
func Example() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	logger := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	store := snapshot.New(time.Now(), snapshot.RoleNone)

	var reaper *supervisor.Reaper // nil unless PID 1
	if os.Getpid() == 1 {
		reaper = supervisor.NewReaper(supervisor.WithReaperLogger(logger))
		// Not ctx: keep reaping until the process exits, after Run.
		go reaper.Run(context.Background())
	}

	var opts supervisor.Options
	opts.Defaults()
	opts.TUN = supervisor.UserspaceNetworking // from the config
	sup, err := supervisor.New(opts, store,
		supervisor.WithLogger(logger),
		supervisor.WithReaper(reaper),
		supervisor.WithOnReady(func(pid int) {
			logger.Info("tailscaled ready; re-apply prefs", "pid", pid)
		}),
	)
	if err != nil {
		logger.Error("bad supervisor options", "err", err)
		return
	}
	if err := sup.Run(ctx); err != nil {
		logger.Error("tailscaled did not stop cleanly", "err", err)
	}
}
