package hostnet

import (
	"errors"
	"fmt"

	"tailscale.com/net/netkernelconf"
	"tailscale.com/net/netmon"
)

// EnableUDPGROForwarding enables UDP GRO forwarding on the interface that
// holds the default route, for the exit role with forwarding optimizations
// (tailscale.com/kb/1320). It needs tailscaled's TUN to exist (the setting
// only helps when the TUN does UDP segmentation), so it runs after
// tailscaled is up; the Watcher calls it whenever the TUN or the
// default-route interface changes. It returns the interface it looked at.
// A failure is not fatal: some drivers (veth on old kernels, virtio
// without the feature) cannot do it.
func EnableUDPGROForwarding(tunName string) (iface string, err error) {
	return enableUDPGROForwarding(tunName, defaultRouteInterface)
}

// defaultRouteInterface is netmon's lookup of the interface that holds
// the default route (skipping Tailscale interfaces).
func defaultRouteInterface() (string, error) { return netmon.DefaultRouteInterface() }

func enableUDPGROForwarding(tunName string, defaultRouteInterface func() (string, error)) (string, error) {
	iface, err := defaultRouteInterface()
	if err != nil {
		return "", fmt.Errorf("enable UDP GRO forwarding: find the default-route interface: %w", err)
	}
	if iface == "" {
		return "", errors.New("enable UDP GRO forwarding: no default-route interface")
	}
	warn, err := netkernelconf.CheckUDPGROForwarding(tunName, iface)
	if err != nil {
		return iface, fmt.Errorf("enable UDP GRO forwarding on %q: %w", iface, err)
	}
	if warn == nil {
		return iface, nil // already optimal, or irrelevant for this TUN
	}
	if err := netkernelconf.SetUDPGROForwarding(tunName, iface); err != nil {
		return iface, fmt.Errorf("enable UDP GRO forwarding on %q: %w", iface, err)
	}
	return iface, nil
}
