//! Restoring the newest intact checkpoint, on every rank alike.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::coordination::Ranks;
use super::CheckpointManager;
use crate::config::LogLevel;
use crate::error::{Error, Result};
use crate::inspect;
use crate::integrity::{self, Integrity};
use crate::layout::{manifest_base, TENSOR_FILE_SUFFIX};
use crate::manifest::{ByteString, Verification};
use crate::paths;
use crate::policy;
use crate::state_file::read_state;
use crate::store::{self, Store};
use crate::tensor_file::read_tensor_file;

/// How often a read-only manager re-reads a state file that changed under
/// a restore before it gives up.
const READER_RETRIES: usize = 20;

impl CheckpointManager {
    /// Restores the newest intact checkpoint and returns its prefix: the
    /// latest, or, when it is damaged, the newest older one that verifies
    /// (with a warning). With no checkpoint, runs the init callback (if
    /// any) and returns `None`. `Error::Damaged` when none is intact. A
    /// read-only manager whose writer changed the state file during the
    /// restore reads it again and retries. Across ranks, every rank
    /// restores the same checkpoint, its own files of it.
    pub fn restore_or_initialize(&mut self) -> Result<Option<PathBuf>> {
        self.settle(true)?;
        self.finish_unfinished()?;
        self.download_newer()?;
        let ranks = Ranks::of(&self.config);
        let mut retries = 0;
        loop {
            let restored = self.restore_once(&ranks);
            let may_retry = self.config.read_only
                && retries < READER_RETRIES
                && matches!(&restored, Err(err) if !matches!(err, Error::Coordination { .. }));
            if may_retry {
                let changed = ranks.is_root().then(|| self.state_changed());
                if ranks.share(changed, "reading the state file again")? {
                    retries += 1;
                    self.reload()?;
                    continue;
                }
            }
            return restored;
        }
    }

    /// Whether the state file is no longer the one this manager read.
    fn state_changed(&self) -> Result<bool> {
        Ok(read_state(&*self.store)?.map(|file| file.crc32c) != self.state_crc)
    }

    fn restore_once(&mut self, ranks: &Ranks) -> Result<Option<PathBuf>> {
        let listed = ranks.is_root().then(|| self.restore_candidates());
        let candidates: Vec<PathBuf> = ranks
            .share(listed, "listing")?
            .into_iter()
            .map(|candidate| candidate.path(&self.config.directory))
            .collect();
        let Some(latest) = candidates.first().cloned() else {
            let initialized = match self.callbacks.init.as_mut() {
                Some(init) => init().map_err(Error::callback("init")),
                None => Ok(()),
            };
            return ranks.agree(initialized, "initializing").map(|()| None);
        };
        let saved_at: HashMap<PathBuf, f64> = self
            .retention
            .managed()
            .iter()
            .map(|m| (self.full_path(&m.entry), m.timestamp))
            .collect();
        let verification = self.verification();
        let partial = self.config.partial_restore;
        // The tensor file is read in full anyway: check its CRC32C on the way
        // rather than reading it twice.
        let check_while_reading =
            !self.tensors.is_empty() && verification == Verification::Checksums && !partial;
        let deferred = check_while_reading.then_some(TENSOR_FILE_SUFFIX.as_bytes());
        let shard = ranks.shard();
        // Set when a damaged tensor file was read into the buffers.
        let mut overwritten_by: Option<PathBuf> = None;
        let mut load = |candidate: &Path| -> Result<Integrity> {
            let (store, base) = self.locate(candidate)?;
            let listed_at = saved_at.get(candidate).copied();
            let (integrity, crc) =
                ranks.check_own_files(&*store, &base, verification, listed_at, deferred)?;
            if !self.tensors.is_empty() {
                let mut own = base.clone();
                own.push(&shard);
                let read = read_tensor_file(&*store, &own, &self.tensors, partial, crc);
                if matches!(read, Err(Error::Damaged { .. })) && crc.is_some() {
                    overwritten_by = Some(candidate.to_path_buf());
                }
                read?;
            }
            Ok(integrity)
        };
        let mut warnings = Vec::new();
        let found = inspect::first_usable(
            &candidates,
            &mut |w| warnings.push(w.to_owned()),
            &mut |candidate| ranks.agree(load(candidate), "verifying the ranks' files"),
        );
        warnings.iter().for_each(|warning| self.warn(warning));
        let found = match (found, overwritten_by) {
            (Err(Error::TensorMismatch(message)), Some(damaged)) => {
                return Err(Error::TensorMismatch(format!(
                    "{message}; the buffers hold the bytes of the damaged checkpoint '{}'",
                    damaged.display()
                )))
            }
            (found, _) => found?,
        };
        let Some((chosen, integrity)) = found else {
            let reason = warnings.first().map_or("", String::as_str);
            return Err(Error::Damaged {
                prefix: latest,
                detail: format!("no checkpoint is intact ({reason})"),
            });
        };
        match integrity {
            Integrity::Intact => {}
            Integrity::NoManifest => self.log(
                LogLevel::Info,
                &format!(
                    "'{}' has no manifest; restoring it unverified",
                    chosen.display()
                ),
            ),
            Integrity::ManifestOutdated => self.warn(&format!(
                "'{}' was saved again by a tool that writes no manifest (the state file's time for \
                 it is later than its manifest's); restoring it unverified",
                chosen.display()
            )),
        }
        let (store, base) = self.locate(&chosen)?;
        let mut own = base.clone();
        own.push(&shard);
        let restored = self.run_restore_callback(&store, &base, &own);
        ranks.agree(restored, "restoring")?;
        if self.config.checkpoint_interval.is_some() {
            self.last_checkpoint_step = Some(self.current_step()?);
        }
        Ok(Some(chosen))
    }

