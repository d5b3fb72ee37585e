//! The built-in tensor saver through the Rust API, checked against the
//! `safetensors` crate (an independent implementation): every file the
//! saver writes is read by the crate with identical bytes, every file the
//! crate writes is restored, and mismatches leave every buffer untouched.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ckpt_manager::{
    Callbacks, CheckpointManager, Config, DType, Error, Integrity, MaxToKeep, Verification,
};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

/// The crate's name for each of the library's dtypes.
fn crate_dtype(dtype: DType) -> Dtype {
    match dtype {
        DType::F64 => Dtype::F64,
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::I64 => Dtype::I64,
        DType::I32 => Dtype::I32,
        DType::I16 => Dtype::I16,
        DType::I8 => Dtype::I8,
        DType::U64 => Dtype::U64,
        DType::U32 => Dtype::U32,
        DType::U16 => Dtype::U16,
        DType::U8 => Dtype::U8,
        DType::Bool => Dtype::BOOL,
    }
}

/// A host buffer to register: it owns its bytes, whose heap block never
/// moves while the test holds it, so the pointer stays valid.
struct Buffer {
    name: String,
    dtype: DType,
    shape: Vec<u64>,
    bytes: Vec<u8>,
}

impl Buffer {
    fn new(name: &str, dtype: DType, shape: &[u64], seed: u8) -> Self {
        let len = dtype.size() * shape.iter().product::<u64>() as usize;
        Buffer {
            name: name.to_owned(),
            dtype,
            shape: shape.to_vec(),
            bytes: pattern(dtype, len, seed),
        }
    }

    /// Overwrites the bytes in place (the registered pointer stays valid).
    fn refill(&mut self, seed: u8) {
        let bytes = pattern(self.dtype, self.bytes.len(), seed);
        self.bytes.copy_from_slice(&bytes);
    }

    fn usize_shape(&self) -> Vec<usize> {
        self.shape.iter().map(|&d| d as usize).collect()
    }

    /// # Safety
    /// The buffer must outlive the manager (or be unregistered first).
    unsafe fn register(&mut self, manager: &mut CheckpointManager) {
        manager
            .register_tensor(&self.name, self.dtype, &self.shape, self.bytes.as_mut_ptr())
            .unwrap_or_else(|err| panic!("registering {}: {err}", self.name));
    }
}

/// Distinctive bytes: different for every tensor (seed) and position. Bools
/// stay 0 or 1.
fn pattern(dtype: DType, len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let byte = (i as u8)
                .wrapping_mul(31)
                .wrapping_add(seed.wrapping_mul(77))
                .wrapping_add(1);
            if dtype == DType::Bool {
                (i as u8 ^ seed) & 1
            } else {
                byte
            }
        })
        .collect()
}

/// Three tensors per dtype: a scalar, an odd-length vector, a 3-D block;
/// then two empty tensors and an awkward name.
fn buffers_of_every_dtype() -> Vec<Buffer> {
    let mut buffers = Vec::new();
    for (index, dtype) in DType::ALL.into_iter().enumerate() {
        let seed = index as u8 * 3;
        let name = dtype.name().to_lowercase();
        buffers.push(Buffer::new(&format!("{name}.scalar"), dtype, &[], seed));
        buffers.push(Buffer::new(
            &format!("{name}.vector"),
            dtype,
            &[5],
            seed + 1,
        ));
        buffers.push(Buffer::new(
            &format!("{name}.block"),
            dtype,
            &[2, 3, 4],
            seed + 2,
        ));
    }
    // Empty tensors, as models have (safetensors stores them).
    buffers.push(Buffer::new("empty.f32", DType::F32, &[0], 201));
    buffers.push(Buffer::new("empty.u16", DType::U16, &[2, 0, 3], 202));
    // A name that needs escaping in JSON.
    buffers.push(Buffer::new(
        "layer \"0\"/w\\ü\u{1}",
        DType::F32,
        &[3, 1],
        200,
    ));
    buffers
}

fn tensor_file(prefix: &Path) -> PathBuf {
    PathBuf::from(format!("{}.safetensors", prefix.display()))
}

fn suffixed(prefix: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", prefix.display()))
}

fn config(dir: &Path, configure: impl FnOnce(&mut Config)) -> Config {
    let mut config = Config::new(dir, MaxToKeep::Last(3)).unwrap();
    configure(&mut config);
    config
}

fn open(dir: &Path, callbacks: Callbacks) -> CheckpointManager {
    CheckpointManager::new(config(dir, |_| {}), callbacks).unwrap()
}

