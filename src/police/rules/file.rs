//! The rule file (TOML, `docs/ALERTING.md`): parsing and checking into a [`RuleSet`].
//!
//! Invariants:
//! - every error names its place as `FILE:LINE:COL: message` (line and column from 1, the
//!   column in characters); a file whose TOML parses reports all its errors, not the first
//! - unknown keys are errors at every level (`deny_unknown_fields`), so a typo never
//!   silently disables a rule
//! - checking reads no secret: sink tables are parsed, never resolved
//! - regexes are compiled with a size limit: a hostile file cannot make one take more than
//!   [`REGEX_SIZE_LIMIT`] bytes compiled, nor its lazy DFA more than [`REGEX_DFA_SIZE_LIMIT`],
//!   nor all of them together more than [`MAX_TOTAL_REGEX_BYTES`]
//! - every count a rule compares (`threshold`, `min_count`) is at most [`MAX_COUNT`], where
//!   the rule scripts' Lua numbers (doubles) still count exactly

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeValue, ValueDeserializer};

use super::field::{EXTRA_PREFIX, Field};
use super::filter::Filter;
use super::group;
use super::plan::GroupKey;
use super::template::{Names, Template};
use super::{
    DEFAULT_COOLDOWN_MS, DEFAULT_MAX_GROUPS, DEFAULT_MAX_LATENESS_MS, DEFAULT_SEVERITY, Direction,
    MIN_DEFAULT_FORGET_AFTER_MS, Rule, RuleKind, RuleSet,
};
use crate::delivery::config::SinkConfig;
use crate::event::Level;

/// Largest rule file read: a rule file is written by hand; anything bigger is a mistake.
pub const MAX_FILE_BYTES: u64 = 4 << 20;
/// Compiled size of one regex: far above what a hand-written filter needs (a few KiB),
/// and small enough that hundreds of them stay within a few hundred MiB at worst.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Lazy DFA cache of one regex (per thread): the regex crate's default is 2 MiB; 1 MiB
/// keeps a file of many regexes bounded and costs little speed on short log lines.
pub const REGEX_DFA_SIZE_LIMIT: usize = 1 << 20;
/// What the regexes of one file may take together: each is charged its compiled size plus
/// its whole lazy DFA cache ([`REGEX_DFA_SIZE_LIMIT`], what it may grow to on hostile log
/// lines), so about 250 regex filters fit; real files use tens.
pub const MAX_TOTAL_REGEX_BYTES: usize = 256 << 20;
/// Largest `threshold` or `min_count`: 2^53, up to which every integer is exact in a double
/// (the rule scripts' Lua numbers), so a count never rounds past its threshold unseen.
pub const MAX_COUNT: u64 = 1 << 53;
/// Longest window, cooldown or lateness: a year as humantime reads `1y` (365.25 days).
/// Longer ones are mistakes, and window arithmetic stays far from overflow.
const MAX_DURATION_MS: u64 = 31_557_600_000;

/// One problem, at a place in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RuleFileError {
    #[error("{path}: cannot read the rule file: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render_errors(.origin, .errors))]
    Invalid { origin: String, errors: Vec<Located> },
}

impl RuleFileError {
    /// Every error as `FILE:LINE:COL: message`, one per entry.
    pub fn lines(&self) -> Vec<String> {
        match self {
            RuleFileError::Read { .. } => vec![self.to_string()],
            RuleFileError::Invalid { origin, errors } => errors
                .iter()
                .map(|error| format!("{origin}:{}:{}: {}", error.line, error.column, error.message))
                .collect(),
        }
    }
}

fn render_errors(origin: &str, errors: &[Located]) -> String {
    errors
        .iter()
        .map(|error| format!("{origin}:{}:{}: {}", error.line, error.column, error.message))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads and compiles the file at `path` (blocking).
pub fn load(path: &std::path::Path) -> Result<RuleSet, RuleFileError> {
    let origin = path.display().to_string();
    let read_error = |source| RuleFileError::Read {
        path: origin.clone(),
        source,
    };
    let at_start = |message: String| RuleFileError::Invalid {
        origin: origin.clone(),
        errors: vec![Located {
            line: 1,
            column: 1,
            message,
        }],
    };
    // A device or a FIFO would be read without end (`/dev/zero`) or block for good.
    if !std::fs::metadata(path).map_err(read_error)?.is_file() {
        return Err(at_start("not a regular file".to_string()));
    }
    // Bounded by the read itself, not by the size the file had a moment before.
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(std::fs::File::open(path).map_err(read_error)?, MAX_FILE_BYTES + 1),
        &mut bytes,
    )
    .map_err(read_error)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(at_start(format!(
            "rule file is more than the {MAX_FILE_BYTES} bytes allowed"
        )));
    }
    let text = String::from_utf8(bytes).map_err(|_| at_start("rule file is not UTF-8".to_string()))?;
    compile(&origin, &text)
}

/// The errors found so far, placed by byte offset in `text`.
struct Errors<'text> {
    text: &'text str,
    list: Vec<(usize, String)>,
}

impl Errors<'_> {
    fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.list.push((span.start, message.into()));
    }

    fn toml(&mut self, error: &toml::de::Error) {
        let message = error.message().trim_end().replace('\n', "; ");
        self.at(error.span().unwrap_or(0..0), message);
    }

    fn into_located(mut self) -> Vec<Located> {
        // Errors in file order; one place may hold several.
        self.list.sort_by_key(|(offset, _)| *offset);
        self.list
            .into_iter()
            .map(|(offset, message)| {
                let (line, column) = line_and_column(self.text, offset);
                Located { line, column, message }
            })
            .collect()
    }
}

/// Memory charged to the regexes compiled so far (see [`MAX_TOTAL_REGEX_BYTES`]).
#[derive(Debug, Default)]
struct RegexBudget {
    charged_bytes: usize,
}

