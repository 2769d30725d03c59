package metrics

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

// fakeTailscaled is what tailscaled's LocalAPI /usermetrics answers (its
// usermetric package writes TYPE before HELP), plus two families that
// collide with ours and must be dropped.
const fakeTailscaled = `# TYPE tailscaled_advertised_routes gauge
# HELP tailscaled_advertised_routes Number of advertised network routes (e.g. by a subnet router)
tailscaled_advertised_routes 2
# TYPE tailscaled_inbound_packets_total counter
# HELP tailscaled_inbound_packets_total Counts the number of packets received from other peers
tailscaled_inbound_packets_total{path="derp"} 3
tailscaled_inbound_packets_total{path="direct_ipv4"} 12
# TYPE tailscaled_health_messages gauge
# HELP tailscaled_health_messages Number of health messages broken down by type.
tailscaled_health_messages{type="warning"} 1
# TYPE ts_node_agent_ready gauge
ts_node_agent_ready 42
# TYPE go_goroutines gauge
go_goroutines 99999
`

const fakeTailscaledLater = `# TYPE tailscaled_advertised_routes gauge
# HELP tailscaled_advertised_routes Number of advertised network routes (e.g. by a subnet router)
tailscaled_advertised_routes 0`

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		case <-tick.C:
		}
	}
}

func familyNames(mfs []*dto.MetricFamily) []string {
	var out []string
	for _, mf := range mfs {
		out = append(out, mf.GetName())
	}
	return out
}

func scrape(t *testing.T, h http.Handler, accept string) (*http.Response, []byte) {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	res := rec.Result()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res, body
}

// newRegistry is what main builds: our collector, the check histogram and
// the Go runtime collector.
func newRegistry(t *testing.T) *prometheus.Registry {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector())
	sn := running(snapshot.RoleExit)
	sn.Tailnet.ExitRoutesAdvertised = true
	if _, err := Register(reg, storeOf(sn), info, probeOpts(), WithClock(testingclock.NewFakeClock(now))); err != nil {
		t.Fatal(err)
	}
	return reg
}

func TestHandlerAppendsTailscaledMetrics(t *testing.T) {
	reg := newRegistry(t)
	um := NewUserMetrics()
	if err := um.Update([]byte(fakeTailscaled)); err != nil {
		t.Fatal(err)
	}
	h := Handler(reg, um)

	res, body := scrape(t, h, "")
	if res.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", res.StatusCode, body)
	}
	text := string(body)
	for _, want := range []string{
		"ts_node_agent_ready 0\n",
		`ts_node_agent_build_info{goversion="go1.26.8",tailscale_version="v1.102.5",version="v0.3.0"} 1`,
		"tailscaled_advertised_routes 2\n",
		`tailscaled_inbound_packets_total{path="direct_ipv4"} 12`,
		`tailscaled_health_messages{type="warning"} 1`,
		"# HELP tailscaled_inbound_packets_total Counts the number of packets received from other peers\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
	for _, bad := range []string{"ts_node_agent_ready 42", "go_goroutines 99999"} {
		if strings.Contains(text, bad) {
			t.Errorf("scrape has colliding tailscaled series %q", bad)
		}
	}

	// The whole answer is one valid exposition: every family once.
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("scrape does not parse: %v\n%s", err, body)
	}
	if n := len(fams["go_goroutines"].GetMetric()); n != 1 {
		t.Errorf("go_goroutines has %d series, want 1 (ours)", n)
	}
	if n := len(fams["ts_node_agent_ready"].GetMetric()); n != 1 {
		t.Errorf("ts_node_agent_ready has %d series, want 1", n)
	}

	// Protobuf negotiation carries tailscaled's families too.
	res, body = scrape(t, h, `application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited`)
	dec := expfmt.NewDecoder(bytes.NewReader(body), expfmt.ResponseFormat(res.Header))
	found := false
	for {
		var mf dto.MetricFamily
		if err := dec.Decode(&mf); err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
			break
		}
		if mf.GetName() == "tailscaled_inbound_packets_total" && mf.GetType() == dto.MetricType_COUNTER {
			found = true
		}
	}
	if !found {
		t.Errorf("protobuf scrape (%s) lacks tailscaled_inbound_packets_total", res.Header.Get("Content-Type"))
	}
}

