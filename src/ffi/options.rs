//! `ckpt_options`: the options builder and the C callback adapters.

use std::ffi::{c_char, c_void, CString, OsStr};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use super::callback_error;
use super::communicator::{ckpt_communicator, CCommunicator};
use super::handle::{self, BoxCastable, CValue};
use super::{ckpt_status, guard, guard_void, out_param, path_arg, utf8_arg, Failure, FfiResult};
use crate::config::{
    Callbacks, Config, KeepBest, LogLevel, MaxToKeep, NonFiniteTime, UnmatchedRankLocal,
};
use crate::error::CallbackError;
use crate::policy::MetricMode;

/// Releases a callback's `user_data` when the library no longer needs it.
pub type ckpt_finalizer = Option<unsafe extern "C" fn(user_data: *mut c_void)>;

/// Writes checkpoint `checkpoint_number`: every file it creates must be
/// named `prefix`, `prefix.<suffix>` (e.g. `prefix.index`) or lie inside a
/// directory `prefix/`; regular files and directories only. `prefix` is the
/// save's staging prefix (`<dir>/<name>-<N>.ckpt-staging/<name>-<N>`), valid
/// only during the call; the files move to `<dir>/<name>-<N>...` at the
/// commit. Files may be written with `ckpt_save_file_open` so that the
/// library computes their CRC32C on the way. Returns 0 on success, any other
/// value on failure (reported as `CKPT_STATUS_CALLBACK_FAILED` with that
/// value); nothing is committed then and the staging directory is removed.
/// Every callback below may attach a message and a value of its own to its
/// failure with `ckpt_callback_set_error` before it returns.
pub type ckpt_save_callback = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        prefix: *const c_char,
        checkpoint_number: u64,
    ) -> i32,
>;

/// Prepares checkpoint `checkpoint_number` for saving: runs on the thread that
/// called `ckpt_manager_save`, `_save_with` or `_save_async`, when the save
/// goes ahead and before the save callback; for a background save, before
/// `ckpt_manager_save_async` returns. Use it for what must see the state as it
/// is at the call, such as copying device memory to host buffers that the
/// save callback then writes on the background thread. Returns 0 on success,
/// any other value on failure (nothing is saved then).
pub type ckpt_prepare_callback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, checkpoint_number: u64) -> i32>;

/// Restores the checkpoint at `prefix` (valid only during the call).
/// Returns 0 on success, any other value on failure.
pub type ckpt_restore_callback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, prefix: *const c_char) -> i32>;

/// Initialises a fresh model when there is no checkpoint to restore.
/// Returns 0 on success, any other value on failure.
pub type ckpt_init_callback = Option<unsafe extern "C" fn(user_data: *mut c_void) -> i32>;

/// Writes the current training step to `*out_step`. Returns 0 on success,
/// any other value on failure.
pub type ckpt_step_counter_callback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, out_step: *mut i64) -> i32>;

/// Returns wall-clock seconds since the Unix epoch. A non-finite value (NaN,
/// infinity) reports failure: the call that read the clock returns
/// CKPT_STATUS_CALLBACK_FAILED and commits nothing.
pub type ckpt_clock_callback = Option<unsafe extern "C" fn(user_data: *mut c_void) -> f64>;

/// Deletes the checkpoint at `prefix` (valid only during the call),
/// replacing the built-in deletion; it runs after the commit that swept the
/// checkpoint. If the process dies first, the next writer that opens the
/// directory runs its own delete callback on it (so make it idempotent), or
/// without one deletes the files the checkpoint owns. Returns 0 on success.
pub type ckpt_delete_callback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, prefix: *const c_char) -> i32>;

/// Severity of a log message: a `uint32_t`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ckpt_log_level {
    Info = 0,
    Warning = 1,
}

/// Receives a log message (valid only during the call).
pub type ckpt_log_callback = Option<
    unsafe extern "C" fn(user_data: *mut c_void, level: ckpt_log_level, message: *const c_char),
>;

/// A C function pointer with its shared user data.
struct CCallback<F> {
    func: F,
    /// Finalized once, when the last holder drops it.
    data: Arc<CValue>,
}

impl<F: Copy> Clone for CCallback<F> {
    fn clone(&self) -> Self {
        CCallback {
            func: self.func,
            data: Arc::clone(&self.data),
        }
    }
}

/// A non-zero return code from a C callback.
#[derive(Debug)]
struct ReturnedCode(i32);

impl fmt::Display for ReturnedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "it returned error code {}", self.0)
    }
}

impl std::error::Error for ReturnedCode {}

/// Runs a C callback that returns a code: 0 is success; any other value a
/// failure, with what the callback attached to it.
fn run_coded(callback: impl FnOnce() -> i32) -> Result<(), CallbackError> {
    let called = callback_error::call(callback);
    match called.value {
        0 => Ok(()),
        code => Err(called.failure(ReturnedCode(code))),
    }
}

fn path_c_string(path: &Path) -> Result<CString, CallbackError> {
    Ok(CString::new(path.as_os_str().as_bytes())?)
}

type SaveFnPtr = unsafe extern "C" fn(*mut c_void, *const c_char, u64) -> i32;
type PrefixFnPtr = unsafe extern "C" fn(*mut c_void, *const c_char) -> i32;
type InitFnPtr = unsafe extern "C" fn(*mut c_void) -> i32;
type PrepareFnPtr = unsafe extern "C" fn(*mut c_void, u64) -> i32;
type StepFnPtr = unsafe extern "C" fn(*mut c_void, *mut i64) -> i32;
type ClockFnPtr = unsafe extern "C" fn(*mut c_void) -> f64;
type LogFnPtr = unsafe extern "C" fn(*mut c_void, ckpt_log_level, *const c_char);

