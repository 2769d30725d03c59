package lab

import (
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// LossTable is the nftables table (family inet) of LoseIncomingUDP in a
// node's namespace.
const LossTable = "lab-loss"

// Loss is a random loss of a node's incoming UDP packets (LoseIncomingUDP).
type Loss struct {
	ct *counterTable
}

// LoseIncomingUDP makes the node drop one in every incoming UDP packets,
// at random (nftables numgen random), until Remove: tailscaled's disco
// pings and WireGuard packets to it are lost, its answers are not.
func (n *Node) LoseIncomingUDP(every uint32) (*Loss, error) {
	if every < 2 {
		return nil, fmt.Errorf("lab: lose one in %d packets: want at least 2", every)
	}
	t := &nftables.Table{Name: LossTable, Family: nftables.TableFamilyINet}
	ch := &nftables.Chain{
		Name: "input", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter,
	}
	spec := nftTable{
		table:  t,
		objs:   []nftables.Obj{&nftables.CounterObj{Table: t, Name: counterName}},
		chains: []*nftables.Chain{ch},
		rules: []*nftables.Rule{{Table: t, Chain: ch, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
			&expr.Numgen{Register: 1, Modulus: every, Type: unix.NFT_NG_RANDOM},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
			countTo(counterName),
			&expr.Verdict{Kind: expr.VerdictDrop},
		}}},
	}
	if err := n.replaceNftTable(spec); err != nil {
		return nil, err
	}
	n.lab.logf("%s: losing one in %d incoming UDP packets", n.label, every)
	return &Loss{ct: &counterTable{ns: n.NetNS, table: t}}, nil
}

// Dropped is the number of packets dropped so far.
func (l *Loss) Dropped() (uint64, error) { return l.ct.packets(false) }

// Remove ends the loss.
func (l *Loss) Remove() error { return l.ct.remove() }