func TestHandlerWithoutUserMetrics(t *testing.T) {
	reg := newRegistry(t)
	for _, um := range []*UserMetrics{nil, NewUserMetrics()} {
		res, body := scrape(t, Handler(reg, um), "")
		if res.StatusCode != http.StatusOK || !strings.Contains(string(body), "ts_node_agent_live 1\n") {
			t.Errorf("status %d, body:\n%s", res.StatusCode, body)
		}
		if strings.Contains(string(body), "\ntailscaled_") {
			t.Error("tailscaled metrics without any fetched")
		}
	}
}

// TestHandlerDoesNotCompress: Prometheus sends Accept-Encoding: gzip with
// every scrape, and the answer is plain text anyway (see Handler for why).
func TestHandlerDoesNotCompress(t *testing.T) {
	h := Handler(newRegistry(t), nil)
	req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	req.Header.Set("Accept-Encoding", "gzip, deflate, zstd")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	res := rec.Result()
	if enc := res.Header.Get("Content-Encoding"); enc != "" {
		t.Errorf("Content-Encoding %q, want none", enc)
	}
	if body := rec.Body.String(); !strings.Contains(body, "ts_node_agent_live 1\n") {
		t.Errorf("status %d, body not plain text:\n%.200q", res.StatusCode, body)
	}
}

// failingCollector makes the registry return an error with partial results.
type failingCollector struct{ d *prometheus.Desc }

func (f failingCollector) Describe(ch chan<- *prometheus.Desc) { ch <- f.d }
func (f failingCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.NewInvalidMetric(f.d, errors.New("broken"))
}

