//! Tensors across ranks, pure: what each rank declares it holds, the checks
//! a save makes of every rank's declarations (the same on every rank, so
//! every rank fails alike), which rank writes each tensor, and which saved
//! boxes fill a registered box on restore, whatever number of ranks saved
//! them. One process is the 1-rank case throughout.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::config::UnmatchedRankLocal;
use crate::error::{Error, Result};
use crate::manifest::{SavedBox, TensorRecord};
use crate::tensors::{DType, Tensor, TensorBox, TensorKind, TensorRegistry};

/// One registered tensor as a rank tells the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Declared {
    pub name: String,
    pub kind: TensorKind,
    pub dtype: DType,
    pub global_shape: Vec<u64>,
    pub place: TensorBox,
    /// The CRC32C of a replicated tensor's bytes, when the ranks compare
    /// them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_crc32c: Option<u32>,
}

impl Declared {
    fn bytes(&self) -> u64 {
        self.place.elements() * self.dtype.size() as u64
    }
}

/// What this rank registered; with `compare_replicas`, the CRC32C of each
/// replicated tensor's bytes too, so that ranks whose copies differ are
/// found.
pub fn declarations(registry: &TensorRegistry, compare_replicas: bool) -> Vec<Declared> {
    registry
        .iter()
        .map(|tensor| Declared {
            name: tensor.name.clone(),
            kind: tensor.kind,
            dtype: tensor.dtype,
            global_shape: tensor.global_shape.clone(),
            place: tensor.place.clone(),
            replica_crc32c: (compare_replicas && tensor.kind == TensorKind::Replicated)
                // SAFETY: registered buffers stay valid while registered.
                .then(|| crc32c::crc32c(unsafe { tensor.bytes() })),
        })
        .collect()
}

/// Checks every rank's declarations (`all[rank]`) against each other and
/// returns the names of the tensors `rank` writes: its rank-local tensors,
/// its non-empty boxes of sharded ones, and the replicated tensors it was
/// given, each replicated tensor going to the registering rank that has
/// written least so far, largest first. Unless `replicated_once` (ranks
/// with directories of their own), every rank writes its replicated ones.
pub fn plan_writes(
    all: &[Vec<Declared>],
    rank: u32,
    replicated_once: bool,
) -> Result<BTreeSet<String>> {
    let mut by_name: BTreeMap<&str, Vec<(u32, &Declared)>> = BTreeMap::new();
    for (r, declared) in all.iter().enumerate() {
        for d in declared {
            by_name.entry(&d.name).or_default().push((r as u32, d));
        }
    }
    for (name, holders) in &by_name {
        check_agreement(name, holders)?;
    }
    let mut load = vec![0u64; all.len()];
    for (r, declared) in all.iter().enumerate() {
        load[r] = declared
            .iter()
            .filter(|d| d.kind != TensorKind::Replicated)
            .map(Declared::bytes)
            .sum();
    }
    let mut replicated: Vec<(&str, &Vec<(u32, &Declared)>)> = by_name
        .iter()
        .filter(|(_, holders)| holders[0].1.kind == TensorKind::Replicated)
        .map(|(name, holders)| (*name, holders))
        .collect();
    replicated.sort_by_key(|(name, holders)| (std::cmp::Reverse(holders[0].1.bytes()), *name));
    let mut mine: BTreeSet<String> = all[rank as usize]
        .iter()
        .filter(|d| match d.kind {
            TensorKind::RankLocal => true,
            TensorKind::Sharded => d.place.elements() > 0,
            TensorKind::Replicated => !replicated_once,
        })
        .map(|d| d.name.clone())
        .collect();
    for (name, holders) in replicated.into_iter().filter(|_| replicated_once) {
        let writer = holders
            .iter()
            .map(|(r, _)| *r)
            .min_by_key(|r| (load[*r as usize], *r))
            .expect("a tensor has a holder");
        load[writer as usize] += holders[0].1.bytes();
        if writer == rank {
            mine.insert(name.to_owned());
        }
    }
    Ok(mine)
}

