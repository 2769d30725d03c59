package validate

import (
	"strings"
	"testing"

	"tailscale.com/util/dnsname"
)

type row struct {
	in   string
	want string // "" for valid, else the exact reason
}

func run(t *testing.T, name string, f func(string) error, rows []row) {
	t.Helper()
	for _, r := range rows {
		err := f(r.in)
		switch {
		case r.want == "" && err != nil:
			t.Errorf("%s(%q) = %v, want nil", name, r.in, err)
		case r.want != "" && err == nil:
			t.Errorf("%s(%q) = nil, want %q", name, r.in, r.want)
		case r.want != "" && err.Error() != r.want:
			t.Errorf("%s(%q) = %q, want %q", name, r.in, err, r.want)
		}
	}
}

func TestHostname(t *testing.T) {
	long := strings.Repeat("a", 64)
	run(t, "Hostname", Hostname, []row{
		{"node-1", ""},
		{"Node-1", ""},
		{"a", ""},
		{"1", ""},
		{strings.Repeat("a", 63), ""},
		{"ip-10-0-1-23.eu-west-1.compute.internal", ""},
		{"host.", ""},
		{"", "empty"},
		{".", "starts with '.'"},
		{".host", "starts with '.'"},
		{"my_host", `"my_host" is not a valid DNS label: contains invalid character '_'`},
		{"host-", `"host-" is not a valid DNS label: must end with a letter or number`},
		{"-host", `"-host" is not a valid DNS label: must start with a letter or number`},
		{"a b", `"a b" is not a valid DNS label: contains invalid character ' '`},
		{"a..b", `"" is not a valid DNS label`},
		{long, `"` + long + `" is too long, max length is 63 bytes`},
		{strings.Repeat("a.", 126) + "ab", `"` + strings.Repeat("a.", 126) + `ab" is too long to be a DNS name`},
	})
	// Whatever Hostname accepts, tailscale up accepts.
	for _, s := range []string{"node-1", "Node-1", "host.", "ip-10-0-1-23.eu-west-1.compute.internal"} {
		if err := dnsname.ValidHostname(s); err != nil {
			t.Errorf("dnsname.ValidHostname(%q) = %v", s, err)
		}
	}
}

func TestTag(t *testing.T) {
	run(t, "Tag", Tag, []row{
		{"tag:k8s", ""},
		{"tag:Exit-1", ""},
		{"k8s", "tags must start with 'tag:'"},
		{"tag:", "tag names must not be empty"},
		{"tag:9lives", "tag names must start with a letter, after 'tag:'"},
		{"tag:a_b", "tag names can only contain numbers, letters, or dashes"},
	})
}

func TestExitNodeCandidate(t *testing.T) {
	run(t, "ExitNodeCandidate", ExitNodeCandidate, []row{
		{"auto", ""},
		{"100.64.0.1", ""},
		{"fd7a:115c:a1e0::2", ""},
		{"::ffff:100.64.0.2", ""},
		{"exit1", ""},
		{"Exit-1.tail1234.ts.net.", ""},
		{"tag:exit-eu-1", ""},
		{"1exit", ""},
		{"123", ""}, // a hostname of digits only is a hostname
		{"", "empty"},
		{"fe80::1%eth0", "a tailnet IP has no zone (%eth0)"},
		{"100.64.0.300", "not a valid IP address"},
		{"100.64.0", "not a valid IP address"},
		{"tag:", "tag names must not be empty"},
		{"my_host", `"my_host" is not a valid DNS label: contains invalid character '_'`},
		{"exit-", `"exit-" is not a valid DNS label: must end with a letter or number`},
		{"http://exit1", `"http://exit1" is not a valid DNS label: contains invalid character ':'`},
	})
}

func TestHTTPURL(t *testing.T) {
	run(t, "HTTPURL", HTTPURL, []row{
		{"https://ifconfig.me/ip", ""},
		{"http://a.example:8080/", ""},
		{"HTTPS://a.example/", ""},
		{"http://[2001:db8::1]/ip", ""},
		{"https://a.example/json?token=secret", ""},
		{"ftp://a.example/", "the scheme is not http or https"},
		{"a.example/ip", "the scheme is not http or https"},
		{"https://", "no host"},
		{"https://:443/", "no host"},
		{"https://a.example:0/", "bad port"},
		{"https://a.example:65536/", "bad port"},
		{"https://a b/", "not a URL"},
		{"https://a.example:x/?token=secret", "not a URL"}, // never echoes the URL
	})
}

func TestPaths(t *testing.T) {
	run(t, "AbsPath", AbsPath, []row{
		{"/var/lib/tailscale", ""},
		{"", "must not be empty"},
		{" ", "must not be empty"},
		{"state", "not an absolute path"},
		{"./state", "not an absolute path"},
	})
	s107 := "/" + strings.Repeat("s", 106)
	run(t, "SocketPath", SocketPath, []row{
		{"/var/run/tailscale/tailscaled.sock", ""},
		{s107, ""},
		{s107 + "s", "108 bytes, longer than 107 bytes, the sun_path limit of a Unix socket path"},
		{"ts.sock", "not an absolute path"},
		{"", "must not be empty"},
	})
}

func TestInterfaceName(t *testing.T) {
	run(t, "InterfaceName", InterfaceName, []row{
		{"tailscale0", ""},
		{strings.Repeat("t", 15), ""},
		{"", "empty"},
		{strings.Repeat("t", 16), "longer than 15 characters"},
		{".", "not a name"},
		{"..", "not a name"},
		{"ts/0", "contains '/', ':', a space or a non-ASCII character"},
		{"ts:0", "contains '/', ':', a space or a non-ASCII character"},
		{"ts 0", "contains '/', ':', a space or a non-ASCII character"},
		{"tsé", "contains '/', ':', a space or a non-ASCII character"},
	})
}
