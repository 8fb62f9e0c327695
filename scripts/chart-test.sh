#!/usr/bin/env bash
# Renders the Helm chart deploy/helm/node-agent with a real Helm and validates
# every rendered object (deploy/helm/chart_checks.py says what is checked).
#
# Helm: the PyPI package helm-python-sdk, which bundles Helm's Go SDK (the
# engine of `helm template` and `helm lint`) as a native library, so no helm
# binary is needed. Schemas: the PyPI package kubernetes-validate (the
# Kubernetes OpenAPI schemas as strict JSON schemas). Both go into a virtualenv
# under ${XDG_CACHE_HOME:-$HOME/.cache}/node-health/helm-venv, built once.
# The Kubernetes Python client and PyYAML come from Debian's python3-kubernetes
# (scripts/install-deps.sh), else from PyPI.
#
# Neither kubectl nor cluster-sim can validate offline: `kubectl apply
# --dry-run=client --validate=strict` downloads the OpenAPI document from a
# server, and cluster-sim serves no /openapi/v2 or /openapi/v3.
#
# The agent's own `validate-config` is run on each rendered config.toml and
# environment, and on the package's default deploy/config/config.toml, with
# $NODE_AGENT_BIN, else target/debug/node-agent or target/release/node-agent
# when built (this script never builds it).
#
# Exit: 0 all checks passed, or skipped because the Helm implementation
# cannot be installed (no package registry); 1 a check failed.
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_SDK_VERSION=0.2.2
KUBERNETES_VALIDATE_VERSION=1.37.0
cache="${XDG_CACHE_HOME:-$HOME/.cache}/node-health"
venv="$cache/helm-venv"
stamp="$venv/.installed-helm-python-sdk-$HELM_SDK_VERSION-kubernetes-validate-$KUBERNETES_VALIDATE_VERSION"

skip() {
  echo "chart-test: SKIPPED: $*" >&2
  exit 0
}

# Debian's interpreter sees Debian's python3-kubernetes (--system-site-packages).
python=/usr/bin/python3
[ -x "$python" ] || python="$(command -v python3 || true)"
[ -n "$python" ] || skip "no python3 to run helm-python-sdk"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || skip "helm-python-sdk and the checks need Python 3.11+ ($python is older)"

if [ ! -f "$stamp" ]; then
  echo "chart-test: installing helm-python-sdk $HELM_SDK_VERSION and kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $venv" >&2
  rm -rf "$venv"
  mkdir -p "$cache"
  "$python" -m venv --system-site-packages "$venv" >/dev/null \
    || skip "cannot create a virtualenv with $python (python3-venv missing?)"
  if ! "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "helm-python-sdk==$HELM_SDK_VERSION" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" >&2; then
    rm -rf "$venv"
    skip "cannot install helm-python-sdk from PyPI (no package registry?): the chart was not rendered"
  fi
  touch "$stamp"
fi
"$venv/bin/python" -c 'import helm_python' 2>/dev/null \
  || skip "helm-python-sdk does not load on this platform (no bundled libhelm_c for it)"

if ! "$venv/bin/python" -c 'import kubernetes, yaml' 2>/dev/null; then
  echo "chart-test: the Kubernetes Python client is missing; installing it from PyPI" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check kubernetes pyyaml >&2 || {
    echo "chart-test: FAILED: no Kubernetes Python client to validate with (apt-get install python3-kubernetes, or scripts/install-deps.sh)" >&2
    exit 1
  }
fi

agent="${NODE_AGENT_BIN:-}"
if [ -z "$agent" ]; then
  for candidate in target/debug/node-agent target/release/node-agent; do
    if [ -x "$candidate" ]; then
      agent="$candidate"
      break
    fi
  done
fi
agent_args=()
[ -n "$agent" ] && agent_args=(--agent "$agent")

out="${CHART_TEST_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/chart-test.XXXXXX")}"
exec "$venv/bin/python" deploy/helm/chart_checks.py \
  --chart deploy/helm/node-agent \
  --example examples/config.toml \
  --package-config deploy/config/config.toml \
  --out "$out" \
  "${agent_args[@]}"
