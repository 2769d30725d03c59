package exitnode

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

func TestParseCandidate(t *testing.T) {
	valid := []struct {
		in   string
		want Candidate
		str  string
	}{
		{"auto", Candidate{Kind: KindAuto}, "auto"},
		{" auto ", Candidate{Kind: KindAuto}, "auto"},
		{"100.64.0.2", Candidate{Kind: KindIP, IP: netip.MustParseAddr("100.64.0.2")}, "100.64.0.2"},
		{"fd7a:115c:a1e0::2", Candidate{Kind: KindIP, IP: netip.MustParseAddr("fd7a:115c:a1e0::2")}, "fd7a:115c:a1e0::2"},
		{"::ffff:100.64.0.2", Candidate{Kind: KindIP, IP: netip.MustParseAddr("100.64.0.2")}, "100.64.0.2"},
		{"exit1", Candidate{Kind: KindHost, Name: "exit1"}, "exit1"},
		{"Exit1", Candidate{Kind: KindHost, Name: "exit1"}, "exit1"},
		{"exit1.tail1234.ts.net.", Candidate{Kind: KindHost, Name: "exit1.tail1234.ts.net"}, "exit1.tail1234.ts.net"},
		{"my-host-2", Candidate{Kind: KindHost, Name: "my-host-2"}, "my-host-2"},
		{"1exit", Candidate{Kind: KindHost, Name: "1exit"}, "1exit"},
		{"AUTO", Candidate{Kind: KindHost, Name: "auto"}, "auto"}, // only "auto" is the keyword
		{"tag:exit", Candidate{Kind: KindTag, Name: "tag:exit"}, "tag:exit"},
		{"tag:exit-eu-1", Candidate{Kind: KindTag, Name: "tag:exit-eu-1"}, "tag:exit-eu-1"},
	}
	for _, tc := range valid {
		t.Run("valid/"+tc.in, func(t *testing.T) {
			got, err := ParseCandidate(tc.in)
			if err != nil {
				t.Fatalf("ParseCandidate(%q): %v", tc.in, err)
			}
			if got != tc.want {
				t.Errorf("ParseCandidate(%q) = %+v, want %+v", tc.in, got, tc.want)
			}
			if got.String() != tc.str {
				t.Errorf("String() = %q, want %q", got.String(), tc.str)
			}
		})
	}

	invalid := []struct {
		in      string
		wantErr string
	}{
		{"", "empty"},
		{"   ", "empty"},
		{"tag:", "tag names must not be empty"},
		{"tag:1exit", "must start with a letter"},
		{"tag:exit_1", "only contain"},
		{"-exit", "must start with a letter or number"},
		{"exit-", "must end with a letter or number"},
		{"exit..one", `"" is not a valid DNS label`},
		{".exit", "starts with '.'"},
		// An OS hostname that is not a DNS name: name the peer by its
		// MagicDNS name instead, as tailscale set --exit-node does.
		{"my_host-2", "invalid character '_'"},
		{"100.64.0.300", "not a valid IP address"},
		{"exit 1", "invalid character"},
		{"exit/1", "invalid character"},
		{"http://exit1", "invalid character"},
		{"fe80::1%eth0", "no zone"},
		{strings.Repeat("a", 64), "too long, max length is 63"},
		{strings.Repeat("a.", 127) + "ab", "too long to be a DNS name"},
	}
	for _, tc := range invalid {
		t.Run("invalid/"+tc.in, func(t *testing.T) {
			got, err := ParseCandidate(tc.in)
			if err == nil {
				t.Fatalf("ParseCandidate(%q) = %+v, want an error", tc.in, got)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseCandidate(%q) error %q does not contain %q", tc.in, err, tc.wantErr)
			}
		})
	}
}

func TestParseCandidatesReportsEveryProblem(t *testing.T) {
	_, err := ParseCandidates([]string{"exit1", "tag:", "a b", "auto"})
	if err == nil {
		t.Fatal("want an error")
	}
	for _, want := range []string{`"tag:"`, `"a b"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}

// resolvePeers is a small tailnet: sorted by HostName like the snapshot.
var resolvePeers = []snapshot.Peer{
	{ID: "n2", HostName: "Exit2", DNSName: "exit2.tail.ts.net.", Tags: []string{"tag:exit"},
		TailscaleIPs: addrs("100.64.0.2", "fd7a:115c:a1e0::2"), Online: true, ExitNodeOption: true},
	{ID: "n1", HostName: "exit1", DNSName: "exit1.tail.ts.net.", Tags: []string{"tag:exit"},
		TailscaleIPs: addrs("100.64.0.1", "fd7a:115c:a1e0::1"), Online: true, ExitNodeOption: true},
	{ID: "n3", HostName: "exit3", DNSName: "exit3.tail.ts.net.", Tags: []string{"tag:other"},
		TailscaleIPs: addrs("100.64.0.3"), Online: false, ExitNodeOption: true},
	{ID: "n5", HostName: "localhost", DNSName: "exit5.tail.ts.net.",
		TailscaleIPs: addrs("100.64.0.5"), Online: true, ExitNodeOption: true},
	{ID: "n4", HostName: "exit4", DNSName: "exit4.tail.ts.net.", Tags: []string{"tag:exit"},
		TailscaleIPs: addrs("100.64.0.4"), Online: true, ExitNodeOption: false}, // advertised, not approved
	{ID: "n6", HostName: "worker1", DNSName: "worker1.tail.ts.net.", Tags: []string{"tag:exit"},
		TailscaleIPs: addrs("100.64.0.6"), Online: true},
	{ID: "n1", HostName: "exit1", DNSName: "exit1.tail.ts.net.", Tags: []string{"tag:exit"},
		TailscaleIPs: addrs("100.64.0.1"), Online: true, ExitNodeOption: true}, // listed twice
}

func TestResolve(t *testing.T) {
	tests := []struct {
		name  string
		cands []string
		want  []string // peer IDs
	}{
		{"ipv4", []string{"100.64.0.2"}, []string{"n2"}},
		{"ipv6", []string{"fd7a:115c:a1e0::1"}, []string{"n1"}},
		{"ip of no peer", []string{"100.64.0.99"}, nil},
		{"hostname", []string{"exit1"}, []string{"n1"}},
		{"hostname case-insensitive", []string{"EXIT2"}, []string{"n2"}},
		{"dns name", []string{"exit1.tail.ts.net"}, []string{"n1"}},
		{"dns name with trailing dot", []string{"exit2.tail.ts.net."}, []string{"n2"}},
		{"first label of dns name", []string{"exit5"}, []string{"n5"}},
		{"tag, ordered by hostname", []string{"tag:exit"}, []string{"n1", "n2"}},
		{"tag of no peer", []string{"tag:nope"}, nil},
		{"auto, ordered by hostname", []string{"auto"}, []string{"n1", "n2", "n3", "n5"}},
		{"candidate order wins", []string{"exit3", "exit2", "exit1"}, []string{"n3", "n2", "n1"}},
		{"duplicates kept at first position", []string{"exit2", "auto", "100.64.0.2", "tag:exit"}, []string{"n2", "n1", "n3", "n5"}},
		{"not approved skipped", []string{"exit4"}, nil},
		{"not offering skipped", []string{"worker1", "100.64.0.6"}, nil},
		{"offline kept", []string{"exit3"}, []string{"n3"}},
		{"no candidates", nil, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cands, err := ParseCandidates(tc.cands)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range Resolve(cands, resolvePeers) {
				got = append(got, p.ID)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("Resolve(%q) = %q, want %q", tc.cands, got, tc.want)
			}
		})
	}
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}
