//! Saves and restores across ranks, with the ranks as threads of this
//! process over an in-memory communicator (tests/mpi.rs runs the real
//! thing under mpirun).

#[path = "support/thread_ranks.rs"]
mod thread_ranks;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use thread_ranks::{on_ranks, ThreadCommunicator};

#[cfg(feature = "s3")]
mod support;

use ckpt_manager::{
    get_checkpoint_state, Callbacks, CheckpointManager, Config, DType, Error, ErrorKind, MaxToKeep,
};

const SIZE: u32 = 4;
const VALUES: usize = 1000;

/// One rank's manager: a registered tensor of `VALUES` floats, and a save
/// callback that fails when `fail` holds this rank.
struct Rank {
    manager: CheckpointManager,
    weights: Box<[f32]>,
}

fn open(
    dir: &Path,
    communicator: Arc<ThreadCommunicator>,
    fail: Arc<Mutex<Option<u32>>>,
) -> Result<Rank, Error> {
    open_with(dir, communicator, fail, |_| {})
}

/// Each rank in its own directory, `<root>/rank-R`.
fn open_node_local(root: &Path, communicator: Arc<ThreadCommunicator>) -> Result<Rank, Error> {
    let dir = root.join(format!("rank-{}", communicator.rank));
    open_with(&dir, communicator, Arc::default(), |config| {
        config.set_node_local(true)
    })
}

fn open_with(
    dir: &Path,
    communicator: Arc<ThreadCommunicator>,
    fail: Arc<Mutex<Option<u32>>>,
    configure: impl FnOnce(&mut Config),
) -> Result<Rank, Error> {
    let rank = communicator.rank;
    let mut config = Config::new(dir, MaxToKeep::Last(2))?;
    config.set_communicator(Some(communicator));
    config.set_coordination_timeout(2.0)?;
    configure(&mut config);
    let callbacks = Callbacks::new()
        .on_save(move |prefix, number| {
            if *fail.lock().unwrap() == Some(rank) {
                return Err(format!("rank {rank} could not write").into());
            }
            let mut name = prefix.as_os_str().to_owned();
            name.push(".step");
            Ok(fs::write(PathBuf::from(name), number.to_le_bytes())?)
        })
        .on_restore(|_| Ok(()))
        .log(|_, _| {});
    let manager = CheckpointManager::new(config, callbacks)?;
    let mut rank = Rank {
        manager,
        weights: vec![0.0; VALUES].into_boxed_slice(),
    };
    let data = rank.weights.as_mut_ptr().cast();
    // SAFETY: the boxed buffer lives as long as the manager, in `Rank`.
    unsafe {
        rank.manager
            .register_tensor("w", DType::F32, &[VALUES as u64], data)
            .unwrap();
    }
    Ok(rank)
}

/// Runs `body` on every rank, each on its own thread; returns the results
/// in rank order.
fn on_every_rank<T: Send + 'static>(
    body: impl Fn(Arc<ThreadCommunicator>) -> T + Send + Sync + 'static,
) -> Vec<T> {
    on_ranks(SIZE, body)
}

