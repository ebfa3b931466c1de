//! POSIX attributes stored in object user metadata, in s3fs-fuse's encoding, so buckets written
//! by s3fs mount correctly here and the other way round:
//! `x-amz-meta-mode` (decimal `st_mode`, type bits included), `x-amz-meta-uid`,
//! `x-amz-meta-gid` (decimal), `x-amz-meta-mtime` (decimal seconds since the epoch; a fraction
//! is accepted on read). Values that do not parse are ignored and the volume's defaults apply.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::UserMetadata;

pub const S_IFMT: u32 = 0o170000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFLNK: u32 = 0o120000;

/// The attributes kept in metadata; `None` where the object carries none (or garbage).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoredAttrs {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mtime: Option<SystemTime>,
}

impl StoredAttrs {
    pub fn decode(metadata: &UserMetadata) -> Self {
        let number = |name: &str| {
            metadata
                .get(name)
                .and_then(|v| v.trim().parse::<u32>().ok())
        };
        Self {
            mode: number("mode"),
            uid: number("uid"),
            gid: number("gid"),
            mtime: metadata.get("mtime").and_then(|v| parse_seconds(v)),
        }
    }

    /// Metadata for an object with these attributes (all four set).
    pub fn encode(mode: u32, uid: u32, gid: u32, mtime: SystemTime) -> UserMetadata {
        let seconds = mtime
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        [
            ("mode", mode.to_string()),
            ("uid", uid.to_string()),
            ("gid", gid.to_string()),
            ("mtime", seconds.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

fn parse_seconds(value: &str) -> Option<SystemTime> {
    let seconds: f64 = value.trim().parse().ok()?;
    if !seconds.is_finite() || !(0.0..1e11).contains(&seconds) {
        return None;
    }
    Some(UNIX_EPOCH + Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips_s3fs_encoding() {
        let mtime = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let meta = StoredAttrs::encode(S_IFREG | 0o640, 1000, 100, mtime);
        assert_eq!(meta["mode"], "33184");
        assert_eq!(meta["mtime"], "1700000000");
        let attrs = StoredAttrs::decode(&meta);
        assert_eq!(attrs.mode, Some(S_IFREG | 0o640));
        assert_eq!((attrs.uid, attrs.gid), (Some(1000), Some(100)));
        assert_eq!(attrs.mtime, Some(mtime));
    }

    #[test]
    fn garbage_is_ignored() {
        let meta: UserMetadata = [("mode", "rwx"), ("uid", "-1"), ("mtime", "NaN")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(StoredAttrs::decode(&meta), StoredAttrs::default());
    }

    proptest! {
        #[test]
        fn proptest_decoding_never_panics(mode in ".*", uid in ".*", mtime in ".*") {
            let meta: UserMetadata = [("mode", mode), ("uid", uid), ("mtime", mtime)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            let _ = StoredAttrs::decode(&meta);
        }
    }
}
