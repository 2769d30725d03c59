package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ts-node-agent/ts-node-agent/pkg/hostnet"
	"github.com/ts-node-agent/ts-node-agent/pkg/kube"
	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
	"github.com/ts-node-agent/ts-node-agent/test/apiserver"
)

// --- 6. scale: the Kubernetes side at 5000 Nodes ---------------------------

// scaleNodes is the size of the cluster of the scale scenario.
const scaleNodes = 5000

// scenarioScale runs the agent's Kubernetes side (pkg/kube, all Nodes
// watched through the address-only transform) against a real
// kube-apiserver holding scaleNodes Node objects, feeding the bypass
// (pkg/hostnet) in a throw-away network namespace, the way a worker does.
// containerboot has no Kubernetes side to compare with. It runs once: it
// measures sizes and counts more than times.
func (b *bench) scenarioScale(ctx context.Context) error {
	const sc = "6 scale: 5000 Nodes"
	srv, err := apiserver.New(ctx, apiserver.Options{Logf: b.logf})
	if err != nil {
		return err
	}
	defer srv.Close()
	admin := srv.AdminClient()

	b.logf("creating %d Node objects", scaleNodes)
	start := time.Now()
	if err := createNodes(ctx, admin, 0, scaleNodes); err != nil {
		return err
	}
	b.logf("created %d Nodes in %v", scaleNodes, time.Since(start).Round(time.Millisecond))

	ns, err := newNetNS()
	if err != nil {
		return err
	}
	defer ns.Close()

	// The agent's client counts what the API server sends it.
	var received atomic.Int64
	cfg := srv.AdminConfig()
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { return countingTransport{rt, &received} }
	client, err := kube.NewClientForConfig(cfg)
	if err != nil {
		return err
	}

	bypass := hostnet.NewBypass(hostnet.BypassOptions{}, hostnet.WithBypassNetNS(ns),
		hostnet.WithBypassLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	defer bypass.Remove()
	var (
		mu        sync.Mutex
		lastIn    snapshot.Cluster
		applying  atomic.Bool // off until the Kubernetes side's heap is measured
		inputsSet = make(chan struct{}, 16)
	)
	apply := func(in snapshot.Cluster) (time.Duration, error) {
		hin := hostnet.BypassInputs{PodCIDRs: in.PodCIDRs, NodeAddrs: in.NodeAddrs, APIEndpoints: in.APIEndpoints, CIDRs: in.ServiceCIDRs}
		t0 := time.Now()
		err := bypass.Apply(hostnet.BypassRules(hin, hostnet.Mark{}))
		return time.Since(t0), err
	}

	heapBefore := heapInUse()
	store := snapshot.New(time.Now(), snapshot.RoleNone)
	var ropts kube.Options
	ropts.Defaults()
	ropts.NodeName = scaleNodeName(0)
	w, err := kube.New(client, store, ropts,
		kube.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))), kube.WithCluster())
	if err != nil {
		return err
	}
	wctx, stopWatcher := context.WithCancel(ctx)
	watcherDone := make(chan error, 1)
	go func() { watcherDone <- w.Run(wctx) }()
	// What the Guard does with the snapshot's Cluster, reduced to the
	// bypass: apply every new one.
	followerDone := make(chan struct{})
	go func() {
		defer close(followerDone)
		for {
			changed := store.Changed()
			if c := store.Load().Cluster; c.Synced && !c.Equal(lastCluster(&mu, &lastIn)) {
				if applying.Load() {
					if _, err := apply(c); err != nil {
						b.logf("scale: bypass apply: %v", err)
					}
				}
				mu.Lock()
				lastIn = c
				mu.Unlock()
				select {
				case inputsSet <- struct{}{}:
				default:
				}
			}
			select {
			case <-wctx.Done():
				return
			case <-changed:
			}
		}
	}()
	defer func() { stopWatcher(); <-watcherDone; <-followerDone }()

	waitInputs := func(what string, ok func(snapshot.Cluster) bool) (time.Duration, error) {
		t0 := time.Now()
		deadline := time.After(2 * time.Minute)
		for {
			mu.Lock()
			in := lastIn
			mu.Unlock()
			if ok(in) {
				return time.Since(t0), nil
			}
			select {
			case <-inputsSet:
			case <-deadline:
				return 0, fmt.Errorf("scale: %s: the bypass inputs never showed it", what)
			case <-ctx.Done():
				return 0, ctx.Err()
			}
		}
	}
	if _, err := waitInputs("first sync", func(in snapshot.Cluster) bool { return len(in.NodeAddrs) == scaleNodes-1 }); err != nil {
		return err
	}
	heapSynced := heapInUse()
	mu.Lock()
	in := lastIn
	mu.Unlock()
	first, err := apply(in)
	if err != nil {
		return err
	}
	applying.Store(true)
	heapApplied := heapInUse()
	runtime.KeepAlive(in)

	dsts, rules, err := bypassCounts(ns)
	if err != nil {
		return err
	}
	add := func(metric, unit string, v float64, kind targetKind, limit float64, note string) {
		r := &row{Scenario: sc, Metric: metric, Unit: unit, Agent: series{Samples: []float64{v}},
			Containerboot: series{Text: "n/a (no Kubernetes side)"}, kind: kind, limit: limit, Note: note}
		b.res.add(r)
	}
	add("bypass destinations in the nftables sets", "count", float64(dsts), noTarget, 0,
		fmt.Sprintf("from the cluster: %d other Nodes' addresses, %d Nodes' pod CIDRs, the API server's endpoints %v and the Service ranges %v (prefixes that another covers are dropped).",
			len(in.NodeAddrs), len(in.PodCIDRs), in.APIEndpoints, in.ServiceCIDRs))
	add("policy rules of the bypass (the same 2 at 3 Nodes)", "count", float64(rules), agentMaxAtMost, 2,
		"one fwmark rule per family; the destinations are elements of interval sets.")
	add("first apply of the bypass (nftables table, sets, rules)", "s", first.Seconds(), agentMaxBelow, 0.2, "")
	add("agent heap per Node: the Kubernetes side (informer caches, bypass inputs)", "B",
		float64(int64(heapSynced)-int64(heapBefore))/scaleNodes, agentMaxBelow, 512,
		"Go heap in use once the watches synced minus before the watcher started, after GC, divided by the Node count.")
	add("agent heap per Node: the bypass's state (its rules and what the sets hold)", "B",
		float64(int64(heapApplied)-int64(heapSynced))/scaleNodes, noTarget, 0, "")

	// One Node joins, then leaves; then one Node changes its address.
	events, err := subscribeSetEvents(ns)
	if err != nil {
		return err
	}
	defer events.close()
	joinAddr := scaleNodeAddr(scaleNodes)
	for _, step := range []struct {
		name string
		do   func() error
		ok   func(snapshot.Cluster) bool
	}{
		{"a Node joins", func() error { return createNodes(ctx, admin, scaleNodes, scaleNodes+1) },
			func(in snapshot.Cluster) bool {
				_, found := slices.BinarySearchFunc(in.NodeAddrs, joinAddr, netip.Addr.Compare)
				return found
			}},
		{"a Node leaves", func() error {
			return admin.CoreV1().Nodes().Delete(ctx, scaleNodeName(scaleNodes), metav1.DeleteOptions{})
		}, func(in snapshot.Cluster) bool {
			_, found := slices.BinarySearchFunc(in.NodeAddrs, joinAddr, netip.Addr.Compare)
			return !found
		}},
	} {
		events.reset()
		if err := step.do(); err != nil {
			return err
		}
		d, err := waitInputs(step.name, step.ok)
		if err != nil {
			return err
		}
		elems, rules := events.quiet(300 * time.Millisecond)
		add(step.name+": set element changes in the kernel", "count", float64(elems), agentMaxAtMost, 4,
			fmt.Sprintf("kernel notifications of added or deleted set elements (a destination is 2: its start and end); policy rules changed: %d; the API event reached the bypass inputs in %s.", rules, d.Round(time.Millisecond)))
		add(step.name+": policy rule changes in the kernel", "count", float64(rules), agentMaxAtMost, 0, "")
	}

	// The watch traffic of one Node's address change.
	moved := scaleNodeName(1)
	newAddr := netip.MustParseAddr("198.19.250.1")
	received.Store(0)
	n, err := admin.CoreV1().Nodes().Get(ctx, moved, metav1.GetOptions{})
	if err != nil {
		return err
	}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: newAddr.String()}}
	if _, err := admin.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		return err
	}
	if _, err := waitInputs("an address change", func(in snapshot.Cluster) bool {
		_, found := slices.BinarySearchFunc(in.NodeAddrs, newAddr, netip.Addr.Compare)
		return found
	}); err != nil {
		return err
	}
	_ = sleep(ctx, 500*time.Millisecond) // anything the change still brings
	add("watch traffic to one agent for one Node's address change", "B", float64(received.Load()), agentMaxBelow, 16*1024,
		"bytes of response bodies the API server sent the agent's client from the update until 0.5 s after the bypass had it (the changed Node, on the all-Nodes watch; a full Node object: addresses are in its status).")
	return nil
}

