//! The shared event model and its on-stream encoding.
//!
//! Encoding v1 (documented in the README): a stream entry holds either
//! - `v=1`, `event=<JSON event>`: one event per entry, readable by any tool, or
//! - `v=1`, `n=<count>`, `events=<NDJSON>`: `n` events, one JSON document per line.
//!
//! Entries without `v` come from other shippers and are read by [`foreign`]; raw lines
//! from real sources are parsed by [`line`].
//!
//! Invariants of decoding (an entry is taken whole or not at all, never half-read):
//! - an entry larger than the cap (`max_entry_bytes`, default [`DEFAULT_MAX_ENTRY_BYTES`])
//!   is not parsed: it is rejected whole, with its raw fields truncated
//! - a v1 entry with both `event` and `events`, or whose `n` is missing or differs from the
//!   number of lines in `events`, is rejected whole with the reason
//! - in a well-formed packed entry, each line that is not a valid event is rejected alone

pub mod foreign;
pub mod level;
pub mod line;
pub mod syslog;

use std::borrow::Cow;
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

/// What one stream entry (or list item) decodes to: how many valid events it held, those
/// of them at or above the level of interest, and the parts that could not be decoded.
/// `E` is [`LogEvent`], or [`EventRef`] borrowing from the entry's fields.
#[derive(Debug)]
pub struct DecodedEntry<E = LogEvent> {
    pub event_count: u64,
    /// The valid events at or above the level of interest (the others are only counted).
    pub events: Vec<E>,
    pub rejected: Vec<Rejected>,
}

impl<E> Default for DecodedEntry<E> {
    fn default() -> Self {
        DecodedEntry {
            event_count: 0,
            events: Vec::new(),
            rejected: Vec::new(),
        }
    }
}

impl DecodedEntry {
    fn keep(&mut self, event: LogEvent, interest: Level) {
        self.event_count += 1;
        if event.level >= interest {
            self.events.push(event);
        }
    }
}

impl<'a> DecodedEntry<EventRef<'a>> {
    fn keep_view(&mut self, event: EventRef<'a>, interest: Level) {
        self.event_count += 1;
        if event.level >= interest {
            self.events.push(event);
        }
    }
}

impl From<DecodedEntry> for DecodedEntry<EventRef<'static>> {
    fn from(decoded: DecodedEntry) -> Self {
        DecodedEntry {
            event_count: decoded.event_count,
            events: decoded.events.into_iter().map(EventRef::from_event).collect(),
            rejected: decoded.rejected,
        }
    }
}

impl<'a> From<DecodedEntry<EventRef<'a>>> for DecodedEntry {
    fn from(decoded: DecodedEntry<EventRef<'a>>) -> Self {
        DecodedEntry {
            event_count: decoded.event_count,
            events: decoded.events.iter().map(EventRef::to_event).collect(),
            rejected: decoded.rejected,
        }
    }
}

/// A decoded event whose text fields borrow from the entry they were read from where JSON
/// needs no unescaping (owned otherwise): the rules read every event of an entry, and only
/// the few that end up in an alert record are turned into a [`LogEvent`]
/// ([`EventRef::to_event`]). Accepts exactly what `LogEvent` accepts, and
/// [`EventRef::to_event`] is what `LogEvent` decodes to (property-tested below).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventRef<'a> {
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    #[serde(borrow)]
    pub timestamp: Cow<'a, str>,
    #[serde(with = "level_serde")]
    pub level: Level,
    #[serde(borrow)]
    pub service: Cow<'a, str>,
    #[serde(borrow)]
    pub host: Cow<'a, str>,
    #[serde(borrow)]
    pub message: Cow<'a, str>,
    /// In the order of the JSON object; a name given twice keeps its last value, as in
    /// `LogEvent`'s map (see [`EventRef::extra`]).
    #[serde(default, borrow)]
    pub extra: ExtraList<'a>,
}

