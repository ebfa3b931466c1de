//! Validated names. A value of these types has passed its checks once, at the edge.

use std::fmt;
use std::str::FromStr;

/// Why a name was refused; the message says what a valid one looks like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid bucket name {name:?}: {reason}")]
pub struct NameError {
    pub name: String,
    pub reason: &'static str,
}

/// An S3 bucket name following the AWS naming rules (which Ceph RGW and MinIO also accept):
/// 3 to 63 characters of lowercase letters, digits, `.` and `-`, starting and ending with a
/// letter or digit, no `..`, and not shaped like an IPv4 address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BucketName(String);

impl BucketName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for BucketName {
    type Err = NameError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let fail = |reason| {
            Err(NameError {
                name: name.to_string(),
                reason,
            })
        };
        if name.len() < 3 || name.len() > 63 {
            return fail("bucket names are 3 to 63 characters long");
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        {
            return fail("use only lowercase letters, digits, '.' and '-'");
        }
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if !alnum(name.as_bytes()[0]) || !alnum(name.as_bytes()[name.len() - 1]) {
            return fail("a bucket name starts and ends with a letter or digit");
        }
        if name.contains("..") {
            return fail("a bucket name has no two dots in a row");
        }
        if name.parse::<std::net::Ipv4Addr>().is_ok() {
            return fail("a bucket name must not look like an IP address");
        }
        Ok(BucketName(name.to_string()))
    }
}

impl fmt::Display for BucketName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_bucket_names() {
        for name in ["abc", "my-bucket.v2", "0data", &"a".repeat(63)] {
            assert_eq!(name.parse::<BucketName>().unwrap().as_str(), name);
        }
    }

    #[test]
    fn refuses_invalid_bucket_names_with_the_rule_broken() {
        let cases = [
            ("ab", "3 to 63"),
            (&*"a".repeat(64), "3 to 63"),
            ("My_Bucket", "lowercase"),
            ("-abc", "starts and ends"),
            ("abc.", "starts and ends"),
            ("a..b", "two dots"),
            ("192.168.1.1", "IP address"),
            ("a/b", "lowercase"),
        ];
        for (name, hint) in cases {
            let err = name.parse::<BucketName>().unwrap_err();
            assert!(err.to_string().contains(hint), "{name}: {err}");
        }
    }
}
