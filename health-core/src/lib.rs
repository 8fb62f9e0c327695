//! The decision core of node-health: a thresholded recovery state machine
//! for anything that can be checked and remediated (Kubernetes nodes, VMs,
//! devices).
//!
//! The crate has no Kubernetes, HTTP or exporter dependency. It provides:
//!
//! * the traits the rest of the toolkit plugs into: [`HealthChecker`],
//!   [`Executor`], [`StateStore`] and [`Observer`];
//! * the sans-IO machine ([`machine::step`], [`machine::apply_outcome`]):
//!   Healthy → Unhealthy → WaitingReboot → (Draining → WaitingReplace) →
//!   Failed, with per-checker thresholds, reboot waits per node class,
//!   retry and failure limits with back-off, and safety gates (storm guard,
//!   in-flight limit, start-up grace, deletion, opt-out, pause, minimum
//!   interval, failure domains) that hold actions back without touching
//!   counters;
//! * the async [`Engine`] that runs checkers with bounded concurrency and
//!   timeouts, persists decisions with compare-and-swap before acting,
//!   performs actions, notifies observers and emits metrics;
//! * [`HealthManager`], the liveness/readiness registry of the agent's own
//!   components, and [`MemoryStore`], an in-memory [`StateStore`].
//!
//! # Layout
//!
//! | module | what |
//! |---|---|
//! | [`domain`] | phases, classes, outcomes, actions, the persisted [`NodeRecord`] |
//! | [`policy`] | [`Policy`] and its validation |
//! | [`machine`] | the pure decision function and the safety gates |
//! | [`engine`] | evaluation, persistence (CAS) and actions run in tasks |
//! | [`runtime`] | [`Runtime`], the driver loop: target updates, deadlines, controls, completions, shutdown |
//! | [`fence`] | [`LeaseFence`]: when a lease-backed claim counts as lost |
//! | [`checker`], [`executor`], [`store`], [`observer`] | the plug-in traits |
//! | [`metrics`] | metric names and series removal |
//! | [`component`] | component health |
//! | [`time`] | timestamps and clocks |
//! | [`tape`] | recording what the engine sees and decides, and replaying it under another policy |
//! | [`retry`] | repeating a call after a transient failure: exponential delays with a maximum, jitter, a total limit, `Retry-After` |
//! | `process` (feature `process`) | the program runner of the command checker and executor: process groups killed whole at the timeout, capped output, a clean environment |
//!
//! # Runtime needs and panics
//!
//! The machine ([`machine`]) is pure and needs nothing. The engine and the
//! runtime need a Tokio runtime with timers enabled (`rt` and `time`;
//! current-thread is enough): actions run in spawned tasks and checks and
//! store calls are bounded with `tokio::time::timeout`. The engine does not
//! panic on bad input; a panicking checker, executor or observer is
//! contained (a checker's panic is its error, an executor's an action of
//! unknown outcome, an observer's a log line). [`Policy::validate`] and the
//! builder reject settings instead of panicking later.
//!
//! # In libraries and controllers
//!
//! Implement a checker and an executor for your target type, build an
//! [`Engine`] and hand it to a [`Runtime`] with a stream of
//! [`TargetUpdate`]s (see [`runtime`]); simulations and tests can also call
//! [`Engine::run_pass`] themselves, jumping a clock to
//! [`Engine::next_deadline`]. The engine needs a Tokio runtime with timers
//! (actions run in spawned tasks):
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use async_trait::async_trait;
//! use health_core::*;
//!
//! #[derive(Clone)]
//! struct Vm { name: String, responding: bool }
//! impl Target for Vm {
//!     fn name(&self) -> &str { &self.name }
//!     fn facts(&self) -> NodeFacts { NodeFacts::default() }
//! }
//!
//! struct PowerCycle;
//! #[async_trait]
//! impl Executor<Vm> for PowerCycle {
//!     async fn execute(&self, action: Action, vm: &Vm) -> Result<(), ExecError> {
//!         println!("{action} {}", vm.name);
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), EngineError> {
//! let clock = ManualClock::new(Timestamp::from_secs(1_000_000));
//! let ping = FnChecker::new("Ping", Duration::from_secs(60), |vm: &Vm| {
//!     if vm.responding { CheckOutcome::Pass } else { CheckOutcome::fail("NoAnswer") }
//! });
//! let mut engine = Engine::builder(Arc::new(MemoryStore::new()), Arc::new(PowerCycle))
//!     .policy(Policy::default().with_monitor_only(false))
//!     .checker(ping)
//!     .clock(Arc::new(clock.clone()))
//!     .build()?;
//!
//! let vms = [Vm { name: "vm-1".into(), responding: false }];
//! let _ = engine.run_pass(&vms).await;               // Healthy? No: Unhealthy.
//! assert_eq!(engine.record("vm-1").unwrap().phase, Phase::Unhealthy);
//! clock.advance_to(engine.next_deadline().unwrap()); // the threshold expires
//! let report = engine.run_pass(&vms).await;          // reboot
//! assert_eq!(report.actions[0].action, Action::Reboot);
//! assert_eq!(engine.record("vm-1").unwrap().phase, Phase::WaitingReboot);
//! # Ok(()) }
//! ```
//!
//! # In executables
//!
//! The binary installs a metrics exporter before building the engine (the
//! engine registers its series with whatever recorder is installed), gives
//! it a durable [`StateStore`] and a [`SeriesRemover`] so a departed node's
//! series disappear, and serves [`HealthManager`] reports on `/healthz` and
//! `/readyz`.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod checker;
pub mod component;
pub mod domain;
pub mod engine;
pub mod executor;
pub mod fence;
pub mod machine;
pub mod metrics;
pub mod observer;
pub mod policy;
#[cfg(feature = "process")]
pub mod process;
pub mod retry;
pub mod runtime;
pub mod store;
pub mod tape;
pub mod target;
pub mod time;

pub use checker::{CheckContext, CheckError, CheckResult, FnChecker, HealthChecker, Validation};
pub use component::{ComponentState, ComponentStatus, HealthManager, HealthReport};
pub use domain::{
    Action, CheckOutcome, FailingCheck, Mode, NodeClass, NodeFacts, NodeRecord, Phase, RECORD_FORMAT_VERSION, Reason,
    Repair, RepairNameError, RepairTry,
};
pub use engine::{
    ActionRecord, Controls, Engine, EngineBuilder, EngineConfig, EngineError, NodeView, PassReport, Target,
};
pub use executor::{ExecError, Executor};
pub use fence::LeaseFence;
pub use machine::{ActionOutcome, Budget, Check, Decision, DomainCount, Hold, HoldReason, Observation, PhaseChange};
pub use metrics::{MetricNames, SeriesKind, SeriesRemover};
pub use observer::{ActionEvent, DomainStatus, DomainStormEvent, HoldEvent, Observer, StormEvent, TransitionEvent};
pub use policy::{
    Backoff, DEFAULT_DOMAIN_LABELS, DEFAULT_LADDER, Domains, Escalation, Gates, Ladder, Limit, MAX_DOMAIN_LABELS,
    Policy, PolicyError, RepairSpec, Rung,
};
pub use runtime::{Inspector, PassCause, Runtime, RuntimeEvent, Stopped, TargetUpdate};
pub use store::{MemoryStore, StateStore, StoreError, Stored, TimedStore, Version};
pub use time::{Clock, ManualClock, SystemClock, Timestamp, TokioClock};

#[cfg(test)]
mod send_sync {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn key_types_are_send_and_sync() {
        assert_send_sync::<NodeRecord>();
        assert_send_sync::<Policy>();
        assert_send_sync::<MemoryStore>();
        assert_send_sync::<HealthManager>();
        assert_send_sync::<Controls>();
        assert_send_sync::<StoreError>();
        assert_send_sync::<ExecError>();
        assert_send_sync::<std::sync::Arc<dyn StateStore>>();
        assert_send_sync::<std::sync::Arc<dyn HealthChecker<str>>>();
        assert_send_sync::<std::sync::Arc<dyn Executor<str>>>();
    }

    #[test]
    fn engine_futures_are_send() {
        fn assert_send<F: Send>(_: F) {}
        #[derive(Clone)]
        struct T;
        impl Target for T {
            fn name(&self) -> &str {
                "t"
            }
            fn facts(&self) -> NodeFacts {
                NodeFacts::default()
            }
        }
        struct E;
        #[async_trait::async_trait]
        impl Executor<T> for E {
            async fn execute(&self, _: Action, _: &T) -> Result<(), ExecError> {
                Ok(())
            }
        }
        let mut engine = Engine::<T>::builder(std::sync::Arc::new(MemoryStore::new()), std::sync::Arc::new(E))
            .build()
            .expect("default engine builds");
        assert_send(engine.run_pass(&[]));
    }
}
