//! Object storage in memory, for fault-injection tests: the semantics of
//! `object::ObjectStore` without a server. No rename (a copy and a
//! delete), no directories (names with a `/` list as prefixes), writes
//! that are conditional on what this handle saw (absent: create only;
//! read: unchanged), ranged reads of the bytes an object had when opened,
//! and a local shadow directory where callbacks write and read.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{conflict, Capabilities, Entry, FileWriter, Kind, LocalStore, ReadAt, Store};

/// An object's bytes and its version (an ETag).
#[derive(Debug, Clone)]
struct Object {
    bytes: Arc<Vec<u8>>,
    version: u64,
}

/// The bucket: objects by key, shared by every handle opened on it.
#[derive(Debug, Default, Clone)]
pub struct Bucket {
    objects: Arc<Mutex<BTreeMap<String, Object>>>,
    versions: Arc<std::sync::atomic::AtomicU64>,
}

impl Bucket {
    pub fn new() -> Self {
        Bucket::default()
    }

    /// The keys, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.objects.lock().unwrap().keys().cloned().collect()
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let objects = self.objects.lock().unwrap();
        objects.get(key).map(|object| object.bytes.to_vec())
    }

    fn store(&self, key: &str, bytes: Vec<u8>) -> u64 {
        let version = self
            .versions
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        let object = Object {
            bytes: Arc::new(bytes),
            version,
        };
        self.objects.lock().unwrap().insert(key.to_owned(), object);
        version
    }
}

/// What a handle last saw of an object.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Seen {
    Absent,
    Version(u64),
}

/// One writer's (or reader's) view of a bucket, like one process's
/// `ObjectStore`.
#[derive(Debug)]
pub struct MemoryStore {
    bucket: Bucket,
    url: String,
    shadow: LocalStore,
    seen: Arc<Mutex<HashMap<String, Seen>>>,
    /// The version of the lease object this handle wrote, while it holds it.
    lease: Mutex<Option<u64>>,
}

impl MemoryStore {
    /// A handle on `bucket`, shown as `url`, whose callbacks' files go in
    /// a new directory under `local_root`.
    pub fn new(bucket: Bucket, url: &str, local_root: &Path) -> Self {
        MemoryStore {
            bucket,
            url: url.to_owned(),
            shadow: LocalStore::new(local_root.join(crate::layout::shadow_directory_name())),
            seen: Arc::default(),
            lease: Mutex::new(None),
        }
    }

    fn key(name: &Path) -> io::Result<String> {
        std::str::from_utf8(name.as_os_str().as_bytes())
            .map(str::to_owned)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "object names must be UTF-8"))
    }

    fn see(&self, key: &str, seen: Seen) {
        self.seen.lock().unwrap().insert(key.to_owned(), seen);
    }

    /// Forgets `key` once this handle deleted it itself: what it saw is
    /// gone, and its own next write of that name is no conflict.
    fn forget(&self, key: &str) {
        self.seen.lock().unwrap().remove(key);
    }

    fn seen(&self, key: &str) -> Option<Seen> {
        self.seen.lock().unwrap().get(key).copied()
    }

    fn now(&self, key: &str) -> Seen {
        let objects = self.bucket.objects.lock().unwrap();
        objects
            .get(key)
            .map_or(Seen::Absent, |object| Seen::Version(object.version))
    }

    /// Writes `bytes` to `key`, conditionally on what this handle saw.
    fn put(&self, key: &str, bytes: Vec<u8>) -> io::Result<()> {
        put(&self.bucket, &self.seen, key, bytes)
    }

    fn shadow_file(&self, name: &Path) -> io::Result<bool> {
        Ok(self.shadow.kind(name)? == Some(Kind::File))
    }

    fn upload_shadow(&self, name: &Path, to: &Path) -> io::Result<()> {
        let bytes = fs::read(self.shadow.local_path(name))?;
        self.put(&Self::key(to)?, bytes)?;
        self.shadow.remove_file(name)
    }

    /// The keys under `name/`.
    fn under(&self, name: &Path) -> io::Result<Vec<String>> {
        let prefix = format!("{}/", Self::key(name)?);
        let objects = self.bucket.objects.lock().unwrap();
        Ok(objects
            .range(prefix.clone()..)
            .take_while(|(key, _)| key.starts_with(&prefix))
            .map(|(key, _)| key.clone())
            .collect())
    }
}

