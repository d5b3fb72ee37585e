//! Saves and restores across ranks, through the trainer's communicator.
//! Every step is collective: every rank makes the same calls in the same
//! order, and every rank returns the same result.
//!
//! A save: rank 0 decides (intervals, number, time) and makes the staging
//! directory; every rank writes its files, named with its shard
//! (`<name>-<N>.rank-00003-of-00008...`), seals and syncs them; the ranks
//! exchange their statuses. In a shared directory each sends rank 0 its
//! file list and rank 0 commits the manifest of every file and the state
//! file; in node-local directories each rank commits (and sweeps) its own,
//! rank 0 last. Rank 0 tells the others the outcome. Any failure, or a
//! rank that does not take part before the timeout, aborts the save on
//! every rank and rank 0 commits nothing.
//!
//! A restore: rank 0 lists the candidates (the latest, then older ones);
//! for each, every rank verifies its own files, and the first that every
//! rank can restore is restored by all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{CheckpointManager, Decided, Request};
use crate::communicator::{broadcast_bytes, CommError, Communicator};
use crate::error::{Error, ErrorKind, Result};
use crate::integrity;
use crate::layout::shard_infix;
use crate::manifest::{Annotations, ByteString};
use crate::paths;
use crate::policy;
use crate::tensor_file::{read_tensor_file, write_tensor_file};
use crate::transaction::{Sealed, Transaction};

/// A failure as one rank tells the others.
#[derive(Debug, Serialize, Deserialize)]
struct Report {
    rank: u32,
    kind: ErrorKind,
    message: String,
}

impl Report {
    fn of(rank: u32, err: &Error) -> Self {
        match err {
            // Already a rank's failure: pass it on as it is.
            Error::Rank {
                rank,
                kind,
                message,
            } => Report {
                rank: *rank,
                kind: *kind,
                message: message.clone(),
            },
            err => Report {
                rank,
                kind: err.kind(),
                message: err.to_string(),
            },
        }
    }

    fn into_error(self) -> Error {
        Error::Rank {
            rank: self.rank,
            kind: self.kind,
            message: self.message,
        }
    }
}

/// Rank 0's decision on a save, which every rank follows.
#[derive(Debug, Serialize, Deserialize)]
enum Decision {
    Skip,
    Save(Plan),
    Failed(Report),
}

/// What every rank records of a save rank 0 decided: its time is read
/// when rank 0 decides, so that all ranks record the same.
#[derive(Debug, Serialize, Deserialize)]
struct Plan {
    number: u64,
    counter: u64,
    step: Option<i64>,
    annotations: Annotations,
    saved_at: f64,
}

/// Rank 0's answer that every rank takes.
#[derive(Debug, Serialize, Deserialize)]
enum Outcome<T> {
    Done(T),
    Failed(Report),
}

/// A collective step that did not complete, as `rank` saw it: which rank
/// is missing, no rank can tell.
fn lost(rank: u32, step: &str, err: CommError) -> Error {
    Error::Coordination {
        timed_out: err == CommError::Timeout,
        message: format!("{step}: {err} (seen from rank {rank})"),
    }
}

/// Rank `root`'s value, on every rank.
fn share<T: Serialize + DeserializeOwned>(
    communicator: &dyn Communicator,
    value: Option<&T>,
    root: u32,
    step: &str,
    timeout: std::time::Duration,
) -> Result<T> {
    let rank = communicator.rank();
    let mut bytes = value
        .map(|v| serde_json::to_vec(v).expect("coordination messages serialise"))
        .unwrap_or_default();
    broadcast_bytes(communicator, &mut bytes, root, timeout)
        .map_err(|err| lost(rank, step, err))?;
    serde_json::from_slice(&bytes).map_err(|err| Error::Rank {
        rank: root,
        kind: ErrorKind::Io,
        message: format!("{step}: an unreadable message ({err})"),
    })
}

/// Every rank's `local` result becomes one: `Ok` if every rank succeeded,
/// else the failure of the first rank that failed, on every rank.
fn agree<T>(
    communicator: &dyn Communicator,
    local: &Result<T>,
    step: &str,
    timeout: std::time::Duration,
) -> Result<()> {
    let rank = communicator.rank();
    let succeeded = [u8::from(local.is_ok())];
    let all = communicator
        .all_gather(&succeeded, timeout)
        .map_err(|err| lost(rank, step, err))?;
    let Some(failed) = all.iter().position(|status| status[0] == 0) else {
        return Ok(());
    };
    let failed = failed as u32;
    let report = local.as_ref().err().map(|err| Report::of(rank, err));
    let report: Report = share(
        communicator,
        report.as_ref().filter(|_| rank == failed),
        failed,
        step,
        timeout,
    )?;
    Err(report.into_error())
}