/// Callbacks whose saves write exactly `bytes` as `<prefix>.safetensors`
/// (no tensor registered): how a file from elsewhere gets committed with a
/// manifest that records it as it is.
fn writing(bytes: Vec<u8>) -> Callbacks {
    Callbacks::new().on_save(move |prefix, _| Ok(fs::write(tensor_file(prefix), &bytes)?))
}

fn commit_file(dir: &Path, bytes: Vec<u8>) -> PathBuf {
    let mut manager = open(dir, writing(bytes));
    manager.save(None, true).unwrap().unwrap()
}

/// Asserts the crate reads `path` and finds exactly `buffers`, with their
/// bytes, each tensor at an offset aligned to its dtype's size.
fn assert_crate_reads(path: &Path, buffers: &[Buffer]) -> HashMap<String, String> {
    let file = fs::read(path).unwrap();
    let tensors = SafeTensors::deserialize(&file)
        .unwrap_or_else(|err| panic!("the safetensors crate refuses {}: {err}", path.display()));
    assert_eq!(tensors.len(), buffers.len(), "{:?}", tensors.names());
    let (header_len, metadata) = SafeTensors::read_metadata(&file).unwrap();
    assert_eq!((8 + header_len) % 8, 0, "the data section is 8-aligned");
    for buffer in buffers {
        let view = tensors
            .tensor(&buffer.name)
            .unwrap_or_else(|err| panic!("{}: {err}", buffer.name));
        assert_eq!(view.dtype(), crate_dtype(buffer.dtype), "{}", buffer.name);
        assert_eq!(view.shape(), buffer.usize_shape(), "{}", buffer.name);
        assert_eq!(view.data(), &buffer.bytes[..], "{}", buffer.name);
        let (start, end) = metadata.info(&buffer.name).unwrap().data_offsets;
        assert_eq!(end - start, buffer.bytes.len());
        assert_eq!(
            (8 + header_len + start) % buffer.dtype.size(),
            0,
            "{} at offset {start} is misaligned",
            buffer.name
        );
    }
    metadata
        .metadata()
        .clone()
        .expect("the saver writes metadata")
}

fn assert_unchanged(buffers: &[Buffer], before: &[Vec<u8>], what: &str) {
    for (buffer, before) in buffers.iter().zip(before) {
        assert_eq!(
            &buffer.bytes, before,
            "{what}: '{}' was written",
            buffer.name
        );
    }
}

fn snapshot(buffers: &[Buffer]) -> Vec<Vec<u8>> {
    buffers.iter().map(|b| b.bytes.clone()).collect()
}

#[test]
fn the_safetensors_crate_reads_every_dtype_the_saver_writes() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let mut buffers = buffers_of_every_dtype();
    let mut manager = open(dir, Callbacks::new().step_counter(|| Ok(42)));
    for buffer in &mut buffers {
        unsafe { buffer.register(&mut manager) };
    }
    let prefix = manager.save(None, true).unwrap().unwrap();
    assert_eq!(prefix, dir.join("ckpt-1"));
    let metadata = assert_crate_reads(&tensor_file(&prefix), &buffers);
    assert_eq!(
        metadata.get("checkpoint_number").map(String::as_str),
        Some("1")
    );
    assert_eq!(metadata.get("step").map(String::as_str), Some("42"));

    // A later save writes the buffers as they are then.
    for buffer in &mut buffers {
        buffer.refill(99);
    }
    let prefix = manager.save(Some(7), true).unwrap().unwrap();
    let metadata = assert_crate_reads(&tensor_file(&prefix), &buffers);
    assert_eq!(
        metadata.get("checkpoint_number").map(String::as_str),
        Some("7")
    );
    assert_eq!(
        manager
            .verify(Some(&prefix), Verification::Checksums)
            .unwrap(),
        Integrity::Intact
    );
}

#[test]
fn without_a_step_counter_the_metadata_has_no_step() {
    let root = tempfile::tempdir().unwrap();
    let mut buffer = Buffer::new("only", DType::U8, &[3], 1);
    let mut manager = open(root.path(), Callbacks::new());
    unsafe { buffer.register(&mut manager) };
    let prefix = manager.save(None, true).unwrap().unwrap();
    let metadata = assert_crate_reads(&tensor_file(&prefix), std::slice::from_ref(&buffer));
    assert_eq!(
        metadata,
        HashMap::from([("checkpoint_number".to_owned(), "1".to_owned())])
    );
}

