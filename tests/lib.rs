//! A simulation harness for black-box tests: a fleet of simulated machines
//! with injectable faults, an executor that "reboots" them, and a driver that
//! jumps a [`ManualClock`] straight to the engine's next deadline (no sleeps).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use health_core::{
    Action, CheckOutcome, Clock, Engine, ExecError, Executor, FnChecker, ManualClock, MemoryStore, NodeClass,
    NodeFacts, Observer, Phase, Policy, StateStore, Target, Timestamp, TransitionEvent,
};
use parking_lot::Mutex;

/// How a simulated machine is broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Healthy.
    None,
    /// Broken; a reboot fixes it.
    FixedByReboot,
    /// Broken; only a replacement helps.
    Permanent,
}

/// A simulated machine.
#[derive(Clone, Debug)]
pub struct Machine {
    /// Its name.
    pub name: String,
    /// Its class.
    pub class: NodeClass,
    /// Its fault.
    pub fault: Fault,
}

impl Target for Machine {
    fn name(&self) -> &str {
        &self.name
    }
    fn facts(&self) -> NodeFacts {
        NodeFacts { class: self.class, ..NodeFacts::default() }
    }
}

/// The simulated fleet: machines plus a log of what the executor did.
#[derive(Default)]
pub struct Fleet {
    machines: Mutex<Vec<Machine>>,
    /// Every action performed, with the machine and time.
    pub log: Mutex<Vec<(String, Action, Timestamp)>>,
    /// Every phase transition seen.
    pub transitions: Mutex<Vec<(String, Phase, Phase)>>,
    clock: ManualClock,
    /// Executor calls that fail before succeeding, per machine.
    pub failing_calls: Mutex<HashMap<String, u32>>,
}

impl Fleet {
    /// A fleet of `standard` standard and `gpu` GPU machines, all healthy.
    #[must_use]
    pub fn new(standard: usize, gpu: usize, clock: ManualClock) -> Arc<Self> {
        let mut machines: Vec<Machine> = (0..standard)
            .map(|i| Machine { name: format!("std-{i:03}"), class: NodeClass::Standard, fault: Fault::None })
            .collect();
        machines.extend((0..gpu).map(|i| Machine {
            name: format!("gpu-{i:03}"),
            class: NodeClass::Gpu,
            fault: Fault::None,
        }));
        Arc::new(Fleet { machines: Mutex::new(machines), clock, ..Fleet::default() })
    }

    /// Breaks a machine.
    pub fn inject(&self, name: &str, fault: Fault) {
        if let Some(m) = self.machines.lock().iter_mut().find(|m| m.name == name) {
            m.fault = fault;
        }
    }

    /// The machines as they are now.
    #[must_use]
    pub fn snapshot(&self) -> Vec<Machine> {
        self.machines.lock().clone()
    }

    /// Actions performed on `name`.
    #[must_use]
    pub fn actions_on(&self, name: &str) -> Vec<Action> {
        self.log.lock().iter().filter(|(n, ..)| n == name).map(|(_, a, _)| *a).collect()
    }
}

#[async_trait]
impl Executor<Machine> for Fleet {
    async fn execute(&self, action: Action, target: &Machine) -> Result<(), ExecError> {
        {
            let mut failing = self.failing_calls.lock();
            if let Some(n) = failing.get_mut(&target.name)
                && *n > 0
            {
                *n -= 1;
                return Err(ExecError::failed(action, "simulated API error"));
            }
        }
        self.log.lock().push((target.name.clone(), action, self.clock.now()));
        let mut machines = self.machines.lock();
        match action {
            Action::Reboot => {
                if let Some(m) = machines.iter_mut().find(|m| m.name == target.name)
                    && m.fault == Fault::FixedByReboot
                {
                    m.fault = Fault::None;
                }
            }
            Action::Replace => {
                // The pool replaces the machine with a fresh one under a new name.
                if let Some(m) = machines.iter_mut().find(|m| m.name == target.name) {
                    m.name = format!("{}-r", m.name);
                    m.fault = Fault::None;
                }
            }
            Action::Drain | Action::Uncordon | Action::Repair(_) => {}
        }
        Ok(())
    }
}

impl Observer<Machine> for Fleet {
    fn on_transition(&self, _target: &Machine, e: &TransitionEvent<'_>) {
        self.transitions.lock().push((e.node.to_owned(), e.from, e.to));
    }
}

/// Drives an engine over a fleet by jumping to each next deadline.
pub struct Sim {
    /// The fleet.
    pub fleet: Arc<Fleet>,
    /// The engine.
    pub engine: Engine<Machine>,
    /// The clock.
    pub clock: ManualClock,
}

impl Sim {
    /// A simulation with the policy over a fleet.
    ///
    /// # Panics
    ///
    /// When the policy is invalid.
    #[must_use]
    pub fn new(standard: usize, gpu: usize, policy: Policy, store: Arc<dyn StateStore>) -> Self {
        let clock = ManualClock::new(Timestamp::from_secs(1_700_000_000));
        let fleet = Fleet::new(standard, gpu, clock.clone());
        let engine = Engine::builder(store, Arc::clone(&fleet) as Arc<dyn Executor<Machine>>)
            .policy(policy)
            .checker(FnChecker::new("NodeReady", Duration::from_secs(300), |m: &Machine| match m.fault {
                Fault::None => CheckOutcome::Pass,
                _ => CheckOutcome::fail("KubeletNotReady"),
            }))
            .observer(Arc::clone(&fleet) as Arc<dyn Observer<Machine>>)
            .clock(Arc::new(clock.clone()))
            .build()
            .expect("valid policy");
        Sim { fleet, engine, clock }
    }

    /// A simulation with an in-memory store.
    #[must_use]
    pub fn in_memory(standard: usize, gpu: usize, policy: Policy) -> Self {
        Sim::new(standard, gpu, policy, Arc::new(MemoryStore::new()))
    }

    /// Runs passes, jumping to each deadline, until `horizon` has passed or
    /// nothing is pending. Returns the number of passes.
    pub async fn run_for(&mut self, horizon: Duration) -> usize {
        let end = self.clock.now() + horizon;
        let mut passes = 0;
        loop {
            let targets = self.fleet.snapshot();
            let _ = self.engine.run_pass(&targets).await;
            passes += 1;
            match self.engine.next_deadline() {
                Some(t) if t <= end => self.clock.advance_to(t.max(self.clock.now())),
                _ => break,
            }
            assert!(passes < 10_000, "the simulation does not converge");
        }
        self.clock.advance_to(end);
        passes
    }
}
