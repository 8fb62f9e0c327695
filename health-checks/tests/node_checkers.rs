//! Table-driven tests of the Kubernetes checkers over realistic Node JSON
//! (cluster-sim's generator), including absent, duplicated and malformed data.

use std::time::Duration;

use cluster_sim::fixtures::{self, NodePlan};
use health_checks::*;
use health_core::{CheckOutcome, NodeClass, Timestamp};
use k8s_openapi::api::core::v1::Node;
use serde_json::{Value, json};

fn base(gpus: u32) -> Value {
    let plan = NodePlan {
        name: "k3s-sim-std-5a1c-node-00001".into(),
        pool: "5a1c0000".into(),
        instance_id: "0f9c7a52-3b1e-4d6a-9f20-000000000001".into(),
        gpus,
        index: 1,
        region: "lon1".into(),
        zone: None,
    };
    serde_json::to_value(fixtures::node(&plan)).unwrap()
}

fn node(v: &Value) -> Node {
    serde_json::from_value(v.clone()).unwrap()
}

fn set_condition(v: &mut Value, kind: &str, status: &str, reason: &str) {
    let conds = v["status"]["conditions"].as_array_mut().unwrap();
    let c = conds.iter_mut().find(|c| c["type"] == kind).unwrap();
    c["status"] = json!(status);
    c["reason"] = json!(reason);
}

/// A named mutation of a node and the outcome it must produce.
type Case = (&'static str, Box<dyn Fn(&mut Value)>, &'static str);
/// (what, GPUs, label override, allocatable override, outcome).
type GpuCase = (&'static str, u32, Option<&'static str>, Option<&'static str>, &'static str);

fn reason(o: &CheckOutcome) -> String {
    match o {
        CheckOutcome::Pass => "Pass".into(),
        CheckOutcome::Fail { reason, .. } => format!("Fail:{reason}"),
        CheckOutcome::Skip { reason } => format!("Skip:{reason}"),
    }
}

#[test]
fn node_ready() {
    let ready = NodeReadyChecker::new();
    let cases: Vec<Case> = vec![
        ("healthy", Box::new(|_| {}), "Pass"),
        ("not ready", Box::new(|v| set_condition(v, "Ready", "False", "KubeletNotReady")), "Fail:NodeNotReady"),
        ("unknown", Box::new(|v| set_condition(v, "Ready", "Unknown", "NodeStatusUnknown")), "Fail:NodeStatusUnknown"),
        ("garbage status", Box::new(|v| set_condition(v, "Ready", "Maybe", "")), "Fail:NodeStatusUnknown"),
        (
            "missing",
            Box::new(|v| v["status"]["conditions"].as_array_mut().unwrap().retain(|c| c["type"] != "Ready")),
            "Fail:ReadyConditionMissing",
        ),
        (
            "no status at all",
            Box::new(|v| v.as_object_mut().unwrap().remove("status").map(|_| ()).unwrap_or(())),
            "Fail:ReadyConditionMissing",
        ),
        (
            "duplicated, one bad",
            Box::new(|v| {
                v["status"]["conditions"].as_array_mut().unwrap().push(json!({"type": "Ready", "status": "False"}))
            }),
            "Fail:NodeNotReady",
        ),
        (
            "duplicated, both good",
            Box::new(|v| {
                v["status"]["conditions"].as_array_mut().unwrap().push(json!({"type": "Ready", "status": "True"}))
            }),
            "Pass",
        ),
    ];
    for (what, mutate, want) in cases {
        let mut v = base(0);
        mutate(&mut v);
        assert_eq!(reason(&ready.evaluate(&node(&v))), want, "{what}");
    }
    assert_eq!(HealthChecker::<Node>::threshold(&ready), Duration::from_secs(300));
}

