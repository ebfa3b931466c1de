//! Random sequences of file operations through a real FUSE mount over the real Ceph RGW, each
//! also done on a local folder: every result (bytes read, sizes, listings, errno) must be the
//! same, and at the end every object in the bucket must hold what the local file holds. This
//! is how the kernel's side (page cache, handles kept across unlink and rename, O_APPEND,
//! O_TRUNC) meets the filesystem's; the core's shadow-model test covers the core alone.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use integration_tests::{S3Env, TestMount};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const FOLDERS: [&str; 4] = ["", "d1/", "d2/", "d3/"];
const NAMES: [&str; 5] = ["f0", "f1", "f2", "f3", "f4"];
/// Write and read lengths: from one byte to more than one upload part (8 MiB).
const LENGTHS: [usize; 7] = [1, 100, 4096, 65_536, 1 << 20, 3 << 20, 9 << 20];
/// Offsets reach past 8 MiB, where bytes of an existing object stay in the store.
const MAX_OFFSET: u64 = 12 << 20;

/// An operation's outcome: its value, or the errno it failed with.
type Outcome<T> = Result<T, i32>;

fn outcome<T>(result: io::Result<T>) -> Outcome<T> {
    result.map_err(|e| e.raw_os_error().unwrap_or(-1))
}

/// Up to `len` bytes at `offset`, as many as the file has (a short read only at its end).
fn read_at(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut out = vec![0; len];
    let mut got = 0;
    while got < len {
        match file.read_at(&mut out[got..], offset + got as u64)? {
            0 => break,
            n => got += n,
        }
    }
    out.truncate(got);
    Ok(out)
}

/// The start of `value`'s debug form: enough to see what differs, not megabytes of bytes.
fn brief(value: &impl std::fmt::Debug) -> String {
    let text = format!("{value:?}");
    match text.char_indices().nth(300) {
        Some((cut, _)) => format!("{}... ({} chars)", &text[..cut], text.len()),
        None => text,
    }
}

fn names_in(dir: &Path) -> io::Result<Vec<String>> {
    let mut names = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<io::Result<Vec<_>>>()?;
    names.sort();
    Ok(names)
}

/// One open file: the mount's descriptor, the local folder's, and whether it appends.
struct Open {
    path: String,
    mount: File,
    local: File,
    append: bool,
}

/// The same operations on the mount and on a local folder, with a log of what was done.
struct Twin<'a> {
    /// The mount's root.
    mount: std::path::PathBuf,
    local: &'a Path,
    /// The file names this twin uses, in every folder.
    names: Vec<String>,
    /// Other twins use the same folders at the same time (with other names): no folder
    /// operations, no listings to compare.
    shared: bool,
    rng: StdRng,
    open: BTreeMap<u64, Open>,
    log: Vec<String>,
}

