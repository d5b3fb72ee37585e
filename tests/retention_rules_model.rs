//! Model-based property test of the retention rules beyond TF's (the best k
//! by a metric, every n-th checkpoint number, pins) combined as a union with
//! TF's (the newest `max_to_keep`, one every n hours), restarts included,
//! against a small reference model written from the rules as the header
//! documents them (`ckpt_options_set_keep_best` and its neighbours).
//!
//! Each case draws options, then a random sequence of saves (the next
//! number, a small explicit one or one saved before; recording the ranked
//! metric, another metric, both or neither, with values from a small set so
//! that ties happen, infinities, -0 and NaN included), pins and unpins (of
//! managed checkpoints, and of names that are not managed, which must fail
//! with `InvalidArgument` and change nothing), restarts and clock jumps
//! (occasionally backwards). After every operation the manager's list,
//! latest, best and save counter, the exact files on disk, the state file,
//! the warnings logged and what `checkpoint_info` reports of every
//! checkpoint on disk are compared with the model.
//!
//! `PROPTEST_CASES=N cargo test --test retention_rules_model` runs a longer
//! search. Clock values are multiples of 0.25 s and the hours option a
//! multiple of 0.25 h, so every timestamp is exact and comparisons need no
//! tolerance.

mod support;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ckpt_manager::{
    get_checkpoint_state, Config, Error, KeepBest, MaxToKeep, MetricMode, SaveArgs,
};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use support::harness::{self, name_of, proptest_config, Harness};

/// The metric `keep_best` ranks by, and one it must ignore.
const RANKED: &str = "loss";
const UNRANKED: &str = "accuracy";

/// A checkpoint number no case saves.
const NEVER_SAVED: u64 = 1000;

// ---------------------------------------------------------------------------
// Operations

#[derive(Debug, Clone, Copy, PartialEq)]
struct Options {
    max_to_keep: MaxToKeep,
    /// `keep_checkpoint_every_n_hours` in quarter hours.
    keep_every_quarter_hours: Option<u32>,
    keep_best: Option<(MetricMode, usize)>,
    keep_period: Option<u64>,
}

impl Options {
    fn hours(&self) -> Option<f64> {
        self.keep_every_quarter_hours.map(|q| f64::from(q) / 4.0)
    }

    fn config(&self, directory: &Path) -> Config {
        let mut config = Config::new(directory, self.max_to_keep).unwrap();
        config
            .set_keep_checkpoint_every_n_hours(self.hours())
            .unwrap();
        let keep_best = self.keep_best.map(|(mode, k)| KeepBest {
            metric: RANKED.to_owned(),
            mode,
            k,
        });
        config.set_keep_best(keep_best).unwrap();
        config.set_keep_period(self.keep_period).unwrap();
        config
    }
}

#[derive(Debug, Clone, Copy)]
enum Number {
    /// The save counter's next value.
    Next,
    /// A small explicit number.
    Explicit(u64),
    /// A number saved before in this case (picked by index modulo the
    /// numbers used so far; `Next` when there are none).
    Reuse(usize),
}

#[derive(Debug, Clone, Copy)]
enum Unmanaged {
    /// A checkpoint on disk that is not listed: preserved, or dropped at
    /// open.
    OnDisk,
    /// A number saved before and since deleted.
    Deleted,
    NeverSaved,
}

/// The metrics a save records.
#[derive(Debug, Clone, Copy)]
struct Metrics {
    ranked: Option<f64>,
    unranked: Option<f64>,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Save(Number, Metrics),
    /// Pins (`true`) or unpins a managed checkpoint, picked by index modulo
    /// the list's length; with an empty list, as `SetPinnedUnmanaged`.
    SetPinned(usize, bool),
    /// Pins or unpins a name that is not managed, of this kind (one never
    /// saved when there is none of it), picked by index.
    SetPinnedUnmanaged(Unmanaged, usize, bool),
    /// Drops the manager and opens a new one with the same options.
    Restart,
    /// Moves the fake clock by this many quarter seconds (may be negative).
    AdvanceClock(i64),
}

