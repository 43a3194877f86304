//! Value types of the options, shared by the CLI, the config file and the components that
//! use them: the closed sets of choices, durations and sizes in human units.
//!
//! A leaf module: it imports no other module of the crate, so that `cli`, `config`, `agent`
//! and `police` all use these types without importing each other.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Which Redis structure carries the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Redis Stream with a consumer group (at-least-once)
    Stream,
    /// Plain Redis list (LPUSH / BLMOVE), for list-based shippers
    List,
}

/// Where an agent's events come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentSource {
    /// Realistic synthetic logs at `--rate`
    Synthetic,
    /// Lines read from standard input (JSON, logfmt or plain text), until end of input
    Stdin,
    /// Syslog messages (RFC 5424, RFC 3164) over UDP and TCP
    Syslog,
    /// Files tailed by path or glob, following rotation, with checkpoints
    File,
    /// HTTP `POST /ingest` with NDJSON or a JSON array
    Http,
}

/// Where a file never seen before is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadFrom {
    /// The first line
    Start,
    /// Only lines written after the agent found the file
    End,
}

/// What to do with a batch when the spool is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Sources wait until replay frees room (backpressure)
    Block,
    /// The batch is dropped, counted and logged
    #[value(name = "drop_newest")]
    DropNewest,
}

/// Parses `500ms`, `30s`, `5m`, `1h 30m`, `1d` (humantime); a bare number is in `bare_unit`
/// (the unit of the option's older `_ms` / `_s` spelling).
fn parse_duration(text: &str, bare_unit: Duration) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(count) = text.parse::<u64>() {
        return bare_unit
            .checked_mul(u32::try_from(count).map_err(|_| format!("{text} is too large"))?)
            .ok_or_else(|| format!("{text} is too large"));
    }
    humantime::parse_duration(text)
        .map_err(|error| format!("{text:?} is not a duration like 500ms, 30s or 5m: {error}"))
}

macro_rules! duration_type {
    ($name:ident, $bare_unit:expr, $bare_name:literal) => {
        #[doc = concat!("A duration in human units (`500ms`, `30s`, `5m`); a bare number is in ", $bare_name, ".")]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
        pub struct $name(pub Duration);

        impl FromStr for $name {
            type Err = String;
            fn from_str(text: &str) -> Result<Self, String> {
                parse_duration(text, $bare_unit).map($name)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(formatter, "{}", humantime::format_duration(self.0))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&format!("{}ms", self.0.as_millis()))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                match NumberOrText::deserialize(deserializer)? {
                    NumberOrText::Number(count) => parse_duration(&count.to_string(), $bare_unit),
                    NumberOrText::Text(text) => parse_duration(&text, $bare_unit),
                }
                .map($name)
                .map_err(serde::de::Error::custom)
            }
        }
    };
}

duration_type!(DurationMs, Duration::from_millis(1), "milliseconds");
duration_type!(DurationS, Duration::from_secs(1), "seconds");

/// A size in bytes, written `65536`, `64KiB`, `10MiB`, `1GiB` (or `1GB` = 10⁹ bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Ok(bytes) = text.parse::<u64>() {
            return Ok(Size(bytes));
        }
        text.parse::<bytesize::ByteSize>()
            .map(|size| Size(size.as_u64()))
            .map_err(|error| format!("{text:?} is not a size like 65536, 64KiB or 1GiB: {error}"))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", bytesize::ByteSize(self.0).display().iec_short())
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match NumberOrText::deserialize(deserializer)? {
            NumberOrText::Number(bytes) => Ok(Size(bytes)),
            NumberOrText::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrText {
    Number(u64),
    Text(String),
}

/// `key = "a"` or `key = ["a", "b"]` in the config file; a list on the command line.
pub fn one_or_many<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany<T> {
        One(T),
        Many(Vec<T>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(value) => vec![value],
        OneOrMany::Many(values) => values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_human_units_and_bare_numbers_in_the_old_unit() {
        assert_eq!("500ms".parse::<DurationMs>().unwrap().0, Duration::from_millis(500));
        assert_eq!("5m".parse::<DurationMs>().unwrap().0, Duration::from_secs(300));
        assert_eq!("1500".parse::<DurationMs>().unwrap().0, Duration::from_millis(1500));
        assert_eq!("90".parse::<DurationS>().unwrap().0, Duration::from_secs(90));
        assert_eq!("1d".parse::<DurationS>().unwrap().0, Duration::from_secs(86_400));
        assert!("soon".parse::<DurationMs>().unwrap_err().contains("not a duration"));
        assert!("18446744073709551615".parse::<DurationMs>().is_err());
        let from_file: DurationMs = serde_json::from_str("2500").unwrap();
        assert_eq!(from_file.0, Duration::from_millis(2500));
        let round_trip: DurationMs = serde_json::from_value(serde_json::to_value(from_file).unwrap()).unwrap();
        assert_eq!(round_trip, from_file);
    }

    #[test]
    fn sizes_read_binary_and_decimal_units() {
        assert_eq!("64KiB".parse::<Size>().unwrap().0, 65_536);
        assert_eq!("1GiB".parse::<Size>().unwrap().0, 1 << 30);
        assert_eq!("1GB".parse::<Size>().unwrap().0, 1_000_000_000);
        assert_eq!("4096".parse::<Size>().unwrap().0, 4096);
        assert!("lots".parse::<Size>().is_err());
        assert_eq!(serde_json::from_str::<Size>("\"10MiB\"").unwrap().0, 10 << 20);
    }
}
