//! One engine pass over 65,536 healthy in-memory targets with 5 synchronous
//! checkers, on one core (target: at most 50 ms).

use std::time::Duration;

use benches::{engine_with_five_checkers, fleet};
use criterion::{Criterion, criterion_group, criterion_main};

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

criterion_group!(benches, bench_engine);
criterion_main!(benches);
