//! The cost of a commit, against what the same disk does by hand in the
//! same run: one process prints one JSON line per result on stdout.
//! `scripts/bench-commit` (`make bench-commit`) runs the `floor`, `tensor`
//! and `big` scenarios and counts the syscalls of saves under strace; the
//! file still builds in older trees, so two designs can be compared by
//! running each tree's build of it (`CKPT_BENCH_SIDE` labels the lines).
//!
//! Only the public API both designs share is used: `Config::new`,
//! `MaxToKeep`, `Callbacks::new().on_save(..).log(..)`,
//! `CheckpointManager::new` and `save(None, false)`. Every checkpoint
//! directory a design opens was written through that same design (except
//! the `open.tf_*` ones, which are laid out as TensorFlow writes them).
//!
//! Scenarios (`CKPT_BENCH_SCENARIOS`, comma-separated, default all):
//! - `floor`: a durable save whose callback writes 16 bytes, keep-all (no
//!   sweep), against the minimal durable sequence by hand on the same disk:
//!   write + fsync the data file, fsync the directory, write the state file
//!   aside + fsync + rename + fsync the directory. `CKPT_BENCH_FLOOR_PAIRS`
//!   (200) pairs after 10 untimed ones, which of the two goes first
//!   alternating; the ratio is of the medians.
//! - `tensor`: a save of one registered 1 MiB tensor (the built-in saver,
//!   durable) against the same bytes written as TensorFlow writes a
//!   checkpoint, without any fsync: the data file, a small index, the state
//!   file written aside and renamed. `CKPT_BENCH_TENSOR_PAIRS` (50) pairs,
//!   alternating; the ratio is of the medians.
//! - `count`: `CKPT_BENCH_COUNT_SAVES` (100) saves as in `floor`, untimed,
//!   for counting their syscalls from outside (the driver runs it under
//!   strace with 0 and with 100 saves and prints the difference).
//! - `keep_all`: ms per keep-all save in a directory holding
//!   `CKPT_BENCH_FEW` (100) and `CKPT_BENCH_MANY` (10,000) checkpoints,
//!   `CKPT_BENCH_KEEP_ALL_SAVES` (20) timed saves each, the two alternating;
//!   and the ratio of their medians. Each checkpoint is two tiny files.
//! - `open`: ms to open a writer on a directory whose state file lists
//!   `CKPT_BENCH_MANY` entries (written by the library, and laid out as TF
//!   writes it), `CKPT_BENCH_OPEN_REPEATS` (3) opens each, in a child
//!   process given `CKPT_BENCH_OPEN_CAP_S` (60) seconds. The opens run on
//!   the cached directories themselves: an open that changes one (but for
//!   a `*.lock` file) is warned about, and the directory is built again.
//! - `open_huge`: the same with `CKPT_BENCH_HUGE` (100,000) entries, laid
//!   out as TF writes it (a state file listing 100,000 entries cannot be
//!   built through any TF-compatible library in reasonable time: each save
//!   rewrites the whole state file, about 475 GB in all), one open, capped.
//!   "No answer within N s" is a result (`"value": null`).
//! - `big`: a save whose callback writes one `CKPT_BENCH_BIG_MIB` (256) MiB
//!   file with `write_all`, against writing the same bytes to a file by
//!   hand + fsync of the file and of its directory, alternating which goes
//!   first, `CKPT_BENCH_BIG_ROUNDS` (6, made even) rounds after two untimed
//!   writes; the ratio is of the totals, and the median, lowest and highest
//!   of the rounds' ratios follow, then the ratio of saves to the hand
//!   writes that went in the same place in their rounds (the disk writes a
//!   round's first burst fast and its second slow, so a round's own ratio
//!   says mostly which side went first). One result per way of writing
//!   (see `BigWrite`).
//! - `small`: the latency of a small save (two 4 KiB files) with
//!   `max_to_keep` 3, so that every save sweeps one checkpoint;
//!   `CKPT_BENCH_SMALL_SAVES` (30) timed saves after 4 untimed ones.
//!
//! Before each timed step the process calls sync(2) and sleeps
//! `CKPT_BENCH_SHORT_PAUSE_MS` (100) ms, or `CKPT_BENCH_PAUSE_MS` (2000) ms
//! before the big writes. Directories live under `CKPT_BENCH_DIR` (default
//! `target/bench-commit` of this tree; never /tmp, which may be tmpfs).
//! The directories of 100 and 10,000 checkpoints are built once through the
//! library and cached under `cache/`, keyed by a hash of this executable (so
//! a rebuilt library builds them again) or by `CKPT_BENCH_CACHE_KEY` when it
//! is set (the driver sets it to the commit for the previous design); the
//! timed saves run on copies. `CKPT_BENCH_SIDE` only labels the output.
//! With `CKPT_BENCH_PREPARE_ONLY` set, the process only builds the cached
//! directories.
//!
//! Output: `{"side":..,"scenario":..,"unit":"ms"|"x","value":..,...}`; for
//! timings `value` is the median, `mean`, `min`, `max` and `n` follow.

