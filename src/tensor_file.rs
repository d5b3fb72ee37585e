//! Writing registered tensors to `<prefix>.safetensors` (each rank its
//! own file of the tensors it was given), with the records the manifest's
//! tensor table lists, and reading a version 1 checkpoint's file back into
//! the buffers: large sequential writes straight from the buffers, reads
//! straight into them, no copy of the state in memory. Reading through the
//! tensor table is `tensor_read`'s.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::inspect::split_prefix;
use crate::integrity::check_crc;
use crate::layout::{file_name, TENSOR_FILE_SUFFIX};
use crate::manifest::{ByteString, SavedBox, TensorRecord, CRC_CHUNK_BYTES};
use crate::safetensors::{
    decode_header, encode_header, restore_plan, FileTensor, Header, MAX_HEADER_BYTES,
};
use crate::sharding::{declarations, plan_writes, Declared};
use crate::store::{ReadAt, Store};
use crate::tensors::{Tensor, TensorKind, TensorRegistry};
use crate::transaction::{SavedTensors, Transaction};

// safetensors is little-endian; buffers are written as they are in memory.
#[cfg(target_endian = "big")]
compile_error!("the built-in saver writes host memory as little-endian safetensors");

/// What this rank writes of the registered tensors, as `plan_writes` chose
/// from every rank's declarations: the 1-rank case writes them all.
#[derive(Debug, Clone)]
pub struct WritePlan {
    pub rank: u32,
    pub world_size: u32,
    pub writes: BTreeSet<String>,
}

impl WritePlan {
    /// The plan of one process, which writes every tensor it has.
    pub fn one_process(registry: &TensorRegistry) -> Result<WritePlan> {
        Ok(WritePlan {
            rank: 0,
            world_size: 1,
            writes: plan_writes(&[declarations(registry, false)], 0, true)?,
        })
    }
}

/// One registered tensor in this rank's file: where its bytes are in the
/// data section, when this rank writes it.
#[derive(Debug, Clone)]
struct Entry {
    declared: Declared,
    range: Option<(u64, u64)>,
}

/// The tensors `plan` writes in file order, and an entry for every
/// registered tensor (the manifest lists those this rank does not write
/// too, so that a tensor no rank writes a byte of is still known).
fn lay_out<'r>(registry: &'r TensorRegistry, plan: &WritePlan) -> (Vec<&'r Tensor>, Vec<Entry>) {
    let written: Vec<&Tensor> = registry
        .in_file_order()
        .into_iter()
        .filter(|tensor| plan.writes.contains(&tensor.name))
        .collect();
    let mut ranges = BTreeMap::new();
    let mut offset = 0u64;
    for tensor in &written {
        let end = offset + tensor.byte_len() as u64;
        ranges.insert(tensor.name.as_str(), (offset, end));
        offset = end;
    }
    let entries = declarations(registry, false)
        .into_iter()
        .map(|declared| Entry {
            range: ranges.get(declared.name.as_str()).copied(),
            declared,
        })
        .collect();
    (written, entries)
}

/// The CRC32C of a box's bytes, whole and per `CRC_CHUNK_BYTES` piece.
/// One pass over the bytes: the whole's CRC32C is combined from the pieces'.
fn box_crcs(bytes: &[u8]) -> (u32, Vec<u32>) {
    if bytes.len() as u64 <= CRC_CHUNK_BYTES {
        return (crc32c::crc32c(bytes), Vec::new());
    }
    let pieces: Vec<&[u8]> = bytes.chunks(CRC_CHUNK_BYTES as usize).collect();
    let chunks: Vec<u32> = pieces.iter().map(|piece| crc32c::crc32c(piece)).collect();
    let whole = pieces
        .iter()
        .zip(&chunks)
        .fold(0, |crc, (piece, &piece_crc)| {
            crc32c::crc32c_combine(crc, piece_crc, piece.len())
        });
    (whole, chunks)
}