/// Line and column (from 1; the column in characters) of byte `offset` of `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawKind {
    Any,
    Frequency,
    Spike,
    Flatline,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawDirection {
    Up,
    Down,
    Both,
}

#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "an expected group is its value (a string) or, with several group_by fields, a list of its values"
)]
enum RawExpected {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    #[serde(rename = "type")]
    kind: Spanned<RawKind>,
    filter: Option<Spanned<RawFilter>>,
    #[serde(default)]
    group_by: Vec<Spanned<String>>,
    severity: Option<Spanned<String>>,
    #[serde(default)]
    labels: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    annotations: BTreeMap<String, Spanned<String>>,
    cooldown: Option<Spanned<String>>,
    sinks: Option<Vec<Spanned<String>>>,
    threshold: Option<Spanned<u64>>,
    window: Option<Spanned<String>>,
    ratio: Option<Spanned<f64>>,
    direction: Option<Spanned<RawDirection>>,
    min_count: Option<Spanned<u64>>,
    expect: Option<Vec<Spanned<RawExpected>>>,
    max_groups: Option<Spanned<u64>>,
    forget_after: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilter {
    level: Option<Spanned<String>>,
    field: Option<Spanned<String>>,
    equals: Option<Spanned<String>>,
    #[serde(rename = "in")]
    in_list: Option<Spanned<Vec<String>>>,
    regex: Option<Spanned<String>>,
    message: Option<Spanned<String>>,
    all: Option<Vec<Spanned<RawFilter>>>,
    any: Option<Vec<Spanned<RawFilter>>>,
    not: Option<Box<Spanned<RawFilter>>>,
}

/// Parses and compiles `text`; `origin` names the file in the errors.
pub fn compile(origin: &str, text: &str) -> Result<RuleSet, RuleFileError> {
    let mut errors = Errors { text, list: Vec::new() };
    let compiled = compile_document(text, &mut errors);
    match compiled {
        Some(rule_set) if errors.list.is_empty() => Ok(rule_set),
        _ => Err(RuleFileError::Invalid {
            origin: origin.to_string(),
            errors: errors.into_located(),
        }),
    }
}

fn compile_document(text: &str, errors: &mut Errors<'_>) -> Option<RuleSet> {
    let root = match toml::de::DeTable::parse(text) {
        Ok(root) => root.into_inner(),
        Err(error) => {
            errors.toml(&error);
            return None;
        }
    };
    let mut max_lateness_ms = DEFAULT_MAX_LATENESS_MS;
    let mut bounds = Bounds::default();
    let mut sinks = BTreeMap::new();
    let mut raw_rules = Vec::new();
    for (key, value) in root {
        match key.get_ref().as_ref() {
            "max_lateness" => {
                if let Some(ms) = duration_value(&value, "max_lateness", errors) {
                    max_lateness_ms = ms;
                }
            }
            "max_groups" => match value.get_ref() {
                DeValue::Integer(number) => {
                    match u64::from_str_radix(&number.as_str().replace('_', ""), number.radix()) {
                        Ok(limit) if limit >= 1 => bounds.max_groups = limit,
                        _ => errors.at(value.span(), "max_groups must be a whole number of at least 1"),
                    }
                }
                _ => errors.at(value.span(), "max_groups must be a whole number of at least 1"),
            },
            "forget_after" => bounds.forget_after_ms = duration_value(&value, "forget_after", errors),
            "sinks" => sinks = compile_sinks(value, errors),
            "rules" => {
                let span = value.span();
                match value.into_inner() {
                    DeValue::Array(elements) => raw_rules = elements.iter().cloned().collect(),
                    _ => errors.at(span, "rules must be an array of tables ([[rules]])"),
                }
            }
            other => errors.at(
                key.span(),
                format!("unknown key {other:?} (expected max_lateness, max_groups, forget_after, sinks, rules)"),
            ),
        }
    }
    let sink_names: Vec<String> = sinks.keys().cloned().collect();
    let mut regex_budget = RegexBudget::default();
    let mut rules = Vec::new();
    let mut names_seen = BTreeSet::new();
    for element in raw_rules {
        let Some((raw, dropped_keys)) = deserialize_rule(element, errors) else {
            continue;
        };
        if !names_seen.insert(raw.name.get_ref().clone()) {
            errors.at(raw.name.span(), format!("duplicate rule name {:?}", raw.name.get_ref()));
        }
        if let Some(rule) = compile_rule(raw, &dropped_keys, &sink_names, &bounds, &mut regex_budget, errors) {
            rules.push(rule);
        }
    }
    Some(RuleSet::assemble(rules, sinks, max_lateness_ms))
}

/// Keys of a rule table.
const RULE_KEYS: [&str; 17] = [
    "name",
    "type",
    "filter",
    "group_by",
    "severity",
    "labels",
    "annotations",
    "cooldown",
    "sinks",
    "threshold",
    "window",
    "ratio",
    "direction",
    "min_count",
    "expect",
    "max_groups",
    "forget_after",
];
/// Keys of a filter table.
const FILTER_KEYS: [&str; 9] = [
    "level", "field", "equals", "in", "regex", "message", "all", "any", "not",
];
/// Type errors reported per rule before giving up on it.
const MAX_ERRORS_PER_RULE: usize = 16;

/// A rule table as [`RawRule`], reporting every unknown key and every value of the wrong
/// type, not only the first: each is reported, then dropped and the rest read again.
/// Returns the rule and the keys dropped for a wrong type (not to be reported again as
/// missing). `None` if `name` or `type` cannot be read.
fn deserialize_rule(element: Spanned<DeValue<'_>>, errors: &mut Errors<'_>) -> Option<(RawRule, Vec<String>)> {
    let span = element.span();
    let DeValue::Table(mut table) = element.into_inner() else {
        errors.at(span, "a rule must be a table ([[rules]])");
        return None;
    };
    drop_unknown_keys(&mut table, &RULE_KEYS, "rule", errors);
    if let Some(filter) = table.get_mut("filter") {
        drop_unknown_filter_keys(filter, errors);
    }
    let mut dropped_keys = Vec::new();
    for _ in 0..MAX_ERRORS_PER_RULE {
        let value = Spanned::new(span.clone(), DeValue::Table(table.clone()));
        let error = match RawRule::deserialize(ValueDeserializer::from(value)) {
            Ok(raw) => return Some((raw, dropped_keys)),
            Err(error) => error,
        };
        errors.toml(&error);
        let at = error.span()?.start;
        let culprit = table
            .iter()
            .find(|(key, value)| key.span().contains(&at) || value.span().contains(&at))
            .map(|(key, _)| key.get_ref().to_string());
        match culprit {
            Some(key) if key != "name" && key != "type" => {
                table.remove(key.as_str());
                dropped_keys.push(key);
            }
            _ => return None,
        }
    }
    None
}

fn drop_unknown_keys(table: &mut toml::de::DeTable<'_>, known: &[&str], what: &str, errors: &mut Errors<'_>) {
    let unknown: Vec<(String, Range<usize>)> = table
        .iter()
        .filter(|(key, _)| !known.contains(&key.get_ref().as_ref()))
        .map(|(key, _)| (key.get_ref().to_string(), key.span()))
        .collect();
    for (name, span) in unknown {
        errors.at(
            span,
            format!(
                "unknown key {name:?} in a {what} (expected one of {})",
                known.join(", ")
            ),
        );
        table.remove(name.as_str());
    }
}

fn drop_unknown_filter_keys(filter: &mut Spanned<DeValue<'_>>, errors: &mut Errors<'_>) {
    let DeValue::Table(table) = filter.get_mut() else {
        return;
    };
    drop_unknown_keys(table, &FILTER_KEYS, "filter", errors);
    for (key, value) in table.iter_mut() {
        match (key.get_ref().as_ref(), value.get_mut()) {
            ("not", _) => drop_unknown_filter_keys(value, errors),
            ("all" | "any", DeValue::Array(parts)) => {
                for part in parts.iter_mut() {
                    drop_unknown_filter_keys(part, errors);
                }
            }
            _ => {}
        }
    }
}

fn compile_sinks(value: Spanned<DeValue<'_>>, errors: &mut Errors<'_>) -> BTreeMap<String, SinkConfig> {
    let mut sinks = BTreeMap::new();
    let span = value.span();
    let DeValue::Table(table) = value.into_inner() else {
        errors.at(span, "sinks must be a table of sinks ([sinks.NAME])");
        return sinks;
    };
    for (name, sink_value) in table {
        let name_text = name.get_ref().to_string();
        if !is_name(&name_text, false) {
            errors.at(
                name.span(),
                format!("bad sink name {name_text:?}: use letters, digits, '_' and '-'"),
            );
        }
        match SinkConfig::deserialize(ValueDeserializer::from(sink_value)) {
            Ok(sink) => {
                sinks.insert(name_text, sink);
            }
            Err(error) => {
                // Still known by name, so that rules naming it do not add a second error.
                errors.toml(&error);
                sinks.insert(
                    name_text,
                    SinkConfig::Console {
                        max_attempts: None,
                        rate_limit: None,
                    },
                );
            }
        }
    }
    sinks
}

/// `[A-Za-z0-9_-]+`, and `.` too for rule names.
fn is_name(name: &str, dots: bool) -> bool {
    !name.is_empty()
        && name.chars().all(|character| {
            character.is_ascii_alphanumeric() || character == '_' || character == '-' || (dots && character == '.')
        })
}

fn duration_value(value: &Spanned<DeValue<'_>>, key: &str, errors: &mut Errors<'_>) -> Option<u64> {
    let Some(text) = value.get_ref().as_str() else {
        errors.at(
            value.span(),
            format!("{key} must be a duration like \"30s\", \"5m\" or \"1h\""),
        );
        return None;
    };
    parse_duration(text, value.span(), key, errors)
}

fn duration(text: &Spanned<String>, key: &str, errors: &mut Errors<'_>) -> Option<u64> {
    parse_duration(text.get_ref(), text.span(), key, errors)
}

/// Milliseconds of a duration written `30s`, `5m`, `1h 30m` (humantime).
fn parse_duration(text: &str, span: Range<usize>, key: &str, errors: &mut Errors<'_>) -> Option<u64> {
    match humantime::parse_duration(text.trim()) {
        Ok(parsed) => {
            let ms = u64::try_from(parsed.as_millis()).unwrap_or(u64::MAX);
            if ms > MAX_DURATION_MS {
                errors.at(span, format!("{key} {text:?} is longer than a year"));
                return None;
            }
            Some(ms)
        }
        Err(error) => {
            errors.at(
                span,
                format!("bad duration {text:?} for {key}: {error} (write e.g. \"30s\", \"5m\", \"1h\")"),
            );
            None
        }
    }
}

/// Per-type keys: which ones a type takes.
const TYPE_KEYS: [(&str, &[&str]); 4] = [
    ("any", &[]),
    ("frequency", &["threshold", "window"]),
    ("spike", &["window", "ratio", "direction", "min_count"]),
    ("flatline", &["threshold", "window", "expect"]),
];

/// The file's defaults for the bounds of the rule state (`max_groups`, `forget_after`).
struct Bounds {
    max_groups: u64,
    /// `None`: [`default_forget_after_ms`] of each rule.
    forget_after_ms: Option<u64>,
}

impl Default for Bounds {
    fn default() -> Bounds {
        Bounds {
            max_groups: DEFAULT_MAX_GROUPS,
            forget_after_ms: None,
        }
    }
}

/// A group not seen for this long is forgotten unless the file says otherwise: ten
/// windows (`any`: ten cooldowns), at least an hour, so that a group quiet for a few
/// windows still counts as known (flatline keeps expecting it).
pub fn default_forget_after_ms(kind: &RuleKind, cooldown_ms: u64) -> u64 {
    let period = kind.window_ms().unwrap_or(cooldown_ms);
    period.saturating_mul(10).max(MIN_DEFAULT_FORGET_AFTER_MS)
}

fn compile_rule(
    raw: RawRule,
    dropped_keys: &[String],
    sink_names: &[String],
    bounds: &Bounds,
    regex_budget: &mut RegexBudget,
    errors: &mut Errors<'_>,
) -> Option<Rule> {
    let error_count = errors.list.len();
    let name = raw.name.get_ref().clone();
    if !is_name(&name, true) {
        errors.at(
            raw.name.span(),
            format!("bad rule name {name:?}: use letters, digits, '_', '-' and '.'"),
        );
    }
    let type_name = match raw.kind.get_ref() {
        RawKind::Any => "any",
        RawKind::Frequency => "frequency",
        RawKind::Spike => "spike",
        RawKind::Flatline => "flatline",
    };
    let allowed = TYPE_KEYS
        .iter()
        .find(|(kind, _)| *kind == type_name)
        .map(|(_, keys)| *keys)
        .unwrap_or(&[]);
    let given: [(&str, Option<Range<usize>>); 6] = [
        ("threshold", raw.threshold.as_ref().map(Spanned::span)),
        ("window", raw.window.as_ref().map(Spanned::span)),
        ("ratio", raw.ratio.as_ref().map(Spanned::span)),
        ("direction", raw.direction.as_ref().map(Spanned::span)),
        ("min_count", raw.min_count.as_ref().map(Spanned::span)),
        (
            "expect",
            raw.expect.as_ref().and_then(|list| list.first()).map(Spanned::span),
        ),
    ];
    for (key, span) in &given {
        if let Some(span) = span
            && !allowed.contains(key)
        {
            errors.at(span.clone(), format!("{key} is not a key of {type_name} rules"));
        }
    }
    let rule_span = raw.name.span();
    let require = |key: &str, present: bool, errors: &mut Errors<'_>| {
        // A key dropped for its wrong type was reported already.
        if !present && !dropped_keys.iter().any(|dropped| dropped == key) {
            errors.at(rule_span.clone(), format!("{type_name} rule {name:?} needs {key}"));
        }
    };
    let window_ms = match &raw.window {
        Some(window) => match duration(window, "window", errors) {
            Some(0) => {
                errors.at(window.span(), "window must be longer than 0s");
                None
            }
            other => other,
        },
        None => None,
    };
    let mut group_by: Vec<(String, Field)> = Vec::new();
    for field_name in &raw.group_by {
        if field_name.get_ref().trim().is_empty() {
            errors.at(field_name.span(), "group_by names an empty field");
            continue;
        }
        let Some(field) = field_named(field_name, "group_by", errors) else {
            continue;
        };
        // `region` and `extra.region` are one field: grouping by both would only repeat it.
        if let Some((seen, _)) = group_by.iter().find(|(_, seen_field)| *seen_field == field) {
            let message = if seen == field_name.get_ref() {
                format!("group_by names {seen:?} twice")
            } else {
                format!(
                    "group_by names one field twice: {seen:?} and {:?}",
                    field_name.get_ref()
                )
            };
            errors.at(field_name.span(), message);
            continue;
        }
        group_by.push((field_name.get_ref().clone(), field));
    }
    let group_names: Vec<String> = group_by.iter().map(|(name, _)| name.clone()).collect();
    let threshold = raw.threshold.as_ref().map(|threshold| {
        if *threshold.get_ref() == 0 {
            errors.at(threshold.span(), "threshold must be at least 1");
        }
        check_count(threshold, "threshold", errors);
        *threshold.get_ref()
    });
    if let Some(min_count) = &raw.min_count {
        check_count(min_count, "min_count", errors);
    }
    let kind = match raw.kind.get_ref() {
        RawKind::Any => Some(RuleKind::Any),
        RawKind::Frequency => {
            require("threshold", threshold.is_some(), errors);
            require("window", raw.window.is_some(), errors);
            Some(RuleKind::Frequency {
                threshold: threshold.unwrap_or(1),
                window_ms: window_ms.unwrap_or(1),
            })
        }
        RawKind::Spike => {
            require("window", raw.window.is_some(), errors);
            require("ratio", raw.ratio.is_some(), errors);
            let ratio = raw.ratio.as_ref().map(|ratio| *ratio.get_ref()).unwrap_or(2.0);
            if let Some(spanned) = &raw.ratio
                && !(ratio > 1.0 && ratio.is_finite())
            {
                errors.at(spanned.span(), format!("ratio must be above 1, not {ratio}"));
            }
            let direction = match raw.direction.as_ref().map(Spanned::get_ref) {
                None | Some(RawDirection::Up) => Direction::Up,
                Some(RawDirection::Down) => Direction::Down,
                Some(RawDirection::Both) => Direction::Both,
            };
            Some(RuleKind::Spike {
                window_ms: window_ms.unwrap_or(1),
                ratio,
                direction,
                min_count: raw.min_count.as_ref().map_or(1, |count| *count.get_ref()),
            })
        }
        RawKind::Flatline => {
            require("threshold", threshold.is_some(), errors);
            require("window", raw.window.is_some(), errors);
            let expect = expected_groups(raw.expect.as_deref().unwrap_or(&[]), &group_names, errors);
            Some(RuleKind::Flatline {
                threshold: threshold.unwrap_or(1),
                window_ms: window_ms.unwrap_or(1),
                expect,
            })
        }
    }?;
    let cooldown_ms = match &raw.cooldown {
        Some(cooldown) => duration(cooldown, "cooldown", errors).unwrap_or(DEFAULT_COOLDOWN_MS),
        None => DEFAULT_COOLDOWN_MS,
    };
    let max_groups = match &raw.max_groups {
        Some(limit) if *limit.get_ref() == 0 => {
            errors.at(limit.span(), "max_groups must be at least 1");
            bounds.max_groups
        }
        Some(limit) => *limit.get_ref(),
        None => bounds.max_groups,
    };
    let forget_after_ms = match &raw.forget_after {
        Some(text) => duration(text, "forget_after", errors),
        None => bounds.forget_after_ms,
    }
    .unwrap_or_else(|| default_forget_after_ms(&kind, cooldown_ms));
    if let Some(window_ms) = kind.window_ms()
        && forget_after_ms < window_ms
    {
        let span = raw.forget_after.as_ref().map_or(rule_span.clone(), Spanned::span);
        errors.at(span, "forget_after must be at least the window");
    }
    let severity = match &raw.severity {
        Some(severity) if severity.get_ref().trim().is_empty() => {
            errors.at(severity.span(), "severity must not be empty");
            DEFAULT_SEVERITY.to_string()
        }
        Some(severity) => severity.get_ref().clone(),
        None => DEFAULT_SEVERITY.to_string(),
    };
    let sinks = match &raw.sinks {
        Some(listed) => {
            if listed.is_empty() {
                errors.at(
                    raw.name.span(),
                    "sinks = [] sends this rule's alerts to no sink; name one, or leave sinks out for every sink of the file",
                );
            }
            for sink in listed {
                if !sink_names.contains(sink.get_ref()) {
                    errors.at(
                        sink.span(),
                        format!("unknown sink {:?} (not a [sinks.NAME] of this file)", sink.get_ref()),
                    );
                }
            }
            listed.iter().map(|sink| sink.get_ref().clone()).collect()
        }
        None => sink_names.to_vec(),
    };
    let filter = match &raw.filter {
        Some(filter) => compile_filter(filter, regex_budget, errors),
        None => Filter::All(Vec::new()),
    };
    let window_text = raw.window.as_ref().map(|window| window.get_ref().trim().to_string());
    let names = Names {
        group_by: &group_names,
        rule: &name,
        severity: &severity,
        window: window_text.as_deref(),
        threshold: match kind {
            RuleKind::Frequency { threshold, .. } | RuleKind::Flatline { threshold, .. } => Some(threshold),
            RuleKind::Any | RuleKind::Spike { .. } => None,
        },
        has_previous_count: matches!(kind, RuleKind::Spike { .. }),
    };
    let labels = compile_templates(&raw.labels, "label", &names, errors);
    let annotations = compile_templates(&raw.annotations, "annotation", &names, errors);
    if errors.list.len() > error_count {
        return None;
    }
    Some(Rule {
        name,
        kind,
        filter,
        group_by,
        severity,
        labels,
        annotations,
        cooldown_ms,
        max_groups,
        forget_after_ms,
        sinks,
        stateful_index: None,
    })
}

