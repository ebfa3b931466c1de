//! Written files: every byte written goes to a staging file in the cache folder, and, while the
//! writes come in order from offset 0, also into a streaming multipart upload. Committing
//! (flush, fsync, release) then only finishes that upload; a file written out of order (random
//! writes, appends to existing data, truncates) is uploaded from its staging file instead.
//!
//! An existing object of a part's size or more is not copied into the staging file when it is
//! first written: its bytes stay in the store until a read or a write among them needs them, so
//! an append (`>>` to a big log) sends the new bytes and has the store copy the rest. A `.base`
//! note beside the staging file names the version those bytes are in, for a process taking over.
//!
//! The staging file is deleted only after the store acknowledged the object. When the upload
//! fails, the error is returned (EIO at close/fsync) and the file stays, so nothing written is
//! lost: a later fsync or close retries, and on release it is kept in the recovery folder.
//! Beside each staging file, a `.key` file names its object, so that the staging files a crash
//! leaves behind can be moved to the recovery folder under their names at the next start.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::store::ByteStream;
use common::{ETag, ObjectStore, PutResult, UserMetadata};
use futures::TryStreamExt;
use s3_backend::upload::{StreamingUpload, UploadConfig};

use super::error::{FsError, FsResult};

/// The write state of one open file, shared by all its handles.
#[derive(Debug)]
pub struct FileState<S: ObjectStore> {
    pub key: String,
    staging_path: PathBuf,
    staging: File,
    /// Logical size of the file.
    pub size: u64,
    /// Written since the last commit.
    pub dirty: bool,
    /// Open while every write so far was sequential from 0 since the file became empty.
    stream: Option<StreamingUpload<S>>,
    /// Bytes before this offset have been handed to the stream.
    stream_next: u64,
    /// Written ranges (start → end) past `stream_next`, waiting for the gap before them to
    /// fill: the kernel may deliver the writes of one sequential writer slightly out of order.
    ahead: BTreeMap<u64, u64>,
    /// The file was unlinked while open: its bytes must not be uploaded any more.
    pub detached: bool,
    /// Dropped from the mount's table of written files (its last close, or a stop): a write
    /// that waited for this state meanwhile must go to the file's current one instead.
    pub retired: bool,
    /// The object version the staging file started from (or last committed) and its size:
    /// the bytes below `unchanged_below` are still that version's, and a commit has the store
    /// copy them instead of uploading them again (an append to a big file sends the new bytes
    /// only).
    base: Option<(ETag, u64)>,
    /// No byte below this offset was written or truncated since `base`.
    unchanged_below: u64,
    /// The bytes below this offset are `base`'s, still only in the store: the staging file has
    /// a hole there (see [`Initial::InStore`]). Never above `unchanged_below`.
    in_store_below: u64,
    /// Created, or emptied by an open with `O_TRUNC`, by this mount and, since, neither
    /// written nor changed nor committed. Its first close need not put the empty object:
    /// shells open, `dup2()` onto stdout and close the first descriptor before writing
    /// (`echo hi > f`), which would cost a second PUT per file, and show other clients an
    /// empty file for a moment.
    untouched_since_create: bool,
}

/// What a new write state starts from.
pub enum Initial {
    /// An empty file.
    Empty,
    /// The object's `size` bytes as they come from the store (version ETag if known), copied
    /// into the staging file piece by piece: a big object never sits in memory.
    Copied(ByteStream, u64, Option<ETag>),
    /// The object's `size` bytes of version `ETag`, left in the store until a read or a write
    /// among them needs them.
    InStore(u64, ETag),
}

impl std::fmt::Debug for Initial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Initial::Empty => f.write_str("Empty"),
            Initial::Copied(_, size, etag) => write!(f, "Copied({size}, {etag:?})"),
            Initial::InStore(size, etag) => write!(f, "InStore({size}, {etag:?})"),
        }
    }
}

static NEXT_STAGING: AtomicU64 = AtomicU64::new(0);

