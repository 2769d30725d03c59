package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"k8s.io/client-go/kubernetes"
	"tailscale.com/client/local"

	"github.com/ts-node-agent/ts-node-agent/pkg/config"
	"github.com/ts-node-agent/ts-node-agent/pkg/hostnet"
	"github.com/ts-node-agent/ts-node-agent/pkg/kube"
	"github.com/ts-node-agent/ts-node-agent/pkg/metrics"
	"github.com/ts-node-agent/ts-node-agent/pkg/netcheck"
	"github.com/ts-node-agent/ts-node-agent/pkg/probe"
	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
	"github.com/ts-node-agent/ts-node-agent/pkg/supervisor"
	"github.com/ts-node-agent/ts-node-agent/pkg/tailnet"
	"github.com/ts-node-agent/ts-node-agent/pkg/tailnet/exitnode"
)

// bootTimeout bounds the start: tailscaled's LocalAPI must answer within it,
// otherwise the agent exits 1 so that the pod restarts loudly instead of
// hanging.
const bootTimeout = 2 * time.Minute

// userMetricsInterval is how often tailscaled's user metrics are copied for
// /metrics.
const userMetricsInterval = 15 * time.Second

// run is the whole program; main only turns its result into an exit status,
// so that every defer here runs.
func run(args []string, getenv func(string) (string, bool), environ []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == cleanupCommand {
		return runCleanup(args[1:], getenv, stdout, stderr)
	}
	cfg, err := config.Parse(args, getenv, config.WithEnviron(environ))
	switch {
	case errors.Is(err, config.ErrHelp):
		config.Usage(stdout)
		return 0
	case err != nil:
		fmt.Fprintln(stderr, err)
		return 2
	}
	// From here on the key lives in cfg.AuthKey only.
	dropErr := errors.Join(dropAuthKeyEnv(os.Unsetenv), scrubInitialEnviron(authKeyEnv[:]...))
	log := newLogger(cfg.LogFormat, stderr)
	alog := log.With("component", "agent")
	for _, w := range cfg.Warnings {
		alog.Warn(w)
	}
	if dropErr != nil {
		alog.Warn("the auth key stays in the agent's environment", "err", dropErr)
	}
	alog.Info("starting", "version", version, "config", cfg)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := runAgent(ctx, cfg, log, getenv); err != nil {
		alog.Error("exiting", "err", err)
		return 1
	}
	alog.Info("stopped cleanly")
	return 0
}

// authKeyEnv are the variables that may hold the auth key (or file:PATH).
var authKeyEnv = [...]string{"TS_AUTHKEY", "TS_AUTH_KEY"}

