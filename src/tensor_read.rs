//! Reading a checkpoint's tensors through its manifest's tensor table
//! (version 2): matching registered boxes against the saved ones, then
//! reading into each only the pieces of the saved byte ranges it needs,
//! each piece checked against its CRC32C; the same for tools that read a
//! tensor's global value without registering buffers.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::inspect::split_prefix;
use crate::integrity::read_manifest;
use crate::layout::file_name;
use crate::manifest::{ByteString, Manifest, SavedBox, TensorRecord, CRC_CHUNK_BYTES};
use crate::sharding::{covering, runs, sources, RestoreRanks, Source};
use crate::store::{ReadAt, Store};
use crate::tensor_file::read_error;
use crate::tensors::{byte_len, DType, Tensor, TensorBox, TensorKind, TensorRegistry};

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
    let (store, base) = (files.store, files.base);
    let prefix = store.shown(Path::new(base));
    let (file, path) = files.get(&saved.file)?;
    if file.size() < saved.end {
        return Err(short_file(store, base, path, file.size(), saved));
    }
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

/// The damage of a file shorter than the byte range `saved` says it holds.
fn short_file(store: &dyn Store, base: &OsStr, path: &Path, size: u64, saved: &SavedBox) -> Error {
    Error::Damaged {
        prefix: store.shown(Path::new(base)),
        detail: format!(
            "'{}' has {size} bytes, fewer than the byte range [{}, {}) its manifest lists",
            path.display(),
            saved.start,
            saved.end
        ),
    }
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
        let len = byte_len(name, record.dtype, &record.shape)?;
        // The table bounds the value by its files' sizes: check them before
        // allocating it, as the table may lie.
        self.check_file_sizes(&covering(name, &region, record, "the tensor")?)?;
        let mut bytes = vec![0u8; len];
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
        let len = byte_len(name, record.dtype, &saved.place.shape)?;
        self.check_file_sizes(&[saved])?;
        let mut bytes = vec![0u8; len];
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

    /// Each of `boxes` ends within its file as it is: `Damaged` if not.
    fn check_file_sizes(&self, boxes: &[&SavedBox]) -> Result<()> {
        let mut files = self.open_files();
        for saved in boxes {
            let (file, path) = files.get(&saved.file)?;
            if file.size() < saved.end {
                return Err(short_file(
                    &*self.store,
                    &self.base,
                    path,
                    file.size(),
                    saved,
                ));
            }
        }
        Ok(())
    }

    fn open_files(&self) -> OpenFiles<'_> {
        OpenFiles {
            store: &*self.store,
            base: &self.base,
            open: BTreeMap::new(),
        }
    }

    fn fill_from(
        &self,
        record: &TensorRecord,
        region: &TensorBox,
        boxes: &[&SavedBox],
        into: &mut [u8],
    ) -> Result<()> {
        let mut files = self.open_files();
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
