//! The integrity manifest `<prefix>.ckpt-manifest.json`: every file of a
//! checkpoint with its size and CRC32C, written before the checkpoint is
//! committed. Pure data and JSON; reading files is `storage`'s job.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::layout::MANIFEST_SUFFIX;

/// Manifests larger than this are damaged, not read.
pub(crate) const MAX_MANIFEST_BYTES: u64 = 16 << 20;

const FORMAT: &str = "ckpt-manager-manifest";
const VERSION: u32 = 1;

/// One file of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// The file's path after the prefix: `.index`, `.data-00000-of-00001`,
    /// `""` for the prefix itself, `/shard-0` inside a prefix directory.
    pub suffix: ByteString,
    pub size: u64,
    pub crc32c: u32,
}

/// Bytes that are kept as a JSON string when they are UTF-8 (the usual
/// case) and as an array of numbers otherwise: file names are bytes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ByteString {
    Text(String),
    Bytes(Vec<u8>),
}

impl ByteString {
    pub fn from_bytes(bytes: &[u8]) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(text) => ByteString::Text(text.to_owned()),
            Err(_) => ByteString::Bytes(bytes.to_vec()),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            ByteString::Text(text) => text.as_bytes(),
            ByteString::Bytes(bytes) => bytes,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    format: String,
    version: u32,
    /// The checkpoint number the manifest was written for.
    pub number: u64,
    /// Sorted by suffix.
    pub files: Vec<FileRecord>,
    /// The time the state file records for this save; absent in manifests
    /// of version 0.1. Fields are added as optional so that older readers
    /// still read newer manifests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved_at: Option<f64>,
    /// What the save recorded about the checkpoint (absent before 0.3).
    #[serde(flatten)]
    pub annotations: Annotations,
    /// Fields a newer library wrote, kept so that rewriting the manifest
    /// (a pin) does not lose them.
    #[serde(flatten)]
    unknown: serde_json::Map<String, serde_json::Value>,
}

/// The user's facts about a save, which retention rules and
/// `checkpoint_info` read back after a restart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Annotations {
    /// The step counter's value at the save.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<i64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, Metric>,
    /// A JSON object given by the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Kept by every retention rule until unpinned.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pinned: bool,
}

/// A metric's value. JSON has no NaN or infinity, so those are written as
/// the strings "NaN", "Infinity" and "-Infinity".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metric(pub f64);

impl Serialize for Metric {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            value if value.is_finite() => serializer.serialize_f64(value),
            value if value.is_nan() => serializer.serialize_str("NaN"),
            value if value > 0.0 => serializer.serialize_str("Infinity"),
            _ => serializer.serialize_str("-Infinity"),
        }
    }
}

impl<'de> Deserialize<'de> for Metric {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Number(f64),
            Text(String),
        }
        match Written::deserialize(deserializer)? {
            Written::Number(value) => Ok(Metric(value)),
            Written::Text(text) => match text.as_str() {
                "NaN" => Ok(Metric(f64::NAN)),
                "Infinity" => Ok(Metric(f64::INFINITY)),
                "-Infinity" => Ok(Metric(f64::NEG_INFINITY)),
                _ => Err(serde::de::Error::custom(format!(
                    "metric value {text:?} is not a number"
                ))),
            },
        }
    }
}

