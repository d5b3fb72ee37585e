//! The commands that only read: list, show, verify, latest.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use ckpt_manager::{
    Callbacks, CheckpointInfo, CheckpointManager, CheckpointTensors, Config, Error, Integrity,
    KeepReason, MaxToKeep, Pruned, TensorBox, TensorFile, Verification,
};
use serde_json::json;

use crate::location::{self, Target};
use crate::output::{self, shown};
use crate::{Failure, Outcome, RuleArgs};

/// Checkpoints at least this large get a progress bar while their CRCs
/// are checked, when stderr is a terminal.
const PROGRESS_FROM_BYTES: u64 = 64 << 20;

/// The library's configuration for `rules` (keep-all without `--keep`).
pub fn config(directory: &Path, rules: &RuleArgs, read_only: bool) -> Result<Config, Failure> {
    let max_to_keep = rules.keep.map_or(MaxToKeep::All, MaxToKeep::Last);
    let mut config = Config::new(directory, max_to_keep)?;
    config.set_keep_checkpoint_every_n_hours(rules.keep_hours)?;
    config.set_keep_best(rules.keep_best.clone())?;
    config.set_keep_period(rules.keep_period)?;
    config.set_read_only(read_only);
    Ok(config)
}

/// A manager on `directory`; the library's warnings go to stderr.
pub fn open(config: Config) -> Result<CheckpointManager, Failure> {
    let callbacks = Callbacks::new().log(|level, message| eprintln!("ckpt: {level}: {message}"));
    Ok(CheckpointManager::new(config, callbacks)?)
}

/// What verification says of one checkpoint.
pub struct Checked {
    pub status: &'static str,
    pub detail: Option<String>,
}

impl Checked {
    fn damaged(&self) -> bool {
        self.status == "damaged"
    }
}

