package main

import (
	"bufio"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ts-node-agent/ts-node-agent/internal/testenv"
)

// TestAgentBadValueHasNoSideEffect: a bad value is reported by the
// configuration, with exit status 2 and one line per problem, before the
// agent does anything: no log line (the agent logs "starting" first), the
// --listen port never accepts a connection, nothing is written to
// --state-dir, next to the socket or in the working directory (a relative
// path would land there).
//
// Every value runs twice: with userspace networking in the test's network
// namespace (the port is watched), and with the default kernel TUN in a
// fresh user and network namespace, so that an agent that got past
// validation could only ever touch a throwaway namespace, and the test
// needs no privileges.
func TestAgentBadValueHasNoSideEffect(t *testing.T) {
	bin := agentBinary(t)
	longSocket := "/tmp/" + strings.Repeat("s", 98) + ".sock" // 108 bytes
	tests := []struct {
		name string
		args []string
		want []string // the exact problem lines, in order
	}{
		{"hostname with an underscore", []string{"--hostname=my_host"}, []string{
			`invalid --hostname "my_host": "my_host" is not a valid DNS label: contains invalid character '_'; ` + acceptedHostname}},
		{"hostname ending with a hyphen", []string{"--hostname=host-"}, []string{
			`invalid --hostname "host-": "host-" is not a valid DNS label: must end with a letter or number; ` + acceptedHostname}},
		{"exit node IP with a zone", []string{"--exit-nodes=fe80::1%eth0"}, []string{
			`invalid --exit-nodes "fe80::1%eth0": a tailnet IP has no zone (%eth0); ` + acceptedCandidate}},
		{"relative state dir", []string{"--state-dir=state"}, []string{
			`invalid --state-dir "state": not an absolute path; accepted: an absolute directory path such as /var/lib/tailscale`}},
		{"relative socket", []string{"--socket=ts.sock"}, []string{
			`invalid --socket "ts.sock": not an absolute path; ` + acceptedSocket}},
		{"socket path over sun_path", []string{"--socket=" + longSocket}, []string{
			`invalid --socket "` + longSocket + `": 108 bytes, longer than 107 bytes, the sun_path limit of a Unix socket path; ` + acceptedSocket}},
		{"egress check interval", []string{"--egress-check-interval=1ns"}, []string{
			`invalid --egress-check-interval "1ns": at least 10s; ` + acceptedDurationLine}},
		{"exit commit timeout", []string{"--exit-commit-timeout=500ms"}, []string{
			`invalid --exit-commit-timeout "500ms": at least 1s; ` + acceptedDurationLine}},
		{"failback after", []string{"--failback-after=0s"}, []string{
			`invalid --failback-after "0s": at least 1s; ` + acceptedDurationLine}},
		{"shutdown timeout", []string{"--shutdown-timeout=100ms"}, []string{
			`invalid --shutdown-timeout "100ms": at least 1s; ` + acceptedDurationLine}},
		{"liveness grace", []string{"--liveness-grace=5s"}, []string{
			`invalid --liveness-grace "5s": at least 10s; ` + acceptedDurationLine}},
		{"bypass of the tailnet range", []string{"--bypass-cidrs=100.64.0.0/10"}, []string{
			`invalid --bypass-cidrs "100.64.0.0/10": ` + overlapsTailnetV4 + `; ` + acceptedBypass}},
		{"bypass of half the internet", []string{"--bypass-cidrs=128.0.0.0/1,2000::/3"}, []string{
			`invalid --bypass-cidrs "128.0.0.0/1": ` + tooBroadV4 + `; ` + acceptedBypass,
			`invalid --bypass-cidrs "2000::/3": ` + tooBroadV6 + `; ` + acceptedBypass}},
		{"tag", []string{"--advertise-tags=tag:9lives"}, []string{
			`invalid --advertise-tags "tag:9lives": tag names must start with a letter, after 'tag:'; ` +
				`accepted: tag:NAME, NAME starting with a letter and made of letters, digits and '-'`}},
		{"login server port", []string{"--login-server=https://hs.example.com:0"}, []string{
			`invalid --login-server "https://hs.example.com:0": bad port; ` +
				`accepted: an http or https URL such as https://headscale.example.com, or empty for Tailscale's`}},
		{"egress check URL twice", []string{"--egress-check-url=https://a.example/ip,https://a.example/ip"}, []string{
			`invalid --egress-check-url "https://a.example/ip": listed twice; accepted: each URL once`}},
		{"unspecified expected egress IP", []string{"--egress-check-url=https://a.example/ip", "--expected-egress-ip=0.0.0.0"}, []string{
			`invalid --expected-egress-ip "0.0.0.0": the unspecified address; ` +
				`accepted: an IPv4 or IPv6 address such as 203.0.113.7 or 2001:db8::7`}},
		{"node name", []string{"--role=label", "--node-name=Node_1"}, []string{
			`invalid --node-name "Node_1": accepted: a Kubernetes node name: lowercase letters, digits, '-' and '.', ` +
				`starting and ending with a letter or digit, at most 253 characters`}},
		{"every problem at once", []string{"--hostname=my_host", "--exit-nodes=auto,fe80::1%eth0", "--state-dir=state",
			"--egress-check-interval=1ns", "--bypass-cidrs=fd7a:115c:a1e0::5"}, []string{
			`invalid --hostname "my_host": "my_host" is not a valid DNS label: contains invalid character '_'; ` + acceptedHostname,
			`invalid --exit-nodes "fe80::1%eth0": a tailnet IP has no zone (%eth0); ` + acceptedCandidate,
			`invalid --state-dir "state": not an absolute path; accepted: an absolute directory path such as /var/lib/tailscale`,
			`invalid --egress-check-interval "1ns": at least 10s; ` + acceptedDurationLine,
			`invalid --bypass-cidrs "fd7a:115c:a1e0::5": ` + overlapsTailnetV6 + `; ` + acceptedBypass}},
	}
	sandbox := sandboxAttr(t, bin)
	for _, tt := range tests {
		for _, kernel := range []bool{false, true} {
			name := tt.name + "/userspace"
			if kernel {
				name = tt.name + "/kernel-tun"
			}
			t.Run(name, func(t *testing.T) {
				if kernel && sandbox == nil {
					testenv.SkipOrFail(t, "no user and network namespaces here: the kernel TUN run needs them (the userspace run covers the same values)")
				}
				runBadValue(t, bin, kernel, sandbox, tt.args, tt.want)
			})
		}
	}
}