/// Options for `ckpt_manager_new`. Create with `ckpt_options_new`, set what
/// you need, pass to `ckpt_manager_new` (as often as you like), then free
/// with `ckpt_options_free`. Not thread-safe: use one options object from
/// one thread at a time.
pub struct ckpt_options {
    _private: [u8; 0],
}

impl BoxCastable for ckpt_options {
    type RustType = Options;
}

/// What a `ckpt_options` points to.
pub(crate) struct Options {
    config: Config,
    prepare: Option<CCallback<PrepareFnPtr>>,
    save: Option<CCallback<SaveFnPtr>>,
    restore: Option<CCallback<PrefixFnPtr>>,
    init: Option<CCallback<InitFnPtr>>,
    step_counter: Option<CCallback<StepFnPtr>>,
    clock: Option<CCallback<ClockFnPtr>>,
    delete: Option<CCallback<PrefixFnPtr>>,
    log: Option<CCallback<LogFnPtr>>,
}

impl Options {
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// The callbacks as Rust closures; each shares the C user data. What
    /// a callback attaches to its failure travels in the error it returns.
    pub(crate) fn callbacks(&self) -> Callbacks {
        let mut callbacks = Callbacks::new();
        if let Some(cb) = self.prepare.clone() {
            callbacks = callbacks.on_prepare(move |number| {
                // SAFETY: the user set `func` for `data` (header).
                run_coded(|| unsafe { (cb.func)(cb.data.ptr(), number) })
            });
        }
        if let Some(cb) = self.save.clone() {
            callbacks = callbacks.on_save(move |prefix, number| {
                let prefix = path_c_string(prefix)?;
                // SAFETY: the user set `func` for `data` (header); `prefix`
                // outlives the call.
                run_coded(|| unsafe { (cb.func)(cb.data.ptr(), prefix.as_ptr(), number) })
            });
        }
        if let Some(cb) = self.restore.clone() {
            callbacks = callbacks.on_restore(move |prefix| {
                let prefix = path_c_string(prefix)?;
                // SAFETY: as for save.
                run_coded(|| unsafe { (cb.func)(cb.data.ptr(), prefix.as_ptr()) })
            });
        }
        if let Some(cb) = self.init.clone() {
            callbacks = callbacks.on_init(move || {
                // SAFETY: the user set `func` for `data` (header).
                run_coded(|| unsafe { (cb.func)(cb.data.ptr()) })
            });
        }
        if let Some(cb) = self.step_counter.clone() {
            callbacks = callbacks.step_counter(move || {
                let mut step = 0i64;
                // SAFETY: as for init; `step` outlives the call.
                run_coded(|| unsafe { (cb.func)(cb.data.ptr(), &mut step) })?;
                Ok(step)
            });
        }
        if let Some(cb) = self.clock.clone() {
            callbacks = callbacks.fallible_clock(move || {
                // SAFETY: the user set `func` for `data` (header).
                let called = callback_error::call(|| unsafe { (cb.func)(cb.data.ptr()) });
                NonFiniteTime::check(called.value).map_err(|cause| called.failure(cause))
            });
        }
        if let Some(cb) = self.delete.clone() {
            callbacks = callbacks.on_delete(move |prefix| {
                let prefix = path_c_string(prefix)?;
                // SAFETY: as for save.
                run_coded(|| unsafe { (cb.func)(cb.data.ptr(), prefix.as_ptr()) })
            });
        }
        if let Some(cb) = self.log.clone() {
            callbacks = callbacks.log(move |level, message| {
                let level = match level {
                    LogLevel::Info => ckpt_log_level::Info,
                    LogLevel::Warning => ckpt_log_level::Warning,
                };
                let message = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
                // SAFETY: as for save; `message` outlives the call. It cannot
                // fail: what it attaches is dropped.
                callback_error::call(|| unsafe {
                    (cb.func)(cb.data.ptr(), level, message.as_ptr())
                });
            });
        }
        callbacks
    }
}

/// Applies a change to the options after the NULL check.
///
/// # Safety
/// `options` is NULL or a live handle from `ckpt_options_new` that no
/// other thread uses during the call.
unsafe fn update(
    options: *mut ckpt_options,
    change: impl FnOnce(&mut Options) -> FfiResult,
) -> ckpt_status {
    guard(|| {
        // SAFETY: forwarded to the caller.
        let options =
            unsafe { handle::borrow_mut(options) }.ok_or_else(|| Failure::null("options"))?;
        change(options)
    })
}

/// Creates options with TF's defaults: checkpoint name "ckpt", no preservation,
/// no interval, no callbacks. A directory and max_to_keep (or keep-all) must be
/// set before `ckpt_manager_new`.
///
/// Ownership: on success `*out_options` is a new object the caller frees with
/// `ckpt_options_free`.
/// Returns: CKPT_STATUS_OK with the options, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT.
/// Threads: any thread.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_options_new(out_options: *mut *mut ckpt_options) -> ckpt_status {
    guard(|| {
        // SAFETY: NULL or writable (header).
        let out = unsafe { out_param(out_options, "out_options") }?;
        out.write(handle::to_handle(Options {
            config: Config::default(),
            prepare: None,
            save: None,
            restore: None,
            init: None,
            step_counter: None,
            clock: None,
            delete: None,
            log: None,
        }))
    })
}

/// Frees options. Managers built from them are unaffected. NULL is a no-op.
///
/// Ownership: takes `options`.
/// Returns: nothing.
/// Errors: none.
/// Threads: one thread at a time per options object.
/// Callbacks: finalizers of callbacks no live manager holds run here, on the
/// calling thread; the others run when the last manager holding them is freed.
#[no_mangle]
pub unsafe extern "C" fn ckpt_options_free(options: *mut ckpt_options) {
    // SAFETY: a handle from ckpt_options_new, freed once and not in use
    // (header).
    guard_void(|| unsafe { handle::free_handle(options) });
}