impl Twin<'_> {
    /// Run `op` on both roots and insist on the same outcome.
    fn both<T: PartialEq + std::fmt::Debug>(
        &mut self,
        what: String,
        op: impl Fn(&Path) -> io::Result<T>,
    ) {
        let on_mount = outcome(op(&self.mount));
        let on_local = outcome(op(self.local));
        self.log.push(what);
        if on_mount != on_local {
            self.fail(&format!(
                "mount {}, local folder {}",
                brief(&on_mount),
                brief(&on_local)
            ));
        }
    }

    fn fail(&self, why: &str) -> ! {
        let recent = &self.log[self.log.len().saturating_sub(80)..];
        panic!(
            "{why}\nafter (last {} of {} steps):\n{}",
            recent.len(),
            self.log.len(),
            recent.join("\n")
        );
    }

    fn same<T: PartialEq + std::fmt::Debug>(
        &self,
        what: &str,
        on_mount: Outcome<T>,
        on_local: Outcome<T>,
    ) {
        if on_mount != on_local {
            self.fail(&format!(
                "{what}: mount {}, local folder {}",
                brief(&on_mount),
                brief(&on_local)
            ));
        }
    }

    /// `len` bytes that differ from one position to the next (and from one write to the
    /// next): a write or a read that lands a byte off is seen.
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        common::conformance::pattern(len, self.rng.random()).to_vec()
    }

    fn any_path(&mut self) -> String {
        let folder = FOLDERS[self.rng.random_range(0..FOLDERS.len())];
        format!(
            "{folder}{}",
            self.names[self.rng.random_range(0..self.names.len())]
        )
    }

    fn any_folder(&mut self) -> &'static str {
        FOLDERS[self.rng.random_range(1..FOLDERS.len())]
    }

    fn any_open(&mut self) -> Option<u64> {
        let keys: Vec<u64> = self.open.keys().copied().collect();
        (!keys.is_empty()).then(|| keys[self.rng.random_range(0..keys.len())])
    }

    fn step(&mut self, step: u64) {
        match self.rng.random_range(0..16) {
            0 | 1 => self.open_file(step),
            12..=15 if self.shared => self.read(),
            2 | 3 => self.write(),
            4 => self.read(),
            5 => self.close(),
            6 => self.set_len(),
            7 if self.rng.random_bool(0.5) => self.fsync(),
            7 => self.fstat(),
            8 => {
                let (from, to) = (self.any_path(), self.any_path());
                self.both(format!("rename {from} {to}"), |r| {
                    fs::rename(r.join(&from), r.join(&to))
                });
            }
            9 => {
                let path = self.any_path();
                self.both(format!("unlink {path}"), |r| fs::remove_file(r.join(&path)));
            }
            10 => {
                let path = self.any_path();
                let len = [1, 100, 5000][self.rng.random_range(0..3)];
                let data = self.bytes(len);
                self.both(format!("append {path} {}", data.len()), |r| {
                    OpenOptions::new()
                        .append(true)
                        .create(true)
                        .open(r.join(&path))?
                        .write_all(&data)
                });
            }
            11 => {
                let path = self.any_path();
                self.both(format!("stat+read {path}"), |r| {
                    Ok((fs::metadata(r.join(&path))?.len(), fs::read(r.join(&path))?))
                });
            }
            12 => {
                let dir = self.any_folder();
                self.both(format!("mkdir {dir}"), |r| fs::create_dir(r.join(dir)));
            }
            13 => {
                let dir = self.any_folder();
                self.both(format!("rmdir {dir}"), |r| fs::remove_dir(r.join(dir)));
            }
            14 => {
                let (from, to) = (self.any_folder(), self.any_folder());
                self.both(format!("rename folder {from} {to}"), |r| {
                    fs::rename(r.join(from), r.join(to))
                });
            }
            _ => {
                let dir = FOLDERS[self.rng.random_range(0..FOLDERS.len())];
                self.both(format!("list {dir}"), |r| names_in(&r.join(dir)));
            }
        }
    }

    fn open_file(&mut self, step: u64) {
        let path = self.any_path();
        let (read, write, create, truncate, append) = match self.rng.random_range(0..5) {
            0 => (true, true, true, false, false),
            1 => (true, true, false, false, false),
            2 => (true, true, true, true, false),
            3 => (false, false, true, false, true),
            _ => (true, false, false, false, false),
        };
        let open = |root: &Path| {
            OpenOptions::new()
                .read(read)
                .write(write)
                .create(create)
                .truncate(truncate)
                .append(append)
                .open(root.join(&path))
        };
        let (on_mount, on_local) = (open(&self.mount), open(self.local));
        self.log.push(format!("#{step} open {path} read {read} write {write} create {create} truncate {truncate} append {append}"));
        match (on_mount, on_local) {
            (Ok(mount), Ok(local)) => {
                self.open.insert(
                    step,
                    Open {
                        path,
                        mount,
                        local,
                        append,
                    },
                );
            }
            (m, l) => self.same("open", outcome(m.map(drop)), outcome(l.map(drop))),
        }
    }

    fn write(&mut self) {
        let Some(k) = self.any_open() else { return };
        let offset = match self.rng.random_range(0..3) {
            0 => 0,
            1 => self.rng.random_range(0..65_536),
            _ => self.rng.random_range(0..MAX_OFFSET),
        };
        let len = LENGTHS[self.rng.random_range(0..LENGTHS.len())];
        let data = self.bytes(len);
        let f = &self.open[&k];
        let write = |file: &File| {
            if f.append {
                (&*file).write_all(&data)
            } else {
                file.write_all_at(&data, offset)
            }
        };
        let (m, l) = (outcome(write(&f.mount)), outcome(write(&f.local)));
        self.log.push(format!(
            "write #{k} {} at {offset}, {} bytes",
            f.path,
            data.len()
        ));
        self.same("write", m, l);
    }

    fn read(&mut self) {
        let Some(k) = self.any_open() else { return };
        let offset = self.rng.random_range(0..MAX_OFFSET);
        let len = LENGTHS[self.rng.random_range(0..LENGTHS.len())];
        let f = &self.open[&k];
        let (m, l) = (
            outcome(read_at(&f.mount, offset, len)),
            outcome(read_at(&f.local, offset, len)),
        );
        self.log
            .push(format!("read #{k} {} at {offset}, {len} bytes", f.path));
        self.same("read", m, l);
    }

    fn close(&mut self) {
        let Some(k) = self.any_open() else { return };
        let f = self.open.remove(&k).expect("picked");
        self.log.push(format!("close #{k} {}", f.path));
        // A close reports an upload error only through fsync's path here (std's drop
        // ignores close's result): sync first, as careful programs do.
        self.same(
            "sync at close",
            outcome(f.mount.sync_all()),
            outcome(f.local.sync_all()),
        );
    }

    fn set_len(&mut self) {
        let Some(k) = self.any_open() else { return };
        let size = [0, 10, self.rng.random_range(0..MAX_OFFSET)][self.rng.random_range(0..3)];
        let f = &self.open[&k];
        let (m, l) = (
            outcome(f.mount.set_len(size)),
            outcome(f.local.set_len(size)),
        );
        self.log.push(format!("set_len #{k} {} {size}", f.path));
        self.same("set_len", m, l);
    }

    /// Size and link count through an open descriptor (0 links once removed).
    fn fstat(&mut self) {
        let Some(k) = self.any_open() else { return };
        let f = &self.open[&k];
        let stat = |file: &File| outcome(file.metadata().map(|m| (m.len(), m.nlink())));
        let (m, l) = (stat(&f.mount), stat(&f.local));
        self.log.push(format!("fstat #{k} {}", f.path));
        self.same("fstat", m, l);
    }

    fn fsync(&mut self) {
        let Some(k) = self.any_open() else { return };
        let f = &self.open[&k];
        let (m, l) = (outcome(f.mount.sync_all()), outcome(f.local.sync_all()));
        self.log.push(format!("fsync #{k} {}", f.path));
        self.same("fsync", m, l);
    }
}

