//! s3vol's data path to S3-compatible object stores.
//!
//! - [`s3`]: [`S3Store`], the [`ObjectStore`](common::ObjectStore) on aws-sdk-s3, with its
//!   configuration and the mapping of S3 errors to [`common::StoreError`] kinds.
//! - [`cache`]: the chunk cache in front of any store: memory tier on moka, disk tier with a hard
//!   byte cap, one request per missing chunk however many readers want it.
//! - [`readahead`]: per-file sequential read detection that fetches ahead in parallel.
//! - [`upload`]: the streaming multipart uploader; [`upload_journal`], its record of uploads
//!   in progress so that a crash's leftovers are aborted at the next start; [`write_budget`], the
//!   memory its part buffers share.
//! - [`copy`]: server-side copies of any size (one CopyObject, or parts copied by the server).
//!
//! Everything but [`s3`] is generic over `ObjectStore`, so it is tested over the in-memory store.

pub mod cache;
pub mod copy;
pub mod readahead;
pub mod s3;
pub mod upload;
pub mod upload_journal;
pub mod write_budget;

pub use s3::{CredentialsSource, PathStyle, S3Config, S3Store};
