//! The reference model of the rule semantics of `docs/ALERTING.md` ("Semantics"): the rule
//! state in memory, and the alerts it raises. The settle script and the clock scripts keep
//! the same state in Redis and must raise the same alerts (a differential test compares
//! them); `rules test` replays sample events through this model.
//!
//! Written to be read against the doc, one rule kind at a time, not to be fast.
//!
//! State, as in Redis:
//! - `counts`: matches per (rule, group key, window start) (`count:<rule>:<gk>:<W>`)
//! - `cooldown_until`: per (rule, group key), in event time (`cooldown:<rule>:<gk>`)
//! - `groups`: per rule, every group key seen, with its values and the first and last
//!   window it was seen in (`groups:<rule>`, `groupvals:<rule>`)
//! - `newest`: per rule, the newest event time seen (`newest:<rule>`)
//! - `active`: the firing episode of each (rule, group key), at most one (`active`)
//! - `resolved`: every resolve record written (`resolved`)
//! - `tracked`: per rule, the groups tracked, with the wall clock of their last match
//!   (`seen:<rule>`): at most `max_groups`; a new group beyond it is not counted
//!   (`over_limit`); the clock forgets those without a match for `forget_after` (not the
//!   `expect`ed ones) and resolves their episode (annotation `resolve_reason`)
//!
//! Choices the doc leaves open, made here and to be made the same way in Redis:
//! - a group is "seen before W" when the first window it was seen in is before W
//! - a new firing of a (rule, group key) replaces its episode without a resolve record
//! - while an episode fires, later matches in its window (frequency, spike) or within its
//!   cooldown (`any`) raise its `count` and `last_event_time` (the record already written
//!   stays as it is; resolve records carry the final figures)
//! - the clock checks every window that closed since its previous tick (at most
//!   [`MAX_WINDOWS_PER_TICK`] per rule, the newest ones); on its first tick only the newest
//!   closed window
//! - a consequence of the doc's cooldown test (`W < cooldown_until`): a window before the
//!   last firing window of a group is within its cooldown, even with `cooldown = "0s"`,
//!   so matches arriving out of order never fire an older window
//! - flatline and spike down fire with the records built by [`RuleSet::clock_draft`]; a
//!   flatline episode has no cooldown (it is "already firing" until it resolves)
//! - a window the clock has closed (flatline, spike down) takes no more matches: they are
//!   late. The model has no backlog: what it was given is settled, so the gate that
//!   postpones a close in Redis until its input is settled is always open here
//! - an event of our agents (see [`super::dedup`]) counts once however many items carry
//!   it; a duplicate's matches are taken off the updates it counts in

use std::collections::{BTreeMap, HashMap, HashSet};

use super::RuleSet;
use super::dedup::Slot;
use super::plan::{FIGURE_MARK, GroupKey, ItemPlan, RuleUpdate, StatefulKind, StatefulRule};
use super::window;
use crate::police::alert::{Alert, AlertStatus};

/// An `any` episode resolves after this long (wall clock) without a new match.
pub const ANY_RESOLVE_AFTER_MS: i64 = 5 * 60_000;
/// Windows the clock checks per rule and tick; a clock that stood still longer checks only
/// the newest ones (an older silent window would fire the same episode anyway).
pub const MAX_WINDOWS_PER_TICK: i64 = 10_000;

/// One firing episode of a (rule, group key).
#[derive(Debug, Clone)]
struct Episode {
    alert: Alert,
    /// The window that fired it (frequency, spike, flatline); the event time (`any`).
    fired_window_ms: i64,
    /// Wall clock of the last match (`any`: resolves after [`ANY_RESOLVE_AFTER_MS`]).
    last_match_wall_ms: i64,
}

#[derive(Debug, Clone)]
struct SeenGroup {
    group: GroupKey,
    first_window_ms: i64,
    last_window_ms: i64,
}

/// The rule state of one rule set.
pub struct Model<'rules> {
    rules: &'rules RuleSet,
    stateful: Vec<StatefulRule>,
    counts: HashMap<(usize, String, i64), u64>,
    cooldown_until: HashMap<(usize, String), i64>,
    /// Per rule index, by group id (ordered, so that clock work is deterministic).
    groups: HashMap<usize, BTreeMap<String, SeenGroup>>,
    newest: HashMap<usize, i64>,
    active: BTreeMap<(usize, String), Episode>,
    resolved: Vec<Alert>,
    /// Per rule index, the newest window the clock has checked.
    checked_through: HashMap<usize, i64>,
    /// Per rule index (flatline, spike down), the newest window the clock has closed: its
    /// outcome is decided, later matches of it or an older window are late.
    closed_through: HashMap<usize, i64>,
    /// The dedup slots of every event of our agents counted (`dedup:<run>:<chunk>` bits).
    seen_events: HashSet<Slot>,
    /// Matches dropped as late (the `late` counter of the stats hash).
    pub late: u64,
    /// Per rule index, group id → wall clock of its last match.
    tracked: HashMap<usize, BTreeMap<String, i64>>,
    /// Matches of new groups beyond `max_groups` (the `over_limit` counter).
    pub over_limit: u64,
}

