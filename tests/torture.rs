//! Crash torture: a child process (tests/c/torture_child.c) saves
//! checkpoints in an endless loop, now and then saving a listed number
//! again, and is killed with SIGKILL at random instants, again and again on
//! the same directory. Decoys named like checkpoints (`ckpt-1.3b-1.index`,
//! `ckpt-5.notes`, later `ckpt-<latest>.notes`, ...) are planted beside
//! them. After every kill the parent checks, through the Rust API, what a
//! restarted trainer relies on:
//!
//! (a) the state file parses (or there is none yet);
//! (b) a writer opens (running recovery), warns exactly about the staging
//!     directories the kill left (finishing a recorded commit, removing an
//!     unrecorded save), and is closed again;
//! (c) after that open no staging directory or temporary state file is
//!     left, and every `ckpt-N*` file belongs to a managed checkpoint
//!     (listed in the state file) or to a preserved one (saved before every
//!     managed one, intact): no orphans, no file of another save;
//! (d) the latest checkpoint verifies with checksums and is whole (every
//!     file from one save, exactly that save's files), even before recovery
//!     unless a recorded re-save of it is being moved into place;
//! (e) at most `max_to_keep` (3) checkpoints are managed, each whole and
//!     intact, from the save its state-file timestamp names;
//! (f) the latest's save never goes back; a listed number holds the same
//!     save as at the last check or a newer one (saved again since); a
//!     number not listed then is a new, higher one;
//! (g) the child died of the SIGKILL, never of its own failure;
//! (h) every decoy is still there with its bytes;
//! (i) every save the child reported committed (the save call returned, or,
//!     for a background save, a wait or the next save returned OK) is
//!     still listed with that save or a newer one, or was pushed out by
//!     `max_to_keep` newer saves: nothing committed is lost;
//! and whenever the child got as far as restoring, it restored the latest.
//!
//! Half of the iterations run recovery on a hard-linked clone of the
//! directory, leaving the original as the kill left it, so that the next
//! child does the recovery itself and may be killed while doing it.
//!
//! A second run kills a child that saves mostly in the background
//! (`ckpt_manager_save_async`, every fifth save blocking, re-saves after a
//! wait), so that most kills land while the library's background thread
//! writes or commits; the checks are the same.
//!
//! `cargo test --test torture` does 300 kills, and 100 of the background
//! saver. Environment: `CKPT_TORTURE_KILLS` and `CKPT_TORTURE_ASYNC_KILLS`
//! (numbers of kills; the long mode is
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
const DEFAULT_ASYNC_KILLS: usize = 100;
/// Every this many iterations the child is killed only after it restored.
const RESTORE_CHECK_EVERY: usize = 50;
/// Preserved checkpoints accumulate (one save in six); the parent deletes
/// all but the newest few so that long runs stay small.
const PRESERVED_KEPT: usize = 6;
/// Every this many kills the parent plants decoys named after the latest
/// checkpoint, which later saves sweep or save again, up to `DECOYS_MAX`.
const DECOY_EVERY: usize = 25;
const DECOYS_MAX: usize = 45;
/// Upper bounds (µs) of the random delay before the kill, one picked per
/// kill: the child needs ~10-20 ms to start, recover and restore, then
/// ~20-70 ms per save on a disk that really syncs (about half of it after
/// the commit point: moving files, the state file, deleting). So about a
/// third of the kills land before the restore, the rest at any point of
/// the first few saves.
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

const HEADER_SIZE: u64 = 40;
const MAGIC: &[u8; 8] = b"CKPTtor2";
const KIND_INDEX: u64 = 0;
const KIND_DATA1: u64 = 2;
const KIND_SHARD: u64 = 3;
const KINDS: u64 = 4;
const MANIFEST_SUFFIX: &str = ".ckpt-manifest.json";
const STAGING_SUFFIX: &str = ".ckpt-staging";
/// The marker of a new checkpoint placed before the state file names it.
const PENDING_SUFFIX: &str = ".ckpt-pending";

/// Which save wrote a checkpoint: its generation (the committed saves
/// before it, plus one) and the child's pid.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
struct SaveId {
    generation: u64,
    nonce: u64,
}

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn layout(number: u64, generation: u64) -> u64 {
    mix(number ^ (generation << 32) ^ 0xa5a5)
}

fn data_shards(number: u64, generation: u64) -> u64 {
    1 + layout(number, generation) % 2
}

fn has_kind(number: u64, generation: u64, kind: u64) -> bool {
    match kind {
        KIND_DATA1 => data_shards(number, generation) == 2,
        KIND_SHARD => layout(number, generation) / 2 % 3 == 0,
        _ => true,
    }
}

