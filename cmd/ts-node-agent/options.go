package main

// The translation of the Config into the parts' Options, all of it: each
// function starts from the part's Defaults and sets what the
// configuration says. build validates every result before anything
// happens.

import (
	"net"
	"net/netip"
	"path/filepath"
	"slices"

	"github.com/ts-node-agent/ts-node-agent/pkg/authkey"
	"github.com/ts-node-agent/ts-node-agent/pkg/config"
	"github.com/ts-node-agent/ts-node-agent/pkg/hostnet"
	"github.com/ts-node-agent/ts-node-agent/pkg/kube"
	"github.com/ts-node-agent/ts-node-agent/pkg/netcheck"
	"github.com/ts-node-agent/ts-node-agent/pkg/probe"
	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
	"github.com/ts-node-agent/ts-node-agent/pkg/supervisor"
	"github.com/ts-node-agent/ts-node-agent/pkg/tailnet"
	"github.com/ts-node-agent/ts-node-agent/pkg/tailnet/exitnode"
)

func hostnetOptions(cfg *config.Config) hostnet.Options {
	o := hostnet.Defaults()
	o.TUNName = cfg.TUN
	o.ForwardingOptimizations = cfg.ForwardingOptimizations
	return o
}

func probeOptions(cfg *config.Config, hn hostnet.Options) probe.Options {
	o := probe.DefaultOptions()
	o.LivenessGrace = cfg.LivenessGrace
	o.RequireExitApproval = cfg.RequireExitApproval
	o.ReadyRequires = cfg.ReadyRequires
	o.Declare(checkDeclarations(cfg, hn)...)
	return o
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

// tailnetOptions are tailscaled's prefs for role (the start's: run sets
// the initial role before tailscaled starts), logging in with keys.
func tailnetOptions(cfg *config.Config, role snapshot.Role, keys *authkey.Source) tailnet.Options {
	var o tailnet.Options
	o.Defaults()
	o.Role = role
	if keys != nil {
		o.AuthKey = keys.Key
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

// authKeyOptions are the login credential's: false when none is
// configured (an interactive login).
func authKeyOptions(cfg *config.Config) (authkey.Options, bool) {
	var o authkey.Options
	o.Defaults()
	o.APIURL = cfg.APIURL
	o.Tags = cfg.AdvertiseTags
	o.ClientID = cfg.ClientID
	o.Audience = cfg.Audience
	o.UserAgent = "ts-node-agent/" + version
	switch {
	case cfg.IDToken.IsSet():
		o.IDToken = cfg.IDToken.Reveal
	case cfg.ClientSecret.IsSet():
		o.Secret, o.ClientSecret = cfg.ClientSecret.Reveal, true
	case cfg.AuthKey.IsSet():
		o.Secret = cfg.AuthKey.Reveal
	default:
		return o, false
	}
	return o, true
}

// guardOptions are the bypass guard's. Its static commit targets: the API
// server's ClusterIP in Kubernetes (KUBERNETES_SERVICE_HOST:PORT; its real
// endpoints come from the snapshot's Cluster with the other bypass
// inputs); outside Kubernetes, the --check-tcp targets that --bypass-cidrs
// keeps off the exit node. watched: the Kubernetes side runs (whatever the
// role) and delivers the cluster later; until then the Guard keeps what
// the previous agent bypassed.
func guardOptions(cfg *config.Config, getenv func(string) (string, bool), watched bool) hostnet.GuardOptions {
	o := hostnet.GuardDefaults()
	o.TUNName = cfg.TUN
	o.CommitTimeout = cfg.ExitCommitTimeout
	o.KillSwitch = cfg.ExitFallback == config.FallbackBlock
	o.StateFile = filepath.Join(cfg.StateDir, hostnet.KillSwitchStateFile)
	o.Mark = cfg.BypassMark
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
	return o
}

func selectorOptions(cfg *config.Config) exitnode.Options {
	var o exitnode.Options
	o.Defaults()
	o.Candidates = cfg.ExitNodes
	o.FailbackAfter = cfg.FailbackAfter
	o.Fallback = exitnode.Fallback(cfg.ExitFallback)
	return o
}

func supervisorOptions(cfg *config.Config) supervisor.Options {
	var o supervisor.Options
	o.Defaults()
	o.Tailscaled, o.StateDir, o.Socket, o.TUN = cfg.Tailscaled, cfg.StateDir, cfg.Socket, cfg.TUN
	o.ExtraArgs, o.ShutdownTimeout = cfg.TailscaledArgs, cfg.ShutdownTimeout
	return o
}

// kubeOptions are the Node watch's; a forced role ignores the label.
func kubeOptions(cfg *config.Config) kube.Options {
	var o kube.Options
	o.Defaults()
	o.NodeName, o.Label, o.DefaultRole = cfg.NodeName, cfg.RoleLabel, snapshot.Role(cfg.DefaultRole)
	if cfg.Role != config.RoleFromLabel {
		o.ForceRole = snapshot.Role(cfg.Role)
	}
	return o
}

func eventsOptions(cfg *config.Config, podUID string) kube.EventsOptions {
	return kube.EventsOptions{
		PodName:      cfg.PodName,
		PodNamespace: cfg.PodNamespace,
		PodUID:       podUID,
		NodeName:     cfg.NodeName,
	}
}
