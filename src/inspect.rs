//! Functions on a checkpoint directory or prefix that need no manager:
//! TF's module-level `latest_checkpoint`, `get_checkpoint_state`,
//! `checkpoint_exists` and `remove_checkpoint`, and verification.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::manifest::Verification;
use crate::paths;
use crate::policy;
use crate::state::CheckpointState;
use crate::storage::{self, Integrity};

/// The directory's state file with every relative path joined onto the
/// directory (absolute paths kept), as TF returns it. `None` without one.
pub fn get_checkpoint_state(directory: &Path) -> Result<Option<CheckpointState>> {
    let Some(mut state) = storage::read_state(directory)? else {
        return Ok(None);
    };
    let join = |bytes: &mut Vec<u8>| {
        let joined = directory.join(paths::path_from_bytes(bytes));
        *bytes = paths::path_bytes(&joined).to_vec();
    };
    join(&mut state.model_checkpoint_path);
    state.all_model_checkpoint_paths.iter_mut().for_each(join);
    Ok(Some(state))
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
pub fn latest_checkpoint(
    directory: &Path,
    options: LatestOptions,
    warn: &mut dyn FnMut(&str),
) -> Result<Option<PathBuf>> {
    let Some(state) = get_checkpoint_state(directory)? else {
        return Ok(None);
    };
    let latest = paths::path_from_bytes(&state.model_checkpoint_path);
    if !options.fallback {
        verify_checkpoint(&latest, options.verification)?;
        return Ok(Some(latest));
    }
    let listed: Vec<PathBuf> = state
        .all_model_checkpoint_paths
        .iter()
        .map(|bytes| paths::path_from_bytes(bytes))
        .collect();
    let candidates = policy::fallback_order(&latest, &listed, []);
    let mut verify = |candidate: &Path| verify_checkpoint(candidate, options.verification);
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

/// Checks a checkpoint against its manifest: `Integrity::Intact`, or
/// `Integrity::NoManifest` for files written without one (by TF, say).
pub fn verify_checkpoint(prefix: &Path, verification: Verification) -> Result<Integrity> {
    storage::verify_checkpoint(prefix, verification)
}

/// Whether any file `<prefix>` or `<prefix>.<suffix>` exists.
pub fn checkpoint_exists(prefix: &Path) -> Result<bool> {
    storage::checkpoint_exists(prefix)
}

/// Deletes every file of the checkpoint at `prefix`; none existing is fine.
pub fn remove_checkpoint(prefix: &Path) -> Result<()> {
    storage::delete_checkpoint(prefix)
}
