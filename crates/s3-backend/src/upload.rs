//! The streaming uploader: bytes written in order become one object, sent while they are
//! written as a multipart upload with several parts in flight.
//!
//! Bytes are buffered up to the part size; each full part is uploaded in the background while
//! the writer goes on, with at most `max_parts_in_flight` at once (the writer waits when that
//! many are pending, which bounds memory to about `max_parts_in_flight + 1` parts). For a
//! stream of unknown length the part size doubles after every 1,000 parts, so that it fits in
//! S3's 10,000 parts up to S3's 5 TiB limit (with fixed 8 MiB parts it would stop at 78 GiB);
//! objects up to 7.8 GiB use `part_size` only. An upload of known size (from a staging file)
//! uses one part size, the smallest that fits. An object
//! that never fills a part is sent with one PUT at [`finish`](StreamingUpload::finish). Any
//! failure aborts the multipart upload, so no orphaned parts are left in the bucket; dropping an
//! unfinished upload aborts it too.
//!
//! With a [`WriteBudget`] in the config, buffers are taken from it as they fill and given back
//! when their part is acknowledged; see [`write_budget`](crate::write_budget) for who waits.

use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use common::metrics::{metrics, GaugeShare};
use common::{
    CompletedPart, ETag, ObjectStore, PutResult, StoreError, StoreResult, UploadId, UserMetadata,
};
use tokio::task::JoinSet;

use crate::upload_journal::UploadJournal;
use crate::write_budget::{Reservation, WriteBudget};

/// S3's limits on parts.
const MIN_PART_SIZE: usize = 5 << 20;
const MAX_PART_SIZE: usize = 5 << 30;
const MAX_PARTS: u32 = 10_000;
/// The part size doubles after every this many parts: 10,000 parts then hold 1,023 times
/// this many base parts (8 TiB with 8 MiB), more than S3's largest object.
const PARTS_PER_SIZE: u32 = 1_000;

/// The size of part `part_number` (from 1) of an upload whose first parts are `base` bytes.
fn part_size_of(base: usize, part_number: u32) -> usize {
    let doublings = (part_number.saturating_sub(1) / PARTS_PER_SIZE).min(30);
    base.saturating_mul(1 << doublings)
        .min(MAX_PART_SIZE.max(base))
}

#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct UploadConfig {
    /// Size of the first 1,000 parts (at least 5 MiB, S3's minimum); each further 1,000 are
    /// twice as big as the ones before.
    pub part_size: usize,
    /// Parts uploaded at the same time.
    pub max_parts_in_flight: usize,
    /// Where multipart uploads in progress are recorded, so a crash's leftovers are aborted at
    /// the next start.
    pub journal: Option<UploadJournal>,
    /// The memory part buffers are taken from; unbounded without one.
    pub budget: Option<WriteBudget>,
}

impl Default for UploadConfig {
    fn default() -> Self {
        Self {
            part_size: 8 << 20,
            max_parts_in_flight: 4,
            journal: None,
            budget: None,
        }
    }
}

impl UploadConfig {
    pub fn part_size(mut self, bytes: usize) -> Self {
        self.part_size = bytes.max(MIN_PART_SIZE);
        self
    }

    pub fn max_parts_in_flight(mut self, n: usize) -> Self {
        self.max_parts_in_flight = n.max(1);
        self
    }

    pub fn journal(mut self, journal: UploadJournal) -> Self {
        self.journal = Some(journal);
        self
    }

