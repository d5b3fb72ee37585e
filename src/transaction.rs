//! The commit of one checkpoint: the only code that knows the order of
//! durable steps. Phases: `begin` makes a staging directory beside the
//! checkpoints; the write phase fills it (callbacks, the tensor saver,
//! `SaveFile`); `seal` describes what was written; `commit` writes the
//! manifest and a commit record, syncs them (the commit point), then moves
//! the files into place, replaces the state file and syncs the directory;
//! `finish` deletes what the sweep dropped. `abort` before the commit point
//! removes the staging directory and nothing else. `recover`, on open,
//! rolls a recorded commit forward and removes unrecorded staging.
//!
//! Nothing a committed checkpoint owns is touched before the commit point:
//! a save of an existing number writes aside and replaces the old files by
//! renames, so a failure or a kill at any instant leaves either the old
//! checkpoint or the new one, whole.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::integrity::{self, file_name, Owned};
use crate::manifest::{
    Annotations, ByteString, FileRecord, Manifest, LEGACY_PENDING_SUFFIX, MANIFEST_SUFFIX,
    MAX_MANIFEST_BYTES,
};
use crate::paths::STATE_FILE_NAME;
use crate::state::CheckpointState;
use crate::state_file::{read_state_bytes, MAX_STATE_FILE_BYTES};
use crate::store::{self, random_hex32, Kind, Store};

/// `<base>.ckpt-staging`: the directory a save of `<base>` writes into.
pub const STAGING_SUFFIX: &str = ".ckpt-staging";
/// The commit record inside the staging directory; its presence, durable,
/// is the commit point.
const RECORD_NAME: &str = "commit-record.json";
/// On object storage, a new file is placed at its final name before the
/// commit point (saving the server-side copy a move costs); this empty
/// marker in staging, `<staging>/<file>.ckpt-early`, written first, lets
/// an abort or recovery delete it again.
const EARLY_SUFFIX: &str = ".ckpt-early";
const RECORD_FORMAT: &str = "ckpt-manager-commit";

/// Suffixes of names this library uses for its own bookkeeping, never
/// files of a checkpoint.
pub fn is_reserved_suffix(suffix: &[u8]) -> bool {
    suffix == STAGING_SUFFIX.as_bytes() || suffix == LEGACY_PENDING_SUFFIX.as_bytes()
}

fn io_at(action: &str, store: &dyn Store, name: &Path) -> impl FnOnce(io::Error) -> Error {
    let path = store.shown(name);
    let action = action.to_owned();
    move |err| Error::io_at(&action, &path, err)
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
    base: OsString,
    staging: PathBuf,
    written: Written,
    /// In a save across ranks, this rank's part of every file name after
    /// the base (`.rank-00003-of-00008`); empty for one process.
    shard: OsString,
    /// Whether this transaction made the staging directory (and removes it
    /// on abort): rank 0 or the only process.
    owns_staging: bool,
}

/// What the staging directory holds once the write phase is over.
#[derive(Debug)]
pub struct Sealed {
    files: Vec<FileRecord>,
    directories: Vec<PathBuf>,
}

/// One rank's sealed files, as it sends them to rank 0.
#[derive(Debug, Serialize, Deserialize)]
struct Fragment {
    files: Vec<FileRecord>,
    directories: Vec<ByteString>,
}

