//! Module-level calls on a directory or prefix, needing no manager.

use std::ffi::{c_char, CString};
use std::ptr;

use super::handle::{self, BoxCastable};
use super::{
    c_string, ckpt_status, guard, guard_void, integrity_result, new_path_string, out_param,
    path_arg, verification, Failure, FfiResult,
};
use crate::inspect::{self, LatestOptions};

/// A directory's `checkpoint` state file, paths joined onto the directory:
/// what `ckpt_get_checkpoint_state` returns. Opaque, so that it can grow;
/// read it with the `ckpt_checkpoint_state_*` accessors and free it with
/// `ckpt_checkpoint_state_free`. Immutable: any thread may read it.
pub struct ckpt_checkpoint_state {
    _private: [u8; 0],
}

impl BoxCastable for ckpt_checkpoint_state {
    type RustType = CheckpointState;
}

/// What a `ckpt_checkpoint_state` points to: the strings its accessors
/// lend out live here.
pub(crate) struct CheckpointState {
    model_checkpoint_path: CString,
    all_model_checkpoint_paths: Vec<CString>,
    all_model_checkpoint_timestamps: Vec<f64>,
    last_preserved_timestamp: f64,
}

/// `ckpt_latest_checkpoint_with_flags`: fail with
/// CKPT_STATUS_CHECKPOINT_DAMAGED instead of falling back to an older
/// checkpoint when the latest is damaged.
pub const CKPT_LATEST_NO_FALLBACK: u32 = 1;
/// `ckpt_latest_checkpoint_with_flags`: verify CRC32C checksums too, not
/// only that every file exists with its size (reads every byte).
pub const CKPT_LATEST_VERIFY_CHECKSUMS: u32 = 2;

/// The newest usable checkpoint named by `directory`'s state file: the latest
/// if its files are intact (every file in its manifest exists with its size),
/// otherwise the newest intact checkpoint the state file lists, with a warning
/// on stderr. Checkpoints without a manifest count as intact when any of their
/// files exist, as in TF.
///
/// Ownership: `directory` is borrowed. On success `*out_prefix` is a new string
/// the caller frees with `ckpt_string_free`, or NULL.
/// Returns: CKPT_STATUS_OK with the prefix, or NULL when there is no state file
/// or no intact checkpoint; or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT, CKPT_STATUS_STATE_CORRUPT,
/// CKPT_STATUS_IO_ERROR.
/// Threads: any thread.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_latest_checkpoint(
    directory: *const c_char,
    out_prefix: *mut *mut c_char,
) -> ckpt_status {
    // SAFETY: the same arguments, with the same contract.
    unsafe { ckpt_latest_checkpoint_with_flags(directory, 0, out_prefix) }
}

/// `ckpt_latest_checkpoint` with `flags`, a bitwise OR of
/// CKPT_LATEST_NO_FALLBACK and CKPT_LATEST_VERIFY_CHECKSUMS (0 for the
/// defaults).
///
/// Ownership and Returns: as `ckpt_latest_checkpoint`.
/// Errors: as `ckpt_latest_checkpoint`, plus CKPT_STATUS_CHECKPOINT_DAMAGED
/// (with CKPT_LATEST_NO_FALLBACK, the latest is damaged) and
/// CKPT_STATUS_INVALID_ARGUMENT (unknown flags).
/// Threads: any thread.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_latest_checkpoint_with_flags(
    directory: *const c_char,
    flags: u32,
    out_prefix: *mut *mut c_char,
) -> ckpt_status {
    guard(|| {
        // SAFETY: the caller passes NULL or valid pointers (header).
        let (out, directory) = unsafe {
            (
                out_param(out_prefix, "out_prefix")?,
                path_arg(directory, "directory")?,
            )
        };
        let known = CKPT_LATEST_NO_FALLBACK | CKPT_LATEST_VERIFY_CHECKSUMS;
        if flags & !known != 0 {
            return Err(Failure::new(
                ckpt_status::InvalidArgument,
                format!("unknown flags {:#x}", flags & !known),
            ));
        }
        let options = LatestOptions {
            fallback: flags & CKPT_LATEST_NO_FALLBACK == 0,
            verification: verification(flags & CKPT_LATEST_VERIFY_CHECKSUMS != 0),
        };
        let mut warn = |message: &str| eprintln!("ckpt-manager: warning: {message}");
        let latest = inspect::latest_checkpoint(directory, options, &mut warn)?;
        out.write(new_path_string(latest.as_deref())?)
    })
}

