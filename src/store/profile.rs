//! The standard AWS shared files, which the S3 client does not read
//! itself: `~/.aws/credentials` and `~/.aws/config` (or the files that
//! `AWS_SHARED_CREDENTIALS_FILE` and `AWS_CONFIG_FILE` name), profile
//! `AWS_PROFILE` or `default`. An `AWS_*` variable beats the files.

use std::path::PathBuf;

use ini::Ini;
use object_store::aws::AmazonS3ConfigKey;

use crate::error::{Error, Result};

/// Each setting the files give: the file's key, the client's key, and the
/// variables that override it.
const SETTINGS: &[(&str, AmazonS3ConfigKey, &[&str])] = &[
    (
        "aws_access_key_id",
        AmazonS3ConfigKey::AccessKeyId,
        &["AWS_ACCESS_KEY_ID"],
    ),
    (
        "aws_secret_access_key",
        AmazonS3ConfigKey::SecretAccessKey,
        &["AWS_SECRET_ACCESS_KEY"],
    ),
    (
        "aws_session_token",
        AmazonS3ConfigKey::Token,
        &["AWS_SESSION_TOKEN"],
    ),
    (
        "region",
        AmazonS3ConfigKey::Region,
        &["AWS_REGION", "AWS_DEFAULT_REGION"],
    ),
    (
        "endpoint_url",
        AmazonS3ConfigKey::Endpoint,
        &["AWS_ENDPOINT_URL", "AWS_ENDPOINT"],
    ),
];

fn file(variable: &str, default: &str) -> Option<PathBuf> {
    match std::env::var_os(variable) {
        Some(path) => Some(PathBuf::from(path)),
        None => std::env::var_os("HOME").map(|home| PathBuf::from(home).join(default)),
    }
}

/// The settings of the profile, from both files; missing files are fine.
pub fn settings() -> Result<Vec<(AmazonS3ConfigKey, String)>> {
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    // The config file names a profile `[profile NAME]`, except `[default]`.
    let config_section = match profile.as_str() {
        "default" => profile.clone(),
        name => format!("profile {name}"),
    };
    let sources = [
        (
            file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials"),
            profile.as_str(),
        ),
        (
            file("AWS_CONFIG_FILE", ".aws/config"),
            config_section.as_str(),
        ),
    ];
    let mut found = Vec::new();
    for (path, section) in sources {
        let Some(path) = path.filter(|path| path.is_file()) else {
            continue;
        };
        let parsed = Ini::load_from_file(&path).map_err(|err| {
            Error::invalid(format!(
                "cannot read AWS settings '{}': {err}",
                path.display()
            ))
        })?;
        let Some(values) = parsed.section(Some(section)) else {
            continue;
        };
        // Credentials go together: a key id from the environment is never
        // paired with a secret from a file.
        let credentials_set = std::env::var_os("AWS_ACCESS_KEY_ID").is_some();
        for (name, key, variables) in SETTINGS {
            let credential = matches!(
                key,
                AmazonS3ConfigKey::AccessKeyId
                    | AmazonS3ConfigKey::SecretAccessKey
                    | AmazonS3ConfigKey::Token
            );
            let overridden = (credential && credentials_set)
                || variables.iter().any(|v| std::env::var_os(v).is_some());
            let known = found.iter().any(|(k, _)| k == key);
            if let Some(value) = values.get(name).filter(|_| !overridden && !known) {
                found.push((*key, value.to_owned()));
            }
        }
    }
    Ok(found)
}
