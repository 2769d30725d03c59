package exitnode

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"

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
}

var _ ExitNodeSetter = (*fakeSetter)(nil)

func (f *fakeSetter) SetExitNode(ctx context.Context, id tailcfg.StableNodeID) error {
	f.mu.Lock()
	f.calls = append(f.calls, string(id))
	err, onSet := f.err, f.onSet
	f.mu.Unlock()
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
// for it to be closed (after reporting on started).
type fakePinger struct {
	mu       sync.Mutex
	calls    map[netip.Addr]int
	errs     map[netip.Addr]error
	results  map[netip.Addr]ipnstate.PingResult
	gate     chan struct{}
	started  chan netip.Addr
	inFlight int
	maxIn    int
}

var _ Pinger = (*fakePinger)(nil)

func newFakePinger() *fakePinger {
	return &fakePinger{
		calls:   map[netip.Addr]int{},
		errs:    map[netip.Addr]error{},
		results: map[netip.Addr]ipnstate.PingResult{},
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
	f.inFlight++
	f.maxIn = max(f.maxIn, f.inFlight)
	gate, started := f.gate, f.started
	err, hasErr := f.errs[ip]
	res, hasRes := f.results[ip]
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.inFlight--
		f.mu.Unlock()
	}()
	if gate != nil {
		started <- ip
		select {
		case <-gate:
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
