//! The remote tier's upload queue: checkpoints committed locally wait here,
//! in commit order, until one worker thread per manager has copied each to
//! the remote and committed it there (`TierCopy` does one copy, through
//! the remote's own commit). The queue is listed durably beside the local
//! state file, so a restarted manager resumes it; a failure is retried
//! with backoff and reported, never returned to a save.

use std::collections::{HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::layout::UPLOADS_FILE_NAME;
use crate::manifest::ByteString;
use crate::store::{self, Store};

/// The first wait after a failure; it doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often, at most, a copy that is not ready is looked at again.
const MAX_READY_POLL: Duration = Duration::from_secs(1);
/// The durable list is small: a line per waiting checkpoint.
const MAX_LIST_BYTES: u64 = 16 << 20;

/// One copy to the remote tier, on the upload thread.
pub(crate) trait TierCopy: Send {
    /// Opens the remote as its writer (its recovery runs); the number of
    /// its newest checkpoint.
    fn connect(&mut self, log: &mut Vec<String>) -> Result<Option<u64>>;
    /// Whether the remote's retention keeps `queue[index]` once every
    /// checkpoint of `queue` is uploaded: if not, its upload is skipped.
    fn wanted(&mut self, queue: &[OsString], index: usize) -> Result<bool>;
    /// Whether `base` can be copied now (not a failure when not: rank 0
    /// waits for the pieces other node-local ranks leave in the remote).
    fn ready(&mut self, _base: &OsStr, _log: &mut Vec<String>) -> Result<bool> {
        Ok(true)
    }
    /// Copies the local checkpoint `base` and commits it remotely; its
    /// number.
    fn copy(&mut self, base: &OsStr, log: &mut Vec<String>) -> Result<u64>;
}

/// What `ckpt_manager_remote_status` reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RemoteStatus {
    /// The newest checkpoint this manager uploaded (or found uploaded).
    pub newest_uploaded: Option<u64>,
    /// Checkpoints waiting for their upload, the one in progress included.
    pub pending: usize,
    /// The last failure, until an upload succeeds.
    pub last_error: Option<String>,
    /// Failed attempts so far.
    pub failures: u64,
    /// Checkpoints deleted locally before their upload, by the local bound.
    pub dropped: u64,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<OsString>,
    /// The one being copied is still `waiting[0]`; this says so.
    copying: bool,
    status: RemoteStatus,
    /// For the manager's log callback, which runs on the calling thread.
    messages: Vec<String>,
    /// Bumped at each change of `waiting`, to write the list once per change.
    generation: u64,
    /// The remote was reached and the queue completed from the local
    /// checkpoints newer than its newest: until then, uploads may wait
    /// that the queue does not show yet.
    resumed: bool,
    stopping: bool,
    /// Where the uploads go, as the list records it.
    remote: PathBuf,
}

