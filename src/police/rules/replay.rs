//! `logsentinel rules check` and `rules test`: a rule file checked, or sample events
//! replayed through the reference model ([`super::model`]) offline, no Redis.
//!
//! The replay's wall clock is event time: before each event the clock work runs at the
//! newest event time seen so far, and once more at the end of the input as if the clock
//! stood at the newest event time + the longest window + `max_lateness`, so that every
//! window of the sample closes (flatline, spike down, resolves). Each event is one input
//! item, as a v1 entry of one event. The clock starts at the first event's window: no
//! window before the sample is checked.
//!
//! Future timestamps: the police places an event stamped more than
//! [`window::MAX_FUTURE_MS`] after its clock (Redis's time) at its clock. Offline there is
//! no such clock between events: the replay's clock stands still over a quiet stretch of
//! the sample, so comparing with it would move every event after a gap of 5 min. The
//! replay therefore compares with the police's clock of the run (`--now`, default the wall
//! clock), or with the replay's clock where that is later, and places an event beyond it
//! at the replay's clock (the newest event time so far; before the first placed event, the
//! first time of the sample that is not in the future), as the police places it at its
//! clock. So one line stamped 2099 neither moves the clock nor makes the lines after it
//! late. Each such event is named in [`Replay::future_events`]. An unparsable timestamp is
//! placed at the same time, as the police places it at its clock too.
//!
//! A sample line that is not an event is decoded as the police decodes a v1 entry, so its
//! reason is the one the police would dead-letter it with; it is reported as
//! `SAMPLE:LINE: reason` and the replay goes on without it, as the police would (the caller
//! decides whether bad lines fail the run: `rules test --strict`).

use std::path::Path;

use super::model::Model;
use super::{RuleFileError, RuleKind, RuleSet, window};
use crate::event::{Level, LogEvent};
use crate::police::alert::{Alert, AlertStatus};

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
}

impl ReplayError {
    /// Every problem, one per line.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ReplayError::Rules(error) => error.lines(),
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
    /// Sample lines that are not events, as `SAMPLE:LINE: reason`, in file order.
    pub bad_lines: Vec<String>,
    /// Events stamped too far in the future, or whose timestamp cannot be read, and where
    /// they were placed (see the module doc), one line each, in sample order.
    pub future_events: Vec<String>,
}

impl Replay {
    /// `replayed 12 events: 3 alerts fired, 1 resolved, 0 late matches, 0 bad lines`
    pub fn summary(&self) -> String {
        let firing = self
            .alerts
            .iter()
            .filter(|alert| alert.status == AlertStatus::Firing)
            .count();
        let resolved = self.alerts.len() - firing;
        format!(
            "replayed {} events: {firing} alerts fired, {resolved} resolved, {} late matches, {} bad lines",
            self.events,
            self.late_matches,
            self.bad_lines.len()
        )
    }
}

/// Replays the NDJSON events at `events_path` through the rules at `rules_path`;
/// `police_clock_ms` is the police's clock the future clamp compares with (see the module
/// doc).
pub fn test(rules_path: &Path, events_path: &Path, police_clock_ms: i64) -> Result<Replay, ReplayError> {
    let rules = RuleSet::load(rules_path)?;
    let text = std::fs::read_to_string(events_path).map_err(|source| ReplayError::ReadEvents {
        path: events_path.display().to_string(),
        source,
    })?;
    let (events, bad_lines) = parse_events(&events_path.display().to_string(), &text);
    let mut replayed = replay(&rules, events, police_clock_ms);
    replayed.bad_lines = bad_lines;
    Ok(replayed)
}

/// One [`LogEvent`] per non-empty line, decoded as the police decodes a v1 entry of one
/// event; every other line is named with the police's reason (`SAMPLE:LINE: reason`).
fn parse_events(origin: &str, text: &str) -> (Vec<LogEvent>, Vec<String>) {
    let mut events = Vec::new();
    let mut bad_lines = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let line_number = index + 1;
        let fields = [
            ("v".to_string(), crate::event::ENCODING_VERSION.to_string()),
            ("event".to_string(), line.to_string()),
        ];
        let decoded = crate::event::decode_entry(&format!("line-{line_number}"), &fields, Level::Unknown);
        events.extend(decoded.events);
        for rejected in decoded.rejected {
            bad_lines.push(format!("{origin}:{line_number}: {}", rejected.reason));
        }
    }
    (events, bad_lines)
}

