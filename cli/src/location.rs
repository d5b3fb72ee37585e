//! Where a directory or prefix argument points: a local path or an object
//! store's URL (`s3://bucket/prefix`, `file:///path`), parsed by the
//! library itself, so the tool accepts exactly what the library serves and
//! refuses other schemes with the library's message.

use std::path::{Path, PathBuf};

use ckpt_manager::location::{self, Location};

use crate::Failure;

/// What an argument names, as the library will be given it.
pub enum Target {
    /// A local path (`file://` stripped); it may not exist.
    Local(PathBuf),
    /// An object store's URL, as written; nothing is known of it yet.
    Url(PathBuf),
}

impl Target {
    pub fn path(&self) -> &Path {
        match self {
            Target::Local(path) | Target::Url(path) => path,
        }
    }
}

pub fn parse(argument: &str) -> Result<Target, Failure> {
    Ok(match location::parse(Path::new(argument))? {
        Location::Local(path) => Target::Local(path),
        Location::S3(_) => Target::Url(PathBuf::from(argument)),
    })
}

/// A checkpoint directory: a local one must exist; on object storage a
/// prefix is no object, so the commands say when it holds nothing.
pub fn directory(argument: &str) -> Result<PathBuf, Failure> {
    match parse(argument)? {
        Target::Local(path) if !path.is_dir() => {
            Err(Failure::Trouble(format!("'{argument}' is not a directory")))
        }
        target => Ok(target.path().to_path_buf()),
    }
}

/// A checkpoint prefix (`DIR/ckpt-3`, `s3://bucket/run/ckpt-3`).
pub fn prefix(argument: &str) -> Result<PathBuf, Failure> {
    Ok(parse(argument)?.path().to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed_by_the_library() {
        let refused = |argument: &str| match prefix(argument) {
            Err(Failure::Trouble(message)) => message,
            _ => panic!("{argument} accepted"),
        };
        assert!(refused("gs://bucket/run").contains("'gs://' is not one this library serves"));
        assert!(refused("s3://Bucket/run").contains("not an S3 bucket name"));
        assert_eq!(
            prefix("s3://bucket/run/ckpt-3").unwrap(),
            PathBuf::from("s3://bucket/run/ckpt-3")
        );
        // No request is made: an object store's directory is not checked here.
        assert_eq!(
            directory("s3://bucket/run").unwrap(),
            PathBuf::from("s3://bucket/run")
        );
        assert_eq!(prefix("run/ckpt-3").unwrap(), PathBuf::from("run/ckpt-3"));
        assert_eq!(
            prefix("file:///tmp/run/ckpt-3").unwrap(),
            PathBuf::from("/tmp/run/ckpt-3")
        );
    }

    #[test]
    fn a_local_directory_must_exist() {
        let root = tempfile::tempdir().unwrap();
        let url = format!("file://{}", root.path().display());
        assert_eq!(directory(&url).unwrap(), root.path());
        let missing = root.path().join("missing");
        assert!(matches!(
            directory(&missing.to_string_lossy()),
            Err(Failure::Trouble(m)) if m.contains("is not a directory")
        ));
    }
}
