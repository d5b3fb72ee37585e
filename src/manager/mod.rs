//! `CheckpointManager`: TF's manager over user callbacks: when to save,
//! which number, what to keep. Policy lives in `policy`; the durable steps
//! of a commit in `transaction`; file access in `store`. Split by job:
//! `open` (open, lock, recovery, the state), `save` (deciding and gating a
//! save), `job` (a save's write phase and commit), `background` (saves on
//! the library's thread), `restore`, `report` (what is kept and why,
//! pins, pruning, verification), and `coordination`, the only one that
//! knows about ranks: one process is the 1-rank case of every step.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::background::Worker;
use crate::config::{check_metric_name, Callbacks, ClockFn, Config, LogLevel, MaxToKeep};
use crate::error::{Error, Result};
use crate::inspect;
use crate::integrity;
use crate::layout::deletable_base;
use crate::manifest::{Annotations, ByteString, Metric, Verification};
use crate::paths;
use crate::policy::{Retention, Rules, Traits};
use crate::store::{DirectoryLock, Store};
use crate::tensor_file::TensorSnapshot;
use crate::tensors::{DType, TensorBox, TensorRegistry};

use background::{BackgroundSave, Finished};
use coordination::Ranks;
use save::Pending;
use tiers::Tiers;

pub use crate::transaction::tiers::RemoteStatus;

mod background;
mod coordination;
mod job;
mod open;
mod report;
mod restore;
mod save;
mod tiers;

/// The largest user metadata object a save records, as JSON.
const MAX_METADATA_BYTES: usize = 1 << 20;

/// What one save records beside the checkpoint, and how it is gated.
#[derive(Debug, Clone)]
pub struct SaveArgs {
    /// `None`: the save counter's next value.
    pub checkpoint_number: Option<u64>,
    /// Whether the step and clock intervals may skip the save.
    pub check_interval: bool,
    /// Named values (a validation loss, say); the `keep_best` rule reads
    /// one of them. NaN is recorded and never best.
    pub metrics: BTreeMap<String, f64>,
    /// A JSON object of the user's (recorded with its keys sorted).
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Default for SaveArgs {
    fn default() -> Self {
        SaveArgs {
            checkpoint_number: None,
            check_interval: true,
            metrics: BTreeMap::new(),
            metadata: None,
        }
    }
}

impl SaveArgs {
    /// Records a metric; a name given again replaces its value.
    pub fn set_metric(&mut self, name: &str, value: f64) -> Result<()> {
        check_metric_name(name)?;
        self.metrics.insert(name.to_owned(), value);
        Ok(())
    }

    /// Records `json`, which must be a JSON object of at most 1 MiB.
    pub fn set_metadata_json(&mut self, json: &str) -> Result<()> {
        if json.len() > MAX_METADATA_BYTES {
            return Err(Error::invalid(format!(
                "metadata is {} bytes; at most {MAX_METADATA_BYTES} are recorded",
                json.len()
            )));
        }
        let value: serde_json::Value = serde_json::from_str(json)
            .map_err(|err| Error::invalid(format!("metadata is not valid JSON: {err}")))?;
        match value {
            serde_json::Value::Object(object) => {
                self.metadata = Some(object);
                Ok(())
            }
            _ => Err(Error::invalid("metadata must be a JSON object")),
        }
    }
}

/// What `checkpoint_info` reports; serialises to the JSON the C API gives.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CheckpointInfo {
    pub prefix: ByteString,
    pub number: Option<u64>,
    pub step: Option<i64>,
    /// When it was saved: the state file's time, else the manifest's.
    pub timestamp: Option<f64>,
    pub metrics: BTreeMap<String, Metric>,
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    pub pinned: bool,
    /// On the state file's list.
    pub managed: bool,
    pub latest: bool,
    /// False for a checkpoint TF or another tool wrote: its files are
    /// TF's `.index` and `.data-*` found on disk.
    pub has_manifest: bool,
    pub files: Vec<FileInfo>,
    pub total_size: u64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FileInfo {
    /// The file's name after the prefix.
    pub suffix: ByteString,
    pub size: u64,
}

/// Why a checkpoint of the directory is still there, as `retention` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeepReason {
    /// The state file's latest: always kept.
    Latest,
    /// Among the newest `max_to_keep` managed ones.
    LastN,
    /// Managed under keep-all (`MaxToKeep::All`).
    KeepAll,
    Best,
    Period,
    Pinned,
    /// On the state file's list but no longer managed: older than the last
    /// checkpoint the hours rule preserved (TF never deletes those).
    Unmanaged,
    /// Not on the list, with a manifest: taken off it by the hours rule and
    /// left on disk.
    Preserved,
}

