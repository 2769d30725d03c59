#!/usr/bin/env bash
# Builds the real kube-apiserver used by the test harness in test/apiserver,
# from the separate tools module test/tools/kube-apiserver, into
# bin/kube-apiserver-<version>/kube-apiserver (bin/ is git-ignored).
#
# Idempotent: does nothing when that binary already exists (FORCE=1 rebuilds).
# Prints the binary's path on the last line of stdout.
# A cold build (empty Go build cache, modules already downloaded) took 11m45s
# on 2 shared cores (~14 CPU-minutes); the binary is ~120 MB.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
tools="$root/test/tools/kube-apiserver"
GO="${GO:-go}"

# The version is the one k8s.io/kubernetes is pinned to in the tools module.
# Parsed from go.mod directly so that the cached case needs no network.
version="$(awk '
  $1 == "require" && $2 == "k8s.io/kubernetes" { print $3; exit }
  $1 == "k8s.io/kubernetes" && $2 ~ /^v/        { print $2; exit }
' "$tools/go.mod")"
if [[ -z "$version" ]]; then
  echo "build.sh: cannot find the k8s.io/kubernetes version in $tools/go.mod" >&2
  exit 1
fi

outdir="$root/bin/kube-apiserver-$version"
out="$outdir/kube-apiserver"
if [[ -x "$out" && "${FORCE:-0}" != 1 ]]; then
  echo "kube-apiserver $version: cached at $out"
  echo "$out"
  exit 0
fi

start=$SECONDS
elapsed() { printf '%dm%02ds' $(((SECONDS - start) / 60)) $(((SECONDS - start) % 60)); }

echo "kube-apiserver $version: building into $outdir (cached afterwards; ~7-12 minutes cold on 2 cores)"
cd "$tools"

echo "  [$(elapsed)] downloading modules"
"$GO" mod download

total="$(CGO_ENABLED=0 "$GO" list -deps k8s.io/kubernetes/cmd/kube-apiserver | wc -l)"
echo "  [$(elapsed)] compiling $total packages (only those not in the Go build cache are counted below)"

mkdir -p "$outdir"
tmp="$(mktemp "$outdir/.kube-apiserver.XXXXXX")"
trap 'rm -f "$tmp"' EXIT

minor="${version#v1.}"
minor="${minor%%.*}"
vpkg=k8s.io/component-base/version
ldflags="-s -w -X $vpkg.gitVersion=$version -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean"

# -v prints each package as it is compiled: turn that into a progress line
# every 100 packages instead of ~2000 lines of output. Anything that does not
# look like a package path (compiler errors) is passed through.
progress() {
  local n=0 line
  while IFS= read -r line; do
    if [[ "$line" =~ ^[A-Za-z0-9._~/-]+$ ]]; then
      n=$((n + 1))
      if ((n % 100 == 0)); then echo "  [$(elapsed)] $n/$total packages compiled"; fi
    else
      echo "$line"
    fi
  done
  echo "  [$(elapsed)] $n packages compiled"
}
set +e
CGO_ENABLED=0 "$GO" build -v -trimpath -ldflags "$ldflags" -o "$tmp" k8s.io/kubernetes/cmd/kube-apiserver 2>&1 | progress
rc="${PIPESTATUS[0]}"
set -e
if [[ "$rc" != 0 ]]; then
  echo "build.sh: go build failed (exit $rc)" >&2
  exit "$rc"
fi

chmod 0755 "$tmp"
mv -f "$tmp" "$out"
trap - EXIT
echo "  [$(elapsed)] done: $("$out" --version 2>/dev/null || echo "$out")"
echo "$out"
