//! Deciding a save (the gates, the number, the retention before it) and
//! running it, on every rank alike, on the calling thread or handed to the
//! background thread.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::coordination::Ranks;
use super::job::{JobCallbacks, JobReport, SaveJob, Tensors};
use super::{read_clock, CheckpointManager, SaveArgs};
use crate::error::{Error, Result};
use crate::manifest::{Annotations, Metric};
use crate::paths;
use crate::policy::{interval_allows_save, time_allows_save};
use crate::preemption;

impl CheckpointManager {
    /// Saves a checkpoint numbered `checkpoint_number`, or the save
    /// counter's next value. Returns its prefix, or `None` when the interval
    /// gate skipped it. On any error nothing is committed and the manager's
    /// state is as before.
    pub fn save(
        &mut self,
        checkpoint_number: Option<u64>,
        check_interval: bool,
    ) -> Result<Option<PathBuf>> {
        self.save_with(&SaveArgs {
            checkpoint_number,
            check_interval,
            ..SaveArgs::default()
        })
    }

    /// `save` with metrics and metadata, which the manifest records.
    pub fn save_with(&mut self, args: &SaveArgs) -> Result<Option<PathBuf>> {
        self.start_save(args, false)
    }

    /// `save_with`, written and committed on the library's background
    /// thread. Decides (intervals, number), runs the prepare callback and
    /// copies the registered tensors on the calling thread, and returns the
    /// prefix the checkpoint will have; it becomes the latest only at its
    /// commit. A save already in flight is waited for first. The save and
    /// delete callbacks run on the background thread. Its failure is
    /// returned, once, by the next call that saves, restores, pins or
    /// waits.
    pub fn save_async(&mut self, args: &SaveArgs) -> Result<Option<PathBuf>> {
        self.start_save(args, true)
    }

    /// A save on every rank alike (one process is the 1-rank case): rank 0
    /// decides, every rank runs the prepare callback, then writes and
    /// commits (`SaveJob`), here or on the background thread. A save that
    /// fails leaves the save request standing.
    fn start_save(&mut self, args: &SaveArgs, background: bool) -> Result<Option<PathBuf>> {
        let ranks = Ranks::of(&self.config);
        if background {
            ranks.allow_background()?;
        }
        ranks.check_same_save(args.checkpoint_number, args.check_interval)?;
        let mut claim = None;
        let saved = self.decide_and_run(&ranks, args, background, &mut claim);
        if let (Err(_), Some(claim)) = (&saved, &claim) {
            self.restore_request(claim);
        }
        let preempted = claim.is_some_and(|claim| claim.preemptions_seen < self.preemptions_seen);
        if preempted && !background && matches!(saved, Ok(Some(_))) {
            self.upload_before_preemption();
        }
        saved
    }

    fn decide_and_run(
        &mut self,
        ranks: &Ranks,
        args: &SaveArgs,
        background: bool,
        claim: &mut Option<Request>,
    ) -> Result<Option<PathBuf>> {
        let (decided, decision) = match ranks.is_root().then(|| self.decide(args)) {
            Some(Ok(Some(decided))) => {
                let plan = Plan::of(&decided);
                (Some(decided), Some(Ok(Some(plan))))
            }
            Some(Ok(None)) => (None, Some(Ok(None))),
            Some(Err(err)) => (None, Some(Err(err))),
            None => (None, None),
        };
        if let Some(decided) = &decided {
            *claim = Some(decided.pending.request.clone());
        }
        let Some(plan) = ranks.share(decision, "deciding the save")? else {
            return Ok(None);
        };
        let Decided {
            prefix,
            job,
            mut pending,
            tensor_metadata,
        } = match decided {
            Some(decided) => decided,
            None => {
                let request = self.claim_request();
                *claim = Some(request.clone());
                self.decided(
                    plan.number,
                    plan.counter,
                    plan.step,
                    plan.annotations,
                    request,
                )
            }
        };
        ranks.agree(self.prepare(job.number), "preparing")?;
        if background {
            pending.saved_at = Some(self.now()?);
            self.submit(job, tensor_metadata, pending)?;
            return Ok(Some(prefix));
        }
        let tensors = if self.tensors.is_empty() {
            Tensors::None
        } else {
            Tensors::Registered(&self.tensors, tensor_metadata)
        };
        let callbacks = &mut self.callbacks;
        let report = job.run(
            ranks,
            tensors,
            JobCallbacks {
                save: callbacks.save.as_mut(),
                delete: callbacks.delete.as_mut(),
                now: &mut || read_clock(&mut callbacks.clock),
            },
        );
        self.apply(pending, report)?;
        Ok(Some(prefix))
    }

