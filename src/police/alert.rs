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

    /// `[ALERT] CRITICAL from <service>@<host> at <ts>: <message> (alert <id>)`
    pub fn console_line(&self) -> String {
        let event = &self.event;
        format!(
            "[ALERT] {} from {}@{} at {}: {} (alert {})",
            event.level, event.service, event.host, event.timestamp, event.message, self.alert_id
        )
    }
}
