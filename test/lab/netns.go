package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
)

// NetNS is one network namespace of the lab: the wan router, a node or a
// pod.
// Everything it does happens inside the namespace: in-process sockets are
// created on a thread locked into it, processes run through `ip netns exec`.
type NetNS struct {
	lab    *Lab
	label  string // short name inside the lab: "wan", the node name, or "<node>-pod"
	name   string // namespace name, /run/netns/<name>
	handle netns.NsHandle
	dir    string // working directory: logs, state
}

// Name is the name inside the lab: "wan", the node's name, or
// "<node>-pod" for a pod.
func (ns *NetNS) Name() string { return ns.label }

// NSName is the namespace's name as `ip netns` shows it
// (tsl-<id>-<name>), e.g. for `ip netns exec NSNAME ...`.
func (ns *NetNS) NSName() string { return ns.name }

// Dir is the namespace's working directory under the lab directory; process
// logs go there.
func (ns *NetNS) Dir() string { return ns.dir }

// Do runs fn on an OS thread locked into the namespace. Sockets fn creates
// stay in the namespace after Do returns. fn must not start goroutines that
// create sockets (they would run on other threads, in the lab process's own
// namespace). The thread is restored even when fn fails or panics; if the
// restore itself fails the thread is discarded, never reused.
func (ns *NetNS) Do(fn func() error) error {
	return doInNetNS(ns.handle, fn)
}

// doInNetNS runs fn on a fresh goroutine whose thread is locked and moved
// into target, the way containernetworking's ns.Do does: if moving the thread
// back fails, the goroutine exits still locked and the runtime destroys the
// thread instead of returning it to the pool.
func doInNetNS(target netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() { errc <- doLocked(target, fn) }()
	return <-errc
}

func doLocked(target netns.NsHandle, fn func() error) (err error) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		return fmt.Errorf("enter netns: %w", err)
	}
	defer func() {
		if rerr := netns.Set(orig); rerr != nil {
			// Stay locked: the thread dies with this goroutine.
			err = errors.Join(err, fmt.Errorf("restore netns: %w", rerr))
			return
		}
		runtime.UnlockOSThread()
	}()
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic inside netns: %v", r)
		}
	}()
	return fn()
}

// requireIPLiteral refuses host names: resolving them would send DNS
// queries from goroutines outside the namespace.
func requireIPLiteral(address string) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return fmt.Errorf("lab: address %q: %w", address, err)
	}
	if host == "" {
		return nil
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return fmt.Errorf("lab: address %q: the lab only dials and listens on IP literals", address)
	}
	return nil
}

// DialContext opens a connection from inside the namespace. The host must
// be an IP literal.
func (ns *NetNS) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	if err := requireIPLiteral(address); err != nil {
		return nil, err
	}
	var c net.Conn
	err := ns.Do(func() error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// Listen opens a listener inside the namespace (the host must be an IP
// literal or empty).
func (ns *NetNS) Listen(network, address string) (net.Listener, error) {
	if err := requireIPLiteral(address); err != nil {
		return nil, err
	}
	var ln net.Listener
	err := ns.Do(func() error {
		var err error
		ln, err = net.Listen(network, address)
		return err
	})
	return ln, err
}

// ListenPacket opens a packet socket inside the namespace.
func (ns *NetNS) ListenPacket(network, address string) (net.PacketConn, error) {
	if err := requireIPLiteral(address); err != nil {
		return nil, err
	}
	var pc net.PacketConn
	err := ns.Do(func() error {
		var err error
		pc, err = net.ListenPacket(network, address)
		return err
	})
	return pc, err
}

// HTTPClient returns a client whose connections are made from inside the
// namespace, so they follow the namespace's routing (a worker's requests go
// through its exit node). No proxy, no keep-alives, 10 s timeout.
func (ns *NetNS) HTTPClient() *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			Proxy:             nil,
			DialContext:       ns.DialContext,
			DisableKeepAlives: true,
		},
	}
}