impl<'rules> Model<'rules> {
    pub fn new(rules: &'rules RuleSet) -> Model<'rules> {
        Model {
            rules,
            stateful: rules.stateful_rules(),
            counts: HashMap::new(),
            cooldown_until: HashMap::new(),
            groups: HashMap::new(),
            newest: HashMap::new(),
            active: BTreeMap::new(),
            resolved: Vec::new(),
            checked_through: HashMap::new(),
            closed_through: HashMap::new(),
            seen_events: HashSet::new(),
            late: 0,
            tracked: HashMap::new(),
            over_limit: 0,
        }
    }

    /// Starts the clock at `first_ms`: the first tick checks no window before the one
    /// holding `first_ms` (a replay starts there; a police's clock checks the newest closed
    /// window on its first tick instead).
    pub fn start_clock(&mut self, first_ms: i64) {
        for (rule_index, rule) in self.stateful.iter().enumerate() {
            if rule.window_ms > 0 {
                let first_window = window::window_start(first_ms, rule.window_ms);
                self.checked_through
                    .insert(rule_index, first_window - rule.window_ms as i64);
            }
        }
    }

    /// The stateful rules, as the settle script receives them.
    pub fn stateful_rules(&self) -> &[StatefulRule] {
        &self.stateful
    }

    /// Every resolve record written so far.
    pub fn resolved(&self) -> &[Alert] {
        &self.resolved
    }

    /// What one settle does with the plan of one input item at wall clock `now_ms`: the
    /// `any` alerts pass through, each update is applied in order. Returns the records
    /// written to the outbox, in order.
    /// An event of our agents counts once however many entries carry it: the matches of an
    /// event seen before are taken off the updates it counts in, and an update left
    /// without matches is dropped.
    pub fn apply(&mut self, plan: ItemPlan, now_ms: i64) -> Vec<Alert> {
        let mut written = plan.alerts;
        let mut duplicates_per_update = vec![0u64; plan.updates.len()];
        for mark in plan.marks {
            if !self.seen_events.insert(mark.slot) {
                if mark.updates.is_empty() {
                    duplicates_per_update.iter_mut().for_each(|duplicates| *duplicates += 1);
                }
                for position in mark.updates {
                    duplicates_per_update[position] += 1;
                }
            }
        }
        for (mut update, duplicates) in plan.updates.into_iter().zip(duplicates_per_update) {
            update.matches = update.matches.saturating_sub(duplicates);
            if update.matches == 0 {
                continue;
            }
            let Some(rule) = self.stateful.get(update.rule_index).cloned() else {
                continue;
            };
            match rule.kind {
                StatefulKind::AnyWithCooldown => {
                    if self.admit(&rule, &update, now_ms) {
                        self.apply_any(&rule, update, now_ms, &mut written)
                    }
                }
                StatefulKind::Frequency | StatefulKind::Spike | StatefulKind::Flatline => {
                    if self.is_late(&rule, &update) {
                        self.late += update.matches;
                        continue;
                    }
                    if !self.admit(&rule, &update, now_ms) {
                        continue;
                    }
                    self.newest
                        .entry(update.rule_index)
                        .and_modify(|newest| *newest = (*newest).max(update.last_event_ms))
                        .or_insert(update.last_event_ms);
                    match rule.kind {
                        StatefulKind::Frequency => self.apply_frequency(&rule, update, &mut written),
                        StatefulKind::Spike => self.apply_spike(&rule, update, &mut written),
                        _ => self.apply_flatline(&rule, update, now_ms, &mut written),
                    }
                }
            }
        }
        written
    }

    /// The group limit: a tracked group's match is taken (its last match set to `now_ms`);
    /// a new one only while the rule tracks fewer than `max_groups`, else it counts as
    /// `over_limit`.
    fn admit(&mut self, rule: &StatefulRule, update: &RuleUpdate, now_ms: i64) -> bool {
        let tracked = self.tracked.entry(update.rule_index).or_default();
        if !tracked.contains_key(&update.group.id) && tracked.len() as u64 >= rule.max_groups {
            self.over_limit += update.matches;
            return false;
        }
        tracked.insert(update.group.id.clone(), now_ms);
        true
    }

    /// Forgets the groups of rule `rule_index` without a match since `forget_after`
    /// (wall clock), except the `expect`ed ones: their firing episode resolves with the
    /// reason, their first-seen window and cooldown go (counts are left to expire).
    fn forget_groups(&mut self, rule_index: usize, rule: &StatefulRule, now_ms: i64, written: &mut Vec<Alert>) {
        let cutoff = now_ms.saturating_sub(rule.forget_after_ms as i64);
        let expected: Vec<String> = self
            .rules
            .expected_groups(rule_index)
            .iter()
            .map(|group| group.id.clone())
            .collect();
        let stale: Vec<String> = self
            .tracked
            .get(&rule_index)
            .into_iter()
            .flatten()
            .filter(|(_, last)| **last <= cutoff)
            .map(|(id, _)| id.clone())
            .collect();
        let reason = format!(
            "forgotten: no match for {}",
            humantime::format_duration(std::time::Duration::from_millis(rule.forget_after_ms))
        );
        for id in stale {
            if expected.contains(&id) {
                self.tracked.entry(rule_index).or_default().insert(id, now_ms);
                continue;
            }
            let episode_key = (rule_index, id.clone());
            self.resolve_with_reason(&episode_key, now_ms, Some(&reason), written);
            self.cooldown_until.remove(&episode_key);
            if let Some(groups) = self.groups.get_mut(&rule_index) {
                groups.remove(&id);
            }
            if let Some(tracked) = self.tracked.get_mut(&rule_index) {
                tracked.remove(&id);
            }
        }
    }

    /// Lateness: the update's window closed more than `max_lateness` before the newest
    /// event the rule has seen (`W + window <= newest - max_lateness`), or the clock has
    /// closed it (flatline, spike down: `W <= clock:<rule>`).
    fn is_late(&self, rule: &StatefulRule, update: &RuleUpdate) -> bool {
        let closed_by_clock = self
            .closed_through
            .get(&update.rule_index)
            .is_some_and(|closed| update.window_start_ms <= *closed);
        let Some(newest) = self.newest.get(&update.rule_index) else {
            return closed_by_clock;
        };
        closed_by_clock || update.window_start_ms + rule.window_ms as i64 <= newest - rule.max_lateness_ms as i64
    }

    /// `any` with a cooldown: the first match fires (id `<rule>/<gk>/<ts>`); matches before
    /// `cooldown_until` only add to the episode; firing sets `cooldown_until = ts + cooldown`.
    fn apply_any(&mut self, rule: &StatefulRule, update: RuleUpdate, now_ms: i64, written: &mut Vec<Alert>) {
        let episode_key = (update.rule_index, update.group.id.clone());
        let event_ms = update.window_start_ms;
        let in_cooldown = self
            .cooldown_until
            .get(&episode_key)
            .is_some_and(|until| event_ms < *until);
        if in_cooldown {
            if let Some(episode) = self.active.get_mut(&episode_key) {
                episode.alert.count += update.matches;
                episode.alert.last_event_time = window::rfc3339(update.last_event_ms);
                episode.last_match_wall_ms = now_ms;
            }
            return;
        }
        let alert_id = format!("{}/{}/{event_ms}", rule.name, update.group.id);
        let matches = update.matches;
        let alert = complete(drafted(update), alert_id, matches, None);
        self.cooldown_until
            .insert(episode_key.clone(), event_ms + rule.cooldown_ms as i64);
        self.fire(episode_key, alert, event_ms, now_ms, written);
    }

    /// `frequency`: the window count crossing `threshold` (before < threshold <= after)
    /// fires (id `<rule>/<gk>/<W>`) unless `W < cooldown_until`; firing sets
    /// `cooldown_until = W + cooldown`.
    fn apply_frequency(&mut self, rule: &StatefulRule, update: RuleUpdate, written: &mut Vec<Alert>) {
        let window_start = update.window_start_ms;
        let (before, after) = self.add_count(&update);
        self.see_group(&update);
        let episode_key = (update.rule_index, update.group.id.clone());
        if before < rule.threshold && rule.threshold <= after {
            if self.in_cooldown(&episode_key, window_start) {
                return;
            }
            let alert_id = format!("{}/{}/{window_start}", rule.name, update.group.id);
            let alert = complete(drafted(update), alert_id, after, None);
            self.cooldown_until
                .insert(episode_key.clone(), window_start + rule.cooldown_ms as i64);
            self.fire(episode_key, alert, window_start, 0, written);
            return;
        }
        self.follow_episode(&episode_key, window_start, after, &update);
    }

    /// `spike` up: with `prev = count(W - window)`, fires when `cur >= min_count` and
    /// `cur >= ratio * prev` became true with this increment and the group was first seen
    /// before W; cooldown as for frequency. (Down is clock work: [`Self::tick`].)
    fn apply_spike(&mut self, rule: &StatefulRule, update: RuleUpdate, written: &mut Vec<Alert>) {
        let window_start = update.window_start_ms;
        let previous = self.count(
            update.rule_index,
            &update.group.id,
            window_start - rule.window_ms as i64,
        );
        let seen_before = self
            .groups
            .get(&update.rule_index)
            .and_then(|groups| groups.get(&update.group.id))
            .is_some_and(|seen| seen.first_window_ms < window_start);
        let (before, after) = self.add_count(&update);
        self.see_group(&update);
        let spiking = |count: u64| count >= rule.min_count && count as f64 >= rule.ratio * previous as f64;
        let episode_key = (update.rule_index, update.group.id.clone());
        if rule.spike_up && seen_before && spiking(after) && !spiking(before) {
            if self.in_cooldown(&episode_key, window_start) {
                return;
            }
            let alert_id = format!("{}/{}/{window_start}", rule.name, update.group.id);
            let alert = complete(drafted(update), alert_id, after, Some(previous));
            self.cooldown_until
                .insert(episode_key.clone(), window_start + rule.cooldown_ms as i64);
            self.fire(episode_key, alert, window_start, 0, written);
            return;
        }
        self.follow_episode(&episode_key, window_start, after, &update);
    }

    /// `flatline` in SETTLE: counts, and resolves a firing episode when a window's count
    /// reaches `threshold` again.
    fn apply_flatline(&mut self, rule: &StatefulRule, update: RuleUpdate, now_ms: i64, written: &mut Vec<Alert>) {
        let (before, after) = self.add_count(&update);
        self.see_group(&update);
        let episode_key = (update.rule_index, update.group.id.clone());
        if before < rule.threshold && rule.threshold <= after {
            self.resolve(&episode_key, now_ms, written);
        }
    }

    /// The clock work at wall clock `now_ms` (the lease holder's, every second): flatline
    /// and spike down at each window's close (`now >= W + window + max_lateness`), then
    /// resolves. Returns the records written, in order.
    pub fn tick(&mut self, now_ms: i64) -> Vec<Alert> {
        let mut written = Vec::new();
        for rule_index in 0..self.stateful.len() {
            let rule = self.stateful[rule_index].clone();
            if matches!(rule.kind, StatefulKind::Flatline | StatefulKind::Spike) {
                for window_start in self.windows_closed_since_last_tick(rule_index, &rule, now_ms) {
                    if rule.kind == StatefulKind::Flatline || rule.spike_down {
                        self.closed_through.insert(rule_index, window_start);
                    }
                    match rule.kind {
                        StatefulKind::Flatline => {
                            self.close_flatline(rule_index, &rule, window_start, now_ms, &mut written)
                        }
                        _ if rule.spike_down => {
                            self.close_spike_down(rule_index, &rule, window_start, now_ms, &mut written)
                        }
                        _ => {}
                    }
                }
            }
        }
        for rule_index in 0..self.stateful.len() {
            let rule = self.stateful[rule_index].clone();
            self.forget_groups(rule_index, &rule, now_ms, &mut written);
        }
        self.resolve_due(now_ms, &mut written);
        written
    }

    /// Windows of `rule` that closed since the previous tick, oldest first.
    fn windows_closed_since_last_tick(&mut self, rule_index: usize, rule: &StatefulRule, now_ms: i64) -> Vec<i64> {
        let window_ms = rule.window_ms as i64;
        // W is closed when W + window + max_lateness <= now.
        let newest_closed = window::window_start(now_ms - window_ms - rule.max_lateness_ms as i64, rule.window_ms);
        let first = match self.checked_through.get(&rule_index) {
            Some(checked) => (checked + window_ms).max(newest_closed - (MAX_WINDOWS_PER_TICK - 1) * window_ms),
            None => newest_closed,
        };
        if first > newest_closed {
            return Vec::new();
        }
        self.checked_through.insert(rule_index, newest_closed);
        (0..)
            .map(|step| first + step * window_ms)
            .take_while(|window_start| *window_start <= newest_closed)
            .collect()
    }

    /// Flatline at the close of W: every group seen before W or expected, with
    /// `count(W) < threshold`, fires (id `<rule>/<gk>/<W>`) unless it is already firing.
    fn close_flatline(
        &mut self,
        rule_index: usize,
        rule: &StatefulRule,
        window_start: i64,
        now_ms: i64,
        written: &mut Vec<Alert>,
    ) {
        let mut candidates: BTreeMap<String, GroupKey> = self
            .groups
            .get(&rule_index)
            .into_iter()
            .flat_map(BTreeMap::values)
            .filter(|seen| seen.first_window_ms < window_start)
            .map(|seen| (seen.group.id.clone(), seen.group.clone()))
            .collect();
        for expected in self.rules.expected_groups(rule_index) {
            candidates
                .entry(expected.id.clone())
                .or_insert_with(|| expected.clone());
        }
        for (group_id, group) in candidates {
            let count = self.count(rule_index, &group_id, window_start);
            let episode_key = (rule_index, group_id);
            if count >= rule.threshold || self.active.contains_key(&episode_key) {
                continue;
            }
            let Some(draft) = self.rules.clock_draft(rule_index, &group, window_start, now_ms) else {
                continue;
            };
            let alert_id = format!("{}/{}/{window_start}", rule.name, group.id);
            let alert = complete(draft, alert_id, count, None);
            self.fire(episode_key, alert, window_start, now_ms, written);
        }
    }

    /// Spike down at the close of W: `prev >= min_count` and `cur * ratio <= prev`, with
    /// `prev = count(W - window)`; cooldown as for frequency.
    fn close_spike_down(
        &mut self,
        rule_index: usize,
        rule: &StatefulRule,
        window_start: i64,
        now_ms: i64,
        written: &mut Vec<Alert>,
    ) {
        let groups: Vec<GroupKey> = self
            .groups
            .get(&rule_index)
            .into_iter()
            .flat_map(BTreeMap::values)
            .map(|seen| seen.group.clone())
            .collect();
        for group in groups {
            let previous = self.count(rule_index, &group.id, window_start - rule.window_ms as i64);
            let current = self.count(rule_index, &group.id, window_start);
            if previous < rule.min_count || current as f64 * rule.ratio > previous as f64 {
                continue;
            }
            let episode_key = (rule_index, group.id.clone());
            if self.in_cooldown(&episode_key, window_start) {
                continue;
            }
            let Some(draft) = self.rules.clock_draft(rule_index, &group, window_start, now_ms) else {
                continue;
            };
            let alert_id = format!("{}/{}/{window_start}", rule.name, group.id);
            let alert = complete(draft, alert_id, current, Some(previous));
            self.cooldown_until
                .insert(episode_key.clone(), window_start + rule.cooldown_ms as i64);
            self.fire(episode_key, alert, window_start, now_ms, written);
        }
    }

    /// Resolves by the clock: `any` after [`ANY_RESOLVE_AFTER_MS`] without a new match;
    /// frequency and spike once the window after the firing one has closed (a firing in
    /// it would have replaced the episode).
    fn resolve_due(&mut self, now_ms: i64, written: &mut Vec<Alert>) {
        let due: Vec<(usize, String)> = self
            .active
            .iter()
            .filter(|((rule_index, _), episode)| {
                let rule = &self.stateful[*rule_index];
                match rule.kind {
                    StatefulKind::AnyWithCooldown => now_ms >= episode.last_match_wall_ms + ANY_RESOLVE_AFTER_MS,
                    StatefulKind::Frequency | StatefulKind::Spike => {
                        let next_window = episode.fired_window_ms + rule.window_ms as i64;
                        now_ms >= next_window + rule.window_ms as i64 + rule.max_lateness_ms as i64
                    }
                    StatefulKind::Flatline => false,
                }
            })
            .map(|(key, _)| key.clone())
            .collect();
        for episode_key in due {
            self.resolve(&episode_key, now_ms, written);
        }
    }

    fn count(&self, rule_index: usize, group_id: &str, window_start: i64) -> u64 {
        self.counts
            .get(&(rule_index, group_id.to_string(), window_start))
            .copied()
            .unwrap_or(0)
    }

    /// Adds the update's matches to its window; returns the count before and after.
    fn add_count(&mut self, update: &RuleUpdate) -> (u64, u64) {
        let key = (update.rule_index, update.group.id.clone(), update.window_start_ms);
        let count = self.counts.entry(key).or_insert(0);
        let before = *count;
        *count += update.matches;
        (before, *count)
    }

    fn see_group(&mut self, update: &RuleUpdate) {
        let window_start = update.window_start_ms;
        self.groups
            .entry(update.rule_index)
            .or_default()
            .entry(update.group.id.clone())
            .and_modify(|seen| {
                seen.first_window_ms = seen.first_window_ms.min(window_start);
                seen.last_window_ms = seen.last_window_ms.max(window_start);
            })
            .or_insert_with(|| SeenGroup {
                group: (*update.group).clone(),
                first_window_ms: window_start,
                last_window_ms: window_start,
            });
    }

    fn in_cooldown(&self, episode_key: &(usize, String), window_start: i64) -> bool {
        self.cooldown_until
            .get(episode_key)
            .is_some_and(|until| window_start < *until)
    }

    /// Later matches in the firing window raise the episode's figures.
    fn follow_episode(&mut self, episode_key: &(usize, String), window_start: i64, count: u64, update: &RuleUpdate) {
        if let Some(episode) = self.active.get_mut(episode_key)
            && episode.fired_window_ms == window_start
        {
            episode.alert.count = count;
            episode.alert.last_event_time = window::rfc3339(update.last_event_ms);
        }
    }

    fn fire(
        &mut self,
        episode_key: (usize, String),
        alert: Alert,
        fired_window_ms: i64,
        now_ms: i64,
        written: &mut Vec<Alert>,
    ) {
        written.push(alert.clone());
        self.active.insert(
            episode_key,
            Episode {
                alert,
                fired_window_ms,
                last_match_wall_ms: now_ms,
            },
        );
    }

    /// Ends the firing episode of `episode_key`, if any: a record with the same id and
    /// `status = "resolved"`, moved to the resolved set.
    fn resolve(&mut self, episode_key: &(usize, String), now_ms: i64, written: &mut Vec<Alert>) {
        self.resolve_with_reason(episode_key, now_ms, None, written);
    }

    /// [`Self::resolve`], with `reason` as the annotation `resolve_reason` when given.
    fn resolve_with_reason(
        &mut self,
        episode_key: &(usize, String),
        now_ms: i64,
        reason: Option<&str>,
        written: &mut Vec<Alert>,
    ) {
        let Some(episode) = self.active.remove(episode_key) else {
            return;
        };
        let mut record = episode.alert;
        if let Some(reason) = reason {
            record
                .annotations
                .insert("resolve_reason".to_string(), reason.to_string());
        }
        record.status = AlertStatus::Resolved;
        record.raised_at = window::rfc3339(now_ms);
        record.event = None;
        self.resolved.push(record.clone());
        written.push(record);
    }
}

/// The draft of an update of an item evaluated alone ([`RuleSet::evaluate`], all the model
/// reads), where every update carries one.
fn drafted(update: RuleUpdate) -> Alert {
    *update
        .draft
        .expect("an item evaluated alone drafts every update (RuleSet::evaluate)")
}

/// A draft completed as the script does: its id, its count, and the marked figures
/// replaced in labels and annotations.
pub fn complete(mut draft: Alert, alert_id: String, count: u64, previous_count: Option<u64>) -> Alert {
    let count_mark = format!("{FIGURE_MARK}count{FIGURE_MARK}");
    let previous_mark = format!("{FIGURE_MARK}previous_count{FIGURE_MARK}");
    let count_text = count.to_string();
    let previous_text = previous_count.unwrap_or(0).to_string();
    for text in draft.labels.values_mut().chain(draft.annotations.values_mut()) {
        if text.contains(FIGURE_MARK) {
            *text = text
                .replace(&count_mark, &count_text)
                .replace(&previous_mark, &previous_text);
        }
    }
    draft.alert_id = alert_id;
    draft.count = count;
    draft
}

#[cfg(test)]
mod tests {
    /// A wall clock after every event time of these tests (2030-01-01).
    const LATER_MS: i64 = 1_893_456_000_000;
    use proptest::prelude::*;

