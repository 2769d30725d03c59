package config

import (
	"bytes"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/ts-node-agent/ts-node-agent/pkg/hostnet"
)

// envMap is a fake environment for Parse.
type envMap map[string]string

func (e envMap) lookup(k string) (string, bool) {
	v, ok := e[k]
	return v, ok
}

func (e envMap) environ() []string {
	var out []string
	for k, v := range e {
		out = append(out, k+"="+v)
	}
	return out
}

func mustParse(t *testing.T, args []string, env envMap) *Config {
	t.Helper()
	c, err := Parse(args, env.lookup, WithEnviron(env.environ()))
	if err != nil {
		t.Fatalf("Parse(%q, %v): %v", args, env, err)
	}
	return c
}

func parseErr(t *testing.T, args []string, env envMap) string {
	t.Helper()
	c, err := Parse(args, env.lookup, WithEnviron(env.environ()))
	if err == nil {
		t.Fatalf("Parse(%q, %v) = %+v, want an error", args, env, c)
	}
	if !errors.Is(err, ErrUsage) {
		t.Fatalf("Parse(%q, %v) error %v is not ErrUsage", args, env, err)
	}
	var ue *UsageError
	if !errors.As(err, &ue) || len(ue.Problems) == 0 {
		t.Fatalf("Parse error %T is not a *UsageError with problems", err)
	}
	return err.Error()
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "authkey")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// base is the environment every table row starts from: enough for a valid
// Config with the default role.
func base() envMap {
	return envMap{"NODE_NAME": "node-1", "TS_NODE_AGENT_EGRESS_CHECK_URL": "https://base.example/ip"}
}

