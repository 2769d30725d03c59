package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/ts-node-agent/ts-node-agent/pkg/authkey"
	"github.com/ts-node-agent/ts-node-agent/pkg/hostnet"
	"github.com/ts-node-agent/ts-node-agent/pkg/validate"
)

// valueError says why a value is rejected and what is accepted; invalid turns
// it into the one-line problem that names the source.
type valueError struct {
	why      string // optional: what is wrong, when "not accepted" is not obvious
	accepted string // what is accepted, starting with "accepted"
}

func (e *valueError) Error() string {
	if e.why == "" {
		return e.accepted
	}
	return e.why + "; " + e.accepted
}

func reject(why, accepted string) error { return &valueError{why: why, accepted: accepted} }

// invalid formats a problem: `invalid SOURCE "VALUE": WHY; ACCEPTED`.
func invalid(src, raw string, err error) error {
	return fmt.Errorf("invalid %s %q: %w", src, raw, err)
}

// binder binds one setting to its Config field: it parses a raw flag or
// environment value into the field, validates the field, and shows it.
type binder interface {
	// set parses raw (one flag occurrence or one environment value) from
	// src into the field; a list appends. It returns one problem per bad
	// value, each naming src.
	set(src, raw string, fromEnv bool) []error
	// reset empties a list before the values of a new source; no-op for
	// scalars.
	reset()
	// validate checks the field's current value(s), naming src.
	validate(src string) []error
	// show returns the current value as flag text.
	show() string
	// typ is the placeholder of the value in --help ("bool" for booleans).
	typ() string
}

// scalar binds a single-valued field.
type scalar[T any] struct {
	p      *T
	kind   string
	parse  func(string) (T, error)
	check  func(T) error // nil: every parsed value is valid
	format func(T) string
}

func (s *scalar[T]) set(src, raw string, _ bool) []error {
	v, err := s.parse(raw)
	if err == nil && s.check != nil {
		err = s.check(v)
	}
	if err != nil {
		return []error{invalid(src, raw, err)}
	}
	*s.p = v
	return nil
}

func (s *scalar[T]) reset() {}

func (s *scalar[T]) validate(src string) []error {
	if s.check == nil {
		return nil
	}
	if err := s.check(*s.p); err != nil {
		return []error{invalid(src, s.format(*s.p), err)}
	}
	return nil
}

func (s *scalar[T]) show() string { return s.format(*s.p) }
func (s *scalar[T]) typ() string  { return s.kind }

// list binds a repeatable field: every flag occurrence and the environment
// value are split into items (by commas, or by envSplit for the environment).
type list[T any] struct {
	p        *[]T
	kind     string
	parse    func(string) (T, error)
	check    func(T) error
	format   func(T) string
	envSplit func(string) []string // nil: commas
	required string                // if set, an empty list is invalid; what is accepted
}

func (l *list[T]) set(src, raw string, fromEnv bool) []error {
	split := splitComma
	if fromEnv && l.envSplit != nil {
		split = l.envSplit
	}
	var errs []error
	for _, item := range split(raw) {
		v, err := l.parse(item)
		if err == nil && l.check != nil {
			err = l.check(v)
		}
		if err != nil {
			errs = append(errs, invalid(src, item, err))
			continue
		}
		*l.p = append(*l.p, v)
	}
	return errs
}

func (l *list[T]) reset() { *l.p = nil }

func (l *list[T]) validate(src string) []error {
	if len(*l.p) == 0 && l.required != "" {
		return []error{invalid(src, "", reject("", l.required))}
	}
	if l.check == nil {
		return nil
	}
	var errs []error
	for _, v := range *l.p {
		if err := l.check(v); err != nil {
			errs = append(errs, invalid(src, l.format(v), err))
		}
	}
	return errs
}

func (l *list[T]) show() string {
	items := make([]string, len(*l.p))
	for i, v := range *l.p {
		items[i] = l.format(v)
	}
	return strings.Join(items, ",")
}

func (l *list[T]) typ() string { return l.kind }

