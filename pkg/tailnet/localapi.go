package tailnet

import (
	"context"
	"io"
	"net/netip"

	"tailscale.com/client/local"
	"tailscale.com/ipn"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/tailcfg"
)

// LocalAPI is the part of tailscaled's LocalAPI this package uses. It is
// owned here so tests can substitute a fake; production code passes
// NewLocalAPI(&local.Client{...}).
//
// Every method except WatchIPNBus has exactly the signature of the
// *local.Client method of the same name. WatchIPNBus returns an interface
// because *local.IPNBusWatcher cannot be constructed outside its package;
// the adapter returned by NewLocalAPI bridges the two (the same pattern as
// tailscale.com/kube/localclient).
type LocalAPI interface {
	// Status returns tailscaled's status including peers.
	Status(ctx context.Context) (*ipnstate.Status, error)
	// GetPrefs returns the current prefs.
	GetPrefs(ctx context.Context) (*ipn.Prefs, error)
	// EditPrefs changes the prefs whose Set field is true.
	EditPrefs(ctx context.Context, mp *ipn.MaskedPrefs) (*ipn.Prefs, error)
	// Start (re)starts the backend with new prefs and optionally an auth
	// key.
	Start(ctx context.Context, opts ipn.Options) error
	// StartLoginInteractive asks the backend to log in: with an auth key
	// given to Start it uses the key, otherwise it produces a login URL.
	StartLoginInteractive(ctx context.Context) error
	// Ping pings ip over the tailnet (used by exit-node health checks).
	Ping(ctx context.Context, ip netip.Addr, pingtype tailcfg.PingType) (*ipnstate.PingResult, error)
	// WatchIPNBus subscribes to tailscaled's notifications.
	WatchIPNBus(ctx context.Context, mask ipn.NotifyWatchOpt) (IPNBusWatcher, error)
}

// IPNBusWatcher is one IPN bus subscription (*local.IPNBusWatcher).
type IPNBusWatcher interface {
	io.Closer
	// Next blocks until the next notification. It fails when the
	// subscription ends (tailscaled stopped, Close, context done).
	Next() (ipn.Notify, error)
}

// clientMethods are the methods *local.Client has with exactly the
// signatures LocalAPI asks for; the compile-time check below breaks the
// build if a tailscale.com upgrade changes one of them.
type clientMethods interface {
	Status(ctx context.Context) (*ipnstate.Status, error)
	GetPrefs(ctx context.Context) (*ipn.Prefs, error)
	EditPrefs(ctx context.Context, mp *ipn.MaskedPrefs) (*ipn.Prefs, error)
	Start(ctx context.Context, opts ipn.Options) error
	StartLoginInteractive(ctx context.Context) error
	Ping(ctx context.Context, ip netip.Addr, pingtype tailcfg.PingType) (*ipnstate.PingResult, error)
}

var (
	_ clientMethods = (*local.Client)(nil)
	_ IPNBusWatcher = (*local.IPNBusWatcher)(nil)
	_ LocalAPI      = localClient{}
)

// NewLocalAPI returns lc as a LocalAPI.
func NewLocalAPI(lc *local.Client) LocalAPI { return localClient{lc} }

type localClient struct{ *local.Client }

func (c localClient) WatchIPNBus(ctx context.Context, mask ipn.NotifyWatchOpt) (IPNBusWatcher, error) {
	w, err := c.Client.WatchIPNBus(ctx, mask)
	if err != nil {
		return nil, err // a nil *local.IPNBusWatcher must not become a non-nil interface
	}
	return w, nil
}

// answering is lc recording every answer it gets: a call that succeeded,
// an IPN bus notification. The Manager calls tailscaled through it, so
// that the snapshot knows when the LocalAPI last answered (liveness).
type answering struct {
	lc       LocalAPI
	answered func()
}

var _ LocalAPI = answering{}

func (a answering) ok(err error) {
	if err == nil {
		a.answered()
	}
}

func (a answering) Status(ctx context.Context) (*ipnstate.Status, error) {
	st, err := a.lc.Status(ctx)
	a.ok(err)
	return st, err
}

func (a answering) GetPrefs(ctx context.Context) (*ipn.Prefs, error) {
	p, err := a.lc.GetPrefs(ctx)
	a.ok(err)
	return p, err
}

func (a answering) EditPrefs(ctx context.Context, mp *ipn.MaskedPrefs) (*ipn.Prefs, error) {
	p, err := a.lc.EditPrefs(ctx, mp)
	a.ok(err)
	return p, err
}

func (a answering) Start(ctx context.Context, opts ipn.Options) error {
	err := a.lc.Start(ctx, opts)
	a.ok(err)
	return err
}

func (a answering) StartLoginInteractive(ctx context.Context) error {
	err := a.lc.StartLoginInteractive(ctx)
	a.ok(err)
	return err
}

func (a answering) Ping(ctx context.Context, ip netip.Addr, pingtype tailcfg.PingType) (*ipnstate.PingResult, error) {
	r, err := a.lc.Ping(ctx, ip, pingtype)
	a.ok(err)
	return r, err
}

func (a answering) WatchIPNBus(ctx context.Context, mask ipn.NotifyWatchOpt) (IPNBusWatcher, error) {
	w, err := a.lc.WatchIPNBus(ctx, mask)
	if err != nil {
		return nil, err
	}
	a.answered()
	return answeringWatcher{IPNBusWatcher: w, answered: a.answered}, nil
}

type answeringWatcher struct {
	IPNBusWatcher
	answered func()
}

func (w answeringWatcher) Next() (ipn.Notify, error) {
	n, err := w.IPNBusWatcher.Next()
	if err == nil {
		w.answered()
	}
	return n, err
}
