//! The commit of one checkpoint: the only code that knows the order of
//! durable steps. Phases: `begin` makes a staging directory beside the
//! checkpoints; the write phase fills it (callbacks, the tensor saver,
//! `SaveFile`); `seal` describes what was written; `commit` writes the
//! manifest and a commit record, syncs them (the commit point), then moves
//! the files into place, replaces the state file and syncs the directory;
//! `finish` deletes what the sweep dropped. `abort` before the commit point
//! removes the staging directory and nothing else (but for putting back
//! the writer's spare when the staging directory was it). `recover`, on open,
//! rolls a recorded commit forward and removes unrecorded staging.
//!
//! How files reach their final names depends on the store, and is chosen
//! once from what it can do: a rename commit on a file system
//! (`rename.rs`), early placement on object storage (`early.rs`). Both
//! share the record and the moves (`record.rs`) and recovery.
//!
//! Nothing a committed checkpoint owns is touched before the commit point:
//! a save of an existing number writes aside and replaces the old files at
//! the commit, so a failure or a kill at any instant leaves either the old
//! checkpoint or the new one, whole.

mod early;
mod record;
mod recovery;
mod rename;
mod replace;
pub(crate) mod tiers;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use self::record::{bytes_of, io_at, path_of, read_record, CommitRecord};
use crate::error::{Error, Result};
use crate::integrity::Owned;
use crate::layout::{self, file_name};
use crate::manifest::{Annotations, ByteString, FileRecord, TensorRecord};
use crate::store::{self, Kind, Store};

pub(crate) use crate::layout::staging_name;
pub use recovery::{plan_recovery, recover, run_recovery_step, RecoveryAction};
pub(crate) use replace::replace_aside;
pub use replace::{replace_manifest, replace_state};

/// How a commit gets the files of a save to their final names: one per
/// kind of store, chosen once (`strategy_for`).
trait Strategy: Sync + std::fmt::Debug {
    /// Where the write phase writes the file whose final name is
    /// `final_name` (`staged`: its name in `staging`).
    fn write_target(
        &self,
        store: &dyn Store,
        staging: &Path,
        final_name: &Path,
        staged: PathBuf,
    ) -> Result<PathBuf>;
    /// A file sealing found in staging, as `suffix` at `name`: the suffix
    /// of the checkpoint's file it stands for, and where to read it.
    fn found_in_staging<'a>(
        &self,
        base: &OsStr,
        suffix: &'a [u8],
        name: PathBuf,
    ) -> (&'a [u8], PathBuf);
    /// Makes the (empty) staging directory `staging`; says whether it was
    /// the writer's spare (`layout::SPARE_STAGING_NAME`), which may hold
    /// the old state file a commit swapped out.
    fn make_staging(&self, store: &dyn Store, staging: &Path) -> io::Result<bool> {
        store.create_dir(staging).map(|()| false)
    }
    /// Whether `name` in `staging` is the spare's old state file, which
    /// sealing passes over (it is not the save's).
    fn is_spare_state_file(&self, _staging: &Path, _name: &Path, _kind: Kind) -> bool {
        false
    }
    /// Removes the writer's spare staging directory, if it keeps one.
    fn remove_spare(&self, _store: &dyn Store) {}
    /// Every step up to the commit point, which is its last; the new state
    /// file is written aside at `state_staged`, unless the strategy writes
    /// it elsewhere.
    fn prepare(
        &self,
        store: &dyn Store,
        base: &OsStr,
        sealed: &Sealed,
        plan: &CommitPlan,
        state_staged: &Path,
    ) -> Result<CommitRecord>;
    /// Every step after the commit point but the sweep's; `recovering`
    /// when recovery runs them again.
    fn apply(
        &self,
        store: &dyn Store,
        base: &OsStr,
        record: &CommitRecord,
        recovering: bool,
    ) -> Result<()>;
    /// Removes the staging directory of `base`, and, unless `committed`,
    /// whatever of the save it placed outside it.
    fn remove_staging(&self, store: &dyn Store, base: &OsStr, committed: bool) -> io::Result<()>;
}

