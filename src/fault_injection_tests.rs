//! Every store operation of a save, of a restore and of recovery on open
//! is made to fail in turn (ENOSPC from `FaultyStore`), over both kinds of
//! store: the local file system (the rename commit) and the in-memory
//! object store (early placement, with its conditional writes, probe and
//! downloads). After each failure, a reopen finds the last good
//! checkpoint, or the new one when the failure came after the commit
//! point, and it restores byte for byte; a number saved again restores as
//! it was or as it became, never mixed; no staging or temporary file
//! survives the reopen, and a file the manager does not own is untouched.
//!
//! The memory store's runs open an `s3://` directory, so they need the
//! `s3` feature; the local-only build runs the local store's.
#![cfg_attr(not(feature = "s3"), allow(dead_code, unused_imports))]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use crate::store::faulty::{FaultyStore, Steps};
use crate::store::memory::{Bucket, MemoryStore};
use crate::store::{self, LocalStore, Store};
use crate::{Callbacks, CheckpointManager, Config, MaxToKeep};

/// The bytes checkpoint `number` holds in save generation `generation`,
/// sized so that files differ.
fn payload(number: u64, generation: u8) -> Vec<u8> {
    vec![number as u8 ^ generation; 100 + number as usize * 10 + generation as usize]
}

/// A file of the user's in the checkpoint directory, which no save,
/// restore or recovery may touch.
const FOREIGN: &str = "notes.txt";

/// The kind of store a test runs over.
#[derive(Debug, Clone, Copy)]
enum Backend {
    Local,
    Memory,
}

struct Harness {
    restored: Arc<Mutex<Option<Vec<u8>>>>,
    generation: Arc<AtomicU8>,
    /// The local directory, or the local root of the memory store's
    /// callback directories.
    root: tempfile::TempDir,
    /// The objects, with `Backend::Memory`.
    bucket: Option<Bucket>,
}

const MEMORY_URL: &str = "s3://bucket/run";

impl Harness {
    fn new(backend: Backend) -> Self {
        let harness = Harness {
            restored: Arc::default(),
            generation: Arc::default(),
            root: tempfile::tempdir().unwrap(),
            bucket: matches!(backend, Backend::Memory).then(Bucket::new),
        };
        harness.write(FOREIGN, b"the user's");
        harness
    }

    /// The checkpoint directory the manager is given.
    fn dir(&self) -> PathBuf {
        match self.bucket {
            Some(_) => PathBuf::from(MEMORY_URL),
            None => self.root.path().to_path_buf(),
        }
    }

    /// A new handle on the store, as a new process would open it.
    fn store(&self) -> Box<dyn Store> {
        match &self.bucket {
            Some(bucket) => Box::new(MemoryStore::new(
                bucket.clone(),
                MEMORY_URL,
                self.root.path(),
            )),
            None => Box::new(LocalStore::new(self.root.path())),
        }
    }

    /// Writes a file of the directory behind the manager's back.
    fn write(&self, name: &str, bytes: &[u8]) {
        let store = self.store();
        if let Some(parent) = Path::new(name)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
        {
            store.create_dir(parent).unwrap();
        }
        let mut file = store.create(Path::new(name)).unwrap();
        file.write_all(bytes).unwrap();
        file.finish().unwrap();
        store.sync_files(&[PathBuf::from(name)]).unwrap();
    }

    fn read(&self, name: &str) -> Vec<u8> {
        store::read_bounded(&*self.store(), Path::new(name), 1 << 20)
            .unwrap()
            .unwrap_or_else(|| panic!("{name} is missing"))
    }

    /// The files of directory `under` ("": the root), with their paths
    /// below it, recursively.
    fn files(&self, under: &str) -> Vec<String> {
        let store = self.store();
        let mut files = Vec::new();
        let mut pending = vec![PathBuf::from(under)];
        while let Some(directory) = pending.pop() {
            for entry in store.list(&directory).unwrap() {
                let name = directory.join(&entry.name);
                match entry.kind {
                    store::Kind::Directory => pending.push(name),
                    _ => files.push(
                        name.strip_prefix(under)
                            .unwrap()
                            .to_str()
                            .unwrap()
                            .to_owned(),
                    ),
                }
            }
        }
        files.sort();
        files
    }

