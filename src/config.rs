//! The manager's options and the user callbacks, validated as they are set.

use std::ffi::OsString;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::communicator::Communicator;
use crate::error::{CallbackError, Error, Result};
use crate::location::Location;
use crate::policy::MetricMode;

/// How many managed checkpoints to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxToKeep {
    /// Keep the newest `n` (positive); older ones are deleted or preserved.
    Last(usize),
    /// Keep everything and delete nothing: TF's `max_to_keep=None`.
    All,
}

/// The manager's options. Defaults follow TF; `max_to_keep` has none and
/// must be chosen, as TF's constructor requires it.
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) directory: PathBuf,
    pub(crate) max_to_keep: Option<MaxToKeep>,
    pub(crate) keep_checkpoint_every_n_hours: Option<f64>,
    pub(crate) checkpoint_name: OsString,
    pub(crate) checkpoint_interval: Option<i64>,
    pub(crate) last_checkpoint_step: Option<i64>,
    pub(crate) read_only: bool,
    pub(crate) verify_checksums: bool,
    pub(crate) partial_restore: bool,
    pub(crate) unmatched_rank_local: UnmatchedRankLocal,
    pub(crate) keep_best: Option<KeepBest>,
    pub(crate) keep_period: Option<u64>,
    pub(crate) save_interval_seconds: Option<f64>,
    pub(crate) communicator: Option<SharedCommunicator>,
    /// How long a rank waits for the others at each collective step.
    pub(crate) coordination_timeout: Duration,
    /// Each rank has its own directory (node-local disks) instead of one
    /// every rank sees.
    pub(crate) node_local: bool,
    /// For object storage: the client's options and the library's.
    pub(crate) storage_options: Vec<(String, String)>,
    /// A second directory each committed checkpoint is copied to in the
    /// background, and its own retention (see docs/tiers.md).
    pub(crate) remote: Option<RemoteTier>,
}

/// The remote tier: where checkpoints are uploaded and what it keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteTier {
    pub(crate) directory: PathBuf,
    /// `None`: the local tier's `max_to_keep`.
    pub(crate) max_to_keep: Option<MaxToKeep>,
    /// `None`: the local tier's `keep_checkpoint_every_n_hours`.
    pub(crate) keep_checkpoint_every_n_hours: Option<Option<f64>>,
    /// The most checkpoints the local directory holds while their uploads
    /// are behind; beyond it the oldest waiting ones are deleted unuploaded.
    pub(crate) local_max_held: Option<usize>,
    /// How long a save answering a preemption signal waits for the uploads.
    pub(crate) preemption_upload_time: Duration,
}

/// The trainer's communicator, shared by the managers built from one
/// configuration.
#[derive(Clone)]
pub struct SharedCommunicator(pub(crate) Arc<dyn Communicator>);

impl fmt::Debug for SharedCommunicator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rank {} of {}", self.0.rank(), self.0.size())
    }
}

/// Keep the best `k` checkpoints by a metric the saves record.
#[derive(Debug, Clone, PartialEq)]
pub struct KeepBest {
    pub metric: String,
    pub mode: MetricMode,
    pub k: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            directory: PathBuf::new(),
            max_to_keep: None,
            keep_checkpoint_every_n_hours: None,
            checkpoint_name: OsString::from("ckpt"),
            checkpoint_interval: None,
            last_checkpoint_step: None,
            read_only: false,
            verify_checksums: true,
            partial_restore: false,
            unmatched_rank_local: UnmatchedRankLocal::Refuse,
            keep_best: None,
            keep_period: None,
            save_interval_seconds: None,
            communicator: None,
            coordination_timeout: Duration::from_secs(300),
            node_local: false,
            storage_options: Vec::new(),
            remote: None,
        }
    }
}

impl Config {
    pub fn new(directory: impl Into<PathBuf>, max_to_keep: MaxToKeep) -> Result<Self> {
        let mut config = Config::default();
        config.set_directory(directory)?;
        config.set_max_to_keep(max_to_keep)?;
        Ok(config)
    }

    pub fn set_directory(&mut self, directory: impl Into<PathBuf>) -> Result<()> {
        let directory = directory.into();
        if directory.as_os_str().is_empty() {
            return Err(Error::invalid("the directory must not be empty"));
        }
        self.directory = match crate::location::parse(&directory)? {
            Location::Local(path) => path,
            Location::S3(_) => directory,
        };
        Ok(())
    }

