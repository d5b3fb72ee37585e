//! The MPI adapter, include/ckpt_manager_mpi.h, with Open MPI's real ranks:
//! tests/c/mpi_adapter.c built with mpicc and run by `mpirun -np 4`, one
//! case per run. Each rank checks what it received and writes a log ending
//! in "pass"; these tests read the logs. Needs OpenMPI (scripts/setup).

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
        let mut arguments: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        arguments.insert(1, workdir.path().as_os_str());
        let run = support::mpirun(RANKS, program, &arguments, settings, DEADLINE);
        let logs = (0..RANKS)
            .map(|rank| {
                std::fs::read_to_string(workdir.path().join(format!("rank-{rank}.log"))).ok()
            })
            .collect();
        let case = Case {
            what: format!(
                "mpirun -np {RANKS} {} {}",
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
        for rank in 0..RANKS as usize {
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
    let case = Case::run(
        &adapter(),
        &["killed_rank", collective],
        &[("OMPI_MCA_orte_enable_recovery", "1")],
    );
    let victim = 2;
    assert!(
        case.log(victim).ends_with("raising SIGKILL\n"),
        "rank {victim} did not stop at its SIGKILL:\n{}",
        case.describe()
    );
    for rank in (0..RANKS as usize).filter(|&rank| rank != victim) {
        assert!(
            case.passed(rank),
            "rank {rank} did not pass:\n{}",
            case.describe()
        );
    }
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
