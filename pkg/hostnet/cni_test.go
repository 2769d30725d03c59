package hostnet

import (
	"strings"
	"testing"
)

func TestDetectCNIs(t *testing.T) {
	for _, tt := range []struct {
		links []string
		want  []string
	}{
		{[]string{"lo", "eth0", "cni0", "flannel.1"}, nil},
		{[]string{"lo", "cilium_host", "cilium_net", "lxc12ab"}, []string{"Cilium"}},
		{[]string{"lo", "vxlan.calico", "cali1234"}, []string{"Calico"}},
		{[]string{"lo", "bpfin.cali", "bpfout.cali", "cali1234"}, []string{"Calico eBPF"}},
		{[]string{"cali"}, nil}, // the prefix alone is not a Calico veth
		{[]string{"kube-bridge", "eni1a2b"}, []string{"kube-router", "AWS VPC CNI"}},
	} {
		var got []string
		for _, c := range DetectCNIs(tt.links) {
			got = append(got, c.Name)
		}
		if strings.Join(got, ",") != strings.Join(tt.want, ",") {
			t.Errorf("DetectCNIs(%v) = %v, want %v", tt.links, got, tt.want)
		}
	}
}

func TestCNIMarksReport(t *testing.T) {
	ok, report := CNIMarksReport(nil, DefaultBypassMark)
	if !ok || !strings.Contains(report, "no CNI known to mark packets") {
		t.Errorf("no CNI: %v %q", ok, report)
	}
	ok, report = CNIMarksReport(DetectCNIs([]string{"bpfin.cali"}), DefaultBypassMark)
	if !ok || !strings.Contains(report, "Calico eBPF detected") || !strings.Contains(report, "clear of them") {
		t.Errorf("Calico eBPF with the default mark: %v %q", ok, report)
	}
	// The agent's old default, bit 24, is Calico eBPF's "seen" mark.
	ok, report = CNIMarksReport(DetectCNIs([]string{"bpfin.cali"}), Mark{Value: 0x1000000, Mask: 0x1000000})
	if ok || !strings.Contains(report, "0x1000000") || !strings.Contains(report, "choose another --bypass-mark") {
		t.Errorf("Calico eBPF with mark 0x1000000: %v %q", ok, report)
	}
	ok, report = CNIMarksReport(DetectCNIs([]string{"cilium_host"}), Mark{Value: 0xf00, Mask: 0xf00})
	if ok || !strings.Contains(report, "Cilium detected") {
		t.Errorf("Cilium with mark 0xf00: %v %q", ok, report)
	}
}
