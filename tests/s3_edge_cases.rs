//! Object storage at its edges, against a real moto server on loopback:
//! racing writers, keys with characters a client would percent-encode,
//! the bucket's root, part boundaries, empty files, an object replaced
//! while it is read. Each of the first four failed once (a review found
//! them) and pins its fix.

#![cfg(feature = "s3")]

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ckpt_manager::{Callbacks, CheckpointManager, Config, DType, MaxToKeep};
use support::fault_proxy::FaultProxy;
use support::s3::{storage_config, Bucket, MotoServer};

/// A manager saving one registered tensor of `values` floats, all `fill`.
struct Writer {
    manager: CheckpointManager,
    weights: Box<[f32]>,
}

impl Writer {
    fn open(config: Config, callbacks: Callbacks, values: usize) -> Writer {
        let manager = CheckpointManager::new(config, callbacks.log(|_, _| {})).unwrap();
        let mut writer = Writer {
            manager,
            weights: vec![0.0; values].into_boxed_slice(),
        };
        let data = writer.weights.as_mut_ptr().cast();
        // SAFETY: the boxed buffer lives as long as the manager, in `Writer`.
        unsafe {
            writer
                .manager
                .register_tensor("w", DType::F32, &[values as u64], data)
                .unwrap();
        }
        writer
    }

    fn save(&mut self, fill: f32) -> ckpt_manager::Result<PathBuf> {
        self.weights.fill(fill);
        self.manager.save(None, false).map(|saved| saved.unwrap())
    }

    fn holds(&self, fill: f32) -> bool {
        self.weights.iter().all(|&w| w == fill)
    }
}

