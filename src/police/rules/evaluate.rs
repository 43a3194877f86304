//! Evaluation of one input item (stream entry or list item): its events against every rule,
//! folded into what the settle script needs ([`ItemPlan`]).
//!
//! Invariants:
//! - `any` rules without cooldown give one complete alert per matching event, id
//!   `<event id>/<rule>`, in event order then rule order
//! - stateful rules give one [`RuleUpdate`] per (rule, group key, window) of the item, its
//!   `matches` the number of matching events, its first and last event times the earliest
//!   and latest of them, its draft rendered from the first of them; `any` with a cooldown
//!   gives one update per matching event (window start = the event's time)
//! - work per event that matches nothing is the filters alone: no allocation; the group
//!   key of a match is hashed without allocating, strings are made once per new update
//! - events are read borrowed ([`EventRef`]); an owned [`LogEvent`] is made only for an
//!   event that goes into a record (an `any` alert, or the draft of an update), once
//! - within one evaluation batch ([`BatchDrafts`]: the items of one settle call) only the
//!   first update of each (rule, group key, window) carries a draft: the settle script
//!   sends one draft per (rule, group key, window) of a call, so the others would be
//!   rendered and dropped; group keys are built once per (rule, group) of the batch

// foldhash: these maps live for one settle call and are hashed once per match; SipHash
// showed in the profile
use foldhash::{HashMap, HashSet};

use super::dedup;
use super::plan::{EventMark, GroupKey, ItemPlan, RuleUpdate};
use super::template::{Context, Counts};
use super::{RuleKind, RuleSet, group, window};
use crate::event::{EventRef, LogEvent};
use crate::police::alert::Alert;

/// A stateful match being folded, before its draft is rendered.
#[derive(Debug)]
struct Pending {
    /// Position of the rule in [`RuleSet::rules`].
    rule_position: usize,
    rule_index: usize,
    window_start_ms: i64,
    matches: u64,
    first_event_ms: i64,
    last_event_ms: i64,
    /// The first matching event: the draft's event and template source.
    event_index: usize,
    /// [`group::hash_of`] the group values of the event under the rule.
    group_hash: u64,
}

/// One item's working lists, emptied at the start of each item.
#[derive(Debug, Default)]
struct Scratch {
    /// (rule position, event index) of the matches of `any` rules without cooldown.
    any_hits: Vec<(usize, usize)>,
    pending: Vec<Pending>,
    /// (rule index, group hash, window start) → position in `pending`.
    pending_by_key: HashMap<(usize, u64, i64), usize>,
    /// Positions in `pending` the current event counts in.
    event_updates: Vec<usize>,
    /// Per mark, its positions in `mark_positions`: copied into the mark only where they
    /// are not every update of the item (known at the end), so most marks allocate none.
    mark_positions: Vec<usize>,
    mark_spans: Vec<(usize, usize)>,
}

impl Scratch {
    fn clear(&mut self) {
        self.any_hits.clear();
        self.pending.clear();
        self.pending_by_key.clear();
        self.event_updates.clear();
        self.mark_positions.clear();
        self.mark_spans.clear();
    }
}

/// What the items evaluated for one settle call share: which (rule, group key, window)
/// already has its draft, the group keys built so far, and the scratch space of one item's
/// evaluation (kept between items: most items are one event, and allocating it per item
/// showed in the profile). A fresh one per settle call.
#[derive(Debug, Default)]
pub struct BatchDrafts {
    scratch: Scratch,
    /// (rule index, group hash) → its key.
    groups: HashMap<(usize, u64), std::sync::Arc<GroupKey>>,
    /// (rule index, group hash, window start) of the updates given a draft.
    drafted: HashSet<(usize, u64, i64)>,
    /// `raised_at` of the batch's records at wall clock `.0`: formatted once.
    raised_at: Option<(i64, String)>,
}

impl BatchDrafts {
    fn raised_at(&mut self, now_ms: i64) -> String {
        match &self.raised_at {
            Some((at_ms, text)) if *at_ms == now_ms => text.clone(),
            _ => {
                let text = window::rfc3339(now_ms);
                self.raised_at = Some((now_ms, text.clone()));
                text
            }
        }
    }
}

