//! Crash torture: a child process (tests/c/torture_child.c) saves
//! checkpoints in an endless loop and is killed with SIGKILL at random
//! instants, again and again on the same directory. After every kill the
//! parent checks, through the Rust API, what a restarted trainer relies on:
//!
//! (a) the state file parses (or there is none yet);
//! (b) a writer opens (running recovery), and is closed again;
//! (c) after that open no pending marker, temporary state file or temporary
//!     manifest is left, and every `ckpt-N*` file belongs to a managed
//!     checkpoint (listed in the state file) or to a preserved one (older
//!     than every managed one, with a manifest it matches): no orphans;
//! (d) the latest checkpoint verifies with checksums, and its bytes are
//!     what the child wrote for its number;
//! (e) at most `max_to_keep` (3) checkpoints are managed, each intact;
//! (f) the latest checkpoint's number never decreases;
//! (g) the child died of the SIGKILL, never of its own failure;
//! and whenever the child got as far as restoring, it restored the latest.
//!
//! Half of the iterations run recovery on a hard-linked clone of the
//! directory, leaving the original as the kill left it, so that the next
//! child does the recovery itself and may be killed while doing it.
//!
//! `cargo test --test torture` does 300 kills. Environment:
//! `CKPT_TORTURE_KILLS` (number of kills; the long mode is
//! `CKPT_TORTURE_KILLS=5000 cargo test --release --test torture -- --nocapture`,
//! `make torture`), `CKPT_TORTURE_SEED` (replays a run's random delays; the
//! seed is printed).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ckpt_manager::{
    get_checkpoint_state, remove_checkpoint, verify_checkpoint, Callbacks, CheckpointManager,
    Config, Integrity, MaxToKeep, Verification,
};

/// The child's settings (tests/c/torture_child.c).
const MAX_TO_KEEP: usize = 3;
const KEEP_HOURS: f64 = 1.0;
const CLOCK_ORIGIN: f64 = 1e6;
const CLOCK_STEP: f64 = 600.0;

const DEFAULT_KILLS: usize = 300;
/// Every this many iterations the child is killed only after it restored.
const RESTORE_CHECK_EVERY: usize = 50;
/// Preserved checkpoints accumulate (one save in six); the parent deletes
/// all but the newest few so that long runs stay small.
const PRESERVED_KEPT: usize = 6;
/// Upper bounds (µs) of the random delay before the kill, one picked per
/// kill: the child needs ~10-20 ms to start, recover and restore, then
/// ~20-70 ms per save on a disk that really syncs (about half of it after
/// the commit: clearing the marker, deleting, rewriting the state file).
/// So about a third of the kills land before the restore, the rest at any
/// point of the first few saves.
const DELAY_RANGES_US: [u64; 5] = [3_000, 20_000, 100_000, 250_000, 400_000];

/// xorshift64*: reproducible from the printed seed, no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }
}

// ---------------------------------------------------------------------------
// The child's checkpoint layout, as torture_child.c writes it.

const HEADER_SIZE: u64 = 24;
const MAGIC: &[u8; 8] = b"CKPTtor1";
const SUFFIXES: [&str; 4] = [
    ".index",
    ".data-00000-of-00002",
    ".data-00001-of-00002",
    "/shard",
];
const KIND_SHARD: usize = 3;

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn has_kind(number: u64, kind: usize) -> bool {
    kind != KIND_SHARD || number % 3 == 0
}

fn file_size(number: u64, kind: usize) -> u64 {
    let h = mix(number.wrapping_mul(4).wrapping_add(kind as u64));
    match kind {
        0 => HEADER_SIZE + 256 + h % 4096,
        1 => 4096 + h % (1 << 20),
        2 => 1024 + h % (64 << 10),
        _ => 512 + h % (32 << 10),
    }
}

/// Why checkpoint `number` at `prefix` does not hold what the child wrote.
fn content_problem(prefix: &Path, number: u64) -> Option<String> {
    for kind in (0..SUFFIXES.len()).filter(|&kind| has_kind(number, kind)) {
        let path = PathBuf::from(format!("{}{}", prefix.display(), SUFFIXES[kind]));
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) => return Some(format!("cannot read {}: {err}", path.display())),
        };
        let size = file_size(number, kind);
        let seed = mix(number ^ ((kind as u64) << 56));
        let header_ok = bytes.len() as u64 == size
            && &bytes[..8] == MAGIC
            && bytes[8..16] == number.to_le_bytes()
            && bytes[16..24] == size.to_le_bytes();
        let body_ok = header_ok
            && bytes[HEADER_SIZE as usize..]
                .iter()
                .zip(HEADER_SIZE..)
                .all(|(&byte, i)| {
                    byte == ((seed >> ((i % 7) * 8))
                        .wrapping_add(i.wrapping_mul(7))
                        .wrapping_add(i >> 9)) as u8
                });
        if !body_ok {
            return Some(format!(
                "{} ({} bytes) is not what checkpoint {number} wrote ({size} bytes)",
                path.display(),
                bytes.len()
            ));
        }
    }
    None
}

