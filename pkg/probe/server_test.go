package probe

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	testingclock "k8s.io/utils/clock/testing"

	"github.com/ts-node-agent/ts-node-agent/internal/testenv"
	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

// In these tests 127.0.0.1 is the node and every other address, 127.0.0.2
// included, is remote: both are loopback, so the tests need no network.
var (
	localIP  = netip.MustParseAddr("127.0.0.1")
	remoteIP = netip.MustParseAddr("127.0.0.2")
)

func onlyLocalhost(a netip.Addr) bool { return a == localIP }

// startServer serves the probes of a healthy node with NewServer on a
// LimitListener of max connections, until the test ends. It returns the
// address to dial.
func startServer(t *testing.T, max int, options ...Option) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	h := Handler(newStore(healthy(snapshot.RoleNone)), DefaultOptions(), WithClock(testingclock.NewFakePassiveClock(now)))
	srv := NewServer(h, WithLogger(log))
	done := make(chan error, 1)
	go func() {
		done <- srv.Serve(LimitListener(ln, max, onlyLocalhost, append([]Option{WithLogger(log)}, options...)...))
	}()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve = %v, want ErrServerClosed", err)
		}
		if t.Failed() && logs.String() != "" {
			t.Logf("server logs:\n%s", logs)
		}
	})
	return ln.Addr().String()
}

