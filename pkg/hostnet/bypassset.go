package hostnet

// The bypass destinations live in two interval sets of the nftables table,
// one per family, so that the number of policy rules does not grow with
// the cluster (DESIGN section 4): at 5000 Nodes there are about 10 000
// destinations, and policy rules are evaluated one after the other for
// every route lookup, while a set lookup is a tree walk. A node that joins
// or leaves changes one element pair, in one small batch.

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
)

// Names of the destination sets in the table BypassNftTable.
const (
	BypassSetIPv4 = "bypass-ipv4"
	BypassSetIPv6 = "bypass-ipv6"
)

// Batching of set elements. An element list is one netlink attribute,
// whose length is 16 bits: about 30 bytes per element keeps a message of
// elementsPerMessage well under 64 KiB. A batch is one sendmsg, bounded by
// the socket's send buffer (net.core.wmem_default, 208 KiB by default):
// messagesPerBatch messages of elements keep it under that.
const (
	elementsPerMessage = 1024
	messagesPerBatch   = 4
)

// destinationSets are the table's sets, IPv4 first.
func destinationSets(t *nftables.Table) [2]*nftables.Set {
	return [2]*nftables.Set{
		{Table: t, Name: BypassSetIPv4, KeyType: nftables.TypeIPAddr, Interval: true},
		{Table: t, Name: BypassSetIPv6, KeyType: nftables.TypeIP6Addr, Interval: true},
	}
}

// setOf returns the index in destinationSets of p's family.
func setOf(p netip.Prefix) int {
	if p.Addr().Is4() {
		return 0
	}
	return 1
}

// prefixElements are the interval elements of p: its first address, and
// the first address after it flagged as the interval's end. A prefix that
// reaches the family's last address has no end element: the kernel's
// interval tree then matches up to the top.
func prefixElements(p netip.Prefix) []nftables.SetElement {
	p = p.Masked()
	start := p.Addr()
	out := []nftables.SetElement{{Key: start.AsSlice()}}
	if end, ok := prefixEnd(p); ok {
		out = append(out, nftables.SetElement{Key: end.AsSlice(), IntervalEnd: true})
	}
	return out
}

// prefixEnd is the first address after p; ok is false when p reaches the
// last address of its family.
func prefixEnd(p netip.Prefix) (netip.Addr, bool) {
	b := p.Masked().Addr().AsSlice()
	// Set the host bits, then add one.
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	last, _ := netip.AddrFromSlice(b)
	next := last.Next()
	return next, next.IsValid()
}

// setContent is what a destination set holds: the prefixes its intervals
// are, and the elements that are not a prefix's interval (written by
// someone else), to delete.
type setContent struct {
	prefixes []netip.Prefix
	junk     []nftables.SetElement
}

// parseSetElements turns a dump of an interval set into prefixes. The
// kernel lists an interval as its start element and an end element (the
// first address after it, flagged); a start without an end reaches the
// family's last address.
func parseSetElements(elems []nftables.SetElement, bits int) setContent {
	type point struct {
		addr netip.Addr
		end  bool
		elem nftables.SetElement
	}
	var pts []point
	var c setContent
	for _, e := range elems {
		a, ok := netip.AddrFromSlice(e.Key)
		if !ok || a.BitLen() != bits {
			c.junk = append(c.junk, e)
			continue
		}
		pts = append(pts, point{a, e.IntervalEnd, e})
	}
	// By address; at one address an end (of the interval before) comes
	// before a start.
	slices.SortFunc(pts, func(x, y point) int {
		if d := x.addr.Compare(y.addr); d != 0 {
			return d
		}
		switch {
		case x.end == y.end:
			return 0
		case x.end:
			return -1
		}
		return 1
	})
	var open *point
	flush := func(end netip.Addr, endElem *nftables.SetElement) {
		if p, ok := rangePrefix(open.addr, end); ok {
			c.prefixes = append(c.prefixes, p)
		} else {
			c.junk = append(c.junk, open.elem)
			if endElem != nil {
				c.junk = append(c.junk, *endElem)
			}
		}
		open = nil
	}
	for i := range pts {
		pt := &pts[i]
		switch {
		case pt.end && open != nil:
			flush(pt.addr, &pt.elem)
		case pt.end:
			c.junk = append(c.junk, pt.elem)
		case open != nil:
			// Two starts in a row: the first one's interval reaches
			// this start; not something the agent writes.
			c.junk = append(c.junk, open.elem)
			open = pt
		default:
			open = pt
		}
	}
	if open != nil {
		flush(netip.Addr{}, nil)
	}
	return c
}

