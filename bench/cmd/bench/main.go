// Command bench is `make bench`: it measures ts-node-agent against
// Tailscale's stock containerboot (built from the same pinned tailscale.com
// module, with the same tailscaled) on the netns lab, side by side in the
// same run, and writes the results as JSON and as a Markdown table.
//
// Scenarios (issue 9, DESIGN section 8), each for both supervisors,
// alternating which goes first, N times:
//
//  1. ready: process start to "the node is usable" for roles none, exit
//     and worker, each run on a fresh state directory against the same
//     control server. Agent: /readyz 200; containerboot: /healthz 200
//     (TS_ENABLE_HEALTH_CHECK). Also when tailscaled reached Running (IPN
//     bus) and, for the worker, when its egress really left through the
//     exit node.
//     1b. ready-loaded: the same while a parallel build (Go's standard
//     library, from an empty build cache, on every CPU) loads the machine.
//  2. recovery: kill -9 of tailscaled under a worker, until its egress
//     leaves through the exit node again and until the probe says 200
//     again. containerboot exits when tailscaled dies; the bench then
//     restarts it at once (the best a kubelet could do).
//  3. failover: a worker with two exit nodes; the first loses its link;
//     until the worker's egress IP is the second's (agent only:
//     containerboot has no failover, which the bench shows once).
//  4. footprint: RSS and CPU time of the supervisor process itself
//     (tailscaled excluded) over a steady-state window, both measured at
//     the same time, and binary sizes.
//  5. probes: /readyz and /metrics (containerboot: /healthz and /metrics
//     with TS_ENABLE_METRICS) latency under a bounded load from inside the
//     node's namespace, and the LocalAPI requests they cause, counted by a
//     proxy on the LocalAPI socket.
//  6. scale (agent only, once): the agent's Kubernetes side against a real
//     kube-apiserver (test/apiserver) holding 5000 Node objects, feeding
//     the bypass in a throw-away namespace: destinations and policy rules
//     in the kernel, the first apply, heap per Node, what a Node joining
//     or leaving changes in the kernel, and the watch traffic of one
//     Node's address change.
//
// Everything runs inside the lab's namespaces and addresses
// (198.18.0.0/15); the lab is torn down on exit, error, SIGINT or SIGTERM.
// Numbers are meant as ratios between the two supervisors measured in the
// same run, not as absolute times. Needs root.
//
// Flags:
//
//	-n N                   runs per scenario and supervisor (default 5)
//	-scenarios LIST        comma-separated subset of ready,ready-loaded,recovery,failover,footprint,probes,scale
//	-out DIR               where results.json and results.md go (default bench)
//	-footprint-window D    steady-state window of the footprint (default 30s)
//	-footprint-runs N      footprint windows (default 2; both supervisors at once)
//	-load-requests N       requests per probe load (default 2000)
//	-load-concurrency N    concurrent clients of a probe load (default 200)
//	-timeout D             bound of each wait for a condition (default 90s)
//	-keep                  keep the lab directory (logs, state) after the run
//	-v                     log the lab's own lines to stderr
//
// The binaries come from the environment `make` exports
// (TSNA_TEST_AGENT_BIN, TS_NODE_AGENT_TAILSCALED, TSNA_TEST_CONTAINERBOOT,
// TSNA_TEST_TAILSCALE_CLI) or from bin/.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// scenarioNames are the scenarios in the order they run.
var scenarioNames = []string{"ready", "ready-loaded", "recovery", "failover", "footprint", "probes", "scale"}

// options are the bench's settings.
type options struct {
	N               int
	Scenarios       []string
	Out             string
	FootprintWindow time.Duration
	FootprintRuns   int
	LoadRequests    int
	LoadConcurrency int
	Timeout         time.Duration
	Keep            bool
	Verbose         bool
}

func (o *options) addFlags(fs *flag.FlagSet) {
	fs.IntVar(&o.N, "n", 5, "runs per scenario and supervisor")
	fs.Func("scenarios", "comma-separated subset of "+strings.Join(scenarioNames, ","), func(s string) error {
		o.Scenarios = nil
		for _, n := range strings.Split(s, ",") {
			if n = strings.TrimSpace(n); n != "" {
				o.Scenarios = append(o.Scenarios, n)
			}
		}
		return nil
	})
	fs.StringVar(&o.Out, "out", "bench", "directory for results.json and results.md")
	fs.DurationVar(&o.FootprintWindow, "footprint-window", 30*time.Second, "steady-state window of the footprint scenario")
	fs.IntVar(&o.FootprintRuns, "footprint-runs", 2, "footprint windows (both supervisors measured at the same time, swapping nodes)")
	fs.IntVar(&o.LoadRequests, "load-requests", 2000, "requests per probe load")
	fs.IntVar(&o.LoadConcurrency, "load-concurrency", 200, "concurrent clients of a probe load")
	fs.DurationVar(&o.Timeout, "timeout", 90*time.Second, "bound of each wait for a condition")
	fs.BoolVar(&o.Keep, "keep", false, "keep the lab directory after the run")
	fs.BoolVar(&o.Verbose, "v", false, "log the lab's own lines to stderr")
}

func (o *options) validate() error {
	var problems []string
	if o.N < 1 {
		problems = append(problems, fmt.Sprintf("-n %d: at least 1", o.N))
	}
	for _, s := range o.Scenarios {
		if !contains(scenarioNames, s) {
			problems = append(problems, fmt.Sprintf("-scenarios: unknown %q (known: %s)", s, strings.Join(scenarioNames, ",")))
		}
	}
	if o.FootprintWindow < time.Second {
		problems = append(problems, "-footprint-window: at least 1s")
	}
	if o.FootprintRuns < 1 {
		problems = append(problems, "-footprint-runs: at least 1")
	}
	if o.LoadRequests < 1 || o.LoadConcurrency < 1 || o.LoadConcurrency > o.LoadRequests {
		problems = append(problems, "-load-requests and -load-concurrency: 1 <= concurrency <= requests")
	}
	if o.Timeout < 10*time.Second {
		problems = append(problems, "-timeout: at least 10s")
	}
	if len(problems) > 0 {
		return fmt.Errorf("bench: %s", strings.Join(problems, "; "))
	}
	return nil
}

func (o *options) enabled(s string) bool { return len(o.Scenarios) == 0 || contains(o.Scenarios, s) }

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// run is the whole program; main only turns its result into an exit
// status, so that every defer (the lab's teardown first) runs.
func run(args []string, stdout, stderr io.Writer) int {
	var o options
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o.addFlags(fs)
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if err := o.validate(); err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(stderr, "bench: needs root to create network namespaces: run `sudo make bench`")
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := benchmark(ctx, o, stdout, stderr); err != nil {
		fmt.Fprintf(stderr, "bench: %v\n", err)
		return 1
	}
	return 0
}