fn value(rank: u32, round: u32) -> f32 {
    (rank * 100 + round) as f32
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn listed(dir: &Path) -> Vec<String> {
    get_checkpoint_state(dir)
        .unwrap()
        .map(|state| {
            state
                .all_model_checkpoint_paths
                .iter()
                .map(|p| {
                    String::from_utf8_lossy(p)
                        .rsplit('/')
                        .next()
                        .unwrap()
                        .to_owned()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Reopens on every rank and restores: checkpoint `round`, with each
/// rank's own values of that round.
fn restore_on_every_rank(dir: &Path, round: u32) {
    let root = dir.to_path_buf();
    let restored = on_every_rank(move |communicator| {
        let rank = communicator.rank;
        let mut me = open(&root, communicator, Arc::default()).unwrap();
        let restored = me.manager.restore_or_initialize().unwrap().unwrap();
        assert!(
            me.weights.iter().all(|&w| w == value(rank, round)),
            "rank {rank}"
        );
        restored
    });
    let expected = format!("ckpt-{round}");
    assert!(
        restored.iter().all(|p| p.ends_with(&expected)),
        "{restored:?}"
    );
}

#[test]
fn every_rank_saves_its_shard_and_restores_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let saved = on_every_rank(move |communicator| {
        let rank = communicator.rank;
        let mut me = open(&root, communicator, Arc::default()).unwrap();
        (1..=3)
            .map(|round| {
                me.weights.fill(value(rank, round));
                me.manager.save(None, true).unwrap().unwrap()
            })
            .collect::<Vec<_>>()
    });
    assert!(saved.windows(2).all(|pair| pair[0] == pair[1]), "{saved:?}");
    assert_eq!(listed(dir.path()), ["ckpt-2", "ckpt-3"]);
    let files = names(dir.path());
    for number in [2, 3] {
        for rank in 0..SIZE {
            for suffix in ["safetensors", "step"] {
                let name = format!("ckpt-{number}.rank-{rank:05}-of-{SIZE:05}.{suffix}");
                assert!(files.contains(&name), "{name} in {files:?}");
            }
        }
    }
    assert!(!files.iter().any(|f| f.starts_with("ckpt-1")), "{files:?}");
    assert!(!files.iter().any(|f| f.contains("staging")), "{files:?}");

    restore_on_every_rank(dir.path(), 3);
}

#[test]
fn one_rank_failing_aborts_the_save_on_every_rank() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let results = on_every_rank(move |communicator| {
        let fail = Arc::new(Mutex::new(None));
        let mut me = open(&root, communicator, Arc::clone(&fail)).unwrap();
        me.manager.save(None, true).unwrap().unwrap();
        *fail.lock().unwrap() = Some(2);
        let failed = me.manager.save(None, true).unwrap_err();
        *fail.lock().unwrap() = None;
        let next = me.manager.save(None, true).unwrap().unwrap();
        (failed.to_string(), failed.kind(), next)
    });
    for (message, kind, next) in &results {
        assert_eq!(*kind, ErrorKind::Callback);
        assert_eq!(message, &results[0].0);
        assert!(message.starts_with("rank 2:"), "{message}");
        assert!(
            next.ends_with("ckpt-2"),
            "the number is reused: {}",
            next.display()
        );
    }
    assert_eq!(listed(dir.path()), ["ckpt-1", "ckpt-2"]);
}

#[test]
fn a_rank_that_does_not_take_part_times_out_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let results = on_every_rank(move |communicator| {
        let rank = communicator.rank;
        let mut me = open(&root, communicator, Arc::default()).unwrap();
        me.manager.save(None, true).unwrap().unwrap();
        if rank == 3 {
            return None;
        }
        Some(me.manager.save(None, true).unwrap_err().kind())
    });
    assert_eq!(
        results,
        [
            Some(ErrorKind::Timeout),
            Some(ErrorKind::Timeout),
            Some(ErrorKind::Timeout),
            None
        ]
    );
    assert_eq!(listed(dir.path()), ["ckpt-1"]);
    let files = names(dir.path());
    assert!(!files.iter().any(|f| f.starts_with("ckpt-2")), "{files:?}");
}

#[test]
fn a_damaged_shard_makes_every_rank_restore_the_same_older_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    on_every_rank(move |communicator| {
        let rank = communicator.rank;
        let mut me = open(&root, communicator, Arc::default()).unwrap();
        for round in 1..=2 {
            me.weights.fill(value(rank, round));
            me.manager.save(None, true).unwrap();
        }
    });
    let shard = dir
        .path()
        .join(format!("ckpt-2.rank-00001-of-{SIZE:05}.safetensors"));
    let mut bytes = fs::read(&shard).unwrap();
    *bytes.last_mut().unwrap() ^= 0xff;
    fs::write(&shard, bytes).unwrap();
    restore_on_every_rank(dir.path(), 1);
}

/// A tensor table that lies about ranks (rank 3's piece listed as rank 9's
/// of 4) or bytes (two pieces claiming the same byte range) is damage on
/// every rank: all fall back to the older checkpoint together.
#[test]
fn a_hostile_tensor_table_makes_every_rank_restore_the_older_checkpoint() {
    type Edit = fn(&mut serde_json::Value);
    let edits: [Edit; 2] = [
        |manifest| manifest["tensors"][0]["boxes"][3]["rank"] = 9.into(),
        |manifest| {
            let boxes = &mut manifest["tensors"][0]["boxes"];
            boxes[2]["file"] = boxes[1]["file"].clone();
            boxes[2]["start"] = boxes[1]["start"].clone();
            boxes[2]["end"] = boxes[1]["end"].clone();
        },
    ];
    for edit in edits {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        on_every_rank(move |communicator| {
            let rank = communicator.rank;
            let mut me = open(&root, communicator, Arc::default()).unwrap();
            for round in 1..=2 {
                me.weights.fill(value(rank, round));
                me.manager.save(None, true).unwrap();
            }
        });
        let path = dir.path().join("ckpt-2.ckpt-manifest.json");
        let mut manifest: serde_json::Value =
            serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(manifest["tensors"][0]["boxes"][3]["rank"], 3);
        edit(&mut manifest);
        fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
        restore_on_every_rank(dir.path(), 1);
    }
}

/// A save callback that also writes a name of no rank (`with_extension`
/// drops the rank part of `ckpt-1.rank-00001-of-00004`) fails the save on
/// every rank instead of losing that file.
#[test]
fn a_file_of_no_rank_fails_the_save_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let failures = on_every_rank(move |communicator| {
        let rank = communicator.rank;
        let mut config = Config::new(&root, MaxToKeep::Last(2)).unwrap();
        config.set_communicator(Some(communicator));
        config.set_coordination_timeout(10.0).unwrap();
        let callbacks = Callbacks::new().on_save(move |prefix, _| {
            let mut name = prefix.as_os_str().to_owned();
            name.push(".bin");
            fs::write(PathBuf::from(name), b"w")?;
            if rank == 1 {
                fs::write(prefix.with_extension("bin"), b"lost")?;
            }
            Ok(())
        });
        let mut manager = CheckpointManager::new(config, callbacks).unwrap();
        let err = manager.save(None, true).unwrap_err();
        (err.kind(), err.to_string())
    });
    for (kind, message) in &failures {
        assert_eq!(*kind, ErrorKind::InvalidArgument);
        assert!(message.contains("ckpt-1.bin"), "{message}");
    }
    assert!(listed(dir.path()).is_empty());
    assert_eq!(names(dir.path()), ["checkpoint.lock"]);
}

/// Node-local directories: every rank commits, lists and sweeps its own
/// shard in its own directory, and restores from it.
#[test]
fn node_local_directories_each_hold_and_sweep_their_own_shard() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let saved = on_every_rank(move |communicator| {
        let rank = communicator.rank;
        let mut me = open_node_local(&root, Arc::clone(&communicator)).unwrap();
        let saved: Vec<_> = (1..=3)
            .map(|round| {
                me.weights.fill(value(rank, round));
                let prefix = me.manager.save(None, true).unwrap().unwrap();
                prefix.file_name().unwrap().to_owned()
            })
            .collect();
        me.weights.fill(-1.0);
        drop(me);
        let mut me = open_node_local(&root, communicator).unwrap();
        let restored = me.manager.restore_or_initialize().unwrap().unwrap();
        assert!(
            me.weights.iter().all(|&w| w == value(rank, 3)),
            "rank {rank}"
        );
        assert!(restored.starts_with(root.join(format!("rank-{rank}"))));
        saved
    });
    assert!(saved.windows(2).all(|pair| pair[0] == pair[1]), "{saved:?}");
    for rank in 0..SIZE {
        let own = dir.path().join(format!("rank-{rank}"));
        assert_eq!(listed(&own), ["ckpt-2", "ckpt-3"], "rank {rank}");
        let mut expected = vec!["checkpoint".to_owned(), "checkpoint.lock".to_owned()];
        for number in [2, 3] {
            for suffix in [
                "ckpt-manifest.json",
                &format!("rank-{rank:05}-of-{SIZE:05}.safetensors"),
                &format!("rank-{rank:05}-of-{SIZE:05}.step"),
            ] {
                expected.push(format!("ckpt-{number}.{suffix}"));
            }
        }
        expected.sort();
        assert_eq!(names(&own), expected, "rank {rank}");
    }
}

