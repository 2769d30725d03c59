package netcheck

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestPackageContract enforces what the package doc promises: a package
// doc, no LocalAPI, no shelling out, no netlink, no other agent package
// but the snapshot.
func TestPackageContract(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	forbidden := []string{
		"os/exec",
		"tailscale.com",
		"github.com/vishvananda/netlink",
		"github.com/mdlayher/netlink",
	}
	const module = "github.com/ts-node-agent/ts-node-agent/"
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
		if f.Doc != nil && strings.HasPrefix(f.Doc.Text(), "Package netcheck ") {
			hasDoc = true
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			for _, bad := range forbidden {
				if path == bad || strings.HasPrefix(path, bad+"/") {
					t.Errorf("%s imports %s, which this package must not use", name, path)
				}
			}
			if strings.HasPrefix(path, module) && path != module+"pkg/snapshot" {
				t.Errorf("%s imports %s: netcheck depends on no agent package but the snapshot", name, path)
			}
		}
	}
	if !hasDoc {
		t.Error("no package doc")
	}
}