impl Sealed {
    /// This rank's part, for rank 0.
    pub fn to_fragment(&self) -> Vec<u8> {
        let fragment = Fragment {
            files: self.files.clone(),
            directories: self.directories.iter().map(|d| bytes_of(d)).collect(),
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

#[derive(Debug, Serialize, Deserialize)]
struct SweptRecord {
    base: ByteString,
    files: Vec<ByteString>,
    directories: Vec<ByteString>,
}

/// What recovery needs to finish a commit: written, synced, before the
/// first file of the directory changes.
#[derive(Debug, Serialize, Deserialize)]
struct CommitRecord {
    format: String,
    version: u32,
    /// Suffixes to move from staging into place, the manifest last.
    moves: Vec<ByteString>,
    /// Names of the replaced checkpoint's files the new one lacks.
    remove: Vec<ByteString>,
    remove_directories: Vec<ByteString>,
    state_before: Option<u32>,
    /// The new state file, written and synced aside before the commit point.
    state_staged: ByteString,
    swept: Vec<SweptRecord>,
}

fn bytes_of(path: &Path) -> ByteString {
    ByteString::from_bytes(path.as_os_str().as_bytes())
}

fn path_of(bytes: &ByteString) -> PathBuf {
    PathBuf::from(OsString::from_vec(bytes.as_bytes().to_vec()))
}

pub(crate) fn staging_name(base: &OsStr) -> PathBuf {
    file_name(base, STAGING_SUFFIX.as_bytes())
}

impl Transaction {
    /// Starts a save of `<base>`: an empty staging directory. One left by
    /// an earlier save of the same name is recovered first.
    pub fn begin(store: Arc<dyn Store>, base: &OsStr) -> Result<Transaction> {
        let staging = staging_name(base);
        if store
            .kind(&staging)
            .map_err(io_at("inspect", &*store, &staging))?
            .is_some()
        {
            let record = read_record(&*store, base)?;
            recover_staging(&*store, base, record.as_ref(), &mut |_| {}, &mut |_| false)?;
        }
        store
            .create_dir(&staging)
            .map_err(io_at("create staging directory", &*store, &staging))?;
        Ok(Transaction::open(
            store,
            base,
            staging,
            OsString::new(),
            true,
        ))
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
        let staging = staging_name(base);
        let mut transaction = Transaction::open(store, base, staging, OsString::new(), false);
        transaction.set_shard(shard);
        transaction
    }

    fn open(
        store: Arc<dyn Store>,
        base: &OsStr,
        staging: PathBuf,
        shard: OsString,
        owns_staging: bool,
    ) -> Transaction {
        let transaction = Transaction {
            written: Written::default(),
            base: base.to_owned(),
            staging,
            store,
            shard,
            owns_staging,
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
    /// rank checks it): `<base>.rank-NNNNN` and this rank's `-of-SSSSS`.
    /// Rank 0 refuses anything else there, as one process would.
    fn is_another_ranks(&self, name: &Path) -> bool {
        let Some(of_size) = self.shard.as_bytes().get(b".rank-00000".len()..) else {
            return false;
        };
        let Ok(in_staging) = name.strip_prefix(&self.staging) else {
            return false;
        };
        let Some(rest) = in_staging
            .as_os_str()
            .as_bytes()
            .strip_prefix(self.base.as_bytes())
            .and_then(|rest| rest.strip_prefix(b".rank-"))
        else {
            return false;
        };
        rest.len() >= 5 + of_size.len()
            && rest[..5].iter().all(u8::is_ascii_digit)
            && rest[5..].starts_with(of_size)
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

    /// Writes `<prefix><suffix>` through `write`, with its CRC32C computed
    /// on the way, and remembers it for the manifest.
    pub fn write_file(
        &self,
        suffix: &str,
        write: impl FnOnce(&mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()>,
    ) -> Result<()> {
        let final_name = file_name(&self.base, &self.in_checkpoint(suffix.as_bytes()));
        let name = match self.place_early(&final_name)? {
            true => final_name,
            false => self.staged(suffix.as_bytes()),
        };
        let mut file = self
            .store
            .create(&name)
            .map_err(io_at("create", &*self.store, &name))?;
        let (mut size, mut crc) = (0u64, 0u32);
        write(&mut |bytes| {
            crc = crc32c::crc32c_append(crc, bytes);
            size += bytes.len() as u64;
            file.write_all(bytes)
        })
        .and_then(|()| file.finish())
        .map_err(io_at("write", &*self.store, &name))?;
        self.written.lock().unwrap().push(FileRecord {
            suffix: ByteString::from_bytes(&self.in_checkpoint(suffix.as_bytes())),
            size,
            crc32c: crc,
        });
        Ok(())
    }

    /// On object storage, claims `final_name` for a file placed there before
    /// the commit point, when nothing is there yet: its marker first.
    fn place_early(&self, final_name: &Path) -> Result<bool> {
        if !self.store.moves_by_copy() {
            return Ok(false);
        }
        let taken =
            self.store
                .kind(final_name)
                .map_err(io_at("inspect", &*self.store, final_name))?;
        if taken.is_some() {
            return Ok(false);
        }
        write_whole(&*self.store, &early_marker(&self.staging, final_name), b"")?;
        Ok(true)
    }

    /// On object storage, before the commit point: every staged file with
    /// nothing at its final name goes there now (a callback's local file is
    /// uploaded straight there). The others are moved at the commit, by a
    /// copy the store may limit in size: a file over it fails here.
    fn place_staged_early(&self, sealed: &Sealed) -> Result<()> {
        for file in &sealed.files {
            let staged = self.staged_file(file.suffix.as_bytes());
            let final_name = file_name(&self.base, file.suffix.as_bytes());
            let in_staging =
                self.store
                    .kind(&staged)
                    .map_err(io_at("inspect", &*self.store, &staged))?;
            if in_staging != Some(Kind::File) {
                continue;
            }
            if self.place_early(&final_name)? {
                self.store.rename(&staged, &final_name).map_err(io_at(
                    "upload",
                    &*self.store,
                    &final_name,
                ))?;
                continue;
            }
            if let Some(limit) = self.store.largest_move().filter(|l| file.size > *l) {
                return Err(Error::io_at(
                    "move into place",
                    &self.store.shown(&final_name),
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "it replaces a file of the same name, and at {} bytes it is over \
                             the {limit}-byte limit of a server-side copy",
                            file.size
                        ),
                    ),
                ));
            }
        }
        Ok(())
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
                        // A file placed early is read at its final name.
                        let early =
                            self.store.moves_by_copy() && suffix.ends_with(EARLY_SUFFIX.as_bytes());
                        let suffix = match early {
                            true => &suffix[..suffix.len() - EARLY_SUFFIX.len()],
                            false => suffix,
                        };
                        let name = match early {
                            true => file_name(&self.base, suffix),
                            false => name.clone(),
                        };
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
        let prepared = self.prepare(&sealed, &plan);
        let record = match prepared {
            Ok(record) => record,
            Err(err) => {
                let prefix = self.store.shown(Path::new(&self.base));
                return Err(match self.undo() {
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
        apply(&*self.store, &self.base, &record, false).map_err(|err| {
            if let Error::Conflict(_) = err {
                // Another writer's state won the conditional write: never
                // roll this commit forward over it.
                let _ = self.undo();
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
            base: self.base.clone(),
            record,
        })
    }

    fn prepare(&self, sealed: &Sealed, plan: &CommitPlan) -> Result<CommitRecord> {
        let state_name = Path::new(STATE_FILE_NAME);
        if !matches!(self.store.kind(state_name), Ok(None | Some(Kind::File))) {
            return Err(Error::io_at(
                "write state file",
                &self.store.shown(state_name),
                io::Error::new(io::ErrorKind::InvalidInput, "it is not a regular file"),
            ));
        }
        // Another writer's commit since this one read the state: stop before
        // the commit point, having touched none of its files.
        self.store.check_unchanged(state_name).map_err(io_at(
            "commit to",
            &*self.store,
            Path::new(""),
        ))?;
        let state_staged = PathBuf::from(format!("{STATE_FILE_NAME}.tmp{}", random_hex32()));
        write_whole(&*self.store, &state_staged, &plan.state_after)?;
        let mut manifest = Manifest::new(plan.number, sealed.files.clone());
        manifest.saved_at = Some(plan.saved_at);
        manifest.annotations = plan.annotations.clone();
        let manifest_staged = self.staged_file(MANIFEST_SUFFIX.as_bytes());
        write_whole(&*self.store, &manifest_staged, &manifest.to_json())?;
        let mut moves: Vec<ByteString> = manifest.files.iter().map(|f| f.suffix.clone()).collect();
        moves.push(ByteString::from_bytes(MANIFEST_SUFFIX.as_bytes()));
        let keeps = |name: &Path| {
            moves
                .iter()
                .any(|suffix| file_name(&self.base, suffix.as_bytes()) == name)
        };
        let record = CommitRecord {
            format: RECORD_FORMAT.into(),
            version: 1,
            remove: plan
                .replaced
                .files
                .iter()
                .filter(|name| !keeps(name))
                .map(|n| bytes_of(n))
                .collect(),
            remove_directories: plan
                .replaced
                .directories
                .iter()
                .map(|n| bytes_of(n))
                .collect(),
            moves,
            state_before: plan.state_before,
            state_staged: bytes_of(&state_staged),
            swept: plan
                .swept
                .iter()
                .map(|(base, owned)| SweptRecord {
                    base: ByteString::from_bytes(base.as_bytes()),
                    files: owned.files.iter().map(|n| bytes_of(n)).collect(),
                    directories: owned.directories.iter().map(|n| bytes_of(n)).collect(),
                })
                .collect(),
        };
        if self.store.moves_by_copy() {
            self.place_staged_early(sealed)?;
        }
        // Everything the record names is durable before the record is (an
        // object store makes each write durable at once).
        let mut files: Vec<PathBuf> = sealed
            .files
            .iter()
            .map(|f| self.staged_file(f.suffix.as_bytes()))
            .collect();
        files.extend([manifest_staged, state_staged]);
        let sync = |files: &[PathBuf]| {
            self.store
                .sync_files(files)
                .map_err(io_at("sync", &*self.store, &self.staging))
        };
        sync(&files)?;
        let record_name = self.staging.join(RECORD_NAME);
        let json = serde_json::to_vec(&record).expect("a commit record always serialises");
        write_whole(&*self.store, &record_name, &json)?;
        sync(&[record_name])?;
        // The root too: the staging directory's own entry must survive.
        let mut directories = sealed.directories.clone();
        directories.push(PathBuf::new());
        self.store.sync_directories(&directories).map_err(io_at(
            "sync",
            &*self.store,
            &self.staging,
        ))?;
        Ok(record)
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

    /// Removes the commit record first, so that what is left is never
    /// rolled forward, then the staging directory.
    fn undo(&self) -> io::Result<()> {
        self.store.remove_file(&self.staging.join(RECORD_NAME))?;
        if self.store.moves_by_copy() {
            remove_placed_early(&*self.store, &self.staging, true)?;
        }
        self.store.remove_staging(&self.staging)
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

fn early_marker(staging: &Path, final_name: &Path) -> PathBuf {
    let mut marker = staging.join(final_name).into_os_string();
    marker.push(EARLY_SUFFIX);
    PathBuf::from(marker)
}

/// Removes the markers of files placed early (and, with `files`, those
/// files: the save they belong to never committed).
fn remove_placed_early(store: &dyn Store, staging: &Path, files: bool) -> io::Result<()> {
    let mut pending = vec![staging.to_path_buf()];
    while let Some(directory) = pending.pop() {
        for entry in store.list(&directory)? {
            let name = directory.join(&entry.name);
            match entry.kind {
                Kind::Directory => pending.push(name),
                _ => {
                    let Some(placed) = name
                        .as_os_str()
                        .as_bytes()
                        .strip_suffix(EARLY_SUFFIX.as_bytes())
                    else {
                        continue;
                    };
                    if files {
                        let placed = Path::new(OsStr::from_bytes(placed));
                        let final_name = placed.strip_prefix(staging).unwrap_or(placed);
                        store.remove_file(final_name)?;
                    }
                    store.remove_file(&name)?;
                }
            }
        }
    }
    Ok(())
}

fn write_whole(store: &dyn Store, name: &Path, bytes: &[u8]) -> Result<()> {
    store
        .create(name)
        .and_then(|mut file| file.write_all(bytes).and_then(|()| file.finish()))
        .map_err(io_at("write", store, name))
}

/// A commit that is durable and in place; what the sweep dropped is still
/// to be deleted.
#[derive(Debug)]
pub struct Committed {
    store: Arc<dyn Store>,
    base: OsString,
    record: CommitRecord,
}

impl Committed {
    /// Deletes the swept checkpoints' files (unless `deleted_by_callback`)
    /// and the staging directory.
    pub fn finish(self, deleted_by_callback: bool) -> Result<()> {
        let store = &*self.store;
        finish(store, &self.base, &self.record, None, &mut |_| {
            deleted_by_callback
        })
    }
}

/// Moves the staged files into place, removes what the replaced
/// checkpoint had and the new one lacks, renames the staged state file
/// over the old one, and syncs the directories. Each step can run again
/// after a crash; `recovering` then first checks that the state file is
/// still the one the commit replaces (a stale record must not undo a later
/// commit).
fn apply(store: &dyn Store, base: &OsStr, record: &CommitRecord, recovering: bool) -> Result<()> {
    let staging = staging_name(base);
    let mut created = Vec::new();
    for suffix in &record.moves {
        let to = file_name(base, suffix.as_bytes());
        let from = staging.join(&to);
        if store.kind(&from).map_err(io_at("inspect", store, &from))? != Some(Kind::File) {
            continue; // moved before a crash
        }
        let mut parent = PathBuf::new();
        let parts: Vec<_> = to.components().collect();
        for part in &parts[..parts.len() - 1] {
            parent.push(part);
            match store
                .kind(&parent)
                .map_err(io_at("inspect", store, &parent))?
            {
                Some(Kind::Directory) => {}
                None => {
                    store
                        .create_dir(&parent)
                        .map_err(io_at("create directory", store, &parent))?;
                    created.push(parent.clone());
                }
                Some(_) => {
                    return Err(Error::io_at(
                        "move into place",
                        &store.shown(&to),
                        io::Error::new(
                            io::ErrorKind::InvalidInput,
                            "a file stands where its directory goes",
                        ),
                    ))
                }
            }
        }
        store
            .rename(&from, &to)
            .map_err(io_at("move into place", store, &to))?;
        if let Some(parent) = to.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !created.iter().any(|c| c == parent) {
                created.push(parent.to_path_buf());
            }
        }
    }
    for name in &record.remove {
        let name = path_of(name);
        store
            .remove_file(&name)
            .map_err(io_at("delete", store, &name))?;
    }
    for name in &record.remove_directories {
        let name = path_of(name);
        match store.remove_empty_dir(&name) {
            Err(err) if err.raw_os_error() == Some(libc::ENOTEMPTY) => {}
            other => other.map_err(io_at("delete", store, &name))?,
        }
    }
    // Without a lock (object storage), another writer's open may have
    // removed this save's files as an abandoned upload: never name them.
    if store.moves_by_copy() && !recovering {
        for suffix in &record.moves {
            let name = file_name(base, suffix.as_bytes());
            if store.kind(&name).map_err(io_at("inspect", store, &name))? != Some(Kind::File) {
                return Err(Error::Conflict(format!(
                    "'{}' was removed while this save ran, by another writer's recovery",
                    store.shown(&name).display()
                )));
            }
        }
    }
    // The staged state file is gone once it was renamed into place.
    let state_name = Path::new(STATE_FILE_NAME);
    let staged = path_of(&record.state_staged);
    let staged_exists = store
        .kind(&staged)
        .map_err(io_at("inspect", store, &staged))?
        .is_some();
    let replaces = staged_exists
        && (!recovering
            || read_state_bytes(store)?.as_deref().map(crc32c::crc32c) == record.state_before);
    if replaces {
        store
            .rename(&staged, state_name)
            .map_err(io_at("write state file", store, state_name))?;
    } else if staged_exists {
        store
            .remove_file(&staged)
            .map_err(io_at("remove", store, &staged))?;
    }
    created.push(PathBuf::new());
    store
        .sync_directories(&created)
        .map_err(io_at("sync", store, Path::new("")))
}

/// Deletes what the record's sweep dropped (except checkpoints the state
/// file names again, when recovering a stale record, and those `on_swept`
/// says it deleted itself), syncs the directory once, then removes the
/// staging directory.
fn finish(
    store: &dyn Store,
    base: &OsStr,
    record: &CommitRecord,
    named: Option<&[Vec<u8>]>,
    on_swept: &mut dyn FnMut(&OsStr) -> bool,
) -> Result<()> {
    let mut deleted = false;
    for swept in &record.swept {
        if named.is_some_and(|named| named.iter().any(|entry| entry == swept.base.as_bytes())) {
            continue;
        }
        if on_swept(OsStr::from_bytes(swept.base.as_bytes())) {
            continue;
        }
        let owned = Owned {
            files: swept.files.iter().map(path_of).collect(),
            directories: swept.directories.iter().map(path_of).collect(),
        };
        integrity::delete_owned(store, &owned)?;
        deleted |= !owned.files.is_empty();
    }
    if deleted {
        // Before the record goes: a deletion lost to a power cut is redone.
        store
            .sync_directories(&[PathBuf::new()])
            .map_err(io_at("sync", store, Path::new("")))?;
    }
    let staging = staging_name(base);
    // The markers go first: what remains of staging, if removing it is cut
    // short, must not make recovery delete the committed files.
    if store.moves_by_copy() {
        remove_placed_early(store, &staging, false).map_err(io_at(
            "remove staging directory",
            store,
            &staging,
        ))?;
    }
    store
        .remove_staging(&staging)
        .map_err(io_at("remove staging directory", store, &staging))
}

/// The commit record of `<base>`'s staging directory, when it holds a
/// readable one: the commit got past its commit point.
fn read_record(store: &dyn Store, base: &OsStr) -> Result<Option<CommitRecord>> {
    let record_name = staging_name(base).join(RECORD_NAME);
    match store::read_bounded(
        store,
        &record_name,
        MAX_STATE_FILE_BYTES + MAX_MANIFEST_BYTES,
    ) {
        Ok(Some(bytes)) => Ok(serde_json::from_slice::<CommitRecord>(&bytes)
            .ok()
            .filter(|record| record.format == RECORD_FORMAT && record.version == 1)),
        Ok(None) => Ok(None),
        Err(err) if err.kind() == io::ErrorKind::InvalidData => Ok(None),
        Err(err) => Err(Error::io_at("read", &store.shown(&record_name), err)),
    }
}

/// Finishes or undoes the staging of `<base>`: with its commit record,
/// rolls the commit forward (`on_swept` hears of each checkpoint its sweep
/// drops); without, removes the staging.
fn recover_staging(
    store: &dyn Store,
    base: &OsStr,
    record: Option<&CommitRecord>,
    warn: &mut dyn FnMut(&str),
    on_swept: &mut dyn FnMut(&OsStr) -> bool,
) -> Result<()> {
    let staging = staging_name(base);
    let shown = store.shown(Path::new(base));
    match record {
        Some(record) => {
            warn(&format!(
                "finishing the commit of '{}', interrupted when the last writer stopped",
                shown.display()
            ));
            apply(store, base, record, true)?;
            let named = read_state_bytes(store)?
                .and_then(|bytes| CheckpointState::parse(&bytes).ok())
                .map(|state| {
                    let mut named = state.all_model_checkpoint_paths;
                    named.push(state.model_checkpoint_path);
                    named
                })
                .unwrap_or_default();
            finish(store, base, record, Some(&named), on_swept)
        }
        None => {
            warn(&format!(
                "removing an uncommitted save of '{}' left when the last writer stopped",
                shown.display()
            ));
            if store.moves_by_copy() {
                remove_placed_early(store, &staging, true).map_err(io_at(
                    "remove staging directory",
                    store,
                    &staging,
                ))?;
            }
            store.remove_staging(&staging).map_err(io_at(
                "remove staging directory",
                store,
                &staging,
            ))
        }
    }
}

/// One thing recovery on open does to a checkpoint directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryAction {
    /// A save interrupted after its commit point is rolled forward; the
    /// checkpoints its sweep dropped (`swept`) are deleted unless the
    /// state file names them again.
    FinishCommit {
        base: OsString,
        swept: Vec<OsString>,
    },
    /// A save interrupted before its commit point: its staging directory
    /// is removed.
    RemoveUncommitted { base: OsString },
    /// A temporary state file or manifest is removed.
    RemoveTemporary { name: OsString },
    /// A marker of an interrupted save of version 0.1 is removed, and, when
    /// the state file does not name `base` (`delete`), what it owns.
    ResolveLegacyMarker { base: OsString, delete: bool },
}

/// A planned step of recovery, with the commit record it rolls forward.
#[derive(Debug)]
pub struct RecoveryStep {
    pub action: RecoveryAction,
    record: Option<CommitRecord>,
}

/// What `recover` does to the store, in order, decided from one listing:
/// staging directories first (a commit to roll forward renames its staged
/// state file), then temporary files and version 0.1's markers. `named`
/// holds the bases the state file names. Changes nothing.
pub fn plan_recovery(
    store: &dyn Store,
    named: &dyn Fn(&OsStr) -> bool,
) -> Result<Vec<RecoveryStep>> {
    let entries = store::list_root(store)?;
    let mut steps = Vec::new();
    for entry in &entries {
        let name = entry.name.as_bytes();
        if let Some(base) = name.strip_suffix(STAGING_SUFFIX.as_bytes()) {
            if entry.kind == Kind::Directory {
                let base = OsStr::from_bytes(base);
                let record = read_record(store, base)?;
                let action = match &record {
                    Some(record) => RecoveryAction::FinishCommit {
                        base: base.to_owned(),
                        swept: record
                            .swept
                            .iter()
                            .map(|swept| OsString::from_vec(swept.base.as_bytes().to_vec()))
                            .collect(),
                    },
                    None => RecoveryAction::RemoveUncommitted {
                        base: base.to_owned(),
                    },
                };
                steps.push(RecoveryStep { action, record });
            }
        }
    }
    for entry in &entries {
        let name = entry.name.as_bytes();
        let action =
            if is_temporary(name, STATE_FILE_NAME.as_bytes()) || is_temporary_manifest(name) {
                RecoveryAction::RemoveTemporary {
                    name: entry.name.clone(),
                }
            } else if let Some(base) = name.strip_suffix(LEGACY_PENDING_SUFFIX.as_bytes()) {
                let base = OsStr::from_bytes(base);
                RecoveryAction::ResolveLegacyMarker {
                    base: base.to_owned(),
                    delete: !named(base),
                }
            } else {
                continue;
            };
        steps.push(RecoveryStep {
            action,
            record: None,
        });
    }
    Ok(steps)
}

/// Recovery on open, for a writer holding the lock: every staging
/// directory is rolled forward or removed, temporary state files go, and
/// markers of version 0.1's interrupted saves are resolved: a marked
/// checkpoint the state names keeps its files, one it does not name loses
/// what it owns. `named` holds the bases the state file names; `on_swept`
/// hears of each checkpoint a rolled-forward sweep drops and says whether
/// it deleted it (the manager's delete callback); if not, the files it owns
/// are deleted.
pub fn recover(
    store: &dyn Store,
    named: &dyn Fn(&OsStr) -> bool,
    warn: &mut dyn FnMut(&str),
    on_swept: &mut dyn FnMut(&OsStr) -> bool,
) -> Result<()> {
    for step in plan_recovery(store, named)? {
        run_recovery_step(store, &step, warn, on_swept)?;
    }
    Ok(())
}

/// Carries out one step `plan_recovery` planned.
pub fn run_recovery_step(
    store: &dyn Store,
    step: &RecoveryStep,
    warn: &mut dyn FnMut(&str),
    on_swept: &mut dyn FnMut(&OsStr) -> bool,
) -> Result<()> {
    match &step.action {
        RecoveryAction::FinishCommit { base, .. } | RecoveryAction::RemoveUncommitted { base } => {
            recover_staging(store, base, step.record.as_ref(), warn, on_swept)
        }
        RecoveryAction::RemoveTemporary { name } => {
            let path = Path::new(name);
            store
                .remove_file(path)
                .map_err(io_at("remove temporary state file", store, path))
        }
        RecoveryAction::ResolveLegacyMarker { base, delete } => {
            if *delete {
                warn(&format!(
                    "removing '{}': it was being saved or deleted when the last writer stopped",
                    store.shown(Path::new(base)).display()
                ));
                integrity::delete_owned(store, &integrity::owned_files(store, base)?)?;
            }
            let marker = file_name(base, LEGACY_PENDING_SUFFIX.as_bytes());
            store
                .remove_file(&marker)
                .map_err(io_at("remove", store, &marker))
        }
    }
}

/// `<stem>.tmp` and 32 hex digits: this library's and TF's temporary
/// state files (`checkpoint.tmp<hex>`), and nothing else.
fn is_temporary(name: &[u8], stem: &[u8]) -> bool {
    name.strip_prefix(stem)
        .and_then(|rest| rest.strip_prefix(b".tmp"))
        .is_some_and(|hex| hex.len() == 32 && hex.iter().all(u8::is_ascii_hexdigit))
}

/// A manifest being replaced (`<base>.ckpt-manifest.json.tmp<hex>`), or one
/// being written by version 0.1 (`<base>.ckpt-manifest.json.tmp`).
fn is_temporary_manifest(name: &[u8]) -> bool {
    let Some(at) = name
        .windows(MANIFEST_SUFFIX.len())
        .rposition(|window| window == MANIFEST_SUFFIX.as_bytes())
    else {
        return false;
    };
    let rest = &name[at + MANIFEST_SUFFIX.len()..];
    rest == b".tmp" || is_temporary(rest, b"")
}

/// Replaces a committed checkpoint's manifest (to pin or unpin it): the new
/// one is written and synced aside, renamed over the old one, and the
/// directory synced. A crash leaves the old or the new manifest, and a
/// temporary file that the next open removes.
pub fn replace_manifest(store: &dyn Store, base: &OsStr, manifest: &Manifest) -> Result<()> {
    let target = file_name(base, MANIFEST_SUFFIX.as_bytes());
    let mut staged = target.clone().into_os_string();
    staged.push(format!(".tmp{}", random_hex32()));
    replace_aside(store, &target, Path::new(&staged), &manifest.to_json())
}

/// Writes `bytes` to `staged` and syncs it, renames it over `target` (on
/// failure the staged file goes), and syncs the directory.
fn replace_aside(store: &dyn Store, target: &Path, staged: &Path, bytes: &[u8]) -> Result<()> {
    write_whole(store, staged, bytes)?;
    let replaced = store
        .sync_files(&[staged.to_path_buf()])
        .map_err(io_at("sync", store, staged))
        .and_then(|()| {
            store
                .rename(staged, target)
                .map_err(io_at("replace", store, target))
        });
    if let Err(err) = replaced {
        let _ = store.remove_file(staged);
        return Err(err);
    }
    store
        .sync_directories(&[PathBuf::new()])
        .map_err(io_at("sync", store, Path::new("")))
}

/// Replaces the state file with `bytes` (a prune: no checkpoint is
/// committed), written and synced aside, renamed over the old one, and the
/// directory synced. Refused when the state file is no longer the one read
/// (`state_before`, its CRC32C). A crash leaves the old or the new state
/// file, and a temporary file the next open removes.
pub fn replace_state(store: &dyn Store, bytes: &[u8], state_before: Option<u32>) -> Result<()> {
    let target = Path::new(STATE_FILE_NAME);
    if read_state_bytes(store)?.as_deref().map(crc32c::crc32c) != state_before {
        return Err(Error::invalid(format!(
            "'{}' changed since it was read: another tool wrote it; try again",
            store.shown(target).display()
        )));
    }
    let staged = PathBuf::from(format!("{STATE_FILE_NAME}.tmp{}", random_hex32()));
    replace_aside(store, target, &staged, bytes)
}