// rangePrefix returns the prefix that is exactly [start, end), end being
// invalid for "up to the last address".
func rangePrefix(start, end netip.Addr) (netip.Prefix, bool) {
	for bits := 0; bits <= start.BitLen(); bits++ {
		p := netip.PrefixFrom(start, bits)
		if p.Masked().Addr() != start {
			continue
		}
		e, ok := prefixEnd(p)
		if (ok && e == end) || (!ok && !end.IsValid()) {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

// setsMatch reports whether the table has both destination sets with the
// right types (their contents aside).
func setsMatch(c *nftables.Conn, t *nftables.Table) (bool, error) {
	have, err := c.GetSets(t)
	if err != nil {
		return false, fmt.Errorf("list nftables sets: %w", err)
	}
	for _, w := range destinationSets(t) {
		i := slices.IndexFunc(have, func(s *nftables.Set) bool { return s.Name == w.Name })
		if i < 0 {
			return false, nil
		}
		s := have[i]
		if !s.Interval || s.IsMap || s.Concatenation || s.KeyType.GetNFTMagic() != w.KeyType.GetNFTMagic() {
			return false, nil
		}
	}
	return true, nil
}

// readSets dumps both destination sets.
func readSets(c *nftables.Conn, t *nftables.Table) ([2]setContent, error) {
	var out [2]setContent
	for i, s := range destinationSets(t) {
		elems, err := c.GetSetElements(s)
		if err != nil {
			return out, fmt.Errorf("list the elements of nftables set %s: %w", s.Name, err)
		}
		out[i] = parseSetElements(elems, int(s.KeyType.Bytes)*8)
	}
	return out, nil
}

// elementOp is a change to one set: elements to delete or to add.
type elementOp struct {
	set   *nftables.Set
	del   bool
	elems []nftables.SetElement
}

// setDiff returns the changes that turn have into want, per set: the
// deletions first (a broader prefix replacing narrower ones must not
// overlap them when it is added), then the additions.
func setDiff(t *nftables.Table, have [2]setContent, want []netip.Prefix) (ops []elementOp, added, deleted int) {
	sets := destinationSets(t)
	var wantBy [2][]netip.Prefix
	for _, p := range want {
		wantBy[setOf(p)] = append(wantBy[setOf(p)], p)
	}
	var adds []elementOp
	for i, s := range sets {
		var del, add []nftables.SetElement
		del = append(del, have[i].junk...)
		// Maps, not lookups in the lists: a set holds 10 000 prefixes at
		// 5000 Nodes, and every Node change diffs them.
		wanted, had := prefixSet(wantBy[i]), prefixSet(have[i].prefixes)
		for _, p := range have[i].prefixes {
			if _, ok := wanted[p]; !ok {
				del = append(del, prefixElements(p)...)
				deleted++
			}
		}
		for _, p := range wantBy[i] {
			if _, ok := had[p]; !ok {
				add = append(add, prefixElements(p)...)
				added++
			}
		}
		if len(del) > 0 {
			ops = append(ops, elementOp{set: s, del: true, elems: del})
		}
		if len(add) > 0 {
			adds = append(adds, elementOp{set: s, elems: add})
		}
	}
	return append(ops, adds...), added, deleted
}

func prefixSet(ps []netip.Prefix) map[netip.Prefix]struct{} {
	m := make(map[netip.Prefix]struct{}, len(ps))
	for _, p := range ps {
		m[p] = struct{}{}
	}
	return m
}

// queueElements adds ops to c's batch in messages of at most
// elementsPerMessage elements, flushing every messagesPerBatch messages;
// the caller flushes the rest (with whatever it queued before, a change
// of up to elementsPerMessage*messagesPerBatch elements is one
// transaction). It returns the number of flushes it made.
func queueElements(c *nftables.Conn, ops []elementOp) (int, error) {
	queued, flushes := 0, 0
	for _, op := range ops {
		for chunk := range slices.Chunk(op.elems, elementsPerMessage) {
			if queued == messagesPerBatch {
				if err := c.Flush(); err != nil {
					return flushes, err
				}
				flushes++
				queued = 0
			}
			var err error
			if op.del {
				err = c.SetDeleteElements(op.set, chunk)
			} else {
				err = c.SetAddElements(op.set, chunk)
			}
			if err != nil {
				return flushes, err
			}
			queued++
		}
	}
	return flushes, nil
}

// prefixesOf returns the destinations of rules, reduced (a destination
// adopted from a previous agent may cover or duplicate a current one, and
// the sets take no overlapping intervals).
func prefixesOf(rules []BypassRule) []netip.Prefix {
	var all []netip.Prefix
	for _, r := range rules {
		if r.Dst.IsValid() {
			all = append(all, r.Dst.Masked())
		}
	}
	keep, _ := reducePrefixes(all)
	return keep
}

// countDestinations counts the destinations among rules.
func countDestinations(rules []BypassRule) int {
	n := 0
	for _, r := range rules {
		if r.Dst.IsValid() {
			n++
		}
	}
	return n
}
