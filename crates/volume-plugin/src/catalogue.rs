//! The volume catalogue: every volume the plugin knows, with its options (never a secret: they
//! are refused at create), its creation time and the IDs of the mounts Docker holds on it.
//!
//! Docker forgets a volume whose `Get` fails when the daemon starts, and does not send Mount
//! again for running containers after a plugin restart, so the catalogue is written to the state
//! folder (outside the plugin's rootfs) on every change, atomically: a temp file, fsync,
//! rename, fsync of the folder. A crash leaves the old or the new catalogue, never a torn one.
//!
//! The catalogue names buckets, prefixes and profiles, so only root reads it: the file is 0600
//! and the state folder 0700, whatever the umask or the modes they had before.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::Permissions;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const FILE_NAME: &str = "volumes.json";
const FORMAT_VERSION: u32 = 1;
/// Mode of the catalogue file: owner (root) only.
const FILE_MODE: u32 = 0o600;
/// Mode of the state folder: owner (root) only.
const DIR_MODE: u32 = 0o700;

/// What to do with a catalogue this s3vol cannot read, and what that costs.
const MOVE_AWAY: &str = "move it away to start with no volumes (their files are safe in the bucket: `docker volume create` with the same name and options, which the moved file lists, brings each one back)";

/// One volume as the catalogue keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub name: String,
    /// Options that describe the volume completely ([`crate::options::VolumeSpec::to_options`]).
    pub options: BTreeMap<String, String>,
    /// RFC 3339.
    pub created_at: String,
    /// IDs of the mounts Docker holds (one per container mount, `docker cp`, ...).
    pub mount_ids: BTreeSet<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    volumes: Vec<VolumeRecord>,
}

/// The catalogue and the file it lives in.
#[derive(Debug)]
pub struct Catalogue {
    path: PathBuf,
    volumes: BTreeMap<String, VolumeRecord>,
}

/// Create the state folder, private to root (mode 700) even if it existed with a wider mode.
pub fn create_state_dir(state_dir: &Path) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(state_dir)
        .map_err(|e| {
            format!(
                "cannot create the state folder {}: {e}",
                state_dir.display()
            )
        })?;
    // A folder that existed already (or a umask) may have a wider mode.
    std::fs::set_permissions(state_dir, Permissions::from_mode(DIR_MODE)).map_err(|e| {
        format!(
            "cannot make the state folder {} private (mode 700): {e}",
            state_dir.display()
        )
    })
}