// newNetNS creates a network namespace without entering it.
func newNetNS() (netns.NsHandle, error) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return netns.None(), fmt.Errorf("current network namespace: %w", err)
	}
	defer orig.Close()
	ns, err := netns.New() // enters it, on this locked thread
	if err != nil {
		runtime.UnlockOSThread()
		return netns.None(), fmt.Errorf("new network namespace: %w", err)
	}
	if err := netns.Set(orig); err != nil {
		// A thread left in the wrong namespace must run nothing else.
		ns.Close()
		panic(fmt.Sprintf("bench: cannot return to the original network namespace: %v", err))
	}
	runtime.UnlockOSThread()
	return ns, nil
}

// createNodes creates the Nodes [from, to) with 16 requests in flight.
func createNodes(ctx context.Context, c kubernetes.Interface, from, to int) error {
	var (
		wg   sync.WaitGroup
		next atomic.Int64
		errs = make(chan error, 16)
	)
	next.Store(int64(from))
	for range 16 {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= to {
					return
				}
				n := &corev1.Node{
					ObjectMeta: metav1.ObjectMeta{Name: scaleNodeName(i), Labels: map[string]string{"kubernetes.io/os": "linux"}},
					Spec:       corev1.NodeSpec{PodCIDR: scalePodCIDR(i).String(), PodCIDRs: []string{scalePodCIDR(i).String()}},
				}
				created, err := c.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
				if err == nil {
					created.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: scaleNodeAddr(i).String()}}
					created.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}
					_, err = c.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{})
				}
				if err != nil {
					errs <- fmt.Errorf("create Node %d: %w", i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

func scaleNodeName(i int) string { return fmt.Sprintf("node-%05d", i) }

// scaleNodeAddr and scalePodCIDR number the Nodes' addresses in
// 198.18.0.0/15 and their /24 pod CIDRs in 10.0.0.0/8.
func scaleNodeAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 18, byte(i / 250), byte(i%250 + 2)})
}

