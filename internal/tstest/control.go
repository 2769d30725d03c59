// Package tstest runs real Tailscale components for tests: an in-process
// control server (tailscale.com/tstest/integration/testcontrol) with its own
// DERP and STUN servers, and real tailscaled processes in userspace
// networking mode, each with its own state directory and LocalAPI socket.
// Nothing talks to the internet: tailscaled gets the local DERP map from
// the control server and panics if it ever reaches Tailscale's.
//
// Control does not depend on package testing, so the lab and the demo can
// run it outside tests; StartControl and NewTailscaled are the test
// conveniences that clean up after themselves.
//
// A test of the whole agent runs the agent instead of NewTailscaled:
//
//	c := tstest.StartControl(t, nil)
//	// agent flags: --tailscaled=tstest.TailscaledPath(t)
//	//   --state-dir=t.TempDir() --socket=tstest.SocketPath(t)
//	//   --tun=userspace-networking --login-server=c.URL
//	//   --tailscaled-arg=--port=0 --tailscaled-arg=--no-logs-no-support
//	// agent environment: os.Environ() + c.TailscaledEnv() + TS_AUTHKEY
//	// (tailscaled inherits it).
//
// testcontrol's behaviour worth knowing:
//   - RequireAuthKey rejects every registration without that key,
//     including the re-registration tailscaled does with its existing node
//     key after a restart (real control servers accept it). Leave it empty
//     in tests that restart tailscaled. Count logins at the LocalAPI, or
//     with Control.NumNodes: a login from scratch (StartLoginInteractive)
//     makes a new node key, hence a new node and address; a re-login with
//     the existing node key (Start with a key on a node that has one) does
//     not.
//   - Advertised routes are never approved by themselves: call
//     ApproveExitRoutes (SetSubnetRoutes) to approve them; they then appear
//     in the node's AllowedIPs, and stay there even if the node stops
//     advertising them (real control servers grant only advertised
//     routes). Revoke with ApproveRoutes(node).
//   - It does not track whether nodes are online; NewControl sets
//     AllOnline so every peer is reported online.
//   - A disco ping sent right after login can hang: give each Ping its
//     own short timeout and retry, as `tailscale ping` does.
package tstest

import (
	"cmp"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"

	"tailscale.com/derp/derpserver"
	"tailscale.com/net/stun"
	"tailscale.com/net/tsaddr"
	"tailscale.com/tailcfg"
	"tailscale.com/tstest/integration/testcontrol"
	"tailscale.com/types/key"
	"tailscale.com/types/logger"
)

// ControlConfig configures NewControl.
type ControlConfig struct {
	// Addr is the IP address the control, DERP and STUN servers listen on;
	// default 127.0.0.1.
	Addr string
	// Logf receives the control server's logs; nil discards them.
	Logf logger.Logf
	// Configure, if set, adjusts the control server before it starts
	// (RequireAuthKey, RequireMachineAuth, ...). The defaults are
	// AllNodesSameUser and AllOnline (testcontrol does not track online
	// state by itself; without AllOnline every peer looks offline).
	Configure func(*testcontrol.Server)
}

// Control is a running control server with DERP and STUN.
type Control struct {
	// Server is the testcontrol server: use its methods to inspect nodes
	// (AllNodes, NumNodes, Node) and to change the tailnet.
	Server *testcontrol.Server
	// URL is the control URL to log in to (--login-server).
	URL string
	// DERPMap is the map the control server hands out.
	DERPMap *tailcfg.DERPMap

	closers []func()
}

// NewControl starts a control server with its DERP and STUN servers. Close
// stops them.
func NewControl(cfg ControlConfig) (_ *Control, err error) {
	addr := cmp.Or(cfg.Addr, "127.0.0.1")
	logf := cfg.Logf
	if logf == nil {
		logf = logger.Discard
	}
	c := &Control{}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	if c.DERPMap, err = c.startDERPAndSTUN(addr); err != nil {
		return nil, err
	}
	s := &testcontrol.Server{
		Logf:             logger.WithPrefix(logf, "testcontrol: "),
		DERPMap:          c.DERPMap,
		AllNodesSameUser: true,
		AllOnline:        true,
	}
	if cfg.Configure != nil {
		cfg.Configure(s)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(addr, "0"))
	if err != nil {
		return nil, fmt.Errorf("control listener: %w", err)
	}
	srv := httptest.NewUnstartedServer(s)
	srv.Listener.Close()
	srv.Listener = ln
	s.HTTPTestServer = srv
	srv.Start()
	c.closers = append(c.closers, srv.Close)
	c.Server = s
	c.URL = srv.URL
	return c, nil
}

