//! The processes a save or restore runs across: one, or the trainer's
//! ranks through its communicator. The manager runs every save and restore
//! as the steps below, and one process is the 1-rank case of each: its
//! collectives do nothing and its files carry no shard name. This is the
//! only module that knows how many ranks there are.
//!
//! A save across ranks: rank 0 decides (intervals, number) and every rank
//! follows; every rank writes its files, named with its shard
//! (`<name>-<N>.rank-00003-of-00008...`), seals and syncs them; the ranks
//! exchange their statuses. In a shared directory each sends rank 0 its
//! file list and rank 0 commits the manifest of every file and the state
//! file; in node-local directories each rank commits (and sweeps) its own,
//! rank 0 last. Rank 0 tells the others the outcome. Any failure, or a
//! rank that does not take part before the timeout, aborts the save on
//! every rank and rank 0 commits nothing.
//!
//! A restore: rank 0 lists the candidates (the latest, then older ones);
//! for each, every rank checks its own files, and the first that every
//! rank can restore is restored by all.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::communicator::{broadcast_bytes, CommError, Communicator};
use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::integrity::{self, Integrity};
use crate::layout::shard_infix;
use crate::manifest::{Manifest, Verification};
use crate::store::Store;
use crate::transaction::{Sealed, Transaction};

/// The ranks of one save or restore. Cheap to make: the manager makes one
/// per call.
#[derive(Clone)]
pub(crate) struct Ranks {
    /// `None`: one process.
    group: Option<Group>,
}

#[derive(Clone)]
struct Group {
    communicator: Arc<dyn Communicator>,
    timeout: Duration,
    /// Each rank has its own directory.
    node_local: bool,
}

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
                ..
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
            own: None,
        }
    }
}

/// `shared`, the failure every rank returns, keeping beneath it this rank's
/// own error when the failure is this rank's: its callback's attachment
/// then reaches its caller.
fn keep_own(shared: Error, mine: Option<Error>, rank: u32) -> Error {
    match (shared, mine) {
        (
            Error::Rank {
                rank: failed,
                kind,
                message,
                own: None,
            },
            Some(mine),
        ) if failed == rank => {
            let own = match mine {
                Error::Rank { own: Some(own), .. } => own,
                mine => Box::new(mine),
            };
            Error::Rank {
                rank,
                kind,
                message,
                own: Some(own),
            }
        }
        (shared, _) => shared,
    }
}

/// Rank 0's answer that every rank takes.
#[derive(Debug, Serialize, Deserialize)]
enum Outcome<T> {
    Done(T),
    Failed(Report),
}

/// What a save asks for that every rank must ask alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Asked {
    checkpoint_number: Option<u64>,
    check_interval: bool,
}

impl Asked {
    const LENGTH: usize = 10;

    fn to_bytes(self) -> [u8; Self::LENGTH] {
        let mut bytes = [0; Self::LENGTH];
        bytes[0] = u8::from(self.checkpoint_number.is_some());
        bytes[1..9].copy_from_slice(&self.checkpoint_number.unwrap_or(0).to_le_bytes());
        bytes[9] = u8::from(self.check_interval);
        bytes
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; Self::LENGTH] = bytes.try_into().ok()?;
        let number = u64::from_le_bytes(bytes[1..9].try_into().expect("8 bytes"));
        Some(Asked {
            checkpoint_number: (bytes[0] != 0).then_some(number),
            check_interval: bytes[9] != 0,
        })
    }
}

impl std::fmt::Display for Asked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.checkpoint_number {
            Some(number) => write!(f, "checkpoint_number {number}")?,
            None => write!(f, "no checkpoint_number")?,
        }
        write!(f, ", check_interval {}", self.check_interval)
    }
}

/// A collective step that did not complete, as `rank` saw it: which rank
/// is missing, no rank can tell.
fn lost(rank: u32, step: &str, err: CommError) -> Error {
    Error::Coordination {
        timed_out: err == CommError::Timeout,
        message: format!("{step}: {err} (seen from rank {rank})"),
    }
}

