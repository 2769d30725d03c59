package probe

import (
	"bytes"
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

// The probe endpoints of DESIGN section 5.
const (
	PathStartupz = "/startupz"
	PathLivez    = "/livez"
	PathReadyz   = "/readyz"
	PathHealthz  = "/healthz"
)

// Register adds the probe endpoints to mux: GET (and so HEAD) /startupz,
// /livez, /readyz, /healthz, and /livez/{check}, /readyz/{check} for one
// check. Each request evaluates store.Load() and nothing else.
//
// Answers: 200 when the probe passes, else 503. The body is "ok\n", or the
// failing checks and "<probe> check failed" when it fails. ?verbose lists
// every check, one per line, as "[+]name ok" or "[-]name failed: reason",
// then "<probe> check passed|failed" (the kube-apiserver convention).
// "Accept: application/json" gets
// {"status":"ok|failed","checks":[{"name","ok","reason"}]}.
func Register(mux *http.ServeMux, store *snapshot.Store, opts Options, options ...Option) {
	h := &handlers{store: store, opts: opts, s: newSettings(options)}
	probes := []struct {
		path   string
		result func(Report) Result
	}{
		{PathStartupz, func(r Report) Result { return r.Startup }},
		{PathLivez, func(r Report) Result { return r.Live }},
		{PathReadyz, func(r Report) Result { return r.Ready }},
		{PathHealthz, func(r Report) Result { return r.Health }},
	}
	for _, p := range probes {
		name := strings.TrimPrefix(p.path, "/")
		mux.HandleFunc("GET "+p.path, func(w http.ResponseWriter, r *http.Request) {
			h.serve(w, r, name, p.result(h.report()))
		})
	}
	for _, p := range probes[1:3] { // livez, readyz
		name := strings.TrimPrefix(p.path, "/")
		mux.HandleFunc("GET "+p.path+"/{check}", func(w http.ResponseWriter, r *http.Request) {
			c, ok := p.result(h.report()).Check(r.PathValue("check"))
			if !ok {
				http.Error(w, fmt.Sprintf("no %s check named %q", name, r.PathValue("check")), http.StatusNotFound)
				return
			}
			h.serve(w, r, name, newResult([]CheckResult{c}))
		})
	}
}

// Handler returns a handler serving only the probe endpoints (see Register).
func Handler(store *snapshot.Store, opts Options, options ...Option) http.Handler {
	mux := http.NewServeMux()
	Register(mux, store, opts, options...)
	return mux
}

type handlers struct {
	store *snapshot.Store
	opts  Options
	s     settings
}

func (h *handlers) report() Report {
	return Evaluate(h.store.Load(), h.opts, h.s.clock.Now())
}

type jsonResult struct {
	Status string        `json:"status"`
	Checks []CheckResult `json:"checks"`
}

func (h *handlers) serve(w http.ResponseWriter, r *http.Request, name string, res Result) {
	code := http.StatusOK
	if !res.OK {
		code = http.StatusServiceUnavailable
	}
	var body bytes.Buffer
	hdr := w.Header()
	if wantsJSON(r) {
		status := "ok"
		if !res.OK {
			status = "failed"
		}
		checks := res.Checks
		if checks == nil {
			checks = []CheckResult{}
		}
		// Encoding plain strings and bools cannot fail.
		_ = json.NewEncoder(&body).Encode(jsonResult{Status: status, Checks: checks})
		hdr.Set("Content-Type", "application/json")
	} else {
		writeText(&body, name, res, verbose(r))
		hdr.Set("Content-Type", "text/plain; charset=utf-8")
	}
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("Content-Length", strconv.Itoa(body.Len()))
	w.WriteHeader(code)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body.Bytes())
	}
}

// writeText writes the text answer: "ok\n" when passing and not verbose;
// otherwise the checks (all of them when verbose, the failing ones when
// not) and a final "<name> check passed|failed" line.
func writeText(b *bytes.Buffer, name string, res Result, verbose bool) {
	if res.OK && !verbose {
		b.WriteString("ok\n")
		return
	}
	for _, c := range res.Checks {
		switch {
		case c.OK && verbose && c.Reason != "":
			fmt.Fprintf(b, "[+]%s ok: %s\n", c.Name, oneLine(c.Reason))
		case c.OK && verbose:
			fmt.Fprintf(b, "[+]%s ok\n", c.Name)
		case !c.OK && c.Informational && verbose:
			fmt.Fprintf(b, "[-]%s failed (informational, not required): %s\n", c.Name, oneLine(c.Reason))
		case !c.OK && !c.Informational:
			fmt.Fprintf(b, "[-]%s failed: %s\n", c.Name, oneLine(c.Reason))
		}
	}
	if res.OK {
		fmt.Fprintf(b, "%s check passed\n", name)
	} else {
		fmt.Fprintf(b, "%s check failed\n", name)
	}
}

// oneLine keeps a reason on its line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// verbose is true for ?verbose, ?verbose=1 or ?verbose=true (anything but
// an explicit false).
func verbose(r *http.Request) bool {
	q := r.URL.Query()
	if !q.Has("verbose") {
		return false
	}
	v, err := strconv.ParseBool(q.Get("verbose"))
	return err != nil || v
}

func wantsJSON(r *http.Request) bool {
	for _, accept := range r.Header.Values("Accept") {
		for part := range strings.SplitSeq(accept, ",") {
			mt, _, err := mime.ParseMediaType(strings.TrimSpace(part))
			if err == nil && mt == "application/json" {
				return true
			}
		}
	}
	return false
}