    /// Rank 0's order of checkpoints to try: the latest, then the older.
    fn restore_candidates(&self) -> Result<Vec<Candidate>> {
        let Some(latest) = self.latest_checkpoint() else {
            return Ok(Vec::new());
        };
        if self.callbacks.restore.is_none() && self.tensors.is_empty() {
            return Err(Error::invalid(
                "no restore callback is set and no tensor is registered",
            ));
        }
        let order = policy::fallback_order(&latest, &self.checkpoints(), self.unlisted()?);
        Ok(order
            .iter()
            .map(|path| Candidate::of(path, &self.config.directory))
            .collect())
    }

    /// Checkpoints of this name that have a manifest but are not listed
    /// (preserved ones), newest first.
    fn unlisted(&self) -> Result<Vec<PathBuf>> {
        let entries = store::list_root(&*self.store)?;
        let mut numbers: Vec<u64> = entries
            .iter()
            .filter_map(|entry| {
                let base = manifest_base(entry.name.as_bytes())?;
                let number = paths::own_checkpoint_number(
                    OsStr::from_bytes(base),
                    &self.config.checkpoint_name,
                )?;
                // Exactly `<name>-<N>`: not a file of another name.
                (paths::checkpoint_prefix(Path::new(""), &self.config.checkpoint_name, number)
                    .as_os_str()
                    .as_bytes()
                    == base)
                    .then_some(number)
            })
            .collect();
        numbers.sort_unstable_by(|a, b| b.cmp(a));
        Ok(numbers
            .into_iter()
            .map(|number| {
                paths::checkpoint_prefix(
                    &self.config.directory,
                    &self.config.checkpoint_name,
                    number,
                )
            })
            .collect())
    }
    /// Runs the restore callback on the checkpoint `base`'s files named
    /// `<files_of>...` (a rank's shard, or all). From object storage they
    /// are downloaded to the local staging directory first, and removed
    /// after.
    fn run_restore_callback(
        &mut self,
        store: &Arc<dyn Store>,
        base: &OsStr,
        files_of: &OsStr,
    ) -> Result<()> {
        let Some(restore) = self.callbacks.restore.as_mut() else {
            return Ok(());
        };
        let mut files = integrity::owned_files(&**store, base)?.files;
        files.retain(|file| file.as_os_str().as_bytes().starts_with(files_of.as_bytes()));
        let prefix = Path::new(files_of);
        let restored = store
            .fetch_local(&files)
            .map_err(|err| Error::io_at("download", &store.shown(prefix), err))
            .and_then(|()| restore(&store.local_path(prefix)).map_err(Error::callback("restore")));
        let released = store
            .release_local()
            .map_err(|err| Error::io_at("remove local copies of", &store.shown(prefix), err));
        restored.and(released)
    }
}

/// A checkpoint to try, as rank 0 tells the others: by its place in the
/// directory, which other hosts may mount elsewhere, or by its full path
/// when it is not in the directory.
#[derive(Serialize, Deserialize)]
enum Candidate {
    InDirectory(ByteString),
    Elsewhere(ByteString),
}

impl Candidate {
    fn of(path: &Path, directory: &Path) -> Candidate {
        match path.strip_prefix(directory) {
            Ok(inside) => Candidate::InDirectory(ByteString::from_bytes(paths::path_bytes(inside))),
            Err(_) => Candidate::Elsewhere(ByteString::from_bytes(paths::path_bytes(path))),
        }
    }

    fn path(&self, directory: &Path) -> PathBuf {
        match self {
            Candidate::InDirectory(inside) => {
                directory.join(paths::path_from_bytes(inside.as_bytes()))
            }
            Candidate::Elsewhere(path) => paths::path_from_bytes(path.as_bytes()),
        }
    }
}
