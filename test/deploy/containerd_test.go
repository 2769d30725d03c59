package deploy_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ts-node-agent/ts-node-agent/internal/testenv"
	"github.com/ts-node-agent/ts-node-agent/internal/tstest"
)

// TestImageRunsInContainerd imports the image `make image-oci` builds (no
// engine, no registry) into a real containerd with runc, the runtime of a
// node, and runs it: containerd tags it by the index annotation, and the
// image's tailscaled reports the stamped version and the agent its own
// config error (exit 2). containerd runs in a private mount namespace with
// a tmpfs on /run (containerd 1.6 hard-codes /run/containerd) and its root
// and socket in a temporary directory, so nothing stays on the host.
func TestImageRunsInContainerd(t *testing.T) {
	var missing []string
	for _, bin := range []string{"containerd", "ctr", "runc", "unshare"} {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, bin)
		}
	}
	switch {
	case os.Geteuid() != 0:
		t.Skip("needs root to run containerd (make test runs as root in CI)")
	case len(missing) > 0:
		testenv.SkipOrFail(t, "missing %v: apt-get install containerd (.ci/run does)", missing)
	}
	root := repoRoot(t)
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatal(err)
	}
	agent, tsbin := imageBinaries(t, root)
	if b, err := os.ReadFile(agent); err != nil || strings.HasPrefix(string(b), "#!/bin/false") {
		t.Fatalf("the real binaries are needed (make build): %s is a stand-in (%v)", agent, err)
	}
	tmp := t.TempDir()
	const image = "registry.example.com/ts-node-agent:v0.0.0-ctr"
	vars := map[string]string{"VERSION": "v0.0.0-ctr", "REVISION": "0123456789abcdef", "TS_VERSION": tstest.TailscaleVersion()}
	digest, archive, _ := makeImageOCI(t, root, goBin, agent, tsbin, tmp, 1, image, vars)

	dir := filepath.Join(tmp, "containerd")
	config := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), filepath.Join(dir, "containerd.sock"))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	script := `set -eu
mount -t tmpfs tmpfs /run
containerd --config "$D/config.toml" >"$D/containerd.log" 2>&1 &
pid=$!
trap 'kill $pid; wait $pid || true' EXIT
i=0; while [ ! -S "$D/containerd.sock" ]; do i=$((i+1)); [ $i -lt 200 ] || { echo "containerd did not start"; exit 1; }; sleep 0.05; done
ctr() { command ctr --address "$D/containerd.sock" -n tsna-test "$@"; }
ctr images import "$ARCHIVE" >/dev/null
echo "images:"; ctr images ls
echo "tailscaled:"; ctr run --rm "$IMAGE" tsna-tailscaled /usr/local/bin/tailscaled --version
echo "agent:"; set +e; ctr run --rm "$IMAGE" tsna-agent /usr/local/bin/ts-node-agent --role=bogus 2>&1; echo "agent exit $?"
`
	// ctr run puts its containers in the cgroup /<namespace>/<id>, and
	// removes only the container's own.
	t.Cleanup(func() {
		dirs, _ := filepath.Glob("/sys/fs/cgroup/*/tsna-test")
		for _, d := range dirs {
			os.Remove(d)
		}
	})
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", script)
	cmd.Env = append(os.Environ(), "D="+dir, "ARCHIVE="+archive, "IMAGE="+image)
	out, err := cmd.CombinedOutput()
	t.Logf("containerd:\n%s", out)
	if err != nil {
		if log, rerr := os.ReadFile(filepath.Join(dir, "containerd.log")); rerr == nil {
			t.Logf("containerd log:\n%s", log)
		}
		t.Fatalf("containerd: %v", err)
	}
	text := string(out)
	for _, want := range []string{
		image + " ", // tagged by io.containerd.image.name
		digest,      // the digest make printed
		"\n" + strings.TrimPrefix(tstest.TailscaleVersion(), "v") + "\n", // tailscaled --version, stamped
		`invalid --role "bogus"`,
		"agent exit 2",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("containerd output lacks %q", want)
		}
	}
	if strings.Contains(text, "ERR-BuildInfo") {
		t.Error("tailscaled in the image is not version-stamped")
	}
}
