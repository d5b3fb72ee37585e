//! Regression tests for the defects of issue 8 ("One transaction per
//! commit"). Each test is named after its defect (`d1_` … `d12_`), reproduces
//! it through the public Rust API, and asserts the behaviour the new commit
//! protocol promises:
//!
//! - a checkpoint's files are exactly those its manifest
//!   (`<prefix>.ckpt-manifest.json`) lists; a checkpoint without a manifest
//!   (written by TF) owns only `P.index` and `P.data-NNNNN-of-NNNNN`;
//!   nothing else is ever deleted;
//! - a re-save of an existing number leaves the previous checkpoint of that
//!   number restorable byte for byte until it commits;
//! - only regular files the checkpoint owns are ever opened, so nothing
//!   blocks and nothing outside the directory is read.
//!
//! Save callbacks always write relative to the prefix they are given: the
//! new design may hand them a staging prefix instead of `<dir>/ckpt-N`.
//!
//! Nothing here may hang. A call that could block on a FIFO runs on a helper
//! thread and the test waits at most `HANG_LIMIT` for it (the thread is left
//! behind if it blocks). A call that could spin forever (reading
//! `/dev/zero`), or that must run with process-wide settings (an
//! `RLIMIT_FSIZE`, a `fork`), runs in a child process: this test executable
//! run again on one test, which is killed when it runs over its limit.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ckpt_manager::{
    get_checkpoint_state, latest_checkpoint, remove_checkpoint, verify_checkpoint, CallbackError,
    Callbacks, CheckpointManager, CheckpointState, Config, DType, Error, Integrity, LatestOptions,
    MaxToKeep, Verification,
};

/// How long a call that must not block may take before the test fails.
const HANG_LIMIT: Duration = Duration::from_secs(10);
/// How long a child process may run (it starts a process and may write MiBs).
const CHILD_LIMIT: Duration = Duration::from_secs(30);
/// Set (to a directory) in a child process run by `run_child`.
const CHILD_ENV: &str = "CKPT_DEFECTS_CHILD";

// ---------------------------------------------------------------------------
// Files of a checkpoint.

fn file(prefix: &Path, suffix: &str) -> PathBuf {
    let mut path = prefix.as_os_str().to_owned();
    path.push(suffix);
    PathBuf::from(path)
}

fn index_file(prefix: &Path) -> PathBuf {
    file(prefix, ".index")
}

fn data_file(prefix: &Path) -> PathBuf {
    file(prefix, ".data-00000-of-00001")
}

fn manifest_file(prefix: &Path) -> PathBuf {
    file(prefix, ".ckpt-manifest.json")
}

/// The data file's contents for checkpoint `number`.
fn payload(number: u64) -> Vec<u8> {
    format!("weights of checkpoint {number}\n")
        .repeat(16)
        .into_bytes()
}

/// Writes a checkpoint as TF lays it out: `<prefix>.index` and one data file.
fn write_tf_files(prefix: &Path, index: &[u8], data: &[u8]) -> std::io::Result<()> {
    fs::write(index_file(prefix), index)?;
    fs::write(data_file(prefix), data)
}

/// A file's contents as text, or "<missing>", for readable assertions.
fn contents(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => "<missing>".to_owned(),
    }
}

fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

// ---------------------------------------------------------------------------
// Managers with callbacks that record what they did.

#[derive(Default)]
struct Journal {
    /// Each restore: the prefix and the data file's bytes.
    restored: Vec<(PathBuf, Vec<u8>)>,
    warnings: Vec<String>,
}

type Shared = Arc<Mutex<Journal>>;

type SaveFn = Box<dyn FnMut(&Path, u64) -> Result<(), CallbackError> + Send>;

/// The usual save: `<prefix>.index` and a data file holding `payload(number)`.
fn good_save() -> SaveFn {
    Box::new(|prefix, number| Ok(write_tf_files(prefix, b"index", &payload(number))?))
}

/// `save`, a restore that reads the data file into the journal (failing when
/// it is missing), and a log that keeps every message.
fn callbacks_with(journal: &Shared, mut save: SaveFn) -> Callbacks {
    let (restores, logs) = (journal.clone(), journal.clone());
    Callbacks::new()
        .on_save(move |prefix, number| save(prefix, number))
        .on_restore(move |prefix| {
            let bytes = fs::read(data_file(prefix))?;
            let mut journal = restores.lock().unwrap();
            journal.restored.push((prefix.to_path_buf(), bytes));
            Ok(())
        })
        .log(move |_, message| logs.lock().unwrap().warnings.push(message.to_owned()))
}

fn callbacks(journal: &Shared) -> Callbacks {
    callbacks_with(journal, good_save())
}

fn config(dir: &Path, name: &str, keep: MaxToKeep) -> Config {
    let mut config = Config::new(dir, keep).unwrap();
    config.set_checkpoint_name(name).unwrap();
    config
}

