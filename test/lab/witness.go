package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Direct-egress witness. A worker whose traffic goes through its exit node
// reaches the internet with the exit node's address as source (tailscaled
// on the exit node masquerades). A packet that reaches the router from the
// LAN with the worker's own address, or an address of its pod CIDR, as
// source and an internet address as destination left the worker directly:
// a leak. DirectWatch counts such packets where they arrive, in the wan
// namespace, so that no path (a restart window, a missing rule, a pod's
// masquerading on the wrong interface) goes unnoticed.

// witnessTablePrefix starts the names of the DirectWatch tables in the wan
// namespace (lab-witness-1, lab-witness-2, ...).
const witnessTablePrefix = "lab-witness-"

// DirectWatch counts packets that arrive at the router from the LAN with a
// watched source and an internet destination. Create it with
// Lab.WatchDirect.
type DirectWatch struct {
	lab  *Lab
	srcs []netip.Prefix
	ct   *counterTable

	mu     sync.Mutex
	closed bool
}

// WatchDirect starts counting the packets that arrive on the wan bridge
// (br0, from the LAN) with a source in one of srcs (IPv4: a node's address
// as a /32, a pod CIDR) and a destination in InternetPrefix. It installs
// its own table (family inet) in the wan namespace, with base chains on
// input (the internet addresses are local to the router) and forward, both
// at raw priority (-300), so it counts before any other table of the
// router could drop the packet. Close it, or let Lab.Close remove it.
func (l *Lab) WatchDirect(srcs ...netip.Prefix) (*DirectWatch, error) {
	if len(srcs) == 0 {
		return nil, errors.New("lab: WatchDirect: no source prefix")
	}
	var masked []netip.Prefix
	for _, p := range srcs {
		if !p.IsValid() || !p.Addr().Is4() {
			return nil, fmt.Errorf("lab: WatchDirect: %v: want an IPv4 prefix (the lab is IPv4)", p)
		}
		masked = append(masked, p.Masked())
	}
	l.mu.Lock()
	closed := l.closed
	l.watchSeq++
	name := fmt.Sprintf("%s%d", witnessTablePrefix, l.watchSeq)
	l.mu.Unlock()
	if closed {
		return nil, errors.New("lab: WatchDirect: the lab is closed")
	}
	var matches [][]expr.Any
	for _, p := range masked {
		var m []expr.Any
		m = append(m, matchIIF("br0")...)
		m = append(m, matchIPv4()...)
		m = append(m, matchIPv4Prefix(ipv4SrcOffset, p, expr.CmpOpEq)...)
		m = append(m, matchIPv4Prefix(ipv4DstOffset, InternetPrefix, expr.CmpOpEq)...)
		matches = append(matches, m)
	}
	ct, err := installCounterTable(l.wan, name, []counterChain{
		{name: "input", typ: nftables.ChainTypeFilter, hook: nftables.ChainHookInput, prio: nftables.ChainPriorityRaw, matches: matches},
		{name: "forward", typ: nftables.ChainTypeFilter, hook: nftables.ChainHookForward, prio: nftables.ChainPriorityRaw, matches: matches},
	})
	if err != nil {
		return nil, err
	}
	l.logf("watching direct egress from %v (table inet %s in wan)", masked, name)
	return &DirectWatch{lab: l, srcs: masked, ct: ct}, nil
}

// Sources are the watched source prefixes.
func (w *DirectWatch) Sources() []netip.Prefix { return slices.Clone(w.srcs) }

func (w *DirectWatch) check() error {
	w.lab.mu.Lock()
	labClosed := w.lab.closed
	w.lab.mu.Unlock()
	switch {
	case w.closed:
		return errors.New("lab: direct watch is closed")
	case labClosed:
		return errors.New("lab: direct watch: the lab is closed")
	}
	return nil
}

// Count is the number of packets counted since WatchDirect or the last
// Reset.
func (w *DirectWatch) Count() (uint64, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.check(); err != nil {
		return 0, err
	}
	return w.ct.packets(false)
}

