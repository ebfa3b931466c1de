//! Server-side copies of any size (rename, and chmod/chown/touch, which rewrite an object's
//! metadata by copying it onto itself).
//!
//! One CopyObject takes sources up to the store's `max_copy_size` (5 GiB on S3). Bigger ones
//! are copied as a multipart upload whose parts the server copies from ranges of the source
//! (UploadPartCopy), several at once, each pinned to the source's ETag so the copy never mixes
//! two versions. Ceph RGW 16 ignores that condition on parts, so the source's ETag is checked
//! again once every part is copied, before the copy is completed. No byte passes through s3vol
//! either way. A failed copy aborts its upload.

use common::{
    CompletedPart, ETag, ErrorKind, ObjectMeta, ObjectStore, PutResult, StoreError, StoreResult,
    UserMetadata,
};
use futures::{StreamExt, TryStreamExt};

use crate::upload_journal::UploadJournal;

/// Parts copied at once.
const PARTS_IN_FLIGHT: usize = 4;
/// Size of the parts of a multipart copy; more when 10,000 of them would not hold the source.
const PART_SIZE: u64 = 512 << 20;
const MAX_PARTS: u64 = 10_000;

/// Copy `src`, `size` bytes as last seen (a listing, an inode), to `dst`. With `metadata`, the
/// copy gets it instead of the source's user metadata. A multipart copy is recorded in
/// `journal` while it runs, so a crash's leftover is aborted at the next start.
pub async fn copy_object<S: ObjectStore + ?Sized>(
    store: &S,
    src: &str,
    size: u64,
    dst: &str,
    metadata: Option<&UserMetadata>,
    journal: Option<&UploadJournal>,
) -> StoreResult<PutResult> {
    let limit = store.max_copy_size();
    if size <= limit {
        match store.copy(src, dst, metadata).await {
            Ok(put) => return Ok(put),
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(e),
            // `size` may be stale: another client may have made the source bigger since.
            Err(e) => {
                let source = store.head(src).await?;
                if source.size <= limit {
                    return Err(e);
                }
                let part_size = part_size(&source, limit);
                return copy_in_parts(store, &source, dst, metadata, part_size, journal).await;
            }
        }
    }
    let source = store.head(src).await?;
    copy_in_parts(
        store,
        &source,
        dst,
        metadata,
        part_size(&source, limit),
        journal,
    )
    .await
}

/// `PreconditionFailed` unless `key` is still version `etag`: parts copied from it before
/// this returns came from that version, even from a server that ignores the ETag condition on
/// UploadPartCopy (Ceph RGW 16).
pub async fn check_unchanged<S: ObjectStore + ?Sized>(
    store: &S,
    key: &str,
    etag: &ETag,
) -> StoreResult<()> {
    let now = store.head(key).await?.etag;
    if now == *etag {
        return Ok(());
    }
    Err(StoreError::new(
        ErrorKind::PreconditionFailed,
        format!("{key:?} changed while it was being copied (ETag {etag} is now {now}); nothing was copied"),
    ))
}

/// Parts of `PART_SIZE` (no bigger than one copy request takes), more when 10,000 of them
/// would not hold the source.
fn part_size(source: &ObjectMeta, limit: u64) -> u64 {
    PART_SIZE.min(limit).max(source.size.div_ceil(MAX_PARTS))
}

