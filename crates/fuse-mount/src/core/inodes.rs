//! The inode table: numbers the kernel knows, mapped to paths in the volume.
//!
//! An inode is a path relative to the volume root ("" for the root, "a/b" below it) plus the
//! attributes last seen and when. Numbers are never reused while the mount lives. A rename moves
//! the inode (and, for a directory, every inode below it) to the new path.
//!
//! Each inode counts the entries the kernel was given for it (lookups); the kernel's FORGET
//! takes them back. An inode the kernel holds no entry of, with no open file or written data,
//! is dropped: at once when the kernel forgets it, or, for one only seen in a listing, by a
//! sweep once its attributes are stale. So the table holds what the kernel holds plus what was
//! listed recently, not every name the mount has ever seen.

use std::collections::{HashMap, VecDeque};
use std::time::{Instant, SystemTime};

use common::{ETag, ObjectMeta, StoreResult};
use serde::{Deserialize, Serialize};

use super::journal::{InodeJournal, JournaledInode, Record};

pub const ROOT_INO: u64 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

/// Attributes of an inode as the filesystem reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    /// Permission bits only (no type bits).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
}

#[derive(Debug, Clone)]
pub struct Inode {
    pub parent: u64,
    pub name: String,
    /// Path relative to the volume root, no leading or trailing slash.
    pub path: String,
    pub attr: Attr,
    /// The object version the attributes describe (files and symlinks).
    pub etag: Option<ETag>,
    /// When the attributes were last confirmed by the store (or written by us).
    pub fetched: Instant,
    /// When this mount last changed the file without the store confirming its attributes
    /// (a write not yet uploaded, a rename, a chmod): an answer of the store sent before that
    /// is older than what the mount knows, though not a reason to trust it longer.
    pub changed: Instant,
    /// The version whose bytes the kernel may hold in its page cache from an earlier open.
    pub kernel_cached: Option<ETag>,
    /// Whether mode/uid/gid came from the object's metadata (HEAD) rather than defaults
    /// (a listing carries no metadata).
    pub metadata_known: bool,
    /// Entries of it the kernel was given and has not forgotten.
    pub lookups: u64,
}

/// What a HEAD about an entry found, to weigh against what the mount learnt of it since
/// ([`Inode::knows_more_than`]).
#[derive(Debug, Clone, Copy)]
pub enum Answer<'a> {
    /// A directory's marker (or that it has none): its mode, owner and mtime.
    Marker,
    /// The object, at this version, with its metadata.
    Object(&'a ETag),
    /// No object of that name.
    Missing,
}

impl<'a> Answer<'a> {
    /// What a HEAD of an object found (an error other than "not found" says nothing of it,
    /// and its caller returns that error).
    pub fn of_head(head: &'a StoreResult<ObjectMeta>) -> Self {
        match head {
            Ok(meta) => Answer::Object(&meta.etag),
            Err(_) => Answer::Missing,
        }
    }
}

impl Inode {
    /// Since when the mount's knowledge of it holds: confirmed by the store, or changed here.
    pub fn known_at(&self) -> Instant {
        self.fetched.max(self.changed)
    }

    /// Whether what the mount knows of this entry is newer than `answer`, a HEAD sent at
    /// `asked`: changed here since, or confirmed since by what knew as much. A listing since
    /// knew less than a HEAD of a directory's marker (it does not show it) or of a file's
    /// metadata at the version the listing showed (it shows no mode nor owner): that answer
    /// still goes in.
    pub fn knows_more_than(&self, asked: Instant, answer: Answer) -> bool {
        if self.changed >= asked {
            return true;
        }
        let listing_knew_less = !self.metadata_known
            && match answer {
                Answer::Marker => self.attr.kind == Kind::Dir,
                Answer::Object(etag) => self.etag.as_ref() == Some(etag),
                Answer::Missing => false,
            };
        self.fetched >= asked && !listing_knew_less
    }
}

/// What a HEAD (or our own upload) taught about a file, kept after its inode goes, so that a
/// listing showing the same ETag again confirms its mode and owner without a new HEAD.
#[derive(Debug, Clone)]
struct Remembered {
    etag: ETag,
    perm: u32,
    uid: u32,
    gid: u32,
}

/// Files remembered after their inodes went (about 100 bytes each); the oldest go first.
const REMEMBERED: usize = 100_000;

#[derive(Debug)]
pub struct InodeTable {
    /// When the table was made: the `changed` of an inode the mount has not changed, older
    /// than any request the mount sends ([`Inode::knows_more_than`]).
    made: Instant,
    next: u64,
    inodes: HashMap<u64, Inode>,
    by_path: HashMap<String, u64>,
    /// Where new numbers and renames are recorded, for a takeover after a crash.
    journal: Option<InodeJournal>,
    remembered: HashMap<String, Remembered>,
    remembered_order: VecDeque<String>,
}

