package exitnode

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"time"

	"tailscale.com/ipn/ipnstate"
	"tailscale.com/tailcfg"
)

// fakeSetter records SetExitNode calls. err, when set, fails every call;
// onSet runs after a successful call (the real Manager's prefs change
// reaches the snapshot through the IPN bus).
type fakeSetter struct {
	mu    sync.Mutex
	calls []string
	err   error
	onSet func(id string)
	// block, per exit node ID, holds its calls until the channel is
	// closed or ctx is done; aborted gets the IDs of calls ctx ended.
	block   map[string]chan struct{}
	aborted chan string
}

var _ ExitNodeSetter = (*fakeSetter)(nil)

func (f *fakeSetter) SetExitNode(ctx context.Context, id tailcfg.StableNodeID) error {
	f.mu.Lock()
	f.calls = append(f.calls, string(id))
	err, onSet, block := f.err, f.onSet, f.block[string(id)]
	f.mu.Unlock()
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			if f.aborted != nil {
				f.aborted <- string(id)
			}
			return ctx.Err()
		}
	}
	if err != nil {
		return fmt.Errorf("set exit node %q: %w", id, err)
	}
	if onSet != nil {
		onSet(string(id))
	}
	return nil
}

func (f *fakeSetter) setErr(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
}

func (f *fakeSetter) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// fakePinger answers disco pings: by default a direct answer in 10ms; per
// IP an injected error or result. gate, when set, makes every ping wait
// for it to be closed (after reporting on started, if set). Per IP, a
// ping can also be silent (no answer until its timeout), lost at random
// with a probability, or answered after a real delay.
type fakePinger struct {
	mu       sync.Mutex
	calls    map[netip.Addr]int
	errs     map[netip.Addr]error
	results  map[netip.Addr]ipnstate.PingResult
	silent   map[netip.Addr]bool
	loss     map[netip.Addr]float64
	delay    map[netip.Addr]time.Duration
	rnd      *rand.Rand
	lost     int
	gate     chan struct{}
	started  chan netip.Addr
	inFlight map[netip.Addr]int
	maxIn    map[netip.Addr]int
}

var _ Pinger = (*fakePinger)(nil)

func newFakePinger() *fakePinger {
	return &fakePinger{
		calls:    map[netip.Addr]int{},
		errs:     map[netip.Addr]error{},
		results:  map[netip.Addr]ipnstate.PingResult{},
		silent:   map[netip.Addr]bool{},
		loss:     map[netip.Addr]float64{},
		delay:    map[netip.Addr]time.Duration{},
		rnd:      rand.New(rand.NewPCG(1, 2)),
		inFlight: map[netip.Addr]int{},
		maxIn:    map[netip.Addr]int{},
	}
}

func (f *fakePinger) Ping(ctx context.Context, ip netip.Addr, pingtype tailcfg.PingType) (*ipnstate.PingResult, error) {
	if pingtype != tailcfg.PingDisco {
		return nil, fmt.Errorf("fake pinger: ping type %q, want disco", pingtype)
	}
	if _, ok := ctx.Deadline(); !ok {
		return nil, errors.New("fake pinger: ping without a timeout")
	}
	f.mu.Lock()
	f.calls[ip]++
	f.inFlight[ip]++
	f.maxIn[ip] = max(f.maxIn[ip], f.inFlight[ip])
	gate, started := f.gate, f.started
	err, hasErr := f.errs[ip]
	res, hasRes := f.results[ip]
	lost := f.silent[ip] || f.rnd.Float64() < f.loss[ip]
	if lost && !f.silent[ip] {
		f.lost++
	}
	delay := f.delay[ip]
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.inFlight[ip]--
		f.mu.Unlock()
	}()
	if gate != nil {
		if started != nil {
			started <- ip
		}
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if lost {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	switch {
	case hasErr:
		return nil, err
	case hasRes:
		res.IP, res.NodeIP = ip.String(), ip.String()
		return &res, nil
	}
	return &ipnstate.PingResult{IP: ip.String(), NodeIP: ip.String(), LatencySeconds: 0.01, Endpoint: "192.0.2.10:41641"}, nil
}

func (f *fakePinger) setErr(ip string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil {
		delete(f.errs, netip.MustParseAddr(ip))
		return
	}
	f.errs[netip.MustParseAddr(ip)] = err
}

func (f *fakePinger) setSilent(ip string, silent bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.silent[netip.MustParseAddr(ip)] = silent
}

func (f *fakePinger) setLoss(ip string, p float64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.loss[netip.MustParseAddr(ip)] = p
}

func (f *fakePinger) setDelay(ip string, d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.delay[netip.MustParseAddr(ip)] = d
}

func (f *fakePinger) Lost() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lost
}

func (f *fakePinger) MaxInFlight(ip string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.maxIn[netip.MustParseAddr(ip)]
}

func (f *fakePinger) setResult(ip string, r ipnstate.PingResult) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.results[netip.MustParseAddr(ip)] = r
}

func (f *fakePinger) Calls(ip string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[netip.MustParseAddr(ip)]
}
