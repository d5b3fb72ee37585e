//! Crash safety and hostile input through the Rust API: recovery on open,
//! the directory lock, read-only managers, verified restore with fallback,
//! and state files that point outside the directory.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ckpt_manager::{
    get_checkpoint_state, latest_checkpoint, verify_checkpoint, Callbacks, CheckpointManager,
    Config, Error, Integrity, LatestOptions, MaxToKeep, Verification,
};

/// What the callbacks did, shared with the test.
#[derive(Default)]
struct Journal {
    restored: Vec<PathBuf>,
    warnings: Vec<String>,
    clock: f64,
}

type Shared = Arc<Mutex<Journal>>;

fn data_file(prefix: &Path) -> PathBuf {
    PathBuf::from(format!("{}.data-00000-of-00001", prefix.display()))
}

/// Saves `<prefix>.index` and a data file of 64 bytes holding the number.
fn callbacks(journal: &Shared) -> Callbacks {
    let (restores, logs, clock) = (journal.clone(), journal.clone(), journal.clone());
    Callbacks::new()
        .on_save(|prefix, number| {
            fs::write(format!("{}.index", prefix.display()), b"index")?;
            Ok(fs::write(data_file(prefix), [number as u8; 64])?)
        })
        .on_restore(move |prefix| {
            fs::read(data_file(prefix))?;
            restores.lock().unwrap().restored.push(prefix.to_path_buf());
            Ok(())
        })
        .log(move |_, message| logs.lock().unwrap().warnings.push(message.to_owned()))
        .clock(move || {
            let mut journal = clock.lock().unwrap();
            journal.clock += 10.0;
            journal.clock
        })
}

fn open_with(
    dir: &Path,
    journal: &Shared,
    configure: impl FnOnce(&mut Config),
) -> Result<CheckpointManager, Error> {
    let mut config = Config::new(dir, MaxToKeep::Last(3)).unwrap();
    configure(&mut config);
    CheckpointManager::new(config, callbacks(journal))
}

fn open(dir: &Path, journal: &Shared) -> CheckpointManager {
    open_with(dir, journal, |_| {}).unwrap()
}

fn saved_three(dir: &Path, journal: &Shared) -> CheckpointManager {
    let mut manager = open(dir, journal);
    for _ in 0..3 {
        manager.save(None, true).unwrap();
    }
    manager
}

#[test]
fn each_checkpoint_has_a_manifest_and_verifies() {
    let root = tempfile::tempdir().unwrap();
    let journal = Shared::default();
    let manager = saved_three(root.path(), &journal);
    let latest = manager.latest_checkpoint().unwrap();
    assert!(support::file_names(root.path()).contains(&"ckpt-3.ckpt-manifest.json".to_owned()));
    assert!(!support::file_names(root.path())
        .iter()
        .any(|name| name.ends_with(".ckpt-pending")));
    assert_eq!(
        manager.verify(None, Verification::Checksums).unwrap(),
        Integrity::Intact
    );
    assert_eq!(
        verify_checkpoint(&latest, Verification::Checksums).unwrap(),
        Integrity::Intact
    );
}

