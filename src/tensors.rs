//! The registry of host buffers the built-in saver writes and restores.
//! The caller owns each buffer and keeps it valid while it is registered.

use std::collections::BTreeMap;
use std::ptr::NonNull;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Element types of the built-in saver, named as in the safetensors format.
/// `ckpt_dtype` in C, a `uint32_t`: the values of
/// `ckpt_manager_register_tensor`'s `dtype`, which never change.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F64 = 0,
    F32 = 1,
    F16 = 2,
    BF16 = 3,
    I64 = 4,
    I32 = 5,
    I16 = 6,
    I8 = 7,
    U64 = 8,
    U32 = 9,
    U16 = 10,
    U8 = 11,
    Bool = 12,
}

impl DType {
    /// In value order (a test checks it). Not in the C header, where its
    /// items would not exist under their C names.
    /// cbindgen:ignore
    pub const ALL: [DType; 13] = [
        DType::F64,
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::I64,
        DType::I32,
        DType::I16,
        DType::I8,
        DType::U64,
        DType::U32,
        DType::U16,
        DType::U8,
        DType::Bool,
    ];

    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 | DType::U64 => 8,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// The name in a safetensors header.
    pub fn name(self) -> &'static str {
        match self {
            DType::F64 => "F64",
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I64 => "I64",
            DType::I32 => "I32",
            DType::I16 => "I16",
            DType::I8 => "I8",
            DType::U64 => "U64",
            DType::U32 => "U32",
            DType::U16 => "U16",
            DType::U8 => "U8",
            DType::Bool => "BOOL",
        }
    }

    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|dtype| dtype.name() == name)
    }

    /// The dtype of a C `ckpt_dtype` value, if it is one.
    pub fn from_u32(value: u32) -> Option<DType> {
        DType::ALL.get(usize::try_from(value).ok()?).copied()
    }

    /// Position in the file: larger alignment first, as the safetensors
    /// crate lays tensors out, so every tensor stays naturally aligned.
    pub(crate) fn layout_rank(self) -> u8 {
        match self {
            DType::U64 => 0,
            DType::I64 => 1,
            DType::F64 => 2,
            DType::F32 => 3,
            DType::U32 => 4,
            DType::I32 => 5,
            DType::BF16 => 6,
            DType::F16 => 7,
            DType::U16 => 8,
            DType::I16 => 9,
            DType::I8 => 10,
            DType::U8 => 11,
            DType::Bool => 12,
        }
    }
}

// In manifests, by its safetensors name.
impl Serialize for DType {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for DType {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        DType::from_name(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unsupported dtype {name:?}")))
    }
}

/// What a registered tensor is across ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TensorKind {
    /// Each rank its own (its RNG, its data loader position); without a
    /// communicator, the whole tensor.
    RankLocal,
    /// The same on every rank: saved once, restored on every rank.
    Replicated,
    /// This rank's box of a global tensor.
    Sharded,
}

impl TensorKind {
    pub fn name(self) -> &'static str {
        match self {
            TensorKind::RankLocal => "rank-local",
            TensorKind::Replicated => "replicated",
            TensorKind::Sharded => "sharded",
        }
    }
}

/// A box of a global tensor: where it starts and its extent, per dimension.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TensorBox {
    pub offset: Vec<u64>,
    pub shape: Vec<u64>,
}

impl TensorBox {
    /// The box of a whole tensor of `shape`.
    pub fn whole(shape: &[u64]) -> TensorBox {
        TensorBox {
            offset: vec![0; shape.len()],
            shape: shape.to_vec(),
        }
    }

    pub fn elements(&self) -> u64 {
        self.shape.iter().product()
    }

    /// The part of both boxes, if it has an element (boxes of different
    /// numbers of dimensions share none).
    pub fn intersection(&self, other: &TensorBox) -> Option<TensorBox> {
        let dims = self.offset.len();
        if [self.shape.len(), other.offset.len(), other.shape.len()] != [dims; 3] {
            return None;
        }
        let mut offset = Vec::with_capacity(self.offset.len());
        let mut shape = Vec::with_capacity(self.offset.len());
        for dim in 0..self.offset.len() {
            let start = self.offset[dim].max(other.offset[dim]);
            let end =
                (self.offset[dim] + self.shape[dim]).min(other.offset[dim] + other.shape[dim]);
            if end <= start {
                return None;
            }
            offset.push(start);
            shape.push(end - start);
        }
        Some(TensorBox { offset, shape })
    }

