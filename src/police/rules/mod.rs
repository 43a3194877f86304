//! Alert rules: the rule file ([`file`]), filters, templates, group keys and windows, and
//! the evaluation of one input item into an [`plan::ItemPlan`] for the settle script
//! ([`evaluate`]). Pure Rust: the rule state lives in Redis, written by the settle script;
//! [`model`] is the reference reading of its semantics (`docs/ALERTING.md`).
//!
//! Invariants:
//! - a [`RuleSet`] is immutable once compiled; a reload builds a new one and swaps it whole
//!   (an `Arc`), so one input item is always evaluated under one rule set
//! - rule names are unique and match `[A-Za-z0-9_.-]+`: they appear in alert ids and keys
//! - the rule kinds are a closed enum: a `match` shows every kind in one place

pub mod dedup;
pub mod evaluate;
pub mod field;
pub mod file;
pub mod filter;
pub mod group;
pub mod model;
pub mod plan;
pub mod replay;
pub mod template;
pub mod window;

use std::collections::BTreeMap;

use crate::delivery::config::SinkConfig;
use crate::event::Level;
use crate::police::alert::{Alert, AlertStatus};
use field::Field;
use filter::Filter;
use plan::{GroupKey, StatefulKind, StatefulRule};
use template::Template;

pub use file::{Located, RuleFileError};

/// Events older than the newest window by more than this feed only `any` rules, unless the
/// file sets `max_lateness`.
pub const DEFAULT_MAX_LATENESS_MS: u64 = 60_000;
/// Per rule and group key, unless the rule sets `cooldown`.
pub const DEFAULT_COOLDOWN_MS: u64 = 60_000;
/// Group keys tracked per rule unless the file sets `max_groups`: beyond it the matches of
/// new groups are not counted (counted as `over_limit` instead).
pub const DEFAULT_MAX_GROUPS: u64 = 10_000;
/// The least default `forget_after` (see [`file::default_forget_after_ms`]).
pub const MIN_DEFAULT_FORGET_AFTER_MS: u64 = 60 * 60_000;
/// Severity of a rule that sets none.
pub const DEFAULT_SEVERITY: &str = "warning";
/// Name of the built-in rule used when no rule file is given.
pub const BUILTIN_RULE: &str = "critical";

/// Spike direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
    Both,
}

/// What kind of rule, with the keys of that kind.
#[derive(Debug, Clone)]
pub enum RuleKind {
    /// Every matching event.
    Any,
    /// At least `threshold` matches within one window.
    Frequency { threshold: u64, window_ms: u64 },
    /// The current window's count against the previous one's.
    Spike {
        window_ms: u64,
        ratio: f64,
        direction: Direction,
        min_count: u64,
    },
    /// Fewer than `threshold` matches within a window, for a group seen before or expected.
    Flatline {
        threshold: u64,
        window_ms: u64,
        /// Groups that must be seen even if they never were.
        expect: Vec<GroupKey>,
    },
}

impl RuleKind {
    /// `any`, `frequency`, `spike`, `flatline`: the `type` key and the record's `type`.
    pub fn type_name(&self) -> &'static str {
        match self {
            RuleKind::Any => "any",
            RuleKind::Frequency { .. } => "frequency",
            RuleKind::Spike { .. } => "spike",
            RuleKind::Flatline { .. } => "flatline",
        }
    }

    pub fn window_ms(&self) -> Option<u64> {
        match self {
            RuleKind::Any => None,
            RuleKind::Frequency { window_ms, .. }
            | RuleKind::Spike { window_ms, .. }
            | RuleKind::Flatline { window_ms, .. } => Some(*window_ms),
        }
    }
}

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub kind: RuleKind,
    pub filter: Filter,
    /// The `group_by` names and the fields they read.
    pub group_by: Vec<(String, Field)>,
    pub severity: String,
    pub labels: Vec<(String, Template)>,
    pub annotations: Vec<(String, Template)>,
    pub cooldown_ms: u64,
    /// Group keys tracked at most; the matches of further groups are counted as over the
    /// limit, not evaluated.
    pub max_groups: u64,
    /// A group without a match for this long (wall clock) is forgotten.
    pub forget_after_ms: u64,
    /// Sinks the alerts are routed to.
    pub sinks: Vec<String>,
    /// Index into [`RuleSet::stateful_rules`] for rules with Redis state.
    pub stateful_index: Option<usize>,
}

