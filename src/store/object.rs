//! An S3-compatible bucket prefix, through the `object_store` crate (its
//! client, signing, retries with backoff and multipart uploads).
//!
//! - Files the library writes go straight to objects: a small one in one
//!   PUT, a large one as a multipart upload with concurrent parts.
//! - Files a save callback writes land in a local shadow directory
//!   (`local_path`); `sync_files`, which the transaction runs before its
//!   commit point, uploads them and removes the local copies.
//! - Reads are ranged GETs, pinned to the ETag seen when the object was
//!   opened, so a replaced object is an error rather than mixed bytes.
//! - A rename onto an object this store has read (the state file, a
//!   manifest) is a conditional PUT: `If-Match` its ETag, or
//!   `If-None-Match: *` if it was absent. Losing that race is a `Conflict`.
//!   Other renames are a server-side copy and a delete.

use std::collections::HashMap;
use std::fs;
use std::future::Future;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

mod lease;
mod uploads;

use futures::future::try_join_all;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, Checksum};
use object_store::path::Path as Key;
use object_store::{
    GetOptions, GetRange, MultipartUpload, ObjectStore as Client, PutMode, PutOptions, PutPayload,
    UpdateVersion,
};

use super::shadow::ShadowDirectory;
use super::{conflict, Entry, FileWriter, Kind, ReadAt, Store};
use crate::location::BucketPrefix;

/// The largest part of a multipart upload, and the size up to which a file
/// is one PUT.
const PART_BYTES: usize = 16 << 20;
/// Parts uploaded at once by one file.
const PARTS_IN_FLIGHT: usize = 8;
/// S3's smallest part (but the last) and most parts of one upload.
const MIN_PART_BYTES: usize = 5 << 20;
const MAX_PARTS: u64 = 10_000;
/// Ranged GETs of one read at once, each of at most `PART_BYTES`.
const RANGES_IN_FLIGHT: usize = 8;
/// S3's limit on a server-side copy (CopyObject).
const COPY_LIMIT: u64 = 5 << 30;

/// The library's own options, beside the client's (`aws_*`).
pub const LOCAL_STAGING_OPTION: &str = "ckpt_local_staging_directory";
pub const UNCONDITIONAL_OPTION: &str = "ckpt_allow_unconditional_writes";
pub const RETRIES_OPTION: &str = "ckpt_max_retries";
pub use lease::LEASE_SECONDS_OPTION;
/// Every write carries the SHA-256 of its bytes (of each part, for a
/// multipart upload), which the server checks and keeps with the object.
/// The client computes that digest anyway to sign the request, so it costs
/// nothing here; without it S3 (and moto) compute a whole-object checksum
/// of their own when a multipart upload completes. `none` is for a server
/// that refuses the header.
const CHECKSUM_KEY: AmazonS3ConfigKey = AmazonS3ConfigKey::Checksum;
const NO_CHECKSUM: &str = "none";

/// The runtime every object store's requests run on; the library's calls
/// block on them from whatever thread the caller uses.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .thread_name("ckpt-object-store")
            .enable_all()
            .build()
            .expect("the object store's runtime starts")
    })
}

/// Runs `future` on the runtime and waits for it. Spawned rather than
/// `block_on`, so that a caller already inside some tokio runtime works.
fn run<T: Send + 'static>(future: impl Future<Output = T> + Send + 'static) -> io::Result<T> {
    let (sender, receiver) = std::sync::mpsc::sync_channel(1);
    runtime().spawn(async move {
        let _ = sender.send(future.await);
    });
    receiver
        .recv()
        .map_err(|_| io::Error::other("an object store request panicked"))
}

/// The ETags this store last saw, by key; its writers record theirs.
type SeenTags = Arc<Mutex<HashMap<String, Seen>>>;

/// What this store last saw of an object it read or wrote.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Absent,
    Tag(String),
}

#[derive(Debug)]
pub struct ObjectStore {
    location: BucketPrefix,
    client: Arc<dyn Client>,
    /// Where save callbacks write and restore callbacks read, locally.
    shadow: ShadowDirectory,
    seen: SeenTags,
    /// The user opted out of conditional writes (a server without them).
    unconditional: bool,
    /// How long a writer's lease lasts without a refresh; 0: no lease.
    lease_seconds: f64,
    /// This writer's lease, once taken.
    lease: Mutex<Option<lease::Lease>>,
    uploads: Arc<uploads::Uploads>,
}

