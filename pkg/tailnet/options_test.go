package tailnet

import (
	"strings"
	"testing"

	"github.com/ts-node-agent/ts-node-agent/pkg/snapshot"
)

func TestDefaults(t *testing.T) {
	o := Options{Hostname: "left-over", AcceptDNS: true}
	o.Defaults()
	if o.Role != snapshot.RoleNone || !o.AuthOnce || !o.ExitNodeAllowLANAccess || o.AcceptDNS || o.AcceptRoutes || o.Hostname != "" {
		t.Errorf("Defaults() = %+v", o)
	}
	if err := o.Validate(); err != nil {
		t.Errorf("defaults do not validate: %v", err)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*Options)
		want []string // substrings of the error; nil: valid
	}{
		{"full", func(o *Options) {
			o.Role = snapshot.RoleExit
			o.Hostname = "node-1"
			o.AdvertiseTags = []string{"tag:k8s"}
			o.LoginServer = "https://hs.example:8080/"
		}, nil},
		{"bad role", func(o *Options) { o.Role = "gateway" }, []string{`role "gateway"`}},
		{"empty role", func(o *Options) { o.Role = "" }, []string{`role ""`}},
		{"bad hostname", func(o *Options) { o.Hostname = "no spaces" }, []string{`hostname "no spaces"`}},
		{"bad tag", func(o *Options) { o.AdvertiseTags = []string{"k8s"} }, []string{`advertise tag "k8s"`}},
		{"bad login server", func(o *Options) { o.LoginServer = "hs.example" }, []string{`login server "hs.example"`}},
		{"all at once", func(o *Options) {
			o.Role = "x"
			o.AdvertiseTags = []string{"tag:ok", "bad"}
			o.LoginServer = "ftp://x"
		}, []string{`role "x"`, `advertise tag "bad"`, `login server "ftp://x"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := defaultOpts()
			tt.mod(&o)
			err := o.Validate()
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want errors %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate() = %q, want it to contain %q", err, w)
				}
			}
		})
	}
}
