//! A checkpoint whose manifest's tensor table (version 2) is hostile or
//! corrupt: every case is a clear error, never a panic, a hang, a huge
//! allocation or a read outside the file. A damaged newest checkpoint makes
//! a restore fall back to the previous one, and the registered buffers end
//! up holding exactly its bytes; `CheckpointTensors` refuses the table.

use std::fs;
use std::path::{Path, PathBuf};

use ckpt_manager::{
    Callbacks, CheckpointManager, CheckpointTensors, Config, DType, ErrorKind, Manifest, MaxToKeep,
    TensorBox,
};
use serde_json::{json, Value};

/// One buffer of each kind: a rank-local `a` (F32 [4, 3]), a sharded `w`
/// (I32 [8, 2], this process's box the whole of it) and a replicated `r`
/// (U8 [5]).
#[derive(Debug, Clone, PartialEq)]
struct Buffers {
    a: Vec<u8>,
    w: Vec<u8>,
    r: Vec<u8>,
}

impl Buffers {
    fn seeded(seed: u8) -> Self {
        let bytes = |len: usize, salt: u8| -> Vec<u8> {
            (0..len)
                .map(|i| (i as u8).wrapping_mul(13) ^ seed.wrapping_mul(71) ^ salt)
                .collect()
        };
        Buffers {
            a: bytes(4 * 3 * 4, 1),
            w: bytes(8 * 2 * 4, 2),
            r: bytes(5, 3),
        }
    }

    fn sentinel() -> Self {
        Buffers {
            a: vec![0xA5; 4 * 3 * 4],
            w: vec![0xA5; 8 * 2 * 4],
            r: vec![0xA5; 5],
        }
    }

    /// # Safety
    /// The buffers must outlive the manager.
    unsafe fn register(&mut self, manager: &mut CheckpointManager) {
        let whole = TensorBox {
            offset: vec![0, 0],
            shape: vec![8, 2],
        };
        unsafe {
            manager
                .register_tensor("a", DType::F32, &[4, 3], self.a.as_mut_ptr())
                .unwrap();
            manager
                .register_tensor_slice("w", DType::I32, &[8, 2], whole, self.w.as_mut_ptr())
                .unwrap();
            manager
                .register_replicated_tensor("r", DType::U8, &[5], self.r.as_mut_ptr())
                .unwrap();
        }
    }
}

fn open(dir: &Path) -> CheckpointManager {
    let config = Config::new(dir, MaxToKeep::Last(3)).unwrap();
    CheckpointManager::new(config, Callbacks::new()).unwrap()
}

/// Saves ckpt-1 and ckpt-2 with different bytes; returns ckpt-1's.
fn save_two(dir: &Path) -> Buffers {
    let mut first = Buffers::seeded(1);
    let mut second = Buffers::seeded(2);
    for buffers in [&mut first, &mut second] {
        let mut manager = open(dir);
        unsafe { buffers.register(&mut manager) };
        manager.save(None, true).unwrap().unwrap();
    }
    first
}

fn manifest_path(prefix: &Path) -> PathBuf {
    PathBuf::from(format!("{}.ckpt-manifest.json", prefix.display()))
}

fn tensor_file(prefix: &Path) -> PathBuf {
    PathBuf::from(format!("{}.safetensors", prefix.display()))
}

fn edit_manifest(prefix: &Path, edit: impl FnOnce(&mut Value)) {
    let path = manifest_path(prefix);
    let mut manifest: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    edit(&mut manifest);
    fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
}

/// The table's entry for tensor `name`.
fn tensor<'v>(manifest: &'v mut Value, name: &str) -> &'v mut Value {
    manifest["tensors"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|t| t["name"] == name)
        .unwrap()
}

/// Restores `dir` into sentinel-filled buffers.
fn restore(dir: &Path) -> (ckpt_manager::Result<Option<PathBuf>>, Buffers) {
    let mut buffers = Buffers::sentinel();
    let mut manager = open(dir);
    unsafe { buffers.register(&mut manager) };
    let result = manager.restore_or_initialize();
    drop(manager);
    (result, buffers)
}

