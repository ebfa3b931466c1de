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
    // Checked, not `+`: a time past what this platform's SystemTime holds (32-bit time_t)
    // falls back to the default instead of panicking on an object someone else wrote.
    UNIX_EPOCH.checked_add(Duration::try_from_secs_f64(seconds).ok()?)
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

        /// Any keys (ours, s3fs's full header names, any case, anything) with any values
        /// (huge, negative, fractional, exponents, non-ASCII, empty): decoding never panics,
        /// and what it keeps is in range.
        #[test]
        fn proptest_decoding_any_metadata_never_panics(
            meta in proptest::collection::btree_map(metadata_key(), metadata_value(), 0..8),
        ) {
            let attrs = StoredAttrs::decode(&meta);
            if let Some(mtime) = attrs.mtime {
                prop_assert!(mtime >= UNIX_EPOCH);
            }
        }

        /// What `encode` writes, `decode` reads back: mode, uid and gid exactly, mtime to the
        /// second (encode drops the fraction).
        #[test]
        fn proptest_encode_then_decode_round_trips(
            kind in prop_oneof![Just(S_IFREG), Just(S_IFDIR), Just(S_IFLNK)],
            permissions in 0u32..=0o7777,
            uid: u32,
            gid: u32,
            seconds in 0u64..100_000_000_000,
            nanos in 0u32..1_000_000_000,
        ) {
            let mtime = UNIX_EPOCH + Duration::new(seconds, nanos);
            let attrs = StoredAttrs::decode(&StoredAttrs::encode(kind | permissions, uid, gid, mtime));
            prop_assert_eq!(attrs.mode, Some(kind | permissions));
            prop_assert_eq!(attrs.uid, Some(uid));
            prop_assert_eq!(attrs.gid, Some(gid));
            prop_assert_eq!(attrs.mtime, Some(UNIX_EPOCH + Duration::from_secs(seconds)));
        }
    }

    fn metadata_key() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec!["mode", "uid", "gid", "mtime"]).prop_map(String::from),
            prop::sample::select(vec![
                "x-amz-meta-mode",
                "x-amz-meta-uid",
                "x-amz-meta-gid",
                "x-amz-meta-mtime",
                "MODE",
                "Mtime",
            ])
            .prop_map(String::from),
            any::<String>(),
        ]
    }

    fn metadata_value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<u64>().prop_map(|n| n.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<i128>().prop_map(|n| format!(" {n} ")),
            any::<f64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|n| format!("{n:e}")),
            prop::sample::select(vec![
                "",
                " ",
                "-0",
                "-0.0",
                "+1",
                "0x10",
                "1e10",
                "1e11",
                "1e308",
                "1e309",
                "-1e-320",
                "inf",
                "-inf",
                "NaN",
                "99999999999.9999999",
                "4294967295",
                "4294967296",
                "18446744073709551616",
                "0.9999999999999999999",
                "١٢٣",
                "12\u{0}",
            ])
            .prop_map(String::from),
            "[0-9]{0,40}(\\.[0-9]{0,20})?",
            any::<String>(),
        ]
    }

    #[test]
    fn edge_values_decode_to_defaults_or_valid_times() {
        for (value, expected) in [
            ("-0", Some(UNIX_EPOCH)),
            (
                "99999999999.5",
                Some(UNIX_EPOCH + Duration::from_secs_f64(99_999_999_999.5)),
            ),
            ("1e11", None),
            ("1e400", None),
            ("-1", None),
            ("", None),
        ] {
            let meta: UserMetadata = [("mtime".to_string(), value.to_string())].into();
            assert_eq!(StoredAttrs::decode(&meta).mtime, expected, "{value:?}");
        }
    }
}
