//! `CheckpointManager`: TF's manager over user callbacks, with a durable,
//! verified commit. Policy lives in `policy`, file work in `storage`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::{Callbacks, Config, LogLevel, MaxToKeep};
use crate::error::{Error, Result};
use crate::inspect;
use crate::manifest::{Manifest, Verification, MANIFEST_SUFFIX, PENDING_SUFFIX};
use crate::paths;
use crate::policy::{self, interval_allows_save, Retention};
use crate::state::CheckpointState;
use crate::storage::{self, DirectoryLock, Integrity, TENSOR_FILE_SUFFIX};
use crate::tensors::{DType, TensorRegistry};

/// Decides when to save, names checkpoints, keeps and deletes them, and
/// records them in the directory's `checkpoint` state file.
///
/// Checkpoint paths are kept as the state file writes them, relative to
/// the directory (`ckpt-3`), and joined onto it when given out.
pub struct CheckpointManager {
    config: Config,
    callbacks: Callbacks,
    retention: Retention,
    latest: Option<PathBuf>,
    save_counter: u64,
    last_checkpoint_step: Option<i64>,
    /// Host buffers the built-in saver writes to `<prefix>.safetensors`.
    tensors: TensorRegistry,
    /// Held by writers for the manager's life; `None` when read-only.
    _lock: Option<DirectoryLock>,
}

impl std::fmt::Debug for CheckpointManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointManager")
            .field("config", &self.config)
            .field("retention", &self.retention)
            .field("latest", &self.latest)
            .field("save_counter", &self.save_counter)
            .finish_non_exhaustive()
    }
}

impl CheckpointManager {
    /// Opens a manager on `config.directory` and recovers the retention
    /// state from its state file as TF does. A writer creates the
    /// directory, takes its lock (failing with `Error::Locked` if another
    /// manager has it), and removes what interrupted saves left behind.
    /// A read-only manager touches nothing.
    pub fn new(config: Config, callbacks: Callbacks) -> Result<Self> {
        config.validate(&callbacks)?;
        let mut manager = CheckpointManager {
            last_checkpoint_step: config.last_checkpoint_step,
            config,
            callbacks,
            retention: Retention::fresh(0.0),
            latest: None,
            save_counter: 0,
            tensors: TensorRegistry::default(),
            _lock: None,
        };
        // Read first, so that a failing clock creates nothing on disk.
        let now = manager.now()?;
        if !manager.config.read_only {
            storage::create_directory(&manager.config.directory)?;
            manager._lock = Some(DirectoryLock::acquire(&manager.config.directory)?);
        }
        manager.load_state(now)?;
        if !manager.config.read_only {
            manager.finish_interrupted_writes()?;
        }
        manager.save_counter = manager.highest_known_number()?;
        Ok(manager)
    }

    /// Rebuilds the retention state from the state file at time `now`.
    fn load_state(&mut self, now: f64) -> Result<()> {
        let directory = self.config.directory.clone();
        let Some(state) = storage::read_state(&directory)? else {
            self.retention = Retention::fresh(now);
            self.latest = None;
            return Ok(());
        };
        let entry = |bytes: &[u8]| paths::state_entry(&directory, &paths::path_from_bytes(bytes));
        let entries = state
            .all_model_checkpoint_paths
            .iter()
            .map(|p| entry(p))
            .collect();
        let (retention, clock_went_backwards) = Retention::recover(
            entries,
            &state.all_model_checkpoint_timestamps,
            state.last_preserved_timestamp,
            now,
        );
        if clock_went_backwards {
            self.warn(&format!(
                "the clock ({now}) is behind the last preserved checkpoint's time ({}); \
                 recovered checkpoints get the current time so that none is deleted early",
                state.last_preserved_timestamp
            ));
        }
        self.retention = retention;
        self.latest = Some(entry(&state.model_checkpoint_path));
        Ok(())
    }

    /// Re-reads the state file: how a read-only manager sees the
    /// checkpoints another process saved since it opened.
    pub fn reload(&mut self) -> Result<()> {
        let now = self.now()?;
        self.load_state(now)?;
        self.save_counter = self.save_counter.max(self.highest_known_number()?);
        Ok(())
    }

