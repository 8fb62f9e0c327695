//! Embedding the recovery machine in a non-Kubernetes controller: a fleet of
//! virtual machines on a hypervisor, with its own checkers and executor.
//!
//! The hypervisor is simulated in memory, and the example runs on a Tokio
//! runtime with paused time, so two hours pass at once: the crate's
//! [`Runtime`] sleeps until the engine's deadlines exactly as it would in
//! production, and a poller feeds it the hypervisor's inventory every
//! minute. Run with `cargo run -p examples --example vm_fleet`.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use health_core::{
    Action, CheckContext, CheckError, CheckOutcome, CheckResult, Engine, ExecError, Executor, FnChecker, Gates,
    HealthChecker, Limit, MemoryStore, NodeClass, NodeFacts, Observer, Phase, Policy, Runtime, StormEvent, Target,
    TargetUpdate, Timestamp, TokioClock, TransitionEvent,
};
use parking_lot::Mutex;

/// One virtual machine as the hypervisor inventory reports it.
#[derive(Clone, Debug)]
struct Vm {
    name: String,
    /// The guest agent answers its health endpoint.
    agent_up: bool,
    /// Root filesystem use in percent.
    disk_pct: u8,
    /// The hypervisor can no longer reach the VM at all (API errors).
    unreachable: bool,
    /// A power cycle fixes the guest.
    cycle_fixes: bool,
}

impl Target for Vm {
    fn name(&self) -> &str {
        &self.name
    }
    fn facts(&self) -> NodeFacts {
        NodeFacts { class: NodeClass::Standard, ..NodeFacts::default() }
    }
}

/// The simulated hypervisor: the inventory plus the power-cycle API.
#[derive(Default)]
struct Hypervisor {
    vms: Mutex<BTreeMap<String, Vm>>,
    calls: Mutex<Vec<String>>,
}

impl Hypervisor {
    fn inventory(&self) -> Vec<Vm> {
        self.vms.lock().values().cloned().collect()
    }

    fn set(&self, name: &str, f: impl FnOnce(&mut Vm)) {
        if let Some(vm) = self.vms.lock().get_mut(name) {
            f(vm);
        }
    }
}

/// An async probe of the guest agent (in a real controller: an HTTP GET).
struct GuestAgentProbe {
    hv: Arc<Hypervisor>,
}

#[async_trait]
impl HealthChecker<Vm> for GuestAgentProbe {
    fn name(&self) -> &str {
        "GuestAgent"
    }
    fn threshold(&self) -> Duration {
        Duration::from_secs(2 * 60)
    }
    async fn check(&self, vm: &Vm, _ctx: &CheckContext) -> CheckResult {
        let live = self.hv.vms.lock().get(&vm.name).cloned();
        match live {
            None => Err(CheckError::new("VM vanished from the inventory")),
            Some(v) if v.agent_up => Ok(CheckOutcome::Pass),
            Some(_) => Ok(CheckOutcome::fail_with("AgentDown", "GET /healthz: connection refused")),
        }
    }
}

/// Power-cycles VMs through the hypervisor API.
struct PowerCycle {
    hv: Arc<Hypervisor>,
}

#[async_trait]
impl Executor<Vm> for PowerCycle {
    async fn execute(&self, action: Action, vm: &Vm) -> Result<(), ExecError> {
        match action {
            Action::Reboot => {
                self.hv.calls.lock().push(format!("power-cycle {}", vm.name));
                let mut vms = self.hv.vms.lock();
                let Some(live) = vms.get_mut(&vm.name) else {
                    return Err(ExecError::failed(action, "no such VM"));
                };
                if live.unreachable {
                    return Err(ExecError::failed(action, "hypervisor API: 503 Service Unavailable"));
                }
                if live.cycle_fixes {
                    live.agent_up = true;
                }
                Ok(())
            }
            // This controller cannot drain or replace VMs.
            other => Err(ExecError::Unsupported { action: other }),
        }
    }
}

/// Prints every phase transition as it happens.
struct Printer {
    start: Timestamp,
}

impl Observer<Vm> for Printer {
    fn on_storm_guard(&self, e: &StormEvent) {
        let state = if e.active { "holds new remediations" } else { "lifted" };
        println!("storm guard {state}: {} of {} VMs unhealthy (limit {})", e.unhealthy, e.total, e.limit);
    }

