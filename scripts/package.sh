#!/usr/bin/env bash
# Builds the node-agent packages into dist/:
#   node-agent_<version>_<arch>.deb   (cargo-deb)
#   node-agent-<version>-1.<arch>.rpm (cargo-generate-rpm)
#   node-agent.cdx.json               (CycloneDX SBOM of the binary's dependencies, cargo-cyclonedx;
#                                      also inside both packages under /usr/share/doc/node-agent/)
#   SHA256SUMS                        (sha256sum -c SHA256SUMS checks them)
# Each package holds /usr/bin/node-agent, the systemd units node-agent.service
# (cluster mode on the control-plane VM) and node-agent-host.service (host
# mode), /etc/node-agent/config.toml and host.toml (kept on upgrade), and docs.
#
# Needs: cargo-deb, cargo-generate-rpm, cargo-cyclonedx (installed with
# `cargo install --locked` when missing), protoc (scripts/install-deps.sh).
# Usage: scripts/package.sh [--skip-build]
set -euo pipefail
cd "$(dirname "$0")/.."

build=1
[ "${1:-}" = "--skip-build" ] && build=0

for tool in cargo-deb:cargo-deb cargo-generate-rpm:cargo-generate-rpm cargo-cyclonedx:cargo-cyclonedx; do
  bin=${tool%%:*}; crate=${tool##*:}
  if ! command -v "$bin" >/dev/null 2>&1; then
    echo "installing $crate (cargo install --locked)" >&2
    cargo install --locked "$crate"
  fi
done

version=$(cargo metadata --no-deps --format-version 1 --locked |
  python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="agent-bin"))')

if [ "$build" = 1 ]; then
  # The commit goes into the binary (`node-agent version`, heartbeats).
  NODE_AGENT_COMMIT="$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
  export NODE_AGENT_COMMIT
  cargo build --release --locked -p agent-bin
fi
test -x target/release/node-agent || { echo "scripts/package.sh: target/release/node-agent is missing (run without --skip-build)" >&2; exit 1; }

mkdir -p target/package dist
rm -f dist/*.deb dist/*.rpm dist/node-agent.cdx.json dist/SHA256SUMS

# The SBOM: what the node-agent binary is built from (normal dependencies of
# agent-bin on this target, no build or dev dependencies).
cargo cyclonedx --manifest-path agent-bin/Cargo.toml --format json --spec-version 1.5 \
  --no-build-deps --target "$(rustc -vV | sed -n 's/^host: //p')" --override-filename node-agent.cdx >/dev/null
mv agent-bin/node-agent.cdx.json target/package/node-agent.cdx.json
# cargo-cyclonedx writes one file per workspace member: only agent-bin's is ours.
rm -f -- */node-agent.cdx.json
cp target/package/node-agent.cdx.json dist/

cargo deb --locked -p agent-bin --no-build --output dist/
cargo generate-rpm -p agent-bin --output dist/

(cd dist && sha256sum -- *.deb *.rpm node-agent.cdx.json > SHA256SUMS)
echo "node-agent $version:"
ls -l dist/