/// Node-local: a rank whose save fails leaves every directory as it was,
/// and a damaged shard in one rank's directory makes every rank restore
/// the same older checkpoint.
#[test]
fn node_local_failures_commit_nothing_and_fall_back_together() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let failures = on_every_rank(move |communicator| {
        let rank = communicator.rank;
        let own = root.join(format!("rank-{rank}"));
        let fail = Arc::new(Mutex::new(None));
        let mut me = open_with(&own, communicator, Arc::clone(&fail), |config| {
            config.set_node_local(true)
        })
        .unwrap();
        for round in 1..=2 {
            me.weights.fill(value(rank, round));
            me.manager.save(None, true).unwrap();
        }
        *fail.lock().unwrap() = Some(2);
        let failed = me.manager.save(None, true).unwrap_err();
        (failed.kind(), failed.to_string())
    });
    for (kind, message) in &failures {
        assert_eq!(*kind, ErrorKind::Callback);
        assert!(message.starts_with("rank 2:"), "{message}");
    }
    for rank in 0..SIZE {
        let own = dir.path().join(format!("rank-{rank}"));
        assert_eq!(listed(&own), ["ckpt-1", "ckpt-2"], "rank {rank}");
        assert!(!names(&own).iter().any(|f| f.starts_with("ckpt-3")));
    }
    let shard = dir
        .path()
        .join(format!("rank-1/ckpt-2.rank-00001-of-{SIZE:05}.safetensors"));
    let mut bytes = fs::read(&shard).unwrap();
    *bytes.last_mut().unwrap() ^= 0xff;
    fs::write(&shard, bytes).unwrap();
    let root = dir.path().to_path_buf();
    let restored = on_every_rank(move |communicator| {
        let rank = communicator.rank;
        let mut me = open_node_local(&root, communicator).unwrap();
        let restored = me.manager.restore_or_initialize().unwrap().unwrap();
        assert!(
            me.weights.iter().all(|&w| w == value(rank, 1)),
            "rank {rank}"
        );
        restored.file_name().unwrap().to_owned()
    });
    assert!(restored.iter().all(|name| name == "ckpt-1"), "{restored:?}");
}

