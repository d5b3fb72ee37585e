//! What both commits share: the commit record, the steps up to the commit
//! point (the state file and manifest staged, the record written and synced
//! after what it names), the moves into place after it, and the sweep's
//! deletions once it is done.

use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{CommitPlan, Sealed};
use crate::error::{Error, Result};
use crate::integrity::{self, Owned};
use crate::layout::{self, file_name, record_name, STATE_FILE_NAME};
use crate::manifest::{ByteString, Manifest, MAX_MANIFEST_BYTES};
use crate::state::CheckpointState;
use crate::state_file::{read_state_bytes, MAX_STATE_FILE_BYTES};
use crate::store::{self, Kind, Store};

const RECORD_FORMAT: &str = "ckpt-manager-commit";

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct SweptRecord {
    pub base: ByteString,
    pub files: Vec<ByteString>,
    pub directories: Vec<ByteString>,
}

/// What recovery needs to finish a commit: written, synced, before the
/// first file of the directory changes.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct CommitRecord {
    format: String,
    version: u32,
    /// The checkpoint it commits. A staging directory becomes the spare
    /// once its record is removed, unsynced: if a power cut loses that
    /// removal, the record may surface in another save's staging, where
    /// it must not be rolled forward. (Older records lack it.)
    #[serde(default)]
    base: Option<ByteString>,
    /// Suffixes to move from staging into place, the manifest last.
    pub moves: Vec<ByteString>,
    /// Names of the replaced checkpoint's files the new one lacks.
    remove: Vec<ByteString>,
    remove_directories: Vec<ByteString>,
    state_before: Option<u32>,
    /// The new state file, written and synced aside before the commit point.
    state_staged: ByteString,
    pub swept: Vec<SweptRecord>,
    /// Set when the commit placed a new checkpoint's files and renamed the
    /// state file itself, without writing this record (`rename.rs`):
    /// only the directory's sync is left after the commit point.
    #[serde(skip)]
    pub placed: bool,
}

pub(super) fn io_at(
    action: &str,
    store: &dyn Store,
    name: &Path,
) -> impl FnOnce(io::Error) -> Error {
    let path = store.shown(name);
    let action = action.to_owned();
    move |err| Error::io_at(&action, &path, err)
}

pub(super) fn bytes_of(path: &Path) -> ByteString {
    ByteString::from_bytes(path.as_os_str().as_bytes())
}

pub(super) fn path_of(bytes: &ByteString) -> PathBuf {
    PathBuf::from(OsString::from_vec(bytes.as_bytes().to_vec()))
}

/// Writes `name` whole; a write that fails (a full disk) removes what it
/// created, so that no partial file is left behind.
pub(super) fn write_whole(store: &dyn Store, name: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = store.create(name).map_err(io_at("write", store, name))?;
    file.write_all(bytes)
        .and_then(|()| file.finish())
        .map_err(|err| {
            let _ = store.remove_file(name);
            io_at("write", store, name)(err)
        })
}

/// A commit staged but not yet recorded: its record, and the staged files
/// that must be durable before the record is.
pub(super) struct Staged {
    pub record: CommitRecord,
    pub files: Vec<PathBuf>,
}

/// An error unless the state file is missing or a regular file: a
/// commit never replaces anything else.
pub(super) fn check_state_file(store: &dyn Store) -> Result<()> {
    let state_name = Path::new(STATE_FILE_NAME);
    match store.kind(state_name) {
        Ok(None | Some(Kind::File)) => Ok(()),
        _ => Err(Error::io_at(
            "write state file",
            &store.shown(state_name),
            io::Error::new(io::ErrorKind::InvalidInput, "it is not a regular file"),
        )),
    }
}

