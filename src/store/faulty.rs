//! A store that fails: every operation of the wrapped store that writes,
//! lists or checks is one step, and every step after the first `n` fails
//! with ENOSPC. Tests use it to fail each durable step of a save, a
//! restore or recovery in turn, over the local and the in-memory object
//! store. `Store` has no default method bodies, so a method added to it
//! does not compile here until it is forwarded.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::{Capabilities, Entry, FileWriter, Kind, ReadAt, Store};

#[derive(Debug, Default)]
pub struct Steps {
    taken: AtomicUsize,
    /// The operation of every step and the name it was on, in order.
    log: Mutex<Vec<(&'static str, PathBuf)>>,
    /// `usize::MAX` fails nothing.
    allowed: AtomicUsize,
    /// How many steps fail after the allowed ones (`usize::MAX`: all).
    failing: AtomicUsize,
}

impl Steps {
    pub fn new() -> Arc<Steps> {
        Arc::new(Steps {
            taken: AtomicUsize::new(0),
            log: Mutex::default(),
            allowed: AtomicUsize::new(usize::MAX),
            failing: AtomicUsize::new(usize::MAX),
        })
    }

    /// Fails every step after the next `allowed` (`None`: none fails) and
    /// restarts the count.
    pub fn fail_after(&self, allowed: Option<usize>) {
        self.restart(allowed.unwrap_or(usize::MAX), usize::MAX);
    }

    /// Fails only the step after the next `allowed` (the others succeed,
    /// as removing a file does on a full disk) and restarts the count.
    pub fn fail_only_after(&self, allowed: usize) {
        self.restart(allowed, 1);
    }

    fn restart(&self, allowed: usize, failing: usize) {
        self.taken.store(0, Ordering::SeqCst);
        self.log.lock().unwrap().clear();
        self.allowed.store(allowed, Ordering::SeqCst);
        self.failing.store(failing, Ordering::SeqCst);
    }

    pub fn taken(&self) -> usize {
        self.taken.load(Ordering::SeqCst)
    }

    /// The operations of the steps taken since the last `fail_after`.
    pub fn operations(&self) -> Vec<&'static str> {
        let log = self.log.lock().unwrap();
        log.iter().map(|(operation, _)| *operation).collect()
    }

    /// The steps taken since the last `fail_after`, with their names.
    pub fn steps(&self) -> Vec<(&'static str, PathBuf)> {
        self.log.lock().unwrap().clone()
    }

    fn step(&self, operation: &'static str, name: &Path) -> io::Result<()> {
        let entry = (operation, name.to_path_buf());
        self.log.lock().unwrap().push(entry);
        let taken = self.taken.fetch_add(1, Ordering::SeqCst) + 1;
        let allowed = self.allowed.load(Ordering::SeqCst);
        if taken > allowed && taken - allowed <= self.failing.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }
}

struct FaultyWriter {
    inner: Box<dyn FileWriter>,
    steps: Arc<Steps>,
    name: PathBuf,
}