#[test]
fn a_damaged_latest_falls_back_to_the_newest_intact_checkpoint_with_a_warning() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let journal = Shared::default();
    drop(saved_three(dir, &journal));

    // Same size, one byte changed: only the checksum can tell.
    let mut bytes = fs::read(data_file(&dir.join("ckpt-3"))).unwrap();
    bytes[10] ^= 1;
    fs::write(data_file(&dir.join("ckpt-3")), &bytes).unwrap();

    let mut manager = open(dir, &journal);
    assert_eq!(
        manager.restore_or_initialize().unwrap(),
        Some(dir.join("ckpt-2"))
    );
    let warnings = journal.lock().unwrap().warnings.join("\n");
    assert!(
        warnings.contains("ckpt-3' is damaged") && warnings.contains("CRC32C"),
        "{warnings}"
    );
    assert!(warnings.contains("falling back to"), "{warnings}");
    assert!(matches!(
        manager.verify(None, Verification::Checksums),
        Err(Error::Damaged { .. })
    ));
    // Sizes alone do not see it; the module-level call checks sizes by default.
    let sizes_only = LatestOptions::default();
    let mut quiet = |_: &str| {};
    assert_eq!(
        latest_checkpoint(dir, sizes_only, &mut quiet).unwrap(),
        Some(dir.join("ckpt-3"))
    );
    let checksums = LatestOptions {
        verification: Verification::Checksums,
        ..sizes_only
    };
    assert_eq!(
        latest_checkpoint(dir, checksums, &mut quiet).unwrap(),
        Some(dir.join("ckpt-2"))
    );
    let refuse = LatestOptions {
        fallback: false,
        ..checksums
    };
    assert!(matches!(
        latest_checkpoint(dir, refuse, &mut quiet),
        Err(Error::Damaged { .. })
    ));
    drop(manager);

    // Without checksum verification the manager restores what sizes allow.
    let mut unverified = open_with(dir, &journal, |c| c.set_verify_checksums(false)).unwrap();
    assert_eq!(
        unverified.restore_or_initialize().unwrap(),
        Some(dir.join("ckpt-3"))
    );
}

#[test]
fn missing_files_fall_back_and_nothing_intact_is_an_error() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let journal = Shared::default();
    drop(saved_three(dir, &journal));
    fs::remove_file(data_file(&dir.join("ckpt-3"))).unwrap();
    let mut quiet = |_: &str| {};
    assert_eq!(
        latest_checkpoint(dir, LatestOptions::default(), &mut quiet).unwrap(),
        Some(dir.join("ckpt-2"))
    );
    for number in [1, 2] {
        fs::write(data_file(&dir.join(format!("ckpt-{number}"))), b"short").unwrap();
    }
    let mut manager = open(dir, &journal);
    assert!(matches!(
        manager.restore_or_initialize(),
        Err(Error::Damaged { .. })
    ));
    assert!(journal.lock().unwrap().restored.is_empty());
    assert_eq!(
        latest_checkpoint(dir, LatestOptions::default(), &mut quiet).unwrap(),
        None
    );
}

#[test]
fn a_preserved_checkpoint_is_a_fallback_too() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let journal = Shared::default();
    let mut manager = open_with(dir, &journal, |c| {
        c.set_max_to_keep(MaxToKeep::Last(1)).unwrap();
        c.set_keep_checkpoint_every_n_hours(Some(10.0 / 3600.0))
            .unwrap();
    })
    .unwrap();
    for _ in 0..3 {
        manager.save(None, true).unwrap();
    }
    // ckpt-1 and ckpt-2 are preserved, ckpt-3 is the only managed one.
    assert_eq!(manager.checkpoints(), [dir.join("ckpt-3")]);
    fs::remove_file(data_file(&dir.join("ckpt-3"))).unwrap();
    assert_eq!(
        manager.restore_or_initialize().unwrap(),
        Some(dir.join("ckpt-2"))
    );
}

#[test]
fn recovery_on_open_removes_interrupted_saves_and_nothing_else() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let journal = Shared::default();
    drop(saved_three(dir, &journal));
    // An interrupted save of ckpt-5 (staged), one of ckpt-4 and one of
    // model-4 by version 0.1 (marked pending), temporary files, and
    // foreign files.
    fs::create_dir(dir.join("ckpt-5.ckpt-staging")).unwrap();
    for name in [
        "ckpt-5.ckpt-staging/ckpt-5.index",
        "ckpt-4.ckpt-pending",
        "ckpt-4.index",
        "ckpt-4.data-00000-of-00001",
        "checkpoint.tmp0123456789abcdef0123456789abcdef",
        "ckpt-3.ckpt-manifest.json.tmp",
        "ckpt-9.index",
        "model-4.ckpt-pending",
        "notes.txt",
    ] {
        fs::write(dir.join(name), b"x").unwrap();
    }
    let manager = open(dir, &journal);
    let left = support::file_names(dir);
    for gone in [
        "ckpt-5.ckpt-staging",
        "ckpt-4.index",
        "ckpt-4.ckpt-pending",
        "model-4.ckpt-pending",
        "ckpt-3.ckpt-manifest.json.tmp",
    ] {
        assert!(
            !left.contains(&gone.to_owned()),
            "{gone} survived: {left:?}"
        );
    }
    assert!(!left.iter().any(|name| name.starts_with("checkpoint.tmp")));
    for kept in ["ckpt-9.index", "notes.txt", "ckpt-3.ckpt-manifest.json"] {
        assert!(
            left.contains(&kept.to_owned()),
            "{kept} was removed: {left:?}"
        );
    }
    let warnings = journal.lock().unwrap().warnings.join("\n");
    assert!(
        warnings.contains("ckpt-4': it was being saved or deleted"),
        "{warnings}"
    );
    // The hand-made ckpt-9 is never overwritten: the counter continues past it.
    assert_eq!(manager.save_counter(), 9);
}