impl InodeTable {
    pub fn new(root: Attr) -> Self {
        let made = Instant::now();
        let mut table = Self {
            made,
            next: ROOT_INO + 1,
            inodes: HashMap::new(),
            by_path: HashMap::new(),
            journal: None,
            remembered: HashMap::new(),
            remembered_order: VecDeque::new(),
        };
        table.inodes.insert(
            ROOT_INO,
            Inode {
                parent: ROOT_INO,
                name: String::new(),
                path: String::new(),
                attr: root,
                etag: None,
                fetched: made,
                changed: made,
                kernel_cached: None,
                metadata_known: true,
                lookups: 1,
            },
        );
        table.by_path.insert(String::new(), ROOT_INO);
        table
    }

    pub fn len(&self) -> usize {
        self.inodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inodes.is_empty()
    }

    /// The kernel was given an entry of `attr.ino`, named `name` in `parent`. If the inode was
    /// dropped meanwhile (the kernel forgot an earlier entry while this one was on its way),
    /// it comes back under the same number.
    pub fn entry_given(&mut self, parent: u64, name: &str, attr: &Attr) {
        if let Some(inode) = self.inodes.get_mut(&attr.ino) {
            inode.lookups += 1;
            return;
        }
        let Some(parent_path) = self.inodes.get(&parent).map(|p| p.path.clone()) else {
            return;
        };
        let path = if parent_path.is_empty() {
            name.to_string()
        } else {
            format!("{parent_path}/{name}")
        };
        let now = Instant::now();
        self.insert(attr.ino, parent, name, path, attr.clone(), None, false, now);
        if let Some(inode) = self.inodes.get_mut(&attr.ino) {
            inode.lookups = 1;
        }
    }

    /// The kernel forgot `n` entries of `ino`. Returns true when it holds none any more.
    pub fn forget(&mut self, ino: u64, n: u64) -> bool {
        match self.inodes.get_mut(&ino) {
            Some(inode) if ino != ROOT_INO => {
                inode.lookups = inode.lookups.saturating_sub(n);
                inode.lookups == 0
            }
            _ => false,
        }
    }

    /// Drop inode `ino` (the kernel holds no entry of it and nothing here uses it).
    pub fn drop_inode(&mut self, ino: u64) {
        if ino == ROOT_INO {
            return;
        }
        if let Some(inode) = self.inodes.remove(&ino) {
            if self.by_path.get(&inode.path) == Some(&ino) {
                self.by_path.remove(&inode.path);
                if let (true, Kind::File, Some(etag)) =
                    (inode.metadata_known, inode.attr.kind, inode.etag.clone())
                {
                    self.remember(inode.path.clone(), etag, &inode.attr);
                }
            }
            if let Some(journal) = &mut self.journal {
                journal.append(&Record::Forget { ino });
            }
            self.compact_journal_if_due();
        }
    }

    /// How many inodes the kernel holds entries of.
    pub fn held(&self) -> usize {
        self.inodes.values().filter(|i| i.lookups > 0).count()
    }

    /// Inodes the kernel holds no entry of and whose attributes were fetched before `stale`:
    /// candidates for a sweep.
    pub fn unheld_before(&self, stale: Instant) -> Vec<u64> {
        self.inodes
            .iter()
            .filter(|(&ino, i)| ino != ROOT_INO && i.lookups == 0 && i.known_at() < stale)
            .map(|(&ino, _)| ino)
            .collect()
    }

    /// Record every new number and rename in `journal` from now on.
    pub fn with_journal(mut self, journal: InodeJournal) -> Self {
        self.journal = Some(journal);
        self
    }

