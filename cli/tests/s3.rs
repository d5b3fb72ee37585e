//! The `ckpt` binary on `s3://` directories the library saved on a real S3
//! server (moto on loopback, from tests/support/s3.rs), configured as a
//! user configures it: `AWS_*` variables, a HOME without `~/.aws`. The
//! output matches the local directory's snapshots; what the commands change
//! is read back with the test's own client.

#[path = "support/command.rs"]
mod command;
#[allow(dead_code)] // Part of it serves the library's own S3 tests.
#[path = "../../tests/support/s3.rs"]
mod moto;
mod support;

use std::collections::BTreeSet;
use std::path::Path;

use ckpt_manager::{Callbacks, CheckpointManager, Config, ErrorKind, MaxToKeep};
use command::{assert_snapshot, ckpt, ckpt_with_env, json, Ran};
use serde_json::Value;

/// The workspace root: tests/support/s3.rs finds moto under it.
fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// A bucket of its own on the shared server (with the test's client on
/// it), and the HOME and TMPDIR that `ckpt` runs with.
struct Bucket {
    bucket: moto::Bucket,
    home: tempfile::TempDir,
    temporary: tempfile::TempDir,
}

impl Bucket {
    fn new(name: &str) -> Bucket {
        Bucket {
            bucket: moto::Bucket::new(name),
            home: tempfile::tempdir().unwrap(),
            temporary: tempfile::tempdir().unwrap(),
        }
    }

    fn url(&self, prefix: &str) -> String {
        self.bucket.url(prefix).to_str().unwrap().to_owned()
    }

    /// Six saves of the library's writer keeping 3, `ckpt-2` pinned (as
    /// cli/tests/cli.rs makes on disk): ckpt-2, 4, 5 and 6 in the bucket.
    fn demo(&self, url: &str) {
        support::save_run_with(self.writer_config(url), 6, Some(2));
    }

    /// The writer's settings are storage options, not the environment.
    fn writer_config(&self, url: &str) -> Config {
        moto::storage_config(Path::new(url), &self.bucket.endpoint, MaxToKeep::Last(3))
    }

    /// `ckpt` configured by the standard variables only.
    fn ckpt(&self, args: &[&str]) -> Ran {
        let (home, temporary) = (self.home.path(), self.temporary.path());
        ckpt_with_env(
            &[
                ("HOME", home.to_str().unwrap()),
                ("TMPDIR", temporary.to_str().unwrap()),
                ("AWS_ENDPOINT_URL", &self.bucket.endpoint),
                ("AWS_ALLOW_HTTP", "true"),
                ("AWS_REGION", "us-east-1"),
                ("AWS_ACCESS_KEY_ID", "testing"),
                ("AWS_SECRET_ACCESS_KEY", "testing"),
            ],
            args,
        )
    }

    fn keys(&self) -> BTreeSet<String> {
        self.bucket.keys()
    }

    fn get(&self, key: &str) -> Vec<u8> {
        self.bucket.get(key)
    }

    fn put(&self, key: &str, bytes: Vec<u8>) {
        self.bucket.put(key, bytes)
    }

    /// Nothing `ckpt` staged or cached locally is left behind.
    fn assert_no_local_leftovers(&self) {
        for directory in [self.home.path(), self.temporary.path()] {
            let left: Vec<_> = std::fs::read_dir(directory).unwrap().collect();
            assert!(left.is_empty(), "{}: {left:?}", directory.display());
        }
    }
}

/// The keys of checkpoints `numbers` (built-in saver) under `prefix`, with
/// its state object and the writers' lease.
fn checkpoint_keys(prefix: &str, numbers: &[u64]) -> BTreeSet<String> {
    let mut keys = BTreeSet::from([
        format!("{prefix}/checkpoint"),
        format!("{prefix}/checkpoint.lease"),
    ]);
    for n in numbers {
        for suffix in ["ckpt-manifest.json", "safetensors"] {
            keys.insert(format!("{prefix}/ckpt-{n}.{suffix}"));
        }
    }
    keys
}

