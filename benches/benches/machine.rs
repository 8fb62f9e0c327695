//! One machine step on a healthy node (target: median <= 250 ns, no allocation).

use std::alloc::System;
use std::hint::black_box;

use benches::StepFixture;
use criterion::{Criterion, criterion_group, criterion_main};
use health_core::machine::step;
use health_core::{Budget, Observation, Phase, Policy};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn bench_step(c: &mut Criterion) {
    let fx = StepFixture::default();
    let checks = fx.checks();
    let obs = Observation { checks: &checks, facts: health_core::NodeFacts::default() };
    let policy = Policy::default();
    let budget = Budget::new(100);

    // Allocation count of the Healthy -> Healthy step, printed with the timings.
    let mut record = Some(fx.record.clone());
    let region = Region::new(GLOBAL);
    for _ in 0..10_000 {
        let d = step(record.take().unwrap_or_default(), &obs, &policy, &budget, fx.now);
        record = Some(d.record);
    }
    let stats = region.change();
    println!("healthy step: {} allocations in 10000 steps", stats.allocations + stats.reallocations);
    assert_eq!(record.map(|r| r.phase), Some(Phase::Healthy));

    c.bench_function("machine_step_healthy", |b| {
        let mut record = Some(fx.record.clone());
        b.iter(|| {
            let d = step(black_box(record.take().unwrap_or_default()), black_box(&obs), &policy, &budget, fx.now);
            record = Some(d.record);
        });
    });
}

criterion_group!(benches, bench_step);
criterion_main!(benches);
