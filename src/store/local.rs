//! The local POSIX file system: files are opened without following
//! symlinks and without blocking on FIFOs, replaced through a synced
//! temporary file and a rename, and synced concurrently when there are
//! many.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use super::{Entry, FileWriter, Kind, ReadAt, Store};

#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStore { root: root.into() }
    }

    #[cfg_attr(not(feature = "s3"), allow(dead_code))] // the object store's shadow directory
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, name: &Path) -> PathBuf {
        if name.as_os_str().is_empty() {
            self.root.clone()
        } else {
            self.root.join(name)
        }
    }

    /// `Err` when a directory on the way to `name` is a symlink or not a
    /// directory (nested names must stay inside the store), or is missing.
    fn check_parents(&self, name: &Path) -> io::Result<()> {
        let mut parent = self.root.clone();
        let components: Vec<_> = name.components().collect();
        for component in &components[..components.len().saturating_sub(1)] {
            let Component::Normal(part) = component else {
                return Err(not_plain(name));
            };
            parent.push(part);
            match fs::symlink_metadata(&parent) {
                Ok(metadata) if metadata.is_dir() => {}
                Ok(_) => return Err(not_plain(name)),
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }
}

impl LocalStore {
    /// `check_parents`, with a missing directory on the way as `false`:
    /// what was inside is gone too.
    fn parents_exist(&self, name: &Path) -> io::Result<bool> {
        missing_is_none(self.check_parents(name)).map(|checked| checked.is_some())
    }
}

fn not_plain(name: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("'{}' leaves the directory", name.display()),
    )
}

fn kind_of(file_type: fs::FileType) -> Kind {
    if file_type.is_file() {
        Kind::File
    } else if file_type.is_dir() {
        Kind::Directory
    } else {
        Kind::Other
    }
}

fn missing_is_none<T>(result: io::Result<T>) -> io::Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

fn missing_is_fine(result: io::Result<()>) -> io::Result<()> {
    missing_is_none(result).map(drop)
}

struct LocalFile {
    file: File,
    size: u64,
}

impl ReadAt for LocalFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&self, buffer: &mut [u8], offset: u64) -> io::Result<()> {
        super::check_within(offset, buffer.len(), self.size)?;
        self.file.read_exact_at(buffer, offset)
    }
}

/// How many files or directories are synced in turn, without threads.
const IN_TURN: usize = 4;

/// Runs `each` on every item: in turn for a few (a small save's files and
/// directories: starting threads would cost more than it saves, and a save
/// starts none), else on up to 8 threads, so that fsyncs of many
/// independent files proceed in parallel on the device.
fn concurrently(
    names: &[PathBuf],
    each: impl Fn(&Path) -> io::Result<()> + Sync,
) -> io::Result<()> {
    const THREADS: usize = 8;
    if names.len() <= IN_TURN {
        return names.iter().try_for_each(|name| each(name));
    }
    let chunk = names.len().div_ceil(THREADS);
    std::thread::scope(|scope| {
        let workers: Vec<_> = names
            .chunks(chunk)
            .map(|part| scope.spawn(|| part.iter().try_for_each(|name| each(name))))
            .collect();
        workers
            .into_iter()
            .map(|worker| {
                worker
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect::<io::Result<Vec<()>>>()
            .map(drop)
    })
}

/// Starts writing a file's dirty pages without waiting: when every file of
/// a commit is under way before the first fsync, that fsync's journal
/// commit carries them all (ext4, XFS) and the next ones find their blocks
/// written, so that each of them costs a cache flush instead of a commit.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid descriptor; the call reads no memory of ours. Only a
    // hint: where it fails (a sandbox, FUSE), fsync does all the work.
    unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_: &File) {}

/// Swaps two names atomically (`renameat2` with `RENAME_EXCHANGE`, as a
/// raw system call: glibc wraps it only from 2.28); `false` when `to` is
/// missing or the kernel or file system cannot, for a rename.
#[cfg(target_os = "linux")]
fn swap(from: &Path, to: &Path) -> io::Result<bool> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |path: &Path| {
        CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a name holds a NUL byte"))
    };
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: two NUL-terminated strings that outlive the call.
    let swapped = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if swapped == 0 {
        return Ok(true);
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::ENOENT | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP | libc::EXDEV) => {
            Ok(false)
        }
        _ => Err(io::Error::last_os_error()),
    }
}

#[cfg(not(target_os = "linux"))]
fn swap(_: &Path, _: &Path) -> io::Result<bool> {
    Ok(false)
}

/// Creates a checkpoint directory and its parents, durably.
pub fn create_directory(directory: &Path) -> crate::Result<()> {
    if directory.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(directory)
        .and_then(|()| match directory.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => File::open(parent)?.sync_all(),
            _ => Ok(()),
        })
        .map_err(|err| crate::Error::io_at("create directory", directory, err))
}

/// A file written from its start over what it held, durable later (by
/// `sync_files`): writing over a block costs less than freeing it and
/// allocating another, and a commit leaves the last state file in the
/// spare staging directory for the next one to write over. What lies
/// beyond the last byte written goes at `finish`.
struct Overwrite {
    file: File,
    written: u64,
    old_size: u64,
}

impl io::Write for Overwrite {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let n = self.file.write(bytes)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl FileWriter for Overwrite {
    fn finish(self: Box<Self>) -> io::Result<()> {
        if self.old_size > self.written {
            self.file.set_len(self.written)?;
        }
        Ok(())
    }
}

impl Store for LocalStore {
    fn local_path(&self, name: &Path) -> PathBuf {
        self.path(name)
    }

