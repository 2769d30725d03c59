package hostnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
	"tailscale.com/tailcfg"

	"github.com/ts-node-agent/ts-node-agent/pkg/probe"
	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

// fakeSetter records the exit nodes it is asked to set. onSet, if set,
// runs for every successful call (to publish what tailscaled would).
type fakeSetter struct {
	mu     sync.Mutex
	calls  []tailcfg.StableNodeID
	onErr  error // returned for ids other than ""
	offErr error // returned for ""
	onSet  func(tailcfg.StableNodeID)
}

var _ ExitNodeSetter = (*fakeSetter)(nil)

func (f *fakeSetter) SetExitNode(_ context.Context, id tailcfg.StableNodeID) error {
	f.mu.Lock()
	f.calls = append(f.calls, id)
	err := f.onErr
	if id == "" {
		err = f.offErr
	}
	onSet := f.onSet
	f.mu.Unlock()
	if err == nil && onSet != nil {
		onSet(id)
	}
	return err
}

func (f *fakeSetter) Calls() []tailcfg.StableNodeID {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// fakeBypass records what the Guard asks of the kernel.
type fakeBypass struct {
	mu        sync.Mutex
	applied   [][]BypassRule
	removes   int
	active    bool
	applyErr  error
	removeErr error
	// kernel is what Owned reports: the last applied rules, or what a
	// previous agent left.
	kernel []BypassRule
	// block, when set, makes Apply wait for it (a kernel call that hangs)
	// after a send on entered.
	block, entered chan struct{}
}

var _ bypassEngine = (*fakeBypass)(nil)

func (f *fakeBypass) Owned() ([]BypassRule, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.kernel), nil
}

func (f *fakeBypass) Apply(desired []BypassRule) error {
	f.mu.Lock()
	block, entered := f.block, f.entered
	f.mu.Unlock()
	if block != nil {
		select {
		case entered <- struct{}{}:
		default:
		}
		<-block
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applied = append(f.applied, slices.Clone(desired))
	f.active = true
	f.kernel = slices.Clone(desired)
	return f.applyErr
}

func (f *fakeBypass) Remove() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.removes++
	if f.removeErr != nil {
		return f.removeErr
	}
	f.active = false
	f.kernel = nil
	return nil
}

func (f *fakeBypass) Run(ctx context.Context) error {
	<-ctx.Done()
	return nil
}

func (f *fakeBypass) state() (applies, removes int, active bool, last []BypassRule) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if n := len(f.applied); n > 0 {
		last = f.applied[n-1]
	}
	return len(f.applied), f.removes, f.active, last
}

// Dial behaviours of the fake dialer.
const (
	answers   = "answers"
	refuses   = "refuses"
	blackhole = "blackhole"
	noRoute   = "no route"
)

// fakeDialer answers each address the way its map says (blackhole for
// unknown addresses), and counts the dials.
type fakeDialer struct {
	mu    sync.Mutex
	how   map[string]string
	dials map[string]int
}

func newFakeDialer(how map[string]string) *fakeDialer {
	return &fakeDialer{how: how, dials: map[string]int{}}
}

func (d *fakeDialer) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	d.mu.Lock()
	d.dials[address]++
	how, ok := d.how[address]
	d.mu.Unlock()
	if !ok {
		how = blackhole
	}
	opErr := func(err error) error {
		return &net.OpError{Op: "dial", Net: network, Addr: fakeAddr(address), Err: err}
	}
	switch how {
	case answers:
		c, s := net.Pipe()
		s.Close()
		return c, nil
	case refuses:
		return nil, opErr(os.NewSyscallError("connect", syscall.ECONNREFUSED))
	case noRoute:
		return nil, opErr(os.NewSyscallError("connect", syscall.EHOSTUNREACH))
	}
	<-ctx.Done()
	return nil, opErr(errTimeout{})
}

func (d *fakeDialer) Dials(address string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.dials[address]
}

type fakeAddr string

func (a fakeAddr) Network() string { return "tcp" }
func (a fakeAddr) String() string  { return string(a) }

type errTimeout struct{}

func (errTimeout) Error() string { return "i/o timeout" }
func (errTimeout) Timeout() bool { return true }

// guardFixture is a Guard over fakes, on a worker whose snapshot knows the
// exit node "exit1" (n1) and "exit2" (n2).
type guardFixture struct {
	g      *Guard
	store  *snapshot.Store
	inner  *fakeSetter
	bypass *fakeBypass
	dialer *fakeDialer
	clock  *clocktesting.FakeClock
}

func newGuardFixture(t *testing.T, opts GuardOptions, how map[string]string) *guardFixture {
	t.Helper()
	store := snapshot.New(time.Now(), snapshot.RoleWorker)
	store.SetTailnet(snapshot.Tailnet{Peers: []snapshot.Peer{{ID: "n1", HostName: "exit1"}, {ID: "n2", HostName: "exit2"}}})
	f := &guardFixture{
		store:  store,
		bypass: &fakeBypass{},
		dialer: newFakeDialer(how),
		clock:  clocktesting.NewFakeClock(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)),
	}
	// tailscaled takes the exit node and installs its route at once.
	f.inner = &fakeSetter{onSet: func(id tailcfg.StableNodeID) {
		store.UpdateTailnet(func(tn *snapshot.Tailnet) { tn.ExitNodeID = string(id) })
		if id != "" {
			store.SetCheck(CheckExitRouteKernel, snapshot.Check{OK: true})
		} else {
			store.DeleteCheck(CheckExitRouteKernel)
		}
	}}
	g, err := NewGuard(store, f.inner, opts,
		WithGuardLogger(testLogger(t)), WithGuardClock(f.clock), WithGuardDialer(f.dialer.Dial))
	if err != nil {
		t.Fatal(err)
	}
	g.bypass = f.bypass
	g.links = func() ([]string, error) { return []string{"lo", "eth0"}, nil }
	f.g = g
	return f
}

