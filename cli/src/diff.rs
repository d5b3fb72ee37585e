//! `ckpt diff A B`: the built-in saver's tensors of two checkpoints,
//! compared one by one, values decoded to f64.

use std::collections::BTreeMap;

use ckpt_manager::{DType, FileTensor, TensorFile};
use serde_json::json;

use crate::output::{self, shown};
use crate::{location, Failure, Outcome};

/// What one tensor name compares to.
#[derive(Debug, PartialEq)]
enum Comparison {
    OnlyInA,
    OnlyInB,
    /// Dtype or shape differ: `(dtype, shape)` of each.
    Changed(String, String),
    Identical,
    /// Values differ: the largest absolute and relative difference.
    Differ {
        max_abs: f64,
        max_rel: f64,
    },
}

/// A tensor's values as f64, from its little-endian bytes.
pub fn decode(dtype: DType, bytes: &[u8]) -> Vec<f64> {
    let chunks = bytes.chunks_exact(dtype.size());
    let array = |chunk: &[u8]| -> [u8; 8] {
        let mut out = [0u8; 8];
        out[..chunk.len()].copy_from_slice(chunk);
        out
    };
    chunks
        .map(|c| {
            let b = array(c);
            match dtype {
                DType::F64 => f64::from_le_bytes(b),
                DType::F32 => f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                DType::F16 => f16_to_f64(u16::from_le_bytes([b[0], b[1]])),
                // bfloat16 is the high half of an f32.
                DType::BF16 => f64::from(f32::from_bits(
                    u32::from(u16::from_le_bytes([b[0], b[1]])) << 16,
                )),
                DType::I64 => i64::from_le_bytes(b) as f64,
                DType::I32 => f64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                DType::I16 => f64::from(i16::from_le_bytes([b[0], b[1]])),
                DType::I8 => f64::from(b[0] as i8),
                DType::U64 => u64::from_le_bytes(b) as f64,
                DType::U32 => f64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                DType::U16 => f64::from(u16::from_le_bytes([b[0], b[1]])),
                DType::U8 | DType::Bool => f64::from(b[0]),
            }
        })
        .collect()
}

/// IEEE half precision to f64, subnormals, infinities and NaN included.
fn f16_to_f64(bits: u16) -> f64 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exponent = i32::from((bits >> 10) & 0x1f);
    let fraction = f64::from(bits & 0x3ff);
    match exponent {
        0 => sign * fraction * 2f64.powi(-24),
        31 if fraction == 0.0 => sign * f64::INFINITY,
        31 => f64::NAN,
        _ => sign * (1.0 + fraction / 1024.0) * 2f64.powi(exponent - 15),
    }
}

/// The largest absolute and relative (to the larger magnitude) difference;
/// NaN against NaN is equal, NaN against a number infinitely different.
fn differences(a: &[f64], b: &[f64]) -> (f64, f64) {
    let (mut max_abs, mut max_rel) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        if x == y || (x.is_nan() && y.is_nan()) {
            continue;
        }
        let abs = (x - y).abs();
        let abs = if abs.is_nan() { f64::INFINITY } else { abs };
        let scale = x.abs().max(y.abs());
        let rel = if scale.is_finite() && scale > 0.0 {
            abs / scale
        } else {
            f64::INFINITY
        };
        max_abs = max_abs.max(abs);
        max_rel = max_rel.max(rel);
    }
    (max_abs, max_rel)
}

fn describe(tensor: &FileTensor) -> String {
    format!("{} {:?}", tensor.dtype.name(), tensor.shape)
}

fn open(argument: &str) -> Result<TensorFile, Failure> {
    let prefix = location::prefix(argument)?;
    TensorFile::open(&prefix)?.ok_or_else(|| {
        Failure::Trouble(format!(
            "'{}' has no {}.safetensors: only the built-in saver's tensors are compared",
            prefix.display(),
            shown(&prefix)
        ))
    })
}

fn compare(a: &TensorFile, b: &TensorFile) -> Result<BTreeMap<String, Comparison>, Failure> {
    let in_a: BTreeMap<&str, &FileTensor> = a
        .header()
        .tensors
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let in_b: BTreeMap<&str, &FileTensor> = b
        .header()
        .tensors
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let mut result = BTreeMap::new();
    for name in in_a.keys().chain(in_b.keys()) {
        if result.contains_key(*name) {
            continue;
        }
        let comparison = match (in_a.get(name), in_b.get(name)) {
            (Some(_), None) => Comparison::OnlyInA,
            (None, Some(_)) => Comparison::OnlyInB,
            (Some(x), Some(y)) if x.dtype != y.dtype || x.shape != y.shape => {
                Comparison::Changed(describe(x), describe(y))
            }
            (Some(x), Some(y)) => {
                let (bytes_a, bytes_b) = (a.read(x)?, b.read(y)?);
                if bytes_a == bytes_b {
                    Comparison::Identical
                } else {
                    let (max_abs, max_rel) =
                        differences(&decode(x.dtype, &bytes_a), &decode(y.dtype, &bytes_b));
                    Comparison::Differ { max_abs, max_rel }
                }
            }
            (None, None) => unreachable!("the name comes from one side"),
        };
        result.insert((*name).to_owned(), comparison);
    }
    Ok(result)
}