// dropAuthKeyEnv removes the auth key variables from the agent's
// environment with unsetenv (os.Unsetenv), once config.Parse has read them:
// then they are not in os.Environ(), and no process started later inherits
// them (tailscaled never gets them anyway: pkg/supervisor builds its
// environment without them).
//
// It cannot clear /proc/<agent-pid>/environ: the kernel serves that file
// from the environment block execve put on the process's stack, which
// os.Unsetenv never touches (without cgo it only edits Go's copy; with cgo
// unsetenv(3) only edits libc's pointer array, not the strings).
// scrubInitialEnviron clears the values there.
func dropAuthKeyEnv(unsetenv func(string) error) error {
	var errs []error
	for _, name := range authKeyEnv {
		if err := unsetenv(name); err != nil {
			errs = append(errs, fmt.Errorf("removing %s from the environment: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

func newLogger(format config.LogFormat, w io.Writer) *slog.Logger {
	if format == config.LogFormatText {
		return slog.New(slog.NewTextHandler(w, nil))
	}
	return slog.New(slog.NewJSONHandler(w, nil))
}

// runAgent wires the parts and runs them until ctx is cancelled or one of
// them fails. It returns only after tailscaled has stopped.
func runAgent(ctx context.Context, cfg *config.Config, log *slog.Logger, getenv func(string) (string, bool)) error {
	podUID, _ := getenv("POD_UID")
	alog := log.With("component", "agent")
	start := time.Now()
	bootCtx, bootDone := context.WithTimeout(ctx, bootTimeout)
	defer bootDone()

	store := snapshot.New(start, snapshot.Role(cfg.DefaultRole))
	kp, err := newKube(cfg, store, log, podUID, getenv)
	if err != nil {
		return err
	}
	// Background work that must outlive the boot: started now, stopped
	// with the rest.
	bgCtx, bgStop := context.WithCancel(ctx)
	defer bgStop()
	var bg sync.WaitGroup
	defer bg.Wait()
	defer bgStop()
	if kp != nil {
		bg.Add(2)
		go func() { defer bg.Done(); kp.events.Run(bgCtx) }()
		go func() { defer bg.Done(); kp.watcher.Run(bgCtx) }()
	}
	nodeRole, source, err := initialRole(bootCtx, cfg, kp, alog)
	if err != nil {
		return err
	}
	fromState := source != ""
	store.SetRole(nodeRole)
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

	// Host network first: tailscaled needs the TUN device node, an exit
	// node needs forwarding.
	hn := hostnet.Defaults()
	hn.TUNName = cfg.TUN
	hn.ForwardingOptimizations = cfg.ForwardingOptimizations
	if err := hn.Validate(); err != nil {
		return fmt.Errorf("host network options: %w", err)
	}
	hostWatch := hostnet.New(store, hn, hostnet.WithLogger(log))
	if err := hostWatch.Prepare(); err != nil {
		return fmt.Errorf("preparing the host network: %w", err)
	}

	probeOpts := probe.DefaultOptions()
	probeOpts.LivenessGrace = cfg.LivenessGrace
	probeOpts.RequireExitApproval = cfg.RequireExitApproval
	probeOpts.ReadyRequires = cfg.ReadyRequires
	probeOpts.Declare(checkDeclarations(cfg, hn)...)
	if err := probeOpts.Validate(); err != nil {
		return fmt.Errorf("probe options: %w", err)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	durations, err := metrics.Register(reg, store, metrics.DefaultBuildInfo(version), probeOpts, metrics.WithLogger(log))
	if err != nil {
		return fmt.Errorf("registering metrics: %w", err)
	}
	nc, err := netcheck.New(store, netcheckOptions(cfg),
		netcheck.WithRegisterer(reg), netcheck.WithDurations(durations), netcheck.WithLogger(log))
	if err != nil {
		return fmt.Errorf("netcheck: %w", err)
	}
	userMetrics := metrics.NewUserMetrics(metrics.WithLogger(log))

	mux := http.NewServeMux()
	probe.Register(mux, store, probeOpts, probe.WithLogger(log))
	mux.Handle("GET /metrics", metrics.Handler(reg, userMetrics, metrics.WithLogger(log)))
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listening on --listen %q: %w", cfg.Listen, err)
	}
	// hostNetwork: the port is reachable from anywhere the node is. Every
	// connection has a bounded cost, and the node's own probes (loopback,
	// the node's addresses) are never turned away by a flood.
	localAddrs := probe.NewLocalAddrs(probe.WithLogger(log))
	// Not an internet service: besides the node itself, only --allow-from
	// and (with Kubernetes) the cluster's nodes and pods may connect.
	ln = probe.LimitListener(ln, probe.DefaultMaxConnections, localAddrs.IsLocal, probe.WithLogger(log),
		probe.WithAllow(probe.AllowFrom(store, cfg.AllowFrom)))
	srv := probe.NewServer(mux, probe.WithLogger(log))
	alog.Info("serving probes and metrics", "addr", ln.Addr().String())

	lc := &local.Client{Socket: cfg.Socket, UseSocketOnly: true}
	derp, err := netcheck.NewDERPProber(reg, lc.CurrentDERPMap, netcheck.DefaultDERPInterval, log)
	if err != nil {
		return err
	}
	tnOpts := tailnetOptions(cfg, nodeRole)
	tn, err := tailnet.New(tailnet.NewLocalAPI(lc), store, tnOpts, tailnet.WithLogger(log))
	if err != nil {
		return err
	}

	// Never cut a node off: the selector turns exit nodes on and off
	// through the Guard, which installs the bypasses first and rolls back
	// what would cut the node off. Close runs when runAgent returns, after
	// tailscaled has stopped.
	var exitSetter exitnode.ExitNodeSetter = tn
	var guard *hostnet.Guard
	if !hn.Userspace() {
		if guard, err = newGuard(cfg, store, tn, log, getenv, kp != nil); err != nil {
			return err
		}
		// Before tailscaled starts: it may come up using a saved exit node.
		if err := guard.Prepare(); err != nil {
			alog.Error("installing the bypass before tailscaled starts; retrying", "err", err)
		}
		defer func() {
			if err := guard.Close(); err != nil {
				alog.Error("removing the bypass", "err", err)
			}
		}()
		exitSetter = guard
	}

	selOpts := exitnode.Options{}
	selOpts.Defaults()
	selOpts.Candidates = cfg.ExitNodes
	selOpts.FailbackAfter = cfg.FailbackAfter
	selOpts.Fallback = exitnode.Fallback(cfg.ExitFallback)
	selector, err := exitnode.New(store, exitSetter, lc, selOpts, exitnode.WithLogger(log))
	if err != nil {
		return err
	}

	var reaper *supervisor.Reaper
	if os.Getpid() == 1 {
		reaper = supervisor.NewReaper(supervisor.WithReaperLogger(log))
		go reaper.Run(context.Background()) // reaps until the process exits
	}
	var supOpts supervisor.Options
	supOpts.Defaults()
	supOpts.Tailscaled, supOpts.StateDir, supOpts.Socket, supOpts.TUN = cfg.Tailscaled, cfg.StateDir, cfg.Socket, cfg.TUN
	supOpts.ExtraArgs, supOpts.ShutdownTimeout = cfg.TailscaledArgs, cfg.ShutdownTimeout
	booted := make(chan struct{})
	var bootOnce sync.Once
	sup, err := supervisor.New(supOpts, store,
		supervisor.WithLogger(log),
		supervisor.WithReaper(reaper),
		supervisor.WithOnReady(func(pid int) {
			bootOnce.Do(func() { close(booted) })
			tn.Kick()
		}),
	)
	if err != nil {
		return err
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

	// The supervisor stops tailscaled when runCtx ends; runAgent returns
	// only after it has (and after the other parts have stopped).
	supDone := make(chan error, 1)
	go func() { supDone <- sup.Run(runCtx) }()

	goRun("http", func(ctx context.Context) error {
		errc := make(chan error, 1)
		go func() { errc <- srv.Serve(ln) }()
		select {
		case err := <-errc:
			return err
		case <-ctx.Done():
			shutCtx, done := context.WithTimeout(context.Background(), 2*time.Second)
			defer done()
			return srv.Shutdown(shutCtx)
		}
	})
	goRun("netcheck", nc.Run)
	goRun("derp-latency", derp.Run)
	goRun("probe", probe.NewTracker(store, probeOpts, nil, probe.WithLogger(log)).Run)
	goRun("tailnet", tn.Run)
	goRun("exitnode", selector.Run)
	if guard != nil {
		goRun("bypass", guard.Run)
	}
	goRun("user-metrics", func(ctx context.Context) error {
		return userMetrics.Run(ctx, lc.UserMetrics, userMetricsInterval)
	})
	var events *kube.Events
	if kp != nil {
		events = kp.events
	}
	var onRole func(snapshot.Role)
	if kp != nil && cfg.Role == config.RoleFromLabel {
		// The Node watch's role, once it has one, is recorded and replaces
		// a last known role from the state dir.
		recorded := nodeRole // written at start, unless it came from the state dir
		if fromState {
			recorded = ""
		}
		onRole = func(r snapshot.Role) {
			if wr, known := kp.watcher.Role(); !known || wr != r || r == recorded {
				return
			}
			recorded = r
			store.DeleteCheck(checkRoleSource)
			if err := writeLastRole(cfg.StateDir, r); err != nil {
				alog.Warn("the role is not recorded for a start during an API server outage", "err", err)
			}
		}
	}
	goRun("reactor", func(ctx context.Context) error { return react(ctx, store, tn, events, onRole, alog) })

	// Boot deadline (the same one the role wait used): tailscaled must
	// answer on its socket in time, or the agent exits and the pod restarts
	// loudly instead of hanging.
	select {
	case <-booted:
		alog.Info("tailscaled is up", "after", time.Since(start).Round(time.Millisecond))
		if !hn.Userspace() {
			goRun("hostnet", hostWatch.Run)
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
	if guard != nil && kp != nil && ctx.Err() != nil {
		uninstallIfDeleted(guard, kp, cfg, alog)
	}
	if cause := context.Cause(runCtx); cause != nil && !errors.Is(cause, context.Canceled) {
		return errors.Join(cause, supErr)
	}
	if supErr != nil {
		return fmt.Errorf("stopping tailscaled: %w", supErr)
	}
	return nil
}

// uninstallTimeout bounds the look at the DaemonSet at shutdown.
const uninstallTimeout = 5 * time.Second

// uninstallIfDeleted removes the bypass and the kill switch when the agent
// stops because its DaemonSet is being deleted (or its API access was
// revoked): the uninstall of `kubectl delete -k`, which must not leave a
// worker silently offline. A restart keeps them for the next agent, and so
// does an answer it cannot get (closed is the safe side).
func uninstallIfDeleted(guard *hostnet.Guard, kp *kubeParts, cfg *config.Config, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), uninstallTimeout)
	defer cancel()
	gone, why, err := kube.Uninstalling(ctx, kp.client, cfg.PodNamespace, cfg.PodName)
	switch {
	case err != nil:
		log.Warn("cannot tell whether the agent is being uninstalled: leaving the bypass and kill switch for the next agent; `ts-node-agent cleanup` removes them",
			"err", err)
	case gone:
		log.Info("uninstalled: removing the bypass and the kill switch", "why", why)
		if err := guard.Uninstall(); err != nil {
			log.Error("removing the bypass at uninstall; run `ts-node-agent cleanup` on the node", "err", err)
		}
	default:
		log.Info("restarting, not uninstalled: the bypass and kill switch stay for the next agent", "why", why)
	}
}

// kubeParts are the Kubernetes side of the agent: the Node watch and the
// Events on this pod. Only with --role=label.
type kubeParts struct {
	client  kubernetes.Interface
	watcher *kube.Watcher
	events  *kube.Events
}

func newKube(cfg *config.Config, store *snapshot.Store, log *slog.Logger, podUID string, getenv func(string) (string, bool)) (*kubeParts, error) {
	forced := cfg.Role != config.RoleFromLabel
	if forced && !kubeAvailable(cfg, getenv) {
		return nil, nil
	}
	client, err := kube.NewClient(cfg.Kubeconfig, "ts-node-agent/"+version)
	if err != nil && forced {
		// A forced role does not need Kubernetes: run without its bypass
		// inputs rather than not at all.
		log.Warn("no Kubernetes client: the forced role runs without the cluster's bypass inputs (Nodes, pod CIDRs, API server endpoints, ServiceCIDRs)",
			"role", cfg.Role, "err", err)
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	events := kube.NewEvents(client, kube.EventsOptions{
		PodName:      cfg.PodName,
		PodNamespace: cfg.PodNamespace,
		PodUID:       podUID,
		NodeName:     cfg.NodeName,
	}, kube.WithEventsLogger(log))
	var opts kube.Options
	opts.Defaults()
	opts.NodeName, opts.Label, opts.DefaultRole = cfg.NodeName, cfg.RoleLabel, snapshot.Role(cfg.DefaultRole)
	if forced {
		opts.ForceRole = snapshot.Role(cfg.Role)
	}
	w, err := kube.New(client, store, opts, kube.WithLogger(log), kube.WithEvents(events), kube.WithCluster())
	if err != nil {
		return nil, err
	}
	return &kubeParts{client: client, watcher: w, events: events}, nil
}

// kubeAvailable says whether a forced role can use the Kubernetes side: a
// node name, and a kubeconfig or a pod's in-cluster environment.
func kubeAvailable(cfg *config.Config, getenv func(string) (string, bool)) bool {
	if cfg.NodeName == "" {
		return false
	}
	if cfg.Kubeconfig != "" {
		return true
	}
	host, _ := getenv("KUBERNETES_SERVICE_HOST")
	port, _ := getenv("KUBERNETES_SERVICE_PORT")
	return host != "" && port != ""
}

// initialRole is the role to start with: the forced one, or the Node
// label's. An API server outage must not keep tailscaled down: the Node's
// role is waited for lastRoleWait only, then the agent starts with the
// last known role from the state dir, or, on a first start, as none (on
// the tailnet, nothing else), and source says which (lastRoleFromState,
// lastRoleNone); the Node watch corrects the role once it can.
func initialRole(ctx context.Context, cfg *config.Config, kp *kubeParts, log *slog.Logger) (r snapshot.Role, source string, err error) {
	if kp == nil || cfg.Role != config.RoleFromLabel {
		return snapshot.Role(cfg.Role), "", nil
	}
	wctx, cancel := context.WithTimeout(ctx, lastRoleWait)
	r, err = kp.watcher.WaitForRole(wctx)
	cancel()
	switch {
	case err == nil:
		return r, "", nil
	case ctx.Err() != nil:
		return "", "", fmt.Errorf("reading the role of node %q from its label %q: %w", cfg.NodeName, cfg.RoleLabel, err)
	}
	if last, ok := readLastRole(cfg.StateDir); ok {
		log.Warn("the API server did not give this node's role in time: starting with the last known role",
			"role", last, "file", filepath.Join(cfg.StateDir, lastRoleFile), "err", err)
		return last, roleFromState, nil
	}
	// No role recorded (a failed write, an agent from before the role
	// file), but an armed kill switch: the node was a worker. Starting as
	// none would disarm it and let the node's traffic out directly.
	if hostnet.KillSwitchArmed(cfg.StateDir) {
		log.Warn("the API server did not give this node's role in time and none is recorded, but the kill switch is armed: starting as worker",
			"err", err)
		return snapshot.RoleWorker, roleFromState, nil
	}
	log.Warn("the API server did not give this node's role in time and none is recorded: starting as none (on the tailnet, no exit node role) until it does",
		"err", err)
	return snapshot.RoleNone, roleNoneYet, nil
}

// react turns changes of the snapshot into actions that span parts: a new
// role is applied to tailscaled's prefs, exit node switches and "exit route
// not approved" become Kubernetes Events. It never blocks a source.
//
// onRole, if set, is called with the role on every change it sees (and at
// once): main records the Node watch's role there.
func react(ctx context.Context, store *snapshot.Store, tn *tailnet.Manager, events *kube.Events, onRole func(snapshot.Role), log *slog.Logger) error {
	prev := store.Load()
	for {
		changed := store.Changed()
		sn := store.Load()
		if onRole != nil {
			onRole(sn.Role)
		}
		if sn.Role != prev.Role {
			log.Info("role changed", "from", prev.Role, "to", sn.Role)
			if err := tn.SetRole(sn.Role); err != nil {
				log.Error("applying the new role", "role", sn.Role, "err", err)
			}
		}
		if cur, old := sn.ExitNode, prev.ExitNode; cur.CurrentID != old.CurrentID && cur.CurrentID != "" {
			events.ExitNodeSwitched(old.CurrentName, cur.CurrentName, cur.Reason)
		}
		tnet := sn.Tailnet
		if sn.Role == snapshot.RoleExit && tnet.BackendState == "Running" && tnet.ExitRoutesAdvertised && !tnet.ExitRoutesApproved {
			events.ExitRouteNotApproved() // deduplicated by Events
		}
		prev = sn
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

// checkDeclarations are the checks the parts this configuration runs
// publish, as each declares them: which roles they gate, which are only
// shown. An API server outage must not take the node out of service
// (role-watch, role-source), UDP GRO is an optimisation.
func checkDeclarations(cfg *config.Config, hn hostnet.Options) []snapshot.CheckDeclaration {
	decls := slices.Concat(exitnode.Checks(), netcheckOptions(cfg).Checks(), hn.Checks(), kube.Checks(), lastRoleChecks())
	if !hn.Userspace() {
		decls = append(decls, hostnet.GuardChecks()...) // the Guard runs with the kernel TUN
	}
	return decls
}

func netcheckOptions(cfg *config.Config) netcheck.Options {
	o := netcheck.Defaults()
	o.EgressURLs = cfg.EgressCheckURLs
	o.ExpectedEgressIPs = cfg.ExpectedEgressIPs
	o.EgressInterval = cfg.EgressCheckInterval
	// Pods use the exit node only through the kernel TUN.
	o.PodEgress = len(cfg.EgressCheckURLs) > 0 && cfg.TUN != config.TUNUserspace
	o.PodEgressSource = cfg.PodEgressSource
	o.TCPInterval = cfg.EgressCheckInterval
	for _, t := range cfg.CheckTCP {
		o.TCPTargets = append(o.TCPTargets, netcheck.TCPTarget{Name: t.Name, Addr: t.Addr})
	}
	return o
}

func tailnetOptions(cfg *config.Config, role snapshot.Role) tailnet.Options {
	var o tailnet.Options
	o.Defaults()
	o.Role = role
	key := cfg.AuthKey
	if key.IsSet() {
		o.AuthKey = key.Reveal
	}
	o.AuthOnce = cfg.AuthOnce
	o.Hostname = cfg.Hostname
	o.AdvertiseTags = cfg.AdvertiseTags
	o.AcceptDNS = cfg.AcceptDNS
	o.AcceptRoutes = cfg.AcceptRoutes
	o.LoginServer = cfg.LoginServer
	o.ExitNodeAllowLANAccess = cfg.ExitNodeAllowLANAccess
	return o
}

// newGuard builds the bypass guard. Its static commit targets: the API
// server's ClusterIP in Kubernetes (KUBERNETES_SERVICE_HOST:PORT; its real
// endpoints come from the Kubernetes watch with the other bypass inputs);
// outside Kubernetes, the --check-tcp targets that --bypass-cidrs keeps
// off the exit node.
func newGuard(cfg *config.Config, store *snapshot.Store, inner hostnet.ExitNodeSetter, log *slog.Logger, getenv func(string) (string, bool), watched bool) (*hostnet.Guard, error) {
	o := hostnet.GuardDefaults()
	o.TUNName = cfg.TUN
	o.CommitTimeout = cfg.ExitCommitTimeout
	o.KillSwitch = cfg.ExitFallback == config.FallbackBlock
	o.StateFile = filepath.Join(cfg.StateDir, hostnet.KillSwitchStateFile)
	o.Mark = cfg.BypassMark
	// The Kubernetes watch (watched: whatever the role) delivers node
	// addresses and pod CIDRs later: until then, keep what the previous
	// agent bypassed.
	o.InputsPending = watched
	o.Inputs.CIDRs = cfg.BypassCIDRs
	var tcp []string
	for _, t := range cfg.CheckTCP {
		tcp = append(tcp, t.Addr)
	}
	o.ConfirmTargets = hostnet.BypassedTargets(cfg.BypassCIDRs, tcp)
	host, _ := getenv("KUBERNETES_SERVICE_HOST")
	port, _ := getenv("KUBERNETES_SERVICE_PORT")
	if ip, err := netip.ParseAddr(host); err == nil && port != "" {
		o.ConfirmTargets = append(o.ConfirmTargets, net.JoinHostPort(host, port))
		o.Inputs.APIServers = append(o.Inputs.APIServers, ip)
	}
	return hostnet.NewGuard(store, inner, o, hostnet.WithGuardLogger(log))
}
