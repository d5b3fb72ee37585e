//! A build without the `s3` feature (`cargo test --no-default-features`):
//! an `s3://` directory is refused with a message naming the feature, and
//! nothing is created on the local disk in its place. Its own test binary,
//! since it changes the process's working directory.

#![cfg(not(feature = "s3"))]

use ckpt_manager::{Config, ErrorKind, MaxToKeep};

const URL: &str = "s3://bucket/run";
const MISSING_FEATURE: &str = "built without object storage (cargo feature s3)";

/// Refused as an invalid argument whose message contains `names`.
fn assert_refused(result: ckpt_manager::Result<impl std::fmt::Debug>, names: &str, what: &str) {
    let err = result.expect_err(what);
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{what}: {err}");
    let message = err.to_string();
    assert!(
        message.contains(MISSING_FEATURE) && message.contains(names),
        "{what}: {message}"
    );
}

#[test]
fn s3_directories_are_refused_and_nothing_is_created_locally() {
    let dir = tempfile::tempdir().unwrap();
    std::env::set_current_dir(dir.path()).unwrap();

    let url = std::path::Path::new(URL);
    assert_refused(Config::new(URL, MaxToKeep::Last(1)), URL, "Config::new");
    assert_refused(
        ckpt_manager::get_checkpoint_state(url),
        URL,
        "get_checkpoint_state",
    );
    assert_refused(
        ckpt_manager::checkpoints_on_disk(url),
        URL,
        "checkpoints_on_disk",
    );
    let mut config = Config::new("local", MaxToKeep::Last(1)).unwrap();
    assert_refused(
        config.set_storage_option("aws_endpoint", "http://127.0.0.1:9"),
        "aws_endpoint",
        "set_storage_option",
    );

    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "files created locally: {left:?}");
}
