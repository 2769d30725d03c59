package config

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
)

// ErrHelp is returned by Parse for -h/--help: print Usage and exit 0. It is
// pflag.ErrHelp.
var ErrHelp = pflag.ErrHelp

// ErrUsage matches (errors.Is) every configuration error returned by Parse:
// exit with status 2.
var ErrUsage = errors.New("invalid configuration")

// UsageError is the error Parse returns for bad configuration: every problem,
// one line each. errors.Is(err, ErrUsage) is true.
type UsageError struct {
	Problems []error
}

func (e *UsageError) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap returns the problems.
func (e *UsageError) Unwrap() []error { return e.Problems }

// Is makes errors.Is(err, ErrUsage) true.
func (e *UsageError) Is(target error) bool { return target == ErrUsage }

// Option configures Parse.
type Option func(*parser)

// WithEnviron gives Parse the whole environment (os.Environ()) so that it can
// reject unknown TS_NODE_AGENT_* variables, which are most likely typos that
// would otherwise be silently ignored. Values are read through getenv only.
func WithEnviron(environ []string) Option {
	return func(p *parser) { p.environ = environ }
}

// Parse builds the Config from args (without argv[0]) and the environment
// seen through getenv (os.LookupEnv in main), then validates it. Precedence
// is flag > environment > default; environment variables set to "" count as
// unset.
//
// It returns ErrHelp for -h/--help, or a *UsageError (errors.Is ErrUsage)
// listing every problem at once. The auth key's value never appears in
// errors.
func Parse(args []string, getenv func(string) (string, bool), opts ...Option) (*Config, error) {
	c := Defaults()
	p := &parser{c: c, getenv: getenv, explicit: map[string]string{}, failed: map[string]bool{}}
	for _, o := range opts {
		o(p)
	}
	p.settings = c.settings()

	fs := pflag.NewFlagSet("ts-node-agent", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	addFlags(fs, p.settings, p.report)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil, ErrHelp
		}
		p.problems = append(p.problems, fmt.Errorf("invalid command line: %v", err))
	}
	for _, a := range fs.Args() {
		p.problems = append(p.problems, unexpectedArg("command line", a))
	}
	for _, s := range p.settings {
		if fs.Changed(s.name) {
			p.explicit[s.name] = "--" + s.name
		}
	}

	p.applyEnv()
	p.applyAuthKeyEnv()
	p.applyCredentialEnv()
	p.applyExtraArgs()
	p.applyUserspace()
	p.checkCompatEnv()
	p.checkUnknownEnv()
	if _, ok := p.explicit["hostname"]; !ok {
		p.defaultHostname()
	}

	p.problems = append(p.problems, c.validate(p.failed)...)
	if len(p.problems) > 0 {
		return nil, &UsageError{Problems: p.problems}
	}
	c.Warnings = p.warnings
	return c, nil
}

type parser struct {
	c        *Config
	settings []*setting
	getenv   func(string) (string, bool)
	environ  []string
	// explicit maps a setting (flag name) to the flag or variable that set
	// it; TS_EXTRA_ARGS and TS_USERSPACE only fill settings not in it.
	explicit map[string]string
	// failed holds the settings that already have a problem, so that
	// validation does not report their leftover value again.
	failed   map[string]bool
	problems []error
	warnings []string
}

// report records the problems of a setting's value.
func (p *parser) report(s *setting, errs []error) {
	if len(errs) > 0 {
		p.failed[s.name] = true
		p.problems = append(p.problems, errs...)
	}
}

// lookup returns a non-empty environment variable.
func (p *parser) lookup(name string) (string, bool) {
	v, ok := p.getenv(name)
	if !ok || v == "" {
		return "", false
	}
	return v, true
}

func (p *parser) setting(name string) *setting {
	for _, s := range p.settings {
		if s.name == name {
			return s
		}
	}
	panic("config: no setting " + name)
}

