package hostnet

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestPackageContract enforces what the package doc promises: a package
// doc, no LocalAPI, no shelling out.
func TestPackageContract(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	forbidden := []string{
		"os/exec",                    // no ip, ethtool, sysctl, modprobe
		"tailscale.com/client/local", // no LocalAPI
		"tailscale.com/client/tailscale",
		"tailscale.com/ipn",
	}
	hasDoc := false
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ImportsOnly|parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		if f.Doc != nil && strings.HasPrefix(f.Doc.Text(), "Package hostnet ") {
			hasDoc = true
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			for _, bad := range forbidden {
				if path == bad || strings.HasPrefix(path, bad+"/") {
					t.Errorf("%s imports %s, which this package must not use", name, path)
				}
			}
		}
	}
	if !hasDoc {
		t.Error("no package doc")
	}
}