/// The `extra` object of an [`EventRef`]: its pairs in text order, duplicates kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtraList<'a>(pub Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl<'de: 'a, 'a> Deserialize<'de> for ExtraList<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Pairs<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Pairs<'a> {
            type Value = ExtraList<'a>;
            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a map of strings")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<ExtraList<'a>, A::Error> {
                let mut pairs = Vec::new();
                while let Some((BorrowedText(name), BorrowedText(value))) = map.next_entry()? {
                    pairs.push((name, value));
                }
                Ok(ExtraList(pairs))
            }
        }
        deserializer.deserialize_map(Pairs(std::marker::PhantomData))
    }
}

/// A JSON string, borrowed where it needs no unescaping.
struct BorrowedText<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for BorrowedText<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Text<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Text<'a> {
            type Value = BorrowedText<'a>;
            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, text: &'de str) -> Result<BorrowedText<'a>, E> {
                Ok(BorrowedText(Cow::Borrowed(text)))
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<BorrowedText<'a>, E> {
                Ok(BorrowedText(Cow::Owned(text.to_string())))
            }
            fn visit_string<E: serde::de::Error>(self, text: String) -> Result<BorrowedText<'a>, E> {
                Ok(BorrowedText(Cow::Owned(text)))
            }
        }
        deserializer.deserialize_str(Text(std::marker::PhantomData))
    }
}

impl<'a> EventRef<'a> {
    /// The extra field `name`: its last value, as in `LogEvent`'s map.
    pub fn extra(&self, name: &str) -> Option<&str> {
        self.extra
            .0
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_ref())
    }

    /// The owned event, equal to what `LogEvent` decodes the same text to.
    pub fn to_event(&self) -> LogEvent {
        let mut extra = BTreeMap::new();
        for (name, value) in &self.extra.0 {
            // Later pairs replace earlier ones, as when serde fills the map.
            extra.insert(name.to_string(), value.to_string());
        }
        LogEvent {
            id: self.id.to_string(),
            timestamp: self.timestamp.to_string(),
            level: self.level,
            service: self.service.to_string(),
            host: self.host.to_string(),
            message: self.message.to_string(),
            extra,
        }
    }

    /// A view that owns the fields of `event` (events not read from native text).
    pub fn from_event(event: LogEvent) -> EventRef<'static> {
        EventRef {
            id: Cow::Owned(event.id),
            timestamp: Cow::Owned(event.timestamp),
            level: event.level,
            service: Cow::Owned(event.service),
            host: Cow::Owned(event.host),
            message: Cow::Owned(event.message),
            extra: ExtraList(
                event
                    .extra
                    .into_iter()
                    .map(|(name, value)| (Cow::Owned(name), Cow::Owned(value)))
                    .collect(),
            ),
        }
    }
}

/// Borrowed view of a native event: checks every field without allocating, so that only
/// the events someone is interested in (a few percent: those that may raise an alert)
/// are decoded into a [`LogEvent`]. Must accept exactly what `LogEvent` accepts.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // only `level` is read; the others are checked by deserialising them
struct EventView<'a> {
    id: AnyString,
    timestamp: AnyString,
    #[serde(borrow)]
    level: Cow<'a, str>,
    service: AnyString,
    host: AnyString,
    message: AnyString,
    #[serde(default)]
    extra: StringMap,
}

/// Any JSON string, checked and dropped.
struct AnyString;

impl<'de> Deserialize<'de> for AnyString {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Check;
        impl serde::de::Visitor<'_> for Check {
            type Value = AnyString;
            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<AnyString, E> {
                Ok(AnyString)
            }
        }
        deserializer.deserialize_str(Check)
    }
}

/// A JSON object of strings (the shape of `extra`), checked and dropped.
#[derive(Default)]
struct StringMap;

impl<'de> Deserialize<'de> for StringMap {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Check;
        impl<'de> serde::de::Visitor<'de> for Check {
            type Value = StringMap;
            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a map of strings")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<StringMap, A::Error> {
                while map.next_entry::<AnyString, AnyString>()?.is_some() {}
                Ok(StringMap)
            }
        }
        deserializer.deserialize_map(Check)
    }
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