/// Writes the new state file aside (at `state_staged`) and the manifest
/// into staging, and describes the commit (after `check_state_file`). The directory's files are
/// untouched.
pub(super) fn stage(
    store: &dyn Store,
    base: &OsStr,
    sealed: &Sealed,
    plan: &CommitPlan,
    state_staged: &Path,
) -> Result<Staged> {
    write_whole(store, state_staged, &plan.state_after)?;
    let mut manifest = Manifest::new(plan.number, sealed.files.clone());
    manifest.saved_at = Some(plan.saved_at);
    manifest.annotations = plan.annotations.clone();
    if let Some(saved) = &sealed.tensors {
        manifest.set_tensors(saved.world_size, saved.tensors.clone());
    }
    let staging = layout::staging_name(base);
    let manifest_staged = staging.join(layout::manifest_name(base));
    write_whole(store, &manifest_staged, &manifest.to_json())?;
    let mut moves: Vec<ByteString> = manifest.files.iter().map(|f| f.suffix.clone()).collect();
    moves.push(ByteString::from_bytes(layout::MANIFEST_SUFFIX.as_bytes()));
    let keeps = |name: &Path| {
        moves
            .iter()
            .any(|suffix| file_name(base, suffix.as_bytes()) == name)
    };
    let record = CommitRecord {
        format: RECORD_FORMAT.into(),
        version: 1,
        base: Some(ByteString::from_bytes(base.as_bytes())),
        remove: plan
            .replaced
            .files
            .iter()
            .filter(|name| !keeps(name))
            .map(|n| bytes_of(n))
            .collect(),
        remove_directories: plan
            .replaced
            .directories
            .iter()
            .map(|n| bytes_of(n))
            .collect(),
        moves,
        state_before: plan.state_before,
        state_staged: bytes_of(state_staged),
        swept: plan
            .swept
            .iter()
            .map(|(base, owned)| SweptRecord {
                base: ByteString::from_bytes(base.as_bytes()),
                files: owned.files.iter().map(|n| bytes_of(n)).collect(),
                directories: owned.directories.iter().map(|n| bytes_of(n)).collect(),
            })
            .collect(),
        placed: false,
    };
    let mut files: Vec<PathBuf> = sealed
        .files
        .iter()
        .map(|f| staging.join(file_name(base, f.suffix.as_bytes())))
        .collect();
    files.extend([manifest_staged, state_staged.to_path_buf()]);
    Ok(Staged { record, files })
}

/// The commit point: everything the record names is made durable, then
/// the record (an object store makes each write durable at once), then
/// the directories, the root included (the staging directory's entry).
pub(super) fn reach_commit_point(
    store: &dyn Store,
    base: &OsStr,
    sealed: &Sealed,
    staged: Staged,
) -> Result<CommitRecord> {
    let staging = layout::staging_name(base);
    let sync = |files: &[PathBuf]| {
        store
            .sync_files(files)
            .map_err(io_at("sync", store, &staging))
    };
    sync(&staged.files)?;
    let record_name = record_name(base);
    let json = serde_json::to_vec(&staged.record).expect("a commit record always serialises");
    write_whole(store, &record_name, &json)?;
    sync(&[record_name])?;
    let mut directories = sealed.directories.clone();
    directories.push(PathBuf::new());
    store
        .sync_directories(&directories)
        .map_err(io_at("sync", store, &staging))?;
    Ok(staged.record)
}

/// Moves the staged files into place, removes what the replaced
/// checkpoint had and the new one lacks, renames the staged state file
/// over the old one, and syncs the directories. Each step can run again
/// after a crash; `recovering` then first checks that the state file is
/// still the one the commit replaces (a stale record must not undo a later
/// commit).
pub(super) fn move_into_place(
    store: &dyn Store,
    base: &OsStr,
    record: &CommitRecord,
    recovering: bool,
) -> Result<()> {
    let staging = layout::staging_name(base);
    let mut created = Vec::new();
    for suffix in &record.moves {
        let to = file_name(base, suffix.as_bytes());
        let from = staging.join(&to);
        if store.kind(&from).map_err(io_at("inspect", store, &from))? != Some(Kind::File) {
            continue; // moved before a crash
        }
        create_parents(store, &to, &mut created)?;
        store
            .rename(&from, &to)
            .map_err(io_at("move into place", store, &to))?;
        if let Some(parent) = to.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !created.iter().any(|c| c == parent) {
                created.push(parent.to_path_buf());
            }
        }
    }
    for name in &record.remove {
        let name = path_of(name);
        store
            .remove_file(&name)
            .map_err(io_at("delete", store, &name))?;
    }
    for name in &record.remove_directories {
        let name = path_of(name);
        match store.remove_empty_dir(&name) {
            Err(err) if err.raw_os_error() == Some(libc::ENOTEMPTY) => {}
            other => other.map_err(io_at("delete", store, &name))?,
        }
    }
    // The staged state file is gone once it was renamed into place.
    let state_name = Path::new(STATE_FILE_NAME);
    let staged = path_of(&record.state_staged);
    let staged_exists = store
        .kind(&staged)
        .map_err(io_at("inspect", store, &staged))?
        .is_some();
    let replaces = staged_exists
        && (!recovering
            || read_state_bytes(store)?.as_deref().map(crc32c::crc32c) == record.state_before);
    if replaces {
        store
            .rename(&staged, state_name)
            .map_err(io_at("write state file", store, state_name))?;
    } else if staged_exists {
        store
            .remove_file(&staged)
            .map_err(io_at("remove", store, &staged))?;
    }
    created.push(PathBuf::new());
    store
        .sync_directories(&created)
        .map_err(io_at("sync", store, Path::new("")))
}

