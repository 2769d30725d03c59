package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ts-node-agent/ts-node-agent/test/lab"
)

// loadResult is one bounded load on a probe endpoint.
type loadResult struct {
	Path     string      `json:"path"`
	Requests int         `json:"requests"`
	OK       int         `json:"ok"`      // answered 200
	Non200   map[int]int `json:"non_200"` // other answers, by status
	Errors   int         `json:"errors"`  // no answer
	P50      float64     `json:"p50_ms"`  // over the 200 answers
	P99      float64     `json:"p99_ms"`  // over the 200 answers
	Max      float64     `json:"max_ms"`  // over the 200 answers
	Seconds  float64     `json:"seconds"` // wall time of the load
	// CPUMicros is the supervisor's CPU time (utime+stime, tick
	// resolution 10 ms) per request during the load.
	CPUMicros float64        `json:"supervisor_cpu_us_per_request"`
	LocalAPI  int            `json:"localapi"` // LocalAPI requests during the load
	Paths     map[string]int `json:"localapi_paths,omitempty"`
}

// runLoad sends total GET requests for path to the supervisor's probe
// port from inside the node, conc at a time, over kept-alive connections
// opened (by one warm-up request per client) before the clock starts; it
// counts the LocalAPI requests the proxy saw during the measured part.
func runLoad(ctx context.Context, s *subject, path string, total, conc int) (loadResult, error) {
	tr := &http.Transport{
		DialContext:         s.node.DialContext,
		Proxy:               nil,
		MaxIdleConns:        conc,
		MaxIdleConnsPerHost: conc,
		MaxConnsPerHost:     conc,
		DisableCompression:  true,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	url := fmt.Sprintf("http://127.0.0.1:%d%s", lab.AgentPort, path)
	get := func() (int, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return 0, err
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, nil
	}

	// Warm-up: every client opens its connection.
	var wg sync.WaitGroup
	for range conc {
		wg.Go(func() { get() })
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return loadResult{}, err
	}

	before, beforePaths := s.proxy.counts()
	ticks0, err := procTicks(s.supervisorPid())
	if err != nil {
		return loadResult{}, err
	}
	lat := make([]time.Duration, total)
	codes := make([]int, total)
	var next atomic.Int64
	start := time.Now()
	for range conc {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= total {
					return
				}
				t := time.Now()
				code, err := get()
				lat[i] = time.Since(t)
				if err != nil {
					code = -1
				}
				codes[i] = code
			}
		})
	}
	wg.Wait()
	wall := time.Since(start)
	after, afterPaths := s.proxy.counts()
	ticks1, err := procTicks(s.supervisorPid())
	if err != nil {
		return loadResult{}, err
	}
	if err := ctx.Err(); err != nil {
		return loadResult{}, err
	}

	r := loadResult{Path: path, Requests: total, Non200: map[int]int{}, Seconds: wall.Seconds(),
		LocalAPI: after - before, Paths: diffPaths(beforePaths, afterPaths),
		CPUMicros: float64(ticks1-ticks0) / clockTicks * 1e6 / float64(total)}
	var ok []time.Duration
	for i, c := range codes {
		switch {
		case c == http.StatusOK:
			r.OK++
			ok = append(ok, lat[i])
		case c < 0:
			r.Errors++
		default:
			r.Non200[c]++
		}
	}
	if len(ok) > 0 {
		slices.Sort(ok)
		r.P50 = ms(percentile(ok, 0.50))
		r.P99 = ms(percentile(ok, 0.99))
		r.Max = ms(ok[len(ok)-1])
	}
	return r, nil
}

// percentile of sorted durations (nearest rank).
func percentile(sorted []time.Duration, q float64) time.Duration {
	i := int(q*float64(len(sorted))+0.5) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// startBuildLoad keeps a build running until stop is called: `go build
// -a std` into an empty build cache of its own, again and again, as many
// compilers at once as there are CPUs (go build's default). Everything
// it starts is in one process group, killed by stop.
func startBuildLoad(ctx context.Context, logf func(string, ...any)) (stop func(), err error) {
	cache, err := os.MkdirTemp("", "tsna-bench-buildload-")
	if err != nil {
		return nil, err
	}
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for builds := 0; lctx.Err() == nil; builds++ {
			if err := os.RemoveAll(cache); err != nil {
				logf("build load: %v", err)
				return
			}
			cmd := exec.CommandContext(lctx, "go", "build", "-a", "std")
			cmd.Env = append(os.Environ(), "GOCACHE="+cache, "GOFLAGS=")
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
			if out, err := cmd.CombinedOutput(); err != nil && lctx.Err() == nil {
				logf("build load: go build -a std: %v: %s", err, out)
				return
			}
			if builds == 0 {
				logf("build load: one full build of std done")
			}
		}
	}()
	// Let the compilers get going before the first start is timed.
	select {
	case <-time.After(3 * time.Second):
	case <-ctx.Done():
	}
	return func() {
		cancel()
		<-done
		os.RemoveAll(cache)
	}, nil
}
