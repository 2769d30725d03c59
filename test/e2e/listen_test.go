package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ts-node-agent/ts-node-agent/pkg/probe"
	"github.com/ts-node-agent/ts-node-agent/test/lab"
)

// agentRSS is the resident memory of the agent process, in bytes.
func agentRSS(t *testing.T, a *lab.Agent) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", a.Pid()))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// raiseNoFile raises the test process's open file limit to n, or fails.
func raiseNoFile(t *testing.T, n uint64) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur >= n {
		return
	}
	lim.Cur = max(lim.Cur, min(n, lim.Max))
	if lim.Cur < n {
		lim.Max, lim.Cur = n, n
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatalf("raising RLIMIT_NOFILE to %d: %v", n, err)
	}
}

// slowConns opens n connections from src in ns to dst, each sending the
// start of a request header and then nothing (a slowloris). It returns
// them (closed at the end of the test) and how many the server had
// closed, or refused, by a second before its header timeout ran out for
// the first of them: those it closed at accept, not the slow ones it held.
func slowConns(t *testing.T, ns *lab.NetNS, src netip.Addr, dst netip.AddrPort, n int) (conns []net.Conn, closed int) {
	t.Helper()
	deadline := time.Now().Add(probe.ServerReadHeaderTimeout - time.Second)
	err := ns.Do(func() error {
		d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
		for range n {
			c, err := d.Dial("tcp4", dst.String())
			if err != nil {
				closed++
				continue
			}
			c.Write([]byte("GET /livez HTTP/1.1\r\nHost: agent\r\nX-Slow: "))
			conns = append(conns, c)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	// The server closes what it refuses at accept, as it gets to it: on a
	// busy machine the last of 2000 can take more than a second.
	open := conns
	for {
		var still []net.Conn
		for _, c := range open {
			c.SetReadDeadline(time.Now().Add(time.Millisecond))
			if _, err := c.Read(make([]byte, 1)); err != nil && !isTimeout(err) {
				closed++
			} else {
				still = append(still, c)
			}
		}
		open = still
		if len(open) == 0 || time.Now().After(deadline) {
			return conns, closed
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// livezFrom asks /livez of the agent at addr from inside ns, with a
// client bound to src.
func livezFrom(ctx context.Context, ns *lab.NetNS, src netip.Addr, addr netip.AddrPort) (int, error) {
	var code int
	err := ns.Do(func() error {
		d := net.Dialer{Timeout: 3 * time.Second, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
		c, err := d.DialContext(ctx, "tcp4", addr.String())
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Write([]byte("GET /livez HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")); err != nil {
			return err
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return err
		}
		resp.Body.Close()
		code = resp.StatusCode
		return nil
	})
	return code, err
}

// TestListenIsNotAnInternetService: the agent's port on the exit node's
// public address answers the node itself and --allow-from (here the LAN)
// and refuses an internet address at accept; a slowloris flood from the
// internet, and one from an allowed address, keep the agent's memory
// bounded and its local /livez answering.
func TestListenIsNotAnInternetService(t *testing.T) {
	l := lab.NewForTest(t, lab.Options{Nodes: []string{"exit1", "worker1"}, ApproveExitRoutes: true})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	exit1, worker1 := l.Node("exit1"), l.Node("worker1")
	ea := mustStart(t, l, exit1, "exit", fmt.Sprintf("--listen=:%d", lab.AgentPort), "--allow-from="+lab.LANPrefix.String())
	mustWait(ctx, t, ea, "/readyz", http.StatusOK)
	public := netip.AddrPortFrom(exit1.Addr(), lab.AgentPort)

	if code, err := livezFrom(ctx, worker1.NetNS, worker1.Addr(), public); err != nil || code != http.StatusOK {
		t.Fatalf("/livez from the LAN (--allow-from): %d, %v; want 200", code, err)
	}
	if code, err := livezFrom(ctx, l.WAN(), lab.InternetIP, public); err == nil {
		t.Fatalf("/livez from the internet address %s answered %d; want the connection refused", lab.InternetIP, code)
	}

	raiseNoFile(t, 8192)
	before := agentRSS(t, ea)
	_, closed := slowConns(t, l.WAN(), lab.InternetIP, public, 2000)
	if closed != 2000 {
		t.Errorf("%d of 2000 connections from the internet refused, want all", closed)
	}
	// From the LAN (allowed): at most the cap is held open, the rest are
	// closed at accept.
	_, closedLAN := slowConns(t, worker1.NetNS, worker1.Addr(), public, 2000)
	t.Logf("slowloris from the LAN: %d of 2000 connections closed at once", closedLAN)
	if closedLAN < 2000-300 {
		t.Errorf("only %d of 2000 slow connections from the LAN closed: the cap does not hold", closedLAN)
	}
	if code, _, err := ea.Get(ctx, "/livez"); err != nil || code != http.StatusOK {
		t.Errorf("local /livez during the floods: %d, %v; want 200", code, err)
	}
	after := agentRSS(t, ea)
	t.Logf("agent RSS %d MiB -> %d MiB during the floods", before>>20, after>>20)
	if grew := after - before; grew > 64<<20 {
		t.Errorf("agent RSS grew by %d MiB under the floods, want under 64 MiB", grew>>20)
	}
}