fn check_count(count: &Spanned<u64>, key: &str, errors: &mut Errors<'_>) {
    if *count.get_ref() > MAX_COUNT {
        errors.at(
            count.span(),
            format!(
                "{key} {} is above {MAX_COUNT} (2^53), beyond what the rule scripts count exactly",
                count.get_ref()
            ),
        );
    }
}

fn compile_templates(
    raw: &BTreeMap<String, Spanned<String>>,
    what: &str,
    names: &Names<'_>,
    errors: &mut Errors<'_>,
) -> Vec<(String, Template)> {
    let mut compiled = Vec::new();
    for (key, text) in raw {
        match Template::compile(text.get_ref(), names) {
            Ok(template) => compiled.push((key.clone(), template)),
            Err(problem) => errors.at(text.span(), format!("{what} {key}: {problem}")),
        }
    }
    compiled
}

fn expected_groups(raw: &[Spanned<RawExpected>], group_names: &[String], errors: &mut Errors<'_>) -> Vec<GroupKey> {
    let mut groups = Vec::new();
    for expected in raw {
        let values: Vec<&str> = match expected.get_ref() {
            RawExpected::One(value) => vec![value.as_str()],
            RawExpected::Many(values) => values.iter().map(String::as_str).collect(),
        };
        if group_names.is_empty() {
            errors.at(expected.span(), "expect needs group_by");
            return groups;
        }
        if values.len() != group_names.len() {
            errors.at(
                expected.span(),
                format!(
                    "expected group has {} values, group_by has {} fields ({})",
                    values.len(),
                    group_names.len(),
                    group_names.join(", ")
                ),
            );
            continue;
        }
        groups.push(group::key_of(values.into_iter().map(group::cut)));
    }
    groups
}

