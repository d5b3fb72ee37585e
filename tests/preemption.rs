//! The preemption handler, in a test binary of its own: the signal count it
//! keeps is process-wide.

use std::fs;
use std::sync::atomic::{AtomicUsize, Ordering};

use ckpt_manager::{
    install_preemption_handler, preemption_requested, Callbacks, CheckpointManager, Config, Error,
    MaxToKeep,
};

static EARLIER_HANDLER_CALLS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn earlier_handler(_: libc::c_int) {
    EARLIER_HANDLER_CALLS.fetch_add(1, Ordering::SeqCst);
}

fn open(dir: &std::path::Path) -> CheckpointManager {
    let mut config = Config::new(dir, MaxToKeep::Last(5)).unwrap();
    config.set_save_interval_seconds(Some(3600.0)).unwrap();
    let callbacks = Callbacks::new()
        .on_save(|prefix, _| Ok(fs::write(prefix.with_extension("bin"), b"w")?))
        .clock(|| 1000.0);
    CheckpointManager::new(config, callbacks).unwrap()
}

#[test]
fn a_preemption_signal_saves_every_manager_once_and_chains() {
    for refused in [0, -1, 65, 9999, libc::SIGKILL, libc::SIGSTOP, libc::SIGSEGV] {
        assert!(
            matches!(
                install_preemption_handler(refused),
                Err(Error::InvalidArgument(_))
            ),
            "signal {refused}"
        );
    }
    // SAFETY: installs a plain handler that only touches an atomic.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = earlier_handler as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGUSR2, &action, std::ptr::null_mut()),
            0
        );
    }
    install_preemption_handler(libc::SIGUSR2).unwrap();
    install_preemption_handler(libc::SIGUSR2).unwrap();

    let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut managers = [open(first.path()), open(second.path())];
    for manager in &mut managers {
        assert!(manager.save(None, true).unwrap().is_some());
        assert!(!manager.should_save().unwrap(), "within the hour");
    }
    assert!(!preemption_requested());

    // SAFETY: raising a signal whose handlers are installed above.
    assert_eq!(unsafe { libc::raise(libc::SIGUSR2) }, 0);
    assert!(preemption_requested());
    // Installed twice, chained once: the earlier handler runs once.
    assert_eq!(EARLIER_HANDLER_CALLS.load(Ordering::SeqCst), 1);
    for manager in &mut managers {
        assert!(manager.should_save().unwrap());
        assert!(manager.save(None, true).unwrap().is_some());
        assert!(
            manager.save(None, true).unwrap().is_none(),
            "once per signal"
        );
    }
    // A manager opened after the signal, within the interval, saves once too.
    drop(managers);
    let mut manager = open(first.path());
    assert!(
        manager.save(None, true).unwrap().is_some(),
        "the signal it had not seen"
    );
    assert!(manager.save(None, true).unwrap().is_none());
}