/// TensorFlow's manager, sharing the directory, sweeps the checkpoints it
/// no longer keeps by deleting their `.index` and `.data` files only, so
/// our manifests of them stay behind. A writer's open removes a manifest
/// whose checkpoint the state file does not name and none of whose files
/// exist; no other: not one with a file left, not one the state file
/// names, not one it cannot read. A reader removes nothing.
#[test]
fn a_manifest_of_a_checkpoint_tf_swept_is_removed_at_open_and_no_other() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let journal = Shared::default();
    drop(saved_three(dir, &journal));
    // TF keeps ckpt-3 only; it swept ckpt-1 whole and ckpt-2's index.
    fs::write(
        dir.join("checkpoint"),
        "model_checkpoint_path: \"ckpt-3\"\nall_model_checkpoint_paths: \"ckpt-3\"\n",
    )
    .unwrap();
    for swept in ["ckpt-1.index", "ckpt-1.data-00000-of-00001", "ckpt-2.index"] {
        fs::remove_file(dir.join(swept)).unwrap();
    }
    // A manifest that cannot be read says nothing of what it owns.
    fs::write(dir.join("ckpt-9.ckpt-manifest.json"), b"not json").unwrap();
    let before = support::file_names(dir);

    drop(open_with(dir, &journal, |c| c.set_read_only(true)).unwrap());
    assert_eq!(support::file_names(dir), before, "a reader removes nothing");
    drop(open(dir, &journal));
    let expected: Vec<String> = before
        .into_iter()
        .filter(|name| name != "ckpt-1.ckpt-manifest.json")
        .collect();
    assert_eq!(support::file_names(dir), expected);
}