/// Hand `range` of staging file `staging` (at `path`) to `up`, in pieces of 1 MiB: the
/// upload's own part buffers are what the memory budget counts, and a range may be long.
async fn send_staged<S: ObjectStore>(
    staging: &File,
    path: &Path,
    range: std::ops::Range<u64>,
    up: &mut StreamingUpload<S>,
) -> common::StoreResult<()> {
    let mut buf = vec![0u8; (range.end - range.start).min(1 << 20) as usize];
    let mut offset = range.start;
    while offset < range.end {
        let len = (range.end - offset).min(buf.len() as u64) as usize;
        staging
            .read_exact_at(&mut buf[..len], offset)
            .map_err(|e| {
                common::StoreError::new(
                    common::ErrorKind::Other,
                    format!("cannot read staging file {}: {e}", path.display()),
                )
            })?;
        up.write(&buf[..len]).await?;
        offset += len as u64;
    }
    Ok(())
}

/// Deletes a file when dropped, unless told to keep it.
struct DeleteOnDrop(Option<PathBuf>);

impl DeleteOnDrop {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Write `body`, which must be `size` bytes, at the start of `file` (at `path`).
async fn copy_into(file: &File, path: &Path, mut body: ByteStream, size: u64) -> FsResult<()> {
    let mut offset = 0u64;
    while let Some(piece) = body.try_next().await? {
        file.write_all_at(&piece, offset)
            .map_err(|e| local(e, "cannot write staging file", path))?;
        offset += piece.len() as u64;
    }
    if offset != size {
        return Err(FsError::Store(common::StoreError::new(
            common::ErrorKind::PreconditionFailed,
            format!("the object changed while it was read: {offset} bytes, not {size}"),
        )));
    }
    Ok(())
}

/// Extension of a staging file while the object's bytes are copied into it.
const FILLING: &str = "filling";

/// Extension of the note beside a staging file whose first bytes are still only in the store:
/// `<ETag>\n<length>\n`, the version they are in and how many.
const IN_STORE: &str = "base";

/// The version and length the `.base` note beside `staging` names; `Ok(None)` without a note.
fn read_in_store_note(staging: &Path) -> FsResult<Option<(ETag, u64)>> {
    let note = staging.with_extension(IN_STORE);
    let text = match std::fs::read_to_string(&note) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(local(e, "cannot read the note of staging file", &note)),
    };
    let mut lines = text.lines();
    match (lines.next(), lines.next().and_then(|len| len.parse().ok())) {
        (Some(etag), Some(len)) if !etag.is_empty() => Ok(Some((ETag::new(etag), len))),
        _ => Err(FsError::Local(format!(
            "the note of staging file {} is damaged",
            staging.display()
        ))),
    }
}

/// Write `text` to `path` whole or not at all (through a temporary name and a rename).
fn write_whole(path: &Path, text: &str) -> FsResult<()> {
    let partial = PathBuf::from(format!("{}.{FILLING}", path.display()));
    std::fs::write(&partial, text)
        .and_then(|()| std::fs::rename(&partial, path))
        .map_err(|e| local(e, "cannot write", path))
}

fn remove_in_store_note(staging: &Path) -> FsResult<()> {
    let note = staging.with_extension(IN_STORE);
    match std::fs::remove_file(&note) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(local(e, "cannot remove the note of staging file", &note))
        }
        _ => Ok(()),
    }
}

/// A unique name for the next staging or recovery file of this process: pid, start time (a
/// restarted worker can get a dead one's pid) and a counter.
fn unique_suffix() -> String {
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    format!(
        "{}-{}-{}",
        std::process::id(),
        START.get_or_init(super::first_handle_number),
        NEXT_STAGING.fetch_add(1, Ordering::Relaxed)
    )
}

fn local(e: std::io::Error, what: &str, path: &Path) -> FsError {
    let message = format!("{what} {}: {e}", path.display());
    if e.raw_os_error() == Some(libc::ENOSPC) {
        FsError::NoSpace(message)
    } else {
        FsError::Local(message)
    }
}

