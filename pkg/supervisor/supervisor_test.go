//go:build linux

package supervisor

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/utils/clock"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/ts-node-agent/ts-node-agent/internal/testenv"
	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

// waitTimeout bounds every wait of these tests; generous for -race on a
// loaded machine. Nothing waits for it to pass.
const waitTimeout = 60 * time.Second

// recordingClock is a fake clock that reports every timer the supervisor
// asks for (backoff delays, the shutdown timeout), after the timer exists,
// so that a test can Step exactly past it.
type recordingClock struct {
	*testingclock.FakeClock
	timers chan time.Duration
}

func newRecordingClock() *recordingClock {
	return &recordingClock{
		FakeClock: testingclock.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)),
		timers:    make(chan time.Duration, 100),
	}
}

func (c *recordingClock) NewTimer(d time.Duration) clock.Timer {
	t := c.FakeClock.NewTimer(d)
	c.timers <- d
	return t
}

var _ clock.WithTicker = (*recordingClock)(nil)

// harness runs one Supervisor over a fake tailscaled.
type harness struct {
	t      *testing.T
	sup    *Supervisor
	store  *snapshot.Store
	clock  *recordingClock // nil with the real clock
	logs   *logBuffer
	ready  chan int
	cancel context.CancelFunc
	done   chan error
}

type harnessConfig struct {
	mode      string
	env       []string // extra HELPER_* settings
	fakeClock bool
	opts      func(*Options)
	reaper    *Reaper
}

func newHarness(t *testing.T, cfg harnessConfig) *harness {
	t.Helper()
	dir := shortTempDir(t)
	opts := Options{
		Tailscaled:      os.Args[0],
		StateDir:        dir,
		Socket:          filepath.Join(dir, "ts.sock"),
		TUN:             UserspaceNetworking,
		ShutdownTimeout: DefaultShutdownTimeout,
		Backoff:         DefaultBackoff,
	}
	if cfg.opts != nil {
		cfg.opts(&opts)
	}
	h := &harness{
		t:     t,
		store: snapshot.New(time.Now(), snapshot.RoleNone),
		logs:  &logBuffer{},
		ready: make(chan int, 100),
		done:  make(chan error, 1),
	}
	env := helperEnv(cfg.mode, cfg.env...)
	if cfg.env != nil && cfg.mode == "" {
		env = cfg.env
	}
	options := []Option{
		WithLogger(h.logs.logger()),
		WithEnv(env),
		WithOnReady(func(pid int) { h.ready <- pid }),
		WithReaper(cfg.reaper),
	}
	if cfg.fakeClock {
		h.clock = newRecordingClock()
		h.store = snapshot.New(h.clock.Now(), snapshot.RoleNone)
		options = append(options, WithClock(h.clock))
	}
	sup, err := New(opts, h.store, options...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	h.sup = sup
	return h
}

func (h *harness) run() {
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.done <- h.sup.Run(ctx) }()
	h.t.Cleanup(func() {
		cancel()
		select {
		case <-h.done:
		case <-time.After(waitTimeout):
			h.t.Error("Run did not return")
		}
	})
}

// stop cancels Run's context and returns Run's result.
func (h *harness) stop() error {
	h.t.Helper()
	h.cancel()
	return h.result()
}

func (h *harness) result() error {
	h.t.Helper()
	select {
	case err := <-h.done:
		h.done <- err // for Cleanup
		return err
	case <-time.After(waitTimeout):
		h.t.Fatal("Run did not return")
		return nil
	}
}

// waitReady returns the pid of the next start whose socket came up.
func (h *harness) waitReady() int {
	h.t.Helper()
	select {
	case pid := <-h.ready:
		return pid
	case err := <-h.done:
		h.t.Fatalf("Run returned %v before tailscaled was ready", err)
	case <-time.After(waitTimeout):
		h.t.Fatal("tailscaled socket never ready")
	}
	return 0
}