fn options_strategy() -> impl Strategy<Value = Options> {
    let max_to_keep = prop_oneof![
        4 => (1usize..=4).prop_map(MaxToKeep::Last),
        1 => Just(MaxToKeep::All),
    ];
    let hours = prop_oneof![Just(None), (2u32..=8).prop_map(Some)];
    let mode = prop_oneof![Just(MetricMode::Min), Just(MetricMode::Max)];
    let keep_best = prop_oneof![
        1 => Just(None),
        3 => (mode, 1usize..=3).prop_map(Some),
    ];
    let keep_period = prop_oneof![Just(None), (2u64..=4).prop_map(Some)];
    (max_to_keep, hours, keep_best, keep_period).prop_map(
        |(max_to_keep, keep_every_quarter_hours, keep_best, keep_period)| Options {
            max_to_keep,
            keep_every_quarter_hours,
            keep_best,
            keep_period,
        },
    )
}

/// Few values, so that ties are common; -0 equals 0 as a rank.
fn metric_value() -> impl Strategy<Value = f64> {
    prop_oneof![
        3 => Just(0.5),
        3 => Just(1.0),
        2 => Just(0.0),
        1 => Just(-0.0),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        3 => Just(f64::NAN),
    ]
}

/// In a `sparse` case most saves do not record the ranked metric, so
/// that best-k often has places free.
fn metrics_strategy(sparse: bool) -> impl Strategy<Value = Metrics> {
    let value = || metric_value().prop_map(Some);
    let ranked = if sparse { 1 } else { 6 };
    prop_oneof![
        ranked => (value(), Just(None)),
        2 => (value(), value()),
        2 => (Just(None), value()),
        1 => (Just(None), Just(None)),
    ]
    .prop_map(|(ranked, unranked)| Metrics { ranked, unranked })
}

const QUARTERS_PER_HOUR: i64 = 4 * 3600;

fn advance_strategy() -> impl Strategy<Value = i64> {
    prop_oneof![
        // Whole quarter hours, as the hours option is, so that the hours
        // rule is often met with equality.
        6 => (1i64..=6).prop_map(|q| q * QUARTERS_PER_HOUR / 4),
        // Any quarter second up to 2 h.
        3 => 1i64..=2 * QUARTERS_PER_HOUR,
        // Backwards, by a quarter second .. 3 h.
        1 => -3 * QUARTERS_PER_HOUR..=-1,
    ]
}

fn ops_strategy() -> impl Strategy<Value = Vec<Op>> {
    any::<bool>().prop_flat_map(|sparse| prop::collection::vec(op_strategy(sparse), 0..=60))
}

fn op_strategy(sparse: bool) -> impl Strategy<Value = Op> {
    let number = prop_oneof![
        5 => Just(Number::Next),
        1 => (0u64..8).prop_map(Number::Explicit),
        2 => any::<usize>().prop_map(Number::Reuse),
    ];
    let unmanaged = prop_oneof![
        3 => Just(Unmanaged::OnDisk),
        1 => Just(Unmanaged::Deleted),
        1 => Just(Unmanaged::NeverSaved),
    ];
    let pin = || (any::<usize>(), prop::bool::weighted(0.65));
    prop_oneof![
        10 => (number, metrics_strategy(sparse)).prop_map(|(n, m)| Op::Save(n, m)),
        3 => pin().prop_map(|(i, p)| Op::SetPinned(i, p)),
        1 => (unmanaged, pin()).prop_map(|(u, (i, p))| Op::SetPinnedUnmanaged(u, i, p)),
        2 => Just(Op::Restart),
        4 => advance_strategy().prop_map(Op::AdvanceClock),
    ]
}

// ---------------------------------------------------------------------------
// Reference model, written from the documented rules

/// Every situation the model tells apart; the property test requires each
/// to be reached, so that the generator keeps exercising them.
const SITUATIONS: [&str; 17] = [
    "deleted",
    "preserved",
    "several_swept_in_one_save",
    "kept_only_by_pin",
    "kept_only_by_period",
    "kept_only_by_best",
    "swept_with_the_value_of_a_kept_best",
    "best_is_the_newer_of_a_tie",
    "nan_swept_with_a_best_place_free",
    "other_metric_swept_with_a_best_place_free",
    "swept_after_unpin",
    "kept_behind_last_preserved_at_open",
    "dropped_at_open",
    "clock_backwards_at_open",
    "resaved_pinned",
    "resaved_unmanaged_on_disk",
    "pin_rejected_for_a_checkpoint_on_disk",
];

