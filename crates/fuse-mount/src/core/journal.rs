//! The inode journal: the inode numbers the kernel may hold for a mount, and the names they
//! stand for, kept in a file as they change. When the process serving a mount dies and a new
//! one takes the mount over (the plugin's supervisor hands it the `/dev/fuse` connection), the
//! kernel goes on asking about the numbers it knows; the journal lets the new process answer.
//!
//! One JSON line per change, appended with one `write` each: only a crash of the process must
//! be survived, not of the host (the mount dies with the host), so no fsync. Attributes are not
//! kept: the new process fetches them again.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::inodes::{Kind, ROOT_INO};

/// One change of the inode table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Record {
    /// A number given to `name` in directory `parent`.
    New {
        ino: u64,
        parent: u64,
        name: String,
        kind: Kind,
    },
    /// The inode was renamed (what is below a directory moves with it).
    Move { ino: u64, parent: u64, name: String },
    /// The inode's name no longer leads to it (unlinked, or replaced).
    Gone { ino: u64 },
    /// Permissions and owner set here (create, chmod, chown): a file not uploaded yet has
    /// them nowhere else.
    Owner {
        ino: u64,
        perm: u32,
        uid: u32,
        gid: u32,
    },
    /// The kernel forgot the inode: the number is free of meaning.
    Forget { ino: u64 },
}

/// An inode as the journal knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournaledInode {
    pub ino: u64,
    pub parent: u64,
    pub name: String,
    pub kind: Kind,
    /// Its name still leads to it.
    pub linked: bool,
    /// Permissions, uid and gid, if set through the mount.
    pub owner: Option<(u32, u32, u32)>,
}

/// The append end of a journal file.
#[derive(Debug)]
pub struct InodeJournal {
    path: PathBuf,
    file: File,
    /// Records written since the journal was last started or rewritten.
    records: u64,
}

/// Device and inode number of a file: which file a path names right now.
fn identity(metadata: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (metadata.dev(), metadata.ino())
}

