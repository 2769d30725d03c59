package supervisor

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ts-node-agent/ts-node-agent/pkg/validate"
)

// Defaults of Options (DESIGN section 3).
const (
	DefaultTailscaled      = "tailscaled"
	DefaultStateDir        = "/var/lib/tailscale"
	DefaultSocket          = "/var/run/tailscale/tailscaled.sock"
	DefaultTUN             = "tailscale0"
	DefaultShutdownTimeout = 10 * time.Second
)

// UserspaceNetworking is the TUN value that runs tailscaled without a kernel
// TUN device.
const UserspaceNetworking = "userspace-networking"

// Options configures the supervisor. Fill it from the agent's configuration,
// call Defaults for what is unset, then Validate.
type Options struct {
	// Tailscaled is the tailscaled binary: a path, or a name looked up in
	// PATH when Run starts.
	Tailscaled string
	// StateDir is tailscaled's state directory (--statedir); the state file
	// is StateDir/tailscaled.state.
	StateDir string
	// Socket is the LocalAPI unix socket tailscaled listens on.
	Socket string
	// TUN is the TUN interface name, or UserspaceNetworking.
	TUN string
	// ExtraArgs are appended to tailscaled's argv. They may not set the
	// flags the supervisor owns (--state, --statedir, --socket, --tun).
	ExtraArgs []string
	// ShutdownTimeout is how long tailscaled has to exit after SIGTERM
	// before its process group is SIGKILLed.
	ShutdownTimeout time.Duration
	// Backoff paces restarts after unexpected exits.
	Backoff Backoff
}

// Backoff is an exponential restart backoff: the first restart of a
// sequence is immediate (a tailscaled that was killed once is back as
// soon as possible), the second waits Initial, each further one Factor
// times longer, at most Max; a child that ran for ResetAfter or more
// before it died starts the sequence over.
type Backoff struct {
	Initial    time.Duration
	Max        time.Duration
	Factor     float64
	ResetAfter time.Duration
}

// DefaultBackoff is at once, then 1s doubling to 30s, reset after 60s of
// stable running.
var DefaultBackoff = Backoff{
	Initial:    time.Second,
	Max:        30 * time.Second,
	Factor:     2,
	ResetAfter: 60 * time.Second,
}

// Defaults sets every field to its default (as Defaults does in every
// package of the agent): call it first, then set what the configuration
// says.
func (o *Options) Defaults() {
	*o = Options{
		Tailscaled:      DefaultTailscaled,
		StateDir:        DefaultStateDir,
		Socket:          DefaultSocket,
		TUN:             DefaultTUN,
		ShutdownTimeout: DefaultShutdownTimeout,
		Backoff:         DefaultBackoff,
	}
}

// ownedFlags are the tailscaled flags Args sets, mapped to the agent setting
// that controls each.
var ownedFlags = map[string]string{
	"state":    "--state-dir",
	"statedir": "--state-dir",
	"socket":   "--socket",
	"tun":      "--tun",
}

// Validate reports every problem at once. The path and interface name rules
// are pkg/validate's, which pkg/config applies at startup too.
func (o *Options) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf(format, args...))
	}
	if o.Tailscaled == "" {
		bad("supervisor: tailscaled binary: must not be empty")
	}
	if err := validate.AbsPath(o.StateDir); err != nil {
		bad("supervisor: state dir %q: %v; want an absolute path", o.StateDir, err)
	}
	if err := validate.SocketPath(o.Socket); err != nil {
		bad("supervisor: socket %q: %v; want an absolute path of at most %d bytes", o.Socket, err, validate.MaxSocketPath)
	}
	if o.TUN != UserspaceNetworking {
		if err := validate.InterfaceName(o.TUN); err != nil {
			bad("supervisor: tun %q: %v; want an interface name of 1 to %d characters without '/', ':' or spaces, or %q",
				o.TUN, err, validate.MaxInterfaceName, UserspaceNetworking)
		}
	}
	for _, a := range o.ExtraArgs {
		if name, ok := flagName(a); ok {
			if setting, owned := ownedFlags[name]; owned {
				bad("supervisor: tailscaled extra argument %q: --%s is set by the agent, use %s instead", a, name, setting)
			}
		}
	}
	if o.ShutdownTimeout <= 0 {
		bad("supervisor: shutdown timeout %s: must be positive", o.ShutdownTimeout)
	}
	b := o.Backoff
	if b.Initial <= 0 {
		bad("supervisor: initial backoff %s: must be positive", b.Initial)
	}
	if b.Max < b.Initial {
		bad("supervisor: max backoff %s: must be at least the initial backoff %s", b.Max, b.Initial)
	}
	if b.Factor < 1 {
		bad("supervisor: backoff factor %g: must be at least 1", b.Factor)
	}
	if b.ResetAfter <= 0 {
		bad("supervisor: backoff reset %s: must be positive", b.ResetAfter)
	}
	return errors.Join(errs...)
}

// flagName returns the name of a command-line flag argument ("--socket=x",
// "-socket", ...) as Go's flag package, which tailscaled uses, parses it.
func flagName(arg string) (string, bool) {
	if len(arg) < 2 || arg[0] != '-' {
		return "", false
	}
	name := strings.TrimPrefix(arg[1:], "-")
	name, _, _ = strings.Cut(name, "=")
	return name, name != ""
}

// DefaultPort is the UDP port tailscaled listens on unless the extra
// arguments say otherwise: Tailscale's standard port, the same across
// restarts.
//
// tailscaled's own default on Linux is a random port, new at every start.
// Peers keep trusting the address of the process that died for up to
// 6.5 s and send WireGuard there, so after a kill -9 the restarted
// tailscaled answered disco pings (the worker was ready) while no traffic
// flowed for about 5 s, the WireGuard handshake retry (bench scenario 2:
// in 6 of 8 runs; with a fixed port in none of 16). If the port is taken,
// tailscaled falls back to a random one by itself.
const DefaultPort = 41641

// Args returns tailscaled's argv (without argv[0]) for o: state file and
// directory, LocalAPI socket, TUN (userspace-networking passes through),
// --port=DefaultPort, then o.ExtraArgs (a --port there wins: the last
// value of a flag counts). Like containerboot, it passes the socket and
// state explicitly so that the agent and tailscaled can never disagree on
// them.
func Args(o Options) []string {
	args := []string{
		"--state=" + filepath.Join(o.StateDir, "tailscaled.state"),
		"--statedir=" + o.StateDir,
		"--socket=" + o.Socket,
		"--tun=" + o.TUN,
		"--port=" + strconv.Itoa(DefaultPort),
	}
	return append(args, o.ExtraArgs...)
}

// Next returns the delay before restart n of a sequence (from 0): 0, then
// Initial, growing by Factor up to Max.
func (b Backoff) Next(n int) time.Duration {
	if n <= 0 {
		return 0
	}
	d := b.Initial
	for range n - 1 {
		next := time.Duration(float64(d) * b.Factor)
		if next > b.Max || next < d { // capped, or overflowed
			return b.Max
		}
		d = next
	}
	return d
}
