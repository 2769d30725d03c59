package cluster

import (
	"net/netip"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// TestAgentKustomizationQuotes: a tag that YAML would read as a number
// (git describe gives an all-digit short hash now and then) stays a
// string, and the overlay sets what it says.
func TestAgentKustomizationQuotes(t *testing.T) {
	objs, err := Render(AgentKustomization("registry.example.com/ts-node-agent:9862890", netip.MustParseAddr("198.18.0.11"), "http://198.18.0.1", "http://198.19.0.1/"))
	if err != nil {
		t.Fatal(err)
	}
	var ds *appsv1.DaemonSet
	for _, o := range objs {
		if o.GetKind() == "DaemonSet" {
			ds = &appsv1.DaemonSet{}
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, ds); err != nil {
				t.Fatal(err)
			}
		}
	}
	if ds == nil {
		t.Fatal("no DaemonSet rendered")
	}
	c := ds.Spec.Template.Spec.Containers[0]
	if c.Image != "registry.example.com/ts-node-agent:9862890" || c.ImagePullPolicy != "Never" {
		t.Errorf("image %q, pull policy %q", c.Image, c.ImagePullPolicy)
	}
	var env []string
	for _, e := range c.Env {
		if strings.HasPrefix(e.Name, "TS_NODE_AGENT_") {
			env = append(env, e.Name+"="+e.Value)
		}
	}
	want := "TS_NODE_AGENT_LOGIN_SERVER=http://198.18.0.1 TS_NODE_AGENT_EGRESS_CHECK_URL=http://198.19.0.1/ TS_NODE_AGENT_EXPECTED_EGRESS_IP=198.18.0.11"
	if got := strings.Join(env, " "); got != want {
		t.Errorf("env %s\nwant %s", got, want)
	}
}
