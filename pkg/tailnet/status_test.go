package tailnet

import (
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
	"tailscale.com/ipn"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
	"tailscale.com/types/views"
)

func prefixes(ss ...string) *views.Slice[netip.Prefix] {
	var pp []netip.Prefix
	for _, s := range ss {
		pp = append(pp, netip.MustParsePrefix(s))
	}
	v := views.SliceOf(pp)
	return &v
}

func addrs(ss ...string) []netip.Addr {
	var aa []netip.Addr
	for _, s := range ss {
		aa = append(aa, netip.MustParseAddr(s))
	}
	return aa
}

func TestTailnetFromStatus(t *testing.T) {
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	tags := views.SliceOf([]string{"tag:exit"})
	exitPrefs := ipn.NewPrefs()
	exitPrefs.AdvertiseRoutes = ExitRoutes()
	workerPrefs := ipn.NewPrefs()
	workerPrefs.ExitNodeID = "nEXIT"
	v4only := ipn.NewPrefs()
	v4only.AdvertiseRoutes = ExitRoutes()[:1]

	running := func(self *ipnstate.PeerStatus, peers ...*ipnstate.PeerStatus) *ipnstate.Status {
		st := &ipnstate.Status{
			Version:      "1.102.5-t",
			BackendState: "Running",
			TailscaleIPs: addrs("100.64.0.1", "fd7a:115c:a1e0::1"),
			Self:         self,
			Health:       []string{"z warning", "a warning"},
			Peer:         map[key.NodePublic]*ipnstate.PeerStatus{},
		}
		for _, p := range peers {
			st.Peer[key.NewNode().Public()] = p
		}
		return st
	}
	self := func(allowed *views.Slice[netip.Prefix]) *ipnstate.PeerStatus {
		return &ipnstate.PeerStatus{ID: "nSELF", HostName: "self", DNSName: "self.ts.net.", AllowedIPs: allowed}
	}
	base := snapshot.Tailnet{
		Connected:    true,
		BackendState: "Running",
		Version:      "1.102.5-t",
		TailscaleIPs: addrs("100.64.0.1", "fd7a:115c:a1e0::1"),
		HostName:     "self",
		DNSName:      "self.ts.net.",
		Health:       []string{"a warning", "z warning"},
		UpdatedAt:    now,
	}
	with := func(mod func(*snapshot.Tailnet)) snapshot.Tailnet {
		t := base
		mod(&t)
		return t
	}

	tests := []struct {
		name  string
		st    *ipnstate.Status
		prefs *ipn.Prefs
		want  snapshot.Tailnet
	}{
		{
			// The login URL is never published (only logged by the Manager).
			name: "needs login",
			st:   &ipnstate.Status{BackendState: "NeedsLogin", Version: "v", AuthURL: "https://login/a/1"},
			want: snapshot.Tailnet{Connected: true, BackendState: "NeedsLogin", Version: "v", UpdatedAt: now},
		},
		{
			name: "running, no prefs known",
			st:   running(self(prefixes("100.64.0.1/32"))),
			want: base,
		},
		{
			name:  "exit advertised, not approved",
			st:    running(self(prefixes("100.64.0.1/32"))),
			prefs: exitPrefs,
			want:  with(func(t *snapshot.Tailnet) { t.ExitRoutesAdvertised = true }),
		},
		{
			name:  "exit advertised and approved",
			st:    running(self(prefixes("100.64.0.1/32", "0.0.0.0/0", "::/0"))),
			prefs: exitPrefs,
			want: with(func(t *snapshot.Tailnet) {
				t.ExitRoutesAdvertised = true
				t.ExitRoutesApproved = true
			}),
		},
		{
			name: "node key expiry",
			st: running(func() *ipnstate.PeerStatus {
				s := self(prefixes("100.64.0.1/32"))
				exp := now.Add(90 * 24 * time.Hour)
				s.KeyExpiry = &exp
				return s
			}()),
			want: with(func(t *snapshot.Tailnet) { t.KeyExpiry = now.Add(90 * 24 * time.Hour) }),
		},
		{
			name:  "only IPv4 approved is not approved",
			st:    running(self(prefixes("100.64.0.1/32", "0.0.0.0/0"))),
			prefs: exitPrefs,
			want:  with(func(t *snapshot.Tailnet) { t.ExitRoutesAdvertised = true }),
		},
		{
			name:  "only IPv4 advertised is not advertised",
			st:    running(self(prefixes("100.64.0.1/32"))),
			prefs: v4only,
			want:  base,
		},
		{
			name: "worker with peers",
			st: running(self(nil),
				&ipnstate.PeerStatus{ID: "nEXIT", HostName: "exit-1", DNSName: "exit-1.ts.net.",
					TailscaleIPs: addrs("100.64.0.2"), Tags: &tags, Online: true, ExitNode: true,
					AllowedIPs: prefixes("100.64.0.2/32", "0.0.0.0/0", "::/0")},
				&ipnstate.PeerStatus{ID: "nB", HostName: "b-offline", TailscaleIPs: addrs("100.64.0.3"),
					AllowedIPs: prefixes("100.64.0.3/32", "0.0.0.0/0")},
				&ipnstate.PeerStatus{ID: "nSHAREE", HostName: "aaa-sharee", ShareeNode: true},
			),
			prefs: workerPrefs,
			want: with(func(t *snapshot.Tailnet) {
				t.ExitNodeID = "nEXIT"
				t.Peers = []snapshot.Peer{
					{ID: "nB", HostName: "b-offline", TailscaleIPs: addrs("100.64.0.3")},
					{ID: "nEXIT", HostName: "exit-1", DNSName: "exit-1.ts.net.", TailscaleIPs: addrs("100.64.0.2"),
						Tags: []string{"tag:exit"}, Online: true, ExitNodeOption: true, ExitNode: true},
				}
			}),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := TailnetFromStatus(tt.st, tt.prefs, now)
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmpopts.IgnoreUnexported(snapshot.Tailnet{})); diff != "" {
				t.Errorf("TailnetFromStatus (-want +got):\n%s", diff)
			}
		})
	}
}

