//! Errors a C callback attaches to its failure (`ckpt_callback_set_error`):
//! carried inside the crate's `Error` (as the source of `Error::Callback`)
//! to the call that reports the failure, on whichever thread the callback
//! ran, and handed to the caller there (`ckpt_take_error_payload`).

use std::cell::{Cell, RefCell};
use std::ffi::{c_char, c_void, CStr};
use std::fmt;

use super::handle::CValue;
use super::{ckpt_finalizer, ckpt_status, guard, Failure};
use crate::error::{CallbackError, Error};

/// What a callback attached to the failure it returns.
#[derive(Debug)]
struct Attached {
    message: Option<String>,
    payload: Option<CValue>,
}

thread_local! {
    /// Options callbacks running on this thread (they may nest: a callback
    /// may call another manager).
    static RUNNING: Cell<u32> = const { Cell::new(0) };
    /// What the innermost running callback attached.
    static ATTACHED: RefCell<Option<Attached>> = const { RefCell::new(None) };
    /// The payload of the last failed call on this thread, until taken.
    static REPORTED: RefCell<Option<CValue>> = const { RefCell::new(None) };
}

/// A C callback's failure: how it reported it, and what it attached.
#[derive(Debug)]
pub(super) struct CallbackFailure {
    /// "it returned error code 3", "it returned NaN, not a finite time".
    cause: CallbackError,
    attached: Option<Attached>,
}

impl fmt::Display for CallbackFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.attached.as_ref().and_then(|a| a.message.as_deref()) {
            Some(message) => write!(f, "{message} ({})", self.cause),
            None => write!(f, "{}", self.cause),
        }
    }
}

impl std::error::Error for CallbackFailure {}

/// The outcome of one call of a C callback, with what it attached.
pub(super) struct Called<T> {
    pub(super) value: T,
    attached: Option<Attached>,
}

impl<T> Called<T> {
    /// The callback failed, for `cause`: its attachment goes with it. (On
    /// success the attachment is dropped, its payload finalized.)
    pub(super) fn failure(self, cause: impl Into<CallbackError>) -> CallbackError {
        Box::new(CallbackFailure {
            cause: cause.into(),
            attached: self.attached,
        })
    }
}

/// Runs a C options callback, collecting what it attaches with
/// `ckpt_callback_set_error`; an attachment of an enclosing callback on
/// this thread is kept aside meanwhile.
pub(super) fn call<T>(callback: impl FnOnce() -> T) -> Called<T> {
    let outer = ATTACHED.with(|attached| attached.take());
    RUNNING.with(|running| running.set(running.get() + 1));
    let value = callback();
    RUNNING.with(|running| running.set(running.get() - 1));
    let attached = ATTACHED.with(|attached| attached.replace(outer));
    Called { value, attached }
}

/// The payload a failed call hands to its caller: the one attached to the
/// callback failure it reports, if any.
pub(super) fn payload_of(err: Error) -> Option<CValue> {
    let Error::Callback { source, .. } = err else {
        return None;
    };
    source
        .downcast::<CallbackFailure>()
        .ok()?
        .attached?
        .payload
}

/// Makes `payload` the calling thread's reported payload, finalizing one
/// that was never taken.
pub(super) fn report(payload: Option<CValue>) {
    // Dropped after the slot is released: a finalizer may call the library.
    let _replaced = REPORTED.try_with(|reported| reported.replace(payload));
}

