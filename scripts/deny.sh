#!/usr/bin/env bash
# Licenses, bans and sources of every dependency (deny.toml), with
# cargo-deny, installed with `cargo install --locked cargo-deny` when
# missing. Advisories too when the RustSec database can be fetched
# (DENY_ADVISORIES=1): CI cannot reach it, see README (Development).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo deny --version >/dev/null 2>&1; then
  cargo install --locked cargo-deny
fi
checks=(licenses bans sources)
if [ "${DENY_ADVISORIES:-0}" = 1 ]; then
  checks+=(advisories)
  cargo deny check "${checks[@]}"
else
  cargo deny --offline check "${checks[@]}"
fi