/// What a rank's upload thread does with the remote tier.
pub(crate) enum UploadRole {
    /// Copies its committed checkpoints to the remote and commits them
    /// there, with the pieces the node-local ranks `others` (their shards)
    /// left in the remote: one process, and rank 0.
    Commit { others: Vec<OsString> },
    /// Leaves its pieces (files named with `shard`) in the remote for
    /// rank 0 to commit: a node-local rank other than 0.
    Contribute { shard: OsString },
}

impl Ranks {
    /// The ranks of the configuration's communicator; one process without.
    pub fn of(config: &Config) -> Ranks {
        Ranks {
            group: config.communicator.as_ref().map(|shared| Group {
                communicator: Arc::clone(&shared.0),
                timeout: config.coordination_timeout,
                node_local: config.node_local,
            }),
        }
    }

    /// The one process of a background save.
    pub fn one() -> Ranks {
        Ranks { group: None }
    }

    pub fn rank(&self) -> u32 {
        self.group
            .as_ref()
            .map_or(0, |group| group.communicator.rank())
    }

    /// Rank 0, which decides and (in a shared directory) commits.
    pub fn is_root(&self) -> bool {
        self.rank() == 0
    }

    /// The part of this rank's file names after the checkpoint's base:
    /// empty for one process.
    pub fn shard(&self) -> OsString {
        match &self.group {
            None => OsString::new(),
            Some(group) => shard_infix(group.communicator.rank(), group.communicator.size()).into(),
        }
    }

    /// A background save runs on one process only.
    pub fn allow_background(&self) -> Result<()> {
        match self.group {
            None => Ok(()),
            Some(_) => Err(Error::invalid(
                "a save across ranks is blocking: background saves across ranks are not \
                 supported yet",
            )),
        }
    }

    /// Rank 0's `local` (the others pass `None`), on every rank: its value,
    /// or its failure as `Error::Rank`. One process keeps its own result.
    pub fn share<T: Serialize + DeserializeOwned>(
        &self,
        local: Option<Result<T>>,
        step: &str,
    ) -> Result<T> {
        let Some(group) = &self.group else {
            return local.expect("the only process is rank 0");
        };
        let rank = group.communicator.rank();
        let (outcome, mine) = match local {
            Some(Ok(value)) => (Some(Outcome::Done(value)), None),
            Some(Err(err)) => (Some(Outcome::Failed(Report::of(rank, &err))), Some(err)),
            None => (None, None),
        };
        match group.share(outcome.as_ref(), 0, step)? {
            Outcome::Done(value) => Ok(value),
            Outcome::Failed(report) => Err(keep_own(report.into_error(), mine, rank)),
        }
    }

    /// Every rank's `local` result becomes one: its own value if every
    /// rank succeeded, else the failure of the first rank that failed, on
    /// every rank. One process keeps its own result.
    pub fn agree<T>(&self, local: Result<T>, step: &str) -> Result<T> {
        match &self.group {
            None => local,
            Some(group) => match (group.agree(&local, step), local) {
                (Ok(()), local) => local,
                (Err(err), local) => Err(keep_own(err, local.err(), group.communicator.rank())),
            },
        }
    }

    /// Every rank's `local`, in rank order, on every rank (one process: its
    /// own).
    pub fn gather_all<T: Serialize + DeserializeOwned + Clone>(
        &self,
        local: &T,
        step: &str,
    ) -> Result<Vec<T>> {
        let Some(group) = &self.group else {
            return Ok(vec![local.clone()]);
        };
        let rank = group.communicator.rank();
        let mut bytes = serde_json::to_vec(local).expect("coordination messages serialise");
        let gather = |record: &[u8]| {
            group
                .communicator
                .all_gather(record, group.timeout)
                .map_err(|err| lost(rank, step, err))
        };
        // Records of one length: the lengths first, then each padded to the longest.
        let lengths = gather(&(bytes.len() as u64).to_le_bytes())?;
        let lengths: Vec<usize> = lengths
            .iter()
            .map(|length| {
                let length: [u8; 8] = length.as_slice().try_into().unwrap_or_default();
                u64::from_le_bytes(length) as usize
            })
            .collect();
        bytes.resize(lengths.iter().copied().max().unwrap_or(0), b' ');
        let all = gather(&bytes)?;
        all.iter()
            .zip(lengths)
            .enumerate()
            .map(|(sender, (bytes, length))| {
                serde_json::from_slice(&bytes[..length.min(bytes.len())]).map_err(|err| {
                    Error::Rank {
                        rank: sender as u32,
                        kind: ErrorKind::Io,
                        message: format!("{step}: an unreadable message ({err})"),
                        own: None,
                    }
                })
            })
            .collect()
    }

