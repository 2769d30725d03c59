package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/ts-node-agent/ts-node-agent/pkg/config"
	"github.com/ts-node-agent/ts-node-agent/pkg/hostnet"
	"github.com/ts-node-agent/ts-node-agent/pkg/kube"
	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
	"github.com/ts-node-agent/ts-node-agent/pkg/tailnet"
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
	setGCPercent(getenv)
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
	// From here on the secrets live in cfg only.
	dropErr := errors.Join(dropSecretEnv(os.Unsetenv), scrubInitialEnviron(config.SecretEnv...))
	log := newLogger(cfg.LogFormat, stderr)
	alog := log.With("component", "agent")
	for _, w := range cfg.Warnings {
		alog.Warn(w)
	}
	if dropErr != nil {
		alog.Warn("a secret stays in the agent's environment", "err", dropErr)
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

// defaultGCPercent is the agent's GOGC unless its environment sets one.
// The agent's live heap is 2 MiB or less on a small cluster, so at Go's
// default of 100 the heap goal stays at the runtime's 4 MiB minimum
// (4 MiB times GOGC/100), and the heap's resident pages with it. At 25
// the goal is 1.25 times the live heap: in the bench's footprint the
// worker's RSS fell by about 2 MiB, and its CPU time stayed at 0.5% of a
// core, since collecting a heap this small is cheap. tailscaled keeps Go's
// default: the agent sets the percentage in its own process, not in the
// environment tailscaled inherits.
const defaultGCPercent = 25

// setGCPercent applies defaultGCPercent when GOGC is not set.
func setGCPercent(getenv func(string) (string, bool)) {
	if _, ok := getenv("GOGC"); !ok {
		debug.SetGCPercent(defaultGCPercent)
	}
}

// dropSecretEnv removes the variables that may hold a secret
// (config.SecretEnv: the auth key, the OAuth client secret, the ID token)
// from the agent's environment with unsetenv (os.Unsetenv), once
// config.Parse has read them:
// then they are not in os.Environ(), and no process started later inherits
// them (tailscaled never gets them anyway: pkg/supervisor builds its
// environment without them).
//
// It cannot clear /proc/<agent-pid>/environ: the kernel serves that file
// from the environment block execve put on the process's stack, which
// os.Unsetenv never touches (without cgo it only edits Go's copy; with cgo
// unsetenv(3) only edits libc's pointer array, not the strings).
// scrubInitialEnviron clears the values there.
func dropSecretEnv(unsetenv func(string) error) error {
	var errs []error
	for _, name := range config.SecretEnv {
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

// runAgent builds the parts and runs them until ctx is cancelled or one
// of them fails. It returns only after tailscaled has stopped.
func runAgent(ctx context.Context, cfg *config.Config, log *slog.Logger, getenv func(string) (string, bool)) error {
	a, err := build(cfg, log, getenv)
	if err != nil {
		return err
	}
	return a.run(ctx)
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

// kubeParts are the Kubernetes side of the agent: the Node watch (with
// the cluster) and the Events on this pod. With --role=label, and with a
// forced role when a node name and API access exist (kubeAvailable).
type kubeParts struct {
	client  kube.Client
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
	events := kube.NewEvents(client, eventsOptions(cfg, podUID), kube.WithEventsLogger(log))
	w, err := kube.New(client, store, kubeOptions(cfg), kube.WithLogger(log), kube.WithEvents(events), kube.WithCluster())
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
