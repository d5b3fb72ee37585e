//! The integrity manifest `<prefix>.ckpt-manifest.json`: every file of a
//! checkpoint with its size and CRC32C, and (version 2) every tensor the
//! built-in saver wrote: its kind, dtype, global shape and each saved box's
//! file, byte range and CRC32C. Written before the checkpoint is committed.
//! Pure data and JSON; reading files is `storage`'s job.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::layout::MANIFEST_SUFFIX;
use crate::tensors::{DType, TensorBox, TensorKind};

/// Manifests larger than this are damaged, not read.
pub(crate) const MAX_MANIFEST_BYTES: u64 = 16 << 20;

const FORMAT: &str = "ckpt-manager-manifest";
/// Manifests without tensors stay at version 1, which older libraries read.
const VERSION_FILES: u32 = 1;
/// Version 1 and the tensor table.
const VERSION_TENSORS: u32 = 2;

/// A saved box's bytes are checksummed in pieces of this size too, so a
/// rank that needs part of a box reads and checks only the pieces it needs.
pub(crate) const CRC_CHUNK_BYTES: u64 = 4 << 20;

/// One tensor of the built-in saver, across every rank that saved it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorRecord {
    pub name: String,
    pub kind: TensorKind,
    pub dtype: DType,
    /// The global shape (of a rank-local tensor, one rank's: each of its
    /// boxes has its own).
    pub shape: Vec<u64>,
    /// Sorted by file then offset; a sharded tensor's boxes never overlap
    /// and need not cover it, a replicated tensor has one box, a rank-local
    /// tensor one per rank that saved it.
    pub boxes: Vec<SavedBox>,
}

/// One saved piece of a tensor: where it is in the tensor and where its
/// bytes (row-major over `place.shape`, little-endian) are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedBox {
    /// The rank whose piece this is (rank-local tensors only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<u32>,
    #[serde(flatten)]
    pub place: TensorBox,
    /// The suffix of the checkpoint's file that holds the bytes.
    pub file: ByteString,
    /// The byte range `[start, end)` in that file.
    pub start: u64,
    pub end: u64,
    /// CRC32C of the whole range.
    pub crc32c: u32,
    /// CRC32C of each `CRC_CHUNK_BYTES` piece of the range (the last may be
    /// shorter), when the range is longer than one piece.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunk_crc32c: Vec<u32>,
}

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
    /// How many ranks saved the tensors (1 for one process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub world_size: Option<u32>,
    /// The built-in saver's tensors, by name (version 2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tensors: Vec<TensorRecord>,
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
            version: VERSION_FILES,
            number,
            files,
            saved_at: None,
            annotations: Annotations::default(),
            world_size: None,
            tensors: Vec::new(),
            unknown: serde_json::Map::new(),
        }
    }

    /// Records the tensors `world_size` ranks saved (a version 2 manifest).
    pub fn set_tensors(&mut self, world_size: u32, mut tensors: Vec<TensorRecord>) {
        if tensors.is_empty() {
            return;
        }
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        for tensor in &mut tensors {
            tensor.boxes.sort_by(|a, b| {
                (a.file.as_bytes(), &a.place.offset).cmp(&(b.file.as_bytes(), &b.place.offset))
            });
        }
        self.version = VERSION_TENSORS;
        self.world_size = Some(world_size);
        self.tensors = tensors;
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorRecord> {
        self.tensors
            .binary_search_by(|tensor| tensor.name.as_str().cmp(name))
            .ok()
            .map(|at| &self.tensors[at])
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
        if manifest.version != VERSION_FILES && manifest.version != VERSION_TENSORS {
            return Err(format!("unsupported manifest version {}", manifest.version));
        }
        if manifest.files.is_empty() {
            return Err("it lists no files".into());
        }
        for record in &manifest.files {
            check_suffix(record.suffix.as_bytes())?;
        }
        check_tensors(&manifest)?;
        Ok(manifest)
    }
}

