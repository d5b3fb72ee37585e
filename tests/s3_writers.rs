#![cfg(feature = "s3")]
//! One writer per `s3://` prefix (the lease object) and what a killed
//! writer leaves on the server (incomplete multipart uploads) and locally
//! (its staging directory), against a
//! real moto server on loopback (tests/support/s3.rs). Leases last 2 s
//! here (`ckpt_lease_seconds`), so a dead writer's lease expires quickly.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ckpt_manager::{Callbacks, CheckpointManager, Config, DType, ErrorKind, MaxToKeep};
use support::s3::{storage_config, Bucket};

const LEASE_SECONDS: &str = "2";
/// 20 MiB of floats: each save is a multipart upload of two parts.
const VALUES: usize = 5 << 20;

fn config(bucket: &Bucket, url: &Path) -> Config {
    config_at(&bucket.endpoint, url)
}

fn config_at(endpoint: &str, url: &Path) -> Config {
    let mut config = storage_config(url, endpoint, MaxToKeep::Last(2));
    config
        .set_storage_option("ckpt_lease_seconds", LEASE_SECONDS)
        .unwrap();
    config
}

/// The writers stage their callbacks' files under `staging`.
fn staged_in(mut config: Config, staging: &str) -> Config {
    config
        .set_storage_option("ckpt_local_staging_directory", staging)
        .unwrap();
    config
}

fn entries(directory: &str) -> Vec<String> {
    support::file_names(Path::new(directory))
}

fn value(number: u64, i: usize) -> f32 {
    (number * 7919 + i as u64 % 65536) as f32
}

/// A writer with one registered tensor of `VALUES` floats.
struct Writer {
    manager: CheckpointManager,
    weights: Box<[f32]>,
}

impl Writer {
    fn open(config: Config) -> Result<Writer, ckpt_manager::Error> {
        let manager = CheckpointManager::new(config, Callbacks::new().log(|_, _| {}))?;
        let mut writer = Writer {
            manager,
            weights: vec![0.0; VALUES].into_boxed_slice(),
        };
        let data = writer.weights.as_mut_ptr().cast();
        // SAFETY: the boxed buffer lives as long as the manager, in `Writer`.
        unsafe {
            writer
                .manager
                .register_tensor("w", DType::F32, &[VALUES as u64], data)
                .unwrap();
        }
        Ok(writer)
    }

    fn save(&mut self, number: u64) {
        let weights = self.weights.iter_mut().enumerate();
        weights.for_each(|(i, w)| *w = value(number, i));
        self.manager.save(Some(number), false).unwrap();
    }

    /// Restores the latest checkpoint and checks its weights; its number.
    fn restore_latest(&mut self) -> u64 {
        let latest = self.manager.restore_or_initialize().unwrap().unwrap();
        let number = ckpt_manager::paths::trailing_number(&latest).unwrap();
        assert!(
            self.weights
                .iter()
                .enumerate()
                .all(|(i, &w)| w == value(number, i)),
            "the weights are not checkpoint {number}'s"
        );
        number
    }
}

const CHILD_ENV: &str = "CKPT_S3_WRITERS_CHILD";

