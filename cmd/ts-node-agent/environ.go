package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// scrubInitialEnviron overwrites, with NUL bytes, the values of the named
// variables in the environment block execve put on the agent's stack:
// the bytes /proc/<agent-pid>/environ shows. os.Unsetenv (dropSecretEnv)
// only edits Go's own copy, and the Go runtime copied the block into Go
// strings at start, so nothing in the process reads it again. A value of
// the form file:PATH is left alone (a path, not a secret). It reads the
// block's bounds from /proc/self/stat (env_start, env_end) and writes
// through /proc/self/mem, the process's own memory.
func scrubInitialEnviron(names ...string) error {
	stat, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return fmt.Errorf("reading /proc/self/stat: %w", err)
	}
	start, end, err := envBounds(stat)
	if err != nil {
		return err
	}
	mem, err := os.OpenFile("/proc/self/mem", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("opening /proc/self/mem: %w", err)
	}
	defer mem.Close()
	block := make([]byte, end-start)
	if _, err := mem.ReadAt(block, int64(start)); err != nil {
		return fmt.Errorf("reading the initial environment: %w", err)
	}
	var errs []error
	for off, kv := range envEntries(block) {
		for _, name := range names {
			value, ok := bytes.CutPrefix(kv, []byte(name+"="))
			if !ok || len(value) == 0 || bytes.HasPrefix(value, []byte("file:")) {
				continue
			}
			at := int64(start) + int64(off) + int64(len(name)) + 1
			if _, err := mem.WriteAt(make([]byte, len(value)), at); err != nil {
				errs = append(errs, fmt.Errorf("clearing %s in the initial environment: %w", name, err))
			}
		}
	}
	return errors.Join(errs...)
}

// envBounds parses env_start and env_end (fields 50 and 51 of proc(5)'s
// /proc/PID/stat) from stat. The command name, field 2, is in parentheses
// and may hold spaces and parentheses itself: fields are counted after the
// last ')'.
func envBounds(stat []byte) (start, end uint64, err error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, 0, errors.New("/proc/self/stat: no command name")
	}
	fields := strings.Fields(string(stat[i+1:])) // fields[0] is field 3
	const envStart, envEnd = 50 - 3, 51 - 3
	if len(fields) <= envEnd {
		return 0, 0, fmt.Errorf("/proc/self/stat: %d fields, the kernel gives no env_start/env_end", len(fields)+2)
	}
	if start, err = strconv.ParseUint(fields[envStart], 10, 64); err == nil {
		end, err = strconv.ParseUint(fields[envEnd], 10, 64)
	}
	if err != nil || end < start || end-start > 1<<24 {
		return 0, 0, fmt.Errorf("/proc/self/stat: env_start %q, env_end %q: %v", fields[envStart], fields[envEnd], err)
	}
	return start, end, nil
}

// envEntries yields the NUL-terminated entries of block with their
// offsets.
func envEntries(block []byte) func(yield func(int, []byte) bool) {
	return func(yield func(int, []byte) bool) {
		off := 0
		for off < len(block) {
			n := bytes.IndexByte(block[off:], 0)
			if n < 0 {
				n = len(block) - off
			}
			if n > 0 && !yield(off, block[off:off+n]) {
				return
			}
			off += n + 1
		}
	}
}