    pub fn set_max_to_keep(&mut self, max_to_keep: MaxToKeep) -> Result<()> {
        if max_to_keep == MaxToKeep::Last(0) {
            return Err(Error::invalid(
                "max_to_keep must be a positive number; to keep every checkpoint, choose keep-all \
                 (MaxToKeep::All, ckpt_options_set_keep_all, max_to_keep=None in Python)",
            ));
        }
        self.max_to_keep = Some(max_to_keep);
        Ok(())
    }

    /// `None` or `Some(0.0)` turns preservation off, as in TF.
    pub fn set_keep_checkpoint_every_n_hours(&mut self, hours: Option<f64>) -> Result<()> {
        self.keep_checkpoint_every_n_hours = match hours {
            Some(h) if !h.is_finite() || h < 0.0 => {
                return Err(Error::invalid(format!(
                    "keep_checkpoint_every_n_hours must be a finite number of hours >= 0, not {h}"
                )))
            }
            Some(h) if h > 0.0 => Some(h),
            _ => None,
        };
        Ok(())
    }

    /// The file-name stem of every checkpoint: `<name>-<N>`.
    pub fn set_checkpoint_name(&mut self, name: impl Into<OsString>) -> Result<()> {
        let name = name.into();
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.contains(&b'/') || bytes.contains(&0) {
            return Err(Error::invalid(format!(
                "checkpoint_name {name:?} must be a non-empty file name without '/'"
            )));
        }
        if name == crate::layout::STATE_FILE_NAME || name == "." || name == ".." {
            return Err(Error::invalid(format!(
                "checkpoint_name {name:?} is reserved"
            )));
        }
        self.checkpoint_name = name;
        Ok(())
    }

    /// Saves at most once every `interval` steps (needs a step counter).
    pub fn set_checkpoint_interval(&mut self, interval: Option<i64>) -> Result<()> {
        if let Some(interval) = interval.filter(|&i| i <= 0) {
            return Err(Error::invalid(format!(
                "checkpoint_interval must be positive, not {interval}"
            )));
        }
        self.checkpoint_interval = interval;
        Ok(())
    }

    pub fn set_last_checkpoint_step(&mut self, step: Option<i64>) {
        self.last_checkpoint_step = step;
    }

    /// A read-only manager takes no lock and never writes: for evaluators
    /// that follow a directory another process trains into.
    pub fn set_read_only(&mut self, read_only: bool) {
        self.read_only = read_only;
    }

    /// Whether restoring checks every file's CRC32C (default) or only sizes.
    pub fn set_verify_checksums(&mut self, verify: bool) {
        self.verify_checksums = verify;
    }

    /// Whether restoring registered tensors may skip tensors that are in
    /// the checkpoint but not registered, or registered but not in it.
    pub fn set_partial_restore(&mut self, partial: bool) {
        self.partial_restore = partial;
    }

    /// What a restore does with rank-local tensors that the world sizes do
    /// not match: a rank with no saved piece, or saved pieces of ranks that
    /// no longer exist.
    pub fn set_unmatched_rank_local(&mut self, unmatched: UnmatchedRankLocal) {
        self.unmatched_rank_local = unmatched;
    }

    /// Also keeps the best `k` checkpoints by `metric` (`None` turns this
    /// off). A save that did not record the metric, or recorded NaN, is
    /// never among the best; of equal values the newer is better.
    pub fn set_keep_best(&mut self, keep_best: Option<KeepBest>) -> Result<()> {
        if let Some(keep_best) = &keep_best {
            check_metric_name(&keep_best.metric)?;
            if keep_best.k == 0 {
                return Err(Error::invalid(
                    "keep_best needs k >= 1 (to turn it off, set no metric)",
                ));
            }
        }
        self.keep_best = keep_best;
        Ok(())
    }

    /// Also keeps every checkpoint whose number is a multiple of `period`.
    pub fn set_keep_period(&mut self, period: Option<u64>) -> Result<()> {
        if period == Some(0) {
            return Err(Error::invalid("keep_period must be positive"));
        }
        self.keep_period = period;
        Ok(())
    }