/// Saves two checkpoints, applies `edit` to ckpt-2's manifest and checks
/// that the restore falls back to ckpt-1 with exactly its bytes, and that
/// `CheckpointTensors` finds ckpt-2 damaged, saying `expected`.
fn assert_damaged_table(case: &str, expected: &str, edit: impl FnOnce(&mut Value)) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let first = save_two(dir);
    let latest = dir.join("ckpt-2");
    edit_manifest(&latest, edit);
    let (result, buffers) = restore(dir);
    match result {
        Ok(Some(restored)) => assert_eq!(restored, dir.join("ckpt-1"), "{case}"),
        other => panic!("{case}: expected a fall back to ckpt-1, got {other:?}"),
    }
    assert!(buffers == first, "{case}: the buffers hold other bytes");
    let err = match CheckpointTensors::open(&latest) {
        Err(err) => err,
        Ok(_) => panic!("{case}: CheckpointTensors reads the hostile table"),
    };
    assert_eq!(err.kind(), ErrorKind::Damaged, "{case}: {err}");
    assert!(err.to_string().contains(expected), "{case}: {err}");
}

#[test]
fn an_intact_pair_restores_the_latest() {
    let root = tempfile::tempdir().unwrap();
    save_two(root.path());
    let (result, buffers) = restore(root.path());
    assert_eq!(result.unwrap(), Some(root.path().join("ckpt-2")));
    assert!(buffers == Buffers::seeded(2));
    let manifest: Value =
        serde_json::from_slice(&fs::read(manifest_path(&root.path().join("ckpt-2"))).unwrap())
            .unwrap();
    assert_eq!(manifest["version"], 2);
    assert_eq!(manifest["world_size"], 1);
}

#[test]
fn byte_ranges_that_lie_are_damage() {
    assert_damaged_table("short range", "byte range", |m| {
        let b = &mut tensor(m, "w")["boxes"][0];
        b["end"] = json!(b["end"].as_u64().unwrap() - 4);
    });
    assert_damaged_table("start after end", "byte range", |m| {
        let b = &mut tensor(m, "w")["boxes"][0];
        let (start, end) = (b["start"].clone(), b["end"].clone());
        b["start"] = end;
        b["end"] = start;
    });
    assert_damaged_table("past the end of the file", "byte range", |m| {
        let b = &mut tensor(m, "a")["boxes"][0];
        b["start"] = json!(u64::MAX - 48);
        b["end"] = json!(u64::MAX);
    });
    assert_damaged_table("wrapping range", "byte range", |m| {
        let b = &mut tensor(m, "a")["boxes"][0];
        b["start"] = json!(u64::MAX - 7);
        b["end"] = json!(40);
    });
    assert_damaged_table("too many chunk CRCs", "byte range", |m| {
        tensor(m, "w")["boxes"][0]["chunk_crc32c"] = json!([1, 2]);
    });
}

#[test]
fn shapes_that_overflow_are_damage() {
    assert_damaged_table("box shape overflows u64", "byte range", |m| {
        // Rank-local pieces may have their own shapes.
        tensor(m, "a")["boxes"][0]["shape"] = json!([1u64 << 32, 1u64 << 32]);
    });
    assert_damaged_table("global shape overflows u64", "overflows", |m| {
        tensor(m, "w")["shape"] = json!([u64::MAX, 8]);
    });
    assert_damaged_table("box outside its tensor", "outside", |m| {
        tensor(m, "w")["boxes"][0]["offset"] = json!([1, 0]);
    });
    assert_damaged_table("box ending past u64", "outside", |m| {
        let t = tensor(m, "r");
        t["shape"] = json!([u64::MAX]);
        t["boxes"][0]["offset"] = json!([u64::MAX - 2]);
    });
    assert_damaged_table("rank-local box off its origin", "outside", |m| {
        tensor(m, "a")["boxes"][0]["offset"] = json!([0, 1]);
    });
}