func TestHandlerContinuesOnError(t *testing.T) {
	reg := newRegistry(t)
	reg.MustRegister(failingCollector{prometheus.NewDesc("broken_thing", "A broken collector.", nil, nil)})
	um := NewUserMetrics()
	if err := um.Update([]byte(fakeTailscaled)); err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	h := Handler(reg, um, WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	res, body := scrape(t, h, "")
	if res.StatusCode != http.StatusOK {
		t.Errorf("status %d", res.StatusCode)
	}
	for _, want := range []string{"ts_node_agent_ready 0\n", "tailscaled_advertised_routes 2\n"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
	if !strings.Contains(logs.String(), "broken") || !strings.Contains(logs.String(), "component=metrics") {
		t.Errorf("error not logged: %s", logs.String())
	}
}

func TestUserMetricsUpdate(t *testing.T) {
	um := NewUserMetrics(WithClock(testingclock.NewFakeClock(now)))
	if !um.UpdatedAt().IsZero() {
		t.Error("UpdatedAt set before any update")
	}
	if err := um.Update([]byte(fakeTailscaled)); err != nil {
		t.Fatal(err)
	}
	mfs, _ := um.Gather()
	want := []string{"go_goroutines", "tailscaled_advertised_routes", "tailscaled_health_messages", "tailscaled_inbound_packets_total"}
	if got := familyNames(mfs); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("families = %v, want %v (sorted, ts_node_agent_* dropped)", got, want)
	}
	if !um.UpdatedAt().Equal(now) {
		t.Errorf("UpdatedAt = %v", um.UpdatedAt())
	}

	// Garbage keeps the last good copy.
	for _, bad := range []string{"tailscaled_x{", "# TYPE a gauge\n# TYPE a counter\na 1\n", "not a metric line at all {{{\n"} {
		if err := um.Update([]byte(bad)); err == nil {
			t.Errorf("Update(%q): no error", bad)
		}
	}
	mfs, _ = um.Gather()
	if len(mfs) != len(want) {
		t.Errorf("after garbage: %v", familyNames(mfs))
	}

	// No trailing newline is fine; empty is a valid (empty) answer.
	if err := um.Update([]byte(fakeTailscaledLater)); err != nil {
		t.Fatal(err)
	}
	if mfs, _ = um.Gather(); len(mfs) != 1 || mfs[0].GetMetric()[0].GetGauge().GetValue() != 0 {
		t.Errorf("after later update: %v", mfs)
	}
	if err := um.Update(nil); err != nil {
		t.Errorf("empty: %v", err)
	}
}

// scripted is a fake LocalAPI UserMetrics: each call returns the next answer.
type scripted struct {
	mu      sync.Mutex
	answers []answer
	calls   int
}

type answer struct {
	text string
	err  error
}

func (s *scripted) fetch(ctx context.Context) ([]byte, error) {
	if _, ok := ctx.Deadline(); !ok {
		return nil, errors.New("fetch without deadline")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.answers[min(s.calls, len(s.answers)-1)]
	s.calls++
	return []byte(a.text), a.err
}

func (s *scripted) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

func TestUserMetricsRun(t *testing.T) {
	clk := testingclock.NewFakeClock(now)
	var logs syncBuffer
	um := NewUserMetrics(WithClock(clk), WithLogger(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	src := &scripted{answers: []answer{
		{err: errors.New("dial unix /var/run/tailscale/tailscaled.sock: connect: no such file or directory")},
		{text: fakeTailscaled},
		{err: errors.New("503 Service Unavailable")},
		{text: "garbage {{{"},
		{text: fakeTailscaledLater},
	}}
	reg := newRegistry(t)
	h := Handler(reg, um)
	scrapeHas := func(s string) bool {
		_, body := scrape(t, h, "")
		return strings.Contains(string(body), s)
	}
	hasLog := func(s string) func() bool {
		return func() bool { return strings.Contains(logs.String(), s) }
	}
	defer func() {
		if t.Failed() {
			t.Logf("logs:\n%s", logs.String())
		}
	}()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- um.Run(ctx, src.fetch, 30*time.Second) }()

	// 1: tailscaled not up yet: nothing cached, quiet log, scrape works.
	waitFor(t, "not available log", hasLog(`level=DEBUG msg="tailscaled user metrics not available yet"`))
	if scrapeHas("\ntailscaled_") || !scrapeHas("ts_node_agent_live 1") {
		t.Error("scrape before the first good fetch")
	}

	// 2: a good fetch.
	clk.Step(30 * time.Second)
	waitFor(t, "first good copy", func() bool { return !um.UpdatedAt().IsZero() })
	waitFor(t, "available log", hasLog(`level=INFO msg="tailscaled user metrics available, appended to /metrics"`))
	if !scrapeHas("tailscaled_advertised_routes 2\n") {
		t.Error("scrape lacks the fetched copy")
	}

	// 3: a failed fetch keeps the last good copy, and says so once.
	clk.Step(30 * time.Second)
	waitFor(t, "failure log", hasLog(`level=WARN msg="tailscaled user metrics fetch failed, serving the last good copy" component=metrics err="fetching tailscaled user metrics: 503 Service Unavailable" age=30s`))
	if !scrapeHas("tailscaled_advertised_routes 2\n") || !scrapeHas("ts_node_agent_ready 0\n") {
		t.Error("scrape after a failed fetch lost data")
	}

	// 4: garbage too.
	clk.Step(30 * time.Second)
	waitFor(t, "fourth fetch", func() bool { return src.count() >= 4 })

	// 5: recovery.
	clk.Step(30 * time.Second)
	waitFor(t, "recovered copy", func() bool { return scrapeHas("tailscaled_advertised_routes 0\n") })
	waitFor(t, "recovery log", hasLog(`msg="tailscaled user metrics fetch recovered"`))
	if strings.Count(logs.String(), "level=WARN") != 1 || strings.Count(logs.String(), "recovered") != 1 {
		t.Errorf("want exactly one warning and one recovery for the failure streak")
	}

	// Scrapes never fetch.
	calls := src.count()
	for range 5 {
		scrape(t, h, "")
	}
	if src.count() != calls {
		t.Errorf("scrapes called fetch: %d -> %d", calls, src.count())
	}

	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}

func TestUserMetricsFetchTimeout(t *testing.T) {
	um := NewUserMetrics(WithLogger(slog.New(slog.DiscardHandler)))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	deadlines := make(chan time.Duration, 1)
	fetch := func(ctx context.Context) ([]byte, error) {
		dl, _ := ctx.Deadline()
		select {
		case deadlines <- time.Until(dl):
		default:
		}
		cancel()
		return nil, ctx.Err()
	}
	if err := um.Run(ctx, fetch, time.Hour); err != nil {
		t.Fatal(err)
	}
	if d := <-deadlines; d <= 0 || d > maxFetchTimeout {
		t.Errorf("fetch deadline in %v, want within %v", d, maxFetchTimeout)
	}
}
