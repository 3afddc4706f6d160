#!/usr/bin/env bash
# The benchmark command: installs the peers from Debian's packages, then runs
# the criterion micro-benches and the load benchmark (berth beside CNCF
# Distribution in proxy mode and nginx, all on 127.0.0.1), which prints a
# table of ratios. Not part of the tests: nothing here asserts a speed.
# Run as root on Debian 12: bash benches/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

declare -A wanted=(
  [/usr/bin/docker-registry]=docker-registry   # the upstream, and the peer in proxy mode
  [/usr/bin/skopeo]=skopeo                     # cold pulls of a 20-layer image
  [/usr/sbin/nginx]=nginx                      # sendfile reference for blob throughput
  [/usr/bin/wrk]=wrk                           # the load generator for manifests
  [/usr/bin/curl]=curl                         # blob throughput clients
  [/usr/bin/tar]=tar
  [/usr/bin/gzip]=gzip
)
missing=()
for file in "${!wanted[@]}"; do
  [ -e "$file" ] || missing+=("${wanted[$file]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "benches/run.sh: missing packages: ${missing[*]}; run as root or install them" >&2
    exit 1
  fi
  echo "benches/run.sh: installing ${missing[*]}" >&2
  # Installing nginx must not start the machine's own nginx service: a
  # policy-rc.d that forbids starting services, only for this install.
  guard=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    guard=/usr/sbin/policy-rc.d
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ -z "$guard" ] || rm -f "$guard"
fi

cargo fetch --locked
# Nothing the benchmark starts may reach beyond this machine.
export HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY=127.0.0.1,localhost

cargo bench --bench micro
cargo bench --bench load
