package metrics

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// CheckDurationBuckets are the buckets of ts_node_agent_check_duration_seconds,
// from a local netlink read (milliseconds) to an HTTP check that times out.
var CheckDurationBuckets = []float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}

// CheckDurations is the ts_node_agent_check_duration_seconds histogram,
// observed by the checkers each time a check runs. A nil *CheckDurations
// ignores observations, so checkers may run without metrics in tests.
type CheckDurations struct {
	vec *prometheus.HistogramVec
}

// NewCheckDurations creates the histogram and registers it on reg.
func NewCheckDurations(reg prometheus.Registerer) (*CheckDurations, error) {
	if reg == nil {
		return nil, errNilRegisterer
	}
	vec := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: Namespace,
		Name:      "check_duration_seconds",
		Help:      "Time the named check took to run.",
		Buckets:   CheckDurationBuckets,
	}, []string{"check"})
	if err := reg.Register(vec); err != nil {
		return nil, fmt.Errorf("registering the check duration histogram: %w", err)
	}
	return &CheckDurations{vec: vec}, nil
}

// Observe records that the named check took d.
func (c *CheckDurations) Observe(check string, d time.Duration) {
	if c == nil {
		return
	}
	c.vec.WithLabelValues(check).Observe(d.Seconds())
}

// Delete removes the series of a check that no longer runs (for example
// after a role change).
func (c *CheckDurations) Delete(check string) {
	if c == nil {
		return
	}
	c.vec.DeleteLabelValues(check)
}
