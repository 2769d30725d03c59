#!/usr/bin/env bash
# Builds the real Kubernetes binaries the tests run, from k8s.io/kubernetes
# in this separate tools module, into bin/kubernetes-<version>/ (bin/ is
# git-ignored):
#
#   test/tools/kubernetes/build.sh [COMMAND...]
#
# COMMAND is kube-apiserver, kube-controller-manager, kube-scheduler or
# kubelet; none means all four. test/apiserver needs kube-apiserver,
# test/cluster all four.
#
# Idempotent: builds only the binaries that are missing (FORCE=1 rebuilds),
# all in one `go build`, so that the packages they share compile once.
# Prints the output directory on the last line of stdout.
# Cold (empty Go build cache, modules downloaded) on 2 shared cores:
# kube-apiserver alone ~12 minutes; all four ~20 minutes. Warm: seconds.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
GO="${GO:-go}"
all=(kube-apiserver kube-controller-manager kube-scheduler kubelet)
cmds=("$@")
if ((${#cmds[@]} == 0)); then cmds=("${all[@]}"); fi
for c in "${cmds[@]}"; do
  case " ${all[*]} " in
    *" $c "*) ;;
    *) echo "build.sh: unknown command '$c'; accepted: ${all[*]}" >&2; exit 2 ;;
  esac
done

# The version is the one k8s.io/kubernetes is pinned to in the tools module.
# Parsed from go.mod directly so that the cached case needs no network.
version="$(awk '
  $1 == "require" && $2 == "k8s.io/kubernetes" { print $3; exit }
  $1 == "k8s.io/kubernetes" && $2 ~ /^v/        { print $2; exit }
' "$here/go.mod")"
if [[ -z "$version" ]]; then
  echo "build.sh: cannot find the k8s.io/kubernetes version in $here/go.mod" >&2
  exit 1
fi

outdir="$root/bin/kubernetes-$version"
missing=()
for c in "${cmds[@]}"; do
  if [[ -x "$outdir/$c" && "${FORCE:-0}" != 1 ]]; then
    echo "$c $version: cached at $outdir/$c"
  else
    missing+=("$c")
  fi
done
if ((${#missing[@]} == 0)); then
  echo "$outdir"
  exit 0
fi

start=$SECONDS
elapsed() { printf '%dm%02ds' $(((SECONDS - start) / 60)) $(((SECONDS - start) % 60)); }

echo "kubernetes $version: building ${missing[*]} into $outdir (cached afterwards; up to ~20 minutes cold on 2 cores)"
cd "$here"

echo "  [$(elapsed)] downloading modules"
"$GO" mod download

pkgs=()
for c in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
total="$(CGO_ENABLED=0 "$GO" list -deps "${pkgs[@]}" | wc -l)"
echo "  [$(elapsed)] compiling $total packages (only those not in the Go build cache are counted below)"

mkdir -p "$outdir"
tmp="$(mktemp -d "$outdir/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

minor="${version#v1.}"
minor="${minor%%.*}"
vpkg=k8s.io/component-base/version
ldflags="-s -w -X $vpkg.gitVersion=$version -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean"

# -v prints each package as it is compiled: turn that into a progress line
# every 100 packages instead of ~3000 lines of output. Anything that does not
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
CGO_ENABLED=0 "$GO" build -v -trimpath -ldflags "$ldflags" -o "$tmp/" "${pkgs[@]}" 2>&1 | progress
rc="${PIPESTATUS[0]}"
set -e
if [[ "$rc" != 0 ]]; then
  echo "build.sh: go build failed (exit $rc)" >&2
  exit "$rc"
fi

for c in "${missing[@]}"; do
  chmod 0755 "$tmp/$c"
  mv -f "$tmp/$c" "$outdir/$c"
  echo "  [$(elapsed)] $c: $("$outdir/$c" --version 2>/dev/null || echo built)"
done
echo "$outdir"