/// Copy `source` to `dst` as a multipart upload of parts of `part_size` bytes.
pub async fn copy_in_parts<S: ObjectStore + ?Sized>(
    store: &S,
    source: &ObjectMeta,
    dst: &str,
    metadata: Option<&UserMetadata>,
    part_size: u64,
    journal: Option<&UploadJournal>,
) -> StoreResult<PutResult> {
    if source.size == 0 {
        // A multipart upload needs a part, and a part needs a byte.
        return store.copy(&source.key, dst, metadata).await;
    }
    let metadata = metadata.unwrap_or(&source.user_metadata);
    let upload_id = store.create_multipart(dst, metadata).await?;
    let record = journal.and_then(|journal| {
        journal
            .record(dst, &upload_id)
            .map_err(|e| tracing::warn!(key = %dst, error = %e, "cannot record a multipart copy in the journal; a crash would leave it behind"))
            .ok()
    });
    let ranges = (0..source.size.div_ceil(part_size)).map(|i| {
        let start = i * part_size;
        start..(start + part_size).min(source.size)
    });
    let result = async {
        let parts: StoreResult<Vec<CompletedPart>> = futures::stream::iter(ranges.enumerate())
            .map(|(i, range)| {
                store.upload_part_copy(
                    &source.key,
                    range,
                    Some(&source.etag),
                    dst,
                    &upload_id,
                    i as u32 + 1,
                )
            })
            .buffered(PARTS_IN_FLIGHT)
            .try_collect()
            .await;
        // A source replaced meanwhile can fail a part in other ways than with
        // PreconditionFailed (a range past its new end), or not at all on Ceph RGW, which
        // ignores the ETag condition on parts: its ETag decides.
        check_unchanged(store, &source.key, &source.etag).await?;
        store.complete_multipart(dst, &upload_id, &parts?).await
    }
    .await;
    let settled = match &result {
        Ok(_) => true,
        Err(_) => match store.abort_multipart(dst, &upload_id).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(key = %dst, error = %e, "could not abort a failed multipart copy; the next start aborts it if it was journaled");
                false
            }
        },
    };
    if let (true, Some(record)) = (settled, record) {
        UploadJournal::forget(&record);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::conformance::pattern;
    use common::failure::FailureStore;
    use common::memory::{InMemoryStore, Op};

    fn meta(mode: &str) -> UserMetadata {
        let mut metadata = UserMetadata::new();
        metadata.insert("mode".into(), mode.into());
        metadata
    }

    #[tokio::test]
    async fn a_source_over_the_copy_limit_is_copied_in_parts_with_its_metadata() {
        let store = InMemoryStore::new("b").with_max_copy_size(1000);
        let body = pattern(4500, 2);
        store
            .put("big", body.clone(), &meta("33188"))
            .await
            .unwrap();
        copy_object(&store, "big", 4500, "moved", None, None)
            .await
            .unwrap();
        assert_eq!(store.get_range("moved", 0..4500, None).await.unwrap(), body);
        assert_eq!(
            store.head("moved").await.unwrap().user_metadata,
            meta("33188")
        );
        // Five parts of the limit's size, copied by the store, none uploaded.
        assert_eq!(store.request_count(Op::UploadPartCopy), 5);
        assert_eq!(store.request_count(Op::UploadPart), 0);
        assert_eq!(store.request_count(Op::Copy), 0);
        assert_eq!(store.pending_upload_count(), 0);

        // Onto itself with new metadata (chmod of a big file).
        copy_object(&store, "big", 4500, "big", Some(&meta("33261")), None)
            .await
            .unwrap();
        assert_eq!(
            store.head("big").await.unwrap().user_metadata,
            meta("33261")
        );
        assert_eq!(store.get_range("big", 0..4500, None).await.unwrap(), body);
    }

    #[tokio::test]
    async fn a_source_within_the_limit_is_one_copy() {
        let store = InMemoryStore::new("b").with_max_copy_size(1000);
        store
            .put("small", pattern(1000, 1), &meta("1"))
            .await
            .unwrap();
        copy_object(&store, "small", 1000, "other", None, None)
            .await
            .unwrap();
        assert_eq!(store.request_count(Op::Copy), 1);
        assert_eq!(store.request_count(Op::UploadPartCopy), 0);
    }

    #[tokio::test]
    async fn a_source_replaced_before_its_parts_are_copied_is_not_copied() {
        let store = InMemoryStore::new("b").with_max_copy_size(1000);
        store
            .put("big", pattern(4500, 1), &meta("1"))
            .await
            .unwrap();
        let before = store.head("big").await.unwrap();
        store
            .put("big", pattern(4500, 2), &meta("1"))
            .await
            .unwrap();
        let err = copy_in_parts(&store, &before, "moved", None, 1000, None)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PreconditionFailed, "{err}");
        assert!(store.head("moved").await.is_err());
        assert_eq!(store.pending_upload_count(), 0);
    }

    #[tokio::test]
    async fn a_source_replaced_while_parts_ignore_the_etag_is_caught_before_completing() {
        // As on Ceph RGW: the parts copy the new version, the ETag check refuses the result.
        let store = InMemoryStore::new("b")
            .with_max_copy_size(1000)
            .ignoring_part_copy_conditions();
        store
            .put("big", pattern(4500, 1), &meta("1"))
            .await
            .unwrap();
        let before = store.head("big").await.unwrap();
        store
            .put("big", pattern(4500, 2), &meta("1"))
            .await
            .unwrap();
        let err = copy_in_parts(&store, &before, "moved", None, 1000, None)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PreconditionFailed, "{err}");
        assert_eq!(
            store.request_count(Op::UploadPartCopy),
            5,
            "the parts were copied"
        );
        assert!(store.head("moved").await.is_err());
        assert_eq!(store.pending_upload_count(), 0);
    }

    #[tokio::test]
    async fn a_source_that_grew_past_the_copy_limit_since_it_was_listed_is_copied_in_parts() {
        let store = InMemoryStore::new("b").with_max_copy_size(1000);
        store
            .put("big", pattern(4500, 4), &meta("1"))
            .await
            .unwrap();
        // The caller saw it at 900 bytes.
        copy_object(&store, "big", 900, "moved", None, None)
            .await
            .unwrap();
        assert_eq!(
            store.get_range("moved", 0..4500, None).await.unwrap(),
            pattern(4500, 4)
        );
    }

    #[tokio::test]
    async fn a_failed_part_aborts_the_copy_and_leaves_no_object_or_journal_record() {
        let dir = tempfile::tempdir().unwrap();
        let journal = UploadJournal::new(dir.path());
        let store = FailureStore::new(InMemoryStore::new("b").with_max_copy_size(1000));
        store
            .put("big", pattern(4500, 3), &meta("1"))
            .await
            .unwrap();
        store.fail_next(Op::UploadPartCopy, ErrorKind::Network, 1);
        let err = copy_object(&store, "big", 4500, "moved", None, Some(&journal))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Network);
        assert!(
            store.head("moved").await.is_err(),
            "a partial copy was made"
        );
        assert_eq!(store.inner().pending_upload_count(), 0);
        let records = std::fs::read_dir(journal.dir()).map_or(0, |dir| dir.count());
        assert_eq!(records, 0, "the journal still records the aborted copy");
    }
}
