//! A checkpoint's integrity: describing its files (size, CRC32C), writing
//! and checking the manifest, and the pending marker of a save in progress.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::fault;
use super::files::{checkpoint_files, parent_of, remove_entry, sync_directory};
use crate::error::{Error, Result};
use crate::manifest::{
    ByteString, FileRecord, Manifest, Verification, MANIFEST_SUFFIX, MAX_MANIFEST_BYTES,
    PENDING_SUFFIX,
};
use crate::paths;

/// What verification found for a checkpoint that is not damaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integrity {
    /// Every file matches the manifest.
    Intact,
    /// Files exist but there is no manifest (written by another tool).
    NoManifest,
}

/// Reads a whole file through its CRC32C in large chunks.
fn checksum(path: &Path) -> io::Result<(u64, u32)> {
    let mut file = File::open(path)?;
    let mut buffer = vec![0u8; 1 << 20];
    let (mut size, mut crc) = (0u64, 0u32);
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            return Ok((size, crc));
        }
        crc = crc32c::crc32c_append(crc, &buffer[..read]);
        size += read as u64;
    }
}

/// Every regular file among `files` (the checkpoint's entries, as
/// `checkpoint_files` lists them; inside a `<prefix>` directory too) but
/// the manifest and the marker, with its size and CRC32C. Files in `known`
/// (same suffix and size) are not read again.
pub fn describe_checkpoint(
    prefix: &Path,
    files: &[PathBuf],
    known: &[FileRecord],
) -> Result<Vec<FileRecord>> {
    let base_len = prefix.as_os_str().len();
    let own = [MANIFEST_SUFFIX, PENDING_SUFFIX].map(|s| paths::with_suffix(prefix, s));
    let mut pending: Vec<PathBuf> = files
        .iter()
        .filter(|path| !own.contains(path))
        .cloned()
        .collect();
    let mut records = Vec::new();
    while let Some(path) = pending.pop() {
        let mut describe = || -> io::Result<()> {
            let metadata = fs::symlink_metadata(&path)?;
            if metadata.is_dir() {
                for entry in fs::read_dir(&path)? {
                    pending.push(entry?.path());
                }
            } else if metadata.is_file() {
                let suffix = &path.as_os_str().as_bytes()[base_len..];
                let computed = known
                    .iter()
                    .find(|r| r.suffix.as_bytes() == suffix && r.size == metadata.len());
                if let Some(record) = computed {
                    records.push(record.clone());
                    return Ok(());
                }
                let (size, crc32c) = checksum(&path)?;
                records.push(FileRecord {
                    suffix: ByteString::from_bytes(suffix),
                    size,
                    crc32c,
                });
            }
            Ok(())
        };
        describe().map_err(|err| Error::io_at("read checkpoint file", &path, err))?;
    }
    Ok(records)
}

/// Writes the manifest atomically (temporary file, rename) and returns its
/// path. Durability comes from the checkpoint's sync, which must cover it.
pub fn write_manifest(prefix: &Path, manifest: &Manifest) -> Result<PathBuf> {
    let path = paths::with_suffix(prefix, MANIFEST_SUFFIX);
    let temp = paths::with_suffix(&path, ".tmp");
    let written = (|| {
        fault::step()?;
        let mut file = File::create(&temp)?;
        fault::step()?;
        file.write_all(&manifest.to_json())?;
        fault::step()?;
        file.sync_all()?;
        fault::step()?;
        fs::rename(&temp, &path)
    })();
    match written {
        Ok(()) => Ok(path),
        Err(err) => {
            let _ = fs::remove_file(&temp);
            Err(Error::io_at("write manifest", &path, err))
        }
    }
}

fn read_manifest(prefix: &Path) -> Result<Option<Manifest>> {
    let path = paths::with_suffix(prefix, MANIFEST_SUFFIX);
    let damaged = |detail: String| Error::Damaged {
        prefix: prefix.to_path_buf(),
        detail,
    };
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(Error::io_at("open manifest", &path, err)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| Error::io_at("read manifest", &path, err))?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(damaged("its manifest is larger than 16 MiB".into()));
    }
    Manifest::from_json(&bytes)
        .map(Some)
        .map_err(|err| damaged(format!("its manifest is unreadable: {err}")))
}

/// Checks the checkpoint at `prefix` against its manifest. `Err(Damaged)`
/// when a recorded file is missing, has another size or (with
/// `Verification::Checksums`) another CRC32C, or when nothing of the
/// checkpoint exists.
pub fn verify_checkpoint(prefix: &Path, level: Verification) -> Result<Integrity> {
    verify(prefix, level, None).map(|(integrity, _)| integrity)
}

/// `verify_checkpoint` with checksums, except for the file `<prefix><suffix>`:
/// its size is checked and its recorded CRC32C returned, for a caller that
/// reads the whole file anyway to check it on the way.
pub fn verify_checkpoint_deferring(
    prefix: &Path,
    suffix: &str,
) -> Result<(Integrity, Option<u32>)> {
    verify(prefix, Verification::Checksums, Some(suffix.as_bytes()))
}

