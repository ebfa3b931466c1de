//! An in-memory [`ObjectStore`] with S3's semantics, for unit tests (feature `testing`).
//!
//! Keys are kept sorted (byte order, like S3); listing honours prefix, delimiter, page size and
//! continuation; ETags are the MD5 of the body (`"<md5 of part md5s>-<n>"` for multipart) so they
//! change exactly when the content changes; `If-Match` is checked. Each request is counted by
//! operation, so tests can assert how many requests a piece of code made.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use md5::{Digest, Md5};

use crate::error::{ErrorKind, StoreError, StoreResult};
use crate::store::*;

#[derive(Debug, Clone)]
struct StoredObject {
    body: Bytes,
    etag: ETag,
    last_modified: SystemTime,
    metadata: UserMetadata,
}

#[derive(Debug)]
struct Upload {
    key: String,
    metadata: UserMetadata,
    parts: BTreeMap<u32, (Bytes, ETag)>,
}

/// The operations counted by [`InMemoryStore::request_count`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Head,
    Get,
    List,
    Put,
    CreateMultipart,
    UploadPart,
    CompleteMultipart,
    AbortMultipart,
    ListMultipart,
    UploadPartCopy,
    Copy,
    Delete,
}

#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<String, StoredObject>,
    uploads: HashMap<String, Upload>,
    counts: HashMap<Op, u64>,
}

#[derive(Debug)]
pub struct InMemoryStore {
    bucket: String,
    state: Mutex<State>,
    next_upload: AtomicU64,
    max_copy_size: u64,
    part_copy_ignores_if_match: bool,
}

fn md5_hex(data: &[u8]) -> String {
    hex::encode(Md5::digest(data))
}

impl InMemoryStore {
    pub fn new(bucket: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            state: Mutex::new(State::default()),
            next_upload: AtomicU64::new(1),
            max_copy_size: 5 << 30,
            part_copy_ignores_if_match: false,
        }
    }

    /// Copy parts from whatever version the source has, whatever the condition says, as
    /// Ceph RGW 16 does with `x-amz-copy-source-if-match` on UploadPartCopy.
    pub fn ignoring_part_copy_conditions(mut self) -> Self {
        self.part_copy_ignores_if_match = true;
        self
    }

    /// Refuse to `copy` sources bigger than `bytes` in one request, as S3 does above 5 GiB.
    pub fn with_max_copy_size(mut self, bytes: u64) -> Self {
        self.max_copy_size = bytes;
        self
    }

    /// How many requests of kind `op` were made so far.
    pub fn request_count(&self, op: Op) -> u64 {
        self.lock().counts.get(&op).copied().unwrap_or(0)
    }

    /// Number of multipart uploads started and not yet completed or aborted.
    pub fn pending_upload_count(&self) -> usize {
        self.lock().uploads.len()
    }

    /// All keys, in order.
    pub fn keys(&self) -> Vec<String> {
        self.lock().objects.keys().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic in another test thread must not hide this store's contents.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn counted(&self, op: Op) -> std::sync::MutexGuard<'_, State> {
        let mut state = self.lock();
        *state.counts.entry(op).or_default() += 1;
        state
    }

    /// Bytes `range` of `key`, as a ranged GET with `if_match` returns them.
    fn read(
        state: &State,
        key: &str,
        range: Range<u64>,
        if_match: Option<&ETag>,
    ) -> StoreResult<Bytes> {
        let obj = state
            .objects
            .get(key)
            .ok_or_else(|| StoreError::not_found(key))?;
        if let Some(etag) = if_match {
            if *etag != obj.etag {
                return Err(StoreError::new(
                    ErrorKind::PreconditionFailed,
                    format!("object {key:?} changed: its ETag is no longer {etag}"),
                ));
            }
        }
        let len = obj.body.len() as u64;
        if range.start > range.end || (range.start >= len && !(range.start == 0 && range.end == 0))
        {
            return Err(StoreError::new(
                ErrorKind::InvalidRange,
                format!("range {range:?} is outside object {key:?} of {len} bytes"),
            ));
        }
        Ok(obj
            .body
            .slice(range.start as usize..range.end.min(len) as usize))
    }

    /// Store `body` as part `part_number` of upload `upload_id` of `key`.
    fn add_part(
        state: &mut State,
        key: &str,
        upload_id: &UploadId,
        part_number: u32,
        body: Bytes,
    ) -> StoreResult<CompletedPart> {
        if !(1..=10_000).contains(&part_number) {
            return Err(StoreError::invalid_input(format!(
                "part number {part_number} is outside 1..=10000"
            )));
        }
        let upload = state
            .uploads
            .get_mut(&upload_id.0)
            .filter(|u| u.key == key)
            .ok_or_else(|| no_such_upload(upload_id))?;
        let etag = ETag::new(format!("\"{}\"", md5_hex(&body)));
        upload.parts.insert(part_number, (body, etag.clone()));
        Ok(CompletedPart { part_number, etag })
    }

    fn insert(state: &mut State, key: &str, body: Bytes, etag: ETag, metadata: UserMetadata) {
        state.objects.insert(
            key.to_string(),
            StoredObject {
                body,
                etag,
                last_modified: SystemTime::now(),
                metadata,
            },
        );
    }
}

