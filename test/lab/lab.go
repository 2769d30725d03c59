package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"tailscale.com/tstest/integration/testcontrol"
)

// Addresses of the topology. All of them are in 198.18.0.0/15 (RFC 2544
// benchmarking space), which never leaves the lab.
var (
	// RouterIP is the wan bridge's address on the LAN: the nodes' default
	// gateway, and where control, DERP and STUN listen.
	RouterIP = netip.MustParseAddr("198.18.0.1")
	// LANPrefix is the LAN the nodes share.
	LANPrefix = netip.MustParsePrefix("198.18.0.0/24")
	// InternetIP is the "internet" address on the wan namespace's lo,
	// serving the echo service.
	InternetIP = netip.MustParseAddr("198.19.0.1")
	// AltInternetIP is a second internet address with the same echo
	// service, for destinations a test treats differently (bypasses).
	AltInternetIP = netip.MustParseAddr("198.19.0.2")
	// InternetPrefix holds the internet addresses: traffic to it that
	// reaches the router from the LAN is traffic that left a node.
	InternetPrefix = netip.MustParsePrefix("198.19.0.0/16")
)

// labSpace is every address the lab uses (with loopback): RFC 2544
// benchmarking space, never routed on a real network.
var labSpace = netip.MustParsePrefix("198.18.0.0/15")

// inLab reports whether traffic to a stays in the lab: a is in
// 198.18.0.0/15 or a loopback address.
func inLab(a netip.Addr) bool {
	a = a.Unmap()
	return labSpace.Contains(a) || a.IsLoopback()
}

// firstNodeHost is the last octet of node 0's LAN address.
const firstNodeHost = 10

// MaxNodes is the largest number of nodes a lab can have.
const MaxNodes = 200

// Options configure a lab.
type Options struct {
	// Nodes names the node namespaces, in order: node i gets the LAN
	// address 198.18.0.(10+i). Names are 1 to 12 characters of [a-z0-9-],
	// starting with a letter, unique, and not "wan".
	Nodes []string
	// ApproveExitRoutes is the initial state of the control server's
	// switch: when true, exit routes a node advertises are approved (as
	// with an autoApprovers policy); when false they stay unapproved until
	// SetApproveExitRoutes(true).
	ApproveExitRoutes bool
	// AuthKey is the auth key nodes log in with. Empty means a random one
	// (see Lab.AuthKey).
	AuthKey string
	// StrictAuthKey makes the control server reject any other key, on
	// every register request. testcontrol then also rejects a restarted
	// tailscaled's re-registration (a real control server does not), so
	// only labs that never restart tailscaled can set it.
	StrictAuthKey bool
	// Logf receives the lab's own log lines (topology, processes,
	// teardown). Nil discards them.
	Logf func(format string, args ...any)
	// ProcessOutput, if set, also receives the output of every process
	// started in a namespace, line by line, prefixed with
	// "namespace/argv0: ". The log files are written either way.
	ProcessOutput io.Writer
	// KeepDir keeps the lab directory (process logs, tailscaled state)
	// after Close. Namespaces and processes are removed regardless.
	KeepDir bool
}

var nodeNameRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,11}$`)

// Validate reports every problem with the options at once.
func (o Options) Validate() error {
	var errs []error
	if len(o.Nodes) > MaxNodes {
		errs = append(errs, fmt.Errorf("lab: %d nodes, at most %d", len(o.Nodes), MaxNodes))
	}
	seen := map[string]bool{}
	for _, n := range o.Nodes {
		switch {
		case !nodeNameRE.MatchString(n):
			errs = append(errs, fmt.Errorf("lab: node name %q: want 1-12 characters of [a-z0-9-], starting with a letter", n))
		case n == "wan":
			errs = append(errs, errors.New(`lab: node name "wan" is reserved for the router namespace`))
		case seen[n]:
			errs = append(errs, fmt.Errorf("lab: node name %q used twice", n))
		}
		seen[n] = true
	}
	return errors.Join(errs...)
}

// Lab is a running topology. Create it with New (or NewForTest), always
// Close it.
type Lab struct {
	opts    Options
	id      string
	dir     string
	ipPath  string
	authKey string
	out     *lockedWriter

	wan     *NetNS
	allNS   []*NetNS // every namespace created, wan first; guarded by mu
	nodes   []*Node
	byName  map[string]*Node
	control *control
	echo    []*http.Server

	mu       sync.Mutex
	closed   bool
	procs    []*Process
	watchSeq int             // DirectWatch tables created
	sprays   map[*spray]bool // running Sprays

	closeOnce sync.Once
	closeErr  error
}

// Node is a node namespace on the LAN: eth0 with its LAN address and a
// default route via RouterIP. It embeds the namespace's helpers (Start,
// Exec, DialContext, HTTPGet, EgressIP, sysctls, ...). It can have a pod
// (AddPod).
type Node struct {
	*NetNS
	index   int
	addr    netip.Addr
	wanLink string // the bridge port of this node's cable, in the wan namespace

	podMu sync.Mutex // serializes AddPod
	pod   *Pod       // guarded by podMu
}

// New builds a lab: it first removes labs left behind by dead processes
// (CleanupStale), then creates the namespaces, links and servers. On error
// nothing of the new lab is left. ctx bounds only the construction.
func New(ctx context.Context, opts Options) (_ *Lab, err error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("lab: needs root to create network namespaces")
	}
	ipPath, err := exec.LookPath("ip")
	if err != nil {
		return nil, fmt.Errorf("lab: iproute2's ip command is needed to run processes in namespaces: %w", err)
	}
	l := &Lab{opts: opts, ipPath: ipPath, byName: map[string]*Node{}}
	if opts.ProcessOutput != nil {
		l.out = &lockedWriter{w: opts.ProcessOutput}
	}
	if err := CleanupStale(l.logf); err != nil {
		l.logf("cleanup of stale labs: %v", err)
	}
	defer func() {
		if err != nil {
			if cerr := l.Close(); cerr != nil {
				err = errors.Join(err, cerr)
			}
		}
	}()
	if err := l.makeDir(); err != nil {
		return nil, err
	}
	l.authKey = opts.AuthKey
	if l.authKey == "" {
		l.authKey = "tskey-auth-lab" + l.id + "-" + randHex(12)
	}
	if err := l.build(ctx); err != nil {
		return nil, err
	}
	l.logf("lab %s ready: %d nodes, control %s, echo %s, dir %s", l.id, len(l.nodes), l.ControlURL(), l.EchoURL(), l.dir)
	return l, nil
}

func randHex(n int) string {
	b := make([]byte, (n+1)/2)
	rand.Read(b)
	return hex.EncodeToString(b)[:n]
}

func (l *Lab) logf(format string, args ...any) {
	if l.opts.Logf != nil {
		l.opts.Logf("lab: "+format, args...)
	}
}

func (l *Lab) outputWriter() *lockedWriter { return l.out }

// makeDir picks an unused lab id, creates its directory and records the
// owner process so that CleanupStale in other processes leaves it alone.
func (l *Lab) makeDir() error {
	for range 10 {
		id := randHex(6)
		dir := labDir(id)
		if err := os.Mkdir(dir, 0o755); err != nil {
			if errors.Is(err, os.ErrExist) {
				continue
			}
			return fmt.Errorf("lab: create lab directory: %w", err)
		}
		if names, _ := labNamespaces(id); len(names) > 0 {
			os.Remove(dir)
			continue
		}
		l.id, l.dir = id, dir
		if err := writeOwner(dir); err != nil {
			return err
		}
		return nil
	}
	return errors.New("lab: no free lab id")
}

func (l *Lab) build(ctx context.Context) error {
	wan, err := l.newNS("wan")
	if err != nil {
		return err
	}
	l.wan = wan
	hw, err := netlink.NewHandleAt(wan.handle)
	if err != nil {
		return fmt.Errorf("lab: netlink in wan: %w", err)
	}
	defer hw.Close()
	if err := setLoUp(hw); err != nil {
		return fmt.Errorf("lab: wan: %w", err)
	}
	lo, err := hw.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("lab: wan lo: %w", err)
	}
	for _, ip := range []netip.Addr{InternetIP, AltInternetIP} {
		if err := hw.AddrAdd(lo, nlAddr(netip.PrefixFrom(ip, 32))); err != nil {
			return fmt.Errorf("lab: wan: add %s to lo: %w", ip, err)
		}
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := hw.LinkAdd(br); err != nil {
		return fmt.Errorf("lab: wan: add bridge: %w", err)
	}
	if err := hw.AddrAdd(br, nlAddr(netip.PrefixFrom(RouterIP, LANPrefix.Bits()))); err != nil {
		return fmt.Errorf("lab: wan: address on bridge: %w", err)
	}
	if err := hw.LinkSetUp(br); err != nil {
		return fmt.Errorf("lab: wan: bridge up: %w", err)
	}
	if err := wan.WriteSysctl("net.ipv4.ip_forward", "1"); err != nil {
		return err
	}

	for i, name := range l.opts.Nodes {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("lab: building: %w", err)
		}
		n, err := l.addNode(hw, br, i, name)
		if err != nil {
			return err
		}
		l.nodes = append(l.nodes, n)
		l.byName[name] = n
	}

	for _, ip := range []netip.Addr{InternetIP, AltInternetIP} {
		ln, err := wan.Listen("tcp4", netip.AddrPortFrom(ip, echoPort).String())
		if err != nil {
			return fmt.Errorf("lab: echo listener on %s: %w", ip, err)
		}
		srv := &http.Server{Handler: echoHandler(), ReadHeaderTimeout: 10 * time.Second}
		l.echo = append(l.echo, srv)
		go srv.Serve(ln)
	}

	clog, err := os.OpenFile(filepath.Join(wan.dir, "control.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("lab: control log: %w", err)
	}
	requireKey := ""
	if l.opts.StrictAuthKey {
		requireKey = l.authKey
	}
	c, err := startControl(wan, RouterIP, requireKey, l.opts.ApproveExitRoutes, clog)
	if err != nil {
		clog.Close()
		return err
	}
	c.logFile = clog
	l.control = c
	return nil
}

// newNS creates the named namespace tsl-<id>-<label> and its directory.
func (l *Lab) newNS(label string) (*NetNS, error) {
	ns := &NetNS{lab: l, label: label, name: l.prefix() + label, dir: filepath.Join(l.dir, label), handle: -1}
	if err := os.MkdirAll(ns.dir, 0o755); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	errc := make(chan error, 1)
	go func() {
		// NewNamed moves the calling thread into the new namespace: do it
		// on a locked thread and move back, discarding the thread if that
		// fails.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("lab: get current netns: %w", err)
			return
		}
		defer orig.Close()
		h, err := netns.NewNamed(ns.name)
		if rerr := netns.Set(orig); rerr != nil {
			if err == nil {
				h.Close()
			}
			errc <- fmt.Errorf("lab: restore netns after creating %s: %w", ns.name, rerr)
			return // thread stays locked and is discarded
		}
		runtime.UnlockOSThread()
		if err != nil {
			errc <- fmt.Errorf("lab: create netns %s: %w", ns.name, err)
			return
		}
		ns.handle = h
		errc <- nil
	}()
	if err := <-errc; err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.allNS = append(l.allNS, ns)
	l.mu.Unlock()
	// Keep the namespace's own resolver config: `ip netns exec` bind-mounts
	// /etc/netns/NAME/resolv.conf over /etc/resolv.conf, so a process that
	// rewrites DNS settings (tailscaled with --accept-dns) cannot touch
	// the host's.
	etc := filepath.Join(netnsEtcDir, ns.name)
	err := os.MkdirAll(etc, 0o755)
	if err == nil {
		err = os.WriteFile(filepath.Join(etc, "resolv.conf"),
			[]byte("# ts-node-agent lab namespace "+ns.name+": there is no DNS server in the lab\n"), 0o644)
	}
	if err != nil {
		l.logf("no private resolv.conf for %s: %v", ns.name, err)
	}
	return ns, nil
}

// dropNS removes a namespace newNS created, with its /etc/netns entry and
// directory (for an AddPod that fails half-way).
func (l *Lab) dropNS(ns *NetNS) error {
	l.mu.Lock()
	l.allNS = slices.DeleteFunc(l.allNS, func(x *NetNS) bool { return x == ns })
	l.mu.Unlock()
	if ns.handle >= 0 {
		ns.handle.Close()
		ns.handle = -1
	}
	var errs []error
	if err := deleteNamedNS(ns.name); err != nil {
		errs = append(errs, fmt.Errorf("lab: delete netns %s: %w", ns.name, err))
	}
	if err := os.RemoveAll(filepath.Join(netnsEtcDir, ns.name)); err != nil {
		errs = append(errs, fmt.Errorf("lab: %w", err))
	}
	if err := os.RemoveAll(ns.dir); err != nil {
		errs = append(errs, fmt.Errorf("lab: %w", err))
	}
	return errors.Join(errs...)
}

func (l *Lab) addNode(hw *netlink.Handle, br *netlink.Bridge, i int, name string) (*Node, error) {
	ns, err := l.newNS(name)
	if err != nil {
		return nil, err
	}
	n := &Node{
		NetNS:   ns,
		index:   i,
		addr:    netip.AddrFrom4([4]byte{198, 18, 0, byte(firstNodeHost + i)}),
		wanLink: "v-" + name,
	}
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: n.wanLink, MasterIndex: br.Index},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(int(ns.handle)),
	}
	if err := hw.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("lab: veth for %s: %w", name, err)
	}
	wl, err := hw.LinkByName(n.wanLink)
	if err != nil {
		return nil, fmt.Errorf("lab: veth for %s: %w", name, err)
	}
	if err := hw.LinkSetMaster(wl, br); err != nil {
		return nil, fmt.Errorf("lab: attach %s to the bridge: %w", n.wanLink, err)
	}
	if err := hw.LinkSetUp(wl); err != nil {
		return nil, fmt.Errorf("lab: %s up: %w", n.wanLink, err)
	}

	hn, err := netlink.NewHandleAt(ns.handle)
	if err != nil {
		return nil, fmt.Errorf("lab: netlink in %s: %w", name, err)
	}
	defer hn.Close()
	if err := setLoUp(hn); err != nil {
		return nil, fmt.Errorf("lab: %s: %w", name, err)
	}
	eth, err := hn.LinkByName("eth0")
	if err != nil {
		return nil, fmt.Errorf("lab: %s eth0: %w", name, err)
	}
	if err := hn.AddrAdd(eth, nlAddr(netip.PrefixFrom(n.addr, LANPrefix.Bits()))); err != nil {
		return nil, fmt.Errorf("lab: %s: address: %w", name, err)
	}
	if err := hn.LinkSetUp(eth); err != nil {
		return nil, fmt.Errorf("lab: %s: eth0 up: %w", name, err)
	}
	if err := hn.RouteAdd(&netlink.Route{
		LinkIndex: eth.Attrs().Index,
		Gw:        RouterIP.AsSlice(),
	}); err != nil {
		return nil, fmt.Errorf("lab: %s: default route: %w", name, err)
	}
	// Deterministic starting point: forwarding is off until something
	// (the agent on an exit node) turns it on.
	for _, s := range []string{"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"} {
		if err := ns.WriteSysctl(s, "0"); err != nil {
			return nil, err
		}
	}
	return n, nil
}

func setLoUp(h *netlink.Handle) error {
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("lo: %w", err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("lo up: %w", err)
	}
	return nil
}

func nlAddr(p netip.Prefix) *netlink.Addr {
	return &netlink.Addr{IPNet: &net.IPNet{
		IP:   p.Addr().AsSlice(),
		Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
	}}
}

// ID is the lab's random id; every namespace is named tsl-<id>-<name>.
func (l *Lab) ID() string { return l.id }

func (l *Lab) prefix() string { return Prefix + l.id + "-" }

// Dir is the lab directory: one subdirectory per namespace with process
// logs and state, plus wan/control.log.
func (l *Lab) Dir() string { return l.dir }

// ControlURL is the control server's URL, for --login-server.
func (l *Lab) ControlURL() string { return l.control.url }

// AuthKey is the auth key the control server accepts.
func (l *Lab) AuthKey() string { return l.authKey }

// ControlServer gives tests direct access to the testcontrol server (for
// example AllNodes, SetSubnetRoutes). The approval switch keeps managing
// exit routes; do not set routes for the same node both ways.
func (l *Lab) ControlServer() *testcontrol.Server { return l.control.srv }

// SetApproveExitRoutes flips the control server's approval switch and
// applies it at once to the routes already advertised: true approves every
// advertised exit route (0.0.0.0/0, ::/0), false withdraws the approvals.
// Routes advertised later follow the switch within a fraction of a second.
func (l *Lab) SetApproveExitRoutes(approve bool) {
	l.logf("exit route approval: %v", approve)
	l.control.setApprove(approve)
}

// ApproveExitRoutes reports the switch's state.
func (l *Lab) ApproveExitRoutes() bool { return l.control.approve.Load() }

// InternetIP is the echo service's main address (see the package variable).
func (l *Lab) InternetIP() netip.Addr { return InternetIP }

// EchoURL answers GET with the caller's IP as plain text.
func (l *Lab) EchoURL() string { return EchoURLFor(InternetIP) }

// EchoJSONURL answers GET with {"ip":"<caller's IP>"}.
func (l *Lab) EchoJSONURL() string { return EchoURLFor(InternetIP) + "json" }

// DownloadURL answers GET with exactly n bytes (0 <= n <= MaxDownload;
// anything else is answered 400), with Content-Length set: see
// NetNS.Download.
func (l *Lab) DownloadURL(n int) string {
	return EchoURLFor(InternetIP) + "bytes/" + strconv.Itoa(n)
}

// EchoURLFor is the echo URL on one of the internet addresses (InternetIP
// or AltInternetIP).
func EchoURLFor(ip netip.Addr) string { return httpURL(ip, echoPort) + "/" }

// httpURL is http://IP[:PORT], without the port when it is 80.
func httpURL(ip netip.Addr, port int) string {
	if port == 80 {
		return "http://" + ip.String()
	}
	return "http://" + net.JoinHostPort(ip.String(), strconv.Itoa(port))
}

// WAN is the router namespace, for servers and clients on the "internet"
// side (e.g. a TCP target, or connections into a node's LAN address).
func (l *Lab) WAN() *NetNS { return l.wan }

// Nodes returns the nodes in the order of Options.Nodes.
func (l *Lab) Nodes() []*Node { return append([]*Node(nil), l.nodes...) }

// Node returns the named node, or nil.
func (l *Lab) Node(name string) *Node { return l.byName[name] }

// Addr is the node's LAN address: what the echo service sees when the node
// reaches the internet directly.
func (n *Node) Addr() netip.Addr { return n.addr }

// Index is the node's position in Options.Nodes.
func (n *Node) Index() int { return n.index }

// SetLinkDown unplugs the node's cable: the bridge side of its veth goes
// down, so the node keeps its address and routes but nothing gets through
// (like a dead switch port, not an admin-down interface).
func (n *Node) SetLinkDown() error { return n.setLink(false) }

// SetLinkUp plugs the cable back in.
func (n *Node) SetLinkUp() error { return n.setLink(true) }

func (n *Node) setLink(up bool) error {
	h, err := netlink.NewHandleAt(n.lab.wan.handle)
	if err != nil {
		return fmt.Errorf("lab: netlink in wan: %w", err)
	}
	defer h.Close()
	link, err := h.LinkByName(n.wanLink)
	if err != nil {
		return fmt.Errorf("lab: %s: %w", n.wanLink, err)
	}
	if up {
		err = h.LinkSetUp(link)
	} else {
		err = h.LinkSetDown(link)
	}
	if err != nil {
		return fmt.Errorf("lab: set %s's link up=%v: %w", n.label, up, err)
	}
	n.lab.logf("%s: link up=%v", n.label, up)
	return nil
}
