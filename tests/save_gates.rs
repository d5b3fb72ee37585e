//! When a save goes ahead (the clock interval, the step interval, requests)
//! and what it records beside the checkpoint (step, metrics, metadata),
//! read back from the manifest on disk and after a restart.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use ckpt_manager::{
    Callbacks, CheckpointManager, Config, Error, KeepBest, MaxToKeep, MetricMode, SaveArgs,
};
use serde_json::{json, Value};

/// A fake clock and step counter the test moves; `now` in quarter seconds.
#[derive(Clone, Default)]
struct Time {
    quarters: Arc<AtomicI64>,
    step: Arc<AtomicI64>,
}

impl Time {
    fn set(&self, seconds: f64, step: i64) {
        self.quarters
            .store((seconds * 4.0) as i64, Ordering::SeqCst);
        self.step.store(step, Ordering::SeqCst);
    }

    fn callbacks(&self) -> Callbacks {
        let (quarters, step) = (Arc::clone(&self.quarters), Arc::clone(&self.step));
        Callbacks::new()
            .on_save(|prefix, _| Ok(fs::write(prefix.with_extension("bin"), b"weights")?))
            .clock(move || quarters.load(Ordering::SeqCst) as f64 / 4.0)
            .step_counter(move || Ok(step.load(Ordering::SeqCst)))
    }
}

fn open(dir: &Path, time: &Time, configure: impl Fn(&mut Config)) -> CheckpointManager {
    let mut config = Config::new(dir, MaxToKeep::Last(10)).unwrap();
    configure(&mut config);
    CheckpointManager::new(config, time.callbacks()).unwrap()
}

fn every_minute(config: &mut Config) {
    config.set_save_interval_seconds(Some(60.0)).unwrap();
}

/// Saves at each (seconds, step); returns which went ahead, and checks
/// that `should_save` predicted each.
fn saves_at(manager: &mut CheckpointManager, time: &Time, points: &[(f64, i64)]) -> Vec<bool> {
    points
        .iter()
        .map(|&(seconds, step)| {
            time.set(seconds, step);
            let predicted = manager.should_save().unwrap();
            let saved = manager.save(None, true).unwrap().is_some();
            assert_eq!(predicted, saved, "should_save at {seconds} s, step {step}");
            saved
        })
        .collect()
}

fn manifest(prefix: &Path) -> Value {
    let mut name = prefix.as_os_str().to_owned();
    name.push(".ckpt-manifest.json");
    serde_json::from_slice(&fs::read(PathBuf::from(name)).unwrap()).unwrap()
}

#[test]
fn the_clock_interval_spaces_saves_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let time = Time::default();
    let mut manager = open(dir.path(), &time, every_minute);
    let points = [(0.0, 0), (30.0, 1), (59.75, 2), (60.0, 3), (100.0, 4)];
    assert_eq!(
        saves_at(&mut manager, &time, &points),
        [true, false, false, true, false]
    );
    // Unchecked, the interval does not apply.
    time.set(110.0, 5);
    assert!(manager.save(None, false).unwrap().is_some());
    drop(manager);
    // The last save's time comes back from the state file.
    let mut manager = open(dir.path(), &time, every_minute);
    let points = [(150.0, 6), (170.0, 7)];
    assert_eq!(saves_at(&mut manager, &time, &points), [false, true]);
    // A clock that went back before the last save does not stop saving.
    assert_eq!(saves_at(&mut manager, &time, &[(20.0, 8)]), [true]);
}

#[test]
fn with_a_step_interval_too_both_must_have_passed() {
    let dir = tempfile::tempdir().unwrap();
    let time = Time::default();
    let mut manager = open(dir.path(), &time, |config| {
        every_minute(config);
        config.set_checkpoint_interval(Some(10)).unwrap();
    });
    let points = [(0.0, 0), (120.0, 5), (130.0, 10), (140.0, 30), (200.0, 31)];
    assert_eq!(
        saves_at(&mut manager, &time, &points),
        [true, false, true, false, true]
    );
}

#[test]
fn a_request_saves_once_whatever_the_intervals_say() {
    let dir = tempfile::tempdir().unwrap();
    let time = Time::default();
    let mut manager = open(dir.path(), &time, |config| {
        every_minute(config);
        config.set_checkpoint_interval(Some(100)).unwrap();
    });
    assert_eq!(saves_at(&mut manager, &time, &[(0.0, 0)]), [true]);
    manager.request_save();
    assert_eq!(
        saves_at(&mut manager, &time, &[(1.0, 1), (2.0, 2)]),
        [true, false]
    );
    // Never twice at one step: the request is spent on the skipped save.
    manager.request_save();
    assert_eq!(
        saves_at(&mut manager, &time, &[(3.0, 1), (4.0, 3)]),
        [false, false]
    );
    // A request stands until a save goes through.
    manager.request_save();
    let flag = manager.save_request_flag();
    assert!(flag.load(Ordering::SeqCst));
    assert_eq!(saves_at(&mut manager, &time, &[(5.0, 4)]), [true]);
    assert!(!flag.load(Ordering::SeqCst));
}