// `ckpt_bench_write_through` is set only by trees that offer writing through
// the library (see `BigWrite`); elsewhere it is an unknown cfg.
#![allow(unexpected_cfgs)]

use std::collections::hash_map::DefaultHasher;
use std::fs::{self, File};
use std::hash::Hasher;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ckpt_manager::{Callbacks, CheckpointManager, Config, DType, MaxToKeep};

/// Bumped when the recipe of a cached directory changes.
const CACHE_RECIPE: u32 = 1;
/// Bytes of each of the two files a tiny checkpoint has.
const TINY_INDEX: usize = 16;
const TINY_DATA: usize = 64;
const SMALL_FILE: usize = 4096;

extern "C" {
    fn sync();
}

mod common;

use common::{env_number, millis};

/// Flushes what earlier steps left dirty and lets the disk drain.
fn settle(pause_ms: usize) {
    // SAFETY: sync(2) has no preconditions.
    unsafe { sync() };
    std::thread::sleep(Duration::from_millis(pause_ms as u64));
}

fn sync_directory(path: &Path) {
    File::open(path).unwrap().sync_all().unwrap();
}

/// A fresh, durable, empty directory.
fn fresh_directory(path: &Path) {
    let _ = fs::remove_dir_all(path);
    fs::create_dir_all(path).unwrap();
    sync_directory(path.parent().unwrap());
}

/// Callbacks that never print: warnings are counted by the caller if needed.
fn quiet() -> Callbacks {
    Callbacks::new().log(|_, _| {})
}

/// Saves write `<prefix>.index` and `<prefix>.data-00000-of-00001`, as TF
/// does, of the given sizes. The manager makes them durable.
fn two_files(index: usize, data: usize) -> Callbacks {
    quiet().on_save(move |prefix: &Path, number: u64| {
        let fill = |len: usize| vec![number as u8; len];
        fs::write(suffixed(prefix, ".index"), fill(index))?;
        fs::write(suffixed(prefix, ".data-00000-of-00001"), fill(data))?;
        Ok(())
    })
}

/// Saves write one 16-byte data file.
fn sixteen_bytes() -> Callbacks {
    quiet().on_save(|prefix: &Path, _| {
        fs::write(suffixed(prefix, ".data-00000-of-00001"), [7u8; 16])?;
        Ok(())
    })
}

/// The state file as TF writes it, naming `count` checkpoints of `stem`.
fn state_text(stem: &str, count: usize) -> String {
    let mut text = format!("model_checkpoint_path: \"{stem}-{count}\"\n");
    for n in 1..=count {
        text.push_str(&format!("all_model_checkpoint_paths: \"{stem}-{n}\"\n"));
    }
    text
}

/// The least a durable save can do: write + fsync the data file, fsync the
/// directory, write the state file aside + fsync + rename + fsync the
/// directory. The state file lists every save, as a keep-all manager's.
struct MinimalSaver {
    directory: PathBuf,
    saved: usize,
}

impl MinimalSaver {
    fn new(directory: &Path) -> Self {
        fresh_directory(directory);
        MinimalSaver {
            directory: directory.to_path_buf(),
            saved: 0,
        }
    }

    fn save(&mut self, bytes: &[u8]) -> Duration {
        self.saved += 1;
        let state = state_text("ckpt", self.saved);
        let start = Instant::now();
        let data = self.directory.join(format!("ckpt-{}.data", self.saved));
        let mut file = File::create(data).unwrap();
        file.write_all(bytes).unwrap();
        file.sync_all().unwrap();
        sync_directory(&self.directory);
        let aside = self.directory.join("checkpoint.tmp");
        let mut file = File::create(&aside).unwrap();
        file.write_all(state.as_bytes()).unwrap();
        file.sync_all().unwrap();
        fs::rename(&aside, self.directory.join("checkpoint")).unwrap();
        sync_directory(&self.directory);
        start.elapsed()
    }
}