fn compile_filter(raw: &Spanned<RawFilter>, budget: &mut RegexBudget, errors: &mut Errors<'_>) -> Filter {
    let filter = raw.get_ref();
    let mut parts = Vec::new();
    if let Some(level) = &filter.level {
        match level.get_ref().parse::<Level>() {
            Ok(parsed) => parts.push(Filter::MinLevel(parsed)),
            Err(error) => errors.at(level.span(), format!("{error}")),
        }
    }
    let conditions = [
        filter.equals.as_ref().map(|value| ("equals", value.span())),
        filter.in_list.as_ref().map(|value| ("in", value.span())),
        filter.regex.as_ref().map(|value| ("regex", value.span())),
    ];
    let given: Vec<(&str, Range<usize>)> = conditions.into_iter().flatten().collect();
    match (&filter.field, given.as_slice()) {
        (None, []) => {}
        (None, [(key, span), ..]) => errors.at(span.clone(), format!("{key} needs field")),
        (Some(field), []) => errors.at(field.span(), "field needs one of equals, in, regex"),
        (Some(_), [_, (key, span), ..]) => errors.at(
            span.clone(),
            format!("{key}: one filter takes one of equals, in, regex"),
        ),
        (Some(field), [_]) => {
            let Some(field_name) = field_named(field, "field", errors) else {
                return Filter::All(Vec::new());
            };
            if let Some(equals) = &filter.equals {
                parts.push(Filter::Equals(field_name, equals.get_ref().clone()));
            } else if let Some(in_list) = &filter.in_list {
                let mut sorted = in_list.get_ref().clone();
                sorted.sort();
                sorted.dedup();
                parts.push(Filter::In(field_name, sorted));
            } else if let Some(pattern) = &filter.regex
                && let Some(regex) = compile_regex(pattern, budget, errors)
            {
                parts.push(Filter::Regex(field_name, regex));
            }
        }
    }
    if let Some(pattern) = &filter.message
        && let Some(regex) = compile_regex(pattern, budget, errors)
    {
        parts.push(Filter::Regex(Field::Message, regex));
    }
    if let Some(all) = &filter.all {
        parts.push(Filter::All(
            all.iter().map(|part| compile_filter(part, budget, errors)).collect(),
        ));
    }
    if let Some(any) = &filter.any {
        parts.push(Filter::Any(
            any.iter().map(|part| compile_filter(part, budget, errors)).collect(),
        ));
    }
    if let Some(not) = &filter.not {
        parts.push(Filter::Not(Box::new(compile_filter(not, budget, errors))));
    }
    if parts.len() == 1 {
        return parts.pop().expect("one part");
    }
    Filter::All(parts)
}

