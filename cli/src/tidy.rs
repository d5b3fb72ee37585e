//! The commands that change a directory: prune and recover, each through
//! the library, holding a local directory's lock (a dry run takes none and
//! changes nothing). Object storage has no lock: the library's conditional
//! write of the state object refuses a commit over another writer's.

use std::path::{Path, PathBuf};

use ckpt_manager::RecoveryAction;
use serde_json::json;

use crate::output::{self, shown};
use crate::read::{config, open};
use crate::{location, Failure, Outcome, RuleArgs};

pub fn prune(argument: &str, dry_run: bool, rules: &RuleArgs, json: bool) -> Outcome {
    let directory = location::directory(argument)?;
    if rules.keep.is_none() {
        return Err(Failure::Trouble(
            "prune needs --keep N (the newest N are kept)".into(),
        ));
    }
    let mut manager = open(config(&directory, rules, dry_run)?)?;
    let pruned = manager.prune(dry_run)?;
    let names = |paths: &[PathBuf]| paths.iter().map(|p| shown(p)).collect::<Vec<_>>();
    if json {
        output::print_json(&json!({
            "dry_run": dry_run,
            "deleted": names(&pruned.deleted),
            "preserved": names(&pruned.preserved),
            "not_deleted": names(&pruned.not_deleted),
        }));
        return Ok(());
    }
    let (delete, preserve) = if dry_run {
        ("would delete", "would preserve (hours rule)")
    } else {
        ("deleted", "preserved (hours rule)")
    };
    for prefix in &pruned.deleted {
        println!("{delete} {}", prefix.display());
    }
    for prefix in &pruned.preserved {
        println!("{preserve} {}", prefix.display());
    }
    for prefix in &pruned.not_deleted {
        println!(
            "dropped from the list, not deleted (outside the directory) {}",
            prefix.display()
        );
    }
    if pruned.deleted.is_empty() && pruned.preserved.is_empty() && pruned.not_deleted.is_empty() {
        println!("nothing to prune: every checkpoint is kept by a rule");
    }
    Ok(())
}

fn describe(directory: &Path, action: &RecoveryAction) -> (String, serde_json::Value) {
    let at = |name: &std::ffi::OsStr| shown(&directory.join(name));
    match action {
        RecoveryAction::FinishCommit { base, swept } => {
            let swept: Vec<String> = swept.iter().map(|b| at(b)).collect();
            let text = if swept.is_empty() {
                format!("finish the interrupted commit of {}", at(base))
            } else {
                format!(
                    "finish the interrupted commit of {}; delete what its sweep dropped: {}",
                    at(base),
                    swept.join(", ")
                )
            };
            (
                text,
                json!({"action": "finish-commit", "checkpoint": at(base), "swept": swept}),
            )
        }
        RecoveryAction::RemoveUncommitted { base } => (
            format!("remove the uncommitted save of {}", at(base)),
            json!({"action": "remove-uncommitted", "checkpoint": at(base)}),
        ),
        RecoveryAction::RemoveTemporary { name } => (
            format!("remove the temporary file {}", at(name)),
            json!({"action": "remove-temporary", "file": at(name)}),
        ),
        RecoveryAction::RemoveOrphanedManifest { base } => {
            let manifest = format!("{}.ckpt-manifest.json", at(base));
            (
                format!(
                    "remove the manifest {manifest} (its checkpoint's files are gone, and the \
                     state file does not name it)"
                ),
                json!({"action": "remove-orphaned-manifest", "manifest": manifest}),
            )
        }
        RecoveryAction::ResolvePendingMarker { base, delete } => {
            let marker = format!("{}.ckpt-pending", at(base));
            if *delete {
                (
                    format!(
                        "delete {} (interrupted, not listed) and its marker {marker}",
                        at(base)
                    ),
                    json!({"action": "delete-interrupted", "checkpoint": at(base), "marker": marker}),
                )
            } else {
                (
                    format!("remove the marker {marker} (the checkpoint is listed)"),
                    json!({"action": "remove-marker", "marker": marker}),
                )
            }
        }
    }
}

pub fn recover(argument: &str, dry_run: bool, json: bool) -> Outcome {
    let directory = location::directory(argument)?;
    let actions =
        ckpt_manager::recover_directory(&directory, dry_run, &mut |w| eprintln!("ckpt: {w}"))?;
    let described: Vec<_> = actions.iter().map(|a| describe(&directory, a)).collect();
    if json {
        let actions: Vec<_> = described.into_iter().map(|(_, value)| value).collect();
        output::print_json(&json!({"dry_run": dry_run, "actions": actions}));
        return Ok(());
    }
    if described.is_empty() {
        println!("nothing to recover in {}", directory.display());
    }
    let verb = if dry_run { "would " } else { "done: " };
    for (text, _) in described {
        println!("{verb}{text}");
    }
    Ok(())
}
