package tailnet

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
	"tailscale.com/ipn"
)

func defaultOpts() Options {
	var o Options
	o.Defaults()
	return o
}

func TestDesiredPrefs(t *testing.T) {
	exit := ExitRoutes()
	full := defaultOpts()
	full.Hostname = "node-1"
	full.AdvertiseTags = []string{"tag:k8s", "tag:exit"}
	full.AcceptDNS = true
	full.AcceptRoutes = true
	full.LoginServer = "https://headscale.example"
	full.ExitNodeAllowLANAccess = false

	// base is what every role sets from the default options.
	base := func(mod func(*ipn.MaskedPrefs)) *ipn.MaskedPrefs {
		mp := &ipn.MaskedPrefs{
			WantRunningSet: true, AdvertiseTagsSet: true, CorpDNSSet: true,
			RouteAllSet: true, AdvertiseRoutesSet: true,
		}
		mp.WantRunning = true
		mod(mp)
		return mp
	}
	cleared := func(mp *ipn.MaskedPrefs) {
		mp.ExitNodeIDSet, mp.ExitNodeIPSet, mp.AutoExitNodeSet = true, true, true
	}
	tests := []struct {
		name string
		opts Options
		role snapshot.Role
		want *ipn.MaskedPrefs
	}{
		{"none/defaults", defaultOpts(), snapshot.RoleNone, base(cleared)},
		{"exit/defaults", defaultOpts(), snapshot.RoleExit, base(func(mp *ipn.MaskedPrefs) {
			mp.AdvertiseRoutes = exit
			cleared(mp)
		})},
		{"worker/defaults", defaultOpts(), snapshot.RoleWorker, base(func(mp *ipn.MaskedPrefs) {
			mp.ExitNodeAllowLANAccess, mp.ExitNodeAllowLANAccessSet = true, true
		})},
		{"worker/all options", full, snapshot.RoleWorker, base(func(mp *ipn.MaskedPrefs) {
			mp.Hostname, mp.HostnameSet = "node-1", true
			mp.AdvertiseTags = []string{"tag:k8s", "tag:exit"}
			mp.CorpDNS, mp.RouteAll = true, true
			mp.ControlURL, mp.ControlURLSet = "https://headscale.example", true
			mp.ExitNodeAllowLANAccess, mp.ExitNodeAllowLANAccessSet = false, true
		})},
		{"exit/all options", full, snapshot.RoleExit, base(func(mp *ipn.MaskedPrefs) {
			mp.Hostname, mp.HostnameSet = "node-1", true
			mp.AdvertiseTags = []string{"tag:k8s", "tag:exit"}
			mp.CorpDNS, mp.RouteAll = true, true
			mp.ControlURL, mp.ControlURLSet = "https://headscale.example", true
			mp.AdvertiseRoutes = exit
			cleared(mp)
		})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := DesiredPrefs(tt.opts, tt.role)
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }), cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("DesiredPrefs (-want +got):\n%s", diff)
			}
			// Applying it must be accepted by tailscaled's rule that a
			// node cannot advertise and use an exit node at once.
			p := ipn.NewPrefs()
			p.ExitNodeID = "old-exit"
			p.ApplyEdits(got)
			if p.AdvertisesExitNode() != (tt.role == snapshot.RoleExit) {
				t.Errorf("AdvertisesExitNode = %v for role %s", p.AdvertisesExitNode(), tt.role)
			}
			if p.AdvertisesExitNode() && p.ExitNodeID != "" {
				t.Errorf("exit role keeps using exit node %q", p.ExitNodeID)
			}
			if tt.role == snapshot.RoleWorker && p.ExitNodeID != "old-exit" {
				t.Errorf("worker prefs changed the exit node to %q; only SetExitNode may", p.ExitNodeID)
			}
		})
	}
}

func TestDesiredPrefsDoesNotAlias(t *testing.T) {
	o := defaultOpts()
	o.AdvertiseTags = []string{"tag:a"}
	mp := DesiredPrefs(o, snapshot.RoleExit)
	mp.AdvertiseTags[0] = "tag:changed"
	mp.AdvertiseRoutes[0] = netip.MustParsePrefix("10.0.0.0/8")
	if o.AdvertiseTags[0] != "tag:a" || ExitRoutes()[0].Bits() != 0 {
		t.Fatal("DesiredPrefs result aliases its inputs")
	}
}

func TestWithExitNode(t *testing.T) {
	p := ipn.NewPrefs()
	p.ExitNodeIP = netip.MustParseAddr("100.64.0.9")
	p.AutoExitNode = ipn.AnyExitNode
	p.ApplyEdits(WithExitNode(&ipn.MaskedPrefs{}, "nEXIT", true))
	if p.ExitNodeID != "nEXIT" || p.ExitNodeIP.IsValid() || p.AutoExitNode != "" || !p.ExitNodeAllowLANAccess {
		t.Errorf("after WithExitNode(nEXIT): ID=%q IP=%v auto=%q lan=%v", p.ExitNodeID, p.ExitNodeIP, p.AutoExitNode, p.ExitNodeAllowLANAccess)
	}
	p.ApplyEdits(WithExitNode(&ipn.MaskedPrefs{}, "", false))
	if p.ExitNodeID != "" || p.ExitNodeAllowLANAccess {
		t.Errorf("after WithExitNode(\"\"): ID=%q lan=%v", p.ExitNodeID, p.ExitNodeAllowLANAccess)
	}
}

func TestPrefsDiff(t *testing.T) {
	o := defaultOpts()
	o.Hostname = "n1"
	o.AdvertiseTags = []string{"tag:a", "tag:b"}
	want := editOnly(DesiredPrefs(o, snapshot.RoleExit))

	matching := ipn.NewPrefs()
	matching.ApplyEdits(want)

	tests := []struct {
		name string
		mod  func(p *ipn.Prefs)
		want []string
	}{
		{"equal", func(p *ipn.Prefs) {}, nil},
		{"routes in another order", func(p *ipn.Prefs) { slices.Reverse(p.AdvertiseRoutes) }, nil},
		{"tags in another order", func(p *ipn.Prefs) { p.AdvertiseTags = []string{"tag:b", "tag:a"} }, nil},
		{"control URL is not edited", func(p *ipn.Prefs) { p.ControlURL = "https://other.example" }, nil},
		{"unowned field", func(p *ipn.Prefs) { p.ShieldsUp = true }, nil},
		{"stopped", func(p *ipn.Prefs) { p.WantRunning = false }, []string{"WantRunning"}},
		{"hostname", func(p *ipn.Prefs) { p.Hostname = "other" }, []string{"Hostname"}},
		{"missing route", func(p *ipn.Prefs) { p.AdvertiseRoutes = p.AdvertiseRoutes[:1] }, []string{"AdvertiseRoutes"}},
		{"extra route", func(p *ipn.Prefs) {
			p.AdvertiseRoutes = append(p.AdvertiseRoutes, netip.MustParsePrefix("10.0.0.0/8"))
		}, []string{"AdvertiseRoutes"}},
		{"tags and dns", func(p *ipn.Prefs) { p.AdvertiseTags = nil; p.CorpDNS = true }, []string{"AdvertiseTags", "CorpDNS"}},
		{"uses exit node", func(p *ipn.Prefs) { p.ExitNodeID = "x" }, []string{"ExitNodeID"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cur := matching.Clone()
			tt.mod(cur)
			if got := prefsDiff(cur, want); !slices.Equal(got, tt.want) {
				t.Errorf("prefsDiff = %v, want %v", got, tt.want)
			}
		})
	}
	if got := prefsDiff(nil, want); len(got) == 0 {
		t.Error("prefsDiff(nil) is empty; unknown prefs must be applied")
	}
}

func TestLoginServerChanged(t *testing.T) {
	tests := []struct {
		cur, want string
		changed   bool
	}{
		{"", "", false}, // not set: Tailscale's, never compared
		{"https://hs.example", "", false},
		{"https://hs.example", "https://hs.example", false},
		{"https://hs.example", "https://other.example", true},
		{"", "https://controlplane.tailscale.com", false},
		{"https://login.tailscale.com", "https://controlplane.tailscale.com", false},
		{"", "https://hs.example", true},
	}
	for _, tt := range tests {
		o := defaultOpts()
		o.LoginServer = tt.want
		cur := ipn.NewPrefs()
		cur.ControlURL = tt.cur
		if got := loginServerChanged(cur, DesiredPrefs(o, snapshot.RoleNone)); got != tt.changed {
			t.Errorf("loginServerChanged(%q -> %q) = %v, want %v", tt.cur, tt.want, got, tt.changed)
		}
	}
}

func TestStartPrefs(t *testing.T) {
	cur := ipn.NewPrefs()
	cur.LoggedOut = true
	cur.ShieldsUp = true
	o := defaultOpts()
	o.LoginServer = "https://hs.example"
	o.Hostname = "n1"
	p := startPrefs(cur, DesiredPrefs(o, snapshot.RoleExit))
	if p.LoggedOut || !p.WantRunning || p.ControlURL != "https://hs.example" || p.Hostname != "n1" || !p.AdvertisesExitNode() {
		t.Errorf("startPrefs = %s", p.Pretty())
	}
	if !p.ShieldsUp {
		t.Error("startPrefs dropped a pref the agent does not own")
	}
	if cur.Hostname == "n1" {
		t.Error("startPrefs modified its input")
	}
	if !strings.Contains(startPrefs(nil, DesiredPrefs(o, snapshot.RoleNone)).Pretty(), "n1") {
		t.Error("startPrefs(nil) lost the hostname")
	}
}

func TestEditOnly(t *testing.T) {
	o := defaultOpts()
	o.LoginServer = "https://hs.example"
	o.AdvertiseTags = []string{"tag:a"}
	mp := DesiredPrefs(o, snapshot.RoleExit)
	e := editOnly(mp)
	if e.ControlURLSet || e.ControlURL != "" {
		t.Error("editOnly keeps the control URL")
	}
	if !mp.ControlURLSet {
		t.Error("editOnly modified its input")
	}
	e.AdvertiseTags[0] = "tag:x"
	if mp.AdvertiseTags[0] != "tag:a" {
		t.Error("editOnly aliases its input")
	}
}
