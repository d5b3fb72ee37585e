//! What an asynchronous save costs the trainer, in one run:
//! (a) the time `save_async` blocks for a large registered state, against a
//!     plain memcpy of the same bytes into a buffer allocated and touched
//!     beforehand, alternating which goes first;
//! (b) the throughput of a training loop whose step has a fixed cost, with
//!     no saves, with `save_async` and with `save` every K steps, the three
//!     in an order rotated by one each round.
//!
//! `cargo bench --bench async_save` (or `make bench-async`). Environment:
//! `CKPT_BENCH_MIB` (default 1024) and `CKPT_BENCH_TENSORS` (16): the
//! registered f32 state; `CKPT_BENCH_ROUNDS` (10, made even): rounds of (a);
//! `CKPT_BENCH_STEP_MS` (5): the step's cost, calibrated once;
//! `CKPT_BENCH_SAVE_EVERY` (1200): K; `CKPT_BENCH_LOOP_SAVES` (1): saves per
//! loop run; `CKPT_BENCH_LOOP_ROUNDS` (6, made a multiple of 3): rounds of
//! (b); `CKPT_BENCH_DIR` (target/bench-async, removed at the end): where
//! checkpoints go. The manager keeps one checkpoint, so each save also
//! deletes one.
//!
//! The default directory is on the disk, where checkpoints go in practice
//! and where a synchronous save waits for the device. On a tmpfs a save's
//! cost is all CPU work (copies and CRC32C), which a background save can
//! hide only on a core the trainer does not need: the worst case for
//! `save_async`, and a machine whose cores are busy with other work shows
//! it (the CPU pressure printed with each table tells).
//!
//! Every timed step starts with no background save in flight (the wait is
//! outside the timing), so (a) measures the snapshot and not a wait. A loop
//! run saves at the start of each of its intervals of K steps and counts the
//! background saves still running at the next save or at its end: then K is
//! too small for the write, and the figures would mix in waiting. Losses are
//! medians of each round's loss against that round's loop without saves, so
//! that a load that drifts between rounds cancels out.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ckpt_manager::{Callbacks, CheckpointManager, Config, DType, Error, MaxToKeep, SaveArgs};

mod common;

use common::{env_number, millis};

/// Three significant digits, at least one decimal.
fn shown_ms(ms: f64) -> String {
    let decimals = (2 - ms.abs().log10().floor() as i32).max(1) as usize;
    format!("{ms:.decimals$}")
}

fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    }
}

fn as_bytes(values: &[f32]) -> &[u8] {
    // SAFETY: any f32 is 4 initialized bytes; the length covers the slice.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast(), std::mem::size_of_val(values)) }
}

/// How busy the rest of the machine was over a phase: the share of its
/// time in which some task waited for a CPU (Linux's pressure stall
/// information; `None` elsewhere). With the bench's two threads on two
/// cores, the waiting is for other work.
struct CpuPressure {
    stalled_us: Option<u64>,
    start: Instant,
}

impl CpuPressure {
    fn start() -> Self {
        CpuPressure {
            stalled_us: Self::stalled_us(),
            start: Instant::now(),
        }
    }

    fn stalled_us() -> Option<u64> {
        let text = fs::read_to_string("/proc/pressure/cpu").ok()?;
        let some = text.lines().find(|line| line.starts_with("some "))?;
        some.split_whitespace()
            .find_map(|field| field.strip_prefix("total="))?
            .parse()
            .ok()
    }

    fn describe(&self) -> String {
        let elapsed_us = self.start.elapsed().as_secs_f64() * 1e6;
        match (self.stalled_us, Self::stalled_us()) {
            (Some(before), Some(after)) => format!(
                "; CPU pressure {:.0}%",
                100.0 * (after - before) as f64 / elapsed_us
            ),
            _ => String::new(),
        }
    }
}

/// The benchmark's directory, removed when dropped (also on a panic).
struct BenchDirectory(PathBuf);

impl BenchDirectory {
    /// `CKPT_BENCH_DIR`, or `target/bench-async` of this tree; with the
    /// kind of file system it is on.
    fn create() -> (Self, &'static str) {
        let path = std::env::var_os("CKPT_BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-async"));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        let kind = if is_tmpfs(&path) { "tmpfs" } else { "disk" };
        (BenchDirectory(path), kind)
    }
}

