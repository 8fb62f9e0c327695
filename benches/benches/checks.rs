//! Every Kubernetes checker on one realistic node (cluster-sim's fixture),
//! read through its cached `NodeView` as the agent does; and the cost of
//! reducing a full Node to that view (once per relevant Node update).

use std::hint::black_box;

use cluster_sim::fixtures::{self, NodePlan};
use criterion::{Criterion, criterion_group, criterion_main};
use health_checks::{
    CiliumChecker, ConditionChecker, GpuChecker, KubeletLeaseChecker, LeaseObservation, NodeReadyChecker, NodeView,
    StringPool, classify, node_facts,
};
use health_core::Timestamp;
use k8s_openapi::api::core::v1::Node;

fn bench_checks(c: &mut Criterion) {
    let plan = NodePlan {
        name: "k3s-sim-gpu-9d4e-node-00001".into(),
        pool: "9d4e7f10".into(),
        instance_id: "0f9c7a52-3b1e-4d6a-9f20-000000000001".into(),
        gpus: 8,
        index: 1,
        region: "lon1".into(),
        zone: None,
    };
    let full: Node = fixtures::node(&plan);
    let pool = StringPool::new();
    let node = NodeView::from_node_in(&full, &pool);
    let now = Timestamp::from_secs(1_800_000_000);
    let ready = NodeReadyChecker::new();
    let disk = ConditionChecker::disk_pressure();
    let memory = ConditionChecker::memory_pressure();
    let pid = ConditionChecker::pid_pressure();
    let lease = KubeletLeaseChecker::new();
    let renewed = LeaseObservation::Renewed(Some(Timestamp::from_secs(1_799_999_990)));
    c.bench_function("all_kube_checkers_one_node", |b| {
        b.iter(|| {
            let n = black_box(&node);
            black_box(ready.evaluate(n));
            black_box(disk.evaluate_at(n, now));
            black_box(memory.evaluate_at(n, now));
            black_box(pid.evaluate_at(n, now));
            black_box(GpuChecker::evaluate(n));
            black_box(CiliumChecker::evaluate(n));
            black_box(lease.evaluate_at(renewed, now));
            black_box(classify(n));
            black_box(node_facts(n));
        });
    });
    c.bench_function("node_view_from_full_node", |b| {
        b.iter(|| black_box(NodeView::from_node_in(black_box(&full), &pool)));
    });
}

criterion_group!(benches, bench_checks);
criterion_main!(benches);
