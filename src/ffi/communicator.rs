//! `ckpt_communicator`: the collectives a multi-process trainer lends the
//! library (MPI, torch.distributed, JAX...), adapted to the core's
//! `Communicator`.

use std::ffi::c_void;
use std::time::Duration;

use crate::communicator::{CommError, Communicator};

/// The version of `ckpt_communicator` this library was built with; set
/// `version` to it. A later version only appends fields.
pub const CKPT_COMMUNICATOR_VERSION: u32 = 1;

/// What a communicator callback returns when its timeout passed before
/// every rank took part.
pub const CKPT_COMMUNICATOR_TIMEOUT: i32 = 1;

/// Collectives over the trainer's processes ("ranks"), supplied by the
/// trainer (`include/ckpt_manager_mpi.h` builds one from an `MPI_Comm`).
/// Each callback is collective: every rank calls it, in the same order. Each
/// returns 0 on success, `CKPT_COMMUNICATOR_TIMEOUT` when `timeout_seconds`
/// passed before every rank took part (it must then return, not hang), or
/// any other value on failure. They run on the thread that called the
/// manager, one at a time per manager.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ckpt_communicator {
    /// `CKPT_COMMUNICATOR_VERSION`.
    pub version: u32,
    /// This process's rank, 0 to `size - 1`.
    pub rank: u32,
    /// The number of ranks.
    pub size: u32,
    /// Passed first to every callback; the trainer keeps it valid while any
    /// manager built with it lives.
    pub user_data: *mut c_void,
    /// Returns once every rank has called it.
    pub barrier: Option<unsafe extern "C" fn(user_data: *mut c_void, timeout_seconds: f64) -> i32>,
    /// Copies `length` bytes at `buffer` on rank `root` into `buffer` on
    /// every other rank (every rank passes the same `length`).
    pub broadcast: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            buffer: *mut c_void,
            length: usize,
            root: u32,
            timeout_seconds: f64,
        ) -> i32,
    >,
    /// Gathers every rank's `length`-byte `record` into `records` (`size *
    /// length` bytes, rank order) on every rank.
    pub all_gather: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            record: *const c_void,
            length: usize,
            records: *mut c_void,
            timeout_seconds: f64,
        ) -> i32,
    >,
}

/// A C communicator as the core's `Communicator`.
pub(crate) struct CCommunicator(ckpt_communicator);

// SAFETY: the header requires the callbacks and user data to be usable from
// whichever thread calls the manager.
unsafe impl Send for CCommunicator {}
// SAFETY: as above; the manager makes one collective call at a time.
unsafe impl Sync for CCommunicator {}

impl CCommunicator {
    /// Checks what the trainer filled in.
    pub(crate) fn new(raw: ckpt_communicator) -> Result<Self, String> {
        if raw.version != CKPT_COMMUNICATOR_VERSION {
            return Err(format!(
                "communicator version {} is not {CKPT_COMMUNICATOR_VERSION}",
                raw.version
            ));
        }
        if raw.size == 0 || raw.rank >= raw.size {
            return Err(format!(
                "rank {} of size {} is not a rank",
                raw.rank, raw.size
            ));
        }
        if raw.barrier.is_none() || raw.broadcast.is_none() || raw.all_gather.is_none() {
            return Err("every communicator callback must be set".into());
        }
        Ok(CCommunicator(raw))
    }
}

fn result(code: i32) -> Result<(), CommError> {
    match code {
        0 => Ok(()),
        CKPT_COMMUNICATOR_TIMEOUT => Err(CommError::Timeout),
        code => Err(CommError::Failed(code)),
    }
}

impl Communicator for CCommunicator {
    fn rank(&self) -> u32 {
        self.0.rank
    }

    fn size(&self) -> u32 {
        self.0.size
    }

    fn barrier(&self, timeout: Duration) -> Result<(), CommError> {
        let barrier = self.0.barrier.expect("checked in new");
        // SAFETY: the trainer's callback and user data (header).
        result(unsafe { barrier(self.0.user_data, timeout.as_secs_f64()) })
    }

    fn broadcast(&self, buffer: &mut [u8], root: u32, timeout: Duration) -> Result<(), CommError> {
        let broadcast = self.0.broadcast.expect("checked in new");
        // SAFETY: as above; `buffer` is writable for its length.
        result(unsafe {
            broadcast(
                self.0.user_data,
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                root,
                timeout.as_secs_f64(),
            )
        })
    }

    fn all_gather(&self, record: &[u8], timeout: Duration) -> Result<Vec<Vec<u8>>, CommError> {
        let all_gather = self.0.all_gather.expect("checked in new");
        let mut records = vec![0u8; record.len() * self.0.size as usize];
        // SAFETY: as above; `records` holds `size` records.
        result(unsafe {
            all_gather(
                self.0.user_data,
                record.as_ptr().cast(),
                record.len(),
                records.as_mut_ptr().cast(),
                timeout.as_secs_f64(),
            )
        })?;
        if record.is_empty() {
            return Ok(vec![Vec::new(); self.0.size as usize]);
        }
        Ok(records.chunks(record.len()).map(<[u8]>::to_vec).collect())
    }
}
