//! The shared event model and its on-stream encoding.
//!
//! Encoding v1 (documented in the README): a stream entry holds either
//! - `v=1`, `event=<JSON event>`: one event per entry, readable by any tool, or
//! - `v=1`, `n=<count>`, `events=<NDJSON>`: `n` events, one JSON document per line.
//!
//! Entries without `v` come from other shippers and are read by [`foreign`].

pub mod foreign;
pub mod level;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use level::Level;

/// Version written in the `v` field of every entry we produce.
pub const ENCODING_VERSION: &str = "1";

/// One log event. `id` is unique per event: for our agents `<agent-id>:<run>:<seq>`, for
/// entries written by other shippers `<stream-entry-id>#<index>`, stable across redeliveries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogEvent {
    pub id: String,
    /// RFC 3339, UTC.
    pub timestamp: String,
    #[serde(with = "level_serde")]
    pub level: Level,
    pub service: String,
    pub host: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, String>,
}

mod level_serde {
    use super::Level;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(level: &Level, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(level.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Level, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Why an entry, or one event inside a packed entry, could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub reason: String,
    /// The raw input, as JSON text, so that nothing is lost.
    pub raw: String,
}

/// What one stream entry (or list item) decodes to: its events, and the parts that could
/// not be decoded, each with its reason.
#[derive(Debug, Default)]
pub struct DecodedEntry {
    pub events: Vec<LogEvent>,
    pub rejected: Vec<Rejected>,
}

impl LogEvent {
    /// Appends the JSON encoding of this event to `out` (no trailing newline).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        serde_json::to_writer(out, self).expect("serialising a LogEvent into memory cannot fail");
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("serialising a LogEvent into memory cannot fail")
    }
}

/// Decodes the fields of one stream entry, in any of the accepted shapes.
pub fn decode_entry(entry_id: &str, fields: &[(String, String)]) -> DecodedEntry {
    let field = |name: &str| fields.iter().find(|(key, _)| key == name).map(|(_, v)| v);
    let mut decoded = DecodedEntry::default();
    match field("v") {
        Some(version) if version == ENCODING_VERSION => {
            if let Some(event_json) = field("event") {
                decode_native_line(event_json, &mut decoded);
            } else if let Some(ndjson) = field("events") {
                for line in ndjson.split('\n').filter(|line| !line.is_empty()) {
                    decode_native_line(line, &mut decoded);
                }
            } else {
                decoded.rejected.push(Rejected {
                    reason: "entry v=1 has neither an event nor an events field".into(),
                    raw: fields_as_json(fields),
                });
            }
        }
        Some(version) => decoded.rejected.push(Rejected {
            reason: format!("unsupported encoding version {version:?}"),
            raw: fields_as_json(fields),
        }),
        None => match foreign::decode_fields(entry_id, fields) {
            Ok(event) => decoded.events.push(event),
            Err(reason) => decoded.rejected.push(Rejected {
                reason,
                raw: fields_as_json(fields),
            }),
        },
    }
    decoded
}

/// Decodes one list item: a JSON event, ours or another shipper's.
pub fn decode_list_item(item_id: &str, item: &str) -> DecodedEntry {
    let mut decoded = DecodedEntry::default();
    if let Ok(event) = serde_json::from_str::<LogEvent>(item) {
        decoded.events.push(event);
        return decoded;
    }
    match foreign::decode_json_document(item_id, item) {
        Ok(event) => decoded.events.push(event),
        Err(reason) => decoded.rejected.push(Rejected {
            reason,
            raw: serde_json::Value::String(item.to_string()).to_string(),
        }),
    }
    decoded
}

fn decode_native_line(line: &str, decoded: &mut DecodedEntry) {
    match serde_json::from_str::<LogEvent>(line) {
        Ok(event) => decoded.events.push(event),
        Err(error) => decoded.rejected.push(Rejected {
            reason: format!("malformed event: {error}"),
            raw: serde_json::Value::String(line.to_string()).to_string(),
        }),
    }
}

/// The raw fields of an entry as a JSON object, for the dead-letter stream.
pub fn fields_as_json(fields: &[(String, String)]) -> String {
    let object: serde_json::Map<String, serde_json::Value> = fields
        .iter()
        .map(|(key, value)| (key.clone(), serde_json::Value::String(value.clone())))
        .collect();
    serde_json::Value::Object(object).to_string()
}

/// Current time as RFC 3339 UTC with microseconds, the format of `timestamp`.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: &str, level: Level) -> LogEvent {
        LogEvent {
            id: id.into(),
            timestamp: "2026-11-27T10:00:00.000001Z".into(),
            level,
            service: "api".into(),
            host: "web-1".into(),
            message: "disk \"full\"\nsecond line".into(),
            extra: BTreeMap::from([("request_id".into(), "r-1".into())]),
        }
    }

    fn pairs(fields: &[(&str, &str)]) -> Vec<(String, String)> {
        fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn single_entry_round_trip() {
        let event = sample("a:1:0", Level::Critical);
        let fields = pairs(&[("v", "1"), ("event", &event.to_json())]);
        let decoded = decode_entry("1-0", &fields);
        assert_eq!(decoded.events, vec![event]);
        assert!(decoded.rejected.is_empty());
    }

    #[test]
    fn packed_entry_keeps_good_events_and_rejects_bad_lines() {
        let first = sample("a:1:0", Level::Info);
        let second = sample("a:1:1", Level::Error);
        let ndjson = format!("{}\nnot json\n{}", first.to_json(), second.to_json());
        let fields = pairs(&[("v", "1"), ("n", "3"), ("events", &ndjson)]);
        let decoded = decode_entry("1-0", &fields);
        assert_eq!(decoded.events, vec![first, second]);
        assert_eq!(decoded.rejected.len(), 1);
        assert!(decoded.rejected[0].reason.starts_with("malformed event"));
        assert_eq!(decoded.rejected[0].raw, "\"not json\"");
    }

    #[test]
    fn unknown_version_is_rejected_with_raw_fields() {
        let fields = pairs(&[("v", "9"), ("event", "{}")]);
        let decoded = decode_entry("1-0", &fields);
        assert!(decoded.events.is_empty());
        assert_eq!(decoded.rejected[0].reason, "unsupported encoding version \"9\"");
        assert_eq!(decoded.rejected[0].raw, r#"{"event":"{}","v":"9"}"#);
    }

    #[test]
    fn list_item_accepts_native_and_foreign_json() {
        let event = sample("a:1:7", Level::Warning);
        assert_eq!(decode_list_item("x", &event.to_json()).events, vec![event]);
        let foreign = decode_list_item("q#1", r#"{"msg":"boom","severity":"crit","app":"db"}"#);
        assert_eq!(foreign.events[0].level, Level::Critical);
        assert_eq!(foreign.events[0].service, "db");
        assert_eq!(foreign.events[0].id, "q#1");
        assert_eq!(decode_list_item("q#2", "garbage").rejected.len(), 1);
    }
}