impl<S: ObjectStore> FileState<S> {
    /// A staging file in `dir` for the object `key`, starting from `initial`. With `stream`,
    /// writes from offset 0 are streamed to `key` as they come.
    pub async fn new(
        dir: &Path,
        key: &str,
        initial: Initial,
        stream: Option<StreamingUpload<S>>,
    ) -> FsResult<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| local(e, "cannot create the staging folder", dir))?;
        let name = format!("{}.staging", unique_suffix());
        let staging_path = dir.join(name);
        // Filled under another name and renamed only once it holds the object's bytes: a
        // process taking the mount over after a crash adopts every `.staging` file as the
        // file's content, and one caught before its copy would upload zeros in its place.
        let filling = staging_path.with_extension(FILLING);
        let staging = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&filling)
            .map_err(|e| local(e, "cannot create staging file", &filling))?;
        // Removed if anything below fails or the caller gives up (drops this future) first.
        let unfinished = DeleteOnDrop(Some(filling.clone()));
        let (size, base, in_store_below) = match initial {
            Initial::Copied(body, size, etag) => {
                copy_into(&staging, &filling, body, size).await?;
                (size, etag.map(|etag| (etag, size)), 0)
            }
            Initial::InStore(size, etag) => {
                staging
                    .set_len(size)
                    .map_err(|e| local(e, "cannot size staging file", &filling))?;
                (size, Some((etag, size)), size)
            }
            Initial::Empty => (0, None, 0),
        };
        let state = Self {
            key: key.to_string(),
            staging_path,
            staging,
            size,
            dirty: false,
            stream: if size == 0 { stream } else { None },
            stream_next: 0,
            ahead: BTreeMap::new(),
            detached: false,
            retired: false,
            base,
            unchanged_below: u64::MAX,
            in_store_below,
            untouched_since_create: false,
        };
        if state.in_store_below > 0 {
            // Before the rename: a `.staging` file without its note would be adopted whole.
            state.write_in_store_note(state.in_store_below)?;
        }
        let staging_path = &state.staging_path;
        std::fs::write(staging_path.with_extension("key"), key)
            .map_err(|e| local(e, "cannot write the key of staging file", staging_path))?;
        std::fs::rename(&filling, staging_path)
            .map_err(|e| local(e, "cannot rename staging file", &filling))?;
        unfinished.keep();
        Ok(state)
    }

    /// The write state a crashed process left in staging file `path` for `key`, taken over as
    /// it is: all of it counts as written, and the next commit uploads it from the file, but
    /// for the first bytes a `.base` note says are still only in the store.
    pub fn adopt(path: &Path, key: &str) -> FsResult<Self> {
        let staging = File::options()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| local(e, "cannot open staging file", path))?;
        let size = staging
            .metadata()
            .map_err(|e| local(e, "cannot read the size of staging file", path))?
            .len();
        // A damaged note: which bytes are staged is unknown, so not taken over (the file goes
        // to the recovery folder with its note).
        let (base, in_store_below) = match read_in_store_note(path)? {
            Some((etag, len)) => {
                let len = len.min(size);
                (Some((etag, len)), len)
            }
            None => (None, 0),
        };
        Ok(Self {
            key: key.to_string(),
            staging_path: path.to_path_buf(),
            staging,
            size,
            dirty: true,
            stream: None,
            stream_next: 0,
            ahead: BTreeMap::new(),
            detached: false,
            retired: false,
            base,
            unchanged_below: in_store_below,
            in_store_below,
            untouched_since_create: false,
        })
    }

    /// Write the `.base` note saying the first `len` bytes are `base`'s, only in the store
    /// (none: no note), whole or not at all: a take-over reads it to know which bytes are not
    /// staged.
    fn write_in_store_note(&self, len: u64) -> FsResult<()> {
        let Some((etag, _)) = self.base.as_ref().filter(|_| len > 0) else {
            return remove_in_store_note(&self.staging_path);
        };
        write_whole(
            &self.staging_path.with_extension(IN_STORE),
            &format!("{}\n{len}\n", etag.as_str()),
        )
    }

    /// Copy the bytes still only in the store into the staging file, if `range` reaches
    /// them: a read or a write among them needs them.
    pub async fn load_from_store(
        &mut self,
        store: &S,
        range: std::ops::Range<u64>,
    ) -> FsResult<()> {
        if range.start >= self.in_store_below || range.is_empty() {
            return Ok(());
        }
        let Some((etag, _)) = self.base.clone() else {
            return Err(FsError::Local(format!(
                "staging file {} lacks the version of its first {} bytes",
                self.staging_path.display(),
                self.in_store_below
            )));
        };
        let len = self.in_store_below;
        let body = match store.get_stream(&self.key, 0..len, Some(&etag)).await {
            // Deleted or replaced, the version is gone all the same.
            Err(e) if e.kind() == common::ErrorKind::NotFound => {
                return Err(FsError::Store(common::StoreError::new(
                    common::ErrorKind::PreconditionFailed,
                    format!("{} was deleted since this file was opened", self.key),
                )))
            }
            other => other?,
        };
        copy_into(&self.staging, &self.staging_path, body, len).await?;
        // The note goes first: a take-over finding it would stage those bytes again, harmless;
        // one not finding it while they were missing would upload zeros.
        remove_in_store_note(&self.staging_path)?;
        self.in_store_below = 0;
        Ok(())
    }

    /// The file was just created, or emptied by an open with `O_TRUNC`, by this mount.
    pub fn mark_created(&mut self) {
        self.untouched_since_create = true;
    }

    /// A close (flush) may leave this file to the last close or an fsync: it is still the
    /// empty file just created, and nothing else was done to it.
    pub fn close_can_wait(&self) -> bool {
        self.untouched_since_create
    }

    /// Mode, owner or times changed: the next commit puts the object again.
    pub fn mark_metadata_changed(&mut self) {
        self.dirty = true;
        self.untouched_since_create = false;
    }

    pub fn staging_path(&self) -> &Path {
        &self.staging_path
    }

    /// The file was renamed: its bytes now go to `key` (the `.key` file beside the staging
    /// file says so too, for recovery after a crash). Call `load_from_store` first: the
    /// version it started from was under the old name.
    pub fn set_key(&mut self, key: String) {
        if self.detached {
            // Unlinked meanwhile: nothing of it may be taken over under any name.
            self.key = key;
            return;
        }
        if let Err(e) = std::fs::write(self.staging_path.with_extension("key"), &key) {
            tracing::warn!(staging = %self.staging_path.display(), error = %e, "cannot record the new key of a staging file");
        }
        self.key = key;
        // Kept while bytes are only in the store (`load_from_store` then fails as it should:
        // they were under the old name); never the case when called as documented.
        if self.in_store_below == 0 {
            self.base = None;
        }
    }

    /// The file was unlinked while open: its bytes must never be uploaded, nor taken over by
    /// a new process under a name that may belong to another file by then.
    pub fn detach(&mut self) {
        self.detached = true;
        // Never completed: dropping the stream aborts it and gives its memory back now.
        self.ahead.clear();
        self.stream = None;
        self.remove_side_files();
    }

    /// Remove the `.key` file and, if there is one, the `.base` note beside the staging file
    /// (a note exists exactly while `in_store_below > 0`: no needless unlink per close).
    fn remove_side_files(&self) {
        let _ = std::fs::remove_file(self.staging_path.with_extension("key"));
        if self.in_store_below > 0 {
            let _ = remove_in_store_note(&self.staging_path);
        }
    }

    pub async fn write(&mut self, store: &S, offset: u64, data: &[u8]) -> FsResult<()> {
        if data.is_empty() {
            // POSIX: a zero-length write changes nothing, not even the size.
            return Ok(());
        }
        self.load_from_store(store, offset..offset + data.len() as u64)
            .await?;
        self.staging
            .write_all_at(data, offset)
            .map_err(|e| local(e, "cannot write staging file", &self.staging_path))?;
        self.size = self.size.max(offset + data.len() as u64);
        self.dirty = true;
        self.untouched_since_create = false;
        self.unchanged_below = self.unchanged_below.min(offset);
        if self.stream.is_some() {
            if let Err(reason) = self.feed_stream(offset, data).await {
                // The staging file has everything: commit will upload it instead.
                tracing::debug!(key = %self.key, %reason, "not streaming this file any more");
                self.abandon_stream().await;
            }
        }
        Ok(())
    }

    /// Hand `data` (written at `offset`) to the stream, in order: directly when it continues
    /// the stream, else later from the staging file once the gap before it is written.
    async fn feed_stream(&mut self, offset: u64, data: &[u8]) -> Result<(), String> {
        /// Out-of-order bytes tolerated before giving up on streaming (random writes).
        const MAX_AHEAD: u64 = 64 << 20;
        let end = offset + data.len() as u64;
        if offset < self.stream_next {
            return Err("rewrite of bytes already streamed".into());
        }
        let stream = self.stream.as_mut().expect("checked by the caller");
        if offset == self.stream_next {
            stream.write(data).await.map_err(|e| e.to_string())?;
            self.stream_next = end;
        } else {
            let slot = self.ahead.entry(offset).or_insert(end);
            *slot = (*slot).max(end);
        }
        // Catch up with ranges that now continue the stream.
        while let Some((&start, &stop)) = self.ahead.first_key_value() {
            if start > self.stream_next {
                break;
            }
            self.ahead.pop_first();
            if stop <= self.stream_next {
                continue;
            }
            let stream = self.stream.as_mut().expect("checked by the caller");
            send_staged(
                &self.staging,
                &self.staging_path,
                self.stream_next..stop,
                stream,
            )
            .await
            .map_err(|e| e.to_string())?;
            self.stream_next = stop;
        }
        let waiting: u64 = self.ahead.iter().map(|(s, e)| e - s).sum();
        if waiting > MAX_AHEAD {
            return Err("too much written out of order".into());
        }
        Ok(())
    }

    pub async fn read(&mut self, store: &S, offset: u64, len: u32) -> FsResult<Vec<u8>> {
        let end = self.size.min(offset.saturating_add(len as u64));
        if offset >= end {
            return Ok(Vec::new());
        }
        self.load_from_store(store, offset..end).await?;
        let mut buf = vec![0u8; (end - offset) as usize];
        self.staging
            .read_exact_at(&mut buf, offset)
            .map_err(|e| local(e, "cannot read staging file", &self.staging_path))?;
        Ok(buf)
    }

    pub async fn truncate(&mut self, size: u64) -> FsResult<()> {
        self.staging
            .set_len(size)
            .map_err(|e| local(e, "cannot truncate staging file", &self.staging_path))?;
        if size != self.size {
            self.abandon_stream().await;
        }
        self.size = size;
        self.dirty = true;
        self.untouched_since_create = false;
        self.unchanged_below = self.unchanged_below.min(size);
        if size < self.in_store_below {
            // The bytes past the new end are gone; those before it are still the base's. The
            // note first: one saying more would bring gone bytes back at a take-over.
            self.write_in_store_note(size)?;
            self.in_store_below = size;
        }
        Ok(())
    }

    /// Make the store hold exactly the staged bytes with `metadata`. On success the state is
    /// clean; on failure it stays dirty and the staging file keeps every byte.
    pub async fn commit(
        &mut self,
        store: &Arc<S>,
        metadata: UserMetadata,
        upload: &UploadConfig,
    ) -> FsResult<Option<PutResult>> {
        if !self.dirty || self.detached {
            return Ok(None);
        }
        let streamed_all =
            self.stream.is_some() && self.stream_next == self.size && self.ahead.is_empty();
        let result = match self.stream.take() {
            // A file smaller than a part is put now, with its metadata of now (its mtime is
            // that of the last write). A multipart upload carries the metadata of when it
            // began, at the first full part; changes of mode, owner or times since abandoned
            // it (see abandon_stream).
            Some(mut stream) if streamed_all => {
                stream.set_metadata(metadata.clone());
                stream.finish().await.map_err(FsError::from)
            }
            other => {
                if let Some(stream) = other {
                    stream.abort().await;
                }
                self.upload_staged(store, metadata.clone(), upload).await
            }
        };
        match result {
            Ok(put) => {
                self.dirty = false;
                self.untouched_since_create = false;
                // The bytes still only in the store were copied into the new version.
                self.base = Some((put.etag.clone(), self.size));
                self.unchanged_below = u64::MAX;
                if self.in_store_below > 0 {
                    if let Err(e) = self.write_in_store_note(self.in_store_below) {
                        tracing::warn!(error = %e, "cannot record the new version of the bytes in the store");
                    }
                }
                if self.size == 0 {
                    // Nothing is staged: the next writes can stream again. Shells and dd
                    // open, dup2 onto stdout and close the first descriptor, which commits
                    // the still-empty file before a single byte is written.
                    self.stream = Some(StreamingUpload::new(
                        store.clone(),
                        self.key.clone(),
                        metadata,
                        upload.clone(),
                    ));
                    self.stream_next = 0;
                    self.ahead.clear();
                }
                Ok(Some(put))
            }
            Err(e) => {
                tracing::error!(key = %self.key, staging = %self.staging_path.display(), error = %e,
                    "upload failed; the written data is kept in the staging file");
                Err(e)
            }
        }
    }

    async fn upload_staged(
        &mut self,
        store: &Arc<S>,
        metadata: UserMetadata,
        upload: &UploadConfig,
    ) -> FsResult<PutResult> {
        // Copying is worth it (and S3 accepts the copied parts) from a part's size on.
        let unchanged = self.base.as_ref().map_or(0, |(_, size)| {
            self.unchanged_below.min(*size).min(self.size)
        });
        if unchanged >= upload.part_size as u64 {
            match self
                .upload_with_copy(store, metadata.clone(), upload, unchanged)
                .await
            {
                Ok(put) => return Ok(put),
                // The base changed in the store (another client), or the copy failed: send
                // everything, as without a base.
                Err(e) => {
                    tracing::debug!(key = %self.key, error = %e, "cannot copy the unchanged bytes; uploading all of them")
                }
            }
        }
        // All from the staging file, which must hold them all (if the base was replaced
        // meanwhile, its bytes are gone: ESTALE, and the staging file keeps what was written).
        self.load_from_store(store, 0..self.size).await?;
        // No other way to send these bytes: wait for memory rather than fail.
        let mut up =
            StreamingUpload::new(store.clone(), self.key.clone(), metadata, upload.clone())
                .waiting_for_memory(self.size);
        send_staged(&self.staging, &self.staging_path, 0..self.size, &mut up).await?;
        Ok(up.finish().await?)
    }

    /// Upload the staged bytes with the first `unchanged` copied by the store from the base
    /// version. Ceph RGW ignores the ETag condition on copied parts, so the base's ETag is
    /// checked once they are done: a base another client replaced meanwhile is an error, not
    /// a mix of two versions.
    async fn upload_with_copy(
        &self,
        store: &Arc<S>,
        metadata: UserMetadata,
        upload: &UploadConfig,
        unchanged: u64,
    ) -> common::StoreResult<PutResult> {
        let (etag, _) = self.base.as_ref().expect("checked by the caller");
        let mut up =
            StreamingUpload::new(store.clone(), self.key.clone(), metadata, upload.clone())
                .waiting_for_memory(self.size);
        up.copy(&self.key, 0..unchanged, etag).await?;
        up.settle().await?;
        if let Err(e) = s3_backend::copy::check_unchanged(&**store, &self.key, etag).await {
            up.abort().await;
            return Err(e);
        }
        send_staged(
            &self.staging,
            &self.staging_path,
            unchanged..self.size,
            &mut up,
        )
        .await?;
        up.finish().await
    }

    /// Give the object the `metadata` made now, if the stream has not begun its upload yet
    /// (which fixes the metadata).
    pub fn set_stream_metadata(&mut self, metadata: impl FnOnce() -> Option<UserMetadata>) {
        if let Some(stream) = self.stream.as_mut().filter(|s| !s.started()) {
            if let Some(metadata) = metadata() {
                stream.set_metadata(metadata);
            }
        }
    }

    /// Stop streaming: the metadata changed (chmod, chown, utimens) after the upload began,
    /// so the commit must upload the staged bytes with the new metadata.
    pub async fn abandon_stream(&mut self) {
        self.ahead.clear();
        if let Some(stream) = self.stream.take() {
            stream.abort().await;
        }
    }

    /// Drop the staging file (after a successful commit).
    pub fn discard(&self) {
        let _ = std::fs::remove_file(&self.staging_path);
        self.remove_side_files();
    }

    /// Keep the staged bytes for recovery: move the file to `dir`, named after the key.
    pub fn keep_for_recovery(&self, dir: &Path) -> PathBuf {
        move_to_recovery(&self.staging_path, &self.key, dir)
    }
}

