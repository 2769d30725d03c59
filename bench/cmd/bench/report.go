package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// series is one supervisor's side of a row: the samples of the runs, or a
// text when there is nothing to count ("never", "stays up").
type series struct {
	Samples []float64 `json:"samples,omitempty"`
	Min     *float64  `json:"min,omitempty"`
	Median  *float64  `json:"median,omitempty"`
	Max     *float64  `json:"max,omitempty"`
	Text    string    `json:"text,omitempty"`
	Failed  int       `json:"failed_runs,omitempty"` // runs that produced no sample
}

func (s *series) summarize() {
	if len(s.Samples) == 0 {
		return
	}
	v := slices.Clone(s.Samples)
	slices.Sort(v)
	mn, mx := v[0], v[len(v)-1]
	med := v[len(v)/2]
	if len(v)%2 == 0 {
		med = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	s.Min, s.Median, s.Max = &mn, &med, &mx
}

// targetKind says how a row's goal is judged.
type targetKind int

const (
	noTarget targetKind = iota
	// ratioAtMost: median agent / median containerboot <= limit.
	ratioAtMost
	// agentMaxBelow: the agent's worst run < limit (<= for agentMaxAtMost).
	agentMaxBelow
	agentMaxAtMost
	// agentMedianMax: the agent's median <= limit and its worst run <=
	// worst.
	agentMedianMax
)

// row is one line of the table.
type row struct {
	Scenario      string   `json:"scenario"`
	Metric        string   `json:"metric"`
	Unit          string   `json:"unit"`
	Agent         series   `json:"agent"`
	Containerboot series   `json:"containerboot"`
	Ratio         *float64 `json:"ratio_agent_over_containerboot,omitempty"` // of the medians
	Target        string   `json:"target,omitempty"`
	Met           *bool    `json:"target_met,omitempty"`
	Note          string   `json:"note,omitempty"`

	kind    targetKind
	limit   float64
	worst   float64 // agentMedianMax
	noRatio bool    // a difference of times: a ratio means nothing
}

func (r *row) finish() {
	r.Agent.summarize()
	r.Containerboot.summarize()
	if !r.noRatio && r.Agent.Median != nil && r.Containerboot.Median != nil && *r.Agent.Median > 0 && *r.Containerboot.Median > 0 {
		q := *r.Agent.Median / *r.Containerboot.Median
		r.Ratio = &q
	}
	var met bool
	switch r.kind {
	case noTarget:
		return
	case ratioAtMost:
		r.Target = fmt.Sprintf("ratio <= %g (medians)", r.limit)
		if r.Ratio == nil {
			return
		}
		met = *r.Ratio <= r.limit
	case agentMaxBelow, agentMaxAtMost:
		op := "<"
		if r.kind == agentMaxAtMost {
			op = "<="
		}
		r.Target = fmt.Sprintf("agent %s %s %s (worst run)", op, trimFloat(r.limit), r.Unit)
		if r.Agent.Max == nil || r.Agent.Failed > 0 {
			f := false
			r.Met = &f
			return
		}
		met = *r.Agent.Max < r.limit || (r.kind == agentMaxAtMost && *r.Agent.Max == r.limit)
	case agentMedianMax:
		r.Target = fmt.Sprintf("agent median <= %s %s, worst run <= %s %s", trimFloat(r.limit), r.Unit, trimFloat(r.worst), r.Unit)
		if r.Agent.Max == nil || r.Agent.Failed > 0 {
			f := false
			r.Met = &f
			return
		}
		met = *r.Agent.Median <= r.limit && *r.Agent.Max <= r.worst
	}
	r.Met = &met
}

// machine describes where the numbers were taken.
type machine struct {
	CPUs             int    `json:"nproc"`
	CPUModel         string `json:"cpu_model"`
	Kernel           string `json:"kernel"`
	GoVersion        string `json:"go_version"`
	TailscaleVersion string `json:"tailscale_version"`
	AgentVersion     string `json:"agent_version"`
	Date             string `json:"date"`
	LoadAvg          string `json:"loadavg_at_start"`
}

func describeMachine(ctx context.Context, bins binaries) machine {
	m := machine{
		CPUs:      runtime.NumCPU(),
		GoVersion: runtime.Version(),
		Date:      time.Now().UTC().Format(time.RFC3339),
	}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		f := strings.Fields(string(b))
		if len(f) >= 3 {
			m.LoadAvg = strings.Join(f[:3], " ")
		}
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "tailscale.com" {
				m.TailscaleVersion = d.Version
			}
		}
	}
	if out, err := exec.CommandContext(ctx, bins.Tailscaled, "--version").Output(); err == nil {
		first, _, _ := strings.Cut(string(out), "\n")
		m.TailscaleVersion = strings.TrimSpace(m.TailscaleVersion + " (tailscaled " + strings.TrimSpace(first) + ")")
	}
	if out, err := exec.CommandContext(ctx, "git", "describe", "--tags", "--always", "--dirty").Output(); err == nil {
		m.AgentVersion = strings.TrimSpace(string(out))
	}
	return m
}

