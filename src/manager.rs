//! `CheckpointManager`: TF's manager over user callbacks, with a durable
//! commit. Policy lives in `policy`, file work in `storage`.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::{Callbacks, Config, LogLevel, MaxToKeep};
use crate::error::{Error, Result};
use crate::paths;
use crate::policy::{interval_allows_save, Retention};
use crate::state::CheckpointState;
use crate::storage;

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
    /// Opens a manager on `config.directory`, recovering the retention state
    /// from its state file as TF does. Creates nothing on disk.
    pub fn new(config: Config, callbacks: Callbacks) -> Result<Self> {
        config.validate(&callbacks)?;
        let mut manager = CheckpointManager {
            last_checkpoint_step: config.last_checkpoint_step,
            config,
            callbacks,
            retention: Retention::fresh(0.0),
            latest: None,
            save_counter: 0,
        };
        let now = manager.now()?;
        let directory = manager.config.directory.clone();
        match storage::read_state(&directory)? {
            None => manager.retention = Retention::fresh(now),
            Some(state) => {
                let entry =
                    |bytes: &[u8]| paths::state_entry(&directory, &paths::path_from_bytes(bytes));
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
                    manager.warn(&format!(
                        "the clock ({now}) is earlier than the last preserved checkpoint's time ({}); \
                         recovered checkpoints get the current time so none is deleted early",
                        state.last_preserved_timestamp
                    ));
                }
                manager.retention = retention;
                manager.latest = Some(entry(&state.model_checkpoint_path));
            }
        }
        manager.save_counter = manager.highest_known_number()?;
        Ok(manager)
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
        let mut step = self.last_checkpoint_step;
        if let Some(interval) = self.config.checkpoint_interval {
            let current = self.current_step()?;
            if !interval_allows_save(interval, step, current, check_interval) {
                return Ok(None);
            }
            step = Some(current);
        }
        let counter = self
            .save_counter
            .checked_add(1)
            .ok_or_else(|| Error::invalid("the save counter is at its maximum"))?;
        let number = checkpoint_number.unwrap_or(counter);
        let directory = self.config.directory.clone();
        let prefix = paths::checkpoint_prefix(&directory, &self.config.checkpoint_name, number);
        self.write_checkpoint(&prefix, number)?;

        let entry = PathBuf::from(prefix.file_name().expect("a prefix ends in a file name"));
        let mut retention = self.retention.clone();
        retention.record(entry.clone(), self.now()?);
        // The commit point: only now is the checkpoint the latest.
        write_state(&directory, &entry, &retention)?;
        self.save_counter = counter;
        self.last_checkpoint_step = step;
        self.latest = Some(entry.clone());

        let swept = retention.sweep(
            self.max_to_keep(),
            self.config.keep_checkpoint_every_n_hours,
        );
        self.retention = retention;
        if !swept.is_empty() {
            for old in &swept.delete {
                self.delete_swept(old);
            }
            // Entries deleted above stay listed until here, so a crash in
            // between leaves them tracked and they are swept again later.
            if let Err(err) = write_state(&directory, &entry, &self.retention) {
                self.warn(&format!(
                    "the state file still lists swept checkpoints: {err}"
                ));
            }
        }
        Ok(Some(prefix))
    }

    /// Runs the save callback and makes its files durable. A failed save's
    /// new files are removed; an existing checkpoint of that number is not.
    fn write_checkpoint(&mut self, prefix: &Path, number: u64) -> Result<()> {
        let Some(save) = self.callbacks.save.as_mut() else {
            return Err(Error::invalid("no save callback is set"));
        };
        storage::create_directory(&self.config.directory)?;
        let existed = storage::checkpoint_exists(prefix)?;
        if let Err(source) = save(prefix, number) {
            if !existed {
                let _ = storage::delete_checkpoint(prefix);
            }
            return Err(Error::Callback {
                callback: "save",
                source,
            });
        }
        storage::sync_checkpoint(prefix)
    }

    fn max_to_keep(&self) -> Option<usize> {
        match self.config.max_to_keep {
            Some(MaxToKeep::Last(n)) => Some(n),
            Some(MaxToKeep::All) | None => None,
        }
    }

    /// Deletes a checkpoint the sweep dropped. Failures are warnings: the
    /// new checkpoint is committed already and must be reported as saved.
    fn delete_swept(&mut self, entry: &Path) {
        if !paths::is_plain_file_name(entry) {
            self.warn(&format!(
                "not deleting '{}': it is not directly inside the checkpoint directory",
                entry.display()
            ));
            return;
        }
        let prefix = self.full_path(entry);
        let result = match self.callbacks.delete.as_mut() {
            Some(delete) => delete(&prefix).map_err(|source| Error::Callback {
                callback: "delete",
                source,
            }),
            None => storage::delete_checkpoint(&prefix),
        };
        if let Err(err) = result {
            self.warn(&format!("could not delete '{}': {err}", prefix.display()));
        }
    }

    /// Restores the latest checkpoint and returns its prefix; with none,
    /// runs the init callback (if any) and returns `None`.
    pub fn restore_or_initialize(&mut self) -> Result<Option<PathBuf>> {
        let Some(latest) = self.latest_checkpoint() else {
            if let Some(init) = self.callbacks.init.as_mut() {
                init().map_err(|source| Error::Callback {
                    callback: "init",
                    source,
                })?;
            }
            return Ok(None);
        };
        let Some(restore) = self.callbacks.restore.as_mut() else {
            return Err(Error::invalid("no restore callback is set"));
        };
        restore(&latest).map_err(|source| Error::Callback {
            callback: "restore",
            source,
        })?;
        if self.config.checkpoint_interval.is_some() {
            self.last_checkpoint_step = Some(self.current_step()?);
        }
        Ok(Some(latest))
    }

    fn current_step(&mut self) -> Result<i64> {
        let counter = self
            .callbacks
            .step_counter
            .as_mut()
            .expect("validated: an interval comes with a step counter");
        counter().map_err(|source| Error::Callback {
            callback: "step_counter",
            source,
        })
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
        match self.callbacks.log.as_mut() {
            Some(log) => log(LogLevel::Warning, message),
            None => eprintln!("ckpt-manager: warning: {message}"),
        }
    }
}

/// Writes the state TF would write for this retention, `latest` being the
/// newest managed entry.
fn write_state(directory: &Path, latest: &Path, retention: &Retention) -> Result<()> {
    let (paths, timestamps) = retention
        .managed()
        .iter()
        .map(|(entry, timestamp)| (paths::path_bytes(entry).to_vec(), *timestamp))
        .unzip();
    let state = CheckpointState {
        model_checkpoint_path: paths::path_bytes(latest).to_vec(),
        all_model_checkpoint_paths: paths,
        all_model_checkpoint_timestamps: timestamps,
        last_preserved_timestamp: retention.last_preserved(),
    };
    storage::write_state(directory, &state)
}
