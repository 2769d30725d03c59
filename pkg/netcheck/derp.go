package netcheck

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"
	tsnetcheck "tailscale.com/net/netcheck"
	"tailscale.com/net/netmon"
	"tailscale.com/tailcfg"
	"tailscale.com/types/logger"
	"tailscale.com/util/eventbus"
)

// DefaultDERPInterval is how often DERPProber measures DERP latency.
const DefaultDERPInterval = 5 * time.Minute

// DERPMapFunc returns tailscaled's current DERP map (local.Client's
// CurrentDERPMap).
type DERPMapFunc func(ctx context.Context) (*tailcfg.DERPMap, error)

// DERPProber measures the latency from this node to every DERP region of
// tailscaled's current DERP map, the way `tailscale netcheck` does (STUN,
// in-process, from the node's network namespace), and exposes it as
// ts_node_agent_derp_latency_seconds{region}. It uses only the DERP map
// tailscaled has: never a default map from the internet.
type DERPProber struct {
	derpMap  DERPMapFunc
	interval time.Duration
	log      *slog.Logger
	clock    clock.WithTicker
	latency  *prometheus.GaugeVec
}

// NewDERPProber registers the latency gauge on reg and returns a prober
// that measures every interval (DefaultDERPInterval when zero).
func NewDERPProber(reg prometheus.Registerer, derpMap DERPMapFunc, interval time.Duration, log *slog.Logger) (*DERPProber, error) {
	if interval <= 0 {
		interval = DefaultDERPInterval
	}
	if log == nil {
		log = slog.Default()
	}
	p := &DERPProber{
		derpMap:  derpMap,
		interval: interval,
		log:      log.With("component", "derp"),
		clock:    clock.RealClock{},
		latency: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ts_node_agent_derp_latency_seconds",
			Help: "Latency from this node to each DERP region of tailscaled's DERP map, from the last netcheck.",
		}, []string{"region"}),
	}
	if err := reg.Register(p.latency); err != nil {
		return nil, fmt.Errorf("registering DERP latency: %w", err)
	}
	return p, nil
}

// Run measures at once (as soon as tailscaled has a DERP map) and then
// every interval, until ctx is done.
func (p *DERPProber) Run(ctx context.Context) error {
	bus := eventbus.New()
	defer bus.Close()
	nm, err := netmon.New(bus, logger.Discard)
	if err != nil {
		return fmt.Errorf("derp latency: network monitor: %w", err)
	}
	defer nm.Close()
	nm.Start()
	c := &tsnetcheck.Client{NetMon: nm, Logf: logger.Discard}
	if err := c.Standalone(ctx, ":0"); err != nil {
		p.log.Warn("DERP latency probes cannot bind UDP sockets; not measuring", "err", err)
		<-ctx.Done()
		return nil
	}
	wait := time.Duration(0)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-p.clock.After(wait):
		}
		wait = p.interval
		if err := p.measure(ctx, c); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			p.log.Debug("DERP latency", "err", err)
			wait = min(p.interval, 10*time.Second) // no map yet: try again soon
		}
	}
}

func (p *DERPProber) measure(ctx context.Context, c *tsnetcheck.Client) error {
	mctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	dm, err := p.derpMap(mctx)
	if err != nil {
		return fmt.Errorf("reading tailscaled's DERP map: %w", err)
	}
	if dm == nil || len(dm.Regions) == 0 {
		return fmt.Errorf("tailscaled has no DERP map yet")
	}
	rep, err := c.GetReport(mctx, dm, nil)
	if err != nil {
		return fmt.Errorf("netcheck: %w", err)
	}
	p.latency.Reset()
	for id, d := range rep.RegionLatency {
		name := strconv.Itoa(id)
		if r := dm.Regions[id]; r != nil && r.RegionCode != "" {
			name = r.RegionCode
		}
		p.latency.WithLabelValues(name).Set(d.Seconds())
	}
	p.log.Debug("DERP latency measured", "regions", len(rep.RegionLatency))
	return nil
}
