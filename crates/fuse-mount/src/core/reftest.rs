//! Shadow-model property test: random sequences of filesystem operations, plus puts and deletes
//! made directly in the store by "another client", applied both to [`Fs`] over the in-memory
//! store and to a plain in-memory tree. After every step the whole tree seen through `Fs`
//! (names, kinds, bytes) must equal the model, and each operation must succeed or fail alike.
//! TTLs are zero here, so remote changes must show at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use common::memory::InMemoryStore;
use common::{ObjectStore, UserMetadata};
use proptest::prelude::*;

use super::*;

const FILES: [&str; 5] = ["a", "b", "d/a", "d/b", "e/a"];
const DIRS: [&str; 2] = ["d", "e"];

#[derive(Debug, Clone)]
enum Op {
    Create(usize, Vec<u8>),
    WriteAt(usize, u16, Vec<u8>),
    Truncate(usize, u16),
    Rename(usize, usize),
    Unlink(usize),
    Mkdir(usize),
    Rmdir(usize),
    RemotePut(usize, Vec<u8>),
    RemoteDelete(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let file = 0..FILES.len();
    let dir = 0..DIRS.len();
    let data = prop::collection::vec(any::<u8>(), 0..40);
    prop_oneof![
        (file.clone(), data.clone()).prop_map(|(f, d)| Op::Create(f, d)),
        (file.clone(), 0u16..60, data.clone()).prop_map(|(f, o, d)| Op::WriteAt(f, o, d)),
        (file.clone(), 0u16..60).prop_map(|(f, s)| Op::Truncate(f, s)),
        (file.clone(), file.clone()).prop_map(|(a, b)| Op::Rename(a, b)),
        file.clone().prop_map(Op::Unlink),
        dir.clone().prop_map(Op::Mkdir),
        dir.prop_map(Op::Rmdir),
        (file.clone(), data).prop_map(|(f, d)| Op::RemotePut(f, d)),
        file.prop_map(Op::RemoteDelete),
    ]
}

#[derive(Debug, Default)]
struct Model {
    files: BTreeMap<String, Vec<u8>>,
    /// Directories with a marker object.
    markers: BTreeSet<String>,
}

impl Model {
    fn dirs(&self) -> BTreeSet<String> {
        let mut dirs = self.markers.clone();
        for path in self.files.keys() {
            if let Some((parent, _)) = path.rsplit_once('/') {
                dirs.insert(parent.to_string());
            }
        }
        dirs
    }

    fn parent_exists(&self, path: &str) -> bool {
        path.rsplit_once('/')
            .is_none_or(|(parent, _)| self.dirs().contains(parent))
    }