// splitComma splits a comma-separated value, trimming spaces and dropping
// empty items.
func splitComma(s string) []string {
	var out []string
	for item := range strings.SplitSeq(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// --- constructors ---

func identity(s string) (string, error) { return s, nil }
func same(s string) string              { return s }

func stringVar(p *string, kind string, check func(string) error) binder {
	return &scalar[string]{p: p, kind: kind, parse: identity, check: check, format: same}
}

func boolVar(p *bool) binder {
	return &scalar[bool]{p: p, kind: "bool", parse: parseBool, format: strconv.FormatBool}
}

func parseBool(s string) (bool, error) {
	b, err := strconv.ParseBool(strings.TrimSpace(s))
	if err != nil {
		return false, acceptedBool
	}
	return b, nil
}

var acceptedBool = reject("", "accepted values are true, false, 1, 0")

// durationVar binds a duration of at least least: below it a timer turns
// into a busy loop (1ns of --egress-check-interval sends requests without
// pause) or a deadline nothing can meet.
func durationVar(p *time.Duration, least time.Duration) binder {
	check := func(d time.Duration) error {
		if d < least {
			return reject("at least "+formatDuration(least), acceptedDuration)
		}
		return nil
	}
	return &scalar[time.Duration]{p: p, kind: "duration", parse: parseDuration, check: check, format: formatDuration}
}

const acceptedDuration = "accepted: a duration such as 30s, 2m or 1h30m"

func parseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return 0, reject("", acceptedDuration)
	}
	return d, nil
}

// formatDuration prints 60s as "1m", not "1m0s".
func formatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

func enumVar[T ~string](p *T, allowed ...T) binder {
	names := make([]string, len(allowed))
	for i, a := range allowed {
		names[i] = string(a)
	}
	check := func(v T) error {
		if !slices.Contains(allowed, v) {
			return reject("", "accepted values are "+strings.Join(names, ", "))
		}
		return nil
	}
	return &scalar[T]{
		p: p, kind: "string", check: check,
		parse:  func(s string) (T, error) { return T(strings.TrimSpace(s)), nil },
		format: func(v T) string { return string(v) },
	}
}

func stringList(p *[]string, kind string, check func(string) error, envSplit func(string) []string) binder {
	return &list[string]{p: p, kind: kind, parse: identity, check: check, format: same, envSplit: envSplit}
}

// addrVar binds one optional address of this node, a source address (the
// zero Addr when unset): unicast, as a socket can be bound to it.
func addrVar(p *netip.Addr) binder {
	const accepted = "accepted: an IPv4 or IPv6 address such as 198.18.128.1 or fd00::1"
	return &scalar[netip.Addr]{
		p: p, kind: "ip",
		parse: func(s string) (netip.Addr, error) {
			a, err := netip.ParseAddr(strings.TrimSpace(s))
			if err != nil || a.Zone() != "" {
				return netip.Addr{}, reject("", accepted)
			}
			return a.Unmap(), nil
		},
		check: func(a netip.Addr) error {
			switch {
			case !a.IsValid():
				return nil // unset
			case a.IsUnspecified():
				return reject("the unspecified address", accepted)
			case a.IsMulticast():
				return reject("a multicast address", accepted)
			}
			return nil
		},
		format: func(a netip.Addr) string {
			if !a.IsValid() {
				return ""
			}
			return a.String()
		},
	}
}

// markVar binds a firewall mark VALUE[/MASK].
func markVar(p *hostnet.Mark) binder {
	const accepted = "accepted: VALUE[/MASK], 32-bit numbers such as 0x600/0xf00, outside tailscaled's 0xff0000"
	return &scalar[hostnet.Mark]{
		p: p, kind: "mark",
		parse: func(s string) (hostnet.Mark, error) {
			m, err := hostnet.ParseMark(s)
			if err != nil {
				return hostnet.Mark{}, reject("", accepted)
			}
			return m, nil
		},
		check: func(m hostnet.Mark) error {
			if err := m.Validate(); err != nil {
				return reject(strings.TrimPrefix(err.Error(), "bypass mark "+m.String()+": "), accepted)
			}
			return nil
		},
		format: hostnet.Mark.String,
	}
}