/// Checks the checkpoint at `prefix` against its manifest, as
/// `ckpt_manager_verify` does, without a manager.
///
/// Ownership: `prefix` is borrowed.
/// Returns: CKPT_STATUS_OK when intact, or an error.
/// Errors: CKPT_STATUS_CHECKPOINT_DAMAGED, CKPT_STATUS_NO_MANIFEST,
/// CKPT_STATUS_NULL_ARGUMENT, CKPT_STATUS_IO_ERROR.
/// Threads: any thread.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_verify_checkpoint(
    prefix: *const c_char,
    check_checksums: bool,
) -> ckpt_status {
    guard(|| {
        // SAFETY: NULL or a NUL-terminated string (header).
        let prefix = unsafe { path_arg(prefix, "prefix") }?;
        integrity_result(inspect::verify_checkpoint(
            prefix,
            verification(check_checksums),
        )?)
    })
}

/// Reads `directory`'s state file.
///
/// Ownership: `directory` is borrowed. On success `*out_state` is a new state
/// the caller reads with the `ckpt_checkpoint_state_*` accessors and frees with
/// `ckpt_checkpoint_state_free`, or NULL.
/// Returns: CKPT_STATUS_OK with the state, or NULL when there is no state file;
/// or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT, CKPT_STATUS_STATE_CORRUPT (unparsable,
/// empty model_checkpoint_path, larger than 64 MiB), CKPT_STATUS_IO_ERROR.
/// Threads: any thread.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_get_checkpoint_state(
    directory: *const c_char,
    out_state: *mut *mut ckpt_checkpoint_state,
) -> ckpt_status {
    guard(|| {
        // SAFETY: the caller passes NULL or valid pointers (header).
        let (out, directory) = unsafe {
            (
                out_param(out_state, "out_state")?,
                path_arg(directory, "directory")?,
            )
        };
        let Some(state) = inspect::get_checkpoint_state(directory)? else {
            return out.write(ptr::null_mut());
        };
        let converted = CheckpointState {
            model_checkpoint_path: c_string(state.model_checkpoint_path)?,
            all_model_checkpoint_paths: state
                .all_model_checkpoint_paths
                .into_iter()
                .map(c_string)
                .collect::<FfiResult<_>>()?,
            all_model_checkpoint_timestamps: state.all_model_checkpoint_timestamps,
            last_preserved_timestamp: state.last_preserved_timestamp,
        };
        out.write(handle::to_handle(converted))
    })
}

/// Frees a state returned by `ckpt_get_checkpoint_state`, with the strings its
/// accessors returned. NULL is a no-op.
///
/// Ownership: takes `state`, which must not be freed twice.
/// Returns: nothing.
/// Errors: none.
/// Threads: any thread, once no other thread reads the state.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_checkpoint_state_free(state: *mut ckpt_checkpoint_state) {
    // SAFETY: a state from ckpt_get_checkpoint_state, freed once (header).
    guard_void(|| unsafe { handle::free_handle(state) });
}

/// The latest checkpoint's prefix (TF's `model_checkpoint_path`).
///
/// Ownership: `state` is borrowed; the string belongs to it and stays valid
/// until it is freed.
/// Returns: the prefix; NULL only for a NULL `state`.
/// Errors: none.
/// Threads: any thread; a state is immutable.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_checkpoint_state_model_checkpoint_path(
    state: *const ckpt_checkpoint_state,
) -> *const c_char {
    // SAFETY: NULL or a live state (header).
    unsafe { handle::borrow(state) }
        .map_or(ptr::null(), |state| state.model_checkpoint_path.as_ptr())
}

/// The number of managed checkpoints' prefixes (TF's
/// `all_model_checkpoint_paths`).
///
/// Ownership: `state` is borrowed.
/// Returns: the count; 0 for a NULL `state`.
/// Errors: none.
/// Threads: any thread; a state is immutable.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_checkpoint_state_path_count(
    state: *const ckpt_checkpoint_state,
) -> usize {
    // SAFETY: NULL or a live state (header).
    unsafe { handle::borrow(state) }.map_or(0, |state| state.all_model_checkpoint_paths.len())
}