// results is everything the run produced.
type results struct {
	Command      string         `json:"command"`
	Machine      machine        `json:"machine"`
	Settings     map[string]any `json:"settings"`
	Started      string         `json:"started"`
	Seconds      float64        `json:"seconds"`
	Rows         []*row         `json:"rows"`
	Loads        []loadRecord   `json:"probe_loads,omitempty"`
	Observations []string       `json:"observations,omitempty"`
	Errors       []string       `json:"errors,omitempty"`
	Extra        map[string]any `json:"extra,omitempty"`
	start        time.Time
}

// loadRecord is one probe load, raw.
type loadRecord struct {
	Run         int        `json:"run"`
	Supervisor  impl       `json:"supervisor"`
	Concurrency int        `json:"concurrency"`
	Result      loadResult `json:"result"`
}

func newResults(o options, m machine, command string) *results {
	now := time.Now()
	return &results{
		Command: command,
		Machine: m,
		Settings: map[string]any{
			"n": o.N, "scenarios": o.Scenarios, "footprint_window": o.FootprintWindow.String(),
			"footprint_runs": o.FootprintRuns, "load_requests": o.LoadRequests,
			"load_concurrency": o.LoadConcurrency, "probe_poll_interval": pollInterval.String(),
			"egress_attempt_every": egressEvery.String(),
		},
		Started: now.UTC().Format(time.RFC3339),
		Extra:   map[string]any{},
		start:   now,
	}
}

func (r *results) add(rw *row) *row {
	r.Rows = append(r.Rows, rw)
	return rw
}

func (r *results) observe(format string, args ...any) {
	r.Observations = append(r.Observations, fmt.Sprintf(format, args...))
}

func (r *results) finish() {
	r.Seconds = time.Since(r.start).Round(time.Second).Seconds()
	for _, rw := range r.Rows {
		rw.finish()
	}
}

func trimFloat(v float64) string {
	s := fmt.Sprintf("%.3f", v)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	return s
}

// format shows v in unit with a sensible precision.
func format(v float64, unit string) string {
	switch unit {
	case "s":
		return fmt.Sprintf("%.2f", v)
	case "ms", "µs":
		if v < 10 {
			return fmt.Sprintf("%.2f", v)
		}
		return fmt.Sprintf("%.1f", v)
	case "MiB":
		return fmt.Sprintf("%.1f", v)
	case "%":
		return fmt.Sprintf("%.2f", v)
	default:
		return trimFloat(v)
	}
}

// cell is one side of a row as the table shows it.
func (s series) cell(unit string) string {
	var parts []string
	if s.Median != nil {
		if len(s.Samples) == 1 {
			parts = append(parts, format(*s.Median, unit))
		} else {
			parts = append(parts, format(*s.Min, unit)+" / "+format(*s.Median, unit)+" / "+format(*s.Max, unit))
		}
	}
	if s.Text != "" {
		parts = append(parts, s.Text)
	}
	if s.Failed > 0 {
		parts = append(parts, fmt.Sprintf("(%d run(s) failed)", s.Failed))
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, " ")
}

func (rw *row) ratioCell() string {
	if rw.Ratio == nil {
		return "-"
	}
	return fmt.Sprintf("%.2fx", *rw.Ratio)
}

func (rw *row) targetCell() string {
	if rw.Target == "" {
		return ""
	}
	switch {
	case rw.Met == nil:
		return rw.Target + ": n/a"
	case *rw.Met:
		return rw.Target + ": met"
	default:
		return rw.Target + ": **missed**"
	}
}

