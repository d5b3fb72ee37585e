//! The commit of a file system, where a rename moves a name atomically:
//! every file is written in staging, then moved to its final name in one
//! of two ways, chosen per save.
//!
//! A new checkpoint (nothing of its name exists, the state file does not
//! name it, the sweep drops nothing, no subdirectories) is placed before
//! the state file names it, as TensorFlow saves but durably; the rename of
//! the state file is the commit point. Five syncs for a one-file save:
//!
//! 1. the staged files, the manifest and the new state file (written
//!    aside) are synced: their bytes are on disk before any name points at
//!    them (N + 2 syncs);
//! 2. the staging directory is renamed to the pending marker
//!    `<base>.ckpt-pending`, then the manifest and the files are renamed out
//!    of it to their final names (manifest first, so that what the marker's
//!    checkpoint owns is known at every instant);
//! 3. the directory is synced: the final names are durable before the
//!    state file can name them (1 sync);
//! 4. the state file is renamed over the old one (the commit point), and
//!    the directory synced: the save is durable when `commit` returns
//!    (1 sync). The marker, now empty, goes unsynced: if it outlives a
//!    power cut, the next open removes it.
//!
//! Recovery resolves the marker: a checkpoint the state file names keeps
//! its files, one it does not name loses what it owns (its manifest lists
//! it, as the manifest is placed first), and the marker goes with what it
//! still holds. Under a kill every step happens in
//! order, so nothing is left. After a power cut the state file never names
//! a checkpoint whose files are not durable (step 3 precedes step 4);
//! what no sync orders is the marker against the renames of step 2: a file
//! system that may persist a later rename before an earlier one in the
//! same directory (POSIX allows it; ext4 and XFS journal them in order) can
//! leave, after a power cut during step 2 or 3, placed files of an
//! uncommitted save without their marker: unnamed files, never a wrong
//! state file. Closing that window would cost a sixth sync.
//!
//! Any other save (a number saved again replaces files, a sweep deletes
//! some, a commit that must be rolled forward as a whole) writes a commit
//! record: the staged files, manifest and state file are synced, then the
//! record, then the staging directory and the directory (the commit point:
//! the record is durable and can be found); the files are renamed into
//! place, the state file last, and the directory synced before the record
//! goes (seven syncs for one file, eight with a sweep's deletions).

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};

use super::record::{self, io_at, CommitRecord, Staged};
use super::{CommitPlan, Sealed, Strategy};
use crate::error::{Error, Result};
use crate::integrity;
use crate::layout::{self, file_name, STATE_FILE_NAME};
use crate::store::Store;

#[derive(Debug)]
pub(super) struct RenameCommit;

impl Strategy for RenameCommit {
    /// Every file is written in staging.
    fn write_target(&self, _: &dyn Store, _: &Path, _: &Path, staged: PathBuf) -> Result<PathBuf> {
        Ok(staged)
    }

    fn found_in_staging<'a>(
        &self,
        _: &OsStr,
        suffix: &'a [u8],
        name: PathBuf,
    ) -> (&'a [u8], PathBuf) {
        (suffix, name)
    }

    /// The state file and manifest staged, then the commit point: a new
    /// checkpoint placed and named, or any other save's record durable.
    fn prepare(
        &self,
        store: &dyn Store,
        base: &OsStr,
        sealed: &Sealed,
        plan: &CommitPlan,
        state_staged: &Path,
    ) -> Result<CommitRecord> {
        let staged = record::stage(store, base, sealed, plan, state_staged)?;
        if is_new_checkpoint(store, base, sealed, plan, &staged)? {
            return place_and_name(store, base, staged, state_staged);
        }
        record::reach_commit_point(store, base, sealed, staged)
    }

    /// Renames into place; the lock kept any other writer out. A placed
    /// checkpoint is in place: its state file's rename is made durable,
    /// then its marker (the staging directory, empty) goes.
    fn apply(
        &self,
        store: &dyn Store,
        base: &OsStr,
        record: &CommitRecord,
        recovering: bool,
    ) -> Result<()> {
        if record.placed {
            sync_directory(store)?;
            let marker = layout::pending_marker_name(base);
            return store
                .remove_empty_dir(&marker)
                .map_err(io_at("remove", store, &marker));
        }
        record::move_into_place(store, base, record, recovering)
    }

    /// Nothing outside staging belongs to an uncommitted save.
    fn remove_staging(&self, store: &dyn Store, base: &OsStr, _committed: bool) -> io::Result<()> {
        store.remove_staging(&layout::staging_name(base))
    }
}

