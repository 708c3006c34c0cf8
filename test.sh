#!/usr/bin/env bash
# Runs pm's whole test suite: formatting, lints, Rust unit, integration and end-to-end
# tests (each against its own real etcd on free ports), and the gce-sim fidelity tests
# with Google's own Python client.
#
# Installs what is missing when it can (as root on Debian: etcd-server, protobuf-compiler;
# the Python client into .venv/). Set PM_TEST_SKIP_LINT=1 to skip fmt and clippy.
set -euo pipefail
cd "$(dirname "$0")"

need_apt=()
command -v etcd >/dev/null 2>&1 || [ -n "${ETCD_BIN:-}" ] || need_apt+=(etcd-server)
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: installing ${need_apt[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
        echo "test.sh: missing ${need_apt[*]}: install them (Debian: apt-get install ${need_apt[*]})" >&2
        exit 1
    fi
fi

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import googleapiclient, pytest' 2>/dev/null; then
    echo "test.sh: setting up .venv with google-api-python-client and pytest"
    python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check -r tests/python/requirements.txt
fi

if [ "${PM_TEST_SKIP_LINT:-0}" != 1 ]; then
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
fi

cargo build --workspace --bins
cargo test --workspace
GCE_SIM_BIN="$PWD/target/debug/gce-sim" .venv/bin/python -m pytest -q tests/python