/// The settings of a connection: the client's options by their own names,
/// and the library's.
pub fn connect(
    location: &BucketPrefix,
    options: &[(String, String)],
) -> crate::Result<ObjectStore> {
    let mut builder = AmazonS3Builder::from_env();
    for (key, value) in crate::store::profile::settings()? {
        builder = builder.with_config(key, value);
    }
    let mut staging = None;
    let mut unconditional = false;
    let mut lease_seconds = lease::DEFAULT_LEASE_SECONDS;
    let mut without_checksum = false;
    for (key, value) in options {
        match key.as_str() {
            LOCAL_STAGING_OPTION => staging = Some(PathBuf::from(value)),
            UNCONDITIONAL_OPTION => unconditional = parse_bool(key, value)?,
            LEASE_SECONDS_OPTION => lease_seconds = parse_seconds(key, value)?,
            RETRIES_OPTION => {
                builder = builder.with_retry(object_store::RetryConfig {
                    max_retries: parse_count(key, value)?,
                    ..Default::default()
                })
            }
            _ => match config_key(key)? {
                config if config == CHECKSUM_KEY && value == NO_CHECKSUM => without_checksum = true,
                config => builder = builder.with_config(config, value),
            },
        }
    }
    if !without_checksum && builder.get_config_value(&CHECKSUM_KEY).is_none() {
        builder = builder.with_checksum_algorithm(Checksum::SHA256);
    }
    let builder = builder.with_bucket_name(&location.bucket);
    let unreachable =
        |err| crate::Error::invalid(format!("cannot reach '{}': {err}", location.url()));
    let client = Arc::new(builder.clone().build().map_err(unreachable)?);
    let uploads = Arc::new(uploads::Uploads::new(&builder, client.clone()));
    let root = staging.unwrap_or_else(std::env::temp_dir);
    let shadow = ShadowDirectory::create(&root)
        .map_err(|err| crate::Error::io_at("create a local staging directory in", &root, err))?;
    Ok(ObjectStore {
        location: location.clone(),
        client,
        shadow,
        seen: SeenTags::default(),
        unconditional,
        lease_seconds,
        lease: Mutex::new(None),
        uploads,
    })
}

/// Checks a storage option's name: the library's own, or one the S3
/// client knows (`aws_endpoint`, `aws_region`, ...).
pub fn check_option(key: &str, value: &str) -> crate::Result<()> {
    match key {
        LOCAL_STAGING_OPTION => Ok(()),
        UNCONDITIONAL_OPTION => parse_bool(key, value).map(drop),
        RETRIES_OPTION => parse_count(key, value).map(drop),
        LEASE_SECONDS_OPTION => parse_seconds(key, value).map(drop),
        _ => config_key(key).map(drop),
    }
}

fn config_key(key: &str) -> crate::Result<AmazonS3ConfigKey> {
    key.parse().map_err(|_| {
        crate::Error::invalid(format!(
            "unknown storage option '{key}': use the S3 client's names (aws_endpoint, aws_region, \
             aws_access_key_id, aws_allow_http, ...), {LOCAL_STAGING_OPTION}, \
             {UNCONDITIONAL_OPTION}, {RETRIES_OPTION} or {LEASE_SECONDS_OPTION}"
        ))
    })
}

fn parse_count(key: &str, value: &str) -> crate::Result<usize> {
    value.parse().map_err(|_| {
        crate::Error::invalid(format!("storage option {key} is a count, not '{value}'"))
    })
}

fn parse_seconds(key: &str, value: &str) -> crate::Result<f64> {
    match value.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && (seconds == 0.0 || seconds >= 1.0) => Ok(seconds),
        _ => Err(crate::Error::invalid(format!(
            "storage option {key} is a number of seconds, 0 or at least 1, not '{value}'"
        ))),
    }
}

fn parse_bool(key: &str, value: &str) -> crate::Result<bool> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(crate::Error::invalid(format!(
            "storage option {key} is true or false, not '{value}'"
        ))),
    }
}

/// An object store error as an I/O error, keeping its meaning.
fn io_error(err: object_store::Error) -> io::Error {
    match err {
        object_store::Error::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, err),
        object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. } => {
            conflict(err.to_string())
        }
        other => io::Error::other(other),
    }
}

fn missing_is_none<T>(result: Result<T, object_store::Error>) -> io::Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(err) => Err(io_error(err)),
    }
}

