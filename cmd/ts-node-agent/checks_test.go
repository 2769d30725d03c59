package main

import (
	"maps"
	"slices"
	"testing"

	"github.com/ts-node-agent/ts-node-agent/pkg/config"
	"github.com/ts-node-agent/ts-node-agent/pkg/hostnet"
	"github.com/ts-node-agent/ts-node-agent/pkg/probe"
	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

// TestProductionCheckMap: the role map the agent gives its probes, built
// from what each part declares, for the configurations that change it.
func TestProductionCheckMap(t *testing.T) {
	noEnv := func(string) (string, bool) { return "", false }
	informational := []string{"egress-ip", "egress-ip-pod", "udp-gro-forwarding", "role-watch", "role-source", "cni-marks"}
	for _, tt := range []struct {
		name          string
		args          []string
		want          map[snapshot.Role][]string
		informational []string
	}{
		{
			name: "defaults",
			want: map[snapshot.Role][]string{
				snapshot.RoleExit:   {"tun", "forwarding"},
				snapshot.RoleWorker: {"exit-node-ping", "tun", "exit-route-kernel", "exit-commit"},
				snapshot.RoleNone:   {"tun"},
			},
			informational: informational,
		},
		{
			name: "expected egress IP and a TCP check",
			args: []string{"--expected-egress-ip=198.18.0.10", "--egress-check-url=http://198.18.0.1/", "--check-tcp=db=198.18.0.5:5432"},
			want: map[snapshot.Role][]string{
				snapshot.RoleExit:   {"egress-ip", "tun", "forwarding"},
				snapshot.RoleWorker: {"exit-node-ping", "egress-ip", "egress-ip-pod", "tun", "exit-route-kernel", "exit-commit"},
				snapshot.RoleNone:   {"tun"},
			},
			informational: []string{"egress-ip", "egress-ip-pod", "tcp:db", "udp-gro-forwarding", "role-watch", "role-source", "cni-marks"},
		},
		{
			// Pods use the exit node only through the kernel TUN, and
			// nothing of the host network is checked.
			name: "userspace networking",
			args: []string{"--tun=userspace-networking", "--expected-egress-ip=198.18.0.10", "--egress-check-url=http://198.18.0.1/"},
			want: map[snapshot.Role][]string{
				snapshot.RoleExit:   {"egress-ip"},
				snapshot.RoleWorker: {"exit-node-ping", "egress-ip"},
			},
			informational: []string{"egress-ip", "egress-ip-pod", "role-watch", "role-source"},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := config.Parse(append([]string{"--role=none"}, tt.args...), noEnv)
			if err != nil {
				t.Fatal(err)
			}
			hn := hostnet.Defaults()
			hn.TUNName = cfg.TUN
			var o probe.Options
			o.Declare(checkDeclarations(cfg, hn)...)
			if !maps.EqualFunc(o.RoleChecks, tt.want, slices.Equal) {
				t.Errorf("role checks:\n got %v\nwant %v", o.RoleChecks, tt.want)
			}
			if !slices.Equal(o.Informational, tt.informational) {
				t.Errorf("informational:\n got %v\nwant %v", o.Informational, tt.informational)
			}
		})
	}
}
