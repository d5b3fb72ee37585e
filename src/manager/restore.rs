//! Restoring the newest intact checkpoint, on every rank alike.

use std::collections::{BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
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
use crate::sharding::RestoreRanks;
use crate::state_file::read_state;
use crate::store::{self, Store};
use crate::tensor_file::read_tensor_file;
use crate::tensor_read::{plan_tensors, read_planned, TensorPlan, TensorRestore};

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
        let newest_everywhere = self.download_newer()?;
        let ranks = Ranks::of(&self.config);
        let mut retries = 0;
        loop {
            let restored = self.restore_once(&ranks, newest_everywhere);
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

    /// `newest_everywhere`: with a remote tier, the newest checkpoint every
    /// rank has locally or downloaded; nothing newer is tried.
    fn restore_once(
        &mut self,
        ranks: &Ranks,
        newest_everywhere: Option<u64>,
    ) -> Result<Option<PathBuf>> {
        let listed = ranks.is_root().then(|| self.restore_candidates());
        let mut candidates: Vec<PathBuf> = ranks
            .share(listed, "listing")?
            .into_iter()
            .map(|candidate| candidate.path(&self.config.directory))
            .collect();
        if let Some(newest) = newest_everywhere {
            let (newer, kept): (Vec<PathBuf>, Vec<PathBuf>) = candidates
                .into_iter()
                .partition(|c| paths::trailing_number(c).is_some_and(|number| number > newest));
            candidates = kept;
            for skipped in newer.iter().filter(|_| ranks.is_root()) {
                self.warn(&format!(
                    "not restoring '{}': its files are not all here (on every rank) and the \
                     remote has no copy",
                    skipped.display()
                ));
            }
        }
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
        // Every rank's tensor names: a checkpoint's tensor that no rank
        // registers is a mismatch (unless partial), one that another rank
        // registers is not.
        let names: Vec<String> = self.tensors.iter().map(|t| t.name.clone()).collect();
        let registered: BTreeSet<String> = ranks
            .gather_all(&names, "comparing the ranks' tensors")?
            .into_iter()
            .flatten()
            .collect();
        // A version 1 tensor file is read in full anyway: check its CRC32C on
        // the way rather than reading it twice.
        let check_while_reading =
            !self.tensors.is_empty() && verification == Verification::Checksums && !partial;
        let attempt = Attempt {
            ranks,
            saved_at,
            verification,
            whole_file: check_while_reading.then_some(TENSOR_FILE_SUFFIX.as_bytes()),
            tensors: TensorRestore {
                registry: &self.tensors,
                registered_anywhere: &registered,
                partial,
                ranks: RestoreRanks {
                    rank: ranks.rank(),
                    size: ranks.size(),
                    unmatched: self.config.unmatched_rank_local,
                },
            },
        };
        // Set when a damaged tensor file was read into the buffers.
        let mut overwritten_by: Option<PathBuf> = None;
        let mut initialize = false;
        let mut load = |candidate: &Path| -> Result<Integrity> {
            let loaded = self.load(&attempt, candidate, &mut overwritten_by)?;
            initialize = loaded.initialize;
            Ok(loaded.integrity)
        };
        let mut warnings = Vec::new();
        let found = inspect::first_usable(
            &candidates,
            &mut |w| warnings.push(w.to_owned()),
            &mut |candidate| ranks.agree(load(candidate), "verifying the ranks' files"),
        );
        warnings.iter().for_each(|warning| self.warn(warning));
        let overwritten = overwritten_by.map_or(String::new(), |damaged| {
            format!(
                "; the buffers hold the bytes of the damaged checkpoint '{}'",
                damaged.display()
            )
        });
        let found = match found {
            Err(Error::TensorMismatch(message)) if !overwritten.is_empty() => {
                return Err(Error::TensorMismatch(format!("{message}{overwritten}")))
            }
            found => found?,
        };
        let Some((chosen, integrity)) = found else {
            let reason = warnings.first().map_or("", String::as_str);
            return Err(Error::Damaged {
                prefix: latest,
                detail: format!("no checkpoint is intact ({reason}){overwritten}"),
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
        own.push(ranks.shard());
        let restored = self.run_restore_callback(&store, &base, &own);
        ranks.agree(restored, "restoring")?;
        let initialized = match (initialize, self.callbacks.init.as_mut()) {
            (true, Some(init)) => init().map_err(Error::callback("init")),
            _ => Ok(()),
        };
        ranks.agree(
            initialized,
            "initializing rank-local tensors without a saved piece",
        )?;
        if self.config.checkpoint_interval.is_some() {
            self.last_checkpoint_step = Some(self.current_step()?);
        }
        Ok(Some(chosen))
    }

    /// Checks this rank's files of `candidate` and matches its tensors,
    /// agrees with every rank on the outcome, then reads the tensors: a
    /// mismatch on any rank leaves every rank's buffers as they were.
    /// `overwritten_by` is set when damaged bytes were read into buffers.
    fn load(
        &self,
        attempt: &Attempt,
        candidate: &Path,
        overwritten_by: &mut Option<PathBuf>,
    ) -> Result<Loaded> {
        let prepared = attempt.ranks.agree(
            self.match_candidate(attempt, candidate),
            "matching the ranks' tensors",
        )?;
        let Prepared {
            store,
            base,
            integrity,
            crc,
            plan,
        } = prepared;
        let check_crcs = attempt.verification == Verification::Checksums;
        let read = match &plan {
            Some(plan) => read_planned(&*store, &base, plan, check_crcs),
            None if !self.tensors.is_empty() => {
                let mut own = base.clone();
                own.push(attempt.ranks.shard());
                let partial = attempt.tensors.partial;
                read_tensor_file(&*store, &own, &self.tensors, partial, crc)
            }
            None => Ok(()),
        };
        if matches!(read, Err(Error::Damaged { .. })) && (crc.is_some() || plan.is_some()) {
            *overwritten_by = Some(candidate.to_path_buf());
        }
        read?;
        Ok(Loaded {
            integrity,
            initialize: plan.is_some_and(|plan| plan.initialize),
        })
    }

    /// This rank's part of `load` before the ranks agree: its files checked
    /// (those of a tensor table range by range later, as they are read) and
    /// its tensors matched against the table.
    fn match_candidate<'r>(
        &'r self,
        attempt: &Attempt<'r>,
        candidate: &Path,
    ) -> Result<Prepared<'r>> {
        let (store, base) = self.locate(candidate)?;
        let listed_at = attempt.saved_at.get(candidate).copied();
        let registered = attempt.tensors.registered_anywhere;
        let table = integrity::read_manifest(&*store, &base)?
            .filter(|manifest| !manifest.tensors.is_empty() && !registered.is_empty());
        let deferred: Vec<&[u8]> = match &table {
            Some(manifest) => manifest
                .tensors
                .iter()
                .flat_map(|tensor| &tensor.boxes)
                .map(|saved| saved.file.as_bytes())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            None => attempt.whole_file.into_iter().collect(),
        };
        let (integrity, crc) = attempt.ranks.check_own_files(
            &*store,
            &base,
            attempt.verification,
            listed_at,
            &deferred,
        )?;
        let plan = match &table {
            Some(manifest) => Some(plan_tensors(manifest, &attempt.tensors)?),
            None => None,
        };
        Ok(Prepared {
            store,
            base,
            integrity,
            crc,
            plan,
        })
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

/// What a restore's every candidate shares, on this rank.
struct Attempt<'a> {
    ranks: &'a Ranks,
    /// The time the state file records for each checkpoint it lists.
    saved_at: HashMap<PathBuf, f64>,
    verification: Verification,
    /// The suffix of a version 1 tensor file whose CRC32C its reader checks.
    whole_file: Option<&'static [u8]>,
    tensors: TensorRestore<'a>,
}

/// A candidate restored on this rank.
struct Loaded {
    integrity: Integrity,
    /// A rank-local tensor had no piece here: the init callback is to run.
    initialize: bool,
}

/// A candidate whose files this rank checked and whose tensors it matched.
struct Prepared<'r> {
    store: Arc<dyn Store>,
    base: OsString,
    integrity: Integrity,
    /// The recorded CRC32C of a version 1 tensor file, to check as it is read.
    crc: Option<u32>,
    /// What to read from a checkpoint with a tensor table.
    plan: Option<TensorPlan<'r>>,
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
