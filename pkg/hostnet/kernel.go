package hostnet

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netlinkTimeout bounds every netlink request, so a wedged kernel answer
// shows as a read error instead of a stuck watcher.
const netlinkTimeout = 5 * time.Second

// kernel reads the netlink side of KernelState in one network namespace.
type kernel struct {
	h     *netlink.Handle
	rules *nl.SocketHandle // for the rule dump, which netlink.RuleList does not fully decode
}

// openKernel opens netlink sockets in ns (netns.None(): the current one).
func openKernel(ns netns.NsHandle) (*kernel, error) {
	var (
		h   *netlink.Handle
		err error
	)
	if ns.IsOpen() {
		h, err = netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	} else {
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	}
	if err != nil {
		return nil, err
	}
	if err := h.SetSocketTimeout(netlinkTimeout); err != nil {
		h.Close()
		return nil, err
	}
	s, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		h.Close()
		return nil, err
	}
	tv := unix.NsecToTimeval(netlinkTimeout.Nanoseconds())
	s.SetSendTimeout(&tv)
	s.SetReceiveTimeout(&tv)
	return &kernel{h: h, rules: &nl.SocketHandle{Socket: s}}, nil
}

func (k *kernel) close() {
	k.h.Close()
	k.rules.Close()
}

// read fills the netlink part of a KernelState: the TUN link, every rule,
// the routes of table 52. onIndex learns the TUN's ifindex (0 if absent)
// before its addresses are read, so that the event filter never misses an
// address change. A dump interrupted by a concurrent change is retried.
func (k *kernel) read(tunName string, onIndex func(int)) KernelState {
	var ks KernelState
	var err error
	for range 3 {
		ks, err = k.readOnce(tunName, onIndex)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return KernelState{ReadErr: err.Error()}
	}
	return ks
}

func (k *kernel) readOnce(tunName string, onIndex func(int)) (KernelState, error) {
	var ks KernelState
	link, err := k.h.LinkByName(tunName)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		onIndex(0)
	case err != nil:
		return ks, fmt.Errorf("get link %q: %w", tunName, err)
	default:
		a := link.Attrs()
		onIndex(a.Index)
		ks.Link = &Link{Name: a.Name, Index: a.Index, Up: a.Flags&net.FlagUp != 0}
		addrs, err := k.h.AddrList(link, netlink.FAMILY_ALL)
		if err != nil {
			return ks, fmt.Errorf("list addresses of %q: %w", tunName, err)
		}
		for _, a := range addrs {
			if p, ok := prefixOf(a.IPNet); ok {
				ks.Link.Addrs = append(ks.Link.Addrs, p)
			}
		}
	}
	if ks.Rules, err = k.listRules(); err != nil {
		return ks, fmt.Errorf("list rules: %w", err)
	}
	routes, err := k.h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: TailscaleTable}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return ks, fmt.Errorf("list routes of table %d: %w", TailscaleTable, err)
	}
	for _, r := range routes {
		dst, _ := prefixOf(r.Dst)
		rt := Route{Family: r.Family, Table: r.Table, Dst: dst, LinkIndex: r.LinkIndex, Type: r.Type}
		if dst.IsValid() && dst.Bits() == 0 && r.LinkIndex != 0 {
			// Name the device of a default route, for the failure reason.
			if ks.Link != nil && r.LinkIndex == ks.Link.Index {
				rt.LinkName = ks.Link.Name
			} else if l, err := k.h.LinkByIndex(r.LinkIndex); err == nil {
				rt.LinkName = l.Attrs().Name
			}
		}
		ks.Routes = append(ks.Routes, rt)
	}
	return ks, nil
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a, ones), true
}

// listRules dumps the policy rules of both families. It decodes the rule
// action itself: netlink.RuleList drops it, and tailscaled's priority-5250
// rule differs from a lookup only by its action (unreachable).
func (k *kernel) listRules() ([]Rule, error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETRULE, unix.NLM_F_DUMP)
	req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
	req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: k.rules}
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWRULE)
	if err != nil {
		return nil, err
	}
	rules := make([]Rule, 0, len(msgs))
	for _, m := range msgs {
		r, err := parseRule(m)
		if err != nil {
			return nil, err
		}
		rules = append(rules, r)
	}
	return rules, nil
}