fn verify(
    prefix: &Path,
    level: Verification,
    deferred: Option<&[u8]>,
) -> Result<(Integrity, Option<u32>)> {
    let damaged = |detail: String| Error::Damaged {
        prefix: prefix.to_path_buf(),
        detail,
    };
    let Some(manifest) = read_manifest(prefix)? else {
        let marker = paths::with_suffix(prefix, PENDING_SUFFIX);
        let files = checkpoint_files(prefix)?;
        return if files.iter().any(|file| *file != marker) {
            Ok((Integrity::NoManifest, None))
        } else {
            Err(damaged("none of its files exist".into()))
        };
    };
    let mut deferred_crc = None;
    for record in &manifest.files {
        let mut path = prefix.as_os_str().to_os_string();
        path.push(std::ffi::OsStr::from_bytes(record.suffix.as_bytes()));
        let path = PathBuf::from(path);
        let name = path.display();
        let size = match fs::metadata(&path) {
            Ok(metadata) => metadata.len(),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(damaged(format!("'{name}' is missing")))
            }
            Err(err) => return Err(Error::io_at("inspect", &path, err)),
        };
        if size != record.size {
            return Err(damaged(format!(
                "'{name}' has {size} bytes, the manifest says {}",
                record.size
            )));
        }
        if deferred == Some(record.suffix.as_bytes()) {
            deferred_crc = Some(record.crc32c);
        } else if level == Verification::Checksums {
            let (_, crc) = checksum(&path).map_err(|err| Error::io_at("read", &path, err))?;
            check_crc(prefix, &path, crc, record.crc32c)?;
        }
    }
    Ok((Integrity::Intact, deferred_crc))
}

/// `Err(Damaged)` unless the CRC32C of the file `path` of the checkpoint
/// at `prefix` is the one its manifest records.
pub fn check_crc(prefix: &Path, path: &Path, actual: u32, recorded: u32) -> Result<()> {
    if actual == recorded {
        return Ok(());
    }
    Err(Error::Damaged {
        prefix: prefix.to_path_buf(),
        detail: format!(
            "'{}' has CRC32C {actual:08x}, the manifest says {recorded:08x}",
            path.display()
        ),
    })
}

/// Marks a save of `prefix` as started, durably, before any of its files
/// are written.
pub fn mark_pending(prefix: &Path) -> Result<()> {
    mark_pending_all(std::slice::from_ref(&prefix.to_path_buf()))
}

/// Marks checkpoints of one directory as pending (being saved or about to
/// be deleted), with one fsync of the directory.
pub fn mark_pending_all(prefixes: &[PathBuf]) -> Result<()> {
    for prefix in prefixes {
        let marker = paths::with_suffix(prefix, PENDING_SUFFIX);
        fault::step()
            .and_then(|()| {
                OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&marker)
            })
            .map_err(|err| Error::io_at("create", &marker, err))?;
    }
    match prefixes.first() {
        Some(prefix) => sync_directory(parent_of(prefix)),
        None => Ok(()),
    }
}

/// Removes the pending marker: the state file names the checkpoint now,
/// or its deletion is done.
pub fn clear_pending(prefix: &Path) -> Result<()> {
    let marker = paths::with_suffix(prefix, PENDING_SUFFIX);
    remove_entry(&marker).map_err(|err| Error::io_at("remove", &marker, err))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(dir: &Path) -> PathBuf {
        let prefix = dir.join("ckpt-3");
        fs::write(paths::with_suffix(&prefix, ".index"), b"index").unwrap();
        fs::write(
            paths::with_suffix(&prefix, ".data-00000-of-00001"),
            b"0123456789",
        )
        .unwrap();
        fs::create_dir(&prefix).unwrap();
        fs::write(prefix.join("shard"), b"shard").unwrap();
        prefix
    }

    fn verify(prefix: &Path, level: Verification) -> std::result::Result<Integrity, String> {
        verify_checkpoint(prefix, level).map_err(|err| err.to_string())
    }

    #[test]
    fn a_described_checkpoint_verifies_until_damaged() {
        let root = tempfile::tempdir().unwrap();
        let prefix = checkpoint(root.path());
        assert_eq!(
            verify(&prefix, Verification::Checksums),
            Ok(Integrity::NoManifest)
        );
        let files = checkpoint_files(&prefix).unwrap();
        let records = describe_checkpoint(&prefix, &files, &[]).unwrap();
        let suffixes: Vec<_> = records
            .iter()
            .map(|r| r.suffix.as_bytes().to_vec())
            .collect();
        assert!(suffixes.contains(&b"/shard".to_vec()) && suffixes.contains(&b".index".to_vec()));
        write_manifest(&prefix, &Manifest::new(3, records)).unwrap();
        assert_eq!(
            verify(&prefix, Verification::Checksums),
            Ok(Integrity::Intact)
        );

        // Same size, other bytes: only the checksum notices.
        let data = paths::with_suffix(&prefix, ".data-00000-of-00001");
        fs::write(&data, b"0123456780").unwrap();
        assert_eq!(verify(&prefix, Verification::Sizes), Ok(Integrity::Intact));
        let err = verify(&prefix, Verification::Checksums).unwrap_err();
        assert!(err.contains("CRC32C"), "{err}");

        fs::write(&data, b"short").unwrap();
        let err = verify(&prefix, Verification::Sizes).unwrap_err();
        assert!(err.contains("has 5 bytes, the manifest says 10"), "{err}");

        fs::write(&data, b"0123456789").unwrap();
        fs::remove_file(prefix.join("shard")).unwrap();
        let err = verify(&prefix, Verification::Sizes).unwrap_err();
        assert!(err.contains("missing"), "{err}");
    }

    #[test]
    fn a_broken_manifest_or_no_files_is_damage() {
        let root = tempfile::tempdir().unwrap();
        let prefix = root.path().join("ckpt-1");
        mark_pending(&prefix).unwrap();
        assert!(verify(&prefix, Verification::Sizes)
            .unwrap_err()
            .contains("none of its files"));
        clear_pending(&prefix).unwrap();
        fs::write(paths::with_suffix(&prefix, MANIFEST_SUFFIX), b"{truncated").unwrap();
        assert!(verify(&prefix, Verification::Sizes)
            .unwrap_err()
            .contains("manifest is unreadable"));
    }
}
