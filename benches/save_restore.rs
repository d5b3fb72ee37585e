//! Saving and restoring a large state with the built-in saver, against a
//! plain sequential write+fsync and read of the same bytes, in one run.
//!
//! `cargo bench --bench save_restore` (or `make bench`). Environment:
//! `CKPT_BENCH_MIB` (default 1024), `CKPT_BENCH_TENSORS` (64),
//! `CKPT_BENCH_ROUNDS` (6, made even), `CKPT_BENCH_PAUSE_MS` (2000, after a
//! sync before each timed step), `CKPT_BENCH_DIR` (target/bench). Reads start
//! from a cold page cache for both sides (posix_fadvise DONTNEED, Linux
//! only). Both sides write a new file each round, the order alternates
//! between rounds, and deleting old files happens outside the timings (the
//! manager keeps everything, so no sweep runs inside a save).

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ckpt_manager::{Callbacks, CheckpointManager, Config, DType, MaxToKeep};

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Drops a file's clean pages from the page cache.
#[cfg(target_os = "linux")]
fn evict(path: &Path) {
    use std::os::unix::io::AsRawFd;
    let file = File::open(path).unwrap();
    // SAFETY: a valid descriptor; the advice has no memory effects.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise failed");
}

/// Elsewhere (macOS has no posix_fadvise) reads may start from a warm cache.
#[cfg(not(target_os = "linux"))]
fn evict(_path: &Path) {}

fn plain_write(path: &Path, buffers: &[Vec<u8>]) -> Duration {
    let start = Instant::now();
    let mut file = File::create(path).unwrap();
    for buffer in buffers {
        file.write_all(buffer).unwrap();
    }
    file.sync_all().unwrap();
    File::open(path.parent().unwrap())
        .unwrap()
        .sync_all()
        .unwrap();
    start.elapsed()
}

fn plain_read(path: &Path, buffers: &mut [Vec<u8>]) -> Duration {
    let start = Instant::now();
    let mut file = File::open(path).unwrap();
    for buffer in buffers {
        file.read_exact(buffer).unwrap();
    }
    start.elapsed()
}

/// Flushes what earlier steps left dirty and lets the disk drain, so one
/// step's write-back does not land in the next one's timing.
fn settle() {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    std::thread::sleep(Duration::from_secs_f64(
        env_number("CKPT_BENCH_PAUSE_MS", 2000) as f64 / 1000.0,
    ));
}

fn fill(buffers: &mut [Vec<u8>], round: usize) {
    for (index, buffer) in buffers.iter_mut().enumerate() {
        let seed = (index * 31 + round * 7) as u8;
        buffer
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = seed.wrapping_add(i as u8));
    }
}

fn main() {
    let total_mib = env_number("CKPT_BENCH_MIB", 1024);
    let count = env_number("CKPT_BENCH_TENSORS", 64);
    // Even, so that each side goes first equally often.
    let rounds = env_number("CKPT_BENCH_ROUNDS", 6).next_multiple_of(2);
    let root = std::env::var_os("CKPT_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench"));
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root).unwrap();
    let tensor_bytes = total_mib * (1 << 20) / count;
    let total = (tensor_bytes * count) as f64;

    // The manager's buffers are registered once; the plain side gets its own.
    let mut state: Vec<Vec<u8>> = (0..count).map(|_| vec![0u8; tensor_bytes]).collect();
    let mut plain: Vec<Vec<u8>> = (0..count).map(|_| vec![0u8; tensor_bytes]).collect();
    let config = Config::new(root.join("checkpoints"), MaxToKeep::All).unwrap();
    let mut manager = CheckpointManager::new(config, Callbacks::new()).unwrap();
    for (index, buffer) in state.iter_mut().enumerate() {
        let shape = [(tensor_bytes / 4) as u64];
        // SAFETY: `state` outlives the manager's use below and is not resized.
        unsafe {
            manager
                .register_tensor(
                    &format!("layer{index:02}.weight"),
                    DType::F32,
                    &shape,
                    buffer.as_mut_ptr(),
                )
                .unwrap();
        }
    }

    println!(
        "state: {count} tensors of {:.1} MiB = {:.2} GiB; {rounds} rounds; directory {}",
        tensor_bytes as f64 / (1 << 20) as f64,
        total / (1u64 << 30) as f64,
        root.display()
    );
    let (mut plain_writes, mut plain_reads, mut saves, mut restores) =
        (vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        fill(&mut state, round);
        fill(&mut plain, round);
        let expected: Vec<u32> = state.iter().map(|b| crc32c::crc32c(b)).collect();
        let plain_path = root.join(format!("plain-{round}.bin"));
        let mut prefix = PathBuf::new();
        let mut timed_save = |manager: &mut CheckpointManager| {
            settle();
            let start = Instant::now();
            prefix = manager.save(None, true).unwrap().unwrap();
            start.elapsed()
        };
        let plain_first = round % 2 == 0;
        if plain_first {
            settle();
            plain_writes.push(plain_write(&plain_path, &plain));
            saves.push(timed_save(&mut manager));
        } else {
            saves.push(timed_save(&mut manager));
            settle();
            plain_writes.push(plain_write(&plain_path, &plain));
        }

        let tensor_file = PathBuf::from(format!("{}.safetensors", prefix.display()));
        evict(&plain_path);
        evict(&tensor_file);
        state.iter_mut().for_each(|b| b.fill(0));
        let timed_restore = |manager: &mut CheckpointManager| {
            let start = Instant::now();
            manager.restore_or_initialize().unwrap();
            start.elapsed()
        };
        if plain_first {
            settle();
            plain_reads.push(plain_read(&plain_path, &mut plain));
            settle();
            restores.push(timed_restore(&mut manager));
        } else {
            settle();
            restores.push(timed_restore(&mut manager));
            settle();
            plain_reads.push(plain_read(&plain_path, &mut plain));
        }
        let restored: Vec<u32> = state.iter().map(|b| crc32c::crc32c(b)).collect();
        assert_eq!(
            restored, expected,
            "the restored state differs from the saved one"
        );
        fs::remove_file(&plain_path).unwrap();
        ckpt_manager::remove_checkpoint(&prefix).unwrap();
        println!(
            "round {round}: plain write+fsync {:.2} s, save {:.2} s, plain read {:.2} s, restore {:.2} s",
            plain_writes[round].as_secs_f64(),
            saves[round].as_secs_f64(),
            plain_reads[round].as_secs_f64(),
            restores[round].as_secs_f64()
        );
    }
    let rate = |d: Duration| total * rounds as f64 / d.as_secs_f64() / (1 << 20) as f64;
    let sum = |values: &[Duration]| values.iter().sum::<Duration>();
    let (plain_write, save) = (sum(&plain_writes), sum(&saves));
    let (plain_read, restore) = (sum(&plain_reads), sum(&restores));
    println!();
    println!("| over {rounds} rounds | plain | ckpt-manager | ckpt-manager / plain |");
    println!("|---|---|---|---|");
    println!(
        "| save (write + fsync) | {:.0} MiB/s | {:.0} MiB/s | {:.0}% |",
        rate(plain_write),
        rate(save),
        100.0 * plain_write.as_secs_f64() / save.as_secs_f64()
    );
    println!(
        "| restore (cold read) | {:.0} MiB/s | {:.0} MiB/s | {:.0}% |",
        rate(plain_read),
        rate(restore),
        100.0 * plain_read.as_secs_f64() / restore.as_secs_f64()
    );
    drop(manager);
    let _ = fs::remove_dir_all(&root);
}
