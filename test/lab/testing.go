package lab

import (
	"bufio"
	"context"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ts-node-agent/ts-node-agent/internal/tstest"
)

// SkipUnlessRoot skips the test when it cannot create network namespaces.
func SkipUnlessRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces: run `sudo make test`")
	}
}

// NewForTest builds a lab for a test: it skips the test when not root,
// logs to t.Logf (unless opts.Logf is set), and closes the lab in
// t.Cleanup, which also runs when the test fails or panics. When the test
// failed, the tail of every process log and of the control log is logged
// first. A failure to close the lab fails the test. SIGINT and SIGTERM
// close the lab too, then kill the test binary. With the environment
// variable TSNA_LAB_KEEP=1 the lab directory (logs, state) is
// kept for inspection.
func NewForTest(t testing.TB, opts Options) *Lab {
	t.Helper()
	SkipUnlessRoot(t)
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	if os.Getenv("TSNA_LAB_KEEP") == "1" {
		opts.KeepDir = true
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := New(ctx, opts)
	if err != nil {
		t.Fatalf("lab: %v", err)
	}
	unregister := closeOnInterrupt(l)
	t.Cleanup(func() {
		defer unregister()
		if t.Failed() {
			l.DumpLogs(t.Logf, 80)
		}
		if err := l.Close(); err != nil {
			t.Errorf("lab: close: %v", err)
		}
	})
	return l
}

// interrupted tracks the labs of NewForTest, so that SIGINT (Ctrl-C of
// `go test`) or SIGTERM closes them before the test binary dies.
var interrupted struct {
	once sync.Once
	mu   sync.Mutex
	labs map[*Lab]bool
}

// closeOnInterrupt registers l; on SIGINT or SIGTERM every registered lab
// is closed, then the signal is re-raised with its default action.
func closeOnInterrupt(l *Lab) (unregister func()) {
	interrupted.once.Do(func() {
		interrupted.labs = map[*Lab]bool{}
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
		go func() {
			sig := <-ch
			interrupted.mu.Lock()
			labs := slices.Collect(maps.Keys(interrupted.labs))
			interrupted.mu.Unlock()
			fmt.Fprintf(os.Stderr, "lab: %v: tearing down %d lab(s)\n", sig, len(labs))
			var wg sync.WaitGroup
			for _, l := range labs {
				wg.Go(func() {
					if err := l.Close(); err != nil {
						fmt.Fprintf(os.Stderr, "lab: %v\n", err)
					}
				})
			}
			wg.Wait()
			signal.Reset(os.Interrupt, syscall.SIGTERM)
			syscall.Kill(os.Getpid(), sig.(syscall.Signal))
		}()
	})
	interrupted.mu.Lock()
	interrupted.labs[l] = true
	interrupted.mu.Unlock()
	return func() {
		interrupted.mu.Lock()
		delete(interrupted.labs, l)
		interrupted.mu.Unlock()
	}
}

// DumpLogs writes the last lines of every log file in the lab directory
// to logf (a test's t.Logf, typically on failure).
func (l *Lab) DumpLogs(logf func(format string, args ...any), lines int) {
	filepath.WalkDir(l.dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".log") {
			return nil
		}
		tail, err := tailFile(path, lines)
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(l.dir, path)
		logf("==== lab %s: last %d lines of %s ====\n%s", l.id, lines, rel, tail)
		return nil
	})
}

func tailFile(path string, n int) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var ring []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		ring = append(ring, sc.Text())
		if len(ring) > n {
			ring = ring[1:]
		}
	}
	return strings.Join(ring, "\n"), sc.Err()
}

// Binary finds a binary the Makefile builds: the path in the environment
// variable env if set (the Makefile exports TS_NODE_AGENT_TAILSCALED,
// TSNA_TEST_TAILSCALE_CLI, TSNA_TEST_AGENT_BIN), else name under the
// repository's bin/ directory (bin/NAME or bin/tailscale-*/NAME), found by
// walking up from the working directory to go.mod. The error says how to
// build it.
func Binary(env, name string) (string, error) {
	if p := os.Getenv(env); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("lab: %s=%s: %w (run `make build`)", env, p, err)
		}
		return p, nil
	}
	root, err := tstest.RepoRoot()
	if err != nil {
		return "", err
	}
	cands := []string{filepath.Join(root, "bin", name)}
	if v := tailscaleVersion(); v != "" {
		cands = append(cands, filepath.Join(root, "bin", "tailscale-"+v, name))
	} else if m, _ := filepath.Glob(filepath.Join(root, "bin", "tailscale-*", name)); len(m) == 1 {
		cands = append(cands, m[0])
	}
	for _, c := range cands {
		if fi, err := os.Stat(c); err == nil && !fi.IsDir() {
			return c, nil
		}
	}
	return "", fmt.Errorf("lab: %s not found (set %s or run `make build`)", name, env)
}

// TailscaledBinary is Binary("TS_NODE_AGENT_TAILSCALED", "tailscaled").
func TailscaledBinary() (string, error) { return Binary("TS_NODE_AGENT_TAILSCALED", "tailscaled") }

// TailscaleCLIBinary is Binary("TSNA_TEST_TAILSCALE_CLI", "tailscale").
func TailscaleCLIBinary() (string, error) {
	return Binary("TSNA_TEST_TAILSCALE_CLI", "tailscale")
}

// tailscaleVersion is the tailscale.com module version this binary was
// built with (the Makefile's bin/tailscale-VERSION directory).
func tailscaleVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	for _, d := range bi.Deps {
		if d.Path == "tailscale.com" {
			if d.Replace != nil {
				return d.Replace.Version
			}
			return d.Version
		}
	}
	return ""
}
