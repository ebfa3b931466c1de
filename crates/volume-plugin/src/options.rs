//! Volume names and options (`docker volume create -o key=value`, Compose `driver_opts`),
//! parsed once into a validated [`VolumeSpec`].

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use common::BucketName;
use s3_backend::PathStyle;

/// Every option a volume accepts (product.md), in the order the help lists them.
pub const OPTION_NAMES: &[&str] = &[
    "bucket",
    "prefix",
    "endpoint",
    "region",
    "path_style",
    "profile",
    "uid",
    "gid",
    "file_mode",
    "dir_mode",
    "read_only",
    "create_bucket",
    "cache",
    "metadata_ttl",
    "negative_metadata_ttl",
];

/// Option names that would carry a secret. Docker keeps options in its metadata and shows them
/// in `docker volume inspect`, so these are refused with a pointer to profiles.
const SECRET_NAMES: &[&str] = &[
    "access_key",
    "access_key_id",
    "aws_access_key_id",
    "secret",
    "secret_key",
    "secret_access_key",
    "aws_secret_access_key",
    "session_token",
    "aws_session_token",
    "token",
    "password",
    "accesskey",
    "secretkey",
];

/// Longest volume name: the name is a folder name (mountpoint, staging folder).
pub const MAX_NAME_LEN: usize = 255;

/// A validated volume: where its objects live and how its files look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    pub bucket: BucketName,
    /// Key prefix: empty (whole bucket) or ending in `/`.
    pub prefix: String,
    /// Overrides of the plugin's settings; `None` uses the plugin's.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: Option<PathStyle>,
    /// Profile of the plugin's credentials file; `None` uses the plugin's default credentials.
    pub profile: Option<String>,
    /// Owner of files without uid/gid metadata; `None`: root.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub file_mode: u32,
    pub dir_mode: u32,
    pub read_only: bool,
    /// Create the bucket at volume creation when it does not exist.
    pub create_bucket: bool,
    /// Use the shared chunk cache (memory and disk); off keeps only a small private memory tier.
    pub cache: bool,
    /// How long the attributes of a name, and a name found missing, are trusted before the
    /// store is asked again; `None`: the filesystem's defaults.
    pub metadata_ttl: Option<Duration>,
    pub negative_metadata_ttl: Option<Duration>,
}

/// Check a volume name: Docker's rule (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`), at most 255 bytes, so it
/// is always one safe folder name.
pub fn check_volume_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid = match chars.next() {
        Some(first) => {
            first.is_ascii_alphanumeric()
                && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        }
        None => false,
    };
    if !valid || name.len() > MAX_NAME_LEN {
        let shown: String = name.chars().take(64).collect();
        let more = if name.chars().count() > 64 { "..." } else { "" };
        return Err(format!(
            "invalid volume name {shown:?}{more}: use 1 to {MAX_NAME_LEN} letters, digits, '_', '.' or '-', starting with a letter or digit"
        ));
    }
    Ok(())
}

/// The closest valid option name to `key`, when it is close enough to be a typo.
fn closest_option(key: &str) -> Option<&'static str> {
    OPTION_NAMES
        .iter()
        .map(|name| (strsim::levenshtein(key, name), *name))
        .filter(|(distance, name)| *distance <= 2.max(name.len() / 3))
        .min()
        .map(|(_, name)| name)
}

fn parse_bool(key: &str, value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(format!(
            "invalid value {value:?} for option {key}: use true or false"
        )),
    }
}

fn parse_id(key: &str, value: &str) -> Result<u32, String> {
    value
        .parse()
        .map_err(|_| format!("invalid value {value:?} for option {key}: use a number such as 1000"))
}

/// Octal permissions (`0644`, `755`, `0o644`), at most `07777`.
pub fn parse_mode(key: &str, value: &str) -> Result<u32, String> {
    u32::from_str_radix(value.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| {
            format!("invalid value {value:?} for option {key}: use octal permissions such as 0644")
        })
}