/// The managed checkpoint's prefix at `index`, oldest first.
///
/// Ownership: `state` is borrowed; the string belongs to it and stays valid
/// until it is freed.
/// Returns: the prefix; NULL when `index` is not below
/// `ckpt_checkpoint_state_path_count` or `state` is NULL.
/// Errors: none.
/// Threads: any thread; a state is immutable.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_checkpoint_state_path(
    state: *const ckpt_checkpoint_state,
    index: usize,
) -> *const c_char {
    // SAFETY: NULL or a live state (header).
    unsafe { handle::borrow(state) }
        .and_then(|state| state.all_model_checkpoint_paths.get(index))
        .map_or(ptr::null(), |path| path.as_ptr())
}

/// The number of save times (TF's `all_model_checkpoint_timestamps`): may be
/// fewer than the paths (none in files written by old TF versions).
///
/// Ownership: `state` is borrowed.
/// Returns: the count; 0 for a NULL `state`.
/// Errors: none.
/// Threads: any thread; a state is immutable.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_checkpoint_state_timestamp_count(
    state: *const ckpt_checkpoint_state,
) -> usize {
    // SAFETY: NULL or a live state (header).
    unsafe { handle::borrow(state) }.map_or(0, |state| state.all_model_checkpoint_timestamps.len())
}

/// The save time at `index` in seconds since the epoch, oldest first.
///
/// Ownership: `state` is borrowed.
/// Returns: the time; NaN when `index` is not below
/// `ckpt_checkpoint_state_timestamp_count` or `state` is NULL.
/// Errors: none.
/// Threads: any thread; a state is immutable.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_checkpoint_state_timestamp(
    state: *const ckpt_checkpoint_state,
    index: usize,
) -> f64 {
    // SAFETY: NULL or a live state (header).
    unsafe { handle::borrow(state) }
        .and_then(|state| state.all_model_checkpoint_timestamps.get(index))
        .copied()
        .unwrap_or(f64::NAN)
}

/// The time of the last preserved checkpoint (TF's `last_preserved_timestamp`).
///
/// Ownership: `state` is borrowed.
/// Returns: the time; 0 when absent or for a NULL `state`.
/// Errors: none.
/// Threads: any thread; a state is immutable.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_checkpoint_state_last_preserved_timestamp(
    state: *const ckpt_checkpoint_state,
) -> f64 {
    // SAFETY: NULL or a live state (header).
    unsafe { handle::borrow(state) }.map_or(0.0, |state| state.last_preserved_timestamp)
}

/// Whether the checkpoint exists: it has a manifest, or a file `<prefix>`
/// or `<prefix>.<suffix>` exists. Names are matched literally (no glob
/// patterns).
///
/// Ownership: `prefix` is borrowed; `*out_exists` is written on success.
/// Returns: CKPT_STATUS_OK with the answer, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT, CKPT_STATUS_INVALID_ARGUMENT,
/// CKPT_STATUS_IO_ERROR.
/// Threads: any thread.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_checkpoint_exists(
    prefix: *const c_char,
    out_exists: *mut bool,
) -> ckpt_status {
    guard(|| {
        // SAFETY: the caller passes NULL or valid pointers (header).
        let (out, prefix) = unsafe {
            (
                out_param(out_exists, "out_exists")?,
                path_arg(prefix, "prefix")?,
            )
        };
        out.write(inspect::checkpoint_exists(prefix)?)
    })
}

/// Deletes the files the checkpoint at `prefix` owns: those its manifest
/// lists (then the manifest, and directories left empty), or, without a
/// manifest, TensorFlow's `<prefix>.index` and `<prefix>.data-NNNNN-of-NNNNN`.
/// Data files go before the `.index` file. Nothing else is deleted and nothing
/// is recursed into; nothing to delete is not an error.
///
/// Ownership: `prefix` is borrowed.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT, CKPT_STATUS_INVALID_ARGUMENT (a prefix
/// ending in `/`, `.` or `..`), CKPT_STATUS_IO_ERROR.
/// Threads: any thread, but do not remove a checkpoint a manager is saving.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_remove_checkpoint(prefix: *const c_char) -> ckpt_status {
    guard(|| {
        // SAFETY: NULL or a NUL-terminated string (header).
        let prefix = unsafe { path_arg(prefix, "prefix") }?;
        Ok(inspect::remove_checkpoint(prefix)?)
    })
}
