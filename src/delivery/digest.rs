//! Records waiting for their sink, and how they are cut into messages: one alert per
//! message while the sink is within its rate limit; once the limit was hit, every waiting
//! record of the head's rule goes into one digest (up to the sink's per-message maximum),
//! until the backlog is gone.
//!
//! Invariants:
//! - a record leaves the queue only inside an [`Outgoing`] message, which the worker acks
//!   after delivery or dead-letters: nothing is dropped here
//! - records keep their outbox order within a rule; a digest holds records of one rule

use std::collections::VecDeque;

use super::Message;
use crate::police::alert::Alert;

/// One record of the outbox routed to this sink.
#[derive(Debug, Clone)]
pub struct Queued {
    pub entry_id: String,
    /// The record as read, for the dead letters.
    pub raw: String,
    pub alert: Alert,
}

/// Records read and not yet handed to the sink, in outbox order.
#[derive(Debug, Default)]
pub struct Waiting {
    records: VecDeque<Queued>,
}

impl Waiting {
    pub fn push(&mut self, record: Queued) {
        self.records.push_back(record);
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn entry_ids(&self) -> impl Iterator<Item = &str> {
        self.records.iter().map(|record| record.entry_id.as_str())
    }

    /// Lets go of records a peer claimed from us (see [`crate::broker::outbox::keep_pending`]).
    pub fn forget(&mut self, entry_ids: &[String]) {
        if entry_ids.is_empty() {
            return;
        }
        self.records.retain(|record| !entry_ids.contains(&record.entry_id));
    }

    /// The next message: the head record alone, or with `fold`, the head and every waiting
    /// record of the same rule, at most `max_alerts` in all. `None` when nothing waits.
    pub fn take_message(&mut self, fold: bool, max_alerts: usize) -> Option<Outgoing> {
        let head = self.records.pop_front()?;
        let mut outgoing = Outgoing::default();
        let rule = head.alert.rule.clone();
        outgoing.push(head);
        if !fold {
            return Some(outgoing);
        }
        let max_alerts = max_alerts.max(1);
        let mut kept = VecDeque::with_capacity(self.records.len());
        for record in self.records.drain(..) {
            if outgoing.len() < max_alerts && record.alert.rule == rule {
                outgoing.push(record);
            } else {
                kept.push_back(record);
            }
        }
        self.records = kept;
        Some(outgoing)
    }
}

/// Records on their way to the sink as one message (one alert, or a digest of one rule).
#[derive(Debug, Default)]
pub struct Outgoing {
    pub entry_ids: Vec<String>,
    pub raws: Vec<String>,
    pub alerts: Vec<Alert>,
}

impl Outgoing {
    fn push(&mut self, record: Queued) {
        self.entry_ids.push(record.entry_id);
        self.raws.push(record.raw);
        self.alerts.push(record.alert);
    }

    pub fn len(&self) -> usize {
        self.alerts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.alerts.is_empty()
    }

    pub fn message(&self) -> Message<'_> {
        match self.alerts.as_slice() {
            [single] => Message::Single(single),
            alerts => Message::Digest {
                rule: alerts.first().map(|alert| alert.rule.as_str()).unwrap_or(""),
                alerts,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::police::alert::AlertStatus;

    fn record(entry: u32, rule: &str) -> Queued {
        let alert = Alert {
            alert_id: format!("{rule}/{entry}"),
            rule: rule.into(),
            rule_type: "any".into(),
            status: AlertStatus::Firing,
            severity: "critical".into(),
            group: Default::default(),
            labels: Default::default(),
            annotations: Default::default(),
            count: 1,
            first_event_time: String::new(),
            last_event_time: String::new(),
            raised_at: String::new(),
            sinks: vec!["s".into()],
            event: None,
        };
        Queued {
            entry_id: format!("{entry}-0"),
            raw: alert.to_json(),
            alert,
        }
    }

    #[test]
    fn within_the_limit_every_alert_is_its_own_message() {
        let mut waiting = Waiting::default();
        for entry in 1..=3 {
            waiting.push(record(entry, "a"));
        }
        let first = waiting.take_message(false, 100).unwrap();
        assert!(matches!(first.message(), Message::Single(alert) if alert.alert_id == "a/1"));
        assert_eq!(waiting.len(), 2);
    }

    #[test]
    fn beyond_the_limit_records_fold_per_rule_in_order_and_none_is_lost() {
        let mut waiting = Waiting::default();
        let rules = ["a", "b", "a", "a", "b", "c", "a"];
        for (entry, rule) in rules.iter().enumerate() {
            waiting.push(record(entry as u32, rule));
        }
        let mut seen = Vec::new();
        let first = waiting.take_message(true, 3).unwrap();
        assert_eq!(first.entry_ids, ["0-0", "2-0", "3-0"], "at most 3, same rule, in order");
        let Message::Digest { rule, alerts } = first.message() else {
            panic!("three alerts make a digest");
        };
        assert_eq!((rule, alerts.len()), ("a", 3));
        seen.extend(first.entry_ids);
        while let Some(outgoing) = waiting.take_message(true, 3) {
            let rules: Vec<&str> = outgoing.alerts.iter().map(|alert| alert.rule.as_str()).collect();
            assert!(rules.windows(2).all(|pair| pair[0] == pair[1]), "{rules:?}");
            seen.extend(outgoing.entry_ids);
        }
        seen.sort();
        let mut expected: Vec<String> = (0..rules.len()).map(|entry| format!("{entry}-0")).collect();
        expected.sort();
        assert_eq!(seen, expected);
    }

    #[test]
    fn records_a_peer_took_are_let_go() {
        let mut waiting = Waiting::default();
        for entry in 1..=3 {
            waiting.push(record(entry, "a"));
        }
        waiting.forget(&["2-0".to_string()]);
        assert_eq!(waiting.entry_ids().collect::<Vec<_>>(), ["1-0", "3-0"]);
    }
}
