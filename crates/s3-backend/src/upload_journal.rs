//! A local record of the multipart uploads this process started and has not finished, so that
//! the uploads a crash leaves behind (SIGKILL, OOM kill, power loss) are aborted at the next
//! start instead of keeping their parts, unseen and billed, in the bucket forever.
//!
//! Only uploads recorded here are aborted: other clients of a shared bucket (another Swarm node,
//! a backup tool) may have uploads in progress under the same prefix, and those are theirs.
//!
//! One record is one small file in the journal folder: the upload ID on the first line, then the
//! key, verbatim (keys may hold newlines; upload IDs do not). A folder serves one mount at a time.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use common::{ObjectStore, UploadId};

static NEXT_RECORD: AtomicU64 = AtomicU64::new(0);

/// The journal folder of one volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadJournal {
    dir: PathBuf,
}

/// What [`UploadJournal::abort_leftovers`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LeftoverUploads {
    /// Keys whose unfinished upload was aborted.
    pub aborted: Vec<String>,
    /// Uploads that could not be aborted now; their records stay for the next start.
    pub failed: usize,
}

impl UploadJournal {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Note that `upload_id` of `key` is in progress. Returns the record to pass to
    /// [`forget`](Self::forget) once the upload is completed or aborted.
    pub fn record(&self, key: &str, upload_id: &UploadId) -> io::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)?;
        // Unique across runs too (a plugin restarted in its container gets the same pid), so a
        // new record never overwrites a leftover one still waiting to be aborted.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let path = self.dir.join(format!(
            "{now}-{}-{}.upload",
            std::process::id(),
            NEXT_RECORD.fetch_add(1, Ordering::Relaxed)
        ));
        // No fsync: a record can only be lost with the host, and an upload it leaves behind
        // then waits for the bucket's lifecycle rule for incomplete uploads (RELIABILITY.md).
        std::fs::write(&path, format!("{}\n{key}", upload_id.0))?;
        Ok(path)
    }

    /// Drop a record: its upload is finished one way or the other.
    pub fn forget(record: &Path) {
        if let Err(e) = std::fs::remove_file(record) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(record = %record.display(), error = %e, "cannot remove an upload record");
            }
        }
    }

    /// Abort every upload recorded in the folder: call this at start, before any upload of this
    /// process begins. Records of uploads that cannot be aborted now (the store is down) stay.
    pub async fn abort_leftovers<S: ObjectStore + ?Sized>(&self, store: &S) -> LeftoverUploads {
        let mut report = LeftoverUploads::default();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return report,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read the upload journal");
                return report;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Some((upload_id, key)) = std::fs::read_to_string(&path)
                .ok()
                .and_then(|text| parse_record(&text))
            else {
                // Torn by a crash while being written: its upload, if any, was never used.
                tracing::warn!(record = %path.display(), "dropping an unreadable upload record");
                Self::forget(&path);
                continue;
            };
            match store.abort_multipart(&key, &upload_id).await {
                Ok(()) => {
                    tracing::info!(key = %key, "aborted a multipart upload left unfinished by an earlier run");
                    Self::forget(&path);
                    report.aborted.push(key);
                }
                Err(e) => {
                    tracing::warn!(key = %key, error = %e, "cannot abort a multipart upload left by an earlier run; trying again at the next start");
                    report.failed += 1;
                }
            }
        }
        report
    }
}

fn parse_record(text: &str) -> Option<(UploadId, String)> {
    let (id, key) = text.split_once('\n')?;
    (!id.is_empty() && !key.is_empty()).then(|| (UploadId(id.to_string()), key.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_keys_with_newlines() {
        let dir = tempfile::tempdir().unwrap();
        let journal = UploadJournal::new(dir.path().join("uploads"));
        let record = journal
            .record("odd\nkey/ü", &UploadId("2~abc".into()))
            .unwrap();
        let text = std::fs::read_to_string(&record).unwrap();
        assert_eq!(
            parse_record(&text),
            Some((UploadId("2~abc".into()), "odd\nkey/ü".into()))
        );
        UploadJournal::forget(&record);
        assert!(!record.exists());
        assert_eq!(parse_record("no-newline"), None);
        assert_eq!(parse_record("\nkey"), None);
    }
}