/// Views over `buffers` for `safetensors::serialize`.
fn views(buffers: &[Buffer]) -> Vec<(String, TensorView<'_>)> {
    buffers
        .iter()
        .map(|b| {
            let view = TensorView::new(crate_dtype(b.dtype), b.usize_shape(), &b.bytes).unwrap();
            (b.name.clone(), view)
        })
        .collect()
}

/// Zeroed buffers of the same names, dtypes and shapes.
fn zeroed_like(buffers: &[Buffer]) -> Vec<Buffer> {
    buffers
        .iter()
        .map(|b| Buffer {
            name: b.name.clone(),
            dtype: b.dtype,
            shape: b.shape.clone(),
            bytes: vec![0; b.bytes.len()],
        })
        .collect()
}

#[test]
fn the_builtin_restore_reads_what_the_safetensors_crate_writes() {
    let source = buffers_of_every_dtype();
    let metadata = HashMap::from([("producer".to_owned(), "safetensors crate".to_owned())]);
    let in_memory = safetensors::serialize(views(&source), Some(metadata.clone())).unwrap();
    // serialize_to_file must agree with serialize; the file is what is committed.
    let scratch = tempfile::tempdir().unwrap();
    let written = scratch.path().join("x.safetensors");
    safetensors::serialize_to_file(views(&source), Some(metadata), &written).unwrap();
    assert_eq!(fs::read(&written).unwrap(), in_memory);

    for (what, bytes) in [
        ("with metadata", in_memory),
        (
            "without metadata",
            safetensors::serialize(views(&source), None).unwrap(),
        ),
    ] {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        let prefix = commit_file(dir, bytes);
        let mut targets = zeroed_like(&source);
        let mut manager = open(dir, Callbacks::new());
        for buffer in &mut targets {
            unsafe { buffer.register(&mut manager) };
        }
        assert_eq!(
            manager.restore_or_initialize().unwrap(),
            Some(prefix),
            "{what}"
        );
        for (target, source) in targets.iter().zip(&source) {
            assert_eq!(target.bytes, source.bytes, "{what}: '{}'", target.name);
        }
        drop(manager);

        // The same with sizes-only verification (another read path).
        for target in &mut targets {
            target.bytes.fill(0);
        }
        let mut manager = CheckpointManager::new(
            config(dir, |c| c.set_verify_checksums(false)),
            Callbacks::new(),
        )
        .unwrap();
        for buffer in &mut targets {
            unsafe { buffer.register(&mut manager) };
        }
        manager.restore_or_initialize().unwrap();
        for (target, source) in targets.iter().zip(&source) {
            assert_eq!(
                target.bytes, source.bytes,
                "{what}, sizes only: '{}'",
                target.name
            );
        }
    }
}

#[test]
fn a_crate_file_with_empty_tensors_restores_into_registered_empty_tensors() {
    let source = vec![
        Buffer::new("w", DType::F32, &[2, 2], 5),
        Buffer::new("b", DType::I64, &[3], 6),
        Buffer::new("empty", DType::U8, &[4, 0], 7),
        Buffer::new("none", DType::F64, &[0], 8),
    ];
    let bytes = safetensors::serialize(views(&source), None).unwrap();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let prefix = commit_file(dir, bytes);

    let mut targets = zeroed_like(&source);
    let mut manager = open(dir, Callbacks::new());
    for buffer in &mut targets[..3] {
        unsafe { buffer.register(&mut manager) };
    }
    // An empty tensor needs no buffer at all.
    unsafe { manager.register_tensor("none", DType::F64, &[0], std::ptr::null_mut()) }.unwrap();
    assert_eq!(manager.restore_or_initialize().unwrap(), Some(prefix));
    for (target, source) in targets.iter().zip(&source) {
        assert_eq!(target.bytes, source.bytes, "'{}'", target.name);
    }

    // Its shape is still checked: [0, 4] is not [4, 0].
    manager.unregister_tensor("empty").unwrap();
    let mut wrong = Buffer::new("empty", DType::U8, &[0, 4], 0);
    unsafe { wrong.register(&mut manager) };
    let err = manager.restore_or_initialize().unwrap_err();
    assert!(
        matches!(err, Error::TensorMismatch(_)) && err.to_string().contains("'empty'"),
        "{err}"
    );
}

