//! Progress of long runs (`bench`, `demo`, an agent with `--count`) on stderr, and the one
//! `key=value` line each ends with.
//!
//! On a terminal a bar redraws in place; otherwise (CI, a container's log) a plain line is
//! printed at the first update and then at most every [`PLAIN_LINE_EVERY`], so a long run
//! leaves a short log. Progress never goes to stdout, which stays for results.
//!
//! With `--log-format json` the plain lines, the notes and the summary are JSON objects like
//! the log lines around them (`timestamp`, `level`, `message`, then the fields at the top
//! level, named as in the text format), so that every line on stderr parses as JSON.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};

use crate::options::LogFormat;
use crate::telemetry;

/// Interval between plain progress lines when stderr is not a terminal.
pub const PLAIN_LINE_EVERY: Duration = Duration::from_secs(10);

pub struct Progress {
    /// `[agent]`, `[bench]`, `[demo]`: the prefix of the plain lines.
    label: &'static str,
    /// What is counted, e.g. `events`.
    unit: &'static str,
    total: Option<u64>,
    /// The last count reported.
    done: u64,
    bar: Option<ProgressBar>,
    started: Instant,
    /// When the last plain line was printed; `None` before the first.
    last_line_at: Option<Instant>,
}

impl Progress {
    /// A bar if stderr is a terminal, plain lines otherwise.
    pub fn new(label: &'static str, unit: &'static str, total: Option<u64>) -> Progress {
        Progress::with_terminal(label, unit, total, std::io::stderr().is_terminal())
    }

    fn with_terminal(label: &'static str, unit: &'static str, total: Option<u64>, on_terminal: bool) -> Progress {
        let bar = on_terminal.then(|| {
            let bar = match total {
                Some(total) => ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr()),
                None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            };
            let template = match total {
                Some(_) => "{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}, eta {eta})",
                None => "{prefix} {spinner} {pos} {msg} ({elapsed})",
            };
            let style = ProgressStyle::with_template(template)
                .expect("the progress templates are valid")
                .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(label);
            bar
        });
        Progress {
            label,
            unit,
            total,
            done: 0,
            bar,
            started: Instant::now(),
            last_line_at: None,
        }
    }

    /// Reports `done` units so far, with a short note (what runs now, figures).
    pub fn update(&mut self, done: u64, note: &str) {
        self.done = done;
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            bar.set_message(note.to_string());
            return;
        }
        let now = Instant::now();
        if !self.plain_line_due(now) {
            return;
        }
        let line = match telemetry::format() {
            LogFormat::Text => self.plain_line(done, note, now),
            LogFormat::Json => self.json_line(done, note, now),
        };
        eprintln!("{line}");
    }

    /// The last count reported.
    pub fn done(&self) -> u64 {
        self.done
    }

    /// Whether a line is due at `now`: the first one, then one per [`PLAIN_LINE_EVERY`].
    /// Marks it printed.
    fn plain_line_due(&mut self, now: Instant) -> bool {
        if self
            .last_line_at
            .is_some_and(|last| now.duration_since(last) < PLAIN_LINE_EVERY)
        {
            return false;
        }
        self.last_line_at = Some(now);
        true
    }

    /// `[agent] progress: 50/100 events after 10 s, lag 3`.
    fn plain_line(&self, done: u64, note: &str, now: Instant) -> String {
        let elapsed_s = now.duration_since(self.started).as_secs();
        let count = match self.total {
            Some(total) => format!("{done}/{total} {}", self.unit),
            None => format!("{done} {}", self.unit),
        };
        let note = if note.is_empty() {
            String::new()
        } else {
            format!(", {note}")
        };
        format!("{} progress: {count} after {elapsed_s} s{note}", self.label)
    }

    /// The same as [`Self::plain_line`], as a JSON log line.
    fn json_line(&self, done: u64, note: &str, now: Instant) -> String {
        let mut fields = vec![("done".to_string(), json!(done))];
        if let Some(total) = self.total {
            fields.push(("total".into(), json!(total)));
        }
        fields.push(("unit".into(), json!(self.unit)));
        fields.push(("elapsed_s".into(), json!(now.duration_since(self.started).as_secs())));
        if !note.is_empty() {
            fields.push(("note".into(), json!(note)));
        }
        json_log_line(self.label, "progress", fields)
    }

    /// Removes the bar (plain lines stay, they are the log).
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// One value of a summary line: counts and decimals are JSON numbers, text a JSON string.
#[derive(Debug, Clone, PartialEq)]
pub enum Figure {
    Count(u64),
    /// A decimal printed with this many places (`elapsed_s=3.011`).
    Decimal(f64, usize),
    Text(String),
}

impl Figure {
    fn text(&self) -> String {
        match self {
            Figure::Count(count) => count.to_string(),
            Figure::Decimal(value, places) => format!("{value:.places$}"),
            Figure::Text(text) => text.clone(),
        }
    }

    fn json(&self) -> Value {
        match self {
            Figure::Count(count) => json!(count),
            // The number as the text line shows it; a NaN or an infinity is no JSON number.
            Figure::Decimal(..) => serde_json::from_str::<serde_json::Number>(&self.text())
                .map(Value::Number)
                .unwrap_or(Value::Null),
            Figure::Text(text) => json!(text),
        }
    }
}

impl From<u64> for Figure {
    fn from(count: u64) -> Figure {
        Figure::Count(count)
    }
}

