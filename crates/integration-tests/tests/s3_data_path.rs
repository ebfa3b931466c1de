//! The chunk cache, read-ahead and uploader over the real Ceph RGW.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::conformance::pattern;
use common::failure::{FailureStore, Op};
use common::{ErrorKind, ObjectStore, UserMetadata};
use integration_tests::require_s3;
use s3_backend::cache::{CacheConfig, ChunkCache, ObjectVersion};
use s3_backend::readahead::{ReadaheadConfig, SequentialReader};
use s3_backend::upload::{StreamingUpload, UploadConfig};

const MIB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_upload_then_sequential_read_round_trips_40_mib() {
    let env = require_s3!();
    let store = Arc::new(env.new_bucket("datapath").await);
    let body = pattern(40 * MIB + 12_345, 11);
    let metadata: UserMetadata = [("mode".to_string(), "33188".to_string())].into();
    let mut upload = StreamingUpload::new(
        store.clone(),
        "dir/big.bin",
        metadata.clone(),
        UploadConfig::default().part_size(5 * MIB),
    );
    for piece in body.chunks(128 * 1024) {
        upload.write(piece).await.unwrap();
    }
    let put = upload.finish().await.unwrap();
    let head = store.head("dir/big.bin").await.unwrap();
    assert_eq!(head.etag, put.etag);
    assert!(head.etag.is_multipart());
    assert_eq!(head.size, body.len() as u64);
    assert_eq!(head.user_metadata, metadata);
    assert!(store.list_multipart_uploads("").await.unwrap().is_empty());

    let cache = Arc::new(
        ChunkCache::new(store.clone(), CacheConfig::default().memory_bytes(64 << 20)).unwrap(),
    );
    let object = ObjectVersion {
        key: head.key.clone(),
        etag: head.etag.clone(),
        size: head.size,
    };
    let mut reader = SequentialReader::new(cache.clone(), object, ReadaheadConfig::default());
    let mut offset = 0u64;
    while offset < head.size {
        let got = reader.read(offset, 128 * 1024).await.unwrap();
        assert_eq!(
            got,
            body.slice(offset as usize..offset as usize + got.len()),
            "at {offset}"
        );
        offset += got.len() as u64;
    }
    let requests = cache.stats().requests.load(Ordering::Relaxed);
    assert!(
        requests <= 12,
        "{requests} GETs for 41 chunks: read-ahead should batch them"
    );
    assert!(cache.memory_used() <= 64 << 20);
}

#[tokio::test]
async fn small_upload_is_one_put_and_reads_back() {
    let env = require_s3!();
    let store = Arc::new(env.new_bucket("small").await);
    let mut upload = StreamingUpload::new(
        store.clone(),
        "s.txt",
        UserMetadata::new(),
        UploadConfig::default(),
    );
    upload.write(b"hello").await.unwrap();
    let put = upload.finish().await.unwrap();
    assert!(!put.etag.is_multipart());
    assert_eq!(
        store
            .get_range("s.txt", 0..5, Some(&put.etag))
            .await
            .unwrap(),
        &b"hello"[..]
    );
}

