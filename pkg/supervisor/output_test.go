package supervisor

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
)

// logBuffer collects JSON log records; safe for concurrent use.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewJSONHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// records returns the records logged so far; it fails t on a line that is
// not one JSON object, or that repeats a key.
func (l *logBuffer) records(t *testing.T) []map[string]any {
	t.Helper()
	text := l.String()
	var out []map[string]any
	for line := range strings.Lines(text) {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line is not JSON: %v: %q", err, line)
		}
		if n := strings.Count(line, `"component":`); n > 1 {
			t.Errorf("log line has %d component keys: %q", n, line)
		}
		out = append(out, m)
	}
	return out
}

// byComponent returns the messages of the records with component=c.
func byComponent(recs []map[string]any, c string) []map[string]any {
	var out []map[string]any
	for _, r := range recs {
		if r["component"] == c {
			out = append(out, r)
		}
	}
	return out
}

func TestForwardLines(t *testing.T) {
	long := strings.Repeat("y", MaxLineBytes*2+5)
	in := "one\n" + "two\r\n" + "\n" + long + "\n" + "three\n" + "tail"
	var buf logBuffer
	forwardLines(strings.NewReader(in), buf.logger().With("component", "tailscaled"), "stderr")
	recs := buf.records(t)
	var msgs []string
	for _, r := range recs {
		if r["level"] != "INFO" || r["component"] != "tailscaled" || r["stream"] != "stderr" {
			t.Errorf("record %v: want level INFO, component tailscaled, stream stderr", r)
		}
		msgs = append(msgs, r["msg"].(string))
	}
	want := []string{"one", "two", long[:MaxLineBytes], "three", "tail"}
	if len(msgs) != len(want) {
		t.Fatalf("got %d records, want %d: %.80q", len(msgs), len(want), msgs)
	}
	for i := range want {
		if msgs[i] != want[i] {
			t.Errorf("record %d = %.60q (len %d), want %.60q (len %d)", i, msgs[i], len(msgs[i]), want[i], len(want[i]))
		}
	}
	if recs[2]["truncated"] != true {
		t.Errorf("long line record lacks truncated=true: %.100v", recs[2])
	}
	if _, ok := recs[0]["truncated"]; ok {
		t.Errorf("short line record has truncated: %v", recs[0])
	}
}