    fn prepare(&mut self, number: u64) -> Result<()> {
        match self.callbacks.prepare.as_mut() {
            Some(prepare) => prepare(number).map_err(Error::callback("prepare")),
            None => Ok(()),
        }
    }

    /// Whether a save goes ahead, and if so everything it needs: the
    /// intervals, the number, what the manifest records, the retention
    /// before it. Claims the save request; `restore_request` gives it back.
    fn decide(&mut self, args: &SaveArgs) -> Result<Option<Decided>> {
        if self.config.read_only {
            return Err(Error::ReadOnly);
        }
        self.settle(false)?;
        if !self.has_save_callback && self.tensors.is_empty() {
            return Err(Error::invalid(
                "no save callback is set and no tensor is registered",
            ));
        }
        let requested = self.save_requested.load(Ordering::Acquire)
            || preemption::signals_received() > self.preemptions_seen;
        let Gate::Open { step, current } = self.gate(args.check_interval, requested)? else {
            if requested {
                // Skipped only because this step is saved already.
                self.claim_request();
            }
            return Ok(None);
        };
        // At most one save in flight.
        self.settle(true)?;
        self.finish_unfinished()?;
        let counter = self
            .save_counter
            .checked_add(1)
            .ok_or_else(|| Error::invalid("the save counter is at its maximum"))?;
        let number = args.checkpoint_number.unwrap_or(counter);
        let annotations = Annotations {
            step: current,
            metrics: args
                .metrics
                .iter()
                .map(|(name, value)| (name.clone(), Metric(*value)))
                .collect(),
            metadata: args.metadata.clone(),
            pinned: false,
        };
        let request = self.claim_request();
        Ok(Some(self.decided(
            number,
            counter,
            step,
            annotations,
            request,
        )))
    }

    /// Everything a save of `number` needs once it is decided: the job
    /// (the retention before it, what its manifest records) and what the
    /// manager records if it commits.
    pub(super) fn decided(
        &self,
        number: u64,
        counter: u64,
        step: Option<i64>,
        mut annotations: Annotations,
        request: Request,
    ) -> Decided {
        let prefix =
            paths::checkpoint_prefix(&self.config.directory, &self.config.checkpoint_name, number);
        let base = prefix
            .file_name()
            .expect("a prefix ends in a file name")
            .to_owned();
        let entry = PathBuf::from(&base);
        // A number saved again stays pinned: the pin is on its name.
        annotations.pinned = self
            .retention
            .managed()
            .iter()
            .any(|m| m.entry == entry && m.traits.pinned);
        let mut tensor_metadata =
            BTreeMap::from([("checkpoint_number".to_owned(), number.to_string())]);
        if let Some(step) = annotations.step {
            tensor_metadata.insert("step".to_owned(), step.to_string());
        }
        let job = SaveJob {
            store: Arc::clone(&self.store),
            directory: self.config.directory.clone(),
            traits: self.traits_of(&entry, &annotations),
            base,
            number,
            annotations,
            retention: self.retention.clone(),
            rules: self.rules(),
            hold: self.upload_hold(),
            state_before: self.state_crc,
        };
        let pending = Pending {
            counter,
            step,
            entry,
            saved_at: None,
            request,
            upload: true,
        };
        Decided {
            prefix,
            job,
            pending,
            tensor_metadata,
        }
    }

    /// Takes the save request and the preemption signals seen so far: this
    /// save answers them. Returns what to give back if it fails.
    fn claim_request(&mut self) -> Request {
        let request = Request {
            flag: self.save_requested.swap(false, Ordering::AcqRel),
            preemptions_seen: self.preemptions_seen,
        };
        self.preemptions_seen = preemption::signals_received();
        request
    }

    /// A save that failed leaves its request standing.
    pub(super) fn restore_request(&mut self, request: &Request) {
        if request.flag {
            self.save_requested.store(true, Ordering::Release);
        }
        self.preemptions_seen = self.preemptions_seen.min(request.preemptions_seen);
    }