/// Largest stream entry or list item the police decodes, in bytes (field names and values):
/// 16 MiB. Our agents write at most 2,048 events per batch, far below it; a bigger entry is
/// a mistake or an attack, and parsing it would cost several times its size in memory.
pub const DEFAULT_MAX_ENTRY_BYTES: usize = 16 << 20;

/// Bytes of an oversized entry kept in its dead letter: enough to tell where it came from,
/// without copying megabytes into the dead-letter stream.
pub const OVERSIZED_RAW_BYTES: usize = 4096;

/// [`decode_entry_within`] with the default cap, [`DEFAULT_MAX_ENTRY_BYTES`].
pub fn decode_entry(entry_id: &str, fields: &[(String, String)], interest: Level) -> DecodedEntry {
    decode_entry_within(entry_id, fields, interest, DEFAULT_MAX_ENTRY_BYTES)
}

/// Decodes the fields of one stream entry, in any of the accepted shapes. Events below
/// `interest` are validated and counted, not returned. An entry over `max_entry_bytes` is
/// rejected whole without being parsed.
pub fn decode_entry_within(
    entry_id: &str,
    fields: &[(String, String)],
    interest: Level,
    max_entry_bytes: usize,
) -> DecodedEntry {
    decode_entry_views_within(entry_id, fields, interest, max_entry_bytes).into()
}

/// As [`decode_entry_within`], the events borrowing from `fields` where they can: nothing
/// is copied for an event no rule needs whole.
pub fn decode_entry_views_within<'a>(
    entry_id: &str,
    fields: &'a [(String, String)],
    interest: Level,
    max_entry_bytes: usize,
) -> DecodedEntry<EventRef<'a>> {
    let mut decoded = DecodedEntry::default();
    let entry_bytes: usize = fields.iter().map(|(key, value)| key.len() + value.len()).sum();
    if entry_bytes > max_entry_bytes {
        decoded.rejected.push(Rejected {
            reason: oversized_reason(entry_bytes, max_entry_bytes),
            raw: truncated_fields_as_json(fields, OVERSIZED_RAW_BYTES),
        });
        return decoded;
    }
    let field = |name: &str| fields.iter().find(|(key, _)| key == name).map(|(_, v)| v);
    let reject_whole = |decoded: &mut DecodedEntry<EventRef<'a>>, reason: String| {
        decoded.rejected.push(Rejected {
            reason,
            raw: fields_as_json(fields),
        })
    };
    // A field named twice would be read once and the other value lost without a trace.
    if let Some(repeated) = ["v", "n", "event", "events"]
        .into_iter()
        .find(|name| fields.iter().filter(|(key, _)| key == name).count() > 1)
    {
        reject_whole(&mut decoded, format!("entry has the field {repeated:?} more than once"));
        return decoded;
    }
    match field("v") {
        Some(version) if version == ENCODING_VERSION => match (field("event"), field("events")) {
            (Some(_), Some(_)) => reject_whole(&mut decoded, "entry v=1 has both an event and an events field".into()),
            (Some(event_json), None) => {
                decode_native_line(event_json, interest, &mut decoded);
                // The whole entry, not only its line: a replayed entry's fields
                // (`replay_count`) must survive a second trip to the dead letters.
                for rejected in &mut decoded.rejected {
                    rejected.raw = fields_as_json(fields);
                }
            }
            (None, Some(ndjson)) => {
                let lines: Vec<&str> = ndjson.split('\n').filter(|line| !line.is_empty()).collect();
                if let Err(reason) = check_event_count(field("n").map(String::as_str), lines.len()) {
                    reject_whole(&mut decoded, reason);
                    return decoded;
                }
                for line in lines {
                    decode_native_line(line, interest, &mut decoded);
                }
            }
            (None, None) => reject_whole(
                &mut decoded,
                "entry v=1 has neither an event nor an events field".into(),
            ),
        },
        Some(version) => decoded.rejected.push(Rejected {
            reason: format!("unsupported encoding version {version:?}"),
            raw: fields_as_json(fields),
        }),
        None => match foreign::decode_fields(entry_id, &without_replay_fields(fields)) {
            Ok(event) => decoded.keep_view(EventRef::from_event(event), interest),
            Err(reason) => decoded.rejected.push(Rejected {
                reason,
                raw: fields_as_json(fields),
            }),
        },
    }
    decoded
}

