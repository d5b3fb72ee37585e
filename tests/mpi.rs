//! The MPI adapter, include/ckpt_manager_mpi.h, with Open MPI's real ranks:
//! tests/c/mpi_adapter.c built with mpicc and run by `mpirun -np 4`, one
//! case per run; then the manager's collective saves and restores through
//! it, tests/c/mpi_manager.c, one or two runs per test on one directory.
//! Each rank checks what it got and writes a log ending in "pass"; these
//! tests read the logs and the checkpoint files. Needs OpenMPI
//! (scripts/setup).

mod support;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::MpiRun;

const RANKS: u32 = 4;
/// Past this, mpirun and its ranks are killed and the test fails: each run
/// takes a few seconds.
const DEADLINE: Duration = Duration::from_secs(90);
/// The broadcast chunk of the second build, small enough that the
/// broadcasts of `mpi_adapter.c` are split, and not a power of two.
const SMALL_CHUNK: usize = 10007;

/// Keeps the ranks running when one dies (see `killed_rank`).
const RECOVERY: &[(&str, &str)] = &[("OMPI_MCA_orte_enable_recovery", "1")];

fn adapter() -> PathBuf {
    support::mpi_c_program("mpi_adapter", &["tests/c/mpi_adapter.c"], &[])
}

fn adapter_with_small_chunks() -> PathBuf {
    support::mpi_c_program(
        "mpi_adapter_small_chunks",
        &["tests/c/mpi_adapter.c"],
        &[&format!("-DCKPT_MPI_MAX_CHUNK={SMALL_CHUNK}")],
    )
}

/// One case under mpirun: its run and each rank's log (None: no log).
struct Case {
    what: String,
    run: MpiRun,
    logs: Vec<Option<String>>,
}

impl Case {
    fn run(program: &Path, args: &[&str], settings: &[(&str, &str)]) -> Case {
        let workdir = tempfile::tempdir().unwrap();
        Case::run_in(workdir.path(), program, args, settings)
    }

    /// `run` with `workdir` given: runs in one may follow each other there.
    fn run_in(workdir: &Path, program: &Path, args: &[&str], settings: &[(&str, &str)]) -> Case {
        Case::run_ranks(RANKS, workdir, program, args, settings)
    }

    /// `run_in` on `ranks` ranks.
    fn run_ranks(
        ranks: u32,
        workdir: &Path,
        program: &Path,
        args: &[&str],
        settings: &[(&str, &str)],
    ) -> Case {
        let mut arguments: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        arguments.insert(1, workdir.as_os_str());
        let run = support::mpirun(ranks, program, &arguments, settings, DEADLINE);
        let logs = (0..ranks)
            .map(|rank| std::fs::read_to_string(workdir.join(format!("rank-{rank}.log"))).ok())
            .collect();
        let case = Case {
            what: format!(
                "mpirun -np {ranks} {} {}",
                program.display(),
                args.join(" ")
            ),
            run,
            logs,
        };
        println!("{}", case.describe());
        case
    }

    fn describe(&self) -> String {
        let mut text = format!(
            "{}: {} after {:.2} s\n",
            self.what,
            self.run.status,
            self.run.elapsed.as_secs_f64()
        );
        for (rank, log) in self.logs.iter().enumerate() {
            let log = log.as_deref().unwrap_or("(no log)\n");
            text.push_str(&format!("--- rank {rank}\n{log}"));
        }
        text.push_str(&format!(
            "--- mpirun's stdout\n{}--- mpirun's stderr\n{}",
            self.run.stdout, self.run.stderr
        ));
        text
    }

    fn passed(&self, rank: usize) -> bool {
        self.logs[rank]
            .as_deref()
            .is_some_and(|log| log.lines().any(|line| line == "pass"))
    }

    fn log(&self, rank: usize) -> &str {
        self.logs[rank].as_deref().unwrap_or("")
    }

    fn assert_every_rank_passed(&self) {
        for rank in 0..self.logs.len() {
            assert!(
                self.passed(rank),
                "rank {rank} did not pass:\n{}",
                self.describe()
            );
        }
        assert!(
            self.run.status.success(),
            "mpirun failed:\n{}",
            self.describe()
        );
    }