// nextTimer returns the duration of the next timer the supervisor creates.
func (h *harness) nextTimer() time.Duration {
	h.t.Helper()
	select {
	case d := <-h.clock.timers:
		return d
	case err := <-h.done:
		h.t.Fatalf("Run returned %v while a timer was expected", err)
	case <-time.After(waitTimeout):
		h.t.Fatal("the supervisor created no timer")
	}
	return 0
}

// waitState waits until the published supervisor state satisfies ok.
func (h *harness) waitState(what string, ok func(snapshot.Supervisor) bool) snapshot.Supervisor {
	h.t.Helper()
	deadline := time.After(waitTimeout)
	for {
		changed := h.store.Changed()
		if s := h.store.Load().Supervisor; ok(s) {
			return s
		}
		select {
		case <-changed:
		case <-deadline:
			h.t.Fatalf("supervisor state never %s; last: %+v", what, h.store.Load().Supervisor)
		}
	}
}

// childLines returns the messages tailscaled printed, as forwarded.
func (h *harness) childLines() []string {
	var out []string
	for _, r := range byComponent(h.logs.records(h.t), "tailscaled") {
		out = append(out, r["msg"].(string))
	}
	return out
}

// pidsIn returns the pids of the child's "<prefix>=<pid>" output lines.
func (h *harness) pidsIn(prefix string) []int {
	var pids []int
	for _, l := range h.childLines() {
		if v, ok := strings.CutPrefix(l, prefix+"="); ok {
			pid, err := strconv.Atoi(v)
			if err != nil {
				h.t.Fatalf("bad line %q", l)
			}
			pids = append(pids, pid)
		}
	}
	return pids
}

// processState returns the state letter of pid from /proc ("R", "S",
// "Z", ...) or "" if there is no such process.
func processState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	// pid (comm) state ...; comm may contain spaces and parentheses.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+3 > len(s) {
		return ""
	}
	return s[i+2 : i+3]
}

// eventually polls cond until it holds or waitTimeout passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(waitTimeout)
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("timed out waiting: %s", what)
		}
	}
}

// assertGone checks that Run left no process behind: pid was reaped.
func assertGone(t *testing.T, pid int) {
	t.Helper()
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("kill(%d, 0) = %v, want ESRCH: tailscaled left behind (state %q)", pid, err, processState(pid))
	}
}

// notRunning reports whether pid is dead: gone, or a zombie waiting for a
// parent that is not this supervisor.
func notRunning(pid int) bool {
	s := processState(pid)
	return s == "" || s == "Z" || s == "X"
}

func TestRunForwardsOutput(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessConfig{mode: "print"})
	h.run()
	h.waitReady()
	if err := h.stop(); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	recs := h.logs.records(t)
	var got []string
	streams := map[string]string{}
	for _, r := range byComponent(recs, "tailscaled") {
		msg := r["msg"].(string)
		if r["level"] != "INFO" {
			t.Errorf("tailscaled record at level %v, want INFO: %.80v", r["level"], r)
		}
		if r["truncated"] == true {
			msg = fmt.Sprintf("<truncated %d>", len(msg))
		}
		got = append(got, msg)
		streams[msg] = r["stream"].(string)
	}
	want := []string{"line one", "crlf line", fmt.Sprintf("<truncated %d>", MaxLineBytes), "after long", "tail without newline"}
	var stdout []string
	for _, m := range got {
		if streams[m] == "stdout" {
			stdout = append(stdout, m)
		}
	}
	if strings.Join(stdout, "|") != strings.Join(want, "|") {
		t.Errorf("forwarded stdout lines = %q, want %q", stdout, want)
	}
	if streams["stderr line"] != "stderr" {
		t.Errorf("stderr line forwarded with stream %q, want stderr (all: %q)", streams["stderr line"], got)
	}
	if len(byComponent(recs, "supervisor")) == 0 {
		t.Error("no record with component=supervisor")
	}
}