func (f *guardFixture) check(t *testing.T) snapshot.Check {
	t.Helper()
	c, ok := f.store.Load().Checks[CheckExitCommit]
	if !ok {
		t.Fatalf("check %q not published", CheckExitCommit)
	}
	return c
}

func guardOpts(timeout time.Duration, targets ...string) GuardOptions {
	o := GuardDefaults()
	o.CommitTimeout = timeout
	o.ConfirmTargets = targets
	return o
}

func TestGuardCommitOK(t *testing.T) {
	opts := guardOpts(time.Second, "198.18.0.5:443", "[2001:db8::5]:6443")
	opts.Inputs = BypassInputs{CIDRs: []netip.Prefix{pfx("10.43.0.0/16")}}
	f := newGuardFixture(t, opts, map[string]string{"198.18.0.5:443": answers, "[2001:db8::5]:6443": refuses})
	if err := f.g.SetExitNode(context.Background(), "n1"); err != nil {
		t.Fatalf("SetExitNode: %v", err)
	}
	if got := f.inner.Calls(); !slices.Equal(got, []tailcfg.StableNodeID{"n1"}) {
		t.Fatalf("inner calls %v, want [n1]", got)
	}
	_, _, active, rules := f.bypass.state()
	want := BypassRules(BypassInputs{
		CIDRs:      opts.Inputs.CIDRs,
		APIServers: []netip.Addr{addr("198.18.0.5"), addr("2001:db8::5")},
	}, DefaultBypassMark)
	if !active || !slices.Equal(rules, want) {
		t.Fatalf("bypass active %v, rules:\n got %s\nwant %s", active, describeRules(rules), describeRules(want))
	}
	if c := f.check(t); !c.OK || c.Reason != "" || c.CheckedAt.IsZero() {
		t.Fatalf("exit-commit check %+v, want OK", c)
	}
}

func TestGuardRollbackAndBackoff(t *testing.T) {
	const target = "198.18.0.250:443"
	f := newGuardFixture(t, guardOpts(300*time.Millisecond, target, "198.18.0.5:443"),
		map[string]string{"198.18.0.5:443": answers})
	ctx := context.Background()

	start := time.Now()
	err := f.g.SetExitNode(ctx, "n1")
	took := time.Since(start)
	if !errors.Is(err, ErrRolledBack) {
		t.Fatalf("SetExitNode = %v, want ErrRolledBack", err)
	}
	if took < 300*time.Millisecond || took > 2*time.Second {
		t.Errorf("rollback after %v, want just after the 300ms commit timeout", took)
	}
	wantReason := "rolled back exit node exit1 (n1): 198.18.0.250:443 unreachable within 300ms through the bypass: dial tcp 198.18.0.250:443: i/o timeout"
	if !strings.Contains(err.Error(), wantReason) {
		t.Errorf("error %q\ndoes not contain %q", err, wantReason)
	}
	if got := f.inner.Calls(); !slices.Equal(got, []tailcfg.StableNodeID{"n1", ""}) {
		t.Fatalf("inner calls %v, want [n1 \"\"] (turned on, then rolled back)", got)
	}
	c := f.check(t)
	if c.OK || !strings.HasPrefix(c.Reason, wantReason+"; next attempt after 2026-01-02T03:04:20Z") {
		t.Fatalf("exit-commit check %+v\nwant failed with %q", c, wantReason)
	}
	if _, removes, active, _ := f.bypass.state(); removes != 0 || !active {
		t.Fatalf("the bypass must stay after a rollback (removes %d, active %v)", removes, active)
	}

	// Backoff: the same exit node is refused at once for 15s; another is
	// not.
	f.clock.Step(14 * time.Second)
	err = f.g.SetExitNode(ctx, "n1")
	if !errors.Is(err, ErrCommitBackoff) || !strings.Contains(err.Error(), "next attempt after 2026-01-02T03:04:20Z (in 1s)") {
		t.Fatalf("second attempt = %v, want ErrCommitBackoff naming the time", err)
	}
	if got := f.inner.Calls(); len(got) != 2 {
		t.Fatalf("inner called during the backoff: %v", got)
	}
	if err := f.g.SetExitNode(ctx, "n2"); !errors.Is(err, ErrRolledBack) {
		t.Fatalf("another exit node = %v, want a commit attempt (rolled back)", err)
	}

	// After 15s: tried again; a second failure doubles the backoff.
	f.clock.Step(time.Second)
	if err := f.g.SetExitNode(ctx, "n1"); !errors.Is(err, ErrRolledBack) {
		t.Fatalf("attempt after the backoff = %v, want ErrRolledBack", err)
	}
	f.clock.Step(29 * time.Second)
	if err := f.g.SetExitNode(ctx, "n1"); !errors.Is(err, ErrCommitBackoff) {
		t.Fatalf("29s after the second failure = %v, want ErrCommitBackoff", err)
	}
	f.clock.Step(time.Second)

	// The target comes back: committed, backoff forgotten.
	f.dialer.mu.Lock()
	f.dialer.how[target] = answers
	f.dialer.mu.Unlock()
	if err := f.g.SetExitNode(ctx, "n1"); err != nil {
		t.Fatalf("attempt with the target reachable: %v", err)
	}
	if c := f.check(t); !c.OK {
		t.Fatalf("exit-commit check %+v after a successful commit", c)
	}
	f.g.mu.Lock()
	_, stillFailing := f.g.fails["n1"]
	f.g.mu.Unlock()
	if stillFailing {
		t.Fatal("backoff state kept after a successful commit")
	}
}