/// The commit for what `store` can do.
fn strategy_for(store: &dyn Store) -> &'static dyn Strategy {
    match store.capabilities().atomic_rename {
        true => &rename::RenameCommit,
        false => &early::EarlyPlacement,
    }
}

/// Files written through the library during a save, by staged prefix, so
/// that sealing need not read them again for their CRC32C.
pub(crate) type Written = Arc<Mutex<Vec<FileRecord>>>;
static OPEN_SAVES: Mutex<Option<HashMap<PathBuf, Written>>> = Mutex::new(None);

fn open_saves() -> std::sync::MutexGuard<'static, Option<HashMap<PathBuf, Written>>> {
    OPEN_SAVES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The written-files list of the save whose staged prefix is `prefix`.
pub(crate) fn save_in_progress(prefix: &Path) -> Option<Written> {
    open_saves().as_ref()?.get(prefix).cloned()
}

/// A save between `begin` and `commit` or `abort`.
#[derive(Debug)]
pub struct Transaction {
    store: Arc<dyn Store>,
    strategy: &'static dyn Strategy,
    base: OsString,
    staging: PathBuf,
    written: Written,
    /// In a save across ranks, this rank's part of every file name after
    /// the base (`.rank-00003-of-00008`); empty for one process.
    shard: OsString,
    /// Whether this transaction made the staging directory (and removes it
    /// on abort): rank 0 or the only process.
    owns_staging: bool,
    /// Whether the staging directory was the spare, which an abort puts
    /// back so that the directory holds what it held before the save.
    from_spare: bool,
    /// The tensors the built-in saver wrote, for the manifest.
    tensors: Mutex<Option<SavedTensors>>,
}

/// What the built-in saver recorded of a save: its tensors (this rank's
/// boxes, then every rank's on rank 0) and the number of ranks that saved.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SavedTensors {
    pub world_size: u32,
    pub tensors: Vec<TensorRecord>,
}

impl SavedTensors {
    /// Adds another rank's records: its boxes of tensors of the same name.
    pub(crate) fn merge(&mut self, other: SavedTensors) {
        let mut known: HashMap<String, usize> = self
            .tensors
            .iter()
            .enumerate()
            .map(|(at, tensor)| (tensor.name.clone(), at))
            .collect();
        for record in other.tensors {
            match known.get(&record.name) {
                Some(&at) => self.tensors[at].boxes.extend(record.boxes),
                None => {
                    known.insert(record.name.clone(), self.tensors.len());
                    self.tensors.push(record);
                }
            }
        }
    }
}

/// What the staging directory holds once the write phase is over.
#[derive(Debug)]
pub struct Sealed {
    files: Vec<FileRecord>,
    directories: Vec<PathBuf>,
    tensors: Option<SavedTensors>,
}

/// One rank's sealed files, as it sends them to rank 0.
#[derive(Debug, Serialize, Deserialize)]
struct Fragment {
    files: Vec<FileRecord>,
    directories: Vec<ByteString>,
    #[serde(default)]
    tensors: Option<SavedTensors>,
}

impl Sealed {
    /// This rank's part, for rank 0.
    pub fn to_fragment(&self) -> Vec<u8> {
        let fragment = Fragment {
            files: self.files.clone(),
            directories: self.directories.iter().map(|d| bytes_of(d)).collect(),
            tensors: self.tensors.clone(),
        };
        serde_json::to_vec(&fragment).expect("a fragment always serialises")
    }

    /// Adds another rank's part (rank 0).
    pub fn add_fragment(&mut self, bytes: &[u8]) -> Result<()> {
        let fragment: Fragment = serde_json::from_slice(bytes)
            .map_err(|err| Error::invalid(format!("a rank sent an unreadable file list: {err}")))?;
        for file in &fragment.files {
            crate::manifest::check_suffix(file.suffix.as_bytes())
                .map_err(|err| Error::invalid(format!("a rank sent {err}")))?;
        }
        self.files.extend(fragment.files);
        self.directories
            .extend(fragment.directories.iter().map(path_of));
        if let Some(tensors) = fragment.tensors {
            self.tensors
                .get_or_insert_with(Default::default)
                .merge(tensors);
        }
        Ok(())
    }
}

