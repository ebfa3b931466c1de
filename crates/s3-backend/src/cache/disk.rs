//! The disk tier of the chunk cache: one file per chunk in a cache folder, under a hard byte cap,
//! kept across restarts.
//!
//! Each file starts with a header naming the chunk it holds (bucket, key, ETag, index), the data
//! length and a CRC32C of each 64 KiB block of the data. A read checks the header and the blocks
//! it returns, so a file that was truncated by a crash, corrupted on disk, or named by a hash
//! collision is dropped and reported as a miss, never served. Per-block checksums let a small
//! read (a 4 KiB random read) load and check one block instead of the whole chunk. Files are
//! written to a temporary name and renamed, so a crash leaves either the whole chunk or a
//! `*.tmp` file that the next start deletes.
//!
//! The index of files is a moka cache weighted by file size with the byte cap as capacity; its
//! eviction listener deletes the evicted file. On start the folder is scanned into the index.
//!
//! Whatever the cap, the tier leaves [`FREE_SHARE`] of its filesystem free: before each write
//! it asks the filesystem how much room is left, and when that is short it deletes cached
//! chunks (the host, Docker and this mount's staged writes share the disk, and a cache that
//! fills it breaks them all), or does not cache the chunk.

use std::fs;
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use md5::{Digest, Md5};
use moka::notification::RemovalCause;

use super::ChunkKey;

const MAGIC: &[u8; 8] = b"S3VOLCH2";
/// The folder of chunk files inside the disk tier's folder.
const CHUNK_FOLDER: &str = "chunks-v2";
/// Folders of earlier file formats: deleted on open, their files are not read any more.
const OLD_CHUNK_FOLDERS: &[&str] = &["chunks-v1"];
/// The data of a chunk file is checked in blocks of this size, each with its own CRC32C.
const BLOCK: usize = 64 << 10;
/// The part of the cache folder's filesystem the disk tier leaves free, as a fraction: 1/20
/// (5%), room for the host's own growth (logs, images) that a full disk would break.
const FREE_SHARE: u64 = 20;

/// The room on a filesystem, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Room {
    /// Free for unprivileged users (`f_bavail`).
    available: u64,
    total: u64,
}

/// How much room the filesystem of a folder has (`statvfs`; tests give their own).
type RoomProbe = Arc<dyn Fn(&Path) -> io::Result<Room> + Send + Sync>;

fn room_of(dir: &Path) -> io::Result<Room> {
    let stat = nix::sys::statvfs::statvfs(dir)?;
    let fragment = stat.fragment_size() as u64;
    Ok(Room {
        available: stat.blocks_available() as u64 * fragment,
        total: stat.blocks() as u64 * fragment,
    })
}

/// A bounded folder of chunk files.
#[derive(Debug, Clone)]
pub struct DiskCache {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    index: moka::sync::Cache<PathBuf, u32>,
    room: RoomProbe,
    /// Bytes of chunk files being written now, which the filesystem may not count yet:
    /// room taken by [`DiskCache::reserve_room`] under this lock, given back after the write.
    writing: std::sync::Mutex<u64>,
    corrupt_dropped: AtomicU64,
    write_errors: AtomicU64,
    /// Chunks not cached, or deleted, for want of room (see [`DiskCache::given_way`]).
    given_way: AtomicU64,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("root", &self.root)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl DiskCache {
    /// Open (or create) the cache in `dir`, keeping at most `max_bytes` of chunk files.
    /// Files already there count toward the cap; leftovers of interrupted writes are deleted.
    /// Delete the chunk files a disk tier in `dir` holds (the disk tier is turned off).
    pub fn remove(dir: &Path) -> io::Result<()> {
        OLD_CHUNK_FOLDERS
            .iter()
            .chain([&CHUNK_FOLDER])
            .try_for_each(|folder| remove_folder(&dir.join(folder)))
    }

    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Self> {
        Self::open_with_room(dir, max_bytes, Arc::new(room_of))
    }

    /// [`open`](Self::open), with `room` telling how much room the folder's filesystem has.
    fn open_with_room(dir: &Path, max_bytes: u64, room: RoomProbe) -> io::Result<Self> {
        for old in OLD_CHUNK_FOLDERS {
            remove_folder(&dir.join(old))?;
        }
        let root = dir.join(CHUNK_FOLDER);
        fs::create_dir_all(&root)?;
        let index = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_path: &PathBuf, size: &u32| *size)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .eviction_listener(|path: Arc<PathBuf>, _size, cause| {
                // A replaced entry's file was just rewritten in place: keep it.
                if cause != RemovalCause::Replaced {
                    let _ = fs::remove_file(&*path);
                }
            })
            .build();
        let cache = DiskCache {
            inner: Arc::new(Inner {
                root,
                index,
                room,
                writing: std::sync::Mutex::new(0),
                corrupt_dropped: AtomicU64::new(0),
                write_errors: AtomicU64::new(0),
                given_way: AtomicU64::new(0),
            }),
        };
        cache.scan()?;
        // The disk may have filled up since the last run.
        cache.reserve_room(0);
        Ok(cache)
    }

