//! Fault injection for tests: every write, fsync, rename and delete step
//! of `storage` passes through `step()`, which unit tests can make fail
//! with ENOSPC after a chosen number of steps. A no-op in normal builds.

use std::io;

#[cfg(test)]
thread_local! {
    static STEPS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    static FAIL_AFTER: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// One I/O step that may fail.
#[cfg(test)]
pub(crate) fn step() -> io::Result<()> {
    let taken = STEPS.with(|steps| {
        steps.set(steps.get() + 1);
        steps.get()
    });
    match FAIL_AFTER.with(|limit| limit.get()) {
        Some(limit) if taken > limit => Err(io::Error::from_raw_os_error(libc::ENOSPC)),
        _ => Ok(()),
    }
}

#[cfg(not(test))]
#[inline(always)]
pub(crate) fn step() -> io::Result<()> {
    Ok(())
}

/// Makes every step after the first `steps` on this thread fail (`None`
/// stops failing) and resets the count.
#[cfg(test)]
pub fn fail_after(steps: Option<usize>) {
    STEPS.with(|count| count.set(0));
    FAIL_AFTER.with(|limit| limit.set(steps));
}

/// Steps taken on this thread since the last `fail_after`.
#[cfg(test)]
pub fn io_steps_taken() -> usize {
    STEPS.with(|count| count.get())
}
