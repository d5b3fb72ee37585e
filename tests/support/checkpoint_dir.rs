//! A checkpoint directory driven through the Rust API, for the tests of
//! what a checkpoint owns and of re-saves and concurrency: checkpoint files
//! as TF lays them out, managers whose callbacks record what they did, the
//! state file and manifests edited by hand, calls that must not block, and
//! a test run again alone in a child process.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ckpt_manager::{
    CallbackError, Callbacks, CheckpointManager, CheckpointState, Config, MaxToKeep,
};

/// How long a call that must not block may take before the test fails.
pub const HANG_LIMIT: Duration = Duration::from_secs(10);
/// How long a child process may run (it starts a process and may write MiBs).
pub const CHILD_LIMIT: Duration = Duration::from_secs(30);
/// Set (to a directory) in a child process run by `run_child`.
pub const CHILD_ENV: &str = "CKPT_TEST_CHILD";

// ---------------------------------------------------------------------------
// Files of a checkpoint.

pub fn file(prefix: &Path, suffix: &str) -> PathBuf {
    let mut path = prefix.as_os_str().to_owned();
    path.push(suffix);
    PathBuf::from(path)
}

pub fn index_file(prefix: &Path) -> PathBuf {
    file(prefix, ".index")
}

pub fn data_file(prefix: &Path) -> PathBuf {
    file(prefix, ".data-00000-of-00001")
}

pub fn manifest_file(prefix: &Path) -> PathBuf {
    file(prefix, ".ckpt-manifest.json")
}

/// The data file's contents for checkpoint `number`.
pub fn payload(number: u64) -> Vec<u8> {
    format!("weights of checkpoint {number}\n")
        .repeat(16)
        .into_bytes()
}

/// Writes a checkpoint as TF lays it out: `<prefix>.index` and one data file.
pub fn write_tf_files(prefix: &Path, index: &[u8], data: &[u8]) -> std::io::Result<()> {
    fs::write(index_file(prefix), index)?;
    fs::write(data_file(prefix), data)
}

/// A file's contents as text, or "<missing>", for readable assertions.
pub fn contents(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => "<missing>".to_owned(),
    }
}

pub fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

// ---------------------------------------------------------------------------
// Managers with callbacks that record what they did.

#[derive(Default)]
pub struct Journal {
    /// Each restore: the prefix and the data file's bytes.
    pub restored: Vec<(PathBuf, Vec<u8>)>,
    pub warnings: Vec<String>,
}

pub type Shared = Arc<Mutex<Journal>>;

pub type SaveFn = Box<dyn FnMut(&Path, u64) -> Result<(), CallbackError> + Send>;

/// The usual save: `<prefix>.index` and a data file holding `payload(number)`.
pub fn good_save() -> SaveFn {
    Box::new(|prefix, number| Ok(write_tf_files(prefix, b"index", &payload(number))?))
}

