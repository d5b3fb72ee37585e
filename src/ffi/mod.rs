//! The C ABI: converts arguments, checks pointers, guards panics and maps
//! errors to statuses. No policy here; everything else is in the Rust core.
//!
//! Conventions for every function (the header repeats them per function):
//! fallible calls return `ckpt_status`; out-parameters are cleared (NULL,
//! 0, false) first and hold a result only on `CKPT_STATUS_OK`;
//! `ckpt_last_error_message()` explains the last failure
//! on the calling thread; strings and lists the library returns are owned
//! by the caller and freed with `ckpt_string_free` / `ckpt_string_list_free`.
//!
//! Every pointer crosses through `handle` (ownership) or one of the
//! argument helpers below (borrows), each an `unsafe fn` whose contract is
//! the header's; entry points fence each use in its own `unsafe` block.

#![allow(non_camel_case_types)]
#![allow(clippy::missing_safety_doc)] // The safety contract is in the header comments.

mod callback_error;
mod communicator;
mod directory;
mod handle;
mod manager;
mod options;
mod preemption;
mod save_args;
mod save_file;

pub use callback_error::*;
pub use communicator::{ckpt_communicator, CKPT_COMMUNICATOR_TIMEOUT, CKPT_COMMUNICATOR_VERSION};
pub use directory::*;
pub use handle::ckpt_string_list;
pub use manager::*;
pub use options::*;
pub use preemption::*;
pub use save_args::*;
pub use save_file::*;

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::OnceLock;

use crate::error::{Error, ErrorKind};
use handle::BoxCastable;

/// Major version of this header; `ckpt_version()` returns the library's.
pub const CKPT_VERSION_MAJOR: u32 = 0;
/// Minor version of this header.
pub const CKPT_VERSION_MINOR: u32 = 1;
/// Patch version of this header.
pub const CKPT_VERSION_PATCH: u32 = 0;

/// The result of every fallible call: a `uint32_t`. Values never change
/// meaning; new statuses get new numbers.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ckpt_status {
    /// Success.
    Ok = 0,
    /// A pointer argument that must not be NULL was NULL.
    NullArgument = 1,
    /// An option or argument has a value that cannot be used, or the call
    /// needs something that is not configured (such as a save callback).
    InvalidArgument = 2,
    /// The directory's `checkpoint` state file exists but cannot be parsed
    /// or used. Nothing was changed; the file is left as it is.
    StateCorrupt = 3,
    /// A file-system operation failed; the message names it and the errno text.
    IoError = 4,
    /// A user callback reported failure; the message holds its return code.
    /// Nothing was committed.
    CallbackFailed = 5,
    /// A callback called back into the manager that is running it; the call
    /// was refused instead of deadlocking.
    ReentrantCall = 6,
    /// A panic inside the library was caught. A manager that panicked
    /// refuses later calls with this status; free it and open a new one.
    Panic = 7,
    /// A checkpoint's files are missing or do not match its manifest (sizes
    /// or CRC32C), or no intact checkpoint is left to fall back to.
    CheckpointDamaged = 8,
    /// Another manager (the message names its process) is writing to the
    /// directory. Open this one read-only, or stop the other.
    Locked = 9,
    /// The manager was opened read-only and the call would write.
    ReadOnly = 10,
    /// The checkpoint has files but no manifest (another tool wrote it), or
    /// only one of an earlier save (another tool saved it again), so it
    /// cannot be verified.
    NoManifest = 11,
    /// The registered tensors do not match the checkpoint's: a name, dtype
    /// or shape differs, or a tensor is on one side only (see the message).
    /// Nothing was restored.
    TensorMismatch = 12,
    /// `ckpt_manager_wait_until_finished` timed out: the background save is
    /// still running.
    Timeout = 13,
}

impl ckpt_status {
    /// In value order (a test checks it).
    const ALL: [ckpt_status; 14] = [
        ckpt_status::Ok,
        ckpt_status::NullArgument,
        ckpt_status::InvalidArgument,
        ckpt_status::StateCorrupt,
        ckpt_status::IoError,
        ckpt_status::CallbackFailed,
        ckpt_status::ReentrantCall,
        ckpt_status::Panic,
        ckpt_status::CheckpointDamaged,
        ckpt_status::Locked,
        ckpt_status::ReadOnly,
        ckpt_status::NoManifest,
        ckpt_status::TensorMismatch,
        ckpt_status::Timeout,
    ];
}

