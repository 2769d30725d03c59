package redact

import "testing"

func TestURL(t *testing.T) {
	tests := []struct{ in, want string }{
		{"https://ifconfig.me/ip", "https://ifconfig.me/ip"},
		{"https://ipinfo.io/json?token=s3cr3t", "https://ipinfo.io/json?..."},
		{"https://user:hunter2@echo.example/ip", "https://echo.example/ip"},
		{"https://user@echo.example/ip", "https://echo.example/ip"},
		{"http://user:pw@127.0.0.1:8080/json?token=s3cr3t#frag", "http://127.0.0.1:8080/json?..."},
		{"https://echo.example/ip?", "https://echo.example/ip?..."},
		{"https://echo.example/ip#s3cr3t", "https://echo.example/ip"},
		{"https://[2001:db8::1]:8443/?k=v", "https://[2001:db8::1]:8443/?..."},
		{"", ""},
		{"not a url", "not a url"},
	}
	for _, tt := range tests {
		if got := URL(tt.in); got != tt.want {
			t.Errorf("URL(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