    fn scan(&self) -> io::Result<()> {
        for shard in fs::read_dir(&self.inner.root)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for file in fs::read_dir(shard.path())? {
                let file = file?;
                let path = file.path();
                if path.extension().is_some_and(|e| e == "tmp") {
                    let _ = fs::remove_file(&path);
                    continue;
                }
                let size = file.metadata()?.len();
                self.inner
                    .index
                    .insert(path, size.min(u32::MAX as u64) as u32);
            }
        }
        self.inner.index.run_pending_tasks();
        Ok(())
    }

    fn path_of(&self, key: &ChunkKey) -> PathBuf {
        let mut hasher = Md5::new();
        for part in [
            key.source.as_bytes(),
            key.key.as_bytes(),
            key.etag.as_bytes(),
        ] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        let name = hex::encode(hasher.finalize());
        self.inner
            .root
            .join(&name[..2])
            .join(format!("{}.{}", &name[2..], key.index))
    }

    /// Whether a file for this chunk is cached (not checked: `get` checks).
    pub fn contains(&self, key: &ChunkKey) -> bool {
        self.inner.index.contains_key(&self.path_of(key))
    }

    /// The chunk's data if a valid file for exactly this chunk is cached.
    pub fn get(&self, key: &ChunkKey) -> Option<Bytes> {
        let path = self.path_of(key);
        self.inner.index.get(&path)?;
        let file = match fs::read(&path) {
            Ok(file) => file,
            Err(e) => return self.read_failed(&path, &e),
        };
        match decode(file, key) {
            Some(data) => Some(data),
            None => self.drop_corrupt(&path),
        }
    }

    /// Bytes `part` of the chunk, `chunk_len` bytes long, if a valid file for exactly this
    /// chunk is cached. Reads and checks only the blocks that hold `part`.
    pub fn get_part(&self, key: &ChunkKey, chunk_len: usize, part: Range<usize>) -> Option<Bytes> {
        assert!(
            part.start < part.end && part.end <= chunk_len,
            "{part:?} of {chunk_len}"
        );
        let path = self.path_of(key);
        self.inner.index.get(&path)?;
        let file = match fs::File::open(&path) {
            Ok(file) => file,
            Err(e) => return self.read_failed(&path, &e),
        };
        let expected = prefix_head(key, chunk_len);
        let prefix_len = expected.len() + 4 * chunk_len.div_ceil(BLOCK);
        let blocks = part.start / BLOCK..part.end.div_ceil(BLOCK);
        let data_at = blocks.start * BLOCK..(blocks.end * BLOCK).min(chunk_len);
        let mut prefix = vec![0; prefix_len];
        let mut data = vec![0; data_at.len()];
        let read = file.metadata().and_then(|meta| {
            if meta.len() != (prefix_len + chunk_len) as u64 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            file.read_exact_at(&mut prefix, 0)?;
            file.read_exact_at(&mut data, (prefix_len + data_at.start) as u64)
        });
        match read {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return self.drop_corrupt(&path),
            Err(e) => return self.read_failed(&path, &e),
        }
        let crcs = prefix.strip_prefix(expected.as_slice());
        let intact =
            crcs.is_some_and(|crcs| blocks_intact(&data, &crcs[4 * blocks.start..4 * blocks.end]));
        if !intact {
            return self.drop_corrupt(&path);
        }
        Some(Bytes::from(data).slice(part.start - data_at.start..part.end - data_at.start))
    }

    /// A chunk file that could not be read is a miss. One deleted behind our back (folder
    /// removed) is forgotten; after a transient error (EMFILE, EIO) the file is kept.
    fn read_failed(&self, path: &Path, error: &io::Error) -> Option<Bytes> {
        if error.kind() == io::ErrorKind::NotFound {
            self.inner.index.invalidate(path);
        }
        None
    }

    /// A corrupt or truncated chunk file is a miss, counted and deleted.
    fn drop_corrupt(&self, path: &Path) -> Option<Bytes> {
        self.inner.corrupt_dropped.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(path = %path.display(), "dropping a corrupt or truncated cached chunk");
        // The eviction listener deletes the file.
        self.inner.index.invalidate(path);
        None
    }

    /// Store a chunk. Failures (disk full, folder deleted) are counted and logged, not returned:
    /// the cache is an optimisation and the data is still in the object store.
    pub fn put(&self, key: &ChunkKey, data: &[u8]) {
        let path = self.path_of(key);
        // Header and data written one after the other: no copy of the chunk into a new buffer.
        let prefix = file_prefix(key, data);
        // Filesystems take whole blocks (of 4 KiB, mostly).
        let len = ((prefix.len() + data.len()) as u64).next_multiple_of(4096);
        if !self.reserve_room(len) {
            return;
        }
        let written = write_atomically(&path, &[&prefix, data]);
        *self.inner.writing.lock().unwrap() -= len;
        match written {
            Ok(()) => {
                self.inner
                    .index
                    .insert(path, (prefix.len() + data.len()) as u32);
                // Enforce the cap now, not at some later maintenance run.
                self.inner.index.run_pending_tasks();
            }
            Err(e) => {
                let n = self.inner.write_errors.fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() || n == 0 {
                    tracing::warn!(path = %path.display(), error = %e, errors = n + 1, "cannot write to the disk cache; reading from the object store instead");
                }
            }
        }
    }

    /// Whether `len` more bytes fit on the filesystem with its free share left, after
    /// deleting cached chunks if they do not; if so, they are counted as being written
    /// (the caller takes them off once written), so parallel writers do not count the same
    /// room twice. A filesystem that cannot tell its room leaves the cap alone in charge.
    fn reserve_room(&self, len: u64) -> bool {
        let mut writing = self.inner.writing.lock().unwrap();
        let Ok(room) = (self.inner.room)(&self.inner.root) else {
            *writing += len;
            return true;
        };
        let floor = room.total / FREE_SHARE;
        let short = (floor + *writing + len).saturating_sub(room.available);
        let fits = short == 0 || self.delete_chunks(short, "to keep 5% of it free") >= short;
        if fits {
            *writing += len;
        } else if len > 0 {
            self.gave_way(1, "a chunk was not cached, to keep 5% of it free");
        }
        fits
    }

    /// For a write of the mount's own data (a staging file) that found the disk full: delete
    /// cached chunks of at least `bytes` in all, or all there are, since the mount's data
    /// comes before its cache. Returns the bytes deleted.
    pub fn give_way(&self, bytes: u64) -> u64 {
        let _writing = self.inner.writing.lock().unwrap();
        self.delete_chunks(bytes, "for a staged write that found the disk full")
    }

    /// Delete cached chunks until they add up to `bytes` or none are left; returns the bytes
    /// deleted. The chunks go in no particular order (moka does not expose its LRU order):
    /// the room matters more than which chunks stay. The caller holds `writing`. `why` is for
    /// the log.
    fn delete_chunks(&self, bytes: u64, why: &str) -> u64 {
        let (mut deleted, mut count) = (0u64, 0u64);
        for (path, size) in self.inner.index.iter() {
            if deleted >= bytes {
                break;
            }
            // The eviction listener deletes the file.
            self.inner.index.invalidate(&*path);
            deleted += size as u64;
            count += 1;
        }
        self.inner.index.run_pending_tasks();
        if count > 0 {
            self.gave_way(count, &format!("cached chunks were deleted {why}"));
        }
        deleted
    }

    /// Count chunks deleted or not cached for want of room, with a warning now and then.
    fn gave_way(&self, chunks: u64, what: &str) {
        common::metrics::metrics()
            .cache_disk_given_way
            .inc_by(chunks);
        let before = self.inner.given_way.fetch_add(chunks, Ordering::Relaxed);
        if before == 0 || (before + chunks).ilog2() > before.max(1).ilog2() {
            tracing::warn!(
                folder = %self.inner.root.display(),
                chunks,
                "the disk cache's filesystem is short of room: {what}"
            );
        }
    }

    /// Chunks not cached, or deleted from the disk, for want of room: to leave the filesystem
    /// its free share, or for staged writes.
    pub fn given_way(&self) -> u64 {
        self.inner.given_way.load(Ordering::Relaxed)
    }

    /// Bytes of chunk files the index accounts for.
    pub fn used_bytes(&self) -> u64 {
        self.inner.index.run_pending_tasks();
        self.inner.index.weighted_size()
    }

    pub fn corrupt_dropped(&self) -> u64 {
        self.inner.corrupt_dropped.load(Ordering::Relaxed)
    }

    pub fn write_errors(&self) -> u64 {
        self.inner.write_errors.load(Ordering::Relaxed)
    }
}