/// Records the ETag a write left (none known: forget the key).
fn record(seen: &SeenTags, key: &Key, e_tag: Option<String>) {
    let mut seen = seen.lock().unwrap();
    match e_tag {
        Some(tag) => seen.insert(key.to_string(), Seen::Tag(tag)),
        None => seen.remove(key.as_ref()),
    };
}

/// One PUT of `bytes` in `mode`, recording its ETag. The client does not
/// retry a conditional PUT whose connection broke (it is not idempotent),
/// so this does, a few times; and a retry can find its own first attempt:
/// if the object holds exactly these bytes, that is success, not a
/// conflict.
fn put(
    client: &Arc<dyn Client>,
    seen: &SeenTags,
    key: &Key,
    bytes: Vec<u8>,
    mode: PutMode,
) -> io::Result<()> {
    const CONDITIONAL_ATTEMPTS: u32 = 4;
    let (client, target) = (client.clone(), key.clone());
    let payload = PutPayload::from(bytes.clone());
    let outcome = run(async move {
        let conditional = mode != PutMode::Overwrite;
        let mut attempt = 1;
        loop {
            let options = PutOptions {
                mode: mode.clone(),
                ..PutOptions::default()
            };
            match client.put_opts(&target, payload.clone(), options).await {
                Ok(put) => return Ok(put.e_tag),
                Err(
                    err @ (object_store::Error::Precondition { .. }
                    | object_store::Error::AlreadyExists { .. }),
                ) => {
                    let got = client.get(&target).await?;
                    let tag = got.meta.e_tag.clone();
                    return match got.bytes().await? == bytes.as_slice() {
                        true => Ok(tag),
                        false => Err(err),
                    };
                }
                Err(object_store::Error::Generic { .. })
                    if conditional && attempt < CONDITIONAL_ATTEMPTS =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(100 << attempt)).await;
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        }
    })?;
    record(seen, key, outcome.map_err(io_error)?);
    Ok(())
}

impl ObjectStore {
    fn key(&self, name: &Path) -> io::Result<Key> {
        let name = std::str::from_utf8(name.as_os_str().as_bytes()).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "object names must be UTF-8")
        })?;
        // The exact key, not percent-encoded as `Key::from` would.
        Key::parse(self.location.key(name))
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))
    }

    /// A writer of `key`, which must still be absent if this store saw it
    /// absent: a file placed early never overwrites another writer's.
    fn writer(&self, key: Key) -> ObjectWriter {
        let create_only = !self.unconditional && self.seen(&key) == Some(Seen::Absent);
        ObjectWriter {
            client: self.client.clone(),
            seen: self.seen.clone(),
            create_only,
            key,
            part_bytes: PART_BYTES,
            buffer: Vec::new(),
            upload: None,
            in_flight: Default::default(),
        }
    }

    fn see(&self, key: &Key, seen: Seen) {
        self.seen.lock().unwrap().insert(key.to_string(), seen);
    }

    fn seen(&self, key: &Key) -> Option<Seen> {
        self.seen.lock().unwrap().get(key.as_ref()).cloned()
    }

    /// A local shadow file of `name` written by a callback, if any.
    fn shadow_file(&self, name: &Path) -> io::Result<bool> {
        Ok(self.shadow.kind(name)? == Some(Kind::File))
    }

    /// Writes `bytes` to `key`, conditionally when this store saw it.
    fn put_seen(&self, key: &Key, bytes: Vec<u8>) -> io::Result<()> {
        let mode = match (self.unconditional, self.seen(key)) {
            (true, _) | (false, None) => PutMode::Overwrite,
            (false, Some(Seen::Absent)) => PutMode::Create,
            (false, Some(Seen::Tag(tag))) => PutMode::Update(UpdateVersion {
                e_tag: Some(tag),
                version: None,
            }),
        };
        put(&self.client, &self.seen, key, bytes, mode)
    }

    /// Uploads a callback's local file `name` to the object `to`, and
    /// removes the local copy.
    fn upload_shadow(&self, name: &Path, to: &Path) -> io::Result<()> {
        let mut file = fs::File::open(self.shadow.local_path(name))?;
        let mut writer = self.writer(self.key(to)?);
        writer.expect_size(file.metadata()?.len());
        let mut buffer = vec![0u8; PART_BYTES.min(8 << 20)];
        loop {
            let read = file.read(&mut buffer)?;
            if read == 0 {
                break;
            }
            io::Write::write_all(&mut writer, &buffer[..read])?;
        }
        Box::new(writer).finish()?;
        self.shadow.remove_file(name)
    }
}

