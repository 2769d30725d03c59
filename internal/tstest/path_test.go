package tstest

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// recordTB records how TailscaledPath ends a test instead of ending it.
type recordTB struct {
	testing.TB
	how, msg string
}

func (r *recordTB) Helper() {}
func (r *recordTB) Skip(args ...any) {
	r.how, r.msg = "skip", fmt.Sprint(args...)
	runtime.Goexit()
}
func (r *recordTB) Fatal(args ...any) {
	r.how, r.msg = "fatal", fmt.Sprint(args...)
	runtime.Goexit()
}
func (r *recordTB) Fatalf(format string, args ...any) {
	r.how, r.msg = "fatal", fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func tailscaledPath(t *testing.T) (path string, r *recordTB) {
	r = &recordTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		path = TailscaledPath(r)
	}()
	<-done
	return path, r
}

func TestTailscaledPath(t *testing.T) {
	repo := t.TempDir()
	if err := os.WriteFile(filepath.Join(repo, "go.mod"), []byte("module x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(repo, "pkg", "a")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Chdir(sub)
	t.Setenv(EnvTailscaled, "")

	t.Setenv("CI", "")
	if _, r := tailscaledPath(t); r.how != "skip" || !strings.Contains(r.msg, "make tailscaled") {
		t.Errorf("no binary, not CI: %s %q; want a skip", r.how, r.msg)
	}
	t.Setenv("CI", "true")
	if _, r := tailscaledPath(t); r.how != "fatal" {
		t.Errorf("no binary, CI=true: %s %q; want a failure", r.how, r.msg)
	}

	bin := filepath.Join(repo, "bin", "tailscale-"+TailscaleVersion(), "tailscaled")
	os.MkdirAll(filepath.Dir(bin), 0o755)
	os.WriteFile(bin, nil, 0o755)
	if p, r := tailscaledPath(t); p != bin || r.how != "" {
		t.Errorf("repo binary: %q, %s %q", p, r.how, r.msg)
	}

	t.Setenv(EnvTailscaled, filepath.Join(repo, "nope"))
	if _, r := tailscaledPath(t); r.how != "fatal" || !strings.Contains(r.msg, EnvTailscaled) {
		t.Errorf("bad $%s: %s %q; want a failure naming it", EnvTailscaled, r.how, r.msg)
	}
	t.Setenv(EnvTailscaled, bin)
	if p, _ := tailscaledPath(t); p != bin {
		t.Errorf("$%s: got %q", EnvTailscaled, p)
	}
}
