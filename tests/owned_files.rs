//! What a checkpoint owns, and that nothing else is touched: its files are
//! exactly those its manifest (`<prefix>.ckpt-manifest.json`) lists, and a
//! checkpoint TF wrote (no manifest) owns only `P.index` and
//! `P.data-NNNNN-of-NNNNN`. Sweeps and removals delete nothing else (another
//! checkpoint name's files, the state file, the lock, directories); the
//! manager opens only regular files it owns, so a symlink, a FIFO, a path
//! outside the directory, `/dev/zero` or a NUL byte in a state path is
//! refused or reported as damage, without blocking or reading it; a
//! directory TF and the manager both wrote keeps TF's latest. Each test
//! reproduces a defect of issue 8 ("One transaction per commit").
//!
//! Nothing here may hang: a call that could block on a FIFO runs on a
//! helper thread that the test waits for at most `HANG_LIMIT`, and one that
//! could spin forever runs in a child process (tests/support/checkpoint_dir.rs).

mod support;

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ckpt_manager::{
    get_checkpoint_state, latest_checkpoint, remove_checkpoint, verify_checkpoint,
    CheckpointManager, Error, Integrity, LatestOptions, MaxToKeep, Verification,
};
use support::checkpoint_dir::*;

// ---------------------------------------------------------------------------
// Defect 2: another checkpoint name's files are swept.

/// Defect 2: names `model` and `model-1.3b` share a directory. Sweeping
/// `model-1` (here by the `model-1.3b` writer, whose retention covers every
/// entry of the shared state file, as TF's does) must not touch the files of
/// `model-1.3b-1`.
#[test]
fn sweeping_model_1_keeps_the_files_of_model_1_3b_1() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let journal = Shared::default();
    open_named(dir, "model", MaxToKeep::Last(1), &journal)
        .save(Some(1), true)
        .unwrap();
    // Saving model-1.3b-1 with max_to_keep 1 sweeps model-1.
    open_named(dir, "model-1.3b", MaxToKeep::Last(1), &journal)
        .save(Some(1), true)
        .unwrap();

    let other = dir.join("model-1.3b-1");
    for path in [index_file(&other), data_file(&other), manifest_file(&other)] {
        assert!(
            exists(&path),
            "the sweep of model-1 deleted '{}'",
            path.display()
        );
    }
    assert!(matches!(
        verify_checkpoint(&other, Verification::Checksums),
        Ok(Integrity::Intact)
    ));
    let swept = dir.join("model-1");
    assert!(!exists(&index_file(&swept)) && !exists(&data_file(&swept)));
    assert_eq!(
        state_entries(dir),
        ("model-1.3b-1".to_owned(), vec!["model-1.3b-1".to_owned()])
    );
}

/// Defect 2: the manifest of `model-1`, saved while `model-1.3b-1` exists,
/// lists only `model-1`'s own files, and removing `model-1` leaves
/// `model-1.3b-1` whole.
#[test]
fn the_manifest_of_model_1_lists_only_its_own_files() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let journal = Shared::default();
    open_named(dir, "model-1.3b", MaxToKeep::All, &journal)
        .save(Some(1), true)
        .unwrap();
    open_named(dir, "model", MaxToKeep::All, &journal)
        .save(Some(1), true)
        .unwrap();

    let suffixes = manifest_suffixes(&dir.join("model-1"));
    assert!(
        suffixes.iter().all(|s| !s.contains(".3b-1")),
        "model-1's manifest records model-1.3b-1's files: {suffixes:?}"
    );
    assert!(suffixes.contains(&".index".to_owned()), "{suffixes:?}");

    remove_checkpoint(&dir.join("model-1")).unwrap();
    let other = dir.join("model-1.3b-1");
    for path in [index_file(&other), data_file(&other), manifest_file(&other)] {
        assert!(
            exists(&path),
            "removing model-1 deleted '{}'",
            path.display()
        );
    }
}

// ---------------------------------------------------------------------------
// Defect 3: a state-file entry named `checkpoint`.