/// Field naming the dead letter an entry was replayed from (`logsentinel dlq replay`).
pub const REPLAYED_FROM_FIELD: &str = "replayed_from";
/// Field counting how often an entry was replayed from the dead letters.
pub const REPLAY_COUNT_FIELD: &str = "replay_count";

/// A replayed foreign entry decodes like the original: the two fields `dlq replay` adds
/// are not the shipper's (they would become `extra`, or hide a one-field JSON document).
fn without_replay_fields(fields: &[(String, String)]) -> Cow<'_, [(String, String)]> {
    if !fields.iter().any(|(key, _)| key == REPLAYED_FROM_FIELD) {
        return Cow::Borrowed(fields);
    }
    Cow::Owned(
        fields
            .iter()
            .filter(|(key, _)| key != REPLAYED_FROM_FIELD && key != REPLAY_COUNT_FIELD)
            .cloned()
            .collect(),
    )
}

/// The `n` of a packed entry must name the number of lines it holds: a cut or doubled
/// payload (a client writing part of a batch, a hand-edited entry) is caught here.
fn check_event_count(count_field: Option<&str>, line_count: usize) -> Result<(), String> {
    let Some(count_text) = count_field else {
        return Err(format!("entry v=1 with events has no n field ({line_count} lines)"));
    };
    match count_text.parse::<usize>() {
        Ok(count) if count == line_count => Ok(()),
        Ok(count) => Err(format!(
            "entry v=1 says n={count} but its events field holds {line_count} lines"
        )),
        Err(_) => Err(format!("entry v=1 has n={count_text:?}, not a count")),
    }
}

fn oversized_reason(entry_bytes: usize, max_entry_bytes: usize) -> String {
    format!(
        "entry of {entry_bytes} bytes is over max_entry_bytes={max_entry_bytes}, not decoded \
         (raw truncated to {OVERSIZED_RAW_BYTES} bytes)"
    )
}

/// The longest prefix of `text` of at most `max_bytes` bytes that ends on a char boundary.
fn prefix_within(text: &str, max_bytes: usize) -> &str {
    let mut end = text.len().min(max_bytes);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// As [`fields_as_json`], keeping at most `max_bytes` bytes of names and values in all.
fn truncated_fields_as_json(fields: &[(String, String)], max_bytes: usize) -> String {
    let mut budget = max_bytes;
    let mut kept = Vec::new();
    for (key, value) in fields {
        let kept_key = prefix_within(key, budget);
        budget -= kept_key.len();
        let kept_value = prefix_within(value, budget);
        budget -= kept_value.len();
        kept.push((kept_key.to_string(), kept_value.to_string()));
        if budget == 0 {
            break;
        }
    }
    fields_as_json(&kept)
}

/// [`decode_list_item_within`] with the default cap, [`DEFAULT_MAX_ENTRY_BYTES`].
pub fn decode_list_item(item_id: &str, item: &str, interest: Level) -> DecodedEntry {
    decode_list_item_within(item_id, item, interest, DEFAULT_MAX_ENTRY_BYTES)
}

/// Decodes one list item: a JSON event, ours or another shipper's. An item over
/// `max_entry_bytes` is rejected whole without being parsed.
pub fn decode_list_item_within(item_id: &str, item: &str, interest: Level, max_entry_bytes: usize) -> DecodedEntry {
    let mut decoded = DecodedEntry::default();
    if item.len() > max_entry_bytes {
        decoded.rejected.push(Rejected {
            reason: oversized_reason(item.len(), max_entry_bytes),
            raw: serde_json::Value::String(prefix_within(item, OVERSIZED_RAW_BYTES).to_string()).to_string(),
        });
        return decoded;
    }
    if let Ok(event) = serde_json::from_str::<LogEvent>(item) {
        decoded.keep(event, interest);
        return decoded;
    }
    match foreign::decode_json_document(item_id, item) {
        Ok(event) => decoded.keep(event, interest),
        Err(reason) => decoded.rejected.push(Rejected {
            reason,
            raw: serde_json::Value::String(item.to_string()).to_string(),
        }),
    }
    decoded
}

fn decode_native_line<'a>(line: &'a str, interest: Level, decoded: &mut DecodedEntry<EventRef<'a>>) {
    // Every level is of interest (a rule file without level filters): one pass.
    if interest == Level::Unknown {
        match serde_json::from_str::<EventRef>(line) {
            Ok(event) => decoded.keep_view(event, interest),
            Err(error) => decoded.rejected.push(malformed_with_level(line, error)),
        }
        return;
    }
    let level = match serde_json::from_str::<EventView>(line) {
        Ok(view) => view.level.parse::<Level>(),
        Err(error) => {
            decoded.rejected.push(malformed(line, &error));
            return;
        }
    };
    match level {
        Ok(level) if level < interest => decoded.event_count += 1,
        // Interesting, or an invalid level: the full decode keeps it or says why not.
        _ => match serde_json::from_str::<EventRef>(line) {
            Ok(event) => decoded.keep_view(event, interest),
            Err(error) => decoded.rejected.push(malformed(line, &error)),
        },
    }
}

