package supervisor

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func validOptions() Options {
	var o Options
	o.Defaults()
	return o
}

func TestArgs(t *testing.T) {
	tests := []struct {
		name string
		opts func(*Options)
		want []string
	}{
		{
			name: "defaults",
			want: []string{
				"--state=/var/lib/tailscale/tailscaled.state",
				"--statedir=/var/lib/tailscale",
				"--socket=/var/run/tailscale/tailscaled.sock",
				"--tun=tailscale0",
				"--port=41641",
			},
		},
		{
			name: "userspace networking passes through",
			opts: func(o *Options) { o.TUN = UserspaceNetworking },
			want: []string{
				"--state=/var/lib/tailscale/tailscaled.state",
				"--statedir=/var/lib/tailscale",
				"--socket=/var/run/tailscale/tailscaled.sock",
				"--tun=userspace-networking",
				"--port=41641",
			},
		},
		{
			name: "custom paths, trailing slash cleaned in the state file",
			opts: func(o *Options) {
				o.StateDir = "/data/ts/"
				o.Socket = "/run/ts.sock"
				o.TUN = "ts1"
			},
			want: []string{
				"--state=/data/ts/tailscaled.state",
				"--statedir=/data/ts/",
				"--socket=/run/ts.sock",
				"--tun=ts1",
				"--port=41641",
			},
		},
		{
			name: "extra args come last, in order: their --port wins",
			opts: func(o *Options) { o.ExtraArgs = []string{"--port=0", "--verbose", "1"} },
			want: []string{
				"--state=/var/lib/tailscale/tailscaled.state",
				"--statedir=/var/lib/tailscale",
				"--socket=/var/run/tailscale/tailscaled.sock",
				"--tun=tailscale0",
				"--port=41641",
				"--port=0", "--verbose", "1",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := validOptions()
			if tt.opts != nil {
				tt.opts(&o)
			}
			if got := Args(o); !slices.Equal(got, tt.want) {
				t.Errorf("Args() =\n  %q\nwant\n  %q", got, tt.want)
			}
		})
	}
}

func TestArgsDoesNotAliasExtraArgs(t *testing.T) {
	o := validOptions()
	o.ExtraArgs = make([]string, 1, 10)
	o.ExtraArgs[0] = "--port=1"
	a := Args(o)
	a[len(a)-1] = "changed"
	if o.ExtraArgs[0] != "--port=1" {
		t.Errorf("Args modified ExtraArgs: %q", o.ExtraArgs)
	}
}

func TestDefaults(t *testing.T) {
	var o Options
	o.Defaults()
	want := Options{
		Tailscaled:      "tailscaled",
		StateDir:        "/var/lib/tailscale",
		Socket:          "/var/run/tailscale/tailscaled.sock",
		TUN:             "tailscale0",
		ShutdownTimeout: 10 * time.Second,
		Backoff:         Backoff{Initial: time.Second, Max: 30 * time.Second, Factor: 2, ResetAfter: time.Minute},
	}
	if !equalOptions(o, want) {
		t.Errorf("Defaults() = %+v, want %+v", o, want)
	}
	if err := o.Validate(); err != nil {
		t.Errorf("defaults do not validate: %v", err)
	}
	// Every field, whatever it held.
	o = Options{TUN: UserspaceNetworking, ShutdownTimeout: time.Second, ExtraArgs: []string{"--verbose=1"}}
	o.Defaults()
	if !equalOptions(o, want) {
		t.Errorf("Defaults kept a field: %+v", o)
	}
}

func equalOptions(a, b Options) bool {
	return a.Tailscaled == b.Tailscaled && a.StateDir == b.StateDir && a.Socket == b.Socket &&
		a.TUN == b.TUN && slices.Equal(a.ExtraArgs, b.ExtraArgs) &&
		a.ShutdownTimeout == b.ShutdownTimeout && a.Backoff == b.Backoff
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		opts func(*Options)
		want []string // substrings of the error; none: valid
	}{
		{name: "defaults"},
		{name: "userspace", opts: func(o *Options) { o.TUN = UserspaceNetworking }},
		{name: "harmless extra args", opts: func(o *Options) { o.ExtraArgs = []string{"--port=0", "-verbose=1", "--", "x"} }},
		{name: "empty binary", opts: func(o *Options) { o.Tailscaled = "" }, want: []string{"tailscaled binary"}},
		{name: "relative state dir", opts: func(o *Options) { o.StateDir = "state" }, want: []string{`state dir "state"`}},
		{name: "empty socket", opts: func(o *Options) { o.Socket = "" }, want: []string{`socket ""`}},
		{name: "long socket", opts: func(o *Options) { o.Socket = "/" + strings.Repeat("s", 107) }, want: []string{"longer than 107 bytes"}},
		{name: "long tun", opts: func(o *Options) { o.TUN = "tailscale-too-long" }, want: []string{`tun "tailscale-too-long"`}},
		{name: "tun with slash", opts: func(o *Options) { o.TUN = "a/b" }, want: []string{`tun "a/b"`}},
		{name: "extra --socket", opts: func(o *Options) { o.ExtraArgs = []string{"--socket=/x"} }, want: []string{`"--socket=/x": --socket is set by the agent, use --socket`}},
		{name: "extra -statedir", opts: func(o *Options) { o.ExtraArgs = []string{"-statedir", "/x"} }, want: []string{"--statedir is set by the agent, use --state-dir"}},
		{name: "extra --state", opts: func(o *Options) { o.ExtraArgs = []string{"--state=mem:"} }, want: []string{"--state is set by the agent"}},
		{name: "extra --tun", opts: func(o *Options) { o.ExtraArgs = []string{"--tun=x"} }, want: []string{"--tun is set by the agent, use --tun"}},
		{name: "zero shutdown timeout", opts: func(o *Options) { o.ShutdownTimeout = 0 }, want: []string{"shutdown timeout 0s"}},
		{name: "bad backoff", opts: func(o *Options) {
			o.Backoff = Backoff{Initial: 0, Max: -1, Factor: 0.5, ResetAfter: 0}
		}, want: []string{"initial backoff 0s", "max backoff -1ns", "backoff factor 0.5", "backoff reset 0s"}},
		{name: "every problem at once", opts: func(o *Options) {
			o.Tailscaled, o.Socket, o.ShutdownTimeout = "", "rel", -time.Second
		}, want: []string{"tailscaled binary", `socket "rel"`, "shutdown timeout -1s"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := validOptions()
			if tt.opts != nil {
				tt.opts(&o)
			}
			err := o.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want an error with %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate() = %q, want it to contain %q", err, w)
				}
			}
			if n := strings.Count(err.Error(), "\n") + 1; n != len(tt.want) {
				t.Errorf("Validate() reported %d problems, want %d: %q", n, len(tt.want), err)
			}
		})
	}
}

func TestBackoffNext(t *testing.T) {
	b := DefaultBackoff
	s := time.Second
	tests := []struct {
		n    int
		want time.Duration
	}{
		{0, 0}, // the first restart is immediate
		{1, s},
		{2, 2 * s},
		{5, 16 * s},
		{6, 30 * s}, // capped
		{7, 30 * s},
		{1 << 20, 30 * s}, // no overflow
	}
	for _, tt := range tests {
		if got := b.Next(tt.n); got != tt.want {
			t.Errorf("Next(%d) = %s, want %s", tt.n, got, tt.want)
		}
	}
}