    /// The table a crashed process left, from its journal: the same numbers for the same
    /// names, with `placeholder` attributes of each kind and `fetched` long ago, so they are
    /// fetched again at first use.
    pub fn restore(
        root: Attr,
        journaled: Vec<JournaledInode>,
        placeholder: impl Fn(Kind) -> Attr,
        fetched: Instant,
    ) -> Self {
        let mut table = Self::new(root);
        let mut pending = journaled;
        // Parents first: a child's path is its parent's path plus its name.
        while !pending.is_empty() {
            let before = pending.len();
            pending.retain(|j| {
                let Some(parent_path) = table.inodes.get(&j.parent).map(|p| p.path.clone()) else {
                    return true;
                };
                let path = if parent_path.is_empty() {
                    j.name.clone()
                } else {
                    format!("{parent_path}/{}", j.name)
                };
                let mut attr = Attr {
                    ino: j.ino,
                    ..placeholder(j.kind)
                };
                if let Some((perm, uid, gid)) = j.owner {
                    (attr.perm, attr.uid, attr.gid) = (perm, uid, gid);
                }
                table.inodes.insert(
                    j.ino,
                    Inode {
                        parent: j.parent,
                        name: j.name.clone(),
                        path: path.clone(),
                        attr,
                        etag: None,
                        fetched,
                        changed: fetched,
                        kernel_cached: None,
                        metadata_known: j.owner.is_some(),
                        // The kernel may hold any number of entries of it: never dropped
                        // before it says so (FORGET).
                        lookups: u64::MAX / 2,
                    },
                );
                // Of two inodes with one name, the newer (higher number) holds it.
                if j.linked && table.by_path.get(&path).is_none_or(|&other| other < j.ino) {
                    table.by_path.insert(path, j.ino);
                }
                table.next = table.next.max(j.ino + 1);
                false
            });
            if pending.len() == before {
                break; // the rest have no way to the root (the journal checked; belt and braces)
            }
        }
        table
    }

    pub fn get(&self, ino: u64) -> Option<&Inode> {
        self.inodes.get(&ino)
    }

    pub fn get_mut(&mut self, ino: u64) -> Option<&mut Inode> {
        self.inodes.get_mut(&ino)
    }

    pub fn by_path(&self, path: &str) -> Option<&Inode> {
        self.by_path.get(path).and_then(|ino| self.inodes.get(ino))
    }

    /// Whether `ino` is still the inode under its path: not unlinked, nor replaced by a rename
    /// onto its name (a file open meanwhile keeps its inode after either).
    pub fn is_named(&self, ino: u64) -> bool {
        self.inodes
            .get(&ino)
            .is_some_and(|inode| self.by_path.get(&inode.path) == Some(&ino))
    }

    /// Insert or refresh the inode for `parent`/`name`, keeping its number if it had one.
    /// A kind change (a file replaced by a directory of the same name) gets a new number.
    /// `confirmed` is when the store was asked (a HEAD sent, a listing begun): the answer
    /// describes the store as it was then at the earliest, so the TTL and later answers are
    /// weighed from there.
    #[allow(clippy::too_many_arguments)]
    pub fn upsert(
        &mut self,
        parent: u64,
        name: &str,
        path: String,
        mut attr: Attr,
        etag: Option<ETag>,
        metadata_known: bool,
        confirmed: Instant,
    ) -> Attr {
        if let Some(&ino) = self.by_path.get(&path) {
            let inode = self.inodes.get_mut(&ino).expect("indexed inodes exist");
            if inode.attr.kind == attr.kind {
                if !metadata_known {
                    // A listing refreshes size and time but knows no mode/uid/gid: those of
                    // a HEAD stay, also of an earlier version (a better guess than the
                    // defaults until the next HEAD).
                    attr.perm = inode.attr.perm;
                    attr.uid = inode.attr.uid;
                    attr.gid = inode.attr.gid;
                }
                // Those of another version are a guess until a HEAD of this one.
                inode.metadata_known =
                    metadata_known || (inode.metadata_known && inode.etag == etag);
                attr.ino = ino;
                inode.attr = attr.clone();
                inode.etag = etag;
                inode.fetched = confirmed;
                return attr;
            }
            self.remove_path(&path);
        }
        let ino = self.next;
        self.next += 1;
        attr.ino = ino;
        self.insert(
            ino,
            parent,
            name,
            path,
            attr.clone(),
            etag,
            metadata_known,
            confirmed,
        );
        attr
    }

    /// Put inode `ino` in the table (and the journal) at `path`, which it then holds.
    #[allow(clippy::too_many_arguments)]
    fn insert(
        &mut self,
        ino: u64,
        parent: u64,
        name: &str,
        path: String,
        attr: Attr,
        etag: Option<ETag>,
        metadata_known: bool,
        fetched: Instant,
    ) {
        if let Some(journal) = &mut self.journal {
            journal.append(&Record::New {
                ino,
                parent,
                name: name.to_string(),
                kind: attr.kind,
            });
        }
        self.inodes.insert(
            ino,
            Inode {
                parent,
                name: name.to_string(),
                path: path.clone(),
                attr,
                etag,
                fetched,
                // Found in the store (or made here, which `metadata_known` and `fetched` say).
                changed: self.made,
                kernel_cached: None,
                metadata_known,
                lookups: 0,
            },
        );
        self.by_path.insert(path, ino);
        self.compact_journal_if_due();
    }

