//! A manager on a directory given relative to the working directory: the
//! prefixes it gives out work as arguments to its own calls. Its own test
//! binary, since it changes the process's working directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ckpt_manager::{Callbacks, CheckpointManager, CommError, Communicator, Config, MaxToKeep};

/// One rank alone: every collective is a copy.
struct Alone;

impl Communicator for Alone {
    fn rank(&self) -> u32 {
        0
    }

    fn size(&self) -> u32 {
        1
    }

    fn barrier(&self, _: Duration) -> Result<(), CommError> {
        Ok(())
    }

    fn broadcast(&self, _: &mut [u8], _: u32, _: Duration) -> Result<(), CommError> {
        Ok(())
    }

    fn all_gather(&self, record: &[u8], _: Duration) -> Result<Vec<Vec<u8>>, CommError> {
        Ok(vec![record.to_vec()])
    }
}

fn open(across_ranks: bool) -> CheckpointManager {
    let mut config = Config::new("ckpts", MaxToKeep::Last(1)).unwrap();
    if across_ranks {
        config.set_communicator(Some(Arc::new(Alone)));
    }
    let file = |prefix: &Path| {
        let mut name = prefix.as_os_str().to_owned();
        name.push(".bin");
        PathBuf::from(name)
    };
    let callbacks = Callbacks::new()
        .on_save(move |prefix, _| Ok(fs::write(file(prefix), b"w")?))
        .on_restore(move |prefix| Ok(fs::read(file(prefix)).map(drop)?));
    CheckpointManager::new(config, callbacks).unwrap()
}

#[test]
fn prefixes_of_a_relative_directory_name_its_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    std::env::set_current_dir(dir.path()).unwrap();

    let mut manager = open(false);
    let first = manager.save(None, true).unwrap().unwrap();
    assert_eq!(first, Path::new("ckpts/ckpt-1"));
    manager.set_pinned(&first, true).unwrap();
    let info = manager.checkpoint_info(&first).unwrap();
    assert!(
        info.managed && info.pinned && info.timestamp.is_some(),
        "{info:?}"
    );
    // Pinned, so kept beyond max_to_keep.
    manager.save(None, true).unwrap().unwrap();
    assert_eq!(manager.checkpoints().len(), 2);
    drop(manager);

    let mut manager = open(true);
    let saved = manager.save(None, true).unwrap().unwrap();
    drop(manager);
    let mut manager = open(true);
    assert_eq!(manager.restore_or_initialize().unwrap(), Some(saved));
}
