//! The library's background thread: it runs one save job at a time and
//! hands each result back to whoever waits, with or without a timeout.

use std::cell::Cell;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

thread_local! {
    static ON_WORKER: Cell<bool> = const { Cell::new(false) };
}

/// Whether the calling thread is a background save thread: the C API
/// refuses calls from a background save's callbacks, which could wait for
/// the very save that runs them.
pub fn on_worker_thread() -> bool {
    ON_WORKER.with(Cell::get)
}

/// A thread that runs jobs `J` into results `T`, one at a time.
pub(crate) struct Worker<J, T> {
    jobs: Option<Sender<J>>,
    results: Receiver<T>,
    thread: Option<JoinHandle<()>>,
    in_flight: bool,
}

impl<J: Send + 'static, T: Send + 'static> Worker<J, T> {
    /// Starts the thread, named `ckpt-save`. `run` must not panic.
    pub fn start(run: fn(J) -> T) -> std::io::Result<Self> {
        let (jobs, received) = mpsc::channel::<J>();
        let (sender, results) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("ckpt-save".into())
            .spawn(move || {
                ON_WORKER.with(|on_worker| on_worker.set(true));
                for job in received {
                    if sender.send(run(job)).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Worker {
            jobs: Some(jobs),
            results,
            thread: Some(thread),
            in_flight: false,
        })
    }

    /// Hands `job` to the thread; gives it back if the thread is gone.
    pub fn submit(&mut self, job: J) -> Result<(), J> {
        debug_assert!(!self.in_flight, "one job at a time");
        let sender = self.jobs.as_ref().expect("until dropped");
        sender.send(job).map_err(|returned| returned.0)?;
        self.in_flight = true;
        Ok(())
    }

    /// The job's result once it has finished, waiting at most `timeout`
    /// (`None`: as long as it takes). `None` when it is still running, or
    /// when no job is in flight.
    pub fn result(&mut self, timeout: Option<Duration>) -> Option<T> {
        if !self.in_flight {
            return None;
        }
        let result = match timeout {
            None => self.results.recv().ok(),
            Some(Duration::ZERO) => match self.results.try_recv() {
                Err(TryRecvError::Empty) => return None,
                received => received.ok(),
            },
            Some(timeout) => match self.results.recv_timeout(timeout) {
                Err(RecvTimeoutError::Timeout) => return None,
                received => received.ok(),
            },
        };
        self.in_flight = false;
        result
    }
}

impl<J, T> Drop for Worker<J, T> {
    /// Closes the queue and joins the thread, after its job in flight.
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The message a caught panic carried.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}