/// The tensor table is what a save writes: a version 2 manifest has tensors
/// and a world size (a version 1 one neither); every tensor's byte size
/// fits in a `u64`; its boxes are inside its shape, name a listed file and
/// their byte ranges hold their elements; a rank-local tensor's boxes each
/// have a distinct rank of the world, no other's has one, and a sharded
/// tensor's boxes do not overlap; names are sorted and unique.
fn check_tensors(manifest: &Manifest) -> Result<(), String> {
    let world = match (
        manifest.version,
        manifest.world_size,
        manifest.tensors.len(),
    ) {
        (VERSION_TENSORS, Some(world), 1..) if world > 0 => world,
        (VERSION_TENSORS, world, tensors) => {
            return Err(format!(
                "version 2 needs tensors and a world size, it has {tensors} tensors and world \
                 size {world:?}"
            ))
        }
        (_, None, 0) => return Ok(()),
        (version, _, _) => {
            return Err(format!(
                "version {version} has no tensor table, yet it lists tensors or a world size"
            ))
        }
    };
    if manifest
        .tensors
        .windows(2)
        .any(|pair| pair[0].name >= pair[1].name)
    {
        return Err("its tensors are not sorted by unique name".into());
    }
    let sizes: std::collections::HashMap<&[u8], u64> = manifest
        .files
        .iter()
        .map(|file| (file.suffix.as_bytes(), file.size))
        .collect();
    for tensor in &manifest.tensors {
        let name = &tensor.name;
        let byte_size = |shape: &[u64]| {
            shape
                .iter()
                .try_fold(tensor.dtype.size() as u64, |n, &d| n.checked_mul(d))
        };
        if byte_size(&tensor.shape).is_none() {
            return Err(format!(
                "tensor '{name}': its shape {:?} overflows",
                tensor.shape
            ));
        }
        check_ranks(tensor, world)?;
        for saved in &tensor.boxes {
            let place = &saved.place;
            let dims = tensor.shape.len();
            // A rank-local tensor's pieces each have their own shape.
            let inside = (tensor.kind == TensorKind::RankLocal
                && place.offset.len() == place.shape.len()
                && place.offset.iter().all(|&at| at == 0))
                || place.offset.len() == dims
                    && place.shape.len() == dims
                    && (0..dims).all(|d| {
                        place.offset[d]
                            .checked_add(place.shape[d])
                            .is_some_and(|end| end <= tensor.shape[d])
                    });
            if !inside {
                return Err(format!(
                    "tensor '{name}': box {place} is outside its shape {:?}",
                    tensor.shape
                ));
            }
            let file_size = *sizes.get(saved.file.as_bytes()).ok_or_else(|| {
                format!("tensor '{name}': its box {place} names an unlisted file")
            })?;
            let fits = saved.end <= file_size
                && Some(saved.end.wrapping_sub(saved.start)) == byte_size(&place.shape);
            // A box over one piece has a CRC32C per piece, so that reading
            // part of it never needs the whole.
            let len = saved.end.saturating_sub(saved.start);
            let chunked = match saved.chunk_crc32c.len() as u64 {
                0 => len <= CRC_CHUNK_BYTES,
                chunks => chunks == len.div_ceil(CRC_CHUNK_BYTES),
            };
            if saved.start > saved.end || !fits || !chunked {
                return Err(format!(
                    "tensor '{name}': box {place} has the byte range [{}, {}) of a {}-byte file",
                    saved.start, saved.end, file_size
                ));
            }
        }
        if tensor.kind == TensorKind::Sharded {
            let boxes: Vec<&TensorBox> = tensor.boxes.iter().map(|b| &b.place).collect();
            if let Some((i, j, both)) = TensorBox::first_overlap(&boxes) {
                return Err(format!(
                    "tensor '{name}': its saved boxes {} and {} overlap at {both}",
                    boxes[i], boxes[j]
                ));
            }
        }
    }
    check_ranges_apart(manifest)
}

