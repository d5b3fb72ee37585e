//! Module-level calls on a directory or prefix, needing no manager.

use std::ffi::c_char;
use std::ptr;

use super::{
    ckpt_status, ckpt_string_list, guard, guard_void, integrity_result, new_c_string,
    new_path_string, out_param, path_arg, verification, Failure,
};
use crate::inspect::{self, LatestOptions};

/// A directory's `checkpoint` state file, paths joined onto the directory.
/// Free with `ckpt_checkpoint_state_free`.
#[repr(C)]
pub struct ckpt_checkpoint_state {
    /// The latest checkpoint's prefix.
    pub model_checkpoint_path: *mut c_char,
    /// The managed checkpoints' prefixes, oldest first.
    pub all_model_checkpoint_paths: ckpt_string_list,
    /// Their save times in seconds since the epoch; may be fewer than the
    /// paths (none in files written by old TF versions).
    pub all_model_checkpoint_timestamps: *mut f64,
    /// The number of timestamps.
    pub all_model_checkpoint_timestamps_len: usize,
    /// The time of the last preserved checkpoint; 0 when absent.
    pub last_preserved_timestamp: f64,
}

/// `ckpt_latest_checkpoint_with_flags`: fail with
/// CKPT_STATUS_CHECKPOINT_DAMAGED instead of falling back to an older
/// checkpoint when the latest is damaged.
pub const CKPT_LATEST_NO_FALLBACK: u32 = 1;
/// `ckpt_latest_checkpoint_with_flags`: verify CRC32C checksums too, not
/// only that every file exists with its size (reads every byte).
pub const CKPT_LATEST_VERIFY_CHECKSUMS: u32 = 2;

/// The newest usable checkpoint named by `directory`'s state file: the
/// latest if its files are intact (every file in its manifest exists with
/// its size), otherwise the newest intact checkpoint the state file lists,
/// with a warning on stderr. Checkpoints without a manifest count as
/// intact when any of their files exist, as in TF.
///
/// `directory` is borrowed. On success `*out_prefix` is a string the
/// caller frees with `ckpt_string_free`, or NULL when there is no state
/// file or no intact checkpoint.
///
/// Errors: CKPT_STATUS_NULL_ARGUMENT, CKPT_STATUS_STATE_CORRUPT,
/// CKPT_STATUS_IO_ERROR. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn ckpt_latest_checkpoint(
    directory: *const c_char,
    out_prefix: *mut *mut c_char,
) -> ckpt_status {
    ckpt_latest_checkpoint_with_flags(directory, 0, out_prefix)
}