    use super::*;
    use crate::event::{Level, LogEvent};

    const MINUTE: i64 = 60_000;
    /// 2026-12-01T12:00:00Z, a multiple of every window used here.
    const NOON: i64 = 1_796_126_400_000;

    fn event(id: usize, ts_ms: i64, service: &str, level: Level) -> LogEvent {
        LogEvent {
            id: format!("e:{id}"),
            timestamp: window::rfc3339(ts_ms),
            level,
            service: service.into(),
            host: "h".into(),
            message: "boom".into(),
            extra: Default::default(),
        }
    }

    fn rules(text: &str) -> RuleSet {
        RuleSet::parse("rules.toml", text).expect("valid rules")
    }

    /// Each event its own item, the wall clock following event time, as `rules test` does.
    fn replay(rules: &RuleSet, events: &[LogEvent]) -> Vec<Alert> {
        let mut model = Model::new(rules);
        let mut written = Vec::new();
        for event in events {
            let now = window::parse_ms(&event.timestamp).unwrap_or(0);
            written.extend(model.tick(now));
            written.extend(model.apply(rules.evaluate(vec![event.clone()], now), now));
        }
        written
    }

    fn ids(alerts: &[Alert]) -> Vec<String> {
        alerts
            .iter()
            .map(|alert| {
                format!(
                    "{}{}",
                    alert.alert_id,
                    if alert.status == AlertStatus::Resolved {
                        "#resolved"
                    } else {
                        ""
                    }
                )
            })
            .collect()
    }

