package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ts-node-agent/ts-node-agent/internal/testenv"
	"github.com/ts-node-agent/ts-node-agent/test/cluster"
)

// TestDemoClusterOnce runs `demo-cluster --once` as `make demo-cluster
// DEMO_ARGS=--once` does: it must narrate the pod's egress switch on the
// real cluster, exit 0 and leave nothing behind.
func TestDemoClusterOnce(t *testing.T) {
	if err := cluster.CheckHost(); err != nil {
		testenv.SkipOrFail(t, "real cluster: %v", err)
	}
	image, archive := os.Getenv("TSNA_TEST_IMAGE"), os.Getenv("TSNA_TEST_IMAGE_ARCHIVE")
	if image == "" || archive == "" {
		testenv.SkipOrFail(t, "TSNA_TEST_IMAGE and TSNA_TEST_IMAGE_ARCHIVE are not set: run through `make test`, which builds the image")
	}
	bin := filepath.Join(t.TempDir(), "demo-cluster")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	// Ended by SIGINT (the demo then tears everything down) if it hangs.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--once", "--image", image, "--archive", archive)
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 2 * time.Minute
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("demo-cluster --once: %v\n%s", err, out)
	}
	for _, want := range []string{
		"3 nodes Ready",
		"pod egress -> internet seen as 198.18.130.2 (its own address)",
		"every agent pod Ready through kubelet's startup and readiness probes",
		"ts-node-agent-",
		"pod egress -> internet seen as 198.18.0.11: exit1's address (was 198.18.130.2)",
		"[+]egress-ip-pod ok",
		`ts_node_agent_egress_ip_info{from="pod",ip="198.18.0.11"} 1`,
		"ExitNodeSwitched",
		"nothing left behind",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("demo-cluster output lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("demo-cluster output:\n%s", out)
	}
}
