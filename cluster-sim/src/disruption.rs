//! Disruption budgets: whether the Eviction API may take a pod, as the API
//! server decides it.

use std::sync::Arc;

use serde_json::Value;

use crate::error::ApiError;
use crate::resource::Kind;
use crate::selector::Selectors;
use crate::store::{Obj, Store};

/// Deletes pod `ns/name` unless a PodDisruptionBudget selecting it forbids
/// (429, naming the budget); returns the deleted pod.
pub(crate) fn evict(store: &mut Store, ns: &str, name: &str) -> Result<Arc<Obj>, ApiError> {
    let pod = store.get(Kind::Pod, ns, name).ok_or_else(|| ApiError::not_found("pods", name))?;
    let pod_ready = is_ready(&pod.value());
    for pdb in store.matching(Kind::PodDisruptionBudget, Some(ns), &Selectors::default()) {
        let v = pdb.value();
        // No selector selects no pod; an empty one every pod of the
        // namespace. One the simulator cannot read (the API server would
        // have refused the budget) is skipped, as before, and logged.
        let sel = match Selectors::from_label_selector(v["spec"].get("selector")) {
            Ok(Some(sel)) => sel,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(namespace = ns, budget = %pdb.name, error = %e.message, "skipping a disruption budget whose selector cannot be read");
                continue;
            }
        };
        if !sel.matches(&pod.labels) {
            continue;
        }
        let matching = store.matching(Kind::Pod, Some(ns), &sel);
        let expected = i128::try_from(matching.len()).unwrap_or(i128::MAX);
        let healthy = i128::try_from(matching.iter().filter(|p| is_ready(&p.value())).count()).unwrap_or(i128::MAX);
        let desired = if let Some(max) = v["spec"].get("maxUnavailable").and_then(|m| int_or_percent(m, expected)) {
            expected - max
        } else {
            v["spec"].get("minAvailable").and_then(|m| int_or_percent(m, expected)).unwrap_or_default()
        }
        .max(0);
        // A ready pod may go only if the rest stay at or above the budget; a
        // pod that is not ready may go while the budget is met (IfHealthyBudget).
        let allowed = if pod_ready { healthy - desired > 0 } else { healthy >= desired };
        if !allowed {
            return Err(ApiError::disruption_budget(&pdb.name));
        }
    }
    store.delete(Kind::Pod, ns, name, None)
}

fn int_or_percent(v: &Value, total: i128) -> Option<i128> {
    match v {
        Value::Number(n) => n.as_i64().map(i128::from),
        Value::String(s) => {
            let pct: i128 = s.strip_suffix('%')?.parse().ok()?;
            // Kubernetes rounds percentages up for both minAvailable and maxUnavailable.
            Some((total.checked_mul(pct)? + 99).div_euclid(100))
        }
        _ => None,
    }
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}
