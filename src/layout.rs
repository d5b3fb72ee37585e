//! Every name this library gives a file in a checkpoint directory, and the
//! rules that say which checkpoint a file belongs to. Pure: no store, no
//! file access; `store`, `transaction`, `integrity` and the manager name
//! files only through here.
//!
//! A checkpoint `<base>` (`ckpt-3`) owns `<base>`, `<base>.<suffix>` and
//! what is inside a `<base>/` directory, as its manifest lists them.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

/// TF's state file inside a checkpoint directory.
pub const STATE_FILE_NAME: &str = "checkpoint";
/// A writer's lock beside the state file (local directories).
pub const LOCK_FILE_NAME: &str = "checkpoint.lock";
/// A writer's lease beside the state object (object storage): who writes
/// to the prefix, kept fresh while that writer lives.
pub const LEASE_NAME: &str = "checkpoint.lease";
/// The checkpoints committed locally whose copy to the remote tier is not
/// done yet, beside the state file: a restarted manager resumes them.
pub const UPLOADS_FILE_NAME: &str = "checkpoint.uploads";
/// A writer's idle staging directory between saves (file systems): the
/// next save renames it to its staging directory instead of creating one,
/// and the state file written aside inside it reuses the inode the last
/// commit swapped out. Creating a file or directory costs as much as an
/// fsync on some disks. The writer removes it when it closes; recovery on
/// open removes one a dead writer left.
pub const SPARE_STAGING_NAME: &str = "checkpoint.ckpt-spare";
/// The manifest's own suffix; it is a file of the checkpoint, deleted with it.
pub const MANIFEST_SUFFIX: &str = ".ckpt-manifest.json";
/// `<base>.ckpt-pending`: the marker of a save whose files go to their
/// final names before the state file names them: a new checkpoint on a file
/// system (its staging directory, renamed), or any save of version 0.1 (a
/// file). Recovery deletes what `<base>` owns unless the state file names
/// it.
pub const PENDING_SUFFIX: &str = ".ckpt-pending";
/// `<base>.ckpt-staging`: the directory a save of `<base>` writes into.
pub const STAGING_SUFFIX: &str = ".ckpt-staging";
/// The commit record inside the staging directory; its presence, durable,
/// is the commit point.
pub const RECORD_NAME: &str = "commit-record.json";
/// `<staging>/<file>.ckpt-early`: the marker of a file placed at its final
/// name before the commit point (object storage), written first.
pub const EARLY_SUFFIX: &str = ".ckpt-early";
/// The suffix of the tensors file the built-in tensor saver writes.
pub const TENSOR_FILE_SUFFIX: &str = ".safetensors";
/// `<base><shard>.ckpt-part/`: in a remote tier, a node-local rank's pieces
/// of checkpoint `<base>` (its files and, written last, its manifest) until
/// rank 0 copies them into the remote's commit and removes them.
pub const PART_SUFFIX: &str = ".ckpt-part";
/// TensorFlow's index file, its mark of a checkpoint.
pub const TENSORFLOW_INDEX_SUFFIX: &str = ".index";

/// `<base><suffix>` as a name in the store.
pub fn file_name(base: &OsStr, suffix: &[u8]) -> PathBuf {
    let mut name = base.as_bytes().to_vec();
    name.extend_from_slice(suffix);
    PathBuf::from(OsString::from_vec(name))
}

pub fn manifest_name(base: &OsStr) -> PathBuf {
    file_name(base, MANIFEST_SUFFIX.as_bytes())
}

/// The base of a manifest's name (`ckpt-3` of `ckpt-3.ckpt-manifest.json`).
pub fn manifest_base(name: &[u8]) -> Option<&[u8]> {
    name.strip_suffix(MANIFEST_SUFFIX.as_bytes())
}

pub fn staging_name(base: &OsStr) -> PathBuf {
    file_name(base, STAGING_SUFFIX.as_bytes())
}

/// The base of a staging directory's name.
pub fn staging_base(name: &[u8]) -> Option<&[u8]> {
    name.strip_suffix(STAGING_SUFFIX.as_bytes())
}

/// Where a new checkpoint's state file is written aside: inside its
/// staging directory, under the state file's own name, which no file of a
/// checkpoint can have.
pub fn state_aside_in(staging: &Path) -> PathBuf {
    staging.join(STATE_FILE_NAME)
}

/// The directory of rank `shard`'s pieces of `<base>` in a remote tier.
pub fn part_directory(base: &OsStr, shard: &OsStr) -> PathBuf {
    file_name(base, &[shard.as_bytes(), PART_SUFFIX.as_bytes()].concat())
}

/// The base the pieces are named after inside their directory:
/// `<base><shard>.ckpt-part/<base>` (so `<base><suffix>` and the manifest
/// `<base>.ckpt-manifest.json` are inside it).
pub fn part_base(base: &OsStr, shard: &OsStr) -> OsString {
    part_directory(base, shard).join(base).into_os_string()
}

