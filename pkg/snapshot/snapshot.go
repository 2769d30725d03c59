// Package snapshot owns the agent's single in-memory view of the world.
//
// Sources (the supervisor, the IPN bus watcher, the role watcher, host
// network checks, netcheck) each publish their part through one setter; the
// probe handlers and the metrics collectors only read. A Snapshot is an
// immutable value: setters copy, modify and atomically swap, so a reader
// never sees a half-written state and never blocks a writer.
//
// This package must not do I/O, call the LocalAPI or the network, or import
// any other package of this module.
package snapshot

import (
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Role is the job a node does in the tailnet.
type Role string

// The roles of DESIGN section 4.
const (
	RoleNone   Role = "none"
	RoleExit   Role = "exit"
	RoleWorker Role = "worker"
)

// Roles lists every role, in the order metrics expose them.
var Roles = []Role{RoleExit, RoleWorker, RoleNone}

// Supervisor is the state of the tailscaled child process.
type Supervisor struct {
	Running   bool      // the child process is running
	PID       int       // its pid while Running
	Restarts  uint64    // restarts after an unexpected exit, since agent start
	StartedAt time.Time // when the current (or last) child was started
	// DownSince is when tailscaled stopped running (or when the agent
	// started, before the first start); zero while Running.
	DownSince time.Time
	LastExit  string // how the last child ended, "" if none has
}

// Peer is the part of a tailnet peer the agent cares about.
type Peer struct {
	ID           string // stable node ID
	HostName     string
	DNSName      string
	TailscaleIPs []netip.Addr
	Tags         []string
	Online       bool
	// ExitNodeOption is true when the peer offers an exit node that control
	// approved (its AllowedIPs contain the default routes).
	ExitNodeOption bool
	// ExitNode is true when this node currently uses the peer as exit node.
	ExitNode bool
}

// Tailnet is the state tailscaled reports through the LocalAPI.
type Tailnet struct {
	// Connected is true while the agent holds a LocalAPI IPN bus watch.
	Connected    bool
	BackendState string // ipn.State string: NoState, NeedsLogin, Starting, Running, ...
	Version      string // tailscaled's version
	TailscaleIPs []netip.Addr
	HostName     string
	DNSName      string
	Health       []string // tailscaled health warnings, sorted
	LoginError   string   // last login/prefs error, "" if none
	Peers        []Peer   // sorted by HostName
	// InteractiveLogin is true while tailscaled needs a login and waits
	// for a human to open its login URL (no auth key). The URL itself is
	// never published: whoever opens it first enrols the node into their
	// tailnet, so it goes to the agent's log only.
	InteractiveLogin bool
	// ExitRoutesAdvertised is true when prefs advertise 0.0.0.0/0 and ::/0.
	ExitRoutesAdvertised bool
	// ExitRoutesApproved is true when control approved both exit routes for
	// this node (they appear in Self.AllowedIPs).
	ExitRoutesApproved bool
	// ExitNodeID is the stable ID of the exit node prefs ask for, "" if none.
	ExitNodeID string
	// KeyExpiry is when this node's key expires; zero when key expiry is
	// disabled for the node (or not known yet).
	KeyExpiry time.Time
	UpdatedAt time.Time
	// LocalAPIAnsweredAt is when tailscaled's LocalAPI last answered the
	// agent: a call that succeeded or an IPN bus notification. Zero until
	// it has. It never moves back and outlives a lost connection, so that
	// liveness can tell a tailscaled that runs but no longer answers.
	LocalAPIAnsweredAt time.Time

	// peers indexes Peers, so that probes and scrapes cost the same at 10
	// and 10 000 peers. The Store's setters build it; a Tailnet built by
	// hand has none, and Peer and PeerCounts then walk the list.
	peers *peerIndex
}

// peerIndex is Peers by stable ID, and the online count.
type peerIndex struct {
	n      int   // len(Peers) when it was built
	first  *Peer // &Peers[0] then: another list (even of the same length) is not indexed
	byID   map[string]int
	online int
}

// indexPeers builds t's peer index.
func (t *Tailnet) indexPeers() {
	ix := &peerIndex{n: len(t.Peers), byID: make(map[string]int, len(t.Peers))}
	if len(t.Peers) > 0 {
		ix.first = &t.Peers[0]
	}
	for i, p := range t.Peers {
		ix.byID[p.ID] = i
		if p.Online {
			ix.online++
		}
	}
	t.peers = ix
}

// Indexed returns t with its peer index built, for a Tailnet made
// outside a Store (the Store's setters index it themselves).
func (t Tailnet) Indexed() Tailnet {
	t.indexPeers()
	return t
}

// index returns the peer index if it is t's (built for this peer list).
func (t Tailnet) index() *peerIndex {
	if t.peers == nil || t.peers.n != len(t.Peers) || (len(t.Peers) > 0 && t.peers.first != &t.Peers[0]) {
		return nil
	}
	return t.peers
}

// Peer returns the peer with the given stable ID.
func (t Tailnet) Peer(id string) (Peer, bool) {
	if ix := t.index(); ix != nil {
		i, ok := ix.byID[id]
		if !ok {
			return Peer{}, false
		}
		if t.Peers[i].ID == id {
			return t.Peers[i], true
		}
		// Peers was changed after the index was built: walk it.
	}
	for _, p := range t.Peers {
		if p.ID == id {
			return p, true
		}
	}
	return Peer{}, false
}

// IPv4 returns the node's first tailnet IPv4 address, if any.
func (t Tailnet) IPv4() (netip.Addr, bool) {
	for _, a := range t.TailscaleIPs {
		if a.Is4() {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// PeerCounts returns the number of peers that are online and offline.
func (t Tailnet) PeerCounts() (online, offline int) {
	if ix := t.index(); ix != nil {
		return ix.online, len(t.Peers) - ix.online
	}
	for _, p := range t.Peers {
		if p.Online {
			online++
		} else {
			offline++
		}
	}
	return online, offline
}

// Host is what the agent knows of the host's kernel settings (hostnet).
type Host struct {
	Known          bool // the values below have been read at least once
	IPv4Forwarding bool
	IPv6Forwarding bool
	// ForwardingEnabledByAgent is true when the agent turned forwarding on
	// (so it may turn it off again on a role change).
	ForwardingEnabledByAgent bool
}

// ExitNode is the worker's exit-node selection state (exit-node selector).
type ExitNode struct {
	// CurrentID is the stable node ID of the exit node in use, "" if none.
	CurrentID   string
	CurrentName string
	CurrentIP   netip.Addr
	// Healthy is true when the current exit node passed its last health
	// evaluation (offered, online, answering tailnet pings).
	Healthy bool
	// Fallback is "" while an exit node is in use, else the --exit-fallback
	// mode in force because no candidate is healthy ("block" or "direct").
	Fallback   string
	Reason     string            // why the current choice was made, or why none is healthy
	Switches   map[string]uint64 // switches by reason (initial, offline, ping, failback, ...)
	SwitchedAt time.Time
}

// Ping is the latest tailnet ping to one peer.
type Ping struct {
	PeerName string
	PeerIP   netip.Addr
	OK       bool
	Latency  time.Duration
	Path     string // "direct", "derp" or "relay"
	Err      string
	At       time.Time
}

// Check is the latest result of one named check (for example "tun",
// "forwarding", "egress-ip", "tcp:db").
type Check struct {
	OK        bool
	Reason    string // why it failed; "" when OK
	Duration  time.Duration
	CheckedAt time.Time
	// Skipped says the check could not run (for example egress-ip-pod
	// with no pod CIDR known): it is shown with its Reason, and never
	// fails a probe, whatever the role's gating checks say.
	Skipped bool
}

// CheckDeclaration says what a published check is for. Each publisher
// declares the checks it publishes, for its configuration; probe builds
// its role map from the declarations (probe.Options.Declare).
type CheckDeclaration struct {
	Name string
	// Gates are the roles whose readiness the check gates.
	Gates []Role
	// Informational: in the roles it does not gate, the check is shown in
	// /readyz?verbose when published, and never fails a probe.
	Informational bool
}

// Snapshot is one immutable view of the agent's state. Never modify a
// Snapshot returned by Store.Load; use the Store's setters.
type Snapshot struct {
	StartedAt  time.Time // agent start
	Role       Role
	Supervisor Supervisor
	Tailnet    Tailnet
	Host       Host
	ExitNode   ExitNode
	// Pings are the latest tailnet pings, by peer IP string.
	Pings map[string]Ping
	// Checks published by active checkers, by name. Which of them gate
	// readiness is decided by the probe package.
	Checks map[string]Check
	// Heartbeats of the agent's long-running loops, by loop name. A loop
	// that stops beating is stuck, which fails liveness.
	Heartbeats map[string]time.Time
	// FirstReadyAt is when the node was first ready; zero until then.
	FirstReadyAt time.Time
	// Cluster is what the Kubernetes side (pkg/kube) knows of the
	// cluster; zero while unknown (or outside Kubernetes).
	Cluster Cluster
}

// Cluster is what Kubernetes says of the cluster, published in one value
// by pkg/kube: the bypass and its commit check (pkg/hostnet's Guard),
// --allow-from and the egress-ip-pod check read it. Every list is sorted,
// without duplicates.
type Cluster struct {
	// Synced: the Node watches have synced, and the API server's
	// endpoints and the Service ranges were read (or cannot be). Until
	// then only OwnPodCIDRs may be set.
	Synced bool
	// OwnPodCIDRs are this node's Node.spec.podCIDRs.
	OwnPodCIDRs []netip.Prefix
	// NodeAddrs are the InternalIP and ExternalIP of every other Node.
	NodeAddrs []netip.Addr
	// ReadyNodeAddrs are the NodeAddrs of the Nodes whose Ready condition
	// is True (the commit check dials them first).
	ReadyNodeAddrs []netip.Addr
	// PodCIDRs are the pod CIDRs of every Node, this one's included.
	PodCIDRs []netip.Prefix
	// APIEndpoints are the API server's ready endpoints (the
	// EndpointSlice default/kubernetes): address and https port.
	APIEndpoints []netip.AddrPort
	// ServiceCIDRs are the Service ranges (networking.k8s.io/v1
	// ServiceCIDR objects).
	ServiceCIDRs []netip.Prefix
}

// Contains reports whether a is a node address or inside a pod CIDR of c
// (who may reach the agent's port besides the node itself: --allow-from).
func (c Cluster) Contains(a netip.Addr) bool {
	if _, ok := slices.BinarySearchFunc(c.NodeAddrs, a, netip.Addr.Compare); ok {
		return true
	}
	return slices.ContainsFunc(c.PodCIDRs, func(p netip.Prefix) bool { return p.Contains(a) })
}

// Equal reports whether c and o hold the same values.
func (c Cluster) Equal(o Cluster) bool {
	return c.Synced == o.Synced && slices.Equal(c.OwnPodCIDRs, o.OwnPodCIDRs) &&
		slices.Equal(c.NodeAddrs, o.NodeAddrs) && slices.Equal(c.ReadyNodeAddrs, o.ReadyNodeAddrs) &&
		slices.Equal(c.PodCIDRs, o.PodCIDRs) && slices.Equal(c.APIEndpoints, o.APIEndpoints) &&
		slices.Equal(c.ServiceCIDRs, o.ServiceCIDRs)
}

// Clone returns a deep copy of c.
func (c Cluster) Clone() Cluster {
	return Cluster{
		Synced:         c.Synced,
		OwnPodCIDRs:    slices.Clone(c.OwnPodCIDRs),
		NodeAddrs:      slices.Clone(c.NodeAddrs),
		ReadyNodeAddrs: slices.Clone(c.ReadyNodeAddrs),
		PodCIDRs:       slices.Clone(c.PodCIDRs),
		APIEndpoints:   slices.Clone(c.APIEndpoints),
		ServiceCIDRs:   slices.Clone(c.ServiceCIDRs),
	}
}

// Store holds the current Snapshot. The zero value is not usable; use New.
type Store struct {
	mu      sync.Mutex // serialises writers
	cur     atomic.Pointer[Snapshot]
	changed chan struct{} // closed and replaced on every change
}

// New returns a Store whose snapshot starts at start with the given role.
func New(start time.Time, role Role) *Store {
	s := &Store{changed: make(chan struct{})}
	s.cur.Store(&Snapshot{
		StartedAt:  start,
		Role:       role,
		Supervisor: Supervisor{DownSince: start},
		Checks:     map[string]Check{},
		Heartbeats: map[string]time.Time{},
	})
	return s
}

// Load returns the current snapshot. It never blocks.
func (s *Store) Load() *Snapshot { return s.cur.Load() }

// Changed returns a channel that is closed at the next change. Load after it
// fires, then call Changed again.
func (s *Store) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// update copies the current snapshot, lets fn modify the copy and publishes
// it. fn must copy any map or slice it changes (the old snapshot is shared).
func (s *Store) update(fn func(*Snapshot)) {
	s.updateIf(func(n *Snapshot) bool { fn(n); return true })
}

// updateIf is update for a fn that may find nothing to change: when it
// returns false, nothing is published and Changed does not fire, so a loop
// that waits on Changed and calls a setter does not spin.
func (s *Store) updateIf(fn func(*Snapshot) bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := *s.cur.Load()
	if !fn(&next) {
		return
	}
	s.cur.Store(&next)
	close(s.changed)
	s.changed = make(chan struct{})
}

// SetRole publishes the current role (role watcher).
func (s *Store) SetRole(r Role) {
	s.updateIf(func(n *Snapshot) bool {
		changed := n.Role != r
		n.Role = r
		return changed
	})
}

// SetSupervisor publishes the tailscaled process state (supervisor).
func (s *Store) SetSupervisor(v Supervisor) {
	s.update(func(n *Snapshot) { n.Supervisor = v })
}

// SetTailnet publishes tailscaled's state (IPN bus watcher). Slices in v
// must not be modified afterwards. LocalAPIAnsweredAt keeps the later of
// v's and the current one.
func (s *Store) SetTailnet(v Tailnet) {
	s.update(func(n *Snapshot) {
		if v.LocalAPIAnsweredAt.Before(n.Tailnet.LocalAPIAnsweredAt) {
			v.LocalAPIAnsweredAt = n.Tailnet.LocalAPIAnsweredAt
		}
		v.indexPeers()
		n.Tailnet = v
	})
}

// LocalAPIAnswered records that tailscaled's LocalAPI answered at t
// (Tailnet.LocalAPIAnsweredAt; an earlier t is ignored). Like Beat it does
// not signal Changed: it is recorded at every answer, and liveness follows
// it by time alone.
func (s *Store) LocalAPIAnswered(t time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := s.cur.Load()
	if !t.After(cur.Tailnet.LocalAPIAnsweredAt) {
		return
	}
	next := *cur
	next.Tailnet.LocalAPIAnsweredAt = t
	s.cur.Store(&next)
}

// UpdateTailnet lets the tailnet source change part of its state, for
// example a login error, without racing its own full updates.
func (s *Store) UpdateTailnet(fn func(*Tailnet)) {
	s.update(func(n *Snapshot) {
		fn(&n.Tailnet)
		n.Tailnet.indexPeers()
	})
}

// SetHost publishes the host kernel state (hostnet).
func (s *Store) SetHost(v Host) { s.update(func(n *Snapshot) { n.Host = v }) }

// SetExitNode publishes the worker's exit-node selection (selector).
// v.Switches must not be modified afterwards.
func (s *Store) SetExitNode(v ExitNode) { s.update(func(n *Snapshot) { n.ExitNode = v }) }

// SetPing publishes the latest tailnet ping result to a peer.
func (s *Store) SetPing(p Ping) {
	s.update(func(n *Snapshot) {
		n.Pings = maps.Clone(n.Pings)
		if n.Pings == nil {
			n.Pings = map[string]Ping{}
		}
		n.Pings[p.PeerIP.String()] = p
	})
}

// SetCluster publishes what Kubernetes says of the cluster (pkg/kube).
func (s *Store) SetCluster(c Cluster) {
	c = c.Clone()
	s.updateIf(func(n *Snapshot) bool {
		if n.Cluster.Equal(c) {
			return false
		}
		n.Cluster = c
		return true
	})
}

// SetCheck publishes the result of the named check.
func (s *Store) SetCheck(name string, c Check) {
	s.update(func(n *Snapshot) {
		n.Checks = maps.Clone(n.Checks)
		n.Checks[name] = c
	})
}

// DeleteCheck removes the named check (it no longer applies, for example
// after a role change).
func (s *Store) DeleteCheck(name string) {
	s.updateIf(func(n *Snapshot) bool {
		if _, ok := n.Checks[name]; !ok {
			return false
		}
		n.Checks = maps.Clone(n.Checks)
		delete(n.Checks, name)
		return true
	})
}

// Beat records that the named loop is alive at t. It does not signal
// Changed: heartbeats alone never change readiness.
func (s *Store) Beat(loop string, t time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := *s.cur.Load()
	next.Heartbeats = maps.Clone(next.Heartbeats)
	next.Heartbeats[loop] = t
	s.cur.Store(&next)
}

// MarkReady records the first time the node was ready; later calls are
// no-ops. It returns true the first time.
func (s *Store) MarkReady(t time.Time) bool {
	first := false
	s.updateIf(func(n *Snapshot) bool {
		if n.FirstReadyAt.IsZero() {
			n.FirstReadyAt = t
			first = true
		}
		return first
	})
	return first
}

// CheckNames returns the names of the published checks, sorted.
func (sn *Snapshot) CheckNames() []string {
	return slices.Sorted(maps.Keys(sn.Checks))
}