/// Sets the checkpoint directory (required). It need not exist: the first save
/// creates it. Any bytes but NUL; relative paths are relative to the process's
/// working directory at each call. `file:///abs/path` is the local path;
/// `s3://bucket/prefix` is a prefix of an S3-compatible bucket (see
/// `ckpt_options_set_storage_option`). Any other `scheme://` is refused.
///
/// Ownership: `options` is borrowed; `directory` is borrowed (copied).
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT (`options`), CKPT_STATUS_NULL_ARGUMENT
/// (`directory`), CKPT_STATUS_INVALID_ARGUMENT (empty; a URL of a scheme the
/// library does not serve, such as `gs://` or `hdfs://`; an invalid bucket
/// name or a prefix with empty, `.` or `..` components).
/// Threads: one thread at a time per options object.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_options_set_directory(
    options: *mut ckpt_options,
    directory: *const c_char,
) -> ckpt_status {
    // SAFETY: `options` is NULL or a live handle no other thread uses
    // during the call, `directory` NULL or a NUL-terminated string (header).
    unsafe {
        update(options, |o| {
            let directory = path_arg(directory, "directory")?;
            Ok(o.config.set_directory(directory)?)
        })
    }
}

/// Keeps at most `max_to_keep` (> 0) managed checkpoints; older ones are
/// deleted, or preserved by keep_checkpoint_every_n_hours.
///
/// Ownership: `options` is borrowed.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT (`options`), CKPT_STATUS_INVALID_ARGUMENT
/// (zero or negative).
/// Threads: one thread at a time per options object.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_options_set_max_to_keep(
    options: *mut ckpt_options,
    max_to_keep: i64,
) -> ckpt_status {
    // SAFETY: `options` is NULL or a live handle no other thread uses
    // during the call (header).
    unsafe {
        update(options, |o| {
            // Negative counts become 0, which the core refuses.
            let n = usize::try_from(max_to_keep).unwrap_or(0);
            Ok(o.config.set_max_to_keep(MaxToKeep::Last(n))?)
        })
    }
}

/// Keeps every checkpoint and deletes none (TF's max_to_keep=None).
///
/// Ownership: `options` is borrowed.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT (`options`).
/// Threads: one thread at a time per options object.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_options_set_keep_all(options: *mut ckpt_options) -> ckpt_status {
    // SAFETY: `options` is NULL or a live handle no other thread uses
    // during the call (header).
    unsafe { update(options, |o| Ok(o.config.set_max_to_keep(MaxToKeep::All)?)) }
}

/// Preserves (never deletes) one checkpoint every `hours` hours among those
/// that max_to_keep pushes out. 0 turns preservation off.
///
/// Ownership: `options` is borrowed.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT (`options`), CKPT_STATUS_INVALID_ARGUMENT
/// (NaN, infinite or negative).
/// Threads: one thread at a time per options object.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_options_set_keep_checkpoint_every_n_hours(
    options: *mut ckpt_options,
    hours: f64,
) -> ckpt_status {
    // SAFETY: `options` is NULL or a live handle no other thread uses
    // during the call (header).
    unsafe {
        update(options, |o| {
            Ok(o.config.set_keep_checkpoint_every_n_hours(Some(hours))?)
        })
    }
}

/// Adds a remote tier: every checkpoint committed to the directory is then
/// copied, in the background, to `directory` (a local path, `file://` or
/// `s3://` URL, as `ckpt_options_set_directory` takes), where it is committed
/// with its own manifest and TF state file, so that directory alone is a
/// valid checkpoint directory. Saves return after the local commit; one
/// upload thread per manager copies in commit order, retrying failures with
/// backoff (see `ckpt_manager_remote_status`). A restore takes the newest
/// checkpoint of either tier. The remote uses this options object's storage
/// options; its retention is the local one unless the `remote_` setters say
/// otherwise. NULL removes the remote tier. See docs/tiers.md.
/// With a communicator every rank sets the same remote: the remote gets
/// whole checkpoints, committed by rank 0, and a node-local rank that lost
/// its directory restores its pieces from it (docs/tiers.md, Across ranks).
///
/// Ownership: `options` is borrowed; `directory` is borrowed (copied).
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT (`options`), CKPT_STATUS_INVALID_ARGUMENT
/// (as `ckpt_options_set_directory`).
/// Threads: one thread at a time per options object.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_options_set_remote_directory(
    options: *mut ckpt_options,
    directory: *const c_char,
) -> ckpt_status {
    // SAFETY: `options` is NULL or a live handle no other thread uses
    // during the call, `directory` NULL or a NUL-terminated string (header).
    unsafe {
        update(options, |o| {
            let directory = match directory.is_null() {
                true => None,
                false => Some(path_arg(directory, "directory")?.to_path_buf()),
            };
            Ok(o.config.set_remote_directory(directory)?)
        })
    }
}

/// Keeps at most `max_to_keep` (> 0) checkpoints in the remote tier (0: keep
/// every one there); the local tier keeps its own number. Default: the local
/// max_to_keep.
///
/// Ownership: `options` is borrowed.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT (`options`), CKPT_STATUS_INVALID_ARGUMENT
/// (negative, or no remote directory set yet).
/// Threads: one thread at a time per options object.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_options_set_remote_max_to_keep(
    options: *mut ckpt_options,
    max_to_keep: i64,
) -> ckpt_status {
    // SAFETY: `options` is NULL or a live handle no other thread uses
    // during the call (header).
    unsafe {
        update(options, |o| {
            let keep = match usize::try_from(max_to_keep) {
                Ok(0) => MaxToKeep::All,
                Ok(n) => MaxToKeep::Last(n),
                Err(_) => MaxToKeep::Last(0),
            };
            Ok(o.config.set_remote_max_to_keep(keep)?)
        })
    }
}

/// The remote tier's keep_checkpoint_every_n_hours (0 turns it off there).
/// Default: the local one.
///
/// Ownership: `options` is borrowed.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT (`options`), CKPT_STATUS_INVALID_ARGUMENT
/// (NaN, infinite or negative, or no remote directory set yet).
/// Threads: one thread at a time per options object.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_options_set_remote_keep_checkpoint_every_n_hours(
    options: *mut ckpt_options,
    hours: f64,
) -> ckpt_status {
    // SAFETY: `options` is NULL or a live handle no other thread uses
    // during the call (header).
    unsafe {
        update(options, |o| {
            Ok(o.config
                .set_remote_keep_checkpoint_every_n_hours(Some(hours))?)
        })
    }
}

/// The most checkpoints the local directory holds while their uploads are
/// behind (0: no bound, the default). A checkpoint whose upload the remote
/// still wants is otherwise never deleted locally; past this bound the oldest
/// waiting ones are deleted unuploaded, each with a warning, and counted in
/// `ckpt_remote_status.dropped`.
///
/// Ownership: `options` is borrowed.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT (`options`), CKPT_STATUS_INVALID_ARGUMENT
/// (negative, or no remote directory set yet).
/// Threads: one thread at a time per options object.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_options_set_local_max_held_for_upload(
    options: *mut ckpt_options,
    count: i64,
) -> ckpt_status {
    // SAFETY: `options` is NULL or a live handle no other thread uses
    // during the call (header).
    unsafe {
        update(options, |o| {
            let count = match usize::try_from(count) {
                Ok(0) => None,
                Ok(n) => Some(n),
                Err(_) => Some(0),
            };
            Ok(o.config.set_local_max_held_for_upload(count)?)
        })
    }
}

/// How long a save that answers a preemption signal (see
/// `ckpt_install_preemption_handler`) waits, after its local commit, for the
/// uploads to the remote tier to finish (default 30); what is left resumes
/// when the directory is next opened, and a warning says so.
///
/// Ownership: `options` is borrowed.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT (`options`), CKPT_STATUS_INVALID_ARGUMENT
/// (NaN, infinite or negative, or no remote directory set yet).
/// Threads: one thread at a time per options object.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_options_set_remote_preemption_seconds(
    options: *mut ckpt_options,
    seconds: f64,
) -> ckpt_status {
    // SAFETY: `options` is NULL or a live handle no other thread uses
    // during the call (header).
    unsafe {
        update(options, |o| {
            Ok(o.config.set_remote_preemption_seconds(seconds)?)
        })
    }
}

/// Whether a smaller or a larger value of a metric is better: the `mode` of
/// `ckpt_options_set_keep_best`, a `uint32_t`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ckpt_metric {
    /// Smaller is better (a loss).
    Min = 0,
    /// Larger is better (an accuracy).
    Max = 1,
}

/// Also keeps the best `k` checkpoints by the metric `metric_name` that saves
/// record with `ckpt_save_args_set_metric`, whatever max_to_keep says. A save
/// that did not record the metric, or recorded NaN, is never among the best;
/// of equal values the newer is better. The rules are a union: a checkpoint
/// is kept if max_to_keep, this, `ckpt_options_set_keep_period` or a pin
/// keeps it. Kept checkpoints stay on the state file's list. Best-k is
/// rebuilt from the manifests when a manager opens.
///
/// Ownership: `options` and `metric_name` are borrowed; the name is copied.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT, CKPT_STATUS_INVALID_ARGUMENT (a name
/// that is not UTF-8, empty or longer than 256 bytes; `mode` not a
/// `ckpt_metric`; `k` of 0); the options are unchanged then.
/// Threads: one thread at a time per options object.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_options_set_keep_best(
    options: *mut ckpt_options,
    metric_name: *const c_char,
    mode: u32,
    k: usize,
) -> ckpt_status {
    // SAFETY: `options` is NULL or a live handle no other thread uses
    // during the call; `metric_name` NULL or NUL-terminated (header).
    unsafe {
        update(options, |o| {
            let metric = utf8_arg(metric_name, "metric_name")?.to_owned();
            let mode = match mode {
                m if m == ckpt_metric::Min as u32 => MetricMode::Min,
                m if m == ckpt_metric::Max as u32 => MetricMode::Max,
                other => {
                    return Err(Failure::new(
                        ckpt_status::InvalidArgument,
                        format!("mode {other} is neither CKPT_METRIC_MIN nor CKPT_METRIC_MAX"),
                    ))
                }
            };
            Ok(o.config.set_keep_best(Some(KeepBest { metric, mode, k }))?)
        })
    }
}

/// Also keeps every checkpoint whose number is a multiple of `period`, whatever
/// max_to_keep says (a union, as for `ckpt_options_set_keep_best`). 0 turns it
/// off.
///
/// Ownership: `options` is borrowed.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT.
/// Threads: one thread at a time per options object.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_options_set_keep_period(
    options: *mut ckpt_options,
    period: u64,
) -> ckpt_status {
    // SAFETY: `options` is NULL or a live handle no other thread uses
    // during the call (header).
    unsafe {
        update(options, |o| {
            Ok(o.config.set_keep_period((period > 0).then_some(period))?)
        })
    }
}

/// Saves at most once every `seconds` seconds by the clock callback (the
/// system clock by default): a save that checks the interval is skipped until
/// that long after the last save (after the latest checkpoint's time when the
/// manager opened). With a checkpoint interval too, a save needs both to have
/// passed. A save with the interval unchecked, or requested
/// (`ckpt_manager_request_save`), goes ahead. 0 turns it off.
///
/// Ownership: `options` is borrowed.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT, CKPT_STATUS_INVALID_ARGUMENT (NaN,
/// infinite or negative); the options are unchanged then.
/// Threads: one thread at a time per options object.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_options_set_save_interval_seconds(
    options: *mut ckpt_options,
    seconds: f64,
) -> ckpt_status {
    // SAFETY: `options` is NULL or a live handle no other thread uses
    // during the call (header).
    unsafe {
        update(options, |o| {
            let seconds = (seconds != 0.0).then_some(seconds);
            Ok(o.config.set_save_interval_seconds(seconds)?)
        })
    }
}

/// Makes the manager work across the ranks of `communicator` (see
/// `ckpt_communicator`; NULL: one process), on a directory every rank sees
/// (a shared file system) or on one per rank (`ckpt_options_set_node_local`).
/// The struct is copied; its `user_data` must stay valid while any manager
/// built from these options lives.
///
/// Then `ckpt_manager_new`, `ckpt_manager_save`, `_save_with` and
/// `_restore_or_initialize` are collective: every rank calls them, in the same
/// order, and every rank returns the same result.
///  - Open: only rank 0 takes the directory's lock and recovers what
///    interrupted saves left; the others wait for it.
///  - Save: rank 0 decides (the intervals, the number, the time) and makes the
///    staging directory; every rank runs its prepare and save callbacks and
///    writes its registered tensors, with its rank in every file name: the save
///    callback's prefix is `<staging>/<name>-<N>.rank-RRRRR-of-SSSSS` (rank and
///    size, five digits each), the tensors go to
///    `<name>-<N>.rank-RRRRR-of-SSSSS.safetensors`. Each rank syncs its files;
///    if every rank succeeded, rank 0 commits one manifest listing every rank's
///    files and the state file; its sweep deletes every rank's files of the
///    checkpoints it drops. If any rank failed, nothing is committed and every
///    rank returns that rank's status with the message `rank R: ...`.
///  - Restore: rank 0 lists the checkpoints to try, newest first; every rank
///    verifies its own files of each; the first every rank can restore is
///    restored by all (the restore callback gets the rank's prefix).
///  - A rank that does not take part within the coordination timeout
///    (`ckpt_options_set_coordination_timeout`) makes the others return
///    CKPT_STATUS_TIMEOUT; nothing is committed.
///  - `ckpt_manager_save_async` is refused (CKPT_STATUS_INVALID_ARGUMENT),
///    and pins are made on rank 0.
///  - `ckpt_manager_should_save` is not collective: every rank answers from
///    its own step counter and clock, and each records the step and time of
///    every save rank 0 decided, so with the same step every rank predicts
///    rank 0's decision (a time interval can differ by the ranks' clocks).
///
/// Ownership: `options` and `communicator` are borrowed.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT (`options`), CKPT_STATUS_INVALID_ARGUMENT
/// (another `version`, a rank not below `size`, a NULL callback); the options
/// are unchanged then.
/// Threads: one thread at a time per options object.
/// Callbacks: none run; the communicator's run during collective calls, on
/// the calling thread.
#[no_mangle]
pub unsafe extern "C" fn ckpt_options_set_communicator(
    options: *mut ckpt_options,
    communicator: *const ckpt_communicator,
) -> ckpt_status {
    // SAFETY: `options` is NULL or a live handle no other thread uses
    // during the call; `communicator` NULL or readable (header).
    unsafe {
        update(options, |o| {
            let communicator = match communicator.as_ref() {
                None => None,
                Some(raw) => Some(
                    CCommunicator::new(*raw)
                        .map_err(|message| Failure::new(ckpt_status::InvalidArgument, message))?,
                ),
            };
            o.config.set_communicator(
                communicator
                    .map(|c| std::sync::Arc::new(c) as std::sync::Arc<dyn crate::Communicator>),
            );
            Ok(())
        })
    }
}

/// Whether each rank's directory is its own (node-local disks) rather than one
/// directory every rank sees (the default), for a manager with a
/// communicator. Node-local, every rank opens its own directory (each rank's
/// `ckpt_options_set_directory`; the same path on different hosts is fine):
///  - Open: every rank takes its own directory's lock and recovers it; if one
///    rank fails (for example CKPT_STATUS_LOCKED: two ranks on one host gave
///    the same directory), every rank fails.
///  - Save: rank 0 decides as with a shared directory, and every rank writes
///    its files (named as there) into its own directory. Once every rank has
///    written, the other ranks commit their own manifest and state file and
///    sweep their own files; then rank 0 commits. Restores follow rank 0's
///    state file; a checkpoint another rank committed but rank 0 did not is
///    replaced by the next save of its number.
///  - Restore: rank 0 lists the checkpoints to try; each rank verifies its own
///    files in its own directory; all restore the first every rank can.
///  - Pins (`ckpt_manager_pin`) act on the calling rank's directory: pin on
///    every rank to keep a checkpoint everywhere.
///
/// Ownership: `options` is borrowed.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT.
/// Threads: one thread at a time per options object.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_options_set_node_local(
    options: *mut ckpt_options,
    node_local: bool,
) -> ckpt_status {
    // SAFETY: `options` is NULL or a live handle no other thread uses
    // during the call (header).
    unsafe {
        update(options, |o| {
            o.config.set_node_local(node_local);
            Ok(())
        })
    }
}

/// How long each rank waits for the others at each collective step of a save
/// or restore before it fails with CKPT_STATUS_TIMEOUT (default 300 seconds).
///
/// Ownership: `options` is borrowed.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT, CKPT_STATUS_INVALID_ARGUMENT (not a
/// positive, finite number).
/// Threads: one thread at a time per options object.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_options_set_coordination_timeout(
    options: *mut ckpt_options,
    seconds: f64,
) -> ckpt_status {
    // SAFETY: `options` is NULL or a live handle no other thread uses
    // during the call (header).
    unsafe {
        update(options, |o| {
            Ok(o.config.set_coordination_timeout(seconds)?)
        })
    }
}

