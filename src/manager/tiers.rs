//! The remote tier of a manager: every checkpoint committed locally is
//! copied, on the upload thread (`transaction::tiers`), to a second
//! directory, where a manager of its own commits it with that store's
//! commit, manifest, state file and retention. A restore takes the newer
//! of the two tiers, downloading into the local directory.
//!
//! Across node-local ranks each rank's upload thread leaves its pieces of
//! a checkpoint in the remote (`<base><shard>.ckpt-part/`), and rank 0's
//! commits the checkpoint there once every rank's pieces of that save are
//! present, found by reading them: no upload thread takes part in a
//! collective. A restore agrees on one number across ranks, and a rank
//! missing it locally downloads its pieces (see docs/tiers.md).

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::coordination::{Ranks, UploadRole};
use super::job::{copy_file, CopySource, JobCallbacks, Tensors};
use super::save::{Decided, Request};
use super::CheckpointManager;
use crate::config::{Callbacks, LogLevel};
use crate::error::{Error, Result};
use crate::integrity;
use crate::layout::{
    deletable_base, file_name, is_part_directory, manifest_name, part_base, part_directory,
};
use crate::manifest::{ByteString, Manifest, Verification};
use crate::paths;
use crate::policy::{Hold, Managed, Retention};
use crate::state_file::read_state;
use crate::store::{self, Store};
use crate::transaction::tiers::{RemoteStatus, TierCopy, Uploads};
use crate::transaction::{create_parents, replace_aside};

/// A manager's remote tier: the upload queue and the remote's store, read
/// by restores.
pub(super) struct Tiers {
    uploads: Uploads,
    remote_store: Arc<dyn Store>,
    /// The local bound on checkpoints held for their upload.
    local_max_held: Option<usize>,
}

impl CheckpointManager {
    /// Starts the upload thread of a writer whose options name a remote.
    /// The remote is opened on that thread: one that is down delays the
    /// uploads, never the open.
    pub(super) fn start_tiers(&mut self) -> Result<()> {
        let Some(remote_config) = self.config.remote_config() else {
            return Ok(());
        };
        if self.config.read_only {
            return Ok(());
        }
        let Some(role) = Ranks::of(&self.config).upload_role() else {
            return Ok(());
        };
        let remote_store = store::open(&remote_config.directory, &remote_config.storage_options)?;
        let local: Vec<(OsString, u64)> = self
            .retention
            .managed()
            .iter()
            .filter_map(|m| Some((deletable_base(&m.entry)?.to_owned(), m.traits.number?)))
            .collect();
        let copier: Box<dyn TierCopy> = match role {
            UploadRole::Commit { others } => Box::new(RemoteCopier {
                local: Arc::clone(&self.store),
                config: remote_config.clone(),
                remote: None,
                messages: Arc::default(),
                others,
                waiting_for: None,
            }),
            UploadRole::Contribute { shard } => Box::new(PieceUploader {
                local: Arc::clone(&self.store),
                remote: Arc::clone(&remote_store),
                remote_is_local: remote_config.is_local(),
                remote_directory: remote_config.directory.clone(),
                shard,
            }),
        };
        let remote = remote_config.directory.clone();
        let uploads = Uploads::start(Arc::clone(&self.store), remote, local, copier)?;
        self.tiers = Some(Tiers {
            uploads,
            remote_store,
            local_max_held: self
                .config
                .remote
                .as_ref()
                .and_then(|remote| remote.local_max_held),
        });
        Ok(())
    }

    /// What the local sweep keeps beyond its rules: uploads not done.
    pub(super) fn upload_hold(&self) -> Hold {
        match &self.tiers {
            Some(tiers) => Hold {
                held: tiers.uploads.held(),
                limit: tiers.local_max_held,
            },
            None => Hold::default(),
        }
    }

    /// After a local commit: its upload waits in the queue; what the local
    /// bound made the sweep delete unuploaded leaves it, with a warning.
    pub(super) fn queue_upload(&mut self, entry: &Path, released: &[PathBuf]) {
        let Some(tiers) = &self.tiers else { return };
        tiers.uploads.dropped(released);
        if let Some(base) = deletable_base(entry) {
            tiers.uploads.push(base);
        }
        let bound = tiers.local_max_held.unwrap_or(0);
        for dropped in released {
            self.warn(&format!(
                "deleted '{}' before its upload to the remote finished: the local directory \
                 holds at most {bound} checkpoints (local_max_held_for_upload)",
                self.full_path(dropped).display()
            ));
        }
        self.relay_upload_messages();
    }

