//! Writing registered tensors to `<prefix>.safetensors` and reading them
//! back into their buffers: large sequential writes straight from the
//! buffers, reads straight into them, no copy of the state in memory.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::fault;
use super::integrity::check_crc;
use crate::error::{Error, Result};
use crate::manifest::{ByteString, FileRecord};
use crate::safetensors::{decode_header, encode_header, restore_plan, MAX_HEADER_BYTES};
use crate::tensors::TensorRegistry;

pub const TENSOR_FILE_SUFFIX: &str = ".safetensors";

// safetensors is little-endian; buffers are written as they are in memory.
#[cfg(target_endian = "big")]
compile_error!("the built-in saver writes host memory as little-endian safetensors");

/// Writes every registered tensor to `path` and returns its manifest
/// record, the CRC32C computed on the way so the file is not read back.
pub fn write_tensor_file(
    path: &Path,
    suffix: &str,
    registry: &TensorRegistry,
    metadata: &BTreeMap<String, String>,
) -> Result<FileRecord> {
    let tensors = registry.in_file_order();
    let header = encode_header(&tensors, metadata);
    let written = (|| -> io::Result<(u64, u32)> {
        fault::step()?;
        let mut file = File::create(path)?;
        let mut crc = crc32c::crc32c(&header);
        let mut size = header.len() as u64;
        fault::step()?;
        file.write_all(&header)?;
        for tensor in tensors {
            // SAFETY: registered buffers stay valid while registered.
            let bytes = unsafe { tensor.bytes() };
            crc = crc32c::crc32c_append(crc, bytes);
            size += bytes.len() as u64;
            fault::step()?;
            file.write_all(bytes)?;
        }
        Ok((size, crc))
    })();
    let (size, crc32c) = written.map_err(|err| Error::io_at("write tensors to", path, err))?;
    Ok(FileRecord {
        suffix: ByteString::Text(suffix.to_owned()),
        size,
        crc32c,
    })
}

/// Reads the tensors of `path` into the registered buffers. The whole
/// header is validated and matched against the registry first, so a bad
/// file or a mismatch leaves every buffer untouched; no file at all is a
/// mismatch too, or nothing to do for a partial restore. With `expected_crc`
/// (and not `partial`, so every byte is read) the file's CRC32C is checked
/// on the way: a mismatch is `Err(Damaged)` with the buffers overwritten.
pub fn read_tensor_file(
    path: &Path,
    registry: &TensorRegistry,
    partial: bool,
    expected_crc: Option<u32>,
) -> Result<()> {
    let io_error = |err| Error::io_at("read tensors from", path, err);
    let damaged = |detail: String| Error::Damaged {
        prefix: path.to_path_buf(),
        detail,
    };
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound && partial => return Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            let first = registry
                .iter()
                .next()
                .map_or("", |tensor| tensor.name.as_str());
            return Err(Error::TensorMismatch(format!(
                "tensor '{first}' is registered but the checkpoint has no '{}' (allow a partial restore to skip it)",
                path.display()
            )));
        }
        Err(err) => return Err(io_error(err)),
    };
    let file_len = file.metadata().map_err(io_error)?.len();
    let mut length = [0u8; 8];
    file.read_exact(&mut length)
        .map_err(|_| damaged("shorter than a safetensors header".into()))?;
    let header_len = u64::from_le_bytes(length);
    if header_len > MAX_HEADER_BYTES {
        return Err(damaged(format!(
            "its header claims {header_len} bytes, over the 100 MB limit"
        )));
    }
    let data_start = 8 + header_len;
    if data_start > file_len {
        return Err(damaged(format!(
            "its header claims {header_len} bytes but the file has {file_len}"
        )));
    }
    let mut json = vec![0u8; header_len as usize];
    file.read_exact(&mut json).map_err(io_error)?;
    let header = decode_header(&json, file_len - data_start).map_err(damaged)?;
    let plan = restore_plan(&header, registry, partial)?;
    let expected_crc = expected_crc.filter(|_| !partial);
    let mut crc = crc32c::crc32c_append(crc32c::crc32c(&length), &json);
    for (tensor, offset) in plan {
        // SAFETY: registered buffers stay valid and unshared during the call.
        let buffer = unsafe { tensor.bytes_mut() };
        file.read_exact_at(buffer, data_start + offset)
            .map_err(io_error)?;
        if expected_crc.is_some() {
            // The plan follows the file's order and covers it all.
            crc = crc32c::crc32c_append(crc, buffer);
        }
    }
    match expected_crc {
        Some(expected) => {
            let prefix = path.with_extension("");
            check_crc(&prefix, path, crc, expected)
        }
        None => Ok(()),
    }
}
