//! Builds C and C++ programs against the checked-in header and the
//! library `cargo test` just built, and runs them; `harness` drives the
//! manager for the model-based tests.

#![allow(dead_code)] // Each test crate uses part of this module.

pub mod checkpoint_dir;
pub mod fault_proxy;
pub mod harness;
#[cfg(feature = "s3")]
pub mod s3;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

pub const C_FLAGS: &[&str] = &[
    "-std=c11",
    "-Wall",
    "-Wextra",
    "-Wpedantic",
    "-Werror",
    "-g",
];
pub const CXX_FLAGS: &[&str] = &[
    "-std=c++17",
    "-Wall",
    "-Wextra",
    "-Wpedantic",
    "-Werror",
    "-g",
];

pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `target/<profile>/deps`, where `cargo test` builds `libckpt_manager.so`
/// beside the test binaries (it is copied up to `target/<profile>` only by
/// `cargo build`, so that copy may be stale).
pub fn library_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent().expect("target/<profile>/deps").to_path_buf()
}

fn build_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("c-programs");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Compiles `sources` (relative to the repo) into one program linked with
/// the shared library, once per test process.
pub fn program(compiler: &str, flags: &[&str], name: &str, sources: &[&str]) -> PathBuf {
    program_with_libs(compiler, flags, name, sources, &[])
}

/// `program`, with extra linker arguments (such as `-lm`) after the sources.
pub fn program_with_libs(
    compiler: &str,
    flags: &[&str],
    name: &str,
    sources: &[&str],
    libs: &[&str],
) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.get(name) {
        return path.clone();
    }
    let output = build_dir().join(name);
    // Built aside and renamed into place: another test process may be
    // running the previous binary ("Text file busy").
    let building = build_dir().join(format!("{name}.{}.tmp", std::process::id()));
    let lib_dir = library_dir();
    let mut command = Command::new(compiler);
    command
        .args(flags)
        .arg("-I")
        .arg(repo_root().join("include"))
        .arg("-I")
        .arg(repo_root().join("tests/c"))
        .args(sources.iter().map(|s| repo_root().join(s)))
        .arg("-o")
        .arg(&building)
        .arg(format!("-L{}", lib_dir.display()))
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .args(["-lckpt_manager", "-lpthread"])
        .args(libs);
    let result = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {compiler}: {e}"));
    assert!(
        result.status.success(),
        "{compiler} failed for {name}:\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    std::fs::rename(&building, &output).unwrap();
    built.insert(name.to_owned(), output.clone());
    output
}

pub fn c_program(name: &str, sources: &[&str]) -> PathBuf {
    program("cc", C_FLAGS, name, sources)
}

pub fn c_program_with_libs(name: &str, sources: &[&str], libs: &[&str]) -> PathBuf {
    program_with_libs("cc", C_FLAGS, name, sources, libs)
}

/// A command running `program` against the freshly built library; under
/// valgrind (memcheck: any invalid access or definite leak fails) when
/// `CKPT_VALGRIND` is set.
pub fn command(program: &Path) -> Command {
    let mut command = if std::env::var_os("CKPT_VALGRIND").is_some() {
        let mut valgrind = Command::new("valgrind");
        valgrind.args([
            "--quiet",
            "--error-exitcode=99",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite,indirect",
            "--show-leak-kinds=definite,indirect",
            // A quarter of each start-up, spent on the debug library's
            // inlining records; a debug build inlines little.
            "--read-inline-info=no",
        ]);
        valgrind.arg(program);
        valgrind
    } else {
        Command::new(program)
    };
    // cargo's LD_LIBRARY_PATH lists the stale copy first; it beats RUNPATH.
    command.env("LD_LIBRARY_PATH", library_dir());
    command
}

/// Runs one case of a test program in a fresh directory and fails the Rust
/// test with the program's output when the case fails.
pub fn run_case(program: &Path, case: &str) {
    let workdir = tempfile::tempdir().unwrap();
    let output = command(program)
        .arg(case)
        .arg(workdir.path())
        .output()
        .unwrap();
    assert_success(&output, &format!("{} {case}", program.display()));
}