// addrList binds addresses as the internet sees them: neither unset nor
// unspecified.
func addrList(p *[]netip.Addr) binder {
	const accepted = "accepted: an IPv4 or IPv6 address such as 203.0.113.7 or 2001:db8::7"
	return &list[netip.Addr]{
		p: p, kind: "ip",
		parse: func(s string) (netip.Addr, error) {
			a, err := netip.ParseAddr(s)
			if err != nil || a.Zone() != "" {
				return netip.Addr{}, reject("", accepted)
			}
			return a.Unmap(), nil
		},
		check: func(a netip.Addr) error {
			switch {
			case !a.IsValid():
				return reject("", accepted)
			case a.IsUnspecified():
				return reject("the unspecified address", accepted)
			}
			return nil
		},
		format: netip.Addr.String,
	}
}

// parsePrefix parses a CIDR (masked) or a single IP address (a /32 or
// /128), rejecting anything else with accepted.
func parsePrefix(accepted string) func(string) (netip.Prefix, error) {
	return func(s string) (netip.Prefix, error) {
		if pfx, err := netip.ParsePrefix(s); err == nil {
			return pfx.Masked(), nil
		}
		if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" {
			return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
		}
		return netip.Prefix{}, reject("", accepted)
	}
}

// prefixList binds a list of CIDRs (or single addresses), any of them.
func prefixList(p *[]netip.Prefix) binder {
	const accepted = "accepted: a CIDR such as 10.0.0.0/8 or fd00::/64, or a single IP address"
	return &list[netip.Prefix]{
		p: p, kind: "cidr", parse: parsePrefix(accepted),
		check: func(p netip.Prefix) error {
			if !p.IsValid() {
				return reject("", accepted)
			}
			return nil
		},
		format: netip.Prefix.String,
	}
}

// Bypass CIDRs may not be broader than these: half of IPv4 off the exit
// node (128.0.0.0/1) is a mistake, not a bypass.
const (
	minBypassBits4 = 8
	minBypassBits6 = 16
)

// bypassList binds --bypass-cidrs: destinations that never use the exit
// node. They must stay outside the tailnet ranges (tailnet traffic goes
// through tailscaled, whatever the exit node) and be narrow enough not to
// take a large part of the internet off the exit node.
func bypassList(p *[]netip.Prefix) binder {
	accepted := fmt.Sprintf("accepted: a CIDR of at least /%d (IPv6: /%d) outside the tailnet ranges %s, "+
		"such as 10.43.0.0/16 or fd00::/64, or a single IP address", minBypassBits4, minBypassBits6, tailnetRanges())
	return &list[netip.Prefix]{
		p: p, kind: "cidr", parse: parsePrefix(accepted),
		check: func(p netip.Prefix) error {
			const broad = "broader than /%d: it would take a large part of the internet off the exit node"
			switch {
			case !p.IsValid():
				return reject("", accepted)
			case p.Addr().Is4() && p.Bits() < minBypassBits4:
				return reject(fmt.Sprintf(broad, minBypassBits4), accepted)
			case p.Addr().Is6() && p.Bits() < minBypassBits6:
				return reject(fmt.Sprintf(broad, minBypassBits6), accepted)
			}
			for _, t := range hostnet.TailnetPrefixes {
				if p.Overlaps(t) {
					return reject("overlaps the tailnet range "+t.String()+", whose traffic must go through tailscaled", accepted)
				}
			}
			return nil
		},
		format: netip.Prefix.String,
	}
}

// tailnetRanges is "100.64.0.0/10 and fd7a:115c:a1e0::/48".
func tailnetRanges() string {
	s := make([]string, len(hostnet.TailnetPrefixes))
	for i, p := range hostnet.TailnetPrefixes {
		s[i] = p.String()
	}
	return strings.Join(s, " and ")
}

