//! `CheckpointManager`: TF's manager over user callbacks: when to save,
//! which number, what to keep. Policy lives in `policy`; the durable steps
//! of a commit in `transaction`; file access in `store`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::background::Worker;
use crate::config::{
    check_metric_name, Callbacks, ClockFn, Config, DeleteFn, LogLevel, MaxToKeep, SaveFn,
};
use crate::error::{Error, Result};
use crate::inspect;
use crate::integrity::{self, Integrity};
use crate::layout::{deletable_base, manifest_base, TENSOR_FILE_SUFFIX};
use crate::manifest::{Annotations, ByteString, Metric, Verification};
use crate::paths;
use crate::policy::{
    self, interval_allows_save, time_allows_save, KeptBy, Retention, Rules, SweepOutcome, Traits,
};
use crate::preemption;
use crate::save_job::{JobReport, SaveJob, Tensors};
use crate::state_file::read_state;
use crate::store::{self, DirectoryLock, Store};
use crate::tensor_file::{read_tensor_file, TensorSnapshot};
use crate::tensors::{DType, TensorRegistry};
use crate::transaction;

mod coordination;

/// The largest user metadata object a save records, as JSON.
const MAX_METADATA_BYTES: usize = 1 << 20;

/// How often a read-only manager re-reads a state file that changed under
/// a restore before it gives up.
const READER_RETRIES: usize = 20;

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

/// What the interval gates decided.
enum Gate {
    Closed,
    /// The save goes ahead: the step to record as the last checkpoint's,
    /// and the step counter's value, if any.
    Open {
        step: Option<i64>,
        current: Option<i64>,
    },
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
    /// Held by writers for the manager's life; `None` when read-only.
    _lock: Option<DirectoryLock>,
}

