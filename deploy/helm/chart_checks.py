"""Renders the node-agent chart with Helm's own engine and checks every object.

Run by scripts/chart-test.sh inside a virtualenv that has helm-python-sdk
(Helm's Go SDK through its C ABI) and kubernetes-validate, plus the
Kubernetes Python client and PyYAML. For each scenario below it:

1. renders the chart offline (`helm template`'s engine) and lints it;
2. checks every object against the Kubernetes API: the typed model of the
   Kubernetes Python client (unknown fields, field types, required fields)
   and the strict JSON schema of kubernetes-validate;
3. asserts what the chart promises: the exact RBAC rules (resourceNames
   included), the pod security settings, probes, ports, the agent's
   arguments and environment, the ConfigMap, the token and CA mounts;
4. runs the real agent's `validate-config` on the rendered config.toml and
   environment (when a node-agent binary is given).

Negative scenarios must fail to render with the expected message. The
package's default configuration (deploy/config/config.toml) must pass
`validate-config` too.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes.client as kc
import kubernetes_validate
import yaml

RELEASE = "node-agent"
NAMESPACE = "node-health"
KUBE_VERSION = "1.33"
POD_NAME = "node-agent-5d9c7b8f6-x2x9z"
TEST_KEY = "chart-test-not-a-real-key"

# The exact rules of each role: (apiGroup, resource, resourceNames) -> verbs
# (resourceNames: a sorted tuple, () for none).
CLUSTER_RULES = {
    ("", "nodes", ()): {"get", "list", "watch", "patch"},
    ("events.k8s.io", "events", ()): {"create", "patch"},
}
DRAIN_RULES = {  # only when the agent drains through the Eviction API itself
    ("", "pods", ()): {"list"},
    ("", "pods/eviction", ()): {"create"},
}
KUBELET_LEASE_RULES = {("coordination.k8s.io", "leases", ()): {"list", "watch"}}


def addon_rules(addons: list[dict]) -> dict[str, dict]:
    """Per namespace: get on exactly the add-ons' DaemonSets and Deployments."""
    names: dict[str, dict[str, set]] = {}
    for a in addons:
        res = {"DaemonSet": "daemonsets", "Deployment": "deployments"}[a["kind"]]
        names.setdefault(a["namespace"], {}).setdefault(res, set()).add(a["name"])
    return {ns: {("apps", res, tuple(sorted(n))): {"get"} for res, n in by.items()} for ns, by in names.items()}


def lease_rules(ha: bool, pause: bool, admin: bool, lease: str) -> dict:
    """The HA namespace's Role: the leader Lease (get, update; create), the
    pause Lease (get; patch and create when the admin API can pause). RBAC
    cannot restrict create by name, so create is the one unnamed rule."""
    rules: dict = {}
    if ha:
        rules[("coordination.k8s.io", "leases", (lease,))] = {"get", "update"}
    if pause:
        rules[("coordination.k8s.io", "leases", (f"{lease}-pause",))] = {"get", "patch"} if admin else {"get"}
    if ha or (pause and admin):
        rules[("coordination.k8s.io", "leases", ())] = {"create"}
    return rules

# The variables the agent reads (agent-bin/src/config.rs) that the chart sets.
CIVO_VARS = {
    "CIVO_API_KEY", "CIVO_API_URL", "CIVO_CLUSTER_ID", "CIVO_REGION", "CIVO_NODE_POOL_IDS",
    "CIVO_NODE_AGENT_MONITOR_ONLY", "CIVO_NODE_AGENT_METRICS_PORT", "CIVO_NODE_REBOOT_WAIT_MINUTES",
    "CIVO_GPU_NODE_REBOOT_WAIT_MINUTES", "CIVO_NODE_MAX_REBOOT_RETRIES",
}
# MALLOC_ARENA_MAX is glibc's (one malloc arena: README, Performance).
OTHER_VARS = {"RUST_LOG", "NODE_AGENT_AGENT__INSTANCE", "NODE_AGENT_HA__IDENTITY", "MALLOC_ARENA_MAX"}
# Keys of examples/config.toml the chart sets outside `config:`: in the
# environment or with a flag (never also in config.toml) ...
SET_BY_ENV = {
    "civo.api_key", "civo.api_url", "civo.cluster_id", "civo.region", "civo.node_pool_ids",
    "agent.metrics_port", "agent.instance", "kube.kubeconfig", "ha.identity",
    "policy.monitor_only", "policy.reboot_wait", "policy.gpu_reboot_wait", "policy.max_reboot_retries",
}
# ... or in config.toml from other values (admin.*, heartbeat.*, executor.*).
SET_IN_FILE = {
    "admin.listen", "admin.token_file", "heartbeat.token_file", "heartbeat.ca_file",
    "executor.token_file", "executor.ca_file",
    "store.etcd.ca_file", "store.etcd.cert_file", "store.etcd.key_file",
}
# The etcd store's TLS files: mounted from etcdTls.secret (key, path, config key).
ETCD_TLS = [
    ("ca.crt", "/etc/node-agent-etcd/ca/ca.crt", "ca_file"),
    ("tls.crt", "/etc/node-agent-etcd/cert/tls.crt", "cert_file"),
    ("tls.key", "/etc/node-agent-etcd/key/tls.key", "key_file"),
]
ETCD_SCENARIO = {
    "replicaCount": 1,
    "config": {
        "ha": {"enabled": False},
        "store": {"backend": "etcd", "etcd": {"endpoints": ["https://10.0.0.5:2379", "https://10.0.0.6:2379"]}},
        "windows": [
            {"action": "allow", "days": ["mon-fri"], "start": "01:00", "end": "05:00", "time_zone": "Europe/London"},
            {"action": "deny", "days": ["wed"], "start": "02:00", "end": "03:00", "time_zone": "Europe/London"},
        ],
    },
    "etcdTls": {"secret": "etcd-client"},
}
SET_ELSEWHERE = SET_BY_ENV | SET_IN_FILE
# Keys commented out in examples/config.toml that values.yaml only documents.
DOCUMENTED_ONLY = {"admin.pause_file", "control_plane.repair.kind", "control_plane.repair.command",
                   "control_plane.repair.timeout", "record.path", "record.max_bytes", "record.keep"}
