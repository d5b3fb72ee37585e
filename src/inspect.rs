//! Functions on a checkpoint directory or prefix that need no manager:
//! TF's module-level `latest_checkpoint`, `get_checkpoint_state`,
//! `checkpoint_exists` and `remove_checkpoint`, and verification.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, ErrorKind, Result};
use crate::integrity::{self, Integrity};
use crate::layout;
use crate::manifest::Manifest;
use crate::manifest::Verification;
use crate::paths;
use crate::policy;
use crate::state::CheckpointState;
use crate::state_file::{read_state, StateFile};
use crate::store::{self, Store};
#[cfg(test)]
use crate::tensor_file::TensorFile;
use crate::transaction::tiers::UploadList;
use crate::transaction::{self, RecoveryAction};

/// How often `latest_checkpoint` reads a state file again that a writer
/// changed while the candidates were being verified.
const READER_RETRIES: usize = 20;

/// The store holding a checkpoint prefix's files (a directory or URL),
/// opened with `options` (an object store's; the environment's without),
/// and the prefix's base.
pub(crate) fn split_prefix(
    prefix: &Path,
    options: &[(String, String)],
) -> Result<(Arc<dyn Store>, OsString)> {
    store::of_prefix(prefix, options)
}

/// Where the remote tier of `directory` is and which of its checkpoints
/// wait for their upload, as the manager that has it keeps them in
/// `checkpoint.uploads`; `None` for a directory without a remote tier.
pub fn upload_list(directory: &Path) -> Result<Option<UploadList>> {
    crate::transaction::tiers::read_upload_list(&*store::open(directory, &[])?)
}