impl Manifest {
    pub fn new(number: u64, mut files: Vec<FileRecord>) -> Self {
        files.sort_by(|a, b| a.suffix.as_bytes().cmp(b.suffix.as_bytes()));
        Manifest {
            format: FORMAT.into(),
            version: VERSION,
            number,
            files,
            saved_at: None,
            annotations: Annotations::default(),
            unknown: serde_json::Map::new(),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut json = serde_json::to_vec_pretty(self).expect("a manifest always serialises");
        json.push(b'\n');
        json
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(|err| err.to_string())?;
        if manifest.format != FORMAT {
            return Err(format!("not a manifest (format {:?})", manifest.format));
        }
        if manifest.version != VERSION {
            return Err(format!("unsupported manifest version {}", manifest.version));
        }
        if manifest.files.is_empty() {
            return Err("it lists no files".into());
        }
        for record in &manifest.files {
            check_suffix(record.suffix.as_bytes())?;
        }
        Ok(manifest)
    }
}

/// A file suffix a checkpoint may own: `""` (the prefix itself),
/// `.<name>` beside it, or `/<a>/<b>` inside the directory named like the
/// prefix, with no empty, `.` or `..` component and no NUL byte. Anything
/// else would name a file the checkpoint does not own.
pub fn check_suffix(suffix: &[u8]) -> Result<(), String> {
    let shown = || String::from_utf8_lossy(suffix).into_owned();
    if suffix.contains(&0) {
        return Err(format!("file suffix {:?} holds a NUL byte", shown()));
    }
    // Its temporary copies (`.ckpt-manifest.json.tmp<hex>`) too.
    if suffix.starts_with(MANIFEST_SUFFIX.as_bytes()) {
        return Err("the manifest lists itself".into());
    }
    let plain = match suffix.first() {
        None => true,
        Some(b'.') => !suffix.contains(&b'/'),
        Some(b'/') => suffix[1..]
            .split(|&b| b == b'/')
            .all(|part| !part.is_empty() && part != b"." && part != b".."),
        Some(_) => false,
    };
    if plain {
        Ok(())
    } else {
        Err(format!(
            "file suffix {:?} does not name a file of the checkpoint",
            shown()
        ))
    }
}

/// How thoroughly to check a checkpoint against its manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// Every file exists with the recorded size.
    Sizes,
    /// Sizes, and every file's CRC32C.
    Checksums,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_text_and_byte_names() {
        let manifest = Manifest::new(
            7,
            vec![
                FileRecord {
                    suffix: ByteString::from_bytes(b".index"),
                    size: 3,
                    crc32c: 42,
                },
                FileRecord {
                    suffix: ByteString::from_bytes(b"/sh\xffard"),
                    size: 0,
                    crc32c: 0,
                },
            ],
        );
        let json = manifest.to_json();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(text.contains("\"suffix\": \".index\""), "{text}");
        assert_eq!(Manifest::from_json(&json).unwrap(), manifest);
        // Sorted by bytes: "." before "/".
        assert_eq!(manifest.files[1].suffix.as_bytes(), b"/sh\xffard");
    }

    #[test]
    fn rejects_foreign_or_broken_json() {
        for bad in [
            &b""[..],
            b"{}",
            b"[1,2]",
            b"{\"format\":\"x\",\"version\":1,\"number\":1,\"files\":[]}",
            b"{\"format\":\"ckpt-manager-manifest\",\"version\":9,\"number\":1,\"files\":[]}",
            b"{\"format\":\"ckpt-manager-manifest\",\"version\":1,\"number\":-1,\"files\":[]}",
            b"{\"format\":\"ckpt-manager-manifest\",\"version\":1,\"number\":1,\"files\":[]}",
            b"{\"format\":\"ckpt-manager-manifest\",\"version\":1,\"number\":1,\"files\":[{\"suffix\":\"/../../etc/hostname\",\"size\":1,\"crc32c\":0}]}",
        ] {
            assert!(
                Manifest::from_json(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}

#[cfg(test)]
mod suffix_tests {
    use super::check_suffix;

    #[test]
    fn only_names_of_the_checkpoint_are_suffixes() {
        for good in [
            &b""[..],
            b".index",
            b".data-00000-of-00001",
            b"/shard",
            b"/a/b.bin",
            b".x\xff",
        ] {
            assert!(check_suffix(good).is_ok(), "{good:?}");
        }
        for bad in [
            &b"/../../etc/hostname"[..],
            b"/../../../../dev/zero",
            b"/a/./b",
            b"/a//b",
            b"/",
            b".a/b",
            b"x",
            b"-2.index",
            b".in\0dex",
            b".ckpt-manifest.json",
            b".ckpt-manifest.json.tmp0123",
        ] {
            assert!(check_suffix(bad).is_err(), "{bad:?}");
        }
    }
}
