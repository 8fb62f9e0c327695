//! Panic containment: a panicking checker, executor or observer never
//! takes the engine down.

#[allow(clippy::wildcard_imports)]
use super::*;

/// The text of a panic payload.
pub(super) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic payload".to_owned())
}

/// Calls every observer, containing panics: a panicking observer is logged
/// and the engine goes on.
pub(super) fn notify<T: ?Sized>(
    observers: &[Arc<dyn Observer<T>>],
    what: &'static str,
    call: impl Fn(&dyn Observer<T>),
) {
    for o in observers {
        if let Err(p) = std::panic::catch_unwind(AssertUnwindSafe(|| call(o.as_ref()))) {
            tracing::error!(event = what, panic = %panic_message(p.as_ref()), "an observer panicked; the engine goes on");
        }
    }
}

pub(super) fn panicked(checker: &str, node: &str, payload: &(dyn std::any::Any + Send)) -> CheckOutcome {
    let message = panic_message(payload);
    tracing::error!(checker, node, panic = %message, "a checker panicked; counted as a failing check");
    CheckOutcome::fail_with("CheckPanicked", format!("the checker panicked: {message}"))
}
