//! Label and annotation templates: `{name}` is replaced, `{{` and `}}` are literal braces.
//!
//! Invariants:
//! - every name is resolved when the rule file is loaded; an unknown name is a load error,
//!   so rendering cannot fail
//! - figures fixed by the rule (`rule`, `severity`, `window`, `threshold`) are folded into
//!   the literal text at load time: rendering only copies text and looks up event fields
//! - in a draft (a record the settle script completes), `count` and `previous_count` are
//!   written as [`FIGURE_MARK`]`name`[`FIGURE_MARK`] and every mark in text taken from the
//!   event is replaced by U+FFFD, so the script replaces exactly the figures

use super::field::{EXTRA_PREFIX, Field};
use super::plan::FIGURE_MARK;
use crate::event::LogEvent;

/// What a template may name besides the event fields and the `group_by` fields.
pub struct Names<'a> {
    pub group_by: &'a [String],
    pub rule: &'a str,
    pub severity: &'a str,
    /// `None` for rules without a window (`any`).
    pub window: Option<&'a str>,
    /// `None` for rules without a threshold (`any`, `spike`).
    pub threshold: Option<u64>,
    /// Whether `previous_count` exists (spike).
    pub has_previous_count: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Literal(String),
    Event(Field),
    /// Index into the `group_by` values.
    Group(usize),
    Count,
    PreviousCount,
    FirstEventTime,
    LastEventTime,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    segments: Vec<Segment>,
}

/// The figures of one rendering.
pub enum Counts {
    /// Known here (`any` without cooldown: 1).
    Known { count: u64 },
    /// Filled in by the settle script: written as marks.
    Marked,
}

/// What a rendering reads.
pub struct Context<'a> {
    /// `None` for records raised by the clock: event fields render as `<none>`.
    pub event: Option<&'a LogEvent>,
    /// The `group_by` values, in order.
    pub group_values: &'a [String],
    pub counts: Counts,
    pub first_event_time: &'a str,
    pub last_event_time: &'a str,
}

const MISSING: &str = super::group::NONE;

