//! Storage: the few operations the transaction and the readers need, on
//! names relative to one checkpoint directory. It never decides what to
//! keep. `LocalStore` is the POSIX file system; tests wrap it in a store
//! that fails a chosen step.

#[cfg(test)]
pub(crate) mod faulty;
mod local;
mod lock;
#[cfg(feature = "s3")]
mod object;
#[cfg(feature = "s3")]
mod profile;
#[cfg(feature = "s3")]
mod shadow;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::location::Location;

pub use local::{create_directory, LocalStore};
#[cfg(test)]
pub(crate) mod memory;
pub use lock::DirectoryLock;
#[cfg(feature = "s3")]
pub use object::check_option;

/// Storage options configure object stores, which this build lacks.
#[cfg(not(feature = "s3"))]
pub fn check_option(key: &str, _value: &str) -> crate::Result<()> {
    Err(crate::Error::invalid(format!(
        "storage option '{key}': {}",
        crate::location::WITHOUT_OBJECT_STORAGE
    )))
}

/// What a name in the store is. Anything but a regular file or a
/// directory (symlinks, FIFOs, devices) is `Other` and is never read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Directory,
    Other,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub name: std::ffi::OsString,
    pub kind: Kind,
}

/// A regular file opened for reading. Reads never block on a FIFO and
/// never go past the size the file had when opened.
pub trait ReadAt: Send {
    fn size(&self) -> u64;
    /// Fills `buffer` from `offset`; a short file is an error.
    fn read_exact_at(&self, buffer: &mut [u8], offset: u64) -> io::Result<()>;
}

/// A file being written; `finish` makes it whole (an object store
/// completes its upload there). Dropped unfinished, it may be lost.
pub trait FileWriter: io::Write + Send {
    /// The whole file's size, told before its first byte when known: an
    /// object store sizes its upload's parts by it.
    fn expect_size(&mut self, _size: u64) {}
    fn finish(self: Box<Self>) -> io::Result<()>;
}

/// A conditional write lost: another writer changed what this store read.
#[derive(Debug)]
pub struct Conflict(pub String);

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Conflict {}

#[cfg_attr(not(feature = "s3"), allow(dead_code))] // only object stores lose a race
pub fn conflict(message: impl Into<String>) -> io::Error {
    io::Error::other(Conflict(message.into()))
}

pub fn is_conflict(err: &io::Error) -> bool {
    err.get_ref().is_some_and(|inner| inner.is::<Conflict>())
}

/// `Err(UnexpectedEof)` when `length` bytes from `offset` pass `size`:
/// a reader never reads beyond the size its file had when opened.
pub(crate) fn check_within(offset: u64, length: usize, size: u64) -> io::Result<()> {
    if offset.saturating_add(length as u64) > size {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "read beyond the size the file had when opened",
        ));
    }
    Ok(())
}

/// The operations on a checkpoint directory. Names are relative paths
/// without `.` or `..` components, built by the callers from validated
/// parts.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Where a name lives on the local file system, for callbacks that
    /// write staged files themselves.
    fn local_path(&self, name: &Path) -> PathBuf;
    /// The entries of a directory (`""` is the store's root); empty when it
    /// does not exist.
    fn list(&self, directory: &Path) -> io::Result<Vec<Entry>>;
    /// What `name` is, without following a symlink; `None` when missing.
    fn kind(&self, name: &Path) -> io::Result<Option<Kind>>;
    /// Opens a regular file; `None` when missing, an error for anything
    /// else (a symlink, a FIFO, a directory).
    fn open_read(&self, name: &Path) -> io::Result<Option<Box<dyn ReadAt>>>;
    /// Creates a file to write, or writes over one from its start (what
    /// lies beyond the last byte written goes at `finish`).
    fn create(&self, name: &Path) -> io::Result<Box<dyn FileWriter>>;
    fn create_dir(&self, name: &Path) -> io::Result<()>;
    /// Makes the contents of these files durable, concurrently.
    fn sync_files(&self, names: &[PathBuf]) -> io::Result<()>;
    /// Makes the entries of these directories durable, concurrently.
    fn sync_directories(&self, names: &[PathBuf]) -> io::Result<()>;
    /// Renames within the store, replacing a file at `to` atomically.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// `rename`, except that where the file system can swap the two names
    /// atomically it does, and `from` is left holding `to`'s old file, to
    /// be written over by a later save instead of creating a file.
    fn rename_swapping(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file or symlink (never a directory); missing is fine.
    fn remove_file(&self, name: &Path) -> io::Result<()>;
    /// Removes an empty directory; missing is fine, non-empty an error.
    fn remove_empty_dir(&self, name: &Path) -> io::Result<()>;
    /// Removes a directory the transaction created, with what is in it
    /// (symlinks removed, never followed).
    fn remove_staging(&self, name: &Path) -> io::Result<()>;
    /// What this backend can do; the transaction picks its commit from it.
    fn capabilities(&self) -> Capabilities;
    /// How messages show `name`: its path, or its URL.
    fn shown(&self, name: &Path) -> PathBuf;
    /// A `Conflict` when `name` changed since this store read or wrote it
    /// (another writer); a store whose lock excludes one returns `Ok`.
    fn check_unchanged(&self, name: &Path) -> io::Result<()>;
    /// Makes these files readable at `local_path`, for a restore callback.
    fn fetch_local(&self, names: &[PathBuf]) -> io::Result<()>;
    /// Removes what `fetch_local` and callbacks left locally.
    fn release_local(&self) -> io::Result<()>;
    /// Refuses to write where a second writer could commit unnoticed.
    fn probe_conditional_writes(&self) -> crate::Result<()>;
    /// Takes this writer's lease on an object-storage prefix (see
    /// `object/lease.rs`), kept fresh in the background and released when
    /// the store is dropped; `Error::Leased` while another live writer
    /// holds it. A local directory's lock file does this job: nothing to do.
    fn take_lease(&self) -> crate::Result<()>;
    /// Aborts the incomplete multipart uploads under the store's root whose
    /// names `owned` accepts, and returns those names. Only for a writer
    /// holding the lease: a live writer's uploads are in there too.
    fn abort_uploads(&self, owned: &dyn Fn(&Path) -> bool) -> io::Result<Vec<PathBuf>>;
}

