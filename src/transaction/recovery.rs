//! Recovery on open: every staging directory is rolled forward (it holds a
//! commit record: its commit got past the commit point) or removed,
//! temporary state files and manifests go, and pending markers (saves that
//! placed a new checkpoint's files before naming it) are resolved.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use super::record::{io_at, read_record, CommitRecord};
use super::{finish, strategy_for, Strategy};
use crate::error::Result;
use crate::integrity;
use crate::layout;
use crate::state::CheckpointState;
use crate::state_file::read_state_bytes;
use crate::store::{self, Kind, Store};

/// One thing recovery on open does to a checkpoint directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryAction {
    /// A save interrupted after its commit point is rolled forward; the
    /// checkpoints its sweep dropped (`swept`) are deleted unless the
    /// state file names them again.
    FinishCommit {
        base: OsString,
        swept: Vec<OsString>,
    },
    /// A save interrupted before its commit point: its staging directory
    /// is removed.
    RemoveUncommitted { base: OsString },
    /// A temporary state file or manifest, or a dead writer's spare staging
    /// directory, is removed.
    RemoveTemporary { name: OsString },
    /// The marker of a save that placed a new checkpoint's files before
    /// naming it (or of version 0.1's saves) is removed, and, when
    /// the state file does not name `base` (`delete`), what it owns.
    ResolvePendingMarker { base: OsString, delete: bool },
    /// The manifest of a checkpoint that the state file does not name and
    /// none of whose files exist (another tool, TF's manager, deleted them)
    /// is removed.
    RemoveOrphanedManifest { base: OsString },
}

/// A planned step of recovery, with the commit record it rolls forward.
#[derive(Debug)]
pub struct RecoveryStep {
    pub action: RecoveryAction,
    record: Option<CommitRecord>,
}

/// What `recover` does to the store, in order, decided from one listing:
/// staging directories first (a commit to roll forward renames its staged
/// state file), then temporary files and pending markers. `named`
/// holds the bases the state file names. Changes nothing.
pub fn plan_recovery(
    store: &dyn Store,
    named: &dyn Fn(&OsStr) -> bool,
) -> Result<Vec<RecoveryStep>> {
    let entries = store::list_root(store)?;
    let mut steps = Vec::new();
    for entry in &entries {
        let Some(base) = layout::staging_base(entry.name.as_bytes()) else {
            continue;
        };
        if entry.kind != Kind::Directory {
            continue;
        }
        let base = OsStr::from_bytes(base);
        let record = read_record(store, base)?;
        let action = match &record {
            Some(record) => RecoveryAction::FinishCommit {
                base: base.to_owned(),
                swept: record
                    .swept
                    .iter()
                    .map(|swept| OsString::from_vec(swept.base.as_bytes().to_vec()))
                    .collect(),
            },
            None => RecoveryAction::RemoveUncommitted {
                base: base.to_owned(),
            },
        };
        steps.push(RecoveryStep { action, record });
    }
    for entry in &entries {
        let name = entry.name.as_bytes();
        let action = if layout::is_temporary(name) || name == layout::SPARE_STAGING_NAME.as_bytes()
        {
            RecoveryAction::RemoveTemporary {
                name: entry.name.clone(),
            }
        } else if let Some(base) = layout::pending_marker_base(name) {
            let base = OsStr::from_bytes(base);
            RecoveryAction::ResolvePendingMarker {
                base: base.to_owned(),
                delete: !named(base),
            }
        } else {
            continue;
        };
        steps.push(RecoveryStep {
            action,
            record: None,
        });
    }
    // A commit rolled forward deletes what its sweep dropped itself.
    let swept: Vec<Vec<u8>> = steps
        .iter()
        .filter_map(|step| step.record.as_ref())
        .flat_map(|record| {
            record
                .swept
                .iter()
                .map(|swept| swept.base.as_bytes().to_vec())
        })
        .collect();
    for entry in &entries {
        let Some(base) = layout::manifest_base(entry.name.as_bytes()) else {
            continue;
        };
        if swept.iter().any(|swept| swept == base) {
            continue;
        }
        let base = OsStr::from_bytes(base);
        if entry.kind == Kind::File && !named(base) && is_orphaned(store, base, &entries)? {
            steps.push(RecoveryStep {
                action: RecoveryAction::RemoveOrphanedManifest {
                    base: base.to_owned(),
                },
                record: None,
            });
        }
    }
    Ok(steps)
}

