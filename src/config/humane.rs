//! Durations (`500ms`, `2s`, `1m`) and byte sizes (`64MiB`) as people write them.

use std::fmt;

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// `serde(deserialize_with = "humane::duration::deserialize")` for `Duration` fields.
pub mod duration {
    use std::fmt;
    use std::time::Duration;

    use serde::Deserializer;
    use serde::de::{self, Visitor};

    const EXAMPLES: &str = "expected e.g. 500ms, 2s, 1m";

    /// The units humantime reads, as the schema's pattern lists them.
    const UNITS: &[&str] = &[
        "nanos", "nsec", "ns", "usec", "us", "µs", "millis", "msec", "ms", "seconds", "second", "secs", "sec", "s",
        "minutes", "minute", "mins", "min", "m", "hours", "hour", "hrs", "hr", "h", "days", "day", "d", "weeks",
        "week", "wks", "wk", "w", "months", "month", "M", "years", "year", "yrs", "yr", "y",
    ];

    /// The grammar [`parse`] accepts, as a JSON Schema `pattern`: one or more
    /// `number unit` parts (`1m 30s`). A bare number has no unit and is refused.
    pub fn pattern() -> String {
        let units = UNITS.join("|");
        format!(r"^\s*(?:[0-9]+(?:\.[0-9]+)?\s*(?:{units})\s*)+$")
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(DurationVisitor)
    }

    /// Parses `500ms`, `2s`, `1m`; the message of an error quotes the text.
    pub fn parse(text: &str) -> Result<Duration, String> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(format!("bad duration `{text}`: it is empty; {EXAMPLES}"));
        }
        if trimmed.starts_with('-') {
            return Err(format!("bad duration `{text}`: a duration cannot be negative"));
        }
        if trimmed.chars().all(|c| c.is_ascii_digit() || c == '.') {
            return Err(format!(
                "bad duration `{text}`: it needs a unit, e.g. {trimmed}ms or {trimmed}s"
            ));
        }
        humantime::parse_duration(trimmed).map_err(|e| format!("bad duration `{text}` ({e}): {EXAMPLES}"))
    }

    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as 500ms, 2s or 1m")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            parse(v).map_err(E::custom)
        }

        // A bare number is a duration without its unit.
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            parse(&v.to_string()).map_err(E::custom)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            parse(&v.to_string()).map_err(E::custom)
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
            parse(&v.to_string()).map_err(E::custom)
        }
    }
}

/// The schema of a duration field (`#[schemars(with = "DurationText")]`):
/// text with a unit, as [`duration::parse`] reads it.
pub struct DurationText;

impl JsonSchema for DurationText {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A duration with its unit, e.g. 500ms, 2s, 1m or 1h 30m.",
            "type": "string",
            "pattern": duration::pattern(),
            "examples": ["500ms", "2s", "1m"],
        })
    }
}

/// A number of bytes, written as a number or with a unit (`KiB`, `MiB`, `GiB`,
/// `KB`, `MB`, `GB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let text = text.trim();
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let number: u64 = digits
            .parse()
            .map_err(|_| format!("bad size `{text}`: expected e.g. 65536, 512KiB, 64MiB"))?;
        let factor: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            other => {
                return Err(format!(
                    "bad size unit `{other}` in `{text}`: use KiB, MiB, GiB, KB, MB or GB"
                ));
            }
        };
        number
            .checked_mul(factor)
            .map(ByteSize)
            .ok_or_else(|| format!("size `{text}` is too large"))
    }
}

/// The units [`ByteSize::parse`] reads, as the schema's pattern lists them.
const SIZE_UNITS: &str = "B|KiB|MiB|GiB|KB|kB|MB|GB";

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A number of bytes, or a number with a unit: KiB, MiB, GiB, KB, MB or GB.",
            "anyOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": format!(r"^\s*[0-9]+\s*(?:{SIZE_UNITS})?\s*$") },
            ],
            "examples": ["64MiB", 65536],
        })
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as 65536 or 64MiB")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(SizeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_not_negative_and_need_a_unit() {
        assert_eq!(duration::parse("500ms"), Ok(std::time::Duration::from_millis(500)));
        assert!(duration::parse("200").unwrap_err().contains("needs a unit"));
        assert!(duration::parse("-2s").unwrap_err().contains("cannot be negative"));
        assert!(duration::parse("").unwrap_err().contains("empty"));
        assert!(duration::parse("5 parsecs").unwrap_err().contains("parsecs"));
    }

    #[test]
    fn sizes_accept_binary_and_decimal_units() {
        assert_eq!(ByteSize::parse("64MiB"), Ok(ByteSize(64 << 20)));
        assert_eq!(ByteSize::parse("10 KB"), Ok(ByteSize(10_000)));
        assert_eq!(ByteSize::parse("4096"), Ok(ByteSize(4096)));
        assert!(ByteSize::parse("12XB").unwrap_err().contains("XB"));
        assert!(ByteSize::parse("MiB").is_err());
    }
}