// dialFrom connects to addr from the source address from.
func dialFrom(t *testing.T, from netip.Addr, addr string) net.Conn {
	t.Helper()
	c, err := tryDial(from, addr)
	if err != nil {
		t.Fatalf("dialing %s from %s: %v", addr, from, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// tryDial connects to addr from the source address from. A connection
// closed at accept may fail here already, with a reset.
func tryDial(from netip.Addr, addr string) (net.Conn, error) {
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(from, 0)), Timeout: 5 * time.Second}
	return d.Dial("tcp", addr)
}

// closedAtAccept checks that c (or its dial error) shows a connection the
// server closed without an HTTP answer.
func closedAtAccept(t *testing.T, what string, c net.Conn, dialErr error) {
	t.Helper()
	if dialErr != nil {
		if !errors.Is(dialErr, syscall.ECONNRESET) {
			t.Errorf("%s: dial: %v, want a reset or a closed connection", what, dialErr)
		}
		return
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	_, _ = io.WriteString(c, "GET /livez HTTP/1.1\r\nHost: probe\r\n\r\n") // may already fail: closed
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	var ne net.Error
	switch {
	case n > 0:
		t.Errorf("%s: got an answer: %q", what, buf[:n])
	case errors.As(err, &ne) && ne.Timeout():
		t.Errorf("%s: still open after 5s", what)
	case err == nil:
		t.Errorf("%s: Read = 0, nil", what)
	}
}

// get sends one keep-alive GET of path on c and returns the status code.
func get(c net.Conn, path string, header ...string) (int, error) {
	if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return 0, err
	}
	req := "GET " + path + " HTTP/1.1\r\nHost: probe\r\n" + strings.Join(header, "") + "\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, err
}

// TestLimitListener: with a cap of 2, a third remote connection is closed
// at accept without an HTTP answer, a local one is still served, and a
// remote one is served again once a slot is free.
func TestLimitListener(t *testing.T) {
	const max = 2
	addr := startServer(t, max)

	var held []net.Conn
	for i := range max {
		c := dialFrom(t, remoteIP, addr)
		if code, err := get(c, "/livez"); err != nil || code != http.StatusOK {
			t.Fatalf("remote connection %d under the cap: %d, %v; want 200", i+1, code, err)
		}
		held = append(held, c) // idle keep-alive: still counted
	}

	over, err := tryDial(remoteIP, addr)
	closedAtAccept(t, "remote connection over the cap", over, err)

	for i := range 3 { // locals are never counted
		c := dialFrom(t, localIP, addr)
		if code, err := get(c, "/livez"); err != nil || code != http.StatusOK {
			t.Fatalf("local connection %d over the cap: %d, %v; want 200", i+1, code, err)
		}
	}

	held[0].Close()
	waitFor(t, "a remote connection served after one closed", func() bool {
		c, err := tryDial(remoteIP, addr)
		if err != nil {
			return false
		}
		if code, err := get(c, "/livez"); err != nil || code != http.StatusOK {
			c.Close() // closed at accept: it held no slot
			return false
		}
		t.Cleanup(func() { c.Close() }) // holds the free slot
		return true
	})
	// The cap still holds: held[1] and the new one.
	over, err = tryDial(remoteIP, addr)
	closedAtAccept(t, "remote connection over the cap after a release", over, err)
}

// TestAllowFrom: a non-local peer outside --allow-from and the cluster is
// closed at accept, before any HTTP work; one inside either is served, and
// the cluster's addresses follow the snapshot.
func TestAllowFrom(t *testing.T) {
	store := snapshot.New(now, snapshot.RoleWorker)
	outsider, listed, node, pod := netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3"),
		netip.MustParseAddr("127.0.0.4"), netip.MustParseAddr("127.0.1.9")
	allow := AllowFrom(store, []netip.Prefix{netip.PrefixFrom(listed, 32)})
	addr := startServer(t, 16, WithAllow(allow))

	c, err := tryDial(outsider, addr)
	closedAtAccept(t, "a peer outside --allow-from", c, err)
	for _, from := range []netip.Addr{localIP, listed} {
		c := dialFrom(t, from, addr)
		if code, err := get(c, "/livez"); err != nil || code != http.StatusOK {
			t.Errorf("from %s: %d, %v; want 200", from, code, err)
		}
	}
	for _, from := range []netip.Addr{node, pod} {
		c, err := tryDial(from, addr)
		closedAtAccept(t, "a cluster address before the cluster is known", c, err)
	}

	store.SetCluster(snapshot.Cluster{NodeAddrs: []netip.Addr{node}, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.1.0/24")}})
	for _, from := range []netip.Addr{node, pod} {
		c := dialFrom(t, from, addr)
		if code, err := get(c, "/livez"); err != nil || code != http.StatusOK {
			t.Errorf("from the cluster's %s: %d, %v; want 200", from, code, err)
		}
	}
	if allow(netip.MustParseAddr("::ffff:127.0.0.3")) != true {
		t.Error("an IPv4-mapped address of --allow-from is refused")
	}
}

// TestServerRefusesLargeHeaders: a request header past the bound gets 431,
// from a remote (counted) connection as from a local one.
func TestServerRefusesLargeHeaders(t *testing.T) {
	addr := startServer(t, 4)
	big := "X-Pad: " + strings.Repeat("a", 32<<10) + "\r\n"
	for _, from := range []netip.Addr{remoteIP, localIP} {
		c := dialFrom(t, from, addr)
		code, err := get(c, "/livez", big)
		if err != nil || code != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("32 KiB header from %s: %d, %v; want 431", from, code, err)
		}
		c = dialFrom(t, from, addr)
		if code, err := get(c, "/livez", "X-Pad: "+strings.Repeat("a", 8<<10)+"\r\n"); err != nil || code != http.StatusOK {
			t.Errorf("8 KiB header from %s: %d, %v; want 200", from, code, err)
		}
	}
}

func TestNewServerBounds(t *testing.T) {
	srv := NewServer(http.NotFoundHandler())
	tests := []struct {
		name string
		got  time.Duration
		max  time.Duration
	}{
		{"ReadHeaderTimeout", srv.ReadHeaderTimeout, 10 * time.Second},
		{"ReadTimeout", srv.ReadTimeout, 10 * time.Second},
		{"WriteTimeout", srv.WriteTimeout, 30 * time.Second},
		{"IdleTimeout", srv.IdleTimeout, 30 * time.Second},
	}
	for _, tt := range tests {
		if tt.got <= 0 || tt.got > tt.max {
			t.Errorf("%s = %v, want in (0, %v]", tt.name, tt.got, tt.max)
		}
	}
	if srv.MaxHeaderBytes <= 0 || srv.MaxHeaderBytes > 16<<10 {
		t.Errorf("MaxHeaderBytes = %d, want in (0, 16 KiB]", srv.MaxHeaderBytes)
	}
	if srv.ErrorLog == nil {
		t.Error("ErrorLog is nil: the server's errors would bypass slog")
	}
}

// TestServerFlood: 4000 remote connections that each send a large request
// header slowly cost the process less than 64 MiB (of RSS, and of Go heap
// and stacks; the latter alone under the race detector, whose shadow
// memory counts in the RSS) and a bounded number of
// goroutines, and a local /livez keeps answering meanwhile (the numbers a
// review measured without the bounds: 300 such connections took the RSS to
// 744 MB, over the DaemonSet's 512Mi limit).
func TestServerFlood(t *testing.T) {
	const (
		conns     = 4000
		chunk     = 4 << 10
		rounds    = 6 // 24 KiB of header per connection
		maxGrowth = 64 << 20
	)
	raiseNoFile(t, 2*conns+512)
	addr := startServer(t, DefaultMaxConnections)

	runtime.GC()
	debug.FreeOSMemory()
	rss0, heap0 := vmRSS(t), heapAndStacks()
	goroutines0 := runtime.NumGoroutine()
	start := time.Now()

	// One goroutine drives every connection (a goroutine each would cost
	// this process more than the bound it measures).
	open := make([]net.Conn, 0, conns)
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(remoteIP, 0)), Timeout: 5 * time.Second}
	refused := 0
	for i := range conns {
		c, err := d.Dial("tcp", addr)
		switch {
		case errors.Is(err, syscall.ECONNRESET):
			refused++ // closed at accept, before connect returned
			continue
		case err != nil:
			t.Fatalf("dial %d: %v", i, err)
		}
		open = append(open, c)
		if _, err := io.WriteString(c, "GET /livez HTTP/1.1\r\nHost: flood\r\nX-Pad: "); err != nil {
			c.Close()
			open[len(open)-1] = nil
		}
	}
	defer func() {
		for _, c := range open {
			if c != nil {
				c.Close()
			}
		}
	}()

	var peakRSS, peakHeap uint64
	sample := func() {
		peakRSS, peakHeap = max(peakRSS, vmRSS(t)), max(peakHeap, heapAndStacks())
	}
	pad := bytes.Repeat([]byte("a"), chunk)
	tick := time.NewTicker(50 * time.Millisecond) // slowly: one chunk per round
	defer tick.Stop()
	alive := 0
	for range rounds {
		<-tick.C
		alive = 0
		for i, c := range open {
			if c == nil {
				continue
			}
			_ = c.SetWriteDeadline(time.Now().Add(time.Second))
			if _, err := c.Write(pad); err != nil {
				c.Close()
				open[i] = nil
				continue
			}
			alive++
		}
		sample()
	}

	// A local probe answers during the flood, on a fresh connection.
	local := dialFrom(t, localIP, addr)
	if code, err := get(local, "/livez"); err != nil || code != http.StatusOK {
		t.Errorf("local /livez during the flood: %d, %v; want 200", code, err)
	}
	sample()
	goroutines := runtime.NumGoroutine() - goroutines0
	elapsed := time.Since(start)

	growth, heapGrowth := int64(peakRSS)-int64(rss0), int64(peakHeap)-int64(heap0)
	t.Logf("%d connections (%d reset at connect), %d still writing after %d rounds, in %v: RSS %d -> %d MiB (+%d MiB), heap+stacks +%d MiB, goroutines +%d",
		conns, refused, alive, rounds, elapsed.Round(time.Millisecond), rss0>>20, peakRSS>>20, growth>>20,
		heapGrowth>>20, goroutines)
	if growth > maxGrowth && !raceEnabled {
		t.Errorf("RSS grew by %d MiB during the flood, want under %d MiB", growth>>20, maxGrowth>>20)
	}
	if heapGrowth > maxGrowth {
		t.Errorf("heap and stacks grew by %d MiB during the flood, want under %d MiB", heapGrowth>>20, maxGrowth>>20)
	}
	if limit := DefaultMaxConnections + 64; goroutines > limit {
		t.Errorf("%d more goroutines during the flood, want at most %d (the cap and some slack)", goroutines, limit)
	}
	if elapsed > 20*time.Second {
		t.Errorf("the flood took %v", elapsed)
	}
}

