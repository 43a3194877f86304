//! Events written by other shippers: one JSON document in a single field, or flat
//! field/value pairs, with the common names for level, message, time and source.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{Level, LogEvent};

const LEVEL_NAMES: &[&str] = &[
    "level",
    "severity",
    "log.level",
    "loglevel",
    "log_level",
    "lvl",
    "levelname",
    "severity_text",
    "syslog.severity",
];
const MESSAGE_NAMES: &[&str] = &["message", "msg", "@message", "log", "text", "short_message", "body"];
const TIME_NAMES: &[&str] = &["timestamp", "@timestamp", "time", "ts", "datetime", "date", "@t"];
const SERVICE_NAMES: &[&str] = &[
    "service",
    "service.name",
    "app",
    "application",
    "app_name",
    "appname",
    "program",
    "syslog.appname",
    "component",
    "logger",
];
const HOST_NAMES: &[&str] = &[
    "host",
    "hostname",
    "host.name",
    "host.hostname",
    "source_host",
    "server",
];

/// What a document that lacks a field gets instead.
pub struct Defaults<'a> {
    pub level: Level,
    pub service: &'a str,
    pub host: &'a str,
}

/// For entries of other shippers: INFO, and `unknown` service and host.
pub const SHIPPER_DEFAULTS: Defaults<'static> = Defaults {
    level: Level::Info,
    service: "unknown",
    host: "unknown",
};

/// Decodes the fields of a stream entry that has no `v` field. `entry_id` becomes the
/// event id, so a redelivered entry gives the same id (and the same alert id).
pub fn decode_fields(entry_id: &str, fields: &[(String, String)]) -> Result<LogEvent, String> {
    if let [(_, only_value)] = fields
        && let Ok(Value::Object(document)) = serde_json::from_str::<Value>(only_value)
    {
        return decode_object(entry_id, document, &SHIPPER_DEFAULTS);
    }
    let flat: Map<String, Value> = fields
        .iter()
        .map(|(key, value)| (key.clone(), Value::String(value.clone())))
        .collect();
    decode_object(entry_id, flat, &SHIPPER_DEFAULTS)
}

/// Decodes one JSON document (a list item). The id is derived from the content, so a
/// re-processed item gives the same id.
pub fn decode_json_document(source: &str, text: &str) -> Result<LogEvent, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(document)) => decode_object(source, document, &SHIPPER_DEFAULTS),
        Ok(_) => Err("JSON document is not an object".into()),
        Err(error) => Err(format!("malformed JSON: {error}")),
    }
}

/// Maps a document with the common field names to an event.
pub fn decode_object(id: &str, mut document: Map<String, Value>, defaults: &Defaults) -> Result<LogEvent, String> {
    let Some(message_value) = take_first(&mut document, MESSAGE_NAMES) else {
        return Err(format!("no message field (looked for {})", MESSAGE_NAMES.join(", ")));
    };
    let message = value_as_text(message_value);
    let level = match take_first(&mut document, LEVEL_NAMES) {
        None => defaults.level,
        Some(Value::Number(number)) => number
            .as_u64()
            .and_then(|severity| u8::try_from(severity).ok())
            .and_then(Level::from_syslog_severity)
            .ok_or_else(|| format!("unknown level {number}"))?,
        Some(other) => value_as_text(other).parse().map_err(|error| format!("{error}"))?,
    };
    let mut extra = BTreeMap::new();
    let timestamp = match take_first(&mut document, TIME_NAMES) {
        None => super::now_rfc3339(),
        Some(raw_time) => match normalise_time(&raw_time) {
            Some(timestamp) => timestamp,
            None => {
                extra.insert("raw_timestamp".to_string(), value_as_text(raw_time));
                super::now_rfc3339()
            }
        },
    };
    let service = take_first(&mut document, SERVICE_NAMES).map_or_else(|| defaults.service.into(), name_of);
    let host = take_first(&mut document, HOST_NAMES).map_or_else(|| defaults.host.into(), name_of);
    for (key, value) in document {
        extra.insert(key, value_as_text(value));
    }
    Ok(LogEvent {
        id: id.to_string(),
        timestamp,
        level,
        service,
        host,
        message,
        extra,
    })
}

/// Removes and returns the first of `names` present, either as a flat key (`log.level`)
/// or as a path into nested objects (`{"log": {"level": …}}`).
fn take_first(document: &mut Map<String, Value>, names: &[&str]) -> Option<Value> {
    for name in names {
        if let Some(value) = document.remove(*name) {
            return Some(value);
        }
        if let Some((parent, child)) = name.split_once('.')
            && let Some(Value::Object(nested)) = document.get_mut(parent)
            && let Some(value) = nested.remove(child)
        {
            if nested.is_empty() {
                document.remove(parent);
            }
            return Some(value);
        }
    }
    None
}

fn value_as_text(value: Value) -> String {
    match value {
        Value::String(text) => text,
        other => other.to_string(),
    }
}

