//! What the evaluation of one input item hands to the settle script: the contract between
//! [`super`] (filters, group keys, windows, templates: pure Rust) and the rule state kept in
//! Redis by [`crate::broker::scripts::SETTLE`]. See `docs/ALERTING.md` for the semantics.

use super::dedup::Slot;
use crate::police::alert::Alert;

/// Rule parameters the settle script needs, sent once per settle call (indexed by
/// [`RuleUpdate::rule_index`]). Only rules with Redis state appear here.
#[derive(Debug, Clone, PartialEq)]
pub struct StatefulRule {
    pub name: String,
    pub kind: StatefulKind,
    pub window_ms: u64,
    /// frequency: fire at `count >= threshold`; flatline: fire at `count < threshold`.
    pub threshold: u64,
    pub cooldown_ms: u64,
    pub max_lateness_ms: u64,
    /// spike only.
    pub ratio: f64,
    /// spike only.
    pub min_count: u64,
    /// spike only: whether an upward spike fires on increment (up, both).
    pub spike_up: bool,
    /// spike only: whether a downward spike fires at window close (down, both).
    pub spike_down: bool,
    /// Group keys tracked at most (`seen:<rule>`); matches of further groups are not counted.
    pub max_groups: u64,
    /// A group without a match for this long (wall clock) is forgotten by the clock.
    pub forget_after_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatefulKind {
    /// `any` with a cooldown above zero.
    AnyWithCooldown,
    Frequency,
    Spike,
    Flatline,
}

/// Group key of an event under a rule: the `group_by` values in order (`<none>` where
/// missing, each cut at 256 bytes) and their id, 16 hex digits of FNV-1a 64 over the JSON
/// array of the values.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    pub id: String,
    /// JSON array of the values, as hashed.
    pub values_json: String,
}

/// Matches of one rule, one group key and one window within one input item.
#[derive(Debug, Clone)]
pub struct RuleUpdate {
    pub rule_index: usize,
    /// Shared by every update of the group in a settle call: one allocation per group.
    pub group: std::sync::Arc<GroupKey>,
    /// Window start (ms since the epoch); for `any` with a cooldown, the event's time.
    pub window_start_ms: i64,
    pub matches: u64,
    pub first_event_ms: i64,
    pub last_event_ms: i64,
    /// The alert record this update raises if it fires, complete but for the figures only
    /// the script knows: `alert_id` and `count` are set by the script, and in rendered
    /// labels and annotations the figures `count` and `previous_count` are written as
    /// [`FIGURE_MARK`]`count`[`FIGURE_MARK`] (event text never holds the mark: it is
    /// replaced by U+FFFD when rendered).
    /// `None` where an earlier item of the same settle call drafted this (rule, group key,
    /// window) already (see [`super::evaluate::BatchDrafts`]); an item evaluated alone
    /// ([`super::RuleSet::evaluate`]) drafts every update. Boxed: most updates carry none,
    /// and an update is moved and held per item and batch.
    pub draft: Option<Box<Alert>>,
}

/// Brackets a figure the script fills in (see [`RuleUpdate::draft`]).
pub const FIGURE_MARK: char = '\u{1}';

/// Everything one input item (stream entry or list item) gives the rules.
#[derive(Debug, Default)]
pub struct ItemPlan {
    /// Alerts of `any` rules without cooldown: one per matching event, written as they are.
    pub alerts: Vec<Alert>,
    /// The script drops an update whose window closed more than `max_lateness` before the
    /// newest event the rule has seen, and counts its matches as late.
    pub updates: Vec<RuleUpdate>,
    /// The events of our agents among the updates' matches, each with its dedup bit (see
    /// [`super::dedup`]): SETTLE takes a duplicate's matches off its updates.
    pub marks: Vec<EventMark>,
}

/// One event of our agents that feeds stateful rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMark {
    pub slot: Slot,
    /// Positions in [`ItemPlan::updates`] of the updates it is one match of (each once);
    /// empty when it is one match of every update of the item (most events: no allocation).
    pub updates: Vec<usize>,
}