/// Node-local directories that are in fact one directory: the second
/// rank's lock fails, and every rank's open fails with it.
#[test]
fn node_local_ranks_sharing_a_directory_fail_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let opened = on_every_rank(move |communicator| {
        open_with(&root, communicator, Arc::default(), |config| {
            config.set_node_local(true)
        })
        .err()
        .map(|err| err.kind())
    });
    assert!(
        opened.iter().all(|kind| *kind == Some(ErrorKind::Locked)),
        "{opened:?}"
    );
}

/// `should_save` on every rank answers what rank 0 decides: after a save,
/// each rank records the step rank 0 saved.
#[test]
fn should_save_on_every_rank_follows_rank_0s_saves() {
    for node_local in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let answers = on_every_rank(move |communicator| {
            let rank = communicator.rank;
            let own = if node_local {
                root.join(format!("rank-{rank}"))
            } else {
                root.clone()
            };
            let step = Arc::new(AtomicU64::new(0));
            let counter = Arc::clone(&step);
            let mut config = Config::new(&own, MaxToKeep::Last(2)).unwrap();
            config.set_communicator(Some(communicator));
            config.set_coordination_timeout(10.0).unwrap();
            config.set_node_local(node_local);
            config.set_checkpoint_interval(Some(10)).unwrap();
            let callbacks = Callbacks::new()
                .on_save(|prefix, _| {
                    let mut name = prefix.as_os_str().to_owned();
                    name.push(".bin");
                    Ok(fs::write(PathBuf::from(name), b"w")?)
                })
                .step_counter(move || Ok(counter.load(Ordering::SeqCst) as i64));
            let mut manager = CheckpointManager::new(config, callbacks).unwrap();
            let mut answers = Vec::new();
            for now in [0, 5, 10, 15, 25] {
                step.store(now, Ordering::SeqCst);
                let predicted = manager.should_save().unwrap();
                let saved = manager.save(None, true).unwrap().is_some();
                answers.push((predicted, saved));
            }
            answers
        });
        let expected = [
            (true, true),
            (false, false),
            (true, true),
            (false, false),
            (true, true),
        ];
        for (rank, answers) in answers.iter().enumerate() {
            assert_eq!(answers, &expected, "rank {rank}, node-local {node_local}");
        }
    }
}

/// Ranks that ask for different saves (another explicit number, or
/// another `check_interval`) are all refused with the ranks and values
/// named, and nothing is committed; the same save asked by all then goes
/// through.
#[test]
fn ranks_disagreeing_on_the_save_are_refused_on_every_rank() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let results = on_every_rank(move |communicator| {
        let rank = communicator.rank;
        let mut me = open(&root, communicator, Arc::default()).unwrap();
        let number = if rank == 2 { 7 } else { 5 };
        let by_number = me.manager.save(Some(number), true).unwrap_err();
        let by_interval = me.manager.save(Some(5), rank != 1).unwrap_err();
        let agreed = me.manager.save(Some(5), true).unwrap().unwrap();
        (
            (by_number.kind(), by_number.to_string()),
            (by_interval.kind(), by_interval.to_string()),
            agreed,
        )
    });
    for (by_number, by_interval, agreed) in &results {
        assert_eq!(by_number.0, ErrorKind::InvalidArgument, "{}", by_number.1);
        assert_eq!(by_number.1, results[0].0 .1);
        assert!(
            by_number.1.contains("rank 2: checkpoint_number 7")
                && by_number.1.contains("ranks 0, 1, 3: checkpoint_number 5"),
            "{}",
            by_number.1
        );
        assert_eq!(
            by_interval.0,
            ErrorKind::InvalidArgument,
            "{}",
            by_interval.1
        );
        assert!(
            by_interval
                .1
                .contains("rank 1: checkpoint_number 5, check_interval false")
                && by_interval
                    .1
                    .contains("ranks 0, 2, 3: checkpoint_number 5, check_interval true"),
            "{}",
            by_interval.1
        );
        assert!(agreed.ends_with("ckpt-5"), "{}", agreed.display());
    }
    assert_eq!(listed(dir.path()), ["ckpt-5"]);
    assert!(!names(dir.path()).iter().any(|f| f.starts_with("ckpt-7")));
}