/// The staging files in `staging_dir` that name their object (in a `.key` file beside them),
/// with that key.
pub fn staged_files(staging_dir: &Path) -> Vec<(PathBuf, String)> {
    let Ok(entries) = std::fs::read_dir(staging_dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "staging"))
        .filter_map(|path| {
            let key = std::fs::read_to_string(path.with_extension("key")).ok()?;
            Some((path, key))
        })
        .collect()
}

/// Move the staging files a crash left in `staging_dir` to `recovery_dir`, named after their
/// keys, and return where each went; those in `keep` (taken over) stay. Call before any file
/// of this run is staged there.
pub fn rescue_leftover_staging(
    staging_dir: &Path,
    recovery_dir: &Path,
    keep: &std::collections::HashSet<PathBuf>,
) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(staging_dir) else {
        return Vec::new();
    };
    let mut rescued = Vec::new();
    for path in entries.flatten().map(|e| e.path()) {
        if keep.contains(&path) {
            continue;
        }
        if path.extension().is_some_and(|ext| ext == "staging") {
            match std::fs::read_to_string(path.with_extension("key")) {
                Ok(key) => rescued.push(move_to_recovery(&path, &key, recovery_dir)),
                // The key is written before the staging file and removed only when the file
                // is unlinked while open (`detach`): its bytes belong to no file any more.
                Err(_) => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        } else if path
            .extension()
            .is_some_and(|ext| ext == "key" || ext == IN_STORE)
            && !path.with_extension("staging").exists()
        {
            // Written just before a crash that came before its staging file.
            let _ = std::fs::remove_file(&path);
        } else if path.extension().is_some_and(|ext| ext == FILLING) {
            // A copy of an object's bytes a crash interrupted: nothing written through the
            // mount is in it yet.
            let _ = std::fs::remove_file(&path);
        }
    }
    rescued
}