impl Store for ObjectStore {
    fn local_path(&self, name: &Path) -> PathBuf {
        self.shadow.local_path(name)
    }

    fn shown(&self, name: &Path) -> PathBuf {
        let name = name.as_os_str().to_string_lossy();
        PathBuf::from(match name.is_empty() {
            true => self.location.url(),
            false => format!("{}/{name}", self.location.url()),
        })
    }

    fn list(&self, directory: &Path) -> io::Result<Vec<Entry>> {
        let key = self.key(directory)?;
        let client = self.client.clone();
        let prefix = (!key.as_ref().is_empty()).then_some(key);
        let listed = run(async move { client.list_with_delimiter(prefix.as_ref()).await })?
            .map_err(io_error)?;
        let mut entries = self.shadow.list(directory)?;
        let mut add = |key: &Key, kind| {
            let name = std::ffi::OsString::from(key.filename().unwrap_or_default());
            if !entries.iter().any(|entry| entry.name == name) {
                entries.push(Entry { name, kind });
            }
        };
        listed
            .objects
            .iter()
            .for_each(|o| add(&o.location, Kind::File));
        listed
            .common_prefixes
            .iter()
            .for_each(|p| add(p, Kind::Directory));
        Ok(entries)
    }

    fn kind(&self, name: &Path) -> io::Result<Option<Kind>> {
        if let Some(kind) = self.shadow.kind(name)? {
            return Ok(Some(kind));
        }
        let key = self.key(name)?;
        let client = self.client.clone();
        let target = key.clone();
        let head = run(async move { client.head(&target).await })?;
        if missing_is_none(head)?.is_some() {
            return Ok(Some(Kind::File));
        }
        self.see(&key, Seen::Absent);
        let client = self.client.clone();
        let listed =
            run(async move { client.list_with_delimiter(Some(&key)).await })?.map_err(io_error)?;
        let any = !listed.objects.is_empty() || !listed.common_prefixes.is_empty();
        Ok(any.then_some(Kind::Directory))
    }

    fn open_read(&self, name: &Path) -> io::Result<Option<Box<dyn ReadAt>>> {
        if self.shadow_file(name)? {
            return self.shadow.open_read(name);
        }
        let key = self.key(name)?;
        let client = self.client.clone();
        let target = key.clone();
        let Some(meta) = missing_is_none(run(async move { client.head(&target).await })?)? else {
            self.see(&key, Seen::Absent);
            return Ok(None);
        };
        if let Some(tag) = &meta.e_tag {
            self.see(&key, Seen::Tag(tag.clone()));
        }
        Ok(Some(Box::new(ObjectReader {
            client: self.client.clone(),
            key,
            size: meta.size,
            e_tag: meta.e_tag,
        })))
    }

