//! [`MeteredStore`]: an [`ObjectStore`] that counts what goes through it, for the process's
//! metrics ([`crate::metrics`]) and for one volume's own figures ([`StoreCounters`], shown in
//! `docker volume inspect`).

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use crate::metrics::{metrics, DirectionLabels, OpLabels, RequestLabels};
use crate::store::{ByteStream, PendingUpload};
use crate::{
    CompletedPart, ETag, ErrorKind, ListPage, ListParams, ObjectMeta, ObjectStore, PutResult,
    StoreResult, UploadId, UserMetadata,
};

/// What one store (one volume) sent and received.
#[derive(Debug, Default)]
pub struct StoreCounters {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub downloaded_bytes: AtomicU64,
    pub uploaded_bytes: AtomicU64,
}

/// Wraps a store and counts requests, errors, bytes and latency.
#[derive(Debug)]
pub struct MeteredStore<S> {
    inner: S,
    counters: Arc<StoreCounters>,
}

impl<S: ObjectStore> MeteredStore<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            counters: Arc::default(),
        }
    }

    pub fn counters(&self) -> &Arc<StoreCounters> {
        &self.counters
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Record one request of `op` that started at `started`.
    fn record<T>(&self, op: &'static str, started: Instant, result: &StoreResult<T>) {
        let m = metrics();
        m.store_latency
            .get_or_create(&OpLabels { op })
            .observe(started.elapsed().as_secs_f64());
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                outcome_of(e.kind())
            }
        };
        m.store_requests
            .get_or_create(&RequestLabels { op, outcome })
            .inc();
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
    }

    fn uploaded(&self, bytes: usize) {
        self.counters
            .uploaded_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
        metrics()
            .store_bytes
            .get_or_create(&DirectionLabels {
                direction: "upload",
            })
            .inc_by(bytes as u64);
    }
}

fn outcome_of(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::NotFound => "not_found",
        ErrorKind::PreconditionFailed => "precondition_failed",
        ErrorKind::AccessDenied => "access_denied",
        ErrorKind::NoSuchBucket => "no_such_bucket",
        ErrorKind::Throttled => "throttled",
        ErrorKind::Timeout => "timeout",
        ErrorKind::Network => "network",
        ErrorKind::InvalidInput => "invalid_input",
        ErrorKind::InvalidRange => "invalid_range",
        ErrorKind::ServerError => "server_error",
        _ => "other",
    }
}

/// Run `$call` on the inner store and record it as `$op`.
macro_rules! metered {
    ($self:ident, $op:literal, $call:expr) => {{
        let started = Instant::now();
        let result = $call.await;
        $self.record($op, started, &result);
        result
    }};
}

#[async_trait]
impl<S: ObjectStore> ObjectStore for MeteredStore<S> {
    fn bucket(&self) -> &str {
        self.inner.bucket()
    }

    async fn head(&self, key: &str) -> StoreResult<ObjectMeta> {
        metered!(self, "head", self.inner.head(key))
    }

    async fn get_stream(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&ETag>,
    ) -> StoreResult<ByteStream> {
        let stream = metered!(self, "get", self.inner.get_stream(key, range, if_match))?;
        // Bytes are counted as they arrive, so a cut-off body counts what came.
        let counters = self.counters.clone();
        let downloaded = metrics()
            .store_bytes
            .get_or_create(&DirectionLabels {
                direction: "download",
            })
            .clone();
        Ok(Box::pin(stream.inspect(move |chunk| {
            if let Ok(bytes) = chunk {
                counters
                    .downloaded_bytes
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                downloaded.inc_by(bytes.len() as u64);
            }
        })))
    }

    async fn list(&self, params: &ListParams) -> StoreResult<ListPage> {
        metered!(self, "list", self.inner.list(params))
    }

    async fn put(&self, key: &str, body: Bytes, metadata: &UserMetadata) -> StoreResult<PutResult> {
        let len = body.len();
        let result = metered!(self, "put", self.inner.put(key, body, metadata));
        if result.is_ok() {
            self.uploaded(len);
        }
        result
    }

    async fn create_multipart(&self, key: &str, metadata: &UserMetadata) -> StoreResult<UploadId> {
        metered!(
            self,
            "create_multipart",
            self.inner.create_multipart(key, metadata)
        )
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &UploadId,
        part_number: u32,
        body: Bytes,
    ) -> StoreResult<CompletedPart> {
        let len = body.len();
        let result = metered!(
            self,
            "upload_part",
            self.inner.upload_part(key, upload_id, part_number, body)
        );
        if result.is_ok() {
            self.uploaded(len);
        }
        result
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &UploadId,
        parts: &[CompletedPart],
    ) -> StoreResult<PutResult> {
        metered!(
            self,
            "complete_multipart",
            self.inner.complete_multipart(key, upload_id, parts)
        )
    }

    async fn abort_multipart(&self, key: &str, upload_id: &UploadId) -> StoreResult<()> {
        metered!(
            self,
            "abort_multipart",
            self.inner.abort_multipart(key, upload_id)
        )
    }

    async fn list_multipart_uploads(&self, prefix: &str) -> StoreResult<Vec<PendingUpload>> {
        metered!(
            self,
            "list_multipart_uploads",
            self.inner.list_multipart_uploads(prefix)
        )
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
        metered!(
            self,
            "upload_part_copy",
            self.inner
                .upload_part_copy(src, range, if_match, dst, upload_id, part_number)
        )
    }

    async fn copy(
        &self,
        src: &str,
        dst: &str,
        metadata: Option<&UserMetadata>,
    ) -> StoreResult<PutResult> {
        metered!(self, "copy", self.inner.copy(src, dst, metadata))
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        metered!(self, "delete", self.inner.delete(key))
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::*;
    use crate::conformance::pattern;
    use crate::memory::InMemoryStore;

    #[tokio::test]
    async fn requests_bytes_and_errors_are_counted() {
        let store = MeteredStore::new(InMemoryStore::new("b"));
        store
            .put("a", pattern(1000, 1), &UserMetadata::new())
            .await
            .unwrap();
        let body = store.get_range("a", 0..400, None).await.unwrap();
        assert_eq!(body.len(), 400);
        assert!(store.head("missing").await.is_err());
        let c = store.counters();
        assert_eq!(c.requests.load(Ordering::Relaxed), 3);
        assert_eq!(c.errors.load(Ordering::Relaxed), 1);
        assert_eq!(c.uploaded_bytes.load(Ordering::Relaxed), 1000);
        assert_eq!(c.downloaded_bytes.load(Ordering::Relaxed), 400);
        let text = metrics().encode();
        assert!(
            text.contains("s3vol_store_requests_total{op=\"head\",outcome=\"not_found\"}"),
            "{text}"
        );
        assert!(
            text.contains("s3vol_store_bytes_total{direction=\"download\"}"),
            "{text}"
        );
    }
}

#[cfg(all(test, feature = "testing"))]
mod conformance {
    use super::MeteredStore;
    use crate::memory::InMemoryStore;

    async fn metered() -> Option<(MeteredStore<InMemoryStore>, String)> {
        Some((
            MeteredStore::new(InMemoryStore::new("conformance")),
            String::new(),
        ))
    }

    crate::store_conformance_tests!(metered);
}