    /// Every rank's log says `text`.
    fn assert_every_log_contains(&self, text: &str) {
        for rank in 0..self.logs.len() {
            assert!(
                self.log(rank).contains(text),
                "rank {rank} did not log {text:?}:\n{}",
                self.describe()
            );
        }
    }

    /// `victim` stopped at its SIGKILL and every other rank passed.
    fn assert_killed_and_others_passed(&self, victim: usize) {
        assert!(
            self.log(victim).ends_with("raising SIGKILL\n"),
            "rank {victim} did not stop at its SIGKILL:\n{}",
            self.describe()
        );
        for rank in (0..RANKS as usize).filter(|&rank| rank != victim) {
            assert!(
                self.passed(rank),
                "rank {rank} did not pass:\n{}",
                self.describe()
            );
        }
    }

    /// The log of each rank but `except` says `collective` timed out.
    fn assert_timed_out(&self, collective: &str, except: usize) {
        for rank in (0..RANKS as usize).filter(|&rank| rank != except) {
            assert!(
                self.log(rank)
                    .contains(&format!("{collective} returned 1 after")),
                "rank {rank} did not report a timeout:\n{}",
                self.describe()
            );
        }
    }
}

#[test]
fn collectives_deliver_on_every_rank() {
    let case = Case::run(&adapter(), &["collectives"], &[]);
    case.assert_every_rank_passed();
}

#[test]
fn broadcasts_split_into_chunks_deliver_on_every_rank() {
    let case = Case::run(&adapter_with_small_chunks(), &["collectives"], &[]);
    case.assert_every_rank_passed();
    assert!(
        case.log(0).contains(&format!("chunk {SMALL_CHUNK}\n")),
        "the small chunk was not used:\n{}",
        case.describe()
    );
}

#[test]
fn invalid_arguments_are_refused_and_break_the_communicator() {
    let case = Case::run(&adapter(), &["invalid_arguments"], &[]);
    case.assert_every_rank_passed();
}

/// The last rank never makes `collective`: the others time out, their
/// communicator is broken, and every rank then finalizes.
fn silent_rank(collective: &str) {
    let case = Case::run(&adapter(), &["silent_rank", collective], &[]);
    case.assert_every_rank_passed();
    let silent = RANKS as usize - 1;
    assert!(case
        .log(silent)
        .contains(&format!("not calling {collective}\n")));
    case.assert_timed_out(collective, silent);
}

#[test]
fn silent_rank_makes_barrier_time_out() {
    silent_rank("barrier");
}

#[test]
fn silent_rank_makes_broadcast_time_out() {
    silent_rank("broadcast");
}

#[test]
fn silent_rank_makes_all_gather_time_out() {
    silent_rank("all_gather");
}

/// Rank 2 SIGKILLs itself before `collective` (a broadcast from it): the
/// others time out and MPI_Abort. mpirun would kill them as soon as a rank
/// dies, before their timeout; `orte_enable_recovery` keeps them running,
/// as ranks on other hosts would go on. mpirun's exit status is then not
/// asserted: Open MPI 4.1 exits 0 after an MPI_Abort in that mode.
fn killed_rank(collective: &str) {
    let case = Case::run(&adapter(), &["killed_rank", collective], RECOVERY);
    let victim = 2;
    case.assert_killed_and_others_passed(victim);
    case.assert_timed_out(collective, victim);
}

#[test]
fn killed_rank_makes_barrier_time_out() {
    killed_rank("barrier");
}

#[test]
fn killed_root_makes_broadcast_time_out() {
    killed_rank("broadcast");
}

#[test]
fn killed_rank_makes_all_gather_time_out() {
    killed_rank("all_gather");
}

fn manager_program() -> PathBuf {
    support::mpi_c_program("mpi_manager", &["tests/c/mpi_manager.c"], &[])
}

/// Runs of `mpi_manager.c` one after another on one checkpoint directory,
/// as a job restarted.
struct ManagerRuns {
    workdir: tempfile::TempDir,
}

impl ManagerRuns {
    fn new() -> Self {
        ManagerRuns {
            workdir: tempfile::tempdir().unwrap(),
        }
    }

    fn run(&self, args: &[&str], settings: &[(&str, &str)]) -> Case {
        Case::run_in(self.workdir.path(), &manager_program(), args, settings)
    }

    /// A run in which every rank passes.
    fn run_passing(&self, args: &[&str]) {
        self.run(args, &[]).assert_every_rank_passed();
    }