pub fn run(a: &str, b: &str, json: bool) -> Outcome {
    let compared = compare(&open(a)?, &open(b)?)?;
    let same = compared.values().all(|c| *c == Comparison::Identical);
    if json {
        let rows: Vec<_> = compared
            .iter()
            .map(|(name, comparison)| match comparison {
                Comparison::OnlyInA => json!({"name": name, "status": "only-in-a"}),
                Comparison::OnlyInB => json!({"name": name, "status": "only-in-b"}),
                Comparison::Changed(x, y) => {
                    json!({"name": name, "status": "changed", "a": x, "b": y})
                }
                Comparison::Identical => json!({"name": name, "status": "identical"}),
                // JSON has no infinity: those are strings, as in manifests.
                Comparison::Differ { max_abs, max_rel } => json!({
                    "name": name, "status": "differ",
                    "max_abs": number(*max_abs), "max_rel": number(*max_rel),
                }),
            })
            .collect();
        output::print_json(&json!({"a": a, "b": b, "identical": same, "tensors": rows}));
    } else {
        let rows = compared
            .iter()
            .map(|(name, comparison)| {
                let (status, detail) = match comparison {
                    Comparison::OnlyInA => ("only in A", String::new()),
                    Comparison::OnlyInB => ("only in B", String::new()),
                    Comparison::Changed(x, y) => ("changed", format!("{x} -> {y}")),
                    Comparison::Identical => ("identical", String::new()),
                    Comparison::Differ { max_abs, max_rel } => (
                        "differ",
                        format!("max abs {max_abs:.6e}, max rel {max_rel:.6e}"),
                    ),
                };
                vec![name.clone(), status.to_owned(), detail]
            })
            .collect();
        println!(
            "{}",
            output::table(&["tensor", "status", "difference"], rows, &[])
        );
    }
    if same {
        Ok(())
    } else {
        Err(Failure::No(String::new()))
    }
}

fn number(value: f64) -> serde_json::Value {
    if value.is_finite() {
        json!(value)
    } else {
        json!("Infinity")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dtype_decodes() {
        let cases: &[(DType, &[u8], f64)] = &[
            (DType::F64, &(-2.5f64).to_le_bytes(), -2.5),
            (DType::F32, &1.5f32.to_le_bytes(), 1.5),
            (DType::F16, &0x3c00u16.to_le_bytes(), 1.0),
            (DType::F16, &0xc000u16.to_le_bytes(), -2.0),
            (DType::F16, &0x0001u16.to_le_bytes(), 2f64.powi(-24)),
            (DType::BF16, &0x3fc0u16.to_le_bytes(), 1.5),
            (DType::I64, &(-7i64).to_le_bytes(), -7.0),
            (DType::I32, &(-7i32).to_le_bytes(), -7.0),
            (DType::I16, &(-7i16).to_le_bytes(), -7.0),
            (DType::I8, &[0xf9], -7.0),
            (DType::U64, &7u64.to_le_bytes(), 7.0),
            (DType::U32, &7u32.to_le_bytes(), 7.0),
            (DType::U16, &7u16.to_le_bytes(), 7.0),
            (DType::U8, &[7], 7.0),
            (DType::Bool, &[1], 1.0),
        ];
        for (dtype, bytes, expected) in cases {
            assert_eq!(decode(*dtype, bytes), [*expected], "{dtype:?}");
        }
        assert!(f16_to_f64(0x7c00).is_infinite());
        assert!(f16_to_f64(0x7e00).is_nan());
    }

    #[test]
    fn differences_are_absolute_and_relative() {
        assert_eq!(differences(&[1.0, 4.0], &[1.0, 2.0]), (2.0, 0.5));
        assert_eq!(differences(&[f64::NAN], &[f64::NAN]), (0.0, 0.0));
        assert_eq!(
            differences(&[f64::NAN], &[1.0]),
            (f64::INFINITY, f64::INFINITY)
        );
    }
}
