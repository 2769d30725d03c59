package hostnet

import (
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	clocktesting "k8s.io/utils/clock/testing"
)

// TestFollower: relevant notifications wake the owner once, after the
// debounce; others do not; a broken subscription is re-established after
// the retry delay and notifications flow again.
func TestFollower(t *testing.T) {
	requireRoot(t)
	ns := newNetNS(t)
	h := nsHandle(t, ns)
	fc := clocktesting.NewFakeClock(time.Now())
	ruleAdded := func(m syscall.NetlinkMessage) bool { return m.Header.Type == unix.RTM_NEWRULE }
	f := newFollower(ns, fc, debounceDelay, retryDelay,
		netlinkSub{unix.NETLINK_ROUTE, []uint{unix.RTNLGRP_IPV4_RULE}, ruleAdded})
	defer f.close()
	if err := f.start(); err != nil {
		t.Fatal(err)
	}
	prio := 6000
	addRule := func() {
		t.Helper()
		r := netlink.NewRule()
		r.Priority, r.Table, r.Family = prio, 100, unix.AF_INET
		prio++
		if err := h.RuleAdd(r); err != nil {
			t.Fatal(err)
		}
	}
	// A wake-up after a notification and the debounce, not before.
	wakeAfterNotification := func(what string) {
		t.Helper()
		addRule()
		addRule() // a burst: one wake-up
		select {
		case <-f.events:
			f.notified()
		case <-time.After(2 * time.Second):
			t.Fatalf("%s: no notification of a new rule", what)
		}
		select {
		case <-f.due():
			t.Fatalf("%s: woke before the debounce", what)
		default:
		}
		fc.Step(debounceDelay)
		select {
		case <-f.due():
			if err := f.fired(); err != nil {
				t.Fatal(err)
			}
		case <-time.After(2 * time.Second):
			t.Fatalf("%s: no wake-up after the debounce", what)
		}
		// The second rule's notification may still be queued.
		select {
		case <-f.events:
		case <-time.After(100 * time.Millisecond):
		}
	}
	wakeAfterNotification("subscribed")

	// Irrelevant: a rule deleted.
	r := netlink.NewRule()
	r.Priority, r.Table, r.Family = 6000, 100, unix.AF_INET
	if err := h.RuleDel(r); err != nil {
		t.Fatal(err)
	}
	select {
	case <-f.events:
		t.Fatal("woken by an irrelevant notification")
	case <-time.After(200 * time.Millisecond):
	}

	// Broken: nothing until the retry delay, then subscribed again.
	f.broke()
	if f.due() == nil {
		t.Fatal("no re-subscription scheduled")
	}
	fc.Step(retryDelay)
	select {
	case <-f.due():
		if err := f.fired(); err != nil {
			t.Fatalf("re-subscribing: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("no wake-up for the re-subscription")
	}
	if f.resubscribe || len(f.stops) != 1 {
		t.Fatalf("after the re-subscription: resubscribe %v, %d subscriptions", f.resubscribe, len(f.stops))
	}
	wakeAfterNotification("re-subscribed")
}
