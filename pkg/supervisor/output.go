package supervisor

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"log/slog"
)

// MaxLineBytes bounds one forwarded line of tailscaled output; the rest of a
// longer line is dropped and the record carries truncated=true.
const MaxLineBytes = 16 << 10

// forwardLines logs each line read from r as one info record on log, with
// stream=<stream>, until r returns an error (EOF, or closed).
func forwardLines(r io.Reader, log *slog.Logger, stream string) {
	br := bufio.NewReaderSize(r, MaxLineBytes)
	for {
		line, err := br.ReadSlice('\n')
		truncated := errors.Is(err, bufio.ErrBufferFull)
		emitLine(log, stream, line, truncated)
		for errors.Is(err, bufio.ErrBufferFull) { // drop the rest of the line
			_, err = br.ReadSlice('\n')
		}
		if err != nil {
			return
		}
	}
}

func emitLine(log *slog.Logger, stream string, line []byte, truncated bool) {
	line = bytes.TrimRight(line, "\r\n")
	if len(line) == 0 {
		return
	}
	if truncated {
		log.Info(string(line), "stream", stream, "truncated", true)
		return
	}
	log.Info(string(line), "stream", stream)
}
