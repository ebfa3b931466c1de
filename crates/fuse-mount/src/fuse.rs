//! The fuser adapter: each callback moves its reply into a task on the tokio runtime, runs the
//! core operation there and answers, so a slow request never holds up the others. Reads,
//! lookups and getattrs the mount can answer from what it holds are answered on the FUSE
//! thread that got them, without that trip (see ARCHITECTURE.md).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::metrics::{metrics, FuseErrorLabels, OpLabels};
use common::ObjectStore;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;

use crate::core::{Attr, DirEntry, Fs, FsError, IfExists, Kind, SetAttr};

/// Serves an [`Fs`] to the kernel.
#[derive(Debug)]
pub struct FuseAdapter<S: ObjectStore> {
    fs: Arc<Fs<S>>,
    runtime: Handle,
    ttl: Duration,
    /// Listings of open directory handles, served by offset.
    /// Open directories: when each was listed (at opendir), and its entries then.
    dirs: Arc<Mutex<HashMap<u64, Listed>>>,
    next_dir: AtomicU64,
}

impl<S: ObjectStore> FuseAdapter<S> {
    pub fn new(fs: Arc<Fs<S>>, runtime: Handle) -> Self {
        let ttl = fs.config().attr_ttl;
        Self {
            fs,
            runtime,
            ttl,
            dirs: Arc::default(),
            // Above the directory handles of an earlier process serving this mount.
            next_dir: AtomicU64::new(crate::core::first_handle_number()),
        }
    }
}

impl<S: ObjectStore> FuseAdapter<S> {
    /// The listing of open directory handle `fh` of `ino`. A handle this process did not give
    /// out (the kernel got it from the process this one took the mount over from) is listed
    /// again.
    fn dir_entries(&self, fh: u64, ino: u64) -> Result<Listed, Errno> {
        if let Some(listed) = self.dirs.lock().unwrap().get(&fh).cloned() {
            return Ok(listed);
        }
        let at = Instant::now();
        let entries = self
            .runtime
            .block_on(self.fs.readdir(ino))
            .map_err(|e| errno(&e))?;
        let listed = (at, Arc::new(entries));
        self.dirs.lock().unwrap().insert(fh, listed.clone());
        Ok(listed)
    }
}

/// An open directory's entries and when they were listed.
type Listed = (Instant, Arc<Vec<DirEntry>>);

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

/// Log at a level that fits: a missing name is routine, a storage failure is not.
fn log_error(op: &str, e: &FsError) {
    match e {
        FsError::NotFound | FsError::Exists | FsError::NotEmpty => tracing::debug!(op, error = %e),
        FsError::Store(_) | FsError::Local(_) | FsError::NoSpace(_) => {
            tracing::warn!(op, error = %e, "operation failed")
        }
        _ => tracing::debug!(op, error = %e),
    }
}

fn file_attr(attr: &Attr) -> FileAttr {
    let kind = match attr.kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
    };
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: attr.mtime,
        mtime: attr.mtime,
        ctime: attr.mtime,
        crtime: attr.mtime,
        kind,
        perm: attr.perm as u16,
        nlink: if attr.kind == Kind::Dir { 2 } else { 1 },
        uid: attr.uid,
        gid: attr.gid,
        rdev: 0,
        blksize: 1 << 20,
        flags: 0,
    }
}

/// The attributes of an inode asked for by number (getattr, setattr): those of a file removed
/// while open (`fstat` of an unlinked file) say no name links to it.
fn inode_attr<S: ObjectStore>(fs: &Fs<S>, attr: &Attr) -> FileAttr {
    let mut out = file_attr(attr);
    if !fs.is_named(attr.ino) {
        out.nlink = 0;
    }
    out
}

/// Answer a request that made or found entry `name` of `parent` (lookup, mkdir, symlink): the
/// kernel now holds one more reference to its inode.
fn reply_entry<S: ObjectStore>(
    fs: &Fs<S>,
    parent: u64,
    name: &str,
    attr: &Attr,
    ttl: &Duration,
    reply: ReplyEntry,
) {
    fs.entry_given(parent, name, attr);
    reply.entry(ttl, &file_attr(attr), Generation(0))
}

