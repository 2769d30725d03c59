package netcheck

import (
	"context"
	"errors"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

var (
	ipA = netip.MustParseAddr("198.18.0.10")
	ipB = netip.MustParseAddr("198.18.0.11")
	ipC = netip.MustParseAddr("198.18.0.12")
)

func TestEvaluateEgress(t *testing.T) {
	ok := func(u string, ip netip.Addr) urlResult { return urlResult{URL: u, IP: ip} }
	bad := func(u, msg string) urlResult { return urlResult{URL: u, Err: errors.New(msg)} }
	tests := []struct {
		name     string
		results  []urlResult
		expected []netip.Addr
		want     egressVerdict
	}{
		{name: "one URL", results: []urlResult{ok("http://a/", ipA)},
			want: egressVerdict{IP: ipA, OK: true}},
		{name: "all agree", results: []urlResult{ok("http://a/", ipA), ok("http://b/", ipA)},
			want: egressVerdict{IP: ipA, OK: true}},
		{name: "disagree", results: []urlResult{ok("http://a/", ipA), ok("http://b/", ipB)},
			want: egressVerdict{Reason: "egress check URLs disagree: http://a/ says 198.18.0.10, http://b/ says 198.18.0.11"}},
		{name: "disagree with a failure",
			results: []urlResult{ok("http://a/", ipA), bad("http://b/", "HTTP 502 Bad Gateway"), ok("http://c/", ipB)},
			want: egressVerdict{Reason: "egress check URLs disagree: http://a/ says 198.18.0.10, http://c/ says 198.18.0.11; " +
				"http://b/: HTTP 502 Bad Gateway"}},
		{name: "one fails, the others agree",
			results: []urlResult{bad("http://a/", "no complete answer within 10s"), ok("http://b/", ipA)},
			want:    egressVerdict{IP: ipA, OK: true}},
		{name: "all fail",
			results: []urlResult{bad("http://a/", "no complete answer within 10s"), bad("http://b/", "empty response")},
			want:    egressVerdict{Reason: "egress check failed: http://a/: no complete answer within 10s; http://b/: empty response"}},
		{name: "expected match", results: []urlResult{ok("http://a/", ipA)}, expected: []netip.Addr{ipA},
			want: egressVerdict{IP: ipA, OK: true}},
		{name: "expected one of", results: []urlResult{ok("http://a/", ipB)}, expected: []netip.Addr{ipA, ipB},
			want: egressVerdict{IP: ipB, OK: true}},
		{name: "expected mismatch", results: []urlResult{ok("http://a/", ipB)}, expected: []netip.Addr{ipA},
			want: egressVerdict{IP: ipB, Reason: "egress IP is 198.18.0.11, expected 198.18.0.10"}},
		{name: "expected mismatch of several", results: []urlResult{ok("http://a/", ipC)}, expected: []netip.Addr{ipA, ipB},
			want: egressVerdict{IP: ipC, Reason: "egress IP is 198.18.0.12, expected one of 198.18.0.10, 198.18.0.11"}},
		{name: "expected but disagree", results: []urlResult{ok("http://a/", ipA), ok("http://b/", ipB)}, expected: []netip.Addr{ipA},
			want: egressVerdict{Reason: "egress check URLs disagree: http://a/ says 198.18.0.10, http://b/ says 198.18.0.11"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := evaluateEgress(tt.results, tt.expected); got != tt.want {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

// TestFetch covers what an echo service may answer over HTTP, including a
// huge and a slow body: both cost a bounded read or one timeout.
func TestFetch(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	block := func(r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}
	tests := []struct {
		name    string
		handler http.HandlerFunc
		want    string // the address, or "" for an error
		wantErr string // substring of the error
		exact   bool   // wantErr is the whole error
	}{
		{name: "plain", handler: func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "198.18.0.10\n")
		}, want: "198.18.0.10"},
		{name: "JSON", handler: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"ip":"2001:db8::10","city":"Amsterdam"}`)
		}, want: "2001:db8::10"},
		{name: "HTML", handler: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			io.WriteString(w, "<html><body>198.18.0.10</body></html>")
		}, wantErr: "the answer is not an IP address (content type text/html)", exact: true},
		{name: "error status", handler: func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "rate limited", http.StatusTooManyRequests)
		}, wantErr: "HTTP 429 Too Many Requests", exact: true},
		{name: "redirect", handler: func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "/elsewhere", http.StatusMovedPermanently)
		}, wantErr: "HTTP 301 Moved Permanently: redirects are not followed", exact: true},
		{name: "huge chunked body", handler: func(w http.ResponseWriter, r *http.Request) {
			for range 100 {
				io.WriteString(w, strings.Repeat("x", 1000))
				w.(http.Flusher).Flush()
			}
		}, wantErr: "response larger than 4096 bytes"},
		{name: "huge announced body", handler: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", strconv.Itoa(1<<30))
			io.WriteString(w, "198.18.0.10")
		}, wantErr: "response larger than 4096 bytes"},
		{name: "slow headers", handler: func(w http.ResponseWriter, r *http.Request) {
			block(r)
		}, wantErr: "no complete answer within 200ms"},
		{name: "slow body", handler: func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "198.18.")
			w.(http.Flusher).Flush()
			block(r)
			io.WriteString(w, "0.10")
		}, wantErr: "no complete answer within 200ms"},
		{name: "refused", handler: nil, wantErr: "connection refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var u string
			if tt.handler != nil {
				srv := httptest.NewServer(tt.handler)
				t.Cleanup(srv.Close)
				u = srv.URL + "/"
			} else {
				srv := httptest.NewServer(http.NotFoundHandler())
				u = srv.URL + "/"
				srv.Close() // nothing listens there any more
			}
			c, err := New(snapshot.New(t0, snapshot.RoleWorker), Options{EgressURLs: []string{u}, EgressTimeout: 200 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			got, err := c.fetch(context.Background(), c.client, u)
			if elapsed := time.Since(start); elapsed > waitTimeout {
				t.Errorf("fetch took %v", elapsed)
			}
			if tt.want != "" {
				if err != nil || got != netip.MustParseAddr(tt.want) {
					t.Fatalf("got %v, %v; want %s", got, err, tt.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || tt.exact && err.Error() != tt.wantErr {
				t.Fatalf("got %v, %v; want an error containing %q", got, err, tt.wantErr)
			}
		})
	}
}

// TestNoProxy: the default client never uses an HTTP proxy, whatever the
// environment says, and dials through the injected dialer (here one that
// sends every connection to the loopback echo, so no name is resolved).
func TestNoProxy(t *testing.T) {
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "198.18.0.99")
	}))
	t.Cleanup(proxy.Close)
	t.Setenv("HTTP_PROXY", proxy.URL)
	t.Setenv("http_proxy", proxy.URL)
	e := newEcho(t, "198.18.0.10")
	dialed := make(chan string, 10)
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		dialed <- addr
		var d net.Dialer
		return d.DialContext(ctx, network, e.srv.Listener.Addr().String())
	}
	h := start(t, Options{EgressURLs: []string{"http://echo.test/"}}, WithDialer(dial))
	if tr, ok := h.c.client.Transport.(*http.Transport); !ok || tr.Proxy != nil {
		t.Errorf("default transport %T with a proxy function", h.c.client.Transport)
	}
	if c := h.first(CheckEgressIP); !c.OK {
		t.Fatalf("check failed: %s", c.Reason)
	}
	if got := h.egressIP(); got != "198.18.0.10" {
		t.Errorf("egress IP %q, want 198.18.0.10 (not the proxy's answer)", got)
	}
	if addr := <-dialed; addr != "echo.test:80" {
		t.Errorf("dialed %s, want the echo service itself (echo.test:80)", addr)
	}
}

func TestDisagreement(t *testing.T) {
	a, b := newEcho(t, "198.18.0.10\n"), newEcho(t, "198.18.0.11\n")
	h := start(t, Options{EgressURLs: []string{a.URL(), b.URL()}})
	c := h.first(CheckEgressIP)
	want := "egress check URLs disagree: " + a.URL() + " says 198.18.0.10, " + b.URL() + " says 198.18.0.11"
	if c.OK || c.Reason != want {
		t.Errorf("got %+v\nwant reason %q", c, want)
	}
	if ip := h.egressIP(); ip != "" {
		t.Errorf("EgressIP %q, want unknown", ip)
	}
	if n := testutil.CollectAndCount(h.c.m.egressInfo); n != 0 {
		t.Errorf("%d egress_ip_info series, want none while the URLs disagree", n)
	}
}

func TestAllFail(t *testing.T) {
	a, b := newEcho(t, "oops"), newEcho(t, "<html>")
	a.set(http.StatusInternalServerError, "oops")
	h := start(t, Options{EgressURLs: []string{a.URL(), b.URL()}})
	c := h.first(CheckEgressIP)
	want := "egress check failed: " + a.URL() + ": HTTP 500 Internal Server Error; " + b.URL() +
		": the answer is not an IP address (content type text/plain)"
	if c.OK || c.Reason != want {
		t.Errorf("got %+v\nwant reason %q", c, want)
	}
}

func TestExpectedEgressIP(t *testing.T) {
	e := newEcho(t, "198.18.0.10")
	h := start(t, Options{EgressURLs: []string{e.URL()}, ExpectedEgressIPs: []netip.Addr{ipA}})
	if c := h.first(CheckEgressIP); !c.OK || c.Reason != "" {
		t.Fatalf("matching egress IP: got %+v, want OK", c)
	}
	if v := testutil.ToFloat64(h.c.m.egressMatch); v != 1 {
		t.Errorf("egress_ip_match %v, want 1", v)
	}

	e.set(http.StatusOK, "198.18.0.11")
	c := h.recheck()
	if want := "egress IP is 198.18.0.11, expected 198.18.0.10"; c.OK || c.Reason != want {
		t.Errorf("mismatch: got %+v, want reason %q", c, want)
	}
	if v := testutil.ToFloat64(h.c.m.egressMatch); v != 0 {
		t.Errorf("egress_ip_match %v, want 0", v)
	}
	if got := h.egressIP(); got != "198.18.0.11" {
		t.Errorf("EgressIP %q: a mismatching IP is still the observed one", got)
	}

	e.set(http.StatusBadGateway, "")
	if c := h.recheck(); c.OK || !strings.Contains(c.Reason, "HTTP 502 Bad Gateway") {
		t.Errorf("echo down: got %+v", c)
	}
	if v := testutil.ToFloat64(h.c.m.egressMatch); v != 0 {
		t.Errorf("egress_ip_match %v with no observation, want 0", v)
	}
	if !h.durations.observed(CheckEgressIP) {
		t.Error("no duration observed for egress-ip")
	}
}

// TestChangesAndSeries: only the current IP has an egress_ip_info series,
// the first observation and gaps are not changes.
func TestChangesAndSeries(t *testing.T) {
	e := newEcho(t, "198.18.0.10")
	h := start(t, Options{EgressURLs: []string{e.URL()}})
	const header = `
# HELP ts_node_agent_egress_ip_changes_total Times the observed egress IP changed (the first observation is not a change).
# TYPE ts_node_agent_egress_ip_changes_total counter
# HELP ts_node_agent_egress_ip_info The egress IP the internet sees from this node (from=host) and from its pods (from=pod, workers with a pod CIDR); 1 for the current IP only, no series while unknown.
# TYPE ts_node_agent_egress_ip_info gauge
`
	expose := func(changes, ip string) string {
		s := header + "ts_node_agent_egress_ip_changes_total " + changes + "\n"
		if ip != "" {
			s += `ts_node_agent_egress_ip_info{from="host",ip="` + ip + `"} 1` + "\n"
		}
		return s
	}
	steps := []struct {
		status  int
		body    string
		changes string
		ip      string
	}{
		{http.StatusOK, "198.18.0.10", "0", "198.18.0.10"}, // first observation
		{http.StatusOK, "198.18.0.11", "1", "198.18.0.11"},
		{http.StatusOK, "198.18.0.11", "1", "198.18.0.11"},
		{http.StatusServiceUnavailable, "down", "1", ""},   // unknown: no series
		{http.StatusOK, "198.18.0.11", "1", "198.18.0.11"}, // same as before the gap
		{http.StatusOK, "2001:db8::10", "2", "2001:db8::10"},
		{http.StatusOK, "198.18.0.10", "3", "198.18.0.10"},
	}
	for i, s := range steps {
		e.set(s.status, s.body)
		if i == 0 {
			h.first(CheckEgressIP)
		} else {
			h.recheck()
		}
		if err := testutil.GatherAndCompare(h.reg, strings.NewReader(expose(s.changes, s.ip)),
			"ts_node_agent_egress_ip_changes_total", "ts_node_agent_egress_ip_info"); err != nil {
			t.Fatalf("step %d (%s): %v", i, s.body, err)
		}
		if got := h.egressIP(); got != s.ip {
			t.Fatalf("step %d: EgressIP %q, want %q", i, got, s.ip)
		}
	}
}

// TestInterval: the next round comes after the interval on the fake
// clock, jittered by WithRand.
func TestInterval(t *testing.T) {
	e := newEcho(t, "198.18.0.10")
	h := start(t, Options{EgressURLs: []string{e.URL()}, EgressInterval: 40 * time.Second})
	h.first(CheckEgressIP)
	h.waitWaiters(2) // the heartbeat ticker and the egress timer
	h.clock.Step(39 * time.Second)
	h.clock.Step(time.Second)
	h.waitCheck(CheckEgressIP, checkedAt(t0.Add(40*time.Second)))
	if n := e.requests.Load(); n != 2 {
		t.Errorf("%d requests after one interval, want 2", n)
	}
	if hb := h.store.Load().Heartbeats[HeartbeatName]; hb.IsZero() {
		t.Error("no heartbeat")
	}
}

func TestJitter(t *testing.T) {
	for _, tt := range []struct {
		r    float64
		want time.Duration
	}{
		{0, 54 * time.Second},
		{0.25, 57 * time.Second},
		{0.5, 60 * time.Second},
		{0.75, 63 * time.Second},
		{0.9999999, 66 * time.Second},
		{1, 60 * time.Second}, // out of range: no jitter
		{-1, 60 * time.Second},
	} {
		c := &Checker{rand: func() float64 { return tt.r }}
		if got := c.jittered(time.Minute); got.Round(time.Millisecond) != tt.want {
			t.Errorf("rand %v: %v, want %v", tt.r, got, tt.want)
		}
	}
}

// TestTrigger: Trigger re-checks at once, without the interval elapsing.
func TestTrigger(t *testing.T) {
	e := newEcho(t, "198.18.0.10")
	h := start(t, Options{EgressURLs: []string{e.URL()}})
	h.first(CheckEgressIP)
	e.set(http.StatusOK, "198.18.0.11")
	h.recheck() // a second on the fake clock: far from the interval
	if got := h.egressIP(); got != "198.18.0.11" {
		t.Errorf("EgressIP %q after Trigger, want 198.18.0.11", got)
	}
}

// TestExitNodeChangeTriggers: a change of the exit node in the snapshot
// re-checks at once.
func TestExitNodeChangeTriggers(t *testing.T) {
	e := newEcho(t, "198.18.0.10")
	h := start(t, Options{EgressURLs: []string{e.URL()}})
	h.first(CheckEgressIP)
	for i, change := range []func(){
		func() { h.store.SetExitNode(snapshot.ExitNode{CurrentID: "nExit1", Healthy: true}) },
		func() { h.store.UpdateTailnet(func(tn *snapshot.Tailnet) { tn.ExitNodeID = "nExit2" }) },
		func() { h.store.SetExitNode(snapshot.ExitNode{Fallback: "direct"}) },
		func() { h.store.SetRole(snapshot.RoleExit) },
	} {
		h.clock.Step(time.Second)
		want := h.clock.Now()
		change()
		h.waitCheck(CheckEgressIP, checkedAt(want))
		if n := e.requests.Load(); n != int64(i+2) {
			t.Errorf("change %d: %d requests, want %d", i, n, i+2)
		}
	}
}

func TestEgressKey(t *testing.T) {
	base := &snapshot.Snapshot{Role: snapshot.RoleWorker}
	same := *base
	same.Host = snapshot.Host{Known: true, IPv4Forwarding: true}
	same.Checks = map[string]snapshot.Check{CheckEgressIP: {OK: true}}
	if egressKey(base) != egressKey(&same) {
		t.Error("unrelated changes change the egress path")
	}
	other := *base
	other.ExitNode.CurrentID = "n1"
	if egressKey(base) == egressKey(&other) {
		t.Error("another exit node does not change the egress path")
	}
}

// TestURLsRedacted: a token in an egress check URL never shows in a reason.
func TestURLsRedacted(t *testing.T) {
	e := newEcho(t, "nope")
	u := strings.Replace(e.URL(), "http://", "http://user:hunter2@", 1) + "json?token=s3cr3t#frag"
	h := start(t, Options{EgressURLs: []string{u}})
	c := h.first(CheckEgressIP)
	if strings.Contains(c.Reason, "s3cr3t") || strings.Contains(c.Reason, "hunter2") {
		t.Errorf("reason shows a secret: %q", c.Reason)
	}
	if want := "egress check failed: " + e.URL() + "json?...: "; !strings.HasPrefix(c.Reason, want) {
		t.Errorf("reason %q, want prefix %q", c.Reason, want)
	}
	if err := (Options{EgressURLs: []string{u, u}}).Validate(); err == nil || strings.Contains(err.Error(), "s3cr3t") {
		t.Errorf("Validate: %v", err)
	}
}

func TestChecks(t *testing.T) {
	gates := func(o Options) map[string][]snapshot.Role {
		out := map[string][]snapshot.Role{}
		for _, d := range o.Checks() {
			if !d.Informational {
				t.Errorf("%s is not informational outside the roles it gates", d.Name)
			}
			out[d.Name] = d.Gates
		}
		return out
	}
	both, worker := []snapshot.Role{snapshot.RoleExit, snapshot.RoleWorker}, []snapshot.Role{snapshot.RoleWorker}
	for _, tt := range []struct {
		name string
		o    Options
		want map[string][]snapshot.Role
	}{
		{"without expected IPs", Options{EgressURLs: []string{"http://a/"}, PodEgress: true},
			map[string][]snapshot.Role{CheckEgressIP: nil, CheckEgressIPPod: nil}},
		{"with expected IPs", Options{EgressURLs: []string{"http://a/"}, ExpectedEgressIPs: []netip.Addr{ipA}},
			map[string][]snapshot.Role{CheckEgressIP: both, CheckEgressIPPod: nil}},
		{"with expected IPs and pods", Options{EgressURLs: []string{"http://a/"}, ExpectedEgressIPs: []netip.Addr{ipA}, PodEgress: true},
			map[string][]snapshot.Role{CheckEgressIP: both, CheckEgressIPPod: worker}},
		{"TCP targets", Options{TCPTargets: []TCPTarget{{Name: "db", Addr: "db:5432"}}},
			map[string][]snapshot.Role{CheckEgressIP: nil, CheckEgressIPPod: nil, "tcp:db": nil}},
	} {
		if got := gates(tt.o); !maps.EqualFunc(got, tt.want, slices.Equal) {
			t.Errorf("%s: gates %v, want %v", tt.name, got, tt.want)
		}
	}
}