fn sync_directory(store: &dyn Store) -> Result<()> {
    store
        .sync_directories(&[PathBuf::new()])
        .map_err(io_at("sync", store, Path::new("")))
}

/// Whether the save is of a checkpoint nothing of which exists: no file it
/// replaces or sweeps, every final name free, no subdirectory to create,
/// and a state file that does not name it.
fn is_new_checkpoint(
    store: &dyn Store,
    base: &OsStr,
    sealed: &Sealed,
    plan: &CommitPlan,
    staged: &Staged,
) -> Result<bool> {
    if !plan.replaced.files.is_empty()
        || !plan.replaced.directories.is_empty()
        || !plan.swept.is_empty()
        || sealed.directories.len() > 1
    {
        return Ok(false);
    }
    for name in staged
        .record
        .moves
        .iter()
        .map(|suffix| file_name(base, suffix.as_bytes()))
        .chain([layout::pending_marker_name(base)])
    {
        if store
            .kind(&name)
            .map_err(io_at("inspect", store, &name))?
            .is_some()
        {
            return Ok(false);
        }
    }
    Ok(!record::state_names(store, base)?)
}

/// Steps 1 to 4 of the module's comment, up to the commit point. Before
/// it, a failure deletes what was placed, then the marker.
fn place_and_name(
    store: &dyn Store,
    base: &OsStr,
    staged: Staged,
    state_staged: &Path,
) -> Result<CommitRecord> {
    let staging = layout::staging_name(base);
    store
        .sync_files(&staged.files)
        .map_err(io_at("sync", store, &staging))?;
    // The staging directory becomes the marker: a rename, cheaper than
    // creating a file, and one directory fewer to remove.
    let marker = layout::pending_marker_name(base);
    store
        .rename(&staging, &marker)
        .map_err(io_at("mark", store, &marker))?;
    let state_name = Path::new(STATE_FILE_NAME);
    let named = place(store, base, &marker, &staged.record)
        .and_then(|()| sync_directory(store))
        .and_then(|()| {
            store.rename(state_staged, state_name).map_err(io_at(
                "write state file",
                store,
                state_name,
            ))
        });
    if let Err(err) = named {
        return Err(match unplace(store, base, &marker) {
            Ok(()) => err,
            Err(undo) => Error::io(
                format!("{err}; and undo the placed files ({undo}): the next open deletes them"),
                io::Error::other(undo.to_string()),
            ),
        });
    }
    let mut record = staged.record;
    record.placed = true;
    Ok(record)
}

/// Renames every staged file from `marked` (the staging directory under
/// its marker's name) to its final name, the manifest (last in `moves`)
/// first.
fn place(store: &dyn Store, base: &OsStr, marked: &Path, record: &CommitRecord) -> Result<()> {
    let (manifest, files) = record.moves.split_last().expect("moves name the manifest");
    for suffix in std::iter::once(manifest).chain(files) {
        let to = file_name(base, suffix.as_bytes());
        store
            .rename(&marked.join(&to), &to)
            .map_err(io_at("move into place", store, &to))?;
    }
    Ok(())
}

/// Before the commit point: deletes what the save placed (its manifest
/// names it), then the marker with what was not placed.
fn unplace(store: &dyn Store, base: &OsStr, marker: &Path) -> Result<()> {
    integrity::delete_owned(store, &integrity::owned_files(store, base)?)?;
    store
        .remove_staging(marker)
        .map_err(io_at("remove", store, marker))
}
