//! Opening a manager: the directory, its lock, recovery of interrupted
//! saves, and the retention state read from the state file.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::coordination::Ranks;
use super::CheckpointManager;
use crate::config::{Callbacks, Config};
use crate::error::Result;
use crate::paths;
use crate::policy::Retention;
use crate::state_file::read_state;
use crate::store::{self, Store};
use crate::tensor_file::TensorSnapshot;
use crate::tensors::TensorRegistry;
use crate::transaction;

impl CheckpointManager {
    /// Opens a manager on `config.directory` and recovers the retention
    /// state from its state file as TF does. A writer creates the
    /// directory, takes its lock (failing with `Error::Locked` if another
    /// manager has it), and removes what interrupted saves left behind.
    /// A read-only manager touches nothing.
    pub fn new(config: Config, callbacks: Callbacks) -> Result<Self> {
        let store = store::open(&config.directory, &config.storage_options)?;
        Self::with_store(config, callbacks, store)
    }

    pub(crate) fn with_store(
        config: Config,
        callbacks: Callbacks,
        store: Arc<dyn Store>,
    ) -> Result<Self> {
        config.validate(&callbacks)?;
        let mut manager = CheckpointManager {
            store,
            state_crc: None,
            unfinished: false,
            last_save_time: None,
            save_requested: Arc::new(AtomicBool::new(false)),
            preemptions_seen: 0,
            has_save_callback: callbacks.save.is_some(),
            worker: None,
            pending: None,
            background_error: None,
            snapshot: TensorSnapshot::default(),
            last_checkpoint_step: config.last_checkpoint_step,
            config,
            callbacks,
            retention: Retention::fresh(0.0),
            latest: None,
            save_counter: 0,
            tensors: TensorRegistry::default(),
            tiers: None,
            lock: None,
        };
        // Read first, so that a failing clock creates nothing on disk.
        let now = manager.now()?;
        Ranks::of(&manager.config).take_directory(|| manager.take_directory())?;
        manager.load_state(now)?;
        manager.save_counter = manager.highest_known_number()?;
        manager.start_tiers()?;
        Ok(manager)
    }

    /// A writer creates the directory, takes its lock and recovers what
    /// interrupted saves left.
    /// On object storage the lock is a lease object (`Error::Leased` while
    /// another writer lives), and the commit a conditional write, which
    /// the server must support; a dead writer's incomplete multipart
    /// uploads are aborted once the lease is this writer's.
    fn take_directory(&mut self) -> Result<()> {
        if !self.config.read_only {
            if self.config.is_local() {
                crate::store::create_directory(&self.config.directory)?;
            } else {
                self.store.probe_conditional_writes()?;
                self.store.take_lease()?;
            }
            self.lock = store::lock(&self.config.directory)?;
            self.abort_abandoned_uploads();
            self.recover()?;
        }
        Ok(())
    }

    /// Aborts the incomplete uploads of this manager's checkpoints (files
    /// named `<name>-<N>...` or in their staging) that a dead writer left.
    /// A failure is a warning: a listing the credentials do not allow must
    /// not keep a writer from opening.
    fn abort_abandoned_uploads(&mut self) {
        let name = self.config.checkpoint_name.clone();
        let owned = |upload: &std::path::Path| {
            upload.components().next().is_some_and(|first| {
                paths::own_checkpoint_number(first.as_os_str(), &name).is_some()
            })
        };
        let shown = self.store.shown(std::path::Path::new(""));
        match self.store.abort_uploads(&owned) {
            Ok(aborted) => aborted.iter().for_each(|upload| {
                let upload = self.store.shown(upload);
                self.warn(&format!(
                    "aborted an incomplete upload of '{}' left when the last writer stopped",
                    upload.display()
                ))
            }),
            Err(err) => self.warn(&format!(
                "could not abort incomplete uploads under '{}' ({err}); a bucket lifecycle \
                 rule AbortIncompleteMultipartUpload removes them",
                shown.display()
            )),
        }
    }