// defaultHostname makes the node name the tailnet hostname, and checks it
// here to say where it came from. A bad node name is reported once, as
// such.
func (p *parser) defaultHostname() {
	p.c.Hostname = p.c.NodeName
	p.failed["hostname"] = true // checked here, not again by validate
	if p.c.Hostname == "" || p.failed["node-name"] {
		return
	}
	if err := checkHostname(p.c.Hostname); err != nil {
		p.problems = append(p.problems, invalid("--hostname (default: the node name)", p.c.Hostname, err))
	}
}

// applyEnv fills every setting not given as a flag from its first non-empty
// environment variable.
func (p *parser) applyEnv() {
	for _, s := range p.settings {
		if _, ok := p.explicit[s.name]; ok {
			continue
		}
		for _, name := range s.env {
			v, ok := p.lookup(name)
			if !ok {
				continue
			}
			s.b.reset()
			p.report(s, s.b.set(name, v, true))
			p.explicit[s.name] = name
			break
		}
	}
}

// applyAuthKeyEnv reads TS_AUTHKEY / TS_AUTH_KEY: the key, or file:PATH.
// --authkey-file wins. No message here ever contains a key.
func (p *parser) applyAuthKeyEnv() {
	name, v, ok := "TS_AUTHKEY", "", false
	if v, ok = p.lookup(name); !ok {
		name = "TS_AUTH_KEY"
		v, ok = p.lookup(name)
	} else if other, ok2 := p.lookup("TS_AUTH_KEY"); ok2 && other != v {
		p.warn("TS_AUTH_KEY is ignored: TS_AUTHKEY is set and wins")
	}
	if !ok {
		return
	}
	if src, set := p.explicit["authkey-file"]; set {
		p.warn(name + " is ignored: " + src + " is set and wins")
		return
	}
	p.explicit["authkey-file"] = name
	if strings.HasPrefix(v, "file:") {
		s := p.setting("authkey-file")
		p.report(s, s.b.set(name, v, true))
		return
	}
	p.c.AuthKey = SecretValue(v)
}

// applyUserspace maps containerboot's TS_USERSPACE onto --tun.
func (p *parser) applyUserspace() {
	v, ok := p.lookup("TS_USERSPACE")
	if !ok {
		return
	}
	on, err := parseBool(v)
	if err != nil {
		p.problems = append(p.problems, invalid("TS_USERSPACE", v, err))
		return
	}
	if !on {
		return
	}
	if src, set := p.explicit["tun"]; set {
		if p.c.TUN != TUNUserspace {
			p.warn(fmt.Sprintf("TS_USERSPACE=%s is ignored: %s=%s is set and wins", v, src, p.c.TUN))
		}
		return
	}
	p.c.TUN = TUNUserspace
	p.explicit["tun"] = "TS_USERSPACE"
}

func (p *parser) warn(msg string) { p.warnings = append(p.warnings, msg) }

// extraArg describes a `tailscale up` flag accepted in TS_EXTRA_ARGS.
type extraArg struct {
	isBool bool
}

// extraArgs are the `tailscale up` flags TS_EXTRA_ARGS may hold. All but the
// two exit-node ones set the agent setting of the same name.
var extraArgs = map[string]extraArg{
	"login-server":               {},
	"hostname":                   {},
	"advertise-tags":             {},
	"accept-routes":              {isBool: true},
	"accept-dns":                 {isBool: true},
	"exit-node-allow-lan-access": {isBool: true},
	"advertise-exit-node":        {isBool: true},
	"exit-node":                  {},
}

func extraArgNames() []string {
	names := make([]string, 0, len(extraArgs))
	for n := range extraArgs {
		names = append(names, "--"+n)
	}
	slices.Sort(names)
	return names
}

const extraArgsVar = "TS_EXTRA_ARGS"