/// What a checkpoint's manifest records, as far as the rules go.
#[derive(Debug, Clone, Copy)]
struct Record {
    metrics: Metrics,
    pinned: bool,
    /// Unpinned since its save (for the coverage check only).
    unpinned: bool,
    /// The time of its save.
    saved_at: f64,
}

/// What the state file on disk says.
#[derive(Debug, Clone)]
struct StateFile {
    latest: u64,
    /// `all_model_checkpoint_paths` with `all_model_checkpoint_timestamps`.
    entries: Vec<(u64, f64)>,
    last_preserved: f64,
}

#[derive(Debug)]
struct Model {
    options: Options,
    /// The managed checkpoints' numbers and timestamps, oldest first.
    managed: Vec<(u64, f64)>,
    last_preserved: f64,
    latest: Option<u64>,
    save_counter: u64,
    /// The checkpoints in the directory, by number.
    disk: BTreeMap<u64, Record>,
    /// The state file, once a save has written it.
    state_file: Option<StateFile>,
    /// The `SITUATIONS` met.
    reached: BTreeSet<&'static str>,
}

impl Model {
    /// A manager opening on a fresh directory (it never warns).
    fn new(options: Options, now: f64) -> Self {
        let mut model = Model {
            options,
            managed: Vec::new(),
            last_preserved: 0.0,
            latest: None,
            save_counter: 0,
            disk: BTreeMap::new(),
            state_file: None,
            reached: BTreeSet::new(),
        };
        model.open(now);
        model
    }

    fn reach(&mut self, situation: &'static str) {
        debug_assert!(SITUATIONS.contains(&situation));
        self.reached.insert(situation);
    }

    /// The value `keep_best` ranks a checkpoint by: none without
    /// `keep_best`, without the metric, or for NaN.
    fn rank_value(&self, number: u64) -> Option<f64> {
        self.options.keep_best?;
        self.disk[&number].metrics.ranked.filter(|v| !v.is_nan())
    }

    /// How many checkpoints of `list` (oldest first) rank above the one at
    /// `index`: a better value, or the same value and newer. `None` when it
    /// does not rank.
    fn ranked_above(&self, list: &[(u64, f64)], index: usize) -> Option<usize> {
        let (mode, _) = self.options.keep_best?;
        let value = self.rank_value(list[index].0)?;
        let above = list.iter().enumerate().filter(|&(other, &(number, _))| {
            self.rank_value(number).is_some_and(|v| match mode {
                MetricMode::Min => v < value || (v == value && other > index),
                MetricMode::Max => v > value || (v == value && other > index),
            })
        });
        Some(above.count())
    }

    /// Whether the pin, the period and the best-k rules keep the checkpoint
    /// at `index` of `list`, in that order.
    fn kept_by(&self, list: &[(u64, f64)], index: usize) -> [bool; 3] {
        let number = list[index].0;
        let among_best = match (self.options.keep_best, self.ranked_above(list, index)) {
            (Some((_, k)), Some(above)) => above < k,
            _ => false,
        };
        [
            self.disk[&number].pinned,
            self.options.keep_period.is_some_and(|p| number % p == 0),
            among_best,
        ]
    }

    /// The best managed checkpoint: the one nothing ranks above.
    fn best(&self) -> Option<u64> {
        let index =
            (0..self.managed.len()).find(|&i| self.ranked_above(&self.managed, i) == Some(0))?;
        Some(self.managed[index].0)
    }

    /// A manager opening at `now`. Returns whether it warns: the clock is
    /// behind the state file's last preserved time.
    fn open(&mut self, now: f64) -> bool {
        self.save_counter = self.disk.keys().copied().max().unwrap_or(0);
        let Some(state) = self.state_file.clone() else {
            self.managed.clear();
            self.latest = None;
            self.last_preserved = now - 1.0;
            return false;
        };
        let warned = now < state.last_preserved;
        if warned {
            self.reach("clock_backwards_at_open");
        }
        self.last_preserved = state.last_preserved.min(now);
        self.latest = Some(state.latest);
        // TF caps timestamps at now and stops managing entries not newer
        // than the last preserved one; those the pin, period and best-k
        // rules keep (over everything listed) stay managed.
        let listed: Vec<(u64, f64)> = state
            .entries
            .iter()
            .map(|&(number, timestamp)| (number, timestamp.min(now)))
            .collect();
        self.managed.clear();
        for index in 0..listed.len() {
            let kept = self.kept_by(&listed, index).contains(&true);
            if listed[index].1 > self.last_preserved {
                self.managed.push(listed[index]);
            } else if kept {
                self.reach("kept_behind_last_preserved_at_open");
                self.managed.push(listed[index]);
            } else {
                self.reach("dropped_at_open");
            }
        }
        warned
    }