impl InodeJournal {
    /// Start an empty journal at `path` (a new mount: the kernel knows no number yet).
    pub fn create(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // A new file, not the old one truncated: an older mount's `remove` must not find it
        // to be its own.
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let file = File::create_new(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            records: 0,
        })
    }

    /// Records written since the journal was started or last rewritten.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Replace the journal by `records` (what the inode table holds now): a new file, renamed
    /// over the old one, so a crash in the middle leaves the old journal whole.
    pub fn rewrite(&mut self, records: impl Iterator<Item = Record>) -> std::io::Result<()> {
        let fresh = self.path.with_extension("new");
        let mut journal = Self::create(&fresh)?;
        let mut lines = Vec::new();
        for record in records {
            serde_json::to_writer(&mut lines, &record).expect("records serialize");
            lines.push(b'\n');
        }
        journal.file.write_all(&lines)?;
        std::fs::rename(&fresh, &self.path)?;
        self.file = journal.file;
        self.records = 0;
        Ok(())
    }

    /// Read the journal at `path` (a missing file is an empty journal), then start it again
    /// holding just what it said, one `New` (and `Gone`) per inode. A line cut short by a crash
    /// mid-write ends the reading.
    pub fn take_over(path: &Path) -> std::io::Result<(Self, Vec<JournaledInode>)> {
        let inodes = match File::open(path) {
            Ok(file) => replay(BufReader::new(file)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(journal = %path.display(), "no inode journal to take the mount over with: files and folders the kernel already knows answer ENOENT until looked up again from the root");
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        let fresh = path.with_extension("new");
        let mut journal = Self::create(&fresh)?;
        for inode in &inodes {
            journal.append(&Record::New {
                ino: inode.ino,
                parent: inode.parent,
                name: inode.name.clone(),
                kind: inode.kind,
            });
            if !inode.linked {
                journal.append(&Record::Gone { ino: inode.ino });
            }
            if let Some((perm, uid, gid)) = inode.owner {
                journal.append(&Record::Owner {
                    ino: inode.ino,
                    perm,
                    uid,
                    gid,
                });
            }
        }
        std::fs::rename(&fresh, path)?;
        journal.path = path.to_path_buf();
        Ok((journal, inodes))
    }

    /// Append `record`. A failed write is logged, not returned: the mount works on, only a
    /// takeover after a crash would miss this inode (its users get ENOENT, not wrong data).
    pub fn append(&mut self, record: &Record) {
        let mut line = serde_json::to_vec(record).expect("records serialize");
        line.push(b'\n');
        self.records += 1;
        if let Err(e) = self.file.write_all(&line) {
            tracing::warn!(journal = %self.path.display(), error = %e, "cannot record an inode; a takeover after a crash would not know it");
        }
    }

    /// Delete the journal (clean unmount: nothing to take over), unless another mount of the
    /// volume has started a journal of its own at the same path meanwhile.
    pub fn remove(&self) {
        let ours = self.file.metadata().map(|m| identity(&m));
        let at_path = std::fs::metadata(&self.path).map(|m| identity(&m));
        if let (Ok(ours), Ok(at_path)) = (ours, at_path) {
            if ours == at_path {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// The inodes a journal describes, in number order (the root is implicit, never listed).
pub fn replay(reader: impl BufRead) -> Vec<JournaledInode> {
    let mut inodes: BTreeMap<u64, JournaledInode> = BTreeMap::new();
    for line in reader.lines() {
        let Ok(line) = line else { break };
        let Ok(record) = serde_json::from_str::<Record>(&line) else {
            break;
        };
        match record {
            Record::New {
                ino,
                parent,
                name,
                kind,
            } if ino != ROOT_INO => {
                inodes.insert(
                    ino,
                    JournaledInode {
                        ino,
                        parent,
                        name,
                        kind,
                        linked: true,
                        owner: None,
                    },
                );
            }
            Record::New { .. } => {}
            Record::Owner {
                ino,
                perm,
                uid,
                gid,
            } => {
                if let Some(inode) = inodes.get_mut(&ino) {
                    inode.owner = Some((perm, uid, gid));
                }
            }
            Record::Move { ino, parent, name } => {
                if let Some(inode) = inodes.get_mut(&ino) {
                    inode.parent = parent;
                    inode.name = name;
                    inode.linked = true;
                }
            }
            Record::Gone { ino } => {
                if let Some(inode) = inodes.get_mut(&ino) {
                    inode.linked = false;
                }
            }
            Record::Forget { ino } => {
                inodes.remove(&ino);
            }
        }
    }
    // An inode whose parent chain does not reach the root cannot be named.
    let mut reachable: HashSet<u64> = HashSet::from([ROOT_INO]);
    let mut changed = true;
    while changed {
        changed = false;
        for inode in inodes.values() {
            if !reachable.contains(&inode.ino) && reachable.contains(&inode.parent) {
                reachable.insert(inode.ino);
                changed = true;
            }
        }
    }
    inodes
        .into_values()
        .filter(|i| reachable.contains(&i.ino))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(ino: u64, parent: u64, name: &str, kind: Kind) -> Record {
        Record::New {
            ino,
            parent,
            name: name.into(),
            kind,
        }
    }

    #[test]
    fn a_journal_read_back_gives_the_latest_name_of_each_inode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inodes.journal");
        let mut journal = InodeJournal::create(&path).unwrap();
        for record in [
            new(2, 1, "dir", Kind::Dir),
            new(3, 2, "a\nfile with \"odd\" name", Kind::File),
            new(4, 1, "gone", Kind::File),
            Record::Gone { ino: 4 },
            new(8, 1, "forgotten", Kind::File),
            Record::Forget { ino: 8 },
            Record::Owner {
                ino: 3,
                perm: 0o600,
                uid: 7,
                gid: 8,
            },
            Record::Move {
                ino: 2,
                parent: 1,
                name: "moved".into(),
            },
        ] {
            journal.append(&record);
        }
        drop(journal);
        // A crash in the middle of the last write.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"new\":{\"ino\":5,")
            .unwrap();

        let (mut journal, inodes) = InodeJournal::take_over(&path).unwrap();
        let expected = vec![
            JournaledInode {
                ino: 2,
                parent: 1,
                name: "moved".into(),
                kind: Kind::Dir,
                linked: true,
                owner: None,
            },
            JournaledInode {
                ino: 3,
                parent: 2,
                name: "a\nfile with \"odd\" name".into(),
                kind: Kind::File,
                linked: true,
                owner: Some((0o600, 7, 8)),
            },
            JournaledInode {
                ino: 4,
                parent: 1,
                name: "gone".into(),
                kind: Kind::File,
                linked: false,
                owner: None,
            },
        ];
        assert_eq!(inodes, expected);
        // The rewritten journal says the same, and takes appends.
        journal.append(&new(6, 3, "orphan of a file", Kind::File));
        journal.append(&new(7, 99, "parent unknown", Kind::File));
        drop(journal);
        let (_, again) = InodeJournal::take_over(&path).unwrap();
        assert_eq!(again[..3], expected[..]);
        assert_eq!(again.len(), 4, "ino 7 has no way to the root: {again:?}");
        assert_eq!(again[3].ino, 6);
    }

    #[test]
    fn removing_a_journal_leaves_a_newer_one_at_the_same_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inodes.journal");
        let old = InodeJournal::create(&path).unwrap();
        let new = InodeJournal::create(&path).unwrap();
        old.remove();
        assert!(path.exists(), "the newer journal stays");
        new.remove();
        assert!(!path.exists());
    }

    #[test]
    fn a_missing_journal_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let (_, inodes) = InodeJournal::take_over(&dir.path().join("none")).unwrap();
        assert!(inodes.is_empty());
        assert!(dir.path().join("none").exists());
    }
}
