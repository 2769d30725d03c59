package tstest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"tailscale.com/client/local"
	"tailscale.com/types/key"

	"github.com/ts-node-agent/ts-node-agent/internal/testenv"
)

// EnvTailscaled names the tailscaled binary for tests (and is the agent's
// --tailscaled env var).
const EnvTailscaled = "TS_NODE_AGENT_TAILSCALED"

// fallbackTailscaleVersion is used when the build info does not say which
// tailscale.com version this module requires.
const fallbackTailscaleVersion = "v1.102.5"

// TailscaleVersion returns the tailscale.com module version this module is
// built with (the one `make tailscaled` builds tailscaled from).
func TailscaleVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "tailscale.com" {
				if d.Replace != nil && d.Replace.Version != "" {
					return d.Replace.Version
				}
				if d.Version != "" && d.Version != "(devel)" {
					return d.Version
				}
			}
		}
	}
	return fallbackTailscaleVersion
}

// RepoRoot returns the directory of the go.mod above the working directory.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// TailscaledPath returns the tailscaled binary to test with:
// $TS_NODE_AGENT_TAILSCALED, or bin/tailscale-<version>/tailscaled in the
// repository (`make tailscaled` builds it). Without one the test is skipped,
// except when CI=true, where it fails: CI must run the real thing.
func TailscaledPath(t testing.TB) string {
	t.Helper()
	if p := os.Getenv(EnvTailscaled); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("$%s=%s: %v", EnvTailscaled, p, err)
		}
		return p
	}
	var want string
	if root, err := RepoRoot(); err == nil {
		want = filepath.Join(root, "bin", "tailscale-"+TailscaleVersion(), "tailscaled")
		if _, err := os.Stat(want); err == nil {
			return want
		}
	}
	msg := fmt.Sprintf("no tailscaled binary: not at %s and $%s is not set; run `make tailscaled`", want, EnvTailscaled)
	testenv.SkipOrFail(t, "%s", msg)
	return ""
}

// TailscaledEnv returns the environment a tailscaled talking to c needs in
// tests: nothing leaves the machine, no port mapping, no waiting for a
// "real" network. Add it to the environment of whatever starts tailscaled
// (for example the agent under test).
func (c *Control) TailscaledEnv() []string {
	return []string{
		"TS_ASSUME_NETWORK_UP_FOR_TEST=1",
		"TS_DISABLE_PORTMAPPER=1",
		"TS_PANIC_IF_HIT_MAIN_CONTROL=1",
		"TS_DEBUG_PERMIT_HTTP_C2N=1",
		"TS_NETCHECK_GENERATE_204_URL=" + c.URL + "/generate_204",
	}
}

// TailscaledTestArgs are the tailscaled flags tests add to the usual state
// and socket flags: userspace networking (no root, no TUN), a random
// WireGuard port, no log uploads.
var TailscaledTestArgs = []string{"--tun=userspace-networking", "--port=0", "--no-logs-no-support"}

// Tailscaled is a tailscaled process for a test, with its own state
// directory and LocalAPI socket, that survives restarts (Kill, Start).
type Tailscaled struct {
	Name     string
	Binary   string
	StateDir string
	// Socket is the LocalAPI socket: a short path under /tmp, since unix
	// socket paths are limited to 108 bytes.
	Socket string
	// ExtraArgs are appended to Args; set them before Start.
	ExtraArgs []string

	t       testing.TB
	control *Control
	log     *testLog

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	death  *os.File // write end of TS_PARENT_DEATH_FD: tailscaled exits if we die
}

// NewTailscaled prepares a tailscaled named name for control c; it does not
// start it. The process is killed and its files removed when the test
// ends; its output goes to the test log if the test fails (or always with
// TS_NODE_AGENT_TEST_VERBOSE=1).
func NewTailscaled(t testing.TB, c *Control, name string) *Tailscaled {
	t.Helper()
	d := &Tailscaled{
		Name:     name,
		Binary:   TailscaledPath(t),
		StateDir: t.TempDir(),
		Socket:   SocketPath(t),
		t:        t,
		control:  c,
		log:      newTestLog(t, "tailscaled "+name),
	}
	t.Cleanup(d.Kill)
	return d
}