struct Shared {
    queue: Mutex<Queue>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sleeps `duration`, or less when the manager stops.
    fn pause(&self, duration: Duration) {
        let deadline = Instant::now() + duration;
        let mut queue = self.lock();
        while !queue.stopping {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            queue = self
                .changed
                .wait_timeout(queue, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    fn failed(&self, what: &str, err: &Error) {
        let mut queue = self.lock();
        let message = format!("{what} failed (retrying): {err}");
        queue.status.failures += 1;
        queue.status.last_error = Some(message.clone());
        queue.messages.push(message);
    }
}

/// The queue and its thread; dropping it stops the thread after the copy
/// in progress. What is left waiting stays listed for the next open.
pub(crate) struct Uploads {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Uploads {
    /// Starts the upload thread on what the durable list holds, and on the
    /// local checkpoints (`local`, oldest first) newer than the remote's
    /// newest once the remote is reached: a kill may come between a local
    /// commit and the list's next write.
    pub fn start(
        store: Arc<dyn Store>,
        remote: PathBuf,
        local: Vec<(OsString, u64)>,
        copier: Box<dyn TierCopy>,
    ) -> Result<Uploads> {
        let listed: HashSet<OsString> = read_upload_list(&*store)?
            .map(|list| list.pending().map(OsStr::to_owned).collect())
            .unwrap_or_default();
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            changed: Condvar::new(),
        });
        {
            let mut queue = shared.lock();
            queue.remote = remote;
            queue.waiting = local
                .iter()
                .filter(|(base, _)| listed.contains(base))
                .map(|(base, _)| base.clone())
                .collect();
        }
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("ckpt-upload".into())
            .spawn(move || run(&thread_shared, &*store, local, copier))
            .map_err(|err| Error::io("start the upload thread", err))?;
        Ok(Uploads {
            shared,
            thread: Some(thread),
        })
    }

    /// A checkpoint committed locally, to upload after those waiting (again
    /// when the one being copied was saved anew under it).
    pub fn push(&self, base: &OsStr) {
        let mut queue = self.shared.lock();
        let copying = queue.copying && queue.waiting.front().is_some_and(|first| first == base);
        let waiting = queue.waiting.iter().skip(usize::from(copying));
        if !waiting.clone().any(|waiting| waiting == base) {
            queue.waiting.push_back(base.to_owned());
            queue.generation += 1;
        }
        self.shared.changed.notify_all();
    }

    /// Checkpoints deleted locally before their upload: no longer waiting.
    pub fn dropped(&self, bases: &[PathBuf]) {
        let mut queue = self.shared.lock();
        for base in bases {
            let before = queue.waiting.len();
            let copying = queue.copying && queue.waiting.front().map(Path::new) == Some(base);
            queue.waiting.retain(|waiting| Path::new(waiting) != base);
            if queue.waiting.len() < before {
                queue.status.dropped += 1;
                queue.generation += 1;
                queue.copying &= !copying;
            }
        }
        self.shared.changed.notify_all();
    }

    /// The local checkpoints the local sweep must keep: those waiting.
    pub fn held(&self) -> HashSet<PathBuf> {
        let queue = self.shared.lock();
        queue.waiting.iter().map(PathBuf::from).collect()
    }

    pub fn status(&self) -> RemoteStatus {
        let queue = self.shared.lock();
        RemoteStatus {
            pending: queue.waiting.len(),
            ..queue.status.clone()
        }
    }

    /// The thread's log lines since the last call.
    pub fn take_messages(&self) -> Vec<String> {
        std::mem::take(&mut self.shared.lock().messages)
    }

    /// Waits until nothing is waiting, at most `timeout` (`None`: as long
    /// as it takes); whether nothing is (false too when the thread died).
    pub fn wait(&self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|timeout| Instant::now() + timeout);
        let mut queue = self.shared.lock();
        while (!queue.waiting.is_empty() || !queue.resumed) && !queue.stopping {
            let left = match deadline {
                None => Duration::from_secs(3600),
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
            };
            if left.is_zero() {
                return false;
            }
            queue = self
                .shared
                .changed
                .wait_timeout(queue, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        queue.waiting.is_empty() && queue.resumed
    }
}

impl Drop for Uploads {
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The upload thread: reach the remote, then copy what waits, oldest
/// first, skipping what the remote would not keep.
fn run(
    shared: &Shared,
    store: &dyn Store,
    local: Vec<(OsString, u64)>,
    mut copier: Box<dyn TierCopy>,
) {
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut backoff = FIRST_BACKOFF;
        let mut log = Vec::new();
        let mut written = None;
        let remote_newest = loop {
            write_list_once(shared, store, &mut written);
            if shared.lock().stopping {
                return;
            }
            let connected = copier.connect(&mut log);
            shared.lock().messages.append(&mut log);
            match connected {
                Ok(newest) => break newest,
                Err(err) => {
                    shared.failed("opening the remote directory", &err);
                    shared.pause(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        };
        resume_newer(shared, &local, remote_newest);
        copy_waiting(shared, store, &mut *copier, written);
    }));
    if let Err(panic) = caught {
        let mut queue = shared.lock();
        let message = format!(
            "the upload thread stopped: {}",
            crate::background::panic_message(&*panic)
        );
        queue.status.last_error = Some(message.clone());
        queue.messages.push(message);
        // Nothing uploads any more: waiters must not wait for it.
        queue.stopping = true;
        shared.changed.notify_all();
    }
}

/// Adds the local checkpoints newer than the remote's newest, in commit
/// order, to what the list said.
fn resume_newer(shared: &Shared, local: &[(OsString, u64)], remote_newest: Option<u64>) {
    let mut queue = shared.lock();
    queue.status.newest_uploaded = remote_newest;
    let newer = local
        .iter()
        .filter(|(_, number)| remote_newest.is_none_or(|newest| *number > newest));
    let mut order: Vec<OsString> = local
        .iter()
        .map(|(base, _)| base.clone())
        .filter(|base| {
            queue.waiting.contains(base) || newer.clone().any(|(newer, _)| newer == base)
        })
        .collect();
    // Pushed since the thread started: after the others.
    for base in &queue.waiting {
        if !order.contains(base) {
            order.push(base.clone());
        }
    }
    queue.waiting = order.into();
    queue.generation += 1;
    queue.resumed = true;
    shared.changed.notify_all();
}

/// Copies the oldest waiting checkpoint (or skips it) until the manager
/// stops; a failure is reported and retried after a growing pause.
fn copy_waiting(
    shared: &Shared,
    store: &dyn Store,
    copier: &mut dyn TierCopy,
    mut written: Option<u64>,
) {
    let (mut backoff, mut poll) = (FIRST_BACKOFF, FIRST_BACKOFF);
    let mut log = Vec::new();
    loop {
        let (waiting, generation) = {
            let mut queue = shared.lock();
            while queue.waiting.is_empty() && !queue.stopping && written == Some(queue.generation) {
                queue = shared
                    .changed
                    .wait(queue)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            if queue.stopping {
                drop(queue);
                write_list_once(shared, store, &mut written);
                return;
            }
            queue.copying = !queue.waiting.is_empty();
            (Vec::from(queue.waiting.clone()), queue.generation)
        };
        if written != Some(generation) {
            write_list_once(shared, store, &mut written);
        }
        let Some(base) = waiting.first() else {
            continue;
        };
        let copied = copier.wanted(&waiting, 0).and_then(|wanted| match wanted {
            true => match copier.ready(base, &mut log)? {
                true => copier.copy(base, &mut log).map(Copied::Done),
                false => Ok(Copied::NotReady),
            },
            false => Ok(Copied::Skipped),
        });
        if let Ok(Copied::NotReady) = copied {
            let mut queue = shared.lock();
            queue.messages.append(&mut log);
            queue.copying = false;
            drop(queue);
            shared.pause(poll);
            poll = (poll * 2).min(MAX_READY_POLL);
            continue;
        }
        poll = FIRST_BACKOFF;
        let copied = copied.map(|copied| match copied {
            Copied::Done(number) => Some(number),
            _ => None,
        });
        let mut queue = shared.lock();
        queue.messages.append(&mut log);
        let still_first = queue.copying && queue.waiting.front() == Some(base);
        queue.copying = false;
        match copied {
            Ok(number) => {
                if still_first {
                    queue.waiting.pop_front();
                    queue.generation += 1;
                }
                if let Some(number) = number {
                    queue.status.newest_uploaded = queue.status.newest_uploaded.max(Some(number));
                    queue.status.last_error = None;
                }
                backoff = FIRST_BACKOFF;
                shared.changed.notify_all();
            }
            Err(err) if !still_first => {
                // Deleted locally under it (the local bound): nothing to retry.
                queue.messages.push(format!(
                    "the upload of '{}' stopped: it was deleted locally ({err})",
                    Path::new(base).display()
                ));
            }
            Err(err @ Error::Damaged { .. }) => {
                queue.waiting.pop_front();
                queue.generation += 1;
                queue.status.last_error = Some(err.to_string());
                queue.messages.push(format!(
                    "not uploading '{}': {err}",
                    Path::new(base).display()
                ));
                shared.changed.notify_all();
            }
            Err(err) => {
                drop(queue);
                shared.failed(&format!("uploading '{}'", Path::new(base).display()), &err);
                shared.pause(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// What became of the first checkpoint waiting.
enum Copied {
    Done(u64),
    /// The remote's retention would not keep it.
    Skipped,
    NotReady,
}

/// Writes the durable list as the queue is now; a failure is logged and
/// tried again at the next change.
fn write_list_once(shared: &Shared, store: &dyn Store, written: &mut Option<u64>) {
    let (list, generation) = {
        let queue = shared.lock();
        let list = UploadList {
            remote: ByteString::from_bytes(queue.remote.as_os_str().as_bytes()),
            pending: (queue.waiting.iter())
                .map(|base| ByteString::from_bytes(base.as_bytes()))
                .collect(),
        };
        (list, queue.generation)
    };
    if *written == Some(generation) {
        return;
    }
    let bytes = serde_json::to_vec(&list).expect("names always serialise");
    *written = Some(generation);
    if let Err(err) = super::replace::replace_aside(store, Path::new(UPLOADS_FILE_NAME), &bytes) {
        let message = format!("could not list the pending uploads: {err}");
        shared.lock().messages.push(message);
    }
}

/// `checkpoint.uploads`: where the remote tier is, and the checkpoints
/// waiting for their upload there, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadList {
    pub remote: ByteString,
    pub pending: Vec<ByteString>,
}

impl UploadList {
    pub fn remote(&self) -> PathBuf {
        PathBuf::from(OsStr::from_bytes(self.remote.as_bytes()))
    }

    pub fn pending(&self) -> impl Iterator<Item = &OsStr> {
        self.pending
            .iter()
            .map(|name| OsStr::from_bytes(name.as_bytes()))
    }
}

/// The list a manager with a remote tier keeps in `store`; `None` when it
/// has none, or it is unreadable (the next open writes it again).
pub fn read_upload_list(store: &dyn Store) -> Result<Option<UploadList>> {
    let name = Path::new(UPLOADS_FILE_NAME);
    let bytes = store::read_bounded(store, name, MAX_LIST_BYTES)
        .map_err(|err| Error::io_at("read", &store.shown(name), err))?;
    Ok(bytes.and_then(|bytes| serde_json::from_slice(&bytes).ok()))
}
