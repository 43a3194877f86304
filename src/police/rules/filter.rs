//! Compiled event filters: which events a rule looks at.
//!
//! Invariants:
//! - a filter is a closed tree compiled once at load (regexes included); matching
//!   allocates nothing
//! - an empty filter ([`Filter::All`] of nothing) matches every event
//! - a condition on a missing extra field is false (`not` of it is true)

use regex::Regex;

use super::field::{EventFields, Field};
use crate::event::Level;

#[derive(Debug, Clone)]
pub enum Filter {
    /// Every part holds (the keys of one filter table, or `all = [...]`).
    All(Vec<Filter>),
    /// At least one part holds.
    Any(Vec<Filter>),
    Not(Box<Filter>),
    /// `level = "ERROR"`: the event's level is at least this.
    MinLevel(Level),
    Equals(Field, String),
    /// Sorted, for a binary search.
    In(Field, Vec<String>),
    Regex(Field, Regex),
}

impl Filter {
    pub fn matches<E: EventFields>(&self, event: &E) -> bool {
        match self {
            Filter::All(parts) => parts.iter().all(|part| part.matches(event)),
            Filter::Any(parts) => parts.iter().any(|part| part.matches(event)),
            Filter::Not(part) => !part.matches(event),
            Filter::MinLevel(level) => event.level() >= *level,
            Filter::Equals(field, wanted) => event.value(field) == Some(wanted.as_str()),
            Filter::In(field, sorted) => event.value(field).is_some_and(|value| {
                sorted
                    .binary_search_by(|candidate| candidate.as_str().cmp(value))
                    .is_ok()
            }),
            Filter::Regex(field, regex) => event.value(field).is_some_and(|value| regex.is_match(value)),
        }
    }

    /// The lowest level an event matching this filter can have: events below it need not
    /// be decoded. Conservative: `Level::Unknown` (every event) where a bound is unknown.
    pub fn lowest_level(&self) -> Level {
        match self {
            Filter::MinLevel(level) => *level,
            Filter::All(parts) => parts.iter().map(Filter::lowest_level).max().unwrap_or(Level::Unknown),
            // An empty `any` matches nothing; Emergency is then a safe bound.
            Filter::Any(parts) => parts.iter().map(Filter::lowest_level).min().unwrap_or(Level::Emergency),
            Filter::Not(_) | Filter::Equals(..) | Filter::In(..) | Filter::Regex(..) => Level::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::LogEvent;

    fn event(level: Level, service: &str, message: &str) -> LogEvent {
        LogEvent {
            id: "a:1:0".into(),
            timestamp: "2026-12-01T12:00:00Z".into(),
            level,
            service: service.into(),
            host: "web-1".into(),
            message: message.into(),
            extra: [("log.level".to_string(), "error".to_string())].into(),
        }
    }

    #[test]
    fn combinators_and_conditions() {
        let filter = Filter::All(vec![
            Filter::MinLevel(Level::Error),
            Filter::Any(vec![
                Filter::Equals(Field::Service, "api".into()),
                Filter::In(Field::Service, vec!["db".into(), "web".into()]),
            ]),
            Filter::Not(Box::new(Filter::Regex(Field::Message, Regex::new("^ok").unwrap()))),
        ]);
        assert!(filter.matches(&event(Level::Error, "api", "boom")));
        assert!(filter.matches(&event(Level::Critical, "web", "boom")));
        assert!(!filter.matches(&event(Level::Warning, "api", "boom")));
        assert!(!filter.matches(&event(Level::Error, "batch", "boom")));
        assert!(!filter.matches(&event(Level::Error, "api", "ok then")));
        assert_eq!(filter.lowest_level(), Level::Error);
        assert!(Filter::All(vec![]).matches(&event(Level::Unknown, "x", "")));
        assert_eq!(Filter::All(vec![]).lowest_level(), Level::Unknown);
    }

    #[test]
    fn extra_fields_and_missing_ones() {
        let log_level = Filter::Equals(Field::Extra("log.level".into()), "error".into());
        assert!(log_level.matches(&event(Level::Info, "api", "")));
        let missing = Filter::Regex(Field::Extra("zone".into()), Regex::new(".*").unwrap());
        assert!(!missing.matches(&event(Level::Info, "api", "")));
        assert!(Filter::Not(Box::new(missing)).matches(&event(Level::Info, "api", "")));
        let any = Filter::Any(vec![
            Filter::MinLevel(Level::Critical),
            Filter::MinLevel(Level::Warning),
        ]);
        assert_eq!(any.lowest_level(), Level::Warning);
    }
}