    /// Whether every rank saves into one directory (one process does), as
    /// opposed to a directory of its own (node-local).
    pub fn share_one_directory(&self) -> bool {
        self.group.as_ref().is_none_or(|group| !group.node_local)
    }

    /// Whether other ranks hold copies of this rank's replicated tensors
    /// to compare with (not in one process).
    pub fn has_other_ranks(&self) -> bool {
        self.size() > 1
    }

    /// How many ranks there are (1 for one process).
    pub fn size(&self) -> u32 {
        self.group
            .as_ref()
            .map_or(1, |group| group.communicator.size())
    }

    /// This rank's part in the remote tier's uploads: in a shared
    /// directory rank 0's manifest lists every rank's files, so rank 0
    /// uploads them all and the others nothing (`None`).
    pub fn upload_role(&self) -> Option<UploadRole> {
        let Some(group) = &self.group else {
            return Some(UploadRole::Commit { others: Vec::new() });
        };
        let size = group.communicator.size();
        match (group.node_local, self.is_root()) {
            (false, true) => Some(UploadRole::Commit { others: Vec::new() }),
            (false, false) => None,
            (true, true) => Some(UploadRole::Commit {
                others: (1..size)
                    .map(|rank| shard_infix(rank, size).into())
                    .collect(),
            }),
            (true, false) => Some(UploadRole::Contribute {
                shard: self.shard(),
            }),
        }
    }

    /// Whether this rank downloads checkpoint `number` before a restore,
    /// given which numbers each rank has locally (`everywhere`, in rank
    /// order): a node-local rank when it lacks it; rank 0 of a shared
    /// directory (or one process) when any rank lacks its files of it.
    pub fn must_download(&self, everywhere: &[Vec<u64>], number: u64) -> bool {
        let lacks = |present: &Vec<u64>| !present.contains(&number);
        match &self.group {
            Some(group) if group.node_local => everywhere
                .get(group.communicator.rank() as usize)
                .is_some_and(lacks),
            _ => self.is_root() && everywhere.iter().any(lacks),
        }
    }

    /// What this rank downloads of a remote checkpoint `manifest` into its
    /// directory: all of it for one process and for rank 0 of a shared
    /// directory, nothing for the others (`None`: rank 0 downloads for
    /// them), its own files and the tensor boxes they hold for a
    /// node-local rank.
    pub fn own_pieces(&self, manifest: &Manifest) -> Option<Manifest> {
        let Some(group) = &self.group else {
            return Some(manifest.clone());
        };
        if !group.node_local {
            return self.is_root().then(|| manifest.clone());
        }
        let shard = self.shard();
        let mine = |suffix: &[u8]| suffix.starts_with(shard.as_encoded_bytes());
        let mut own = manifest.clone();
        own.files.retain(|file| mine(file.suffix.as_bytes()));
        for tensor in &mut own.tensors {
            tensor.boxes.retain(|saved| mine(saved.file.as_bytes()));
        }
        own.tensors.retain(|tensor| !tensor.boxes.is_empty());
        Some(own)
    }

