//! Where a checkpoint directory lives: a local path, or the URL of a bucket
//! prefix on an object store. A URL of a scheme the library does not serve
//! is refused, never taken for a local folder named `gs:`.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The schemes a directory may use besides a plain path.
pub const SERVED_SCHEMES: &str = "s3:// and file://";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    S3(BucketPrefix),
}

/// `s3://<bucket>/<prefix>`: the prefix has no leading or trailing `/`,
/// no empty, `.` or `..` component, and may be empty (the bucket's root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketPrefix {
    pub bucket: String,
    pub prefix: String,
}

impl BucketPrefix {
    /// The object key of `name`, a name relative to the directory.
    pub fn key(&self, name: &str) -> String {
        match (self.prefix.is_empty(), name.is_empty()) {
            (true, _) => name.to_owned(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}/{name}", self.prefix),
        }
    }

    /// The directory as the user writes it, without a trailing `/`.
    pub fn url(&self) -> String {
        match self.prefix.is_empty() {
            true => format!("s3://{}", self.bucket),
            false => format!("s3://{}/{}", self.bucket, self.prefix),
        }
    }
}

/// The scheme of `directory` when it is written as a URL (`<scheme>://`).
fn scheme(directory: &[u8]) -> Option<&[u8]> {
    let end = directory.windows(3).position(|w| w == b"://")?;
    let scheme = &directory[..end];
    let valid = scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"+.-".contains(&b));
    valid.then_some(scheme)
}

pub fn parse(directory: &Path) -> Result<Location> {
    let bytes = directory.as_os_str().as_bytes();
    let Some(scheme) = scheme(bytes) else {
        return Ok(Location::Local(directory.to_path_buf()));
    };
    let rest = &bytes[scheme.len() + 3..];
    match scheme.to_ascii_lowercase().as_slice() {
        b"file" if rest.starts_with(b"/") => Ok(Location::Local(PathBuf::from(
            std::ffi::OsStr::from_bytes(rest),
        ))),
        b"file" => Err(refused(directory, "a file:// URL needs an absolute path")),
        b"s3" if cfg!(feature = "s3") => parse_s3(directory, rest).map(Location::S3),
        b"s3" => Err(without_object_storage(directory)),
        _ => Err(refused(
            directory,
            &format!(
                "its scheme '{}://' is not one this library serves ({SERVED_SCHEMES}, or a local path)",
                String::from_utf8_lossy(scheme)
            ),
        )),
    }
}

fn parse_s3(directory: &Path, rest: &[u8]) -> Result<BucketPrefix> {
    let rest =
        std::str::from_utf8(rest).map_err(|_| refused(directory, "an s3:// URL must be UTF-8"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let bucket_valid = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b));
    if !bucket_valid {
        return Err(refused(
            directory,
            &format!("'{bucket}' is not an S3 bucket name (3 to 63 of a-z, 0-9, '-', '.')"),
        ));
    }
    let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
    let bad_component = prefix
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..");
    if !prefix.is_empty() && bad_component {
        return Err(refused(
            directory,
            "an s3:// prefix may not have empty, '.' or '..' components",
        ));
    }
    Ok(BucketPrefix {
        bucket: bucket.to_owned(),
        prefix: prefix.to_owned(),
    })
}

/// Why an `s3://` directory or a storage option is refused by a build
/// without the `s3` feature.
pub(crate) const WITHOUT_OBJECT_STORAGE: &str =
    "this library was built without object storage (cargo feature s3)";

/// An `s3://` directory in a build without the `s3` feature: refused,
/// never taken for a local folder.
pub(crate) fn without_object_storage(directory: &Path) -> Error {
    refused(directory, WITHOUT_OBJECT_STORAGE)
}

