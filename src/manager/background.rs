//! The manager's side of background saves: handing a job to the
//! library's thread and applying what it reports.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::coordination::Ranks;
use super::job::{JobCallbacks, JobReport, SaveJob, Tensors};
use super::save::Pending;
use super::CheckpointManager;
use crate::background::{panic_message, Worker};
use crate::config::{DeleteFn, SaveFn};
use crate::error::{Error, Result};
use crate::tensor_file::TensorSnapshot;

impl CheckpointManager {
    /// Snapshots the tensors and hands the job to the background thread,
    /// started at the first background save.
    pub(super) fn submit(
        &mut self,
        job: SaveJob,
        tensor_metadata: BTreeMap<String, String>,
        pending: Pending,
    ) -> Result<()> {
        if self.worker.is_none() {
            let worker = Worker::start(run_in_background)
                .map_err(|err| Error::io("start the background save thread", err))
                .inspect_err(|_| self.restore_request(&pending.request))?;
            self.worker = Some(worker);
        }
        let mut snapshot = std::mem::take(&mut self.snapshot);
        if self.tensors.is_empty() {
            snapshot = TensorSnapshot::default();
        } else {
            let taken = snapshot.take(&self.tensors, &tensor_metadata);
            if let Err(err) = taken {
                self.snapshot = snapshot;
                self.restore_request(&pending.request);
                return Err(err);
            }
        }
        let background = BackgroundSave {
            job,
            saved_at: pending.saved_at.expect("read before submitting"),
            save: self.callbacks.save.take(),
            delete: self.callbacks.delete.take(),
            snapshot,
        };
        let worker = self.worker.as_mut().expect("started above");
        if let Err(returned) = worker.submit(background) {
            self.take_back(returned.save, returned.delete, returned.snapshot);
            self.restore_request(&pending.request);
            return Err(Error::Panic("the background save thread is gone".into()));
        }
        self.pending = Some(pending);
        Ok(())
    }

    fn take_back(
        &mut self,
        save: Option<SaveFn>,
        delete: Option<DeleteFn>,
        snapshot: TensorSnapshot,
    ) {
        self.callbacks.save = save;
        self.callbacks.delete = delete;
        self.snapshot = snapshot;
    }

    /// Applies a background save that has finished (waiting for it when
    /// `wait`), and returns the failure of one that failed, once.
    pub(super) fn settle(&mut self, wait: bool) -> Result<()> {
        self.collect(if wait { None } else { Some(Duration::ZERO) });
        self.background_error.take().map_or(Ok(()), Err)
    }

    /// Applies the background save if it finishes within `timeout`; a
    /// failure is kept for `settle` to return.
    pub(super) fn collect(&mut self, timeout: Option<Duration>) {
        let Some(finished) = self.worker.as_mut().and_then(|w| w.result(timeout)) else {
            return;
        };
        self.take_back(finished.save, finished.delete, finished.snapshot);
        let pending = self.pending.take().expect("set while a save is in flight");
        if let Err(err) = self.apply(pending, finished.report) {
            self.background_error = Some(err);
        }
    }

    /// Applies a background save that has finished, so that
    /// `latest_checkpoint` and `checkpoints` show it; a failure is kept for
    /// the next call that saves, restores, pins or waits. Never blocks.
    pub fn refresh(&mut self) {
        self.collect(Some(Duration::ZERO));
    }

    /// Waits until the background save, if any, has committed or failed,
    /// and every upload to the remote tier is done, at most `timeout`
    /// (`None`: as long as it takes). Returns the save's failure (once),
    /// or `Error::Timeout` if the save or an upload is still running.
    pub fn wait_until_finished(&mut self, timeout: Option<Duration>) -> Result<()> {
        let deadline = timeout.map(|timeout| Instant::now() + timeout);
        self.collect(timeout);
        self.background_error.take().map_or(Ok(()), Err)?;
        if self.pending.is_some() {
            return Err(Error::Timeout);
        }
        let left = deadline.map(|deadline| deadline.saturating_duration_since(Instant::now()));
        if !self.wait_for_uploads(left) {
            return Err(Error::Timeout);
        }
        self.prune_uploaded()
    }
}

/// A save job for the background thread, with the callbacks and buffer it
/// borrows from the manager.
pub(super) struct BackgroundSave {
    pub(super) job: SaveJob,
    pub(super) saved_at: f64,
    pub(super) save: Option<SaveFn>,
    pub(super) delete: Option<DeleteFn>,
    pub(super) snapshot: TensorSnapshot,
}

/// A background save's report, and what it borrowed.
pub(super) struct Finished {
    pub(super) report: JobReport,
    pub(super) save: Option<SaveFn>,
    pub(super) delete: Option<DeleteFn>,
    pub(super) snapshot: TensorSnapshot,
}

/// The background thread's work: the job, whose panic (from a Rust
/// callback) is caught and reported.
fn run_in_background(background: BackgroundSave) -> Finished {
    let BackgroundSave {
        job,
        saved_at,
        mut save,
        mut delete,
        snapshot,
    } = background;
    let tensors = if snapshot.is_empty() {
        Tensors::None
    } else {
        Tensors::Snapshot(&snapshot)
    };
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let callbacks = JobCallbacks {
            save: save.as_mut(),
            delete: delete.as_mut(),
            now: &mut || Ok(saved_at),
        };
        job.run(&Ranks::one(), tensors, callbacks)
    }));
    let report = ran.unwrap_or_else(|panic| JobReport {
        committed: None,
        result: Err(Error::Panic(panic_message(&*panic))),
        warnings: Vec::new(),
        // Recovery tells whether it got past the commit point.
        unfinished: true,
    });
    Finished {
        report,
        save,
        delete,
        snapshot,
    }
}
