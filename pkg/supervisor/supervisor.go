//go:build linux

package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/utils/clock"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

// Heartbeat of the supervisor loop in the snapshot (snapshot.Store.Beat).
const (
	HeartbeatName     = "supervisor"
	HeartbeatInterval = 5 * time.Second
)

// drainTimeout bounds how long an exited child's output is still read: a
// process outside tailscaled's process group may hold the pipes open.
const drainTimeout = 2 * time.Second

// SecretEnv are environment variables tailscaled does not read and does
// not get: the agent logs in through the LocalAPI. They are
// config.SecretEnv (the supervisor does not import config; a test in
// cmd/ts-node-agent keeps the two equal).
var SecretEnv = []string{"TS_AUTHKEY", "TS_AUTH_KEY", "TS_CLIENT_SECRET", "TS_ID_TOKEN"}

// Supervisor runs tailscaled. Create it with New, run it with Run.
type Supervisor struct {
	opts     Options
	store    *snapshot.Store
	log      *slog.Logger // component=supervisor
	childLog *slog.Logger // component=tailscaled
	clock    clock.WithTicker
	env      []string
	reaper   *Reaper
	onReady  []func(pid int)
	ran      atomic.Bool
}

// Option configures a Supervisor.
type Option func(*Supervisor)

// WithLogger sets the base logger. The supervisor adds component=supervisor
// to its own records and component=tailscaled to tailscaled's forwarded
// output, so l must not carry a component attribute itself. The default is
// slog.Default().
func WithLogger(l *slog.Logger) Option { return func(s *Supervisor) { s.log = l } }

// WithClock sets the clock for backoff, the stable-running reset, the
// shutdown timeout and heartbeats. The default is the real clock.
func WithClock(c clock.WithTicker) Option { return func(s *Supervisor) { s.clock = c } }

// WithEnv sets tailscaled's environment. The default is the agent's own
// environment without the secret variables (TS_AUTHKEY, TS_AUTH_KEY,
// TS_CLIENT_SECRET, TS_ID_TOKEN).
func WithEnv(env []string) Option { return func(s *Supervisor) { s.env = env } }

// WithReaper makes the supervisor start tailscaled through r (see Reaper),
// which main must do when it runs a Reaper. A nil r is ignored.
func WithReaper(r *Reaper) Option { return func(s *Supervisor) { s.reaper = r } }

// WithOnReady adds fn to the functions called after every start of
// tailscaled, once its LocalAPI socket accepts connections, with its pid
// (for example to re-apply prefs after a restart). fn runs on its own
// goroutine, once per start, never after Run returned (Run waits for it, so
// it should not block for long); it is not called for a start whose process
// died, or that Run began to stop, before the socket was up.
func WithOnReady(fn func(pid int)) Option {
	return func(s *Supervisor) { s.onReady = append(s.onReady, fn) }
}

// New returns a Supervisor for opts (Defaults applied by the caller) that
// publishes to store.
func New(opts Options, store *snapshot.Store, options ...Option) (*Supervisor, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if store == nil {
		return nil, errors.New("supervisor: nil snapshot store")
	}
	opts.ExtraArgs = append([]string(nil), opts.ExtraArgs...)
	s := &Supervisor{
		opts:  opts,
		store: store,
		log:   slog.Default(),
		clock: clock.RealClock{},
		env:   childEnv(os.Environ()),
	}
	for _, o := range options {
		o(s)
	}
	s.childLog = s.log.With("component", "tailscaled")
	s.log = s.log.With("component", "supervisor")
	return s, nil
}

func childEnv(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		secret := false
		for _, s := range SecretEnv {
			secret = secret || name == s
		}
		if !secret {
			out = append(out, kv)
		}
	}
	return out
}