/// Verifies a checkpoint; damage is a result, other errors are trouble.
pub fn check(prefix: &Path, verification: Verification) -> Result<Checked, Failure> {
    let bytes: u64 = ckpt_manager::read_manifest(prefix)
        .ok()
        .flatten()
        .map_or(0, |manifest| manifest.files.iter().map(|f| f.size).sum());
    let bar = (verification == Verification::Checksums
        && bytes >= PROGRESS_FROM_BYTES
        && std::io::stderr().is_terminal())
    .then(|| {
        let bar = indicatif::ProgressBar::new(bytes);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_message(format!("checking {}", prefix.display()));
        bar
    });
    let result = ckpt_manager::verify_checkpoint_with_progress(prefix, verification, &mut |read| {
        if let Some(bar) = &bar {
            bar.inc(read);
        }
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    match result {
        Ok(Integrity::Intact) => Ok(Checked {
            status: "intact",
            detail: None,
        }),
        Ok(Integrity::NoManifest) => Ok(Checked {
            status: "no-manifest",
            detail: Some("written without a manifest (TensorFlow?): not verified".into()),
        }),
        Ok(Integrity::ManifestOutdated) => Ok(Checked {
            status: "manifest-outdated",
            detail: Some("saved again by a tool that writes no manifest: not verified".into()),
        }),
        Err(Error::Damaged { detail, .. }) => Ok(Checked {
            status: "damaged",
            detail: Some(detail),
        }),
        Err(err) => Err(err.into()),
    }
}

fn reason_name(reason: KeepReason) -> &'static str {
    match reason {
        KeepReason::Latest => "latest",
        KeepReason::LastN => "last-n",
        KeepReason::KeepAll => "listed",
        KeepReason::Best => "best",
        KeepReason::Period => "period",
        KeepReason::Pinned => "pinned",
        KeepReason::Unmanaged => "unmanaged",
        KeepReason::Preserved => "hours",
    }
}

/// The reasons as `list` shows them; what prune would do when no rule keeps it.
fn kept_by(reasons: &[KeepReason], prefix: &Path, pruned: Option<&Pruned>) -> Vec<String> {
    if !reasons.is_empty() {
        return reasons.iter().map(|r| reason_name(*r).to_owned()).collect();
    }
    let fate = pruned.and_then(|pruned| {
        if pruned.deleted.iter().any(|p| p == prefix) {
            Some("none: prune deletes")
        } else if pruned.preserved.iter().any(|p| p == prefix) {
            Some("none: prune preserves (hours)")
        } else if pruned.not_deleted.iter().any(|p| p == prefix) {
            Some("none: outside the directory")
        } else {
            None
        }
    });
    vec![fate.unwrap_or("unlisted").to_owned()]
}

pub fn list(argument: &str, verify: bool, rules: &RuleArgs, json: bool) -> Outcome {
    let directory = location::directory(argument)?;
    let mut manager = open(config(&directory, rules, true)?)?;
    let report = manager.retention_report()?;
    let pruned = if rules.any() {
        Some(manager.prune(true)?)
    } else {
        None
    };
    let verification = if verify {
        Verification::Checksums
    } else {
        Verification::Sizes
    };
    struct Row {
        prefix: PathBuf,
        info: Option<CheckpointInfo>,
        kept_by: Vec<String>,
        checked: Checked,
        tier: &'static str,
    }
    let mut rows = Vec::new();
    for retained in report {
        let info = manager.checkpoint_info(&retained.prefix).ok();
        rows.push(Row {
            kept_by: kept_by(&retained.reasons, &retained.prefix, pruned.as_ref()),
            checked: check(&retained.prefix, verification)?,
            prefix: retained.prefix,
            info,
            tier: "local",
        });
    }
    let tiers = RemoteTier::of(&directory)?;
    if let Some(tiers) = &tiers {
        for row in &mut rows {
            row.tier = tiers.tier_of(&row.prefix);
        }
        let local: Vec<PathBuf> = rows.iter().map(|row| row.prefix.clone()).collect();
        for prefix in tiers.remote_only(&local) {
            let info = tiers
                .manager
                .as_ref()
                .and_then(|m| m.checkpoint_info(&prefix).ok());
            rows.push(Row {
                kept_by: vec!["remote".to_owned()],
                checked: check(&prefix, verification)?,
                prefix,
                info,
                tier: "remote",
            });
        }
    }
    rows.sort_by_key(|row| {
        (
            row.info.as_ref().and_then(|i| i.number).unwrap_or(u64::MAX),
            row.prefix.clone(),
        )
    });
    let damaged = rows.iter().filter(|row| row.checked.damaged()).count();
    if json {
        let rows: Vec<_> = rows
            .iter()
            .map(|row| {
                let info = row.info.as_ref();
                json!({
                    "prefix": shown(&row.prefix),
                    "number": info.and_then(|i| i.number),
                    "step": info.and_then(|i| i.step),
                    "timestamp": info.and_then(|i| i.timestamp),
                    "size": info.map(|i| i.total_size),
                    "latest": info.is_some_and(|i| i.latest),
                    "pinned": info.is_some_and(|i| i.pinned),
                    "kept_by": row.kept_by,
                    "integrity": row.checked.status,
                    "detail": row.checked.detail,
                    "tier": tiers.is_some().then_some(row.tier),
                })
            })
            .collect();
        output::print_json(&json!({
            "directory": shown(&directory),
            "remote": tiers.as_ref().map(|tiers| shown(&tiers.remote)),
            "verification": if verify { "checksums" } else { "sizes" },
            "checkpoints": rows,
        }));
    } else {
        let table_rows = rows
            .iter()
            .map(|row| {
                let info = row.info.as_ref();
                let latest = info.is_some_and(|i| i.latest);
                let name = row.prefix.file_name().map_or_else(
                    || shown(&row.prefix),
                    |name| name.to_string_lossy().into_owned(),
                );
                let integrity = match &row.checked.detail {
                    Some(detail) if row.checked.damaged() => format!("DAMAGED: {detail}"),
                    _ => row.checked.status.to_owned(),
                };
                vec![
                    if latest {
                        "*".to_owned()
                    } else {
                        String::new()
                    },
                    name,
                    info.and_then(|i| i.number)
                        .map_or("-".into(), |n| n.to_string()),
                    info.and_then(|i| i.step)
                        .map_or("-".into(), |s| s.to_string()),
                    info.and_then(|i| i.timestamp)
                        .map_or("-".into(), output::time),
                    info.map_or("-".into(), |i| output::size(i.total_size)),
                    row.kept_by.join(", "),
                    integrity,
                ]
                .into_iter()
                .chain(tiers.is_some().then(|| row.tier.to_owned()))
                .collect()
            })
            .collect();
        let header_columns = if tiers.is_some() { 9 } else { 8 };
        if let Some(tiers) = &tiers {
            println!("remote tier: {}", tiers.remote.display());
        }
        if rows.is_empty() {
            println!("no checkpoint in {}", directory.display());
        } else {
            println!(
                "{}",
                output::table(
                    &[
                        "",
                        "checkpoint",
                        "number",
                        "step",
                        "saved (UTC)",
                        "size",
                        "kept by",
                        "integrity",
                        "tier",
                    ][..header_columns],
                    table_rows,
                    &[2, 3, 5],
                )
            );
        }
    }
    if damaged > 0 {
        return Err(Failure::No(format!("{damaged} damaged checkpoint(s)")));
    }
    Ok(())
}

pub fn show(argument: &str, json: bool) -> Outcome {
    let prefix = location::prefix(argument)?;
    let directory = match prefix.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let manifest = ckpt_manager::read_manifest(&prefix)?;
    let manager = open(config(&directory, &RuleArgs::default(), true)?)?;
    let info = manager.checkpoint_info(&prefix)?;
    let table = CheckpointTensors::open(&prefix)?;
    let tensors = TensorFile::open(&prefix)?;
    if json {
        let files: Vec<_> = match &manifest {
            Some(manifest) => manifest
                .files
                .iter()
                .map(|f| json!({"suffix": f.suffix, "size": f.size, "crc32c": format!("{:08x}", f.crc32c)}))
                .collect(),
            None => info
                .files
                .iter()
                .map(|f| json!({"suffix": f.suffix, "size": f.size, "crc32c": null}))
                .collect(),
        };
        let tensors = tensors.as_ref().map(|file| {
            json!({
                "metadata": file.header().metadata,
                "tensors": file.header().tensors.iter().map(|t| json!({
                    "name": t.name, "dtype": t.dtype.name(), "shape": t.shape,
                    "bytes": t.end - t.start,
                })).collect::<Vec<_>>(),
            })
        });
        let mut value = serde_json::to_value(&info).expect("info serialises");
        value["files"] = json!(files);
        value["safetensors"] = json!(tensors);
        value["world_size"] = json!(table.as_ref().and_then(|t| t.manifest().world_size));
        value["tensors"] = json!(table.as_ref().map(|t| t.tensors()));
        output::print_json(&value);
        return Ok(());
    }
    let or_dash = |value: Option<String>| value.unwrap_or_else(|| "-".into());
    println!("checkpoint  {}", prefix.display());
    println!(
        "number      {}",
        or_dash(info.number.map(|n| n.to_string()))
    );
    println!("step        {}", or_dash(info.step.map(|s| s.to_string())));
    println!("saved (UTC) {}", or_dash(info.timestamp.map(output::time)));
    println!(
        "status      {}{}{}",
        if info.latest { "latest, " } else { "" },
        if info.managed { "listed" } else { "not listed" },
        if info.pinned { ", pinned" } else { "" },
    );
    if !info.metrics.is_empty() {
        let metrics: Vec<String> = info
            .metrics
            .iter()
            .map(|(name, value)| format!("{name}={}", value.0))
            .collect();
        println!("metrics     {}", metrics.join(" "));
    }
    if let Some(metadata) = &info.metadata {
        println!(
            "metadata    {}",
            serde_json::Value::Object(metadata.clone())
        );
    }
    println!(
        "manifest    {}",
        if manifest.is_some() {
            "yes"
        } else {
            "none (TensorFlow's files)"
        }
    );
    println!();
    let file_rows = match &manifest {
        Some(manifest) => manifest
            .files
            .iter()
            .map(|f| {
                vec![
                    String::from_utf8_lossy(f.suffix.as_bytes()).into_owned(),
                    f.size.to_string(),
                    format!("{:08x}", f.crc32c),
                ]
            })
            .collect(),
        None => info
            .files
            .iter()
            .map(|f| {
                vec![
                    String::from_utf8_lossy(f.suffix.as_bytes()).into_owned(),
                    f.size.to_string(),
                    "-".into(),
                ]
            })
            .collect(),
    };
    println!(
        "{}",
        output::table(&["file", "bytes", "crc32c"], file_rows, &[1])
    );
    // The tensor table says more than the one-process file's header, which
    // is shown for version 1 checkpoints.
    if let Some(table) = &table {
        print_tensor_table(table);
    } else if let Some(file) = tensors {
        println!();
        let rows = file
            .header()
            .tensors
            .iter()
            .map(|t| {
                vec![
                    t.name.clone(),
                    t.dtype.name().to_owned(),
                    format!("{:?}", t.shape),
                    (t.end - t.start).to_string(),
                ]
            })
            .collect();
        println!(
            "{}",
            output::table(&["tensor", "dtype", "shape", "bytes"], rows, &[3])
        );
    }
    Ok(())
}

/// Each tensor's kind, dtype and global shape, then every saved box: where
/// it is in the tensor and where its bytes are.
fn print_tensor_table(table: &CheckpointTensors) {
    let tensors = table.tensors();
    println!();
    println!(
        "tensors     {} (saved by {} rank(s))",
        tensors.len(),
        table.manifest().world_size.unwrap_or(1)
    );
    let rows = tensors
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.kind.name().to_owned(),
                t.dtype.name().to_owned(),
                format!("{:?}", t.shape),
                t.boxes.len().to_string(),
                t.boxes
                    .iter()
                    .map(|b| b.end - b.start)
                    .sum::<u64>()
                    .to_string(),
            ]
        })
        .collect();
    println!(
        "{}",
        output::table(
            &["tensor", "kind", "dtype", "shape", "boxes", "bytes"],
            rows,
            &[4, 5]
        )
    );
    println!();
    let rows = tensors
        .iter()
        .flat_map(|t| {
            t.boxes.iter().map(|b| {
                vec![
                    t.name.clone(),
                    b.rank.map_or(String::new(), |r| r.to_string()),
                    format!("{:?}", b.place.offset),
                    format!("{:?}", b.place.shape),
                    String::from_utf8_lossy(b.file.as_bytes()).into_owned(),
                    format!("[{}, {})", b.start, b.end),
                    format!("{:08x}", b.crc32c),
                ]
            })
        })
        .collect();
    println!(
        "{}",
        output::table(
            &["box of", "rank", "offset", "shape", "file", "bytes", "crc32c"],
            rows,
            &[],
        )
    );
}

