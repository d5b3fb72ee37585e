//! `ckpt show`, `verify` and `export` on a checkpoint four ranks saved
//! (ranks as threads, tests/support/thread_ranks.rs): a tensor sharded by
//! rows, a replicated one and a rank-local one.

#[path = "support/command.rs"]
mod command;
#[path = "../../tests/support/thread_ranks.rs"]
mod thread_ranks;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use ckpt_manager::{Callbacks, CheckpointManager, Config, DType, MaxToKeep, TensorBox};
use command::{ckpt, json, text};
use serde_json::Value;

const RANKS: u32 = 4;
const ROWS: u64 = 8;
const COLS: u64 = 6;

fn weight(row: u64, col: u64) -> f32 {
    (row * 10 + col) as f32
}

fn bias() -> Vec<i32> {
    (1..=COLS as i32).collect()
}

fn rng(rank: u32) -> Vec<u8> {
    vec![rank as u8, rank as u8 + 100]
}

/// Saves one checkpoint on four ranks: `w` [8, 6] f32, rank r holding
/// rows 2r and 2r+1 (rank 3 none when `gap`); `bias` replicated; `rng`
/// rank-local. Returns its prefix.
fn save_on_four_ranks(directory: &Path, gap: bool) -> PathBuf {
    let directory = directory.to_path_buf();
    let prefixes = thread_ranks::on_ranks(RANKS, move |communicator| {
        let rank = communicator.rank;
        let mut config = Config::new(&directory, MaxToKeep::All).unwrap();
        config.set_communicator(Some(communicator));
        config.set_coordination_timeout(10.0).unwrap();
        let mut manager = CheckpointManager::new(config, Callbacks::new().log(|_, _| {})).unwrap();
        let first = 2 * u64::from(rank);
        let mut rows: Vec<f32> = (first..first + 2)
            .flat_map(|row| (0..COLS).map(move |col| weight(row, col)))
            .collect();
        let mut bias = bias();
        let mut rng = rng(rank);
        // SAFETY: the buffers outlive the manager, dropped at the end.
        unsafe {
            if !(gap && rank == 3) {
                let place = TensorBox {
                    offset: vec![first, 0],
                    shape: vec![2, COLS],
                };
                manager
                    .register_tensor_slice(
                        "w",
                        DType::F32,
                        &[ROWS, COLS],
                        place,
                        rows.as_mut_ptr().cast(),
                    )
                    .unwrap();
            }
            manager
                .register_replicated_tensor("bias", DType::I32, &[COLS], bias.as_mut_ptr().cast())
                .unwrap();
            manager
                .register_tensor("rng", DType::U8, &[2], rng.as_mut_ptr())
                .unwrap();
        }
        let prefix = manager.save(None, false).unwrap().unwrap();
        drop(manager);
        prefix
    });
    prefixes[0].clone()
}