func TestStopSIGTERM(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		mode, exit string
	}{
		{"run", "exit status 0"},               // exits 0 on SIGTERM
		{"term-default", "signal: terminated"}, // dies by SIGTERM
	} {
		t.Run(tc.mode, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, harnessConfig{mode: tc.mode})
			h.run()
			pid := h.waitReady()
			if s := h.store.Load().Supervisor; !s.Running || s.PID != pid || !s.DownSince.IsZero() || s.StartedAt.IsZero() {
				t.Errorf("state while running = %+v, want Running with pid %d", s, pid)
			}
			if err := h.stop(); err != nil {
				t.Fatalf("Run = %v, want nil", err)
			}
			assertGone(t, pid)
			s := h.store.Load().Supervisor
			if s.Running || s.PID != 0 || s.DownSince.IsZero() || s.LastExit != tc.exit || s.Restarts != 0 {
				t.Errorf("state after stop = %+v, want stopped with LastExit %q, no restart", s, tc.exit)
			}
		})
	}
}

func TestStopReportsExitStatus(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessConfig{mode: "term-exit", env: []string{"HELPER_EXIT=3"}})
	h.run()
	pid := h.waitReady()
	err := h.stop()
	if err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Fatalf("Run = %v, want an error with exit status 3", err)
	}
	assertGone(t, pid)
	if s := h.store.Load().Supervisor; s.LastExit != "exit status 3" {
		t.Errorf("LastExit = %q, want exit status 3", s.LastExit)
	}
}

func TestStopKillsProcessGroupAfterTimeout(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessConfig{
		mode:      "ignore-term",
		env:       []string{"HELPER_GRANDCHILD=1"},
		fakeClock: true,
		opts:      func(o *Options) { o.ShutdownTimeout = 7 * time.Second },
	})
	h.run()
	pid := h.waitReady()
	h.cancel()
	if d := h.nextTimer(); d != 7*time.Second {
		t.Fatalf("timer %s after SIGTERM, want the shutdown timeout 7s", d)
	}
	select {
	case err := <-h.done:
		t.Fatalf("Run returned %v before the shutdown timeout", err)
	default:
	}
	h.clock.Step(7 * time.Second)
	err := h.result()
	if err == nil || !strings.Contains(err.Error(), "did not exit within 7s of SIGTERM") {
		t.Fatalf("Run = %v, want an error saying tailscaled was killed", err)
	}
	assertGone(t, pid)
	if s := h.store.Load().Supervisor; s.Running || s.LastExit != "signal: killed" {
		t.Errorf("state = %+v, want stopped, LastExit signal: killed", s)
	}
	gc := h.pidsIn("grandchild")
	if len(gc) != 1 {
		t.Fatalf("grandchild pids = %v, want one", gc)
	}
	// Same process group, so SIGKILLed with tailscaled; its parent is
	// gone, so it is reaped by init (or a zombie of a subreaper).
	eventually(t, fmt.Sprintf("grandchild %d killed", gc[0]), func() bool { return notRunning(gc[0]) })
}

func TestRestartBackoffNoStorm(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessConfig{mode: "crash", env: []string{"HELPER_EXIT=1"}, fakeClock: true})
	h.run()
	s := time.Second
	// The first restart is immediate (no timer); then the backoff grows.
	want := []time.Duration{s, 2 * s, 4 * s, 8 * s, 16 * s, 30 * s, 30 * s}
	for i, w := range want {
		d := h.nextTimer()
		if d != w {
			t.Fatalf("backoff %d = %s, want %s (all want %v)", i, d, w, want)
		}
		// One start per elapsed backoff, not more.
		st := h.store.Load().Supervisor
		if st.Running || st.Restarts != uint64(i+1) || st.LastExit != "exit status 1" || st.DownSince.IsZero() {
			t.Fatalf("state after crash %d = %+v, want down, %d restarts, exit status 1", i, st, i+1)
		}
		if i < len(want)-1 {
			h.clock.Step(d)
		}
	}
	if err := h.stop(); err != nil {
		t.Fatalf("Run stopped during backoff = %v, want nil", err)
	}
	starts, crashes := 0, 0
	for _, r := range byComponent(h.logs.records(t), "supervisor") {
		if r["msg"] == "tailscaled started" {
			starts++
		}
	}
	for _, l := range h.childLines() {
		if l == "crashing" {
			crashes++
		}
	}
	if starts != len(want)+1 || crashes != len(want)+1 {
		t.Errorf("%d starts and %d crash outputs logged, want %d each", starts, crashes, len(want)+1)
	}
	if st := h.store.Load().Supervisor; st.Restarts != uint64(len(want)) {
		t.Errorf("Restarts = %d, want %d", st.Restarts, len(want))
	}
}

