//! Where a directory or prefix argument points. Every argument goes
//! through here, so that object storage (issue 13) is one change.

use std::path::PathBuf;

use crate::Failure;

/// A checkpoint directory on the local file system; URLs are refused.
pub fn directory(argument: &str) -> Result<PathBuf, Failure> {
    let path = local(argument)?;
    if !path.is_dir() {
        return Err(Failure::Trouble(format!("'{argument}' is not a directory")));
    }
    Ok(path)
}

/// A checkpoint prefix (`DIR/ckpt-3`) on the local file system.
pub fn prefix(argument: &str) -> Result<PathBuf, Failure> {
    local(argument)
}

fn local(argument: &str) -> Result<PathBuf, Failure> {
    if let Some((scheme, _)) = argument.split_once("://") {
        return Err(Failure::Trouble(format!(
            "'{argument}' is a {scheme}:// URL; ckpt reads local directories only \
             (object storage is not supported yet)"
        )));
    }
    Ok(PathBuf::from(argument))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_refused_paths_kept() {
        assert!(
            matches!(prefix("gs://bucket/run"), Err(Failure::Trouble(m)) if m.contains("gs://"))
        );
        assert!(matches!(directory("s3://b/r"), Err(Failure::Trouble(_))));
        assert_eq!(prefix("run/ckpt-3").unwrap(), PathBuf::from("run/ckpt-3"));
    }
}