/// Two writers on one prefix save the same number. The first's upload of
/// its tensor file, placed early at its final name, stalls; meanwhile the
/// second's save (whose begin removes the first's staging as abandoned)
/// commits. The stalled PUT is conditional (If-None-Match: the store saw
/// the name free), so it fails when it lands, and the winner's committed
/// file keeps its bytes.
#[test]
fn a_losing_writers_late_upload_leaves_the_winners_checkpoint_intact() {
    let bucket = Bucket::new("late-upload");
    let proxy = FaultProxy::start(MotoServer::shared().address());
    let url = bucket.url("run");
    // Without the lease, which would refuse the second writer at open.
    let config = |endpoint: &str| {
        let mut config = storage_config(&url, endpoint, MaxToKeep::Last(5));
        config
            .set_storage_option("ckpt_lease_seconds", "0")
            .unwrap();
        config
    };
    let mut loser = Writer::open(config(&proxy.endpoint()), Callbacks::new(), 1024);
    let mut winner = Writer::open(config(&bucket.endpoint), Callbacks::new(), 1024);
    proxy.hold_requests("PUT /late-upload/run/ckpt-1.safetensors");
    let saving = std::thread::spawn(move || {
        let result = loser.save(1.0).map(drop);
        (loser, result)
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while !proxy
        .requests()
        .iter()
        .any(|r| r.starts_with("PUT /late-upload/run/ckpt-1.safetensors"))
    {
        assert!(Instant::now() < deadline, "{:?}", proxy.requests());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(winner.save(2.0).unwrap(), url.join("ckpt-1"));
    proxy.release_held();
    let (loser, result) = saving.join().unwrap();
    // It fails (today as InvalidArgument, "the save wrote no file": its
    // staging went with the winner's recovery), committing nothing.
    assert!(result.is_err());
    drop((loser, winner));

    let mut reader = Writer::open(config(&bucket.endpoint), Callbacks::new(), 1024);
    let restored = reader.manager.restore_or_initialize();
    assert_eq!(restored.unwrap(), Some(url.join("ckpt-1")));
    assert!(
        reader.holds(2.0),
        "the winner's checkpoint holds other bytes"
    );
}

/// A callback file named `<prefix>.a~b` (object_store stores it at
/// `...a%7Eb`): its manifest names it, so restore downloads it and the
/// sweep deletes it.
#[test]
fn a_callback_file_named_with_a_tilde_is_restored_and_swept() {
    let bucket = Bucket::new("tilde-file");
    let url = bucket.url("run");
    let restored = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let callbacks = |seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>| {
        Callbacks::new()
            .on_save(|prefix, number| {
                let path = ckpt_manager::paths::with_suffix(prefix, ".a~b");
                Ok(std::fs::write(path, number.to_string())?)
            })
            .on_restore(move |prefix| {
                let path = ckpt_manager::paths::with_suffix(prefix, ".a~b");
                *seen.lock().unwrap() = std::fs::read(path)?;
                Ok(())
            })
    };
    let config = || storage_config(&url, &bucket.endpoint, MaxToKeep::Last(1));
    let mut writer = Writer::open(config(), callbacks(restored.clone()), 16);
    writer.save(1.0).unwrap();
    writer.save(2.0).unwrap();
    drop(writer);
    let left: Vec<String> = bucket
        .keys()
        .into_iter()
        .filter(|key| key.starts_with("run/ckpt-1"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let mut reader = Writer::open(config(), callbacks(restored.clone()), 16);
    assert_eq!(
        reader.manager.restore_or_initialize().unwrap(),
        Some(url.join("ckpt-2"))
    );
    assert_eq!(*restored.lock().unwrap(), b"2");
}

/// A URL whose prefix holds `~`: the objects go to the keys the URL names
/// (not percent-encoded ones), so TF or `aws s3` reading
/// `s3://bucket/run~1/checkpoint` finds it, and the staging is removed.
#[test]
fn the_state_object_lies_at_the_key_the_url_names() {
    let bucket = Bucket::new("tilde-prefix");
    let url = bucket.url("run~1");
    let mut writer = Writer::open(
        storage_config(&url, &bucket.endpoint, MaxToKeep::Last(2)),
        Callbacks::new(),
        16,
    );
    writer.save(1.0).unwrap();
    let keys = bucket.keys();
    assert!(keys.contains("run~1/checkpoint"), "{keys:?}");
    assert!(!keys.iter().any(|key| key.contains("staging")), "{keys:?}");
}

/// A checkpoint name with `~` (accepted by `set_checkpoint_name`): keys
/// are listed by their own names, so the seal finds the save's files.
#[test]
fn a_checkpoint_name_with_a_tilde_saves_and_leaves_no_staging() {
    let bucket = Bucket::new("tilde-name");
    let url = bucket.url("run");
    let mut config = storage_config(&url, &bucket.endpoint, MaxToKeep::Last(2));
    config.set_checkpoint_name("model~a").unwrap();
    let mut writer = Writer::open(config, Callbacks::new(), 16);
    writer.save(1.0).unwrap();
    let staged: Vec<String> = bucket
        .keys()
        .into_iter()
        .filter(|key| key.contains(".ckpt-staging"))
        .collect();
    assert!(staged.is_empty(), "{staged:?}");
}

/// The bucket's root as the directory: save, sweep and restore work, and
/// keys of another prefix in the bucket are left alone.
#[test]
fn the_bucket_root_is_a_checkpoint_directory() {
    let bucket = Bucket::new("root-dir");
    let other = PathBuf::from("s3://root-dir/other");
    let config = |url: &Path| storage_config(url, &bucket.endpoint, MaxToKeep::Last(1));
    // Another run's keys under the root, which the root's listing sees as
    // a directory `other`.
    Writer::open(config(&other), Callbacks::new(), 16)
        .save(7.0)
        .unwrap();
    let root = PathBuf::from("s3://root-dir");
    let mut writer = Writer::open(config(&root), Callbacks::new(), 16);
    assert_eq!(writer.save(1.0).unwrap(), root.join("ckpt-1"));
    assert_eq!(writer.save(2.0).unwrap(), root.join("ckpt-2"));
    drop(writer);
    let keys = bucket.keys();
    for key in ["checkpoint", "ckpt-2.safetensors", "other/checkpoint"] {
        assert!(keys.contains(key), "{key} missing: {keys:?}");
    }
    assert!(!keys.contains("ckpt-1.safetensors"), "{keys:?}");
    let mut reader = Writer::open(config(&root), Callbacks::new(), 16);
    assert_eq!(
        reader.manager.restore_or_initialize().unwrap(),
        Some(root.join("ckpt-2"))
    );
    assert!(reader.holds(2.0));
    let mut nested = Writer::open(config(&other), Callbacks::new(), 16);
    nested.manager.restore_or_initialize().unwrap();
    assert!(nested.holds(7.0));
}

/// `ckpt-1` and `ckpt-10` share a key prefix: sweeping `ckpt-1` (and
/// recovering its staging) keeps every file of `ckpt-10`.
#[test]
fn sweeping_ckpt_1_keeps_ckpt_10() {
    let bucket = Bucket::new("prefix-collision");
    let url = bucket.url("run");
    let config = || storage_config(&url, &bucket.endpoint, MaxToKeep::Last(1));
    let mut writer = Writer::open(config(), Callbacks::new(), 16);
    writer.weights.fill(1.0);
    writer.manager.save(Some(1), false).unwrap();
    writer.weights.fill(10.0);
    writer.manager.save(Some(10), false).unwrap();
    drop(writer);
    let keys = bucket.keys();
    let expected = [
        "run/checkpoint",
        "run/checkpoint.lease",
        "run/ckpt-10.ckpt-manifest.json",
        "run/ckpt-10.safetensors",
    ];
    assert_eq!(
        keys,
        expected.iter().map(|k| k.to_string()).collect(),
        "{keys:?}"
    );
    let mut reader = Writer::open(config(), Callbacks::new(), 16);
    assert_eq!(
        reader.manager.restore_or_initialize().unwrap(),
        Some(url.join("ckpt-10"))
    );
    assert!(reader.holds(10.0));
}

/// A tensor over one 16 MiB part: written as a multipart upload and read
/// back by ranged GETs across the part boundary, byte for byte.
#[test]
fn a_tensor_over_a_part_round_trips() {
    let bucket = Bucket::new("large-tensor");
    let url = bucket.url("run");
    let values = (17 << 20) / 4 + 3;
    let config = || storage_config(&url, &bucket.endpoint, MaxToKeep::Last(1));
    let mut writer = Writer::open(config(), Callbacks::new(), values);
    writer
        .weights
        .iter_mut()
        .enumerate()
        .for_each(|(i, w)| *w = i as f32);
    writer.manager.save(None, false).unwrap();
    drop(writer);
    let mut reader = Writer::open(config(), Callbacks::new(), values);
    reader.manager.restore_or_initialize().unwrap();
    assert!(reader
        .weights
        .iter()
        .enumerate()
        .all(|(i, &w)| w == i as f32));
}

/// A save callback's empty file survives the round trip as an empty file.
#[test]
fn an_empty_callback_file_round_trips() {
    let bucket = Bucket::new("empty-file");
    let url = bucket.url("run");
    let restored = std::sync::Arc::new(std::sync::Mutex::new(None));
    let callbacks = |seen: std::sync::Arc<std::sync::Mutex<Option<Vec<u8>>>>| {
        Callbacks::new()
            .on_save(|prefix, _| {
                Ok(std::fs::write(
                    ckpt_manager::paths::with_suffix(prefix, ".empty"),
                    b"",
                )?)
            })
            .on_restore(move |prefix| {
                let path = ckpt_manager::paths::with_suffix(prefix, ".empty");
                *seen.lock().unwrap() = Some(std::fs::read(path)?);
                Ok(())
            })
    };
    let config = || storage_config(&url, &bucket.endpoint, MaxToKeep::Last(1));
    Writer::open(config(), callbacks(restored.clone()), 16)
        .save(1.0)
        .unwrap();
    assert!(bucket.keys().contains("run/ckpt-1.empty"));
    let mut reader = Writer::open(config(), callbacks(restored.clone()), 16);
    reader.manager.restore_or_initialize().unwrap();
    assert_eq!(restored.lock().unwrap().as_deref(), Some(&b""[..]));
}

/// The latest checkpoint's tensor file is replaced (damaged) between the
/// reader's HEAD and its ranged GETs. Each GET is pinned to the ETag seen,
/// so the server answers 412: the file is damaged for this restore, which
/// falls back to the older checkpoint, as for a file damaged before.
#[test]
fn an_object_replaced_during_a_restore_makes_it_fall_back() {
    let bucket = Bucket::new("replaced-mid-read");
    let proxy = FaultProxy::start(MotoServer::shared().address());
    let url = bucket.url("run");
    let config = |endpoint: &str| storage_config(&url, endpoint, MaxToKeep::Last(2));
    let mut writer = Writer::open(config(&bucket.endpoint), Callbacks::new(), 1024);
    writer.save(1.0).unwrap();
    writer.save(2.0).unwrap();
    drop(writer);
    let key = "run/ckpt-2.safetensors";
    let mut damaged = bucket.get(key);
    *damaged.last_mut().unwrap() ^= 0xff;
    let mut reader = Writer::open(config(&proxy.endpoint()), Callbacks::new(), 1024);
    proxy.hold_requests("GET /replaced-mid-read/run/ckpt-2.safetensors");
    let restoring = std::thread::spawn(move || {
        let restored = reader.manager.restore_or_initialize();
        (reader, restored)
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while !proxy
        .requests()
        .iter()
        .any(|r| r.starts_with("GET /replaced-mid-read/run/ckpt-2.safetensors"))
    {
        assert!(Instant::now() < deadline, "{:?}", proxy.requests());
        std::thread::sleep(Duration::from_millis(5));
    }
    bucket.put(key, damaged);
    proxy.release_held();
    let (reader, restored) = restoring.join().unwrap();
    assert_eq!(restored.unwrap(), Some(url.join("ckpt-1")));
    assert!(reader.holds(1.0));
}
