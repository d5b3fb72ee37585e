//! The retention and interval rules, pure: no clock, no files. TF's
//! (newest N, one every N hours, the step interval) and those beyond it
//! (best k by a metric, every N-th number, pins), kept as a union.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Whether a smaller or a larger value of the best-k metric is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricMode {
    Min,
    Max,
}

/// The retention rules. A checkpoint is kept if any rule keeps it; the
/// latest always is.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rules {
    /// The newest this many are kept (TF); `None` keeps everything.
    pub max_to_keep: Option<usize>,
    /// TF: of the checkpoints no rule keeps, one every this many hours is
    /// preserved (taken off the list, left on disk).
    pub keep_every_n_hours: Option<f64>,
    /// The best `k` by the metric (`k` positive).
    pub keep_best: Option<(MetricMode, usize)>,
    /// Every checkpoint whose number is a multiple of this (positive).
    pub keep_period: Option<u64>,
}

/// What the rules beyond TF's need to know of a checkpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Traits {
    /// Its checkpoint number; `None` when its name does not end in one.
    pub number: Option<u64>,
    /// Its value of the best-k metric, if its save recorded one.
    pub metric: Option<f64>,
    pub pinned: bool,
}

/// A managed checkpoint: its state-file entry, save time and traits.
#[derive(Debug, Clone, PartialEq)]
pub struct Managed {
    pub entry: PathBuf,
    pub timestamp: f64,
    pub traits: Traits,
}

/// The managed checkpoints (oldest first) and the timestamp of the last
/// checkpoint preserved by `keep_checkpoint_every_n_hours`.
#[derive(Debug, Clone, PartialEq)]
pub struct Retention {
    managed: Vec<Managed>,
    last_preserved: f64,
}

/// What a sweep decided for the checkpoints it took off the managed list.
#[derive(Debug, Default, PartialEq)]
pub struct SweepOutcome {
    pub delete: Vec<PathBuf>,
    pub preserved: Vec<PathBuf>,
    /// Held checkpoints the hold's limit let go (in `delete` or `preserved`).
    pub released: Vec<PathBuf>,
}

/// Which rules keep one managed checkpoint. The sweep drops exactly the
/// checkpoints for which every field is false.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeptBy {
    /// Among the newest `max_to_keep`, or every one under keep-all.
    pub newest: bool,
    pub best: bool,
    pub period: bool,
    pub pinned: bool,
}

impl KeptBy {
    fn beyond_recency(&self) -> bool {
        self.best || self.period || self.pinned
    }
}

impl Rules {
    /// Which of `checkpoints` (oldest first) the pin, period and best-k
    /// rules keep.
    fn keeps_beyond_recency(&self, checkpoints: &[Managed]) -> Vec<bool> {
        self.kept_by(checkpoints)
            .iter()
            .map(KeptBy::beyond_recency)
            .collect()
    }

    /// Why each of `checkpoints` (the managed list, oldest first) is kept,
    /// rule by rule: what `sweep` decides, itemised.
    pub fn kept_by(&self, checkpoints: &[Managed]) -> Vec<KeptBy> {
        let newest_from = self
            .max_to_keep
            .map_or(0, |n| checkpoints.len().saturating_sub(n));
        let mut kept: Vec<KeptBy> = checkpoints
            .iter()
            .enumerate()
            .map(|(index, checkpoint)| {
                let traits = checkpoint.traits;
                KeptBy {
                    newest: index >= newest_from,
                    best: false,
                    period: match (self.keep_period, traits.number) {
                        (Some(period), Some(number)) => number % period == 0,
                        _ => false,
                    },
                    pinned: traits.pinned,
                }
            })
            .collect();
        if let Some((mode, k)) = self.keep_best {
            for index in best_first(checkpoints, mode).into_iter().take(k) {
                kept[index].best = true;
            }
        }
        kept
    }
}

/// Indexes of the checkpoints with a metric (NaN has none), best first;
/// of equal values the newer first.
fn best_first(checkpoints: &[Managed], mode: MetricMode) -> Vec<usize> {
    let mut ranked: Vec<(usize, f64)> = checkpoints
        .iter()
        .enumerate()
        .filter_map(|(index, checkpoint)| {
            let value = checkpoint.traits.metric.filter(|value| !value.is_nan())?;
            Some((index, value))
        })
        .collect();
    ranked.sort_by(|(index_a, a), (index_b, b)| {
        let by_value = match mode {
            MetricMode::Min => a.partial_cmp(b),
            MetricMode::Max => b.partial_cmp(a),
        };
        by_value
            .expect("NaN was filtered out")
            .then(index_b.cmp(index_a))
    });
    ranked.into_iter().map(|(index, _)| index).collect()
}

