//! No checker ever panics, whatever a Node looks like.

use health_checks::*;
use health_core::Timestamp;
use k8s_openapi::api::core::v1::Node;
use proptest::prelude::*;
use serde_json::{Value, json};

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("True".to_owned()),
        Just("False".to_owned()),
        Just("Unknown".to_owned()),
        Just("8".to_owned()),
        Just("-1".to_owned()),
        Just("1e3".to_owned()),
        Just("9999999999999999999999999".to_owned()),
        Just("CiliumIsUp".to_owned()),
        "[ -~]{0,12}",
    ]
}

fn condition() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            Just("Ready"),
            Just("DiskPressure"),
            Just("MemoryPressure"),
            Just("PIDPressure"),
            Just("NetworkUnavailable"),
            Just("X")
        ],
        text(),
        text(),
        prop::option::of(prop_oneof![Just("2026-11-21T05:00:00Z"), Just("1970-01-01T00:00:00Z")]),
    )
        .prop_map(|(t, s, r, at)| {
            let mut c = json!({"type": t, "status": s, "reason": r});
            if let Some(at) = at {
                c["lastTransitionTime"] = json!(at);
            }
            c
        })
}

fn node() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(condition(), 0..8),
        prop::option::of(text()),
        prop::option::of(text()),
        prop::collection::vec(prop_oneof![Just("node.cilium.io/agent-not-ready"), Just("ToBeDeletedByClusterAutoscaler"), Just("x")], 0..3),
        any::<bool>(),
    )
        .prop_map(|(conds, label, alloc, taints, with_status)| {
            let mut v = json!({"metadata": {"name": "n"}, "spec": {"taints": taints.iter().map(|k| json!({"key": k, "effect": "NoSchedule"})).collect::<Vec<_>>()}});
            if let Some(l) = label {
                v["metadata"]["labels"] = json!({"nvidia.com/gpu.count": l});
            }
            if with_status {
                v["status"] = json!({"conditions": conds});
                if let Some(a) = alloc {
                    v["status"]["allocatable"] = json!({"nvidia.com/gpu": a});
                }
            }
            v
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn no_checker_panics(v in node(), lease_secs in any::<u64>()) {
        let Ok(n) = serde_json::from_value::<Node>(v) else { return Ok(()) };
        let now = Timestamp::from_secs(1_800_000_000);
        let _ = NodeReadyChecker::new().evaluate(&n);
        for c in [ConditionChecker::disk_pressure(), ConditionChecker::memory_pressure(), ConditionChecker::pid_pressure()] {
            let _ = c.evaluate_at(&n, now);
        }
        let _ = GpuChecker::evaluate(&n);
        let _ = CiliumChecker::evaluate(&n);
        let _ = KubeletLeaseChecker::new().evaluate_at(LeaseObservation::Renewed(Some(Timestamp::from_millis(lease_secs))), now);
        let _ = classify(&n);
        let _ = node_facts(&n);
    }

    #[test]
    fn quantities_never_panic(s in "\\PC{0,24}") {
        let _ = quantity::parse_whole(&s);
    }
}