func TestEveryFlagAndEnv(t *testing.T) {
	keyFile := writeFile(t, "tskey-file-0123\n")
	tests := []struct {
		flag, env string
		value     string // flag and env value
		envValue  string // env value when it differs
		field     string
		want      any
	}{
		{"role", "TS_NODE_AGENT_ROLE", "exit", "", "Role", RoleExit},
		{"role-label", "TS_NODE_AGENT_ROLE_LABEL", "example.com/tailscale-role", "", "RoleLabel", "example.com/tailscale-role"},
		{"default-role", "TS_NODE_AGENT_DEFAULT_ROLE", "none", "", "DefaultRole", RoleNone},
		{"node-name", "NODE_NAME", "node-7", "", "NodeName", "node-7"},
		{"kubeconfig", "KUBECONFIG", "/etc/kube/config", "", "Kubeconfig", "/etc/kube/config"},
		{"pod-name", "POD_NAME", "ts-node-agent-x1", "", "PodName", "ts-node-agent-x1"},
		{"pod-namespace", "POD_NAMESPACE", "tailscale", "", "PodNamespace", "tailscale"},
		{"exit-nodes", "TS_NODE_AGENT_EXIT_NODES", "100.64.0.1, exit-b,tag:exit,auto", "", "ExitNodes",
			[]string{"100.64.0.1", "exit-b", "tag:exit", "auto"}},
		{"exit-node-allow-lan-access", "TS_NODE_AGENT_EXIT_NODE_ALLOW_LAN_ACCESS", "false", "0", "ExitNodeAllowLANAccess", false},
		{"exit-fallback", "TS_NODE_AGENT_EXIT_FALLBACK", "direct", "", "ExitFallback", FallbackDirect},
		{"failback-after", "TS_NODE_AGENT_FAILBACK_AFTER", "90s", "", "FailbackAfter", 90 * time.Second},
		{"require-exit-approval", "TS_NODE_AGENT_REQUIRE_EXIT_APPROVAL", "false", "", "RequireExitApproval", false},
		{"forwarding-optimizations", "TS_NODE_AGENT_FORWARDING_OPTIMIZATIONS", "false", "", "ForwardingOptimizations", false},
		{"bypass-cidrs", "TS_NODE_AGENT_BYPASS_CIDRS", "10.43.0.0/16,fd00::/108,192.0.2.9", "", "BypassCIDRs",
			[]netip.Prefix{netip.MustParsePrefix("10.43.0.0/16"), netip.MustParsePrefix("fd00::/108"), netip.MustParsePrefix("192.0.2.9/32")}},
		{"exit-commit-timeout", "TS_NODE_AGENT_EXIT_COMMIT_TIMEOUT", "30s", "", "ExitCommitTimeout", 30 * time.Second},
		{"bypass-mark", "TS_NODE_AGENT_BYPASS_MARK", "0x2000/0x3000", "8192/12288", "BypassMark", hostnet.Mark{Value: 0x2000, Mask: 0x3000}},
		{"pod-egress-source", "TS_NODE_AGENT_POD_EGRESS_SOURCE", "198.18.128.1", "", "PodEgressSource", netip.MustParseAddr("198.18.128.1")},
		{"egress-check-url", "TS_NODE_AGENT_EGRESS_CHECK_URL", "https://a.example/ip,http://b.example/", "", "EgressCheckURLs",
			[]string{"https://a.example/ip", "http://b.example/"}},
		{"expected-egress-ip", "TS_NODE_AGENT_EXPECTED_EGRESS_IP", "203.0.113.7,2001:db8::7", "", "ExpectedEgressIPs",
			[]netip.Addr{netip.MustParseAddr("203.0.113.7"), netip.MustParseAddr("2001:db8::7")}},
		{"egress-check-interval", "TS_NODE_AGENT_EGRESS_CHECK_INTERVAL", "5m", "", "EgressCheckInterval", 5 * time.Minute},
		{"check-tcp", "TS_NODE_AGENT_CHECK_TCP", "db=10.0.0.5:5432,s3=s3.example.com:443", "", "CheckTCP",
			[]TCPTarget{{"db", "10.0.0.5:5432"}, {"s3", "s3.example.com:443"}}},
		{"ready-requires", "TS_NODE_AGENT_READY_REQUIRES", "egress-ip,exit-node", "", "ReadyRequires", []string{"egress-ip", "exit-node"}},
		{"authkey-file", "TS_AUTHKEY", keyFile, "file:" + keyFile, "AuthKey", SecretFile(keyFile)},
		{"login-server", "TS_NODE_AGENT_LOGIN_SERVER", "https://hs.example.com", "", "LoginServer", "https://hs.example.com"},
		{"hostname", "TS_HOSTNAME", "my-host", "", "Hostname", "my-host"},
		{"advertise-tags", "TS_NODE_AGENT_ADVERTISE_TAGS", "tag:k8s,tag:exit-1", "", "AdvertiseTags", []string{"tag:k8s", "tag:exit-1"}},
		{"accept-dns", "TS_ACCEPT_DNS", "true", "1", "AcceptDNS", true},
		{"accept-routes", "TS_NODE_AGENT_ACCEPT_ROUTES", "true", "", "AcceptRoutes", true},
		{"auth-once", "TS_AUTH_ONCE", "false", "", "AuthOnce", false},
		{"api-url", "TS_NODE_AGENT_API_URL", "https://api.example.com", "", "APIURL", "https://api.example.com"},
		{"tailscaled", "TS_NODE_AGENT_TAILSCALED", "/usr/local/bin/tailscaled", "", "Tailscaled", "/usr/local/bin/tailscaled"},
		{"tailscaled-arg", "TS_TAILSCALED_EXTRA_ARGS", "--port=41641,--verbose=1", "--port=41641  --verbose=1", "TailscaledArgs",
			[]string{"--port=41641", "--verbose=1"}},
		{"state-dir", "TS_STATE_DIR", "/data/ts", "", "StateDir", "/data/ts"},
		{"socket", "TS_SOCKET", "/run/ts.sock", "", "Socket", "/run/ts.sock"},
		{"tun", "TS_NODE_AGENT_TUN", "ts1", "", "TUN", "ts1"},
		{"listen", "TS_LOCAL_ADDR_PORT", "127.0.0.1:9100", "", "Listen", "127.0.0.1:9100"},
		{"allow-from", "TS_NODE_AGENT_ALLOW_FROM", "10.0.0.0/8,192.0.2.7", "", "AllowFrom",
			[]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.7/32")}},
		{"shutdown-timeout", "TS_NODE_AGENT_SHUTDOWN_TIMEOUT", "20s", "", "ShutdownTimeout", 20 * time.Second},
		{"liveness-grace", "TS_NODE_AGENT_LIVENESS_GRACE", "3m", "", "LivenessGrace", 3 * time.Minute},
		{"log-format", "TS_NODE_AGENT_LOG_FORMAT", "text", "", "LogFormat", LogFormatText},
	}

	covered := map[string]bool{}
	for _, tt := range tests {
		covered[tt.flag] = true
		field := func(c *Config) any { return reflect.ValueOf(c).Elem().FieldByName(tt.field).Interface() }
		if def := field(Defaults()); reflect.DeepEqual(def, tt.want) {
			t.Errorf("%s: test value %v equals the default; pick another", tt.flag, tt.want)
		}
		t.Run("flag/"+tt.flag, func(t *testing.T) {
			c := mustParse(t, []string{"--" + tt.flag + "=" + tt.value}, base())
			if got := field(c); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("--%s=%s: %s = %#v, want %#v", tt.flag, tt.value, tt.field, got, tt.want)
			}
		})
		t.Run("env/"+tt.env, func(t *testing.T) {
			v := tt.value
			if tt.envValue != "" {
				v = tt.envValue
			}
			env := base()
			env[tt.env] = v
			c := mustParse(t, nil, env)
			if got := field(c); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("%s=%s: %s = %#v, want %#v", tt.env, v, tt.field, got, tt.want)
			}
		})
	}

	// Every setting is in the table, and its --help line names its env var.
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	Defaults().AddFlags(fs)
	fs.VisitAll(func(f *pflag.Flag) {
		if !covered[f.Name] {
			t.Errorf("flag --%s is not in the table", f.Name)
		}
	})
	for _, tt := range tests {
		f := fs.Lookup(tt.flag)
		if f == nil {
			t.Errorf("no flag --%s", tt.flag)
			continue
		}
		if !strings.Contains(f.Usage, "(env "+tt.env) {
			t.Errorf("--%s usage %q does not name %s", tt.flag, f.Usage, tt.env)
		}
	}
}

