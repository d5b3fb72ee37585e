//! Two tiers on local directories (the remote a second path): saves commit
//! locally and are copied to the remote, which alone is a valid checkpoint
//! directory with its own retention; restores take the newer tier;
//! uploads that cannot run wait, durably listed, and resume.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ckpt_manager::state::CheckpointState;
use ckpt_manager::{Callbacks, CheckpointManager, Config, DType, Error, MaxToKeep};

fn value(number: u64, i: usize) -> f32 {
    (number * 1000 + i as u64) as f32
}

/// A manager saving one registered tensor, `weights`, which holds the
/// values of the checkpoint number it was last set for.
struct Trainer {
    manager: CheckpointManager,
    weights: Box<[f32]>,
    warnings: Arc<Mutex<Vec<String>>>,
}

impl Trainer {
    fn open(config: Config) -> Result<Trainer, Error> {
        let warnings = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&warnings);
        let callbacks = Callbacks::new().log(move |_, message| {
            log.lock().unwrap().push(message.to_owned());
        });
        let mut manager = CheckpointManager::new(config, callbacks)?;
        let mut weights = vec![0.0f32; 4096].into_boxed_slice();
        // SAFETY: the boxed slice lives as long as the manager, in the
        // same struct, and is only touched between calls.
        unsafe {
            manager.register_tensor(
                "weights",
                DType::F32,
                &[weights.len() as u64],
                weights.as_mut_ptr().cast(),
            )?;
        }
        Ok(Trainer {
            manager,
            weights,
            warnings,
        })
    }

    fn save(&mut self, number: u64) {
        let weights = self.weights.iter_mut().enumerate();
        weights.for_each(|(i, w)| *w = value(number, i));
        self.manager.save(Some(number), false).unwrap().unwrap();
    }

    /// Restores and checks the weights; the number restored.
    fn restore(&mut self) -> Option<u64> {
        self.weights.iter_mut().for_each(|w| *w = -1.0);
        let restored = self.manager.restore_or_initialize().unwrap()?;
        let number = ckpt_manager::paths::trailing_number(&restored).unwrap();
        let weights = self.weights.iter().enumerate();
        assert!(
            weights.into_iter().all(|(i, &w)| w == value(number, i)),
            "the weights are not checkpoint {number}'s"
        );
        Some(number)
    }
}

fn config(local: &Path, remote: &Path, local_keep: usize, remote_keep: usize) -> Config {
    let mut config = Config::new(local, MaxToKeep::Last(local_keep)).unwrap();
    config
        .set_remote_directory(Some(remote.to_path_buf()))
        .unwrap();
    config
        .set_remote_max_to_keep(MaxToKeep::Last(remote_keep))
        .unwrap();
    config
}

fn state(dir: &Path) -> CheckpointState {
    CheckpointState::parse(&fs::read(dir.join("checkpoint")).unwrap()).unwrap()
}

fn listed(dir: &Path) -> Vec<String> {
    let names = state(dir).all_model_checkpoint_paths.into_iter();
    names.map(|p| String::from_utf8(p).unwrap()).collect()
}

/// The checkpoints whose manifest is in `dir`.
fn on_disk(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|entry| {
            let name = entry.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".ckpt-manifest.json").map(str::to_owned)
        })
        .collect();
    names.sort_by_key(|name| ckpt_manager::paths::trailing_number(Path::new(name)));
    names
}

fn names(numbers: impl IntoIterator<Item = u64>) -> Vec<String> {
    numbers.into_iter().map(|n| format!("ckpt-{n}")).collect()
}

/// The state file TF would write listing `kept` with the times the local
/// state file gave them: what the remote's must be.
fn expected_state(times: &[(String, f64)], kept: &[String], last_preserved: f64) -> Vec<u8> {
    let time = |name: &String| times.iter().find(|(n, _)| n == name).unwrap().1;
    CheckpointState {
        model_checkpoint_path: kept.last().unwrap().as_bytes().to_vec(),
        all_model_checkpoint_paths: kept.iter().map(|n| n.as_bytes().to_vec()).collect(),
        all_model_checkpoint_timestamps: kept.iter().map(time).collect(),
        last_preserved_timestamp: last_preserved,
    }
    .to_text()
}