impl io::Write for FaultyWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.inner.write(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl FileWriter for FaultyWriter {
    fn expect_size(&mut self, size: u64) {
        self.inner.expect_size(size)
    }

    fn finish(self: Box<Self>) -> io::Result<()> {
        self.steps.step("write", &self.name)?;
        self.inner.finish()
    }
}

#[derive(Debug)]
pub struct FaultyStore {
    inner: Box<dyn Store>,
    steps: Arc<Steps>,
}

impl FaultyStore {
    pub fn new(inner: Box<dyn Store>, steps: Arc<Steps>) -> Self {
        FaultyStore { inner, steps }
    }
}

impl Store for FaultyStore {
    fn local_path(&self, name: &Path) -> PathBuf {
        self.inner.local_path(name)
    }
    fn list(&self, directory: &Path) -> io::Result<Vec<Entry>> {
        self.steps.step("list", directory)?;
        self.inner.list(directory)
    }
    fn kind(&self, name: &Path) -> io::Result<Option<Kind>> {
        self.inner.kind(name)
    }
    fn open_read(&self, name: &Path) -> io::Result<Option<Box<dyn ReadAt>>> {
        self.inner.open_read(name)
    }
    /// Creating and finishing the write are two steps: a write can fail
    /// (ENOSPC) after its file was created.
    fn create(&self, name: &Path) -> io::Result<Box<dyn FileWriter>> {
        self.steps.step("create", name)?;
        Ok(Box::new(FaultyWriter {
            inner: self.inner.create(name)?,
            steps: self.steps.clone(),
            name: name.to_path_buf(),
        }))
    }
    fn create_dir(&self, name: &Path) -> io::Result<()> {
        self.steps.step("create_dir", name)?;
        self.inner.create_dir(name)
    }
    fn sync_files(&self, names: &[PathBuf]) -> io::Result<()> {
        self.steps
            .step("sync_files", names.first().map_or(Path::new(""), |n| n))?;
        self.inner.sync_files(names)
    }
    fn sync_directories(&self, names: &[PathBuf]) -> io::Result<()> {
        self.steps.step(
            "sync_directories",
            names.first().map_or(Path::new(""), |n| n),
        )?;
        self.inner.sync_directories(names)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.steps.step("rename", to)?;
        self.inner.rename(from, to)
    }
    fn rename_swapping(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.steps.step("rename", to)?;
        self.inner.rename_swapping(from, to)
    }
    fn remove_file(&self, name: &Path) -> io::Result<()> {
        self.steps.step("remove_file", name)?;
        self.inner.remove_file(name)
    }
    fn remove_empty_dir(&self, name: &Path) -> io::Result<()> {
        self.steps.step("remove_empty_dir", name)?;
        self.inner.remove_empty_dir(name)
    }
    fn remove_staging(&self, name: &Path) -> io::Result<()> {
        self.steps.step("remove_staging", name)?;
        self.inner.remove_staging(name)
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn shown(&self, name: &Path) -> PathBuf {
        self.inner.shown(name)
    }
    fn check_unchanged(&self, name: &Path) -> io::Result<()> {
        self.steps.step("check_unchanged", name)?;
        self.inner.check_unchanged(name)
    }
    fn fetch_local(&self, names: &[PathBuf]) -> io::Result<()> {
        self.steps
            .step("fetch_local", names.first().map_or(Path::new(""), |n| n))?;
        self.inner.fetch_local(names)
    }
    fn release_local(&self) -> io::Result<()> {
        self.steps.step("release_local", Path::new(""))?;
        self.inner.release_local()
    }
    fn probe_conditional_writes(&self) -> crate::Result<()> {
        self.steps
            .step("probe_conditional_writes", Path::new(""))
            .map_err(|err| crate::Error::io("probe conditional writes", err))?;
        self.inner.probe_conditional_writes()
    }
    fn take_lease(&self) -> crate::Result<()> {
        self.steps
            .step("take_lease", Path::new(crate::layout::LEASE_NAME))
            .map_err(|err| crate::Error::io("take the lease", err))?;
        self.inner.take_lease()
    }
    fn abort_uploads(&self, owned: &dyn Fn(&Path) -> bool) -> io::Result<Vec<PathBuf>> {
        self.steps.step("abort_uploads", Path::new(""))?;
        self.inner.abort_uploads(owned)
    }
}

mod tests {
    /// The names of the methods declared in `text`'s first `trait`/`impl`
    /// block that starts with `header`, and how many of them have a body.
    fn methods(text: &str, header: &str) -> (Vec<String>, usize) {
        let block = &text[text.find(header).expect(header)..];
        let block = &block[..block.find("\n}\n").expect("the block's end")];
        let mut names = Vec::new();
        let mut bodies = 0;
        for declaration in block.split("    fn ").skip(1) {
            names.push(declaration[..declaration.find(['(', '<']).unwrap()].to_owned());
            let signature_end = declaration.find([';', '{']).unwrap();
            bodies += usize::from(declaration.as_bytes()[signature_end] == b'{');
        }
        names.sort();
        (names, bodies)
    }

    /// The compiler makes `FaultyStore` implement every method the trait
    /// requires; this makes sure the trait requires them all (a default
    /// body would let a wrapper skip a method silently) and that each is
    /// forwarded.
    #[test]
    fn every_store_method_is_required_and_forwarded() {
        let (declared, defaults) = methods(
            include_str!("mod.rs"),
            "pub trait Store: Send + Sync + std::fmt::Debug {",
        );
        assert_eq!(defaults, 0, "Store has default method bodies");
        let (forwarded, _) = methods(include_str!("faulty.rs"), "impl Store for FaultyStore {");
        assert_eq!(declared, forwarded);
        let source = include_str!("faulty.rs");
        for name in &declared {
            assert!(
                source.contains(&format!("self.inner.{name}(")),
                "FaultyStore does not forward {name}"
            );
        }
    }
}
