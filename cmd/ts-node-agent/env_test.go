package main

import (
	"bytes"
	"errors"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/ts-node-agent/ts-node-agent/pkg/config"
	"github.com/ts-node-agent/ts-node-agent/pkg/supervisor"
)

// TestRunDropsAuthKeyFromEnvironment: once the configuration is parsed,
// the auth key variables are gone from the agent's environment (so from
// os.Environ() and from whatever it starts later), while the parsed
// configuration still has the key. It runs run in this process on the
// real environment, with a configuration that parses but fails right
// after (the Kubernetes client of --role=label, from a kubeconfig that
// does not exist), so nothing touches the host.
func TestRunDropsAuthKeyFromEnvironment(t *testing.T) {
	for _, name := range []string{"TS_AUTHKEY", "TS_AUTH_KEY"} {
		t.Run(name, func(t *testing.T) {
			t.Setenv(name, testKey)
			// Only the auth key variables and what run reads later: the
			// test's own environment may hold anything.
			getenv := func(k string) (string, bool) {
				if k == name {
					return os.LookupEnv(k)
				}
				return "", false
			}
			args := []string{"--role=label", "--node-name=n1", "--log-format=text",
				"--kubeconfig=" + filepath.Join(t.TempDir(), "missing")}
			var stdout, stderr bytes.Buffer
			code := run(args, getenv, []string{name + "=" + testKey}, &stdout, &stderr)
			if code != 1 || !strings.Contains(stderr.String(), "kubeconfig") {
				t.Fatalf("run = %d, want 1 (parsed, then no Kubernetes client); stderr:\n%s", code, stderr.String())
			}
			if v, ok := os.LookupEnv(name); ok {
				t.Errorf("%s is still in the environment after parsing (%d bytes)", name, len(v))
			}
			for _, kv := range os.Environ() {
				if strings.Contains(kv, testKey) {
					t.Errorf("os.Environ() still has the key in %s=...", strings.SplitN(kv, "=", 2)[0])
				}
			}
			if strings.Contains(stderr.String(), testKey) {
				t.Errorf("the key is in the log:\n%s", stderr.String())
			}
		})
	}
}

func TestDropAuthKeyEnv(t *testing.T) {
	errBoom := errors.New("boom")
	tests := []struct {
		name    string
		env     map[string]string
		fail    string // the variable unsetenv fails on
		want    []string
		wantErr string
	}{
		{name: "both", env: map[string]string{"TS_AUTHKEY": testKey, "TS_AUTH_KEY": testKey, "PATH": "/bin", "TS_AUTHKEY_FILE": "x"},
			want: []string{"PATH", "TS_AUTHKEY_FILE"}},
		{name: "file form", env: map[string]string{"TS_AUTHKEY": "file:/etc/ts-node-agent/auth/authkey", "NODE_NAME": "n"},
			want: []string{"NODE_NAME"}},
		{name: "none", env: map[string]string{"NODE_NAME": "n"}, want: []string{"NODE_NAME"}},
		{name: "unsetenv fails", env: map[string]string{"TS_AUTHKEY": testKey, "TS_AUTH_KEY": testKey},
			fail: "TS_AUTHKEY", want: []string{"TS_AUTHKEY"}, wantErr: "removing TS_AUTHKEY from the environment: boom"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := maps.Clone(tt.env)
			err := dropSecretEnv(func(k string) error {
				if k == tt.fail {
					return errBoom
				}
				delete(env, k)
				return nil
			})
			if got := slices.Sorted(maps.Keys(env)); !slices.Equal(got, tt.want) {
				t.Errorf("environment left: %v, want %v", got, tt.want)
			}
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("error %v", err)
			case tt.wantErr != "" && (err == nil || err.Error() != tt.wantErr || !errors.Is(err, errBoom)):
				t.Errorf("error %v, want %q", err, tt.wantErr)
			}
		})
	}
}

// TestScrubInitialEnviron runs this test binary again with an auth key in
// its initial environment: after scrubInitialEnviron, the process's
// /proc/self/environ no longer holds the key (the kernel shows the block
// execve put on the stack, which os.Unsetenv does not change), a file:PATH
// value stays, and Go's own environment is untouched.
func TestScrubInitialEnviron(t *testing.T) {
	if os.Getenv("TSNA_SCRUB_HELPER") == "1" {
		if err := scrubInitialEnviron(config.SecretEnv...); err != nil {
			os.Stdout.WriteString("error: " + err.Error())
			os.Exit(3)
		}
		b, _ := os.ReadFile("/proc/self/environ")
		os.Stdout.Write(b)
		os.Exit(0)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestScrubInitialEnviron$")
	cmd.Env = append(os.Environ(), "TSNA_SCRUB_HELPER=1", "TS_AUTHKEY="+testKey, "TS_AUTH_KEY=file:/etc/ts/key")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helper: %v: %s", err, out)
	}
	if bytes.Contains(out, []byte(testKey)) {
		t.Error("/proc/self/environ still holds the auth key")
	}
	if !bytes.Contains(out, []byte("TS_AUTH_KEY=file:/etc/ts/key\x00")) {
		t.Errorf("the file:PATH value was changed: %q", out)
	}
	if !bytes.Contains(out, []byte("TSNA_SCRUB_HELPER=1\x00")) {
		t.Errorf("other variables were changed: %q", out)
	}
}

func TestEnvBounds(t *testing.T) {
	fields := make([]string, 52)
	for i := range fields {
		fields[i] = strconv.Itoa(i + 1)
	}
	fields[49], fields[50] = "1000", "1200"
	line := "7 (a) b)) " + strings.Join(fields[2:], " ") + "\n"
	start, end, err := envBounds([]byte(line))
	if err != nil || start != 1000 || end != 1200 {
		t.Fatalf("envBounds = %d, %d, %v; want 1000, 1200", start, end, err)
	}
	if _, _, err := envBounds([]byte("7 (a) R 1 2 3")); err == nil {
		t.Error("a short stat line gave bounds")
	}
}

// TestSecretEnvListsAgree: the variables the agent drops from its own
// environment are those tailscaled never gets.
func TestSecretEnvListsAgree(t *testing.T) {
	if !slices.Equal(config.SecretEnv, supervisor.SecretEnv) {
		t.Fatalf("config.SecretEnv %v, supervisor.SecretEnv %v: keep them equal", config.SecretEnv, supervisor.SecretEnv)
	}
}