    /// Finishes or removes what interrupted saves left (see `transaction`).
    fn recover(&mut self) -> Result<()> {
        let named: HashSet<Vec<u8>> = match read_state(&*self.store)? {
            Some(file) => std::iter::once(file.state.model_checkpoint_path)
                .chain(file.state.all_model_checkpoint_paths)
                .collect(),
            None => HashSet::new(),
        };
        let (mut warnings, mut failed_deletes) = (Vec::new(), Vec::new());
        let directory = &self.config.directory;
        let delete = &mut self.callbacks.delete;
        let recovered = transaction::recover(
            &*self.store,
            &|base: &OsStr| named.contains(base.as_bytes()),
            &mut |warning| warnings.push(warning.to_owned()),
            // A commit finished here: its dropped checkpoints still get the
            // delete callback, which replaces the built-in deletion.
            &mut |base| {
                let Some(delete) = delete.as_mut() else {
                    return false;
                };
                let prefix = directory.join(base);
                if let Err(err) = delete(&prefix) {
                    failed_deletes.push(format!("could not delete '{}': {err}", prefix.display()));
                }
                true
            },
        );
        warnings.extend(failed_deletes);
        warnings.iter().for_each(|warning| self.warn(warning));
        recovered
    }

    /// After a commit that failed past its commit point: finish it, and
    /// take the state it wrote.
    pub(super) fn finish_unfinished(&mut self) -> Result<()> {
        if !self.unfinished {
            return Ok(());
        }
        self.recover()?;
        self.unfinished = false;
        // The finished commit may hold a number above the counter.
        self.reload()
    }

    /// Rebuilds the retention state from the state file at time `now`.
    fn load_state(&mut self, now: f64) -> Result<()> {
        let directory = self.config.directory.clone();
        let Some(file) = read_state(&*self.store)? else {
            self.retention = Retention::fresh(now);
            self.latest = None;
            self.state_crc = None;
            return Ok(());
        };
        self.state_crc = Some(file.crc32c);
        let state = file.state;
        let entry = |bytes: &[u8]| paths::state_entry(&directory, &paths::path_from_bytes(bytes));
        let entries = state
            .all_model_checkpoint_paths
            .iter()
            .map(|p| {
                let entry = entry(p);
                let traits = self.traits(&entry);
                (entry, traits)
            })
            .collect();
        let (retention, clock_went_backwards) = Retention::recover(
            entries,
            &state.all_model_checkpoint_timestamps,
            state.last_preserved_timestamp,
            now,
            &self.rules(),
        );
        if clock_went_backwards {
            self.warn(&format!(
                "the clock ({now}) is behind the last preserved checkpoint's time ({}); \
                 recovered checkpoints get the current time so that none is deleted early",
                state.last_preserved_timestamp
            ));
        }
        let latest = entry(&state.model_checkpoint_path);
        self.last_save_time = retention
            .managed()
            .iter()
            .find(|checkpoint| checkpoint.entry == latest)
            .map(|checkpoint| checkpoint.timestamp);
        self.retention = retention;
        self.latest = Some(latest);
        Ok(())
    }

    /// Re-reads the state file: how a read-only manager sees the
    /// checkpoints another process saved since it opened.
    pub fn reload(&mut self) -> Result<()> {
        self.settle(true)?;
        let now = self.now()?;
        self.load_state(now)?;
        self.save_counter = self.save_counter.max(self.highest_known_number()?);
        Ok(())
    }

    /// The number the next unnumbered save must exceed: the highest number
    /// in the state file (under any name) or on disk under this name.
    fn highest_known_number(&self) -> Result<u64> {
        let listed = self
            .latest
            .iter()
            .chain(self.retention.managed().iter().map(|m| &m.entry))
            .filter_map(|entry| paths::trailing_number(entry));
        let entries = store::list_root(&*self.store)?;
        let on_disk = entries.iter().filter_map(|entry| {
            paths::own_checkpoint_number(&entry.name, &self.config.checkpoint_name)
        });
        Ok(listed.chain(on_disk).max().unwrap_or(0))
    }
}