func tcpTargetList(p *[]TCPTarget) binder {
	return &list[TCPTarget]{
		p: p, kind: "name=host:port",
		parse: func(s string) (TCPTarget, error) {
			name, addr, ok := strings.Cut(s, "=")
			if !ok {
				return TCPTarget{}, reject("missing name=", acceptedTCPTarget)
			}
			return TCPTarget{Name: strings.TrimSpace(name), Addr: strings.TrimSpace(addr)}, nil
		},
		check:  checkTCPTarget,
		format: TCPTarget.String,
	}
}

const acceptedTCPTarget = "accepted: NAME=HOST:PORT such as db=10.0.0.5:5432 or s3=s3.example.com:443 " +
	"(NAME of letters, digits, '-', '_', '.')"

func checkTCPTarget(t TCPTarget) error {
	if !isCheckName(t.Name) {
		return reject("bad name", acceptedTCPTarget)
	}
	if err := checkHostPort(t.Addr, false); err != nil {
		return reject(err.Error(), acceptedTCPTarget)
	}
	return nil
}

func isCheckName(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for _, r := range s {
		if !(r < unicode.MaxASCII && (unicode.IsLetter(r) || unicode.IsDigit(r)) || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return true
}

// checkHostPort checks HOST:PORT with a numeric port; the host may be empty
// (all interfaces) only when emptyHostOK.
func checkHostPort(s string, emptyHostOK bool) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return errors.New("not HOST:PORT")
	}
	if host == "" && !emptyHostOK {
		return errors.New("missing host")
	}
	if strings.ContainsFunc(host, unicode.IsSpace) {
		return errors.New("host contains spaces")
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 || (n == 0 && !emptyHostOK) {
		return errors.New("bad port")
	}
	return nil
}

// --- checks of single values ---

func checkNonEmpty(what string) func(string) error {
	return func(s string) error {
		if strings.TrimSpace(s) == "" {
			return reject("must not be empty", "accepted: "+what)
		}
		return nil
	}
}

// The checks below wrap the one implementation of each rule, in
// pkg/validate, which the other packages' Options.Validate call too: what
// passes here cannot fail there after the agent started.

const acceptedURL = "accepted: an http or https URL such as https://ifconfig.me/ip"

func checkURL(s string) error {
	if err := validate.HTTPURL(s); err != nil {
		return reject(err.Error(), acceptedURL)
	}
	return nil
}

func checkLoginServer(s string) error {
	if s == "" {
		return nil
	}
	if err := validate.HTTPURL(s); err != nil {
		return reject(err.Error(), "accepted: an http or https URL such as https://headscale.example.com, or empty for Tailscale's")
	}
	return nil
}

func checkAPIURL(s string) error {
	if err := validate.HTTPURL(s); err != nil {
		return reject(err.Error(), "accepted: an http or https URL such as "+authkey.DefaultAPIURL)
	}
	return nil
}

func checkTag(s string) error {
	if err := validate.Tag(s); err != nil {
		return reject(err.Error(), "accepted: tag:NAME, NAME starting with a letter and made of letters, digits and '-'")
	}
	return nil
}

const acceptedCandidate = "accepted: auto, a tailnet IP without zone, a hostname or MagicDNS name " +
	"(letters, digits and '-'), or tag:NAME"

func checkExitCandidate(s string) error {
	if err := validate.ExitNodeCandidate(s); err != nil {
		return reject(err.Error(), acceptedCandidate)
	}
	return nil
}

const acceptedHostname = "accepted: a DNS name of labels of 1 to 63 letters, digits and '-', " +
	"not starting or ending with '-', such as node-1 or node-1.example.com"

// checkHostname checks the tailnet hostname as tailscale up does.
func checkHostname(s string) error {
	if s == "" {
		return nil // tailscaled uses the OS hostname
	}
	if err := validate.Hostname(s); err != nil {
		return reject(err.Error(), acceptedHostname)
	}
	return nil
}

func checkStateDir(s string) error {
	if err := validate.AbsPath(s); err != nil {
		return reject(err.Error(), "accepted: an absolute directory path such as /var/lib/tailscale")
	}
	return nil
}

func checkSocket(s string) error {
	if err := validate.SocketPath(s); err != nil {
		return reject(err.Error(), fmt.Sprintf("accepted: an absolute path of at most %d bytes such as /var/run/tailscale/tailscaled.sock",
			validate.MaxSocketPath))
	}
	return nil
}

func checkReadyRequires(s string) error {
	if s == "" || strings.ContainsFunc(s, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) }) {
		return reject("", "accepted: check names such as tcp:db or egress-ip")
	}
	return nil
}