    pub fn budget(mut self, budget: WriteBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Use any part size, for tests over the in-memory store (S3 refuses parts under 5 MiB).
    #[doc(hidden)]
    pub fn unchecked_part_size(mut self, bytes: usize) -> Self {
        self.part_size = bytes.max(1);
        self
    }
}

/// One object being written front to back.
#[derive(Debug)]
pub struct StreamingUpload<S: ObjectStore> {
    store: Arc<S>,
    key: String,
    metadata: UserMetadata,
    config: UploadConfig,
    buffer: BytesMut,
    /// The budget's memory for `buffer`.
    reserved: Reservation,
    /// For an upload from a staging file, its size: such an upload waits for memory other
    /// uploads hold rather than fail (a stream has its staging file to fall back on), and
    /// takes no more than the rest of the object needs.
    waits_for_memory: Option<u64>,
    /// Bytes handed to part uploads so far.
    sent: u64,
    upload_id: Option<UploadId>,
    /// The journal's record of `upload_id`, dropped once the upload is completed or aborted.
    record: Option<std::path::PathBuf>,
    next_part: u32,
    in_flight: JoinSet<StoreResult<CompletedPart>>,
    done: Vec<CompletedPart>,
    bytes_written: u64,
    /// Set by the first failure; every later call returns it, so a failed upload can never
    /// be completed with parts missing.
    failed: Option<StoreError>,
}

impl<S: ObjectStore> StreamingUpload<S> {
    pub fn new(
        store: Arc<S>,
        key: impl Into<String>,
        metadata: UserMetadata,
        config: UploadConfig,
    ) -> Self {
        Self {
            store,
            key: key.into(),
            metadata,
            buffer: BytesMut::new(),
            reserved: Reservation::default(),
            waits_for_memory: None,
            sent: 0,
            config,
            upload_id: None,
            record: None,
            next_part: 1,
            in_flight: JoinSet::new(),
            done: Vec::new(),
            bytes_written: 0,
            failed: None,
        }
    }

