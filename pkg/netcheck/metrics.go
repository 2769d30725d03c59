package netcheck

import (
	"fmt"
	"net/netip"

	"github.com/prometheus/client_golang/prometheus"
)

const namespace = "ts_node_agent"

// checkMetrics are the Checker's own collectors. Egress metrics exist only
// with egress URLs, egress_ip_match only with expected IPs, TCP metrics
// only with TCP targets; the missing ones are nil.
type checkMetrics struct {
	egressInfo    *prometheus.GaugeVec
	egressMatch   prometheus.Gauge
	egressChanges prometheus.Counter
	tcpUp         *prometheus.GaugeVec
	tcpSeconds    *prometheus.GaugeVec
}

func newCheckMetrics(o Options) *checkMetrics {
	m := &checkMetrics{}
	if len(o.EgressURLs) > 0 {
		m.egressInfo = prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace,
			Name:      "egress_ip_info",
			Help:      "The egress IP the internet sees from this node (from=host) and from its pods (from=pod, workers with a pod CIDR); 1 for the current IP only, no series while unknown.",
		}, []string{"ip", "from"})
		m.egressChanges = prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "egress_ip_changes_total",
			Help:      "Times the observed egress IP changed (the first observation is not a change).",
		})
		if len(o.ExpectedEgressIPs) > 0 {
			m.egressMatch = prometheus.NewGauge(prometheus.GaugeOpts{
				Namespace: namespace,
				Name:      "egress_ip_match",
				Help:      "1 when the last egress check observed one of the expected egress IPs, else 0.",
			})
		}
	}
	if len(o.TCPTargets) > 0 {
		m.tcpUp = prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace,
			Name:      "tcp_check_up",
			Help:      "1 when the last TCP connect to the target succeeded, else 0.",
		}, []string{"target"})
		m.tcpSeconds = prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace,
			Name:      "tcp_check_seconds",
			Help:      "Time the last successful TCP connect to the target took, name resolution included.",
		}, []string{"target"})
	}
	return m
}

// register registers every collector on reg, or none.
func (m *checkMetrics) register(reg prometheus.Registerer) error {
	cs := m.collectors()
	for i, c := range cs {
		if err := reg.Register(c); err != nil {
			for _, done := range cs[:i] {
				reg.Unregister(done)
			}
			return fmt.Errorf("registering netcheck metrics: %w", err)
		}
	}
	return nil
}

// collectors returns the collectors that exist.
func (m *checkMetrics) collectors() []prometheus.Collector {
	var cs []prometheus.Collector
	if m.egressInfo != nil {
		cs = append(cs, m.egressInfo, m.egressChanges)
	}
	if m.egressMatch != nil {
		cs = append(cs, m.egressMatch)
	}
	if m.tcpUp != nil {
		cs = append(cs, m.tcpUp, m.tcpSeconds)
	}
	return cs
}

// setEgressIP moves egress_ip_info from old to cur (either may be invalid:
// unknown). The old series is deleted before the new one is set, so a
// scrape never sees two current IPs.
func (m *checkMetrics) setEgressIP(from string, old, cur netip.Addr) {
	if m.egressInfo == nil {
		return
	}
	if old.IsValid() && old != cur {
		m.egressInfo.DeleteLabelValues(old.String(), from)
	}
	if cur.IsValid() {
		m.egressInfo.WithLabelValues(cur.String(), from).Set(1)
	}
}

// Values of egress_ip_info's "from" label.
const (
	fromHost = "host"
	fromPod  = "pod"
)

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