    fn create(&self, name: &Path) -> io::Result<Box<dyn FileWriter>> {
        Ok(Box::new(self.writer(self.key(name)?)))
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

    fn capabilities(&self) -> super::Capabilities {
        super::Capabilities {
            atomic_rename: false,
            largest_copy: Some(COPY_LIMIT),
        }
    }

    /// Object stores cannot swap two names.
    fn rename_swapping(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.rename(from, to)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        if self.shadow_file(from)? {
            return self.upload_shadow(from, to);
        }
        let (source, target) = (self.key(from)?, self.key(to)?);
        let client = self.client.clone();
        let read = source.clone();
        let size = run(async move { client.head(&read).await })?
            .map_err(io_error)?
            .size;
        // Small objects this store read (the state, manifests) are replaced
        // conditionally; large ones are data files under a new name.
        if self.seen(&target).is_some() && size <= PART_BYTES as u64 {
            let client = self.client.clone();
            let read = source.clone();
            let bytes =
                run(async move { client.get(&read).await?.bytes().await })?.map_err(io_error)?;
            self.put_seen(&target, bytes.to_vec())?;
        } else {
            let client = self.client.clone();
            let (read, write) = (source.clone(), target.clone());
            run(async move { client.copy(&read, &write).await })?.map_err(io_error)?;
        }
        let client = self.client.clone();
        run(async move { client.delete(&source).await })?.map_err(io_error)
    }

    fn remove_file(&self, name: &Path) -> io::Result<()> {
        self.shadow.remove_file(name)?;
        let key = self.key(name)?;
        let client = self.client.clone();
        let target = key.clone();
        missing_is_none(run(async move { client.delete(&target).await })?)?;
        self.seen.lock().unwrap().remove(key.as_ref());
        Ok(())
    }

    fn remove_empty_dir(&self, name: &Path) -> io::Result<()> {
        self.shadow.remove_empty_dir(name)
    }

    fn remove_staging(&self, name: &Path) -> io::Result<()> {
        self.shadow.remove_staging(name)?;
        let key = self.key(name)?;
        let client = self.client.clone();
        run(async move {
            use futures::TryStreamExt;
            // Listing is by whole segments: `a/b` lists `a/b/...` only.
            let keys: Vec<Key> = client
                .list(Some(&key))
                .map_ok(|meta| meta.location)
                .try_collect()
                .await?;
            try_join_all(keys.iter().map(|key| client.delete(key))).await?;
            Ok::<_, object_store::Error>(())
        })?
        .map_err(io_error)
    }

    fn check_unchanged(&self, name: &Path) -> io::Result<()> {
        let lease = self
            .lease
            .lock()
            .unwrap()
            .as_ref()
            .map(|lease| lease.lost());
        if let Some(lost) = lease {
            if let Some(lost) = run(lost)?.map_err(io_error)? {
                return Err(conflict(lost));
            }
        }
        let key = self.key(name)?;
        let Some(seen) = self.seen(&key).filter(|_| !self.unconditional) else {
            return Ok(());
        };
        let client = self.client.clone();
        let target = key.clone();
        let now = match missing_is_none(run(async move { client.head(&target).await })?)? {
            Some(meta) => meta.e_tag.map_or(Seen::Absent, Seen::Tag),
            None => Seen::Absent,
        };
        if now == seen {
            return Ok(());
        }
        Err(conflict(format!(
            "'{}' changed since this manager read it",
            self.shown(name).display()
        )))
    }

    fn fetch_local(&self, names: &[PathBuf]) -> io::Result<()> {
        for name in names {
            let Some(file) = self.open_read(name)? else {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("'{}' is missing", self.shown(name).display()),
                ));
            };
            let path = self.shadow.local_path(name);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            let mut local = fs::File::create(&path)?;
            let mut offset = 0;
            let mut buffer = vec![0u8; (file.size() as usize).min(PART_BYTES)];
            while offset < file.size() {
                let chunk = &mut buffer[..(file.size() - offset).min(PART_BYTES as u64) as usize];
                file.read_exact_at(chunk, offset)?;
                io::Write::write_all(&mut local, chunk)?;
                offset += chunk.len() as u64;
            }
        }
        Ok(())
    }

    fn release_local(&self) -> io::Result<()> {
        self.shadow.clear()
    }

    /// See `lease`: none when the user chose no lease or a server without
    /// conditional writes, which a lease needs.
    fn take_lease(&self) -> crate::Result<()> {
        if self.unconditional || self.lease_seconds == 0.0 {
            return Ok(());
        }
        let name = |name: &Path| self.key(name).map_err(|err| crate::Error::io("lease", err));
        let taken = run(lease::Lease::take(
            self.client.clone(),
            name(Path::new(crate::layout::LEASE_NAME))?,
            name(&crate::layout::clock_name())?,
            self.lease_seconds,
            self.shown(Path::new(crate::layout::LEASE_NAME))
                .to_string_lossy()
                .into_owned(),
        ))
        .map_err(|err| crate::Error::io("take the lease", err))??;
        *self.lease.lock().unwrap() = Some(taken);
        Ok(())
    }

    fn abort_uploads(&self, owned: &dyn Fn(&Path) -> bool) -> io::Result<Vec<PathBuf>> {
        let root = self.key(Path::new(""))?.to_string();
        let prefix = match root.is_empty() {
            true => root,
            false => format!("{root}/"),
        };
        let uploads = self.uploads.clone();
        let listed = {
            let (uploads, prefix) = (uploads.clone(), prefix.clone());
            run(async move { uploads.list(&prefix).await })?.map_err(io_error)?
        };
        let mut aborted = Vec::new();
        for upload in listed {
            let Some(name) = upload.key.strip_prefix(&prefix).map(PathBuf::from) else {
                continue;
            };
            if !owned(&name) {
                continue;
            }
            let uploads = uploads.clone();
            run(async move { uploads.abort(&upload).await })?.map_err(io_error)?;
            aborted.push(name);
        }
        Ok(aborted)
    }

    fn probe_conditional_writes(&self) -> crate::Result<()> {
        if self.unconditional {
            return Ok(());
        }
        let name = crate::layout::probe_name();
        let key = self
            .key(&name)
            .map_err(|err| crate::Error::io("probe", err))?;
        let attempt = |client: Arc<dyn Client>, key: Key| async move {
            let options = PutOptions {
                mode: PutMode::Create,
                ..PutOptions::default()
            };
            client
                .put_opts(&key, PutPayload::from_static(b"probe"), options)
                .await
        };
        let shown = self.location.url();
        let failed = |err| crate::Error::io(format!("write to '{shown}'"), err);
        run(attempt(self.client.clone(), key.clone()))
            .map_err(failed)?
            .map_err(|err| failed(io_error(err)))?;
        let again = run(attempt(self.client.clone(), key.clone())).map_err(failed)?;
        let client = self.client.clone();
        let _ = run(async move { client.delete(&key).await });
        match again {
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(()),
            Err(err) => Err(failed(io_error(err))),
            Ok(_) => Err(crate::Error::invalid(format!(
                "the server of '{shown}' ignores conditional writes (If-None-Match), so two \
                 writers could both commit; set the storage option {UNCONDITIONAL_OPTION}=true to \
                 write anyway, with one writer at a time"
            ))),
        }
    }
}

