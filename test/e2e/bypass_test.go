package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/ts-node-agent/ts-node-agent/pkg/hostnet"
	"github.com/ts-node-agent/ts-node-agent/test/lab"
)

// commitTargetFlags declares addr (IP:port) as a destination that must
// stay reachable off the exit node: bypassed, and dialled to confirm each
// exit node (outside Kubernetes, the --check-tcp targets that
// --bypass-cidrs covers).
func commitTargetFlags(name string, addr netip.AddrPort) []string {
	return []string{
		"--bypass-cidrs=" + netip.PrefixFrom(addr.Addr(), addr.Addr().BitLen()).String(),
		"--check-tcp=" + name + "=" + addr.String(),
	}
}

// sshStandIn is a line echo server on a node: it stands for sshd. Server
// lets the test write from the node's side first.
type sshStandIn struct {
	ln    net.Listener
	conns chan net.Conn // server side of each accepted connection
}

func startSSHStandIn(t *testing.T, n *lab.Node, port int) *sshStandIn {
	t.Helper()
	ln, err := n.Listen("tcp4", fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatal(err)
	}
	s := &sshStandIn{ln: ln, conns: make(chan net.Conn, 16)}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
			s.conns <- c
			go func() {
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					c.Write([]byte("echo " + line))
				}
			}()
		}
	}()
	return s
}

// session is a connection from "the internet" (lab.InternetIP in the wan
// namespace, off the LAN, so its replies would take the exit node) to the
// node's stand-in, and the server side of it.
type session struct {
	name   string
	client net.Conn
	r      *bufio.Reader
	server net.Conn
}

func openSession(ctx context.Context, t *testing.T, l *lab.Lab, n *lab.Node, s *sshStandIn, port int, name string) *session {
	t.Helper()
	var c net.Conn
	err := l.WAN().Do(func() error {
		d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: lab.InternetIP.AsSlice()}}
		var err error
		c, err = d.DialContext(ctx, "tcp4", netip.AddrPortFrom(n.Addr(), uint16(port)).String())
		return err
	})
	if err != nil {
		t.Fatalf("session %s: connect from %s to %s: %v", name, lab.InternetIP, n.Addr(), err)
	}
	t.Cleanup(func() { c.Close() })
	var srv net.Conn
	select {
	case srv = <-s.conns:
	case <-time.After(5 * time.Second):
		t.Fatalf("session %s: not accepted", name)
	}
	return &session{name: name, client: c, r: bufio.NewReader(c), server: srv}
}

// clientFirst sends a line from the client and reads the echo.
func (s *session) clientFirst(msg string) error {
	s.client.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := s.client.Write([]byte(msg + "\n")); err != nil {
		return fmt.Errorf("session %s: write: %w", s.name, err)
	}
	got, err := s.r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("session %s: no echo of %q: %w", s.name, msg, err)
	}
	if want := "echo " + msg + "\n"; got != want {
		return fmt.Errorf("session %s: got %q, want %q", s.name, got, want)
	}
	return nil
}

// serverFirst sends a line from the node's side (output without input,
// like a shell printing) and reads it at the client.
func (s *session) serverFirst(msg string) error {
	s.client.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := s.server.Write([]byte(msg + "\n")); err != nil {
		return fmt.Errorf("session %s: server write: %w", s.name, err)
	}
	got, err := s.r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("session %s: the client did not get %q: %w", s.name, msg, err)
	}
	if got != msg+"\n" {
		return fmt.Errorf("session %s: got %q, want %q", s.name, got, msg)
	}
	return nil
}