    /// Gives the upload thread's log lines to the log callback.
    pub(super) fn relay_upload_messages(&mut self) {
        let Some(tiers) = &self.tiers else { return };
        for message in tiers.uploads.take_messages() {
            self.warn(&message);
        }
    }

    /// The remote tier's progress; `None` without a remote.
    pub fn remote_status(&mut self) -> Option<RemoteStatus> {
        self.relay_upload_messages();
        self.tiers.as_ref().map(|tiers| tiers.uploads.status())
    }

    /// Waits for the uploads waiting, until `deadline`; whether all are done.
    pub(super) fn wait_for_uploads(&mut self, timeout: Option<Duration>) -> bool {
        let done = self
            .tiers
            .as_ref()
            .is_none_or(|tiers| tiers.uploads.wait(timeout));
        self.relay_upload_messages();
        done
    }

    /// A save answered a preemption signal: the uploads get a bounded time
    /// before the trainer stops; what is left resumes at the next open.
    pub(super) fn upload_before_preemption(&mut self) {
        let Some(remote) = &self.config.remote else {
            return;
        };
        let time = remote.preemption_upload_time;
        if !self.wait_for_uploads(Some(time)) {
            let pending = self
                .tiers
                .as_ref()
                .map_or(0, |t| t.uploads.status().pending);
            self.warn(&format!(
                "preempted: {pending} uploads to the remote did not finish within {} s; they \
                 resume when the directory is next opened",
                time.as_secs_f64()
            ));
        }
    }

    /// Once every upload is done: deletes what the local sweeps held for
    /// them and the local rules no longer keep.
    pub(super) fn prune_uploaded(&mut self) -> Result<()> {
        if self.tiers.is_none() || self.config.read_only {
            return Ok(());
        }
        self.prune(false).map(drop)
    }

    /// Stops the upload thread after the copy in progress; what waits
    /// stays listed for the next open.
    pub(super) fn stop_uploads(&mut self) {
        self.tiers = None;
    }

    /// Commits a copy of the committed checkpoint `source` here, as a save
    /// of its number at its time: this manager's commit, retention and
    /// state file. An upload (on the remote's manager) or a download.
    fn commit_copy(&mut self, source: &CopySource, saved_at: f64, upload: bool) -> Result<()> {
        self.finish_unfinished()?;
        if self.retention.managed().is_empty() && saved_at <= self.retention.last_preserved() {
            // A directory new to this run starts its clock at the first
            // copy's time, else TF's rules would leave the copy unmanaged.
            self.retention = Retention::fresh(saved_at);
        }
        let number = source.manifest.number;
        let counter = self.save_counter.max(number);
        let mut annotations = source.manifest.annotations.clone();
        let pinned = annotations.pinned;
        let request = Request {
            flag: false,
            preemptions_seen: self.preemptions_seen,
        };
        let Decided {
            mut job,
            mut pending,
            ..
        } = self.decided(
            number,
            counter,
            annotations.step,
            annotations.clone(),
            request,
        );
        if pinned && !job.annotations.pinned {
            annotations.pinned = true;
            job.traits.pinned = true;
            job.annotations = annotations;
        }
        pending.upload = upload;
        let callbacks = &mut self.callbacks;
        let report = job.run(
            &Ranks::one(),
            Tensors::CopyOf(source),
            JobCallbacks {
                save: None,
                delete: callbacks.delete.as_mut(),
                now: &mut || Ok(saved_at),
            },
        );
        self.apply(pending, report)
    }