func TestGuardBackoffCaps(t *testing.T) {
	f := newGuardFixture(t, guardOpts(time.Second), nil)
	var got []time.Duration
	for range 8 {
		got = append(got, f.g.recordFailure("n1").retryAt.Sub(f.clock.Now()))
		f.g.fails["n1"] = commitFailure{count: len(got)}
	}
	want := []time.Duration{15 * time.Second, 30 * time.Second, time.Minute, 2 * time.Minute, 4 * time.Minute,
		5 * time.Minute, 5 * time.Minute, 5 * time.Minute}
	if !slices.Equal(got, want) {
		t.Fatalf("backoffs %v, want %v", got, want)
	}
}

func TestGuardUnreachableKinds(t *testing.T) {
	tests := []struct {
		name   string
		how    string
		ok     bool
		reason string
	}{
		{"a refused connection proves the host is reachable", refuses, true, ""},
		{"no route", noRoute, false, "198.18.0.9:22 unreachable within 1s through the bypass: dial tcp 198.18.0.9:22: connect: no route to host"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newGuardFixture(t, guardOpts(time.Second, "198.18.0.9:22"), map[string]string{"198.18.0.9:22": tt.how})
			err := f.g.SetExitNode(context.Background(), "n1")
			if (err == nil) != tt.ok {
				t.Fatalf("SetExitNode = %v, want ok=%v", err, tt.ok)
			}
			if !tt.ok {
				if !strings.Contains(f.check(t).Reason, tt.reason) {
					t.Fatalf("reason %q does not contain %q", f.check(t).Reason, tt.reason)
				}
				if n := f.dialer.Dials("198.18.0.9:22"); n < 2 {
					t.Errorf("dialled %d times: a fast failure must be retried until the timeout", n)
				}
			}
		})
	}
}

func TestGuardOtherNodes(t *testing.T) {
	nodes := []netip.Addr{addr("198.18.0.12"), addr("198.18.0.13"), addr("198.18.0.14")}
	t.Run("one answering node is enough", func(t *testing.T) {
		opts := guardOpts(time.Second)
		opts.Inputs.NodeAddrs = nodes
		f := newGuardFixture(t, opts, map[string]string{"198.18.0.13:10250": answers})
		if err := f.g.SetExitNode(context.Background(), "n1"); err != nil {
			t.Fatalf("SetExitNode: %v", err)
		}
	})
	t.Run("none answers", func(t *testing.T) {
		opts := guardOpts(200 * time.Millisecond)
		opts.Inputs.NodeAddrs = nodes
		f := newGuardFixture(t, opts, nil)
		if err := f.g.SetExitNode(context.Background(), "n1"); !errors.Is(err, ErrRolledBack) {
			t.Fatalf("SetExitNode = %v, want ErrRolledBack", err)
		}
		reason := f.check(t).Reason
		for _, want := range []string{"no other node answered on port 10250 within 200ms: dialled 3 of 3 node addresses (", "198.18.0.12", "i/o timeout"} {
			if !strings.Contains(reason, want) {
				t.Errorf("reason %q does not contain %q", reason, want)
			}
		}
	})
	t.Run("node check off", func(t *testing.T) {
		opts := guardOpts(200 * time.Millisecond)
		opts.Inputs.NodeAddrs = nodes
		opts.NodeConfirmPort = 0
		f := newGuardFixture(t, opts, nil)
		if err := f.g.SetExitNode(context.Background(), "n1"); err != nil {
			t.Fatalf("SetExitNode: %v", err)
		}
	})
	t.Run("many nodes: a few are dialled", func(t *testing.T) {
		opts := guardOpts(200 * time.Millisecond)
		for i := range 50 {
			opts.Inputs.NodeAddrs = append(opts.Inputs.NodeAddrs, netip.AddrFrom4([4]byte{198, 18, 1, byte(i)}))
		}
		f := newGuardFixture(t, opts, nil)
		f.g.SetExitNode(context.Background(), "n1")
		dialled := 0
		for _, a := range opts.Inputs.NodeAddrs {
			if f.dialer.Dials(a.String()+":10250") > 0 {
				dialled++
			}
		}
		if dialled != maxNodeProbes {
			t.Fatalf("dialled %d nodes, want %d", dialled, maxNodeProbes)
		}
	})
}

