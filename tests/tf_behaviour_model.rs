//! Model-based property test of `CheckpointManager` against an independent
//! reference model of `tf.train.CheckpointManager`'s rules
//! (`/work/shared/reference/tf-checkpoint-manager.md`), plus the README's
//! deliberate difference for the save counter on open.
//!
//! Random sequences of saves (next number, an explicit small number, or a
//! number used before), restarts, clock jumps (forwards and backwards) and
//! option changes (taking effect at the next restart) drive the real manager
//! in a temporary directory with a fake clock. After every operation the
//! manager's list, latest, save counter, the exact files on disk, the state
//! file and the warnings logged are compared with the model. The README's
//! other differences that show here are modelled too: the directory and
//! `checkpoint.lock` appear when a writer opens, and every checkpoint has a
//! `.ckpt-manifest.json`.
//!
//! `PROPTEST_CASES=N cargo test --test tf_behaviour_model` runs a longer search.
//!
//! Clock values are multiples of 0.25 s and `keep_checkpoint_every_n_hours`
//! is a multiple of 0.25 h, so every timestamp and every `hours * 3600` is
//! exact and comparisons need no tolerance.

mod support;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use ckpt_manager::{get_checkpoint_state, CheckpointState, Config, MaxToKeep};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use support::harness::{self, name_of, proptest_config, Harness};

// ---------------------------------------------------------------------------
// Operations

#[derive(Debug, Clone, Copy, PartialEq)]
struct Options {
    max_to_keep: MaxToKeep,
    /// `keep_checkpoint_every_n_hours` in quarter hours (0.5 h .. 3 h).
    keep_every_quarter_hours: Option<u32>,
}

impl Options {
    fn hours(&self) -> Option<f64> {
        self.keep_every_quarter_hours.map(|q| f64::from(q) / 4.0)
    }
}

#[derive(Debug, Clone, Copy)]
enum Number {
    /// `save(None)`: the save counter's next value.
    Next,
    /// `save(Some(n))` with a small `n`.
    Explicit(u64),
    /// `save(Some(n))` with a number saved before in this run (picked by
    /// index modulo the numbers used so far; `Next` when there are none).
    Reuse(usize),
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Save(Number),
    /// Drop the manager and open a new one with the current options.
    Restart,
    /// Move the fake clock by this many quarter seconds (may be negative).
    AdvanceClock(i64),
    /// New options, used from the next `Restart` on.
    ChangeOptions(Options),
}

fn options_strategy() -> impl Strategy<Value = Options> {
    let max = prop_oneof![
        4 => (1usize..=5).prop_map(MaxToKeep::Last),
        1 => Just(MaxToKeep::All),
    ];
    let hours = prop_oneof![1 => Just(None), 2 => (2u32..=12).prop_map(Some)];
    (max, hours).prop_map(|(max_to_keep, keep_every_quarter_hours)| Options {
        max_to_keep,
        keep_every_quarter_hours,
    })
}

const QUARTERS_PER_HOUR: i64 = 4 * 3600;
const QUARTERS_PER_QUARTER_HOUR: i64 = QUARTERS_PER_HOUR / 4;

/// Clock jumps in quarter seconds. In a `coarse` case every jump is a whole
/// number of quarter hours, like the `keep_checkpoint_every_n_hours`
/// values, so the sweep's `>=` and the open's `now < last_preserved` are
/// met with equality (`ops_strategy` also starts such a case one second
/// back, where a fresh manager puts its last preserved time). Otherwise
/// jumps are any quarter second in range.
fn advance_strategy(coarse: bool) -> BoxedStrategy<i64> {
    let quarter_hours =
        |range: std::ops::RangeInclusive<i64>| range.prop_map(|q| q * QUARTERS_PER_QUARTER_HOUR);
    if coarse {
        prop_oneof![
            8 => quarter_hours(1..=6),
            // Occasionally backwards.
            1 => quarter_hours(-12..=-1),
        ]
        .boxed()
    } else {
        prop_oneof![
            // 1 s .. 3 h forwards.
            8 => 4i64..=3 * QUARTERS_PER_HOUR,
            // Occasionally backwards, by a quarter second .. 3 h.
            1 => -3 * QUARTERS_PER_HOUR..=-1,
        ]
        .boxed()
    }
}

fn ops_strategy() -> impl Strategy<Value = Vec<Op>> {
    any::<bool>().prop_flat_map(|coarse| {
        prop::collection::vec(op_strategy(coarse), 0..=40).prop_map(move |mut ops| {
            if coarse {
                ops.insert(0, Op::AdvanceClock(-4));
            }
            ops
        })
    })
}