fn name_str(name: &OsStr) -> Result<String, Errno> {
    name.to_str()
        .map(str::to_string)
        .ok_or(Errno::from_i32(libc::EINVAL))
}

/// Reply to operation `$op` with `$result` (a `Result<T, FsError>`): `$ok` with the value, or
/// `reply.error` with the errno (logged and counted).
macro_rules! reply_result {
    ($op:literal, $reply:ident, $result:expr, |$v:ident| $ok:expr) => {
        match $result {
            Ok($v) => $ok,
            Err(e) => {
                log_error($op, &e);
                count_error($op, e.errno());
                $reply.error(errno(&e));
            }
        }
    };
}

/// Run `$body` (an async block yielding `Result<T, FsError>`) on the runtime, then reply as
/// [`reply_result`] does.
macro_rules! spawn_reply {
    ($self:ident, $op:literal, $reply:ident, $fs:ident => $body:expr, |$v:ident| $ok:expr) => {{
        let $fs = $self.fs.clone();
        count_op($op);
        $self
            .runtime
            .spawn(async move { reply_result!($op, $reply, $body, |$v| $ok) });
    }};
}

fn count_op(op: &'static str) {
    metrics().fuse_ops.get_or_create(&OpLabels { op }).inc();
}

fn count_error(op: &'static str, errno: i32) {
    metrics()
        .fuse_errors
        .get_or_create(&FuseErrorLabels { op, errno })
        .inc();
}

