package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ts-node-agent/ts-node-agent/test/lab"
)

// impl is the supervisor under test.
type impl string

const (
	implAgent impl = "agent"
	implCB    impl = "containerboot"
)

// order alternates which supervisor goes first: run i starts with the
// agent when i is even.
func order(i int) []impl {
	if i%2 == 0 {
		return []impl{implAgent, implCB}
	}
	return []impl{implCB, implAgent}
}

// probePath is the endpoint that says "the node is usable": the agent's
// readiness probe, containerboot's health check.
func (im impl) probePath() string {
	if im == implAgent {
		return "/readyz"
	}
	return "/healthz"
}

// binaries are the programs the bench runs.
type binaries struct {
	Agent, Tailscaled, Containerboot, TailscaleCLI string
}

func findBinaries() (binaries, error) {
	var b binaries
	var errs []error
	var err error
	if b.Agent, err = lab.AgentBinary(); err != nil {
		errs = append(errs, err)
	}
	if b.Tailscaled, err = lab.TailscaledBinary(); err != nil {
		errs = append(errs, err)
	}
	if b.Containerboot, err = lab.Binary("TSNA_TEST_CONTAINERBOOT", "containerboot"); err != nil {
		errs = append(errs, err)
	}
	if b.TailscaleCLI, err = lab.TailscaleCLIBinary(); err != nil {
		errs = append(errs, err)
	}
	return b, errors.Join(errs...)
}

// spec says how to start a supervisor on a node.
type spec struct {
	role string // none, exit or worker
	// agentExitNodes are the worker's --exit-nodes (names).
	agentExitNodes string
	// cbExitNode is containerboot's `tailscale up --exit-node` (an IP).
	cbExitNode netip.Addr
	// agentExtra are more agent flags.
	agentExtra []string
	// countLocalAPI puts a counting proxy between the supervisor and
	// tailscaled's LocalAPI socket.
	countLocalAPI bool
}

// subject is a supervisor running on a lab node.
type subject struct {
	impl       impl
	node       *lab.Node
	proc       *lab.Process
	started    time.Time // just before the process was started
	realSocket string    // tailscaled's own LocalAPI socket
	proxy      *localAPIProxy
	client     *http.Client // probe requests from inside the node, a new connection each
}

// runnerScript starts the supervisor with a private /run: containerboot
// symlinks its socket to /var/run/tailscale/tailscaled.sock, which would
// otherwise land on the host. `ip netns exec` already gave the process its
// own mount namespace (slave of the host's), so the tmpfs stays there. The
// agent goes through the same script, so both pay the same start cost.
const runnerScript = `#!/bin/sh
# written by ts-node-agent's bench: a private /run, then the supervisor.
mount -t tmpfs -o size=4m,mode=0755 tsna-bench /run || exit 111
exec "$@"
`

// tailscaledWrapper makes tailscaled listen on its real socket behind
// the counting proxy (Go's flag package: the last --socket wins).
const tailscaledWrapper = `#!/bin/sh
# written by ts-node-agent's bench: tailscaled behind a LocalAPI proxy.
exec %q "$@" --socket=%q
`

// writeRunner writes the runner script of im on n, unless it is there
// already. An executable written while another goroutine forks can fail
// to exec with ETXTBSY (the child holds the write descriptor until its own
// exec), so the bench writes every runner once, before it starts anything
// (writeRunners), and never rewrites it.
func writeRunner(n *lab.Node, im impl) (string, error) {
	runner := filepath.Join(n.Dir(), "bench-"+string(im))
	return runner, writeScript(runner, runnerScript)
}

// writeScript writes an executable script unless it holds content
// already.
func writeScript(path, content string) error {
	if b, err := os.ReadFile(path); err == nil && string(b) == content {
		return nil
	}
	return os.WriteFile(path, []byte(content), 0o755)
}

// writeRunners writes the runner scripts of both supervisors on nodes.
func writeRunners(nodes ...*lab.Node) error {
	for _, n := range nodes {
		for _, im := range []impl{implAgent, implCB} {
			if _, err := writeRunner(n, im); err != nil {
				return err
			}
		}
	}
	return nil
}