/// What TensorFlow's save writes, and how: the data file, a small index,
/// the state file written aside and renamed; no fsync anywhere.
struct TensorFlowLike {
    directory: PathBuf,
    saved: usize,
}

impl TensorFlowLike {
    fn new(directory: &Path) -> Self {
        fresh_directory(directory);
        TensorFlowLike {
            directory: directory.to_path_buf(),
            saved: 0,
        }
    }

    fn save(&mut self, bytes: &[u8]) -> Duration {
        self.saved += 1;
        let start = Instant::now();
        let prefix = self.directory.join(format!("ckpt-{}", self.saved));
        fs::write(suffixed(&prefix, ".data-00000-of-00001"), bytes).unwrap();
        fs::write(suffixed(&prefix, ".index"), [0u8; 64]).unwrap();
        let aside = self.directory.join("checkpoint.tmp");
        fs::write(&aside, state_text("ckpt", self.saved)).unwrap();
        fs::rename(&aside, self.directory.join("checkpoint")).unwrap();
        start.elapsed()
    }
}

fn suffixed(prefix: &Path, suffix: &str) -> PathBuf {
    let mut path = prefix.as_os_str().to_owned();
    path.push(suffix);
    PathBuf::from(path)
}

fn open_writer(directory: &Path, keep: MaxToKeep, callbacks: Callbacks) -> CheckpointManager {
    let config = Config::new(directory, keep).unwrap();
    CheckpointManager::new(config, callbacks).unwrap()
}

fn save(manager: &mut CheckpointManager) -> Duration {
    let start = Instant::now();
    manager.save(None, false).unwrap().expect("saved");
    start.elapsed()
}

#[derive(Default)]
struct Summary {
    median: f64,
    mean: f64,
    min: f64,
    max: f64,
    n: usize,
}

fn summarize(samples: &[f64]) -> Summary {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n == 0 {
        return Summary::default();
    }
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    Summary {
        median,
        mean: sorted.iter().sum::<f64>() / n as f64,
        min: sorted[0],
        max: sorted[n - 1],
        n,
    }
}

struct Report {
    side: String,
}

impl Report {
    fn line(&self, scenario: &str, unit: &str, value: Option<f64>, extra: &str) {
        let value = value.map_or("null".to_owned(), |v| format!("{v:.4}"));
        println!(
            "{{\"side\":\"{}\",\"scenario\":\"{scenario}\",\"unit\":\"{unit}\",\"value\":{value}{extra}}}",
            self.side
        );
        std::io::stdout().flush().unwrap();
    }

    fn timing(&self, scenario: &str, samples: &[f64]) -> Summary {
        let s = summarize(samples);
        self.line(
            scenario,
            "ms",
            Some(s.median),
            &format!(
                ",\"mean\":{:.4},\"min\":{:.4},\"max\":{:.4},\"n\":{}",
                s.mean, s.min, s.max, s.n
            ),
        );
        eprintln!(
            "  {scenario}: median {:.3} ms, mean {:.3} ms, min {:.3}, max {:.3} ({} samples)",
            s.median, s.mean, s.min, s.max, s.n
        );
        s
    }

    fn ratio(&self, scenario: &str, value: f64, how: &str) {
        self.line(scenario, "x", Some(value), &format!(",\"of\":\"{how}\""));
        eprintln!("  {scenario}: {value:.3}x ({how})");
    }
}