/// The header's names of the statuses, by value. Derived from the variant
/// names as cbindgen renders them (`IoError` is `CKPT_STATUS_IO_ERROR`), so
/// that the enum is their one source; tests/header.rs checks the result.
fn status_names() -> &'static [CString] {
    static NAMES: OnceLock<Vec<CString>> = OnceLock::new();
    NAMES.get_or_init(|| {
        let name = |status: &ckpt_status| {
            let mut name = String::from("CKPT_STATUS");
            for c in format!("{status:?}").chars() {
                if c.is_ascii_uppercase() {
                    name.push('_');
                }
                name.push(c.to_ascii_uppercase());
            }
            CString::new(name).expect("variant names have no NUL")
        };
        ckpt_status::ALL.iter().map(name).collect()
    })
}

/// A failed call: the status to return, the message to keep and the
/// payload a callback attached to the failure.
pub(crate) struct Failure {
    status: ckpt_status,
    message: String,
    payload: Option<handle::CValue>,
}

impl Failure {
    pub(crate) fn new(status: ckpt_status, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
            payload: None,
        }
    }

    pub(crate) fn null(argument: &str) -> Self {
        Failure::new(
            ckpt_status::NullArgument,
            format!("{argument} must not be NULL"),
        )
    }
}

impl From<Error> for Failure {
    fn from(err: Error) -> Self {
        let status = match err.kind() {
            ErrorKind::InvalidArgument => ckpt_status::InvalidArgument,
            ErrorKind::StateCorrupt => ckpt_status::StateCorrupt,
            ErrorKind::Io => ckpt_status::IoError,
            ErrorKind::Callback => ckpt_status::CallbackFailed,
            ErrorKind::Locked => ckpt_status::Locked,
            ErrorKind::ReadOnly => ckpt_status::ReadOnly,
            ErrorKind::Damaged => ckpt_status::CheckpointDamaged,
            ErrorKind::NoManifest => ckpt_status::NoManifest,
            ErrorKind::TensorMismatch => ckpt_status::TensorMismatch,
            ErrorKind::Timeout => ckpt_status::Timeout,
            ErrorKind::Panic => ckpt_status::Panic,
        };
        Failure {
            status,
            message: err.to_string(),
            payload: callback_error::payload_of(err),
        }
    }
}

pub(crate) type FfiResult<T = ()> = Result<T, Failure>;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    let message = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|last| *last.borrow_mut() = message);
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let detail = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    format!("internal error (panic): {detail}")
}

/// Runs an entry point's body: catches panics and records failures.
pub(crate) fn guard(body: impl FnOnce() -> FfiResult) -> ckpt_status {
    match panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => ckpt_status::Ok,
        Ok(Err(failure)) => {
            set_last_error(&failure.message);
            callback_error::report(failure.payload);
            failure.status
        }
        Err(payload) => {
            set_last_error(&panic_message(payload.as_ref()));
            callback_error::report(None);
            ckpt_status::Panic
        }
    }
}

/// For entry points that cannot fail (frees): a panic is swallowed, never
/// unwound into C.
pub(crate) fn guard_void(body: impl FnOnce()) {
    let _ = panic::catch_unwind(AssertUnwindSafe(body));
}

/// Checks an out-parameter for NULL and clears it (NULL, 0, false), so that
/// a call that fails leaves it cleared: take it before any other argument.
///
/// # Safety
/// `out` is NULL or valid for a write of `T` until the `OutParam` is used.
pub(crate) unsafe fn out_param<T: Cleared>(out: *mut T, name: &str) -> FfiResult<OutParam<T>> {
    if out.is_null() {
        return Err(Failure::null(name));
    }
    // SAFETY: non-NULL and writable (the contract).
    unsafe { out.write(T::CLEARED) };
    Ok(OutParam(out))
}