/// The event field a filter's `field` or a `group_by` entry names (see [`Field::named`]);
/// `None`, with the error placed, for a bare `extra.`.
fn field_named(name: &Spanned<String>, key: &str, errors: &mut Errors<'_>) -> Option<Field> {
    if name.get_ref() == EXTRA_PREFIX {
        errors.at(
            name.span(),
            format!("{key} names {EXTRA_PREFIX:?}, no field: write extra.NAME for the extra field NAME"),
        );
        return None;
    }
    Some(Field::named(name.get_ref()))
}

fn compile_regex(pattern: &Spanned<String>, budget: &mut RegexBudget, errors: &mut Errors<'_>) -> Option<regex::Regex> {
    let built = regex::RegexBuilder::new(pattern.get_ref())
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_DFA_SIZE_LIMIT)
        .build();
    match built {
        Ok(regex) => {
            let charge = compiled_regex_bytes(pattern.get_ref()) + REGEX_DFA_SIZE_LIMIT;
            budget.charged_bytes = budget.charged_bytes.saturating_add(charge);
            if budget.charged_bytes > MAX_TOTAL_REGEX_BYTES {
                errors.at(
                    pattern.span(),
                    format!(
                        "the regexes of this file would take more than {} MiB (this one {} KiB with its \
                         DFA cache): use fewer or simpler regexes",
                        MAX_TOTAL_REGEX_BYTES >> 20,
                        charge.div_ceil(1024)
                    ),
                );
                return None;
            }
            Some(regex)
        }
        Err(error) => {
            // The syntax error is several lines (the pattern, a caret); its last says why.
            let text = error.to_string();
            let reason = text
                .lines()
                .rev()
                .find_map(|line| line.strip_prefix("error: "))
                .unwrap_or(text.lines().last().unwrap_or("invalid"))
                .trim_end_matches('.');
            let mut reason_characters = reason.chars();
            let reason: String = reason_characters
                .next()
                .map(|first| first.to_lowercase().chain(reason_characters).collect())
                .unwrap_or_default();
            errors.at(pattern.span(), format!("bad regex {:?}: {reason}", pattern.get_ref()));
            None
        }
    }
}