func TestDefaults(t *testing.T) {
	c := mustParse(t, nil, envMap{"NODE_NAME": "node-1"})
	want := Defaults()
	want.NodeName = "node-1"
	want.Hostname = "node-1" // --hostname defaults to the node name
	if !reflect.DeepEqual(c, want) {
		t.Errorf("Parse with no settings:\n got %+v\nwant %+v", c, want)
	}
	if c.Role != RoleFromLabel || c.DefaultRole != RoleWorker || c.ExitFallback != FallbackBlock ||
		c.FailbackAfter != 60*time.Second || c.ExitCommitTimeout != 15*time.Second || c.LivenessGrace != 120*time.Second ||
		c.Listen != ":9002" || c.TUN != "tailscale0" || !c.AuthOnce || c.AcceptDNS || !slices.Equal(c.ExitNodes, []string{"auto"}) {
		t.Errorf("defaults differ from DESIGN section 3: %+v", c)
	}
	if err := want.Validate(); err != nil {
		t.Errorf("Validate(defaults + node name) = %v", err)
	}
}

func TestPrecedence(t *testing.T) {
	tests := []struct {
		name  string
		args  []string
		env   envMap
		check func(*Config) bool
	}{
		{"default", nil, envMap{},
			func(c *Config) bool { return c.ExitFallback == FallbackBlock }},
		{"env over default", nil, envMap{"TS_NODE_AGENT_EXIT_FALLBACK": "direct"},
			func(c *Config) bool { return c.ExitFallback == FallbackDirect }},
		{"flag over env", []string{"--exit-fallback", "block"}, envMap{"TS_NODE_AGENT_EXIT_FALLBACK": "direct"},
			func(c *Config) bool { return c.ExitFallback == FallbackBlock }},
		{"empty env is unset", nil, envMap{"TS_NODE_AGENT_EXIT_FALLBACK": ""},
			func(c *Config) bool { return c.ExitFallback == FallbackBlock }},
		{"bool flag without value over env", []string{"--accept-dns"}, envMap{"TS_ACCEPT_DNS": "false"},
			func(c *Config) bool { return c.AcceptDNS }},
		{"bool flag =false over env", []string{"--auth-once=false"}, envMap{"TS_AUTH_ONCE": "true"},
			func(c *Config) bool { return !c.AuthOnce }},
		{"duration flag over env", []string{"--liveness-grace=1m"}, envMap{"TS_NODE_AGENT_LIVENESS_GRACE": "5m"},
			func(c *Config) bool { return c.LivenessGrace == time.Minute }},
		{"repeated list flag replaces env and default", []string{"--exit-nodes=a", "--exit-nodes", "b,c"},
			envMap{"TS_NODE_AGENT_EXIT_NODES": "x,y"},
			func(c *Config) bool { return slices.Equal(c.ExitNodes, []string{"a", "b", "c"}) }},
		{"list env replaces default", nil, envMap{"TS_NODE_AGENT_EXIT_NODES": "x,y"},
			func(c *Config) bool { return slices.Equal(c.ExitNodes, []string{"x", "y"}) }},
		{"agent env over containerboot alias", nil,
			envMap{"TS_NODE_AGENT_FORWARDING_OPTIMIZATIONS": "true", "TS_EXPERIMENTAL_ENABLE_FORWARDING_OPTIMIZATIONS": "false"},
			func(c *Config) bool { return c.ForwardingOptimizations }},
		{"containerboot alias alone", nil, envMap{"TS_EXPERIMENTAL_ENABLE_FORWARDING_OPTIMIZATIONS": "false"},
			func(c *Config) bool { return !c.ForwardingOptimizations }},
		{"hostname defaults to node name", []string{"--node-name=n9"}, envMap{},
			func(c *Config) bool { return c.Hostname == "n9" }},
		{"explicit hostname wins", []string{"--node-name=n9"}, envMap{"TS_HOSTNAME": "h"},
			func(c *Config) bool { return c.Hostname == "h" }},
		{"explicitly empty hostname flag stays empty", []string{"--node-name=n9", "--hostname="}, envMap{},
			func(c *Config) bool { return c.Hostname == "" }},
		{"TS_AUTHKEY", nil, envMap{"TS_AUTHKEY": "tskey-a"},
			func(c *Config) bool { v, _ := c.AuthKey.Reveal(); return v == "tskey-a" }},
		{"TS_AUTH_KEY", nil, envMap{"TS_AUTH_KEY": " tskey-b\n"},
			func(c *Config) bool { v, _ := c.AuthKey.Reveal(); return v == "tskey-b" }},
		{"TS_AUTHKEY over TS_AUTH_KEY", nil, envMap{"TS_AUTHKEY": "tskey-a", "TS_AUTH_KEY": "tskey-b"},
			func(c *Config) bool { v, _ := c.AuthKey.Reveal(); return v == "tskey-a" && len(c.Warnings) == 1 }},
		{"no key", nil, envMap{},
			func(c *Config) bool { return !c.AuthKey.IsSet() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := envMap{"NODE_NAME": "node-1"}
			for k, v := range tt.env {
				env[k] = v
			}
			if c := mustParse(t, tt.args, env); !tt.check(c) {
				t.Errorf("unexpected config %+v", c)
			}
		})
	}

	t.Run("authkey-file over TS_AUTHKEY", func(t *testing.T) {
		p := writeFile(t, "tskey-from-file")
		c := mustParse(t, []string{"--authkey-file", p}, envMap{"NODE_NAME": "n", "TS_AUTHKEY": "tskey-from-env"})
		if v, err := c.AuthKey.Reveal(); err != nil || v != "tskey-from-file" {
			t.Errorf("Reveal() = %q, %v; want the file's key", v, err)
		}
		if len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0], "TS_AUTHKEY is ignored") {
			t.Errorf("warnings = %q", c.Warnings)
		}
	})
}

