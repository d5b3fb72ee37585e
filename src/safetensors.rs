//! The safetensors format, pure: encoding a header for registered tensors,
//! decoding and validating a file's header, and matching it against the
//! registry before any byte is restored. Reading and writing is `storage`'s.
//!
//! Layout: an 8-byte little-endian header length N, N bytes of JSON
//! (padded with spaces to a multiple of 8), then the tensors' bytes,
//! contiguous, in the order of their `data_offsets`.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::tensors::{byte_len, DType, Tensor, TensorRegistry};

/// Headers larger than this are refused, as the safetensors crate does.
pub(crate) const MAX_HEADER_BYTES: u64 = 100_000_000;

/// The key of the free-form string metadata in a header.
const METADATA_KEY: &str = "__metadata__";

/// A tensor as a file's header describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct FileTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    /// Byte range in the data section.
    pub start: u64,
    pub end: u64,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Header {
    pub metadata: BTreeMap<String, String>,
    /// Ordered by offset.
    pub tensors: Vec<FileTensor>,
}

/// The 8-byte length and the padded JSON header for `tensors`, which are
/// laid out in the order given.
pub fn encode_header(tensors: &[&Tensor], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let json_string = |s: &str| serde_json::to_string(s).expect("strings serialise");
    let mut json = String::from("{");
    if !metadata.is_empty() {
        json.push_str(&json_string(METADATA_KEY));
        json.push(':');
        json.push_str(&serde_json::to_string(metadata).expect("a string map serialises"));
    }
    let mut offset = 0u64;
    for tensor in tensors {
        if json.len() > 1 {
            json.push(',');
        }
        let end = offset + tensor.byte_len() as u64;
        let shape = serde_json::to_string(&tensor.shape).expect("integers serialise");
        json.push_str(&format!(
            "{}:{{\"dtype\":\"{}\",\"shape\":{shape},\"data_offsets\":[{offset},{end}]}}",
            json_string(&tensor.name),
            tensor.dtype.name(),
        ));
        offset = end;
    }
    json.push('}');
    let padded = json.len().next_multiple_of(8);
    let mut bytes = Vec::with_capacity(8 + padded);
    bytes.extend_from_slice(&(padded as u64).to_le_bytes());
    bytes.extend_from_slice(json.as_bytes());
    bytes.resize(8 + padded, b' ');
    bytes
}

