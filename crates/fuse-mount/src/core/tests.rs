//! The filesystem core over the in-memory store, no mount.

use std::sync::Arc;
use std::time::Duration;

use common::failure::{FailureStore, Op};
use common::memory::InMemoryStore;
use common::{ErrorKind, ObjectStore, UserMetadata};

use super::*;

struct Fixture<S: ObjectStore> {
    fs: Fs<S>,
    _dir: tempfile::TempDir,
}

fn config(dir: &tempfile::TempDir) -> FsConfig {
    FsConfig::new(dir.path())
        .prefix("vol")
        .owner(1000, 1000)
        .ttls(Duration::from_millis(200), Duration::from_millis(200))
        .upload(UploadConfig::default().unchecked_part_size(1024))
}

fn fixture() -> (Fixture<InMemoryStore>, Arc<InMemoryStore>) {
    fixture_with_ttl(Duration::from_millis(200))
}

/// A fixture whose metadata and negative TTLs are `ttl`: long ones for tests that count the
/// requests made within a TTL, which no slow machine may outlast.
fn fixture_with_ttl(ttl: Duration) -> (Fixture<InMemoryStore>, Arc<InMemoryStore>) {
    let store = Arc::new(InMemoryStore::new("b"));
    let dir = tempfile::tempdir().unwrap();
    let fs = Fs::new(store.clone(), config(&dir).ttls(ttl, ttl)).unwrap();
    (Fixture { fs, _dir: dir }, store)
}

async fn write_file<S: ObjectStore>(fs: &Fs<S>, parent: u64, name: &str, data: &[u8]) -> Attr {
    let (attr, fh) = fs
        .create(parent, name, 0o640, 1000, 1000, IfExists::Truncate)
        .await
        .unwrap();
    fs.write(fh, 0, data).await.unwrap();
    fs.flush(fh).await.unwrap();
    fs.release(fh).await.unwrap();
    attr
}

async fn read_all<S: ObjectStore>(fs: &Fs<S>, ino: u64) -> Vec<u8> {
    let fh = fs.open(ino, false, false).await.unwrap();
    let mut out = Vec::new();
    loop {
        let got = fs.read(fh, out.len() as u64, 4096).await.unwrap();
        if got.is_empty() {
            break;
        }
        out.extend_from_slice(&got);
    }
    fs.release(fh).await.unwrap();
    out
}

/// `count` empty objects `<prefix>/f<n>`, put directly in the store.
async fn put_empty_files<S: ObjectStore>(store: &Arc<S>, prefix: &str, count: usize) {
    let puts = (0..count).map(|i| {
        let store = store.clone();
        async move {
            store
                .put(
                    &format!("{prefix}/f{i}"),
                    Bytes::new(),
                    &UserMetadata::new(),
                )
                .await
                .unwrap()
        }
    });
    futures::future::join_all(puts).await;
}

/// The names of a directory's entries, in their order.
fn entry_names(entries: Vec<DirEntry>) -> Vec<String> {
    entries.into_iter().map(|e| e.name).collect()
}

async fn body(store: &InMemoryStore, key: &str) -> Vec<u8> {
    let size = store.head(key).await.unwrap().size;
    store.get_range(key, 0..size, None).await.unwrap().to_vec()
}

#[tokio::test]
async fn a_written_file_is_one_object_with_s3fs_metadata() {
    let (f, store) = fixture();
    write_file(&f.fs, ROOT_INO, "a.txt", b"hello").await;
    assert_eq!(body(&store, "vol/a.txt").await, b"hello");
    let meta = store.head("vol/a.txt").await.unwrap().user_metadata;
    assert_eq!(meta["mode"], (S_IFREG | 0o640).to_string());
    assert_eq!(
        (meta["uid"].as_str(), meta["gid"].as_str()),
        ("1000", "1000")
    );
    assert!(meta["mtime"].parse::<u64>().unwrap() > 1_700_000_000);
}

#[tokio::test]
async fn sequential_writes_stream_as_multipart_and_random_writes_go_through_staging() {
    let (f, store) = fixture();
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let attr = write_file(&f.fs, ROOT_INO, "big", &data).await;
    assert!(
        store.request_count(Op::UploadPart) >= 9,
        "streamed in parts"
    );
    assert_eq!(body(&store, "vol/big").await, data);
    // Edit in place: the staged copy is uploaded whole.
    let fh = f.fs.open(attr.ino, true, false).await.unwrap();
    f.fs.write(fh, 5000, b"XYZ").await.unwrap();
    assert_eq!(
        &f.fs.read(fh, 4999, 5).await.unwrap()[..],
        &[data[4999], b'X', b'Y', b'Z', data[5003]]
    );
    f.fs.fsync(fh).await.unwrap();
    f.fs.release(fh).await.unwrap();
    let mut want = data.clone();
    want[5000..5003].copy_from_slice(b"XYZ");
    assert_eq!(body(&store, "vol/big").await, want);
    assert_eq!(read_all(&f.fs, attr.ino).await, want);
    assert_eq!(store.pending_upload_count(), 0);
}

#[tokio::test]
async fn a_file_flushed_while_still_empty_streams_what_is_written_next() {
    // `cmd > file` and dd: open, dup2 onto stdout, close the first descriptor (a flush of the
    // empty file just created, which waits for the last close), then write through stdout.
    let (f, store) = fixture();
    let (attr, fh) =
        f.fs.create(ROOT_INO, "out", 0o644, 1000, 1000, IfExists::Truncate)
            .await
            .unwrap();
    f.fs.flush(fh).await.unwrap();
    assert!(
        store.head("vol/out").await.is_err(),
        "not put at that close"
    );
    let data = common::conformance::pattern(10_000, 3);
    for (i, piece) in data.chunks(1000).enumerate() {
        f.fs.write(fh, (i * 1000) as u64, piece).await.unwrap();
    }
    // 9 parts are full; at most 4 may still be in flight.
    assert!(
        store.request_count(Op::UploadPart) >= 5,
        "streamed while written, not at close: {} parts",
        store.request_count(Op::UploadPart)
    );
    assert_eq!(store.pending_upload_count(), 1);
    f.fs.release(fh).await.unwrap();
    assert_eq!(body(&store, "vol/out").await, data);
    assert_eq!(read_all(&f.fs, attr.ino).await, data);
    assert_eq!(store.pending_upload_count(), 0);
}

#[tokio::test]
async fn a_new_file_written_through_a_dup2ed_descriptor_costs_one_put() {
    // `echo hi > f`: create, close of the first descriptor, write, close of stdout, release.
    let (f, store) = fixture();
    let (attr, fh) =
        f.fs.create(ROOT_INO, "hi", 0o644, 1000, 1000, IfExists::Truncate)
            .await
            .unwrap();
    f.fs.flush(fh).await.unwrap();
    f.fs.write(fh, 0, b"hi\n").await.unwrap();
    f.fs.flush(fh).await.unwrap();
    assert_eq!(
        body(&store, "vol/hi").await,
        b"hi\n",
        "in the store at close"
    );
    f.fs.release(fh).await.unwrap();
    assert_eq!(store.request_count(Op::Put), 1);
    assert_eq!(read_all(&f.fs, attr.ino).await, b"hi\n");
    // `echo again > f` over it: open(O_TRUNC), the same dance. Other clients never see it
    // empty, and it costs one PUT.
    let fh = f.fs.open(attr.ino, true, true).await.unwrap();
    f.fs.flush(fh).await.unwrap();
    assert_eq!(
        body(&store, "vol/hi").await,
        b"hi\n",
        "not emptied at that close"
    );
    f.fs.write(fh, 0, b"again\n").await.unwrap();
    f.fs.flush(fh).await.unwrap();
    assert_eq!(
        body(&store, "vol/hi").await,
        b"again\n",
        "in the store at close"
    );
    f.fs.release(fh).await.unwrap();
    assert_eq!(store.request_count(Op::Put), 2);
    // `: > f`: emptied and closed without a write, it is empty in the store after the release.
    // Meanwhile the mount shows it empty and changed now, in listings too.
    let before = f.fs.getattr(attr.ino).await.unwrap().mtime;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let fh = f.fs.open(attr.ino, true, true).await.unwrap();
    f.fs.flush(fh).await.unwrap();
    let listed = f.fs.readdir(ROOT_INO).await.unwrap();
    let entry = listed.iter().find(|e| e.name == "hi").unwrap();
    assert_eq!(entry.attr.size, 0);
    assert!(f.fs.getattr(attr.ino).await.unwrap().mtime > before);
    f.fs.release(fh).await.unwrap();
    assert_eq!(body(&store, "vol/hi").await, b"");
}

