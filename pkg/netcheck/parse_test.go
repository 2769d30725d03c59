package netcheck

import (
	"bytes"
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

func TestParseEgressResponse(t *testing.T) {
	html := "<!DOCTYPE html>\n<html><head><title>What is my IP?</title></head><body>Your IP is 198.18.0.10</body></html>"
	tests := []struct {
		name        string
		contentType string
		body        string
		want        string   // the address; "" when an error is expected
		wantErr     []string // substrings of the error
	}{
		{name: "plain v4", contentType: "text/plain", body: "198.18.0.10", want: "198.18.0.10"},
		{name: "plain v4 with whitespace", contentType: "text/plain; charset=utf-8", body: " \t198.18.0.10\r\n\n", want: "198.18.0.10"},
		{name: "plain v6", contentType: "text/plain", body: "2001:db8::10\n", want: "2001:db8::10"},
		{name: "v4-mapped v6 is v4", body: "::ffff:198.18.0.10\n", want: "198.18.0.10"},
		{name: "no content type", body: "198.18.0.10\n", want: "198.18.0.10"},
		{name: "JSON", contentType: "application/json", body: `{"ip":"198.18.0.10"}`, want: "198.18.0.10"},
		{name: "JSON with other fields", contentType: "application/json; charset=utf-8",
			body: `{"country":"NL","ip":"2001:db8::10","asn":{"number":64496,"org":"Example"},"tags":[1,2]}` + "\n",
			want: "2001:db8::10"},
		{name: "JSON mislabelled as text", contentType: "text/plain", body: "\n{\"ip\": \" 198.18.0.10 \"}", want: "198.18.0.10"},
		{name: "plain mislabelled as JSON", contentType: "application/json", body: "198.18.0.10", want: "198.18.0.10"},
		{name: "JSON without ip", contentType: "application/json", body: `{"addr":"198.18.0.10"}`,
			wantErr: []string{`JSON response has no "ip" field: "{\"addr\":\"198.18.0.10\"}"`}},
		{name: "JSON ip not a string", body: `{"ip":3323068426}`,
			wantErr: []string{`JSON "ip" field is not a string: "3323068426"`}},
		{name: "JSON ip not an address", body: `{"ip":"localhost"}`,
			wantErr: []string{`JSON "ip" field is not an IP address: "localhost"`}},
		{name: "JSON broken", body: `{"ip":"198.18.0.10"`,
			wantErr: []string{`response is not a JSON object with an "ip" field: "{\"ip\":\"198.18.0.10\""`}},
		{name: "JSON array", body: `[{"ip":"198.18.0.10"}]`,
			wantErr: []string{`neither an IP address nor a JSON object`}},
		{name: "HTML garbage", contentType: "text/html; charset=utf-8", body: html,
			wantErr: []string{
				`response is neither an IP address nor a JSON object with an "ip" field (content type "text/html; charset=utf-8"): `,
				fmt.Sprintf("%q...", html[:64]),
			}},
		{name: "binary garbage", body: "\x00\xff\xfe198.18.0.10",
			wantErr: []string{`"\x00\xff\xfe198.18.0.10"`}},
		{name: "two addresses", body: "198.18.0.10\n198.18.0.11\n",
			wantErr: []string{`"198.18.0.10\n198.18.0.11"`}},
		{name: "address with port", body: "198.18.0.10:443", wantErr: []string{`"198.18.0.10:443"`}},
		{name: "empty", contentType: "text/plain", body: "", wantErr: []string{"empty response"}},
		{name: "only whitespace", body: " \r\n\t ", wantErr: []string{"empty response"}},
		{name: "zone", body: "fe80::1%eth0", wantErr: []string{"has a zone"}},
		{name: "unspecified", body: "0.0.0.0", wantErr: []string{"unspecified address"}},
		{name: "huge body", body: strings.Repeat("1", MaxResponseBytes+1), wantErr: []string{"response larger than 4096 bytes"}},
		{name: "largest body", body: "198.18.0.10" + strings.Repeat(" ", MaxResponseBytes-11), want: "198.18.0.10"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseEgressResponse(tt.contentType, []byte(tt.body))
			if tt.want != "" {
				if err != nil {
					t.Fatalf("error %v, want %s", err, tt.want)
				}
				if got != netip.MustParseAddr(tt.want) {
					t.Fatalf("got %v, want %s", got, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("got %v, want an error", got)
			}
			for _, s := range tt.wantErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q\ndoes not contain %q", err, s)
				}
			}
			if len(err.Error()) > maxErrLen {
				t.Errorf("error is %d bytes long, want at most %d: %q", len(err.Error()), maxErrLen, err)
			}
		})
	}
}

// maxErrLen bounds an error message of the parser, whatever the body: it
// quotes at most quoteBytes of it and of the content type (each byte
// escaped to at most 4).
const maxErrLen = 160 + 2*4*quoteBytes

// FuzzParseEgressResponse checks that the parser never panics, that what
// it accepts is a usable address that parses back to itself, and that its
// errors stay short whatever the body. The seed corpus is in
// testdata/fuzz/FuzzParseEgressResponse; `go test` runs it.
func FuzzParseEgressResponse(f *testing.F) {
	f.Add("text/plain", []byte("198.18.0.10\n"))
	f.Add("application/json", []byte(`{"ip":"2001:db8::10","country":"NL"}`))
	f.Fuzz(func(t *testing.T, contentType string, body []byte) {
		addr, err := ParseEgressResponse(contentType, body)
		if err != nil {
			if addr.IsValid() {
				t.Fatalf("error %v with address %v", err, addr)
			}
			if len(err.Error()) > maxErrLen {
				t.Fatalf("error is %d bytes long: %q", len(err.Error()), err)
			}
			return
		}
		if len(body) > MaxResponseBytes {
			t.Fatalf("accepted a body of %d bytes", len(body))
		}
		if !addr.IsValid() || addr.Zone() != "" || addr.Is4In6() || addr.IsUnspecified() {
			t.Fatalf("accepted unusable address %v from %q", addr, body)
		}
		again, err := ParseEgressResponse("", []byte(addr.String()))
		if err != nil || again != addr {
			t.Fatalf("%v does not parse back to itself: %v, %v", addr, again, err)
		}
		if !bytes.Contains(body, []byte(addr.String())) && !bytes.Contains(body, []byte("{")) && !bytes.Contains(body, []byte(":")) {
			t.Fatalf("address %v from %q which does not hold it", addr, body)
		}
	})
}
