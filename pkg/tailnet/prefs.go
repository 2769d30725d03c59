package tailnet

import (
	"net/netip"
	"slices"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
	"tailscale.com/ipn"
	"tailscale.com/net/tsaddr"
	"tailscale.com/tailcfg"
)

// ExitRoutes are the routes an exit node advertises: 0.0.0.0/0 and ::/0.
func ExitRoutes() []netip.Prefix {
	return []netip.Prefix{tsaddr.AllIPv4(), tsaddr.AllIPv6()}
}

// DesiredPrefs returns the prefs the agent owns for role, as an edit:
// WantRunning, hostname (when set), tags, accept-dns, accept-routes, the
// login server (when set) and the advertised routes. The agent owns the
// advertised routes: exactly the exit routes for RoleExit, none otherwise.
//
// Exit and none nodes never use an exit node, so their edit also clears
// any exit node (tailscaled refuses to advertise and use an exit node at
// once). A worker's edit leaves the exit node choice alone: that is
// WithExitNode's job, driven by exit node selection.
func DesiredPrefs(o Options, role snapshot.Role) *ipn.MaskedPrefs {
	mp := &ipn.MaskedPrefs{
		WantRunningSet:     true,
		AdvertiseTagsSet:   true,
		CorpDNSSet:         true,
		RouteAllSet:        true,
		AdvertiseRoutesSet: true,
	}
	mp.WantRunning = true
	mp.AdvertiseTags = slices.Clone(o.AdvertiseTags)
	mp.CorpDNS = o.AcceptDNS
	mp.RouteAll = o.AcceptRoutes
	if o.Hostname != "" {
		mp.Hostname, mp.HostnameSet = o.Hostname, true
	}
	if o.LoginServer != "" {
		mp.ControlURL, mp.ControlURLSet = o.LoginServer, true
	}
	switch role {
	case snapshot.RoleExit:
		mp.AdvertiseRoutes = ExitRoutes()
		clearExitNode(mp)
	case snapshot.RoleWorker:
		mp.ExitNodeAllowLANAccess, mp.ExitNodeAllowLANAccessSet = o.ExitNodeAllowLANAccess, true
	default:
		clearExitNode(mp)
	}
	return mp
}

// WithExitNode adds "use exit node id" ("" for none) to mp: the exit node
// ID, LAN access, and clearing of the other ways to pick an exit node
// (ExitNodeIP, AutoExitNode) so they cannot override the choice.
func WithExitNode(mp *ipn.MaskedPrefs, id tailcfg.StableNodeID, allowLANAccess bool) *ipn.MaskedPrefs {
	clearExitNode(mp)
	mp.ExitNodeID = id
	mp.ExitNodeAllowLANAccess, mp.ExitNodeAllowLANAccessSet = allowLANAccess, true
	return mp
}

func clearExitNode(mp *ipn.MaskedPrefs) {
	mp.ExitNodeID, mp.ExitNodeIDSet = "", true
	mp.ExitNodeIP, mp.ExitNodeIPSet = netip.Addr{}, true
	mp.AutoExitNode, mp.AutoExitNodeSet = "", true
}

// prefsDiff returns the names of the fields that want sets to a value
// different from cur's. Lists (routes, tags) compare as sets. ControlURL
// is not compared: changing the login server needs a new login, which
// loginServerChanged detects.
func prefsDiff(cur *ipn.Prefs, want *ipn.MaskedPrefs) []string {
	if cur == nil {
		return []string{"Prefs"}
	}
	var d []string
	add := func(set, differ bool, name string) {
		if set && differ {
			d = append(d, name)
		}
	}
	add(want.WantRunningSet, cur.WantRunning != want.WantRunning, "WantRunning")
	add(want.HostnameSet, cur.Hostname != want.Hostname, "Hostname")
	add(want.AdvertiseTagsSet, !sameSet(cur.AdvertiseTags, want.AdvertiseTags), "AdvertiseTags")
	add(want.CorpDNSSet, cur.CorpDNS != want.CorpDNS, "CorpDNS")
	add(want.RouteAllSet, cur.RouteAll != want.RouteAll, "RouteAll")
	add(want.AdvertiseRoutesSet, !sameSet(cur.AdvertiseRoutes, want.AdvertiseRoutes), "AdvertiseRoutes")
	add(want.ExitNodeIDSet, cur.ExitNodeID != want.ExitNodeID, "ExitNodeID")
	add(want.ExitNodeIPSet, cur.ExitNodeIP != want.ExitNodeIP, "ExitNodeIP")
	add(want.AutoExitNodeSet, cur.AutoExitNode != want.AutoExitNode, "AutoExitNode")
	add(want.ExitNodeAllowLANAccessSet, cur.ExitNodeAllowLANAccess != want.ExitNodeAllowLANAccess, "ExitNodeAllowLANAccess")
	return d
}

// loginServerChanged reports whether want asks for a control server other
// than the one cur uses.
func loginServerChanged(cur *ipn.Prefs, want *ipn.MaskedPrefs) bool {
	if !want.ControlURLSet || cur == nil {
		return false
	}
	a, b := cur.ControlURL, want.ControlURL
	if a == "" {
		a = ipn.DefaultControlURL
	}
	if ipn.IsLoginServerSynonym(a) {
		a = ipn.DefaultControlURL
	}
	if ipn.IsLoginServerSynonym(b) {
		b = ipn.DefaultControlURL
	}
	return a != b
}

func sameSet[T comparable](a, b []T) bool {
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	for _, x := range b {
		if !slices.Contains(a, x) {
			return false
		}
	}
	return true
}

// editOnly returns a copy of mp without the fields EditPrefs must not
// change on a logged-in node (the login server).
func editOnly(mp *ipn.MaskedPrefs) *ipn.MaskedPrefs {
	c := *mp
	c.Prefs = *mp.Prefs.Clone()
	c.ControlURL, c.ControlURLSet = "", false
	return &c
}

// startPrefs returns the full prefs to pass to Start for a login: cur with
// want applied, logged in.
func startPrefs(cur *ipn.Prefs, want *ipn.MaskedPrefs) *ipn.Prefs {
	var p *ipn.Prefs
	if cur != nil {
		p = cur.Clone()
	} else {
		p = ipn.NewPrefs()
	}
	p.ApplyEdits(want)
	p.LoggedOut = false
	p.Persist = nil // Start keeps tailscaled's own; never send it back
	return p
}