#[test]
fn restore_gives_back_the_saved_bytes_and_falls_back_past_a_damaged_file() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let warnings = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = warnings.clone();
    let mut buffers = vec![
        Buffer::new("embedding", DType::BF16, &[4, 3], 1),
        Buffer::new("step", DType::I64, &[], 2),
        Buffer::new("mask", DType::Bool, &[7], 3),
    ];
    let mut manager = open(
        dir,
        Callbacks::new().log(move |_, message| log.lock().unwrap().push(message.to_owned())),
    );
    for buffer in &mut buffers {
        unsafe { buffer.register(&mut manager) };
    }
    manager.save(None, true).unwrap();
    let first = snapshot(&buffers);
    for buffer in &mut buffers {
        buffer.refill(40);
    }
    let second = snapshot(&buffers);
    let latest = manager.save(None, true).unwrap().unwrap();
    for buffer in &mut buffers {
        buffer.refill(80);
    }
    assert_ne!(snapshot(&buffers), second);

    assert_eq!(
        manager.restore_or_initialize().unwrap(),
        Some(latest.clone())
    );
    assert_unchanged(&buffers, &second, "(expected the second save)");

    // The tensor file is part of the checkpoint: one flipped byte (same
    // size) makes it damaged, and restore falls back to ckpt-1.
    let path = tensor_file(&latest);
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x10;
    fs::write(&path, &bytes).unwrap();
    assert_eq!(
        manager.restore_or_initialize().unwrap(),
        Some(dir.join("ckpt-1"))
    );
    assert_unchanged(&buffers, &first, "(expected the first save)");
    let warnings = warnings.lock().unwrap().join("\n");
    assert!(warnings.contains("ckpt-2"), "{warnings}");
}

/// The checkpoint the mismatch cases restore: a (F64), b (F32), c (U8),
/// laid out in that order, so a restore that copied before checking
/// everything would already have written a and b when it reaches c.
fn saved_abc(dir: &Path) -> Vec<Buffer> {
    let mut saved = vec![
        Buffer::new("a", DType::F64, &[2, 2], 10),
        Buffer::new("b", DType::F32, &[3], 11),
        Buffer::new("c", DType::U8, &[5], 12),
    ];
    let mut manager = open(dir, Callbacks::new());
    for buffer in &mut saved {
        unsafe { buffer.register(&mut manager) };
    }
    manager.save(None, true).unwrap();
    saved
}

fn sentinel(name: &str, dtype: DType, shape: &[u64]) -> Buffer {
    let mut buffer = Buffer::new(name, dtype, shape, 0);
    buffer.bytes.fill(0xA5);
    buffer
}

/// Restores into `buffers` (sentinel-filled) and returns the result, with
/// whether the restore callback ran.
fn restore_into(
    dir: &Path,
    partial: bool,
    buffers: &mut [Buffer],
) -> (Result<Option<PathBuf>, Error>, bool) {
    let restored = Arc::new(Mutex::new(false));
    let flag = restored.clone();
    let callbacks = Callbacks::new().on_restore(move |_| {
        *flag.lock().unwrap() = true;
        Ok(())
    });
    let mut manager =
        CheckpointManager::new(config(dir, |c| c.set_partial_restore(partial)), callbacks).unwrap();
    for buffer in buffers.iter_mut() {
        unsafe { buffer.register(&mut manager) };
    }
    let result = manager.restore_or_initialize();
    let ran = *restored.lock().unwrap();
    (result, ran)
}

#[test]
fn mismatches_name_the_tensor_and_leave_every_buffer_untouched() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    saved_abc(dir);
    let a = || sentinel("a", DType::F64, &[2, 2]);
    let b = || sentinel("b", DType::F32, &[3]);
    type Case = (&'static str, Vec<Buffer>, bool, &'static str);
    let cases: Vec<Case> = vec![
        (
            "dtype",
            vec![a(), b(), sentinel("c", DType::I8, &[5])],
            false,
            "'c'",
        ),
        (
            "dtype, partial",
            vec![a(), b(), sentinel("c", DType::I8, &[5])],
            true,
            "'c'",
        ),
        (
            "shape",
            vec![a(), b(), sentinel("c", DType::U8, &[5, 1])],
            false,
            "'c'",
        ),
        (
            "shape, partial",
            vec![a(), b(), sentinel("c", DType::U8, &[1, 5])],
            true,
            "'c'",
        ),
        (
            "shorter shape, and an extra registered tensor",
            vec![
                a(),
                b(),
                sentinel("c", DType::U8, &[4]),
                sentinel("d", DType::U8, &[1]),
            ],
            false,
            "'c'",
        ),
        ("extra in the checkpoint", vec![a(), b()], false, "'c'"),
        (
            "missing from the checkpoint",
            vec![
                a(),
                b(),
                sentinel("c", DType::U8, &[5]),
                sentinel("d", DType::U16, &[2]),
            ],
            false,
            "'d'",
        ),
        (
            "renamed",
            vec![a(), b(), sentinel("C", DType::U8, &[5])],
            false,
            "'c'",
        ),
    ];
    for (what, mut buffers, partial, needle) in cases {
        let before = snapshot(&buffers);
        let (result, callback_ran) = restore_into(dir, partial, &mut buffers);
        match result {
            Err(err @ Error::TensorMismatch(_)) => {
                let message = err.to_string();
                let named =
                    message.contains(needle) || (what == "renamed" && message.contains("'C'"));
                assert!(named, "{what}: {message} should name {needle}");
            }
            other => panic!("{what}: expected TensorMismatch, got {other:?}"),
        }
        assert!(
            !callback_ran,
            "{what}: the restore callback ran after a mismatch"
        );
        assert_unchanged(&buffers, &before, what);
    }
}

