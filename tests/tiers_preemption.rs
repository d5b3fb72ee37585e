//! A save that answers a preemption signal gives the remote tier's
//! uploads a bounded time, in a test binary of its own: the signal count
//! is process-wide.

use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ckpt_manager::state::CheckpointState;
use ckpt_manager::{install_preemption_handler, Callbacks, CheckpointManager, Config, MaxToKeep};

fn open(local: &Path, remote: &Path, warnings: &Arc<Mutex<Vec<String>>>) -> CheckpointManager {
    let mut config = Config::new(local, MaxToKeep::Last(5)).unwrap();
    config.set_save_interval_seconds(Some(3600.0)).unwrap();
    config
        .set_remote_directory(Some(remote.to_path_buf()))
        .unwrap();
    config.set_remote_preemption_seconds(0.3).unwrap();
    let log = Arc::clone(warnings);
    let callbacks = Callbacks::new()
        .on_save(|prefix, _| Ok(fs::write(prefix.with_extension("bin"), b"w")?))
        .log(move |_, message| log.lock().unwrap().push(message.to_owned()));
    CheckpointManager::new(config, callbacks).unwrap()
}

fn remote_listed(remote: &Path) -> Vec<Vec<u8>> {
    let state = CheckpointState::parse(&fs::read(remote.join("checkpoint")).unwrap()).unwrap();
    state.all_model_checkpoint_paths
}

#[test]
fn the_save_answering_a_preemption_waits_a_bounded_time_for_the_uploads() {
    install_preemption_handler(libc::SIGUSR2).unwrap();
    let warnings = Arc::new(Mutex::new(Vec::new()));
    let (local, remote) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // A remote path under a regular file: uploads fail until it goes.
    let blocked = tempfile::tempdir().unwrap();
    fs::write(blocked.path().join("file"), b"").unwrap();
    let unreachable = blocked.path().join("file").join("remote");
    let (blocked_local, reachable_local) = (tempfile::tempdir().unwrap(), local);
    let mut reachable = open(reachable_local.path(), remote.path(), &warnings);
    let mut stuck = open(blocked_local.path(), &unreachable, &warnings);
    for manager in [&mut reachable, &mut stuck] {
        assert!(manager.save(None, true).unwrap().is_some());
        assert!(
            manager.save(None, true).unwrap().is_none(),
            "within the hour"
        );
    }

    // SAFETY: raising a signal whose handler is installed above.
    assert_eq!(unsafe { libc::raise(libc::SIGUSR2) }, 0);
    // The reachable remote has the preempted save when the call returns.
    assert!(reachable.save(None, true).unwrap().is_some());
    assert_eq!(
        remote_listed(remote.path()),
        [b"ckpt-1".to_vec(), b"ckpt-2".to_vec()]
    );
    // The unreachable one: the save returns after its bounded wait, saved
    // locally, with a warning; the uploads wait for the next open.
    assert!(stuck.save(None, true).unwrap().is_some());
    let status = stuck.remote_status().unwrap();
    assert_eq!(status.pending, 2);
    let warnings = warnings.lock().unwrap().clone();
    assert!(
        warnings.iter().any(|w| w.contains("preempted: 2 uploads")),
        "{warnings:?}"
    );
    assert!(stuck.wait_until_finished(Some(Duration::ZERO)).is_err());
}
