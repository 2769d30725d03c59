package hostnet

import (
	"syscall"
	"testing"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

func msg(typ uint16, parts ...[]byte) syscall.NetlinkMessage {
	var data []byte
	for _, p := range parts {
		data = append(data, p...)
	}
	return syscall.NetlinkMessage{Header: syscall.NlMsghdr{Type: typ}, Data: data}
}

func linkMsg(typ uint16, index int32, name string) syscall.NetlinkMessage {
	ifi := nl.NewIfInfomsg(unix.AF_UNSPEC)
	ifi.Index = index
	parts := [][]byte{ifi.Serialize()}
	if name != "" {
		parts = append(parts, nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(name)).Serialize())
	}
	return msg(typ, parts...)
}

func addrMsg(typ uint16, index uint32) syscall.NetlinkMessage {
	b := make([]byte, unix.SizeofIfAddrmsg)
	b[0] = unix.AF_INET
	nl.NativeEndian().PutUint32(b[4:8], index)
	return msg(typ, b)
}

func routeMsg(typ uint16, table uint32, dstLen uint8) syscall.NetlinkMessage {
	rt := nl.NewRtMsg()
	rt.Dst_len = dstLen
	parts := [][]byte{rt.Serialize()}
	if table < 256 {
		rt.Table = uint8(table)
		parts[0] = rt.Serialize()
	} else {
		rt.Table = unix.RT_TABLE_COMPAT
		parts[0] = rt.Serialize()
		parts = append(parts, nl.NewRtAttr(unix.RTA_TABLE, nl.Uint32Attr(table)).Serialize())
	}
	return msg(typ, parts...)
}

func TestRelevantEvent(t *testing.T) {
	const tun, idx = "tailscale0", 7
	tests := []struct {
		name     string
		m        syscall.NetlinkMessage
		tunIndex int
		want     bool
	}{
		{"TUN created", linkMsg(unix.RTM_NEWLINK, 9, tun), 0, true},
		{"TUN deleted", linkMsg(unix.RTM_DELLINK, idx, tun), idx, true},
		{"TUN changed, no name attribute", linkMsg(unix.RTM_NEWLINK, idx, ""), idx, true},
		{"pod veth created", linkMsg(unix.RTM_NEWLINK, 12, "veth1234"), idx, false},
		{"a link named like a prefix of the TUN", linkMsg(unix.RTM_NEWLINK, 12, "tailscale"), idx, false},
		{"address on the TUN", addrMsg(unix.RTM_NEWADDR, idx), idx, true},
		{"address removed from the TUN", addrMsg(unix.RTM_DELADDR, idx), idx, true},
		{"address on a pod veth", addrMsg(unix.RTM_NEWADDR, 12), idx, false},
		{"address while no TUN is known", addrMsg(unix.RTM_NEWADDR, 12), 0, false},
		{"route in table 52", routeMsg(unix.RTM_DELROUTE, 52, 0), idx, true},
		{"host route in table 52", routeMsg(unix.RTM_NEWROUTE, 52, 32), idx, true},
		{"pod route in main", routeMsg(unix.RTM_NEWROUTE, unix.RT_TABLE_MAIN, 32), idx, false},
		{"default route in main (GRO interface)", routeMsg(unix.RTM_NEWROUTE, unix.RT_TABLE_MAIN, 0), idx, true},
		{"route in a table above 255", routeMsg(unix.RTM_NEWROUTE, 1000, 24), idx, false},
		{"rule added", msg(unix.RTM_NEWRULE, make([]byte, unix.SizeofRtMsg)), idx, true},
		{"rule deleted", msg(unix.RTM_DELRULE, make([]byte, unix.SizeofRtMsg)), idx, true},
		{"neighbour", msg(unix.RTM_NEWNEIGH, make([]byte, 12)), idx, false},
		{"truncated link message counts", msg(unix.RTM_NEWLINK, []byte{1, 2}), idx, true},
		{"truncated route message counts", msg(unix.RTM_NEWROUTE, []byte{1, 2}), idx, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := relevantEvent(tt.m, tun, tt.tunIndex); got != tt.want {
				t.Errorf("relevantEvent = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestParseRule(t *testing.T) {
	hdr := nl.NewRtMsg()
	hdr.Family = unix.AF_INET
	hdr.Table = 0
	hdr.Type = ActionUnreachable
	b := hdr.Serialize()
	b = append(b, nl.NewRtAttr(nl.FRA_TABLE, nl.Uint32Attr(0)).Serialize()...)
	b = append(b, nl.NewRtAttr(nl.FRA_PRIORITY, nl.Uint32Attr(5250)).Serialize()...)
	b = append(b, nl.NewRtAttr(nl.FRA_FWMARK, nl.Uint32Attr(0x80000)).Serialize()...)
	b = append(b, nl.NewRtAttr(nl.FRA_FWMASK, nl.Uint32Attr(0xff0000)).Serialize()...)
	got, err := parseRule(b)
	if err != nil {
		t.Fatal(err)
	}
	want := TailscaledRules()[2]
	if got != want {
		t.Errorf("parseRule = %+v, want %+v", got, want)
	}

	if _, err := parseRule(b[:4]); err == nil {
		t.Error("parseRule of a truncated message: no error")
	}
}
