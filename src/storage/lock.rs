//! The lock that keeps two chatroom processes off one data file.
//!
//! SQLite in WAL mode happily lets several processes write the same file,
//! one transaction at a time. For us that would be a bug, not a feature:
//! each process assigns message ids from its own in-memory counter, so two
//! of them on one file would hand out the same ids. So [`Storage::open`]
//! takes an exclusive advisory lock first, and a second process stops at
//! startup with a message naming the file, instead of failing later on a
//! duplicate key.
//!
//! We lock a separate `<data file>.lock` rather than the database itself:
//! SQLite takes POSIX (`fcntl`) locks on the database, and POSIX locks are
//! dropped when *any* descriptor of the file closes in the process, a trap
//! we stay out of by not touching SQLite's files at all. `flock(2)` locks
//! belong to the open file description, so they also work between two
//! `Storage`s in one process, which is what the tests rely on.
//!
//! [`Storage::open`]: super::Storage::open

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::StorageError;

/// Holds the lock for as long as it lives; the kernel releases it when the
/// file closes, including when the process dies (`kill -9` too), so a crash
/// never leaves a stale lock behind.
#[derive(Debug)]
pub(super) struct DataLock {
    /// Kept open only for the lock it carries.
    _file: File,
}

/// `<db path>.lock`, beside the data file.
pub(super) fn lock_path(db: &Path) -> PathBuf {
    let mut name = OsString::from(db.as_os_str());
    name.push(".lock");
    PathBuf::from(name)
}

impl DataLock {
    /// Take the lock for `db`, or say who has it.
    ///
    /// The lock file is never deleted, on purpose: removing it while another
    /// process is opening it would let both "hold" a lock on different files.
    pub(super) fn acquire(db: &Path) -> Result<DataLock, StorageError> {
        let lock = lock_path(db);
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&lock).map_err(|source| {
                StorageError::Io {
                    context: format!(
                        "cannot create lock file {} for data file {}; choose a writable --data \
                     (or --data none to keep history in memory only)",
                        lock.display(),
                        db.display()
                    ),
                    source,
                }
            })?;

        // SAFETY: `file` is open for the whole call, so the descriptor is
        // valid; flock only reads its arguments.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(DataLock { _file: file });
        }
        let source = std::io::Error::last_os_error();
        if source.kind() == std::io::ErrorKind::WouldBlock {
            // EWOULDBLOCK: someone else holds it. LOCK_NB makes this an
            // answer rather than a wait, so a second server fails fast.
            return Err(StorageError::InUse { path: db.to_path_buf(), lock });
        }
        // Anything else (ENOLCK on some network file systems) means we
        // cannot promise exclusivity; refuse rather than risk two writers.
        Err(StorageError::Io {
            context: format!(
                "cannot lock {} (needed so only one process uses {}); put --data on a local disk",
                lock.display(),
                db.display()
            ),
            source,
        })
    }
}
