//! Lines from real sources (`agent --source stdin`): JSON, logfmt or plain text.
//!
//! A line is never dropped: a line that is neither a JSON object nor logfmt with a message
//! is shipped as plain text, its level taken from the first level word among its first
//! tokens (`ERROR`, `[warn]`, `level=crit`, …) or UNKNOWN when there is none.

use serde_json::{Map, Value};

use super::foreign::{self, Defaults};
use super::{Level, LogEvent};

/// Tokens at the start of a plain line searched for a level word.
const LEVEL_WORD_WINDOW: usize = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineFormat {
    Json,
    Logfmt,
    Plain,
}

/// Parses one line into an event with the given id; `defaults` fill missing fields.
pub fn parse_line(id: &str, line: &str, defaults: &Defaults) -> (LogEvent, LineFormat) {
    parse_line_with(id, line, defaults, None)
}

/// [`parse_line`], with plain-text levels found by `level_pattern` (its first group, or the
/// whole match) instead of the level words.
pub fn parse_line_with(
    id: &str,
    line: &str,
    defaults: &Defaults,
    level_pattern: Option<&regex::Regex>,
) -> (LogEvent, LineFormat) {
    let trimmed = line.trim();
    if trimmed.starts_with('{')
        && let Ok(Value::Object(document)) = serde_json::from_str::<Value>(trimmed)
        && let Ok(event) = foreign::decode_object(id, document, defaults)
    {
        return (event, LineFormat::Json);
    }
    if let Some(pairs) = parse_logfmt(trimmed)
        && let Ok(event) = foreign::decode_object(id, pairs, defaults)
    {
        return (event, LineFormat::Logfmt);
    }
    let event = LogEvent {
        id: id.to_string(),
        timestamp: super::now_rfc3339(),
        level: match level_pattern {
            Some(pattern) => level_by_pattern(pattern, trimmed),
            None => level_word(trimmed),
        }
        .unwrap_or(Level::Unknown),
        service: defaults.service.to_string(),
        host: defaults.host.to_string(),
        message: line.trim_end_matches(['\r', '\n']).to_string(),
        extra: Default::default(),
    };
    (event, LineFormat::Plain)
}

fn level_by_pattern(pattern: &regex::Regex, line: &str) -> Option<Level> {
    let captures = pattern.captures(line)?;
    let found = captures.get(1).or_else(|| captures.get(0))?;
    found
        .as_str()
        .parse::<Level>()
        .ok()
        .filter(|level| *level != Level::Unknown)
}

/// The first level word among the first tokens: `ERROR`, `[warn]`, `crit:`, `level=info`.
/// Numbers are not taken for syslog severities here: in free text they are just numbers.
fn level_word(line: &str) -> Option<Level> {
    line.split_whitespace().take(LEVEL_WORD_WINDOW).find_map(|token| {
        let value = token.split_once('=').map_or(token, |(_, value)| value);
        let word = value.trim_matches(|c: char| !c.is_ascii_alphabetic());
        if word.is_empty() || !word.bytes().all(|byte| byte.is_ascii_alphabetic()) {
            return None;
        }
        word.parse::<Level>().ok().filter(|level| *level != Level::Unknown)
    })
}