/// Sets its flag when dropped.
struct SetOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `steps` random operations, then a sync of every file still open.
fn run_twin(mut twin: Twin<'_>, steps: u64) -> Twin<'_> {
    for step in 0..steps {
        twin.step(step);
    }
    while let Some(k) = twin.any_open() {
        let f = twin.open.remove(&k).expect("picked");
        twin.same(
            "final sync",
            outcome(f.mount.sync_all()),
            outcome(f.local.sync_all()),
        );
    }
    twin
}

/// `threads` twins on one mount (each its own names, all in the same folders, and a lister
/// meanwhile when more than one), `steps` operations each; then every object must hold what
/// its local file holds, and nothing may stay staged.
fn run_seed(env: &S3Env, seed: u64, steps: u64, threads: u64) {
    let m = TestMount::new(env, &format!("random-{seed}"), "vol", |c| c);
    let local = tempfile::tempdir().unwrap();
    for dir in ["d1", "d2"] {
        fs::create_dir(m.path(dir)).unwrap();
        fs::create_dir(local.path().join(dir)).unwrap();
    }
    let twin = |t: u64| Twin {
        mount: m.path(""),
        local: local.path(),
        names: match threads {
            1 => NAMES.iter().map(|n| n.to_string()).collect(),
            _ => (0..4).map(|i| format!("t{t}-{i}")).collect(),
        },
        shared: threads > 1,
        rng: StdRng::seed_from_u64(seed * 100 + t),
        open: BTreeMap::new(),
        log: vec![format!("seed {seed}, twin {t}")],
    };
    let done = std::sync::atomic::AtomicBool::new(false);
    let twin = std::thread::scope(|scope| {
        // The lister stops however this ends (a twin's panic too), or the scope waits for it.
        let _stop_lister = SetOnDrop(&done);
        if threads > 1 {
            // `ls -l` of the shared folders meanwhile.
            scope.spawn(|| {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    for folder in FOLDERS {
                        for entry in fs::read_dir(m.path(folder)).into_iter().flatten().flatten() {
                            let _ = entry.metadata();
                        }
                    }
                }
            });
        }
        let twin = &twin;
        let others: Vec<_> = (1..threads)
            .map(|t| scope.spawn(move || run_twin(twin(t), steps)))
            .collect();
        let first = run_twin(twin(0), steps);
        for other in others {
            other
                .join()
                .expect("a twin failed (its panic is printed above)");
        }
        first
    });
    // Every file the local folder has is an object with its bytes, and nothing else is.
    let mut expected = BTreeMap::new();
    for folder in FOLDERS {
        for name in names_in(&local.path().join(folder)).unwrap_or_default() {
            let path = format!("{folder}{name}");
            if local.path().join(&path).is_file() {
                expected.insert(
                    format!("vol/{path}"),
                    fs::read(local.path().join(&path)).unwrap(),
                );
            }
        }
    }
    let files_in_store: Vec<String> = m
        .keys("vol/")
        .into_iter()
        .filter(|key| !key.ends_with('/'))
        .collect();
    let expected_keys: Vec<&String> = expected.keys().collect();
    if files_in_store.iter().collect::<Vec<_>>() != expected_keys {
        twin.fail(&format!(
            "the bucket has {files_in_store:?}, the local folder {expected_keys:?}"
        ));
    }
    for (key, bytes) in &expected {
        if m.object(key) != *bytes {
            twin.fail(&format!(
                "object {key} differs from the local file ({} bytes)",
                bytes.len()
            ));
        }
    }
    // Every file closed, nothing stays staged (the kernel sends the last releases just
    // after the closes return).
    let staging = m.fs.config().staging_dir.clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while fs::read_dir(&staging).map_or(0, |d| d.count()) > 0 {
        if std::time::Instant::now() > deadline {
            let left: Vec<_> = fs::read_dir(&staging)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            twin.fail(&format!("staged files left after every close: {left:?}"));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Seeds and steps per seed (`seeds`, `steps` unless set); `RANDOM_OPS_SEEDS=FIRST..END`
/// and `RANDOM_OPS_STEPS=N` run more of them when hunting (a failure prints its seed and
/// the steps before it).
fn seeds_and_steps(seeds: std::ops::Range<u64>, steps: u64) -> (std::ops::Range<u64>, u64) {
    let given_seeds = std::env::var("RANDOM_OPS_SEEDS").ok().and_then(|v| {
        let (first, end) = v.split_once("..")?;
        Some(first.parse().ok()?..end.parse().ok()?)
    });
    let given_steps = std::env::var("RANDOM_OPS_STEPS")
        .ok()
        .and_then(|v| v.parse().ok());
    (given_seeds.unwrap_or(seeds), given_steps.unwrap_or(steps))
}

#[test]
fn random_operations_through_the_mount_do_what_they_do_on_a_local_folder() {
    let Some(env) = S3Env::from_env() else { return };
    let (seeds, steps) = seeds_and_steps(1..5, 500);
    for seed in seeds {
        run_seed(&env, seed, steps, 1);
    }
}

/// Six programs at once on one mount, each with its own files in the same folders, and an
/// `ls -l` of those folders in a loop: each sees what a local folder would show it.
#[test]
fn random_operations_of_six_programs_at_once_do_what_they_do_on_a_local_folder() {
    let Some(env) = S3Env::from_env() else { return };
    let (seeds, steps) = seeds_and_steps(1..2, 200);
    for seed in seeds {
        run_seed(&env, seed, steps, 6);
    }
}

/// Two clients of one bucket (two hosts of a Swarm): random whole-file writes, appends,
/// renames and unlinks through either mount, one at a time, and a rewrite under a reader that
/// holds the file open on the other. One TTL after each change, both mounts read and list
/// exactly what the change left.
#[test]
fn random_changes_through_two_mounts_of_one_bucket_show_in_both_after_the_ttl() {
    let Some(env) = S3Env::from_env() else { return };
    const TTL: std::time::Duration = std::time::Duration::from_millis(100);
    let short_ttls = |c: fuse_mount::FsConfig| c.ttls(TTL, TTL);
    let first = TestMount::new(&env, "two-clients", "vol", short_ttls);
    let second = first.another(&env, "vol", short_ttls);
    let (seeds, steps) = seeds_and_steps(1..2, 150);
    for seed in seeds {
        let top = format!("s{seed}");
        fs::create_dir(first.path(&top)).unwrap();
        fs::create_dir(first.path(&top).join("d")).unwrap();
        std::thread::sleep(TTL * 2);
        let mounts = [first.path(&top), second.path(&top)];
        let mut rng = StdRng::seed_from_u64(seed);
        let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut log = vec![format!("seed {seed}")];
        let paths: Vec<String> = ["", "d/"]
            .iter()
            .flat_map(|dir| NAMES.iter().map(move |name| format!("{dir}{name}")))
            .collect();
        for step in 0..steps {
            let who = rng.random_range(0..2);
            let root = &mounts[who];
            let path = paths[rng.random_range(0..paths.len())].clone();
            let len = [8, 80, 8000, 1_600_000][rng.random_range(0..4)];
            let data = common::conformance::pattern(len, rng.random()).to_vec();
            match rng.random_range(0..6) {
                0 | 1 => {
                    fs::write(root.join(&path), &data).unwrap();
                    log.push(format!("{step} mount {who}: write {path}, {len} bytes"));
                    model.insert(path, data);
                }
                2 => {
                    let line = &data[..data.len().min(100)];
                    OpenOptions::new()
                        .append(true)
                        .create(true)
                        .open(root.join(&path))
                        .and_then(|mut f| f.write_all(line))
                        .unwrap();
                    log.push(format!("{step} mount {who}: append to {path}"));
                    model.entry(path).or_default().extend_from_slice(line);
                }
                3 => {
                    let to = paths[rng.random_range(0..paths.len())].clone();
                    let result = fs::rename(root.join(&path), root.join(&to));
                    log.push(format!(
                        "{step} mount {who}: rename {path} {to}: {result:?}"
                    ));
                    assert_eq!(
                        result.is_ok(),
                        model.contains_key(&path),
                        "{}",
                        log.join("\n")
                    );
                    if result.is_ok() && path != to {
                        let moved = model.remove(&path).expect("checked");
                        model.insert(to, moved);
                    }
                }
                4 => {
                    let result = fs::remove_file(root.join(&path));
                    log.push(format!("{step} mount {who}: unlink {path}: {result:?}"));
                    assert_eq!(
                        result.is_ok(),
                        model.remove(&path).is_some(),
                        "{}",
                        log.join("\n")
                    );
                }
                _ => {
                    // A reader on the other mount holds the old version open meanwhile.
                    let reader = File::open(mounts[1 - who].join(&path));
                    fs::write(root.join(&path), &data).unwrap();
                    log.push(format!(
                        "{step} mount {who}: rewrite {path} under a reader: {}",
                        reader.is_ok()
                    ));
                    model.insert(path, data);
                    drop(reader);
                }
            }
            std::thread::sleep(TTL + TTL / 2);
            for (m, root) in mounts.iter().enumerate() {
                for path in &paths {
                    let got = fs::read(root.join(path)).ok();
                    if got.as_ref() != model.get(path) {
                        panic!(
                            "mount {m} reads {path}: {:?} bytes, the last change left {:?}\n{}",
                            got.map(|b| b.len()),
                            model.get(path).map(Vec::len),
                            log.join("\n")
                        );
                    }
                }
                for dir in ["", "d/"] {
                    let mut listed = names_in(&root.join(dir)).unwrap();
                    listed.retain(|name| name != "d");
                    let expected: Vec<String> = model
                        .keys()
                        .filter_map(|p| p.strip_prefix(dir).filter(|rest| !rest.contains('/')))
                        .map(str::to_string)
                        .collect();
                    assert_eq!(
                        listed,
                        expected,
                        "mount {m} lists {dir:?}\n{}",
                        log.join("\n")
                    );
                }
            }
        }
    }
}
