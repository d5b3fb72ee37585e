//! Every store operation of a save, and of recovery on open, is made to
//! fail in turn (ENOSPC from `FaultyStore`). After each failure, a reopen
//! finds the last good checkpoint, or the new one when the failure came
//! after the commit point, and it restores byte for byte; a number saved
//! again restores as it was or as it became, never mixed; no staging or
//! temporary file survives the reopen.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use crate::store::faulty::{FaultyStore, Steps};
use crate::store::LocalStore;
use crate::{Callbacks, CheckpointManager, Config, MaxToKeep};

/// The bytes checkpoint `number` holds in save generation `generation`,
/// sized so that files differ.
fn payload(number: u64, generation: u8) -> Vec<u8> {
    vec![number as u8 ^ generation; 100 + number as usize * 10 + generation as usize]
}

struct Harness {
    restored: Arc<Mutex<Option<Vec<u8>>>>,
    generation: Arc<AtomicU8>,
}

impl Harness {
    fn new() -> Self {
        Harness {
            restored: Arc::default(),
            generation: Arc::default(),
        }
    }

    /// A manager whose checkpoints are `.index` + `.data` files holding
    /// `payload(number, generation)`, over a store failing as `steps` says.
    fn open(&self, dir: &Path, steps: Arc<Steps>) -> crate::Result<CheckpointManager> {
        let config = Config::new(dir, MaxToKeep::Last(2))?;
        let (into, generation) = (Arc::clone(&self.restored), Arc::clone(&self.generation));
        let callbacks = Callbacks::new()
            .on_save(move |prefix, number| {
                fs::write(crate::paths::with_suffix(prefix, ".index"), b"index")?;
                let data = crate::paths::with_suffix(prefix, ".data-00000-of-00001");
                Ok(fs::write(
                    data,
                    payload(number, generation.load(Ordering::SeqCst)),
                )?)
            })
            .on_restore(move |prefix| {
                let data = crate::paths::with_suffix(prefix, ".data-00000-of-00001");
                *into.lock().unwrap() = Some(fs::read(data)?);
                Ok(())
            })
            .log(|_, _| {});
        let store = Arc::new(FaultyStore::new(LocalStore::new(dir), steps));
        CheckpointManager::with_store(config, callbacks, store)
    }

    /// Reopens without failures: the latest must be `ckpt-<number>` and
    /// restore one of `generations`' bytes; returns the generation found.
    /// Only the state file, the lock and listed checkpoints' files are left.
    fn check_recovered(&self, dir: &Path, number: u64, generations: &[u8]) -> u8 {
        let mut manager = self
            .open(dir, Steps::new())
            .expect("reopening after a failure");
        let latest = manager.latest_checkpoint().unwrap();
        assert_eq!(latest, dir.join(format!("ckpt-{number}")));
        assert_eq!(manager.restore_or_initialize().unwrap(), Some(latest));
        let restored = self.restored.lock().unwrap().clone().unwrap();
        let generation = *generations
            .iter()
            .find(|&&g| restored == payload(number, g))
            .unwrap_or_else(|| panic!("ckpt-{number} restored bytes of no save: {restored:?}"));
        let listed = manager.checkpoints();
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
                "'{name}' belongs to no listed checkpoint: {:?}",
                names(dir)
            );
            assert!(
                !name.contains(".ckpt-staging") && !name.contains(".tmp"),
                "{name}"
            );
        }
        generation
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Saves ckpt-1..3, then saves `number` (a new one or 3 again) with every
/// step after the first `allowed` failing; checks what a reopen finds.
/// Returns whether the save took no more steps than allowed.
fn fail_one_save(allowed: usize, number: u64, failures: &mut usize) -> bool {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let harness = Harness::new();
    {
        let mut manager = harness.open(dir, Steps::new()).unwrap();
        for _ in 0..3 {
            manager.save(None, true).unwrap();
        }
    }
    harness.generation.store(1, Ordering::SeqCst);
    let steps = Steps::new();
    let mut manager = harness.open(dir, steps.clone()).unwrap();
    steps.fail_after(Some(allowed));
    let result = manager.save(Some(number), true);
    let taken = steps.taken();
    steps.fail_after(None);
    // Whether the save is committed: yes, no, or unknown when undoing it
    // failed too (then a reopen may roll it forward).
    let committed = match &result {
        Ok(prefix) => {
            assert_eq!(
                prefix.as_deref(),
                Some(&*dir.join(format!("ckpt-{number}")))
            );
            Some(true)
        }
        Err(err) => {
            *failures += 1;
            let message = err.to_string();
            assert!(message.contains("No space left"), "{message}");
            assert_eq!(manager.save_counter(), 3, "a failed save changes nothing");
            if message.contains("it is committed") {
                Some(true)
            } else if message.contains("it may still be committed") {
                None
            } else {
                Some(false)
            }
        }
    };
    drop(manager);
    if number == 3 {
        let generation = harness.check_recovered(dir, 3, &[0, 1]);
        if let Some(committed) = committed {
            assert_eq!(
                generation == 1,
                committed,
                "after step {allowed}: {result:?}"
            );
        }
    } else {
        let latest = harness.open(dir, Steps::new()).unwrap().latest_checkpoint();
        let new = latest == Some(dir.join(format!("ckpt-{number}")));
        if let Some(committed) = committed {
            assert_eq!(new, committed, "after step {allowed}: {result:?}");
        }
        if new {
            harness.check_recovered(dir, number, &[1]);
        } else {
            harness.check_recovered(dir, 3, &[0]);
        }
    }
    taken <= allowed
}

