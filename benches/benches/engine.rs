//! One engine pass over 65,536 healthy in-memory targets with 5 synchronous
//! checkers, on one core (target: at most 50 ms); and one changed node
//! among 65,536 evaluated through the runtime, from the update to the
//! decision (target: median at most 50 µs).

use std::time::Duration;

use benches::{engine_with_five_checkers, fleet};
use criterion::{Criterion, criterion_group, criterion_main};
use health_core::{Runtime, RuntimeEvent, TargetUpdate};

const NODES: usize = 65_536;

fn bench_engine(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
    let targets = fleet(NODES);
    let mut engine = engine_with_five_checkers();
    // The first pass creates every record; the benchmark measures the steady state.
    let first = rt.block_on(engine.run_pass(&targets));
    assert_eq!(first.transitions.len(), NODES);
    let mut group = c.benchmark_group("engine");
    group.sample_size(20).measurement_time(Duration::from_secs(10));
    group.bench_function("pass_65536_healthy_5_checkers", |b| {
        b.iter(|| {
            let r = rt.block_on(engine.run_pass(&targets));
            assert_eq!(r.evaluated, NODES);
        });
    });
    group.finish();
}

fn bench_runtime_event(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
    let targets = fleet(NODES);
    let engine = engine_with_five_checkers();
    let (updates, rx) = tokio::sync::mpsc::unbounded_channel();
    let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
    let runtime = Runtime::new(engine).with_sink(move |e| {
        if let RuntimeEvent::Pass { report, .. } = e {
            let _ = done_tx.send(report.evaluated);
        }
    });
    let stream = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|u| (u, rx)) }));
    rt.spawn(runtime.run(stream, std::future::pending::<()>()));
    updates.send(TargetUpdate::Full(targets.clone())).expect("runtime alive");
    assert_eq!(rt.block_on(done.recv()), Some(NODES));
    let mut i = 0usize;
    let mut group = c.benchmark_group("runtime");
    group.sample_size(50).measurement_time(Duration::from_secs(5));
    group.bench_function("one_changed_node_of_65536_event_to_decision", |b| {
        b.iter(|| {
            i = (i + 7919) % NODES;
            let mut n = targets[i].clone();
            n.disk_pct = if n.disk_pct == 40 { 41 } else { 40 };
            updates.send(TargetUpdate::Upsert(n)).expect("runtime alive");
            assert_eq!(rt.block_on(done.recv()), Some(1));
        });
    });
    group.finish();
}

criterion_group!(benches, bench_engine, bench_runtime_event);
criterion_main!(benches);