// applyExtraArgs maps TS_EXTRA_ARGS (see the package doc).
func (p *parser) applyExtraArgs() {
	raw, ok := p.lookup(extraArgsVar)
	if !ok {
		return
	}
	type occurrence struct{ name, value string }
	var found []occurrence
	toks := strings.Fields(raw)
	for i := 0; i < len(toks); i++ {
		tok := toks[i]
		if !strings.HasPrefix(tok, "-") || tok == "-" || tok == "--" || strings.HasPrefix(tok, "---") {
			p.problems = append(p.problems, unexpectedArg(extraArgsVar, tok))
			continue
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(tok, "-"), "=")
		spec, known := extraArgs[name]
		switch {
		case !known:
			p.problems = append(p.problems, unsupportedExtraArg(name))
			// An unknown flag's value must not be reported as a stray
			// argument: it may be a key (--authkey tskey-...).
			if !hasValue && i+1 < len(toks) && !strings.HasPrefix(toks[i+1], "-") {
				i++
			}
			continue
		case spec.isBool && !hasValue:
			value = "true"
		case !hasValue:
			if i+1 >= len(toks) {
				p.problems = append(p.problems, fmt.Errorf("invalid %s %q: flag needs a value; accepted: --%s=VALUE or --%s VALUE",
					extraArgsVar, tok, name, name))
				continue
			}
			i++
			value = toks[i]
		}
		found = append(found, occurrence{name, value})
	}

	// The last occurrence of a flag wins, as with `tailscale up`.
	last := map[string]string{}
	var order []string
	for _, o := range found {
		if _, seen := last[o.name]; !seen {
			order = append(order, o.name)
		}
		last[o.name] = o.value
	}
	for _, name := range order {
		value := last[name]
		src := extraArgsVar + " --" + name
		switch name {
		case "advertise-exit-node":
			on, err := parseBool(value)
			if err != nil {
				p.problems = append(p.problems, invalid(src, value, err))
				continue
			}
			if on {
				p.c.AdvertiseExitNode = true
				p.forceRole(RoleExit, "--advertise-exit-node")
			}
		case "exit-node":
			if value == "" {
				continue // `tailscale up --exit-node=` means no exit node
			}
			if err := checkExitCandidate(value); err != nil {
				p.problems = append(p.problems, invalid(src, value, err))
				continue
			}
			p.c.ExitNodeFromExtraArgs = value
			if by, set := p.explicit["exit-nodes"]; set {
				p.warn(fmt.Sprintf("%s=%s does not change the exit node candidates: %s is set and wins", src, value, by))
			} else {
				p.c.ExitNodes = []string{value}
				p.explicit["exit-nodes"] = extraArgsVar
			}
			p.forceRole(RoleWorker, "--exit-node")
		default:
			if by, set := p.explicit[name]; set {
				p.warn(fmt.Sprintf("%s=%s is ignored: %s is set and wins", src, value, by))
				continue
			}
			s := p.setting(name)
			s.b.reset()
			p.report(s, s.b.set(src, value, false))
			p.explicit[name] = extraArgsVar
		}
	}
}

// forceRole sets the role implied by a TS_EXTRA_ARGS flag, unless the role
// was given explicitly.
func (p *parser) forceRole(r Role, flag string) {
	if by, set := p.explicit["role"]; set {
		if p.c.Role != r {
			p.warn(fmt.Sprintf("%s %s implies --role=%s, but %s=%s is set and wins", extraArgsVar, flag, r, by, p.c.Role))
		}
		return
	}
	p.c.Role = r
	p.explicit["role"] = extraArgsVar + " " + flag
}

func unsupportedExtraArg(name string) error {
	hint := ""
	switch name {
	case "authkey", "auth-key":
		hint = "; give the key in TS_AUTHKEY or --authkey-file"
	case "advertise-routes":
		hint = "; subnet routing is out of scope"
	}
	return fmt.Errorf("invalid %s: flag --%s is not supported by ts-node-agent%s; accepted flags are %s",
		extraArgsVar, name, hint, strings.Join(extraArgNames(), ", "))
}

// unexpectedArg reports a non-flag argument; a value that looks like an auth
// key is not echoed.
func unexpectedArg(where, arg string) error {
	shown := strconv.Quote(arg)
	if strings.HasPrefix(arg, "tskey-") {
		shown = "(" + redacted + ")"
	}
	hint := ""
	if _, err := strconv.ParseBool(arg); err == nil {
		hint = " (a boolean flag takes its value as --flag=" + arg + ")"
	}
	return fmt.Errorf("invalid %s: unexpected argument %s%s; accepted: flags only", where, shown, hint)
}