/// A conditional PUT: it fails with a `Conflict` when the object is not
/// what the handle saw (absent, or at the version it read or wrote).
fn put(
    bucket: &Bucket,
    seen: &Mutex<HashMap<String, Seen>>,
    key: &str,
    bytes: Vec<u8>,
) -> io::Result<()> {
    let mut seen = seen.lock().unwrap();
    let now = bucket
        .objects
        .lock()
        .unwrap()
        .get(key)
        .map_or(Seen::Absent, |object| Seen::Version(object.version));
    if let Some(expected) = seen.get(key).filter(|expected| **expected != now) {
        return Err(conflict(format!(
            "'{key}' is {now:?}, not {expected:?} as this writer saw it"
        )));
    }
    let version = bucket.store(key, bytes);
    seen.insert(key.to_owned(), Seen::Version(version));
    Ok(())
}

impl Store for MemoryStore {
    fn local_path(&self, name: &Path) -> PathBuf {
        self.shadow.local_path(name)
    }

    fn list(&self, directory: &Path) -> io::Result<Vec<Entry>> {
        let mut entries = self.shadow.list(directory)?;
        let prefix = match directory.as_os_str().is_empty() {
            true => String::new(),
            false => format!("{}/", Self::key(directory)?),
        };
        for key in self.bucket.keys() {
            let Some(rest) = key.strip_prefix(&prefix) else {
                continue;
            };
            let (name, kind) = match rest.split_once('/') {
                Some((name, _)) => (name, Kind::Directory),
                None => (rest, Kind::File),
            };
            if !entries.iter().any(|entry| entry.name == name) {
                entries.push(Entry {
                    name: name.into(),
                    kind,
                });
            }
        }
        Ok(entries)
    }

    fn kind(&self, name: &Path) -> io::Result<Option<Kind>> {
        if let Some(kind) = self.shadow.kind(name)? {
            return Ok(Some(kind));
        }
        let key = Self::key(name)?;
        if self.now(&key) != Seen::Absent {
            return Ok(Some(Kind::File));
        }
        self.see(&key, Seen::Absent);
        Ok((!self.under(name)?.is_empty()).then_some(Kind::Directory))
    }

    fn open_read(&self, name: &Path) -> io::Result<Option<Box<dyn ReadAt>>> {
        if self.shadow_file(name)? {
            return self.shadow.open_read(name);
        }
        let key = Self::key(name)?;
        let object = self.bucket.objects.lock().unwrap().get(&key).cloned();
        let Some(object) = object else {
            self.see(&key, Seen::Absent);
            return Ok(None);
        };
        self.see(&key, Seen::Version(object.version));
        Ok(Some(Box::new(MemoryReader(object.bytes))))
    }

    fn create(&self, name: &Path) -> io::Result<Box<dyn FileWriter>> {
        Ok(Box::new(MemoryWriter {
            bucket: self.bucket.clone(),
            seen: self.seen.clone(),
            key: Self::key(name)?,
            bytes: Vec::new(),
        }))
    }

    /// Objects need no directories; callbacks get a local one to write in.
    fn create_dir(&self, name: &Path) -> io::Result<()> {
        fs::create_dir_all(self.shadow.local_path(name))
    }

    /// Uploads what callbacks wrote locally; objects are durable already.
    fn sync_files(&self, names: &[PathBuf]) -> io::Result<()> {
        for name in names {
            if self.shadow_file(name)? {
                self.upload_shadow(name, name)?;
            }
        }
        Ok(())
    }

    fn sync_directories(&self, _names: &[PathBuf]) -> io::Result<()> {
        Ok(())
    }

    /// Object stores cannot swap two names.
    fn rename_swapping(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.rename(from, to)
    }