// writeMarkdown writes results.md.
func (r *results) writeMarkdown(w io.Writer) {
	m := r.Machine
	fmt.Fprintf(w, "# ts-node-agent vs containerboot\n\n")
	fmt.Fprintf(w, "Generated by %s (bench/cmd/bench) on %s, %.0f s. Do not edit: run it again.\n\n", r.Command, m.Date, r.Seconds)
	fmt.Fprintf(w, "Machine: %d CPUs (%s), Linux %s, %s, tailscale.com %s, ts-node-agent %s; load average at start %s",
		m.CPUs, m.CPUModel, m.Kernel, m.GoVersion, m.TailscaleVersion, m.AgentVersion, m.LoadAvg)
	fmt.Fprintf(w, " (the machine was shared with other work: read the ratios, not the absolute times).\n\n")
	fmt.Fprintf(w, "Both supervisors run the same tailscaled (kernel TUN) in the same netns lab against the same control server, ")
	fmt.Fprintf(w, "with their defaults except where the scenario says (containerboot: TS_USERSPACE=false, TS_AUTH_ONCE=true like the agent's --auth-once default, TS_ENABLE_HEALTH_CHECK and TS_ENABLE_METRICS), ")
	fmt.Fprintf(w, "alternating which goes first; cells are min / median / max over the runs; the ratio is agent / containerboot of the medians. ")
	fmt.Fprintf(w, "Times are measured from process start; probes are polled every %s and egress attempts start every %s, which bounds the resolution.\n\n", pollInterval, egressEvery)
	fmt.Fprintln(w, "| Scenario | Metric | ts-node-agent | containerboot | agent / cb | Target |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	for _, rw := range r.Rows {
		fmt.Fprintf(w, "| %s | %s (%s) | %s | %s | %s | %s |\n", rw.Scenario, mdEscape(rw.Metric), rw.Unit,
			mdEscape(rw.Agent.cell(rw.Unit)), mdEscape(rw.Containerboot.cell(rw.Unit)), rw.ratioCell(), rw.targetCell())
	}
	var misses []*row
	for _, rw := range r.Rows {
		if rw.Met != nil && !*rw.Met {
			misses = append(misses, rw)
		}
	}
	fmt.Fprintf(w, "\n## Targets missed\n\n")
	if len(misses) == 0 {
		fmt.Fprintln(w, "None.")
	}
	for _, rw := range misses {
		fmt.Fprintf(w, "- **%s, %s**: %s; agent %s, containerboot %s.", rw.Scenario, rw.Metric, rw.Target, rw.Agent.cell(rw.Unit), rw.Containerboot.cell(rw.Unit))
		if rw.Note != "" {
			fmt.Fprintf(w, " Why: %s", rw.Note)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "\n## Notes\n\n")
	for _, rw := range r.Rows {
		if rw.Note != "" && (rw.Met == nil || *rw.Met) {
			fmt.Fprintf(w, "- %s, %s: %s\n", rw.Scenario, rw.Metric, rw.Note)
		}
	}
	for _, o := range r.Observations {
		fmt.Fprintf(w, "- %s\n", o)
	}
	if len(r.Errors) > 0 {
		fmt.Fprintf(w, "\n## Errors\n\n")
		for _, e := range r.Errors {
			fmt.Fprintf(w, "- %s\n", strings.ReplaceAll(e, "\n", " "))
		}
	}
	fmt.Fprintf(w, "\nRaw samples and every probe load: `bench/results.json`.\n")
}

func mdEscape(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

// writeText prints the table for a terminal.
func (r *results) writeText(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SCENARIO\tMETRIC\tAGENT (min/median/max)\tCONTAINERBOOT\tRATIO\tTARGET")
	for _, rw := range r.Rows {
		fmt.Fprintf(tw, "%s\t%s (%s)\t%s\t%s\t%s\t%s\n", rw.Scenario, rw.Metric, rw.Unit,
			rw.Agent.cell(rw.Unit), rw.Containerboot.cell(rw.Unit), rw.ratioCell(), strings.ReplaceAll(rw.targetCell(), "**", ""))
	}
	tw.Flush()
	for _, e := range r.Errors {
		fmt.Fprintf(w, "error: %s\n", e)
	}
}

// write puts results.json and results.md into dir.
func (r *results) write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(b, '\n'), 0o644); err != nil {
		return err
	}
	var md strings.Builder
	r.writeMarkdown(&md)
	return os.WriteFile(filepath.Join(dir, "results.md"), []byte(md.String()), 0o644)
}