    /// Two of `boxes` (all of one number of dimensions) that share an
    /// element, by index, with what they share. A sweep along the dimension
    /// where the boxes start at the most places, so that the usual layouts
    /// compare each box with its neighbours only.
    pub(crate) fn first_overlap(boxes: &[&TensorBox]) -> Option<(usize, usize, TensorBox)> {
        let mut order: Vec<usize> = (0..boxes.len())
            .filter(|&i| boxes[i].elements_checked() != Some(0))
            .collect();
        let dims = order.first().map_or(0, |&i| boxes[i].offset.len());
        let Some(axis) = (0..dims).max_by_key(|&d| {
            order
                .iter()
                .map(|&i| boxes[i].offset[d])
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        }) else {
            // Scalars: two non-empty boxes always overlap.
            return match order.as_slice() {
                [a, b, ..] => Some((*a, *b, boxes[*a].clone())),
                _ => None,
            };
        };
        order.sort_by_key(|&i| boxes[i].offset[axis]);
        for (at, &i) in order.iter().enumerate() {
            let a = boxes[i];
            let end = a.offset[axis].saturating_add(a.shape[axis]);
            let neighbours = order[at + 1..]
                .iter()
                .take_while(|&&j| boxes[j].offset[axis] < end);
            // Without allocating: a hostile table may make this quadratic.
            for &j in neighbours {
                let b = boxes[j];
                let apart = (0..dims).any(|d| {
                    a.offset[d].saturating_add(a.shape[d]) <= b.offset[d]
                        || b.offset[d].saturating_add(b.shape[d]) <= a.offset[d]
                });
                let both = match apart {
                    true => None,
                    false => a.intersection(b),
                };
                if let Some(both) = both {
                    return Some((i.min(j), i.max(j), both));
                }
            }
        }
        None
    }

    /// The number of elements, `None` when it overflows.
    pub(crate) fn elements_checked(&self) -> Option<u64> {
        self.shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d))
    }

    /// What of `self` is outside `other`, as disjoint boxes.
    pub fn minus(&self, other: &TensorBox) -> Vec<TensorBox> {
        let Some(inside) = self.intersection(other) else {
            return if self.elements() == 0 {
                Vec::new()
            } else {
                vec![self.clone()]
            };
        };
        let mut rest = Vec::new();
        let mut remaining = self.clone();
        for dim in 0..self.offset.len() {
            let (start, end) = (
                remaining.offset[dim],
                remaining.offset[dim] + remaining.shape[dim],
            );
            let (inner_start, inner_end) =
                (inside.offset[dim], inside.offset[dim] + inside.shape[dim]);
            if inner_start > start {
                let mut below = remaining.clone();
                below.shape[dim] = inner_start - start;
                rest.push(below);
            }
            if inner_end < end {
                let mut above = remaining.clone();
                above.offset[dim] = inner_end;
                above.shape[dim] = end - inner_end;
                rest.push(above);
            }
            remaining.offset[dim] = inner_start;
            remaining.shape[dim] = inner_end - inner_start;
        }
        rest
    }
}

impl std::fmt::Display for TensorBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "offset {:?} shape {:?}", self.offset, self.shape)
    }
}

/// A registered host buffer: `shape` elements of `dtype`, row-major, which
/// are the box `place` of a tensor of `global_shape`.
#[derive(Debug)]
pub struct Tensor {
    pub name: String,
    pub kind: TensorKind,
    pub dtype: DType,
    /// The buffer's own shape.
    pub shape: Vec<u64>,
    pub global_shape: Vec<u64>,
    /// Where the buffer is in the global tensor: the whole of it, but for a
    /// sharded tensor.
    pub place: TensorBox,
    data: NonNull<u8>,
    byte_len: usize,
}

