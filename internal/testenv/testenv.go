// Package testenv says what a test may do when a real component it needs
// is missing: skip with a message when run by hand, fail under CI=true
// (CI runs everything; a skipped test is not a passed one). It has no
// dependencies, so fast unit tests can use it.
package testenv

import (
	"fmt"
	"os"
	"testing"
)

// InCI reports whether the tests run in CI (CI=true, as .ci/run sets).
func InCI() bool { return os.Getenv("CI") == "true" }

// SkipOrFail skips t with the message, or fails it under CI=true.
func SkipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if InCI() {
		t.Fatal(msg + " (CI=true: this test must not be skipped)")
	}
	t.Skip(msg)
}
