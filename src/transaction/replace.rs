//! Replacing one small file of a committed directory outside a save: the
//! state file (a prune) or a manifest (a pin). Written and synced aside,
//! renamed over the old one, the directory synced: a crash leaves the old
//! or the new file, and a temporary file the next open removes.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use super::record::{io_at, write_whole};
use crate::error::{Error, Result};
use crate::layout::{self, STATE_FILE_NAME};
use crate::manifest::Manifest;
use crate::state_file::read_state_bytes;
use crate::store::Store;

/// Replaces a committed checkpoint's manifest (to pin or unpin it).
pub fn replace_manifest(store: &dyn Store, base: &OsStr, manifest: &Manifest) -> Result<()> {
    replace_aside(store, &layout::manifest_name(base), &manifest.to_json())
}

/// Replaces the state file with `bytes` (a prune: no checkpoint is
/// committed). Refused when the state file is no longer the one read
/// (`state_before`, its CRC32C).
pub fn replace_state(store: &dyn Store, bytes: &[u8], state_before: Option<u32>) -> Result<()> {
    let target = Path::new(STATE_FILE_NAME);
    if read_state_bytes(store)?.as_deref().map(crc32c::crc32c) != state_before {
        return Err(Error::invalid(format!(
            "'{}' changed since it was read: another tool wrote it; try again",
            store.shown(target).display()
        )));
    }
    replace_aside(store, target, bytes)
}

/// Writes `bytes` to a temporary name and syncs it, renames it over
/// `target` (on failure the temporary file goes), and syncs the directory.
pub(crate) fn replace_aside(store: &dyn Store, target: &Path, bytes: &[u8]) -> Result<()> {
    let staged = layout::temporary_name(target);
    write_whole(store, &staged, bytes)?;
    let replaced = store
        .sync_files(std::slice::from_ref(&staged))
        .map_err(io_at("sync", store, &staged))
        .and_then(|()| {
            store
                .rename(&staged, target)
                .map_err(io_at("replace", store, target))
        });
    if let Err(err) = replaced {
        let _ = store.remove_file(&staged);
        return Err(err);
    }
    store
        .sync_directories(&[PathBuf::new()])
        .map_err(io_at("sync", store, Path::new("")))
}