/// Longest metadata TTL: a day. Longer is "never look again", which no volume shared with
/// other clients wants.
const MAX_TTL_SECS: f64 = 86_400.0;

/// A TTL in seconds (`1`, `0.5`, `30s`; 0 asks the store every time), at most a day.
pub fn parse_ttl(value: &str) -> Result<Duration, String> {
    let number = value.trim();
    let number = number.strip_suffix('s').unwrap_or(number);
    number
        .parse::<f64>()
        .ok()
        .filter(|secs| (0.0..=MAX_TTL_SECS).contains(secs))
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("use seconds from 0 to {MAX_TTL_SECS}, such as 1 or 0.5"))
}

/// Normalise a prefix to "" or `a/b/`; refuse `..` segments and NUL bytes, which could make
/// keys that other tools resolve outside the prefix.
fn parse_prefix(value: &str) -> Result<String, String> {
    /// S3 keys are at most 1024 bytes; the files of the volume need room after the prefix.
    const MAX_PREFIX: usize = 512;
    if value.len() > MAX_PREFIX {
        return Err(format!(
            "invalid prefix of {} bytes: at most {MAX_PREFIX} (S3 keys hold 1024 bytes, and the volume's file names follow the prefix)",
            value.len()
        ));
    }
    let trimmed = value.trim_matches('/');
    if trimmed.split('/').any(|s| s == ".." || s == ".") || trimmed.contains('\0') {
        return Err(format!(
            "invalid prefix {value:?}: no '.' or '..' segments or NUL bytes"
        ));
    }
    if trimmed.split('/').any(str::is_empty) && !trimmed.is_empty() {
        return Err(format!(
            "invalid prefix {value:?}: no empty segments ('//')"
        ));
    }
    Ok(if trimmed.is_empty() {
        String::new()
    } else {
        format!("{trimmed}/")
    })
}

fn parse_endpoint(value: &str) -> Result<String, String> {
    let rest = value
        .strip_prefix("http://")
        .or_else(|| value.strip_prefix("https://"));
    // With or without a scheme: the value is repeated in the error below.
    let authority = rest.unwrap_or(value).split('/').next().unwrap_or(value);
    if authority.contains('@') {
        // user:password@host would put a secret into Docker's metadata and our catalogue.
        return Err("invalid endpoint: no user or password in the URL; put keys in a profile of the credentials file and pass -o profile=NAME".into());
    }
    match rest {
        Some(host) if !host.is_empty() && !host.contains(char::is_whitespace) => {
            Ok(value.trim_end_matches('/').to_string())
        }
        _ => Err(format!(
            "invalid endpoint {value:?}: use a URL such as http://127.0.0.1:7480 or https://s3.example.com"
        )),
    }
}

fn parse_profile(value: &str) -> Result<String, String> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(value.to_string())
    } else {
        Err(format!(
            "invalid profile name {value:?}: use the name of a [section] of the credentials file (letters, digits, '_', '.', '-')"
        ))
    }
}

