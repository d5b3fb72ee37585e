//! A store that fails: every operation of the wrapped store is one step,
//! and every step after the first `n` fails with ENOSPC. Tests use it to
//! fail each durable step of a save or of recovery in turn.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::{Entry, Kind, ReadAt, Store};

#[derive(Debug, Default)]
pub struct Steps {
    taken: AtomicUsize,
    /// The operation of every step, in order.
    log: Mutex<Vec<&'static str>>,
    /// `usize::MAX` fails nothing.
    allowed: AtomicUsize,
}

impl Steps {
    pub fn new() -> Arc<Steps> {
        Arc::new(Steps {
            taken: AtomicUsize::new(0),
            log: Mutex::default(),
            allowed: AtomicUsize::new(usize::MAX),
        })
    }

    /// Fails every step after the next `allowed` (`None`: none fails) and
    /// restarts the count.
    pub fn fail_after(&self, allowed: Option<usize>) {
        self.taken.store(0, Ordering::SeqCst);
        self.log.lock().unwrap().clear();
        self.allowed
            .store(allowed.unwrap_or(usize::MAX), Ordering::SeqCst);
    }

    pub fn taken(&self) -> usize {
        self.taken.load(Ordering::SeqCst)
    }

    /// The operations of the steps taken since the last `fail_after`.
    pub fn operations(&self) -> Vec<&'static str> {
        self.log.lock().unwrap().clone()
    }

    fn step(&self, operation: &'static str) -> io::Result<()> {
        self.log.lock().unwrap().push(operation);
        let taken = self.taken.fetch_add(1, Ordering::SeqCst) + 1;
        if taken > self.allowed.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct FaultyStore<S> {
    inner: S,
    steps: Arc<Steps>,
}

impl<S: Store> FaultyStore<S> {
    pub fn new(inner: S, steps: Arc<Steps>) -> Self {
        FaultyStore { inner, steps }
    }
}

impl<S: Store> Store for FaultyStore<S> {
    fn local_path(&self, name: &Path) -> PathBuf {
        self.inner.local_path(name)
    }
    fn list(&self, directory: &Path) -> io::Result<Vec<Entry>> {
        self.steps.step("list")?;
        self.inner.list(directory)
    }
    fn kind(&self, name: &Path) -> io::Result<Option<Kind>> {
        self.inner.kind(name)
    }
    fn open_read(&self, name: &Path) -> io::Result<Option<Box<dyn ReadAt>>> {
        self.inner.open_read(name)
    }
    fn create(&self, name: &Path) -> io::Result<Box<dyn super::FileWriter>> {
        self.steps.step("create")?;
        self.inner.create(name)
    }
    fn create_dir(&self, name: &Path) -> io::Result<()> {
        self.steps.step("create_dir")?;
        self.inner.create_dir(name)
    }
    fn sync_files(&self, names: &[PathBuf]) -> io::Result<()> {
        self.steps.step("sync_files")?;
        self.inner.sync_files(names)
    }
    fn sync_directories(&self, names: &[PathBuf]) -> io::Result<()> {
        self.steps.step("sync_directories")?;
        self.inner.sync_directories(names)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.steps.step("rename")?;
        self.inner.rename(from, to)
    }
    fn remove_file(&self, name: &Path) -> io::Result<()> {
        self.steps.step("remove_file")?;
        self.inner.remove_file(name)
    }
    fn remove_empty_dir(&self, name: &Path) -> io::Result<()> {
        self.steps.step("remove_empty_dir")?;
        self.inner.remove_empty_dir(name)
    }
    fn remove_staging(&self, name: &Path) -> io::Result<()> {
        self.steps.step("remove_staging")?;
        self.inner.remove_staging(name)
    }
}