impl Retention {
    /// No state file: set the clock back one second, as TF does, so a
    /// manager re-created at once does not preserve the next checkpoint.
    pub fn fresh(now: f64) -> Self {
        Retention {
            managed: Vec::new(),
            last_preserved: now - 1.0,
        }
    }

    /// Rebuilds the managed set from a state file's entries (with their
    /// traits) at time `now`. Returns the retention and whether the clock
    /// went backwards (`now` is before the last preserved timestamp),
    /// which callers warn about.
    ///
    /// Entries with no timestamp get the last preserved time. TF stops
    /// managing entries not newer than the last preserved one (it never
    /// deletes them); those the pin, period or best-k rules keep stay
    /// managed, so that those rules keep after a restart exactly what they
    /// kept before. Pairs beyond the shorter list are dropped, as Python's
    /// `zip` does.
    pub fn recover(
        entries: Vec<(PathBuf, Traits)>,
        timestamps: &[f64],
        last_preserved: f64,
        now: f64,
        rules: &Rules,
    ) -> (Self, bool) {
        let clock_went_backwards = now < last_preserved;
        let last_preserved = if clock_went_backwards {
            now
        } else {
            last_preserved
        };
        let missing = timestamps.is_empty();
        let listed = entries
            .into_iter()
            .enumerate()
            .map_while(|(index, (entry, traits))| {
                let timestamp = if missing {
                    last_preserved
                } else {
                    *timestamps.get(index)?
                };
                Some(Managed {
                    entry,
                    timestamp: timestamp.min(now),
                    traits,
                })
            });
        let listed: Vec<Managed> = listed.collect();
        // Every listed checkpoint once, for the rules beyond TF's.
        let mut everything = Vec::new();
        let mut positions: HashMap<&Path, usize> = HashMap::new();
        for checkpoint in &listed {
            if !positions.contains_key(checkpoint.entry.as_path()) {
                positions.insert(&checkpoint.entry, everything.len());
                everything.push(checkpoint.clone());
            }
        }
        let kept = rules.keeps_beyond_recency(&everything);
        let protected = |entry: &Path| positions.get(entry).is_some_and(|&index| kept[index]);
        // A repeated entry keeps its first position and takes the later
        // timestamp: the behaviour of the ordered dict TF rebuilds.
        let mut managed: Vec<Managed> = Vec::new();
        let mut managed_positions: HashMap<PathBuf, usize> = HashMap::new();
        for checkpoint in listed.iter().cloned() {
            if checkpoint.timestamp <= last_preserved && !protected(&checkpoint.entry) {
                continue;
            }
            match managed_positions.get(&checkpoint.entry) {
                Some(&position) => managed[position].timestamp = checkpoint.timestamp,
                None => {
                    managed_positions.insert(checkpoint.entry.clone(), managed.len());
                    managed.push(checkpoint);
                }
            }
        }
        (
            Retention {
                managed,
                last_preserved,
            },
            clock_went_backwards,
        )
    }

    pub fn managed(&self) -> &[Managed] {
        &self.managed
    }

    pub fn last_preserved(&self) -> f64 {
        self.last_preserved
    }

    /// A new save: it becomes the newest, even when it was managed already
    /// (a checkpoint number saved again).
    pub fn record(&mut self, checkpoint: Managed) {
        // Entries are normalised: bytes compare as paths do, much faster.
        self.managed
            .retain(|known| known.entry.as_os_str() != checkpoint.entry.as_os_str());
        self.managed.push(checkpoint);
    }

    /// Sets a managed checkpoint's pin; false when `entry` is not managed.
    pub fn set_pinned(&mut self, entry: &Path, pinned: bool) -> bool {
        match self.managed.iter_mut().find(|known| known.entry == entry) {
            Some(known) => {
                known.traits.pinned = pinned;
                true
            }
            None => false,
        }
    }

    /// The best managed checkpoint by the metric; of equal values the newer.
    pub fn best(&self, mode: MetricMode) -> Option<&Managed> {
        best_first(&self.managed, mode)
            .first()
            .map(|&index| &self.managed[index])
    }

