//! The filesystem core: POSIX-ish operations over an [`ObjectStore`], with no FUSE types, so it
//! is tested directly over the in-memory store. `fuse.rs` adapts it to fuser.
//!
//! Layout (docs/SEMANTICS.md has the whole contract): file `a/b` of a volume with prefix `p/` is
//! object `p/a/b`; directories are key prefixes, plus an empty `a/` marker written by mkdir;
//! mode, uid, gid and mtime are s3fs-style user metadata ([`metadata`]).
//!
//! Caching: attributes of an inode are trusted for `attr_ttl` after the store confirmed them; a
//! name found missing is trusted missing for `negative_ttl`. Listings fill attributes (size,
//! mtime) without HEAD requests; mode/uid/gid of an object are learnt by the lookup (HEAD) that
//! follows once the listing's attributes expire, or right away for names never listed.

pub mod error;
pub mod files;
mod gate;
pub mod inodes;
pub mod journal;
pub mod metadata;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use common::{ErrorKind, ListParams, ObjectMeta, ObjectStore, PutResult, UserMetadata};
use s3_backend::cache::{CacheConfig, CacheTiers, ChunkCache, ObjectVersion};
use s3_backend::readahead::{ReadaheadConfig, SequentialReader};
use s3_backend::upload::UploadConfig;
use s3_backend::upload_journal::{LeftoverUploads, UploadJournal};

pub use error::{FsError, FsResult};
use files::{FileState, Initial};
use inodes::{Answer, InodeTable};
pub use inodes::{Attr, Kind, ROOT_INO};
use journal::InodeJournal;
use metadata::{StoredAttrs, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};

/// Settings of one mounted volume.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FsConfig {
    /// Key prefix of the volume: empty (whole bucket) or ending in `/`.
    pub prefix: String,
    /// Owner and permissions of objects that carry no metadata.
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u32,
    pub dir_mode: u32,
    pub read_only: bool,
    pub attr_ttl: Duration,
    pub negative_ttl: Duration,
    /// Where written files are staged until the store has them.
    pub staging_dir: PathBuf,
    /// Where staged data goes when its upload failed at the last close, or when a crash left
    /// it behind.
    pub recovery_dir: PathBuf,
    /// Where multipart uploads in progress are recorded, so a crash's leftovers are aborted.
    pub uploads_dir: PathBuf,
    /// Where the inode numbers given to the kernel are recorded, so that another process can
    /// take the mount over after a crash ([`Fs::take_over`]); `None`: not recorded.
    pub inode_journal: Option<PathBuf>,
    pub cache: CacheConfig,
    /// Tiers shared with other volumes; `None`: tiers of its own, sized by `cache`.
    pub shared_tiers: Option<Arc<CacheTiers>>,
    pub readahead: ReadaheadConfig,
    pub upload: UploadConfig,
}

impl FsConfig {
    /// Defaults for a volume whose local files live under `local_dir`.
    pub fn new(local_dir: impl Into<PathBuf>) -> Self {
        let local_dir = local_dir.into();
        Self {
            prefix: String::new(),
            uid: 0,
            gid: 0,
            file_mode: 0o644,
            dir_mode: 0o755,
            read_only: false,
            attr_ttl: Duration::from_secs(1),
            negative_ttl: Duration::from_secs(1),
            staging_dir: local_dir.join("staging"),
            recovery_dir: local_dir.join("recovery"),
            uploads_dir: local_dir.join("uploads"),
            inode_journal: None,
            cache: CacheConfig::default(),
            shared_tiers: None,
            readahead: ReadaheadConfig::default(),
            upload: UploadConfig::default(),
        }
    }

    /// Mount `prefix` of the bucket; a missing trailing `/` is added.
    pub fn prefix(mut self, prefix: &str) -> Self {
        let trimmed = prefix.trim_matches('/');
        self.prefix = if trimmed.is_empty() {
            String::new()
        } else {
            format!("{trimmed}/")
        };
        self
    }

    pub fn owner(mut self, uid: u32, gid: u32) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    pub fn modes(mut self, file_mode: u32, dir_mode: u32) -> Self {
        self.file_mode = file_mode & 0o7777;
        self.dir_mode = dir_mode & 0o7777;
        self
    }

    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    pub fn ttls(mut self, attr: Duration, negative: Duration) -> Self {
        self.attr_ttl = attr;
        self.negative_ttl = negative;
        self
    }

    pub fn cache(mut self, cache: CacheConfig) -> Self {
        self.cache = cache;
        self
    }

    /// Keep cached chunks in `tiers`, shared with other volumes (one budget for all).
    pub fn shared_tiers(mut self, tiers: Arc<CacheTiers>) -> Self {
        self.shared_tiers = Some(tiers);
        self
    }

    /// Record inode numbers in `<local folder>/inodes.journal`, so that the mount can be taken
    /// over after a crash of the process serving it.
    pub fn journal_inodes(mut self) -> Self {
        self.inode_journal = Some(self.uploads_dir.with_file_name("inodes.journal"));
        self
    }

    pub fn upload(mut self, upload: UploadConfig) -> Self {
        self.upload = upload;
        self
    }
}

/// What [`Fs::recover_leftovers`] found from an earlier run.
#[derive(Debug, Default)]
pub struct Leftovers {
    /// Staging files moved to the recovery folder.
    pub rescued: Vec<PathBuf>,
    pub uploads: LeftoverUploads,
    /// The fill, in the background, of the first bytes of rescued files that were only in
    /// the store (see `files::fill_recovered`): the mount does not wait for it.
    pub filling: Option<tokio::task::JoinHandle<()>>,
}

/// What [`Fs::create`] does when the name exists already: open(2)'s `O_EXCL` and `O_TRUNC`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfExists {
    /// `O_EXCL`: fail with `Exists`.
    Fail,
    /// Open the file as it is.
    Open,
    /// `O_TRUNC`: open it emptied.
    Truncate,
}

/// Attribute changes of `setattr`; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub mtime: Option<SystemTime>,
}

/// One entry of a directory listing.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: String,
    pub attr: Attr,
}

#[derive(Debug)]
struct Handle<S: ObjectStore> {
    ino: u64,
    writable: bool,
    /// Its reader, and the count of renames when the reader's key was last checked.
    reader: Option<(Arc<tokio::sync::Mutex<SequentialReader<S>>>, u64)>,
    /// The object version the open found, which the kernel's cached pages were kept for: its
    /// reader reads that version, not one seen later, so that the pages the kernel has and
    /// the reads it sends never mix two versions.
    opened_as: Option<OpenedVersion>,
}

/// See [`Handle::opened_as`].
#[derive(Debug, Clone)]
struct OpenedVersion {
    etag: common::ETag,
    size: u64,
    /// The count of renames then: after a rename of the file (or a folder above it) the
    /// object is a copy, which may have another ETag.
    renames: u64,
}

type SharedFile<S> = Arc<tokio::sync::Mutex<FileState<S>>>;
/// A write state held locked, that knows its own [`SharedFile`].
type LockedFile<S> = tokio::sync::OwnedMutexGuard<FileState<S>>;

/// The inode table is not swept below this many inodes.
const MIN_SWEEP: usize = 4096;

/// Pages of a directory listed to answer a lookup in it (see `lookup`).
const LOOKUP_LISTING_PAGES: usize = 2;

/// What the disk tier of the cache deletes, at least, when a write finds the disk full: room
/// for the next writes too, not one failed write per chunk.
const GIVE_WAY_AT_LEAST: u64 = 64 << 20;

/// Stale `getattr`s of files of one directory within an attribute TTL from which the next
/// one lists the directory instead of HEADing the file (see `getattr`).
const STALE_STATS_BEFORE_LISTING: u32 = 4;

/// The names a directory had when it was listed.
#[derive(Debug)]
struct Listing {
    at: Instant,
    /// Each name, and whether it is a directory; `None` when the directory has more entries
    /// than `LOOKUP_LISTING_PAGES` pages: not worth keeping.
    names: Option<HashMap<String, bool>>,
    /// The listing had keys below the directory that no file name can stand for (`d//x`, a
    /// name over 255 bytes): not shown, but the directory is not empty.
    hides_keys: bool,
}

impl Listing {
    /// A listing that kept no names (too big, or too old to trust after a change).
    fn without_names(at: Instant) -> Self {
        Self {
            at,
            names: None,
            hides_keys: false,
        }
    }
}

/// How `rmdir` learns that a directory is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EmptyCheck {
    /// From a fresh listing that shows it empty, else from the store.
    MayTrustListing,
    /// From the store, always.
    AskTheStore,
}

/// What a fresh listing of a directory says of a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listed {
    /// No such name in a listing taken at `listed_at`.
    Absent {
        listed_at: Instant,
    },
    /// An object of that name, and no directory (which would shadow it).
    Object,
    Dir,
    /// The listing was too big to keep its names.
    Unknown,
}

/// The filesystem over a store `S`.
#[derive(Debug)]
pub struct Fs<S: ObjectStore> {
    store: Arc<S>,
    cache: Arc<ChunkCache<S>>,
    config: FsConfig,
    inodes: Mutex<InodeTable>,
    negative: Mutex<HashMap<String, Instant>>,
    /// Names in recently listed directories (`None`: too big to keep), by directory inode.
    listings: Mutex<HashMap<u64, Listing>>,
    /// When this mount last changed the entries of a directory (create, unlink, rename,
    /// mkdir, rmdir), by its inode: a listing that began before that is older than what the
    /// mount knows of the directory's names.
    entries_changed: Mutex<HashMap<u64, Instant>>,
    /// Held by each rename from start to end (see `rename`).
    renames: tokio::sync::Mutex<()>,
    /// Keeps operations off the names a rename is moving (see `gate`).
    gate: gate::RenameGate,
    /// Renames done so far: a handle's reader checks its key again only after one.
    renamed: AtomicU64,
    /// Stale `getattr`s of files, by directory inode: since when (within a TTL), how many.
    stale_stats: Mutex<HashMap<u64, (Instant, u32)>>,
    /// Write state of files with written data, by inode.
    files: Mutex<HashMap<u64, SharedFile<S>>>,
    /// Open handles per inode.
    open_counts: Mutex<HashMap<u64, u32>>,
    handles: Mutex<HashMap<u64, Handle<S>>>,
    next_fh: AtomicU64,
    /// Sweep the inode table when it grows past this many inodes...
    sweep_at: std::sync::atomic::AtomicUsize,
    /// ... and the last sweep is older than the attribute TTL (nothing gets stale faster).
    last_sweep: Mutex<Option<Instant>>,
    /// Handles below this number are from the process this one took the mount over from.
    first_fh: u64,
}

/// The first handle number of a process: nanoseconds since boot, so it is above every number
/// an earlier process serving the same mount gave out (one per nanosecond at most), which a
/// process taking the mount over must tell from its own. The boot clock never steps back.
pub fn first_handle_number() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| (t.tv_sec() as u64).saturating_mul(1_000_000_000) + t.tv_nsec() as u64)
        .unwrap_or(1)
        .max(1)
}

/// A name in a directory: 1 to 255 bytes, no `/` or NUL, not `.` or `..`.
fn check_name(name: &str) -> FsResult<()> {
    if name.len() > 255 {
        return Err(FsError::NameTooLong);
    }
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(FsError::Invalid("bad file name"));
    }
    Ok(())
}

