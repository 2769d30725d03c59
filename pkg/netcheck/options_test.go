package netcheck

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		want []string // substrings of the error; none: valid
	}{
		{name: "zero", opts: Options{}},
		{name: "defaults", opts: Defaults()},
		{name: "full", opts: Options{
			EgressURLs:        []string{"https://api.ipify.org", "http://198.18.0.1:8080/ip"},
			ExpectedEgressIPs: []netip.Addr{ipA, netip.MustParseAddr("2001:db8::10")},
			TCPTargets:        []TCPTarget{{"db", "10.0.0.5:5432"}, {"s3", "s3.example.com:443"}, {"v6", "[2001:db8::1]:443"}},
		}},
		{name: "bad URLs", opts: Options{EgressURLs: []string{"ftp://x/", "http://", "http://a/", "http://a/", "://"}},
			want: []string{`"ftp://x/": want an http:// or https:// URL`, `"http://": want`, `"http://a/" is listed twice`, `"://"`}},
		{name: "expected without URL", opts: Options{ExpectedEgressIPs: []netip.Addr{ipA}},
			want: []string{"need at least one egress check URL"}},
		{name: "bad expected", opts: Options{EgressURLs: []string{"http://a/"},
			ExpectedEgressIPs: []netip.Addr{{}, netip.MustParseAddr("0.0.0.0"), netip.MustParseAddr("fe80::1%eth0")}},
			want: []string{`"invalid IP"`, `"0.0.0.0"`, `"fe80::1%eth0"`}},
		{name: "bad TCP targets", opts: Options{TCPTargets: []TCPTarget{
			{"", "a:1"}, {"db", "nohostport"}, {"db", "a:0"}, {"x", ":80"}, {"y", "a:http"}}},
			want: []string{"TCP check =a:1: want a non-empty name", "TCP check db=nohostport:", `"db" is used twice`,
				`port "0"`, "TCP check x=:80: missing host", `port "http"`}},
		{name: "negative durations", opts: Options{EgressInterval: -1, EgressTimeout: -1, TCPInterval: -1, TCPTimeout: -time.Second},
			want: []string{"egress interval", "egress timeout", "TCP interval", "TCP timeout -1s: must not be negative"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.opts.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
		})
	}
}

func TestNewDefaultsAndErrors(t *testing.T) {
	if _, err := New(nil, Options{}); err == nil {
		t.Error("nil store accepted")
	}
	store := snapshot.New(t0, snapshot.RoleWorker)
	if _, err := New(store, Options{EgressURLs: []string{"nope"}}); err == nil || !strings.HasPrefix(err.Error(), "netcheck: ") {
		t.Errorf("invalid options: %v", err)
	}
	mapped := netip.MustParseAddr("::ffff:198.18.0.10")
	expected := []netip.Addr{mapped}
	c, err := New(store, Options{EgressURLs: []string{"http://a/"}, ExpectedEgressIPs: expected})
	if err != nil {
		t.Fatal(err)
	}
	if expected[0] != mapped {
		t.Errorf("New changed the caller's slice: %v", expected)
	}
	if c.opts.EgressInterval != DefaultEgressInterval || c.opts.EgressTimeout != DefaultEgressTimeout ||
		c.opts.TCPInterval != DefaultTCPInterval || c.opts.TCPTimeout != DefaultTCPTimeout {
		t.Errorf("defaults not applied: %+v", c.opts)
	}
	if c.opts.ExpectedEgressIPs[0] != ipA {
		t.Errorf("expected IP %v not unmapped", c.opts.ExpectedEgressIPs[0])
	}
	if _, ok := c.EgressIP(); ok {
		t.Error("EgressIP known before any check")
	}
	if name := (TCPTarget{Name: "db"}).CheckName(); name != "tcp:db" {
		t.Errorf("CheckName %q", name)
	}
}
