package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"tailscale.com/client/local"

	"github.com/ts-node-agent/ts-node-agent/pkg/authkey"
	"github.com/ts-node-agent/ts-node-agent/pkg/config"
	"github.com/ts-node-agent/ts-node-agent/pkg/hostnet"
	"github.com/ts-node-agent/ts-node-agent/pkg/kube"
	"github.com/ts-node-agent/ts-node-agent/pkg/metrics"
	"github.com/ts-node-agent/ts-node-agent/pkg/netcheck"
	"github.com/ts-node-agent/ts-node-agent/pkg/probe"
	"github.com/ts-node-agent/ts-node-agent/pkg/redact"
	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
	"github.com/ts-node-agent/ts-node-agent/pkg/supervisor"
	"github.com/ts-node-agent/ts-node-agent/pkg/tailnet"
	"github.com/ts-node-agent/ts-node-agent/pkg/tailnet/exitnode"
)

// agent is every part of the agent, built from the Config and validated,
// nothing started: build has no side effect (no API call, no netlink, no
// listening socket, no file written), run has them all.
type agent struct {
	cfg    *config.Config
	log    *slog.Logger
	alog   *slog.Logger // component=agent
	start  time.Time
	store  *snapshot.Store
	kp     *kubeParts // nil without Kubernetes
	hn     hostnet.Options
	host   *hostnet.Watcher
	probes probe.Options
	mux    *http.ServeMux
	srv    *http.Server
	nc     *netcheck.Checker
	derp   *netcheck.DERPProber
	user   *metrics.UserMetrics
	lc     *local.Client
	tn     *tailnet.Manager
	guard  *hostnet.Guard // nil in userspace networking
	sel    *exitnode.Selector
	reaper *supervisor.Reaper // nil unless the agent is PID 1
	sup    *supervisor.Supervisor
	booted chan struct{} // closed when tailscaled's LocalAPI first answers
}

