//! Writing registered tensors to `<prefix>.safetensors` and reading them
//! back into their buffers: large sequential writes straight from the
//! buffers, reads straight into them, no copy of the state in memory.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::inspect::split_prefix;
use crate::integrity::check_crc;
use crate::layout::{file_name, TENSOR_FILE_SUFFIX};
use crate::safetensors::{
    decode_header, encode_header, restore_plan, FileTensor, Header, MAX_HEADER_BYTES,
};
use crate::store::{ReadAt, Store};
use crate::tensors::TensorRegistry;
use crate::transaction::Transaction;

// safetensors is little-endian; buffers are written as they are in memory.
#[cfg(target_endian = "big")]
compile_error!("the built-in saver writes host memory as little-endian safetensors");

/// Writes every registered tensor to the save's `<prefix>.safetensors`,
/// its CRC32C computed on the way.
pub fn write_tensor_file(
    transaction: &Transaction,
    registry: &TensorRegistry,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let tensors = registry.in_file_order();
    let header = encode_header(&tensors, metadata);
    let size = header.len() + tensors.iter().map(|t| t.byte_len()).sum::<usize>();
    transaction.write_file(TENSOR_FILE_SUFFIX, size as u64, |write| {
        write(&header)?;
        for tensor in tensors {
            // SAFETY: registered buffers stay valid while registered.
            write(unsafe { tensor.bytes() })?;
        }
        Ok(())
    })
}

/// Reads the tensors of checkpoint `base` into the registered buffers.
/// The whole header is validated and matched against the registry first,
/// so a bad file or a mismatch leaves every buffer untouched; no file at
/// all is a mismatch too, or nothing to do for a partial restore. With
/// `expected_crc` (and not `partial`, so every byte is read) the file's
/// CRC32C is checked on the way: a mismatch is `Err(Damaged)` with the
/// buffers overwritten.
pub fn read_tensor_file(
    store: &dyn Store,
    base: &OsStr,
    registry: &TensorRegistry,
    partial: bool,
    expected_crc: Option<u32>,
) -> Result<()> {
    let name = file_name(base, TENSOR_FILE_SUFFIX.as_bytes());
    let path = store.shown(&name);
    let damaged = |detail: String| Error::Damaged {
        prefix: path.clone(),
        detail,
    };
    let io_error = |err| read_error(&path, err);
    let file = match store.open_read(&name) {
        Ok(Some(file)) => file,
        Ok(None) if partial => return Ok(()),
        Ok(None) => {
            let first = registry
                .iter()
                .next()
                .map_or("", |tensor| tensor.name.as_str());
            return Err(Error::TensorMismatch(format!(
                "tensor '{first}' is registered but the checkpoint has no '{}' (allow a partial restore to skip it)",
                path.display()
            )));
        }
        Err(err) if err.kind() == std::io::ErrorKind::InvalidData => {
            return Err(damaged(err.to_string()))
        }
        Err(err) => return Err(io_error(err)),
    };
    let opened = read_header(file, &path)?;
    let (file, header, data_start) = (&opened.file, &opened.header, opened.data_start);
    let (length, json) = (&opened.length, &opened.json);
    let plan = restore_plan(header, registry, partial)?;
    let expected_crc = expected_crc.filter(|_| !partial);
    let mut crc = crc32c::crc32c_append(crc32c::crc32c(length), json);
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
        Some(expected) => check_crc(
            &store.shown(std::path::Path::new(base)),
            &path,
            crc,
            expected,
        ),
        None => Ok(()),
    }
}

/// A failed read of the tensor file at `path`. Bytes that read back
/// invalid (an object replaced while it was read) are damage.
fn read_error(path: &Path, err: io::Error) -> Error {
    match err.kind() {
        io::ErrorKind::InvalidData => Error::Damaged {
            prefix: path.to_path_buf(),
            detail: err.to_string(),
        },
        _ => Error::io_at("read tensors from", path, err),
    }
}

/// A tensor file opened and its header validated.
struct OpenedHeader {
    file: Box<dyn ReadAt>,
    header: Header,
    data_start: u64,
    /// The 8-byte length and the JSON, as read (for the file's CRC32C).
    length: [u8; 8],
    json: Vec<u8>,
}

