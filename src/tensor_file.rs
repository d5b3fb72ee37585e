//! Writing registered tensors to `<prefix>.safetensors` and reading them
//! back into their buffers: large sequential writes straight from the
//! buffers, reads straight into them, no copy of the state in memory.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::inspect::split_prefix;
use crate::integrity::{check_crc, read_manifest};
use crate::layout::{file_name, TENSOR_FILE_SUFFIX};
use crate::manifest::{ByteString, Manifest, SavedBox, TensorRecord, CRC_CHUNK_BYTES};
use crate::safetensors::{
    decode_header, encode_header, restore_plan, FileTensor, Header, MAX_HEADER_BYTES,
};
use crate::sharding::{
    covering, declarations, plan_writes, runs, sources, Declared, RestoreRanks, Source,
};
use crate::store::{ReadAt, Store};
use crate::tensors::{byte_len, DType, Tensor, TensorBox, TensorKind, TensorRegistry};
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

/// What a restore of a checkpoint with a tensor table asks of this rank.
pub struct TensorRestore<'a> {
    pub registry: &'a TensorRegistry,
    /// The tensors some rank registered: the checkpoint's others are a
    /// mismatch unless `partial`.
    pub registered_anywhere: &'a BTreeSet<String>,
    pub partial: bool,
    pub ranks: RestoreRanks,
}

/// What a restore reads into this rank's registered tensors: for each, the
/// saved boxes that fill it.
pub struct TensorPlan<'r> {
    fills: Vec<(&'r Tensor, Vec<SavedBox>)>,
    /// A rank-local tensor has no piece here and the init callback is to run.
    pub initialize: bool,
}

/// Matches this rank's registered tensors against the checkpoint's tensor
/// table and says which saved boxes fill each: a mismatch (dtype, shape, a
/// region never saved, rank-local pieces the world sizes do not match, a
/// tensor on one side only unless partial) is `TensorMismatch`, before any
/// byte is read.
pub fn plan_tensors<'r>(
    manifest: &Manifest,
    restore: &TensorRestore<'r>,
) -> Result<TensorPlan<'r>> {
    let world = manifest.world_size.unwrap_or(1);
    let mut plan = TensorPlan {
        fills: Vec::new(),
        initialize: false,
    };
    for tensor in restore.registry.iter() {
        let Some(record) = manifest.tensor(&tensor.name) else {
            if restore.partial {
                continue;
            }
            return Err(Error::TensorMismatch(format!(
                "tensor '{}' is registered but not in the checkpoint (allow a partial restore to skip it)",
                tensor.name
            )));
        };
        match sources(tensor, record, world, restore.ranks)? {
            Source::Boxes(boxes) => plan
                .fills
                .push((tensor, boxes.into_iter().cloned().collect())),
            Source::Untouched => {}
            Source::Initialize => plan.initialize = true,
        }
    }
    if !restore.partial {
        if let Some(unknown) = manifest
            .tensors
            .iter()
            .find(|t| !restore.registered_anywhere.contains(&t.name))
        {
            return Err(Error::TensorMismatch(format!(
                "the checkpoint has tensor '{}', which is not registered (allow a partial restore to skip it)",
                unknown.name
            )));
        }
    }
    Ok(plan)
}

/// Reads what `plan` says into the registered buffers from the checkpoint
/// `base`, reading only the pieces of each saved box's byte range that hold
/// what a buffer needs, each piece checked against its CRC32C (when
/// `check_crcs`): damaged bytes are `Damaged`, with the buffers partly
/// overwritten.
pub fn read_planned(
    store: &dyn Store,
    base: &OsStr,
    plan: &TensorPlan,
    check_crcs: bool,
) -> Result<()> {
    let mut files = OpenFiles {
        store,
        base,
        open: BTreeMap::new(),
    };
    for (tensor, boxes) in &plan.fills {
        // SAFETY: registered buffers stay valid and unshared during the call.
        let buffer = unsafe { tensor.bytes_mut() };
        let into = Target {
            name: &tensor.name,
            dtype: tensor.dtype,
            place: &tensor.place,
        };
        for saved in boxes {
            fill(&mut files, &into, buffer, saved, check_crcs)?;
        }
    }
    Ok(())
}