    fn list(&self, directory: &Path) -> io::Result<Vec<Entry>> {
        let entries = match fs::read_dir(self.path(directory)) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(err),
        };
        entries
            .map(|entry| {
                let entry = entry?;
                Ok(Entry {
                    kind: kind_of(entry.file_type()?),
                    name: entry.file_name(),
                })
            })
            .collect()
    }

    fn kind(&self, name: &Path) -> io::Result<Option<Kind>> {
        if !self.parents_exist(name)? {
            return Ok(None);
        }
        missing_is_none(fs::symlink_metadata(self.path(name)))
            .map(|m| m.map(|m| kind_of(m.file_type())))
    }

    fn open_read(&self, name: &Path) -> io::Result<Option<Box<dyn ReadAt>>> {
        if !self.parents_exist(name)? {
            return Ok(None);
        }
        let opened = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(self.path(name));
        let file = match opened {
            Err(err) if err.raw_os_error() == Some(libc::ELOOP) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "it is a symlink, not a regular file",
                ))
            }
            other => missing_is_none(other)?,
        };
        let Some(file) = file else { return Ok(None) };
        let metadata = file.metadata()?;
        if !metadata.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "it is not a regular file",
            ));
        }
        Ok(Some(Box::new(LocalFile {
            size: metadata.len(),
            file,
        })))
    }

    /// Writes over a file that exists (see `Overwrite`), unless another
    /// name (a hard-linked copy of the directory) still shows its bytes:
    /// that file is unlinked and a new one made.
    fn create(&self, name: &Path) -> io::Result<Box<dyn FileWriter>> {
        self.check_parents(name)?;
        let path = self.path(name);
        let open = |options: &mut OpenOptions| {
            // A FIFO put where a file goes fails the open instead of
            // blocking it; regular files ignore the flag.
            let file = options
                .write(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(&path)?;
            let metadata = file.metadata()?;
            match metadata.is_file() {
                true => Ok((file, metadata)),
                false => Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "it is not a regular file",
                )),
            }
        };
        #[allow(clippy::suspicious_open_options)] // `finish` truncates
        let (mut file, mut metadata) = open(OpenOptions::new().create(true))?;
        if metadata.nlink() > 1 {
            drop(file);
            fs::remove_file(&path)?;
            (file, metadata) = open(OpenOptions::new().create_new(true))?;
        }
        Ok(Box::new(Overwrite {
            file,
            written: 0,
            old_size: metadata.len(),
        }))
    }

    fn create_dir(&self, name: &Path) -> io::Result<()> {
        self.check_parents(name)?;
        fs::create_dir(self.path(name))
    }

    /// Every file's writeback starts before the first fsync waits.
    fn sync_files(&self, names: &[PathBuf]) -> io::Result<()> {
        if names.len() <= IN_TURN {
            let files: Vec<File> = names
                .iter()
                .map(|name| File::open(self.path(name)))
                .collect::<io::Result<_>>()?;
            files.iter().for_each(start_writeback);
            return files.iter().try_for_each(File::sync_all);
        }
        for name in names {
            start_writeback(&File::open(self.path(name))?);
        }
        concurrently(names, |name| File::open(self.path(name))?.sync_all())
    }

    fn sync_directories(&self, names: &[PathBuf]) -> io::Result<()> {
        concurrently(names, |name| File::open(self.path(name))?.sync_all())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check_parents(from)?;
        self.check_parents(to)?;
        fs::rename(self.path(from), self.path(to))
    }

    fn rename_swapping(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check_parents(from)?;
        self.check_parents(to)?;
        let (from, to) = (self.path(from), self.path(to));
        match swap(&from, &to)? {
            true => Ok(()),
            false => fs::rename(from, to),
        }
    }

    fn remove_file(&self, name: &Path) -> io::Result<()> {
        if !self.parents_exist(name)? {
            return Ok(());
        }
        missing_is_fine(fs::remove_file(self.path(name)))
    }

    fn remove_empty_dir(&self, name: &Path) -> io::Result<()> {
        if !self.parents_exist(name)? {
            return Ok(());
        }
        missing_is_fine(fs::remove_dir(self.path(name)))
    }

    fn remove_staging(&self, name: &Path) -> io::Result<()> {
        if !self.parents_exist(name)? {
            return Ok(());
        }
        let path = self.path(name);
        match fs::symlink_metadata(&path) {
            Ok(metadata) if metadata.is_dir() => missing_is_fine(fs::remove_dir_all(&path)),
            Ok(_) => fs::remove_file(&path),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(err),
        }
    }

    fn capabilities(&self) -> super::Capabilities {
        super::Capabilities {
            atomic_rename: true,
            largest_copy: None,
        }
    }

    fn shown(&self, name: &Path) -> PathBuf {
        self.path(name)
    }

    /// The directory's lock already keeps any other writer out.
    fn check_unchanged(&self, _name: &Path) -> io::Result<()> {
        Ok(())
    }

    /// Local files are readable where they are.
    fn fetch_local(&self, _names: &[PathBuf]) -> io::Result<()> {
        Ok(())
    }

    fn release_local(&self) -> io::Result<()> {
        Ok(())
    }

    /// The lock, not conditional writes, keeps a second writer out.
    fn probe_conditional_writes(&self) -> crate::Result<()> {
        Ok(())
    }

    /// The lock file excludes other writers.
    fn take_lease(&self) -> crate::Result<()> {
        Ok(())
    }

    /// Files are written whole: no uploads to abort.
    fn abort_uploads(&self, _owned: &dyn Fn(&Path) -> bool) -> io::Result<Vec<PathBuf>> {
        Ok(Vec::new())
    }
}
