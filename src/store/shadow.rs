//! The local directory where an object store's callbacks write and read,
//! `<root>/ckpt-manager-<hex>`, owned by one open store. Its owner holds an
//! `flock` on the owner file inside for as long as the store is open; the
//! kernel drops the lock when the owner dies. A process killed with
//! SIGKILL cannot remove its directory (a save's staged files can be large),
//! so each new one removes, under the same root, the directories whose
//! owner file it can lock. `flock`, unlike a record lock, also tells two
//! stores of one process apart.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::local::LocalStore;
use crate::layout;

const OWNER_FILE: &str = ".ckpt-manager-owner";
/// The owner file before it is locked: a sweep ignores a directory without
/// the owner file, so it never takes a lock its creator is about to take.
const NEW_OWNER_FILE: &str = ".ckpt-manager-owner-new";

#[derive(Debug)]
pub struct ShadowDirectory {
    files: LocalStore,
    _owner: File,
}

impl ShadowDirectory {
    /// A new directory under `root` (created if missing), after removing
    /// the directories there of stores whose process is gone.
    pub fn create(root: &Path) -> io::Result<ShadowDirectory> {
        fs::create_dir_all(root)?;
        remove_abandoned(root);
        let path = root.join(layout::shadow_directory_name());
        fs::DirBuilder::new().mode(0o700).create(&path)?;
        let owner = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path.join(NEW_OWNER_FILE))
            .and_then(|file| {
                try_lock(&file)?.then_some(file).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::WouldBlock, "the new owner file is locked")
                })
            })
            .and_then(|file| {
                fs::rename(path.join(NEW_OWNER_FILE), path.join(OWNER_FILE))?;
                Ok(file)
            });
        match owner {
            Ok(owner) => Ok(ShadowDirectory {
                files: LocalStore::new(path),
                _owner: owner,
            }),
            Err(err) => {
                let _ = fs::remove_dir_all(&path);
                Err(err)
            }
        }
    }

    /// Removes everything callbacks and downloads left, keeping the
    /// directory and its owner file.
    pub fn clear(&self) -> io::Result<()> {
        for entry in fs::read_dir(self.files.root())? {
            let entry = entry?;
            if entry.file_name() == OWNER_FILE {
                continue;
            }
            match entry.file_type()?.is_dir() {
                true => fs::remove_dir_all(entry.path())?,
                false => fs::remove_file(entry.path())?,
            }
        }
        Ok(())
    }
}

/// The directory's files, by the names the object store gives them.
impl std::ops::Deref for ShadowDirectory {
    type Target = LocalStore;

    fn deref(&self) -> &LocalStore {
        &self.files
    }
}

impl Drop for ShadowDirectory {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(self.files.root());
    }
}

/// Whether this open file took the exclusive `flock` (false: another open
/// file holds it).
fn try_lock(file: &File) -> io::Result<bool> {
    // SAFETY: the descriptor is open for the duration of the call.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    match io::Error::last_os_error() {
        err if err.kind() == io::ErrorKind::WouldBlock => Ok(false),
        err => Err(err),
    }
}

/// Removes the shadow directories under `root` whose owner file is not
/// locked. Best effort: what cannot be read or removed stays.
fn remove_abandoned(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let is_directory = entry.file_type().is_ok_and(|kind| kind.is_dir());
        if is_directory && layout::is_shadow_directory_name(entry.file_name().as_encoded_bytes()) {
            let path: PathBuf = entry.path();
            let owner = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path.join(OWNER_FILE));
            // Held while removing: no other sweep removes it twice.
            if let Ok(owner) = owner {
                if try_lock(&owner).unwrap_or(false) {
                    let _ = fs::remove_dir_all(&path);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shadow_directories(root: &Path) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = fs::read_dir(root)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        found.sort();
        found
    }

    #[test]
    fn open_directories_are_kept_and_abandoned_ones_removed() {
        let root = tempfile::tempdir().unwrap();
        let first = ShadowDirectory::create(root.path()).unwrap();
        fs::write(first.root().join("staged"), b"bytes").unwrap();
        // Another open store of this process keeps the first one's files.
        let second = ShadowDirectory::create(root.path()).unwrap();
        assert_eq!(shadow_directories(root.path()).len(), 2);
        assert!(first.root().join("staged").is_file());

        // What a process killed with SIGKILL leaves: an owner file nobody locks.
        let abandoned = root.path().join(layout::shadow_directory_name());
        fs::create_dir(&abandoned).unwrap();
        fs::write(abandoned.join(OWNER_FILE), b"").unwrap();
        fs::write(abandoned.join("staged"), b"bytes").unwrap();
        // Not ours by name, or not yet owned: never removed.
        let unrelated = root.path().join("ckpt-manager-data");
        fs::create_dir(&unrelated).unwrap();
        let being_created = root.path().join(layout::shadow_directory_name());
        fs::create_dir(&being_created).unwrap();
        fs::write(being_created.join(NEW_OWNER_FILE), b"").unwrap();

        let third = ShadowDirectory::create(root.path()).unwrap();
        let mut expected = vec![
            first.root().to_owned(),
            second.root().to_owned(),
            third.root().to_owned(),
            unrelated,
            being_created,
        ];
        expected.sort();
        assert_eq!(shadow_directories(root.path()), expected);
        assert!(!abandoned.exists());

        first.clear().unwrap();
        assert!(!first.root().join("staged").exists());
        assert!(first.root().join(OWNER_FILE).is_file());
        drop((first, second, third));
        assert_eq!(shadow_directories(root.path()).len(), 2);
    }
}