func TestExtraArgs(t *testing.T) {
	tests := []struct {
		name      string
		extra     string
		args      []string
		env       envMap
		check     func(*Config) bool
		wantWarns int
	}{
		{name: "value flags with = and with space",
			extra: "--login-server=https://hs.example.com --hostname h1 --advertise-tags=tag:a,tag:b",
			check: func(c *Config) bool {
				return c.LoginServer == "https://hs.example.com" && c.Hostname == "h1" &&
					slices.Equal(c.AdvertiseTags, []string{"tag:a", "tag:b"})
			}},
		{name: "bool flags bare and with =",
			extra: "--accept-routes --accept-dns=true --exit-node-allow-lan-access=false",
			check: func(c *Config) bool { return c.AcceptRoutes && c.AcceptDNS && !c.ExitNodeAllowLANAccess }},
		{name: "single dash and last occurrence wins",
			extra: "-accept-routes=true --accept-routes=false",
			check: func(c *Config) bool { return !c.AcceptRoutes }},
		{name: "advertise-exit-node forces role exit",
			extra: "--advertise-exit-node",
			check: func(c *Config) bool { return c.Role == RoleExit && c.AdvertiseExitNode }},
		{name: "advertise-exit-node=false is a no-op",
			extra: "--advertise-exit-node=false",
			check: func(c *Config) bool { return c.Role == RoleFromLabel && !c.AdvertiseExitNode }},
		{name: "exit-node forces role worker and the candidate",
			extra: "--exit-node=100.64.0.9",
			check: func(c *Config) bool {
				return c.Role == RoleWorker && slices.Equal(c.ExitNodes, []string{"100.64.0.9"}) && c.ExitNodeFromExtraArgs == "100.64.0.9"
			}},
		{name: "exit-node with a space",
			extra: "--exit-node exit-a",
			check: func(c *Config) bool { return c.Role == RoleWorker && slices.Equal(c.ExitNodes, []string{"exit-a"}) }},
		{name: "empty exit-node is a no-op",
			extra: "--exit-node=",
			check: func(c *Config) bool { return c.Role == RoleFromLabel && slices.Equal(c.ExitNodes, []string{"auto"}) }},
		{name: "explicit role flag wins over advertise-exit-node",
			extra: "--advertise-exit-node", args: []string{"--role=none"},
			check:     func(c *Config) bool { return c.Role == RoleNone && c.AdvertiseExitNode },
			wantWarns: 1},
		{name: "explicit role env wins over exit-node",
			extra: "--exit-node=exit-a", env: envMap{"TS_NODE_AGENT_ROLE": "label"},
			check:     func(c *Config) bool { return c.Role == RoleFromLabel && slices.Equal(c.ExitNodes, []string{"exit-a"}) },
			wantWarns: 1},
		{name: "explicit exit-nodes win over exit-node",
			extra: "--exit-node=exit-a", args: []string{"--exit-nodes=exit-b,auto"},
			check: func(c *Config) bool {
				return c.Role == RoleWorker && slices.Equal(c.ExitNodes, []string{"exit-b", "auto"})
			},
			wantWarns: 1},
		{name: "agent env wins over TS_EXTRA_ARGS",
			extra: "--accept-dns=true --hostname=from-extra", env: envMap{"TS_ACCEPT_DNS": "false", "TS_HOSTNAME": "from-env"},
			check:     func(c *Config) bool { return !c.AcceptDNS && c.Hostname == "from-env" },
			wantWarns: 2},
		{name: "agent flag wins over TS_EXTRA_ARGS",
			extra: "--login-server=https://a.example", args: []string{"--login-server=https://b.example"},
			check:     func(c *Config) bool { return c.LoginServer == "https://b.example" },
			wantWarns: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := envMap{"NODE_NAME": "node-1", "TS_EXTRA_ARGS": tt.extra}
			for k, v := range tt.env {
				env[k] = v
			}
			c := mustParse(t, tt.args, env)
			if !tt.check(c) {
				t.Errorf("TS_EXTRA_ARGS=%q: unexpected config %+v", tt.extra, c)
			}
			if len(c.Warnings) != tt.wantWarns {
				t.Errorf("warnings = %q, want %d", c.Warnings, tt.wantWarns)
			}
		})
	}
}