// start runs im on n as sp says, on whatever state n has.
func (b *bench) start(ctx context.Context, im impl, n *lab.Node, sp spec) (*subject, error) {
	s := &subject{impl: im, node: n, realSocket: n.SocketPath()}
	s.client = &http.Client{Transport: &http.Transport{DialContext: n.DialContext, DisableKeepAlives: true, Proxy: nil}}
	runner, err := writeRunner(n, im)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(n.StateDir(), 0o700); err != nil {
		return nil, err
	}
	tailscaled := b.bins.Tailscaled
	wrapDir := filepath.Join(n.Dir(), "bench-wrap")
	if sp.countLocalAPI {
		s.realSocket = filepath.Join(n.Dir(), "real.sock")
		if err := os.MkdirAll(wrapDir, 0o755); err != nil {
			return nil, err
		}
		tailscaled = filepath.Join(wrapDir, "tailscaled")
		script := fmt.Sprintf(tailscaledWrapper, b.bins.Tailscaled, s.realSocket)
		if err := writeScript(tailscaled, script); err != nil {
			return nil, err
		}
		s.proxy = startLocalAPIProxy(n.SocketPath(), s.realSocket)
	}

	var argv, env []string
	env = append(n.TailscaledEnv(), "TS_AUTHKEY="+b.lab.AuthKey())
	switch im {
	case implAgent:
		args, err := b.lab.AgentArgs(n, sp.role)
		if err != nil {
			return nil, err
		}
		for i, a := range args {
			if strings.HasPrefix(a, "--tailscaled=") {
				args[i] = "--tailscaled=" + tailscaled
			}
		}
		if sp.role == "worker" {
			args = append(args, "--exit-nodes="+sp.agentExitNodes)
		}
		argv = append([]string{runner, b.bins.Agent}, args...)
		argv = append(argv, sp.agentExtra...)
	case implCB:
		upArgs := []string{"--login-server=" + b.lab.ControlURL()}
		switch sp.role {
		case "exit":
			upArgs = append(upArgs, "--advertise-exit-node")
		case "worker":
			upArgs = append(upArgs, "--exit-node="+sp.cbExitNode.String())
		}
		path := filepath.Dir(b.bins.TailscaleCLI) + ":" + os.Getenv("PATH")
		if sp.countLocalAPI {
			path = wrapDir + ":" + path
		}
		if filepath.Dir(b.bins.Tailscaled) != filepath.Dir(b.bins.TailscaleCLI) && !sp.countLocalAPI {
			path = filepath.Dir(b.bins.Tailscaled) + ":" + path
		}
		env = append(env,
			"PATH="+path,
			"KUBERNETES_SERVICE_HOST=", // not in Kubernetes: no Secret state, no API calls
			"TS_STATE_DIR="+n.StateDir(),
			"TS_SOCKET="+n.SocketPath(),
			"TS_USERSPACE=false",
			"TS_HOSTNAME="+n.Name(),
			"TS_EXTRA_ARGS="+strings.Join(upArgs, " "),
			"TS_TAILSCALED_EXTRA_ARGS=--no-logs-no-support --encrypt-state=false",
			// Log in only when the state needs it, as the agent's
			// --auth-once default (and the Kubernetes operator's
			// proxies): a restarted containerboot then reuses its state.
			"TS_AUTH_ONCE=true",
			"TS_ENABLE_HEALTH_CHECK=true",
			"TS_ENABLE_METRICS=true",
			fmt.Sprintf("TS_LOCAL_ADDR_PORT=127.0.0.1:%d", lab.AgentPort),
		)
		argv = []string{runner, b.bins.Containerboot}
	default:
		return nil, fmt.Errorf("unknown supervisor %q", im)
	}
	s.started = time.Now()
	p, err := n.Start(argv, env)
	if err != nil {
		s.closeProxy()
		return nil, err
	}
	s.proc = p
	return s, nil
}

// get fetches path from the supervisor's probe port inside the node.
func (s *subject) get(ctx context.Context, path string) (int, error) {
	code, _, err := s.fetch(ctx, path, false)
	return code, err
}

// fetch is get, with the body when keep is set.
func (s *subject) fetch(ctx context.Context, path string, keep bool) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d%s", lab.AgentPort, path), nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	if !keep {
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, "", nil
	}
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// counterSum is the sum of the series of a counter (or gauge) in the
// agent's /metrics.
func (s *subject) counterSum(ctx context.Context, name string) (float64, error) {
	code, body, err := s.fetch(ctx, "/metrics", true)
	if err != nil {
		return 0, err
	}
	if code != http.StatusOK {
		return 0, fmt.Errorf("/metrics: status %d", code)
	}
	sum := 0.0
	for line := range strings.Lines(body) {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return 0, fmt.Errorf("/metrics: %q: %w", line, err)
		}
		sum += v
	}
	return sum, nil
}

