//! Realistic Node and Pod objects, shaped like those of a Civo k3s cluster
//! (labels, conditions, capacity, node info, images, managed fields), so a
//! Node serialises to 10-20 KB as production ones do.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerImage, DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec,
    NodeStatus, NodeSystemInfo, Pod, PodCondition, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, ObjectMeta, OwnerReference, Time};
use serde_json::json;

/// The label carrying a node's Civo pool id.
pub const POOL_LABEL: &str = "kubernetes.civo.com/civo-node-pool";

/// The zone label, on nodes of a cluster with zones.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// The label carrying a GPU node's expected GPU count.
pub const GPU_COUNT_LABEL: &str = "nvidia.com/gpu.count";
/// The allocatable resource of NVIDIA GPUs.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// What distinguishes one simulated node from another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePlan {
    /// Node (and instance host) name.
    pub name: String,
    /// Civo pool id.
    pub pool: String,
    /// Civo instance id.
    pub instance_id: String,
    /// GPUs (0 for a standard node).
    pub gpus: u32,
    /// Position in the cluster, for addresses.
    pub index: u32,
    /// Civo region.
    pub region: String,
    /// The zone (`topology.kubernetes.io/zone`), if the cluster has zones.
    pub zone: Option<String>,
}

fn q(s: &str) -> Quantity {
    Quantity(s.to_owned())
}

fn time(s: &str) -> Time {
    Time(s.parse().unwrap_or_default())
}

/// The internal IP of the node at `index`.
#[must_use]
pub fn internal_ip(index: u32) -> String {
    format!("10.{}.{}.{}", 16 + ((index >> 16) & 0xff), (index >> 8) & 0xff, index & 0xff)
}

/// The public IP of the node at `index`.
#[must_use]
pub fn public_ip(index: u32) -> String {
    format!("74.{}.{}.{}", 220 + ((index >> 16) & 0x1f), (index >> 8) & 0xff, index & 0xff)
}

/// The pod CIDR of the node at `index` (unique for 2^24 nodes).
#[must_use]
pub fn pod_cidr(index: u32) -> String {
    format!("{}.{}.{}.0/24", 100 + ((index >> 16) & 0x1f), (index >> 8) & 0xff, index & 0xff)
}

const IMAGES: &[(&str, &str, i64)] = &[
    ("docker.io/rancher/mirrored-library-traefik", "3.3.6", 61_254_211),
    ("quay.io/cilium/cilium", "v1.17.4", 241_857_336),
    ("quay.io/cilium/operator-generic", "v1.17.4", 33_102_521),
    ("docker.io/rancher/mirrored-coredns-coredns", "1.12.1", 22_318_411),
    ("docker.io/rancher/local-path-provisioner", "v0.0.31", 19_410_552),
    ("docker.io/rancher/mirrored-metrics-server", "v0.7.2", 19_494_617),
    ("docker.io/rancher/klipper-helm", "v0.9.5-build20250306", 63_713_310),
    ("docker.io/rancher/klipper-lb", "v0.4.13", 4_979_331),
    ("docker.io/rancher/mirrored-pause", "3.6", 301_463),
    ("registry.k8s.io/ingress-nginx/controller", "v1.12.1", 105_413_229),
    ("docker.io/civo/civo-csi", "v0.0.22", 39_411_218),
    ("docker.io/civo/civo-cloud-controller-manager", "v0.0.29", 27_180_011),
    ("quay.io/prometheus/node-exporter", "v1.9.1", 12_371_620),
    ("registry.k8s.io/kube-state-metrics/kube-state-metrics", "v2.15.0", 18_093_314),
    ("docker.io/grafana/promtail", "3.4.2", 83_210_992),
    ("quay.io/jetstack/cert-manager-controller", "v1.17.2", 21_411_998),
    ("quay.io/jetstack/cert-manager-webhook", "v1.17.2", 17_810_356),
    ("quay.io/jetstack/cert-manager-cainjector", "v1.17.2", 16_112_008),
    ("docker.io/library/redis", "7.4.2-alpine", 17_211_880),
    ("docker.io/library/postgres", "17.4-alpine", 110_918_372),
    ("ghcr.io/example/shop-frontend", "2025.11.3", 48_115_001),
    ("ghcr.io/example/shop-api", "2025.11.3", 71_300_412),
    ("ghcr.io/example/shop-worker", "2025.11.3", 70_118_233),
    ("docker.io/bitnami/kubectl", "1.33.1", 94_112_554),
];

