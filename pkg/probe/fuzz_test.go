package probe

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

// FuzzHandlers sends fuzzed requests to the probe endpoints: they never
// panic, answer only the statuses a probe may answer, and stay small.
func FuzzHandlers(f *testing.F) {
	for _, target := range []string{"/readyz", "/readyz?verbose", "/livez/loops", "/readyz/nope", "/startupz?verbose=1", "/healthz", "/x"} {
		f.Add("GET", target, "application/json")
	}
	f.Add("POST", "/readyz", "text/plain")
	f.Add("GET", "/readyz?verbose&verbose=%zz", "application/json;q=0.1, text/plain")
	sn := healthy(snapshot.RoleWorker)
	sn.Checks["egress-ip"] = snapshot.Check{Reason: "egress IP is 198.18.0.11, expected 198.18.0.10"}
	mux := http.NewServeMux()
	opts := DefaultOptions()
	opts.RoleChecks = map[snapshot.Role][]string{snapshot.RoleWorker: {"egress-ip"}}
	Register(mux, newStore(sn), opts)
	f.Fuzz(func(t *testing.T, method, target, accept string) {
		if !strings.HasPrefix(target, "/") {
			target = "/" + target
		}
		req, err := http.NewRequest(method, "http://agent"+target, nil)
		if err != nil {
			return // not a request a client could send
		}
		req.Header.Set("Accept", accept)
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, req)
		switch rec.Code {
		case http.StatusOK, http.StatusServiceUnavailable, http.StatusNotFound, http.StatusMethodNotAllowed,
			http.StatusMovedPermanently, http.StatusTemporaryRedirect, http.StatusBadRequest:
		default:
			t.Fatalf("%s %s: status %d", method, target, rec.Code)
		}
		if n := rec.Body.Len(); n > 64<<10 {
			t.Fatalf("%s %s: %d bytes", method, target, n)
		}
	})
}