func TestTailnetFromStatusDoesNotAlias(t *testing.T) {
	st := &ipnstate.Status{
		BackendState: "Running",
		TailscaleIPs: addrs("100.64.0.1"),
		Health:       []string{"b", "a"},
		Peer: map[key.NodePublic]*ipnstate.PeerStatus{
			key.NewNode().Public(): {ID: tailcfg.StableNodeID("p"), TailscaleIPs: addrs("100.64.0.2")},
		},
	}
	got := TailnetFromStatus(st, nil, time.Time{})
	got.TailscaleIPs[0] = netip.Addr{}
	got.Health[0] = "x"
	got.Peers[0].TailscaleIPs[0] = netip.Addr{}
	if !st.TailscaleIPs[0].IsValid() || st.Health[0] != "b" {
		t.Fatal("snapshot aliases the status")
	}
	for _, p := range st.Peer {
		if !p.TailscaleIPs[0].IsValid() {
			t.Fatal("snapshot peer aliases the status")
		}
	}
}

func TestNotifyMatters(t *testing.T) {
	yes, no := true, false
	now := time.Now()
	st := ipn.Running
	tests := []struct {
		name string
		n    ipn.Notify
		want bool
	}{
		{"empty", ipn.Notify{}, false},
		{"engine stats", ipn.Notify{Engine: &ipn.EngineStatus{}}, false},
		{"state", ipn.Notify{State: &st}, true},
		{"self", ipn.Notify{SelfChange: &tailcfg.Node{}}, true},
		{"peer added", ipn.Notify{PeersChanged: []*tailcfg.Node{{}}}, true},
		{"peer removed", ipn.Notify{PeersRemoved: []tailcfg.NodeID{1}}, true},
		{"error", ipn.Notify{ErrMessage: new("x")}, true},
		{"peer online", ipn.Notify{PeerChangedPatch: []*tailcfg.PeerChange{{NodeID: 1, LastSeen: &now}, {NodeID: 2, Online: &yes}}}, true},
		{"peer offline", ipn.Notify{PeerChangedPatch: []*tailcfg.PeerChange{{NodeID: 2, Online: &no}}}, true},
		{"peer endpoints and last seen only", ipn.Notify{PeerChangedPatch: []*tailcfg.PeerChange{
			{NodeID: 1, LastSeen: &now}, {NodeID: 2, DERPRegion: 3}, {NodeID: 3, Endpoints: []netip.AddrPort{netip.MustParseAddrPort("1.2.3.4:5")}},
		}}, false},
	}
	for _, tt := range tests {
		if got := notifyMatters(&tt.n); got != tt.want {
			t.Errorf("%s: notifyMatters = %v, want %v", tt.name, got, tt.want)
		}
	}
}