fn suffix_of(number: u64, generation: u64, kind: u64) -> String {
    match kind {
        KIND_INDEX => ".index".into(),
        KIND_SHARD => "/shard".into(),
        _ => format!(
            ".data-{:05}-of-{:05}",
            kind - 1,
            data_shards(number, generation)
        ),
    }
}

fn file_size(number: u64, generation: u64, kind: u64) -> u64 {
    let h = mix(number.wrapping_mul(KINDS).wrapping_add(kind) ^ mix(generation));
    match kind {
        KIND_INDEX => HEADER_SIZE + 256 + h % 4096,
        1 => 4096 + h % (1 << 20),
        KIND_DATA1 => 1024 + h % (64 << 10),
        _ => 512 + h % (32 << 10),
    }
}

fn body_matches(bytes: &[u8], number: u64, id: SaveId, kind: u64) -> bool {
    let seed = mix(number ^ (kind << 56)) ^ mix(id.generation ^ (id.nonce << 24));
    bytes[HEADER_SIZE as usize..]
        .iter()
        .zip(HEADER_SIZE..)
        .all(|(&byte, i)| {
            byte == ((seed >> ((i % 7) * 8))
                .wrapping_add(i.wrapping_mul(7))
                .wrapping_add(i >> 9)) as u8
        })
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

/// The names in the directory that save `generation` of checkpoint
/// `number` owns: its files, its manifest, its directory if it has one.
fn owned_names(number: u64, generation: u64) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = (0..KINDS)
        .filter(|&kind| kind != KIND_SHARD && has_kind(number, generation, kind))
        .map(|kind| format!("ckpt-{number}{}", suffix_of(number, generation, kind)))
        .collect();
    names.insert(format!("ckpt-{number}{MANIFEST_SUFFIX}"));
    if has_kind(number, generation, KIND_SHARD) {
        names.insert(format!("ckpt-{number}"));
    }
    names
}

/// Checks that checkpoint `number` is whole: the save its index names
/// wrote every one of its files (headers always, bodies when `bodies`),
/// and the directory holds exactly that save's files. Returns the save.
fn whole(
    dir: &Path,
    listing: &[String],
    decoys: &Decoys,
    number: u64,
    bodies: bool,
) -> Result<SaveId, String> {
    let prefix = prefix(dir, number);
    let mut id = None;
    for kind in 0..KINDS {
        let generation = id.map_or(0, |id: SaveId| id.generation);
        if kind != KIND_INDEX && !has_kind(number, generation, kind) {
            continue;
        }
        let path = PathBuf::from(format!(
            "{}{}",
            prefix.display(),
            suffix_of(number, generation, kind)
        ));
        let read = if bodies {
            fs::read(&path).map(|bytes| (bytes.len() as u64, bytes))
        } else {
            fs::File::open(&path).and_then(|file| {
                let len = file.metadata()?.len();
                let mut header = Vec::new();
                file.take(HEADER_SIZE).read_to_end(&mut header)?;
                Ok((len, header))
            })
        };
        let (len, bytes) = read.map_err(|err| format!("cannot read {}: {err}", path.display()))?;
        if bytes.len() < HEADER_SIZE as usize || &bytes[..8] != MAGIC {
            return Err(format!("{} has no header", path.display()));
        }
        let this = SaveId {
            generation: u64_at(&bytes, 24),
            nonce: u64_at(&bytes, 32),
        };
        let id = *id.get_or_insert(this);
        let size = file_size(number, id.generation, kind);
        let header_ok =
            this == id && u64_at(&bytes, 8) == number && u64_at(&bytes, 16) == size && len == size;
        if !header_ok || (bodies && !body_matches(&bytes, number, id, kind)) {
            return Err(format!(
                "{} ({} bytes, header: number {}, save {:?}) is not what save {id:?} of \
                 ckpt-{number} wrote ({size} bytes)",
                path.display(),
                len,
                u64_at(&bytes, 8),
                this
            ));
        }
    }
    let id = id.expect("the index is read first");
    let on_disk: BTreeSet<String> = listing
        .iter()
        .filter(|name| !decoys.contains(name))
        .filter(|name| {
            parse_entry(name).is_some_and(|(n, suffix)| {
                n == number && suffix != STAGING_SUFFIX && suffix != PENDING_SUFFIX
            })
        })
        .cloned()
        .collect();
    let owned = owned_names(number, id.generation);
    if on_disk != owned {
        return Err(format!(
            "ckpt-{number} (save {id:?}) should have exactly {owned:?}, the directory has {on_disk:?}"
        ));
    }
    if has_kind(number, id.generation, KIND_SHARD) && names(&prefix) != ["shard"] {
        return Err(format!(
            "{} holds {:?}, not just its shard",
            prefix.display(),
            names(&prefix)
        ));
    }
    Ok(id)
}