/// A writer on `dir` with checkpoints named `ckpt`.
fn open(dir: &Path, keep: MaxToKeep, journal: &Shared) -> CheckpointManager {
    open_named(dir, "ckpt", keep, journal)
}

fn open_named(dir: &Path, name: &str, keep: MaxToKeep, journal: &Shared) -> CheckpointManager {
    CheckpointManager::new(config(dir, name, keep), callbacks(journal))
        .unwrap_or_else(|err| panic!("opening a writer on '{}': {err}", dir.display()))
}

fn open_reader(dir: &Path, journal: &Shared) -> CheckpointManager {
    let mut config = config(dir, "ckpt", MaxToKeep::Last(3));
    config.set_read_only(true);
    CheckpointManager::new(config, callbacks(journal)).unwrap()
}

/// `ckpt-1` and `ckpt-2`, saved and committed; the writer is closed.
fn save_two(dir: &Path, journal: &Shared) {
    let mut manager = open(dir, MaxToKeep::Last(3), journal);
    for _ in 0..2 {
        manager.save(None, true).unwrap();
    }
}

fn warnings(journal: &Shared) -> String {
    journal.lock().unwrap().warnings.join("\n")
}

fn last_restored(journal: &Shared) -> (PathBuf, Vec<u8>) {
    let journal = journal.lock().unwrap();
    journal
        .restored
        .last()
        .expect("nothing was restored")
        .clone()
}

// ---------------------------------------------------------------------------
// The state file.

/// Writes the state file as TF would, from (entry, timestamp) pairs,
/// oldest first; no `last_preserved_timestamp`.
fn write_state(dir: &Path, latest: &str, entries: &[(&str, f64)]) {
    let state = CheckpointState {
        model_checkpoint_path: latest.as_bytes().to_vec(),
        all_model_checkpoint_paths: entries.iter().map(|(p, _)| p.as_bytes().to_vec()).collect(),
        all_model_checkpoint_timestamps: entries.iter().map(|&(_, t)| t).collect(),
        last_preserved_timestamp: 0.0,
    };
    fs::write(dir.join("checkpoint"), state.to_text()).unwrap();
}

fn read_state(dir: &Path) -> CheckpointState {
    let bytes = fs::read(dir.join("checkpoint"))
        .unwrap_or_else(|err| panic!("the state file of '{}': {err}", dir.display()));
    CheckpointState::parse(&bytes).unwrap()
}

/// The state file's latest entry and its list, as text.
fn state_entries(dir: &Path) -> (String, Vec<String>) {
    let state = read_state(dir);
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (
        text(&state.model_checkpoint_path),
        state
            .all_model_checkpoint_paths
            .iter()
            .map(|p| text(p))
            .collect(),
    )
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

// ---------------------------------------------------------------------------
// Manifests, edited as JSON: {"files": [{"suffix", "size", "crc32c"}], ...}.

fn read_manifest(prefix: &Path) -> serde_json::Value {
    let bytes = fs::read(manifest_file(prefix))
        .unwrap_or_else(|err| panic!("the manifest of '{}': {err}", prefix.display()));
    serde_json::from_slice(&bytes).unwrap()
}

fn manifest_suffixes(prefix: &Path) -> Vec<String> {
    read_manifest(prefix)["files"]
        .as_array()
        .expect("a manifest lists its files")
        .iter()
        .map(|record| match record["suffix"].as_str() {
            Some(text) => text.to_owned(),
            None => record["suffix"].to_string(), // bytes, as an array
        })
        .collect()
}

fn edit_manifest(prefix: &Path, edit: impl FnOnce(&mut Vec<serde_json::Value>)) {
    let mut manifest = read_manifest(prefix);
    edit(manifest["files"].as_array_mut().unwrap());
    fs::write(
        manifest_file(prefix),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
}

/// Adds a record for `<prefix><suffix>` with the given size and CRC32C.
fn add_manifest_entry(prefix: &Path, suffix: &str, size: u64, crc32c: u32) {
    edit_manifest(prefix, |files| {
        files.push(serde_json::json!({ "suffix": suffix, "size": size, "crc32c": crc32c }))
    });
}

// ---------------------------------------------------------------------------
// Calls that must not block, and child processes.

/// Runs `f` on a helper thread; `finish` waits for its result.
fn start<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Receiver<T> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let _ = sender.send(f());
    });
    receiver
}

/// The result of a `start`ed call, or a test failure naming `what` when it
/// blocks for `HANG_LIMIT` (the thread is left behind).
fn finish<T>(what: &str, receiver: Receiver<T>) -> T {
    match receiver.recv_timeout(HANG_LIMIT) {
        Ok(value) => value,
        Err(RecvTimeoutError::Timeout) => {
            panic!("{what} did not return within {HANG_LIMIT:?}: it blocks")
        }
        Err(RecvTimeoutError::Disconnected) => panic!("{what} panicked"),
    }
}

fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    finish(what, start(f))
}

