package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
)

// redacted is what every printing, logging and marshalling path shows instead
// of a secret's value.
const redacted = "REDACTED"

// maxSecretFileSize bounds how much of an auth key file is read; a key is
// well under 1 KiB, so anything bigger is a wrong path, not a key.
const maxSecretFileSize = 64 << 10

// Secret is a credential (the auth key, an OAuth client secret, an ID token)
// that never shows its value: String,
// GoString, Format (every fmt verb), LogValue, MarshalJSON and MarshalText all
// redact it. A Secret holds either the value itself (from TS_AUTHKEY) or the
// path of a file holding it (from --authkey-file or TS_AUTHKEY=file:PATH);
// the file is read at every Reveal, so a rotated key is picked up without a
// restart. The zero Secret means "no key".
type Secret struct {
	value string
	path  string
	what  string // what the file holds, for errors; "" means the auth key
}

// SecretValue returns a Secret holding v, with surrounding whitespace removed.
func SecretValue(v string) Secret { return Secret{value: strings.TrimSpace(v)} }

// SecretFile returns a Secret read from the file at path at every Reveal.
func SecretFile(path string) Secret { return Secret{path: path} }

// SecretFileOf is SecretFile for a file holding what (e.g. "ID token"),
// which its read errors name.
func SecretFileOf(what, path string) Secret { return Secret{path: path, what: what} }

func (s Secret) kind() string {
	if s.what == "" {
		return "auth key"
	}
	return s.what
}

// IsSet reports whether a key was configured (by value or by file).
func (s Secret) IsSet() bool { return s.value != "" || s.path != "" }

// Path returns the file the key is read from, or "" for a key given by value.
// The path is not secret.
func (s Secret) Path() string { return s.path }

// Reveal returns the key. A file-based key is read again at each call and
// trimmed of surrounding whitespace; an unreadable or empty file is an error
// that names the file (never its content). An unset Secret reveals "" and no
// error: the caller decides whether a key is needed.
func (s Secret) Reveal() (string, error) {
	if s.path == "" {
		return s.value, nil
	}
	f, err := os.Open(s.path)
	if err != nil {
		return "", fmt.Errorf("read %s file: %w", s.kind(), err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxSecretFileSize+1))
	if err != nil {
		return "", fmt.Errorf("read %s file %q: %w", s.kind(), s.path, err)
	}
	if len(data) > maxSecretFileSize {
		return "", fmt.Errorf("read %s file %q: larger than %d bytes, not a credential", s.kind(), s.path, maxSecretFileSize)
	}
	v := strings.TrimSpace(string(data))
	if v == "" {
		return "", fmt.Errorf("read %s file %q: %w", s.kind(), s.path, errEmptySecretFile)
	}
	return v, nil
}

var errEmptySecretFile = errors.New("file is empty")

// String returns "" for an unset Secret, "file:PATH" for a file-based one (the
// path is not secret and says where the key comes from) and "REDACTED" for a
// key given by value.
func (s Secret) String() string {
	switch {
	case s.path != "":
		return "file:" + s.path
	case s.value != "":
		return redacted
	default:
		return ""
	}
}

// GoString implements fmt.GoStringer (%#v) without the value.
func (s Secret) GoString() string { return fmt.Sprintf("config.Secret(%q)", s.String()) }

// Format implements fmt.Formatter so that no verb (%d, %x, %+v, ...) can reach
// the value through reflection.
func (s Secret) Format(f fmt.State, verb rune) {
	switch {
	case verb == 'v' && f.Flag('#'):
		io.WriteString(f, s.GoString())
	case verb == 'q':
		fmt.Fprintf(f, "%q", s.String())
	default:
		io.WriteString(f, s.String())
	}
}

// LogValue implements slog.LogValuer.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalJSON implements json.Marshaler.
func (s Secret) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// MarshalText implements encoding.TextMarshaler, for encoders other than JSON.
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }
