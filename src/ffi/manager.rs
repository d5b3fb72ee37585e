//! `ckpt_manager`: the handle and its calls.

use std::cell::RefCell;
use std::ffi::{c_char, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::ckpt_save_args;
use super::handle::{self, BoxCastable};
use super::{
    c_string, ckpt_options, ckpt_status, ckpt_string_list, guard, handle_arg, integrity_result,
    new_path_string, new_string_list, out_param, path_arg, utf8_arg, verification, Failure,
    FfiResult,
};
use crate::manager::CheckpointManager;
use crate::tensors::{DType, TensorBox};

/// A checkpoint manager. Thread-safe: one handle may be used from several
/// threads at once; calls on it are serialised inside.
pub struct ckpt_manager {
    _private: [u8; 0],
}

impl BoxCastable for ckpt_manager {
    type RustType = Manager;
}

/// What a `ckpt_manager` points to.
pub(crate) struct Manager {
    inner: Mutex<CheckpointManager>,
    /// The manager's save request, set without its lock (from a signal
    /// handler, or while a save runs on another thread).
    save_requested: Arc<AtomicBool>,
}

thread_local! {
    /// Managers whose call is running on this thread (callbacks included).
    static ENTERED: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// Marks a manager as busy on this thread for the length of a call. Keyed
/// by address, so that it can be checked before the handle is read.
struct Entered(usize);

impl Entered {
    fn enter(manager: *const ckpt_manager) -> FfiResult<Entered> {
        let key = manager as usize;
        ENTERED.with(|entered| {
            let mut entered = entered.borrow_mut();
            if entered.contains(&key) {
                return Err(Failure::new(
                    ckpt_status::ReentrantCall,
                    "a callback called into the manager that is running it",
                ));
            }
            entered.push(key);
            Ok(Entered(key))
        })
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        ENTERED.with(|entered| entered.borrow_mut().retain(|&key| key != self.0));
    }
}

/// A manager argument, busy on this thread while it is held.
struct ManagerArg<'a> {
    manager: &'a Manager,
    _entered: Entered,
}

impl ManagerArg<'_> {
    /// Runs `body` with exclusive access to the manager.
    fn call<T>(&self, body: impl FnOnce(&mut CheckpointManager) -> FfiResult<T>) -> FfiResult<T> {
        let mut inner = self.manager.inner.lock().map_err(|_| {
            Failure::new(
                ckpt_status::Panic,
                "an earlier call on this manager panicked; free it and open a new one",
            )
        })?;
        body(&mut inner)
    }
}

/// A background save's callbacks may not call into a manager: the call
/// could wait for the very save that runs it.
fn refuse_background_callers() -> FfiResult {
    if crate::background::on_worker_thread() {
        return Err(Failure::new(
            ckpt_status::ReentrantCall,
            "a callback of a background save called into a manager; it could wait for the save \
             that runs it",
        ));
    }
    Ok(())
}

/// The manager behind a handle argument, marked busy on this thread; a
/// call from inside one of its own calls is refused before the handle is
/// read (it may be in the middle of `ckpt_manager_free`).
///
/// # Safety
/// `manager` is NULL or a live handle from `ckpt_manager_new`.
unsafe fn manager_arg<'a>(manager: *const ckpt_manager) -> FfiResult<ManagerArg<'a>> {
    if manager.is_null() {
        return Err(Failure::null("manager"));
    }
    refuse_background_callers()?;
    let entered = Entered::enter(manager)?;
    Ok(ManagerArg {
        // SAFETY: forwarded to the caller.
        manager: unsafe { handle_arg(manager, "manager") }?,
        _entered: entered,
    })
}

/// Applies a finished background save, runs `body` on the manager and
/// hands the prefix it returns to C (`*out_prefix`: a new string, or NULL
/// for `None`).
///
/// # Safety
/// `manager` is NULL or a live handle; `out_prefix` NULL or writable.
unsafe fn prefix_call(
    manager: *const ckpt_manager,
    out_prefix: *mut *mut c_char,
    body: impl FnOnce(&mut CheckpointManager) -> crate::Result<Option<PathBuf>>,
) -> ckpt_status {
    guard(|| {
        // SAFETY: forwarded to the caller.
        let (out, manager) =
            unsafe { (out_param(out_prefix, "out_prefix")?, manager_arg(manager)?) };
        let prefix = manager.call(|m| {
            m.refresh();
            Ok(body(m)?)
        })?;
        out.write(new_path_string(prefix.as_deref())?)
    })
}

/// Opens a manager on the options' directory and recovers its state from the
/// `checkpoint` state file, as TF does. A writer (the default) creates the
/// directory, takes its lock file `checkpoint.lock` (released by
/// `ckpt_manager_free` or the process's death), and finishes what interrupted
/// saves left: a save past its commit point is rolled forward (its sweep
/// included), one before it is removed, and temporary state files and a dead
/// writer's spare staging directory (`checkpoint.ckpt-spare`) go. A
/// read-only manager touches nothing.
///
/// Ownership: `options` is borrowed; the manager keeps its own copy of the
/// settings and shares the callbacks and their user_data (see
/// `ckpt_options_set_save_callback`). On success `*out_manager` is a new handle
/// the caller frees with `ckpt_manager_free`.
/// Returns: CKPT_STATUS_OK with the manager, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT, CKPT_STATUS_INVALID_ARGUMENT (no
/// directory, no max_to_keep, an interval without a step counter),
/// CKPT_STATUS_LOCKED (another manager writes there; the message names its
/// pid). On an `s3://` prefix the lock is a lease object
/// (`<prefix>/checkpoint.lease`) its writer keeps fresh: a lease whose holder
/// stopped refreshing it is waited out (at most its duration plus one second
/// after the last refresh, by the server's clock; 25 s by default, see
/// `ckpt_lease_seconds`) and taken over, so a killed writer's restart opens;
/// a lease refreshed meanwhile fails with LOCKED, within a third of its
/// duration. CKPT_STATUS_STATE_CORRUPT, CKPT_STATUS_IO_ERROR,
/// CKPT_STATUS_CALLBACK_FAILED (clock).
/// Threads: any thread, one at a time per options object.
/// Callbacks: the clock and log callbacks, and the delete callback for the
/// sweep of a commit it finishes, run on the calling thread.
#[no_mangle]
pub unsafe extern "C" fn ckpt_manager_new(
    options: *const ckpt_options,
    out_manager: *mut *mut ckpt_manager,
) -> ckpt_status {
    guard(|| {
        // SAFETY: the caller passes NULL or valid pointers (header).
        let out = unsafe { out_param(out_manager, "out_manager") }?;
        // SAFETY: as above.
        let options = unsafe { handle_arg(options, "options") }?;
        let manager = CheckpointManager::new(options.config().clone(), options.callbacks())?;
        out.write(handle::to_handle(Manager {
            save_requested: manager.save_request_flag(),
            inner: Mutex::new(manager),
        }))
    })
}

/// Frees a manager and releases its callbacks' user data. NULL is a no-op. A
/// writer removes its spare staging directory (`checkpoint.ckpt-spare`) and
/// releases its lock.
///
/// Called from inside one of this manager's own calls on the same thread (from
/// one of its callbacks, or a finalizer this free runs), or from a background
/// save's callback, it is refused: nothing is freed, the manager stays usable,
/// and `ckpt_last_error_message()` says so. It waits for the manager's
/// background save in flight, if any (see `ckpt_manager_save_async`), and
/// for the upload to the remote tier in progress, if any; uploads still
/// waiting are resumed by the next manager opened on the directory (call
/// `ckpt_manager_wait_until_finished` first to end with everything uploaded).
///
/// Ownership: takes `manager`, unless refused.
/// Returns: nothing.
/// Errors: none returned; a refusal is in `ckpt_last_error_message()`.
/// Threads: any thread, once no call on this manager runs on another thread or
/// follows.
/// Callbacks: finalizers of callbacks that neither options nor another manager
/// still hold run on the calling thread.
#[no_mangle]
pub unsafe extern "C" fn ckpt_manager_free(manager: *mut ckpt_manager) {
    // The status is dropped: C expects nothing back from a free.
    let _ = guard(|| {
        refuse_background_callers()?;
        // Held while the manager drops, so that finalizers cannot free it
        // twice or call into it.
        let _entered = Entered::enter(manager).map_err(|_| {
            Failure::new(
                ckpt_status::ReentrantCall,
                "ckpt_manager_free was called from inside one of that manager's own calls; \
                 the manager was not freed",
            )
        })?;
        // SAFETY: NULL or a handle from ckpt_manager_new, freed once, with
        // no call on it running (this thread's were refused above; other
        // threads' are excluded by the header) or following.
        unsafe { handle::free_handle(manager) };
        Ok(())
    });
}

/// Saves a checkpoint: checks the interval gate, makes the staging directory
/// `<directory>/<name>-<N>.ckpt-staging` (the writer's spare
/// `checkpoint.ckpt-spare`, renamed, when the last save left it), runs the
/// save callback with the staging prefix `<staging>/<name>-<N>` and writes
/// the registered tensors there, writes the manifest
/// (`<prefix>.ckpt-manifest.json`: each file's size and CRC32C) and the new
/// state file aside, and syncs them. A new checkpoint's files then move to
/// `<directory>/<name>-<N>...`, the directory is synced, and the state file
/// is replaced atomically (the commit point) and the directory synced again;
/// any other save (a number saved again, a sweep) first syncs a commit record
/// (its commit point) and then moves the files, replacing those of a number
/// saved again. Last, what the oldest checkpoints beyond max_to_keep own is
/// deleted, or they are preserved. The emptied staging directory stays as the
/// writer's spare until the manager is freed, so that later saves need not
/// create one.
///
/// `checkpoint_number` is NULL to use the save counter's next value, or points
/// to an explicit number. `check_interval` false saves even within the interval
/// (never twice at the same step). On failure nothing is committed and the
/// manager is unchanged, except for a CKPT_STATUS_IO_ERROR whose message says
/// the checkpoint "is committed" (or "may still be committed"): the next save,
/// restore or open finishes that commit.
///
/// Ownership: `manager` and `checkpoint_number` are borrowed for the call. On
/// success `*out_prefix` is a new string the caller frees with
/// `ckpt_string_free`, or NULL.
/// Returns: CKPT_STATUS_OK with the new checkpoint's prefix, or NULL when the
/// interval gate skipped it; or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT, CKPT_STATUS_INVALID_ARGUMENT (neither a
/// save callback nor a registered tensor; under a communicator, ranks passing
/// different `checkpoint_number` or `check_interval`: every rank fails and
/// nothing is saved), CKPT_STATUS_CALLBACK_FAILED,
/// CKPT_STATUS_IO_ERROR (the previous state stays valid),
/// CKPT_STATUS_READ_ONLY, CKPT_STATUS_REENTRANT_CALL.
/// Threads: any thread; calls on one manager are serialised, and one made from
/// inside that manager's own callback is refused with
/// CKPT_STATUS_REENTRANT_CALL.
/// Callbacks: the step counter, save, clock, delete and log callbacks run on
/// the calling thread, during the call.
#[no_mangle]
pub unsafe extern "C" fn ckpt_manager_save(
    manager: *mut ckpt_manager,
    checkpoint_number: *const u64,
    check_interval: bool,
    out_prefix: *mut *mut c_char,
) -> ckpt_status {
    // SAFETY: NULL or a readable number (header).
    let number = unsafe { checkpoint_number.as_ref() }.copied();
    // SAFETY: the caller passes NULL or valid pointers (header).
    unsafe { prefix_call(manager, out_prefix, |m| m.save(number, check_interval)) }
}

/// The latest checkpoint's prefix, as recorded in the state file (its files are
/// not checked).
///
/// Ownership: `manager` is borrowed. On success `*out_prefix` is a new string
/// the caller frees with `ckpt_string_free`, or NULL.
/// Returns: CKPT_STATUS_OK with the prefix, or NULL when there is none; or an
/// error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT, CKPT_STATUS_REENTRANT_CALL.
/// Threads: any thread; calls on one manager are serialised, and one made from
/// inside that manager's own callback is refused with
/// CKPT_STATUS_REENTRANT_CALL.
/// Callbacks: the log callback, on the calling thread, with the warnings of a
/// background save that has finished since the last call.
#[no_mangle]
pub unsafe extern "C" fn ckpt_manager_latest(
    manager: *const ckpt_manager,
    out_prefix: *mut *mut c_char,
) -> ckpt_status {
    // SAFETY: the caller passes NULL or valid pointers (header).
    unsafe { prefix_call(manager, out_prefix, |m| Ok(m.latest_checkpoint())) }
}

/// The managed checkpoints' prefixes, oldest first. Preserved checkpoints are
/// not listed.
///
/// Ownership: `manager` is borrowed. On success `*out_list` is a new list the
/// caller frees with `ckpt_string_list_free`.
/// Returns: CKPT_STATUS_OK with the list (possibly empty, never NULL), or an
/// error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT, CKPT_STATUS_REENTRANT_CALL.
/// Threads: any thread; calls on one manager are serialised, and one made from
/// inside that manager's own callback is refused with
/// CKPT_STATUS_REENTRANT_CALL.
/// Callbacks: the log callback, on the calling thread, with the warnings of a
/// background save that has finished since the last call.
#[no_mangle]
pub unsafe extern "C" fn ckpt_manager_checkpoints(
    manager: *const ckpt_manager,
    out_list: *mut *mut ckpt_string_list,
) -> ckpt_status {
    guard(|| {
        // SAFETY: the caller passes NULL or valid pointers (header).
        let (out, manager) = unsafe { (out_param(out_list, "out_list")?, manager_arg(manager)?) };
        let checkpoints = manager.call(|m| {
            m.refresh();
            Ok(m.checkpoints())
        })?;
        out.write(new_string_list(&checkpoints)?)
    })
}

/// Restores the newest intact checkpoint through the restore callback, or, with
/// none, runs the init callback (if set). The latest is verified against its
/// manifest first (sizes, and CRC32C unless `ckpt_options_set_verify_checksums`
/// turned that off); if it is missing or damaged, a warning goes to the log
/// callback (stderr by default) and the newest older checkpoint that verifies
/// is restored instead. One without a manifest (written by TF, say) is restored
/// unverified. With a checkpoint interval, the step counter's value becomes the
/// last checkpoint step.
///
/// Registered tensors are read from `<prefix>.safetensors` after its header is
/// validated and matched against the registry (a mismatch is
/// CKPT_STATUS_TENSOR_MISMATCH and leaves every buffer untouched), then the
/// restore callback, if set, runs. To read the file once, its CRC32C is checked
/// while it is read into the buffers: if it does not match, the buffers hold
/// damaged bytes until an older checkpoint is restored over them. If that fails
/// too (none intact, or an older checkpoint's tensors do not match the
/// registry; the message says so), the buffers' contents are unspecified. A
/// checkpoint without `<prefix>.safetensors` is a mismatch when tensors are
/// registered (a partial restore skips it).
///
/// Ownership: `manager` is borrowed. On success `*out_prefix` is a new string
/// the caller frees with `ckpt_string_free`, or NULL.
/// Returns: CKPT_STATUS_OK with the restored prefix, or NULL when there was
/// nothing to restore; or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT, CKPT_STATUS_INVALID_ARGUMENT (a
/// checkpoint exists but neither a restore callback nor a tensor is set),
/// CKPT_STATUS_TENSOR_MISMATCH, CKPT_STATUS_CHECKPOINT_DAMAGED (no intact
/// checkpoint is left), CKPT_STATUS_CALLBACK_FAILED, CKPT_STATUS_IO_ERROR,
/// CKPT_STATUS_REENTRANT_CALL.
/// Threads: any thread; calls on one manager are serialised, and one made from
/// inside that manager's own callback is refused with
/// CKPT_STATUS_REENTRANT_CALL.
/// Callbacks: the restore, init, step counter, clock and log callbacks (and
/// the delete callback when it finishes an interrupted commit) run on the
/// calling thread, during the call.
#[no_mangle]
pub unsafe extern "C" fn ckpt_manager_restore_or_initialize(
    manager: *mut ckpt_manager,
    out_prefix: *mut *mut c_char,
) -> ckpt_status {
    // SAFETY: the caller passes NULL or valid pointers (header).
    unsafe { prefix_call(manager, out_prefix, |m| m.restore_or_initialize()) }
}

/// The manager's directory, as given in the options.
///
/// Ownership: `manager` is borrowed. On success `*out_directory` is a new
/// string the caller frees with `ckpt_string_free`.
/// Returns: CKPT_STATUS_OK with the directory, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT, CKPT_STATUS_REENTRANT_CALL.
/// Threads: any thread; calls on one manager are serialised, and one made from
/// inside that manager's own callback is refused with
/// CKPT_STATUS_REENTRANT_CALL.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_manager_directory(
    manager: *const ckpt_manager,
    out_directory: *mut *mut c_char,
) -> ckpt_status {
    guard(|| {
        // SAFETY: the caller passes NULL or valid pointers (header).
        let (out, manager) = unsafe {
            (
                out_param(out_directory, "out_directory")?,
                manager_arg(manager)?,
            )
        };
        let directory = manager.call(|m| c_string(m.directory().as_os_str().as_bytes()))?;
        out.write(handle::to_c_string(directory))
    })
}

/// The save counter: the number of saves, continued from the highest checkpoint
/// number found when the manager opened. An unnumbered save uses the counter's
/// next value.
///
/// Ownership: `manager` is borrowed; `*out_counter` is written on success.
/// Returns: CKPT_STATUS_OK with the counter, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT, CKPT_STATUS_REENTRANT_CALL.
/// Threads: any thread; calls on one manager are serialised, and one made from
/// inside that manager's own callback is refused with
/// CKPT_STATUS_REENTRANT_CALL.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_manager_save_counter(
    manager: *const ckpt_manager,
    out_counter: *mut u64,
) -> ckpt_status {
    guard(|| {
        // SAFETY: the caller passes NULL or valid pointers (header).
        let (out, manager) = unsafe {
            (
                out_param(out_counter, "out_counter")?,
                manager_arg(manager)?,
            )
        };
        out.write(manager.call(|m| Ok(m.save_counter()))?)
    })
}

/// Checks a checkpoint against its manifest: every recorded file exists with
/// its size and, when `check_checksums`, its CRC32C.
///
/// Ownership: `manager` and `prefix` are borrowed; `prefix` NULL means the
/// latest checkpoint.
/// Returns: CKPT_STATUS_OK when intact, or an error.
/// Errors: CKPT_STATUS_CHECKPOINT_DAMAGED (the message says which file and
/// how), CKPT_STATUS_NO_MANIFEST (files but no manifest, or a manifest older
/// than the save the state file records, which another tool made),
/// CKPT_STATUS_INVALID_ARGUMENT (NULL prefix and no latest),
/// CKPT_STATUS_NULL_ARGUMENT, CKPT_STATUS_IO_ERROR, CKPT_STATUS_REENTRANT_CALL.
/// Threads: any thread; calls on one manager are serialised, and one made from
/// inside that manager's own callback is refused with
/// CKPT_STATUS_REENTRANT_CALL.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_manager_verify(
    manager: *const ckpt_manager,
    prefix: *const c_char,
    check_checksums: bool,
) -> ckpt_status {
    guard(|| {
        // SAFETY: the caller passes NULL or valid pointers (header).
        let manager = unsafe { manager_arg(manager) }?;
        let prefix = if prefix.is_null() {
            None
        } else {
            // SAFETY: a NUL-terminated string (header).
            Some(unsafe { path_arg(prefix, "prefix") }?)
        };
        let integrity = manager.call(|m| Ok(m.verify(prefix, verification(check_checksums))?))?;
        integrity_result(integrity)
    })
}

/// Re-reads the state file, so that a read-only manager sees checkpoints
/// another process saved since it opened.
///
/// Ownership: `manager` is borrowed.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT, CKPT_STATUS_STATE_CORRUPT,
/// CKPT_STATUS_IO_ERROR, CKPT_STATUS_CALLBACK_FAILED (clock),
/// CKPT_STATUS_REENTRANT_CALL.
/// Threads: any thread; calls on one manager are serialised, and one made from
/// inside that manager's own callback is refused with
/// CKPT_STATUS_REENTRANT_CALL.
/// Callbacks: the clock and log callbacks run on the calling thread.
#[no_mangle]
pub unsafe extern "C" fn ckpt_manager_reload(manager: *mut ckpt_manager) -> ckpt_status {
    // SAFETY: NULL or a live handle (header).
    guard(|| unsafe { manager_arg(manager) }?.call(|m| Ok(m.reload()?)))
}

/// Registers a host buffer with the built-in saver: every save writes the
/// registered tensors to `<prefix>.safetensors` (across ranks
/// `<prefix>.rank-RRRRR-of-NNNNN.safetensors`; after the save callback, if one
/// is set, has run; those file names belong to the built-in saver) and lists
/// them in the manifest, and `ckpt_manager_restore_or_initialize` reads them
/// back into the buffers after checking every name, dtype and shape.
///
/// The tensor is rank-local: under a communicator each rank saves and restores
/// its own (ranks may give it different shapes); a restore by another number
/// of ranks than saved it is refused unless
/// `ckpt_options_set_unmatched_rank_local` says otherwise. Without a
/// communicator it is the whole tensor: it restores from a replicated or
/// sharded tensor of that name saved by any number of ranks, and what it saves
/// restores into any layout of boxes.
///
/// `name` (UTF-8, not "__metadata__") is copied. `dtype` is a `ckpt_dtype`
/// value. `shape` points to `ndim` dimensions (may be NULL when `ndim` is 0: a
/// scalar); a dimension of 0 makes an empty tensor, saved with its shape.
///
/// Ownership: `manager`, `name` and `shape` are borrowed for the call. `data`
/// is borrowed until the tensor is unregistered or the manager freed: it must
/// hold the tensor's bytes (the product of the shape times the dtype's size, in
/// the host's little-endian layout; may be NULL when that is 0). The library
/// reads it during saves and writes it during restores, so do not touch it from
/// other threads then.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT, CKPT_STATUS_INVALID_ARGUMENT (duplicate
/// or unusable name, unknown dtype, an overflowing shape, NULL data for a
/// tensor with bytes), CKPT_STATUS_REENTRANT_CALL.
/// Threads: any thread; calls on one manager are serialised, and one made from
/// inside that manager's own callback is refused with
/// CKPT_STATUS_REENTRANT_CALL.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_manager_register_tensor(
    manager: *mut ckpt_manager,
    name: *const c_char,
    dtype: u32,
    shape: *const u64,
    ndim: usize,
    data: *mut c_void,
) -> ckpt_status {
    guard(|| {
        // SAFETY: the caller passes NULL or valid pointers (header).
        let (manager, name) = unsafe { (manager_arg(manager)?, utf8_arg(name, "name")?) };
        let dtype = dtype_arg(dtype)?;
        // SAFETY: `ndim` readable dimensions (header).
        let shape = unsafe { dims_arg(shape, ndim, "shape") }?;
        manager.call(|m| {
            // SAFETY: the caller keeps `data` valid for the tensor's bytes
            // until it is unregistered or the manager freed (header).
            Ok(unsafe { m.register_tensor(name, dtype, shape, data.cast()) }?)
        })
    })
}

/// Registers a host buffer that holds the same tensor on every rank (weights
/// of data-parallel training): a save writes it once, the ranks sharing the
/// writing of such tensors so that none writes much more than the others, and
/// a restore reads it into every rank's buffer, whatever number of ranks
/// saved it. Without a communicator it is as `ckpt_manager_register_tensor`.
///
/// `name`, `dtype`, `shape`, `ndim` and `data` are as for
/// `ckpt_manager_register_tensor`. Every rank that registers `name` must
/// register it as replicated with the same dtype, shape and bytes (each save
/// compares the CRC32C of every rank's copy); a save where the ranks disagree
/// fails with CKPT_STATUS_TENSOR_MISMATCH on every rank and commits nothing.
///
/// Ownership: as for `ckpt_manager_register_tensor`.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: as for `ckpt_manager_register_tensor`.
/// Threads: as for `ckpt_manager_register_tensor`.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_manager_register_replicated_tensor(
    manager: *mut ckpt_manager,
    name: *const c_char,
    dtype: u32,
    shape: *const u64,
    ndim: usize,
    data: *mut c_void,
) -> ckpt_status {
    guard(|| {
        // SAFETY: the caller passes NULL or valid pointers (header).
        let (manager, name) = unsafe { (manager_arg(manager)?, utf8_arg(name, "name")?) };
        let dtype = dtype_arg(dtype)?;
        // SAFETY: `ndim` readable dimensions (header).
        let shape = unsafe { dims_arg(shape, ndim, "shape") }?;
        manager.call(|m| {
            // SAFETY: the caller keeps `data` valid for the tensor's bytes
            // until it is unregistered or the manager freed (header).
            Ok(unsafe { m.register_replicated_tensor(name, dtype, shape, data.cast()) }?)
        })
    })
}

/// Registers this rank's box of a sharded tensor: the tensor is
/// `global_shape`, this rank holds the elements from `offset` over
/// `local_shape` (each `ndim` long), and `data` holds them row-major over
/// `local_shape`. Any layout of boxes over the ranks works (rows, columns,
/// blocks, uneven splits); a rank may hold an empty box (a 0 in
/// `local_shape`) or not register the tensor. A save writes each rank's box;
/// a restore fills each rank's box from the saved boxes that overlap it,
/// reading only their bytes, whatever number of ranks saved them (a single
/// process's `ckpt_manager_register_tensor` tensor of that name included).
///
/// A save fails with CKPT_STATUS_TENSOR_MISMATCH on every rank, committing
/// nothing, when the ranks disagree on the tensor's kind, dtype or global
/// shape, or when two ranks' boxes overlap. A restore fails with
/// CKPT_STATUS_TENSOR_MISMATCH, on every rank, when part of a box was never
/// saved (the message names the tensor and the missing region), even with a
/// partial restore.
///
/// Ownership: `manager`, `name`, `global_shape`, `offset` and `local_shape` are
/// borrowed for the call (each may be NULL when `ndim` is 0); `data` as for
/// `ckpt_manager_register_tensor`, holding the box's bytes.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT, CKPT_STATUS_INVALID_ARGUMENT (as for
/// `ckpt_manager_register_tensor`, and a box outside `global_shape`),
/// CKPT_STATUS_REENTRANT_CALL.
/// Threads: any thread; calls on one manager are serialised, and one made from
/// inside that manager's own callback is refused with
/// CKPT_STATUS_REENTRANT_CALL.
/// Callbacks: none run.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn ckpt_manager_register_tensor_slice(
    manager: *mut ckpt_manager,
    name: *const c_char,
    dtype: u32,
    global_shape: *const u64,
    offset: *const u64,
    local_shape: *const u64,
    ndim: usize,
    data: *mut c_void,
) -> ckpt_status {
    guard(|| {
        // SAFETY: the caller passes NULL or valid pointers (header).
        let (manager, name) = unsafe { (manager_arg(manager)?, utf8_arg(name, "name")?) };
        let dtype = dtype_arg(dtype)?;
        // SAFETY: `ndim` readable dimensions in each (header).
        let (global_shape, offset, local_shape) = unsafe {
            (
                dims_arg(global_shape, ndim, "global_shape")?,
                dims_arg(offset, ndim, "offset")?,
                dims_arg(local_shape, ndim, "local_shape")?,
            )
        };
        let place = TensorBox {
            offset: offset.to_vec(),
            shape: local_shape.to_vec(),
        };
        manager.call(|m| {
            // SAFETY: the caller keeps `data` valid for the box's bytes
            // until it is unregistered or the manager freed (header).
            Ok(unsafe { m.register_tensor_slice(name, dtype, global_shape, place, data.cast()) }?)
        })
    })
}

/// A C `ckpt_dtype`.
fn dtype_arg(dtype: u32) -> FfiResult<DType> {
    DType::from_u32(dtype).ok_or_else(|| {
        Failure::new(
            ckpt_status::InvalidArgument,
            format!("unknown dtype {dtype}"),
        )
    })
}

/// `ndim` dimensions at `dims` (which may be NULL when `ndim` is 0).
///
/// # Safety
/// `dims` is NULL or points to `ndim` readable values.
unsafe fn dims_arg<'a>(dims: *const u64, ndim: usize, what: &'static str) -> FfiResult<&'a [u64]> {
    match (dims.is_null(), ndim) {
        (_, 0) => Ok(&[]),
        (true, _) => Err(Failure::null(what)),
        // SAFETY: `ndim` readable dimensions (the caller's contract).
        (false, _) => Ok(unsafe { std::slice::from_raw_parts(dims, ndim) }),
    }
}

/// Unregisters a tensor; its buffer is no longer read or written.
///
/// Ownership: `manager` and `name` are borrowed.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT, CKPT_STATUS_INVALID_ARGUMENT (not
/// registered), CKPT_STATUS_REENTRANT_CALL.
/// Threads: any thread; calls on one manager are serialised, and one made from
/// inside that manager's own callback is refused with
/// CKPT_STATUS_REENTRANT_CALL.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_manager_unregister_tensor(
    manager: *mut ckpt_manager,
    name: *const c_char,
) -> ckpt_status {
    guard(|| {
        // SAFETY: the caller passes NULL or valid pointers (header).
        let (manager, name) = unsafe { (manager_arg(manager)?, utf8_arg(name, "name")?) };
        manager.call(|m| Ok(m.unregister_tensor(name)?))
    })
}

/// `ckpt_manager_save` with the arguments of `args`: a checkpoint number,
/// whether to check the intervals, and metrics and metadata recorded in the
/// checkpoint's manifest. Everything else is as for `ckpt_manager_save`,
/// which is this call with default arguments.
///
/// Ownership: `manager` and `args` are borrowed for the call. On success
/// `*out_prefix` is a new string the caller frees with `ckpt_string_free`, or
/// NULL.
/// Returns: CKPT_STATUS_OK with the new checkpoint's prefix, or NULL when the
/// interval gate skipped it; or an error.
/// Errors: as `ckpt_manager_save`.
/// Threads: any thread; calls on one manager are serialised, and one made from
/// inside that manager's own callback is refused with
/// CKPT_STATUS_REENTRANT_CALL. `args` must not change during the call.
/// Callbacks: the step counter, save, clock, delete and log callbacks run on
/// the calling thread, during the call.
#[no_mangle]
pub unsafe extern "C" fn ckpt_manager_save_with(
    manager: *mut ckpt_manager,
    args: *const ckpt_save_args,
    out_prefix: *mut *mut c_char,
) -> ckpt_status {
    // SAFETY: NULL or a live handle (header).
    let Some(args) = (unsafe { handle::borrow(args) }) else {
        return guard(|| {
            // SAFETY: NULL or writable (header).
            unsafe { out_param(out_prefix, "out_prefix") }?;
            Err(Failure::null("args"))
        });
    };
    // SAFETY: the caller passes NULL or valid pointers (header).
    unsafe { prefix_call(manager, out_prefix, |m| m.save_with(args)) }
}

/// Whether `ckpt_manager_save` with `check_interval` true would save now: a
/// save was requested (`ckpt_manager_request_save`, a preemption signal), or
/// the checkpoint interval and `ckpt_options_set_save_interval_seconds` have
/// passed. Saves nothing.
///
/// Ownership: `manager` is borrowed; `*out_should_save` is written on success.
/// Returns: CKPT_STATUS_OK with the answer, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT, CKPT_STATUS_CALLBACK_FAILED (step
/// counter, clock), CKPT_STATUS_READ_ONLY, CKPT_STATUS_REENTRANT_CALL.
/// Threads: any thread; calls on one manager are serialised, and one made from
/// inside that manager's own callback is refused with
/// CKPT_STATUS_REENTRANT_CALL.
/// Callbacks: the step counter and clock callbacks run on the calling thread.
#[no_mangle]
pub unsafe extern "C" fn ckpt_manager_should_save(
    manager: *mut ckpt_manager,
    out_should_save: *mut bool,
) -> ckpt_status {
    guard(|| {
        // SAFETY: the caller passes NULL or valid pointers (header).
        let (out, manager) = unsafe {
            (
                out_param(out_should_save, "out_should_save")?,
                manager_arg(manager)?,
            )
        };
        out.write(manager.call(|m| Ok(m.should_save()?))?)
    })
}

/// Makes the manager's next save (`ckpt_manager_save`, `_save_with`) go ahead
/// whatever the intervals say (never twice at the same step). The request
/// stands until a save goes through, or finds the current step saved already.
///
/// Async-signal-safe: it sets a flag, allocates nothing and takes no lock, so a
/// signal handler may call it, as may any thread while a call on the manager
/// runs. It does not set `ckpt_last_error_message()`.
///
/// Ownership: `manager` is borrowed.
/// Returns: CKPT_STATUS_OK, or CKPT_STATUS_NULL_ARGUMENT.
/// Errors: CKPT_STATUS_NULL_ARGUMENT (no message is set).
/// Threads: any thread, and signal handlers, until `ckpt_manager_free`.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_manager_request_save(manager: *const ckpt_manager) -> ckpt_status {
    // SAFETY: NULL or a live handle (header); only the atomic flag is read.
    match unsafe { handle::borrow(manager) } {
        Some(manager) => {
            manager.save_requested.store(true, Ordering::Release);
            ckpt_status::Ok
        }
        None => ckpt_status::NullArgument,
    }
}

/// Pins a managed checkpoint: every sweep keeps it until it is unpinned. The
/// pin is recorded in the checkpoint's manifest, which is replaced atomically
/// (written aside, synced, renamed over), so it survives restarts. A re-save
/// of the same number stays pinned. Pinning a pinned checkpoint does nothing.
///
/// Ownership: `manager` and `prefix` are borrowed.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT, CKPT_STATUS_INVALID_ARGUMENT (`prefix` is
/// not on the managed list), CKPT_STATUS_NO_MANIFEST (written by another tool:
/// nowhere to record the pin), CKPT_STATUS_CHECKPOINT_DAMAGED (its manifest is
/// unusable), CKPT_STATUS_IO_ERROR, CKPT_STATUS_READ_ONLY,
/// CKPT_STATUS_REENTRANT_CALL; nothing changed then.
/// Threads: any thread; calls on one manager are serialised, and one made from
/// inside that manager's own callback is refused with
/// CKPT_STATUS_REENTRANT_CALL.
/// Callbacks: the log callback (and the delete callback when it finishes an
/// interrupted commit) run on the calling thread.
#[no_mangle]
pub unsafe extern "C" fn ckpt_manager_pin(
    manager: *mut ckpt_manager,
    prefix: *const c_char,
) -> ckpt_status {
    // SAFETY: the caller passes NULL or valid pointers (header).
    unsafe { set_pinned(manager, prefix, true) }
}