/// Defect 3: a hand-edited entry `checkpoint`, swept, must not delete the
/// state file or the lock: afterwards the state names the new checkpoint and
/// a second writer is still refused.
#[test]
fn a_swept_entry_named_checkpoint_keeps_the_state_file_and_the_lock() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let journal = Shared::default();
    open(dir, MaxToKeep::Last(1), &journal)
        .save(Some(1), true)
        .unwrap();
    write_state(dir, "ckpt-1", &[("checkpoint", 1.0), ("ckpt-1", 2.0)]);

    let mut writer = open(dir, MaxToKeep::Last(1), &journal);
    writer.save(Some(2), true).unwrap();

    assert!(
        exists(&dir.join("checkpoint")),
        "the sweep deleted the state file"
    );
    assert!(
        exists(&dir.join("checkpoint.lock")),
        "the sweep deleted the lock file"
    );
    assert_eq!(
        state_entries(dir),
        ("ckpt-2".to_owned(), vec!["ckpt-2".to_owned()])
    );
    let second =
        CheckpointManager::new(config(dir, "ckpt", MaxToKeep::Last(1)), callbacks(&journal));
    assert!(
        matches!(second, Err(Error::Locked { .. })),
        "a second writer opened the directory while the first is open: {second:?}"
    );
    drop(writer);
}

// ---------------------------------------------------------------------------
// Defect 4: a `checkpoint.lock` that is a symlink.

/// Defect 4: a writer must refuse a `checkpoint.lock` that is a symlink, and
/// leave the link's target (outside the directory) as it was.
#[test]
fn a_symlinked_lock_file_is_refused_and_its_target_untouched() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("run");
    fs::create_dir(&dir).unwrap();
    let victim = root.path().join("victim.txt");
    fs::write(&victim, b"precious").unwrap();
    std::os::unix::fs::symlink(&victim, dir.join("checkpoint.lock")).unwrap();

    let journal = Shared::default();
    let opened = CheckpointManager::new(
        config(&dir, "ckpt", MaxToKeep::Last(1)),
        callbacks(&journal),
    );
    assert_eq!(
        contents(&victim),
        "precious",
        "opening a writer wrote through the symlinked lock"
    );
    assert!(
        opened.is_err(),
        "a writer opened with a symlinked lock file"
    );
}

// ---------------------------------------------------------------------------
// Defect 5: hangs and reads outside the directory.

/// `Ok` for `Err(StateCorrupt)` whose message names `state_path`, else what
/// the call gave instead.
fn state_corrupt_naming<T: std::fmt::Debug>(
    state_path: &Path,
    result: Result<T, Error>,
) -> Result<(), String> {
    match result {
        Err(err @ Error::StateCorrupt { .. }) => {
            if err.to_string().contains(&state_path.display().to_string()) {
                Ok(())
            } else {
                Err(format!(
                    "StateCorrupt, but the message does not name the file: {err}"
                ))
            }
        }
        other => Err(format!("{other:?}")),
    }
}

/// Defect 5: a FIFO named `checkpoint` is a corrupt state file for
/// `get_checkpoint_state`, `latest_checkpoint` and a writer's open, at once.
/// The three run side by side; every one that blocks or answers otherwise
/// is reported.
#[test]
fn a_fifo_named_checkpoint_is_state_corrupt_without_blocking() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().to_path_buf();
    let state_path = dir.join("checkpoint");
    make_fifo(&state_path);

    let (d1, d2, d3) = (dir.clone(), dir.clone(), dir.clone());
    let (s1, s2, s3) = (state_path.clone(), state_path.clone(), state_path.clone());
    let calls = [
        (
            "get_checkpoint_state",
            start(move || state_corrupt_naming(&s1, get_checkpoint_state(&d1))),
        ),
        (
            "latest_checkpoint",
            start(move || {
                let latest = latest_checkpoint(&d2, LatestOptions::default(), &mut |_| {});
                state_corrupt_naming(&s2, latest)
            }),
        ),
        (
            "CheckpointManager::new",
            start(move || {
                let journal = Shared::default();
                let config = config(&d3, "ckpt", MaxToKeep::Last(1));
                let opened = CheckpointManager::new(config, callbacks(&journal)).map(drop);
                state_corrupt_naming(&s3, opened)
            }),
        ),
    ];
    let deadline = Instant::now() + HANG_LIMIT;
    let mut wrong = Vec::new();
    for (what, receiver) in calls {
        let left = deadline.saturating_duration_since(Instant::now());
        match receiver.recv_timeout(left) {
            Ok(Ok(())) => {}
            Ok(Err(got)) => wrong.push(format!("{what} gave {got}")),
            Err(_) => wrong.push(format!("{what} blocked for {HANG_LIMIT:?}")),
        }
    }
    assert!(
        wrong.is_empty(),
        "on a FIFO named checkpoint:\n{}",
        wrong.join("\n")
    );
}