/// The rejection of a line [`EventRef`] refused, with the reason the two-pass decode
/// gives (the view's error first, then the full decode's): the same on every path.
fn malformed_with_level(line: &str, error: serde_json::Error) -> Rejected {
    match serde_json::from_str::<EventView>(line) {
        Err(view_error) => malformed(line, &view_error),
        Ok(_) => malformed(line, &error),
    }
}

fn malformed(line: &str, error: &serde_json::Error) -> Rejected {
    Rejected {
        reason: format!("malformed event: {error}"),
        raw: serde_json::Value::String(line.to_string()).to_string(),
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
        let decoded = decode_entry("1-0", &fields, Level::Trace);
        assert_eq!(decoded.events, vec![event]);
        assert_eq!(decoded.event_count, 1);
        assert!(decoded.rejected.is_empty());
    }

    #[test]
    fn packed_entry_keeps_good_events_and_rejects_bad_lines() {
        let first = sample("a:1:0", Level::Info);
        let second = sample("a:1:1", Level::Error);
        let ndjson = format!("{}\nnot json\n{}", first.to_json(), second.to_json());
        let fields = pairs(&[("v", "1"), ("n", "3"), ("events", &ndjson)]);
        let decoded = decode_entry("1-0", &fields, Level::Trace);
        assert_eq!(decoded.events, vec![first, second]);
        assert_eq!(decoded.event_count, 2);
        assert_eq!(decoded.rejected.len(), 1);
        assert!(decoded.rejected[0].reason.starts_with("malformed event"));
        assert_eq!(decoded.rejected[0].raw, "\"not json\"");
    }

    #[test]
    fn a_replayed_entry_decodes_like_the_original() {
        let document = r#"{"msg":"boom","severity":"crit","app":"db","ts":"2026-11-27T10:00:00Z"}"#;
        let original = decode_entry("7-0", &pairs(&[("data", document)]), Level::Trace);
        let replayed_fields = pairs(&[("data", document), ("replayed_from", "9-0"), ("replay_count", "1")]);
        let replayed = decode_entry("7-0", &replayed_fields, Level::Trace);
        assert_eq!(
            replayed.events, original.events,
            "no replay field in extra, the document read whole"
        );
        assert!(replayed.rejected.is_empty());
    }

    #[test]
    fn a_one_event_entry_is_dead_lettered_whole() {
        let fields = pairs(&[("v", "1"), ("event", "not json"), ("replay_count", "2")]);
        let decoded = decode_entry("1-0", &fields, Level::Critical);
        assert_eq!(decoded.rejected.len(), 1);
        assert_eq!(decoded.rejected[0].raw, fields_as_json(&fields), "the count survives");
    }

    #[test]
    fn unknown_version_is_rejected_with_raw_fields() {
        let fields = pairs(&[("v", "9"), ("event", "{}")]);
        let decoded = decode_entry("1-0", &fields, Level::Trace);
        assert!(decoded.events.is_empty());
        assert_eq!(decoded.rejected[0].reason, "unsupported encoding version \"9\"");
        assert_eq!(decoded.rejected[0].raw, r#"{"event":"{}","v":"9"}"#);
    }

    #[test]
    fn list_item_accepts_native_and_foreign_json() {
        let event = sample("a:1:7", Level::Warning);
        assert_eq!(
            decode_list_item("x", &event.to_json(), Level::Trace).events,
            vec![event]
        );
        let foreign = decode_list_item("q#1", r#"{"msg":"boom","severity":"crit","app":"db"}"#, Level::Trace);
        assert_eq!(foreign.events[0].level, Level::Critical);
        assert_eq!(foreign.events[0].service, "db");
        assert_eq!(foreign.events[0].id, "q#1");
        assert_eq!(decode_list_item("q#2", "garbage", Level::Trace).rejected.len(), 1);
    }

    #[test]
    fn every_level_of_interest_gives_the_same_events_and_reasons() {
        let info = sample("a:1:0", Level::Info);
        let missing_message = r#"{"id":"a:1:2","timestamp":"t","level":"INFO","service":"s","host":"h"}"#;
        let bad_level = r#"{"id":"a:1:3","timestamp":"t","level":"LOUD","service":"s","host":"h","message":"m"}"#;
        let bad_level_and_field = r#"{"id":"a:1:4","timestamp":"t","level":"LOUD","service":"s","host":"h"}"#;
        let ndjson = [
            info.to_json(),
            missing_message.into(),
            bad_level.into(),
            bad_level_and_field.into(),
            "{".into(),
        ]
        .join("\n");
        let fields = pairs(&[("v", "1"), ("n", "5"), ("events", &ndjson)]);
        // `Unknown` reads each line once, `Trace` twice (view, then the event): same result.
        let once = decode_entry("1-0", &fields, Level::Unknown);
        let twice = decode_entry("1-0", &fields, Level::Trace);
        assert_eq!(once.events, vec![info]);
        assert_eq!(once.events, twice.events);
        assert_eq!(once.event_count, twice.event_count);
        assert_eq!(once.rejected, twice.rejected);
        assert_eq!(once.rejected.len(), 4);
    }

    #[test]
    fn events_below_interest_are_validated_and_counted_only() {
        let info = sample("a:1:0", Level::Info);
        let critical = sample("a:1:1", Level::Critical);
        let missing_message = r#"{"id":"a:1:2","timestamp":"t","level":"INFO","service":"s","host":"h"}"#;
        let bad_level = r#"{"id":"a:1:3","timestamp":"t","level":"LOUD","service":"s","host":"h","message":"m"}"#;
        let ndjson = [
            info.to_json(),
            critical.to_json(),
            missing_message.into(),
            bad_level.into(),
        ]
        .join("\n");
        let fields = pairs(&[("v", "1"), ("n", "4"), ("events", &ndjson)]);
        let decoded = decode_entry("1-0", &fields, Level::Critical);
        assert_eq!(decoded.event_count, 2);
        assert_eq!(decoded.events, vec![critical]);
        let reasons: Vec<&str> = decoded
            .rejected
            .iter()
            .map(|rejected| rejected.reason.as_str())
            .collect();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(reasons[0].contains("missing field `message`"), "{reasons:?}");
        assert!(reasons[1].contains("unknown level"), "{reasons:?}");
    }

    #[test]
    fn an_entry_with_both_event_and_events_is_rejected_whole() {
        let event = sample("a:1:0", Level::Critical);
        let fields = pairs(&[
            ("v", "1"),
            ("event", &event.to_json()),
            ("n", "1"),
            ("events", &event.to_json()),
        ]);
        let decoded = decode_entry("1-0", &fields, Level::Trace);
        assert!(decoded.events.is_empty());
        assert_eq!(decoded.event_count, 0);
        assert_eq!(decoded.rejected.len(), 1);
        assert_eq!(
            decoded.rejected[0].reason,
            "entry v=1 has both an event and an events field"
        );
        assert_eq!(decoded.rejected[0].raw, fields_as_json(&fields));
    }

    #[test]
    fn an_entry_naming_a_field_twice_is_rejected_whole() {
        let first = sample("a:1:0", Level::Critical);
        let second = sample("a:1:1", Level::Critical);
        let fields = pairs(&[("v", "1"), ("event", &first.to_json()), ("event", &second.to_json())]);
        let decoded = decode_entry("1-0", &fields, Level::Trace);
        assert!(decoded.events.is_empty(), "neither event is half-read");
        assert_eq!(decoded.rejected.len(), 1);
        assert_eq!(
            decoded.rejected[0].reason,
            "entry has the field \"event\" more than once"
        );
    }

    #[test]
    fn a_packed_entry_whose_n_disagrees_is_rejected_whole() {
        let first = sample("a:1:0", Level::Critical);
        let second = sample("a:1:1", Level::Critical);
        let ndjson = format!("{}\n{}", first.to_json(), second.to_json());
        for (count_field, reason) in [
            (Some("3"), "entry v=1 says n=3 but its events field holds 2 lines"),
            (Some("1"), "entry v=1 says n=1 but its events field holds 2 lines"),
            (Some("two"), "entry v=1 has n=\"two\", not a count"),
            (None, "entry v=1 with events has no n field (2 lines)"),
        ] {
            let mut fields = pairs(&[("v", "1"), ("events", &ndjson)]);
            if let Some(count) = count_field {
                fields.push(("n".into(), count.into()));
            }
            let decoded = decode_entry("1-0", &fields, Level::Trace);
            assert!(decoded.events.is_empty(), "{count_field:?}");
            assert_eq!(decoded.event_count, 0, "{count_field:?}");
            let reasons: Vec<&str> = decoded
                .rejected
                .iter()
                .map(|rejected| rejected.reason.as_str())
                .collect();
            assert_eq!(reasons, vec![reason]);
            assert_eq!(decoded.rejected[0].raw, fields_as_json(&fields));
        }
        let fields = pairs(&[("v", "1"), ("n", "2"), ("events", &format!("{ndjson}\n"))]);
        assert_eq!(
            decode_entry("1-0", &fields, Level::Trace).events.len(),
            2,
            "a trailing newline is no line"
        );
    }

    #[test]
    fn an_entry_over_the_cap_is_rejected_whole_with_a_truncated_raw() {
        let event = sample("a:1:0", Level::Critical);
        let fields = pairs(&[("v", "1"), ("event", &event.to_json())]);
        let entry_bytes = 1 + 1 + 5 + event.to_json().len();
        let at_cap = decode_entry_within("1-0", &fields, Level::Trace, entry_bytes);
        assert_eq!(
            at_cap.events,
            vec![event.clone()],
            "an entry of exactly the cap is decoded"
        );

        let decoded = decode_entry_within("1-0", &fields, Level::Trace, entry_bytes - 1);
        assert!(decoded.events.is_empty());
        assert_eq!(decoded.rejected.len(), 1);
        assert_eq!(
            decoded.rejected[0].reason,
            format!(
                "entry of {entry_bytes} bytes is over max_entry_bytes={}, not decoded (raw truncated to 4096 bytes)",
                entry_bytes - 1
            )
        );

        // Megabytes of payload: the dead letter keeps a valid JSON object of 4 KiB at most,
        // cut on a character boundary.
        let huge_message = "é".repeat(3 << 20);
        let fields = pairs(&[("v", "1"), ("event", &huge_message)]);
        let decoded = decode_entry_within("1-0", &fields, Level::Trace, 1 << 20);
        let raw: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&decoded.rejected[0].raw).unwrap();
        assert_eq!(raw["v"], "1");
        let kept = raw["event"].as_str().unwrap();
        assert!(huge_message.starts_with(kept));
        assert_eq!(
            kept.len(),
            OVERSIZED_RAW_BYTES - 1 - 1 - 5 - 1,
            "4096 bytes of names and values, whole chars"
        );

        let huge_item = format!("{{\"message\":\"{huge_message}\"}}");
        let decoded = decode_list_item_within("q#1", &huge_item, Level::Trace, 1 << 20);
        assert!(decoded.events.is_empty());
        assert!(
            decoded.rejected[0]
                .reason
                .starts_with(&format!("entry of {} bytes", huge_item.len()))
        );
        let raw: String = serde_json::from_str(&decoded.rejected[0].raw).unwrap();
        assert!(huge_item.starts_with(&raw) && raw.len() <= OVERSIZED_RAW_BYTES);
        assert_eq!(
            decode_list_item_within("q#2", &event.to_json(), Level::Trace, 1 << 20).events,
            vec![event]
        );
    }

    proptest::proptest! {
        /// The borrowed decode the rules read accepts exactly what `LogEvent` accepts, and
        /// its owned form is what `LogEvent` decodes to (escapes, duplicate extra names).
        #[test]
        fn event_ref_and_full_decode_agree(line in ".{0,120}", prefix in proptest::sample::select(vec![
            "", r#"{"id":"a","timestamp":"t","level":"info","service":"s","host":"h","message":"#,
            r#"{"id":"a","timestamp":"t","level":"info","service":"s","host":"h","message":"m","extra":"#,
            r#"{"id":"a\u0041","timestamp":"t","level":"ERROR","service":"s\n","host":"h","message":"m","extra":{"k":"1","k":"#,
        ])) {
            let text = format!("{prefix}{line}");
            let full = serde_json::from_str::<LogEvent>(&text);
            let view = serde_json::from_str::<EventRef>(&text);
            proptest::prop_assert_eq!(full.is_ok(), view.is_ok(), "{}", text);
            if let (Ok(full), Ok(view)) = (full, view) {
                proptest::prop_assert_eq!(view.to_event(), full.clone());
                for name in full.extra.keys() {
                    proptest::prop_assert_eq!(view.extra(name), full.extra.get(name).map(String::as_str));
                }
                proptest::prop_assert_eq!(EventRef::from_event(full.clone()).to_event(), full);
            }
        }

        /// Events of every shape decode alike through the borrowed path and the owned one.
        #[test]
        fn event_ref_round_trips_any_event(
            texts in proptest::collection::vec(".{0,12}", 6),
            extra in proptest::collection::btree_map(".{0,6}", ".{0,6}", 0..4),
        ) {
            let event = LogEvent {
                id: texts[0].clone(),
                timestamp: texts[1].clone(),
                level: Level::Warning,
                service: texts[2].clone(),
                host: texts[3].clone(),
                message: texts[4].clone(),
                extra,
            };
            let json = event.to_json();
            let view = serde_json::from_str::<EventRef>(&json).unwrap();
            proptest::prop_assert_eq!(view.to_event(), event);
        }

        #[test]
        fn view_and_full_decode_agree(line in ".{0,120}", prefix in proptest::sample::select(vec![
            "", r#"{"id":"a","timestamp":"t","level":"info","service":"s","host":"h","message":"#,
            r#"{"id":"a","timestamp":"t","level":"info","service":"s","host":"h","message":"m","extra":"#,
        ])) {
            let text = format!("{prefix}{line}");
            let view_ok = serde_json::from_str::<EventView>(&text).is_ok();
            let full_ok = serde_json::from_str::<LogEvent>(&text).is_ok();
            proptest::prop_assert!(view_ok || !full_ok, "the view rejects what LogEvent accepts: {}", text);
            let view_level_ok = serde_json::from_str::<EventView>(&text).is_ok_and(|view| view.level.parse::<Level>().is_ok());
            proptest::prop_assert!(full_ok || !view_level_ok, "the view accepts what LogEvent rejects: {}", text);
        }
    }
}
