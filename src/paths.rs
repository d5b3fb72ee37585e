//! Checkpoint naming (`<name>-<N>`) and the lexical path arithmetic that TF
//! applies to state-file entries. Pure: no file-system access beyond asking
//! for the current directory when an entry must be made relative.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

pub use crate::layout::{is_plain_file_name, STATE_FILE_NAME};

/// `<directory>/<name>-<number>`, the prefix a checkpoint's files share.
pub fn checkpoint_prefix(directory: &Path, name: &OsStr, number: u64) -> PathBuf {
    let mut file = name.to_os_string();
    file.push(format!("-{number}"));
    directory.join(file)
}

/// Parses the canonical decimal form TF's `%d` writes: no sign, no leading zeros.
fn parse_canonical_number(digits: &[u8]) -> Option<u64> {
    let canonical = !digits.is_empty()
        && digits.iter().all(u8::is_ascii_digit)
        && (digits[0] != b'0' || digits.len() == 1);
    if !canonical {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The number of a directory entry that belongs to checkpoint `<name>-<N>`:
/// the entry is named `<name>-<N>` or `<name>-<N>.<suffix>`.
pub fn own_checkpoint_number(entry: &OsStr, name: &OsStr) -> Option<u64> {
    let rest = entry.as_bytes().strip_prefix(name.as_bytes())?;
    let rest = rest.strip_prefix(b"-")?;
    let digits_end = rest.iter().position(|&b| b == b'.').unwrap_or(rest.len());
    parse_canonical_number(&rest[..digits_end])
}

/// The trailing `-<N>` of any checkpoint path, whatever its name: how a new
/// manager learns the numbers an earlier writer used.
pub fn trailing_number(path: &Path) -> Option<u64> {
    let file = path.file_name()?.as_bytes();
    let dash = file.iter().rposition(|&b| b == b'-')?;
    parse_canonical_number(&file[dash + 1..])
}

/// Lexical normalisation as Python's `os.path.normpath` does it.
fn normalize(path: &Path) -> Vec<Component<'_>> {
    let mut out: Vec<Component<'_>> = Vec::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => match out.last() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir) => {}
                _ => out.push(component),
            },
            other => out.push(other),
        }
    }
    out
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/"))
            .join(path)
    }
}

/// The form in which TF writes a checkpoint path into the state file:
/// `os.path.relpath(path, directory)`, where `path` is the entry joined onto
/// the directory. Entries already relative and normal are returned as they are.
pub fn state_entry(directory: &Path, entry: &Path) -> PathBuf {
    if entry.is_relative()
        && entry
            .components()
            .all(|component| matches!(component, Component::Normal(_)))
    {
        return entry.components().collect();
    }
    let target_abs = absolute(&directory.join(entry));
    let base_abs = absolute(directory);
    let target = normalize(&target_abs);
    let base = normalize(&base_abs);
    let common = target.iter().zip(&base).take_while(|(a, b)| a == b).count();
    let mut relative = PathBuf::new();
    for _ in common..base.len() {
        relative.push("..");
    }
    for component in &target[common..] {
        relative.push(component.as_os_str());
    }
    if relative.as_os_str().is_empty() {
        relative.push(".");
    }
    relative
}

pub fn path_from_bytes(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(bytes.to_vec()))
}

pub fn path_bytes(path: &Path) -> &[u8] {
    path.as_os_str().as_bytes()
}

/// `<prefix><suffix>`, e.g. `ckpt-3` + `.index`.
pub fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut joined = prefix.as_os_str().to_os_string();
    joined.push(suffix);
    PathBuf::from(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_and_numbers() {
        let prefix = checkpoint_prefix(Path::new("/d[1]"), OsStr::new("ckpt"), 42);
        assert_eq!(prefix, Path::new("/d[1]/ckpt-42"));
        assert_eq!(trailing_number(&prefix), Some(42));
        assert_eq!(trailing_number(Path::new("d/unusual_prefix-2")), Some(2));
        assert_eq!(trailing_number(Path::new("d/ckpt-02")), None);
        assert_eq!(trailing_number(Path::new("d/ckpt-x")), None);
        assert_eq!(trailing_number(Path::new("d/ckpt")), None);
    }

    #[test]
    fn own_entries_match_name_and_number_only() {
        let name = OsStr::new("ckpt");
        let own = |entry: &str| own_checkpoint_number(OsStr::new(entry), name);
        assert_eq!(own("ckpt-1.index"), Some(1));
        assert_eq!(own("ckpt-10.data-00000-of-00001"), Some(10));
        assert_eq!(own("ckpt-7"), Some(7));
        assert_eq!(own("ckpt-0.safetensors"), Some(0));
        assert_eq!(own("ckpt_name-1.index"), None);
        assert_eq!(own("ckpt-1-2.index"), None);
        assert_eq!(own("ckpt-01.index"), None);
        assert_eq!(own("ckpt-.index"), None);
        assert_eq!(own("xckpt-1.index"), None);
        assert_eq!(own("checkpoint"), None);
    }

    #[test]
    fn state_entries_are_relative_to_the_directory() {
        let dir = Path::new("/tmp/run");
        assert_eq!(state_entry(dir, Path::new("ckpt-3")), Path::new("ckpt-3"));
        assert_eq!(state_entry(dir, Path::new("./ckpt-3")), Path::new("ckpt-3"));
        assert_eq!(
            state_entry(dir, Path::new("/tmp/run/ckpt-3")),
            Path::new("ckpt-3")
        );
        assert_eq!(
            state_entry(dir, Path::new("/tmp/other/ckpt-3")),
            Path::new("../other/ckpt-3")
        );
        assert_eq!(
            state_entry(Path::new("rel/dir/"), Path::new("sub/../ckpt-1")),
            Path::new("ckpt-1")
        );
        assert_eq!(state_entry(dir, Path::new("/tmp/run")), Path::new("."));
    }

    #[test]
    fn plain_names() {
        assert!(is_plain_file_name(Path::new("ckpt-1")));
        assert!(!is_plain_file_name(Path::new("../ckpt-1")));
        assert!(!is_plain_file_name(Path::new("sub/ckpt-1")));
        assert!(!is_plain_file_name(Path::new("/ckpt-1")));
        assert!(!is_plain_file_name(Path::new(".")));
    }
}