// ---------------------------------------------------------------------------
// The directory.

/// `ckpt-<N>` or `ckpt-<N>.<suffix>`: the number and the suffix.
fn parse_entry(name: &str) -> Option<(u64, &str)> {
    let rest = name.strip_prefix("ckpt-")?;
    let end = rest.find('.').unwrap_or(rest.len());
    let digits = &rest[..end];
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    canonical.then(|| (digits.parse().unwrap(), &rest[end..]))
}

fn number_of(path: &Path) -> u64 {
    let name = path.file_name().unwrap().to_str().unwrap();
    match parse_entry(name) {
        Some((number, "")) => number,
        _ => panic!("not a checkpoint prefix: {}", path.display()),
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// The state file's latest and listed checkpoint numbers.
struct State {
    latest: u64,
    listed: Vec<u64>,
}

fn read_state(dir: &Path) -> Result<Option<State>, String> {
    let state = get_checkpoint_state(dir).map_err(|err| err.to_string())?;
    Ok(state.map(|state| State {
        latest: number_of(&ckpt_manager::paths::path_from_bytes(
            &state.model_checkpoint_path,
        )),
        listed: state
            .all_model_checkpoint_paths
            .iter()
            .map(|p| number_of(&ckpt_manager::paths::path_from_bytes(p)))
            .collect(),
    }))
}

fn prefix(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("ckpt-{number}"))
}

/// A copy of `from` made of hard links (recovery only unlinks, never
/// writes into a file), without the lock file.
fn clone_dir(from: &Path, to: &Path) {
    fs::create_dir(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "checkpoint.lock" {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            clone_dir(&entry.path(), &to.join(&name));
        } else {
            fs::hard_link(entry.path(), to.join(&name)).unwrap();
        }
    }
}

/// A writer on `dir` as the child configures it, with the child's clock,
/// collecting warnings.
fn open_writer(
    dir: &Path,
    latest: u64,
) -> (
    Result<CheckpointManager, ckpt_manager::Error>,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let warnings = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = warnings.clone();
    let mut config = Config::new(dir, MaxToKeep::Last(MAX_TO_KEEP)).unwrap();
    config
        .set_keep_checkpoint_every_n_hours(Some(KEEP_HOURS))
        .unwrap();
    let now = CLOCK_ORIGIN + CLOCK_STEP * latest as f64;
    let callbacks = Callbacks::new()
        .clock(move || now)
        .log(move |_, message| log.lock().unwrap().push(message.to_owned()));
    (CheckpointManager::new(config, callbacks), warnings)
}

// ---------------------------------------------------------------------------
// The child.

/// The child program and the library it runs against, copied into `root`:
/// a long run must not pick up a library or program that another cargo
/// command rebuilds in `target/` meanwhile (with `LD_LIBRARY_PATH` set, the
/// copy wins over the program's RUNPATH).
struct ChildProgram {
    program: PathBuf,
    library_dir: PathBuf,
}

fn child_program(root: &Path) -> ChildProgram {
    let built = support::c_program("torture_child", &["tests/c/torture_child.c"]);
    let library_dir = root.join("lib");
    fs::create_dir(&library_dir).unwrap();
    let library = "libckpt_manager.so";
    fs::copy(
        support::library_dir().join(library),
        library_dir.join(library),
    )
    .unwrap();
    let program = root.join("torture_child");
    fs::copy(built, &program).unwrap();
    ChildProgram {
        program,
        library_dir,
    }
}

fn child_command(child: &ChildProgram, dir: &Path) -> Command {
    let mut command = Command::new(&child.program);
    command
        .arg(dir)
        .env("LD_LIBRARY_PATH", &child.library_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

struct Ended {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Kills the child (no-op if it is gone) and collects what it printed.
fn kill_and_wait(mut child: Child, stdout_start: String) -> Ended {
    let _ = child.kill(); // SIGKILL
    let status = child.wait().unwrap();
    let mut stdout = stdout_start;
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stdout.take() {
        pipe.read_to_string(&mut stdout).unwrap();
    }
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut stderr).unwrap();
    }
    Ended {
        status,
        stdout,
        stderr,
    }
}

fn killed_by_sigkill(status: &ExitStatus) -> bool {
    status.signal() == Some(libc::SIGKILL)
}

/// (g): a child that ended on its own failed; the test stops with its output.
fn assert_killed(ended: &Ended, what: &str) {
    assert!(
        killed_by_sigkill(&ended.status),
        "{what}: the child was not killed by SIGKILL but ended with {}\n--- stdout\n{}--- stderr\n{}",
        ended.status,
        ended.stdout,
        ended.stderr
    );
}

// ---------------------------------------------------------------------------
// The checks.

#[derive(Default)]
struct Stats {
    restores_checked: usize,
    restore_waits: usize,
    killed_before_restore: usize,
    killed_while_recovering: usize,
    child_recoveries: usize,
    parent_recoveries: usize,
    preserved_seen: BTreeSet<u64>,
    preserved_pruned: usize,
    most_managed: usize,
    /// What the kill left, before any recovery, by kind.
    left: BTreeMap<&'static str, usize>,
}

struct Run {
    seed: u64,
    iteration: usize,
    /// Per check that failed: how many times, and the first few in full.
    violations: BTreeMap<&'static str, (usize, Vec<String>)>,
    /// Kills after which at least one check failed.
    failed_kills: BTreeSet<usize>,
}

/// Full reports kept (and printed as they happen) per kind of violation.
const EXAMPLES_KEPT: usize = 2;

impl Run {
    fn new(seed: u64) -> Self {
        Run {
            seed,
            iteration: 0,
            violations: BTreeMap::new(),
            failed_kills: BTreeSet::new(),
        }
    }

    fn violation(&mut self, dir: &Path, kind: &'static str, message: String) {
        self.failed_kills.insert(self.iteration);
        let (count, examples) = self.violations.entry(kind).or_default();
        *count += 1;
        if examples.len() >= EXAMPLES_KEPT {
            return;
        }
        let mut text = format!(
            "kill {} (seed {}): {message}\n  directory: {}",
            self.iteration + 1,
            self.seed,
            names(dir).join(" ")
        );
        if let Ok(state) = fs::read_to_string(dir.join("checkpoint")) {
            let _ = write!(
                text,
                "\n  state file:\n    {}",
                state.trim_end().replace('\n', "\n    ")
            );
        }
        eprintln!("VIOLATION {text}");
        examples.push(text);
    }

    fn report(&self) -> String {
        let mut report = format!(
            "checks failed after {} of {} kills (seed {}):",
            self.failed_kills.len(),
            self.iteration + 1,
            self.seed
        );
        for (kind, (count, _)) in &self.violations {
            let _ = write!(report, "\n  {count:5}  {kind}");
        }
        for (kind, (_, examples)) in &self.violations {
            let _ = write!(report, "\n--- {kind}, first:\n{}", examples[0]);
        }
        report
    }
}

/// What a kill left in `dir`, before recovery (for the summary only).
fn classify(dir: &Path, state: Option<&State>) -> Vec<&'static str> {
    let mut kinds = Vec::new();
    let latest = state.map_or(0, |s| s.latest);
    for name in names(dir) {
        if name.starts_with("checkpoint.tmp") {
            kinds.push("a temporary state file");
        } else if let Some((number, suffix)) = parse_entry(&name) {
            if suffix == ".ckpt-pending" {
                kinds.push(if number > latest {
                    "an uncommitted save (pending marker)"
                } else {
                    "a committed save's pending marker"
                });
            } else if suffix == ".ckpt-manifest.json.tmp" {
                kinds.push("a temporary manifest");
            }
        }
    }
    match state {
        None => kinds.push("no state file yet"),
        Some(state) if state.listed.len() > MAX_TO_KEEP => {
            kinds.push("an unfinished sweep (state lists more than max_to_keep)")
        }
        Some(_) => {}
    }
    if kinds.is_empty() {
        kinds.push("nothing to recover");
    }
    kinds.sort();
    kinds.dedup();
    kinds
}

/// (b), (c), (e) on `dir`: opens a writer, then inspects what recovery
/// left. Returns the preserved checkpoints' numbers.
fn check_after_open(
    run: &mut Run,
    stats: &mut Stats,
    dir: &Path,
    state: Option<&State>,
) -> Vec<u64> {
    let latest = state.map_or(0, |s| s.latest);
    let (opened, warnings) = open_writer(dir, latest);
    let manager = match opened {
        Ok(manager) => manager,
        Err(err) => {
            run.violation(
                dir,
                "(b) a writer cannot open",
                format!("(b) a writer cannot open: {err}"),
            );
            return Vec::new();
        }
    };
    let warnings = warnings.lock().unwrap().clone();
    if warnings
        .iter()
        .any(|w| w.contains("it was being saved or deleted"))
    {
        stats.parent_recoveries += 1;
    }
    let unexpected: Vec<_> = warnings
        .iter()
        .filter(|w| !w.contains("it was being saved or deleted when the last writer stopped"))
        .collect();
    if !unexpected.is_empty() {
        run.violation(
            dir,
            "warnings on open",
            format!("unexpected warnings on open: {unexpected:?}"),
        );
    }
    let managed: Vec<u64> = manager.checkpoints().iter().map(|p| number_of(p)).collect();
    stats.most_managed = stats.most_managed.max(managed.len());
    if manager.latest_checkpoint().map(|p| number_of(&p)) != state.map(|s| s.latest)
        || state.map_or(Vec::new(), |s| s.listed.clone()) != managed
    {
        run.violation(
            dir,
            "the manager disagrees with the state file",
            format!(
                "the manager's latest {:?} and list {managed:?} differ from the state file",
                manager.latest_checkpoint()
            ),
        );
    }
    if manager.save_counter() < latest {
        run.violation(
            dir,
            "the save counter is behind",
            format!(
                "save counter {} is behind the latest {latest}",
                manager.save_counter()
            ),
        );
    }
    drop(manager); // releases the lock for the next child

    // (e)
    if managed.len() > MAX_TO_KEEP {
        run.violation(
            dir, "(e) more than max_to_keep checkpoints are managed",
            format!(
                "(e) {} checkpoints are managed after a restart, max_to_keep is {MAX_TO_KEEP}: {managed:?}",
                managed.len()
            ),
        );
    }
    for &number in &managed {
        match verify_checkpoint(&prefix(dir, number), Verification::Checksums) {
            Ok(Integrity::Intact) => {}
            other => run.violation(
                dir,
                "(e) a managed checkpoint does not verify",
                format!("(e) managed checkpoint ckpt-{number} does not verify: {other:?}"),
            ),
        }
    }

    // (c)
    let mut on_disk: BTreeSet<u64> = BTreeSet::new();
    for name in names(dir) {
        if name == "checkpoint" || name == "checkpoint.lock" {
            continue;
        }
        if name.starts_with("checkpoint.tmp") {
            run.violation(
                dir,
                "(c) a temporary state file survived the open",
                format!("(c) temporary state file {name} survived the open"),
            );
            continue;
        }
        match parse_entry(&name) {
            Some((_, suffix)) if suffix.ends_with(".ckpt-pending") => run.violation(
                dir,
                "(c) a pending marker survived the open",
                format!("(c) pending marker {name} survived the open"),
            ),
            Some((_, suffix)) if suffix.ends_with(".ckpt-manifest.json.tmp") => run.violation(
                dir,
                "(c) a temporary manifest survived the open",
                format!("(c) temporary manifest {name} survived the open"),
            ),
            Some((number, _)) => {
                on_disk.insert(number);
            }
            None => run.violation(
                dir,
                "(c) an unexpected file",
                format!("(c) unexpected file {name}"),
            ),
        }
    }
    let oldest_managed = managed.iter().copied().min();
    let mut preserved = Vec::new();
    for number in on_disk {
        if managed.contains(&number) || Some(number) == state.map(|s| s.latest) {
            continue;
        }
        let verified = verify_checkpoint(&prefix(dir, number), Verification::Checksums);
        let older = oldest_managed.is_some_and(|oldest| number < oldest);
        if !older || !matches!(verified, Ok(Integrity::Intact)) {
            run.violation(
                dir,
                "(c) an orphan",
                format!(
                    "(c) orphan: ckpt-{number} is not in the state file and is not a preserved \
                     checkpoint (older than every managed one: {older}; verification: {verified:?})"
                ),
            );
            continue;
        }
        if stats.preserved_seen.insert(number) {
            if let Some(problem) = content_problem(&prefix(dir, number), number) {
                run.violation(
                    dir,
                    "(c) a preserved checkpoint holds other bytes",
                    format!("preserved ckpt-{number}: {problem}"),
                );
            }
        }
        preserved.push(number);
    }
    preserved
}

/// One child, killed; then every check. Returns the latest number.
#[allow(clippy::too_many_arguments)]
fn one_kill(
    run: &mut Run,
    stats: &mut Stats,
    rng: &mut Rng,
    program: &ChildProgram,
    root: &Path,
    dir: &Path,
    previous_latest: u64,
    dirty: bool,
) -> (u64, bool) {
    let expected_restore = if previous_latest == 0 {
        "none".to_owned()
    } else {
        prefix(dir, previous_latest).display().to_string()
    };
    let wait_for_restore = run.iteration % RESTORE_CHECK_EVERY == RESTORE_CHECK_EVERY - 1;
    let mut child = child_command(program, dir).spawn().unwrap();
    let mut first_line = String::new();
    if wait_for_restore {
        stats.restore_waits += 1;
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut first_line).unwrap();
        child.stdout = Some(stdout.into_inner()); // nothing else is buffered
        std::thread::sleep(Duration::from_micros(rng.below(3_000)));
    } else {
        let range = DELAY_RANGES_US[rng.below(DELAY_RANGES_US.len() as u64) as usize];
        std::thread::sleep(Duration::from_micros(rng.below(range)));
    }
    let ended = kill_and_wait(child, first_line);
    assert_killed(
        &ended,
        &format!("kill {} (seed {})", run.iteration + 1, run.seed),
    );

    // The child restored the latest (it was intact: checked last time).
    match ended.stdout.lines().next() {
        Some(line) => {
            stats.restores_checked += 1;
            if line != format!("restored {expected_restore}") {
                run.violation(
                    dir,
                    "the child restored another checkpoint than the latest",
                    format!("the child printed {line:?}, expected the latest {expected_restore}"),
                );
            }
        }
        None if wait_for_restore => run.violation(
            dir,
            "the child never restored",
            "the child never printed what it restored".into(),
        ),
        None => {
            stats.killed_before_restore += 1;
            if dirty {
                stats.killed_while_recovering += 1;
            }
        }
    }
    if ended.stderr.contains("it was being saved or deleted") {
        stats.child_recoveries += 1;
    }
    // A line the kill cut short (no newline yet) is left out.
    let complete = &ended.stderr[..ended.stderr.rfind('\n').map_or(0, |end| end + 1)];
    let stray: Vec<&str> = complete
        .lines()
        .filter(|l| !l.contains("it was being saved or deleted when the last writer stopped"))
        .collect();
    if !stray.is_empty() {
        run.violation(
            dir,
            "the child warned",
            format!("the child warned: {stray:?}"),
        );
    }

    // (a)
    let state = match read_state(dir) {
        Ok(state) => state,
        Err(err) => {
            run.violation(
                dir,
                "(a) the state file does not parse",
                format!("(a) the state file does not parse: {err}"),
            );
            return (previous_latest, false);
        }
    };
    for kind in classify(dir, state.as_ref()) {
        *stats.left.entry(kind).or_default() += 1;
    }
    let latest = state.as_ref().map_or(0, |s| s.latest);
    // (f)
    if latest < previous_latest {
        run.violation(
            dir,
            "(f) the latest went back",
            format!("(f) the latest went back from ckpt-{previous_latest} to ckpt-{latest}"),
        );
    }
    // (d), before any recovery: the state file names nothing uncommitted.
    if latest > 0 {
        let latest_prefix = prefix(dir, latest);
        match verify_checkpoint(&latest_prefix, Verification::Checksums) {
            Ok(Integrity::Intact) => {
                if let Some(problem) = content_problem(&latest_prefix, latest) {
                    run.violation(
                        dir,
                        "(d) the latest holds other bytes",
                        format!("(d) latest: {problem}"),
                    );
                }
            }
            other => run.violation(
                dir,
                "(d) the latest does not verify",
                format!("(d) the latest ckpt-{latest} does not verify: {other:?}"),
            ),
        }
    }

    // (b), (c), (e): on every other kill on a clone, so that the original
    // keeps its leftovers for the next child to recover.
    let on_clone = run.iteration % 2 == 1;
    let checked = if on_clone {
        let clone = root.join("clone");
        if clone.exists() {
            fs::remove_dir_all(&clone).unwrap();
        }
        clone_dir(dir, &clone);
        clone
    } else {
        dir.to_path_buf()
    };
    let preserved = check_after_open(run, stats, &checked, state.as_ref());
    if on_clone {
        fs::remove_dir_all(&checked).unwrap();
    }
    let dirty_next = on_clone
        && names(dir).iter().any(|n| {
            n.starts_with("checkpoint.tmp") || n.ends_with(".ckpt-pending") || n.ends_with(".tmp")
        });
    let excess = preserved.len().saturating_sub(PRESERVED_KEPT);
    for &number in &preserved[..excess] {
        remove_checkpoint(&prefix(dir, number)).unwrap();
        stats.preserved_pruned += 1;
    }
    (latest, dirty_next)
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not a number")),
    )
}