impl From<usize> for Figure {
    fn from(count: usize) -> Figure {
        Figure::Count(count as u64)
    }
}

impl From<String> for Figure {
    fn from(text: String) -> Figure {
        Figure::Text(text)
    }
}

impl From<&str> for Figure {
    fn from(text: &str) -> Figure {
        Figure::Text(text.to_string())
    }
}

/// The line that ends a run, in the format of the logs: in text `label summary: key=value
/// key=value …`, one line a script can split on spaces and `=` (values with spaces are
/// quoted); in JSON `{"timestamp":…,"level":"INFO","message":"summary","label":…, key: value…}`.
pub fn summary_line(label: &str, pairs: &[(&str, Figure)]) -> String {
    match telemetry::format() {
        LogFormat::Text => summary_text(label, pairs),
        LogFormat::Json => {
            let fields = pairs
                .iter()
                .map(|(key, figure)| (key.to_string(), figure.json()))
                .collect();
            json_log_line(label, "summary", fields)
        }
    }
}

fn summary_text(label: &str, pairs: &[(&str, Figure)]) -> String {
    let mut line = format!("{label} summary:");
    for (key, figure) in pairs {
        debug_assert!(!key.contains([' ', '=']), "summary keys are plain words");
        let value = figure.text();
        if value.is_empty() || value.contains([' ', '"', '=']) {
            line.push_str(&format!(" {key}={value:?}"));
        } else {
            line.push_str(&format!(" {key}={value}"));
        }
    }
    line
}

/// Prints why the process stops on stderr: `logsentinel: <message>`, or a JSON log line at
/// level ERROR (label `logsentinel`), so that a log collector can read it too.
pub fn fatal(message: &str) {
    let line = match telemetry::format() {
        LogFormat::Text => format!("logsentinel: {message}"),
        LogFormat::Json => json_line_at("ERROR", "logsentinel", message, Vec::new()),
    };
    eprintln!("{line}");
}

/// Prints a note of a run on stderr: `[demo] stopping agents`, or a JSON log line.
pub fn note(label: &str, message: &str) {
    let line = match telemetry::format() {
        LogFormat::Text => format!("{label} {message}"),
        LogFormat::Json => json_log_line(label, message, Vec::new()),
    };
    eprintln!("{line}");
}

/// A line shaped like the JSON logs (see [`crate::telemetry`]): `timestamp`, `level`,
/// `message`, `label` (the run: `agent`, `demo`, `bench`, without brackets), then `fields`
/// in their order. Written by hand: a JSON map would sort the keys.
fn json_log_line(label: &str, message: &str, fields: Vec<(String, Value)>) -> String {
    json_line_at("INFO", label, message, fields)
}

fn json_line_at(level: &str, label: &str, message: &str, fields: Vec<(String, Value)>) -> String {
    let timestamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let label = label.trim_start_matches('[').trim_end_matches(']');
    let mut line = format!(
        r#"{{"timestamp":{},"level":{},"message":{},"label":{}"#,
        json!(timestamp),
        json!(level),
        json!(message),
        json!(label)
    );
    for (key, value) in fields {
        debug_assert!(
            !["timestamp", "level", "message", "label"].contains(&key.as_str()),
            "a field named like a log key: {key}"
        );
        line.push_str(&format!(",{}:{value}", json!(key)));
    }
    line.push('}');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_come_first_at_once_then_every_ten_seconds() {
        let mut progress = Progress::with_terminal("[agent]", "events", Some(100), false);
        let start = progress.started;
        assert!(progress.plain_line_due(start), "the first update prints");
        let first = progress.plain_line(1, "", start);
        assert_eq!(first, "[agent] progress: 1/100 events after 0 s");
        assert!(!progress.plain_line_due(start + Duration::from_secs(9)));
        let later_at = start + Duration::from_secs(10);
        assert!(progress.plain_line_due(later_at), "ten seconds later");
        let later = progress.plain_line(50, "lag 3", later_at);
        assert_eq!(later, "[agent] progress: 50/100 events after 10 s, lag 3");
        let as_json: Value = serde_json::from_str(&progress.json_line(50, "lag 3", later_at)).unwrap();
        assert_eq!(as_json["message"], "progress");
        assert_eq!(as_json["label"], "agent");
        assert_eq!(as_json["done"], 50);
        assert_eq!(as_json["total"], 100);
        assert_eq!(as_json["elapsed_s"], 10);
        assert_eq!(as_json["note"], "lag 3");
    }

    #[test]
    fn summary_values_with_spaces_are_quoted() {
        let line = summary_text(
            "agent",
            &[
                ("events", 10u64.into()),
                ("elapsed_s", Figure::Decimal(3.0, 3)),
                ("error", "redis refused".into()),
            ],
        );
        assert_eq!(
            line,
            r#"agent summary: events=10 elapsed_s=3.000 error="redis refused""#
        );
    }

    #[test]
    fn summary_figures_are_json_numbers_and_strings() {
        assert_eq!(Figure::Count(7).json(), json!(7));
        assert_eq!(Figure::Decimal(3.0114, 3).json(), json!(3.011));
        assert_eq!(Figure::Decimal(1993.4, 0).json(), json!(1993));
        assert_eq!(Figure::Decimal(f64::NAN, 1).json(), Value::Null);
        assert_eq!(Figure::from("web-1").json(), json!("web-1"));
    }
}