#[test]
fn a_failed_save_keeps_the_request() {
    let dir = tempfile::tempdir().unwrap();
    let time = Time::default();
    let config = Config::new(dir.path(), MaxToKeep::Last(3)).unwrap();
    let fail = Arc::new(AtomicI64::new(0));
    let failing = Arc::clone(&fail);
    let quarters = Arc::clone(&time.quarters);
    let callbacks = Callbacks::new()
        .on_save(move |prefix, _| {
            if failing.load(Ordering::SeqCst) == 1 {
                return Err("disk full".into());
            }
            Ok(fs::write(prefix.with_extension("bin"), b"w")?)
        })
        .clock(move || quarters.load(Ordering::SeqCst) as f64 / 4.0);
    let mut config = config;
    every_minute(&mut config);
    let mut manager = CheckpointManager::new(config, callbacks).unwrap();
    manager.save(None, true).unwrap().unwrap();
    manager.request_save();
    fail.store(1, Ordering::SeqCst);
    assert!(matches!(
        manager.save(None, true),
        Err(Error::Callback { .. })
    ));
    fail.store(0, Ordering::SeqCst);
    assert!(manager.save(None, true).unwrap().is_some());
}

#[test]
fn a_save_records_step_metrics_and_metadata_in_its_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let time = Time::default();
    let mut manager = open(dir.path(), &time, |_| {});
    time.set(8.0, 1200);
    let mut args = SaveArgs::default();
    args.set_metric("loss", 0.25).unwrap();
    args.set_metric("accuracy", f64::NAN).unwrap();
    args.set_metric("perplexity", f64::INFINITY).unwrap();
    args.set_metric("loss", 0.125).unwrap();
    args.set_metadata_json(r#"{"run": "a", "lr": 0.001, "tags": [1, 2]}"#)
        .unwrap();
    let prefix = manager.save_with(&args).unwrap().unwrap();
    let on_disk = manifest(&prefix);
    assert_eq!(on_disk["step"], json!(1200));
    assert_eq!(
        on_disk["metrics"],
        json!({"loss": 0.125, "accuracy": "NaN", "perplexity": "Infinity"})
    );
    assert_eq!(
        on_disk["metadata"],
        json!({"run": "a", "lr": 0.001, "tags": [1, 2]})
    );
    assert!(on_disk.get("pinned").is_none());
    drop(manager);

    let manager = open(dir.path(), &time, |_| {});
    let info = serde_json::to_value(manager.checkpoint_info(&prefix).unwrap()).unwrap();
    assert_eq!(info["number"], json!(1));
    assert_eq!(info["step"], json!(1200));
    assert_eq!(info["timestamp"], json!(8.0));
    assert_eq!(info["metrics"], on_disk["metrics"]);
    assert_eq!(info["metadata"], on_disk["metadata"]);
    assert_eq!(info["latest"], json!(true));
    assert_eq!(info["managed"], json!(true));
    assert_eq!(info["has_manifest"], json!(true));
    assert_eq!(info["files"], json!([{"suffix": ".bin", "size": 7}]));
    assert_eq!(info["total_size"], json!(7));
}

#[test]
fn bad_save_arguments_are_refused_and_change_nothing() {
    let mut args = SaveArgs::default();
    args.set_metric("loss", 1.0).unwrap();
    args.set_metadata_json(r#"{"kept": true}"#).unwrap();
    let before = format!("{args:?}");
    for bad in ["", "[1, 2]", "3", "{\"a\": ", "{\"a\": NaN}", "null"] {
        assert!(
            matches!(args.set_metadata_json(bad), Err(Error::InvalidArgument(_))),
            "{bad:?}"
        );
    }
    let huge = format!("{{\"a\": \"{}\"}}", "x".repeat(1 << 20));
    assert!(args.set_metadata_json(&huge).is_err());
    assert!(args.set_metric("", 1.0).is_err());
    assert!(args.set_metric(&"m".repeat(257), 1.0).is_err());
    assert_eq!(format!("{args:?}"), before);

    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path(), MaxToKeep::Last(1)).unwrap();
    let best = |k| {
        Some(KeepBest {
            metric: "loss".into(),
            mode: MetricMode::Min,
            k,
        })
    };
    assert!(config.set_keep_best(best(0)).is_err());
    assert!(config.set_keep_period(Some(0)).is_err());
    for seconds in [f64::NAN, f64::INFINITY, -1.0, 0.0] {
        assert!(config.set_save_interval_seconds(Some(seconds)).is_err());
    }
    let manager = CheckpointManager::new(config, Callbacks::new()).unwrap();
    assert!(matches!(
        manager.best_checkpoint(),
        Err(Error::InvalidArgument(_))
    ));
}

/// A manifest of version 0.2 (no step, metrics, metadata or pin) is read;
/// fields a newer library adds survive a pin, which rewrites the manifest.
#[test]
fn manifests_are_read_across_versions_and_unknown_fields_survive_a_pin() {
    let dir = tempfile::tempdir().unwrap();
    let time = Time::default();
    let mut manager = open(dir.path(), &time, |_| {});
    let prefix = manager.save(None, true).unwrap().unwrap();
    drop(manager);
    let mut name = prefix.as_os_str().to_owned();
    name.push(".ckpt-manifest.json");
    let mut on_disk = manifest(&prefix);
    let object = on_disk.as_object_mut().unwrap();
    object.remove("step");
    object.insert("from_the_future".into(), json!({"shards": [1, 2]}));
    fs::write(&name, serde_json::to_vec(&on_disk).unwrap()).unwrap();

    let mut manager = open(dir.path(), &time, |_| {});
    assert_eq!(
        manager
            .verify(Some(&prefix), ckpt_manager::Verification::Checksums)
            .unwrap(),
        ckpt_manager::Integrity::Intact
    );
    manager.set_pinned(&prefix, true).unwrap();
    let rewritten = manifest(&prefix);
    assert_eq!(rewritten["from_the_future"], json!({"shards": [1, 2]}));
    assert_eq!(rewritten["pinned"], json!(true));
    assert_eq!(rewritten["files"], on_disk["files"]);
    assert_eq!(rewritten["saved_at"], on_disk["saved_at"]);
}