    /// Takes off the list every checkpoint no rule keeps (none when
    /// `max_to_keep` is `None`), oldest first. Each one is preserved when
    /// at least `keep_every_n_hours` have passed since the last preserved
    /// one, and is otherwise to be deleted.
    pub fn sweep(&mut self, rules: &Rules) -> SweepOutcome {
        self.sweep_holding(rules, &Hold::default())
    }

    /// `sweep`, keeping also what `hold` holds (checkpoints waiting for
    /// their upload to another tier) as long as the list stays within its
    /// limit; beyond it the oldest held ones go as the rules say, and are
    /// reported as `released`.
    pub fn sweep_holding(&mut self, rules: &Rules, hold: &Hold) -> SweepOutcome {
        let mut outcome = SweepOutcome::default();
        let Some(max_to_keep) = rules.max_to_keep else {
            return outcome;
        };
        let newest_from = self.managed.len().saturating_sub(max_to_keep);
        if newest_from == 0 {
            return outcome;
        }
        let mut kept = rules.keeps_beyond_recency(&self.managed);
        let mut held: Vec<bool> = self
            .managed
            .iter()
            .enumerate()
            .map(|(index, m)| index < newest_from && !kept[index] && hold.held.contains(&m.entry))
            .collect();
        if let Some(limit) = hold.limit {
            let count = |kept: &[bool], held: &[bool]| {
                (0..kept.len())
                    .filter(|&i| i >= newest_from || kept[i] || held[i])
                    .count()
            };
            let mut over = count(&kept, &held).saturating_sub(limit);
            for (is_held, checkpoint) in held.iter_mut().zip(&self.managed) {
                if over == 0 {
                    break;
                }
                if *is_held {
                    *is_held = false;
                    over -= 1;
                    outcome.released.push(checkpoint.entry.clone());
                }
            }
        }
        for (index, is_held) in held.into_iter().enumerate() {
            kept[index] |= is_held;
        }
        let mut remaining = Vec::with_capacity(self.managed.len());
        for (index, checkpoint) in std::mem::take(&mut self.managed).into_iter().enumerate() {
            if index >= newest_from || kept[index] {
                remaining.push(checkpoint);
                continue;
            }
            let preserve = rules
                .keep_every_n_hours
                .is_some_and(|hours| checkpoint.timestamp - hours * 3600.0 >= self.last_preserved);
            if preserve {
                self.last_preserved = checkpoint.timestamp;
                outcome.preserved.push(checkpoint.entry);
            } else {
                outcome.delete.push(checkpoint.entry);
            }
        }
        self.managed = remaining;
        outcome
    }
}

/// Checkpoints a sweep keeps beyond the rules (uploads not yet done), and
/// the most the list may then hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hold {
    pub held: HashSet<PathBuf>,
    pub limit: Option<usize>,
}

/// The order in which to try checkpoints when the latest may be damaged:
/// the latest, then the listed ones newest first, then the others
/// (preserved ones) in the order given; each once.
pub fn fallback_order(
    latest: &Path,
    listed_oldest_first: &[PathBuf],
    others: impl IntoIterator<Item = PathBuf>,
) -> Vec<PathBuf> {
    let mut order = vec![latest.to_path_buf()];
    let mut seen = HashSet::from([latest.to_path_buf()]);
    for candidate in listed_oldest_first.iter().rev().cloned().chain(others) {
        if seen.insert(candidate.clone()) {
            order.push(candidate);
        }
    }
    order
}

/// TF's interval gate: whether a save at `step` goes ahead, given the step
/// of the last checkpoint. The same step never saves twice, even when
/// `check_interval` is false.
pub fn interval_allows_save(
    interval: i64,
    last_step: Option<i64>,
    step: i64,
    check_interval: bool,
) -> bool {
    match last_step {
        None => true,
        Some(last) if step == last => false,
        Some(last) => !(check_interval && step < last.saturating_add(interval)),
    }
}