impl VolumeSpec {
    /// Parse the options of volume `name`. Without `bucket`, the volume is the prefix `<name>/`
    /// of `default_bucket` (the plugin's `S3VOL_DEFAULT_BUCKET`).
    pub fn parse(
        name: &str,
        options: &BTreeMap<String, String>,
        default_bucket: Option<&BucketName>,
    ) -> Result<Self, String> {
        check_volume_name(name)?;
        // Everything but the bucket, which is settled after the loop.
        let mut spec = Self {
            bucket: match default_bucket {
                Some(b) => b.clone(),
                None => BucketName::from_str("unset").expect("a valid name"),
            },
            prefix: String::new(),
            endpoint: None,
            region: None,
            path_style: None,
            profile: None,
            uid: None,
            gid: None,
            file_mode: 0o644,
            dir_mode: 0o755,
            read_only: false,
            create_bucket: true,
            cache: true,
            metadata_ttl: None,
            negative_metadata_ttl: None,
        };
        let mut bucket = None;
        let mut prefix = None;
        for (raw_key, value) in options {
            // `path-style` and `Path_Style` mean `path_style`, as in rclone's plugin.
            let key = raw_key.to_ascii_lowercase().replace('-', "_");
            if SECRET_NAMES.contains(&key.as_str()) {
                return Err(format!(
                    "option {raw_key:?} would put a secret into Docker's volume metadata, where `docker volume inspect` shows it: \
                     put the keys in a profile of the plugin's credentials file (the `credentials` file of its config folder) \
                     and pass -o profile=NAME"
                ));
            }
            match key.as_str() {
                "bucket" => {
                    bucket = Some(
                        value
                            .parse::<BucketName>()
                            .map_err(|e| format!("invalid option bucket: {e}"))?,
                    )
                }
                "prefix" => prefix = Some(parse_prefix(value)?),
                "endpoint" => spec.endpoint = Some(parse_endpoint(value)?),
                "region" if value.is_empty() => {
                    return Err("invalid option region: empty".into());
                }
                "region" => spec.region = Some(value.clone()),
                "path_style" => {
                    spec.path_style = Some(
                        value
                            .parse::<PathStyle>()
                            .map_err(|e| format!("invalid option path_style: {e}"))?,
                    )
                }
                "profile" => spec.profile = Some(parse_profile(value)?),
                "uid" => spec.uid = Some(parse_id(&key, value)?),
                "gid" => spec.gid = Some(parse_id(&key, value)?),
                "file_mode" => spec.file_mode = parse_mode(&key, value)?,
                "dir_mode" => spec.dir_mode = parse_mode(&key, value)?,
                "read_only" => spec.read_only = parse_bool(&key, value)?,
                "create_bucket" => spec.create_bucket = parse_bool(&key, value)?,
                "cache" => spec.cache = parse_bool(&key, value)?,
                "metadata_ttl" | "negative_metadata_ttl" => {
                    let ttl = parse_ttl(value).map_err(|hint| {
                        format!("invalid value {value:?} for option {key}: {hint}")
                    })?;
                    match key.as_str() {
                        "metadata_ttl" => spec.metadata_ttl = Some(ttl),
                        _ => spec.negative_metadata_ttl = Some(ttl),
                    }
                }
                _ => {
                    let hint = closest_option(&key)
                        .map(|c| format!(" (did you mean {c:?}?)"))
                        .unwrap_or_default();
                    let shown: String = raw_key.chars().take(64).collect();
                    return Err(format!(
                        "unknown option {shown:?}{hint}; valid options: {}",
                        OPTION_NAMES.join(", ")
                    ));
                }
            }
        }
        match (bucket, default_bucket) {
            (Some(bucket), _) => {
                spec.bucket = bucket;
                spec.prefix = prefix.unwrap_or_default();
            }
            (None, Some(default)) => {
                spec.bucket = default.clone();
                spec.prefix = prefix.unwrap_or_else(|| format!("{name}/"));
            }
            (None, None) => {
                return Err(format!(
                    "volume {name:?} has no bucket: pass -o bucket=NAME, or give the plugin a default bucket \
                     (`docker plugin disable s3vol && docker plugin set s3vol S3VOL_DEFAULT_BUCKET=NAME && docker plugin enable s3vol`)"
                ));
            }
        }
        Ok(spec)
    }