    fn checkpoints(&self) -> PathBuf {
        self.workdir.path().join("ckpt")
    }

    /// The checkpoints the state file lists, oldest first.
    fn listed(&self) -> Vec<String> {
        let state = ckpt_manager::get_checkpoint_state(&self.checkpoints())
            .unwrap()
            .expect("a state file");
        state
            .all_model_checkpoint_paths
            .iter()
            .map(|path| {
                let path = String::from_utf8_lossy(path);
                path.rsplit('/').next().unwrap().to_owned()
            })
            .collect()
    }

    fn files(&self) -> Vec<String> {
        support::file_names(&self.checkpoints())
    }

    /// Every rank's files of checkpoint `number` are there, beside its
    /// manifest.
    fn assert_complete(&self, number: u32) {
        let files = self.files();
        let mut expected = vec![format!("ckpt-{number}.ckpt-manifest.json")];
        for rank in 0..RANKS {
            for suffix in ["safetensors", "note"] {
                expected.push(format!(
                    "ckpt-{number}.rank-{rank:05}-of-{RANKS:05}.{suffix}"
                ));
            }
        }
        for name in expected {
            assert!(files.contains(&name), "{name} missing: {files:?}");
        }
    }

    /// No file of checkpoint `number` is left, nor a staging directory.
    fn assert_absent(&self, number: u32) {
        let files = self.files();
        let prefix = format!("ckpt-{number}.");
        assert!(
            !files
                .iter()
                .any(|name| name.starts_with(&prefix) || name.contains("staging")),
            "checkpoint {number} left files: {files:?}"
        );
    }
}

#[test]
fn manager_saves_every_shard_and_restores_each_rank_its_own() {
    let runs = ManagerRuns::new();
    runs.run_passing(&["save", "3"]);
    assert_eq!(runs.listed(), ["ckpt-2", "ckpt-3"]);
    runs.assert_complete(2);
    runs.assert_complete(3);
    runs.assert_absent(1);
    runs.run_passing(&["restore", "3"]);
}

#[test]
fn manager_commits_nothing_when_one_rank_save_callback_fails() {
    let runs = ManagerRuns::new();
    let case = runs.run(&["callback_fails"], &[]);
    case.assert_every_rank_passed();
    case.assert_every_log_contains("save returned CKPT_STATUS_CALLBACK_FAILED after");
    assert_eq!(runs.listed(), ["ckpt-1", "ckpt-2"]);
    runs.assert_complete(2);
    runs.run_passing(&["restore", "2"]);
}

/// Rank 2 asks for checkpoint 7 while the others ask for 5: every rank is
/// refused with INVALID_ARGUMENT naming the ranks and numbers, nothing is
/// committed, and the save all ask for then goes through.
#[test]
fn manager_refuses_a_save_whose_ranks_ask_for_different_numbers() {
    let runs = ManagerRuns::new();
    let case = runs.run(&["numbers_disagree"], &[]);
    case.assert_every_rank_passed();
    case.assert_every_log_contains("save returned CKPT_STATUS_INVALID_ARGUMENT after");
    assert_eq!(runs.listed(), ["ckpt-1", "ckpt-5"]);
    runs.assert_complete(5);
    assert!(!runs.files().iter().any(|name| name.starts_with("ckpt-7")));
}

/// Rank 2 is SIGKILLed in its save callback: the others time out, nothing
/// is committed, and the next job restores the checkpoint before.
#[test]
fn manager_times_out_and_commits_nothing_when_a_rank_is_killed_mid_save() {
    let runs = ManagerRuns::new();
    let case = runs.run(&["killed_mid_save"], RECOVERY);
    let victim = 2;
    case.assert_killed_and_others_passed(victim);
    for rank in (0..RANKS as usize).filter(|&rank| rank != victim) {
        assert!(
            case.log(rank)
                .contains("save returned CKPT_STATUS_TIMEOUT after"),
            "rank {rank}:\n{}",
            case.describe()
        );
    }
    assert_eq!(runs.listed(), ["ckpt-1"]);
    runs.run_passing(&["restore", "1"]);
    assert_eq!(runs.listed(), ["ckpt-1"]);
    runs.assert_absent(2);
}