/// Whether a remote's entry is a directory of some rank's pieces.
pub fn is_part_directory(name: &[u8]) -> bool {
    name.ends_with(PART_SUFFIX.as_bytes())
}

pub fn record_name(base: &OsStr) -> PathBuf {
    staging_name(base).join(RECORD_NAME)
}

pub fn pending_marker_name(base: &OsStr) -> PathBuf {
    file_name(base, PENDING_SUFFIX.as_bytes())
}

/// The base of a pending marker's name.
pub fn pending_marker_base(name: &[u8]) -> Option<&[u8]> {
    name.strip_suffix(PENDING_SUFFIX.as_bytes())
}

/// The marker in `staging` of a file placed early at `final_name`.
pub fn early_marker(staging: &Path, final_name: &Path) -> PathBuf {
    let mut marker = staging.join(final_name).into_os_string();
    marker.push(EARLY_SUFFIX);
    PathBuf::from(marker)
}

/// The final name a marker in `staging` stands for, if `marker` is one.
pub fn placed_early(staging: &Path, marker: &Path) -> Option<PathBuf> {
    let placed = marker
        .as_os_str()
        .as_bytes()
        .strip_suffix(EARLY_SUFFIX.as_bytes())?;
    let placed = Path::new(OsStr::from_bytes(placed));
    Some(placed.strip_prefix(staging).unwrap_or(placed).to_path_buf())
}

/// A suffix of the checkpoint as it is found in staging: a marker's suffix
/// stands for the file placed early.
pub fn suffix_of_marker(suffix: &[u8]) -> Option<&[u8]> {
    suffix.strip_suffix(EARLY_SUFFIX.as_bytes())
}

/// Suffixes of names this library uses for its own bookkeeping, never
/// files of a checkpoint.
pub fn is_reserved_suffix(suffix: &[u8]) -> bool {
    suffix == STAGING_SUFFIX.as_bytes() || suffix == PENDING_SUFFIX.as_bytes()
}

/// The part of every file name that is this rank's, after the checkpoint's
/// base: `.rank-00003-of-00008`.
pub fn shard_infix(rank: u32, size: u32) -> String {
    format!(".rank-{rank:05}-of-{size:05}")
}

/// Whether `name_in_staging` is a file of another rank of the save whose
/// ranks are named like `shard` (`<base>.rank-NNNNN` and the same
/// `-of-SSSSS`).
pub fn is_another_ranks(name_in_staging: &[u8], base: &[u8], shard: &[u8]) -> bool {
    let Some(of_size) = shard.get(b".rank-00000".len()..) else {
        return false;
    };
    let Some(rest) = name_in_staging
        .strip_prefix(base)
        .and_then(|rest| rest.strip_prefix(b".rank-"))
    else {
        return false;
    };
    rest.len() >= 5 + of_size.len()
        && rest[..5].iter().all(u8::is_ascii_digit)
        && rest[5..].starts_with(of_size)
}

/// A file written aside before it replaces `target`: `<target>.tmp<hex>`.
pub fn temporary_name(target: &Path) -> PathBuf {
    let mut name = target.as_os_str().to_owned();
    name.push(format!(".tmp{}", random_hex32()));
    PathBuf::from(name)
}

/// 32 random hex digits, for names no other writer uses.
pub fn random_hex32() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No entropy source: pid and time still make a name unused now.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = (nanos ^ (u128::from(std::process::id()) << 96)).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The object a writer creates twice to learn whether the server honours
/// conditional writes.
#[cfg_attr(not(feature = "s3"), allow(dead_code))] // object stores only
pub fn probe_name() -> PathBuf {
    PathBuf::from(format!(".ckpt-probe-{}", random_hex32()))
}

/// The object a writer creates and reads back to learn the server's time.
#[cfg_attr(not(feature = "s3"), allow(dead_code))] // object stores only
pub fn clock_name() -> PathBuf {
    PathBuf::from(format!(".ckpt-clock-{}", random_hex32()))
}

/// The local directory where an object store's callbacks write and read.
#[cfg_attr(not(feature = "s3"), allow(dead_code))] // object stores only
pub fn shadow_directory_name() -> String {
    format!("{SHADOW_DIRECTORY_STEM}{}", random_hex32())
}

const SHADOW_DIRECTORY_STEM: &str = "ckpt-manager-";

/// A name `shadow_directory_name` makes, and nothing else.
#[cfg_attr(not(feature = "s3"), allow(dead_code))] // object stores only
pub fn is_shadow_directory_name(name: &[u8]) -> bool {
    name.strip_prefix(SHADOW_DIRECTORY_STEM.as_bytes())
        .is_some_and(|hex| hex.len() == 32 && hex.iter().all(u8::is_ascii_hexdigit))
}

/// `<stem>.tmp` and 32 hex digits: this library's and TF's temporary
/// state files (`checkpoint.tmp<hex>`), and nothing else.
fn is_temporary_of(name: &[u8], stem: &[u8]) -> bool {
    name.strip_prefix(stem)
        .and_then(|rest| rest.strip_prefix(b".tmp"))
        .is_some_and(|hex| hex.len() == 32 && hex.iter().all(u8::is_ascii_hexdigit))
}