#[test]
fn every_failing_step_of_a_save_keeps_the_last_good_checkpoint() {
    let mut failures = 0;
    for allowed in 0.. {
        if fail_one_save(allowed, 4, &mut failures) {
            assert!(failures >= 8, "only {failures} failing steps");
            return;
        }
    }
}

#[test]
fn every_failing_step_of_a_resave_keeps_one_whole_version() {
    let mut failures = 0;
    for allowed in 0.. {
        if fail_one_save(allowed, 3, &mut failures) {
            assert!(failures >= 8, "only {failures} failing steps");
            return;
        }
    }
}

#[test]
fn every_failing_step_of_recovery_loses_nothing() {
    for allowed in 0.. {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        let harness = Harness::new();
        {
            let mut manager = harness.open(dir, Steps::new()).unwrap();
            manager.save(None, true).unwrap();
            manager.save(None, true).unwrap();
        }
        // What a crash in the middle of saving ckpt-3 leaves behind, and a
        // temporary state file.
        let staging = dir.join("ckpt-3.ckpt-staging");
        fs::create_dir(&staging).unwrap();
        fs::write(staging.join("ckpt-3.index"), b"partial").unwrap();
        fs::write(
            dir.join(format!("checkpoint.tmp{}", "0".repeat(32))),
            b"partial",
        )
        .unwrap();

        let steps = Steps::new();
        steps.fail_after(Some(allowed));
        let opened = harness.open(dir, steps.clone());
        let taken = steps.taken();
        drop(opened);
        harness.check_recovered(dir, 2, &[0]);
        if taken <= allowed {
            return;
        }
    }
}

/// A save without a sweep takes four rounds of syncs, whatever the
/// number of files: the staged files with the manifest and the new state
/// file; then the commit record, which must not be durable before what it
/// names; the staging directory with the directory; the directory after
/// the renames.
#[test]
fn a_save_syncs_in_four_rounds() {
    let root = tempfile::tempdir().unwrap();
    let harness = Harness::new();
    let steps = Steps::new();
    let mut manager = harness.open(root.path(), steps.clone()).unwrap();
    steps.fail_after(None);
    manager.save(None, true).unwrap();
    let operations = steps.operations();
    let syncs = operations
        .iter()
        .filter(|op| matches!(**op, "sync_files" | "sync_directories"))
        .count();
    assert_eq!(syncs, 4, "{operations:?}");
}

