package probe

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/utils/clock"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

// Bounds of the --listen server. With hostNetwork the port is reachable
// from anywhere the node is, so every connection must have a bounded cost
// (DESIGN section 5): probes and scrapes are small requests, answered
// fast. /metrics gets the longest write.
const (
	ServerMaxHeaderBytes    = 16 << 10 // net/http allows 4 KiB more for the request line
	ServerReadHeaderTimeout = 5 * time.Second
	ServerReadTimeout       = 5 * time.Second
	ServerWriteTimeout      = 10 * time.Second
	ServerIdleTimeout       = 5 * time.Second // keep-alives: idle connections do not pile up
)

// DefaultMaxConnections is the cap on concurrent connections from peers
// that are not local (see LimitListener).
const DefaultMaxConnections = 256

// LocalAddrsRefresh is how often LocalAddrs re-reads the node's addresses
// at most.
const LocalAddrsRefresh = 5 * time.Second

// rejectLogInterval: a flood of rejected connections is logged at most
// this often.
const rejectLogInterval = time.Minute

// NewServer returns the HTTP server for --listen, serving h with the
// Server* bounds: header size, read, write and idle timeouts. Serve it on
// a LimitListener. Its errors go to the WithLogger logger.
func NewServer(h http.Handler, options ...Option) *http.Server {
	s := newSettings(options)
	return &http.Server{
		Handler:           h,
		MaxHeaderBytes:    ServerMaxHeaderBytes,
		ReadHeaderTimeout: ServerReadHeaderTimeout,
		ReadTimeout:       ServerReadTimeout,
		WriteTimeout:      ServerWriteTimeout,
		IdleTimeout:       ServerIdleTimeout,
		ErrorLog:          slog.NewLogLogger(s.logger.Handler(), slog.LevelWarn),
	}
}

// LimitListener returns ln accepting at most max connections at once
// (max <= 0 means DefaultMaxConnections) from peers that are not local.
// One more is closed as soon as it is accepted, with a reset, before any
// HTTP work. Connections from peers isLocal accepts are always accepted
// and not counted, so that kubelet's probes keep answering during a flood.
// A nil isLocal counts loopback alone as local; production passes
// LocalAddrs.IsLocal. The options used are WithLogger and WithClock (for
// the log of rejections, at most one a minute).
//
// With WithAllow, a non-local peer the allow function refuses (not in
// --allow-from, not of the cluster) is closed the same way, whatever the
// count.
func LimitListener(ln net.Listener, max int, isLocal func(netip.Addr) bool, options ...Option) net.Listener {
	if max <= 0 {
		max = DefaultMaxConnections
	}
	if isLocal == nil {
		isLocal = netip.Addr.IsLoopback
	}
	s := newSettings(options)
	return &limitListener{Listener: ln, max: int64(max), isLocal: isLocal, allow: s.allow, s: s}
}

// WithAllow sets who besides the local peers may connect to a
// LimitListener (AllowFrom); nil allows everyone.
func WithAllow(allow func(netip.Addr) bool) Option {
	return func(s *settings) { s.allow = allow }
}

// AllowFrom is the --allow-from policy of the --listen port (DESIGN
// section 5): besides the node itself (LimitListener's isLocal), the
// listed CIDRs, and with Kubernetes every Node's addresses and every pod
// CIDR (Prometheus in the cluster), read from the snapshot at each accept.
func AllowFrom(store *snapshot.Store, cidrs []netip.Prefix) func(netip.Addr) bool {
	cidrs = slices.Clone(cidrs)
	return func(a netip.Addr) bool {
		a = a.Unmap().WithZone("")
		if slices.ContainsFunc(cidrs, func(p netip.Prefix) bool { return p.Contains(a) }) {
			return true
		}
		return store.Load().Cluster.Contains(a)
	}
}

type limitListener struct {
	net.Listener
	max     int64
	isLocal func(netip.Addr) bool
	allow   func(netip.Addr) bool // nil: everyone
	s       settings
	open    atomic.Int64 // counted connections open now

	mu sync.Mutex // guards the rejection logs below
	// Per reason: rejected since the last log line, and when that was.
	rejected map[string]uint64
	loggedAt map[string]time.Time
}

// Reasons of a rejection, in the log.
const (
	rejectOverCap  = "over the cap on concurrent connections from non-local peers"
	rejectNotAllow = "not allowed: not local, not in --allow-from, not of the cluster"
)

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		peer := peerAddr(c)
		if peer.IsValid() && l.isLocal(peer) {
			return c, nil
		}
		if l.allow != nil && (!peer.IsValid() || !l.allow(peer)) {
			l.reject(c, peer, rejectNotAllow)
			continue
		}
		if l.open.Add(1) <= l.max {
			return &countedConn{Conn: c, l: l}, nil
		}
		l.open.Add(-1)
		l.reject(c, peer, rejectOverCap)
	}
}