/// The checkpoint's files a restore has opened, by suffix.
struct OpenFiles<'s> {
    store: &'s dyn Store,
    base: &'s OsStr,
    open: BTreeMap<Vec<u8>, (Box<dyn ReadAt>, PathBuf)>,
}

impl OpenFiles<'_> {
    fn get(&mut self, suffix: &ByteString) -> Result<&(Box<dyn ReadAt>, PathBuf)> {
        let key = suffix.as_bytes().to_vec();
        if !self.open.contains_key(&key) {
            let name = file_name(self.base, &key);
            let path = self.store.shown(&name);
            let file = match self.store.open_read(&name) {
                Ok(Some(file)) => file,
                Ok(None) => {
                    return Err(Error::Damaged {
                        prefix: self.store.shown(Path::new(self.base)),
                        detail: format!("'{}' is missing", path.display()),
                    })
                }
                Err(err) => return Err(read_error(&path, err)),
            };
            self.open.insert(key.clone(), (file, path));
        }
        Ok(&self.open[&key])
    }
}

/// Reads of a box larger than this go in windows of whole CRC pieces.
const READ_WINDOW_BYTES: u64 = 64 << 20;

/// A box of a tensor to fill: a registered buffer, or a tool's.
struct Target<'a> {
    name: &'a str,
    dtype: DType,
    place: &'a TensorBox,
}

/// Copies what the box `tensor` shares with the saved box `saved` into
/// `buffer` (row-major over the box): straight into it when the saved box
/// is a contiguous part of it, else through a window of whole CRC pieces,
/// reading only the pieces that hold some of it.
fn fill(
    files: &mut OpenFiles,
    tensor: &Target,
    buffer: &mut [u8],
    saved: &SavedBox,
    check: bool,
) -> Result<()> {
    let Some(both) = saved.place.intersection(tensor.place) else {
        return Ok(());
    };
    let element = tensor.dtype.size() as u64;
    let runs = runs(&saved.place, tensor.place, &both, element);
    let box_len = saved.end - saved.start;
    let prefix = files.store.shown(Path::new(files.base));
    let (file, path) = files.get(&saved.file)?;
    let damaged = |from: u64, to: u64| Error::Damaged {
        prefix: prefix.clone(),
        detail: format!(
            "tensor '{}': bytes [{}, {}) of '{}' do not match their CRC32C",
            tensor.name,
            saved.start + from,
            saved.start + to,
            path.display()
        ),
    };
    let read = |into: &mut [u8], from: u64| {
        file.read_exact_at(into, saved.start + from)
            .map_err(|err| read_error(path, err))
    };
    if let [run] = runs.as_slice() {
        if run.from == 0 && run.len == box_len {
            let into = &mut buffer[run.to as usize..(run.to + run.len) as usize];
            read(into, 0)?;
            if check && crc32c::crc32c(into) != saved.crc32c {
                return Err(damaged(0, box_len));
            }
            return Ok(());
        }
    }
    let piece = match saved.chunk_crc32c.is_empty() {
        true => box_len.max(1),
        false => CRC_CHUNK_BYTES,
    };
    let needed_end = runs.last().map_or(0, |run| run.from + run.len);
    let read_end = needed_end.next_multiple_of(piece).min(box_len);
    let window_len = (READ_WINDOW_BYTES / piece).max(1) * piece;
    let (mut window_start, mut window) = (0u64, Vec::new());
    for run in runs {
        let mut done = 0;
        while done < run.len {
            let at = run.from + done;
            if at < window_start || at >= window_start + window.len() as u64 {
                window_start = at / piece * piece;
                let window_end = (window_start + window_len).min(read_end);
                window.resize((window_end - window_start) as usize, 0);
                read(&mut window, window_start)?;
                if check {
                    check_pieces(&window, window_start, piece, saved)
                        .map_err(|(from, to)| damaged(from, to))?;
                }
            }
            let offset = (at - window_start) as usize;
            let n = (run.len - done).min(window.len() as u64 - offset as u64) as usize;
            let to = (run.to + done) as usize;
            buffer[to..to + n].copy_from_slice(&window[offset..offset + n]);
            done += n as u64;
        }
    }
    Ok(())
}

