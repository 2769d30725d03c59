package config

import (
	"fmt"
	"slices"
	"strings"
)

// unsupportedEnv are containerboot variables for features ts-node-agent does
// not have. Setting one to a non-empty value is a startup error naming it:
// silently ignoring it would leave the operator believing the feature works.
// Values are never echoed: any of them may hold a secret.
var unsupportedEnv = map[string]string{
	"TS_DEST_IP":                           "proxying tailnet traffic to a destination IP is out of scope",
	"TS_EXPERIMENTAL_DEST_DNS_NAME":        "proxying tailnet traffic to a DNS name is out of scope",
	"TS_TAILNET_TARGET_IP":                 "egress proxying to a tailnet IP is out of scope",
	"TS_TAILNET_TARGET_FQDN":               "egress proxying to a tailnet FQDN is out of scope",
	"TS_SERVE_CONFIG":                      "tailscale serve configuration is out of scope",
	"TS_ROUTES":                            "advertising subnet routes is out of scope",
	"TS_KUBE_SECRET":                       "state lives in --state-dir (TS_STATE_DIR) on a hostPath, not in a Kubernetes Secret",
	"TS_SOCKS5_SERVER":                     "pass --tailscaled-arg=--socks5-server=ADDR instead",
	"TS_OUTBOUND_HTTP_PROXY_LISTEN":        "pass --tailscaled-arg=--outbound-http-proxy-listen=ADDR instead",
	"TS_EXPERIMENTAL_VERSIONED_CONFIG_DIR": "tailscaled config files are not used; configure with flags and environment variables",
	"TS_EGRESS_PROXIES_CONFIG_PATH":        "Kubernetes operator egress proxies are out of scope",
	"TS_INGRESS_PROXIES_CONFIG_PATH":       "Kubernetes operator ingress proxies are out of scope",
	"TS_HEALTHCHECK_ADDR_PORT":             "probes and /healthz are served on --listen (TS_LOCAL_ADDR_PORT); point the probes there",
	"TS_DEBUG_ADDR_PORT":                   "pass --tailscaled-arg=--debug=ADDR:PORT instead",
	"TS_BOOT_TIMEOUT":                      "the agent has no boot timeout setting; startupProbe bounds the start",
	"TS_EXPERIMENTAL_CERT_SHARE":           "certificate sharing is out of scope",
	"EXPERIMENTAL_ALLOW_PROXYING_CLUSTER_TRAFFIC_VIA_INGRESS": "ingress proxying is out of scope",
}

// boolSwitchEnv are unsupported variables that switch a feature on: false is
// the agent's behaviour and is accepted.
var boolSwitchEnv = []string{
	"TS_EXPERIMENTAL_CERT_SHARE",
	"EXPERIMENTAL_ALLOW_PROXYING_CLUSTER_TRAFFIC_VIA_INGRESS",
}

// ignoredBoolEnv are containerboot switches the agent accepts and ignores:
// it always serves /healthz and /metrics on --listen, and has no serve config
// to auto-advertise. The value must still be a boolean; a false one, asking
// for something the agent does anyway, gets a warning.
var ignoredBoolEnv = map[string]string{
	"TS_ENABLE_HEALTH_CHECK":                     "/healthz is always served on --listen",
	"TS_ENABLE_METRICS":                          "/metrics is always served on --listen",
	"TS_EXPERIMENTAL_SERVICE_AUTO_ADVERTISEMENT": "there is no serve configuration to advertise",
}

// otherKnownEnv are read elsewhere or describe the environment; they are
// neither settings nor errors. Listed so the doc stays honest.
//
//	POD_IP, POD_IPS, POD_UID, KUBERNETES_SERVICE_HOST,
//	TS_KUBERNETES_READ_API_SERVER_ADDRESS_FROM_ENV (kube Secret state store
//	only), TS_TEST_* (containerboot's tests), TS_CERT_DOMAIN (a placeholder
//	inside TS_SERVE_CONFIG files, not a variable containerboot reads).

func unsupportedNames() []string {
	names := make([]string, 0, len(unsupportedEnv))
	for n := range unsupportedEnv {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// checkCompatEnv rejects unsupported containerboot variables and checks the
// ignored ones.
func (p *parser) checkCompatEnv() {
	for _, name := range unsupportedNames() {
		v, ok := p.lookup(name)
		if !ok {
			continue
		}
		if slices.Contains(boolSwitchEnv, name) {
			if on, err := parseBool(v); err == nil && !on {
				continue
			}
		}
		p.problems = append(p.problems, fmt.Errorf("unsupported %s is set: %s; accepted: unset or empty", name, unsupportedEnv[name]))
	}
	names := make([]string, 0, len(ignoredBoolEnv))
	for n := range ignoredBoolEnv {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, name := range names {
		v, ok := p.lookup(name)
		if !ok {
			continue
		}
		on, err := parseBool(v)
		if err != nil {
			p.problems = append(p.problems, invalid(name, v, err))
			continue
		}
		if !on {
			p.warn(fmt.Sprintf("%s=%s is ignored: %s", name, v, ignoredBoolEnv[name]))
		}
	}
}

const agentEnvPrefix = "TS_NODE_AGENT_"

// checkUnknownEnv rejects TS_NODE_AGENT_* variables that match no setting.
func (p *parser) checkUnknownEnv() {
	var known []string
	for _, s := range p.settings {
		for _, e := range s.env {
			if strings.HasPrefix(e, agentEnvPrefix) {
				known = append(known, e)
			}
		}
	}
	for _, kv := range p.environ {
		name, v, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, agentEnvPrefix) || v == "" || slices.Contains(known, name) {
			continue
		}
		hint := ""
		if best := closest(name, known); best != "" {
			hint = " (did you mean " + best + "?)"
		}
		p.problems = append(p.problems, fmt.Errorf("unknown variable %s%s; accepted: the TS_NODE_AGENT_* variables listed in --help", name, hint))
	}
}

// closest returns the candidate nearest to s by edit distance, if close.
func closest(s string, candidates []string) string {
	best, bestD := "", 4
	for _, c := range candidates {
		if d := editDistance(s, c); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
