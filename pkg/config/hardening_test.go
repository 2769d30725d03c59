package config

import (
	"strings"
	"testing"
	"time"
)

// The accepted parts of the problem lines below.
const (
	wantHostname = "accepted: a DNS name of labels of 1 to 63 letters, digits and '-', " +
		"not starting or ending with '-', such as node-1 or node-1.example.com"
	wantCandidate = "accepted: auto, a tailnet IP without zone, a hostname or MagicDNS name " +
		"(letters, digits and '-'), or tag:NAME"
	wantTag      = "accepted: tag:NAME, NAME starting with a letter and made of letters, digits and '-'"
	wantURL      = "accepted: an http or https URL such as https://ifconfig.me/ip"
	wantLogin    = "accepted: an http or https URL such as https://headscale.example.com, or empty for Tailscale's"
	wantStateDir = "accepted: an absolute directory path such as /var/lib/tailscale"
	wantSocket   = "accepted: an absolute path of at most 107 bytes such as /var/run/tailscale/tailscaled.sock"
	wantDuration = "accepted: a duration such as 30s, 2m or 1h30m"
	wantBypass   = "accepted: a CIDR of at least /8 (IPv6: /16) outside the tailnet ranges 100.64.0.0/10 " +
		"and fd7a:115c:a1e0::/48, such as 10.43.0.0/16 or fd00::/64, or a single IP address"
	wantTailnetV4 = "overlaps the tailnet range 100.64.0.0/10, whose traffic must go through tailscaled"
	wantTailnetV6 = "overlaps the tailnet range fd7a:115c:a1e0::/48, whose traffic must go through tailscaled"
	wantBroadV4   = "broader than /8: it would take a large part of the internet off the exit node"
	wantBroadV6   = "broader than /16: it would take a large part of the internet off the exit node"
	wantNodeName  = "accepted: a Kubernetes node name: lowercase letters, digits, '-' and '.', " +
		"starting and ending with a letter or digit, at most 253 characters"
)

