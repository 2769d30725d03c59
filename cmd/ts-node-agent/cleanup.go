package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/pflag"
	"github.com/vishvananda/netns"

	"github.com/ts-node-agent/ts-node-agent/pkg/config"
	"github.com/ts-node-agent/ts-node-agent/pkg/hostnet"
	"github.com/ts-node-agent/ts-node-agent/pkg/validate"
)

// cleanupCommand is the subcommand that removes everything a worker's agent
// leaves in the kernel and the state dir.
const cleanupCommand = "cleanup"

// runCleanup is `ts-node-agent cleanup`: the explicit uninstall path. A
// stopping agent leaves the bypass and the kill switch in place for the
// next one (fail closed across restarts); this removes them, on a node that
// no longer runs the agent, or before the DaemonSet is deleted.
func runCleanup(args []string, getenv func(string) (string, bool), stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("ts-node-agent cleanup", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	def := config.Defaults()
	stateDir := def.StateDir
	if v, ok := getenv("TS_STATE_DIR"); ok && v != "" {
		stateDir = v
	}
	logFormat := string(def.LogFormat)
	if v, ok := getenv("TS_NODE_AGENT_LOG_FORMAT"); ok && v != "" {
		logFormat = v
	}
	fs.StringVar(&stateDir, "state-dir", stateDir, "tailscaled state directory whose kill switch state file is removed (env TS_STATE_DIR)")
	fs.StringVar(&logFormat, "log-format", logFormat, "log format: json or text (env TS_NODE_AGENT_LOG_FORMAT)")
	usage := func(w io.Writer) {
		fmt.Fprintf(w, "Usage: ts-node-agent cleanup [flags]\n\n"+
			"Removes what ts-node-agent installs on a worker and leaves in place when it stops:\n"+
			"the policy rules tagged proto %d (bypass and kill switch), the routes of table %d,\n"+
			"the nftables table inet %s, and %s in the state dir.\n"+
			"Run it on the node (hostNetwork, NET_ADMIN) when uninstalling.\n\nFlags:\n%s",
			hostnet.BypassProtocol, hostnet.KillSwitchTable, hostnet.BypassNftTable, hostnet.KillSwitchStateFile, fs.FlagUsages())
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			usage(stdout)
			return 0
		}
		fmt.Fprintf(stderr, "ts-node-agent cleanup: %v\n", err)
		return 2
	}
	var problems []error
	if fs.NArg() > 0 {
		problems = append(problems, fmt.Errorf("unexpected argument %q: cleanup takes flags only", fs.Arg(0)))
	}
	if logFormat != string(config.LogFormatJSON) && logFormat != string(config.LogFormatText) {
		problems = append(problems, fmt.Errorf("invalid --log-format %q: accepted: json or text", logFormat))
	}
	if stateDir != "" {
		if err := validate.AbsPath(stateDir); err != nil {
			problems = append(problems, fmt.Errorf("invalid --state-dir %q: %v; accepted: an absolute path", stateDir, err))
		}
	}
	if err := errors.Join(problems...); err != nil {
		fmt.Fprintf(stderr, "ts-node-agent cleanup: %v\n", err)
		return 2
	}
	log := newLogger(config.LogFormat(logFormat), stderr)
	clog := log.With("component", "cleanup")
	if err := hostnet.Cleanup(stateDir, netns.None(), log); err != nil {
		clog.Error("cleanup incomplete", "err", err)
		return 1
	}
	clog.Info("cleaned up: no ts-node-agent rule, route, nftables table or kill switch state is left")
	return 0
}