    /// Before a restore: the ranks agree on the newest checkpoint every
    /// rank has locally (its files present at their sizes) or can take
    /// from the remote, and the ranks that lack it locally download their
    /// pieces of it and commit them locally, so the restore (and the next
    /// restart) reads it locally. A failed download tries the next older
    /// one. Returns that number: the restore tries nothing newer. A remote
    /// that cannot be read is a warning (rank 0's), and the local
    /// directories are restored.
    pub(super) fn download_newer(&mut self) -> Result<Option<u64>> {
        let Some(remote_config) = self.config.remote_config() else {
            return Ok(None);
        };
        if self.config.read_only {
            return Ok(None);
        }
        let ranks = Ranks::of(&self.config);
        let present = self.present_numbers(&ranks);
        if let Some(latest) = self.latest.clone() {
            let number = paths::trailing_number(&latest);
            if number.is_some_and(|number| !present.contains(&number)) {
                self.warn(&format!(
                    "the local latest checkpoint '{}' is not whole (a file is missing or cut \
                     short): the remote's copy is taken if it has one",
                    latest.display()
                ));
            }
        }
        let everywhere = ranks.gather_all(&present, "listing the ranks' checkpoints")?;
        let remote_store = match &self.tiers {
            Some(tiers) => Ok(Arc::clone(&tiers.remote_store)),
            None => store::open(&remote_config.directory, &remote_config.storage_options),
        };
        let listing = ranks
            .is_root()
            .then(|| Ok(self.remote_listing(&remote_store)));
        let remote: Vec<(u64, ByteString)> = ranks.share(listing, "reading the remote")?;
        let mut numbers: Vec<u64> = everywhere
            .iter()
            .flatten()
            .copied()
            .chain(remote.iter().map(|(number, _)| *number))
            .collect();
        numbers.sort_unstable_by(|a, b| b.cmp(a));
        numbers.dedup();
        for number in numbers {
            let in_remote = remote.iter().find(|(n, _)| *n == number);
            if everywhere.iter().all(|local| local.contains(&number)) {
                return Ok(Some(number));
            }
            let Some((_, base)) = in_remote else {
                // Some rank lacks it and the remote has no copy.
                continue;
            };
            let base = OsStr::from_bytes(base.as_bytes()).to_owned();
            let downloaded = match (&remote_store, ranks.must_download(&everywhere, number)) {
                (_, false) => Ok(false),
                (Ok(remote_store), true) => self.download(remote_store, &base, &ranks),
                (Err(err), true) => Err(Error::io(
                    "open the remote",
                    std::io::Error::other(err.to_string()),
                )),
            };
            let mine = downloaded.as_ref().ok().copied();
            match ranks.agree(downloaded, "downloading from the remote") {
                Ok(_) => {
                    if mine == Some(true) {
                        let shown = remote_store.as_ref().map(|s| s.shown(Path::new(&base)));
                        let shown = shown.unwrap_or_else(|_| PathBuf::from(&base));
                        self.log(
                            LogLevel::Info,
                            &format!("downloaded '{}' from the remote", shown.display()),
                        );
                    } else if ranks.share_one_directory() && !ranks.is_root() {
                        // Rank 0 may have downloaded into the shared directory.
                        self.reload()?;
                    }
                    return Ok(Some(number));
                }
                Err(err @ Error::Coordination { .. }) => return Err(err),
                Err(err) => self.warn(&format!(
                    "could not download '{}' from the remote ({err}); trying an older one",
                    Path::new(&base).display()
                )),
            }
        }
        Ok(None)
    }

    /// The numbers of the checkpoints this rank's directory lists whose
    /// files (this rank's) are all there at their sizes.
    fn present_numbers(&self, ranks: &Ranks) -> Vec<u64> {
        let listed = self
            .latest
            .iter()
            .chain(self.retention.managed().iter().map(|m| &m.entry));
        let mut numbers: Vec<u64> = listed
            .filter(|entry| {
                deletable_base(entry).is_some_and(|base| {
                    ranks
                        .check_own_files(&*self.store, base, Verification::Sizes, None, &[])
                        .is_ok()
                })
            })
            .filter_map(|entry| paths::trailing_number(entry))
            .collect();
        numbers.sort_unstable();
        numbers.dedup();
        numbers
    }

    /// Rank 0's reading of the remote's state file: its checkpoints'
    /// numbers and bases, newest first; none (with a warning) when it
    /// cannot be read.
    fn remote_listing(&mut self, remote_store: &Result<Arc<dyn Store>>) -> Vec<(u64, ByteString)> {
        let read = match remote_store {
            Ok(store) => read_state(&**store),
            Err(err) => Err(Error::io(
                "open the remote",
                std::io::Error::other(err.to_string()),
            )),
        };
        let state = match read {
            Ok(Some(file)) => file.state,
            Ok(None) => return Vec::new(),
            Err(err) => {
                self.warn(&format!(
                    "restoring from the local directory only: the remote cannot be read ({err})"
                ));
                return Vec::new();
            }
        };
        let mut listing: Vec<(u64, ByteString)> = Vec::new();
        let listed = state.all_model_checkpoint_paths.iter().rev();
        for bytes in std::iter::once(&state.model_checkpoint_path).chain(listed) {
            let entry = paths::path_from_bytes(bytes);
            let (Some(number), Some(base)) =
                (paths::trailing_number(&entry), deletable_base(&entry))
            else {
                continue;
            };
            if !listing.iter().any(|(known, _)| *known == number) {
                listing.push((number, ByteString::from_bytes(base.as_bytes())));
            }
        }
        listing
    }

