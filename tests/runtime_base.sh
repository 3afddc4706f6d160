#!/usr/bin/env bash
# Prints the path of the container image's offline runtime base: a Debian 12
# root file system (mmdebstrap's minbase, the packages of debian:bookworm-slim,
# plus ca-certificates) made from this machine's Debian mirror, for
# `docker import`. Built once per machine (~20 s) and kept under
# ~/.cache/berth-tests/; tests/run.sh calls it before cutting the network off,
# and tests/container_image.rs when run alone.
set -euo pipefail

cache="${XDG_CACHE_HOME:-$HOME/.cache}/berth-tests"
tar="$cache/runtime-base-bookworm.tar"

# The mirror this machine's apt uses for bookworm (one-line or deb822 lists).
machine_mirror() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk '$1 == "deb" { for (i = 2; i < NF; i++) if ($i ~ /^https?:\/\// && $(i + 1) == "bookworm") { print $i; exit } }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk 'BEGIN { RS = "" } /Suites:[^\n]*bookworm( |\n|$)/ && match($0, /URIs: *[^ \n]+/) {
           u = substr($0, RSTART, RLENGTH); sub(/URIs: */, "", u); print u; exit }' "$f"
  done
}

if [ ! -s "$tar" ]; then
  mirror="${BERTH_DEBIAN_MIRROR:-$(machine_mirror | head -n 1)}"
  mirror="${mirror:-http://deb.debian.org/debian}"
  mkdir -p "$cache"
  partial="$cache/runtime-base-bookworm.$$.tar"
  trap 'rm -f "$partial"' EXIT
  echo "runtime_base.sh: mmdebstrap bookworm from $mirror into $tar" >&2
  mmdebstrap --quiet --variant=minbase --include=ca-certificates bookworm "$partial" "$mirror" >&2
  mv "$partial" "$tar"
fi
echo "$tar"
