#!/usr/bin/env bash
# Installs, from Debian's packages, what the build and the tests need beyond
# the Rust toolchain, when missing:
#   protoc (protobuf-compiler, libprotobuf-dev): etcd-client's build script
#   etcd (etcd-server): the state-store etcd tests start a real etcd
#   kubectl (kubectl): cluster-sim's and the agent's kubectl tests
#   promtool (prometheus): the agent's /metrics is checked with it
#   the official Python client (python3-kubernetes): cluster-sim's client tests
# Tests that need kubectl, promtool or the Python client skip, saying so, when
# they are absent (for machines where they cannot be installed).
set -euo pipefail

missing=()
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler libprotobuf-dev)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v kubectl >/dev/null 2>&1 || missing+=(kubectl)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
/usr/bin/python3 -c 'import kubernetes' >/dev/null 2>&1 || missing+=(python3-kubernetes)
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