    /// Downloads this rank's pieces of the remote checkpoint `base` and
    /// commits them locally; whether this rank had any to download.
    fn download(
        &mut self,
        remote_store: &Arc<dyn Store>,
        base: &OsStr,
        ranks: &Ranks,
    ) -> Result<bool> {
        let manifest =
            integrity::read_manifest(&**remote_store, base)?.ok_or_else(|| Error::Damaged {
                prefix: remote_store.shown(Path::new(base)),
                detail: "it has no manifest".into(),
            })?;
        let Some(manifest) = ranks.own_pieces(&manifest) else {
            return Ok(false);
        };
        if manifest.files.is_empty() {
            return Err(Error::Damaged {
                prefix: remote_store.shown(Path::new(base)),
                detail: format!("it has no file of rank {}", ranks.rank()),
            });
        }
        let saved_at = match manifest.saved_at {
            Some(saved_at) => saved_at,
            None => self.now()?,
        };
        let source = CopySource::single(Arc::clone(remote_store), base.to_owned(), manifest);
        self.commit_copy(&source, saved_at, false)?;
        Ok(true)
    }
}

/// The upload thread's side of one process and of rank 0: the remote's
/// own manager, opened on it.
struct RemoteCopier {
    local: Arc<dyn Store>,
    config: crate::config::Config,
    remote: Option<CheckpointManager>,
    /// The remote manager's log lines.
    messages: Arc<Mutex<Vec<String>>>,
    /// The shards of the node-local ranks whose pieces each checkpoint
    /// waits for in the remote.
    others: Vec<OsString>,
    /// The checkpoint last reported as waiting for pieces (reported once).
    waiting_for: Option<OsString>,
}

impl RemoteCopier {
    fn drain(&self, log: &mut Vec<String>) {
        let mut messages = self.messages.lock().unwrap_or_else(|p| p.into_inner());
        log.extend(messages.drain(..).map(|m| format!("remote: {m}")));
    }

    /// The remote's manager, opened again after a failure: a server that
    /// came back empty, or a lease lost, needs a fresh open.
    fn remote(&mut self, log: &mut Vec<String>) -> Result<&mut CheckpointManager> {
        if self.remote.is_none() {
            let messages = Arc::clone(&self.messages);
            let callbacks = Callbacks::new().log(move |_, message| {
                let mut messages = messages.lock().unwrap_or_else(|p| p.into_inner());
                messages.push(message.to_owned());
            });
            let opened = CheckpointManager::new(self.config.clone(), callbacks);
            self.drain(log);
            self.remote = Some(opened?);
        }
        Ok(self.remote.as_mut().expect("opened above"))
    }

    fn source(&self, base: &OsStr) -> Result<CopySource> {
        let manifest =
            integrity::read_manifest(&*self.local, base)?.ok_or_else(|| Error::Damaged {
                prefix: self.local.shown(Path::new(base)),
                detail: "it has no manifest".into(),
            })?;
        Ok(CopySource::single(
            Arc::clone(&self.local),
            base.to_owned(),
            manifest,
        ))
    }

    /// The other ranks' pieces of the save `own` in the remote, or the
    /// shards whose pieces are not there yet (or are of another save of
    /// the same number: their time differs).
    fn pieces(&mut self, base: &OsStr, own: &Manifest) -> Result<PiecesFound> {
        if self.others.is_empty() {
            return Ok(PiecesFound::All(Vec::new()));
        }
        let store = Arc::clone(&self.remote(&mut Vec::new())?.store);
        let (mut found, mut missing) = (Vec::new(), Vec::new());
        for shard in &self.others {
            let part = part_base(base, shard);
            let manifest = integrity::read_manifest(&*store, &part).ok().flatten();
            match manifest {
                Some(manifest)
                    if manifest.number == own.number && manifest.saved_at == own.saved_at =>
                {
                    found.push(CopySource::single(Arc::clone(&store), part, manifest));
                }
                _ => missing.push(shard.clone()),
            }
        }
        Ok(match missing.is_empty() {
            true => PiecesFound::All(found),
            false => PiecesFound::Missing(missing),
        })
    }

