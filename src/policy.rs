//! TF's retention and interval rules, pure: no clock, no files.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// The managed checkpoints (oldest first, each with its save timestamp) and
/// the timestamp of the last checkpoint preserved by
/// `keep_checkpoint_every_n_hours`.
#[derive(Debug, Clone, PartialEq)]
pub struct Retention {
    managed: Vec<(PathBuf, f64)>,
    last_preserved: f64,
}

/// What a sweep decided for the checkpoints it took off the managed list.
#[derive(Debug, Default, PartialEq)]
pub struct SweepOutcome {
    pub delete: Vec<PathBuf>,
    pub preserved: Vec<PathBuf>,
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

    /// Rebuilds the managed set from a state file's entries at time `now`.
    /// Returns the retention and whether the clock went backwards (`now` is
    /// before the last preserved timestamp), which callers warn about.
    ///
    /// Entries with no timestamp get the last preserved time, so they are
    /// not managed: TF never deletes checkpoints it has no time for. Pairs
    /// beyond the shorter list are dropped, as Python's `zip` does.
    pub fn recover(
        entries: Vec<PathBuf>,
        timestamps: &[f64],
        last_preserved: f64,
        now: f64,
    ) -> (Self, bool) {
        let clock_went_backwards = now < last_preserved;
        let last_preserved = if clock_went_backwards {
            now
        } else {
            last_preserved
        };
        let mut retention = Retention {
            managed: Vec::new(),
            last_preserved,
        };
        let mut positions: HashMap<PathBuf, usize> = HashMap::new();
        let missing = timestamps.is_empty();
        for (index, entry) in entries.into_iter().enumerate() {
            let timestamp = if missing {
                last_preserved
            } else {
                match timestamps.get(index) {
                    Some(&timestamp) => timestamp,
                    None => break,
                }
            };
            let timestamp = timestamp.min(now);
            if timestamp <= last_preserved {
                continue;
            }
            // A repeated entry keeps its first position and takes the later
            // timestamp: the behaviour of the ordered dict TF rebuilds.
            match positions.get(&entry) {
                Some(&position) => retention.managed[position].1 = timestamp,
                None => {
                    positions.insert(entry.clone(), retention.managed.len());
                    retention.managed.push((entry, timestamp));
                }
            }
        }
        (retention, clock_went_backwards)
    }

    pub fn managed(&self) -> &[(PathBuf, f64)] {
        &self.managed
    }

    pub fn last_preserved(&self) -> f64 {
        self.last_preserved
    }

    /// A new save of `entry`: it becomes the newest, even when it was
    /// managed already (a checkpoint number saved again).
    pub fn record(&mut self, entry: PathBuf, timestamp: f64) {
        // Entries are normalised: bytes compare as paths do, much faster.
        self.managed
            .retain(|(path, _)| path.as_os_str() != entry.as_os_str());
        self.managed.push((entry, timestamp));
    }

    /// Takes the oldest checkpoints off the list until at most `max_to_keep`
    /// remain (`None` keeps everything). Each one is preserved when at least
    /// `keep_every_n_hours` have passed since the last preserved one, and is
    /// otherwise to be deleted.
    pub fn sweep(
        &mut self,
        max_to_keep: Option<usize>,
        keep_every_n_hours: Option<f64>,
    ) -> SweepOutcome {
        let mut outcome = SweepOutcome::default();
        let Some(max_to_keep) = max_to_keep else {
            return outcome;
        };
        let excess = self.managed.len().saturating_sub(max_to_keep);
        for (entry, timestamp) in self.managed.drain(..excess) {
            let preserve = keep_every_n_hours
                .is_some_and(|hours| timestamp - hours * 3600.0 >= self.last_preserved);
            if preserve {
                self.last_preserved = timestamp;
                outcome.preserved.push(entry);
            } else {
                outcome.delete.push(entry);
            }
        }
        outcome
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn names(entries: &[(PathBuf, f64)]) -> Vec<&str> {
        entries.iter().map(|(p, _)| p.to_str().unwrap()).collect()
    }

    #[test]
    fn sweep_deletes_oldest_beyond_max() {
        let mut retention = Retention::fresh(0.0);
        for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
            retention.record(PathBuf::from(name), i as f64 + 1.0);
        }
        let outcome = retention.sweep(Some(3), None);
        assert_eq!(outcome.delete, vec![PathBuf::from("a")]);
        assert_eq!(names(retention.managed()), ["b", "c", "d"]);
        assert_eq!(retention.sweep(None, None), SweepOutcome::default());
    }

    #[test]
    fn sweep_preserves_one_every_n_hours() {
        let mut retention = Retention::fresh(3.0);
        retention.record("1".into(), 10000.0);
        retention.record("2".into(), 13610.0);
        retention.record("3".into(), 14330.0);
        let outcome = retention.sweep(Some(2), Some(1.5));
        assert_eq!(outcome.preserved, vec![PathBuf::from("1")]);
        assert_eq!(retention.last_preserved(), 10000.0);
        retention.record("4".into(), 16130.0);
        let outcome = retention.sweep(Some(2), Some(1.5));
        assert_eq!(outcome.delete, vec![PathBuf::from("2")]);
    }

    #[test]
    fn recover_applies_tf_rules() {
        let entries = vec!["old".into(), "new".into(), "future".into()];
        let (retention, backwards) =
            Retention::recover(entries.clone(), &[5.0, 20.0, 500.0], 10.0, 100.0);
        assert!(!backwards);
        // "old" is not newer than the last preserved time; "future" is capped at now.
        assert_eq!(
            retention.managed(),
            &[("new".into(), 20.0), ("future".into(), 100.0)]
        );

        let (retention, backwards) = Retention::recover(entries.clone(), &[], 10.0, 100.0);
        assert!(!backwards);
        assert!(retention.managed().is_empty());

        let (retention, backwards) = Retention::recover(entries, &[5.0, 20.0, 30.0], 50.0, 40.0);
        assert!(backwards);
        assert_eq!(retention.last_preserved(), 40.0);
        assert!(retention.managed().is_empty());
    }

    #[test]
    fn record_moves_a_resaved_entry_to_the_end() {
        let mut retention = Retention::fresh(0.0);
        retention.record("a".into(), 1.0);
        retention.record("b".into(), 2.0);
        retention.record("a".into(), 3.0);
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
}