// TestValuesValidatedOnce: every value that another package would reject
// later (after the agent opened its listener or touched the host network)
// is rejected here, with exactly these lines.
func TestValuesValidatedOnce(t *testing.T) {
	long := strings.Repeat("a", 64)
	socket107 := "/run/" + strings.Repeat("s", 97) + ".sock"
	socket108 := "/run/" + strings.Repeat("s", 98) + ".sock"
	tests := []struct {
		name string
		args []string
		env  envMap
		want []string // every problem line, in order
	}{
		// The tailnet hostname: what tailscale up accepts (dnsname.ValidHostname).
		{"hostname underscore", []string{"--hostname=my_host"}, nil, []string{
			`invalid --hostname "my_host": "my_host" is not a valid DNS label: contains invalid character '_'; ` + wantHostname}},
		{"hostname trailing hyphen", []string{"--hostname=host-"}, nil, []string{
			`invalid --hostname "host-": "host-" is not a valid DNS label: must end with a letter or number; ` + wantHostname}},
		{"hostname leading hyphen", nil, envMap{"TS_HOSTNAME": "-host"}, []string{
			`invalid TS_HOSTNAME "-host": "-host" is not a valid DNS label: must start with a letter or number; ` + wantHostname}},
		{"hostname empty label", []string{"--hostname=a..b"}, nil, []string{
			`invalid --hostname "a..b": "" is not a valid DNS label; ` + wantHostname}},
		{"hostname leading dot", []string{"--hostname=.host"}, nil, []string{
			`invalid --hostname ".host": starts with '.'; ` + wantHostname}},
		{"hostname label too long", []string{"--hostname=" + long}, nil, []string{
			`invalid --hostname "` + long + `": "` + long + `" is too long, max length is 63 bytes; ` + wantHostname}},
		{"hostname from TS_EXTRA_ARGS", nil, envMap{"TS_EXTRA_ARGS": "--hostname=my_host"}, []string{
			`invalid TS_EXTRA_ARGS --hostname "my_host": "my_host" is not a valid DNS label: contains invalid character '_'; ` + wantHostname}},
		{"hostname defaulted from the node name", nil, envMap{"NODE_NAME": long + ".example.com"}, []string{
			`invalid --hostname (default: the node name) "` + long + `.example.com": "` + long +
				`" is not a valid DNS label; ` + wantHostname}},

		// Node name and role label: what the role watcher checks (Kubernetes' validation).
		{"node name", []string{"--node-name=Node_1"}, nil, []string{
			`invalid --node-name "Node_1": ` + wantNodeName}},
		{"role label prefix", []string{"--role-label=Example.com/role"}, nil, []string{
			`invalid --role-label "Example.com/role": ` +
				`accepted: a Kubernetes label key such as ts-node-agent/role or example.com/tailscale-role`}},

		// Tags: tailcfg.CheckTag.
		{"tag prefix", []string{"--advertise-tags=tag:ok,k8s"}, nil, []string{
			`invalid --advertise-tags "k8s": tags must start with 'tag:'; ` + wantTag}},
		{"tag empty", []string{"--advertise-tags=tag:"}, nil, []string{
			`invalid --advertise-tags "tag:": tag names must not be empty; ` + wantTag}},
		{"tag digit", nil, envMap{"TS_NODE_AGENT_ADVERTISE_TAGS": "tag:9lives"}, []string{
			`invalid TS_NODE_AGENT_ADVERTISE_TAGS "tag:9lives": tag names must start with a letter, after 'tag:'; ` + wantTag}},
		{"tag underscore", []string{"--advertise-tags=tag:a_b"}, nil, []string{
			`invalid --advertise-tags "tag:a_b": tag names can only contain numbers, letters, or dashes; ` + wantTag}},

		// URLs.
		{"url scheme", []string{"--egress-check-url=ftp://x.example/"}, nil, []string{
			`invalid --egress-check-url "ftp://x.example/": the scheme is not http or https; ` + wantURL}},
		{"url without host", nil, envMap{"TS_NODE_AGENT_EGRESS_CHECK_URL": "https://"}, []string{
			`invalid TS_NODE_AGENT_EGRESS_CHECK_URL "https://": no host; ` + wantURL}},
		{"url with a port only", []string{"--egress-check-url=https://:443/ip"}, nil, []string{
			`invalid --egress-check-url "https://:443/ip": no host; ` + wantURL}},
		{"url port out of range", []string{"--egress-check-url=https://a.example:99999/ip"}, nil, []string{
			`invalid --egress-check-url "https://a.example:99999/ip": bad port; ` + wantURL}},
		{"url not parsable", []string{"--egress-check-url=https://a b/ip"}, nil, []string{
			`invalid --egress-check-url "https://a b/ip": not a URL; ` + wantURL}},
		{"url twice", []string{"--egress-check-url=https://a.example/ip,https://a.example/ip"}, nil, []string{
			`invalid --egress-check-url "https://a.example/ip": listed twice; accepted: each URL once`}},
		{"login server", []string{"--login-server=headscale.example.com"}, nil, []string{
			`invalid --login-server "headscale.example.com": the scheme is not http or https; ` + wantLogin}},
		{"login server port", []string{"--login-server=https://hs.example.com:0"}, nil, []string{
			`invalid --login-server "https://hs.example.com:0": bad port; ` + wantLogin}},

		// Exit node candidates: what the selector parses.
		{"candidate with a zone", []string{"--exit-nodes=fe80::1%eth0"}, nil, []string{
			`invalid --exit-nodes "fe80::1%eth0": a tailnet IP has no zone (%eth0); ` + wantCandidate}},
		{"candidate underscore", []string{"--exit-nodes=auto,my_host"}, nil, []string{
			`invalid --exit-nodes "my_host": "my_host" is not a valid DNS label: contains invalid character '_'; ` + wantCandidate}},
		{"candidate trailing hyphen", nil, envMap{"TS_NODE_AGENT_EXIT_NODES": "exit-"}, []string{
			`invalid TS_NODE_AGENT_EXIT_NODES "exit-": "exit-" is not a valid DNS label: must end with a letter or number; ` + wantCandidate}},
		{"candidate empty tag", []string{"--exit-nodes=tag:"}, nil, []string{
			`invalid --exit-nodes "tag:": tag names must not be empty; ` + wantCandidate}},
		{"candidate bad IPv4", []string{"--exit-nodes=100.64.0.300"}, nil, []string{
			`invalid --exit-nodes "100.64.0.300": not a valid IP address; ` + wantCandidate}},
		{"candidate from TS_EXTRA_ARGS", nil, envMap{"TS_EXTRA_ARGS": "--exit-node=fe80::1%eth0"}, []string{
			`invalid TS_EXTRA_ARGS --exit-node "fe80::1%eth0": a tailnet IP has no zone (%eth0); ` + wantCandidate}},

		// Paths.
		{"relative state dir", []string{"--state-dir=state"}, nil, []string{
			`invalid --state-dir "state": not an absolute path; ` + wantStateDir}},
		{"dot state dir", nil, envMap{"TS_STATE_DIR": "./state"}, []string{
			`invalid TS_STATE_DIR "./state": not an absolute path; ` + wantStateDir}},
		{"relative socket", []string{"--socket=run/ts.sock"}, nil, []string{
			`invalid --socket "run/ts.sock": not an absolute path; ` + wantSocket}},
		{"socket over sun_path", nil, envMap{"TS_SOCKET": socket108}, []string{
			`invalid TS_SOCKET "` + socket108 + `": 108 bytes, longer than 107 bytes, ` +
				`the sun_path limit of a Unix socket path; ` + wantSocket}},

		// Minimum durations.
		{"egress interval", []string{"--egress-check-interval=1ns"}, nil, []string{
			`invalid --egress-check-interval "1ns": at least 10s; ` + wantDuration}},
		{"egress interval 9s", nil, envMap{"TS_NODE_AGENT_EGRESS_CHECK_INTERVAL": "9s"}, []string{
			`invalid TS_NODE_AGENT_EGRESS_CHECK_INTERVAL "9s": at least 10s; ` + wantDuration}},
		{"exit commit timeout", []string{"--exit-commit-timeout=999ms"}, nil, []string{
			`invalid --exit-commit-timeout "999ms": at least 1s; ` + wantDuration}},
		{"failback after zero", []string{"--failback-after=0s"}, nil, []string{
			`invalid --failback-after "0s": at least 1s; ` + wantDuration}},
		{"failback after negative", []string{"--failback-after=-5s"}, nil, []string{
			`invalid --failback-after "-5s": at least 1s; ` + wantDuration}},
		{"shutdown timeout", nil, envMap{"TS_NODE_AGENT_SHUTDOWN_TIMEOUT": "0s"}, []string{
			`invalid TS_NODE_AGENT_SHUTDOWN_TIMEOUT "0s": at least 1s; ` + wantDuration}},
		{"liveness grace", []string{"--liveness-grace=9s"}, nil, []string{
			`invalid --liveness-grace "9s": at least 10s; ` + wantDuration}},

		// Bypass CIDRs.
		{"bypass tailnet v4", []string{"--bypass-cidrs=100.64.0.0/10"}, nil, []string{
			`invalid --bypass-cidrs "100.64.0.0/10": ` + wantTailnetV4 + "; " + wantBypass}},
		{"bypass inside the tailnet", []string{"--bypass-cidrs=100.100.100.100"}, nil, []string{
			`invalid --bypass-cidrs "100.100.100.100": ` + wantTailnetV4 + "; " + wantBypass}},
		{"bypass around the tailnet", nil, envMap{"TS_NODE_AGENT_BYPASS_CIDRS": "100.0.0.0/8"}, []string{
			`invalid TS_NODE_AGENT_BYPASS_CIDRS "100.0.0.0/8": ` + wantTailnetV4 + "; " + wantBypass}},
		{"bypass tailnet v6", []string{"--bypass-cidrs=fd7a:115c:a1e0::/64"}, nil, []string{
			`invalid --bypass-cidrs "fd7a:115c:a1e0::/64": ` + wantTailnetV6 + "; " + wantBypass}},
		{"bypass around the tailnet v6", []string{"--bypass-cidrs=fd7a::/16"}, nil, []string{
			`invalid --bypass-cidrs "fd7a::/16": ` + wantTailnetV6 + "; " + wantBypass}},
		{"bypass half of IPv4 and an eighth of IPv6", []string{"--bypass-cidrs=128.0.0.0/1,2000::/3"}, nil, []string{
			`invalid --bypass-cidrs "128.0.0.0/1": ` + wantBroadV4 + "; " + wantBypass,
			`invalid --bypass-cidrs "2000::/3": ` + wantBroadV6 + "; " + wantBypass}},
		{"bypass everything", []string{"--bypass-cidrs=0.0.0.0/0"}, nil, []string{
			`invalid --bypass-cidrs "0.0.0.0/0": ` + wantBroadV4 + "; " + wantBypass}},
		{"bypass /7", []string{"--bypass-cidrs=10.0.0.0/7"}, nil, []string{
			`invalid --bypass-cidrs "10.0.0.0/7": ` + wantBroadV4 + "; " + wantBypass}},

		// Addresses netcheck rejects.
		{"unspecified expected egress IP", []string{"--expected-egress-ip=0.0.0.0"}, nil, []string{
			`invalid --expected-egress-ip "0.0.0.0": the unspecified address; accepted: an IPv4 or IPv6 address such as 203.0.113.7 or 2001:db8::7`}},
		{"unspecified pod egress source", []string{"--pod-egress-source=::"}, nil, []string{
			`invalid --pod-egress-source "::": the unspecified address; accepted: an IPv4 or IPv6 address such as 198.18.128.1 or fd00::1`}},
		{"multicast pod egress source", []string{"--pod-egress-source=ff02::1"}, nil, []string{
			`invalid --pod-egress-source "ff02::1": a multicast address; accepted: an IPv4 or IPv6 address such as 198.18.128.1 or fd00::1`}},

		// Everything at once, in order: flags as given, then the environment.
		{"all at once", []string{"--hostname=host-", "--exit-nodes=fe80::1%eth0", "--socket=" + socket108,
			"--egress-check-interval=1ns", "--bypass-cidrs=128.0.0.0/1"}, envMap{"TS_STATE_DIR": "state"}, []string{
			`invalid --hostname "host-": "host-" is not a valid DNS label: must end with a letter or number; ` + wantHostname,
			`invalid --exit-nodes "fe80::1%eth0": a tailnet IP has no zone (%eth0); ` + wantCandidate,
			`invalid --socket "` + socket108 + `": 108 bytes, longer than 107 bytes, ` +
				`the sun_path limit of a Unix socket path; ` + wantSocket,
			`invalid --egress-check-interval "1ns": at least 10s; ` + wantDuration,
			`invalid --bypass-cidrs "128.0.0.0/1": ` + wantBroadV4 + "; " + wantBypass,
			`invalid TS_STATE_DIR "state": not an absolute path; ` + wantStateDir}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := base()
			for k, v := range tt.env {
				env[k] = v
			}
			got := parseErr(t, tt.args, env)
			if want := strings.Join(tt.want, "\n"); got != want {
				t.Errorf("problems:\n%s\nwant:\n%s", got, want)
			}
		})
	}

	// The values at the limits, and the defaults, are accepted.
	valid := [][]string{
		{"--hostname=node-1.example.com", "--hostname=Node-1", "--hostname=host.", "--hostname=a"},
		{"--exit-nodes=auto,100.64.0.1,fd7a:115c:a1e0::2,exit1,Exit-1.tail1234.ts.net.,tag:exit-eu-1"},
		{"--advertise-tags=tag:k8s,tag:Exit-1"},
		{"--egress-check-url=https://a.example:8443/ip,http://[2001:db8::1]/"},
		{"--login-server=https://hs.example.com:443"},
		{"--state-dir=/data/ts", "--socket=" + socket107},
		{"--egress-check-interval=10s", "--exit-commit-timeout=1s", "--failback-after=1s",
			"--shutdown-timeout=1s", "--liveness-grace=10s"},
		{"--bypass-cidrs=10.0.0.0/8,fd00::/16,100.63.255.255,100.128.0.0/9,fd7a:115c:a1e1::/48"},
		{"--node-name=ip-10-0-1-23.us-west-2.compute.internal"},
		{"--role-label=example.com/tailscale-role"},
	}
	for _, args := range valid {
		c := mustParse(t, args, base())
		if err := c.Validate(); err != nil {
			t.Errorf("Validate() after Parse(%q) = %v", args, err)
		}
	}
}

// TestMinimumsKeepTheDefaults: DESIGN's defaults are above the minimums.
func TestMinimumsKeepTheDefaults(t *testing.T) {
	d := Defaults()
	for _, tt := range []struct {
		name     string
		got, min time.Duration
	}{
		{"egress-check-interval", d.EgressCheckInterval, 10 * time.Second},
		{"exit-commit-timeout", d.ExitCommitTimeout, time.Second},
		{"failback-after", d.FailbackAfter, time.Second},
		{"shutdown-timeout", d.ShutdownTimeout, time.Second},
		{"liveness-grace", d.LivenessGrace, 10 * time.Second},
	} {
		if tt.got < tt.min {
			t.Errorf("default --%s %s is below its minimum %s", tt.name, tt.got, tt.min)
		}
	}
	c := Defaults()
	c.NodeName = "node-1"
	c.Hostname = "node-1"
	if err := c.Validate(); err != nil {
		t.Errorf("Validate(defaults) = %v", err)
	}
}