#[test]
fn partial_restore_skips_tensors_on_one_side_only() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let saved = saved_abc(dir);

    // c is in the checkpoint only, d is registered only.
    let mut buffers = vec![
        sentinel("a", DType::F64, &[2, 2]),
        sentinel("b", DType::F32, &[3]),
        sentinel("d", DType::U8, &[2]),
    ];
    let (result, callback_ran) = restore_into(dir, true, &mut buffers);
    assert_eq!(result.unwrap(), Some(dir.join("ckpt-1")));
    assert!(callback_ran);
    assert_eq!(buffers[0].bytes, saved[0].bytes);
    assert_eq!(buffers[1].bytes, saved[1].bytes);
    assert_eq!(buffers[2].bytes, [0xA5; 2], "d is not in the checkpoint");

    // Nothing in common: nothing restored, still a success.
    let mut buffers = vec![sentinel("z", DType::U8, &[3])];
    let (result, _) = restore_into(dir, true, &mut buffers);
    assert_eq!(result.unwrap(), Some(dir.join("ckpt-1")));
    assert_eq!(buffers[0].bytes, [0xA5; 3]);
}

#[test]
fn a_checkpoint_without_a_tensor_file_is_a_mismatch_unless_partial() {
    // Saved by the callback alone: it has no .safetensors file, so every
    // registered tensor is "registered but missing".
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let mut manager = open(
        dir,
        Callbacks::new().on_save(|prefix, _| Ok(fs::write(suffixed(prefix, ".index"), b"i")?)),
    );
    manager.save(None, true).unwrap();
    drop(manager);

    let mut buffers = vec![sentinel("w", DType::F32, &[2])];
    let (result, ran) = restore_into(dir, false, &mut buffers);
    match result {
        Err(err @ Error::TensorMismatch(_)) => {
            assert!(err.to_string().contains("'w'"), "{err}")
        }
        other => panic!("expected TensorMismatch naming 'w', got {other:?}"),
    }
    assert!(!ran);
    assert_eq!(buffers[0].bytes, [0xA5; 8]);

    let (result, ran) = restore_into(dir, true, &mut buffers);
    assert_eq!(result.unwrap(), Some(dir.join("ckpt-1")));
    assert!(ran, "the restore callback runs");
    assert_eq!(buffers[0].bytes, [0xA5; 8]);
}

#[test]
fn registration_errors_are_clear_and_change_nothing() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let mut manager = open(dir, Callbacks::new());
    let mut data = vec![0u8; 64];
    let ptr = data.as_mut_ptr();
    let err = |result: Result<(), Error>| match result {
        Err(err @ Error::InvalidArgument(_)) => err.to_string(),
        other => panic!("expected InvalidArgument, got {other:?}"),
    };
    unsafe {
        manager
            .register_tensor("w", DType::F32, &[2, 2], ptr)
            .unwrap();
        let message = err(manager.register_tensor("w", DType::U8, &[1], ptr));
        assert!(
            message.contains("'w'") && message.contains("already"),
            "{message}"
        );
        let message = err(manager.register_tensor("o", DType::F64, &[1 << 32, 1 << 32], ptr));
        assert!(
            message.contains("'o'") && message.contains("overflows"),
            "{message}"
        );
        let message = err(manager.register_tensor("o", DType::U8, &[u64::MAX, 2], ptr));
        assert!(message.contains("overflows"), "{message}");
        let message = err(manager.register_tensor("n", DType::U8, &[1], std::ptr::null_mut()));
        assert!(
            message.contains("'n'") && message.contains("NULL"),
            "{message}"
        );
        for name in ["", "__metadata__"] {
            let message = err(manager.register_tensor(name, DType::U8, &[1], ptr));
            assert!(message.contains("name"), "{message}");
        }
        // The failed names were not registered.
        manager.register_tensor("o", DType::U8, &[3], ptr).unwrap();
        manager.register_tensor("n", DType::U8, &[1], ptr).unwrap();
    }
    let message = err(manager.unregister_tensor("nope"));
    assert!(message.contains("'nope'"), "{message}");
    manager.unregister_tensor("n").unwrap();
    let prefix = manager.save(None, true).unwrap().unwrap();
    let file = fs::read(tensor_file(&prefix)).unwrap();
    let mut names = SafeTensors::deserialize(&file)
        .unwrap()
        .names()
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    names.sort();
    assert_eq!(names, ["o", "w"]);

    // Without tensors or a save callback there is nothing to save.
    manager.unregister_tensor("w").unwrap();
    manager.unregister_tensor("o").unwrap();
    assert!(matches!(
        manager.save(None, true),
        Err(Error::InvalidArgument(_))
    ));
    drop(manager);
    drop(data);
}