    /// Whether every rank's pieces of `base` are in the remote (not when
    /// they cannot be read: the copy reports that).
    fn complete(&mut self, base: &OsStr) -> bool {
        let Ok(own) = self.source(base) else {
            return false;
        };
        matches!(self.pieces(base, &own.manifest), Ok(PiecesFound::All(_)))
    }

    /// Removes from the remote the pieces `copied` and every rank's pieces
    /// of numbers below `number`: rank 0 has passed them. Pieces of
    /// `number` itself may be of a save of it again, not copied yet.
    fn remove_pieces(&mut self, number: u64, copied: &[CopySource], log: &mut Vec<String>) {
        if self.others.is_empty() {
            return;
        }
        let checkpoint_name = self.config.checkpoint_name.clone();
        let Some(remote) = self.remote.as_ref() else {
            return;
        };
        let store = Arc::clone(&remote.store);
        let entries = match store::list_root(&*store) {
            Ok(entries) => entries,
            Err(err) => {
                log.push(format!("could not list the remote's pieces: {err}"));
                return;
            }
        };
        let passed = entries
            .iter()
            .map(|entry| PathBuf::from(&entry.name))
            .filter(|directory| {
                let name = directory.as_os_str();
                is_part_directory(name.as_bytes())
                    && paths::own_checkpoint_number(name, &checkpoint_name)
                        .is_some_and(|n| n < number)
            });
        let copied = copied
            .iter()
            .filter_map(|piece| Path::new(&piece.base).parent().map(Path::to_path_buf));
        for directory in passed.chain(copied) {
            if let Err(err) = store.remove_staging(&directory) {
                log.push(format!(
                    "could not remove '{}': {err}",
                    store.shown(&directory).display()
                ));
            }
        }
    }
}

/// The other ranks' pieces of a checkpoint in the remote.
enum PiecesFound {
    All(Vec<CopySource>),
    /// The shards whose pieces are not there yet.
    Missing(Vec<OsString>),
}

impl TierCopy for RemoteCopier {
    fn connect(&mut self, log: &mut Vec<String>) -> Result<Option<u64>> {
        let remote = self.remote(log)?;
        Ok(remote.latest.as_deref().and_then(paths::trailing_number))
    }

    /// The remote's retention, and across ranks: a checkpoint whose pieces
    /// are not all there is skipped once a newer one's are (the ranks
    /// upload in commit order: they dropped or skipped its pieces).
    fn wanted(&mut self, queue: &[OsString], index: usize) -> Result<bool> {
        if !self.others.is_empty() && !self.complete(&queue[index]) {
            for newer in &queue[index + 1..] {
                if self.complete(newer) {
                    return Ok(false);
                }
            }
        }
        let sources: Vec<Option<CopySource>> =
            queue.iter().map(|base| self.source(base).ok()).collect();
        let mut log = Vec::new();
        let remote = self.remote(&mut log)?;
        let mut retention = remote.retention.clone();
        for (base, source) in queue.iter().zip(&sources) {
            let Some(source) = source else { continue };
            let entry = PathBuf::from(base);
            let traits = remote.traits_of(&entry, &source.manifest.annotations);
            retention.record(Managed {
                entry,
                timestamp: source.manifest.saved_at.unwrap_or(f64::MAX),
                traits,
            });
        }
        let outcome = retention.sweep(&remote.rules());
        Ok(!outcome.delete.contains(&PathBuf::from(&queue[index])))
    }

    fn ready(&mut self, base: &OsStr, log: &mut Vec<String>) -> Result<bool> {
        let own = self.source(base)?;
        let PiecesFound::Missing(missing) = self.pieces(base, &own.manifest)? else {
            return Ok(true);
        };
        if self.waiting_for.as_deref() != Some(base) {
            let shards: Vec<String> = missing
                .iter()
                .map(|shard| shard.to_string_lossy().into_owned())
                .collect();
            log.push(format!(
                "'{}' waits for the pieces of ranks {} in the remote",
                Path::new(base).display(),
                shards.join(", ")
            ));
            self.waiting_for = Some(base.to_owned());
        }
        Ok(false)
    }

