//! What a checkpoint owns and whether it is whole: its manifest (read
//! bounded and validated), the files it owns, verification against it,
//! and deletion of exactly those files. A checkpoint is named by its base
//! (`ckpt-3`) inside one store.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::layout::{self, file_name, manifest_name, TENSORFLOW_INDEX_SUFFIX};
use crate::manifest::{Manifest, Verification, MAX_MANIFEST_BYTES};
use crate::store::{self, Kind, Store};

/// What verification found for a checkpoint that is not damaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integrity {
    /// Every file matches the manifest.
    Intact,
    /// Files exist but there is no manifest (written by another tool).
    NoManifest,
    /// The manifest describes an earlier save of this checkpoint: the state
    /// file records a later save of it, made by a tool that writes no
    /// manifest (TensorFlow). It is not verified, as with `NoManifest`.
    ManifestOutdated,
}

fn damaged(store: &dyn Store, base: &OsStr, detail: String) -> Error {
    Error::Damaged {
        prefix: store.shown(Path::new(base)),
        detail,
    }
}

/// The checkpoint's manifest, validated; `None` when it has none.
pub fn read_manifest(store: &dyn Store, base: &OsStr) -> Result<Option<Manifest>> {
    let name = manifest_name(base);
    let bytes = match store::read_bounded(store, &name, MAX_MANIFEST_BYTES) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::InvalidData => {
            return Err(damaged(
                store,
                base,
                format!("its manifest is unusable: {err}"),
            ))
        }
        Err(err) => return Err(Error::io_at("read manifest", &store.shown(&name), err)),
    };
    let Some(bytes) = bytes else { return Ok(None) };
    Manifest::from_json(&bytes)
        .map(Some)
        .map_err(|err| damaged(store, base, format!("its manifest is unusable: {err}")))
}

/// Whether `<base>.index`, TensorFlow's mark of a checkpoint, exists.
fn has_tensorflow_index(store: &dyn Store, base: &OsStr) -> bool {
    store
        .kind(&file_name(base, TENSORFLOW_INDEX_SUFFIX.as_bytes()))
        .ok()
        .flatten()
        .is_some()
}

/// The files a checkpoint owns, in the order to delete them (data, then
/// the rest, the manifest last so an interrupted deletion never looks
/// whole), and the directories they sit in, deepest first. With a
/// manifest: what it lists. Without one: TensorFlow's `.index` and
/// `.data-NNNNN-of-NNNNN` files, found by one listing.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Owned {
    pub files: Vec<PathBuf>,
    pub directories: Vec<PathBuf>,
}

/// TensorFlow's files of `base`, data before the `.index`; one listing,
/// only when the `.index` exists.
fn tensorflow_files(store: &dyn Store, base: &OsStr) -> Result<Vec<PathBuf>> {
    if !has_tensorflow_index(store, base) {
        return Ok(Vec::new());
    }
    let entries = store::list_root(store)?;
    let mut files: Vec<PathBuf> = entries
        .iter()
        .filter(|entry| entry.kind != Kind::Directory)
        .filter(|entry| layout::is_tensorflow_file(entry.name.as_bytes(), base.as_bytes()))
        .map(|entry| PathBuf::from(&entry.name))
        .collect();
    files.sort_by_key(|name| {
        name.as_os_str()
            .as_bytes()
            .ends_with(TENSORFLOW_INDEX_SUFFIX.as_bytes())
    });
    Ok(files)
}

pub fn owned_files(store: &dyn Store, base: &OsStr) -> Result<Owned> {
    let mut owned = Owned::default();
    match read_manifest(store, base) {
        Ok(Some(manifest)) => {
            let mut suffixes: Vec<&[u8]> =
                manifest.files.iter().map(|f| f.suffix.as_bytes()).collect();
            suffixes.sort_by_key(|suffix| *suffix == TENSORFLOW_INDEX_SUFFIX.as_bytes());
            for suffix in suffixes {
                owned.files.push(file_name(base, suffix));
                let mut parent = suffix;
                while let Some(cut) = parent.iter().rposition(|&b| b == b'/') {
                    parent = &parent[..cut];
                    if !parent.is_empty() {
                        owned.directories.push(file_name(base, parent));
                    } else {
                        owned.directories.push(file_name(base, b""));
                    }
                }
            }
            owned.files.push(manifest_name(base));
        }
        Ok(None) => owned.files = tensorflow_files(store, base)?,
        // A damaged manifest cannot be trusted to name files: the checkpoint
        // owns TF's files, if any, and the manifest itself.
        Err(Error::Damaged { .. }) => {
            owned.files = tensorflow_files(store, base)?;
            owned.files.push(manifest_name(base));
        }
        Err(err) => return Err(err),
    }
    owned
        .directories
        .sort_by_key(|dir| std::cmp::Reverse(dir.as_os_str().len()));
    owned.directories.dedup();
    Ok(owned)
}

/// Deletes what a checkpoint owns: its files in order, then its
/// directories if they are empty. Missing files are fine.
pub fn delete_owned(store: &dyn Store, owned: &Owned) -> Result<()> {
    for name in &owned.files {
        store
            .remove_file(name)
            .map_err(|err| Error::io_at("delete", &store.shown(name), err))?;
    }
    for name in &owned.directories {
        match store.remove_empty_dir(name) {
            // Something the checkpoint does not own is in it: it stays.
            Err(err) if err.raw_os_error() == Some(libc::ENOTEMPTY) => {}
            other => other.map_err(|err| Error::io_at("delete", &store.shown(name), err))?,
        }
    }
    Ok(())
}

