//! Running the built `ckpt` binary (test crates only: examples have no
//! binary path).

#![allow(dead_code)] // Each test crate uses part of this module.

use std::fs;
use std::path::Path;

use assert_cmd::cargo::cargo_bin_cmd;
use serde_json::Value;

/// What one run of `ckpt` printed, and how it exited.
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn ckpt(args: &[&str]) -> Ran {
    ckpt_with_env(&[], args)
}

/// `ckpt` with these variables added to its environment.
pub fn ckpt_with_env(env: &[(&str, &str)], args: &[&str]) -> Ran {
    let output = cargo_bin_cmd!("ckpt")
        .envs(env.iter().copied())
        .args(args)
        .output()
        .unwrap();
    Ran {
        code: output.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

pub fn json(ran: &Ran) -> Value {
    serde_json::from_str(&ran.stdout).unwrap_or_else(|e| panic!("{e}: {}", ran.stdout))
}

pub fn text(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Compares `actual`, with `directory` (a path or URL) shown as DIR, with
/// the snapshot (cli/tests/snapshots; `CKPT_UPDATE_SNAPSHOTS=1` rewrites it).
pub fn assert_snapshot(name: &str, directory: &Path, actual: &str) {
    let actual = actual.replace(text(directory), "DIR");
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(format!("{name}.txt"));
    if std::env::var_os("CKPT_UPDATE_SNAPSHOTS").is_some() {
        fs::write(&path, &actual).unwrap();
    }
    let expected = fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (CKPT_UPDATE_SNAPSHOTS=1 writes it)",
            path.display()
        )
    });
    assert_eq!(actual, expected, "snapshot {name} differs");
}