    #[test]
    fn frequency_fires_once_per_crossing_and_honours_cooldown() {
        let rules = rules(
            "[[rules]]\nname = \"f\"\ntype = \"frequency\"\nthreshold = 2\nwindow = \"1m\"\ncooldown = \"2m\"\n\
             annotations = { summary = \"{count} of {threshold}\" }\n",
        );
        let events: Vec<LogEvent> = [0, 1, 2, MINUTE + 1, MINUTE + 2, 2 * MINUTE, 2 * MINUTE + 1]
            .iter()
            .enumerate()
            .map(|(id, offset)| event(id, NOON + offset, "api", Level::Info))
            .collect();
        let written = replay(&rules, &events);
        let gk = group_id(&[]);
        assert_eq!(
            ids(&written),
            [format!("f/{gk}/{NOON}"), format!("f/{gk}/{}", NOON + 2 * MINUTE)],
            "the second window is in the cooldown, the third is not"
        );
        assert_eq!(written[0].annotations["summary"], "2 of 2");
        assert_eq!(written[0].count, 2);
    }

    fn group_id(values: &[&str]) -> String {
        super::super::group::key_of(values.iter().copied()).id
    }

    #[test]
    fn late_matches_only_count_as_late() {
        let rules = rules(
            "max_lateness = \"1m\"\n[[rules]]\nname = \"f\"\ntype = \"frequency\"\ngroup_by = [\"service\"]\n\
             threshold = 1\nwindow = \"1m\"\ncooldown = \"0s\"\n",
        );
        let events = [
            event(0, NOON + 5 * MINUTE, "api", Level::Info),
            // window NOON+3m closes at NOON+4m <= newest - 1m: late
            event(1, NOON + 3 * MINUTE, "api", Level::Info),
            // window NOON+4m: not late (another group: for this one, a window before its
            // last firing is within the cooldown, whatever its length)
            event(2, NOON + 4 * MINUTE, "db", Level::Info),
        ];
        let mut model = Model::new(&rules);
        let mut written = Vec::new();
        for item in events {
            written.extend(model.apply(rules.evaluate(vec![item], LATER_MS), 0));
        }
        assert_eq!(written.len(), 2);
        assert_eq!(model.late, 1);
    }