/// `ckpt_latest_checkpoint` with `flags`, a bitwise OR of
/// CKPT_LATEST_NO_FALLBACK and CKPT_LATEST_VERIFY_CHECKSUMS (0 for the
/// defaults).
///
/// Errors: as `ckpt_latest_checkpoint`, plus CKPT_STATUS_CHECKPOINT_DAMAGED
/// (with CKPT_LATEST_NO_FALLBACK, the latest is damaged) and
/// CKPT_STATUS_INVALID_ARGUMENT (unknown flags). Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn ckpt_latest_checkpoint_with_flags(
    directory: *const c_char,
    flags: u32,
    out_prefix: *mut *mut c_char,
) -> ckpt_status {
    guard(|| {
        let directory = path_arg(directory, "directory")?;
        let out = out_param(out_prefix, "out_prefix")?;
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
/// `prefix` is borrowed. Returns CKPT_STATUS_OK when intact,
/// CKPT_STATUS_CHECKPOINT_DAMAGED, CKPT_STATUS_NO_MANIFEST,
/// CKPT_STATUS_NULL_ARGUMENT, CKPT_STATUS_IO_ERROR. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn ckpt_verify_checkpoint(
    prefix: *const c_char,
    check_checksums: bool,
) -> ckpt_status {
    guard(|| {
        let prefix = path_arg(prefix, "prefix")?;
        integrity_result(inspect::verify_checkpoint(
            prefix,
            verification(check_checksums),
        )?)
    })
}

/// Reads `directory`'s state file.
///
/// `directory` is borrowed. On success `*out_state` is a struct the caller
/// frees with `ckpt_checkpoint_state_free`, or NULL when there is no state
/// file.
///
/// Errors: CKPT_STATUS_NULL_ARGUMENT, CKPT_STATUS_STATE_CORRUPT (unparsable,
/// empty model_checkpoint_path, larger than 64 MiB), CKPT_STATUS_IO_ERROR.
/// Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn ckpt_get_checkpoint_state(
    directory: *const c_char,
    out_state: *mut *mut ckpt_checkpoint_state,
) -> ckpt_status {
    guard(|| {
        let directory = path_arg(directory, "directory")?;
        let out = out_param(out_state, "out_state")?;
        let Some(state) = inspect::get_checkpoint_state(directory)? else {
            return out.write(ptr::null_mut());
        };
        let paths = ckpt_string_list::from_byte_strings(
            state.all_model_checkpoint_paths.iter().map(Vec::as_slice),
        )?;
        let timestamps = Box::into_raw(state.all_model_checkpoint_timestamps.into_boxed_slice());
        let converted = ckpt_checkpoint_state {
            model_checkpoint_path: ptr::null_mut(),
            all_model_checkpoint_paths: paths,
            all_model_checkpoint_timestamps_len: timestamps.len(),
            all_model_checkpoint_timestamps: timestamps.cast(),
            last_preserved_timestamp: state.last_preserved_timestamp,
        };
        let converted = Box::into_raw(Box::new(converted));
        match new_c_string(&state.model_checkpoint_path) {
            Ok(path) => {
                (*converted).model_checkpoint_path = path;
                out.write(converted)
            }
            Err(failure) => {
                ckpt_checkpoint_state_free(converted);
                Err(failure)
            }
        }
    })
}

/// Frees a state returned by `ckpt_get_checkpoint_state`. NULL is a no-op.
/// Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn ckpt_checkpoint_state_free(state: *mut ckpt_checkpoint_state) {
    guard_void(|| {
        if state.is_null() {
            return;
        }
        let mut state = Box::from_raw(state);
        super::ckpt_string_free(state.model_checkpoint_path);
        state.all_model_checkpoint_paths.free_items();
        if !state.all_model_checkpoint_timestamps.is_null() {
            drop(Box::from_raw(ptr::slice_from_raw_parts_mut(
                state.all_model_checkpoint_timestamps,
                state.all_model_checkpoint_timestamps_len,
            )));
        }
    });
}

/// Whether the checkpoint exists: it has a manifest, or a file `<prefix>`
/// or `<prefix>.<suffix>` exists. Names are matched literally (no glob
/// patterns).
///
/// `prefix` is borrowed. On success `*out_exists` is written.
///
/// Errors: CKPT_STATUS_NULL_ARGUMENT, CKPT_STATUS_INVALID_ARGUMENT,
/// CKPT_STATUS_IO_ERROR. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn ckpt_checkpoint_exists(
    prefix: *const c_char,
    out_exists: *mut bool,
) -> ckpt_status {
    guard(|| {
        let prefix = path_arg(prefix, "prefix")?;
        let out = out_param(out_exists, "out_exists")?;
        out.write(inspect::checkpoint_exists(prefix)?)
    })
}

/// Deletes the files the checkpoint at `prefix` owns: those its manifest
/// lists (then the manifest, and directories left empty), or, without a
/// manifest, TensorFlow's `<prefix>.index` and
/// `<prefix>.data-NNNNN-of-NNNNN`. Data files go before the `.index` file.
/// Nothing else is deleted and nothing is recursed into; nothing to delete
/// is not an error.
///
/// `prefix` is borrowed. Errors: CKPT_STATUS_NULL_ARGUMENT,
/// CKPT_STATUS_INVALID_ARGUMENT (a prefix ending in `/`, `.` or `..`),
/// CKPT_STATUS_IO_ERROR. Thread-safe, but do not remove a checkpoint a
/// manager is saving.
#[no_mangle]
pub unsafe extern "C" fn ckpt_remove_checkpoint(prefix: *const c_char) -> ckpt_status {
    guard(|| {
        let prefix = path_arg(prefix, "prefix")?;
        Ok(inspect::remove_checkpoint(prefix)?)
    })
}
