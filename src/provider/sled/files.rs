//! The data directory and the modes of the files sled creates in it.
//!
//! Invariants:
//! - The directory is created with mode `0700` (on Unix) if missing; an existing one keeps
//!   its mode.
//! - sled 0.34 has no mode option: it creates its files and folders with the process umask
//!   (typically `0644` and `0755`). It creates `conf`, `db`, the folder `blobs` and
//!   `snap.<lsn>` (written as `snap.<lsn>.generating`, then renamed) when it opens, and at
//!   run time a file `blobs/<lsn>` for every log message too large for a quarter of a
//!   segment (a record of more than about 128 KiB).
//! - [`restrict`] sets exactly those files to `0600` and folders to `0700` on Unix, and
//!   touches nothing else in the directory: no other file, no symbolic link. The process
//!   umask is never changed (it is process-wide, so it would race other threads).
//! - The provider calls it after opening the database (before the provider is returned),
//!   after every pass of the writer thread (every 500 ms), after
//!   [`SledProvider::persist`](super::SledProvider::persist) and on close. A blob sled
//!   writes in between keeps the umask's mode until the next pass, inside the `blobs`
//!   folder that is already `0700`.
//! - Elsewhere (Windows) files inherit the directory's ACL, and [`restrict`] does nothing.

use std::fs;
use std::io;
use std::path::Path;

/// Creates `dir` and its missing parents, the new folders with mode `0700` on Unix.
pub(super) fn create_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Makes sled's files in `dir` `0600` and its folders `0700` (see the module documentation).
/// A file that disappears meanwhile (sled removes old snapshots and blobs) is no error.
#[cfg(unix)]
pub(super) fn restrict(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == "blobs" {
            if set_mode(&entry.path(), Kind::Folder)? {
                for blob in fs::read_dir(entry.path())? {
                    set_mode(&blob?.path(), Kind::File)?;
                }
            }
        } else if name == "conf" || name == "db" || name.starts_with("snap.") {
            set_mode(&entry.path(), Kind::File)?;
        }
    }
    Ok(())
}

#[cfg(not(unix))]
pub(super) fn restrict(_dir: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(unix)]
#[derive(Clone, Copy)]
enum Kind {
    File,
    Folder,
}

/// Gives `path` the private mode of `kind` if it is one (not a link); returns whether it is.
#[cfg(unix)]
fn set_mode(path: &Path, kind: Kind) -> io::Result<bool> {
    use std::os::unix::fs::PermissionsExt;

    let meta = match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        other => other?,
    };
    let (is_kind, mode) = match kind {
        Kind::File => (meta.is_file(), 0o600),
        Kind::Folder => (meta.is_dir(), 0o700),
    };
    if !is_kind {
        return Ok(false);
    }
    if meta.permissions().mode() & 0o7777 != mode {
        match fs::set_permissions(path, fs::Permissions::from_mode(mode)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            other => other?,
        }
    }
    Ok(true)
}