impl Drop for ObjectStore {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.get_mut().unwrap().take() {
            let _ = run(lease.release());
        }
    }
}

struct ObjectReader {
    client: Arc<dyn Client>,
    key: Key,
    size: u64,
    e_tag: Option<String>,
}

impl ReadAt for ObjectReader {
    fn size(&self) -> u64 {
        self.size
    }

    /// Concurrent ranged GETs straight into `buffer`, each pinned to the
    /// ETag the object had when opened.
    fn read_exact_at(&self, buffer: &mut [u8], offset: u64) -> io::Result<()> {
        super::check_within(offset, buffer.len(), self.size)?;
        for group in buffer
            .chunks_mut(PART_BYTES * RANGES_IN_FLIGHT)
            .scan(offset, |at, group| {
                let start = *at;
                *at += group.len() as u64;
                Some((start, group))
            })
        {
            let (start, group) = group;
            let ranges: Vec<std::ops::Range<u64>> = (0..group.len())
                .step_by(PART_BYTES)
                .map(|at| {
                    let from = start + at as u64;
                    from..from + (group.len() - at).min(PART_BYTES) as u64
                })
                .collect();
            let (client, key, e_tag) = (self.client.clone(), self.key.clone(), self.e_tag.clone());
            let parts = run(async move {
                try_join_all(ranges.into_iter().map(|range| {
                    let options = GetOptions {
                        range: Some(GetRange::Bounded(range)),
                        if_match: e_tag.clone(),
                        ..GetOptions::default()
                    };
                    let (client, key) = (client.clone(), key.clone());
                    async move { client.get_opts(&key, options).await?.bytes().await }
                }))
                .await
            })?
            .map_err(|err| match err {
                object_store::Error::Precondition { .. } => io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the object was replaced while it was read",
                ),
                err => io_error(err),
            })?;
            let mut at = 0;
            for part in parts {
                let end = at + part.len();
                if end > group.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the server returned more bytes than asked",
                    ));
                }
                group[at..end].copy_from_slice(&part);
                at = end;
            }
            if at != group.len() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server returned fewer bytes than asked",
                ));
            }
        }
        Ok(())
    }
}

/// The part size of a file of `size` bytes: equal parts, in whole rounds
/// of `PARTS_IN_FLIGHT` so that no part goes up alone at the end, each as
/// near `PART_BYTES` as that allows (11 to 24 MiB), but never under S3's
/// smallest nor so small that the upload needs more parts than S3 allows.
/// At most `PART_BYTES` is one PUT.
fn part_bytes_for(size: u64) -> usize {
    if size <= PART_BYTES as u64 {
        return PART_BYTES;
    }
    let round = (PART_BYTES * PARTS_IN_FLIGHT) as u64;
    let rounds = ((size + round / 2) / round).max(1);
    let even = size
        .div_ceil(rounds * PARTS_IN_FLIGHT as u64)
        .max(size.div_ceil(MAX_PARTS));
    usize::try_from(even).map_or(usize::MAX, |even| even.max(MIN_PART_BYTES))
}