/// The `.base` note beside recovery file `path`: `<ETag>\n<length>\n<key>\n`.
fn recovered_note(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.{IN_STORE}", path.display()))
}

/// Fill in the first bytes of recovery file `path` that its `.base` note says were only in
/// the store, if that version is still there; the note goes once they are in.
pub async fn fill_recovered<S: ObjectStore>(store: &S, path: &Path) -> FsResult<()> {
    let note = recovered_note(path);
    let Ok(text) = std::fs::read_to_string(&note) else {
        return Ok(());
    };
    let mut lines = text.lines();
    let (Some(etag), Some(len), Some(key)) = (
        lines.next(),
        lines.next().and_then(|len| len.parse::<u64>().ok()),
        lines.next(),
    ) else {
        return Err(FsError::Local(format!("damaged note {}", note.display())));
    };
    let file = File::options()
        .write(true)
        .open(path)
        .map_err(|e| local(e, "cannot open recovery file", path))?;
    // Never past the file's end: a truncate may have shortened it after the note was written.
    let len = len.min(
        file.metadata()
            .map_err(|e| local(e, "cannot read the size of", path))?
            .len(),
    );
    let body = store
        .get_stream(key, 0..len, Some(&ETag::new(etag)))
        .await?;
    copy_into(&file, path, body, len).await?;
    std::fs::remove_file(&note).map_err(|e| local(e, "cannot remove note", &note))
}

