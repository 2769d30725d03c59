//go:build linux

package supervisor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The reaper tests make the test process a child subreaper, so that orphans
// are re-parented to it as they would be to PID 1. They do not call
// t.Parallel: a running Reaper reaps every child of the process that was not
// Spawned, so it must not overlap with the other tests, which run in
// parallel after these.

// startReaper makes the test process a subreaper and runs a Reaper until
// the test ends.
func startReaper(t *testing.T, logs *logBuffer) *Reaper {
	t.Helper()
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatalf("prctl(PR_SET_CHILD_SUBREAPER): %v", err)
	}
	r := NewReaper(WithReaperLogger(logs.logger()))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0); err != nil {
			t.Errorf("prctl(PR_SET_CHILD_SUBREAPER, 0): %v", err)
		}
	})
	return r
}

// waitReaped waits until pid no longer exists: this process (its
// subreaper) reaped it.
func waitReaped(t *testing.T, pid int) {
	t.Helper()
	eventually(t, fmt.Sprintf("orphan %d reaped (state %q)", pid, processState(pid)), func() bool {
		return processState(pid) == ""
	})
}

func parsePids(t *testing.T, out, prefix string) []int {
	t.Helper()
	var pids []int
	for l := range strings.Lines(out) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), prefix+"="); ok {
			pid, err := strconv.Atoi(v)
			if err != nil {
				t.Fatalf("bad line %q", l)
			}
			pids = append(pids, pid)
		}
	}
	return pids
}

func TestSiginfoLayout(t *testing.T) {
	want := uintptr(16)
	if unsafe.Sizeof(uintptr(0)) == 4 {
		want = 12
	}
	if got := unsafe.Offsetof(sigchldInfo{}.Pid); got != want {
		t.Errorf("si_pid offset = %d, want %d", got, want)
	}
	if unsafe.Sizeof(sigchldInfo{}) > unsafe.Sizeof(unix.Siginfo{}) {
		t.Error("sigchldInfo larger than unix.Siginfo")
	}
}

func TestReaperReapsOrphans(t *testing.T) {
	var logs logBuffer
	r := startReaper(t, &logs)

	cmd := exec.Command(os.Args[0])
	cmd.Env = helperEnv("orphans", "HELPER_ORPHANS=3", "HELPER_EXIT=5")
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = os.Stderr
	pid, err := r.Spawn(func() (int, error) {
		if err := cmd.Start(); err != nil {
			return 0, err
		}
		return cmd.Process.Pid, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	r.Release(pid)
	// The spawned child's status reached its owner: not stolen.
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 5 {
		t.Fatalf("Wait = %v, want exit status 5", err)
	}
	orphans := parsePids(t, out.String(), "orphan")
	if len(orphans) != 3 {
		t.Fatalf("orphans = %v, want 3", orphans)
	}
	for _, o := range orphans {
		waitReaped(t, o)
	}
	// The count and the record follow wait4, so a pid can be gone a moment
	// before either is written: wait for them.
	deadline := time.Now().Add(5 * time.Second)
	for r.Reaped() < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("Reaped() = %d, want at least 3", r.Reaped())
		}
		time.Sleep(10 * time.Millisecond)
	}
	for {
		reaped := 0
		for _, rec := range logs.records(t) {
			if rec["msg"] == "reaped orphaned process" && rec["component"] == "reaper" {
				reaped++
			}
		}
		if reaped >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d reap records logged, want at least 3", reaped)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestReaperLeavesExemptZombie makes a Spawned child a zombie before its
// owner waits, has a SIGCHLD arrive meanwhile, and checks that the owner
// still gets the status and that reaping resumes after Release.
func TestReaperLeavesExemptZombie(t *testing.T) {
	var logs logBuffer
	r := startReaper(t, &logs)

	owned := exec.Command(os.Args[0])
	owned.Env = helperEnv("crash", "HELPER_EXIT=7")
	pid, err := r.Spawn(func() (int, error) {
		if err := owned.Start(); err != nil {
			return 0, err
		}
		return owned.Process.Pid, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	waitExited(pid) // a zombie now, which only Wait may reap

	// A child nobody waits for: its exit raises SIGCHLD, the reaper
	// sweeps while the owned zombie is there.
	stray := exec.Command(os.Args[0])
	stray.Env = helperEnv("crash", "HELPER_EXIT=0")
	if err := stray.Start(); err != nil {
		t.Fatal(err)
	}
	strayPid := stray.Process.Pid
	waitExited(strayPid)
	if err := unix.Kill(os.Getpid(), unix.SIGCHLD); err != nil {
		t.Fatal(err)
	}

	// A sweep, synchronous here (Run's is racing with it), must leave the
	// owned zombie alone.
	r.reapAll()
	if st := processState(pid); st != "Z" {
		t.Fatalf("owned child state %q after a sweep, want Z (a zombie left to its owner)", st)
	}

	err = owned.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 7 {
		t.Fatalf("Wait = %v, want exit status 7", err)
	}
	r.Release(pid)
	waitReaped(t, strayPid)
}

// TestSupervisorWithReaper runs the supervisor with a Reaper over a
// tailscaled that leaves orphans behind and crashes: the supervisor still
// sees tailscaled's real exit status, and the orphans are reaped.
func TestSupervisorWithReaper(t *testing.T) {
	var logs logBuffer
	r := startReaper(t, &logs)
	h := newHarness(t, harnessConfig{
		mode:      "orphans",
		env:       []string{"HELPER_ORPHANS=2", "HELPER_EXIT=4"},
		fakeClock: true,
		reaper:    r,
	})
	h.run()
	for i, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second} {
		if d := h.nextTimer(); d != want {
			t.Fatalf("backoff %d = %s, want %s", i, d, want)
		}
		if st := h.store.Load().Supervisor; st.LastExit != "exit status 4" {
			t.Fatalf("LastExit = %q, want exit status 4 (the status must not be stolen)", st.LastExit)
		}
		if i < 2 {
			h.clock.Step(want)
		}
	}
	if err := h.stop(); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	// 4 starts (the first restart is immediate), 2 orphans each.
	orphans := h.pidsIn("orphan")
	if len(orphans) != 8 {
		t.Fatalf("orphans = %v, want 8", orphans)
	}
	for _, o := range orphans {
		waitReaped(t, o)
	}
}