    /// A copy (conditional when this handle saw the target) and a delete.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        if self.shadow_file(from)? {
            return self.upload_shadow(from, to);
        }
        let source = Self::key(from)?;
        let bytes = self.bucket.get(&source).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("'{source}' is missing"))
        })?;
        self.put(&Self::key(to)?, bytes)?;
        self.bucket.objects.lock().unwrap().remove(&source);
        self.forget(&source);
        Ok(())
    }

    fn remove_file(&self, name: &Path) -> io::Result<()> {
        self.shadow.remove_file(name)?;
        let key = Self::key(name)?;
        self.bucket.objects.lock().unwrap().remove(&key);
        self.forget(&key);
        Ok(())
    }

    fn remove_empty_dir(&self, name: &Path) -> io::Result<()> {
        self.shadow.remove_empty_dir(name)
    }

    fn remove_staging(&self, name: &Path) -> io::Result<()> {
        self.shadow.remove_staging(name)?;
        let under = self.under(name)?;
        let mut objects = self.bucket.objects.lock().unwrap();
        under.iter().for_each(|key| drop(objects.remove(key)));
        drop(objects);
        under.iter().for_each(|key| self.forget(key));
        Ok(())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            atomic_rename: false,
            largest_copy: None,
        }
    }

    fn shown(&self, name: &Path) -> PathBuf {
        match name.as_os_str().is_empty() {
            true => PathBuf::from(&self.url),
            false => PathBuf::from(format!("{}/{}", self.url, name.display())),
        }
    }

    fn check_unchanged(&self, name: &Path) -> io::Result<()> {
        let key = Self::key(name)?;
        match self.seen(&key) {
            Some(seen) if seen != self.now(&key) => Err(conflict(format!(
                "'{}' changed since this manager read it",
                self.shown(name).display()
            ))),
            _ => Ok(()),
        }
    }

    fn fetch_local(&self, names: &[PathBuf]) -> io::Result<()> {
        for name in names {
            let bytes = self.bucket.get(&Self::key(name)?).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("'{}' is missing", name.display()),
                )
            })?;
            let path = self.shadow.local_path(name);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::write(path, bytes)?;
        }
        Ok(())
    }

    fn release_local(&self) -> io::Result<()> {
        match fs::remove_dir_all(self.shadow.root()) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        }
    }

    /// A create-only PUT twice: the second must conflict, as it does here.
    fn probe_conditional_writes(&self) -> crate::Result<()> {
        let key = Self::key(&crate::layout::probe_name())
            .map_err(|err| crate::Error::io("probe", err))?;
        let fresh = Mutex::new(HashMap::from([(key.clone(), Seen::Absent)]));
        put(&self.bucket, &fresh, &key, b"probe".to_vec())
            .map_err(|err| crate::Error::io("probe", err))?;
        fresh.lock().unwrap().insert(key.clone(), Seen::Absent);
        let again = put(&self.bucket, &fresh, &key, b"probe".to_vec());
        self.bucket.objects.lock().unwrap().remove(&key);
        match again {
            Err(err) if super::is_conflict(&err) => Ok(()),
            _ => Err(crate::Error::invalid("conditional writes are ignored")),
        }
    }

    /// A create-only PUT of the lease object; it never expires here (no
    /// process dies in a unit test), and goes when this handle is dropped.
    fn take_lease(&self) -> crate::Result<()> {
        let key = crate::layout::LEASE_NAME;
        let fresh = Mutex::new(HashMap::from([(key.to_owned(), Seen::Absent)]));
        match put(&self.bucket, &fresh, key, b"held".to_vec()) {
            Ok(()) => {
                *self.lease.lock().unwrap() = match fresh.lock().unwrap().get(key) {
                    Some(Seen::Version(version)) => Some(*version),
                    _ => None,
                };
                Ok(())
            }
            Err(err) if super::is_conflict(&err) => Err(crate::Error::Leased {
                lease: PathBuf::from(format!("{}/{key}", self.url)),
                holder: "another handle".to_owned(),
            }),
            Err(err) => Err(crate::Error::io("take the lease", err)),
        }
    }

    /// Objects are written whole: no uploads to abort.
    fn abort_uploads(&self, _owned: &dyn Fn(&Path) -> bool) -> io::Result<Vec<PathBuf>> {
        Ok(Vec::new())
    }
}

impl Drop for MemoryStore {
    fn drop(&mut self) {
        let _ = self.release_local();
        if let Some(version) = self.lease.get_mut().unwrap().take() {
            let mut objects = self.bucket.objects.lock().unwrap();
            if objects.get(crate::layout::LEASE_NAME).map(|o| o.version) == Some(version) {
                objects.remove(crate::layout::LEASE_NAME);
            }
        }
    }
}

struct MemoryReader(Arc<Vec<u8>>);

impl ReadAt for MemoryReader {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_exact_at(&self, buffer: &mut [u8], offset: u64) -> io::Result<()> {
        super::check_within(offset, buffer.len(), self.size())?;
        let start = offset as usize;
        buffer.copy_from_slice(&self.0[start..start + buffer.len()]);
        Ok(())
    }
}

/// Buffers the object and PUTs it whole at `finish`; dropped unfinished,
/// nothing is written.
struct MemoryWriter {
    bucket: Bucket,
    seen: Arc<Mutex<HashMap<String, Seen>>>,
    key: String,
    bytes: Vec<u8>,
}

impl io::Write for MemoryWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.bytes.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl FileWriter for MemoryWriter {
    fn finish(mut self: Box<Self>) -> io::Result<()> {
        let bytes = std::mem::take(&mut self.bytes);
        put(&self.bucket, &self.seen, &self.key, bytes)
    }
}
