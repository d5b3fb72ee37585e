//! `SaveFile`: a save callback's way to write a file through the library,
//! so that its CRC32C for the manifest is computed while it is written
//! instead of by reading the file again before the commit.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::manifest::{check_suffix, ByteString, FileRecord};
use crate::transaction;

/// A file `<prefix><suffix>` of the save in progress whose prefix the save
/// callback was given. Write it, then `finish` it; a file dropped without
/// `finish` is still part of the save, and is read again for its CRC32C.
#[derive(Debug)]
pub struct SaveFile {
    file: File,
    path: PathBuf,
    record: FileRecord,
    written: transaction::Written,
}

impl SaveFile {
    /// Creates (or truncates) `<prefix><suffix>`. `prefix` must be the
    /// prefix a save callback received, during that save; `suffix` is
    /// `.<name>` or `/<path>` (parent directories are created).
    pub fn create(prefix: &Path, suffix: &str) -> Result<SaveFile> {
        let written = transaction::save_in_progress(prefix).ok_or_else(|| {
            Error::invalid(format!(
                "'{}' is not the prefix of a save in progress",
                prefix.display()
            ))
        })?;
        check_suffix(suffix.as_bytes()).map_err(Error::invalid)?;
        if suffix.is_empty() {
            return Err(Error::invalid("the suffix must not be empty"));
        }
        let path = crate::paths::with_suffix(prefix, suffix);
        let created = (|| {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            File::create(&path)
        })();
        let file = created.map_err(|err| Error::io_at("create", &path, err))?;
        Ok(SaveFile {
            file,
            path,
            record: FileRecord {
                suffix: ByteString::from_bytes(suffix.as_bytes()),
                size: 0,
                crc32c: 0,
            },
            written,
        })
    }

    /// Flushes the file and records its size and CRC32C for the manifest.
    pub fn finish(mut self) -> Result<()> {
        self.file
            .flush()
            .map_err(|err| Error::io_at("write", &self.path, err))?;
        self.written.lock().unwrap().push(self.record.clone());
        Ok(())
    }
}

impl Write for SaveFile {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let written = self.file.write(bytes)?;
        self.record.crc32c = crc32c::crc32c_append(self.record.crc32c, &bytes[..written]);
        self.record.size += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}
