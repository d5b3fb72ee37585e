//! The integrity manifest `<prefix>.ckpt-manifest.json`: every file of a
//! checkpoint with its size and CRC32C, written before the checkpoint is
//! committed. Pure data and JSON; reading files is `storage`'s job.

use serde::{Deserialize, Serialize};

/// The manifest's own suffix; it is a file of the checkpoint, deleted with it.
pub const MANIFEST_SUFFIX: &str = ".ckpt-manifest.json";
/// Marks a checkpoint whose save has started and whose commit is not yet
/// known to be done; recovery on open removes such checkpoints unless the
/// state file names them.
pub const PENDING_SUFFIX: &str = ".ckpt-pending";
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    format: String,
    version: u32,
    /// The checkpoint number the manifest was written for.
    pub number: u64,
    /// Sorted by suffix.
    pub files: Vec<FileRecord>,
}

impl Manifest {
    pub fn new(number: u64, mut files: Vec<FileRecord>) -> Self {
        files.sort_by(|a, b| a.suffix.as_bytes().cmp(b.suffix.as_bytes()));
        Manifest {
            format: FORMAT.into(),
            version: VERSION,
            number,
            files,
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
        Ok(manifest)
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
        ] {
            assert!(
                Manifest::from_json(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