struct Bench {
    root: PathBuf,
    cache: PathBuf,
    report: Report,
    pause_ms: usize,
    short_pause_ms: usize,
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if args.first().map(String::as_str) == Some("open-child") {
        open_child(Path::new(&args[1]), args[2].parse().unwrap());
        return;
    }
    let root = std::env::var_os("CKPT_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-commit"));
    fs::create_dir_all(&root).unwrap();
    let root = root.canonicalize().unwrap();
    let bench = Bench {
        cache: root.join("cache"),
        root,
        report: Report {
            side: std::env::var("CKPT_BENCH_SIDE").unwrap_or_else(|_| "this".to_owned()),
        },
        pause_ms: env_number("CKPT_BENCH_PAUSE_MS", 2000),
        short_pause_ms: env_number("CKPT_BENCH_SHORT_PAUSE_MS", 100),
    };
    fs::create_dir_all(&bench.cache).unwrap();
    let chosen = std::env::var("CKPT_BENCH_SCENARIOS")
        .unwrap_or_else(|_| "floor,tensor,keep_all,open,open_huge,big,small".to_owned());
    let chosen: Vec<&str> = chosen.split(',').map(str::trim).collect();
    for name in &chosen {
        let known = [
            "floor",
            "tensor",
            "count",
            "keep_all",
            "open",
            "open_huge",
            "big",
            "small",
        ];
        assert!(known.contains(name), "unknown scenario {name:?}: {known:?}");
    }
    eprintln!(
        "commit bench, side {}, directory {}",
        bench.report.side,
        bench.root.display()
    );
    let few = env_number("CKPT_BENCH_FEW", 100);
    let many = env_number("CKPT_BENCH_MANY", 10_000);
    if std::env::var_os("CKPT_BENCH_PREPARE_ONLY").is_some() {
        bench.library_directory(few);
        bench.library_directory(many);
        bench.tf_directory(many);
        match env_number("CKPT_BENCH_HUGE", 100_000) {
            0 => {}
            huge => drop(bench.tf_directory(huge)),
        }
        return;
    }
    if chosen.contains(&"count") {
        bench.count(env_number("CKPT_BENCH_COUNT_SAVES", 100));
    }
    if chosen.contains(&"floor") {
        bench.floor(env_number("CKPT_BENCH_FLOOR_PAIRS", 200));
    }
    if chosen.contains(&"tensor") {
        bench.tensor(env_number("CKPT_BENCH_TENSOR_PAIRS", 50));
    }
    if chosen.contains(&"keep_all") {
        bench.keep_all(few, many);
    }
    if chosen.contains(&"open") {
        bench.open(many);
    }
    if chosen.contains(&"open_huge") {
        match env_number("CKPT_BENCH_HUGE", 100_000) {
            0 => eprintln!("open_huge: skipped (CKPT_BENCH_HUGE=0)"),
            huge => bench.open_huge(huge),
        }
    }
    if chosen.contains(&"big") {
        bench.big(env_number("CKPT_BENCH_BIG_MIB", 256));
    }
    if chosen.contains(&"small") {
        bench.small();
    }
    let _ = fs::remove_dir_all(bench.root.join("work"));
}

impl Bench {
    fn work(&self, name: &str) -> PathBuf {
        self.root.join("work").join(name)
    }