impl RuleSet {
    /// Evaluates the events of one input item at wall clock `now_ms` (used for events
    /// whose timestamp is not RFC 3339, and as `raised_at`).
    pub fn evaluate(&self, events: Vec<LogEvent>, now_ms: i64) -> ItemPlan {
        let views: Vec<EventRef<'static>> = events.into_iter().map(EventRef::from_event).collect();
        self.evaluate_views(&views, now_ms)
    }

    /// [`RuleSet::evaluate`] of borrowed events, as one batch of its own: every update
    /// carries its draft.
    pub fn evaluate_views(&self, events: &[EventRef<'_>], now_ms: i64) -> ItemPlan {
        self.evaluate_in_batch(events, now_ms, &mut BatchDrafts::default())
    }

    /// [`RuleSet::evaluate_views`] of one item of a settle call: an update gets a draft
    /// only if no earlier item of `batch` drafted its (rule, group key, window). What the
    /// police runs.
    pub fn evaluate_in_batch(&self, events: &[EventRef<'_>], now_ms: i64, batch: &mut BatchDrafts) -> ItemPlan {
        if events.is_empty() {
            return ItemPlan::default();
        }
        let mut scratch = std::mem::take(&mut batch.scratch);
        scratch.clear();
        let plan = self.evaluate_item(events, now_ms, batch, &mut scratch);
        batch.scratch = scratch;
        plan
    }

    fn evaluate_item(
        &self,
        events: &[EventRef<'_>],
        now_ms: i64,
        batch: &mut BatchDrafts,
        scratch: &mut Scratch,
    ) -> ItemPlan {
        let Scratch {
            any_hits,
            pending,
            pending_by_key,
            event_updates,
            mark_positions,
            mark_spans,
        } = scratch;
        let mut marks: Vec<EventMark> = Vec::new();
        for (event_index, event) in events.iter().enumerate() {
            let mut event_time_ms: Option<i64> = None;
            event_updates.clear();
            for (rule_position, rule) in self.rules.iter().enumerate() {
                if !rule.filter.matches(event) {
                    continue;
                }
                let Some(rule_index) = rule.stateful_index else {
                    any_hits.push((rule_position, event_index));
                    continue;
                };
                let ts_ms = *event_time_ms.get_or_insert_with(|| window::event_ms(&event.timestamp, now_ms));
                let window_start_ms = match rule.kind.window_ms() {
                    Some(window_ms) => window::window_start(ts_ms, window_ms),
                    // `any` with a cooldown: every match is its own update.
                    None => ts_ms,
                };
                let group_hash = group::hash_of(rule.group_by.iter().map(|(_, field)| group::value_of(field, event)));
                let new_pending = Pending {
                    rule_position,
                    rule_index,
                    window_start_ms,
                    matches: 1,
                    first_event_ms: ts_ms,
                    last_event_ms: ts_ms,
                    event_index,
                    group_hash,
                };
                if matches!(rule.kind, RuleKind::Any) {
                    event_updates.push(pending.len());
                    pending.push(new_pending);
                    continue;
                }
                let key = (rule_index, group_hash, window_start_ms);
                match pending_by_key.get(&key) {
                    Some(position) => {
                        if !event_updates.contains(position) {
                            event_updates.push(*position);
                        }
                        let folded = &mut pending[*position];
                        folded.matches += 1;
                        folded.first_event_ms = folded.first_event_ms.min(ts_ms);
                        folded.last_event_ms = folded.last_event_ms.max(ts_ms);
                    }
                    None => {
                        pending_by_key.insert(key, pending.len());
                        event_updates.push(pending.len());
                        pending.push(new_pending);
                    }
                }
            }
            if !event_updates.is_empty()
                && let Some(slot) = dedup::slot_of(&event.id)
            {
                marks.push(EventMark {
                    slot,
                    updates: Vec::new(),
                });
                mark_spans.push((mark_positions.len(), mark_positions.len() + event_updates.len()));
                mark_positions.extend_from_slice(event_updates);
            }
        }
        if pending.is_empty() && any_hits.is_empty() {
            return ItemPlan::default();
        }
        for (mark, (from, to)) in marks.iter_mut().zip(mark_spans.iter()) {
            if to - from != pending.len() {
                mark.updates = mark_positions[*from..*to].to_vec();
            }
        }
        // Formatted once per batch: its records are raised at the same moment.
        let raised_at = batch.raised_at(now_ms);
        let mut owned: Vec<Option<LogEvent>> = vec![None; events.len()];
        let updates = pending
            .drain(..)
            .map(|folded| self.update_of(folded, events, &mut owned, &raised_at, batch))
            .collect();
        let alerts = self.any_alerts(any_hits, events, owned, &raised_at);
        ItemPlan { alerts, updates, marks }
    }

    fn update_of(
        &self,
        folded: Pending,
        events: &[EventRef<'_>],
        owned: &mut [Option<LogEvent>],
        raised_at: &str,
        batch: &mut BatchDrafts,
    ) -> RuleUpdate {
        let rule = &self.rules[folded.rule_position];
        let view = &events[folded.event_index];
        let group = batch
            .groups
            .entry((folded.rule_index, folded.group_hash))
            .or_insert_with(|| {
                std::sync::Arc::new(group::key_of(
                    rule.group_by.iter().map(|(_, field)| group::value_of(field, view)),
                ))
            })
            .clone();
        let first_of_window = batch
            .drafted
            .insert((folded.rule_index, folded.group_hash, folded.window_start_ms));
        let draft = first_of_window.then(|| {
            let event = owned[folded.event_index].get_or_insert_with(|| view.to_event());
            let group_values: Vec<String> = rule
                .group_by
                .iter()
                .map(|(_, field)| group::value_of(field, event).to_string())
                .collect();
            let first_event_time = window::rfc3339(folded.first_event_ms);
            let last_event_time = window::rfc3339(folded.last_event_ms);
            let context = Context {
                event: Some(event),
                group_values: &group_values,
                counts: Counts::Marked,
                first_event_time: &first_event_time,
                last_event_time: &last_event_time,
            };
            let mut draft = rule.alert(&context, &group_values, folded.matches, raised_at);
            draft.event = Some(event.clone());
            Box::new(draft)
        });
        RuleUpdate {
            rule_index: folded.rule_index,
            group,
            window_start_ms: folded.window_start_ms,
            matches: folded.matches,
            first_event_ms: folded.first_event_ms,
            last_event_ms: folded.last_event_ms,
            draft,
        }
    }

    /// The alerts of `any` rules without cooldown; each event is made owned once (or taken
    /// from `owned`, made for a draft), moved into its last alert and cloned for the others.
    fn any_alerts(
        &self,
        any_hits: &[(usize, usize)],
        events: &[EventRef<'_>],
        mut owned: Vec<Option<LogEvent>>,
        raised_at: &str,
    ) -> Vec<Alert> {
        if any_hits.is_empty() {
            return Vec::new();
        }
        let mut remaining_uses = vec![0usize; events.len()];
        for (_, event_index) in any_hits {
            remaining_uses[*event_index] += 1;
        }
        any_hits
            .iter()
            .map(|(rule_position, event_index)| {
                let rule = &self.rules[*rule_position];
                let event = owned[*event_index].get_or_insert_with(|| events[*event_index].to_event());
                let group_values: Vec<String> = rule
                    .group_by
                    .iter()
                    .map(|(_, field)| group::value_of(field, event).to_string())
                    .collect();
                let context = Context {
                    event: Some(event),
                    group_values: &group_values,
                    counts: Counts::Known { count: 1 },
                    first_event_time: &event.timestamp,
                    last_event_time: &event.timestamp,
                };
                let mut alert = rule.alert(&context, &group_values, 1, raised_at);
                alert.alert_id = format!("{}/{}", event.id, rule.name);
                remaining_uses[*event_index] -= 1;
                alert.event = if remaining_uses[*event_index] == 0 {
                    owned[*event_index].take()
                } else {
                    owned[*event_index].clone()
                };
                alert
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    /// A wall clock after every event time of these tests (2030-01-01).
    const LATER_MS: i64 = 1_893_456_000_000;
    use super::*;
    use crate::event::Level;
    use crate::police::rules::plan::FIGURE_MARK;

    fn event(id: &str, timestamp: &str, level: Level, service: &str) -> LogEvent {
        LogEvent {
            id: id.into(),
            timestamp: timestamp.into(),
            level,
            service: service.into(),
            host: "web-1".into(),
            message: "boom".into(),
            extra: Default::default(),
        }
    }

    #[test]
    fn builtin_rule_alerts_per_event_at_and_above_its_level() {
        let rules = RuleSet::builtin(Level::Critical, vec!["console".into()]);
        let plan = rules.evaluate(
            vec![
                event("a:1:0", "2026-12-01T12:00:00Z", Level::Error, "api"),
                event("a:1:1", "2026-12-01T12:00:01Z", Level::Critical, "api"),
                event("a:1:2", "2026-12-01T12:00:02Z", Level::Emergency, "db"),
            ],
            LATER_MS,
        );
        assert!(plan.updates.is_empty());
        let ids: Vec<&str> = plan.alerts.iter().map(|alert| alert.alert_id.as_str()).collect();
        assert_eq!(ids, ["a:1:1/critical", "a:1:2/critical"]);
        assert_eq!(plan.alerts[0].severity, "critical");
        assert_eq!(plan.alerts[0].sinks, ["console"]);
        assert_eq!(plan.alerts[1].event.as_ref().unwrap().service, "db");
        assert_eq!(rules.lowest_level(), Level::Critical);
        assert!(rules.stateful_rules().is_empty());
    }

    #[test]
    fn frequency_matches_fold_per_group_and_window() {
        let rules = RuleSet::parse(
            "rules.toml",
            r#"
            [[rules]]
            name = "errors"
            type = "frequency"
            filter = { level = "ERROR" }
            group_by = ["service"]
            threshold = 3
            window = "1m"
            annotations = { summary = "{count} errors in {service} within {window}" }

            [[rules]]
            name = "all"
            type = "any"
            cooldown = "0s"
            filter = { level = "CRITICAL" }
            "#,
        )
        .unwrap();
        let plan = rules.evaluate(
            vec![
                event("e0", "2026-12-01T12:00:10Z", Level::Error, "api"),
                event("e1", "2026-12-01T12:00:50Z", Level::Critical, "api"),
                event("e2", "2026-12-01T12:00:20Z", Level::Error, "db"),
                event("e3", "2026-12-01T12:01:05Z", Level::Error, "api"),
                event("e4", "2026-12-01T12:00:05Z", Level::Info, "api"),
            ],
            LATER_MS,
        );
        assert_eq!(plan.alerts.len(), 1, "only e1 is CRITICAL");
        assert_eq!(plan.alerts[0].alert_id, "e1/all");
        let summary: Vec<(String, i64, u64)> = plan
            .updates
            .iter()
            .map(|update| {
                (
                    update.group.values_json.clone(),
                    update.window_start_ms % 3_600_000,
                    update.matches,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (r#"["api"]"#.to_string(), 0, 2),
                (r#"["db"]"#.to_string(), 0, 1),
                (r#"["api"]"#.to_string(), 60_000, 1),
            ]
        );
        let api = &plan.updates[0];
        assert_eq!(api.last_event_ms - api.first_event_ms, 40_000);
        assert_eq!(api.draft.as_ref().unwrap().event.as_ref().unwrap().id, "e0");
        assert_eq!(api.draft.as_ref().unwrap().group["service"], "api");
        assert_eq!(
            api.draft.as_ref().unwrap().annotations["summary"],
            format!("{FIGURE_MARK}count{FIGURE_MARK} errors in api within 1m")
        );
        assert_eq!(api.draft.as_ref().unwrap().rule_type, "frequency");
        assert_eq!(rules.lowest_level(), Level::Error);
    }

    #[test]
    fn any_with_cooldown_gives_one_update_per_event_and_unparsable_times_use_now() {
        let rules = RuleSet::parse(
            "rules.toml",
            "[[rules]]\nname = \"leak\"\ntype = \"any\"\nfilter = { message = \"boo\" }\n",
        )
        .unwrap();
        let plan = rules.evaluate(
            vec![
                event("e0", "not a time", Level::Info, "api"),
                event("e1", "1970-01-01T00:00:01Z", Level::Info, "api"),
            ],
            42,
        );
        assert!(plan.alerts.is_empty());
        let starts: Vec<i64> = plan.updates.iter().map(|update| update.window_start_ms).collect();
        assert_eq!(starts, [42, 1000]);
        assert_eq!(rules.stateful_rules()[0].cooldown_ms, 60_000);
        assert_eq!(rules.lowest_level(), Level::Unknown);
    }
}