#[test]
fn boxes_naming_other_files_are_damage() {
    for suffix in [
        "/../ckpt-1.safetensors",
        "/../../../../etc/passwd",
        "/etc/passwd",
        ".index",
        "..",
        "",
    ] {
        assert_damaged_table(suffix, "unlisted file", |m| {
            tensor(m, "r")["boxes"][0]["file"] = json!(suffix);
        });
    }
}

#[test]
fn tables_that_break_their_own_rules_are_damage() {
    assert_damaged_table("duplicate names", "unique", |m| {
        let copy = tensor(m, "r").clone();
        m["tensors"].as_array_mut().unwrap().push(copy);
    });
    assert_damaged_table("unknown dtype", "dtype", |m| {
        tensor(m, "r")["dtype"] = json!("F8");
    });
    assert_damaged_table("unknown kind", "mirrored", |m| {
        tensor(m, "r")["kind"] = json!("mirrored");
    });
}

#[test]
fn overlapping_saved_boxes_are_damage() {
    // A second box of `w` over its rows 4..8 whose bytes (and CRC32C) are
    // those of rows 0..4: two values for the same elements.
    assert_damaged_table("overlapping boxes", "overlap", |m| {
        let t = tensor(m, "w");
        let mut second = t["boxes"][0].clone();
        let start = second["start"].as_u64().unwrap();
        second["offset"] = json!([4, 0]);
        second["shape"] = json!([4, 2]);
        second["end"] = json!(start + 32);
        second["crc32c"] = json!(crc32c::crc32c(&Buffers::seeded(2).w[..32]));
        t["boxes"].as_array_mut().unwrap().push(second);
    });
}

#[test]
fn ranks_and_kinds_the_table_cannot_have_are_damage() {
    assert_damaged_table("world size 0", "world size", |m| {
        m["world_size"] = json!(0);
    });
    assert_damaged_table("no world size", "world size", |m| {
        m.as_object_mut().unwrap().remove("world_size");
    });
    assert_damaged_table("a rank past the world", "rank", |m| {
        tensor(m, "a")["boxes"][0]["rank"] = json!(1);
    });
    assert_damaged_table("a rank-local box without a rank", "rank", |m| {
        tensor(m, "a")["boxes"][0]
            .as_object_mut()
            .unwrap()
            .remove("rank");
    });
    assert_damaged_table("two pieces of one rank", "rank", |m| {
        let t = tensor(m, "a");
        let copy = t["boxes"][0].clone();
        t["boxes"].as_array_mut().unwrap().push(copy);
    });
    assert_damaged_table("a sharded box with a rank", "rank", |m| {
        tensor(m, "w")["boxes"][0]["rank"] = json!(0);
    });
}

#[test]
fn a_version_that_does_not_match_the_table_is_damage() {
    assert_damaged_table("version 2 with an empty table", "version 2", |m| {
        m["tensors"] = json!([]);
    });
    assert_damaged_table("version 2 without a table", "version 2", |m| {
        m.as_object_mut().unwrap().remove("tensors");
    });
    assert_damaged_table("version 1 with a table", "version 1", |m| {
        m["version"] = json!(1);
    });
}

/// The manifest reader bounds what it allocates: a table of many dimensions
/// or many boxes, within the manifest's size limit, is refused quickly.
#[test]
fn huge_tables_are_refused_without_huge_allocations() {
    assert_damaged_table("a quarter of a million dimensions", "outside", |m| {
        let t = tensor(m, "w");
        t["shape"] = json!(vec![1u64; 250_000]);
    });
    assert_damaged_table("twenty thousand boxes", "overlap", |m| {
        let t = tensor(m, "w");
        let copy = t["boxes"][0].clone();
        t["boxes"] = json!(vec![copy; 20_000]);
    });
}