/// Move staging file `path` of `key` into `dir`, as `<key with / as %>.<n>`; returns the new
/// path, or the old one if the move failed (the bytes stay where they are either way).
fn move_to_recovery(path: &Path, key: &str, dir: &Path) -> PathBuf {
    let _ = std::fs::create_dir_all(dir);
    let mut name: String = key
        .chars()
        .map(|c| if c == '/' { '%' } else { c })
        .collect();
    // Leave room for the suffix within the 255 bytes of a file name.
    while name.len() > 200 {
        name.pop();
    }
    let target = dir.join(format!("{name}.{}", unique_suffix()));
    // Its first bytes were still only in the store: the note beside it says which, with the
    // key (file names in the recovery folder are only like it). Written before the move: a
    // crash in between leaves a note too many, never a file with zeros and no note.
    let note = path.with_extension(IN_STORE);
    let noted = match std::fs::read_to_string(&note) {
        Ok(text) => {
            if write_whole(&recovered_note(&target), &format!("{text}{key}\n")).is_err() {
                return path.to_path_buf();
            }
            true
        }
        Err(_) => false,
    };
    match std::fs::rename(path, &target) {
        Ok(()) => {
            let _ = std::fs::remove_file(path.with_extension("key"));
            if noted {
                let _ = std::fs::remove_file(&note);
            }
            target
        }
        Err(_) => {
            let _ = std::fs::remove_file(recovered_note(&target));
            path.to_path_buf()
        }
    }
}
