package tailnet

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ts-node-agent/ts-node-agent/pkg/metrics"
	"github.com/ts-node-agent/ts-node-agent/pkg/probe"
	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
	"tailscale.com/health"
	"tailscale.com/ipn"
)

// reasonInteractiveLogin is what the probes say while tailscaled waits for
// a human to open its login URL.
const reasonInteractiveLogin = "needs interactive login (see the agent's log)"

// TestLoginURLNeverServed: whoever opens tailscaled's login URL first
// enrols the node into their tailnet, so the URL (delivered by the IPN
// bus as BrowseToURL, and in Status.AuthURL) must never reach a probe
// body, whatever the endpoint, format or verbosity, nor /metrics. It is
// logged once per distinct URL, at Warn level.
func TestLoginURLNeverServed(t *testing.T) {
	const url1, url2 = "https://login.example/a/1", "https://login.example/a/2"
	f := newFake()
	o := keyOpts(snapshot.RoleNone)
	o.AuthKey = nil
	tm := startManager(t, f, o, nil)

	probes := probe.Handler(tm.store, probe.DefaultOptions())
	reg := prometheus.NewPedanticRegistry()
	if _, err := metrics.Register(reg, tm.store, metrics.BuildInfo{Version: "test"}, probe.DefaultOptions()); err != nil {
		t.Fatal(err)
	}
	scrape := promhttp.HandlerFor(reg, promhttp.HandlerOpts{})

	get := func(h http.Handler, target string, header ...string) string {
		t.Helper()
		req := httptest.NewRequest(http.MethodGet, target, nil)
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Body.String()
	}
	// waitLogin waits until the published state says that tailscaled
	// waits for an interactive login (not merely "needs login"), that
	// is once the Manager has seen the URL.
	waitLogin := func() {
		t.Helper()
		tm.waitTailnet("an interactive login", func(snapshot.Tailnet) bool {
			c, _ := probe.Evaluate(tm.store.Load(), probe.DefaultOptions(), time.Now()).Ready.Check(probe.CheckBackend)
			return strings.HasPrefix(c.Reason, "needs ") && c.Reason != "needs login"
		})
	}
	check := func(url string) {
		t.Helper()
		for _, path := range []string{"/readyz", "/startupz", "/livez", "/healthz", "/readyz/backend"} {
			for _, q := range []string{"", "?verbose", "?verbose=false"} {
				for _, accept := range []string{"text/plain", "application/json"} {
					body := get(probes, path+q, "Accept", accept)
					if strings.Contains(body, "login.example") {
						t.Errorf("GET %s%s (%s) shows the login URL:\n%s", path, q, accept, body)
					}
					if path != "/livez" && path != "/healthz" && !strings.Contains(body, reasonInteractiveLogin) {
						t.Errorf("GET %s%s (%s) does not say %q:\n%s", path, q, accept, reasonInteractiveLogin, body)
					}
				}
			}
		}
		for _, accept := range []string{"text/plain", "application/openmetrics-text"} {
			if body := get(scrape, "/metrics", "Accept", accept); strings.Contains(body, "login.example") {
				t.Errorf("/metrics (%s) shows the login URL:\n%s", accept, body)
			}
		}
		if s := fmt.Sprintf("%+v", *tm.store.Load()); strings.Contains(s, "login.example") {
			t.Errorf("the login URL is in the snapshot: %s", s)
		}
		var lines []string
		for l := range strings.Lines(tm.logs.String()) {
			if strings.Contains(l, url) {
				lines = append(lines, l)
			}
		}
		if len(lines) != 1 || !strings.Contains(lines[0], "level=WARN") {
			t.Errorf("log lines with %s: %q, want exactly one at level WARN", url, lines)
		}
	}

	waitLogin()
	// More notifications and Status reads must not log it again.
	for range 3 {
		n := f.statusCallCount()
		f.with(func(f *fakeLocalAPI) { f.sendLocked(ipn.Notify{Health: &health.State{}}) })
		waitFor(t, "a refresh", func() bool { return f.statusCallCount() > n })
	}
	check(url1)

	// A new URL (the login was restarted) is logged once too.
	f.with(func(f *fakeLocalAPI) {
		f.authURL = url2
		f.sendLocked(ipn.Notify{BrowseToURL: new(url2)})
	})
	waitFor(t, "the new URL in the log", func() bool { return strings.Contains(tm.logs.String(), url2) })
	waitLogin()
	check(url1)
	check(url2)
}