impl Drop for BenchDirectory {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(target_os = "linux")]
fn is_tmpfs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(name) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a NUL-terminated path and a zeroed struct for statfs to fill.
    unsafe {
        let mut stats: libc::statfs = std::mem::zeroed();
        libc::statfs(name.as_ptr(), &mut stats) == 0 && stats.f_type == libc::TMPFS_MAGIC
    }
}

#[cfg(not(target_os = "linux"))]
fn is_tmpfs(_path: &Path) -> bool {
    false
}

/// Copies the state into `destination`, laid end to end as a snapshot is.
fn plain_copy(state: &[Vec<f32>], destination: &mut [u8]) -> Duration {
    let start = Instant::now();
    let mut offset = 0;
    for tensor in state {
        let bytes = as_bytes(tensor);
        destination[offset..offset + bytes.len()].copy_from_slice(bytes);
        offset += bytes.len();
    }
    std::hint::black_box(&mut *destination);
    start.elapsed()
}

/// The first copy into a fresh allocation, as the first snapshot makes it:
/// what page faults add to a copy.
fn fresh_copy(state: &[Vec<f32>]) -> Duration {
    let start = Instant::now();
    let total = state.iter().map(|tensor| tensor.len() * 4).sum();
    let mut destination = Vec::with_capacity(total);
    for tensor in state {
        destination.extend_from_slice(as_bytes(tensor));
    }
    std::hint::black_box(&mut destination);
    let elapsed = start.elapsed();
    drop(destination);
    elapsed
}

fn args() -> SaveArgs {
    SaveArgs {
        check_interval: false,
        ..SaveArgs::default()
    }
}

fn timed_save_async(manager: &mut CheckpointManager) -> Duration {
    let start = Instant::now();
    manager.save_async(&args()).unwrap().expect("saved");
    start.elapsed()
}

/// The step's fixed work: `passes` multiply-adds over `weights`, which
/// fit in the cache, so the step costs CPU and not memory bandwidth.
fn train_step(weights: &mut [f32], passes: usize) {
    for _ in 0..passes {
        for weight in weights.iter_mut() {
            *weight = *weight * 0.999_9 + 1e-4;
        }
        std::hint::black_box(&mut *weights);
    }
}

/// The passes that make one step last about `step_ms`: the fastest of 21
/// trials of about a step each, after an estimate. This machine's speed
/// drifts (by up to 1.5x here); a slower spell makes steps longer, which
/// only keeps the background writes further apart.
fn calibrate(weights: &mut [f32], step_ms: f64) -> usize {
    let mut ms_per_pass = |passes: usize| {
        let start = Instant::now();
        train_step(weights, passes);
        millis(start.elapsed()) / passes as f64
    };
    let estimate = ((step_ms / ms_per_pass(100)) as usize).max(1);
    let trials: Vec<f64> = (0..21).map(|_| ms_per_pass(estimate)).collect();
    let fastest = trials.into_iter().fold(f64::INFINITY, f64::min);
    ((step_ms / fastest).round() as usize).max(1)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Saving {
    None,
    Async,
    Sync,
}

impl Saving {
    fn call(self) -> &'static str {
        match self {
            Saving::None => "no saves",
            Saving::Async => "save_async",
            Saving::Sync => "save",
        }
    }
}

struct LoopRun {
    steps: usize,
    seconds: f64,
    /// Background saves still running at the next save or at the end.
    overlaps: usize,
    blocked_ms: Vec<f64>,
}

impl LoopRun {
    fn steps_per_second(&self) -> f64 {
        self.steps as f64 / self.seconds
    }
}