fn op_strategy(coarse: bool) -> impl Strategy<Value = Op> {
    let number = prop_oneof![
        6 => Just(Number::Next),
        1 => (0u64..8).prop_map(Number::Explicit),
        1 => any::<usize>().prop_map(Number::Reuse),
    ];
    prop_oneof![
        8 => number.prop_map(Op::Save),
        4 => advance_strategy(coarse).prop_map(Op::AdvanceClock),
        2 => Just(Op::Restart),
        1 => options_strategy().prop_map(Op::ChangeOptions),
    ]
}

// ---------------------------------------------------------------------------
// Coverage: the model counts the interesting situations it meets, and the
// property test fails if random generation stopped reaching them.

/// Every situation counted; the property test requires each to be reached.
const SITUATIONS: [&str; 12] = [
    "deleted",
    "preserved",
    "preserved_at_exact_interval",
    "clock_at_last_preserved_at_open",
    "several_swept_in_one_save",
    "clock_backwards_at_open",
    "timestamp_capped_at_open",
    "dropped_at_open_without_warning",
    "resaved_managed",
    "resaved_unmanaged_on_disk",
    "counter_from_disk_above_latest",
    "saved_below_counter",
];

thread_local! {
    // Per thread, so the fixed tests running alongside do not count.
    static COVERAGE: RefCell<BTreeMap<&'static str, usize>> = const { RefCell::new(BTreeMap::new()) };
}

fn hit(situation: &'static str) {
    debug_assert!(SITUATIONS.contains(&situation));
    COVERAGE.with(|c| *c.borrow_mut().entry(situation).or_default() += 1);
}

// ---------------------------------------------------------------------------
// Reference model, written from the TF rules

fn number_of(name: &str) -> u64 {
    name.strip_prefix("ckpt-").unwrap().parse().unwrap()
}

/// What the state file on disk says.
#[derive(Debug, Clone, PartialEq)]
struct StateFile {
    latest: String,
    /// `all_model_checkpoint_paths` with `all_model_checkpoint_timestamps`.
    entries: Vec<(String, f64)>,
    last_preserved: f64,
}

#[derive(Debug)]
struct Model {
    /// Options of the open manager, and those the next restart will use.
    options: Options,
    pending: Options,
    /// The managed checkpoints, oldest first, with their timestamps.
    managed: Vec<(String, f64)>,
    last_preserved: f64,
    latest: Option<String>,
    save_counter: u64,
    /// Numbers whose files (`.index`, `.data-00000-of-00001`, manifest)
    /// must exist: managed, preserved, and unmanaged leftovers such as a
    /// latest dropped at open.
    on_disk: BTreeSet<u64>,
    /// The state file, once a save has written it.
    state_file: Option<StateFile>,
}

impl Model {
    /// A fresh directory: nothing on disk.
    fn new(options: Options, now: f64) -> (Self, bool) {
        let mut model = Model {
            options,
            pending: options,
            managed: Vec::new(),
            last_preserved: 0.0,
            latest: None,
            save_counter: 0,
            on_disk: BTreeSet::new(),
            state_file: None,
        };
        let warned = model.open(now);
        (model, warned)
    }

    /// The constructor's recovery. Returns whether it warns (the clock is
    /// before the state file's last preserved time).
    fn open(&mut self, now: f64) -> bool {
        self.options = self.pending;
        let mut warned = false;
        match &self.state_file {
            None => {
                self.latest = None;
                self.managed = Vec::new();
                self.last_preserved = now - 1.0;
            }
            Some(state) => {
                self.latest = Some(state.latest.clone());
                let mut last_preserved = state.last_preserved;
                if now == last_preserved {
                    hit("clock_at_last_preserved_at_open");
                }
                if now < last_preserved {
                    warned = true;
                    last_preserved = now;
                    hit("clock_backwards_at_open");
                }
                // Every path we write has a timestamp, so none is missing.
                self.managed = Vec::new();
                for (name, ts) in &state.entries {
                    if *ts > now {
                        hit("timestamp_capped_at_open");
                    }
                    let ts = ts.min(now);
                    if ts > last_preserved {
                        self.managed.push((name.clone(), ts));
                    } else if !warned {
                        hit("dropped_at_open_without_warning");
                    }
                }
                self.last_preserved = last_preserved;
            }
        }
        // README difference: the counter continues from the highest number
        // in the state file or on disk under this name.
        let listed = self
            .state_file
            .iter()
            .flat_map(|s| s.entries.iter().map(|(n, _)| n).chain([&s.latest]))
            .map(|n| number_of(n));
        self.save_counter = listed
            .chain(self.on_disk.iter().copied())
            .max()
            .unwrap_or(0);
        if self
            .latest
            .as_deref()
            .is_some_and(|l| number_of(l) < self.save_counter)
        {
            hit("counter_from_disk_above_latest");
        }
        warned
    }