// Reset sets the count to zero.
func (w *DirectWatch) Reset() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.check(); err != nil {
		return err
	}
	_, err := w.ct.packets(true)
	return err
}

// Close removes the watch's table. Safe to call more than once, and after
// Lab.Close (which removes it with the wan namespace).
func (w *DirectWatch) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	w.lab.mu.Lock()
	labClosed := w.lab.closed
	w.lab.mu.Unlock()
	if labClosed {
		return nil
	}
	return w.ct.remove()
}

// sprayPayload is the body of Spray's datagrams.
var sprayPayload = []byte("ts-node-agent lab spray\n")

// Spray sends from inside the namespace, at once and then every every
// until stopped, one UDP datagram and one TCP connection attempt (a
// non-blocking connect: the SYN leaves, nothing waits for the answer; the
// socket is closed at the next round) to dst, ignoring every error: the
// traffic that must not leak during restart windows (see DirectWatch).
// stop ends it, waits for the sender to finish and returns the number of
// rounds; it may be called more than once. Cancelling ctx ends the
// sending too (stop must still be called), and so does Lab.Close.
//
// dst must be a lab address (198.18.0.0/15 or loopback) and every
// positive: anything else panics before a packet is sent.
func (ns *NetNS) Spray(ctx context.Context, dst netip.AddrPort, every time.Duration) (stop func() (sent int)) {
	if !dst.IsValid() || !inLab(dst.Addr()) {
		panic(fmt.Sprintf("lab: Spray from %s to %v: not a lab address (198.18.0.0/15 or loopback)", ns.label, dst))
	}
	if every <= 0 {
		panic(fmt.Sprintf("lab: Spray from %s: interval %v", ns.label, every))
	}
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	ctx, cancel := context.WithCancel(ctx)
	sp := &spray{lab: ns.lab, cancel: cancel, done: make(chan struct{})}
	// The lab stops its sprays on Close, before their namespaces go.
	if l := ns.lab; l != nil {
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			cancel()
			close(sp.done)
			return sp.stop
		}
		if l.sprays == nil {
			l.sprays = map[*spray]bool{}
		}
		l.sprays[sp] = true
		l.mu.Unlock()
	}
	go func() {
		defer close(sp.done)
		prev := -1 // TCP socket of the previous round
		defer func() {
			if prev >= 0 {
				unix.Close(prev)
			}
		}()
		t := time.NewTicker(every)
		defer t.Stop()
		for ctx.Err() == nil {
			fd := ns.sprayOnce(dst)
			if prev >= 0 {
				unix.Close(prev)
			}
			prev = fd
			sp.rounds++
			select {
			case <-ctx.Done():
			case <-t.C:
			}
		}
	}()
	return sp.stop
}

// spray is a running Spray.
type spray struct {
	lab    *Lab
	cancel context.CancelFunc
	done   chan struct{} // closed when the sender has finished
	rounds int           // written by the sender, read after done
	once   sync.Once
}

func (sp *spray) stop() int {
	sp.once.Do(func() {
		sp.cancel()
		<-sp.done
		if sp.lab != nil {
			sp.lab.mu.Lock()
			delete(sp.lab.sprays, sp)
			sp.lab.mu.Unlock()
		}
	})
	return sp.rounds
}

// sprayOnce sends one datagram and starts one TCP connect to dst from
// inside the namespace, and returns the TCP socket (or -1).
func (ns *NetNS) sprayOnce(dst netip.AddrPort) (tcp int) {
	tcp = -1
	family := unix.AF_INET
	var sa unix.Sockaddr = &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}
	if dst.Addr().Is6() {
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Port: int(dst.Port()), Addr: dst.Addr().As16()}
	}
	ns.Do(func() error {
		if fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0); err == nil {
			unix.Sendto(fd, sprayPayload, unix.MSG_DONTWAIT, sa)
			unix.Close(fd)
		}
		fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil
		}
		unix.Connect(fd, sa) // EINPROGRESS, or an error: either way, done
		tcp = fd
		return nil
	})
	return tcp
}