/// `saves` intervals of `every` steps, each starting with a save.
fn training_loop(
    manager: &mut CheckpointManager,
    state: &mut [Vec<f32>],
    weights_len: usize,
    passes: usize,
    every: usize,
    saves: usize,
    saving: Saving,
) -> LoopRun {
    manager.wait_until_finished(None).unwrap();
    let (mut overlaps, mut blocked_ms) = (0, Vec::new());
    let start = Instant::now();
    for step in 0..every * saves {
        if step % every == 0 && saving != Saving::None {
            if let Err(Error::Timeout) = manager.wait_until_finished(Some(Duration::ZERO)) {
                overlaps += 1;
            }
            let save_start = Instant::now();
            match saving {
                Saving::Async => manager.save_async(&args()),
                _ => manager.save_with(&args()),
            }
            .unwrap()
            .expect("saved");
            blocked_ms.push(millis(save_start.elapsed()));
        }
        train_step(&mut state[0][..weights_len], passes);
    }
    if let Err(Error::Timeout) = manager.wait_until_finished(Some(Duration::ZERO)) {
        overlaps += 1;
    }
    let elapsed = start.elapsed();
    manager.wait_until_finished(None).unwrap();
    LoopRun {
        steps: every * saves,
        seconds: elapsed.as_secs_f64(),
        overlaps,
        blocked_ms,
    }
}

