package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

// CheckName is the check the Watcher publishes about its Node watch. It is
// OK while the watch is synced and connected; it is informational: it
// should not gate readiness by default and never gates liveness.
const CheckName = "role-watch"

// Checks declares what a Watcher publishes: role-watch, informational.
func Checks() []snapshot.CheckDeclaration {
	return []snapshot.CheckDeclaration{{Name: CheckName, Informational: true}}
}

// Heartbeat of the Watcher's loop in the snapshot (snapshot.Store.Beat).
// It keeps beating during API server outages.
const (
	HeartbeatName     = "role"
	HeartbeatInterval = 5 * time.Second
)

// Options configures a Watcher. Start from Defaults, set what the agent's
// configuration says; New validates it (Validate).
type Options struct {
	// NodeName is this node's name (--node-name, NODE_NAME).
	NodeName string
	// Label is the label key whose value is the role (--role-label).
	Label string
	// DefaultRole is the role when the label is absent or unknown
	// (--default-role).
	DefaultRole snapshot.Role
	// ForceRole, when set, is the role whatever the label says (--role=exit,
	// worker or none): the Watcher still follows the Node for the bypass
	// inputs but ignores the label.
	ForceRole snapshot.Role
}

// Defaults sets every field to its default (as Defaults does in every
// package of the agent): no node name, the label DefaultLabel, the default
// role worker, no forced role. Call it first, then set what the
// configuration says.
func (o *Options) Defaults() {
	*o = Options{Label: DefaultLabel, DefaultRole: snapshot.RoleWorker}
}

// Validate returns every problem with o at once.
func (o Options) Validate() error {
	var errs []error
	if o.NodeName == "" {
		errs = append(errs, errors.New("node name: required (--node-name or NODE_NAME, downward API spec.nodeName)"))
	} else if msgs := validation.IsDNS1123Subdomain(o.NodeName); len(msgs) > 0 {
		errs = append(errs, fmt.Errorf("node name %q: not a valid Node name: %s", o.NodeName, msgs[0]))
	}
	if msgs := validation.IsQualifiedName(o.Label); len(msgs) > 0 {
		errs = append(errs, fmt.Errorf("role label %q: not a valid label key: %s", o.Label, msgs[0]))
	}
	if _, ok := ParseRole(string(o.DefaultRole)); !ok {
		errs = append(errs, fmt.Errorf("default role %q: accepted: %s", o.DefaultRole, acceptedRoles))
	}
	if o.ForceRole != "" {
		if _, ok := ParseRole(string(o.ForceRole)); !ok {
			errs = append(errs, fmt.Errorf("forced role %q: accepted: %s", o.ForceRole, acceptedRoles))
		}
	}
	return errors.Join(errs...)
}

// Option configures a Watcher.
type Option func(*Watcher)

// WithLogger sets the base logger; the Watcher adds component=role (and
// routes client-go's own log lines for its informers to it). The default
// is slog.Default().
func WithLogger(l *slog.Logger) Option { return func(w *Watcher) { w.log = l } }

// WithClock sets the clock of heartbeats and check timestamps. The default
// is the real clock. (client-go's reconnect backoff runs on the real
// clock.)
func WithClock(c clock.WithTicker) Option { return func(w *Watcher) { w.clock = c } }

// WithEvents makes the Watcher post role Events (RoleChanged,
// UnknownRoleLabel) through e. Without it the Watcher posts none.
func WithEvents(e *Events) Option { return func(w *Watcher) { w.events = e } }

// WithCluster makes the Watcher publish the cluster into the snapshot
// (snapshot.Store.SetCluster): it then also watches all Nodes (through an
// address-only transform), the API server's EndpointSlice and the
// ServiceCIDRs, and publishes once the Node watches synced and the others
// synced or failed, and again whenever what it publishes changes (this
// node's pod CIDRs; Nodes joining, leaving, changing addresses or
// readiness; the API server's endpoints; the Service ranges). Off by
// default: without it the Watcher reads only its own Node.
func WithCluster() Option {
	return func(w *Watcher) { w.cluster = true }
}

// Watcher follows this node's Node object and publishes its role. Create
// it with New, run it with Run.
type Watcher struct {
	client  Client
	store   *snapshot.Store
	opts    Options
	log     *slog.Logger
	clock   clock.WithTicker
	events  *Events // nil: no Events
	cluster bool    // WithCluster
	ran     atomic.Bool

	known     chan struct{} // closed when the first role is published
	knownOnce sync.Once
	kick      chan struct{} // capacity 1: the inbox changed

	// nodes is the all-nodes informer's cache, set by Run before it
	// starts the informer (nil without WithCluster); endpoints is the
	// API server EndpointSlice informer's, serviceCIDRs the ServiceCIDR
	// informer's.
	nodes        cache.Store
	endpoints    cache.Store
	serviceCIDRs cache.Store

	mu   sync.Mutex
	in   inbox         // written by informer callbacks, read by the loop
	role snapshot.Role // the role published last, "" before the first

	st loopState // owned by Run's loop
}

