//! One save after the manager decided it, on every rank alike (one
//! process is the 1-rank case): the write phase (the save callback, the
//! tensors), then the plan and the commit. It holds all it needs, so it
//! runs on the calling thread (`save`) or on the library's background
//! thread (`save_async`) alike; the manager applies what it reports.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::coordination::Ranks;
use super::state_for;
use crate::config::{DeleteFn, SaveFn};
use crate::error::{Error, Result};
use crate::integrity;
use crate::layout::{deletable_base, file_name, pending_marker_name, staging_name};
use crate::manifest::{Annotations, FileRecord, Manifest};
use crate::policy::{Hold, Managed, Retention, Rules, Traits};
use crate::sharding::{declarations, plan_writes};
use crate::store::Store;
use crate::tensor_file::{write_tensor_file, TensorSnapshot, WritePlan};
use crate::tensors::TensorRegistry;
use crate::transaction::{CommitPlan, SavedTensors, Sealed, Transaction};

/// Where the built-in saver's bytes come from.
pub(crate) enum Tensors<'a> {
    None,
    /// Straight from the registered buffers (a blocking save).
    Registered(&'a TensorRegistry, BTreeMap<String, String>),
    /// The copy `save_async` took.
    Snapshot(&'a TensorSnapshot),
    /// Not tensors but every file of a committed checkpoint in another
    /// store: an upload to the remote tier, or a download from it.
    CopyOf(&'a CopySource),
}

/// A committed checkpoint to copy, as its manifest lists its files.
pub(crate) struct CopySource {
    pub store: Arc<dyn Store>,
    pub base: OsString,
    pub manifest: Manifest,
    /// The other node-local ranks' pieces of the same save, which they
    /// left in the remote (an upload across ranks): copied in too.
    pub others: Vec<CopySource>,
}

impl CopySource {
    /// A checkpoint of one source (one process, or one rank's pieces).
    pub fn single(store: Arc<dyn Store>, base: OsString, manifest: Manifest) -> CopySource {
        CopySource {
            store,
            base,
            manifest,
            others: Vec::new(),
        }
    }
}

/// The decisions a save's commit needs, made on the calling thread.
pub(crate) struct SaveJob {
    pub store: Arc<dyn Store>,
    pub directory: PathBuf,
    pub base: OsString,
    pub number: u64,
    pub annotations: Annotations,
    pub traits: Traits,
    /// The retention before this save.
    pub retention: Retention,
    pub rules: Rules,
    /// Checkpoints the sweep keeps while their upload is not done.
    pub hold: Hold,
    pub state_before: Option<u32>,
}

/// The manager's new state after a committed save.
pub(crate) struct Saved {
    pub retention: Retention,
    /// Held checkpoints the hold's limit made the sweep drop.
    pub released: Vec<PathBuf>,
    pub state_crc: u32,
    pub saved_at: f64,
}

/// What a save job reports back.
pub(crate) struct JobReport {
    /// What this rank committed to its directory; `None` when it committed
    /// nothing, or when rank 0 committed this directory's state for it.
    pub committed: Option<Saved>,
    /// The save's outcome, the same on every rank.
    pub result: Result<()>,
    /// For the log callback, which runs on the calling thread.
    pub warnings: Vec<String>,
    /// The commit got past its commit point but not to its end.
    pub unfinished: bool,
}

/// The callbacks a save job runs, and its time.
pub(crate) struct JobCallbacks<'a> {
    pub save: Option<&'a mut SaveFn>,
    pub delete: Option<&'a mut DeleteFn>,
    /// Gives the save's time once the files are written (read on rank 0).
    pub now: &'a mut dyn FnMut() -> Result<f64>,
}

impl SaveJob {
    /// Writes, commits and deletes what the sweep dropped, across `ranks`.
    pub fn run(self, ranks: &Ranks, tensors: Tensors, callbacks: JobCallbacks) -> JobReport {
        let (mut warnings, mut unfinished) = (Vec::new(), false);
        let committed = self.commit(ranks, tensors, callbacks, &mut warnings, &mut unfinished);
        let (committed, result) = match committed {
            Ok(committed) => (committed, Ok(())),
            Err(err) => (None, Err(err)),
        };
        JobReport {
            committed,
            result: ranks.commit_outcome(result),
            warnings,
            unfinished,
        }
    }

    fn commit(
        &self,
        ranks: &Ranks,
        tensors: Tensors,
        callbacks: JobCallbacks,
        warnings: &mut Vec<String>,
        unfinished: &mut bool,
    ) -> Result<Option<Saved>> {
        let JobCallbacks { save, delete, now } = callbacks;
        let transaction = ranks.begin(&self.store, &self.base)?;
        let written = self
            .write(&transaction, ranks, save, tensors)
            .and_then(|()| transaction.seal())
            .and_then(|sealed| {
                ranks.sync_before_commit(&transaction, &sealed)?;
                Ok(sealed)
            });
        let timed = ranks
            .agree(written, "writing the ranks' files")
            .and_then(|sealed| {
                let now = ranks.share(ranks.is_root().then(now), "reading the save's time")?;
                Ok((sealed, now))
            });
        let (sealed, now) = match timed {
            Ok(timed) => timed,
            Err(err) => {
                transaction.abort();
                return Err(err);
            }
        };
        ranks.commit(transaction, sealed, |transaction, sealed| {
            self.commit_sealed(transaction, sealed, now, delete, warnings, unfinished)
        })
    }

    /// Plans and commits what the write phase sealed (every rank's files
    /// on rank 0 of a shared directory), then deletes what the sweep
    /// dropped.
    fn commit_sealed(
        &self,
        transaction: Transaction,
        sealed: Sealed,
        now: f64,
        delete: Option<&mut DeleteFn>,
        warnings: &mut Vec<String>,
        unfinished: &mut bool,
    ) -> Result<Saved> {
        let (plan, retention, released) = match self.plan(now, warnings) {
            Ok(planned) => planned,
            Err(err) => {
                transaction.abort();
                return Err(err);
            }
        };
        let swept: Vec<OsString> = plan.swept.iter().map(|(base, _)| base.clone()).collect();
        let saved = Saved {
            retention,
            released,
            state_crc: crc32c::crc32c(&plan.state_after),
            saved_at: plan.saved_at,
        };
        let committed = transaction.commit(sealed, plan).inspect_err(|_| {
            // A commit left to finish: its staging directory, or the
            // pending marker a new checkpoint's staging directory became.
            let left = |name: &Path| self.store.kind(name).ok().flatten().is_some();
            *unfinished = left(&staging_name(&self.base)) || left(&pending_marker_name(&self.base));
        })?;
        let deleted_by_callback = delete.is_some();
        if let Some(delete) = delete {
            for old in &swept {
                let prefix = self.directory.join(old);
                if let Err(err) = delete(&prefix).map_err(Error::callback("delete")) {
                    warnings.push(format!("could not delete '{}': {err}", prefix.display()));
                }
            }
        }
        if let Err(err) = committed.finish(deleted_by_callback) {
            *unfinished = true;
            warnings.push(format!(
                "{err}; '{}' is committed, the old checkpoints are deleted by the next save or open",
                self.directory.join(&self.base).display()
            ));
        }
        Ok(saved)
    }

    /// Runs the save callback and writes the tensors into the
    /// transaction's staging prefix. Every rank tells the others its
    /// tensors first (every rank, so that none waits for one that has
    /// none), and every rank checks them alike.
    pub fn write(
        &self,
        transaction: &Transaction,
        ranks: &Ranks,
        save: Option<&mut SaveFn>,
        tensors: Tensors,
    ) -> Result<()> {
        let declared = match &tensors {
            Tensors::Registered(registry, _) => declarations(registry, ranks.has_other_ranks()),
            _ => Vec::new(),
        };
        let all = ranks.gather_all(&declared, "comparing the ranks' tensors")?;
        let plan = WritePlan {
            rank: ranks.rank(),
            world_size: ranks.size(),
            writes: plan_writes(&all, ranks.rank(), ranks.share_one_directory())?,
        };
        if let Some(save) = save {
            save(&transaction.prefix(), self.number).map_err(Error::callback("save"))?;
        }
        match tensors {
            Tensors::None => Ok(()),
            Tensors::Registered(registry, metadata) => {
                write_tensor_file(transaction, registry, &metadata, &plan)
            }
            Tensors::Snapshot(snapshot) => snapshot.write(transaction),
            Tensors::CopyOf(source) => copy_files(transaction, source),
        }
    }

    /// The retention after this save and the commit that makes it so: the
    /// new state, what the sweep drops and what a re-saved number replaces.
    fn plan(
        &self,
        now: f64,
        warnings: &mut Vec<String>,
    ) -> Result<(CommitPlan, Retention, Vec<PathBuf>)> {
        let entry = Path::new(&self.base);
        let mut retention = self.retention.clone();
        retention.record(Managed {
            entry: entry.to_path_buf(),
            timestamp: now,
            traits: self.traits,
        });
        let outcome = retention.sweep_holding(&self.rules, &self.hold);
        let mut swept = Vec::new();
        for old in &outcome.delete {
            match deletable_base(old) {
                Some(old_base) if old_base != self.base => swept.push((
                    old_base.to_owned(),
                    integrity::owned_files(&*self.store, old_base)?,
                )),
                Some(_) => {}
                None => warnings.push(format!(
                    "not deleting '{}': it is not directly inside the checkpoint directory",
                    old.display()
                )),
            }
        }
        let plan = CommitPlan {
            number: self.number,
            saved_at: now,
            annotations: self.annotations.clone(),
            replaced: integrity::owned_files(&*self.store, &self.base)?,
            swept,
            state_before: self.state_before,
            state_after: state_for(entry, &retention),
        };
        Ok((plan, retention, outcome.released))
    }
}

/// Writes every file `source`'s manifest lists (and its `others`') into
/// the transaction, checking each one's CRC32C against the manifest as it
/// is read; the tensor table is every source's.
fn copy_files(transaction: &Transaction, source: &CopySource) -> Result<()> {
    let mut tensors = SavedTensors {
        world_size: source.manifest.world_size.unwrap_or(1),
        tensors: Vec::new(),
    };
    for part in std::iter::once(source).chain(&source.others) {
        for record in &part.manifest.files {
            copy_file(part, record, &mut |suffix, size, stream| {
                transaction.write_file(suffix, size, stream)
            })?;
        }
        tensors.merge(SavedTensors {
            world_size: tensors.world_size,
            tensors: part.manifest.tensors.clone(),
        });
    }
    if !tensors.tensors.is_empty() {
        transaction.record_tensors(tensors);
    }
    Ok(())
}

/// Where `copy_file` writes a file: its suffix, its size and the stream of
/// its bytes.
pub(crate) type CopySink<'a> = dyn FnMut(
        &str,
        u64,
        &mut dyn FnMut(&mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()>,
    ) -> Result<()>
    + 'a;

/// Copies the file `record` of `source` through `sink`, its size checked
/// before and its CRC32C after.
pub(crate) fn copy_file(
    source: &CopySource,
    record: &FileRecord,
    sink: &mut CopySink,
) -> Result<()> {
    const CHUNK: u64 = 8 << 20;
    let store = &*source.store;
    let suffix = std::str::from_utf8(record.suffix.as_bytes()).map_err(|_| {
        Error::invalid(format!(
            "'{}' has a file name that is not UTF-8; it is not copied",
            store.shown(Path::new(&source.base)).display()
        ))
    })?;
    let name = file_name(&source.base, suffix.as_bytes());
    let shown = store.shown(&name);
    let file = store
        .open_read(&name)
        .map_err(|err| Error::io_at("read", &shown, err))?
        .ok_or_else(|| Error::Damaged {
            prefix: store.shown(Path::new(&source.base)),
            detail: format!("'{}' is missing", shown.display()),
        })?;
    if file.size() != record.size {
        return Err(Error::Damaged {
            prefix: store.shown(Path::new(&source.base)),
            detail: format!(
                "'{}' has {} bytes where its manifest lists {}",
                shown.display(),
                file.size(),
                record.size
            ),
        });
    }
    let mut crc = 0u32;
    sink(suffix, record.size, &mut |write| {
        let mut buffer = vec![0u8; CHUNK.min(record.size) as usize];
        let mut offset = 0u64;
        while offset < record.size {
            let chunk = &mut buffer[..CHUNK.min(record.size - offset) as usize];
            file.read_exact_at(chunk, offset)?;
            crc = crc32c::crc32c_append(crc, chunk);
            write(chunk)?;
            offset += chunk.len() as u64;
        }
        Ok(())
    })?;
    integrity::check_crc(
        &store.shown(Path::new(&source.base)),
        &shown,
        crc,
        record.crc32c,
    )
}
