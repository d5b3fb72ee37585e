//! One writer per directory: an exclusive `flock` on `<dir>/checkpoint.lock`
//! that holds the owner's pid. The kernel drops the lock when the file is
//! closed or the process dies, so a crash never leaves a stale lock.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::error::{Error, Result};

pub const LOCK_FILE_NAME: &str = "checkpoint.lock";

/// Held for the life of a writing manager.
#[derive(Debug)]
pub struct DirectoryLock {
    _file: File,
}

impl DirectoryLock {
    /// Takes the directory's lock or fails at once, naming the holder.
    pub fn acquire(directory: &Path) -> Result<DirectoryLock> {
        let path = directory.join(LOCK_FILE_NAME);
        let io_error = |err| Error::io_at("open lock file", &path, err);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error)?;
        // SAFETY: a valid, open file descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock {
                return Err(Error::Locked {
                    path,
                    holder: read_pid(&mut file),
                });
            }
            return Err(io_error(err));
        }
        // The pid is only for the message a second writer gets.
        let pid = format!("{}\n", std::process::id());
        let recorded = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(pid.as_bytes()));
        recorded.map_err(io_error)?;
        Ok(DirectoryLock { _file: file })
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
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
}