/// Sets an option of the object store an `s3://` directory lives on, beating
/// the `AWS_*` environment variables and the `~/.aws/credentials` and
/// `~/.aws/config` files (profile `AWS_PROFILE` or `default`). Keys are the S3
/// client's (object_store's `AmazonS3ConfigKey`): `aws_endpoint`,
/// `aws_region`, `aws_access_key_id`, `aws_secret_access_key`,
/// `aws_session_token`, `aws_allow_http` ("true" for an `http://` endpoint),
/// `aws_virtual_hosted_style_request`, ...; and the library's own:
///  - `ckpt_local_staging_directory`: where save callbacks write before the
///    upload and restore callbacks read after the download (default: the
///    temporary directory); each manager uses its own subdirectory and empties
///    it after each call, and an open removes those of killed processes;
///  - `ckpt_allow_unconditional_writes` ("true" or "false", default false):
///    write to a server that ignores conditional writes (If-Match and
///    If-None-Match), which the manager otherwise refuses at open, since two
///    writers could then both commit;
///  - `ckpt_max_retries`: how often a failed request is retried, with
///    exponential backoff (default 10, within 3 minutes);
///  - `ckpt_lease_seconds` (default 25; 0, or at least 1): how long a
///    writer's lease on the prefix lasts without a refresh (it refreshes every
///    third of it); a killed writer keeps its restart out that long plus one
///    second at most. 0 takes no lease: a second writer then opens, and only
///    the conditional commit refuses it (see `ckpt_manager_new`).
///
/// Local directories ignore these options.
///
/// Ownership: `options` is borrowed; `key` and `value` are borrowed (copied).
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT, CKPT_STATUS_INVALID_ARGUMENT (not UTF-8,
/// an unknown key, a boolean that is not "true" or "false", a count or a
/// number of seconds that is not one).
/// Threads: one thread at a time per options object.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_options_set_storage_option(
    options: *mut ckpt_options,
    key: *const c_char,
    value: *const c_char,
) -> ckpt_status {
    // SAFETY: `options` is NULL or a live handle no other thread uses
    // during the call; `key` and `value` NULL or NUL-terminated (header).
    unsafe {
        update(options, |o| {
            let key = utf8_arg(key, "key")?;
            let value = utf8_arg(value, "value")?;
            Ok(o.config.set_storage_option(key, value)?)
        })
    }
}

/// Sets the checkpoint name: files are `<directory>/<name>-<N>...`. Default
/// "ckpt".
///
/// Ownership: `options` is borrowed; `name` is borrowed (copied).
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT (`options`), CKPT_STATUS_NULL_ARGUMENT
/// (`name`), CKPT_STATUS_INVALID_ARGUMENT (empty, contains '/', or
/// "checkpoint", ".", "..").
/// Threads: one thread at a time per options object.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_options_set_checkpoint_name(
    options: *mut ckpt_options,
    name: *const c_char,
) -> ckpt_status {
    // SAFETY: `options` is NULL or a live handle no other thread uses
    // during the call, `name` NULL or a NUL-terminated string (header).
    unsafe {
        update(options, |o| {
            let name = path_arg(name, "name")?;
            Ok(o.config.set_checkpoint_name(OsStr::new(name))?)
        })
    }
}

/// Saves at most once every `interval` (> 0) steps, as read from the step
/// counter callback, which must then be set too.
///
/// Ownership: `options` is borrowed.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT (`options`), CKPT_STATUS_INVALID_ARGUMENT
/// (zero or negative).
/// Threads: one thread at a time per options object.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_options_set_checkpoint_interval(
    options: *mut ckpt_options,
    interval: i64,
) -> ckpt_status {
    // SAFETY: `options` is NULL or a live handle no other thread uses
    // during the call (header).
    unsafe {
        update(options, |o| {
            Ok(o.config.set_checkpoint_interval(Some(interval))?)
        })
    }
}

/// The step of the last checkpoint, for the interval gate (TF's
/// last_checkpoint_step).
///
/// Ownership: `options` is borrowed.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT (`options`).
/// Threads: one thread at a time per options object.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_options_set_last_checkpoint_step(
    options: *mut ckpt_options,
    step: i64,
) -> ckpt_status {
    // SAFETY: `options` is NULL or a live handle no other thread uses
    // during the call (header).
    unsafe {
        update(options, |o| {
            o.config.set_last_checkpoint_step(Some(step));
            Ok(())
        })
    }
}

/// Opens managers read-only: no lock, no recovery, no writes (saves fail with
/// CKPT_STATUS_READ_ONLY). For evaluators that follow a directory another
/// process writes; `ckpt_manager_reload` picks up new checkpoints.
///
/// Ownership: `options` is borrowed.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT (`options`).
/// Threads: one thread at a time per options object.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_options_set_read_only(
    options: *mut ckpt_options,
    read_only: bool,
) -> ckpt_status {
    // SAFETY: `options` is NULL or a live handle no other thread uses
    // during the call (header).
    unsafe {
        update(options, |o| {
            o.config.set_read_only(read_only);
            Ok(())
        })
    }
}

/// Whether `ckpt_manager_restore_or_initialize` checks every file's CRC32C
/// against the manifest (true, the default) or only file sizes.
///
/// Ownership: `options` is borrowed.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT (`options`).
/// Threads: one thread at a time per options object.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_options_set_verify_checksums(
    options: *mut ckpt_options,
    verify: bool,
) -> ckpt_status {
    // SAFETY: `options` is NULL or a live handle no other thread uses
    // during the call (header).
    unsafe {
        update(options, |o| {
            o.config.set_verify_checksums(verify);
            Ok(())
        })
    }
}