impl Rule {
    /// The kind the settle script knows this rule by, if it keeps state for it.
    fn stateful_kind(&self) -> Option<StatefulKind> {
        match self.kind {
            RuleKind::Any if self.cooldown_ms == 0 => None,
            RuleKind::Any => Some(StatefulKind::AnyWithCooldown),
            RuleKind::Frequency { .. } => Some(StatefulKind::Frequency),
            RuleKind::Spike { .. } => Some(StatefulKind::Spike),
            RuleKind::Flatline { .. } => Some(StatefulKind::Flatline),
        }
    }
}

/// A compiled rule file (or the built-in rule).
#[derive(Debug, Clone)]
pub struct RuleSet {
    rules: Vec<Rule>,
    sinks: BTreeMap<String, SinkConfig>,
    max_lateness_ms: u64,
    /// Positions in `rules` of the stateful rules, in [`plan::RuleUpdate::rule_index`] order.
    stateful_positions: Vec<usize>,
    lowest_level: Level,
}

impl RuleSet {
    /// Builds the set from compiled rules: numbers the stateful ones, finds the lowest level.
    fn assemble(mut rules: Vec<Rule>, sinks: BTreeMap<String, SinkConfig>, max_lateness_ms: u64) -> RuleSet {
        let mut stateful_positions = Vec::new();
        for (position, rule) in rules.iter_mut().enumerate() {
            rule.stateful_index = rule.stateful_kind().map(|_| {
                stateful_positions.push(position);
                stateful_positions.len() - 1
            });
        }
        let lowest_level = rules
            .iter()
            .map(|rule| rule.filter.lowest_level())
            .min()
            .unwrap_or(Level::Emergency);
        RuleSet {
            rules,
            sinks,
            max_lateness_ms,
            stateful_positions,
            lowest_level,
        }
    }

    /// The built-in rule `critical`: `any` event at `alert_level` or above, an alert per
    /// event (cooldown 0), severity `critical`, routed to `sinks`.
    pub fn builtin(alert_level: Level, sinks: Vec<String>) -> RuleSet {
        let rule = Rule {
            name: BUILTIN_RULE.to_string(),
            kind: RuleKind::Any,
            filter: Filter::MinLevel(alert_level),
            group_by: Vec::new(),
            severity: "critical".to_string(),
            labels: Vec::new(),
            annotations: Vec::new(),
            cooldown_ms: 0,
            max_groups: DEFAULT_MAX_GROUPS,
            forget_after_ms: MIN_DEFAULT_FORGET_AFTER_MS,
            sinks,
            stateful_index: None,
        };
        RuleSet::assemble(vec![rule], BTreeMap::new(), DEFAULT_MAX_LATENESS_MS)
    }

    /// Parses and compiles a rule file's text; `origin` names the file in the errors.
    /// May take a while for many regexes: async callers run it in `spawn_blocking`.
    pub fn parse(origin: &str, text: &str) -> Result<RuleSet, RuleFileError> {
        file::compile(origin, text)
    }