    /// The options that describe this volume completely, for the catalogue: parsing them again
    /// (without a default bucket) gives the same spec, whatever the plugin's settings are then.
    pub fn to_options(&self) -> BTreeMap<String, String> {
        let mut options = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            options.insert(k.to_string(), v);
        };
        put("bucket", self.bucket.to_string());
        if !self.prefix.is_empty() {
            put("prefix", self.prefix.clone());
        }
        if let Some(endpoint) = &self.endpoint {
            put("endpoint", endpoint.clone());
        }
        if let Some(region) = &self.region {
            put("region", region.clone());
        }
        if let Some(style) = self.path_style {
            let value = match style {
                PathStyle::Auto => "auto",
                PathStyle::Always => "true",
                PathStyle::Never => "false",
            };
            put("path_style", value.to_string());
        }
        if let Some(profile) = &self.profile {
            put("profile", profile.clone());
        }
        if let Some(uid) = self.uid {
            put("uid", uid.to_string());
        }
        if let Some(gid) = self.gid {
            put("gid", gid.to_string());
        }
        put("file_mode", format!("{:04o}", self.file_mode));
        put("dir_mode", format!("{:04o}", self.dir_mode));
        put("read_only", self.read_only.to_string());
        put("create_bucket", self.create_bucket.to_string());
        put("cache", if self.cache { "on" } else { "off" }.to_string());
        if let Some(ttl) = self.metadata_ttl {
            put("metadata_ttl", ttl.as_secs_f64().to_string());
        }
        if let Some(ttl) = self.negative_metadata_ttl {
            put("negative_metadata_ttl", ttl.as_secs_f64().to_string());
        }
        options
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn full_options_parse_into_a_spec() {
        let spec = VolumeSpec::parse(
            "v1",
            &opts(&[
                ("bucket", "data"),
                ("prefix", "/team/a"),
                ("endpoint", "http://127.0.0.1:7480/"),
                ("region", "eu-west-1"),
                ("path-style", "true"),
                ("profile", "team-a"),
                ("uid", "1000"),
                ("gid", "1001"),
                ("file_mode", "0600"),
                ("dir_mode", "700"),
                ("read_only", "yes"),
                ("create_bucket", "false"),
                ("cache", "off"),
                ("metadata_ttl", "30"),
                ("negative-metadata-ttl", "0.25s"),
            ]),
            None,
        )
        .unwrap();
        assert_eq!(spec.bucket.as_str(), "data");
        assert_eq!(spec.prefix, "team/a/");
        assert_eq!(spec.endpoint.as_deref(), Some("http://127.0.0.1:7480"));
        assert_eq!(spec.path_style, Some(PathStyle::Always));
        assert_eq!((spec.uid, spec.gid), (Some(1000), Some(1001)));
        assert_eq!((spec.file_mode, spec.dir_mode), (0o600, 0o700));
        assert!(spec.read_only && !spec.create_bucket && !spec.cache);
        assert_eq!(
            (spec.metadata_ttl, spec.negative_metadata_ttl),
            (
                Some(Duration::from_secs(30)),
                Some(Duration::from_millis(250))
            )
        );
    }

