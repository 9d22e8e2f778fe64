//! Validated value types. A value of one of these types is known to be well formed, so code
//! past `resolve` never re-checks formats.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Why a string was refused: what was expected, in words an administrator can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FormatError(pub String);

/// Serializes a type as its `Display` text and deserializes it through `FromStr`, so a
/// malformed value in JSON is refused with the same message as in YAML.
macro_rules! serde_as_text {
    ($name:ident) => {
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?
                    .parse()
                    .map_err(serde::de::Error::custom)
            }
        }
    };
}

/// A validated string: displays as itself.
macro_rules! string_newtype {
    ($name:ident) => {
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        serde_as_text!($name);
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
    };
}

/// Microsoft security bulletin number, `MSyy-nnn`, stored upper case.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MsNumber(String);
string_newtype!(MsNumber);

impl FromStr for MsNumber {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self, FormatError> {
        let up = s.trim().to_ascii_uppercase();
        let b = up.as_bytes();
        let ok = b.len() == 8
            && up.starts_with("MS")
            && b[2..4].iter().all(u8::is_ascii_digit)
            && b[4] == b'-'
            && b[5..].iter().all(u8::is_ascii_digit);
        if ok {
            Ok(MsNumber(up))
        } else {
            Err(FormatError(format!(
                "`{s}` is not an MS bulletin number; expected MSyy-nnn, e.g. MS08-067"
            )))
        }
    }
}

/// Knowledge Base article number, `KB` followed by 6 to 8 digits, stored upper case.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KbNumber(String);
string_newtype!(KbNumber);

impl FromStr for KbNumber {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self, FormatError> {
        let up = s.trim().to_ascii_uppercase();
        let digits = up.strip_prefix("KB").unwrap_or("");
        if (6..=8).contains(&digits.len()) && digits.bytes().all(|c| c.is_ascii_digit()) {
            Ok(KbNumber(up))
        } else {
            Err(FormatError(format!(
                "`{s}` is not a KB number; expected KB and 6 to 8 digits, e.g. KB958644"
            )))
        }
    }
}

/// An entry of a machine's installed-update list: a KB or an MS number.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum UpdateId {
    Kb(KbNumber),
    Ms(MsNumber),
}

impl FromStr for UpdateId {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self, FormatError> {
        if let Ok(kb) = s.parse() {
            return Ok(UpdateId::Kb(kb));
        }
        s.parse().map(UpdateId::Ms).map_err(|_| {
            FormatError(format!(
                "`{s}` is neither a KB number (KB958644) nor an MS bulletin number (MS08-067)"
            ))
        })
    }
}

impl fmt::Display for UpdateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpdateId::Kb(k) => k.fmt(f),
            UpdateId::Ms(m) => m.fmt(f),
        }
    }
}

/// A Windows file version `major.minor.build.revision` (each 0–65535), as in VERSIONINFO.
/// Fewer parts are allowed and padded with zeros (`6.1` = `6.1.0.0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileVersion(pub [u16; 4]);

impl FromStr for FileVersion {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self, FormatError> {
        let bad = || {
            FormatError(format!(
                "`{s}` is not a file version; expected up to four numbers 0-65535 separated by dots, e.g. 5.2.3790.4392"
            ))
        };
        let parts: Vec<&str> = s.trim().split('.').collect();
        if parts.is_empty() || parts.len() > 4 {
            return Err(bad());
        }
        let mut v = [0u16; 4];
        for (slot, part) in v.iter_mut().zip(&parts) {
            if part.is_empty() || !part.bytes().all(|c| c.is_ascii_digit()) {
                return Err(bad());
            }
            *slot = part.parse().map_err(|_| bad())?;
        }
        Ok(FileVersion(v))
    }
}

impl fmt::Display for FileVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d] = self.0;
        write!(f, "{a}.{b}.{c}.{d}")
    }
}

serde_as_text!(FileVersion);

/// A SHA-256 digest, 32 bytes; text form is 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl FromStr for Sha256 {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self, FormatError> {
        let mut out = [0u8; 32];
        match hex::decode_to_slice(s.trim(), &mut out) {
            Ok(()) => Ok(Sha256(out)),
            Err(_) => Err(FormatError(format!(
                "`{s}` is not a SHA-256 digest; expected 64 hex digits (see `sha256sum FILE`)"
            ))),
        }
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({})", self.hex())
    }
}

serde_as_text!(Sha256);

/// A package id: 1–64 characters of `a-z 0-9 . _ -`, starting with a letter or digit.
/// Ids become directory and file names, so the alphabet keeps them safe on every OS.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PackageId(String);
string_newtype!(PackageId);

impl FromStr for PackageId {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self, FormatError> {
        let ok = (1..=64).contains(&s.len())
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.bytes().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
            });
        if ok {
            Ok(PackageId(s.to_string()))
        } else {
            Err(FormatError(format!(
                "`{s}` is not a valid package id; use 1-64 characters a-z, 0-9, '.', '_', '-', starting with a letter or digit"
            )))
        }
    }
}