/// Read-only ranks whose state file changed under them (the checkpoint
/// they knew as the latest was swept by the writing ranks, whose other
/// checkpoints are of a name the readers do not look for on disk) read it
/// again and restore the new latest, as one reader does.
#[test]
fn read_only_ranks_retry_with_the_state_file_a_writer_changed() {
    let dir = tempfile::tempdir().unwrap();
    let writers = ThreadCommunicator::group(SIZE);
    let readers = ThreadCommunicator::group(SIZE);
    let threads: Vec<_> = writers
        .into_iter()
        .zip(readers)
        .map(|(writer, reader)| {
            let root = dir.path().to_path_buf();
            thread::spawn(move || {
                let rank = writer.rank;
                let mut writing = open_with(&root, writer, Arc::default(), |config| {
                    config.set_checkpoint_name("model").unwrap()
                })
                .unwrap();
                writing.weights.fill(value(rank, 1));
                writing.manager.save(None, true).unwrap().unwrap();
                let mut reading = open_with(&root, reader, Arc::default(), |config| {
                    config.set_read_only(true)
                })
                .unwrap();
                for round in 2..=3 {
                    writing.weights.fill(value(rank, round));
                    writing.manager.save(None, true).unwrap().unwrap();
                }
                let restored = reading.manager.restore_or_initialize().unwrap().unwrap();
                assert!(
                    reading.weights.iter().all(|&w| w == value(rank, 3)),
                    "rank {rank}"
                );
                restored
            })
        })
        .collect();
    for thread in threads {
        let restored = thread.join().unwrap();
        assert!(restored.ends_with("model-3"), "{}", restored.display());
    }
}

/// A bound on waiting for uploads, so that a regression fails, never hangs.
const UPLOADS: Duration = Duration::from_secs(60);

/// Node-local ranks with a remote tier, `<root>/rank-R` and `<root>/remote`
/// (`None`: no remote).
fn open_tiered(root: &Path, communicator: Arc<ThreadCommunicator>, remote: bool) -> Rank {
    let dir = root.join(format!("rank-{}", communicator.rank));
    let remote = remote.then(|| root.join("remote"));
    open_with(&dir, communicator, Arc::default(), |config| {
        config.set_node_local(true);
        config.set_remote_directory(remote.clone()).unwrap();
        if remote.is_some() {
            config.set_remote_max_to_keep(MaxToKeep::Last(2)).unwrap();
        }
    })
    .unwrap()
}

/// Saves checkpoints `rounds` on every rank, each with its own values.
fn save_rounds(rank: u32, me: &mut Rank, rounds: std::ops::RangeInclusive<u32>) {
    for round in rounds {
        me.weights.fill(value(rank, round));
        me.manager.save(Some(u64::from(round)), false).unwrap();
    }
}

/// Restores on every rank of `root` (tiered) and returns the names
/// restored, after checking each rank's values of `round`.
fn restore_tiered(root: &Path, round: u32) -> Vec<String> {
    let root = root.to_path_buf();
    on_every_rank(move |communicator| {
        let rank = communicator.rank;
        let mut me = open_tiered(&root, communicator, true);
        let restored = me.manager.restore_or_initialize().unwrap().unwrap();
        assert!(
            me.weights.iter().all(|&w| w == value(rank, round)),
            "rank {rank}"
        );
        restored.file_name().unwrap().to_str().unwrap().to_owned()
    })
}

