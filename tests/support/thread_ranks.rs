//! Ranks as threads of one process over an in-memory communicator, for
//! tests that save and restore across ranks without mpirun.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use ckpt_manager::{CommError, Communicator};

/// Each collective call is a round in which every rank leaves its bytes.
#[derive(Default)]
struct Rounds {
    slots: Mutex<HashMap<u64, Vec<Option<Vec<u8>>>>>,
    changed: Condvar,
}

pub struct ThreadCommunicator {
    pub rank: u32,
    pub size: u32,
    rounds: Arc<Rounds>,
    next_round: AtomicU64,
}

impl ThreadCommunicator {
    pub fn group(size: u32) -> Vec<Arc<ThreadCommunicator>> {
        let rounds = Arc::new(Rounds::default());
        (0..size)
            .map(|rank| {
                Arc::new(ThreadCommunicator {
                    rank,
                    size,
                    rounds: Arc::clone(&rounds),
                    next_round: AtomicU64::new(0),
                })
            })
            .collect()
    }

    fn exchange(&self, mine: &[u8], timeout: Duration) -> Result<Vec<Vec<u8>>, CommError> {
        let round = self.next_round.fetch_add(1, Ordering::SeqCst);
        let mut slots = self.rounds.slots.lock().unwrap();
        slots
            .entry(round)
            .or_insert_with(|| vec![None; self.size as usize])[self.rank as usize] =
            Some(mine.to_vec());
        self.rounds.changed.notify_all();
        let (slots, waited) = self
            .rounds
            .changed
            .wait_timeout_while(slots, timeout, |slots| {
                slots[&round].iter().any(Option::is_none)
            })
            .unwrap();
        if waited.timed_out() {
            return Err(CommError::Timeout);
        }
        Ok(slots[&round].iter().map(|s| s.clone().unwrap()).collect())
    }
}

impl Communicator for ThreadCommunicator {
    fn rank(&self) -> u32 {
        self.rank
    }

    fn size(&self) -> u32 {
        self.size
    }

    fn barrier(&self, timeout: Duration) -> Result<(), CommError> {
        self.exchange(&[], timeout).map(drop)
    }

    fn broadcast(&self, buffer: &mut [u8], root: u32, timeout: Duration) -> Result<(), CommError> {
        let all = self.exchange(buffer, timeout)?;
        buffer.copy_from_slice(&all[root as usize]);
        Ok(())
    }

    fn all_gather(&self, record: &[u8], timeout: Duration) -> Result<Vec<Vec<u8>>, CommError> {
        self.exchange(record, timeout)
    }
}

/// Runs `body` on each of `size` ranks, each on its own thread; returns
/// the results in rank order.
pub fn on_ranks<T: Send + 'static>(
    size: u32,
    body: impl Fn(Arc<ThreadCommunicator>) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let body = Arc::new(body);
    let threads: Vec<_> = ThreadCommunicator::group(size)
        .into_iter()
        .map(|communicator| {
            let body = Arc::clone(&body);
            thread::spawn(move || body(communicator))
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}
