package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Process is a process the lab started inside a namespace.
type Process struct {
	ns      *NetNS
	argv    []string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error // exit status; valid once done is closed
}

// start runs argv in ns; see NetNS.Start.
func (l *Lab) start(ns *NetNS, argv []string, env []string) (*Process, error) {
	if len(argv) == 0 {
		return nil, errors.New("lab: Start: empty argv")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, errors.New("lab: Start: lab is closed")
	}
	base := filepath.Base(argv[0])
	logPath := filepath.Join(ns.dir, base+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lab: Start %s in %s: %w", base, ns.label, err)
	}
	fmt.Fprintf(f, "=== lab: %s start in %s: %q\n", time.Now().Format(time.RFC3339Nano), ns.name, argv)

	// Context only for cancellation semantics (kill of the group on Close
	// is explicit); Background keeps the process alive independently.
	cmd := ns.nsCommand(context.Background(), argv, env)
	var out io.Writer = f
	if l.opts.ProcessOutput != nil {
		out = io.MultiWriter(f, &prefixWriter{w: l.outputWriter(), prefix: ns.label + "/" + base + ": "})
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("lab: Start %s in %s: %w", base, ns.label, err)
	}
	p := &Process{ns: ns, argv: append([]string(nil), argv...), cmd: cmd, logPath: logPath, done: make(chan struct{})}
	l.procs = append(l.procs, p)
	go func() {
		p.err = cmd.Wait()
		fmt.Fprintf(f, "=== lab: %s exit: %v\n", time.Now().Format(time.RFC3339Nano), exitString(p.err))
		f.Close()
		close(p.done)
	}()
	l.logf("started %s in %s, pid %d, log %s", base, ns.label, cmd.Process.Pid, logPath)
	return p, nil
}

func exitString(err error) string {
	if err == nil {
		return "status 0"
	}
	return err.Error()
}

// Pid is the process id (the command itself: `ip netns exec` execs it).
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// LogPath is the file that receives the process's stdout and stderr
// (appended to when several processes with the same argv[0] run in one
// namespace).
func (p *Process) LogPath() string { return p.logPath }

// Log returns the current content of the process's log file.
func (p *Process) Log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

// Done is closed when the process has exited and been reaped.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Err is the process's exit error (nil for status 0); valid after Done.
func (p *Process) Err() error {
	select {
	case <-p.done:
		return p.err
	default:
		return errors.New("lab: process still running")
	}
}

// Wait waits for the process to exit or ctx to end.
func (p *Process) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Signal sends sig to the process only.
func (p *Process) Signal(sig syscall.Signal) error {
	if p.Exited() {
		return nil
	}
	return p.cmd.Process.Signal(sig)
}

// SignalGroup sends sig to the process's whole process group.
func (p *Process) SignalGroup(sig syscall.Signal) error {
	if p.Exited() {
		return nil
	}
	err := syscall.Kill(-p.cmd.Process.Pid, sig)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

// Kill sends SIGKILL to the process group and waits until the process is
// reaped.
func (p *Process) Kill() error {
	if err := p.SignalGroup(syscall.SIGKILL); err != nil {
		return fmt.Errorf("lab: kill %d: %w", p.Pid(), err)
	}
	<-p.done
	return nil
}

// Stop sends SIGTERM to the process group, waits up to timeout, then
// SIGKILLs it. It returns once the process is reaped. The exit status is
// not an error here (see Err).
func (p *Process) Stop(timeout time.Duration) error {
	if err := p.SignalGroup(syscall.SIGTERM); err != nil {
		return fmt.Errorf("lab: stop %d: %w", p.Pid(), err)
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.done:
		// Leftovers of the group, if any, are found by namespace on Close.
		return nil
	case <-t.C:
	}
	return p.Kill()
}

// prefixWriter writes each complete line to w with a prefix.
type prefixWriter struct {
	w      *lockedWriter
	prefix string
	buf    []byte
}

func (pw *prefixWriter) Write(b []byte) (int, error) {
	pw.buf = append(pw.buf, b...)
	for {
		i := bytes.IndexByte(pw.buf, '\n')
		if i < 0 {
			break
		}
		pw.w.writeLine(pw.prefix + strings.TrimRight(string(pw.buf[:i]), "\r"))
		pw.buf = pw.buf[i+1:]
	}
	if len(pw.buf) > 64<<10 { // a very long line: flush it as is
		pw.w.writeLine(pw.prefix + string(pw.buf))
		pw.buf = pw.buf[:0]
	}
	return len(b), nil
}

// lockedWriter serialises whole lines from many processes.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (lw *lockedWriter) writeLine(s string) {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	io.WriteString(lw.w, s+"\n")
}
