//! The crate's error type. Every variant maps to one C status code in `ffi`.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// What a user callback returns on failure. The C layer wraps the callback's
/// integer code in one of these; Rust users may return any error.
pub type CallbackError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug)]
pub enum Error {
    /// An option or argument has a value the manager cannot use.
    InvalidArgument(String),
    /// The `checkpoint` state file exists but cannot be used.
    StateCorrupt { path: PathBuf, detail: String },
    /// A file-system operation failed.
    Io { context: String, source: io::Error },
    /// A user callback reported failure; nothing was committed.
    Callback {
        callback: &'static str,
        source: CallbackError,
    },
    /// Another manager holds the directory's lock.
    Locked { path: PathBuf, holder: Option<u32> },
    /// Another live writer holds the lease of an object-storage prefix.
    Leased { lease: PathBuf, holder: String },
    /// Another writer committed to the directory (an object store's
    /// conditional write failed); this manager's commit did not happen.
    Conflict(String),
    /// A write was asked of a read-only manager.
    ReadOnly,
    /// A checkpoint's files are missing or do not match its manifest.
    Damaged { prefix: PathBuf, detail: String },
    /// A checkpoint has files but no manifest, so it cannot be verified.
    NoManifest { prefix: PathBuf },
    /// The registered tensors and a checkpoint's tensors differ.
    TensorMismatch(String),
    /// A background save was still running when the wait ended.
    Timeout,
    /// A panic in a background save was caught; nothing was committed
    /// unless the message says so.
    Panic(String),
    /// A collective step of a save or restore across ranks did not
    /// complete: some rank did not take part in time, or the communicator
    /// failed.
    Coordination { timed_out: bool, message: String },
    /// A save or restore across ranks failed on `rank`; every rank returns
    /// this error, of the kind of that rank's own. On the failing rank,
    /// `own` keeps its own error, with what a callback attached to it.
    Rank {
        rank: u32,
        kind: ErrorKind,
        message: String,
        own: Option<Box<Error>>,
    },
}

/// What kind an error is, as ranks tell each other of a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ErrorKind {
    InvalidArgument,
    StateCorrupt,
    Io,
    Callback,
    Locked,
    ReadOnly,
    Damaged,
    NoManifest,
    TensorMismatch,
    Timeout,
    Panic,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        if crate::store::is_conflict(&source) {
            return Error::Conflict(format!("{}: {source}", context.into()));
        }
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn io_at(action: &str, path: &Path, source: io::Error) -> Self {
        Error::io(format!("{action} '{}'", path.display()), source)
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::StateCorrupt { .. } => ErrorKind::StateCorrupt,
            Error::Io { .. } => ErrorKind::Io,
            Error::Callback { .. } => ErrorKind::Callback,
            Error::Locked { .. } | Error::Leased { .. } | Error::Conflict(_) => ErrorKind::Locked,
            Error::ReadOnly => ErrorKind::ReadOnly,
            Error::Damaged { .. } => ErrorKind::Damaged,
            Error::NoManifest { .. } => ErrorKind::NoManifest,
            Error::TensorMismatch(_) => ErrorKind::TensorMismatch,
            Error::Timeout => ErrorKind::Timeout,
            Error::Panic(_) => ErrorKind::Panic,
            Error::Coordination {
                timed_out: true, ..
            } => ErrorKind::Timeout,
            Error::Coordination { .. } => ErrorKind::Io,
            Error::Rank { kind, .. } => *kind,
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidArgument(message.into())
    }

    /// Wraps a failure of the named callback: `.map_err(Error::callback("save"))`.
    pub(crate) fn callback(callback: &'static str) -> impl FnOnce(CallbackError) -> Self {
        move |source| Error::Callback { callback, source }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidArgument(message) => write!(f, "invalid argument: {message}"),
            Error::StateCorrupt { path, detail } => {
                write!(f, "unusable state file '{}': {detail}", path.display())
            }
            Error::Io { context, source } => write!(f, "cannot {context}: {source}"),
            Error::Callback { callback, source } => {
                write!(f, "the {callback} callback failed: {source}")
            }
            Error::Locked { path, holder } => {
                write!(
                    f,
                    "another manager is writing to this directory (lock '{}' held by ",
                    path.display()
                )?;
                match holder {
                    Some(pid) => write!(f, "process {pid})"),
                    None => write!(f, "an unknown process)"),
                }
            }
            Error::Leased { lease, holder } => write!(
                f,
                "another manager is writing to this prefix (its lease '{}' is held by {holder} \
                 and kept fresh)",
                lease.display()
            ),
            Error::Conflict(message) => write!(
                f,
                "another writer committed to this directory since this manager read it \
                 ({message}); this save is not committed: open a new manager to continue"
            ),
            Error::ReadOnly => write!(f, "the manager is read-only"),
            Error::Damaged { prefix, detail } => {
                write!(f, "checkpoint '{}' is damaged: {detail}", prefix.display())
            }
            Error::TensorMismatch(message) => write!(f, "tensor mismatch: {message}"),
            Error::Timeout => write!(f, "the background save or an upload is still running"),
            Error::Panic(message) => write!(f, "a background save panicked: {message}"),
            Error::Coordination { message, .. } => write!(f, "{message}"),
            Error::Rank { rank, message, .. } => write!(f, "rank {rank}: {message}"),
            Error::NoManifest { prefix } => write!(
                f,
                "checkpoint '{}' has no manifest and cannot be verified",
                prefix.display()
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::Callback { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}
