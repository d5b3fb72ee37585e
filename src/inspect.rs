//! Functions on a checkpoint directory or prefix that need no manager:
//! TF's module-level `latest_checkpoint`, `get_checkpoint_state`,
//! `checkpoint_exists` and `remove_checkpoint`, and verification.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::integrity::{self, Integrity};
use crate::manifest::Verification;
use crate::paths;
use crate::policy;
use crate::state::CheckpointState;
use crate::state_file::{read_state, StateFile};
use crate::manifest::{Manifest, MANIFEST_SUFFIX};
use crate::store::{self, DirectoryLock, LocalStore};
use crate::transaction::{self, RecoveryAction};

/// How often `latest_checkpoint` reads a state file again that a writer
/// changed while the candidates were being verified.
const READER_RETRIES: usize = 20;

/// The store holding a checkpoint prefix's files, and the prefix's base.
/// A prefix must end in a file name: `run/` or `run/..` names no checkpoint.
pub(crate) fn split_prefix(prefix: &Path) -> Result<(LocalStore, OsString)> {
    let bytes = prefix.as_os_str().as_bytes();
    let base = match prefix.file_name() {
        Some(base) if !bytes.ends_with(b"/") && !bytes.ends_with(b"/.") && bytes != b"." => base,
        _ => {
            return Err(Error::invalid(format!(
                "'{}' is not a checkpoint prefix: it must end in a file name",
                prefix.display()
            )))
        }
    };
    Ok((LocalStore::of_prefix(prefix), base.to_owned()))
}

/// The directory's state file with every relative path joined onto the
/// directory (absolute paths kept), as TF returns it. `None` without one.
pub fn get_checkpoint_state(directory: &Path) -> Result<Option<CheckpointState>> {
    Ok(read_state(&LocalStore::new(directory))?.map(|file| joined(directory, file.state)))
}

fn joined(directory: &Path, mut state: CheckpointState) -> CheckpointState {
    let join = |bytes: &mut Vec<u8>| {
        let joined = directory.join(paths::path_from_bytes(bytes));
        *bytes = paths::path_bytes(&joined).to_vec();
    };
    join(&mut state.model_checkpoint_path);
    state.all_model_checkpoint_paths.iter_mut().for_each(join);
    state
}

/// How `latest_checkpoint` treats a damaged latest checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatestOptions {
    /// Fall back to the newest intact listed checkpoint (default), or fail
    /// with `Error::Damaged`.
    pub fallback: bool,
    pub verification: Verification,
}

impl Default for LatestOptions {
    fn default() -> Self {
        LatestOptions {
            fallback: true,
            verification: Verification::Sizes,
        }
    }
}

/// The newest checkpoint of the directory's state file that verifies:
/// the latest, or (with `fallback`) the newest intact listed one, with a
/// warning to `warn`. `None` without a state file or an intact checkpoint.
/// When a writer changes the state file during the search, it starts again.
pub fn latest_checkpoint(
    directory: &Path,
    options: LatestOptions,
    warn: &mut dyn FnMut(&str),
) -> Result<Option<PathBuf>> {
    let store = LocalStore::new(directory);
    let mut retries = 0;
    loop {
        let Some(file) = read_state(&store)? else {
            return Ok(None);
        };
        let found = latest_in(directory, &file, options, warn);
        let settled = !matches!(found, Ok(None) | Err(Error::Damaged { .. }))
            || retries == READER_RETRIES
            || read_state(&store)?.map(|again| again.crc32c) == Some(file.crc32c);
        if settled {
            return found;
        }
        retries += 1;
    }
}

fn latest_in(
    directory: &Path,
    file: &StateFile,
    options: LatestOptions,
    warn: &mut dyn FnMut(&str),
) -> Result<Option<PathBuf>> {
    let timestamps = &file.state.all_model_checkpoint_timestamps;
    let state = joined(directory, file.state.clone());
    let latest = paths::path_from_bytes(&state.model_checkpoint_path);
    let listed: Vec<PathBuf> = state
        .all_model_checkpoint_paths
        .iter()
        .map(|bytes| paths::path_from_bytes(bytes))
        .collect();
    let saved_at = |candidate: &Path| {
        let index = listed.iter().rposition(|listed| listed == candidate)?;
        timestamps.get(index).copied()
    };
    let mut verify =
        |candidate: &Path| verify_listed(candidate, options.verification, saved_at(candidate));
    if !options.fallback {
        verify(&latest)?;
        return Ok(Some(latest));
    }
    let candidates = policy::fallback_order(&latest, &listed, []);
    Ok(first_usable(&candidates, warn, &mut verify)?.map(|(path, _)| path))
}

