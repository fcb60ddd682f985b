//! Count and GC: a scan over every record file, in bounded batches.
//!
//! - One blocking call examines at most [`BATCH`] directory entries, then returns a
//!   [`Cursor`] to resume from; the async side runs one call per batch, each under the
//!   blocking timeout, and stops at the first failure.
//! - A batch whose caller stopped waiting (timed out, or dropped) stops at the next entry.
//! - Only record files (64 hex digits) in the root's subdirectories are looked at;
//!   temporaries and strangers are left alone.
//! - A file or directory that cannot be read (`EMFILE`, `EACCES`, `EIO`) is logged and
//!   skipped: not counted, never deleted.
//! - GC deletes a record only if, re-read under its stripe lock, it is expired or does not
//!   decode.

use std::fs::{self, File, ReadDir};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::{Inner, Read2, damaged};
use crate::provider::blocking::Cancel;
use crate::record::{HEADER, peek_expiry};

/// The most directory entries one blocking call examines.
pub(super) const BATCH: usize = 256;

/// Where a scan stands between two blocking calls.
#[derive(Debug, Default)]
pub(super) struct Cursor {
    /// The root's subdirectories not opened yet; `None` until the root is listed.
    dirs: Option<Vec<PathBuf>>,
    /// The subdirectory being read, and its listing.
    current: Option<(PathBuf, ReadDir)>,
}

impl Cursor {
    /// Whether every record file has been visited.
    pub(super) fn done(&self) -> bool {
        self.current.is_none() && self.dirs.as_ref().is_some_and(Vec::is_empty)
    }
}

impl Inner {
    /// Counts the live records of the next batch.
    pub(super) fn count_batch(&self, cursor: &mut Cursor, cancel: &Cancel) -> io::Result<usize> {
        let now = self.clock.now_ms();
        let mut live = 0;
        self.scan_batch(cursor, cancel, |_, expiry| {
            live += usize::from(expiry.is_some_and(|e| e > now));
        })?;
        Ok(live)
    }

    /// Deletes the expired and undecodable records of the next batch; returns how many.
    pub(super) fn gc_batch(&self, cursor: &mut Cursor, cancel: &Cancel) -> io::Result<usize> {
        let now = self.clock.now_ms();
        let mut removed = 0;
        self.scan_batch(cursor, cancel, |key, expiry| {
            if expiry.is_none_or(|e| e <= now) {
                match self.collect(key) {
                    Ok(done) => removed += usize::from(done),
                    Err(e) => skipped(key, &e),
                }
            }
        })?;
        Ok(removed)
    }

    /// Removes the record under `key` if, checked under its stripe lock, it is expired or
    /// damaged; a read error leaves it in place and is returned.
    fn collect(&self, key: &str) -> io::Result<bool> {
        let _guard = self.lock(self.stripe(key));
        // A concurrent save may have refreshed it since the scan.
        match self.read(key) {
            Ok(Read2::Dead) => {}
            Err(e) if damaged(&e) => {}
            Ok(_) => return Ok(false),
            Err(e) => return Err(e),
        }
        self.remove(key, false)?;
        Ok(true)
    }

    /// Visits the record files of the next batch (at most [`BATCH`] directory entries) with
    /// their idle deadline (`None` if the header does not decode). Only a failure to list
    /// the root is an error.
    fn scan_batch(
        &self,
        cursor: &mut Cursor,
        cancel: &Cancel,
        mut visit: impl FnMut(&str, Option<u64>),
    ) -> io::Result<()> {
        let Cursor { dirs, current } = cursor;
        let dirs = match dirs {
            Some(dirs) => dirs,
            None => dirs.insert(self.subdirectories()?),
        };
        let mut header = [0u8; HEADER];
        let mut examined = 0;
        while examined < BATCH && !cancel.is_cancelled() {
            examined += 1;
            let Some((dir, entries)) = current else {
                let Some(dir) = dirs.pop() else { break };
                match fs::read_dir(&dir) {
                    Ok(entries) => *current = Some((dir, entries)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => skipped_dir(&dir, &e),
                }
                continue;
            };
            let entry = match entries.next() {
                Some(Ok(entry)) => entry,
                Some(Err(e)) => {
                    // Where the listing would resume is unknown: leave the rest for next time.
                    skipped_dir(dir, &e);
                    *current = None;
                    continue;
                }
                None => {
                    *current = None;
                    continue;
                }
            };
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            let expiry = match File::open(entry.path()).and_then(|mut f| f.read_exact(&mut header))
            {
                Ok(()) => peek_expiry(&header).ok(),
                // Shorter than a header: damaged (a record file is never truncated).
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => None,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    skipped(&name, &e);
                    continue;
                }
            };
            visit(&name, expiry);
        }
        #[cfg(test)]
        self.batches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(examined);
        Ok(())
    }

    /// The root's subdirectories, where the record files live.
    fn subdirectories(&self) -> io::Result<Vec<PathBuf>> {
        let mut dirs = Vec::new();
        for entry in fs::read_dir(&self.root)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                dirs.push(entry.path());
            }
        }
        Ok(dirs)
    }
}

/// Logs a record file that count or GC left alone after an I/O error (by its hashed key).
fn skipped(key: &str, e: &io::Error) {
    tracing::warn!(key, error = %e, "file provider skipped a session file after an I/O error");
}

/// Logs a directory whose listing count or GC skipped (or cut short) after an I/O error.
fn skipped_dir(dir: &Path, e: &io::Error) {
    tracing::warn!(dir = %dir.display(), error = %e, "file provider skipped a session directory after an I/O error");
}