fn make_fifo(path: &Path) {
    let name = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    let made = unsafe { libc::mkfifo(name.as_ptr(), 0o644) };
    assert_eq!(made, 0, "mkfifo {}", path.display());
}

/// In a child process started by `run_child`: the directory it was given.
fn child_dir() -> Option<PathBuf> {
    std::env::var_os(CHILD_ENV).map(PathBuf::from)
}

/// Runs the test `test` of this executable alone in a child process, with
/// `CHILD_ENV` set to `dir`, and fails unless it passes within
/// `CHILD_LIMIT` (it is killed then).
fn run_child(test: &str, dir: &Path) {
    let child = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let waited = start(move || child.wait_with_output());
    let (output, timed_out): (Output, bool) = match waited.recv_timeout(CHILD_LIMIT) {
        Ok(output) => (output.unwrap(), false),
        Err(_) => {
            // SAFETY: our own child, not yet reaped (its waiter has not returned).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            (waited.recv().unwrap().unwrap(), true)
        }
    };
    let log = format!(
        "--- child stdout\n{}\n--- child stderr\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !timed_out,
        "the child running {test} did not finish within {CHILD_LIMIT:?} (killed); \
         its last step above is the one that hangs\n{log}"
    );
    assert!(
        output.status.success(),
        "the child running {test} failed ({})\n{log}",
        output.status
    );
}

/// A step of a check, printed so that a child's timeout shows where it hung.
fn step(what: &str) {
    eprintln!("checking {what}");
}

// ---------------------------------------------------------------------------
// Defect 1: a failed re-save of an existing number destroys that checkpoint.

/// Defect 1 (callbacks): a save callback that rewrites a committed number and
/// then fails must leave the committed checkpoint intact and restorable.
#[test]
fn d1_a_failed_resave_by_a_callback_keeps_the_previous_checkpoint() {
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

const D1_TENSORS: &str = "d1_a_resave_that_hits_the_file_size_limit_keeps_the_previous_checkpoint";
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
fn d1_a_resave_that_hits_the_file_size_limit_keeps_the_previous_checkpoint() {
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
// Defect 2: another checkpoint name's files are swept.

/// Defect 2: names `model` and `model-1.3b` share a directory. Sweeping
/// `model-1` (here by the `model-1.3b` writer, whose retention covers every
/// entry of the shared state file, as TF's does) must not touch the files of
/// `model-1.3b-1`.
#[test]
fn d2_sweeping_model_1_keeps_the_files_of_model_1_3b_1() {
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
fn d2_the_manifest_of_model_1_lists_only_its_own_files() {
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
fn d3_a_swept_entry_named_checkpoint_keeps_the_state_file_and_the_lock() {
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
fn d4_a_symlinked_lock_file_is_refused_and_its_target_untouched() {
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
fn d5_a_fifo_named_checkpoint_is_state_corrupt_without_blocking() {
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
fn d5_a_manifest_entry_naming_a_fifo_is_damage_without_blocking() {
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
fn d5_a_manifest_entry_outside_the_directory_is_damage() {
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

const D5_DEV_ZERO: &str = "d5_a_manifest_entry_reaching_dev_zero_is_damage_without_reading_it";

/// Defect 5: a manifest entry `/../../../../dev/zero` (enough `..` to reach
/// the root) is damage, found without reading `/dev/zero` forever. Checked
/// in a child process, killed if it spins.
#[test]
fn d5_a_manifest_entry_reaching_dev_zero_is_damage_without_reading_it() {
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
fn d6_a_checkpoint_tf_saved_again_is_the_latest_despite_its_stale_manifest() {
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
fn d6_guard_a_file_truncated_in_place_is_still_damage() {
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
fn d7_a_nul_byte_in_a_state_path_is_state_corrupt_everywhere() {
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
fn d8_remove_checkpoint_with_a_trailing_slash_deletes_nothing() {
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
fn d8_swept_entries_naming_a_file_or_a_directory_delete_nothing() {
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
fn d9_a_manifest_with_no_files_is_damage() {
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
// Defect 10: readers racing a writer.

/// How many saves the writer makes while the reader follows.
const RACING_SAVES: u64 = 300;

/// Defect 10: while a writer saves (max_to_keep 1, so every save sweeps the
/// previous checkpoint), a read-only manager's reload + restore always
/// restores a checkpoint, and `latest_checkpoint` with checksums always
/// finds one. The loops are bounded by the writer's number of saves.
#[test]
fn d10_a_reader_racing_a_writer_always_restores_a_checkpoint() {
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
fn d11_a_state_of_100000_checkpoints_opens_and_saves() {
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

const D12: &str = "d12_a_writer_reopens_at_once_while_a_forked_child_lives";

/// Defect 12: a process that forked (a data loader, say) while its writer
/// was open closes the writer and opens a new one at once: the child still
/// running must not hold the lock. In a child process, so that the fork
/// affects no other test.
#[test]
fn d12_a_writer_reopens_at_once_while_a_forked_child_lives() {
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
