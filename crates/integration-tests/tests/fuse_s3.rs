//! Real FUSE mounts over the real Ceph RGW: every operation through the kernel, with the
//! bytes compared against what a plain S3 client reads. docs/SEMANTICS.md cites these tests.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use common::UserMetadata;
use integration_tests::{S3Env, TestMount};

fn mount(tag: &str) -> Option<TestMount> {
    let env = S3Env::from_env()?;
    Some(TestMount::new(&env, tag, "vol", |c| c))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn semantics_files_are_plain_objects_both_ways() {
    let Some(m) = mount("plain") else { return };
    fs::write(m.path("hello.txt"), b"hello through fuse").unwrap();
    assert_eq!(m.object("vol/hello.txt"), b"hello through fuse");
    let meta = m.metadata("vol/hello.txt");
    assert_eq!(meta["mode"], (0o100000 | 0o644).to_string());
    assert!(meta.contains_key("uid") && meta.contains_key("mtime"));

    m.put(
        "vol/from-s3/data.bin",
        b"put by a plain client",
        &UserMetadata::new(),
    );
    // Another client's object shows up within the metadata TTL (300 ms in these mounts).
    std::thread::sleep(std::time::Duration::from_millis(400));
    assert_eq!(
        fs::read(m.path("from-s3/data.bin")).unwrap(),
        b"put by a plain client"
    );
    let entries: Vec<_> = fs::read_dir(m.path(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        entries.contains(&"hello.txt".to_string()) && entries.contains(&"from-s3".to_string()),
        "{entries:?}"
    );
}

#[test]
fn semantics_random_writes_appends_and_truncates() {
    let Some(m) = mount("edit") else { return };
    let path = m.path("edit.txt");
    fs::write(&path, b"0123456789").unwrap();
    let mut f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.seek(SeekFrom::Start(3)).unwrap();
    f.write_all(b"abc").unwrap();
    drop(f);
    assert_eq!(m.object("vol/edit.txt"), b"012abc6789");
    let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(b"+more").unwrap();
    f.sync_all().unwrap();
    assert_eq!(
        m.object("vol/edit.txt"),
        b"012abc6789+more",
        "fsync returns once stored"
    );
    drop(f);
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(4)
        .unwrap();
    assert_eq!(m.object("vol/edit.txt"), b"012a");
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    f.set_len(6).unwrap();
    let mut back = Vec::new();
    f.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"012a\0\0");
}

#[test]
fn semantics_shell_redirections_and_empty_new_files() {
    let Some(m) = mount("redirect") else { return };
    let dir = m.path("");
    // bash closes a dup2()ed descriptor of the empty file before it writes: the file is in the
    // store, with its bytes, when the command returns.
    run(Command::new("bash")
        .arg("-c")
        .arg("echo hi > out.txt && echo more >> out.txt")
        .current_dir(&dir));
    assert_eq!(m.object("vol/out.txt"), b"hi\nmore\n");
    // Over an existing file (open with O_TRUNC): its new bytes are there at once too.
    run(Command::new("bash")
        .arg("-c")
        .arg("echo again > out.txt")
        .current_dir(&dir));
    assert_eq!(m.object("vol/out.txt"), b"again\n");
    // touch sets the times through its descriptor: in the store at close.
    run(Command::new("touch").arg("touched").current_dir(&dir));
    assert_eq!(m.object("vol/touched"), b"");
    // Created and closed without a write: the mount lists it at once, and the store has it
    // once the kernel reports the last close (just after close() returned).
    run(Command::new("bash")
        .arg("-c")
        .arg(": > empty")
        .current_dir(&dir));
    assert_eq!(fs::metadata(m.path("empty")).unwrap().len(), 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while m
        .runtime
        .block_on(common::ObjectStore::head(m.store.as_ref(), "vol/empty"))
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the empty file never reached the store"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(m.object("vol/empty"), b"");
}

#[test]
fn semantics_an_append_to_a_big_object_replaced_meanwhile_is_estale_and_kept() {
    let Some(m) = mount("append-replaced") else {
        return;
    };
    // Bigger than a part (8 MiB): the append leaves its bytes in the store.
    let old: Vec<u8> = (0..9u32 << 20).map(|i| (i % 253) as u8).collect();
    m.put("vol/log", &old, &UserMetadata::new());
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(m.path("log"))
        .unwrap();
    file.write_all(b"appended\n").unwrap();
    // Another client replaces the object before the file is synced. Ceph RGW ignores the
    // ETag condition on copied parts: the mount must notice on its own.
    m.put(
        "vol/log",
        b"replaced by another client",
        &UserMetadata::new(),
    );
    let err = file
        .sync_all()
        .expect_err("the version appended to is gone");
    assert_eq!(err.raw_os_error(), Some(libc::ESTALE), "{err}");
    drop(file);
    assert_eq!(m.object("vol/log"), b"replaced by another client");
    // The last close keeps what was written for recovery (the kernel sends it after close).
    let recovery = m.local.path().join("recovery");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let kept = loop {
        let kept: Vec<_> = fs::read_dir(&recovery)
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        if let Some(file) = kept
            .iter()
            .find(|p| !p.to_string_lossy().ends_with(".base"))
        {
            break file.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing kept: {kept:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let bytes = fs::read(&kept).unwrap();
    assert_eq!(&bytes[old.len()..], b"appended\n");
}

#[test]
fn semantics_large_sequential_write_streams_and_reads_back() {
    let Some(m) = mount("large") else { return };
    let data: Vec<u8> = (0..24u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut f = fs::File::create(m.path("big.bin")).unwrap();
    for piece in data.chunks(1 << 20) {
        f.write_all(piece).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    let object = m.object("vol/big.bin");
    assert_eq!(object.len(), data.len());
    assert!(object == data, "object bytes differ");
    let meta = m.runtime.block_on(async {
        common::ObjectStore::head(&*m.store, "vol/big.bin")
            .await
            .unwrap()
    });
    assert!(
        meta.etag.is_multipart(),
        "a large sequential write is a multipart upload"
    );
    assert!(
        fs::read(m.path("big.bin")).unwrap() == data,
        "read back differs"
    );
}

#[test]
fn semantics_directories_rename_symlinks_and_modes() {
    let Some(m) = mount("dirs") else { return };
    fs::create_dir(m.path("d")).unwrap();
    assert_eq!(m.object("vol/d/"), b"");
    fs::write(m.path("d/f"), b"x").unwrap();
    assert_eq!(
        fs::remove_dir(m.path("d")).unwrap_err().raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    assert_eq!(
        fs::create_dir(m.path("d")).unwrap_err().raw_os_error(),
        Some(libc::EEXIST)
    );
    assert_eq!(
        fs::read(m.path("missing")).unwrap_err().raw_os_error(),
        Some(libc::ENOENT)
    );

    fs::rename(m.path("d/f"), m.path("g")).unwrap();
    assert_eq!(m.object("vol/g"), b"x");
    fs::create_dir_all(m.path("d/sub")).unwrap();
    fs::write(m.path("d/sub/deep"), b"deep").unwrap();
    fs::rename(m.path("d"), m.path("e")).unwrap();
    assert_eq!(fs::read(m.path("e/sub/deep")).unwrap(), b"deep");
    assert_eq!(m.object("vol/e/sub/deep"), b"deep");
    assert!(!m.path("d").exists());

    std::os::unix::fs::symlink("e/sub/deep", m.path("link")).unwrap();
    assert_eq!(
        fs::read_link(m.path("link")).unwrap().to_str(),
        Some("e/sub/deep")
    );
    assert_eq!(fs::read(m.path("link")).unwrap(), b"deep");
    assert_eq!(m.object("vol/link"), b"e/sub/deep");

    fs::set_permissions(m.path("g"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(m.path("g"), Some(1234), Some(5678)).unwrap();
    let meta = m.metadata("vol/g");
    assert_eq!(meta["mode"], (0o100000 | 0o600).to_string());
    assert_eq!(
        (meta["uid"].as_str(), meta["gid"].as_str()),
        ("1234", "5678")
    );
    let st = fs::metadata(m.path("g")).unwrap();
    assert_eq!(
        (st.mode() & 0o7777, st.uid(), st.gid()),
        (0o600, 1234, 5678)
    );

    // A directory's mode and owner live in its marker object: another mount of the bucket
    // (or this one remounted) shows them; after an `ls -l` that listed the directory with
    // the defaults, once the attribute TTL (300 ms here) has passed.
    fs::set_permissions(m.path("e/sub"), fs::Permissions::from_mode(0o710)).unwrap();
    std::os::unix::fs::chown(m.path("e/sub"), Some(4321), None).unwrap();
    let meta = m.metadata("vol/e/sub/");
    assert_eq!(meta["mode"], (0o040000 | 0o710).to_string());
    let env = S3Env::from_env().unwrap();
    for list_first in [false, true] {
        let other = m.another(&env, "vol", |c| c);
        if list_first {
            run(Command::new("ls").arg("-l").arg(other.path("e")));
            std::thread::sleep(std::time::Duration::from_millis(400));
        }
        let st = fs::metadata(other.path("e/sub")).unwrap();
        assert_eq!(
            (st.mode() & 0o7777, st.uid()),
            (0o710, 4321),
            "{list_first}"
        );
    }

    fs::remove_file(m.path("g")).unwrap();
    assert!(!m.path("g").exists());
    let out = run(Command::new("df").arg(m.path("")));
    assert!(out.contains("s3vol-test"), "{out}");
}

#[test]
fn semantics_what_objects_cannot_be_fails_with_the_errno_programs_expect() {
    let Some(m) = mount("unsupported") else {
        return;
    };
    fs::write(m.path("f"), b"some bytes").unwrap();
    let errno = |r: std::io::Result<()>| r.unwrap_err().raw_os_error();
    assert_eq!(
        errno(fs::hard_link(m.path("f"), m.path("h"))),
        Some(libc::EPERM)
    );
    let out = Command::new("mkfifo").arg(m.path("fifo")).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("Operation not permitted"),
        "{stderr}"
    );
    let out = Command::new("fallocate")
        .args(["-l", "1M"])
        .arg(m.path("pre"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("Operation not supported"),
        "{stderr}"
    );
    // What programs fall back to works: copy_file_range becomes reads and writes, and
    // O_DIRECT goes through like any write.
    fs::copy(m.path("f"), m.path("copy")).unwrap();
    assert_eq!(m.object("vol/copy"), b"some bytes");
    run(Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", m.path("direct").display()))
        .args(["bs=4096", "count=4", "oflag=direct", "status=none"]));
    assert_eq!(m.object("vol/direct"), vec![0; 16384]);
    assert_eq!(m.keys("vol/").len(), 4, "{:?}", m.keys("vol/"));
}

#[test]
fn semantics_a_listing_running_meanwhile_never_undoes_a_write_or_an_unlink() {
    let Some(m) = mount("busy-ls") else { return };
    fs::create_dir(m.path("d")).unwrap();
    let dir = m.path("d");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // `ls -l` in a loop, as a monitoring agent or a shell prompt would.
    let lister = {
        let (dir, stop) = (dir.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for entry in fs::read_dir(&dir).unwrap().flatten() {
                    let _ = entry.metadata();
                }
            }
        })
    };
    let mut wrong = Vec::new();
    for i in 0..150usize {
        let path = dir.join(format!("f{}", i % 3));
        fs::write(&path, vec![b'x'; i + 1]).unwrap();
        let (size, read) = (
            fs::metadata(&path).unwrap().len(),
            fs::read(&path).unwrap().len(),
        );
        if size != i as u64 + 1 || read != i + 1 {
            wrong.push(format!(
                "{i}: wrote {} bytes, stat says {size}, read {read}",
                i + 1
            ));
        }
        if i % 5 == 0 {
            fs::remove_file(&path).unwrap();
            if path.exists() {
                wrong.push(format!("{i}: still there after its unlink"));
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    lister.join().unwrap();
    assert!(
        wrong.is_empty(),
        "{} wrong: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
}

#[test]
fn semantics_ls_of_a_large_directory_lists_every_entry() {
    let Some(m) = mount("listing") else { return };
    m.runtime.block_on(async {
        let puts = (0..1100).map(|i| {
            let store = m.store.clone();
            async move {
                common::ObjectStore::put(
                    &*store,
                    &format!("vol/many/f{i:04}"),
                    bytes::Bytes::from_static(b"1"),
                    &UserMetadata::new(),
                )
                .await
                .unwrap()
            }
        });
        // 16 at a time: a burst of 1100 makes the test RGW answer SlowDown.
        use futures::StreamExt;
        futures::stream::iter(puts)
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
    });
    let out = run(Command::new("ls").arg("-l").arg(m.path("many")));
    assert_eq!(out.lines().filter(|l| l.starts_with('-')).count(), 1100);

    // The kernel holds every listed entry (readdirplus) until it forgets them: when it drops
    // its caches, the inode table lets them go too, and they come back on the next listing.
    assert!(m.fs.inode_count() > 1100, "{}", m.fs.inode_count());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while m.fs.inode_count() > 100 {
        std::fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
        assert!(
            std::time::Instant::now() < deadline,
            "the kernel's FORGETs did not shrink the inode table: {} inodes",
            m.fs.inode_count()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = run(Command::new("ls").arg("-l").arg(m.path("many")));
    assert_eq!(out.lines().filter(|l| l.starts_with('-')).count(), 1100);
    assert_eq!(std::fs::read(m.path("many/f0777")).unwrap(), b"1");
}

#[test]
fn workload_tar_extracts_and_matches() {
    let Some(m) = mount("tar") else { return };
    let src = tempfile::tempdir().unwrap();
    for d in 0..5 {
        fs::create_dir_all(src.path().join(format!("tree/d{d}"))).unwrap();
        for f in 0..40 {
            fs::write(
                src.path().join(format!("tree/d{d}/f{f}.txt")),
                format!("file {d}/{f}\n").repeat(f + 1),
            )
            .unwrap();
        }
    }
    std::os::unix::fs::symlink("d0/f0.txt", src.path().join("tree/link")).unwrap();
    let tarball = src.path().join("tree.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(src.path())
        .arg("-cf")
        .arg(&tarball)
        .arg("tree"));
    run(Command::new("tar")
        .arg("-C")
        .arg(m.path(""))
        .arg("-xf")
        .arg(&tarball));
    run(Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(src.path().join("tree"))
        .arg(m.path("tree")));
}

#[test]
fn workload_git_clone_and_fsck() {
    let Some(m) = mount("git") else { return };
    let src = tempfile::tempdir().unwrap();
    let repo = src.path().join("repo");
    run(Command::new("git").args(["init", "-q"]).arg(&repo));
    for i in 0..5 {
        fs::write(repo.join(format!("file{i}.txt")), format!("version {i}\n")).unwrap();
        run(Command::new("git").arg("-C").arg(&repo).args(["add", "."]));
        run(Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm"])
            .arg(format!("c{i}")));
    }
    run(Command::new("git")
        .args(["clone", "-q", "--no-hardlinks"])
        .arg(&repo)
        .arg(m.path("clone")));
    run(Command::new("git")
        .arg("-C")
        .arg(m.path("clone"))
        .args(["fsck", "--strict"]));
    let log = run(Command::new("git")
        .arg("-C")
        .arg(m.path("clone"))
        .args(["log", "--oneline"]));
    assert_eq!(log.lines().count(), 5);
    assert_eq!(
        fs::read_to_string(m.path("clone/file4.txt")).unwrap(),
        "version 4\n"
    );
}

#[test]
fn workload_sqlite_database() {
    let Some(m) = mount("sqlite") else { return };
    let db = m.path("app.db");
    let script = r#"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("create table if not exists t (id integer primary key, v text)")
with db:
    db.executemany("insert into t (v) values (?)", [("row %d" % i,) for i in range(2000)])
db.close()
db = sqlite3.connect(sys.argv[1])
print(db.execute("select count(*) from t").fetchone()[0])
print(db.execute("pragma integrity_check").fetchone()[0])
"#;
    let out = run(Command::new("python3").arg("-c").arg(script).arg(&db));
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["2000", "ok"]);
    let object = m.object("vol/app.db");
    assert_eq!(&object[..16], b"SQLite format 3\0");
}

#[test]
fn semantics_a_changed_object_is_read_anew_after_the_ttl() {
    let Some(m) = mount("reread") else { return };
    m.put("vol/f.txt", b"version one", &UserMetadata::new());
    std::thread::sleep(std::time::Duration::from_millis(400));
    assert_eq!(fs::read(m.path("f.txt")).unwrap(), b"version one");
    assert_eq!(fs::read(m.path("f.txt")).unwrap(), b"version one");
    m.put("vol/f.txt", b"VERSION TWO", &UserMetadata::new());
    std::thread::sleep(std::time::Duration::from_millis(400));
    // Same size, new bytes: not from the page cache of version one, and not a mix of both.
    assert_eq!(fs::read(m.path("f.txt")).unwrap(), b"VERSION TWO");
}

/// Keys that are not valid file names, put by other S3 clients: the mount shows what
/// SEMANTICS.md says, hides the rest, never crashes, never reaches outside its prefix and never
/// touches those objects.
#[test]
fn odd_keys_never_escape_the_mount_nor_crash_it() {
    let Some(m) = mount("odd-keys") else { return };
    let long = "n".repeat(300);
    let keys = [
        "vol/..".to_string(),
        "vol/../escape".to_string(),
        "vol/./dot".to_string(),
        "vol/a//b".to_string(),
        format!("vol/{long}"),
        "vol/ctl\u{1}name".to_string(),
        "vol/new\nline".to_string(),
        "vol/dir".to_string(),
        "vol/dir/inner".to_string(),
        "vol/sp ace".to_string(),
        "vol/ü".to_string(),
        "escape-target".to_string(),
    ];
    for (i, key) in keys.iter().enumerate() {
        m.put(key, format!("body {i}").as_bytes(), &UserMetadata::new());
    }
    std::thread::sleep(std::time::Duration::from_millis(400));

    fn walk(dir: &std::path::Path, root: &std::path::Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.push(rel);
            if path.is_dir() {
                walk(&path, root, out);
            }
        }
    }
    let root = m.path("");
    let mut seen = Vec::new();
    walk(&root, &root, &mut seen);
    seen.sort();
    assert_eq!(
        seen,
        [
            "a",
            "ctl\u{1}name",
            "dir",
            "dir/inner",
            "new\nline",
            "sp ace",
            "ü"
        ],
        "shown: the valid names; `dir` is the directory, its object hidden"
    );
    for (name, i) in [
        ("ctl\u{1}name", 5),
        ("new\nline", 6),
        ("sp ace", 9),
        ("ü", 10),
        ("dir/inner", 8),
    ] {
        assert_eq!(
            fs::read_to_string(m.path(name)).unwrap(),
            format!("body {i}")
        );
    }
    // Hidden names cannot be reached either; `..` is the kernel's, inside the mount.
    assert_eq!(
        fs::metadata(m.path(&long)).unwrap_err().raw_os_error(),
        Some(libc::ENAMETOOLONG)
    );
    assert!(fs::metadata(m.path("a/b")).is_err());
    assert_eq!(
        fs::read_dir(m.path("dir/..")).unwrap().count(),
        seen.iter().filter(|p| !p.contains('/')).count()
    );
    // Every object is still there, untouched.
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(m.object(key), format!("body {i}").as_bytes(), "{key:?}");
    }
}

#[test]
fn semantics_files_made_in_a_folder_while_it_is_moved_end_up_under_the_new_name() {
    use std::os::fd::AsRawFd;
    let Some(m) = mount("move-busy") else { return };
    fs::create_dir(m.path("a")).unwrap();
    // Enough files that the move (a copy and a delete each) takes a while.
    for i in 0..40 {
        fs::write(m.path(&format!("a/old{i}")), format!("old{i}")).unwrap();
    }
    // A program working in the folder through a descriptor of it (its working directory),
    // which follows the folder wherever it moves.
    let folder = fs::File::open(m.path("a")).unwrap();
    let inside = format!("/proc/self/fd/{}", folder.as_raw_fd());
    let made = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let worker = {
        let made = made.clone();
        std::thread::spawn(move || {
            for i in 0..60 {
                let name = format!("{inside}/new{i}");
                fs::write(&name, format!("new{i}")).unwrap();
                assert_eq!(fs::read_to_string(&name).unwrap(), format!("new{i}"));
                fs::metadata(format!("{inside}/old{}", i % 40)).unwrap();
                made.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    while made.load(std::sync::atomic::Ordering::SeqCst) < 5 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    fs::rename(m.path("a"), m.path("b")).unwrap();
    worker.join().unwrap();
    drop(folder);
    assert!(!m.path("a").exists());
    let mut names: Vec<String> = fs::read_dir(m.path("b"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 100, "{names:?}");
    for i in 0..60 {
        assert_eq!(
            m.object(&format!("vol/b/new{i}")),
            format!("new{i}").as_bytes()
        );
    }
    // Nothing left under the old name in the bucket, for other clients to see.
    let left = m.runtime.block_on(async {
        common::ObjectStore::list(&*m.store, &common::ListParams::new("vol/a/".to_string()))
            .await
            .unwrap()
    });
    assert!(left.objects.is_empty(), "{:?}", left.objects);
}

/// An unmount refused because the mount is in use (EBUSY) leaves it mounted and served: the
/// file open meanwhile still writes and closes into the store, and a later unmount works.
/// (Before, the refused unmount dropped the session, so nobody could reach the mount any more.)
#[test]
fn a_busy_unmount_keeps_the_mount_served_until_it_is_free() {
    let Some(mut m) = mount("busy-unmount") else {
        return;
    };
    let mut open = fs::File::create(m.path("open.txt")).unwrap();
    open.write_all(b"written before the unmount; ").unwrap();

    let err = m
        .unmount()
        .expect_err("an unmount of a mount with an open file");
    assert_eq!(err.raw_os_error(), Some(libc::EBUSY), "{err}");

    open.write_all(b"and after it").unwrap();
    drop(open);
    fs::write(m.path("later.txt"), b"a new file").unwrap();
    assert_eq!(
        fs::read(m.path("open.txt")).unwrap(),
        b"written before the unmount; and after it"
    );
    assert!(fuse_mount::is_mounted(&m.path("")), "still mounted");
    m.unmount().expect("the unmount once the file is closed");
    assert!(!fuse_mount::is_mounted(&m.path("")), "unmounted");
    assert_eq!(
        m.object("vol/open.txt"),
        b"written before the unmount; and after it"
    );
    assert_eq!(m.object("vol/later.txt"), b"a new file");
}

/// An unmount returns while another mount namespace still has a copy of the mount (a
/// container started with `-v /var/lib/docker:/var/lib/docker` holds one of every volume's
/// mount): the kernel keeps the filesystem for that copy, so the session does not end, and
/// waiting for it would lock the volume until the copy goes. The copy stays served.
#[test]
fn an_unmount_returns_while_another_namespace_still_has_a_copy_of_the_mount() {
    let Some(mut m) = mount("copied-mount") else {
        return;
    };
    fs::write(m.path("kept.txt"), b"written before the unmount").unwrap();
    let mountpoint = m.path("");
    let mountpoint = mountpoint
        .to_str()
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    /// Killed when dropped, also when the test fails.
    struct Holder(std::process::Child);
    impl Drop for Holder {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let holder = Holder(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sleep", "600"])
            .spawn()
            .expect("unshare"),
    );
    let pid = holder.0.id();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default() != "sleep\n" {
        assert!(
            std::time::Instant::now() < deadline,
            "unshare did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let copies = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    assert!(copies.contains(&format!(" {mountpoint} ")), "{copies}");

    let (done, unmounted) = std::sync::mpsc::channel();
    let unmounting = std::thread::spawn(move || {
        let result = m.unmount();
        done.send(result).unwrap();
        m
    });
    let result = unmounted
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the unmount returns while the copy is still there");
    result.expect("the unmount");
    let m = unmounting.join().unwrap();
    assert!(
        !fuse_mount::is_mounted(&m.path("")),
        "gone from this namespace"
    );
    assert_eq!(m.object("vol/kept.txt"), b"written before the unmount");
    assert_eq!(
        fs::read(format!("/proc/{pid}/root{mountpoint}/kept.txt")).unwrap(),
        b"written before the unmount",
        "the copy is still served"
    );
    drop(holder);
    // The copy is gone with its namespace: the session ends before the mount's runtime does.
    std::thread::sleep(std::time::Duration::from_millis(500));
}
