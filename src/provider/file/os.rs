//! The file provider's platform-specific file operations (what differs off Unix is listed in
//! the parent module's docs).
//!
//! - Unix: private modes (`0700`, `0600`), a positioned in-place write, directory `fsync`.
//! - Elsewhere: default permissions, seek then write, no directory flush.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::Path;

#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};

/// Creates `dir` and its missing parents, private to this user on Unix.
pub(super) fn make_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    builder.mode(0o700);
    builder.create(dir)
}

/// Creates a new file for writing (failing if it exists), private to this user on Unix.
pub(super) fn create_new(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(path)
}

/// Writes all of `bytes` at the start of `f`.
#[cfg(unix)]
pub(super) fn write_at_start(f: &File, bytes: &[u8]) -> io::Result<()> {
    f.write_all_at(bytes, 0)
}

/// Writes all of `bytes` at the start of `f`.
#[cfg(not(unix))]
pub(super) fn write_at_start(mut f: &File, bytes: &[u8]) -> io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    f.seek(SeekFrom::Start(0))?;
    f.write_all(bytes)
}

/// Makes the renames and deletes done in `dir` durable.
#[cfg(unix)]
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Makes the renames and deletes done in `dir` durable: not possible through std here.
#[cfg(not(unix))]
pub(super) fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}