// checkNodeName checks a Node name with Kubernetes' validation, as the
// role watcher does.
func checkNodeName(s string) error {
	if s != "" && len(validation.IsDNS1123Subdomain(s)) > 0 {
		return reject("", "accepted: a Kubernetes node name: lowercase letters, digits, '-' and '.', "+
			"starting and ending with a letter or digit, at most 253 characters")
	}
	return nil
}

// checkLabelKey checks a Kubernetes label key, [PREFIX/]NAME, with
// Kubernetes' validation, as the role watcher does.
func checkLabelKey(s string) error {
	if len(validation.IsQualifiedName(s)) > 0 {
		return reject("", "accepted: a Kubernetes label key such as ts-node-agent/role or example.com/tailscale-role")
	}
	return nil
}

func checkListen(s string) error {
	if err := checkHostPort(s, true); err != nil {
		return reject(err.Error(), "accepted: HOST:PORT such as :9002, 0.0.0.0:9002 or [::]:9002")
	}
	return nil
}

// checkTUN accepts a Linux interface name (at most 15 bytes) or
// userspace-networking.
func checkTUN(s string) error {
	if s == TUNUserspace {
		return nil
	}
	if err := validate.InterfaceName(s); err != nil {
		return reject("", fmt.Sprintf("accepted: an interface name of at most %d characters such as tailscale0, or %s",
			validate.MaxInterfaceName, TUNUserspace))
	}
	return nil
}

// agentOwnedTailscaledFlags are tailscaled flags the agent sets from its own
// settings; passing them again would fight the agent.
var agentOwnedTailscaledFlags = map[string]string{
	"statedir": "--state-dir",
	"state":    "--state-dir",
	"socket":   "--socket",
	"tun":      "--tun",
}

func checkTailscaledArg(s string) error {
	if strings.TrimSpace(s) == "" {
		return reject("empty argument", "accepted: tailscaled arguments such as --port=41641 or --verbose=1")
	}
	name, _, _ := strings.Cut(strings.TrimLeft(s, "-"), "=")
	if strings.HasPrefix(s, "-") {
		if own, ok := agentOwnedTailscaledFlags[name]; ok {
			return reject("set by the agent from "+own, "accepted: tailscaled arguments other than --statedir, --state, --socket and --tun; use "+own)
		}
	}
	return nil
}

// authKeyFile binds --authkey-file (and TS_AUTHKEY=file:PATH) to
// Config.AuthKey.
type authKeyFile struct{ p *Secret }

const acceptedAuthKeyFile = "accepted: the path of a readable file holding the auth key"

func (a *authKeyFile) set(src, raw string, fromEnv bool) []error {
	path := raw
	if fromEnv {
		path = strings.TrimPrefix(raw, "file:")
	}
	path = strings.TrimSpace(path)
	if err := checkReadableFile(path); err != nil {
		return []error{invalid(src, raw, err)}
	}
	*a.p = SecretFile(path)
	return nil
}

func checkReadableFile(path string) error {
	if path == "" {
		return reject("empty path", acceptedAuthKeyFile)
	}
	f, err := os.Open(path)
	if err != nil {
		return reject(err.Error(), acceptedAuthKeyFile)
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.IsDir() {
		return reject("is a directory", acceptedAuthKeyFile)
	}
	return nil
}

func (a *authKeyFile) reset()                  {}
func (a *authKeyFile) validate(string) []error { return nil }
func (a *authKeyFile) show() string            { return a.p.Path() }
func (a *authKeyFile) typ() string             { return "path" }
