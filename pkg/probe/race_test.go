//go:build race

package probe

// raceEnabled: the race detector's shadow memory counts in the RSS, so
// TestServerFlood bounds the Go heap and stacks alone under it.
const raceEnabled = true