/// Checks a checkpoint against its manifest. `saved_at` is the time the
/// state file records for it, when it lists it: a later time than the
/// manifest's means another tool saved it again since. `Err(Damaged)` when
/// a listed file is missing, not a regular file, of another size or (with
/// `Verification::Checksums`) of another CRC32C, or when nothing of the
/// checkpoint exists. `deferred`: the suffixes of files whose CRC32C the
/// caller checks while reading them anyway; the recorded CRC of the first
/// is returned.
pub fn verify(
    store: &dyn Store,
    base: &OsStr,
    level: Verification,
    saved_at: Option<f64>,
    deferred: &[&[u8]],
) -> Result<(Integrity, Option<u32>)> {
    verify_with_progress(store, base, level, saved_at, deferred, &mut |_| {})
}

/// `verify`, telling `progress` the bytes of each chunk it checksums.
pub fn verify_with_progress(
    store: &dyn Store,
    base: &OsStr,
    level: Verification,
    saved_at: Option<f64>,
    deferred: &[&[u8]],
    progress: &mut dyn FnMut(u64),
) -> Result<(Integrity, Option<u32>)> {
    let Some(manifest) = read_manifest(store, base)? else {
        return if has_files(store, base)? {
            Ok((Integrity::NoManifest, None))
        } else {
            Err(damaged(store, base, "none of its files exist".into()))
        };
    };
    if let (Some(listed), Some(recorded)) = (saved_at, manifest.saved_at) {
        if listed > recorded {
            return Ok((Integrity::ManifestOutdated, None));
        }
    }
    let mut deferred_crc = None;
    for record in &manifest.files {
        let deferred = deferred.contains(&record.suffix.as_bytes());
        check_record(store, base, record, level, deferred, progress)?;
        if deferred {
            deferred_crc = deferred_crc.or(Some(record.crc32c));
        }
    }
    Ok((Integrity::Intact, deferred_crc))
}

/// Checks one file the manifest lists: it exists, is a regular file of the
/// recorded size and, with checksums (unless `deferred`), CRC32C.
fn check_record(
    store: &dyn Store,
    base: &OsStr,
    record: &crate::manifest::FileRecord,
    level: Verification,
    deferred: bool,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let name = file_name(base, record.suffix.as_bytes());
    let shown = store.shown(&name);
    let file = match store.open_read(&name) {
        Ok(Some(file)) => file,
        Ok(None) => {
            return Err(damaged(
                store,
                base,
                format!("'{}' is missing", shown.display()),
            ))
        }
        Err(err)
            if matches!(
                err.kind(),
                io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput
            ) =>
        {
            return Err(damaged(
                store,
                base,
                format!("'{}': {err}", shown.display()),
            ))
        }
        Err(err) => return Err(Error::io_at("open", &shown, err)),
    };
    if file.size() != record.size {
        return Err(damaged(
            store,
            base,
            format!(
                "'{}' has {} bytes, the manifest says {}",
                shown.display(),
                file.size(),
                record.size
            ),
        ));
    }
    if !deferred && level == Verification::Checksums {
        let (_, crc) =
            store::checksum(&*file, progress).map_err(|err| Error::io_at("read", &shown, err))?;
        check_crc(&store.shown(Path::new(base)), &shown, crc, record.crc32c)?;
    }
    Ok(())
}

/// Checks one rank's files of a checkpoint saved across ranks: those of its
/// manifest whose suffix starts with `shard`, but the CRC32C of `deferred`
/// ones (which the caller checks as it reads them). A checkpoint without a
/// manifest, or without any file of this rank (unless its tensors are in the
/// manifest, which every number of ranks restores), is damaged for it.
pub fn verify_shard(
    store: &dyn Store,
    base: &OsStr,
    shard: &[u8],
    level: Verification,
    deferred: &[&[u8]],
) -> Result<()> {
    let manifest = read_manifest(store, base)?.ok_or_else(|| {
        damaged(
            store,
            base,
            "it has no manifest to find this rank's files".into(),
        )
    })?;
    let mut found = false;
    for record in &manifest.files {
        if record.suffix.as_bytes().starts_with(shard) {
            found = true;
            let deferred = deferred.contains(&record.suffix.as_bytes());
            check_record(store, base, record, level, deferred, &mut |_| {})?;
        }
    }
    if !found && manifest.tensors.is_empty() {
        return Err(damaged(
            store,
            base,
            format!(
                "it has no file of rank '{}' (saved by another number of ranks?)",
                String::from_utf8_lossy(shard)
            ),
        ));
    }
    Ok(())
}

/// Whether any file of a checkpoint without a manifest exists: TF's
/// `.index`, or `<base>` or `<base>.<suffix>` (another tool's layout).
pub fn has_files(store: &dyn Store, base: &OsStr) -> Result<bool> {
    if has_tensorflow_index(store, base) {
        return Ok(true);
    }
    let entries = store::list_root(store)?;
    Ok(entries
        .iter()
        .any(|entry| layout::may_belong_to(entry.name.as_bytes(), base.as_bytes())))
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