// Run starts tailscaled and keeps it running until ctx is done, restarting
// it with backoff after every unexpected exit (whatever its status: a
// tailscaled that exits on its own, even with status 0, is restarted). When
// ctx is done it sends SIGTERM, SIGKILLs the process group after
// ShutdownTimeout, waits, and returns nil if tailscaled exited cleanly
// (status 0, or by the SIGTERM), else an error describing how it ended.
//
// Run returns an error at once if the first start fails (tailscaled not
// found, not executable); later start failures are retried with backoff.
// Run never returns while tailscaled is running. It may be called once.
func (s *Supervisor) Run(ctx context.Context) error {
	if !s.ran.CompareAndSwap(false, true) {
		return errors.New("supervisor: Run called twice")
	}
	path, err := exec.LookPath(s.opts.Tailscaled)
	if err != nil {
		return fmt.Errorf("supervisor: find tailscaled: %w", err)
	}
	args := Args(s.opts)

	// Deferred in this order so that, on the way out, the child is
	// killed and waited for, then readiness waiters are cancelled, then
	// joined.
	var readyWG sync.WaitGroup
	defer readyWG.Wait()
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	state := s.store.Load().Supervisor
	var cur *child
	defer func() {
		if cur == nil {
			return
		}
		// Only reached on a path that did not stop the child: an
		// error or a panic. Never leave it running.
		s.log.Error("supervisor exiting with tailscaled still running; killing it", "pid", cur.pid)
		cur.kill()
		<-cur.done
		cur.exitedAt = s.clock.Now()
		s.publishExit(&state, cur)
	}()

	heartbeat := s.clock.NewTicker(HeartbeatInterval)
	defer heartbeat.Stop()
	s.beat()

	seq := 0 // restarts in the current backoff sequence
	for attempt := 0; ; attempt++ {
		if ctx.Err() != nil {
			return nil // stopped before (re)starting: nothing to stop
		}
		if attempt > 0 {
			state.Restarts++
			s.log.Info("restarting tailscaled", "restarts", state.Restarts)
		}
		var ran time.Duration
		c, err := s.start(runCtx, path, args)
		switch {
		case err != nil && attempt == 0:
			return fmt.Errorf("supervisor: start tailscaled: %w", err)
		case err != nil:
			s.log.Error("start tailscaled failed", "err", err)
			state.LastExit = "start failed: " + err.Error()
			s.store.SetSupervisor(state)
		default:
			cur = c
			state.Running = true
			state.PID = c.pid
			state.StartedAt = c.startedAt
			state.DownSince = time.Time{}
			s.store.SetSupervisor(state)
			s.log.Info("tailscaled started", "pid", c.pid, "args", args)
			s.watchReady(c, &readyWG)

			stopping, stopErr := s.waitChild(ctx, c, heartbeat)
			cur = nil
			s.publishExit(&state, c)
			if stopping {
				return stopErr
			}
			ran = c.exitedAt.Sub(c.startedAt)
		}

		if ran >= s.opts.Backoff.ResetAfter {
			seq = 0 // a stable run: the sequence starts over
		}
		delay := s.opts.Backoff.Next(seq)
		seq++
		s.log.Warn("tailscaled is down unexpectedly; restarting after backoff", "exit", state.LastExit, "ran", ran.String(),
			"restart_in", delay.String(), "restarts", state.Restarts)
		if !s.sleep(ctx, delay, heartbeat) {
			s.log.Info("stop requested while tailscaled was down")
			return nil
		}
	}
}

func (s *Supervisor) beat() { s.store.Beat(HeartbeatName, s.clock.Now()) }

// publishExit records c's end in state and publishes it.
func (s *Supervisor) publishExit(state *snapshot.Supervisor, c *child) {
	state.Running = false
	state.PID = 0
	state.DownSince = c.exitedAt
	state.LastExit = c.exitString()
	s.store.SetSupervisor(*state)
}

// waitChild waits for c to exit, beating the heartbeat. If ctx is done first
// it stops c and returns stopping=true with the result of the stop.
func (s *Supervisor) waitChild(ctx context.Context, c *child, heartbeat clock.Ticker) (stopping bool, err error) {
	for {
		select {
		case <-c.done:
			c.exitedAt = s.clock.Now()
			return false, nil
		case <-heartbeat.C():
			s.beat()
		case <-ctx.Done():
			return true, s.stop(c)
		}
	}
}

// stop ends c: SIGTERM, then SIGKILL to its process group after
// ShutdownTimeout. It returns nil if c exited cleanly.
func (s *Supervisor) stop(c *child) error {
	s.log.Info("stopping tailscaled", "pid", c.pid, "timeout", s.opts.ShutdownTimeout.String())
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		s.log.Error("send SIGTERM to tailscaled failed", "pid", c.pid, "err", err)
	}
	t := s.clock.NewTimer(s.opts.ShutdownTimeout)
	defer t.Stop()
	killed := false
	select {
	case <-c.done:
	case <-t.C():
		s.log.Warn("tailscaled did not exit after SIGTERM; killing its process group",
			"pid", c.pid, "timeout", s.opts.ShutdownTimeout.String())
		c.kill()
		<-c.done
		killed = true
	}
	c.exitedAt = s.clock.Now()
	switch {
	case killed:
		return fmt.Errorf("supervisor: tailscaled (pid %d) did not exit within %s of SIGTERM and was killed", c.pid, s.opts.ShutdownTimeout)
	case c.state == nil:
		return fmt.Errorf("supervisor: wait for tailscaled (pid %d): %w", c.pid, c.err)
	case c.cleanStop():
		s.log.Info("tailscaled stopped", "pid", c.pid, "exit", c.exitString())
		return nil
	default:
		return fmt.Errorf("supervisor: tailscaled (pid %d) ended with %s on shutdown", c.pid, c.state)
	}
}