/// Every rank that registered `name` agrees on its kind, dtype and global
/// shape, and no two ranks' boxes of a sharded tensor overlap.
fn check_agreement(name: &str, holders: &[(u32, &Declared)]) -> Result<()> {
    let (first_rank, first) = holders[0];
    for &(rank, d) in &holders[1..] {
        let differs = |what: &str, a: String, b: String| {
            Err(Error::TensorMismatch(format!(
                "tensor '{name}' is registered with {what} {a} on rank {first_rank} and {b} on \
                 rank {rank}: every rank must register it alike"
            )))
        };
        if d.kind != first.kind {
            return differs("kind", first.kind.name().into(), d.kind.name().into());
        }
        if d.dtype != first.dtype {
            return differs("dtype", first.dtype.name().into(), d.dtype.name().into());
        }
        // Each rank's own tensor may have its own shape.
        if d.global_shape != first.global_shape && d.kind != TensorKind::RankLocal {
            let shape = |d: &Declared| format!("{:?}", d.global_shape);
            return differs("shape", shape(first), shape(d));
        }
    }
    if let Some(&(rank, _)) = holders
        .iter()
        .find(|(_, d)| d.replica_crc32c != first.replica_crc32c)
    {
        return Err(Error::TensorMismatch(format!(
            "tensor '{name}' is registered as replicated but its bytes on rank {rank} differ \
             from those on rank {first_rank}"
        )));
    }
    if first.kind == TensorKind::Sharded {
        check_no_overlap(name, holders)?;
    }
    Ok(())
}

/// No two non-empty boxes overlap.
fn check_no_overlap(name: &str, holders: &[(u32, &Declared)]) -> Result<()> {
    let boxes: Vec<&TensorBox> = holders.iter().map(|(_, d)| &d.place).collect();
    let Some((i, j, both)) = TensorBox::first_overlap(&boxes) else {
        return Ok(());
    };
    let ((r1, b1), (r2, b2)) = ((holders[i].0, boxes[i]), (holders[j].0, boxes[j]));
    if both.offset.is_empty() {
        return Err(Error::invalid(format!(
            "tensor '{name}': the boxes of rank {r1} and rank {r2} overlap (it is a scalar)"
        )));
    }
    Err(Error::invalid(format!(
        "tensor '{name}': the boxes of rank {r1} ({b1}) and rank {r2} ({b2}) overlap at {both}"
    )))
}

/// Where a registered tensor's bytes come from in a checkpoint.
#[derive(Debug)]
pub enum Source<'m> {
    /// Fill the tensor's box from these saved boxes, which cover it.
    Boxes(Vec<&'m SavedBox>),
    /// Nothing to read: a rank-local tensor without a piece for this rank,
    /// left as it is.
    Untouched,
    /// As `Untouched`, and the init callback runs for it.
    Initialize,
}

/// The ranks of a restore: this one and how many there are.
#[derive(Debug, Clone, Copy)]
pub struct RestoreRanks {
    pub rank: u32,
    pub size: u32,
    pub unmatched: UnmatchedRankLocal,
}

/// Which saved boxes fill `tensor`, after checking it against `record`:
/// a dtype or shape mismatch, a region never saved, or rank-local pieces
/// the world sizes do not match (unless `ranks.unmatched` says what to do)
/// is `TensorMismatch`. `saved_world` is the number of ranks that saved.
pub fn sources<'m>(
    tensor: &Tensor,
    record: &'m TensorRecord,
    saved_world: u32,
    ranks: RestoreRanks,
) -> Result<Source<'m>> {
    let name = &tensor.name;
    let mismatch = |message: String| Err(Error::TensorMismatch(message));
    if tensor.dtype != record.dtype {
        return mismatch(format!(
            "tensor '{name}' is registered as {} but the checkpoint has {}",
            tensor.dtype.name(),
            record.dtype.name()
        ));
    }
    if record.kind == TensorKind::RankLocal {
        if tensor.kind == TensorKind::RankLocal {
            return rank_local_piece(tensor, record, ranks);
        }
        // A one-process checkpoint's tensor is the whole tensor.
        if saved_world != 1 {
            return mismatch(format!(
                "tensor '{name}' is registered as {} but {saved_world} ranks saved it rank-local \
                 (one piece each): it has no global value",
                tensor.kind.name()
            ));
        }
    }
    if tensor.global_shape != record.shape {
        return mismatch(format!(
            "tensor '{name}' is registered as {} {:?} but the checkpoint has {} {:?}",
            tensor.dtype.name(),
            tensor.global_shape,
            record.dtype.name(),
            record.shape
        ));
    }
    let holder = format!("rank {}'s box", ranks.rank);
    covering(name, &tensor.place, record, &holder).map(Source::Boxes)
}

