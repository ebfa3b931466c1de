//! Human byte sizes for settings such as `S3VOL_CACHE_SIZE=10GiB`.
//!
//! Accepted: a plain number of bytes, or a number (decimals allowed) with a unit. `KiB`, `MiB`,
//! `GiB`, `TiB` and the one-letter `K`, `M`, `G`, `T` (as Docker uses them) are powers of 1024;
//! `KB`, `MB`, `GB`, `TB` are powers of 1000. Units are case-insensitive.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size {input:?}: {reason} (examples: 1048576, 512MiB, 10GiB, 1.5G)")]
pub struct ByteSizeError {
    input: String,
    reason: &'static str,
}

impl FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| ByteSizeError {
            input: input.to_string(),
            reason,
        };
        let s = input.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (number, unit) = (&s[..split], s[split..].trim());
        if number.is_empty() {
            return Err(err("it does not start with a number"));
        }
        let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => 1 << 10,
            "m" | "mib" => 1 << 20,
            "g" | "gib" => 1 << 30,
            "t" | "tib" => 1 << 40,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            _ => return Err(err("unknown unit")),
        };
        let bytes = if let Ok(n) = number.parse::<u64>() {
            n.checked_mul(multiplier).ok_or_else(|| err("too large"))?
        } else {
            let n: f64 = number.parse().map_err(|_| err("not a number"))?;
            let v = n * multiplier as f64;
            if !v.is_finite() || v >= u64::MAX as f64 {
                return Err(err("too large"));
            }
            v as u64
        };
        Ok(ByteSize(bytes))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [
            ("TiB", 1 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ];
        for (name, size) in UNITS {
            if self.0 >= size && self.0 % size == 0 {
                return write!(f, "{}{name}", self.0 / size);
            }
        }
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        let cases = [
            ("1048576", 1 << 20),
            ("512MiB", 512 << 20),
            ("10GiB", 10 << 30),
            ("10gib", 10 << 30),
            ("1.5G", 3 << 29),
            ("64 KiB", 64 << 10),
            ("2MB", 2_000_000),
            ("7b", 7),
        ];
        for (input, bytes) in cases {
            assert_eq!(
                input.parse::<ByteSize>().unwrap(),
                ByteSize(bytes),
                "{input}"
            );
        }
    }

    #[test]
    fn refuses_garbage_with_examples() {
        for input in ["", "MiB", "12 parsecs", "1.2.3G", "99999999999999999999T"] {
            let err = input.parse::<ByteSize>().unwrap_err().to_string();
            assert!(err.contains("examples"), "{input}: {err}");
        }
    }

    #[test]
    fn displays_round_units() {
        assert_eq!(ByteSize(10 << 30).to_string(), "10GiB");
        assert_eq!(ByteSize(1000).to_string(), "1000");
    }
}