/// Whether restoring registered tensors may skip tensors that are in the
/// checkpoint but not registered, or registered but not in it (default false:
/// either is CKPT_STATUS_TENSOR_MISMATCH).
///
/// Ownership: `options` is borrowed.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT (`options`).
/// Threads: one thread at a time per options object.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_options_set_partial_restore(
    options: *mut ckpt_options,
    partial: bool,
) -> ckpt_status {
    // SAFETY: `options` is NULL or a live handle no other thread uses
    // during the call (header).
    unsafe {
        update(options, |o| {
            o.config.set_partial_restore(partial);
            Ok(())
        })
    }
}

/// What a restore onto another number of ranks does with a rank-local tensor
/// (`ckpt_manager_register_tensor` under a communicator) that has no saved
/// piece for a rank (a new rank), or whose saved pieces include ranks that no
/// longer exist: CKPT_UNMATCHED_RANK_LOCAL_REFUSE (the default) fails the
/// restore with CKPT_STATUS_TENSOR_MISMATCH on every rank, naming the tensor;
/// CKPT_UNMATCHED_RANK_LOCAL_SKIP drops the pieces of ranks that are gone and
/// leaves the buffers of a rank without a piece as they are;
/// CKPT_UNMATCHED_RANK_LOCAL_INITIALIZE does the same, then runs the init
/// callback on each rank that had no piece of some rank-local tensor, after
/// every other tensor is restored.
///
/// Ownership: `options` is borrowed.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT (`options`), CKPT_STATUS_INVALID_ARGUMENT
/// (a value that is not a `ckpt_unmatched_rank_local`).
/// Threads: one thread at a time per options object.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_options_set_unmatched_rank_local(
    options: *mut ckpt_options,
    unmatched: u32,
) -> ckpt_status {
    // SAFETY: `options` is NULL or a live handle no other thread uses
    // during the call (header).
    unsafe {
        update(options, |o| {
            let unmatched = UnmatchedRankLocal::from_u32(unmatched).ok_or_else(|| {
                Failure::new(
                    ckpt_status::InvalidArgument,
                    format!("{unmatched} is not a ckpt_unmatched_rank_local"),
                )
            })?;
            o.config.set_unmatched_rank_local(unmatched);
            Ok(())
        })
    }
}

/// Stores a callback and takes ownership of `user_data` on success: the
/// finalizer runs once when the callback is replaced or no longer held.
/// A NULL callback clears the slot and finalizes `user_data` at once.
///
/// # Safety
/// As for `update`.
unsafe fn set_callback<F: Copy>(
    options: *mut ckpt_options,
    slot: impl FnOnce(&mut Options) -> &mut Option<CCallback<F>>,
    func: Option<F>,
    user_data: *mut c_void,
    finalizer: ckpt_finalizer,
) -> ckpt_status {
    // SAFETY: forwarded to the caller.
    unsafe {
        update(options, |o| {
            let data = Arc::new(CValue::new(user_data, finalizer));
            *slot(o) = func.map(|func| CCallback { func, data });
            Ok(())
        })
    }
}

/// Sets the save callback, which writes each checkpoint's files. Without one,
/// saves write only the tensors registered with `ckpt_manager_register_tensor`
/// (and fail with CKPT_STATUS_INVALID_ARGUMENT when there are none).
///
/// For every `ckpt_options_set_*_callback`: `user_data` is passed first to each
/// call of `callback`. A NULL callback clears the slot.
///
/// Ownership: `options` is borrowed. On CKPT_STATUS_OK the library owns
/// `user_data`: `finalizer` (may be NULL) is called on it exactly once, when
/// the callback is replaced or cleared, or when neither these options nor any
/// manager built from them holds it any more. On error, ownership stays with
/// the caller.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT (`options`).
/// Threads: one thread at a time per options object.
/// Callbacks: each callback runs later, on the thread that called the manager
/// function running it, during that call, except that a background save
/// (`ckpt_manager_save_async`) runs its save and delete callbacks on the
/// library's background thread; one manager runs its callbacks one at a time.
/// A callback of a background save that calls into any manager is refused with
/// CKPT_STATUS_REENTRANT_CALL. Managers built from the same options share `callback` and
/// `user_data`, so their callbacks may run at the same time on different
/// threads: make such `user_data` thread-safe, or give each manager options of
/// its own. The finalizer may run on any thread (the one that frees the last
/// holder). A replaced or cleared callback's finalizer runs here, on the
/// calling thread, if nothing else holds it. Callbacks must not unwind through
/// the library (see "Callbacks and exceptions" at the top of this header).
#[no_mangle]
pub unsafe extern "C" fn ckpt_options_set_save_callback(
    options: *mut ckpt_options,
    callback: ckpt_save_callback,
    user_data: *mut c_void,
    finalizer: ckpt_finalizer,
) -> ckpt_status {
    // SAFETY: `options` is NULL or a live handle no other thread uses
    // during the call (header).
    unsafe { set_callback(options, |o| &mut o.save, callback, user_data, finalizer) }
}

/// Sets the prepare callback (see `ckpt_prepare_callback`).
///
/// Ownership: `options` is borrowed. On CKPT_STATUS_OK the library owns
/// `user_data` (see `ckpt_options_set_save_callback`); on error it stays the
/// caller's.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT (`options`).
/// Threads: one thread at a time per options object.
/// Callbacks: the prepare callback runs later, on the thread that called the
/// save, during that call, even for a background save; a replaced or cleared
/// callback's finalizer runs here, on the calling thread, if nothing else holds
/// it.
#[no_mangle]
pub unsafe extern "C" fn ckpt_options_set_prepare_callback(
    options: *mut ckpt_options,
    callback: ckpt_prepare_callback,
    user_data: *mut c_void,
    finalizer: ckpt_finalizer,
) -> ckpt_status {
    // SAFETY: `options` is NULL or a live handle no other thread uses
    // during the call (header).
    unsafe { set_callback(options, |o| &mut o.prepare, callback, user_data, finalizer) }
}