// inbox is what the informers' goroutines tell the loop.
type inbox struct {
	node        *corev1.Node // own Node (transformed); nil if not seen or deleted
	nodeGen     uint64       // bumped on every own-node notification
	nodeDeleted bool
	ownSynced   bool
	nodesGen    uint64 // bumped when another node's addresses change
	allSynced   bool
	own, all    apiState

	endpoints, serviceCIDRs optionalWatch
}

// apiState is the health of one informer's connection to the API server.
type apiState struct {
	err   error     // last list/watch error; nil while connected
	since time.Time // start of the current outage; zero while connected
}

// loopState is what the loop published last.
type loopState struct {
	nodeGen         uint64
	unknownValue    *string // unknown label value reported last; nil if none
	podCIDRs        []netip.Prefix
	badCIDRs        []string
	check           snapshot.Check
	checkPublished  bool
	clusterNodeGen  uint64
	clusterNodesGen uint64
	clusterEpGen    uint64
	clusterScGen    uint64
	clusterSent     bool // the store's Cluster is this Watcher's (it keeps no copy)
	clusterSynced   bool
}

// New returns a Watcher of the Node opts names that publishes to store.
func New(client Client, store *snapshot.Store, opts Options, options ...Option) (*Watcher, error) {
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("role: %w", err)
	}
	if client == nil {
		return nil, errors.New("role: nil Kubernetes client")
	}
	if store == nil {
		return nil, errors.New("role: nil snapshot store")
	}
	w := &Watcher{
		client: client,
		store:  store,
		opts:   opts,
		log:    slog.Default(),
		clock:  clock.RealClock{},
		known:  make(chan struct{}),
		kick:   make(chan struct{}, 1),
	}
	for _, o := range options {
		o(w)
	}
	w.log = w.log.With("component", "role")
	return w, nil
}

// Synced returns a channel that is closed once the first role has been
// published.
func (w *Watcher) Synced() <-chan struct{} { return w.known }

// Role returns the role published last, and false before the first.
func (w *Watcher) Role() (snapshot.Role, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.role, w.role != ""
}

// WaitForRole waits for the first role (Run must be running) and returns
// it, or an error saying what is missing (API server unreachable, Node not
// found) when ctx is done first. Main calls it with the boot deadline.
func (w *Watcher) WaitForRole(ctx context.Context) (snapshot.Role, error) {
	select {
	case <-w.known:
		r, _ := w.Role()
		return r, nil
	case <-ctx.Done():
	}
	select {
	case <-w.known: // both ready: the role wins
		r, _ := w.Role()
		return r, nil
	default:
	}
	w.mu.Lock()
	in := w.in
	w.mu.Unlock()
	reason := w.pendingReason(in)
	if reason == "" {
		reason = "waiting for the first role"
	}
	return "", fmt.Errorf("role: no role for node %q yet (%s): %w", w.opts.NodeName, reason, context.Cause(ctx))
}

// Run watches the Node until ctx is done, then returns nil once its
// informers stopped. It may be called once.
func (w *Watcher) Run(ctx context.Context) error {
	if !w.ran.CompareAndSwap(false, true) {
		return errors.New("role: Run called twice")
	}
	// client-go logs through the context's logger: route it to ours.
	ctx = klog.NewContext(ctx, logr.FromSlogHandler(w.log.Handler()))
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()

	own, ownReg, err := w.ownInformer()
	if err != nil {
		return err
	}
	var allSynced, epsSynced, scsSynced <-chan struct{}
	if w.cluster {
		all, allReg, err := w.allInformer()
		if err != nil {
			return err
		}
		w.nodes = all.GetStore()
		allSynced = allReg.HasSyncedChecker().Done()
		wg.Go(func() { all.RunWithContext(ctx) })
		eps, epsReg, err := w.endpointsInformer()
		if err != nil {
			return err
		}
		w.endpoints = eps.GetStore()
		epsSynced = epsReg.HasSyncedChecker().Done()
		wg.Go(func() { eps.RunWithContext(ctx) })
		scs, scsReg, err := w.serviceCIDRsInformer()
		if err != nil {
			return err
		}
		w.serviceCIDRs = scs.GetStore()
		scsSynced = scsReg.HasSyncedChecker().Done()
		wg.Go(func() { scs.RunWithContext(ctx) })
	}
	wg.Go(func() { own.RunWithContext(ctx) })
	ownSynced := ownReg.HasSyncedChecker().Done()

	heartbeat := w.clock.NewTicker(HeartbeatInterval)
	defer heartbeat.Stop()
	w.beat()
	if w.opts.ForceRole != "" {
		w.publishRole(w.opts.ForceRole, "forced by --role")
	}
	w.process()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-heartbeat.C():
		case <-ownSynced:
			ownSynced = nil
			w.update(func(in *inbox) { in.ownSynced = true })
		case <-allSynced:
			allSynced = nil
			w.update(func(in *inbox) { in.allSynced = true })
		case <-epsSynced:
			epsSynced = nil
			w.update(func(in *inbox) { in.endpoints.synced = true })
		case <-scsSynced:
			scsSynced = nil
			w.update(func(in *inbox) { in.serviceCIDRs.synced = true })
		case <-w.kick:
		}
		w.beat()
		w.process()
	}
}