fn check_key(key: &str) -> StoreResult<()> {
    if key.is_empty() || key.len() > 1024 {
        return Err(StoreError::invalid_input(format!(
            "object key {key:?} must be 1 to 1024 bytes long"
        )));
    }
    Ok(())
}

fn no_such_upload(upload_id: &UploadId) -> StoreError {
    StoreError::new(
        ErrorKind::NotFound,
        format!("multipart upload {} does not exist", upload_id.0),
    )
}

#[async_trait]
impl ObjectStore for InMemoryStore {
    fn bucket(&self) -> &str {
        &self.bucket
    }

    async fn head(&self, key: &str) -> StoreResult<ObjectMeta> {
        let state = self.counted(Op::Head);
        let obj = state
            .objects
            .get(key)
            .ok_or_else(|| StoreError::not_found(key))?;
        Ok(ObjectMeta {
            key: key.to_string(),
            size: obj.body.len() as u64,
            etag: obj.etag.clone(),
            last_modified: obj.last_modified,
            user_metadata: obj.metadata.clone(),
        })
    }

    async fn get_stream(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&ETag>,
    ) -> StoreResult<ByteStream> {
        let body = Self::read(&self.counted(Op::Get), key, range, if_match)?;
        Ok(Box::pin(futures::stream::once(async move { Ok(body) })))
    }

    async fn list(&self, params: &ListParams) -> StoreResult<ListPage> {
        let state = self.counted(Op::List);
        let max_keys = params.max_keys.clamp(1, MAX_LIST_KEYS) as usize;
        let after = params.continuation_token.clone().unwrap_or_default();
        let mut page = ListPage::default();
        let mut last = None;
        for key in state
            .objects
            .range::<String, _>((
                std::ops::Bound::Excluded(&after),
                std::ops::Bound::Unbounded,
            ))
            .map(|(k, _)| k)
            .filter(|k| k.starts_with(&params.prefix))
        {
            // A key inside the common prefix just returned belongs to it.
            if let Some(cp) = page.common_prefixes.last() {
                if key.starts_with(cp.as_str()) {
                    continue;
                }
            }
            if page.objects.len() + page.common_prefixes.len() == max_keys {
                page.next_continuation_token = last;
                return Ok(page);
            }
            let rest = &key[params.prefix.len()..];
            match params
                .delimiter
                .as_deref()
                .and_then(|d| rest.find(d).map(|i| i + d.len()))
            {
                Some(end) => {
                    let cp = format!("{}{}", params.prefix, &rest[..end]);
                    // The token must sort after every key of this prefix.
                    last = Some(format!("{cp}\u{10FFFF}"));
                    page.common_prefixes.push(cp);
                }
                None => {
                    let obj = &state.objects[key];
                    page.objects.push(ListedObject {
                        key: key.clone(),
                        size: obj.body.len() as u64,
                        etag: obj.etag.clone(),
                        last_modified: obj.last_modified,
                    });
                    last = Some(key.clone());
                }
            }
        }
        Ok(page)
    }

    async fn put(&self, key: &str, body: Bytes, metadata: &UserMetadata) -> StoreResult<PutResult> {
        check_key(key)?;
        let mut state = self.counted(Op::Put);
        let etag = ETag::new(format!("\"{}\"", md5_hex(&body)));
        Self::insert(&mut state, key, body, etag.clone(), metadata.clone());
        Ok(PutResult { etag })
    }