    /// A save at `now`; returns the number saved.
    fn save(&mut self, number: Option<u64>, metrics: Metrics, now: f64) -> u64 {
        self.save_counter += 1;
        let number = number.unwrap_or(self.save_counter);
        let managed = self.managed.iter().any(|&(n, _)| n == number);
        // The pin is on the name: a managed number saved again keeps it.
        let pinned = managed && self.disk[&number].pinned;
        if pinned {
            self.reach("resaved_pinned");
        } else if !managed && self.disk.contains_key(&number) {
            self.reach("resaved_unmanaged_on_disk");
        }
        self.disk.insert(
            number,
            Record {
                metrics,
                pinned,
                unpinned: false,
                saved_at: now,
            },
        );
        self.managed.retain(|&(n, _)| n != number);
        self.managed.push((number, now));
        self.latest = Some(number);
        if let MaxToKeep::Last(keep) = self.options.max_to_keep {
            self.sweep(keep);
        }
        self.state_file = Some(StateFile {
            latest: number,
            entries: self.managed.clone(),
            last_preserved: self.last_preserved,
        });
        number
    }

    /// Takes off the list, oldest first, every checkpoint that is not among
    /// the newest `keep` and that no other rule keeps. TF's hours rule
    /// preserves it (leaves its files) when it is at least that many hours
    /// newer than the last preserved one; otherwise its files are deleted.
    fn sweep(&mut self, keep: usize) {
        let list = std::mem::take(&mut self.managed);
        let newest_from = list.len().saturating_sub(keep);
        let kept_by: Vec<[bool; 3]> = (0..list.len()).map(|i| self.kept_by(&list, i)).collect();
        let swept: Vec<usize> = (0..newest_from)
            .filter(|&i| !kept_by[i].contains(&true))
            .collect();
        self.note_sweep(&list, newest_from, &kept_by, &swept);
        for (index, &(number, timestamp)) in list.iter().enumerate() {
            if !swept.contains(&index) {
                self.managed.push((number, timestamp));
                continue;
            }
            let preserve = self
                .options
                .hours()
                .is_some_and(|hours| timestamp - hours * 3600.0 >= self.last_preserved);
            if preserve {
                self.last_preserved = timestamp;
                self.reach("preserved");
            } else {
                self.disk.remove(&number);
                self.reach("deleted");
            }
        }
    }

    /// Coverage: what set apart a sweep of `list` that keeps the newest
    /// from `newest_from` on, and the others as `kept_by` says.
    fn note_sweep(
        &mut self,
        list: &[(u64, f64)],
        newest_from: usize,
        kept_by: &[[bool; 3]],
        swept: &[usize],
    ) {
        for kept in &kept_by[..newest_from] {
            match kept {
                [true, false, false] => self.reach("kept_only_by_pin"),
                [false, true, false] => self.reach("kept_only_by_period"),
                [false, false, true] => self.reach("kept_only_by_best"),
                _ => {}
            }
        }
        if swept.len() > 1 {
            self.reach("several_swept_in_one_save");
        }
        let value = |i: usize| self.rank_value(list[i].0);
        let kept_best_values: Vec<f64> = (0..list.len())
            .filter(|&i| kept_by[i][2])
            .filter_map(value)
            .collect();
        let ranked = (0..list.len()).filter(|&i| value(i).is_some()).count();
        let best_place_free = self.options.keep_best.is_some_and(|(_, k)| ranked < k);
        let best_tied = (0..list.len())
            .find(|&i| self.ranked_above(list, i) == Some(0))
            .is_some_and(|best| (0..list.len()).filter(|&i| value(i) == value(best)).count() > 1);
        let mut situations = Vec::new();
        if best_tied {
            situations.push("best_is_the_newer_of_a_tie");
        }
        for &index in swept {
            let record = self.disk[&list[index].0];
            if value(index).is_some_and(|v| kept_best_values.contains(&v)) {
                situations.push("swept_with_the_value_of_a_kept_best");
            }
            if best_place_free && record.metrics.ranked.is_some_and(f64::is_nan) {
                situations.push("nan_swept_with_a_best_place_free");
            }
            if best_place_free
                && record.metrics.ranked.is_none()
                && record.metrics.unranked.is_some()
            {
                situations.push("other_metric_swept_with_a_best_place_free");
            }
            if record.unpinned {
                situations.push("swept_after_unpin");
            }
        }
        situations.into_iter().for_each(|s| self.reach(s));
    }