/// What a directory with a hostile `ckpt-2` gives: both verifications of
/// `ckpt-2`, `latest_checkpoint`, and a writer's restore. Each call is
/// bounded; the expected answer is damage for `ckpt-2` and `ckpt-1` for the
/// rest.
fn assert_ckpt_2_is_damaged_and_ckpt_1_restored(dir: &Path) {
    let prefix = dir.join("ckpt-2");
    for level in [Verification::Checksums, Verification::Sizes] {
        step(&format!("verify_checkpoint({level:?})"));
        let p = prefix.clone();
        let verified = bounded(&format!("verify_checkpoint({level:?})"), move || {
            verify_checkpoint(&p, level)
        });
        assert!(
            matches!(verified, Err(Error::Damaged { .. })),
            "verify_checkpoint({level:?}) of the hostile ckpt-2: {verified:?}"
        );
    }
    step("latest_checkpoint");
    let d = dir.to_path_buf();
    let latest = bounded("latest_checkpoint", move || {
        latest_checkpoint(&d, LatestOptions::default(), &mut |_| {})
    });
    assert_eq!(latest.unwrap(), Some(dir.join("ckpt-1")));
    step("restore_or_initialize");
    let d = dir.to_path_buf();
    let restored = bounded("restore_or_initialize", move || {
        let journal = Shared::default();
        let restored = open(&d, MaxToKeep::Last(3), &journal).restore_or_initialize();
        restored.map(|chosen| (chosen, journal.lock().unwrap().restored.clone()))
    });
    let (chosen, reads) = restored.unwrap();
    assert_eq!(chosen, Some(dir.join("ckpt-1")));
    assert_eq!(reads, [(dir.join("ckpt-1"), payload(1))]);
}

/// Defect 5: a manifest entry naming a FIFO in the directory is damage,
/// found without blocking; restore falls back to `ckpt-1`.
#[test]
fn a_manifest_entry_naming_a_fifo_is_damage_without_blocking() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let journal = Shared::default();
    save_two(dir, &journal);
    let prefix = dir.join("ckpt-2");
    make_fifo(&file(&prefix, ".fifo"));
    add_manifest_entry(&prefix, ".fifo", 0, 0);
    assert_ckpt_2_is_damaged_and_ckpt_1_restored(dir);
}

/// Defect 5: a manifest entry `/../../etc/hostname` names a file outside
/// the directory (here `<root>/etc/hostname`, reached through the prefix
/// directory `ckpt-2/`); with its true size and CRC32C it is still damage.
#[test]
fn a_manifest_entry_outside_the_directory_is_damage() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("run");
    let journal = Shared::default();
    save_two(&dir, &journal);
    let secret = b"secret-host\n";
    fs::create_dir(root.path().join("etc")).unwrap();
    fs::write(root.path().join("etc/hostname"), secret).unwrap();
    let prefix = dir.join("ckpt-2");
    fs::create_dir(&prefix).unwrap(); // a prefix directory, as a callback may make
    let suffix = "/../../etc/hostname";
    assert_eq!(
        fs::read(file(&prefix, suffix)).unwrap(),
        secret,
        "the path resolves"
    );
    add_manifest_entry(&prefix, suffix, secret.len() as u64, crc32c::crc32c(secret));
    assert_ckpt_2_is_damaged_and_ckpt_1_restored(&dir);
}

const D5_DEV_ZERO: &str = "a_manifest_entry_reaching_dev_zero_is_damage_without_reading_it";