    /// Removes checkpoints that carry a pending marker and that the state
    /// file does not name: saves interrupted before their commit, and
    /// swept checkpoints whose deletion was interrupted. Removes temporary
    /// files of interrupted state or manifest writes too. Only files of
    /// this manager's own naming are touched.
    fn finish_interrupted_writes(&mut self) -> Result<()> {
        let directory = self.config.directory.clone();
        let name = self.config.checkpoint_name.clone();
        storage::remove_temporary_state_files(&directory)?;
        let committed: HashSet<&Path> = self
            .latest
            .iter()
            .map(PathBuf::as_path)
            .chain(
                self.retention
                    .managed()
                    .iter()
                    .map(|(entry, _)| entry.as_path()),
            )
            .collect();
        let mut interrupted = Vec::new();
        for number in storage::numbers_on_disk(&directory, &name, PENDING_SUFFIX)? {
            let prefix = paths::checkpoint_prefix(&directory, &name, number);
            let entry = Path::new(prefix.file_name().expect("a prefix ends in a file name"));
            if committed.contains(entry) {
                storage::clear_pending(&prefix)?;
            } else {
                interrupted.push(prefix);
            }
        }
        for prefix in interrupted {
            self.warn(&format!(
                "removing '{}': it was being saved or deleted when the last writer stopped",
                prefix.display()
            ));
            storage::delete_checkpoint(&prefix)?;
        }
        let manifest_temp = format!("{MANIFEST_SUFFIX}.tmp");
        for number in storage::numbers_on_disk(&directory, &name, &manifest_temp)? {
            let prefix = paths::checkpoint_prefix(&directory, &name, number);
            storage::remove_file(&paths::with_suffix(&prefix, &manifest_temp))?;
        }
        Ok(())
    }

    /// The number the next unnumbered save must exceed: the highest number
    /// in the state file (under any name) or on disk under this name.
    fn highest_known_number(&self) -> Result<u64> {
        let listed = self
            .latest
            .iter()
            .chain(self.retention.managed().iter().map(|(entry, _)| entry))
            .filter_map(|entry| paths::trailing_number(entry));
        let on_disk =
            storage::highest_number_on_disk(&self.config.directory, &self.config.checkpoint_name)?;
        Ok(listed.chain(on_disk).max().unwrap_or(0))
    }