/// Parses a timeout such as `30m`, `90s`, `1h 30m`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, FormatError> {
    match humantime::parse_duration(s.trim()) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(FormatError(format!(
            "`{s}` is not a duration; expected a number with a unit, e.g. 90s, 30m, 2h"
        ))),
    }
}

/// Parses a size such as `1GiB`, `500MB`, `64 KiB` or a plain number of bytes. `KB`, `MB`…
/// are powers of 1000 and `KiB`, `MiB`… of 1024, as `ls --si` and `ls -h` print them.
pub fn parse_size(s: &str) -> Result<u64, FormatError> {
    match s.trim().parse::<bytesize::ByteSize>() {
        Ok(b) => Ok(b.as_u64()),
        Err(_) => Err(FormatError(format!(
            "`{s}` is not a size; expected a number of bytes or a number with a unit, e.g. 1GiB, 500MB"
        ))),
    }
}

/// Parses a bandwidth such as `10MB/s` or `512KiB/s` (a bare size is per second too), in
/// bytes per second; zero is refused (leave the limit out for none).
pub fn parse_rate(s: &str) -> Result<u64, FormatError> {
    let size = s.trim().strip_suffix("/s").unwrap_or(s);
    match parse_size(size) {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(FormatError(format!(
            "`{s}` is not a bandwidth; expected a size per second, e.g. 10MB/s, 512KiB/s"
        ))),
    }
}

/// A size in a configuration file: a number of bytes, or a string with a unit (`1GiB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Size(pub u64);

/// A bandwidth in a configuration file: bytes per second, or a string (`10MB/s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Rate(pub u64);

#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrText {
    Number(u64),
    Text(String),
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumberOrText::deserialize(d)? {
            NumberOrText::Number(n) => Ok(Size(n)),
            NumberOrText::Text(t) => parse_size(&t).map(Size).map_err(serde::de::Error::custom),
        }
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumberOrText::deserialize(d)? {
            NumberOrText::Number(n) => Ok(Rate(n)),
            NumberOrText::Text(t) => parse_rate(&t).map(Rate).map_err(serde::de::Error::custom),
        }
    }
}

macro_rules! number_or_text_schema {
    ($name:ident, $example:literal) => {
        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "oneOf": [
                        {"type": "integer", "minimum": 0},
                        {"type": "string", "examples": [$example]}
                    ]
                })
            }
        }
    };
}
number_or_text_schema!(Size, "1GiB");
number_or_text_schema!(Rate, "10MB/s");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_rates_take_units() {
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("64 KiB").unwrap(), 65536);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_rate("10MB/s").unwrap(), 10_000_000);
        assert_eq!(parse_rate("512KiB/s").unwrap(), 524_288);
        for bad in ["", "lots", "1 parsec", "-1GB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        for bad in ["0/s", "0", "fast"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        let s: Size = serde_json::from_str("\"2GiB\"").unwrap();
        assert_eq!(s, Size(2 << 30));
        let r: Rate = serde_json::from_str("1000").unwrap();
        assert_eq!(r, Rate(1000));
        assert!(serde_json::from_str::<Size>("\"huge\"").is_err());
    }

    #[test]
    fn ms_numbers() {
        assert_eq!("ms08-067".parse::<MsNumber>().unwrap().as_str(), "MS08-067");
        for bad in [
            "MS08-67",
            "MS8-067",
            "MS08_067",
            "KB958644",
            "MS08-0671",
            "",
        ] {
            assert!(bad.parse::<MsNumber>().is_err(), "{bad}");
        }
    }

    #[test]
    fn kb_numbers() {
        assert_eq!("kb958644".parse::<KbNumber>().unwrap().as_str(), "KB958644");
        assert!("KB5034441".parse::<KbNumber>().is_ok());
        for bad in ["KB95864", "958644", "KB958644a", "KB123456789"] {
            assert!(bad.parse::<KbNumber>().is_err(), "{bad}");
        }
    }

    #[test]
    fn file_versions_order_numerically() {
        let a: FileVersion = "5.2.3790.4392".parse().unwrap();
        let b: FileVersion = "5.2.3790.10000".parse().unwrap();
        assert!(a < b);
        assert_eq!("6.1".parse::<FileVersion>().unwrap().to_string(), "6.1.0.0");
        for bad in ["", "1.2.3.4.5", "1..2", "65536", "a.b", "1.-2"] {
            assert!(bad.parse::<FileVersion>().is_err(), "{bad}");
        }
    }

    #[test]
    fn sha256_round_trip() {
        let h = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(h.parse::<Sha256>().unwrap().to_string(), h);
        assert!("e3b0".parse::<Sha256>().is_err());
    }

    #[test]
    fn package_ids_are_path_safe() {
        assert!("ms08-067-ws2003-ja".parse::<PackageId>().is_ok());
        for bad in ["", "../x", "A", "-x", "x/y", "x y"] {
            assert!(bad.parse::<PackageId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30m").unwrap().as_secs(), 1800);
        assert_eq!(parse_duration("1h 30m").unwrap().as_secs(), 5400);
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