impl CheckpointManager {
    /// Opening across ranks. Shared directory: rank 0 takes it (its lock,
    /// and recovery, which no rank's save can race: the others wait here)
    /// and every rank returns rank 0's outcome. Node-local: every rank
    /// takes its own, and all fail if one does.
    pub(super) fn open_across_ranks(&mut self, communicator: &dyn Communicator) -> Result<()> {
        let timeout = self.config.coordination_timeout;
        if self.config.node_local {
            let taken = self.take_directory();
            return agree(communicator, &taken, "opening", timeout);
        }
        let opened = (communicator.rank() == 0).then(|| match self.take_directory() {
            Ok(()) => Outcome::Done(()),
            Err(err) => Outcome::Failed(Report::of(0, &err)),
        });
        match share(communicator, opened.as_ref(), 0, "opening", timeout)? {
            Outcome::Done(()) => Ok(()),
            Outcome::Failed(report) => Err(report.into_error()),
        }
    }

    /// `save_with` across ranks (see the module's comment). A save that
    /// fails leaves every rank's save request standing.
    pub(super) fn save_across_ranks(
        &mut self,
        communicator: &dyn Communicator,
        args: &crate::SaveArgs,
    ) -> Result<Option<PathBuf>> {
        let mut claim = None;
        let saved = self.save_with_ranks(communicator, args, &mut claim);
        if let (Err(_), Some(claim)) = (&saved, &claim) {
            self.restore_request(claim);
        }
        saved
    }

    fn save_with_ranks(
        &mut self,
        communicator: &dyn Communicator,
        args: &crate::SaveArgs,
        claim: &mut Option<Request>,
    ) -> Result<Option<PathBuf>> {
        let timeout = self.config.coordination_timeout;
        let rank = communicator.rank();
        let shard = shard_infix(rank, communicator.size());
        let mut primary = None;
        let decision = (rank == 0).then(|| match self.decide_for_ranks(args, &shard) {
            Ok(None) => Decision::Skip,
            Ok(Some((decided, transaction, plan))) => {
                primary = Some((decided, transaction));
                Decision::Save(plan)
            }
            Err(err) => Decision::Failed(Report::of(0, &err)),
        });
        if let Some((decided, _)) = &primary {
            *claim = Some(decided.pending.request.clone());
        }
        let decision = share(
            communicator,
            decision.as_ref(),
            0,
            "deciding the save",
            timeout,
        );
        let plan = match decision {
            Ok(Decision::Save(plan)) => plan,
            Ok(Decision::Skip) => return Ok(None),
            Ok(Decision::Failed(report)) => return Err(report.into_error()),
            Err(err) => {
                if let Some((_, transaction)) = primary {
                    transaction.abort();
                }
                return Err(err);
            }
        };
        let (decided, transaction) = match primary {
            Some(primary) => (primary.0, Ok(primary.1)),
            None => {
                let request = self.claim_request();
                *claim = Some(request.clone());
                let annotations = plan.annotations.clone();
                let decided =
                    self.decided(plan.number, plan.counter, plan.step, annotations, request);
                let base = decided.job.base.clone();
                let transaction = if self.config.node_local {
                    Transaction::begin_shard(self.store.clone(), &base, shard.as_ref())
                } else {
                    // Rank 0 made the staging directory before deciding.
                    Ok(Transaction::join_shard(
                        self.store.clone(),
                        &base,
                        shard.as_ref(),
                    ))
                };
                (decided, transaction)
            }
        };
        let prefix = decided.prefix.clone();
        let written = transaction.and_then(|transaction| {
            match self.write_shard(&transaction, plan.number, &decided.tensor_metadata) {
                Ok(sealed) => Ok((transaction, sealed)),
                Err(err) => {
                    transaction.abort();
                    Err(err)
                }
            }
        });
        // A failure here is every rank's, as agreed: no outcome to share.
        let agreed = agree(communicator, &written, "writing the ranks' files", timeout);
        let (transaction, sealed) = match (agreed, written) {
            (Ok(()), Ok(written)) => written,
            (Err(err), Ok((transaction, _))) => {
                transaction.abort();
                return Err(err);
            }
            (agreed, Err(err)) => return Err(agreed.err().unwrap_or(err)),
        };
        let committed = self.commit_across_ranks(communicator, decided, transaction, sealed, &plan);
        if let Err(err @ Error::Coordination { .. }) = committed {
            // The ranks no longer hear each other.
            return Err(err);
        }
        let outcome = match &committed {
            Ok(()) => Outcome::Done(()),
            Err(err) => Outcome::Failed(Report::of(rank, err)),
        };
        let outcome = share(
            communicator,
            Some(&outcome).filter(|_| rank == 0),
            0,
            "committing (rank 0 may have committed it; the next restore tells)",
            timeout,
        )?;
        match outcome {
            Outcome::Failed(report) => Err(report.into_error()),
            Outcome::Done(()) => {
                if rank != 0 && !self.config.node_local {
                    // Rank 0 committed this directory's state.
                    self.reload()?;
                    self.save_counter = self.save_counter.max(plan.counter);
                    self.last_checkpoint_step = plan.step;
                }
                Ok(Some(prefix))
            }
        }
    }