/// `key=value key="quoted value" …`. `None` unless every token is a pair and there are at
/// least two: "user logged in id=5" is plain text, not logfmt.
pub fn parse_logfmt(line: &str) -> Option<Map<String, Value>> {
    let bytes = line.as_bytes();
    let mut pairs = Map::new();
    let mut position = 0;
    while position < bytes.len() {
        if bytes[position] == b' ' || bytes[position] == b'\t' {
            position += 1;
            continue;
        }
        let key_start = position;
        while position < bytes.len() && !matches!(bytes[position], b'=' | b' ' | b'\t' | b'"') {
            position += 1;
        }
        if position == key_start || position >= bytes.len() || bytes[position] != b'=' {
            return None;
        }
        let key = &line[key_start..position];
        position += 1; // '='
        let value = if bytes.get(position) == Some(&b'"') {
            position += 1;
            let mut value = String::new();
            loop {
                match bytes.get(position)? {
                    b'"' => {
                        position += 1;
                        break;
                    }
                    b'\\' => {
                        // The escaped character may be any UTF-8 character, not one byte.
                        let escaped = line[position + 1..].chars().next()?;
                        value.push(match escaped {
                            'n' => '\n',
                            't' => '\t',
                            other => other,
                        });
                        position += 1 + escaped.len_utf8();
                    }
                    _ => {
                        // Copy a run of ordinary characters at once (keeps UTF-8 intact).
                        let run_start = position;
                        while position < bytes.len() && !matches!(bytes[position], b'"' | b'\\') {
                            position += 1;
                        }
                        value.push_str(&line[run_start..position]);
                    }
                }
            }
            value
        } else {
            let value_start = position;
            while position < bytes.len() && !matches!(bytes[position], b' ' | b'\t') {
                position += 1;
            }
            line[value_start..position].to_string()
        };
        pairs.insert(key.to_string(), Value::String(value));
    }
    (pairs.len() >= 2).then_some(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DEFAULTS: Defaults<'static> = Defaults {
        level: Level::Unknown,
        service: "myprog",
        host: "box",
    };

    #[test]
    fn json_lines_use_the_common_names() {
        let (event, format) = parse_line("a:r:0", r#"{"level":"error","msg":"boom","user":"u1"}"#, &DEFAULTS);
        assert_eq!(format, LineFormat::Json);
        assert_eq!(event.level, Level::Error);
        assert_eq!(event.message, "boom");
        assert_eq!(event.service, "myprog");
        assert_eq!(event.host, "box");
        assert_eq!(event.extra["user"], "u1");
    }

    #[test]
    fn logfmt_lines_with_quotes_and_escapes() {
        let line = r#"ts=2026-11-27T10:00:00Z level=crit msg="disk \"sda\" full" app=db"#;
        let (event, format) = parse_line("a:r:1", line, &DEFAULTS);
        assert_eq!(format, LineFormat::Logfmt);
        assert_eq!(event.level, Level::Critical);
        assert_eq!(event.message, r#"disk "sda" full"#);
        assert_eq!(event.service, "db");
        assert_eq!(event.timestamp, "2026-11-27T10:00:00.000000Z");
    }

    #[test]
    fn plain_lines_find_a_level_word_or_say_unknown() {
        let cases = [
            ("2026-11-27 10:00:00 ERROR payment failed", Level::Error),
            ("[WARN] disk at 91%", Level::Warning),
            ("crit: kernel oops", Level::Critical),
            ("user logged in id=5", Level::Unknown),
            ("listening on port 7", Level::Unknown),
            ("{not json at all", Level::Unknown),
        ];
        for (line, level) in cases {
            let (event, format) = parse_line("a:r:2", line, &DEFAULTS);
            assert_eq!(format, LineFormat::Plain, "{line}");
            assert_eq!(event.level, level, "{line}");
            assert_eq!(event.message, line);
        }
        // logfmt without a message field stays plain text, its level word still found
        let (event, format) = parse_line("a:r:3", "level=error code=7", &DEFAULTS);
        assert_eq!((format, event.level), (LineFormat::Plain, Level::Error));
    }

    proptest! {
        #[test]
        fn any_line_gives_an_event_with_the_line_or_its_message(line in "\\PC{0,200}") {
            let (event, _) = parse_line("a:r:4", &line, &DEFAULTS);
            prop_assert_eq!(event.id, "a:r:4");
        }

        #[test]
        fn logfmt_never_panics(line in "([a-z]{1,3}=(\"|\\\\|[a-zé€ ]){0,4} ?){0,6}") {
            let _ = parse_logfmt(&line);
        }

        #[test]
        fn logfmt_round_trips_quoted_values(key in "[a-z_]{1,10}", value in "[ -~]{0,40}") {
            let quoted = value.replace('\\', "\\\\").replace('"', "\\\"");
            let line = format!("msg=x {key}=\"{quoted}\"");
            let pairs = parse_logfmt(&line).expect("two pairs");
            if key != "msg" {
                prop_assert_eq!(pairs[&key].as_str(), Some(value.as_str()));
            }
        }
    }
}