impl<S: ObjectStore> Filesystem for FuseAdapter<S> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Larger requests mean fewer round trips through the kernel for big sequential IO.
        let _ = config.set_max_write(1 << 20);
        // A large read-ahead lets the kernel keep several reads in flight for one reader.
        let _ = config.set_max_readahead(8 << 20);
        // readdirplus: listings carry attributes, so `ls -l` needs no lookup per entry.
        // Parallel dirops: lookups in one directory need not wait for each other.
        // Atomic O_TRUNC: open(O_TRUNC) comes as one open, not an open and a setattr, so the
        // file is known to be emptied by that open (see `FileState::close_can_wait`).
        let _ = config.add_capabilities(
            InitFlags::FUSE_DO_READDIRPLUS
                | InitFlags::FUSE_PARALLEL_DIROPS
                | InitFlags::FUSE_ATOMIC_O_TRUNC,
        );
        Ok(())
    }

    fn destroy(&mut self) {
        let fs = self.fs.clone();
        if let Err(e) = self.runtime.block_on(fs.flush_all()) {
            tracing::error!(error = %e, "unmount: some written files could not be uploaded; see the staging folder");
        }
        // Unmounted: no process will take this mount over.
        fs.remove_inode_journal();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = match name_str(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let ttl = self.ttl;
        // Answered here when the mount knows the answer: no task switch to the runtime and back.
        if let Some(result) = self.fs.lookup_now(parent.0, &name) {
            count_op("lookup");
            let fs = &self.fs;
            return reply_result!("lookup", reply, result, |attr| reply_entry(
                fs, parent.0, &name, &attr, &ttl, reply
            ));
        }
        spawn_reply!(self, "lookup", reply, fs => fs.lookup(parent.0, &name).await, |attr| {
            reply_entry(&fs, parent.0, &name, &attr, &ttl, reply)
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let ttl = self.ttl;
        // As for lookups: answered here when the mount has the attributes at hand.
        if let Some(result) = self.fs.getattr_now(ino.0) {
            count_op("getattr");
            let fs = &self.fs;
            return reply_result!("getattr", reply, result, |attr| reply
                .attr(&ttl, &inode_attr(fs, &attr)));
        }
        spawn_reply!(self, "getattr", reply, fs => fs.getattr(ino.0).await, |attr| reply.attr(&ttl, &inode_attr(&fs, &attr)));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mtime = mtime.map(|t| match t {
            TimeOrNow::SpecificTime(t) => t,
            TimeOrNow::Now => SystemTime::now(),
        });
        let changes = SetAttr {
            mode,
            uid,
            gid,
            size,
            mtime,
        };
        let ttl = self.ttl;
        spawn_reply!(self, "setattr", reply, fs => fs.setattr(ino.0, changes).await, |attr| reply.attr(&ttl, &inode_attr(&fs, &attr)));
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        spawn_reply!(self, "readlink", reply, fs => fs.readlink(ino.0).await, |target| reply.data(target.as_bytes()));
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let name = match name_str(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let (uid, gid, ttl) = (req.uid(), req.gid(), self.ttl);
        spawn_reply!(self, "mkdir", reply, fs => fs.mkdir(parent.0, &name, mode & !umask, uid, gid).await, |attr| {
            reply_entry(&fs, parent.0, &name, &attr, &ttl, reply)
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = match name_str(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        spawn_reply!(self, "unlink", reply, fs => fs.unlink(parent.0, &name).await, |_done| reply.ok());
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = match name_str(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        spawn_reply!(self, "rmdir", reply, fs => fs.rmdir(parent.0, &name).await, |_done| reply.ok());
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (name, target) = match (name_str(link_name), target.to_str()) {
            (Ok(n), Some(t)) => (n, t.to_string()),
            _ => return reply.error(Errno::from_i32(libc::EINVAL)),
        };
        let (uid, gid, ttl) = (req.uid(), req.gid(), self.ttl);
        spawn_reply!(self, "symlink", reply, fs => fs.symlink(parent.0, &name, &target, uid, gid).await, |attr| {
            reply_entry(&fs, parent.0, &name, &attr, &ttl, reply)
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.bits() != 0 {
            // RENAME_EXCHANGE / RENAME_NOREPLACE cannot be done atomically on S3.
            return reply.error(Errno::from_i32(libc::EINVAL));
        }
        let (name, newname) = match (name_str(name), name_str(newname)) {
            (Ok(a), Ok(b)) => (a, b),
            _ => return reply.error(Errno::from_i32(libc::EINVAL)),
        };
        spawn_reply!(self, "rename", reply, fs => fs.rename(parent.0, &name, newparent.0, &newname).await, |_done| reply.ok());
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let writable = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        let truncate = flags.0 & libc::O_TRUNC != 0;
        spawn_reply!(self, "open", reply, fs => fs.open_with_cache_hint(ino.0, writable, truncate).await, |opened| {
            let (fh, keep_cache) = opened;
            let flags = if keep_cache { FopenFlags::FOPEN_KEEP_CACHE } else { FopenFlags::empty() };
            reply.opened(FileHandle(fh), flags)
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.fs.take_up_handle(fh.0, ino.0);
        let cached = {
            let _runtime = self.runtime.enter();
            self.fs.read_cached(fh.0, offset, size)
        };
        if let Some(data) = cached {
            count_op("read");
            return reply.data(&data);
        }
        spawn_reply!(self, "read", reply, fs => fs.read(fh.0, offset, size).await, |data| reply.data(&data));
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _wf: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.fs.take_up_handle(fh.0, ino.0);
        let data = data.to_vec();
        spawn_reply!(self, "write", reply, fs => fs.write(fh.0, offset, &data).await, |n| reply.written(n));
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.fs.take_up_handle(fh.0, ino.0);
        spawn_reply!(self, "flush", reply, fs => fs.flush(fh.0).await, |_done| reply.ok());
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.take_up_handle(fh.0, ino.0);
        spawn_reply!(self, "release", reply, fs => fs.release(fh.0).await, |_done| reply.ok());
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.take_up_handle(fh.0, ino.0);
        spawn_reply!(self, "fsync", reply, fs => fs.fsync(fh.0).await, |_done| reply.ok());
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let dirs = self.dirs.clone();
        let handle = self.next_dir.fetch_add(1, Ordering::Relaxed);
        let at = Instant::now();
        spawn_reply!(self, "opendir", reply, fs => fs.readdir(ino.0).await, |entries| {
            dirs.lock().unwrap().insert(handle, (at, Arc::new(entries)));
            reply.opened(FileHandle(handle), FopenFlags::empty())
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        count_op("readdir");
        let entries = match self.dir_entries(fh.0, ino.0) {
            Ok((_, entries)) => entries,
            Err(e) => return reply.error(e),
        };
        let dots = [
            (ino.0, FileType::Directory, ".".to_string()),
            (ino.0, FileType::Directory, "..".to_string()),
        ];
        let all = dots.into_iter().chain(
            entries
                .iter()
                .map(|e| (e.attr.ino, file_attr(&e.attr).kind, e.name.clone())),
        );
        for (i, (child, kind, name)) in all.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), (i + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        count_op("readdirplus");
        let (listed_at, entries) = match self.dir_entries(fh.0, ino.0) {
            Ok(listed) => listed,
            Err(e) => return reply.error(e),
        };
        let Ok(own) = self.runtime.block_on(self.fs.getattr(ino.0)) else {
            return reply.error(Errno::from_i32(libc::ENOENT));
        };
        for i in offset as usize..entries.len() + 2 {
            let (name, attr) = match i {
                0 => (".", Some(own.clone())),
                1 => ("..", Some(own.clone())),
                // Each entry as it is now, not as opendir listed it (none if removed since).
                _ => {
                    let entry = &entries[i - 2];
                    (
                        entry.name.as_str(),
                        self.fs.entry_now(ino.0, entry, listed_at),
                    )
                }
            };
            let Some(attr) = attr else { continue };
            if reply.add(
                INodeNo(attr.ino),
                (i + 1) as u64,
                name,
                &self.ttl,
                &file_attr(&attr),
                Generation(0),
            ) {
                break;
            }
            // Each entry but `.` and `..` counts as a lookup for the kernel.
            if i >= 2 {
                self.fs.entry_given(ino.0, name, &attr);
            }
        }
        reply.ok();
    }

    // (BATCH_FORGET comes here too: fuser's default `batch_forget` calls `forget`.)
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs.lock().unwrap().remove(&fh.0);
        reply.ok();
    }

    // No extended attributes: ENOSYS makes the kernel stop asking (and fuser stop warning).
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        reply.error(Errno::from_i32(libc::ENOSYS));
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::from_i32(libc::ENOSYS));
    }

    // Special files (FIFOs, sockets, device nodes) cannot be objects: EPERM, as filesystems
    // without them answer. (Regular files come through create.)
    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::from_i32(libc::EPERM));
    }

    // No hard links: one object has one key.
    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::from_i32(libc::EPERM));
    }

    // No preallocation: EOPNOTSUPP, on which posix_fallocate() writes the range itself.
    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::from_i32(libc::EOPNOTSUPP));
    }

    // ENOSYS: the kernel copies through reads and writes instead, and stops asking.
    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: fuser::ReplyWrite,
    ) {
        reply.error(Errno::from_i32(libc::ENOSYS));
    }

    // No ioctls on files: ENOTTY is what `isatty()` and friends expect of a regular file (and
    // fuser's default logs a warning for every one: Python asks at each open).
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::from_i32(libc::ENOTTY));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Object stores have no fixed capacity: report a large, constant amount of free space
        // so programs that check before writing go ahead.
        const BLOCKS: u64 = 1 << 40;
        reply.statfs(BLOCKS, BLOCKS, BLOCKS, 1 << 30, 1 << 30, 4096, 255, 4096);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = match name_str(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let (uid, gid, ttl) = (req.uid(), req.gid(), self.ttl);
        let if_exists = if flags & libc::O_EXCL != 0 {
            IfExists::Fail
        } else if flags & libc::O_TRUNC != 0 {
            IfExists::Truncate
        } else {
            IfExists::Open
        };
        spawn_reply!(self, "create", reply, fs => fs.create(parent.0, &name, mode & !umask, uid, gid, if_exists).await, |created| {
            let (attr, fh) = created;
            fs.entry_given(parent.0, &name, &attr);
            reply.created(&ttl, &file_attr(&attr), Generation(0), FileHandle(fh), FopenFlags::empty())
        });
    }
}