/// Creates the directories on the way to `to` that are missing, noting
/// them in `created`.
fn create_parents(store: &dyn Store, to: &Path, created: &mut Vec<PathBuf>) -> Result<()> {
    let mut parent = PathBuf::new();
    let parts: Vec<_> = to.components().collect();
    for part in &parts[..parts.len() - 1] {
        parent.push(part);
        match store
            .kind(&parent)
            .map_err(io_at("inspect", store, &parent))?
        {
            Some(Kind::Directory) => {}
            None => {
                store
                    .create_dir(&parent)
                    .map_err(io_at("create directory", store, &parent))?;
                created.push(parent.clone());
            }
            Some(_) => {
                return Err(Error::io_at(
                    "move into place",
                    &store.shown(to),
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "a file stands where its directory goes",
                    ),
                ))
            }
        }
    }
    Ok(())
}

/// Deletes what the record's sweep dropped (except checkpoints the state
/// file names again, when recovering a stale record, and those `on_swept`
/// says it deleted itself) and syncs the directory once. The caller then
/// removes the staging directory.
pub(super) fn delete_swept(
    store: &dyn Store,
    record: &CommitRecord,
    named: Option<&[Vec<u8>]>,
    on_swept: &mut dyn FnMut(&OsStr) -> bool,
) -> Result<()> {
    let mut deleted = false;
    for swept in &record.swept {
        if named.is_some_and(|named| named.iter().any(|entry| entry == swept.base.as_bytes())) {
            continue;
        }
        if on_swept(OsStr::from_bytes(swept.base.as_bytes())) {
            continue;
        }
        let owned = Owned {
            files: swept.files.iter().map(path_of).collect(),
            directories: swept.directories.iter().map(path_of).collect(),
        };
        integrity::delete_owned(store, &owned)?;
        deleted |= !owned.files.is_empty();
    }
    if deleted {
        // Before the record goes: a deletion lost to a power cut is redone.
        store
            .sync_directories(&[PathBuf::new()])
            .map_err(io_at("sync", store, Path::new("")))?;
    }
    Ok(())
}

/// Whether the state file names `<base>` (as the latest or among all).
pub(super) fn state_names(store: &dyn Store, base: &OsStr) -> Result<bool> {
    Ok(read_state_bytes(store)?
        .and_then(|bytes| CheckpointState::parse(&bytes).ok())
        .is_some_and(|state| {
            let base = base.as_bytes();
            state.model_checkpoint_path == base
                || state
                    .all_model_checkpoint_paths
                    .iter()
                    .any(|path| path == base)
        }))
}

/// The commit record of `<base>`'s staging directory, when it holds a
/// readable one: the commit got past its commit point.
pub(super) fn read_record(store: &dyn Store, base: &OsStr) -> Result<Option<CommitRecord>> {
    let record_name = record_name(base);
    match store::read_bounded(
        store,
        &record_name,
        MAX_STATE_FILE_BYTES + MAX_MANIFEST_BYTES,
    ) {
        Ok(Some(bytes)) => {
            Ok(serde_json::from_slice::<CommitRecord>(&bytes)
                .ok()
                .filter(|record| {
                    record.format == RECORD_FORMAT
                        && record.version == 1
                        && record
                            .base
                            .as_ref()
                            .is_none_or(|own| own.as_bytes() == base.as_bytes())
                }))
        }
        Ok(None) => Ok(None),
        Err(err) if err.kind() == io::ErrorKind::InvalidData => Ok(None),
        Err(err) => Err(Error::io_at("read", &store.shown(&record_name), err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LocalStore;

    /// A record whose removal a power cut lost may surface in another
    /// save's staging directory (the spare, renamed): it is not that
    /// save's record.
    #[test]
    fn a_record_is_read_only_under_its_own_checkpoint() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalStore::new(root.path());
        let record = |base: &str| CommitRecord {
            format: RECORD_FORMAT.into(),
            version: 1,
            base: Some(ByteString::from_bytes(base.as_bytes())),
            moves: Vec::new(),
            remove: Vec::new(),
            remove_directories: Vec::new(),
            state_before: None,
            state_staged: ByteString::from_bytes(b"checkpoint.tmp"),
            swept: Vec::new(),
            placed: false,
        };
        let (one, two) = (OsStr::new("ckpt-1"), OsStr::new("ckpt-2"));
        store.create_dir(&layout::staging_name(two)).unwrap();
        let write = |record: &CommitRecord| {
            let json = serde_json::to_vec(record).unwrap();
            write_whole(&store, &record_name(two), &json).unwrap();
        };
        write(&record("ckpt-1"));
        assert!(read_record(&store, two).unwrap().is_none());
        write(&record("ckpt-2"));
        assert!(read_record(&store, two).unwrap().is_some());
        let mut older = serde_json::to_value(record("ckpt-1")).unwrap();
        older.as_object_mut().unwrap().remove("base"); // before records named it
        write_whole(
            &store,
            &record_name(two),
            &serde_json::to_vec(&older).unwrap(),
        )
        .unwrap();
        assert!(read_record(&store, two).unwrap().is_some());
        assert!(read_record(&store, one).unwrap().is_none()); // no staging of its own
    }
}