// raiseNoFile makes room for n open files, or skips the test (fails it in CI).
func raiseNoFile(t *testing.T, n uint64) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		testenv.SkipOrFail(t, "cannot read RLIMIT_NOFILE: %v", err)
	}
	if lim.Cur >= n {
		return
	}
	old := lim
	lim.Cur = n
	if lim.Max < n {
		lim.Max = n // only root may raise the hard limit
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		testenv.SkipOrFail(t, "the flood needs %d open files, RLIMIT_NOFILE is %d (hard %d) and cannot be raised: %v", n, old.Cur, old.Max, err)
	}
	t.Cleanup(func() { _ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old) })
}

// vmRSS is the process's resident set size in bytes (/proc/self/status).
func vmRSS(t *testing.T) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		testenv.SkipOrFail(t, "no /proc/self/status to measure the RSS: %v", err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("parsing %q: %v", line, err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}

func heapAndStacks() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse + ms.StackInuse
}

func TestLocalAddrs(t *testing.T) {
	node := []net.Addr{
		&net.IPNet{IP: net.ParseIP("10.0.0.5"), Mask: net.CIDRMask(24, 32)},
		&net.IPNet{IP: net.ParseIP("fd00::5"), Mask: net.CIDRMask(64, 128)},
		&net.IPAddr{IP: net.ParseIP("100.64.0.1")},
	}
	tests := []struct {
		addr string
		want bool
	}{
		{"127.0.0.1", true},
		{"127.0.0.2", true}, // all of 127/8 is loopback
		{"::1", true},
		{"10.0.0.5", true},
		{"::ffff:10.0.0.5", true}, // an IPv4 peer on a dual-stack listener
		{"fd00::5", true},
		{"100.64.0.1", true},
		{"10.0.0.6", false},
		{"fd00::6", false},
		{"192.0.2.1", false},
	}
	clk := testingclock.NewFakePassiveClock(now)
	l := NewLocalAddrs(WithClock(clk), WithInterfaceAddrs(func() ([]net.Addr, error) { return node, nil }))
	for _, tt := range tests {
		if got := l.IsLocal(netip.MustParseAddr(tt.addr)); got != tt.want {
			t.Errorf("IsLocal(%s) = %v, want %v", tt.addr, got, tt.want)
		}
	}
	if l.IsLocal(netip.Addr{}) {
		t.Error("IsLocal(invalid) = true")
	}
}