// reject closes c at once: a reset, so no TIME_WAIT is left behind. It
// logs at most one line a minute per reason.
func (l *limitListener) reject(c net.Conn, peer netip.Addr, why string) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	c.Close()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.rejected == nil {
		l.rejected, l.loggedAt = map[string]uint64{}, map[string]time.Time{}
	}
	l.rejected[why]++
	now := l.s.clock.Now()
	if at := l.loggedAt[why]; !at.IsZero() && now.Sub(at) < rejectLogInterval {
		return
	}
	l.s.logger.Warn("closing a connection to --listen at accept", "why", why,
		"max", l.max, "rejected", l.rejected[why], "peer", peer.String())
	l.rejected[why], l.loggedAt[why] = 0, now
}

// peerAddr is c's remote IP address, unmapped; invalid if c has none
// (counted, then: the safe side).
func peerAddr(c net.Conn) netip.Addr {
	switch a := c.RemoteAddr().(type) {
	case *net.TCPAddr:
		return a.AddrPort().Addr().Unmap()
	case nil:
		return netip.Addr{}
	default:
		ap, err := netip.ParseAddrPort(a.String())
		if err != nil {
			return netip.Addr{}
		}
		return ap.Addr().Unmap()
	}
}

// countedConn gives its slot back when closed (net/http closes every
// connection it accepted).
type countedConn struct {
	net.Conn
	l    *limitListener
	once sync.Once
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.open.Add(-1) })
	return err
}

// CloseWrite keeps net/http's graceful close (it half-closes before
// closing, so that a client reads its 4xx answer before the reset).
func (c *countedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// WithInterfaceAddrs sets how LocalAddrs reads the node's addresses
// (default net.InterfaceAddrs); nil keeps the default.
func WithInterfaceAddrs(fn func() ([]net.Addr, error)) Option {
	return func(s *settings) {
		if fn != nil {
			s.interfaceAddrs = fn
		}
	}
}

// LocalAddrs says whether a peer is the node itself: a loopback address or
// one of the node's own addresses (kubelet probes a hostNetwork pod from
// the node). It reads the addresses (net.InterfaceAddrs, or the
// WithInterfaceAddrs function) when asked about an address that is not
// loopback and the last read is LocalAddrsRefresh old, so at most that
// often. A failed read keeps the addresses of the last good one. Safe for
// concurrent use.
type LocalAddrs struct {
	read  func() ([]net.Addr, error)
	clock clock.PassiveClock
	log   *slog.Logger

	mu     sync.Mutex
	addrs  map[netip.Addr]bool
	readAt time.Time // of the last read, good or not
	read1  bool      // read at least once
}

// NewLocalAddrs returns a LocalAddrs; the options used are
// WithInterfaceAddrs, WithClock and WithLogger.
func NewLocalAddrs(options ...Option) *LocalAddrs {
	s := newSettings(options)
	return &LocalAddrs{read: s.interfaceAddrs, clock: s.clock, log: s.logger}
}

// IsLocal reports whether a is loopback or one of the node's addresses.
// An IPv4-mapped IPv6 address counts as its IPv4 address; zones are
// ignored.
func (l *LocalAddrs) IsLocal(a netip.Addr) bool {
	a = a.Unmap().WithZone("")
	if !a.IsValid() {
		return false
	}
	if a.IsLoopback() {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if now := l.clock.Now(); !l.read1 || now.Sub(l.readAt) >= LocalAddrsRefresh {
		l.refresh(now)
	}
	return l.addrs[a]
}

// refresh re-reads the addresses; mu is held.
func (l *LocalAddrs) refresh(now time.Time) {
	l.read1, l.readAt = true, now
	as, err := l.read()
	if err != nil {
		l.log.Warn("reading the node's addresses; keeping the last ones", "err", fmt.Errorf("listing interface addresses: %w", err))
		return
	}
	addrs := make(map[netip.Addr]bool, len(as))
	for _, a := range as {
		var ip net.IP
		switch a := a.(type) {
		case *net.IPNet:
			ip = a.IP
		case *net.IPAddr:
			ip = a.IP
		}
		if na, ok := netip.AddrFromSlice(ip); ok {
			addrs[na.Unmap()] = true
		}
	}
	l.addrs = addrs
}