const GPU_IMAGES: &[(&str, &str, i64)] = &[
    ("nvcr.io/nvidia/k8s-device-plugin", "v0.17.1", 201_348_811),
    ("nvcr.io/nvidia/gpu-feature-discovery", "v0.17.1", 188_112_007),
    ("nvcr.io/nvidia/dcgm-exporter", "4.1.1-4.0.4-ubuntu22.04", 432_999_120),
    ("nvcr.io/nvidia/pytorch", "25.04-py3", 9_812_332_441),
];

fn digest(repo: &str, salt: u32) -> String {
    // A stable fake sha256 digest derived from the repository name.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ u64::from(salt);
    for b in repo.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{repo}@sha256:{h:016x}{:016x}{:016x}{:016x}", h.rotate_left(13), h.rotate_left(29), h.rotate_left(47))
}

fn condition(kind: &str, status: &str, reason: &str, message: &str) -> NodeCondition {
    NodeCondition {
        type_: kind.to_owned(),
        status: status.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_heartbeat_time: Some(time("2026-11-21T05:00:00Z")),
        last_transition_time: Some(time("2026-11-01T09:12:44Z")),
    }
}

/// The healthy conditions of a node running Cilium.
#[must_use]
pub fn healthy_conditions() -> Vec<NodeCondition> {
    vec![
        condition("NetworkUnavailable", "False", "CiliumIsUp", "Cilium is running on this node"),
        condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
    ]
}

fn managed_fields() -> Vec<ManagedFieldsEntry> {
    let entry = |manager: &str, op: &str, sub: Option<&str>, fields: serde_json::Value| ManagedFieldsEntry {
        api_version: Some("v1".into()),
        fields_type: Some("FieldsV1".into()),
        fields_v1: Some(FieldsV1(fields)),
        manager: Some(manager.into()),
        operation: Some(op.into()),
        subresource: sub.map(str::to_owned),
        time: Some(time("2026-11-01T09:12:44Z")),
    };
    let cond = |t: &str| {
        (
            format!("k:{{\"type\":\"{t}\"}}"),
            json!({".": {}, "f:lastHeartbeatTime": {}, "f:lastTransitionTime": {}, "f:message": {}, "f:reason": {}, "f:status": {}, "f:type": {}}),
        )
    };
    let conditions: serde_json::Map<String, serde_json::Value> =
        ["DiskPressure", "MemoryPressure", "NetworkUnavailable", "PIDPressure", "Ready"]
            .iter()
            .map(|t| cond(t))
            .collect();
    vec![
        entry(
            "k3s",
            "Update",
            None,
            json!({"f:metadata": {"f:annotations": {".": {}, "f:alpha.kubernetes.io/provided-node-ip": {}, "f:k3s.io/hostname": {}, "f:k3s.io/internal-ip": {}, "f:k3s.io/node-args": {}, "f:k3s.io/node-config-hash": {}, "f:k3s.io/node-env": {}, "f:node.alpha.kubernetes.io/ttl": {}, "f:volumes.kubernetes.io/controller-managed-attach-detach": {}}, "f:finalizers": {".": {}, "v:\"wrangler.cattle.io/node\"": {}}, "f:labels": {".": {}, "f:beta.kubernetes.io/arch": {}, "f:beta.kubernetes.io/os": {}, "f:kubernetes.io/arch": {}, "f:kubernetes.io/hostname": {}, "f:kubernetes.io/os": {}, "f:node.kubernetes.io/instance-type": {}}}}),
        ),
        entry(
            "k3s",
            "Update",
            Some("status"),
            json!({"f:status": {"f:allocatable": {"f:ephemeral-storage": {}}, "f:conditions": conditions, "f:images": {}, "f:nodeInfo": {"f:bootID": {}}}}),
        ),
        entry(
            "civo-cloud-controller-manager",
            "Update",
            None,
            json!({"f:metadata": {"f:labels": {"f:kubernetes.civo.com/civo-node-pool": {}, "f:topology.kubernetes.io/region": {}, "f:failure-domain.beta.kubernetes.io/region": {}}}, "f:spec": {"f:providerID": {}}}),
        ),
        entry(
            "cilium-agent",
            "Update",
            Some("status"),
            json!({"f:metadata": {"f:annotations": {"f:network.cilium.io/ipv4-cilium-host": {}, "f:network.cilium.io/ipv4-health-ip": {}, "f:network.cilium.io/ipv4-pod-cidr": {}}}}),
        ),
    ]
}