/// A table that is consistent but has a tensor of a quarter of a million dimensions (of
/// one element) reads in time and memory proportional to the table.
#[test]
fn a_tensor_of_many_dimensions_reads_its_one_element() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    save_two(dir);
    let latest = dir.join("ckpt-2");
    let first_byte = Buffers::seeded(2).r[0];
    edit_manifest(&latest, |m| {
        let t = tensor(m, "r");
        t["shape"] = json!(vec![1u64; 250_000]);
        let b = &mut t["boxes"][0];
        b["offset"] = json!(vec![0u64; 250_000]);
        b["shape"] = json!(vec![1u64; 250_000]);
        b["end"] = json!(b["start"].as_u64().unwrap() + 1);
        b["crc32c"] = json!(crc32c::crc32c(&[first_byte]));
    });
    let tensors = CheckpointTensors::open(&latest).unwrap().unwrap();
    assert_eq!(tensors.read_global("r").unwrap(), [first_byte]);
}

/// Restores ckpt-2 after `damage` to its tensor file, with a manifest
/// that is intact: the restore falls back to ckpt-1.
fn assert_falls_back_past(case: &str, damage: impl FnOnce(&Path)) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let first = save_two(dir);
    damage(&tensor_file(&dir.join("ckpt-2")));
    let (result, buffers) = restore(dir);
    match result {
        Ok(Some(restored)) => assert_eq!(restored, dir.join("ckpt-1"), "{case}"),
        other => panic!("{case}: expected a fall back to ckpt-1, got {other:?}"),
    }
    assert!(buffers == first, "{case}: the buffers hold other bytes");
    let tensors = CheckpointTensors::open(&dir.join("ckpt-2"))
        .unwrap()
        .expect("a table");
    for name in ["a", "w", "r"] {
        let err = tensors.read_global(name).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Damaged, "{case}: {name}: {err}");
    }
}

#[test]
fn a_tensor_file_damaged_after_its_manifest_falls_back() {
    assert_falls_back_past("truncated", |file| {
        let len = fs::metadata(file).unwrap().len();
        fs::OpenOptions::new()
            .write(true)
            .open(file)
            .unwrap()
            .set_len(len - 100)
            .unwrap();
    });
    assert_falls_back_past("emptied", |file| {
        fs::write(file, b"").unwrap();
    });
    assert_falls_back_past("flipped bytes", |file| {
        let mut bytes = fs::read(file).unwrap();
        let len = bytes.len();
        for at in [len - 1, len - 40, len - 100] {
            bytes[at] ^= 0x40;
        }
        fs::write(file, bytes).unwrap();
    });
    assert_falls_back_past("removed", |file| fs::remove_file(file).unwrap());
}

/// Saves one checkpoint, flips the last byte of its tensor file (part of
/// `w`, the last tensor in the file) and restores into sentinel buffers.
fn restore_the_only_damaged_checkpoint() -> (ckpt_manager::Result<Option<PathBuf>>, Buffers) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let mut saved = Buffers::seeded(1);
    let prefix = {
        let mut manager = open(dir);
        unsafe { saved.register(&mut manager) };
        manager.save(None, true).unwrap().unwrap()
    };
    let file = tensor_file(&prefix);
    let mut bytes = fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&file, bytes).unwrap();
    restore(dir)
}

/// With no older checkpoint to fall back to, a damaged tensor file is
/// `CHECKPOINT_DAMAGED`, and the error says when buffers were written.
#[test]
fn a_damaged_only_checkpoint_is_damage_and_says_the_buffers_were_written() {
    let (result, buffers) = restore_the_only_damaged_checkpoint();
    let err = result.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Damaged, "{err}");
    assert_ne!(
        buffers,
        Buffers::sentinel(),
        "the case no longer writes buffers"
    );
    assert!(
        err.to_string()
            .contains("the buffers hold the bytes of the damaged checkpoint"),
        "{err}"
    );
}

