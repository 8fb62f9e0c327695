#!/usr/bin/env bash
# Runs every test of the workspace: unit, property, integration, simulation
# and doc tests. Usage: scripts/test.sh [extra cargo test arguments]
#
# Beyond the Rust toolchain it needs protoc (etcd-client's build) and etcd
# (the state-store etcd tests); scripts/install-deps.sh installs them from
# Debian's packages when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

if ! command -v cargo >/dev/null 2>&1; then
  echo "scripts/test.sh: cargo is not on PATH; install the Rust toolchain (rustup) first" >&2
  exit 1
fi

cargo test --workspace --all-features --locked "$@"

# The Helm chart: rendered by a real Helm (PyPI helm-python-sdk, cached in a
# venv), every object validated, the agent's validate-config run on each
# rendered configuration (target/debug/node-agent, built above).
scripts/chart-test.sh