#[test]
fn pressure_and_custom_conditions() {
    let now = Timestamp::from_secs(1_800_000_000);
    let disk = ConditionChecker::disk_pressure();
    let mut v = base(0);
    assert_eq!(reason(&disk.evaluate_at(&node(&v), now)), "Pass");
    set_condition(&mut v, "DiskPressure", "True", "KubeletHasDiskPressure");
    assert_eq!(reason(&disk.evaluate_at(&node(&v), now)), "Fail:DiskPressure");
    set_condition(&mut v, "DiskPressure", "Unknown", "NodeStatusUnknown");
    assert_eq!(reason(&disk.evaluate_at(&node(&v), now)), "Pass", "Unknown pressure is NodeReady's business");
    v["status"]["conditions"].as_array_mut().unwrap().retain(|c| c["type"] != "DiskPressure");
    assert_eq!(reason(&disk.evaluate_at(&node(&v), now)), "Pass");
    let mut v = base(0);
    set_condition(&mut v, "MemoryPressure", "True", "");
    assert_eq!(reason(&ConditionChecker::memory_pressure().evaluate_at(&node(&v), now)), "Fail:MemoryPressure");
    set_condition(&mut v, "PIDPressure", "True", "");
    assert_eq!(reason(&ConditionChecker::pid_pressure().evaluate_at(&node(&v), now)), "Fail:PIDPressure");

    // NodeHealthCheck style: a condition must hold its bad status for a while.
    let rule = ConditionRule {
        condition_type: "KernelDeadlock".into(),
        bad_statuses: vec!["True".into(), "Unknown".into()],
        for_at_least: Duration::from_secs(120),
        missing: MissingCondition::Skip,
        reason: "KernelDeadlock".into(),
    };
    let deadlock = ConditionChecker::new("KernelDeadlock", Duration::ZERO, rule);
    let mut v = base(0);
    assert_eq!(reason(&deadlock.evaluate_at(&node(&v), now)), "Skip:ConditionMissing");
    let since = |secs: u64| {
        humantime::format_rfc3339_seconds(Timestamp::from_secs(1_800_000_000 - secs).to_system_time()).to_string()
    };
    v["status"]["conditions"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "KernelDeadlock", "status": "True", "lastTransitionTime": since(60)}));
    assert_eq!(reason(&deadlock.evaluate_at(&node(&v), now)), "Pass", "bad for 1m of the required 2m");
    v["status"]["conditions"].as_array_mut().unwrap().last_mut().unwrap()["lastTransitionTime"] = json!(since(120));
    assert_eq!(reason(&deadlock.evaluate_at(&node(&v), now)), "Fail:KernelDeadlock");
    v["status"]["conditions"]
        .as_array_mut()
        .unwrap()
        .last_mut()
        .unwrap()
        .as_object_mut()
        .unwrap()
        .remove("lastTransitionTime");
    assert_eq!(reason(&deadlock.evaluate_at(&node(&v), now)), "Fail:KernelDeadlock", "no transition time: long enough");
}

#[test]
fn gpu_counts_labels_and_quantities() {
    let label = |v: &mut Value, l: &str| v["metadata"]["labels"]["nvidia.com/gpu.count"] = json!(l);
    let alloc = |v: &mut Value, q: &str| v["status"]["allocatable"]["nvidia.com/gpu"] = json!(q);
    let cases: Vec<GpuCase> = vec![
        ("matching", 8, None, None, "Pass"),
        ("non-GPU node", 0, None, None, "Skip:NonGPUNode"),
        ("one GPU lost", 8, None, Some("7"), "Fail:GPUCountMismatch"),
        ("all GPUs lost", 8, None, Some("0"), "Fail:NoAllocatableGPU"),
        ("8k allocatable", 8, None, Some("8k"), "Fail:GPUCountMismatch"),
        ("1e3 allocatable", 8, Some("1000"), Some("1e3"), "Pass"),
        ("fractional allocatable", 8, None, Some("7.5"), "Fail:InvalidGPUQuantity"),
        ("garbage allocatable", 8, None, Some("lots"), "Fail:InvalidGPUQuantity"),
        ("label eight", 8, Some("eight"), None, "Fail:InvalidGPULabel"),
        ("label -1", 8, Some("-1"), None, "Fail:InvalidGPULabel"),
        ("label 9999999999999", 8, Some("9999999999999"), None, "Fail:InvalidGPULabel"),
        ("label 0 with none allocatable", 8, Some("0"), Some("0"), "Pass"),
    ];
    for (what, gpus, l, a, want) in cases {
        let mut v = base(gpus);
        if let Some(l) = l {
            label(&mut v, l);
        }
        if let Some(a) = a {
            alloc(&mut v, a);
        }
        assert_eq!(reason(&GpuChecker::evaluate(&node(&v))), want, "{what}");
    }
    let mut v = base(8);
    v["status"]["allocatable"].as_object_mut().unwrap().remove("nvidia.com/gpu");
    assert_eq!(reason(&GpuChecker::evaluate(&node(&v))), "Fail:NoAllocatableGPU");
    // The class follows the label, even when every GPU is gone.
    alloc(&mut v, "0");
    assert_eq!(classify(&node(&v)), NodeClass::Gpu);
    assert_eq!(classify(&node(&base(0))), NodeClass::Standard);
    let mut v = base(8);
    label(&mut v, "eight");
    assert_eq!(classify(&node(&v)), NodeClass::Standard);
}

