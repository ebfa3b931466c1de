//! The [`ObjectStore`] trait: everything the filesystem needs from S3, and nothing more.
//!
//! A store is bound to one bucket; keys are full object keys in that bucket (the volume prefix is
//! the caller's business). Contracts every implementation keeps (checked by the conformance
//! suite in `common::conformance`):
//! - `get_range` with `if_match` fails with `PreconditionFailed` when the object's ETag is no
//!   longer that one, so a reader never mixes two versions of an object.
//! - `list` returns keys in ascending byte order, at most `max_keys` (and never more than 1000)
//!   entries per page, and a continuation token when more follow.
//! - `delete` succeeds when the object is already gone.
//! - `complete_multipart` returns the final object's real ETag even where the server leaves it
//!   out of its answer (Ceph RGW 16).

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::pin::Pin;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

use crate::error::StoreResult;

/// User metadata (`x-amz-meta-*`), keys lowercase without the prefix.
pub type UserMetadata = BTreeMap<String, String>;

/// A stream of body bytes; errors are [`StoreError`](crate::StoreError)s.
pub type ByteStream = Pin<Box<dyn Stream<Item = StoreResult<Bytes>> + Send>>;

/// The most entries one list page may hold (the S3 limit).
pub const MAX_LIST_KEYS: u32 = 1000;

/// An entity tag as the server sent it, quotes included (`"9b2cf535f27731c974343645a3985328"`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ETag(String);

impl ETag {
    pub fn new(value: impl Into<String>) -> Self {
        ETag(value.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for ETags of multipart uploads (`"<hex>-<parts>"`).
    pub fn is_multipart(&self) -> bool {
        self.0.trim_matches('"').contains('-')
    }
}

impl fmt::Display for ETag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What HEAD tells about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    pub etag: ETag,
    pub last_modified: SystemTime,
    pub user_metadata: UserMetadata,
}

/// One object of a list page. Listing carries no user metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    pub key: String,
    pub size: u64,
    pub etag: ETag,
    pub last_modified: SystemTime,
}

/// One page of a listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPage {
    pub objects: Vec<ListedObject>,
    /// With a delimiter: the "sub-directories", each ending in the delimiter, in order.
    pub common_prefixes: Vec<String>,
    /// Pass back in [`ListParams::continuation_token`] for the next page; `None` on the last.
    pub next_continuation_token: Option<String>,
}

/// What to list.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListParams {
    pub prefix: String,
    pub delimiter: Option<String>,
    pub continuation_token: Option<String>,
    /// Clamped to 1..=[`MAX_LIST_KEYS`].
    pub max_keys: u32,
}

impl ListParams {
    /// All keys under `prefix`, recursively, in pages of 1000.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            delimiter: None,
            continuation_token: None,
            max_keys: MAX_LIST_KEYS,
        }
    }

    /// Group keys at `delimiter` into common prefixes (one directory level with `/`).
    pub fn delimiter(mut self, delimiter: impl Into<String>) -> Self {
        self.delimiter = Some(delimiter.into());
        self
    }

    pub fn continuation_token(mut self, token: Option<String>) -> Self {
        self.continuation_token = token;
        self
    }

    pub fn max_keys(mut self, max_keys: u32) -> Self {
        self.max_keys = max_keys.clamp(1, MAX_LIST_KEYS);
        self
    }
}

/// The result of a write that created an object version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutResult {
    pub etag: ETag,
}

/// A multipart upload in progress.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UploadId(pub String);

/// A part that was uploaded, as `complete_multipart` needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedPart {
    /// 1-based, as in S3.
    pub part_number: u32,
    pub etag: ETag,
}

/// A multipart upload that was started and neither completed nor aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpload {
    pub key: String,
    pub upload_id: UploadId,
}

/// An object store bound to one bucket. See the module docs for the contracts.
#[async_trait]
pub trait ObjectStore: Send + Sync + fmt::Debug + 'static {
    /// The bucket this store reads and writes (part of cache keys).
    fn bucket(&self) -> &str;

    /// Size, ETag, modification time and user metadata of `key`; `NotFound` if absent.
    async fn head(&self, key: &str) -> StoreResult<ObjectMeta>;

    /// The bytes of `range` of `key`, as a stream. With `if_match`, fails with
    /// `PreconditionFailed` if the object is no longer that version. A range reaching past the
    /// end is cut at the end; a range starting at or past the end is `InvalidRange` (except
    /// `0..0`, which is empty).
    async fn get_stream(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&ETag>,
    ) -> StoreResult<ByteStream>;

    /// Like [`get_stream`](Self::get_stream), collected into one buffer.
    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&ETag>,
    ) -> StoreResult<Bytes> {
        use futures::TryStreamExt;
        let capacity = range.end.saturating_sub(range.start).min(64 << 20) as usize;
        let mut stream = self.get_stream(key, range, if_match).await?;
        let mut buf = bytes::BytesMut::with_capacity(capacity);
        while let Some(chunk) = stream.try_next().await? {
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }

    /// One page of keys; see [`ListParams`].
    async fn list(&self, params: &ListParams) -> StoreResult<ListPage>;

    /// Create or replace `key` with `body` and `metadata` in one request.
    async fn put(&self, key: &str, body: Bytes, metadata: &UserMetadata) -> StoreResult<PutResult>;

    /// Start a multipart upload of `key`; the metadata is applied at completion.
    async fn create_multipart(&self, key: &str, metadata: &UserMetadata) -> StoreResult<UploadId>;

    /// Upload part `part_number` (1-based). All parts but the last must be at least 5 MiB on S3.
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &UploadId,
        part_number: u32,
        body: Bytes,
    ) -> StoreResult<CompletedPart>;

    /// Assemble the parts, in part-number order, into the object.
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &UploadId,
        parts: &[CompletedPart],
    ) -> StoreResult<PutResult>;

    /// Drop an unfinished upload and its parts. Succeeds if it is already gone.
    async fn abort_multipart(&self, key: &str, upload_id: &UploadId) -> StoreResult<()>;

    /// Unfinished multipart uploads of keys under `prefix`.
    async fn list_multipart_uploads(&self, prefix: &str) -> StoreResult<Vec<PendingUpload>>;

    /// The largest source [`copy`](Self::copy) takes (S3: 5 GiB). Bigger objects are copied
    /// with [`upload_part_copy`](Self::upload_part_copy).
    fn max_copy_size(&self) -> u64 {
        5 << 30
    }

    /// Server-side copy of bytes `range` of `src` (of version `if_match`, else
    /// `PreconditionFailed`) into part `part_number` of the multipart upload `upload_id` of
    /// `dst` (UploadPartCopy). The same size rules as [`upload_part`](Self::upload_part) apply.
    async fn upload_part_copy(
        &self,
        src: &str,
        range: Range<u64>,
        if_match: Option<&ETag>,
        dst: &str,
        upload_id: &UploadId,
        part_number: u32,
    ) -> StoreResult<CompletedPart>;

    /// Server-side copy of `src` to `dst`, in one request: sources up to
    /// [`max_copy_size`](Self::max_copy_size). With `metadata`, the copy gets it instead of the
    /// source's user metadata.
    async fn copy(
        &self,
        src: &str,
        dst: &str,
        metadata: Option<&UserMetadata>,
    ) -> StoreResult<PutResult>;

    /// Delete `key`. Succeeds whether or not it existed (S3 semantics).
    async fn delete(&self, key: &str) -> StoreResult<()>;
}
