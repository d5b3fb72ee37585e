//! What a durable save costs the kernel, counted by strace from outside
//! the process (so every path is seen, not only the calls a wrapper in
//! the library would see): a save of a new checkpoint without a sweep
//! makes at most 5 fsync/fdatasync calls, starts no thread and creates no
//! directory (it renames the writer's spare staging directory).
//!
//! The test runs this executable's `save_loop` under `strace -f` twice,
//! with the same warm-up and with 0 and with `TIMED` saves after it: the
//! difference is what the timed saves did, whatever opening the manager
//! and the test harness cost.

use std::path::Path;
use std::process::Command;

use ckpt_manager::{Callbacks, CheckpointManager, Config, MaxToKeep};

const WARM_UP: usize = 3;
const TIMED: usize = 20;
const MAX_SYNCS_PER_SAVE: usize = 5;

/// The child: opens a keep-all manager on `CKPT_SYSCALLS_DIR` whose saves
/// write one 16-byte file, and saves `CKPT_SYSCALLS_SAVES` times.
#[test]
#[ignore = "run by saves_sync_at_most_five_times_and_start_no_thread, under strace"]
fn save_loop() {
    let directory = std::env::var_os("CKPT_SYSCALLS_DIR").expect("CKPT_SYSCALLS_DIR");
    let saves: usize = std::env::var("CKPT_SYSCALLS_SAVES")
        .unwrap()
        .parse()
        .unwrap();
    let callbacks = Callbacks::new().log(|_, _| {}).on_save(|prefix: &Path, _| {
        let mut name = prefix.as_os_str().to_owned();
        name.push(".data-00000-of-00001");
        std::fs::write(name, [7u8; 16])?;
        Ok(())
    });
    let config = Config::new(Path::new(&directory), MaxToKeep::All).unwrap();
    let mut manager = CheckpointManager::new(config, callbacks).unwrap();
    for _ in 0..saves {
        manager.save(None, false).unwrap().expect("saved");
    }
}

/// (fsync + fdatasync, clone + clone3, mkdir + mkdirat) calls of `saves`
/// saves after the warm-up, with the open and the harness.
fn traced(saves: usize) -> (usize, usize, usize) {
    let directory = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let trace = directory.path().join("trace.txt");
    let status = Command::new("strace")
        .args([
            "-f",
            "-e",
            "trace=fsync,fdatasync,clone,clone3,mkdir,mkdirat",
            "-o",
        ])
        .arg(&trace)
        .arg(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "save_loop", "--test-threads=1"])
        .env("CKPT_SYSCALLS_DIR", directory.path().join("checkpoints"))
        .env("CKPT_SYSCALLS_SAVES", (WARM_UP + saves).to_string())
        .status()
        .unwrap();
    assert!(status.success(), "the traced save loop failed");
    let text = std::fs::read_to_string(&trace).unwrap();
    // A call interrupted by another thread's line ends "<unfinished ...>"
    // and is resumed as "<... fsync resumed>": count the starts only.
    let calls = |names: &[&str]| {
        text.lines()
            .filter(|line| names.iter().any(|name| line.contains(&format!(" {name}("))))
            .count()
    };
    (
        calls(&["fsync", "fdatasync"]),
        calls(&["clone", "clone3"]),
        calls(&["mkdir", "mkdirat"]),
    )
}

#[test]
fn saves_sync_at_most_five_times_and_start_no_thread() {
    if Command::new("strace").arg("-V").output().is_err() {
        println!("skipped: strace is not installed (scripts/setup installs it)");
        return;
    }
    let (base_syncs, base_threads, base_mkdirs) = traced(0);
    let (syncs, threads, mkdirs) = traced(TIMED);
    let (syncs, threads) = (syncs - base_syncs, threads.saturating_sub(base_threads));
    let mkdirs = mkdirs.saturating_sub(base_mkdirs);
    println!(
        "{TIMED} saves: {syncs} fsync/fdatasync ({:.2} a save), {threads} threads started",
        syncs as f64 / TIMED as f64
    );
    assert!(
        syncs <= MAX_SYNCS_PER_SAVE * TIMED,
        "{syncs} syncs in {TIMED} saves, over {MAX_SYNCS_PER_SAVE} a save"
    );
    assert!(
        syncs >= TIMED,
        "no save synced anything: strace saw nothing?"
    );
    assert_eq!(threads, 0, "saves started {threads} threads");
    assert_eq!(mkdirs, 0, "saves made {mkdirs} directories");
}
