package netcheck

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// secretToken stands for what an answer may carry that must never reach a
// check reason or a log line: an internal service's response, a token, an
// error page.
const secretToken = "s3cr3t-t0k3n-5ee1a6c9"

// assertNoSecret fails when the token is in the check's reason or in any
// log line.
func assertNoSecret(t *testing.T, h *harness, reason string) {
	t.Helper()
	if strings.Contains(reason, secretToken) {
		t.Errorf("the reason quotes the answer: %q", reason)
	}
	if logs := h.logText.String(); strings.Contains(logs, secretToken) {
		t.Errorf("the log quotes the answer:\n%s", logs)
	}
}

// TestRedirectNotFollowed: a 302 to an internal service of the node (here
// a second server answering a secret) is a failed check that names the
// status. The internal service is never asked, and neither the redirect's
// answer (which names the target) nor the target's reaches a reason or a
// log line.
func TestRedirectNotFollowed(t *testing.T) {
	var internalRequests atomic.Int64
	internal := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		internalRequests.Add(1)
		io.WriteString(w, secretToken)
	}))
	t.Cleanup(internal.Close)
	redirect := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, internal.URL+"/internal?token="+secretToken, http.StatusFound)
	}))
	t.Cleanup(redirect.Close)

	u := redirect.URL + "/"
	h := start(t, Options{EgressURLs: []string{u}})
	c := h.first(CheckEgressIP)
	h.waitLog("check fails")
	if want := "egress check failed: " + u + ": HTTP 302 Found: redirects are not followed"; c.OK || c.Reason != want {
		t.Errorf("got %+v\nwant reason %q", c, want)
	}
	if n := internalRequests.Load(); n != 0 {
		t.Errorf("the redirect target got %d requests, want none", n)
	}
	assertNoSecret(t, h, c.Reason)
}

// rawServer answers every connection with the same raw HTTP response, for
// what net/http servers cannot send (a reason phrase of the server's own).
func rawServer(t *testing.T, response string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				br := bufio.NewReader(conn)
				for { // the request's header
					l, err := br.ReadString('\n')
					if err != nil || l == "\r\n" {
						break
					}
				}
				io.WriteString(conn, response)
			}()
		}
	}()
	return "http://" + ln.Addr().String() + "/"
}

// TestNoBodyInReasons: whatever an egress check URL answers, its body never
// reaches the check's reason or a log line: a non-2xx status is named by
// its code (and Go's text for it, not the server's), a body that is not an
// IP address is described, never quoted.
func TestNoBodyInReasons(t *testing.T) {
	tests := []struct {
		name    string
		handler http.HandlerFunc // nil: raw
		raw     string           // raw HTTP response
		want    string           // what the reason says after the URL
	}{
		{name: "error status with a body", handler: func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "upstream said "+secretToken, http.StatusServiceUnavailable)
		}, want: "HTTP 503 Service Unavailable"},
		{name: "error status with the server's reason phrase",
			raw:  "HTTP/1.1 503 " + secretToken + "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
			want: "HTTP 503 Service Unavailable"},
		{name: "unknown status", raw: "HTTP/1.1 599 " + secretToken + "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
			want: "HTTP 599"},
		{name: "plain text not an IP", handler: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			io.WriteString(w, "token="+secretToken+"\n")
		}, want: "the answer is not an IP address (content type text/plain)"},
		{name: "HTML page", handler: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			io.WriteString(w, "<html><body>"+secretToken+" 198.18.0.10</body></html>")
		}, want: "the answer is not an IP address (content type text/html)"},
		{name: "unusable address", handler: func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "fe80::1%"+secretToken)
		}, want: "the answer is not a usable IP address (unspecified, or with a zone)"},
		{name: "JSON without ip", handler: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"token":"`+secretToken+`"}`)
		}, want: `the JSON answer has no valid "ip"`},
		{name: "JSON ip not an address", handler: func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, `{"ip":"`+secretToken+`"}`)
		}, want: `the JSON answer has no valid "ip"`},
		{name: "broken JSON", handler: func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, `{"ip":"`+secretToken)
		}, want: `the JSON answer has no valid "ip"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var u string
			if tt.handler != nil {
				srv := httptest.NewServer(tt.handler)
				t.Cleanup(srv.Close)
				u = srv.URL + "/"
			} else {
				u = rawServer(t, tt.raw)
			}
			h := start(t, Options{EgressURLs: []string{u}})
			c := h.first(CheckEgressIP)
			h.waitLog("check fails")
			if want := "egress check failed: " + u + ": " + tt.want; c.OK || c.Reason != want {
				t.Errorf("got %+v\nwant reason %q", c, want)
			}
			assertNoSecret(t, h, c.Reason)
		})
	}
}

// TestNoBodyInTheLogOfAToleratedFailure: one URL failing while the others
// agree is only logged; that line does not quote the answer either.
func TestNoBodyInTheLogOfAToleratedFailure(t *testing.T) {
	good, bad := newEcho(t, "198.18.0.10"), newEcho(t, "")
	bad.set(http.StatusBadGateway, "upstream said "+secretToken)
	h := start(t, Options{EgressURLs: []string{good.URL(), bad.URL()}})
	c := h.first(CheckEgressIP)
	if !c.OK {
		t.Fatalf("check failed: %s", c.Reason)
	}
	h.waitLog("egress check URL failed; the others agree")
	if logs := h.logText.String(); !strings.Contains(logs, "HTTP 502 Bad Gateway") {
		t.Errorf("the log does not name the failure:\n%s", logs)
	}
	assertNoSecret(t, h, c.Reason)
}

// TestInjectedClientFollowsNoRedirects: a client given with WithHTTPClient
// (whose policy follows redirects) does not follow them either, and is
// left as the caller made it.
func TestInjectedClientFollowsNoRedirects(t *testing.T) {
	target := newEcho(t, "198.18.0.99")
	redirect := httptest.NewServer(http.RedirectHandler(target.URL(), http.StatusTemporaryRedirect))
	t.Cleanup(redirect.Close)
	hc := &http.Client{}
	h := start(t, Options{EgressURLs: []string{redirect.URL + "/"}}, WithHTTPClient(hc))
	c := h.first(CheckEgressIP)
	if want := "egress check failed: " + redirect.URL + "/: HTTP 307 Temporary Redirect: redirects are not followed"; c.OK || c.Reason != want {
		t.Errorf("got %+v\nwant reason %q", c, want)
	}
	if n := target.requests.Load(); n != 0 {
		t.Errorf("the redirect target got %d requests, want none", n)
	}
	if hc.CheckRedirect != nil {
		t.Error("the caller's client was changed")
	}
}
