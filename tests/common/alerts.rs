//! A sample alert record for the sink tests: every field set, so a test changes only what
//! it is about (`Alert { group: …, ..sample_alert(…) }`).
#![allow(dead_code)]

use std::collections::BTreeMap;

use logsentinel::police::alert::{Alert, AlertStatus};

/// An alert of `rule` (`rule_type`) routed to `sink`: severity `critical`, label
/// `team=core`, count 1, no group, no event, fixed times of 2026-12-01.
pub fn sample_alert(alert_id: &str, rule: &str, rule_type: &str, status: AlertStatus, sink: &str) -> Alert {
    Alert {
        alert_id: alert_id.into(),
        rule: rule.into(),
        rule_type: rule_type.into(),
        status,
        severity: "critical".into(),
        group: BTreeMap::new(),
        labels: BTreeMap::from([("team".into(), "core".into())]),
        annotations: BTreeMap::new(),
        count: 1,
        first_event_time: "2026-12-01T12:00:00Z".into(),
        last_event_time: "2026-12-01T12:00:00Z".into(),
        raised_at: "2026-12-01T12:00:00Z".into(),
        sinks: vec![sink.into()],
        event: None,
    }
}