// build makes every part of the agent from cfg and validates it.
func build(cfg *config.Config, log *slog.Logger, getenv func(string) (string, bool)) (*agent, error) {
	podUID, _ := getenv("POD_UID")
	a := &agent{cfg: cfg, log: log, alog: log.With("component", "agent"), start: time.Now(), booted: make(chan struct{})}
	a.store = snapshot.New(a.start, snapshot.Role(cfg.DefaultRole))
	var err error
	if a.kp, err = newKube(cfg, a.store, log, podUID, getenv); err != nil {
		return nil, err
	}

	a.hn = hostnetOptions(cfg)
	if err := a.hn.Validate(); err != nil {
		return nil, fmt.Errorf("host network options: %w", err)
	}
	a.host = hostnet.New(a.store, a.hn, hostnet.WithLogger(log))
	a.probes = probeOptions(cfg, a.hn)
	if err := a.probes.Validate(); err != nil {
		return nil, fmt.Errorf("probe options: %w", err)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	durations, err := metrics.Register(reg, a.store, metrics.DefaultBuildInfo(version), a.probes, metrics.WithLogger(log))
	if err != nil {
		return nil, fmt.Errorf("registering metrics: %w", err)
	}
	if a.nc, err = netcheck.New(a.store, netcheckOptions(cfg),
		netcheck.WithRegisterer(reg), netcheck.WithDurations(durations), netcheck.WithLogger(log)); err != nil {
		return nil, fmt.Errorf("netcheck: %w", err)
	}
	a.user = metrics.NewUserMetrics(metrics.WithLogger(log))
	a.mux = http.NewServeMux()
	probe.Register(a.mux, a.store, a.probes, probe.WithLogger(log))
	a.mux.Handle("GET /metrics", metrics.Handler(reg, a.user, metrics.WithLogger(log)))
	a.srv = probe.NewServer(a.mux, probe.WithLogger(log))

	a.lc = localClient(cfg.Socket)
	if a.derp, err = netcheck.NewDERPProber(reg, a.lc.CurrentDERPMap, netcheck.DefaultDERPInterval, log); err != nil {
		return nil, err
	}
	var keys *authkey.Source // nil: no credential, an interactive login
	if ko, ok := authKeyOptions(cfg); ok {
		if err := ko.Validate(); err != nil {
			return nil, fmt.Errorf("login credential options: %w", err)
		}
		keys = authkey.New(ko)
		if kind, api := keys.Describe(); api != "" {
			a.alog.Info("logging in with keys minted for the tags", "credential", kind, "tags", cfg.AdvertiseTags, "api_url", redact.URL(api))
		}
	}
	// The start's role is known only in run (the Node's label); run sets
	// it before tailscaled starts.
	if a.tn, err = tailnet.New(tailnet.NewLocalAPI(a.lc), a.store, tailnetOptions(cfg, snapshot.Role(cfg.DefaultRole), keys), tailnet.WithLogger(log)); err != nil {
		return nil, err
	}

	// Never cut a node off: the selector turns exit nodes on and off
	// through the Guard, which installs the bypasses first and rolls back
	// what would cut the node off.
	var exitSetter exitnode.ExitNodeSetter = a.tn
	if !a.hn.Userspace() {
		if a.guard, err = hostnet.NewGuard(a.store, a.tn, guardOptions(cfg, getenv, a.kp != nil), hostnet.WithGuardLogger(log)); err != nil {
			return nil, err
		}
		exitSetter = a.guard
	}
	if a.sel, err = exitnode.New(a.store, exitSetter, a.lc, selectorOptions(cfg), exitnode.WithLogger(log)); err != nil {
		return nil, err
	}

	if os.Getpid() == 1 {
		a.reaper = supervisor.NewReaper(supervisor.WithReaperLogger(log))
	}
	var bootOnce sync.Once
	if a.sup, err = supervisor.New(supervisorOptions(cfg), a.store,
		supervisor.WithLogger(log),
		supervisor.WithReaper(a.reaper),
		supervisor.WithOnReady(func(pid int) {
			bootOnce.Do(func() { close(a.booted) })
			a.tn.Kick()
		}),
	); err != nil {
		return nil, err
	}
	return a, nil
}

// localClient is the LocalAPI client of the agent's parts. It dials the
// socket itself: local.Client's default dialer (safesocket.ConnectContext)
// retries a failed connect every 250 ms for the first two seconds of the
// *calling* process, assuming a CLI started alongside tailscaled. The
// agent starts tailscaled itself, so its first calls always failed and
// then slept, and the first connection came up to 250 ms after the
// socket appeared, whatever the supervisor's kick. A failed connect now
// fails at once; the callers' own backoff, cut short by that kick,
// decides when to try again.
func localClient(socket string) *local.Client {
	return &local.Client{
		Socket:        socket,
		UseSocketOnly: true,
		Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}
}

// run starts the parts and runs them until ctx is cancelled or one of
// them fails. It returns only after tailscaled has stopped.
func (a *agent) run(ctx context.Context) error {
	cfg, store, alog := a.cfg, a.store, a.alog
	bootCtx, bootDone := context.WithTimeout(ctx, bootTimeout)
	defer bootDone()
	if a.reaper != nil {
		go a.reaper.Run(context.Background()) // reaps until the process exits
	}

	// The Kubernetes side must outlive the boot: started now, stopped
	// with the rest.
	bgCtx, bgStop := context.WithCancel(ctx)
	defer bgStop()
	var bg sync.WaitGroup
	defer bg.Wait()
	defer bgStop()
	if a.kp != nil {
		bg.Add(2)
		go func() { defer bg.Done(); a.kp.events.Run(bgCtx) }()
		go func() { defer bg.Done(); a.kp.watcher.Run(bgCtx) }()
	}
	nodeRole, source, err := initialRole(bootCtx, cfg, a.kp, alog)
	if err != nil {
		return err
	}
	a.startRole(nodeRole, source)

	// Host network first: tailscaled needs the TUN device node, an exit
	// node needs forwarding.
	if err := a.host.Prepare(); err != nil {
		return fmt.Errorf("preparing the host network: %w", err)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listening on --listen %q: %w", cfg.Listen, err)
	}
	// hostNetwork: the port is reachable from anywhere the node is. Every
	// connection has a bounded cost, and the node's own probes (loopback,
	// the node's addresses) are never turned away by a flood. Not an
	// internet service: besides the node itself, only --allow-from and
	// (with Kubernetes) the cluster's nodes and pods may connect.
	localAddrs := probe.NewLocalAddrs(probe.WithLogger(a.log))
	ln = probe.LimitListener(ln, probe.DefaultMaxConnections, localAddrs.IsLocal, probe.WithLogger(a.log),
		probe.WithAllow(probe.AllowFrom(store, cfg.AllowFrom)))
	alog.Info("serving probes and metrics", "addr", ln.Addr().String())

	if a.guard != nil {
		// Before tailscaled starts: it may come up using a saved exit
		// node. Close runs when run returns, after tailscaled has stopped.
		if err := a.guard.Prepare(); err != nil {
			alog.Error("installing the bypass before tailscaled starts; retrying", "err", err)
		}
		defer func() {
			if err := a.guard.Close(); err != nil {
				alog.Error("removing the bypass", "err", err)
			}
		}()
	}

	// Everything below runs until ctx is cancelled; the first part to fail
	// cancels the others.
	runCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	goRun := func(name string, fn func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(runCtx); err != nil && runCtx.Err() == nil {
				cancel(fmt.Errorf("%s: %w", name, err))
			}
		}()
	}

	// The supervisor stops tailscaled when runCtx ends; run returns only
	// after it has (and after the other parts have stopped).
	supDone := make(chan error, 1)
	go func() { supDone <- a.sup.Run(runCtx) }()

	goRun("http", func(ctx context.Context) error {
		errc := make(chan error, 1)
		go func() { errc <- a.srv.Serve(ln) }()
		select {
		case err := <-errc:
			return err
		case <-ctx.Done():
			shutCtx, done := context.WithTimeout(context.Background(), 2*time.Second)
			defer done()
			return a.srv.Shutdown(shutCtx)
		}
	})
	goRun("netcheck", a.nc.Run)
	goRun("derp-latency", a.derp.Run)
	goRun("probe", probe.NewTracker(store, a.probes, nil, probe.WithLogger(a.log)).Run)
	goRun("tailnet", a.tn.Run)
	goRun("exitnode", a.sel.Run)
	if a.guard != nil {
		goRun("bypass", a.guard.Run)
	}
	goRun("user-metrics", func(ctx context.Context) error {
		return a.user.Run(ctx, a.lc.UserMetrics, userMetricsInterval)
	})
	var events *kube.Events
	if a.kp != nil {
		events = a.kp.events
	}
	onRole := a.recordRole(nodeRole, source != "")
	goRun("reactor", func(ctx context.Context) error { return react(ctx, store, a.tn, events, onRole, alog) })

	// Boot deadline (the same one the role wait used): tailscaled must
	// answer on its socket in time, or the agent exits and the pod restarts
	// loudly instead of hanging.
	select {
	case <-a.booted:
		alog.Info("tailscaled is up", "after", time.Since(a.start).Round(time.Millisecond))
		if !a.hn.Userspace() {
			goRun("hostnet", a.host.Run)
		}
	case <-bootCtx.Done():
		if ctx.Err() == nil {
			cancel(fmt.Errorf("tailscaled's LocalAPI did not answer on %s within %s of start", cfg.Socket, bootTimeout))
		}
	case <-runCtx.Done():
	}

	var supErr error
	select {
	case <-runCtx.Done():
		supErr = <-supDone
	case supErr = <-supDone:
		if supErr == nil && ctx.Err() == nil {
			supErr = errors.New("supervisor stopped unexpectedly")
		}
		cancel(supErr)
	}
	wg.Wait()
	if a.guard != nil && a.kp != nil && ctx.Err() != nil {
		uninstallIfDeleted(a.guard, a.kp, cfg, alog)
	}
	if cause := context.Cause(runCtx); cause != nil && !errors.Is(cause, context.Canceled) {
		return errors.Join(cause, supErr)
	}
	if supErr != nil {
		return fmt.Errorf("stopping tailscaled: %w", supErr)
	}
	return nil
}