/// A saved box whose bytes fail their CRC32C (or cannot be read).
pub struct DamagedBox {
    tensor: String,
    index: usize,
    place: TensorBox,
    file: String,
    detail: String,
}

/// Checks every saved box of every tensor in the checkpoint's tensor table
/// (none for version 1): how many were checked, and those damaged. An
/// unusable manifest is damage `check` has already reported.
fn check_boxes(prefix: &Path) -> Result<(usize, Vec<DamagedBox>), Failure> {
    let table = match CheckpointTensors::open(prefix) {
        Ok(Some(table)) => table,
        Ok(None) | Err(Error::Damaged { .. }) => return Ok((0, Vec::new())),
        Err(err) => return Err(err.into()),
    };
    let (mut checked, mut damaged) = (0, Vec::new());
    for tensor in table.tensors() {
        for (index, saved) in tensor.boxes.iter().enumerate() {
            checked += 1;
            match table.check_box(&tensor.name, index) {
                Ok(()) => {}
                Err(Error::Damaged { detail, .. }) => damaged.push(DamagedBox {
                    tensor: tensor.name.clone(),
                    index,
                    place: saved.place.clone(),
                    file: String::from_utf8_lossy(saved.file.as_bytes()).into_owned(),
                    detail,
                }),
                Err(err) => return Err(err.into()),
            }
        }
    }
    Ok((checked, damaged))
}