/// Whether `base` has a readable manifest but none of the files it lists,
/// and nothing else of its name in the directory (`entries`): no staging,
/// no marker, no temporary manifest. The listing decides most bases
/// without reading their manifest.
fn is_orphaned(store: &dyn Store, base: &OsStr, entries: &[store::Entry]) -> Result<bool> {
    let manifest = layout::manifest_name(base);
    let has_others = entries.iter().any(|entry| {
        entry.name != manifest.as_os_str()
            && entry
                .name
                .as_bytes()
                .strip_prefix(base.as_bytes())
                .is_some_and(|rest| rest.is_empty() || rest[0] == b'.')
    });
    if has_others {
        return Ok(false);
    }
    let Ok(Some(manifest)) = integrity::read_manifest(store, base) else {
        return Ok(false); // unreadable: what it owns is unknown
    };
    for file in &manifest.files {
        let name = layout::file_name(base, file.suffix.as_bytes());
        if store
            .kind(&name)
            .map_err(io_at("inspect", store, &name))?
            .is_some()
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Recovery on open, for a writer holding the lock: every staging
/// directory is rolled forward or removed, temporary state files go, and
/// pending markers are resolved: a marked
/// checkpoint the state names keeps its files, one it does not name loses
/// what it owns. `named` holds the bases the state file names; `on_swept`
/// hears of each checkpoint a rolled-forward sweep drops and says whether
/// it deleted it (the manager's delete callback); if not, the files it owns
/// are deleted.
pub fn recover(
    store: &dyn Store,
    named: &dyn Fn(&OsStr) -> bool,
    warn: &mut dyn FnMut(&str),
    on_swept: &mut dyn FnMut(&OsStr) -> bool,
) -> Result<()> {
    for step in plan_recovery(store, named)? {
        run_recovery_step(store, &step, warn, on_swept)?;
    }
    Ok(())
}

/// Carries out one step `plan_recovery` planned.
pub fn run_recovery_step(
    store: &dyn Store,
    step: &RecoveryStep,
    warn: &mut dyn FnMut(&str),
    on_swept: &mut dyn FnMut(&OsStr) -> bool,
) -> Result<()> {
    match &step.action {
        RecoveryAction::FinishCommit { base, .. } | RecoveryAction::RemoveUncommitted { base } => {
            let strategy = strategy_for(store);
            recover_staging(store, strategy, base, step.record.as_ref(), warn, on_swept)
        }
        RecoveryAction::RemoveTemporary { name } => {
            let path = Path::new(name);
            match store.kind(path).map_err(io_at("inspect", store, path))? {
                Some(Kind::Directory) => store.remove_staging(path),
                _ => store.remove_file(path),
            }
            .map_err(io_at("remove temporary file", store, path))
        }
        RecoveryAction::ResolvePendingMarker { base, delete } => {
            if *delete {
                warn(&format!(
                    "removing '{}': it was being saved or deleted when the last writer stopped",
                    store.shown(Path::new(base)).display()
                ));
                integrity::delete_owned(store, &integrity::owned_files(store, base)?)?;
            }
            // A new checkpoint's marker is its staging directory, renamed.
            let marker = layout::pending_marker_name(base);
            match store
                .kind(&marker)
                .map_err(io_at("inspect", store, &marker))?
            {
                Some(Kind::Directory) => store.remove_staging(&marker),
                _ => store.remove_file(&marker),
            }
            .map_err(io_at("remove", store, &marker))
        }
        RecoveryAction::RemoveOrphanedManifest { base } => {
            let manifest = layout::manifest_name(base);
            warn(&format!(
                "removing '{}': the files of its checkpoint are gone and the state file does \
                 not name it",
                store.shown(&manifest).display()
            ));
            store
                .remove_file(&manifest)
                .map_err(io_at("remove", store, &manifest))
        }
    }
}

/// Finishes or undoes the staging of `<base>`: with its commit record,
/// rolls the commit forward (`on_swept` hears of each checkpoint its sweep
/// drops); without, removes the staging.
pub(super) fn recover_staging(
    store: &dyn Store,
    strategy: &dyn Strategy,
    base: &OsStr,
    record: Option<&CommitRecord>,
    warn: &mut dyn FnMut(&str),
    on_swept: &mut dyn FnMut(&OsStr) -> bool,
) -> Result<()> {
    let shown = store.shown(Path::new(base));
    let Some(record) = record else {
        warn(&format!(
            "removing an uncommitted save of '{}' left when the last writer stopped",
            shown.display()
        ));
        let staging = layout::staging_name(base);
        return strategy.remove_staging(store, base, false).map_err(io_at(
            "remove staging directory",
            store,
            &staging,
        ));
    };
    warn(&format!(
        "finishing the commit of '{}', interrupted when the last writer stopped",
        shown.display()
    ));
    strategy.apply(store, base, record, true)?;
    let named = read_state_bytes(store)?
        .and_then(|bytes| CheckpointState::parse(&bytes).ok())
        .map(|state| {
            let mut named = state.all_model_checkpoint_paths;
            named.push(state.model_checkpoint_path);
            named
        })
        .unwrap_or_default();
    finish(store, strategy, base, record, Some(&named), on_swept)
}