/// A file after a checkpoint's prefix.
fn file_of(prefix: &Path, suffix: &str) -> PathBuf {
    let mut name = prefix.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// A safetensors file's tensors: name to (dtype, shape, bytes), and its
/// metadata; every check HF's loader makes on the layout is asserted.
type Tensors = BTreeMap<String, (String, Vec<u64>, Vec<u8>)>;

fn read_safetensors(path: &Path) -> (Tensors, Value) {
    let bytes = fs::read(path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(header_len % 8, 0, "the header is padded to 8 bytes");
    let header: serde_json::Map<String, Value> =
        serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let data = &bytes[8 + header_len..];
    let mut tensors = Tensors::new();
    let mut ranges = Vec::new();
    for (name, entry) in &header {
        if name == "__metadata__" {
            continue;
        }
        let offsets: Vec<usize> = serde_json::from_value(entry["data_offsets"].clone()).unwrap();
        ranges.push((offsets[0], offsets[1]));
        tensors.insert(
            name.clone(),
            (
                entry["dtype"].as_str().unwrap().to_owned(),
                serde_json::from_value(entry["shape"].clone()).unwrap(),
                data[offsets[0]..offsets[1]].to_vec(),
            ),
        );
    }
    ranges.sort();
    let mut next = 0;
    for (start, end) in ranges {
        assert_eq!(start, next, "tensors are contiguous");
        next = end;
    }
    assert_eq!(next, data.len(), "the data ends with the last tensor");
    (tensors, header["__metadata__"].clone())
}

fn f32_bytes(values: impl IntoIterator<Item = f32>) -> Vec<u8> {
    values.into_iter().flat_map(f32::to_le_bytes).collect()
}

#[test]
fn show_lists_each_tensors_kind_shape_and_boxes() {
    let root = tempfile::tempdir().unwrap();
    let prefix = save_on_four_ranks(root.path(), false);

    let ran = ckpt(&["show", text(&prefix), "--json"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let shown = json(&ran);
    assert_eq!(shown["world_size"], 4);
    let tensors = shown["tensors"].as_array().unwrap();
    let summary: Vec<(&str, &str, &str, Value, usize)> = tensors
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap(),
                t["kind"].as_str().unwrap(),
                t["dtype"].as_str().unwrap(),
                t["shape"].clone(),
                t["boxes"].as_array().unwrap().len(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("bias", "replicated", "I32", serde_json::json!([6]), 1),
            ("rng", "rank_local", "U8", serde_json::json!([2]), 4),
            ("w", "sharded", "F32", serde_json::json!([8, 6]), 4),
        ]
    );
    // Each box of `w` is its rank's rows, in that rank's file, and the
    // byte range it names holds those rows.
    for (rank, saved) in tensors[2]["boxes"].as_array().unwrap().iter().enumerate() {
        let rank = rank as u64;
        assert_eq!(saved["offset"], serde_json::json!([2 * rank, 0]));
        assert_eq!(saved["shape"], serde_json::json!([2, 6]));
        let suffix = saved["file"].as_str().unwrap();
        assert_eq!(suffix, format!(".rank-{rank:05}-of-00004.safetensors"));
        let bytes = fs::read(file_of(&prefix, suffix)).unwrap();
        let (start, end) = (
            saved["start"].as_u64().unwrap() as usize,
            saved["end"].as_u64().unwrap() as usize,
        );
        let rows = (2 * rank..2 * rank + 2).flat_map(|r| (0..COLS).map(move |c| weight(r, c)));
        assert_eq!(bytes[start..end], f32_bytes(rows));
    }
    let ranks: Vec<u64> = tensors[1]["boxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["rank"].as_u64().unwrap())
        .collect();
    assert_eq!(ranks, [0, 1, 2, 3]);

    let ran = ckpt(&["show", text(&prefix)]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(
        ran.stdout.contains("tensors     3 (saved by 4 rank(s))"),
        "{}",
        ran.stdout
    );
    let line = |start: &str| {
        ran.stdout
            .lines()
            .find(|line| line.trim_start().starts_with(start))
            .unwrap_or_else(|| panic!("no line '{start}' in\n{}", ran.stdout))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(line("w "), "w sharded F32 [8, 6] 4 192");
    assert_eq!(line("bias "), "bias replicated I32 [6] 1 24");
    let rank_2_box = ran
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("w ") && l.contains("[4, 0]"))
        .unwrap();
    assert!(
        rank_2_box.contains("[2, 6]") && rank_2_box.contains(".rank-00002-of-00004.safetensors"),
        "{rank_2_box}"
    );
}

#[test]
fn verify_names_the_damaged_tensor_and_box() {
    let root = tempfile::tempdir().unwrap();
    let prefix = save_on_four_ranks(root.path(), false);
    let ran = ckpt(&["verify", text(&prefix), "--json"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let checked = &json(&ran)["checkpoints"][0];
    assert_eq!(checked["integrity"], "intact");
    assert_eq!(checked["boxes_checked"], 1 + 4 + 4);
    assert_eq!(checked["damaged_boxes"], serde_json::json!([]));

    // One flipped byte in rank 2's rows of `w`.
    let shown = json(&ckpt(&["show", text(&prefix), "--json"]));
    let saved = &shown["tensors"][2]["boxes"][2];
    let file = file_of(&prefix, saved["file"].as_str().unwrap());
    let mut bytes = fs::read(&file).unwrap();
    bytes[saved["start"].as_u64().unwrap() as usize + 5] ^= 0x40;
    fs::write(&file, bytes).unwrap();

    let ran = ckpt(&["verify", text(&prefix), "--json"]);
    assert_eq!(ran.code, 1, "{}", ran.stderr);
    let checked = &json(&ran)["checkpoints"][0];
    assert_eq!(checked["integrity"], "damaged");
    let damaged = checked["damaged_boxes"].as_array().unwrap();
    assert_eq!(damaged.len(), 1, "{damaged:?}");
    assert_eq!(damaged[0]["tensor"], "w");
    assert_eq!(damaged[0]["box"], 2);
    assert_eq!(damaged[0]["offset"], serde_json::json!([4, 0]));
    assert_eq!(damaged[0]["file"], ".rank-00002-of-00004.safetensors");

    let ran = ckpt(&["verify", text(&prefix)]);
    assert_eq!(ran.code, 1, "{}", ran.stderr);
    assert!(
        ran.stdout.contains(
            "tensor 'w' box 2 (offset [4, 0] shape [2, 6]) in .rank-00002-of-00004.safetensors: \
             damaged"
        ),
        "{}",
        ran.stdout
    );
}

#[test]
fn export_writes_the_global_tensors_and_each_ranks_own_piece() {
    let root = tempfile::tempdir().unwrap();
    let prefix = save_on_four_ranks(root.path(), false);
    let out = root.path().join("model.safetensors");
    fs::write(&out, b"replaced when the export is complete").unwrap();

    let ran = ckpt(&["export", text(&prefix), text(&out), "--json"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let exported = json(&ran);
    assert_eq!(exported["bytes"], fs::metadata(&out).unwrap().len());
    let (tensors, metadata) = read_safetensors(&out);
    assert_eq!(metadata["checkpoint_number"], "1");
    let names: Vec<&str> = tensors.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "bias",
            "rng.rank-0",
            "rng.rank-1",
            "rng.rank-2",
            "rng.rank-3",
            "w"
        ]
    );
    let all = (0..ROWS).flat_map(|r| (0..COLS).map(move |c| weight(r, c)));
    assert_eq!(
        tensors["w"],
        ("F32".to_owned(), vec![ROWS, COLS], f32_bytes(all))
    );
    let bias_bytes: Vec<u8> = bias().into_iter().flat_map(i32::to_le_bytes).collect();
    assert_eq!(tensors["bias"], ("I32".to_owned(), vec![COLS], bias_bytes));
    for rank in 0..RANKS {
        assert_eq!(
            tensors[&format!("rng.rank-{rank}")],
            ("U8".to_owned(), vec![2], rng(rank))
        );
    }
    // Only the export is left beside the checkpoint's files: no temporary.
    let strays: Vec<_> = fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with(".ckpt-export"))
        .collect();
    assert!(strays.is_empty(), "{strays:?}");
}

#[test]
fn export_refuses_a_tensor_the_boxes_do_not_cover_and_leaves_the_output_alone() {
    let root = tempfile::tempdir().unwrap();
    let prefix = save_on_four_ranks(root.path(), true);
    let out = root.path().join("model.safetensors");
    fs::write(&out, b"an older export").unwrap();
    let ran = ckpt(&["export", text(&prefix), text(&out)]);
    assert_eq!(ran.code, 2, "{}", ran.stdout);
    assert!(
        ran.stderr
            .contains("tensor 'w' (F32 [8, 6]): its saved boxes hold 36 of its 48 elements"),
        "{}",
        ran.stderr
    );
    assert_eq!(fs::read(&out).unwrap(), b"an older export");

    // Damaged bytes fail the export the same way.
    let prefix = save_on_four_ranks(&root.path().join("damaged"), false);
    let shown = json(&ckpt(&["show", text(&prefix), "--json"]));
    let saved = &shown["tensors"][0]["boxes"][0];
    let file = file_of(&prefix, saved["file"].as_str().unwrap());
    let mut bytes = fs::read(&file).unwrap();
    bytes[saved["start"].as_u64().unwrap() as usize] ^= 1;
    fs::write(&file, bytes).unwrap();
    let ran = ckpt(&["export", text(&prefix), text(&out)]);
    assert_eq!(ran.code, 1, "{}", ran.stdout);
    assert!(
        ran.stderr.contains("tensor 'bias'") && ran.stderr.contains("CRC32C"),
        "{}",
        ran.stderr
    );
    assert_eq!(fs::read(&out).unwrap(), b"an older export");
}

#[test]
fn verify_names_the_damaged_4_mib_piece_of_a_large_box() {
    let root = tempfile::tempdir().unwrap();
    // 5 MiB of f32 in one process: one box in two CRC pieces.
    let mut big = vec![1.5f32; 5 << 18];
    let prefix = {
        let config = Config::new(root.path(), MaxToKeep::All).unwrap();
        let mut manager = CheckpointManager::new(config, Callbacks::new()).unwrap();
        // SAFETY: the buffer outlives the manager.
        unsafe {
            manager
                .register_tensor("big", DType::F32, &[5 << 18], big.as_mut_ptr().cast())
                .unwrap();
        }
        manager.save(None, false).unwrap().unwrap()
    };
    let shown = json(&ckpt(&["show", text(&prefix), "--json"]));
    let saved = &shown["tensors"][0]["boxes"][0];
    assert_eq!(saved["chunk_crc32c"].as_array().unwrap().len(), 2);
    let (start, end) = (
        saved["start"].as_u64().unwrap(),
        saved["end"].as_u64().unwrap(),
    );
    let file = file_of(&prefix, ".safetensors");
    let mut bytes = fs::read(&file).unwrap();
    bytes[(start + (4 << 20) + 7) as usize] ^= 1;
    fs::write(&file, bytes).unwrap();

    let ran = ckpt(&["verify", text(&prefix), "--json"]);
    assert_eq!(ran.code, 1, "{}", ran.stderr);
    let damaged = &json(&ran)["checkpoints"][0]["damaged_boxes"];
    assert_eq!(damaged.as_array().unwrap().len(), 1, "{damaged}");
    let detail = damaged[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!(
            "tensor 'big' box 0 (offset [0] shape [1310720]): bytes [{}, {end})",
            start + (4 << 20)
        )),
        "{detail}"
    );
}
