//! Module-level calls on a directory or prefix, needing no manager.

use std::ffi::c_char;
use std::ptr;

use super::{
    ckpt_status, ckpt_string_list, guard, guard_void, new_c_string, new_path_string, out_param,
    path_arg,
};
use crate::inspect;

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

/// The latest checkpoint named by `directory`'s state file, if any of its
/// files exist (no fallback to older checkpoints, as in TF).
///
/// `directory` is borrowed. On success `*out_prefix` is a string the
/// caller frees with `ckpt_string_free`, or NULL when there is no state
/// file or the latest's files are missing.
///
/// Errors: CKPT_STATUS_NULL_ARGUMENT, CKPT_STATUS_STATE_CORRUPT,
/// CKPT_STATUS_IO_ERROR. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn ckpt_latest_checkpoint(
    directory: *const c_char,
    out_prefix: *mut *mut c_char,
) -> ckpt_status {
    guard(|| {
        let directory = path_arg(directory, "directory")?;
        let out = out_param(out_prefix, "out_prefix")?;
        let latest = inspect::latest_checkpoint(directory)?;
        out.write(new_path_string(latest.as_deref())?)
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

/// Whether any file of the checkpoint exists: `<prefix>` itself or a file
/// `<prefix>.<suffix>`. Names are matched literally (no glob patterns).
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

/// Deletes every file of the checkpoint at `prefix` (`<prefix>`,
/// `<prefix>.<suffix>`), data files before the `.index` file. Nothing to
/// delete is not an error. Names are matched literally.
///
/// `prefix` is borrowed. Errors: CKPT_STATUS_NULL_ARGUMENT,
/// CKPT_STATUS_INVALID_ARGUMENT, CKPT_STATUS_IO_ERROR. Thread-safe, but do
/// not remove a checkpoint a manager is saving.
#[no_mangle]
pub unsafe extern "C" fn ckpt_remove_checkpoint(prefix: *const c_char) -> ckpt_status {
    guard(|| {
        let prefix = path_arg(prefix, "prefix")?;
        Ok(inspect::remove_checkpoint(prefix)?)
    })
}
