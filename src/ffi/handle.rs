//! Every conversion between a Rust owner and the raw pointer C holds, after
//! rustls-ffi's castable pattern: each C handle type names the Rust value
//! behind it, so ownership is a property of the type and no entry point
//! calls `Box::into_raw`, `Box::from_raw` or `CString::from_raw` itself.

use std::ffi::{c_char, c_void, CString};
use std::ptr;

use super::ckpt_finalizer;

/// A C type that stands for a boxed Rust value. C owns each pointer from
/// the call that returns it (`to_handle`) to its free (`free_handle`).
pub(crate) trait BoxCastable {
    /// The value behind the pointer.
    type RustType;
}

/// Hands `value` to C.
pub(crate) fn to_handle<C: BoxCastable>(value: C::RustType) -> *mut C {
    Box::into_raw(Box::new(value)).cast()
}

/// The value behind `handle`; `None` for NULL.
///
/// # Safety
/// `handle` is NULL or came from `to_handle::<C>`, and is not freed while
/// the reference lives.
pub(crate) unsafe fn borrow<'a, C: BoxCastable>(handle: *const C) -> Option<&'a C::RustType> {
    // SAFETY: a non-NULL handle points to a live `RustType` (the contract).
    unsafe { handle.cast::<C::RustType>().as_ref() }
}

/// The value behind `handle`, mutably; `None` for NULL.
///
/// # Safety
/// As for `borrow`, and nothing else uses the value while the reference
/// lives.
pub(crate) unsafe fn borrow_mut<'a, C: BoxCastable>(handle: *mut C) -> Option<&'a mut C::RustType> {
    // SAFETY: a live, unshared `RustType` or NULL (the contract).
    unsafe { handle.cast::<C::RustType>().as_mut() }
}

/// Takes the value behind a non-NULL `handle` back from C.
///
/// # Safety
/// `handle` came from `to_handle::<C>`, is given back once, and is not
/// borrowed.
pub(crate) unsafe fn take<C: BoxCastable>(handle: *mut C) -> C::RustType {
    // SAFETY: the box `to_handle` leaked, given back once (the contract).
    *unsafe { Box::from_raw(handle.cast::<C::RustType>()) }
}

/// Drops the value behind `handle`; NULL is a no-op.
///
/// # Safety
/// `handle` is NULL or came from `to_handle::<C>`, is freed once, and is
/// not borrowed.
pub(crate) unsafe fn free_handle<C: BoxCastable>(handle: *mut C) {
    if !handle.is_null() {
        // SAFETY: forwarded to the caller.
        drop(unsafe { take(handle) });
    }
}

/// Hands a string to C, which frees it with `ckpt_string_free`.
pub(crate) fn to_c_string(string: CString) -> *mut c_char {
    string.into_raw()
}

/// Frees a string from `to_c_string`; NULL is a no-op.
///
/// # Safety
/// `string` is NULL or came from `to_c_string`, and is freed once.
pub(crate) unsafe fn free_c_string(string: *mut c_char) {
    if !string.is_null() {
        // SAFETY: the string `to_c_string` leaked, given back once.
        drop(unsafe { CString::from_raw(string) });
    }
}

/// A list of strings owned by the caller; free it with
/// `ckpt_string_list_free`.
#[repr(C)]
pub struct ckpt_string_list {
    /// `len` NUL-terminated strings.
    pub items: *mut *mut c_char,
    /// The number of strings.
    pub len: usize,
}

/// C reads the fields through the pointer, so the C type is the Rust type.
impl BoxCastable for ckpt_string_list {
    type RustType = ckpt_string_list;
}

impl ckpt_string_list {
    pub(crate) fn new(strings: Vec<CString>) -> Self {
        let items: Box<[*mut c_char]> = strings.into_iter().map(to_c_string).collect();
        let len = items.len();
        ckpt_string_list {
            items: Box::into_raw(items).cast(),
            len,
        }
    }
}

impl Drop for ckpt_string_list {
    fn drop(&mut self) {
        // SAFETY: `new` leaked `items` as a boxed slice of `len` pointers,
        // which C only reads.
        let items = unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(self.items, self.len)) };
        for &item in items.iter() {
            // SAFETY: each came from `to_c_string` and is freed only here.
            unsafe { free_c_string(item) };
        }
    }
}

/// A pointer C gave the library to own, with the finalizer that releases
/// it: a callback's `user_data`, or the payload of a callback's error.
/// Dropped, it runs the finalizer once, on the dropping thread;
/// `into_raw` hands the pointer back to C instead.
pub(crate) struct CValue {
    ptr: *mut c_void,
    finalizer: ckpt_finalizer,
}

// SAFETY: the header requires these pointers and their finalizers to be
// usable from any thread.
unsafe impl Send for CValue {}
// SAFETY: as above; user_data is also used from several threads at once
// (managers built from one options object share it), as the header allows.
unsafe impl Sync for CValue {}

impl CValue {
    pub(crate) fn new(ptr: *mut c_void, finalizer: ckpt_finalizer) -> Self {
        CValue { ptr, finalizer }
    }

    pub(crate) fn ptr(&self) -> *mut c_void {
        self.ptr
    }

    /// The pointer, now C's again: the finalizer will not run.
    pub(crate) fn into_raw(self) -> *mut c_void {
        std::mem::ManuallyDrop::new(self).ptr
    }
}

impl std::fmt::Debug for CValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:p}", self.ptr)
    }
}

impl Drop for CValue {
    fn drop(&mut self) {
        if let Some(finalizer) = self.finalizer {
            // SAFETY: C registered this finalizer for this pointer, and it
            // runs once: `into_raw` skips the drop.
            unsafe { finalizer(self.ptr) };
        }
    }
}