    /// Apply `op`; whether it should succeed.
    fn apply(&mut self, op: &Op) -> bool {
        match op {
            Op::Create(f, data) | Op::RemotePut(f, data) => {
                let path = FILES[*f];
                if matches!(op, Op::Create(..)) && !self.parent_exists(path) {
                    return false;
                }
                self.files.insert(path.to_string(), data.clone());
                true
            }
            Op::WriteAt(f, offset, data) => match self.files.get_mut(FILES[*f]) {
                Some(_) if data.is_empty() => true,
                Some(body) => {
                    let end = *offset as usize + data.len();
                    if body.len() < end {
                        body.resize(end, 0);
                    }
                    body[*offset as usize..end].copy_from_slice(data);
                    true
                }
                None => false,
            },
            Op::Truncate(f, size) => match self.files.get_mut(FILES[*f]) {
                Some(body) => {
                    body.resize(*size as usize, 0);
                    true
                }
                None => false,
            },
            Op::Rename(a, b) => {
                let (from, to) = (FILES[*a], FILES[*b]);
                if !self.files.contains_key(from) || !self.parent_exists(to) {
                    return false;
                }
                let body = self.files.remove(from).unwrap();
                self.files.insert(to.to_string(), body);
                true
            }
            Op::Unlink(f) | Op::RemoteDelete(f) => {
                let existed = self.files.remove(FILES[*f]).is_some();
                existed || matches!(op, Op::RemoteDelete(_))
            }
            Op::Mkdir(d) => {
                let dir = DIRS[*d];
                if self.dirs().contains(dir) {
                    return false;
                }
                self.markers.insert(dir.to_string());
                true
            }
            Op::Rmdir(d) => {
                let dir = DIRS[*d];
                let prefix = format!("{dir}/");
                if !self.dirs().contains(dir) || self.files.keys().any(|p| p.starts_with(&prefix)) {
                    return false;
                }
                self.markers.remove(dir);
                true
            }
        }
    }
}

async fn resolve(fs: &Fs<InMemoryStore>, path: &str) -> FsResult<(u64, Attr)> {
    let mut parent = ROOT_INO;
    let mut parts = path.split('/').peekable();
    loop {
        let name = parts.next().expect("non-empty path");
        let attr = fs.lookup(parent, name).await?;
        if parts.peek().is_none() {
            return Ok((parent, attr));
        }
        parent = attr.ino;
    }
}

fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

async fn dir_ino(fs: &Fs<InMemoryStore>, dir: &str) -> FsResult<u64> {
    if dir.is_empty() {
        Ok(ROOT_INO)
    } else {
        Ok(resolve(fs, dir).await?.1.ino)
    }
}

async fn apply(fs: &Fs<InMemoryStore>, store: &InMemoryStore, op: &Op) -> FsResult<()> {
    match op {
        Op::Create(f, data) => {
            let (dir, name) = split(FILES[*f]);
            let parent = dir_ino(fs, dir).await?;
            let (_, fh) = fs
                .create(parent, name, 0o644, 0, 0, IfExists::Truncate)
                .await?;
            fs.write(fh, 0, data).await?;
            fs.release(fh).await
        }
        Op::WriteAt(f, offset, data) => {
            let (_, attr) = resolve(fs, FILES[*f]).await?;
            let fh = fs.open(attr.ino, true, false).await?;
            fs.write(fh, *offset as u64, data).await?;
            fs.release(fh).await
        }
        Op::Truncate(f, size) => {
            let (_, attr) = resolve(fs, FILES[*f]).await?;
            fs.setattr(
                attr.ino,
                SetAttr {
                    size: Some(*size as u64),
                    ..SetAttr::default()
                },
            )
            .await
            .map(|_| ())
        }
        Op::Rename(a, b) => {
            let ((from_dir, from), (to_dir, to)) = (split(FILES[*a]), split(FILES[*b]));
            let from_parent = dir_ino(fs, from_dir).await?;
            resolve(fs, FILES[*a]).await?;
            let to_parent = dir_ino(fs, to_dir).await?;
            fs.rename(from_parent, from, to_parent, to).await
        }
        Op::Unlink(f) => {
            let (dir, name) = split(FILES[*f]);
            fs.unlink(dir_ino(fs, dir).await?, name).await
        }
        Op::Mkdir(d) => fs.mkdir(ROOT_INO, DIRS[*d], 0o755, 0, 0).await.map(|_| ()),
        Op::Rmdir(d) => fs.rmdir(ROOT_INO, DIRS[*d]).await,
        Op::RemotePut(f, data) => {
            store
                .put(
                    &format!("vol/{}", FILES[*f]),
                    data.clone().into(),
                    &UserMetadata::new(),
                )
                .await?;
            Ok(())
        }
        Op::RemoteDelete(f) => Ok(store.delete(&format!("vol/{}", FILES[*f])).await?),
    }
}

/// The whole tree as `Fs` shows it: files with bytes, and directories.
async fn snapshot(fs: &Fs<InMemoryStore>) -> (BTreeMap<String, Vec<u8>>, BTreeSet<String>) {
    let (mut files, mut dirs) = (BTreeMap::new(), BTreeSet::new());
    let mut todo = vec![(ROOT_INO, String::new())];
    while let Some((ino, path)) = todo.pop() {
        for entry in fs.readdir(ino).await.unwrap() {
            let child = if path.is_empty() {
                entry.name.clone()
            } else {
                format!("{path}/{}", entry.name)
            };
            match entry.attr.kind {
                Kind::Dir => {
                    dirs.insert(child.clone());
                    todo.push((entry.attr.ino, child));
                }
                _ => {
                    let fh = fs.open(entry.attr.ino, false, false).await.unwrap();
                    let body = fs.read(fh, 0, 1 << 16).await.unwrap().to_vec();
                    fs.release(fh).await.unwrap();
                    files.insert(child, body);
                }
            }
        }
    }
    (files, dirs)
}

/// Apply `ops` to a fresh `Fs` with both TTLs `ttl` and to the model, and compare the two
/// trees after each.
fn matches_the_model(ops: &[Op], ttl: Duration) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Arc::new(InMemoryStore::new("b"));
        let dir = tempfile::tempdir().unwrap();
        let config = FsConfig::new(dir.path()).prefix("vol").ttls(ttl, ttl);
        let fs = Fs::new(store.clone(), config).unwrap();
        let mut model = Model::default();
        for op in ops {
            let expected = model.apply(op);
            let got = apply(&fs, &store, op).await;
            prop_assert_eq!(got.is_ok(), expected, "{:?} gave {:?}", op, got);
            let (files, dirs) = snapshot(&fs).await;
            prop_assert_eq!(&files, &model.files, "after {:?}", op);
            prop_assert_eq!(&dirs, &model.dirs(), "after {:?}", op);
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// With other clients' changes, and no TTL: every answer comes from the store.
    #[test]
    fn reftest_fs_matches_a_plain_tree(ops in prop::collection::vec(op(), 1..24)) {
        matches_the_model(&ops, Duration::ZERO)?;
    }

    /// This mount's changes alone, with TTLs no test outlasts: every answer the mount can
    /// give from what it knows (listings kept up to date, attributes) is given so, and must
    /// still match.
    #[test]
    fn reftest_fs_matches_a_plain_tree_from_what_it_knows(
        ops in prop::collection::vec(
            op().prop_filter("changes of this mount only", |op| {
                !matches!(op, Op::RemotePut(..) | Op::RemoteDelete(_))
            }),
            1..24,
        )
    ) {
        matches_the_model(&ops, Duration::from_secs(3600))?;
    }
}