/// What a failed call leaves in an out-parameter of this type.
pub(crate) trait Cleared {
    const CLEARED: Self;
}

impl<T> Cleared for *mut T {
    const CLEARED: Self = ptr::null_mut();
}

impl Cleared for u64 {
    const CLEARED: Self = 0;
}

impl Cleared for bool {
    const CLEARED: Self = false;
}

/// An out-parameter known to be non-NULL and writable, written once on
/// success.
pub(crate) struct OutParam<T>(*mut T);

impl<T> OutParam<T> {
    pub(crate) fn write(self, value: T) -> FfiResult {
        // SAFETY: non-NULL, and writable as `out_param`'s caller promised.
        unsafe { self.0.write(value) };
        Ok(())
    }
}

/// The value behind a handle argument.
///
/// # Safety
/// As for `handle::borrow`.
pub(crate) unsafe fn handle_arg<'a, C: BoxCastable>(
    handle: *const C,
    name: &str,
) -> FfiResult<&'a C::RustType> {
    // SAFETY: forwarded to the caller.
    unsafe { handle::borrow(handle) }.ok_or_else(|| Failure::null(name))
}

/// Borrows a C string argument as a path (any bytes but NUL).
///
/// # Safety
/// `ptr` is NULL or a NUL-terminated string that outlives `'a`.
pub(crate) unsafe fn path_arg<'a>(ptr: *const c_char, name: &str) -> FfiResult<&'a Path> {
    // SAFETY: forwarded to the caller.
    let bytes = unsafe { c_str_arg(ptr, name) }?.to_bytes();
    Ok(Path::new(OsStr::from_bytes(bytes)))
}

/// Borrows a C string argument that must be UTF-8.
///
/// # Safety
/// As for `path_arg`.
pub(crate) unsafe fn utf8_arg<'a>(ptr: *const c_char, name: &str) -> FfiResult<&'a str> {
    // SAFETY: forwarded to the caller.
    unsafe { c_str_arg(ptr, name) }?
        .to_str()
        .map_err(|_| Failure::new(ckpt_status::InvalidArgument, format!("{name} is not UTF-8")))
}

/// # Safety
/// As for `path_arg`.
unsafe fn c_str_arg<'a>(ptr: *const c_char, name: &str) -> FfiResult<&'a CStr> {
    if ptr.is_null() {
        return Err(Failure::null(name));
    }
    // SAFETY: non-NULL and NUL-terminated (the contract).
    Ok(unsafe { CStr::from_ptr(ptr) })
}

/// Bytes from the core as a C string; a NUL inside cannot cross to C.
pub(crate) fn c_string(bytes: impl Into<Vec<u8>>) -> FfiResult<CString> {
    CString::new(bytes)
        .map_err(|_| Failure::new(ckpt_status::InvalidArgument, "a path contains a NUL byte"))
}

/// A new string for the caller to free with `ckpt_string_free`, or NULL
/// for `None`.
pub(crate) fn new_path_string(path: Option<&Path>) -> FfiResult<*mut c_char> {
    match path {
        Some(path) => c_string(path.as_os_str().as_bytes()).map(handle::to_c_string),
        None => Ok(ptr::null_mut()),
    }
}

/// A new list for the caller to free with `ckpt_string_list_free`.
pub(crate) fn new_string_list(paths: &[PathBuf]) -> FfiResult<*mut ckpt_string_list> {
    let strings = paths
        .iter()
        .map(|path| c_string(path.as_os_str().as_bytes()))
        .collect::<FfiResult<_>>()?;
    Ok(handle::to_handle(ckpt_string_list::new(strings)))
}

pub(crate) fn verification(check_checksums: bool) -> crate::manifest::Verification {
    if check_checksums {
        crate::manifest::Verification::Checksums
    } else {
        crate::manifest::Verification::Sizes
    }
}