/// Defect 5: a manifest entry `/../../../../dev/zero` (enough `..` to reach
/// the root) is damage, found without reading `/dev/zero` forever. Checked
/// in a child process, killed if it spins.
#[test]
fn a_manifest_entry_reaching_dev_zero_is_damage_without_reading_it() {
    if let Some(dir) = child_dir() {
        assert_ckpt_2_is_damaged_and_ckpt_1_restored(&dir);
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let journal = Shared::default();
    save_two(dir, &journal);
    let prefix = dir.join("ckpt-2");
    fs::create_dir(&prefix).unwrap(); // a prefix directory, as a callback may make
    let depth = prefix.components().count().max(4);
    let suffix = format!("{}/dev/zero", "/..".repeat(depth));
    use std::os::unix::fs::FileTypeExt;
    let target = fs::metadata(file(&prefix, &suffix)).unwrap();
    assert!(
        target.file_type().is_char_device(),
        "{suffix} resolves to /dev/zero"
    );
    add_manifest_entry(&prefix, &suffix, 0, 0);
    run_child(D5_DEV_ZERO, dir);
}

// ---------------------------------------------------------------------------
// Defect 6: mixed TF / ckpt-manager directories.

/// TF's manager saving number 2 again: new index and data files (written
/// aside and renamed, as TF's writer does) and a state file whose timestamp
/// for `ckpt-2` is the time of this save. The old manifest stays.
fn tf_resaves_ckpt_2(dir: &Path, index: &[u8], data: &[u8]) {
    let prefix = dir.join("ckpt-2");
    for (target, bytes) in [(index_file(&prefix), index), (data_file(&prefix), data)] {
        let temp = dir.join("tf_temp_file");
        fs::write(&temp, bytes).unwrap();
        fs::rename(&temp, &target).unwrap();
    }
    let mut state = read_state(dir);
    let position = state
        .all_model_checkpoint_paths
        .iter()
        .position(|p| p == b"ckpt-2")
        .unwrap();
    let timestamp = now();
    assert!(timestamp > state.all_model_checkpoint_timestamps[position]);
    state.all_model_checkpoint_timestamps[position] = timestamp;
    state.model_checkpoint_path = b"ckpt-2".to_vec();
    let temp = dir.join("checkpoint.tf_temp");
    fs::write(&temp, state.to_text()).unwrap();
    fs::rename(&temp, dir.join("checkpoint")).unwrap();
}

/// Defect 6: after TF re-saved `ckpt-2` over ckpt-manager's files, the stale
/// manifest must not demote it: `latest_checkpoint` agrees with
/// `tf.train.latest_checkpoint` (ckpt-2) and a manager restores the new
/// bytes of ckpt-2, warning about the manifest.
#[test]
fn a_checkpoint_tf_saved_again_is_the_latest_despite_its_stale_manifest() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let journal = Shared::default();
    save_two(dir, &journal);
    let new_data = b"tensorflow wrote checkpoint 2 again, another size".repeat(3);
    tf_resaves_ckpt_2(dir, b"tf index", &new_data);

    let latest = latest_checkpoint(dir, LatestOptions::default(), &mut |_| {});
    assert_eq!(
        latest.unwrap(),
        Some(dir.join("ckpt-2")),
        "tf.train.latest_checkpoint's answer"
    );
    let mut manager = open(dir, MaxToKeep::Last(3), &journal);
    assert_eq!(
        manager.restore_or_initialize().unwrap(),
        Some(dir.join("ckpt-2"))
    );
    assert_eq!(last_restored(&journal), (dir.join("ckpt-2"), new_data));
    let warnings = warnings(&journal);
    assert!(
        warnings.to_lowercase().contains("manifest"),
        "no warning about ckpt-2's manifest: {warnings:?}"
    );
}

/// Defect 6, the other side of the rule (passes today): a data file
/// truncated in place, the state file untouched, is still damage and the
/// restore falls back to `ckpt-1`.
#[test]
fn a_file_truncated_in_place_is_still_damage() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let journal = Shared::default();
    save_two(dir, &journal);
    let data = fs::OpenOptions::new()
        .write(true)
        .open(data_file(&dir.join("ckpt-2")))
        .unwrap();
    data.set_len(10).unwrap();
    drop(data);

    let latest = latest_checkpoint(dir, LatestOptions::default(), &mut |_| {});
    assert_eq!(latest.unwrap(), Some(dir.join("ckpt-1")));
    let mut manager = open(dir, MaxToKeep::Last(3), &journal);
    assert_eq!(
        manager.restore_or_initialize().unwrap(),
        Some(dir.join("ckpt-1"))
    );
    assert_eq!(last_restored(&journal), (dir.join("ckpt-1"), payload(1)));
}

