package supervisor

import (
	"go/parser"
	"go/token"
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestPackageContract checks the package doc exists and that the package
// does not talk to tailscaled: no LocalAPI client, no HTTP.
func TestPackageContract(t *testing.T) {
	forbidden := []string{"tailscale.com/client", "net/http", "tailscale.com/ipn"}
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
		if f.Doc != nil && strings.HasPrefix(f.Doc.Text(), "Package supervisor ") {
			doc = true
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			for _, bad := range forbidden {
				if strings.HasPrefix(path, bad) {
					t.Errorf("%s imports %s: the supervisor must not talk to tailscaled", name, path)
				}
			}
		}
	}
	if !doc {
		t.Error("no package doc comment")
	}
}