    #[test]
    fn groups_beyond_max_groups_are_not_counted_and_silent_ones_are_forgotten() {
        let rules = rules(
            "max_lateness = \"0s\"\n[[rules]]\nname = \"q\"\ntype = \"flatline\"\ngroup_by = [\"service\"]\n\
             threshold = 1\nwindow = \"1m\"\nmax_groups = 2\nforget_after = \"3m\"\nexpect = [\"db\"]\n",
        );
        let mut model = Model::new(&rules);
        model.start_clock(NOON);
        for (id, service) in ["api", "db", "web"].iter().enumerate() {
            model.apply(rules.evaluate(vec![event(id, NOON, service, Level::Info)], NOON), NOON);
        }
        assert_eq!(model.over_limit, 1, "web is a third group");
        // api and db go silent: both fire at the close of the next window
        let fired = model.tick(NOON + 2 * MINUTE);
        assert_eq!(fired.len(), 2);
        // three minutes after its last match api is forgotten (and resolved), db is expected
        let later = model.tick(NOON + 3 * MINUTE);
        let resolved: Vec<&Alert> = later
            .iter()
            .filter(|alert| alert.status == AlertStatus::Resolved)
            .collect();
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].group["service"], "api");
        assert_eq!(resolved[0].annotations["resolve_reason"], "forgotten: no match for 3m");
        // the limit has room again: web is tracked now
        model.apply(
            rules.evaluate(vec![event(9, NOON + 3 * MINUTE, "web", Level::Info)], NOON + 3 * MINUTE),
            NOON + 3 * MINUTE,
        );
        assert_eq!(model.over_limit, 1);
    }

    #[test]
    fn spike_up_needs_a_previous_window_and_down_fires_at_close() {
        let rules = rules(
            "max_lateness = \"0s\"\n[[rules]]\nname = \"s\"\ntype = \"spike\"\nwindow = \"1m\"\nratio = 3\ndirection = \"both\"\n\
             min_count = 2\ncooldown = \"0s\"\nannotations = { summary = \"{count} after {previous_count}\" }\n",
        );
        let mut events = Vec::new();
        let mut at = |ts| events.push(event(events.len(), ts, "api", Level::Info));
        // window 0: 2 (first window: silent), window 1: 6 (spike up at the 6th), window 2: 1
        // (spike down at its close: 1 * 3 <= 6).
        for offset in [0, 1] {
            at(NOON + offset);
        }
        for offset in 0..6 {
            at(NOON + MINUTE + offset);
        }
        at(NOON + 2 * MINUTE);
        let written = replay(&rules, &events);
        let gk = group_id(&[]);
        assert_eq!(ids(&written), [format!("s/{gk}/{}", NOON + MINUTE)]);
        assert_eq!(written[0].annotations["summary"], "6 after 2");
        // Now the clock passes the close of window 2: the spike down replaces the episode.
        let mut model = Model::new(&rules);
        for event in &events {
            let now = window::parse_ms(&event.timestamp).unwrap_or(0);
            model.tick(now);
            model.apply(rules.evaluate(vec![event.clone()], now), now);
        }
        let written = model.tick(NOON + 3 * MINUTE);
        assert_eq!(ids(&written), [format!("s/{gk}/{}", NOON + 2 * MINUTE)]);
        assert_eq!(written[0].annotations["summary"], "1 after 6");
        assert!(written[0].event.is_none(), "clock-raised records carry no event");
    }

    #[test]
    fn flatline_fires_for_silent_and_expected_groups_and_resolves_on_return() {
        let rules = rules(
            "max_lateness = \"0s\"\n[[rules]]\nname = \"quiet\"\ntype = \"flatline\"\ngroup_by = [\"service\"]\n\
             threshold = 1\nwindow = \"1m\"\nexpect = [\"db\"]\nannotations = { summary = \"{service} sent {count}\" }\n",
        );
        let mut model = Model::new(&rules);
        let apply =
            |model: &mut Model, id, ts| model.apply(rules.evaluate(vec![event(id, ts, "api", Level::Info)], ts), ts);
        assert!(apply(&mut model, 0, NOON).is_empty());
        // Window NOON closes at NOON+1m: api sent 1, db (expected, never seen) sent 0.
        let at_close = model.tick(NOON + MINUTE);
        assert_eq!(ids(&at_close), [format!("quiet/{}/{NOON}", group_id(&["db"]))]);
        assert_eq!(at_close[0].annotations["summary"], "db sent 0");
        assert_eq!(at_close[0].group["service"], "db");
        // api is silent in window NOON+1m.
        let silent = model.tick(NOON + 2 * MINUTE);
        assert_eq!(
            ids(&silent),
            [format!("quiet/{}/{}", group_id(&["api"]), NOON + MINUTE)]
        );
        // Still silent: already firing, nothing new.
        assert!(model.tick(NOON + 3 * MINUTE).is_empty());
        // api comes back: resolved with the same id.
        let back = apply(&mut model, 1, NOON + 3 * MINUTE + 1);
        assert_eq!(
            ids(&back),
            [format!("quiet/{}/{}#resolved", group_id(&["api"]), NOON + MINUTE)]
        );
        assert_eq!(model.resolved().len(), 1);
    }

    #[test]
    fn any_with_cooldown_folds_matches_and_resolves_after_five_minutes() {
        let rules =
            rules("[[rules]]\nname = \"leak\"\ntype = \"any\"\ncooldown = \"1m\"\nfilter = { message = \"boom\" }\n");
        let events: Vec<LogEvent> = [0, 1000, 30_000, 70_000]
            .iter()
            .enumerate()
            .map(|(id, offset)| event(id, NOON + offset, "api", Level::Info))
            .collect();
        let mut model = Model::new(&rules);
        let mut written = Vec::new();
        for event in &events {
            let now = window::parse_ms(&event.timestamp).unwrap_or(0);
            written.extend(model.apply(rules.evaluate(vec![event.clone()], now), now));
        }
        let gk = group_id(&[]);
        assert_eq!(
            ids(&written),
            [format!("leak/{gk}/{NOON}"), format!("leak/{gk}/{}", NOON + 70_000)]
        );
        assert!(model.tick(NOON + 70_000 + ANY_RESOLVE_AFTER_MS - 1).is_empty());
        let resolved = model.tick(NOON + 70_000 + ANY_RESOLVE_AFTER_MS);
        assert_eq!(ids(&resolved), [format!("leak/{gk}/{}#resolved", NOON + 70_000)]);
    }

    /// Floor division the long way, for the property below.
    fn naive_window_start(ts: i64, window: i64) -> i64 {
        let mut start = (ts / window) * window;
        if start > ts {
            start -= window;
        }
        start
    }

    proptest! {
        #[test]
        fn window_start_is_the_aligned_floor(ts in -10_000_000_000_000i64..10_000_000_000_000, window in 1u64..100_000_000) {
            let start = window::window_start(ts, window);
            prop_assert_eq!(start, naive_window_start(ts, window as i64));
            prop_assert!(start <= ts && ts < start + window as i64);
            prop_assert_eq!(start.rem_euclid(window as i64), 0);
        }

        /// Without cooldown or lateness, frequency fires exactly for the (group, window)
        /// pairs a naive per-window counter finds at or above the threshold, however the
        /// events are packed into items and however the groups interleave. (Events come in
        /// time order: a window before a group's last firing is within its cooldown.)
        #[test]
        fn frequency_fires_where_a_naive_counter_says(
            mut events in proptest::collection::vec((0i64..600_000, 0usize..3), 0..120),
            threshold in 1u64..5,
            item_size in 1usize..5,
        ) {
            let text = format!(
                "max_lateness = \"1y\"\n[[rules]]\nname = \"f\"\ntype = \"frequency\"\ngroup_by = [\"service\"]\n\
                 threshold = {threshold}\nwindow = \"1m\"\ncooldown = \"0s\"\n"
            );
            events.sort_unstable_by_key(|(offset, _)| *offset);
            let rules = rules(&text);
            let services = ["api", "db", "web"];
            let log_events: Vec<LogEvent> = events
                .iter()
                .enumerate()
                .map(|(id, (offset, service))| event(id, NOON + offset, services[*service], Level::Info))
                .collect();
            let mut model = Model::new(&rules);
            let mut fired = std::collections::BTreeSet::new();
            for item in log_events.chunks(item_size) {
                for alert in model.apply(rules.evaluate(item.to_vec(), LATER_MS), 0) {
                    prop_assert!(fired.insert(alert.alert_id.clone()), "fired twice: {}", alert.alert_id);
                    prop_assert!(alert.count >= threshold);
                }
            }
            let mut naive: BTreeMap<(usize, i64), u64> = BTreeMap::new();
            for (offset, service) in &events {
                *naive.entry((*service, naive_window_start(NOON + offset, MINUTE))).or_default() += 1;
            }
            let expected: std::collections::BTreeSet<String> = naive
                .into_iter()
                .filter(|(_, count)| *count >= threshold)
                .map(|((service, start), _)| format!("f/{}/{start}", group_id(&[services[service]])))
                .collect();
            prop_assert_eq!(fired, expected);
        }

        /// With a cooldown and events in time order, a window at or above the threshold
        /// fires when no earlier firing of its group is within the cooldown.
        #[test]
        fn frequency_cooldown_skips_windows_as_a_naive_scan_says(
            mut offsets in proptest::collection::vec(0i64..1_200_000, 0..150),
            threshold in 1u64..4,
            cooldown_minutes in 0i64..5,
        ) {
            offsets.sort_unstable();
            let text = format!(
                "max_lateness = \"1y\"\n[[rules]]\nname = \"f\"\ntype = \"frequency\"\nthreshold = {threshold}\n\
                 window = \"1m\"\ncooldown = \"{cooldown_minutes}m\"\n"
            );
            let rules = rules(&text);
            let mut model = Model::new(&rules);
            let mut fired = Vec::new();
            for (id, offset) in offsets.iter().enumerate() {
                let item = vec![event(id, NOON + offset, "api", Level::Info)];
                fired.extend(model.apply(rules.evaluate(item, LATER_MS), 0).into_iter().map(|alert| alert.alert_id));
            }
            let mut per_window: BTreeMap<i64, u64> = BTreeMap::new();
            for offset in &offsets {
                *per_window.entry(naive_window_start(NOON + offset, MINUTE)).or_default() += 1;
            }
            let mut expected = Vec::new();
            let mut last_fired: Option<i64> = None;
            for (start, count) in per_window {
                let cooled = last_fired.is_none_or(|last| start >= last + cooldown_minutes * MINUTE);
                if count >= threshold && cooled {
                    expected.push(format!("f/{}/{start}", group_id(&[])));
                    last_fired = Some(start);
                }
            }
            prop_assert_eq!(fired, expected);
        }
    }
}