    /// `save(number)` at time `now`; returns the name saved.
    fn save(&mut self, number: Option<u64>, now: f64) -> String {
        self.save_counter += 1;
        let name = name_of(number.unwrap_or(self.save_counter));
        let managed_before = self.managed.len();
        self.managed.retain(|(n, _)| *n != name);
        if self.managed.len() < managed_before {
            hit("resaved_managed");
        } else if self.on_disk.contains(&number_of(&name)) {
            hit("resaved_unmanaged_on_disk");
        }
        if number_of(&name) < self.save_counter {
            hit("saved_below_counter");
        }
        self.on_disk.insert(number_of(&name));
        self.managed.push((name.clone(), now));
        self.latest = Some(name.clone());
        if let MaxToKeep::Last(keep) = self.options.max_to_keep {
            if self.managed.len() > keep + 1 {
                hit("several_swept_in_one_save");
            }
            while self.managed.len() > keep {
                let (old, ts) = self.managed.remove(0);
                let preserve = self
                    .options
                    .hours()
                    .is_some_and(|h| ts - h * 3600.0 >= self.last_preserved);
                if preserve && ts - self.options.hours().unwrap() * 3600.0 == self.last_preserved {
                    hit("preserved_at_exact_interval");
                }
                if preserve {
                    self.last_preserved = ts;
                    hit("preserved");
                } else {
                    self.on_disk.remove(&number_of(&old));
                    hit("deleted");
                }
            }
        }
        self.state_file = Some(StateFile {
            latest: name.clone(),
            entries: self.managed.clone(),
            last_preserved: self.last_preserved,
        });
        name
    }

    /// Every file that must be in the directory, by name. Besides TF's
    /// files (the state file, each checkpoint's `.index` and `.data`), the
    /// README's differences: a writer creates the directory and
    /// `checkpoint.lock` when it opens, and each checkpoint has a
    /// `.ckpt-manifest.json` (a `.ckpt-pending` marker only during its
    /// save). No temporary file survives an operation.
    fn expected_files(&self) -> BTreeSet<String> {
        harness::expected_files(self.on_disk.iter().copied(), self.state_file.is_some())
    }
}

// ---------------------------------------------------------------------------
// The real manager

fn config(directory: &Path, options: Options) -> Result<Config, TestCaseError> {
    let mut config = Config::new(directory, options.max_to_keep)
        .map_err(|e| TestCaseError::fail(format!("Config::new: {e}")))?;
    config
        .set_keep_checkpoint_every_n_hours(options.hours())
        .map_err(|e| TestCaseError::fail(format!("hours: {e}")))?;
    Ok(config)
}

/// State-file paths as text, for readable failure messages.
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn texts(paths: &[Vec<u8>]) -> Vec<String> {
    paths.iter().map(|p| text(p)).collect()
}

