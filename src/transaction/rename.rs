//! The commit of a file system, where a rename moves a name atomically:
//! every file is written in staging, then moved to its final name in one
//! of two ways, chosen per save.
//!
//! A new checkpoint (nothing of its name exists, the state file does not
//! name it, the sweep drops nothing, no subdirectories) is placed before
//! the state file names it, as TensorFlow saves but durably; the rename of
//! the state file is the commit point. Its new state file is written aside
//! inside the staging directory. Five syncs for a one-file save:
//!
//! 1. the staged files, the manifest and the new state file are synced:
//!    their bytes are on disk before any name points at them (N + 2
//!    syncs, every writeback started before the first waits, so that one
//!    journal commit carries them all);
//! 2. the staging directory is renamed to the pending marker
//!    `<base>.ckpt-pending`, then the manifest and the files are renamed out
//!    of it to their final names (manifest first, so that what the marker's
//!    checkpoint owns is known at every instant);
//! 3. the directory is synced: the final names are durable before the
//!    state file can name them (1 sync);
//! 4. the new state file is swapped with the old one (the commit point:
//!    one atomic exchange of two names, or a rename where the file system
//!    cannot swap), and the directory synced: the save is durable when
//!    `commit` returns (1 sync). The marker, holding the old state file,
//!    becomes the writer's spare staging directory, unsynced: the next
//!    save renames it to its staging directory and writes its state file
//!    over the old one. On this project's disk creating a file or a
//!    directory costs as much as an fsync; a rename costs a tenth of it.
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
use crate::store::{Entry, Kind, Store};

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

    /// The spare staging directory when there is one: a rename, where
    /// creating a directory can cost as much as an fsync.
    fn make_staging(&self, store: &dyn Store, staging: &Path) -> io::Result<bool> {
        let spare = Path::new(layout::SPARE_STAGING_NAME);
        if store.kind(spare)? == Some(Kind::Directory) && store.rename(spare, staging).is_ok() {
            return Ok(true);
        }
        store.create_dir(staging).map(|()| false)
    }

    /// Only a regular file: anything else of that name is refused.
    fn is_spare_state_file(&self, staging: &Path, name: &Path, kind: Kind) -> bool {
        kind == Kind::File && name == layout::state_aside_in(staging)
    }

    fn remove_spare(&self, store: &dyn Store) {
        let _ = store.remove_staging(Path::new(layout::SPARE_STAGING_NAME));
    }

    /// The state file and manifest staged, then the commit point: a new
    /// checkpoint placed and named (its state file written aside in
    /// staging), or any other save's record durable.
    fn prepare(
        &self,
        store: &dyn Store,
        base: &OsStr,
        sealed: &Sealed,
        plan: &CommitPlan,
        state_staged: &Path,
    ) -> Result<CommitRecord> {
        record::check_state_file(store)?;
        if is_new_checkpoint(store, base, sealed, plan)? {
            let aside = layout::state_aside_in(&layout::staging_name(base));
            let staged = record::stage(store, base, sealed, plan, &aside)?;
            return place_and_name(store, base, staged);
        }
        let staged = record::stage(store, base, sealed, plan, state_staged)?;
        record::reach_commit_point(store, base, sealed, staged)
    }

    /// Renames into place; the lock kept any other writer out. A placed
    /// checkpoint is in place: its state file's rename is made durable,
    /// then its marker (the staging directory, holding at most the old
    /// state file) becomes the spare for the next save.
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
            return keep_as_spare(store, &marker).map_err(io_at("remove", store, &marker));
        }
        record::move_into_place(store, base, record, recovering)
    }

    /// Nothing outside staging belongs to an uncommitted save. After a
    /// recorded commit, applied, the staging directory holds its record and
    /// at most the spare's old state file: the record goes, and the
    /// directory becomes the spare.
    fn remove_staging(&self, store: &dyn Store, base: &OsStr, committed: bool) -> io::Result<()> {
        let staging = layout::staging_name(base);
        if committed && store.kind(&staging)? == Some(Kind::Directory) {
            let spent = |entry: &Entry| {
                entry.kind == Kind::File
                    && (entry.name == layout::RECORD_NAME || entry.name == STATE_FILE_NAME)
            };
            if store.list(&staging)?.iter().all(spent) {
                store.remove_file(&layout::record_name(base))?;
                return keep_as_spare(store, &staging);
            }
        }
        store.remove_staging(&staging)
    }
}

/// Makes a spent staging directory (or marker) the writer's spare for the
/// next save, or removes it if the spare's name is taken.
fn keep_as_spare(store: &dyn Store, directory: &Path) -> io::Result<()> {
    match store.rename(directory, Path::new(layout::SPARE_STAGING_NAME)) {
        Ok(()) => Ok(()),
        Err(_) => store.remove_staging(directory),
    }
}

fn sync_directory(store: &dyn Store) -> Result<()> {
    store
        .sync_directories(&[PathBuf::new()])
        .map_err(io_at("sync", store, Path::new("")))
}

/// Whether the save is of a checkpoint nothing of which exists: no file it
/// replaces or sweeps, every final name free (the manifest's too), no
/// subdirectory to create, and a state file that does not name it.
fn is_new_checkpoint(
    store: &dyn Store,
    base: &OsStr,
    sealed: &Sealed,
    plan: &CommitPlan,
) -> Result<bool> {
    if !plan.replaced.files.is_empty()
        || !plan.replaced.directories.is_empty()
        || !plan.swept.is_empty()
        || sealed.directories.len() > 1
    {
        return Ok(false);
    }
    for name in sealed
        .files
        .iter()
        .map(|file| file_name(base, file.suffix.as_bytes()))
        .chain([
            layout::manifest_name(base),
            layout::pending_marker_name(base),
        ])
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
fn place_and_name(store: &dyn Store, base: &OsStr, staged: Staged) -> Result<CommitRecord> {
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
    // Swapped, the old state file stays in the marker for the next save
    // to write over: no file created, none freed.
    let named = place(store, base, &marker, &staged.record)
        .and_then(|()| sync_directory(store))
        .and_then(|()| {
            store
                .rename_swapping(&layout::state_aside_in(&marker), state_name)
                .map_err(io_at("write state file", store, state_name))
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
