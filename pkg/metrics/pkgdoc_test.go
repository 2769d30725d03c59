package metrics

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestPackageContract enforces the package doc and that probes cannot reach
// tailscaled, the network or the API server: no such package is imported.
func TestPackageContract(t *testing.T) {
	checkPackageContract(t, "metrics")
}

// forbiddenImports are packages a probe or scrape must never use.
var forbiddenImports = []string{
	"tailscale.com/",   // the LocalAPI client and everything behind it
	"k8s.io/client-go", // the API server
	"os/exec",
}

func checkPackageContract(t *testing.T, name string) {
	t.Helper()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	doc := ""
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.ImportsOnly|parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		if af.Doc != nil {
			doc += af.Doc.Text()
		}
		for _, imp := range af.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			for _, bad := range forbiddenImports {
				if strings.HasPrefix(path, bad) {
					t.Errorf("%s imports %s: package %s must not reach tailscaled, the network or the API server", f, path, name)
				}
			}
		}
	}
	if !strings.HasPrefix(doc, "Package "+name+" ") || !strings.Contains(doc, "must not") {
		t.Errorf("package doc must start with %q and say what the package must not do; got:\n%s", "Package "+name, doc)
	}
}
