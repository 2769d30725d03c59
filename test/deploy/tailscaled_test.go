package deploy_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ts-node-agent/ts-node-agent/internal/tstest"
)

// TestTailscaledVersion: the tailscaled (and tailscale CLI) that make
// builds report the pinned version, stamped, and not the unstamped
// "1.102.5-ERR-BuildInfo" of a build from the module cache.
func TestTailscaledVersion(t *testing.T) {
	want := strings.TrimPrefix(tstest.TailscaleVersion(), "v")
	tailscaled := tstest.TailscaledPath(t)
	cli := os.Getenv("TSNA_TEST_TAILSCALE_CLI")
	if cli == "" {
		cli = filepath.Join(filepath.Dir(tailscaled), "tailscale")
	}
	for _, argv := range [][]string{{tailscaled, "--version"}, {cli, "version"}} {
		out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
		if err != nil {
			t.Errorf("%s: %v\n%s", strings.Join(argv, " "), err, out)
			continue
		}
		first, _, _ := strings.Cut(string(out), "\n")
		if first != want || !strings.Contains(string(out), "long version: "+want+"\n") || strings.Contains(string(out), "ERR-BuildInfo") {
			t.Errorf("%s says %q, want %s (short and long; rebuild with make tailscaled)", strings.Join(argv, " "), out, want)
		}
	}
}