    fn on_transition(&self, _vm: &Vm, e: &TransitionEvent<'_>) {
        if e.from == Phase::Unknown && e.to == Phase::Healthy {
            return;
        }
        let t = e.at.saturating_since(self.start).as_secs() / 60;
        let why: Vec<_> = e.record.failing.iter().map(|f| format!("{}={}", f.checker, f.reason)).collect();
        println!("t+{t:>3}m  {:<8} {:>13} -> {:<13} {}", e.node, e.from, e.to, why.join(" "));
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let hv = Arc::new(Hypervisor::default());
    for i in 0..8 {
        let name = format!("vm-{i}");
        hv.vms
            .lock()
            .insert(name.clone(), Vm { name, agent_up: true, disk_pct: 40, unreachable: false, cycle_fixes: true });
    }
    // vm-2: the guest hangs, a power cycle fixes it.
    hv.set("vm-2", |v| v.agent_up = false);
    // vm-5: the guest hangs and the hypervisor cannot reach it either.
    hv.set("vm-5", |v| {
        v.agent_up = false;
        v.unreachable = true;
    });
    // vm-6: the disk is full; power cycles do not help.
    hv.set("vm-6", |v| {
        v.disk_pct = 97;
        v.cycle_fixes = false;
    });

    let start = Timestamp::from_secs(1_700_000_000);
    let clock = TokioClock::starting_at(start);
    let policy = Policy::default()
        .with_monitor_only(false)
        .with_reboot_waits(Duration::from_secs(5 * 60), Duration::from_secs(5 * 60))
        .with_max_reboot_retries(2)
        // A small fleet: tolerate up to half of it failing before the storm guard trips.
        .with_gates(Gates { max_unhealthy: Limit::percent(50), ..Gates::default() });
    let disk = FnChecker::new("DiskFull", Duration::from_secs(10 * 60), |vm: &Vm| {
        if vm.disk_pct >= 95 { CheckOutcome::fail("DiskFull") } else { CheckOutcome::Pass }
    });
    let engine = Engine::builder(Arc::new(MemoryStore::new()), Arc::new(PowerCycle { hv: Arc::clone(&hv) }))
        .policy(policy)
        .checker(GuestAgentProbe { hv: Arc::clone(&hv) })
        .checker(disk)
        .observer(Arc::new(Printer { start }))
        .clock(Arc::new(clock))
        .build()?;

    println!("evaluating 8 VMs for 2 hours of simulated time");
    // The controller polls the hypervisor's inventory once a minute.
    let (updates, rx) = tokio::sync::mpsc::channel(4);
    let poll_hv = Arc::clone(&hv);
    let poller = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            if updates.send(TargetUpdate::Full(poll_hv.inventory())).await.is_err() {
                return;
            }
        }
    });
    let two_hours = tokio::time::sleep(Duration::from_secs(2 * 3600));
    let stopped = Runtime::new(engine).run(health_core::runtime::updates_from(rx), two_hours).await;
    poller.abort();
    let engine = stopped.engine;

    println!("\n{:<8} {:<10} {:>7} {:>8}", "VM", "PHASE", "REBOOTS", "FAILURES");
    let mut phases = BTreeMap::new();
    let mut records: Vec<_> = engine.records().collect();
    records.sort_by_key(|(name, _)| *name);
    for (name, rec) in records {
        println!("{name:<8} {:<10} {:>7} {:>8}", rec.phase.as_str(), rec.reboot_count, rec.action_failures);
        phases.insert(name.to_owned(), rec.phase);
    }
    println!("\nhypervisor calls: {}", hv.calls.lock().join(", "));

    // The example doubles as a smoke test in CI.
    let expect = [("vm-2", Phase::Healthy), ("vm-5", Phase::Failed), ("vm-6", Phase::Failed), ("vm-0", Phase::Healthy)];
    for (vm, want) in expect {
        if phases.get(vm) != Some(&want) {
            return Err(format!("{vm}: expected {want}, got {:?}", phases.get(vm)).into());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vm_fleet: {e}");
            ExitCode::FAILURE
        }
    }
}
