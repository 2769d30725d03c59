#!/usr/bin/env bash
# Regenerates the configuration section of README.md from `ts-node-agent --help`
# (between the CONFIG-START and CONFIG-END markers). TestREADMEMatchesHelp fails
# when they drift.
set -euo pipefail
cd "$(dirname "$0")/.."
help=$(go run ./cmd/ts-node-agent --help)
python3 - "$help" <<'PY'
import sys, re
help_text = sys.argv[1]
readme = open("README.md").read()
block = "<!-- CONFIG-START -->\n## Configuration\n\nGenerated from `ts-node-agent --help` by `make docs`:\n\n```text\n" + help_text.rstrip("\n") + "\n```\n<!-- CONFIG-END -->"
new = re.sub(r"<!-- CONFIG-START -->.*?<!-- CONFIG-END -->", lambda m: block, readme, flags=re.S)
open("README.md", "w").write(new)
PY
