package hostnet

import (
	"fmt"
	"strconv"
	"strings"
)

// Mark is a firewall mark VALUE/MASK: a packet (or connection) carries it
// when mark&Mask == Value. The bypass sets it with mark = mark&^Mask |
// Value, keeping every bit outside Mask (tailscaled's, kube-proxy's, a
// CNI's).
type Mark struct {
	Value, Mask uint32
}

// DefaultBypassMark is --bypass-mark's default: the nibble 0x0f00 equal
// to 6. CNIs put their own marks on pod packets before routing, and a pod
// packet that matched the reply-bypass rule would leave directly, past the
// exit node and the kill switch; no single bit is free of all of them
// (Calico's iptables mask 0xffff0000 and its eBPF marks 0x01000000 to
// 0x1ff00000, Cilium's identity in 0xffff00ff and IPsec key in 0xf000,
// kube-proxy's 0x4000 and 0x8000, kube-router's DSR marks anywhere in
// 0x3fff, Antrea's bit 31, 30 and 0xff). A pattern under a mask is: Cilium's
// magic nibble 0x0f00 takes the values 2-5 and 8-f, never 6; Calico,
// Antrea, the AWS VPC CNI (0x80), Weave, kube-ovn, flannel and kube-proxy
// leave the nibble 0, Istio uses 1 and 5. The agent writes the nibble
// (never ORs it into another CNI's value) and only where it is 0.
var DefaultBypassMark = Mark{Value: 0x600, Mask: 0xf00}

// tailscaledMarkMask is the fwmark mask tailscaled owns.
const tailscaledMarkMask uint32 = 0xff0000

// ParseMark parses "VALUE[/MASK]" (numbers in Go syntax: 0x1700, 5888);
// without a mask, the mask is VALUE itself.
func ParseMark(s string) (Mark, error) {
	v, m, hasMask := strings.Cut(strings.TrimSpace(s), "/")
	value, err := strconv.ParseUint(strings.TrimSpace(v), 0, 32)
	if err != nil {
		return Mark{}, fmt.Errorf("mark %q: want VALUE[/MASK], 32-bit numbers such as 0x1700/0xff00", s)
	}
	mask := value
	if hasMask {
		if mask, err = strconv.ParseUint(strings.TrimSpace(m), 0, 32); err != nil {
			return Mark{}, fmt.Errorf("mark %q: want VALUE[/MASK], 32-bit numbers such as 0x1700/0xff00", s)
		}
	}
	return Mark{Value: uint32(value), Mask: uint32(mask)}, nil
}

// String is "0xVALUE/0xMASK".
func (m Mark) String() string { return fmt.Sprintf("%#x/%#x", m.Value, m.Mask) }

// IsZero reports whether m is unset.
func (m Mark) IsZero() bool { return m == Mark{} }

// Matches reports whether a packet mark carries m.
func (m Mark) Matches(mark uint32) bool { return mark&m.Mask == m.Value }

// Validate checks a bypass mark: a non-empty mask, a value inside it, and
// no bit that tailscaled owns.
func (m Mark) Validate() error {
	switch {
	case m.Mask == 0 || m.Value == 0:
		return fmt.Errorf("bypass mark %s: want a non-zero value under a non-zero mask", m)
	case m.Value&^m.Mask != 0:
		return fmt.Errorf("bypass mark %s: the value has bits outside the mask", m)
	case m.Mask&tailscaledMarkMask != 0:
		return fmt.Errorf("bypass mark %s: overlaps tailscaled's fwmark mask %#x", m, tailscaledMarkMask)
	}
	return nil
}