/// The first candidate for which `try_one` succeeds, warning about each
/// damaged one and about a fallback. Errors other than damage stop the
/// search.
pub(crate) fn first_usable<T>(
    candidates: &[PathBuf],
    warn: &mut dyn FnMut(&str),
    try_one: &mut dyn FnMut(&Path) -> Result<T>,
) -> Result<Option<(PathBuf, T)>> {
    for (index, candidate) in candidates.iter().enumerate() {
        match try_one(candidate) {
            Ok(value) => {
                if index > 0 {
                    warn(&format!(
                        "falling back to '{}' because the latest checkpoint '{}' is damaged",
                        candidate.display(),
                        candidates[0].display()
                    ));
                }
                return Ok(Some((candidate.clone(), value)));
            }
            Err(err @ Error::Damaged { .. }) => warn(&err.to_string()),
            Err(err) => return Err(err),
        }
    }
    Ok(None)
}

fn verify_listed(
    prefix: &Path,
    verification: Verification,
    saved_at: Option<f64>,
) -> Result<Integrity> {
    let (store, base) = split_prefix(prefix)?;
    integrity::verify(&store, &base, verification, saved_at, None).map(|(integrity, _)| integrity)
}

/// Checks a checkpoint against its manifest: `Integrity::Intact`,
/// `Integrity::NoManifest` for files written without one (by TF, say), or
/// `Integrity::ManifestOutdated` when the directory's state file records
/// a later save of it than its manifest.
pub fn verify_checkpoint(prefix: &Path, verification: Verification) -> Result<Integrity> {
    let (store, base) = split_prefix(prefix)?;
    // The time is only a hint: an unreadable state file leaves it out.
    let saved_at = read_state(&store).ok().flatten().and_then(|file| {
        let index = file
            .state
            .all_model_checkpoint_paths
            .iter()
            .rposition(|entry| entry.as_slice() == base.as_bytes())?;
        file.state
            .all_model_checkpoint_timestamps
            .get(index)
            .copied()
    });
    integrity::verify(&store, &base, verification, saved_at, None).map(|(integrity, _)| integrity)
}

/// Whether the checkpoint at `prefix` has a manifest or any file.
pub fn checkpoint_exists(prefix: &Path) -> Result<bool> {
    let (store, base) = split_prefix(prefix)?;
    Ok(integrity::read_manifest(&store, &base)
        .ok()
        .flatten()
        .is_some()
        || integrity::has_files(&store, &base)?)
}

/// Deletes the files the checkpoint at `prefix` owns: what its manifest
/// lists, or TF's `.index` and `.data-NNNNN-of-NNNNN` files without one.
/// Nothing else, and nothing existing is fine.
pub fn remove_checkpoint(prefix: &Path) -> Result<()> {
    let (store, base) = split_prefix(prefix)?;
    integrity::delete_owned(&store, &integrity::owned_files(&store, &base)?)
}

/// The checkpoints on disk in `directory`, listed or not, sorted by name:
/// every `<base>` with a manifest (`<base>.ckpt-manifest.json`) or with
/// TensorFlow's `<base>.index`.
pub fn checkpoints_on_disk(directory: &Path) -> Result<Vec<PathBuf>> {
    let store = LocalStore::new(directory);
    let mut bases: Vec<&[u8]> = Vec::new();
    let entries = store::list_root(&store)?;
    for entry in &entries {
        let name = entry.name.as_bytes();
        let base = name
            .strip_suffix(MANIFEST_SUFFIX.as_bytes())
            .or_else(|| name.strip_suffix(b".index"));
        if let Some(base) = base.filter(|base| !base.is_empty()) {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    bases.dedup();
    Ok(bases
        .into_iter()
        .map(|base| directory.join(paths::path_from_bytes(base)))
        .collect())
}

/// Runs the recovery a writer runs on open (finishing or removing
/// interrupted saves, removing temporary files) on `directory`, holding
/// its lock (`Error::Locked` when a manager has it), and returns what it
/// did. With `dry_run`, takes no lock and only says what it would do.
/// `warn` hears what recovery says as it goes.
pub fn recover_directory(
    directory: &Path,
    dry_run: bool,
    warn: &mut dyn FnMut(&str),
) -> Result<Vec<RecoveryAction>> {
    let store = LocalStore::new(directory);
    let _lock = if dry_run {
        None
    } else {
        Some(DirectoryLock::acquire(directory)?)
    };
    let named: std::collections::HashSet<Vec<u8>> = match read_state(&store)? {
        Some(file) => std::iter::once(file.state.model_checkpoint_path)
            .chain(file.state.all_model_checkpoint_paths)
            .collect(),
        None => Default::default(),
    };
    let steps = transaction::plan_recovery(&store, &|base| named.contains(base.as_bytes()))?;
    if !dry_run {
        for step in &steps {
            transaction::run_recovery_step(&store, step, warn, &mut |_| false)?;
        }
    }
    Ok(steps.into_iter().map(|step| step.action).collect())
}

/// The manifest of the checkpoint at `prefix`, validated; `None` when it
/// has none (TF wrote it), `Err(Damaged)` when it is unusable.
pub fn read_manifest(prefix: &Path) -> Result<Option<Manifest>> {
    let (store, base) = split_prefix(prefix)?;
    integrity::read_manifest(&store, &base)
}