#[test]
fn sigkill_at_random_instants() {
    let kills = env_number("CKPT_TORTURE_KILLS").map_or(DEFAULT_KILLS, |n| n as usize);
    let seed = env_number("CKPT_TORTURE_SEED").unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        mix(nanos ^ u64::from(std::process::id()))
    });
    eprintln!("torture: {kills} kills, seed {seed} (replay with CKPT_TORTURE_SEED={seed})");
    let root = tempfile::tempdir().unwrap();
    let program = child_program(root.path());
    let dir = root.path().join("run");
    let mut rng = Rng::new(seed);
    let mut stats = Stats::default();
    let mut run = Run::new(seed);
    let started = Instant::now();
    let (mut latest, mut dirty) = (0, false);
    for iteration in 0..kills {
        run.iteration = iteration;
        (latest, dirty) = one_kill(
            &mut run,
            &mut stats,
            &mut rng,
            &program,
            root.path(),
            &dir,
            latest,
            dirty,
        );
        if (iteration + 1) % 500 == 0 {
            eprintln!(
                "torture: {} kills, ckpt-{latest}, {:.0?}",
                iteration + 1,
                started.elapsed()
            );
        }
    }
    let elapsed = started.elapsed();
    let preserved_now = stats.preserved_seen.len() - stats.preserved_pruned;

    eprintln!(
        "torture: {} kills in {elapsed:.1?} (seed {seed})\n  \
         checkpoints committed: {latest} (the latest is ckpt-{latest}; numbers start at 1 and only grow)\n  \
         preserved checkpoints: {} seen, {preserved_now} on disk at the end, {} deleted by the test\n  \
         restores checked against the latest: {} ({} waited for); kills before the child's restore: {}, \
         {} of them with leftovers to recover\n  \
         interrupted saves removed on open: {} by a child, {} by the parent's check\n  \
         most checkpoints managed after a kill: {} (max_to_keep {MAX_TO_KEEP})",
        run.iteration + 1,
        stats.preserved_seen.len(),
        stats.preserved_pruned,
        stats.restores_checked,
        stats.restore_waits,
        stats.killed_before_restore,
        stats.killed_while_recovering,
        stats.child_recoveries,
        stats.parent_recoveries,
        stats.most_managed,
    );
    eprintln!("  what the kills left:");
    for (kind, count) in &stats.left {
        eprintln!("    {count:5}  {kind}");
    }
    assert!(latest > 0, "no checkpoint was ever committed");
    assert!(
        !stats.preserved_seen.is_empty() || run.iteration < 100,
        "no checkpoint was ever preserved"
    );
    assert!(run.violations.is_empty(), "{}", run.report());
}

