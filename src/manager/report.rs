//! What the manager reports of the directory and the changes that are no
//! save: why each checkpoint is kept, pins, pruning, checkpoint details
//! and verification.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::coordination::Ranks;
use super::{
    state_for, CheckpointInfo, CheckpointManager, FileInfo, KeepReason, Pruned, RetainedCheckpoint,
};
use crate::config::MaxToKeep;
use crate::error::{Error, Result};
use crate::inspect;
use crate::integrity::{self, Integrity};
use crate::layout::deletable_base;
use crate::manifest::{ByteString, Verification};
use crate::paths;
use crate::policy::{KeptBy, SweepOutcome};
use crate::state_file::read_state;
use crate::transaction;

impl CheckpointManager {
    /// Every checkpoint of the directory with the rules that keep it under
    /// this manager's options: the managed ones, oldest first, then the
    /// listed ones no longer managed, then the others on disk
    /// (`inspect::checkpoints_in`), by name.
    pub fn retention_report(&self) -> Result<Vec<RetainedCheckpoint>> {
        let keep_all = self.config.max_to_keep == Some(MaxToKeep::All);
        let managed = self.retention.managed();
        let mut report: Vec<RetainedCheckpoint> = managed
            .iter()
            .zip(self.rules().kept_by(managed))
            .map(|(checkpoint, kept)| {
                let KeptBy {
                    newest: is_newest,
                    best,
                    period,
                    pinned,
                } = kept;
                let newest = if keep_all {
                    KeepReason::KeepAll
                } else {
                    KeepReason::LastN
                };
                let mut reasons = Vec::new();
                if self.latest.as_deref() == Some(checkpoint.entry.as_path()) {
                    reasons.push(KeepReason::Latest);
                }
                for (applies, reason) in [
                    (is_newest, newest),
                    (best, KeepReason::Best),
                    (period, KeepReason::Period),
                    (pinned, KeepReason::Pinned),
                ] {
                    if applies {
                        reasons.push(reason);
                    }
                }
                RetainedCheckpoint {
                    prefix: self.full_path(&checkpoint.entry),
                    reasons,
                }
            })
            .collect();
        let mut seen: HashSet<PathBuf> = report.iter().map(|r| r.prefix.clone()).collect();
        if let Some(file) = read_state(&*self.store)? {
            let directory = &self.config.directory;
            let listed = std::iter::once(&file.state.model_checkpoint_path)
                .chain(&file.state.all_model_checkpoint_paths);
            for bytes in listed {
                let entry = paths::state_entry(directory, &paths::path_from_bytes(bytes));
                let prefix = self.full_path(&entry);
                if seen.insert(prefix.clone()) {
                    let mut reasons = Vec::new();
                    if self.latest.as_deref() == Some(entry.as_path()) {
                        reasons.push(KeepReason::Latest);
                    }
                    reasons.push(KeepReason::Unmanaged);
                    report.push(RetainedCheckpoint { prefix, reasons });
                }
            }
        }
        for prefix in inspect::checkpoints_in(&*self.store, &self.config.directory)? {
            if seen.insert(prefix.clone()) {
                let (store, base) = self.locate(&prefix)?;
                let has_manifest = integrity::read_manifest(&*store, &base)
                    .ok()
                    .flatten()
                    .is_some();
                let reasons = if has_manifest {
                    vec![KeepReason::Preserved]
                } else {
                    Vec::new()
                };
                report.push(RetainedCheckpoint { prefix, reasons });
            }
        }
        Ok(report)
    }

    /// Applies the retention rules now, as the sweep after a save does but
    /// with no new checkpoint: what no rule keeps leaves the state file's
    /// list and is deleted, or preserved by the hours rule; the latest
    /// always stays. The state file is replaced first (atomically and
    /// durably), then the files are deleted, so a crash in between leaves
    /// whole checkpoints that nothing lists, never a listed one half
    /// deleted. With `dry_run` nothing changes and a read-only manager may
    /// ask.
    pub fn prune(&mut self, dry_run: bool) -> Result<Pruned> {
        if !dry_run {
            if self.config.read_only {
                return Err(Error::ReadOnly);
            }
            self.settle(true)?;
            self.finish_unfinished()?;
        }
        let Some(latest) = self.latest.clone() else {
            return Ok(Pruned::default());
        };
        let mut retention = self.retention.clone();
        // The newest position is what keeps the latest through any rules.
        if let Some(position) = retention.managed().iter().position(|m| m.entry == latest) {
            if position + 1 != retention.managed().len() {
                retention.record(retention.managed()[position].clone());
            }
        }
        let SweepOutcome {
            delete, preserved, ..
        } = retention.sweep_holding(&self.rules(), &self.upload_hold());
        let mut pruned = Pruned {
            preserved: preserved.iter().map(|e| self.full_path(e)).collect(),
            ..Pruned::default()
        };
        let mut to_delete = Vec::new();
        for entry in &delete {
            match deletable_base(entry) {
                Some(base) => {
                    pruned.deleted.push(self.full_path(entry));
                    to_delete.push(base.to_owned());
                }
                None => pruned.not_deleted.push(self.full_path(entry)),
            }
        }
        if dry_run || (delete.is_empty() && preserved.is_empty()) {
            return Ok(pruned);
        }
        let state = state_for(&latest, &retention);
        transaction::replace_state(&*self.store, &state, self.state_crc)?;
        self.retention = retention;
        self.state_crc = Some(crc32c::crc32c(&state));
        for base in to_delete {
            let prefix = self.full_path(Path::new(&base));
            match self.callbacks.delete.as_mut() {
                Some(delete) => delete(&prefix).map_err(Error::callback("delete"))?,
                None => integrity::delete_owned(
                    &*self.store,
                    &integrity::owned_files(&*self.store, &base)?,
                )?,
            }
        }
        Ok(pruned)
    }