fn write_atomically(path: &Path, parts: &[&[u8]]) -> io::Result<()> {
    let dir = path.parent().expect("chunk paths have a shard folder");
    fs::create_dir_all(dir)?;
    // Unique per write: chunks of one object share a stem, and writers run in parallel.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(
        ".{}-{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = PathBuf::from(tmp);
    let result = fs::File::create(&tmp)
        .and_then(|mut f| parts.iter().try_for_each(|part| f.write_all(part)))
        .and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn remove_folder(folder: &Path) -> io::Result<()> {
    match fs::remove_dir_all(folder) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn header(key: &ChunkKey) -> Vec<u8> {
    let mut h = Vec::new();
    for part in [
        key.source.as_bytes(),
        key.key.as_bytes(),
        key.etag.as_bytes(),
    ] {
        h.extend_from_slice(&(part.len() as u32).to_le_bytes());
        h.extend_from_slice(part);
    }
    h.extend_from_slice(&key.index.to_le_bytes());
    h
}

/// What a chunk file for `key` holding `len` bytes starts with: magic, header, data length.
fn prefix_head(key: &ChunkKey, len: usize) -> Vec<u8> {
    let header = header(key);
    let mut head = Vec::with_capacity(MAGIC.len() + 4 + header.len() + 8);
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&(header.len() as u32).to_le_bytes());
    head.extend_from_slice(&header);
    head.extend_from_slice(&(len as u64).to_le_bytes());
    head
}

/// Everything in a chunk file before the data: [`prefix_head`], then the CRC32C of each block.
fn file_prefix(key: &ChunkKey, data: &[u8]) -> Vec<u8> {
    let mut prefix = prefix_head(key, data.len());
    for block in data.chunks(BLOCK) {
        prefix.extend_from_slice(&crc32c::crc32c(block).to_le_bytes());
    }
    prefix
}

/// Whether each `BLOCK` of `data` matches its CRC32C in `crcs`.
fn blocks_intact(data: &[u8], crcs: &[u8]) -> bool {
    data.chunks(BLOCK).len() == crcs.len() / 4
        && data
            .chunks(BLOCK)
            .zip(crcs.chunks_exact(4))
            .all(|(block, crc)| crc32c::crc32c(block).to_le_bytes() == crc)
}

/// The data of `file` if it is a complete, intact chunk file for `key`.
fn decode(file: Vec<u8>, key: &ChunkKey) -> Option<Bytes> {
    let rest = file.strip_prefix(MAGIC.as_slice())?;
    let (len, rest) = rest.split_first_chunk::<4>()?;
    let header_len = u32::from_le_bytes(*len) as usize;
    if rest.len() < header_len || rest[..header_len] != header(key)[..] {
        return None;
    }
    let rest = &rest[header_len..];
    let (len, rest) = rest.split_first_chunk::<8>()?;
    let data_len = usize::try_from(u64::from_le_bytes(*len)).ok()?;
    let crcs_len = 4 * data_len.div_ceil(BLOCK);
    if rest.len() != crcs_len.checked_add(data_len)? {
        return None;
    }
    let (crcs, data) = rest.split_at(crcs_len);
    if !blocks_intact(data, crcs) {
        return None;
    }
    let data_start = file.len() - data_len;
    // The file's buffer becomes the chunk: no copy.
    Some(Bytes::from(file).slice(data_start..))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(index: u64) -> ChunkKey {
        ChunkKey::new("bucket", "dir/file", &common::ETag::new("\"abc\""), index)
    }

    #[test]
    fn round_trips_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
        cache.put(&key(0), b"hello");
        assert_eq!(cache.get(&key(0)).unwrap(), &b"hello"[..]);
        assert!(cache.get(&key(1)).is_none());
        drop(cache);
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(cache.get(&key(0)).unwrap(), &b"hello"[..]);
        assert!(cache.used_bytes() > 5);
    }

    #[test]
    fn another_etag_never_reads_the_old_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
        cache.put(&key(0), b"old version");
        let newer = ChunkKey::new("bucket", "dir/file", &common::ETag::new("\"def\""), 0);
        assert!(cache.get(&newer).is_none());
    }

    #[test]
    fn corrupt_truncated_and_foreign_files_are_dropped_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
        let data = vec![7u8; 4096];
        for (i, damage) in ["flip", "truncate", "foreign"].into_iter().enumerate() {
            let k = key(i as u64);
            cache.put(&k, &data);
            let path = cache.path_of(&k);
            let mut file = fs::read(&path).unwrap();
            match damage {
                "flip" => *file.last_mut().unwrap() ^= 1,
                "truncate" => file.truncate(file.len() - 100),
                _ => file = [file_prefix(&key(99), &data), data.clone()].concat(),
            }
            fs::write(&path, file).unwrap();
            assert!(cache.get(&k).is_none(), "{damage} was served");
            assert!(!path.exists(), "{damage} file was kept");
        }
        assert_eq!(cache.corrupt_dropped(), 3);
    }

    #[test]
    fn a_part_is_read_from_the_blocks_that_hold_it() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 4 << 20).unwrap();
        // Two and a half blocks: the last block is short.
        let data: Vec<u8> = (0..BLOCK * 5 / 2).map(|i| (i % 251) as u8).collect();
        cache.put(&key(0), &data);
        let len = data.len();
        for part in [
            0..1,
            0..4096,
            BLOCK - 10..BLOCK + 10,
            BLOCK..2 * BLOCK,
            2 * BLOCK + 5..len,
            0..len,
        ] {
            let got = cache.get_part(&key(0), len, part.clone()).unwrap();
            assert_eq!(&got[..], &data[part.clone()], "{part:?}");
        }
        assert!(cache.get_part(&key(1), len, 0..10).is_none());
        assert_eq!(cache.corrupt_dropped(), 0);
        // A file of another length than the chunk's is not that chunk: dropped.
        assert!(cache.get_part(&key(0), len + 1, 0..10).is_none());
        assert_eq!(cache.corrupt_dropped(), 1);
    }

    #[test]
    fn a_part_in_a_corrupt_block_is_dropped_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 4 << 20).unwrap();
        let data = vec![3u8; 2 * BLOCK];
        cache.put(&key(0), &data);
        let path = cache.path_of(&key(0));
        let mut file = fs::read(&path).unwrap();
        *file.last_mut().unwrap() ^= 1;
        fs::write(&path, file).unwrap();
        // The first block is intact and is served; the second is not.
        assert_eq!(
            &cache.get_part(&key(0), data.len(), 0..100).unwrap()[..],
            &data[..100]
        );
        assert!(cache
            .get_part(&key(0), data.len(), BLOCK..BLOCK + 100)
            .is_none());
        assert!(!path.exists(), "the corrupt file was kept");
        assert!(cache.get(&key(0)).is_none());
    }

    #[test]
    fn files_of_the_earlier_format_are_deleted_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("chunks-v1/ab");
        fs::create_dir_all(&old).unwrap();
        fs::write(old.join("cd.0"), vec![0u8; 4096]).unwrap();
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
        assert!(!dir.path().join("chunks-v1").exists());
        assert_eq!(cache.used_bytes(), 0);
    }

    #[test]
    fn stays_under_the_byte_cap() {
        let dir = tempfile::tempdir().unwrap();
        let cap = 64 * 1024;
        let cache = DiskCache::open(dir.path(), cap).unwrap();
        for i in 0..100 {
            cache.put(&key(i), &vec![i as u8; 4096]);
            assert!(
                cache.used_bytes() <= cap,
                "after {i}: {}",
                cache.used_bytes()
            );
        }
        let on_disk: u64 = walk(dir.path())
            .iter()
            .map(|p| fs::metadata(p).unwrap().len())
            .sum();
        assert!(on_disk <= cap, "{on_disk} bytes on disk");
        assert!(
            on_disk > cap / 2,
            "the cache should still hold data: {on_disk}"
        );
    }

    #[test]
    fn leftover_temp_files_are_deleted_and_a_deleted_folder_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
        cache.put(&key(0), b"x");
        let tmp = cache.path_of(&key(5)).with_extension("123.tmp");
        fs::write(&tmp, b"partial").unwrap();
        drop(cache);
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
        assert!(!tmp.exists());
        fs::remove_dir_all(dir.path().join(CHUNK_FOLDER)).unwrap();
        assert!(cache.get(&key(0)).is_none());
        // Writing recreates the folder.
        cache.put(&key(1), b"y");
        assert_eq!(cache.get(&key(1)).unwrap(), &b"y"[..]);
    }

    /// A filesystem of `total` bytes of which other programs' files take `others`: its room
    /// is what they and the cache's files in `dir` leave.
    fn small_disk(dir: &Path, total: u64, others: Arc<AtomicU64>) -> RoomProbe {
        let dir = dir.to_path_buf();
        Arc::new(move |_: &Path| {
            let ours: u64 = walk(&dir)
                .iter()
                .map(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
                .sum();
            let used = others.load(Ordering::SeqCst) + ours;
            Ok(Room {
                available: total.saturating_sub(used),
                total,
            })
        })
    }

    #[test]
    fn leaves_a_twentieth_of_its_filesystem_free_and_gives_way_to_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let total = 20 << 20; // 1 MiB must stay free
        let others = Arc::new(AtomicU64::new(0));
        let room = small_disk(dir.path(), total, others.clone());
        let left = || room(dir.path()).unwrap().available;
        // A cap far above what the disk has.
        let cache = DiskCache::open_with_room(dir.path(), 1 << 30, room.clone()).unwrap();
        let chunk = vec![1u8; 512 << 10];
        let given_way = || common::metrics::metrics().cache_disk_given_way.get();
        let given_way_before = given_way();
        for i in 0..60 {
            cache.put(&key(i), &chunk);
            assert!(left() >= total / 20, "after {i}: {} bytes left", left());
        }
        assert!(
            cache.used_bytes() > 15 << 20,
            "the cache fills what it may: {}",
            cache.used_bytes()
        );
        assert!(cache.get(&key(59)).is_some(), "the newest chunk is cached");
        // Another program takes all that is free: the next write makes room first.
        let take_the_rest = || others.fetch_add(left(), Ordering::SeqCst);
        take_the_rest();
        cache.put(&key(60), &chunk);
        assert!(left() >= total / 20, "{} bytes left", left());
        assert!(cache.get(&key(60)).is_some());
        // It does again while no chunk is written: a new start makes room at once.
        drop(cache);
        take_the_rest();
        let cache = DiskCache::open_with_room(dir.path(), 1 << 30, room.clone()).unwrap();
        assert!(left() >= total / 20, "{} bytes left", left());
        // And again after every write: the cache shrinks until it has nothing left to give,
        // and then caches nothing.
        for i in 61.. {
            take_the_rest();
            cache.put(&key(i), &chunk);
            if cache.used_bytes() == 0 {
                assert!(cache.get(&key(i)).is_none());
                break;
            }
            assert!(i < 200, "the cache does not shrink: {}", cache.used_bytes());
        }
        assert!(walk(dir.path()).is_empty(), "{:?}", walk(dir.path()));
        assert!(cache.given_way() > 0);
        // (Other tests may count too: the metrics are the process's.)
        assert!(given_way() >= given_way_before + cache.given_way());
    }

    #[test]
    fn a_write_that_fails_is_counted_not_returned() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
        let root = dir.path().join(CHUNK_FOLDER);
        fs::remove_dir_all(&root).unwrap();
        fs::write(&root, b"a file where the folder was").unwrap();
        cache.put(&key(0), b"x");
        assert_eq!(cache.write_errors(), 1);
        assert!(cache.get(&key(0)).is_none());
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files.extend(walk(&path));
            } else {
                files.push(path);
            }
        }
        files
    }
}