    pub fn directory(&self) -> &Path {
        &self.config.directory
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The number of successful saves, continued from the highest checkpoint
    /// number found when the manager opened.
    pub fn save_counter(&self) -> u64 {
        self.save_counter
    }

    pub fn checkpoint_interval(&self) -> Option<i64> {
        self.config.checkpoint_interval
    }

    /// The newest checkpoint's prefix, as the state file records it.
    pub fn latest_checkpoint(&self) -> Option<PathBuf> {
        self.latest.as_deref().map(|entry| self.full_path(entry))
    }

    /// The managed checkpoints, oldest first. Preserved ones are not listed.
    pub fn checkpoints(&self) -> Vec<PathBuf> {
        self.retention
            .managed()
            .iter()
            .map(|(entry, _)| self.full_path(entry))
            .collect()
    }

    fn full_path(&self, entry: &Path) -> PathBuf {
        self.config.directory.join(entry)
    }

    /// Saves a checkpoint numbered `checkpoint_number`, or the save
    /// counter's next value. Returns its prefix, or `None` when the interval
    /// gate skipped it. On any error nothing is committed and the manager's
    /// state is as before.
    pub fn save(
        &mut self,
        checkpoint_number: Option<u64>,
        check_interval: bool,
    ) -> Result<Option<PathBuf>> {
        if self.config.read_only {
            return Err(Error::ReadOnly);
        }
        let mut step = self.last_checkpoint_step;
        let mut current = None;
        if let Some(interval) = self.config.checkpoint_interval {
            let now_step = self.current_step()?;
            if !interval_allows_save(interval, step, now_step, check_interval) {
                return Ok(None);
            }
            step = Some(now_step);
            current = step;
        } else if self.callbacks.step_counter.is_some() {
            current = Some(self.current_step()?);
        }
        let counter = self
            .save_counter
            .checked_add(1)
            .ok_or_else(|| Error::invalid("the save counter is at its maximum"))?;
        let number = checkpoint_number.unwrap_or(counter);
        let directory = self.config.directory.clone();
        let prefix = paths::checkpoint_prefix(&directory, &self.config.checkpoint_name, number);
        let entry = PathBuf::from(prefix.file_name().expect("a prefix ends in a file name"));

        let existed = storage::checkpoint_exists(&prefix)?;
        self.write_checkpoint(&prefix, number, current)
            .inspect_err(|_| abandon(&prefix, existed))?;
        let mut retention = self.retention.clone();
        let recorded = self.now().map(|now| retention.record(entry.clone(), now));
        // Decided before the commit, so that the one state file written
        // already leaves them out; their markers let recovery on open
        // finish the deletion if it is interrupted.
        let swept = retention.sweep(
            self.max_to_keep(),
            self.config.keep_checkpoint_every_n_hours,
        );
        let doomed = self.deletable(&swept.delete);
        let committed = recorded
            .and_then(|()| storage::mark_pending_all(&doomed))
            // The commit point: once the rename is done the checkpoint is the latest.
            .and_then(|()| storage::replace_state(&directory, &state_for(&entry, &retention)));
        if let Err(err) = committed {
            abandon(&prefix, existed);
            // Still named by the old state file: they stay, unmarked.
            doomed
                .iter()
                .for_each(|old| drop(storage::clear_pending(old)));
            return Err(err);
        }
        self.save_counter = counter;
        self.last_checkpoint_step = step;
        self.latest = Some(entry);
        self.retention = retention;
        // Until the directory is synced the old state file may come back
        // after a power loss, so nothing it names may be deleted yet.
        if let Err(err) = storage::sync_directory(&directory) {
            self.warn(&format!(
                "{err}; '{}' is committed, old checkpoints are deleted when a manager next opens",
                prefix.display()
            ));
            return Ok(Some(prefix));
        }
        if let Err(err) = storage::clear_pending(&prefix) {
            self.warn(&format!("{err}; it is cleared when a manager next opens"));
        }
        for old in &doomed {
            self.delete_swept(old);
        }
        Ok(Some(prefix))
    }

    /// The prefixes of swept entries that may be deleted: only those
    /// directly inside the directory; the others are warned about.
    fn deletable(&mut self, entries: &[PathBuf]) -> Vec<PathBuf> {
        let mut prefixes = Vec::new();
        for entry in entries {
            if paths::is_plain_file_name(entry) {
                prefixes.push(self.full_path(entry));
            } else {
                self.warn(&format!(
                    "not deleting '{}': it is not directly inside the checkpoint directory",
                    entry.display()
                ));
            }
        }
        prefixes
    }

    /// Marks the save as pending, runs the save callback and writes the
    /// registered tensors, records the files in the manifest and makes
    /// everything durable.
    fn write_checkpoint(&mut self, prefix: &Path, number: u64, step: Option<i64>) -> Result<()> {
        if self.callbacks.save.is_none() && self.tensors.is_empty() {
            return Err(Error::invalid(
                "no save callback is set and no tensor is registered",
            ));
        }
        storage::mark_pending(prefix)?;
        if let Some(save) = self.callbacks.save.as_mut() {
            save(prefix, number).map_err(Error::callback("save"))?;
        }
        // Written after the callback, so the CRC computed on the way is the
        // file's even if the callback wrote the same name.
        let mut known = Vec::new();
        if !self.tensors.is_empty() {
            let mut metadata =
                BTreeMap::from([("checkpoint_number".to_owned(), number.to_string())]);
            if let Some(step) = step {
                metadata.insert("step".to_owned(), step.to_string());
            }
            let path = paths::with_suffix(prefix, TENSOR_FILE_SUFFIX);
            known.push(storage::write_tensor_file(
                &path,
                TENSOR_FILE_SUFFIX,
                &self.tensors,
                &metadata,
            )?);
        }
        let files = storage::checkpoint_files(prefix)?;
        let records = storage::describe_checkpoint(prefix, &files, &known)?;
        let manifest = storage::write_manifest(prefix, &Manifest::new(number, records))?;
        storage::sync_checkpoint(prefix, files.iter().chain([&manifest]))
    }

    /// Registers a host buffer for the built-in saver: every save writes
    /// it to `<prefix>.safetensors`, every restore reads it back.
    ///
    /// # Safety
    /// `data` must stay valid for reads and writes of the tensor's bytes,
    /// from any thread that uses the manager, until the tensor is
    /// unregistered or the manager dropped; nothing else may write it
    /// during a save or read it during a restore.
    pub unsafe fn register_tensor(
        &mut self,
        name: &str,
        dtype: DType,
        shape: &[u64],
        data: *mut u8,
    ) -> Result<()> {
        self.tensors.register(name, dtype, shape, data)
    }

    pub fn unregister_tensor(&mut self, name: &str) -> Result<()> {
        self.tensors.unregister(name)
    }

    fn max_to_keep(&self) -> Option<usize> {
        match self.config.max_to_keep {
            Some(MaxToKeep::Last(n)) => Some(n),
            Some(MaxToKeep::All) | None => None,
        }
    }

    /// Deletes a checkpoint the sweep dropped, with the delete callback if
    /// one is set. A failure is a warning: the new checkpoint is committed
    /// already, and the pending marker left behind lets the next open
    /// finish the deletion.
    fn delete_swept(&mut self, prefix: &Path) {
        let result = match self.callbacks.delete.as_mut() {
            Some(delete) => delete(prefix)
                .map_err(Error::callback("delete"))
                .and_then(|()| storage::clear_pending(prefix)),
            None => storage::delete_checkpoint(prefix),
        };
        if let Err(err) = result {
            self.warn(&format!("could not delete '{}': {err}", prefix.display()));
        }
    }

    fn verification(&self) -> Verification {
        if self.config.verify_checksums {
            Verification::Checksums
        } else {
            Verification::Sizes
        }
    }

    /// Checks a checkpoint (the latest when `prefix` is `None`) against its
    /// manifest.
    pub fn verify(&self, prefix: Option<&Path>, verification: Verification) -> Result<Integrity> {
        let prefix = match prefix {
            Some(prefix) => prefix.to_path_buf(),
            None => self
                .latest_checkpoint()
                .ok_or_else(|| Error::invalid("there is no latest checkpoint to verify"))?,
        };
        inspect::verify_checkpoint(&prefix, verification)
    }

    /// Restores the newest intact checkpoint and returns its prefix: the
    /// latest, or, when it is damaged, the newest older one that verifies
    /// (with a warning). With no checkpoint, runs the init callback (if
    /// any) and returns `None`. `Error::Damaged` when none is intact.
    pub fn restore_or_initialize(&mut self) -> Result<Option<PathBuf>> {
        let Some(latest) = self.latest_checkpoint() else {
            if let Some(init) = self.callbacks.init.as_mut() {
                init().map_err(Error::callback("init"))?;
            }
            return Ok(None);
        };
        if self.callbacks.restore.is_none() && self.tensors.is_empty() {
            return Err(Error::invalid(
                "no restore callback is set and no tensor is registered",
            ));
        }
        let unlisted = storage::numbers_on_disk(
            &self.config.directory,
            &self.config.checkpoint_name,
            MANIFEST_SUFFIX,
        )?;
        let unlisted = unlisted.into_iter().rev().map(|number| {
            paths::checkpoint_prefix(&self.config.directory, &self.config.checkpoint_name, number)
        });
        let candidates = policy::fallback_order(&latest, &self.checkpoints(), unlisted);
        let verification = self.verification();
        let tensors = &self.tensors;
        let partial = self.config.partial_restore;
        // The tensor file is read in full anyway: check its CRC32C on the way
        // rather than reading it twice.
        let check_while_reading =
            !tensors.is_empty() && verification == Verification::Checksums && !partial;
        // Set when a damaged tensor file was read into the buffers.
        let mut overwritten_by: Option<PathBuf> = None;
        let mut load = |candidate: &Path| -> Result<Integrity> {
            let (integrity, crc) = if check_while_reading {
                storage::verify_checkpoint_deferring(candidate, TENSOR_FILE_SUFFIX)?
            } else {
                (inspect::verify_checkpoint(candidate, verification)?, None)
            };
            if !tensors.is_empty() {
                let path = paths::with_suffix(candidate, TENSOR_FILE_SUFFIX);
                let read = storage::read_tensor_file(&path, tensors, partial, crc);
                if matches!(read, Err(Error::Damaged { .. })) && crc.is_some() {
                    overwritten_by = Some(candidate.to_path_buf());
                }
                read?;
            }
            Ok(integrity)
        };
        let mut warnings = Vec::new();
        let found =
            inspect::first_usable(&candidates, &mut |w| warnings.push(w.to_owned()), &mut load);
        warnings.iter().for_each(|warning| self.warn(warning));
        let found = match (found, overwritten_by) {
            (Err(Error::TensorMismatch(message)), Some(damaged)) => {
                return Err(Error::TensorMismatch(format!(
                    "{message}; the buffers hold the bytes of the damaged checkpoint '{}'",
                    damaged.display()
                )))
            }
            (found, _) => found?,
        };
        let Some((chosen, integrity)) = found else {
            let reason = warnings.first().map_or("", String::as_str);
            return Err(Error::Damaged {
                prefix: latest,
                detail: format!("no checkpoint is intact ({reason})"),
            });
        };
        if integrity == Integrity::NoManifest {
            self.log(
                LogLevel::Info,
                &format!(
                    "'{}' has no manifest; restoring it unverified",
                    chosen.display()
                ),
            );
        }
        if let Some(restore) = self.callbacks.restore.as_mut() {
            restore(&chosen).map_err(Error::callback("restore"))?;
        }
        if self.config.checkpoint_interval.is_some() {
            self.last_checkpoint_step = Some(self.current_step()?);
        }
        Ok(Some(chosen))
    }

    fn current_step(&mut self) -> Result<i64> {
        let counter = self
            .callbacks
            .step_counter
            .as_mut()
            .expect("validated: an interval comes with a step counter");
        counter().map_err(Error::callback("step_counter"))
    }

    fn now(&mut self) -> Result<f64> {
        let now = match self.callbacks.clock.as_mut() {
            Some(clock) => clock(),
            None => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        };
        if !now.is_finite() {
            return Err(Error::Callback {
                callback: "clock",
                source: format!("it returned {now}, not a finite time").into(),
            });
        }
        Ok(now)
    }

    fn warn(&mut self, message: &str) {
        self.log(LogLevel::Warning, message);
    }

    fn log(&mut self, level: LogLevel, message: &str) {
        match self.callbacks.log.as_mut() {
            Some(log) => log(level, message),
            None if level == LogLevel::Warning => eprintln!("ckpt-manager: warning: {message}"),
            None => {}
        }
    }
}

/// Undoes a save that did not commit: a new checkpoint's files go; an
/// existing one (a number saved again) keeps its files, which its old
/// manifest no longer matches if the save got that far.
fn abandon(prefix: &Path, existed: bool) {
    let _ = if existed {
        storage::clear_pending(prefix)
    } else {
        storage::delete_checkpoint(prefix)
    };
}

/// The state TF would write for this retention, `latest` being the newest
/// managed entry.
fn state_for(latest: &Path, retention: &Retention) -> CheckpointState {
    let (paths, timestamps) = retention
        .managed()
        .iter()
        .map(|(entry, timestamp)| (paths::path_bytes(entry).to_vec(), *timestamp))
        .unzip();
    CheckpointState {
        model_checkpoint_path: paths::path_bytes(latest).to_vec(),
        all_model_checkpoint_paths: paths,
        all_model_checkpoint_timestamps: timestamps,
        last_preserved_timestamp: retention.last_preserved(),
    }
}
