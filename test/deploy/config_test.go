package deploy_test

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/ts-node-agent/ts-node-agent/pkg/config"
)

// downward are the values kubelet gives the downward API fields.
var downward = map[string]string{
	"spec.nodeName":      "node-1",
	"metadata.name":      "ts-node-agent-x7k2q",
	"metadata.namespace": agentNamespace,
}

// containerConfig parses the container's args and env with the agent's
// own configuration parser, as the agent does at startup. Files the pod
// mounts (the auth key) are replaced by a temporary file.
func containerConfig(t *testing.T, c *corev1.Container) (*config.Config, error) {
	t.Helper()
	keyFile, _ := argValue(c.Args, "--authkey-file")
	tmpKey := filepath.Join(t.TempDir(), "authkey")
	if err := os.WriteFile(tmpKey, []byte("tskey-auth-test\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	mapFile := func(s string) string {
		if keyFile == "" {
			return s
		}
		return strings.ReplaceAll(s, keyFile, tmpKey)
	}
	var args []string
	for _, a := range c.Args {
		args = append(args, mapFile(a))
	}
	env := map[string]string{}
	var environ []string
	for _, e := range c.Env {
		v := e.Value
		if e.ValueFrom != nil {
			if e.ValueFrom.FieldRef == nil {
				t.Fatalf("env %s: only downward API fieldRefs are expected", e.Name)
			}
			var ok bool
			if v, ok = downward[e.ValueFrom.FieldRef.FieldPath]; !ok {
				t.Fatalf("env %s: unexpected fieldRef %s", e.Name, e.ValueFrom.FieldRef.FieldPath)
			}
		}
		v = mapFile(v)
		env[e.Name] = v
		environ = append(environ, e.Name+"="+v)
	}
	getenv := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	return config.Parse(args, getenv, config.WithEnviron(environ))
}

// TestManifestConfigurationIsValid: every variant's container configuration
// is accepted by the agent (a typo in a flag or an unknown
// TS_NODE_AGENT_* variable fails here, not in a crash-looping pod), and says
// what the manifests promise.
func TestManifestConfigurationIsValid(t *testing.T) {
	for _, v := range daemonSetVariants {
		t.Run(v.name, func(t *testing.T) {
			o := render(t, v.dir)
			if len(o.DaemonSets) != 1 {
				t.Fatalf("%d DaemonSets", len(o.DaemonSets))
			}
			c := &o.DaemonSets[0].Spec.Template.Spec.Containers[0]
			cfg, err := containerConfig(t, c)
			if err != nil {
				t.Fatalf("the agent rejects the manifest's configuration: %v", err)
			}
			if cfg.Role != config.Role("label") {
				t.Errorf("role %q: the DaemonSet must read the role from the Node label", cfg.Role)
			}
			if cfg.NodeName != downward["spec.nodeName"] || cfg.PodName != downward["metadata.name"] || cfg.PodNamespace != agentNamespace {
				t.Errorf("node %q, pod %q/%q: the downward API values do not reach the agent", cfg.NodeName, cfg.PodNamespace, cfg.PodName)
			}
			if !cfg.AuthKey.IsSet() || cfg.AuthKey.Path() == "" {
				t.Error("the auth key is not read from a file")
			}
			if cfg.StateDir != "/var/lib/ts-node-agent" {
				t.Errorf("state dir %q", cfg.StateDir)
			}
			if cfg.TUN == "userspace-networking" {
				t.Error("userspace networking: the DaemonSet routes the node's traffic, it needs the kernel TUN")
			}
			switch v.name {
			case "example", "example+privileged":
				for _, p := range []string{"10.42.0.0/16", "10.43.0.0/16"} {
					if !slices.Contains(cfg.BypassCIDRs, netip.MustParsePrefix(p)) {
						t.Errorf("bypass CIDRs %v: the k3s default %s is missing", cfg.BypassCIDRs, p)
					}
				}
				if len(cfg.ExitNodes) != 2 {
					t.Errorf("exit node candidates %v, want two", cfg.ExitNodes)
				}
				if len(cfg.EgressCheckURLs) == 0 || len(cfg.ExpectedEgressIPs) == 0 {
					t.Errorf("egress check URLs %v and expected egress IPs %v: the example sets both", cfg.EgressCheckURLs, cfg.ExpectedEgressIPs)
				}
			case "headscale":
				if !strings.HasPrefix(cfg.LoginServer, "https://") {
					t.Errorf("login server %q", cfg.LoginServer)
				}
			}
		})
	}
}