    /// Pins or unpins `number`. False, and nothing changes, when it is not
    /// managed.
    fn set_pinned(&mut self, number: u64, pinned: bool) -> bool {
        if !self.managed.iter().any(|&(n, _)| n == number) {
            if self.disk.contains_key(&number) {
                self.reach("pin_rejected_for_a_checkpoint_on_disk");
            }
            return false;
        }
        let record = self.disk.get_mut(&number).unwrap();
        record.unpinned |= record.pinned && !pinned;
        record.pinned = pinned;
        true
    }

    /// The names of that kind that are not managed, given the numbers
    /// `used` so far; at least one.
    fn unmanaged(&self, kind: Unmanaged, used: &[u64]) -> Vec<u64> {
        let names: BTreeSet<u64> = match kind {
            Unmanaged::OnDisk => self
                .disk
                .keys()
                .filter(|&&n| !self.managed.iter().any(|&(m, _)| m == n))
                .copied()
                .collect(),
            Unmanaged::Deleted => used
                .iter()
                .filter(|n| !self.disk.contains_key(n))
                .copied()
                .collect(),
            Unmanaged::NeverSaved => BTreeSet::new(),
        };
        if names.is_empty() {
            vec![NEVER_SAVED]
        } else {
            names.into_iter().collect()
        }
    }

    /// Every file that must be in the directory: the lock, the state file
    /// once written, and each checkpoint's two files and manifest.
    fn expected_files(&self) -> BTreeSet<String> {
        harness::expected_files(self.disk.keys().copied(), self.state_file.is_some())
    }
}

// ---------------------------------------------------------------------------
// The real manager against the model

/// A state file in a form that prints readably.
#[derive(Debug, PartialEq)]
struct StateView {
    latest: String,
    paths: Vec<String>,
    timestamps: Vec<f64>,
    last_preserved: f64,
}

/// Metric values as text, so that NaN equals NaN and -0 differs from 0.
fn metrics_text<'a>(metrics: impl IntoIterator<Item = (&'a str, f64)>) -> Vec<(String, String)> {
    metrics
        .into_iter()
        .map(|(name, value)| (name.to_owned(), format!("{value:?}")))
        .collect()
}

