//! The demo trainer (`examples/mlp_trainer.c`, what `make run` shows):
//! a run interrupted and resumed, by `--stop-at` or by SIGKILL at random
//! instants, ends with the bits of a run straight through: the exported
//! weights, the final `.safetensors` checkpoint (weights, Adam moments,
//! step, generator state) and the files left in the directory. A run
//! preempted by SIGTERM saves the step it is at, exits 0, and resumed ends
//! with the same weights and tensors. Each of these runs again with
//! `--async` (saves on the library's background thread), against the same
//! straight run without it.
//!
//! The SIGKILL test draws its instants from a seed it prints; set
//! `CKPT_DEMO_SEED` to replay one.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const STEPS: u64 = 2000;
const SAVE_EVERY: u64 = 100;

fn trainer() -> PathBuf {
    support::c_program_with_libs("mlp_trainer", &["examples/mlp_trainer.c"], &["-lm"])
}

/// How a run saves: `SYNC` or `ASYNC` (`--async`).
const SYNC: &[&str] = &[];
const ASYNC: &[&str] = &["--async"];

/// `args` followed by the save mode's flags.
fn with_mode<'a>(args: &[&'a str], mode: &[&'a str]) -> Vec<&'a str> {
    args.iter().chain(mode).copied().collect()
}

fn run(directory: &Path, args: &[&str]) -> Output {
    support::command(&trainer())
        .arg(directory)
        .args(args)
        .output()
        .unwrap()
}

/// Runs the trainer to a successful exit and returns its stdout.
fn run_ok(directory: &Path, args: &[&str]) -> String {
    let output = run(directory, args);
    support::assert_success(&output, &format!("mlp_trainer {args:?}"));
    String::from_utf8(output.stdout).unwrap()
}

/// What a finished run leaves: its output with the directory replaced by
/// `DIR`, the exported weights, the final checkpoint and the file names.
struct Finished {
    stdout: String,
    exported: Vec<u8>,
    checkpoint: Vec<u8>,
    /// Every kept checkpoint's `.safetensors` file, by name.
    kept: Vec<(String, Vec<u8>)>,
    files: Vec<String>,
}

fn finished(directory: &Path, stdout: &str, export: &Path) -> Finished {
    let stdout = stdout.replace(directory.to_str().unwrap(), "DIR");
    assert!(
        stdout.contains(&format!("done at step {STEPS}:")),
        "{stdout}"
    );
    let files = support::file_names(directory);
    let kept = files
        .iter()
        .filter(|name| name.ends_with(".safetensors"))
        .map(|name| (name.clone(), std::fs::read(directory.join(name)).unwrap()))
        .collect();
    Finished {
        stdout,
        exported: std::fs::read(export).unwrap(),
        checkpoint: std::fs::read(directory.join("ckpt-20.safetensors")).unwrap(),
        kept,
        files,
    }
}

/// The run straight through, once per test process, and how long it took.
fn straight_run() -> &'static (Finished, Duration) {
    static STRAIGHT: OnceLock<(Finished, Duration)> = OnceLock::new();
    STRAIGHT.get_or_init(|| {
        let root = tempfile::tempdir().unwrap();
        let directory = root.path().join("run");
        let export = root.path().join("weights.bin");
        let start = Instant::now();
        let stdout = run_ok(&directory, &["--export", export.to_str().unwrap()]);
        let elapsed = start.elapsed();
        assert!(stdout.starts_with("no checkpoint in"), "{stdout}");
        (finished(&directory, &stdout, &export), elapsed)
    })
}

fn straight() -> &'static Finished {
    &straight_run().0
}

/// Every "step N  loss X  saved DIR/ckpt-K" line of an output.
fn save_lines(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter(|line| line.starts_with("step ") && line.contains(" loss "))
        .map(str::to_owned)
        .collect()
}

