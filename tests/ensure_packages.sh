# Sourced by tests/run.sh and benches/run.sh: install the Debian packages
# that are missing, given as `file=package` pairs (the file shows the package
# is there). Services a package would start on install (docker, containerd,
# nginx) are not started: the machine's own services are never touched.
ensure_packages() {
  local caller=$1 pair missing=()
  shift
  for pair in "$@"; do
    [ -e "${pair%%=*}" ] || missing+=("${pair#*=}")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "$caller: missing packages: ${missing[*]}; run as root or install them" >&2
    return 1
  fi
  echo "$caller: installing ${missing[*]}" >&2
  # A policy-rc.d that forbids starting services, only for this install
  # (left alone when the machine already has one).
  local guard=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    guard=/usr/sbin/policy-rc.d
  fi
  local status=0
  apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    status=$?
  [ -z "$guard" ] || rm -f "$guard"
  return $status
}
