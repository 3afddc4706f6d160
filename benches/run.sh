#!/usr/bin/env bash
# The benchmark command: installs the peers from Debian's packages, then runs
# the criterion micro-benches, the load benchmark (berth beside CNCF
# Distribution in proxy mode and nginx, all on 127.0.0.1), which prints a
# table of ratios, the eviction benchmark and the fleet benchmark (replicas
# on a real Garage cluster). Not part of the tests: nothing here asserts a speed.
# Run as root on Debian 12: bash benches/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

source tests/ensure_packages.sh
ensure_packages benches/run.sh \
  /usr/bin/docker-registry=docker-registry `# the upstream, and the peer in proxy mode` \
  /usr/bin/skopeo=skopeo                   `# cold pulls of a 20-layer image` \
  /usr/sbin/nginx=nginx                    `# sendfile reference for blob throughput` \
  /usr/bin/wrk=wrk                         `# the load generator for manifests` \
  /usr/bin/curl=curl                       `# blob throughput clients` \
  /usr/bin/tar=tar \
  /usr/bin/gzip=gzip

# Garage for the fleet benchmark, built once per machine when missing
# (about 18 minutes on 2 cores), the same version the tests use.
if [ ! -x "$HOME/.cargo/bin/garage" ] && ! command -v garage >/dev/null; then
  cargo install garage --version 2.5.0 --locked
fi

cargo fetch --locked
# Nothing the benchmark starts may reach beyond this machine.
export HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY=127.0.0.1,localhost

cargo bench --bench micro
cargo bench --bench load
cargo bench --bench eviction
cargo bench --bench fleet
