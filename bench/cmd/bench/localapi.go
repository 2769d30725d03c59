package main

import (
	"context"
	"errors"
	"io"
	"log"
	"maps"
	"net"
	"net/http"
	"net/http/httputil"
	"os"
	"sync"
	"time"
)

// localAPIProxy serves the supervisor's LocalAPI socket and forwards every
// request to tailscaled's real one, counting them by path. It listens only
// once the real socket accepts connections, so the supervisor still sees
// "the socket is up" when tailscaled's is.
type localAPIProxy struct {
	listen, real string
	cancel       context.CancelFunc
	done         chan struct{}

	mu     sync.Mutex
	srv    *http.Server
	closed bool
	total  int
	paths  map[string]int
}

func startLocalAPIProxy(listen, real string) *localAPIProxy {
	ctx, cancel := context.WithCancel(context.Background())
	p := &localAPIProxy{listen: listen, real: real, cancel: cancel, done: make(chan struct{}), paths: map[string]int{}}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = pr.In.Host // LocalAPI checks the Host header
			pr.Out.Host = pr.In.Host
		},
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", real)
			},
			DisableCompression:  true,
			MaxIdleConnsPerHost: 32,
		},
		FlushInterval: -1, // the IPN bus is a stream
		ErrorLog:      log.New(io.Discard, "", 0),
	}
	p.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			p.mu.Lock()
			p.total++
			p.paths[r.URL.Path]++
			p.mu.Unlock()
			rp.ServeHTTP(w, r)
		}),
		ErrorLog: log.New(io.Discard, "", 0),
	}
	go func() {
		defer close(p.done)
		for {
			if c, err := net.Dial("unix", real); err == nil {
				c.Close()
				break
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
		os.Remove(listen)
		ln, err := net.Listen("unix", listen)
		if err != nil {
			log.Printf("bench: LocalAPI proxy on %s: %v", listen, err)
			return
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			ln.Close()
			return
		}
		p.mu.Unlock()
		if err := p.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Printf("bench: LocalAPI proxy on %s: %v", listen, err)
		}
	}()
	return p
}

// counts returns the number of requests so far, in total and by path.
func (p *localAPIProxy) counts() (int, map[string]int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.total, maps.Clone(p.paths)
}

// Close stops the proxy and removes its socket.
func (p *localAPIProxy) Close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.cancel()
	p.srv.Close()
	<-p.done
	os.Remove(p.listen)
}

// diffPaths is after - before, without zero entries.
func diffPaths(before, after map[string]int) map[string]int {
	d := map[string]int{}
	for k, v := range after {
		if n := v - before[k]; n != 0 {
			d[k] = n
		}
	}
	return d
}