// TestGuardNotReadyNodes: many other Nodes that do not answer (NotReady:
// down) do not roll back a working exit node. The Ready one is dialled
// first; and without readiness, dead addresses give their place to the
// next ones until one answers.
func TestGuardNotReadyNodes(t *testing.T) {
	var dead []netip.Addr
	for i := range 1000 {
		dead = append(dead, netip.AddrFrom4([4]byte{198, 18, byte(1 + i/250), byte(i % 250)}))
	}
	alive := addr("198.18.0.12")
	t.Run("the Ready node answers", func(t *testing.T) {
		opts := guardOpts(time.Second)
		opts.Inputs.NodeAddrs = append(slices.Clone(dead), alive)
		opts.Inputs.ReadyNodeAddrs = []netip.Addr{alive}
		f := newGuardFixture(t, opts, map[string]string{"198.18.0.12:10250": answers})
		if err := f.g.SetExitNode(context.Background(), "n1"); err != nil {
			t.Fatalf("SetExitNode: %v", err)
		}
	})
	t.Run("400 dead addresses fail fast: the dialling moves on", func(t *testing.T) {
		opts := guardOpts(5 * time.Second)
		opts.Inputs.NodeAddrs = append(slices.Clone(dead[:400]), alive)
		how := map[string]string{"198.18.0.12:10250": answers}
		for _, a := range dead[:400] {
			how[a.String()+":10250"] = noRoute
		}
		f := newGuardFixture(t, opts, how)
		if err := f.g.SetExitNode(context.Background(), "n1"); err != nil {
			t.Fatalf("SetExitNode: %v", err)
		}
		if f.dialer.Dials("198.18.0.12:10250") == 0 {
			t.Fatal("the answering node was never dialled")
		}
	})
}

// TestGuardAPIEndpoints: the API server's real endpoints are bypassed
// and confirm the commit (one answering is enough); none answering rolls
// back.
func TestGuardAPIEndpoints(t *testing.T) {
	eps := []netip.AddrPort{netip.MustParseAddrPort("198.18.0.20:6443"), netip.MustParseAddrPort("198.18.0.21:6443")}
	t.Run("one answers", func(t *testing.T) {
		opts := guardOpts(time.Second)
		opts.Inputs.APIEndpoints = eps
		f := newGuardFixture(t, opts, map[string]string{"198.18.0.21:6443": answers})
		if err := f.g.SetExitNode(context.Background(), "n1"); err != nil {
			t.Fatalf("SetExitNode: %v", err)
		}
		_, _, active, rules := f.bypass.state()
		want := BypassRules(BypassInputs{APIServers: []netip.Addr{addr("198.18.0.20"), addr("198.18.0.21")}}, DefaultBypassMark)
		if !active || !slices.Equal(rules, want) {
			t.Fatalf("bypass active %v, rules:\n got %s\nwant %s", active, describeRules(rules), describeRules(want))
		}
	})
	t.Run("none answers", func(t *testing.T) {
		opts := guardOpts(200 * time.Millisecond)
		opts.Inputs.APIEndpoints = eps
		f := newGuardFixture(t, opts, nil)
		if err := f.g.SetExitNode(context.Background(), "n1"); !errors.Is(err, ErrRolledBack) {
			t.Fatalf("SetExitNode = %v, want ErrRolledBack", err)
		}
		reason := f.check(t).Reason
		for _, want := range []string{"no API server endpoint answered within 200ms: dialled 2 of 2 API server endpoints (", "198.18.0.20:6443", "i/o timeout"} {
			if !strings.Contains(reason, want) {
				t.Errorf("reason %q does not contain %q", reason, want)
			}
		}
	})
}

func TestGuardOffPassesThrough(t *testing.T) {
	f := newGuardFixture(t, guardOpts(time.Second, "198.18.0.250:443"), nil)
	if err := f.g.SetExitNode(context.Background(), ""); err != nil {
		t.Fatal(err)
	}
	if got := f.inner.Calls(); !slices.Equal(got, []tailcfg.StableNodeID{""}) {
		t.Fatalf("inner calls %v", got)
	}
	if applies, removes, _, _ := f.bypass.state(); applies != 0 || removes != 0 {
		t.Fatalf("turning off touched the bypass: %d applies, %d removes", applies, removes)
	}
	if _, ok := f.store.Load().Checks[CheckExitCommit]; ok {
		t.Fatal("turning off published a check")
	}
	f.inner.offErr = errors.New("boom")
	if err := f.g.SetExitNode(context.Background(), ""); err == nil || err.Error() != "boom" {
		t.Fatalf("inner error not passed through: %v", err)
	}
}

func TestGuardNoBypassNoExitNode(t *testing.T) {
	f := newGuardFixture(t, guardOpts(time.Second), nil)
	f.bypass.applyErr = errors.New("operation not permitted")
	err := f.g.SetExitNode(context.Background(), "n1")
	if err == nil || !strings.Contains(err.Error(), "bypass could not be installed: operation not permitted") {
		t.Fatalf("SetExitNode = %v", err)
	}
	if got := f.inner.Calls(); len(got) != 0 {
		t.Fatalf("exit node turned on without the bypass: inner calls %v", got)
	}
	if c := f.check(t); c.OK || !strings.Contains(c.Reason, "exit node exit1 (n1) not turned on") {
		t.Fatalf("check %+v", c)
	}
}

func TestGuardInnerError(t *testing.T) {
	f := newGuardFixture(t, guardOpts(time.Second), nil)
	f.inner.onErr = errors.New("LocalAPI down")
	if err := f.g.SetExitNode(context.Background(), "n1"); err == nil || err.Error() != "LocalAPI down" {
		t.Fatalf("SetExitNode = %v, want the inner error", err)
	}
	if got := f.inner.Calls(); !slices.Equal(got, []tailcfg.StableNodeID{"n1"}) {
		t.Fatalf("inner calls %v: no rollback when turning on failed", got)
	}
}

