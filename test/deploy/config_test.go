package deploy_test

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/ts-node-agent/ts-node-agent/internal/tstest"
	"github.com/ts-node-agent/ts-node-agent/pkg/config"
)

// downward are the values kubelet gives the downward API fields.
var downward = map[string]string{
	"spec.nodeName":      "node-1",
	"metadata.name":      "ts-node-agent-x7k2q",
	"metadata.namespace": agentNamespace,
}

// containerConfig parses the container's args and env with the agent's
// own configuration parser, as the agent does at startup. The credential
// files the pod mounts (the auth key or OAuth client secret of
// --authkey-file, the projected token of TS_ID_TOKEN=file:) are replaced
// by temporary files holding what an operator puts there: keyContent for
// --authkey-file, a JWT for TS_AUDIENCE for the token.
func containerConfig(t *testing.T, c *corev1.Container, keyContent string) (*config.Config, error) {
	t.Helper()
	files := map[string]string{} // pod path -> temporary file
	mount := func(podPath, content string) {
		tmp := filepath.Join(t.TempDir(), filepath.Base(podPath))
		if err := os.WriteFile(tmp, []byte(content+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		files[podPath] = tmp
	}
	if keyFile, ok := argValue(c.Args, "--authkey-file"); ok {
		mount(keyFile, keyContent)
	}
	if token, ok := envValue(c, "TS_ID_TOKEN"); ok && strings.HasPrefix(token, "file:") {
		aud, _ := envValue(c, "TS_AUDIENCE")
		mount(strings.TrimPrefix(token, "file:"), tstest.UnsignedJWT(map[string]any{"aud": aud}))
	}
	mapFile := func(s string) string {
		for podPath, tmp := range files {
			s = strings.ReplaceAll(s, podPath, tmp)
		}
		return s
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
			key := "tskey-auth-test"
			if v.name == "oauth-client" {
				// What the overlay tells the operator to put in the Secret.
				key = "tskey-client-test?ephemeral=false&preauthorized=true"
			}
			cfg, err := containerConfig(t, c, key)
			if err != nil {
				t.Fatalf("the agent rejects the manifest's configuration: %v", err)
			}
			if cfg.Role != config.Role("label") {
				t.Errorf("role %q: the DaemonSet must read the role from the Node label", cfg.Role)
			}
			if cfg.NodeName != downward["spec.nodeName"] || cfg.PodName != downward["metadata.name"] || cfg.PodNamespace != agentNamespace {
				t.Errorf("node %q, pod %q/%q: the downward API values do not reach the agent", cfg.NodeName, cfg.PodNamespace, cfg.PodName)
			}
			switch {
			case v.name == "workload-identity":
				if cfg.IDToken.Path() == "" || cfg.ClientID == "" || cfg.Audience == "" || !cfg.Mints() {
					t.Errorf("workload identity: ID token %v, client ID %q, audience %q", cfg.IDToken, cfg.ClientID, cfg.Audience)
				}
			case !cfg.AuthKey.IsSet() || cfg.AuthKey.Path() == "":
				t.Error("the auth key is not read from a file")
			case v.name == "oauth-client" && !cfg.Mints():
				t.Error("the OAuth client secret in the auth key file mints no key")
			}
			if cfg.Mints() && len(cfg.AdvertiseTags) == 0 {
				t.Error("minting keys without --advertise-tags")
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