/// Verification found no damage; a checkpoint without a usable manifest
/// still gets its own status, since nothing was checked.
pub(crate) fn integrity_result(integrity: crate::Integrity) -> FfiResult {
    match integrity {
        crate::Integrity::Intact => Ok(()),
        crate::Integrity::NoManifest => Err(Failure::new(
            ckpt_status::NoManifest,
            "the checkpoint has no manifest and cannot be verified",
        )),
        crate::Integrity::ManifestOutdated => Err(Failure::new(
            ckpt_status::NoManifest,
            "the checkpoint was saved again by a tool that writes no manifest (the state file \
             records a later save than its manifest) and cannot be verified",
        )),
    }
}

/// The library's version, "MAJOR.MINOR.PATCH".
///
/// Ownership: the string is static; never freed.
/// Returns: the version; never NULL.
/// Errors: none.
/// Threads: any thread.
/// Callbacks: none run.
#[no_mangle]
pub extern "C" fn ckpt_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The detail of the last failed call made on this thread.
///
/// Ownership: the string belongs to the library and stays valid until the next
/// failing call on the same thread.
/// Returns: the message; "" when no call has failed yet; never NULL.
/// Errors: none.
/// Threads: any thread; each thread has its own message.
/// Callbacks: none run.
#[no_mangle]
pub extern "C" fn ckpt_last_error_message() -> *const c_char {
    LAST_ERROR.with(|last| last.borrow().as_ptr())
}

/// The name of a status code, e.g. "CKPT_STATUS_IO_ERROR".
///
/// Ownership: the string is static; never freed.
/// Returns: the name; "CKPT_STATUS_UNKNOWN" for a value that is not a status;
/// never NULL.
/// Errors: none (any value may be passed).
/// Threads: any thread.
/// Callbacks: none run.
#[no_mangle]
pub extern "C" fn ckpt_status_name(status: u32) -> *const c_char {
    usize::try_from(status)
        .ok()
        .and_then(|index| status_names().get(index))
        .map_or(c"CKPT_STATUS_UNKNOWN".as_ptr(), |name| name.as_ptr())
}

/// Frees a string returned by the library. NULL is a no-op.
///
/// Ownership: takes `string`, which must come from this library and not be
/// freed twice.
/// Returns: nothing.
/// Errors: none.
/// Threads: any thread.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_string_free(string: *mut c_char) {
    // SAFETY: a string this library returned, freed once (the contract).
    guard_void(|| unsafe { handle::free_c_string(string) });
}

/// Frees a list returned by the library, with all its strings. NULL is a no-op.
///
/// Ownership: takes `list`, which must come from this library and not be freed
/// twice.
/// Returns: nothing.
/// Errors: none.
/// Threads: any thread.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_string_list_free(list: *mut ckpt_string_list) {
    // SAFETY: a list this library returned, freed once (the contract).
    guard_void(|| unsafe { handle::free_handle(list) });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A string the library returns and keeps (static or thread-local).
    fn library_str(ptr: *const c_char) -> &'static str {
        // SAFETY: these calls return NUL-terminated strings that outlive the
        // test's use of them.
        unsafe { CStr::from_ptr(ptr) }.to_str().unwrap()
    }

    #[test]
    fn version_macros_match_the_package() {
        assert_eq!(
            format!("{CKPT_VERSION_MAJOR}.{CKPT_VERSION_MINOR}.{CKPT_VERSION_PATCH}"),
            env!("CARGO_PKG_VERSION")
        );
    }

    #[test]
    fn panics_become_a_status_with_a_message() {
        let status = guard(|| panic!("boom"));
        assert_eq!(status, ckpt_status::Panic);
        assert_eq!(
            library_str(ckpt_last_error_message()),
            "internal error (panic): boom"
        );
    }

    #[test]
    fn status_names_cover_every_status() {
        for (value, status) in ckpt_status::ALL.iter().enumerate() {
            assert_eq!(*status as usize, value, "statuses are numbered densely");
            let name = library_str(ckpt_status_name(value as u32));
            assert_ne!(name, "CKPT_STATUS_UNKNOWN");
        }
        let past_the_end = ckpt_status::ALL.len() as u32;
        assert_eq!(
            library_str(ckpt_status_name(past_the_end)),
            "CKPT_STATUS_UNKNOWN"
        );
        assert_eq!(
            library_str(ckpt_status_name(u32::MAX)),
            "CKPT_STATUS_UNKNOWN"
        );
    }
}
