package exitnode

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
	"github.com/ts-node-agent/ts-node-agent/pkg/validate"
)

// Auto is the candidate that matches every peer offering an approved exit
// node.
const Auto = validate.ExitNodeAuto

// Kind is what a Candidate matches on.
type Kind uint8

// The kinds of candidate.
const (
	KindIP   Kind = iota + 1 // one of the peer's tailnet IPs
	KindHost                 // the peer's hostname or MagicDNS name
	KindTag                  // one of the peer's ACL tags
	KindAuto                 // any peer offering an exit node
)

// Candidate is one parsed --exit-nodes entry.
type Candidate struct {
	Kind Kind
	// IP is the tailnet IP of a KindIP candidate.
	IP netip.Addr
	// Name is the lower-case hostname (without a trailing dot) of a
	// KindHost candidate, or the "tag:NAME" of a KindTag candidate.
	Name string
}

// String returns the candidate as it is written in --exit-nodes.
func (c Candidate) String() string {
	switch c.Kind {
	case KindIP:
		return c.IP.String()
	case KindHost, KindTag:
		return c.Name
	case KindAuto:
		return Auto
	}
	return fmt.Sprintf("invalid candidate kind %d", c.Kind)
}

const acceptedCandidates = "accepted: auto, a tailnet IP without zone, a hostname or MagicDNS name or tag:NAME"

// ParseCandidate parses one --exit-nodes entry: "auto", a tailnet IP
// ("100.64.0.2", "fd7a:115c:a1e0::2"), "tag:NAME", or a hostname or MagicDNS
// name ("exit1", "exit1.tailnet.ts.net", matched case-insensitively). The
// syntax is validate.ExitNodeCandidate's, which pkg/config applies at
// startup: what the configuration accepts parses here.
func ParseCandidate(s string) (Candidate, error) {
	s = strings.TrimSpace(s)
	if err := validate.ExitNodeCandidate(s); err != nil {
		if s == "" {
			return Candidate{}, fmt.Errorf("empty exit node candidate (%s)", acceptedCandidates)
		}
		return Candidate{}, fmt.Errorf("exit node candidate %q: %w (%s)", s, err, acceptedCandidates)
	}
	switch {
	case s == Auto:
		return Candidate{Kind: KindAuto}, nil
	case strings.HasPrefix(s, "tag:"):
		return Candidate{Kind: KindTag, Name: s}, nil
	}
	if ip, err := netip.ParseAddr(s); err == nil {
		return Candidate{Kind: KindIP, IP: ip.Unmap()}, nil
	}
	return Candidate{Kind: KindHost, Name: strings.ToLower(strings.TrimSuffix(s, "."))}, nil
}

// ParseCandidates parses every entry of ss, reporting every bad one.
func ParseCandidates(ss []string) ([]Candidate, error) {
	var (
		cands []Candidate
		errs  []error
	)
	for _, s := range ss {
		c, err := ParseCandidate(s)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		cands = append(cands, c)
	}
	return cands, errors.Join(errs...)
}

// Matches reports whether peer p is what c names. It does not look at
// whether p offers an exit node; Resolve does.
func (c Candidate) Matches(p snapshot.Peer) bool {
	switch c.Kind {
	case KindAuto:
		return true
	case KindIP:
		return slices.ContainsFunc(p.TailscaleIPs, func(a netip.Addr) bool { return a.Unmap() == c.IP })
	case KindTag:
		return slices.ContainsFunc(p.Tags, func(t string) bool { return strings.EqualFold(t, c.Name) })
	case KindHost:
		dns := strings.TrimSuffix(p.DNSName, ".")
		first, _, _ := strings.Cut(dns, ".")
		return (p.HostName != "" && strings.EqualFold(p.HostName, c.Name)) ||
			(dns != "" && strings.EqualFold(dns, c.Name)) ||
			(first != "" && strings.EqualFold(first, c.Name))
	}
	return false
}

// Resolve returns the peers the candidates name that offer an approved
// exit node (snapshot.Peer.ExitNodeOption), in candidate order, each peer
// once (at its first position). When one candidate matches several peers
// (auto, a tag, a hostname two machines share), they are ordered by
// hostname, then MagicDNS name, then ID, so the order is deterministic.
// Whether a peer is online does not matter here; Decide looks at health.
func Resolve(cands []Candidate, peers []snapshot.Peer) []snapshot.Peer {
	var (
		out  []snapshot.Peer
		seen = map[string]bool{}
	)
	for _, c := range cands {
		var matched []snapshot.Peer
		for _, p := range peers {
			if p.ID != "" && p.ExitNodeOption && !seen[p.ID] && c.Matches(p) {
				matched = append(matched, p)
			}
		}
		slices.SortStableFunc(matched, comparePeers)
		for _, p := range matched {
			if !seen[p.ID] { // a peer may appear twice in peers
				seen[p.ID] = true
				out = append(out, p)
			}
		}
	}
	return out
}

func comparePeers(a, b snapshot.Peer) int {
	return cmp.Or(
		cmp.Compare(strings.ToLower(a.HostName), strings.ToLower(b.HostName)),
		cmp.Compare(strings.ToLower(a.DNSName), strings.ToLower(b.DNSName)),
		cmp.Compare(a.ID, b.ID),
	)
}

// peerIP is a peer's first tailnet IPv4 address, else its first address.
func peerIP(p snapshot.Peer) (netip.Addr, bool) {
	for _, a := range p.TailscaleIPs {
		if a.Is4() {
			return a, true
		}
	}
	if len(p.TailscaleIPs) > 0 {
		return p.TailscaleIPs[0], true
	}
	return netip.Addr{}, false
}

// peerName is the name a peer is shown with.
func peerName(p snapshot.Peer) string {
	switch {
	case p.HostName != "":
		return p.HostName
	case p.DNSName != "":
		name, _, _ := strings.Cut(p.DNSName, ".")
		return name
	}
	return p.ID
}

// describe is "name (ip)" for logs and reasons.
func describe(p snapshot.Peer) string {
	if ip, ok := peerIP(p); ok {
		return fmt.Sprintf("%s (%s)", peerName(p), ip)
	}
	return peerName(p)
}