/// A checkpoint of the directory and why it is kept. No reason: a managed
/// one the next sweep drops, or files on disk that nothing lists (TF's).
#[derive(Debug, Clone, PartialEq)]
pub struct RetainedCheckpoint {
    pub prefix: PathBuf,
    pub reasons: Vec<KeepReason>,
}

/// What `prune` took off the state file's list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pruned {
    /// Deleted (or, in a dry run, to be deleted), oldest first.
    pub deleted: Vec<PathBuf>,
    /// Left on disk by the hours rule.
    pub preserved: Vec<PathBuf>,
    /// Dropped from the list but not deleted: not directly inside the
    /// directory.
    pub not_deleted: Vec<PathBuf>,
}

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
    store: Arc<dyn Store>,
    /// The CRC32C of the state file as last read or written.
    state_crc: Option<u32>,
    /// A commit failed after its commit point: recovery finishes it before
    /// the next save or restore.
    unfinished: bool,
    /// The time of the newest save, for `save_interval_seconds`.
    last_save_time: Option<f64>,
    /// Set by `request_save` (from any thread or a signal handler): the
    /// next save goes ahead whatever the intervals say.
    save_requested: Arc<AtomicBool>,
    /// The preemption signals this manager has saved for.
    preemptions_seen: u64,
    /// Callbacks never change after `new`; the save callback is away on
    /// the background thread during a background save.
    has_save_callback: bool,
    /// Started by the first background save.
    worker: Option<Worker<BackgroundSave, Finished>>,
    /// The background save in flight.
    pending: Option<Pending>,
    /// The failure of a background save, until a call returns it.
    background_error: Option<Error>,
    /// The buffer background saves copy the tensors into, kept between
    /// saves.
    snapshot: TensorSnapshot,
    /// The remote tier's uploads, when the options name a remote.
    tiers: Option<Tiers>,
    /// Held by writers for the manager's life; `None` when read-only.
    lock: Option<DirectoryLock>,
}

impl Drop for CheckpointManager {
    /// Waits for the background save in flight, holding the directory's
    /// lock until it ends. Its failure can no longer be returned: it is
    /// logged.
    /// Then stops the uploads after the one in progress, before the lock
    /// goes: what waits is listed for the next open.
    fn drop(&mut self) {
        self.collect(None);
        if let Some(err) = self.background_error.take() {
            self.warn(&format!("the last background save failed: {err}"));
        }
        self.relay_upload_messages();
        self.stop_uploads();
        if self.lock.as_ref().is_some_and(DirectoryLock::is_held_here) {
            crate::transaction::remove_spare(&*self.store);
        }
    }
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
    /// What the retention rules need of a listed checkpoint: its number,
    /// and from its manifest its metric and pin. A checkpoint without a
    /// readable manifest has neither.
    fn traits(&self, entry: &Path) -> Traits {
        let manifest = deletable_base(entry)
            .and_then(|base| integrity::read_manifest(&*self.store, base).ok().flatten());
        let annotations = manifest.map(|m| m.annotations).unwrap_or_default();
        self.traits_of(entry, &annotations)
    }

    fn traits_of(&self, entry: &Path, annotations: &Annotations) -> Traits {
        let metric = self
            .config
            .keep_best
            .as_ref()
            .and_then(|keep| annotations.metrics.get(&keep.metric).map(|metric| metric.0));
        Traits {
            number: paths::trailing_number(entry),
            metric,
            pinned: annotations.pinned,
        }
    }

    /// The retention rules the options set.
    fn rules(&self) -> Rules {
        let max_to_keep = match self.config.max_to_keep {
            Some(MaxToKeep::Last(n)) => Some(n),
            Some(MaxToKeep::All) | None => None,
        };
        Rules {
            max_to_keep,
            keep_every_n_hours: self.config.keep_checkpoint_every_n_hours,
            keep_best: self
                .config
                .keep_best
                .as_ref()
                .map(|keep| (keep.mode, keep.k)),
            keep_period: self.config.keep_period,
        }
    }

    pub fn directory(&self) -> &Path {
        &self.config.directory
    }

