//! A checkpoint's files: listing, syncing and deleting them.
//!
//! The files of the checkpoint at prefix `P` are the entries beside it
//! named exactly `<base>` or `<base>.<suffix>`, where `<base>` is `P`'s last
//! component. Names are compared as bytes, never expanded as patterns.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::fault;
use crate::error::{Error, Result};
use crate::manifest::{MANIFEST_SUFFIX, PENDING_SUFFIX};
use crate::paths;

pub fn sync_directory(directory: &Path) -> Result<()> {
    fault::step()
        .and_then(|()| File::open(directory)?.sync_all())
        .map_err(|err| Error::io_at("sync directory", directory, err))
}

/// Creates the directory and its parents, durably.
pub fn create_directory(directory: &Path) -> Result<()> {
    if directory.is_dir() {
        return Ok(());
    }
    fault::step()
        .and_then(|()| fs::create_dir_all(directory))
        .map_err(|err| Error::io_at("create directory", directory, err))?;
    match directory.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_directory(parent),
        _ => Ok(()),
    }
}

pub(crate) fn parent_of(prefix: &Path) -> &Path {
    match prefix.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Whether a directory entry belongs to the checkpoint whose prefix has
/// the last component `base`.
fn belongs_to(entry: &[u8], base: &[u8]) -> bool {
    match entry.strip_prefix(base) {
        Some(rest) => rest.is_empty() || rest[0] == b'.',
        None => false,
    }
}

/// The files (and directories) of the checkpoint at `prefix`, sorted.
pub fn checkpoint_files(prefix: &Path) -> Result<Vec<PathBuf>> {
    let Some(base) = prefix.file_name() else {
        return Err(Error::invalid(format!(
            "'{}' is not a checkpoint prefix",
            prefix.display()
        )));
    };
    let parent = parent_of(prefix);
    let entries = match fs::read_dir(parent) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(Error::io_at("list directory", parent, err)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|err| Error::io_at("list directory", parent, err))?;
        if belongs_to(entry.file_name().as_bytes(), base.as_bytes()) {
            files.push(parent.join(entry.file_name()));
        }
    }
    files.sort();
    Ok(files)
}

pub fn checkpoint_exists(prefix: &Path) -> Result<bool> {
    Ok(!checkpoint_files(prefix)?.is_empty())
}

/// The numbers N of the entries of `directory` named `<name>-<N>[.<suffix>]`
/// that end in `suffix` (any entry when `suffix` is empty). Empty when the
/// directory does not exist.
pub fn numbers_on_disk(directory: &Path, name: &OsStr, suffix: &str) -> Result<BTreeSet<u64>> {
    let entries = match fs::read_dir(directory) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(err) => return Err(Error::io_at("list directory", directory, err)),
    };
    let mut numbers = BTreeSet::new();
    for entry in entries {
        let entry = entry.map_err(|err| Error::io_at("list directory", directory, err))?;
        let file_name = entry.file_name();
        if !file_name.as_bytes().ends_with(suffix.as_bytes()) {
            continue;
        }
        if let Some(number) = paths::own_checkpoint_number(&file_name, name) {
            numbers.insert(number);
        }
    }
    Ok(numbers)
}

pub fn highest_number_on_disk(directory: &Path, name: &OsStr) -> Result<Option<u64>> {
    Ok(numbers_on_disk(directory, name, "")?.last().copied())
}

/// Makes a checkpoint's files durable: each of `files` (with what is
/// inside the directories among them), then the directory that holds them.
pub fn sync_checkpoint<'a>(
    prefix: &Path,
    files: impl IntoIterator<Item = &'a PathBuf>,
) -> Result<()> {
    for path in files {
        sync_tree(path).map_err(|err| Error::io_at("sync checkpoint file", path, err))?;
    }
    sync_directory(parent_of(prefix))
}

fn sync_tree(path: &Path) -> io::Result<()> {
    let metadata = fs::symlink_metadata(path)?;
    if metadata.is_dir() {
        for entry in fs::read_dir(path)? {
            sync_tree(&entry?.path())?;
        }
    } else if !metadata.is_file() {
        return Ok(());
    }
    fault::step()?;
    File::open(path)?.sync_all()
}

