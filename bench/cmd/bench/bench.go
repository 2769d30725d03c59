package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ts-node-agent/ts-node-agent/test/lab"
)

// bench is one run of the benchmarks on one lab.
type bench struct {
	o      options
	stderr io.Writer
	bins   binaries
	res    *results

	lab              *lab.Lab
	gw1, gw2         *lab.Node // exit nodes, running the agent with --role=exit throughout
	subj, subj2      *lab.Node // where the supervisors under test run
	gw1IP, gw2IP     netip.Addr
	gwAgents         []*lab.Agent
	sizes            []sizeEntry
	sizesNote        string
	failoverCBWindow time.Duration
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.stderr, "%s bench: %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func benchmark(ctx context.Context, o options, stdout, stderr io.Writer) error {
	bins, err := findBinaries()
	if err != nil {
		return fmt.Errorf("%w (run `make bench`, which builds them)", err)
	}
	b := &bench{o: o, stderr: stderr, bins: bins, failoverCBWindow: 20 * time.Second}
	b.res = newResults(o, describeMachine(ctx, bins), commandLine())
	if o.enabled("footprint") {
		// Before the lab exists, so that compiling disturbs no measurement.
		b.logf("building stripped copies of the binaries to compare their sizes")
		b.sizes, b.sizesNote = measureSizes(ctx, bins)
	}

	lctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	lo := lab.Options{Nodes: []string{"gw1", "gw2", "subj", "subj2"}, ApproveExitRoutes: true, KeepDir: o.Keep}
	if o.Verbose {
		lo.Logf = func(format string, args ...any) { b.logf(format, args...) }
	}
	l, err := lab.New(lctx, lo)
	cancel()
	if err != nil {
		return err
	}
	defer func() {
		b.logf("tearing the lab down")
		if err := l.Close(); err != nil {
			b.logf("lab teardown: %v", err)
		}
	}()
	b.lab = l
	b.gw1, b.gw2, b.subj, b.subj2 = l.Node("gw1"), l.Node("gw2"), l.Node("subj"), l.Node("subj2")
	b.logf("lab %s in %s; N=%d", l.ID(), l.Dir(), o.N)

	if err := writeRunners(b.subj, b.subj2); err != nil {
		return err
	}
	if err := b.startGateways(ctx); err != nil {
		return err
	}
	for _, sc := range []struct {
		name string
		fn   func(context.Context) error
	}{
		{"ready", b.scenarioReady},
		{"ready-loaded", b.scenarioReadyLoaded},
		{"recovery", b.scenarioRecovery},
		{"failover", b.scenarioFailover},
		{"footprint", b.scenarioFootprint},
		{"probes", b.scenarioProbes},
		{"scale", b.scenarioScale},
	} {
		if !o.enabled(sc.name) {
			continue
		}
		b.logf("=== scenario %s", sc.name)
		err := sc.fn(ctx)
		if ctx.Err() != nil {
			return fmt.Errorf("interrupted during %s: results not written", sc.name)
		}
		if err != nil {
			b.logf("scenario %s failed: %v", sc.name, err)
			b.res.Errors = append(b.res.Errors, fmt.Sprintf("%s: %v", sc.name, err))
		}
	}
	b.res.finish()
	if err := b.res.write(o.Out); err != nil {
		return err
	}
	fmt.Fprintln(stdout)
	b.res.writeText(stdout)
	fmt.Fprintf(stdout, "\nwrote %s and %s\n", filepath.Join(o.Out, "results.md"), filepath.Join(o.Out, "results.json"))
	if len(b.res.Errors) > 0 {
		return errors.New("some scenarios failed (see the Errors section of results.md)")
	}
	return nil
}

// commandLine is how this run was invoked, for the report, saying so
// when make ran it (make exports MAKELEVEL).
func commandLine() string {
	c := "`" + strings.TrimSpace("go run ./bench/cmd/bench "+strings.Join(os.Args[1:], " ")) + "`"
	if os.Getenv("MAKELEVEL") != "" {
		return "`make bench`, which ran " + c
	}
	return c
}

// startGateways runs the agent as an exit node on gw1 and gw2 and learns
// their tailnet addresses.
func (b *bench) startGateways(ctx context.Context) error {
	for _, n := range []*lab.Node{b.gw1, b.gw2} {
		a, err := b.lab.StartAgent(n, "exit")
		if err != nil {
			return err
		}
		b.gwAgents = append(b.gwAgents, a)
	}
	for i, a := range b.gwAgents {
		wctx, cancel := context.WithTimeout(ctx, b.o.Timeout)
		_, err := a.WaitStatus(wctx, "/readyz", 200)
		cancel()
		if err != nil {
			return fmt.Errorf("exit node %s: %w\n%s", a.Node.Name(), err, tail(a.Log(), 30))
		}
		st, err := a.Node.LocalClient().Status(ctx)
		if err != nil {
			return fmt.Errorf("exit node %s: status: %w", a.Node.Name(), err)
		}
		var ip netip.Addr
		for _, p := range st.Self.TailscaleIPs {
			if p.Is4() {
				ip = p
			}
		}
		if !ip.IsValid() {
			return fmt.Errorf("exit node %s has no tailnet IPv4", a.Node.Name())
		}
		if i == 0 {
			b.gw1IP = ip
		} else {
			b.gw2IP = ip
		}
	}
	b.logf("exit nodes ready: gw1 %s (LAN %s), gw2 %s (LAN %s)", b.gw1IP, b.gw1.Addr(), b.gw2IP, b.gw2.Addr())
	return nil
}