/// The decisions the manager made for this commit.
#[derive(Debug)]
pub struct CommitPlan {
    pub number: u64,
    pub saved_at: f64,
    /// Step, metrics, metadata and pin, recorded in the manifest.
    pub annotations: Annotations,
    /// What the checkpoint of the same name owned before (a number saved
    /// again); files the new one does not have are removed.
    pub replaced: Owned,
    /// Checkpoints the sweep dropped, with what each owns.
    pub swept: Vec<(OsString, Owned)>,
    /// The CRC32C of the state file as the manager last saw it.
    pub state_before: Option<u32>,
    /// The new state file's bytes.
    pub state_after: Vec<u8>,
}

impl Transaction {
    /// Starts a save of `<base>`: an empty staging directory. One left by
    /// an earlier save of the same name is recovered first. The commit's
    /// strategy is chosen here, from what the store can do.
    pub fn begin(store: Arc<dyn Store>, base: &OsStr) -> Result<Transaction> {
        let strategy = strategy_for(&*store);
        let staging = staging_name(base);
        if store
            .kind(&staging)
            .map_err(io_at("inspect", &*store, &staging))?
            .is_some()
        {
            let record = read_record(&*store, base)?;
            recovery::recover_staging(
                &*store,
                strategy,
                base,
                record.as_ref(),
                &mut |_| {},
                &mut |_| false,
            )?;
        }
        let from_spare = strategy.make_staging(&*store, &staging).map_err(io_at(
            "create staging directory",
            &*store,
            &staging,
        ))?;
        let mut transaction = Transaction::open(store, strategy, base, staging, true);
        transaction.from_spare = from_spare;
        Ok(transaction)
    }

    /// Rank 0's save across ranks: `begin`, its own files named with
    /// `shard`.
    pub fn begin_shard(store: Arc<dyn Store>, base: &OsStr, shard: &OsStr) -> Result<Transaction> {
        let mut transaction = Transaction::begin(store, base)?;
        transaction.set_shard(shard);
        Ok(transaction)
    }

    /// Another rank's part of a save across ranks: it writes its files,
    /// named with `shard`, into the staging directory rank 0 made.
    pub fn join_shard(store: Arc<dyn Store>, base: &OsStr, shard: &OsStr) -> Transaction {
        let (strategy, staging) = (strategy_for(&*store), staging_name(base));
        let mut transaction = Transaction::open(store, strategy, base, staging, false);
        transaction.set_shard(shard);
        transaction
    }

    fn open(
        store: Arc<dyn Store>,
        strategy: &'static dyn Strategy,
        base: &OsStr,
        staging: PathBuf,
        owns_staging: bool,
    ) -> Transaction {
        let transaction = Transaction {
            strategy,
            written: Written::default(),
            base: base.to_owned(),
            staging,
            store,
            shard: OsString::new(),
            owns_staging,
            from_spare: false,
            tensors: Mutex::new(None),
        };
        transaction.register();
        transaction
    }

    /// Makes the write phase's files known to `SaveFile` by prefix.
    fn register(&self) {
        open_saves()
            .get_or_insert_with(HashMap::new)
            .insert(self.prefix(), self.written.clone());
    }

    fn set_shard(&mut self, shard: &OsStr) {
        if let Some(saves) = open_saves().as_mut() {
            saves.remove(&self.prefix());
        }
        self.shard = shard.to_owned();
        self.register();
    }

    /// A file this rank writes, by its suffix after the rank's prefix.
    fn staged(&self, suffix: &[u8]) -> PathBuf {
        self.staged_file(&self.in_checkpoint(suffix))
    }

    /// Whether `name` in staging is another rank's file of this save (its
    /// rank checks it). Rank 0 refuses anything else there, as one process
    /// would.
    fn is_another_ranks(&self, name: &Path) -> bool {
        name.strip_prefix(&self.staging).is_ok_and(|in_staging| {
            layout::is_another_ranks(
                in_staging.as_os_str().as_bytes(),
                self.base.as_bytes(),
                self.shard.as_bytes(),
            )
        })
    }