/// Node-local ranks upload complete checkpoints: every rank's files and
/// one manifest of them in the remote, committed by rank 0, the ranks'
/// pieces removed; a rank whose directory is lost downloads its pieces
/// while the others read locally, and every rank restores the same number
/// and bytes. The remote alone restores, as a shared directory.
#[test]
fn node_local_ranks_upload_whole_checkpoints_and_a_lost_rank_takes_its_pieces_back() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    on_every_rank(move |communicator| {
        let rank = communicator.rank;
        let mut me = open_tiered(&root, communicator, true);
        save_rounds(rank, &mut me, 1..=3);
        me.manager.wait_until_finished(Some(UPLOADS)).unwrap();
        let status = me.manager.remote_status().unwrap();
        assert_eq!((status.newest_uploaded, status.pending), (Some(3), 0));
    });
    let remote = dir.path().join("remote");
    assert_eq!(listed(&remote), ["ckpt-2", "ckpt-3"]);
    let mut expected = vec!["checkpoint".to_owned(), "checkpoint.lock".to_owned()];
    for number in [2, 3] {
        expected.push(format!("ckpt-{number}.ckpt-manifest.json"));
        for rank in 0..SIZE {
            for suffix in ["safetensors", "step"] {
                expected.push(format!(
                    "ckpt-{number}.rank-{rank:05}-of-{SIZE:05}.{suffix}"
                ));
            }
        }
    }
    expected.sort();
    assert_eq!(names(&remote), expected);
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(remote.join("ckpt-3.ckpt-manifest.json")).unwrap())
            .unwrap();
    assert_eq!(
        manifest["files"].as_array().unwrap().len(),
        2 * SIZE as usize
    );
    assert_eq!(manifest["world_size"], SIZE);
    let boxes = manifest["tensors"][0]["boxes"].as_array().unwrap();
    let ranks: Vec<u64> = boxes.iter().map(|b| b["rank"].as_u64().unwrap()).collect();
    assert_eq!(ranks, [0, 1, 2, 3]);
    let remote_shard = remote.join(format!("ckpt-3.rank-00002-of-{SIZE:05}.safetensors"));
    let saved_shard = fs::read(&remote_shard).unwrap();

    let lost = dir.path().join("rank-2");
    fs::remove_dir_all(&lost).unwrap();
    let before: Vec<Vec<u8>> = [0, 1, 3]
        .iter()
        .map(|rank| fs::read(dir.path().join(format!("rank-{rank}/checkpoint"))).unwrap())
        .collect();
    let restored = restore_tiered(dir.path(), 3);
    assert!(restored.iter().all(|name| name == "ckpt-3"), "{restored:?}");
    let refilled = lost.join(format!("ckpt-3.rank-00002-of-{SIZE:05}.safetensors"));
    assert_eq!(fs::read(refilled).unwrap(), saved_shard);
    assert_eq!(listed(&lost), ["ckpt-3"]);
    let mut own_files = names(&lost);
    own_files.retain(|name| name.starts_with("ckpt-"));
    assert_eq!(
        own_files,
        [
            "ckpt-3.ckpt-manifest.json".to_owned(),
            format!("ckpt-3.rank-00002-of-{SIZE:05}.safetensors"),
            format!("ckpt-3.rank-00002-of-{SIZE:05}.step"),
        ]
    );
    // The others read locally: their state files are as they were.
    for (rank, before) in [0, 1, 3].iter().zip(before) {
        let after = fs::read(dir.path().join(format!("rank-{rank}/checkpoint"))).unwrap();
        assert_eq!(after, before, "rank {rank}");
    }

    // The remote alone: a shared directory of 4 ranks' files.
    on_every_rank(move |communicator| {
        let rank = communicator.rank;
        let mut me = open_with(&remote, communicator, Arc::default(), |config| {
            config.set_read_only(true)
        })
        .unwrap();
        let restored = me.manager.restore_or_initialize().unwrap().unwrap();
        assert!(restored.ends_with("ckpt-3"));
        assert!(
            me.weights.iter().all(|&w| w == value(rank, 3)),
            "rank {rank}"
        );
    });
}

/// A checkpoint that some rank lost and the remote never got is not
/// restored: every rank agrees on the newest one each has locally or can
/// take from the remote (rank 2 downloads it, the others read it locally).
#[test]
fn node_local_ranks_agree_on_the_newest_checkpoint_every_rank_can_restore() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    on_every_rank(move |communicator| {
        let rank = communicator.rank;
        let mut me = open_tiered(&root, Arc::clone(&communicator), true);
        save_rounds(rank, &mut me, 1..=3);
        me.manager.wait_until_finished(Some(UPLOADS)).unwrap();
        drop(me);
        // Checkpoint 4 is saved without the remote: it never gets there.
        let mut me = open_tiered(&root, communicator, false);
        save_rounds(rank, &mut me, 4..=4);
    });
    fs::remove_dir_all(dir.path().join("rank-2")).unwrap();
    let restored = restore_tiered(dir.path(), 3);
    assert!(restored.iter().all(|name| name == "ckpt-3"), "{restored:?}");
    assert_eq!(listed(&dir.path().join("rank-2")), ["ckpt-3"]);
    assert_eq!(listed(&dir.path().join("rank-1")), ["ckpt-3", "ckpt-4"]);
}