/// Save and restore callbacks that write and read `<prefix>.extra`
/// beside the built-in file, recording what they did.
#[derive(Default)]
struct Extra {
    restored: Vec<(PathBuf, Vec<u8>)>,
}

#[test]
fn a_save_callback_and_the_builtin_saver_make_one_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let journal = Arc::new(Mutex::new(Extra::default()));
    let seen = journal.clone();
    let callbacks = Callbacks::new()
        .on_save(|prefix, number| Ok(fs::write(suffixed(prefix, ".extra"), [number as u8; 3])?))
        .on_restore(move |prefix| {
            let bytes = fs::read(suffixed(prefix, ".extra"))?;
            seen.lock()
                .unwrap()
                .restored
                .push((prefix.to_path_buf(), bytes));
            Ok(())
        })
        .log(|_, _| {});
    let mut manager = CheckpointManager::new(
        config(dir, |c| c.set_max_to_keep(MaxToKeep::Last(2)).unwrap()),
        callbacks,
    )
    .unwrap();
    let mut w = Buffer::new("w", DType::F16, &[3, 2], 1);
    unsafe { w.register(&mut manager) };
    let mut saved = Vec::new();
    for round in 0..3u8 {
        w.refill(round * 10);
        saved.push(w.bytes.clone());
        manager.save(None, true).unwrap();
    }

    // ckpt-1 went with all its files, the built-in one and the callback's.
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ckpt-"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "ckpt-2.ckpt-manifest.json",
            "ckpt-2.extra",
            "ckpt-2.safetensors",
            "ckpt-3.ckpt-manifest.json",
            "ckpt-3.extra",
            "ckpt-3.safetensors",
        ]
    );
    // Both files are in the manifest.
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("ckpt-3.ckpt-manifest.json")).unwrap()).unwrap();
    let suffixes: Vec<&str> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["suffix"].as_str().unwrap())
        .collect();
    assert_eq!(suffixes, [".extra", ".safetensors"]);
    assert_eq!(
        manager.verify(None, Verification::Checksums).unwrap(),
        Integrity::Intact
    );

    // Both restores run, on the same checkpoint.
    w.bytes.fill(0);
    assert_eq!(
        manager.restore_or_initialize().unwrap(),
        Some(dir.join("ckpt-3"))
    );
    assert_eq!(w.bytes, saved[2]);
    assert_eq!(
        journal.lock().unwrap().restored.pop(),
        Some((dir.join("ckpt-3"), vec![3; 3]))
    );

    // The callback's file is verified too: damaging it falls back to
    // ckpt-2 for both the callback and the built-in restore.
    fs::write(dir.join("ckpt-3.extra"), [9u8; 3]).unwrap();
    assert_eq!(
        manager.restore_or_initialize().unwrap(),
        Some(dir.join("ckpt-2"))
    );
    assert_eq!(w.bytes, saved[1]);
    assert_eq!(
        journal.lock().unwrap().restored.pop(),
        Some((dir.join("ckpt-2"), vec![2; 3]))
    );
}

/// A valid safetensors file except for a gap between its two tensors.
fn file_with_a_gap() -> Vec<u8> {
    let json = br#"{"a":{"dtype":"F64","shape":[2,2],"data_offsets":[0,32]},"b":{"dtype":"F32","shape":[3],"data_offsets":[40,52]}}"#;
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(json);
    bytes.extend(std::iter::repeat_n(0x77, 52));
    bytes
}

