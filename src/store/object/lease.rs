//! One writer per prefix: the lease object `<prefix>/checkpoint.lease`
//! plays the part of a local directory's lock file.
//!
//! - A writer takes it at open with a conditional write: create if absent,
//!   or replace if its ETag is still the one read, when it was released or
//!   has expired. Losing that race means another writer took it.
//! - The holder rewrites it every third of its duration (a counter in the
//!   body changes the ETag), conditionally on its own last ETag. Before
//!   each commit point it reads the lease back (`check_unchanged`): one
//!   another writer took over refuses the commit.
//! - It expires `seconds` after its last refresh as the server dates it:
//!   a contender compares the lease's Last-Modified with the Last-Modified
//!   of an object it writes itself, both the server's clock, so clock
//!   skew between hosts does not count. Both are whole seconds: one more
//!   second of margin.
//! - A contender finding a lease not yet expired watches it until it
//!   expires (its holder died: take it over) or changes (its holder is
//!   alive: `Error::Leased`). So a live holder is reported within a third
//!   of its duration, and a killed writer keeps its restart out at most
//!   `seconds` + 1 after its last refresh.
//! - Closing releases it: a conditional write marks it released.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use object_store::path::Path as Key;
use object_store::{ObjectStore as Client, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The storage option setting the lease's duration; 0 takes no lease.
pub const LEASE_SECONDS_OPTION: &str = "ckpt_lease_seconds";
/// Long enough to ride out a few slow refreshes, short enough that a
/// killed writer's restart waits at most 26 s.
pub(super) const DEFAULT_LEASE_SECONDS: f64 = 25.0;
/// Last-Modified has whole seconds.
const DATE_GRANULARITY: Duration = Duration::from_secs(1);
/// Rounds of taking a lease other writers also race for.
const RACES: usize = 5;

/// The lease object's bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Body {
    /// Who holds it: a process on a host, for messages.
    holder: String,
    /// Which manager holds it (a process may open several).
    token: String,
    /// The holder's lease duration.
    seconds: f64,
    /// Refreshes so far: each changes the object's ETag.
    refreshes: u64,
    released: bool,
}

impl Body {
    fn bytes(&self) -> PutPayload {
        PutPayload::from(serde_json::to_vec(self).expect("a lease serializes"))
    }
}

#[derive(Debug)]
struct Held {
    body: Body,
    e_tag: String,
    /// Another writer replaced the lease: this one's commits are refused.
    lost: bool,
}

/// A lease held by this process, kept fresh until released.
#[derive(Debug)]
pub(super) struct Lease {
    client: Arc<dyn Client>,
    key: Key,
    shown: String,
    held: Arc<Mutex<Held>>,
    refresher: tokio::task::JoinHandle<()>,
}

/// What a contender read of the lease object.
struct Found {
    body: Option<Body>,
    e_tag: Option<String>,
    /// Last-Modified, in milliseconds since the epoch.
    modified: i64,
}

fn holder_name() -> String {
    let mut host = [0u8; 256];
    // SAFETY: a writable buffer of the given length.
    let named = unsafe { libc::gethostname(host.as_mut_ptr().cast(), host.len()) } == 0;
    let end = host.iter().position(|&b| b == 0).unwrap_or(host.len());
    let host = match named {
        true => String::from_utf8_lossy(&host[..end]).into_owned(),
        false => "an unknown host".to_owned(),
    };
    format!("process {} on {host}", std::process::id())
}

async fn read(client: &dyn Client, key: &Key) -> object_store::Result<Option<Found>> {
    let got = match client.get(key).await {
        Ok(got) => got,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(err) => return Err(err),
    };
    let (e_tag, modified) = (got.meta.e_tag.clone(), got.meta.last_modified);
    let bytes = got.bytes().await?;
    Ok(Some(Found {
        // Unreadable bytes are no one's lease: it may be replaced.
        body: serde_json::from_slice(&bytes).ok(),
        e_tag,
        modified: modified.timestamp_millis(),
    }))
}

/// The server's time now: the Last-Modified of an object written for it.
async fn server_now(client: &dyn Client, clock: &Key) -> object_store::Result<i64> {
    client.put(clock, PutPayload::from_static(b"")).await?;
    let now = client.head(clock).await?.last_modified.timestamp_millis();
    client.delete(clock).await?;
    Ok(now)
}

/// A conditional write found the lease not as it was read: another
/// writer changed it (or deleted it: `If-Match` on no object is a 404).
fn is_lost_race(err: &object_store::Error) -> bool {
    matches!(
        err,
        object_store::Error::Precondition { .. }
            | object_store::Error::AlreadyExists { .. }
            | object_store::Error::NotFound { .. }
    )
}

