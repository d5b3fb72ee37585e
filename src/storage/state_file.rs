//! The `checkpoint` state file: bounded reads, atomic and durable writes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::fault;
use crate::error::{Error, Result};
use crate::paths::STATE_FILE_NAME;
use crate::state::CheckpointState;

/// State files larger than this are refused rather than read: a real one
/// listing a million checkpoints is under 40 MiB.
pub(crate) const MAX_STATE_FILE_BYTES: u64 = 64 << 20;

/// Temporary state files are `checkpoint.tmp<32 hex digits>`, as TF names them.
const TEMP_PREFIX: &str = "checkpoint.tmp";

pub fn state_file_path(directory: &Path) -> PathBuf {
    directory.join(STATE_FILE_NAME)
}

/// Reads the state file. `Ok(None)` when the directory or the file does not
/// exist; an error when it exists but cannot be read or used.
pub fn read_state(directory: &Path) -> Result<Option<CheckpointState>> {
    let path = state_file_path(directory);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(Error::io_at("open state file", &path, err)),
    };
    let corrupt = |detail: String| Error::StateCorrupt {
        path: path.clone(),
        detail,
    };
    let too_large = || corrupt(format!("larger than the {MAX_STATE_FILE_BYTES}-byte limit"));
    if file
        .metadata()
        .is_ok_and(|m| m.len() > MAX_STATE_FILE_BYTES)
    {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    // Bounded again: the file may grow, or be a pipe.
    file.take(MAX_STATE_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| Error::io_at("read state file", &path, err))?;
    if bytes.len() as u64 > MAX_STATE_FILE_BYTES {
        return Err(too_large());
    }
    let state = CheckpointState::parse(&bytes).map_err(|err| corrupt(err.to_string()))?;
    if state.model_checkpoint_path.is_empty() {
        return Err(corrupt("it names no model_checkpoint_path".into()));
    }
    Ok(Some(state))
}

/// Replaces the state file atomically: a temporary file in the same
/// directory, fsync, rename over the old file. A crash at any point leaves
/// either the old or the new file, whole. The rename is durable only once
/// the directory is synced too, which is the caller's to do.
pub fn replace_state(directory: &Path, state: &CheckpointState) -> Result<()> {
    let final_path = state_file_path(directory);
    let temp_path = directory.join(format!("{TEMP_PREFIX}{}", random_hex32()));
    let written = (|| {
        fault::step()?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp_path)?;
        fault::step()?;
        file.write_all(&state.to_text())?;
        fault::step()?;
        file.sync_all()?;
        fault::step()?;
        fs::rename(&temp_path, &final_path)
    })();
    written.map_err(|err| {
        let _ = fs::remove_file(&temp_path);
        Error::io_at("write state file", &final_path, err)
    })
}

/// Removes temporary state files a crash left behind (only names of the
/// exact form this library and TF use).
pub fn remove_temporary_state_files(directory: &Path) -> Result<()> {
    let entries =
        fs::read_dir(directory).map_err(|err| Error::io_at("list directory", directory, err))?;
    for entry in entries {
        let entry = entry.map_err(|err| Error::io_at("list directory", directory, err))?;
        let name = entry.file_name();
        let is_temporary = name
            .as_bytes()
            .strip_prefix(TEMP_PREFIX.as_bytes())
            .is_some_and(|hex| hex.len() == 32 && hex.iter().all(u8::is_ascii_hexdigit));
        if is_temporary {
            let path = entry.path();
            fault::step()
                .and_then(|()| fs::remove_file(&path))
                .map_err(|err| Error::io_at("remove temporary state file", &path, err))?;
        }
    }
    Ok(())
}

/// 32 random hex digits for temporary names, from the kernel.
fn random_hex32() -> String {
    let mut bytes = [0u8; 16];
    // SAFETY: the buffer is valid for writes of its length.
    let filled = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if filled != bytes.len() as isize {
        // No entropy source: pid and time still make a name no other writer uses now.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = (nanos ^ (u128::from(std::process::id()) << 96)).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(directory: &Path) -> Vec<String> {
        let mut names: Vec<_> = fs::read_dir(directory)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn state_is_written_atomically_and_read_back() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(read_state(root.path()).unwrap(), None);
        let state = CheckpointState {
            model_checkpoint_path: b"ckpt-1".to_vec(),
            all_model_checkpoint_paths: vec![b"ckpt-1".to_vec()],
            all_model_checkpoint_timestamps: vec![1.5],
            last_preserved_timestamp: 0.5,
        };
        replace_state(root.path(), &state).unwrap();
        assert_eq!(read_state(root.path()).unwrap(), Some(state));
        assert_eq!(names(root.path()), ["checkpoint"]);
    }

    #[test]
    fn unusable_state_files_are_errors() {
        let root = tempfile::tempdir().unwrap();
        for bytes in [
            &b""[..],
            b"model_checkpoint_path: \"\"\n",
            b"\x00\xff garbage",
        ] {
            fs::write(state_file_path(root.path()), bytes).unwrap();
            assert!(matches!(
                read_state(root.path()),
                Err(Error::StateCorrupt { .. })
            ));
        }
        let huge = File::create(state_file_path(root.path())).unwrap();
        huge.set_len(MAX_STATE_FILE_BYTES + 1).unwrap();
        let err = read_state(root.path()).unwrap_err();
        assert!(err.to_string().contains("limit"), "{err}");
    }

    #[test]
    fn only_exact_temporary_names_are_removed() {
        let root = tempfile::tempdir().unwrap();
        let keep = ["checkpoint", "checkpoint.tmpfoo", "checkpoint.tmp0123"];
        let temporary = format!("{TEMP_PREFIX}{}", random_hex32());
        for name in keep.iter().copied().chain([temporary.as_str()]) {
            fs::write(root.path().join(name), b"x").unwrap();
        }
        remove_temporary_state_files(root.path()).unwrap();
        assert_eq!(
            names(root.path()),
            ["checkpoint", "checkpoint.tmp0123", "checkpoint.tmpfoo"]
        );
    }
}