/// The latest checkpoint the directory's state file names; `None`
/// without a state file (or object).
fn state_latest(directory: &Path) -> Result<Option<PathBuf>, Failure> {
    use std::os::unix::ffi::OsStringExt;
    Ok(ckpt_manager::get_checkpoint_state(directory)?
        .map(|state| PathBuf::from(std::ffi::OsString::from_vec(state.model_checkpoint_path))))
}

/// Every checkpoint of the directory, sorted.
fn all_checkpoints(directory: &Path) -> Result<Vec<PathBuf>, Failure> {
    let manager = open(config(directory, &RuleArgs::default(), true)?)?;
    let mut prefixes: Vec<PathBuf> = manager
        .retention_report()?
        .into_iter()
        .map(|retained| retained.prefix)
        .collect();
    prefixes.sort();
    Ok(prefixes)
}

/// A local directory is a directory; on object storage, where a prefix is
/// no object, a URL is a directory when it has a state object or `--all`
/// asks for one, else a checkpoint prefix.
fn to_verify(target: &Target, all: bool) -> Result<Vec<PathBuf>, Failure> {
    let no_state = |directory: &Path| {
        Failure::Trouble(format!(
            "'{}' has no checkpoint state file",
            directory.display()
        ))
    };
    match target {
        Target::Local(directory) if directory.is_dir() => match all {
            true => all_checkpoints(directory),
            false => Ok(vec![
                state_latest(directory)?.ok_or_else(|| no_state(directory))?
            ]),
        },
        Target::Local(_) if all => Err(Failure::Trouble("--all needs a directory".into())),
        Target::Local(prefix) => Ok(vec![prefix.clone()]),
        Target::Url(directory) if all => all_checkpoints(directory),
        Target::Url(url) => match state_latest(url)? {
            Some(latest) => Ok(vec![latest]),
            None if ckpt_manager::checkpoint_exists(url)? => Ok(vec![url.clone()]),
            None => Err(Failure::Trouble(format!(
                "'{}' is neither a checkpoint directory (it has no state object) nor a checkpoint",
                url.display()
            ))),
        },
    }
}

