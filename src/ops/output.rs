//! Lines on stdout for the operating tools: one record per line as text, JSON or logfmt,
//! and a closed pipe noticed so that `tail … | head` ends quietly with status 0.
//!
//! Writes block: for a viewer, a slow reader of its stdout is the back-pressure wanted,
//! and nothing else runs on the runtime meanwhile (the tools are one task).

use std::io::{BufWriter, Write};

use serde_json::{Map, Value};

use crate::cli::TailFormat;

/// The reader of stdout went away (`| head` exited): stop, successfully.
#[derive(Debug)]
pub struct Closed;

pub struct Output {
    writer: BufWriter<std::io::Stdout>,
    format: TailFormat,
}

impl Output {
    pub fn new(format: TailFormat) -> Output {
        Output {
            writer: BufWriter::new(std::io::stdout()),
            format,
        }
    }

    /// Writes one record: `text` in text format, `record` (a JSON object) otherwise.
    pub fn record(&mut self, text: &str, record: &Value) -> Result<(), Closed> {
        let line = match self.format {
            TailFormat::Text => text.to_string(),
            TailFormat::Json => record.to_string(),
            TailFormat::Logfmt => logfmt(record),
        };
        self.line(&line)
    }

    pub fn line(&mut self, line: &str) -> Result<(), Closed> {
        writeln!(self.writer, "{line}").map_err(|_| Closed)
    }

    pub fn flush(&mut self) -> Result<(), Closed> {
        self.writer.flush().map_err(|_| Closed)
    }

    /// Whether stdout is a pipe whose reader has gone, checked without writing: a tail that
    /// waits for entries that do not come would otherwise never learn that `head` is done.
    pub fn reader_gone(&self) -> bool {
        let mut poll_fd = libc::pollfd {
            fd: libc::STDOUT_FILENO,
            events: 0,
            revents: 0,
        };
        // SAFETY: one valid pollfd, a zero timeout; poll only reads and writes that struct.
        let ready = unsafe { libc::poll(&mut poll_fd, 1, 0) };
        ready > 0 && poll_fd.revents & (libc::POLLERR | libc::POLLHUP) != 0
    }
}

/// `text` with control characters escaped (`\n`, `\u{1b}`): every field comes from the
/// logs, and a message holding a newline or an ANSI escape must not forge a line or
/// rewrite the terminal.
pub fn escape_control(text: &str) -> String {
    if !text.chars().any(needs_escape) {
        return text.to_string();
    }
    text.chars()
        .map(|character| {
            if needs_escape(character) {
                character.escape_default().to_string()
            } else {
                character.to_string()
            }
        })
        .collect()
}

/// Control characters, and the ones that move or reorder text on a terminal: line and
/// paragraph separators, bidi embeddings, overrides and isolates.
fn needs_escape(character: char) -> bool {
    character.is_control()
        || matches!(character, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// A JSON object as one logfmt line: `key=value`, nested objects as `key.sub=value`,
/// arrays joined with commas; values quoted when they hold a space, `=`, `"` or nothing.
pub fn logfmt(record: &Value) -> String {
    let mut pairs = Vec::new();
    if let Value::Object(object) = record {
        flatten("", object, &mut pairs);
    }
    pairs
        .into_iter()
        .map(|(key, value)| format!("{}={}", logfmt_key(&key), logfmt_value(&value)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn flatten(prefix: &str, object: &Map<String, Value>, pairs: &mut Vec<(String, String)>) {
    for (name, value) in object {
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match value {
            Value::Object(inner) => flatten(&key, inner, pairs),
            Value::Array(items) => pairs.push((key, items.iter().map(scalar_text).collect::<Vec<_>>().join(","))),
            other => pairs.push((key, scalar_text(other))),
        }
    }
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Keys come from the logs too (`extra` names): anything but `[A-Za-z0-9_.-]` becomes `_`.
fn logfmt_key(key: &str) -> String {
    key.chars()
        .map(|character| {
            if character.is_ascii_alphanumeric() || "_.-".contains(character) {
                character
            } else {
                '_'
            }
        })
        .collect()
}

fn logfmt_value(value: &str) -> String {
    let needs_quotes = value.is_empty()
        || value
            .chars()
            .any(|character| character == ' ' || character == '=' || character == '"' || character.is_control());
    if !needs_quotes {
        return value.to_string();
    }
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for character in value.chars() {
        match character {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            control if control.is_control() => quoted.push_str(&control.escape_default().to_string()),
            other => quoted.push(other),
        }
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logfmt_quotes_what_needs_it_and_flattens() {
        let record = serde_json::json!({
            "level": "ERROR",
            "message": "disk \"full\"\nnow",
            "extra": {"request id": "r=1"},
            "sinks": ["a", "b"],
            "empty": "",
        });
        assert_eq!(
            logfmt(&record),
            r#"empty="" extra.request_id="r=1" level=ERROR message="disk \"full\"\nnow" sinks=a,b"#
        );
    }

    #[test]
    fn control_characters_are_escaped_in_text() {
        assert_eq!(escape_control("a\nb\u{1b}[2J"), "a\\nb\\u{1b}[2J");
        assert_eq!(escape_control("plain"), "plain");
    }
}