/// `save`, a restore that reads the data file into the journal (failing when
/// it is missing), and a log that keeps every message.
pub fn callbacks_with(journal: &Shared, mut save: SaveFn) -> Callbacks {
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

pub fn callbacks(journal: &Shared) -> Callbacks {
    callbacks_with(journal, good_save())
}

pub fn config(dir: &Path, name: &str, keep: MaxToKeep) -> Config {
    let mut config = Config::new(dir, keep).unwrap();
    config.set_checkpoint_name(name).unwrap();
    config
}

/// A writer on `dir` with checkpoints named `ckpt`.
pub fn open(dir: &Path, keep: MaxToKeep, journal: &Shared) -> CheckpointManager {
    open_named(dir, "ckpt", keep, journal)
}

pub fn open_named(dir: &Path, name: &str, keep: MaxToKeep, journal: &Shared) -> CheckpointManager {
    CheckpointManager::new(config(dir, name, keep), callbacks(journal))
        .unwrap_or_else(|err| panic!("opening a writer on '{}': {err}", dir.display()))
}

pub fn open_reader(dir: &Path, journal: &Shared) -> CheckpointManager {
    let mut config = config(dir, "ckpt", MaxToKeep::Last(3));
    config.set_read_only(true);
    CheckpointManager::new(config, callbacks(journal)).unwrap()
}

/// `ckpt-1` and `ckpt-2`, saved and committed; the writer is closed.
pub fn save_two(dir: &Path, journal: &Shared) {
    let mut manager = open(dir, MaxToKeep::Last(3), journal);
    for _ in 0..2 {
        manager.save(None, true).unwrap();
    }
}

pub fn warnings(journal: &Shared) -> String {
    journal.lock().unwrap().warnings.join("\n")
}

pub fn last_restored(journal: &Shared) -> (PathBuf, Vec<u8>) {
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
pub fn write_state(dir: &Path, latest: &str, entries: &[(&str, f64)]) {
    let state = CheckpointState {
        model_checkpoint_path: latest.as_bytes().to_vec(),
        all_model_checkpoint_paths: entries.iter().map(|(p, _)| p.as_bytes().to_vec()).collect(),
        all_model_checkpoint_timestamps: entries.iter().map(|&(_, t)| t).collect(),
        last_preserved_timestamp: 0.0,
    };
    fs::write(dir.join("checkpoint"), state.to_text()).unwrap();
}

pub fn read_state(dir: &Path) -> CheckpointState {
    let bytes = fs::read(dir.join("checkpoint"))
        .unwrap_or_else(|err| panic!("the state file of '{}': {err}", dir.display()));
    CheckpointState::parse(&bytes).unwrap()
}

/// The state file's latest entry and its list, as text.
pub fn state_entries(dir: &Path) -> (String, Vec<String>) {
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

pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

// ---------------------------------------------------------------------------
// Manifests, edited as JSON: {"files": [{"suffix", "size", "crc32c"}], ...}.

pub fn read_manifest(prefix: &Path) -> serde_json::Value {
    let bytes = fs::read(manifest_file(prefix))
        .unwrap_or_else(|err| panic!("the manifest of '{}': {err}", prefix.display()));
    serde_json::from_slice(&bytes).unwrap()
}

pub fn manifest_suffixes(prefix: &Path) -> Vec<String> {
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

pub fn edit_manifest(prefix: &Path, edit: impl FnOnce(&mut Vec<serde_json::Value>)) {
    let mut manifest = read_manifest(prefix);
    edit(manifest["files"].as_array_mut().unwrap());
    fs::write(
        manifest_file(prefix),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
}

/// Adds a record for `<prefix><suffix>` with the given size and CRC32C.
pub fn add_manifest_entry(prefix: &Path, suffix: &str, size: u64, crc32c: u32) {
    edit_manifest(prefix, |files| {
        files.push(serde_json::json!({ "suffix": suffix, "size": size, "crc32c": crc32c }))
    });
}

// ---------------------------------------------------------------------------
// Calls that must not block, and child processes.

/// Runs `f` on a helper thread; `finish` waits for its result.
pub fn start<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Receiver<T> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let _ = sender.send(f());
    });
    receiver
}

/// The result of a `start`ed call, or a test failure naming `what` when it
/// blocks for `HANG_LIMIT` (the thread is left behind).
pub fn finish<T>(what: &str, receiver: Receiver<T>) -> T {
    match receiver.recv_timeout(HANG_LIMIT) {
        Ok(value) => value,
        Err(RecvTimeoutError::Timeout) => {
            panic!("{what} did not return within {HANG_LIMIT:?}: it blocks")
        }
        Err(RecvTimeoutError::Disconnected) => panic!("{what} panicked"),
    }
}

pub fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    finish(what, start(f))
}

pub fn make_fifo(path: &Path) {
    let name = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    let made = unsafe { libc::mkfifo(name.as_ptr(), 0o644) };
    assert_eq!(made, 0, "mkfifo {}", path.display());
}

/// In a child process started by `run_child`: the directory it was given.
pub fn child_dir() -> Option<PathBuf> {
    std::env::var_os(CHILD_ENV).map(PathBuf::from)
}

/// Runs the test `test` of this executable alone in a child process, with
/// `CHILD_ENV` set to `dir`, and fails unless it passes within
/// `CHILD_LIMIT` (it is killed then).
pub fn run_child(test: &str, dir: &Path) {
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
pub fn step(what: &str) {
    eprintln!("checking {what}");
}