#[test]
fn a_hostile_latest_file_falls_back_to_the_previous_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let saved = vec![
        Buffer::new("a", DType::F64, &[2, 2], 21),
        Buffer::new("b", DType::F32, &[3], 22),
    ];
    let mut source = zeroed_like(&saved);
    for (s, b) in source.iter_mut().zip(&saved) {
        s.bytes.copy_from_slice(&b.bytes);
    }
    let mut manager = open(dir, Callbacks::new());
    for buffer in &mut source {
        unsafe { buffer.register(&mut manager) };
    }
    manager.save(None, true).unwrap();
    drop(manager);
    // ckpt-2: a file that names a and b with the right dtypes and shapes
    // but leaves a gap: refused as damaged, so restore takes ckpt-1.
    let hostile = commit_file(dir, file_with_a_gap());
    assert_eq!(hostile, dir.join("ckpt-2"));

    let warnings = Arc::new(Mutex::new(String::new()));
    let log = warnings.clone();
    let mut manager = CheckpointManager::new(
        config(dir, |_| {}),
        Callbacks::new().log(move |_, m| log.lock().unwrap().push_str(m)),
    )
    .unwrap();
    let mut targets = vec![
        sentinel("a", DType::F64, &[2, 2]),
        sentinel("b", DType::F32, &[3]),
    ];
    for buffer in &mut targets {
        unsafe { buffer.register(&mut manager) };
    }
    assert_eq!(
        manager.restore_or_initialize().unwrap(),
        Some(dir.join("ckpt-1"))
    );
    assert_unchanged(&targets, &snapshot(&saved), "(expected ckpt-1)");
    let warnings = warnings.lock().unwrap().clone();
    assert!(
        warnings.contains("ckpt-2.safetensors") && warnings.contains("gap"),
        "{warnings}"
    );
}

#[test]
fn a_mismatch_found_after_falling_back_says_the_buffers_hold_the_damaged_bytes() {
    // ckpt-1 holds a and b; ckpt-2 holds a only, and one of its data bytes
    // is flipped (same size: only its CRC32C tells). Restoring a alone
    // reads ckpt-2 (checking its CRC32C on the way, in one pass), finds it
    // damaged, falls back to ckpt-1, and there finds b, which is not
    // registered: TENSOR_MISMATCH. ckpt-1 restored nothing, but a holds
    // ckpt-2's damaged bytes, and the message must say so.
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let mut saved = vec![
        Buffer::new("a", DType::U8, &[16], 31),
        Buffer::new("b", DType::U8, &[4], 32),
    ];
    let mut manager = open(dir, Callbacks::new());
    for buffer in &mut saved {
        unsafe { buffer.register(&mut manager) };
    }
    manager.save(None, true).unwrap();
    manager.unregister_tensor("b").unwrap();
    saved[0].refill(33);
    let second = manager.save(None, true).unwrap().unwrap();
    drop(manager);
    let path = tensor_file(&second);
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    fs::write(&path, &bytes).unwrap();

    let mut targets = vec![sentinel("a", DType::U8, &[16])];
    let (result, ran) = restore_into(dir, false, &mut targets);
    match result {
        Err(err @ Error::TensorMismatch(_)) => {
            let message = err.to_string();
            assert!(message.contains("'b'"), "{message}");
            assert!(
                message.contains(&format!(
                    "the buffers hold the bytes of the damaged checkpoint '{}'",
                    second.display()
                )),
                "{message}"
            );
        }
        other => panic!("expected TensorMismatch naming 'b', got {other:?}"),
    }
    assert!(!ran);
    assert_eq!(
        targets[0].bytes,
        &bytes[bytes.len() - 16..],
        "a holds ckpt-2's damaged bytes"
    );
}

/// The f32 value of element `(row, col)` of the 2-D test tensor.
fn element(row: u64, col: u64) -> f32 {
    (row * 1024 + col) as f32
}