/// The saved boxes of `record` that overlap `place`, which they must cover:
/// a region never saved is `TensorMismatch`, naming the tensor `name`, the
/// region and `holder`, which needs it.
pub fn covering<'m>(
    name: &str,
    place: &TensorBox,
    record: &'m TensorRecord,
    holder: &str,
) -> Result<Vec<&'m SavedBox>> {
    let overlapping: Vec<&SavedBox> = record
        .boxes
        .iter()
        .filter(|saved| saved.place.intersection(place).is_some())
        .collect();
    let mut missing = vec![place.clone()];
    for saved in &overlapping {
        missing = missing
            .iter()
            .flat_map(|region| region.minus(&saved.place))
            .collect();
    }
    if place.elements() == 0 || missing.is_empty() {
        return Ok(overlapping);
    }
    let shown: Vec<String> = missing.iter().take(3).map(|m| m.to_string()).collect();
    let more = match missing.len() {
        n if n > 3 => format!(" and {} more", n - 3),
        _ => String::new(),
    };
    Err(Error::TensorMismatch(format!(
        "tensor '{name}': the checkpoint never saved the region {}{more} that {holder} ({place}) \
         needs",
        shown.join(", "),
    )))
}

/// A rank-local tensor's own piece, or what `ranks.unmatched` says when
/// the saved ranks are not this restore's.
fn rank_local_piece<'m>(
    tensor: &Tensor,
    record: &'m TensorRecord,
    ranks: RestoreRanks,
) -> Result<Source<'m>> {
    let name = &tensor.name;
    let own = record.boxes.iter().find(|b| b.rank == Some(ranks.rank));
    let gone = record
        .boxes
        .iter()
        .filter_map(|b| b.rank)
        .find(|&r| r >= ranks.size);
    if (own.is_none() || gone.is_some()) && ranks.unmatched == UnmatchedRankLocal::Refuse {
        let why = match gone {
            Some(r) => format!(
                "rank {r} saved a piece but this restore has {} ranks",
                ranks.size
            ),
            None => format!("rank {} has no saved piece", ranks.rank),
        };
        return Err(Error::TensorMismatch(format!(
            "rank-local tensor '{name}': {why} (choose to skip or initialize such tensors with \
             ckpt_options_set_unmatched_rank_local)"
        )));
    }
    let Some(own) = own else {
        return Ok(match ranks.unmatched {
            UnmatchedRankLocal::Initialize => Source::Initialize,
            _ => Source::Untouched,
        });
    };
    if own.place.shape != tensor.shape {
        return Err(Error::TensorMismatch(format!(
            "tensor '{name}' is registered as {} {:?} but rank {}'s piece is {} {:?}",
            tensor.dtype.name(),
            tensor.shape,
            ranks.rank,
            record.dtype.name(),
            own.place.shape
        )));
    }
    Ok(Source::Boxes(vec![own]))
}

/// A contiguous run of bytes to copy from a saved box's bytes (`from`, an
/// offset in them) to a registered box's buffer (`to`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub from: u64,
    pub to: u64,
    pub len: u64,
}