fn compare(h: &mut Harness, model: &Model, step: usize) -> Result<(), TestCaseError> {
    let directory = h.directory.clone();
    let path = |number: u64| directory.join(name_of(number));
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let files = h.files();
    let manager = h.manager();

    let expected: Vec<PathBuf> = model.managed.iter().map(|&(n, _)| path(n)).collect();
    prop_assert_eq!(
        manager.checkpoints(),
        expected,
        "checkpoints() after op #{}",
        step
    );
    prop_assert_eq!(
        manager.latest_checkpoint(),
        model.latest.map(path),
        "latest_checkpoint() after op #{}",
        step
    );
    if let Some(latest) = model.latest {
        // Checked apart from the model: whatever the rules, the latest stays.
        prop_assert!(
            files.contains(&format!("{}.index", name_of(latest))),
            "the latest checkpoint's files are gone after op #{}",
            step
        );
    }
    prop_assert_eq!(
        manager.save_counter(),
        model.save_counter,
        "save_counter() after op #{}",
        step
    );
    match (manager.best_checkpoint(), model.options.keep_best) {
        (Ok(best), Some(_)) => prop_assert_eq!(
            best,
            model.best().map(path),
            "best_checkpoint() after op #{}",
            step
        ),
        (Err(Error::InvalidArgument(_)), None) => {}
        (real, _) => {
            return Err(TestCaseError::fail(format!(
                "best_checkpoint() after op #{step}: {real:?}"
            )))
        }
    }
    prop_assert_eq!(
        &files,
        &model.expected_files(),
        "files on disk after op #{}",
        step
    );

    let state = get_checkpoint_state(&directory)
        .map_err(|e| TestCaseError::fail(format!("get_checkpoint_state after op #{step}: {e}")))?
        .map(|state| StateView {
            latest: text(&state.model_checkpoint_path),
            paths: state
                .all_model_checkpoint_paths
                .iter()
                .map(|p| text(p))
                .collect(),
            timestamps: state.all_model_checkpoint_timestamps,
            last_preserved: state.last_preserved_timestamp,
        });
    let full = |number: u64| path(number).to_str().unwrap().to_owned();
    let expected = model.state_file.as_ref().map(|state| StateView {
        latest: full(state.latest),
        paths: state.entries.iter().map(|&(n, _)| full(n)).collect(),
        timestamps: state.entries.iter().map(|&(_, ts)| ts).collect(),
        last_preserved: state.last_preserved,
    });
    prop_assert_eq!(state, expected, "state file after op #{}", step);

    for (&number, record) in &model.disk {
        let info = manager.checkpoint_info(&path(number)).map_err(|e| {
            TestCaseError::fail(format!(
                "checkpoint_info(ckpt-{number}) after op #{step}: {e}"
            ))
        })?;
        let listed_at = model
            .managed
            .iter()
            .find(|&&(n, _)| n == number)
            .map(|&(_, ts)| ts);
        let what = format!("checkpoint_info(ckpt-{number}) after op #{step}");
        prop_assert_eq!(info.number, Some(number), "{} number", what);
        prop_assert_eq!(info.pinned, record.pinned, "{} pinned", what);
        prop_assert_eq!(info.managed, listed_at.is_some(), "{} managed", what);
        prop_assert_eq!(info.latest, model.latest == Some(number), "{} latest", what);
        prop_assert_eq!(
            info.timestamp,
            Some(listed_at.unwrap_or(record.saved_at)),
            "{} timestamp",
            what
        );
        prop_assert!(info.has_manifest, "{} has_manifest", what);
        let real = metrics_text(info.metrics.iter().map(|(n, m)| (n.as_str(), m.0)));
        let expected = metrics_text(
            [
                (UNRANKED, record.metrics.unranked),
                (RANKED, record.metrics.ranked),
            ]
            .into_iter()
            .filter_map(|(name, value)| Some((name, value?))),
        );
        prop_assert_eq!(real, expected, "{} metrics", what);
    }
    Ok(())
}