/// Ranks sharing a directory: rank 0 uploads every rank's files (its
/// manifest lists them all); with the directory lost, or one rank's file
/// of it, rank 0 downloads the whole checkpoint and every rank restores
/// its own values from it.
#[test]
fn ranks_sharing_a_directory_upload_through_rank_0_and_restore_from_the_remote() {
    let dir = tempfile::tempdir().unwrap();
    let (local, remote) = (dir.path().join("local"), dir.path().join("remote"));
    let open_shared = move |local: &Path, remote: &Path, communicator| {
        let remote = remote.to_path_buf();
        open_with(local, communicator, Arc::default(), move |config| {
            config.set_remote_directory(Some(remote)).unwrap()
        })
        .unwrap()
    };
    // Every rank restores checkpoint 3, with its own values.
    let restore_checkpoint_3 = || {
        let (l, r) = (local.clone(), remote.clone());
        let restored = on_every_rank(move |communicator| {
            let rank = communicator.rank;
            let mut me = open_shared(&l, &r, communicator);
            let restored = me.manager.restore_or_initialize().unwrap().unwrap();
            assert!(
                me.weights.iter().all(|&w| w == value(rank, 3)),
                "rank {rank}"
            );
            restored
        });
        assert!(
            restored.iter().all(|p| p.ends_with("ckpt-3")),
            "{restored:?}"
        );
    };
    let (l, r) = (local.clone(), remote.clone());
    let statuses = on_every_rank(move |communicator| {
        let rank = communicator.rank;
        let mut me = open_shared(&l, &r, communicator);
        save_rounds(rank, &mut me, 1..=3);
        me.manager.wait_until_finished(Some(UPLOADS)).unwrap();
        me.manager
            .remote_status()
            .map(|status| status.newest_uploaded)
    });
    assert_eq!(statuses, [Some(Some(3)), None, None, None]);
    assert_eq!(listed(&remote), ["ckpt-2", "ckpt-3"]);
    fs::remove_dir_all(&local).unwrap();
    restore_checkpoint_3();
    assert_eq!(listed(&local), ["ckpt-3"]);

    // One rank's file lost from the shared directory: rank 0 downloads
    // the checkpoint again for it.
    let shard = format!("ckpt-3.rank-00002-of-{SIZE:05}.safetensors");
    fs::remove_file(local.join(&shard)).unwrap();
    restore_checkpoint_3();
    assert_eq!(
        fs::read(local.join(&shard)).unwrap(),
        fs::read(remote.join(&shard)).unwrap()
    );
}

/// Rank 0 commits nothing remotely until every rank's pieces are there:
/// with rank 2 uploading nothing, saves go on, the others' pieces wait in
/// the remote, and the remote lists no checkpoint.
#[test]
fn the_remote_commits_no_checkpoint_without_every_ranks_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let statuses = on_every_rank(move |communicator| {
        let rank = communicator.rank;
        let mut me = open_tiered(&root, communicator, rank != 2);
        save_rounds(rank, &mut me, 1..=2);
        let waited = match rank {
            0 => me
                .manager
                .wait_until_finished(Some(Duration::from_millis(300))),
            _ => me.manager.wait_until_finished(Some(UPLOADS)),
        };
        let status = me.manager.remote_status();
        (
            waited.is_ok(),
            status.map(|s| (s.newest_uploaded, s.pending)),
        )
    });
    assert_eq!(
        statuses,
        [
            (false, Some((None, 2))),
            (true, Some((Some(2), 0))),
            (true, None),
            (true, Some((Some(2), 0))),
        ]
    );
    let remote = dir.path().join("remote");
    assert!(listed(&remote).is_empty());
    let mut parts = names(&remote);
    parts.retain(|name| name.ends_with(".ckpt-part"));
    let expected: Vec<String> = [1, 2]
        .iter()
        .flat_map(|number| {
            [1, 3].map(|rank| format!("ckpt-{number}.rank-{rank:05}-of-{SIZE:05}.ckpt-part"))
        })
        .collect();
    assert_eq!(parts, expected);
}