// startDERPAndSTUN is tstest/integration's RunDERPAndSTUN without package
// testing.
func (c *Control) startDERPAndSTUN(addr string) (*tailcfg.DERPMap, error) {
	d := derpserver.New(key.NewNode(), logger.Discard)
	c.closers = append(c.closers, func() { d.Close() })
	ln, err := net.Listen("tcp", net.JoinHostPort(addr, "0"))
	if err != nil {
		return nil, fmt.Errorf("DERP listener: %w", err)
	}
	httpsrv := httptest.NewUnstartedServer(derpserver.Handler(d))
	httpsrv.Listener.Close()
	httpsrv.Listener = ln
	httpsrv.Config.ErrorLog = logger.StdLogger(logger.Discard)
	httpsrv.Config.TLSNextProto = make(map[string]func(*http.Server, *tls.Conn, http.Handler))
	httpsrv.StartTLS()
	c.closers = append(c.closers, func() {
		httpsrv.CloseClientConnections()
		httpsrv.Close()
	})

	pc, err := net.ListenPacket("udp4", net.JoinHostPort(addr, "0"))
	if err != nil {
		return nil, fmt.Errorf("STUN listener: %w", err)
	}
	done := make(chan struct{})
	go func() { defer close(done); ServeSTUN(pc) }()
	c.closers = append(c.closers, func() {
		pc.Close()
		<-done
	})

	return &tailcfg.DERPMap{
		Regions: map[int]*tailcfg.DERPRegion{
			1: {
				RegionID:   1,
				RegionCode: "test",
				Nodes: []*tailcfg.DERPNode{{
					Name:             "t1",
					RegionID:         1,
					HostName:         addr,
					IPv4:             addr,
					IPv6:             "none",
					STUNPort:         pc.LocalAddr().(*net.UDPAddr).Port,
					DERPPort:         ln.Addr().(*net.TCPAddr).Port,
					InsecureForTests: true,
					STUNTestIP:       addr,
				}},
			},
		},
	}, nil
}

// ServeSTUN answers STUN binding requests on pc until pc is closed (the
// lab's STUN server uses it too).
func ServeSTUN(pc net.PacketConn) {
	var buf [64 << 10]byte
	for {
		n, src, err := pc.ReadFrom(buf[:])
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			return // closed
		}
		pkt := buf[:n]
		if !stun.Is(pkt) {
			continue
		}
		txid, err := stun.ParseBindingRequest(pkt)
		if err != nil {
			continue
		}
		ua, ok := src.(*net.UDPAddr)
		if !ok {
			continue
		}
		ap := ua.AddrPort()
		pc.WriteTo(stun.Response(txid, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())), src)
	}
}

// Close stops the servers.
func (c *Control) Close() {
	for i := len(c.closers) - 1; i >= 0; i-- {
		c.closers[i]()
	}
	c.closers = nil
}

// ApproveExitRoutes makes control approve 0.0.0.0/0 and ::/0 for the node
// (as an admin or an autoApprovers rule would).
func (c *Control) ApproveExitRoutes(node key.NodePublic) {
	c.ApproveRoutes(node, tsaddr.AllIPv4(), tsaddr.AllIPv6())
}

// ApproveRoutes sets the routes control approves for the node (replacing
// earlier approvals; none revokes them).
func (c *Control) ApproveRoutes(node key.NodePublic, routes ...netip.Prefix) {
	c.Server.SetSubnetRoutes(node, routes)
}

// NumNodes returns how many nodes registered. A login with a fresh node
// key registers a new node, so a restart that keeps its state and does not
// log in again leaves this unchanged.
func (c *Control) NumNodes() int { return c.Server.NumNodes() }

// StartControl starts a control server on 127.0.0.1 for the test and stops
// it when the test ends. configure, if set, adjusts the server before it
// starts. Its logs go to the test log when it fails (or always with
// TS_NODE_AGENT_TEST_VERBOSE=1).
func StartControl(t testing.TB, configure func(*testcontrol.Server)) *Control {
	t.Helper()
	lg := newTestLog(t, "control")
	c, err := NewControl(ControlConfig{Logf: lg.logf, Configure: configure})
	if err != nil {
		t.Fatalf("starting control server: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}