/// The runs that copy the elements of `both` (inside `from_box` and
/// `to_box`) between the two row-major buffers, in increasing `from`, with
/// neighbours merged. `element` is the dtype's size.
pub fn runs(from_box: &TensorBox, to_box: &TensorBox, both: &TensorBox, element: u64) -> Vec<Run> {
    let dims = both.shape.len();
    let strides = |shape: &[u64]| {
        let mut strides = vec![element; dims];
        for d in (0..dims.saturating_sub(1)).rev() {
            strides[d] = strides[d + 1] * shape[d + 1];
        }
        strides
    };
    let (from_strides, to_strides) = (strides(&from_box.shape), strides(&to_box.shape));
    let at = |index: &[u64], origin: &TensorBox, strides: &[u64]| -> u64 {
        (0..dims)
            .map(|d| (both.offset[d] + index[d] - origin.offset[d]) * strides[d])
            .sum()
    };
    let row = match dims {
        0 => element,
        _ => both.shape[dims - 1] * element,
    };
    let mut runs: Vec<Run> = Vec::new();
    if both.elements() == 0 {
        return runs;
    }
    // An index over every dimension but the last, counting like an odometer.
    let mut index = vec![0u64; dims];
    loop {
        let run = Run {
            from: at(&index, from_box, &from_strides),
            to: at(&index, to_box, &to_strides),
            len: row,
        };
        match runs.last_mut() {
            Some(last) if last.from + last.len == run.from && last.to + last.len == run.to => {
                last.len += run.len;
            }
            _ => runs.push(run),
        }
        let mut d = dims.saturating_sub(1);
        loop {
            if d == 0 {
                return runs;
            }
            d -= 1;
            index[d] += 1;
            if index[d] < both.shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(offset: &[u64], shape: &[u64]) -> TensorBox {
        TensorBox {
            offset: offset.to_vec(),
            shape: shape.to_vec(),
        }
    }

    fn declared(name: &str, kind: TensorKind, global: &[u64], at: TensorBox) -> Declared {
        Declared {
            name: name.into(),
            kind,
            dtype: DType::F32,
            global_shape: global.to_vec(),
            place: at,
            replica_crc32c: None,
        }
    }

    #[test]
    fn runs_copy_a_column_block_row_by_row_and_merge_whole_rows() {
        let saved = place(&[0, 0], &[4, 4]);
        let wanted = place(&[1, 2], &[2, 2]);
        let both = saved.intersection(&wanted).unwrap();
        assert_eq!(
            runs(&saved, &wanted, &both, 1),
            [
                Run {
                    from: 6,
                    to: 0,
                    len: 2
                },
                Run {
                    from: 10,
                    to: 2,
                    len: 2
                }
            ]
        );
        let rows = place(&[2, 0], &[2, 4]);
        let both = saved.intersection(&rows).unwrap();
        assert_eq!(
            runs(&saved, &rows, &both, 4),
            [Run {
                from: 32,
                to: 0,
                len: 32
            }]
        );
        let scalar = place(&[], &[]);
        assert_eq!(
            runs(&scalar, &scalar, &scalar, 8),
            [Run {
                from: 0,
                to: 0,
                len: 8
            }]
        );
    }

    #[test]
    fn minus_leaves_disjoint_boxes_of_what_is_outside() {
        let whole = place(&[0, 0], &[4, 4]);
        let rest = whole.minus(&place(&[1, 1], &[2, 2]));
        assert_eq!(rest.iter().map(TensorBox::elements).sum::<u64>(), 12);
        for (i, a) in rest.iter().enumerate() {
            assert!(rest[i + 1..].iter().all(|b| a.intersection(b).is_none()));
        }
        assert!(whole.minus(&whole).is_empty());
    }

    #[test]
    fn replicated_tensors_spread_over_ranks_and_overlaps_are_refused() {
        let whole = |n: u64| place(&[0], &[n]);
        let rank = || {
            vec![
                declared("a", TensorKind::Replicated, &[100], whole(100)),
                declared("b", TensorKind::Replicated, &[90], whole(90)),
                declared("c", TensorKind::Replicated, &[10], whole(10)),
            ]
        };
        let all = vec![rank(), rank()];
        let on = |r| {
            plan_writes(&all, r, true)
                .unwrap()
                .into_iter()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            (on(0), on(1)),
            (vec!["a".to_owned()], vec!["b".into(), "c".into()])
        );
        // Ranks with directories of their own each write every one.
        assert_eq!(plan_writes(&all, 1, false).unwrap().len(), 3);

        let overlapping = vec![
            vec![declared("w", TensorKind::Sharded, &[4], place(&[0], &[3]))],
            vec![declared("w", TensorKind::Sharded, &[4], place(&[2], &[2]))],
        ];
        let err = plan_writes(&overlapping, 1, true).unwrap_err().to_string();
        assert!(err.contains("rank 0") && err.contains("overlap"), "{err}");
        let block = |r: u64, c: u64| {
            vec![declared(
                "b",
                TensorKind::Sharded,
                &[4, 4],
                place(&[r, c], &[2, 2]),
            )]
        };
        let grid = vec![block(0, 0), block(0, 2), block(2, 0), block(2, 2)];
        assert!(plan_writes(&grid, 3, true).is_ok());
        let shifted = vec![block(0, 0), block(0, 2), block(2, 0), block(1, 1)];
        let err = plan_writes(&shifted, 0, true).unwrap_err().to_string();
        assert!(
            err.contains("rank 0 (offset [0, 0] shape [2, 2]) and rank 3"),
            "{err}"
        );
        let mixed = vec![
            vec![declared("w", TensorKind::Sharded, &[4], place(&[0], &[2]))],
            vec![declared("w", TensorKind::Replicated, &[4], whole(4))],
        ];
        let err = plan_writes(&mixed, 0, true).unwrap_err().to_string();
        assert!(
            err.contains("kind sharded on rank 0 and replicated on rank 1"),
            "{err}"
        );
    }
}