    fn copy(&mut self, base: &OsStr, log: &mut Vec<String>) -> Result<u64> {
        let mut source = self.source(base)?;
        source.others = match self.pieces(base, &source.manifest)? {
            PiecesFound::All(others) => others,
            PiecesFound::Missing(_) => {
                return Err(Error::invalid("another rank's pieces went from the remote"))
            }
        };
        let saved_at = source.manifest.saved_at;
        let remote = self.remote(log)?;
        let copied = match saved_at {
            Some(saved_at) => Ok(saved_at),
            None => remote.now(),
        }
        .and_then(|saved_at| remote.commit_copy(&source, saved_at, true));
        self.drain(log);
        if copied.is_err() {
            self.remote = None;
        } else {
            self.remove_pieces(source.manifest.number, &source.others, log);
        }
        copied.map(|()| source.manifest.number)
    }
}

/// The upload thread's side of a node-local rank other than 0: it leaves
/// its pieces of each checkpoint in the remote for rank 0 to commit. It
/// never writes the remote's state or manifests (rank 0 is its writer).
struct PieceUploader {
    local: Arc<dyn Store>,
    remote: Arc<dyn Store>,
    remote_is_local: bool,
    remote_directory: PathBuf,
    shard: OsString,
}

impl PieceUploader {
    /// The number of the remote's newest committed checkpoint.
    fn remote_newest(&self) -> Result<Option<u64>> {
        Ok(read_state(&*self.remote)?.and_then(|file| {
            paths::trailing_number(&paths::path_from_bytes(&file.state.model_checkpoint_path))
        }))
    }
}

impl TierCopy for PieceUploader {
    fn connect(&mut self, _log: &mut Vec<String>) -> Result<Option<u64>> {
        self.remote_newest()
    }

    /// Not when the remote holds this very save (rank 0 committed it) or
    /// a newer number (rank 0 is past it): rank 0 will not ask for these
    /// pieces. A number saved again is uploaded again.
    fn wanted(&mut self, queue: &[OsString], index: usize) -> Result<bool> {
        let base = &queue[index];
        let passed = match (
            paths::trailing_number(Path::new(base)),
            self.remote_newest()?,
        ) {
            (Some(number), Some(newest)) => number < newest,
            _ => false,
        };
        let saved_at = |store: &dyn Store| {
            integrity::read_manifest(store, base)
                .ok()
                .flatten()
                .and_then(|manifest| manifest.saved_at)
        };
        let local = saved_at(&*self.local);
        let committed = local.is_some() && local == saved_at(&*self.remote);
        Ok(!passed && !committed)
    }

    /// Replaces this rank's pieces of `base` in the remote: its files, each
    /// checked against its local manifest as it is read, then (synced)
    /// that manifest, which rank 0 waits for.
    fn copy(&mut self, base: &OsStr, _log: &mut Vec<String>) -> Result<u64> {
        let manifest =
            integrity::read_manifest(&*self.local, base)?.ok_or_else(|| Error::Damaged {
                prefix: self.local.shown(Path::new(base)),
                detail: "it has no manifest".into(),
            })?;
        let source = CopySource::single(Arc::clone(&self.local), base.to_owned(), manifest);
        let store = &*self.remote;
        let directory = part_directory(base, &self.shard);
        let part = part_base(base, &self.shard);
        let io_at = |action: &'static str, name: &Path| {
            let shown = store.shown(name);
            move |err| Error::io_at(action, &shown, err)
        };
        if self.remote_is_local {
            crate::store::create_directory(&self.remote_directory)?;
        }
        // An earlier attempt's (or save's) pieces go first: rank 0 never
        // finds a manifest beside other bytes.
        store
            .remove_staging(&directory)
            .map_err(io_at("remove", &directory))?;
        let mut written = Vec::new();
        for record in &source.manifest.files {
            copy_file(&source, record, &mut |suffix, size, stream| {
                let name = file_name(&part, suffix.as_bytes());
                create_parents(store, &name)?;
                let mut file = store.create(&name).map_err(io_at("create", &name))?;
                file.expect_size(size);
                stream(&mut |bytes| file.write_all(bytes))
                    .and_then(|()| file.finish())
                    .map_err(io_at("write", &name))?;
                written.push(name);
                Ok(())
            })?;
        }
        store
            .sync_files(&written)
            .map_err(io_at("sync", &directory))?;
        replace_aside(store, &manifest_name(&part), &source.manifest.to_json())?;
        store
            .sync_directories(std::slice::from_ref(&directory))
            .map_err(io_at("sync", &directory))?;
        Ok(source.manifest.number)
    }
}
