//! `ckpt export`: a checkpoint's global tensors as one safetensors file,
//! streamed: the header is written first from the shapes the manifest
//! knows, then each tensor in slabs of whole rows read from the saved
//! boxes, so memory stays bounded whatever the tensors' size. The file
//! is written under a temporary name and renamed when complete.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::Path;

use ckpt_manager::{CheckpointTensors, DType, TensorBox, TensorKind, TensorRecord};
use serde_json::json;

use crate::location;
use crate::output::{self, shown};
use crate::{Failure, Outcome};

/// At most this many bytes of a tensor are held in memory at once (more
/// only when one element is larger, which no dtype is).
const SLAB_BYTES: u64 = 64 << 20;

/// One tensor of the exported file: its name there, and where its value
/// comes from.
struct Exported<'a> {
    name: String,
    dtype: DType,
    shape: Vec<u64>,
    source: Source<'a>,
}

enum Source<'a> {
    /// The global value of a tensor (replicated, sharded, or rank-local
    /// saved by one process), read in slabs.
    Global(&'a TensorRecord),
    /// One rank's piece of a rank-local tensor saved by several ranks.
    RankPiece(&'a TensorRecord, u32),
}

impl Exported<'_> {
    fn bytes(&self) -> u64 {
        self.shape.iter().product::<u64>() * self.dtype.size() as u64
    }
}

pub fn run(argument: &str, out: &Path, json: bool) -> Outcome {
    let prefix = location::prefix(argument)?;
    let tensors = CheckpointTensors::open(&prefix)?.ok_or_else(|| {
        Failure::Trouble(format!(
            "'{}' has no tensor table (no tensors registered, or saved by a library before \
             tensors were listed in the manifest): nothing to export",
            prefix.display()
        ))
    })?;
    let world_size = tensors.manifest().world_size.unwrap_or(1);
    let exported = plan(tensors.tensors(), world_size)?;
    let mut metadata = BTreeMap::new();
    metadata.insert("format".to_owned(), "pt".to_owned());
    metadata.insert(
        "checkpoint_number".to_owned(),
        tensors.manifest().number.to_string(),
    );
    if let Some(step) = tensors.manifest().annotations.step {
        metadata.insert("step".to_owned(), step.to_string());
    }
    let header = header(&exported, &metadata);
    write_atomically(out, |file| {
        file.write_all(&(header.len() as u64).to_le_bytes())
            .and_then(|()| file.write_all(&header))
            .map_err(write_error)?;
        for tensor in &exported {
            write_tensor(&tensors, tensor, file)?;
        }
        Ok(())
    })?;
    let total: u64 = exported.iter().map(Exported::bytes).sum();
    if json {
        output::print_json(&json!({
            "prefix": shown(&prefix),
            "output": shown(out),
            "bytes": 8 + header.len() as u64 + total,
            "tensors": exported.iter().map(|t| json!({
                "name": t.name, "dtype": t.dtype.name(), "shape": t.shape,
            })).collect::<Vec<_>>(),
        }));
    } else {
        println!(
            "exported {} tensors ({}) of {} to {}",
            exported.len(),
            output::size(total),
            prefix.display(),
            out.display()
        );
    }
    Ok(())
}

/// The tensors to write, largest alignment first then by name (so each
/// is naturally aligned in the file), after checking each has a value to
/// export: a sharded tensor's boxes must cover it; a rank-local tensor
/// saved by several ranks is exported as `NAME.rank-R`, one per rank.
fn plan(records: &[TensorRecord], world_size: u32) -> Result<Vec<Exported<'_>>, Failure> {
    let mut exported = Vec::new();
    for record in records {
        match record.kind {
            TensorKind::RankLocal if world_size > 1 => {
                for saved in &record.boxes {
                    let rank = saved.rank.unwrap_or(0);
                    exported.push(Exported {
                        name: format!("{}.rank-{rank}", record.name),
                        dtype: record.dtype,
                        shape: saved.place.shape.clone(),
                        source: Source::RankPiece(record, rank),
                    });
                }
            }
            _ => {
                let covered: u64 = record.boxes.iter().map(|b| b.place.elements()).sum();
                let total: u64 = record.shape.iter().product();
                // Saved boxes never overlap: the elements they hold add up.
                if record.kind == TensorKind::Sharded && covered < total {
                    return Err(Failure::Trouble(format!(
                        "tensor '{}' ({} {:?}): its saved boxes hold {covered} of its {total} \
                         elements, so it has no whole value to export",
                        record.name,
                        record.dtype.name(),
                        record.shape
                    )));
                }
                exported.push(Exported {
                    name: record.name.clone(),
                    dtype: record.dtype,
                    shape: record.shape.clone(),
                    source: Source::Global(record),
                });
            }
        }
    }
    let mut names = std::collections::BTreeSet::new();
    if let Some(clash) = exported.iter().find(|t| !names.insert(t.name.as_str())) {
        return Err(Failure::Trouble(format!(
            "two tensors would be exported as '{}' (a rank-local tensor's piece is named \
             NAME.rank-R)",
            clash.name
        )));
    }
    exported.sort_by(|a, b| (b.dtype.size(), &a.name).cmp(&(a.dtype.size(), &b.name)));
    Ok(exported)
}