#[test]
fn a_second_writer_is_refused_and_a_reader_follows_along() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let journal = Shared::default();
    let mut writer = saved_three(dir, &journal);
    match open_with(dir, &journal, |_| {}) {
        Err(err @ Error::Locked { .. }) => {
            assert!(
                err.to_string()
                    .contains(&format!("process {}", std::process::id())),
                "{err}"
            )
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    let before = support::file_names(dir);
    let mut reader = open_with(dir, &journal, |c| c.set_read_only(true)).unwrap();
    assert_eq!(support::file_names(dir), before, "a reader writes nothing");
    assert_eq!(reader.latest_checkpoint(), Some(dir.join("ckpt-3")));
    assert!(matches!(reader.save(None, true), Err(Error::ReadOnly)));
    writer.save(None, true).unwrap();
    assert_eq!(reader.latest_checkpoint(), Some(dir.join("ckpt-3")));
    reader.reload().unwrap();
    assert_eq!(reader.latest_checkpoint(), Some(dir.join("ckpt-4")));
    assert_eq!(
        reader.restore_or_initialize().unwrap(),
        Some(dir.join("ckpt-4"))
    );
    drop(writer);
    open(dir, &journal);
}

#[test]
fn state_entries_outside_the_directory_are_never_deleted() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("run");
    let outside = root.path().join("outside");
    fs::create_dir_all(&dir).unwrap();
    fs::create_dir_all(outside.join("linked")).unwrap();
    let victims = [
        outside.join("victim-1.index"),
        outside.join("ckpt-2.index"),
        outside.join("linked").join("precious"),
    ];
    for victim in &victims {
        fs::write(victim, b"keep me").unwrap();
    }
    std::os::unix::fs::symlink(outside.join("linked"), dir.join("ckpt-3")).unwrap();
    let absolute = outside.join("ckpt-2");
    fs::write(
        dir.join("checkpoint"),
        format!(
            "model_checkpoint_path: \"ckpt-3\"\n\
             all_model_checkpoint_paths: \"../outside/victim-1\"\n\
             all_model_checkpoint_paths: \"{}\"\n\
             all_model_checkpoint_paths: \"ckpt-3\"\n\
             all_model_checkpoint_timestamps: 1.0\n\
             all_model_checkpoint_timestamps: 2.0\n\
             all_model_checkpoint_timestamps: 3.0\n",
            absolute.display()
        ),
    )
    .unwrap();
    let journal = Shared::default();
    journal.lock().unwrap().clock = 100.0;
    let mut manager = open_with(&dir, &journal, |c| {
        c.set_max_to_keep(MaxToKeep::Last(1)).unwrap()
    })
    .unwrap();
    assert_eq!(manager.checkpoints().len(), 3);
    manager.save(None, true).unwrap();
    assert_eq!(manager.checkpoints(), [dir.join("ckpt-4")]);
    for victim in &victims {
        assert_eq!(
            fs::read(victim).unwrap(),
            b"keep me",
            "{}",
            victim.display()
        );
    }
    assert!(
        fs::symlink_metadata(dir.join("ckpt-3")).is_ok(),
        "a symlink is no file of a checkpoint: it is never deleted"
    );
    let warnings = journal.lock().unwrap().warnings.join("\n");
    assert_eq!(
        warnings
            .matches("not directly inside the checkpoint directory")
            .count(),
        2,
        "{warnings}"
    );
}

#[test]
fn hostile_state_files_are_refused_and_left_alone() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let journal = Shared::default();
    drop(saved_three(dir, &journal));
    let state = dir.join("checkpoint");
    let hostile: [&[u8]; 5] = [
        b"",
        b"\x00\x01\x02\xff\xfe binary",
        b"model_checkpoint_path: \"ckpt-3",
        b"model_checkpoint_path: \"ckpt-3\"\nunknown_field: 1\n",
        b"all_model_checkpoint_paths: \"ckpt-1\"\n",
    ];
    for bytes in hostile {
        fs::write(&state, bytes).unwrap();
        let before = support::file_names(dir);
        let err = open_with(dir, &journal, |_| {}).unwrap_err();
        assert!(matches!(err, Error::StateCorrupt { .. }), "{err}");
        assert!(matches!(
            get_checkpoint_state(dir),
            Err(Error::StateCorrupt { .. })
        ));
        assert_eq!(fs::read(&state).unwrap(), bytes);
        assert_eq!(support::file_names(dir), before);
    }
    // Huge: refused by its size, without reading it.
    let huge = fs::File::create(&state).unwrap();
    huge.set_len(1 << 40).unwrap();
    let err = get_checkpoint_state(dir).unwrap_err();
    assert!(err.to_string().contains("limit"), "{err}");
}

#[test]
fn a_directory_that_is_a_file_or_vanishes_is_an_io_error() {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("not-a-directory");
    fs::write(&file, b"data").unwrap();
    let journal = Shared::default();
    assert!(matches!(
        open_with(&file, &journal, |_| {}),
        Err(Error::Io { .. })
    ));
    assert_eq!(fs::read(&file).unwrap(), b"data");

    let dir = root.path().join("vanishing");
    let mut manager = open(&dir, &journal);
    manager.save(None, true).unwrap();
    fs::remove_dir_all(&dir).unwrap();
    let err = manager.save(None, true).unwrap_err();
    assert!(
        matches!(err, Error::Io { .. }) && err.to_string().contains("vanishing"),
        "{err}"
    );
    assert_eq!(manager.latest_checkpoint(), Some(dir.join("ckpt-1")));
}