// HTTPGet fetches url from inside the namespace and returns the body
// (at most 1 MiB). A status other than 200 is an error.
func (ns *NetNS) HTTPGet(ctx context.Context, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", fmt.Errorf("lab: GET %s from %s: %w", url, ns.label, err)
	}
	res, err := ns.HTTPClient().Do(req)
	if err != nil {
		return "", fmt.Errorf("lab: GET %s from %s: %w", url, ns.label, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	if err != nil {
		return "", fmt.Errorf("lab: GET %s from %s: reading body: %w", url, ns.label, err)
	}
	if res.StatusCode != http.StatusOK {
		return string(body), fmt.Errorf("lab: GET %s from %s: %s", url, ns.label, res.Status)
	}
	return string(body), nil
}

// downloadTimeout bounds a Download whose context has no deadline.
const downloadTimeout = time.Minute

// Download fetches url from inside the namespace (e.g. Lab.DownloadURL(4<<20))
// and returns the number of body bytes, which it reads to the end without
// keeping them. A status other than 200 is an error, and so is a body
// shorter than its Content-Length. ctx bounds the whole transfer (a minute
// if it has no deadline); the response header must come within 10 s.
func (ns *NetNS) Download(ctx context.Context, url string) (int64, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, downloadTimeout)
		defer cancel()
	}
	fail := func(err error) error { return fmt.Errorf("lab: download %s from %s: %w", url, ns.label, err) }
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, fail(err)
	}
	client := &http.Client{Transport: &http.Transport{
		Proxy:                 nil,
		DialContext:           ns.DialContext,
		DisableKeepAlives:     true,
		DisableCompression:    true,
		ResponseHeaderTimeout: 10 * time.Second,
	}}
	res, err := client.Do(req)
	if err != nil {
		return 0, fail(err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(res.Body, 512))
		return 0, fail(fmt.Errorf("%s: %s", res.Status, strings.TrimSpace(string(msg))))
	}
	n, err := io.Copy(io.Discard, res.Body)
	if err != nil {
		return n, fail(fmt.Errorf("after %d bytes: %w", n, err))
	}
	if res.ContentLength >= 0 && n != res.ContentLength {
		return n, fail(fmt.Errorf("short body: %d of %d bytes", n, res.ContentLength))
	}
	return n, nil
}

// EgressIP asks the lab's echo service which source address it sees for
// this namespace: the node's own LAN address, or its exit node's.
func (ns *NetNS) EgressIP(ctx context.Context) (netip.Addr, error) {
	body, err := ns.HTTPGet(ctx, ns.lab.EchoURL())
	if err != nil {
		return netip.Addr{}, err
	}
	ip, err := netip.ParseAddr(strings.TrimSpace(body))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("lab: echo answered %q: %w", body, err)
	}
	return ip, nil
}

// WriteSysctl writes a sysctl of the namespace, e.g.
// WriteSysctl("net.ipv4.ip_forward", "1").
func (ns *NetNS) WriteSysctl(name, value string) error {
	path := sysctlPath(name)
	return ns.Do(func() error {
		if err := os.WriteFile(path, []byte(value+"\n"), 0o644); err != nil {
			return fmt.Errorf("lab: sysctl %s=%s in %s: %w", name, value, ns.label, err)
		}
		return nil
	})
}

// ReadSysctl reads a sysctl of the namespace.
func (ns *NetNS) ReadSysctl(name string) (string, error) {
	path := sysctlPath(name)
	var v string
	err := ns.Do(func() error {
		b, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("lab: sysctl %s in %s: %w", name, ns.label, err)
		}
		v = strings.TrimSpace(string(b))
		return nil
	})
	return v, err
}

func sysctlPath(name string) string {
	if strings.HasPrefix(name, "/") {
		return name
	}
	return filepath.Join("/proc/sys", strings.ReplaceAll(name, ".", "/"))
}

// nsCommand returns a command running argv inside the namespace through
// `ip netns exec`, in its own process group, killed if the lab process dies.
// Cancelling ctx kills the whole group.
func (ns *NetNS) nsCommand(ctx context.Context, argv []string, env []string) *exec.Cmd {
	args := append([]string{"netns", "exec", ns.name}, argv...)
	cmd := exec.CommandContext(ctx, ns.lab.ipPath, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Dir = ns.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	return cmd
}

// Exec runs argv inside the namespace, waits for it and returns its
// combined output. Cancelling ctx kills its whole process group.
func (ns *NetNS) Exec(ctx context.Context, argv ...string) ([]byte, error) {
	if len(argv) == 0 {
		return nil, errors.New("lab: Exec: empty argv")
	}
	out, err := ns.nsCommand(ctx, argv, nil).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("lab: exec %q in %s: %w: %s", argv, ns.label, err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

// Start runs argv inside the namespace in the background, in its own
// process group. env is added to the lab process's environment (later
// entries win). Output goes to a log file in Dir() (see Process.LogPath)
// and, if Options.ProcessOutput is set, there too, line by line with a
// "label/argv0: " prefix. The lab stops the process on Close.
func (ns *NetNS) Start(argv []string, env []string) (*Process, error) {
	return ns.lab.start(ns, argv, env)
}