// TestGuardWaitsForTheRoute: the dials start once tailscaled's route is
// in the kernel, not before (they would prove nothing).
func TestGuardWaitsForTheRoute(t *testing.T) {
	f := newGuardFixture(t, guardOpts(2*time.Second, "198.18.0.5:443"), map[string]string{"198.18.0.5:443": answers})
	f.inner.onSet = func(id tailcfg.StableNodeID) {
		f.store.UpdateTailnet(func(tn *snapshot.Tailnet) { tn.ExitNodeID = string(id) })
		go func() {
			time.Sleep(200 * time.Millisecond)
			if f.dialer.Dials("198.18.0.5:443") != 0 {
				t.Error("dialled before the exit route was in the kernel")
			}
			f.store.SetCheck(CheckExitRouteKernel, snapshot.Check{OK: true})
		}()
	}
	start := time.Now()
	if err := f.g.SetExitNode(context.Background(), "n1"); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 200*time.Millisecond || d > time.Second {
		t.Fatalf("committed after %v, want just after the route appeared (200ms)", d)
	}
}

// TestGuardShutdown: cancelling the caller's context interrupts the
// confirmation without a rollback (tailscaled is being stopped too); the
// caller's deadline alone does not.
func TestGuardShutdown(t *testing.T) {
	f := newGuardFixture(t, guardOpts(5*time.Second, "198.18.0.250:443"), nil)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	err := f.g.SetExitNode(ctx, "n1")
	if err == nil || errors.Is(err, ErrRolledBack) || !strings.Contains(err.Error(), "interrupted by shutdown or a newer exit node") {
		t.Fatalf("SetExitNode = %v, want an interrupted confirmation", err)
	}
	if got := f.inner.Calls(); !slices.Equal(got, []tailcfg.StableNodeID{"n1"}) {
		t.Fatalf("inner calls %v, want no rollback", got)
	}

	f = newGuardFixture(t, guardOpts(400*time.Millisecond, "198.18.0.250:443"), nil)
	dctx, dcancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer dcancel()
	if err := f.g.SetExitNode(dctx, "n1"); !errors.Is(err, ErrRolledBack) {
		t.Fatalf("SetExitNode with a short caller deadline = %v, want the full confirmation and ErrRolledBack", err)
	}
}

// TestGuardHeartbeat: the Guard's loop beats while it runs, and a step
// stuck in the kernel stops the beats, so that the probe's loops check
// (and /livez) fails after its heartbeat timeout.
func TestGuardHeartbeat(t *testing.T) {
	f := newGuardFixture(t, guardOpts(time.Second), nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.g.Run(ctx) }()
	block := make(chan struct{})
	defer func() {
		close(block)
		cancel()
		<-done
	}()
	beat := func() time.Time { return f.store.Load().Heartbeats[GuardHeartbeatName] }
	waitUntil(t, time.Second, "first beat", func() string {
		if beat().IsZero() {
			return "no beat"
		}
		return ""
	})
	// Idle, the loop beats every HeartbeatInterval.
	for range 3 {
		before := beat()
		f.clock.Step(HeartbeatInterval)
		waitUntil(t, time.Second, "a beat after HeartbeatInterval", func() string {
			if !beat().After(before) {
				return fmt.Sprintf("last beat %v, clock %v", beat(), f.clock.Now())
			}
			return ""
		})
	}
	// A stuck Apply: no more beats, however long it lasts.
	entered := make(chan struct{}, 1)
	f.bypass.mu.Lock()
	f.bypass.block, f.bypass.entered = block, entered
	f.bypass.mu.Unlock()
	go f.g.SetInputs(BypassInputs{NodeAddrs: []netip.Addr{addr("198.18.0.13")}})
	select {
	case <-entered:
	case <-time.After(time.Second):
		t.Fatal("the new inputs were never applied")
	}
	stuck := beat()
	for range 3 {
		f.clock.Step(HeartbeatInterval)
		time.Sleep(20 * time.Millisecond)
	}
	if got := beat(); !got.Equal(stuck) {
		t.Fatalf("the Guard beat at %v while its step was stuck since %v", got, stuck)
	}
	// /livez says so, by name, once the heartbeat timeout passed.
	live := probe.Evaluate(f.store.Load(), probe.DefaultOptions(), f.clock.Now().Add(probe.DefaultHeartbeatTimeout)).Live
	var loops probe.CheckResult
	for _, c := range live.Checks {
		if c.Name == probe.CheckLoops {
			loops = c
		}
	}
	if live.OK || !strings.Contains(loops.Reason, "loop "+GuardHeartbeatName+" has not run") {
		t.Fatalf("/livez with the Guard stuck: ok %v, loops %+v", live.OK, loops)
	}
}

