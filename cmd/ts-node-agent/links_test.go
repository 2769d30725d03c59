package main

import (
	"bufio"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// agentTags reads AGENT_TAGS from the Makefile: the build tags of the
// binary the image ships.
func agentTags(t *testing.T) string {
	t.Helper()
	f, err := os.Open("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "AGENT_TAGS := "); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatal("Makefile: no AGENT_TAGS line")
	return ""
}

// TestBinaryLinks keeps out of the agent's binary what made it heavy:
// every package a binary links is initialized at start and paged in, and
// the agent's resident memory follows its size. client-go's typed clients
// (even one group's) link all 56 API group packages through
// kubernetes/scheme, gentype links client-go's fakes, and the event bus's
// debug pages link html/template and net/http/pprof. Of the apps group
// the agent reads one DaemonSet's metadata, through the metadata client.
func TestBinaryLinks(t *testing.T) {
	out, err := exec.Command("go", "list", "-tags", agentTags(t), "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	forbidden := []string{
		"k8s.io/client-go/kubernetes",
		"k8s.io/client-go/kubernetes/scheme",
		"k8s.io/client-go/gentype",
		"k8s.io/client-go/testing",
		"html/template",
		"net/http/pprof",
		"tailscale.com/tsweb",
	}
	var apiGroups []string
	for _, p := range strings.Fields(string(out)) {
		for _, f := range forbidden {
			if p == f {
				t.Errorf("the agent links %s", p)
			}
		}
		if strings.HasPrefix(p, "k8s.io/api/") {
			apiGroups = append(apiGroups, p)
		}
	}
	slices.Sort(apiGroups)
	want := []string{"k8s.io/api/core/v1", "k8s.io/api/discovery/v1", "k8s.io/api/networking/v1"}
	if !slices.Equal(apiGroups, want) {
		t.Errorf("API group packages linked: %v, want only %v", apiGroups, want)
	}
}