/// The directory's state file with every relative path joined onto the
/// directory (absolute paths kept), as TF returns it. `None` without one.
pub fn get_checkpoint_state(directory: &Path) -> Result<Option<CheckpointState>> {
    Ok(read_state(&*store::open(directory, &[])?)?.map(|file| joined(directory, file.state)))
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
    let store = store::open(directory, &[])?;
    let mut retries = 0;
    loop {
        let Some(file) = read_state(&*store)? else {
            return Ok(None);
        };
        let found = latest_in(directory, &file, options, warn);
        let settled = !matches!(found, Ok(None) | Err(Error::Damaged { .. }))
            || retries == READER_RETRIES
            || read_state(&*store)?.map(|again| again.crc32c) == Some(file.crc32c);
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
/// damaged one and about a fallback. Errors other than damage (a rank's
/// included) stop the search.
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
            Err(err) if err.kind() == ErrorKind::Damaged => warn(&err.to_string()),
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
    let (store, base) = split_prefix(prefix, &[])?;
    integrity::verify(&*store, &base, verification, saved_at, &[]).map(|(integrity, _)| integrity)
}

/// Checks a checkpoint against its manifest: `Integrity::Intact`,
/// `Integrity::NoManifest` for files written without one (by TF, say), or
/// `Integrity::ManifestOutdated` when the directory's state file records
/// a later save of it than its manifest.
pub fn verify_checkpoint(prefix: &Path, verification: Verification) -> Result<Integrity> {
    verify_checkpoint_with_progress(prefix, verification, &mut |_| {})
}

/// `verify_checkpoint`, telling `progress` the bytes of each chunk it reads
/// for a checksum (for a progress bar).
pub fn verify_checkpoint_with_progress(
    prefix: &Path,
    verification: Verification,
    progress: &mut dyn FnMut(u64),
) -> Result<Integrity> {
    let (store, base) = split_prefix(prefix, &[])?;
    // The time is only a hint: an unreadable state file leaves it out.
    let saved_at = read_state(&*store).ok().flatten().and_then(|file| {
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
    integrity::verify_with_progress(&*store, &base, verification, saved_at, &[], progress)
        .map(|(integrity, _)| integrity)
}

/// Whether the checkpoint at `prefix` has a manifest or any file.
pub fn checkpoint_exists(prefix: &Path) -> Result<bool> {
    let (store, base) = split_prefix(prefix, &[])?;
    Ok(integrity::read_manifest(&*store, &base)
        .ok()
        .flatten()
        .is_some()
        || integrity::has_files(&*store, &base)?)
}

/// Deletes the files the checkpoint at `prefix` owns: what its manifest
/// lists, or TF's `.index` and `.data-NNNNN-of-NNNNN` files without one.
/// Nothing else, and nothing existing is fine.
pub fn remove_checkpoint(prefix: &Path) -> Result<()> {
    let (store, base) = split_prefix(prefix, &[])?;
    integrity::delete_owned(&*store, &integrity::owned_files(&*store, &base)?)
}

/// The checkpoints on disk in `directory`, listed or not, sorted by name:
/// every `<base>` with a manifest (`<base>.ckpt-manifest.json`) or with
/// TensorFlow's `<base>.index`. An object store is reached as the
/// environment says (a manager's `retention_report` uses its options).
pub fn checkpoints_on_disk(directory: &Path) -> Result<Vec<PathBuf>> {
    checkpoints_in(&*store::open(directory, &[])?, directory)
}

/// `checkpoints_on_disk` of the directory `store` holds.
pub(crate) fn checkpoints_in(store: &dyn Store, directory: &Path) -> Result<Vec<PathBuf>> {
    let mut bases: Vec<&[u8]> = Vec::new();
    let entries = store::list_root(store)?;
    for entry in &entries {
        if let Some(base) = layout::checkpoint_base(entry.name.as_bytes()) {
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
/// its lock or, on a bucket, its lease (`Error::Locked` or `Error::Leased`
/// when a manager has it), and returns what it did. With `dry_run`, takes no lock and only says what it would do.
/// `warn` hears what recovery says as it goes.
pub fn recover_directory(
    directory: &Path,
    dry_run: bool,
    warn: &mut dyn FnMut(&str),
) -> Result<Vec<RecoveryAction>> {
    let store = store::open(directory, &[])?;
    let _lock = if dry_run {
        None
    } else {
        store.take_lease()?;
        store::lock(directory)?
    };
    let named: std::collections::HashSet<Vec<u8>> = match read_state(&*store)? {
        Some(file) => std::iter::once(file.state.model_checkpoint_path)
            .chain(file.state.all_model_checkpoint_paths)
            .collect(),
        None => Default::default(),
    };
    let steps = transaction::plan_recovery(&*store, &|base| named.contains(base.as_bytes()))?;
    if !dry_run {
        for step in &steps {
            transaction::run_recovery_step(&*store, step, warn, &mut |_| false)?;
        }
        // A rolled-forward commit leaves its staging as a spare no writer holds.
        transaction::remove_spare(&*store);
    }
    Ok(steps.into_iter().map(|step| step.action).collect())
}

/// The manifest of the checkpoint at `prefix`, validated; `None` when it
/// has none (TF wrote it), `Err(Damaged)` when it is unusable.
pub fn read_manifest(prefix: &Path) -> Result<Option<Manifest>> {
    let (store, base) = split_prefix(prefix, &[])?;
    integrity::read_manifest(&*store, &base)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::config::{Callbacks, Config, MaxToKeep};
    use crate::manager::{CheckpointManager, KeepReason};
    use crate::tensors::DType;

    /// A writer keeping `keep` whose saves write `<prefix>.bin`.
    fn writer(directory: &Path, keep: MaxToKeep) -> CheckpointManager {
        let callbacks = Callbacks::new().on_save(|prefix: &Path, number: u64| {
            fs::write(paths::with_suffix(prefix, ".bin"), number.to_le_bytes())?;
            Ok(())
        });
        CheckpointManager::new(Config::new(directory, keep).unwrap(), callbacks).unwrap()
    }

    fn names(directory: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(directory)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn checkpoints_on_disk_are_those_with_a_manifest_or_an_index() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        let mut manager = writer(dir, MaxToKeep::All);
        manager.save(None, false).unwrap();
        for name in [
            "tf-3.index",
            "tf-3.data-00000-of-00001",
            "other.txt",
            "ckpt-9.ckpt-manifest.json.tmp0123",
        ] {
            fs::write(dir.join(name), "x").unwrap();
        }
        assert_eq!(
            checkpoints_on_disk(dir).unwrap(),
            [dir.join("ckpt-1"), dir.join("tf-3")]
        );
        let manifest = read_manifest(&dir.join("ckpt-1")).unwrap().unwrap();
        assert_eq!(manifest.number, 1);
        assert_eq!(manifest.files[0].size, 8);
        assert!(read_manifest(&dir.join("tf-3")).unwrap().is_none());
    }

    #[test]
    fn prune_is_the_sweep_without_a_save_and_the_report_says_why() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        let mut manager = writer(dir, MaxToKeep::All);
        for _ in 0..4 {
            manager.save(None, false).unwrap();
        }
        manager.set_pinned(&dir.join("ckpt-1"), true).unwrap();
        drop(manager);
        fs::write(dir.join("ckpt-2.mine"), "not owned").unwrap();
        let mut manager = writer(dir, MaxToKeep::Last(1));
        let report = manager.retention_report().unwrap();
        let reasons: Vec<&[KeepReason]> = report.iter().map(|r| r.reasons.as_slice()).collect();
        assert_eq!(
            reasons,
            [
                &[KeepReason::Pinned][..],
                &[],
                &[],
                &[KeepReason::Latest, KeepReason::LastN],
            ]
        );
        let before = names(dir);
        let planned = manager.prune(true).unwrap();
        assert_eq!(planned.deleted, [dir.join("ckpt-2"), dir.join("ckpt-3")]);
        assert_eq!(names(dir), before);
        assert_eq!(manager.prune(false).unwrap(), planned);
        assert!(!dir.join("ckpt-2.bin").exists() && !dir.join("ckpt-3.bin").exists());
        assert!(dir.join("ckpt-2.mine").exists());
        assert_eq!(
            manager.checkpoints(),
            [dir.join("ckpt-1"), dir.join("ckpt-4")]
        );
        drop(manager);
        let reopened = writer(dir, MaxToKeep::Last(1));
        assert_eq!(
            reopened.checkpoints(),
            [dir.join("ckpt-1"), dir.join("ckpt-4")]
        );
        assert_eq!(reopened.latest_checkpoint(), Some(dir.join("ckpt-4")));
    }

    #[test]
    fn prune_refuses_a_state_file_changed_under_it() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        let mut manager = writer(dir, MaxToKeep::All);
        manager.save(None, false).unwrap();
        manager.save(None, false).unwrap();
        drop(manager);
        let mut manager = writer(dir, MaxToKeep::Last(1));
        let state = fs::read(dir.join("checkpoint")).unwrap();
        fs::write(dir.join("checkpoint"), [&state[..], b"\n"].concat()).unwrap();
        let err = manager.prune(false).unwrap_err();
        assert!(
            err.to_string().contains("changed since it was read"),
            "{err}"
        );
        assert!(dir.join("ckpt-1.bin").exists());
    }

    #[test]
    fn recover_directory_plans_then_does_what_open_does() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        drop(writer(dir, MaxToKeep::All));
        fs::create_dir(dir.join("ckpt-5.ckpt-staging")).unwrap();
        fs::write(dir.join("ckpt-5.ckpt-staging/ckpt-5.bin"), "x").unwrap();
        let temporary = format!("checkpoint.tmp{}", "ab".repeat(16));
        fs::write(dir.join(&temporary), "x").unwrap();
        let expected = [
            RecoveryAction::RemoveUncommitted {
                base: "ckpt-5".into(),
            },
            RecoveryAction::RemoveTemporary {
                name: temporary.clone().into(),
            },
        ];
        let mut warnings = Vec::new();
        let planned = recover_directory(dir, true, &mut |w| warnings.push(w.to_owned())).unwrap();
        assert_eq!(planned, expected);
        assert!(warnings.is_empty());
        assert!(dir.join(&temporary).exists());
        let held = writer(dir, MaxToKeep::All);
        assert!(matches!(
            recover_directory(dir, false, &mut |_| {}),
            Err(Error::Locked { .. })
        ));
        drop(held); // its open already recovered: plant the leftovers again
        fs::create_dir(dir.join("ckpt-5.ckpt-staging")).unwrap();
        fs::write(dir.join(&temporary), "x").unwrap();
        let done = recover_directory(dir, false, &mut |w| warnings.push(w.to_owned())).unwrap();
        assert_eq!(done, expected);
        assert_eq!(names(dir), ["checkpoint.lock"]);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }

    #[test]
    fn tensor_file_reads_the_header_and_each_tensor() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        let config = Config::new(dir, MaxToKeep::All).unwrap();
        let mut manager = CheckpointManager::new(config, Callbacks::new()).unwrap();
        let mut weights = vec![1.5f32, -2.0];
        // SAFETY: the buffer outlives the manager.
        unsafe {
            manager
                .register_tensor("w", DType::F32, &[2], weights.as_mut_ptr().cast())
                .unwrap();
        }
        let prefix = manager.save(None, false).unwrap().unwrap();
        drop(manager);
        let file = TensorFile::open(&prefix).unwrap().unwrap();
        let tensor = &file.header().tensors[0];
        assert_eq!((tensor.name.as_str(), tensor.dtype), ("w", DType::F32));
        let bytes: Vec<u8> = weights.iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(file.read(tensor).unwrap(), bytes);
        assert_eq!(file.header().metadata["checkpoint_number"], "1");
        assert!(TensorFile::open(&dir.join("ckpt-9")).unwrap().is_none());
        fs::write(
            paths::with_suffix(&prefix, ".safetensors"),
            [1, 0, 0, 0, 0, 0, 0, 0],
        )
        .unwrap();
        assert!(matches!(
            TensorFile::open(&prefix),
            Err(Error::Damaged { .. })
        ));
    }
}
