//go:build linux

package supervisor

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Reaper reaps the orphaned processes the kernel re-parents to this process:
// every process when the agent is PID 1 of its container (or a child
// subreaper). Start it only then (os.Getpid() == 1), and before the
// Supervisor's Run:
//
//	var reaper *supervisor.Reaper
//	if os.Getpid() == 1 {
//		reaper = supervisor.NewReaper(supervisor.WithReaperLogger(logger))
//		go reaper.Run(context.Background()) // until the process exits
//	}
//	sup, err := supervisor.New(opts, store, supervisor.WithReaper(reaper), ...)
//
// A reaper that calls wait4(-1) would steal the exit status of the children
// the agent waits for itself (tailscaled). This one never reaps a process it
// was told about: it peeks at the next zombie with waitid(WNOWAIT), reaps it
// with wait4(pid) only if it is not exempt, and otherwise leaves it to its
// owner. Children the agent waits for must therefore be started through
// Spawn (which also closes the window between fork and registration) and
// handed back with Release after their owner has waited for them. While an
// exempt child is a zombie, reaping pauses until its Release.
//
// A nil *Reaper is valid: Spawn just calls start and Release does nothing.
type Reaper struct {
	log    *slog.Logger
	mu     sync.Mutex // held while reaping one process and during Spawn
	exempt map[int]struct{}
	kick   chan struct{}
	reaped atomic.Uint64
}

// ReaperOption configures a Reaper.
type ReaperOption func(*Reaper)

// WithReaperLogger sets the logger (component=reaper is added). The default
// is slog.Default().
func WithReaperLogger(l *slog.Logger) ReaperOption {
	return func(r *Reaper) { r.log = l }
}

// NewReaper returns a Reaper; call Run to start reaping.
func NewReaper(opts ...ReaperOption) *Reaper {
	r := &Reaper{
		log:    slog.Default(),
		exempt: map[int]struct{}{},
		kick:   make(chan struct{}, 1),
	}
	for _, o := range opts {
		o(r)
	}
	r.log = r.log.With("component", "reaper")
	return r
}

// Run reaps orphans on every SIGCHLD until ctx is done.
func (r *Reaper) Run(ctx context.Context) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, unix.SIGCHLD)
	defer signal.Stop(sig)
	for {
		r.reapAll()
		select {
		case <-ctx.Done():
			return
		case <-sig:
		case <-r.kick:
		}
	}
}

// Reaped returns how many orphans Run has reaped.
func (r *Reaper) Reaped() uint64 { return r.reaped.Load() }

// Spawn calls start, which must start exactly one child process and return
// its pid, with reaping paused, and exempts that pid from reaping until
// Release. The caller must wait for the child and then call Release.
func (r *Reaper) Spawn(start func() (pid int, err error)) (int, error) {
	if r == nil {
		return start()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	pid, err := start()
	if err == nil && pid > 0 {
		r.exempt[pid] = struct{}{}
	}
	return pid, err
}

// Release ends the exemption of pid, once its owner has waited for it.
func (r *Reaper) Release(pid int) {
	if r == nil {
		return
	}
	r.mu.Lock()
	delete(r.exempt, pid)
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// reapAll reaps zombies until none is left or the next one is exempt.
func (r *Reaper) reapAll() {
	for r.reapOne() {
	}
}

// reapOne reaps at most one zombie and reports whether to look for more.
func (r *Reaper) reapOne() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	var info unix.Siginfo
	err := unix.Waitid(unix.P_ALL, 0, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
	switch {
	case errors.Is(err, unix.EINTR):
		return true
	case errors.Is(err, unix.ECHILD):
		return false
	case err != nil:
		r.log.Error("peek at exited children failed", "err", err)
		return false
	}
	pid := siginfoPid(&info)
	if pid <= 0 {
		return false // no zombie
	}
	if _, ok := r.exempt[pid]; ok {
		return false // its owner waits for it; Release wakes us up
	}
	var ws unix.WaitStatus
	got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
	if err != nil || got != pid {
		return err == nil || errors.Is(err, unix.EINTR)
	}
	r.reaped.Add(1)
	r.log.Info("reaped orphaned process", "pid", pid, "status", waitStatusString(ws))
	return true
}

// sigchldInfo is the head of the kernel's siginfo_t for SIGCHLD: the union
// that holds si_pid starts at the first pointer-aligned offset after the
// three ints (16 on 64-bit platforms, 12 on 32-bit ones).
type sigchldInfo struct {
	Signo int32
	Errno int32
	Code  int32
	_     [0]uintptr // align the union as the kernel does
	Pid   int32
	UID   uint32
	// Status int32 follows; unused.
}

func siginfoPid(info *unix.Siginfo) int {
	return int((*sigchldInfo)(unsafe.Pointer(info)).Pid)
}

func waitStatusString(ws unix.WaitStatus) string {
	switch {
	case ws.Exited():
		return "exit status " + strconv.Itoa(ws.ExitStatus())
	case ws.Signaled():
		return "signal: " + ws.Signal().String()
	}
	return "unknown"
}
