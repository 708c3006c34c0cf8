#!/usr/bin/env bash
# Makes sure what pm's build, tests and quick start need is installed. On Debian as root
# it installs what is missing with apt-get; otherwise it says what to install.
#   scripts/prereqs.sh          etcd, etcdctl (the snapshot restore tests), protoc
#   scripts/prereqs.sh --python also python3-venv (for the gce-sim fidelity tests), and
#                               promtool if it can (Debian's prometheus package, for the
#                               alert rule tests, which only parse the rules without it)
set -euo pipefail

missing=()
optional=()
command -v etcd >/dev/null 2>&1 || [ -n "${ETCD_BIN:-}" ] || missing+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ "${1:-}" = --python ]; then
    python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
    command -v promtool >/dev/null 2>&1 || optional+=(prometheus)
fi
[ ${#missing[@]} -eq 0 ] && [ ${#optional[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    wanted=("${missing[@]}" "${optional[@]}")
    echo "installing ${wanted[*]} with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    if [ ${#missing[@]} -gt 0 ]; then apt-get install -y -qq "${missing[@]}" >/dev/null; fi
    if [ ${#optional[@]} -gt 0 ]; then
        apt-get install -y -qq --no-install-recommends "${optional[@]}" >/dev/null \
            || echo "could not install ${optional[*]}; going on without it" >&2
    fi
    # Debian's etcd-server may start a system etcd on 2379, its prometheus a server on
    # 9090; pm's scripts start their own etcd and need no Prometheus server.
    if command -v systemctl >/dev/null 2>&1; then
        for unit in etcd prometheus; do systemctl disable --now "$unit" >/dev/null 2>&1 || true; done
    fi
else
    if [ ${#missing[@]} -gt 0 ]; then
        echo "missing: ${missing[*]}; install them (Debian: sudo apt-get install ${missing[*]})" >&2
        exit 1
    fi
    echo "optional: promtool (Debian: sudo apt-get install --no-install-recommends prometheus); without it the alert rules are only parsed" >&2
fi