/// Per-tier retention both ways round: each tier keeps its own last N,
/// the remote's state file is the one TF would write for its kept set with
/// the local save times, and each directory alone restores its newest.
#[test]
fn each_tier_keeps_its_own_and_the_remote_alone_is_a_valid_directory() {
    for (local_keep, remote_keep) in [(2usize, 5usize), (5, 2)] {
        let (local, remote) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut trainer =
            Trainer::open(config(local.path(), remote.path(), local_keep, remote_keep)).unwrap();
        let mut times = Vec::new();
        for number in 1..=7 {
            trainer.save(number);
            let local_state = state(local.path());
            let newest = local_state.all_model_checkpoint_timestamps.last().unwrap();
            times.push((format!("ckpt-{number}"), *newest));
        }
        trainer.manager.wait_until_finished(None).unwrap();
        let status = trainer.manager.remote_status().unwrap();
        assert_eq!(
            (status.newest_uploaded, status.pending, status.last_error),
            (Some(7), 0, None)
        );
        drop(trainer);
        let local_kept = names(8 - local_keep as u64..=7);
        let remote_kept = names(8 - remote_keep as u64..=7);
        assert_eq!(listed(local.path()), local_kept);
        assert_eq!(on_disk(local.path()), local_kept);
        assert_eq!(listed(remote.path()), remote_kept);
        assert_eq!(on_disk(remote.path()), remote_kept);
        let remote_state = state(remote.path());
        assert_eq!(
            fs::read(remote.path().join("checkpoint")).unwrap(),
            expected_state(&times, &remote_kept, remote_state.last_preserved_timestamp)
        );
        // The copy lists the same tensors as the original (so a restore from
        // the remote reads only the boxes it needs, onto any number of ranks).
        let tensors_of = |dir: &Path| {
            let manifest = fs::read(dir.join("ckpt-7.ckpt-manifest.json")).unwrap();
            serde_json::from_slice::<serde_json::Value>(&manifest).unwrap()["tensors"].clone()
        };
        assert!(tensors_of(local.path()).is_array());
        assert_eq!(tensors_of(remote.path()), tensors_of(local.path()));
        // The remote alone, opened as an ordinary directory.
        let alone = Config::new(remote.path(), MaxToKeep::Last(remote_keep)).unwrap();
        let mut reader = Trainer::open(alone).unwrap();
        for prefix in reader.manager.checkpoints() {
            reader
                .manager
                .verify(Some(&prefix), ckpt_manager::Verification::Checksums)
                .unwrap();
        }
        assert_eq!(reader.restore(), Some(7));
    }
}