/// Rank 0 dies holding the directory's lock, right after it committed
/// checkpoint 2: the next job restores 2 on every rank.
#[test]
fn manager_restores_what_rank_0_committed_before_it_was_killed() {
    let runs = ManagerRuns::new();
    let case = runs.run(&["rank0_killed_after_commit"], RECOVERY);
    case.assert_killed_and_others_passed(0);
    assert_eq!(runs.listed(), ["ckpt-1", "ckpt-2"]);
    runs.assert_complete(2);
    runs.run_passing(&["restore", "2"]);
}

#[test]
fn manager_restores_the_older_checkpoint_on_every_rank_when_one_shard_is_damaged() {
    let runs = ManagerRuns::new();
    runs.run_passing(&["save", "2"]);
    let shard = runs
        .checkpoints()
        .join(format!("ckpt-2.rank-00001-of-{RANKS:05}.safetensors"));
    let mut bytes = std::fs::read(&shard).unwrap();
    *bytes.last_mut().unwrap() ^= 0xff;
    std::fs::write(&shard, bytes).unwrap();
    runs.run_passing(&["restore", "1"]);
}

#[test]
fn manager_save_called_by_one_rank_alone_times_out() {
    let runs = ManagerRuns::new();
    let case = runs.run(&["save_alone"], &[]);
    case.assert_every_rank_passed();
    assert!(
        case.log(1)
            .contains("save returned CKPT_STATUS_TIMEOUT after"),
        "{}",
        case.describe()
    );
    assert_eq!(runs.listed(), ["ckpt-1"]);
    runs.assert_absent(2);
    runs.run_passing(&["restore", "1"]);
}

const NODE_LOCAL: &[(&str, &str)] = &[("CKPT_TEST_NODE_LOCAL", "1")];

/// Node-local directories (`ckpt/rank-R`): each rank's directory holds its
/// own state file, manifest and shard, swept on its own; every rank
/// restores its own values from it.
#[test]
fn node_local_ranks_keep_and_sweep_their_own_directories() {
    let runs = ManagerRuns::new();
    runs.run(&["save", "3"], NODE_LOCAL)
        .assert_every_rank_passed();
    for rank in 0..RANKS {
        let own = runs.checkpoints().join(format!("rank-{rank}"));
        let mut expected = vec!["checkpoint".to_owned(), "checkpoint.lock".to_owned()];
        for number in [2, 3] {
            expected.push(format!("ckpt-{number}.ckpt-manifest.json"));
            for suffix in ["note", "safetensors"] {
                expected.push(format!(
                    "ckpt-{number}.rank-{rank:05}-of-{RANKS:05}.{suffix}"
                ));
            }
        }
        expected.sort();
        assert_eq!(support::file_names(&own), expected, "rank {rank}");
    }
    runs.run(&["restore", "3"], NODE_LOCAL)
        .assert_every_rank_passed();
}

/// Node-local ranks with a remote tier (`remote`): the remote holds whole
/// checkpoints, every rank's files under one manifest; with rank 2's
/// directory deleted, every rank restores checkpoint 3, rank 2 from its
/// pieces in the remote, the others locally.
#[test]
fn node_local_ranks_with_a_remote_restore_a_lost_rank_from_it() {
    const TIERED: &[(&str, &str)] = &[("CKPT_TEST_NODE_LOCAL", "1"), ("CKPT_TEST_REMOTE", "1")];
    let runs = ManagerRuns::new();
    runs.run(&["save", "3"], TIERED).assert_every_rank_passed();
    let remote = runs.workdir.path().join("remote");
    let mut expected = vec!["checkpoint".to_owned(), "checkpoint.lock".to_owned()];
    for number in [2, 3] {
        expected.push(format!("ckpt-{number}.ckpt-manifest.json"));
        for rank in 0..RANKS {
            for suffix in ["note", "safetensors"] {
                expected.push(format!(
                    "ckpt-{number}.rank-{rank:05}-of-{RANKS:05}.{suffix}"
                ));
            }
        }
    }
    expected.sort();
    assert_eq!(support::file_names(&remote), expected);
    let lost = runs.checkpoints().join("rank-2");
    std::fs::remove_dir_all(&lost).unwrap();
    runs.run(&["restore", "3"], TIERED)
        .assert_every_rank_passed();
    let shard = format!("ckpt-3.rank-00002-of-{RANKS:05}.safetensors");
    assert_eq!(
        std::fs::read(lost.join(&shard)).unwrap(),
        std::fs::read(remote.join(&shard)).unwrap()
    );
}