func (w *Watcher) beat() { w.store.Beat(HeartbeatName, w.clock.Now()) }

// update changes the inbox and wakes the loop.
func (w *Watcher) update(fn func(*inbox)) {
	w.mu.Lock()
	fn(&w.in)
	w.mu.Unlock()
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// ownInformer is the single-object informer on this node's Node.
func (w *Watcher) ownInformer() (cache.SharedIndexInformer, cache.ResourceEventHandlerRegistration, error) {
	sel := fields.OneTermEqualSelector(metav1.ObjectNameField, w.opts.NodeName).String()
	inf := cache.NewSharedIndexInformer(w.listWatch(sel, ownState, "own node"), &corev1.Node{}, 0, cache.Indexers{})
	if err := inf.SetTransform(toOwnNode(w.opts.Label)); err != nil {
		return nil, nil, fmt.Errorf("role: own node informer: %w", err)
	}
	if err := inf.SetWatchErrorHandlerWithContext(func(ctx context.Context, _ *cache.Reflector, err error) {
		w.apiResult(ctx, err, false, ownState, "own node")
	}); err != nil {
		return nil, nil, fmt.Errorf("role: own node informer: %w", err)
	}
	// The field selector already restricts the watch to this node; the
	// name check keeps a misbehaving server (or a fake) from changing the
	// role through another Node.
	mine := func(obj any) (*corev1.Node, bool) {
		n, ok := obj.(*corev1.Node)
		return n, ok && n.Name == w.opts.NodeName
	}
	reg, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if n, ok := mine(obj); ok {
				w.ownNode(n)
			}
		},
		UpdateFunc: func(_, obj any) {
			if n, ok := mine(obj); ok {
				w.ownNode(n)
			}
		},
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if _, ok := mine(obj); ok {
				w.update(func(in *inbox) {
					in.node, in.nodeDeleted = nil, true
					in.nodeGen++
				})
			}
		},
	})
	if err != nil {
		return nil, nil, fmt.Errorf("role: own node informer: %w", err)
	}
	return inf, reg, nil
}

// ownNode records a notification about this node. A notification is
// proof the watch works, so it also ends an outage.
func (w *Watcher) ownNode(n *corev1.Node) {
	w.update(func(in *inbox) {
		in.node, in.nodeDeleted = n, false
		in.nodeGen++
		w.connected(&in.own, "own node")
	})
}

// allInformer is the informer on all Nodes that caches their addresses
// only.
func (w *Watcher) allInformer() (cache.SharedIndexInformer, cache.ResourceEventHandlerRegistration, error) {
	inf := cache.NewSharedIndexInformer(w.listWatch("", allState, "node addresses"), &corev1.Node{}, 0, cache.Indexers{})
	if err := inf.SetTransform(toNodeAddrs); err != nil {
		return nil, nil, fmt.Errorf("role: node addresses informer: %w", err)
	}
	if err := inf.SetWatchErrorHandlerWithContext(func(ctx context.Context, _ *cache.Reflector, err error) {
		w.apiResult(ctx, err, false, allState, "node addresses")
	}); err != nil {
		return nil, nil, fmt.Errorf("role: node addresses informer: %w", err)
	}
	changed := func(obj any) {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		if n, ok := obj.(*nodeAddrs); ok && n.Name == w.opts.NodeName {
			return
		}
		w.update(func(in *inbox) { in.nodesGen++ })
	}
	reg, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: changed,
		UpdateFunc: func(old, obj any) {
			o, ok1 := old.(*nodeAddrs)
			n, ok2 := obj.(*nodeAddrs)
			if ok1 && ok2 && slices.Equal(o.Addrs, n.Addrs) && slices.Equal(o.PodCIDRs, n.PodCIDRs) && o.Ready == n.Ready {
				return // status heartbeat, nothing we keep changed
			}
			changed(obj)
		},
		DeleteFunc: changed,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("role: node addresses informer: %w", err)
	}
	return inf, reg, nil
}