// SocketPath returns a fresh path for a unix socket, removed when the test
// ends. It is short (/tmp/tsna-NNN/ts.sock): t.TempDir paths can exceed
// the 108-byte limit of unix socket paths.
func SocketPath(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "tsna-")
	if err != nil {
		dir, err = os.MkdirTemp("", "tsna-")
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "ts.sock")
}

// Args returns tailscaled's arguments (without the binary).
func (d *Tailscaled) Args() []string {
	args := []string{"--statedir=" + d.StateDir, "--socket=" + d.Socket}
	args = append(args, TailscaledTestArgs...)
	return append(args, d.ExtraArgs...)
}

// Start starts tailscaled (again, with the same state, after Kill or Stop).
func (d *Tailscaled) Start() {
	d.t.Helper()
	if err := d.start(); err != nil {
		d.t.Fatalf("starting tailscaled %s: %v", d.Name, err)
	}
}

func (d *Tailscaled) start() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd != nil {
		return errors.New("already running")
	}
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	cmd := exec.Command(d.Binary, d.Args()...)
	cmd.Env = append(os.Environ(), d.control.TailscaledEnv()...)
	cmd.Env = append(cmd.Env, "TS_PARENT_DEATH_FD=3")
	cmd.ExtraFiles = []*os.File{r}
	cmd.Stdout = d.log
	cmd.Stderr = d.log
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		w.Close()
		return err
	}
	d.log.logf("started pid %d: %s %s", cmd.Process.Pid, d.Binary, strings.Join(d.Args(), " "))
	exited := make(chan struct{})
	go func() {
		err := cmd.Wait()
		d.log.logf("pid %d exited: %v", cmd.Process.Pid, err)
		close(exited)
	}()
	d.cmd, d.exited, d.death = cmd, exited, w
	return nil
}

// PID returns the process ID, 0 when not running.
func (d *Tailscaled) PID() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd == nil {
		return 0
	}
	return d.cmd.Process.Pid
}

// Kill kills tailscaled with SIGKILL (kill -9) and waits for it to exit.
// Its state directory is kept.
func (d *Tailscaled) Kill() { d.signal(syscall.SIGKILL, 0) }

// Stop stops tailscaled with SIGTERM, then SIGKILL after 10s.
func (d *Tailscaled) Stop() { d.signal(syscall.SIGTERM, 10*time.Second) }

// Restart is Kill then Start.
func (d *Tailscaled) Restart() {
	d.t.Helper()
	d.Kill()
	d.Start()
}

func (d *Tailscaled) signal(sig syscall.Signal, grace time.Duration) {
	d.mu.Lock()
	cmd, exited, death := d.cmd, d.exited, d.death
	d.cmd, d.exited, d.death = nil, nil, nil
	d.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(sig)
	if grace > 0 {
		select {
		case <-exited:
		case <-time.After(grace):
			cmd.Process.Kill()
		}
	}
	<-exited
	death.Close()
}

// LocalClient returns a LocalAPI client for this tailscaled.
func (d *Tailscaled) LocalClient() *local.Client {
	return &local.Client{Socket: d.Socket, UseSocketOnly: true}
}

// WaitLocalAPI waits until the LocalAPI answers.
func (d *Tailscaled) WaitLocalAPI(ctx context.Context) error {
	lc := d.LocalClient()
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := lc.StatusWithoutPeers(cctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("tailscaled %s LocalAPI: %w (last error: %v)", d.Name, ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// NodeKey returns the node's current public node key (what control knows
// it by), for example to approve its routes.
func (d *Tailscaled) NodeKey(ctx context.Context) (key.NodePublic, error) {
	st, err := d.LocalClient().StatusWithoutPeers(ctx)
	if err != nil {
		return key.NodePublic{}, err
	}
	if st.Self == nil || st.Self.PublicKey.IsZero() {
		return key.NodePublic{}, fmt.Errorf("tailscaled %s has no node key (state %s)", d.Name, st.BackendState)
	}
	return st.Self.PublicKey, nil
}

// Logs returns tailscaled's recent output.
func (d *Tailscaled) Logs() string { return d.log.String() }
