package role

import (
	"go/parser"
	"go/token"
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestPackageContract checks the package doc exists and that the package
// talks to nothing but the Kubernetes API: no tailscaled, no HTTP of its
// own, no polling helpers.
func TestPackageContract(t *testing.T) {
	forbidden := []string{"tailscale.com/", "net/http", "k8s.io/apimachinery/pkg/util/wait", "os/exec"}
	entries, err := os.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	doc := false
	fset := token.NewFileSet()
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ImportsOnly|parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		if f.Doc != nil && strings.HasPrefix(f.Doc.Text(), "Package role ") {
			doc = true
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			for _, bad := range forbidden {
				if strings.HasPrefix(path, bad) {
					t.Errorf("%s imports %s", name, path)
				}
			}
		}
	}
	if !doc {
		t.Error("no package doc comment")
	}
}