    /// A directory of `count` keep-all checkpoints saved through this
    /// library, built once per executable.
    fn library_directory(&self, count: usize) -> PathBuf {
        let key = match std::env::var("CKPT_BENCH_CACHE_KEY") {
            Ok(key) if !key.is_empty() => format!("lib-r{CACHE_RECIPE}-{key}"),
            _ => format!("lib-r{CACHE_RECIPE}-{:016x}", executable_hash()),
        };
        let directory = self.cache.join(&key).join(format!("keep-all-{count}"));
        let ready = suffixed(&directory, ".ready");
        if ready.exists() {
            return directory;
        }
        // Caches of other builds of this side are stale.
        for entry in fs::read_dir(&self.cache).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name();
            if name.to_string_lossy().starts_with("lib-") && name != key.as_str() {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        fresh_directory(&directory);
        eprintln!("building {} ({count} keep-all saves)", directory.display());
        let start = Instant::now();
        let mut manager = open_writer(&directory, MaxToKeep::All, two_files(TINY_INDEX, TINY_DATA));
        let mut last_report = Instant::now();
        for done in 1..=count {
            let took = save(&mut manager);
            if last_report.elapsed() > Duration::from_secs(15) {
                last_report = Instant::now();
                eprintln!(
                    "  {done} saves in {:.0} s, the last one {:.1} ms",
                    start.elapsed().as_secs_f64(),
                    millis(took)
                );
            }
        }
        drop(manager);
        eprintln!("  built in {:.1} s", start.elapsed().as_secs_f64());
        fs::write(&ready, format!("{count}\n")).unwrap();
        directory
    }

    /// A directory of `count` checkpoints as TF's own manager leaves it:
    /// the state file and, per checkpoint, `.index` and one data shard.
    /// Independent of the library, so kept across builds.
    fn tf_directory(&self, count: usize) -> PathBuf {
        let directory = self
            .cache
            .join(format!("tf-r{CACHE_RECIPE}"))
            .join(format!("tf-{count}"));
        let ready = suffixed(&directory, ".ready");
        if ready.exists() {
            return directory;
        }
        fresh_directory(&directory);
        eprintln!("writing {} ({count} checkpoints)", directory.display());
        let start = Instant::now();
        // Timestamps one second apart, ending a day ago.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let first = (now - 86_400.0 - count as f64).floor() + 0.25;
        let mut state = String::new();
        state.push_str(&format!("model_checkpoint_path: \"ckpt-{count}\"\n"));
        for number in 1..=count {
            state.push_str(&format!("all_model_checkpoint_paths: \"ckpt-{number}\"\n"));
        }
        for number in 1..=count {
            let timestamp = first + (number - 1) as f64;
            state.push_str(&format!("all_model_checkpoint_timestamps: {timestamp:?}\n"));
        }
        state.push_str(&format!("last_preserved_timestamp: {:?}\n", first - 1.0));
        for number in 1..=count {
            let prefix = directory.join(format!("ckpt-{number}"));
            fs::write(suffixed(&prefix, ".index"), vec![1u8; TINY_INDEX]).unwrap();
            fs::write(
                suffixed(&prefix, ".data-00000-of-00001"),
                vec![2u8; TINY_DATA],
            )
            .unwrap();
        }
        fs::write(directory.join("checkpoint"), state).unwrap();
        // SAFETY: no preconditions.
        unsafe { sync() };
        eprintln!("  written in {:.1} s", start.elapsed().as_secs_f64());
        fs::write(&ready, format!("{count}\n")).unwrap();
        directory
    }

    fn keep_all(&self, few: usize, many: usize) {
        let saves = env_number("CKPT_BENCH_KEEP_ALL_SAVES", 20);
        eprintln!("keep_all: saves with {few} and with {many} checkpoints in the directory");
        let mut managers = Vec::new();
        for count in [few, many] {
            let source = self.library_directory(count);
            let copy = self.work(&format!("keep-all-{count}"));
            let start = Instant::now();
            copy_directory(&source, &copy);
            eprintln!(
                "  copied {count} checkpoints in {:.1} s",
                start.elapsed().as_secs_f64()
            );
            let mut manager = open_writer(&copy, MaxToKeep::All, two_files(TINY_INDEX, TINY_DATA));
            // Untimed: the first saves after an open warm what they read.
            for _ in 0..2 {
                save(&mut manager);
            }
            managers.push(manager);
        }
        let mut samples = [Vec::new(), Vec::new()];
        for i in 0..saves {
            let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
            for side in order {
                settle(self.short_pause_ms);
                samples[side].push(millis(save(&mut managers[side])));
            }
        }
        drop(managers);
        let at_few = self
            .report
            .timing(&format!("keep_all_save.at_{few}"), &samples[0]);
        let at_many = self
            .report
            .timing(&format!("keep_all_save.at_{many}"), &samples[1]);
        self.report.ratio(
            &format!("keep_all_save.ratio_{many}_over_{few}"),
            at_many.median / at_few.median,
            "medians",
        );
        for count in [few, many] {
            let _ = fs::remove_dir_all(self.work(&format!("keep-all-{count}")));
        }
    }

    fn open(&self, many: usize) {
        let repeats = env_number("CKPT_BENCH_OPEN_REPEATS", 3);
        let cap = env_number("CKPT_BENCH_OPEN_CAP_S", 60);
        eprintln!("open: a writer on a directory listing {many} checkpoints");
        let library = self.library_directory(many);
        self.timed_open(&format!("open.library_{many}"), &library, repeats, cap);
        let tf = self.tf_directory(many);
        self.timed_open(&format!("open.tf_{many}"), &tf, repeats, cap);
    }

    fn open_huge(&self, huge: usize) {
        let cap = env_number("CKPT_BENCH_OPEN_CAP_S", 60);
        eprintln!("open_huge: a writer on a directory listing {huge} checkpoints (TF's layout)");
        let tf = self.tf_directory(huge);
        self.timed_open(&format!("open.tf_{huge}"), &tf, 1, cap);
    }

    /// Opens run in a child process, killed when `cap_s` seconds pass
    /// without all the answers. Opening must not change the directory
    /// (apart from a lock file); if it does, the cached copy is dropped.
    fn timed_open(&self, scenario: &str, directory: &Path, repeats: usize, cap_s: usize) {
        let before = directory_signature(directory);
        settle(self.short_pause_ms);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "open-child",
                directory.to_str().unwrap(),
                &repeats.to_string(),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, receiver) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(ms) = line.strip_prefix("open_ms ") {
                    if sender.send(ms.parse::<f64>().unwrap()).is_err() {
                        break;
                    }
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(cap_s as u64);
        let mut samples = Vec::new();
        let mut timed_out = false;
        while samples.len() < repeats {
            let left = deadline.saturating_duration_since(Instant::now());
            match receiver.recv_timeout(left) {
                Ok(ms) => samples.push(ms),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    timed_out = true;
                    break;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        if timed_out {
            // Our own child, by its handle.
            let _ = child.kill();
        }
        let status = child.wait().unwrap();
        reader.join().unwrap();
        if samples.is_empty() {
            let (why, extra) = if timed_out {
                let why = format!("no answer within {cap_s} s");
                let extra = format!(",\"timeout_s\":{cap_s},\"note\":\"{why}\"");
                (why, extra)
            } else {
                let why = format!("the opening process failed: {status}");
                let extra = format!(",\"failed\":true,\"note\":\"{why}\"");
                (why, extra)
            };
            self.report.line(scenario, "ms", None, &extra);
            eprintln!("  {scenario}: {why}");
        } else {
            if timed_out {
                eprintln!(
                    "  {scenario}: only {} of {repeats} opens within {cap_s} s",
                    samples.len()
                );
            }
            self.report.timing(scenario, &samples);
        }
        if directory_signature(directory) != before {
            eprintln!(
                "  warning: opening changed {}; it is built again next time",
                directory.display()
            );
            let _ = fs::remove_file(suffixed(directory, ".ready"));
        }
    }

    fn big(&self, mib: usize) {
        let rounds = env_number("CKPT_BENCH_BIG_ROUNDS", 6).next_multiple_of(2);
        let mut buffer = vec![0u8; mib << 20];
        buffer
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (i as u8).wrapping_mul(31) ^ (i >> 12) as u8);
        let buffer = Arc::new(buffer);
        // Untimed: on a VM, page-cache pages the guest never touched are
        // slow to get the first time; the rounds reuse these.
        let warm = self.work("big-warm-up");
        fresh_directory(&warm);
        for i in 0..2 {
            write_by_hand(&warm.join(format!("{i}.data")), &buffer);
        }
        fs::remove_dir_all(&warm).unwrap();
        for variant in BigWrite::all() {
            let name = variant.name();
            eprintln!("big: a save whose callback writes {mib} MiB ({name}) against write + fsync by hand");
            let (mut saves, mut hands) = (Vec::new(), Vec::new());
            for round in 0..rounds {
                let directory = self.work(&format!("big-{round}"));
                fresh_directory(&directory);
                let mut manager = open_writer(
                    &directory.join("checkpoints"),
                    MaxToKeep::All,
                    variant.callbacks(&buffer),
                );
                let hand_path = directory.join("hand.data");
                let mut timed_save = || {
                    settle(self.pause_ms);
                    saves.push(millis(save(&mut manager)));
                };
                let mut timed_hand = || {
                    settle(self.pause_ms);
                    hands.push(millis(write_by_hand(&hand_path, &buffer)));
                };
                if round % 2 == 0 {
                    timed_hand();
                    timed_save();
                } else {
                    timed_save();
                    timed_hand();
                }
                drop(manager);
                eprintln!(
                    "  round {round}: save {:.0} ms, by hand {:.0} ms",
                    saves[round], hands[round]
                );
                fs::remove_dir_all(&directory).unwrap();
            }
            self.report.timing(&format!("big_save.{name}.save"), &saves);
            self.report.timing(&format!("big_save.{name}.hand"), &hands);
            self.report.ratio(
                &format!("big_save.{name}.ratio_save_over_hand"),
                saves.iter().sum::<f64>() / hands.iter().sum::<f64>(),
                "totals",
            );
            let ratios: Vec<f64> = saves.iter().zip(&hands).map(|(s, h)| s / h).collect();
            let spread = summarize(&ratios);
            self.report.ratio(
                &format!("big_save.{name}.ratio_per_round_median"),
                spread.median,
                &format!("rounds, from {:.3} to {:.3}", spread.min, spread.max),
            );
            // The disk writes the first burst of a round fast and the
            // second slow, whichever side it is: saves compared with the
            // hand writes that went in the same place in their rounds.
            // (Odd rounds save first, even rounds write by hand first.)
            let median_of_rounds = |times: &[f64], odd: bool| {
                let picked: Vec<f64> = (0..rounds)
                    .filter(|round| (round % 2 == 1) == odd)
                    .map(|round| times[round])
                    .collect();
                summarize(&picked).median
            };
            let first = median_of_rounds(&saves, true) / median_of_rounds(&hands, false);
            let second = median_of_rounds(&saves, false) / median_of_rounds(&hands, true);
            self.report.ratio(
                &format!("big_save.{name}.ratio_same_place"),
                (first * second).sqrt(),
                &format!("geometric mean of {first:.3} going first and {second:.3} going second"),
            );
        }
    }

    fn count(&self, saves: usize) {
        let directory = self.work("count");
        fresh_directory(&directory);
        let mut manager = open_writer(&directory, MaxToKeep::All, sixteen_bytes());
        for _ in 0..saves {
            save(&mut manager);
        }
        drop(manager);
        let _ = fs::remove_dir_all(&directory);
    }

    fn floor(&self, pairs: usize) {
        eprintln!(
            "floor: durable saves of 16 bytes, keep-all, against the minimal sequence by hand"
        );
        let directory = self.work("floor");
        fresh_directory(&directory);
        let mut manager = open_writer(
            &directory.join("checkpoints"),
            MaxToKeep::All,
            sixteen_bytes(),
        );
        let mut by_hand = MinimalSaver::new(&directory.join("by-hand"));
        let (mut saves, mut hands) = (Vec::new(), Vec::new());
        for pair in 0..10 + pairs {
            let (save_ms, hand_ms) = if pair % 2 == 0 {
                let hand = by_hand.save(&[7u8; 16]);
                (save(&mut manager), hand)
            } else {
                let saved = save(&mut manager);
                (saved, by_hand.save(&[7u8; 16]))
            };
            if pair >= 10 {
                saves.push(millis(save_ms));
                hands.push(millis(hand_ms));
            }
        }
        drop(manager);
        let save = self.report.timing("floor.save", &saves);
        let hand = self.report.timing("floor.by_hand", &hands);
        self.report.ratio(
            "floor.ratio_save_over_hand",
            save.median / hand.median,
            "medians",
        );
        let _ = fs::remove_dir_all(&directory);
    }

    fn tensor(&self, pairs: usize) {
        const BYTES: usize = 1 << 20;
        eprintln!(
            "tensor: a durable save of a registered 1 MiB tensor against TF's layout written \
             without fsync"
        );
        let directory = self.work("tensor");
        fresh_directory(&directory);
        let mut tensor: Vec<u8> = (0..BYTES).map(|i| (i * 31) as u8).collect();
        let mut manager = open_writer(&directory.join("checkpoints"), MaxToKeep::All, quiet());
        // SAFETY: `tensor` outlives the manager and is not resized or
        // touched while it saves.
        unsafe {
            manager
                .register_tensor("weights", DType::U8, &[BYTES as u64], tensor.as_mut_ptr())
                .unwrap();
        }
        let mut plain = TensorFlowLike::new(&directory.join("plain"));
        let (mut saves, mut plains) = (Vec::new(), Vec::new());
        for pair in 0..5 + pairs {
            let (save_ms, plain_ms) = if pair % 2 == 0 {
                let written = plain.save(&tensor);
                (save(&mut manager), written)
            } else {
                let saved = save(&mut manager);
                (saved, plain.save(&tensor))
            };
            if pair >= 5 {
                saves.push(millis(save_ms));
                plains.push(millis(plain_ms));
            }
        }
        drop(manager);
        let save = self.report.timing("tensor_1mib.save", &saves);
        let plain = self
            .report
            .timing("tensor_1mib.tf_layout_no_fsync", &plains);
        self.report.ratio(
            "tensor_1mib.ratio_save_over_no_fsync",
            save.median / plain.median,
            "medians",
        );
        let _ = fs::remove_dir_all(&directory);
    }

    fn small(&self) {
        let saves = env_number("CKPT_BENCH_SMALL_SAVES", 30);
        eprintln!("small: saves of two {SMALL_FILE}-byte files, max_to_keep 3 (a sweep each save)");
        let directory = self.work("small");
        fresh_directory(&directory);
        let mut manager = open_writer(
            &directory,
            MaxToKeep::Last(3),
            two_files(SMALL_FILE, SMALL_FILE),
        );
        for _ in 0..4 {
            save(&mut manager);
        }
        let mut samples = Vec::new();
        for _ in 0..saves {
            settle(self.short_pause_ms);
            samples.push(millis(save(&mut manager)));
        }
        drop(manager);
        self.report.timing("small_save.max_to_keep_3", &samples);
        let _ = fs::remove_dir_all(&directory);
    }
}

/// How the save callback of the `big` scenario writes its file.
///
/// A design that lets callbacks write through the library (computing the
/// CRC32C on the way) adds a variant here, compiled only in trees that
/// declare it, so that the same file still builds in the previous design:
/// e.g. its `build.rs` prints `cargo:rustc-cfg=ckpt_bench_write_through`
/// (and `cargo:rustc-check-cfg=cfg(ckpt_bench_write_through)`), or swap the
/// cfg for a Cargo feature only the new tree declares.
#[derive(Clone, Copy)]
enum BigWrite {
    /// The callback opens `<prefix>.data-00000-of-00001` itself and
    /// `write_all`s the buffer; no fsync (the manager's job).
    Plain,
    #[cfg(ckpt_bench_write_through)]
    WriteThrough,
}

impl BigWrite {
    fn all() -> Vec<BigWrite> {
        #[allow(unused_mut)]
        let mut all = vec![BigWrite::Plain];
        #[cfg(ckpt_bench_write_through)]
        all.push(BigWrite::WriteThrough);
        all
    }

    /// The scenario names: `big_save.<name>.*`.
    fn name(self) -> &'static str {
        match self {
            BigWrite::Plain => "plain_callback",
            #[cfg(ckpt_bench_write_through)]
            BigWrite::WriteThrough => "write_through",
        }
    }

    fn callbacks(self, buffer: &Arc<Vec<u8>>) -> Callbacks {
        let buffer = Arc::clone(buffer);
        match self {
            BigWrite::Plain => quiet().on_save(move |prefix: &Path, _number: u64| {
                let mut file = File::create(suffixed(prefix, ".data-00000-of-00001"))?;
                file.write_all(&buffer)?;
                Ok(())
            }),
            #[cfg(ckpt_bench_write_through)]
            BigWrite::WriteThrough => write_through::callbacks(buffer),
        }
    }
}

#[cfg(ckpt_bench_write_through)]
mod write_through {
    //! The save writes the same `buffer` through `SaveFile`, which computes
    //! the CRC32C on the way, so the manager does not read the file again.
    use super::*;