    /// A manager whose checkpoints are `.index` + `.data` files holding
    /// `payload(number, generation)`, over a store failing as `steps` says.
    fn open(&self, steps: Arc<Steps>) -> crate::Result<CheckpointManager> {
        let config = Config::new(self.dir(), MaxToKeep::Last(2))?;
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
        let store = Arc::new(FaultyStore::new(self.store(), steps));
        CheckpointManager::with_store(config, callbacks, store)
    }

    /// Reopens without failures: the latest must be `ckpt-<number>` and
    /// restore one of `generations`' bytes; returns the generation found.
    /// Only the state file, the lock (or the lease), the user's file and
    /// listed checkpoints' files are left.
    fn check_recovered(&self, number: u64, generations: &[u8]) -> u8 {
        let dir = self.dir();
        let mut manager = self.open(Steps::new()).expect("reopening after a failure");
        let latest = manager.latest_checkpoint().unwrap();
        assert_eq!(latest, dir.join(format!("ckpt-{number}")));
        assert_eq!(manager.restore_or_initialize().unwrap(), Some(latest));
        let restored = self.restored.lock().unwrap().clone().unwrap();
        let generation = *generations
            .iter()
            .find(|&&g| restored == payload(number, g))
            .unwrap_or_else(|| panic!("ckpt-{number} restored bytes of no save: {restored:?}"));
        let listed = manager.checkpoints();
        assert_eq!(self.read(FOREIGN), b"the user's");
        for name in self.files("") {
            if ["checkpoint", "checkpoint.lock", "checkpoint.lease", FOREIGN]
                .contains(&name.as_str())
            {
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
                self.files("")
            );
            assert!(
                !name.contains(".ckpt-staging")
                    && !name.contains(".ckpt-pending")
                    && !name.contains(".tmp"),
                "{name}"
            );
        }
        generation
    }
}

/// Saves ckpt-1..`before`, then saves `number` (a new one or `before`
/// again) with every step after the first `allowed` failing; checks what a
/// reopen finds. Returns the steps the save took when it took no more than
/// allowed.
fn fail_one_save(
    backend: Backend,
    allowed: usize,
    (before, number): (u64, u64),
    failures: &mut usize,
) -> Option<Vec<(&'static str, PathBuf)>> {
    let harness = Harness::new(backend);
    let dir = harness.dir();
    {
        let mut manager = harness.open(Steps::new()).unwrap();
        for _ in 0..before {
            manager.save(None, true).unwrap();
        }
    }
    harness.generation.store(1, Ordering::SeqCst);
    let steps = Steps::new();
    let mut manager = harness.open(steps.clone()).unwrap();
    steps.fail_after(Some(allowed));
    let result = manager.save(Some(number), true);
    let (taken, log) = (steps.taken(), steps.steps());
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
            assert_eq!(
                manager.save_counter(),
                before,
                "a failed save changes nothing"
            );
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
    if number == before {
        let generation = harness.check_recovered(before, &[0, 1]);
        if let Some(committed) = committed {
            assert_eq!(
                generation == 1,
                committed,
                "after step {allowed}: {result:?}"
            );
        }
    } else {
        let latest = harness.open(Steps::new()).unwrap().latest_checkpoint();
        let new = latest == Some(dir.join(format!("ckpt-{number}")));
        if let Some(committed) = committed {
            assert_eq!(new, committed, "after step {allowed}: {result:?}");
        }
        if new {
            harness.check_recovered(number, &[1]);
        } else {
            harness.check_recovered(before, &[0]);
        }
    }
    (taken <= allowed).then_some(log)
}

/// Fails each step of a save of `number` in turn, after `before` saves;
/// returns the steps of the save that failed none.
fn fail_each_step_of_a_save(
    backend: Backend,
    (before, number): (u64, u64),
) -> Vec<(&'static str, PathBuf)> {
    let mut failures = 0;
    for allowed in 0.. {
        if let Some(steps) = fail_one_save(backend, allowed, (before, number), &mut failures) {
            assert!(failures >= 8, "only {failures} failing steps");
            return steps;
        }
    }
    unreachable!()
}