// TestGuardFollowsCluster: the Guard keeps what a previous agent left
// until the snapshot's Cluster is Synced, then bypasses the Cluster's
// destinations with its static ones (the Service ranges added to
// --bypass-cidrs), and follows every change of it.
func TestGuardFollowsCluster(t *testing.T) {
	opts := guardOpts(time.Second, "198.18.0.5:443")
	opts.Inputs = BypassInputs{CIDRs: []netip.Prefix{pfx("192.0.2.0/24")}}
	opts.InputsPending = true
	f := newGuardFixture(t, opts, nil)
	left := dstRule("198.18.7.7/32")
	f.bypass.kernel = []BypassRule{left}
	if err := f.g.Prepare(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.g.Run(ctx) }()
	defer func() { cancel(); <-done }()

	wantRules := func(what string, in BypassInputs, extra ...BypassRule) {
		t.Helper()
		in.APIServers = append(in.APIServers, addr("198.18.0.5"))
		want := append(BypassRules(in, Mark{}), extra...)
		waitUntil(t, time.Second, what, func() string {
			if _, _, _, last := f.bypass.state(); !sameRules(last, want) {
				return "applied " + describeRules(last) + "\nwant " + describeRules(want)
			}
			return ""
		})
	}
	// Not synced yet (only this node's pod CIDRs known): what was left stays.
	f.store.SetCluster(snapshot.Cluster{OwnPodCIDRs: []netip.Prefix{pfx("10.42.1.0/24")}})
	wantRules("the previous agent's destinations kept", opts.Inputs, left)

	c := snapshot.Cluster{
		Synced:         true,
		OwnPodCIDRs:    []netip.Prefix{pfx("10.42.1.0/24")},
		NodeAddrs:      []netip.Addr{addr("198.18.0.12"), addr("198.18.0.13")},
		ReadyNodeAddrs: []netip.Addr{addr("198.18.0.12")},
		PodCIDRs:       []netip.Prefix{pfx("10.42.1.0/24"), pfx("10.42.2.0/24")},
		APIEndpoints:   []netip.AddrPort{netip.MustParseAddrPort("198.18.64.10:6443")},
		ServiceCIDRs:   []netip.Prefix{pfx("10.43.0.0/16")},
	}
	f.store.SetCluster(c)
	in := BypassInputs{
		CIDRs:          []netip.Prefix{pfx("192.0.2.0/24"), pfx("10.43.0.0/16")},
		PodCIDRs:       c.PodCIDRs,
		NodeAddrs:      c.NodeAddrs,
		ReadyNodeAddrs: c.ReadyNodeAddrs,
		APIEndpoints:   c.APIEndpoints,
	}
	wantRules("the cluster's destinations", in)
	f.g.mu.Lock()
	got := f.g.inputs.clone()
	f.g.mu.Unlock()
	if !got.Equal(in) {
		t.Errorf("inputs %+v, want %+v (the commit check dials these)", got, in)
	}

	// A Node leaves.
	c.NodeAddrs, c.ReadyNodeAddrs = c.NodeAddrs[:1], c.ReadyNodeAddrs[:1]
	f.store.SetCluster(c)
	in.NodeAddrs = c.NodeAddrs
	wantRules("a Node gone", in)
}

// TestGuardFollowsRole: Run installs the bypass for a worker, re-applies it
// on new inputs, removes it (and the check) when the role changes once
// tailscaled dropped the exit node; Close removes it for good.
func TestGuardFollowsRole(t *testing.T) {
	f := newGuardFixture(t, guardOpts(time.Second), map[string]string{"198.18.0.12:10250": answers})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.g.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	waitUntil(t, time.Second, "bypass installed for the worker role", func() string {
		if applies, _, active, _ := f.bypass.state(); applies != 1 || !active {
			return fmt.Sprintf("%d applies, active %v", applies, active)
		}
		return ""
	})
	in := BypassInputs{PodCIDRs: []netip.Prefix{pfx("10.42.1.0/24")}, NodeAddrs: []netip.Addr{addr("198.18.0.12")}}
	f.g.SetInputs(in)
	waitUntil(t, time.Second, "bypass re-applied with the new inputs", func() string {
		if _, _, _, last := f.bypass.state(); !slices.Equal(last, BypassRules(in, Mark{})) {
			return "last rules: " + describeRules(last)
		}
		return ""
	})
	f.g.SetInputs(in) // unchanged: nothing to do

	if err := f.g.SetExitNode(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	// The role changes while tailscaled still uses the exit node: the
	// bypass stays until it stops.
	f.store.SetRole(snapshot.RoleExit)
	time.Sleep(100 * time.Millisecond)
	if _, removes, _, _ := f.bypass.state(); removes != 0 {
		t.Fatal("bypass removed while tailscaled still used the exit node")
	}
	f.store.UpdateTailnet(func(tn *snapshot.Tailnet) { tn.ExitNodeID = "" })
	waitUntil(t, time.Second, "bypass removed after leaving the worker role", func() string {
		if _, removes, active, _ := f.bypass.state(); removes != 1 || active {
			return fmt.Sprintf("%d removes, active %v", removes, active)
		}
		return ""
	})
	waitFor(t, f.store, time.Second, "exit-commit check deleted", checkAbsent(CheckExitCommit))

	// Back to worker: installed again.
	f.store.SetRole(snapshot.RoleWorker)
	waitUntil(t, time.Second, "bypass installed again", func() string {
		if _, _, active, _ := f.bypass.state(); !active {
			return "not active"
		}
		return ""
	})

	// Close (shutdown) leaves the bypass for the next agent to adopt.
	if err := f.g.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, active, _ := f.bypass.state(); !active {
		t.Fatal("Close removed the bypass: a restarting agent would open a window")
	}
	if err := f.g.SetExitNode(ctx, "n1"); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("SetExitNode after Close = %v", err)
	}
	if err := f.g.SetExitNode(ctx, ""); err != nil {
		t.Fatalf("turning the exit node off after Close: %v", err)
	}
}

// TestGuardStartupCleanup: an agent that starts with another role removes
// what a crashed worker agent left.
func TestGuardStartupCleanup(t *testing.T) {
	f := newGuardFixture(t, guardOpts(time.Second), nil)
	f.store.SetRole(snapshot.RoleNone)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.g.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitUntil(t, time.Second, "leftovers removed at start", func() string {
		if _, removes, _, _ := f.bypass.state(); removes != 1 {
			return fmt.Sprintf("%d removes", removes)
		}
		return ""
	})
	f.store.SetCheck("unrelated", snapshot.Check{OK: true}) // a change: no second Remove
	time.Sleep(50 * time.Millisecond)
	if applies, removes, _, _ := f.bypass.state(); applies != 0 || removes != 1 {
		t.Fatalf("%d applies, %d removes for a node that is not a worker", applies, removes)
	}
}