impl Template {
    /// Parses `text`; the error says what is wrong (an unknown name, an unpaired brace).
    pub fn compile(text: &str, names: &Names<'_>) -> Result<Template, String> {
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(position) = rest.find(['{', '}']) {
            literal.push_str(&rest[..position]);
            let after = &rest[position + 1..];
            if rest[position..].starts_with("{{") {
                literal.push('{');
                rest = &rest[position + 2..];
                continue;
            }
            if rest[position..].starts_with("}}") {
                literal.push('}');
                rest = &rest[position + 2..];
                continue;
            }
            if rest.as_bytes()[position] == b'}' {
                return Err("template has a lone '}' (write '}}' for a literal brace)".into());
            }
            let Some(end) = after.find('}') else {
                return Err("template has an unclosed '{' (write '{{' for a literal brace)".into());
            };
            let name = &after[..end];
            match resolve(name, names)? {
                Resolved::Literal(text) => literal.push_str(&text),
                Resolved::Segment(segment) => {
                    if !literal.is_empty() {
                        segments.push(Segment::Literal(std::mem::take(&mut literal)));
                    }
                    segments.push(segment);
                }
            }
            rest = &after[end + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        Ok(Template { segments })
    }

    pub fn render(&self, context: &Context<'_>) -> String {
        let mut out = String::new();
        for segment in &self.segments {
            match segment {
                Segment::Literal(text) => out.push_str(text),
                Segment::Event(field) => {
                    let value = context.event.and_then(|event| field.get(event)).unwrap_or(MISSING);
                    push_event_text(&mut out, value);
                }
                Segment::Group(index) => {
                    let value = context.group_values.get(*index).map(String::as_str).unwrap_or(MISSING);
                    push_event_text(&mut out, value);
                }
                Segment::Count => match context.counts {
                    Counts::Known { count } => out.push_str(itoa::Buffer::new().format(count)),
                    Counts::Marked => push_mark(&mut out, "count"),
                },
                Segment::PreviousCount => match context.counts {
                    // Only spike rules name it, and their alerts are always drafts.
                    Counts::Known { .. } => out.push('0'),
                    Counts::Marked => push_mark(&mut out, "previous_count"),
                },
                Segment::FirstEventTime => push_event_text(&mut out, context.first_event_time),
                Segment::LastEventTime => push_event_text(&mut out, context.last_event_time),
            }
        }
        out
    }
}

enum Resolved {
    Literal(String),
    Segment(Segment),
}

fn resolve(name: &str, names: &Names<'_>) -> Result<Resolved, String> {
    if let Some(index) = names.group_by.iter().position(|field| field == name) {
        return Ok(Resolved::Segment(Segment::Group(index)));
    }
    if let Some(extra) = name.strip_prefix(EXTRA_PREFIX)
        && !extra.is_empty()
    {
        return Ok(Resolved::Segment(Segment::Event(Field::Extra(extra.to_string()))));
    }
    Ok(match name {
        "id" | "timestamp" | "level" | "service" | "host" | "message" => {
            Resolved::Segment(Segment::Event(Field::named(name)))
        }
        "rule" => Resolved::Literal(names.rule.to_string()),
        "severity" => Resolved::Literal(names.severity.to_string()),
        "count" => Resolved::Segment(Segment::Count),
        "first_event_time" => Resolved::Segment(Segment::FirstEventTime),
        "last_event_time" => Resolved::Segment(Segment::LastEventTime),
        "window" => match names.window {
            Some(window) => Resolved::Literal(window.to_string()),
            None => return Err("template names {window}, but this rule type has no window".into()),
        },
        "threshold" => match names.threshold {
            Some(threshold) => Resolved::Literal(threshold.to_string()),
            None => return Err("template names {threshold}, but this rule type has no threshold".into()),
        },
        "previous_count" if names.has_previous_count => Resolved::Segment(Segment::PreviousCount),
        "previous_count" => return Err("template names {previous_count}, known to spike rules only".into()),
        other => {
            return Err(format!(
                "template names an unknown field {{{other}}} (event fields, extra.NAME, the group_by fields \
                 and the figures rule, severity, count, window, threshold, previous_count, \
                 first_event_time, last_event_time)"
            ));
        }
    })
}

/// Appends text that came from an event, with every figure mark replaced by U+FFFD.
fn push_event_text(out: &mut String, text: &str) {
    if !text.contains(FIGURE_MARK) {
        out.push_str(text);
        return;
    }
    out.extend(text.chars().map(|character| {
        if character == FIGURE_MARK {
            '\u{fffd}'
        } else {
            character
        }
    }));
}

fn push_mark(out: &mut String, figure: &str) {
    out.push(FIGURE_MARK);
    out.push_str(figure);
    out.push(FIGURE_MARK);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Level;

    fn names(group_by: &[String]) -> Names<'_> {
        Names {
            group_by,
            rule: "errors",
            severity: "warning",
            window: Some("1m"),
            threshold: Some(50),
            has_previous_count: false,
        }
    }

    fn event() -> LogEvent {
        LogEvent {
            id: "a:1:0".into(),
            timestamp: "2026-12-01T12:00:00Z".into(),
            level: Level::Error,
            service: "api".into(),
            host: "web-1".into(),
            message: "boom \u{1}count\u{1}".into(),
            extra: [("region".to_string(), "eu".to_string())].into(),
        }
    }

    #[test]
    fn renders_fields_figures_and_braces() {
        let group_by = vec!["region".to_string()];
        let template = Template::compile(
            "{{{count}}} {rule}/{severity} in {service}@{host} {region} {extra.region} {extra.zone} \
             {window} {threshold} {level} {first_event_time}",
            &names(&group_by),
        )
        .unwrap();
        let group_values = vec!["eu".to_string()];
        let context = Context {
            event: Some(&event()),
            group_values: &group_values,
            counts: Counts::Known { count: 7 },
            first_event_time: "t0",
            last_event_time: "t1",
        };
        assert_eq!(
            template.render(&context),
            "{7} errors/warning in api@web-1 eu eu <none> 1m 50 ERROR t0"
        );
    }

    #[test]
    fn drafts_mark_figures_and_neutralise_marks_from_events() {
        let template = Template::compile("{count}: {message}", &names(&[])).unwrap();
        let context = Context {
            event: Some(&event()),
            group_values: &[],
            counts: Counts::Marked,
            first_event_time: "",
            last_event_time: "",
        };
        assert_eq!(template.render(&context), "\u{1}count\u{1}: boom \u{fffd}count\u{fffd}");
    }

    #[test]
    fn unknown_names_and_lone_braces_are_errors() {
        let names = names(&[]);
        assert!(
            Template::compile("{nope}", &names)
                .unwrap_err()
                .contains("unknown field {nope}")
        );
        assert!(
            Template::compile("{previous_count}", &names)
                .unwrap_err()
                .contains("spike")
        );
        assert!(Template::compile("a } b", &names).unwrap_err().contains("lone '}'"));
        assert!(Template::compile("a { b", &names).unwrap_err().contains("unclosed '{'"));
        assert!(Template::compile("{extra.}", &names).is_err());
        let plain = Template::compile("no names", &names).unwrap();
        let context = Context {
            event: None,
            group_values: &[],
            counts: Counts::Marked,
            first_event_time: "",
            last_event_time: "",
        };
        assert_eq!(plain.render(&context), "no names");
    }
}
