// Command labctl starts a netns lab by hand and removes labs left behind.
//
//	labctl cleanup [--all]        remove labs whose owner process is gone (--all: every lab)
//	labctl run [--nodes=a,b] [--approve-exit-routes] [--keep-dir]
//	                              build a lab, print how to use it, wait for Ctrl-C, tear it down
//
// It needs root. It does not start tailscaled or the agent: run them with
// `ip netns exec <namespace> ...` (see the printed namespace names) or use
// the test/lab package from Go.
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"github.com/ts-node-agent/ts-node-agent/test/lab"
)

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: labctl cleanup [--all] | labctl run [--nodes=a,b] [--approve-exit-routes] [--keep-dir]")
		return 2
	}
	logf := log.New(os.Stderr, "", log.LstdFlags).Printf
	switch args[0] {
	case "cleanup":
		fs := pflag.NewFlagSet("cleanup", pflag.ContinueOnError)
		all := fs.Bool("all", false, "also remove labs of running processes")
		if err := fs.Parse(args[1:]); err != nil {
			return 2
		}
		cleanup := lab.CleanupStale
		if *all {
			cleanup = lab.CleanupAll
		}
		if err := cleanup(logf); err != nil {
			fmt.Fprintln(os.Stderr, "labctl:", err)
			return 1
		}
		return 0
	case "run":
		fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
		nodes := fs.StringSlice("nodes", []string{"exit1", "worker1"}, "node names")
		approve := fs.Bool("approve-exit-routes", true, "approve advertised exit routes")
		keep := fs.Bool("keep-dir", false, "keep the lab directory (logs, state) after exit")
		if err := fs.Parse(args[1:]); err != nil {
			return 2
		}
		return runLab(lab.Options{Nodes: *nodes, ApproveExitRoutes: *approve, KeepDir: *keep, Logf: logf})
	default:
		fmt.Fprintf(os.Stderr, "labctl: unknown command %q\n", args[0])
		return 2
	}
}

func runLab(opts lab.Options) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	bctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	l, err := lab.New(bctx, opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "labctl:", err)
		return 1
	}
	defer func() {
		if err := l.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "labctl:", err)
		}
	}()
	fmt.Printf("lab %s is up (Ctrl-C to tear it down)\n", l.ID())
	fmt.Printf("  control:  %s   auth key: %s\n", l.ControlURL(), l.AuthKey())
	fmt.Printf("  echo:     %s (and %s)\n", l.EchoURL(), lab.EchoURLFor(lab.AltInternetIP))
	fmt.Printf("  router:   ip netns exec %s bash\n", l.WAN().NSName())
	for _, n := range l.Nodes() {
		fmt.Printf("  node %-8s %s  ip netns exec %s curl -s %s\n", n.Name(), n.Addr(), n.NSName(), l.EchoURL())
	}
	fmt.Printf("  logs:     %s\n", l.Dir())
	<-ctx.Done()
	fmt.Println("tearing down")
	return 0
}
