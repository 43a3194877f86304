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

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// `2026-01-01T00:00:00Z  INFO message key=value`, for people
    #[default]
    Text,
    /// One JSON object per line, every name at the top level (`timestamp`, `level`,
    /// `message` and the fields the text format prints as `key=value`), for log collectors
    Json,
}

impl LogFormat {
    /// The value of `--log-format` (and `LOGSENTINEL_LOG_FORMAT`) that selects this format.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
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
        return Ok(bare_count(count, bare_unit));
    }
    // Whole milliseconds, as the merge writes them, however many (humantime stops at about
    // 584 years; the range check that follows names the option).
    if let Some(millis) = text.strip_suffix("ms").and_then(|count| count.parse::<u64>().ok()) {
        return Ok(Duration::from_millis(millis));
    }
    humantime::parse_duration(text)
        .map_err(|error| format!("{text:?} is not a duration like 500ms, 30s or 5m: {error}"))
}

/// `count` of `bare_unit` (a millisecond or a second), saturating instead of overflowing:
/// the range check that follows names the option.
fn bare_count(count: u64, bare_unit: Duration) -> Duration {
    if bare_unit >= Duration::from_secs(1) {
        Duration::from_secs(count.saturating_mul(bare_unit.as_secs()))
    } else {
        Duration::from_millis(count.saturating_mul(bare_unit.as_millis() as u64))
    }
}

macro_rules! duration_type {
    ($name:ident, $bare_unit:expr, $bare_name:literal) => {
        #[doc = concat!("A duration in human units (`500ms`, `30s`, `5m`); a bare number is in ", $bare_name, ".")]
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
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
            // Lossless for every value the parser gives, so that the merge of flags and file
            // (a round trip through serde) keeps what clap read.
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let millis = u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX);
                serializer.serialize_str(&format!("{millis}ms"))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                match deserializer.deserialize_any(NumberOrText("a duration like \"30s\" or a whole number"))? {
                    NumberOrTextValue::Number(count) => Ok(bare_count(count, $bare_unit)),
                    NumberOrTextValue::Text(text) => parse_duration(&text, $bare_unit),
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
        match deserializer.deserialize_any(NumberOrText("a size like \"64KiB\" or a number of bytes"))? {
            NumberOrTextValue::Number(bytes) => Ok(Size(bytes)),
            NumberOrTextValue::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A whole number or a string, read with a message saying what was expected (an untagged
/// enum would only say that nothing matched).
struct NumberOrText(&'static str);

enum NumberOrTextValue {
    Number(u64),
    Text(String),
}

impl serde::de::Visitor<'_> for NumberOrText {
    type Value = NumberOrTextValue;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.0)
    }

    fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<NumberOrTextValue, E> {
        Ok(NumberOrTextValue::Number(value))
    }

    fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<NumberOrTextValue, E> {
        u64::try_from(value)
            .map(NumberOrTextValue::Number)
            .map_err(|_| E::custom(format!("{value} is negative; expected {}", self.0)))
    }

    fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<NumberOrTextValue, E> {
        Ok(NumberOrTextValue::Text(value.to_string()))
    }
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
    fn the_json_log_format_help_says_message_is_at_the_top_level() {
        // The subscriber flattens events (telemetry.rs): no `fields` object.
        let help = clap::ValueEnum::to_possible_value(&LogFormat::Json)
            .and_then(|value| value.get_help().map(ToString::to_string))
            .expect("the variant has a help text");
        assert!(help.contains("`message`") && help.contains("top level"), "{help}");
        assert!(!help.contains("fields."), "{help}");
    }

    #[test]
    fn durations_read_human_units_and_bare_numbers_in_the_old_unit() {
        assert_eq!("500ms".parse::<DurationMs>().unwrap().0, Duration::from_millis(500));
        assert_eq!("5m".parse::<DurationMs>().unwrap().0, Duration::from_secs(300));
        assert_eq!("1500".parse::<DurationMs>().unwrap().0, Duration::from_millis(1500));
        assert_eq!("90".parse::<DurationS>().unwrap().0, Duration::from_secs(90));
        assert_eq!("1d".parse::<DurationS>().unwrap().0, Duration::from_secs(86_400));
        assert!("soon".parse::<DurationMs>().unwrap_err().contains("not a duration"));
        let huge: DurationMs = "18446744073709551615".parse().unwrap();
        assert_eq!(
            huge.0,
            Duration::from_millis(u64::MAX),
            "saturates; the range check names the option"
        );
        let round_trip: DurationMs = serde_json::from_value(serde_json::to_value(huge).unwrap()).unwrap();
        assert_eq!(round_trip, huge, "the merge keeps huge values");
        let negative = serde_json::from_str::<DurationMs>("-5").unwrap_err().to_string();
        assert!(negative.contains("negative"), "{negative}");
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