/// Runs `ops` on a real manager and on the model, from `start_quarters`
/// quarter seconds, comparing them after every operation. Returns the model
/// at the end.
fn run(options: Options, start_quarters: i64, ops: &[Op]) -> Result<Model, TestCaseError> {
    let mut h = Harness::new(start_quarters as f64 / 4.0);
    let mut model = Model::new(options, h.now());
    h.open(options.config(&h.directory))?;
    prop_assert_eq!(
        h.warnings(),
        Vec::<String>::new(),
        "warnings at the first open"
    );
    compare(&mut h, &model, 0)?;

    let mut used: Vec<u64> = Vec::new();
    for (index, op) in ops.iter().enumerate() {
        let step = index + 1;
        let warnings_before = h.warnings().len();
        let mut expected_warnings = 0;
        match *op {
            Op::Save(number, metrics) => {
                let number = match number {
                    Number::Next => None,
                    Number::Explicit(n) => Some(n),
                    Number::Reuse(_) if used.is_empty() => None,
                    Number::Reuse(i) => Some(used[i % used.len()]),
                };
                let saved = model.save(number, metrics, h.now());
                used.push(saved);
                let mut args = SaveArgs {
                    checkpoint_number: number,
                    ..SaveArgs::default()
                };
                for (name, value) in [(RANKED, metrics.ranked), (UNRANKED, metrics.unranked)] {
                    if let Some(value) = value {
                        args.set_metric(name, value).unwrap();
                    }
                }
                let prefix = h
                    .manager()
                    .save_with(&args)
                    .map_err(|e| TestCaseError::fail(format!("save at op #{step}: {e}")))?;
                prop_assert_eq!(
                    prefix,
                    Some(h.directory.join(name_of(saved))),
                    "save_with() result at op #{}",
                    step
                );
            }
            Op::SetPinned(index, pinned) if !model.managed.is_empty() => {
                let number = model.managed[index % model.managed.len()].0;
                prop_assert!(model.set_pinned(number, pinned));
                let prefix = h.directory.join(name_of(number));
                h.manager().set_pinned(&prefix, pinned).map_err(|e| {
                    TestCaseError::fail(format!("set_pinned({pinned}) at op #{step}: {e}"))
                })?;
            }
            Op::SetPinned(index, pinned) | Op::SetPinnedUnmanaged(_, index, pinned) => {
                let kind = match *op {
                    Op::SetPinnedUnmanaged(kind, ..) => kind,
                    _ => Unmanaged::NeverSaved,
                };
                let names = model.unmanaged(kind, &used);
                let number = names[index % names.len()];
                prop_assert!(!model.set_pinned(number, pinned));
                let prefix = h.directory.join(name_of(number));
                match h.manager().set_pinned(&prefix, pinned) {
                    Err(Error::InvalidArgument(_)) => {}
                    other => {
                        return Err(TestCaseError::fail(format!(
                            "set_pinned({pinned}) of unmanaged ckpt-{number} at op #{step}: \
                             {other:?}, not InvalidArgument"
                        )))
                    }
                }
            }
            Op::Restart => {
                expected_warnings = usize::from(model.open(h.now()));
                h.open(options.config(&h.directory))?;
            }
            Op::AdvanceClock(quarters) => h.advance_clock(quarters as f64 / 4.0),
        }
        let warnings = h.warnings()[warnings_before..].to_vec();
        prop_assert_eq!(
            warnings.len(),
            expected_warnings,
            "warnings logged by op #{} ({:?}): {:?}",
            step,
            op,
            warnings
        );
        compare(&mut h, &model, step)?;
    }
    Ok(model)
}

/// The default number of cases; fewer (`PROPTEST_CASES`) skip the coverage
/// check, which needs this many to be reliable.
const DEFAULT_CASES: u32 = 256;