// pollProbe polls path every interval until cond holds for an answer (a
// connection error is code 0) and returns when that answer arrived. It
// fails when ctx ends, or when the process exits and exitOK is false.
func (s *subject) pollProbe(ctx context.Context, path string, interval time.Duration, exitOK bool, cond func(code int) bool) (time.Time, error) {
	t := time.NewTicker(interval)
	defer t.Stop()
	last := 0
	for {
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		code, err := s.get(rctx, path)
		cancel()
		if err != nil {
			code = 0
		}
		at := time.Now()
		if cond(code) {
			return at, nil
		}
		last = code
		select {
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("%s %s on %s: last answer %d: %w", s.impl, path, s.node.Name(), last, ctx.Err())
		case <-s.proc.Done():
			if !exitOK {
				return time.Time{}, fmt.Errorf("%s on %s exited (%v) while polling %s", s.impl, s.node.Name(), s.proc.Err(), path)
			}
		case <-t.C:
		}
	}
}

// waitReady waits for the supervisor's "usable" probe to answer 200.
func (s *subject) waitReady(ctx context.Context, timeout time.Duration) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return s.pollProbe(ctx, s.impl.probePath(), pollInterval, false, func(c int) bool { return c == http.StatusOK })
}

// pollInterval is how often the bench polls a probe while timing it: the
// resolution of the times it reports.
const pollInterval = 25 * time.Millisecond

func (s *subject) closeProxy() {
	if s.proxy != nil {
		s.proxy.Close()
	}
}

// stop ends the supervisor (SIGTERM, then SIGKILL) and waits until no
// process is left in the node's namespace: containerboot starts
// tailscaled in a process group of its own and does not wait for it.
func (s *subject) stop() error {
	defer s.closeProxy()
	var errs []error
	if s.proc != nil {
		if err := s.proc.Stop(20 * time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	if err := drainNode(s.node, 15*time.Second); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// drainNode waits until the namespace runs no process, then SIGKILLs
// whatever is left after timeout.
func drainNode(n *lab.Node, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	killed := false
	for {
		procs, err := n.Processes()
		if err != nil {
			return err
		}
		if len(procs) == 0 {
			return nil
		}
		if now := time.Now(); now.After(deadline) {
			if killed {
				return fmt.Errorf("%s: processes left after SIGKILL: %v", n.Name(), procs)
			}
			for pid := range procs {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			killed, deadline = true, now.Add(5*time.Second)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// resetNode gives n a fresh tailscaled state and the kernel settings the
// lab starts with, so that every run starts from the same point.
func resetNode(ctx context.Context, n *lab.Node) error {
	if err := drainNode(n, 15*time.Second); err != nil {
		return err
	}
	var errs []error
	// A stopped agent leaves its bypass and kill switch for the next one
	// (fail closed across restarts): remove them, so that the next run,
	// containerboot's too, starts from a clean kernel.
	if bin, err := lab.AgentBinary(); err != nil {
		errs = append(errs, err)
	} else if out, err := n.Exec(ctx, bin, "cleanup", "--state-dir="+n.StateDir(), "--log-format=text"); err != nil {
		errs = append(errs, fmt.Errorf("%s: ts-node-agent cleanup: %w: %s", n.Name(), err, out))
	}
	if err := os.RemoveAll(n.StateDir()); err != nil {
		errs = append(errs, err)
	}
	for _, f := range []string{n.SocketPath(), filepath.Join(n.Dir(), "real.sock")} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	for _, s := range []string{"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"} {
		if err := n.WriteSysctl(s, "0"); err != nil {
			errs = append(errs, err)
		}
	}
	// tailscaled removes its TUN when it exits; make sure.
	n.Exec(ctx, "ip", "link", "del", lab.TUNName)
	return errors.Join(errs...)
}

// supervisorPid is the supervisor's own pid: `ip netns exec` and the
// runner script exec it, so it is the pid the lab started.
func (s *subject) supervisorPid() int { return s.proc.Pid() }

// tailscaledPid finds the tailscaled process in the node.
func (s *subject) tailscaledPid() (int, error) {
	procs, err := s.node.Processes()
	if err != nil {
		return 0, err
	}
	for pid, comm := range procs {
		if comm == "tailscaled" {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no tailscaled in %s", s.node.Name())
}

// logTail is the end of the supervisor's log, for error messages.
func (s *subject) logTail(lines int) string {
	if s.proc == nil {
		return ""
	}
	all := strings.Split(strings.TrimRight(s.proc.Log(), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}