    /// A save that checks the interval goes ahead only when at least this
    /// many seconds (by the clock callback) have passed since the last one.
    pub fn set_save_interval_seconds(&mut self, seconds: Option<f64>) -> Result<()> {
        if let Some(seconds) = seconds.filter(|s| !s.is_finite() || *s <= 0.0) {
            return Err(Error::invalid(format!(
                "save_interval_seconds must be a finite number of seconds > 0, not {seconds}"
            )));
        }
        self.save_interval_seconds = seconds;
        Ok(())
    }

    /// Makes saves and restores collective over the communicator's ranks
    /// (`None`: one process).
    pub fn set_communicator(&mut self, communicator: Option<Arc<dyn Communicator>>) {
        self.communicator = communicator.map(SharedCommunicator);
    }

    /// How long each rank waits for the others at a collective step before
    /// the save or restore fails with a timeout (default 300 s).
    pub fn set_coordination_timeout(&mut self, seconds: f64) -> Result<()> {
        let timeout = Duration::try_from_secs_f64(seconds)
            .ok()
            .filter(|timeout| !timeout.is_zero())
            .ok_or_else(|| {
                Error::invalid(format!(
                    "coordination_timeout must be a positive number of seconds, not {seconds}"
                ))
            })?;
        self.coordination_timeout = timeout;
        Ok(())
    }

    /// Across ranks: `true` when each rank's directory is its own (a
    /// node-local disk), so each rank locks, recovers, commits and sweeps
    /// its own files; `false` (default) when every rank sees one directory.
    pub fn set_node_local(&mut self, node_local: bool) {
        self.node_local = node_local;
    }

    pub fn directory(&self) -> &Path {
        &self.directory
    }

    /// Sets an option of the object store (`aws_endpoint`, `aws_region`,
    /// ... as the S3 client names them, or the library's
    /// `ckpt_local_staging_directory` and `ckpt_allow_unconditional_writes`);
    /// it beats the `AWS_*` variables and files. Local directories ignore it.
    pub fn set_storage_option(&mut self, key: &str, value: &str) -> Result<()> {
        crate::store::check_option(key, value)?;
        self.storage_options.retain(|(k, _)| k != key);
        self.storage_options
            .push((key.to_owned(), value.to_owned()));
        Ok(())
    }

    /// Copies every committed checkpoint to `directory` (a local path,
    /// `file://` or `s3://` URL) in the background; `None` turns it off.
    pub fn set_remote_directory(&mut self, directory: Option<PathBuf>) -> Result<()> {
        let Some(directory) = directory else {
            self.remote = None;
            return Ok(());
        };
        if directory.as_os_str().is_empty() {
            return Err(Error::invalid("the remote directory must not be empty"));
        }
        let directory = match crate::location::parse(&directory)? {
            Location::Local(path) => path,
            Location::S3(_) => directory,
        };
        let remote = self.remote.get_or_insert(RemoteTier {
            directory: PathBuf::new(),
            max_to_keep: None,
            keep_checkpoint_every_n_hours: None,
            local_max_held: None,
            preemption_upload_time: Duration::from_secs(30),
        });
        remote.directory = directory;
        Ok(())
    }

    fn remote_mut(&mut self, option: &str) -> Result<&mut RemoteTier> {
        self.remote.as_mut().ok_or_else(|| {
            Error::invalid(format!("{option} needs a remote directory: set it first"))
        })
    }

    /// How many checkpoints the remote keeps (default: as the local tier).
    pub fn set_remote_max_to_keep(&mut self, max_to_keep: MaxToKeep) -> Result<()> {
        if max_to_keep == MaxToKeep::Last(0) {
            return Err(Error::invalid(
                "remote_max_to_keep must be a positive number or keep-all",
            ));
        }
        self.remote_mut("remote_max_to_keep")?.max_to_keep = Some(max_to_keep);
        Ok(())
    }

    /// The remote's `keep_checkpoint_every_n_hours` (default: the local one).
    pub fn set_remote_keep_checkpoint_every_n_hours(&mut self, hours: Option<f64>) -> Result<()> {
        let mut checked = Config::default();
        checked.set_keep_checkpoint_every_n_hours(hours)?;
        self.remote_mut("remote_keep_checkpoint_every_n_hours")?
            .keep_checkpoint_every_n_hours = Some(checked.keep_checkpoint_every_n_hours);
        Ok(())
    }