/// The same over object storage (moto): the bucket holds whole checkpoints
/// and no rank's pieces once rank 0 committed them, no multipart upload is
/// left, and a lost rank's pieces come back from the bucket.
#[cfg(feature = "s3")]
#[test]
fn node_local_ranks_upload_to_object_storage_and_a_lost_rank_takes_its_pieces_back() {
    use support::s3::{storage_config, Bucket};
    let bucket = Arc::new(Bucket::new("ranks-tiers"));
    let dir = tempfile::tempdir().unwrap();
    let open_s3 = {
        let bucket = Arc::clone(&bucket);
        move |root: &Path, communicator: Arc<ThreadCommunicator>| {
            let (url, endpoint) = (bucket.url("run"), bucket.endpoint.clone());
            let local = root.join(format!("rank-{}", communicator.rank));
            let shared: Arc<dyn ckpt_manager::Communicator> = communicator.clone();
            open_with(&local, communicator, Arc::default(), move |config| {
                let mut s3 = storage_config(&url, &endpoint, MaxToKeep::Last(2));
                s3.set_directory(config.directory()).unwrap();
                s3.set_communicator(Some(shared));
                s3.set_coordination_timeout(10.0).unwrap();
                s3.set_node_local(true);
                s3.set_remote_directory(Some(url)).unwrap();
                *config = s3;
            })
            .unwrap()
        }
    };
    let open_s3 = Arc::new(open_s3);
    let (root, open) = (dir.path().to_path_buf(), Arc::clone(&open_s3));
    on_every_rank(move |communicator| {
        let rank = communicator.rank;
        let mut me = open(&root, communicator);
        save_rounds(rank, &mut me, 1..=3);
        me.manager.wait_until_finished(Some(UPLOADS)).unwrap();
    });
    let mut expected = std::collections::BTreeSet::from([
        "run/checkpoint".to_owned(),
        "run/checkpoint.lease".to_owned(),
    ]);
    for number in [2, 3] {
        expected.insert(format!("run/ckpt-{number}.ckpt-manifest.json"));
        for rank in 0..SIZE {
            for suffix in ["safetensors", "step"] {
                expected.insert(format!(
                    "run/ckpt-{number}.rank-{rank:05}-of-{SIZE:05}.{suffix}"
                ));
            }
        }
    }
    assert_eq!(bucket.keys(), expected);
    assert!(bucket.incomplete_uploads().is_empty());

    fs::remove_dir_all(dir.path().join("rank-2")).unwrap();
    let (root, open) = (dir.path().to_path_buf(), Arc::clone(&open_s3));
    let restored = on_every_rank(move |communicator| {
        let rank = communicator.rank;
        let mut me = open(&root, communicator);
        let restored = me.manager.restore_or_initialize().unwrap().unwrap();
        assert!(
            me.weights.iter().all(|&w| w == value(rank, 3)),
            "rank {rank}"
        );
        restored.file_name().unwrap().to_str().unwrap().to_owned()
    });
    assert!(restored.iter().all(|name| name == "ckpt-3"), "{restored:?}");
    let shard = format!("ckpt-3.rank-00002-of-{SIZE:05}.safetensors");
    assert_eq!(
        fs::read(dir.path().join("rank-2").join(&shard)).unwrap(),
        bucket.get(&format!("run/{shard}"))
    );
}

/// A number saved again is uploaded again by every rank: with every local
/// directory lost, each rank restores the second save's values from the
/// remote.
#[test]
fn node_local_ranks_upload_a_number_saved_again() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    on_every_rank(move |communicator| {
        let rank = communicator.rank;
        let mut me = open_tiered(&root, communicator, true);
        save_rounds(rank, &mut me, 1..=1);
        me.manager.wait_until_finished(Some(UPLOADS)).unwrap();
        me.weights.fill(value(rank, 2));
        me.manager.save(Some(1), false).unwrap();
        me.manager.wait_until_finished(Some(UPLOADS)).unwrap();
    });
    for rank in 0..SIZE {
        fs::remove_dir_all(dir.path().join(format!("rank-{rank}"))).unwrap();
    }
    let root = dir.path().to_path_buf();
    let restored = on_every_rank(move |communicator| {
        let rank = communicator.rank;
        let mut me = open_tiered(&root, communicator, true);
        let restored = me.manager.restore_or_initialize().unwrap().unwrap();
        assert!(
            me.weights.iter().all(|&w| w == value(rank, 2)),
            "rank {rank}"
        );
        restored.file_name().unwrap().to_str().unwrap().to_owned()
    });
    assert!(restored.iter().all(|name| name == "ckpt-1"), "{restored:?}");
}