/// Node-local: rank 2 SIGKILLed mid-save; the others time out and no rank
/// commits checkpoint 2 in its directory.
#[test]
fn node_local_ranks_commit_nothing_when_a_rank_is_killed_mid_save() {
    let runs = ManagerRuns::new();
    let settings: Vec<_> = RECOVERY.iter().chain(NODE_LOCAL).copied().collect();
    let case = runs.run(&["killed_mid_save"], &settings);
    case.assert_killed_and_others_passed(2);
    for rank in 0..RANKS {
        let own = runs.checkpoints().join(format!("rank-{rank}"));
        let files = support::file_names(&own);
        assert!(
            !files
                .iter()
                .any(|name| name.starts_with("ckpt-2.") && !name.contains("staging")),
            "rank {rank}: {files:?}"
        );
        let state = ckpt_manager::get_checkpoint_state(&own).unwrap().unwrap();
        assert_eq!(state.all_model_checkpoint_paths.len(), 1, "rank {rank}");
    }
    runs.run(&["restore", "1"], NODE_LOCAL)
        .assert_every_rank_passed();
}

/// The header compiles as C++ too (warnings as errors). Without
/// OMPI_SKIP_MPICXX, Open MPI's <mpi.h> brings in its deprecated C++
/// bindings, whose own headers fail -Wextra -Werror.
#[test]
fn header_compiles_as_cpp() {
    let output = std::process::Command::new("mpicxx")
        .args(support::CXX_FLAGS)
        .args(["-DOMPI_SKIP_MPICXX", "-fsyntax-only", "-x", "c++", "-I"])
        .arg(support::repo_root().join("include"))
        .arg(support::repo_root().join("include/ckpt_manager_mpi.h"))
        .output()
        .expect("cannot run mpicxx: run scripts/setup");
    support::assert_success(&output, "mpicxx -fsyntax-only include/ckpt_manager_mpi.h");
}

/// The data-parallel demo, examples/mlp_trainer_mpi.c, built as `make
/// run-mpi` builds it but with the tests' flags.
fn mlp_trainer_mpi() -> PathBuf {
    support::program_with_libs(
        "mpicc",
        support::C_FLAGS,
        "mlp_trainer_mpi",
        &["examples/mlp_trainer_mpi.c"],
        &["-lm"],
    )
}

/// One run of the demo under `mpirun -np 4` on `checkpoints`, its ranks'
/// logs going to a fresh `logs` directory; `args` follow the common ones.
fn run_trainer(
    workdir: &Path,
    checkpoints: &str,
    logs: &str,
    args: &[&str],
    settings: &[(&str, &str)],
) -> Case {
    run_trainer_on(RANKS, workdir, checkpoints, logs, args, settings)
}

/// `run_trainer` under `mpirun -np ranks`.
fn run_trainer_on(
    ranks: u32,
    workdir: &Path,
    checkpoints: &str,
    logs: &str,
    args: &[&str],
    settings: &[(&str, &str)],
) -> Case {
    let log_dir = workdir.join(logs);
    std::fs::create_dir_all(&log_dir).unwrap();
    let mut arguments: Vec<std::ffi::OsString> = vec![
        workdir.join(checkpoints).into(),
        "--steps".into(),
        "400".into(),
        "--save-every".into(),
        "100".into(),
        "--log-dir".into(),
        log_dir.clone().into(),
    ];
    arguments.extend(args.iter().map(Into::into));
    let argument_refs: Vec<&OsStr> = arguments.iter().map(|a| a.as_os_str()).collect();
    let program = mlp_trainer_mpi();
    let run = support::mpirun(ranks, &program, &argument_refs, settings, DEADLINE);
    let logs = (0..ranks)
        .map(|rank| std::fs::read_to_string(log_dir.join(format!("rank-{rank}.log"))).ok())
        .collect();
    let case = Case {
        what: format!("mpirun -np {ranks} {} {arguments:?}", program.display()),
        run,
        logs,
    };
    println!("{}", case.describe());
    case
}

impl Case {
    /// Every rank's log has a line starting with `start`.
    fn assert_every_rank_said(&self, start: &str) {
        for rank in 0..RANKS as usize {
            assert!(
                self.log(rank)
                    .lines()
                    .any(|line| line.starts_with(&format!("rank {rank} {start}"))),
                "rank {rank} did not say \"{start}\":\n{}",
                self.describe()
            );
        }
    }
}

