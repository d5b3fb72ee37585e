//! The commit of object storage, where a rename is a copy the server makes
//! and there is no lock. A new file goes to its final name at once when
//! nothing is there (saving that copy), claimed first by a marker in
//! staging so that an abort or recovery can delete it again; a file that
//! replaces another waits in staging for the commit. Before the commit
//! point the state file must still be the one this writer read; after the
//! moves, this save's files must still be there (another writer's
//! recovery may have taken them for an abandoned upload).

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};

use super::record::{self, io_at, write_whole, CommitRecord};
use super::{CommitPlan, Sealed, Strategy};
use crate::error::{Error, Result};
use crate::layout::{self, file_name, STATE_FILE_NAME};
use crate::store::{Kind, Store};

#[derive(Debug)]
pub(super) struct EarlyPlacement;

impl Strategy for EarlyPlacement {
    /// At the final name when nothing is there yet, else in staging.
    fn write_target(
        &self,
        store: &dyn Store,
        staging: &Path,
        final_name: &Path,
        staged: PathBuf,
    ) -> Result<PathBuf> {
        Ok(match place_early(store, staging, final_name)? {
            true => final_name.to_path_buf(),
            false => staged,
        })
    }

    /// A marker stands for the file placed early, read at its final name.
    fn found_in_staging<'a>(
        &self,
        base: &OsStr,
        suffix: &'a [u8],
        name: PathBuf,
    ) -> (&'a [u8], PathBuf) {
        match layout::suffix_of_marker(suffix) {
            Some(placed) => (placed, file_name(base, placed)),
            None => (suffix, name),
        }
    }

    fn prepare(
        &self,
        store: &dyn Store,
        base: &OsStr,
        sealed: &Sealed,
        plan: &CommitPlan,
        state_staged: &Path,
    ) -> Result<CommitRecord> {
        // Another writer's commit since this one read the state: stop before
        // the commit point, having touched none of its files.
        store
            .check_unchanged(Path::new(STATE_FILE_NAME))
            .map_err(io_at("commit to", store, Path::new("")))?;
        record::check_state_file(store)?;
        let staged = record::stage(store, base, sealed, plan, state_staged)?;
        place_staged_early(store, base, sealed)?;
        record::reach_commit_point(store, base, sealed, staged)
    }

    fn apply(
        &self,
        store: &dyn Store,
        base: &OsStr,
        record: &CommitRecord,
        recovering: bool,
    ) -> Result<()> {
        record::move_into_place(store, base, record, recovering)?;
        if recovering {
            return Ok(());
        }
        // Without a lock, another writer's open may have removed this
        // save's files as an abandoned upload: never name them.
        for suffix in &record.moves {
            let name = file_name(base, suffix.as_bytes());
            if store.kind(&name).map_err(io_at("inspect", store, &name))? != Some(Kind::File) {
                return Err(Error::Conflict(format!(
                    "'{}' was removed while this save ran, by another writer's recovery",
                    store.shown(&name).display()
                )));
            }
        }
        Ok(())
    }

    /// The markers go first, and the files they claim with them unless
    /// `committed`: what remains of staging, if removing it is cut short,
    /// must not make recovery delete committed files.
    fn remove_staging(&self, store: &dyn Store, base: &OsStr, committed: bool) -> io::Result<()> {
        let staging = layout::staging_name(base);
        let mut pending = vec![staging.clone()];
        while let Some(directory) = pending.pop() {
            for entry in store.list(&directory)? {
                let name = directory.join(&entry.name);
                if entry.kind == Kind::Directory {
                    pending.push(name);
                    continue;
                }
                let Some(placed) = layout::placed_early(&staging, &name) else {
                    continue;
                };
                if !committed {
                    store.remove_file(&placed)?;
                }
                store.remove_file(&name)?;
            }
        }
        store.remove_staging(&staging)
    }
}

/// Claims `final_name` for a file placed there before the commit point,
/// when nothing is there yet: its marker first.
fn place_early(store: &dyn Store, staging: &Path, final_name: &Path) -> Result<bool> {
    let taken = store
        .kind(final_name)
        .map_err(io_at("inspect", store, final_name))?;
    if taken.is_some() {
        return Ok(false);
    }
    write_whole(store, &layout::early_marker(staging, final_name), b"")?;
    Ok(true)
}

/// Before the commit point: every staged file with nothing at its final
/// name goes there now (a callback's local file is uploaded straight
/// there). The others are moved at the commit, by a copy the store may
/// limit in size: a file over it fails here.
fn place_staged_early(store: &dyn Store, base: &OsStr, sealed: &Sealed) -> Result<()> {
    let staging = layout::staging_name(base);
    for file in &sealed.files {
        let final_name = file_name(base, file.suffix.as_bytes());
        let staged = staging.join(&final_name);
        let in_staging = store
            .kind(&staged)
            .map_err(io_at("inspect", store, &staged))?;
        if in_staging != Some(Kind::File) {
            continue;
        }
        if place_early(store, &staging, &final_name)? {
            store
                .rename(&staged, &final_name)
                .map_err(io_at("upload", store, &final_name))?;
            continue;
        }
        if let Some(limit) = store.capabilities().largest_copy.filter(|l| file.size > *l) {
            return Err(Error::io_at(
                "move into place",
                &store.shown(&final_name),
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "it replaces a file of the same name, and at {} bytes it is over \
                         the {limit}-byte limit of a server-side copy",
                        file.size
                    ),
                ),
            ));
        }
    }
    Ok(())
}
