#!/usr/bin/env bash
# Makes sure what pm's build, tests and quick start need is installed. On Debian as root
# it installs what is missing with apt-get; otherwise it says what to install.
#   scripts/prereqs.sh          etcd, protoc
#   scripts/prereqs.sh --python also python3-venv (for the gce-sim fidelity tests)
set -euo pipefail

missing=()
command -v etcd >/dev/null 2>&1 || [ -n "${ETCD_BIN:-}" ] || missing+=(etcd-server)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if [ "${1:-}" = --python ]; then
    python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq "${missing[@]}" >/dev/null
    # Debian's etcd-server may start a system etcd on 2379; pm's scripts start their own.
    if command -v systemctl >/dev/null 2>&1; then systemctl disable --now etcd >/dev/null 2>&1 || true; fi
else
    echo "missing: ${missing[*]}; install them (Debian: sudo apt-get install ${missing[*]})" >&2
    exit 1
fi
