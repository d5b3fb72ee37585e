//! The `ckpt` binary on directories the library made, on a state file as
//! TensorFlow writes it, and on damaged ones: exit codes, `--json` parsed,
//! text compared with snapshots (cli/tests/snapshots; the temporary
//! directory shown as DIR; `CKPT_UPDATE_SNAPSHOTS=1` rewrites them).

#[path = "support/command.rs"]
mod command;
mod support;

use std::fs;
use std::path::Path;

use ckpt_manager::{Callbacks, CheckpointManager, Config, MaxToKeep};
use command::{assert_snapshot, ckpt, json, text};
use serde_json::Value;

/// Six saves keeping 3, `ckpt-2` pinned: ckpt-2, 4, 5 and 6 on disk.
fn demo() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    support::save_run(root.path(), 6, 3, Some(2));
    root
}

fn names_on_disk(directory: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(directory)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn list_shows_numbers_steps_rules_and_integrity() {
    let root = demo();
    let ran = ckpt(&["list", text(root.path())]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_snapshot("list", root.path(), &ran.stdout);

    let ran = ckpt(&["list", text(root.path()), "--keep", "2", "--json"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let listed = json(&ran);
    let rows = listed["checkpoints"].as_array().unwrap();
    let numbers: Vec<u64> = rows.iter().map(|r| r["number"].as_u64().unwrap()).collect();
    assert_eq!(numbers, [2, 4, 5, 6]);
    let kept: Vec<&Value> = rows.iter().map(|r| &r["kept_by"]).collect();
    assert_eq!(
        kept,
        [
            &serde_json::json!(["pinned"]),
            &serde_json::json!(["none: prune deletes"]),
            &serde_json::json!(["last-n"]),
            &serde_json::json!(["latest", "last-n"]),
        ]
    );
    assert_eq!(rows[3]["latest"], true);
    assert_eq!(rows[3]["step"], 600);
    assert_eq!(rows[3]["timestamp"], support::START + 5.0 * 600.0);
    assert!(rows.iter().all(|r| r["integrity"] == "intact"));
    // Listing changes nothing.
    assert_eq!(
        names_on_disk(root.path()).len(),
        10,
        "{:?}",
        names_on_disk(root.path())
    );
}

#[test]
fn a_tensorflow_directory_is_listed_and_its_latest_printed_as_tf_does() {
    let root = tempfile::tempdir().unwrap();
    let directory = root.path().join("tf");
    support::tensorflow_run(&directory);
    let ran = ckpt(&["list", text(&directory)]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_snapshot("list_tensorflow", &directory, &ran.stdout);

    let ran = ckpt(&["latest", text(&directory)]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(ran.stdout, format!("{}/model.ckpt-20\n", text(&directory)));
    assert_eq!(ran.stderr, "");

    // Without a manifest there is nothing to verify: said, not damage.
    let ran = ckpt(&["verify", text(&directory), "--json"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(json(&ran)["checkpoints"][0]["integrity"], "no-manifest");
}

#[test]
fn show_prints_the_manifest_and_the_tensor_table() {
    let root = demo();
    let prefix = root.path().join("ckpt-6");
    let ran = ckpt(&["show", text(&prefix)]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_snapshot("show", root.path(), &ran.stdout);

    let shown = json(&ckpt(&[
        "show",
        text(&root.path().join("ckpt-2")),
        "--json",
    ]));
    assert_eq!(shown["pinned"], true);
    assert_eq!(shown["step"], 200);
    assert_eq!(shown["metrics"]["loss"], 0.5);
    assert_eq!(shown["metadata"]["run"], "demo");
    let tensors = shown["safetensors"]["tensors"].as_array().unwrap();
    let weight = tensors
        .iter()
        .find(|t| t["name"] == "layer.weight")
        .unwrap();
    assert_eq!(weight["dtype"], "F32");
    assert_eq!(weight["shape"], serde_json::json!([2, 3]));
    assert_eq!(weight["bytes"], 24);
    let file = &shown["files"][0];
    assert_eq!(file["suffix"], ".safetensors");
    let bytes = fs::read(root.path().join("ckpt-2.safetensors")).unwrap();
    assert_eq!(file["size"], bytes.len());
    assert_eq!(file["crc32c"], format!("{:08x}", crc32c(&bytes)));
}

/// CRC32C (Castagnoli), bit by bit: independent of the library's.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn damage_is_found_reported_and_exits_1() {
    let root = demo();
    let dir = root.path();
    // A flipped byte: sizes agree, the CRC does not.
    let flipped = dir.join("ckpt-5.safetensors");
    let mut bytes = fs::read(&flipped).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    fs::write(&flipped, bytes).unwrap();
    // The latest truncated, and another's file missing.
    let latest = dir.join("ckpt-6.safetensors");
    let bytes = fs::read(&latest).unwrap();
    fs::write(&latest, &bytes[..bytes.len() - 3]).unwrap();
    fs::remove_file(dir.join("ckpt-4.safetensors")).unwrap();

    let ran = ckpt(&["list", text(dir)]);
    assert_eq!(ran.code, 1);
    assert_snapshot("list_damaged", dir, &ran.stdout);
    let ran = ckpt(&["list", text(dir), "--verify", "--json"]);
    assert_eq!(ran.code, 1);
    let integrity: Vec<Value> = json(&ran)["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["integrity"].clone())
        .collect();
    assert_eq!(integrity, ["intact", "damaged", "damaged", "damaged"]);

    let ran = ckpt(&["verify", text(dir)]);
    assert_eq!(ran.code, 1);
    assert!(ran.stdout.starts_with("damaged"), "{}", ran.stdout);
    assert!(ran.stdout.contains("ckpt-6"), "{}", ran.stdout);
    let ran = ckpt(&["verify", text(&dir.join("ckpt-2"))]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let ran = ckpt(&["verify", text(dir), "--all", "--json"]);
    assert_eq!(ran.code, 1);
    let statuses: Vec<Value> = json(&ran)["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["integrity"].clone())
        .collect();
    assert_eq!(statuses, ["intact", "damaged", "damaged", "damaged"]);

    // latest falls back past the truncated latest (sizes are checked, as
    // tf.train.latest_checkpoint's stand-in does by default) to ckpt-5,
    // whose flipped byte only a CRC check sees, and says why on stderr.
    let ran = ckpt(&["latest", text(dir)]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(ran.stdout, format!("{}/ckpt-5\n", text(dir)));
    assert!(ran.stderr.contains("falling back"), "{}", ran.stderr);
    assert!(ran.stderr.contains("ckpt-6"), "{}", ran.stderr);
}

#[test]
fn diff_compares_tensor_by_tensor() {
    let root = demo();
    let (a, b) = (root.path().join("ckpt-5"), root.path().join("ckpt-6"));
    let ran = ckpt(&["diff", text(&a), text(&b)]);
    assert_eq!(ran.code, 1, "{}", ran.stderr);
    assert_snapshot("diff", root.path(), &ran.stdout);
    let ran = ckpt(&["diff", text(&a), text(&b), "--json"]);
    let diff = json(&ran);
    assert_eq!(diff["identical"], false);
    let by_name = |name: &str| {
        diff["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(by_name("mask")["status"], "identical");
    // Weights are n * 0.5 + i: 2.5 + i against 3.0 + i.
    assert_eq!(by_name("layer.weight")["max_abs"], 0.5);
    assert_eq!(by_name("layer.weight")["max_rel"], 0.5 / 3.0);
    // bf16 bias n * (i + 1): 15 against 18 at most.
    assert_eq!(by_name("layer.bias")["max_abs"], 3.0);
    assert_eq!(by_name("step")["max_abs"], 100.0);

    let ran = ckpt(&["diff", text(&a), text(&a)]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);

    // A tensor on one side only and a changed shape.
    let other = tempfile::tempdir().unwrap();
    write_safetensors(&other.path().join("x.safetensors"), "{\"mask\":{\"dtype\":\"U8\",\"shape\":[2,2],\"data_offsets\":[0,4]},\"extra\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[4,5]}}", &[0; 5]);
    let ran = ckpt(&["diff", text(&a), text(&other.path().join("x")), "--json"]);
    assert_eq!(ran.code, 1);
    let diff = json(&ran);
    let status = |name: &str| {
        diff["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap()["status"]
            .clone()
    };
    assert_eq!(status("extra"), "only-in-b");
    assert_eq!(status("step"), "only-in-a");
    assert_eq!(status("mask"), "changed");
}

fn write_safetensors(path: &Path, header: &str, data: &[u8]) {
    let mut json = header.as_bytes().to_vec();
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&json);
    bytes.extend_from_slice(data);
    fs::write(path, bytes).unwrap();
}

#[test]
fn prune_deletes_what_no_rule_keeps_and_nothing_else() {
    let root = demo();
    let dir = root.path();
    // Files the manager does not own.
    fs::write(dir.join("notes.txt"), "mine").unwrap();
    fs::write(dir.join("ckpt-4.extra"), "not in its manifest").unwrap();
    let before = names_on_disk(dir);

    let ran = ckpt(&["prune", text(dir), "--keep", "1", "--dry-run"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_snapshot("prune_dry_run", dir, &ran.stdout);
    assert_eq!(names_on_disk(dir), before);

    let ran = ckpt(&["prune", text(dir), "--keep", "1", "--json"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let pruned = json(&ran);
    let deleted: Vec<String> = ["ckpt-4", "ckpt-5"]
        .iter()
        .map(|name| format!("{}/{name}", text(dir)))
        .collect();
    assert_eq!(pruned["deleted"], serde_json::json!(deleted));
    assert_eq!(
        names_on_disk(dir),
        [
            "checkpoint",
            "checkpoint.lock",
            "ckpt-2.ckpt-manifest.json",
            "ckpt-2.safetensors",
            "ckpt-4.extra",
            "ckpt-6.ckpt-manifest.json",
            "ckpt-6.safetensors",
            "notes.txt",
        ]
    );
    let state = fs::read_to_string(dir.join("checkpoint")).unwrap();
    // ckpt-2 saved at START + 600 s, ckpt-6 at START + 3000 s; no
    // checkpoint was preserved: TF's fresh clock, START - 1.
    assert_eq!(
        state,
        "model_checkpoint_path: \"ckpt-6\"\n\
         all_model_checkpoint_paths: \"ckpt-2\"\n\
         all_model_checkpoint_paths: \"ckpt-6\"\n\
         all_model_checkpoint_timestamps: 1764500600.0\n\
         all_model_checkpoint_timestamps: 1764503000.0\n\
         last_preserved_timestamp: 1764499999.0\n"
    );
    // A manager reopened on it agrees.
    let config = Config::new(dir, MaxToKeep::Last(1)).unwrap();
    let manager = CheckpointManager::new(config, Callbacks::new()).unwrap();
    assert_eq!(
        manager.checkpoints(),
        [dir.join("ckpt-2"), dir.join("ckpt-6")]
    );
    assert_eq!(manager.latest_checkpoint(), Some(dir.join("ckpt-6")));

    // While a writer holds the lock, prune refuses.
    let ran = ckpt(&["prune", text(dir), "--keep", "1"]);
    assert_eq!(ran.code, 2);
    assert!(ran.stderr.contains("locked"), "{}", ran.stderr);
    drop(manager);
    let ran = ckpt(&["prune", text(dir), "--keep", "1"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(
        ran.stdout,
        "nothing to prune: every checkpoint is kept by a rule\n"
    );
}

#[test]
fn recover_removes_what_interrupted_saves_left() {
    let root = demo();
    let dir = root.path();
    let staging = dir.join("ckpt-7.ckpt-staging");
    fs::create_dir(&staging).unwrap();
    fs::write(staging.join("ckpt-7.safetensors"), "half written").unwrap();
    let temporary = format!("checkpoint.tmp{}", "0123456789abcdef".repeat(2));
    fs::write(dir.join(&temporary), "partial state").unwrap();
    let before = names_on_disk(dir);

    let ran = ckpt(&["recover", text(dir), "--dry-run"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_snapshot("recover_dry_run", dir, &ran.stdout);
    assert_eq!(names_on_disk(dir), before);

    let ran = ckpt(&["recover", text(dir), "--json"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let actions = json(&ran)["actions"].clone();
    assert_eq!(actions[0]["action"], "remove-uncommitted");
    assert_eq!(actions[1]["action"], "remove-temporary");
    assert!(!staging.exists());
    assert!(!dir.join(&temporary).exists());
    assert_eq!(names_on_disk(dir).len(), before.len() - 2);
    let ran = ckpt(&["recover", text(dir)]);
    assert_eq!(ran.stdout, format!("nothing to recover in {}\n", text(dir)));
}

/// Another tool (TF's manager) deleted a checkpoint's files but not our
/// manifest: recover names it, then removes that manifest alone.
#[test]
fn recover_removes_a_manifest_whose_checkpoint_another_tool_deleted() {
    let root = demo();
    let dir = root.path();
    let manifest = names_on_disk(dir)
        .into_iter()
        .find(|name| name.ends_with(".ckpt-manifest.json"))
        .unwrap();
    fs::copy(dir.join(manifest), dir.join("ckpt-99.ckpt-manifest.json")).unwrap();
    let before = names_on_disk(dir);

    let ran = ckpt(&["recover", text(dir), "--dry-run", "--json"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let actions = json(&ran)["actions"].clone();
    assert_eq!(
        actions[0]["action"], "remove-orphaned-manifest",
        "{actions}"
    );
    assert_eq!(actions.as_array().unwrap().len(), 1, "{actions}");
    assert_eq!(names_on_disk(dir), before);

    let ran = ckpt(&["recover", text(dir)]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let expected: Vec<String> = before
        .into_iter()
        .filter(|name| name != "ckpt-99.ckpt-manifest.json")
        .collect();
    assert_eq!(names_on_disk(dir), expected);
}

#[test]
fn usage_errors_and_urls_the_library_does_not_serve_exit_2() {
    let root = demo();
    for args in [
        vec!["list", "gs://bucket/run"],
        vec!["latest", "s3://Not_A_Bucket/run"],
        vec!["show", "gs://bucket/run/ckpt-1"],
        vec!["prune", text(root.path())],
        vec!["list", text(&root.path().join("missing"))],
        vec!["list", text(root.path()), "--keep-best", "loss:lowest:2"],
        vec!["frobnicate"],
    ] {
        let ran = ckpt(&args);
        assert_eq!(ran.code, 2, "{args:?}: {}", ran.stderr);
        assert!(!ran.stderr.is_empty(), "{args:?}");
    }
    // The library's own message.
    let ran = ckpt(&["list", "gs://bucket/run"]);
    assert!(
        ran.stderr
            .contains("'gs://' is not one this library serves (s3:// and file://"),
        "{}",
        ran.stderr
    );
    // No state file: latest says no, and why.
    let empty = tempfile::tempdir().unwrap();
    let ran = ckpt(&["latest", text(empty.path())]);
    assert_eq!(ran.code, 1);
    assert_eq!(ran.stdout, "");
    assert!(
        ran.stderr.contains("no checkpoint state file"),
        "{}",
        ran.stderr
    );
    // A file:// URL is the local directory.
    let url = format!("file://{}", text(root.path()));
    let ran = ckpt(&["latest", &url]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(ran.stdout, format!("{}/ckpt-6\n", text(root.path())));
}

/// `verify` draws a progress bar of bytes on a terminal (run under
/// `script`, which gives it one) for a checkpoint over 64 MiB, and none
/// when stderr is a pipe.
#[test]
fn verify_shows_a_progress_bar_only_on_a_terminal() {
    let root = tempfile::tempdir().unwrap();
    let config = Config::new(root.path(), MaxToKeep::Last(1)).unwrap();
    let mut manager = CheckpointManager::new(config, Callbacks::new()).unwrap();
    let mut weights = vec![0.5f32; 17 << 20];
    // SAFETY: `weights` outlives the manager.
    unsafe {
        manager
            .register_tensor(
                "w",
                ckpt_manager::DType::F32,
                &[weights.len() as u64],
                weights.as_mut_ptr().cast(),
            )
            .unwrap();
    }
    let prefix = manager.save(None, false).unwrap().unwrap();
    drop(manager);
    let piped = ckpt(&["verify", prefix.to_str().unwrap()]);
    assert_eq!(piped.code, 0, "{}", piped.stderr);
    assert!(!piped.stderr.contains("checking"), "{}", piped.stderr);
    let binary = assert_cmd::cargo::cargo_bin!("ckpt");
    let command = format!("{} verify {}", binary.display(), prefix.display());
    let output = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .output()
        .expect("script (util-linux) runs the command on a terminal");
    let drawn = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{drawn}");
    assert!(
        drawn.contains(&format!("checking {}", prefix.display()))
            && drawn.contains("MiB/68.00 MiB"),
        "{drawn}"
    );
}

/// A directory with a remote tier: `list` shows where each checkpoint is
/// (remote-only ones too) and `verify` checks both tiers.
#[test]
fn list_and_verify_show_both_tiers() {
    let (local, remote) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let with_remote = || {
        let mut config = Config::new(local.path(), MaxToKeep::Last(3)).unwrap();
        config
            .set_remote_directory(Some(remote.path().to_path_buf()))
            .unwrap();
        config.set_remote_max_to_keep(MaxToKeep::Last(5)).unwrap();
        config
    };
    support::save_run_with(with_remote(), 6, Some(2));
    let mut manager = CheckpointManager::new(with_remote(), Callbacks::new()).unwrap();
    manager.wait_until_finished(None).unwrap();
    drop(manager);

    let ran = ckpt(&["list", text(local.path()), "--json"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let listed = json(&ran);
    assert_eq!(listed["remote"], Value::from(text(remote.path())));
    let tiers: Vec<(u64, &str)> = listed["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row["number"].as_u64().unwrap(),
                row["tier"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        tiers,
        [
            (2, "local+remote"),
            (3, "remote"),
            (4, "local+remote"),
            (5, "local+remote"),
            (6, "local+remote"),
        ]
    );

    let ran = ckpt(&["verify", text(local.path()), "--all", "--json"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(json(&ran)["checkpoints"].as_array().unwrap().len(), 4 + 5);
    let damaged = remote.path().join("ckpt-3.safetensors");
    let mut bytes = fs::read(&damaged).unwrap();
    bytes[0] ^= 1;
    fs::write(&damaged, bytes).unwrap();
    let ran = ckpt(&["verify", text(local.path()), "--all"]);
    assert_eq!(ran.code, 1, "{}", ran.stdout);
    assert!(ran.stdout.contains("damaged"), "{}", ran.stdout);
}