fn main() {
    let total_mib = env_number("CKPT_BENCH_MIB", 1024);
    let count = env_number("CKPT_BENCH_TENSORS", 16);
    // Even, so that each side goes first equally often.
    let rounds = env_number("CKPT_BENCH_ROUNDS", 10).next_multiple_of(2);
    let step_ms = env_number("CKPT_BENCH_STEP_MS", 5) as f64;
    let every = env_number("CKPT_BENCH_SAVE_EVERY", 1200);
    let loop_saves = env_number("CKPT_BENCH_LOOP_SAVES", 1);
    let sides = [Saving::None, Saving::Async, Saving::Sync];
    // Each loop runs first, second and third equally often.
    let loop_rounds = env_number("CKPT_BENCH_LOOP_ROUNDS", 6).next_multiple_of(sides.len());
    let (directory, filesystem) = BenchDirectory::create();

    let floats = total_mib * (1 << 20) / count / 4;
    let total = floats * 4 * count;
    let mut state: Vec<Vec<f32>> = (0..count)
        .map(|index| (0..floats).map(|i| (i + index) as f32).collect())
        .collect();
    let config = Config::new(directory.0.join("checkpoints"), MaxToKeep::Last(1)).unwrap();
    let mut manager = CheckpointManager::new(config, Callbacks::new()).unwrap();
    for (index, tensor) in state.iter_mut().enumerate() {
        // SAFETY: `state` outlives the manager (dropped first below) and
        // is not resized; it changes only between the manager's calls.
        unsafe {
            manager
                .register_tensor(
                    &format!("layer{index:02}.weight"),
                    DType::F32,
                    &[floats as u64],
                    tensor.as_mut_ptr().cast(),
                )
                .unwrap();
        }
    }
    println!(
        "state: {count} f32 tensors, {:.2} GiB; checkpoints in {} ({filesystem})",
        total as f64 / (1u64 << 30) as f64,
        directory.0.display()
    );

    // (a) The snapshot against memcpy, after one save that allocates the
    // snapshot's buffer and one copy that touches the plain buffer.
    let pressure = CpuPressure::start();
    let fresh = fresh_copy(&state);
    let first_save = timed_save_async(&mut manager);
    manager.wait_until_finished(None).unwrap();
    let mut copy = vec![1u8; total];
    plain_copy(&state, &mut copy);
    println!(
        "first save_async {:.1} ms (allocates the snapshot); a copy into a fresh buffer {:.1} ms",
        millis(first_save),
        millis(fresh)
    );
    let (mut copies, mut snapshots, mut writes) = (vec![], vec![], vec![]);
    let mut save_and_wait = |manager: &mut CheckpointManager| {
        snapshots.push(millis(timed_save_async(manager)));
        let start = Instant::now();
        manager.wait_until_finished(None).unwrap();
        writes.push(millis(start.elapsed()));
    };
    for round in 0..rounds {
        state[round % count][0] = round as f32;
        if round % 2 == 0 {
            copies.push(millis(plain_copy(&state, &mut copy)));
            save_and_wait(&mut manager);
        } else {
            save_and_wait(&mut manager);
            copies.push(millis(plain_copy(&state, &mut copy)));
        }
    }
    drop(copy);
    let snapshot_pressure = pressure.describe();
    for round in 0..rounds {
        println!(
            "round {round}: memcpy {:.1} ms, save_async blocks {:.1} ms, then its write and commit {:.0} ms",
            copies[round], snapshots[round], writes[round]
        );
    }

    // (b) The training loop.
    let weights_len = floats.min(16 * 1024);
    let passes = calibrate(&mut state[0][..weights_len], step_ms);
    println!(
        "\ntraining loop: a step of {step_ms} ms ({passes} passes over {} KiB of tensor 0), \
         a save every {every} steps (~{:.1} s), {loop_saves} per run",
        weights_len * 4 / 1024,
        every as f64 * step_ms / 1000.0
    );
    let mut runs: Vec<Vec<LoopRun>> = sides.iter().map(|_| Vec::new()).collect();
    let pressure = CpuPressure::start();
    for round in 0..loop_rounds {
        let mut line = format!("round {round}:");
        for offset in 0..sides.len() {
            let side = (round + offset) % sides.len();
            let run = training_loop(
                &mut manager,
                &mut state,
                weights_len,
                passes,
                every,
                loop_saves,
                sides[side],
            );
            line += &format!(
                " {} {:.1} steps/s",
                sides[side].call(),
                run.steps_per_second()
            );
            if !run.blocked_ms.is_empty() {
                line += &format!(" (saves block {:.0} ms)", median(&run.blocked_ms));
            }
            if run.overlaps > 0 {
                line += &format!(" ({} overlapping)", run.overlaps);
            }
            line += ";";
            runs[side].push(run);
        }
        println!("{}", line.trim_end_matches(';'));
    }
    let loop_pressure = pressure.describe();
    drop(manager);

    println!();
    println!(
        "| (a) {} MiB, {rounds} rounds, medians{snapshot_pressure} | ms | / memcpy |",
        total >> 20
    );
    println!("|---|---|---|");
    let copy_ms = median(&copies);
    let rows = [
        ("memcpy into a touched buffer", copy_ms),
        ("**save_async blocks**", median(&snapshots)),
        (
            "first save_async (allocates the snapshot)",
            millis(first_save),
        ),
        ("a copy into a fresh buffer (page faults)", millis(fresh)),
    ];
    for (what, ms) in rows {
        println!("| {what} | {} | {:.2}x |", shown_ms(ms), ms / copy_ms);
    }
    println!(
        "| the background write and commit, waited for | {} | |",
        shown_ms(median(&writes))
    );
    if loop_rounds == 0 {
        return;
    }
    let throughput = |side: usize| {
        let values: Vec<f64> = runs[side].iter().map(|r| r.steps_per_second()).collect();
        median(&values)
    };
    println!();
    println!(
        "| (b) {loop_rounds} rounds, medians{loop_pressure} | steps/s | loss against no saves \
         | time lost per save | of which the call blocks |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| no saves ({:.0}% of the calibrated step's rate) | {:.1} | | | |",
        100.0 * throughput(0) * step_ms / 1000.0,
        throughput(0)
    );
    for side in 1..sides.len() {
        // Each against the run without saves of its own round.
        let paired = runs[side].iter().zip(&runs[0]);
        let losses: Vec<f64> = paired
            .clone()
            .map(|(run, plain)| 100.0 * (1.0 - run.steps_per_second() / plain.steps_per_second()))
            .collect();
        let lost_ms: Vec<f64> = paired
            .map(|(run, plain)| 1000.0 * (run.seconds - plain.seconds) / loop_saves as f64)
            .collect();
        let blocked: Vec<f64> = runs[side]
            .iter()
            .flat_map(|r| r.blocked_ms.iter().copied())
            .collect();
        println!(
            "| {} every {every} steps | {:.1} | **{:.1}%** | {:.0} ms | {:.0} ms |",
            sides[side].call(),
            throughput(side),
            median(&losses),
            median(&lost_ms),
            median(&blocked),
        );
    }
    let overlaps: usize = runs.iter().flatten().map(|r| r.overlaps).sum();
    if overlaps > 0 {
        println!(
            "\nwarning: {overlaps} background saves were still running at the next save or at \
             the end of their run: raise CKPT_BENCH_SAVE_EVERY"
        );
    }
}