#[tokio::test]
async fn an_empty_new_file_reaches_the_store_at_fsync_or_its_last_close() {
    let (f, store) = fixture();
    // open(O_CREAT) and close: the release after the close puts it.
    let (_, fh) =
        f.fs.create(ROOT_INO, "marker", 0o644, 1000, 1000, IfExists::Truncate)
            .await
            .unwrap();
    f.fs.flush(fh).await.unwrap();
    f.fs.release(fh).await.unwrap();
    assert_eq!(body(&store, "vol/marker").await, b"");
    // fsync always puts.
    let (_, fh) =
        f.fs.create(ROOT_INO, "synced", 0o644, 1000, 1000, IfExists::Truncate)
            .await
            .unwrap();
    f.fs.fsync(fh).await.unwrap();
    assert_eq!(body(&store, "vol/synced").await, b"");
    f.fs.release(fh).await.unwrap();
    // touch: create, set the times through the open descriptor, close: put at that close.
    let (attr, fh) =
        f.fs.create(ROOT_INO, "touched", 0o644, 1000, 1000, IfExists::Truncate)
            .await
            .unwrap();
    let mtime = std::time::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    f.fs.setattr(
        attr.ino,
        SetAttr {
            mtime: Some(mtime),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    f.fs.flush(fh).await.unwrap();
    let meta = store.head("vol/touched").await.unwrap().user_metadata;
    assert_eq!(meta["mtime"], "1600000000");
    f.fs.release(fh).await.unwrap();
    // ftruncate to 0 of the new file counts as a change too.
    let (attr, fh) =
        f.fs.create(ROOT_INO, "cut", 0o644, 1000, 1000, IfExists::Truncate)
            .await
            .unwrap();
    f.fs.setattr(
        attr.ino,
        SetAttr {
            size: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    f.fs.flush(fh).await.unwrap();
    assert_eq!(body(&store, "vol/cut").await, b"");
    f.fs.release(fh).await.unwrap();
}

#[tokio::test]
async fn a_file_written_while_other_files_hold_the_write_buffers_is_uploaded_at_close() {
    let store = Arc::new(InMemoryStore::new("b"));
    let dir = tempfile::tempdir().unwrap();
    // Room for 4 parts: 3 shared by streams, 1 kept for uploads from staging files.
    let budget = s3_backend::write_budget::WriteBudget::new(4 * 1024);
    let upload = UploadConfig::default()
        .unchecked_part_size(1024)
        .budget(budget.clone());
    let fs = Fs::new(store.clone(), config(&dir).upload(upload)).unwrap();
    let mut open = Vec::new();
    for name in ["a", "b", "c"] {
        let (attr, fh) = fs
            .create(ROOT_INO, name, 0o644, 1000, 1000, IfExists::Truncate)
            .await
            .unwrap();
        fs.write(fh, 0, name.repeat(100).as_bytes()).await.unwrap();
        open.push((attr, fh, name.repeat(100).into_bytes()));
    }
    let (late, fh) = fs
        .create(ROOT_INO, "late", 0o644, 1000, 1000, IfExists::Truncate)
        .await
        .unwrap();
    let data = common::conformance::pattern(10_000, 7);
    for (i, piece) in data.chunks(1000).enumerate() {
        fs.write(fh, (i * 1000) as u64, piece).await.unwrap();
    }
    assert_eq!(
        store.request_count(Op::UploadPart),
        0,
        "no memory for its parts, so it is not streamed"
    );
    fs.release(fh).await.unwrap();
    assert_eq!(body(&store, "vol/late").await, data);
    assert_eq!(read_all(&fs, late.ino).await, data);
    for (attr, fh, want) in open {
        fs.release(fh).await.unwrap();
        assert_eq!(read_all(&fs, attr.ino).await, want);
    }
    assert_eq!(budget.available(), 4 * 1024, "every buffer given back");
    assert_eq!(store.pending_upload_count(), 0);
}

#[tokio::test]
async fn a_file_unlinked_while_written_gives_its_write_buffers_back() {
    let store = Arc::new(InMemoryStore::new("b"));
    let dir = tempfile::tempdir().unwrap();
    let budget = s3_backend::write_budget::WriteBudget::new(64 * 1024);
    let upload = UploadConfig::default()
        .unchecked_part_size(1024)
        .budget(budget.clone());
    let fs = Fs::new(store.clone(), config(&dir).upload(upload)).unwrap();
    let (_, fh) = fs
        .create(ROOT_INO, "tmp", 0o644, 1000, 1000, IfExists::Truncate)
        .await
        .unwrap();
    fs.write(fh, 0, &common::conformance::pattern(3500, 2))
        .await
        .unwrap();
    assert!(
        budget.available() < 64 * 1024,
        "the stream holds a part buffer"
    );
    fs.unlink(ROOT_INO, "tmp").await.unwrap();
    // Its parts' tasks are aborted; they give their memory back when next polled.
    for _ in 0..100 {
        if budget.available() == 64 * 1024 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(budget.available(), 64 * 1024, "held by a file that is gone");
    fs.release(fh).await.unwrap();
    assert!(!store.keys().iter().any(|k| k.ends_with("tmp")));
}

#[tokio::test]
async fn create_of_a_name_another_client_made_meanwhile_opens_it() {
    // The kernel sends CREATE for a name it believes absent; the object appeared since.
    let (f, store) = fixture();
    assert!(matches!(
        f.fs.lookup(ROOT_INO, "log").await,
        Err(FsError::NotFound)
    ));
    store
        .put(
            "vol/log",
            Bytes::from_static(b"line 0\n"),
            &UserMetadata::new(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await; // past the negative TTL
    let (attr, fh) =
        f.fs.create(ROOT_INO, "log", 0o644, 1000, 1000, IfExists::Open)
            .await
            .unwrap();
    assert_eq!(attr.size, 7, "opened as it is");
    f.fs.write(fh, attr.size, b"line 1\n").await.unwrap();
    f.fs.release(fh).await.unwrap();
    assert_eq!(body(&store, "vol/log").await, b"line 0\nline 1\n");
    // O_TRUNC empties it; O_EXCL refuses it.
    let (attr, fh) =
        f.fs.create(ROOT_INO, "log", 0o644, 1000, 1000, IfExists::Truncate)
            .await
            .unwrap();
    assert_eq!(attr.size, 0);
    f.fs.release(fh).await.unwrap();
    assert_eq!(body(&store, "vol/log").await, b"");
    assert!(matches!(
        f.fs.create(ROOT_INO, "log", 0o644, 1000, 1000, IfExists::Fail)
            .await,
        Err(FsError::Exists)
    ));
    // Not a file: nothing to open here.
    f.fs.symlink(ROOT_INO, "link", "log", 1000, 1000)
        .await
        .unwrap();
    assert!(matches!(
        f.fs.create(ROOT_INO, "link", 0o644, 1000, 1000, IfExists::Open)
            .await,
        Err(FsError::Exists)
    ));
}

#[tokio::test]
async fn append_and_truncate_keep_the_existing_bytes() {
    let (f, store) = fixture();
    let attr = write_file(&f.fs, ROOT_INO, "log", b"one\n").await;
    let fh = f.fs.open(attr.ino, true, false).await.unwrap();
    f.fs.write(fh, 4, b"two\n").await.unwrap();
    f.fs.release(fh).await.unwrap();
    assert_eq!(body(&store, "vol/log").await, b"one\ntwo\n");
    // truncate(2) by path: no handle, committed at once.
    f.fs.setattr(
        attr.ino,
        SetAttr {
            size: Some(3),
            ..SetAttr::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(body(&store, "vol/log").await, b"one");
    f.fs.setattr(
        attr.ino,
        SetAttr {
            size: Some(6),
            ..SetAttr::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(body(&store, "vol/log").await, b"one\0\0\0");
    // O_TRUNC empties the file.
    let fh = f.fs.open(attr.ino, true, true).await.unwrap();
    f.fs.release(fh).await.unwrap();
    assert_eq!(store.head("vol/log").await.unwrap().size, 0);
}

#[tokio::test]
async fn listing_shows_files_and_directories_and_skips_impossible_names() {
    let (f, store) = fixture();
    let none = UserMetadata::new();
    for key in [
        "vol/b.txt",
        "vol/sub/x",
        "vol/empty/",
        "vol/dup",
        "vol/dup/inner",
        "vol/a//c",
        &format!("vol/{}", "n".repeat(256)),
    ] {
        store
            .put(key, bytes::Bytes::from_static(b"12345"), &none)
            .await
            .unwrap();
    }
    store
        .put("other/not-in-volume", bytes::Bytes::new(), &none)
        .await
        .unwrap();
    let entries = f.fs.readdir(ROOT_INO).await.unwrap();
    let names: Vec<_> = entries
        .iter()
        .map(|e| (e.name.as_str(), e.attr.kind))
        .collect();
    // "dup" is both an object and a prefix: the directory wins. "a//c" has an empty segment
    // and the 256-byte name is too long for Linux: both are skipped.
    assert_eq!(
        names,
        [
            ("a", Kind::Dir),
            ("b.txt", Kind::File),
            ("dup", Kind::Dir),
            ("empty", Kind::Dir),
            ("sub", Kind::Dir)
        ]
    );
    let b = entries.iter().find(|e| e.name == "b.txt").unwrap();
    assert_eq!((b.attr.size, b.attr.perm, b.attr.uid), (5, 0o644, 1000));
    let a = f.fs.lookup(ROOT_INO, "a").await.unwrap();
    assert!(f.fs.readdir(a.ino).await.unwrap().is_empty());
    let empty = f.fs.lookup(ROOT_INO, "empty").await.unwrap();
    assert!(f.fs.readdir(empty.ino).await.unwrap().is_empty());
    assert_eq!(
        store.request_count(Op::Head),
        2,
        "listing needs no HEAD per entry (the two lookups read their folders' markers)"
    );
}

#[tokio::test]
async fn a_listing_costs_one_request_per_thousand_entries() {
    let (f, store) = fixture();
    for i in 0..2500 {
        store
            .put(
                &format!("vol/many/f{i:05}"),
                bytes::Bytes::new(),
                &UserMetadata::new(),
            )
            .await
            .unwrap();
    }
    let many = f.fs.lookup(ROOT_INO, "many").await.unwrap();
    let lists = store.request_count(Op::List);
    assert_eq!(f.fs.readdir(many.ino).await.unwrap().len(), 2500);
    assert_eq!(store.request_count(Op::List) - lists, 3);
    assert_eq!(
        store.request_count(Op::Head),
        1,
        "the root listing told \"many\" is a directory: only its marker is read"
    );
}

#[tokio::test]
async fn remote_changes_show_up_after_the_ttl() {
    let (f, store) = fixture();
    assert!(matches!(
        f.fs.lookup(ROOT_INO, "late").await,
        Err(FsError::NotFound)
    ));
    store
        .put(
            "vol/late",
            bytes::Bytes::from_static(b"x"),
            &UserMetadata::new(),
        )
        .await
        .unwrap();
    // Negative cache: still missing within the TTL ...
    assert!(matches!(
        f.fs.lookup(ROOT_INO, "late").await,
        Err(FsError::NotFound)
    ));
    tokio::time::sleep(Duration::from_millis(250)).await;
    // ... found after it.
    let attr = f.fs.lookup(ROOT_INO, "late").await.unwrap();
    store
        .put(
            "vol/late",
            bytes::Bytes::from_static(b"longer"),
            &UserMetadata::new(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(f.fs.getattr(attr.ino).await.unwrap().size, 6);
    assert_eq!(read_all(&f.fs, attr.ino).await, b"longer");
    store.delete("vol/late").await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(matches!(
        f.fs.lookup(ROOT_INO, "late").await,
        Err(FsError::NotFound)
    ));
}

#[tokio::test]
async fn a_name_missing_from_a_listing_shows_one_ttl_after_that_listing_however_late_looked_up() {
    let ttl = Duration::from_secs(2);
    let (f, store) = fixture_with_ttl(ttl);
    let listed = std::time::Instant::now();
    // This lookup lists the root: every name not in it is known missing from now on.
    assert!(matches!(
        f.fs.lookup(ROOT_INO, "first").await,
        Err(FsError::NotFound)
    ));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    store
        .put(
            "vol/late",
            bytes::Bytes::from_static(b"x"),
            &UserMetadata::new(),
        )
        .await
        .unwrap();
    // Within the listing's TTL, "late" is taken as missing on the listing's word ...
    let answer = f.fs.lookup(ROOT_INO, "late").await;
    if listed.elapsed() < ttl {
        assert!(matches!(answer, Err(FsError::NotFound)), "{answer:?}");
    }
    // ... and only until one TTL after that listing, not one TTL after this lookup.
    tokio::time::sleep(ttl.saturating_sub(listed.elapsed()) + Duration::from_millis(300)).await;
    assert!(f.fs.lookup(ROOT_INO, "late").await.is_ok());
}

#[tokio::test]
async fn directories_unlink_rmdir_and_errors() {
    let (f, store) = fixture();
    let d = f.fs.mkdir(ROOT_INO, "d", 0o750, 1, 2).await.unwrap();
    assert!(store.head("vol/d/").await.is_ok(), "mkdir writes a marker");
    assert!(matches!(
        f.fs.mkdir(ROOT_INO, "d", 0o755, 0, 0).await,
        Err(FsError::Exists)
    ));
    write_file(&f.fs, d.ino, "f", b"1").await;
    assert_eq!(
        f.fs.rmdir(ROOT_INO, "d").await.unwrap_err().errno(),
        libc::ENOTEMPTY
    );
    assert_eq!(
        f.fs.unlink(ROOT_INO, "d").await.unwrap_err().errno(),
        libc::EISDIR
    );
    assert_eq!(
        f.fs.rmdir(d.ino, "f").await.unwrap_err().errno(),
        libc::ENOTDIR
    );
    f.fs.unlink(d.ino, "f").await.unwrap();
    f.fs.rmdir(ROOT_INO, "d").await.unwrap();
    assert!(store.keys().is_empty(), "{:?}", store.keys());
    assert_eq!(
        f.fs.lookup(ROOT_INO, &"x".repeat(256))
            .await
            .unwrap_err()
            .errno(),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        f.fs.lookup(ROOT_INO, "nope").await.unwrap_err().errno(),
        libc::ENOENT
    );
}

#[tokio::test]
async fn rename_moves_files_and_whole_directories() {
    let (f, store) = fixture();
    let d = f.fs.mkdir(ROOT_INO, "src", 0o755, 0, 0).await.unwrap();
    write_file(&f.fs, d.ino, "one", b"1").await;
    let sub = f.fs.mkdir(d.ino, "sub", 0o755, 0, 0).await.unwrap();
    write_file(&f.fs, sub.ino, "two", b"22").await;
    f.fs.rename(d.ino, "one", ROOT_INO, "moved").await.unwrap();
    assert_eq!(body(&store, "vol/moved").await, b"1");
    f.fs.rename(ROOT_INO, "src", ROOT_INO, "dst").await.unwrap();
    let mut keys = store.keys();
    keys.sort();
    assert_eq!(
        keys,
        ["vol/dst/", "vol/dst/sub/", "vol/dst/sub/two", "vol/moved"]
    );
    let dst = f.fs.lookup(ROOT_INO, "dst").await.unwrap();
    let sub = f.fs.lookup(dst.ino, "sub").await.unwrap();
    let two = f.fs.lookup(sub.ino, "two").await.unwrap();
    assert_eq!(read_all(&f.fs, two.ino).await, b"22");
    // Over an existing file: replaced.
    write_file(&f.fs, ROOT_INO, "other", b"other").await;
    f.fs.rename(ROOT_INO, "moved", ROOT_INO, "other")
        .await
        .unwrap();
    assert_eq!(body(&store, "vol/other").await, b"1");
    assert_eq!(
        f.fs.rename(ROOT_INO, "other", ROOT_INO, "dst")
            .await
            .unwrap_err()
            .errno(),
        libc::EISDIR
    );
    // Into itself: refused before anything is removed, an empty folder in the way too.
    let a = f.fs.mkdir(ROOT_INO, "a", 0o755, 0, 0).await.unwrap();
    f.fs.mkdir(a.ino, "b", 0o755, 0, 0).await.unwrap();
    let err = f.fs.rename(ROOT_INO, "a", a.ino, "b").await.unwrap_err();
    assert_eq!(err.errno(), libc::EINVAL);
    assert_eq!(f.fs.lookup(a.ino, "b").await.unwrap().kind, Kind::Dir);
    assert_eq!(body(&store, "vol/a/b/").await, b"");
}

#[tokio::test]
async fn symlinks_and_chmod_are_stored_like_s3fs() {
    let (f, store) = fixture();
    let link =
        f.fs.symlink(ROOT_INO, "ln", "target/file", 5, 6)
            .await
            .unwrap();
    assert_eq!(link.kind, Kind::Symlink);
    assert_eq!(body(&store, "vol/ln").await, b"target/file");
    assert_eq!(
        store.head("vol/ln").await.unwrap().user_metadata["mode"],
        (S_IFLNK | 0o777).to_string()
    );
    let (heads, gets) = (store.request_count(Op::Head), store.request_count(Op::Get));
    assert_eq!(f.fs.readlink(link.ino).await.unwrap(), "target/file");
    // One request, not a HEAD and a GET.
    assert_eq!(store.request_count(Op::Head), heads);
    assert_eq!(store.request_count(Op::Get), gets + 1);
    // An empty target (an object of 0 bytes with the symlink mode) reads as empty.
    let mut mode = UserMetadata::new();
    mode.insert("mode".into(), (S_IFLNK | 0o777).to_string());
    store.put("vol/empty", Bytes::new(), &mode).await.unwrap();
    // Made behind the mount's back: visible once the listing's TTL has passed.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let empty = f.fs.lookup(ROOT_INO, "empty").await.unwrap();
    assert_eq!(f.fs.readlink(empty.ino).await.unwrap(), "");

    let file = write_file(&f.fs, ROOT_INO, "f", b"data").await;
    f.fs.setattr(
        file.ino,
        SetAttr {
            mode: Some(0o600),
            uid: Some(42),
            ..SetAttr::default()
        },
    )
    .await
    .unwrap();
    let meta = store.head("vol/f").await.unwrap().user_metadata;
    assert_eq!(meta["mode"], (S_IFREG | 0o600).to_string());
    assert_eq!(meta["uid"], "42");
    assert_eq!(body(&store, "vol/f").await, b"data");
}

#[tokio::test]
async fn objects_written_by_s3fs_get_their_mode_owner_and_time() {
    let (f, store) = fixture();
    let meta: UserMetadata = [
        ("mode", "33261"),
        ("uid", "33"),
        ("gid", "44"),
        ("mtime", "1600000000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    store
        .put(
            "vol/tool.sh",
            bytes::Bytes::from_static(b"#!/bin/sh\n"),
            &meta,
        )
        .await
        .unwrap();
    let link_meta: UserMetadata = [("mode".to_string(), "41471".to_string())].into();
    store
        .put("vol/ln", bytes::Bytes::from_static(b"tool.sh"), &link_meta)
        .await
        .unwrap();
    let attr = f.fs.lookup(ROOT_INO, "tool.sh").await.unwrap();
    assert_eq!((attr.perm, attr.uid, attr.gid), (0o755, 33, 44));
    assert_eq!(
        attr.mtime,
        std::time::UNIX_EPOCH + Duration::from_secs(1_600_000_000)
    );
    assert_eq!(
        f.fs.lookup(ROOT_INO, "ln").await.unwrap().kind,
        Kind::Symlink
    );
}

/// s3fs's user metadata: `mode` (decimal `st_mode`), `uid`, `gid`, `mtime`.
fn s3fs_metadata(mode: u32, uid: u32, gid: u32, mtime: u64) -> UserMetadata {
    [
        ("mode", mode as u64),
        ("uid", uid.into()),
        ("gid", gid.into()),
        ("mtime", mtime),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

#[tokio::test]
async fn a_directorys_mode_owner_and_mtime_come_from_its_marker_after_listings_and_remounts() {
    let (f, store) = fixture();
    let mtime = std::time::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    let d = f.fs.mkdir(ROOT_INO, "d", 0o750, 1, 2).await.unwrap();
    f.fs.setattr(
        d.ino,
        SetAttr {
            mode: Some(0o711),
            uid: Some(33),
            mtime: Some(mtime),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // A folder another tool made, as s3fs stores one.
    store
        .put(
            "vol/theirs/",
            bytes::Bytes::new(),
            &s3fs_metadata(S_IFDIR | 0o700, 44, 55, 1_500_000_000),
        )
        .await
        .unwrap();
    store
        .put(
            "vol/implicit/x",
            bytes::Bytes::from_static(b"x"),
            &UserMetadata::new(),
        )
        .await
        .unwrap();
    let theirs = (
        0o700,
        44,
        55,
        std::time::UNIX_EPOCH + Duration::from_secs(1_500_000_000),
    );
    let ours = (0o711, 33, 2, mtime);
    let owner = |a: Attr| (a.perm, a.uid, a.gid, a.mtime);
    // Listed past the TTL, then looked up: as set, not the defaults a listing knows.
    tokio::time::sleep(Duration::from_millis(250)).await;
    f.fs.readdir(ROOT_INO).await.unwrap();
    assert_eq!(owner(f.fs.lookup(ROOT_INO, "d").await.unwrap()), ours);
    assert_eq!(
        owner(f.fs.lookup(ROOT_INO, "theirs").await.unwrap()),
        theirs
    );
    // Another mount of the bucket (or this one remounted) reads them from the markers, also
    // after a listing handed out the folders first.
    for list_first in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let other = Fs::new(store.clone(), config(&dir)).unwrap();
        if list_first {
            other.readdir(ROOT_INO).await.unwrap();
        }
        assert_eq!(owner(other.lookup(ROOT_INO, "d").await.unwrap()), ours);
        assert_eq!(
            owner(other.lookup(ROOT_INO, "theirs").await.unwrap()),
            theirs
        );
    }
    // A folder with no marker (only keys below it) has the defaults.
    let implicit = f.fs.lookup(ROOT_INO, "implicit").await.unwrap();
    assert_eq!(
        (implicit.perm, implicit.uid, implicit.gid),
        (0o755, 1000, 1000)
    );
}

#[tokio::test]
async fn a_change_to_an_entry_known_only_from_a_listing_keeps_what_it_does_not_set() {
    let (f, store) = fixture();
    store
        .put(
            "vol/f",
            bytes::Bytes::from_static(b"old"),
            &s3fs_metadata(S_IFREG | 0o640, 33, 44, 1_600_000_000),
        )
        .await
        .unwrap();
    store
        .put(
            "vol/d/",
            bytes::Bytes::new(),
            &s3fs_metadata(S_IFDIR | 0o700, 33, 44, 1_600_000_000),
        )
        .await
        .unwrap();
    // readdirplus hands the kernel these entries with a listing's defaults; it then changes
    // them without a lookup.
    let listed = f.fs.readdir(ROOT_INO).await.unwrap();
    let ino_of = |name: &str| listed.iter().find(|e| e.name == name).unwrap().attr.ino;
    let chmod = SetAttr {
        mode: Some(0o600),
        ..Default::default()
    };
    f.fs.setattr(ino_of("f"), chmod.clone()).await.unwrap();
    let meta = store.head("vol/f").await.unwrap().user_metadata;
    assert_eq!(
        (&*meta["mode"], &*meta["uid"], &*meta["gid"]),
        (&*(S_IFREG | 0o600).to_string(), "33", "44")
    );
    let chown = SetAttr {
        uid: Some(7),
        ..Default::default()
    };
    f.fs.setattr(ino_of("d"), chown).await.unwrap();
    let meta = store.head("vol/d/").await.unwrap().user_metadata;
    assert_eq!(
        (&*meta["mode"], &*meta["uid"], &*meta["gid"]),
        (&*(S_IFDIR | 0o700).to_string(), "7", "44")
    );
    // A rewrite of a file known from a listing keeps its mode and owner too.
    store
        .put(
            "vol/g",
            bytes::Bytes::from_static(b"old"),
            &s3fs_metadata(S_IFREG | 0o604, 55, 66, 1_600_000_000),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let listed = f.fs.readdir(ROOT_INO).await.unwrap();
    let g = listed.iter().find(|e| e.name == "g").unwrap().attr.ino;
    let fh = f.fs.open(g, true, true).await.unwrap();
    f.fs.write(fh, 0, b"new").await.unwrap();
    f.fs.release(fh).await.unwrap();
    assert_eq!(body(&store, "vol/g").await, b"new");
    let meta = store.head("vol/g").await.unwrap().user_metadata;
    assert_eq!(
        (&*meta["mode"], &*meta["uid"], &*meta["gid"]),
        (&*(S_IFREG | 0o604).to_string(), "55", "66")
    );
    // Rewritten by another client since the listing: the chmod shows the new version's size
    // (and the owner it stores), as the HEAD it needed found them.
    store
        .put(
            "vol/h",
            bytes::Bytes::from_static(b"old"),
            &UserMetadata::new(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let listed = f.fs.readdir(ROOT_INO).await.unwrap();
    let h = listed.iter().find(|e| e.name == "h").unwrap().attr.ino;
    store
        .put(
            "vol/h",
            bytes::Bytes::from_static(b"rewritten!"),
            &s3fs_metadata(S_IFREG | 0o644, 77, 88, 1_600_000_000),
        )
        .await
        .unwrap();
    let changed = f.fs.setattr(h, chmod).await.unwrap();
    assert_eq!((changed.size, changed.uid, changed.perm), (10, 77, 0o600));
    assert_eq!(f.fs.getattr(h).await.unwrap().size, 10);
    assert_eq!(read_all(&f.fs, h).await, b"rewritten!");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marker_or_metadata_read_while_the_folder_is_listed_again_is_kept() {
    let store = Arc::new(FailureStore::new(InMemoryStore::new("b")));
    let meta = |mode| s3fs_metadata(mode, 44, 55, 1_500_000_000);
    store
        .put("vol/d/", bytes::Bytes::new(), &meta(S_IFDIR | 0o700))
        .await
        .unwrap();
    store
        .put(
            "vol/f",
            bytes::Bytes::from_static(b"f"),
            &meta(S_IFREG | 0o604),
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(Fs::new(store.clone(), config(&dir)).unwrap());
    // A lookup's HEAD answers late, after an `ls` listed the folder again (past the TTL of
    // the listing the lookup took): that listing shows no marker, nor a file's mode and
    // owner, so what the HEAD read is what the entry gets.
    for (name, key, perm) in [("d", "vol/d/", 0o700), ("f", "vol/f", 0o604)] {
        // Nothing of it fresh: the lookup asks the store.
        tokio::time::sleep(Duration::from_millis(250)).await;
        store.hold_answers(Op::Head, key);
        let lookup = {
            let fs = fs.clone();
            tokio::spawn(async move { fs.lookup(ROOT_INO, name).await })
        };
        store.until_waiting(1).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
        fs.readdir(ROOT_INO).await.unwrap();
        store.release_answers();
        let found = lookup.await.unwrap().unwrap();
        assert_eq!((found.perm, found.uid, found.gid), (perm, 44, 55), "{name}");
        let now = fs.getattr(found.ino).await.unwrap();
        assert_eq!((now.perm, now.uid, now.gid), (perm, 44, 55), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marker_read_while_a_listing_first_shows_its_folder_is_kept() {
    let store = Arc::new(FailureStore::new(InMemoryStore::new("b")));
    store
        .put(
            "vol/d/",
            bytes::Bytes::new(),
            &s3fs_metadata(S_IFDIR | 0o700, 44, 55, 1_500_000_000),
        )
        .await
        .unwrap();
    // A root too big to list for one lookup: the lookup asks for d alone, and the listing
    // of an `ls` meanwhile is the first to show d to the mount.
    put_empty_files(&store, "vol", 2_001).await;
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(Fs::new(store.clone(), config(&dir)).unwrap());
    store.hold_answers(Op::Head, "vol/d/");
    let lookup = {
        let fs = fs.clone();
        tokio::spawn(async move { fs.lookup(ROOT_INO, "d").await })
    };
    store.until_waiting(1).await;
    fs.readdir(ROOT_INO).await.unwrap();
    store.release_answers();
    let d = lookup.await.unwrap().unwrap();
    assert_eq!((d.perm, d.uid, d.gid), (0o700, 44, 55));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_answered_after_a_listing_of_a_newer_state_keeps_the_listings() {
    let store = Arc::new(FailureStore::new(InMemoryStore::new("b")));
    for key in ["vol/g", "vol/x"] {
        store
            .put(key, bytes::Bytes::from_static(b"old"), &UserMetadata::new())
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(Fs::new(store.clone(), config(&dir)).unwrap());
    // g: the HEAD found the old version; another client rewrote g, and an `ls` showed the new
    // one, before the HEAD's answer came: the newer version stands.
    store.hold_answers(Op::Head, "vol/g");
    let lookup = {
        let fs = fs.clone();
        tokio::spawn(async move { fs.lookup(ROOT_INO, "g").await })
    };
    store.until_waiting(1).await;
    store
        .put(
            "vol/g",
            bytes::Bytes::from_static(b"new!!"),
            &UserMetadata::new(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    fs.readdir(ROOT_INO).await.unwrap();
    store.release_answers();
    let g = lookup.await.unwrap().unwrap();
    assert_eq!(g.size, 5);
    assert_eq!(fs.getattr(g.ino).await.unwrap().size, 5);
    // x: listed as a file, but gone by the HEAD, which found nothing; another client made a
    // folder x meanwhile, and an `ls` showed it before the HEAD's answer came: x is a folder,
    // not a missing name.
    tokio::time::sleep(Duration::from_millis(250)).await;
    store.hold_answers(Op::List, "vol/");
    let lookup = {
        let fs = fs.clone();
        tokio::spawn(async move { fs.lookup(ROOT_INO, "x").await })
    };
    store.until_waiting(1).await;
    store.delete("vol/x").await.unwrap();
    store
        .put(
            "vol/x/y",
            bytes::Bytes::from_static(b"y"),
            &UserMetadata::new(),
        )
        .await
        .unwrap();
    store.hold_answers(Op::Head, "vol/x");
    store.release_answers_of(Op::List);
    tokio::time::sleep(Duration::from_millis(100)).await;
    store.until_waiting(1).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    fs.readdir(ROOT_INO).await.unwrap();
    store.release_answers();
    assert_eq!(lookup.await.unwrap().unwrap().kind, Kind::Dir);
    assert_eq!(fs.lookup(ROOT_INO, "x").await.unwrap().kind, Kind::Dir);
}

#[tokio::test]
async fn a_listing_that_began_before_a_change_does_not_outrank_a_lookup_sent_after_it() {
    let store = Arc::new(FailureStore::new(InMemoryStore::new("b")));
    store
        .put(
            "vol/f",
            bytes::Bytes::from_static(b"old"),
            &UserMetadata::new(),
        )
        .await
        .unwrap();
    put_empty_files(&store, "vol", 2_001).await;
    let dir = tempfile::tempdir().unwrap();
    let long = Duration::from_secs(60);
    let fs = Arc::new(Fs::new(store.clone(), config(&dir).ttls(long, long)).unwrap());
    // A first lookup learns that the root is too big to list for one name: the next one sends
    // a HEAD at once.
    fs.lookup(ROOT_INO, "f0").await.unwrap();
    // An `ls` reads the folder (old f), then another client rewrites f, then a lookup sends
    // its HEAD; the listing's answer arrives first, the HEAD's after it.
    store.hold_answers(Op::List, "vol/");
    let listing = {
        let fs = fs.clone();
        tokio::spawn(async move { fs.readdir(ROOT_INO).await })
    };
    store.until_waiting(1).await;
    store
        .put(
            "vol/f",
            bytes::Bytes::from_static(b"new!!"),
            &UserMetadata::new(),
        )
        .await
        .unwrap();
    store.hold_answers(Op::Head, "vol/f");
    let lookup = {
        let fs = fs.clone();
        tokio::spawn(async move { fs.lookup(ROOT_INO, "f").await })
    };
    store.until_waiting(2).await;
    store.release_answers_of(Op::List);
    let listed = listing.await.unwrap().unwrap();
    let f = listed.iter().find(|e| e.name == "f").unwrap();
    assert_eq!(f.attr.size, 3, "the listing saw the old version");
    // The HEAD was sent after the listing began: it knows the newer version.
    store.release_answers();
    let f = lookup.await.unwrap().unwrap();
    assert_eq!(f.size, 5);
    assert_eq!(fs.getattr(f.ino).await.unwrap().size, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chmod_of_a_folder_is_not_undone_by_a_lookup_that_read_its_marker_meanwhile() {
    let store = Arc::new(FailureStore::new(InMemoryStore::new("b")));
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(Fs::new(store.clone(), config(&dir)).unwrap());
    let d = fs.mkdir(ROOT_INO, "d", 0o755, 1, 2).await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    // The chmod's PUT of the marker is slow to reach the store; a lookup past the TTL reads
    // the marker before it does, and its answer arrives before the chmod is done.
    store.stall(Op::Put, "vol/d/");
    let chmod = {
        let fs = fs.clone();
        let to_700 = SetAttr {
            mode: Some(0o700),
            ..Default::default()
        };
        tokio::spawn(async move { fs.setattr(d.ino, to_700).await })
    };
    store.until_waiting(1).await;
    store.hold_answers(Op::Head, "vol/d/");
    let lookup = {
        let fs = fs.clone();
        tokio::spawn(async move { fs.lookup(ROOT_INO, "d").await })
    };
    store.until_waiting(2).await;
    store.release_answers();
    lookup.await.unwrap().unwrap(); // (either mode: the two overlap)
    store.resume();
    assert_eq!(chmod.await.unwrap().unwrap().perm, 0o700);
    // Once the chmod returned, the mode is the one it set.
    assert_eq!(fs.getattr(d.ino).await.unwrap().perm, 0o700);
    assert_eq!(fs.lookup(ROOT_INO, "d").await.unwrap().perm, 0o700);
    let stored = store.head("vol/d/").await.unwrap().user_metadata;
    assert_eq!(&*stored["mode"], (S_IFDIR | 0o700).to_string());
}

#[tokio::test]
async fn a_chmod_of_a_file_is_not_undone_by_a_getattr_that_read_its_metadata_meanwhile() {
    let store = Arc::new(FailureStore::new(InMemoryStore::new("b")));
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(Fs::new(store.clone(), config(&dir)).unwrap());
    let (f, fh) = fs
        .create(ROOT_INO, "f", 0o644, 1, 2, IfExists::Truncate)
        .await
        .unwrap();
    fs.write(fh, 0, b"x").await.unwrap();
    fs.release(fh).await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    // A getattr past the TTL reads the old metadata; a chmod is done before its answer comes.
    store.hold_answers(Op::Head, "vol/f");
    let getattr = {
        let fs = fs.clone();
        tokio::spawn(async move { fs.getattr(f.ino).await })
    };
    store.until_waiting(1).await;
    let to_600 = SetAttr {
        mode: Some(0o600),
        ..Default::default()
    };
    assert_eq!(fs.setattr(f.ino, to_600).await.unwrap().perm, 0o600);
    store.release_answers();
    assert_eq!(getattr.await.unwrap().unwrap().perm, 0o600);
    assert_eq!(fs.getattr(f.ino).await.unwrap().perm, 0o600);
    let stored = store.head("vol/f").await.unwrap().user_metadata;
    assert_eq!(&*stored["mode"], (S_IFREG | 0o600).to_string());
}

#[tokio::test]
async fn a_failed_upload_is_eio_and_the_data_is_kept() {
    let store = Arc::new(FailureStore::new(InMemoryStore::new("b")));
    let dir = tempfile::tempdir().unwrap();
    let fs = Fs::new(store.clone(), config(&dir)).unwrap();
    store.fail_always(Op::Put, ErrorKind::AccessDenied);
    let (_, fh) = fs
        .create(ROOT_INO, "precious", 0o644, 0, 0, IfExists::Truncate)
        .await
        .unwrap();
    fs.write(fh, 0, b"do not lose me").await.unwrap();
    let err = fs.flush(fh).await.unwrap_err();
    assert_eq!(err.errno(), libc::EACCES);
    // Still readable through the mount, still on disk.
    assert_eq!(&fs.read(fh, 0, 100).await.unwrap()[..], b"do not lose me");
    assert!(fs.release(fh).await.is_err());
    let kept: Vec<_> = std::fs::read_dir(dir.path().join("recovery"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(kept.len(), 1);
    assert_eq!(std::fs::read(&kept[0]).unwrap(), b"do not lose me");
    assert!(store.inner().keys().is_empty());
}

#[tokio::test]
async fn a_crash_leaves_nothing_half_done_and_the_next_start_recovers() {
    let store = Arc::new(InMemoryStore::new("b"));
    let dir = tempfile::tempdir().unwrap();
    let crashed = Fs::new(store.clone(), config(&dir)).unwrap();
    write_file(&crashed, ROOT_INO, "safe", b"closed before the crash").await;
    let (_, fh) = crashed
        .create(ROOT_INO, "big", 0o644, 0, 0, IfExists::Truncate)
        .await
        .unwrap();
    let unacknowledged = common::conformance::pattern(5000, 9);
    crashed.write(fh, 0, &unacknowledged).await.unwrap();
    assert_eq!(store.pending_upload_count(), 1, "streaming as multipart");
    // The process dies: no release, no unmount, no destructor.
    std::mem::forget(crashed);
    assert!(store.head("vol/big").await.is_err(), "no partial object");

    let next = Fs::new(store.clone(), config(&dir)).unwrap();
    let leftovers = next.recover_leftovers().await;
    assert_eq!(leftovers.uploads.aborted, ["vol/big"]);
    assert_eq!(store.pending_upload_count(), 0);
    assert_eq!(leftovers.rescued.len(), 1);
    let rescued = &leftovers.rescued[0];
    assert!(rescued.starts_with(dir.path().join("recovery")));
    assert!(rescued
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("vol%big."));
    assert_eq!(std::fs::read(rescued).unwrap(), unacknowledged);
    assert_eq!(
        std::fs::read_dir(dir.path().join("staging"))
            .unwrap()
            .count(),
        0,
        "staging folder left empty"
    );
    assert_eq!(body(&store, "vol/safe").await, b"closed before the crash");
    // A second start finds nothing more to do.
    let again = next.recover_leftovers().await;
    assert!(again.rescued.is_empty() && again.uploads.aborted.is_empty());
}

#[tokio::test]
async fn a_read_only_volume_refuses_writes_with_erofs() {
    let store = Arc::new(InMemoryStore::new("b"));
    store
        .put(
            "vol/f",
            bytes::Bytes::from_static(b"x"),
            &UserMetadata::new(),
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fs = Fs::new(store, config(&dir).read_only(true)).unwrap();
    let f = fs.lookup(ROOT_INO, "f").await.unwrap();
    assert_eq!(
        fs.open(f.ino, true, false).await.unwrap_err().errno(),
        libc::EROFS
    );
    assert_eq!(
        fs.create(ROOT_INO, "g", 0o644, 0, 0, IfExists::Truncate)
            .await
            .unwrap_err()
            .errno(),
        libc::EROFS
    );
    assert_eq!(
        fs.mkdir(ROOT_INO, "d", 0o755, 0, 0)
            .await
            .unwrap_err()
            .errno(),
        libc::EROFS
    );
    assert_eq!(read_all(&fs, f.ino).await, b"x");
}

/// Found by the reftest: a zero-length write past the end grew the size without the bytes.
#[tokio::test]
async fn regression_zero_length_write_past_the_end_changes_nothing() {
    let (f, store) = fixture();
    store
        .put("vol/e", bytes::Bytes::new(), &UserMetadata::new())
        .await
        .unwrap();
    let attr = f.fs.lookup(ROOT_INO, "e").await.unwrap();
    let fh = f.fs.open(attr.ino, true, false).await.unwrap();
    assert_eq!(f.fs.write(fh, 1, b"").await.unwrap(), 0);
    f.fs.release(fh).await.unwrap();
    assert_eq!(f.fs.getattr(attr.ino).await.unwrap().size, 0);
    assert_eq!(store.head("vol/e").await.unwrap().size, 0);
}

#[tokio::test]
async fn writes_slightly_out_of_order_still_stream() {
    let (f, store) = fixture();
    let data: Vec<u8> = (0..8192u32).map(|i| (i % 253) as u8).collect();
    let (attr, fh) =
        f.fs.create(ROOT_INO, "ooo", 0o644, 0, 0, IfExists::Truncate)
            .await
            .unwrap();
    // Pieces of 512 bytes, each pair swapped, as parallel FUSE writes may arrive.
    for pair in (0..data.len()).step_by(1024) {
        f.fs.write(fh, (pair + 512) as u64, &data[pair + 512..pair + 1024])
            .await
            .unwrap();
        f.fs.write(fh, pair as u64, &data[pair..pair + 512])
            .await
            .unwrap();
    }
    f.fs.release(fh).await.unwrap();
    assert_eq!(body(&store, "vol/ooo").await, data);
    // Streamed: 8 parts of 1024 bytes and no upload of the whole file afterwards.
    assert_eq!(store.request_count(Op::UploadPart), 8);
    assert_eq!(store.request_count(Op::Put), 0);
    assert_eq!(read_all(&f.fs, attr.ino).await, data);
}

#[tokio::test]
async fn stat_of_known_unchanged_files_costs_a_listing_not_a_head_each() {
    let (f, store) = fixture();
    let d = f.fs.mkdir(ROOT_INO, "d", 0o755, 0, 0).await.unwrap();
    for i in 0..20 {
        write_file(&f.fs, d.ino, &format!("f{i}"), b"hi").await;
    }
    // Someone else changes one file meanwhile: it must be HEADed again.
    store
        .put(
            "vol/d/f7",
            bytes::Bytes::from_static(b"changed"),
            &UserMetadata::new(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let before = (store.request_count(Op::Head), store.request_count(Op::List));
    for i in 0..20 {
        let attr = f.fs.lookup(d.ino, &format!("f{i}")).await.unwrap();
        let expected: (u64, u32) = if i == 7 { (7, 0o644) } else { (2, 0o640) };
        assert_eq!((attr.size, attr.perm), expected, "f{i}");
    }
    let heads = store.request_count(Op::Head) - before.0;
    let lists = store.request_count(Op::List) - before.1;
    assert_eq!(heads, 1, "only the changed file is HEADed");
    assert!(lists <= 3, "{lists} listings for 20 lookups");
}

#[tokio::test]
async fn getattr_of_many_known_files_past_the_ttl_costs_a_listing_not_a_head_each() {
    // `rm` of many files: the kernel getattrs each (newfstatat) just before it unlinks it,
    // long after the TTL of the listing that brought them in.
    let (f, store) = fixture();
    let d = f.fs.mkdir(ROOT_INO, "d", 0o755, 0, 0).await.unwrap();
    let mut files = Vec::new();
    for i in 0..20 {
        files.push(write_file(&f.fs, d.ino, &format!("f{i}"), b"hi").await);
    }
    store
        .put(
            "vol/d/f15",
            bytes::Bytes::from_static(b"changed"),
            &UserMetadata::new(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let before = (store.request_count(Op::Head), store.request_count(Op::List));
    for (i, file) in files.iter().enumerate() {
        let attr = f.fs.getattr(file.ino).await.unwrap();
        let expected: (u64, u32) = if i == 15 { (7, 0o644) } else { (2, 0o640) };
        assert_eq!((attr.size, attr.perm), expected, "f{i}");
    }
    let heads = store.request_count(Op::Head) - before.0;
    let lists = store.request_count(Op::List) - before.1;
    // The first few are HEADed (one file polled is cheaper to HEAD), then one listing
    // confirms the rest, but for the file changed by another client.
    assert_eq!(
        heads,
        STALE_STATS_BEFORE_LISTING as u64 + 1,
        "{heads} HEADs"
    );
    assert_eq!(lists, 1);
    // One file stat-ed alone past the TTL is HEADed, not its folder listed.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let before = (store.request_count(Op::Head), store.request_count(Op::List));
    f.fs.getattr(files[3].ino).await.unwrap();
    assert_eq!(store.request_count(Op::Head) - before.0, 1);
    assert_eq!(store.request_count(Op::List) - before.1, 0);
}

#[tokio::test]
async fn lookup_of_files_another_client_put_costs_one_head_each() {
    // Files a plain S3 client put (or that this mount has not HEADed since it started): the
    // listing of their folder says they are objects and no folder shadows them, so each
    // lookup HEADs its object for mode and owner, and lists nothing more.
    let (f, store) = fixture();
    put_empty_files(&store, "vol/d", 20).await;
    store
        .put("vol/d/sub/x", Bytes::new(), &UserMetadata::new())
        .await
        .unwrap();
    let d = f.fs.lookup(ROOT_INO, "d").await.unwrap();
    let before = (store.request_count(Op::Head), store.request_count(Op::List));
    for i in 0..20 {
        let attr = f.fs.lookup(d.ino, &format!("f{i}")).await.unwrap();
        assert_eq!(attr.kind, Kind::File);
    }
    assert_eq!(f.fs.lookup(d.ino, "sub").await.unwrap().kind, Kind::Dir);
    assert!(matches!(
        f.fs.lookup(d.ino, "nothing").await,
        Err(FsError::NotFound)
    ));
    // One HEAD per file, and one of the folder's marker for its mode.
    assert_eq!(store.request_count(Op::Head) - before.0, 21);
    assert_eq!(store.request_count(Op::List) - before.1, 1);
}

#[tokio::test]
async fn creating_many_files_costs_no_lookup_request_per_name() {
    let (f, store) = fixture_with_ttl(Duration::from_secs(30));
    let d = f.fs.mkdir(ROOT_INO, "d", 0o755, 0, 0).await.unwrap();
    let before = (store.request_count(Op::Head), store.request_count(Op::List));
    for i in 0..50 {
        let name = format!("f{i}");
        // What the kernel does for `echo hi > f$i`: look the name up, then create it.
        assert!(matches!(
            f.fs.lookup(d.ino, &name).await,
            Err(FsError::NotFound)
        ));
        write_file(&f.fs, d.ino, &name, b"hi").await;
    }
    let heads = store.request_count(Op::Head) - before.0;
    let lists = store.request_count(Op::List) - before.1;
    assert_eq!(heads, 0, "misses are answered by the directory's listing");
    assert_eq!(lists, 0, "a folder made here is known empty");
    assert_eq!(
        store.request_count(Op::Put),
        51,
        "one PUT per file (plus the marker)"
    );
}

#[tokio::test]
async fn the_kernel_keeps_cached_pages_only_of_an_unchanged_version() {
    let (f, store) = fixture();
    store
        .put(
            "vol/f",
            bytes::Bytes::from_static(b"v1"),
            &UserMetadata::new(),
        )
        .await
        .unwrap();
    let attr = f.fs.lookup(ROOT_INO, "f").await.unwrap();
    let open = |w| f.fs.open_with_cache_hint(attr.ino, w, false);
    let (fh, keep) = open(false).await.unwrap();
    assert!(!keep, "first open: nothing cached yet");
    f.fs.release(fh).await.unwrap();
    let (fh, keep) = open(false).await.unwrap();
    assert!(keep, "same version: keep the page cache");
    f.fs.release(fh).await.unwrap();
    store
        .put(
            "vol/f",
            bytes::Bytes::from_static(b"v2"),
            &UserMetadata::new(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let (fh, keep) = open(false).await.unwrap();
    assert!(!keep, "changed remotely: drop the page cache");
    f.fs.release(fh).await.unwrap();
    let (fh, keep) = open(true).await.unwrap();
    assert!(!keep, "writable handles never keep it");
    f.fs.release(fh).await.unwrap();
    let (fh, keep) = open(false).await.unwrap();
    assert!(!keep, "nor the open after a writable one");
    f.fs.release(fh).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_read_does_not_hold_up_reads_of_other_files() {
    let store = Arc::new(FailureStore::new(InMemoryStore::new("b")));
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(Fs::new(store.clone(), config(&dir)).unwrap());
    for name in ["slow", "fast"] {
        store
            .put(
                &format!("vol/{name}"),
                bytes::Bytes::from(name.repeat(100)),
                &UserMetadata::new(),
            )
            .await
            .unwrap();
    }
    let slow = fs.lookup(ROOT_INO, "slow").await.unwrap();
    let fast = fs.lookup(ROOT_INO, "fast").await.unwrap();
    store.stall(Op::Get, "vol/slow");
    let slow_fh = fs.open(slow.ino, false, false).await.unwrap();
    let stalled = {
        let fs = fs.clone();
        tokio::spawn(async move { fs.read(slow_fh, 0, 100).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !stalled.is_finished(),
        "the slow read waits for the backend"
    );
    // Other files are read meanwhile: nothing is serialized behind the stalled request.
    let fast_fh = fs.open(fast.ino, false, false).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), fs.read(fast_fh, 0, 8)).await;
    assert_eq!(&got.expect("not blocked").unwrap()[..], b"fastfast");
    store.resume();
    assert_eq!(&stalled.await.unwrap().unwrap()[..4], b"slow");
}

/// A process taking a mount over after a crash answers for the inode numbers and handles the
/// kernel got from the dead one, and uploads what the dead one had staged but not uploaded.
#[tokio::test]
async fn a_takeover_keeps_inode_numbers_handles_and_staged_writes() {
    let store = Arc::new(InMemoryStore::new("b"));
    let dir = tempfile::tempdir().unwrap();
    let config = config(&dir).journal_inodes();
    let old = Fs::new(store.clone(), config.clone()).unwrap();
    let docs = old
        .mkdir(ROOT_INO, "docs", 0o750, 1000, 1000)
        .await
        .unwrap();
    let kept = write_file(&old, docs.ino, "kept.txt", b"uploaded before").await;
    let moved = write_file(&old, ROOT_INO, "old-name", b"renamed").await;
    old.rename(ROOT_INO, "old-name", docs.ino, "new-name")
        .await
        .unwrap();
    let gone = write_file(&old, ROOT_INO, "gone", b"x").await;
    old.unlink(ROOT_INO, "gone").await.unwrap();
    // Open, written and not closed when the process dies.
    let (open, fh) = old
        .create(docs.ino, "open.txt", 0o600, 1000, 1000, IfExists::Truncate)
        .await
        .unwrap();
    old.write(fh, 0, b"staged, ").await.unwrap();
    std::mem::forget(old); // the crash: nothing flushed, nothing cleaned up

    let new = Fs::take_over(store.clone(), config).await.unwrap();
    new.recover_leftovers().await;
    assert_eq!(new.getattr(docs.ino).await.unwrap().kind, Kind::Dir);
    assert_eq!(read_all(&new, kept.ino).await, b"uploaded before");
    assert_eq!(read_all(&new, moved.ino).await, b"renamed");
    let by_name = new.lookup(docs.ino, "new-name").await.unwrap();
    assert_eq!(by_name.ino, moved.ino, "the renamed file keeps its number");
    assert!(matches!(
        new.lookup(ROOT_INO, "gone").await,
        Err(FsError::NotFound)
    ));
    assert_ne!(
        new.lookup(docs.ino, "kept.txt").await.unwrap().ino,
        gone.ino
    );
    // The handle the kernel holds goes on where it was, and its close uploads everything.
    new.take_up_handle(fh, open.ino);
    new.write(fh, 8, b"then more").await.unwrap();
    new.release(fh).await.unwrap();
    assert_eq!(
        body(&store, "vol/docs/open.txt").await,
        b"staged, then more"
    );
    let attr = new.getattr(open.ino).await.unwrap();
    assert_eq!((attr.size, attr.perm), (17, 0o600));
    // An unknown handle of this process is still an error.
    assert!(matches!(
        new.read(u64::MAX, 0, 1).await,
        Err(FsError::BadHandle)
    ));
    assert!(
        std::fs::read_dir(dir.path().join("recovery")).is_err(),
        "the staged file was taken over, not moved to recovery"
    );
}

/// A takeover does not wait on a backend that does not answer for the staged files' modes and
/// owners: containers are waiting on the mount meanwhile.
#[tokio::test]
async fn a_takeover_does_not_wait_long_on_a_backend_that_does_not_answer() {
    let store = Arc::new(FailureStore::new(InMemoryStore::new("b")));
    let dir = tempfile::tempdir().unwrap();
    let config = config(&dir).journal_inodes();
    // Made by another client: its mode and owner are the object's, asked for at the takeover.
    store
        .put(
            "vol/open.txt",
            Bytes::from_static(b"old"),
            &UserMetadata::new(),
        )
        .await
        .unwrap();
    let old = Fs::new(store.clone(), config.clone()).unwrap();
    let open = old.lookup(ROOT_INO, "open.txt").await.unwrap();
    let fh = old.open(open.ino, true, true).await.unwrap();
    old.write(fh, 0, b"staged").await.unwrap();
    std::mem::forget(old);
    store.hold_answers(Op::Head, "vol/open.txt");

    let started = std::time::Instant::now();
    let new = tokio::time::timeout(
        Duration::from_secs(10),
        Fs::take_over(store.clone(), config),
    )
    .await
    .expect("the takeover ends while the HEAD is held")
    .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    store.release_answers();
    new.take_up_handle(fh, open.ino);
    new.release(fh).await.unwrap();
    assert_eq!(body(store.inner(), "vol/open.txt").await, b"staged");
}

/// A crash while the object's bytes were being copied into a new staging file (the first write
/// of an append) leaves that copy unfinished: the process taking over must fetch the object
/// again, not adopt the copy (it uploaded zeros in place of a log's earlier lines).
#[tokio::test]
async fn a_takeover_does_not_adopt_a_staging_file_whose_copy_was_cut_short() {
    let store = Arc::new(InMemoryStore::new("b"));
    let dir = tempfile::tempdir().unwrap();
    let config = config(&dir).journal_inodes();
    let old = Fs::new(store.clone(), config.clone()).unwrap();
    let log = write_file(&old, ROOT_INO, "log", b"line 0\n").await;
    let fh = old.open(log.ino, true, false).await.unwrap();
    let staging_dir = config.staging_dir.clone();
    std::mem::forget(old);
    // What FileState::new leaves when killed between its copy and the rename.
    std::fs::write(staging_dir.join("1-2-3.filling"), b"lin").unwrap();
    std::fs::write(staging_dir.join("1-2-3.key"), "vol/log").unwrap();

    let new = Fs::take_over(store.clone(), config).await.unwrap();
    new.recover_leftovers().await;
    new.take_up_handle(fh, log.ino);
    new.write(fh, 7, b"line 1\n").await.unwrap();
    new.release(fh).await.unwrap();
    assert_eq!(body(&store, "vol/log").await, b"line 0\nline 1\n");
    let left: Vec<_> = std::fs::read_dir(&staging_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left in the staging folder: {left:?}");
}

/// The last close removes the staging file even while another task still holds the file's
/// state (a getattr reading its size): a file left behind would be taken for a crash's leftover
/// at the next start, or taken over as a file being written.
#[tokio::test]
async fn the_last_close_leaves_no_staging_file_behind() {
    let (fx, store) = fixture();
    let (attr, fh) = fx
        .fs
        .create(ROOT_INO, "f", 0o644, 1000, 1000, IfExists::Truncate)
        .await
        .unwrap();
    fx.fs.write(fh, 0, b"data").await.unwrap();
    let held = fx
        .fs
        .file_state(attr.ino)
        .expect("a written file has a state");
    fx.fs.release(fh).await.unwrap();
    assert_eq!(body(&store, "vol/f").await, b"data");
    let left: Vec<_> = std::fs::read_dir(&fx.fs.config().staging_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    drop(held);
}

/// The inode table holds what the kernel holds: an inode goes when the kernel forgets its last
/// entry (not while a file is open), and inodes that only a listing brought in go once stale.
#[tokio::test]
async fn forgotten_and_stale_listed_inodes_leave_the_table() {
    let (fx, store) = fixture();
    let fs = &fx.fs;
    write_file(fs, ROOT_INO, "a", b"x").await;
    let a = fs.lookup(ROOT_INO, "a").await.unwrap();
    fs.entry_given(ROOT_INO, "a", &a);
    fs.entry_given(ROOT_INO, "a", &a);
    fs.forget(a.ino, 1);
    assert_eq!(fs.getattr(a.ino).await.unwrap().size, 1, "one entry left");
    fs.forget(a.ino, 1);
    assert!(matches!(fs.getattr(a.ino).await, Err(FsError::NotFound)));
    // An entry given while the kernel's FORGET of an earlier one was dropping it: back under
    // the same number.
    fs.entry_given(ROOT_INO, "a", &a);
    assert_eq!(fs.getattr(a.ino).await.unwrap().size, 1);
    fs.forget(a.ino, 1);
    // A new lookup after a forget gets a new number; an open file keeps its inode.
    let again = fs.lookup(ROOT_INO, "a").await.unwrap();
    assert_ne!(again.ino, a.ino);
    fs.entry_given(ROOT_INO, "a", &again);
    let fh = fs.open(again.ino, false, false).await.unwrap();
    fs.forget(again.ino, 1);
    assert_eq!(fs.read(fh, 0, 10).await.unwrap(), b"x".as_slice());
    fs.release(fh).await.unwrap();

    // 5,000 names seen in a listing and never given to the kernel: swept once stale.
    put_empty_files(&store, "vol/big", 5000).await;
    tokio::time::sleep(Duration::from_millis(250)).await; // the root's listing is stale
    let big = fs.lookup(ROOT_INO, "big").await.unwrap();
    fs.entry_given(ROOT_INO, "big", &big);
    assert_eq!(fs.readdir(big.ino).await.unwrap().len(), 5000);
    assert!(fs.inode_count() > 5000);
    tokio::time::sleep(Duration::from_millis(250)).await; // past the 200 ms TTL
    fs.readdir(ROOT_INO).await.unwrap();
    assert!(fs.inode_count() < 10, "{} inodes", fs.inode_count());
    assert_eq!(
        fs.readdir(big.ino).await.unwrap().len(),
        5000,
        "listed again"
    );
}

/// The inode journal stays about the size of the table: names that come and go are rewritten
/// away once the records outnumber the inodes four to one.
#[tokio::test]
async fn the_inode_journal_is_rewritten_when_names_come_and_go() {
    let store = Arc::new(InMemoryStore::new("b"));
    let dir = tempfile::tempdir().unwrap();
    let config = config(&dir).journal_inodes();
    let journal = config.inode_journal.clone().unwrap();
    let fs = Fs::new(store.clone(), config).unwrap();
    put_empty_files(&store, "vol/big", 6000).await;
    let big = fs.lookup(ROOT_INO, "big").await.unwrap();
    fs.entry_given(ROOT_INO, "big", &big);
    fs.readdir(big.ino).await.unwrap(); // 6,000 new inodes
    tokio::time::sleep(Duration::from_millis(250)).await;
    fs.readdir(ROOT_INO).await.unwrap(); // the sweep forgets them: 12,000 records in all
                                         // Rewritten once during the sweep; the forgets after that are appended.
    let lines = std::fs::read_to_string(&journal).unwrap().lines().count();
    assert!(lines < 3000, "{lines} lines for 12,000 records");
    let (_, inodes) = journal::InodeJournal::take_over(&journal).unwrap();
    assert_eq!(inodes.len(), 1, "only `big`: {inodes:?}");
    assert_eq!(inodes[0].name, "big");
}

/// A file whose inode went (the kernel forgot it) is confirmed by the next listing without a
/// HEAD when its ETag is unchanged: `stat` of many files after the kernel dropped its caches
/// costs listings, not a request per file.
#[tokio::test]
async fn a_forgotten_file_is_confirmed_by_a_listing_without_a_head() {
    let (fx, store) = fixture();
    let fs = &fx.fs;
    let (created, fh) = fs
        .create(ROOT_INO, "a", 0o600, 7, 8, IfExists::Truncate)
        .await
        .unwrap();
    fs.entry_given(ROOT_INO, "a", &created);
    fs.write(fh, 0, b"xyz").await.unwrap();
    fs.release(fh).await.unwrap();
    fs.forget(created.ino, 1);
    assert!(matches!(
        fs.getattr(created.ino).await,
        Err(FsError::NotFound)
    ));
    tokio::time::sleep(Duration::from_millis(250)).await; // past the TTL: the root is listed
    let heads = store.request_count(Op::Head);
    let again = fs.lookup(ROOT_INO, "a").await.unwrap();
    assert_eq!(store.request_count(Op::Head), heads, "no HEAD");
    assert_eq!(
        (again.size, again.perm, again.uid, again.gid),
        (3, 0o600, 7, 8)
    );
}

#[tokio::test]
async fn files_bigger_than_one_copy_request_takes_are_renamed_and_chmodded_by_parts() {
    // S3 copies at most 5 GiB in one request; this store at most 4 KiB.
    let store = Arc::new(InMemoryStore::new("b").with_max_copy_size(4096));
    let dir = tempfile::tempdir().unwrap();
    let fs = Fs::new(store.clone(), config(&dir)).unwrap();
    let data = common::conformance::pattern(10_000, 5);
    let d = fs.mkdir(ROOT_INO, "d", 0o755, 1000, 1000).await.unwrap();
    let attr = write_file(&fs, d.ino, "big", &data).await;
    fs.setattr(
        attr.ino,
        SetAttr {
            mode: Some(0o600),
            ..SetAttr::default()
        },
    )
    .await
    .unwrap();
    fs.rename(d.ino, "big", d.ino, "moved").await.unwrap();
    fs.rename(ROOT_INO, "d", ROOT_INO, "e").await.unwrap();
    assert_eq!(body(&store, "vol/e/moved").await, data);
    let meta = store.head("vol/e/moved").await.unwrap().user_metadata;
    assert_eq!(meta["mode"], (S_IFREG | 0o600).to_string());
    assert!(store.head("vol/d/big").await.is_err());
    assert!(store.head("vol/d/moved").await.is_err());
    // chmod, rename of the file, rename of its folder: three copies of three parts each.
    assert_eq!(store.request_count(Op::UploadPartCopy), 9);
    assert_eq!(store.pending_upload_count(), 0);
}

#[tokio::test]
async fn an_append_to_a_big_file_sends_the_new_bytes_and_the_store_copies_the_rest() {
    let (f, store) = fixture();
    let mut want = common::conformance::pattern(10_000, 8).to_vec();
    let attr = write_file(&f.fs, ROOT_INO, "log", &want).await;
    for line in [&b"first line\n"[..], b"second line\n"] {
        let (copies, parts, gets) = (
            store.request_count(Op::UploadPartCopy),
            store.request_count(Op::UploadPart),
            store.request_count(Op::Get),
        );
        let fh = f.fs.open(attr.ino, true, false).await.unwrap();
        f.fs.write(fh, want.len() as u64, line).await.unwrap();
        f.fs.release(fh).await.unwrap();
        want.extend_from_slice(line);
        assert_eq!(body(&store, "vol/log").await, want);
        // The 10,000 bytes before the line are copied by the store; only the line is sent,
        // and none of them is fetched.
        assert_eq!(store.request_count(Op::UploadPartCopy), copies + 1);
        assert_eq!(store.request_count(Op::UploadPart), parts + 1);
        assert_eq!(
            store.request_count(Op::Get),
            gets + 1,
            "only body() read it"
        );
    }
    // Written, read (so all its bytes are staged), and replaced by another client before the
    // close: nothing is copied from the other version; the staged bytes are uploaded whole
    // (the last close wins).
    let fh = f.fs.open(attr.ino, true, false).await.unwrap();
    f.fs.write(fh, want.len() as u64, b"read back\n")
        .await
        .unwrap();
    assert_eq!(&f.fs.read(fh, 0, 3).await.unwrap()[..], &want[..3]);
    want.extend_from_slice(b"read back\n");
    store
        .put("vol/log", Bytes::from_static(b"else"), &UserMetadata::new())
        .await
        .unwrap();
    f.fs.release(fh).await.unwrap();
    assert_eq!(body(&store, "vol/log").await, want);
    // Replaced by another client between the first write and the close: its bytes are not
    // the ones this file started from, and those are gone. The close fails (ESTALE), the
    // other client's object stays, and what was written here is kept for recovery, with a
    // note saying which version its first bytes were.
    let fh = f.fs.open(attr.ino, true, false).await.unwrap();
    f.fs.write(fh, want.len() as u64, b"third\n").await.unwrap();
    store
        .put(
            "vol/log",
            Bytes::from_static(b"other"),
            &UserMetadata::new(),
        )
        .await
        .unwrap();
    let err = f.fs.release(fh).await.unwrap_err();
    assert_eq!(err.errno(), libc::ESTALE, "{err}");
    assert_eq!(body(&store, "vol/log").await, b"other");
    assert_eq!(store.pending_upload_count(), 0);
    let recovery = f.fs.config().recovery_dir.clone();
    let mut kept: Vec<_> = std::fs::read_dir(&recovery)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    kept.sort();
    assert_eq!(kept.len(), 2, "{kept:?}");
    let bytes = std::fs::read(&kept[0]).unwrap();
    assert_eq!(&bytes[want.len()..], b"third\n");
    let note = std::fs::read_to_string(&kept[1]).unwrap();
    assert!(
        kept[1].to_string_lossy().ends_with(".base")
            && note.ends_with(&format!("\n{}\nvol/log\n", want.len())),
        "{note}"
    );
}

#[tokio::test]
async fn reads_writes_and_truncates_of_a_big_file_fetch_its_bytes_only_when_needed() {
    let (f, store) = fixture();
    let data = common::conformance::pattern(10_000, 4).to_vec();
    let attr = write_file(&f.fs, ROOT_INO, "db", &data).await;
    let gets = || store.request_count(Op::Get);
    // Truncated to 6,000 and written past the end: the 6,000 stay in the store.
    let before = gets();
    let fh = f.fs.open(attr.ino, true, false).await.unwrap();
    f.fs.setattr(
        attr.ino,
        SetAttr {
            size: Some(6000),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    f.fs.write(fh, 7000, b"tail").await.unwrap();
    assert_eq!(gets(), before);
    // A read among them fetches them, once.
    assert_eq!(&f.fs.read(fh, 100, 4).await.unwrap()[..], &data[100..104]);
    assert_eq!(gets(), before + 1);
    assert_eq!(
        &f.fs.read(fh, 5998, 4).await.unwrap()[..],
        &[data[5998], data[5999], 0, 0]
    );
    f.fs.write(fh, 10, b"edit").await.unwrap();
    f.fs.release(fh).await.unwrap();
    let mut want = data[..6000].to_vec();
    want.resize(7000, 0);
    want.extend_from_slice(b"tail");
    want[10..14].copy_from_slice(b"edit");
    assert_eq!(body(&store, "vol/db").await, want);
    assert_eq!(gets(), before + 2);

    // A write among them fetches them first.
    let fh = f.fs.open(attr.ino, true, false).await.unwrap();
    f.fs.write(fh, 5000, b"XY").await.unwrap();
    f.fs.release(fh).await.unwrap();
    want[5000..5002].copy_from_slice(b"XY");
    assert_eq!(body(&store, "vol/db").await, want);

    // Renamed while open and appended: its bytes come into the staging file first (the old
    // name's object goes), pinned to the version it started from.
    let fh = f.fs.open(attr.ino, true, false).await.unwrap();
    f.fs.write(fh, want.len() as u64, b"+1").await.unwrap();
    let before = gets();
    f.fs.rename(ROOT_INO, "db", ROOT_INO, "db2").await.unwrap();
    assert_eq!(gets(), before + 1);
    f.fs.write(fh, want.len() as u64 + 2, b"+2").await.unwrap();
    f.fs.release(fh).await.unwrap();
    want.extend_from_slice(b"+1+2");
    assert_eq!(body(&store, "vol/db2").await, want);

    // Unlinked while open: still readable whole.
    let fh = f.fs.open(attr.ino, true, false).await.unwrap();
    f.fs.write(fh, want.len() as u64, b"!").await.unwrap();
    f.fs.unlink(ROOT_INO, "db2").await.unwrap();
    assert_eq!(&f.fs.read(fh, 0, 4).await.unwrap()[..], &want[..4]);
    f.fs.release(fh).await.unwrap();
    assert!(store.head("vol/db2").await.is_err());
}

#[tokio::test]
async fn open_big_files_renamed_over_or_moved_with_their_folder_keep_their_bytes() {
    let (f, store) = fixture();
    let d = f.fs.mkdir(ROOT_INO, "d", 0o755, 0, 0).await.unwrap();
    let mut log = common::conformance::pattern(10_000, 6).to_vec();
    let log_attr = write_file(&f.fs, d.ino, "log", &log).await;
    let old = common::conformance::pattern(9_000, 7).to_vec();
    let old_attr = write_file(&f.fs, ROOT_INO, "old", &old).await;
    // A file being appended moves with its folder, and its close goes to the new name.
    let fh = f.fs.open(log_attr.ino, true, false).await.unwrap();
    f.fs.write(fh, log.len() as u64, b"+1").await.unwrap();
    f.fs.rename(ROOT_INO, "d", ROOT_INO, "e").await.unwrap();
    f.fs.write(fh, log.len() as u64 + 2, b"+2").await.unwrap();
    f.fs.release(fh).await.unwrap();
    log.extend_from_slice(b"+1+2");
    assert_eq!(body(&store, "vol/e/log").await, log);
    assert!(store.head("vol/d/log").await.is_err());
    // A file being appended, replaced by a rename onto its name: still readable whole by its
    // holder, and its close does not overwrite the file renamed in.
    let fh = f.fs.open(old_attr.ino, true, false).await.unwrap();
    f.fs.write(fh, old.len() as u64, b"late").await.unwrap();
    write_file(&f.fs, ROOT_INO, "new", b"new").await;
    f.fs.rename(ROOT_INO, "new", ROOT_INO, "old").await.unwrap();
    assert_eq!(&f.fs.read(fh, 0, 4).await.unwrap()[..], &old[..4]);
    f.fs.release(fh).await.unwrap();
    assert_eq!(body(&store, "vol/old").await, b"new");
}

#[tokio::test]
async fn files_open_but_unwritten_outlive_an_unlink_or_a_rename_onto_them() {
    let (f, store) = fixture();
    // The fixture's part size is 1 KiB: 9,000 bytes stay in the store until needed.
    for (size, replace) in [(100, false), (100, true), (9_000, false), (9_000, true)] {
        let data = common::conformance::pattern(size, 3).to_vec();
        let attr = write_file(&f.fs, ROOT_INO, "f", &data).await;
        let reader = f.fs.open(attr.ino, false, false).await.unwrap();
        let writer = f.fs.open(attr.ino, true, false).await.unwrap();
        if replace {
            write_file(&f.fs, ROOT_INO, "new", b"new").await;
            f.fs.rename(ROOT_INO, "new", ROOT_INO, "f").await.unwrap();
        } else {
            f.fs.unlink(ROOT_INO, "f").await.unwrap();
        }
        let what = format!("size {size}, replaced {replace}");
        // Both descriptors still read the bytes they opened, and the writer's bytes go into
        // that file, not into the store.
        assert_eq!(
            &f.fs.read(reader, 10, 20).await.unwrap()[..],
            &data[10..30],
            "{what}"
        );
        f.fs.write(writer, 5, b"zz").await.unwrap();
        assert_eq!(
            &f.fs.read(reader, 4, 4).await.unwrap()[..],
            &[data[4], b'z', b'z', data[7]],
            "{what}"
        );
        assert_eq!(
            f.fs.getattr(attr.ino).await.unwrap().size,
            size as u64,
            "{what}"
        );
        // Gone from its folder all the same (or there once: the file moved in).
        let names: Vec<String> =
            f.fs.readdir(ROOT_INO)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.name)
                .collect();
        assert_eq!(names, if replace { vec!["f"] } else { vec![] }, "{what}");
        f.fs.fsync(writer).await.unwrap();
        f.fs.release(writer).await.unwrap();
        f.fs.release(reader).await.unwrap();
        if replace {
            assert_eq!(body(&store, "vol/f").await, b"new", "{what}");
            f.fs.unlink(ROOT_INO, "f").await.unwrap();
        } else {
            assert!(store.head("vol/f").await.is_err(), "{what}");
        }
    }
    // A folder whose only file was unlinked while open is empty.
    let d = f.fs.mkdir(ROOT_INO, "d", 0o755, 0, 0).await.unwrap();
    let attr = write_file(&f.fs, d.ino, "g", b"g").await;
    let fh = f.fs.open(attr.ino, false, false).await.unwrap();
    f.fs.unlink(d.ino, "g").await.unwrap();
    f.fs.rmdir(ROOT_INO, "d").await.unwrap();
    assert_eq!(&f.fs.read(fh, 0, 10).await.unwrap()[..], b"g");
    f.fs.release(fh).await.unwrap();
    assert!(store.keys().is_empty(), "{:?}", store.keys());
}

/// Files in `dir` (the staging folder): what the mount keeps on disk for written files.
fn staged(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test]
async fn a_file_open_for_reading_is_read_on_under_its_new_name_after_a_rename() {
    let (f, _store) = fixture();
    let d = f.fs.mkdir(ROOT_INO, "d", 0o755, 0, 0).await.unwrap();
    let data = common::conformance::pattern(5 << 20, 4);
    let attr = write_file(&f.fs, d.ino, "f", &data).await;
    let fh = f.fs.open(attr.ino, false, false).await.unwrap();
    assert_eq!(&f.fs.read(fh, 0, 10).await.unwrap()[..], &data[..10]);
    // Moved, then its folder too: reads of bytes not cached yet find them at the new name.
    f.fs.rename(d.ino, "f", d.ino, "g").await.unwrap();
    let at = 3 << 20;
    assert_eq!(
        &f.fs.read(fh, at, 10).await.unwrap()[..],
        &data[at as usize..at as usize + 10]
    );
    f.fs.rename(ROOT_INO, "d", ROOT_INO, "e").await.unwrap();
    let at = (4 << 20) + 7;
    assert_eq!(
        &f.fs.read(fh, at, 10).await.unwrap()[..],
        &data[at as usize..at as usize + 10]
    );
    f.fs.release(fh).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_older_than_changes_made_meanwhile_does_not_undo_them() {
    let store = Arc::new(FailureStore::new(InMemoryStore::new("b")));
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(Fs::new(store.clone(), config(&dir)).unwrap());
    let d = fs.mkdir(ROOT_INO, "d", 0o755, 0, 0).await.unwrap();
    let f = write_file(&*fs, d.ino, "f", b"one").await;
    write_file(&*fs, d.ino, "gone", b"x").await;
    // `ls` lists d; the store answers, and the answer arrives after the changes below.
    store.hold_answers(Op::List, "vol/d/");
    let listed_at = Instant::now();
    let listing = {
        let fs = fs.clone();
        tokio::spawn(async move { fs.readdir(d.ino).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    fs.unlink(d.ino, "gone").await.unwrap();
    write_file(&*fs, d.ino, "f", b"three").await;
    let made = write_file(&*fs, d.ino, "new", b"new").await;
    store.release_answers();
    listing.await.unwrap().unwrap();
    // What the mount did since the listing began stands: for a lookup, a stat, an `ls -l`
    // (the opendir's listing as handed out entry by entry), and the next lookups of names.
    assert!(matches!(
        fs.lookup(d.ino, "gone").await,
        Err(FsError::NotFound)
    ));
    assert_eq!(fs.getattr(f.ino).await.unwrap().size, 5);
    assert_eq!(fs.lookup(d.ino, "f").await.unwrap().size, 5);
    assert_eq!(fs.lookup(d.ino, "new").await.unwrap().ino, made.ino);
    let stale = DirEntry {
        name: "gone".into(),
        attr: f.clone(),
    };
    assert_eq!(fs.entry_now(d.ino, &stale, listed_at), None);
    let old_f = DirEntry {
        name: "f".into(),
        attr: f.clone(),
    };
    assert_eq!(
        fs.entry_now(d.ino, &old_f, listed_at).map(|a| a.size),
        Some(5)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_close_during_the_removal_of_an_open_file_leaves_nothing_staged() {
    let store = Arc::new(FailureStore::new(InMemoryStore::new("b")));
    let dir = tempfile::tempdir().unwrap();
    let config = config(&dir);
    let staging_dir = config.staging_dir.clone();
    let fs = Arc::new(Fs::new(store.clone(), config).unwrap());
    let attr = write_file(&*fs, ROOT_INO, "f", b"some bytes").await;
    let fh = fs.open(attr.ino, false, false).await.unwrap();
    // The removal fetches the bytes for the open descriptor; it closes meanwhile.
    store.stall(Op::Get, "vol/f");
    let unlink = {
        let fs = fs.clone();
        tokio::spawn(async move { fs.unlink(ROOT_INO, "f").await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!unlink.is_finished(), "the removal waits for the bytes");
    fs.release(fh).await.unwrap();
    store.resume();
    unlink.await.unwrap().unwrap();
    assert!(store.head("vol/f").await.is_err());
    assert_eq!(staged(&staging_dir), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_renamed_onto_an_open_one_while_their_folder_is_renamed_does_not_deadlock() {
    let store = Arc::new(FailureStore::new(InMemoryStore::new("b")));
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(Fs::new(store.clone(), config(&dir)).unwrap());
    let a = fs.mkdir(ROOT_INO, "a", 0o755, 0, 0).await.unwrap();
    // x (the lower inode) is being written; y, big enough to stay in the store, is open.
    let (x, x_fh) = fs
        .create(a.ino, "x", 0o644, 0, 0, IfExists::Truncate)
        .await
        .unwrap();
    fs.write(x_fh, 0, b"x bytes").await.unwrap();
    let y = write_file(&*fs, a.ino, "y", &common::conformance::pattern(3000, 2)).await;
    assert!(x.ino < y.ino);
    let y_fh = fs.open(y.ino, false, false).await.unwrap();
    // `mv a/x a/y` fetches y's bytes for its open descriptor (stalled here), holding the
    // states of both files; `mv a b` wants them too, and must wait, not deadlock.
    store.stall(Op::Get, "vol/a/y");
    let file_move = {
        let fs = fs.clone();
        tokio::spawn(async move { fs.rename(a.ino, "x", a.ino, "y").await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let folder_move = {
        let fs = fs.clone();
        tokio::spawn(async move { fs.rename(ROOT_INO, "a", ROOT_INO, "b").await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    store.resume();
    let both = async { (file_move.await, folder_move.await) };
    let (file_move, folder_move) = tokio::time::timeout(Duration::from_secs(10), both)
        .await
        .expect("the two renames deadlocked");
    file_move.unwrap().unwrap();
    folder_move.unwrap().unwrap();
    fs.release(x_fh).await.unwrap();
    assert_eq!(body(store.inner(), "vol/b/y").await, b"x bytes");
    assert_eq!(
        &fs.read(y_fh, 0, 4).await.unwrap()[..],
        &common::conformance::pattern(3000, 2)[..4]
    );
    fs.release(y_fh).await.unwrap();
}

#[tokio::test]
async fn a_file_removed_while_open_after_its_version_was_replaced_never_writes_over_its_old_name() {
    let (f, store) = fixture();
    // Small: its bytes would be fetched at the removal, but another client replaced them.
    let attr = write_file(&f.fs, ROOT_INO, "f", b"old bytes").await;
    let fh = f.fs.open(attr.ino, true, false).await.unwrap();
    store
        .put(
            "vol/f",
            Bytes::from_static(b"other client"),
            &UserMetadata::new(),
        )
        .await
        .unwrap();
    write_file(&f.fs, ROOT_INO, "new", b"new").await;
    f.fs.rename(ROOT_INO, "new", ROOT_INO, "f").await.unwrap();
    // Past the attribute TTL, the old name is another file's: nothing through the old
    // descriptor may read or write it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = f.fs.write(fh, 0, b"zz").await.unwrap_err();
    assert_eq!(err.errno(), libc::ESTALE, "{err}");
    let err = f.fs.read(fh, 0, 10).await.unwrap_err();
    assert_eq!(err.errno(), libc::ESTALE, "{err}");
    f.fs.release(fh).await.unwrap();
    assert_eq!(body(&store, "vol/f").await, b"new");
    assert_eq!(
        f.fs.getattr(f.fs.lookup(ROOT_INO, "f").await.unwrap().ino)
            .await
            .unwrap()
            .size,
        3
    );
}

#[tokio::test]
async fn a_folder_renamed_while_a_file_removed_from_it_is_still_open_moves() {
    let (f, store) = fixture();
    let d = f.fs.mkdir(ROOT_INO, "d", 0o755, 0, 0).await.unwrap();
    // Big (over the fixture's 1 KiB part): its bytes stay in the store until needed, and
    // another client replaces them before the unlink could fetch them.
    let attr = write_file(&f.fs, d.ino, "big", &common::conformance::pattern(3000, 1)).await;
    write_file(&f.fs, d.ino, "other", b"other").await;
    let fh = f.fs.open(attr.ino, false, false).await.unwrap();
    store
        .put(
            "vol/d/big",
            Bytes::from_static(b"replaced"),
            &UserMetadata::new(),
        )
        .await
        .unwrap();
    f.fs.unlink(d.ino, "big").await.unwrap();
    // The removed file's bytes are gone, which is no reason to refuse moving the folder.
    f.fs.rename(ROOT_INO, "d", ROOT_INO, "e").await.unwrap();
    assert_eq!(body(&store, "vol/e/other").await, b"other");
    let err = f.fs.read(fh, 0, 10).await.unwrap_err();
    assert_eq!(err.errno(), libc::ESTALE, "{err}");
    f.fs.release(fh).await.unwrap();
}

#[tokio::test]
async fn a_failed_rename_onto_an_open_file_leaves_it_written_as_before() {
    let store = Arc::new(FailureStore::new(InMemoryStore::new("b")));
    let dir = tempfile::tempdir().unwrap();
    let fs = Fs::new(store.clone(), config(&dir)).unwrap();
    let attr = write_file(&fs, ROOT_INO, "held", b"held").await;
    write_file(&fs, ROOT_INO, "other", b"other").await;
    let fh = fs.open(attr.ino, true, false).await.unwrap();
    fs.write(fh, 4, b", and more").await.unwrap();
    store.fail_next(Op::Copy, ErrorKind::ServerError, 10);
    assert!(fs
        .rename(ROOT_INO, "other", ROOT_INO, "held")
        .await
        .is_err());
    store.heal();
    fs.release(fh).await.unwrap();
    assert_eq!(body(store.inner(), "vol/held").await, b"held, and more");

    // An unlink of an open file being appended whose bytes the store cannot give now fails,
    // and removes nothing: its holder could never read them again.
    let big = common::conformance::pattern(10_000, 1).to_vec();
    let attr = write_file(&fs, ROOT_INO, "big", &big).await;
    let fh = fs.open(attr.ino, true, false).await.unwrap();
    fs.write(fh, big.len() as u64, b"+").await.unwrap();
    store.fail_next(Op::Get, ErrorKind::ServerError, 10);
    assert_eq!(
        fs.unlink(ROOT_INO, "big").await.unwrap_err().errno(),
        libc::EIO
    );
    store.heal();
    assert!(store.inner().head("vol/big").await.is_ok());
    fs.unlink(ROOT_INO, "big").await.unwrap();
    assert_eq!(&fs.read(fh, 0, 4).await.unwrap()[..], &big[..4]);
    fs.release(fh).await.unwrap();
    assert!(store.inner().head("vol/big").await.is_err());
}

#[tokio::test]
async fn a_crash_during_an_append_to_a_big_file_leaves_it_whole_in_recovery() {
    let store = Arc::new(InMemoryStore::new("b"));
    let dir = tempfile::tempdir().unwrap();
    let crashed = Fs::new(store.clone(), config(&dir)).unwrap();
    let mut want = common::conformance::pattern(10_000, 2).to_vec();
    let attr = write_file(&crashed, ROOT_INO, "log", &want).await;
    let fh = crashed.open(attr.ino, true, false).await.unwrap();
    crashed
        .write(fh, want.len() as u64, b"unsaved")
        .await
        .unwrap();
    std::mem::forget(crashed);
    // Started again without a take-over: the staged line goes to the recovery folder, with
    // the first bytes filled in from the version they were in.
    let next = Fs::new(store.clone(), config(&dir)).unwrap();
    let leftovers = next.recover_leftovers().await;
    assert_eq!(leftovers.rescued.len(), 1);
    leftovers.filling.expect("a file to fill").await.unwrap();
    want.extend_from_slice(b"unsaved");
    assert_eq!(std::fs::read(&leftovers.rescued[0]).unwrap(), want);
    let notes = std::fs::read_dir(dir.path().join("recovery"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .to_string_lossy()
                .ends_with(".base")
        })
        .count();
    assert_eq!(notes, 0, "the note goes once the bytes are in");
}

#[tokio::test]
async fn a_takeover_does_not_adopt_a_staging_file_with_a_damaged_note() {
    let store = Arc::new(InMemoryStore::new("b"));
    let dir = tempfile::tempdir().unwrap();
    let config = config(&dir).journal_inodes();
    let old = Fs::new(store.clone(), config.clone()).unwrap();
    let want = common::conformance::pattern(10_000, 3).to_vec();
    let log = write_file(&old, ROOT_INO, "log", &want).await;
    let fh = old.open(log.ino, true, false).await.unwrap();
    old.write(fh, want.len() as u64, b"line").await.unwrap();
    let staging_dir = config.staging_dir.clone();
    std::mem::forget(old);
    // Killed while it rewrote the note (were it written in place).
    let note = std::fs::read_dir(&staging_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "base"))
        .expect("a note beside the staging file");
    std::fs::write(&note, "").unwrap();

    let new = Fs::take_over(store.clone(), config).await.unwrap();
    let leftovers = new.recover_leftovers().await;
    assert_eq!(leftovers.rescued.len(), 1, "to recovery, not taken over");
    new.take_up_handle(fh, log.ino);
    new.write(fh, want.len() as u64, b"line").await.unwrap();
    new.release(fh).await.unwrap();
    let mut stored = want.clone();
    stored.extend_from_slice(b"line");
    assert_eq!(body(&store, "vol/log").await, stored, "never zeros");
}

#[tokio::test]
async fn a_takeover_of_an_append_to_a_big_file_keeps_its_bytes_in_the_store() {
    let store = Arc::new(InMemoryStore::new("b"));
    let dir = tempfile::tempdir().unwrap();
    let config = config(&dir).journal_inodes();
    let old = Fs::new(store.clone(), config.clone()).unwrap();
    let mut want = common::conformance::pattern(10_000, 5).to_vec();
    let log = write_file(&old, ROOT_INO, "log", &want).await;
    let fh = old.open(log.ino, true, false).await.unwrap();
    old.write(fh, want.len() as u64, b"line 1\n").await.unwrap();
    std::mem::forget(old); // the crash

    let new = Fs::take_over(store.clone(), config).await.unwrap();
    new.recover_leftovers().await;
    new.take_up_handle(fh, log.ino);
    new.write(fh, want.len() as u64 + 7, b"line 2\n")
        .await
        .unwrap();
    let gets = store.request_count(Op::Get);
    new.release(fh).await.unwrap();
    want.extend_from_slice(b"line 1\nline 2\n");
    assert_eq!(body(&store, "vol/log").await, want);
    assert_eq!(
        store.request_count(Op::Get),
        gets + 1,
        "only body() read it"
    );
    assert!(std::fs::read_dir(dir.path().join("recovery")).is_err());
}

/// Start `mv a b`, and return once it has closed the rename gate on both names.
async fn move_a_to_b_in_the_background<S: ObjectStore>(
    fs: &Arc<Fs<S>>,
) -> tokio::task::JoinHandle<FsResult<()>> {
    let rename = {
        let fs = fs.clone();
        tokio::spawn(async move { fs.rename(ROOT_INO, "a", ROOT_INO, "b").await })
    };
    while !fs.gate.is_closed() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    rename
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_write_during_the_rename_of_its_folder_lands_under_the_new_name() {
    let store = Arc::new(FailureStore::new(InMemoryStore::new("b")));
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(Fs::new(store.clone(), config(&dir)).unwrap());
    let a = fs.mkdir(ROOT_INO, "a", 0o755, 0, 0).await.unwrap();
    let x = write_file(&*fs, a.ino, "x", b"old bytes").await;
    // Open, not written yet: its first write fetches its bytes (stalled here) for a write
    // state whose object key comes from its path.
    let fh = fs.open(x.ino, true, false).await.unwrap();
    store.stall(Op::Get, "vol/a/x");
    let write = {
        let fs = fs.clone();
        tokio::spawn(async move { fs.write(fh, 0, b"NEW").await })
    };
    store.until_waiting(1).await;
    let rename = move_a_to_b_in_the_background(&fs).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !rename.is_finished(),
        "the rename waits for the write in flight below it"
    );
    store.resume();
    assert_eq!(write.await.unwrap().unwrap(), 3);
    rename.await.unwrap().unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(body(store.inner(), "vol/b/x").await, b"NEW bytes");
    assert!(
        store.head("vol/a/x").await.is_err(),
        "the old name came back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_answered_after_the_rename_of_its_folder_finds_the_moved_file() {
    let store = Arc::new(FailureStore::new(InMemoryStore::new("b")));
    let dir = tempfile::tempdir().unwrap();
    let writer = Fs::new(store.clone(), config(&dir)).unwrap();
    let a = writer.mkdir(ROOT_INO, "a", 0o755, 0, 0).await.unwrap();
    write_file(&writer, a.ino, "y", b"y bytes").await;
    // A mount that has not seen y yet: its lookup HEADs it, and the answer comes late.
    let fs = Arc::new(Fs::new(store.clone(), config(&dir)).unwrap());
    let a = fs.lookup(ROOT_INO, "a").await.unwrap();
    store.hold_answers(Op::Head, "vol/a/y");
    let lookup = {
        let fs = fs.clone();
        tokio::spawn(async move { fs.lookup(a.ino, "y").await })
    };
    store.until_waiting(1).await;
    let rename = move_a_to_b_in_the_background(&fs).await;
    // (Without the gate, the rename would be done now, before the HEAD's answer.)
    tokio::time::sleep(Duration::from_millis(50)).await;
    store.release_answers();
    let y = lookup.await.unwrap().unwrap();
    rename.await.unwrap().unwrap();
    // The inode the kernel got for a/y is b/y now: readable, and where a stat looks.
    assert_eq!(read_all(&*fs, y.ino).await, b"y bytes");
    let b = fs.lookup(ROOT_INO, "b").await.unwrap();
    assert_eq!(fs.lookup(b.ino, "y").await.unwrap().ino, y.ino);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_open_for_reading_reads_on_while_its_folder_is_moved() {
    let store = Arc::new(FailureStore::new(InMemoryStore::new("b")));
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(Fs::new(store.clone(), config(&dir)).unwrap());
    let a = fs.mkdir(ROOT_INO, "a", 0o755, 0, 0).await.unwrap();
    let bytes = common::conformance::pattern(3 << 20, 7);
    let x = write_file(&*fs, a.ino, "x", &bytes).await;
    let fh = fs.open(x.ino, false, false).await.unwrap();
    // The rename has deleted a/x and not yet recorded b/x when the read comes.
    store.hold_answers(Op::Delete, "vol/a/x");
    let rename = move_a_to_b_in_the_background(&fs).await;
    store.until_waiting(1).await;
    let read = {
        let fs = fs.clone();
        tokio::spawn(async move { fs.read(fh, 2 << 20, 4096).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    store.release_answers();
    rename.await.unwrap().unwrap();
    assert_eq!(
        &read.await.unwrap().unwrap()[..],
        &bytes[2 << 20..(2 << 20) + 4096]
    );
    fs.release(fh).await.unwrap();
}

#[tokio::test]
async fn names_found_missing_below_a_folder_are_found_once_a_folder_is_moved_there() {
    let store = Arc::new(InMemoryStore::new("b"));
    let dir = tempfile::tempdir().unwrap();
    // Attributes never trusted, missing names for long: only the negative entry answers.
    let config = config(&dir).ttls(Duration::ZERO, Duration::from_secs(60));
    let fs = Fs::new(store.clone(), config).unwrap();
    let a = fs.mkdir(ROOT_INO, "a", 0o755, 0, 0).await.unwrap();
    let b = fs.mkdir(ROOT_INO, "b", 0o755, 0, 0).await.unwrap();
    write_file(&fs, b.ino, "x", b"x bytes").await;
    assert!(matches!(
        fs.lookup(a.ino, "x").await,
        Err(FsError::NotFound)
    ));
    // `mv b a` onto the empty a: a/x is b's x now.
    fs.rename(ROOT_INO, "b", ROOT_INO, "a").await.unwrap();
    let a = fs.lookup(ROOT_INO, "a").await.unwrap();
    let x = fs.lookup(a.ino, "x").await.unwrap();
    assert_eq!(read_all(&fs, x.ino).await, b"x bytes");
}

/// Wait until `count` holders have `state` (those waiting for its lock among them).
async fn until_held_by<T>(state: &Arc<T>, count: usize) {
    while Arc::strong_count(state) < count {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Two processes have a file open when the worker is taken over; the new worker counts a
/// handle only once it is used. The first process's close is then the last one the new worker
/// knows of, and while it uploads, the second process writes. That close must not drop the
/// write state the second one writes to (its bytes would reach no object while its `close`
/// said they were stored, or land in the recovery folder as a failed upload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_during_the_last_known_close_of_a_file_reaches_the_store() {
    let store = Arc::new(InMemoryStore::new("b"));
    let dir = tempfile::tempdir().unwrap();
    let config = config(&dir).journal_inodes();
    let (staging_dir, recovery_dir) = (config.staging_dir.clone(), config.recovery_dir.clone());
    let old = Fs::new(store.clone(), config.clone()).unwrap();
    let (attr, first) = old
        .create(ROOT_INO, "f", 0o644, 0, 0, IfExists::Truncate)
        .await
        .unwrap();
    old.write(first, 0, b"a\n").await.unwrap();
    old.flush(first).await.unwrap();
    let second = old.open(attr.ino, true, false).await.unwrap();
    std::mem::forget(old);

    let fs = Arc::new(Fs::take_over(store.clone(), config).await.unwrap());
    fs.recover_leftovers().await;
    fs.take_up_handle(first, attr.ino);
    // Made now and held, so that the close waits for it once it has counted its handle out.
    let state = fs.lock_file_state(attr.ino, false).await.unwrap().0;
    let release = {
        let fs = fs.clone();
        tokio::spawn(async move { fs.release(first).await })
    };
    while fs.handle_ino(first).is_ok() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    fs.take_up_handle(second, attr.ino);
    let append = {
        let fs = fs.clone();
        tokio::spawn(async move { fs.write(second, 2, b"b\n").await })
    };
    // The table, this test, the close's commit and the append hold the state now.
    until_held_by(LockedFile::mutex(&state), 4).await;
    drop(state);
    release.await.unwrap().unwrap();
    assert_eq!(append.await.unwrap().unwrap(), 2);
    fs.flush(second).await.unwrap();
    fs.release(second).await.unwrap();
    assert_eq!(body(&store, "vol/f").await, b"a\nb\n");
    assert_eq!(staged(&staging_dir), Vec::<String>::new());
    assert!(
        std::fs::read_dir(&recovery_dir).map_or(true, |mut d| d.next().is_none()),
        "nothing failed, nothing is for recovery"
    );
}

/// A file emptied by its open and written again streams out as a multipart upload, which
/// fixes the object's metadata when it begins: the stored mtime is that of this writing, not
/// the old version's (`rsync` and `make` compare it).
#[tokio::test]
async fn a_file_rewritten_through_o_trunc_stores_the_mtime_of_its_writing() {
    let (f, store) = fixture();
    let fs = &f.fs;
    let attr = write_file(fs, ROOT_INO, "f", b"old").await;
    let long_ago = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    fs.setattr(
        attr.ino,
        SetAttr {
            mtime: Some(long_ago),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let meta = store.head("vol/f").await.unwrap().user_metadata;
    assert_eq!(meta["mtime"], "1000000000");
    let started = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let fh = fs.open(attr.ino, true, true).await.unwrap();
    let data = common::conformance::pattern(5000, 3);
    fs.write(fh, 0, &data).await.unwrap();
    fs.flush(fh).await.unwrap();
    fs.release(fh).await.unwrap();
    assert!(
        store.request_count(Op::UploadPart) >= 4,
        "streamed in parts"
    );
    assert_eq!(body(&store, "vol/f").await, data);
    let meta = store.head("vol/f").await.unwrap().user_metadata;
    let stored: u64 = meta["mtime"].parse().unwrap();
    assert!(
        stored >= started,
        "stored mtime {stored}, written from {started} on"
    );
}

/// A stop (unmount, SIGTERM) uploads the files still open and drops the staging files of
/// what the store then has: the next start must not move them to the recovery folder as a
/// crash's leftovers, where an operator might copy a stale version back. Writes after it
/// still reach the store.
#[tokio::test]
async fn a_stop_with_files_open_leaves_nothing_for_the_next_start_to_recover() {
    let store = Arc::new(InMemoryStore::new("b"));
    let dir = tempfile::tempdir().unwrap();
    let fs = Fs::new(store.clone(), config(&dir)).unwrap();
    let staging_dir = fs.config().staging_dir.clone();
    let (_, fh) = fs
        .create(ROOT_INO, "log", 0o644, 0, 0, IfExists::Truncate)
        .await
        .unwrap();
    fs.write(fh, 0, b"line 1\n").await.unwrap();
    fs.flush_all().await.unwrap();
    assert_eq!(body(&store, "vol/log").await, b"line 1\n");
    assert_eq!(staged(&staging_dir), Vec::<String>::new());
    // The file is still open, and read and written on after the stop began.
    assert_eq!(&fs.read(fh, 0, 100).await.unwrap()[..], b"line 1\n");
    fs.write(fh, 7, b"line 2\n").await.unwrap();
    fs.flush(fh).await.unwrap();
    assert_eq!(body(&store, "vol/log").await, b"line 1\nline 2\n");
    fs.flush_all().await.unwrap();
    assert_eq!(
        &fs.read(fh, 0, 100).await.unwrap()[..],
        b"line 1\nline 2\n",
        "a read after the stop reads what is stored now"
    );
    // The process ends without a last close.
    std::mem::forget(fs);
    let next = Fs::new(store.clone(), config(&dir)).unwrap();
    let leftovers = next.recover_leftovers().await;
    assert!(
        leftovers.rescued.is_empty(),
        "moved to recovery: {:?}",
        leftovers.rescued
    );
}

/// Reads are pinned to the version the open found (SEMANTICS.md, "No mixed versions"), not to
/// one the mount learns of between the open and the first read: the kernel may have kept pages
/// of the version the open found, and the reads it sends must be of that version too.
#[tokio::test]
async fn a_file_is_read_as_the_version_its_open_found() {
    let (f, store) = fixture();
    let fs = &f.fs;
    let attr = write_file(fs, ROOT_INO, "f", b"version A").await;
    let fh = fs.open(attr.ino, false, false).await.unwrap();
    let b = b"version B, longer";
    store
        .put("vol/f", Bytes::from_static(b), &UserMetadata::new())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        fs.getattr(attr.ino).await.unwrap().size,
        b.len() as u64,
        "the mount knows of the new version"
    );
    match fs.read(fh, 0, 100).await {
        Err(e) => assert_eq!(e.errno(), libc::ESTALE),
        Ok(data) => assert_eq!(
            &data[..],
            b"version A",
            "read through a descriptor opened on A"
        ),
    }
    fs.release(fh).await.unwrap();
    assert_eq!(read_all(fs, attr.ino).await, b);
}

/// The kernel caches pages per file, not per descriptor: pages a descriptor still on an older
/// version reads after an open of a newer one must not be kept by a later open.
#[tokio::test]
async fn pages_read_of_an_older_version_are_not_kept_for_a_newer_one() {
    let (f, store) = fixture();
    let fs = &f.fs;
    let attr = write_file(fs, ROOT_INO, "f", b"version A").await;
    let on_a = fs.open(attr.ino, false, false).await.unwrap();
    assert_eq!(&fs.read(on_a, 0, 100).await.unwrap()[..], b"version A");
    store
        .put(
            "vol/f",
            Bytes::from_static(b"version B"),
            &UserMetadata::new(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let (on_b, kept) = fs
        .open_with_cache_hint(attr.ino, false, false)
        .await
        .unwrap();
    assert!(!kept, "a new version: the kernel drops what it cached");
    assert_eq!(&fs.read(on_b, 0, 100).await.unwrap()[..], b"version B");
    // The first descriptor reads on (from the chunk cache), and the kernel caches A's pages.
    assert_eq!(&fs.read(on_a, 0, 100).await.unwrap()[..], b"version A");
    let (again, kept) = fs
        .open_with_cache_hint(attr.ino, false, false)
        .await
        .unwrap();
    assert!(!kept, "the cached pages are a mix of A and B");
    for fh in [on_a, on_b, again] {
        fs.release(fh).await.unwrap();
    }
}

/// A listing that shows a file the mount knows with a new ETag (another client replaced it,
/// with another mode) does not make the old mode and owner look confirmed: after the TTL the
/// next lookup HEADs the new version and shows its own.
#[tokio::test]
async fn another_clients_new_version_seen_in_a_listing_gets_its_own_mode_after_the_ttl() {
    let (f, store) = fixture();
    let fs = &f.fs;
    let attr = write_file(fs, ROOT_INO, "f", b"mine").await;
    assert_eq!((attr.perm, attr.uid), (0o640, 1000));
    let theirs = StoredAttrs::encode(S_IFREG | 0o600, 2000, 2000, SystemTime::now());
    store
        .put("vol/f", Bytes::from_static(b"theirs"), &theirs)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    // Listings know no modes: they show the earlier version's until a HEAD of this one.
    for _ in 0..2 {
        let listed = fs.readdir(ROOT_INO).await.unwrap();
        let listed = listed.iter().find(|e| e.name == "f").unwrap();
        assert_eq!(listed.attr.size, 6, "the listing shows the new version");
        assert_eq!((listed.attr.perm, listed.attr.uid), (0o640, 1000));
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    let looked_up = fs.lookup(ROOT_INO, "f").await.unwrap();
    assert_eq!((looked_up.perm, looked_up.uid), (0o600, 2000));
}

/// A file renamed (or moved with its folder) between its open and its first read is read at
/// its new name: the copy of an object uploaded in parts has another ETag than the version the
/// open found, and that is no change of its bytes.
#[tokio::test]
async fn a_file_renamed_between_its_open_and_its_first_read_reads_on() {
    let (f, store) = fixture();
    let fs = &f.fs;
    let data = common::conformance::pattern(5000, 6);
    let attr = write_file(fs, ROOT_INO, "a", &data).await;
    assert!(
        store.request_count(Op::UploadPart) >= 4,
        "uploaded in parts"
    );
    let fh = fs.open(attr.ino, false, false).await.unwrap();
    fs.rename(ROOT_INO, "a", ROOT_INO, "b").await.unwrap();
    let copied = store.head("vol/b").await.unwrap().etag;
    assert!(!copied.as_str().contains('-'), "the copy is one part");
    assert_eq!(&fs.read(fh, 0, 5000).await.unwrap()[..], &data[..]);
    fs.release(fh).await.unwrap();
}

/// `cp a b; truncate -s 4 b`: the truncate by path (no handle) comes while the release of
/// `cp`'s descriptor, its last close, is still under way. That release must leave the
/// truncated state to the truncate, which uploads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncate_by_path_during_the_last_close_reaches_the_store() {
    let store = Arc::new(InMemoryStore::new("b"));
    let dir = tempfile::tempdir().unwrap();
    let config = config(&dir);
    let recovery_dir = config.recovery_dir.clone();
    let fs = Arc::new(Fs::new(store.clone(), config).unwrap());
    let (attr, fh) = fs
        .create(ROOT_INO, "b", 0o644, 0, 0, IfExists::Truncate)
        .await
        .unwrap();
    fs.write(fh, 0, b"0123456789").await.unwrap();
    fs.flush(fh).await.unwrap();
    // Held, so that the release waits for the state once it has counted its handle out.
    let state = fs.file_state(attr.ino).unwrap();
    let held = state.lock().await;
    let release = {
        let fs = fs.clone();
        tokio::spawn(async move { fs.release(fh).await })
    };
    while fs.handle_ino(fh).is_ok() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let truncate = {
        let fs = fs.clone();
        tokio::spawn(async move {
            let to_4 = SetAttr {
                size: Some(4),
                ..Default::default()
            };
            fs.setattr(attr.ino, to_4).await
        })
    };
    // The table, this test, the close's commit and the truncate hold the state now.
    until_held_by(&state, 4).await;
    drop(held);
    release.await.unwrap().unwrap();
    assert_eq!(truncate.await.unwrap().unwrap().size, 4);
    assert_eq!(body(&store, "vol/b").await, b"0123");
    assert!(
        std::fs::read_dir(&recovery_dir).map_or(true, |mut d| d.next().is_none()),
        "nothing failed, nothing is for recovery"
    );
}

/// A read the chunk cache holds is answered at once on the caller's thread (`read_cached`:
/// the FUSE worker thread), from the version the handle reads; a read that would wait, and a
/// read of a file being written, are left to `read`.
#[tokio::test]
async fn reads_the_cache_holds_are_answered_at_once_and_others_are_left_to_read() {
    let (f, store) = fixture();
    let fs = &f.fs;
    let attr = write_file(fs, ROOT_INO, "f", b"version A").await;
    let on_a = fs.open(attr.ino, false, false).await.unwrap();
    assert_eq!(fs.read_cached(on_a, 0, 100), None, "no read yet: no reader");
    assert_eq!(&fs.read(on_a, 0, 100).await.unwrap()[..], b"version A");
    assert_eq!(fs.read_cached(on_a, 2, 5).as_deref(), Some(&b"rsion"[..]));
    assert_eq!(fs.read_cached(on_a, 9, 5).as_deref(), None, "at the end");
    // Another client's version: a new open reads it, the first handle reads on in A.
    store
        .put(
            "vol/f",
            Bytes::from_static(b"version B"),
            &UserMetadata::new(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let on_b = fs.open(attr.ino, false, false).await.unwrap();
    assert_eq!(&fs.read(on_b, 0, 100).await.unwrap()[..], b"version B");
    assert_eq!(
        fs.read_cached(on_b, 0, 100).as_deref(),
        Some(&b"version B"[..])
    );
    assert_eq!(
        fs.read_cached(on_a, 0, 100).as_deref(),
        Some(&b"version A"[..])
    );
    // Being written: the write state has the bytes, not the cache.
    let writing = fs.open(attr.ino, true, false).await.unwrap();
    fs.write(writing, 0, b"V").await.unwrap();
    assert_eq!(fs.read_cached(on_b, 0, 100), None);
    assert_eq!(&fs.read(on_b, 0, 100).await.unwrap()[..], b"Version B");
    for fh in [on_a, on_b, writing] {
        fs.release(fh).await.unwrap();
    }
}

#[tokio::test]
async fn lookups_and_getattrs_the_mount_can_answer_are_answered_at_once_and_others_are_left() {
    let (f, store) = fixture();
    let fs = &f.fs;
    fs.mkdir(ROOT_INO, "d", 0o755, 1000, 1000).await.unwrap();
    let file = write_file(fs, ROOT_INO, "f", b"abc").await;
    let found = |name| {
        fs.lookup_now(ROOT_INO, name)
            .map(|r| r.map(|a| (a.ino, a.size)))
    };
    let looked_up = |name| async move { fs.lookup(ROOT_INO, name).await.map(|a| (a.ino, a.size)) };
    assert!(matches!(found("f"), Some(Ok((ino, 3))) if ino == file.ino));
    assert!(matches!(fs.getattr_now(file.ino), Some(Ok(a)) if a.size == 3));
    assert!(matches!(found("d"), Some(Ok(_))));
    // The listing the create made says what is not there; an invalid name is left to `lookup`.
    assert!(matches!(found("missing"), Some(Err(FsError::NotFound))));
    assert!(found("a/b").is_none());
    // The same answers as `lookup` and `getattr`.
    for name in ["f", "d"] {
        assert_eq!(found(name).unwrap().ok(), looked_up(name).await.ok());
    }
    assert!(matches!(looked_up("missing").await, Err(FsError::NotFound)));
    assert_eq!(
        fs.getattr_now(file.ino).unwrap().ok(),
        fs.getattr(file.ino).await.ok()
    );
    // Being written: the size of the written bytes, as `lookup` and `getattr` say; not while
    // the write state is locked (an upload in progress).
    let fh = fs.open(file.ino, true, false).await.unwrap();
    fs.write(fh, 3, b"defg").await.unwrap();
    assert!(matches!(found("f"), Some(Ok((_, 7)))));
    assert!(matches!(fs.getattr_now(file.ino), Some(Ok(a)) if a.size == 7));
    {
        let state = fs.file_state(file.ino).unwrap();
        let _locked = state.lock().await;
        assert!(found("f").is_none());
        assert!(fs.getattr_now(file.ino).is_none());
    }
    fs.release(fh).await.unwrap();
    // A rename moving the name: the lookup waits for it, so it is not answered now.
    {
        let _closed = fs.gate.close("f", "g").await;
        assert!(found("f").is_none());
        assert!(
            matches!(found("missing"), Some(Err(_))),
            "elsewhere: answered"
        );
    }
    assert!(found("f").is_some());
    // Past the TTL, what only the store knows: another client's new file, a changed size.
    for (key, body) in [("vol/new", &b"xy"[..]), ("vol/f", &b"abcdefghij"[..])] {
        let body = Bytes::copy_from_slice(body);
        store.put(key, body, &UserMetadata::new()).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(found("new").is_none());
    assert!(fs.getattr_now(file.ino).is_none());
    assert_eq!(fs.lookup(ROOT_INO, "new").await.unwrap().size, 2);
    assert!(matches!(found("new"), Some(Ok((_, 2)))), "known now");
    assert_eq!(fs.getattr(file.ino).await.unwrap().size, 10);
    assert!(matches!(fs.getattr_now(file.ino), Some(Ok(a)) if a.size == 10));
}

#[tokio::test]
async fn a_folder_read_again_within_the_ttl_is_not_listed_again_nor_checked_when_emptied_here() {
    let (f, store) = fixture_with_ttl(Duration::from_secs(30));
    let fs = &f.fs;
    put_empty_files(&store, "vol/d", 3).await;
    let d = fs.lookup(ROOT_INO, "d").await.unwrap();
    let names = entry_names;
    let lists = || store.request_count(Op::List);
    let before = lists();
    assert_eq!(names(fs.readdir(d.ino).await.unwrap()), ["f0", "f1", "f2"]);
    assert_eq!(lists(), before + 1);
    // Read again (`rm -r` reads a folder twice), with a change made here in between: the
    // listing kept up to date answers, as the store would.
    fs.unlink(d.ino, "f0").await.unwrap();
    write_file(fs, d.ino, "new", b"x").await;
    let again = fs.readdir(d.ino).await.unwrap();
    assert_eq!(names(again.clone()), ["f1", "f2", "new"]);
    assert_eq!(again[2].attr.size, 1);
    assert_eq!(lists(), before + 1, "no second listing");
    // Emptied here: the rmdir needs no listing either.
    for name in ["f1", "f2", "new"] {
        fs.unlink(d.ino, name).await.unwrap();
    }
    fs.rmdir(ROOT_INO, "d").await.unwrap();
    assert_eq!(lists(), before + 1, "no listing for the rmdir");
    assert!(store.keys().is_empty(), "{:?}", store.keys());
    // Within the TTL of a listing that found it empty, another client's new file does not
    // stop an rmdir; the file stays, and so does the folder it implies.
    let g = fs.mkdir(ROOT_INO, "g", 0o755, 0, 0).await.unwrap();
    assert!(fs.readdir(g.ino).await.unwrap().is_empty());
    put_empty_files(&store, "vol/g", 1).await;
    assert!(
        fs.readdir(g.ino).await.unwrap().is_empty(),
        "within the TTL"
    );
    fs.rmdir(ROOT_INO, "g").await.unwrap();
    assert!(store.head("vol/g/f0").await.is_ok());
}

#[tokio::test]
async fn removing_a_tree_known_from_listings_costs_no_head_per_entry() {
    let (f, store) = fixture_with_ttl(Duration::from_secs(30));
    let fs = &f.fs;
    for folder in ["vol/top/a", "vol/top/b"] {
        put_empty_files(&store, folder, 2).await;
    }
    put_empty_files(&store, "vol/p/q", 1).await;
    let top = fs.lookup(ROOT_INO, "top").await.unwrap();
    let heads = || store.request_count(Op::Head);
    let before = heads();
    // `rm -r top` with readdirplus: the kernel has every entry from the listings, and asks
    // to remove each by name. A folder's kind is all an rmdir needs, not its marker's mode.
    for sub in fs.readdir(top.ino).await.unwrap() {
        assert_eq!(sub.attr.kind, Kind::Dir);
        for file in fs.readdir(sub.attr.ino).await.unwrap() {
            fs.unlink(sub.attr.ino, &file.name).await.unwrap();
        }
        fs.rmdir(top.ino, &sub.name).await.unwrap();
    }
    fs.rmdir(ROOT_INO, "top").await.unwrap();
    assert_eq!(heads(), before, "no HEAD");
    assert_eq!(store.keys(), ["vol/p/q/f0"]);
    // Nor to make a name a listed folder has (EEXIST), or to move such a folder.
    let p = fs.lookup(ROOT_INO, "p").await.unwrap();
    fs.readdir(p.ino).await.unwrap();
    let before = heads();
    assert!(matches!(
        fs.mkdir(p.ino, "q", 0o755, 0, 0).await,
        Err(FsError::Exists)
    ));
    assert!(matches!(
        fs.create(p.ino, "q", 0o644, 0, 0, IfExists::Fail).await,
        Err(FsError::Exists)
    ));
    assert!(matches!(fs.unlink(p.ino, "q").await, Err(FsError::IsDir)));
    fs.rename(p.ino, "q", p.ino, "r").await.unwrap();
    assert_eq!(heads(), before, "no HEAD of the folder's marker");
    assert!(store.head("vol/p/r/f0").await.is_ok());
}

#[tokio::test]
async fn another_clients_files_show_in_a_folder_read_again_after_the_ttl_and_stop_its_rmdir() {
    let ttl = Duration::from_millis(500);
    let (f, store) = fixture_with_ttl(ttl);
    let fs = &f.fs;
    let e = fs.mkdir(ROOT_INO, "e", 0o755, 0, 0).await.unwrap();
    assert!(fs.readdir(e.ino).await.unwrap().is_empty());
    put_empty_files(&store, "vol/e", 1).await;
    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
    let listed = fs.readdir(e.ino).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "f0");
    // Removed here, but another client's files came since: the rmdir past the TTL asks the
    // store, which has them.
    fs.unlink(e.ino, "f0").await.unwrap();
    put_empty_files(&store, "vol/e", 2).await;
    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
    assert_eq!(
        fs.rmdir(ROOT_INO, "e").await.unwrap_err().errno(),
        libc::ENOTEMPTY
    );
}

#[tokio::test]
async fn a_folder_read_again_shows_no_attributes_older_than_the_ttl() {
    let ttl = Duration::from_millis(500);
    let (f, store) = fixture_with_ttl(ttl);
    let fs = &f.fs;
    store
        .put("vol/d/a", Bytes::from(vec![1u8; 10]), &UserMetadata::new())
        .await
        .unwrap();
    let d = fs.lookup(ROOT_INO, "d").await.unwrap();
    assert_eq!(fs.readdir(d.ino).await.unwrap()[0].attr.size, 10);
    // Another client rewrites it; past the TTL a lookup lists the folder again (which
    // confirms names, not the attributes of files it does not HEAD).
    store
        .put("vol/d/a", Bytes::from(vec![2u8; 20]), &UserMetadata::new())
        .await
        .unwrap();
    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
    assert!(matches!(
        fs.lookup(d.ino, "new").await,
        Err(FsError::NotFound)
    ));
    let listed = fs.readdir(d.ino).await.unwrap();
    assert_eq!((listed[0].name.as_str(), listed[0].attr.size), ("a", 20));
}

#[tokio::test]
async fn a_listing_kept_up_to_date_follows_renames_and_never_hides_what_the_store_has() {
    let (f, store) = fixture_with_ttl(Duration::from_secs(30));
    let fs = &f.fs;
    let src = fs.mkdir(ROOT_INO, "src", 0o755, 0, 0).await.unwrap();
    let dst = fs.mkdir(ROOT_INO, "dst", 0o755, 0, 0).await.unwrap();
    write_file(fs, src.ino, "f", b"12345").await;
    let names = |entries: Vec<DirEntry>| {
        entries
            .into_iter()
            .map(|e| (e.name, e.attr.size))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(fs.readdir(src.ino).await.unwrap()), [("f".into(), 5)]);
    assert!(fs.readdir(dst.ino).await.unwrap().is_empty());
    let lists = store.request_count(Op::List);
    fs.rename(src.ino, "f", dst.ino, "g").await.unwrap();
    assert!(fs.readdir(src.ino).await.unwrap().is_empty());
    assert_eq!(names(fs.readdir(dst.ino).await.unwrap()), [("g".into(), 5)]);
    assert_eq!(
        store.request_count(Op::List),
        lists,
        "read from the listings"
    );

    // A folder listed empty that another client has filled since: a rename onto it asks the
    // store, which says it is not empty (moving in would merge with those files).
    let a = fs.mkdir(ROOT_INO, "a", 0o755, 0, 0).await.unwrap();
    write_file(fs, a.ino, "mine", b"m").await;
    let b = fs.mkdir(ROOT_INO, "b", 0o755, 0, 0).await.unwrap();
    assert!(fs.readdir(b.ino).await.unwrap().is_empty());
    put_empty_files(&store, "vol/b", 1).await;
    assert_eq!(
        fs.rename(ROOT_INO, "a", ROOT_INO, "b")
            .await
            .unwrap_err()
            .errno(),
        libc::ENOTEMPTY
    );
    assert!(store.head("vol/a/mine").await.is_ok() && store.head("vol/b/f0").await.is_ok());

    // Keys no file name can stand for are not shown, but the folder is not empty.
    store
        .put("vol/h//x", Bytes::from_static(b"x"), &UserMetadata::new())
        .await
        .unwrap();
    let h = fs.lookup(ROOT_INO, "h").await.unwrap();
    assert!(fs.readdir(h.ino).await.unwrap().is_empty());
    assert_eq!(
        fs.rmdir(ROOT_INO, "h").await.unwrap_err().errno(),
        libc::ENOTEMPTY
    );
}

#[tokio::test]
async fn a_file_written_while_its_folder_is_listed_stays_in_the_listing_once_uploaded() {
    let (f, store) = fixture_with_ttl(Duration::from_secs(30));
    let fs = &f.fs;
    put_empty_files(&store, "vol/d", 1).await;
    let d = fs.lookup(ROOT_INO, "d").await.unwrap();
    let (_, fh) = fs
        .create(d.ino, "f", 0o644, 0, 0, IfExists::Truncate)
        .await
        .unwrap();
    fs.write(fh, 0, b"not in the store yet").await.unwrap();
    // Listed from the store while the file is only here.
    let listed = entry_names;
    assert_eq!(listed(fs.readdir(d.ino).await.unwrap()), ["f", "f0"]);
    fs.release(fh).await.unwrap();
    assert!(store.head("vol/d/f").await.is_ok());
    assert_eq!(listed(fs.readdir(d.ino).await.unwrap()), ["f", "f0"]);
}