/// Sets the restore callback used by `ckpt_manager_restore_or_initialize`.
///
/// Ownership: `options` is borrowed. On CKPT_STATUS_OK the library owns
/// `user_data` (see `ckpt_options_set_save_callback`); on error it stays the
/// caller's.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT (`options`).
/// Threads: one thread at a time per options object.
/// Callbacks: the restore callback runs later, as for the save callback; a
/// replaced or cleared callback's finalizer runs here, on the calling thread,
/// if nothing else holds it.
#[no_mangle]
pub unsafe extern "C" fn ckpt_options_set_restore_callback(
    options: *mut ckpt_options,
    callback: ckpt_restore_callback,
    user_data: *mut c_void,
    finalizer: ckpt_finalizer,
) -> ckpt_status {
    // SAFETY: `options` is NULL or a live handle no other thread uses
    // during the call (header).
    unsafe { set_callback(options, |o| &mut o.restore, callback, user_data, finalizer) }
}

/// Sets the init callback, run by `ckpt_manager_restore_or_initialize` when
/// there is no checkpoint.
///
/// Ownership: `options` is borrowed. On CKPT_STATUS_OK the library owns
/// `user_data` (see `ckpt_options_set_save_callback`); on error it stays the
/// caller's.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT (`options`).
/// Threads: one thread at a time per options object.
/// Callbacks: the init callback runs later, as for the save callback; a
/// replaced or cleared callback's finalizer runs here, on the calling thread,
/// if nothing else holds it.
#[no_mangle]
pub unsafe extern "C" fn ckpt_options_set_init_callback(
    options: *mut ckpt_options,
    callback: ckpt_init_callback,
    user_data: *mut c_void,
    finalizer: ckpt_finalizer,
) -> ckpt_status {
    // SAFETY: `options` is NULL or a live handle no other thread uses
    // during the call (header).
    unsafe { set_callback(options, |o| &mut o.init, callback, user_data, finalizer) }
}

/// Sets the step counter read by the checkpoint interval.
///
/// Ownership: `options` is borrowed. On CKPT_STATUS_OK the library owns
/// `user_data` (see `ckpt_options_set_save_callback`); on error it stays the
/// caller's.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT (`options`).
/// Threads: one thread at a time per options object.
/// Callbacks: the step counter callback runs later, as for the save callback; a
/// replaced or cleared callback's finalizer runs here, on the calling thread,
/// if nothing else holds it.
#[no_mangle]
pub unsafe extern "C" fn ckpt_options_set_step_counter_callback(
    options: *mut ckpt_options,
    callback: ckpt_step_counter_callback,
    user_data: *mut c_void,
    finalizer: ckpt_finalizer,
) -> ckpt_status {
    // SAFETY: `options` is NULL or a live handle no other thread uses
    // during the call (header).
    unsafe {
        set_callback(
            options,
            |o| &mut o.step_counter,
            callback,
            user_data,
            finalizer,
        )
    }
}

/// Replaces the wall clock (seconds since the epoch) used for checkpoint
/// timestamps, e.g. to test keep_checkpoint_every_n_hours.
///
/// Ownership: `options` is borrowed. On CKPT_STATUS_OK the library owns
/// `user_data` (see `ckpt_options_set_save_callback`); on error it stays the
/// caller's.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT (`options`).
/// Threads: one thread at a time per options object.
/// Callbacks: the clock callback runs later, as for the save callback; a
/// replaced or cleared callback's finalizer runs here, on the calling thread,
/// if nothing else holds it.
#[no_mangle]
pub unsafe extern "C" fn ckpt_options_set_clock_callback(
    options: *mut ckpt_options,
    callback: ckpt_clock_callback,
    user_data: *mut c_void,
    finalizer: ckpt_finalizer,
) -> ckpt_status {
    // SAFETY: `options` is NULL or a live handle no other thread uses
    // during the call (header).
    unsafe { set_callback(options, |o| &mut o.clock, callback, user_data, finalizer) }
}

/// Replaces the built-in deletion of a swept checkpoint's files.
///
/// Ownership: `options` is borrowed. On CKPT_STATUS_OK the library owns
/// `user_data` (see `ckpt_options_set_save_callback`); on error it stays the
/// caller's.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT (`options`).
/// Threads: one thread at a time per options object.
/// Callbacks: the delete callback runs later, as for the save callback; a
/// replaced or cleared callback's finalizer runs here, on the calling thread,
/// if nothing else holds it.
#[no_mangle]
pub unsafe extern "C" fn ckpt_options_set_delete_callback(
    options: *mut ckpt_options,
    callback: ckpt_delete_callback,
    user_data: *mut c_void,
    finalizer: ckpt_finalizer,
) -> ckpt_status {
    // SAFETY: `options` is NULL or a live handle no other thread uses
    // during the call (header).
    unsafe { set_callback(options, |o| &mut o.delete, callback, user_data, finalizer) }
}

/// Receives the manager's warnings (default: written to stderr).
///
/// Ownership: `options` is borrowed. On CKPT_STATUS_OK the library owns
/// `user_data` (see `ckpt_options_set_save_callback`); on error it stays the
/// caller's.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT (`options`).
/// Threads: one thread at a time per options object.
/// Callbacks: the log callback runs later, as for the save callback; a replaced
/// or cleared callback's finalizer runs here, on the calling thread, if nothing
/// else holds it.
#[no_mangle]
pub unsafe extern "C" fn ckpt_options_set_log_callback(
    options: *mut ckpt_options,
    callback: ckpt_log_callback,
    user_data: *mut c_void,
    finalizer: ckpt_finalizer,
) -> ckpt_status {
    // SAFETY: `options` is NULL or a live handle no other thread uses
    // during the call (header).
    unsafe { set_callback(options, |o| &mut o.log, callback, user_data, finalizer) }
}
