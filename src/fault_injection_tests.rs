//! Every write, fsync, rename and delete of a save, and of recovery on
//! open, is made to fail in turn (ENOSPC from the test hook in `storage`).
//! After each failure the last good checkpoint must still be the latest,
//! restore intact, and no partial or temporary file may survive a reopen.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::storage::{fail_after, io_steps_taken};
use crate::{Callbacks, CheckpointManager, Config, MaxToKeep};

/// The bytes checkpoint `number` holds, sized so that files differ.
fn payload(number: u64) -> Vec<u8> {
    vec![number as u8; 100 + number as usize * 10]
}

/// A manager whose checkpoints are `.index` + `.data` files holding
/// `payload(number)`, restoring into `restored`.
fn open(dir: &Path, restored: &Arc<Mutex<Option<Vec<u8>>>>) -> crate::Result<CheckpointManager> {
    let config = Config::new(dir, MaxToKeep::Last(2))?;
    let into = Arc::clone(restored);
    let callbacks = Callbacks::new()
        .on_save(|prefix, number| {
            fs::write(crate::paths::with_suffix(prefix, ".index"), b"index")?;
            let data = crate::paths::with_suffix(prefix, ".data-00000-of-00001");
            Ok(fs::write(data, payload(number))?)
        })
        .on_restore(move |prefix| {
            let data = crate::paths::with_suffix(prefix, ".data-00000-of-00001");
            *into.lock().unwrap() = Some(fs::read(data)?);
            Ok(())
        })
        .log(|_, _| {});
    CheckpointManager::new(config, callbacks)
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// After a reopen, only committed checkpoints' files, the state file and
/// the lock are left, and the latest restores with the expected bytes.
fn check_recovered(dir: &Path, expected_latest: u64) {
    let restored = Arc::new(Mutex::new(None));
    let mut manager = open(dir, &restored).expect("reopening after a failure");
    let latest = manager.latest_checkpoint().unwrap();
    assert_eq!(latest, dir.join(format!("ckpt-{expected_latest}")));
    assert_eq!(manager.restore_or_initialize().unwrap(), Some(latest));
    assert_eq!(
        restored.lock().unwrap().as_deref(),
        Some(&payload(expected_latest)[..])
    );
    let listed: Vec<PathBuf> = manager.checkpoints();
    for name in names(dir) {
        if name == "checkpoint" || name == "checkpoint.lock" {
            continue;
        }
        let owner = listed.iter().any(|prefix| {
            let base = prefix.file_name().unwrap().to_str().unwrap();
            name.strip_prefix(base)
                .is_some_and(|rest| rest.starts_with('.'))
        });
        assert!(
            owner,
            "'{name}' belongs to no committed checkpoint: {:?}",
            names(dir)
        );
        assert!(
            !name.ends_with(".ckpt-pending") && !name.ends_with(".tmp"),
            "{name}"
        );
    }
}

#[test]
fn every_failing_io_step_of_a_save_keeps_the_last_good_checkpoint() {
    let mut failures_seen = 0;
    for allowed_steps in 0.. {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        let restored = Arc::new(Mutex::new(None));
        {
            let mut manager = open(dir, &restored).unwrap();
            for _ in 0..3 {
                manager.save(None, true).unwrap();
            }
        }
        let mut manager = open(dir, &restored).unwrap();
        fail_after(Some(allowed_steps));
        let result = manager.save(None, true);
        let steps = io_steps_taken();
        fail_after(None);
        let committed = match &result {
            Ok(prefix) => {
                assert_eq!(prefix.as_deref(), Some(&*dir.join("ckpt-4")));
                4
            }
            Err(err) => {
                failures_seen += 1;
                assert!(err.to_string().contains("No space left"), "{err}");
                // The manager itself is unchanged and still usable.
                assert_eq!(manager.latest_checkpoint(), Some(dir.join("ckpt-3")));
                assert_eq!(manager.save_counter(), 3);
                3
            }
        };
        drop(manager);
        check_recovered(dir, committed);
        if steps <= allowed_steps {
            // The save took fewer steps than allowed: every step has failed once.
            assert!(result.is_ok());
            assert!(failures_seen >= 8, "only {failures_seen} failing steps");
            return;
        }
    }
}

#[test]
fn every_failing_io_step_of_recovery_loses_nothing() {
    for allowed_steps in 0.. {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        let restored = Arc::new(Mutex::new(None));
        {
            let mut manager = open(dir, &restored).unwrap();
            manager.save(None, true).unwrap();
            manager.save(None, true).unwrap();
        }
        // What a crash in the middle of saving ckpt-3 leaves behind.
        let interrupted = dir.join("ckpt-3");
        crate::storage::mark_pending(&interrupted).unwrap();
        fs::write(
            crate::paths::with_suffix(&interrupted, ".index"),
            b"partial",
        )
        .unwrap();
        fs::write(
            dir.join(format!("checkpoint.tmp{}", "0".repeat(32))),
            b"partial",
        )
        .unwrap();

        fail_after(Some(allowed_steps));
        let opened = open(dir, &restored);
        let steps = io_steps_taken();
        fail_after(None);
        drop(opened);
        check_recovered(dir, 2);
        if steps <= allowed_steps {
            return;
        }
    }
}