#[test]
fn manager_matches_the_retention_model() {
    let config = proptest_config(DEFAULT_CASES);
    let cases = config.cases;
    let strategy = (
        options_strategy(),
        // 1e6 s .. 1.8e9 s, in quarter seconds: large, exact, positive even
        // after 60 jumps of 3 h backwards.
        4_000_000i64..7_200_000_000,
        ops_strategy(),
    );
    // How many cases reached each situation.
    let reached: RefCell<BTreeMap<&str, usize>> = RefCell::new(BTreeMap::new());
    let result = TestRunner::new(config).run(&strategy, |(options, start, ops)| {
        let model = run(options, start, &ops)?;
        let mut reached = reached.borrow_mut();
        for situation in model.reached {
            *reached.entry(situation).or_default() += 1;
        }
        Ok(())
    });
    if let Err(err) = result {
        panic!("{err}");
    }

    let reached = reached.into_inner();
    eprintln!("cases reaching each situation: {reached:?}");
    if cases >= DEFAULT_CASES {
        for situation in SITUATIONS {
            assert!(
                reached.contains_key(situation),
                "no generated case reached {situation}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Fixed sequences through the same harness, with what they must end in
// worked out by hand, so that the model itself is checked.

const START: i64 = 10_000 * 4;
const HOUR: i64 = QUARTERS_PER_HOUR;

fn save(ranked: f64) -> Op {
    Op::Save(
        Number::Next,
        Metrics {
            ranked: Some(ranked),
            unranked: None,
        },
    )
}

fn numbers(list: &[(u64, f64)]) -> Vec<u64> {
    list.iter().map(|&(n, _)| n).collect()
}

fn on_disk(model: &Model) -> Vec<u64> {
    model.disk.keys().copied().collect()
}

#[test]
fn best_survives_a_restart_behind_a_preserved_checkpoint() {
    // The best is older than a checkpoint the hours rule preserved: TF's
    // open alone would stop managing it, and best-k would change.
    let options = Options {
        max_to_keep: MaxToKeep::Last(1),
        keep_every_quarter_hours: Some(4),
        keep_best: Some((MetricMode::Min, 1)),
        keep_period: None,
    };
    let ops = [
        save(0.0),
        Op::AdvanceClock(HOUR),
        save(1.0),
        Op::AdvanceClock(HOUR),
        // ckpt-2 is preserved: the last preserved time passes ckpt-1's.
        save(1.0),
        Op::Restart,
        Op::AdvanceClock(HOUR),
        save(0.5),
    ];
    let after_restart = run(options, START, &ops[..6]).unwrap();
    assert_eq!(numbers(&after_restart.managed), [1, 3]);
    assert_eq!(after_restart.last_preserved, 10_000.0 + 3600.0);
    assert_eq!(after_restart.best(), Some(1));

    let end = run(options, START, &ops).unwrap();
    assert_eq!(numbers(&end.managed), [1, 4]);
    assert_eq!(end.best(), Some(1));
    assert_eq!(on_disk(&end), [1, 2, 3, 4]);
    assert_eq!(end.last_preserved, 10_000.0 + 2.0 * 3600.0);
}

#[test]
fn latest_is_never_deleted() {
    let options = Options {
        max_to_keep: MaxToKeep::Last(1),
        keep_every_quarter_hours: None,
        keep_best: Some((MetricMode::Max, 1)),
        keep_period: None,
    };
    let nan = save(f64::NAN);
    let ops = [
        save(1.0),
        nan,
        // ckpt-1 saved again, worse: it is the latest, ckpt-2 (NaN) goes.
        Op::Save(
            Number::Explicit(1),
            Metrics {
                ranked: Some(0.0),
                unranked: None,
            },
        ),
        nan,
        // Back before the last preserved time: the latest, ckpt-4, is
        // dropped from the list but stays on disk.
        Op::AdvanceClock(-2 * HOUR),
        Op::Restart,
        save(2.0),
    ];
    let before_restart = run(options, START, &ops[..4]).unwrap();
    assert_eq!(numbers(&before_restart.managed), [1, 4]);
    assert_eq!(on_disk(&before_restart), [1, 4]);

    let after_restart = run(options, START, &ops[..6]).unwrap();
    assert_eq!(numbers(&after_restart.managed), [1]);
    assert_eq!(after_restart.latest, Some(4));

    let end = run(options, START, &ops).unwrap();
    assert_eq!(numbers(&end.managed), [5]);
    assert_eq!(on_disk(&end), [4, 5]);
}

#[test]
fn pinned_checkpoint_beyond_max_to_keep_survives_restarts() {
    let options = Options {
        max_to_keep: MaxToKeep::Last(1),
        keep_every_quarter_hours: Some(4),
        keep_best: None,
        keep_period: None,
    };
    let plain = Op::Save(
        Number::Next,
        Metrics {
            ranked: None,
            unranked: None,
        },
    );
    let ops = [
        plain,
        Op::SetPinned(0, true),
        Op::AdvanceClock(HOUR),
        plain,
        Op::AdvanceClock(HOUR),
        // ckpt-2 is preserved, past the pinned ckpt-1.
        plain,
        Op::Restart,
        // Back before the last preserved time: only the pin keeps ckpt-1.
        Op::AdvanceClock(-3 * HOUR),
        Op::Restart,
        Op::AdvanceClock(HOUR),
        plain,
        Op::SetPinned(0, false),
        Op::AdvanceClock(HOUR),
        plain,
    ];
    let after_restarts = run(options, START, &ops[..9]).unwrap();
    assert_eq!(numbers(&after_restarts.managed), [1]);
    assert!(after_restarts.disk[&1].pinned);
    assert_eq!(after_restarts.latest, Some(3));

    let pinned_and_newest = run(options, START, &ops[..11]).unwrap();
    assert_eq!(numbers(&pinned_and_newest.managed), [1, 4]);

    // Unpinned, it is swept by the next save: too close to the last
    // preserved time to be preserved, so deleted.
    let end = run(options, START, &ops).unwrap();
    assert_eq!(numbers(&end.managed), [5]);
    assert_eq!(on_disk(&end), [2, 3, 4, 5]);
}