// listWatch lists and watches Nodes matching fieldSelector ("" for all)
// and records every call's outcome in the informer's apiState.
func (w *Watcher) listWatch(fieldSelector string, which func(*inbox) *apiState, what string) cache.ListerWatcher {
	nodes := w.client.Nodes()
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = fieldSelector
			l, err := nodes.List(ctx, o)
			w.apiResult(ctx, err, true, which, what)
			return l, err
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = fieldSelector
			wi, err := nodes.Watch(ctx, o)
			w.apiResult(ctx, err, true, which, what)
			return wi, err
		},
	}
	// Lets the reflector know whether the client supports streaming
	// lists (fake clientsets do not).
	return cache.ToListWatcherWithWatchListSemantics(lw, w.client)
}

func ownState(in *inbox) *apiState { return &in.own }
func allState(in *inbox) *apiState { return &in.all }

// apiResult records the outcome of a list or watch call (direct) or an
// error passed to the informer's watch error handler. Calls report
// because client-go retries connection refused inside its watch loop
// without calling the handler; the handler catches the rest, without
// overwriting the error of an outage the calls already reported.
func (w *Watcher) apiResult(ctx context.Context, err error, direct bool, which func(*inbox) *apiState, what string) {
	if ctx.Err() != nil {
		return // shutting down
	}
	if err != nil && (apierrors.IsResourceExpired(err) || apierrors.IsGone(err)) {
		return // a stale resource version: client-go relists at once
	}
	w.update(func(in *inbox) {
		s := which(in)
		if err == nil {
			w.connected(s, what)
			return
		}
		if !direct && !s.since.IsZero() {
			return
		}
		now := w.clock.Now()
		if s.since.IsZero() {
			s.since = now
			w.log.Warn("Kubernetes API server unreachable; reconnecting with backoff, keeping the last known state",
				"watch", what, "node", w.opts.NodeName, "err", err)
		} else {
			w.log.Debug("Kubernetes API server still unreachable", "watch", what, "since", s.since, "err", err)
		}
		s.err = err
	})
}

// connected ends an outage of s. Called with w.mu held.
func (w *Watcher) connected(s *apiState, what string) {
	if !s.since.IsZero() {
		w.log.Info("Kubernetes API server reachable again", "watch", what,
			"outage", w.clock.Since(s.since).Round(time.Millisecond).String())
	}
	*s = apiState{}
}

// process publishes what changed in the inbox: the role, the check and the
// cluster.
func (w *Watcher) process() {
	w.mu.Lock()
	in := w.in
	w.mu.Unlock()

	if in.nodeGen != w.st.nodeGen {
		w.st.nodeGen = in.nodeGen
		switch {
		case in.node != nil:
			w.applyNode(in.node)
		case in.nodeDeleted:
			r, _ := w.Role()
			w.log.Warn("this node's Node object was deleted; keeping the last known role",
				"node", w.opts.NodeName, "role", r)
		}
	}
	w.publishCheck(in)
	if w.cluster {
		w.publishCluster(in)
	}
}

// applyNode publishes the role and pod CIDRs of this node's Node.
func (w *Watcher) applyNode(n *corev1.Node) {
	prefixes, bad := podCIDRs(n)
	if len(bad) > 0 && !slices.Equal(bad, w.st.badCIDRs) {
		w.log.Warn("ignoring pod CIDRs that do not parse", "node", n.Name, "pod_cidrs", bad)
	}
	w.st.podCIDRs, w.st.badCIDRs = prefixes, bad

	if w.opts.ForceRole != "" {
		return
	}
	r, err := RoleFromLabels(n.Labels, w.opts.Label, w.opts.DefaultRole)
	var unknown *UnknownRoleError
	if errors.As(err, &unknown) {
		if w.st.unknownValue == nil || *w.st.unknownValue != unknown.Value {
			w.st.unknownValue = &unknown.Value
			w.log.Warn("unknown role label value; using the default role", "node", n.Name,
				"label", unknown.Key, "value", unknown.Value, "default_role", unknown.Default, "err", err)
			w.events.UnknownRoleLabel(unknown.Key, unknown.Value, unknown.Default)
		}
	} else {
		w.st.unknownValue = nil
	}
	w.publishRole(r, roleCause(n.Labels, w.opts.Label))
}

