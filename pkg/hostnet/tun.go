package hostnet

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// DefaultTUNDevice is the TUN clone device tailscaled opens.
const DefaultTUNDevice = "/dev/net/tun"

// The TUN clone device's numbers (Documentation/admin-guide/devices.txt:
// misc major 10, minor 200).
const (
	tunMajor = 10
	tunMinor = 200
)

// tunDeviceMode is the mode of a created /dev/net/tun: tailscaled runs as
// root in the same container, so nobody else needs it (as containerboot).
const tunDeviceMode = 0o600

// hasCapNetAdmin reports whether the calling thread has CAP_NET_ADMIN in
// its effective set. A variable so that tests can replace it.
var hasCapNetAdmin = func() (bool, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false, err
	}
	return data[0].Effective&(1<<unix.CAP_NET_ADMIN) != 0, nil
}

// EnsureTUNDevice makes sure the TUN clone device at path ("" means
// DefaultTUNDevice) exists and can be used: it creates the character
// device 10:200 (and its directory) when missing, refuses anything else at
// that path, opens it to prove the kernel has TUN, and checks that the
// agent (so tailscaled, its child) has CAP_NET_ADMIN. Each failure names
// what the operator must change. Not for --tun=userspace-networking.
func EnsureTUNDevice(path string) error {
	if path == "" {
		path = DefaultTUNDevice
	}
	if err := createTUNNode(path); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return explainTUNOpenErr(path, err, isNodev(filepath.Dir(path)))
	}
	f.Close()
	ok, err := hasCapNetAdmin()
	if err != nil {
		return fmt.Errorf("check TUN device %s: read capabilities: %w", path, err)
	}
	if !ok {
		return fmt.Errorf("check TUN device %s: the container lacks CAP_NET_ADMIN, which tailscaled needs to create its TUN device and routes: "+
			`add it (securityContext.capabilities.add: ["NET_ADMIN"]) or use --tun=%s`, path, UserspaceNetworking)
	}
	return nil
}

// createTUNNode creates the device node if missing and verifies what is
// at path.
func createTUNNode(path string) error {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return fmt.Errorf("create TUN device %s: %w", path, err)
		}
		dev := unix.Mkdev(tunMajor, tunMinor)
		merr := unix.Mknod(path, unix.S_IFCHR|tunDeviceMode, int(dev))
		switch {
		case errors.Is(merr, unix.EPERM):
			return fmt.Errorf("create TUN device %s: %w: the container lacks CAP_MKNOD: "+
				`add it (securityContext.capabilities.add: ["MKNOD"]), or mount the node's %s with a hostPath volume of type CharDevice`,
				path, merr, DefaultTUNDevice)
		case merr != nil && !errors.Is(merr, unix.EEXIST): // EEXIST: created concurrently, check it below
			return fmt.Errorf("create TUN device %s: mknod: %w", path, merr)
		}
		fi, err = os.Stat(path)
	}
	if err != nil {
		return fmt.Errorf("check TUN device %s: %w", path, err)
	}
	if fi.Mode()&fs.ModeCharDevice == 0 || fi.Mode()&fs.ModeDevice == 0 {
		return fmt.Errorf("check TUN device %s: it exists but is not a character device (mode %s), want the TUN device %d:%d: remove it or fix the volume mounted there",
			path, fi.Mode(), tunMajor, tunMinor)
	}
	st, ok := fi.Sys().(*unix.Stat_t)
	if !ok {
		// os.Stat on Linux always yields a syscall.Stat_t; be defensive.
		var s unix.Stat_t
		if err := unix.Stat(path, &s); err != nil {
			return fmt.Errorf("check TUN device %s: %w", path, err)
		}
		st = &s
	}
	if maj, mnr := unix.Major(st.Rdev), unix.Minor(st.Rdev); maj != tunMajor || mnr != tunMinor {
		return fmt.Errorf("check TUN device %s: it is character device %d:%d, want the TUN device %d:%d: remove it or fix the volume mounted there",
			path, maj, mnr, tunMajor, tunMinor)
	}
	return nil
}

// explainTUNOpenErr turns an error opening the TUN device into what the
// operator must do about it.
func explainTUNOpenErr(path string, err error, nodev bool) error {
	switch {
	case errors.Is(err, unix.ENODEV), errors.Is(err, unix.ENXIO):
		return fmt.Errorf("open TUN device %s: %w: the kernel lacks TUN support: load the module on the node (modprobe tun) or use a kernel with CONFIG_TUN, or use --tun=%s",
			path, err, UserspaceNetworking)
	case nodev && (errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM)):
		return fmt.Errorf("open TUN device %s: %w: the filesystem holding it is mounted nodev: mount the node's %s with a hostPath volume of type CharDevice",
			path, err, DefaultTUNDevice)
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
		return fmt.Errorf("open TUN device %s: %w: tailscaled needs CAP_NET_ADMIN and access to the character device %d:%d: "+
			`run as root with securityContext.capabilities.add: ["NET_ADMIN"] (and the device allowed), or securityContext.privileged: true`,
			path, err, tunMajor, tunMinor)
	}
	return fmt.Errorf("open TUN device %s: %w", path, err)
}

// isNodev reports whether the filesystem holding dir is mounted nodev.
func isNodev(dir string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return false
	}
	return st.Flags&unix.ST_NODEV != 0
}