/// The demo killed (rank 1 SIGKILLs itself at step 300, before that save)
/// and resumed by the same command ends with the weights of a run
/// straight through, bit for bit; each rank resumes its own state.
#[test]
fn mlp_demo_killed_rank_and_resumed_matches_a_straight_run() {
    let workdir = tempfile::tempdir().unwrap();
    let work = workdir.path();
    let straight_weights = work.join("straight.weights");
    let straight = run_trainer(
        work,
        "straight",
        "straight-logs",
        &["--export", straight_weights.to_str().unwrap()],
        &[],
    );
    assert!(straight.run.status.success(), "{}", straight.describe());
    straight.assert_every_rank_said("done at step 400");

    let killed = run_trainer(
        work,
        "resumed",
        "killed-logs",
        &["--kill-rank", "1", "--kill-at", "300", "--timeout", "3"],
        RECOVERY,
    );
    assert!(
        killed
            .log(1)
            .ends_with("rank 1 at step 300: raising SIGKILL\n"),
        "rank 1 did not stop at its SIGKILL:\n{}",
        killed.describe()
    );
    // The first survivor to time out ends the job with MPI_Abort, which may
    // kill a slower survivor before its own deadline: each survivor either
    // timed out at step 300's save or stopped after step 200's, and at
    // least one timed out. None went past the save it could not make.
    let timed_out = "failed: save of step 300: CKPT_STATUS_TIMEOUT";
    let survivors = [0, 2, 3].map(|rank| killed.log(rank));
    for (rank, log) in [0, 2, 3].into_iter().zip(&survivors) {
        let last = log.lines().last().unwrap_or_default();
        assert!(
            last.starts_with(timed_out) || last.contains("saved") && last.ends_with("ckpt-200"),
            "rank {rank} neither timed out at the save of step 300 nor stopped after step 200:\n{}",
            killed.describe()
        );
    }
    assert!(
        survivors.iter().any(|log| log.contains(timed_out)),
        "no rank timed out at the save of step 300:\n{}",
        killed.describe()
    );
    let state = ckpt_manager::get_checkpoint_state(&work.join("resumed"))
        .unwrap()
        .expect("a state file");
    let latest = String::from_utf8_lossy(&state.model_checkpoint_path).into_owned();
    assert!(latest.ends_with("ckpt-200"), "latest is {latest}");

    let resumed_weights = work.join("resumed.weights");
    let resumed = run_trainer(
        work,
        "resumed",
        "resumed-logs",
        &["--export", resumed_weights.to_str().unwrap()],
        &[],
    );
    assert!(resumed.run.status.success(), "{}", resumed.describe());
    resumed.assert_every_rank_said("of 4: resumed from");
    for rank in 0..RANKS as usize {
        assert!(
            resumed
                .log(rank)
                .contains("ckpt-200 at step 200 (1600 samples seen here)"),
            "rank {rank} did not resume its own state at step 200:\n{}",
            resumed.describe()
        );
    }
    resumed.assert_every_rank_said("done at step 400");
    let straight_bytes = std::fs::read(&straight_weights).unwrap();
    assert_eq!(straight_bytes.len(), (32 * 8 + 32 + 32 + 1) * 4);
    assert!(
        std::fs::read(&resumed_weights).unwrap() == straight_bytes,
        "the resumed run's weights differ from the straight run's"
    );

    // Two ranks resume the four ranks' last checkpoint with its weights
    // (replicated tensors) bit for bit, ranks 0 and 1 with their own state
    // (rank-local; that of ranks 2 and 3 is dropped), and train on.
    let on_two_weights = work.join("on-two.resumed");
    let on_two = run_trainer_on(
        2,
        work,
        "resumed",
        "on-two-logs",
        &[
            "--steps",
            "500",
            "--export-resumed",
            on_two_weights.to_str().unwrap(),
        ],
        &[],
    );
    assert!(on_two.run.status.success(), "{}", on_two.describe());
    assert!(
        std::fs::read(&on_two_weights).unwrap() == straight_bytes,
        "2 ranks resumed other weights than 4 ranks saved:\n{}",
        on_two.describe()
    );
    for rank in 0..2 {
        let log = on_two.log(rank);
        assert!(
            log.contains(&format!("rank {rank} of 2: resumed from "))
                && log.contains("ckpt-400 at step 400 (3200 samples seen here)"),
            "rank {rank} did not resume step 400 with its own state:\n{}",
            on_two.describe()
        );
        assert!(
            log.contains(&format!("rank {rank} done at step 500")),
            "rank {rank} did not train on to step 500:\n{}",
            on_two.describe()
        );
    }
    let latest = ckpt_manager::latest_checkpoint(
        &work.join("resumed"),
        ckpt_manager::LatestOptions::default(),
        &mut |_| {},
    )
    .unwrap()
    .expect("a latest checkpoint");
    assert!(
        latest.ends_with("ckpt-500"),
        "latest is {}",
        latest.display()
    );
}