    /// Wait for memory instead of failing when the budget is used up: for uploads of `size`
    /// bytes that have no other way to send them (from a staging file).
    pub fn waiting_for_memory(mut self, size: u64) -> Self {
        self.waits_for_memory = Some(size);
        self
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Whether the multipart upload has begun: its metadata is then fixed.
    pub fn started(&self) -> bool {
        self.upload_id.is_some()
    }

    /// Replace the object's metadata, if nothing has been sent yet: the multipart upload
    /// fixes it when it is created, at the first full part. Returns whether it was replaced.
    pub fn set_metadata(&mut self, metadata: UserMetadata) -> bool {
        if self.upload_id.is_some() {
            return false;
        }
        self.metadata = metadata;
        true
    }

    /// Append `data`. Starts part uploads as parts fill; waits while too many are in flight.
    /// On error (also when a stream finds no memory for its buffer) the upload is aborted and
    /// must not be used further.
    pub async fn write(&mut self, mut data: &[u8]) -> StoreResult<()> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        self.bytes_written += data.len() as u64;
        while !data.is_empty() {
            let part_size = self.part_size();
            let room = part_size - self.buffer.len();
            let take = room.min(data.len());
            if let Err(e) = self.reserve(self.buffer.len() + take).await {
                self.fail(e.clone()).await;
                return Err(e);
            }
            if self.buffer.capacity() == 0 {
                // The whole part at once: no regrowth copies. Pages are only touched (and
                // counted against the budget) as the buffer fills.
                self.buffer = BytesMut::with_capacity(part_size);
            }
            self.buffer.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buffer.len() == part_size {
                let part = std::mem::take(&mut self.buffer).freeze();
                if let Err(e) = self.send_part(part).await {
                    self.fail(e.clone()).await;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// The size of the part being filled. An upload whose size is known (from a staging
    /// file) uses one size, the smallest that fits in 10,000 parts: its parts take memory
    /// from the budget whole, so they stay as small as they can.
    fn part_size(&self) -> usize {
        match self.waits_for_memory {
            Some(size) => {
                let fits = usize::try_from(size.div_ceil(MAX_PARTS as u64)).unwrap_or(usize::MAX);
                self.config.part_size.max(fits)
            }
            None => part_size_of(self.config.part_size, self.next_part),
        }
    }

    /// Hold budget for a buffer of `len` bytes. A stream takes it in steps as its buffer fills
    /// and, when other uploads hold the rest, waits for its own parts in flight only; an upload
    /// from staging takes its whole next part at once (two waiting with half a part each would
    /// wait for each other forever).
    async fn reserve(&mut self, len: usize) -> StoreResult<()> {
        const STEP: u64 = 256 << 10;
        let have = self.reserved.bytes();
        if len as u64 <= have {
            return Ok(());
        }
        let Some(budget) = self.config.budget.clone() else {
            return Ok(());
        };
        let part = self.part_size() as u64;
        if let Some(size) = self.waits_for_memory {
            let next_part = size.saturating_sub(self.sent).max(len as u64).min(part);
            self.reserved.add(budget.take(next_part - have).await);
            return Ok(());
        }
        let want = (len as u64).div_ceil(STEP).saturating_mul(STEP).min(part) - have;
        loop {
            if let Some(more) = budget.try_take(want) {
                self.reserved.add(more);
                return Ok(());
            }
            if self.in_flight.is_empty() {
                metrics().uploads_short_of_memory.inc();
                return Err(StoreError::new(
                    common::ErrorKind::Other,
                    format!(
                        "no memory left for write buffers ({} bytes of --memory-limit are free \
                         for a part of {part} bytes): {:?} is uploaded from its staging file at \
                         close instead of while it is written",
                        budget.available_to_streams(),
                        self.key
                    ),
                ));
            }
            self.collect_one().await?;
        }
    }

    /// Make the next parts of the object a copy, by the store, of bytes `range` of `src` as
    /// version `etag` (UploadPartCopy): no byte passes through here. Only before anything is
    /// written; the range must be at least 5 MiB on S3 (it is cut into pieces of up to
    /// 512 MiB of equal size). On error the upload is aborted, as with `write`.
    pub async fn copy(&mut self, src: &str, range: Range<u64>, etag: &ETag) -> StoreResult<()> {
        const PIECE: u64 = 512 << 20;
        assert!(
            self.buffer.is_empty(),
            "copied parts come before written bytes"
        );
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let len = range.end.saturating_sub(range.start);
        let piece = len.div_ceil(len.div_ceil(PIECE).max(1));
        let mut start = range.start;
        while start < range.end {
            let end = (start + piece).min(range.end);
            if let Err(e) = self.send_copy(src, start..end, etag).await {
                self.fail(e.clone()).await;
                return Err(e);
            }
            start = end;
        }
        Ok(())
    }

    async fn send_copy(&mut self, src: &str, range: Range<u64>, etag: &ETag) -> StoreResult<()> {
        let upload_id = self.next_part_upload_id().await?;
        let (store, key, part_number) = (self.store.clone(), self.key.clone(), self.next_part);
        let (src, etag) = (src.to_string(), etag.clone());
        self.next_part += 1;
        self.sent += range.end - range.start;
        self.bytes_written += range.end - range.start;
        self.in_flight.spawn(async move {
            let _in_flight = GaugeShare::new(&metrics().upload_parts_in_flight, 1);
            store
                .upload_part_copy(&src, range, Some(&etag), &key, &upload_id, part_number)
                .await
        });
        while self.in_flight.len() > self.config.max_parts_in_flight {
            self.collect_one().await?;
        }
        Ok(())
    }

    /// Wait until every part sent so far is acknowledged.
    pub async fn settle(&mut self) -> StoreResult<()> {
        while !self.in_flight.is_empty() {
            if let Err(e) = self.collect_one().await {
                self.fail(e.clone()).await;
                return Err(e);
            }
        }
        Ok(())
    }

    /// The upload's ID, starting it if this is the first part; refuses a part past S3's last.
    async fn next_part_upload_id(&mut self) -> StoreResult<UploadId> {
        if self.next_part > MAX_PARTS {
            return Err(StoreError::invalid_input(format!(
                "{:?} is too large for S3: {} bytes so far fill its {MAX_PARTS} parts",
                self.key, self.sent
            )));
        }
        if let Some(id) = &self.upload_id {
            return Ok(id.clone());
        }
        let id = self
            .store
            .create_multipart(&self.key, &self.metadata)
            .await?;
        self.upload_id = Some(id.clone());
        self.record = self.config.journal.as_ref().and_then(|journal| {
            journal
                .record(&self.key, &id)
                .map_err(|e| tracing::warn!(key = %self.key, error = %e, "cannot record a multipart upload in the journal; a crash would leave it behind"))
                .ok()
        });
        Ok(id)
    }

    async fn send_part(&mut self, body: Bytes) -> StoreResult<()> {
        let upload_id = self.next_part_upload_id().await?;
        // Hand the part to its task before waiting, so a cancelled caller cannot lose it. Its
        // memory goes back to the budget when the store has acknowledged it.
        let (store, key, part_number) = (self.store.clone(), self.key.clone(), self.next_part);
        let memory = std::mem::take(&mut self.reserved);
        self.next_part += 1;
        self.sent += body.len() as u64;
        self.in_flight.spawn(async move {
            let _in_flight = GaugeShare::new(&metrics().upload_parts_in_flight, 1);
            let part = store.upload_part(&key, &upload_id, part_number, body).await;
            drop(memory);
            part
        });
        while self.in_flight.len() > self.config.max_parts_in_flight {
            self.collect_one().await?;
        }
        Ok(())
    }

    async fn collect_one(&mut self) -> StoreResult<()> {
        match self.in_flight.join_next().await {
            Some(Ok(part)) => {
                self.done.push(part?);
                Ok(())
            }
            Some(Err(join_error)) => Err(StoreError::new(
                common::ErrorKind::Other,
                format!("a part upload of {:?} crashed: {join_error}", self.key),
            )),
            None => Ok(()),
        }
    }

    /// Send what is left and make the object visible. Returns only once the store has
    /// acknowledged the whole object. On error the multipart upload is aborted.
    pub async fn finish(mut self) -> StoreResult<PutResult> {
        if let Some(err) = self.failed.take() {
            return Err(err);
        }
        let result = self.finish_inner().await;
        if let Err(e) = &result {
            self.fail(e.clone()).await;
        }
        result
    }

    async fn fail(&mut self, err: StoreError) {
        self.failed = Some(err);
        self.abort_now().await;
    }

    async fn finish_inner(&mut self) -> StoreResult<PutResult> {
        let rest = std::mem::take(&mut self.buffer).freeze();
        if self.upload_id.is_none() {
            return self.store.put(&self.key, rest, &self.metadata).await;
        }
        if !rest.is_empty() {
            self.send_part(rest).await?;
        }
        while !self.in_flight.is_empty() {
            self.collect_one().await?;
        }
        let mut parts = std::mem::take(&mut self.done);
        parts.sort_by_key(|p| p.part_number);
        let upload_id = self.upload_id.clone().expect("checked above");
        let result = self
            .store
            .complete_multipart(&self.key, &upload_id, &parts)
            .await?;
        self.upload_id = None;
        self.forget_record();
        Ok(result)
    }

    /// Give up: abort the multipart upload, if one was started.
    pub async fn abort(mut self) {
        self.abort_now().await;
    }

    async fn abort_now(&mut self) {
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        if let Some(id) = self.upload_id.take() {
            match self.store.abort_multipart(&self.key, &id).await {
                Ok(()) => self.forget_record(),
                // The record stays: the next start aborts it.
                Err(e) => {
                    tracing::warn!(key = %self.key, error = %e, "could not abort a failed multipart upload; the next start tries again")
                }
            }
        }
    }

    fn forget_record(&mut self) {
        if let Some(record) = self.record.take() {
            UploadJournal::forget(&record);
        }
    }
}

impl<S: ObjectStore> Drop for StreamingUpload<S> {
    fn drop(&mut self) {
        // Dropped mid-way (the writer gave up or panicked): abort so no parts are orphaned.
        if let Some(id) = self.upload_id.take() {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let (store, key, record) =
                    (self.store.clone(), self.key.clone(), self.record.take());
                handle.spawn(async move {
                    if store.abort_multipart(&key, &id).await.is_ok() {
                        if let Some(record) = record {
                            UploadJournal::forget(&record);
                        }
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::conformance::pattern;
    use common::failure::FailureStore;
    use common::memory::{InMemoryStore, Op};
    use common::ErrorKind;

    #[tokio::test]
    async fn a_failed_upload_refuses_further_writes_and_finish() {
        let store = Arc::new(FailureStore::new(InMemoryStore::new("b")));
        store.fail_next(Op::UploadPart, ErrorKind::Network, 1);
        let mut up = StreamingUpload::new(store.clone(), "k", UserMetadata::new(), config(100));
        let mut failed = None;
        for _ in 0..10 {
            if let Err(e) = up.write(&[4u8; 100]).await {
                failed = Some(e);
                break;
            }
        }
        // The part failure surfaces at a later write or at finish; after it, nothing works.
        let err = match failed {
            Some(e) => e,
            None => up.finish().await.unwrap_err(),
        };
        assert_eq!(err.kind(), ErrorKind::Network);
        assert!(store.inner().keys().is_empty(), "a partial object was made");
        assert_eq!(store.inner().pending_upload_count(), 0);
    }

    #[tokio::test]
    async fn writes_after_a_failure_are_refused() {
        let store = Arc::new(FailureStore::new(InMemoryStore::new("b")));
        store.fail_next(Op::CreateMultipart, ErrorKind::AccessDenied, 1);
        let mut up = StreamingUpload::new(store.clone(), "k", UserMetadata::new(), config(100));
        assert!(up.write(&[5u8; 150]).await.is_err());
        assert_eq!(
            up.write(&[5u8; 10]).await.unwrap_err().kind(),
            ErrorKind::AccessDenied
        );
        assert_eq!(
            up.finish().await.unwrap_err().kind(),
            ErrorKind::AccessDenied
        );
        assert!(store.inner().keys().is_empty(), "a partial object was made");
    }

    #[test]
    fn parts_double_after_every_thousand_up_to_five_gib() {
        let mib = 1 << 20;
        assert_eq!(part_size_of(8 * mib, 1), 8 * mib);
        assert_eq!(part_size_of(8 * mib, 1000), 8 * mib);
        assert_eq!(part_size_of(8 * mib, 1001), 16 * mib);
        assert_eq!(part_size_of(8 * mib, 10_000), 4096 * mib);
        assert_eq!(part_size_of(64 * mib, 10_000), MAX_PART_SIZE);
        let total: u64 = (1..=MAX_PARTS)
            .map(|n| part_size_of(8 * mib, n) as u64)
            .sum();
        assert!(total > 5 << 40, "10,000 parts hold only {total} bytes");
    }

    #[tokio::test]
    async fn an_object_longer_than_ten_thousand_first_parts_is_uploaded_whole() {
        let store = Arc::new(InMemoryStore::new("b"));
        // Parts of 1 byte, then 2, 4, 8 and 16: 20,000 bytes are 4,313 parts, not 20,000.
        let mut up = StreamingUpload::new(store.clone(), "big", UserMetadata::new(), config(1));
        let body = pattern(20_000, 3);
        for piece in body.chunks(777) {
            up.write(piece).await.unwrap();
        }
        let put = up.finish().await.unwrap();
        assert!(
            put.etag.as_str().ends_with("-4313\""),
            "{}",
            put.etag.as_str()
        );
        assert_eq!(store.get_range("big", 0..20_000, None).await.unwrap(), body);
    }

    fn config(part: usize) -> UploadConfig {
        UploadConfig::default()
            .unchecked_part_size(part)
            .max_parts_in_flight(3)
    }

    /// Streams of one byte each, left open: they hold a part's memory each.
    async fn idle_streams(
        store: &Arc<InMemoryStore>,
        config: &UploadConfig,
        n: usize,
    ) -> Vec<StreamingUpload<InMemoryStore>> {
        let mut streams = Vec::new();
        for i in 0..n {
            let mut up = StreamingUpload::new(
                store.clone(),
                format!("idle{i}"),
                UserMetadata::new(),
                config.clone(),
            );
            up.write(&[1]).await.unwrap();
            streams.push(up);
        }
        streams
    }

    #[tokio::test]
    async fn a_stream_finding_no_memory_fails_with_a_reason_and_leaves_nothing() {
        let store = Arc::new(InMemoryStore::new("b"));
        let budget = WriteBudget::new(4000);
        let config = config(1000).budget(budget.clone());
        // Three parts of 1000 fill the shared 3000; the last 1000 is kept for staging files.
        let idle = idle_streams(&store, &config, 3).await;
        let mut late = StreamingUpload::new(store.clone(), "late", UserMetadata::new(), config);
        let err = late.write(&pattern(2500, 1)).await.unwrap_err();
        assert!(
            err.message().contains("no memory left for write buffers")
                && err.message().contains("late"),
            "{err}"
        );
        assert_eq!(store.pending_upload_count(), 0);
        assert!(metrics().uploads_short_of_memory.get() >= 1);
        for up in idle {
            up.finish().await.unwrap();
        }
        assert_eq!(budget.available(), 4000, "every byte given back");
        assert!(!store.keys().contains(&"late".to_string()));
    }

    #[tokio::test]
    async fn a_stream_short_of_memory_waits_for_its_own_parts() {
        let store = Arc::new(InMemoryStore::new("b"));
        // Shared: 3 parts, fewer than the 3 in flight plus the one filling that it would use.
        let budget = WriteBudget::new(4000);
        let mut up = StreamingUpload::new(
            store.clone(),
            "big",
            UserMetadata::new(),
            config(1000).budget(budget.clone()),
        );
        let body = pattern(20_000, 4);
        for piece in body.chunks(700) {
            up.write(piece).await.unwrap();
            assert!(
                budget.available() >= 1000,
                "a stream took the reserved part"
            );
        }
        up.finish().await.unwrap();
        assert_eq!(store.get_range("big", 0..20_000, None).await.unwrap(), body);
        assert_eq!(budget.available(), 4000);
    }

    #[tokio::test]
    async fn an_upload_from_staging_waits_for_memory_instead_of_failing() {
        let store = Arc::new(InMemoryStore::new("b"));
        let budget = WriteBudget::new(4000);
        let config = config(1000).budget(budget.clone());
        let idle = idle_streams(&store, &config, 3).await;
        let body = pattern(5500, 5);
        let mut staged = StreamingUpload::new(store.clone(), "staged", UserMetadata::new(), config)
            .waiting_for_memory(body.len() as u64);
        let finished = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            staged.write(&body).await?;
            staged.finish().await
        });
        finished.await.expect("it got the reserved part").unwrap();
        assert_eq!(
            store.get_range("staged", 0..5500, None).await.unwrap(),
            body
        );
        drop(idle);
    }

    #[tokio::test]
    async fn an_upload_from_staging_holds_no_more_than_its_size() {
        let store = Arc::new(InMemoryStore::new("b"));
        let budget = WriteBudget::new(4000);
        let config = config(1000).budget(budget.clone());
        let _idle = idle_streams(&store, &config, 3).await;
        // Two small files closed at once both fit in the reserved 1000 bytes.
        let mut first =
            StreamingUpload::new(store.clone(), "a", UserMetadata::new(), config.clone())
                .waiting_for_memory(400);
        first.write(&[1; 400]).await.unwrap();
        let mut second = StreamingUpload::new(store.clone(), "b", UserMetadata::new(), config)
            .waiting_for_memory(400);
        tokio::time::timeout(std::time::Duration::from_secs(1), second.write(&[2; 400]))
            .await
            .expect("the first holds only its 400 bytes")
            .unwrap();
        first.finish().await.unwrap();
        second.finish().await.unwrap();
    }

    #[tokio::test]
    async fn small_objects_are_one_put() {
        let store = Arc::new(InMemoryStore::new("b"));
        let mut up =
            StreamingUpload::new(store.clone(), "small", UserMetadata::new(), config(1000));
        up.write(b"hello ").await.unwrap();
        up.write(b"world").await.unwrap();
        up.finish().await.unwrap();
        assert_eq!(store.request_count(Op::Put), 1);
        assert_eq!(store.request_count(Op::CreateMultipart), 0);
        assert_eq!(
            store.get_range("small", 0..100, None).await.unwrap(),
            &b"hello world"[..]
        );
    }

    #[tokio::test]
    async fn metadata_can_change_until_the_multipart_upload_begins() {
        let store = Arc::new(InMemoryStore::new("b"));
        let meta =
            |mtime: &str| -> UserMetadata { [("mtime".to_string(), mtime.to_string())].into() };
        let mut small = StreamingUpload::new(store.clone(), "small", meta("1"), config(1000));
        small.write(b"hi").await.unwrap();
        assert!(small.set_metadata(meta("2")));
        small.finish().await.unwrap();
        assert_eq!(store.head("small").await.unwrap().user_metadata, meta("2"));

        let mut big = StreamingUpload::new(store.clone(), "big", meta("1"), config(1000));
        big.write(&pattern(1500, 1)).await.unwrap();
        assert!(!big.set_metadata(meta("2")), "the upload has begun");
        big.finish().await.unwrap();
        assert_eq!(store.head("big").await.unwrap().user_metadata, meta("1"));
    }

    #[tokio::test]
    async fn large_objects_stream_as_parts_in_order() {
        let store = Arc::new(InMemoryStore::new("b"));
        let body = pattern(10_500, 3);
        let metadata: UserMetadata = [("mode".to_string(), "33188".to_string())].into();
        let mut up = StreamingUpload::new(store.clone(), "big", metadata.clone(), config(1000));
        for piece in body.chunks(333) {
            up.write(piece).await.unwrap();
        }
        let put = up.finish().await.unwrap();
        assert!(put.etag.is_multipart());
        assert_eq!(store.request_count(Op::UploadPart), 11);
        let head = store.head("big").await.unwrap();
        assert_eq!(head.user_metadata, metadata);
        assert_eq!(
            store.get_range("big", 0..head.size, None).await.unwrap(),
            body
        );
        assert_eq!(store.pending_upload_count(), 0);
    }

    #[tokio::test]
    async fn a_failed_part_aborts_and_leaves_nothing() {
        let store = Arc::new(FailureStore::new(InMemoryStore::new("b")));
        store.fail_always(Op::UploadPart, ErrorKind::AccessDenied);
        let mut up =
            StreamingUpload::new(store.clone(), "doomed", UserMetadata::new(), config(100));
        let mut result = Ok(());
        for _ in 0..20 {
            result = up.write(&[1u8; 100]).await;
            if result.is_err() {
                break;
            }
        }
        let err = match result {
            Err(e) => e,
            Ok(()) => up.finish().await.unwrap_err(),
        };
        assert_eq!(err.kind(), ErrorKind::AccessDenied);
        assert_eq!(store.inner().pending_upload_count(), 0);
        assert!(store.inner().keys().is_empty());
    }

    #[tokio::test]
    async fn a_failed_completion_aborts() {
        let store = Arc::new(FailureStore::new(InMemoryStore::new("b")));
        store.fail_always(Op::CompleteMultipart, ErrorKind::ServerError);
        let mut up = StreamingUpload::new(store.clone(), "k", UserMetadata::new(), config(100));
        up.write(&[2u8; 350]).await.unwrap();
        assert_eq!(
            up.finish().await.unwrap_err().kind(),
            ErrorKind::ServerError
        );
        assert_eq!(store.inner().pending_upload_count(), 0);
        assert!(store.inner().keys().is_empty());
    }

    fn records(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
    }

    #[tokio::test]
    async fn the_journal_holds_uploads_in_progress_only() {
        let dir = tempfile::tempdir().unwrap();
        let journal = UploadJournal::new(dir.path().join("uploads"));
        let store = Arc::new(FailureStore::new(InMemoryStore::new("b")));
        let mut up = StreamingUpload::new(
            store.clone(),
            "done",
            UserMetadata::new(),
            config(100).journal(journal.clone()),
        );
        up.write(&[1u8; 250]).await.unwrap();
        assert_eq!(records(journal.dir()), 1, "recorded once the upload began");
        up.finish().await.unwrap();
        assert_eq!(records(journal.dir()), 0, "forgotten once completed");

        store.fail_always(Op::CompleteMultipart, ErrorKind::ServerError);
        let mut up = StreamingUpload::new(
            store.clone(),
            "failed",
            UserMetadata::new(),
            config(100).journal(journal.clone()),
        );
        up.write(&[2u8; 250]).await.unwrap();
        assert!(up.finish().await.is_err());
        assert_eq!(store.inner().pending_upload_count(), 0);
        assert_eq!(records(journal.dir()), 0, "forgotten once aborted");
    }

    #[tokio::test]
    async fn uploads_left_by_a_crash_are_aborted_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let journal = UploadJournal::new(dir.path().join("uploads"));
        let store = Arc::new(FailureStore::new(InMemoryStore::new("b")));
        // Somebody else's upload in the same bucket: not ours to abort.
        let theirs = store
            .create_multipart("other", &UserMetadata::new())
            .await
            .unwrap();
        for key in ["a/crashed", "b/crashed"] {
            let mut up = StreamingUpload::new(
                store.clone(),
                key,
                UserMetadata::new(),
                config(100).journal(journal.clone()),
            );
            up.write(&[3u8; 250]).await.unwrap();
            // A crash: no finish, no abort, no drop.
            std::mem::forget(up);
        }
        assert_eq!(store.inner().pending_upload_count(), 3);

        // The store is down at the next start: the records stay for the one after.
        store.fail_always(Op::AbortMultipart, ErrorKind::Network);
        let report = journal.abort_leftovers(&*store).await;
        assert_eq!((report.aborted.len(), report.failed), (0, 2));
        assert_eq!(records(journal.dir()), 2);

        store.heal();
        let mut report = journal.abort_leftovers(&*store).await;
        report.aborted.sort();
        assert_eq!(report.aborted, ["a/crashed", "b/crashed"]);
        assert_eq!(records(journal.dir()), 0);
        let pending = store.list_multipart_uploads("").await.unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].upload_id, theirs);
    }

    #[tokio::test]
    async fn dropping_an_unfinished_upload_aborts_it() {
        let store = Arc::new(InMemoryStore::new("b"));
        let mut up = StreamingUpload::new(store.clone(), "k", UserMetadata::new(), config(100));
        up.write(&[3u8; 250]).await.unwrap();
        assert_eq!(store.pending_upload_count(), 1);
        drop(up);
        for _ in 0..50 {
            if store.pending_upload_count() == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(store.pending_upload_count(), 0);
    }
}
