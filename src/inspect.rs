//! Functions on a checkpoint directory or prefix that need no manager:
//! TF's module-level `latest_checkpoint`, `get_checkpoint_state`,
//! `checkpoint_exists` and `remove_checkpoint`.

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::paths;
use crate::state::CheckpointState;
use crate::storage;

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

/// The state file's latest checkpoint, if any of its files exist.
pub fn latest_checkpoint(directory: &Path) -> Result<Option<PathBuf>> {
    let Some(state) = get_checkpoint_state(directory)? else {
        return Ok(None);
    };
    let latest = paths::path_from_bytes(&state.model_checkpoint_path);
    Ok(checkpoint_exists(&latest)?.then_some(latest))
}

/// Whether any file `<prefix>` or `<prefix>.<suffix>` exists.
pub fn checkpoint_exists(prefix: &Path) -> Result<bool> {
    storage::checkpoint_exists(prefix)
}

/// Deletes every file of the checkpoint at `prefix`; none existing is fine.
pub fn remove_checkpoint(prefix: &Path) -> Result<()> {
    storage::delete_checkpoint(prefix)
}
