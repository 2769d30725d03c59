// Package pkgdoc holds the repository-wide test of the package contracts:
// every package under pkg/ has a package doc that says what it owns and
// what it must not do, and the imports that would break that promise are
// absent. One table, so that a new package cannot forget its test.
package pkgdoc

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/ts-node-agent/ts-node-agent/"

// contracts maps each package directory to the imports it must not have,
// and why. An entry matches the package and everything below it; one that
// starts with "=" matches only that package.
var contracts = map[string]map[string]string{
	"pkg/snapshot": {
		module:    "the snapshot depends on no other agent package",
		"os/exec": "no I/O", "=net": "no I/O", "net/http": "no I/O", "tailscale.com": "no LocalAPI",
	},
	"pkg/validate": {
		module:                 "every agent package may import it, so it imports none",
		"os":                   "pure functions: no I/O",
		"os/exec":              "pure functions: no I/O",
		"=net":                 "pure functions: no I/O",
		"net/http":             "pure functions: no I/O",
		"tailscale.com/client": "no LocalAPI: pkg/netcheck and pkg/config import it",
		"tailscale.com/ipn":    "no LocalAPI: pkg/netcheck and pkg/config import it",
		"k8s.io/client-go":     "pure functions: no I/O",
	},
	"pkg/config": {
		"tailscale.com/client": "configuration does not talk to tailscaled",
		"os/exec":              "no shelling out",
	},
	"pkg/supervisor": {
		"tailscale.com/client": "the supervisor must not talk to tailscaled",
		"tailscale.com/ipn":    "the supervisor must not talk to tailscaled",
		"net/http":             "the supervisor must not talk to tailscaled",
	},
	"pkg/probe": {
		"tailscale.com":    "probes never reach tailscaled",
		"k8s.io/client-go": "probes never reach the API server",
		"os/exec":          "probes run nothing",
	},
	"pkg/metrics": {
		"tailscale.com":    "scrapes never reach tailscaled",
		"k8s.io/client-go": "scrapes never reach the API server",
		"os/exec":          "scrapes run nothing",
	},
	"pkg/hostnet": {
		"os/exec":                        "no ip, ethtool, sysctl or modprobe commands: netlink",
		"tailscale.com/client/local":     "no LocalAPI",
		"tailscale.com/client/tailscale": "no LocalAPI",
		"tailscale.com/ipn":              "no LocalAPI",
	},
	"pkg/netcheck": {
		"os/exec": "no curl",
		// tailscale.com/net/netcheck and its helpers measure DERP
		// latency in-process; the LocalAPI client stays out.
		"tailscale.com/client":           "no LocalAPI",
		"tailscale.com/ipn":              "no LocalAPI",
		"github.com/vishvananda/netlink": "no netlink",
		"github.com/mdlayher/netlink":    "no netlink",
		module + "pkg/tailnet":           "depends on the snapshot and redact only",
		module + "pkg/hostnet":           "depends on the snapshot and redact only",
		module + "pkg/config":            "depends on the snapshot and redact only (config imports hostnet)",
	},
	"pkg/redact": {
		module:          "a leaf: every package may use the one implementation",
		"os/exec":       "no I/O",
		"=net":          "no I/O",
		"net/http":      "no I/O",
		"=log/slog":     "never logs",
		"=os":           "no I/O",
		"tailscale.com": "no LocalAPI",
	},
	"pkg/kube": {
		"tailscale.com":                     "talks to the Kubernetes API only",
		"net/http":                          "talks to the Kubernetes API only",
		"k8s.io/apimachinery/pkg/util/wait": "no polling",
		"os/exec":                           "no kubectl",
	},
	"pkg/tailnet": {
		"os/exec":                         "no tailscale CLI",
		"syscall":                         "no netlink or sysctls",
		"golang.org/x/sys/unix":           "no netlink or sysctls",
		"github.com/vishvananda/netlink":  "no netlink",
		"github.com/mdlayher/netlink":     "no netlink",
		"github.com/jsimonetti/rtnetlink": "no netlink",
		"tailscale.com/cmd/tailscale":     "no tailscale CLI",
	},
	"pkg/authkey": {
		"tailscale.com/client/local": "talks to the Tailscale API, not to tailscaled",
		"tailscale.com/ipn":          "talks to the Tailscale API, not to tailscaled",
		"log/slog":                   "never logs: a secret could reach the log",
		"=log":                       "never logs: a secret could reach the log",
		"os/exec":                    "no tailscale CLI",
		module + "pkg/tailnet":       "the Manager calls it, not the other way round",
	},
	"pkg/tailnet/exitnode": {
		"=tailscale.com/ipn":              "prefs change only through the ExitNodeSetter",
		"github.com/vishvananda/netlink":  "no netlink",
		"github.com/tailscale/netlink":    "no netlink",
		"github.com/mdlayher/netlink":     "no netlink",
		"github.com/jsimonetti/rtnetlink": "no netlink",
		"golang.org/x/sys/unix":           "no netlink",
		"os/exec":                         "no tailscale CLI",
		module + "pkg/hostnet":            "no host networking",
		module + "pkg/tailnet":            "depends on small interfaces, not on the Manager",
	},
}

func TestEveryPackageHasAContract(t *testing.T) {
	root := filepath.Join("..", "..")
	err := filepath.WalkDir(filepath.Join(root, "pkg"), func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		if d.Name() == "testdata" {
			return filepath.SkipDir
		}
		rel, _ := filepath.Rel(root, path)
		if len(goFiles(t, path)) > 0 {
			if _, ok := contracts[filepath.ToSlash(rel)]; !ok {
				t.Errorf("%s has no entry in the contracts table", rel)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestPackageContracts(t *testing.T) {
	for dir, forbidden := range contracts {
		t.Run(dir, func(t *testing.T) {
			name := filepath.Base(dir)
			files := goFiles(t, filepath.Join("..", "..", dir))
			if len(files) == 0 {
				t.Fatalf("no Go files in %s", dir)
			}
			docs := 0
			for _, f := range files {
				af, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.ImportsOnly|parser.ParseComments)
				if err != nil {
					t.Fatal(err)
				}
				if af.Doc != nil {
					docs++
					doc := af.Doc.Text()
					if !strings.HasPrefix(doc, "Package "+name+" ") {
						t.Errorf("%s: package doc must start with %q", f, "Package "+name+" ")
					}
					if !strings.Contains(doc, "must not") && !strings.Contains(doc, "never") {
						t.Errorf("%s: package doc does not say what the package must not do", f)
					}
				}
				for _, imp := range af.Imports {
					path, _ := strconv.Unquote(imp.Path.Value)
					for bad, why := range forbidden {
						exact := strings.HasPrefix(bad, "=")
						bad = strings.TrimSuffix(strings.TrimPrefix(bad, "="), "/")
						if path == bad || !exact && strings.HasPrefix(path, bad+"/") {
							if bad+"/" == module && path == module+"pkg/snapshot" {
								continue
							}
							t.Errorf("%s imports %s: %s", f, path, why)
						}
					}
				}
			}
			if docs != 1 {
				t.Errorf("%d files have a package doc, want exactly 1", docs)
			}
		})
	}
}

// goFiles lists the non-test Go files of a directory.
func goFiles(t *testing.T, dir string) []string {
	t.Helper()
	all, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, f := range all {
		if !strings.HasSuffix(f, "_test.go") {
			files = append(files, f)
		}
	}
	return files
}