/// No two boxes' byte ranges overlap in a file: a save writes each box's
/// bytes once, so the tensors' bytes are at most the files' bytes.
fn check_ranges_apart(manifest: &Manifest) -> Result<(), String> {
    let mut ranges: Vec<(&[u8], u64, u64, &str)> = manifest
        .tensors
        .iter()
        .flat_map(|tensor| tensor.boxes.iter().map(move |saved| (tensor, saved)))
        .filter(|(_, saved)| saved.start < saved.end)
        .map(|(tensor, saved)| {
            let file = saved.file.as_bytes();
            (file, saved.start, saved.end, tensor.name.as_str())
        })
        .collect();
    ranges.sort_unstable();
    match ranges
        .windows(2)
        .find(|pair| pair[0].0 == pair[1].0 && pair[0].2 > pair[1].1)
    {
        Some([(file, start, end, first), (_, other_start, other_end, second)]) => Err(format!(
            "the byte ranges [{start}, {end}) of tensor '{first}' and [{other_start}, \
             {other_end}) of tensor '{second}' overlap in file {:?}",
            String::from_utf8_lossy(file)
        )),
        _ => Ok(()),
    }
}

/// A rank-local tensor's boxes each name a distinct rank below `world`;
/// the boxes of other kinds name none.
fn check_ranks(tensor: &TensorRecord, world: u32) -> Result<(), String> {
    let mut ranks = std::collections::BTreeSet::new();
    for saved in &tensor.boxes {
        let fine = match (tensor.kind, saved.rank) {
            (TensorKind::RankLocal, Some(rank)) => rank < world && ranks.insert(rank),
            (TensorKind::RankLocal, None) => false,
            (_, rank) => rank.is_none(),
        };
        if !fine {
            return Err(format!(
                "tensor '{}' ({}): a box has rank {:?} (world size {world}, ranks {ranks:?} seen)",
                tensor.name,
                tensor.kind.name(),
                saved.rank
            ));
        }
    }
    Ok(())
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
mod tensor_table_tests {
    use super::*;

    fn with_box(offset: &[u64], shape: &[u64], start: u64, end: u64) -> Manifest {
        let mut manifest = Manifest::new(
            1,
            vec![FileRecord {
                suffix: ByteString::from_bytes(b".safetensors"),
                size: 100,
                crc32c: 0,
            }],
        );
        manifest.set_tensors(
            1,
            vec![TensorRecord {
                name: "w".into(),
                kind: TensorKind::Sharded,
                dtype: DType::F32,
                shape: vec![4, 2],
                boxes: vec![SavedBox {
                    rank: None,
                    place: TensorBox {
                        offset: offset.to_vec(),
                        shape: shape.to_vec(),
                    },
                    file: ByteString::from_bytes(b".safetensors"),
                    start,
                    end,
                    crc32c: 7,
                    chunk_crc32c: Vec::new(),
                }],
            }],
        );
        manifest
    }

    #[test]
    fn a_tensor_table_round_trips_and_lying_boxes_are_refused() {
        let good = with_box(&[2, 0], &[2, 2], 16, 32);
        let json = good.to_json();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(
            text.contains("\"version\": 2") && text.contains("\"kind\": \"sharded\""),
            "{text}"
        );
        assert_eq!(Manifest::from_json(&json).unwrap(), good);
        for (bad, expected) in [
            (with_box(&[3, 0], &[2, 2], 16, 32), "outside"),
            (with_box(&[2, 0], &[2, 2], 16, 20), "byte range"),
            (with_box(&[2, 0], &[2, 2], 32, 16), "byte range"),
            (with_box(&[2, 0], &[2, 2], 90, 106), "byte range"),
            (with_box(&[2], &[2, 2], 16, 32), "outside"),
        ] {
            let err = Manifest::from_json(&bad.to_json()).unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
        // Without tensors a manifest stays version 1.
        let plain = Manifest::new(1, good.files.clone());
        assert!(String::from_utf8(plain.to_json())
            .unwrap()
            .contains("\"version\": 1"));
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