    /// Rank 0's decision, with its time, and the staging directory (the
    /// others write to it in a shared directory).
    fn decide_for_ranks(
        &mut self,
        args: &crate::SaveArgs,
        shard: &str,
    ) -> Result<Option<(Decided, Transaction, Plan)>> {
        let Some(decided) = self.decide(args)? else {
            return Ok(None);
        };
        let begun = self.now().and_then(|saved_at| {
            let transaction =
                Transaction::begin_shard(self.store.clone(), &decided.job.base, shard.as_ref())?;
            Ok((saved_at, transaction))
        });
        let (saved_at, transaction) = match begun {
            Ok(begun) => begun,
            Err(err) => {
                self.restore_request(&decided.pending.request);
                return Err(err);
            }
        };
        let plan = Plan {
            number: decided.job.number,
            counter: decided.pending.counter,
            step: decided.pending.step,
            annotations: decided.job.annotations.clone(),
            saved_at,
        };
        Ok(Some((decided, transaction, plan)))
    }

    /// This rank's write phase: the prepare and save callbacks and the
    /// tensors, under its shard's prefix; sealed and synced.
    fn write_shard(
        &mut self,
        transaction: &Transaction,
        number: u64,
        tensor_metadata: &BTreeMap<String, String>,
    ) -> Result<Sealed> {
        self.prepare(number)?;
        if let Some(save) = self.callbacks.save.as_mut() {
            save(&transaction.prefix(), number).map_err(Error::callback("save"))?;
        }
        if !self.tensors.is_empty() {
            write_tensor_file(transaction, &self.tensors, tensor_metadata)?;
        }
        let sealed = transaction.seal()?;
        transaction.sync_shard(&sealed)?;
        Ok(sealed)
    }

    /// After every rank wrote its files. Shared directory: each rank sends
    /// rank 0 its file list, and rank 0 commits one manifest of them all.
    /// Node-local: the other ranks commit their own directories first;
    /// rank 0 commits last, and restores follow rank 0's state. A rank that
    /// committed a checkpoint rank 0 did not has it replaced by the next
    /// save of that number.
    fn commit_across_ranks(
        &mut self,
        communicator: &dyn Communicator,
        decided: Decided,
        transaction: Transaction,
        sealed: Sealed,
        plan: &Plan,
    ) -> Result<()> {
        let rank = communicator.rank();
        let timeout = self.config.coordination_timeout;
        if self.config.node_local {
            const STEP: &str = "committing on the other ranks";
            if rank != 0 {
                let own = self.commit_for_ranks(decided, transaction, sealed, &[], plan.saved_at);
                return agree(communicator, &own, STEP, timeout);
            }
            return match agree(communicator, &Ok(()), STEP, timeout) {
                Ok(()) => self.commit_for_ranks(decided, transaction, sealed, &[], plan.saved_at),
                Err(err) => {
                    transaction.abort();
                    Err(err)
                }
            };
        }
        let fragments = self.gather_fragments(communicator, &sealed, timeout);
        match (rank, fragments) {
            (0, Ok(fragments)) => {
                self.commit_for_ranks(decided, transaction, sealed, &fragments, plan.saved_at)
            }
            (0, Err(err)) => {
                transaction.abort();
                Err(err)
            }
            // Rank 0 commits this rank's files.
            (_, fragments) => fragments.map(drop),
        }
    }

    /// Every other rank's file list, on rank 0 (each rank sends its own).
    fn gather_fragments(
        &self,
        communicator: &dyn Communicator,
        sealed: &Sealed,
        timeout: std::time::Duration,
    ) -> Result<Vec<Vec<u8>>> {
        let rank = communicator.rank();
        let mut fragments = Vec::new();
        for sender in 1..communicator.size() {
            let mut bytes = if rank == sender {
                sealed.to_fragment()
            } else {
                Vec::new()
            };
            broadcast_bytes(communicator, &mut bytes, sender, timeout)
                .map_err(|err| lost(rank, "sending the file lists", err))?;
            if rank == 0 {
                fragments.push(bytes);
            }
        }
        Ok(fragments)
    }