    /// Refuses, on every rank, a save the ranks asked for differently.
    pub fn check_same_save(
        &self,
        checkpoint_number: Option<u64>,
        check_interval: bool,
    ) -> Result<()> {
        let Some(group) = &self.group else {
            return Ok(());
        };
        let asked = Asked {
            checkpoint_number,
            check_interval,
        };
        let rank = group.communicator.rank();
        let all = group
            .communicator
            .all_gather(&asked.to_bytes(), group.timeout)
            .map_err(|err| lost(rank, "comparing the ranks' saves", err))?;
        let mut by_value: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (rank, bytes) in all.iter().enumerate() {
            let shown = Asked::from_bytes(bytes)
                .map_or_else(|| "an unreadable request".to_owned(), |a| a.to_string());
            by_value.entry(shown).or_default().push(rank);
        }
        if by_value.len() == 1 {
            return Ok(());
        }
        let mut groups: Vec<(Vec<usize>, String)> = by_value
            .into_iter()
            .map(|(shown, ranks)| (ranks, shown))
            .collect();
        groups.sort();
        let described: Vec<String> = groups
            .iter()
            .map(|(ranks, shown)| {
                let listed: Vec<String> = ranks.iter().map(usize::to_string).collect();
                let noun = if ranks.len() == 1 { "rank" } else { "ranks" };
                format!("{noun} {}: {shown}", listed.join(", "))
            })
            .collect();
        Err(Error::invalid(format!(
            "every rank must pass the same checkpoint_number and check_interval to a save; \
             {}",
            described.join("; ")
        )))
    }

    /// Opens the directory (`take`) where this rank must: one process and
    /// node-local ranks each take their own; in a shared directory rank 0
    /// takes it (its lock, and recovery, which no rank's save can race: the
    /// others wait here) and every rank returns its outcome.
    pub fn take_directory(&self, take: impl FnOnce() -> Result<()>) -> Result<()> {
        match &self.group {
            None => take(),
            Some(group) if group.node_local => self.agree(take(), "opening"),
            Some(_) => self.share(self.is_root().then(take), "opening"),
        }
    }

    /// Starts this rank's part of the save of `base`. In a shared directory
    /// the others write into the staging directory rank 0 made.
    pub fn begin(&self, store: &Arc<dyn Store>, base: &OsStr) -> Result<Transaction> {
        let shard = self.shard();
        let begin = || Transaction::begin_shard(Arc::clone(store), base, &shard);
        match &self.group {
            None => begin(),
            Some(group) if group.node_local => {
                let begun = begin();
                match group.agree(&begun, "starting the save") {
                    Ok(()) => begun,
                    Err(err) => {
                        if let Ok(transaction) = begun {
                            transaction.abort();
                        }
                        Err(err)
                    }
                }
            }
            Some(_) => {
                let (mine, made) = match self.is_root().then(begin) {
                    Some(Ok(transaction)) => (Some(transaction), Some(Ok(()))),
                    Some(Err(err)) => (None, Some(Err(err))),
                    None => (None, None),
                };
                match self.share(made, "making the staging directory") {
                    Ok(()) => Ok(mine.unwrap_or_else(|| {
                        Transaction::join_shard(Arc::clone(store), base, &shard)
                    })),
                    Err(err) => {
                        if let Some(transaction) = mine {
                            transaction.abort();
                        }
                        Err(err)
                    }
                }
            }
        }
    }

    /// Makes this rank's sealed files durable before the commit, which
    /// needs every rank's files on disk; one process's commit syncs its own.
    pub fn sync_before_commit(&self, transaction: &Transaction, sealed: &Sealed) -> Result<()> {
        match self.group {
            None => Ok(()),
            Some(_) => transaction.sync_shard(sealed),
        }
    }

    /// Commits where this rank must, through `commit`: one process its own;
    /// in a shared directory rank 0 every rank's files (each sends it its
    /// file list), the others nothing (`None`); node-local ranks each their
    /// own directory, rank 0 last, so that restores follow rank 0's state.
    /// A rank that committed a checkpoint rank 0 did not has it replaced by
    /// the next save of that number.
    pub fn commit<T>(
        &self,
        transaction: Transaction,
        mut sealed: Sealed,
        commit: impl FnOnce(Transaction, Sealed) -> Result<T>,
    ) -> Result<Option<T>> {
        let Some(group) = &self.group else {
            return commit(transaction, sealed).map(Some);
        };
        let rank = group.communicator.rank();
        if group.node_local {
            const STEP: &str = "committing on the other ranks";
            if rank != 0 {
                let own = commit(transaction, sealed);
                return group.agree(&own, STEP).and(own).map(Some);
            }
            return match group.agree(&Ok(()), STEP) {
                Ok(()) => commit(transaction, sealed).map(Some),
                Err(err) => {
                    transaction.abort();
                    Err(err)
                }
            };
        }
        let fragments = group.gather_fragments(&sealed);
        if rank != 0 {
            // Rank 0 commits this rank's files.
            return fragments.map(|_| None);
        }
        let added = fragments.and_then(|fragments| {
            fragments
                .iter()
                .try_for_each(|fragment| sealed.add_fragment(fragment))
        });
        match added {
            Ok(()) => commit(transaction, sealed).map(Some),
            Err(err) => {
                transaction.abort();
                Err(err)
            }
        }
    }