/// A deterministic instance of one kill the torture makes at random: the
/// child dies right after the first file of the checkpoint being swept is
/// deleted (the callback deletes as the built-in deletion does, data files
/// first, then the process SIGKILLs itself). After the restart, checks (e)
/// must hold as after any kill.
#[test]
fn sigkill_while_a_swept_checkpoint_is_deleted() {
    let root = tempfile::tempdir().unwrap();
    let program = child_program(root.path());
    let dir = root.path().join("run");
    let mut command = child_command(&program, &dir);
    command.arg("die-while-deleting");
    let mut child = command.spawn().unwrap();
    // The child kills itself during the fourth save's sweep.
    child.wait().unwrap();
    let ended = kill_and_wait(child, String::new());
    assert_killed(&ended, "die-while-deleting");
    let state = read_state(&dir).unwrap().expect("three saves committed");
    assert_eq!(state.latest, 4);

    let mut run = Run::new(0);
    let mut stats = Stats::default();
    let latest_prefix = prefix(&dir, state.latest);
    assert_eq!(
        verify_checkpoint(&latest_prefix, Verification::Checksums).unwrap(),
        Integrity::Intact
    );
    check_after_open(&mut run, &mut stats, &dir, Some(&state));
    assert!(
        run.violations.is_empty(),
        "after a SIGKILL during the sweep of the fourth save: {}",
        run.report()
    );
}
