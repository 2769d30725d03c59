package tailnet

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"

	"tailscale.com/ipn"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/tailcfg"
	"tailscale.com/types/empty"
	"tailscale.com/types/key"
	"tailscale.com/types/views"
)

var _ LocalAPI = (*fakeLocalAPI)(nil)

var errDown = errors.New("dial unix /tmp/fake.sock: connect: no such file or directory")

// fakeLocalAPI is an in-memory tailscaled: a small state machine for login
// (Start, StartLoginInteractive), prefs and status, an IPN bus, restarts,
// and error injection per method.
type fakeLocalAPI struct {
	mu sync.Mutex

	// Behaviour.
	validKey string // if set, only this auth key logs in
	version  string

	// tailscaled state; prefs and node key survive restarts (the state dir).
	down        bool
	state       ipn.State
	haveNodeKey bool
	prefs       ipn.Prefs
	pendingKey  string
	authURL     string
	ip4         netip.Addr
	selfAllowed []netip.Prefix
	peers       []*ipnstate.PeerStatus
	health      []string

	watchHang int // this many WatchIPNBus calls hang until their context ends

	// block, while set, makes every call wait until it is closed or the
	// call's context ends (a tailscaled that runs but no longer answers);
	// blocked counts the calls that gave up.
	block   chan struct{}
	blocked int

	// Error injection: returned by the method while non-nil.
	statusErr, getPrefsErr, editErr, startErr, interactiveErr, watchErr error

	// Records.
	starts        []ipn.Options
	interactive   int
	edits         []*ipn.MaskedPrefs
	watches       int
	statusCalls   int
	getPrefsCalls int

	bus *fakeBus
}

func newFake() *fakeLocalAPI {
	p := ipn.NewPrefs()
	return &fakeLocalAPI{
		version: "1.102.5-fake",
		state:   ipn.NoState,
		prefs:   *p,
		ip4:     netip.MustParseAddr("100.64.0.1"),
	}
}

type fakeBus struct {
	ch     chan ipn.Notify
	closed chan struct{}
	once   sync.Once
}

func (b *fakeBus) Next() (ipn.Notify, error) {
	select {
	case n := <-b.ch:
		return n, nil
	case <-b.closed:
		return ipn.Notify{}, errors.New("unexpected EOF")
	}
}

func (b *fakeBus) Close() error {
	b.once.Do(func() { close(b.closed) })
	return nil
}

// sendLocked delivers n to the current subscription, if any.
func (f *fakeLocalAPI) sendLocked(n ipn.Notify) {
	if f.bus == nil {
		return
	}
	select {
	case f.bus.ch <- n:
	case <-f.bus.closed:
	}
}

func (f *fakeLocalAPI) setStateLocked(s ipn.State) {
	f.state = s
	f.sendLocked(ipn.Notify{State: new(s)})
}

func (f *fakeLocalAPI) sendPrefsLocked() {
	pv := f.prefs.Clone().View()
	f.sendLocked(ipn.Notify{Prefs: &pv})
}

// hold waits while f.block is set, until it is closed (nil) or ctx ends
// (ctx's error).
func (f *fakeLocalAPI) hold(ctx context.Context) error {
	f.mu.Lock()
	block := f.block
	f.mu.Unlock()
	if block == nil {
		return nil
	}
	select {
	case <-block:
		return nil
	case <-ctx.Done():
		f.mu.Lock()
		f.blocked++
		f.mu.Unlock()
		return ctx.Err()
	}
}

func (f *fakeLocalAPI) blockedCalls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.blocked
}

func (f *fakeLocalAPI) WatchIPNBus(ctx context.Context, mask ipn.NotifyWatchOpt) (IPNBusWatcher, error) {
	if err := f.hold(ctx); err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.watches++
	if f.watchHang > 0 {
		// A wedged tailscaled: accepts the connection, never answers.
		f.watchHang--
		f.mu.Unlock()
		<-ctx.Done()
		return nil, ctx.Err()
	}
	defer f.mu.Unlock()
	if f.down {
		return nil, errDown
	}
	if f.watchErr != nil {
		return nil, f.watchErr
	}
	if err := ipn.ValidateNotifyWatchOpt(mask); err != nil {
		return nil, err
	}
	b := &fakeBus{ch: make(chan ipn.Notify, 1000), closed: make(chan struct{})}
	f.bus = b
	ini := ipn.Notify{Version: f.version}
	if mask&ipn.NotifyInitialState != 0 {
		ini.State = new(f.state)
		if f.state == ipn.NeedsLogin && f.authURL != "" {
			ini.BrowseToURL = new(f.authURL)
		}
	}
	if mask&ipn.NotifyInitialPrefs != 0 {
		pv := f.prefs.Clone().View()
		ini.Prefs = &pv
	}
	b.ch <- ini
	go func() {
		<-ctx.Done()
		b.Close()
	}()
	return b, nil
}

func (f *fakeLocalAPI) Status(ctx context.Context) (*ipnstate.Status, error) {
	if err := f.hold(ctx); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.statusCalls++
	if f.down {
		return nil, errDown
	}
	if f.statusErr != nil {
		return nil, f.statusErr
	}
	st := &ipnstate.Status{
		Version:      f.version,
		BackendState: f.state.String(),
		HaveNodeKey:  f.haveNodeKey,
		Health:       slices.Clone(f.health),
		Peer:         map[key.NodePublic]*ipnstate.PeerStatus{},
	}
	if f.state == ipn.NeedsLogin {
		st.AuthURL = f.authURL
	}
	self := &ipnstate.PeerStatus{ID: "self", HostName: f.prefs.Hostname}
	if f.haveNodeKey && (f.state == ipn.Running || f.state == ipn.Starting) {
		st.TailscaleIPs = []netip.Addr{f.ip4}
		self.TailscaleIPs = st.TailscaleIPs
		self.DNSName = f.prefs.Hostname + ".tail.example."
		allowed := append([]netip.Prefix{netip.PrefixFrom(f.ip4, 32)}, f.selfAllowed...)
		av := views.SliceOf(allowed)
		self.AllowedIPs = &av
		for _, p := range f.peers {
			c := *p
			c.ExitNode = c.ID != "" && c.ID == f.prefs.ExitNodeID
			st.Peer[key.NewNode().Public()] = &c
		}
	}
	st.Self = self
	return st, nil
}

