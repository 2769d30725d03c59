package netcheck_test

import (
	"testing"

	"github.com/ts-node-agent/ts-node-agent/pkg/netcheck"
)

// BenchmarkParseEgressResponse is the parsing side of one egress check,
// for the answer shapes echo services give.
func BenchmarkParseEgressResponse(b *testing.B) {
	for _, bc := range []struct {
		name, contentType, body string
	}{
		{"plain-ipv4", "text/plain", "198.18.0.10\n"},
		{"plain-ipv6", "text/plain", "2001:db8::10\n"},
		{"json", "application/json", `{"ip":"198.18.0.10"}`},
		{"json-other-fields", "application/json; charset=utf-8",
			`{"country":"NL","ip":"2001:db8::10","asn":{"number":64496,"org":"Example"},"tags":[1,2],"hostname":"exit-1.example.net"}` + "\n"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			body := []byte(bc.body)
			if _, err := netcheck.ParseEgressResponse(bc.contentType, body); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := netcheck.ParseEgressResponse(bc.contentType, body); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
