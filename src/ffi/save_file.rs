//! `ckpt_save_file`: writing a file of a save in progress through the
//! library, so that its CRC32C is computed on the way.

use std::ffi::{c_char, c_void};
use std::io::Write;

use super::handle::{self, BoxCastable};
use super::{ckpt_status, guard, out_param, path_arg, utf8_arg, Failure};
use crate::SaveFile;

/// A file being written by a save callback; see `ckpt_save_file_open`.
pub struct ckpt_save_file {
    _private: [u8; 0],
}

impl BoxCastable for ckpt_save_file {
    type RustType = SaveFile;
}

/// Creates `<prefix><suffix>` for a save callback to write through the
/// library: the library computes the file's CRC32C while it is written, so
/// it does not read the file again before the commit. `prefix` must be the
/// prefix the running save callback received (the save's staging prefix);
/// `suffix` is `.<name>` or `/<path>` (parent directories are created).
///
/// Ownership: `prefix` and `suffix` are borrowed. On success `*out_file` is
/// a new handle the caller passes to `ckpt_save_file_close` exactly once,
/// before the save callback returns.
/// Returns: CKPT_STATUS_OK with the handle, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT, CKPT_STATUS_INVALID_ARGUMENT (not the
/// prefix of a save in progress; a suffix that is empty, holds `..`, `//` or
/// NUL, or is not `.`- or `/`-led), CKPT_STATUS_IO_ERROR.
/// Threads: any thread, while the save callback runs.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_save_file_open(
    prefix: *const c_char,
    suffix: *const c_char,
    out_file: *mut *mut ckpt_save_file,
) -> ckpt_status {
    guard(|| {
        // SAFETY: the caller passes NULL or valid pointers (header).
        let (out, prefix, suffix) = unsafe {
            (
                out_param(out_file, "out_file")?,
                path_arg(prefix, "prefix")?,
                utf8_arg(suffix, "suffix")?,
            )
        };
        let file = SaveFile::create(prefix, suffix)?;
        out.write(handle::to_handle::<ckpt_save_file>(file))
    })
}

/// Appends `length` bytes from `data` to the file.
///
/// Ownership: `file` and `data` are borrowed; `data` may be NULL only when
/// `length` is 0.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_NULL_ARGUMENT, CKPT_STATUS_IO_ERROR (the file is
/// then incomplete: make the save callback fail).
/// Threads: one thread at a time per file.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_save_file_write(
    file: *mut ckpt_save_file,
    data: *const c_void,
    length: usize,
) -> ckpt_status {
    guard(|| {
        // SAFETY: NULL or a live handle from `ckpt_save_file_open` (header).
        let file = unsafe { handle::borrow_mut(file) }.ok_or_else(|| Failure::null("file"))?;
        let bytes = match (data.is_null(), length) {
            (_, 0) => &[][..],
            (true, _) => return Err(Failure::null("data")),
            // SAFETY: the caller passes `length` readable bytes at `data`.
            (false, _) => unsafe { std::slice::from_raw_parts(data.cast::<u8>(), length) },
        };
        file.write_all(bytes)
            .map_err(|err| crate::Error::io("write a save file", err))?;
        Ok(())
    })
}

/// Finishes the file (its size and CRC32C go into the manifest) and frees
/// the handle.
///
/// Ownership: takes `file`, which must not be used again; NULL is a no-op.
/// Returns: CKPT_STATUS_OK, or an error.
/// Errors: CKPT_STATUS_IO_ERROR (the handle is freed anyway; the file is
/// then read again for its CRC32C when the save is sealed).
/// Threads: the thread that wrote the file last.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_save_file_close(file: *mut ckpt_save_file) -> ckpt_status {
    guard(|| {
        if file.is_null() {
            return Ok(());
        }
        // SAFETY: a live handle from `ckpt_save_file_open`, given back once.
        let file = unsafe { handle::take(file) };
        file.finish()?;
        Ok(())
    })
}
