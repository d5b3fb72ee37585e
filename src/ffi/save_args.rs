//! `ckpt_save_args`: what one save records (metrics, metadata) and how it
//! is gated, for `ckpt_manager_save_with`.

use std::ffi::c_char;

use super::handle::{self, BoxCastable};
use super::{ckpt_status, guard, out_param, utf8_arg, Failure, FfiResult};
use crate::SaveArgs;

/// The arguments of one save; see `ckpt_save_args_new`.
pub struct ckpt_save_args {
    _private: [u8; 0],
}

impl BoxCastable for ckpt_save_args {
    type RustType = SaveArgs;
}

/// Runs `change` on the arguments behind `args`.
///
/// # Safety
/// `args` is NULL or a live handle from `ckpt_save_args_new` that no other
/// thread uses during the call.
unsafe fn update(
    args: *mut ckpt_save_args,
    change: impl FnOnce(&mut SaveArgs) -> FfiResult,
) -> ckpt_status {
    guard(|| {
        // SAFETY: forwarded to the caller.
        let args = unsafe { handle::borrow_mut(args) }.ok_or_else(|| Failure::null("args"))?;
        change(args)
    })
}

/// Creates save arguments with the defaults of `ckpt_manager_save(manager,
/// NULL, true, ...)`: the save counter's next number, the interval checked, no
/// metrics, no metadata.
///
/// Ownership: on success `*out_args` is a new handle the caller frees with
/// `ckpt_save_args_free`; one handle may serve many saves.
/// Returns: CKPT_STATUS_OK with the handle, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT.
/// Threads: any thread.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_save_args_new(out_args: *mut *mut ckpt_save_args) -> ckpt_status {
    guard(|| {
        // SAFETY: NULL or a writable pointer (header).
        let out = unsafe { out_param(out_args, "out_args") }?;
        out.write(handle::to_handle::<ckpt_save_args>(SaveArgs::default()))
    })
}

/// Frees save arguments. NULL is a no-op.
///
/// Ownership: takes `args`.
/// Returns: nothing.
/// Errors: none.
/// Threads: any thread, once no other call uses `args`.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_save_args_free(args: *mut ckpt_save_args) {
    // SAFETY: NULL or a handle from ckpt_save_args_new, freed once (header).
    unsafe { handle::free_handle(args) }
}

/// Saves as number `checkpoint_number` instead of the save counter's next
/// value.
///
/// Ownership: `args` is borrowed.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT.
/// Threads: one thread at a time per args object.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_save_args_set_checkpoint_number(
    args: *mut ckpt_save_args,
    checkpoint_number: u64,
) -> ckpt_status {
    // SAFETY: NULL or a live handle no other thread uses (header).
    unsafe {
        update(args, |a| {
            a.checkpoint_number = Some(checkpoint_number);
            Ok(())
        })
    }
}

/// Whether the step and time intervals may skip the save (default true).
/// False saves even within them, never twice at the same step, as
/// `ckpt_manager_save`'s `check_interval`.
///
/// Ownership: `args` is borrowed.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT.
/// Threads: one thread at a time per args object.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_save_args_set_check_interval(
    args: *mut ckpt_save_args,
    check_interval: bool,
) -> ckpt_status {
    // SAFETY: NULL or a live handle no other thread uses (header).
    unsafe {
        update(args, |a| {
            a.check_interval = check_interval;
            Ok(())
        })
    }
}

/// Records a metric with the save, in its manifest (`ckpt_manager_checkpoint_info`
/// reads it back). Any number of names; a name set again takes the new value.
/// The keep-best rule (`ckpt_options_set_keep_best`) ranks checkpoints by one
/// of them. NaN is recorded and is never best; infinities rank as numbers.
///
/// Ownership: `args` and `name` are borrowed; `name` is copied.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT, CKPT_STATUS_INVALID_ARGUMENT (`name` not
/// UTF-8, empty or longer than 256 bytes); the args are unchanged then.
/// Threads: one thread at a time per args object.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_save_args_set_metric(
    args: *mut ckpt_save_args,
    name: *const c_char,
    value: f64,
) -> ckpt_status {
    // SAFETY: NULL or a live handle no other thread uses; `name` NULL or a
    // NUL-terminated string (header).
    unsafe { update(args, |a| Ok(a.set_metric(utf8_arg(name, "name")?, value)?)) }
}

/// Records the user's metadata with the save, in its manifest: `json` must be a
/// JSON object of at most 1 MiB; it replaces metadata set before.
///
/// Ownership: `args` and `json` are borrowed; `json` is copied.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT, CKPT_STATUS_INVALID_ARGUMENT (not UTF-8,
/// not valid JSON, not an object, too large); the args are unchanged then.
/// Threads: one thread at a time per args object.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_save_args_set_metadata_json(
    args: *mut ckpt_save_args,
    json: *const c_char,
) -> ckpt_status {
    // SAFETY: NULL or a live handle no other thread uses; `json` NULL or a
    // NUL-terminated string (header).
    unsafe { update(args, |a| Ok(a.set_metadata_json(utf8_arg(json, "json")?)?)) }
}
