package tstest

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
)

// EnvVerbose, set to 1, streams the logs of the components to the test log
// as they come instead of only when a test fails.
const EnvVerbose = "TS_NODE_AGENT_TEST_VERBOSE"

// maxLogLines bounds what a testLog keeps.
const maxLogLines = 2000

// testLog keeps a component's recent log lines and shows them in the test
// log when the test fails. It is an io.Writer (for process output) and has
// a logger.Logf. It never writes to t after the test ended.
type testLog struct {
	t       testing.TB
	name    string
	verbose bool

	mu      sync.Mutex
	partial []byte
	lines   []string
	dropped int
	done    bool
}

func newTestLog(t testing.TB, name string) *testLog {
	l := &testLog{t: t, name: name, verbose: os.Getenv(EnvVerbose) == "1"}
	// Registered first, so it runs after the cleanups that stop the
	// component: the dump has the last lines and nothing logs later.
	t.Cleanup(func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.flushLocked()
		if t.Failed() && !l.verbose && len(l.lines) > 0 {
			var b strings.Builder
			if l.dropped > 0 {
				fmt.Fprintf(&b, "(%d earlier lines dropped)\n", l.dropped)
			}
			for _, s := range l.lines {
				b.WriteString(s)
				b.WriteByte('\n')
			}
			t.Logf("--- %s log ---\n%s", name, b.String())
		}
		l.done = true
	})
	return l
}

func (l *testLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		l.addLocked(string(l.partial[:i]))
		l.partial = l.partial[i+1:]
	}
	return len(p), nil
}

func (l *testLog) flushLocked() {
	if len(l.partial) > 0 {
		l.addLocked(string(l.partial))
		l.partial = nil
	}
}

func (l *testLog) addLocked(line string) {
	if l.done {
		return
	}
	if l.verbose {
		l.t.Logf("%s: %s", l.name, line)
	}
	l.lines = append(l.lines, line)
	if len(l.lines) > maxLogLines {
		n := len(l.lines) - maxLogLines
		l.lines = append(l.lines[:0:0], l.lines[n:]...)
		l.dropped += n
	}
}

func (l *testLog) logf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.addLocked(strings.TrimSuffix(fmt.Sprintf(format, args...), "\n"))
}

// String returns the kept lines.
func (l *testLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}
