package deploy_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"

	"github.com/ts-node-agent/ts-node-agent/internal/testenv"
)

// knownMetrics are the agent's metrics (DESIGN section 6). Rules and the
// dashboard may use only these (and Prometheus' up).
var knownMetrics = []string{
	"ts_node_agent_node_key_expiry_timestamp_seconds",
	"ts_node_agent_build_info",
	"ts_node_agent_role",
	"ts_node_agent_startup_duration_seconds",
	"ts_node_agent_ready",
	"ts_node_agent_live",
	"ts_node_agent_check_up",
	"ts_node_agent_check_duration_seconds",
	"ts_node_agent_tailscaled_up",
	"ts_node_agent_tailscaled_restarts_total",
	"ts_node_agent_backend_state",
	"ts_node_agent_peers",
	"ts_node_agent_exit_node_info",
	"ts_node_agent_exit_node_online",
	"ts_node_agent_exit_node_switches_total",
	"ts_node_agent_exit_route_approved",
	"ts_node_agent_ip_forwarding_enabled",
	"ts_node_agent_egress_ip_info",
	"ts_node_agent_egress_ip_match",
	"ts_node_agent_egress_ip_changes_total",
	"ts_node_agent_tcp_check_up",
	"ts_node_agent_tcp_check_seconds",
	"ts_node_agent_tailnet_ping_seconds",
}

// wantAlerts are the alerts DESIGN section 7 and the deploy issue ask for,
// with the expression each must contain.
var wantAlerts = map[string]string{
	"TSNodeAgentExitRouteNotApproved": "ts_node_agent_exit_route_approved == 0",
	"TSNodeAgentNoHealthyExitNode":    "ts_node_agent_exit_node_online == 0",
	"TSNodeAgentEgressIPMismatch":     "ts_node_agent_egress_ip_match == 0",
	"TSNodeAgentEgressIPNotUnified":   "count(count by (ip) (ts_node_agent_egress_ip_info)) > 1",
	"TSNodeAgentTailscaledRestarting": "increase(ts_node_agent_tailscaled_restarts_total[15m]) > 3",
	"TSNodeAgentNotReady":             "ts_node_agent_ready == 0",
	"TSNodeAgentNodeKeyExpiring":      "ts_node_agent_node_key_expiry_timestamp_seconds - time() < 14 * 86400",
}

var metricName = regexp.MustCompile(`\bts_node_agent_[a-z0-9_]+`)

func checkMetricNames(t *testing.T, where, expr string) {
	t.Helper()
	for _, m := range metricName.FindAllString(expr, -1) {
		if !slices.Contains(knownMetrics, m) {
			t.Errorf("%s uses %s, which the agent does not export", where, m)
		}
	}
}

// promtool returns the path of promtool. Without it the test fails in CI
// (CI=true) and is skipped elsewhere, saying how to install it.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		testenv.SkipOrFail(t, "promtool not found: apt-get install prometheus (Debian's package ships promtool); .ci/run installs it")
	}
	return p
}

func runPromtool(t *testing.T, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command(promtool(t), args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func monitoring(t *testing.T) objects {
	t.Helper()
	o := render(t, "deploy/monitoring")
	if len(o.PodMonitors) != 1 || len(o.PrometheusRules) != 1 || len(o.ConfigMaps) != 1 {
		t.Fatalf("want one PodMonitor, PrometheusRule and ConfigMap, got %d, %d, %d", len(o.PodMonitors), len(o.PrometheusRules), len(o.ConfigMaps))
	}
	return o
}

// TestPodMonitorScrapesTheAgent: the PodMonitor selects the DaemonSet's
// pods in their namespace, on the container's named metrics port.
func TestPodMonitorScrapesTheAgent(t *testing.T) {
	pm := monitoring(t).PodMonitors[0]
	ds := render(t, "deploy/daemonset/base").DaemonSets[0]
	sel, err := metav1.LabelSelectorAsSelector(&pm.Spec.Selector)
	if err != nil || sel.Empty() || !sel.Matches(labels.Set(ds.Spec.Template.Labels)) {
		t.Errorf("PodMonitor selector %v does not select the DaemonSet's pods %v (%v)", pm.Spec.Selector, ds.Spec.Template.Labels, err)
	}
	if pm.Namespace != ds.Namespace && !pm.Spec.NamespaceSelector.Any && !slices.Contains(pm.Spec.NamespaceSelector.MatchNames, ds.Namespace) {
		t.Errorf("PodMonitor in %s does not look into namespace %s", pm.Namespace, ds.Namespace)
	}
	ports := map[string]bool{}
	for _, p := range ds.Spec.Template.Spec.Containers[0].Ports {
		ports[p.Name] = true
	}
	if len(pm.Spec.PodMetricsEndpoints) == 0 {
		t.Fatal("no podMetricsEndpoints")
	}
	for _, ep := range pm.Spec.PodMetricsEndpoints {
		if ep.Port == nil || !ports[*ep.Port] {
			t.Errorf("endpoint port %v is not a named port of the agent container", ep.Port)
		}
		if ep.Path != "" && ep.Path != "/metrics" {
			t.Errorf("endpoint path %q, want /metrics", ep.Path)
		}
		hasNode := slices.ContainsFunc(ep.RelabelConfigs, func(r monitoringv1.RelabelConfig) bool {
			return r.TargetLabel == "node" && slices.Contains(r.SourceLabels, "__meta_kubernetes_pod_node_name")
		})
		if !hasNode {
			t.Error("no relabeling to a node label: the alerts and the dashboard are per node")
		}
	}
}

// TestPrometheusRule extracts the rule group, checks it with promtool and
// runs the alert unit tests of deploy/monitoring/tests.
func TestPrometheusRule(t *testing.T) {
	pr := monitoring(t).PrometheusRules[0]
	seen := map[string]bool{}
	for _, g := range pr.Spec.Groups {
		for _, r := range g.Rules {
			expr := r.Expr.String()
			checkMetricNames(t, "alert "+r.Alert, expr)
			if r.Alert == "" {
				continue
			}
			seen[r.Alert] = true
			if want, ok := wantAlerts[r.Alert]; ok && !strings.Contains(expr, want) {
				t.Errorf("alert %s: expression %q does not contain %q", r.Alert, expr, want)
			}
			if r.Labels["severity"] == "" {
				t.Errorf("alert %s has no severity label", r.Alert)
			}
			for _, a := range []string{"summary", "description"} {
				if r.Annotations[a] == "" {
					t.Errorf("alert %s has no %s annotation", r.Alert, a)
				}
			}
		}
	}
	for a := range wantAlerts {
		if !seen[a] {
			t.Errorf("alert %s missing", a)
		}
	}

	dir := t.TempDir()
	rules, err := yaml.Marshal(pr.Spec)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "rules.yaml"), rules)
	tests := readFile(t, filepath.Join(repoRoot(t), "deploy", "monitoring", "tests", "alerts_test.yaml"))
	writeFile(t, filepath.Join(dir, "alerts_test.yaml"), tests)
	checkAlertTestsCoverEveryAlert(t, tests, seen)

	runPromtool(t, dir, "check", "rules", "rules.yaml")
	runPromtool(t, dir, "test", "rules", "alerts_test.yaml")
}

