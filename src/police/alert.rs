//! Alerts and their stable ids.

use serde::Serialize;

use super::rules::Rule;
use crate::event::LogEvent;

/// An alert raised by a rule for one event.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    /// `<event id>/<rule name>`: the same event and rule always give the same id, so a
    /// redelivered or resent event is recognised as a duplicate.
    pub alert_id: String,
    pub rule: String,
    pub raised_at: String,
    pub event: LogEvent,
}

impl Alert {
    pub fn raise(rule: &Rule, event: LogEvent) -> Alert {
        Alert {
            alert_id: format!("{}/{}", event.id, rule.name()),
            rule: rule.name().to_string(),
            raised_at: crate::event::now_rfc3339(),
            event,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("serialising an Alert into memory cannot fail")
    }

    /// `[ALERT] CRITICAL from <service>@<host> at <ts>: <message> (alert <id>)`, always one
    /// line: every field comes from the logs, so control characters are escaped (a message
    /// holding `\n[ALERT] …` would otherwise print a fake alert, an ANSI escape rewrite the
    /// terminal).
    pub fn console_line(&self) -> String {
        let event = &self.event;
        format!(
            "[ALERT] {} from {}@{} at {}: {} (alert {})",
            event.level,
            Printable(&event.service),
            Printable(&event.host),
            Printable(&event.timestamp),
            Printable(&event.message),
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
        Alert {
            alert_id: "a:1:0/level>=CRITICAL".into(),
            rule: "level>=CRITICAL".into(),
            raised_at: "2026-11-27T10:00:00Z".into(),
            event: LogEvent {
                id: "a:1:0".into(),
                timestamp: "2026-11-27T10:00:00Z".into(),
                level: Level::Critical,
                service: service.into(),
                host: "web-1".into(),
                message: message.into(),
                extra: Default::default(),
            },
        }
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