/// Writes one object: buffered into one PUT while small, else a multipart
/// upload whose parts go up concurrently as the caller writes.
struct ObjectWriter {
    client: Arc<dyn Client>,
    seen: SeenTags,
    /// Fails (a conflict) if the object exists by the time it is written;
    /// a multipart upload cannot ask this of the server, and does not.
    create_only: bool,
    key: Key,
    /// `PART_BYTES`, or sized to the file when its size is told.
    part_bytes: usize,
    buffer: Vec<u8>,
    upload: Option<Box<dyn MultipartUpload>>,
    /// Parts being sent; a new one takes the place of whichever ends first.
    in_flight: tokio::task::JoinSet<object_store::Result<()>>,
}

impl ObjectWriter {
    fn wait_any(&mut self) -> io::Result<()> {
        let Some(part) = futures::executor::block_on(self.in_flight.join_next()) else {
            return Ok(());
        };
        part.map_err(|_| io::Error::other("an upload of a part panicked"))?
            .map_err(io_error)
    }

    /// Sends the buffer as the next part.
    fn send_part(&mut self) -> io::Result<()> {
        if self.upload.is_none() {
            let (client, key) = (self.client.clone(), self.key.clone());
            let upload = run(async move { client.put_multipart(&key).await })?.map_err(io_error)?;
            self.upload = Some(upload);
        }
        while self.in_flight.len() >= PARTS_IN_FLIGHT {
            self.wait_any()?;
        }
        let part = PutPayload::from(std::mem::take(&mut self.buffer));
        let upload = self.upload.as_mut().expect("started above");
        self.in_flight
            .spawn_on(upload.put_part(part), runtime().handle());
        Ok(())
    }
}

impl io::Write for ObjectWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.buffer.capacity() == 0 {
            self.buffer.reserve_exact(self.part_bytes);
        }
        let taken = bytes.len().min(self.part_bytes - self.buffer.len());
        self.buffer.extend_from_slice(&bytes[..taken]);
        if self.buffer.len() == self.part_bytes {
            self.send_part()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl FileWriter for ObjectWriter {
    fn expect_size(&mut self, size: u64) {
        if self.upload.is_none() && self.buffer.is_empty() {
            self.part_bytes = part_bytes_for(size);
        }
    }

    fn finish(mut self: Box<Self>) -> io::Result<()> {
        if self.upload.is_none() {
            let mode = match self.create_only {
                true => PutMode::Create,
                false => PutMode::Overwrite,
            };
            let bytes = std::mem::take(&mut self.buffer);
            return put(&self.client, &self.seen, &self.key, bytes, mode);
        }
        if !self.buffer.is_empty() {
            self.send_part()?;
        }
        while !self.in_flight.is_empty() {
            self.wait_any()?;
        }
        let mut upload = self.upload.take().expect("a multipart upload");
        let done = run(async move { upload.complete().await })?.map_err(io_error)?;
        record(&self.seen, &self.key, done.e_tag);
        Ok(())
    }
}

impl Drop for ObjectWriter {
    /// An upload that was not finished is abandoned on the server.
    fn drop(&mut self) {
        self.in_flight.abort_all();
        if let Some(mut upload) = self.upload.take() {
            let _ = run(async move { upload.abort().await });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parts S3 accepts (at least 5 MiB, at most 10,000), equal, in whole
    /// rounds of the parts sent at once.
    #[test]
    fn parts_are_sized_to_the_file() {
        const MIB: u64 = 1 << 20;
        let parts = |size: u64| size.div_ceil(part_bytes_for(size) as u64);
        assert_eq!(part_bytes_for(16 * MIB), PART_BYTES, "one PUT");
        assert_eq!(parts(40 * MIB), 8);
        assert_eq!(part_bytes_for(17 * MIB), MIN_PART_BYTES);
        // A tensor file's header does not add a part.
        assert_eq!(parts(128 * MIB + 200), 8);
        assert_eq!(parts(200 * MIB), 16);
        assert_eq!(parts(1024 * MIB + 200), 64);
        for size in (40..4096).map(|mib| mib * MIB + 200) {
            assert!(part_bytes_for(size) <= 24 << 20);
            assert_eq!(parts(size) % PARTS_IN_FLIGHT as u64, 0, "{size}");
        }
        let huge = 1 << 40;
        assert!(parts(huge) <= MAX_PARTS);
    }
}