// ---------------------------------------------------------------------------
// Defect 7: NUL bytes in state-file paths.

/// Defect 7: a NUL byte (octal escape `\000`) in a state-file path is
/// `StateCorrupt` naming the state file, from every entry point, and the
/// file is left as it is.
#[test]
fn a_nul_byte_in_a_state_path_is_state_corrupt_everywhere() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let journal = Shared::default();
    open(dir, MaxToKeep::Last(3), &journal)
        .save(Some(1), true)
        .unwrap();
    let state_path = dir.join("checkpoint");
    let hostile: [(&str, &[u8]); 2] = [
        (
            "a listed path",
            b"model_checkpoint_path: \"ckpt-1\"\n\
              all_model_checkpoint_paths: \"ckpt\\0001\"\n\
              all_model_checkpoint_paths: \"ckpt-1\"\n\
              all_model_checkpoint_timestamps: 1.0\n\
              all_model_checkpoint_timestamps: 2.0\n",
        ),
        (
            "model_checkpoint_path",
            b"model_checkpoint_path: \"ckpt\\0001\"\n\
              all_model_checkpoint_paths: \"ckpt-1\"\n\
              all_model_checkpoint_timestamps: 1.0\n",
        ),
    ];
    let mut wrong = Vec::new();
    for (case, bytes) in hostile {
        fs::write(&state_path, bytes).unwrap();
        let mut reader = config(dir, "ckpt", MaxToKeep::Last(3));
        reader.set_read_only(true);
        let writer = config(dir, "ckpt", MaxToKeep::Last(3));
        let results = [
            ("get_checkpoint_state", get_checkpoint_state(dir).map(drop)),
            (
                "latest_checkpoint",
                latest_checkpoint(dir, LatestOptions::default(), &mut |_| {}).map(drop),
            ),
            (
                "a read-only CheckpointManager::new",
                CheckpointManager::new(reader, callbacks(&journal)).map(drop),
            ),
            (
                "a writer's CheckpointManager::new",
                CheckpointManager::new(writer, callbacks(&journal)).map(drop),
            ),
        ];
        for (what, result) in results {
            if let Err(got) = state_corrupt_naming(&state_path, result) {
                wrong.push(format!("NUL in {case}: {what} gave {got}"));
            }
        }
        if fs::read(&state_path).unwrap() != bytes {
            wrong.push(format!("NUL in {case}: the state file changed"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

// ---------------------------------------------------------------------------
// Defect 8: deletion beyond checkpoints.

/// Defect 8: `remove_checkpoint("runs/run1/")` (a trailing slash: a
/// directory, not a prefix) is an invalid argument and deletes nothing.
#[test]
fn remove_checkpoint_with_a_trailing_slash_deletes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let runs = root.path().join("runs");
    fs::create_dir_all(runs.join("run1")).unwrap();
    fs::write(runs.join("run1/weights.bin"), b"weights").unwrap();
    fs::write(runs.join("run1.notes"), b"notes").unwrap();

    let removed = remove_checkpoint(Path::new(&format!("{}/run1/", runs.display())));
    for (name, text) in [("run1/weights.bin", "weights"), ("run1.notes", "notes")] {
        assert_eq!(
            contents(&runs.join(name)),
            text,
            "remove_checkpoint deleted '{name}'"
        );
    }
    assert!(
        matches!(removed, Err(Error::InvalidArgument(_))),
        "expected InvalidArgument, got {removed:?}"
    );
}

/// Defect 8: hand-edited state entries naming a regular file (`notes.txt`)
/// and a directory (`subdir`) are swept from the list, but neither they nor
/// anything in or beside them is deleted.
#[test]
fn swept_entries_naming_a_file_or_a_directory_delete_nothing() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let journal = Shared::default();
    open(dir, MaxToKeep::Last(1), &journal)
        .save(Some(1), true)
        .unwrap();
    fs::write(dir.join("notes.txt"), b"my notes").unwrap();
    fs::write(dir.join("notes.txt.bak"), b"old notes").unwrap();
    fs::create_dir(dir.join("subdir")).unwrap();
    fs::write(dir.join("subdir/a"), b"a").unwrap();
    fs::write(dir.join("subdir/b"), b"b").unwrap();
    write_state(
        dir,
        "ckpt-1",
        &[("notes.txt", 1.0), ("subdir", 2.0), ("ckpt-1", 3.0)],
    );

    open(dir, MaxToKeep::Last(1), &journal)
        .save(Some(2), true)
        .unwrap();
    for (name, text) in [
        ("notes.txt", "my notes"),
        ("notes.txt.bak", "old notes"),
        ("subdir/a", "a"),
        ("subdir/b", "b"),
    ] {
        assert_eq!(
            contents(&dir.join(name)),
            text,
            "the sweep deleted '{name}'"
        );
    }
    assert_eq!(
        state_entries(dir),
        ("ckpt-2".to_owned(), vec!["ckpt-2".to_owned()])
    );
}

// ---------------------------------------------------------------------------
// Defect 9: a manifest with an empty file list.

/// Defect 9: a manifest that lists no file cannot vouch for anything: it is
/// damage, at both levels, here over a truncated data file.
#[test]
fn a_manifest_with_no_files_is_damage() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let journal = Shared::default();
    open(dir, MaxToKeep::Last(3), &journal)
        .save(Some(1), true)
        .unwrap();
    let prefix = dir.join("ckpt-1");
    edit_manifest(&prefix, Vec::clear);
    fs::write(data_file(&prefix), b"trunc").unwrap();
    for level in [Verification::Sizes, Verification::Checksums] {
        let verified = verify_checkpoint(&prefix, level);
        assert!(
            matches!(verified, Err(Error::Damaged { .. })),
            "verify_checkpoint({level:?}) with an empty manifest: {verified:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// The writer's spare staging directory (issue 22, item 7).

const SPARE: &str = "checkpoint.ckpt-spare";

fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(path).unwrap().ino()
}

/// New checkpoints create no directory and no state file: the staging
/// directory and the state file written aside are the ones the last save
/// left in the spare, whose old state it holds. A failed save leaves the
/// directory as it was; closing the writer removes the spare.
#[test]
fn new_checkpoints_reuse_the_spare_staging_directory_and_state_file() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let journal = Shared::default();
    let mut manager = open(dir, MaxToKeep::All, &journal);
    manager.save(None, false).unwrap();
    let spare = dir.join(SPARE);
    let (spare_inode, mut states) = (inode(&spare), vec![inode(&dir.join("checkpoint"))]);
    for number in 2..=4 {
        let old_state = fs::read(dir.join("checkpoint")).unwrap();
        manager.save(None, false).unwrap();
        assert_eq!(inode(&spare), spare_inode, "save {number} made a directory");
        assert_eq!(support::file_names(&spare), ["checkpoint"]);
        assert_eq!(fs::read(spare.join("checkpoint")).unwrap(), old_state);
        states.push(inode(&dir.join("checkpoint")));
    }
    // Two inodes take turns as the state file and as the one written aside.
    assert_ne!(states[0], states[1]);
    assert_eq!(states[2..], [states[0], states[1]]);
    assert_eq!(inode(&spare.join("checkpoint")), states[2]);
    assert_eq!(
        state_entries(dir).1,
        ["ckpt-1", "ckpt-2", "ckpt-3", "ckpt-4"]
    );

    drop(manager);
    assert!(!exists(&spare), "closing the writer left the spare");

    let fail = Arc::new(AtomicBool::new(false));
    let failing = fail.clone();
    let mut save = good_save();
    let callbacks = callbacks_with(
        &journal,
        Box::new(move |prefix, number| match failing.load(Ordering::SeqCst) {
            true => Err("the disk is full".into()),
            false => save(prefix, number),
        }),
    );
    let mut manager =
        CheckpointManager::new(config(dir, "ckpt", MaxToKeep::All), callbacks).unwrap();
    manager.save(None, false).unwrap();
    let (before, state) = (
        support::file_names(dir),
        fs::read(dir.join("checkpoint")).unwrap(),
    );
    assert!(before.iter().any(|name| name == SPARE), "{before:?}");
    let spare_inode = inode(&spare);
    fail.store(true, Ordering::SeqCst);
    assert!(manager.save(None, false).is_err());
    assert_eq!(
        support::file_names(dir),
        before,
        "a failed save changed the directory"
    );
    assert_eq!(fs::read(dir.join("checkpoint")).unwrap(), state);
    // Emptied and renamed back, not made again: a full disk allows that.
    assert_eq!(inode(&spare), spare_inode);
    assert_eq!(support::file_names(&spare), Vec::<String>::new());
    fail.store(false, Ordering::SeqCst);
    manager.save(None, false).unwrap();
    assert_eq!(state_entries(dir).1.last().unwrap(), "ckpt-6");
}

/// A spare a dead writer left is removed when the next writer opens,
/// whatever it holds; one that is a symlink is removed, never followed.
#[test]
fn a_dead_writers_spare_goes_at_open_and_a_symlinked_one_is_not_followed() {
    let root = tempfile::tempdir().unwrap();
    let (dir, outside) = (root.path().join("run"), root.path().join("outside"));
    fs::create_dir_all(dir.join(SPARE)).unwrap();
    fs::write(dir.join(SPARE).join("checkpoint"), "stale").unwrap();
    fs::write(dir.join(SPARE).join("ckpt-1.index"), "junk").unwrap();
    let journal = Shared::default();
    let mut manager = open(&dir, MaxToKeep::All, &journal);
    assert!(
        !exists(&dir.join(SPARE)),
        "the open kept a dead writer's spare"
    );
    manager.save(None, false).unwrap();
    assert_eq!(support::file_names(&dir.join(SPARE)), Vec::<String>::new());
    manager.save(None, false).unwrap();
    assert_eq!(support::file_names(&dir.join(SPARE)), ["checkpoint"]);
    drop(manager);

    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("checkpoint"), "not the manager's").unwrap();
    std::os::unix::fs::symlink(&outside, dir.join(SPARE)).unwrap();
    let mut manager = open(&dir, MaxToKeep::All, &journal);
    assert!(!exists(&dir.join(SPARE)));
    std::os::unix::fs::symlink(&outside, dir.join(SPARE)).unwrap();
    manager.save(None, false).unwrap(); // not taken as staging: a new one is made
    assert_eq!(contents(&outside.join("checkpoint")), "not the manager's");
    assert_eq!(support::file_names(&outside), ["checkpoint"]);
    assert_eq!(state_entries(&dir).1, ["ckpt-1", "ckpt-2", "ckpt-3"]);
}

/// Saves that sweep commit through a record; their staging directory is
/// the spare too, and becomes it again once the record is gone.
#[test]
fn saves_that_sweep_reuse_the_spare_staging_directory_too() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let journal = Shared::default();
    let mut manager = open(dir, MaxToKeep::Last(1), &journal);
    manager.save(None, false).unwrap();
    let spare = dir.join(SPARE);
    let spare_inode = inode(&spare);
    for _ in 2..=4 {
        manager.save(None, false).unwrap();
        assert_eq!(
            inode(&spare),
            spare_inode,
            "a sweeping save made a directory"
        );
        assert!(support::file_names(&spare)
            .iter()
            .all(|name| name == "checkpoint"));
    }
    let mut expected = vec!["checkpoint", SPARE, "checkpoint.lock"];
    expected.extend([
        "ckpt-4.ckpt-manifest.json",
        "ckpt-4.data-00000-of-00001",
        "ckpt-4.index",
    ]);
    assert_eq!(support::file_names(dir), expected);
}

/// A copy of the directory made with hard links (`cp -al`) keeps its
/// state file: the save that would write over the swapped-out inode
/// makes a new file instead.
#[test]
fn a_hard_linked_copy_of_the_state_file_is_never_written_over() {
    let root = tempfile::tempdir().unwrap();
    let (dir, copy) = (root.path().join("run"), root.path().join("copy"));
    let journal = Shared::default();
    let mut manager = open(&dir, MaxToKeep::All, &journal);
    manager.save(None, false).unwrap();
    manager.save(None, false).unwrap();
    fs::create_dir(&copy).unwrap();
    fs::hard_link(dir.join("checkpoint"), copy.join("checkpoint")).unwrap();
    let copied = fs::read(copy.join("checkpoint")).unwrap();
    for _ in 3..=5 {
        manager.save(None, false).unwrap();
        assert_eq!(fs::read(copy.join("checkpoint")).unwrap(), copied);
    }
    assert_eq!(
        state_entries(&dir).1,
        ["ckpt-1", "ckpt-2", "ckpt-3", "ckpt-4", "ckpt-5"]
    );
}