// TestLocalAddrsRefresh: the interface addresses are read at most every
// LocalAddrsRefresh, and a failed read keeps the last ones.
func TestLocalAddrsRefresh(t *testing.T) {
	var (
		mu    sync.Mutex
		reads int
		addrs = []net.Addr{&net.IPNet{IP: net.ParseIP("10.0.0.5"), Mask: net.CIDRMask(24, 32)}}
		err   error
	)
	set := func(a []net.Addr, e error) { mu.Lock(); addrs, err = a, e; mu.Unlock() }
	clk := testingclock.NewFakePassiveClock(now)
	l := NewLocalAddrs(WithClock(clk), WithLogger(slog.New(slog.DiscardHandler)), WithInterfaceAddrs(func() ([]net.Addr, error) {
		mu.Lock()
		defer mu.Unlock()
		reads++
		return addrs, err
	}))
	node, moved := netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("10.0.0.7")
	readCount := func() int { mu.Lock(); defer mu.Unlock(); return reads }

	steps := []struct {
		name      string
		do        func()
		addr      netip.Addr
		want      bool
		wantReads int
	}{
		{"first use reads", nil, node, true, 1},
		{"loopback needs no read", nil, localIP, true, 1},
		{"within the interval: no read", func() {
			set([]net.Addr{&net.IPNet{IP: net.ParseIP("10.0.0.7"), Mask: net.CIDRMask(24, 32)}}, nil)
			clk.SetTime(now.Add(LocalAddrsRefresh - time.Millisecond))
		}, moved, false, 1},
		{"after the interval: read again", func() { clk.SetTime(now.Add(LocalAddrsRefresh)) }, moved, true, 2},
		{"the old address is gone", nil, node, false, 2},
		{"a failed read keeps the last addresses", func() {
			set(nil, errors.New("netlink: no buffer space"))
			clk.SetTime(now.Add(2 * LocalAddrsRefresh))
		}, moved, true, 3},
		{"and is not retried before the interval", func() { clk.SetTime(now.Add(3*LocalAddrsRefresh - time.Millisecond)) }, moved, true, 3},
	}
	for _, s := range steps {
		if s.do != nil {
			s.do()
		}
		if got := l.IsLocal(s.addr); got != s.want {
			t.Errorf("%s: IsLocal(%s) = %v, want %v", s.name, s.addr, got, s.want)
		}
		if got := readCount(); got != s.wantReads {
			t.Errorf("%s: %d reads, want %d", s.name, got, s.wantReads)
		}
	}
}