    /// Rank 0's outcome of the commit, on every rank (the ranks that no
    /// longer hear each other keep their own).
    pub fn commit_outcome(&self, local: Result<()>) -> Result<()> {
        match (&self.group, local) {
            (None, local) => local,
            (Some(_), Err(err @ Error::Coordination { .. })) => Err(err),
            (Some(group), local) => {
                let (root, mine) = match self.is_root() {
                    true => (Some(local), None),
                    false => (None, local.err()),
                };
                self.share(
                    root,
                    "committing (rank 0 may have committed it; the next restore tells)",
                )
                .map_err(|err| keep_own(err, mine, group.communicator.rank()))
            }
        }
    }

    /// Checks this rank's files of the checkpoint `base`: the whole
    /// checkpoint for one process (whose files may have no manifest, or a
    /// manifest older than the state file's save), the files named with
    /// its shard across ranks. Returns the CRC32C of the first `deferred`
    /// file, whose CRC32C it left for the reader to check.
    pub fn check_own_files(
        &self,
        store: &dyn Store,
        base: &OsStr,
        level: Verification,
        listed_at: Option<f64>,
        deferred: &[&[u8]],
    ) -> Result<(Integrity, Option<u32>)> {
        match self.group {
            None => integrity::verify(store, base, level, listed_at, deferred),
            Some(_) => {
                let shard = self.shard();
                integrity::verify_shard(store, base, shard.as_encoded_bytes(), level, deferred)
                    .map(|()| (Integrity::Intact, None))
            }
        }
    }
}

impl Group {
    /// Rank `root`'s value, on every rank.
    fn share<T: Serialize + DeserializeOwned>(
        &self,
        value: Option<&T>,
        root: u32,
        step: &str,
    ) -> Result<T> {
        let rank = self.communicator.rank();
        let mut bytes = value
            .map(|v| serde_json::to_vec(v).expect("coordination messages serialise"))
            .unwrap_or_default();
        broadcast_bytes(&*self.communicator, &mut bytes, root, self.timeout)
            .map_err(|err| lost(rank, step, err))?;
        serde_json::from_slice(&bytes).map_err(|err| Error::Rank {
            rank: root,
            kind: ErrorKind::Io,
            message: format!("{step}: an unreadable message ({err})"),
            own: None,
        })
    }

    /// `Ok` if every rank's `local` succeeded, else the failure of the
    /// first rank that failed, on every rank.
    fn agree<T>(&self, local: &Result<T>, step: &str) -> Result<()> {
        let rank = self.communicator.rank();
        let succeeded = [u8::from(local.is_ok())];
        let all = self
            .communicator
            .all_gather(&succeeded, self.timeout)
            .map_err(|err| lost(rank, step, err))?;
        let Some(failed) = all.iter().position(|status| status[0] == 0) else {
            return Ok(());
        };
        let failed = failed as u32;
        let report = local.as_ref().err().map(|err| Report::of(rank, err));
        let report: Report =
            self.share(report.as_ref().filter(|_| rank == failed), failed, step)?;
        Err(report.into_error())
    }

    /// Every other rank's file list, on rank 0 (each rank sends its own).
    fn gather_fragments(&self, sealed: &Sealed) -> Result<Vec<Vec<u8>>> {
        let rank = self.communicator.rank();
        let mut fragments = Vec::new();
        for sender in 1..self.communicator.size() {
            let mut bytes = if rank == sender {
                sealed.to_fragment()
            } else {
                Vec::new()
            };
            broadcast_bytes(&*self.communicator, &mut bytes, sender, self.timeout)
                .map_err(|err| lost(rank, "sending the file lists", err))?;
            if rank == 0 {
                fragments.push(bytes);
            }
        }
        Ok(fragments)
    }
}