/// The compiled size of `pattern` as `regex` builds it (its meta regex, with the same
/// limits): `regex::Regex` does not tell, so the pattern is built once more by the engine
/// underneath, which does. Only for patterns `regex` accepted; 0 should that one fail.
fn compiled_regex_bytes(pattern: &str) -> usize {
    use regex_automata::meta;
    let config = meta::Config::new()
        .nfa_size_limit(Some(REGEX_SIZE_LIMIT))
        .hybrid_cache_capacity(REGEX_DFA_SIZE_LIMIT);
    meta::Builder::new()
        .configure(config)
        .build(pattern)
        .map_or(0, |regex| regex.memory_usage())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_of(text: &str) -> Vec<String> {
        match compile("r.toml", text) {
            Ok(_) => Vec::new(),
            Err(error) => error.lines(),
        }
    }

    #[test]
    fn the_documented_example_compiles() {
        let text = r#"
max_lateness = "60s"

[sinks.ops]
type = "webhook"
url = "https://hooks.example.com/logsentinel"
secret = { env = "OPS_WEBHOOK_SECRET" }
max_attempts = 8
rate_limit = { messages = 1, per = "1s" }
timeout = "10s"

[[rules]]
name = "errors-per-service"
type = "frequency"
filter = { level = "ERROR" }
group_by = ["service"]
threshold = 50
window = "1m"
cooldown = "5m"
severity = "warning"
labels = { team = "core" }
annotations = { summary = "{count} errors in {service} within {window}" }
sinks = ["ops"]
"#;
        let rules = compile("r.toml", text).unwrap();
        assert_eq!(rules.rules().len(), 1);
        assert_eq!(rules.sinks().len(), 1);
        let stateful = rules.stateful_rules();
        assert_eq!(stateful[0].window_ms, 60_000);
        assert_eq!(stateful[0].threshold, 50);
        assert_eq!(stateful[0].cooldown_ms, 300_000);
        assert_eq!(stateful[0].max_lateness_ms, 60_000);
    }

    #[test]
    fn every_error_is_placed() {
        let text = "\
[[rules]]
name = \"a\"
type = \"frequency\"
window = \"5 parsecs\"
threshold = 3
colour = \"red\"

[[rules]]
name = \"b\"
type = \"any\"
filter = { message = \"(unclosed\" }
sinks = [\"nowhere\"]

[[rules]]
name = \"b\"
type = \"spike\"
window = \"1m\"
ratio = 1
annotations = { summary = \"{nope}\" }
";
        let places: Vec<String> = errors_of(text)
            .iter()
            .map(|error| error.split(": ").take(2).collect::<Vec<_>>().join(": "))
            .collect();
        assert_eq!(
            places,
            [
                "r.toml:4:10: bad duration \"5 parsecs\" for window",
                "r.toml:6:1: unknown key \"colour\" in a rule (expected one of name, type, filter, group_by, \
                 severity, labels, annotations, cooldown, sinks, threshold, window, ratio, direction, min_count, expect, max_groups, forget_after)",
                "r.toml:11:22: bad regex \"(unclosed\"",
                "r.toml:12:10: unknown sink \"nowhere\" (not a [sinks.NAME] of this file)",
                "r.toml:15:8: duplicate rule name \"b\"",
                "r.toml:18:9: ratio must be above 1, not 1",
                "r.toml:19:27: annotation summary",
            ]
        );
    }

    #[test]
    fn missing_keys_and_misplaced_ones() {
        let errors = errors_of("[[rules]]\nname = \"f\"\ntype = \"frequency\"\nratio = 2.0\n");
        assert_eq!(
            errors,
            [
                "r.toml:2:8: frequency rule \"f\" needs threshold",
                "r.toml:2:8: frequency rule \"f\" needs window",
                "r.toml:4:9: ratio is not a key of frequency rules",
            ]
        );
        let errors = errors_of("[[rules]]\nname = \"x y\"\ntype = \"any\"\nfilter = { equals = \"a\" }\n");
        assert_eq!(
            errors,
            [
                "r.toml:2:8: bad rule name \"x y\": use letters, digits, '_', '-' and '.'",
                "r.toml:4:21: equals needs field",
            ]
        );
    }

    #[test]
    fn syntax_errors_and_top_level_keys() {
        let errors = errors_of("max_lateness = \"1m\"\nrulez = []\n");
        assert_eq!(
            errors,
            ["r.toml:2:1: unknown key \"rulez\" (expected max_lateness, max_groups, forget_after, sinks, rules)"]
        );
        let errors = errors_of("[[rules]\n");
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("r.toml:1:"), "{errors:?}");
        let errors = errors_of("max_lateness = 60\n");
        assert!(
            errors[0].starts_with("r.toml:1:16: max_lateness must be a duration"),
            "{errors:?}"
        );
    }

    #[test]
    fn group_bounds_have_file_defaults_and_rule_overrides() {
        let text = "max_groups = 500\nforget_after = \"2h\"\n\
            [[rules]]\nname = \"a\"\ntype = \"frequency\"\nthreshold = 1\nwindow = \"1m\"\n\
            [[rules]]\nname = \"b\"\ntype = \"frequency\"\nthreshold = 1\nwindow = \"1m\"\nmax_groups = 3\nforget_after = \"10m\"\n";
        let rules = RuleSet::parse("r.toml", text).expect("compiles");
        let stateful = rules.stateful_rules();
        assert_eq!((stateful[0].max_groups, stateful[0].forget_after_ms), (500, 7_200_000));
        assert_eq!((stateful[1].max_groups, stateful[1].forget_after_ms), (3, 600_000));

        let defaults = RuleSet::parse(
            "r.toml",
            "[[rules]]\nname = \"a\"\ntype = \"frequency\"\nthreshold = 1\nwindow = \"10m\"\n",
        )
        .expect("compiles");
        let stateful = defaults.stateful_rules();
        assert_eq!(stateful[0].max_groups, DEFAULT_MAX_GROUPS);
        assert_eq!(stateful[0].forget_after_ms, 6_000_000, "ten windows, above the hour");

        let errors = errors_of(
            "max_groups = 0\n[[rules]]\nname = \"a\"\ntype = \"frequency\"\nthreshold = 1\nwindow = \"1h\"\nforget_after = \"1m\"\nmax_groups = 0\n",
        );
        assert_eq!(
            errors,
            [
                "r.toml:1:14: max_groups must be a whole number of at least 1",
                "r.toml:7:16: forget_after must be at least the window",
                "r.toml:8:14: max_groups must be at least 1",
            ]
        );
    }

    #[test]
    fn flatline_expect_and_defaults() {
        let rules = compile(
            "r.toml",
            "[[rules]]\nname = \"quiet\"\ntype = \"flatline\"\ngroup_by = [\"host\"]\nthreshold = 1\nwindow = \"5m\"\nexpect = [\"web-1\", \"web-2\"]\n",
        )
        .unwrap();
        let groups = rules.expected_groups(0);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].values_json, "[\"web-1\"]");
        let rule = &rules.rules()[0];
        assert_eq!(rule.severity, "warning");
        assert_eq!(rule.cooldown_ms, 60_000);
        let errors = errors_of(
            "[[rules]]\nname = \"quiet\"\ntype = \"flatline\"\ngroup_by = [\"host\", \"dc\"]\nthreshold = 1\nwindow = \"5m\"\nexpect = [\"web-1\"]\n",
        );
        assert_eq!(
            errors,
            ["r.toml:7:11: expected group has 1 values, group_by has 2 fields (host, dc)"]
        );
    }

    #[test]
    fn an_empty_sink_list_and_a_malformed_expected_group_are_named() {
        let errors = errors_of(
            "[sinks.ops]\ntype = \"console\"\n[[rules]]\nname = \"quiet\"\ntype = \"flatline\"\ngroup_by = [\"host\"]\n\
             threshold = 1\nwindow = \"5m\"\nexpect = [7]\nsinks = []\n",
        );
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with("r.toml:4:8: sinks = [] sends this rule's alerts to no sink"),
            "{errors:?}"
        );
        assert_eq!(
            errors[1],
            "r.toml:9:10: an expected group is its value (a string) or, with several group_by fields, a list of its values"
        );
    }

    #[test]
    fn durations_counts_and_group_by_fields_have_limits() {
        let rule = |extra: &str| format!("[[rules]]\nname = \"f\"\ntype = \"frequency\"\n{extra}\n");
        assert!(errors_of(&rule("threshold = 1\nwindow = \"1y\"\ncooldown = \"1y\"")).is_empty());
        assert_eq!(
            errors_of(&rule("threshold = 1\nwindow = \"366d\"\ncooldown = \"1y 1s\"")),
            [
                "r.toml:5:10: window \"366d\" is longer than a year",
                "r.toml:6:12: cooldown \"1y 1s\" is longer than a year",
            ]
        );
        assert!(errors_of(&rule("threshold = 9007199254740992\nwindow = \"1m\"")).is_empty());
        assert_eq!(
            errors_of(&rule("threshold = 9007199254740993\nwindow = \"1m\"")),
            [
                "r.toml:4:13: threshold 9007199254740993 is above 9007199254740992 (2^53), beyond what the rule scripts count exactly"
            ]
        );
        let spike = "[[rules]]\nname = \"s\"\ntype = \"spike\"\nwindow = \"1m\"\nratio = 2.0\nmin_count = 9223372036854775807\n";
        assert_eq!(errors_of(spike).len(), 1, "{:?}", errors_of(spike));
        assert!(errors_of(spike)[0].starts_with("r.toml:6:13: min_count 9223372036854775807 is above"));
        assert_eq!(
            errors_of(&rule(
                "threshold = 1\nwindow = \"1m\"\ngroup_by = [\"service\", \"\", \"service\"]"
            )),
            [
                "r.toml:6:24: group_by names an empty field",
                "r.toml:6:28: group_by names \"service\" twice",
            ]
        );
    }

    #[test]
    fn the_regexes_of_a_file_share_one_memory_budget() {
        // Each regex alone is far below the per-regex limit; together they exceed the file's
        // budget, and the first one over it is named.
        let mut text = String::new();
        let count = MAX_TOTAL_REGEX_BYTES / REGEX_DFA_SIZE_LIMIT + 1;
        for index in 0..count {
            text.push_str(&format!(
                "[[rules]]\nname = \"r{index}\"\ntype = \"any\"\nfilter = {{ message = \"^error {index}$\" }}\n"
            ));
        }
        let errors = errors_of(&text);
        assert!(!errors.is_empty(), "a file of {count} regexes must exceed the budget");
        assert!(
            errors[0].contains("the regexes of this file would take more than 256 MiB"),
            "{errors:?}"
        );
        // A single huge regex is refused by the per-regex limit.
        let huge = "[[rules]]\nname = \"h\"\ntype = \"any\"\nfilter = { message = \"\\\\w{1000}\\\\w{1000}\" }\n";
        let errors = errors_of(huge);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("r.toml:4:22: bad regex"), "{errors:?}");
        // Ordinary files are far below the budget.
        assert!(
            errors_of("[[rules]]\nname = \"a\"\ntype = \"any\"\nfilter = { message = \"(?i)password|secret\" }\n")
                .is_empty()
        );
    }

    #[test]
    fn extra_fields_are_named_bare_or_with_the_extra_prefix() {
        let rules = compile(
            "r.toml",
            "[[rules]]\nname = \"f\"\ntype = \"frequency\"\nthreshold = 1\nwindow = \"1m\"\n\
             group_by = [\"extra.region\"]\nfilter = { field = \"extra.zone\", equals = \"a\" }\n",
        )
        .unwrap();
        let rule = &rules.rules()[0];
        assert_eq!(
            rule.group_by,
            [("extra.region".to_string(), Field::Extra("region".into()))]
        );
        let event = |zone: &str| crate::event::LogEvent {
            id: "a:1:0".into(),
            timestamp: "2026-12-01T12:00:00Z".into(),
            level: crate::event::Level::Info,
            service: "api".into(),
            host: "h".into(),
            message: "m".into(),
            extra: [("zone".to_string(), zone.to_string())].into(),
        };
        assert!(rule.filter.matches(&event("a")));
        assert!(!rule.filter.matches(&event("b")));
        let rule = |keys: &str| {
            format!("[[rules]]\nname = \"f\"\ntype = \"frequency\"\nthreshold = 1\nwindow = \"1m\"\n{keys}\n")
        };
        assert_eq!(
            errors_of(&rule("group_by = [\"region\", \"extra.region\", \"extra.\"]")),
            [
                "r.toml:6:23: group_by names one field twice: \"region\" and \"extra.region\"",
                "r.toml:6:39: group_by names \"extra.\", no field: write extra.NAME for the extra field NAME",
            ]
        );
        assert_eq!(
            errors_of(&rule("filter = { field = \"extra.\", equals = \"a\" }")),
            ["r.toml:6:20: field names \"extra.\", no field: write extra.NAME for the extra field NAME"]
        );
    }
}