/// Replays `events` in order, the wall clock following event time, an event stamped more
/// than 5 min after `police_clock_ms` placed as the module doc says.
pub fn replay(rules: &RuleSet, events: Vec<LogEvent>, police_clock_ms: i64) -> Replay {
    let mut model = Model::new(rules);
    let mut alerts = Vec::new();
    let mut future_events = Vec::new();
    let believable = |event_ms: i64, reference_ms: i64| event_ms <= reference_ms.saturating_add(window::MAX_FUTURE_MS);
    // Where an event is placed while the replay has no clock yet (the first lines stamped in
    // the future or unparsable): the sample's first time that is not in the future.
    let first_believable_ms = events
        .iter()
        .filter_map(|event| window::parse_ms(&event.timestamp))
        .find(|event_ms| believable(*event_ms, police_clock_ms));
    let mut clock_ms: Option<i64> = None;
    let event_count = events.len() as u64;
    for event in events {
        let placed_ms = clock_ms.or(first_believable_ms).unwrap_or(police_clock_ms);
        // At least `placed_ms`, which is `now_ms` below when the event is placed: `evaluate`
        // compares the timestamp with `now_ms` + 5 min, so it places each event where this
        // loop does (the debug_assert below).
        let reference_ms = police_clock_ms.max(placed_ms);
        let event_ms = match window::parse_ms(&event.timestamp) {
            Some(stamped_ms) if believable(stamped_ms, reference_ms) => stamped_ms,
            Some(_) => {
                future_events.push(format!(
                    "event {}: timestamp {} is more than 5 min after the clock ({}): replayed at {}, as the police \
                     places it at its clock",
                    event.id,
                    event.timestamp,
                    window::rfc3339(reference_ms),
                    window::rfc3339(placed_ms)
                ));
                placed_ms
            }
            None => {
                future_events.push(format!(
                    "event {}: timestamp {:?} cannot be read: replayed at {}, as the police places it at its clock",
                    event.id,
                    event.timestamp,
                    window::rfc3339(placed_ms)
                ));
                placed_ms
            }
        };
        let now_ms = match clock_ms {
            None => {
                model.start_clock(event_ms);
                event_ms
            }
            Some(clock) => clock.max(event_ms),
        };
        debug_assert!(
            window::event_ms(&event.timestamp, now_ms) == event_ms,
            "the rules place the event where the replay did"
        );
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
        bad_lines: Vec::new(),
        future_events,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_sample_lines_are_all_named_and_the_rest_is_kept() {
        let good = r#"{"id":"a:1:0","timestamp":"2026-12-01T12:00:00Z","level":"ERROR","service":"api","host":"h","message":"m"}"#;
        let text = format!("{{\"id\":\"a\"}}\n\nnot json\n{good}\n{{\"level\":\"LOUD\"}}\n");
        let (events, lines) = parse_events("s.ndjson", &text);
        assert_eq!(events.len(), 1, "the good line is kept");
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].starts_with("s.ndjson:1: "), "{lines:?}");
        assert!(lines[1].starts_with("s.ndjson:3: "), "{lines:?}");
        assert!(lines[2].starts_with("s.ndjson:5: "), "{lines:?}");
        // The reason is the one a police with the same rules (no level filter) dead-letters
        // the same entry with.
        let fields = [
            ("v".to_string(), "1".to_string()),
            ("event".to_string(), "not json".to_string()),
        ];
        let police_reason = crate::event::decode_entry("1-0", &fields, Level::Unknown).rejected[0]
            .reason
            .clone();
        assert_eq!(lines[1], format!("s.ndjson:3: {police_reason}"));
    }

    #[test]
    fn future_and_unparsable_times_are_placed_at_the_replay_clock() {
        let rules = super::super::file::compile(
            "r.toml",
            "[[rules]]\nname = \"f\"\ntype = \"frequency\"\nthreshold = 3\nwindow = \"1m\"\n",
        )
        .unwrap();
        let event = |index: usize, timestamp: &str| LogEvent {
            id: format!("a:1:{index}"),
            timestamp: timestamp.into(),
            level: Level::Error,
            service: "api".into(),
            host: "h".into(),
            message: "m".into(),
            extra: Default::default(),
        };
        let police_clock_ms = window::parse_ms("2026-12-01T13:00:00Z").unwrap();
        // The first two lines have no time to place them at but the sample's first on-time one.
        let events = vec![
            event(0, "2099-01-01T00:00:00Z"),
            event(1, "not a time"),
            event(2, "2026-12-01T12:00:10Z"),
            event(3, "2026-12-01T13:04:00Z"), // within 5 min of the police's clock: on time
            event(4, "2026-12-01T13:09:00Z"), // within 5 min of the replay's clock (13:04)
            event(5, "2026-12-01T13:20:00Z"),
        ];
        let replayed = replay(&rules, events, police_clock_ms);
        assert_eq!(replayed.late_matches, 0);
        assert_eq!(replayed.future_events.len(), 3, "{:?}", replayed.future_events);
        assert!(replayed.future_events[0].starts_with("event a:1:0: "));
        assert!(
            replayed.future_events[0]
                .ends_with("replayed at 2026-12-01T12:00:10.000Z, as the police places it at its clock")
        );
        assert_eq!(
            replayed.future_events[1],
            "event a:1:1: timestamp \"not a time\" cannot be read: replayed at 2026-12-01T12:00:10.000Z, as the \
             police places it at its clock"
        );
        assert!(replayed.future_events[2].starts_with("event a:1:5: "));
        assert!(replayed.future_events[2].contains("replayed at 2026-12-01T13:09:00.000Z"));
        // Lines 0 to 2 count in 12:00, the window of the first on-time time, and fire there.
        let twelve_ms = window::parse_ms("2026-12-01T12:00:00Z").unwrap();
        let firing: Vec<(&str, u64)> = replayed
            .alerts
            .iter()
            .filter(|alert| alert.status == AlertStatus::Firing)
            .map(|alert| (alert.alert_id.as_str(), alert.count))
            .collect();
        assert_eq!(firing.len(), 1, "{firing:?}");
        assert!(firing[0].0.ends_with(&format!("/{twelve_ms}")), "{firing:?}");
        assert_eq!(firing[0].1, 3, "{firing:?}");
    }

    #[test]
    fn an_empty_sample_replays_to_nothing() {
        let rules = RuleSet::builtin(crate::event::Level::Critical, Vec::new());
        let replayed = replay(&rules, Vec::new(), window::now_ms());
        assert!(replayed.alerts.is_empty());
        assert_eq!(
            replayed.summary(),
            "replayed 0 events: 0 alerts fired, 0 resolved, 0 late matches, 0 bad lines"
        );
    }
}