/// A temporary file of the state file or of a manifest, which recovery
/// removes: `checkpoint.tmp<hex>`, `<base>.ckpt-manifest.json.tmp<hex>`, or
/// version 0.1's `<base>.ckpt-manifest.json.tmp`.
pub fn is_temporary(name: &[u8]) -> bool {
    is_temporary_of(name, STATE_FILE_NAME.as_bytes()) || is_temporary_manifest(name)
}

fn is_temporary_manifest(name: &[u8]) -> bool {
    let Some(at) = name
        .windows(MANIFEST_SUFFIX.len())
        .rposition(|window| window == MANIFEST_SUFFIX.as_bytes())
    else {
        return false;
    };
    let rest = &name[at + MANIFEST_SUFFIX.len()..];
    rest == b".tmp" || is_temporary_of(rest, b"")
}

/// `true` when the entry names a file directly inside the directory.
pub fn is_plain_file_name(entry: &Path) -> bool {
    let mut components = entry.components();
    matches!(
        (components.next(), components.next()),
        (Some(Component::Normal(_)), None)
    )
}

/// The base of a swept state entry the manager may delete: a plain name
/// directly inside the directory that is not the state file, the lock or
/// the lease.
pub fn deletable_base(entry: &Path) -> Option<&OsStr> {
    let reserved = [
        STATE_FILE_NAME,
        LOCK_FILE_NAME,
        LEASE_NAME,
        SPARE_STAGING_NAME,
    ];
    (is_plain_file_name(entry) && !reserved.iter().any(|name| entry == Path::new(name)))
        .then_some(entry.as_os_str())
}

/// Whether a directory entry is one of TensorFlow's files of `base`:
/// `<base>.index` or `<base>.data-NNNNN-of-NNNNN`.
pub fn is_tensorflow_file(entry: &[u8], base: &[u8]) -> bool {
    let Some(suffix) = entry.strip_prefix(base) else {
        return false;
    };
    if suffix == TENSORFLOW_INDEX_SUFFIX.as_bytes() {
        return true;
    }
    let Some(shard) = suffix.strip_prefix(b".data-") else {
        return false;
    };
    let digits = |part: &[u8]| part.len() == 5 && part.iter().all(u8::is_ascii_digit);
    shard.len() == 14 && digits(&shard[..5]) && &shard[5..9] == b"-of-" && digits(&shard[9..])
}

/// Whether a directory entry may be a file of the checkpoint `base` that
/// has no manifest: `<base>` or `<base>.<suffix>`, and not one of this
/// library's bookkeeping names.
pub fn may_belong_to(entry: &[u8], base: &[u8]) -> bool {
    entry
        .strip_prefix(base)
        .is_some_and(|rest| (rest.is_empty() || rest[0] == b'.') && !is_reserved_suffix(rest))
}

/// The base of a checkpoint a directory entry marks: `<base>` of its
/// manifest or of TensorFlow's index.
pub fn checkpoint_base(name: &[u8]) -> Option<&[u8]> {
    manifest_base(name)
        .or_else(|| name.strip_suffix(TENSORFLOW_INDEX_SUFFIX.as_bytes()))
        .filter(|base| !base.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_are_the_state_files_and_manifests_only() {
        let hex = "0123456789abcdef".repeat(2);
        assert!(is_temporary(format!("checkpoint.tmp{hex}").as_bytes()));
        assert!(is_temporary(
            format!("c.ckpt-manifest.json.tmp{hex}").as_bytes()
        ));
        assert!(is_temporary(b"c.ckpt-manifest.json.tmp"));
        assert!(!is_temporary(b"checkpoint.tmp0123"));
        assert!(!is_temporary(format!("ckpt-1.data.tmp{hex}").as_bytes()));
        let aside = temporary_name(Path::new(STATE_FILE_NAME));
        assert!(is_temporary(aside.as_os_str().as_bytes()));
    }

    #[test]
    fn a_marker_stands_for_its_placed_file() {
        let staging = staging_name(OsStr::new("ckpt-1"));
        let marker = early_marker(&staging, Path::new("ckpt-1.index"));
        assert_eq!(
            placed_early(&staging, &marker),
            Some(PathBuf::from("ckpt-1.index"))
        );
        assert_eq!(placed_early(&staging, &staging.join("ckpt-1.index")), None);
    }

    #[test]
    fn another_ranks_files_share_the_size() {
        let shard = shard_infix(0, 8);
        assert!(is_another_ranks(
            b"c.rank-00003-of-00008.index",
            b"c",
            shard.as_bytes()
        ));
        assert!(!is_another_ranks(
            b"c.rank-00003-of-00009.index",
            b"c",
            shard.as_bytes()
        ));
        assert!(!is_another_ranks(b"c.index", b"c", shard.as_bytes()));
        assert!(!is_another_ranks(b"c.rank-00003-of-00008", b"c", b""));
    }
}