/// Two boxes whose byte ranges overlap in one file: a save never writes
/// that, so a table that says so is damaged (here `r` claims `a`'s bytes).
#[test]
fn byte_ranges_shared_by_two_boxes_are_damage() {
    assert_damaged_table("shared bytes", "overlap", |m| {
        let a = tensor(m, "a")["boxes"][0].clone();
        let r = tensor(m, "r");
        r["shape"] = json!([48]);
        let b = &mut r["boxes"][0];
        b["shape"] = json!([48]);
        for key in ["start", "end", "crc32c"] {
            b[key] = a[key].clone();
        }
    });
}

/// A box over 4 MiB without its per-piece CRC32Cs would be read and
/// checked whole; a save always writes them.
#[test]
fn a_large_box_without_piece_checksums_is_damage() {
    assert_damaged_table("no chunk CRCs", "byte range", |m| {
        let big = 5u64 << 20;
        let file = m["files"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|f| f["suffix"] == ".safetensors")
            .unwrap();
        file["size"] = json!(file["size"].as_u64().unwrap() + big);
        let r = tensor(m, "r");
        r["shape"] = json!([big]);
        let b = &mut r["boxes"][0];
        b["shape"] = json!([big]);
        b["end"] = json!(b["start"].as_u64().unwrap() + big);
    });
}

/// A table that claims a terabyte tensor in a file it says is that large
/// (the file is a few hundred bytes): `CheckpointTensors` finds the file
/// short before it allocates the tensor.
#[test]
fn a_tensor_claiming_more_bytes_than_its_file_has_is_not_allocated() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    save_two(dir);
    let latest = dir.join("ckpt-2");
    let huge = 1u64 << 40;
    edit_manifest(&latest, |m| {
        let file = m["files"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|f| f["suffix"] == ".safetensors")
            .unwrap();
        file["size"] = json!(huge * 2);
        let r = tensor(m, "r");
        r["shape"] = json!([huge]);
        let b = &mut r["boxes"][0];
        b["shape"] = json!([huge]);
        b["start"] = json!(huge);
        b["end"] = json!(huge * 2);
        b["chunk_crc32c"] = json!(vec![0u32; (huge >> 22) as usize]);
    });
    let tensors = CheckpointTensors::open(&latest).unwrap().unwrap();
    let err = tensors.read_global("r").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Damaged, "{err}");
    let err = tensors
        .read_region(
            "r",
            &TensorBox {
                offset: vec![huge - 4],
                shape: vec![4],
            },
            &mut [0u8; 4],
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Damaged, "{err}");
}

/// The fuzzer's seed of a tensor table (two ranks, every kind) is one the
/// reader accepts, so that its mutations reach the table's checks.
#[test]
fn the_fuzzers_tensor_table_seed_reads_and_round_trips() {
    let seed = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus/manifest_reader/seed-v2-tensor-table.json");
    let manifest = Manifest::from_json(&fs::read(seed).unwrap()).unwrap();
    assert_eq!(manifest.world_size, Some(2));
    assert_eq!(manifest.tensors.len(), 3);
    assert_eq!(Manifest::from_json(&manifest.to_json()).unwrap(), manifest);
}

/// An absurd world size allocates nothing by it: the pieces the table has
/// are this process's, so they restore; a tool refuses the rank-local
/// tensor's global value, as for any world of several ranks.
#[test]
fn an_absurd_world_size_costs_nothing() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    save_two(dir);
    let latest = dir.join("ckpt-2");
    edit_manifest(&latest, |m| m["world_size"] = json!(u32::MAX));
    let (result, buffers) = restore(dir);
    assert_eq!(result.unwrap(), Some(latest.clone()));
    assert!(buffers == Buffers::seeded(2));
    let tensors = CheckpointTensors::open(&latest).unwrap().unwrap();
    let err = tensors.read_global("a").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TensorMismatch, "{err}");
    assert_eq!(
        tensors.read_rank_piece("a", 0).unwrap().unwrap(),
        Buffers::seeded(2).a
    );
}