/// The manifest's records of this rank's tensors, written at `data_start`
/// of its file `file` with the CRC32Cs `crcs` (by name).
fn records(
    entries: &[Entry],
    plan: &WritePlan,
    file: &ByteString,
    data_start: u64,
    crcs: &BTreeMap<String, (u32, Vec<u32>)>,
) -> SavedTensors {
    let tensors = entries
        .iter()
        .map(|entry| {
            let d = &entry.declared;
            let boxes = entry
                .range
                .map(|(start, end)| {
                    let (crc32c, chunk_crc32c) = crcs[&d.name].clone();
                    SavedBox {
                        rank: (d.kind == TensorKind::RankLocal).then_some(plan.rank),
                        place: d.place.clone(),
                        file: file.clone(),
                        start: data_start + start,
                        end: data_start + end,
                        crc32c,
                        chunk_crc32c,
                    }
                })
                .into_iter()
                .collect();
            TensorRecord {
                name: d.name.clone(),
                kind: d.kind,
                dtype: d.dtype,
                shape: d.global_shape.clone(),
                boxes,
            }
        })
        .collect();
    SavedTensors {
        world_size: plan.world_size,
        tensors,
    }
}

/// Writes this rank's tensors (as `plan` says) to the save's
/// `<prefix>.safetensors` straight from the buffers, with the file's CRC32C
/// and each box's computed on the way, and records them for the manifest.
pub fn write_tensor_file(
    transaction: &Transaction,
    registry: &TensorRegistry,
    metadata: &BTreeMap<String, String>,
    plan: &WritePlan,
) -> Result<()> {
    let (written, entries) = lay_out(registry, plan);
    let header = encode_header(&written, metadata);
    let size = header.len() + written.iter().map(|t| t.byte_len()).sum::<usize>();
    let mut crcs = BTreeMap::new();
    transaction.write_file(TENSOR_FILE_SUFFIX, size as u64, |write| {
        write(&header)?;
        for tensor in &written {
            // SAFETY: registered buffers stay valid while registered.
            let bytes = unsafe { tensor.bytes() };
            crcs.insert(tensor.name.clone(), box_crcs(bytes));
            write(bytes)?;
        }
        Ok(())
    })?;
    let file = transaction.file_suffix(TENSOR_FILE_SUFFIX);
    transaction.record_tensors(records(&entries, plan, &file, header.len() as u64, &crcs));
    Ok(())
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
pub(crate) fn read_error(path: &Path, err: io::Error) -> Error {
    match err.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => Error::Damaged {
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
/// them, taken on the calling thread so that a background save (one
/// process) writes the state as it was at the call. Its buffer is kept
/// between saves: after the first, taking a snapshot is a copy of the
/// registered bytes and nothing more.
#[derive(Debug, Default)]
pub struct TensorSnapshot {
    header: Vec<u8>,
    data: Vec<u8>,
    entries: Vec<Entry>,
    plan: Option<WritePlan>,
}

impl TensorSnapshot {
    pub fn take(
        &mut self,
        registry: &TensorRegistry,
        metadata: &BTreeMap<String, String>,
    ) -> Result<()> {
        let plan = WritePlan::one_process(registry)?;
        let (written, entries) = lay_out(registry, &plan);
        self.header = encode_header(&written, metadata);
        self.data.clear();
        let total: usize = written.iter().map(|tensor| tensor.byte_len()).sum();
        self.data.reserve_exact(total);
        for tensor in written {
            // SAFETY: registered buffers stay valid while registered.
            self.data.extend_from_slice(unsafe { tensor.bytes() });
        }
        self.entries = entries;
        self.plan = Some(plan);
        Ok(())
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
        })?;
        let crcs = self
            .entries
            .iter()
            .filter_map(|entry| {
                let (start, end) = entry.range?;
                let bytes = &self.data[start as usize..end as usize];
                Some((entry.declared.name.clone(), box_crcs(bytes)))
            })
            .collect();
        let plan = self
            .plan
            .as_ref()
            .expect("a snapshot that was taken has a plan");
        let file = transaction.file_suffix(TENSOR_FILE_SUFFIX);
        let data_start = self.header.len() as u64;
        transaction.record_tensors(records(&self.entries, plan, &file, data_start, &crcs));
        Ok(())
    }
}
