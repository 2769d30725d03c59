package hostnet

import (
	"fmt"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"k8s.io/utils/clock"
)

// netlinkSub is one netlink multicast subscription: a protocol, its
// groups, and which of its messages matter. (vishvananda/netlink v1.3.1
// has no RuleSubscribe, and its per-type subscriptions stop for good on a
// receive-buffer overflow; the owners re-read the whole state on any
// relevant message, so they need no decoded updates, only a reliable
// "something changed".)
type netlinkSub struct {
	proto    int
	groups   []uint
	relevant func(syscall.NetlinkMessage) bool
}

// follower is the netlink loop the Watcher and the Bypass share: it
// follows notifications in one namespace (no polling) and wakes its
// owner's loop through due() once a burst of relevant ones is over
// (debounce), after a receive-buffer overflow (something was lost), when
// a retry the owner asked for (after) comes due, and once a broken
// subscription was re-established (retry later if that fails). The owner
// re-reads, or re-applies, whatever it keeps when due() fires. Its methods
// are for the owner's loop goroutine only.
type follower struct {
	ns       netns.NsHandle
	subs     []netlinkSub
	clock    clock.WithTicker
	debounce time.Duration
	retry    time.Duration

	events chan struct{} // a relevant notification (coalesced)
	broken chan error    // a subscription's receive failed
	stops  []func()

	resubscribe bool
	timer       clock.Timer
	timerC      <-chan time.Time
}

func newFollower(ns netns.NsHandle, c clock.WithTicker, debounce, retry time.Duration, subs ...netlinkSub) *follower {
	return &follower{
		ns: ns, subs: subs, clock: c, debounce: debounce, retry: retry,
		events: make(chan struct{}, 1),
		broken: make(chan error, len(subs)),
	}
}

// start subscribes to every sub (after stopping what is subscribed). On
// failure nothing stays subscribed, and a re-subscription is scheduled.
func (f *follower) start() error {
	f.stop()
	notify := func() {
		select {
		case f.events <- struct{}{}:
		default:
		}
	}
	for _, sub := range f.subs {
		s, err := nl.SubscribeAt(f.ns, netns.None(), sub.proto, sub.groups...)
		if err != nil {
			f.stop()
			f.resubscribe = true
			f.after(f.retry)
			return fmt.Errorf("subscribe to netlink events (protocol %d): %w", sub.proto, err)
		}
		// A larger buffer makes overflows rarer; the kernel caps it at
		// net.core.rmem_max, which is fine: an overflow costs a re-read.
		_ = s.SetReceiveBufferSize(1<<20, false)
		done := make(chan struct{})
		go func() {
			if err := readEvents(s, done, sub.relevant, notify); err != nil {
				f.broken <- err
			}
		}()
		f.stops = append(f.stops, sync.OnceFunc(func() { close(done); s.Close() }))
	}
	f.resubscribe = false
	return nil
}

// stop ends every subscription and the pending wake-up.
func (f *follower) stop() {
	for _, s := range f.stops {
		s()
	}
	f.stops = nil
}

// close stops everything; the follower is not used afterwards.
func (f *follower) close() {
	f.stop()
	if f.timer != nil {
		f.timer.Stop()
	}
}

// after wakes the loop in d, unless a wake-up is already pending.
func (f *follower) after(d time.Duration) {
	if f.timerC != nil {
		return
	}
	f.timer = f.clock.NewTimer(d)
	f.timerC = f.timer.C()
}

// due fires when the owner must look at the kernel again; call fired
// then.
func (f *follower) due() <-chan time.Time { return f.timerC }

// fired clears the wake-up and re-subscribes if a subscription broke; it
// returns that attempt's error (a retry is scheduled).
func (f *follower) fired() error {
	f.timerC = nil
	if !f.resubscribe {
		return nil
	}
	return f.start()
}

// notified is called when events fires: the wake-up comes after the
// debounce.
func (f *follower) notified() { f.after(f.debounce) }

// broke is called when broken fires: everything is unsubscribed and
// re-subscribed after the retry delay, whatever wake-up was pending.
func (f *follower) broke() {
	f.stop()
	f.resubscribe = true
	if f.timer != nil {
		f.timer.Stop()
	}
	f.timerC = nil
	f.after(f.retry)
}
