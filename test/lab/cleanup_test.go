package lab

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

const helperEnv = "TS_NODE_AGENT_LAB_HELPER"

// TestHelperProcess is not a test: the tests below run the test binary
// again with helperEnv set to a mode, to own a lab in a process they can
// kill, interrupt or watch panic. It prints "lab <id>" once the lab is up.
func TestHelperProcess(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		return // not a helper run
	}
	l := NewForTest(t, Options{Nodes: []string{"a", "b"}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := l.Node("a").Start([]string{"sleep", "600"}, nil); err != nil {
		t.Fatal(err)
	}
	if mode == "leak" {
		// A pod namespace, a grandchild that outlives its parent with no
		// parent-death signal (only the namespace scan can find it), and
		// a stray link in the test's own namespace.
		if _, err := l.Node("a").AddPod(PodOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := l.Node("b").Exec(ctx, "sh", "-c", "setsid sleep 600 >/dev/null 2>&1 </dev/null &"); err != nil {
			t.Fatal(err)
		}
		stray := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: Prefix + l.ID() + "-x0"}, PeerName: Prefix + l.ID() + "-x1"}
		if err := netlink.LinkAdd(stray); err != nil {
			t.Fatal(err)
		}
	}
	fmt.Printf("lab %s\n", l.ID())
	switch mode {
	case "panic":
		panic("helper panics with a lab up")
	case "leak", "interrupt":
		select {}
	}
}

// startHelper runs TestHelperProcess in mode and returns it with its lab id.
func startHelper(t *testing.T, mode string) (*exec.Cmd, string, *bufio.Reader) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.v")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	r := bufio.NewReader(stdout)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("helper %s: no lab id: %v", mode, err)
		}
		if id, ok := strings.CutPrefix(line, "lab "); ok {
			id = strings.TrimSpace(id)
			t.Logf("helper %s built lab %s", mode, id)
			return cmd, id, r
		}
	}
}

// TestTeardownOnPanicAndInterrupt: a test that panics, and a test binary
// that gets SIGINT (Ctrl-C), both leave nothing behind.
func TestTeardownOnPanicAndInterrupt(t *testing.T) {
	SkipUnlessRoot(t)
	for _, mode := range []string{"panic", "interrupt"} {
		t.Run(mode, func(t *testing.T) {
			cmd, id, r := startHelper(t, mode)
			if mode == "interrupt" {
				cmd.Process.Signal(os.Interrupt)
			}
			rest, _ := io.ReadAll(r)
			err := cmd.Wait()
			if err == nil {
				t.Fatalf("helper exited 0:\n%s", rest)
			}
			t.Logf("helper: %v", err)
			if mode == "panic" && !strings.Contains(string(rest), "helper panics with a lab up") {
				t.Errorf("helper output:\n%s", rest)
			}
			if mode == "interrupt" && !strings.Contains(string(rest), "tearing down 1 lab") {
				t.Errorf("helper output:\n%s", rest)
			}
			assertNothingLeft(t, id)
		})
	}
}

// TestCleanupStale leaks a lab by SIGKILLing the process that owns it,
// then checks that CleanupStale removes all of it while leaving a live lab
// alone.
func TestCleanupStale(t *testing.T) {
	live := NewForTest(t, Options{Nodes: []string{"live"}})

	cmd, id, _ := startHelper(t, "leak")

	// The helper's lab is alive: CleanupStale must leave it alone.
	if err := CleanupStale(t.Logf); err != nil {
		t.Fatalf("CleanupStale with a live helper: %v", err)
	}
	if names, _ := labNamespaces(id); len(names) != 4 {
		t.Fatalf("live helper lab touched: namespaces %v", names)
	}

	// Kill the owner the hard way: nothing of its lab is cleaned up.
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	names, _ := labNamespaces(id)
	if len(names) != 4 {
		t.Fatalf("after SIGKILL: namespaces %v, want 4 leaked (wan, a, b, a-pod)", names)
	}
	inodes := map[uint64]string{}
	for _, n := range names {
		ino, err := nsInode(filepath.Join(netnsRunDir, n))
		if err != nil {
			t.Fatal(err)
		}
		inodes[ino] = n
	}
	// The escaped sleep in b survives its owner's death.
	waitFor(t, 5*time.Second, "leaked process in the helper's lab", func() bool { return len(pidsInNamespaces(inodes)) > 0 })
	t.Logf("leaked: namespaces %v, processes %v", names, pidsInNamespaces(inodes))
	if _, err := netlink.LinkByName(Prefix + id + "-x0"); err != nil {
		t.Fatalf("stray link: %v", err)
	}

	if err := CleanupStale(t.Logf); err != nil {
		t.Fatalf("CleanupStale: %v", err)
	}
	assertNothingLeft(t, id)
	if left := pidsInNamespaces(inodes); len(left) > 0 {
		t.Errorf("processes left: %v", left)
	}
	if _, err := netlink.LinkByName(Prefix + id + "-x0"); err == nil {
		t.Errorf("stray link left")
	}
	if _, err := os.Stat(labDir(id)); !os.IsNotExist(err) {
		t.Errorf("lab dir left: %v", err)
	}

	// The live lab is untouched and works.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n := live.Node("live")
	if ip, err := n.EgressIP(ctx); err != nil || ip != n.Addr() {
		t.Fatalf("live lab after CleanupStale: %v, %v", ip, err)
	}
}

// TestNewFailureLeavesNothing: a New that fails half-way (here: its
// context ends while nodes are being created) removes what it built.
func TestNewFailureLeavesNothing(t *testing.T) {
	SkipUnlessRoot(t)
	var log syncBuffer
	logf := func(format string, args ...any) {
		fmt.Fprintf(&log, format+"\n", args...)
		t.Logf(format, args...)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	l, err := New(ctx, Options{Nodes: []string{"a", "b"}, Logf: logf})
	if err == nil {
		l.Close()
		t.Fatal("New with a cancelled context succeeded")
	}
	t.Logf("New: %v", err)
	_, rest, ok := strings.Cut(log.String(), "closing lab ")
	if !ok {
		t.Fatalf("no lab was built? log:\n%s", log.String())
	}
	id, _, _ := strings.Cut(rest, "\n")
	assertNothingLeft(t, id)
}