// bypassLeft lists what of the agent's bypass is in the node's kernel:
// policy rules tagged with its protocol or at its priority, the
// destinations in its sets (a line per set), and its nftables table.
func bypassLeft(ctx context.Context, t *testing.T, n *lab.Node) (rules []string, table bool) {
	t.Helper()
	out, err := n.Exec(ctx, "ip", "rule", "show")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if strings.Contains(line, fmt.Sprintf("proto %d", hostnet.BypassProtocol)) ||
			strings.HasPrefix(line, fmt.Sprintf("%d:", hostnet.BypassMarkPriority)) {
			rules = append(rules, line)
		}
	}
	out6, err := n.Exec(ctx, "ip", "-6", "rule", "show")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out6)), "\n") {
		if strings.Contains(line, fmt.Sprintf("proto %d", hostnet.BypassProtocol)) {
			rules = append(rules, "v6 "+line)
		}
	}
	err = n.Do(func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
		if err != nil {
			return err
		}
		table = slices.ContainsFunc(tables, func(tb *nftables.Table) bool { return tb.Name == hostnet.BypassNftTable })
		return nil
	})
	if err != nil {
		t.Fatalf("listing nftables tables in %s: %v", n.Name(), err)
	}
	if !table {
		return rules, table
	}
	// The destinations, one line per set that has any:
	// "set bypass-ipv4: elements = { 198.18.0.2, 198.19.0.2 }".
	for _, set := range []string{hostnet.BypassSetIPv4, hostnet.BypassSetIPv6} {
		out, err := n.Exec(ctx, "nft", "list", "set", "inet", hostnet.BypassNftTable, set)
		if err != nil {
			t.Fatalf("nft list set %s: %v: %s", set, err, out)
		}
		if i := strings.Index(string(out), "elements = {"); i >= 0 {
			elems, _, _ := strings.Cut(string(out[i:]), "}")
			rules = append(rules, "set "+set+": "+strings.Join(strings.Fields(elems), " ")+" }")
		}
	}
	return rules, table
}