func TestRestartAfterKillAndBackoffReset(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessConfig{mode: "run", fakeClock: true})
	h.run()

	kill := func(pid int) {
		t.Helper()
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	expectRestart := func(wantDelay time.Duration, restarts uint64) {
		t.Helper()
		if d := h.nextTimer(); d != wantDelay {
			t.Fatalf("backoff = %s, want %s", d, wantDelay)
		}
		st := h.store.Load().Supervisor
		if st.Running || st.LastExit != "signal: killed" || st.Restarts != restarts {
			t.Fatalf("state after kill = %+v, want down, signal: killed, %d restarts", st, restarts)
		}
		h.clock.Step(wantDelay)
	}

	noTimer := func(when string) {
		t.Helper()
		if n := len(h.clock.timers); n != 0 {
			t.Fatalf("%s: %d backoff timers, want an immediate restart", when, n)
		}
	}

	pid1 := h.waitReady()
	kill(pid1)
	pid2 := h.waitReady() // the first restart is immediate
	noTimer("first kill")
	if pid2 == pid1 {
		t.Fatal("same pid after restart")
	}
	if st := h.store.Load().Supervisor; !st.Running || st.PID != pid2 || st.Restarts != 1 {
		t.Fatalf("state after restart = %+v, want running pid %d, 1 restart", st, pid2)
	}
	kill(pid2)
	expectRestart(time.Second, 1) // quick crash: the backoff begins

	pid3 := h.waitReady()
	h.clock.Step(61 * time.Second) // stable for longer than ResetAfter
	// The heartbeat ticker fired during that minute.
	eventually(t, "heartbeat at the fake now", func() bool {
		return h.store.Load().Heartbeats[HeartbeatName].Equal(h.clock.Now())
	})
	kill(pid3)
	pid4 := h.waitReady() // reset: immediate again
	noTimer("kill after a stable run")
	if err := h.stop(); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	for _, pid := range []int{pid1, pid2, pid3, pid4} {
		assertGone(t, pid)
	}
	if st := h.store.Load().Supervisor; st.Restarts != 3 {
		t.Errorf("Restarts = %d, want 3", st.Restarts)
	}
}

func TestStopDuringBackoff(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessConfig{mode: "crash", fakeClock: true})
	h.run()
	h.nextTimer()
	if err := h.stop(); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
}

func TestFirstStartFails(t *testing.T) {
	t.Parallel()
	dir := shortTempDir(t)
	notFound := filepath.Join(dir, "missing")
	badInterp := filepath.Join(dir, "bad")
	if err := os.WriteFile(badInterp, []byte("#!/nonexistent/interpreter\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ path, want string }{
		{notFound, "find tailscaled"},
		{badInterp, "start tailscaled"},
	} {
		h := newHarness(t, harnessConfig{mode: "run", opts: func(o *Options) { o.Tailscaled = tc.path }})
		h.run()
		err := h.result()
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.path) {
			t.Errorf("Run with %s = %v, want an error with %q and the path", tc.path, err, tc.want)
		}
		if st := h.store.Load().Supervisor; st.Running || st.Restarts != 0 || st.DownSince.IsZero() {
			t.Errorf("state = %+v, want down since start, no restart", st)
		}
	}
}