/// A directory's remote tier, as `checkpoint.uploads` names it, and what
/// it holds (read-only); `None` for a directory without one.
struct RemoteTier {
    remote: PathBuf,
    uploading: Vec<std::ffi::OsString>,
    /// `None` when the remote cannot be opened (a warning said why).
    manager: Option<CheckpointManager>,
}

impl RemoteTier {
    fn of(directory: &Path) -> Result<Option<RemoteTier>, Failure> {
        let Some(list) = ckpt_manager::upload_list(directory)? else {
            return Ok(None);
        };
        let remote = list.remote();
        let manager = config(&remote, &RuleArgs::default(), true)
            .and_then(open)
            .inspect_err(|err| {
                let (Failure::No(message) | Failure::Trouble(message)) = err;
                eprintln!("ckpt: the remote tier cannot be read: {message}");
            })
            .ok();
        Ok(Some(RemoteTier {
            uploading: list.pending().map(ToOwned::to_owned).collect(),
            remote,
            manager,
        }))
    }

    fn in_remote(&self) -> Vec<PathBuf> {
        self.manager
            .as_ref()
            .map_or_else(Vec::new, |m| m.checkpoints())
    }

    /// "uploading", "local+remote" or "local".
    fn tier_of(&self, local: &Path) -> &'static str {
        let name = local.file_name().unwrap_or_default();
        if self.uploading.iter().any(|waiting| waiting == name) {
            "uploading"
        } else if self.in_remote().iter().any(|p| p.file_name() == Some(name)) {
            "local+remote"
        } else {
            "local"
        }
    }

    /// The remote's checkpoints that are not among `local`.
    fn remote_only(&self, local: &[PathBuf]) -> Vec<PathBuf> {
        let in_remote = self.in_remote().into_iter();
        in_remote
            .filter(|p| !local.iter().any(|l| l.file_name() == p.file_name()))
            .collect()
    }
}