/// The clock's gate: whether a save at `now` goes ahead, given the time of
/// the last save. A clock that went back before that save lets it go
/// ahead: saving must not stop until the clock catches up.
pub fn time_allows_save(seconds: f64, last_save: Option<f64>, now: f64) -> bool {
    last_save.is_none_or(|last| now < last || now - last >= seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(entries: &[Managed]) -> Vec<&str> {
        entries.iter().map(|m| m.entry.to_str().unwrap()).collect()
    }

    fn plain(name: &str, timestamp: f64) -> Managed {
        Managed {
            entry: name.into(),
            timestamp,
            traits: Traits::default(),
        }
    }

    fn last(n: usize) -> Rules {
        Rules {
            max_to_keep: Some(n),
            ..Rules::default()
        }
    }

    #[test]
    fn sweep_deletes_oldest_beyond_max() {
        let mut retention = Retention::fresh(0.0);
        for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
            retention.record(plain(name, i as f64 + 1.0));
        }
        let outcome = retention.sweep(&last(3));
        assert_eq!(outcome.delete, vec![PathBuf::from("a")]);
        assert_eq!(names(retention.managed()), ["b", "c", "d"]);
        assert_eq!(retention.sweep(&Rules::default()), SweepOutcome::default());
    }

    #[test]
    fn held_checkpoints_stay_until_the_limit_releases_the_oldest() {
        let mut retention = Retention::fresh(0.0);
        for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
            retention.record(plain(name, i as f64 + 1.0));
        }
        let held = ["a", "b", "c"].iter().map(PathBuf::from).collect();
        let mut unbounded = retention.clone();
        let hold = Hold { held, limit: None };
        assert_eq!(
            unbounded.sweep_holding(&last(1), &hold),
            SweepOutcome::default()
        );
        assert_eq!(names(unbounded.managed()), ["a", "b", "c", "d"]);
        let outcome = retention.sweep_holding(
            &last(1),
            &Hold {
                limit: Some(3),
                ..hold
            },
        );
        assert_eq!(outcome.delete, [PathBuf::from("a")]);
        assert_eq!(outcome.released, [PathBuf::from("a")]);
        assert_eq!(names(retention.managed()), ["b", "c", "d"]);
    }

    #[test]
    fn sweep_preserves_one_every_n_hours() {
        let rules = Rules {
            keep_every_n_hours: Some(1.5),
            ..last(2)
        };
        let mut retention = Retention::fresh(3.0);
        retention.record(plain("1", 10000.0));
        retention.record(plain("2", 13610.0));
        retention.record(plain("3", 14330.0));
        let outcome = retention.sweep(&rules);
        assert_eq!(outcome.preserved, vec![PathBuf::from("1")]);
        assert_eq!(retention.last_preserved(), 10000.0);
        retention.record(plain("4", 16130.0));
        let outcome = retention.sweep(&rules);
        assert_eq!(outcome.delete, vec![PathBuf::from("2")]);
    }

    fn with(name: &str, number: u64, metric: Option<f64>, pinned: bool) -> Managed {
        Managed {
            entry: name.into(),
            timestamp: number as f64,
            traits: Traits {
                number: Some(number),
                metric,
                pinned,
            },
        }
    }

    #[test]
    fn rules_keep_a_union() {
        let rules = Rules {
            keep_best: Some((MetricMode::Min, 2)),
            keep_period: Some(4),
            ..last(1)
        };
        let mut retention = Retention::fresh(0.0);
        for checkpoint in [
            with("1", 1, Some(0.5), false),
            with("2", 2, None, true),
            with("3", 3, Some(f64::NAN), false),
            with("4", 4, None, false),
            with("5", 5, Some(0.2), false),
            with("6", 6, Some(0.5), false),
            with("7", 7, Some(0.9), false),
        ] {
            retention.record(checkpoint);
        }
        let outcome = retention.sweep(&rules);
        // Best two by min: 5 (0.2), then 6 over 1 (a tie keeps the newer).
        assert_eq!(names(retention.managed()), ["2", "4", "5", "6", "7"]);
        assert_eq!(outcome.delete, [PathBuf::from("1"), PathBuf::from("3")]);
        assert_eq!(
            retention.best(MetricMode::Min).unwrap().entry,
            Path::new("5")
        );
        assert_eq!(
            retention.best(MetricMode::Max).unwrap().entry,
            Path::new("7")
        );
        assert!(retention.set_pinned(Path::new("2"), false));
        assert!(!retention.set_pinned(Path::new("1"), true));
        retention.sweep(&rules);
        assert_eq!(names(retention.managed()), ["4", "5", "6", "7"]);
    }

    #[test]
    fn kept_by_itemises_what_the_sweep_keeps() {
        let rules = Rules {
            keep_best: Some((MetricMode::Max, 1)),
            keep_period: Some(2),
            ..last(1)
        };
        let checkpoints = [
            with("1", 1, Some(0.9), false),
            with("2", 2, None, false),
            with("3", 3, None, true),
            with("4", 4, Some(0.1), false),
            with("5", 5, None, false),
        ];
        let kept = rules.kept_by(&checkpoints);
        let plain = KeptBy::default();
        assert_eq!(
            kept,
            [
                KeptBy {
                    best: true,
                    ..plain
                },
                KeptBy {
                    period: true,
                    ..plain
                },
                KeptBy {
                    pinned: true,
                    ..plain
                },
                KeptBy {
                    period: true,
                    ..plain
                },
                KeptBy {
                    newest: true,
                    ..plain
                },
            ]
        );
        let mut retention = Retention::fresh(0.0);
        checkpoints
            .iter()
            .cloned()
            .for_each(|c| retention.record(c));
        assert!(retention.sweep(&rules).delete.is_empty());
        // Keep-all: every one is kept as one of the newest.
        let all = Rules::default().kept_by(&checkpoints);
        assert!(all.iter().all(|kept| kept.newest && !kept.best));
        // Nothing kept by any rule is what the sweep drops.
        let strict = last(2).kept_by(&checkpoints);
        let dropped: Vec<bool> = strict
            .iter()
            .map(|k| !k.newest && !k.beyond_recency())
            .collect();
        assert_eq!(dropped, [true, true, false, false, false]);
    }

    #[test]
    fn recover_keeps_what_the_rules_keep_behind_the_last_preserved() {
        let rules = Rules {
            keep_best: Some((MetricMode::Max, 1)),
            ..last(1)
        };
        let entries = vec![
            ("old".into(), Traits::default()),
            (
                "best".into(),
                Traits {
                    metric: Some(3.0),
                    ..Traits::default()
                },
            ),
            ("new".into(), Traits::default()),
        ];
        let (retention, _) = Retention::recover(entries, &[5.0, 6.0, 20.0], 10.0, 100.0, &rules);
        assert_eq!(names(retention.managed()), ["best", "new"]);
    }

    #[test]
    fn recover_applies_tf_rules() {
        let entries: Vec<(PathBuf, Traits)> = ["old", "new", "future"]
            .iter()
            .map(|name| (PathBuf::from(name), Traits::default()))
            .collect();
        let rules = Rules::default();
        let (retention, backwards) =
            Retention::recover(entries.clone(), &[5.0, 20.0, 500.0], 10.0, 100.0, &rules);
        assert!(!backwards);
        // "old" is not newer than the last preserved time; "future" is capped at now.
        assert_eq!(
            retention.managed(),
            &[plain("new", 20.0), plain("future", 100.0)]
        );

        let (retention, backwards) = Retention::recover(entries.clone(), &[], 10.0, 100.0, &rules);
        assert!(!backwards);
        assert!(retention.managed().is_empty());

        let (retention, backwards) =
            Retention::recover(entries, &[5.0, 20.0, 30.0], 50.0, 40.0, &rules);
        assert!(backwards);
        assert_eq!(retention.last_preserved(), 40.0);
        assert!(retention.managed().is_empty());
    }

    #[test]
    fn record_moves_a_resaved_entry_to_the_end() {
        let mut retention = Retention::fresh(0.0);
        retention.record(plain("a", 1.0));
        retention.record(plain("b", 2.0));
        retention.record(plain("a", 3.0));
        assert_eq!(names(retention.managed()), ["b", "a"]);
    }

    #[test]
    fn fallback_tries_latest_then_newest_first() {
        let paths = |names: &[&str]| names.iter().map(PathBuf::from).collect::<Vec<_>>();
        let order = fallback_order(
            Path::new("c"),
            &paths(&["a", "b", "c"]),
            paths(&["z", "b", "y"]),
        );
        assert_eq!(order, paths(&["c", "b", "a", "z", "y"]));
    }

    #[test]
    fn interval_gate_matches_tf() {
        assert!(interval_allows_save(2, None, 0, true));
        assert!(!interval_allows_save(2, Some(0), 1, true));
        assert!(interval_allows_save(2, Some(0), 2, true));
        assert!(!interval_allows_save(2, Some(2), 2, false));
        assert!(!interval_allows_save(2, Some(2), 3, true));
        assert!(interval_allows_save(2, Some(2), 3, false));
        assert!(!interval_allows_save(2, Some(i64::MAX), i64::MAX - 1, true));
    }

    #[test]
    fn time_gate_waits_for_the_interval() {
        assert!(time_allows_save(60.0, None, 5.0));
        assert!(!time_allows_save(60.0, Some(100.0), 159.5));
        assert!(time_allows_save(60.0, Some(100.0), 160.0));
        assert!(time_allows_save(60.0, Some(100.0), 50.0));
    }
}
