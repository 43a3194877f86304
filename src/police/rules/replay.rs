//! `logsentinel rules check` and `rules test`: a rule file checked, or sample events
//! replayed through the reference model ([`super::model`]) offline, no Redis.
//!
//! The replay's wall clock is event time: before each event the clock work runs at the
//! newest event time seen so far, and once more at the end of the input as if the clock
//! stood at the newest event time + the longest window + `max_lateness`, so that every
//! window of the sample closes (flatline, spike down, resolves). Each event is one input
//! item, as a v1 entry of one event. The clock starts at the first event's window: no
//! window before the sample is checked.

use std::path::Path;

use super::model::Model;
use super::{RuleFileError, RuleKind, RuleSet, window};
use crate::event::LogEvent;
use crate::police::alert::{Alert, AlertStatus};

/// Sample lines that are not events, listed at most this many times (then a count).
const MAX_LISTED_BAD_LINES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0}")]
    Rules(#[from] RuleFileError),
    #[error("{path}: cannot read the events: {source}")]
    ReadEvents {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// One `SAMPLE:LINE: problem` per bad line.
    #[error("{}", .0.join("\n"))]
    BadEvents(Vec<String>),
}

impl ReplayError {
    /// Every problem, one per line.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ReplayError::Rules(error) => error.lines(),
            ReplayError::BadEvents(lines) => lines.clone(),
            other => vec![other.to_string()],
        }
    }
}

/// The one-line summary of a valid rule file.
pub fn check(path: &Path) -> Result<String, RuleFileError> {
    let rules = RuleSet::load(path)?;
    let mut per_type = [("any", 0usize), ("frequency", 0), ("spike", 0), ("flatline", 0)];
    for rule in rules.rules() {
        if let Some((_, count)) = per_type.iter_mut().find(|(name, _)| *name == rule.kind.type_name()) {
            *count += 1;
        }
    }
    let types: Vec<String> = per_type
        .iter()
        .filter(|(_, count)| *count > 0)
        .map(|(name, count)| format!("{count} {name}"))
        .collect();
    Ok(format!(
        "{}: ok, {} rules ({}), {} sinks",
        path.display(),
        rules.rules().len(),
        if types.is_empty() {
            "none".to_string()
        } else {
            types.join(", ")
        },
        rules.sinks().len()
    ))
}

/// What a replay produced.
#[derive(Debug)]
pub struct Replay {
    /// Records written to the outbox, in order (firing and resolved).
    pub alerts: Vec<Alert>,
    pub events: u64,
    pub late_matches: u64,
}

impl Replay {
    /// `replayed 12 events: 3 alerts fired, 1 resolved, 0 late matches`
    pub fn summary(&self) -> String {
        let firing = self
            .alerts
            .iter()
            .filter(|alert| alert.status == AlertStatus::Firing)
            .count();
        let resolved = self.alerts.len() - firing;
        format!(
            "replayed {} events: {firing} alerts fired, {resolved} resolved, {} late matches",
            self.events, self.late_matches
        )
    }
}

/// Replays the NDJSON events at `events_path` through the rules at `rules_path`.
pub fn test(rules_path: &Path, events_path: &Path) -> Result<Replay, ReplayError> {
    let rules = RuleSet::load(rules_path)?;
    let text = std::fs::read_to_string(events_path).map_err(|source| ReplayError::ReadEvents {
        path: events_path.display().to_string(),
        source,
    })?;
    let events = parse_events(&events_path.display().to_string(), &text)?;
    Ok(replay(&rules, events))
}

/// One [`LogEvent`] per non-empty line; every bad line is reported.
fn parse_events(origin: &str, text: &str) -> Result<Vec<LogEvent>, ReplayError> {
    let mut events = Vec::new();
    let mut bad_lines = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<LogEvent>(line) {
            Ok(event) => events.push(event),
            Err(error) => bad_lines.push(format!("{origin}:{}: not an event: {error}", index + 1)),
        }
    }
    if bad_lines.is_empty() {
        return Ok(events);
    }
    if bad_lines.len() > MAX_LISTED_BAD_LINES {
        let more = bad_lines.len() - MAX_LISTED_BAD_LINES;
        bad_lines.truncate(MAX_LISTED_BAD_LINES);
        bad_lines.push(format!("{origin}: and {more} more lines that are not events"));
    }
    Err(ReplayError::BadEvents(bad_lines))
}

/// Replays `events` in order, the wall clock following event time (see the module doc).
pub fn replay(rules: &RuleSet, events: Vec<LogEvent>) -> Replay {
    let mut model = Model::new(rules);
    let mut alerts = Vec::new();
    let mut clock_ms: Option<i64> = None;
    let event_count = events.len() as u64;
    for event in events {
        // An unparsable timestamp is "now": the replay's clock (0 before any time is known).
        let event_ms = window::parse_ms(&event.timestamp).unwrap_or(clock_ms.unwrap_or(0));
        let now_ms = match clock_ms {
            None => {
                model.start_clock(event_ms);
                event_ms
            }
            Some(clock) => clock.max(event_ms),
        };
        clock_ms = Some(now_ms);
        alerts.extend(model.tick(now_ms));
        alerts.extend(model.apply(rules.evaluate(vec![event], now_ms), now_ms));
    }
    if let Some(clock) = clock_ms {
        let longest_window_ms = rules
            .rules()
            .iter()
            .filter_map(|rule| match rule.kind {
                RuleKind::Any => None,
                _ => rule.kind.window_ms(),
            })
            .max()
            .unwrap_or(0);
        let end_ms = clock + longest_window_ms as i64 + rules.max_lateness_ms() as i64;
        alerts.extend(model.tick(end_ms));
    }
    Replay {
        alerts,
        events: event_count,
        late_matches: model.late,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_sample_lines_are_all_named() {
        let text = "{\"id\":\"a\"}\n\nnot json\n";
        let Err(ReplayError::BadEvents(lines)) = parse_events("s.ndjson", text) else {
            panic!("bad lines must be refused");
        };
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].starts_with("s.ndjson:1: not an event: missing field"),
            "{lines:?}"
        );
        assert!(lines[1].starts_with("s.ndjson:3: not an event"), "{lines:?}");
    }

    #[test]
    fn an_empty_sample_replays_to_nothing() {
        let rules = RuleSet::builtin(crate::event::Level::Critical, Vec::new());
        let replayed = replay(&rules, Vec::new());
        assert!(replayed.alerts.is_empty());
        assert_eq!(
            replayed.summary(),
            "replayed 0 events: 0 alerts fired, 0 resolved, 0 late matches"
        );
    }
}