// startRole publishes the start's role, says where it came from (the
// role-source check) and records a role the Node gave.
func (a *agent) startRole(nodeRole snapshot.Role, source string) {
	cfg, store, alog := a.cfg, a.store, a.alog
	store.SetRole(nodeRole)
	if err := a.tn.SetRole(nodeRole); err != nil {
		alog.Error("applying the role", "role", nodeRole, "err", err)
	}
	alog.Info("role", "role", nodeRole, "from", cfg.Role, "source", source)
	switch source {
	case roleFromState:
		store.SetCheck(checkRoleSource, snapshot.Check{OK: true, CheckedAt: time.Now(), Reason: fmt.Sprintf(
			"last known role %s from the state dir: the API server did not give this node's role within %s of start", nodeRole, lastRoleWait)})
	case roleNoneYet:
		store.SetCheck(checkRoleSource, snapshot.Check{CheckedAt: time.Now(), Reason: fmt.Sprintf(
			"no role known: the API server did not give this node's role within %s of start and none is recorded; running as none (on the tailnet) until it does", lastRoleWait)})
	case "":
		if cfg.Role != config.RoleFromLabel {
			break // a forced role is not the Node's
		}
		if err := writeLastRole(cfg.StateDir, nodeRole); err != nil {
			alog.Warn("the role is not recorded for a start during an API server outage", "err", err)
		}
	}
}

// recordRole returns the reactor's onRole: the Node watch's role, once it
// has one, is recorded and replaces a last known role from the state dir.
// nil unless the role comes from the Node's label.
func (a *agent) recordRole(nodeRole snapshot.Role, fromState bool) func(snapshot.Role) {
	if a.kp == nil || a.cfg.Role != config.RoleFromLabel {
		return nil
	}
	recorded := nodeRole // written at start, unless it came from the state dir
	if fromState {
		recorded = ""
	}
	return func(r snapshot.Role) {
		if wr, known := a.kp.watcher.Role(); !known || wr != r || r == recorded {
			return
		}
		recorded = r
		a.store.DeleteCheck(checkRoleSource)
		if err := writeLastRole(a.cfg.StateDir, r); err != nil {
			a.alog.Warn("the role is not recorded for a start during an API server outage", "err", err)
		}
	}
}
