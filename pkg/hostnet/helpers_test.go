package hostnet

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

const needsRoot = "needs root for network namespaces: run `sudo make test` (CI runs as root)"

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip(needsRoot)
	}
}

// newNetNS creates a throw-away network namespace without moving the test's
// thread into it: the namespace is created on a locked helper thread that
// is restored (or discarded) before newNetNS returns. The handle is closed
// at cleanup, which destroys the namespace and everything in it.
func newNetNS(t *testing.T) netns.NsHandle {
	t.Helper()
	type result struct {
		ns  netns.NsHandle
		err error
	}
	rc := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			rc <- result{err: err}
			return // exits locked: the thread is discarded
		}
		defer orig.Close()
		defer func() {
			if netns.Set(orig) == nil {
				runtime.UnlockOSThread()
			}
		}()
		ns, err := netns.New() // creates the namespace and enters it
		rc <- result{ns, err}
	}()
	r := <-rc
	if r.err != nil {
		t.Fatalf("create network namespace: %v", r.err)
	}
	t.Cleanup(func() { r.ns.Close() })
	return r.ns
}

// inNS runs fn on a thread in ns (see inNetNS) and fails the test on error.
// fn must not call t.Fatal: it runs on another goroutine.
func inNS(t *testing.T, ns netns.NsHandle, fn func() error) {
	t.Helper()
	if err := inNetNS(ns, fn); err != nil {
		t.Fatal(err)
	}
}

// onThrowawayThread runs fn on a locked thread that is never unlocked, so
// the runtime ends it with the goroutine: for per-thread state a test
// cannot restore (a private mount namespace, dropped capabilities).
func onThrowawayThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		errc <- fn()
	}()
	return <-errc
}

// dropCap removes capability c from the calling thread's effective set.
// Call it only on a throw-away thread.
func dropCap(c int) error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capget: %w", err)
	}
	data[c/32].Effective &^= 1 << (uint(c) % 32)
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capset: %w", err)
	}
	return nil
}

// waitFor waits until cond, applied to the store's snapshot, returns ""
// (woken by the store's Changed channel, never by sleeping), and fails
// the test with cond's last message if that takes longer than within.
func waitFor(t *testing.T, store *snapshot.Store, within time.Duration, what string, cond func(*snapshot.Snapshot) string) {
	t.Helper()
	timeout := time.NewTimer(within)
	defer timeout.Stop()
	for {
		changed := store.Changed()
		msg := cond(store.Load())
		if msg == "" {
			return
		}
		select {
		case <-changed:
		case <-timeout.C:
			t.Fatalf("%s: not within %v: %s", what, within, msg)
		}
	}
}

// checkIs returns a waitFor condition: the named check exists with the
// given OK and, when reason is not "", exactly that reason.
func checkIs(name string, ok bool, reason string) func(*snapshot.Snapshot) string {
	return func(sn *snapshot.Snapshot) string {
		c, found := sn.Checks[name]
		switch {
		case !found:
			return fmt.Sprintf("check %q not published (checks: %v)", name, sn.CheckNames())
		case c.OK != ok || (reason != "" && c.Reason != reason):
			return fmt.Sprintf("check %q is OK=%v reason %q, want OK=%v reason %q", name, c.OK, c.Reason, ok, reason)
		}
		return ""
	}
}

// checkAbsent returns a waitFor condition: the named check is not published.
func checkAbsent(name string) func(*snapshot.Snapshot) string {
	return func(sn *snapshot.Snapshot) string {
		if c, found := sn.Checks[name]; found {
			return fmt.Sprintf("check %q is still published: %+v", name, c)
		}
		return ""
	}
}

// addExitNodeModel gives ns what tailscaled with an exit node does to
// routing, reduced to its effect: a TUN named tailscale0 with the tailnet
// address tailnetIP, nobody reading it (what goes in is lost), table 52's
// default route through it, and the rule at 5270 that looks table 52 up.
// The host's route lookups succeed and pick tailnetIP as the source, as
// they do with a real exit node.
func addExitNodeModel(t *testing.T, ns netns.NsHandle, h *netlink.Handle, tailnetIP netip.Addr) {
	t.Helper()
	inNS(t, ns, func() error {
		return netlink.LinkAdd(&netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "tailscale0"},
			Mode: netlink.TUNTAP_MODE_TUN, Flags: netlink.TUNTAP_NO_PI})
	})
	tun := mustLink(t, h, "tailscale0")
	if err := h.LinkSetUp(tun); err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(tun, mustAddr(t, netip.PrefixFrom(tailnetIP, 32).String())); err != nil {
		t.Fatal(err)
	}
	if err := h.RouteAdd(&netlink.Route{Table: TailscaleTable, LinkIndex: tun.Attrs().Index,
		Dst: &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}}); err != nil {
		t.Fatal(err)
	}
	r52 := netlink.NewRule()
	r52.Priority, r52.Table, r52.Family = 5270, TailscaleTable, unix.AF_INET
	if err := h.RuleAdd(r52); err != nil {
		t.Fatal(err)
	}
}