#[tokio::test]
async fn a_failing_upload_is_aborted_on_the_server() {
    let env = require_s3!();
    let s3 = env.new_bucket("abort").await;
    let store = Arc::new(FailureStore::new(s3.clone()));
    let mut upload = StreamingUpload::new(
        store.clone(),
        "doomed",
        UserMetadata::new(),
        UploadConfig::default().part_size(5 * MIB),
    );
    upload.write(&pattern(6 * MIB, 1)).await.unwrap();
    assert_eq!(s3.list_multipart_uploads("").await.unwrap().len(), 1);
    store.fail_always(Op::UploadPart, ErrorKind::ServerError);
    upload.write(&pattern(5 * MIB, 2)).await.ok();
    let err = upload.finish().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ServerError);
    assert!(
        s3.list_multipart_uploads("").await.unwrap().is_empty(),
        "upload left behind"
    );
    assert_eq!(
        s3.head("doomed").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[tokio::test]
async fn the_cache_never_serves_an_overwritten_object_from_old_chunks() {
    let env = require_s3!();
    let store = Arc::new(env.new_bucket("overwrite").await);
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(
        ChunkCache::new(
            store.clone(),
            CacheConfig::default().disk(Some(dir.path().into()), 64 << 20),
        )
        .unwrap(),
    );
    let v1 = store
        .put("f", pattern(3 * MIB, 1), &UserMetadata::new())
        .await
        .unwrap();
    let obj1 = ObjectVersion {
        key: "f".into(),
        etag: v1.etag,
        size: 3 * MIB as u64,
    };
    assert_eq!(
        cache.read(&obj1, 0, MIB as u64).await.unwrap(),
        pattern(3 * MIB, 1).slice(..MIB)
    );
    let v2 = store
        .put("f", pattern(3 * MIB, 2), &UserMetadata::new())
        .await
        .unwrap();
    let obj2 = ObjectVersion {
        key: "f".into(),
        etag: v2.etag,
        size: 3 * MIB as u64,
    };
    assert_eq!(
        cache.read(&obj2, 0, 3 * MIB as u64).await.unwrap(),
        pattern(3 * MIB, 2)
    );
    // The old version's uncached chunks are refused by the server (If-Match), never mixed.
    let err = cache.read(&obj1, 2 * MIB as u64, 10).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PreconditionFailed, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_in_parts_is_the_same_object_with_its_metadata() {
    let env = require_s3!();
    let store = env.new_bucket("copyparts").await;
    let body = pattern(12 * MIB + 321, 13);
    let metadata: UserMetadata = [("mode".to_string(), "33188".to_string())].into();
    store.put("src", body.clone(), &metadata).await.unwrap();
    let source = store.head("src").await.unwrap();
    // Parts of 5 MiB (S3's smallest) stand in for the 512 MiB parts of a copy over 5 GiB.
    s3_backend::copy::copy_in_parts(&store, &source, "dst", None, 5 * MIB as u64, None)
        .await
        .unwrap();
    let head = store.head("dst").await.unwrap();
    assert!(head.etag.as_str().ends_with("-3\""), "{}", head.etag);
    assert_eq!(head.user_metadata, metadata);
    assert!(store.get_range("dst", 0..head.size, None).await.unwrap() == body);
    // Onto itself with new metadata, as chmod does.
    let chmod: UserMetadata = [("mode".to_string(), "33261".to_string())].into();
    let head = store.head("dst").await.unwrap();
    s3_backend::copy::copy_in_parts(&store, &head, "dst", Some(&chmod), 5 * MIB as u64, None)
        .await
        .unwrap();
    assert_eq!(store.head("dst").await.unwrap().user_metadata, chmod);
    assert!(store.get_range("dst", 0..head.size, None).await.unwrap() == body);
    assert!(store.list_multipart_uploads("").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_in_parts_of_a_source_replaced_meanwhile_is_refused() {
    let env = require_s3!();
    let store = env.new_bucket("copystale").await;
    store
        .put("src", pattern(11 * MIB, 1), &UserMetadata::new())
        .await
        .unwrap();
    let before = store.head("src").await.unwrap();
    store
        .put("src", pattern(11 * MIB, 2), &UserMetadata::new())
        .await
        .unwrap();
    // RGW copies the parts from the new version (it ignores x-amz-copy-source-if-match on
    // UploadPartCopy); the ETag check after the parts refuses to complete such a copy.
    let err = s3_backend::copy::copy_in_parts(&store, &before, "dst", None, 5 * MIB as u64, None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PreconditionFailed, "{err}");
    assert_eq!(
        store.head("dst").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert!(store.list_multipart_uploads("").await.unwrap().is_empty());
}