// The accepted parts of the problem lines, spelled out here so that a
// change of wording is a visible change of the test.
const (
	acceptedHostname = "accepted: a DNS name of labels of 1 to 63 letters, digits and '-', " +
		"not starting or ending with '-', such as node-1 or node-1.example.com"
	acceptedCandidate = "accepted: auto, a tailnet IP without zone, a hostname or MagicDNS name " +
		"(letters, digits and '-'), or tag:NAME"
	acceptedSocket       = "accepted: an absolute path of at most 107 bytes such as /var/run/tailscale/tailscaled.sock"
	acceptedDurationLine = "accepted: a duration such as 30s, 2m or 1h30m"
	acceptedBypass       = "accepted: a CIDR of at least /8 (IPv6: /16) outside the tailnet ranges 100.64.0.0/10 " +
		"and fd7a:115c:a1e0::/48, such as 10.43.0.0/16 or fd00::/64, or a single IP address"
	overlapsTailnetV4 = "overlaps the tailnet range 100.64.0.0/10, whose traffic must go through tailscaled"
	overlapsTailnetV6 = "overlaps the tailnet range fd7a:115c:a1e0::/48, whose traffic must go through tailscaled"
	tooBroadV4        = "broader than /8: it would take a large part of the internet off the exit node"
	tooBroadV6        = "broader than /16: it would take a large part of the internet off the exit node"
)

// sandboxAttr returns process attributes that run the agent in a new user
// and network namespace, or nil when this machine cannot create them.
func sandboxAttr(t *testing.T, bin string) *syscall.SysProcAttr {
	t.Helper()
	attr := &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER | syscall.CLONE_NEWNET,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}},
		Pdeathsig:   syscall.SIGKILL,
	}
	cmd := exec.Command(bin, "--help")
	cmd.SysProcAttr = attr
	if err := cmd.Run(); err != nil {
		t.Logf("cannot run the agent in a user and network namespace: %v", err)
		return nil
	}
	return attr
}

// runBadValue runs the agent with args on top of a configuration that is
// valid but for them, and asserts exit status 2, exactly the want lines and
// no side effect.
func runBadValue(t *testing.T, bin string, kernel bool, sandbox *syscall.SysProcAttr, args, want []string) {
	t.Helper()
	work := t.TempDir() // the agent's working directory
	stateDir := filepath.Join(t.TempDir(), "state")
	sockDir, err := os.MkdirTemp("/tmp", "tsna-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	for _, d := range []string{stateDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	listen := freePort(t)

	full := []string{
		"--role=none",
		"--state-dir=" + stateDir,
		"--socket=" + filepath.Join(sockDir, "ts.sock"),
		"--listen=" + listen,
		// Never a real tailscaled, should the agent get that far.
		"--tailscaled=" + filepath.Join(work, "no-tailscaled"),
		"--log-format=json",
	}
	if !kernel {
		full = append(full, "--tun=userspace-networking")
	}
	full = append(full, args...)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, full...)
	cmd.Dir = work
	cmd.Env = agentEnv()
	cmd.WaitDelay = 5 * time.Second
	if kernel {
		attr := *sandbox
		cmd.SysProcAttr = &attr
	}
	out, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = cmd.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}

	// Watch the port while the agent runs (it shares our network
	// namespace only with userspace networking).
	var accepted atomic.Bool
	stopWatch := make(chan struct{})
	var watch sync.WaitGroup
	if !kernel {
		watch.Add(1)
		go func() {
			defer watch.Done()
			for {
				if c, err := net.DialTimeout("tcp", listen, 50*time.Millisecond); err == nil {
					c.Close()
					accepted.Store(true)
				}
				select {
				case <-stopWatch:
					return
				case <-time.After(2 * time.Millisecond):
				}
			}
		}()
	}

	// The first log line means the agent got past validation: stop it
	// there rather than waiting for its boot deadline.
	var lines []string
	started := false
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		lines = append(lines, line)
		if strings.HasPrefix(line, "{") && !started {
			started = true
			time.AfterFunc(2*time.Second, func() { cmd.Process.Kill() })
		}
	}
	err = cmd.Wait()
	close(stopWatch)
	watch.Wait()
	output := strings.Join(lines, "\n")

	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Errorf("exit = %v, want status 2; output:\n%s", err, output)
	}
	if started {
		t.Errorf("the agent started (logged) before rejecting the value; output:\n%s", output)
	}
	if strings.Contains(output, "serving probes") || accepted.Load() {
		t.Errorf("the --listen port %s was opened", listen)
	}
	if got := strings.Join(lines, "\n"); got != strings.Join(want, "\n") {
		t.Errorf("output:\n%s\nwant exactly:\n%s", got, strings.Join(want, "\n"))
	}
	for _, d := range []string{stateDir, sockDir, work} {
		entries, err := os.ReadDir(d)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			t.Errorf("%s was written to (%s)", d, e.Name())
		}
	}
}