func TestUserspace(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     envMap
		wantTUN string
	}{
		{"true", nil, envMap{"TS_USERSPACE": "true"}, TUNUserspace},
		{"1", nil, envMap{"TS_USERSPACE": "1"}, TUNUserspace},
		{"false keeps the kernel TUN", nil, envMap{"TS_USERSPACE": "false"}, "tailscale0"},
		{"unset keeps the kernel TUN", nil, envMap{}, "tailscale0"},
		{"--tun wins", []string{"--tun=ts7"}, envMap{"TS_USERSPACE": "true"}, "ts7"},
		{"TS_NODE_AGENT_TUN wins", nil, envMap{"TS_USERSPACE": "true", "TS_NODE_AGENT_TUN": "ts8"}, "ts8"},
		{"--tun=userspace-networking", []string{"--tun=" + TUNUserspace}, envMap{}, TUNUserspace},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.env["NODE_NAME"] = "node-1"
			if c := mustParse(t, tt.args, tt.env); c.TUN != tt.wantTUN {
				t.Errorf("TUN = %q, want %q", c.TUN, tt.wantTUN)
			}
		})
	}
}

// TestBadInput: each bad input gives exactly one line naming the source, the
// value and what is accepted.
func TestBadInput(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  envMap
		want []string // substrings of the single problem line
	}{
		{"duration flag", []string{"--egress-check-interval=often"}, nil,
			[]string{`invalid --egress-check-interval "often"`, "accepted: a duration such as 30s"}},
		{"duration env", nil, envMap{"TS_NODE_AGENT_EGRESS_CHECK_INTERVAL": "10"},
			[]string{`invalid TS_NODE_AGENT_EGRESS_CHECK_INTERVAL "10"`, "accepted: a duration"}},
		{"negative duration", []string{"--failback-after=-5s"}, nil,
			[]string{`invalid --failback-after "-5s"`, "at least 1s", "accepted: a duration"}},
		{"zero duration", nil, envMap{"TS_NODE_AGENT_SHUTDOWN_TIMEOUT": "0s"},
			[]string{`invalid TS_NODE_AGENT_SHUTDOWN_TIMEOUT "0s"`, "at least 1s"}},
		{"bool env", nil, envMap{"TS_ACCEPT_DNS": "yes"},
			[]string{`invalid TS_ACCEPT_DNS "yes"`, "accepted values are true, false, 1, 0"}},
		{"bool flag", []string{"--accept-routes=maybe"}, nil,
			[]string{`invalid --accept-routes "maybe"`, "accepted values are true, false"}},
		{"bool flag with a separate value", []string{"--accept-routes", "false"}, nil,
			[]string{`unexpected argument "false"`, "--flag=false"}},
		{"IP", []string{"--expected-egress-ip=203.0.113.7,203.0.113"}, envMap{"TS_NODE_AGENT_EGRESS_CHECK_URL": "https://a.example/"},
			[]string{`invalid --expected-egress-ip "203.0.113"`, "accepted: an IPv4 or IPv6 address"}},
		{"CIDR", nil, envMap{"TS_NODE_AGENT_BYPASS_CIDRS": "10.43.0.0/16,10.42.0.0/33"},
			[]string{`invalid TS_NODE_AGENT_BYPASS_CIDRS "10.42.0.0/33"`, "accepted: a CIDR"}},
		{"URL scheme", []string{"--egress-check-url=ftp://x.example/"}, nil,
			[]string{`invalid --egress-check-url "ftp://x.example/"`, "accepted: an http or https URL"}},
		{"URL without host", nil, envMap{"TS_NODE_AGENT_EGRESS_CHECK_URL": "https://"},
			[]string{`invalid TS_NODE_AGENT_EGRESS_CHECK_URL "https://"`, "accepted: an http or https URL"}},
		{"login server", []string{"--login-server=headscale.example.com"}, nil,
			[]string{`invalid --login-server "headscale.example.com"`, "accepted: an http or https URL"}},
		{"bypass mark syntax", []string{"--bypass-mark=0x600/0xf00/1"}, nil,
			[]string{`invalid --bypass-mark "0x600/0xf00/1"`, "accepted: VALUE[/MASK]"}},
		{"bypass mark in tailscaled's bits", nil, envMap{"TS_NODE_AGENT_BYPASS_MARK": "0x80000"},
			[]string{`invalid TS_NODE_AGENT_BYPASS_MARK "0x80000"`, "overlaps tailscaled's fwmark mask 0xff0000"}},
		{"bypass mark value outside its mask", []string{"--bypass-mark=0x1600/0xf00"}, nil,
			[]string{`invalid --bypass-mark "0x1600/0xf00"`, "the value has bits outside the mask"}},
		{"pod egress source", []string{"--pod-egress-source=198.18.128.1/24"}, nil,
			[]string{`invalid --pod-egress-source "198.18.128.1/24"`, "accepted: an IPv4 or IPv6 address"}},
		{"enum", []string{"--exit-fallback=maybe"}, nil,
			[]string{`invalid --exit-fallback "maybe": accepted values are block, direct`}},
		{"role env", nil, envMap{"TS_NODE_AGENT_ROLE": "gateway"},
			[]string{`invalid TS_NODE_AGENT_ROLE "gateway": accepted values are label, exit, worker, none`}},
		{"default role cannot be label", []string{"--default-role=label"}, nil,
			[]string{`invalid --default-role "label": accepted values are exit, worker, none`}},
		{"log format", []string{"--log-format=xml"}, nil,
			[]string{`invalid --log-format "xml": accepted values are json, text`}},
		{"tcp target without name", []string{"--check-tcp=10.0.0.5:5432"}, nil,
			[]string{`invalid --check-tcp "10.0.0.5:5432"`, "missing name=", "accepted: NAME=HOST:PORT"}},
		{"tcp target without port", nil, envMap{"TS_NODE_AGENT_CHECK_TCP": "db=10.0.0.5"},
			[]string{`invalid TS_NODE_AGENT_CHECK_TCP "db=10.0.0.5"`, "accepted: NAME=HOST:PORT"}},
		{"tcp target bad port", []string{"--check-tcp=db=h:99999"}, nil,
			[]string{`invalid --check-tcp "db=h:99999"`, "bad port"}},
		{"duplicate tcp name", []string{"--check-tcp=db=a:1,db=b:2"}, nil,
			[]string{`invalid --check-tcp "db=b:2"`, "used twice"}},
		{"ready-requires unknown tcp", []string{"--ready-requires=tcp:db"}, nil,
			[]string{`invalid --ready-requires "tcp:db"`, "no --check-tcp named"}},
		{"tag", []string{"--advertise-tags=tag:ok,k8s"}, nil,
			[]string{`invalid --advertise-tags "k8s"`, "tags must start with 'tag:'", "accepted: tag:NAME"}},
		{"tag name", nil, envMap{"TS_NODE_AGENT_ADVERTISE_TAGS": "tag:9lives"},
			[]string{`invalid TS_NODE_AGENT_ADVERTISE_TAGS "tag:9lives"`, "accepted: tag:NAME"}},
		{"exit candidate", []string{"--exit-nodes=exit a"}, nil,
			[]string{`invalid --exit-nodes "exit a"`, "accepted: auto, a tailnet IP"}},
		{"no exit candidate", []string{"--exit-nodes="}, nil,
			[]string{`invalid --exit-nodes ""`, "at least one candidate"}},
		{"role label without node name", nil, envMap{"NODE_NAME": ""},
			[]string{"--role=label needs the node name", "NODE_NAME"}},
		{"expected IP without URL", []string{"--expected-egress-ip=203.0.113.7"}, envMap{"TS_NODE_AGENT_EGRESS_CHECK_URL": ""},
			[]string{"--expected-egress-ip needs at least one --egress-check-url"}},
		{"listen", nil, envMap{"TS_LOCAL_ADDR_PORT": "9002"},
			[]string{`invalid TS_LOCAL_ADDR_PORT "9002"`, "accepted: HOST:PORT"}},
		{"tun", []string{"--tun=a-very-long-interface-name"}, nil,
			[]string{`invalid --tun "a-very-long-interface-name"`, "at most 15 characters"}},
		{"TS_USERSPACE", nil, envMap{"TS_USERSPACE": "kernel"},
			[]string{`invalid TS_USERSPACE "kernel"`, "accepted values are true, false"}},
		{"label key", []string{"--role-label=a/b/c"}, nil,
			[]string{`invalid --role-label "a/b/c"`, "accepted: a Kubernetes label key"}},
		{"tailscaled arg owned by the agent", nil, envMap{"TS_TAILSCALED_EXTRA_ARGS": "--verbose=1 --statedir=/x"},
			[]string{`invalid TS_TAILSCALED_EXTRA_ARGS "--statedir=/x"`, "use --state-dir"}},
		{"empty state dir", []string{"--state-dir="}, nil,
			[]string{`invalid --state-dir ""`, "must not be empty"}},
		{"authkey file missing", []string{"--authkey-file=/nonexistent/key"}, nil,
			[]string{`invalid --authkey-file "/nonexistent/key"`, "no such file", "accepted: the path of a readable file"}},
		{"TS_AUTHKEY file missing", nil, envMap{"TS_AUTHKEY": "file:/nonexistent/key"},
			[]string{`invalid TS_AUTHKEY "file:/nonexistent/key"`, "no such file"}},
		{"unknown flag", []string{"--exit-node=x"}, nil,
			[]string{"unknown flag: --exit-node"}},
		{"positional argument", []string{"run"}, nil,
			[]string{`unexpected argument "run"`}},
		{"flag without value", []string{"--role"}, nil,
			[]string{"flag needs an argument", "--role"}},
		{"unknown agent env", nil, envMap{"TS_NODE_AGENT_EXIT_NODE": "a"},
			[]string{"unknown variable TS_NODE_AGENT_EXIT_NODE", "did you mean TS_NODE_AGENT_EXIT_NODES?"}},
		{"ignored switch must be a bool", nil, envMap{"TS_ENABLE_METRICS": "on"},
			[]string{`invalid TS_ENABLE_METRICS "on"`}},
		{"extra args unsupported flag", nil, envMap{"TS_EXTRA_ARGS": "--accept-routes --advertise-routes=10.0.0.0/8"},
			[]string{"invalid TS_EXTRA_ARGS: flag --advertise-routes is not supported", "accepted flags are --accept-dns"}},
		{"extra args bad bool", nil, envMap{"TS_EXTRA_ARGS": "--accept-dns=sometimes"},
			[]string{`invalid TS_EXTRA_ARGS --accept-dns "sometimes"`, "accepted values are true, false"}},
		{"extra args bad value", nil, envMap{"TS_EXTRA_ARGS": "--login-server=hs.example.com"},
			[]string{`invalid TS_EXTRA_ARGS --login-server "hs.example.com"`, "accepted: an http or https URL"}},
		{"extra args bad exit node", nil, envMap{"TS_EXTRA_ARGS": "--exit-node=bad/name"},
			[]string{`invalid TS_EXTRA_ARGS --exit-node "bad/name"`, "accepted: auto"}},
		{"extra args missing value", nil, envMap{"TS_EXTRA_ARGS": "--accept-dns --hostname"},
			[]string{`invalid TS_EXTRA_ARGS "--hostname": flag needs a value`}},
		{"extra args positional", nil, envMap{"TS_EXTRA_ARGS": "--accept-routes true"},
			[]string{`invalid TS_EXTRA_ARGS: unexpected argument "true"`, "--flag=true"}},
		{"extra args exit node and advertise", nil, envMap{"TS_EXTRA_ARGS": "--advertise-exit-node --exit-node=a"},
			[]string{"--advertise-exit-node and --exit-node cannot be combined"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := base()
			for k, v := range tt.env {
				env[k] = v
			}
			msg := parseErr(t, tt.args, env)
			if strings.Count(msg, "\n") != 0 {
				t.Errorf("want exactly one problem line, got:\n%s", msg)
			}
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
		})
	}
}