// publishRole publishes r if it is not the current role.
func (w *Watcher) publishRole(r snapshot.Role, cause string) {
	w.mu.Lock()
	from := w.role
	w.role = r
	w.mu.Unlock()
	if from == r {
		return
	}
	w.store.SetRole(r)
	if from == "" {
		w.log.Info("role", "node", w.opts.NodeName, "role", r, "cause", cause)
		w.knownOnce.Do(func() { close(w.known) })
		return
	}
	w.log.Info("role changed", "node", w.opts.NodeName, "from", from, "to", r, "cause", cause)
	w.events.RoleChanged(from, r, cause)
}

// publishCheck publishes the role-watch check when it changed.
func (w *Watcher) publishCheck(in inbox) {
	c := snapshot.Check{OK: true}
	if reason := w.pendingReason(in); reason != "" {
		c = snapshot.Check{Reason: reason}
	}
	if w.st.checkPublished && c.OK == w.st.check.OK && c.Reason == w.st.check.Reason {
		return
	}
	c.CheckedAt = w.clock.Now()
	w.st.check, w.st.checkPublished = c, true
	w.store.SetCheck(CheckName, c)
}

// pendingReason says why the watch is not synced and connected, or "" if
// it is.
func (w *Watcher) pendingReason(in inbox) string {
	r, known := w.Role()
	keep := "no role known yet"
	if known {
		keep = "keeping last known role " + string(r)
	}
	switch {
	case !in.own.since.IsZero():
		return fmt.Sprintf("API server unreachable since %s, %s: %v",
			in.own.since.UTC().Format(time.RFC3339), keep, in.own.err)
	case !in.ownSynced:
		return fmt.Sprintf("waiting for the first list of node %q", w.opts.NodeName)
	case in.node == nil && in.nodeDeleted:
		return fmt.Sprintf("node %q was deleted, %s", w.opts.NodeName, keep)
	case in.node == nil:
		return fmt.Sprintf("node %q not found (check --node-name / NODE_NAME)", w.opts.NodeName)
	}
	return ""
}

// publishCluster publishes the cluster into the snapshot when it
// changed, once both Node informers have synced and the optional watches
// have synced or failed: the first publication then holds the API
// server's endpoints and the Service ranges when the cluster has them, so
// that the first commit check dials the real endpoints. Before that, this
// node's pod CIDRs alone are published (the egress-ip-pod check).
func (w *Watcher) publishCluster(in inbox) {
	synced := in.ownSynced && in.allSynced && in.endpoints.settled() && in.serviceCIDRs.settled()
	if w.st.clusterSent && w.st.clusterNodeGen == in.nodeGen && w.st.clusterNodesGen == in.nodesGen &&
		w.st.clusterEpGen == in.endpoints.gen && w.st.clusterScGen == in.serviceCIDRs.gen && w.st.clusterSynced == synced {
		return
	}
	w.st.clusterNodeGen, w.st.clusterNodesGen = in.nodeGen, in.nodesGen
	w.st.clusterEpGen, w.st.clusterScGen = in.endpoints.gen, in.serviceCIDRs.gen
	c := snapshot.Cluster{OwnPodCIDRs: slices.Clone(w.st.podCIDRs)}
	if synced {
		all := w.nodes.List()
		others, ready := otherNodeAddrs(all, w.opts.NodeName)
		c = snapshot.Cluster{
			Synced:         true,
			OwnPodCIDRs:    c.OwnPodCIDRs,
			NodeAddrs:      others,
			ReadyNodeAddrs: ready,
			PodCIDRs:       clusterPodCIDRs(all, w.opts.NodeName, w.st.podCIDRs),
			APIEndpoints:   cachedAPIEndpoints(w.endpoints.List()),
			ServiceCIDRs:   cachedServiceCIDRs(w.serviceCIDRs.List()),
		}
	}
	if w.st.clusterSent && c.Equal(w.store.Load().Cluster) {
		return
	}
	w.st.clusterSent, w.st.clusterSynced = true, c.Synced
	if c.Synced {
		w.log.Info("cluster", "pod_cidrs", len(c.PodCIDRs), "node_addresses", len(c.NodeAddrs),
			"ready_node_addresses", len(c.ReadyNodeAddrs), "service_cidrs", c.ServiceCIDRs,
			"api_endpoints", c.APIEndpoints)
	}
	w.store.SetCluster(c)
}