fn compare(h: &mut Harness, model: &Model, step: usize) -> Result<(), TestCaseError> {
    let directory = h.directory.clone();
    let manager = h.manager();

    let listed: Vec<String> = manager
        .checkpoints()
        .iter()
        .map(|p| {
            assert_eq!(p.parent(), Some(directory.as_path()));
            p.file_name().unwrap().to_str().unwrap().to_string()
        })
        .collect();
    let expected: Vec<&str> = model.managed.iter().map(|(n, _)| n.as_str()).collect();
    prop_assert_eq!(listed, expected, "checkpoints() after op #{}", step);

    prop_assert_eq!(
        manager.latest_checkpoint(),
        model.latest.as_ref().map(|n| directory.join(n)),
        "latest_checkpoint() after op #{}",
        step
    );
    prop_assert_eq!(
        manager.save_counter(),
        model.save_counter,
        "save_counter() after op #{}",
        step
    );
    prop_assert_eq!(
        h.files(),
        model.expected_files(),
        "files on disk after op #{}",
        step
    );

    let state = get_checkpoint_state(&directory)
        .map_err(|e| TestCaseError::fail(format!("get_checkpoint_state after op #{step}: {e}")))?;
    match (&state, &model.state_file) {
        (None, None) => {}
        (Some(state), Some(expected)) => {
            // The file itself: paths relative to the directory, as TF
            // writes them, in the canonical text form.
            let file = std::fs::read(directory.join("checkpoint")).unwrap();
            let raw = CheckpointState::parse(&file).map_err(|e| {
                TestCaseError::fail(format!("state file after op #{step} does not parse: {e}"))
            })?;
            prop_assert_eq!(
                text(&raw.model_checkpoint_path),
                expected.latest.clone(),
                "raw state latest after op #{}",
                step
            );
            let names: Vec<String> = expected.entries.iter().map(|(n, _)| n.clone()).collect();
            prop_assert_eq!(
                texts(&raw.all_model_checkpoint_paths),
                names,
                "raw state paths after op #{}",
                step
            );
            prop_assert_eq!(
                raw.to_text(),
                file,
                "state file after op #{} is not in canonical form",
                step
            );

            let joined = |name: &str| directory.join(name).to_str().unwrap().to_string();
            prop_assert_eq!(
                text(&state.model_checkpoint_path),
                joined(&expected.latest),
                "state latest after op #{}",
                step
            );
            let paths: Vec<String> = expected.entries.iter().map(|(n, _)| joined(n)).collect();
            prop_assert_eq!(
                texts(&state.all_model_checkpoint_paths),
                paths,
                "state paths after op #{}",
                step
            );
            let timestamps: Vec<f64> = expected.entries.iter().map(|&(_, ts)| ts).collect();
            prop_assert_eq!(
                &state.all_model_checkpoint_timestamps,
                &timestamps,
                "state timestamps after op #{}",
                step
            );
            prop_assert_eq!(
                state.last_preserved_timestamp,
                expected.last_preserved,
                "state last_preserved after op #{}",
                step
            );
        }
        (real, expected) => {
            return Err(TestCaseError::fail(format!(
                "state file after op #{step}: real {real:?}, model {expected:?}"
            )))
        }
    }
    Ok(())
}

