package deploy_test

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	yaml "go.yaml.in/yaml/v3"
)

// TestCapabilitiesAndPrivilegedAreExplained reads the source YAML of
// deploy/daemonset (comments are lost in rendering) and requires:
//   - every added capability to have a comment next to it that names it
//     and says why;
//   - every privileged setting to have a comment next to it, and
//     privileged: true only with a comment naming the operation that needs
//     it (writing /proc/sys);
//   - the namespace's Pod Security level to be justified.
func TestCapabilitiesAndPrivilegedAreExplained(t *testing.T) {
	root := repoRoot(t)
	var caps, privTrue int
	err := filepath.WalkDir(filepath.Join(root, "deploy", "daemonset"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".yaml") {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		for _, f := range yamlFindings(t, p) {
			where := fmt.Sprintf("%s:%d", rel, f.line)
			switch f.kind {
			case "capability":
				caps++
				if !strings.Contains(f.comment, f.value) || len(f.comment) < len(f.value)+20 {
					t.Errorf("%s: capability %s needs a comment next to it naming it and saying why (got %q)", where, f.value, f.comment)
				}
			case "privileged":
				if f.comment == "" {
					t.Errorf("%s: privileged: %s needs a comment next to it", where, f.value)
				}
				if f.value == "true" {
					privTrue++
					if !strings.Contains(f.comment, "/proc/sys") {
						t.Errorf("%s: privileged: true must name the operation that needs it (writing /proc/sys/...): %q", where, f.comment)
					}
				}
			case "pod-security":
				if !strings.Contains(f.comment, "hostNetwork") || !strings.Contains(f.comment, "hostPath") || !strings.Contains(f.comment, "NET_ADMIN") {
					t.Errorf("%s: the Pod Security level %s must be justified (hostNetwork, hostPath, NET_ADMIN): %q", where, f.value, f.comment)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if caps == 0 || privTrue == 0 {
		t.Errorf("found %d capabilities and %d privileged: true in deploy/daemonset: the test no longer sees them", caps, privTrue)
	}
}

type finding struct {
	kind, value, comment string
	line                 int
}

// yamlFindings returns the capabilities, privileged settings and Pod
// Security labels of a YAML file with the comments next to them: the
// comment lines just above and the comment at the end of the line.
func yamlFindings(t *testing.T, file string) []finding {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var out []finding
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	for {
		var doc yaml.Node
		if err := dec.Decode(&doc); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			t.Fatalf("%s: %v", file, err)
		}
		walkYAML(&doc, "", func(key, val *yaml.Node, parent string) {
			comment := func(nodes ...*yaml.Node) string {
				var s []string
				for _, n := range nodes {
					s = append(s, n.HeadComment, n.LineComment)
				}
				return strings.TrimSpace(strings.Join(s, " "))
			}
			switch {
			case key.Value == "add" && parent == "capabilities" && val.Kind == yaml.SequenceNode:
				for _, item := range val.Content {
					out = append(out, finding{"capability", item.Value, comment(item), item.Line})
				}
			case key.Value == "privileged":
				out = append(out, finding{"privileged", val.Value, comment(key, val), key.Line})
			case key.Value == "pod-security.kubernetes.io/enforce":
				out = append(out, finding{"pod-security", val.Value, comment(key, val), key.Line})
			}
		})
	}
	return out
}

// walkYAML calls fn for every key/value pair of every mapping under n, with
// the key of the mapping that holds the pair.
func walkYAML(n *yaml.Node, parent string, fn func(key, val *yaml.Node, parent string)) {
	switch n.Kind {
	case yaml.DocumentNode, yaml.SequenceNode:
		for _, c := range n.Content {
			walkYAML(c, parent, fn)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			fn(k, v, parent)
			walkYAML(v, k.Value, fn)
		}
	}
}

// TestYAMLFindings proves that the comment check sees a missing comment.
func TestYAMLFindings(t *testing.T) {
	f := filepath.Join(t.TempDir(), "x.yaml")
	src := `securityContext:
  privileged: true
  capabilities:
    add:
      # NET_ADMIN: routes, rules and the TUN device of tailscaled.
      - NET_ADMIN
      - SYS_ADMIN
`
	if err := os.WriteFile(f, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	got := yamlFindings(t, f)
	want := []finding{
		{"privileged", "true", "", 2},
		{"capability", "NET_ADMIN", "# NET_ADMIN: routes, rules and the TUN device of tailscaled.", 6},
		{"capability", "SYS_ADMIN", "", 7},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("findings\n  %v\nwant\n  %v", got, want)
	}
}
