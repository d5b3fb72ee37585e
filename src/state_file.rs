//! Reading the `checkpoint` state file from a store: bounded, regular
//! files only, and every entry checked, so that a hostile file is
//! `StateCorrupt` naming it, whatever the call.

use std::io;
use std::path::Path;

use crate::error::{Error, Result};
use crate::layout::STATE_FILE_NAME;
use crate::state::CheckpointState;
use crate::store::{self, Store};

/// State files larger than this are refused rather than read: one listing
/// a million checkpoints is under 40 MiB.
pub(crate) const MAX_STATE_FILE_BYTES: u64 = 64 << 20;

/// The state file's bytes; `None` when there is none. Not a regular file,
/// or too large, is `StateCorrupt`.
pub fn read_state_bytes(store: &dyn Store) -> Result<Option<Vec<u8>>> {
    let name = Path::new(STATE_FILE_NAME);
    match store::read_bounded(store, name, MAX_STATE_FILE_BYTES) {
        Ok(bytes) => Ok(bytes),
        Err(err) if err.kind() == io::ErrorKind::InvalidData => Err(Error::StateCorrupt {
            path: store.shown(name),
            detail: err.to_string(),
        }),
        Err(err) => Err(Error::io_at("read state file", &store.shown(name), err)),
    }
}

/// The state file as read, with the CRC32C of its bytes (what the commit
/// compares to know the file did not change under it).
#[derive(Debug, Clone)]
pub struct StateFile {
    pub state: CheckpointState,
    pub crc32c: u32,
}

/// Reads and checks the state file. `Ok(None)` when the directory or the
/// file does not exist.
pub fn read_state(store: &dyn Store) -> Result<Option<StateFile>> {
    let Some(bytes) = read_state_bytes(store)? else {
        return Ok(None);
    };
    let corrupt = |detail: String| Error::StateCorrupt {
        path: store.shown(Path::new(STATE_FILE_NAME)),
        detail,
    };
    let state = CheckpointState::parse(&bytes).map_err(|err| corrupt(err.to_string()))?;
    if state.model_checkpoint_path.is_empty() {
        return Err(corrupt("it names no model_checkpoint_path".into()));
    }
    let all =
        std::iter::once(&state.model_checkpoint_path).chain(&state.all_model_checkpoint_paths);
    if let Some(bad) = all.into_iter().find(|path| path.contains(&0)) {
        return Err(corrupt(format!(
            "the path {:?} holds a NUL byte",
            String::from_utf8_lossy(bad)
        )));
    }
    Ok(Some(StateFile {
        crc32c: crc32c::crc32c(&bytes),
        state,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LocalStore;

    #[test]
    fn unusable_state_files_are_corrupt() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalStore::new(root.path());
        assert!(read_state(&store).unwrap().is_none());
        let path = root.path().join(STATE_FILE_NAME);
        for bytes in [
            &b""[..],
            b"model_checkpoint_path: \"\"\n",
            b"\x00\xff garbage",
            b"model_checkpoint_path: \"ckpt\\0001\"\n",
            b"model_checkpoint_path: \"a\"\nall_model_checkpoint_paths: \"b\\000\"\n",
        ] {
            std::fs::write(&path, bytes).unwrap();
            assert!(
                matches!(read_state(&store), Err(Error::StateCorrupt { .. })),
                "{bytes:?}"
            );
        }
        let huge = std::fs::File::create(&path).unwrap();
        huge.set_len(MAX_STATE_FILE_BYTES + 1).unwrap();
        let err = read_state(&store).unwrap_err();
        assert!(err.to_string().contains("limit"), "{err}");
        std::fs::remove_file(&path).unwrap();
        nix_mkfifo(&path);
        let err = read_state(&store).unwrap_err();
        assert!(matches!(err, Error::StateCorrupt { .. }), "{err}");
    }

    fn nix_mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }
}