func TestUnsupportedContainerbootEnv(t *testing.T) {
	for name := range unsupportedEnv {
		t.Run(name, func(t *testing.T) {
			env := base()
			env[name] = "some-value"
			msg := parseErr(t, nil, env)
			if !strings.Contains(msg, "unsupported "+name+" is set") {
				t.Errorf("error %q does not name %s", msg, name)
			}
			if strings.Contains(msg, "some-value") {
				t.Errorf("error %q echoes the value", msg)
			}
			env[name] = ""
			mustParse(t, nil, env) // empty is unset
		})
	}
	t.Run("TS_KUBE_SECRET=tailscale", func(t *testing.T) {
		env := base()
		env["TS_KUBE_SECRET"] = "tailscale"
		if msg := parseErr(t, nil, env); !strings.Contains(msg, "TS_KUBE_SECRET") || !strings.Contains(msg, "--state-dir") {
			t.Errorf("error %q", msg)
		}
	})
	t.Run("feature switch set to false is accepted", func(t *testing.T) {
		env := base()
		env["TS_EXPERIMENTAL_CERT_SHARE"] = "false"
		mustParse(t, nil, env)
	})
	t.Run("health and metrics switches are accepted", func(t *testing.T) {
		env := base()
		env["TS_ENABLE_HEALTH_CHECK"] = "true"
		env["TS_ENABLE_METRICS"] = "false"
		c := mustParse(t, nil, env)
		if len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0], "TS_ENABLE_METRICS=false is ignored") {
			t.Errorf("warnings = %q", c.Warnings)
		}
	})
	t.Run("environment variables of the pod are not errors", func(t *testing.T) {
		env := base()
		env["POD_IP"] = "10.42.0.5"
		env["KUBERNETES_SERVICE_HOST"] = "10.43.0.1"
		env["TS_KUBERNETES_READ_API_SERVER_ADDRESS_FROM_ENV"] = "true"
		mustParse(t, nil, env)
	})
}