/// Unpins a managed checkpoint (recorded as `ckpt_manager_pin` records a pin).
/// Nothing is deleted now: the next save's sweep applies the other rules.
/// Unpinning a checkpoint that is not pinned does nothing.
///
/// Ownership: `manager` and `prefix` are borrowed.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: as `ckpt_manager_pin`.
/// Threads: any thread; calls on one manager are serialised, and one made from
/// inside that manager's own callback is refused with
/// CKPT_STATUS_REENTRANT_CALL.
/// Callbacks: as `ckpt_manager_pin`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_manager_unpin(
    manager: *mut ckpt_manager,
    prefix: *const c_char,
) -> ckpt_status {
    // SAFETY: the caller passes NULL or valid pointers (header).
    unsafe { set_pinned(manager, prefix, false) }
}

/// # Safety
/// `manager` is NULL or a live handle; `prefix` NULL or NUL-terminated.
unsafe fn set_pinned(
    manager: *mut ckpt_manager,
    prefix: *const c_char,
    pinned: bool,
) -> ckpt_status {
    guard(|| {
        // SAFETY: forwarded to the caller.
        let (manager, prefix) = unsafe { (manager_arg(manager)?, path_arg(prefix, "prefix")?) };
        manager.call(|m| Ok(m.set_pinned(prefix, pinned)?))
    })
}

/// The best managed checkpoint by the keep-best metric
/// (`ckpt_options_set_keep_best`); of equal values the newer.
///
/// Ownership: `manager` is borrowed. On success `*out_prefix` is a new string
/// the caller frees with `ckpt_string_free`, or NULL.
/// Returns: CKPT_STATUS_OK with the prefix, or NULL when no managed checkpoint
/// recorded the metric (or all recorded NaN); or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT, CKPT_STATUS_INVALID_ARGUMENT (no
/// keep-best metric is set), CKPT_STATUS_REENTRANT_CALL.
/// Threads: any thread; calls on one manager are serialised, and one made from
/// inside that manager's own callback is refused with
/// CKPT_STATUS_REENTRANT_CALL.
/// Callbacks: the log callback, on the calling thread, with the warnings of a
/// background save that has finished since the last call.
#[no_mangle]
pub unsafe extern "C" fn ckpt_manager_best(
    manager: *const ckpt_manager,
    out_prefix: *mut *mut c_char,
) -> ckpt_status {
    // SAFETY: the caller passes NULL or valid pointers (header).
    unsafe { prefix_call(manager, out_prefix, |m| m.best_checkpoint()) }
}

/// What is known of a checkpoint in the manager's directory, as a JSON object:
/// `prefix`, `number`, `step` (the step counter's value at the save, or null),
/// `timestamp` (seconds since the epoch), `metrics` (an object; NaN and
/// infinities as the strings "NaN", "Infinity", "-Infinity"), `metadata` (the
/// object the save recorded, or null), `pinned`, `managed` (on the state file's
/// list), `latest`, `has_manifest` (false for one TF wrote), `files` (objects
/// with the file's `suffix` after the prefix and its `size`) and `total_size`.
///
/// Ownership: `manager` and `prefix` are borrowed. On success `*out_json` is a
/// new string the caller frees with `ckpt_string_free`.
/// Returns: CKPT_STATUS_OK with the JSON, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT, CKPT_STATUS_INVALID_ARGUMENT (no
/// checkpoint of that prefix in the directory), CKPT_STATUS_CHECKPOINT_DAMAGED
/// (its manifest is unusable), CKPT_STATUS_IO_ERROR,
/// CKPT_STATUS_REENTRANT_CALL.
/// Threads: any thread; calls on one manager are serialised, and one made from
/// inside that manager's own callback is refused with
/// CKPT_STATUS_REENTRANT_CALL.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_manager_checkpoint_info(
    manager: *const ckpt_manager,
    prefix: *const c_char,
    out_json: *mut *mut c_char,
) -> ckpt_status {
    guard(|| {
        // SAFETY: the caller passes NULL or valid pointers (header).
        let (out, manager, prefix) = unsafe {
            (
                out_param(out_json, "out_json")?,
                manager_arg(manager)?,
                path_arg(prefix, "prefix")?,
            )
        };
        let info = manager.call(|m| Ok(m.checkpoint_info(prefix)?))?;
        let json = serde_json::to_vec(&info).expect("checkpoint info always serialises");
        out.write(handle::to_c_string(c_string(json)?))
    })
}

/// Saves in the background: decides on the calling thread (the intervals, the
/// number), runs the prepare callback and copies the registered tensors into
/// the library's snapshot buffer, then returns the prefix the checkpoint will
/// have. The library's background thread then runs the save callback (which
/// must write the state as it was at the call: copy what it needs in the
/// prepare callback), writes the snapshot and commits, as
/// `ckpt_manager_save_with` does. The checkpoint becomes the latest and enters
/// the list only at its commit; a failed one never does and leaves nothing.
///
/// At most one save is in flight: a call that saves while one is in flight
/// first waits for it (that wait is part of this call's blocking time). A call
/// the intervals skip never waits. The snapshot buffer holds one copy of the
/// registered tensors and is reused by later saves.
///
/// A background save's failure is returned, once, as its own status and
/// message, by the next call on the manager that saves, restores, pins,
/// reloads, asks `ckpt_manager_should_save` or waits
/// (`ckpt_manager_wait_until_finished`); that call then does nothing else.
/// `ckpt_manager_free` waits for the save in flight; a failure it finds goes to
/// the log callback.
///
/// `args` is NULL for the defaults (as `ckpt_save_args_new` makes them).
///
/// Ownership: `manager` and `args` are borrowed for the call. On success
/// `*out_prefix` is a new string the caller frees with `ckpt_string_free`, or
/// NULL.
/// Returns: CKPT_STATUS_OK with the future checkpoint's prefix, or NULL when
/// the interval gate skipped it; or an error (the previous background save's,
/// or this call's: nothing started then).
/// Errors: as `ckpt_manager_save`, plus CKPT_STATUS_PANIC (a previous
/// background save panicked).
/// Threads: any thread; calls on one manager are serialised, and one made from
/// inside that manager's own callback is refused with
/// CKPT_STATUS_REENTRANT_CALL.
/// Callbacks: the step counter, clock, prepare and log callbacks run on the
/// calling thread, during the call; the save and delete callbacks on the
/// library's background thread, after it.
#[no_mangle]
pub unsafe extern "C" fn ckpt_manager_save_async(
    manager: *mut ckpt_manager,
    args: *const ckpt_save_args,
    out_prefix: *mut *mut c_char,
) -> ckpt_status {
    // SAFETY: NULL or a live handle (header).
    let args = unsafe { handle::borrow(args) };
    let defaults = crate::SaveArgs::default();
    // SAFETY: the caller passes NULL or valid pointers (header).
    unsafe {
        prefix_call(manager, out_prefix, |m| {
            m.save_async(args.unwrap_or(&defaults))
        })
    }
}

