package exitnode

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestPackageBoundaries enforces the package doc: a doc comment saying
// what the package must not do, and no import that would let it touch
// netlink, tailscaled's prefs or the tailscale CLI behind the setter's
// back.
func TestPackageBoundaries(t *testing.T) {
	forbidden := map[string]string{
		"tailscale.com/ipn":                                  "prefs change only through the ExitNodeSetter",
		"github.com/vishvananda/netlink":                     "no netlink",
		"github.com/tailscale/netlink":                       "no netlink",
		"github.com/mdlayher/netlink":                        "no netlink",
		"github.com/jsimonetti/rtnetlink":                    "no netlink",
		"golang.org/x/sys/unix":                              "no netlink",
		"os/exec":                                            "no tailscale CLI",
		"github.com/ts-node-agent/ts-node-agent/pkg/hostnet": "no host networking",
		"github.com/ts-node-agent/ts-node-agent/pkg/tailnet": "depends on small interfaces, not on the Manager",
	}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	docs := 0
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		src, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		f, err := parser.ParseFile(fset, name, src, parser.ImportsOnly|parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		if f.Doc != nil {
			docs++
			if !strings.Contains(f.Doc.Text(), "must not") {
				t.Errorf("%s: package doc does not say what the package must not do", name)
			}
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if why, bad := forbidden[path]; bad {
				t.Errorf("%s imports %s: %s", name, path, why)
			}
		}
	}
	if docs != 1 {
		t.Errorf("%d files have a package doc, want exactly 1 (doc.go)", docs)
	}
}