    async fn create_multipart(&self, key: &str, metadata: &UserMetadata) -> StoreResult<UploadId> {
        check_key(key)?;
        let mut state = self.counted(Op::CreateMultipart);
        let id = format!(
            "upload-{}",
            self.next_upload.fetch_add(1, Ordering::Relaxed)
        );
        state.uploads.insert(
            id.clone(),
            Upload {
                key: key.to_string(),
                metadata: metadata.clone(),
                parts: BTreeMap::new(),
            },
        );
        Ok(UploadId(id))
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &UploadId,
        part_number: u32,
        body: Bytes,
    ) -> StoreResult<CompletedPart> {
        let mut state = self.counted(Op::UploadPart);
        Self::add_part(&mut state, key, upload_id, part_number, body)
    }

    async fn upload_part_copy(
        &self,
        src: &str,
        range: Range<u64>,
        if_match: Option<&ETag>,
        dst: &str,
        upload_id: &UploadId,
        part_number: u32,
    ) -> StoreResult<CompletedPart> {
        let mut state = self.counted(Op::UploadPartCopy);
        let if_match = if_match.filter(|_| !self.part_copy_ignores_if_match);
        let body = Self::read(&state, src, range, if_match)?;
        Self::add_part(&mut state, dst, upload_id, part_number, body)
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &UploadId,
        parts: &[CompletedPart],
    ) -> StoreResult<PutResult> {
        let mut state = self.counted(Op::CompleteMultipart);
        let upload = state
            .uploads
            .get(&upload_id.0)
            .filter(|u| u.key == key)
            .ok_or_else(|| no_such_upload(upload_id))?;
        if parts.is_empty()
            || parts
                .windows(2)
                .any(|w| w[0].part_number >= w[1].part_number)
        {
            return Err(StoreError::invalid_input(
                "parts must be listed once each, in ascending part-number order",
            ));
        }
        let mut body = Vec::new();
        let mut md5s = Vec::new();
        for part in parts {
            let (data, etag) = upload.parts.get(&part.part_number).ok_or_else(|| {
                StoreError::invalid_input(format!("part {} was not uploaded", part.part_number))
            })?;
            if *etag != part.etag {
                return Err(StoreError::invalid_input(format!(
                    "part {} has ETag {etag}, not {}",
                    part.part_number, part.etag
                )));
            }
            body.extend_from_slice(data);
            md5s.extend_from_slice(&Md5::digest(data));
        }
        let upload = state.uploads.remove(&upload_id.0).expect("checked above");
        let etag = ETag::new(format!("\"{}-{}\"", md5_hex(&md5s), parts.len()));
        Self::insert(&mut state, key, body.into(), etag.clone(), upload.metadata);
        Ok(PutResult { etag })
    }

    async fn abort_multipart(&self, _key: &str, upload_id: &UploadId) -> StoreResult<()> {
        self.counted(Op::AbortMultipart)
            .uploads
            .remove(&upload_id.0);
        Ok(())
    }

    async fn list_multipart_uploads(&self, prefix: &str) -> StoreResult<Vec<PendingUpload>> {
        let state = self.counted(Op::ListMultipart);
        let mut uploads: Vec<_> = state
            .uploads
            .iter()
            .filter(|(_, u)| u.key.starts_with(prefix))
            .map(|(id, u)| PendingUpload {
                key: u.key.clone(),
                upload_id: UploadId(id.clone()),
            })
            .collect();
        uploads.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(uploads)
    }

    fn max_copy_size(&self) -> u64 {
        self.max_copy_size
    }

    async fn copy(
        &self,
        src: &str,
        dst: &str,
        metadata: Option<&UserMetadata>,
    ) -> StoreResult<PutResult> {
        check_key(dst)?;
        let mut state = self.counted(Op::Copy);
        let obj = state
            .objects
            .get(src)
            .cloned()
            .ok_or_else(|| StoreError::not_found(src))?;
        if obj.body.len() as u64 > self.max_copy_size {
            return Err(StoreError::invalid_input(format!(
                "{src:?} ({} bytes) is larger than a copy source may be ({} bytes)",
                obj.body.len(),
                self.max_copy_size
            )));
        }
        let metadata = metadata.cloned().unwrap_or(obj.metadata);
        // As in S3: a copy made in one request is one part, its ETag the MD5 of its body,
        // which differs from its source's if that was uploaded in parts.
        let etag = ETag::new(format!("\"{}\"", md5_hex(&obj.body)));
        Self::insert(&mut state, dst, obj.body, etag.clone(), metadata);
        Ok(PutResult { etag })
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.counted(Op::Delete).objects.remove(key);
        Ok(())
    }
}