fn refused(directory: &Path, why: &str) -> Error {
    Error::invalid(format!(
        "cannot use '{}' as a checkpoint directory: {why}",
        directory.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "s3")]
    fn s3(bucket: &str, prefix: &str) -> Location {
        Location::S3(BucketPrefix {
            bucket: bucket.into(),
            prefix: prefix.into(),
        })
    }

    #[test]
    fn plain_paths_stay_local() {
        for path in ["run", "/tmp/run", "gs:/x", "./s3://x", "a/b://c"] {
            assert_eq!(
                parse(Path::new(path)).unwrap(),
                Location::Local(path.into()),
                "{path}"
            );
        }
        assert_eq!(
            parse(Path::new("file:///tmp/run")).unwrap(),
            Location::Local("/tmp/run".into())
        );
    }

    /// Without the `s3` feature every way in refuses an `s3://` directory,
    /// naming the feature, and nothing named `s3:` appears locally.
    #[test]
    #[cfg(not(feature = "s3"))]
    fn s3_directories_are_refused_without_the_s3_feature() {
        let url = Path::new("s3://bkt/run");
        let mut config = crate::Config::new("run", crate::MaxToKeep::Last(1)).unwrap();
        for (what, err) in [
            ("parse", parse(url).unwrap_err()),
            (
                "Config::new",
                crate::Config::new(url, crate::MaxToKeep::Last(1)).unwrap_err(),
            ),
            ("store::open", crate::store::open(url, &[]).unwrap_err()),
            (
                "get_checkpoint_state",
                crate::get_checkpoint_state(url).unwrap_err(),
            ),
            (
                "checkpoints_on_disk",
                crate::checkpoints_on_disk(url).unwrap_err(),
            ),
            (
                "set_storage_option",
                config
                    .set_storage_option("aws_endpoint", "http://127.0.0.1:9")
                    .unwrap_err(),
            ),
        ] {
            assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{what}");
            let message = err.to_string();
            assert!(
                message.contains("built without object storage (cargo feature s3)"),
                "{what}: {message}"
            );
        }
        assert!(!Path::new("s3:").exists(), "an s3: folder was created");
    }

    #[test]
    #[cfg(feature = "s3")]
    fn s3_urls_name_a_bucket_and_a_prefix() {
        assert_eq!(parse(Path::new("s3://bkt")).unwrap(), s3("bkt", ""));
        assert_eq!(parse(Path::new("s3://bkt/")).unwrap(), s3("bkt", ""));
        assert_eq!(parse(Path::new("S3://bkt/a/b/")).unwrap(), s3("bkt", "a/b"));
        let BucketPrefix { bucket, prefix } = match parse(Path::new("s3://my.bkt-1/run")).unwrap() {
            Location::S3(location) => location,
            other => panic!("{other:?}"),
        };
        assert_eq!((bucket.as_str(), prefix.as_str()), ("my.bkt-1", "run"));
    }

    #[test]
    fn other_schemes_and_bad_urls_are_refused() {
        for url in [
            "gs://bucket/run",
            "hdfs://namenode/run",
            "s3://",
            "s3://Bucket/run",
            "s3://bk/run",
            "s3://bkt//run",
            "s3://bkt/a/../b",
            "s3://bkt/./a",
            "file://relative",
        ] {
            let err = parse(Path::new(url)).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{url}");
            assert!(err.to_string().contains(url), "{err}");
        }
        let err = parse(Path::new("gs://bucket/run")).unwrap_err().to_string();
        assert!(
            err.contains("'gs://' is not one this library serves"),
            "{err}"
        );
    }

    #[test]
    fn keys_join_the_prefix() {
        let root = BucketPrefix {
            bucket: "b".into(),
            prefix: String::new(),
        };
        let run = BucketPrefix {
            bucket: "b".into(),
            prefix: "a/run".into(),
        };
        assert_eq!(root.key("checkpoint"), "checkpoint");
        assert_eq!(run.key("checkpoint"), "a/run/checkpoint");
        assert_eq!(run.key(""), "a/run");
        assert_eq!(run.url(), "s3://b/a/run");
        assert_eq!(root.url(), "s3://b");
    }
}
