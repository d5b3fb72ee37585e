//! `ckpt_save_file`: writing a file of a save in progress through the
//! library, so that its CRC32C is computed on the way.

use std::ffi::c_char;
use std::io::Write;

use super::{ckpt_status, guard, out_param, path_arg, utf8_arg, Failure};
use crate::SaveFile;

/// A file being written by a save callback; see `ckpt_save_file_open`.
pub struct ckpt_save_file {
    file: SaveFile,
}

/// Creates `<prefix><suffix>` for a save callback to write through the
/// library: the library computes the file's CRC32C while it is written, so
/// it does not read the file again before the commit (a large speed-up for
/// large files). `prefix` must be the prefix the running save callback
/// received (the save's staging prefix); `suffix` is `.<name>` or
/// `/<path>` (parent directories are created). Both are borrowed for the
/// call.
///
/// On success `*out_file` is a handle the caller must pass to
/// `ckpt_save_file_close` exactly once, before the save callback returns.
///
/// Errors: CKPT_STATUS_NULL_ARGUMENT, CKPT_STATUS_INVALID_ARGUMENT (not
/// the prefix of a save in progress; a suffix with `..`, `//` or NUL, or
/// one that is not `.`- or `/`-led), CKPT_STATUS_IO_ERROR. May be called
/// from any thread while the save callback runs.
#[no_mangle]
pub unsafe extern "C" fn ckpt_save_file_open(
    prefix: *const c_char,
    suffix: *const c_char,
    out_file: *mut *mut ckpt_save_file,
) -> ckpt_status {
    guard(|| {
        let out = out_param(out_file, "out_file")?;
        let prefix = path_arg(prefix, "prefix")?;
        let suffix = utf8_arg(suffix, "suffix")?;
        let file = SaveFile::create(prefix, suffix)?;
        out.write(Box::into_raw(Box::new(ckpt_save_file { file })))
    })
}

/// Appends `length` bytes from `data` (borrowed for the call; NULL only
/// with `length` 0) to the file.
///
/// Errors: CKPT_STATUS_NULL_ARGUMENT, CKPT_STATUS_IO_ERROR (the file is
/// then incomplete: return failure from the save callback). One thread at
/// a time per file.
#[no_mangle]
pub unsafe extern "C" fn ckpt_save_file_write(
    file: *mut ckpt_save_file,
    data: *const u8,
    length: usize,
) -> ckpt_status {
    guard(|| {
        let file = file.as_mut().ok_or_else(|| Failure::null("file"))?;
        let bytes = match (data.is_null(), length) {
            (_, 0) => &[][..],
            (true, _) => return Err(Failure::null("data")),
            // SAFETY: the caller passes `length` readable bytes at `data`.
            (false, _) => std::slice::from_raw_parts(data, length),
        };
        file.file
            .write_all(bytes)
            .map_err(|err| crate::Error::io("write a save file", err))?;
        Ok(())
    })
}

/// Finishes the file (its size and CRC32C go into the manifest) and frees
/// the handle, which must not be used again. NULL is a no-op returning OK.
///
/// Errors: CKPT_STATUS_IO_ERROR (the handle is freed anyway; the file is
/// then read again for its CRC32C when the save is sealed).
#[no_mangle]
pub unsafe extern "C" fn ckpt_save_file_close(file: *mut ckpt_save_file) -> ckpt_status {
    guard(|| {
        if file.is_null() {
            return Ok(());
        }
        let file = Box::from_raw(file);
        file.file.finish()?;
        Ok(())
    })
}
