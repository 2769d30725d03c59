package lab

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestOptionsValidate(t *testing.T) {
	tests := []struct {
		name  string
		nodes []string
		want  string // substring of the error; "" means valid
	}{
		{"ok", []string{"exit1", "worker1", "w-2"}, ""},
		{"empty", nil, ""},
		{"upper", []string{"Exit"}, `node name "Exit"`},
		{"too long", []string{"abcdefghijklm"}, `node name "abcdefghijklm"`},
		{"digit first", []string{"1node"}, `node name "1node"`},
		{"wan", []string{"wan"}, `"wan" is reserved`},
		{"dup", []string{"a", "a"}, `"a" used twice`},
		{"several", []string{"A", "wan"}, `reserved`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Options{Nodes: tt.nodes}.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("Validate: got %v, want error containing %q", err, tt.want)
			}
		})
	}
}

func TestProcStartTime(t *testing.T) {
	a, err := procStartTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	b, err := procStartTime(os.Getpid())
	if err != nil || a != b || a == 0 {
		t.Fatalf("procStartTime: %d, %d, %v", a, b, err)
	}
}

func TestRequireIPLiteral(t *testing.T) {
	for _, ok := range []string{"198.19.0.1:80", "[::1]:9", ":0", "127.0.0.1:0"} {
		if err := requireIPLiteral(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"example.com:80", "localhost:80", "198.19.0.1"} {
		if err := requireIPLiteral(bad); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}

// TestTopology: every node reaches the echo service through the router and
// is seen with its own LAN address; nothing goes anywhere else; Close
// leaves nothing behind.
func TestTopology(t *testing.T) {
	var out syncBuffer
	l := NewForTest(t, Options{Nodes: []string{"n1", "n2", "n3"}, ProcessOutput: &out})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	for _, n := range l.Nodes() {
		got, err := n.EgressIP(ctx)
		if err != nil {
			t.Fatalf("%s: %v", n.Name(), err)
		}
		if got != n.Addr() {
			t.Errorf("%s: echo saw %v, want its LAN address %v", n.Name(), got, n.Addr())
		}
		// JSON flavour, and the second internet address.
		body, err := n.HTTPGet(ctx, l.EchoJSONURL())
		if err != nil {
			t.Fatal(err)
		}
		var js struct{ IP string }
		if err := json.Unmarshal([]byte(body), &js); err != nil || js.IP != n.Addr().String() {
			t.Errorf("%s: /json = %q (%v)", n.Name(), body, err)
		}
		body, err = n.HTTPGet(ctx, EchoURLFor(AltInternetIP))
		if err != nil || strings.TrimSpace(body) != n.Addr().String() {
			t.Errorf("%s: alt echo = %q, %v", n.Name(), body, err)
		}
		// The same through a process in the namespace.
		out, err := n.Exec(ctx, "ip", "-4", "-o", "addr", "show", "dev", "eth0")
		if err != nil || !strings.Contains(string(out), n.Addr().String()+"/24") {
			t.Errorf("%s: ip addr: %q, %v", n.Name(), out, err)
		}
		// Processes see the namespace's own resolv.conf, not the host's.
		out, err = n.Exec(ctx, "cat", "/etc/resolv.conf")
		if err != nil || !strings.Contains(string(out), n.NSName()) {
			t.Errorf("%s: /etc/resolv.conf = %q, %v", n.Name(), out, err)
		}
		if v, err := n.ReadSysctl("net.ipv4.ip_forward"); err != nil || v != "0" {
			t.Errorf("%s: ip_forward = %q, %v; want 0", n.Name(), v, err)
		}
	}
	if v, err := l.WAN().ReadSysctl("net.ipv4.ip_forward"); err != nil || v != "1" {
		t.Errorf("wan: ip_forward = %q, %v; want 1", v, err)
	}

	// Nodes reach each other on the LAN, and the wan side reaches a node.
	ln, err := l.Node("n2").Listen("tcp4", l.Node("n2").Addr().String()+":7000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte(c.RemoteAddr().String()))
			c.Close()
		}
	}()
	for _, from := range []*NetNS{l.Node("n1").NetNS, l.WAN()} {
		c, err := from.DialContext(ctx, "tcp4", l.Node("n2").Addr().String()+":7000")
		if err != nil {
			t.Fatalf("%s -> n2: %v", from.Name(), err)
		}
		b := make([]byte, 64)
		k, _ := c.Read(b)
		c.Close()
		t.Logf("%s -> n2 seen as %s", from.Name(), b[:k])
	}

	// The lab addresses exist only inside the lab, not in the test's own
	// namespace (no traffic is sent to check it: outside the lab it
	// would leave the machine).
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if p, ok := a.(*net.IPNet); ok && (p.IP.Equal(InternetIP.AsSlice()) || p.IP.Equal(RouterIP.AsSlice())) {
			t.Errorf("lab address %v in the root namespace", p.IP)
		}
	}

	// Cut n3's cable: its echo request fails; plug it back: works again.
	n3 := l.Node("n3")
	if err := n3.SetLinkDown(); err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithTimeout(ctx, 2*time.Second)
	if _, err := n3.EgressIP(short); err == nil {
		t.Errorf("n3 reached the echo with its link down")
	}
	cancelShort()
	if err := n3.SetLinkUp(); err != nil {
		t.Fatal(err)
	}
	if got, err := waitEgress(ctx, n3); err != nil || got != n3.Addr().String() {
		t.Errorf("n3 after link up: %v, %v", got, err)
	}

	// A background process, its log, and Close's teardown of it.
	p, err := n3.Start([]string{"sh", "-c", "echo hello from $(ip -4 -o addr show dev eth0 | awk '{print $4}'); exec sleep 600"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "process log", func() bool { return strings.Contains(p.Log(), "hello from 198.18.0.12/24") })
	waitFor(t, 5*time.Second, "process output", func() bool { return strings.Contains(out.String(), "n3/sh: hello from 198.18.0.12/24\n") })
	procs, err := n3.Processes()
	if err != nil || procs[p.Pid()] != "sleep" {
		t.Errorf("Processes = %v, %v; want pid %d sleep", procs, err, p.Pid())
	}

	id, dir := l.ID(), l.Dir()
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if !p.Exited() {
		t.Errorf("process still running after Close")
	}
	assertNothingLeft(t, id)
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("lab dir %s still there: %v", dir, err)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func waitEgress(ctx context.Context, n *Node) (string, error) {
	var last error
	for ctx.Err() == nil {
		c, cancel := context.WithTimeout(ctx, 2*time.Second)
		ip, err := n.EgressIP(c)
		cancel()
		if err == nil {
			return ip.String(), nil
		}
		last = err
		time.Sleep(100 * time.Millisecond)
	}
	return "", last
}

func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// assertNothingLeft checks that lab id left no namespace, /etc/netns
// entry, link or process.
func assertNothingLeft(t testing.TB, id string) {
	t.Helper()
	if names, _ := labNamespaces(id); len(names) > 0 {
		t.Errorf("namespaces left: %v", names)
	}
	if m, _ := filepath.Glob(filepath.Join(netnsEtcDir, Prefix+id+"-*")); len(m) > 0 {
		t.Errorf("/etc/netns entries left: %v", m)
	}
	ids, err := findLabIDs()
	if err != nil {
		t.Fatal(err)
	}
	for _, got := range ids {
		if got == id {
			if _, err := os.Stat(labDir(id)); err == nil {
				continue // KeepDir
			}
			t.Errorf("traces of lab %s left", id)
		}
	}
	// Processes: anything whose cmdline or cwd mentions the lab.
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if strings.Contains(string(cmd), Prefix+id) {
			t.Errorf("process %s left: %q", e.Name(), strings.ReplaceAll(string(cmd), "\x00", " "))
		}
	}
}
