//! A read-only file system and a full disk, made real with small tmpfs
//! mounts. Mounting needs root (CI runs as root); elsewhere these tests
//! print "skipped, checked nothing" on stderr (shown even when they pass)
//! and pass. Linux only (tmpfs, mount(8)).

#![cfg(target_os = "linux")]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use ckpt_manager::{
    latest_checkpoint, Callbacks, CheckpointManager, Config, Error, LatestOptions, MaxToKeep,
};

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    point: PathBuf,
    _parent: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let parent = tempfile::tempdir().unwrap();
        let point = parent.path().join("fs");
        fs::create_dir(&point).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&point)
            .output();
        let failure = match &mounted {
            Ok(output) if output.status.success() => None,
            Ok(output) => Some(
                String::from_utf8_lossy(&output.stderr)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned(),
            ),
            Err(err) => Some(format!("cannot run mount: {err}")),
        };
        if let Some(failure) = failure {
            // Straight to stderr: the test harness hides what a passing
            // test prints with eprintln!.
            let test = std::thread::current().name().unwrap_or("?").to_owned();
            let _ = writeln!(
                std::io::stderr(),
                "{test}: skipped, checked nothing: mounting a {size} tmpfs needs root \
                 (CAP_SYS_ADMIN): {failure}"
            );
            return None;
        }
        Some(Tmpfs {
            point,
            _parent: parent,
        })
    }

    fn remount_read_only(&self) {
        let status = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.point)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.point).status();
    }
}

/// Checkpoints of one `.data` file of `size` bytes holding the number.
fn open(dir: &Path, size: usize, read_only: bool) -> Result<CheckpointManager, Error> {
    let mut config = Config::new(dir, MaxToKeep::Last(2)).unwrap();
    config.set_read_only(read_only);
    let callbacks = Callbacks::new()
        .on_save(move |prefix, number| {
            Ok(fs::write(
                format!("{}.data", prefix.display()),
                vec![number as u8; size],
            )?)
        })
        .on_restore(|prefix| {
            fs::read(format!("{}.data", prefix.display()))?;
            Ok(())
        })
        .log(|_, _| {});
    CheckpointManager::new(config, callbacks)
}

#[test]
fn a_read_only_file_system_refuses_writers_and_serves_readers() {
    let Some(tmpfs) = Tmpfs::mount("4m") else {
        return;
    };
    let dir = tmpfs.point.join("run");
    let mut writer = open(&dir, 1000, false).unwrap();
    writer.save(None, true).unwrap();
    drop(writer);
    tmpfs.remount_read_only();

    let err = open(&dir, 1000, false).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(err.to_string().contains("Read-only file system"), "{err}");
    let mut reader = open(&dir, 1000, true).unwrap();
    assert_eq!(
        reader.restore_or_initialize().unwrap(),
        Some(dir.join("ckpt-1"))
    );
    let mut quiet = |_: &str| {};
    assert_eq!(
        latest_checkpoint(&dir, LatestOptions::default(), &mut quiet).unwrap(),
        Some(dir.join("ckpt-1"))
    );
}

#[test]
fn a_full_disk_fails_the_save_and_keeps_the_last_good_checkpoint() {
    let Some(tmpfs) = Tmpfs::mount("1m") else {
        return;
    };
    let dir = tmpfs.point.join("run");
    let mut manager = open(&dir, 400_000, false).unwrap();
    manager.save(None, true).unwrap();
    manager.save(None, true).unwrap();
    let state_before = fs::read(dir.join("checkpoint")).unwrap();
    // Two checkpoints fill most of the megabyte: the third cannot fit.
    let err = manager.save(None, true).unwrap_err();
    assert!(err.to_string().contains("No space left"), "{err}");
    assert_eq!(fs::read(dir.join("checkpoint")).unwrap(), state_before);
    assert_eq!(manager.latest_checkpoint(), Some(dir.join("ckpt-2")));
    assert!(
        !dir.join("ckpt-3.data").exists(),
        "the failed save's files are removed"
    );
    drop(manager);
    let mut reopened = open(&dir, 400_000, false).unwrap();
    assert_eq!(
        reopened.restore_or_initialize().unwrap(),
        Some(dir.join("ckpt-2"))
    );
}
