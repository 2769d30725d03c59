package lab

import (
	"encoding/json"
	"net"
	"net/http"
	"net/netip"
)

// echoHandler answers with the caller's IP: GET / as plain text (one line),
// GET /json as {"ip":"..."}. It runs in the wan namespace, where no NAT
// happens: the address it sees is the node's own LAN address, or the exit
// node's when a node's traffic leaves through an exit node.
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
	return mux
}