// TestBypassKeepsNodeReachable: a worker using the exit node stays
// reachable. SSH-like sessions from an internet address to the worker's
// LAN address, opened before the agent started, while it ran without an
// exit node, and after the exit node is on, all keep working (both sides
// talking first); a bypassed destination sees the worker's own address
// while the internet sees the exit node's; SIGTERM leaves the bypass for
// the next agent (TestUninstall removes it).
func TestBypassKeepsNodeReachable(t *testing.T) {
	l := lab.NewForTest(t, lab.Options{Nodes: []string{"exit1", "worker1"}, ApproveExitRoutes: false})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	exit1, worker1 := l.Node("exit1"), l.Node("worker1")

	// The "API server": on the second internet address, declared as a
	// commit target.
	api := netip.AddrPortFrom(lab.AltInternetIP, 6443)
	apiLn, err := l.WAN().Listen("tcp4", api.String())
	if err != nil {
		t.Fatal(err)
	}
	defer apiLn.Close()
	go acceptAll(apiLn)

	const sshPort = 2222
	sshd := startSSHStandIn(t, worker1, sshPort)
	older := openSession(ctx, t, l, worker1, sshd, sshPort, "opened before the agent")
	if err := older.clientFirst("hello"); err != nil {
		t.Fatal(err)
	}

	ea := mustStart(t, l, exit1, "exit")
	wa := mustStart(t, l, worker1, "worker", append(commitTargetFlags("api", api),
		"--exit-nodes=exit1", "--exit-commit-timeout=5s")...)

	// The bypass is installed as soon as the node is a worker, before any
	// exit node is in use.
	var rules []string
	for {
		var table bool
		if rules, table = bypassLeft(ctx, t, worker1); len(rules) >= 3 && table {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the worker agent did not install its bypass: rules %q", rules)
		case <-wa.Done():
			t.Fatalf("the worker agent exited (%v) before installing its bypass", wa.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
	t.Logf("bypass rules:\n%s", strings.Join(rules, "\n"))
	if !slices.ContainsFunc(rules, func(r string) bool {
		return strings.HasPrefix(r, "set ") && slices.Contains(strings.FieldsFunc(r, func(c rune) bool { return c == ' ' || c == ',' }), lab.AltInternetIP.String())
	}) {
		t.Errorf("%s is not a bypass destination:\n%s", lab.AltInternetIP, strings.Join(rules, "\n"))
	}
	waitEgress(ctx, t, worker1, worker1.Addr())
	during := openSession(ctx, t, l, worker1, sshd, sshPort, "opened before the exit node")

	// The exit node is approved: the worker switches, confirmed.
	l.SetApproveExitRoutes(true)
	mustWait(ctx, t, ea, "/readyz", http.StatusOK)
	mustWait(ctx, t, wa, "/readyz", http.StatusOK)
	waitEgress(ctx, t, worker1, exit1.Addr())
	waitBody(ctx, t, wa, "/readyz?verbose", "[+]exit-commit ok")

	after := openSession(ctx, t, l, worker1, sshd, sshPort, "opened after the exit node")
	for _, s := range []*session{older, during, after} {
		if err := s.clientFirst("ls"); err != nil {
			t.Error(err)
		}
		if err := s.serverFirst("prompt$"); err != nil {
			t.Error(err)
		}
	}
	// The node's side talks first on a session that has been quiet since
	// the switch.
	if err := during.serverFirst("motd"); err != nil {
		t.Error(err)
	}

	// A bypassed destination sees the worker itself; the internet sees
	// the exit node.
	body, err := worker1.HTTPGet(ctx, lab.EchoURLFor(lab.AltInternetIP))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(body); got != worker1.Addr().String() {
		t.Errorf("the bypassed %s saw the worker as %s, want its own address %s", lab.AltInternetIP, got, worker1.Addr())
	}
	if ip, err := worker1.EgressIP(ctx); err != nil || ip != exit1.Addr() {
		t.Errorf("internet egress %v (%v), want the exit node's %s", ip, err, exit1.Addr())
	}
	if t.Failed() {
		return
	}

	// SIGTERM: a clean exit that leaves the bypass for the next agent, so
	// that the sessions survive a rolling update.
	if err := wa.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := wa.Wait(ctx); err != nil {
		t.Fatalf("worker agent after SIGTERM: %v", err)
	}
	if rules, table := bypassLeft(ctx, t, worker1); len(rules) < 3 || !table {
		t.Fatalf("after SIGTERM: nftables table %v, rules:\n%s\nwant the bypass left for the next agent", table, strings.Join(rules, "\n"))
	}
	if err := after.clientFirst("still there"); err != nil {
		t.Error(err)
	}
}

// TestBypassCommitRollback: a broken setup (the "API server" unreachable
// through the bypass) makes the worker turn the exit node off again
// within the commit timeout; with --exit-fallback=direct it reaches the
// internet directly (TestFailClosedAfterRollback: not with block), and
// /readyz says why.
func TestBypassCommitRollback(t *testing.T) {
	l := lab.NewForTest(t, lab.Options{Nodes: []string{"exit1", "worker1"}, ApproveExitRoutes: true})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	exit1, worker1 := l.Node("exit1"), l.Node("worker1")

	// Nothing answers there: no host on the LAN has that address.
	api := netip.MustParseAddrPort("198.18.0.250:443")
	const timeout = 5 * time.Second
	ea := mustStart(t, l, exit1, "exit")
	wa := mustStart(t, l, worker1, "worker", append(commitTargetFlags("api", api),
		"--exit-nodes=exit1", fmt.Sprintf("--exit-commit-timeout=%s", timeout), "--exit-fallback=direct")...)
	mustWait(ctx, t, ea, "/readyz", http.StatusOK)

	// The exit node is turned on, then rolled back.
	egressNow := func() netip.Addr {
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		defer ccancel()
		ip, _ := worker1.EgressIP(cctx)
		return ip
	}
	var on, off time.Time
	for off.IsZero() {
		switch ip, now := egressNow(), time.Now(); {
		case ip == exit1.Addr() && on.IsZero():
			on = now
			t.Logf("egress through the exit node")
		case ip == worker1.Addr() && !on.IsZero():
			off = now
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the exit node was never turned on and rolled back (on at %v)", on)
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.Logf("rolled back %s after the egress switched", off.Sub(on).Round(100*time.Millisecond))
	if d := off.Sub(on); d > timeout+3*time.Second {
		t.Errorf("rolled back %s after the switch, want within the %s commit timeout", d, timeout)
	}

	body := waitBody(ctx, t, wa, "/readyz?verbose", "[-]exit-commit failed: rolled back exit node exit1")
	if want := fmt.Sprintf("%s unreachable within %s through the bypass", api, timeout); !strings.Contains(body, want) {
		t.Errorf("/readyz?verbose does not say %q:\n%s", want, body)
	}
	if code, _, _ := wa.Get(ctx, "/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("worker /readyz = %d after a rollback, want 503", code)
	}
	waitMetric(ctx, t, wa, `ts_node_agent_check_up{check="exit-commit"}`, "0")
	// Direct again, and it stays so during the backoff.
	waitEgress(ctx, t, worker1, worker1.Addr())
	if ip := egressNow(); ip != worker1.Addr() {
		t.Errorf("egress %s during the backoff, want the worker's own %s", ip, worker1.Addr())
	}
	if rules, table := bypassLeft(ctx, t, worker1); len(rules) < 3 || !table {
		t.Errorf("the bypass must stay after a rollback: table %v, rules %q", table, rules)
	}
}