// parseRule decodes an RTM_NEWRULE payload (struct fib_rule_hdr, which has
// the layout of struct rtmsg, then FRA_* attributes).
func parseRule(m []byte) (Rule, error) {
	if len(m) < unix.SizeofRtMsg {
		return Rule{}, fmt.Errorf("short rule message (%d bytes)", len(m))
	}
	hdr := nl.DeserializeRtMsg(m)
	r := Rule{
		Family: int(hdr.Family),
		Table:  int(hdr.Table),
		Action: hdr.Type,
		Invert: hdr.Flags&netlink.FibRuleInvert != 0,
	}
	attrs, err := nl.ParseRouteAttr(m[unix.SizeofRtMsg:])
	if err != nil {
		return Rule{}, fmt.Errorf("parse rule attributes: %w", err)
	}
	native := nl.NativeEndian()
	for _, a := range attrs {
		if len(a.Value) < 4 {
			continue
		}
		switch a.Attr.Type {
		case nl.FRA_PRIORITY:
			r.Priority = int(native.Uint32(a.Value))
		case nl.FRA_TABLE:
			r.Table = int(native.Uint32(a.Value))
		case nl.FRA_FWMARK:
			r.Mark = native.Uint32(a.Value)
		case nl.FRA_FWMASK:
			r.Mask = native.Uint32(a.Value)
		}
	}
	return r, nil
}

// The multicast groups the watcher follows: links, addresses, routes of
// every table, policy rules; IPv4 and IPv6.
var watchGroups = []uint{
	unix.RTNLGRP_LINK,
	unix.RTNLGRP_IPV4_IFADDR, unix.RTNLGRP_IPV6_IFADDR,
	unix.RTNLGRP_IPV4_ROUTE, unix.RTNLGRP_IPV6_ROUTE,
	unix.RTNLGRP_IPV4_RULE, unix.RTNLGRP_IPV6_RULE,
}

// readEvents receives from s until done is closed, calling notify for
// every batch with a relevant message, and after an overflow (events were
// lost, so the state must be re-read). It returns nil once done is closed,
// or the receive error that ended it.
func readEvents(s *nl.NetlinkSocket, done <-chan struct{}, relevant func(syscall.NetlinkMessage) bool, notify func()) error {
	for {
		msgs, from, err := s.Receive()
		select {
		case <-done:
			return nil
		default:
		}
		switch {
		case errors.Is(err, unix.ENOBUFS):
			notify()
			continue
		case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return fmt.Errorf("receive netlink events: %w", err)
		}
		if from.Pid != nl.PidKernel {
			continue
		}
		for _, m := range msgs {
			if relevant(m) {
				notify()
				break
			}
		}
	}
}

// relevantEvent reports whether a netlink notification can change a
// check: anything about the TUN link (by name or by its last known
// index), rules, routes of table 52, and default routes of any table (the
// default-route interface matters for UDP GRO forwarding). Everything else
// (pod veths coming and going, CNI routes) is ignored. Messages it cannot
// decode count as relevant.
func relevantEvent(m syscall.NetlinkMessage, tunName string, tunIndex int) bool {
	native := nl.NativeEndian()
	switch m.Header.Type {
	case unix.RTM_NEWLINK, unix.RTM_DELLINK:
		if len(m.Data) < unix.SizeofIfInfomsg {
			return true
		}
		ifi := nl.DeserializeIfInfomsg(m.Data)
		if tunIndex != 0 && int(ifi.Index) == tunIndex {
			return true
		}
		attrs, err := nl.ParseRouteAttr(m.Data[unix.SizeofIfInfomsg:])
		if err != nil {
			return true
		}
		for _, a := range attrs {
			if a.Attr.Type == unix.IFLA_IFNAME {
				return cString(a.Value) == tunName
			}
		}
		return false
	case unix.RTM_NEWADDR, unix.RTM_DELADDR:
		if len(m.Data) < unix.SizeofIfAddrmsg {
			return true
		}
		// struct ifaddrmsg: family, prefixlen, flags, scope (1 byte each), index (u32)
		return tunIndex != 0 && int(native.Uint32(m.Data[4:8])) == tunIndex
	case unix.RTM_NEWROUTE, unix.RTM_DELROUTE:
		if len(m.Data) < unix.SizeofRtMsg {
			return true
		}
		// struct rtmsg: family, dst_len, src_len, tos, table, ...
		dstLen, table := m.Data[1], int(m.Data[4])
		if table == unix.RT_TABLE_COMPAT {
			attrs, err := nl.ParseRouteAttr(m.Data[unix.SizeofRtMsg:])
			if err != nil {
				return true
			}
			for _, a := range attrs {
				if a.Attr.Type == unix.RTA_TABLE && len(a.Value) >= 4 {
					table = int(native.Uint32(a.Value))
				}
			}
		}
		return table == TailscaleTable || dstLen == 0
	case unix.RTM_NEWRULE, unix.RTM_DELRULE:
		return true
	}
	return false
}

// cString returns b up to its first NUL.
func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}