    /// Pins (`pinned`) or unpins a managed checkpoint. A pinned checkpoint
    /// is kept by every sweep; the pin is recorded in its manifest, which
    /// is replaced atomically. Unpinning deletes nothing: the next save's
    /// sweep applies the other rules.
    pub fn set_pinned(&mut self, prefix: &Path, pinned: bool) -> Result<()> {
        if self.config.read_only {
            return Err(Error::ReadOnly);
        }
        if !Ranks::of(&self.config).is_root() {
            return Err(Error::invalid(
                "pins are made on rank 0, which writes the manifests",
            ));
        }
        self.settle(true)?;
        self.finish_unfinished()?;
        let entry = self.managed_entry(prefix)?;
        let base = deletable_base(&entry).ok_or_else(|| {
            Error::invalid(format!(
                "'{}' is not directly inside the checkpoint directory",
                prefix.display()
            ))
        })?;
        let Some(mut manifest) = integrity::read_manifest(&*self.store, base)? else {
            return Err(Error::NoManifest {
                prefix: self.full_path(&entry),
            });
        };
        if manifest.annotations.pinned != pinned {
            manifest.annotations.pinned = pinned;
            let replaced = transaction::replace_manifest(&*self.store, base, &manifest);
            if replaced.is_err() {
                // The rename may have happened before a later step failed:
                // keep to what the directory says.
                if let Ok(Some(on_disk)) = integrity::read_manifest(&*self.store, base) {
                    self.retention
                        .set_pinned(&entry, on_disk.annotations.pinned);
                }
                return replaced;
            }
        }
        self.retention.set_pinned(&entry, pinned);
        Ok(())
    }

    /// The state-file entry of a checkpoint on the managed list.
    fn managed_entry(&self, prefix: &Path) -> Result<PathBuf> {
        let entry = self.entry_of(prefix);
        if self.retention.managed().iter().any(|m| m.entry == entry) {
            Ok(entry)
        } else {
            Err(Error::invalid(format!(
                "'{}' is not a checkpoint this manager manages (it is not on the state file's \
                 list; preserved checkpoints are never deleted anyway)",
                prefix.display()
            )))
        }
    }

    /// The best managed checkpoint by the `keep_best` metric (of equal
    /// values the newer); `None` when no managed checkpoint recorded it.
    pub fn best_checkpoint(&self) -> Result<Option<PathBuf>> {
        let keep = self
            .config
            .keep_best
            .as_ref()
            .ok_or_else(|| Error::invalid("no keep_best metric is set"))?;
        Ok(self
            .retention
            .best(keep.mode)
            .map(|best| self.full_path(&best.entry)))
    }

    /// What is known of a checkpoint of this directory: its manifest's
    /// records, the state file's time, and its files.
    pub fn checkpoint_info(&self, prefix: &Path) -> Result<CheckpointInfo> {
        let (store, base) = self.locate(prefix)?;
        let unknown = || {
            Error::invalid(format!(
                "'{}' is not a checkpoint in this manager's directory",
                prefix.display()
            ))
        };
        if !Arc::ptr_eq(&store, &self.store) {
            return Err(unknown());
        }
        let entry = self.entry_of(prefix);
        let manifest = integrity::read_manifest(&*self.store, &base)?;
        let files: Vec<FileInfo> = match &manifest {
            Some(manifest) => manifest
                .files
                .iter()
                .map(|file| FileInfo {
                    suffix: file.suffix.clone(),
                    size: file.size,
                })
                .collect(),
            None => {
                let mut files = Vec::new();
                for name in integrity::owned_files(&*self.store, &base)?.files {
                    let Some(file) = self
                        .store
                        .open_read(&name)
                        .map_err(|err| Error::io_at("read", &self.full_path(&name), err))?
                    else {
                        continue;
                    };
                    let suffix = &paths::path_bytes(&name)[base.len()..];
                    files.push(FileInfo {
                        suffix: ByteString::from_bytes(suffix),
                        size: file.size(),
                    });
                }
                files
            }
        };
        if manifest.is_none() && files.is_empty() {
            return Err(unknown());
        }
        let annotations = manifest
            .as_ref()
            .map(|m| m.annotations.clone())
            .unwrap_or_default();
        Ok(CheckpointInfo {
            prefix: ByteString::from_bytes(paths::path_bytes(&self.full_path(&entry))),
            number: manifest
                .as_ref()
                .map(|m| m.number)
                .or_else(|| paths::trailing_number(&entry)),
            step: annotations.step,
            timestamp: self
                .saved_at(prefix)
                .or_else(|| manifest.as_ref().and_then(|m| m.saved_at)),
            managed: self.retention.managed().iter().any(|m| m.entry == entry),
            latest: self.latest.as_deref() == Some(entry.as_path()),
            pinned: annotations.pinned,
            metrics: annotations.metrics,
            metadata: annotations.metadata,
            has_manifest: manifest.is_some(),
            total_size: files.iter().map(|file| file.size).sum(),
            files,
        })
    }

    /// Checks a checkpoint (the latest when `prefix` is `None`) against its
    /// manifest.
    pub fn verify(&self, prefix: Option<&Path>, verification: Verification) -> Result<Integrity> {
        let prefix = match prefix {
            Some(prefix) => prefix.to_path_buf(),
            None => self
                .latest_checkpoint()
                .ok_or_else(|| Error::invalid("there is no latest checkpoint to verify"))?,
        };
        let (store, base) = self.locate(&prefix)?;
        integrity::verify(&*store, &base, verification, self.saved_at(&prefix), &[]).map(|(i, _)| i)
    }
}