    #[test]
    fn no_bucket_uses_the_default_bucket_with_the_name_as_prefix() {
        let default = BucketName::from_str("shared").unwrap();
        let spec = VolumeSpec::parse("newvol", &BTreeMap::new(), Some(&default)).unwrap();
        assert_eq!(
            (spec.bucket.as_str(), spec.prefix.as_str()),
            ("shared", "newvol/")
        );
        let err = VolumeSpec::parse("newvol", &BTreeMap::new(), None).unwrap_err();
        assert!(
            err.contains("-o bucket=NAME") && err.contains("S3VOL_DEFAULT_BUCKET"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_option_names_the_closest_and_lists_the_valid_ones() {
        let err = VolumeSpec::parse("v", &opts(&[("bukcet", "x")]), None).unwrap_err();
        assert!(err.contains("unknown option \"bukcet\""), "{err}");
        assert!(err.contains("did you mean \"bucket\""), "{err}");
        assert!(err.contains(&OPTION_NAMES.join(", ")), "{err}");
        let err = VolumeSpec::parse("v", &opts(&[("zzzzzzzzzz", "x")]), None).unwrap_err();
        assert!(!err.contains("did you mean"), "{err}");
    }

    #[test]
    fn secrets_are_refused_without_echoing_them() {
        for key in ["secret_key", "AWS_SECRET_ACCESS_KEY", "access-key"] {
            let err = VolumeSpec::parse("v", &opts(&[("bucket", "bkt"), (key, "s3cr3t")]), None)
                .unwrap_err();
            assert!(err.contains("profile=NAME"), "{err}");
            assert!(!err.contains("s3cr3t"), "{err}");
        }
    }

    #[test]
    fn bad_values_say_what_to_use() {
        let cases = [
            (("uid", "me"), "use a number"),
            (("file_mode", "rw-r--r--"), "octal"),
            (("read_only", "maybe"), "true or false"),
            (("path_style", "sideways"), "auto, true or false"),
            (("endpoint", "minio:9000"), "http://"),
            (
                ("endpoint", "https://ak:sk@s3.example.com"),
                "no user or password",
            ),
            (("endpoint", "ak:sk@s3.example.com"), "no user or password"),
            (("prefix", "a/../b"), "'..'"),
            (("prefix", "a\0b"), "NUL"),
            (("prefix", &"p".repeat(10_000)), "at most 512"),
            (("bucket", "Bad_Bucket"), "invalid option bucket"),
            (("profile", "a b"), "credentials file"),
            (("metadata_ttl", "1h"), "seconds from 0 to 86400"),
            (("metadata_ttl", "-1"), "seconds from 0 to 86400"),
            (("negative_metadata_ttl", "NaN"), "seconds from 0 to 86400"),
            (("metadata_ttl", "100000"), "seconds from 0 to 86400"),
        ];
        for ((key, value), expected) in cases {
            let err = VolumeSpec::parse("v", &opts(&[("bucket", "bkt"), (key, value)]), None)
                .err()
                .unwrap_or_else(|| panic!("{key}={value} accepted"));
            assert!(err.contains(expected), "{key}={value}: {err}");
        }
    }

    #[test]
    fn volume_names_are_single_safe_folder_names() {
        for good in ["v", "my-vol_1.data", "A0", &"a".repeat(255)] {
            check_volume_name(good).unwrap();
        }
        for bad in [
            "",
            "../x",
            "a/b",
            ".hidden",
            "-x",
            "a b",
            "é",
            &"a".repeat(256),
        ] {
            let err = check_volume_name(bad).unwrap_err();
            assert!(err.contains("invalid volume name"), "{bad:?}: {err}");
        }
        // A huge name is cut in the message.
        assert!(check_volume_name(&"/".repeat(10_000)).unwrap_err().len() < 400);
    }

    proptest! {
        #[test]
        fn parsing_any_options_never_panics(
            name in ".{0,40}",
            pairs in proptest::collection::btree_map("[a-z_-]{0,14}", ".{0,30}", 0..6),
        ) {
            let _ = VolumeSpec::parse(&name, &pairs, None);
        }

        #[test]
        fn stored_options_parse_back_to_the_same_spec(
            prefix in "[a-z]{0,5}(/[a-z]{1,5}){0,2}",
            uid in proptest::option::of(0u32..70000),
            mode in 0u32..0o7777,
            read_only: bool,
            cache: bool,
            ttl_ms in proptest::option::of(0u64..100_000),
        ) {
            let mut given = opts(&[("prefix", &prefix), ("file_mode", &format!("{mode:o}"))]);
            if let Some(uid) = uid {
                given.insert("uid".into(), uid.to_string());
            }
            if let Some(ms) = ttl_ms {
                given.insert("metadata_ttl".into(), format!("{}", ms as f64 / 1000.0));
            }
            given.insert("read_only".into(), read_only.to_string());
            given.insert("cache".into(), cache.to_string());
            let default = BucketName::from_str("dflt").unwrap();
            let spec = VolumeSpec::parse("vol", &given, Some(&default)).unwrap();
            let again = VolumeSpec::parse("vol", &spec.to_options(), None).unwrap();
            prop_assert_eq!(spec, again);
        }
    }
}