// checkAlertTestsCoverEveryAlert: every alert has a test case where it
// fires and one where it does not.
func checkAlertTestsCoverEveryAlert(t *testing.T, tests []byte, alerts map[string]bool) {
	var f struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string `json:"alertname"`
				ExpAlerts []any  `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	if err := yaml.Unmarshal(tests, &f); err != nil {
		t.Fatalf("alerts_test.yaml: %v", err)
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range f.Tests {
		for _, a := range tc.AlertRuleTest {
			if !alerts[a.Alertname] {
				t.Errorf("alerts_test.yaml tests %s, which is not an alert of the PrometheusRule", a.Alertname)
			}
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				quiet[a.Alertname] = true
			}
		}
	}
	for a := range alerts {
		if !fires[a] || !quiet[a] {
			t.Errorf("alerts_test.yaml: %s needs a case where it fires (%v) and one where it does not (%v)", a, fires[a], quiet[a])
		}
	}
}

// TestDashboard: the dashboard is valid JSON, shipped as the ConfigMap,
// covers the metrics the issue lists, and every query is valid PromQL
// (checked by promtool as recording rules, Grafana variables substituted).
func TestDashboard(t *testing.T) {
	raw := readFile(t, filepath.Join(repoRoot(t), "deploy", "monitoring", "dashboard.json"))
	var d struct {
		UID    string `json:"uid"`
		Title  string `json:"title"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Name string `json:"name"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("dashboard.json: %v", err)
	}
	if d.UID == "" || d.Title == "" {
		t.Error("dashboard without uid or title")
	}
	cm := monitoring(t).ConfigMaps[0]
	if cm.Labels["grafana_dashboard"] != "1" || len(cm.Data) != 1 {
		t.Errorf("dashboard ConfigMap %s: labels %v, %d files", cm.Name, cm.Labels, len(cm.Data))
	}
	for _, v := range cm.Data {
		if v != string(raw) {
			t.Error("the ConfigMap's dashboard differs from dashboard.json")
		}
	}

	vars := strings.NewReplacer("$__range", "1h", "$__rate_interval", "2m", "$__interval", "1m", "$node", ".*")
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	used := map[string]bool{}
	n := 0
	for _, p := range d.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			expr := vars.Replace(tg.Expr)
			if strings.Contains(expr, "$") {
				t.Errorf("panel %q: unknown variable in %q", p.Title, tg.Expr)
			}
			checkMetricNames(t, fmt.Sprintf("panel %q", p.Title), expr)
			for _, m := range metricName.FindAllString(expr, -1) {
				used[m] = true
			}
			n++
			q, _ := json.Marshal(expr)
			fmt.Fprintf(&rules, "      - record: dashboard:query%d\n        expr: %s\n", n, q)
		}
	}
	for _, m := range []string{
		"ts_node_agent_ready", "ts_node_agent_role", "ts_node_agent_exit_node_info",
		"ts_node_agent_exit_node_switches_total", "ts_node_agent_egress_ip_info",
		"ts_node_agent_tailscaled_restarts_total", "ts_node_agent_check_up",
	} {
		if !used[m] {
			t.Errorf("no dashboard panel shows %s", m)
		}
	}
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "dashboard-queries.yaml"), []byte(rules.String()))
	runPromtool(t, dir, "check", "rules", "dashboard-queries.yaml")
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t *testing.T, p string, b []byte) {
	t.Helper()
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
