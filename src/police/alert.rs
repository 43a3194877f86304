//! The alert record: what the rules raise, what the outbox (the alerts stream) holds and
//! what every sink delivers. Its JSON shape is documented in `docs/ALERTING.md`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::LogEvent;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

/// One alert record. `alert_id` is stable per firing episode: a redelivered event, a second
/// police or a lease taken over produce the same id, and the idempotency guard of the
/// settle script writes it once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub alert_id: String,
    pub rule: String,
    /// Rule type: `any`, `frequency`, `spike`, `flatline`.
    #[serde(rename = "type")]
    pub rule_type: String,
    pub status: AlertStatus,
    pub severity: String,
    /// The `group_by` values (`<none>` where the event had no such field).
    #[serde(default)]
    pub group: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Matches in the episode so far (`any` without cooldown: 1).
    pub count: u64,
    pub first_event_time: String,
    pub last_event_time: String,
    /// Wall clock of the police that raised it.
    pub raised_at: String,
    /// Names of the sinks it is routed to.
    pub sinks: Vec<String>,
    /// The event that fired it; absent on records raised by the clock (flatline, spike
    /// down, resolves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<LogEvent>,
}

impl Alert {
    /// An alert for one event under an `any` rule without cooldown: id `<event id>/<rule>`,
    /// so the same event and rule always give the same id.
    pub fn for_event(rule: &str, severity: &str, sinks: &[String], event: LogEvent) -> Alert {
        Alert {
            alert_id: format!("{}/{rule}", event.id),
            rule: rule.to_string(),
            rule_type: "any".into(),
            status: AlertStatus::Firing,
            severity: severity.to_string(),
            group: BTreeMap::new(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            count: 1,
            first_event_time: event.timestamp.clone(),
            last_event_time: event.timestamp.clone(),
            raised_at: crate::event::now_rfc3339(),
            sinks: sinks.to_vec(),
            event: Some(event),
        }
    }

    /// Whether this is an alert for one event of an `any` rule without cooldown (id
    /// `<event id>/<rule>`): it has no episode in Redis, so nothing re-sends or resolves it.
    pub fn is_per_event(&self) -> bool {
        self.rule_type == "any"
            && self.event.as_ref().is_some_and(|event| {
                self.alert_id
                    .strip_prefix(event.id.as_str())
                    .and_then(|rest| rest.strip_prefix('/'))
                    == Some(self.rule.as_str())
            })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("serialising an Alert into memory cannot fail")
    }

    /// `[ALERT] CRITICAL from <service>@<host> at <ts>: <message> (alert <id>)`, always one
    /// line: every field comes from the logs, so control characters are escaped (a message
    /// holding `\n[ALERT] …` would otherwise print a fake alert, an ANSI escape rewrite the
    /// terminal).
    /// `[ALERT] CRITICAL from <service>@<host> at <ts>: <message> (alert <id>)` for an alert
    /// raised by an event, `[ALERT]`/`[RESOLVED] <severity> <rule> <group>: <summary>
    /// (alert <id>)` otherwise; always one line: every field may come from the logs, so
    /// control characters are escaped (a message holding `\n[ALERT] …` would otherwise
    /// print a fake alert, an ANSI escape rewrite the terminal).
    pub fn console_line(&self) -> String {
        let tag = match self.status {
            AlertStatus::Firing => "[ALERT]",
            AlertStatus::Resolved => "[RESOLVED]",
        };
        if let (Some(event), AlertStatus::Firing) = (&self.event, self.status) {
            return format!(
                "{tag} {} from {}@{} at {}: {} (alert {})",
                event.level,
                Printable(&event.service),
                Printable(&event.host),
                Printable(&event.timestamp),
                Printable(&event.message),
                Printable(&self.alert_id)
            );
        }
        let group = serde_json::to_string(&self.group).unwrap_or_default();
        let summary = self.annotations.get("summary").map(String::as_str).unwrap_or("");
        format!(
            "{tag} {} {} {}: {} (count {}, alert {})",
            Printable(&self.severity),
            Printable(&self.rule),
            Printable(&group),
            Printable(summary),
            self.count,
            Printable(&self.alert_id)
        )
    }
}

/// Displays a string with its control characters escaped: `\n`, `\r`, `\t`, others as
/// `\u{1b}`. Unicode line and paragraph separators are escaped too, since some terminals
/// and log viewers break lines there, and so are the bidirectional overrides, which can make
/// the line read differently from what it holds.
struct Printable<'a>(&'a str);

impl std::fmt::Display for Printable<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        for character in self.0.chars() {
            match character {
                '\n' => formatter.write_str("\\n")?,
                '\r' => formatter.write_str("\\r")?,
                '\t' => formatter.write_str("\\t")?,
                '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {
                    write!(formatter, "\\u{{{:x}}}", u32::from(character))?
                }
                other if other.is_control() => write!(formatter, "\\u{{{:x}}}", u32::from(other))?,
                other => formatter.write_char(other)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Level;

    fn alert_with(message: &str, service: &str) -> Alert {
        let event = LogEvent {
            id: "a:1:0".into(),
            timestamp: "2026-11-27T10:00:00Z".into(),
            level: Level::Critical,
            service: service.into(),
            host: "web-1".into(),
            message: message.into(),
            extra: Default::default(),
        };
        Alert::for_event("level>=CRITICAL", "critical", &[], event)
    }

    #[test]
    fn console_line_is_one_line_whatever_the_fields_hold() {
        let alert = alert_with("disk full\n[ALERT] fake\r\x1b[2J\u{2028}end", "api\tv2\u{85}");
        let line = alert.console_line();
        assert_eq!(
            line,
            "[ALERT] CRITICAL from api\\tv2\\u{85}@web-1 at 2026-11-27T10:00:00Z: \
             disk full\\n[ALERT] fake\\r\\u{1b}[2J\\u{2028}end (alert a:1:0/level>=CRITICAL)"
        );
        assert!(!line.chars().any(char::is_control), "{line:?}");
    }

    #[test]
    fn printable_text_is_unchanged() {
        let alert = alert_with("caf\u{e9} \"quoted\" C:\\path 100%", "api");
        assert!(alert.console_line().contains("caf\u{e9} \"quoted\" C:\\path 100%"));
    }
}