impl Tensor {
    pub fn byte_len(&self) -> usize {
        self.byte_len
    }

    /// The buffer's bytes.
    ///
    /// # Safety
    /// The registration's contract: the buffer is valid for reads.
    pub(crate) unsafe fn bytes(&self) -> &[u8] {
        // SAFETY: `byte_len` readable bytes at `data` (the caller's contract).
        unsafe { std::slice::from_raw_parts(self.data.as_ptr(), self.byte_len) }
    }

    /// The buffer, to restore into.
    ///
    /// # Safety
    /// The registration's contract: the buffer is valid for writes and not
    /// used by anything else during the call.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn bytes_mut(&self) -> &mut [u8] {
        // SAFETY: `byte_len` writable, unshared bytes at `data` (the caller's contract).
        unsafe { std::slice::from_raw_parts_mut(self.data.as_ptr(), self.byte_len) }
    }
}

/// Registered tensors by name.
#[derive(Debug, Default)]
pub struct TensorRegistry {
    tensors: BTreeMap<String, Tensor>,
}

// SAFETY: registration requires the buffers to stay valid and be usable
// from whichever thread calls into the manager.
unsafe impl Send for TensorRegistry {}

/// The number of bytes of a tensor (0 when a dimension is 0), or an error
/// naming what is wrong.
pub fn byte_len(name: &str, dtype: DType, shape: &[u64]) -> Result<usize> {
    shape
        .iter()
        .try_fold(dtype.size() as u64, |bytes, &dim| bytes.checked_mul(dim))
        .and_then(|bytes| usize::try_from(bytes).ok())
        .filter(|&bytes| bytes <= isize::MAX as usize)
        .ok_or_else(|| Error::invalid(format!("tensor '{name}': shape {shape:?} overflows")))
}