func TestAllProblemsAtOnce(t *testing.T) {
	env := envMap{
		"NODE_NAME":                      "",
		"TS_NODE_AGENT_EXIT_FALLBACK":    "maybe",
		"TS_ACCEPT_DNS":                  "yes",
		"TS_DEST_IP":                     "10.0.0.1",
		"TS_EXTRA_ARGS":                  "--ssh",
		"TS_NODE_AGENT_BYPASS_CIDRS":     "10.0.0.0/8,nope",
		"TS_NODE_AGENT_LIVENESS_GRACE":   "-1s",
		"TS_NODE_AGENT_EGRESS_CHECK_URL": "",
	}
	msg := parseErr(t, []string{"--log-format=xml", "--check-tcp=db"}, env)
	want := []string{
		`invalid --log-format "xml"`,
		`invalid --check-tcp "db"`,
		`invalid TS_NODE_AGENT_EXIT_FALLBACK "maybe"`,
		`invalid TS_ACCEPT_DNS "yes"`,
		"unsupported TS_DEST_IP is set",
		"flag --ssh is not supported",
		`invalid TS_NODE_AGENT_BYPASS_CIDRS "nope"`,
		`invalid TS_NODE_AGENT_LIVENESS_GRACE "-1s"`,
		"--role=label needs the node name",
	}
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("error does not contain %q:\n%s", w, msg)
		}
	}
	if got := strings.Count(msg, "\n") + 1; got != len(want) {
		t.Errorf("got %d problem lines, want %d:\n%s", got, len(want), msg)
	}
}

