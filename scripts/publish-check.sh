#!/usr/bin/env bash
# The library crates as crates.io would take them:
#  1. every feature alone builds (cargo-hack --each-feature: no default
#     features, each feature by itself, the defaults; all features together
#     are built by clippy), so no cfg(not(feature)) branch rots;
#  2. `cargo package` assembles each crate in dependency order (metadata,
#     readme, files); with PUBLISH_VERIFY=1 it also verifies that the
#     packaged sources build on their own, against the packaged versions of
#     their siblings.
# cargo-hack is installed with `cargo install --locked` when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

crates=(-p health-core -p node-agent-proto -p health-checks -p recovery-exec -p state-store -p cluster-sim)

if ! cargo hack --version >/dev/null 2>&1; then
  cargo install --locked cargo-hack
fi
cargo hack check --each-feature --exclude-all-features --locked "${crates[@]}"
# Verifying rebuilds each crate from its package (minutes): CI skips it.
if [ "${PUBLISH_VERIFY:-0}" = 1 ]; then
  cargo package --locked "${crates[@]}"
else
  cargo package --locked --no-verify "${crates[@]}"
fi