/// Reads and validates the header of the tensor file at `path`: an
/// unusable one is `Err(Damaged)`.
fn read_header(file: Box<dyn ReadAt>, path: &Path) -> Result<OpenedHeader> {
    let io_error = |err| read_error(path, err);
    let damaged = |detail: String| Error::Damaged {
        prefix: path.to_path_buf(),
        detail,
    };
    let file_len = file.size();
    let mut length = [0u8; 8];
    if file_len < 8 {
        return Err(damaged("shorter than a safetensors header".into()));
    }
    file.read_exact_at(&mut length, 0).map_err(io_error)?;
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
    file.read_exact_at(&mut json, 8).map_err(io_error)?;
    let header = decode_header(&json, file_len - data_start).map_err(damaged)?;
    Ok(OpenedHeader {
        file,
        header,
        data_start,
        length,
        json,
    })
}

/// The built-in saver's file of a checkpoint, `<prefix>.safetensors`,
/// opened for reading with its header validated: for tools that look at
/// a checkpoint without registering buffers.
pub struct TensorFile {
    opened: OpenedHeader,
    path: PathBuf,
}

impl TensorFile {
    /// `None` when the checkpoint has no tensor file; `Err(Damaged)` when
    /// its header is unusable.
    pub fn open(prefix: &Path) -> Result<Option<TensorFile>> {
        let (store, base) = split_prefix(prefix, &[])?;
        let name = file_name(&base, TENSOR_FILE_SUFFIX.as_bytes());
        let path = store.shown(&name);
        let file = match store.open_read(&name) {
            Ok(Some(file)) => file,
            Ok(None) => return Ok(None),
            Err(err) if err.kind() == std::io::ErrorKind::InvalidData => {
                return Err(Error::Damaged {
                    prefix: path,
                    detail: err.to_string(),
                })
            }
            Err(err) => return Err(Error::io_at("read tensors from", &path, err)),
        };
        let opened = read_header(file, &path)?;
        Ok(Some(TensorFile { opened, path }))
    }

    /// The metadata and the tensors, in file order.
    pub fn header(&self) -> &Header {
        &self.opened.header
    }

    /// The bytes of one tensor of `header()`, as stored (little-endian).
    pub fn read(&self, tensor: &FileTensor) -> Result<Vec<u8>> {
        let len = usize::try_from(tensor.end - tensor.start)
            .map_err(|_| Error::invalid(format!("tensor '{}' is too large", tensor.name)))?;
        let mut bytes = vec![0u8; len];
        self.opened
            .file
            .read_exact_at(&mut bytes, self.opened.data_start + tensor.start)
            .map_err(|err| Error::io_at("read tensors from", &self.path, err))?;
        Ok(bytes)
    }
}

/// A copy of the registered tensors as `<prefix>.safetensors` will hold
/// them, taken on the calling thread so that a background save writes the
/// state as it was at the call. Its buffer is kept between saves: after the
/// first, taking a snapshot is a copy of the registered bytes and nothing
/// more.
#[derive(Debug, Default)]
pub struct TensorSnapshot {
    header: Vec<u8>,
    data: Vec<u8>,
}

impl TensorSnapshot {
    pub fn take(&mut self, registry: &TensorRegistry, metadata: &BTreeMap<String, String>) {
        let tensors = registry.in_file_order();
        self.header = encode_header(&tensors, metadata);
        self.data.clear();
        let total: usize = tensors.iter().map(|tensor| tensor.byte_len()).sum();
        self.data.reserve_exact(total);
        for tensor in tensors {
            // SAFETY: registered buffers stay valid while registered.
            self.data.extend_from_slice(unsafe { tensor.bytes() });
        }
    }

    pub fn is_empty(&self) -> bool {
        self.header.is_empty()
    }

    /// Writes the snapshot to the save's `<prefix>.safetensors`.
    pub fn write(&self, transaction: &Transaction) -> Result<()> {
        let size = self.header.len() + self.data.len();
        transaction.write_file(TENSOR_FILE_SUFFIX, size as u64, |write| {
            write(&self.header)?;
            write(&self.data)
        })
    }
}
