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

/// Cases per property: `FUZZ_CASES`, default 100,000 (CI runs the default).
fn cases() -> u32 {
    std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000)
}

/// Every checker and the classification on one Node; none may panic.
fn evaluate_all(n: &Node, lease: u64) {
    let now = Timestamp::from_secs(1_800_000_000);
    let _ = NodeReadyChecker::new().evaluate(n);
    for c in [ConditionChecker::disk_pressure(), ConditionChecker::memory_pressure(), ConditionChecker::pid_pressure()]
    {
        let _ = c.evaluate_at(n, now);
    }
    let _ = GpuChecker::evaluate(n);
    let _ = CiliumChecker::evaluate(n);
    let _ = KubeletLeaseChecker::new().evaluate_at(LeaseObservation::Renewed(Some(Timestamp::from_millis(lease))), now);
    let _ = classify(n);
    let _ = node_facts(n);
}

/// A production-sized GPU Node document (about 15 KB), as cluster-sim serves it.
fn real_node() -> Vec<u8> {
    let plan = cluster_sim::fixtures::NodePlan {
        name: "k3s-fuzz-pool-a-node-00001".into(),
        pool: "pool-a".into(),
        instance_id: "0f9c7a52-3b1e-4d6a-9f20-000000000001".into(),
        gpus: 8,
        index: 1,
        region: "lon1".into(),
        zone: None,
    };
    serde_json::to_vec(&cluster_sim::fixtures::node(&plan)).unwrap()
}

/// Edits of a document: (position per mille, operation, byte).
fn edits() -> impl Strategy<Value = Vec<(u16, u8, u8)>> {
    prop::collection::vec((0u16..1000, 0u8..3, any::<u8>()), 1..8)
}

fn mutate(doc: &[u8], edits: &[(u16, u8, u8)]) -> Vec<u8> {
    let mut d = doc.to_vec();
    for &(at, op, b) in edits {
        let i = (d.len() * usize::from(at)) / 1000;
        match op {
            0 if i < d.len() => d[i] = b,
            1 => d.insert(i.min(d.len()), b),
            _ if i < d.len() => {
                d.remove(i);
            }
            _ => {}
        }
    }
    d
}

/// Quantity-shaped text: sign, digits, fraction, suffix or exponent,
/// including exponents at the ends of i64.
fn quantity_text() -> impl Strategy<Value = String> {
    let suffix = prop_oneof![
        Just(String::new()),
        prop::sample::select(vec!["m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "x", "i"])
            .prop_map(str::to_owned),
        ("[eE]", "[+-]?", "[0-9]{0,21}").prop_map(|(e, s, d)| format!("{e}{s}{d}")),
        Just("e-9223372036854775808".to_owned()),
        Just("e9223372036854775807".to_owned()),
    ];
    ("[+-]?", "[0-9]{0,42}", prop::option::of("[0-9]{0,42}"), suffix).prop_map(|(sign, int, frac, suffix)| {
        format!("{sign}{int}{}{suffix}", frac.map(|f| format!(".{f}")).unwrap_or_default())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn no_checker_panics_on_generated_nodes(v in node(), lease in any::<u64>()) {
        let Ok(n) = serde_json::from_value::<Node>(v) else { return Ok(()) };
        evaluate_all(&n, lease);
    }

    #[test]
    fn no_checker_panics_on_damaged_real_nodes(e in edits(), lease in any::<u64>()) {
        thread_local!(static DOC: Vec<u8> = real_node());
        let doc = DOC.with(|d| mutate(d, &e));
        let Ok(n) = serde_json::from_slice::<Node>(&doc) else { return Ok(()) };
        evaluate_all(&n, lease);
    }

    #[test]
    fn quantities_never_panic(s in prop_oneof![quantity_text(), "\\PC{0,24}"]) {
        if let Ok(v) = quantity::parse_whole(&s) {
            // Whatever parses is a number that prints back without a suffix.
            prop_assert_eq!(quantity::parse_whole(&v.to_string()), Ok(v));
        }
    }
}
