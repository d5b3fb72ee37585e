//! All file-system work: the state file (bounded reads, atomic durable
//! writes) and a checkpoint's files (listing, syncing, deleting).
//!
//! A checkpoint's files are the entries beside its prefix named exactly
//! `<base>` or `<base>.<suffix>`, where `<base>` is the prefix's last
//! component. Names are compared as bytes, never expanded as patterns.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::paths::{self, STATE_FILE_NAME};
use crate::state::CheckpointState;

/// State files larger than this are refused rather than read: a real one
/// listing a million checkpoints is under 40 MiB.
pub(crate) const MAX_STATE_FILE_BYTES: u64 = 64 << 20;

/// Prefix of the temporary state files, as TF names them.
pub(crate) const STATE_TEMP_PREFIX: &str = "checkpoint.tmp";

pub fn state_file_path(directory: &Path) -> PathBuf {
    directory.join(STATE_FILE_NAME)
}

/// Reads the state file. `Ok(None)` when the directory or the file does not
/// exist; an error when it exists but cannot be read or used.
pub fn read_state(directory: &Path) -> Result<Option<CheckpointState>> {
    let path = state_file_path(directory);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(Error::io_at("open state file", &path, err)),
    };
    let corrupt = |detail: String| Error::StateCorrupt {
        path: path.clone(),
        detail,
    };
    let mut bytes = Vec::new();
    file.take(MAX_STATE_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| Error::io_at("read state file", &path, err))?;
    if bytes.len() as u64 > MAX_STATE_FILE_BYTES {
        return Err(corrupt(format!(
            "larger than the {MAX_STATE_FILE_BYTES}-byte limit"
        )));
    }
    let state = CheckpointState::parse(&bytes).map_err(|err| corrupt(err.to_string()))?;
    if state.model_checkpoint_path.is_empty() {
        return Err(corrupt("it names no model_checkpoint_path".into()));
    }
    Ok(Some(state))
}

/// Writes the state file atomically and durably: a temporary file in the
/// same directory, fsync, rename over the old file, fsync of the directory.
/// A crash at any point leaves either the old or the new file, whole.
pub fn write_state(directory: &Path, state: &CheckpointState) -> Result<()> {
    let final_path = state_file_path(directory);
    let temp_path = directory.join(format!("{STATE_TEMP_PREFIX}{}", random_hex32()));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp_path)?;
        file.write_all(&state.to_text())?;
        file.sync_all()
    })();
    let renamed = written.and_then(|()| fs::rename(&temp_path, &final_path));
    if let Err(err) = renamed {
        let _ = fs::remove_file(&temp_path);
        return Err(Error::io_at("write state file", &final_path, err));
    }
    sync_directory(directory)
}

/// 32 random hex digits for temporary names, from the kernel.
fn random_hex32() -> String {
    let mut bytes = [0u8; 16];
    // SAFETY: the buffer is valid for writes of its length.
    let filled = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if filled != bytes.len() as isize {
        // No entropy source: pid and time still make a name no other writer uses now.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = (nanos ^ (u128::from(std::process::id()) << 96)).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sync_directory(directory: &Path) -> Result<()> {
    File::open(directory)
        .and_then(|dir| dir.sync_all())
        .map_err(|err| Error::io_at("sync directory", directory, err))
}

/// Creates the directory and its parents, durably.
pub fn create_directory(directory: &Path) -> Result<()> {
    if directory.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(directory)
        .map_err(|err| Error::io_at("create directory", directory, err))?;
    match directory.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_directory(parent),
        _ => Ok(()),
    }
}

fn parent_of(prefix: &Path) -> &Path {
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

/// The highest number among the entries of `directory` named
/// `<name>-<N>[.<suffix>]`; `None` when there are none or no directory.
pub fn highest_number_on_disk(directory: &Path, name: &std::ffi::OsStr) -> Result<Option<u64>> {
    let entries = match fs::read_dir(directory) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(Error::io_at("list directory", directory, err)),
    };
    let mut highest = None;
    for entry in entries {
        let entry = entry.map_err(|err| Error::io_at("list directory", directory, err))?;
        if let Some(number) = paths::own_checkpoint_number(&entry.file_name(), name) {
            highest = highest.max(Some(number));
        }
    }
    Ok(highest)
}

/// Makes a checkpoint's files durable: each file, each directory the save
/// callback made, and the directory that holds them.
pub fn sync_checkpoint(prefix: &Path) -> Result<()> {
    for path in checkpoint_files(prefix)? {
        sync_tree(&path).map_err(|err| Error::io_at("sync checkpoint file", &path, err))?;
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
    File::open(path)?.sync_all()
}

/// Deletes the checkpoint at `prefix`: its data files first and the
/// `.index` file last, so that an interrupted deletion never leaves an
/// index that points at missing data. Missing files are not an error.
pub fn delete_checkpoint(prefix: &Path) -> Result<()> {
    let mut files = checkpoint_files(prefix)?;
    let index = paths::with_suffix(prefix, ".index");
    files.sort_by_key(|path| *path == index);
    for path in &files {
        remove_entry(path).map_err(|err| Error::io_at("delete", path, err))?;
    }
    if !files.is_empty() {
        sync_directory(parent_of(prefix))?;
    }
    Ok(())
}

/// Removes a file, a symlink (not its target) or a directory tree.
fn remove_entry(path: &Path) -> io::Result<()> {
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
        sync_checkpoint(&prefix).unwrap();
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
        delete_checkpoint(&dir.join("ckpt-1")).unwrap();
        assert!(outside.join("precious").exists());
        assert!(!dir.join("ckpt-1").exists());
    }

    #[test]
    fn state_is_written_atomically_and_read_back() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(read_state(root.path()).unwrap(), None);
        let state = CheckpointState {
            model_checkpoint_path: b"ckpt-1".to_vec(),
            all_model_checkpoint_paths: vec![b"ckpt-1".to_vec()],
            all_model_checkpoint_timestamps: vec![1.5],
            last_preserved_timestamp: 0.5,
        };
        write_state(root.path(), &state).unwrap();
        assert_eq!(read_state(root.path()).unwrap(), Some(state));
        let names: Vec<_> = fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["checkpoint"]);
    }

    #[test]
    fn unusable_state_files_are_errors() {
        let root = tempfile::tempdir().unwrap();
        for bytes in [
            &b""[..],
            b"model_checkpoint_path: \"\"\n",
            b"\x00\xff garbage",
        ] {
            fs::write(state_file_path(root.path()), bytes).unwrap();
            assert!(matches!(
                read_state(root.path()),
                Err(Error::StateCorrupt { .. })
            ));
        }
        let huge = File::create(state_file_path(root.path())).unwrap();
        huge.set_len(MAX_STATE_FILE_BYTES + 1).unwrap();
        let err = read_state(root.path()).unwrap_err();
        assert!(err.to_string().contains("limit"), "{err}");
    }
}
