#!/usr/bin/env bash
# Installs, from Debian's packages, what the build and the tests need beyond
# the Rust toolchain, when missing:
#   protoc (protobuf-compiler, libprotobuf-dev): etcd-client's build script
#   etcd (etcd-server): the state-store etcd tests start a real etcd
# kubectl is optional: its tests skip (saying so) when it is absent.
set -euo pipefail

missing=()
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler libprotobuf-dev)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing ${missing[*]} from Debian's packages" >&2
if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo)
else
  echo "scripts/install-deps.sh: need root to install: apt-get install ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
