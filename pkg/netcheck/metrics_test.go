package netcheck

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

// TestMetricsLint lints every metric of the package with series present
// (promtool's rules).
func TestMetricsLint(t *testing.T) {
	e := newEcho(t, "198.18.0.10")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	h := start(t, Options{
		EgressURLs:        []string{e.URL()},
		ExpectedEgressIPs: []netip.Addr{ipA},
		TCPTargets:        []TCPTarget{{Name: "db", Addr: ln.Addr().String()}},
	})
	h.first(CheckEgressIP)
	h.first("tcp:db")
	problems, err := testutil.GatherAndLint(h.reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
	for _, c := range h.c.m.collectors() {
		problems, err := testutil.CollectAndLint(c)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range problems {
			t.Errorf("%s: %s", p.Metric, p.Text)
		}
	}
	names := []string{
		"ts_node_agent_egress_ip_info", "ts_node_agent_egress_ip_match", "ts_node_agent_egress_ip_changes_total",
		"ts_node_agent_tcp_check_up", "ts_node_agent_tcp_check_seconds",
	}
	if n, err := testutil.GatherAndCount(h.reg, names...); err != nil || n != 5 {
		t.Errorf("%d series of %v (%v), want 5", n, names, err)
	}
}

// TestMetricsOnlyWhenConfigured: no egress metrics without URLs, no match
// without expected IPs, no TCP metrics without targets.
func TestMetricsOnlyWhenConfigured(t *testing.T) {
	for _, tt := range []struct {
		name string
		opts Options
		want []string
	}{
		{"nothing", Options{}, nil},
		{"egress", Options{EgressURLs: []string{"http://127.0.0.1:1/"}},
			[]string{"ts_node_agent_egress_ip_changes_total"}},
		{"egress expected", Options{EgressURLs: []string{"http://127.0.0.1:1/"}, ExpectedEgressIPs: []netip.Addr{ipA}},
			[]string{"ts_node_agent_egress_ip_changes_total", "ts_node_agent_egress_ip_match"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewPedanticRegistry()
			if _, err := New(snapshot.New(t0, snapshot.RoleWorker), tt.opts, WithRegisterer(reg)); err != nil {
				t.Fatal(err)
			}
			mfs, err := reg.Gather()
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, mf := range mfs {
				got = append(got, mf.GetName())
			}
			if strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Errorf("exposed %v, want %v", got, tt.want)
			}
		})
	}
}

// TestRegisterTwice: a second Checker on the same registry is an error,
// not a panic.
func TestRegisterTwice(t *testing.T) {
	reg := prometheus.NewRegistry()
	opts := Options{EgressURLs: []string{"http://127.0.0.1:1/"}}
	store := snapshot.New(t0, snapshot.RoleWorker)
	if _, err := New(store, opts, WithRegisterer(reg)); err != nil {
		t.Fatal(err)
	}
	if _, err := New(store, opts, WithRegisterer(reg)); err == nil || !strings.Contains(err.Error(), "registering netcheck metrics") {
		t.Errorf("second registration: %v", err)
	}
}

// TestRegisterAllOrNothing: when one collector cannot be registered, none
// of the others stays registered.
func TestRegisterAllOrNothing(t *testing.T) {
	reg := prometheus.NewRegistry()
	clash := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ts_node_agent_tcp_check_up", Help: "clash"}, []string{"target"})
	reg.MustRegister(clash)
	store := snapshot.New(t0, snapshot.RoleWorker)
	both := Options{EgressURLs: []string{"http://127.0.0.1:1/"}, TCPTargets: []TCPTarget{{Name: "db", Addr: "127.0.0.1:1"}}}
	if _, err := New(store, both, WithRegisterer(reg)); err == nil {
		t.Fatal("clashing registration accepted")
	}
	if _, err := New(store, Options{EgressURLs: both.EgressURLs}, WithRegisterer(reg)); err != nil {
		t.Errorf("egress metrics left registered by the failed New: %v", err)
	}
}