/// A tensor over 4 MiB saved by one process is read back whole, in any box,
/// by a tool and by a one-process slice registration; a damaged 4 MiB piece
/// fails only the reads that need it.
#[test]
fn checkpoint_tensors_read_any_box_and_check_only_the_pieces_read() {
    use ckpt_manager::{CheckpointTensors, TensorBox, TensorKind};
    let dir = tempfile::tempdir().unwrap();
    let (rows, cols) = (1100u64, 1024u64);
    let mut big: Vec<f32> = (0..rows * cols)
        .map(|i| element(i / cols, i % cols))
        .collect();
    let mut bias = vec![7i32, 8, 9];
    let prefix = {
        let mut manager = open(dir.path(), Callbacks::default());
        // SAFETY: the buffers outlive the manager.
        unsafe {
            manager
                .register_tensor("big", DType::F32, &[rows, cols], big.as_mut_ptr().cast())
                .unwrap();
            manager
                .register_replicated_tensor("bias", DType::I32, &[3], bias.as_mut_ptr().cast())
                .unwrap();
        }
        manager.save(None, false).unwrap().unwrap()
    };
    let tensors = CheckpointTensors::open(&prefix)
        .unwrap()
        .expect("a tensor table");
    let names: Vec<(&str, TensorKind)> = tensors
        .tensors()
        .iter()
        .map(|t| (t.name.as_str(), t.kind))
        .collect();
    assert_eq!(
        names,
        [
            ("bias", TensorKind::Replicated),
            ("big", TensorKind::RankLocal)
        ]
    );
    let saved = &tensors.tensors()[1].boxes[0];
    assert_eq!(saved.chunk_crc32c.len(), 2, "4.4 MB in 4 MiB pieces");
    assert_eq!(
        tensors.read_global("bias").unwrap(),
        [7, 0, 0, 0, 8, 0, 0, 0, 9, 0, 0, 0]
    );
    let corner = TensorBox {
        offset: vec![1090, 1000],
        shape: vec![10, 24],
    };
    let read_corner = || {
        let mut bytes = vec![0u8; 10 * 24 * 4];
        tensors
            .read_region("big", &corner, &mut bytes)
            .map(|()| bytes)
    };
    let expected: Vec<u8> = (1090..1100)
        .flat_map(|row| (1000..1024).map(move |col| element(row, col)))
        .flat_map(f32::to_le_bytes)
        .collect();
    assert_eq!(read_corner().unwrap(), expected);
    let whole: Vec<u8> = big.iter().copied().flat_map(f32::to_le_bytes).collect();
    assert!(tensors.read_global("big").unwrap() == whole);

    // One process registering a box of it restores that box.
    let mut slab = vec![0f32; 3 * 1024];
    {
        let mut manager = open(dir.path(), Callbacks::default());
        let place = TensorBox {
            offset: vec![1095, 0],
            shape: vec![3, 1024],
        };
        // SAFETY: the buffers outlive the manager.
        unsafe {
            manager
                .register_tensor_slice(
                    "big",
                    DType::F32,
                    &[rows, cols],
                    place,
                    slab.as_mut_ptr().cast(),
                )
                .unwrap();
            manager
                .register_replicated_tensor("bias", DType::I32, &[3], bias.as_mut_ptr().cast())
                .unwrap();
        }
        manager.restore_or_initialize().unwrap();
    }
    assert!(slab
        .iter()
        .enumerate()
        .all(|(i, &v)| v == element(1095 + i as u64 / 1024, i as u64 % 1024)));

    // A flipped byte in the first 4 MiB piece: the corner, in the second
    // piece, still reads; the whole tensor does not.
    let file = tensor_file(&prefix);
    let mut bytes = fs::read(&file).unwrap();
    bytes[saved.start as usize + 100] ^= 1;
    fs::write(&file, bytes).unwrap();
    assert_eq!(read_corner().unwrap(), expected);
    let err = tensors.read_global("big").unwrap_err();
    assert!(matches!(err, Error::Damaged { .. }), "{err}");
    assert!(
        err.to_string().contains("do not match their CRC32C"),
        "{err}"
    );
    // A region outside the tensor is refused.
    let outside = TensorBox {
        offset: vec![1099, 0],
        shape: vec![2, 1],
    };
    let err = tensors
        .read_region("big", &outside, &mut [0u8; 8])
        .unwrap_err();
    assert!(err.to_string().contains("does not fit"), "{err}");
}

/// A background save records its tensors as a blocking one does: the copy
/// taken at the call, whatever the buffer holds later.
#[test]
fn a_background_save_lists_its_tensors_as_taken_at_the_call() {
    use ckpt_manager::{CheckpointTensors, SaveArgs, TensorKind};
    let dir = tempfile::tempdir().unwrap();
    let mut weights = vec![1.5f64, 2.5, 3.5];
    let mut manager = open(dir.path(), Callbacks::default());
    // SAFETY: the buffer outlives the manager.
    unsafe {
        manager
            .register_replicated_tensor("w", DType::F64, &[3], weights.as_mut_ptr().cast())
            .unwrap();
    }
    let prefix = manager.save_async(&SaveArgs::default()).unwrap().unwrap();
    weights[1] = -1.0;
    manager.wait_until_finished(None).unwrap();
    let tensors = CheckpointTensors::open(&prefix)
        .unwrap()
        .expect("a tensor table");
    assert_eq!(tensors.tensors()[0].kind, TensorKind::Replicated);
    let saved: Vec<u8> = [1.5f64, 2.5, 3.5]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert_eq!(tensors.read_global("w").unwrap(), saved);
}
