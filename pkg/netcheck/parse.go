package netcheck

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
)

// MaxResponseBytes bounds the body of an egress check response: an IP
// address, or a small JSON object, fits many times over.
const MaxResponseBytes = 4096

// quoteBytes is how much of an unexpected answer an error quotes.
const quoteBytes = 64

// errTooLarge is the error of a body larger than MaxResponseBytes.
var errTooLarge = fmt.Errorf("response larger than %d bytes", MaxResponseBytes)

// ParseEgressResponse reads the caller's IP from the answer of an egress
// check URL: either a plain-text IP address (IPv4 or IPv6, surrounding
// whitespace ignored), or a JSON object whose "ip" field is a string
// holding one (other fields are ignored). The body's shape decides, not
// its content type (echo services mislabel their answers): a body starting
// with '{' is JSON, anything else must be a plain address; the content type
// only appears in errors. An IPv4-mapped IPv6 address is returned as IPv4. Anything else, an
// address with a zone, or the unspecified address, is an error that quotes
// the first bytes of the body: the Checker never shows these errors, it
// describes the answer without quoting it (see answerError).
func ParseEgressResponse(contentType string, body []byte) (netip.Addr, error) {
	if len(body) > MaxResponseBytes {
		return netip.Addr{}, errTooLarge
	}
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		return netip.Addr{}, errors.New("empty response")
	}
	if trimmed[0] == '{' {
		return parseJSON(trimmed)
	}
	addr, err := netip.ParseAddr(string(trimmed))
	if err != nil {
		ct := ""
		if contentType != "" {
			ct = " (content type " + quote([]byte(contentType)) + ")"
		}
		return netip.Addr{}, fmt.Errorf("response is neither an IP address nor a JSON object with an \"ip\" field%s: %s",
			ct, quote(trimmed))
	}
	return usable(addr)
}

func parseJSON(body []byte) (netip.Addr, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(body, &obj); err != nil || obj == nil {
		return netip.Addr{}, fmt.Errorf("response is not a JSON object with an \"ip\" field: %s", quote(body))
	}
	raw, ok := obj["ip"]
	if !ok {
		return netip.Addr{}, fmt.Errorf("JSON response has no \"ip\" field: %s", quote(body))
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return netip.Addr{}, fmt.Errorf("JSON \"ip\" field is not a string: %s", quote(raw))
	}
	addr, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("JSON \"ip\" field is not an IP address: %s", quote([]byte(s)))
	}
	return usable(addr)
}

// usable rejects addresses that cannot be anyone's egress IP and unmaps
// IPv4-mapped IPv6 addresses (a dual-stack echo service may answer them).
func usable(addr netip.Addr) (netip.Addr, error) {
	if addr.Zone() != "" {
		// The zone is the answer's text, of any length: not shown.
		return netip.Addr{}, fmt.Errorf("response address %s has a zone, which no egress IP has", addr.WithZone(""))
	}
	addr = addr.Unmap()
	if addr.IsUnspecified() {
		return netip.Addr{}, fmt.Errorf("response address %s is the unspecified address", addr)
	}
	return addr, nil
}

// quote returns the first quoteBytes of b, escaped with %q, followed by
// "..." when b is longer.
func quote(b []byte) string {
	if len(b) > quoteBytes {
		return fmt.Sprintf("%q...", b[:quoteBytes])
	}
	return fmt.Sprintf("%q", b)
}

// readBounded reads at most MaxResponseBytes of r; more is errTooLarge.
func readBounded(r io.Reader) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxResponseBytes+1))
	if len(b) > MaxResponseBytes {
		return nil, errTooLarge
	}
	return b, err
}
