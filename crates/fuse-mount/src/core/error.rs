//! [`FsError`]: what a filesystem operation can fail with, and the errno each one becomes.

use common::{ErrorKind, StoreError};

#[derive(Debug, Clone, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("directory not empty")]
    NotEmpty,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("read-only volume")]
    ReadOnly,
    #[error("file name too long (over 255 bytes)")]
    NameTooLong,
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("bad file handle")]
    BadHandle,
    /// The file was removed (unlinked, or replaced by a rename) while open, and its bytes
    /// were not kept: its old name now belongs to nothing, or to another file.
    #[error("the file was removed while open and its bytes are gone")]
    Removed,
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("local staging file: {0}")]
    Local(String),
    /// The disk of the cache folder is full: a staging file cannot take the bytes.
    #[error("no space left on the cache folder's disk: {0}")]
    NoSpace(String),
}

pub type FsResult<T> = Result<T, FsError>;

impl FsError {
    /// The errno a program expects for this error.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::ReadOnly => libc::EROFS,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::Invalid(_) => libc::EINVAL,
            FsError::BadHandle => libc::EBADF,
            FsError::Removed => libc::ESTALE,
            FsError::Local(_) => libc::EIO,
            FsError::NoSpace(_) => libc::ENOSPC,
            FsError::Store(e) => match e.kind() {
                ErrorKind::NotFound => libc::ENOENT,
                ErrorKind::AccessDenied => libc::EACCES,
                // The object changed under an open file: the handle's view is stale.
                ErrorKind::PreconditionFailed => libc::ESTALE,
                ErrorKind::InvalidRange => libc::EINVAL,
                // Everything else is "the storage failed": retry later, data not lost.
                ErrorKind::NoSuchBucket
                | ErrorKind::Throttled
                | ErrorKind::Timeout
                | ErrorKind::Network
                | ErrorKind::InvalidInput
                | ErrorKind::ServerError
                | ErrorKind::Other => libc::EIO,
            },
        }
    }
}
