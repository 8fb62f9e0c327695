#!/usr/bin/env bash
# Host mode in one minute, on this machine, without touching it: starts a
# throw-away etcd on loopback, a fake reboot-required sentinel and a health
# gate, then runs `node-agent host` simulate, status and a dry-run pass.
# Nothing reboots (dry_run = true and the reboot command is `true`).
# Needs etcd (Debian's etcd-server; scripts/install-deps.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v etcd >/dev/null 2>&1 || { echo "host-demo: etcd is missing: run scripts/install-deps.sh" >&2; exit 1; }
cargo build -q -p agent-bin
agent=target/debug/node-agent

dir=$(mktemp -d /tmp/node-agent-host-demo.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
peer=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
etcd --data-dir "$dir/etcd" --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
  --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
  --initial-cluster "default=http://127.0.0.1:$peer" >"$dir/etcd.log" 2>&1 &
etcd_pid=$!
trap 'kill $etcd_pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do grep -q "ready to serve client requests" "$dir/etcd.log" && break; sleep 0.1; done

touch "$dir/reboot-required"
printf '#!/bin/sh\necho "gate: $NODE_HEALTH_NODE is fine (stage $NODE_HEALTH_STAGE, dry run $NODE_HEALTH_DRY_RUN)"\n' >"$dir/gate.sh"
chmod +x "$dir/gate.sh"
cat >"$dir/host.toml" <<TOML
[host]
name = "demo-host"
interval = "10s"
jitter = "1s"
[[detectors]]
kind = "file"
path = "$dir/reboot-required"
[gate]
command = ["$dir/gate.sh"]
[etcd]
endpoints = ["http://127.0.0.1:$port"]
[safety]
dry_run = true
kill_switch = "$dir/disable-reboots"
[reboot]
command = ["true"]
[server]
metrics_port = 0
log_format = "text"
TOML

run() { echo; echo "\$ node-agent host $*"; "$agent" host --config "$dir/host.toml" "$@" || echo "(exit $?)"; }
run validate-config >/dev/null && echo "configuration is valid"
run simulate
run status
run run --once --dry-run
touch "$dir/disable-reboots"
echo; echo "with the kill switch $dir/disable-reboots present:"
run run --once