    /// This process's rank across the communicator; 0 without one.
    pub fn rank(&self) -> u32 {
        Ranks::of(&self.config).rank()
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
            .map(|m| self.full_path(&m.entry))
            .collect()
    }

    fn full_path(&self, entry: &Path) -> PathBuf {
        self.config.directory.join(entry)
    }

    /// The state-file entry of a checkpoint prefix this manager gave out
    /// (`full_path`), or of any other path to it.
    fn entry_of(&self, prefix: &Path) -> PathBuf {
        match prefix.strip_prefix(&self.config.directory) {
            Ok(entry) if paths::is_plain_file_name(entry) => entry.to_path_buf(),
            // Relative to the working directory, as the directory may be.
            _ => {
                let prefix = std::path::absolute(prefix).unwrap_or_else(|_| prefix.to_path_buf());
                paths::state_entry(&self.config.directory, &prefix)
            }
        }
    }

    /// The flag `request_save` sets, for callers that must set it without
    /// the manager (a signal handler holds no lock).
    pub fn save_request_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.save_requested)
    }

    /// Makes the next save go ahead whatever the intervals say.
    pub fn request_save(&self) {
        self.save_requested.store(true, Ordering::Release);
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
        // SAFETY: the caller's contract is the registry's.
        unsafe { self.tensors.register(name, dtype, shape, data) }
    }

    /// Registers a tensor that is the same on every rank: saved once (by
    /// one rank, the ranks sharing the writing), restored on every rank.
    ///
    /// # Safety
    /// As for `register_tensor`.
    pub unsafe fn register_replicated_tensor(
        &mut self,
        name: &str,
        dtype: DType,
        shape: &[u64],
        data: *mut u8,
    ) -> Result<()> {
        // SAFETY: the caller's contract is the registry's.
        unsafe { self.tensors.register_replicated(name, dtype, shape, data) }
    }

    /// Registers this rank's box `place` of a tensor of `global_shape`;
    /// `data` holds the box row-major. A restore fills the box from
    /// whichever saved boxes overlap it, whatever number of ranks saved
    /// them.
    ///
    /// # Safety
    /// As for `register_tensor`.
    pub unsafe fn register_tensor_slice(
        &mut self,
        name: &str,
        dtype: DType,
        global_shape: &[u64],
        place: TensorBox,
        data: *mut u8,
    ) -> Result<()> {
        // SAFETY: the caller's contract is the registry's.
        unsafe {
            self.tensors
                .register_slice(name, dtype, global_shape, place, data)
        }
    }

    pub fn unregister_tensor(&mut self, name: &str) -> Result<()> {
        self.tensors.unregister(name)
    }

    fn verification(&self) -> Verification {
        if self.config.verify_checksums {
            Verification::Checksums
        } else {
            Verification::Sizes
        }
    }

    /// The time the state file records for a listed checkpoint.
    fn saved_at(&self, prefix: &Path) -> Option<f64> {
        let entry = self.entry_of(prefix);
        self.retention
            .managed()
            .iter()
            .find(|m| m.entry == entry)
            .map(|m| m.timestamp)
    }

    /// The store and base of a checkpoint path: this directory's store for
    /// its own checkpoints, the file system for entries elsewhere.
    fn locate(&self, prefix: &Path) -> Result<(Arc<dyn Store>, OsString)> {
        match (prefix.parent(), prefix.file_name()) {
            (Some(parent), Some(base)) if parent == self.config.directory => {
                Ok((self.store.clone(), base.to_owned()))
            }
            _ => inspect::split_prefix(prefix, &self.config.storage_options),
        }
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
        read_clock(&mut self.callbacks.clock)
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

/// Seconds since the epoch, from the clock callback or the system clock.
fn read_clock(clock: &mut Option<ClockFn>) -> Result<f64> {
    match clock.as_mut() {
        Some(clock) => clock().map_err(Error::callback("clock")),
        None => Ok(SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())),
    }
}

/// The state file TF would write for this retention, `latest` being the
/// newest managed entry.
pub(crate) fn state_for(latest: &Path, retention: &Retention) -> Vec<u8> {
    let managed = retention.managed();
    crate::state::state_text(
        paths::path_bytes(latest),
        managed.iter().map(|m| paths::path_bytes(&m.entry)),
        managed.iter().map(|m| m.timestamp),
        retention.last_preserved(),
    )
}
