package lab

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"tailscale.com/derp/derpserver"
	"tailscale.com/net/tsaddr"
	"tailscale.com/tailcfg"
	"tailscale.com/tstest/integration/testcontrol"
	"tailscale.com/types/key"
	"tailscale.com/types/logger"

	"github.com/ts-node-agent/ts-node-agent/internal/tstest"
)

// Fixed ports on the router address. Each lab has its own wan namespace, so
// fixed ports never collide between labs.
const (
	controlPort    = 80   // testcontrol and /generate_204 (captive-portal check)
	controlTLSPort = 443  // testcontrol over TLS: the control client's fallback
	derpPort       = 8443 // DERP over TLS (not 443: that is the control client's fallback)
	stunPort       = 3478
	echoPort       = 80 // on each internet address
)

// control is the in-process control plane: testcontrol, DERP and STUN, all
// listening in the wan namespace on the router address.
type control struct {
	srv   *testcontrol.Server
	http  *httptest.Server
	https *httptest.Server
	// caFile holds the CA of the https server's certificate, for
	// SSL_CERT_FILE.
	caFile string
	derp   *derpserver.Server
	dsrv   *httptest.Server
	stun   net.PacketConn
	url    string

	logFile io.Closer // control.log, closed last

	approve atomic.Bool
	kick    chan struct{}
	stop    context.CancelFunc
	wg      sync.WaitGroup

	mu       sync.Mutex
	approved map[key.NodePublic][]netip.Prefix // what the lab approved, per node key
}

// startControl starts control, DERP and STUN on routerIP inside wan.
func startControl(wan *NetNS, routerIP netip.Addr, authKey string, approve bool, logw io.Writer) (_ *control, err error) {
	c := &control{kick: make(chan struct{}, 1), approved: map[key.NodePublic][]netip.Prefix{}}
	c.approve.Store(approve)
	defer func() {
		if err != nil {
			c.close()
		}
	}()
	logf := logger.Logf(log.New(logw, "", log.LstdFlags|log.Lmicroseconds).Printf)

	// STUN.
	c.stun, err = wan.ListenPacket("udp4", netip.AddrPortFrom(routerIP, stunPort).String())
	if err != nil {
		return nil, fmt.Errorf("lab: STUN listener: %w", err)
	}
	go tstest.ServeSTUN(c.stun)

	// DERP over TLS (self-signed; the DERP map says InsecureForTests).
	c.derp = derpserver.New(key.NewNode(), logger.WithPrefix(logf, "derp: "))
	dln, err := wan.Listen("tcp4", netip.AddrPortFrom(routerIP, derpPort).String())
	if err != nil {
		return nil, fmt.Errorf("lab: DERP listener: %w", err)
	}
	dmux := http.NewServeMux()
	dmux.Handle("/derp", derpserver.AddWebSocketSupport(c.derp, derpserver.Handler(c.derp)))
	dmux.HandleFunc("/derp/probe", derpserver.ProbeHandler)
	dmux.HandleFunc("/derp/latency-check", derpserver.ProbeHandler)
	dmux.HandleFunc("/generate_204", derpserver.ServeNoContent)
	c.dsrv = httptest.NewUnstartedServer(dmux)
	c.dsrv.Listener.Close()
	c.dsrv.Listener = dln
	c.dsrv.Config.ErrorLog = logger.StdLogger(logger.WithPrefix(logf, "derp-http: "))
	c.dsrv.Config.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
	c.dsrv.StartTLS()

	derpMap := &tailcfg.DERPMap{
		Regions: map[int]*tailcfg.DERPRegion{
			900: {
				RegionID:   900,
				RegionCode: "lab",
				RegionName: "Lab",
				Nodes: []*tailcfg.DERPNode{{
					Name:             "900a",
					RegionID:         900,
					HostName:         routerIP.String(),
					IPv4:             routerIP.String(),
					IPv6:             "none",
					STUNPort:         stunPort,
					DERPPort:         derpPort,
					InsecureForTests: true,
					STUNTestIP:       routerIP.String(),
				}},
			},
		},
	}

	// Control.
	c.url = httpURL(routerIP, controlPort)
	c.srv = &testcontrol.Server{
		Logf:    logger.WithPrefix(logf, "control: "),
		DERPMap: derpMap,
		// RequireAuthKey is only set for StrictAuthKey labs: testcontrol
		// demands the key on every register request, including a
		// restarted tailscaled re-registering its known node key, which
		// real control servers accept without a key. Labs that restart
		// tailscaled therefore accept any key (the agent still logs in
		// with the lab's key; cmd/ts-node-agent's tests prove the key is
		// used against a key-checking control server).
		RequireAuthKey: authKey,
		// testcontrol does no per-node online tracking; without this every
		// peer would look offline. Lab failure tests cut links, and the
		// agent detects that by tailnet pings, as with a real control
		// server whose session has not timed out yet.
		AllOnline:       true,
		ExplicitBaseURL: c.url,
	}
	cln, err := wan.Listen("tcp4", netip.AddrPortFrom(routerIP, controlPort).String())
	if err != nil {
		return nil, fmt.Errorf("lab: control listener: %w", err)
	}
	cmux := http.NewServeMux()
	cmux.HandleFunc("/generate_204", derpserver.ServeNoContent) // captive-portal check to the DERP IP, port 80
	cmux.Handle("/", c.srv)
	c.http = httptest.NewUnstartedServer(cmux)
	c.http.Listener.Close()
	c.http.Listener = cln
	c.http.Config.ErrorLog = logger.StdLogger(logger.WithPrefix(logf, "control-http: "))
	c.http.Start()

	// Control over TLS on 443, as a real control server has it. tailscaled
	// falls back to it when a Noise dial follows another within two
	// minutes (controlhttp's forceNoise443), and then dials nothing else
	// for as long as it keeps retrying: without this listener a node whose
	// first control connection broke never reached control again.
	if err := c.startTLS(wan, routerIP, cmux, logf); err != nil {
		return nil, err
	}

	ctx, cancel := context.WithCancel(context.Background())
	c.stop = cancel
	c.srv.SetOnMapRequest(func(key.NodePublic) {
		// Called with testcontrol's lock held: only signal.
		select {
		case c.kick <- struct{}{}:
		default:
		}
	})
	c.wg.Add(1)
	go c.approveLoop(ctx)
	return c, nil
}