/// A name given as text, or as an object with a `name` (ECS: `host.name`, `service.name`).
fn name_of(value: Value) -> String {
    match value {
        Value::Object(mut host) => host
            .remove("name")
            .or_else(|| host.remove("hostname"))
            .map_or_else(|| Value::Object(host).to_string(), value_as_text),
        other => value_as_text(other),
    }
}

/// RFC 3339 with any offset, or Unix time in seconds or milliseconds, to RFC 3339 UTC.
fn normalise_time(value: &Value) -> Option<String> {
    use chrono::{DateTime, SecondsFormat, Utc};
    let utc: DateTime<Utc> = match value {
        Value::String(text) => match DateTime::parse_from_rfc3339(text.trim()) {
            Ok(parsed) => parsed.with_timezone(&Utc),
            Err(_) => epoch_to_utc(text.trim().parse::<f64>().ok()?)?,
        },
        Value::Number(number) => epoch_to_utc(number.as_f64()?)?,
        _ => return None,
    };
    Some(utc.to_rfc3339_opts(SecondsFormat::Micros, true))
}

fn epoch_to_utc(epoch: f64) -> Option<chrono::DateTime<chrono::Utc>> {
    // Above 1e11 seconds is year 5138: such values are milliseconds.
    let micros = if epoch.abs() < 1e11 { epoch * 1e6 } else { epoch * 1e3 };
    if !micros.is_finite() {
        return None;
    }
    chrono::DateTime::from_timestamp_micros(micros as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pairs(fields: &[(&str, &str)]) -> Vec<(String, String)> {
        fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn single_json_field_with_ecs_names() {
        let document = r#"{"@timestamp":"2026-11-27T12:00:00+02:00","log":{"level":"FATAL"},
            "message":"db down","service":{"name":"orders"},"host":{"name":"db-1"},"trace_id":"t1"}"#;
        let event = decode_fields("5-0", &pairs(&[("data", document)])).unwrap();
        assert_eq!(event.id, "5-0");
        assert_eq!(event.level, Level::Critical);
        assert_eq!(event.timestamp, "2026-11-27T10:00:00.000000Z");
        assert_eq!(event.message, "db down");
        assert_eq!(event.service, "orders");
        assert_eq!(event.host, "db-1");
        assert_eq!(event.extra.get("trace_id").map(String::as_str), Some("t1"));
    }

    #[test]
    fn flat_pairs_with_aliases() {
        let fields = pairs(&[
            ("msg", "oops"),
            ("severity", "2"),
            ("program", "cron"),
            ("hostname", "h"),
        ]);
        let event = decode_fields("6-0", &fields).unwrap();
        assert_eq!(event.level, Level::Critical);
        assert_eq!(event.service, "cron");
        assert_eq!(event.host, "h");
        assert_eq!(event.message, "oops");
    }

    #[test]
    fn epoch_times_and_defaults() {
        let seconds = decode_fields("1-0", &pairs(&[("message", "m"), ("time", "1700000000")])).unwrap();
        assert_eq!(seconds.timestamp, "2023-11-14T22:13:20.000000Z");
        assert_eq!(seconds.level, Level::Info);
        let millis = decode_json_document("x", r#"{"message":"m","ts":1700000000500}"#).unwrap();
        assert_eq!(millis.timestamp, "2023-11-14T22:13:20.500000Z");
        let odd = decode_json_document("x", r#"{"message":"m","time":"yesterday"}"#).unwrap();
        assert_eq!(odd.extra.get("raw_timestamp").map(String::as_str), Some("yesterday"));
    }

    #[test]
    fn missing_message_and_unknown_level_are_errors() {
        assert!(
            decode_fields("1-0", &pairs(&[("foo", "bar")]))
                .unwrap_err()
                .starts_with("no message field")
        );
        let unknown = decode_fields("1-0", &pairs(&[("msg", "m"), ("level", "loud")]));
        assert_eq!(unknown.unwrap_err(), "unknown level \"loud\"");
        assert!(decode_json_document("x", "[1,2]").is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_fields_never_panic(fields in proptest::collection::vec((".{0,12}", ".{0,40}"), 0..6)) {
            let _ = decode_fields("1-0", &fields);
        }

        #[test]
        fn arbitrary_documents_never_panic(text in ".{0,200}") {
            let _ = decode_json_document("x", &text);
        }

        #[test]
        fn level_and_message_survive_any_alias(
            level_index in 0usize..LEVEL_NAMES.len(),
            message_index in 0usize..MESSAGE_NAMES.len(),
            severity in 0u8..8,
            message in "[a-z ]{1,30}",
        ) {
            let document = serde_json::json!({ LEVEL_NAMES[level_index]: severity, MESSAGE_NAMES[message_index]: message });
            let event = decode_json_document("x", &document.to_string()).unwrap();
            prop_assert_eq!(event.level, Level::from_syslog_severity(severity).unwrap());
            prop_assert_eq!(event.message, message);
        }
    }
}
