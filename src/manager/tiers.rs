//! The remote tier of a manager: every checkpoint committed locally is
//! copied, on the upload thread (`transaction::tiers`), to a second
//! directory, where a manager of its own commits it with that store's
//! commit, manifest, state file and retention. A restore takes the newer
//! of the two tiers, downloading into the local directory.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::coordination::Ranks;
use super::job::{CopySource, JobCallbacks, Tensors};
use super::save::{Decided, Request};
use super::CheckpointManager;
use crate::config::{Callbacks, LogLevel};
use crate::error::{Error, Result};
use crate::integrity;
use crate::layout::deletable_base;
use crate::manifest::Verification;
use crate::paths;
use crate::policy::{Hold, Managed, Retention};
use crate::state_file::read_state;
use crate::store::{self, Store};
use crate::transaction::tiers::{RemoteStatus, TierCopy, Uploads};

/// A manager's remote tier: the upload queue and the remote's store, read
/// by restores.
pub(super) struct Tiers {
    uploads: Uploads,
    remote_store: Arc<dyn Store>,
    remote_directory: PathBuf,
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
        let remote_store = store::open(&remote_config.directory, &remote_config.storage_options)?;
        let local: Vec<(OsString, u64)> = self
            .retention
            .managed()
            .iter()
            .filter_map(|m| Some((deletable_base(&m.entry)?.to_owned(), m.traits.number?)))
            .collect();
        let copier = RemoteCopier {
            local: Arc::clone(&self.store),
            config: remote_config.clone(),
            remote: None,
            messages: Arc::default(),
        };
        let remote = remote_config.directory.clone();
        let uploads = Uploads::start(Arc::clone(&self.store), remote, local, Box::new(copier))?;
        self.tiers = Some(Tiers {
            uploads,
            remote_store,
            remote_directory: remote_config.directory,
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

    /// Before a restore: when the remote holds a checkpoint newer than the
    /// newest local one (or as new, when the local one is not whole), the
    /// newest of those that copies intact is downloaded and committed
    /// locally, so the restore (and the next
    /// restart) reads it locally. A remote that cannot be read is a warning.
    pub(super) fn download_newer(&mut self) -> Result<()> {
        let Some(tiers) = &self.tiers else {
            return Ok(());
        };
        let (remote_store, remote_directory) = (
            Arc::clone(&tiers.remote_store),
            tiers.remote_directory.clone(),
        );
        let mut local_newest = self.latest.as_deref().and_then(paths::trailing_number);
        let local_latest = self.latest_checkpoint();
        let verified = local_latest
            .as_deref()
            .map(|latest| self.verify(Some(latest), Verification::Sizes));
        if let Some(Err(err)) = verified {
            // A remote copy of the same number replaces it.
            self.warn(&format!("the local latest checkpoint is not whole ({err})"));
            local_newest = local_newest.map(|newest| newest.saturating_sub(1));
        }
        let state = match read_state(&*remote_store) {
            Ok(Some(file)) => file.state,
            Ok(None) => return Ok(()),
            Err(err) => {
                self.warn(&format!(
                    "restoring from the local directory only: the remote cannot be read ({err})"
                ));
                return Ok(());
            }
        };
        let entry =
            |bytes: &[u8]| paths::state_entry(&remote_directory, &paths::path_from_bytes(bytes));
        let mut candidates: Vec<PathBuf> = Vec::new();
        let listed = state.all_model_checkpoint_paths.iter().rev();
        for bytes in std::iter::once(&state.model_checkpoint_path).chain(listed) {
            let entry = entry(bytes);
            let newer = paths::trailing_number(&entry)
                .is_some_and(|number| local_newest.is_none_or(|local| number > local));
            if newer && !candidates.contains(&entry) {
                candidates.push(entry);
            }
        }
        for entry in candidates {
            let Some(base) = deletable_base(&entry).map(OsStr::to_owned) else {
                continue;
            };
            match self.download(&remote_store, &base) {
                Ok(()) => {
                    self.log(
                        LogLevel::Info,
                        &format!(
                            "downloaded '{}', newer than the local checkpoints",
                            remote_store.shown(Path::new(&base)).display()
                        ),
                    );
                    return Ok(());
                }
                Err(err) => self.warn(&format!(
                    "could not download '{}' ({err}); trying an older one",
                    remote_store.shown(Path::new(&base)).display()
                )),
            }
        }
        Ok(())
    }

    fn download(&mut self, remote_store: &Arc<dyn Store>, base: &OsStr) -> Result<()> {
        let manifest =
            integrity::read_manifest(&**remote_store, base)?.ok_or_else(|| Error::Damaged {
                prefix: remote_store.shown(Path::new(base)),
                detail: "it has no manifest".into(),
            })?;
        let saved_at = match manifest.saved_at {
            Some(saved_at) => saved_at,
            None => self.now()?,
        };
        let source = CopySource {
            store: Arc::clone(remote_store),
            base: base.to_owned(),
            manifest,
        };
        self.commit_copy(&source, saved_at, false)
    }
}

/// The upload thread's side: the remote's own manager, opened on it.
struct RemoteCopier {
    local: Arc<dyn Store>,
    config: crate::config::Config,
    remote: Option<CheckpointManager>,
    /// The remote manager's log lines.
    messages: Arc<Mutex<Vec<String>>>,
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
        Ok(CopySource {
            store: Arc::clone(&self.local),
            base: base.to_owned(),
            manifest,
        })
    }
}

impl TierCopy for RemoteCopier {
    fn connect(&mut self, log: &mut Vec<String>) -> Result<Option<u64>> {
        let remote = self.remote(log)?;
        Ok(remote.latest.as_deref().and_then(paths::trailing_number))
    }

    fn wanted(&mut self, queue: &[OsString], index: usize) -> Result<bool> {
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

    fn copy(&mut self, base: &OsStr, log: &mut Vec<String>) -> Result<u64> {
        let source = self.source(base)?;
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
        }
        copied.map(|()| source.manifest.number)
    }
}
