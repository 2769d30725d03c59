package tailnet

import (
	"cmp"
	"slices"
	"time"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
	"tailscale.com/ipn"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/net/tsaddr"
)

// TailnetFromStatus maps tailscaled's status and prefs to the snapshot's
// Tailnet (Connected true, LoginError and InteractiveLogin left to the
// caller). st.AuthURL is never copied: the login URL is not published.
// prefs may be nil when unknown.
//
// Exit route approval is read from Self.AllowedIPs: control puts the
// routes it approved for this node there (ipnstate.PeerStatus.ExitNodeOption
// is the same test, but is also gated on tailscaled's build features).
func TailnetFromStatus(st *ipnstate.Status, prefs *ipn.Prefs, now time.Time) snapshot.Tailnet {
	t := snapshot.Tailnet{
		Connected:    true,
		BackendState: st.BackendState,
		Version:      st.Version,
		TailscaleIPs: slices.Clone(st.TailscaleIPs),
		UpdatedAt:    now,
	}
	if len(st.Health) > 0 {
		t.Health = slices.Sorted(slices.Values(st.Health))
	}
	if s := st.Self; s != nil {
		t.HostName = s.HostName
		t.DNSName = s.DNSName
		t.ExitRoutesApproved = s.AllowedIPs != nil && tsaddr.ContainsExitRoutes(*s.AllowedIPs)
		if s.KeyExpiry != nil {
			t.KeyExpiry = *s.KeyExpiry
		}
	}
	if prefs != nil {
		t.ExitRoutesAdvertised = prefs.AdvertisesExitNode()
		t.ExitNodeID = string(prefs.ExitNodeID)
	}
	if len(st.Peer) > 0 {
		t.Peers = make([]snapshot.Peer, 0, len(st.Peer))
	}
	for _, ps := range st.Peer {
		if ps == nil || ps.ShareeNode {
			// Sharee nodes are other tailnets' nodes that may connect
			// to us; they are hidden in `tailscale status` too and can
			// never be our exit node.
			continue
		}
		p := snapshot.Peer{
			ID:             string(ps.ID),
			HostName:       ps.HostName,
			DNSName:        ps.DNSName,
			TailscaleIPs:   slices.Clone(ps.TailscaleIPs),
			Online:         ps.Online,
			ExitNodeOption: ps.AllowedIPs != nil && tsaddr.ContainsExitRoutes(*ps.AllowedIPs),
			ExitNode:       ps.ExitNode,
		}
		if ps.Tags != nil && ps.Tags.Len() > 0 {
			p.Tags = ps.Tags.AsSlice()
		}
		t.Peers = append(t.Peers, p)
	}
	slices.SortFunc(t.Peers, func(a, b snapshot.Peer) int {
		return cmp.Or(cmp.Compare(a.HostName, b.HostName), cmp.Compare(a.ID, b.ID))
	})
	return t
}
