//! Preemption from C: the handler that requests a save on every manager.

use super::{ckpt_status, guard};

/// Installs a handler for signal `signum` (SIGTERM for most schedulers) that
/// makes the next save of every manager, open now or later, go ahead whatever
/// its intervals say, and makes `ckpt_preemption_requested()` true. A handler
/// installed before for that signal is called after ours (unless it was the
/// default action or "ignore"): the signal no longer ends the process, so the
/// trainer saves and exits. Installing it again for the same signal does
/// nothing.
///
/// Ownership: nothing is passed.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_INVALID_ARGUMENT (not a signal number, or SIGKILL,
/// SIGSTOP, SIGABRT or a fault signal such as SIGSEGV), CKPT_STATUS_IO_ERROR
/// (sigaction failed).
/// Threads: any thread; the handler runs on whichever thread the signal is
/// delivered to, and only increments an atomic counter.
/// Callbacks: none run.
#[no_mangle]
pub extern "C" fn ckpt_install_preemption_handler(signum: i32) -> ckpt_status {
    guard(|| Ok(crate::install_preemption_handler(signum)?))
}

/// Whether a signal handled by `ckpt_install_preemption_handler` has arrived:
/// the trainer should save (the save goes ahead) and stop.
///
/// Ownership: nothing is passed.
/// Returns: true after the first such signal, false before.
/// Errors: none.
/// Threads: any thread, and signal handlers (async-signal-safe).
/// Callbacks: none run.
#[no_mangle]
pub extern "C" fn ckpt_preemption_requested() -> bool {
    crate::preemption_requested()
}