/// The local directory lost: the restore downloads the remote's newest
/// into it (the next restart is local) and uploads nothing back. The
/// remote is named by a `file://` URL.
#[test]
fn a_lost_local_directory_is_restored_from_the_remote() {
    let (local, remote_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let remote = remote_dir.path();
    let url = PathBuf::from(format!("file://{}", remote.display()));
    let config = |local: &Path, _: &Path, l, r| config(local, &url, l, r);
    let mut trainer = Trainer::open(config(local.path(), remote, 2, 3)).unwrap();
    for number in 1..=3 {
        trainer.save(number);
    }
    trainer.manager.wait_until_finished(None).unwrap();
    drop(trainer);
    fs::remove_dir_all(local.path()).unwrap();
    let mut trainer = Trainer::open(config(local.path(), remote, 2, 3)).unwrap();
    assert_eq!(trainer.restore(), Some(3));
    assert_eq!(listed(local.path()), names([3]));
    assert_eq!(trainer.manager.remote_status().unwrap().pending, 0);
    trainer.save(4);
    trainer.manager.wait_until_finished(None).unwrap();
    drop(trainer);
    assert_eq!(listed(remote), names(2..=4));
    // Restarted: restored locally.
    let mut trainer = Trainer::open(config(local.path(), remote, 2, 3)).unwrap();
    assert_eq!(trainer.restore(), Some(4));
}

/// Of a local and a remote tier, the restore takes the newer: the remote
/// when a stale copy of the local directory is opened, the local one when
/// it saved while the remote was not configured (and that save is then
/// uploaded, found newer than the remote's newest).
#[test]
fn the_restore_takes_the_newer_tier() {
    let (local, remote) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let stale = tempfile::tempdir().unwrap();
    let mut trainer = Trainer::open(config(local.path(), remote.path(), 5, 5)).unwrap();
    trainer.save(1);
    trainer.save(2);
    trainer.manager.wait_until_finished(None).unwrap();
    drop(trainer);
    copy_directory(local.path(), stale.path());
    let mut trainer = Trainer::open(config(local.path(), remote.path(), 5, 5)).unwrap();
    trainer.save(3);
    trainer.save(4);
    trainer.manager.wait_until_finished(None).unwrap();
    drop(trainer);

    let mut from_stale = Trainer::open(config(stale.path(), remote.path(), 5, 5)).unwrap();
    assert_eq!(from_stale.restore(), Some(4));
    assert_eq!(listed(stale.path()), names([1, 2, 4]));
    drop(from_stale);

    let mut local_only =
        Trainer::open(Config::new(local.path(), MaxToKeep::Last(5)).unwrap()).unwrap();
    local_only.save(5);
    drop(local_only);
    let mut trainer = Trainer::open(config(local.path(), remote.path(), 5, 5)).unwrap();
    assert_eq!(trainer.restore(), Some(5));
    trainer.manager.wait_until_finished(None).unwrap();
    assert_eq!(listed(remote.path()), names(1..=5));
}

/// A local latest checkpoint that is not whole (a file cut short) is
/// replaced by the remote's copy of it at the restore.
#[test]
fn a_damaged_local_latest_is_replaced_from_the_remote() {
    let (local, remote) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut trainer = Trainer::open(config(local.path(), remote.path(), 3, 3)).unwrap();
    trainer.save(1);
    trainer.save(2);
    trainer.manager.wait_until_finished(None).unwrap();
    drop(trainer);
    let tensors = local.path().join("ckpt-2.safetensors");
    let bytes = fs::read(&tensors).unwrap();
    fs::write(&tensors, &bytes[..bytes.len() / 2]).unwrap();
    let mut trainer = Trainer::open(config(local.path(), remote.path(), 3, 3)).unwrap();
    assert_eq!(trainer.restore(), Some(2));
    assert_eq!(fs::read(&tensors).unwrap(), bytes);
    let warnings = trainer.warnings.lock().unwrap().clone();
    assert!(
        warnings.iter().any(|w| w.contains("not whole")),
        "{warnings:?}"
    );
}

fn copy_directory(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// The remote status once an attempt has failed (waiting a minute at most:
/// the upload thread may not have run yet on a loaded machine).
fn after_a_failure(manager: &mut CheckpointManager) -> ckpt_manager::RemoteStatus {
    for _ in 0..600 {
        let status = manager.remote_status().unwrap();
        if status.failures >= 1 {
            return status;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no upload failed: {:?}", manager.remote_status());
}

/// A remote path under a regular file: nothing can be written there
/// until the file goes.
fn blocked_remote() -> (tempfile::TempDir, PathBuf) {
    let parent = tempfile::tempdir().unwrap();
    fs::write(parent.path().join("blocked"), b"").unwrap();
    let remote = parent.path().join("blocked").join("remote");
    (parent, remote)
}

fn unblock(remote: &Path) {
    fs::remove_file(remote.parent().unwrap()).unwrap();
}

/// A remote that cannot be written: saves still commit locally, the local
/// tier holds what waits for its upload beyond its max_to_keep, the status
/// reports the failure and what waits, `wait_until_finished` times out,
/// and the list beside the state file makes the next open resume.
#[test]
fn uploads_that_fail_wait_durably_and_resume_at_the_next_open() {
    let local = tempfile::tempdir().unwrap();
    let (_parent, remote) = blocked_remote();
    let mut trainer = Trainer::open(config(local.path(), &remote, 1, 5)).unwrap();
    for number in 1..=3 {
        trainer.save(number);
    }
    assert_eq!(on_disk(local.path()), names(1..=3));
    assert!(matches!(
        trainer
            .manager
            .wait_until_finished(Some(Duration::from_millis(300))),
        Err(Error::Timeout)
    ));
    let status = after_a_failure(&mut trainer.manager);
    assert_eq!((status.newest_uploaded, status.pending), (None, 3));
    assert!(status.last_error.unwrap().contains("remote"));
    assert!(trainer
        .warnings
        .lock()
        .unwrap()
        .iter()
        .any(|w| w.contains("retrying")));
    drop(trainer);
    let list = ckpt_manager::upload_list(local.path()).unwrap().unwrap();
    assert_eq!(list.remote(), remote);
    let pending: Vec<String> = list
        .pending()
        .map(|p| p.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(pending, names(1..=3));

    unblock(&remote);
    let mut trainer = Trainer::open(config(local.path(), &remote, 1, 5)).unwrap();
    trainer.manager.wait_until_finished(None).unwrap();
    assert_eq!(listed(&remote), names(1..=3));
    // The local tier is back to its own rule once nothing waits.
    assert_eq!(on_disk(local.path()), names([3]));
    drop(trainer);
    let list = ckpt_manager::upload_list(local.path()).unwrap().unwrap();
    assert_eq!(list.pending().count(), 0);
}

/// A bound on what the local tier holds for uploads: past it the oldest
/// waiting checkpoint is deleted unuploaded, with a warning and a count.
#[test]
fn the_local_bound_drops_the_oldest_waiting_upload_with_a_warning() {
    let local = tempfile::tempdir().unwrap();
    let (_parent, remote) = blocked_remote();
    let mut config = config(local.path(), &remote, 1, 5);
    config.set_local_max_held_for_upload(Some(2)).unwrap();
    let mut trainer = Trainer::open(config.clone()).unwrap();
    for number in 1..=4 {
        trainer.save(number);
    }
    assert_eq!(on_disk(local.path()), names([3, 4]));
    let status = trainer.manager.remote_status().unwrap();
    assert_eq!((status.pending, status.dropped), (2, 2));
    let warnings = trainer.warnings.lock().unwrap().clone();
    let dropped = warnings
        .iter()
        .filter(|w| w.contains("before its upload"))
        .count();
    assert_eq!(dropped, 2, "{warnings:?}");
    unblock(&remote);
    trainer.manager.wait_until_finished(None).unwrap();
    assert_eq!(listed(&remote), names([3, 4]));
}

/// Uploads that the remote would not keep are skipped: with the remote
/// blocked while four saves queue and a remote keeping 2, only the two
/// newest go up once it is reachable.
#[test]
fn superseded_uploads_the_remote_would_not_keep_are_skipped() {
    let local = tempfile::tempdir().unwrap();
    let (_parent, remote) = blocked_remote();
    let mut trainer = Trainer::open(config(local.path(), &remote, 1, 2)).unwrap();
    for number in 1..=4 {
        trainer.save(number);
    }
    unblock(&remote);
    trainer.manager.wait_until_finished(None).unwrap();
    assert_eq!(listed(&remote), names([3, 4]));
    assert_eq!(on_disk(&remote), names([3, 4]));
}

/// The remote tier on object storage: moto's S3 server, as the S3 tests
/// start it (tests/support/s3.rs). Leases last 2 s, so a killed writer's
/// expires quickly; the client does not retry, so a stopped server fails
/// an upload at once.
#[cfg(feature = "s3")]
mod on_object_storage {
    use std::collections::BTreeSet;
    use std::process::{Command, Stdio};
    use std::time::Instant;

    use super::support::s3::{storage_config, Bucket, MotoServer};
    use super::*;

    fn s3_config(local: &Path, url: &Path, endpoint: &str, keep: (usize, usize)) -> Config {
        let mut config = storage_config(url, endpoint, MaxToKeep::Last(keep.1));
        for (key, value) in [("ckpt_lease_seconds", "2"), ("ckpt_max_retries", "0")] {
            config.set_storage_option(key, value).unwrap();
        }
        let remote = config.directory().to_path_buf();
        config.set_directory(local).unwrap();
        config.set_max_to_keep(MaxToKeep::Last(keep.0)).unwrap();
        config.set_remote_directory(Some(remote)).unwrap();
        config
            .set_remote_max_to_keep(MaxToKeep::Last(keep.1))
            .unwrap();
        config
    }

    /// A reader of the remote alone.
    fn remote_reader(url: &Path, endpoint: &str) -> Trainer {
        let mut config = storage_config(url, endpoint, MaxToKeep::Last(10));
        config.set_read_only(true);
        Trainer::open(config).unwrap()
    }

    /// The state object, the writer's lease and the checkpoints' objects.
    fn keys(prefix: &str, numbers: impl IntoIterator<Item = u64>) -> BTreeSet<String> {
        let mut keys = BTreeSet::from([
            format!("{prefix}/checkpoint"),
            format!("{prefix}/checkpoint.lease"),
        ]);
        for n in numbers {
            for suffix in ["ckpt-manifest.json", "safetensors"] {
                keys.insert(format!("{prefix}/ckpt-{n}.{suffix}"));
            }
        }
        keys
    }

    /// Saves go to the local directory, then to the bucket, each tier
    /// keeping its own; the bucket's state object is TF's text for its
    /// kept set; with the local directory gone the restore downloads.
    #[test]
    fn saves_reach_the_bucket_and_a_lost_local_directory_comes_back_from_it() {
        let bucket = Bucket::new("tiers-basic");
        let (local, url) = (tempfile::tempdir().unwrap(), bucket.url("run"));
        let config = s3_config(local.path(), &url, &bucket.endpoint, (2, 3));
        let mut trainer = Trainer::open(config.clone()).unwrap();
        let mut times = Vec::new();
        for number in 1..=5 {
            trainer.save(number);
            let newest = *state(local.path())
                .all_model_checkpoint_timestamps
                .last()
                .unwrap();
            times.push((format!("ckpt-{number}"), newest));
        }
        trainer.manager.wait_until_finished(None).unwrap();
        drop(trainer);
        assert_eq!(listed(local.path()), names([4, 5]));
        assert_eq!(bucket.keys(), keys("run", 3..=5));
        let remote_state = CheckpointState::parse(&bucket.get("run/checkpoint")).unwrap();
        assert_eq!(
            bucket.get("run/checkpoint"),
            expected_state(&times, &names(3..=5), remote_state.last_preserved_timestamp)
        );
        assert_eq!(remote_reader(&url, &bucket.endpoint).restore(), Some(5));

        fs::remove_dir_all(local.path()).unwrap();
        let mut trainer = Trainer::open(config).unwrap();
        assert_eq!(trainer.restore(), Some(5));
        assert_eq!(listed(local.path()), names([5]));
    }

    /// The server stops mid-run: saves go on committing locally, the
    /// status shows the failure and what waits, and once a server answers
    /// on the same port again the waiting uploads go up to it.
    #[test]
    fn a_stopped_server_delays_uploads_and_never_a_save() {
        let server = MotoServer::start();
        let (port, endpoint) = (server.address().port(), server.endpoint());
        server.create_bucket("stopped");
        let (local, url) = (
            tempfile::tempdir().unwrap(),
            PathBuf::from("s3://stopped/run"),
        );
        let mut trainer = Trainer::open(s3_config(local.path(), &url, &endpoint, (2, 5))).unwrap();
        trainer.save(1);
        trainer.manager.wait_until_finished(None).unwrap();
        drop(server);
        trainer.save(2);
        trainer.save(3);
        assert_eq!(listed(local.path()), names([2, 3]));
        assert!(matches!(
            trainer
                .manager
                .wait_until_finished(Some(Duration::from_millis(200))),
            Err(Error::Timeout)
        ));
        let status = after_a_failure(&mut trainer.manager);
        assert_eq!((status.newest_uploaded, status.pending), (Some(1), 2));
        assert!(status.last_error.is_some(), "{status:?}");

        // Moto keeps nothing: the server that comes back is empty.
        let server = MotoServer::start_again(port);
        server.create_bucket("stopped");
        trainer.manager.wait_until_finished(None).unwrap();
        let status = trainer.manager.remote_status().unwrap();
        assert_eq!(
            (status.newest_uploaded, status.pending, status.last_error),
            (Some(3), 0, None)
        );
        drop(trainer);
        let mut reader = remote_reader(&url, &endpoint);
        let on_remote: Vec<u64> = (reader.manager.checkpoints().iter())
            .map(|prefix| ckpt_manager::paths::trailing_number(prefix).unwrap())
            .collect();
        assert_eq!(on_remote, [2, 3]);
        assert_eq!(reader.restore(), Some(3));
    }

    const CHILD_ENV: &str = "CKPT_TIERS_CHILD";

    /// In a child process: saves 24 MiB checkpoints (multipart uploads) locally as fast as it
    /// can, uploading each to the bucket, until the parent kills it.
    #[test]
    #[ignore = "a child process of a_writer_killed_during_uploads_resumes_them_at_its_next_open"]
    fn child_saving_with_uploads() {
        let Ok(setting) = std::env::var(CHILD_ENV) else {
            return;
        };
        let [local, endpoint] = setting.split(' ').collect::<Vec<_>>()[..] else {
            panic!("{setting}");
        };
        let url = PathBuf::from("s3://tiers-killed/run");
        let config = s3_config(Path::new(local), &url, endpoint, (20, 20));
        let mut trainer = Trainer::open(config).unwrap();
        trainer.weights = vec![0.0f32; 6 << 20].into_boxed_slice();
        trainer.manager.unregister_tensor("weights").unwrap();
        // SAFETY: as in `Trainer::open`.
        unsafe {
            let weights = &mut trainer.weights;
            let shape = [weights.len() as u64];
            trainer
                .manager
                .register_tensor("weights", DType::F32, &shape, weights.as_mut_ptr().cast())
                .unwrap();
        }
        for number in 1..=8 {
            trainer.save(number);
        }
        loop {
            std::thread::sleep(Duration::from_secs(60));
        }
    }

    /// SIGKILL while uploads are in progress: the next open resumes them
    /// (the local checkpoints all reach the bucket), aborts the
    /// incomplete multipart upload, and leaves no object no checkpoint owns.
    #[test]
    fn a_writer_killed_during_uploads_resumes_them_at_its_next_open() {
        let bucket = Bucket::new("tiers-killed");
        let local = tempfile::tempdir().unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["on_object_storage::child_saving_with_uploads", "--exact"])
            .args(["--include-ignored", "--nocapture", "--test-threads=1"])
            .env(
                CHILD_ENV,
                format!("{} {}", local.path().display(), bucket.endpoint),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        while bucket.incomplete_uploads().is_empty() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "no upload was seen in progress: {:?} {:?}",
                    bucket.keys(),
                    on_disk(local.path())
                );
            }
            assert!(child.try_wait().unwrap().is_none(), "the child ended first");
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!bucket.incomplete_uploads().is_empty());
        let saved: Vec<u64> = (listed(local.path()).iter())
            .map(|name| ckpt_manager::paths::trailing_number(Path::new(name)).unwrap())
            .collect();
        assert!(!saved.is_empty());

        let url = bucket.url("run");
        let mut trainer =
            Trainer::open(s3_config(local.path(), &url, &bucket.endpoint, (20, 20))).unwrap();
        trainer.manager.wait_until_finished(None).unwrap();
        assert_eq!(bucket.incomplete_uploads(), Vec::<String>::new());
        assert_eq!(bucket.keys(), keys("run", saved.iter().copied()));
        let status = trainer.manager.remote_status().unwrap();
        assert_eq!(status.newest_uploaded, saved.last().copied());
        drop(trainer);
        let on_remote: Vec<u64> = (remote_reader(&url, &bucket.endpoint).manager.checkpoints())
            .iter()
            .map(|prefix| ckpt_manager::paths::trailing_number(prefix).unwrap())
            .collect();
        assert_eq!(on_remote, saved);
    }
}