    /// Reads and compiles the rule file at `path` (blocking).
    pub fn load(path: &std::path::Path) -> Result<RuleSet, RuleFileError> {
        file::load(path)
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn sinks(&self) -> &BTreeMap<String, SinkConfig> {
        &self.sinks
    }

    pub fn max_lateness_ms(&self) -> u64 {
        self.max_lateness_ms
    }

    /// Lowest level any rule can match: events below it need not be decoded. A rule
    /// without a level filter makes it [`Level::Unknown`], the lowest.
    pub fn lowest_level(&self) -> Level {
        self.lowest_level
    }

    /// The rules with Redis state (any with cooldown > 0, frequency, spike, flatline); the
    /// index in this list is [`plan::RuleUpdate::rule_index`].
    pub fn stateful_rules(&self) -> Vec<StatefulRule> {
        self.stateful_positions
            .iter()
            .map(|position| self.stateful_rule(&self.rules[*position]))
            .collect()
    }

    fn stateful_rule(&self, rule: &Rule) -> StatefulRule {
        let kind = rule.stateful_kind().expect("only stateful rules are numbered");
        let mut stateful = StatefulRule {
            name: rule.name.clone(),
            kind,
            window_ms: rule.kind.window_ms().unwrap_or(0),
            threshold: 0,
            cooldown_ms: rule.cooldown_ms,
            max_lateness_ms: self.max_lateness_ms,
            ratio: 0.0,
            min_count: 0,
            spike_up: false,
            spike_down: false,
            max_groups: rule.max_groups,
            forget_after_ms: rule.forget_after_ms,
        };
        match &rule.kind {
            RuleKind::Any => {}
            RuleKind::Frequency { threshold, .. } | RuleKind::Flatline { threshold, .. } => {
                stateful.threshold = *threshold;
            }
            RuleKind::Spike {
                ratio,
                direction,
                min_count,
                ..
            } => {
                stateful.ratio = *ratio;
                stateful.min_count = *min_count;
                stateful.spike_up = matches!(direction, Direction::Up | Direction::Both);
                stateful.spike_down = matches!(direction, Direction::Down | Direction::Both);
            }
        }
        stateful
    }

    /// The stateful rule numbered `rule_index`.
    pub fn stateful(&self, rule_index: usize) -> Option<&Rule> {
        self.stateful_positions
            .get(rule_index)
            .map(|position| &self.rules[*position])
    }

    /// Groups a flatline rule must see (`expect`); empty for other rules.
    pub fn expected_groups(&self, rule_index: usize) -> &[GroupKey] {
        match self.stateful(rule_index).map(|rule| &rule.kind) {
            Some(RuleKind::Flatline { expect, .. }) => expect,
            _ => &[],
        }
    }

    /// The stateful rules of `self` whose state `new` can no longer use, by index in
    /// [`Self::stateful_rules`], with the reason their episodes resolve: removed (or no
    /// longer stateful), or changed in type, window or `group_by` (counts and group keys
    /// of the old rule mean something else under the new one).
    pub fn retired_by(&self, new: &RuleSet) -> Vec<(usize, &'static str)> {
        let identity = |rule: &Rule| {
            let group_by: Vec<&str> = rule.group_by.iter().map(|(name, _)| name.as_str()).collect();
            (rule.stateful_kind(), rule.kind.window_ms(), group_by.join("\u{1}"))
        };
        let mut retired = Vec::new();
        for (index, position) in self.stateful_positions.iter().enumerate() {
            let old = &self.rules[*position];
            let successor = new
                .stateful_positions
                .iter()
                .map(|position| &new.rules[*position])
                .find(|rule| rule.name == old.name);
            match successor {
                None => retired.push((index, "rule removed by a reload")),
                Some(rule) if identity(rule) != identity(old) => {
                    retired.push((index, "rule changed by a reload (type, window or group_by)"))
                }
                Some(_) => {}
            }
        }
        retired
    }

    /// A draft record raised by the clock (flatline, spike down) for `group` of the stateful
    /// rule `rule_index`, for the window starting at `window_start_ms`: no event, templates
    /// rendered with the group values (event fields `<none>`), `count` and `previous_count`
    /// marked, `alert_id` empty (set by whoever fires it).
    pub fn clock_draft(&self, rule_index: usize, group: &GroupKey, window_start_ms: i64, now_ms: i64) -> Option<Alert> {
        let rule = self.stateful(rule_index)?;
        let group_values = group::values_of(group).unwrap_or_default();
        let window_end = window_start_ms.saturating_add(rule.kind.window_ms().unwrap_or(0) as i64);
        let first = window::rfc3339(window_start_ms);
        let last = window::rfc3339(window_end);
        let context = template::Context {
            event: None,
            group_values: &group_values,
            counts: template::Counts::Marked,
            first_event_time: &first,
            last_event_time: &last,
        };
        Some(rule.alert(&context, &group_values, 0, &window::rfc3339(now_ms)))
    }
}

impl Rule {
    /// An alert record of this rule, templates rendered in `context`, `alert_id` empty.
    fn alert(&self, context: &template::Context<'_>, group_values: &[String], count: u64, raised_at: &str) -> Alert {
        let render_all = |templates: &[(String, Template)]| {
            templates
                .iter()
                .map(|(name, template)| (name.clone(), template.render(context)))
                .collect()
        };
        Alert {
            alert_id: String::new(),
            rule: self.name.clone(),
            rule_type: self.kind.type_name().to_string(),
            status: AlertStatus::Firing,
            severity: self.severity.clone(),
            group: self
                .group_by
                .iter()
                .map(|(name, _)| name.clone())
                .zip(group_values.iter().cloned())
                .collect(),
            labels: render_all(&self.labels),
            annotations: render_all(&self.annotations),
            count,
            first_event_time: context.first_event_time.to_string(),
            last_event_time: context.last_event_time.to_string(),
            raised_at: raised_at.to_string(),
            sinks: self.sinks.clone(),
            event: None,
        }
    }
}