    /// Commits this directory's part: every rank's files on rank 0 of a
    /// shared directory, the rank's own in a node-local one.
    fn commit_for_ranks(
        &mut self,
        decided: Decided,
        transaction: Transaction,
        mut sealed: Sealed,
        fragments: &[Vec<u8>],
        saved_at: f64,
    ) -> Result<()> {
        for fragment in fragments {
            if let Err(err) = sealed.add_fragment(fragment) {
                transaction.abort();
                return Err(err);
            }
        }
        let (mut warnings, mut unfinished) = (Vec::new(), false);
        let result = decided.job.commit_sealed(
            transaction,
            sealed,
            saved_at,
            self.callbacks.delete.as_mut(),
            &mut warnings,
            &mut unfinished,
        );
        let report = super::JobReport {
            result,
            warnings,
            unfinished,
        };
        self.apply(decided.pending, report)
    }

    /// `restore_or_initialize` across ranks (see the module's comment).
    pub(super) fn restore_across_ranks(
        &mut self,
        communicator: &dyn Communicator,
    ) -> Result<Option<PathBuf>> {
        let timeout = self.config.coordination_timeout;
        let (rank, size) = (communicator.rank(), communicator.size());
        let shard = shard_infix(rank, size);
        let candidates = (rank == 0).then(|| match self.restore_candidates() {
            Ok(candidates) => Outcome::Done(candidates),
            Err(err) => Outcome::Failed(Report::of(0, &err)),
        });
        let candidates = match share(communicator, candidates.as_ref(), 0, "listing", timeout)? {
            Outcome::Done(candidates) => candidates,
            Outcome::Failed(report) => return Err(report.into_error()),
        };
        if candidates.is_empty() {
            let initialized = match self.callbacks.init.as_mut() {
                Some(init) => init().map_err(Error::callback("init")),
                None => Ok(()),
            };
            agree(communicator, &initialized, "initializing", timeout)?;
            return Ok(None);
        }
        let level = self.verification();
        for candidate in &candidates {
            let candidate = self.full_path(&paths::path_from_bytes(candidate.as_bytes()));
            let verified = self.locate(&candidate).and_then(|(store, base)| {
                integrity::verify_shard(&*store, &base, shard.as_bytes(), level)
            });
            match agree(
                communicator,
                &verified,
                "verifying the ranks' files",
                timeout,
            ) {
                Ok(()) => {
                    let restored = self.restore_shard(&candidate, &shard);
                    agree(communicator, &restored, "restoring", timeout)?;
                    if self.config.checkpoint_interval.is_some() {
                        self.last_checkpoint_step = Some(self.current_step()?);
                    }
                    return Ok(Some(candidate));
                }
                // The ranks no longer agree on anything: stop.
                Err(err @ Error::Coordination { .. }) => return Err(err),
                Err(err) => self.warn(&format!(
                    "not restoring '{}' ({err}); trying an older checkpoint",
                    candidate.display()
                )),
            }
        }
        Err(Error::Damaged {
            prefix: self.full_path(&paths::path_from_bytes(candidates[0].as_bytes())),
            detail: "no checkpoint is intact on every rank".into(),
        })
    }

    /// Rank 0's order of checkpoints to try: the latest, then the older.
    fn restore_candidates(&mut self) -> Result<Vec<ByteString>> {
        let Some(latest) = self.latest_checkpoint() else {
            return Ok(Vec::new());
        };
        if self.callbacks.restore.is_none() && self.tensors.is_empty() {
            return Err(Error::invalid(
                "no restore callback is set and no tensor is registered",
            ));
        }
        let order = policy::fallback_order(&latest, &self.checkpoints(), self.unlisted()?);
        // Relative to the directory, which other hosts may mount elsewhere.
        Ok(order
            .iter()
            .map(|path| {
                let entry = self.entry_of(path);
                ByteString::from_bytes(paths::path_bytes(&entry))
            })
            .collect())
    }

    /// Reads this rank's tensors and runs its restore callback.
    fn restore_shard(&mut self, candidate: &Path, shard: &str) -> Result<()> {
        let (store, base) = self.locate(candidate)?;
        let mut shard_base = base.clone();
        shard_base.push(shard);
        if !self.tensors.is_empty() {
            let partial = self.config.partial_restore;
            read_tensor_file(&*store, &shard_base, &self.tensors, partial, None)?;
        }
        self.run_restore_callback(&store, &base, &shard_base)
    }
}