pub fn verify(argument: &str, all: bool, json: bool) -> Outcome {
    let target = location::parse(argument)?;
    let mut prefixes = to_verify(&target, all)?;
    let directory = target.path();
    let is_directory = matches!(&target, Target::Local(d) if d.is_dir()) || all;
    if let Some(list) = ckpt_manager::upload_list(directory)
        .ok()
        .flatten()
        .filter(|_| is_directory)
    {
        // The remote tier too: it is a checkpoint directory of its own.
        prefixes.extend(to_verify(
            &location::parse(&list.remote().to_string_lossy())?,
            all,
        )?);
    }
    let mut results = Vec::new();
    for prefix in prefixes {
        let mut checked = check(&prefix, Verification::Checksums)?;
        let (boxes, damaged_boxes) = check_boxes(&prefix)?;
        if !damaged_boxes.is_empty() && !checked.damaged() {
            checked = Checked {
                status: "damaged",
                detail: Some(format!(
                    "{} saved box(es) fail their CRC32C",
                    damaged_boxes.len()
                )),
            };
        }
        results.push((prefix, checked, boxes, damaged_boxes));
    }
    let damaged = results.iter().filter(|(_, c, ..)| c.damaged()).count();
    if json {
        let rows: Vec<_> = results
            .iter()
            .map(|(prefix, c, boxes, damaged_boxes)| {
                json!({
                    "prefix": shown(prefix),
                    "integrity": c.status,
                    "detail": c.detail,
                    "boxes_checked": boxes,
                    "damaged_boxes": damaged_boxes.iter().map(|d| json!({
                        "tensor": d.tensor, "box": d.index, "offset": d.place.offset,
                        "shape": d.place.shape, "file": d.file, "detail": d.detail,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        output::print_json(&json!({ "checkpoints": rows }));
    } else if results.is_empty() {
        println!("no checkpoint in {}", target.path().display());
    } else {
        for (prefix, checked, _, damaged_boxes) in &results {
            match &checked.detail {
                Some(detail) => println!("{:<18} {} ({detail})", checked.status, prefix.display()),
                None => println!("{:<18} {}", checked.status, prefix.display()),
            }
            for d in damaged_boxes {
                println!(
                    "  tensor '{}' box {} ({}) in {}: damaged",
                    d.tensor, d.index, d.place, d.file
                );
            }
        }
    }
    if damaged > 0 {
        return Err(Failure::No(String::new()));
    }
    Ok(())
}

pub fn latest(argument: &str, json: bool) -> Outcome {
    let directory = location::directory(argument)?;
    let mut fell_back = Vec::new();
    let found = ckpt_manager::latest_checkpoint(
        &directory,
        ckpt_manager::LatestOptions::default(),
        &mut |warning| {
            eprintln!("ckpt: {warning}");
            fell_back.push(warning.to_owned());
        },
    )?;
    if json {
        output::print_json(&json!({
            "latest": found.as_deref().map(shown),
            "warnings": fell_back,
        }));
    } else if let Some(prefix) = &found {
        println!("{}", prefix.display());
    }
    match found {
        Some(_) => Ok(()),
        None if state_latest(&directory)?.is_none() => Err(Failure::No(format!(
            "'{}' has no checkpoint state file: nothing was saved there",
            directory.display()
        ))),
        None => Err(Failure::No(format!(
            "no intact checkpoint in '{}'",
            directory.display()
        ))),
    }
}
