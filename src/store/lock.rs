//! One writer per directory: a POSIX record lock (`fcntl(F_SETLK)`) on
//! `<dir>/checkpoint.lock`. Unlike `flock`, a record lock belongs to the
//! process, not to the open file: a child forked by the trainer (a data
//! loader) does not inherit it, so the lock is free the moment its owner
//! closes it or dies. Record locks do not conflict within one process, so
//! a process-wide table refuses a second writer on the same directory.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::layout::LOCK_FILE_NAME;

/// (device, inode) of the directories this process holds locks on.
static HELD: Mutex<Option<HashSet<(u64, u64)>>> = Mutex::new(None);

fn held() -> MutexGuard<'static, Option<HashSet<(u64, u64)>>> {
    HELD.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Held for the life of a writing manager.
#[derive(Debug)]
pub struct DirectoryLock {
    _file: File,
    directory: (u64, u64),
    /// The process that took it: a child forked since holds a copy of this
    /// value but not the lock (record locks are not inherited).
    process: u32,
}

fn whole_file_lock(kind: libc::c_short) -> libc::flock {
    // SAFETY: `flock` is plain data; all-zero is a valid value.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock
}

impl DirectoryLock {
    /// Takes the directory's lock or fails at once, naming the holder.
    pub fn acquire(directory: &Path) -> Result<DirectoryLock> {
        let path = directory.join(LOCK_FILE_NAME);
        let io_error = |err| Error::io_at("lock", &path, err);
        let metadata = std::fs::metadata(directory)
            .map_err(|err| Error::io_at("open directory", directory, err))?;
        let key = (metadata.dev(), metadata.ino());
        let mut table = held();
        if table.get_or_insert_with(HashSet::new).contains(&key) {
            return Err(Error::Locked {
                path,
                holder: Some(std::process::id()),
            });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .map_err(|err| match err.raw_os_error() {
                Some(libc::ELOOP) => refuse(&path, "it is a symlink"),
                _ => io_error(err),
            })?;
        if !file.metadata().map_err(io_error)?.is_file() {
            return Err(refuse(&path, "it is not a regular file"));
        }
        let lock = whole_file_lock(libc::F_WRLCK as libc::c_short);
        // SAFETY: a valid descriptor and a valid `flock` value.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &lock) } != 0 {
            let err = io::Error::last_os_error();
            if matches!(err.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) {
                return Err(Error::Locked {
                    holder: holder(&file),
                    path,
                });
            }
            return Err(io_error(err));
        }
        table.get_or_insert_with(HashSet::new).insert(key);
        Ok(DirectoryLock {
            _file: file,
            directory: key,
            process: std::process::id(),
        })
    }

    /// Whether this process holds the lock (not a child forked since).
    pub fn is_held_here(&self) -> bool {
        self.process == std::process::id()
    }
}

fn refuse(path: &Path, why: &str) -> Error {
    Error::io_at(
        "lock",
        path,
        io::Error::new(io::ErrorKind::InvalidInput, format!("{why}; remove it")),
    )
}

/// The pid of the process holding a conflicting lock, as the kernel says.
fn holder(file: &File) -> Option<u32> {
    let mut probe = whole_file_lock(libc::F_WRLCK as libc::c_short);
    // SAFETY: a valid descriptor and a valid, writable `flock` value.
    let asked = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut probe) };
    (asked == 0 && probe.l_type != libc::F_UNLCK as libc::c_short && probe.l_pid > 0)
        .then_some(probe.l_pid as u32)
}

impl Drop for DirectoryLock {
    fn drop(&mut self) {
        // The file closes after this, which releases the record lock.
        if let Some(table) = held().as_mut() {
            table.remove(&self.directory);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_fails_fast_naming_the_holder() {
        let root = tempfile::tempdir().unwrap();
        let held = DirectoryLock::acquire(root.path()).unwrap();
        match DirectoryLock::acquire(root.path()) {
            Err(Error::Locked { holder, .. }) => assert_eq!(holder, Some(std::process::id())),
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(held);
        DirectoryLock::acquire(root.path()).unwrap();
        assert!(root.path().join(LOCK_FILE_NAME).exists());
    }

    #[test]
    fn a_symlinked_lock_file_is_refused_and_its_target_untouched() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("precious");
        std::fs::write(&target, b"keep me").unwrap();
        let dir = root.path().join("run");
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::symlink(&target, dir.join(LOCK_FILE_NAME)).unwrap();
        let err = DirectoryLock::acquire(&dir).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
    }
}
