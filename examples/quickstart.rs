//! The Rust quick start: a toy trainer that saves its state with its own
//! callbacks every 10 steps, keeps the 3 newest checkpoints and resumes
//! from the latest one.
//!
//! Usage: cargo run --example quickstart -- DIRECTORY [STEPS [STOP_AT]]
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ckpt_manager::{Callbacks, CheckpointManager, Config, MaxToKeep};

/// What the trainer saves: its step and one weight.
#[derive(Default)]
struct Model {
    step: i64,
    weight: f64,
}

/// Every file of a checkpoint is named `<prefix>` or `<prefix>.<suffix>`.
fn model_file(prefix: &Path) -> PathBuf {
    let mut name = OsString::from(prefix.as_os_str());
    name.push(".model");
    PathBuf::from(name)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let directory = args
        .get(1)
        .ok_or("usage: quickstart DIRECTORY [STEPS [STOP_AT]]")?;
    let steps: i64 = args.get(2).map_or(Ok(50), |s| s.parse())?;
    let stop_at: i64 = args.get(3).map_or(Ok(steps), |s| s.parse())?;
    let model = Arc::new(Mutex::new(Model::default()));

    let mut config = Config::new(directory, MaxToKeep::Last(3))?;
    config.set_checkpoint_interval(Some(10))?; // save() saves at most every 10 steps...
    config.set_last_checkpoint_step(Some(0)); // ...counted from step 0
    let (counted, saved, restored) = (model.clone(), model.clone(), model.clone());
    let callbacks = Callbacks::new()
        .step_counter(move || Ok(counted.lock().unwrap().step))
        .on_save(move |prefix, _number| {
            let m = saved.lock().unwrap();
            std::fs::write(model_file(prefix), format!("{} {}", m.step, m.weight))?;
            Ok(())
        })
        .on_restore(move |prefix| {
            let text = std::fs::read_to_string(model_file(prefix))?;
            let (step, weight) = text.split_once(' ').ok_or("a damaged model file")?;
            let mut m = restored.lock().unwrap();
            (m.step, m.weight) = (step.parse()?, weight.parse()?);
            Ok(())
        });
    let mut manager = CheckpointManager::new(config, callbacks)?;

    match manager.restore_or_initialize()? {
        Some(prefix) => {
            let step = model.lock().unwrap().step;
            println!("resumed from {} at step {step}", prefix.display())
        }
        None => println!("no checkpoint in {directory}: starting at step 0"),
    }
    loop {
        {
            let mut m = model.lock().unwrap();
            if m.step >= stop_at {
                break;
            }
            m.step += 1;
            m.weight = 0.9 * m.weight + 0.1;
        }
        // None when the interval skipped the save.
        if let Some(prefix) = manager.save(None, true)? {
            println!("saved {}", prefix.display());
        }
    }
    let m = model.lock().unwrap();
    println!(
        "at step {}: weight {:.6}; kept {:?}",
        m.step,
        m.weight,
        manager.checkpoints()
    );
    Ok(())
}
