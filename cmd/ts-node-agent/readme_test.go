package main

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/ts-node-agent/ts-node-agent/pkg/config"
)

// TestREADMEMatchesHelp keeps the README's configuration section equal to
// --help: run `make docs` after changing a flag.
func TestREADMEMatchesHelp(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var help bytes.Buffer
	config.Usage(&help)
	want := "```text\n" + strings.TrimRight(help.String(), "\n") + "\n```\n<!-- CONFIG-END -->"
	if !bytes.Contains(readme, []byte(want)) {
		t.Fatal("README.md's configuration section differs from --help: run `make docs`")
	}
}
