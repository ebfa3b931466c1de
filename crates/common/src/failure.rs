//! [`FailureStore`]: wraps a store and makes chosen operations fail (feature `testing`), to test
//! what callers do when S3 errors: abort uploads, surface EIO, never serve wrong bytes.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{ErrorKind, StoreError, StoreResult};
pub use crate::memory::Op;
use crate::store::*;

#[derive(Debug, Clone, Copy)]
struct Injected {
    kind: ErrorKind,
    /// `None`: fail every time.
    remaining: Option<u32>,
}

#[derive(Debug)]
pub struct FailureStore<S> {
    inner: S,
    failures: Mutex<HashMap<Op, Injected>>,
    /// Requests of an operation on a key that wait, not yet sent, until
    /// [`resume`](FailureStore::resume).
    stalled: Mutex<HashMap<Op, String>>,
    /// Requests of an operation on a key (a listing: of a prefix) that, once answered, wait
    /// until [`release_answers`](FailureStore::release_answers).
    held: Mutex<HashMap<Op, String>>,
    resumed: tokio::sync::Notify,
    /// Requests waiting now on a stalled key or a held answer.
    waiting: std::sync::atomic::AtomicUsize,
}

impl<S: ObjectStore> FailureStore<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            failures: Mutex::new(HashMap::new()),
            stalled: Mutex::new(HashMap::new()),
            held: Mutex::new(HashMap::new()),
            resumed: tokio::sync::Notify::new(),
            waiting: Default::default(),
        }
    }

    /// Make requests of `op` on `key` hang, before they reach the store, until
    /// [`resume`](Self::resume): a stalled backend. Supported for GET and PUT.
    pub fn stall(&self, op: Op, key: &str) {
        assert!(matches!(op, Op::Get | Op::Put), "only GETs and PUTs stall");
        self.stalled.lock().unwrap().insert(op, key.to_string());
    }

    pub fn resume(&self) {
        self.stalled.lock().unwrap().clear();
        self.resumed.notify_waiters();
    }

    /// Wait while `stalled` says so (a stalled key, a held answer).
    async fn wait_while(&self, stalled: impl Fn() -> bool) {
        use std::sync::atomic::Ordering;
        let mut counted = false;
        loop {
            let resumed = self.resumed.notified();
            if !stalled() {
                if counted {
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                }
                return;
            }
            if !counted {
                counted = true;
                self.waiting.fetch_add(1, Ordering::SeqCst);
            }
            resumed.await;
        }
    }

    /// How many requests wait now on a stalled key or a held answer: a test waits for this
    /// before it goes on with what must happen while they wait.
    pub fn waiting(&self) -> usize {
        self.waiting.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Wait until at least `count` requests wait on a stalled key or a held answer.
    pub async fn until_waiting(&self, count: usize) {
        while self.waiting() < count {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// Hold the answers of requests of `op` on `key` (for [`Op::List`]: listings of that
    /// prefix) until [`release_answers`](Self::release_answers): done in the store, the
    /// answer arrives late, after changes made meanwhile. Supported for HEAD, LIST and DELETE.
    pub fn hold_answers(&self, op: Op, key: &str) {
        self.held.lock().unwrap().insert(op, key.to_string());
    }

    pub fn release_answers(&self) {
        self.held.lock().unwrap().clear();
        self.resumed.notify_waiters();
    }

    /// Release the held answers of `op` only.
    pub fn release_answers_of(&self, op: Op) {
        self.held.lock().unwrap().remove(&op);
        self.resumed.notify_waiters();
    }

    /// Wait while answers of `op` on `key` are held.
    async fn hold_answer(&self, op: Op, key: &str) {
        self.wait_while(|| self.held.lock().unwrap().get(&op).map(String::as_str) == Some(key))
            .await;
    }

    /// Wait while requests of `op` on `key` are stalled.
    async fn wait_if_stalled(&self, op: Op, key: &str) {
        self.wait_while(|| self.stalled.lock().unwrap().get(&op).map(String::as_str) == Some(key))
            .await;
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Make the next `times` requests of `op` fail with `kind`.
    pub fn fail_next(&self, op: Op, kind: ErrorKind, times: u32) {
        self.set(
            op,
            Injected {
                kind,
                remaining: Some(times),
            },
        );
    }

    /// Make every request of `op` fail with `kind` until [`heal`](Self::heal).
    pub fn fail_always(&self, op: Op, kind: ErrorKind) {
        self.set(
            op,
            Injected {
                kind,
                remaining: None,
            },
        );
    }

    /// Stop injecting failures.
    pub fn heal(&self) {
        self.failures.lock().unwrap().clear();
    }

    fn set(&self, op: Op, injected: Injected) {
        self.failures.lock().unwrap().insert(op, injected);
    }

    fn check(&self, op: Op) -> StoreResult<()> {
        let mut failures = self.failures.lock().unwrap();
        let Some(injected) = failures.get_mut(&op) else {
            return Ok(());
        };
        match &mut injected.remaining {
            Some(0) => return Ok(()),
            Some(n) => *n -= 1,
            None => {}
        }
        Err(StoreError::new(
            injected.kind,
            format!("injected {:?} failure of {op:?}", injected.kind),
        ))
    }
}

#[async_trait]
impl<S: ObjectStore> ObjectStore for FailureStore<S> {
    fn bucket(&self) -> &str {
        self.inner.bucket()
    }

    async fn head(&self, key: &str) -> StoreResult<ObjectMeta> {
        self.check(Op::Head)?;
        let meta = self.inner.head(key).await;
        self.hold_answer(Op::Head, key).await;
        meta
    }

    async fn get_stream(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&ETag>,
    ) -> StoreResult<ByteStream> {
        self.check(Op::Get)?;
        self.wait_if_stalled(Op::Get, key).await;
        self.inner.get_stream(key, range, if_match).await
    }

    async fn list(&self, params: &ListParams) -> StoreResult<ListPage> {
        self.check(Op::List)?;
        let page = self.inner.list(params).await;
        self.hold_answer(Op::List, &params.prefix).await;
        page
    }

    async fn put(&self, key: &str, body: Bytes, metadata: &UserMetadata) -> StoreResult<PutResult> {
        self.check(Op::Put)?;
        self.wait_if_stalled(Op::Put, key).await;
        self.inner.put(key, body, metadata).await
    }

    async fn create_multipart(&self, key: &str, metadata: &UserMetadata) -> StoreResult<UploadId> {
        self.check(Op::CreateMultipart)?;
        self.inner.create_multipart(key, metadata).await
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &UploadId,
        part_number: u32,
        body: Bytes,
    ) -> StoreResult<CompletedPart> {
        self.check(Op::UploadPart)?;
        self.inner
            .upload_part(key, upload_id, part_number, body)
            .await
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &UploadId,
        parts: &[CompletedPart],
    ) -> StoreResult<PutResult> {
        self.check(Op::CompleteMultipart)?;
        self.inner.complete_multipart(key, upload_id, parts).await
    }

    async fn abort_multipart(&self, key: &str, upload_id: &UploadId) -> StoreResult<()> {
        self.check(Op::AbortMultipart)?;
        self.inner.abort_multipart(key, upload_id).await
    }

    async fn list_multipart_uploads(&self, prefix: &str) -> StoreResult<Vec<PendingUpload>> {
        self.check(Op::ListMultipart)?;
        self.inner.list_multipart_uploads(prefix).await
    }

    fn max_copy_size(&self) -> u64 {
        self.inner.max_copy_size()
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
        self.check(Op::UploadPartCopy)?;
        self.inner
            .upload_part_copy(src, range, if_match, dst, upload_id, part_number)
            .await
    }

    async fn copy(
        &self,
        src: &str,
        dst: &str,
        metadata: Option<&UserMetadata>,
    ) -> StoreResult<PutResult> {
        self.check(Op::Copy)?;
        self.inner.copy(src, dst, metadata).await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.check(Op::Delete)?;
        let deleted = self.inner.delete(key).await;
        self.hold_answer(Op::Delete, key).await;
        deleted
    }
}
