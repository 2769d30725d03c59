package lab

// nftables helpers. The lab writes its own tables only (PodNftTable in
// node namespaces, lab-witness-N in the wan namespace), through
// github.com/google/nftables over netlink inside the namespace: the nft
// command is not needed. Every change of a table is one transaction, so a
// table is never half there.

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// nftConn opens an nftables connection in the namespace.
func (ns *NetNS) nftConn() (*nftables.Conn, error) {
	if ns.handle < 0 {
		return nil, fmt.Errorf("lab: nftables in %s: namespace is closed", ns.label)
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(ns.handle)))
	if err != nil {
		return nil, fmt.Errorf("lab: nftables in %s: %w", ns.label, err)
	}
	return c, nil
}

// nftTable is the complete content of one of the lab's tables.
type nftTable struct {
	table  *nftables.Table
	objs   []nftables.Obj
	chains []*nftables.Chain
	rules  []*nftables.Rule
}

// replaceNftTable installs spec in ns, replacing the table of that name
// if it exists, in one transaction.
func (ns *NetNS) replaceNftTable(spec nftTable) error {
	c, err := ns.nftConn()
	if err != nil {
		return err
	}
	c.AddTable(spec.table) // so that the delete below cannot fail
	c.DelTable(spec.table)
	c.AddTable(spec.table)
	for _, o := range spec.objs {
		c.AddObj(o)
	}
	for _, ch := range spec.chains {
		c.AddChain(ch)
	}
	for _, r := range spec.rules {
		c.AddRule(r)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("lab: %s: install nftables table inet %s: %w", ns.label, spec.table.Name, err)
	}
	return nil
}

// deleteNftTable deletes the table from ns if it is there.
func (ns *NetNS) deleteNftTable(t *nftables.Table) error {
	c, err := ns.nftConn()
	if err != nil {
		return err
	}
	tables, err := c.ListTablesOfFamily(t.Family)
	if err != nil {
		return fmt.Errorf("lab: %s: list nftables tables: %w", ns.label, err)
	}
	if !slices.ContainsFunc(tables, func(x *nftables.Table) bool { return x.Name == t.Name }) {
		return nil
	}
	c.DelTable(t)
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("lab: %s: delete nftables table inet %s: %w", ns.label, t.Name, err)
	}
	return nil
}

// hasNftTable reports whether ns has the table (family inet).
func (ns *NetNS) hasNftTable(name string) (bool, error) {
	c, err := ns.nftConn()
	if err != nil {
		return false, err
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, fmt.Errorf("lab: %s: list nftables tables: %w", ns.label, err)
	}
	return slices.ContainsFunc(tables, func(x *nftables.Table) bool { return x.Name == name }), nil
}

// Expressions. Register 1 throughout; meta values (marks) are in host
// byte order, packet fields in network byte order.

// nftIfname is the nftables form of an interface name: NUL-padded to
// IFNAMSIZ, for an exact match.
func nftIfname(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

func matchIIF(name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: nftIfname(name)},
	}
}

func matchOIF(name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: nftIfname(name)},
	}
}

// matchIPv4 restricts an inet-family rule to IPv4 packets.
func matchIPv4() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
	}
}

// IPv4 header offsets of the addresses.
const (
	ipv4SrcOffset = 12
	ipv4DstOffset = 16
)

// matchIPv4Prefix compares the IPv4 address at offset (ipv4SrcOffset or
// ipv4DstOffset) with p: in it (expr.CmpOpEq) or not (expr.CmpOpNeq).
// Follow matchIPv4.
func matchIPv4Prefix(offset uint32, p netip.Prefix, op expr.CmpOp) []expr.Any {
	p = p.Masked()
	addr := p.Addr().As4()
	e := []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4}}
	if p.Bits() < 32 {
		m := prefixMask4(p.Bits())
		e = append(e, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: m[:], Xor: []byte{0, 0, 0, 0}})
	}
	return append(e, &expr.Cmp{Op: op, Register: 1, Data: addr[:]})
}

func prefixMask4(bits int) [4]byte {
	var m [4]byte
	for i := range bits {
		m[i/8] |= 0x80 >> (i % 8)
	}
	return m
}

func matchMark(mark uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(mark)},
	}
}

// setMark is "meta mark set mark".
func setMark(mark uint32) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: binaryutil.NativeEndian.PutUint32(mark)},
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1, SourceRegister: true},
	}
}

// countTo adds the packet to the table's named counter.
func countTo(counter string) expr.Any {
	return &expr.Objref{Type: unix.NFT_OBJECT_COUNTER, Name: counter}
}

// counterName is the named counter of a counterTable.
const counterName = "hits"

// counterTable is a table of the lab's own with one named counter that
// rules in its chains add to: the witness of DirectWatch, and the tests'
// probes.
type counterTable struct {
	ns    *NetNS
	table *nftables.Table
}

// counterChain is a base chain of a counterTable: every rule is a list of
// matches, and a packet that passes them all is counted.
type counterChain struct {
	name    string
	typ     nftables.ChainType
	hook    *nftables.ChainHook
	prio    *nftables.ChainPriority
	matches [][]expr.Any
}

// installCounterTable (re)creates the table name (family inet) in ns.
func installCounterTable(ns *NetNS, name string, chains []counterChain) (*counterTable, error) {
	t := &nftables.Table{Name: name, Family: nftables.TableFamilyINet}
	spec := nftTable{table: t, objs: []nftables.Obj{&nftables.CounterObj{Table: t, Name: counterName}}}
	for _, cc := range chains {
		ch := &nftables.Chain{Name: cc.name, Table: t, Type: cc.typ, Hooknum: cc.hook, Priority: cc.prio}
		spec.chains = append(spec.chains, ch)
		for _, m := range cc.matches {
			spec.rules = append(spec.rules, &nftables.Rule{
				Table: t, Chain: ch,
				Exprs: append(slices.Clone(m), countTo(counterName)),
			})
		}
	}
	if err := ns.replaceNftTable(spec); err != nil {
		return nil, err
	}
	return &counterTable{ns: ns, table: t}, nil
}

// packets reads the counter; with reset it also sets it to zero, in the
// same operation.
func (c *counterTable) packets(reset bool) (uint64, error) {
	conn, err := c.ns.nftConn()
	if err != nil {
		return 0, err
	}
	q := &nftables.CounterObj{Table: c.table, Name: counterName}
	var o nftables.Obj
	if reset {
		o, err = conn.ResetObject(q)
	} else {
		o, err = conn.GetObject(q)
	}
	if err != nil {
		return 0, fmt.Errorf("lab: %s: read counter of table inet %s: %w", c.ns.label, c.table.Name, err)
	}
	co, ok := o.(*nftables.CounterObj)
	if !ok {
		return 0, fmt.Errorf("lab: %s: table inet %s: no counter %q", c.ns.label, c.table.Name, counterName)
	}
	return co.Packets, nil
}

func (c *counterTable) remove() error { return c.ns.deleteNftTable(c.table) }