CONFIG_SECTIONS = {"civo", "agent", "kube", "store", "executor", "engine", "ha", "policy", "admin", "heartbeat",
                   "control_plane", "record"}
# Lists and maps of entries (not settings of a section).
CONFIG_ENTRIES = {"checkers", "addons", "windows", "repairs", "ladder"}
# Where the chart mounts the token and CA files: (values block, kind) -> (volume, file, config key).
CREDENTIALS = {
    ("admin", "token"): ("admin-token", "/var/run/secrets/node-agent/admin/token", "admin.token_file"),
    ("heartbeat", "token"): ("heartbeat-token", "/var/run/secrets/node-agent/heartbeat/token", "heartbeat.token_file"),
    ("heartbeat", "ca"): ("heartbeat-ca", "/etc/node-agent-ca/heartbeat/ca.crt", "heartbeat.ca_file"),
    ("executor", "token"): ("executor-token", "/var/run/secrets/node-agent/executor/token", "executor.token_file"),
    ("executor", "ca"): ("executor-ca", "/etc/node-agent-ca/executor/ca.crt", "executor.ca_file"),
}
LADDER_SCENARIO = {
    "replicaCount": 1,
    "civo": {"monitorOnly": False, "clusterId": "3f2b1c9e-8d41-4a2f-9c55-000000000001",
             "region": "LON1", "apiKey": {"existingSecret": "civo-credentials"}},
    "config": {
        "policy": {"verify_for": "3m", "escalation": {"replace": True}},
        # The control-plane repair runs without HA, on the file store.
        "ha": {"enabled": False},
        "store": {"backend": "file"},
        "engine": {"probe_interval": "20s"},
        "checkers": [
            {"kind": "node-ready", "threshold": "5m"},
            {"kind": "cilium", "threshold": "5m"},
            {"kind": "http", "name": "Sidecar", "url": "http://{internal_ip}:9090/v0/healthz", "threshold": "1m"},
        ],
        "repairs": {
            "restart-cilium": {"kind": "restart-pods", "namespace": "kube-system", "selector": "k8s-app=cilium",
                               "wait": "3m"},
            "mark-ready": {"kind": "http", "url": "http://{internal_ip}:9090/v0/mark-ready", "attempts": 2},
        },
        "ladder": [
            {"checker": "Cilium", "rungs": ["restart-cilium", "reboot"]},
            {"checker": "Sidecar", "rungs": ["mark-ready"]},
            {"class": "standard", "rungs": ["drain-reboot", "replace"]},
        ],
        "control_plane": {"enabled": True, "hosts": ["cp-1", "cp-2"],
                          "repair": {"kind": "command", "command": ["/usr/local/sbin/cp-repair", "k3s"]}},
    },
}
GRPC_SCENARIO = {
    "civo": {"monitorOnly": False, "clusterId": "3f2b1c9e-8d41-4a2f-9c55-000000000001"},
    "config": {
        "executor": {"kind": "grpc", "endpoint": "https://provisioner.fleet.svc:9700", "remote_drain": True,
                     "attempts": 5, "timeout": "8s"},
        "heartbeat": {"endpoint": "https://fleet.example.com:443", "interval": "20s"},
    },
    "admin": {"expose": True, "token": {"existingSecret": "node-agent-admin"}, "service": {"enabled": True}},
    "heartbeat": {"token": {"existingSecret": "fleet-credentials", "existingSecretKey": "heartbeat-token"},
                  "ca": {"configMap": "fleet-ca"}},
    "executor": {"token": {"existingSecret": "provisioner-credentials"},
                 "ca": {"secret": "provisioner-tls", "key": "ca.pem"}},
}

