//! The simulated Civo account: instances, pools, injected API faults and
//! the log of calls, and what a reboot or a deletion does to the cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::cluster::Cluster;
use crate::resource::Kind;
use crate::selector::Selectors;

/// A fault of the simulated Civo API for its next calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CivoFault {
    /// Calls to let through untouched before this fault applies.
    pub skip: u32,
    /// HTTP status to answer with (0: answer normally after the delay).
    pub status: u16,
    /// Delay before answering.
    pub delay: Duration,
    /// How many calls it affects.
    pub calls: u32,
    /// A `Retry-After` header (seconds) on the fault's answers.
    pub retry_after: Option<u32>,
}

/// One call the simulated Civo API received.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CivoCall {
    /// HTTP method.
    pub method: String,
    /// Path with query.
    pub path: String,
    /// Status answered.
    pub status: u16,
}

/// A simulated Civo instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Instance {
    /// Instance id.
    pub id: String,
    /// Hostname (the node name).
    pub hostname: String,
    /// Pool id.
    pub pool: String,
    /// Instance size.
    pub size: String,
    /// `ACTIVE`, `REBOOTING`, ...
    pub status: String,
    /// Public IP.
    pub public_ip: String,
    /// Private IP.
    pub private_ip: String,
    /// Node index (for addresses).
    #[serde(skip)]
    pub index: u32,
    /// GPUs.
    #[serde(skip)]
    pub gpus: u32,
}

#[derive(Default)]
pub(crate) struct CivoState {
    pub(crate) instances: BTreeMap<String, Instance>,
    pub(crate) pools: Vec<(String, String)>,
    pub(crate) faults: Vec<CivoFault>,
    pub(crate) calls: Vec<CivoCall>,
}

pub(crate) fn instance_id(n: u32) -> String {
    format!("0f9c7a52-3b1e-4d6a-9f20-{n:012x}")
}

/// The pool id of standard pool `p`.
#[must_use]
pub fn pool_id(p: u32) -> String {
    format!("5a1c{p:04x}-9e2b-4f7d-8c3a-1b6e0d9f2a47")
}

/// The pool id of the GPU pool.
#[must_use]
pub fn gpu_pool_id() -> String {
    "9d4e7f10-6c2a-4b8e-a1f3-5e0c7b2d9a61".into()
}

impl Cluster {
    /// Reboots the node behind an instance: NotReady now, then (after the
    /// reboot time) healthy if the reboot fixes it, else its faults again.
    pub(crate) fn reboot_instance(&self, id: &str) -> bool {
        let Some(host) = self.inner.civo.lock().instances.get_mut(id).map(|i| {
            i.status = "REBOOTING".into();
            i.hostname.clone()
        }) else {
            return false;
        };
        let b = self.reboot_behaviour(&host);
        let generation = {
            let mut st = self.inner.nodes.lock();
            let g = st.reboots.entry(host.clone()).or_default();
            *g += 1;
            *g
        };
        let faults = self.faults(&host);
        let _ = self.render_with(&host, &faults, true);
        let me = self.clone();
        let id = id.to_owned();
        self.spawn(async move {
            tokio::time::sleep(b.takes).await;
            let cleared = {
                let mut st = me.inner.nodes.lock();
                if st.reboots.get(&host) != Some(&generation) {
                    // A later reboot is still under way; it finishes the job.
                    return;
                }
                if b.fixes { st.faults.remove(&host) } else { None }
            };
            if let Some(i) = me.inner.civo.lock().instances.get_mut(&id) {
                i.status = "ACTIVE".into();
            }
            let _ = me.render(&host);
            if let (Some(after), Some(faults)) = (b.relapse_after, cleared) {
                tokio::time::sleep(after).await;
                if me.inner.nodes.lock().reboots.get(&host) != Some(&generation) {
                    return;
                }
                tracing::info!(node = %host, ?faults, "the node's faults are back after its reboot");
                for f in faults {
                    let _ = me.inject(&host, f);
                }
            }
        });
        true
    }

    /// Deletes an instance: its node (and pods and lease) go, and after the
    /// replacement time a new node joins the same pool.
    pub(crate) fn delete_instance(&self, id: &str) -> Option<Instance> {
        let inst = self.inner.civo.lock().instances.remove(id)?;
        {
            let mut store = self.inner.store.lock();
            let _ = store.delete(Kind::Node, "", &inst.hostname, None);
            let _ = store.delete(Kind::Lease, "kube-node-lease", &inst.hostname, None);
            for p in store.matching(Kind::Pod, None, &Selectors::on_node(&inst.hostname)) {
                let _ = store.delete(Kind::Pod, &p.namespace.clone(), &p.name.clone(), None);
            }
        }
        self.inner.nodes.lock().faults.remove(&inst.hostname);
        let me = self.clone();
        let (pool, gpus) = (inst.pool.clone(), inst.gpus);
        let takes = self.inner.config.replace_takes;
        self.spawn(async move {
            tokio::time::sleep(takes).await;
            me.add_node(&pool, gpus);
        });
        Some(inst)
    }

    /// Makes the next `fault.calls` Civo API calls fail (or stall) as described.
    pub fn civo_fail_next(&self, fault: CivoFault) {
        self.inner.civo.lock().faults.push(fault);
    }

    /// Every Civo API call received so far.
    #[must_use]
    pub fn civo_calls(&self) -> Vec<CivoCall> {
        self.inner.civo.lock().calls.clone()
    }

    /// Adds a Civo instance without a node (e.g. a duplicate hostname left by
    /// a botched rebuild).
    pub fn add_civo_instance(&self, instance: Instance) {
        self.inner.civo.lock().instances.insert(instance.id.clone(), instance);
    }

    /// Every Civo instance.
    #[must_use]
    pub fn instances(&self) -> Vec<Instance> {
        self.inner.civo.lock().instances.values().cloned().collect()
    }

    /// The injected fault the next Civo call meets, if any (a fault
    /// skipping calls lets them through first; each call uses one).
    pub(crate) fn take_civo_fault(&self) -> Option<CivoFault> {
        let mut civo = self.inner.civo.lock();
        civo.faults.retain(|f| f.calls > 0);
        let f = civo.faults.first_mut()?;
        if f.skip > 0 {
            f.skip -= 1;
            return None;
        }
        let out = *f;
        f.calls = f.calls.saturating_sub(1);
        if f.calls == 0 {
            civo.faults.remove(0);
        }
        Some(out)
    }

    /// The node pools: `(id, size)`.
    pub(crate) fn civo_pools(&self) -> Vec<(String, String)> {
        self.inner.civo.lock().pools.clone()
    }

    /// Whether instance `id` is in pool `pool`.
    pub(crate) fn instance_in_pool(&self, id: &str, pool: &str) -> bool {
        self.inner.civo.lock().instances.get(id).is_some_and(|i| i.pool == pool)
    }

    /// Logs a call on arrival; returns its index for [`Self::answer_civo_call`].
    pub(crate) fn log_civo_call(&self, call: CivoCall) -> usize {
        let mut civo = self.inner.civo.lock();
        civo.calls.push(call);
        civo.calls.len() - 1
    }

    /// Records the status a logged call was answered with.
    pub(crate) fn answer_civo_call(&self, index: usize, status: u16) {
        if let Some(call) = self.inner.civo.lock().calls.get_mut(index) {
            call.status = status;
        }
    }
}