    pub fn callbacks(buffer: Arc<Vec<u8>>) -> Callbacks {
        quiet().on_save(move |prefix: &Path, _number: u64| {
            let mut file = ckpt_manager::SaveFile::create(prefix, ".data-00000-of-00001")?;
            file.write_all(&buffer)?;
            file.finish()?;
            Ok(())
        })
    }
}

/// What a careful program does without a library: write, fsync the file,
/// fsync the directory that names it.
fn write_by_hand(path: &Path, buffer: &[u8]) -> Duration {
    let start = Instant::now();
    let mut file = File::create(path).unwrap();
    file.write_all(buffer).unwrap();
    file.sync_all().unwrap();
    sync_directory(path.parent().unwrap());
    start.elapsed()
}

/// Copies a directory tree (regular files and directories), then syncs.
fn copy_directory(from: &Path, to: &Path) {
    fresh_directory(to);
    copy_tree(from, to);
    // SAFETY: no preconditions.
    unsafe { sync() };
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            fs::create_dir(&target).unwrap();
            copy_tree(&entry.path(), &target);
        } else if kind.is_file() {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The names (but lock files) and sizes in a directory, and the state file.
fn directory_signature(directory: &Path) -> (Vec<(String, u64)>, Vec<u8>) {
    let mut names: Vec<(String, u64)> = fs::read_dir(directory)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            (name, entry.metadata().map(|m| m.len()).unwrap_or(0))
        })
        .filter(|(name, _)| !name.ends_with(".lock"))
        .collect();
    names.sort();
    let state = fs::read(directory.join("checkpoint")).unwrap_or_default();
    (names, state)
}

/// A hash of this executable: the library is linked in, so a changed
/// library gives a different key for the directories it built.
fn executable_hash() -> u64 {
    let mut file = File::open(std::env::current_exe().unwrap()).unwrap();
    let mut hasher = DefaultHasher::new();
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut chunk).unwrap();
        if read == 0 {
            break;
        }
        hasher.write(&chunk[..read]);
    }
    hasher.finish()
}

/// The child of `timed_open`: opens a writer `repeats` times, printing
/// each duration as soon as it is known.
fn open_child(directory: &Path, repeats: usize) {
    for _ in 0..repeats {
        let start = Instant::now();
        let manager = open_writer(directory, MaxToKeep::All, quiet());
        let elapsed = start.elapsed();
        drop(manager);
        println!("open_ms {:.4}", millis(elapsed));
        std::io::stdout().flush().unwrap();
    }
}