/// Whether `path` is `top` or a path below it.
fn is_at_or_below(path: &str, top: &str) -> bool {
    path.strip_prefix(top)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

impl<S: ObjectStore> Fs<S> {
    /// The filesystem of a new mount.
    pub fn new(store: Arc<S>, config: FsConfig) -> FsResult<Self> {
        let mut inodes = InodeTable::new(Self::root_attr(&config));
        if let Some(path) = &config.inode_journal {
            let journal = InodeJournal::create(path).map_err(|e| {
                FsError::Local(format!(
                    "cannot create the inode journal {}: {e}",
                    path.display()
                ))
            })?;
            inodes = inodes.with_journal(journal);
        }
        Self::with_inodes(store, config, inodes)
    }

    /// The filesystem of a mount whose serving process died, for a process that takes the
    /// mount over (its `/dev/fuse` connection): the inode numbers the kernel holds come from
    /// the inode journal, and files being written when the old process died from their
    /// staging files. Handles the kernel holds are taken up when first used
    /// ([`take_up_handle`](Self::take_up_handle)).
    pub async fn take_over(store: Arc<S>, config: FsConfig) -> FsResult<Self> {
        let path = config.inode_journal.clone().ok_or(FsError::Invalid(
            "taking a mount over needs its inode journal",
        ))?;
        let (journal, journaled) = InodeJournal::take_over(&path).map_err(|e| {
            FsError::Local(format!(
                "cannot read the inode journal {}: {e}",
                path.display()
            ))
        })?;
        let stale = Instant::now()
            .checked_sub(config.attr_ttl)
            .unwrap_or_else(Instant::now);
        let placeholder = |kind| Attr {
            kind,
            perm: if kind == Kind::Dir {
                config.dir_mode
            } else {
                config.file_mode
            },
            ..Self::dir_attr_of(&config, SystemTime::now())
        };
        let inodes = InodeTable::restore(Self::root_attr(&config), journaled, placeholder, stale)
            .with_journal(journal);
        let fs = Self::with_inodes(store, config, inodes)?;
        fs.adopt_staged_files().await;
        Ok(fs)
    }

    fn root_attr(config: &FsConfig) -> Attr {
        Attr {
            ino: ROOT_INO,
            ..Self::dir_attr_of(config, SystemTime::now())
        }
    }

    fn with_inodes(store: Arc<S>, mut config: FsConfig, inodes: InodeTable) -> FsResult<Self> {
        let first_fh = first_handle_number();
        config.upload.journal = Some(UploadJournal::new(&config.uploads_dir));
        let cache = match &config.shared_tiers {
            Some(tiers) => {
                ChunkCache::with_tiers(store.clone(), config.cache.clone(), tiers.clone())
            }
            None => ChunkCache::new(store.clone(), config.cache.clone())
                .map_err(|e| FsError::Local(format!("cannot open the cache folder: {e}")))?,
        };
        if config.upload.budget.is_none() {
            config.upload.budget = Some(cache.tiers().write_budget().clone());
        }
        Ok(Self {
            store,
            cache: Arc::new(cache),
            inodes: Mutex::new(inodes),
            negative: Mutex::new(HashMap::new()),
            listings: Mutex::new(HashMap::new()),
            entries_changed: Mutex::new(HashMap::new()),
            renames: tokio::sync::Mutex::new(()),
            gate: gate::RenameGate::default(),
            renamed: AtomicU64::new(0),
            stale_stats: Mutex::new(HashMap::new()),
            files: Mutex::new(HashMap::new()),
            open_counts: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(first_fh),
            sweep_at: std::sync::atomic::AtomicUsize::new(MIN_SWEEP),
            last_sweep: Mutex::new(None),
            first_fh,
            config,
        })
    }

    /// Take up the files the old process was writing: each staging file whose key names an
    /// inode of the journal becomes that file's write state again, uploaded at its next commit.
    async fn adopt_staged_files(&self) {
        // Containers wait on the mount until the takeover ends: the objects' modes and owners
        // are asked for only this long in all (a backend that is down would hold every HEAD
        // for its whole timeout); the rest come with the next lookup after the TTL.
        const METADATA_TIME: Duration = Duration::from_secs(2);
        let metadata_deadline = tokio::time::Instant::now() + METADATA_TIME;
        // One per key, the last written: an older one of the same key (left by an earlier
        // crash) goes to the recovery folder.
        let mut newest: HashMap<String, (SystemTime, PathBuf)> = HashMap::new();
        for (staging, key) in files::staged_files(&self.config.staging_dir) {
            let written = std::fs::metadata(&staging)
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            if newest.get(&key).is_none_or(|(other, _)| *other <= written) {
                newest.insert(key, (written, staging));
            }
        }
        for (key, (_, staging)) in newest {
            let Some(path) = key.strip_prefix(&self.config.prefix) else {
                continue;
            };
            let Some(ino) = self
                .inodes
                .lock()
                .unwrap()
                .by_path(path)
                .filter(|i| i.attr.kind == Kind::File)
                .map(|i| i.attr.ino)
            else {
                continue;
            };
            match FileState::adopt(&staging, &key) {
                Ok(state) => {
                    tracing::info!(key, staging = %staging.display(), "took over a file being written");
                    // Listings and readdirplus give the table's size of files being written.
                    if let Some(inode) = self.inodes.lock().unwrap().get_mut(ino) {
                        inode.attr.size = state.size;
                    }
                    self.files
                        .lock()
                        .unwrap()
                        .insert(ino, Arc::new(tokio::sync::Mutex::new(state)));
                }
                Err(e) => tracing::error!(key, error = %e, "cannot take over a file being written"),
            }
            // Its mode and owner, as the object has them, unless set through the mount.
            let known = self
                .inodes
                .lock()
                .unwrap()
                .get(ino)
                .is_some_and(|i| i.metadata_known);
            if known {
                continue;
            }
            if let Ok(Ok(meta)) =
                tokio::time::timeout_at(metadata_deadline, self.store.head(&key)).await
            {
                let attr = self.attr_from_meta(&meta);
                if let Some(inode) = self.inodes.lock().unwrap().get_mut(ino) {
                    inode.attr = Attr {
                        ino,
                        size: inode.attr.size,
                        ..attr
                    };
                    inode.metadata_known = true;
                }
            }
        }
    }

    /// Make `fh` a handle of `ino` again if it is one the kernel got from the process this one
    /// took the mount over from (its open files live on). Other unknown handles stay unknown.
    /// It is taken up as writable: the kernel sends writes only for handles opened for writing.
    pub fn take_up_handle(&self, fh: u64, ino: u64) {
        if fh >= self.first_fh {
            return;
        }
        let mut handles = self.handles.lock().unwrap();
        if handles.contains_key(&fh) || self.inodes.lock().unwrap().get(ino).is_none() {
            return;
        }
        handles.insert(
            fh,
            Handle {
                ino,
                writable: true,
                reader: None,
                opened_as: None,
            },
        );
        *self.open_counts.lock().unwrap().entry(ino).or_default() += 1;
    }

    /// The kernel was given an entry of `attr` as `name` in `parent` (a lookup, create, mkdir,
    /// symlink or readdirplus answer): it holds the inode until it forgets it.
    pub fn entry_given(&self, parent: u64, name: &str, attr: &Attr) {
        self.inodes.lock().unwrap().entry_given(parent, name, attr);
    }

    /// The kernel forgot `n` entries of `ino`; the inode goes once it holds none and no open
    /// file or written data uses it.
    pub fn forget(&self, ino: u64, n: u64) {
        let mut inodes = self.inodes.lock().unwrap();
        if inodes.forget(ino, n) && !self.in_use(ino) {
            inodes.drop_inode(ino);
            drop(inodes);
            self.listings.lock().unwrap().remove(&ino);
        }
    }

    /// Whether an open handle or written data uses inode `ino`.
    fn in_use(&self, ino: u64) -> bool {
        self.files.lock().unwrap().contains_key(&ino)
            || self.open_counts.lock().unwrap().contains_key(&ino)
    }

    /// Whether inode `ino` still has its name: not removed (unlinked, or replaced by a
    /// rename) while open.
    pub fn is_named(&self, ino: u64) -> bool {
        self.inodes.lock().unwrap().is_named(ino)
    }

    /// How many inodes the table holds (the root included).
    pub fn inode_count(&self) -> usize {
        self.inodes.lock().unwrap().len()
    }

    /// Drop the inodes that only a listing brought in, now stale, once the table holds twice
    /// as many as the kernel does (and at least `MIN_SWEEP`): listing a big tree must not keep
    /// every name in memory. Each sweep costs one pass over the table, and the next one waits
    /// until the table has grown again, so the cost per new inode stays constant.
    fn sweep_inodes(&self) {
        let sweep_at = self.sweep_at.load(Ordering::Relaxed);
        let mut inodes = self.inodes.lock().unwrap();
        if inodes.len() <= sweep_at {
            return;
        }
        {
            let mut last = self.last_sweep.lock().unwrap();
            if last.is_some_and(|t| t.elapsed() < self.config.attr_ttl) {
                return;
            }
            *last = Some(Instant::now());
        }
        let stale = Instant::now()
            .checked_sub(self.config.attr_ttl)
            .unwrap_or_else(Instant::now);
        let mut dropped = Vec::new();
        for ino in inodes.unheld_before(stale) {
            if !self.in_use(ino) {
                inodes.drop_inode(ino);
                dropped.push(ino);
            }
        }
        self.sweep_at
            .store((2 * inodes.held()).max(MIN_SWEEP), Ordering::Relaxed);
        drop(inodes);
        let mut listings = self.listings.lock().unwrap();
        for ino in dropped {
            listings.remove(&ino);
        }
    }

    /// Forget the inode journal (clean unmount: nothing to take over).
    pub fn remove_inode_journal(&self) {
        self.inodes.lock().unwrap().remove_journal();
    }

    pub fn config(&self) -> &FsConfig {
        &self.config
    }

    /// The chunk cache's counters (hits, fetches), for status and metrics.
    pub fn cache_stats(&self) -> &s3_backend::cache::CacheStats {
        self.cache.stats()
    }

    /// Put the chunk cache's sizes into the process metrics (before they are read).
    pub fn publish_cache_metrics(&self) {
        self.cache.publish_metrics();
    }

    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// Clean up after a crash of an earlier run on this volume: staging files it left (data
    /// written but never acknowledged) move to the recovery folder, and the multipart uploads it
    /// left unfinished are aborted. Call once, before the mount serves anything.
    pub async fn recover_leftovers(&self) -> Leftovers {
        let taken_over: HashSet<PathBuf> = {
            let files: Vec<SharedFile<S>> = self.files.lock().unwrap().values().cloned().collect();
            let mut paths = HashSet::new();
            for state in files {
                paths.insert(state.lock().await.staging_path().to_path_buf());
            }
            paths
        };
        let rescued = files::rescue_leftover_staging(
            &self.config.staging_dir,
            &self.config.recovery_dir,
            &taken_over,
        );
        for path in &rescued {
            tracing::error!(file = %path.display(), "an earlier run stopped before uploading this file; its data is kept in the recovery folder");
        }
        let filling = (!rescued.is_empty()).then(|| {
            let (store, rescued) = (self.store.clone(), rescued.clone());
            tokio::spawn(async move {
                for path in rescued {
                    if let Err(e) = files::fill_recovered(&*store, &path).await {
                        tracing::error!(file = %path.display(), error = %e, "cannot fill in the first bytes of a recovered file from the store; its .base note says which they are");
                    }
                }
            })
        });
        // Bounded, because a mount must not wait long on a slow store; what is left waits for
        // the next start.
        const ABORT_TIME: Duration = Duration::from_secs(10);
        let uploads = match &self.config.upload.journal {
            Some(journal) => {
                tokio::time::timeout(ABORT_TIME, journal.abort_leftovers(self.store.as_ref()))
                    .await
                    .unwrap_or_else(|_| {
                        tracing::warn!("aborting the uploads of an earlier run took too long; the rest wait for the next start");
                        LeftoverUploads::default()
                    })
            }
            None => LeftoverUploads::default(),
        };
        Leftovers {
            rescued,
            uploads,
            filling,
        }
    }

    fn key(&self, path: &str) -> String {
        format!("{}{path}", self.config.prefix)
    }

    /// The key of directory `path`'s marker object (`dir/`), which carries its mode, owner
    /// and mtime.
    fn marker_key(&self, path: &str) -> String {
        format!("{}/", self.key(path))
    }

    /// The key prefix of a directory's children.
    fn dir_prefix(&self, path: &str) -> String {
        if path.is_empty() {
            self.config.prefix.clone()
        } else {
            format!("{}{path}/", self.config.prefix)
        }
    }

    fn check_writable(&self) -> FsResult<()> {
        if self.config.read_only {
            Err(FsError::ReadOnly)
        } else {
            Ok(())
        }
    }

    fn inode_path(&self, ino: u64) -> FsResult<(String, Attr)> {
        let inodes = self.inodes.lock().unwrap();
        let inode = inodes.get(ino).ok_or(FsError::NotFound)?;
        Ok((inode.path.clone(), inode.attr.clone()))
    }

    fn dir_path(&self, ino: u64) -> FsResult<String> {
        let (path, attr) = self.inode_path(ino)?;
        if attr.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        Ok(path)
    }

    /// Run `op`, an operation on the name `name` in directory `parent`, through the rename
    /// gate (see `gate`): not while a rename moves that name, and with no rename moving it
    /// until `op` is done.
    async fn on_child<T>(
        &self,
        parent: u64,
        name: &str,
        op: impl std::future::Future<Output = FsResult<T>>,
    ) -> FsResult<T> {
        if gate::is_through_gate() {
            return op.await;
        }
        let _pass = self
            .pass_at(|| Ok(join(&self.dir_path(parent)?, name)))
            .await?;
        gate::through_gate(op).await
    }

    /// [`on_child`](Self::on_child) for an operation on inode `ino`.
    async fn on_inode<T>(
        &self,
        ino: u64,
        op: impl std::future::Future<Output = FsResult<T>>,
    ) -> FsResult<T> {
        if gate::is_through_gate() {
            return op.await;
        }
        let _pass = self
            .pass_at(|| self.inode_path(ino).map(|(path, _)| path))
            .await?;
        gate::through_gate(op).await
    }

    /// A pass through the rename gate at the path `path_now` gives, once no rename moves it.
    async fn pass_at(&self, path_now: impl Fn() -> FsResult<String>) -> FsResult<gate::Pass<'_>> {
        loop {
            let path = path_now()?;
            let pass = self.gate.pass(&path).await;
            // Moved by a rename while this waited: through at its new path.
            if path_now()? == path {
                return Ok(pass);
            }
        }
    }

    fn file_state(&self, ino: u64) -> Option<SharedFile<S>> {
        self.files.lock().unwrap().get(&ino).cloned()
    }

    fn attr_from_meta(&self, meta: &ObjectMeta) -> Attr {
        let stored = StoredAttrs::decode(&meta.user_metadata);
        let mode = stored.mode.unwrap_or(S_IFREG | self.config.file_mode);
        let kind = match mode & S_IFMT {
            S_IFLNK => Kind::Symlink,
            S_IFDIR => Kind::Dir,
            _ => Kind::File,
        };
        Attr {
            ino: 0,
            kind,
            size: meta.size,
            perm: mode & 0o7777,
            uid: stored.uid.unwrap_or(self.config.uid),
            gid: stored.gid.unwrap_or(self.config.gid),
            mtime: stored.mtime.unwrap_or(meta.last_modified),
        }
    }

    /// A directory's attributes from its marker object: those s3fs stores, the volume's
    /// defaults for what it lacks.
    fn attr_from_marker(&self, meta: &ObjectMeta) -> Attr {
        let stored = StoredAttrs::decode(&meta.user_metadata);
        Attr {
            perm: stored
                .mode
                .map_or(self.config.dir_mode, |mode| mode & 0o7777),
            uid: stored.uid.unwrap_or(self.config.uid),
            gid: stored.gid.unwrap_or(self.config.gid),
            mtime: stored.mtime.unwrap_or(meta.last_modified),
            ..self.dir_attr(meta.last_modified)
        }
    }

    fn dir_attr(&self, mtime: SystemTime) -> Attr {
        Self::dir_attr_of(&self.config, mtime)
    }

    fn dir_attr_of(config: &FsConfig, mtime: SystemTime) -> Attr {
        Attr {
            ino: 0,
            kind: Kind::Dir,
            size: 0,
            perm: config.dir_mode,
            uid: config.uid,
            gid: config.gid,
            mtime,
        }
    }

    fn is_fresh(&self, fetched: Instant) -> bool {
        fetched.elapsed() < self.config.attr_ttl
    }

    fn negative_hit(&self, path: &str) -> bool {
        let mut negative = self.negative.lock().unwrap();
        match negative.get(path) {
            Some(t) if t.elapsed() < self.config.negative_ttl => true,
            Some(_) => {
                negative.remove(path);
                false
            }
            None => false,
        }
    }

    /// Whether `answer`, a HEAD about `path` sent at `asked`, came back older than what this
    /// mount learnt of `path` since: found it missing (or removed it), or changed or confirmed
    /// it ([`Inode::knows_more_than`]). The answer must then not replace what the mount
    /// knows (an `ls` running while a file is rewritten or removed would bring back its old
    /// size, or the file itself).
    fn answer_outdated(&self, path: &str, asked: Instant, answer: Answer) -> bool {
        // Both under the table's lock, which an unlink holds while it records the removal.
        let inodes = self.inodes.lock().unwrap();
        let missing_since = self.negative.lock().unwrap().get(path).copied();
        missing_since.is_some_and(|at| at >= asked)
            || inodes
                .by_path(path)
                .is_some_and(|inode| inode.knows_more_than(asked, answer))
    }

    /// The entry at `path` as this mount knows it, for an answer of the store that came back
    /// older than that (see [`answer_outdated`](Self::answer_outdated)).
    fn known_entry(&self, path: &str) -> FsResult<Attr> {
        let inodes = self.inodes.lock().unwrap();
        inodes
            .by_path(path)
            .map(|inode| inode.attr.clone())
            .ok_or(FsError::NotFound)
    }

    /// Forget `path` (unlinked, removed or moved away by this mount) and remember it missing,
    /// in one step for [`answer_outdated`](Self::answer_outdated) and listings.
    fn record_removal(&self, path: &str) {
        let mut inodes = self.inodes.lock().unwrap();
        inodes.remove_path(path);
        self.set_negative(path, true);
    }

    fn set_negative(&self, path: &str, missing: bool) {
        if missing {
            self.note_missing_since(path, Instant::now());
        } else {
            self.negative.lock().unwrap().remove(path);
        }
    }

    /// Remember `path` missing as the store showed it at `since` (when the listing or HEAD
    /// that found it missing was sent), so another client's object there shows at the latest
    /// one negative TTL after that, however late the name is looked up.
    fn note_missing_since(&self, path: &str, since: Instant) {
        let mut negative = self.negative.lock().unwrap();
        let at = negative.entry(path.to_string()).or_insert(since);
        *at = (*at).max(since);
    }

    /// The attributes of `path` if they can be used without asking the store: confirmed
    /// within the TTL (by a HEAD, a listing or our own upload), or the file has written data
    /// here. Within the TTL a listing's attributes are trusted too: a HEAD per entry would make
    /// `ls -l` of a big directory a request storm (SEMANTICS.md).
    fn trusted_attr(&self, path: &str) -> Option<Attr> {
        let inodes = self.inodes.lock().unwrap();
        let inode = inodes.by_path(path)?;
        // A directory only listed has the defaults: its marker may say otherwise.
        let trusted =
            self.is_fresh(inode.fetched) && (inode.attr.kind != Kind::Dir || inode.metadata_known);
        let written = self.files.lock().unwrap().contains_key(&inode.attr.ino);
        (trusted || written).then(|| inode.attr.clone())
    }

    /// What a fresh listing of `parent` says of `name`; `None` without a fresh listing.
    fn listing_says(&self, parent: u64, name: &str) -> Option<Listed> {
        self.with_fresh_listing(parent, |listing| match &listing.names {
            None => Listed::Unknown,
            Some(names) => match names.get(name) {
                None => Listed::Absent {
                    listed_at: listing.at,
                },
                Some(false) => Listed::Object,
                Some(true) => Listed::Dir,
            },
        })
    }

    /// `read` applied to the listing of directory `ino`, if there is one within the TTL.
    fn with_fresh_listing<R>(&self, ino: u64, read: impl FnOnce(&Listing) -> R) -> Option<R> {
        let listings = self.listings.lock().unwrap();
        listings.get(&ino).filter(|l| self.is_fresh(l.at)).map(read)
    }

    /// Record an entry this mount just made: its inode, no negative cache entry, and the name
    /// in the parent's listing.
    fn record_new_entry(
        &self,
        parent: u64,
        name: &str,
        path: String,
        attr: Attr,
        etag: Option<common::ETag>,
    ) -> Attr {
        self.set_negative(&path, false);
        self.note_name(parent, name, Some(attr.kind));
        self.inodes
            .lock()
            .unwrap()
            .upsert(parent, name, path, attr, etag, true, Instant::now())
    }

    /// Keep a listing of `parent` up to date with a change made through this mount: `name`
    /// is now an entry of kind `entry`, or (`None`) gone.
    fn note_name(&self, parent: u64, name: &str, entry: Option<Kind>) {
        let mut listings = self.listings.lock().unwrap();
        {
            let mut changed = self.entries_changed.lock().unwrap();
            if changed.len() > 4096 {
                changed.retain(|_, at| self.is_fresh(*at));
            }
            changed.insert(parent, Instant::now());
        }
        if let Some(Listing {
            names: Some(names), ..
        }) = listings.get_mut(&parent)
        {
            match entry {
                Some(kind) => names.insert(name.to_string(), kind == Kind::Dir),
                None => names.remove(name),
            };
        }
    }

    /// Attributes with the size of written-but-uncommitted data.
    async fn current_attr(&self, mut attr: Attr) -> Attr {
        if let Some(state) = self.file_state(attr.ino) {
            attr.size = state.lock().await.size;
        }
        attr
    }

    /// [`current_attr`](Self::current_attr) without waiting: `None` while the file's write
    /// state is locked.
    fn current_attr_now(&self, mut attr: Attr) -> Option<Attr> {
        if let Some(state) = self.file_state(attr.ino) {
            attr.size = state.try_lock().ok()?.size;
        }
        Some(attr)
    }

    /// Find `name` in directory `parent`.
    pub async fn lookup(&self, parent: u64, name: &str) -> FsResult<Attr> {
        self.on_child(parent, name, self.lookup_passed(parent, name))
            .await
    }

    /// A [`lookup`](Self::lookup) answered at once on the caller's thread from what the mount
    /// knows (attributes within their TTL, a name known missing, a fresh listing of the
    /// parent), so the FUSE thread that got it replies without handing it to the runtime and
    /// back: creating, untarring or `stat`-ing many files is mostly such lookups. `None` when
    /// the answer would wait for anything (a rename moving the name, a locked write state, the
    /// store): the caller then uses [`lookup`](Self::lookup). (It still takes the table's
    /// locks, as every operation does; those are never held across a request.)
    pub fn lookup_now(&self, parent: u64, name: &str) -> Option<FsResult<Attr>> {
        check_name(name).ok()?;
        let path = join(&self.dir_path(parent).ok()?, name);
        // Through the rename gate as `lookup` goes. A rename may have moved the name between
        // finding its path and taking the pass: then the pass is for the old path.
        let _pass = self.gate.try_pass(&path)?;
        if join(&self.dir_path(parent).ok()?, name) != path {
            return None;
        }
        if let Some(attr) = self.trusted_attr(&path) {
            return self.current_attr_now(attr).map(Ok);
        }
        if self.negative_hit(&path) {
            return Some(Err(FsError::NotFound));
        }
        match self.listing_says(parent, name)? {
            Listed::Absent { listed_at } => {
                self.note_missing_since(&path, listed_at);
                Some(Err(FsError::NotFound))
            }
            // Its mode and owner are in its marker (trusted ones were answered above).
            Listed::Dir | Listed::Object | Listed::Unknown => None,
        }
    }

    async fn lookup_passed(&self, parent: u64, name: &str) -> FsResult<Attr> {
        check_name(name)?;
        let path = join(&self.dir_path(parent)?, name);
        if let Some(attr) = self.trusted_attr(&path) {
            return Ok(self.current_attr(attr).await);
        }
        if self.negative_hit(&path) {
            return Err(FsError::NotFound);
        }
        // A recent listing of the parent answers "missing" without a request. Without one, a
        // listing of a small parent (up to two pages: 1,000 files plus the folder's marker
        // object need two) answers this and every following lookup in it: creating many
        // files, untarring, or `stat` of many known files then costs no request per name.
        let listing_asked = Instant::now();
        let listed = match self.listing_says(parent, name) {
            Some(listed) => listed,
            None => match self.list_dir(parent, LOOKUP_LISTING_PAGES, false).await? {
                Some(entries) => match entries.into_iter().find(|e| e.name == name) {
                    Some(entry) if entry.attr.kind == Kind::Dir => {
                        return self.dir_for_lookup(parent, name, path).await
                    }
                    // The listing confirmed a file whose ETag is unchanged since its last HEAD
                    // (or our own upload): its mode and owner still hold, no HEAD needed. So
                    // `stat` of many known files costs one listing per TTL, not a HEAD each.
                    Some(_) if self.trusted_attr(&path).is_some() => {
                        let attr = self.trusted_attr(&path).expect("checked");
                        return Ok(self.current_attr(attr).await);
                    }
                    Some(_) => Listed::Object,
                    None => Listed::Absent {
                        listed_at: listing_asked,
                    },
                },
                None => Listed::Unknown, // too big to list for one name
            },
        };
        match listed {
            Listed::Absent { listed_at } => {
                self.note_missing_since(&path, listed_at);
                return Err(FsError::NotFound);
            }
            Listed::Dir => return self.dir_for_lookup(parent, name, path).await,
            // Its mode and owner are in its metadata: a HEAD, and nothing else, since the
            // listing says no directory shadows it.
            Listed::Object => return self.head_for_lookup(parent, name, path).await,
            Listed::Unknown => {}
        }
        let key = self.key(&path);
        let dir_prefix = format!("{key}/");
        let list_params = ListParams::new(dir_prefix.clone())
            .delimiter("/")
            .max_keys(1);
        let asked = Instant::now();
        let (head, listing) = tokio::join!(self.store.head(&key), self.store.list(&list_params));
        let listing = listing?;
        // A directory shadows an object of the same name (see SEMANTICS.md).
        if !listing.objects.is_empty() || !listing.common_prefixes.is_empty() {
            if self.answer_outdated(&path, asked, Answer::Marker) {
                return self.known_entry(&path);
            }
            return self.dir_for_lookup(parent, name, path).await;
        }
        self.found_by_head(parent, name, path, head, asked)
    }

    /// Make sure the table has the mode, owner and mtime of `ino` as its object (a directory:
    /// its marker) stores them, not the defaults a listing gave, before a change that stores
    /// them again: a rewrite, a truncate, a chmod or a chown must keep what it does not set.
    /// One HEAD, for an entry the kernel got from a listing and has not looked up since.
    async fn learn_stored_owner(&self, ino: u64) -> FsResult<()> {
        let (path, kind) = {
            let inodes = self.inodes.lock().unwrap();
            let inode = inodes.get(ino).ok_or(FsError::NotFound)?;
            if inode.metadata_known || ino == ROOT_INO || !inodes.is_named(ino) {
                return Ok(());
            }
            (inode.path.clone(), inode.attr.kind)
        };
        if self.file_state(ino).is_some() {
            return Ok(()); // being written here: its attributes are the mount's
        }
        let asked = Instant::now();
        let key = match kind {
            Kind::Dir => self.marker_key(&path),
            Kind::File | Kind::Symlink => self.key(&path),
        };
        // A file's size and ETag too: another client may have rewritten it since the listing,
        // and the change then shows the file as it is now.
        let stored = match self.store.head(&key).await {
            Ok(meta) if kind == Kind::Dir => Some((self.attr_from_marker(&meta), None)),
            Ok(meta) => Some((self.attr_from_meta(&meta), Some(meta.etag))),
            // No marker (or the object went): the defaults it has are all there is.
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        let mut inodes = self.inodes.lock().unwrap();
        let Some(inode) = inodes.get_mut(ino) else {
            return Ok(());
        };
        // Set through the mount while the HEAD ran: that is newer.
        if inode.metadata_known || inode.changed >= asked {
            return Ok(());
        }
        if let Some((stored, etag)) = stored {
            (inode.attr.perm, inode.attr.uid, inode.attr.gid) =
                (stored.perm, stored.uid, stored.gid);
            inode.attr.mtime = stored.mtime;
            // (Unless a listing showed a newer version meanwhile: that one's size stays.)
            if let Some(etag) = etag.filter(|e| !inode.knows_more_than(asked, Answer::Object(e))) {
                inode.attr.size = stored.size;
                inode.etag = Some(etag);
            }
            inode.fetched = inode.fetched.max(asked);
        }
        inode.metadata_known = true;
        Ok(())
    }

    /// [`lookup`](Self::lookup) for an operation that changes the entry or the name (create,
    /// mkdir, unlink, rmdir, rename), which needs its kind and inode but not, of a directory,
    /// the mode and owner its marker holds: a directory a fresh listing shows is taken as
    /// listed, without a HEAD of its marker (`rm -r` would otherwise send one per folder).
    async fn lookup_for_change(&self, parent: u64, name: &str) -> FsResult<Attr> {
        check_name(name)?;
        if self.listing_says(parent, name) == Some(Listed::Dir) {
            let path = join(&self.dir_path(parent)?, name);
            let inodes = self.inodes.lock().unwrap();
            if let Some(inode) = inodes.by_path(&path).filter(|i| i.attr.kind == Kind::Dir) {
                return Ok(inode.attr.clone());
            }
        }
        self.lookup(parent, name).await
    }

    /// Look up `name` in `parent` (at `path`), a directory as far as the store says: its
    /// mode, owner and mtime are those its marker object carries (a directory without one
    /// has the defaults), read with a HEAD unless the mount knows them within the TTL.
    async fn dir_for_lookup(&self, parent: u64, name: &str, path: String) -> FsResult<Attr> {
        if let Some(attr) = self.trusted_attr(&path).filter(|a| a.kind == Kind::Dir) {
            return Ok(attr);
        }
        let asked = Instant::now();
        let marker = self.store.head(&self.marker_key(&path)).await;
        if self.answer_outdated(&path, asked, Answer::Marker) {
            return self.known_entry(&path);
        }
        let attr = match marker {
            Ok(meta) => self.attr_from_marker(&meta),
            Err(e) if e.kind() == ErrorKind::NotFound => self.dir_attr(SystemTime::now()),
            Err(e) => return Err(e.into()),
        };
        self.set_negative(&path, false);
        Ok(self
            .inodes
            .lock()
            .unwrap()
            .upsert(parent, name, path, attr, None, true, asked))
    }

    /// Look up `name` in `parent` (at `path`), a file or symlink as far as the store says, with
    /// a HEAD of its object.
    async fn head_for_lookup(&self, parent: u64, name: &str, path: String) -> FsResult<Attr> {
        let asked = Instant::now();
        let head = self.store.head(&self.key(&path)).await;
        self.found_by_head(parent, name, path, head, asked)
    }

    /// The entry a HEAD of `path`'s object found, or its absence.
    fn found_by_head(
        &self,
        parent: u64,
        name: &str,
        path: String,
        head: common::StoreResult<ObjectMeta>,
        asked: Instant,
    ) -> FsResult<Attr> {
        if self.answer_outdated(&path, asked, Answer::of_head(&head)) {
            return self.known_entry(&path);
        }
        match head {
            Ok(meta) => {
                let attr = self.attr_from_meta(&meta);
                self.set_negative(&path, false);
                Ok(self.inodes.lock().unwrap().upsert(
                    parent,
                    name,
                    path,
                    attr,
                    Some(meta.etag),
                    true,
                    asked,
                ))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                self.note_missing_since(&path, asked);
                Err(FsError::NotFound)
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn getattr(&self, ino: u64) -> FsResult<Attr> {
        // Answered from the table: nothing to wait for (`ls -l` of a folder being moved
        // asks for its attributes from a FUSE thread, which must not wait for the move).
        if let Some(attr) = self.attr_at_hand(ino)? {
            return Ok(self.current_attr(attr).await);
        }
        self.on_inode(ino, self.getattr_passed(ino)).await
    }

    /// A [`getattr`](Self::getattr) answered at once on the caller's thread, as
    /// [`lookup_now`](Self::lookup_now) answers lookups; `None` when it would wait.
    pub fn getattr_now(&self, ino: u64) -> Option<FsResult<Attr>> {
        match self.attr_at_hand(ino) {
            Ok(Some(attr)) => self.current_attr_now(attr).map(Ok),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// The attributes of `ino` if the store need not be asked for them: the root, folders,
    /// files being written, files removed while open, and attributes within their TTL.
    fn attr_at_hand(&self, ino: u64) -> FsResult<Option<Attr>> {
        let written = self.file_state(ino).is_some();
        let inodes = self.inodes.lock().unwrap();
        let inode = inodes.get(ino).ok_or(FsError::NotFound)?;
        // A file removed while open has no name to ask the store about (it may be another
        // file's now): what is known of it stays.
        let at_hand = ino == ROOT_INO
            || inode.attr.kind == Kind::Dir
            || written
            || !inodes.is_named(ino)
            || self.is_fresh(inode.fetched);
        Ok(at_hand.then(|| inode.attr.clone()))
    }

    async fn getattr_passed(&self, ino: u64) -> FsResult<Attr> {
        if let Some(attr) = self.attr_at_hand(ino)? {
            return Ok(self.current_attr(attr).await);
        }
        let (path, parent, name) = {
            let inodes = self.inodes.lock().unwrap();
            let inode = inodes.get(ino).ok_or(FsError::NotFound)?;
            (inode.path.clone(), inode.parent, inode.name.clone())
        };
        // Many files of one directory stat-ed past the TTL (`rm`, `ls -l`, `find`, `du` of
        // many files): a listing of a small parent confirms every file in it unchanged since
        // its last HEAD, one listing per TTL instead of a HEAD each. (Not for the first few:
        // one file polled is cheaper to HEAD than its folder to list.)
        if self.many_stale_stats_in(parent)
            && self.listing_says(parent, &name).is_none()
            && matches!(
                self.list_dir(parent, LOOKUP_LISTING_PAGES, false).await,
                Ok(Some(_))
            )
        {
            let confirmed = self
                .inodes
                .lock()
                .unwrap()
                .get(ino)
                .filter(|inode| self.is_fresh(inode.fetched))
                .map(|inode| inode.attr.clone());
            if let Some(attr) = confirmed {
                return Ok(attr);
            }
        }
        let asked = Instant::now();
        let head = self.store.head(&self.key(&path)).await;
        // Written or confirmed by this mount while the HEAD ran: that is newer.
        let newer = {
            let inodes = self.inodes.lock().unwrap();
            let inode = inodes.get(ino).ok_or(FsError::NotFound)?;
            inode
                .knows_more_than(asked, Answer::of_head(&head))
                .then(|| inode.attr.clone())
        };
        if let Some(attr) = newer {
            return Ok(self.current_attr(attr).await);
        }
        match head {
            Ok(meta) => {
                let fresh = self.attr_from_meta(&meta);
                let mut inodes = self.inodes.lock().unwrap();
                let inode = inodes.get_mut(ino).ok_or(FsError::NotFound)?;
                inode.attr = Attr { ino, ..fresh };
                inode.etag = Some(meta.etag);
                inode.fetched = inode.fetched.max(asked);
                inode.metadata_known = true;
                Ok(inode.attr.clone())
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let mut inodes = self.inodes.lock().unwrap();
                // Unless a rename or create gave the name to another inode meanwhile.
                if inodes.is_named(ino) {
                    inodes.remove_path(&path);
                }
                Err(FsError::NotFound)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Count a stale `getattr` of a file in directory `parent`; whether there were enough
    /// within the TTL to list the directory rather than HEAD the file.
    fn many_stale_stats_in(&self, parent: u64) -> bool {
        let mut stale = self.stale_stats.lock().unwrap();
        if stale.len() > 1024 {
            stale.retain(|_, (since, _)| self.is_fresh(*since));
        }
        let (since, count) = stale.entry(parent).or_insert((Instant::now(), 0));
        if !self.is_fresh(*since) {
            (*since, *count) = (Instant::now(), 0);
        }
        *count += 1;
        *count > STALE_STATS_BEFORE_LISTING
    }

    /// Every entry of directory `ino` (without `.` and `..`), from a full listing, or from the
    /// last one while it is trusted (`entries_as_listed`).
    pub async fn readdir(&self, ino: u64) -> FsResult<Vec<DirEntry>> {
        let mut entries = match self.entries_as_listed(ino) {
            Some(entries) => entries,
            None => self
                .list_dir(ino, usize::MAX, true)
                .await?
                .expect("no page limit"),
        };
        // Files being written but not yet in the store belong to the listing too.
        for inode in self.written_children(ino) {
            if !entries.iter().any(|e| e.name == inode.name) {
                let attr = self.current_attr(inode.attr.clone()).await;
                entries.push(DirEntry {
                    name: inode.name.clone(),
                    attr,
                });
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// The files of directory `dir` being written here (not those unlinked or replaced while
    /// open: their names are gone), which the store may not have yet.
    fn written_children(&self, dir: u64) -> Vec<inodes::Inode> {
        let inodes = self.inodes.lock().unwrap();
        let files = self.files.lock().unwrap();
        files
            .keys()
            .filter(|ino| inodes.is_named(**ino))
            .filter_map(|ino| inodes.get(*ino).filter(|i| i.parent == dir).cloned())
            .collect()
    }

    /// The names of directory `ino` (each with whether it is a directory) in a listing within
    /// the TTL, kept up to date with the changes made through this mount since; `None` without
    /// one (or one too big to keep).
    fn names_as_listed(&self, ino: u64) -> Option<Vec<(String, bool)>> {
        self.with_fresh_listing(ino, |listing| {
            let names = listing.names.as_ref()?;
            Some(names.iter().map(|(n, dir)| (n.clone(), *dir)).collect())
        })?
    }

    /// Whether a listing within the TTL shows directory `ino` empty: no names (after this
    /// mount's own changes since) and no keys it hides.
    fn listed_empty(&self, ino: u64) -> bool {
        self.with_fresh_listing(ino, |l| {
            !l.hides_keys && l.names.as_ref().is_some_and(|n| n.is_empty())
        })
        .unwrap_or(false)
    }

    /// When a listing of `parent` within the TTL found no `name` (neither an object nor
    /// anything below it), kept up to date with this mount's own changes since.
    fn listed_absent_at(&self, parent: u64, name: &str) -> Option<Instant> {
        match self.listing_says(parent, name)? {
            Listed::Absent { listed_at } => Some(listed_at),
            _ => None,
        }
    }

    /// The entries of directory `ino` without asking the store, from a listing within the TTL
    /// ([`names_as_listed`](Self::names_as_listed)) whose every name the table knows with
    /// attributes it trusts as `lookup` does (within the TTL, or written here) and of the
    /// listed kind: a folder read twice in a row costs one listing (`rm -r` reads each folder
    /// to see whether it is empty, then again to remove what is in it). Another client's
    /// changes show after the TTL, as they do for lookups.
    fn entries_as_listed(&self, ino: u64) -> Option<Vec<DirEntry>> {
        let names = self.names_as_listed(ino)?;
        let path = self.dir_path(ino).ok()?;
        let inodes = self.inodes.lock().unwrap();
        let written = self.files.lock().unwrap();
        names
            .into_iter()
            .map(|(name, is_dir)| {
                let inode = inodes.by_path(&join(&path, &name))?;
                let attr = &inode.attr;
                let trusted = attr.kind == Kind::Dir
                    || written.contains_key(&attr.ino)
                    || self.is_fresh(inode.fetched);
                (trusted && (attr.kind == Kind::Dir) == is_dir).then(|| DirEntry {
                    name,
                    attr: attr.clone(),
                })
            })
            .collect()
    }

    /// The attributes entry `entry` of directory `dir` (from a listing taken at its opendir)
    /// has now, or `None` if this mount removed it since: `ls -l` reads a folder in several
    /// calls, and what it hands the kernel (which keeps the sizes, and names as entries)
    /// must not undo a write, an unlink or a rename that came in between.
    ///
    /// Never waits: the table has the size of files being written (a write updates it), and
    /// a state lock can be held for a whole upload.
    pub fn entry_now(&self, dir: u64, entry: &DirEntry, listed_at: Instant) -> Option<Attr> {
        let path = join(&self.dir_path(dir).ok()?, &entry.name);
        let inodes = self.inodes.lock().unwrap();
        if let Some(inode) = inodes.by_path(&path) {
            return Some(inode.attr.clone());
        }
        let removed_since = self
            .negative
            .lock()
            .unwrap()
            .get(&path)
            .is_some_and(|at| *at >= listed_at);
        // Else not in the table (a name the kernel has forgotten): as listed.
        (!removed_since).then(|| entry.attr.clone())
    }

    /// The entries of directory `ino` from the store, if they fit in `max_pages` pages. With
    /// `trust_files`, files get inodes with the listing's attributes (readdir hands those to
    /// the kernel anyway); without, only directories do, and a lookup of a file still HEADs it
    /// for its mode, owner and type.
    async fn list_dir(
        &self,
        ino: u64,
        max_pages: usize,
        trust_files: bool,
    ) -> FsResult<Option<Vec<DirEntry>>> {
        let path = self.dir_path(ino)?;
        let prefix = self.dir_prefix(&path);
        let started = Instant::now();
        let mut files: Vec<(String, Attr, common::ETag)> = Vec::new();
        let mut dirs: Vec<String> = Vec::new();
        let mut hides_keys = false;
        let mut token = None;
        for page_number in 1.. {
            if page_number > max_pages {
                self.listings
                    .lock()
                    .unwrap()
                    .insert(ino, Listing::without_names(started));
                return Ok(None);
            }
            let page = self
                .store
                .list(
                    &ListParams::new(prefix.clone())
                        .delimiter("/")
                        .continuation_token(token),
                )
                .await?;
            for object in page.objects {
                let name = &object.key[prefix.len()..];
                if check_name(name).is_err() {
                    // The directory's own marker, or a name no file can have.
                    hides_keys |= !name.is_empty();
                    continue;
                }
                let attr = Attr {
                    ino: 0,
                    kind: Kind::File,
                    size: object.size,
                    perm: self.config.file_mode,
                    uid: self.config.uid,
                    gid: self.config.gid,
                    mtime: object.last_modified,
                };
                files.push((name.to_string(), attr, object.etag));
            }
            for common_prefix in page.common_prefixes {
                let name = common_prefix[prefix.len()..].trim_end_matches('/');
                if check_name(name).is_ok() {
                    dirs.push(name.to_string());
                } else {
                    hides_keys = true;
                }
            }
            token = page.next_continuation_token;
            if token.is_none() {
                break;
            }
        }
        // Names this mount removed (or found missing) since the listing began: the listing
        // is older than that, and does not bring them back.
        // Files being written: what the mount has of them is newer than any listing.
        let written: HashSet<u64> = self.files.lock().unwrap().keys().copied().collect();
        // Under the table's lock, which unlink and rename hold while they record a removal
        // or a move.
        let merged = {
            let mut inodes = self.inodes.lock().unwrap();
            if inodes.get(ino).is_some_and(|dir| dir.path != path) {
                None
            } else {
                {
                    let mut negative = self.negative.lock().unwrap();
                    let mut gone = |name: &String| {
                        let child = join(&path, name);
                        match negative.get(&child) {
                            Some(at) if *at >= started => true,
                            // Found missing before the listing began, which shows it: it is back.
                            Some(_) => {
                                negative.remove(&child);
                                false
                            }
                            None => false,
                        }
                    };
                    dirs.retain(|name| !gone(name));
                    files.retain(|(name, _, _)| !gone(name));
                }
                let mut entries = Vec::with_capacity(files.len() + dirs.len());
                for name in &dirs {
                    let child = join(&path, name);
                    // Made or confirmed by this mount since the listing began, or a folder
                    // whose marker was read: a listing shows no mode nor owner, and does not
                    // make those of the marker any fresher (another client may have changed
                    // them: the next lookup past the TTL reads the marker again).
                    if let Some(known) = inodes.by_path(&child).filter(|k| {
                        k.known_at() >= started || (k.attr.kind == Kind::Dir && k.metadata_known)
                    }) {
                        entries.push(DirEntry {
                            name: name.clone(),
                            attr: known.attr.clone(),
                        });
                        continue;
                    }
                    let attr = inodes.upsert(
                        ino,
                        name,
                        child,
                        self.dir_attr(SystemTime::now()),
                        None,
                        false,
                        started,
                    );
                    entries.push(DirEntry {
                        name: name.clone(),
                        attr,
                    });
                }
                for (name, attr, etag) in files {
                    if dirs.binary_search(&name).is_ok() {
                        continue; // a directory shadows an object of the same name
                    }
                    let child = join(&path, &name);
                    let attr = match inodes.by_path(&child).map(|known| {
                        (
                            known.attr.ino,
                            known.metadata_known && known.etag.as_ref() == Some(&etag),
                            known.known_at() >= started || written.contains(&known.attr.ino),
                        )
                    }) {
                        // Written or confirmed by this mount since the listing began: what
                        // the mount knows is newer than what the listing shows.
                        Some((known, _, true)) => inodes.get(known).expect("indexed").attr.clone(),
                        // Unchanged since a HEAD: keep what it learnt (kind, mode, owner).
                        Some((known, true, false)) => {
                            let inode = inodes.get_mut(known).expect("indexed inodes exist");
                            inode.fetched = started;
                            inode.attr.clone()
                        }
                        _ => match inodes.recall(ino, &name, &child, &attr, &etag, started) {
                            // Its inode went (the kernel forgot it), what a HEAD taught was kept.
                            Some(recalled) => recalled,
                            None if trust_files => {
                                inodes.upsert(ino, &name, child, attr, Some(etag), false, started)
                            }
                            None => attr,
                        },
                    };
                    entries.push(DirEntry { name, attr });
                }
                Some(entries)
            }
        };
        let Some(entries) = merged else {
            // Moved while listed (a rename of it or of a folder above it): this listing is of
            // a name it no longer has, so list it again where it is now.
            return Box::pin(self.list_dir(ino, max_pages, trust_files)).await;
        };
        self.sweep_inodes();
        // Names this mount made or removed here while the listing ran may be missing from it,
        // or in it still: it cannot answer "no such file" for the TTL then.
        // Files being written here are names of it too, before the store has them: the listing
        // outlives their upload, which changes no name.
        let names: HashMap<String, bool> = entries
            .iter()
            .map(|e| (e.name.clone(), e.attr.kind == Kind::Dir))
            .chain(
                self.written_children(ino)
                    .into_iter()
                    .map(|i| (i.name, false)),
            )
            .collect();
        // Checked and stored under the listings' lock, which `note_name` holds while it
        // records a change: none can slip in between.
        let mut listings = self.listings.lock().unwrap();
        let changed_meanwhile = self
            .entries_changed
            .lock()
            .unwrap()
            .get(&ino)
            .is_some_and(|at| *at >= started);
        if !changed_meanwhile {
            listings.insert(
                ino,
                Listing {
                    at: started,
                    names: Some(names),
                    hides_keys,
                },
            );
        } else if !listings.get(&ino).is_some_and(|l| self.is_fresh(l.at)) {
            // No fresh listing kept up to date by `note_name` to fall back on.
            listings.insert(ino, Listing::without_names(started));
        }
        Ok(Some(entries))
    }

    fn new_handle(&self, ino: u64, writable: bool) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().unwrap().insert(
            fh,
            Handle {
                ino,
                writable,
                reader: None,
                opened_as: None,
            },
        );
        *self.open_counts.lock().unwrap().entry(ino).or_default() += 1;
        fh
    }

    /// Open file `ino`; with `truncate` it becomes empty at once.
    pub async fn open(&self, ino: u64, writable: bool, truncate: bool) -> FsResult<u64> {
        Ok(self.open_with_cache_hint(ino, writable, truncate).await?.0)
    }

    /// Like [`open`](Self::open), also saying whether the kernel may keep the pages it cached
    /// from an earlier open: only when the object is the same version (same ETag) as then, so
    /// re-reads of unchanged files come from the page cache and changed ones never do.
    pub async fn open_with_cache_hint(
        &self,
        ino: u64,
        writable: bool,
        truncate: bool,
    ) -> FsResult<(u64, bool)> {
        self.on_inode(ino, self.open_passed(ino, writable, truncate))
            .await
    }

    async fn open_passed(&self, ino: u64, writable: bool, truncate: bool) -> FsResult<(u64, bool)> {
        if writable || truncate {
            self.check_writable()?;
        }
        // Refreshes the ETag once the attribute TTL has passed.
        let attr = self.getattr(ino).await?;
        if attr.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        if writable || truncate {
            // Its new version is stored with the mode and owner of the old one.
            self.learn_stored_owner(ino).await?;
        }
        // Counted before the truncate: the release of the previous handle, which the kernel
        // sends after close(2) returned and may still be running, is then not the last one
        // and leaves alone the state this open empties.
        let fh = self.new_handle(ino, writable);
        if truncate {
            if let Err(e) = self.empty_at_open(ino).await {
                // As a close of it: if it was the last handle, what the release of the one
                // before left to it is done now.
                let _ = self.release(fh).await;
                return Err(e);
            }
        }
        let written = self.file_state(ino).is_some();
        let (keep_cache, opened_as) = {
            let mut inodes = self.inodes.lock().unwrap();
            match inodes.get_mut(ino) {
                Some(inode) => {
                    let same = inode.etag.is_some() && inode.etag == inode.kernel_cached;
                    // What the kernel caches through a writable handle is not a stored version.
                    inode.kernel_cached = if writable || written {
                        None
                    } else {
                        inode.etag.clone()
                    };
                    let opened_as = inode.etag.clone().map(|etag| OpenedVersion {
                        etag,
                        size: inode.attr.size,
                        renames: self.renamed.load(Ordering::Acquire),
                    });
                    (same && !writable && !written, opened_as)
                }
                None => (false, None),
            }
        };
        if let Some(handle) = self.handles.lock().unwrap().get_mut(&fh) {
            handle.opened_as = opened_as;
        }
        Ok((fh, keep_cache))
    }

    /// Empty file `ino` for an open with `O_TRUNC`.
    async fn empty_at_open(&self, ino: u64) -> FsResult<()> {
        let (mut guard, made) = self.lock_file_state(ino, true).await?;
        if let Err(e) = guard.truncate(0).await {
            // Not left for an unmount to put over the object.
            let state = LockedFile::mutex(&guard).clone();
            if made && self.unregister_file_state(ino, &state, &mut guard, true) {
                guard.discard();
            }
            return Err(e);
        }
        if made {
            // As for a new file: `echo hi > f` closes the emptied file before it writes,
            // and that close need not put an empty object over the old one.
            guard.mark_created();
        }
        if let Some(inode) = self.inodes.lock().unwrap().get_mut(ino) {
            inode.attr.size = 0;
            inode.attr.mtime = SystemTime::now();
            inode.changed = Instant::now();
        }
        Ok(())
    }

    /// Forget handle `fh`; its inode, and whether it was the inode's last open handle.
    fn drop_handle(&self, fh: u64) -> Option<(u64, bool)> {
        let handle = self.handles.lock().unwrap().remove(&fh)?;
        let mut counts = self.open_counts.lock().unwrap();
        let count = counts.entry(handle.ino).or_default();
        *count = count.saturating_sub(1);
        let last = *count == 0;
        if last {
            counts.remove(&handle.ino);
        }
        Some((handle.ino, last))
    }

    /// The write state of `ino` locked, made on first need (see
    /// [`file_state_made`](Self::file_state_made)), and whether this call made it. Never one
    /// retired while this waited for its lock: writes to it would reach no object.
    async fn lock_file_state(&self, ino: u64, empty: bool) -> FsResult<(LockedFile<S>, bool)> {
        loop {
            let (state, made) = self.file_state_made(ino, empty).await?;
            let guard = state.lock_owned().await;
            if !guard.retired {
                return Ok((guard, made));
            }
        }
    }

    /// The write state of `ino` locked, if it has one: never one retired while this waited for
    /// its lock.
    async fn locked_file_state(&self, ino: u64) -> Option<LockedFile<S>> {
        loop {
            let guard = self.file_state(ino)?.lock_owned().await;
            if !guard.retired {
                return Some(guard);
            }
        }
    }

    /// Take `state`, the write state of `ino` that the caller holds locked as `guard`, out of
    /// the table and mark it retired, if it is still the file's state and, unless
    /// `even_if_open`, no handle has the file open: one opened after a last close began keeps
    /// the state for its own last close. Returns whether it was taken out.
    fn unregister_file_state(
        &self,
        ino: u64,
        state: &SharedFile<S>,
        guard: &mut FileState<S>,
        even_if_open: bool,
    ) -> bool {
        let mut files = self.files.lock().unwrap();
        if !files.get(&ino).is_some_and(|s| Arc::ptr_eq(s, state)) {
            return false;
        }
        // Checked under the table's lock: a handle counted after this (`take_up_handle`)
        // looks the state up after it, and makes a new one.
        if !even_if_open && self.open_counts.lock().unwrap().contains_key(&ino) {
            return false;
        }
        files.remove(&ino);
        guard.retired = true;
        true
    }

    /// Drop the write state of `ino`, which no handle has open (after its last close, or a
    /// truncate by path), unless a handle opened since uses it. Bytes the store never
    /// acknowledged move to the recovery folder, and the error is logged (close has no one to
    /// tell).
    async fn retire_closed_file(&self, ino: u64) {
        let Some(state) = self.file_state(ino) else {
            return;
        };
        let mut guard = state.lock().await;
        if !self.unregister_file_state(ino, &state, &mut guard, false) {
            return;
        }
        if guard.dirty && !guard.detached {
            // Whole, if the store still gives the bytes it had of it.
            let _ = guard.load_from_store(&*self.store, 0..u64::MAX).await;
            let kept = guard.keep_for_recovery(&self.config.recovery_dir);
            tracing::error!(key = %kept.display(), "upload failed at the last close; the data is kept in the recovery folder");
        } else {
            guard.discard();
        }
    }

    /// At a stop: drop the write state of `ino` if the store has all its bytes, even while
    /// the file is open (a write after this makes a new state), so that the next start does
    /// not take its staging file for a crash's leftover. A file removed while open keeps its
    /// state: its bytes are in no object, only there.
    async fn retire_clean_file(&self, ino: u64) {
        let Some(state) = self.file_state(ino) else {
            return;
        };
        let mut guard = state.lock().await;
        if guard.dirty || guard.detached || guard.retired {
            return;
        }
        // Their readers were made before the writes: the next read makes one of the version
        // now stored. Dropped while the state is still in the table: a read that finds no
        // state (`read`, `read_cached`) then finds no such reader either.
        for handle in self.handles.lock().unwrap().values_mut() {
            if handle.ino == ino {
                handle.reader = None;
                handle.opened_as = None;
            }
        }
        if self.unregister_file_state(ino, &state, &mut guard, true) {
            guard.discard();
        }
    }

    /// The write state of `ino`, made on first need, and whether this call made it. An
    /// existing object's bytes are copied into the staging file, unless `empty` (the file is
    /// about to be truncated to nothing).
    async fn file_state_made(&self, ino: u64, empty: bool) -> FsResult<(SharedFile<S>, bool)> {
        if let Some(state) = self.file_state(ino) {
            return Ok((state, false));
        }
        // Its object key comes from its path: not while a rename moves it.
        self.on_inode(ino, self.new_file_state(ino, empty)).await
    }

    /// The write state of `ino`, made by this call unless another made it meanwhile.
    async fn new_file_state(&self, ino: u64, empty: bool) -> FsResult<(SharedFile<S>, bool)> {
        // Made while this waited at the gate (by a rename onto the file, for its descriptors).
        if let Some(state) = self.file_state(ino) {
            return Ok((state, false));
        }
        // Removed while open without its bytes kept: its old name is no source for them.
        if !self.inodes.lock().unwrap().is_named(ino) {
            return Err(FsError::Removed);
        }
        let (path, cached) = self.inode_path(ino)?;
        // Fresh attributes when the size decides what is copied into the staging file. (A
        // handle taken over after a crash writes to an inode this process has not looked at.)
        let attr = if empty {
            cached
        } else {
            self.getattr(ino).await?
        };
        let key = self.key(&path);
        let initial = match self.known_etag(ino) {
            _ if empty || attr.size == 0 => Initial::Empty,
            // Big enough for the store to copy at commit: an append need not fetch it.
            Some(etag) if attr.size >= self.config.upload.part_size as u64 => {
                Initial::InStore(attr.size, etag)
            }
            etag => {
                let body = self
                    .store
                    .get_stream(&key, 0..attr.size, etag.as_ref())
                    .await?;
                Initial::Copied(body, attr.size, etag)
            }
        };
        let stream = matches!(initial, Initial::Empty).then(|| {
            s3_backend::upload::StreamingUpload::new(
                self.store.clone(),
                key.clone(),
                self.metadata_of(&attr),
                self.config.upload.clone(),
            )
        });
        let state = FileState::new(&self.config.staging_dir, &key, initial, stream).await?;
        let mut files = self.files.lock().unwrap();
        // Another task may have made it meanwhile; keep the first, and drop our staging file
        // (kept, the next start would take it for a crash's leftover).
        match files.entry(ino) {
            std::collections::hash_map::Entry::Occupied(first) => {
                state.discard();
                Ok((first.get().clone(), false))
            }
            std::collections::hash_map::Entry::Vacant(slot) => Ok((
                slot.insert(Arc::new(tokio::sync::Mutex::new(state)))
                    .clone(),
                true,
            )),
        }
    }

    /// The ETag the inode table has for `ino`, if any.
    fn known_etag(&self, ino: u64) -> Option<common::ETag> {
        self.inodes.lock().unwrap().get(ino)?.etag.clone()
    }

    fn metadata_of(&self, attr: &Attr) -> UserMetadata {
        let kind = match attr.kind {
            Kind::File => S_IFREG,
            Kind::Dir => S_IFDIR,
            Kind::Symlink => S_IFLNK,
        };
        StoredAttrs::encode(kind | attr.perm, attr.uid, attr.gid, attr.mtime)
    }

    fn handle_ino(&self, fh: u64) -> FsResult<(u64, bool)> {
        let handles = self.handles.lock().unwrap();
        let handle = handles.get(&fh).ok_or(FsError::BadHandle)?;
        Ok((handle.ino, handle.writable))
    }

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        tracing::trace!(fh, offset, size, "read");
        let (ino, _) = self.handle_ino(fh)?;
        if let Some(state) = self.file_state(ino) {
            return Ok(state
                .lock()
                .await
                .read(&*self.store, offset, size)
                .await?
                .into());
        }
        match self.read_object(fh, ino, offset, size).await {
            Err(FsError::Store(e)) if e.kind() == ErrorKind::NotFound => {
                // A rename of the file (or of a folder above it) may be under way: it deletes
                // the old name before it records the new one. Read on where it leaves it.
                if let Ok((path, _)) = self.inode_path(ino) {
                    drop(self.gate.pass(&path).await);
                }
                self.read_object(fh, ino, offset, size).await
            }
            read => read,
        }
    }

    /// Read `size` bytes at `offset` from the object of file `ino` (not being written), open
    /// as handle `fh`.
    async fn read_object(&self, fh: u64, ino: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        let reader = self.reader(fh, ino).await?;
        // Advise under the lock, read outside it: the kernel sends reads of one handle in
        // parallel, and they must not wait for each other.
        let (cache, object) = {
            let mut reader = reader.lock().await;
            reader.advise(offset, size as u64);
            (reader.cache().clone(), reader.object().clone())
        };
        let data = cache.read(&object, offset, size as u64).await?;
        self.read_as(ino, &object.etag);
        Ok(data)
    }

    /// A read of a file not being written, answered at once on the caller's thread when its
    /// handle has read before and the bytes are in the memory tier, or for part of a chunk in
    /// the disk tier ([`ChunkCache::read_now`]). The FUSE worker thread that got the request
    /// then answers it without handing it to the runtime and back (two task switches per
    /// read). `None` when the read would wait for anything (a write state, a lock, a rename
    /// check, a fetch): the caller then reads with [`read`](Self::read). Call it within the
    /// runtime's context: read-ahead spawns tasks.
    pub fn read_cached(&self, fh: u64, offset: u64, size: u32) -> Option<Bytes> {
        // The write state first, as `read` does: a stop drops the handles' readers before it
        // retires the state, so a reader taken after this look is never one from before it.
        let (ino, _) = self.handle_ino(fh).ok()?;
        if self.files.lock().unwrap().contains_key(&ino) {
            return None;
        }
        let reader = {
            let handles = self.handles.lock().unwrap();
            let handle = handles.get(&fh)?;
            let (reader, checked) = handle.reader.as_ref()?;
            if *checked != self.renamed.load(Ordering::Acquire) {
                return None;
            }
            reader.clone()
        };
        let (cache, object) = {
            let reader = reader.try_lock().ok()?;
            (reader.cache().clone(), reader.object().clone())
        };
        let data = cache.read_now(&object, offset, size as u64)?;
        tracing::trace!(fh, offset, size, "read (cached)");
        // Advised once read: a read that found nothing must not be advised twice (its retry
        // through `read` advises it). Another read advising meanwhile is as good.
        if let Ok(mut reader) = reader.try_lock() {
            reader.advise(offset, size as u64);
        }
        self.read_as(ino, &object.etag);
        Some(data)
    }

    /// Note that file `ino` was just read as version `etag`. The kernel keeps pages for the
    /// file, not for a handle: if an open since expects another version, the pages are a mix
    /// now, and no open may keep them.
    fn read_as(&self, ino: u64, etag: &common::ETag) {
        if let Some(inode) = self.inodes.lock().unwrap().get_mut(ino) {
            if inode.kernel_cached.as_ref().is_some_and(|v| v != etag) {
                inode.kernel_cached = None;
            }
        }
    }

    async fn reader(
        &self,
        fh: u64,
        ino: u64,
    ) -> FsResult<Arc<tokio::sync::Mutex<SequentialReader<S>>>> {
        let renamed = self.renamed.load(Ordering::Acquire);
        let (cached, opened_as) = match self.handles.lock().unwrap().get(&fh) {
            Some(h) => (h.reader.clone(), h.opened_as.clone()),
            None => (None, None),
        };
        if let Some((reader, checked)) = &cached {
            if *checked == renamed {
                return Ok(reader.clone());
            }
        }
        // The version the open found, unless a rename moved the object since.
        let opened_as = opened_as
            .filter(|v| v.renames == renamed)
            .map(|v| (v.etag, v.size));
        let named = self.inodes.lock().unwrap().is_named(ino);
        let (path, attr) = self.inode_path(ino)?;
        let key = self.key(&path);
        if let Some((reader, _)) = cached {
            // Unless a rename (of the file or of a folder above it) moved the object since:
            // its bytes are under the new name now.
            if !named || reader.lock().await.object().key == key {
                if let Some(handle) = self.handles.lock().unwrap().get_mut(&fh) {
                    handle.reader = Some((reader.clone(), renamed));
                }
                return Ok(reader);
            }
        }
        if !named {
            return Err(FsError::Removed);
        }
        let (etag, size) = match opened_as.or_else(|| Some((self.known_etag(ino)?, attr.size))) {
            Some(version) => version,
            None => {
                let meta = self.store.head(&key).await?;
                (meta.etag, meta.size)
            }
        };
        let object = ObjectVersion { key, etag, size };
        let reader = Arc::new(tokio::sync::Mutex::new(SequentialReader::new(
            self.cache.clone(),
            object,
            self.config.readahead.clone(),
        )));
        if let Some(handle) = self.handles.lock().unwrap().get_mut(&fh) {
            handle.reader = Some((reader.clone(), renamed));
        }
        Ok(reader)
    }

    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        match self.write_staged(fh, offset, data).await {
            // The mount's data comes before its cache: cached chunks make room, and the write
            // (which changed nothing it cannot do again) is tried once more.
            Err(FsError::NoSpace(_)) if self.cache_gives_way(data.len()) => {
                self.write_staged(fh, offset, data).await
            }
            result => result,
        }
    }

    /// For a write that found the disk of the staging folder full: whether the disk tier of
    /// the cache deleted chunks to make room (at least [`GIVE_WAY_AT_LEAST`]).
    fn cache_gives_way(&self, len: usize) -> bool {
        self.cache
            .disk()
            .is_some_and(|disk| disk.give_way((len as u64).max(GIVE_WAY_AT_LEAST)) > 0)
    }

    async fn write_staged(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let (ino, writable) = self.handle_ino(fh)?;
        if !writable {
            return Err(FsError::BadHandle);
        }
        let (mut state, _) = self.lock_file_state(ino, false).await?;
        // A multipart upload fixes the object's metadata when it begins, at a part this write
        // may fill: with the mtime of now, not that of when the state was made (the old
        // version's, for a file emptied by its open).
        state.set_stream_metadata(|| {
            let mut attr = self.inodes.lock().unwrap().get(ino)?.attr.clone();
            attr.mtime = SystemTime::now();
            Some(self.metadata_of(&attr))
        });
        state.write(&*self.store, offset, data).await?;
        // Under the state's lock, so that two writes reach the table in their order.
        if let Some(inode) = self.inodes.lock().unwrap().get_mut(ino) {
            inode.attr.size = state.size;
            inode.attr.mtime = SystemTime::now();
            inode.changed = Instant::now();
        }
        Ok(data.len() as u32)
    }

    /// Upload written data of `ino`; returns only once the store has it.
    async fn commit(&self, ino: u64) -> FsResult<()> {
        let Some(state) = self.file_state(ino) else {
            return Ok(());
        };
        let mut state = state.lock().await;
        self.commit_locked(ino, &mut state).await
    }

    /// [`commit`](Self::commit) of `ino`, whose state the caller holds locked.
    async fn commit_locked(&self, ino: u64, state: &mut FileState<S>) -> FsResult<()> {
        let attr = self.inode_path(ino)?.1;
        if let Some(put) = state
            .commit(&self.store, self.metadata_of(&attr), &self.config.upload)
            .await?
        {
            let mut inodes = self.inodes.lock().unwrap();
            if let Some(inode) = inodes.get_mut(ino) {
                inode.etag = Some(put.etag);
                inode.attr.size = state.size;
                inode.fetched = Instant::now();
                inode.metadata_known = true;
                let path = inode.path.clone();
                drop(inodes);
                self.set_negative(&path, false);
            }
        }
        Ok(())
    }

    /// A close: commits, except the first closes of a file just created and not yet written
    /// (see `FileState::close_can_wait`), which its last close (release) or an fsync commits.
    pub async fn flush(&self, fh: u64) -> FsResult<()> {
        let (ino, _) = self.handle_ino(fh)?;
        if let Some(state) = self.file_state(ino) {
            if state.lock().await.close_can_wait() {
                return Ok(());
            }
        }
        self.commit(ino).await
    }

    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        let (ino, _) = self.handle_ino(fh)?;
        self.commit(ino).await
    }

    /// Close handle `fh`. The last close of a written file commits it; if that fails, the staged
    /// bytes move to the recovery folder and the error is logged (close has no one to tell).
    pub async fn release(&self, fh: u64) -> FsResult<()> {
        let (ino, last) = self.drop_handle(fh).ok_or(FsError::BadHandle)?;
        if !last {
            return Ok(());
        }
        let result = self.commit(ino).await;
        self.retire_closed_file(ino).await;
        result
    }

    pub async fn setattr(&self, ino: u64, changes: SetAttr) -> FsResult<Attr> {
        self.on_inode(ino, self.setattr_passed(ino, changes)).await
    }

    async fn setattr_passed(&self, ino: u64, changes: SetAttr) -> FsResult<Attr> {
        self.check_writable()?;
        // Counted as an open handle while it runs: a last close still under way then leaves
        // the write state to this one, which commits it if no handle is open at its end (a
        // truncate or chmod by path: nothing will close it).
        let fh = self.new_handle(ino, true);
        let changed = self.change_attrs(ino, changes).await;
        let last = self.drop_handle(fh).is_some_and(|(_, last)| last);
        let attr = changed?;
        if last {
            self.commit(ino).await?;
            self.retire_closed_file(ino).await;
        }
        Ok(self.current_attr(attr).await)
    }

    /// The changes of a setattr, in the write state if the file has one, else in the store.
    async fn change_attrs(&self, ino: u64, changes: SetAttr) -> FsResult<Attr> {
        // What is stored back keeps the mode and owner the store has (a chown keeps the
        // mode, a truncate both).
        self.learn_stored_owner(ino).await?;
        let (path, mut attr) = self.inode_path(ino)?;
        if let Some(size) = changes.size {
            if attr.kind != Kind::File {
                return Err(FsError::IsDir);
            }
            let (mut state, _) = self.lock_file_state(ino, size == 0).await?;
            state.truncate(size).await?;
            attr.size = size;
            attr.mtime = SystemTime::now();
        }
        let metadata_changed = changes.mode.is_some()
            || changes.uid.is_some()
            || changes.gid.is_some()
            || changes.mtime.is_some();
        if let Some(mode) = changes.mode {
            attr.perm = mode & 0o7777;
        }
        attr.uid = changes.uid.unwrap_or(attr.uid);
        attr.gid = changes.gid.unwrap_or(attr.gid);
        attr.mtime = changes.mtime.unwrap_or(attr.mtime);
        {
            let mut inodes = self.inodes.lock().unwrap();
            if let Some(inode) = inodes.get_mut(ino) {
                // A write since this setattr began may have grown the file: its size stays
                // unless this sets one.
                if changes.size.is_none() {
                    attr.size = inode.attr.size;
                }
                inode.attr = attr.clone();
                inode.changed = Instant::now();
            }
            if changes.mode.is_some() || changes.uid.is_some() || changes.gid.is_some() {
                inodes.journal_owner(ino);
            }
        }
        if let Some(mut state) = self.locked_file_state(ino).await {
            if metadata_changed {
                state.abandon_stream().await;
                state.mark_metadata_changed();
            }
        } else if metadata_changed && ino != ROOT_INO {
            let metadata = self.metadata_of(&attr);
            let etag = match attr.kind {
                Kind::Dir => {
                    self.store
                        .put(&self.marker_key(&path), Bytes::new(), &metadata)
                        .await?
                        .etag
                }
                Kind::File | Kind::Symlink => {
                    let key = self.key(&path);
                    self.copy_object(&key, attr.size, &key, Some(&metadata))
                        .await?
                        .etag
                }
            };
            if let Some(inode) = self.inodes.lock().unwrap().get_mut(ino) {
                if attr.kind != Kind::Dir {
                    inode.etag = Some(etag);
                }
                // What is stored now, over what a lookup's HEAD may have brought back
                // meanwhile (sent before this PUT, it saw the old mode or owner).
                (inode.attr.perm, inode.attr.uid, inode.attr.gid) = (attr.perm, attr.uid, attr.gid);
                inode.attr.mtime = attr.mtime;
                inode.metadata_known = true;
                inode.changed = Instant::now();
                inode.fetched = inode.changed;
            }
        }
        Ok(attr)
    }

    /// Create and open file `name` in `parent`. It reaches the store at its first commit.
    pub async fn create(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
        uid: u32,
        gid: u32,
        if_exists: IfExists,
    ) -> FsResult<(Attr, u64)> {
        let create = self.create_passed(parent, name, mode, uid, gid, if_exists);
        self.on_child(parent, name, create).await
    }

    async fn create_passed(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
        uid: u32,
        gid: u32,
        if_exists: IfExists,
    ) -> FsResult<(Attr, u64)> {
        self.check_writable()?;
        match self.lookup_for_change(parent, name).await {
            // (A directory or symlink the kernel did not know of: not a file to open here.)
            Ok(attr) if if_exists == IfExists::Fail || attr.kind != Kind::File => {
                return Err(FsError::Exists)
            }
            Ok(attr) => {
                // The kernel asks to create only names it believes absent, but another
                // client may have made the object since (or, after a take-over, the
                // kernel's entry was stale). open(2) then opens the file: emptying it
                // without O_TRUNC would lose its bytes (an appending log kept only zeros).
                let fh = self
                    .open(attr.ino, true, if_exists == IfExists::Truncate)
                    .await?;
                return Ok((self.getattr(attr.ino).await?, fh));
            }
            Err(FsError::NotFound) => {}
            Err(e) => return Err(e),
        }
        let path = join(&self.dir_path(parent)?, name);
        let attr = Attr {
            ino: 0,
            kind: Kind::File,
            size: 0,
            perm: mode & 0o7777,
            uid,
            gid,
            mtime: SystemTime::now(),
        };
        let attr = self.record_new_entry(parent, name, path, attr, None);
        self.inodes.lock().unwrap().journal_owner(attr.ino);
        {
            let (mut state, _) = self.lock_file_state(attr.ino, true).await?;
            state.truncate(0).await?;
            state.mark_created();
        }
        Ok((attr.clone(), self.new_handle(attr.ino, true)))
    }

    /// The path for a new entry `name` in `parent`, after checking that the volume is writable
    /// and the name is free.
    async fn path_for_new_entry(&self, parent: u64, name: &str) -> FsResult<String> {
        self.check_writable()?;
        match self.lookup_for_change(parent, name).await {
            Ok(_) => Err(FsError::Exists),
            Err(FsError::NotFound) => Ok(join(&self.dir_path(parent)?, name)),
            Err(e) => Err(e),
        }
    }

    pub async fn mkdir(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        let mkdir = self.mkdir_passed(parent, name, mode, uid, gid);
        self.on_child(parent, name, mkdir).await
    }

    async fn mkdir_passed(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        let path = self.path_for_new_entry(parent, name).await?;
        // Nothing is below the new name if a fresh listing of the parent shows no such name:
        // the new folder is known empty then, for as long as that listing is trusted.
        let known_empty_since = self.listed_absent_at(parent, name);
        let attr = Attr {
            ino: 0,
            kind: Kind::Dir,
            size: 0,
            perm: mode & 0o7777,
            uid,
            gid,
            mtime: SystemTime::now(),
        };
        self.store
            .put(
                &self.marker_key(&path),
                Bytes::new(),
                &self.metadata_of(&attr),
            )
            .await?;
        let attr = self.record_new_entry(parent, name, path, attr, None);
        // Filling a folder known empty (`tar x`, `cp -r`) costs no listing to learn that the
        // names are free.
        if let Some(at) = known_empty_since {
            self.listings.lock().unwrap().insert(
                attr.ino,
                Listing {
                    at,
                    names: Some(HashMap::new()),
                    hides_keys: false,
                },
            );
        }
        Ok(attr)
    }

    pub async fn unlink(&self, parent: u64, name: &str) -> FsResult<()> {
        self.on_child(parent, name, self.unlink_passed(parent, name))
            .await
    }

    async fn unlink_passed(&self, parent: u64, name: &str) -> FsResult<()> {
        self.check_writable()?;
        let attr = self.lookup_for_change(parent, name).await?;
        if attr.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        let path = join(&self.dir_path(parent)?, name);
        let mut state = self.state_kept_past_removal(attr.ino).await?;
        if let Some(state) = state.as_mut() {
            self.stage_all(state).await?;
        }
        self.store.delete(&self.key(&path)).await?;
        if let Some(state) = state.as_mut() {
            state.detach();
        }
        self.record_removal(&path);
        self.note_name(parent, name, None);
        Ok(())
    }

    pub async fn rmdir(&self, parent: u64, name: &str) -> FsResult<()> {
        self.on_child(
            parent,
            name,
            self.rmdir_passed(parent, name, EmptyCheck::MayTrustListing),
        )
        .await
    }

    async fn rmdir_passed(&self, parent: u64, name: &str, check: EmptyCheck) -> FsResult<()> {
        self.check_writable()?;
        let attr = self.lookup_for_change(parent, name).await?;
        if attr.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        let path = join(&self.dir_path(parent)?, name);
        let marker = self.marker_key(&path);
        let has_pending = {
            let inodes = self.inodes.lock().unwrap();
            self.files.lock().unwrap().keys().any(|ino| {
                inodes.is_named(*ino) && inodes.get(*ino).is_some_and(|i| i.parent == attr.ino)
            })
        };
        if has_pending {
            return Err(FsError::NotEmpty);
        }
        // A folder listed within the TTL and emptied through this mount since (`rm -r`) is
        // empty without asking again. (A file another client put in it meanwhile is not lost:
        // the folder stays, implied by that file's key.) Otherwise the store says.
        let listed_empty = check == EmptyCheck::MayTrustListing && self.listed_empty(attr.ino);
        if !listed_empty {
            let page = self
                .store
                .list(&ListParams::new(marker.clone()).max_keys(2))
                .await?;
            if page.objects.iter().any(|o| o.key != marker) || !page.common_prefixes.is_empty() {
                return Err(FsError::NotEmpty);
            }
        }
        self.store.delete(&marker).await?;
        self.record_removal(&path);
        self.note_name(parent, name, None);
        Ok(())
    }

    /// Rename by copy and delete: one object for a file, every object below it for a directory
    /// (not atomic; see SEMANTICS.md).
    pub async fn rename(
        &self,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
    ) -> FsResult<()> {
        self.check_writable()?;
        check_name(new_name)?;
        // One rename at a time: renames are the only operations that hold the write states
        // of several files at once (the moved and the replaced file, every file below a
        // moved folder), and two of them could each hold one the other waits for.
        let _one_rename = self.renames.lock().await;
        // Only renames change paths: these two hold until this one is done.
        let from = join(&self.dir_path(parent)?, name);
        let to = join(&self.dir_path(new_parent)?, new_name);
        // Operations on names at or below either wait for the rename (see `gate`).
        let _closed = self.gate.close(&from, &to).await;
        let rename = self.rename_passed(parent, name, new_parent, new_name, from, to);
        let renamed = gate::through_gate(rename).await;
        if renamed.is_err() {
            // Stopped part way, it may have copied some names and removed others: no listing
            // kept up to date with it can be trusted.
            self.listings.lock().unwrap().clear();
        }
        renamed
    }

    /// [`rename`](Self::rename) of `from` to `to`, the gate closed on both.
    async fn rename_passed(
        &self,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
        from: String,
        to: String,
    ) -> FsResult<()> {
        let src = self.lookup_for_change(parent, name).await?;
        if from == to {
            return Ok(());
        }
        // Before anything is removed (an empty folder in the way, below).
        if src.kind == Kind::Dir && to.starts_with(&format!("{from}/")) {
            return Err(FsError::Invalid("cannot move a directory into itself"));
        }
        // A file replaced by the move: as for an unlink of it, those who still have it open
        // keep reading it whole, and its writes never reach the store again (its state stays
        // locked meanwhile, so no close of it overwrites what is moved in).
        let replaced = match self.lookup_for_change(new_parent, new_name).await {
            Ok(dst) if dst.kind == Kind::Dir && src.kind != Kind::Dir => {
                return Err(FsError::IsDir)
            }
            Ok(dst) if dst.kind != Kind::Dir && src.kind == Kind::Dir => {
                return Err(FsError::NotDir)
            }
            Ok(dst) if dst.kind == Kind::Dir => {
                // The store must say it is empty: what is moved in would merge with another
                // client's files there.
                self.rmdir_passed(new_parent, new_name, EmptyCheck::AskTheStore)
                    .await?;
                None
            }
            Ok(dst) => self.state_kept_past_removal(dst.ino).await?,
            Err(FsError::NotFound) => None,
            Err(e) => return Err(e),
        };
        let mut replaced = replaced;
        if let Some(state) = replaced.as_mut() {
            self.stage_all(state).await?;
        }
        // Files whose copy got another ETag than its source (AWS S3 gives one to a copy of an
        // object uploaded in parts): reads are pinned to the ETag, so it must be the copy's.
        let mut moved_etags: Vec<(String, common::ETag)> = Vec::new();
        if src.kind == Kind::Dir {
            let mut moving = self.settle_all_below(&from).await?;
            let (src_prefix, dst_prefix) = (self.marker_key(&from), self.marker_key(&to));
            let mut objects = Vec::new();
            let mut token = None;
            loop {
                let page = self
                    .store
                    .list(&ListParams::new(src_prefix.clone()).continuation_token(token))
                    .await?;
                objects.extend(page.objects.into_iter().map(|o| (o.key, o.size)));
                token = page.next_continuation_token;
                if token.is_none() {
                    break;
                }
            }
            // The copies' ETags, by their paths below the new folder.
            let mut copied: Vec<(String, common::ETag)> = Vec::with_capacity(objects.len());
            for (key, size) in &objects {
                let rest = &key[src_prefix.len()..];
                let dst_key = format!("{dst_prefix}{rest}");
                let copy = self.copy_object(key, *size, &dst_key, None).await?;
                copied.push((join(&to, rest), copy.etag));
            }
            moved_etags = copied;
            for (key, _) in &objects {
                self.store.delete(key).await?;
            }
            // The files being written below go on under their new names. (The gate keeps new
            // ones from being opened for writing below meanwhile: the settled are all.)
            for (_, state) in &mut moving {
                if let Some(rest) = state.key.strip_prefix(&src_prefix) {
                    let key = format!("{dst_prefix}{rest}");
                    state.set_key(key);
                    state.abandon_stream().await;
                }
            }
        } else {
            // Its state stays locked from its commit to its new key: a close meanwhile would
            // upload under the old name, into the copy's gap or after the delete.
            let mut state = self.locked_file_state(src.ino).await;
            let (src_key, dst_key) = (self.key(&from), self.key(&to));
            let never_committed = match state.as_mut() {
                Some(state) => {
                    self.commit_locked(src.ino, state).await?;
                    // Its bytes still only in the store come into its staging file now (pinned
                    // to the version it started from): the object under the old name is about
                    // to go, and the copy may be of another client's newer version.
                    state.load_from_store(&*self.store, 0..u64::MAX).await?;
                    match self.store.head(&src_key).await {
                        Ok(_) => false,
                        Err(e) if e.kind() == ErrorKind::NotFound => true,
                        Err(e) => return Err(e.into()),
                    }
                }
                None => false,
            };
            // Created but never committed: nothing to move in the store yet.
            if !never_committed {
                // The size the commit just wrote, if the file was being written.
                let size = self
                    .inode_path(src.ino)
                    .map_or(src.size, |(_, attr)| attr.size);
                let copied = self.copy_object(&src_key, size, &dst_key, None).await?;
                self.store.delete(&src_key).await?;
                moved_etags.push((to.clone(), copied.etag));
            }
            if let Some(state) = state.as_mut() {
                state.set_key(dst_key);
                state.abandon_stream().await;
            }
        }
        if let Some(replaced) = replaced.as_mut() {
            replaced.detach();
        }
        {
            // One step, as for an unlink (see `record_removal`).
            let mut inodes = self.inodes.lock().unwrap();
            inodes.rename(&from, &to, new_parent, new_name);
            self.set_negative(&from, true);
            // Names found missing below the target before (`mv d e` onto an empty e after
            // a lookup of e/f) are the moved files' now.
            self.negative
                .lock()
                .unwrap()
                .retain(|path, _| !is_at_or_below(path, &to));
            for (path, etag) in moved_etags {
                let Some(ino) = inodes.by_path(&path).map(|i| i.attr.ino) else {
                    continue;
                };
                let inode = inodes.get_mut(ino).expect("indexed inodes exist");
                if inode.etag.as_ref() != Some(&etag) {
                    // The copy is of whatever the old name held then, which may be another
                    // client's newer version: the next stat, open or read HEADs it for its
                    // ETag and size (`changed` still keeps older listings off it).
                    inode.etag = None;
                    if let Some(stale) = Instant::now().checked_sub(self.config.attr_ttl) {
                        inode.fetched = stale;
                    }
                }
            }
        }
        self.renamed.fetch_add(1, Ordering::Release);
        self.note_name(parent, name, None);
        self.note_name(new_parent, new_name, Some(src.kind));
        Ok(())
    }

    /// Server-side copy of `src`, `size` bytes as last seen, to `dst`, whatever its size.
    async fn copy_object(
        &self,
        src: &str,
        size: u64,
        dst: &str,
        metadata: Option<&UserMetadata>,
    ) -> FsResult<PutResult> {
        Ok(s3_backend::copy::copy_object(
            &*self.store,
            src,
            size,
            dst,
            metadata,
            self.config.upload.journal.as_ref(),
        )
        .await?)
    }

    /// Commit every file being written below directory `dir`, and bring into their staging
    /// files the bytes they have only in the store: a rename of `dir` is about to move their
    /// objects. Returns their write states, locked (in inode order: two such renames never
    /// wait for each other) until they have their new keys.
    async fn settle_all_below(
        &self,
        dir: &str,
    ) -> FsResult<Vec<(u64, tokio::sync::OwnedMutexGuard<FileState<S>>)>> {
        let below = format!("{dir}/");
        let mut inos: Vec<u64> = {
            let inodes = self.inodes.lock().unwrap();
            self.files
                .lock()
                .unwrap()
                .keys()
                .copied()
                // Not files removed while open: they stay where they are, out of the store.
                .filter(|ino| {
                    inodes.is_named(*ino)
                        && inodes.get(*ino).is_some_and(|i| i.path.starts_with(&below))
                })
                .collect()
        };
        inos.sort_unstable();
        let mut states = Vec::new();
        for ino in inos {
            if let Some(mut state) = self.locked_file_state(ino).await {
                self.commit_locked(ino, &mut state).await?;
                state.load_from_store(&*self.store, 0..u64::MAX).await?;
                states.push((ino, state));
            }
        }
        Ok(states)
    }

    /// The write state that keeps the bytes of file `ino` for whoever has it open once its
    /// object goes (unlink, or a rename onto it): its own, or, if it is open but was not
    /// written, one made now. POSIX keeps an unlinked file readable and writable through the
    /// descriptors still open on it (a reader of a file replaced by an atomic save, `tail -f`
    /// of a rotated log, a running program's own file). `None` when nothing has it open, or
    /// when the version they opened is gone from the store already.
    async fn state_kept_past_removal(&self, ino: u64) -> FsResult<Option<LockedFile<S>>> {
        if let Some(state) = self.locked_file_state(ino).await {
            return Ok(Some(state));
        }
        if !self.open_counts.lock().unwrap().contains_key(&ino) {
            return Ok(None);
        }
        match self.lock_file_state(ino, false).await {
            Ok((mut guard, made)) => {
                let state = LockedFile::mutex(&guard).clone();
                // Its last close came while the bytes were fetched, and found no state to
                // drop: nobody needs them now. (A close after this check drops it.)
                if made && self.unregister_file_state(ino, &state, &mut guard, false) {
                    guard.discard();
                    return Ok(None);
                }
                Ok(Some(guard))
            }
            Err(FsError::Store(e))
                if matches!(
                    e.kind(),
                    ErrorKind::PreconditionFailed | ErrorKind::NotFound
                ) =>
            {
                tracing::warn!(ino, error = %e, "the bytes of a removed open file are gone from the store; reads of them will fail");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Bring all the bytes of a file about to go away under its name (unlink, or a rename onto
    /// it) into its staging file, its state locked by the caller: they must stay readable
    /// there for whoever has it open once the object is gone. Detach it once it is gone.
    async fn stage_all(&self, state: &mut FileState<S>) -> FsResult<()> {
        match state.load_from_store(&*self.store, 0..u64::MAX).await {
            Ok(()) => Ok(()),
            // That version is gone already (replaced or deleted by another client).
            Err(FsError::Store(e)) if e.kind() == ErrorKind::PreconditionFailed => {
                tracing::warn!(key = %state.key, error = %e, "the bytes of a removed open file are gone from the store; reads of them will fail");
                Ok(())
            }
            // The store may give them later: remove nothing before it has.
            Err(e) => Err(e),
        }
    }

    pub async fn symlink(
        &self,
        parent: u64,
        name: &str,
        target: &str,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        let symlink = self.symlink_passed(parent, name, target, uid, gid);
        self.on_child(parent, name, symlink).await
    }

    async fn symlink_passed(
        &self,
        parent: u64,
        name: &str,
        target: &str,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        let path = self.path_for_new_entry(parent, name).await?;
        let attr = Attr {
            ino: 0,
            kind: Kind::Symlink,
            size: target.len() as u64,
            perm: 0o777,
            uid,
            gid,
            mtime: SystemTime::now(),
        };
        let put = self
            .store
            .put(
                &self.key(&path),
                Bytes::copy_from_slice(target.as_bytes()),
                &self.metadata_of(&attr),
            )
            .await?;
        Ok(self.record_new_entry(parent, name, path, attr, Some(put.etag)))
    }

    pub async fn readlink(&self, ino: u64) -> FsResult<String> {
        self.on_inode(ino, self.readlink_passed(ino)).await
    }

    async fn readlink_passed(&self, ino: u64) -> FsResult<String> {
        let (path, attr) = self.inode_path(ino)?;
        if attr.kind != Kind::Symlink {
            return Err(FsError::Invalid("not a symbolic link"));
        }
        // One GET, no HEAD first: a range past the end is cut at the end, and a target longer
        // than PATH_MAX could not be followed anyway.
        const PATH_MAX: u64 = 4096;
        let body = match self
            .store
            .get_range(&self.key(&path), 0..PATH_MAX, None)
            .await
        {
            Ok(body) => body,
            // An empty object: a range starting at its end.
            Err(e) if e.kind() == ErrorKind::InvalidRange => Bytes::new(),
            Err(e) => return Err(e.into()),
        };
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// Upload everything written and not yet committed, and drop the staging files of what
    /// the store then has (unmount, SIGTERM).
    pub async fn flush_all(&self) -> FsResult<()> {
        let inos: Vec<u64> = self.files.lock().unwrap().keys().copied().collect();
        let mut first_error = None;
        for ino in inos {
            match self.commit(ino).await {
                Ok(()) => self.retire_clean_file(ino).await,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod reftest;
#[cfg(test)]
mod tests;
