// Package validate holds the one implementation of each syntax rule that
// more than one package applies to the agent's settings: the tailnet
// hostname, ACL tags, exit node candidates, http(s) URLs, tailscaled's
// state directory and socket path, and interface names. pkg/config calls
// these to reject bad input at startup, with exit status 2 and before any
// side effect; the Options.Validate methods of the other packages call the
// same functions, so that no value pkg/config accepts can fail there later.
//
// Where Tailscale has the rule, it is Tailscale's own code:
// tailscale.com/util/dnsname for hostnames (what `tailscale up --hostname`
// accepts) and tailscale.com/tailcfg.CheckTag for tags.
//
// Every function is pure: it returns a short reason, without the value, for
// the caller to wrap with the flag or option name and what is accepted. The
// package must not do I/O (files, network, processes), talk to tailscaled
// (no LocalAPI: tailscale.com/client, tailscale.com/ipn) or depend on any
// other agent package, so that every one of them may import it.
package validate

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"unicode"

	"tailscale.com/tailcfg"
	"tailscale.com/util/dnsname"
)

// ExitNodeAuto is the exit node candidate meaning "any approved exit node
// of the tailnet".
const ExitNodeAuto = "auto"

// MaxSocketPath is the longest path a Unix socket address can hold:
// sun_path is 108 bytes, including the terminating NUL.
const MaxSocketPath = 107

// MaxInterfaceName is the longest Linux interface name (IFNAMSIZ-1).
const MaxInterfaceName = 15

// Hostname checks a tailnet hostname as `tailscale up --hostname` does
// (dnsname.ValidHostname): dot-separated DNS labels of 1 to 63 letters,
// digits and '-', not starting or ending with '-', at most 253 bytes in
// all, with an optional trailing dot. A single label such as "node-1" is
// the common case; a Kubernetes node name such as
// "ip-10-0-1-23.eu-west-1.compute.internal" is accepted too. Unlike
// dnsname, a leading dot is an error, not ignored.
func Hostname(s string) error {
	switch {
	case s == "":
		return errors.New("empty")
	case s[0] == '.':
		return errors.New("starts with '.'")
	}
	return dnsname.ValidHostname(s)
}

// Tag checks an ACL tag, tag:NAME, with tailcfg.CheckTag.
func Tag(s string) error {
	return tailcfg.CheckTag(s)
}

// ExitNodeCandidate checks one --exit-nodes entry: "auto", a tailnet IP
// without zone, tag:NAME (Tag) or a peer's hostname or MagicDNS name
// (Hostname). A dotted all-digit name is a mistyped IPv4 address, not a
// hostname.
func ExitNodeCandidate(s string) error {
	switch {
	case s == "":
		return errors.New("empty")
	case s == ExitNodeAuto:
		return nil
	case strings.HasPrefix(s, "tag:"):
		return Tag(s)
	}
	if ip, err := netip.ParseAddr(s); err == nil {
		if ip.Zone() != "" {
			return fmt.Errorf("a tailnet IP has no zone (%%%s)", ip.Zone())
		}
		return nil
	}
	if strings.Contains(s, ".") && strings.Trim(s, "0123456789.") == "" {
		return errors.New("not a valid IP address")
	}
	return Hostname(s)
}

// HTTPURL checks an http or https URL with a host and, if given, a port
// of 1 to 65535. The reason never contains the URL, which may hold a token.
func HTTPURL(s string) error {
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return errors.New("not a URL")
	case u.Scheme != "http" && u.Scheme != "https":
		return errors.New("the scheme is not http or https")
	case u.Hostname() == "":
		return errors.New("no host")
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return errors.New("bad port")
		}
	}
	return nil
}

// AbsPath checks an absolute path, such as tailscaled's state directory:
// a relative one would depend on the working directory of whoever starts
// the agent.
func AbsPath(s string) error {
	switch {
	case strings.TrimSpace(s) == "":
		return errors.New("must not be empty")
	case !filepath.IsAbs(s):
		return errors.New("not an absolute path")
	}
	return nil
}

// SocketPath checks the LocalAPI socket path: absolute (AbsPath) and at
// most MaxSocketPath bytes, or tailscaled cannot listen on it.
func SocketPath(s string) error {
	if err := AbsPath(s); err != nil {
		return err
	}
	if len(s) > MaxSocketPath {
		return fmt.Errorf("%d bytes, longer than %d bytes, the sun_path limit of a Unix socket path", len(s), MaxSocketPath)
	}
	return nil
}

// InterfaceName checks a Linux interface name: 1 to MaxInterfaceName
// ASCII characters, without '/', ':' or spaces, neither "." nor "..".
func InterfaceName(s string) error {
	switch {
	case s == "":
		return errors.New("empty")
	case len(s) > MaxInterfaceName:
		return fmt.Errorf("longer than %d characters", MaxInterfaceName)
	case s == "." || s == "..":
		return errors.New("not a name")
	case strings.ContainsFunc(s, func(r rune) bool { return r == '/' || r == ':' || unicode.IsSpace(r) || r > unicode.MaxASCII }):
		return errors.New("contains '/', ':', a space or a non-ASCII character")
	}
	return nil
}