/// Deletes the checkpoint at `prefix`. The order keeps an interrupted
/// deletion detectable: data first, then the `.index`, then the manifest
/// (so what is left never verifies as whole), the pending marker last.
/// Missing files are not an error.
pub fn delete_checkpoint(prefix: &Path) -> Result<()> {
    let mut files = checkpoint_files(prefix)?;
    let last = [".index", MANIFEST_SUFFIX, PENDING_SUFFIX].map(|s| paths::with_suffix(prefix, s));
    files.sort_by_key(|path| last.iter().position(|l| l == path));
    for path in &files {
        remove_entry(path).map_err(|err| Error::io_at("delete", path, err))?;
    }
    if !files.is_empty() {
        sync_directory(parent_of(prefix))?;
    }
    Ok(())
}

/// Removes one file; a missing one is fine.
pub fn remove_file(path: &Path) -> Result<()> {
    remove_entry(path).map_err(|err| Error::io_at("remove", path, err))
}

/// Removes a file, a symlink (not its target) or a directory tree.
pub(crate) fn remove_entry(path: &Path) -> io::Result<()> {
    fault::step()?;
    let result = match fs::symlink_metadata(path) {
        Ok(metadata) if metadata.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(err) => Err(err),
    };
    match result {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        fs::write(path, b"x").unwrap();
    }

    #[test]
    fn files_are_matched_literally() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("run[1]*?");
        fs::create_dir(&dir).unwrap();
        for name in [
            "ckpt-1.index",
            "ckpt-1.data-00000-of-00001",
            "ckpt-1.safetensors",
            "ckpt-10.index",
            "ckpt-1-2.index",
            "checkpoint",
        ] {
            touch(&dir.join(name));
        }
        fs::create_dir(dir.join("ckpt-1")).unwrap();
        touch(&dir.join("ckpt-1").join("shard"));
        let prefix = dir.join("ckpt-1");
        let names: Vec<_> = checkpoint_files(&prefix)
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                "ckpt-1",
                "ckpt-1.data-00000-of-00001",
                "ckpt-1.index",
                "ckpt-1.safetensors"
            ]
        );
        sync_checkpoint(&prefix, &checkpoint_files(&prefix).unwrap()).unwrap();
        delete_checkpoint(&prefix).unwrap();
        assert!(!checkpoint_exists(&prefix).unwrap());
        let mut left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["checkpoint", "ckpt-1-2.index", "ckpt-10.index"]);
        assert_eq!(
            highest_number_on_disk(&dir, "ckpt".as_ref()).unwrap(),
            Some(10)
        );
    }

    #[test]
    fn deleting_a_symlinked_checkpoint_keeps_its_target() {
        let root = tempfile::tempdir().unwrap();
        let outside = root.path().join("outside");
        fs::create_dir(&outside).unwrap();
        touch(&outside.join("precious"));
        let dir = root.path().join("run");
        fs::create_dir(&dir).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("ckpt-1")).unwrap();
        std::os::unix::fs::symlink(outside.join("precious"), dir.join("ckpt-1.data")).unwrap();
        delete_checkpoint(&dir.join("ckpt-1")).unwrap();
        assert!(outside.join("precious").exists());
        assert!(!dir.join("ckpt-1").exists());
        assert!(fs::symlink_metadata(dir.join("ckpt-1.data")).is_err());
    }

    #[test]
    fn an_interrupted_deletion_leaves_the_manifest() {
        let root = tempfile::tempdir().unwrap();
        let prefix = root.path().join("ckpt-1");
        for suffix in [".index", ".data-0", MANIFEST_SUFFIX, PENDING_SUFFIX] {
            touch(&paths::with_suffix(&prefix, suffix));
        }
        // Two removals succeed, the third fails: data and index are gone.
        fault::fail_after(Some(2));
        assert!(delete_checkpoint(&prefix).is_err());
        fault::fail_after(None);
        let left: Vec<_> = checkpoint_files(&prefix).unwrap();
        assert_eq!(
            left,
            [MANIFEST_SUFFIX, PENDING_SUFFIX].map(|s| paths::with_suffix(&prefix, s))
        );
    }
}