impl Catalogue {
    /// Load the catalogue of `state_dir` (empty when there is none yet). A file that cannot be
    /// read is an error, not an empty catalogue: starting empty would make Docker forget
    /// every volume.
    pub fn load(state_dir: &Path) -> Result<Self, String> {
        create_state_dir(state_dir)?;
        let path = state_dir.join(FILE_NAME);
        let volumes = match std::fs::read(&path) {
            Ok(bytes) => {
                // Written by an earlier version, or copied in by hand, with a wider mode.
                std::fs::set_permissions(&path, Permissions::from_mode(FILE_MODE)).map_err(
                    |e| {
                        format!(
                            "cannot make the volume catalogue {} private (mode 600): {e}",
                            path.display()
                        )
                    },
                )?;
                let file: StateFile = serde_json::from_slice(&bytes).map_err(|e| {
                    format!(
                        "the volume catalogue {} is damaged ({e}); fix it, or {MOVE_AWAY}",
                        path.display()
                    )
                })?;
                if file.version != FORMAT_VERSION {
                    return Err(format!(
                        "the volume catalogue {} has format version {}, and this s3vol reads version {FORMAT_VERSION}: run the s3vol that wrote it, or {MOVE_AWAY}",
                        path.display(),
                        file.version
                    ));
                }
                file.volumes
                    .into_iter()
                    .map(|v| (v.name.clone(), v))
                    .collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        Ok(Self { path, volumes })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, name: &str) -> Option<&VolumeRecord> {
        self.volumes.get(name)
    }

    pub fn volumes(&self) -> impl Iterator<Item = &VolumeRecord> {
        self.volumes.values()
    }

    /// Apply `change` to a copy and save it; the catalogue changes only if the save worked,
    /// so memory and disk never disagree.
    pub fn update<T>(
        &mut self,
        change: impl FnOnce(&mut BTreeMap<String, VolumeRecord>) -> T,
    ) -> Result<T, String> {
        let mut next = self.volumes.clone();
        let out = change(&mut next);
        if next != self.volumes {
            write_atomically(&self.path, &next).map_err(|e| {
                format!(
                    "cannot save the volume catalogue {}: {e}",
                    self.path.display()
                )
            })?;
            self.volumes = next;
        }
        Ok(out)
    }
}

fn write_atomically(path: &Path, volumes: &BTreeMap<String, VolumeRecord>) -> std::io::Result<()> {
    let file = StateFile {
        version: FORMAT_VERSION,
        volumes: volumes.values().cloned().collect(),
    };
    let bytes = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(&tmp)?;
    // `mode` applies only to a new file, through the umask: set it on a temp file left by a
    // crash, or under an odd umask, too. Before writing, so no secret is ever readable.
    out.set_permissions(Permissions::from_mode(FILE_MODE))?;
    out.write_all(&bytes)?;
    out.sync_all()?;
    drop(out);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, ids: &[&str]) -> VolumeRecord {
        VolumeRecord {
            name: name.into(),
            options: [("bucket".to_string(), "b".to_string())].into(),
            created_at: "2026-11-29T18:00:00Z".into(),
            mount_ids: ids.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn changes_are_saved_and_load_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut catalogue = Catalogue::load(dir.path()).unwrap();
        assert_eq!(catalogue.volumes().count(), 0);
        catalogue
            .update(|v| {
                v.insert("a".into(), record("a", &["id1", "id2"]));
                v.insert("b".into(), record("b", &[]));
            })
            .unwrap();
        let again = Catalogue::load(dir.path()).unwrap();
        assert_eq!(again.get("a"), Some(&record("a", &["id1", "id2"])));
        assert_eq!(again.volumes().count(), 2);
        assert!(!dir.path().join("volumes.json.tmp").exists());
    }

    #[test]
    fn a_failed_save_leaves_the_catalogue_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let mut catalogue = Catalogue::load(dir.path()).unwrap();
        catalogue
            .update(|v| v.insert("a".into(), record("a", &[])))
            .unwrap();
        // The temp file cannot be created where a folder of that name sits.
        std::fs::create_dir(dir.path().join("volumes.json.tmp")).unwrap();
        let err = catalogue
            .update(|v| v.insert("b".into(), record("b", &[])))
            .unwrap_err();
        assert!(err.contains("cannot save the volume catalogue"), "{err}");
        assert!(catalogue.get("b").is_none());
        assert!(Catalogue::load(dir.path()).unwrap().get("b").is_none());
    }

    #[test]
    fn the_file_and_folder_are_private_even_under_a_permissive_umask() {
        use nix::sys::stat::{umask, Mode};
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        // Left wide open by an earlier version or by hand.
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, Permissions::from_mode(0o777)).unwrap();
        std::fs::write(state.join("volumes.json.tmp"), b"stale").unwrap();
        std::fs::write(
            state.join("volumes.json"),
            br#"{"version": 1, "volumes": []}"#,
        )
        .unwrap();
        std::fs::set_permissions(state.join("volumes.json"), Permissions::from_mode(0o644))
            .unwrap();
        std::fs::set_permissions(
            state.join("volumes.json.tmp"),
            Permissions::from_mode(0o666),
        )
        .unwrap();
        let old = umask(Mode::empty());
        let loaded = Catalogue::load(&state);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let loaded_mode = mode(&state.join("volumes.json"));
        let saved = loaded
            .and_then(|mut catalogue| catalogue.update(|v| v.insert("a".into(), record("a", &[]))));
        umask(old);
        saved.unwrap();
        assert_eq!(loaded_mode, 0o600, "an old file is made private at load");
        assert_eq!(mode(&state.join("volumes.json")), 0o600);
        assert_eq!(mode(&state), 0o700);

        // A folder created by the catalogue, under the same umask.
        let fresh = dir.path().join("a/b/state");
        let old = umask(Mode::empty());
        let saved = Catalogue::load(&fresh)
            .and_then(|mut catalogue| catalogue.update(|v| v.insert("a".into(), record("a", &[]))));
        umask(old);
        saved.unwrap();
        assert_eq!(mode(&fresh.join("volumes.json")), 0o600);
        assert_eq!(mode(&fresh), 0o700);
    }

    #[test]
    fn a_damaged_file_is_an_error_that_says_the_data_is_safe() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("volumes.json"), b"{\"version\": 1, \"volu").unwrap();
        let err = Catalogue::load(dir.path()).unwrap_err();
        assert!(
            err.contains("damaged") && err.contains("safe in the bucket"),
            "{err}"
        );
        assert!(
            err.contains("docker volume create` with the same name and options"),
            "{err}"
        );
    }

    #[test]
    fn a_catalogue_of_another_format_says_which_and_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("volumes.json"),
            b"{\"version\": 2, \"volumes\": []}",
        )
        .unwrap();
        let err = Catalogue::load(dir.path()).unwrap_err();
        assert!(
            err.contains("format version 2, and this s3vol reads version 1")
                && err.contains("run the s3vol that wrote it")
                && err.contains("safe in the bucket"),
            "{err}"
        );
    }
}