    /// Makes a save's report the manager's state: on success the new
    /// checkpoint is the latest (read from the state file when rank 0
    /// committed it for this rank); on failure nothing else changes and
    /// the request stands.
    pub(super) fn apply(&mut self, pending: Pending, report: JobReport) -> Result<()> {
        self.unfinished |= report.unfinished;
        report
            .warnings
            .iter()
            .for_each(|warning| self.warn(warning));
        match report.committed {
            Some(saved) => {
                self.save_counter = pending.counter;
                self.last_checkpoint_step = pending.step;
                self.last_save_time = Some(saved.saved_at);
                if pending.upload {
                    self.queue_upload(&pending.entry, &saved.released);
                }
                self.latest = Some(pending.entry);
                self.retention = saved.retention;
                self.state_crc = Some(saved.state_crc);
            }
            None if report.result.is_ok() => {
                self.reload()?;
                self.save_counter = self.save_counter.max(pending.counter);
                self.last_checkpoint_step = pending.step;
            }
            None => {}
        }
        report
            .result
            .inspect_err(|_| self.restore_request(&pending.request))
    }

    /// The step and clock gates. `check_interval` false or a requested
    /// save opens them, except that the same step never saves twice.
    fn gate(&mut self, check_interval: bool, requested: bool) -> Result<Gate> {
        let check_interval = check_interval && !requested;
        // A save in flight counts as done.
        let (mut step, last_save_time) = match &self.pending {
            Some(pending) => (pending.step, pending.saved_at),
            None => (self.last_checkpoint_step, self.last_save_time),
        };
        let mut current = None;
        if let Some(interval) = self.config.checkpoint_interval {
            let now_step = self.current_step()?;
            if !interval_allows_save(interval, step, now_step, check_interval) {
                return Ok(Gate::Closed);
            }
            step = Some(now_step);
            current = step;
        } else if self.callbacks.step_counter.is_some() {
            current = Some(self.current_step()?);
        }
        if let Some(seconds) = self.config.save_interval_seconds.filter(|_| check_interval) {
            let now = self.now()?;
            if !time_allows_save(seconds, last_save_time, now) {
                return Ok(Gate::Closed);
            }
        }
        Ok(Gate::Open { step, current })
    }

    /// Whether `save` (checking the interval) would save now: a save was
    /// requested, or the step and clock gates are open. Runs the step
    /// counter and clock callbacks, saves nothing.
    pub fn should_save(&mut self) -> Result<bool> {
        if self.config.read_only {
            return Err(Error::ReadOnly);
        }
        self.settle(false)?;
        let requested = self.save_requested.load(Ordering::Acquire)
            || preemption::signals_received() > self.preemptions_seen;
        Ok(matches!(self.gate(true, requested)?, Gate::Open { .. }))
    }
}

/// What the interval gates decided.
pub(super) enum Gate {
    Closed,
    /// The save goes ahead: the step to record as the last checkpoint's,
    /// and the step counter's value, if any.
    Open {
        step: Option<i64>,
        current: Option<i64>,
    },
}

/// A save the intervals let through, as `decide` prepared it.
pub(super) struct Decided {
    pub(super) prefix: PathBuf,
    pub(super) job: SaveJob,
    pub(super) pending: Pending,
    pub(super) tensor_metadata: BTreeMap<String, String>,
}

/// A save's claim on the save request, given back if it fails.
#[derive(Clone)]
pub(super) struct Request {
    pub(super) flag: bool,
    pub(super) preemptions_seen: u64,
}

/// What the manager becomes when a save commits, and what it gives back
/// when it fails.
pub(super) struct Pending {
    pub(super) counter: u64,
    /// The step to record as the last checkpoint's.
    pub(super) step: Option<i64>,
    pub(super) entry: PathBuf,
    /// A background save's time, read when it was called.
    pub(super) saved_at: Option<f64>,
    pub(super) request: Request,
    /// Whether its commit queues an upload to the remote tier (not for a
    /// checkpoint downloaded from there).
    pub(super) upload: bool,
}

/// What every rank records of a save rank 0 decided.
#[derive(Debug, Serialize, Deserialize)]
struct Plan {
    number: u64,
    counter: u64,
    step: Option<i64>,
    annotations: Annotations,
}

impl Plan {
    fn of(decided: &Decided) -> Plan {
        Plan {
            number: decided.job.number,
            counter: decided.pending.counter,
            step: decided.pending.step,
            annotations: decided.job.annotations.clone(),
        }
    }
}
