#!/usr/bin/env bash
# Writes the image's CA bundle (/etc/ssl/certs/ca-certificates.crt) to $1:
# the PEM files of Debian's ca-certificates package
# (usr/share/ca-certificates/mozilla/*.crt), joined in sorted order.
#
# The package comes from `apt-get download` (the version the distribution
# ships now, unpacked with `dpkg -x` in a temporary directory, nothing is
# installed); without apt lists or a mirror (the Go builder image has none)
# the installed package's files under /usr/share/ca-certificates/mozilla are
# used. The bundle is the package's as shipped, not this host's
# /etc/ssl/certs, which local configuration may have changed.
set -euo pipefail

out=${1:?usage: ca-certificates.sh OUT}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

src=
if command -v apt-get >/dev/null && command -v dpkg >/dev/null &&
  (cd "$tmp" && apt-get download -qq ca-certificates) >"$tmp/apt.log" 2>&1; then
  deb=$(echo "$tmp"/ca-certificates_*.deb)
  dpkg -x "$deb" "$tmp/root"
  src=$tmp/root/usr/share/ca-certificates/mozilla
  from="package $(basename "$deb") (apt-get download)"
elif [[ -d /usr/share/ca-certificates/mozilla ]]; then
  src=/usr/share/ca-certificates/mozilla
  from="$src (installed ca-certificates $(dpkg-query -W -f='${Version}' ca-certificates 2>/dev/null || echo '?'))"
else
  echo "ca-certificates.sh: apt-get download ca-certificates failed and /usr/share/ca-certificates/mozilla is missing:" >&2
  cat "$tmp/apt.log" >&2 2>/dev/null || true
  echo "run apt-get update, or install ca-certificates" >&2
  exit 1
fi

mapfile -t pems < <(LC_ALL=C find "$src" -maxdepth 1 -name '*.crt' -type f | LC_ALL=C sort)
if ((${#pems[@]} < 50)); then
  echo "ca-certificates.sh: only ${#pems[@]} certificates in $src" >&2
  exit 1
fi
mkdir -p "$(dirname "$out")"
# sed '$a\' ends every file with a newline, so no two PEM blocks share a line.
sed -s -e '$a\' "${pems[@]}" >"$out.tmp"
mv "$out.tmp" "$out"
echo "ca-certificates: ${#pems[@]} certificates from $from -> $out"