fn run(initial: Options, start_quarters: i64, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut h = Harness::new(start_quarters as f64 / 4.0);

    let (mut model, warned) = Model::new(initial, h.now());
    h.open(config(&h.directory, initial)?)?;
    prop_assert_eq!(
        h.warnings().len(),
        usize::from(warned),
        "warnings at the first open"
    );
    compare(&mut h, &model, 0)?;

    let mut used: Vec<u64> = Vec::new();
    for (index, op) in ops.iter().enumerate() {
        let step = index + 1;
        let warnings_before = h.warnings().len();
        let mut expected_warnings = 0;
        match *op {
            Op::Save(number) => {
                let number = match number {
                    Number::Next => None,
                    Number::Explicit(n) => Some(n),
                    Number::Reuse(_) if used.is_empty() => None,
                    Number::Reuse(i) => Some(used[i % used.len()]),
                };
                let name = model.save(number, h.now());
                used.push(number_of(&name));
                let saved = h
                    .manager()
                    .save(number, true)
                    .map_err(|e| TestCaseError::fail(format!("save at op #{step}: {e}")))?;
                prop_assert_eq!(
                    saved,
                    Some(h.directory.join(&name)),
                    "save() result at op #{}",
                    step
                );
            }
            Op::Restart => {
                expected_warnings = usize::from(model.open(h.now()));
                h.open(config(&h.directory, model.pending)?)?;
            }
            Op::AdvanceClock(quarters) => {
                h.advance_clock(quarters as f64 / 4.0);
            }
            Op::ChangeOptions(options) => model.pending = options,
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
    Ok(())
}

#[test]
fn manager_matches_the_tf_model() {
    // PROPTEST_CASES=N runs a longer search.
    let config = proptest_config(256);
    let strategy = (
        options_strategy(),
        // 1e6 s .. 1.8e9 s, in quarter seconds: large, exact, positive even
        // after 40 jumps of 3 h backwards.
        4_000_000i64..7_200_000_000,
        ops_strategy(),
    );
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let result = runner.run(&strategy, |(initial, start_quarters, ops)| {
        run(initial, start_quarters, &ops)
    });
    if let Err(err) = result {
        panic!("{err}");
    }

    // The generator must keep reaching every situation the rules distinguish.
    let counts = COVERAGE.with(|c| c.borrow().clone());
    eprintln!("model coverage: {counts:?}");
    for situation in SITUATIONS {
        assert!(
            counts.contains_key(situation),
            "no generated case reached {situation}"
        );
    }
}

// ---------------------------------------------------------------------------
// Fixed sequences through the same harness: the TF test cases the model
// must reproduce, so the model itself is checked against the reference.

fn hours_q(h: f64) -> Option<u32> {
    Some((h * 4.0) as u32)
}

#[test]
fn model_reproduces_tf_clock_reset_case() {
    // TF case 5: clock 10000, max 1, hours 1; saves at 10000, 13600, 17200;
    // clock to 5000, new manager warns; saves at 5010, 5020.
    let opts = Options {
        max_to_keep: MaxToKeep::Last(1),
        keep_every_quarter_hours: hours_q(1.0),
    };
    let (mut m, warned) = Model::new(opts, 10000.0);
    assert!(!warned);
    m.save(None, 10000.0);
    m.save(None, 13600.0);
    m.save(None, 17200.0);
    assert_eq!(m.managed, vec![("ckpt-3".to_string(), 17200.0)]);
    assert_eq!(m.last_preserved, 13600.0);
    assert_eq!(m.on_disk, BTreeSet::from([2, 3]));
    assert!(m.open(5000.0));
    assert!(m.managed.is_empty());
    assert_eq!(m.latest.as_deref(), Some("ckpt-3"));
    m.save(None, 5010.0);
    m.save(None, 5020.0);
    assert_eq!(m.managed, vec![("ckpt-5".to_string(), 5020.0)]);
    assert_eq!(m.last_preserved, 5000.0);

    // The same sequence on the real manager.
    let ops = [
        Op::Save(Number::Next),
        Op::AdvanceClock(3600 * 4),
        Op::Save(Number::Next),
        Op::AdvanceClock(3600 * 4),
        Op::Save(Number::Next),
        Op::AdvanceClock(-12200 * 4),
        Op::Restart,
        Op::AdvanceClock(10 * 4),
        Op::Save(Number::Next),
        Op::AdvanceClock(10 * 4),
        Op::Save(Number::Next),
    ];
    run(opts, 10000 * 4, &ops).unwrap();
}

#[test]
fn model_reproduces_tf_save_restore_state_case() {
    // TF case 3 (from t = 10000 instead of construction at 3.0).
    let two = Options {
        max_to_keep: MaxToKeep::Last(2),
        keep_every_quarter_hours: None,
    };
    let (mut m, _) = Model::new(two, 3.0);
    m.save(None, 10000.0);
    m.save(None, 13610.0);
    m.pending = Options {
        keep_every_quarter_hours: hours_q(1.5),
        ..two
    };
    assert!(!m.open(13620.0));
    m.save(None, 14330.0);
    assert_eq!(m.last_preserved, 10000.0);
    m.save(None, 16130.0);
    m.save(None, 17930.0);
    assert!(!m.open(17940.0));
    m.save(None, 17950.0);
    assert_eq!(m.last_preserved, 16130.0);
    assert_eq!(m.on_disk, BTreeSet::from([1, 4, 5, 6]));
    let names: Vec<&str> = m.managed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["ckpt-5", "ckpt-6"]);

    let ops = [
        Op::AdvanceClock((10000 - 3) * 4),
        Op::Save(Number::Next),
        Op::AdvanceClock(3610 * 4),
        Op::Save(Number::Next),
        Op::ChangeOptions(Options {
            keep_every_quarter_hours: hours_q(1.5),
            ..two
        }),
        Op::AdvanceClock(10 * 4),
        Op::Restart,
        Op::AdvanceClock(710 * 4),
        Op::Save(Number::Next),
        Op::AdvanceClock(1800 * 4),
        Op::Save(Number::Next),
        Op::AdvanceClock(1800 * 4),
        Op::Save(Number::Next),
        Op::AdvanceClock(10 * 4),
        Op::Restart,
        Op::AdvanceClock(10 * 4),
        Op::Save(Number::Next),
    ];
    run(two, 3 * 4, &ops).unwrap();
}

#[test]
fn model_reproduces_tf_custom_numbering_case() {
    // TF case 6: numbers 0,2,4,6,8 then 32, max 2 -> [ckpt-8, ckpt-32], counter 6.
    let opts = Options {
        max_to_keep: MaxToKeep::Last(2),
        keep_every_quarter_hours: None,
    };
    let ops: Vec<Op> = [0, 2, 4, 6, 8, 32]
        .iter()
        .map(|&n| Op::Save(Number::Explicit(n)))
        .collect();
    let (mut m, _) = Model::new(opts, 100.0);
    for op in &ops {
        if let Op::Save(Number::Explicit(n)) = op {
            m.save(Some(*n), 100.0);
        }
    }
    let names: Vec<&str> = m.managed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["ckpt-8", "ckpt-32"]);
    assert_eq!(m.save_counter, 6);
    run(opts, 100 * 4, &ops).unwrap();
}
