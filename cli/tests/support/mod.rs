//! Checkpoint directories made by the library, for the tests and the
//! README's demo (`cargo run -p ckpt-cli --example demo_directory DIR`).

#![allow(dead_code)] // Each test crate uses part of this module.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use ckpt_manager::{Callbacks, CheckpointManager, Config, DType, MaxToKeep, SaveArgs};

/// The first save's time; each later save is ten minutes on.
pub const START: f64 = 1_764_500_000.0;
const SAVE_EVERY_SECONDS: f64 = 600.0;

/// Saves checkpoints 1..=count into `directory` with the built-in saver,
/// keeping the newest `keep`: a 2x3 f32 weight, a bf16 bias, an i64 step
/// (100 per save) and a u8 mask that never changes; each save records the
/// metric `loss` (1/number) and metadata. `pin` is pinned after its save.
pub fn save_run(directory: &Path, count: u64, keep: usize, pin: Option<u64>) -> Vec<PathBuf> {
    save_run_with(
        Config::new(directory, MaxToKeep::Last(keep)).unwrap(),
        count,
        pin,
    )
}

/// `save_run` with the caller's configuration (an object store's options).
pub fn save_run_with(config: Config, count: u64, pin: Option<u64>) -> Vec<PathBuf> {
    let clock = Arc::new(AtomicU64::new(START.to_bits()));
    let reading = Arc::clone(&clock);
    let step = Arc::new(AtomicI64::new(0));
    let counted = Arc::clone(&step);
    let callbacks = Callbacks::new()
        .clock(move || f64::from_bits(reading.load(Ordering::SeqCst)))
        .step_counter(move || Ok(counted.load(Ordering::SeqCst)));
    let mut manager = CheckpointManager::new(config, callbacks).unwrap();
    // Vectors: their heap blocks stay put while registered.
    let mut weights = vec![0f32; 6];
    let mut bias = vec![0u16; 3];
    let mut step_tensor = vec![0i64];
    let mut mask = vec![1u8, 0, 1, 1];
    // SAFETY: the buffers live until the manager is dropped at the end.
    unsafe {
        manager
            .register_tensor(
                "layer.weight",
                DType::F32,
                &[2, 3],
                weights.as_mut_ptr().cast(),
            )
            .unwrap();
        manager
            .register_tensor("layer.bias", DType::BF16, &[3], bias.as_mut_ptr().cast())
            .unwrap();
        manager
            .register_tensor("step", DType::I64, &[], step_tensor.as_mut_ptr().cast())
            .unwrap();
        manager
            .register_tensor("mask", DType::U8, &[4], mask.as_mut_ptr())
            .unwrap();
    }
    let mut saved = Vec::new();
    for number in 1..=count {
        let time = START + SAVE_EVERY_SECONDS * (number - 1) as f64;
        clock.store(time.to_bits(), Ordering::SeqCst);
        for (index, weight) in weights.iter_mut().enumerate() {
            *weight = number as f32 * 0.5 + index as f32;
        }
        // bf16 of 1.0, 2.0, 3.0 times the number: the high half of the f32.
        for (index, b) in bias.iter_mut().enumerate() {
            *b = ((number as f32 * (index + 1) as f32).to_bits() >> 16) as u16;
        }
        step_tensor[0] = 100 * number as i64;
        step.store(step_tensor[0], Ordering::SeqCst);
        let mut args = SaveArgs::default();
        args.set_metric("loss", 1.0 / number as f64).unwrap();
        args.set_metadata_json(r#"{"run": "demo"}"#).unwrap();
        let prefix = manager
            .save_with(&args)
            .unwrap()
            .expect("no interval is set");
        if pin == Some(number) {
            manager.set_pinned(&prefix, true).unwrap();
        }
        saved.push(prefix);
    }
    drop(manager);
    saved
}

/// A directory as TensorFlow leaves it: its state file, written here as
/// TF writes it, and `.index`/`.data` files, without manifests.
pub fn tensorflow_run(directory: &Path) {
    std::fs::create_dir_all(directory).unwrap();
    std::fs::write(
        directory.join("checkpoint"),
        "model_checkpoint_path: \"model.ckpt-20\"\n\
         all_model_checkpoint_paths: \"model.ckpt-10\"\n\
         all_model_checkpoint_paths: \"model.ckpt-20\"\n\
         all_model_checkpoint_timestamps: 1764500000.5\n\
         all_model_checkpoint_timestamps: 1764503600.25\n\
         last_preserved_timestamp: 1764490000.0\n",
    )
    .unwrap();
    for number in [10, 20] {
        std::fs::write(
            directory.join(format!("model.ckpt-{number}.index")),
            [7u8; 40],
        )
        .unwrap();
        std::fs::write(
            directory.join(format!("model.ckpt-{number}.data-00000-of-00001")),
            vec![number as u8; 1000],
        )
        .unwrap();
    }
}