/// A commit record that outlives its commit (its removal was lost, and a
/// later save committed meanwhile) must not roll the directory back when
/// it resurfaces: the state file is replaced only if it is still the one
/// the record's commit replaced.
#[test]
fn a_stale_commit_record_does_not_undo_a_later_commit() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let harness = Harness::new();
    // How many steps a save of ckpt-1 takes, so that only the last one
    // (removing the staging directory) fails.
    let steps_of_a_save = {
        let scratch = tempfile::tempdir().unwrap();
        let steps = Steps::new();
        let mut manager = harness.open(scratch.path(), steps.clone()).unwrap();
        steps.fail_after(None);
        manager.save(None, true).unwrap();
        assert_eq!(steps.operations().last(), Some(&"remove_staging"));
        steps.taken()
    };
    let steps = Steps::new();
    let mut manager = harness.open(dir, steps.clone()).unwrap();
    steps.fail_after(Some(steps_of_a_save - 1));
    assert_eq!(manager.save(None, true).unwrap(), Some(dir.join("ckpt-1")));
    drop(manager);
    let staging = dir.join("ckpt-1.ckpt-staging");
    let kept = root.path().join("stale-staging");
    fs::create_dir(&kept).unwrap();
    for entry in fs::read_dir(&staging).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), kept.join(entry.file_name())).unwrap();
    }

    let mut manager = harness.open(dir, Steps::new()).unwrap();
    assert!(!staging.exists(), "the open finished the commit");
    manager.save(None, true).unwrap();
    drop(manager);
    let state_after_ckpt_2 = fs::read(dir.join("checkpoint")).unwrap();
    fs::rename(&kept, &staging).unwrap();

    harness.check_recovered(dir, 2, &[0]);
    assert_eq!(
        fs::read(dir.join("checkpoint")).unwrap(),
        state_after_ckpt_2
    );
    assert!(!staging.exists());
}

/// A save that fails after its commit point is finished by the same
/// manager's next save, which then takes the next number: no number is
/// used twice, and both checkpoints are whole.
#[test]
fn the_next_save_finishes_a_commit_that_failed_past_its_commit_point() {
    for allowed in 0.. {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        let harness = Harness::new();
        let steps = Steps::new();
        let mut manager = harness.open(dir, steps.clone()).unwrap();
        manager.save(None, true).unwrap();
        steps.fail_after(Some(allowed));
        let result = manager.save(None, true);
        steps.fail_after(None);
        let Err(err) = result else {
            panic!("no step after the commit point failed a save");
        };
        if !err.to_string().contains("it is committed") {
            continue;
        }
        assert_eq!(manager.save(None, true).unwrap(), Some(dir.join("ckpt-3")));
        assert_eq!(
            manager.checkpoints(),
            [2, 3].map(|n| dir.join(format!("ckpt-{n}")))
        );
        drop(manager);
        harness.check_recovered(dir, 3, &[0]);
        return;
    }
}

/// Pinning replaces a committed checkpoint's manifest. Failing each step of
/// that leaves the old manifest or the new one, whole; the checkpoint
/// restores; the pin is what the manager reported; the reopen leaves no
/// temporary manifest.
#[test]
fn every_failing_step_of_a_pin_keeps_one_whole_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let harness = Harness::new();
    let steps = Steps::new();
    let mut manager = harness.open(dir, Arc::clone(&steps)).unwrap();
    manager.save(None, true).unwrap();
    let prefix = manager.save(None, true).unwrap().unwrap();
    steps.fail_after(None);
    manager.set_pinned(&prefix, true).unwrap();
    manager.set_pinned(&prefix, false).unwrap();
    let pin_steps = steps.taken();
    assert!(
        pin_steps >= 4,
        "write, sync, rename, sync: {:?}",
        steps.operations()
    );
    drop(manager);
    let mut failures = 0;
    for allowed in 0..pin_steps {
        steps.fail_after(None);
        let mut manager = harness.open(dir, Arc::clone(&steps)).unwrap();
        steps.fail_after(Some(allowed));
        let pinned = manager.set_pinned(&prefix, true);
        failures += usize::from(pinned.is_err());
        drop(manager);
        let info = harness
            .open(dir, Steps::new())
            .unwrap()
            .checkpoint_info(&prefix)
            .unwrap();
        assert!(info.has_manifest, "after {allowed} steps");
        if pinned.is_ok() {
            assert!(
                info.pinned,
                "a pin that succeeded was lost after {allowed} steps"
            );
        }
        assert!(
            !names(dir).iter().any(|name| name.contains(".tmp")),
            "{:?}",
            names(dir)
        );
        harness.check_recovered(dir, 2, &[0]);
        harness
            .open(dir, Steps::new())
            .unwrap()
            .set_pinned(&prefix, false)
            .unwrap();
    }
    assert!(failures > 0, "no step of the pin failed");
}