func (f *fakeLocalAPI) GetPrefs(ctx context.Context) (*ipn.Prefs, error) {
	if err := f.hold(ctx); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.getPrefsCalls++
	if f.down {
		return nil, errDown
	}
	if f.getPrefsErr != nil {
		return nil, f.getPrefsErr
	}
	return f.prefs.Clone(), nil
}

func (f *fakeLocalAPI) EditPrefs(ctx context.Context, mp *ipn.MaskedPrefs) (*ipn.Prefs, error) {
	if err := f.hold(ctx); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return nil, errDown
	}
	if f.editErr != nil {
		return nil, f.editErr
	}
	c := *mp
	c.Prefs = *mp.Prefs.Clone()
	f.edits = append(f.edits, &c)
	next := f.prefs.Clone()
	next.ApplyEdits(mp)
	if next.AdvertisesExitNode() && next.ExitNodeID != "" {
		return nil, errors.New("Cannot advertise an exit node and use an exit node at the same time.")
	}
	f.prefs = *next
	f.sendPrefsLocked()
	if f.prefs.WantRunning && f.haveNodeKey && f.state == ipn.Stopped {
		f.setStateLocked(ipn.Running)
	}
	return f.prefs.Clone(), nil
}

func (f *fakeLocalAPI) Start(ctx context.Context, opts ipn.Options) error {
	if err := f.hold(ctx); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return errDown
	}
	f.starts = append(f.starts, opts)
	if f.startErr != nil {
		return f.startErr
	}
	if opts.UpdatePrefs != nil {
		p := opts.UpdatePrefs.Clone()
		p.Persist = nil
		f.prefs = *p
	}
	f.pendingKey = opts.AuthKey
	f.setStateLocked(ipn.NoState)
	f.sendPrefsLocked()
	switch {
	case f.prefs.LoggedOut:
		f.setStateLocked(ipn.NeedsLogin)
	case f.haveNodeKey && (f.pendingKey == "" || f.keyOK(f.pendingKey)):
		f.setStateLocked(ipn.Starting)
		f.setStateLocked(ipn.Running)
	default:
		f.setStateLocked(ipn.NeedsLogin)
	}
	return nil
}

func (f *fakeLocalAPI) keyOK(k string) bool { return f.validKey == "" || k == f.validKey }

func (f *fakeLocalAPI) StartLoginInteractive(ctx context.Context) error {
	if err := f.hold(ctx); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return errDown
	}
	f.interactive++
	if f.interactiveErr != nil {
		return f.interactiveErr
	}
	switch {
	case f.pendingKey == "":
		f.authURL = fmt.Sprintf("https://login.example/a/%d", f.interactive)
		f.sendLocked(ipn.Notify{BrowseToURL: new(f.authURL)})
	case f.keyOK(f.pendingKey):
		f.haveNodeKey = true
		f.authURL = ""
		f.sendLocked(ipn.Notify{LoginFinished: &empty.Message{}})
		f.setStateLocked(ipn.Starting)
		f.setStateLocked(ipn.Running)
	default:
		// Real control answers "invalid authkey"; the key is not echoed.
		f.sendLocked(ipn.Notify{ErrMessage: new("register request: invalid authkey")})
	}
	return nil
}

func (f *fakeLocalAPI) Ping(ctx context.Context, ip netip.Addr, pt tailcfg.PingType) (*ipnstate.PingResult, error) {
	if err := f.hold(ctx); err != nil {
		return nil, err
	}
	return &ipnstate.PingResult{IP: ip.String()}, nil
}

// crash simulates tailscaled dying: the bus breaks and every call fails
// until restart.
func (f *fakeLocalAPI) crash() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = true
	if f.bus != nil {
		f.bus.Close()
		f.bus = nil
	}
}

// restart brings tailscaled back with its state: a node that was logged
// in starts running by itself.
func (f *fakeLocalAPI) restart() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = false
	f.pendingKey = ""
	if f.haveNodeKey && !f.prefs.LoggedOut && f.prefs.WantRunning {
		f.state = ipn.Running
	} else if f.haveNodeKey {
		f.state = ipn.Stopped
	} else {
		f.state = ipn.NoState
	}
}

// expire simulates control expiring the node key.
func (f *fakeLocalAPI) expire() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.setStateLocked(ipn.NeedsLogin)
}

func (f *fakeLocalAPI) approveExitRoutes() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.selfAllowed = ExitRoutes()
	f.sendLocked(ipn.Notify{SelfChange: &tailcfg.Node{}})
}

func (f *fakeLocalAPI) setPeers(peers ...*ipnstate.PeerStatus) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.peers = peers
	f.sendLocked(ipn.Notify{PeersChanged: []*tailcfg.Node{{}}})
}

func (f *fakeLocalAPI) with(fn func(f *fakeLocalAPI)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeLocalAPI) counts() (starts, interactive, edits int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.starts), f.interactive, len(f.edits)
}

func (f *fakeLocalAPI) currentPrefs() ipn.Prefs {
	f.mu.Lock()
	defer f.mu.Unlock()
	return *f.prefs.Clone()
}