    /// A file of the checkpoint (any rank's) in staging.
    fn staged_file(&self, suffix_in_checkpoint: &[u8]) -> PathBuf {
        self.staging
            .join(file_name(&self.base, suffix_in_checkpoint))
    }

    /// A suffix after this rank's prefix as a suffix of the checkpoint.
    fn in_checkpoint(&self, suffix: &[u8]) -> Vec<u8> {
        [self.shard.as_bytes(), suffix].concat()
    }

    /// The prefix the write phase writes under: `<dir>/<base>.ckpt-staging/<base>`.
    pub fn prefix(&self) -> PathBuf {
        self.store.local_path(&self.staged(b""))
    }

    /// Writes `<prefix><suffix>`, `size` bytes, through `write`, with its
    /// CRC32C computed on the way, and remembers it for the manifest.
    pub fn write_file(
        &self,
        suffix: &str,
        size: u64,
        write: impl FnOnce(&mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()>,
    ) -> Result<()> {
        let final_name = file_name(&self.base, &self.in_checkpoint(suffix.as_bytes()));
        let staged = self.staged(suffix.as_bytes());
        let name = self
            .strategy
            .write_target(&*self.store, &self.staging, &final_name, staged)?;
        self.create_parents(&name)?;
        let mut file = self
            .store
            .create(&name)
            .map_err(io_at("create", &*self.store, &name))?;
        file.expect_size(size);
        let (mut written, mut crc) = (0u64, 0u32);
        write(&mut |bytes| {
            crc = crc32c::crc32c_append(crc, bytes);
            written += bytes.len() as u64;
            file.write_all(bytes)
        })
        .and_then(|()| match written == size {
            true => file.finish(),
            false => Err(io::Error::other(format!(
                "{written} bytes written where {size} were announced"
            ))),
        })
        .map_err(io_at("write", &*self.store, &name))?;
        self.written.lock().unwrap().push(FileRecord {
            suffix: ByteString::from_bytes(&self.in_checkpoint(suffix.as_bytes())),
            size,
            crc32c: crc,
        });
        Ok(())
    }

    /// The suffix in the checkpoint of this rank's file `<prefix><suffix>`.
    pub fn file_suffix(&self, suffix: &str) -> ByteString {
        ByteString::from_bytes(&self.in_checkpoint(suffix.as_bytes()))
    }

    /// Records the tensors the built-in saver wrote, for the manifest.
    pub fn record_tensors(&self, tensors: SavedTensors) {
        *self.tensors.lock().unwrap() = Some(tensors);
    }

    fn create_parents(&self, name: &Path) -> Result<()> {
        create_parents(&*self.store, name)
    }

    /// Describes what the write phase left in staging: every regular file
    /// named `<base>` or `<base>.<suffix>`, or inside a `<base>` directory,
    /// with its size and CRC32C (read again only for files not written
    /// through the library). Anything else there is an error.
    pub fn seal(&self) -> Result<Sealed> {
        let known = std::mem::take(&mut *self.written.lock().unwrap());
        let mut sealed = Sealed {
            files: Vec::new(),
            directories: Vec::new(),
            tensors: self.tensors.lock().unwrap().take(),
        };
        if self.owns_staging {
            sealed.directories.push(self.staging.clone());
        }
        let mut pending = vec![self.staging.clone()];
        let staged_root = self.staged(b"");
        // Suffixes are the checkpoint's: after the base, shard included.
        let root_len = staged_root.as_os_str().len() - self.shard.len();
        while let Some(directory) = pending.pop() {
            let entries =
                self.store
                    .list(&directory)
                    .map_err(io_at("list", &*self.store, &directory))?;
            for entry in entries {
                let name = directory.join(&entry.name);
                if self
                    .strategy
                    .is_spare_state_file(&self.staging, &name, entry.kind)
                {
                    continue; // written over at the commit
                }
                let suffix = &name.as_os_str().as_bytes()[root_len.min(name.as_os_str().len())..];
                let mine = name
                    .as_os_str()
                    .as_bytes()
                    .starts_with(staged_root.as_os_str().as_bytes());
                if !mine && self.is_another_ranks(&name) {
                    continue;
                }
                if !mine || crate::manifest::check_suffix(suffix).is_err() {
                    return Err(Error::invalid(format!(
                        "the save wrote '{}', which is not a file of the checkpoint: write \
                         only '<prefix>', '<prefix>.<suffix>' or inside a '<prefix>' directory",
                        self.store.shown(&name).display()
                    )));
                }
                match entry.kind {
                    Kind::Directory => {
                        sealed.directories.push(name.clone());
                        pending.push(name);
                    }
                    Kind::File => {
                        let (suffix, name) =
                            self.strategy
                                .found_in_staging(&self.base, suffix, name.clone());
                        let file = self
                            .store
                            .open_read(&name)
                            .map_err(io_at("read", &*self.store, &name))?
                            .ok_or_else(|| {
                                Error::io_at(
                                    "read",
                                    &self.store.shown(&name),
                                    io::ErrorKind::NotFound.into(),
                                )
                            })?;
                        let record = known
                            .iter()
                            .find(|r| r.suffix.as_bytes() == suffix && r.size == file.size())
                            .cloned();
                        let record = match record {
                            Some(record) => record,
                            None => {
                                let (size, crc32c) = store::checksum(&*file, &mut |_| {})
                                    .map_err(io_at("read", &*self.store, &name))?;
                                FileRecord {
                                    suffix: ByteString::from_bytes(suffix),
                                    size,
                                    crc32c,
                                }
                            }
                        };
                        sealed.files.push(record);
                    }
                    Kind::Other => {
                        return Err(Error::invalid(format!(
                            "the save made '{}', which is neither a regular file nor a directory",
                            self.store.shown(&name).display()
                        )))
                    }
                }
            }
        }
        if sealed.files.is_empty() {
            return Err(Error::invalid(format!(
                "the save wrote no file under '{}'",
                self.prefix().display()
            )));
        }
        Ok(sealed)
    }

    /// Writes the manifest and the commit record, syncs everything staged
    /// (the commit point), then moves the files into place, replaces the
    /// state file and syncs the directory. An error before the commit point
    /// aborts; after it, the record stays for `recover` to finish, and the
    /// error says so.
    pub fn commit(self, sealed: Sealed, plan: CommitPlan) -> Result<Committed> {
        let state_staged = layout::temporary_name(Path::new(layout::STATE_FILE_NAME));
        let prepared =
            self.strategy
                .prepare(&*self.store, &self.base, &sealed, &plan, &state_staged);
        let record = match prepared {
            Ok(record) => record,
            Err(err) => {
                let prefix = self.store.shown(Path::new(&self.base));
                return Err(match self.undo_commit(&state_staged) {
                    Ok(()) => err,
                    // The record may be durable: recovery will roll it forward.
                    Err(undo) => Error::io(
                        format!(
                            "commit '{}' ({err}) or undo it ({undo}); it may still be committed \
                             when the directory is next opened",
                            prefix.display()
                        ),
                        undo,
                    ),
                });
            }
        };
        let applied = self
            .strategy
            .apply(&*self.store, &self.base, &record, false);
        applied.map_err(|err| {
            if let Error::Conflict(_) = err {
                // Another writer's state won the conditional write: never
                // roll this commit forward over it.
                let _ = self.undo_commit(&state_staged);
                return err;
            }
            let prefix = self.store.shown(Path::new(&self.base));
            Error::io(
                format!(
                    "finish the commit of '{}' (it is committed: the next save or open finishes it)",
                    prefix.display()
                ),
                io::Error::other(err.to_string()),
            )
        })?;
        Ok(Committed {
            store: self.store.clone(),
            strategy: self.strategy,
            base: self.base.clone(),
            record,
        })
    }

    /// Gives up before the commit point: the staging directory goes,
    /// nothing else was touched. A staging directory that cannot be removed
    /// is removed by the next save of the same name or the next open.
    pub fn abort(self) {
        if self.owns_staging {
            let _ = self.undo();
        }
    }

    /// Makes this rank's sealed files durable, before it reports them to
    /// rank 0: the commit point needs every rank's files on disk.
    pub fn sync_shard(&self, sealed: &Sealed) -> Result<()> {
        let files: Vec<PathBuf> = sealed
            .files
            .iter()
            .map(|f| self.staged_file(f.suffix.as_bytes()))
            .collect();
        self.store
            .sync_files(&files)
            .map_err(io_at("sync", &*self.store, &self.staging))?;
        self.store
            .sync_directories(&sealed.directories)
            .map_err(io_at("sync", &*self.store, &self.staging))
    }

    /// `undo`, then the state file written aside: once the record is gone
    /// nothing can roll it forward. The directory is as it was.
    fn undo_commit(&self, state_staged: &Path) -> io::Result<()> {
        self.undo()?;
        self.store.remove_file(state_staged)
    }

    /// Removes the commit record first, so that what is left is never
    /// rolled forward, then the staging directory.
    fn undo(&self) -> io::Result<()> {
        self.store.remove_file(&layout::record_name(&self.base))?;
        if self.from_spare && self.empty_into_spare().is_ok() {
            return Ok(());
        }
        self.strategy
            .remove_staging(&*self.store, &self.base, false)?;
        if self.from_spare {
            let _ = self.store.create_dir(Path::new(layout::SPARE_STAGING_NAME));
        }
        Ok(())
    }

    /// Empties the staging directory and makes it the spare again: a
    /// rename, which a full disk still allows where a new directory may
    /// not be.
    fn empty_into_spare(&self) -> io::Result<()> {
        if self.store.kind(&self.staging)? != Some(Kind::Directory) {
            return Err(io::ErrorKind::NotFound.into());
        }
        for entry in self.store.list(&self.staging)? {
            let name = self.staging.join(&entry.name);
            match entry.kind {
                Kind::Directory => self.store.remove_staging(&name)?,
                _ => self.store.remove_file(&name)?,
            }
        }
        self.store
            .rename(&self.staging, Path::new(layout::SPARE_STAGING_NAME))
    }
}

impl Drop for Transaction {
    /// The write phase is over, however the transaction ended.
    fn drop(&mut self) {
        if let Some(saves) = open_saves().as_mut() {
            saves.remove(&self.prefix());
        }
    }
}

/// A commit that is durable and in place; what the sweep dropped is still
/// to be deleted.
#[derive(Debug)]
pub struct Committed {
    store: Arc<dyn Store>,
    strategy: &'static dyn Strategy,
    base: OsString,
    record: CommitRecord,
}

impl Committed {
    /// Deletes the swept checkpoints' files (unless `deleted_by_callback`)
    /// and the staging directory.
    pub fn finish(self, deleted_by_callback: bool) -> Result<()> {
        let store = &*self.store;
        finish(
            store,
            self.strategy,
            &self.base,
            &self.record,
            None,
            &mut |_| deleted_by_callback,
        )
    }
}

/// Removes the writer's spare staging directory as it closes. A failure
/// leaves it to the next writer's recovery.
pub fn remove_spare(store: &dyn Store) {
    strategy_for(store).remove_spare(store);
}

/// Creates the directories on the way to `name` (a file inside a
/// `<prefix>/` directory) that are missing.
pub(crate) fn create_parents(store: &dyn Store, name: &Path) -> Result<()> {
    let mut parent = PathBuf::new();
    let components: Vec<_> = name.components().collect();
    for component in &components[..components.len().saturating_sub(1)] {
        parent.push(component);
        let missing = store
            .kind(&parent)
            .map_err(io_at("inspect", store, &parent))?
            .is_none();
        if missing {
            store
                .create_dir(&parent)
                .map_err(io_at("create directory", store, &parent))?;
        }
    }
    Ok(())
}

/// Deletes what the record's sweep dropped (see `record::delete_swept`),
/// then removes the staging directory.
fn finish(
    store: &dyn Store,
    strategy: &dyn Strategy,
    base: &OsStr,
    record: &CommitRecord,
    named: Option<&[Vec<u8>]>,
    on_swept: &mut dyn FnMut(&OsStr) -> bool,
) -> Result<()> {
    record::delete_swept(store, record, named, on_swept)?;
    let staging = staging_name(base);
    strategy.remove_staging(store, base, true).map_err(io_at(
        "remove staging directory",
        store,
        &staging,
    ))
}