fn reshard_program() -> PathBuf {
    support::mpi_c_program("mpi_reshard", &["tests/c/mpi_reshard.c"], &[])
}

/// Runs of `mpi_reshard.c` on one checkpoint directory, each on its own
/// number of ranks: a job saved by some ranks, resumed by others.
struct Reshard {
    workdir: tempfile::TempDir,
}

impl Reshard {
    fn new() -> Self {
        Reshard {
            workdir: tempfile::tempdir().unwrap(),
        }
    }

    fn run(&self, ranks: u32, args: &[&str], settings: &[(&str, &str)]) -> Case {
        Case::run_ranks(
            ranks,
            self.workdir.path(),
            &reshard_program(),
            args,
            settings,
        )
    }

    /// A run in which every rank passes.
    fn passing(&self, ranks: u32, args: &[&str]) {
        self.run(ranks, args, &[]).assert_every_rank_passed();
    }

    fn manifest(&self, number: u32) -> serde_json::Value {
        let path = self
            .workdir
            .path()
            .join(format!("ckpt/ckpt-{number}.ckpt-manifest.json"));
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    fn tensor(&self, number: u32, name: &str) -> serde_json::Value {
        let manifest = self.manifest(number);
        let tensors = manifest["tensors"].as_array().expect("a tensor table");
        tensors
            .iter()
            .find(|tensor| tensor["name"] == name)
            .unwrap_or_else(|| panic!("no tensor {name} in {manifest}"))
            .clone()
    }
}

/// Every restore of this file checks each element of each box it
/// registered against the tensor's global value at the checkpoint.
#[test]
fn four_ranks_save_restores_onto_one_two_three_and_eight_ranks_and_one_process() {
    let job = Reshard::new();
    job.passing(4, &["save", "count=2"]);
    let manifest = job.manifest(2);
    assert_eq!(manifest["version"], 2);
    assert_eq!(manifest["world_size"], 4);
    // Replicated tensors are written once, by different ranks.
    let mut writers = std::collections::BTreeSet::new();
    for name in ["emb", "bias", "step"] {
        let tensor = job.tensor(2, name);
        assert_eq!(tensor["kind"], "replicated");
        let boxes = tensor["boxes"].as_array().unwrap();
        assert_eq!(boxes.len(), 1, "{tensor}");
        writers.insert(boxes[0]["file"].as_str().unwrap().to_owned());
    }
    assert!(
        writers.len() > 1,
        "one rank wrote every replicated tensor: {writers:?}"
    );
    let uneven = job.tensor(2, "uneven");
    assert_eq!(uneven["kind"], "sharded");
    // Rank 0 holds no box of it.
    assert_eq!(uneven["boxes"].as_array().unwrap().len(), 3, "{uneven}");
    for ranks in [1, 2, 3, 8] {
        job.passing(ranks, &["restore", "number=2", "unmatched=skip"]);
    }
    for ranks in [2, 3] {
        job.passing(ranks, &["restore", "number=2", "unmatched=skip", "flip=1"]);
    }
    job.passing(1, &["restore", "number=2", "comm=0", "unmatched=skip"]);
    job.passing(4, &["restore", "number=2", "flip=1"]);
}

#[test]
fn rank_local_tensors_of_missing_ranks_are_refused_unless_skipped_or_initialized() {
    let job = Reshard::new();
    job.passing(4, &["save"]);
    let refused = job.run(
        2,
        &[
            "restore",
            "expect=CKPT_STATUS_TENSOR_MISMATCH",
            "message=rank-local tensor 'rng'",
        ],
        &[],
    );
    refused.assert_every_rank_passed();
    refused.assert_every_log_contains("ckpt_options_set_unmatched_rank_local");
    // Ranks 4 to 7 have no piece: they run the init callback, once.
    job.passing(8, &["restore", "unmatched=init"]);
}

#[test]
fn one_process_checkpoint_restores_into_four_ranks_in_any_layout() {
    let job = Reshard::new();
    job.passing(1, &["save", "comm=0"]);
    let rows = job.tensor(1, "rows");
    assert_eq!(rows["boxes"].as_array().unwrap().len(), 1, "{rows}");
    for flip in ["flip=0", "flip=1"] {
        job.passing(4, &["restore", "saved=1", "unmatched=skip", flip]);
    }
}

#[test]
fn a_damaged_box_makes_every_rank_restore_the_older_checkpoint() {
    let job = Reshard::new();
    job.passing(4, &["save", "count=2"]);
    // Flip a byte inside the second box of "blocks" in checkpoint 2: only
    // the ranks whose boxes overlap it read it.
    let blocks = job.tensor(2, "blocks");
    let damaged = &blocks["boxes"][1];
    let file = job
        .workdir
        .path()
        .join(format!("ckpt/ckpt-2{}", damaged["file"].as_str().unwrap()));
    let at = damaged["start"].as_u64().unwrap() as usize + 5;
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[at] ^= 0x40;
    std::fs::write(&file, bytes).unwrap();
    let case = job.run(3, &["restore", "number=1", "unmatched=skip"], &[]);
    case.assert_every_rank_passed();
    case.assert_every_log_contains("/ckpt-1");
}

#[test]
fn bad_tensor_inputs_fail_the_save_on_every_rank_and_commit_nothing() {
    for bad in [
        "overlap", "dtype", "shape", "ndim", "kind", "replica", "box",
    ] {
        let job = Reshard::new();
        job.passing(4, &["bad", &format!("bad={bad}")]);
        let files = support::file_names(&job.workdir.path().join("ckpt"));
        assert!(
            !files.iter().any(|name| name.starts_with("ckpt-2")),
            "{bad}: {files:?}"
        );
    }
}

#[test]
fn a_region_no_rank_saved_is_a_mismatch_naming_it_on_every_rank() {
    let job = Reshard::new();
    job.passing(4, &["save", "sparse=1"]);
    let case = job.run(
        2,
        &[
            "restore",
            "unmatched=skip",
            "expect=CKPT_STATUS_TENSOR_MISMATCH",
            "message=tensor 'rows': the checkpoint never saved the region offset [9, 0] shape [4, 4]",
        ],
        &[],
    );
    case.assert_every_rank_passed();
}

/// A checkpoint as a library without tensor tables wrote it: every tensor
/// rank-local, a version 1 manifest listing files only.
#[test]
fn a_version_1_manifest_still_restores() {
    let job = Reshard::new();
    job.passing(4, &["save", "local=1"]);
    let mut manifest = job.manifest(1);
    let fields = manifest.as_object_mut().unwrap();
    fields.remove("tensors");
    fields.remove("world_size");
    fields.insert("version".into(), 1.into());
    let path = job.workdir.path().join("ckpt/ckpt-1.ckpt-manifest.json");
    std::fs::write(path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    job.passing(4, &["restore", "local=1"]);
}

/// The round trip on object storage (moto's S3 server): ranged reads of
/// each box's bytes.
#[cfg(feature = "s3")]
#[test]
fn tensors_reshard_on_object_storage() {
    let bucket = support::s3::Bucket::new("reshard");
    let url = bucket.url("run");
    let dir = format!("dir={}", url.display());
    let settings = [
        ("AWS_ENDPOINT_URL", bucket.endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
    ];
    let job = Reshard::new();
    job.run(4, &["save", "count=2", &dir], &settings)
        .assert_every_rank_passed();
    assert!(bucket
        .keys()
        .contains("run/ckpt-2.rank-00003-of-00004.safetensors"));
    job.run(
        3,
        &["restore", "number=2", "unmatched=skip", "flip=1", &dir],
        &settings,
    )
    .assert_every_rank_passed();
    job.run(
        1,
        &["restore", "number=2", "comm=0", "unmatched=skip", &dir],
        &settings,
    )
    .assert_every_rank_passed();
}
