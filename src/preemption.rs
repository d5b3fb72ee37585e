//! Preemption: a signal handler (for SIGTERM, say) that makes every
//! manager's next save go ahead whatever its intervals say, and tells the
//! trainer to stop after it.
//!
//! The handler only increments an atomic counter, which each manager
//! compares with the count it last saved for; nothing in it allocates,
//! locks or can panic. A handler that was installed before is called after
//! ours (chained), unless it was the default action or "ignore".

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::error::{Error, Result};

/// Preemption signals received by this process.
static SIGNALS: AtomicU64 = AtomicU64::new(0);

/// Signal numbers on Linux run from 1 to 64.
const SIGNAL_SLOTS: usize = 65;

/// The action our handler replaced, per signal, read by the handler to
/// chain; set once, before our handler is installed.
static PREVIOUS: [OnceLock<libc::sigaction>; SIGNAL_SLOTS] =
    [const { OnceLock::new() }; SIGNAL_SLOTS];

/// The number of preemption signals received so far.
pub fn signals_received() -> u64 {
    SIGNALS.load(Ordering::Acquire)
}

/// Whether a preemption signal has arrived: the trainer should save (its
/// next save goes ahead) and stop.
pub fn preemption_requested() -> bool {
    signals_received() > 0
}

extern "C" fn on_signal(
    signum: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    SIGNALS.fetch_add(1, Ordering::AcqRel);
    let Some(previous) = usize::try_from(signum)
        .ok()
        .and_then(|slot| PREVIOUS.get(slot))
        .and_then(OnceLock::get)
    else {
        return;
    };
    let handler = previous.sa_sigaction;
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        return;
    }
    if previous.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: installed with SA_SIGINFO, so it takes these arguments,
        // which the kernel gave us.
        let chained: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(handler) };
        chained(signum, info, context);
    } else {
        // SAFETY: a plain handler takes the signal number only.
        let chained: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
        chained(signum);
    }
}

/// Installs the preemption handler for `signum` (SIGTERM for most
/// schedulers; SIGUSR1 for some). Installing it again for the same signal
/// does nothing. Signals whose default action cannot be overridden, or that
/// report a fault in the running code, are refused.
pub fn install_preemption_handler(signum: i32) -> Result<()> {
    let refused = [
        libc::SIGKILL,
        libc::SIGSTOP,
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGFPE,
        libc::SIGILL,
        libc::SIGTRAP,
        libc::SIGSYS,
        libc::SIGABRT,
    ];
    let slot = usize::try_from(signum)
        .ok()
        .filter(|&slot| (1..SIGNAL_SLOTS).contains(&slot) && !refused.contains(&signum))
        .ok_or_else(|| {
            Error::invalid(format!(
                "signal {signum} cannot be a preemption signal (use SIGTERM, SIGUSR1, SIGUSR2, \
                 SIGINT or another signal a scheduler sends)"
            ))
        })?;
    static INSTALLING: Mutex<()> = Mutex::new(());
    let _installing = INSTALLING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if PREVIOUS[slot].get().is_some() {
        return Ok(());
    }
    let failed = |err: io::Error| Error::io(format!("install a handler for signal {signum}"), err);
    // SAFETY: sigaction is plain data; all zeroes is a valid value.
    let mut previous: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: reads the current action into `previous`.
    if unsafe { libc::sigaction(signum, std::ptr::null(), &mut previous) } != 0 {
        return Err(failed(io::Error::last_os_error()));
    }
    // Recorded before our handler can run, so that it always chains.
    PREVIOUS[slot]
        .set(previous)
        .expect("only set under the installing lock");
    // SAFETY: as above.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = on_signal;
    action.sa_sigaction = handler as libc::sighandler_t;
    action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: `action.sa_mask` is a valid sigset to initialise; then the
    // action is installed, its handler being async-signal-safe.
    let installed = unsafe {
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(signum, &action, std::ptr::null_mut())
    };
    if installed != 0 {
        return Err(failed(io::Error::last_os_error()));
    }
    Ok(())
}