/// Checks the CRC pieces of `saved` in `window`, which starts at piece
/// boundary `start` of the box's bytes; `Err` gives the failing range.
fn check_pieces(window: &[u8], start: u64, piece: u64, saved: &SavedBox) -> Result<(), (u64, u64)> {
    for (i, bytes) in window.chunks(piece as usize).enumerate() {
        let from = start + i as u64 * piece;
        let expected = match saved.chunk_crc32c.is_empty() {
            true => saved.crc32c,
            false => saved.chunk_crc32c[(from / piece) as usize],
        };
        if crc32c::crc32c(bytes) != expected {
            return Err((from, from + bytes.len() as u64));
        }
    }
    Ok(())
}

/// A failed read of the tensor file at `path`. Bytes that read back
/// invalid (an object replaced while it was read) are damage.
fn read_error(path: &Path, err: io::Error) -> Error {
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

/// The tensors of a checkpoint as its manifest lists them (version 2), for
/// tools that read them without registering buffers: any box of a tensor's
/// global value, read from the saved boxes that overlap it, each piece
/// checked against its CRC32C.
pub struct CheckpointTensors {
    store: Arc<dyn Store>,
    base: OsString,
    manifest: Manifest,
}

impl CheckpointTensors {
    /// `None` when the checkpoint has no manifest or its manifest lists no
    /// tensors (version 1: read `TensorFile` instead); `Err(Damaged)` when
    /// the manifest is unusable.
    pub fn open(prefix: &Path) -> Result<Option<CheckpointTensors>> {
        let (store, base) = split_prefix(prefix, &[])?;
        let manifest = read_manifest(&*store, &base)?.filter(|m| !m.tensors.is_empty());
        Ok(manifest.map(|manifest| CheckpointTensors {
            store,
            base,
            manifest,
        }))
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Every tensor, by name: kind, dtype, global shape and saved boxes.
    pub fn tensors(&self) -> &[TensorRecord] {
        &self.manifest.tensors
    }

    /// Reads `region` of tensor `name`'s global value into `into` (its
    /// bytes, row-major over `region.shape`, little-endian), checking every
    /// piece read against its CRC32C (`Damaged` if one differs). A region
    /// the checkpoint never saved is `TensorMismatch`. A rank-local tensor
    /// saved by more than one rank has no global value: read its pieces
    /// with `read_rank_piece`. Reading a tensor in slabs of rows keeps the
    /// memory bounded.
    pub fn read_region(&self, name: &str, region: &TensorBox, into: &mut [u8]) -> Result<()> {
        let record = self.record(name)?;
        if record.kind == TensorKind::RankLocal && self.manifest.world_size.unwrap_or(1) != 1 {
            return Err(Error::TensorMismatch(format!(
                "tensor '{name}' is rank-local, saved by {} ranks: it has no global value",
                self.manifest.world_size.unwrap_or(1)
            )));
        }
        let inside = region.offset.len() == record.shape.len()
            && region.shape.len() == record.shape.len()
            && (0..record.shape.len()).all(|d| {
                region.offset[d]
                    .checked_add(region.shape[d])
                    .is_some_and(|end| end <= record.shape[d])
            });
        let bytes = byte_len(name, record.dtype, &region.shape)?;
        if !inside || into.len() != bytes {
            return Err(Error::invalid(format!(
                "tensor '{name}' ({} {:?}): the region {region} does not fit it, or the buffer \
                 has {} bytes for {bytes}",
                record.dtype.name(),
                record.shape,
                into.len()
            )));
        }
        let boxes = covering(name, region, record, "the region read")?;
        self.fill_from(record, region, &boxes, into)
    }

    /// The whole global value of tensor `name` (see `read_region`).
    pub fn read_global(&self, name: &str) -> Result<Vec<u8>> {
        let record = self.record(name)?;
        let region = TensorBox::whole(&record.shape);
        let mut bytes = vec![0u8; byte_len(name, record.dtype, &record.shape)?];
        self.read_region(name, &region, &mut bytes)?;
        Ok(bytes)
    }

    /// Rank `rank`'s piece of the rank-local tensor `name`; `None` when
    /// that rank saved none.
    pub fn read_rank_piece(&self, name: &str, rank: u32) -> Result<Option<Vec<u8>>> {
        let record = self.record(name)?;
        let Some(saved) = record.boxes.iter().find(|b| b.rank == Some(rank)) else {
            return Ok(None);
        };
        let mut bytes = vec![0u8; byte_len(name, record.dtype, &saved.place.shape)?];
        self.fill_from(record, &saved.place, &[saved], &mut bytes)?;
        Ok(Some(bytes))
    }

    /// Reads saved box `index` of tensor `name` (as `tensors()` lists it)
    /// through a bounded window and checks every CRC32C piece: `Damaged`
    /// names the tensor, the box and the bytes that differ.
    pub fn check_box(&self, name: &str, index: usize) -> Result<()> {
        let record = self.record(name)?;
        let saved = record
            .boxes
            .get(index)
            .ok_or_else(|| Error::invalid(format!("tensor '{name}' has no saved box {index}")))?;
        let mut files = OpenFiles {
            store: &*self.store,
            base: &self.base,
            open: BTreeMap::new(),
        };
        let prefix = self.store.shown(Path::new(&self.base));
        let (file, path) = files.get(&saved.file)?;
        let box_len = saved.end - saved.start;
        let piece = match saved.chunk_crc32c.is_empty() {
            true => box_len.max(1),
            false => CRC_CHUNK_BYTES,
        };
        let window_len = (READ_WINDOW_BYTES / piece).max(1) * piece;
        let mut window = Vec::new();
        let mut at = 0;
        loop {
            let end = (at + window_len).min(box_len);
            window.resize((end - at) as usize, 0);
            file.read_exact_at(&mut window, saved.start + at)
                .map_err(|err| read_error(path, err))?;
            check_pieces(&window, at, piece, saved).map_err(|(from, to)| Error::Damaged {
                prefix: prefix.clone(),
                detail: format!(
                    "tensor '{name}' box {index} ({}): bytes [{}, {}) of '{}' do not match \
                     their CRC32C",
                    saved.place,
                    saved.start + from,
                    saved.start + to,
                    path.display()
                ),
            })?;
            at = end;
            if at >= box_len {
                return Ok(());
            }
        }
    }

    fn record(&self, name: &str) -> Result<&TensorRecord> {
        self.manifest
            .tensor(name)
            .ok_or_else(|| Error::TensorMismatch(format!("the checkpoint has no tensor '{name}'")))
    }

    fn fill_from(
        &self,
        record: &TensorRecord,
        region: &TensorBox,
        boxes: &[&SavedBox],
        into: &mut [u8],
    ) -> Result<()> {
        let mut files = OpenFiles {
            store: &*self.store,
            base: &self.base,
            open: BTreeMap::new(),
        };
        let target = Target {
            name: &record.name,
            dtype: record.dtype,
            place: region,
        };
        for saved in boxes {
            fill(&mut files, &target, into, saved, true)?;
        }
        Ok(())
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
