//! The commit of a file system, where a rename moves a name atomically:
//! every file is written in staging; at the commit, after the commit
//! point, each is renamed to its final name, and the staged state file
//! over the old one.

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};

use super::record::{self, CommitRecord};
use super::{CommitPlan, Sealed, Strategy};
use crate::error::Result;
use crate::layout;
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

    /// The state file and manifest staged, then the commit point.
    fn prepare(
        &self,
        store: &dyn Store,
        base: &OsStr,
        sealed: &Sealed,
        plan: &CommitPlan,
        state_staged: &Path,
    ) -> Result<CommitRecord> {
        let staged = record::stage(store, base, sealed, plan, state_staged)?;
        record::reach_commit_point(store, base, sealed, staged)
    }

    /// Renames into place; the lock kept any other writer out.
    fn apply(
        &self,
        store: &dyn Store,
        base: &OsStr,
        record: &CommitRecord,
        recovering: bool,
    ) -> Result<()> {
        record::move_into_place(store, base, record, recovering)
    }

    /// Nothing outside staging belongs to an uncommitted save.
    fn remove_staging(&self, store: &dyn Store, base: &OsStr, _committed: bool) -> io::Result<()> {
        store.remove_staging(&layout::staging_name(base))
    }
}