impl TensorRegistry {
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Registers a buffer of `shape` elements of `dtype` (an empty shape is
    /// a scalar; a zero dimension, an empty tensor, whose `data` may be
    /// NULL): a rank-local tensor.
    ///
    /// # Safety
    /// `data` must stay valid for reads and writes of the tensor's bytes,
    /// from any thread that uses the manager, until it is unregistered or
    /// the manager is dropped.
    pub unsafe fn register(
        &mut self,
        name: &str,
        dtype: DType,
        shape: &[u64],
        data: *mut u8,
    ) -> Result<()> {
        // SAFETY: the caller's contract.
        unsafe { self.register_kind(name, TensorKind::RankLocal, dtype, shape, None, data) }
    }

    /// Registers a tensor that is the same on every rank.
    ///
    /// # Safety
    /// As for `register`.
    pub unsafe fn register_replicated(
        &mut self,
        name: &str,
        dtype: DType,
        shape: &[u64],
        data: *mut u8,
    ) -> Result<()> {
        // SAFETY: the caller's contract.
        unsafe { self.register_kind(name, TensorKind::Replicated, dtype, shape, None, data) }
    }

    /// Registers this rank's box (`offset`, `local_shape`) of a tensor of
    /// `global_shape`; `data` holds the box row-major. An empty box (a zero
    /// in `local_shape`) holds nothing of the tensor.
    ///
    /// # Safety
    /// As for `register`.
    pub unsafe fn register_slice(
        &mut self,
        name: &str,
        dtype: DType,
        global_shape: &[u64],
        place: TensorBox,
        data: *mut u8,
    ) -> Result<()> {
        if place.offset.len() != global_shape.len() || place.shape.len() != global_shape.len() {
            return Err(Error::invalid(format!(
                "tensor '{name}': offset, local shape and global shape must have the same number of dimensions"
            )));
        }
        let outside = (0..global_shape.len()).find(|&dim| {
            place.offset[dim]
                .checked_add(place.shape[dim])
                .is_none_or(|end| end > global_shape[dim])
        });
        if let Some(dim) = outside {
            return Err(Error::invalid(format!(
                "tensor '{name}': the box {place} is outside the global shape {global_shape:?} (dimension {dim})"
            )));
        }
        byte_len(name, dtype, global_shape)?;
        // SAFETY: the caller's contract.
        unsafe {
            self.register_kind(
                name,
                TensorKind::Sharded,
                dtype,
                global_shape,
                Some(place),
                data,
            )
        }
    }

    /// # Safety
    /// As for `register`.
    unsafe fn register_kind(
        &mut self,
        name: &str,
        kind: TensorKind,
        dtype: DType,
        global_shape: &[u64],
        place: Option<TensorBox>,
        data: *mut u8,
    ) -> Result<()> {
        if name.is_empty() || name == "__metadata__" {
            return Err(Error::invalid(format!(
                "'{name}' is not a usable tensor name"
            )));
        }
        if self.tensors.contains_key(name) {
            return Err(Error::invalid(format!(
                "a tensor named '{name}' is already registered"
            )));
        }
        let place = place.unwrap_or_else(|| TensorBox::whole(global_shape));
        let byte_len = byte_len(name, dtype, &place.shape)?;
        // No byte of an empty tensor is ever read or written.
        let data = match NonNull::new(data) {
            None if byte_len == 0 => NonNull::dangling(),
            data => data.ok_or_else(|| Error::invalid(format!("tensor '{name}': data is NULL")))?,
        };
        self.tensors.insert(
            name.to_owned(),
            Tensor {
                name: name.to_owned(),
                kind,
                dtype,
                shape: place.shape.clone(),
                global_shape: global_shape.to_vec(),
                place,
                data,
                byte_len,
            },
        );
        Ok(())
    }

    pub fn unregister(&mut self, name: &str) -> Result<()> {
        self.tensors
            .remove(name)
            .map(drop)
            .ok_or_else(|| Error::invalid(format!("no tensor named '{name}' is registered")))
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Tensor> {
        self.tensors.values()
    }

    /// The tensors in file order: larger alignment first, then by name.
    pub fn in_file_order(&self) -> Vec<&Tensor> {
        let mut tensors: Vec<&Tensor> = self.tensors.values().collect();
        tensors.sort_by(|a, b| {
            (a.dtype.layout_rank(), &a.name).cmp(&(b.dtype.layout_rank(), &b.name))
        });
        tensors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_checks_names_shapes_and_data() {
        let mut registry = TensorRegistry::default();
        let mut buffer = [0f32; 6];
        let data = buffer.as_mut_ptr().cast();
        // SAFETY: the buffers outlive the registry, which only this test uses.
        unsafe {
            registry.register("w", DType::F32, &[2, 3], data).unwrap();
            let err = |result: Result<()>| result.unwrap_err().to_string();
            assert!(err(registry.register("w", DType::F32, &[6], data)).contains("already"));
            registry.register("z", DType::F32, &[2, 0], data).unwrap();
            let null = std::ptr::null_mut();
            registry.register("e", DType::F64, &[0], null).unwrap();
            assert!(
                err(registry.register("o", DType::F64, &[u64::MAX, 2], data)).contains("overflows")
            );
            assert!(
                err(registry.register("n", DType::F32, &[1], std::ptr::null_mut()))
                    .contains("NULL")
            );
            assert!(err(registry.register("__metadata__", DType::U8, &[1], data)).contains("name"));
            registry.register("scalar", DType::I64, &[], data).unwrap();
        }
        assert_eq!(registry.get("w").unwrap().byte_len(), 24);
        assert_eq!(registry.get("scalar").unwrap().byte_len(), 8);
        let order: Vec<_> = registry
            .in_file_order()
            .iter()
            .map(|t| t.name.clone())
            .collect();
        assert_eq!(order, ["scalar", "e", "w", "z"]);
        registry.unregister("w").unwrap();
        assert!(registry.unregister("w").is_err());
    }

    #[test]
    fn dtype_names_and_values_round_trip() {
        for dtype in DType::ALL {
            assert_eq!(DType::from_name(dtype.name()), Some(dtype));
            assert_eq!(DType::from_u32(dtype as u32), Some(dtype));
        }
        assert_eq!(DType::from_name("F8_E4M3"), None);
        assert_eq!(DType::from_u32(DType::ALL.len() as u32), None);
        assert_eq!(DType::from_u32(u32::MAX), None);
    }
}