#[test]
fn cilium() {
    let mut v = base(0);
    assert_eq!(reason(&CiliumChecker::evaluate(&node(&v))), "Pass");
    set_condition(&mut v, "NetworkUnavailable", "True", "CiliumIsDown");
    assert_eq!(reason(&CiliumChecker::evaluate(&node(&v))), "Fail:CiliumNetworkUnavailable");
    let mut v = base(0);
    v["spec"]["taints"] = json!([{"key": "node.cilium.io/agent-not-ready", "effect": "NoSchedule"}]);
    assert_eq!(reason(&CiliumChecker::evaluate(&node(&v))), "Fail:CiliumAgentNotReady");
    // Another CNI: not Cilium's business.
    let mut v = base(0);
    set_condition(&mut v, "NetworkUnavailable", "True", "FlannelIsDown");
    assert_eq!(reason(&CiliumChecker::evaluate(&node(&v))), "Skip:NonCiliumNode");
    v["status"]["conditions"].as_array_mut().unwrap().retain(|c| c["type"] != "NetworkUnavailable");
    assert_eq!(reason(&CiliumChecker::evaluate(&node(&v))), "Skip:NonCiliumNode");
}

#[test]
fn kubelet_lease() {
    let c = KubeletLeaseChecker::new();
    let now = Timestamp::from_secs(1_800_000_000);
    let at = |ago: u64| LeaseObservation::Renewed(Some(Timestamp::from_secs(1_800_000_000 - ago)));
    assert_eq!(reason(&c.evaluate_at(at(10), now)), "Pass");
    assert_eq!(reason(&c.evaluate_at(at(40), now)), "Pass");
    assert_eq!(reason(&c.evaluate_at(at(41), now)), "Fail:LeaseStale");
    assert_eq!(reason(&c.evaluate_at(LeaseObservation::Renewed(None), now)), "Fail:LeaseStale");
    assert_eq!(reason(&c.evaluate_at(LeaseObservation::Missing, now)), "Fail:LeaseMissing");
    assert_eq!(reason(&c.evaluate_at(LeaseObservation::NotFetched, now)), "Skip:LeaseNotFetched");
    // A lease renewed "in the future" (clock skew) is fresh.
    assert_eq!(reason(&c.evaluate_at(LeaseObservation::Renewed(Some(now + Duration::from_secs(5))), now)), "Pass");
}

#[test]
fn node_facts_for_the_gates() {
    let mut v = base(8);
    v["metadata"]["creationTimestamp"] = json!("2026-11-21T05:00:00Z");
    let f = node_facts(&node(&v));
    assert_eq!(f.class, NodeClass::Gpu);
    assert_eq!(f.created_at, Some(Timestamp::from_secs(1_795_237_200)));
    assert!(!f.deleting && !f.tainted_for_removal && !f.opted_out);
    v["metadata"]["deletionTimestamp"] = json!("2026-11-21T06:00:00Z");
    v["spec"]["taints"] = json!([{"key": "ToBeDeletedByClusterAutoscaler", "effect": "NoSchedule"}]);
    v["metadata"]["annotations"]["node-agent.civo.com/opt-out"] = json!("true");
    let f = node_facts(&node(&v));
    assert!(f.deleting && f.tainted_for_removal && f.opted_out);
    v["spec"]["taints"] = json!([{"key": "node.cloudprovider.kubernetes.io/shutdown", "effect": "NoSchedule"}]);
    assert!(node_facts(&node(&v)).tainted_for_removal);
}