func tail(s string, lines int) string {
	all := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

// sizeEntry is the size of one binary as the image would ship it.
type sizeEntry struct {
	Name  string `json:"name"`
	Bytes int64  `json:"bytes"`
}

// measureSizes reports the agent as `make build` built it (the image's
// binary: CGO_ENABLED=0, -trimpath, -ldflags=-s -w, the Makefile's
// AGENT_TAGS), and builds containerboot and the tailscale CLI the same way
// but without the agent's tags, as they ship, into a temporary directory,
// so that the sizes compare. Without a Go toolchain it reports the given
// binaries as they are, and says so.
func measureSizes(ctx context.Context, bins binaries) ([]sizeEntry, string) {
	onDisk := func(note string) ([]sizeEntry, string) {
		var out []sizeEntry
		for _, p := range []struct{ name, path string }{
			{"ts-node-agent", bins.Agent}, {"containerboot", bins.Containerboot}, {"tailscale", bins.TailscaleCLI},
		} {
			if fi, err := os.Stat(p.path); err == nil {
				out = append(out, sizeEntry{p.name, fi.Size()})
			}
		}
		return out, note
	}
	agent, err := os.Stat(bins.Agent)
	if err != nil {
		return onDisk("sizes of the binaries as built: " + err.Error())
	}
	dir, err := os.MkdirTemp("", "tsna-bench-sizes-")
	if err != nil {
		return onDisk("sizes of the binaries as built (a temporary directory failed: " + err.Error() + ")")
	}
	defer os.RemoveAll(dir)
	bctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(bctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", dir+"/",
		"tailscale.com/cmd/containerboot", "tailscale.com/cmd/tailscale")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return onDisk(fmt.Sprintf("sizes of the binaries as built: stripped build failed: %v: %s", err, strings.TrimSpace(string(out))))
	}
	out := []sizeEntry{{"ts-node-agent", agent.Size()}}
	for _, name := range []string{"containerboot", "tailscale"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			return onDisk("sizes of the binaries as built: " + err.Error())
		}
		out = append(out, sizeEntry{name, fi.Size()})
	}
	return out, "the agent as `make build` builds it for the image (CGO_ENABLED=0 -trimpath -ldflags=\"-s -w\", -tags with the Makefile's AGENT_TAGS); containerboot and the tailscale CLI built the same way, without those tags, from the same module graph"
}

// procStat is the CPU time of a process so far, in clock ticks.
func procTicks(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no comm", pid)
	}
	f := strings.Fields(s[i+1:])
	// After the comm: state is field 3, utime 14, stime 15 (1-based).
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: short", pid)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return ut + st, nil
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times: 100 on every
// Linux architecture Go supports.
const clockTicks = 100

// memInfo is the resident memory of a process, in bytes.
type memInfo struct{ rss, anon, file int64 }

// procMem reads VmRSS, RssAnon and RssFile from /proc/PID/status.
func procMem(pid int) (memInfo, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memInfo{}, err
	}
	var m memInfo
	found := 0
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		var dst *int64
		switch k {
		case "VmRSS":
			dst = &m.rss
		case "RssAnon":
			dst = &m.anon
		case "RssFile":
			dst = &m.file
		default:
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			return memInfo{}, fmt.Errorf("/proc/%d/status: %s: %q", pid, k, v)
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return memInfo{}, fmt.Errorf("/proc/%d/status: %s: %w", pid, k, err)
		}
		*dst = kb * 1024
		found++
	}
	if found != 3 {
		return memInfo{}, fmt.Errorf("/proc/%d/status: VmRSS, RssAnon or RssFile missing", pid)
	}
	return m, nil
}

// procPSS reads the proportional set size from /proc/PID/smaps_rollup:
// the RSS with each page shared with other processes (a binary run twice,
// shared libraries) divided among them.
func procPSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		v, ok := strings.CutPrefix(line, "Pss:")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("/proc/%d/smaps_rollup: Pss: %q", pid, v)
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/smaps_rollup: Pss: %w", pid, err)
		}
		return kb * 1024, nil
	}
	return 0, fmt.Errorf("/proc/%d/smaps_rollup: no Pss", pid)
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

func procComm(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}
