//! The one error type of the object-store layer.
//!
//! Every implementation maps its failures onto an [`ErrorKind`], so callers (the chunk cache, the
//! filesystem, the volume plugin) decide what to do from the kind alone: retry, return `ENOENT`,
//! tell the user their key is wrong. The message is a full sentence meant for a human and must say
//! what to check (endpoint, credentials, bucket), never just "dispatch failure".

use std::fmt;

/// What went wrong, independent of the store implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The object (or upload) does not exist.
    NotFound,
    /// The object changed: an `If-Match` ETag no longer matches.
    PreconditionFailed,
    /// The credentials were rejected or lack permission.
    AccessDenied,
    /// The bucket does not exist.
    NoSuchBucket,
    /// The store asked us to slow down (HTTP 429/503 SlowDown).
    Throttled,
    /// A connect or request timeout expired.
    Timeout,
    /// The endpoint could not be reached (DNS, refused connection, TLS, reset).
    Network,
    /// The request itself was invalid (bad bucket name, bad range, bad argument).
    InvalidInput,
    /// The requested range starts beyond the end of the object.
    InvalidRange,
    /// The store failed on its side (HTTP 5xx other than throttling).
    ServerError,
    /// Anything else; the message carries the details.
    Other,
}

impl ErrorKind {
    /// Whether the same request may succeed if sent again after a pause.
    pub fn is_retryable(self) -> bool {
        match self {
            ErrorKind::Throttled
            | ErrorKind::Timeout
            | ErrorKind::Network
            | ErrorKind::ServerError => true,
            ErrorKind::NotFound
            | ErrorKind::PreconditionFailed
            | ErrorKind::AccessDenied
            | ErrorKind::NoSuchBucket
            | ErrorKind::InvalidInput
            | ErrorKind::InvalidRange
            | ErrorKind::Other => false,
        }
    }
}

/// An error from an [`ObjectStore`](crate::ObjectStore): a kind and a message for humans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError {
    kind: ErrorKind,
    message: String,
}

pub type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn not_found(key: &str) -> Self {
        Self::new(
            ErrorKind::NotFound,
            format!("object {key:?} does not exist"),
        )
    }

    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the same request may succeed if sent again after a pause.
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StoreError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_kinds_are_retryable() {
        let retryable: Vec<_> = [
            ErrorKind::NotFound,
            ErrorKind::PreconditionFailed,
            ErrorKind::AccessDenied,
            ErrorKind::NoSuchBucket,
            ErrorKind::Throttled,
            ErrorKind::Timeout,
            ErrorKind::Network,
            ErrorKind::InvalidInput,
            ErrorKind::InvalidRange,
            ErrorKind::ServerError,
            ErrorKind::Other,
        ]
        .into_iter()
        .filter(|k| k.is_retryable())
        .collect();
        assert_eq!(
            retryable,
            vec![
                ErrorKind::Throttled,
                ErrorKind::Timeout,
                ErrorKind::Network,
                ErrorKind::ServerError
            ]
        );
    }

    #[test]
    fn display_is_the_message() {
        let e = StoreError::not_found("a/b");
        assert_eq!(e.to_string(), "object \"a/b\" does not exist");
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }
}
