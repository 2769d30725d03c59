package hostnet

import (
	"fmt"
	"slices"
	"strings"
)

// CheckCNIMarks is the informational check of the CNIs found on the node
// that put their own marks on packets: which, what they use, and whether
// the bypass mark is clear of it. It never gates readiness.
const CheckCNIMarks = "cni-marks"

// CNI is a CNI (or a node networking component) that marks packets.
type CNI struct {
	Name string
	// Links are the link names, or name prefixes ending in "*", that give
	// it away on the node.
	Links []string
	// Uses describes the mark bits it sets.
	Uses string
	// Samples are marks it puts on pod packets: none may carry the bypass
	// mark.
	Samples []uint32
	// TailscaledRange: some of its marks fall in tailscaled's 0xff0000,
	// so pod packets it marks may match tailscaled's own bypass rule
	// (5210, fwmark 0x80000/0xff0000): nothing the agent can change.
	TailscaledRange bool
}

// knownCNIs are the CNIs whose marks are known (see DefaultBypassMark).
var knownCNIs = []CNI{
	{Name: "Cilium", Links: []string{"cilium_host", "cilium_net", "cilium_vxlan", "cilium_geneve"},
		Uses:            "identity in 0xffff00ff, magic nibble 0x0f00 (2-5, 8-f), IPsec key 0xf000",
		Samples:         []uint32{0x0f000f00, 0x0200, 0x0300, 0x0a00, 0x0b00, 0x0c00, 0x0d00, 0x0e00, 0x0f00, 0x1e00, 0x1d00, 0x1400, 0x1500, 0xe00},
		TailscaledRange: true},
	{Name: "Calico eBPF", Links: []string{"bpfin.cali", "bpfout.cali"},
		Uses:            "0x01000000-0x1ff00000, 0x41000000, 0x81000000 (inside Felix's mark mask 0xffff0000)",
		Samples:         []uint32{0x01000000, 0x03000000, 0x03300000, 0x03600000, 0x03800000, 0x41000000, 0x81000000},
		TailscaledRange: true},
	{Name: "Calico", Links: []string{"vxlan.calico", "vxlan-v6.calico", "wireguard.cali", "wg-v6.cali", "cali*"},
		Uses:            "Felix's mark mask, 0xffff0000 by default",
		Samples:         []uint32{0x10000, 0x20000, 0x40000, 0x80000, 0x1000000, 0x80000000},
		TailscaledRange: true},
	{Name: "Antrea", Links: []string{"antrea-gw0", "antrea-tun0"},
		Uses:    "bits 31 and 30, SNAT IDs in 0xff",
		Samples: []uint32{0x80000000, 0x40000000, 0xff, 0x1}},
	{Name: "kube-router", Links: []string{"kube-bridge", "kube-dummy-if"},
		Uses:            "0x10000 and 0x20000 (network policy), DSR service marks anywhere in 0x3fff",
		Samples:         []uint32{0x10000, 0x20000},
		TailscaledRange: true},
	{Name: "kube-ovn", Links: []string{"ovn0"},
		Uses:            "0x4000, 0x40000, 0x80000, 0x90001-0x90004",
		Samples:         []uint32{0x4000, 0x40000, 0x80000, 0x90001, 0x90004},
		TailscaledRange: true},
	{Name: "Weave", Links: []string{"weave", "vethwe-bridge"},
		Uses:            "0x20000 (IPsec), 0x40000 (network policy)",
		Samples:         []uint32{0x20000, 0x40000},
		TailscaledRange: true},
	{Name: "AWS VPC CNI", Links: []string{"eni*"},
		Uses:    "connection mark 0x80",
		Samples: []uint32{0x80}},
}

// DetectCNIs returns the known CNIs whose links are among links.
func DetectCNIs(links []string) []CNI {
	var found []CNI
	for _, c := range knownCNIs {
		if slices.ContainsFunc(c.Links, func(pattern string) bool {
			return slices.ContainsFunc(links, func(l string) bool {
				if p, ok := strings.CutSuffix(pattern, "*"); ok {
					return strings.HasPrefix(l, p) && len(l) > len(p)
				}
				return l == pattern
			})
		}) {
			found = append(found, c)
		}
	}
	// Calico eBPF is Calico too: say it once.
	if slices.ContainsFunc(found, func(c CNI) bool { return c.Name == "Calico eBPF" }) {
		found = slices.DeleteFunc(found, func(c CNI) bool { return c.Name == "Calico" })
	}
	return found
}

// CNIMarksReport says what the found CNIs mark and whether mark is clear
// of it: ok is false when a packet one of them marks would carry mark (and
// so take the reply bypass past the exit node).
func CNIMarksReport(found []CNI, mark Mark) (ok bool, report string) {
	if len(found) == 0 {
		return true, "no CNI known to mark packets found (Cilium, Calico, Antrea, kube-router, kube-ovn, Weave, AWS VPC CNI)"
	}
	ok = true
	var parts []string
	for _, c := range found {
		var clash []string
		for _, s := range c.Samples {
			if mark.Matches(s) {
				clash = append(clash, fmt.Sprintf("%#x", s))
			}
		}
		part := fmt.Sprintf("%s detected: it marks packets with %s", c.Name, c.Uses)
		if len(clash) > 0 {
			ok = false
			part += fmt.Sprintf("; its marks %s carry the bypass mark %s, so such pod packets would leave directly: choose another --bypass-mark", strings.Join(clash, ", "), mark)
		} else {
			part += fmt.Sprintf("; the bypass mark %s is clear of them", mark)
		}
		if c.TailscaledRange {
			part += "; marks inside tailscaled's 0xff0000 can match tailscaled's own rule (fwmark 0x80000/0xff0000)"
		}
		parts = append(parts, part)
	}
	return ok, strings.Join(parts, ". ")
}
