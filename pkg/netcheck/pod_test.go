package netcheck

import (
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

// callerEcho answers the caller's address, like a real egress echo.
func callerEcho(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		w.Write([]byte(host + "\n"))
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/"
}

// TestPodEgress: on a worker, egress-ip-pod asks the same URLs from the
// node's address inside its pod CIDR (here 127.0.0.2, the "CNI gateway"),
// so the echo sees what a pod's packets would show; it is skipped, never
// failed, while no pod CIDR is known, fails naming the pod source when the
// pods' egress IP is not an expected one, and is withdrawn for other
// roles.
func TestPodEgress(t *testing.T) {
	var mu sync.Mutex
	var sources []netip.Addr
	podDial := func(src netip.Addr) DialFunc {
		mu.Lock()
		sources = append(sources, src)
		mu.Unlock()
		return (&net.Dialer{LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}).DialContext
	}
	local := func() ([]netip.Prefix, error) {
		return []netip.Prefix{netip.MustParsePrefix("127.0.0.1/8"), netip.MustParsePrefix("198.18.9.1/24"), netip.MustParsePrefix("127.0.0.2/32")}, nil
	}
	opts := Options{
		EgressURLs:        []string{callerEcho(t)},
		ExpectedEgressIPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")},
		PodEgress:         true,
	}
	h := start(t, opts, WithPodDialer(podDial), WithLocalAddrs(local))

	c := h.waitCheck(CheckEgressIPPod, checkedAt(t0))
	if !c.Skipped || !strings.Contains(c.Reason, "no pod CIDR known") {
		t.Fatalf("egress-ip-pod without a pod CIDR = %+v, want skipped, saying so", c)
	}
	if host := h.store.Load().Checks[CheckEgressIP]; !host.OK {
		t.Fatalf("host egress check %+v, want OK from 127.0.0.1", host)
	}

	// The pod CIDR becomes known: the pods leave as 127.0.0.2, which is
	// not the expected egress IP.
	h.store.SetCluster(snapshot.Cluster{OwnPodCIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}})
	h.recheck()
	c = h.waitCheck(CheckEgressIPPod, checkedAt(h.clock.Now()))
	if c.OK || c.Skipped || !strings.Contains(c.Reason, "from pod source 127.0.0.2") || !strings.Contains(c.Reason, "127.0.0.2") {
		t.Fatalf("egress-ip-pod = %+v, want failed, naming the pod source and the observed IP", c)
	}
	if host := h.store.Load().Checks[CheckEgressIP]; !host.OK {
		t.Fatalf("host egress check %+v, want OK: only the pods' path is wrong", host)
	}
	mu.Lock()
	if len(sources) == 0 || sources[len(sources)-1] != netip.MustParseAddr("127.0.0.2") {
		t.Errorf("pod dials from %v, want 127.0.0.2", sources)
	}
	mu.Unlock()
	const want = `
# HELP ts_node_agent_egress_ip_info The egress IP the internet sees from this node (from=host) and from its pods (from=pod, workers with a pod CIDR); 1 for the current IP only, no series while unknown.
# TYPE ts_node_agent_egress_ip_info gauge
ts_node_agent_egress_ip_info{from="host",ip="127.0.0.1"} 1
ts_node_agent_egress_ip_info{from="pod",ip="127.0.0.2"} 1
`
	if err := testutil.GatherAndCompare(h.reg, strings.NewReader(want), "ts_node_agent_egress_ip_info"); err != nil {
		t.Fatal(err)
	}

	// An exit node has no pod path check.
	h.store.SetRole(snapshot.RoleExit)
	h.recheck()
	if _, ok := h.store.Load().Checks[CheckEgressIPPod]; ok {
		t.Fatal("egress-ip-pod still published for the exit role")
	}
	if n := testutil.CollectAndCount(h.reg, "ts_node_agent_egress_ip_info"); n != 1 {
		t.Fatalf("%d egress_ip_info series for an exit node, want the host's only", n)
	}
}

// TestPodEgressSourceOverride: --pod-egress-source is used as it is, and
// the pods' path passes when it leaves as an expected IP.
func TestPodEgressSourceOverride(t *testing.T) {
	opts := Options{
		EgressURLs:        []string{callerEcho(t)},
		ExpectedEgressIPs: []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.3")},
		PodEgress:         true,
		PodEgressSource:   netip.MustParseAddr("127.0.0.3"),
	}
	h := start(t, opts)
	if c := h.waitCheck(CheckEgressIPPod, checkedAt(t0)); !c.OK {
		t.Fatalf("egress-ip-pod = %+v, want OK from 127.0.0.3", c)
	}
}