fn statuses(ran: &Ran) -> Vec<Value> {
    json(ran)["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["integrity"].clone())
        .collect()
}

#[test]
fn reading_commands_work_on_a_bucket_as_on_a_directory() {
    let bucket = Bucket::new("cli-reads");
    let url = bucket.url("runs/a");
    bucket.demo(&url);
    let saved = bucket.keys();
    assert_eq!(saved, checkpoint_keys("runs/a", &[2, 4, 5, 6]));

    let ran = bucket.ckpt(&["list", &url]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_snapshot("list", Path::new(&url), &ran.stdout);
    let ran = bucket.ckpt(&["list", &url, "--verify", "--json"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let listed = json(&ran);
    let prefixes: Vec<&str> = listed["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["prefix"].as_str().unwrap())
        .collect();
    assert_eq!(prefixes, [2, 4, 5, 6].map(|n| format!("{url}/ckpt-{n}")));
    assert_eq!(statuses(&ran), ["intact"; 4]);

    let ran = bucket.ckpt(&["latest", &url]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(ran.stdout, format!("{url}/ckpt-6\n"));
    let ran = bucket.ckpt(&["show", &format!("{url}/ckpt-6")]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_snapshot("show", Path::new(&url), &ran.stdout);
    // The export holds the tensors as the saver's file does, read through
    // ranged GETs of the bucket.
    let exports = tempfile::tempdir().unwrap();
    let out = exports.path().join("model.safetensors");
    let ran = bucket.ckpt(&["export", &format!("{url}/ckpt-6"), out.to_str().unwrap()]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let data = |bytes: &[u8]| {
        bytes[8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize..].to_vec()
    };
    assert_eq!(
        data(&std::fs::read(&out).unwrap()),
        data(&bucket.get("runs/a/ckpt-6.safetensors"))
    );
    let ran = bucket.ckpt(&["diff", &format!("{url}/ckpt-5"), &format!("{url}/ckpt-6")]);
    assert_eq!(ran.code, 1, "{}", ran.stderr);
    assert_snapshot("diff", Path::new(&url), &ran.stdout);
    let ran = bucket.ckpt(&["verify", &url, "--all"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let expected: String = [2, 4, 5, 6]
        .map(|n| format!("intact             {url}/ckpt-{n}\n"))
        .concat();
    assert_eq!(ran.stdout, expected);

    // A flipped byte: the sizes agree, the CRC does not.
    let damaged = "runs/a/ckpt-5.safetensors";
    let mut bytes = bucket.get(damaged);
    *bytes.last_mut().unwrap() ^= 0x40;
    bucket.put(damaged, bytes);
    let ran = bucket.ckpt(&["verify", &url, "--all", "--json"]);
    assert_eq!(ran.code, 1, "{}", ran.stderr);
    assert_eq!(statuses(&ran), ["intact", "intact", "damaged", "intact"]);
    let damaged_boxes = &json(&ran)["checkpoints"][2]["damaged_boxes"];
    assert_eq!(
        damaged_boxes.as_array().unwrap().len(),
        1,
        "{damaged_boxes}"
    );
    assert_eq!(damaged_boxes[0]["tensor"], "mask", "the file's last tensor");
    let ran = bucket.ckpt(&["verify", &format!("{url}/ckpt-5")]);
    assert_eq!(ran.code, 1, "{}", ran.stderr);
    assert!(
        ran.stdout
            .starts_with(&format!("damaged            {url}/ckpt-5 (")),
        "{}",
        ran.stdout
    );
    // The directory's latest is intact.
    let ran = bucket.ckpt(&["verify", &url]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(ran.stdout, format!("intact             {url}/ckpt-6\n"));

    // A prefix holding nothing: each command says so.
    let nothing = bucket.url("nothing");
    let ran = bucket.ckpt(&["list", &nothing]);
    assert_eq!(
        (ran.code, ran.stdout.as_str()),
        (0, format!("no checkpoint in {nothing}\n").as_str())
    );
    let ran = bucket.ckpt(&["latest", &nothing]);
    assert_eq!(ran.code, 1);
    assert!(
        ran.stderr.contains("has no checkpoint state file"),
        "{}",
        ran.stderr
    );
    let ran = bucket.ckpt(&["verify", &nothing]);
    assert_eq!(ran.code, 2);
    assert!(
        ran.stderr.contains("neither a checkpoint directory"),
        "{}",
        ran.stderr
    );

    // Reading wrote nothing to the bucket and left nothing locally.
    assert_eq!(bucket.keys(), saved);
    bucket.assert_no_local_leftovers();
}

#[test]
fn prune_and_recover_change_a_bucket_as_a_directory_and_a_writer_notices() {
    let bucket = Bucket::new("cli-tidies");
    let url = bucket.url("run");
    bucket.demo(&url);
    bucket.put("run/notes.txt", b"mine".to_vec());
    let before = bucket.keys();

    let ran = bucket.ckpt(&["prune", &url, "--keep", "1", "--dry-run"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_snapshot("prune_dry_run", Path::new(&url), &ran.stdout);
    assert_eq!(bucket.keys(), before);

    // A writer holding the prefix's lease keeps the prune out, as a
    // directory's lock does.
    let holder = CheckpointManager::new(bucket.writer_config(&url), Callbacks::new()).unwrap();
    let ran = bucket.ckpt(&["prune", &url, "--keep", "1"]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(ran.stderr.contains("checkpoint.lease"), "{}", ran.stderr);
    assert_eq!(bucket.keys(), before);
    drop(holder);

    // A writer without the lease opened before the prune: the prune goes
    // ahead and the writer's next commit is refused.
    let mut config = bucket.writer_config(&url);
    config
        .set_storage_option("ckpt_lease_seconds", "0")
        .unwrap();
    let callbacks = Callbacks::new().on_save(|prefix, number| {
        let path = ckpt_manager::paths::with_suffix(prefix, ".note");
        Ok(std::fs::write(path, number.to_string())?)
    });
    let mut writer = CheckpointManager::new(config, callbacks).unwrap();
    let ran = bucket.ckpt(&["prune", &url, "--keep", "1", "--json"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let deleted = ["ckpt-4", "ckpt-5"].map(|name| format!("{url}/{name}"));
    assert_eq!(json(&ran)["deleted"], serde_json::json!(deleted));
    let mut kept = checkpoint_keys("run", &[2, 6]);
    kept.insert("run/notes.txt".into());
    assert_eq!(bucket.keys(), kept);
    // The same bytes as the prune of the directory on disk (cli.rs).
    let state = "model_checkpoint_path: \"ckpt-6\"\n\
                 all_model_checkpoint_paths: \"ckpt-2\"\n\
                 all_model_checkpoint_paths: \"ckpt-6\"\n\
                 all_model_checkpoint_timestamps: 1764500600.0\n\
                 all_model_checkpoint_timestamps: 1764503000.0\n\
                 last_preserved_timestamp: 1764499999.0\n";
    assert_eq!(
        String::from_utf8(bucket.get("run/checkpoint")).unwrap(),
        state
    );
    let err = writer.save(None, false).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Locked, "{err}");
    drop(writer);
    assert_eq!(
        String::from_utf8(bucket.get("run/checkpoint")).unwrap(),
        state
    );
    assert_eq!(bucket.keys(), kept);

    let staged = "run/ckpt-7.ckpt-staging/ckpt-7.safetensors";
    let temporary = format!("run/checkpoint.tmp{}", "0123456789abcdef".repeat(2));
    bucket.put(staged, b"half written".to_vec());
    bucket.put(&temporary, b"partial state".to_vec());
    let left = bucket.keys();
    let ran = bucket.ckpt(&["recover", &url, "--dry-run"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_snapshot("recover_dry_run", Path::new(&url), &ran.stdout);
    assert_eq!(bucket.keys(), left);
    let ran = bucket.ckpt(&["recover", &url, "--json"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let actions = json(&ran)["actions"].clone();
    assert_eq!(actions[0]["action"], "remove-uncommitted");
    assert_eq!(actions[1]["action"], "remove-temporary");
    assert_eq!(bucket.keys(), kept);
    let ran = bucket.ckpt(&["recover", &url]);
    assert_eq!(ran.stdout, format!("nothing to recover in {url}\n"));
    bucket.assert_no_local_leftovers();
}

#[test]
fn a_url_the_library_does_not_serve_exits_2_without_a_server() {
    let ran = ckpt(&["list", "gs://x/y"]);
    assert_eq!(ran.code, 2);
    assert!(
        ran.stderr
            .contains("'gs://' is not one this library serves"),
        "{}",
        ran.stderr
    );
}