    /// Rewrite the journal from the table once it holds four times more records than inodes
    /// (names come and go: created, forgotten, renamed), so it stays about the table's size.
    fn compact_journal_if_due(&mut self) {
        let Some(journal) = &self.journal else {
            return;
        };
        if journal.records() <= 4 * self.inodes.len() as u64 + 10_000 {
            return;
        }
        let records: Vec<Record> = self
            .inodes
            .iter()
            .filter(|(&ino, _)| ino != ROOT_INO)
            .flat_map(|(&ino, inode)| {
                let mut records = vec![Record::New {
                    ino,
                    parent: inode.parent,
                    name: inode.name.clone(),
                    kind: inode.attr.kind,
                }];
                if self.by_path.get(&inode.path) != Some(&ino) {
                    records.push(Record::Gone { ino });
                }
                if inode.metadata_known {
                    records.push(Record::Owner {
                        ino,
                        perm: inode.attr.perm,
                        uid: inode.attr.uid,
                        gid: inode.attr.gid,
                    });
                }
                records
            })
            .collect();
        let journal = self.journal.as_mut().expect("checked above");
        if let Err(e) = journal.rewrite(records.into_iter()) {
            tracing::warn!(error = %e, "cannot rewrite the inode journal; it goes on growing");
        }
    }

    /// Forget the path (the inode number stays valid for open handles until forgotten).
    pub fn remove_path(&mut self, path: &str) {
        if let Some(ino) = self.by_path.remove(path) {
            if let Some(journal) = &mut self.journal {
                journal.append(&Record::Gone { ino });
            }
        }
    }

    /// Record the permissions and owner of `ino` as they are now (set through the mount).
    pub fn journal_owner(&mut self, ino: u64) {
        let (Some(journal), Some(inode)) = (&mut self.journal, self.inodes.get(&ino)) else {
            return;
        };
        journal.append(&Record::Owner {
            ino,
            perm: inode.attr.perm,
            uid: inode.attr.uid,
            gid: inode.attr.gid,
        });
    }

    fn remember(&mut self, path: String, etag: ETag, attr: &Attr) {
        let remembered = Remembered {
            etag,
            perm: attr.perm,
            uid: attr.uid,
            gid: attr.gid,
        };
        self.remembered.insert(path.clone(), remembered);
        self.remembered_order.push_back(path);
        while self.remembered.len() > REMEMBERED {
            match self.remembered_order.pop_front() {
                Some(oldest) => {
                    self.remembered.remove(&oldest);
                }
                None => break,
            }
        }
    }

    /// The inode of file `path` (`name` in `parent`) as a listing shows it (`attr`, `etag`),
    /// with the mode and owner remembered from before its inode went, if its ETag is the same.
    /// `listed` is when that listing began.
    pub fn recall(
        &mut self,
        parent: u64,
        name: &str,
        path: &str,
        attr: &Attr,
        etag: &ETag,
        listed: Instant,
    ) -> Option<Attr> {
        let remembered = self
            .remembered
            .get(path)
            .filter(|r| &r.etag == etag)?
            .clone();
        self.remembered.remove(path);
        let attr = Attr {
            perm: remembered.perm,
            uid: remembered.uid,
            gid: remembered.gid,
            ..attr.clone()
        };
        Some(self.upsert(
            parent,
            name,
            path.to_string(),
            attr,
            Some(remembered.etag),
            true,
            listed,
        ))
    }

    /// Delete the journal: a clean unmount leaves nothing to take over.
    pub fn remove_journal(&mut self) {
        if let Some(journal) = self.journal.take() {
            journal.remove();
        }
    }

    /// Move `from` (and everything below it) to `to`, under `new_parent` named `new_name`.
    pub fn rename(&mut self, from: &str, to: &str, new_parent: u64, new_name: &str) {
        self.remove_path(to);
        let below = format!("{from}/");
        let moved: Vec<(String, u64)> = self
            .by_path
            .iter()
            .filter(|(p, _)| p.as_str() == from || p.starts_with(&below))
            .map(|(p, ino)| (p.clone(), *ino))
            .collect();
        for (old, ino) in moved {
            self.by_path.remove(&old);
            let new = format!("{to}{}", &old[from.len()..]);
            let inode = self.inodes.get_mut(&ino).expect("indexed inodes exist");
            if old == from {
                inode.parent = new_parent;
                inode.name = new_name.to_string();
                if let Some(journal) = &mut self.journal {
                    journal.append(&Record::Move {
                        ino,
                        parent: new_parent,
                        name: new_name.to_string(),
                    });
                }
            }
            inode.path = new.clone();
            // Older answers about the new name (a listing that ran meanwhile) must not replace
            // what the move left.
            inode.changed = Instant::now();
            self.by_path.insert(new, ino);
        }
    }
}
