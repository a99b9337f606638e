//! The evidence stage's errors. Each names the file it concerns and, where there is one, the fix.

use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// ENOSPC / SQLITE_FULL. Nothing acknowledged is lost: the batch stays queued for a retry.
    #[error(
        "disk full while writing {path}: free space on that file system; the unwritten batch is kept \
         in memory and retried, nothing already committed is lost"
    )]
    DiskFull { path: PathBuf },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("database {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    /// The host key file is missing, unsafe or unreadable.
    #[error("host key {path}: {reason}")]
    Key { path: PathBuf, reason: String },

    /// A store whose state the writer cannot safely continue from.
    #[error("evidence store {path}: {reason}")]
    Store { path: PathBuf, reason: String },

    #[error(
        "database {path} has schema version {found}; this oknek understands up to {supported}: \
         upgrade oknek before opening it"
    )]
    SchemaTooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },

    /// More bundles are queued than `max_pending` because commits keep failing.
    #[error(
        "evidence backlog full: {pending} bundles are waiting for a commit that keeps failing \
         (last error: {last_error})"
    )]
    Backlog { pending: usize, last_error: String },

    #[error(
        "invalid public key {input:?}: {reason} (expected oknek-ed25519:<base64>, as printed by `oknek key show`)"
    )]
    PublicKey { input: String, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error, turning ENOSPC/EDQUOT into [`Error::DiskFull`].
    pub fn io(path: &Path, source: io::Error) -> Error {
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => Error::DiskFull {
                path: path.to_owned(),
            },
            _ => Error::Io {
                path: path.to_owned(),
                source,
            },
        }
    }

    /// Wraps a SQLite error, turning SQLITE_FULL (and I/O errors caused by ENOSPC) into
    /// [`Error::DiskFull`].
    pub fn db(path: &Path, source: rusqlite::Error) -> Error {
        if let rusqlite::Error::SqliteFailure(e, _) = &source {
            // SQLITE_IOERR_WRITE / _FSYNC with errno ENOSPC is reported as SQLITE_FULL on Linux;
            // SQLITE_IOERR_SHMSIZE and friends are what a full tmpfs gives for the -shm file.
            if e.code == rusqlite::ErrorCode::DiskFull
                || e.extended_code == libc::ENOSPC
                || e.extended_code == rusqlite::ffi::SQLITE_IOERR_SHMSIZE
            {
                return Error::DiskFull {
                    path: path.to_owned(),
                };
            }
        }
        Error::Db {
            path: path.to_owned(),
            source,
        }
    }

    pub fn key(path: &Path, reason: impl Into<String>) -> Error {
        Error::Key {
            path: path.to_owned(),
            reason: reason.into(),
        }
    }

    pub fn store(path: &Path, reason: impl Into<String>) -> Error {
        Error::Store {
            path: path.to_owned(),
            reason: reason.into(),
        }
    }

    /// True for a full disk (the caller may retry later).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Error::DiskFull { .. })
    }
}
