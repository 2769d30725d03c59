package tailnet

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestPackageContract enforces what the package doc promises: a package
// doc, and no way to shell out to the CLI or touch netlink.
func TestPackageContract(t *testing.T) {
	forbidden := []string{
		"os/exec",
		"syscall",
		"golang.org/x/sys/unix",
		"github.com/vishvananda/netlink",
		"github.com/mdlayher/netlink",
		"github.com/jsimonetti/rtnetlink",
		"tailscale.com/cmd/tailscale",
	}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	sawDoc := false
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(token.NewFileSet(), name, nil, parser.ImportsOnly|parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		if f.Doc != nil && strings.HasPrefix(f.Doc.Text(), "Package tailnet ") {
			sawDoc = true
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			for _, bad := range forbidden {
				if path == bad || strings.HasPrefix(path, bad+"/") {
					t.Errorf("%s imports %s, which the package doc rules out", name, path)
				}
			}
		}
	}
	if !sawDoc {
		t.Error("no package doc starting with \"Package tailnet \"")
	}
}