    /// The most checkpoints the local directory holds while uploads are
    /// behind (`None`: no bound). A checkpoint waiting for its upload is
    /// otherwise never deleted locally.
    pub fn set_local_max_held_for_upload(&mut self, count: Option<usize>) -> Result<()> {
        if count == Some(0) {
            return Err(Error::invalid("local_max_held_for_upload must be positive"));
        }
        self.remote_mut("local_max_held_for_upload")?.local_max_held = count;
        Ok(())
    }

    /// How long a save that answers a preemption signal waits, after its
    /// local commit, for the uploads to finish (default 30 s): what is left
    /// resumes at the next open.
    pub fn set_remote_preemption_seconds(&mut self, seconds: f64) -> Result<()> {
        let time = Duration::try_from_secs_f64(seconds).map_err(|_| {
            Error::invalid(format!(
                "remote_preemption_seconds must be a finite number of seconds >= 0, not {seconds}"
            ))
        })?;
        self.remote_mut("remote_preemption_seconds")?
            .preemption_upload_time = time;
        Ok(())
    }

    /// The configuration of the remote directory's own manager: this one's
    /// name and storage options, the remote's retention, no communicator.
    pub(crate) fn remote_config(&self) -> Option<Config> {
        let remote = self.remote.as_ref()?;
        Some(Config {
            directory: remote.directory.clone(),
            max_to_keep: remote.max_to_keep.or(self.max_to_keep),
            keep_checkpoint_every_n_hours: remote
                .keep_checkpoint_every_n_hours
                .unwrap_or(self.keep_checkpoint_every_n_hours),
            checkpoint_name: self.checkpoint_name.clone(),
            keep_best: self.keep_best.clone(),
            keep_period: self.keep_period,
            verify_checksums: self.verify_checksums,
            storage_options: self.storage_options.clone(),
            ..Config::default()
        })
    }

    /// Whether the directory is a local path (not an object store's URL).
    pub(crate) fn is_local(&self) -> bool {
        matches!(
            crate::location::parse(&self.directory),
            Ok(Location::Local(_))
        )
    }

    pub(crate) fn validate(&self, callbacks: &Callbacks) -> Result<()> {
        if self.directory.as_os_str().is_empty() {
            return Err(Error::invalid("no directory is set"));
        }
        if self.max_to_keep.is_none() {
            return Err(Error::invalid(
                "max_to_keep is not set: choose a positive number or keep all",
            ));
        }
        if self.checkpoint_interval.is_some() && callbacks.step_counter.is_none() {
            return Err(Error::invalid(
                "checkpoint_interval needs a step counter callback",
            ));
        }
        Ok(())
    }
}

/// A metric name: non-empty UTF-8 of at most 256 bytes, without NUL.
pub(crate) fn check_metric_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 256 || name.contains('\0') {
        return Err(Error::invalid(format!(
            "metric name {name:?} must be 1 to 256 bytes without NUL"
        )));
    }
    Ok(())
}

/// What a restore onto another number of ranks does with a rank-local
/// tensor that has no saved piece for a rank (a new rank), or whose saved
/// pieces include ranks that no longer exist. `ckpt_unmatched_rank_local`
/// in C, a `uint32_t`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnmatchedRankLocal {
    /// A TENSOR_MISMATCH on every rank, naming the tensor (the default).
    #[default]
    Refuse = 0,
    /// The pieces of ranks that no longer exist are dropped; a rank with no
    /// saved piece leaves its buffer as it is.
    Skip = 1,
    /// As `Skip`, and a rank with no saved piece of some rank-local tensor
    /// runs the init callback once the restore has read everything else.
    Initialize = 2,
}

impl UnmatchedRankLocal {
    /// The value of a C `ckpt_unmatched_rank_local`, if it is one.
    pub fn from_u32(value: u32) -> Option<Self> {
        [Self::Refuse, Self::Skip, Self::Initialize]
            .into_iter()
            .find(|v| *v as u32 == value)
    }
}

/// Severity of a message given to the log callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Info,
    Warning,
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogLevel::Info => "info",
            LogLevel::Warning => "warning",
        })
    }
}

/// A clock reading that is no time (NaN, an infinity): the clock failed.
#[derive(Debug)]
pub(crate) struct NonFiniteTime(f64);

impl NonFiniteTime {
    pub(crate) fn check(seconds: f64) -> Result<f64, NonFiniteTime> {
        if seconds.is_finite() {
            Ok(seconds)
        } else {
            Err(NonFiniteTime(seconds))
        }
    }
}

