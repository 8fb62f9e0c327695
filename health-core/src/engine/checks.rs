//! Running the checkers of one evaluation.

#[allow(clippy::wildcard_imports)]
use super::*;

impl<T: Target + Clone + 'static> Engine<T> {
    /// Runs every checker on every target into `outcomes` (row-major); a
    /// validation probe only on the targets `verifying` marks (the others
    /// get a skip). A panicking checker is a failing check with reason
    /// `CheckPanicked`.
    pub(super) async fn run_checks(
        shared: &Shared<T>,
        targets: &[T],
        slots: &[Option<usize>],
        verifying: &[bool],
        outcomes: &mut Vec<CheckOutcome>,
        errs: &mut Vec<bool>,
    ) {
        let nc = shared.checkers.len();
        let ctx = crate::checker::CheckContext::at(shared.clock.now());
        let ctx = &ctx;
        outcomes.clear();
        outcomes.resize(targets.len() * nc, CheckOutcome::Pass);
        errs.clear();
        errs.resize(targets.len() * nc, false);
        let mut pending: Vec<(usize, usize)> = Vec::new();
        for (ti, t) in targets.iter().enumerate() {
            if slots[ti].is_none() {
                continue;
            }
            for (ci, c) in shared.checkers.iter().enumerate() {
                let i = ti * nc + ci;
                if shared.validation[ci] && !verifying.get(ti).copied().unwrap_or(false) {
                    outcomes[i] = CheckOutcome::skip("NotVerifying");
                    continue;
                }
                match std::panic::catch_unwind(AssertUnwindSafe(|| c.check_sync(t, ctx))) {
                    Ok(Some(r)) => (outcomes[i], errs[i]) = to_outcome(r),
                    Ok(None) => pending.push((ti, ci)),
                    Err(p) => (outcomes[i], errs[i]) = (panicked(c.name(), t.name(), p.as_ref()), true),
                }
            }
        }
        if pending.is_empty() {
            return;
        }
        let timeout = shared.config.check_timeout;
        let results: Vec<(usize, (CheckOutcome, bool))> = stream::iter(pending)
            .map(|(ti, ci)| {
                let checker = &shared.checkers[ci];
                let target = &targets[ti];
                async move {
                    let check = AssertUnwindSafe(checker.check(target, ctx)).catch_unwind();
                    let outcome = match tokio::time::timeout(timeout, check).await {
                        Ok(Ok(r)) => to_outcome(r),
                        Ok(Err(p)) => (panicked(checker.name(), target.name(), p.as_ref()), true),
                        Err(_) => {
                            (CheckOutcome::fail_with("CheckTimeout", format!("no answer within {timeout:?}")), true)
                        }
                    };
                    (ti * nc + ci, outcome)
                }
            })
            .buffer_unordered(shared.config.check_concurrency)
            .collect()
            .await;
        for (i, (o, e)) in results {
            outcomes[i] = o;
            errs[i] = e;
        }
    }
}

/// A checker's result as an outcome, and whether the checker erred.
pub(super) fn to_outcome(r: crate::checker::CheckResult) -> (CheckOutcome, bool) {
    match r {
        Ok(o) => (o, false),
        Err(e) => (CheckOutcome::fail_with("CheckError", e.to_string()), true),
    }
}