// startTLS serves mux over TLS on routerIP:443 with a certificate for
// routerIP, and writes its CA to caFile in wan's directory.
func (c *control) startTLS(wan *NetNS, routerIP netip.Addr, mux http.Handler, logf logger.Logf) error {
	pki, err := tstest.NewServingCert("ts-node-agent lab control CA", "lab control",
		[]net.IP{routerIP.AsSlice()}, nil)
	if err != nil {
		return fmt.Errorf("lab: control certificate: %w", err)
	}
	cert, err := tls.X509KeyPair(pki.CertPEM, pki.KeyPEM)
	if err != nil {
		return fmt.Errorf("lab: control certificate: %w", err)
	}
	c.caFile = filepath.Join(wan.dir, "control-ca.pem")
	if err := os.WriteFile(c.caFile, pki.CAPEM, 0o644); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	ln, err := wan.Listen("tcp4", netip.AddrPortFrom(routerIP, controlTLSPort).String())
	if err != nil {
		return fmt.Errorf("lab: control TLS listener: %w", err)
	}
	c.https = httptest.NewUnstartedServer(mux)
	c.https.Listener.Close()
	c.https.Listener = ln
	c.https.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	c.https.Config.ErrorLog = logger.StdLogger(logger.WithPrefix(logf, "control-https: "))
	// HTTP/1.1 only: the Noise upgrade is an HTTP/1.1 Upgrade.
	c.https.Config.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
	c.https.StartTLS()
	return nil
}

// approveLoop keeps the approved exit routes in line with the switch and
// with what each node advertises, like a real control server with (or
// without) an autoApprovers policy for exit nodes.
func (c *control) approveLoop(ctx context.Context) {
	defer c.wg.Done()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.kick:
			// The map request that kicked us is applied after the
			// callback returns; give it a moment.
			select {
			case <-ctx.Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
		case <-tick.C:
		}
		c.reconcile()
	}
}

// reconcile approves the advertised exit routes of every node when the
// switch is on, and withdraws the lab's approvals when it is off or the
// node stopped advertising them.
func (c *control) reconcile() {
	approve := c.approve.Load()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.srv.AllNodes() {
		var want []netip.Prefix
		if approve && n.Hostinfo.Valid() {
			for _, p := range n.Hostinfo.RoutableIPs().All() {
				if tsaddr.IsExitRoute(p) {
					want = append(want, p)
				}
			}
		}
		slices.SortFunc(want, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
		if slices.Equal(want, c.approved[n.Key]) {
			continue
		}
		c.srv.SetSubnetRoutes(n.Key, want)
		if len(want) == 0 {
			delete(c.approved, n.Key)
		} else {
			c.approved[n.Key] = want
		}
	}
}

// setApprove flips the switch and applies it at once.
func (c *control) setApprove(v bool) {
	c.approve.Store(v)
	c.reconcile()
}

func (c *control) close() error {
	if c.stop != nil {
		c.stop()
		c.wg.Wait()
	}
	if c.srv != nil {
		c.srv.SetOnMapRequest(nil)
	}
	var errs []error
	for _, s := range []*httptest.Server{c.http, c.https} {
		if s != nil {
			s.CloseClientConnections()
			s.Close()
		}
	}
	if c.dsrv != nil {
		c.dsrv.CloseClientConnections()
		c.dsrv.Close()
	}
	if c.derp != nil {
		errs = append(errs, c.derp.Close())
	}
	if c.stun != nil {
		if err := c.stun.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	if c.logFile != nil {
		c.logFile.Close()
	}
	return errors.Join(errs...)
}