/// The step in "resumed from DIR/ckpt-K at step N (...)".
fn resumed_step(stdout: &str) -> Option<u64> {
    let line = stdout.lines().find(|l| l.starts_with("resumed from "))?;
    let rest = line.split(" at step ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// The step of a "step N ..." line.
fn line_step(line: &str) -> u64 {
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The resumed run's final state is the straight run's, bit for bit.
fn assert_same_as_straight(resumed: &Finished, what: &str) {
    let straight = straight();
    assert_eq!(
        resumed.exported, straight.exported,
        "{what}: exported weights differ"
    );
    assert_eq!(
        resumed.checkpoint, straight.checkpoint,
        "{what}: ckpt-20.safetensors differs"
    );
    assert_eq!(
        resumed.files, straight.files,
        "{what}: directory contents differ"
    );
    assert!(
        resumed.kept == straight.kept,
        "{what}: the kept .safetensors files differ"
    );
    let last_line = |out: &str| out.lines().last().unwrap().to_owned();
    assert_eq!(
        last_line(&resumed.stdout),
        last_line(&straight.stdout),
        "{what}"
    );
}

/// Each saved step printed by `stdout` has the loss the straight run printed.
fn assert_losses_match_straight(stdout: &str, what: &str) {
    let expected: BTreeSet<String> = save_lines(&straight().stdout).into_iter().collect();
    for line in save_lines(stdout) {
        assert!(
            expected.contains(&line),
            "{what}: '{line}' is not in the straight run:\n{}",
            straight().stdout
        );
    }
}

#[test]
fn the_final_checkpoint_holds_every_registered_tensor() {
    use safetensors::{Dtype, SafeTensors};
    let straight = straight();
    let (_, metadata) = SafeTensors::read_metadata(&straight.checkpoint).unwrap();
    let metadata = metadata.metadata().clone().unwrap();
    assert_eq!(metadata["step"], "2000");
    assert_eq!(metadata["checkpoint_number"], "20");
    let file = SafeTensors::deserialize(&straight.checkpoint).unwrap();
    let mut names = file.names();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "W1",
            "W1.adam_m",
            "W1.adam_v",
            "W2",
            "W2.adam_m",
            "W2.adam_v",
            "b1",
            "b1.adam_m",
            "b1.adam_v",
            "b2",
            "b2.adam_m",
            "b2.adam_v",
            "rng",
            "seed",
            "step"
        ]
    );
    let tensor = |name: &str| file.tensor(name).unwrap();
    for (name, shape) in [
        ("W1", [32, 8].as_slice()),
        ("b1", &[32]),
        ("W2", &[1, 32]),
        ("b2", &[1]),
    ] {
        for suffix in ["", ".adam_m", ".adam_v"] {
            let view = tensor(&format!("{name}{suffix}"));
            assert_eq!(
                (view.dtype(), view.shape()),
                (Dtype::F32, shape),
                "{name}{suffix}"
            );
        }
    }
    let scalar = |name: &str, dtype| {
        let view = tensor(name);
        assert_eq!(
            (view.dtype(), view.shape()),
            (dtype, [].as_slice()),
            "{name}"
        );
        u64::from_le_bytes(view.data().try_into().unwrap())
    };
    assert_eq!(scalar("step", Dtype::I64), 2000);
    assert_eq!(scalar("seed", Dtype::U64), 42);
    scalar("rng", Dtype::U64);
    // --export writes W1, b1, W2, b2: the checkpoint's bytes.
    let weights: Vec<u8> = ["W1", "b1", "W2", "b2"]
        .iter()
        .flat_map(|name| tensor(name).data().to_vec())
        .collect();
    assert_eq!(weights, straight.exported);
    // Training did something: the loss fell.
    let losses: Vec<f64> = save_lines(&straight.stdout)
        .iter()
        .map(|l| l.split_whitespace().nth(3).unwrap().parse().unwrap())
        .collect();
    assert_eq!(losses.len(), 20);
    assert!(losses[19] < losses[0] / 5.0, "{}", straight.stdout);
    assert_eq!(
        straight.files,
        [
            "checkpoint",
            "checkpoint.lock",
            "ckpt-18.ckpt-manifest.json",
            "ckpt-18.safetensors",
            "ckpt-19.ckpt-manifest.json",
            "ckpt-19.safetensors",
            "ckpt-20.ckpt-manifest.json",
            "ckpt-20.safetensors",
        ]
    );
}

#[test]
fn stopped_twice_and_resumed_matches_a_straight_run() {
    stop_twice_and_resume(SYNC);
}

#[test]
fn async_saves_stopped_twice_and_resumed_match_a_straight_run() {
    stop_twice_and_resume(ASYNC);
}

/// Runs to step 750, then to 1330, then to the end, saving as `mode` says.
fn stop_twice_and_resume(mode: &[&str]) {
    let root = tempfile::tempdir().unwrap();
    let directory = root.path().join("run");
    let export = root.path().join("weights.bin");
    let export_arg = export.to_str().unwrap();

    let first = run_ok(&directory, &with_mode(&["--stop-at", "750"], mode));
    assert!(first.starts_with("no checkpoint in"), "{first}");
    assert!(
        first.contains("stopped (--stop-at) at step 750:"),
        "{first}"
    );
    let second = run_ok(&directory, &with_mode(&["--stop-at", "1330"], mode));
    assert_eq!(resumed_step(&second), Some(700), "{second}");
    assert!(second.contains("ckpt-7 at step 700"), "{second}");
    assert!(
        second.contains("stopped (--stop-at) at step 1330:"),
        "{second}"
    );
    let third = run_ok(&directory, &with_mode(&["--export", export_arg], mode));
    assert_eq!(resumed_step(&third), Some(1300), "{third}");
    // Together the runs printed every save of the straight run, in order:
    // each before it stopped (with --async, once it was committed).
    let printed: Vec<String> = [&first, &second, &third]
        .iter()
        .flat_map(|out| save_lines(&out.replace(directory.to_str().unwrap(), "DIR")))
        .collect();
    assert_eq!(printed, save_lines(&straight().stdout), "{mode:?}");
    let what = format!("--stop-at {mode:?}");
    assert_same_as_straight(&finished(&directory, &third, &export), &what);

    // A finished run started again restores the end and changes nothing.
    let again = run_ok(&directory, &with_mode(&["--export", export_arg], mode));
    assert_eq!(resumed_step(&again), Some(STEPS), "{again}");
    assert!(!again.contains(" saved "), "{again}");
    assert_same_as_straight(&finished(&directory, &again, &export), "restarted");

    // The seed is part of the checkpoint: resuming with another is refused.
    let output = run(&directory, &["--seed", "7"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--seed 42, not 7"), "{stderr}");
}

/// A small generator for the kill instants (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// How a kill round picks its instant.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// This long after the spawn: during start-up, recovery, restore or
    /// the first steps.
    AfterSpawn(Duration),
    /// This long after the run printed a save at or past this step: during
    /// training or the next save's writes, fsyncs and commit.
    AfterSave(u64, Duration),
}

/// Spawns the trainer saving as `mode` says, kills it with SIGKILL at
/// `at`, and returns its stdout, or `None` if it finished (printed its
/// last line) before the kill.
fn run_and_kill(directory: &Path, mode: &[&str], at: KillAt) -> (Option<String>, String) {
    let mut child = support::command(&trainer())
        .arg(directory)
        .args(mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    match at {
        KillAt::AfterSpawn(delay) => sleep(delay),
        KillAt::AfterSave(step, delay) => {
            loop {
                let mut line = String::new();
                if stdout.read_line(&mut line).unwrap() == 0 {
                    break; // exited; reported below
                }
                seen.push_str(&line);
                if line.starts_with("step ") && line.contains(" saved ") && line_step(&line) >= step
                {
                    break;
                }
            }
            sleep(delay);
        }
    }
    child.kill().unwrap(); // SIGKILL; harmless if it already exited
    stdout.read_to_string(&mut seen).unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    // A kill that lands after the run's last line, as it closes its
    // manager, found the run finished: its saves are all committed.
    let killed_mid_run = status.signal() == Some(libc::SIGKILL) && !seen.contains("done at step");
    if killed_mid_run {
        (Some(seen), stderr)
    } else if status.signal() == Some(libc::SIGKILL) {
        (None, stderr)
    } else {
        assert!(status.success(), "{status}\n{seen}\n{stderr}");
        (None, stderr)
    }
}

#[test]
fn killed_at_random_instants_and_resumed_matches_a_straight_run() {
    kill_at_random_instants_and_resume(SYNC);
}

/// With --async most kills land while a save is written in the background:
/// a save printed (committed) is never lost, and the rest is as without it.
#[test]
fn async_saves_killed_at_random_instants_and_resumed_match_a_straight_run() {
    kill_at_random_instants_and_resume(ASYNC);
}

fn kill_at_random_instants_and_resume(mode: &[&str]) {
    let seed = std::env::var("CKPT_DEMO_SEED")
        .ok()
        .map(|s| s.parse().expect("CKPT_DEMO_SEED is a number"))
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{mode:?}: kill instants from CKPT_DEMO_SEED={seed}");
    let mut rng = Rng(seed);

    // Delays are in units of the time between two saves of the straight
    // run, so the kills land alike on slow and fast machines.
    let interval = straight_run().1.as_micros() as u64 * SAVE_EVERY / STEPS;
    // 6 to 8 rounds killed up to 1.5 intervals after a save (at steps
    // rising through the first 70% of the run, so none can finish before
    // its kill), and 2 up to 2 intervals after the spawn, placed at random.
    let mut targets: Vec<u64> = (0..6 + rng.below(3))
        .map(|_| SAVE_EVERY * (1 + rng.below(14)))
        .collect();
    targets.sort_unstable();
    let mut rounds: Vec<KillAt> = targets
        .into_iter()
        .map(|step| KillAt::AfterSave(step, Duration::from_micros(rng.below(interval * 3 / 2))))
        .collect();
    for _ in 0..2 {
        let position = rng.below(rounds.len() as u64 + 1) as usize;
        let delay = Duration::from_micros(rng.below(interval * 2));
        rounds.insert(position, KillAt::AfterSpawn(delay));
    }

    let root = tempfile::tempdir().unwrap();
    let directory = root.path().join("run");
    let dir_str = directory.to_str().unwrap().to_owned();
    let mut mid_run_kills = 0;
    let mut last_saved: u64 = 0; // the highest step a run reported saved
    let mut log = String::new();
    for (round, at) in rounds.iter().enumerate() {
        let (killed, stderr) = run_and_kill(&directory, mode, *at);
        let Some(stdout) = killed else {
            // A fast disk can let the run reach its end first; the kills
            // before it still count, and at least 5 must have landed.
            log.push_str(&format!(
                "== round {round}: {at:?}, finished before its kill\n"
            ));
            break;
        };
        let stdout = stdout.replace(&dir_str, "DIR");
        log.push_str(&format!(
            "== round {round}: {at:?}, killed\n{stdout}{stderr}"
        ));
        assert!(!stdout.contains("done at step"), "{log}");
        // A save that returned is never lost: the run resumed from it or later.
        if let Some(step) = resumed_step(&stdout) {
            assert!(
                step >= last_saved,
                "resumed at {step} after {last_saved} was saved\n{log}"
            );
        }
        if stdout.starts_with("no checkpoint in") || stdout.starts_with("resumed from") {
            mid_run_kills += 1;
        }
        if let Some(line) = save_lines(&stdout).last() {
            last_saved = line_step(line);
        }
        assert_losses_match_straight(&stdout, &format!("killed round {round}"));
    }
    assert!(
        mid_run_kills >= 5,
        "only {mid_run_kills} kills landed mid-run\n{log}"
    );
    assert!(last_saved >= SAVE_EVERY, "no kill came after a save\n{log}");

    let export = root.path().join("weights.bin");
    let last = run_ok(
        &directory,
        &with_mode(&["--export", export.to_str().unwrap()], mode),
    );
    let step = resumed_step(&last).unwrap_or_else(|| panic!("{last}\n{log}"));
    assert!(
        step >= last_saved,
        "resumed at {step} after {last_saved} was saved\n{log}"
    );
    log.push_str(&format!("== last run\n{last}"));
    eprintln!("{log}"); // shown with --nocapture
    assert_losses_match_straight(&last.replace(&dir_str, "DIR"), "the last run");
    assert_same_as_straight(
        &finished(&directory, &last, &export),
        &format!("SIGKILL {mode:?} (seed {seed})\n{log}"),
    );
}

/// The `--step-delay-ms` of the runs the SIGTERM test stops: each has at
/// least 1,600 steps, several seconds, left when the signal is sent, so the
/// signal always lands mid-run.
const STEP_DELAY_MS: &str = "2";

/// A run stopped by SIGTERM: its output (the directory shown as `DIR`)
/// and the checkpoint its last line reported.
struct Preempted {
    stdout: String,
    step: u64,
    /// The checkpoint's prefix inside the directory, such as `ckpt-6`.
    name: String,
}

/// Spawns the trainer slowed by `STEP_DELAY_MS` and saving as `mode` says,
/// reads its output until `ready` accepts a line, sends SIGTERM, and checks
/// that the run exits 0 with "preempted at step S: saved DIR/NAME" as its
/// last line.
fn run_and_terminate(directory: &Path, mode: &[&str], ready: impl Fn(&str) -> bool) -> Preempted {
    let mut child = support::command(&trainer())
        .arg(directory)
        .args(["--step-delay-ms", STEP_DELAY_MS])
        .args(mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let read = stdout.read_line(&mut line).unwrap();
        seen.push_str(&line);
        if read == 0 || ready(&line) {
            break; // an early exit is reported below
        }
    }
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill touches no memory; the child is not reaped yet, so the
    // pid is still its own.
    let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(sent, 0, "kill: {}", std::io::Error::last_os_error());
    stdout.read_to_string(&mut seen).unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    let stdout = seen.replace(directory.to_str().unwrap(), "DIR");
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    let (step, name) = last
        .strip_prefix("preempted at step ")
        .and_then(|rest| rest.split_once(": saved DIR/"))
        .unwrap_or_else(|| panic!("no preemption line last:\n{stdout}\n{stderr}"));
    Preempted {
        step: step.parse().unwrap(),
        name: name.to_owned(),
        stdout,
    }
}

/// Asserts from the directory's files that the latest checkpoint is the
/// one `run` reported, holding the step it reported, with the loss it
/// printed for that save as the metric "loss".
fn assert_latest_is(directory: &Path, run: &Preempted) {
    let Preempted { stdout, step, name } = run;
    let state = std::fs::read_to_string(directory.join("checkpoint")).unwrap();
    let latest = state
        .lines()
        .find_map(|line| line.strip_prefix("model_checkpoint_path: "));
    assert_eq!(
        latest,
        Some(format!("\"{name}\"").as_str()),
        "{state}\n{stdout}"
    );

    let manifest = directory.join(format!("{name}.ckpt-manifest.json"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(manifest).unwrap()).unwrap();
    assert_eq!(manifest["step"], *step, "{manifest}\n{stdout}");
    let saved = save_lines(stdout)
        .into_iter()
        .find(|line| line_step(line) == *step)
        .unwrap_or_else(|| panic!("no save printed at step {step}:\n{stdout}"));
    assert!(saved.ends_with(&format!(" saved DIR/{name}")), "{stdout}");
    let printed: f64 = saved.split_whitespace().nth(3).unwrap().parse().unwrap();
    let recorded = manifest["metrics"]["loss"].as_f64().unwrap();
    assert!(
        (recorded - printed).abs() <= 5e-7, // printed with 6 decimals
        "{manifest}\n{stdout}"
    );

    let checkpoint = std::fs::read(directory.join(format!("{name}.safetensors"))).unwrap();
    assert_eq!(tensors(&checkpoint)["step"], step.to_le_bytes(), "{stdout}");
}

/// A `.safetensors` file's tensors' bytes, by name (without its metadata,
/// which holds the checkpoint number).
fn tensors(file: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let file = safetensors::SafeTensors::deserialize(file).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| (name, view.data().to_vec()))
        .collect()
}

#[test]
fn sigterm_saves_the_current_step_and_the_resumed_run_matches_a_straight_run() {
    terminate_twice_and_resume(SYNC);
}

/// With --async the preempted run waits for its background save before it
/// exits 0.
#[test]
fn async_saves_sigterm_saves_the_current_step_and_the_resumed_run_matches_a_straight_run() {
    terminate_twice_and_resume(ASYNC);
}

fn terminate_twice_and_resume(mode: &[&str]) {
    let root = tempfile::tempdir().unwrap();
    let directory = root.path().join("run");

    // Sent as a save at step 300 or later is printed: the signal lands at
    // the end of that save, before or after the loop looks, or in a later
    // step.
    let first = run_and_terminate(&directory, mode, |line| {
        line.starts_with("step ") && line_step(line) >= 300
    });
    assert!(
        first.stdout.starts_with("no checkpoint in"),
        "{}",
        first.stdout
    );
    assert!((300..STEPS).contains(&first.step), "{}", first.stdout);
    assert_latest_is(&directory, &first);

    // Sent as soon as the run has resumed: the signal lands while it reads
    // the data or in its first steps, at a step the intervals never save.
    let second = run_and_terminate(&directory, mode, |line| line.starts_with("resumed from "));
    assert!(
        second.stdout.starts_with(&format!(
            "resumed from DIR/{} at step {} ",
            first.name, first.step
        )),
        "{}",
        second.stdout
    );
    assert!(
        (first.step + 1..STEPS).contains(&second.step),
        "{}",
        second.stdout
    );
    assert_latest_is(&directory, &second);

    let export = root.path().join("weights.bin");
    let last = run_ok(
        &directory,
        &with_mode(&["--export", export.to_str().unwrap()], mode),
    );
    let log = format!("{mode:?}\n{}{}{last}", first.stdout, second.stdout);
    eprintln!("{log}"); // shown with --nocapture
    assert_eq!(resumed_step(&last), Some(second.step), "{log}");
    let straight = straight();
    assert!(
        std::fs::read(&export).unwrap() == straight.exported,
        "exported weights differ\n{log}"
    );
    // The final checkpoint holds the straight run's tensors: weights, Adam
    // moments, step, generator state and seed.
    let state = std::fs::read_to_string(directory.join("checkpoint")).unwrap();
    let latest = state
        .lines()
        .find_map(|line| line.strip_prefix("model_checkpoint_path: "))
        .unwrap()
        .trim_matches('"');
    let checkpoint = std::fs::read(directory.join(format!("{latest}.safetensors"))).unwrap();
    assert!(
        tensors(&checkpoint) == tensors(&straight.checkpoint),
        "{latest} differs from the straight run's ckpt-20\n{log}"
    );
    let summary = |out: &str| {
        let line = out.lines().last().unwrap();
        line[..line.find("; kept:").unwrap()].to_owned()
    };
    assert_eq!(summary(&last), summary(&straight.stdout), "{log}");
}