pub fn assert_success(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The names in a directory, sorted.
pub fn file_names(directory: &Path) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(directory)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Compiles `sources` with `mpicc` (the flags of `c_program`, then `flags`,
/// such as `-D...`) against the header and the library, as `program` does.
pub fn mpi_c_program(name: &str, sources: &[&str], flags: &[&str]) -> PathBuf {
    let flags: Vec<&str> = C_FLAGS.iter().chain(flags).copied().collect();
    program("mpicc", &flags, name, sources)
}

/// Open MPI's settings for every `mpirun` of the tests (ranks on one
/// machine, often a container):
/// - `btl self,vader`: shared memory only; nothing probes or opens the
///   network interfaces, which is slow and noisy in containers.
/// - `btl_vader_single_copy_mechanism none`: CMA (`process_vm_readv`, the
///   default) fails where ptrace between processes is not allowed, as in
///   many containers; without it large messages move in fragments.
pub const MPI_SETTINGS: &[(&str, &str)] = &[
    ("OMPI_MCA_btl", "self,vader"),
    ("OMPI_MCA_btl_vader_single_copy_mechanism", "none"),
];

/// What `mpirun` did.
pub struct MpiRun {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: std::time::Duration,
}

/// Runs `mpirun --allow-run-as-root --oversubscribe -np RANKS PROGRAM ARGS`
/// (as root, on a machine with fewer cores than ranks) with
/// `MPI_SETTINGS` and `settings` (`OMPI_MCA_*` variables) in its
/// environment. mpirun starts in a session of its own, which keeps every
/// rank (each in a process group of its own) in it: if mpirun has not
/// finished after `deadline`, or anything panics meanwhile, every process
/// of the session is SIGKILLed, so that a test never hangs or leaves ranks
/// behind.
pub fn mpirun(
    ranks: u32,
    program: &Path,
    args: &[&std::ffi::OsStr],
    settings: &[(&str, &str)],
    deadline: std::time::Duration,
) -> MpiRun {
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;

    let mut command = Command::new("mpirun");
    command
        .args(["--allow-run-as-root", "--oversubscribe", "-np"])
        .arg(ranks.to_string())
        .arg(program)
        .args(args)
        .envs(MPI_SETTINGS.iter().chain(settings).copied())
        // cargo's LD_LIBRARY_PATH lists the stale copy first; it beats RUNPATH.
        .env("LD_LIBRARY_PATH", library_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setsid is async-signal-safe and touches no memory of ours.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let started = std::time::Instant::now();
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run mpirun ({e}): run scripts/setup"));
    let session = SessionKiller(child.id() as libc::pid_t);
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || sender.send(child.wait_with_output()));
    let output = match receiver.recv_timeout(deadline) {
        Ok(output) => output.expect("waiting for mpirun"),
        Err(_) => {
            session.kill_all();
            let output = receiver.recv().unwrap().expect("waiting for mpirun");
            panic!(
                "mpirun -np {ranks} {} {args:?} did not finish within {deadline:?}; \
                 its processes were killed\n--- stdout\n{}\n--- stderr\n{}",
                program.display(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    };
    MpiRun {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

/// SIGKILLs every process of a session when dropped (or asked).
struct SessionKiller(libc::pid_t);

impl SessionKiller {
    fn kill_all(&self) {
        // Twice: a process may have forked while the first pass ran.
        for _ in 0..2 {
            for pid in processes_in_session(self.0) {
                // SAFETY: kill has no memory effects on this process.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

impl Drop for SessionKiller {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// The processes whose session is `session`, from /proc/<pid>/stat.
fn processes_in_session(session: libc::pid_t) -> Vec<libc::pid_t> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let pid: libc::pid_t = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // "pid (comm) state ppid pgrp session ...": comm may hold anything.
            let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
            (fields.get(3)?.parse::<libc::pid_t>().ok()? == session).then_some(pid)
        })
        .collect()
}