func TestRunTwice(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessConfig{mode: "run"})
	h.run()
	h.waitReady()
	if err := h.sup.Run(context.Background()); err == nil {
		t.Error("second Run = nil, want an error")
	}
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	if _, err := New(Options{}, snapshot.New(time.Now(), snapshot.RoleNone)); err == nil {
		t.Error("New with zero Options = nil error")
	}
	o := validOptions()
	if _, err := New(o, nil); err == nil {
		t.Error("New with nil store = nil error")
	}
}

func TestChildEnvDropsAuthKey(t *testing.T) {
	t.Parallel()
	got := childEnv([]string{"PATH=/bin", "TS_AUTHKEY=tskey-secret", "TS_AUTH_KEY=tskey-2", "TS_AUTHKEY_FILE=x", "TS_DEBUG=1"})
	want := "PATH=/bin TS_AUTHKEY_FILE=x TS_DEBUG=1"
	if strings.Join(got, " ") != want {
		t.Errorf("childEnv = %q, want %q", got, want)
	}
}

// TestAgentKilledTakesTailscaledDown SIGKILLs a process running a
// Supervisor (no defer runs) and checks that its tailscaled dies anyway:
// Pdeathsig.
func TestAgentKilledTakesTailscaledDown(t *testing.T) {
	t.Parallel()
	dir := shortTempDir(t)
	agent := exec.Command(os.Args[0])
	agent.Env = helperEnv("agent", "HELPER_DIR="+dir)
	var agentLog logBuffer
	agent.Stderr = &agentLog
	defer func() {
		if t.Failed() {
			t.Logf("agent stderr:\n%s", agentLog.String())
		}
	}()
	out, err := agent.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { agent.Process.Kill(); agent.Wait() })
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "child=") {
				line <- sc.Text()
			}
		}
	}()
	var child int
	select {
	case l := <-line:
		child, _ = strconv.Atoi(strings.TrimPrefix(l, "child="))
	case <-time.After(waitTimeout):
		t.Fatal("agent never reported its tailscaled")
	}
	if processState(child) == "" {
		t.Fatalf("tailscaled %d not running", child)
	}
	if err := agent.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	agent.Wait()
	eventually(t, fmt.Sprintf("tailscaled %d to die with its agent", child), func() bool { return notRunning(child) })
}

// realTailscaled finds the tailscaled built by `make tailscaled`.
func realTailscaled(t *testing.T) string {
	if p := os.Getenv("TS_NODE_AGENT_TAILSCALED"); p != "" {
		return p
	}
	matches, _ := filepath.Glob("../../bin/tailscale-*/tailscaled")
	if len(matches) > 0 {
		p, err := filepath.Abs(matches[len(matches)-1])
		if err == nil {
			return p
		}
	}
	msg := "real tailscaled not found: set TS_NODE_AGENT_TAILSCALED or run `make tailscaled` (make test does)"
	testenv.SkipOrFail(t, "%s", msg)
	return ""
}

// TestRealTailscaled runs the real tailscaled (userspace networking, no
// control server needed): socket readiness, restart after kill -9, clean
// stop on SIGTERM.
func TestRealTailscaled(t *testing.T) {
	t.Parallel()
	bin := realTailscaled(t)
	h := newHarness(t, harnessConfig{
		env: []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")},
		opts: func(o *Options) {
			o.Tailscaled = bin
			o.ExtraArgs = []string{"--port=0", "--no-logs-no-support"}
			o.ShutdownTimeout = 30 * time.Second
			o.Backoff.Initial = 50 * time.Millisecond
		},
	})
	h.run()
	pid1 := h.waitReady()
	if err := syscall.Kill(pid1, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	pid2 := h.waitReady()
	st := h.store.Load().Supervisor
	if !st.Running || st.PID != pid2 || st.Restarts != 1 || st.LastExit != "signal: killed" {
		t.Errorf("state after restart = %+v, want running pid %d, 1 restart, LastExit signal: killed", st, pid2)
	}
	if err := h.stop(); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	assertGone(t, pid1)
	assertGone(t, pid2)
	if len(h.childLines()) == 0 {
		t.Error("no tailscaled output forwarded")
	}
}