/// This executable, to run test `name` alone in a child process whose
/// environment says the bucket, what to do and where to stage files.
fn child(name: &str, bucket: &Bucket, job: &str, staging: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(
            CHILD_ENV,
            format!("{} {} {job} {staging}", bucket.name, bucket.endpoint),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// In a child process: opens a writer on `s3://<bucket>/run` and then
/// holds it (`hold`), or saves checkpoints one after another (`save`),
/// until the parent kills it.
#[test]
fn child_writer() {
    let Ok(setting) = std::env::var(CHILD_ENV) else {
        return; // only as the child of the tests below
    };
    let [name, endpoint, job, staging] = setting.split(' ').collect::<Vec<_>>()[..] else {
        panic!("{setting}");
    };
    let url = PathBuf::from(format!("s3://{name}/run"));
    let mut writer = Writer::open(staged_in(config_at(endpoint, &url), staging)).unwrap();
    if job == "save" {
        let latest = writer.manager.latest_checkpoint();
        let first = latest.map_or(1, |latest| {
            ckpt_manager::paths::trailing_number(&latest).unwrap() + 1
        });
        for number in first.. {
            writer.save(number);
        }
    }
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// Waits (bounded) until `ready` holds, while `child` runs.
fn wait_for(child: &mut Child, what: &str, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ready() {
        assert!(Instant::now() < deadline, "waited too long for {what}");
        assert!(child.try_wait().unwrap().is_none(), "the child ended first");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_second_writer_is_locked_until_the_first_closes() {
    let bucket = Bucket::new("second-writer");
    let url = bucket.url("run");
    let mut first = Writer::open(config(&bucket, &url)).unwrap();
    first.save(1);
    let err = Writer::open(config(&bucket, &url)).err().expect("LOCKED");
    assert_eq!(err.kind(), ErrorKind::Locked, "{err}");
    assert!(
        err.to_string()
            .contains("s3://second-writer/run/checkpoint.lease"),
        "{err}"
    );
    // A reader takes no lease.
    let mut reading = config(&bucket, &url);
    reading.set_read_only(true);
    let reader = CheckpointManager::new(reading, Callbacks::new()).unwrap();
    assert_eq!(reader.latest_checkpoint(), Some(url.join("ckpt-1")));
    // The first writer saves on; the loser's attempt changed nothing.
    first.save(2);
    drop(first);
    let mut second = Writer::open(config(&bucket, &url)).unwrap();
    assert_eq!(second.restore_latest(), 2);
    second.save(3);
}

/// A writer in another process holds the prefix: the open here is
/// LOCKED; once that process is SIGKILLed, the open here waits out its
/// lease and opens.
#[test]
fn a_writer_in_another_process_holds_the_prefix_until_it_is_killed() {
    let bucket = Bucket::new("other-process");
    let url = bucket.url("run");
    let temp = std::env::temp_dir();
    let mut holder = child("child_writer", &bucket, "hold", temp.to_str().unwrap());
    wait_for(&mut holder, "the child's lease", || {
        bucket.keys().contains("run/checkpoint.lease")
    });
    let err = Writer::open(config(&bucket, &url)).err().expect("LOCKED");
    assert_eq!(err.kind(), ErrorKind::Locked, "{err}");
    assert!(err.to_string().contains("kept fresh"), "{err}");
    holder.kill().unwrap();
    holder.wait().unwrap();
    let mut restarted = Writer::open(config(&bucket, &url)).unwrap();
    restarted.save(1);
    assert_eq!(restarted.restore_latest(), 1);
}

/// A writer saving 20 MiB checkpoints is SIGKILLed, the first time while
/// an upload is in progress, then at random instants: each next writer's
/// open leaves no incomplete upload and none of the killed writer's local
/// files, and restores the last checkpoint committed.
#[test]
fn killed_writers_leave_no_incomplete_uploads_or_local_files() {
    let bucket = Bucket::new("killed-writers");
    let url = bucket.url("run");
    let staging_dir = tempfile::tempdir().unwrap();
    let staging = staging_dir.path().to_str().unwrap();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let mut committed = 0;
    for round in 0..4u32 {
        let mut saving = child("child_writer", &bucket, "save", staging);
        if round == 0 {
            wait_for(&mut saving, "an upload in progress", || {
                !bucket.incomplete_uploads().is_empty()
            });
        } else {
            // A fresh child takes a second or so before its first save.
            let delay = ((seed ^ round).wrapping_mul(2654435761) >> 8) % 2500;
            std::thread::sleep(Duration::from_millis(500 + u64::from(delay)));
        }
        saving.kill().unwrap();
        saving.wait().unwrap();
        let left = bucket.incomplete_uploads();
        if round == 0 {
            assert!(!left.is_empty(), "the kill left no upload to abort");
        }
        let left_locally = entries(staging);
        if round == 0 {
            assert_eq!(left_locally.len(), 1, "{left_locally:?}");
        }
        let mut writer = Writer::open(staged_in(config(&bucket, &url), staging)).unwrap();
        assert_eq!(
            bucket.incomplete_uploads(),
            Vec::<String>::new(),
            "left before: {left:?}"
        );
        // The open removed the killed writer's staging directory: only
        // its own is there.
        let now = entries(staging);
        assert_eq!(now.len(), 1, "{now:?}");
        assert!(!left_locally.contains(&now[0]), "{now:?}");
        if writer.manager.latest_checkpoint().is_some() {
            let restored = writer.restore_latest();
            assert!(restored >= committed, "{restored} < {committed}");
            committed = restored;
        }
    }
    assert_eq!(entries(staging), Vec::<String>::new());
}

/// A writer whose lease another writer took over (as after it stalled
/// past its duration) has its next save refused before the commit point.
#[test]
fn a_writer_whose_lease_was_taken_over_commits_nothing() {
    let bucket = Bucket::new("lease-taken");
    let url = bucket.url("run");
    let mut writer = Writer::open(config(&bucket, &url)).unwrap();
    writer.save(1);
    let state = bucket.get("run/checkpoint");
    let taken = r#"{"holder":"process 1 on elsewhere","token":"0","seconds":2.0,"refreshes":0,"released":false}"#;
    bucket.put("run/checkpoint.lease", taken.as_bytes().to_vec());
    let weights = writer.weights.iter_mut().enumerate();
    weights.for_each(|(i, w)| *w = value(2, i));
    let err = writer.manager.save(Some(2), false).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Locked, "{err}");
    assert!(err.to_string().contains("taken over"), "{err}");
    assert_eq!(bucket.get("run/checkpoint"), state);
    assert!(
        !bucket.keys().iter().any(|key| key.contains("ckpt-2")),
        "{:?}",
        bucket.keys()
    );
}