/// The safetensors header: JSON padded with spaces to a multiple of 8.
fn header(exported: &[Exported], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut entries = serde_json::Map::new();
    entries.insert("__metadata__".into(), json!(metadata));
    let mut start = 0u64;
    for tensor in exported {
        let end = start + tensor.bytes();
        entries.insert(
            tensor.name.clone(),
            json!({"dtype": tensor.dtype.name(), "shape": tensor.shape, "data_offsets": [start, end]}),
        );
        start = end;
    }
    let mut bytes = serde_json::to_vec(&entries).expect("a JSON map serialises");
    bytes.resize(bytes.len().next_multiple_of(8), b' ');
    bytes
}

/// The slabs of a tensor of `shape` in row-major order, each a box that
/// is one contiguous run of the tensor's bytes of at most `SLAB_BYTES`
/// (or one element): whole rows of the outermost dimension that fits,
/// with every dimension before it a single index.
fn slabs(shape: &[u64], element: u64) -> Vec<TensorBox> {
    if shape.is_empty() || shape.contains(&0) {
        return vec![TensorBox::whole(shape)];
    }
    // The outermost dimension whose rows (everything after it) fit.
    let mut split = shape.len() - 1;
    let mut row = element;
    for dim in (0..shape.len()).rev() {
        if dim + 1 < shape.len() {
            row *= shape[dim + 1];
        }
        if row > SLAB_BYTES {
            break;
        }
        split = dim;
    }
    let row_bytes = shape[split + 1..].iter().product::<u64>() * element;
    let rows_per_slab = (SLAB_BYTES / row_bytes).max(1);
    let outer: u64 = shape[..split].iter().product();
    let mut out = Vec::new();
    for index in 0..outer {
        let mut offset = vec![0; shape.len()];
        let mut rest = index;
        for dim in (0..split).rev() {
            offset[dim] = rest % shape[dim];
            rest /= shape[dim];
        }
        let mut first = 0;
        while first < shape[split] {
            let rows = rows_per_slab.min(shape[split] - first);
            let mut slab_offset = offset.clone();
            slab_offset[split] = first;
            let mut slab_shape = shape.to_vec();
            slab_shape[..split].fill(1);
            slab_shape[split] = rows;
            out.push(TensorBox {
                offset: slab_offset,
                shape: slab_shape,
            });
            first += rows;
        }
    }
    out
}

fn write_tensor(
    tensors: &CheckpointTensors,
    tensor: &Exported,
    file: &mut dyn Write,
) -> Result<(), Failure> {
    match tensor.source {
        Source::RankPiece(record, rank) => {
            let bytes = tensors
                .read_rank_piece(&record.name, rank)?
                .expect("the rank's box is listed");
            file.write_all(&bytes).map_err(write_error)
        }
        Source::Global(record) => {
            let element = record.dtype.size() as u64;
            let mut buffer = Vec::new();
            for slab in slabs(&record.shape, element) {
                buffer.resize((slab.elements() * element) as usize, 0);
                tensors.read_region(&record.name, &slab, &mut buffer)?;
                file.write_all(&buffer).map_err(write_error)?;
            }
            Ok(())
        }
    }
}

fn write_error(err: std::io::Error) -> Failure {
    Failure::Trouble(format!("writing the exported file: {err}"))
}

/// Writes `out` under a temporary name in its directory, flushed to disk,
/// then renames it into place: a failed export leaves no partial file.
fn write_atomically(
    out: &Path,
    write: impl FnOnce(&mut dyn Write) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let directory = match out.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let temporary = tempfile::Builder::new()
        .prefix(".ckpt-export-")
        .tempfile_in(directory)
        .map_err(|err| {
            Failure::Trouble(format!(
                "creating a file in '{}': {err}",
                directory.display()
            ))
        })?;
    let mut writer = BufWriter::with_capacity(1 << 20, temporary);
    write(&mut writer)?;
    let temporary = writer
        .into_inner()
        .map_err(|err| write_error(err.into_error()))?;
    temporary.as_file().sync_all().map_err(write_error)?;
    temporary.persist(out).map_err(|err| {
        Failure::Trouble(format!("renaming into '{}': {}", out.display(), err.error))
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slabs_are_contiguous_runs_that_cover_the_tensor_in_order() {
        let covered = |shape: &[u64], element: u64| {
            let slabs = slabs(shape, element);
            let mut next = 0u64;
            for slab in &slabs {
                // Row-major position of the slab's first element.
                let mut at = 0;
                for (dim, &size) in shape.iter().enumerate() {
                    at = at * size + slab.offset[dim];
                }
                assert_eq!(at, next, "{shape:?}: {slab}");
                assert!(slab.elements() * element <= SLAB_BYTES.max(element));
                next += slab.elements();
            }
            assert_eq!(next, shape.iter().product::<u64>());
            slabs.len()
        };
        assert_eq!(covered(&[], 4), 1);
        assert_eq!(covered(&[0, 5], 4), 1);
        assert_eq!(covered(&[10, 3], 4), 1);
        // 64 MiB rows of 2^24 f32: one row per slab.
        assert_eq!(covered(&[3, 1 << 24], 4), 3);
        // Rows over the limit split along the next dimension.
        assert_eq!(covered(&[2, 3, 1 << 23], 8), 6);
        assert_eq!(covered(&[5, 1 << 25], 4), 10);
        assert_eq!(covered(&[1 << 25], 4), 2);
    }
}
