//! What `tail` prints: where it starts (`--from`) and which records pass its filters.

use std::str::FromStr;
use std::time::Duration;

use crate::event::{Level, LogEvent};
use crate::police::alert::Alert;

/// Where `tail` starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// `$`: only what arrives from now on.
    Newest,
    /// An entry id, inclusive (`0` is the whole stream).
    Id { millis: u64, sequence: u64 },
    /// `-5m`: entries stamped at most this long ago by Redis's clock.
    Ago(Duration),
}

impl FromStr for StartAt {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if text == "$" {
            return Ok(StartAt::Newest);
        }
        if let Some(back) = text.strip_prefix('-') {
            return humantime::parse_duration(back)
                .map(StartAt::Ago)
                .map_err(|error| format!("{text:?} is not a time back from now like -5m: {error}"));
        }
        let (millis_text, sequence_text) = text.split_once('-').unwrap_or((text, "0"));
        match (millis_text.parse(), sequence_text.parse()) {
            (Ok(millis), Ok(sequence)) => Ok(StartAt::Id { millis, sequence }),
            _ => Err(format!(
                "{text:?} is neither $, an entry id (1700000000000-0) nor a time back (-5m)"
            )),
        }
    }
}

impl StartAt {
    /// The id XREAD reads after (it is exclusive) to start at `millis-sequence` inclusive.
    pub fn id_before(millis: u64, sequence: u64) -> String {
        match (millis, sequence) {
            (0, 0) => "0-0".into(),
            (millis, 0) => format!("{}-{}", millis - 1, u64::MAX),
            (millis, sequence) => format!("{millis}-{}", sequence - 1),
        }
    }
}

/// `--level`: a comparison with one level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LevelFilter {
    pub comparison: Comparison,
    pub level: Level,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    AtLeast,
    Above,
    AtMost,
    Below,
    Exactly,
}

impl FromStr for LevelFilter {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        // Two-character operators first, so that `>=` is not read as `>` and `=…`.
        let operators = [
            (">=", Comparison::AtLeast),
            ("<=", Comparison::AtMost),
            (">", Comparison::Above),
            ("<", Comparison::Below),
            ("=", Comparison::Exactly),
        ];
        let (comparison, level_text) = operators
            .iter()
            .find_map(|(operator, comparison)| text.strip_prefix(operator).map(|rest| (*comparison, rest)))
            .unwrap_or((Comparison::AtLeast, text));
        let level = level_text.trim().parse::<Level>().map_err(|error| error.to_string())?;
        Ok(LevelFilter { comparison, level })
    }
}

impl LevelFilter {
    pub fn accepts(&self, level: Level) -> bool {
        match self.comparison {
            Comparison::AtLeast => level >= self.level,
            Comparison::Above => level > self.level,
            Comparison::AtMost => level <= self.level,
            Comparison::Below => level < self.level,
            Comparison::Exactly => level == self.level,
        }
    }
}

/// Every filter of one `tail` run; an empty list accepts everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub level: Option<LevelFilter>,
    pub services: Vec<String>,
    pub hosts: Vec<String>,
    pub rules: Vec<String>,
    pub grep: Option<regex::Regex>,
}

impl Filter {
    /// Whether any filter other than `--grep` is set: those read fields that only events
    /// and alerts have.
    pub fn has_field_filters(&self) -> bool {
        self.level.is_some() || !self.services.is_empty() || !self.hosts.is_empty() || !self.rules.is_empty()
    }

    pub fn accepts_event(&self, event: &LogEvent) -> bool {
        self.level.is_none_or(|filter| filter.accepts(event.level))
            && one_of(&self.services, &event.service)
            && one_of(&self.hosts, &event.host)
            && self
                .grep
                .as_ref()
                .is_none_or(|pattern| pattern.is_match(&event.message))
    }

    /// `record_json` is the record as stored, which `--grep` searches.
    pub fn accepts_alert(&self, alert: &Alert, record_json: &str) -> bool {
        let event = alert.event.as_ref();
        // A severity that is no level (a rule may name any) passes only when no level is asked.
        let level_passes = self.level.is_none_or(|filter| {
            alert
                .severity
                .parse::<Level>()
                .is_ok_and(|severity| filter.accepts(severity))
        });
        level_passes
            && one_of(&self.rules, &alert.rule)
            && (self.services.is_empty() || event.is_some_and(|event| one_of(&self.services, &event.service)))
            && (self.hosts.is_empty() || event.is_some_and(|event| one_of(&self.hosts, &event.host)))
            && self.grep.as_ref().is_none_or(|pattern| pattern.is_match(record_json))
    }

    /// Dead letters and undecodable entries: only `--grep` applies, to every field value.
    pub fn accepts_raw(&self, texts: &[&str]) -> bool {
        if self.has_field_filters() {
            return false;
        }
        self.grep
            .as_ref()
            .is_none_or(|pattern| texts.iter().any(|text| pattern.is_match(text)))
    }
}

fn one_of(wanted: &[String], value: &str) -> bool {
    wanted.is_empty() || wanted.iter().any(|name| name == value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_points_parse() {
        assert_eq!("$".parse::<StartAt>().unwrap(), StartAt::Newest);
        assert_eq!("0".parse::<StartAt>().unwrap(), StartAt::Id { millis: 0, sequence: 0 });
        assert_eq!(
            "1700000000000-3".parse::<StartAt>().unwrap(),
            StartAt::Id {
                millis: 1_700_000_000_000,
                sequence: 3
            }
        );
        assert_eq!(
            "-5m".parse::<StartAt>().unwrap(),
            StartAt::Ago(Duration::from_secs(300))
        );
        assert!("yesterday".parse::<StartAt>().is_err());
        assert!("-soon".parse::<StartAt>().is_err());
    }

    #[test]
    fn reading_after_the_previous_id_includes_the_start() {
        assert_eq!(StartAt::id_before(0, 0), "0-0");
        assert_eq!(StartAt::id_before(10, 0), format!("9-{}", u64::MAX));
        assert_eq!(StartAt::id_before(10, 5), "10-4");
    }

    #[test]
    fn level_filters_compare() {
        let at_least_error: LevelFilter = ">=ERROR".parse().unwrap();
        assert!(at_least_error.accepts(Level::Critical));
        assert!(at_least_error.accepts(Level::Error));
        assert!(!at_least_error.accepts(Level::Warning));
        let bare: LevelFilter = "error".parse().unwrap();
        assert_eq!(bare, at_least_error);
        let below: LevelFilter = "<WARNING".parse().unwrap();
        assert!(below.accepts(Level::Info) && !below.accepts(Level::Warning));
        let exactly: LevelFilter = "=INFO".parse().unwrap();
        assert!(exactly.accepts(Level::Info) && !exactly.accepts(Level::Error));
        assert!(">=LOUD".parse::<LevelFilter>().is_err());
    }
}
