package lab

import (
	"encoding/json"
	"net"
	"net/http"
	"net/netip"
	"strconv"
)

// MaxDownload is the largest body GET /bytes/{n} of the echo service sends
// (16 MiB).
const MaxDownload = 16 << 20

// echoHandler answers with the caller's IP: GET / as plain text (one line),
// GET /json as {"ip":"..."}. GET /bytes/{n} sends n zero bytes (n at most
// MaxDownload, else 400) with Content-Length, for downloads. It runs in
// the wan namespace, where no NAT happens: the address it sees is the
// node's own LAN address, or the exit node's when a node's traffic leaves
// through an exit node.
func echoHandler() http.Handler {
	mux := http.NewServeMux()
	callerIP := func(r *http.Request) string {
		ap, err := netip.ParseAddrPort(r.RemoteAddr)
		if err != nil {
			host, _, _ := net.SplitHostPort(r.RemoteAddr)
			return host
		}
		return ap.Addr().Unmap().String()
	}
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte(callerIP(r) + "\n"))
	})
	mux.HandleFunc("GET /json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(struct {
			IP string `json:"ip"`
		}{callerIP(r)})
	})
	mux.HandleFunc("GET /bytes/{n}", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.Atoi(r.PathValue("n"))
		if err != nil || n < 0 || n > MaxDownload {
			http.Error(w, "want /bytes/N with 0 <= N <= "+strconv.Itoa(MaxDownload), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(n))
		buf := make([]byte, 64<<10)
		for n > 0 {
			k := min(n, len(buf))
			if _, err := w.Write(buf[:k]); err != nil {
				return
			}
			n -= k
		}
	})
	return mux
}
