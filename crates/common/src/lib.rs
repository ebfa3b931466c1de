//! s3vol's shared core.
//!
//! Everything the filesystem needs from an object store is the [`ObjectStore`] trait in
//! [`store`]; its one error type is [`StoreError`] in [`error`]. Implementations live elsewhere
//! (`s3-backend::S3Store` for real S3) except the test doubles behind the `testing` feature:
//! [`memory::InMemoryStore`], [`failure::FailureStore`] and the [`conformance`] suite that every
//! implementation must pass.

pub mod bytesize;
pub mod error;
pub mod metered;
pub mod metrics;
pub mod names;
pub mod store;

#[cfg(feature = "testing")]
pub mod conformance;
#[cfg(feature = "testing")]
pub mod failure;
#[cfg(feature = "testing")]
pub mod memory;

pub use error::{ErrorKind, StoreError, StoreResult};
pub use names::{BucketName, NameError};
pub use store::{
    CompletedPart, ETag, ListPage, ListParams, ListedObject, ObjectMeta, ObjectStore, PutResult,
    UploadId, UserMetadata,
};