SCENARIOS: list[dict[str, Any]] = [
    {"name": "default", "files": [], "set": {}},
    {"name": "active", "files": ["ci/active-values.yaml"], "set": {}},
    {
        "name": "chart-secret+file-store",
        "files": [],
        "set": {
            "replicaCount": 3,
            "civo": {"apiKey": {"value": TEST_KEY}},
            "config": {"store": {"backend": "file"}, "ha": {"namespace": "node-leases"}},
            "service": {"enabled": False},
            "podDisruptionBudget": {"enabled": False},
        },
    },
    {"name": "grpc+heartbeat+admin", "files": [], "set": GRPC_SCENARIO},
    {"name": "etcd-store+tls+windows", "files": [], "set": ETCD_SCENARIO},
    {"name": "ladder+control-plane", "files": [], "set": LADDER_SCENARIO},
    {
        "name": "no-HA+memory-store+ipv6",
        "files": [],
        "set": {
            "replicaCount": 1,
            "mallocArenaMax": "",
            "config": {"ha": {"enabled": False}, "store": {"backend": "memory"}, "executor": {"kind": "noop"},
                       "agent": {"metrics_address": "::"}},
            "admin": {"expose": True, "address": "::", "token": {"existingSecret": "node-agent-admin"}},
            "podSecurityContext": {"runAsNonRoot": True, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
        },
    },
]

NEGATIVE: list[dict[str, Any]] = [
    {"name": "two replicas without HA", "set": {"config": {"ha": {"enabled": False}}}, "error": "needs config.ha.enabled"},
    {"name": "active without a key", "set": {"civo": {"monitorOnly": False, "clusterId": "c", "region": "LON1"}},
     "error": "needs the API key"},
    {"name": "active without a cluster", "set": {"civo": {"monitorOnly": False, "apiKey": {"value": "k"}}},
     "error": "needs civo.clusterId and civo.region"},
    {"name": "the key in config", "set": {"config": {"civo": {"api_key": "k"}}}, "error": "is set by the chart"},
    {"name": "a Civo twin in config", "set": {"config": {"policy": {"monitor_only": False}}},
     "error": "use civo.monitorOnly"},
    {"name": "an unknown section", "set": {"config": {"agnet": {"log_format": "json"}}}, "error": "not a section"},
    {"name": "an etcd TLS path in config", "set": {"config": {"store": {"etcd": {"ca_file": "/tmp/ca.pem"}}}},
     "error": "use etcdTls.secret"},
    {"name": "a fractional number", "set": {"config": {"engine": {"check_concurrency": 1.5}}},
     "error": "whole numbers only"},
    {"name": "exposed admin without a token", "set": {"admin": {"expose": True}},
     "error": "admin.expose needs admin.token.existingSecret"},
    {"name": "exposed admin, admin off",
     "set": {"admin": {"expose": True, "token": {"existingSecret": "t"}}, "config": {"admin": {"enabled": False}}},
     "error": "admin.expose needs config.admin.enabled"},
    {"name": "admin listen in config", "set": {"config": {"admin": {"listen": "0.0.0.0:9626"}}},
     "error": "use admin.expose and admin.port"},
    {"name": "a token path in config", "set": {"config": {"executor": {"token_file": "/tmp/t"}}},
     "error": "use executor.token.existingSecret"},
    {"name": "admin Service port, not exposed", "set": {"admin": {"service": {"enabled": True}}},
     "error": "admin.service.enabled needs admin.expose"},
    {"name": "heartbeat token, no endpoint", "set": {"heartbeat": {"token": {"existingSecret": "t"}}},
     "error": "config.heartbeat.endpoint is empty"},
    {"name": "executor CA, not grpc", "set": {"executor": {"ca": {"configMap": "ca"}}},
     "error": "they are for \"grpc\""},
    {"name": "grpc without an endpoint", "set": {"config": {"executor": {"kind": "grpc"}}},
     "error": "needs config.executor.endpoint"},
    {"name": "a token over plain http",
     "set": {"config": {"heartbeat": {"endpoint": "http://fleet.example.com:80"}},
             "heartbeat": {"token": {"existingSecret": "t"}}},
     "error": "in clear"},
    {"name": "both CA sources",
     "set": {"config": {"heartbeat": {"endpoint": "https://fleet:443"}},
             "heartbeat": {"ca": {"configMap": "a", "secret": "b"}}},
     "error": "set configMap or secret, not both"},
    {"name": "a pause file off the volume",
     "set": {"config": {"store": {"backend": "file"}, "admin": {"pause_file": "/etc/pause.json"}}},
     "error": "config.admin.pause_file"},
    {"name": "an add-on of another kind",
     "set": {"config": {"addons": [{"kind": "StatefulSet", "namespace": "db", "name": "pg"}]}},
     "error": "expected DaemonSet or Deployment"},
    {"name": "a bad Lease name", "set": {"config": {"ha": {"lease_name": "Node_Agent"}}},
     "error": "expected a DNS label"},
]


class Checks:
    """Counts assertions; remembers the failed ones."""

    def __init__(self) -> None:
        self.passed = 0
        self.failures: list[str] = []
        self.scope = ""

    def ok(self, cond: bool, what: str) -> bool:
        if cond:
            self.passed += 1
        else:
            self.failures.append(f"[{self.scope}] {what}")
        return cond

    def eq(self, actual: Any, expected: Any, what: str) -> bool:
        return self.ok(actual == expected, f"{what}: expected {expected!r}, got {actual!r}")


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def render(chart: Path, values: dict) -> dict[str, str]:
    with helm.Chart.load(chart) as c:
        return c.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


# --- the Kubernetes API's typed models ------------------------------------

def model_errors(data: Any, type_name: str, path: str) -> list[str]:
    """Unknown fields and wrong types of `data` against the client's model `type_name`."""
    errs: list[str] = []
    if data is None:
        return errs
    if type_name.startswith("list["):
        if not isinstance(data, list):
            return [f"{path}: expected a list"]
        for i, item in enumerate(data):
            errs += model_errors(item, type_name[5:-1], f"{path}[{i}]")
        return errs
    m = re.fullmatch(r"dict\(([^,]+), (.+)\)", type_name)
    if m:
        if not isinstance(data, dict):
            return [f"{path}: expected a map"]
        for k, v in data.items():
            errs += model_errors(v, m.group(2), f"{path}.{k}")
        return errs
    simple = {"str": str, "bool": bool, "int": int, "float": (int, float), "datetime": str, "date": str}
    if type_name in simple:
        bad = not isinstance(data, simple[type_name]) or (type_name == "int" and isinstance(data, bool))
        return [f"{path}: expected {type_name}, got {type(data).__name__}"] if bad else []
    if type_name == "object":  # IntOrString, Quantity, RawExtension
        return errs
    klass = getattr(kc, type_name)
    if not isinstance(data, dict):
        return [f"{path}: expected a {type_name} object"]
    by_json = {v: k for k, v in klass.attribute_map.items()}
    for k, v in data.items():
        if k not in by_json:
            errs.append(f"{path}.{k}: unknown field of {type_name}")
        else:
            errs += model_errors(v, klass.openapi_types[by_json[k]], f"{path}.{k}")
    return errs


def typed_model(doc: dict) -> tuple[str, list[str]]:
    version = doc["apiVersion"].split("/")[-1]
    type_name = version[0].upper() + version[1:] + doc["kind"]
    if not hasattr(kc, type_name):
        return type_name, [f"no model {type_name} in the Kubernetes client"]
    errs = model_errors(doc, type_name, doc["kind"])
    try:  # the models' own required-field checks
        kc.ApiClient()._ApiClient__deserialize(doc, type_name)  # noqa: SLF001
    except (ValueError, TypeError) as e:
        errs.append(f"{doc['kind']}: {e}")
    return type_name, errs


def service_monitor_errors(doc: dict) -> list[str]:
    """The ServiceMonitor CRD has no built-in schema: its structure, checked here."""
    errs = []
    if doc.get("apiVersion") != "monitoring.coreos.com/v1":
        errs.append("ServiceMonitor: apiVersion must be monitoring.coreos.com/v1")
    if set(doc) - {"apiVersion", "kind", "metadata", "spec"}:
        errs.append(f"ServiceMonitor: unknown top-level fields {sorted(set(doc) - {'apiVersion', 'kind', 'metadata', 'spec'})}")
    errs += model_errors(doc.get("metadata"), "V1ObjectMeta", "ServiceMonitor.metadata")
    spec = doc.get("spec") or {}
    allowed = {"selector", "namespaceSelector", "endpoints", "jobLabel", "targetLabels", "podTargetLabels"}
    if set(spec) - allowed:
        errs.append(f"ServiceMonitor.spec: unknown fields {sorted(set(spec) - allowed)}")
    errs += model_errors(spec.get("selector"), "V1LabelSelector", "ServiceMonitor.spec.selector")
    eps = spec.get("endpoints")
    if not isinstance(eps, list) or not eps:
        errs.append("ServiceMonitor.spec.endpoints: required, a non-empty list")
    for ep in eps or []:
        extra = set(ep) - {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels"}
        if extra:
            errs.append(f"ServiceMonitor endpoint: unknown fields {sorted(extra)}")
        for dur in ("interval", "scrapeTimeout"):
            if dur in ep and not re.fullmatch(r"([0-9]+(ms|s|m|h))+", str(ep[dur])):
                errs.append(f"ServiceMonitor endpoint {dur}: {ep[dur]!r} is not a Prometheus duration")
    return errs


# --- what the chart promises ----------------------------------------------

def rules_of(role: dict) -> dict[tuple[str, str, tuple], set[str]]:
    out: dict[tuple[str, str, tuple], set[str]] = {}
    for r in role.get("rules") or []:
        names = tuple(sorted(r.get("resourceNames") or []))
        for g in r.get("apiGroups") or []:
            for res in r.get("resources") or []:
                out.setdefault((g, res, names), set()).update(r.get("verbs") or [])
    return out


def check_role(ck: Checks, role: dict | None, binding: dict | None, kind: str, ns: str | None,
               expected: dict, sa: str) -> None:
    if not ck.ok(role is not None and binding is not None, f"{kind} {ns or ''} and its binding rendered"):
        return
    ck.eq(role["metadata"].get("namespace"), ns, f"{kind} namespace")
    ck.eq(rules_of(role), expected, f"{kind} {role['metadata']['name']} rules (exact)")
    flat = [r for r in role.get("rules") or []]
    ck.ok(all(not r.get("nonResourceURLs") for r in flat), f"{kind}: no nonResourceURLs")
    # RBAC ignores resourceNames for create (and list/watch): such a rule would look narrower than it is.
    ck.ok(all(not r.get("resourceNames") or not {"create", "deletecollection"} & set(r.get("verbs") or [])
              for r in flat), f"{kind}: resourceNames only on verbs RBAC restricts by name")
    ck.ok(all("*" not in (r.get("verbs") or []) + (r.get("resources") or []) + (r.get("apiGroups") or [])
              for r in flat), f"{kind}: no wildcards")
    ck.eq(binding["roleRef"], {"apiGroup": "rbac.authorization.k8s.io", "kind": kind,
                               "name": role["metadata"]["name"]}, f"{kind} binding roleRef")
    ck.eq(binding.get("subjects"), [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}],
          f"{kind} binding subjects")


def check_pod_security(ck: Checks, pod: dict, c: dict) -> None:
    psc, csc = pod.get("securityContext") or {}, c.get("securityContext") or {}
    ck.eq(psc.get("runAsNonRoot"), True, "pod runAsNonRoot")
    ck.eq(csc.get("runAsNonRoot"), True, "container runAsNonRoot")
    uid = csc.get("runAsUser", psc.get("runAsUser"))
    ck.ok(isinstance(uid, int) and not isinstance(uid, bool) and uid > 0, f"numeric non-root uid (got {uid!r})")
    ck.eq(csc.get("readOnlyRootFilesystem"), True, "readOnlyRootFilesystem")
    ck.eq(csc.get("allowPrivilegeEscalation"), False, "allowPrivilegeEscalation")
    ck.ok(not csc.get("privileged"), "not privileged")
    ck.eq((csc.get("capabilities") or {}).get("drop"), ["ALL"], "capabilities drop ALL")
    ck.ok(not (csc.get("capabilities") or {}).get("add"), "no capabilities added")
    ck.eq((psc.get("seccompProfile") or {}).get("type"), "RuntimeDefault", "pod seccompProfile")
    ck.eq((csc.get("seccompProfile") or {}).get("type", "RuntimeDefault"), "RuntimeDefault", "container seccompProfile")
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        ck.ok(not pod.get(host), f"no {host}")
    ck.ok(all("hostPath" not in v for v in pod.get("volumes") or []), "no hostPath volume")
    ck.eq(pod.get("enableServiceLinks"), False, "enableServiceLinks off (only the chart's variables)")
    res = c.get("resources") or {}
    ck.ok({"cpu", "memory"} <= set(res.get("requests") or {}), "cpu and memory requests")
    ck.ok("memory" in (res.get("limits") or {}), "memory limit")


def run_agent(ck: Checks, agent: str, toml_text: str, env: dict[str, str], expect: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as d:
        # The token and CA files are Secret/ConfigMap mounts in the pod, and
        # validate-config opens them: stand-ins with the same role here.
        def stand_in(m: re.Match) -> str:
            key, path = m.group(1), m.group(2)
            local = Path(d, "mounts", path.lstrip("/"))
            local.parent.mkdir(parents=True, exist_ok=True)
            if key.endswith("ca_file"):
                local.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
            else:
                local.write_text("chart-test-token\n")
            return f'{key} = "{local}"'
        toml_text = re.sub(r'^(\w*(?:token_file|ca_file)) = "([^"]+)"', stand_in, toml_text, flags=re.M)
        cfg = Path(d, "config.toml")
        cfg.write_text(toml_text)
        base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": d}
        p = subprocess.run([agent, "--config", str(cfg), "--kubeconfig=", "validate-config"],
                           env={**base, **env}, capture_output=True, text=True, timeout=60)
    out = p.stdout + p.stderr
    if ck.ok(p.returncode == 0 and "configuration is valid" in out,
             f"node-agent validate-config accepts the rendered config and env (exit {p.returncode}): {out.strip()[:400]}"):
        for field, value in expect.items():
            ck.ok(re.search(rf"\b{field}: {re.escape(value)},", out) is not None,
                  f"agent sees {field}: {value}")


def check_scenario(ck: Checks, chart: Path, values: dict, manifests: dict[str, str], agent: str | None,
                   out_dir: Path, name: str) -> int:
    with helm.Chart.load(chart) as c:
        v = c.merge_values(values)
    docs: list[dict] = []
    text = []
    for tpl, body in sorted(manifests.items()):
        if tpl.endswith("NOTES.txt"):
            ck.ok(body.strip() != "", "NOTES.txt renders")
            continue
        if body.strip():
            text.append(f"---\n# Source: {tpl}\n{body.strip()}\n")
        docs += [doc for doc in yaml.safe_load_all(body) if doc]
    (out_dir / f"{name}.yaml").write_text("".join(text))

    lint = helm.lint(chart, values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}.0")
    bad = [m for m in lint.get("messages", []) if m.get("severity", 0) >= 2] + lint.get("errors", [])
    ck.ok(not bad, f"helm lint --strict: {bad}")

    # 1. every object against the API's models and schemas
    for doc in docs:
        kind, meta = doc.get("kind"), doc.get("metadata") or {}
        ck.ok(bool(meta.get("name")), f"{kind}: metadata.name")
        if kind == "ServiceMonitor":
            errs = service_monitor_errors(doc)
            ck.ok(not errs, f"ServiceMonitor structure: {errs}")
            continue
        type_name, errs = typed_model(doc)
        ck.ok(not errs, f"{kind} {meta.get('name')}: typed model {type_name}: {errs}")
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
            ck.ok(True, "")
        except kubernetes_validate.ValidationError as e:
            ck.ok(False, f"{kind} {meta.get('name')}: schema (strict, {KUBE_VERSION}): {'.'.join(map(str, e.path))}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            ck.ok(False, f"{kind}: {e.message}")
        if kind not in ("ClusterRole", "ClusterRoleBinding"):
            ck.ok(bool(meta.get("namespace")), f"{kind} {meta.get('name')}: namespaced object has a namespace")

    by = {}
    for doc in docs:
        by.setdefault(doc["kind"], []).append(doc)
    one = lambda kind, pred=lambda d: True: next((d for d in by.get(kind, []) if pred(d)), None)  # noqa: E731

    ha = v["config"]["ha"]["enabled"]
    lease_ns = v["config"]["ha"].get("namespace") or NAMESPACE
    kubelet_lease = any(c.get("kind") == "kubelet-lease" and c.get("enabled", True) is not False
                        for c in v["config"].get("checkers") or [])
    replicas = v["replicaCount"]
    port = v["metricsPort"]
    sa = v["serviceAccount"].get("name") or RELEASE
    lease = v["config"]["ha"]["lease_name"]
    pause_lease = v["config"]["store"]["backend"] in ("auto", "kubernetes")  # in a pod, auto is the Kubernetes store
    admin_on = v["config"]["admin"].get("enabled", True) is not False
    exposed = v["admin"]["expose"]
    admin_port = v["admin"]["port"]
    executor = v["config"]["executor"]
    local_drain = executor["kind"] == "civo" or (executor["kind"] == "grpc" and not executor.get("remote_drain"))
    leases = lease_rules(ha, pause_lease, admin_on, lease)

    # 2. RBAC: least privilege, exactly
    ck.ok(sa in [d["metadata"]["name"] for d in by.get("ServiceAccount", [])], "ServiceAccount rendered")
    cluster_rules = CLUSTER_RULES | (DRAIN_RULES if local_drain else {})
    check_role(ck, one("ClusterRole"), one("ClusterRoleBinding"), "ClusterRole", None, cluster_rules, sa)
    is_leases = lambda d: d["metadata"]["name"] == f"{RELEASE}-leases"  # noqa: E731
    is_kubelet = lambda d: d["metadata"]["name"].endswith("-kubelet-leases")  # noqa: E731
    if leases:
        check_role(ck, one("Role", is_leases), one("RoleBinding", is_leases), "Role", lease_ns, leases, sa)
        ck.ok(all(names or verbs == {"create"} for (_, _, names), verbs in leases.items()),
              "Lease verbs other than create are limited to the agent's Leases")
    else:
        ck.ok(one("Role", is_leases) is None, "no Lease Role without HA or the Kubernetes store's pause Lease")
    if kubelet_lease:
        check_role(ck, one("Role", is_kubelet), one("RoleBinding", is_kubelet), "Role", "kube-node-lease",
                   KUBELET_LEASE_RULES, sa)
    else:
        ck.ok(one("Role", is_kubelet) is None, "no kube-node-lease Role without the kubelet-lease checker")
    addons = addon_rules(v["config"].get("addons") or [])
    is_addons = lambda d: d["metadata"]["name"] == f"{RELEASE}-addons"  # noqa: E731
    for ns, rules in addons.items():
        in_ns = lambda d, ns=ns: is_addons(d) and d["metadata"].get("namespace") == ns  # noqa: E731
        check_role(ck, one("Role", in_ns), one("RoleBinding", in_ns), "Role", ns, rules, sa)
    ck.eq(sorted(d["metadata"].get("namespace") for d in by.get("Role", []) if is_addons(d)), sorted(addons),
          "one add-on Role per add-on namespace")
    restart_ns = sorted({r["namespace"] for r in (v["config"].get("repairs") or {}).values()
                         if r.get("kind") == "restart-pods"})
    is_repairs = lambda d: d["metadata"]["name"] == f"{RELEASE}-repairs"  # noqa: E731
    for ns in restart_ns:
        in_ns = lambda d, ns=ns: is_repairs(d) and d["metadata"].get("namespace") == ns  # noqa: E731
        check_role(ck, one("Role", in_ns), one("RoleBinding", in_ns), "Role", ns,
                   {("", "pods", ()): {"list", "delete"}}, sa)
    ck.eq(sorted(d["metadata"].get("namespace") for d in by.get("Role", []) if is_repairs(d)), restart_ns,
          "one pod-restart Role per restart-pods namespace")
    ck.eq(len(by.get("Role", [])), int(bool(leases)) + int(kubelet_lease) + len(addons) + len(restart_ns),
          "number of Roles")
    ck.eq(len(by.get("ClusterRole", [])), 1, "number of ClusterRoles")

    # 3. the Deployment
    dep = one("Deployment")
    if not ck.ok(dep is not None, "Deployment rendered"):
        return len(docs)
    ck.eq(dep["spec"]["replicas"], replicas, "replicas")
    pod = dep["spec"]["template"]["spec"]
    ck.eq(pod.get("serviceAccountName"), sa, "pod ServiceAccount")
    ck.eq(len(pod["containers"]), 1, "one container")
    c = pod["containers"][0]
    check_pod_security(ck, pod, c)
    ck.eq(c.get("command"), None, "the image's entrypoint (/usr/bin/node-agent) is kept")
    ck.eq(c.get("args"), ["--config", "/etc/node-agent/config.toml", "--kubeconfig=", "run"], "agent arguments")
    ports = c.get("ports") or []
    ck.eq([(p["name"], p["containerPort"]) for p in ports],
          [("http", port)] + ([("admin", admin_port)] if exposed else []),
          "the HTTP port, and the admin port only when exposed")
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        ck.eq((c.get(probe) or {}).get("httpGet"), {"path": path, "port": "http"}, probe)
    ck.ok(pod.get("terminationGracePeriodSeconds", 30) > 30, "grace period above engine.shutdown_grace (30s)")
    anti = (pod.get("affinity") or {}).get("podAntiAffinity", {}).get("preferredDuringSchedulingIgnoredDuringExecution")
    ck.ok(bool(anti) and anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname",
          "replicas prefer different nodes")
    ck.eq(pod.get("tolerations"), v.get("tolerations") or None, "tolerations from values")

    env = {e["name"]: e for e in c.get("env") or []}
    ck.ok(set(env) <= CIVO_VARS | OTHER_VARS, f"only variables the agent reads: {sorted(set(env) - CIVO_VARS - OTHER_VARS)}")
    ck.ok(all(not n.startswith("NODE_AGENT_") or n in OTHER_VARS for n in env), "NODE_AGENT_* variables are known keys")
    for n in ("NODE_AGENT_AGENT__INSTANCE",) + (("NODE_AGENT_HA__IDENTITY",) if ha else ()):
        ck.eq((env.get(n) or {}).get("valueFrom"), {"fieldRef": {"fieldPath": "metadata.name"}}, f"{n} from the pod name")
    ck.ok(ha or "NODE_AGENT_HA__IDENTITY" not in env, "no HA identity without HA")
    arena = str(v.get("mallocArenaMax") or "")
    ck.eq((env.get("MALLOC_ARENA_MAX") or {}).get("value"), arena or None, "MALLOC_ARENA_MAX from mallocArenaMax")
    ck.eq(env["CIVO_NODE_AGENT_MONITOR_ONLY"].get("value"), str(v["civo"]["monitorOnly"]).lower(), "monitor-only")
    ck.eq(env["CIVO_NODE_AGENT_METRICS_PORT"].get("value"), str(port), "metrics port variable")
    key = v["civo"]["apiKey"]
    secret_name = key.get("existingSecret") or (f"{RELEASE}-civo" if key.get("value") else None)
    if secret_name:
        ck.eq(env.get("CIVO_API_KEY", {}).get("valueFrom"),
              {"secretKeyRef": {"name": secret_name, "key": key["existingSecretKey"] if key.get("existingSecret") else "api-key"}},
              "CIVO_API_KEY from the Secret")
    else:
        ck.ok("CIVO_API_KEY" not in env, "no CIVO_API_KEY without a key")
    ck.ok(all("value" not in e for n, e in env.items() if n == "CIVO_API_KEY"), "the key is never a literal value")
    secret = one("Secret")
    if key.get("value") and not key.get("existingSecret"):
        if ck.ok(secret is not None, "chart-created Secret"):
            ck.eq(base64.b64decode(secret["data"]["api-key"]).decode(), key["value"], "Secret holds the key")
    else:
        ck.ok(secret is None, "no Secret rendered")

    mounts = {m["name"]: m for m in c.get("volumeMounts") or []}
    vols = {x["name"]: x for x in pod.get("volumes") or []}
    ck.ok(all(m.get("readOnly") for n, m in mounts.items() if n != "state"), "every mount but the file store is read-only")
    files = check_credentials(ck, v, pod, mounts, vols)
    ck.eq(mounts.get("config", {}).get("mountPath"), "/etc/node-agent", "config mounted at /etc/node-agent")
    ck.eq(mounts.get("config", {}).get("readOnly"), True, "config mounted read-only")
    ck.eq(vols.get("config", {}).get("configMap", {}).get("name"), RELEASE, "config volume is the ConfigMap")
    if v["config"]["store"]["backend"] == "file":
        ck.eq(mounts.get("state", {}).get("mountPath"), os.path.dirname(v["config"]["store"]["path"]),
              "file store directory is writable")
        ck.ok("emptyDir" in vols.get("state", {}), "file store on an emptyDir")
    else:
        ck.ok("state" not in mounts, "no state volume without the file store")

    # 4. the ConfigMap
    cm = one("ConfigMap")
    toml_text = ""
    if ck.ok(cm is not None and "config.toml" in cm.get("data", {}), "ConfigMap with config.toml"):
        toml_text = cm["data"]["config.toml"]
        try:
            cfg = tomllib.loads(toml_text)
        except tomllib.TOMLDecodeError as e:
            ck.ok(False, f"config.toml parses: {e}")
            cfg = {}
        ck.ok(set(cfg) <= CONFIG_SECTIONS | CONFIG_ENTRIES, f"config.toml sections: {sorted(cfg)}")
        ck.ok("api_key" not in cfg.get("civo", {}) and TEST_KEY not in toml_text, "no API key in the ConfigMap")
        ck.eq(cfg.get("ha", {}).get("enabled"), ha, "ha.enabled in config.toml")
        ck.eq(cfg.get("ha", {}).get("namespace"), lease_ns, "ha.namespace is the leader Role's namespace")
        ck.eq(cfg.get("kube", {}).get("kubeconfig"), None, "no kubeconfig in config.toml (the flag says in-cluster)")
        flat = {f"{s}.{k}" for s, t in cfg.items() if isinstance(t, dict) for k in t}
        ck.ok(not (flat & SET_BY_ENV), f"no key twice (file and env): {sorted(flat & SET_BY_ENV)}")
        ck.eq(len(cfg.get("checkers", [])), len(v["config"].get("checkers") or []), "[[checkers]] entries")
        ck.eq(cfg.get("addons", []), v["config"].get("addons") or [], "[[addons]] entries")
        ck.eq(cfg.get("windows", []), v["config"].get("windows") or [], "[[windows]] entries")
        ck.eq(cfg.get("repairs", {}), v["config"].get("repairs") or {}, "[repairs.NAME] tables")
        ck.eq(cfg.get("ladder", []), v["config"].get("ladder") or [], "[[ladder]] entries")
        etcd_cfg = cfg.get("store", {}).get("etcd", {})
        tls_secret = v["etcdTls"]["secret"]
        for item, path, key in ETCD_TLS:
            want = path if tls_secret and (key == "ca_file" or v["etcdTls"]["clientCertificate"]) else None
            ck.eq(etcd_cfg.get(key), want, f"store.etcd.{key} is the mounted {item} of etcdTls.secret")
        addr = v["admin"]["address"] if exposed else "127.0.0.1"
        listen = f"[{addr}]:{admin_port}" if ":" in addr else f"{addr}:{admin_port}"
        ck.eq(cfg.get("admin", {}).get("listen"), listen, "admin.listen: loopback unless exposed")
        ck.ok(not exposed or "token_file" in cfg.get("admin", {}), "an exposed admin API has a token (the agent's rule)")
        for (block, what), (_, path, key) in CREDENTIALS.items():
            section, field = key.split(".")
            ck.eq(cfg.get(section, {}).get(field), path if key in files else None, f"{key} is the mounted file")

    # 5. Service, ServiceMonitor, PodDisruptionBudget
    svc = one("Service")
    if v["service"]["enabled"]:
        if ck.ok(svc is not None, "Service rendered"):
            admin_svc = v["admin"]["service"]["enabled"]
            ck.eq([(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]],
                  [("http", port, "http")] + ([("admin", admin_port, "admin")] if admin_svc else []),
                  "Service ports")
            ck.eq(svc["spec"]["selector"], dep["spec"]["selector"]["matchLabels"], "Service selects the pods")
    else:
        ck.ok(svc is None, "no Service")
    sm = one("ServiceMonitor")
    if v["serviceMonitor"]["enabled"]:
        if ck.ok(sm is not None, "ServiceMonitor rendered"):
            ck.eq([(e["port"], e["path"]) for e in sm["spec"]["endpoints"]], [("http", "/metrics")], "scrapes /metrics")
            ck.ok(svc is not None and sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items(),
                  "ServiceMonitor selects the Service")
    else:
        ck.ok(sm is None, "no ServiceMonitor")
    pdb = one("PodDisruptionBudget")
    ck.eq(pdb is not None, bool(v["podDisruptionBudget"]["enabled"] and replicas > 1), "PodDisruptionBudget iff enabled and replicas > 1")

    # 6. the real agent accepts the rendered configuration
    if agent and toml_text:
        fake = {}
        for n, e in env.items():
            if "value" in e:
                fake[n] = e["value"]
            elif "secretKeyRef" in e.get("valueFrom", {}):
                fake[n] = TEST_KEY
            elif "fieldRef" in e.get("valueFrom", {}):
                fake[n] = POD_NAME
        expect = {"monitor_only": str(v["civo"]["monitorOnly"]).lower(), "kubeconfig": '""',
                  "instance": f'"{POD_NAME}"', "namespace": f'"{lease_ns}"'}
        if ha:
            expect["identity"] = f'"{POD_NAME}"'
        expect["listen"] = f'"{listen}"'
        expect["kind"] = executor["kind"].capitalize()
        run_agent(ck, agent, toml_text, fake, expect)
    return len(docs)


def check_credentials(ck: Checks, v: dict, pod: dict, mounts: dict, vols: dict) -> set[str]:
    """The token and CA files: only the one key of each Secret or ConfigMap,
    mounted read-only, not world-readable when an fsGroup owns them.
    Returns the configuration keys that point at a mounted file."""
    mode = 0o440 if "fsGroup" in (pod.get("securityContext") or {}) else 0o444
    used = set()
    for (block, what), (volume, path, key) in CREDENTIALS.items():
        src = v[block][what]
        name = src.get("existingSecret") if what == "token" else (src.get("configMap") or src.get("secret"))
        if not name:
            ck.ok(volume not in vols and volume not in mounts, f"no {volume} volume without {block}.{what}")
            continue
        used.add(key)
        vol = vols.get(volume) or {}
        item_key = src["existingSecretKey"] if what == "token" else src["key"]
        if what == "ca" and src.get("configMap"):
            ck.eq((vol.get("configMap") or {}).get("name"), name, f"{volume}: the ConfigMap {name}")
            body = vol.get("configMap") or {}
        else:
            ck.eq((vol.get("secret") or {}).get("secretName"), name, f"{volume}: the Secret {name}")
            body = vol.get("secret") or {}
        ck.eq(body.get("items"), [{"key": item_key, "path": os.path.basename(path)}], f"{volume}: only the key {item_key}")
        ck.eq(body.get("defaultMode"), mode, f"{volume}: mode {mode:o}")
        ck.eq(body.get("optional"), None, f"{volume}: required (the pod waits for it)")
        m = mounts.get(volume) or {}
        ck.eq((m.get("mountPath"), m.get("readOnly")), (os.path.dirname(path), True), f"{volume}: mounted read-only")
    secret = v["etcdTls"]["secret"]
    for item, path, key in ETCD_TLS:
        volume = f"etcd-{os.path.basename(os.path.dirname(path))}"
        if not secret or (key != "ca_file" and not v["etcdTls"]["clientCertificate"]):
            ck.ok(volume not in vols and volume not in mounts, f"no {volume} volume without etcdTls")
            continue
        body = (vols.get(volume) or {}).get("secret") or {}
        ck.eq(body.get("secretName"), secret, f"{volume}: the Secret {secret}")
        ck.eq(body.get("items"), [{"key": item, "path": item}], f"{volume}: only the key {item}")
        ck.eq(body.get("defaultMode"), mode, f"{volume}: mode {mode:o}")
        m = mounts.get(volume) or {}
        ck.eq((m.get("mountPath"), m.get("readOnly")), (os.path.dirname(path), True), f"{volume}: mounted read-only")
    return used


def check_package_config(ck: Checks, agent: str, path: Path) -> None:
    """The daemon's default configuration (deploy/config/config.toml) is valid as shipped."""
    text = path.read_text()
    cfg = tomllib.loads(text)
    ck.ok({"admin", "heartbeat", "executor"} <= set(cfg), f"{path}: has [admin], [heartbeat], [executor]: {sorted(cfg)}")
    ck.eq(cfg.get("admin", {}).get("listen"), "127.0.0.1:9626", f"{path}: admin on loopback")
    with tempfile.TemporaryDirectory() as d:
        p = subprocess.run([agent, "--config", str(path), "validate-config"], capture_output=True, text=True,
                           timeout=60, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": d})
    ck.ok(p.returncode == 0 and "configuration is valid" in p.stdout + p.stderr,
          f"node-agent --config {path} validate-config (exit {p.returncode}): {(p.stdout + p.stderr).strip()[:400]}")


def commented_keys(text: str) -> set[str]:
    """`section.key` of the keys examples/config.toml shows commented out (`# key = value`)."""
    out, section = set(), None
    for line in text.splitlines():
        m = re.match(r"(?:#\s*)?\[([a-z_.-]+)\]\s*$", line)
        if m:
            # [repairs.NAME] tables are entries, like [[checkers]].
            section = None if m.group(1).startswith("repairs.") else m.group(1)
        elif re.match(r"(#\s*)?\[\[", line):
            section = None
        elif section:
            m = re.match(r"#\s*([a-z_]+)\s*=\s*\S", line)
            if m:
                out.add(f"{section}.{m.group(1)}")
    return out


def check_values_cover_settings(ck: Checks, chart: Path, example: Path) -> None:
    """Every key of the annotated example config is a chart value (or set by the chart)."""
    ex = tomllib.loads(example.read_text())
    values = yaml.safe_load((chart / "values.yaml").read_text())["config"]

    def keys(d: dict, prefix: str = "") -> set[str]:
        out = set()
        for k, val in d.items():
            if k in CONFIG_ENTRIES:
                continue
            out |= keys(val, f"{prefix}{k}.") if isinstance(val, dict) else {f"{prefix}{k}"}
        return out

    text = example.read_text()
    commented = commented_keys(text)
    ck.ok({"civo.api_key", "admin.token_file", "heartbeat.ca_file", "executor.token_file"} <= commented,
          f"commented keys of the example are found: {sorted(commented)}")
    missing = (keys(ex) | commented) - keys(values) - SET_ELSEWHERE - DOCUMENTED_ONLY
    ck.ok(not missing, f"values.yaml exposes every setting of examples/config.toml: missing {sorted(missing)}")
    values_text = (chart / "values.yaml").read_text()
    for k in DOCUMENTED_ONLY:
        ck.ok(k.split(".")[1] in values_text, f"values.yaml documents {k}")
    # Keys the example shows commented out count (e.g. [store.etcd]).
    extra = keys(values) - keys(ex) - commented
    ck.ok(not extra, f"values.yaml config keys the example does not have: {sorted(extra)}")
    ck.ok("checkers" in values, "values.yaml exposes the checkers")
    ck.ok("addons" in values and "[[addons]]" in text, "values.yaml exposes the add-ons ([[addons]])")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chart", type=Path, required=True)
    ap.add_argument("--example", type=Path, required=True, help="examples/config.toml")
    ap.add_argument("--out", type=Path, required=True, help="where the renderings are written")
    ap.add_argument("--agent", help="a node-agent binary for validate-config")
    ap.add_argument("--package-config", type=Path, help="deploy/config/config.toml, checked with validate-config")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    print(f"chart-test: Helm {helm.helm_sdk_version()} (helm-python-sdk {helm.__version__}), "
          f"schemas: kubernetes-validate {kubernetes_validate.__version__ if hasattr(kubernetes_validate, '__version__') else ''} "
          f"(Kubernetes {KUBE_VERSION}, strict)")

    ck = Checks()
    ck.scope = "values"
    check_values_cover_settings(ck, a.chart, a.example)
    if a.agent and a.package_config:
        ck.scope = "package config"
        check_package_config(ck, a.agent, a.package_config)
    for s in SCENARIOS:
        ck.scope = s["name"]
        values: dict = {}
        for f in s["files"]:
            values = deep_merge(values, yaml.safe_load((a.chart / f).read_text()) or {})
        values = deep_merge(values, s["set"])
        before = len(ck.failures), ck.passed
        try:
            manifests = render(a.chart, values)
        except helm.HelmError as e:
            ck.ok(False, f"render: {e}")
            continue
        n = check_scenario(ck, a.chart, values, manifests, a.agent, a.out, s["name"])
        failed = len(ck.failures) - before[0]
        print(f"  {s['name']:<26} {n:2d} objects, {ck.passed - before[1]:3d} checks passed, {failed} failed")
    ck.scope = "negative"
    for s in NEGATIVE:
        try:
            render(a.chart, s["set"])
            ck.ok(False, f"{s['name']}: rendered, expected a failure ({s['error']})")
        except helm.HelmError as e:
            ck.ok(s["error"] in str(e), f"{s['name']}: failure names the problem ({s['error']!r}): {e}")
    print(f"  {'refused values':<26} {len(NEGATIVE):2d} cases")
    if not a.agent:
        print("  (no node-agent binary: the agent's validate-config step was skipped)")
    for f in ck.failures:
        print(f"FAIL {f}")
    print(f"renderings in {a.out}")
    print(f"chart-test: {ck.passed} passed, {len(ck.failures)} failed")
    return 1 if ck.failures else 0


if __name__ == "__main__":
    sys.exit(main())
