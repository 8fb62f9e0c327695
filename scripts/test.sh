#!/usr/bin/env bash
# Runs every test of the workspace: unit, property, integration, simulation
# and doc tests. Usage: scripts/test.sh [extra cargo test arguments]
#
# It needs only the Rust toolchain today. Backends whose tests need a system
# service (etcd for the state-store's etcd backend) install it here, from
# Debian's packages, when they land.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "scripts/test.sh: cargo is not on PATH; install the Rust toolchain (rustup) first" >&2
  exit 1
fi

cargo test --workspace --all-features --locked "$@"