/// What a backend can do. Every method of `Store` is required (no default
/// bodies), so a wrapper such as the fault-injecting store cannot forget
/// to forward one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// `rename` moves a name atomically without copying its bytes (a file
    /// system). Without it (object storage), a rename is a copy and a
    /// delete, and a commit places new files at their final names early.
    pub atomic_rename: bool,
    /// The largest file `rename` can move, if limited (a server-side copy).
    pub largest_copy: Option<u64>,
}

/// The store of a directory or URL; `options` are storage options (for
/// object stores).
#[cfg_attr(not(feature = "s3"), allow(unused_variables))]
pub fn open(directory: &Path, options: &[(String, String)]) -> crate::Result<Arc<dyn Store>> {
    Ok(match crate::location::parse(directory)? {
        Location::Local(path) => Arc::new(LocalStore::new(path)),
        #[cfg(feature = "s3")]
        Location::S3(location) => Arc::new(object::connect(&location, options)?),
        #[cfg(not(feature = "s3"))]
        Location::S3(_) => return Err(crate::location::without_object_storage(directory)),
    })
}

/// A writer's hold on a local directory; an object store's writer takes
/// a lease instead (`Store::take_lease`): `None`.
pub fn lock(directory: &Path) -> crate::Result<Option<DirectoryLock>> {
    match crate::location::parse(directory)? {
        Location::Local(path) => Ok(Some(DirectoryLock::acquire(&path)?)),
        Location::S3(_) => Ok(None),
    }
}

/// The store holding a checkpoint prefix's files, and the prefix's base.
/// A prefix must end in a file name: `run/` or `run/..` names no checkpoint.
pub fn of_prefix(
    prefix: &Path,
    options: &[(String, String)],
) -> crate::Result<(Arc<dyn Store>, std::ffi::OsString)> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = prefix.as_os_str().as_bytes();
    let base = match prefix.file_name() {
        Some(base) if !bytes.ends_with(b"/") && !bytes.ends_with(b"/.") && bytes != b"." => base,
        _ => {
            return Err(crate::Error::invalid(format!(
                "'{}' is not a checkpoint prefix: it must end in a file name",
                prefix.display()
            )))
        }
    };
    let directory = &bytes[..bytes.len() - base.len()];
    let store = match directory {
        b"" => Arc::new(LocalStore::new(".")) as Arc<dyn Store>,
        directory => open(Path::new(std::ffi::OsStr::from_bytes(directory)), options)?,
    };
    Ok((store, base.to_owned()))
}

/// The entries directly in the store's root (the checkpoint directory).
pub fn list_root(store: &dyn Store) -> crate::Result<Vec<Entry>> {
    let root = Path::new("");
    store
        .list(root)
        .map_err(|err| crate::Error::io_at("list directory", &store.shown(root), err))
}

/// Reads a whole regular file of at most `limit` bytes; `None` when
/// missing. Larger files are `InvalidData`, not read.
pub fn read_bounded(store: &dyn Store, name: &Path, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let Some(file) = store.open_read(name)? else {
        return Ok(None);
    };
    let size = file.size();
    if size > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("it has {size} bytes, over the {limit}-byte limit"),
        ));
    }
    let mut bytes = vec![0u8; size as usize];
    file.read_exact_at(&mut bytes, 0)?;
    Ok(Some(bytes))
}

/// The size and CRC32C of a regular file, read in large chunks; `progress`
/// hears the bytes of each chunk read.
pub fn checksum(file: &dyn ReadAt, progress: &mut dyn FnMut(u64)) -> io::Result<(u64, u32)> {
    const CHUNK: u64 = 16 << 20;
    let size = file.size();
    let mut buffer = vec![0u8; CHUNK.min(size) as usize];
    let (mut offset, mut crc) = (0u64, 0u32);
    while offset < size {
        let chunk = &mut buffer[..CHUNK.min(size - offset) as usize];
        file.read_exact_at(chunk, offset)?;
        crc = crc32c::crc32c_append(crc, chunk);
        offset += chunk.len() as u64;
        progress(chunk.len() as u64);
    }
    Ok((size, crc))
}