/// Waits until the background save in flight, if any, has committed or failed,
/// and every upload to the remote tier (`ckpt_options_set_remote_directory`)
/// is done, for at most `timeout_seconds` (a negative value or infinity waits as long
/// as it takes; 0 only checks).
///
/// Ownership: `manager` is borrowed.
/// Returns: CKPT_STATUS_OK when no save is in flight and none failed unreported;
/// the background save's own status when it failed (once); or
/// CKPT_STATUS_TIMEOUT when it or an upload is still running (uploads go on).
/// Errors: CKPT_STATUS_NULL_ARGUMENT, CKPT_STATUS_INVALID_ARGUMENT (NaN),
/// CKPT_STATUS_TIMEOUT, CKPT_STATUS_REENTRANT_CALL, and every status of
/// `ckpt_manager_save_with` (the background save's).
/// Threads: any thread; calls on one manager are serialised (the wait holds
/// the manager: other calls on it wait too), and one made from inside that
/// manager's own callback is refused with CKPT_STATUS_REENTRANT_CALL.
/// Callbacks: the log callback runs on the calling thread.
#[no_mangle]
pub unsafe extern "C" fn ckpt_manager_wait_until_finished(
    manager: *mut ckpt_manager,
    timeout_seconds: f64,
) -> ckpt_status {
    guard(|| {
        if timeout_seconds.is_nan() {
            return Err(Failure::new(
                ckpt_status::InvalidArgument,
                "timeout_seconds is NaN",
            ));
        }
        let timeout = (timeout_seconds >= 0.0)
            .then(|| Duration::try_from_secs_f64(timeout_seconds).ok())
            .flatten();
        // SAFETY: NULL or a live handle (header).
        let manager = unsafe { manager_arg(manager) }?;
        manager.call(|m| Ok(m.wait_until_finished(timeout)?))
    })
}

/// The remote tier's progress, as `ckpt_manager_remote_status` reports it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ckpt_remote_status {
    /// Whether the manager has a remote tier (false: every field is 0).
    pub has_remote: bool,
    /// Whether `newest_uploaded` is set: a checkpoint is in the remote.
    pub has_uploaded: bool,
    /// The number of the newest checkpoint in the remote tier.
    pub newest_uploaded: u64,
    /// Checkpoints committed locally and not yet uploaded, the one being
    /// uploaded included.
    pub pending: u64,
    /// Failed attempts (to open the remote or upload) since the manager opened.
    pub failures: u64,
    /// Checkpoints deleted locally before their upload, by
    /// `ckpt_options_set_local_max_held_for_upload`.
    pub dropped: u64,
}

impl super::Cleared for ckpt_remote_status {
    const CLEARED: Self = ckpt_remote_status {
        has_remote: false,
        has_uploaded: false,
        newest_uploaded: 0,
        pending: 0,
        failures: 0,
        dropped: 0,
    };
}

/// The remote tier's progress: the newest checkpoint uploaded, how many wait,
/// how many attempts failed, and the last failure's message. Each failure is
/// also given to the log callback (by this call or the next that runs it).
///
/// Ownership: `manager` is borrowed; `*out_status` is written; when
/// `out_last_error` is not NULL, `*out_last_error` is a new string the caller
/// frees with `ckpt_string_free`, or NULL when no failure is outstanding (the
/// last attempt succeeded). Both are zeroed (NULL) on failure.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT (`manager`, `out_status`),
/// CKPT_STATUS_REENTRANT_CALL.
/// Threads: any thread; calls on one manager are serialised, and one made from
/// inside that manager's own callback is refused with
/// CKPT_STATUS_REENTRANT_CALL. Uploads run on the manager's upload thread.
/// Callbacks: the log callback runs on the calling thread.
#[no_mangle]
pub unsafe extern "C" fn ckpt_manager_remote_status(
    manager: *const ckpt_manager,
    out_status: *mut ckpt_remote_status,
    out_last_error: *mut *mut c_char,
) -> ckpt_status {
    guard(|| {
        if !out_last_error.is_null() {
            // SAFETY: non-NULL and writable (header).
            unsafe { out_last_error.write(std::ptr::null_mut()) };
        }
        // SAFETY: the caller passes NULL or valid pointers (header).
        let (out, manager) =
            unsafe { (out_param(out_status, "out_status")?, manager_arg(manager)?) };
        let Some(status) = manager.call(|m| Ok(m.remote_status()))? else {
            return out.write(ckpt_remote_status::default());
        };
        let last_error = match (&status.last_error, out_last_error.is_null()) {
            (Some(message), false) => Some(c_string(message.replace('\0', " "))?),
            _ => None,
        };
        out.write(ckpt_remote_status {
            has_remote: true,
            has_uploaded: status.newest_uploaded.is_some(),
            newest_uploaded: status.newest_uploaded.unwrap_or(0),
            pending: status.pending as u64,
            failures: status.failures,
            dropped: status.dropped,
        })?;
        if let Some(last_error) = last_error {
            // SAFETY: non-NULL and writable (header).
            unsafe { out_last_error.write(handle::to_c_string(last_error)) };
        }
        Ok(())
    })
}
