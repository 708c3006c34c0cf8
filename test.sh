#!/usr/bin/env bash
# Runs pm's whole test suite: formatting and lints, Rust unit, integration and end-to-end
# tests (each against its own real etcd and gce-sim on free ports), and the gce-sim
# fidelity tests with Google's own Python client, and the benchmark harness's quick mode.
#
# Installs what is missing when it can (as root on Debian: etcd-server, protobuf-compiler,
# python3-venv; the Python client into .venv/). PM_TEST_SKIP_LINT=1 skips fmt and clippy.
set -euo pipefail
cd "$(dirname "$0")"

scripts/prereqs.sh --python

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import googleapiclient, pytest' 2>/dev/null; then
    echo "test.sh: setting up .venv with google-api-python-client and pytest"
    python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check -r tests/python/requirements.txt
fi

if [ "${PM_TEST_SKIP_LINT:-0}" != 1 ]; then
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
fi

# The end-to-end tests run the binaries as separate processes.
cargo build --workspace --bins
cargo test --workspace
# The benchmark harness in its quick mode, to prove it still works (figures not judged).
target/debug/pm-bench --quick
GCE_SIM_BIN="$PWD/target/debug/gce-sim" .venv/bin/python -m pytest -q tests/python