#[derive(Deserialize)]
struct RawTensor {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

/// Parses a header's JSON and checks it describes exactly `data_len` bytes:
/// known dtypes, sizes that match shapes, offsets contiguous from 0.
pub fn decode_header(json: &[u8], data_len: u64) -> Result<Header, String> {
    let entries: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(json)
        .map_err(|err| format!("header is not a JSON object: {err}"))?;
    let mut header = Header::default();
    for (name, value) in entries {
        if name == METADATA_KEY {
            header.metadata = serde_json::from_value(value)
                .map_err(|err| format!("{METADATA_KEY} is not a map of strings: {err}"))?;
            continue;
        }
        let raw: RawTensor =
            serde_json::from_value(value).map_err(|err| format!("tensor '{name}': {err}"))?;
        let dtype = DType::from_name(&raw.dtype)
            .ok_or_else(|| format!("tensor '{name}': unsupported dtype {:?}", raw.dtype))?;
        let [start, end] = raw.data_offsets;
        header.tensors.push(FileTensor {
            name,
            dtype,
            shape: raw.shape,
            start,
            end,
        });
    }
    header
        .tensors
        .sort_by_key(|tensor| (tensor.start, tensor.end));
    let mut expected_start = 0u64;
    for tensor in &header.tensors {
        if tensor.start != expected_start || tensor.end < tensor.start {
            return Err(format!(
                "tensor '{}': data_offsets [{}, {}] overlap or leave a gap (expected to start at {expected_start})",
                tensor.name, tensor.start, tensor.end
            ));
        }
        let size = shape_bytes(tensor.dtype, &tensor.shape).ok_or_else(|| {
            format!(
                "tensor '{}': shape {:?} overflows",
                tensor.name, tensor.shape
            )
        })?;
        if size != tensor.end - tensor.start {
            return Err(format!(
                "tensor '{}': {} {:?} needs {size} bytes, data_offsets give {}",
                tensor.name,
                tensor.dtype.name(),
                tensor.shape,
                tensor.end - tensor.start
            ));
        }
        expected_start = tensor.end;
    }
    if expected_start != data_len {
        return Err(format!(
            "the tensors cover {expected_start} bytes but the file holds {data_len}"
        ));
    }
    Ok(header)
}

/// Bytes of a tensor in a file (zero-size dimensions allowed there).
fn shape_bytes(dtype: DType, shape: &[u64]) -> Option<u64> {
    shape
        .iter()
        .try_fold(dtype.size() as u64, |bytes, &dim| bytes.checked_mul(dim))
}

/// Pairs each registered tensor with its byte range in the file, after
/// checking every name, dtype and shape. Tensors on one side only are an
/// error unless `partial`.
pub fn restore_plan<'r>(
    header: &Header,
    registry: &'r TensorRegistry,
    partial: bool,
) -> Result<Vec<(&'r Tensor, u64)>> {
    let mismatch = |message: String| Err(Error::TensorMismatch(message));
    let mut plan = Vec::new();
    for file_tensor in &header.tensors {
        let Some(tensor) = registry.get(&file_tensor.name) else {
            if partial {
                continue;
            }
            return mismatch(format!(
                "the checkpoint has tensor '{}', which is not registered (allow a partial restore to skip it)",
                file_tensor.name
            ));
        };
        if tensor.dtype != file_tensor.dtype || tensor.shape != file_tensor.shape {
            return mismatch(format!(
                "tensor '{}' is registered as {} {:?} but the checkpoint has {} {:?}",
                tensor.name,
                tensor.dtype.name(),
                tensor.shape,
                file_tensor.dtype.name(),
                file_tensor.shape
            ));
        }
        debug_assert_eq!(
            byte_len(&tensor.name, tensor.dtype, &tensor.shape).ok(),
            Some(tensor.byte_len())
        );
        plan.push((tensor, file_tensor.start));
    }
    if !partial && plan.len() != registry.iter().count() {
        let missing = registry
            .iter()
            .find(|tensor| !header.tensors.iter().any(|f| f.name == tensor.name))
            .expect("a registered tensor is missing from the plan");
        return mismatch(format!(
            "tensor '{}' is registered but not in the checkpoint (allow a partial restore to skip it)",
            missing.name
        ));
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_json(bytes: &[u8]) -> &str {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0);
        assert_eq!(bytes.len(), 8 + n);
        std::str::from_utf8(&bytes[8..]).unwrap()
    }

    #[test]
    fn encodes_padded_header_in_file_order() {
        let mut registry = TensorRegistry::default();
        let mut a = [0u8; 3];
        let mut b = [0f64; 2];
        // SAFETY: the buffers outlive the registry, which only this test uses.
        unsafe {
            registry
                .register("a", DType::U8, &[3], a.as_mut_ptr())
                .unwrap();
            registry
                .register("b", DType::F64, &[2, 1], b.as_mut_ptr().cast())
                .unwrap();
        }
        let metadata = BTreeMap::from([("checkpoint_number".to_owned(), "3".to_owned())]);
        let bytes = encode_header(&registry.in_file_order(), &metadata);
        let json = header_json(&bytes);
        assert_eq!(
            json.trim_end(),
            "{\"__metadata__\":{\"checkpoint_number\":\"3\"},\
             \"b\":{\"dtype\":\"F64\",\"shape\":[2,1],\"data_offsets\":[0,16]},\
             \"a\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[16,19]}}"
        );
        let header = decode_header(json.as_bytes(), 19).unwrap();
        assert_eq!(header.metadata, metadata);
        assert_eq!(header.tensors.len(), 2);
        assert!(restore_plan(&header, &registry, false).is_ok());
    }

    #[test]
    fn lying_headers_are_rejected() {
        let cases: &[(&str, u64, &str)] = &[
            ("[]", 0, "not a JSON object"),
            ("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4, "needs 8 bytes"),
            ("{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "gap"),
            (
                "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},\
                  \"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[2,6]}}",
                6,
                "overlap",
            ),
            ("{\"t\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 100, "cover 4 bytes"),
            ("{\"t\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,0]}}", 4, "overlap"),
            (
                "{\"t\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}",
                8,
                "overflows",
            ),
            ("{\"t\":{\"dtype\":\"C64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8, "unsupported dtype"),
            ("{\"__metadata__\":{\"k\":1}}", 0, "map of strings"),
            ("{\"t\":{\"dtype\":\"U8\"}}", 0, "missing field"),
        ];
        for (json, data_len, expected) in cases {
            let err = decode_header(json.as_bytes(), *data_len).unwrap_err();
            assert!(err.contains(expected), "{json}: {err}");
        }
    }

    #[test]
    fn restore_plan_checks_names_dtypes_and_shapes() {
        let mut registry = TensorRegistry::default();
        let mut w = [0f32; 4];
        // SAFETY: the buffers outlive the registry, which only this test uses.
        unsafe {
            registry
                .register("w", DType::F32, &[2, 2], w.as_mut_ptr().cast())
                .unwrap()
        };
        let file = |name: &str, dtype: DType, shape: &[u64]| Header {
            metadata: BTreeMap::new(),
            tensors: vec![FileTensor {
                name: name.into(),
                dtype,
                shape: shape.to_vec(),
                start: 0,
                end: 16,
            }],
        };
        let err = |header: Header, partial| {
            restore_plan(&header, &registry, partial)
                .unwrap_err()
                .to_string()
        };
        assert!(err(file("w", DType::I32, &[2, 2]), false).contains("registered as F32 [2, 2]"));
        assert!(err(file("w", DType::F32, &[4]), true).contains("checkpoint has F32 [4]"));
        assert!(err(file("v", DType::F32, &[2, 2]), false).contains("'v', which is not registered"));
        assert_eq!(
            restore_plan(&file("v", DType::F32, &[2, 2]), &registry, true)
                .unwrap()
                .len(),
            0
        );
        let empty = Header::default();
        assert!(restore_plan(&empty, &registry, false)
            .unwrap_err()
            .to_string()
            .contains("'w' is registered but not"));
    }
}
