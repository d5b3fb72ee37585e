//! Re-saves and concurrent access: a failed re-save of a committed number
//! (a callback error, the file size limit) keeps the previous checkpoint of
//! that number restorable byte for byte; a reader racing a writer always
//! restores a whole checkpoint; a writer reopens at once while a child it
//! forked lives (the lock is not inherited); a state file of 100,000
//! checkpoints opens and saves. Each test reproduces a
//! defect of issue 8 ("One transaction per commit").
//!
//! Save callbacks write relative to the prefix they are given (a staging
//! prefix, not `<dir>/ckpt-N`). A call that must run with process-wide
//! settings (an `RLIMIT_FSIZE`, a `fork`) runs in a child process: this
//! test executable run again on one test, killed when it runs over its
//! limit (tests/support/checkpoint_dir.rs).

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::mpsc;
use std::thread;

use ckpt_manager::{
    latest_checkpoint, verify_checkpoint, Callbacks, CheckpointManager, CheckpointState, Config,
    DType, Error, Integrity, LatestOptions, MaxToKeep, Verification,
};
use support::checkpoint_dir::*;

// ---------------------------------------------------------------------------
// Defect 1: a failed re-save of an existing number destroys that checkpoint.

/// Defect 1 (callbacks): a save callback that rewrites a committed number and
/// then fails must leave the committed checkpoint intact and restorable.
#[test]
fn a_failed_resave_by_a_callback_keeps_the_previous_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let journal = Shared::default();
    open(dir, MaxToKeep::Last(3), &journal)
        .save(Some(1), true)
        .unwrap();

    let failing: SaveFn = Box::new(|prefix, _| {
        write_tf_files(prefix, b"new index", b"short")?;
        Err("simulated failure after writing".into())
    });
    let mut manager = CheckpointManager::new(
        config(dir, "ckpt", MaxToKeep::Last(3)),
        callbacks_with(&journal, failing),
    )
    .unwrap();
    assert!(
        manager.save(Some(1), true).is_err(),
        "the save callback failed"
    );
    drop(manager);

    let prefix = dir.join("ckpt-1");
    let verified = verify_checkpoint(&prefix, Verification::Checksums);
    assert!(
        matches!(verified, Ok(Integrity::Intact)),
        "after a failed re-save, ckpt-1 must still verify: {verified:?}"
    );
    let restored = open(dir, MaxToKeep::Last(3), &journal).restore_or_initialize();
    assert_eq!(restored.unwrap(), Some(prefix.clone()));
    assert_eq!(last_restored(&journal).1, payload(1), "the original bytes");
}

const D1_TENSORS: &str = "a_resave_that_hits_the_file_size_limit_keeps_the_previous_checkpoint";
const TENSOR_LEN: usize = 1 << 20;

/// A manager with only the built-in saver, `w` f32[1<<20] registered at
/// `buffer` (which must outlive it).
fn tensor_manager(dir: &Path, buffer: &mut [f32]) -> CheckpointManager {
    assert_eq!(buffer.len(), TENSOR_LEN);
    let mut manager = CheckpointManager::new(
        Config::new(dir, MaxToKeep::Last(3)).unwrap(),
        Callbacks::new(),
    )
    .unwrap();
    // SAFETY: the buffer outlives the manager (the callers drop the manager first).
    unsafe {
        manager
            .register_tensor(
                "w",
                DType::F32,
                &[TENSOR_LEN as u64],
                buffer.as_mut_ptr().cast(),
            )
            .unwrap();
    }
    manager
}

/// Defect 1 (built-in saver): a re-save of checkpoint 1 that fails at
/// `RLIMIT_FSIZE` (1 MiB, SIGXFSZ ignored; in a child process) must leave
/// checkpoint 1 intact, restoring the original tensor bytes.
#[test]
fn a_resave_that_hits_the_file_size_limit_keeps_the_previous_checkpoint() {
    if let Some(dir) = child_dir() {
        // The child: the re-save, under the file size limit.
        let limit = libc::rlimit {
            rlim_cur: 1 << 20,
            rlim_max: 1 << 20,
        };
        // SAFETY: plain system calls on this process.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
        }
        let mut other = vec![7.0f32; TENSOR_LEN];
        let mut manager = tensor_manager(&dir, &mut other);
        let err = manager.save(Some(1), true).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "expected Io, got {err:?}");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let original: Vec<f32> = (0..TENSOR_LEN).map(|i| i as f32).collect();
    let mut saved = original.clone();
    let mut manager = tensor_manager(dir, &mut saved);
    manager.save(Some(1), true).unwrap();
    drop(manager);

    run_child(D1_TENSORS, dir);

    let prefix = dir.join("ckpt-1");
    let verified = verify_checkpoint(&prefix, Verification::Checksums);
    assert!(
        matches!(verified, Ok(Integrity::Intact)),
        "after a failed re-save, ckpt-1 must still verify: {verified:?}"
    );
    let mut restored = vec![0.0f32; TENSOR_LEN];
    let mut manager = tensor_manager(dir, &mut restored);
    assert_eq!(manager.restore_or_initialize().unwrap(), Some(prefix));
    drop(manager);
    assert!(
        restored == original,
        "the restored tensor is not the original"
    );
}

// ---------------------------------------------------------------------------
// Defect 10: readers racing a writer.

/// How many saves the writer makes while the reader follows.
const RACING_SAVES: u64 = 300;