/// Attaches a message and a value to the failure the running callback is
/// about to return.
///
/// Call it inside a callback set on `ckpt_options` (save, prepare, restore,
/// init, step counter, clock, delete, log), then return failure from the
/// callback (a non-zero code; a non-finite time from the clock). The call that
/// reports that failure on the caller's thread (the call that ran the
/// callback; for a background save's save callback, the later call that
/// returns the save's failure, `ckpt_manager_wait_until_finished` included)
/// then returns CKPT_STATUS_CALLBACK_FAILED, its `ckpt_last_error_message()`
/// contains `message`, and `ckpt_take_error_payload` on that thread hands over
/// `payload`. A callback that returns success drops what it attached (the
/// payload is finalized as it returns); so do the log callback, which cannot
/// fail, and the delete callback, whose failure after a commit fails no call
/// (its message goes into the warning to the log callback). Attaching again in
/// the same callback replaces the earlier attachment (finalized at once).
/// Across ranks (`ckpt_options_set_communicator`) the message reaches every
/// rank and the payload is finalized.
///
/// Ownership: `message` is borrowed (copied; NULL attaches no message; bytes
/// that are not UTF-8 are replaced). The library takes `payload` (may be NULL)
/// in every case: it either hands it over through `ckpt_take_error_payload`,
/// after which it is the caller's and `finalizer` never runs, or calls
/// `finalizer` (may be NULL) on it exactly once: when the callback returns
/// success, when the failure is not reported as a call's failure (see above),
/// when a later failed call on the reporting thread replaces it untaken, when
/// that thread exits, or when the manager is freed with its background save's
/// failure unreported. The finalizer runs on the thread where that happens
/// (the callback's thread, the reporting thread, or the thread that calls
/// `ckpt_manager_free`), so `payload` and `finalizer` must be usable from any
/// thread.
/// Returns: CKPT_STATUS_OK; or an error, after which `payload` is already
/// finalized.
/// Errors: CKPT_STATUS_INVALID_ARGUMENT (not called inside a running options
/// callback on this thread: communicator callbacks and finalizers are not
/// options callbacks).
/// Threads: the thread running the callback (for a background save's save
/// callback, the library's background thread).
/// Callbacks: the finalizer of a replaced attachment runs on the calling
/// thread.
#[no_mangle]
pub unsafe extern "C" fn ckpt_callback_set_error(
    message: *const c_char,
    payload: *mut c_void,
    finalizer: ckpt_finalizer,
) -> ckpt_status {
    let payload = (!payload.is_null() || finalizer.is_some())
        .then(|| CValue::new(payload, finalizer));
    guard(|| {
        if RUNNING.with(Cell::get) == 0 {
            drop(payload);
            return Err(Failure::new(
                ckpt_status::InvalidArgument,
                "ckpt_callback_set_error was called outside a running callback",
            ));
        }
        let message = (!message.is_null()).then(|| {
            // SAFETY: a NUL-terminated string (header).
            unsafe { CStr::from_ptr(message) }
                .to_string_lossy()
                .into_owned()
        });
        let replaced =
            ATTACHED.with(|attached| attached.replace(Some(Attached { message, payload })));
        drop(replaced);
        Ok(())
    })
}

/// Takes the payload that a callback attached (`ckpt_callback_set_error`) to
/// the failure of the last failed call on this thread.
///
/// Ownership: on CKPT_STATUS_OK `*out_payload` is the payload, now the
/// caller's (its finalizer will not run), or NULL when that failure carried
/// none, when it was taken already, or when no call has failed on this thread.
/// Returns: CKPT_STATUS_OK with the payload or NULL, or
/// CKPT_STATUS_NULL_ARGUMENT (`out_payload` NULL; nothing is taken, and the
/// last error message and payload stay as they are).
/// Errors: CKPT_STATUS_NULL_ARGUMENT.
/// Threads: any thread; each thread has its own last payload, as it has its
/// own `ckpt_last_error_message()`.
/// Callbacks: none run.
#[no_mangle]
pub unsafe extern "C" fn ckpt_take_error_payload(out_payload: *mut *mut c_void) -> ckpt_status {
    if out_payload.is_null() {
        return ckpt_status::NullArgument;
    }
    let taken = REPORTED
        .try_with(|reported| reported.take())
        .ok()
        .flatten();
    // SAFETY: non-NULL and writable (header).
    unsafe { out_payload.write(taken.map_or(std::ptr::null_mut(), CValue::into_raw)) };
    ckpt_status::Ok
}