impl Drop for CheckpointManager {
    /// Waits for the background save in flight, holding the directory's
    /// lock until it ends. Its failure can no longer be returned: it is
    /// logged.
    fn drop(&mut self) {
        self.collect(None);
        if let Some(err) = self.background_error.take() {
            self.warn(&format!("the last background save failed: {err}"));
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
    /// Opens a manager on `config.directory` and recovers the retention
    /// state from its state file as TF does. A writer creates the
    /// directory, takes its lock (failing with `Error::Locked` if another
    /// manager has it), and removes what interrupted saves left behind.
    /// A read-only manager touches nothing.
    pub fn new(config: Config, callbacks: Callbacks) -> Result<Self> {
        let store = store::open(&config.directory, &config.storage_options)?;
        Self::with_store(config, callbacks, store)
    }

    pub(crate) fn with_store(
        config: Config,
        callbacks: Callbacks,
        store: Arc<dyn Store>,
    ) -> Result<Self> {
        config.validate(&callbacks)?;
        let mut manager = CheckpointManager {
            store,
            state_crc: None,
            unfinished: false,
            last_save_time: None,
            save_requested: Arc::new(AtomicBool::new(false)),
            preemptions_seen: 0,
            has_save_callback: callbacks.save.is_some(),
            worker: None,
            pending: None,
            background_error: None,
            snapshot: TensorSnapshot::default(),
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
        match manager.config.communicator.clone() {
            Some(communicator) => manager.open_across_ranks(&*communicator.0)?,
            None => manager.take_directory()?,
        }
        manager.load_state(now)?;
        manager.save_counter = manager.highest_known_number()?;
        Ok(manager)
    }

    /// A writer creates the directory, takes its lock and recovers what
    /// interrupted saves left.
    /// On object storage there is no lock: the commit is a conditional
    /// write, which the server must support.
    fn take_directory(&mut self) -> Result<()> {
        if !self.config.read_only {
            if self.config.is_local() {
                crate::store::create_directory(&self.config.directory)?;
            } else {
                self.store.probe_conditional_writes()?;
            }
            self._lock = store::lock(&self.config.directory)?;
            self.recover()?;
        }
        Ok(())
    }

    /// Finishes or removes what interrupted saves left (see `transaction`).
    fn recover(&mut self) -> Result<()> {
        let named: HashSet<Vec<u8>> = match read_state(&*self.store)? {
            Some(file) => std::iter::once(file.state.model_checkpoint_path)
                .chain(file.state.all_model_checkpoint_paths)
                .collect(),
            None => HashSet::new(),
        };
        let (mut warnings, mut failed_deletes) = (Vec::new(), Vec::new());
        let directory = &self.config.directory;
        let delete = &mut self.callbacks.delete;
        let recovered = transaction::recover(
            &*self.store,
            &|base: &OsStr| named.contains(base.as_bytes()),
            &mut |warning| warnings.push(warning.to_owned()),
            // A commit finished here: its dropped checkpoints still get the
            // delete callback, which replaces the built-in deletion.
            &mut |base| {
                let Some(delete) = delete.as_mut() else {
                    return false;
                };
                let prefix = directory.join(base);
                if let Err(err) = delete(&prefix) {
                    failed_deletes.push(format!("could not delete '{}': {err}", prefix.display()));
                }
                true
            },
        );
        warnings.extend(failed_deletes);
        warnings.iter().for_each(|warning| self.warn(warning));
        recovered
    }

    /// After a commit that failed past its commit point: finish it, and
    /// take the state it wrote.
    fn finish_unfinished(&mut self) -> Result<()> {
        if !self.unfinished {
            return Ok(());
        }
        self.recover()?;
        self.unfinished = false;
        // The finished commit may hold a number above the counter.
        self.reload()
    }

    /// Rebuilds the retention state from the state file at time `now`.
    fn load_state(&mut self, now: f64) -> Result<()> {
        let directory = self.config.directory.clone();
        let Some(file) = read_state(&*self.store)? else {
            self.retention = Retention::fresh(now);
            self.latest = None;
            self.state_crc = None;
            return Ok(());
        };
        self.state_crc = Some(file.crc32c);
        let state = file.state;
        let entry = |bytes: &[u8]| paths::state_entry(&directory, &paths::path_from_bytes(bytes));
        let entries = state
            .all_model_checkpoint_paths
            .iter()
            .map(|p| {
                let entry = entry(p);
                let traits = self.traits(&entry);
                (entry, traits)
            })
            .collect();
        let (retention, clock_went_backwards) = Retention::recover(
            entries,
            &state.all_model_checkpoint_timestamps,
            state.last_preserved_timestamp,
            now,
            &self.rules(),
        );
        if clock_went_backwards {
            self.warn(&format!(
                "the clock ({now}) is behind the last preserved checkpoint's time ({}); \
                 recovered checkpoints get the current time so that none is deleted early",
                state.last_preserved_timestamp
            ));
        }
        let latest = entry(&state.model_checkpoint_path);
        self.last_save_time = retention
            .managed()
            .iter()
            .find(|checkpoint| checkpoint.entry == latest)
            .map(|checkpoint| checkpoint.timestamp);
        self.retention = retention;
        self.latest = Some(latest);
        Ok(())
    }

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

    /// Re-reads the state file: how a read-only manager sees the
    /// checkpoints another process saved since it opened.
    pub fn reload(&mut self) -> Result<()> {
        self.settle(true)?;
        let now = self.now()?;
        self.load_state(now)?;
        self.save_counter = self.save_counter.max(self.highest_known_number()?);
        Ok(())
    }

    /// The number the next unnumbered save must exceed: the highest number
    /// in the state file (under any name) or on disk under this name.
    fn highest_known_number(&self) -> Result<u64> {
        let listed = self
            .latest
            .iter()
            .chain(self.retention.managed().iter().map(|m| &m.entry))
            .filter_map(|entry| paths::trailing_number(entry));
        let entries = store::list_root(&*self.store)?;
        let on_disk = entries.iter().filter_map(|entry| {
            paths::own_checkpoint_number(&entry.name, &self.config.checkpoint_name)
        });
        Ok(listed.chain(on_disk).max().unwrap_or(0))
    }

    pub fn directory(&self) -> &Path {
        &self.config.directory
    }

    /// This process's rank across the communicator; 0 without one.
    pub fn rank(&self) -> u32 {
        self.config
            .communicator
            .as_ref()
            .map_or(0, |communicator| communicator.0.rank())
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

    /// Every checkpoint of the directory with the rules that keep it under
    /// this manager's options: the managed ones, oldest first, then the
    /// listed ones no longer managed, then the others on disk
    /// (`inspect::checkpoints_on_disk`), by name.
    pub fn retention_report(&self) -> Result<Vec<RetainedCheckpoint>> {
        let keep_all = self.config.max_to_keep == Some(MaxToKeep::All);
        let managed = self.retention.managed();
        let mut report: Vec<RetainedCheckpoint> = managed
            .iter()
            .zip(self.rules().kept_by(managed))
            .map(|(checkpoint, kept)| {
                let KeptBy {
                    newest: is_newest,
                    best,
                    period,
                    pinned,
                } = kept;
                let newest = if keep_all {
                    KeepReason::KeepAll
                } else {
                    KeepReason::LastN
                };
                let mut reasons = Vec::new();
                if self.latest.as_deref() == Some(checkpoint.entry.as_path()) {
                    reasons.push(KeepReason::Latest);
                }
                for (applies, reason) in [
                    (is_newest, newest),
                    (best, KeepReason::Best),
                    (period, KeepReason::Period),
                    (pinned, KeepReason::Pinned),
                ] {
                    if applies {
                        reasons.push(reason);
                    }
                }
                RetainedCheckpoint {
                    prefix: self.full_path(&checkpoint.entry),
                    reasons,
                }
            })
            .collect();
        let mut seen: HashSet<PathBuf> = report.iter().map(|r| r.prefix.clone()).collect();
        if let Some(file) = read_state(&*self.store)? {
            let directory = &self.config.directory;
            let listed = std::iter::once(&file.state.model_checkpoint_path)
                .chain(&file.state.all_model_checkpoint_paths);
            for bytes in listed {
                let entry = paths::state_entry(directory, &paths::path_from_bytes(bytes));
                let prefix = self.full_path(&entry);
                if seen.insert(prefix.clone()) {
                    let mut reasons = Vec::new();
                    if self.latest.as_deref() == Some(entry.as_path()) {
                        reasons.push(KeepReason::Latest);
                    }
                    reasons.push(KeepReason::Unmanaged);
                    report.push(RetainedCheckpoint { prefix, reasons });
                }
            }
        }
        for prefix in inspect::checkpoints_on_disk(&self.config.directory)? {
            if seen.insert(prefix.clone()) {
                let (store, base) = self.locate(&prefix)?;
                let has_manifest = integrity::read_manifest(&*store, &base)
                    .ok()
                    .flatten()
                    .is_some();
                let reasons = if has_manifest {
                    vec![KeepReason::Preserved]
                } else {
                    Vec::new()
                };
                report.push(RetainedCheckpoint { prefix, reasons });
            }
        }
        Ok(report)
    }

    /// Applies the retention rules now, as the sweep after a save does but
    /// with no new checkpoint: what no rule keeps leaves the state file's
    /// list and is deleted, or preserved by the hours rule; the latest
    /// always stays. The state file is replaced first (atomically and
    /// durably), then the files are deleted, so a crash in between leaves
    /// whole checkpoints that nothing lists, never a listed one half
    /// deleted. With `dry_run` nothing changes and a read-only manager may
    /// ask.
    pub fn prune(&mut self, dry_run: bool) -> Result<Pruned> {
        if !dry_run {
            if self.config.read_only {
                return Err(Error::ReadOnly);
            }
            self.settle(true)?;
            self.finish_unfinished()?;
        }
        let Some(latest) = self.latest.clone() else {
            return Ok(Pruned::default());
        };
        let mut retention = self.retention.clone();
        // The newest position is what keeps the latest through any rules.
        if let Some(position) = retention.managed().iter().position(|m| m.entry == latest) {
            if position + 1 != retention.managed().len() {
                retention.record(retention.managed()[position].clone());
            }
        }
        let SweepOutcome { delete, preserved } = retention.sweep(&self.rules());
        let mut pruned = Pruned {
            preserved: preserved.iter().map(|e| self.full_path(e)).collect(),
            ..Pruned::default()
        };
        let mut to_delete = Vec::new();
        for entry in &delete {
            match deletable_base(entry) {
                Some(base) => {
                    pruned.deleted.push(self.full_path(entry));
                    to_delete.push(base.to_owned());
                }
                None => pruned.not_deleted.push(self.full_path(entry)),
            }
        }
        if dry_run || (delete.is_empty() && preserved.is_empty()) {
            return Ok(pruned);
        }
        let state = state_for(&latest, &retention);
        transaction::replace_state(&*self.store, &state, self.state_crc)?;
        self.retention = retention;
        self.state_crc = Some(crc32c::crc32c(&state));
        for base in to_delete {
            let prefix = self.full_path(Path::new(&base));
            match self.callbacks.delete.as_mut() {
                Some(delete) => delete(&prefix).map_err(Error::callback("delete"))?,
                None => integrity::delete_owned(
                    &*self.store,
                    &integrity::owned_files(&*self.store, &base)?,
                )?,
            }
        }
        Ok(pruned)
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
        self.save_with(&SaveArgs {
            checkpoint_number,
            check_interval,
            ..SaveArgs::default()
        })
    }

    /// `save` with metrics and metadata, which the manifest records.
    pub fn save_with(&mut self, args: &SaveArgs) -> Result<Option<PathBuf>> {
        self.start_save(args, false)
    }

    /// `save_with`, written and committed on the library's background
    /// thread. Decides (intervals, number), runs the prepare callback and
    /// copies the registered tensors on the calling thread, and returns the
    /// prefix the checkpoint will have; it becomes the latest only at its
    /// commit. A save already in flight is waited for first. The save and
    /// delete callbacks run on the background thread. Its failure is
    /// returned, once, by the next call that saves, restores, pins or
    /// waits.
    pub fn save_async(&mut self, args: &SaveArgs) -> Result<Option<PathBuf>> {
        self.start_save(args, true)
    }

    fn start_save(&mut self, args: &SaveArgs, background: bool) -> Result<Option<PathBuf>> {
        if let Some(communicator) = self.config.communicator.clone() {
            if background {
                return Err(Error::invalid(
                    "a save across ranks is blocking: background saves across ranks are not \
                     supported yet",
                ));
            }
            return self.save_across_ranks(&*communicator.0, args);
        }
        let Some(decided) = self.decide(args)? else {
            return Ok(None);
        };
        let Decided {
            prefix,
            job,
            mut pending,
            tensor_metadata,
        } = decided;
        if let Err(err) = self.prepare(job.number) {
            self.restore_request(&pending.request);
            return Err(err);
        }
        if background {
            pending.saved_at = Some(
                self.now()
                    .inspect_err(|_| self.restore_request(&pending.request))?,
            );
            self.submit(job, tensor_metadata, pending)?;
            return Ok(Some(prefix));
        }
        let tensors = if self.tensors.is_empty() {
            Tensors::None
        } else {
            Tensors::Registered(&self.tensors, tensor_metadata)
        };
        let callbacks = &mut self.callbacks;
        let report = job.run(
            callbacks.save.as_mut(),
            tensors,
            callbacks.delete.as_mut(),
            &mut || read_clock(&mut callbacks.clock),
        );
        self.apply(pending, report)?;
        Ok(Some(prefix))
    }

    fn prepare(&mut self, number: u64) -> Result<()> {
        match self.callbacks.prepare.as_mut() {
            Some(prepare) => prepare(number).map_err(Error::callback("prepare")),
            None => Ok(()),
        }
    }

    /// Whether a save goes ahead, and if so everything it needs: the
    /// intervals, the number, what the manifest records, the retention
    /// before it. Claims the save request; `restore_request` gives it back.
    fn decide(&mut self, args: &SaveArgs) -> Result<Option<Decided>> {
        if self.config.read_only {
            return Err(Error::ReadOnly);
        }
        self.settle(false)?;
        if !self.has_save_callback && self.tensors.is_empty() {
            return Err(Error::invalid(
                "no save callback is set and no tensor is registered",
            ));
        }
        let requested = self.save_requested.load(Ordering::Acquire)
            || preemption::signals_received() > self.preemptions_seen;
        let Gate::Open { step, current } = self.gate(args.check_interval, requested)? else {
            if requested {
                // Skipped only because this step is saved already.
                self.claim_request();
            }
            return Ok(None);
        };
        // At most one save in flight.
        self.settle(true)?;
        self.finish_unfinished()?;
        let counter = self
            .save_counter
            .checked_add(1)
            .ok_or_else(|| Error::invalid("the save counter is at its maximum"))?;
        let number = args.checkpoint_number.unwrap_or(counter);
        let annotations = Annotations {
            step: current,
            metrics: args
                .metrics
                .iter()
                .map(|(name, value)| (name.clone(), Metric(*value)))
                .collect(),
            metadata: args.metadata.clone(),
            pinned: false,
        };
        let request = self.claim_request();
        Ok(Some(self.decided(
            number,
            counter,
            step,
            annotations,
            request,
        )))
    }

    /// Everything a save of `number` needs once it is decided: the job
    /// (the retention before it, what its manifest records) and what the
    /// manager records if it commits.
    fn decided(
        &self,
        number: u64,
        counter: u64,
        step: Option<i64>,
        mut annotations: Annotations,
        request: Request,
    ) -> Decided {
        let prefix =
            paths::checkpoint_prefix(&self.config.directory, &self.config.checkpoint_name, number);
        let base = prefix
            .file_name()
            .expect("a prefix ends in a file name")
            .to_owned();
        let entry = PathBuf::from(&base);
        // A number saved again stays pinned: the pin is on its name.
        annotations.pinned = self
            .retention
            .managed()
            .iter()
            .any(|m| m.entry == entry && m.traits.pinned);
        let mut tensor_metadata =
            BTreeMap::from([("checkpoint_number".to_owned(), number.to_string())]);
        if let Some(step) = annotations.step {
            tensor_metadata.insert("step".to_owned(), step.to_string());
        }
        let job = SaveJob {
            store: Arc::clone(&self.store),
            directory: self.config.directory.clone(),
            traits: self.traits_of(&entry, &annotations),
            base,
            number,
            annotations,
            retention: self.retention.clone(),
            rules: self.rules(),
            state_before: self.state_crc,
        };
        let pending = Pending {
            counter,
            step,
            entry,
            saved_at: None,
            request,
        };
        Decided {
            prefix,
            job,
            pending,
            tensor_metadata,
        }
    }

    /// Takes the save request and the preemption signals seen so far: this
    /// save answers them. Returns what to give back if it fails.
    fn claim_request(&mut self) -> Request {
        let request = Request {
            flag: self.save_requested.swap(false, Ordering::AcqRel),
            preemptions_seen: self.preemptions_seen,
        };
        self.preemptions_seen = preemption::signals_received();
        request
    }

    /// A save that failed leaves its request standing.
    fn restore_request(&mut self, request: &Request) {
        if request.flag {
            self.save_requested.store(true, Ordering::Release);
        }
        self.preemptions_seen = self.preemptions_seen.min(request.preemptions_seen);
    }

    /// Snapshots the tensors and hands the job to the background thread,
    /// started at the first background save.
    fn submit(
        &mut self,
        job: SaveJob,
        tensor_metadata: BTreeMap<String, String>,
        pending: Pending,
    ) -> Result<()> {
        if self.worker.is_none() {
            let worker = Worker::start(run_in_background)
                .map_err(|err| Error::io("start the background save thread", err))
                .inspect_err(|_| self.restore_request(&pending.request))?;
            self.worker = Some(worker);
        }
        let mut snapshot = std::mem::take(&mut self.snapshot);
        if self.tensors.is_empty() {
            snapshot = TensorSnapshot::default();
        } else {
            snapshot.take(&self.tensors, &tensor_metadata);
        }
        let background = BackgroundSave {
            job,
            saved_at: pending.saved_at.expect("read before submitting"),
            save: self.callbacks.save.take(),
            delete: self.callbacks.delete.take(),
            snapshot,
        };
        let worker = self.worker.as_mut().expect("started above");
        if let Err(returned) = worker.submit(background) {
            self.take_back(returned.save, returned.delete, returned.snapshot);
            self.restore_request(&pending.request);
            return Err(Error::Panic("the background save thread is gone".into()));
        }
        self.pending = Some(pending);
        Ok(())
    }

    fn take_back(
        &mut self,
        save: Option<SaveFn>,
        delete: Option<DeleteFn>,
        snapshot: TensorSnapshot,
    ) {
        self.callbacks.save = save;
        self.callbacks.delete = delete;
        self.snapshot = snapshot;
    }

    /// Applies a background save that has finished (waiting for it when
    /// `wait`), and returns the failure of one that failed, once.
    fn settle(&mut self, wait: bool) -> Result<()> {
        self.collect(if wait { None } else { Some(Duration::ZERO) });
        self.background_error.take().map_or(Ok(()), Err)
    }

    /// Applies the background save if it finishes within `timeout`; a
    /// failure is kept for `settle` to return.
    fn collect(&mut self, timeout: Option<Duration>) {
        let Some(finished) = self.worker.as_mut().and_then(|w| w.result(timeout)) else {
            return;
        };
        self.take_back(finished.save, finished.delete, finished.snapshot);
        let pending = self.pending.take().expect("set while a save is in flight");
        if let Err(err) = self.apply(pending, finished.report) {
            self.background_error = Some(err);
        }
    }

    /// Applies a background save that has finished, so that
    /// `latest_checkpoint` and `checkpoints` show it; a failure is kept for
    /// the next call that saves, restores, pins or waits. Never blocks.
    pub fn refresh(&mut self) {
        self.collect(Some(Duration::ZERO));
    }

    /// Waits until the background save, if any, has committed or failed,
    /// at most `timeout` (`None`: as long as it takes). Returns its failure
    /// (once), or `Error::Timeout` if it is still running.
    pub fn wait_until_finished(&mut self, timeout: Option<Duration>) -> Result<()> {
        self.collect(timeout);
        self.background_error.take().map_or(Ok(()), Err)?;
        if self.pending.is_some() {
            return Err(Error::Timeout);
        }
        Ok(())
    }

    /// Makes a save's report the manager's state: on success the new
    /// checkpoint is the latest; on failure nothing changes and the
    /// request stands.
    fn apply(&mut self, pending: Pending, report: JobReport) -> Result<()> {
        self.unfinished |= report.unfinished;
        report
            .warnings
            .iter()
            .for_each(|warning| self.warn(warning));
        let saved = report
            .result
            .inspect_err(|_| self.restore_request(&pending.request))?;
        self.save_counter = pending.counter;
        self.last_checkpoint_step = pending.step;
        self.last_save_time = Some(saved.saved_at);
        self.latest = Some(pending.entry);
        self.retention = saved.retention;
        self.state_crc = Some(saved.state_crc);
        Ok(())
    }

    /// The step and clock gates. `check_interval` false or a requested
    /// save opens them, except that the same step never saves twice.
    fn gate(&mut self, check_interval: bool, requested: bool) -> Result<Gate> {
        let check_interval = check_interval && !requested;
        // A save in flight counts as done.
        let (mut step, last_save_time) = match &self.pending {
            Some(pending) => (pending.step, pending.saved_at),
            None => (self.last_checkpoint_step, self.last_save_time),
        };
        let mut current = None;
        if let Some(interval) = self.config.checkpoint_interval {
            let now_step = self.current_step()?;
            if !interval_allows_save(interval, step, now_step, check_interval) {
                return Ok(Gate::Closed);
            }
            step = Some(now_step);
            current = step;
        } else if self.callbacks.step_counter.is_some() {
            current = Some(self.current_step()?);
        }
        if let Some(seconds) = self.config.save_interval_seconds.filter(|_| check_interval) {
            let now = self.now()?;
            if !time_allows_save(seconds, last_save_time, now) {
                return Ok(Gate::Closed);
            }
        }
        Ok(Gate::Open { step, current })
    }

    /// Whether `save` (checking the interval) would save now: a save was
    /// requested, or the step and clock gates are open. Runs the step
    /// counter and clock callbacks, saves nothing.
    pub fn should_save(&mut self) -> Result<bool> {
        if self.config.read_only {
            return Err(Error::ReadOnly);
        }
        self.settle(false)?;
        let requested = self.save_requested.load(Ordering::Acquire)
            || preemption::signals_received() > self.preemptions_seen;
        Ok(matches!(self.gate(true, requested)?, Gate::Open { .. }))
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

    /// Pins (`pinned`) or unpins a managed checkpoint. A pinned checkpoint
    /// is kept by every sweep; the pin is recorded in its manifest, which
    /// is replaced atomically. Unpinning deletes nothing: the next save's
    /// sweep applies the other rules.
    pub fn set_pinned(&mut self, prefix: &Path, pinned: bool) -> Result<()> {
        if self.config.read_only {
            return Err(Error::ReadOnly);
        }
        if self.rank() != 0 {
            return Err(Error::invalid(
                "pins are made on rank 0, which writes the manifests",
            ));
        }
        self.settle(true)?;
        self.finish_unfinished()?;
        let entry = self.managed_entry(prefix)?;
        let base = deletable_base(&entry).ok_or_else(|| {
            Error::invalid(format!(
                "'{}' is not directly inside the checkpoint directory",
                prefix.display()
            ))
        })?;
        let Some(mut manifest) = integrity::read_manifest(&*self.store, base)? else {
            return Err(Error::NoManifest {
                prefix: self.full_path(&entry),
            });
        };
        if manifest.annotations.pinned != pinned {
            manifest.annotations.pinned = pinned;
            let replaced = transaction::replace_manifest(&*self.store, base, &manifest);
            if replaced.is_err() {
                // The rename may have happened before a later step failed:
                // keep to what the directory says.
                if let Ok(Some(on_disk)) = integrity::read_manifest(&*self.store, base) {
                    self.retention
                        .set_pinned(&entry, on_disk.annotations.pinned);
                }
                return replaced;
            }
        }
        self.retention.set_pinned(&entry, pinned);
        Ok(())
    }

    /// The state-file entry of a checkpoint on the managed list.
    fn managed_entry(&self, prefix: &Path) -> Result<PathBuf> {
        let entry = self.entry_of(prefix);
        if self.retention.managed().iter().any(|m| m.entry == entry) {
            Ok(entry)
        } else {
            Err(Error::invalid(format!(
                "'{}' is not a checkpoint this manager manages (it is not on the state file's \
                 list; preserved checkpoints are never deleted anyway)",
                prefix.display()
            )))
        }
    }

    /// The best managed checkpoint by the `keep_best` metric (of equal
    /// values the newer); `None` when no managed checkpoint recorded it.
    pub fn best_checkpoint(&self) -> Result<Option<PathBuf>> {
        let keep = self
            .config
            .keep_best
            .as_ref()
            .ok_or_else(|| Error::invalid("no keep_best metric is set"))?;
        Ok(self
            .retention
            .best(keep.mode)
            .map(|best| self.full_path(&best.entry)))
    }

    /// What is known of a checkpoint of this directory: its manifest's
    /// records, the state file's time, and its files.
    pub fn checkpoint_info(&self, prefix: &Path) -> Result<CheckpointInfo> {
        let (store, base) = self.locate(prefix)?;
        let unknown = || {
            Error::invalid(format!(
                "'{}' is not a checkpoint in this manager's directory",
                prefix.display()
            ))
        };
        if !Arc::ptr_eq(&store, &self.store) {
            return Err(unknown());
        }
        let entry = self.entry_of(prefix);
        let manifest = integrity::read_manifest(&*self.store, &base)?;
        let files: Vec<FileInfo> = match &manifest {
            Some(manifest) => manifest
                .files
                .iter()
                .map(|file| FileInfo {
                    suffix: file.suffix.clone(),
                    size: file.size,
                })
                .collect(),
            None => {
                let mut files = Vec::new();
                for name in integrity::owned_files(&*self.store, &base)?.files {
                    let Some(file) = self
                        .store
                        .open_read(&name)
                        .map_err(|err| Error::io_at("read", &self.full_path(&name), err))?
                    else {
                        continue;
                    };
                    let suffix = &paths::path_bytes(&name)[base.len()..];
                    files.push(FileInfo {
                        suffix: ByteString::from_bytes(suffix),
                        size: file.size(),
                    });
                }
                files
            }
        };
        if manifest.is_none() && files.is_empty() {
            return Err(unknown());
        }
        let annotations = manifest
            .as_ref()
            .map(|m| m.annotations.clone())
            .unwrap_or_default();
        Ok(CheckpointInfo {
            prefix: ByteString::from_bytes(paths::path_bytes(&self.full_path(&entry))),
            number: manifest
                .as_ref()
                .map(|m| m.number)
                .or_else(|| paths::trailing_number(&entry)),
            step: annotations.step,
            timestamp: self
                .saved_at(prefix)
                .or_else(|| manifest.as_ref().and_then(|m| m.saved_at)),
            managed: self.retention.managed().iter().any(|m| m.entry == entry),
            latest: self.latest.as_deref() == Some(entry.as_path()),
            pinned: annotations.pinned,
            metrics: annotations.metrics,
            metadata: annotations.metadata,
            has_manifest: manifest.is_some(),
            total_size: files.iter().map(|file| file.size).sum(),
            files,
        })
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

    /// Checks a checkpoint (the latest when `prefix` is `None`) against its
    /// manifest.
    pub fn verify(&self, prefix: Option<&Path>, verification: Verification) -> Result<Integrity> {
        let prefix = match prefix {
            Some(prefix) => prefix.to_path_buf(),
            None => self
                .latest_checkpoint()
                .ok_or_else(|| Error::invalid("there is no latest checkpoint to verify"))?,
        };
        let (store, base) = self.locate(&prefix)?;
        integrity::verify(&*store, &base, verification, self.saved_at(&prefix), None)
            .map(|(i, _)| i)
    }

    /// The store and base of a checkpoint path: this directory's store for
    /// its own checkpoints, the file system for entries elsewhere.
    fn locate(&self, prefix: &Path) -> Result<(Arc<dyn Store>, OsString)> {
        match (prefix.parent(), prefix.file_name()) {
            (Some(parent), Some(base)) if parent == self.config.directory => {
                Ok((self.store.clone(), base.to_owned()))
            }
            _ => store::of_prefix(prefix, &self.config.storage_options),
        }
    }

    /// Runs the restore callback on the checkpoint `base`'s files named
    /// `<files_of>...` (a rank's shard, or all). From object storage they
    /// are downloaded to the local staging directory first, and removed
    /// after.
    pub(super) fn run_restore_callback(
        &mut self,
        store: &Arc<dyn Store>,
        base: &OsStr,
        files_of: &OsStr,
    ) -> Result<()> {
        let Some(restore) = self.callbacks.restore.as_mut() else {
            return Ok(());
        };
        let mut files = integrity::owned_files(&**store, base)?.files;
        files.retain(|file| file.as_os_str().as_bytes().starts_with(files_of.as_bytes()));
        let prefix = Path::new(files_of);
        let restored = store
            .fetch_local(&files)
            .map_err(|err| Error::io_at("download", &store.shown(prefix), err))
            .and_then(|()| restore(&store.local_path(prefix)).map_err(Error::callback("restore")));
        let released = store
            .release_local()
            .map_err(|err| Error::io_at("remove local copies of", &store.shown(prefix), err));
        restored.and(released)
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

    /// Restores the newest intact checkpoint and returns its prefix: the
    /// latest, or, when it is damaged, the newest older one that verifies
    /// (with a warning). With no checkpoint, runs the init callback (if
    /// any) and returns `None`. `Error::Damaged` when none is intact. A
    /// read-only manager whose writer changed the state file during the
    /// restore reads it again and retries.
    pub fn restore_or_initialize(&mut self) -> Result<Option<PathBuf>> {
        self.settle(true)?;
        self.finish_unfinished()?;
        if let Some(communicator) = self.config.communicator.clone() {
            return self.restore_across_ranks(&*communicator.0);
        }
        let mut retries = 0;
        loop {
            let restored = self.restore_once();
            if restored.is_err() && self.config.read_only && retries < READER_RETRIES {
                let now_crc = read_state(&*self.store)?.map(|file| file.crc32c);
                if now_crc != self.state_crc {
                    retries += 1;
                    self.reload()?;
                    continue;
                }
            }
            return restored;
        }
    }

    fn restore_once(&mut self) -> Result<Option<PathBuf>> {
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
        let candidates = policy::fallback_order(&latest, &self.checkpoints(), self.unlisted()?);
        let saved_at: HashMap<PathBuf, f64> = self
            .retention
            .managed()
            .iter()
            .map(|m| (self.full_path(&m.entry), m.timestamp))
            .collect();
        let verification = self.verification();
        let partial = self.config.partial_restore;
        // The tensor file is read in full anyway: check its CRC32C on the way
        // rather than reading it twice.
        let check_while_reading =
            !self.tensors.is_empty() && verification == Verification::Checksums && !partial;
        let deferred = check_while_reading.then_some(TENSOR_FILE_SUFFIX.as_bytes());
        // Set when a damaged tensor file was read into the buffers.
        let mut overwritten_by: Option<PathBuf> = None;
        let mut load = |candidate: &Path| -> Result<Integrity> {
            let (store, base) = self.locate(candidate)?;
            let listed_at = saved_at.get(candidate).copied();
            let (integrity, crc) =
                integrity::verify(&*store, &base, verification, listed_at, deferred)?;
            if !self.tensors.is_empty() {
                let read = read_tensor_file(&*store, &base, &self.tensors, partial, crc);
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
        match integrity {
            Integrity::Intact => {}
            Integrity::NoManifest => self.log(
                LogLevel::Info,
                &format!(
                    "'{}' has no manifest; restoring it unverified",
                    chosen.display()
                ),
            ),
            Integrity::ManifestOutdated => self.warn(&format!(
                "'{}' was saved again by a tool that writes no manifest (the state file's time for \
                 it is later than its manifest's); restoring it unverified",
                chosen.display()
            )),
        }
        let (store, base) = self.locate(&chosen)?;
        self.run_restore_callback(&store, &base, &base)?;
        if self.config.checkpoint_interval.is_some() {
            self.last_checkpoint_step = Some(self.current_step()?);
        }
        Ok(Some(chosen))
    }

    /// Checkpoints of this name that have a manifest but are not listed
    /// (preserved ones), newest first.
    fn unlisted(&self) -> Result<Vec<PathBuf>> {
        let entries = store::list_root(&*self.store)?;
        let mut numbers: Vec<u64> = entries
            .iter()
            .filter_map(|entry| {
                let base = manifest_base(entry.name.as_bytes())?;
                let number = paths::own_checkpoint_number(
                    OsStr::from_bytes(base),
                    &self.config.checkpoint_name,
                )?;
                // Exactly `<name>-<N>`: not a file of another name.
                (paths::checkpoint_prefix(Path::new(""), &self.config.checkpoint_name, number)
                    .as_os_str()
                    .as_bytes()
                    == base)
                    .then_some(number)
            })
            .collect();
        numbers.sort_unstable_by(|a, b| b.cmp(a));
        Ok(numbers
            .into_iter()
            .map(|number| {
                paths::checkpoint_prefix(
                    &self.config.directory,
                    &self.config.checkpoint_name,
                    number,
                )
            })
            .collect())
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
    let now = match clock.as_mut() {
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

/// A save the intervals let through, as `decide` prepared it.
struct Decided {
    prefix: PathBuf,
    job: SaveJob,
    pending: Pending,
    tensor_metadata: BTreeMap<String, String>,
}

/// A save's claim on the save request, given back if it fails.
#[derive(Clone)]
struct Request {
    flag: bool,
    preemptions_seen: u64,
}

/// What the manager becomes when a save commits, and what it gives back
/// when it fails.
struct Pending {
    counter: u64,
    /// The step to record as the last checkpoint's.
    step: Option<i64>,
    entry: PathBuf,
    /// A background save's time, read when it was called.
    saved_at: Option<f64>,
    request: Request,
}

/// A save job for the background thread, with the callbacks and buffer it
/// borrows from the manager.
struct BackgroundSave {
    job: SaveJob,
    saved_at: f64,
    save: Option<SaveFn>,
    delete: Option<DeleteFn>,
    snapshot: TensorSnapshot,
}

/// A background save's report, and what it borrowed.
struct Finished {
    report: JobReport,
    save: Option<SaveFn>,
    delete: Option<DeleteFn>,
    snapshot: TensorSnapshot,
}

/// The background thread's work: the job, whose panic (from a Rust
/// callback) is caught and reported.
fn run_in_background(background: BackgroundSave) -> Finished {
    let BackgroundSave {
        job,
        saved_at,
        mut save,
        mut delete,
        snapshot,
    } = background;
    let tensors = if snapshot.is_empty() {
        Tensors::None
    } else {
        Tensors::Snapshot(&snapshot)
    };
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        job.run(save.as_mut(), tensors, delete.as_mut(), &mut || {
            Ok(saved_at)
        })
    }));
    let report = ran.unwrap_or_else(|panic| JobReport {
        result: Err(Error::Panic(panic_message(&*panic))),
        warnings: Vec::new(),
        // Recovery tells whether it got past the commit point.
        unfinished: true,
    });
    Finished {
        report,
        save,
        delete,
        snapshot,
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
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