impl fmt::Display for NonFiniteTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "it returned {}, not a finite time", self.0)
    }
}

impl std::error::Error for NonFiniteTime {}

pub type PrepareFn = Box<dyn FnMut(u64) -> Result<(), CallbackError> + Send>;
pub type SaveFn = Box<dyn FnMut(&Path, u64) -> Result<(), CallbackError> + Send>;
pub type RestoreFn = Box<dyn FnMut(&Path) -> Result<(), CallbackError> + Send>;
pub type InitFn = Box<dyn FnMut() -> Result<(), CallbackError> + Send>;
pub type StepCounterFn = Box<dyn FnMut() -> Result<i64, CallbackError> + Send>;
pub type ClockFn = Box<dyn FnMut() -> Result<f64, CallbackError> + Send>;
pub type DeleteFn = Box<dyn FnMut(&Path) -> Result<(), CallbackError> + Send>;
pub type LogFn = Box<dyn FnMut(LogLevel, &str) + Send>;

/// The user's code the manager calls. All optional; `save` is needed to
/// save and `restore` to restore.
#[derive(Default)]
pub struct Callbacks {
    pub(crate) prepare: Option<PrepareFn>,
    pub(crate) save: Option<SaveFn>,
    pub(crate) restore: Option<RestoreFn>,
    pub(crate) init: Option<InitFn>,
    pub(crate) step_counter: Option<StepCounterFn>,
    pub(crate) clock: Option<ClockFn>,
    pub(crate) delete: Option<DeleteFn>,
    pub(crate) log: Option<LogFn>,
}

impl Callbacks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes the checkpoint: every file it creates is named `<prefix>`,
    /// `<prefix>.<suffix>` or lies inside a `<prefix>` directory. Given the
    /// save's staging prefix and the checkpoint number; `SaveFile` writes a
    /// file with its CRC32C computed on the way.
    pub fn on_save(
        mut self,
        f: impl FnMut(&Path, u64) -> Result<(), CallbackError> + Send + 'static,
    ) -> Self {
        self.save = Some(Box::new(f));
        self
    }

    /// Runs on the calling thread when a save goes ahead, before the save
    /// callback; for a background save, before `save_async` returns. Given
    /// the checkpoint number. For work that must see the state as it is at
    /// the call (copying device memory to host).
    pub fn on_prepare(
        mut self,
        f: impl FnMut(u64) -> Result<(), CallbackError> + Send + 'static,
    ) -> Self {
        self.prepare = Some(Box::new(f));
        self
    }

    pub fn on_restore(
        mut self,
        f: impl FnMut(&Path) -> Result<(), CallbackError> + Send + 'static,
    ) -> Self {
        self.restore = Some(Box::new(f));
        self
    }

    /// Called by `restore_or_initialize` when there is no checkpoint.
    pub fn on_init(
        mut self,
        f: impl FnMut() -> Result<(), CallbackError> + Send + 'static,
    ) -> Self {
        self.init = Some(Box::new(f));
        self
    }

    pub fn step_counter(
        mut self,
        f: impl FnMut() -> Result<i64, CallbackError> + Send + 'static,
    ) -> Self {
        self.step_counter = Some(Box::new(f));
        self
    }

    /// Wall-clock seconds since the epoch; the default reads the system
    /// clock. A reading that is not finite fails the call that read it.
    pub fn clock(self, mut f: impl FnMut() -> f64 + Send + 'static) -> Self {
        self.fallible_clock(move || NonFiniteTime::check(f()).map_err(Into::into))
    }

    /// `clock`, for a clock that reports its own failures.
    pub(crate) fn fallible_clock(
        mut self,
        f: impl FnMut() -> Result<f64, CallbackError> + Send + 'static,
    ) -> Self {
        self.clock = Some(Box::new(f));
        self
    }

    /// Replaces the built-in deletion of a checkpoint's files.
    pub fn on_delete(
        mut self,
        f: impl FnMut(&Path) -> Result<(), CallbackError> + Send + 'static,
    ) -> Self {
        self.delete = Some(Box::new(f));
        self
    }

    /// Receives warnings; the default writes them to stderr.
    pub fn log(mut self, f: impl FnMut(LogLevel, &str) + Send + 'static) -> Self {
        self.log = Some(Box::new(f));
        self
    }
}
