package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/ts-node-agent/ts-node-agent/test/lab"
)

// TestDemoOnce runs `demo --once` as `make demo DEMO_ARGS=--once` does: it
// must narrate the egress switch, exit 0 and leave nothing behind.
func TestDemoOnce(t *testing.T) {
	lab.SkipUnlessRoot(t)
	if _, err := lab.AgentBinary(); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "run", ".", "--once")
	cmd.Env = os.Environ()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("demo --once: %v\n%s", err, out)
	}
	for _, want := range []string{
		"worker1 -> internet seen as 198.18.0.11 (its own address)",
		"[-]exit-routes failed: exit routes advertised but not approved by the control server",
		"worker1 -> internet seen as 198.18.0.10: exit1's address (was 198.18.0.11)",
		"pod     -> internet seen as 198.18.0.11 (worker1's address: the CNI's masquerade)",
		"pod     -> internet seen as 198.18.0.10: exit1's address too (was 198.18.0.11)",
		"[+]egress-ip-pod ok",
		"ts_node_agent_exit_node_info{",
		"nothing left behind",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("demo output:\n%s", out)
	}
}