// TestGuardPrepare: before tailscaled starts, a worker gets its bypass
// and any other role loses what a crashed agent left.
func TestGuardPrepare(t *testing.T) {
	f := newGuardFixture(t, guardOpts(time.Second), nil)
	if err := f.g.Prepare(); err != nil {
		t.Fatal(err)
	}
	if applies, removes, active, _ := f.bypass.state(); applies != 1 || removes != 0 || !active {
		t.Fatalf("worker: %d applies, %d removes, active %v", applies, removes, active)
	}
	f = newGuardFixture(t, guardOpts(time.Second), nil)
	f.store.SetRole(snapshot.RoleExit)
	f.bypass.active = true // left by a crashed agent
	if err := f.g.Prepare(); err != nil {
		t.Fatal(err)
	}
	if applies, removes, active, _ := f.bypass.state(); applies != 0 || removes != 1 || active {
		t.Fatalf("exit: %d applies, %d removes, active %v", applies, removes, active)
	}
}

func TestGuardOptionsValidate(t *testing.T) {
	ok := GuardDefaults()
	ok.ConfirmTargets = []string{"198.18.0.5:443", "[2001:db8::1]:6443"}
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid options: %v", err)
	}
	bad := GuardDefaults()
	bad.ConfirmTargets = []string{"api.example.com:443", "198.18.0.5", "198.18.0.5:0"}
	bad.NodeConfirmPort = 70000
	bad.CommitTimeout = -time.Second
	bad.Mark = Mark{Value: 0x80000, Mask: 0x80000}
	bad.TUNName = UserspaceNetworking
	err := bad.Validate()
	if err == nil {
		t.Fatal("invalid options accepted")
	}
	for _, want := range []string{`"api.example.com:443": want IP:port`, `"198.18.0.5": want IP:port`, `"198.18.0.5:0"`,
		"node confirm port 70000", "timeout -1s", "overlaps tailscaled's fwmark mask", "userspace networking"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if _, err := NewGuard(snapshot.New(time.Now(), snapshot.RoleWorker), &fakeSetter{}, bad); err == nil {
		t.Fatal("NewGuard accepted invalid options")
	}
}

func TestBypassedTargets(t *testing.T) {
	bypass := []netip.Prefix{pfx("198.19.0.2/32"), pfx("10.0.0.0/8"), pfx("fd00::/8")}
	got := BypassedTargets(bypass, []string{
		"198.19.0.2:6443", "198.19.0.1:5432", "10.1.2.3:443", "[fd00::1]:443", "db.example.com:5432", "10.1.2.3:443",
	})
	want := []string{"198.19.0.2:6443", "10.1.2.3:443", "[fd00::1]:443"}
	if !slices.Equal(got, want) {
		t.Fatalf("BypassedTargets = %v, want %v", got, want)
	}
}