/// Whether `steps` hold `operation` on a name ending in `suffix`.
fn took(steps: &[(&'static str, PathBuf)], operation: &str, suffix: &str) -> bool {
    steps
        .iter()
        .any(|(op, name)| *op == operation && name.to_str().unwrap().ends_with(suffix))
}

fn every_failing_step_of_a_save_keeps_the_last_good_checkpoint(backend: Backend) {
    let steps = fail_each_step_of_a_save(backend, (3, 4));
    if let Backend::Memory = backend {
        // The object-storage commit's own steps were among those failed.
        assert!(took(&steps, "check_unchanged", "checkpoint"), "{steps:?}");
        assert!(
            took(&steps, "create", "ckpt-4.index.ckpt-early"),
            "{steps:?}"
        );
        assert!(took(&steps, "rename", "ckpt-4.index"), "{steps:?}");
    }
}

/// ckpt-2 after ckpt-1 with `max_to_keep` 2: nothing replaced or swept,
/// so a file system places the files before the state file names them.
fn every_failing_step_of_a_new_checkpoint_without_a_sweep_keeps_the_last_good_one(
    backend: Backend,
) {
    let steps = fail_each_step_of_a_save(backend, (1, 2));
    if let Backend::Local = backend {
        assert!(took(&steps, "rename", "ckpt-2.ckpt-pending"), "{steps:?}");
        assert!(took(&steps, "rename", "ckpt-2.index"), "{steps:?}");
        assert!(!took(&steps, "create", "commit-record.json"), "{steps:?}");
    }
}

fn every_failing_step_of_a_resave_keeps_one_whole_version(backend: Backend) {
    let steps = fail_each_step_of_a_save(backend, (3, 3));
    if let Backend::Memory = backend {
        // Files that replace others wait in staging for the commit.
        assert!(!took(&steps, "create", ".ckpt-early"), "{steps:?}");
        assert!(took(&steps, "rename", "ckpt-3.index"), "{steps:?}");
    }
}

fn every_failing_step_of_recovery_loses_nothing(backend: Backend) {
    for allowed in 0.. {
        let harness = Harness::new(backend);
        {
            let mut manager = harness.open(Steps::new()).unwrap();
            manager.save(None, true).unwrap();
            manager.save(None, true).unwrap();
        }
        // What a crash in the middle of saving ckpt-3 leaves behind, and a
        // temporary state file.
        harness.write("ckpt-3.ckpt-staging/ckpt-3.index", b"partial");
        harness.write(&format!("checkpoint.tmp{}", "0".repeat(32)), b"partial");

        let steps = Steps::new();
        steps.fail_after(Some(allowed));
        let opened = harness.open(steps.clone());
        let (taken, log) = (steps.taken(), steps.steps());
        drop(opened);
        harness.check_recovered(2, &[0]);
        if taken <= allowed {
            if let Backend::Memory = backend {
                assert!(took(&log, "probe_conditional_writes", ""), "{log:?}");
            }
            return;
        }
    }
}

/// A restore that fails at any step (a download, removing the local
/// copies) changes nothing in the directory, and the next one restores.
fn every_failing_step_of_a_restore_changes_nothing(backend: Backend) {
    let harness = Harness::new(backend);
    {
        let mut manager = harness.open(Steps::new()).unwrap();
        manager.save(None, true).unwrap();
        manager.save(None, true).unwrap();
    }
    let before = harness.files("");
    for allowed in 0.. {
        let steps = Steps::new();
        let mut manager = harness.open(steps.clone()).unwrap();
        steps.fail_after(Some(allowed));
        let restored = manager.restore_or_initialize();
        let (taken, log) = (steps.taken(), steps.steps());
        drop(manager);
        assert_eq!(harness.files(""), before, "after step {allowed}");
        harness.check_recovered(2, &[0]);
        if taken <= allowed {
            restored.unwrap();
            if let Backend::Memory = backend {
                assert!(took(&log, "fetch_local", ".data-00000-of-00001"), "{log:?}");
            }
            return;
        }
    }
}

/// The rounds of syncs of a save without a sweep, whatever its number of
/// files. A new checkpoint takes three: the staged files with the manifest
/// and the new state file; the directory once they are placed, before the
/// state file names them; the directory after the state file's rename. A
/// number saved again takes four: the staged files, manifest and state
/// file; the commit record, which must not be durable before what it
/// names; the staging directory with the directory; the directory after
/// the renames.
#[test]
fn a_save_syncs_in_three_rounds_or_four_when_it_replaces() {
    let harness = Harness::new(Backend::Local);
    let steps = Steps::new();
    let mut manager = harness.open(steps.clone()).unwrap();
    let syncs = |operations: Vec<&str>| {
        operations
            .iter()
            .filter(|op| matches!(**op, "sync_files" | "sync_directories"))
            .count()
    };
    steps.fail_after(None);
    manager.save(None, true).unwrap();
    assert_eq!(syncs(steps.operations()), 3, "{:?}", steps.operations());
    steps.fail_after(None);
    manager.save(Some(1), true).unwrap();
    assert_eq!(syncs(steps.operations()), 4, "{:?}", steps.operations());
}

/// Saving a number again in the same session, twice, replaces it each
/// time: the manager's own earlier writes and moves of the staged files
/// are no conflict, and a restore reads the last save's bytes.
fn a_number_saved_again_in_one_session_restores_the_last_save(backend: Backend) {
    let harness = Harness::new(backend);
    let dir = harness.dir();
    let mut manager = harness.open(Steps::new()).unwrap();
    manager.save(None, true).unwrap();
    for generation in 1..=2 {
        harness.generation.store(generation, Ordering::SeqCst);
        assert_eq!(
            manager.save(Some(1), true).unwrap(),
            Some(dir.join("ckpt-1"))
        );
    }
    assert_eq!(
        manager.restore_or_initialize().unwrap(),
        Some(dir.join("ckpt-1"))
    );
    assert_eq!(
        harness.restored.lock().unwrap().as_deref(),
        Some(&*payload(1, 2))
    );
    drop(manager);
    assert_eq!(harness.check_recovered(1, &[2]), 2);
}

/// A commit record that outlives its commit (its removal was lost, and a
/// later save committed meanwhile) must not roll the directory back when
/// it resurfaces: the state file is replaced only if it is still the one
/// the record's commit replaced. (ckpt-1 is saved twice: saving a number
/// again writes a record; a new checkpoint is placed without one.)
fn a_stale_commit_record_does_not_undo_a_later_commit(backend: Backend) {
    let harness = Harness::new(backend);
    let dir = harness.dir();
    // The steps saving ckpt-1 again takes before the one that removes its
    // commit record (the staging directory with it, or the record alone
    // before the directory becomes the spare), so that it and every later
    // step fail.
    let before_the_record_goes = {
        let scratch = Harness::new(backend);
        let steps = Steps::new();
        let mut manager = scratch.open(steps.clone()).unwrap();
        manager.save(None, true).unwrap();
        steps.fail_after(None);
        manager.save(Some(1), true).unwrap();
        let (staging, record) = (
            Path::new("ckpt-1.ckpt-staging"),
            Path::new("ckpt-1.ckpt-staging/commit-record.json"),
        );
        steps
            .steps()
            .iter()
            .rposition(|(operation, name)| {
                (*operation == "remove_staging" && name == staging)
                    || (*operation == "remove_file" && name == record)
            })
            .expect("the record is removed")
    };
    let steps = Steps::new();
    let mut manager = harness.open(steps.clone()).unwrap();
    manager.save(None, true).unwrap();
    steps.fail_after(Some(before_the_record_goes));
    assert_eq!(
        manager.save(Some(1), true).unwrap(),
        Some(dir.join("ckpt-1"))
    );
    drop(manager);
    let staging = "ckpt-1.ckpt-staging";
    let kept: Vec<(String, Vec<u8>)> = harness
        .files(staging)
        .into_iter()
        .map(|name| {
            let bytes = harness.read(&format!("{staging}/{name}"));
            (name, bytes)
        })
        .collect();
    assert!(!kept.is_empty());

    let mut manager = harness.open(Steps::new()).unwrap();
    assert!(
        harness.files(staging).is_empty(),
        "the open finished the commit"
    );
    manager.save(None, true).unwrap();
    drop(manager);
    let state_after_ckpt_2 = harness.read("checkpoint");
    for (name, bytes) in &kept {
        harness.write(&format!("{staging}/{name}"), bytes);
    }

    harness.check_recovered(2, &[0]);
    assert_eq!(harness.read("checkpoint"), state_after_ckpt_2);
    assert!(harness.files(staging).is_empty());
}

/// A save that fails after its commit point is finished by the same
/// manager's next save, which then takes the next number: no number is
/// used twice, and both checkpoints are whole.
fn the_next_save_finishes_a_commit_that_failed_past_its_commit_point(backend: Backend) {
    for allowed in 0.. {
        let harness = Harness::new(backend);
        let dir = harness.dir();
        let steps = Steps::new();
        let mut manager = harness.open(steps.clone()).unwrap();
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
        harness.check_recovered(3, &[0]);
        return;
    }
}

/// Pinning replaces a committed checkpoint's manifest. Failing each step of
/// that leaves the old manifest or the new one, whole; the checkpoint
/// restores; the pin is what the manager reported; the reopen leaves no
/// temporary manifest.
fn every_failing_step_of_a_pin_keeps_one_whole_manifest(backend: Backend) {
    let harness = Harness::new(backend);
    let steps = Steps::new();
    let mut manager = harness.open(Arc::clone(&steps)).unwrap();
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
        let mut manager = harness.open(Arc::clone(&steps)).unwrap();
        steps.fail_after(Some(allowed));
        let pinned = manager.set_pinned(&prefix, true);
        failures += usize::from(pinned.is_err());
        drop(manager);
        let info = harness
            .open(Steps::new())
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
        let files = harness.files("");
        assert!(!files.iter().any(|name| name.contains(".tmp")), "{files:?}");
        harness.check_recovered(2, &[0]);
        harness
            .open(Steps::new())
            .unwrap()
            .set_pinned(&prefix, false)
            .unwrap();
    }
    assert!(failures > 0, "no step of the pin failed");
}

/// Whether a failed call's error says its commit may be (or is) done.
fn maybe_committed(err: &crate::Error) -> bool {
    let message = err.to_string();
    message.contains("it is committed") || message.contains("it may still be committed")
}

/// A save or a pin that fails at one step (a write that meets a
/// full disk, say) while every other step succeeds, and fails before its
/// commit point, leaves the directory as it was: no write-aside file piles
/// up while the writer stays open.
fn a_failed_save_or_pin_leaves_the_directory_as_it_was(backend: Backend) {
    let harness = Harness::new(backend);
    let steps = Steps::new();
    let mut manager = harness.open(steps.clone()).unwrap();
    manager.save(None, true).unwrap();
    type Call = fn(&mut CheckpointManager) -> crate::Result<()>;
    let calls: [(&str, Call); 2] = [
        ("save", |manager| manager.save(None, true).map(drop)),
        ("pin", |manager| {
            let latest = manager.latest_checkpoint().unwrap();
            manager.set_pinned(&latest, true)
        }),
    ];
    for (what, call) in calls {
        let mut failures = 0;
        for allowed in 0.. {
            let before = harness.files("");
            steps.fail_only_after(allowed);
            let result = call(&mut manager);
            let (taken, log) = (steps.taken(), steps.steps());
            steps.fail_after(None);
            match result {
                Err(err) if !maybe_committed(&err) => {
                    failures += 1;
                    assert_eq!(
                        harness.files(""),
                        before,
                        "a {what} failing at {:?}: {err}",
                        log.get(allowed)
                    );
                }
                Ok(()) if taken <= allowed => break,
                _ => {
                    // Committed, with a step after the commit point failed:
                    // a reopen finishes it, so that the next failure starts
                    // from a settled directory.
                    drop(manager);
                    manager = harness.open(steps.clone()).unwrap();
                }
            }
        }
        assert!(failures > 0, "no step of a {what} failed");
    }
}

/// A second writer is refused at open (the lock file, or the lease object
/// through the store) while the first is open, and opens once it closed.
fn a_second_writer_is_refused_at_open(backend: Backend) {
    let harness = Harness::new(backend);
    let first = harness.open(Steps::new()).unwrap();
    let err = harness.open(Steps::new()).expect_err("refused");
    assert_eq!(err.kind(), crate::ErrorKind::Locked, "{err}");
    drop(first);
    harness.open(Steps::new()).unwrap();
}

/// Each test above, once over each kind of store.
macro_rules! over_both_stores {
    ($($test:ident),* $(,)?) => {
        mod local {
            $(#[test]
            fn $test() {
                super::$test(super::Backend::Local)
            })*
        }
        #[cfg(feature = "s3")]
        mod memory {
            $(#[test]
            fn $test() {
                super::$test(super::Backend::Memory)
            })*
        }
    };
}

over_both_stores!(
    every_failing_step_of_a_save_keeps_the_last_good_checkpoint,
    every_failing_step_of_a_resave_keeps_one_whole_version,
    every_failing_step_of_a_new_checkpoint_without_a_sweep_keeps_the_last_good_one,
    every_failing_step_of_recovery_loses_nothing,
    every_failing_step_of_a_restore_changes_nothing,
    a_number_saved_again_in_one_session_restores_the_last_save,
    a_stale_commit_record_does_not_undo_a_later_commit,
    the_next_save_finishes_a_commit_that_failed_past_its_commit_point,
    every_failing_step_of_a_pin_keeps_one_whole_manifest,
    a_failed_save_or_pin_leaves_the_directory_as_it_was,
    a_second_writer_is_refused_at_open,
);