// sleep waits d, beating the heartbeat; false if ctx is done first.
func (s *Supervisor) sleep(ctx context.Context, d time.Duration, heartbeat clock.Ticker) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := s.clock.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-t.C():
			return true
		case <-heartbeat.C():
			s.beat()
		case <-ctx.Done():
			return false
		}
	}
}

// watchReady waits for c's LocalAPI socket and then calls the OnReady
// functions.
func (s *Supervisor) watchReady(c *child, wg *sync.WaitGroup) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := WaitSocket(c.ctx, s.opts.Socket); err != nil {
			return // c exited, or Run is stopping
		}
		s.log.Info("tailscaled LocalAPI ready", "pid", c.pid, "socket", s.opts.Socket,
			"after", s.clock.Since(c.startedAt).String())
		for _, fn := range s.onReady {
			if c.ctx.Err() != nil {
				return
			}
			fn(c.pid)
		}
	}()
}

// child is one tailscaled process.
type child struct {
	cmd       *exec.Cmd
	pid       int
	startedAt time.Time
	exitedAt  time.Time // set by the Run goroutine once done is closed
	// ctx is done once the child has exited or Run is ending.
	ctx context.Context
	// done is closed once the child has been waited for and its output
	// drained; state and err are valid then.
	done  chan struct{}
	state *os.ProcessState
	err   error
}

// start starts tailscaled and the goroutines that forward its output and
// wait for it.
//
// Pdeathsig is delivered when the *thread* that forked the child exits, not
// the process. The Go runtime can end a thread (when a goroutine exits while
// locked to it), so the child is started and waited for from a goroutine
// locked to its OS thread for the whole life of the child: that thread is
// ours alone and lives until the child has been reaped. If the agent itself
// dies, every thread dies and the kernel SIGKILLs tailscaled.
func (s *Supervisor) start(ctx context.Context, path string, args []string) (*child, error) {
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("create stdout pipe: %w", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, fmt.Errorf("create stderr pipe: %w", err)
	}
	// Our own pipes rather than io.Writers: exec does not then tie Wait
	// to the copying, which a process holding the pipe open could block.
	cmd := exec.Command(path, args...)
	cmd.Env = s.env
	cmd.Stdout = outW
	cmd.Stderr = errW
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:   true, // own process group: the SIGKILL reaches its helpers too
		Pdeathsig: syscall.SIGKILL,
	}

	var output sync.WaitGroup
	output.Add(2)
	go func() { defer output.Done(); forwardLines(outR, s.childLog, "stdout") }()
	go func() { defer output.Done(); forwardLines(errR, s.childLog, "stderr") }()
	closeOutput := func() {
		outR.Close()
		errR.Close()
		output.Wait()
	}

	cctx, ccancel := context.WithCancel(ctx)
	c := &child{cmd: cmd, ctx: cctx, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		pid, err := s.reaper.Spawn(func() (int, error) {
			if err := cmd.Start(); err != nil {
				return 0, err
			}
			return cmd.Process.Pid, nil
		})
		if err != nil {
			started <- err
			return
		}
		c.pid = pid
		c.startedAt = s.clock.Now()
		started <- nil

		waitExited(pid)
		// While the exited child is a zombie its pid cannot be reused:
		// kill whatever is left of its process group now.
		_ = unix.Kill(-pid, unix.SIGKILL)
		c.err = cmd.Wait()
		c.state = cmd.ProcessState
		s.reaper.Release(pid)
		ccancel()

		t := time.NewTimer(drainTimeout)
		drained := make(chan struct{})
		go func() { output.Wait(); close(drained) }()
		select {
		case <-drained:
		case <-t.C:
			s.log.Warn("tailscaled output still open after it exited; closing", "pid", pid)
		}
		t.Stop()
		closeOutput()
		close(c.done)
	}()

	err = <-started
	// The child has its copies; close ours so that EOF comes when it exits.
	outW.Close()
	errW.Close()
	if err != nil {
		ccancel()
		closeOutput()
		return nil, err
	}
	return c, nil
}

// waitExited blocks until pid has exited, without reaping it.
func waitExited(pid int) {
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if !errors.Is(err, unix.EINTR) {
			return
		}
	}
}

// kill SIGKILLs the child and its process group.
func (c *child) kill() {
	select {
	case <-c.done:
		return
	default:
	}
	_ = unix.Kill(-c.pid, unix.SIGKILL)
	_ = c.cmd.Process.Kill()
}

// cleanStop reports whether the child ended as a stop asked it to: status
// 0, or killed by SIGTERM.
func (c *child) cleanStop() bool {
	if c.state == nil {
		return false
	}
	if c.state.Success() {
		return true
	}
	ws, ok := c.state.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGTERM
}

// exitString describes how the child ended: "exit status 1",
// "signal: killed".
func (c *child) exitString() string {
	if c.state != nil {
		return c.state.String()
	}
	return "wait failed: " + c.err.Error()
}