func TestHelp(t *testing.T) {
	for _, arg := range []string{"-h", "--help"} {
		// Help wins even when the rest is invalid.
		if _, err := Parse([]string{arg}, envMap{"TS_ACCEPT_DNS": "yes"}.lookup); !errors.Is(err, ErrHelp) || !errors.Is(err, pflag.ErrHelp) {
			t.Errorf("Parse(%s) = %v, want ErrHelp", arg, err)
		}
	}
	var b bytes.Buffer
	Usage(&b)
	help := b.String()
	for _, w := range []string{"flag > environment variable > default", "--role", "TS_NODE_AGENT_ROLE", "TS_AUTHKEY=file:PATH",
		"TS_EXTRA_ARGS", "TS_USERSPACE", "TS_DEST_IP", "--bypass-cidrs", "TS_NODE_AGENT_EXIT_COMMIT_TIMEOUT"} {
		if !strings.Contains(help, w) {
			t.Errorf("--help does not mention %q", w)
		}
	}
	if strings.Contains(help, "--authkey ") || strings.Contains(help, "--auth-key") {
		t.Error("--help offers a flag for the auth key value")
	}
}

func TestAddFlagsFailFast(t *testing.T) {
	c := Defaults()
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	fs.SetOutput(&bytes.Buffer{})
	c.AddFlags(fs)
	if err := fs.Parse([]string{"--exit-fallback=maybe"}); err == nil || !strings.Contains(err.Error(), "accepted values are block, direct") {
		t.Errorf("Parse = %v, want the enum error", err)
	}
	if err := fs.Parse([]string{"--exit-fallback=direct", "--exit-nodes=a,b"}); err != nil || c.ExitFallback != FallbackDirect ||
		!slices.Equal(c.ExitNodes, []string{"a", "b"}) {
		t.Errorf("Parse = %v, config %+v", err, c)
	}
}

func TestValidateProgrammatic(t *testing.T) {
	c := Defaults()
	c.NodeName = "n1"
	c.ExitFallback = "sometimes"
	c.BypassCIDRs = []netip.Prefix{{}}
	c.AdvertiseTags = []string{"nope"}
	c.EgressCheckInterval = 0
	err := c.Validate()
	if err == nil {
		t.Fatal("Validate() = nil")
	}
	for _, w := range []string{`invalid --exit-fallback "sometimes"`, `invalid --bypass-cidrs "invalid Prefix"`,
		`invalid --advertise-tags "nope"`, `invalid --egress-check-interval "0s": at least 10s`} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("Validate() = %q, does not contain %q", err, w)
		}
	}
}

// TestLogValueRedactsURLs: the startup log line shows every URL without
// its user info and query, which may hold a password or an API token.
func TestLogValueRedactsURLs(t *testing.T) {
	env := envMap{
		"NODE_NAME": "n",
		"TS_NODE_AGENT_EGRESS_CHECK_URL": "https://ipinfo.io/json?token=s3cr3t-token," +
			"https://user:hunter2@echo.example/ip,https://plain.example/ip",
		"TS_NODE_AGENT_LOGIN_SERVER": "https://admin:pa55word@headscale.example.com/?key=s3cr3t-key",
	}
	c := mustParse(t, nil, env)
	var b bytes.Buffer
	slog.New(slog.NewJSONHandler(&b, nil)).Info("starting", "config", c)
	slog.New(slog.NewTextHandler(&b, nil)).Info("starting", "config", *c)
	out := b.String()
	for _, secret := range []string{"s3cr3t", "hunter2", "pa55word", "user:", "admin:"} {
		if strings.Contains(out, secret) {
			t.Errorf("the log shows %q:\n%s", secret, out)
		}
	}
	for _, want := range []string{
		`"egress_check_urls":["https://ipinfo.io/json?...","https://echo.example/ip","https://plain.example/ip"]`,
		`"login_server":"https://headscale.example.com/?..."`,
		`config.login_server=https://headscale.example.com/?... `,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the log does not show %s:\n%s", want, out)
		}
	}
	// The configuration itself keeps the URLs as given.
	if c.LoginServer != env["TS_NODE_AGENT_LOGIN_SERVER"] || !strings.Contains(c.EgressCheckURLs[0], "token=s3cr3t-token") {
		t.Errorf("Parse changed the URLs: %q, %q", c.LoginServer, c.EgressCheckURLs)
	}
}