// TestGuardInNetNS: with the real Bypass, turning an exit node on installs
// the rules and the nftables table in the namespace, and Close removes
// them.
func TestGuardInNetNS(t *testing.T) {
	requireRoot(t)
	ns := newNetNS(t)
	h := nsHandle(t, ns)
	if err := h.LinkSetUp(mustLink(t, h, "lo")); err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	inNS(t, ns, func() (err error) { ln, err = net.Listen("tcp4", "127.0.0.1:0"); return err })
	defer ln.Close()
	go acceptLoop(ln, func(c net.Conn) { c.Close() })

	store := snapshot.New(time.Now(), snapshot.RoleWorker)
	opts := guardOpts(time.Second, ln.Addr().String())
	opts.Inputs.CIDRs = []netip.Prefix{pfx("10.43.0.0/16")}
	g, err := NewGuard(store, &fakeSetter{}, opts, WithGuardNetNS(ns), WithGuardLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	if err := g.SetExitNode(context.Background(), "n1"); err != nil {
		t.Fatal(err)
	}
	want := BypassRules(BypassInputs{CIDRs: opts.Inputs.CIDRs, APIServers: []netip.Addr{addr("127.0.0.1")}}, Mark{})
	if got := ownedIn(t, h, ns); !sameRules(got, want) {
		t.Fatalf("owned rules:\n got %s\nwant %s", describeRules(got), describeRules(want))
	}
	if ok, _ := nftTableIn(t, ns); !ok {
		t.Fatal("no nftables table")
	}
	if c := store.Load().Checks[CheckExitCommit]; !c.OK {
		t.Fatalf("exit-commit check %+v", c)
	}
	// Close (shutdown) leaves everything for the next agent; Cleanup
	// (the uninstall path) removes it.
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if got := ownedIn(t, h, ns); !sameRules(got, want) {
		t.Fatalf("owned rules after Close:\n got %s\nwant %s", describeRules(got), describeRules(want))
	}
	if err := Cleanup("", ns, testLogger(t)); err != nil {
		t.Fatal(err)
	}
	if got := ownedIn(t, h, ns); len(got) != 0 {
		t.Fatalf("owned rules after Cleanup: %s", describeRules(got))
	}
	if ok, _ := nftTableIn(t, ns); ok {
		t.Fatal("nftables table after Cleanup")
	}
}

// TestGuardKillSwitch: with KillSwitch, the first exit node turned on arms
// the kill switch (before the inner setter is called), and it stays armed
// when the exit node is turned off, when a commit is rolled back and when
// the Guard closes; only leaving the worker role disarms it. The state
// file follows it.
func TestGuardKillSwitch(t *testing.T) {
	opts := guardOpts(time.Second, "198.18.0.5:443")
	opts.KillSwitch = true
	opts.StateFile = filepath.Join(t.TempDir(), KillSwitchStateFile)
	f := newGuardFixture(t, opts, map[string]string{"198.18.0.5:443": answers})
	hasKill := func() bool {
		_, _, _, rules := f.bypass.state()
		return HasKillSwitch(rules)
	}
	if hasKill() || readArmed(opts.StateFile) {
		t.Fatal("kill switch armed before any exit node")
	}
	if err := f.g.SetExitNode(context.Background(), "n1"); err != nil {
		t.Fatalf("SetExitNode: %v", err)
	}
	if !hasKill() || !readArmed(opts.StateFile) {
		t.Fatalf("kill switch in the bypass %v, in the state file %v: want both while an exit node is in use", hasKill(), readArmed(opts.StateFile))
	}
	if err := f.g.SetExitNode(context.Background(), ""); err != nil {
		t.Fatal(err)
	}
	if !hasKill() {
		t.Fatal("kill switch removed when the exit node was turned off: the node would leave directly")
	}

	// Leaving the worker role disarms it (after tailscaled stopped using
	// the exit node, as the selector makes it).
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.g.Run(ctx) }()
	defer func() { cancel(); <-done }()
	f.store.SetRole(snapshot.RoleNone)
	waitUntil(t, 5*time.Second, "bypass removed", func() string {
		if _, _, active, _ := f.bypass.state(); active {
			return "still active"
		}
		return ""
	})
	if readArmed(opts.StateFile) {
		t.Fatal("state file still says armed after leaving the worker role")
	}

	// A rollback keeps the node closed: exit node off, kill switch on.
	opts = guardOpts(200*time.Millisecond, "198.18.0.250:443")
	opts.KillSwitch = true
	f = newGuardFixture(t, opts, nil)
	if err := f.g.SetExitNode(context.Background(), "n1"); !errors.Is(err, ErrRolledBack) {
		t.Fatalf("SetExitNode = %v, want ErrRolledBack", err)
	}
	if !hasKill() {
		t.Fatal("a rolled-back exit node left the node on direct egress under --exit-fallback=block")
	}
	if got := f.inner.Calls(); len(got) == 0 || got[len(got)-1] != "" {
		t.Fatalf("inner setter calls %q: want the exit node turned off last", got)
	}

	// Without KillSwitch (direct) it never arms.
	opts = guardOpts(time.Second, "198.18.0.5:443")
	f = newGuardFixture(t, opts, map[string]string{"198.18.0.5:443": answers})
	if err := f.g.SetExitNode(context.Background(), "n1"); err != nil {
		t.Fatal(err)
	}
	if hasKill() {
		t.Fatal("kill switch with --exit-fallback=direct")
	}
}

// TestGuardPrepareAdopts: a new agent's Prepare puts back the kill switch
// a previous agent armed (found in the kernel or in the state file) and,
// while the Kubernetes inputs are pending, keeps the destination rules it
// left; the first SetInputs replaces them.
func TestGuardPrepareAdopts(t *testing.T) {
	// A destination a previous agent left in a set, and the rule an
	// earlier agent left for another: both are adopted as destinations.
	stale, legacy := dstRule("198.18.7.7/32"), legacyRule("198.18.7.8/32")
	adopted := dstRule("198.18.7.8/32")
	for _, tt := range []struct {
		name       string
		kernel     []BypassRule
		file       bool
		killSwitch bool
		wantKill   bool
	}{
		{"kernel", append(BypassRules(BypassInputs{}, Mark{}), append(KillSwitchRules(), stale, legacy)...), false, true, true},
		{"state file after a reboot", nil, true, true, true},
		{"nothing armed", []BypassRule{stale, legacy}, false, true, false},
		{"direct now", KillSwitchRules(), true, false, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			opts := guardOpts(time.Second, "198.18.0.5:443")
			opts.KillSwitch = tt.killSwitch
			opts.InputsPending = true
			opts.StateFile = filepath.Join(t.TempDir(), KillSwitchStateFile)
			if tt.file {
				if err := writeArmed(opts.StateFile, true); err != nil {
					t.Fatal(err)
				}
			}
			f := newGuardFixture(t, opts, nil)
			f.bypass.kernel = tt.kernel
			if err := f.g.Prepare(); err != nil {
				t.Fatal(err)
			}
			_, _, _, rules := f.bypass.state()
			if got := HasKillSwitch(rules); got != tt.wantKill {
				t.Errorf("kill switch after Prepare = %v, want %v", got, tt.wantKill)
			}
			if got := readArmed(opts.StateFile); got != tt.wantKill {
				t.Errorf("state file armed = %v, want %v", got, tt.wantKill)
			}
			for _, r := range []BypassRule{stale, adopted} {
				if keep := slices.Contains(tt.kernel, stale); slices.Contains(rules, r) != keep {
					t.Errorf("stale destination %s kept = %v, want %v", r, !keep, keep)
				}
			}
			if slices.Contains(rules, legacy) {
				t.Error("an earlier agent's destination rule is wanted as a policy rule")
			}
			f.g.SetInputs(BypassInputs{CIDRs: []netip.Prefix{pfx("10.43.0.0/16")}})
			f.g.mu.Lock()
			rules = f.g.rulesLocked()
			f.g.mu.Unlock()
			if slices.Contains(rules, stale) || slices.Contains(rules, adopted) {
				t.Error("stale destination still wanted after SetInputs")
			}
		})
	}
}
