//! Background saves: the checkpoint holds the state at the call, becomes
//! the latest only at its commit, and a failure never becomes the latest,
//! leaves nothing behind and is returned once.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, ThreadId};
use std::time::Duration;

use ckpt_manager::{
    get_checkpoint_state, Callbacks, CheckpointManager, Config, DType, Error, MaxToKeep, SaveArgs,
};

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn listed(dir: &Path) -> Vec<String> {
    let state = get_checkpoint_state(dir).unwrap().unwrap();
    state
        .all_model_checkpoint_paths
        .iter()
        .map(|p| {
            let path = PathBuf::from(String::from_utf8(p.clone()).unwrap());
            path.file_name().unwrap().to_str().unwrap().to_owned()
        })
        .collect()
}

/// A manager saving one registered f32 tensor, `weights`.
fn tensor_manager(dir: &Path, weights: &mut [f32]) -> CheckpointManager {
    let config = Config::new(dir, MaxToKeep::Last(3)).unwrap();
    let mut manager = CheckpointManager::new(config, Callbacks::new()).unwrap();
    // SAFETY: each test keeps `weights` alive and untouched by other
    // threads while the manager lives.
    unsafe {
        manager
            .register_tensor(
                "weights",
                DType::F32,
                &[weights.len() as u64],
                weights.as_mut_ptr().cast(),
            )
            .unwrap();
    }
    manager
}

#[test]
fn the_checkpoint_holds_the_tensors_as_they_were_at_the_call() {
    let dir = tempfile::tempdir().unwrap();
    let mut weights = vec![1.0f32; 1 << 20];
    let mut manager = tensor_manager(dir.path(), &mut weights);
    let mut saved = Vec::new();
    for round in 0..4 {
        let prefix = manager.save_async(&SaveArgs::default()).unwrap().unwrap();
        saved.push((prefix, weights.clone()));
        // Training goes on at once, over the buffer being saved.
        weights.iter_mut().for_each(|w| *w += 1.0 + round as f32);
    }
    manager.wait_until_finished(None).unwrap();
    let (latest, _) = saved.last().unwrap();
    assert_eq!(manager.latest_checkpoint().as_ref(), Some(latest));
    drop(manager);
    for (prefix, expected) in &saved[1..] {
        let bytes = fs::read(format!("{}.safetensors", prefix.display())).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let tensor = file.tensor("weights").unwrap();
        let values: Vec<f32> = tensor
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(&values, expected, "{}", prefix.display());
    }
    assert_eq!(listed(dir.path()), ["ckpt-2", "ckpt-3", "ckpt-4"]);
}

/// Save callbacks that block until released, fail on request, and record
/// the thread each callback ran on.
#[derive(Clone, Default)]
struct Controls {
    release: Arc<Mutex<Option<mpsc::Receiver<()>>>>,
    fail: Arc<AtomicBool>,
    threads: Arc<Mutex<Vec<(&'static str, ThreadId)>>>,
    step: Arc<AtomicI64>,
}

impl Controls {
    /// The next save callback waits for the returned sender (at most a
    /// minute, so that a broken test fails instead of hanging).
    fn hold(&self) -> mpsc::Sender<()> {
        let (sender, receiver) = mpsc::channel();
        *self.release.lock().unwrap() = Some(receiver);
        sender
    }

    fn callbacks(&self) -> Callbacks {
        let (release, fail, threads) = (
            Arc::clone(&self.release),
            Arc::clone(&self.fail),
            Arc::clone(&self.threads),
        );
        let prepare_threads = Arc::clone(&self.threads);
        let step = Arc::clone(&self.step);
        Callbacks::new()
            .on_prepare(move |_| {
                prepare_threads
                    .lock()
                    .unwrap()
                    .push(("prepare", thread::current().id()));
                Ok(())
            })
            .on_save(move |prefix, number| {
                threads
                    .lock()
                    .unwrap()
                    .push(("save", thread::current().id()));
                if let Some(receiver) = release.lock().unwrap().take() {
                    receiver.recv_timeout(Duration::from_secs(60))?;
                }
                fs::write(prefix.with_extension("bin"), number.to_le_bytes())?;
                if fail.load(Ordering::SeqCst) {
                    return Err("the disk is full".into());
                }
                Ok(())
            })
            .step_counter(move || Ok(step.load(Ordering::SeqCst)))
    }

