package metrics

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Defaults of the tailscaled user metrics passthrough.
const (
	DefaultUserMetricsInterval = 15 * time.Second
	maxFetchTimeout            = 10 * time.Second
	// MaxRequestsInFlight bounds concurrent /metrics scrapes.
	MaxRequestsInFlight = 10
)

// UserMetrics caches tailscaled's user metrics (LocalAPI
// /localapi/v0/usermetrics, the tailscaled_* families) for /metrics. Run
// fetches them in the background; a scrape only reads the last good copy,
// which is kept when a fetch fails (tailscaled restarting, a slow LocalAPI).
//
// UserMetrics is a prometheus.Gatherer of the cached families. Families
// whose name starts with "ts_node_agent_" are dropped at parse time, and
// Handler drops any family whose name the agent's own gatherer also has,
// so a collision can never corrupt the exposition.
type UserMetrics struct {
	s settings

	mu        sync.Mutex
	families  []*dto.MetricFamily // sorted by name; shared read-only with scrapes
	updatedAt time.Time           // last good fetch
	failing   bool                // the last fetch failed
}

var _ prometheus.Gatherer = (*UserMetrics)(nil)

// NewUserMetrics returns an empty cache.
func NewUserMetrics(opts ...Option) *UserMetrics {
	return &UserMetrics{s: newSettings(opts)}
}

// Run fetches every interval (DefaultUserMetricsInterval if zero), the first
// time at once, until ctx is done; it then returns nil. Each fetch gets a
// timeout of min(interval, 10s). In main, fetch is local.Client.UserMetrics.
func (u *UserMetrics) Run(ctx context.Context, fetch func(context.Context) ([]byte, error), interval time.Duration) error {
	if interval <= 0 {
		interval = DefaultUserMetricsInterval
	}
	ticker := u.s.clock.NewTicker(interval)
	defer ticker.Stop()
	for {
		u.fetchOnce(ctx, fetch, min(interval, maxFetchTimeout))
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C():
		}
	}
}

func (u *UserMetrics) fetchOnce(parent context.Context, fetch func(context.Context) ([]byte, error), timeout time.Duration) {
	u.mu.Lock()
	wasFailing, everOK, lastOK := u.failing, !u.updatedAt.IsZero(), u.updatedAt
	u.mu.Unlock()

	ctx, cancel := context.WithTimeout(parent, timeout)
	defer cancel()
	text, err := fetch(ctx)
	if err == nil {
		err = u.Update(text)
	} else {
		err = fmt.Errorf("fetching tailscaled user metrics: %w", err)
	}
	if err != nil && parent.Err() != nil {
		return // shutting down
	}

	u.mu.Lock()
	u.failing = err != nil
	u.mu.Unlock()
	switch {
	case err != nil && !everOK:
		// Expected while tailscaled starts.
		u.s.logger.Debug("tailscaled user metrics not available yet", "err", err)
	case err != nil && !wasFailing:
		u.s.logger.Warn("tailscaled user metrics fetch failed, serving the last good copy",
			"err", err, "age", u.s.clock.Since(lastOK).Round(time.Second).String())
	case err == nil && !everOK:
		u.s.logger.Info("tailscaled user metrics available, appended to /metrics")
	case err == nil && wasFailing:
		u.s.logger.Info("tailscaled user metrics fetch recovered")
	}
}

// Update parses text (Prometheus text format) and makes it the cached
// copy. On a parse error the previous copy is kept.
func (u *UserMetrics) Update(text []byte) error {
	fams, err := parseUserMetrics(text)
	if err != nil {
		return err
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.families = fams
	u.updatedAt = u.s.clock.Now()
	return nil
}

// UpdatedAt is when the cached copy was fetched; zero if never.
func (u *UserMetrics) UpdatedAt() time.Time {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.updatedAt
}

// Gather returns the cached families, sorted by name. They are shared:
// callers must not modify them.
func (u *UserMetrics) Gather() ([]*dto.MetricFamily, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.families, nil
}

func parseUserMetrics(text []byte) ([]*dto.MetricFamily, error) {
	if len(text) > 0 && text[len(text)-1] != '\n' {
		text = append(text[:len(text):len(text)], '\n')
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	byName, err := p.TextToMetricFamilies(bytes.NewReader(text))
	if err != nil {
		return nil, fmt.Errorf("parsing tailscaled user metrics: %w", err)
	}
	fams := make([]*dto.MetricFamily, 0, len(byName))
	for name, mf := range byName {
		if strings.HasPrefix(name, Namespace+"_") {
			continue // ours alone
		}
		for _, m := range mf.Metric {
			slices.SortFunc(m.Label, func(a, b *dto.LabelPair) int { return cmp.Compare(a.GetName(), b.GetName()) })
		}
		fams = append(fams, mf)
	}
	sortFamilies(fams)
	return fams, nil
}

func sortFamilies(fams []*dto.MetricFamily) {
	slices.SortFunc(fams, func(a, b *dto.MetricFamily) int { return cmp.Compare(a.GetName(), b.GetName()) })
}

// Handler serves /metrics: the families of gatherer (the registry main
// created), followed by tailscaled's cached user metrics when um is not nil.
// Both are merged before encoding, so every exposition format promhttp
// negotiates (text, OpenMetrics, protobuf) is correct, and a tailscaled
// family whose name collides with one of ours is dropped. Errors of
// individual collectors do not fail the scrape (ContinueOnError); at most
// MaxRequestsInFlight scrapes run at once. A scrape never calls tailscaled.
//
// Responses are not compressed, whatever the scraper accepts: an
// exposition is some 15 KiB, and promhttp's gzip writer costs about
// 800 KiB of heap each time its pool is empty, which at a scrape
// interval of 15 s or more is every scrape. That would be most of the
// agent's live heap, to save a few kilobytes on the node's network.
func Handler(gatherer prometheus.Gatherer, um *UserMetrics, opts ...Option) http.Handler {
	s := newSettings(opts)
	var g prometheus.Gatherer = gatherer
	if um != nil {
		g = mergedGatherer{ours: gatherer, theirs: um}
	}
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{
		ErrorLog:            slogPrintln{s.logger},
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: MaxRequestsInFlight,
		DisableCompression:  true,
	})
}

// mergedGatherer appends theirs' families to ours', dropping name clashes.
type mergedGatherer struct {
	ours   prometheus.Gatherer
	theirs prometheus.Gatherer
}

func (m mergedGatherer) Gather() ([]*dto.MetricFamily, error) {
	ours, err := m.ours.Gather()
	theirs, _ := m.theirs.Gather()
	if len(theirs) == 0 {
		return ours, err
	}
	have := make(map[string]bool, len(ours))
	for _, mf := range ours {
		have[mf.GetName()] = true
	}
	out := make([]*dto.MetricFamily, len(ours), len(ours)+len(theirs))
	copy(out, ours)
	for _, mf := range theirs {
		if !have[mf.GetName()] {
			out = append(out, mf)
		}
	}
	sortFamilies(out)
	return out, err
}

// slogPrintln adapts slog to promhttp.Logger.
type slogPrintln struct{ l *slog.Logger }

func (p slogPrintln) Println(v ...any) {
	p.l.Error(strings.TrimSuffix(fmt.Sprintln(v...), "\n"))
}