/// A realistic Node for `plan`, Ready and healthy.
#[must_use]
pub fn node(plan: &NodePlan) -> Node {
    let size = if plan.gpus > 0 { "an1.l40s-ks" } else { "g4s.kube.medium" };
    let mut labels: BTreeMap<String, String> = [
        ("beta.kubernetes.io/arch", "amd64"),
        ("beta.kubernetes.io/instance-type", size),
        ("beta.kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
        ("kubernetes.io/os", "linux"),
        ("node.kubernetes.io/instance-type", size),
        ("topology.kubernetes.io/region", plan.region.as_str()),
        ("failure-domain.beta.kubernetes.io/region", plan.region.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    labels.insert("kubernetes.io/hostname".into(), plan.name.clone());
    labels.insert(POOL_LABEL.into(), plan.pool.clone());
    if let Some(zone) = &plan.zone {
        labels.insert(ZONE_LABEL.into(), zone.clone());
    }
    let ip = internal_ip(plan.index);
    let annotations: BTreeMap<String, String> = [
        ("alpha.kubernetes.io/provided-node-ip", ip.as_str()),
        ("k3s.io/hostname", plan.name.as_str()),
        ("k3s.io/internal-ip", ip.as_str()),
        ("k3s.io/node-args", "[\"agent\",\"--node-label\",\"kubernetes.civo.com/civo-node-pool\",\"--kubelet-arg\",\"cloud-provider=external\",\"--flannel-backend\",\"none\"]"),
        ("k3s.io/node-config-hash", "Q6KUWHNVZ5WYWU4PGD7HBJ3FS5VKHVQ7LL6R2X4ROVAFN2HKHHFQ===="),
        ("k3s.io/node-env", "{\"K3S_TOKEN\":\"********\",\"K3S_URL\":\"https://192.168.1.1:6443\"}"),
        ("network.cilium.io/ipv4-cilium-host", "10.0.0.36"),
        ("network.cilium.io/ipv4-health-ip", "10.0.0.41"),
        ("network.cilium.io/ipv4-pod-cidr", "10.0.0.0/24"),
        ("node.alpha.kubernetes.io/ttl", "0"),
        ("volumes.kubernetes.io/controller-managed-attach-detach", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let mut capacity: BTreeMap<String, Quantity> = [
        ("cpu", if plan.gpus > 0 { "16" } else { "4" }),
        ("ephemeral-storage", "82486728Ki"),
        ("hugepages-1Gi", "0"),
        ("hugepages-2Mi", "0"),
        ("memory", if plan.gpus > 0 { "131932352Ki" } else { "8129476Ki" }),
        ("pods", "110"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), q(v)))
    .collect();
    let mut allocatable = capacity.clone();
    allocatable.insert("ephemeral-storage".into(), q("80242123041"));
    allocatable.insert("memory".into(), q(if plan.gpus > 0 { "131829952Ki" } else { "8027076Ki" }));
    let mut images: Vec<ContainerImage> = IMAGES
        .iter()
        .enumerate()
        .map(|(i, (repo, tag, size))| ContainerImage {
            names: Some(vec![digest(repo, i as u32), format!("{repo}:{tag}")]),
            size_bytes: Some(*size),
        })
        .collect();
    if plan.gpus > 0 {
        labels.insert(GPU_COUNT_LABEL.into(), plan.gpus.to_string());
        labels.insert("nvidia.com/gpu.product".into(), "NVIDIA-L40S".into());
        labels.insert("nvidia.com/gpu.memory".into(), "46068".into());
        labels.insert("nvidia.com/gpu.present".into(), "true".into());
        capacity.insert(GPU_RESOURCE.into(), q(&plan.gpus.to_string()));
        allocatable.insert(GPU_RESOURCE.into(), q(&plan.gpus.to_string()));
        images.extend(GPU_IMAGES.iter().enumerate().map(|(i, (repo, tag, size))| ContainerImage {
            names: Some(vec![digest(repo, 100 + i as u32), format!("{repo}:{tag}")]),
            size_bytes: Some(*size),
        }));
    }
    Node {
        metadata: ObjectMeta {
            name: Some(plan.name.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            finalizers: Some(vec!["wrangler.cattle.io/node".into()]),
            managed_fields: Some(managed_fields()),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(pod_cidr(plan.index)),
            pod_cidrs: Some(vec![pod_cidr(plan.index)]),
            provider_id: Some(format!("civo://{}", plan.instance_id)),
            ..NodeSpec::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress { type_: "InternalIP".into(), address: ip },
                NodeAddress { type_: "ExternalIP".into(), address: public_ip(plan.index) },
                NodeAddress { type_: "Hostname".into(), address: plan.name.clone() },
            ]),
            allocatable: Some(allocatable),
            capacity: Some(capacity),
            conditions: Some(healthy_conditions()),
            daemon_endpoints: Some(NodeDaemonEndpoints { kubelet_endpoint: Some(DaemonEndpoint { port: 10250 }) }),
            images: Some(images),
            node_info: Some(NodeSystemInfo {
                architecture: "amd64".into(),
                boot_id: format!("3f2b1c9e-8d41-4a2f-9c55-{:012x}", plan.index),
                container_runtime_version: "containerd://2.0.5-k3s1".into(),
                kernel_version: "6.8.0-60-generic".into(),
                kube_proxy_version: "v1.33.1+k3s1".into(),
                kubelet_version: "v1.33.1+k3s1".into(),
                machine_id: format!("e9b7a1c2d3f44b5c8a9d{:012x}", plan.index),
                operating_system: "linux".into(),
                os_image: "Ubuntu 24.04.2 LTS".into(),
                system_uuid: plan.instance_id.clone(),
                ..NodeSystemInfo::default()
            }),
            ..NodeStatus::default()
        }),
    }
}

/// Who owns a simulated pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodOwner {
    /// A DaemonSet (drain skips it with `--ignore-daemonsets`).
    DaemonSet,
    /// A ReplicaSet (evicted on drain).
    ReplicaSet,
    /// A static (mirror) pod (never evicted).
    Mirror,
}

/// A running pod on `node`.
#[must_use]
pub fn pod(namespace: &str, name: &str, node: &str, app: &str, owner: PodOwner) -> Pod {
    let mut labels = BTreeMap::from([("app".to_owned(), app.to_owned())]);
    let mut annotations = BTreeMap::new();
    let owner_references = match owner {
        PodOwner::DaemonSet => Some(vec![{
            // DaemonSets such as Cilium's select on `k8s-app`.
            labels.insert("k8s-app".into(), app.to_owned());
            OwnerReference {
                api_version: "apps/v1".into(),
                kind: "DaemonSet".into(),
                name: app.to_owned(),
                uid: format!("d5000000-0000-4000-8000-{:012x}", app.len()),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }
        }]),
        PodOwner::ReplicaSet => {
            labels.insert("pod-template-hash".into(), "7d9f8b6c5".into());
            Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: format!("{app}-7d9f8b6c5"),
                uid: format!("a5000000-0000-4000-8000-{:012x}", app.len()),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }])
        }
        PodOwner::Mirror => {
            annotations.insert("kubernetes.io/config.mirror".into(), "5c1d0e6f3b2a".into());
            annotations.insert("kubernetes.io/config.source".into(), "file".into());
            None
        }
    };
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references,
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.to_owned()),
            containers: vec![Container {
                name: app.to_owned(),
                image: Some(format!("ghcr.io/example/{app}:1.0")),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_production_sized() {
        let plan = |gpus| NodePlan {
            name: "k3s-sim-pool-a-node-00001".into(),
            pool: "pool-a".into(),
            instance_id: "0f9c7a52-3b1e-4d6a-9f20-000000000001".into(),
            gpus,
            index: 1,
            region: "lon1".into(),
            zone: None,
        };
        for gpus in [0, 8] {
            let len = serde_json::to_vec(&node(&plan(gpus))).unwrap().len();
            assert!((10_000..=20_000).contains(&len), "{gpus} GPUs: {len} bytes");
        }
        let gpu = node(&plan(8));
        assert_eq!(gpu.metadata.labels.as_ref().unwrap()[GPU_COUNT_LABEL], "8");
        assert_eq!(gpu.status.as_ref().unwrap().allocatable.as_ref().unwrap()[GPU_RESOURCE].0, "8");
    }
}