/// Defect 10: while a writer saves (max_to_keep 1, so every save sweeps the
/// previous checkpoint), a read-only manager's reload + restore always
/// restores a checkpoint, and `latest_checkpoint` with checksums always
/// finds one. The loops are bounded by the writer's number of saves.
#[test]
fn a_reader_racing_a_writer_always_restores_a_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().to_path_buf();
    let (committed, first_commit) = mpsc::channel();
    let writer_dir = dir.clone();
    let writer = thread::spawn(move || {
        let journal = Shared::default();
        let mut manager = open(&writer_dir, MaxToKeep::Last(1), &journal);
        manager.save(None, true).unwrap();
        committed.send(()).unwrap();
        for _ in 1..RACING_SAVES {
            manager.save(None, true).unwrap();
        }
    });
    first_commit.recv().expect("the writer's first save failed");

    let reader_journal = Shared::default();
    let mut reader = open_reader(&dir, &reader_journal);
    let checksums = LatestOptions {
        verification: Verification::Checksums,
        ..LatestOptions::default()
    };
    let mut failures: BTreeMap<String, (usize, String)> = BTreeMap::new();
    let mut fail = |what: &str, detail: String| {
        let entry = failures.entry(what.to_owned()).or_insert((0, detail));
        entry.0 += 1;
    };
    let mut rounds = 0;
    loop {
        let writer_done = writer.is_finished();
        rounds += 1;
        reader.reload().unwrap();
        match reader.restore_or_initialize() {
            Ok(Some(_)) => {}
            Ok(None) => fail("restore found no checkpoint", String::new()),
            Err(err) => fail(&format!("restore: {}", kind(&err)), err.to_string()),
        }
        match latest_checkpoint(&dir, checksums, &mut |_| {}) {
            Ok(Some(_)) => {}
            Ok(None) => fail("latest_checkpoint(Checksums): None", String::new()),
            Err(err) => fail(
                &format!("latest_checkpoint: {}", kind(&err)),
                err.to_string(),
            ),
        }
        if writer_done {
            break;
        }
    }
    writer.join().expect("the writer failed");
    assert!(
        failures.is_empty(),
        "in {rounds} reader rounds against {RACING_SAVES} saves, (count, first message): {failures:#?}"
    );
}

fn kind(err: &Error) -> &'static str {
    match err {
        Error::Callback { .. } => "Callback",
        Error::Damaged { .. } => "Damaged",
        Error::Io { .. } => "Io",
        Error::StateCorrupt { .. } => "StateCorrupt",
        _ => "other",
    }
}

// ---------------------------------------------------------------------------
// Defect 11: quadratic open and sweep.

/// Defect 11: a keep-all state of 100,000 checkpoints opens, takes one more
/// save, and lists all 100,001 in order. No time is asserted; on today's
/// quadratic code this test runs for a very long time instead of failing.
#[test]
fn a_state_of_100000_checkpoints_opens_and_saves() {
    const N: u64 = 100_000;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let names: Vec<String> = (1..=N).map(|n| format!("ckpt-{n}")).collect();
    let state = CheckpointState {
        model_checkpoint_path: names.last().unwrap().as_bytes().to_vec(),
        all_model_checkpoint_paths: names.iter().map(|n| n.as_bytes().to_vec()).collect(),
        all_model_checkpoint_timestamps: (1..=N).map(|n| n as f64).collect(),
        last_preserved_timestamp: 0.0,
    };
    fs::write(dir.join("checkpoint"), state.to_text()).unwrap();

    let journal = Shared::default();
    let mut manager = open(dir, MaxToKeep::All, &journal);
    let saved = manager.save(None, true).unwrap();
    assert_eq!(saved, Some(dir.join(format!("ckpt-{}", N + 1))));
    let (latest, entries) = state_entries(dir);
    assert_eq!(latest, format!("ckpt-{}", N + 1));
    let expected: Vec<String> = (1..=N + 1).map(|n| format!("ckpt-{n}")).collect();
    assert!(
        entries == expected,
        "the state does not list ckpt-1..ckpt-{} in order",
        N + 1
    );
}

// ---------------------------------------------------------------------------
// Defect 12: a spurious LOCKED right after close.

const D12: &str = "a_writer_reopens_at_once_while_a_forked_child_lives";

/// Defect 12: a process that forked (a data loader, say) while its writer
/// was open closes the writer and opens a new one at once: the child still
/// running must not hold the lock. In a child process, so that the fork
/// affects no other test.
#[test]
fn a_writer_reopens_at_once_while_a_forked_child_lives() {
    let Some(dir) = child_dir() else {
        let root = tempfile::tempdir().unwrap();
        run_child(D12, root.path());
        return;
    };
    let journal = Shared::default();
    let manager = open(&dir, MaxToKeep::Last(1), &journal);
    // SAFETY: the child only sleeps and exits, both async-signal-safe.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        unsafe {
            libc::sleep(3);
            libc::_exit(0);
        }
    }
    assert!(pid > 0, "fork failed");
    drop(manager);
    let reopened = CheckpointManager::new(
        config(&dir, "ckpt", MaxToKeep::Last(1)),
        callbacks(&journal),
    );
    let mut status = 0;
    // SAFETY: our own child, killed and reaped.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, &mut status, 0);
    }
    if let Err(err) = reopened {
        panic!("reopening right after close, with a forked child alive: {err:?}");
    }
}
