//! The collectives of a multi-process save and restore, as the trainer
//! supplies them (see `ffi::ckpt_communicator`); the manager's
//! coordination is written against this trait only.

use std::fmt;
use std::time::Duration;

/// Why a collective failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommError {
    /// Not every rank took part before the timeout.
    Timeout,
    /// The communicator reported this code.
    Failed(i32),
}

impl fmt::Display for CommError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommError::Timeout => write!(f, "not every rank took part before the timeout"),
            CommError::Failed(code) => write!(f, "the communicator returned error code {code}"),
        }
    }
}

/// Collectives over the ranks: every rank calls each, in the same order.
pub trait Communicator: Send + Sync {
    fn rank(&self) -> u32;
    fn size(&self) -> u32;
    fn barrier(&self, timeout: Duration) -> Result<(), CommError>;
    /// Makes `buffer` on every rank what it is on `root`; every rank
    /// passes a buffer of the same length.
    fn broadcast(&self, buffer: &mut [u8], root: u32, timeout: Duration) -> Result<(), CommError>;
    /// Every rank's `record` (all of one length), in rank order.
    fn all_gather(&self, record: &[u8], timeout: Duration) -> Result<Vec<Vec<u8>>, CommError>;
}

/// Broadcasts bytes of any length from `root`: the length, then the bytes.
pub fn broadcast_bytes(
    communicator: &dyn Communicator,
    bytes: &mut Vec<u8>,
    root: u32,
    timeout: Duration,
) -> Result<(), CommError> {
    let mut length = (bytes.len() as u64).to_le_bytes();
    communicator.broadcast(&mut length, root, timeout)?;
    bytes.resize(u64::from_le_bytes(length) as usize, 0);
    communicator.broadcast(bytes, root, timeout)
}
