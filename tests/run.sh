#!/usr/bin/env bash
# Runs every test of berth: unit tests and the integration tests that pull
# through berth from a real CNCF Distribution registry with real clients.
# On a fresh Debian 12 machine, run as root, it first installs what the tests
# need from Debian's packages.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use: the file that shows each is there.
source tests/ensure_packages.sh
ensure_packages tests/run.sh \
  /usr/bin/docker-registry=docker-registry `# the real upstream (CNCF Distribution 2.8)` \
  /usr/bin/skopeo=skopeo                   `# the real client` \
  /bin/busybox=busybox-static              `# rootfs of the test images` \
  /usr/bin/openssl=openssl                 `# self-signed certificates for TLS tests` \
  /usr/sbin/dockerd=docker.io              `# a real Docker daemon (registry-mirrors)` \
  /usr/bin/containerd=containerd           `# a real containerd, driven by ctr with hosts.toml` \
  /usr/bin/podman=podman                   `# a real podman: login to berth, registries.conf mirror` \
  /usr/bin/promtool=prometheus             `# alert rules checked by promtool; a real Prometheus scrapes berth` \
  /usr/bin/chromium=chromium               `# the status page rendered by a real browser` \
  /usr/bin/systemd-analyze=systemd         `# docker/berth.service checked by systemd-analyze verify and security` \
  /usr/bin/mmdebstrap=mmdebstrap           `# the container image's runtime base, made from Debian's packages` \
  /usr/bin/curl=curl \
  /usr/bin/tar=tar \
  /usr/bin/gzip=gzip \
  /usr/sbin/ip=iproute2                    `# network namespaces for network faults` \
  /usr/sbin/iptables=iptables              `# DROP / REJECT inside those namespaces` \
  /usr/share/doc/python3-venv=python3-venv `# a venv for kubernetes-validate (PyPI)`

# kubernetes-validate checks the Kubernetes kit offline; installed from PyPI
# into a venv of its own, once per machine.
validate_venv="${XDG_CACHE_HOME:-$HOME/.cache}/berth-tests/kubernetes-validate"
if [ ! -x "$validate_venv/bin/kubernetes-validate" ]; then
  /usr/bin/python3 -m venv "$validate_venv"
  "$validate_venv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate
fi
export BERTH_KUBERNETES_VALIDATE="$validate_venv/bin/kubernetes-validate"

# The container image's runtime base (docker/Dockerfile cannot pull
# debian:bookworm-slim here): a Debian 12 root file system made by mmdebstrap
# from this machine's mirror, once per machine, for tests/container_image.rs.
BERTH_RUNTIME_BASE_TAR="$(bash tests/runtime_base.sh)"
export BERTH_RUNTIME_BASE_TAR

# Garage (S3 storage for replicas, tests/s3_store.rs): crates.io's `garage`,
# built once per machine when missing (about 18 minutes on 2 cores).
if [ ! -x "$HOME/.cargo/bin/garage" ] && ! command -v garage >/dev/null; then
  cargo install garage --version 2.5.0 --locked
fi

# Crates are fetched before the dead proxy below is set (cargo honours it too).
cargo fetch --locked

# Nothing a test starts may reach beyond this machine: a dead proxy for
# everything but loopback.
export HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY=127.0.0.1,localhost

cargo test --all-targets --no-fail-fast
