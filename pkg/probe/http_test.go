package probe

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

// newStore returns a store holding a copy of sn.
func newStore(sn *snapshot.Snapshot) *snapshot.Store {
	st := snapshot.New(sn.StartedAt, sn.Role)
	st.SetSupervisor(sn.Supervisor)
	st.SetTailnet(sn.Tailnet)
	for name, c := range sn.Checks {
		st.SetCheck(name, c)
	}
	for name, at := range sn.Heartbeats {
		st.Beat(name, at)
	}
	if !sn.FirstReadyAt.IsZero() {
		st.MarkReady(sn.FirstReadyAt)
	}
	return st
}

func do(t *testing.T, h http.Handler, method, target string, header ...string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, target, nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Add(header[i], header[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func TestHandlerText(t *testing.T) {
	exitNotApproved := healthy(snapshot.RoleExit)
	exitNotApproved.Tailnet.ExitRoutesApproved = false
	exitNotApproved.Checks["forwarding"] = snapshot.Check{OK: true}

	needsLogin := healthy(snapshot.RoleNone)
	needsLogin.Tailnet.BackendState = "NeedsLogin"
	needsLogin.Tailnet.InteractiveLogin = true

	down := healthy(snapshot.RoleNone)
	down.Supervisor = snapshot.Supervisor{DownSince: now.Add(-3 * time.Minute), LastExit: "signal: killed"}
	down.Heartbeats = map[string]time.Time{"tailnet": now.Add(-2 * time.Minute)}
	down.FirstReadyAt = t0.Add(2 * time.Second)

	stuck := healthy(snapshot.RoleNone)
	stuck.Tailnet.LocalAPIAnsweredAt = now.Add(-150 * time.Second)

	opts := DefaultOptions()
	opts.RoleChecks = map[snapshot.Role][]string{snapshot.RoleExit: {"forwarding", "tun"}}

	tests := []struct {
		name     string
		sn       *snapshot.Snapshot
		target   string
		wantCode int
		wantBody string
	}{
		{"ready", healthy(snapshot.RoleNone), "/readyz", 200, "ok\n"},
		{"ready verbose", healthy(snapshot.RoleNone), "/readyz?verbose", 200,
			"[+]tailscaled ok\n[+]backend ok\n[+]tailnet-ip ok\nreadyz check passed\n"},
		{"ready verbose=true", healthy(snapshot.RoleNone), "/readyz?verbose=true", 200,
			"[+]tailscaled ok\n[+]backend ok\n[+]tailnet-ip ok\nreadyz check passed\n"},
		{"ready verbose=false", healthy(snapshot.RoleNone), "/readyz?verbose=false", 200, "ok\n"},
		{"exit not approved", exitNotApproved, "/readyz", 503,
			"[-]exit-routes failed: exit routes advertised but not approved by the control server\n" +
				"[-]tun failed: not checked yet\n" +
				"readyz check failed\n"},
		{"exit not approved verbose", exitNotApproved, "/readyz?verbose", 503,
			"[+]tailscaled ok\n" +
				"[+]backend ok\n" +
				"[+]tailnet-ip ok\n" +
				"[-]exit-routes failed: exit routes advertised but not approved by the control server\n" +
				"[+]forwarding ok\n" +
				"[-]tun failed: not checked yet\n" +
				"readyz check failed\n"},
		{"one check", exitNotApproved, "/readyz/exit-routes", 503,
			"[-]exit-routes failed: exit routes advertised but not approved by the control server\nreadyz check failed\n"},
		{"one passing check", exitNotApproved, "/readyz/forwarding", 200, "ok\n"},
		{"one passing check verbose", exitNotApproved, "/readyz/forwarding?verbose", 200, "[+]forwarding ok\nreadyz check passed\n"},
		{"needs login", needsLogin, "/readyz", 503,
			"[-]backend failed: needs interactive login (see the agent's log)\nreadyz check failed\n"},
		{"needs login is live", needsLogin, "/livez", 200, "ok\n"},
		{"needs login has IP", needsLogin, "/healthz", 200, "ok\n"},
		{"needs login startup", needsLogin, "/startupz", 503,
			"[-]ready-once failed: not ready yet since start\n" +
				"[-]backend failed: needs interactive login (see the agent's log)\n" +
				"startupz check failed\n"},
		{"needs login startup verbose", needsLogin, "/startupz?verbose", 503,
			"[-]ready-once failed: not ready yet since start\n" +
				"[+]tailscaled ok\n" +
				"[-]backend failed: needs interactive login (see the agent's log)\n" +
				"[+]tailnet-ip ok\n" +
				"startupz check failed\n"},
		{"live verbose", healthy(snapshot.RoleNone), "/livez?verbose", 200, "[+]tailscaled ok\n[+]loops ok\nlivez check passed\n"},
		{"down too long", down, "/livez", 503,
			"[-]tailscaled failed: tailscaled has been down for 3m0s (liveness grace 2m0s), last exit: signal: killed\n" +
				"[-]loops failed: loop tailnet has not run for 2m0s (heartbeat timeout 1m30s)\n" +
				"livez check failed\n"},
		{"down: live check by name", down, "/livez/loops", 503,
			"[-]loops failed: loop tailnet has not run for 2m0s (heartbeat timeout 1m30s)\nlivez check failed\n"},
		{"down but started once", down, "/startupz", 200, "ok\n"},
		{"LocalAPI stuck", stuck, "/livez", 503,
			"[-]tailscaled failed: tailscaled runs but its LocalAPI has not answered for 2m30s (liveness grace 2m0s)\n" +
				"livez check failed\n"},
		{"LocalAPI stuck is still ready by the last state", stuck, "/readyz", 200, "ok\n"},
		{"down healthz", down, "/healthz?verbose", 503, "[-]tailnet-ip failed: tailscaled is not running\nhealthz check failed\n"},
		{"unknown check", exitNotApproved, "/readyz/nope", 404, "no readyz check named \"nope\"\n"},
		{"unknown path", healthy(snapshot.RoleNone), "/readyz-not", 404, "404 page not found\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := Handler(newStore(tt.sn), opts, WithClock(testingclock.NewFakePassiveClock(now)))
			rec := do(t, h, http.MethodGet, tt.target)
			if rec.Code != tt.wantCode {
				t.Errorf("status = %d, want %d", rec.Code, tt.wantCode)
			}
			if diff := cmp.Diff(tt.wantBody, rec.Body.String()); diff != "" {
				t.Errorf("body (-want +got):\n%s", diff)
			}
			if ct := rec.Header().Get("Content-Type"); ct != "text/plain; charset=utf-8" {
				t.Errorf("Content-Type = %q", ct)
			}
		})
	}
}

func TestHandlerJSON(t *testing.T) {
	sn := healthy(snapshot.RoleExit)
	sn.Tailnet.ExitRoutesApproved = false
	h := Handler(newStore(sn), DefaultOptions(), WithClock(testingclock.NewFakePassiveClock(now)))

	rec := do(t, h, http.MethodGet, "/readyz", "Accept", "text/html;q=0.5, application/json")
	if rec.Code != http.StatusServiceUnavailable {
		t.Errorf("status = %d, want 503", rec.Code)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
	var got jsonResult
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		t.Fatalf("decode %q: %v", rec.Body, err)
	}
	want := jsonResult{Status: "failed", Checks: []CheckResult{
		{Name: "tailscaled", OK: true},
		{Name: "backend", OK: true},
		{Name: "tailnet-ip", OK: true},
		{Name: "exit-routes", Reason: "exit routes advertised but not approved by the control server"},
	}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("JSON (-want +got):\n%s", diff)
	}

	// The wire format: lower-case keys, reason omitted when OK.
	rec = do(t, h, http.MethodGet, "/livez", "Accept", "application/json")
	if rec.Code != http.StatusOK {
		t.Errorf("livez status = %d", rec.Code)
	}
	const wantLive = `{"status":"ok","checks":[{"name":"tailscaled","ok":true},{"name":"loops","ok":true}]}` + "\n"
	if diff := cmp.Diff(wantLive, rec.Body.String()); diff != "" {
		t.Errorf("livez JSON (-want +got):\n%s", diff)
	}
}

func TestHandlerMethods(t *testing.T) {
	h := Handler(newStore(healthy(snapshot.RoleNone)), DefaultOptions(), WithClock(testingclock.NewFakePassiveClock(now)))
	for _, path := range []string{"/readyz", "/livez", "/startupz", "/healthz", "/readyz/backend", "/livez/loops"} {
		rec := do(t, h, http.MethodHead, path)
		if rec.Code != http.StatusOK || rec.Body.Len() != 0 {
			t.Errorf("HEAD %s: %d %q, want 200 and no body", path, rec.Code, rec.Body)
		}
		if rec.Header().Get("Content-Length") != "3" {
			t.Errorf("HEAD %s: Content-Length %q, want 3", path, rec.Header().Get("Content-Length"))
		}
		rec = do(t, h, http.MethodPost, path)
		if rec.Code != http.StatusMethodNotAllowed {
			t.Errorf("POST %s: %d, want 405", path, rec.Code)
		}
	}
	rec := do(t, h, http.MethodGet, "/readyz")
	if got := rec.Header().Get("Cache-Control"); got != "no-store" {
		t.Errorf("Cache-Control = %q", got)
	}
}

// TestHandlerFollowsStore: each request reads the current snapshot; startup
// stays 200 once the node has been ready, whatever happens next.
func TestHandlerFollowsStore(t *testing.T) {
	clk := testingclock.NewFakePassiveClock(t0)
	st := snapshot.New(t0, snapshot.RoleNone)
	mux := http.NewServeMux()
	Register(mux, st, DefaultOptions(), WithClock(clk))
	code := func(path string) int { return do(t, mux, http.MethodGet, path).Code }

	want := func(step string, startup, live, ready, health int) {
		t.Helper()
		got := []int{code("/startupz"), code("/livez"), code("/readyz"), code("/healthz")}
		if diff := cmp.Diff([]int{startup, live, ready, health}, got); diff != "" {
			t.Errorf("%s: startupz, livez, readyz, healthz (-want +got):\n%s", step, diff)
		}
	}
	want("fresh", 503, 200, 503, 503)

	clk.SetTime(t0.Add(2 * time.Second))
	st.SetSupervisor(snapshot.Supervisor{Running: true, PID: 7, StartedAt: t0})
	sn := healthy(snapshot.RoleNone)
	st.SetTailnet(sn.Tailnet)
	want("ready", 200, 200, 200, 200)
	st.MarkReady(clk.Now())

	clk.SetTime(t0.Add(time.Minute))
	st.SetSupervisor(snapshot.Supervisor{DownSince: clk.Now(), LastExit: "signal: killed", Restarts: 1})
	tn := sn.Tailnet
	tn.Connected = false
	st.SetTailnet(tn)
	want("tailscaled killed", 200, 200, 503, 503)

	clk.SetTime(t0.Add(time.Minute + DefaultLivenessGrace))
	want("down past grace", 200, 503, 503, 503)

	st.SetSupervisor(snapshot.Supervisor{Running: true, PID: 8, Restarts: 1, StartedAt: clk.Now()})
	st.SetTailnet(sn.Tailnet)
	want("restarted", 200, 200, 200, 200)
}
