//! The README's C example: it keeps 3 checkpoints, and a run interrupted
//! and resumed ends with the same model as a run straight through.

mod support;

use std::path::Path;

fn run_trainer(directory: &Path, args: &[&str]) -> String {
    let program = support::c_program("tiny_trainer", &["examples/tiny_trainer.c"]);
    let output = support::command(&program)
        .arg(directory)
        .args(args)
        .output()
        .unwrap();
    support::assert_success(&output, "tiny_trainer");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn interrupted_and_resumed_matches_a_straight_run() {
    let root = tempfile::tempdir().unwrap();
    let straight = root.path().join("straight");
    let resumed = root.path().join("resumed");

    let out = run_trainer(&straight, &["50"]);
    assert!(out.starts_with("no checkpoint in"), "{out}");
    assert!(out.contains("done at step 50"), "{out}");

    let first = run_trainer(&resumed, &["50", "34"]);
    assert!(first.contains("stopped at step 34"), "{first}");
    let second = run_trainer(&resumed, &["50"]);
    assert!(second.contains("resumed from"), "{second}");
    assert!(second.contains("ckpt-3 at step 30"), "{second}");

    let expected = [
        "checkpoint",
        "checkpoint.lock",
        "ckpt-3.ckpt-manifest.json",
        "ckpt-3.model",
        "ckpt-4.ckpt-manifest.json",
        "ckpt-4.model",
        "ckpt-5.ckpt-manifest.json",
        "ckpt-5.model",
    ];
    assert_eq!(support::file_names(&straight), expected);
    assert_eq!(support::file_names(&resumed), expected);
    let last = |dir: &Path| std::fs::read(dir.join("ckpt-5.model")).unwrap();
    assert_eq!(last(&straight), last(&resumed));
    let summary = |out: &str| {
        out.lines()
            .last()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(summary(&out), summary(&second));
}