/// The clock's time for a generation, and back.
fn time_of(generation: u64) -> f64 {
    CLOCK_ORIGIN + CLOCK_STEP * generation as f64
}

fn generation_at(time: f64) -> u64 {
    ((time - CLOCK_ORIGIN) / CLOCK_STEP).round().max(0.0) as u64
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

/// The state file's latest and listed checkpoint numbers, with their
/// timestamps.
struct State {
    latest: u64,
    listed: Vec<u64>,
    timestamps: Vec<f64>,
    /// The newest save the state records: what the child's clock shows.
    generation: u64,
}

fn read_state(dir: &Path) -> Result<Option<State>, String> {
    let state = get_checkpoint_state(dir).map_err(|err| err.to_string())?;
    Ok(state.map(|state| {
        let newest = state
            .all_model_checkpoint_timestamps
            .iter()
            .copied()
            .fold(state.last_preserved_timestamp.max(CLOCK_ORIGIN), f64::max);
        State {
            latest: number_of(&ckpt_manager::paths::path_from_bytes(
                &state.model_checkpoint_path,
            )),
            listed: state
                .all_model_checkpoint_paths
                .iter()
                .map(|p| number_of(&ckpt_manager::paths::path_from_bytes(p)))
                .collect(),
            timestamps: state.all_model_checkpoint_timestamps,
            generation: generation_at(newest),
        }
    }))
}

fn prefix(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("ckpt-{number}"))
}

/// A staging directory: the save of `base` it holds, and whether its
/// commit record is readable (the save is committed and is finished on
/// open) or not (it is removed on open).
struct Staging {
    base: String,
    committed: bool,
}

fn stagings(dir: &Path) -> Vec<Staging> {
    names(dir)
        .into_iter()
        .filter_map(|name| {
            let base = name.strip_suffix(STAGING_SUFFIX)?.to_owned();
            let record = fs::read(dir.join(&name).join("commit-record.json")).ok();
            let committed = record
                .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
                .is_some_and(|record| record["format"] == "ckpt-manager-commit");
            Some(Staging { base, committed })
        })
        .collect()
}

/// The bases of new checkpoints placed under a pending marker (their
/// staging directory, renamed) that the state file does not name: recovery
/// deletes what they placed.
fn unnamed_pending(dir: &Path) -> Vec<String> {
    let state = fs::read_to_string(dir.join("checkpoint")).unwrap_or_default();
    names(dir)
        .into_iter()
        .filter_map(|name| name.strip_suffix(PENDING_SUFFIX).map(str::to_owned))
        .filter(|base| {
            !state.lines().any(|line| {
                line.split_once(": ")
                    .is_some_and(|(_, value)| value == format!("\"{base}\""))
            })
        })
        .collect()
}

/// What recovery on `dir` must warn, one warning per staging directory
/// and per unnamed pending marker.
fn expected_warnings(dir: &Path) -> Vec<String> {
    let mut warnings: Vec<String> = stagings(dir)
        .iter()
        .map(|staging| {
            let prefix = dir.join(&staging.base);
            if staging.committed {
                format!(
                    "finishing the commit of '{}', interrupted when the last writer stopped",
                    prefix.display()
                )
            } else {
                format!(
                    "removing an uncommitted save of '{}' left when the last writer stopped",
                    prefix.display()
                )
            }
        })
        .collect();
    warnings.extend(unnamed_pending(dir).iter().map(|base| {
        format!(
            "removing '{}': it was being saved or deleted when the last writer stopped",
            dir.join(base).display()
        )
    }));
    warnings.sort();
    warnings
}

fn has_temporary_state_file(dir: &Path) -> bool {
    names(dir).iter().any(|n| n.starts_with("checkpoint.tmp"))
}

/// A copy of `from` made of hard links (recovery renames and unlinks,
/// never writes into a file), without the lock file.
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

/// Files named like checkpoints' that no checkpoint owns, with their bytes.
#[derive(Default)]
struct Decoys(BTreeMap<String, Vec<u8>>);

impl Decoys {
    fn plant(&mut self, dir: &Path, name: String) {
        if self.0.contains_key(&name) || dir.join(&name).exists() {
            return;
        }
        let bytes = format!("decoy {name}, not a checkpoint's file\n").into_bytes();
        fs::write(dir.join(&name), &bytes).unwrap();
        self.0.insert(name, bytes);
    }

    fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// (h): every decoy still there, byte for byte.
    fn check(&self, run: &mut Run, dir: &Path) {
        for (name, bytes) in &self.0 {
            if fs::read(dir.join(name)).ok().as_ref() != Some(bytes) {
                run.violation(
                    dir,
                    "(h) a decoy was deleted or changed",
                    format!("(h) decoy {name} was deleted or changed"),
                );
            }
        }
    }
}

/// A writer on `dir` as the child configures it, with the child's clock,
/// collecting warnings.
fn open_writer(
    dir: &Path,
    generation: u64,
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
    let now = time_of(generation);
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

/// How the child saves.
#[derive(Clone, Copy, Debug)]
enum Saves {
    Blocking,
    /// Mostly `ckpt_manager_save_async`.
    Background,
}

fn child_command(child: &ChildProgram, dir: &Path, saves: Saves) -> Command {
    let mut command = Command::new(&child.program);
    command.arg(dir);
    if let Saves::Background = saves {
        command.arg("async");
    }
    command
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
    /// Recovery warnings: (finished commits, removed saves).
    child_recoveries: (usize, usize),
    parent_recoveries: (usize, usize),
    resaves_seen: usize,
    /// Saves the children reported committed, checked by (i).
    reported_commits: usize,
    preserved_seen: BTreeSet<u64>,
    preserved_pruned: usize,
    most_managed: usize,
    /// What the kill left, before any recovery, by kind.
    left: BTreeMap<&'static str, usize>,
}

/// What the last check saw after recovery.
#[derive(Default)]
struct Known {
    latest: Option<(u64, SaveId)>,
    listed: BTreeMap<u64, SaveId>,
    /// The highest checkpoint number seen so far.
    highest: u64,
    /// Saves whose every byte was checked (verification with checksums
    /// covers them afterwards).
    bytes_checked: BTreeSet<(u64, SaveId)>,
}

impl Known {
    fn latest_generation(&self) -> u64 {
        self.latest.map_or(0, |(_, id)| id.generation)
    }
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
    let temporary_state = has_temporary_state_file(dir);
    let stagings = stagings(dir);
    for staging in &stagings {
        let resave = parse_entry(&staging.base)
            .is_some_and(|(number, _)| state.is_some_and(|s| s.listed.contains(&number)));
        kinds.push(match (staging.committed, temporary_state, resave) {
            (false, _, false) => "a save before its commit point (staging, no commit record)",
            (false, _, true) => {
                "a re-save of a listed number before its commit point (staging, no commit record)"
            }
            (true, true, false) => {
                "a committed save being moved into place (commit record, new state file aside)"
            }
            (true, true, true) => {
                "a committed re-save of a listed number being moved into place \
                 (commit record, new state file aside)"
            }
            (true, false, _) => {
                "a committed save in place, deleting swept files or staging (commit record)"
            }
        });
    }
    if stagings.is_empty() && temporary_state {
        kinds.push("a temporary state file without staging");
    }
    if state.is_none() {
        kinds.push("no state file yet");
    }
    if kinds.is_empty() {
        kinds.push("nothing to recover");
    }
    kinds.sort();
    kinds.dedup();
    kinds
}

/// The checkpoints found after an open: the latest and the managed ones
/// with the save each holds, and the preserved ones.
struct Found {
    latest: Option<(u64, SaveId)>,
    listed: BTreeMap<u64, SaveId>,
    preserved: Vec<(SaveId, u64)>,
}

/// Whole (and its bytes checked once per save), or a violation.
fn check_whole(
    run: &mut Run,
    known: &mut Known,
    dir: &Path,
    listing: &[String],
    decoys: &Decoys,
    number: u64,
    kind: &'static str,
) -> Option<SaveId> {
    let checked = |id| known.bytes_checked.contains(&(number, id));
    let result = whole(dir, listing, decoys, number, false).and_then(|id| {
        if checked(id) {
            Ok(id)
        } else {
            whole(dir, listing, decoys, number, true)
        }
    });
    match result {
        Ok(id) => {
            known.bytes_checked.insert((number, id));
            Some(id)
        }
        Err(problem) => {
            run.violation(dir, kind, format!("{kind}: {problem}"));
            None
        }
    }
}

/// (b), (c), (e), (h) on `dir`: opens a writer, then inspects what
/// recovery left.
fn check_after_open(
    run: &mut Run,
    stats: &mut Stats,
    known: &mut Known,
    decoys: &Decoys,
    dir: &Path,
    state: Option<&State>,
) -> Option<Found> {
    let expected = expected_warnings(dir);
    // The child's clock: the next save's time.
    let (opened, warnings) = open_writer(dir, state.map_or(0, |s| s.generation) + 1);
    let manager = match opened {
        Ok(manager) => manager,
        Err(err) => {
            run.violation(
                dir,
                "(b) a writer cannot open",
                format!("(b) a writer cannot open: {err}"),
            );
            return None;
        }
    };
    let mut warnings = warnings.lock().unwrap().clone();
    warnings.sort();
    stats.parent_recoveries.0 += warnings
        .iter()
        .filter(|w| w.starts_with("finishing"))
        .count();
    stats.parent_recoveries.1 += warnings
        .iter()
        .filter(|w| w.starts_with("removing"))
        .count();
    if warnings != expected {
        run.violation(
            dir,
            "(b) recovery warned other than the kill's leftovers call for",
            format!("(b) warnings on open: {warnings:?}, expected {expected:?}"),
        );
    }
    let after = match read_state(dir) {
        Ok(after) => after,
        Err(err) => {
            run.violation(
                dir,
                "(a) the state file does not parse after recovery",
                format!("(a) after recovery: {err}"),
            );
            return None;
        }
    };
    let managed: Vec<u64> = manager.checkpoints().iter().map(|p| number_of(p)).collect();
    stats.most_managed = stats.most_managed.max(managed.len());
    let latest = manager.latest_checkpoint().map(|p| number_of(&p));
    if latest != after.as_ref().map(|s| s.latest)
        || after.as_ref().map_or(Vec::new(), |s| s.listed.clone()) != managed
    {
        run.violation(
            dir,
            "the manager disagrees with the state file",
            format!(
                "the manager's latest {latest:?} and list {managed:?} differ from the state file"
            ),
        );
    }
    let save_counter = manager.save_counter();
    drop(manager); // releases the lock for the next child

    let listing = names(dir);
    // (c)
    let mut on_disk: BTreeSet<u64> = BTreeSet::new();
    for name in &listing {
        if name == "checkpoint" || name == "checkpoint.lock" || decoys.contains(name) {
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
        match parse_entry(name) {
            Some((_, STAGING_SUFFIX)) => run.violation(
                dir,
                "(c) a staging directory survived the open",
                format!("(c) staging directory {name} survived the open"),
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
    let highest = managed.iter().chain(&on_disk).copied().max().unwrap_or(0);
    if save_counter < highest {
        run.violation(
            dir,
            "the save counter is behind",
            format!("save counter {save_counter} is behind ckpt-{highest}"),
        );
    }

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
    let mut listed = BTreeMap::new();
    for (i, &number) in managed.iter().enumerate() {
        match verify_checkpoint(&prefix(dir, number), Verification::Checksums) {
            Ok(Integrity::Intact) => {}
            other => run.violation(
                dir,
                "(e) a managed checkpoint does not verify",
                format!("(e) managed checkpoint ckpt-{number} does not verify: {other:?}"),
            ),
        }
        let kind = "(e) a managed checkpoint is not whole";
        let Some(id) = check_whole(run, known, dir, &listing, decoys, number, kind) else {
            continue;
        };
        let timestamp = after.as_ref().and_then(|s| s.timestamps.get(i).copied());
        if timestamp != Some(time_of(id.generation)) {
            run.violation(
                dir,
                "(e) the state file's time is not the save's",
                format!(
                    "(e) ckpt-{number} holds save {id:?} (time {}), the state file says {timestamp:?}",
                    time_of(id.generation)
                ),
            );
        }
        listed.insert(number, id);
    }
    let oldest_managed = listed.values().map(|id| id.generation).min();
    let mut preserved = Vec::new();
    for number in on_disk {
        if managed.contains(&number) {
            continue;
        }
        let verified = verify_checkpoint(&prefix(dir, number), Verification::Checksums);
        let kind = "(c) an orphan";
        if !matches!(verified, Ok(Integrity::Intact)) {
            run.violation(
                dir,
                kind,
                format!(
                    "(c) orphan: ckpt-{number} is not in the state file and is not a preserved \
                     checkpoint (verification: {verified:?})"
                ),
            );
            continue;
        }
        let Some(id) = check_whole(run, known, dir, &listing, decoys, number, kind) else {
            continue;
        };
        // Preserved when swept: saved before every checkpoint listed since.
        if oldest_managed.is_some_and(|oldest| id.generation >= oldest) {
            run.violation(
                dir,
                kind,
                format!(
                    "(c) orphan: ckpt-{number} (save {id:?}) is not in the state file and is not \
                     older than every managed checkpoint (oldest save {oldest_managed:?})"
                ),
            );
            continue;
        }
        stats.preserved_seen.insert(number);
        preserved.push((id, number));
    }
    preserved.sort();
    decoys.check(run, dir);
    let latest = after.and_then(|s| listed.get(&s.latest).map(|&id| (s.latest, id)));
    Some(Found {
        latest,
        listed,
        preserved,
    })
}

/// (f): what the last check knew against what this one found.
fn check_progress(run: &mut Run, stats: &mut Stats, known: &mut Known, dir: &Path, found: &Found) {
    let before = known.latest_generation();
    if let Some((number, id)) = found.latest {
        if id.generation < before || (id.generation == before && Some((number, id)) != known.latest)
        {
            run.violation(
                dir,
                "(f) the latest went back",
                format!(
                    "(f) the latest went back from {:?} to ckpt-{number} save {id:?}",
                    known.latest
                ),
            );
        }
    } else if known.latest.is_some() {
        run.violation(
            dir,
            "(f) the latest went back",
            format!("(f) the latest {:?} is gone", known.latest),
        );
    }
    for (&number, &id) in &found.listed {
        match known.listed.get(&number) {
            Some(&was) if was == id => {}
            Some(_) if id.generation > before => stats.resaves_seen += 1,
            Some(&was) => run.violation(
                dir,
                "(f) a listed checkpoint holds an older save",
                format!(
                    "(f) ckpt-{number} held save {was:?}, now {id:?}, not newer than the latest's \
                     save {before}"
                ),
            ),
            None if number > known.highest && id.generation > before => {}
            None => run.violation(
                dir,
                "(f) a new checkpoint took an old number",
                format!(
                    "(f) ckpt-{number} (save {id:?}) was not listed, and is not above the highest \
                     number seen ({}) or newer than the latest's save {before}",
                    known.highest
                ),
            ),
        }
    }
    known.highest = found
        .listed
        .keys()
        .chain(found.preserved.iter().map(|(_, number)| number))
        .copied()
        .fold(known.highest, u64::max);
    known.latest = found.latest;
    known.listed = found.listed.clone();
}

/// The saves a child reported committed, from its complete lines (the
/// kill may cut the last one short).
fn reported_commits(stdout: &str) -> Vec<(u64, SaveId)> {
    let complete = &stdout[..stdout.rfind('\n').map_or(0, |end| end + 1)];
    complete
        .lines()
        .filter(|line| line.starts_with("committed "))
        .map(|line| {
            let parsed = line
                .strip_prefix("committed ")
                .and_then(|rest| rest.rsplit_once(" save "))
                .and_then(|(prefix, rest)| {
                    let (generation, nonce) = rest.split_once(" by ")?;
                    let id = SaveId {
                        generation: generation.parse().ok()?,
                        nonce: nonce.parse().ok()?,
                    };
                    Some((number_of(Path::new(prefix)), id))
                });
            parsed.unwrap_or_else(|| panic!("the child printed {line:?}"))
        })
        .collect()
}

/// (i): every save the child reported committed survived: its number is
/// listed with that save or a newer one (saved again), or it is no longer
/// listed because `max_to_keep` newer saves pushed it out (a checkpoint
/// leaves the list only by such a sweep).
fn check_reported_commits(
    run: &mut Run,
    stats: &mut Stats,
    dir: &Path,
    found: &Found,
    reported: &[(u64, SaveId)],
) {
    for &(number, id) in reported {
        stats.reported_commits += 1;
        let newer = found
            .listed
            .values()
            .filter(|listed| listed.generation > id.generation)
            .count();
        let survived = match found.listed.get(&number) {
            Some(&now) => now == id || now.generation > id.generation,
            None => newer >= MAX_TO_KEEP,
        };
        if !survived {
            run.violation(
                dir,
                "(i) a save the child reported committed is lost",
                format!(
                    "(i) the child reported ckpt-{number} save {id:?} committed; after the kill \
                     the listed checkpoints hold {:?}",
                    found.listed
                ),
            );
        }
    }
}

/// One child, killed; then every check. Returns whether the original
/// directory keeps leftovers for the next child to recover.
#[allow(clippy::too_many_arguments)]
fn one_kill(
    run: &mut Run,
    stats: &mut Stats,
    known: &mut Known,
    decoys: &mut Decoys,
    rng: &mut Rng,
    program: &ChildProgram,
    saves: Saves,
    root: &Path,
    dir: &Path,
    dirty: bool,
) -> bool {
    let expected_restore = match known.latest {
        None => "restored none".to_owned(),
        Some((number, id)) => format!(
            "restored {} save {} by {}",
            prefix(dir, number).display(),
            id.generation,
            id.nonce
        ),
    };
    let child_may_warn = expected_warnings(dir);
    let wait_for_restore = run.iteration % RESTORE_CHECK_EVERY == RESTORE_CHECK_EVERY - 1;
    let mut child = child_command(program, dir, saves).spawn().unwrap();
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

    // The child restored the latest (it was whole: checked last time).
    match ended.stdout.lines().next() {
        Some(line) => {
            stats.restores_checked += 1;
            if line != expected_restore {
                run.violation(
                    dir,
                    "the child restored another checkpoint than the latest",
                    format!("the child printed {line:?}, expected {expected_restore:?}"),
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
    // The child may warn only about what the last kill left. A line the
    // kill cut short (no newline yet) is left out.
    let complete = &ended.stderr[..ended.stderr.rfind('\n').map_or(0, |end| end + 1)];
    for line in complete.lines() {
        match child_may_warn.iter().find(|w| line.ends_with(w.as_str())) {
            Some(w) if w.starts_with("finishing") => stats.child_recoveries.0 += 1,
            Some(_) => stats.child_recoveries.1 += 1,
            None => run.violation(
                dir,
                "the child warned",
                format!("the child warned: {line:?} (expected only some of {child_may_warn:?})"),
            ),
        }
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
            return false;
        }
    };
    for kind in classify(dir, state.as_ref()) {
        *stats.left.entry(kind).or_default() += 1;
    }
    // (d), before any recovery: the state file names a whole checkpoint,
    // unless a committed re-save of it is being moved into place.
    if let Some(state) = &state {
        let latest_base = format!("ckpt-{}", state.latest);
        let replacing = has_temporary_state_file(dir)
            && stagings(dir)
                .iter()
                .any(|s| s.committed && s.base == latest_base);
        if !replacing {
            match verify_checkpoint(&prefix(dir, state.latest), Verification::Checksums) {
                Ok(Integrity::Intact) => {}
                other => run.violation(
                    dir,
                    "(d) the latest does not verify",
                    format!("(d) the latest {latest_base} does not verify: {other:?}"),
                ),
            }
            let kind = "(d) the latest is not whole";
            check_whole(run, known, dir, &names(dir), decoys, state.latest, kind);
        }
    }
    decoys.check(run, dir);

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
    let found = check_after_open(run, stats, known, decoys, &checked, state.as_ref());
    if on_clone {
        fs::remove_dir_all(&checked).unwrap();
    }
    let Some(found) = found else {
        return false;
    };
    check_progress(run, stats, known, dir, &found);
    let reported = reported_commits(&ended.stdout);
    check_reported_commits(run, stats, dir, &found, &reported);
    let dirty_next = on_clone && (!stagings(dir).is_empty() || has_temporary_state_file(dir));
    let excess = found.preserved.len().saturating_sub(PRESERVED_KEPT);
    for &(_, number) in &found.preserved[..excess] {
        remove_checkpoint(&prefix(dir, number)).unwrap();
        stats.preserved_pruned += 1;
    }
    // (h): decoys named after a checkpoint that will be swept or saved again.
    if run.iteration % DECOY_EVERY == DECOY_EVERY - 1 && decoys.0.len() < DECOYS_MAX {
        if let Some((number, _)) = known.latest {
            decoys.plant(dir, format!("ckpt-{number}.notes"));
            decoys.plant(dir, format!("ckpt-{number}.3b-1.index"));
        }
    }
    dirty_next
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
    torture(Saves::Blocking, kills);
}

#[test]
fn sigkill_at_random_instants_during_background_saves() {
    let kills = env_number("CKPT_TORTURE_ASYNC_KILLS").map_or(DEFAULT_ASYNC_KILLS, |n| n as usize);
    torture(Saves::Background, kills);
}

fn torture(saves: Saves, kills: usize) {
    let seed = env_number("CKPT_TORTURE_SEED").unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        mix(nanos ^ u64::from(std::process::id()))
    });
    eprintln!(
        "torture ({saves:?} saves): {kills} kills, seed {seed} (replay with CKPT_TORTURE_SEED={seed})"
    );
    let root = tempfile::tempdir().unwrap();
    let program = child_program(root.path());
    let dir = root.path().join("run");
    fs::create_dir(&dir).unwrap();
    let mut decoys = Decoys::default();
    for name in [
        "ckpt-1.3b-1.index",
        "ckpt-1.3b-1.data-00000-of-00001",
        "model-2.index",
        "ckpt-5.notes",
        "ckpt-7x.index",
    ] {
        decoys.plant(&dir, name.into());
    }
    let mut rng = Rng::new(seed);
    let mut stats = Stats::default();
    let mut known = Known::default();
    let mut run = Run::new(seed);
    let started = Instant::now();
    let mut dirty = false;
    // The kills land where the machine's speed puts them: on a loaded
    // machine a run may see no re-save or preservation in `kills` kills.
    // It goes on (up to three times as long) until it has, so that the
    // checks below test those paths instead of failing for want of them.
    let covered = |stats: &Stats| stats.resaves_seen > 0 && !stats.preserved_seen.is_empty();
    let mut iteration = 0;
    while iteration < kills || (kills >= 100 && iteration < 3 * kills && !covered(&stats)) {
        run.iteration = iteration;
        dirty = one_kill(
            &mut run,
            &mut stats,
            &mut known,
            &mut decoys,
            &mut rng,
            &program,
            saves,
            root.path(),
            &dir,
            dirty,
        );
        if (iteration + 1) % 500 == 0 {
            let (number, id) = known.latest.unwrap_or((0, SaveId::default()));
            eprintln!(
                "torture ({saves:?} saves): {} kills, latest ckpt-{number} (save {}), {:.0?}",
                iteration + 1,
                id.generation,
                started.elapsed()
            );
        }
        iteration += 1;
    }
    let elapsed = started.elapsed();
    let preserved_now = stats.preserved_seen.len() - stats.preserved_pruned;
    let (latest, commits) = known
        .latest
        .map_or((0, 0), |(number, id)| (number, id.generation));

    eprintln!(
        "torture ({saves:?} saves): {} kills in {elapsed:.1?} (seed {seed})\n  \
         saves committed: {commits}; the latest is ckpt-{latest}, the highest number ckpt-{}\n  \
         saves the children reported committed, found after the kill: {}\n  \
         re-saves of a listed number seen committed: {}\n  \
         preserved checkpoints: {} seen, {preserved_now} on disk at the end, {} deleted by the test\n  \
         decoys: {}, all intact\n  \
         restores checked against the latest: {} ({} waited for); kills before the child's restore: {}, \
         {} of them with leftovers to recover\n  \
         commits finished on open: {} by a child, {} by the parent's check\n  \
         uncommitted saves removed on open: {} by a child, {} by the parent's check\n  \
         most checkpoints managed after a kill: {} (max_to_keep {MAX_TO_KEEP})",
        run.iteration + 1,
        known.highest,
        stats.reported_commits,
        stats.resaves_seen,
        stats.preserved_seen.len(),
        stats.preserved_pruned,
        decoys.0.len(),
        stats.restores_checked,
        stats.restore_waits,
        stats.killed_before_restore,
        stats.killed_while_recovering,
        stats.child_recoveries.0,
        stats.parent_recoveries.0,
        stats.child_recoveries.1,
        stats.parent_recoveries.1,
        stats.most_managed,
    );
    eprintln!("  what the kills left:");
    for (kind, count) in &stats.left {
        eprintln!("    {count:5}  {kind}");
    }
    assert!(commits > 0, "no checkpoint was ever committed");
    assert!(
        stats.reported_commits > 0,
        "no child reported a committed save"
    );
    assert!(
        !stats.preserved_seen.is_empty() || kills < 100,
        "no checkpoint was ever preserved"
    );
    assert!(
        stats.resaves_seen > 0 || kills < 100,
        "no re-save of a listed number was ever committed"
    );
    assert!(run.violations.is_empty(), "{}", run.report());
}

/// A deterministic instance of one kill the torture makes at random: the
/// child dies right after the first file of the checkpoint being swept is
/// deleted (a delete callback deletes it, then the process SIGKILLs
/// itself). After the restart, checks (b), (c), (e) must hold as after any
/// kill.
#[test]
fn sigkill_while_a_swept_checkpoint_is_deleted() {
    let root = tempfile::tempdir().unwrap();
    let program = child_program(root.path());
    let dir = root.path().join("run");
    let mut command = child_command(&program, &dir, Saves::Blocking);
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
    let mut known = Known::default();
    let latest_prefix = prefix(&dir, state.latest);
    assert_eq!(
        verify_checkpoint(&latest_prefix, Verification::Checksums).unwrap(),
        Integrity::Intact
    );
    let found = check_after_open(
        &mut run,
        &mut stats,
        &mut known,
        &Decoys::default(),
        &dir,
        Some(&state),
    );
    assert_eq!(
        found.and_then(|found| found.latest).map(|(n, _)| n),
        Some(4)
    );
    assert!(
        run.violations.is_empty(),
        "after a SIGKILL during the sweep of the fourth save: {}",
        run.report()
    );
}