    fn open(&self, dir: &Path, interval: Option<i64>) -> CheckpointManager {
        let mut config = Config::new(dir, MaxToKeep::Last(2)).unwrap();
        config.set_checkpoint_interval(interval).unwrap();
        CheckpointManager::new(config, self.callbacks()).unwrap()
    }
}

#[test]
fn a_checkpoint_is_latest_only_at_its_commit_and_skips_never_wait() {
    let dir = tempfile::tempdir().unwrap();
    let controls = Controls::default();
    let mut manager = controls.open(dir.path(), Some(10));
    manager.save(None, true).unwrap().unwrap();
    let release = controls.hold();
    controls.step.store(10, Ordering::SeqCst);
    let prefix = manager.save_async(&SaveArgs::default()).unwrap().unwrap();
    assert!(prefix.ends_with("ckpt-2"));
    // In flight: not latest, not listed, not in the state file.
    manager.refresh();
    assert!(manager.latest_checkpoint().unwrap().ends_with("ckpt-1"));
    assert_eq!(manager.checkpoints().len(), 1);
    assert_eq!(listed(dir.path()), ["ckpt-1"]);
    assert!(matches!(
        manager.wait_until_finished(Some(Duration::from_millis(10))),
        Err(Error::Timeout)
    ));
    // Within the interval of the save in flight: skipped without waiting.
    controls.step.store(15, Ordering::SeqCst);
    assert_eq!(manager.save_async(&SaveArgs::default()).unwrap(), None);
    assert!(!manager.should_save().unwrap());
    release.send(()).unwrap();
    manager.wait_until_finished(None).unwrap();
    assert_eq!(manager.latest_checkpoint(), Some(prefix));
    assert_eq!(listed(dir.path()), ["ckpt-1", "ckpt-2"]);

    let threads = controls.threads.lock().unwrap().clone();
    let caller = thread::current().id();
    let on = |name| {
        threads
            .iter()
            .filter(move |(n, _)| *n == name)
            .map(|(_, t)| *t)
    };
    assert!(on("prepare").all(|t| t == caller), "{threads:?}");
    // The blocking save's callback ran here; the background one did not.
    assert_eq!(
        on("save").filter(|t| *t != caller).count(),
        1,
        "{threads:?}"
    );
}

#[test]
fn a_failed_background_save_never_becomes_latest_and_is_returned_once() {
    let dir = tempfile::tempdir().unwrap();
    let controls = Controls::default();
    let mut manager = controls.open(dir.path(), None);
    manager.save(None, true).unwrap().unwrap();
    let before = fs::read(dir.path().join("checkpoint")).unwrap();
    controls.fail.store(true, Ordering::SeqCst);
    manager.save_async(&SaveArgs::default()).unwrap().unwrap();
    // Whichever call comes next returns the failure, and does nothing else.
    let next = manager.save_async(&SaveArgs::default());
    let next = match next {
        // It may still have been in flight: the save waited for it.
        Err(err) => err,
        Ok(_) => panic!("the failure was not returned"),
    };
    assert!(
        matches!(
            &next,
            Error::Callback {
                callback: "save",
                ..
            }
        ),
        "{next}"
    );
    assert_eq!(fs::read(dir.path().join("checkpoint")).unwrap(), before);
    assert_eq!(
        names(dir.path()),
        [
            "checkpoint",
            "checkpoint.ckpt-spare",
            "checkpoint.lock",
            "ckpt-1.bin",
            "ckpt-1.ckpt-manifest.json"
        ]
    );
    assert!(manager.latest_checkpoint().unwrap().ends_with("ckpt-1"));
    // Once: the next wait has nothing to report, and the number is reused.
    manager.wait_until_finished(None).unwrap();
    controls.fail.store(false, Ordering::SeqCst);
    let prefix = manager.save_async(&SaveArgs::default()).unwrap().unwrap();
    assert!(prefix.ends_with("ckpt-2"), "{}", prefix.display());
    manager.wait_until_finished(None).unwrap();
    assert_eq!(listed(dir.path()), ["ckpt-1", "ckpt-2"]);
}

#[test]
fn dropping_the_manager_waits_for_the_save_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let controls = Controls::default();
    let mut manager = controls.open(dir.path(), None);
    let release = controls.hold();
    let prefix = manager.save_async(&SaveArgs::default()).unwrap().unwrap();
    let releaser = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        release.send(()).unwrap();
    });
    drop(manager);
    releaser.join().unwrap();
    assert_eq!(listed(dir.path()), ["ckpt-1"]);
    // The lock was held until the commit: a new writer opens only now.
    let manager = controls.open(dir.path(), None);
    assert_eq!(manager.latest_checkpoint(), Some(prefix));
}

#[test]
fn a_restore_waits_for_the_save_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let mut weights = vec![3.0f32; 1024];
    let mut manager = tensor_manager(dir.path(), &mut weights);
    manager.save_async(&SaveArgs::default()).unwrap().unwrap();
    weights.iter_mut().for_each(|w| *w = -1.0);
    let restored = manager.restore_or_initialize().unwrap().unwrap();
    assert!(restored.ends_with("ckpt-1"));
    drop(manager);
    assert!(weights.iter().all(|&w| w == 3.0));
}