func scalePodCIDR(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i / 256), byte(i % 256), 0}), 24)
}

// countingTransport adds the bytes of every response body to n.
type countingTransport struct {
	rt http.RoundTripper
	n  *atomic.Int64
}

func (c countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := c.rt.RoundTrip(r)
	if err == nil {
		resp.Body = countingBody{resp.Body, c.n}
	}
	return resp, err
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

func heapInUse() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// bypassCounts returns the number of destinations in the bypass sets (as
// `nft` would list them: one per interval) and of the agent's policy rules
// in ns.
func bypassCounts(ns netns.NsHandle) (dsts, rules int, err error) {
	owned, err := hostnet.NewBypass(hostnet.BypassOptions{}, hostnet.WithBypassNetNS(ns)).Owned()
	if err != nil {
		return 0, 0, err
	}
	for _, r := range owned {
		if r.Dst.IsValid() {
			dsts++
		}
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return 0, 0, err
	}
	defer h.Close()
	all, err := h.RuleList(netlink.FAMILY_ALL)
	if err != nil {
		return 0, 0, err
	}
	for _, r := range all {
		if r.Protocol == hostnet.BypassProtocol {
			rules++
		}
	}
	return dsts, rules, nil
}

// setEvents counts the kernel's notifications of set element and policy
// rule changes in one namespace.
type setEvents struct {
	elems, rules atomic.Int64
	socks        []*nl.NetlinkSocket
}

func subscribeSetEvents(ns netns.NsHandle) (*setEvents, error) {
	e := &setEvents{}
	for _, sub := range []struct {
		proto  int
		groups []uint
		count  func(syscall.NetlinkMessage)
	}{
		{unix.NETLINK_NETFILTER, []uint{unix.NFNLGRP_NFTABLES}, func(m syscall.NetlinkMessage) {
			typ := m.Header.Type & 0xff
			if m.Header.Type>>8 == unix.NFNL_SUBSYS_NFTABLES && (typ == unix.NFT_MSG_NEWSETELEM || typ == unix.NFT_MSG_DELSETELEM) {
				e.elems.Add(1)
			}
		}},
		{unix.NETLINK_ROUTE, []uint{unix.RTNLGRP_IPV4_RULE, unix.RTNLGRP_IPV6_RULE}, func(m syscall.NetlinkMessage) {
			if m.Header.Type == unix.RTM_NEWRULE || m.Header.Type == unix.RTM_DELRULE {
				e.rules.Add(1)
			}
		}},
	} {
		s, err := nl.SubscribeAt(ns, netns.None(), sub.proto, sub.groups...)
		if err != nil {
			e.close()
			return nil, fmt.Errorf("subscribe to netlink notifications: %w", err)
		}
		e.socks = append(e.socks, s)
		go func() {
			for {
				msgs, _, err := s.Receive()
				if err != nil {
					return
				}
				for _, m := range msgs {
					sub.count(m)
				}
			}
		}()
	}
	return e, nil
}

func (e *setEvents) reset() { e.elems.Store(0); e.rules.Store(0) }

// quiet returns the counts once none changed for d.
func (e *setEvents) quiet(d time.Duration) (elems, rules int) {
	last := int64(-1)
	for {
		time.Sleep(d)
		now := e.elems.Load() + e.rules.Load()
		if now == last {
			return int(e.elems.Load()), int(e.rules.Load())
		}
		last = now
	}
}

func (e *setEvents) close() {
	for _, s := range e.socks {
		s.Close()
	}
}

// lastCluster reads *c under mu.
func lastCluster(mu *sync.Mutex, c *snapshot.Cluster) snapshot.Cluster {
	mu.Lock()
	defer mu.Unlock()
	return *c
}