impl Lease {
    /// Takes the lease at `key`, waiting for a holder that stopped
    /// refreshing to expire; `Error::Leased` when its holder is alive.
    pub(super) async fn take(
        client: Arc<dyn Client>,
        key: Key,
        clock: Key,
        seconds: f64,
        shown: String,
    ) -> crate::Result<Lease> {
        let failed = |err: object_store::Error| {
            Error::io(format!("take the lease '{shown}'"), super::io_error(err))
        };
        let body = Body {
            holder: holder_name(),
            token: crate::layout::random_hex32(),
            seconds,
            refreshes: 0,
            released: false,
        };
        let mut holder = String::from("another writer");
        for _ in 0..RACES {
            let mode = match read(&*client, &key).await.map_err(failed)? {
                None => PutMode::Create,
                Some(found) => {
                    let live = found.body.as_ref().filter(|body| !body.released);
                    if let Some(live) = live {
                        holder = live.holder.clone();
                        let now = server_now(&*client, &clock).await.map_err(failed)?;
                        let age = Duration::from_millis((now - found.modified).max(0) as u64);
                        let lasts =
                            Duration::from_secs_f64(live.seconds.max(0.0)) + DATE_GRANULARITY;
                        if let Some(left) = lasts.checked_sub(age) {
                            let poll = Duration::from_secs_f64(live.seconds.max(0.6) / 6.0);
                            if !outlives(&*client, &key, &found.e_tag, left, poll)
                                .await
                                .map_err(failed)?
                            {
                                return Err(leased(&shown, holder));
                            }
                        }
                    }
                    PutMode::Update(UpdateVersion {
                        e_tag: found.e_tag,
                        version: None,
                    })
                }
            };
            let options = PutOptions {
                mode,
                ..PutOptions::default()
            };
            match client.put_opts(&key, body.bytes(), options).await {
                Ok(put) => {
                    let held = Arc::new(Mutex::new(Held {
                        body,
                        e_tag: put.e_tag.unwrap_or_default(),
                        lost: false,
                    }));
                    let refresher =
                        super::runtime().spawn(refresh(client.clone(), key.clone(), held.clone()));
                    return Ok(Lease {
                        client,
                        key,
                        shown,
                        held,
                        refresher,
                    });
                }
                Err(err) if is_lost_race(&err) => continue,
                Err(err) => return Err(failed(err)),
            }
        }
        Err(leased(&shown, holder))
    }

    /// Reads the lease back: `Some(message)` when another writer took it
    /// over (a writer that stalled past its duration), which a commit must
    /// not outlive.
    pub(super) fn lost(
        &self,
    ) -> impl std::future::Future<Output = object_store::Result<Option<String>>> {
        let (client, key, held) = (self.client.clone(), self.key.clone(), self.held.clone());
        let message = format!(
            "this manager's lease '{}' was taken over by another writer",
            self.shown
        );
        async move {
            if !held.lock().unwrap().lost {
                let found = read(&*client, &key).await?;
                let mut held = held.lock().unwrap();
                match found {
                    Some(Found {
                        body: Some(body),
                        e_tag: Some(e_tag),
                        ..
                    }) if body.token == held.body.token => held.e_tag = e_tag,
                    _ => held.lost = true,
                }
            }
            Ok(held.lock().unwrap().lost.then_some(message))
        }
    }

    /// Stops refreshing and marks the lease released, if still this one's.
    /// A refresh cut short may still have landed: its ETag is read back.
    pub(super) async fn release(self) {
        self.refresher.abort();
        let (mut body, mut e_tag) = {
            let held = self.held.lock().unwrap();
            if held.lost {
                return;
            }
            (held.body.clone(), held.e_tag.clone())
        };
        body.released = true;
        for _ in 0..2 {
            let options = PutOptions {
                mode: PutMode::Update(UpdateVersion {
                    e_tag: Some(e_tag),
                    version: None,
                }),
                ..PutOptions::default()
            };
            match self.client.put_opts(&self.key, body.bytes(), options).await {
                Err(err) if is_lost_race(&err) => match read(&*self.client, &self.key).await {
                    Ok(Some(Found {
                        body: Some(found),
                        e_tag: Some(found_tag),
                        ..
                    })) if found.token == body.token => e_tag = found_tag,
                    _ => return,
                },
                _ => return,
            }
        }
    }
}

fn leased(shown: &str, holder: String) -> Error {
    Error::Leased {
        lease: shown.into(),
        holder,
    }
}

/// Watches the lease at ETag `e_tag` for `left`: `false` as soon as it is
/// replaced by a live holder's (a refresh), `true` if it expired or was
/// released meanwhile.
async fn outlives(
    client: &dyn Client,
    key: &Key,
    e_tag: &Option<String>,
    left: Duration,
    poll: Duration,
) -> object_store::Result<bool> {
    let deadline = Instant::now() + left;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Ok(true);
        }
        tokio::time::sleep(poll.min(deadline - now)).await;
        let Some(found) = read(client, key).await? else {
            return Ok(true);
        };
        if &found.e_tag != e_tag {
            return Ok(found.body.is_none_or(|body| body.released));
        }
    }
}

/// Rewrites the lease every third of its duration, conditionally on the
/// last ETag; stops once another writer replaced it. A failed request is
/// tried again at the next round.
async fn refresh(client: Arc<dyn Client>, key: Key, held: Arc<Mutex<Held>>) {
    let every = Duration::from_secs_f64(held.lock().unwrap().body.seconds / 3.0);
    loop {
        tokio::time::sleep(every).await;
        let (body, e_tag) = {
            let mut held = held.lock().unwrap();
            held.body.refreshes += 1;
            (held.body.clone(), held.e_tag.clone())
        };
        let options = PutOptions {
            mode: PutMode::Update(UpdateVersion {
                e_tag: Some(e_tag),
                version: None,
            }),
            ..PutOptions::default()
        };
        let e_tag = match client.put_opts(&key, body.bytes(), options).await {
            Ok(put) => put.e_tag,
            // A refresh whose answer was lost finds its own write.
            Err(err) if is_lost_race(&err) => match read(&*client, &key).await {
                Ok(Some(found))
                    if found.body.as_ref().is_some_and(|found| {
                        found.token == body.token && found.refreshes == body.refreshes
                    }) =>
                {
                    found.e_tag
                }
                Ok(_) => {
                    held.lock().unwrap().lost = true;
                    return;
                }
                Err(_) => continue,
            },
            Err(_) => continue,
        };
        held.lock().unwrap().e_tag = e_tag.unwrap_or_default();
    }
}
