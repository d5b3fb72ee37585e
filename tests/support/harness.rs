//! What the model-based property tests share: a manager in a fresh
//! directory whose save callback writes TF's two files, on a fake clock,
//! with the warnings it logs collected.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ckpt_manager::{Callbacks, CheckpointManager, Config, LogLevel};
use proptest::test_runner::{Config as ProptestConfig, TestCaseError};

pub struct Harness {
    /// The checkpoint directory, inside a temporary directory; it does not
    /// exist until a writer opens on it.
    pub directory: PathBuf,
    clock: Arc<Mutex<f64>>,
    warnings: Arc<Mutex<Vec<String>>>,
    manager: Option<CheckpointManager>,
    _temp: tempfile::TempDir,
}

impl Harness {
    /// No manager yet; the fake clock reads `start` seconds.
    pub fn new(start: f64) -> Self {
        // tmpfs when there is one: the manager fsyncs on every save, which
        // on a busy disk would make the run time depend on the machine's
        // load.
        let shm = Path::new("/dev/shm");
        let temp = if shm.is_dir() {
            tempfile::Builder::new()
                .prefix("ckpt-model")
                .tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .unwrap();
        Harness {
            directory: temp.path().join("run"),
            clock: Arc::new(Mutex::new(start)),
            warnings: Arc::new(Mutex::new(Vec::new())),
            manager: None,
            _temp: temp,
        }
    }

    pub fn now(&self) -> f64 {
        *self.clock.lock().unwrap()
    }

    pub fn advance_clock(&self, seconds: f64) {
        *self.clock.lock().unwrap() += seconds;
    }

    /// Drops the open manager, if any, then opens a new one with `config`.
    pub fn open(&mut self, config: Config) -> Result<(), TestCaseError> {
        self.manager = None;
        let clock = Arc::clone(&self.clock);
        let warnings = Arc::clone(&self.warnings);
        let callbacks = Callbacks::new()
            .on_save(|prefix: &Path, number: u64| {
                for suffix in [".index", ".data-00000-of-00001"] {
                    let mut path = OsString::from(prefix.as_os_str());
                    path.push(suffix);
                    std::fs::write(&path, format!("checkpoint {number}"))?;
                }
                Ok(())
            })
            .clock(move || *clock.lock().unwrap())
            .log(move |level, message| {
                if level == LogLevel::Warning {
                    warnings.lock().unwrap().push(message.to_string());
                }
            });
        let manager = CheckpointManager::new(config, callbacks)
            .map_err(|e| TestCaseError::fail(format!("CheckpointManager::new: {e}")))?;
        self.manager = Some(manager);
        Ok(())
    }

    /// The open manager.
    pub fn manager(&mut self) -> &mut CheckpointManager {
        self.manager.as_mut().expect("a manager is open")
    }

    /// The names in the checkpoint directory.
    /// The directory's entries but the writer's spare staging directory,
    /// which comes and goes with the commit a save takes
    /// (tests/owned_files.rs checks it).
    pub fn files(&self) -> BTreeSet<String> {
        let mut files: BTreeSet<String> = super::file_names(&self.directory).into_iter().collect();
        files.remove("checkpoint.ckpt-spare");
        files
    }

    /// The warnings logged so far, oldest first.
    pub fn warnings(&self) -> Vec<String> {
        self.warnings.lock().unwrap().clone()
    }
}

/// `default_cases` cases, or `PROPTEST_CASES` for a longer search; no
/// regression files in tests/ (a failure prints its case).
pub fn proptest_config(default_cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(default_cases),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

pub fn name_of(number: u64) -> String {
    format!("ckpt-{number}")
}

/// Every file a directory of the model tests must hold: the lock, the
/// state file once written, and each checkpoint's two files and manifest.
pub fn expected_files(
    numbers: impl IntoIterator<Item = u64>,
    state_written: bool,
) -> BTreeSet<String> {
    let mut files: BTreeSet<String> = numbers
        .into_iter()
        .flat_map(|number| {
            let name = name_of(number);
            [
                format!("{name}.index"),
                format!("{name}.data-00000-of-00001"),
                format!("{name}.ckpt-manifest.json"),
            ]
        })
        .collect();
    files.insert("checkpoint.lock".to_owned());
    if state_written {
        files.insert("checkpoint".to_owned());
    }
    files
}
