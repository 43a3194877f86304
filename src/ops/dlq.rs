//! `logsentinel dlq list|show|replay|purge`: look at and repair a dead-letter stream.
//!
//! What the writers keep, and so what a replay rebuilds:
//! - the police (settle script) writes `reason`, `source` (the stream or list read),
//!   `entry` (stream mode only: the entry id) and `raw`: the entry's fields as a JSON object,
//!   or one JSON string (a line of a packed entry, a list item); an oversized entry's raw is
//!   cut to 4096 bytes
//! - a sink writes `alert_id`, `alert` (the record as read), `status`, `attempts`, `entry`
//! - an agent writes `reason`, `source` (its agent id) and the first 64 KiB of an event
//!   larger than Redis's `proto-max-bulk-len`: never replayable
//!
//! Invariants:
//! - a replay re-adds the entry in the shape it had: the same fields (plus `replayed_from`
//!   and `replay_count`, which decoding ignores), a packed entry's line as a one-event
//!   entry, a list item as the same item; a sink's record goes back to the alerts stream
//!   routed to that sink only, so other sinks do not deliver it twice
//! - an entry is removed from the dead letters only once re-added (one script, see
//!   [`crate::broker::dead_letters`]): a crash gives a duplicate, never a loss
//! - an entry replayed [`MAX_REPLAYS`] times is refused without `--force`, and a cut raw is
//!   never replayed (it would store a truncated entry)
//! - a purge asks on a terminal and needs `--yes` otherwise
//! - `replay` says of each named id that is no dead letter (never was, or replayed or
//!   purged by another shell first) that it is missing, and counts it apart from refusals:
//!   a refused entry is still there, a missing one is not

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::{Map, Value, json};

use super::output::escape_control;
use crate::broker::dead_letters::{self, ReplayTarget};
use crate::broker::errors::redact_url;
use crate::broker::keys::Keys;
use crate::broker::stream::StreamEntry;
use crate::broker::{self, Connection, reader, stream_id_millis};
use crate::cli::{DlqAction, DlqArgs};
use crate::event::{ENCODING_VERSION, REPLAY_COUNT_FIELD, REPLAYED_FROM_FIELD};

/// Replays of one entry after which `dlq replay` wants `--force`: an entry that came back
/// three times is not fixed by a fourth try.
pub const MAX_REPLAYS: u64 = 3;
/// Dead letters read per XRANGE when scanning the whole stream (`--all`, `--reason`,
/// `--older-than`): a dead letter may hold up to 16 MiB, so pages stay small.
const PAGE_ENTRIES: usize = 100;

/// Which dead letters, and what replaying one means.
struct DeadStream<'a> {
    key: String,
    /// `Some(name)` for a sink's dead letters.
    sink: Option<&'a str>,
    keys: &'a Keys,
}

pub async fn run(args: DlqArgs, redis_url: &str, keys: &Keys) -> anyhow::Result<ExitCode> {
    let dead = DeadStream {
        key: match &args.sink {
            Some(sink) => keys.sink_dead(sink),
            None => keys.dead.clone(),
        },
        sink: args.sink.as_deref(),
        keys,
    };
    let named_ids = match &args.action {
        DlqAction::Show { ids, .. } | DlqAction::Replay { ids, .. } | DlqAction::Purge { ids, .. } => ids.as_slice(),
        DlqAction::List { .. } => &[],
    };
    if let Some(bad_id) = named_ids.iter().find(|id| !is_entry_id(id)) {
        return Err(crate::config::ConfigError::Usage {
            problem: format!("{bad_id:?} is not a dead-letter id (an id looks like 1796136907689-0)"),
        }
        .into());
    }
    let mut connection = broker::connect(redis_url)
        .await
        .with_context(|| format!("cannot reach Redis at {}", redact_url(redis_url)))?;
    match args.action {
        DlqAction::List { limit, json } => list(&mut connection, &dead, limit, json).await,
        DlqAction::Show { ids, json } => show(&mut connection, &dead, &ids, json).await,
        DlqAction::Replay {
            ids,
            reason,
            all,
            dry_run,
            force,
        } => {
            let selection = match (ids.is_empty(), reason, all) {
                (false, _, _) => Selection::Ids(ids),
                (true, Some(text), _) => Selection::ReasonContains(text),
                (true, None, true) => Selection::All,
                (true, None, false) => {
                    return Err(usage("replay", "name dead-letter ids, --reason TEXT or --all"));
                }
            };
            replay(&mut connection, &dead, &selection, dry_run, force).await
        }
        DlqAction::Purge { ids, older_than, yes } => {
            let scope = match (ids.is_empty(), older_than) {
                (false, _) => PurgeScope::Ids(ids),
                (true, Some(age)) => PurgeScope::OlderThan(age.0),
                (true, None) => return Err(usage("purge", "name dead-letter ids or --older-than")),
            };
            purge(&mut connection, &dead, scope, yes).await
        }
    }
}

/// A stream entry id as Redis takes it in XRANGE and XDEL: `MILLISECONDS-SEQUENCE`, or
/// `MILLISECONDS` alone (sequence 0), both 64-bit numbers.
fn is_entry_id(text: &str) -> bool {
    let (milliseconds, sequence) = text.split_once('-').unwrap_or((text, "0"));
    let is_u64 =
        |part: &str| !part.is_empty() && part.bytes().all(|byte| byte.is_ascii_digit()) && part.parse::<u64>().is_ok();
    is_u64(milliseconds) && is_u64(sequence)
}

fn usage(key: &str, problem: &str) -> anyhow::Error {
    crate::config::ConfigError::Option {
        key: key.into(),
        problem: problem.into(),
    }
    .into()
}

fn field<'a>(entry: &'a StreamEntry, name: &str) -> Option<&'a str> {
    entry
        .fields
        .as_deref()?
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// One dead letter as `list` shows it.
struct Summary {
    reason: String,
    deliveries: Option<u64>,
    replays: u64,
}

fn summarise(dead: &DeadStream, entry: &StreamEntry) -> Summary {
    if dead.sink.is_some() {
        let alert: Option<Map<String, Value>> =
            field(entry, "alert").and_then(|alert| serde_json::from_str(alert).ok());
        return Summary {
            reason: field(entry, "status").unwrap_or("").to_string(),
            deliveries: field(entry, "attempts").and_then(|attempts| attempts.parse().ok()),
            replays: alert
                .and_then(|alert| alert.get(REPLAY_COUNT_FIELD).and_then(Value::as_u64))
                .unwrap_or(0),
        };
    }
    let reason = field(entry, "reason").unwrap_or("").to_string();
    // The police names the count only when it is the reason; else the entry failed to
    // decode, which it does on its first delivery.
    let deliveries = reason
        .strip_prefix("delivered ")
        .and_then(|rest| rest.split_once(' '))
        .and_then(|(count, _)| count.parse().ok());
    let replays = field(entry, "raw")
        .and_then(|raw| serde_json::from_str::<Map<String, Value>>(raw).ok())
        .and_then(|raw| {
            raw.get(REPLAY_COUNT_FIELD)
                .and_then(Value::as_str)
                .and_then(|count| count.parse().ok())
        })
        .unwrap_or(0);
    Summary {
        reason,
        deliveries,
        replays,
    }
}

async fn list(
    connection: &mut Connection,
    dead: &DeadStream<'_>,
    limit: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let now_ms = reader::server_time_ms(connection).await?;
    let entries = reader::range(connection, &dead.key, "-", "+", limit).await?;
    let mut lines = Vec::with_capacity(entries.len());
    for entry in &entries {
        let summary = summarise(dead, entry);
        let age_s = now_ms.saturating_sub(stream_id_millis(&entry.id).unwrap_or(now_ms)) / 1000;
        lines.push(if json {
            json!({
                "id": entry.id,
                "age_s": age_s,
                "deliveries": summary.deliveries,
                "replays": summary.replays,
                "reason": summary.reason,
            })
            .to_string()
        } else {
            let deliveries = summary
                .deliveries
                .map_or_else(|| "-".to_string(), |count| count.to_string());
            let age = humantime::format_duration(std::time::Duration::from_secs(age_s)).to_string();
            escape_control(&format!(
                "{}  age={}  deliveries={deliveries}  replays={}  {}",
                entry.id,
                age.replace(' ', ""),
                summary.replays,
                summary.reason
            ))
        });
    }
    print_lines(&lines);
    if !json && entries.len() == limit {
        eprintln!("dlq: showing the first {limit} dead letters of {} (--limit)", dead.key);
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints lines; a closed stdout ends the listing quietly.
fn print_lines(lines: &[String]) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    for line in lines {
        if writeln!(stdout, "{line}").is_err() {
            return;
        }
    }
}

async fn one(connection: &mut Connection, dead: &DeadStream<'_>, dead_id: &str) -> anyhow::Result<Option<StreamEntry>> {
    Ok(reader::range(connection, &dead.key, dead_id, dead_id, 1)
        .await
        .with_context(|| format!("cannot read {} {dead_id}", dead.key))?
        .into_iter()
        .next())
}

async fn show(
    connection: &mut Connection,
    dead: &DeadStream<'_>,
    ids: &[String],
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut missing = 0;
    let mut lines = Vec::new();
    for dead_id in ids {
        let Some(entry) = one(connection, dead, dead_id).await? else {
            eprintln!("dlq: no dead letter {dead_id} in {}", dead.key);
            missing += 1;
            continue;
        };
        let fields = entry.fields.unwrap_or_default();
        if json {
            let mut object = Map::new();
            object.insert("id".into(), json!(entry.id));
            for (name, value) in fields {
                object.insert(name, json!(value));
            }
            lines.push(Value::Object(object).to_string());
        } else {
            lines.push(entry.id.clone());
            for (name, value) in fields {
                lines.push(escape_control(&format!("  {name}: {value}")));
            }
        }
    }
    print_lines(&lines);
    Ok(if missing == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

enum Selection {
    Ids(Vec<String>),
    ReasonContains(String),
    All,
}

/// Why a dead letter is not replayed.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Replayed [`MAX_REPLAYS`] times or more already.
    TooManyReplays(u64),
    /// Its raw fields cannot give back the entry.
    Unrebuildable(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::TooManyReplays(count) => write!(
                formatter,
                "already replayed {count} times (at most {MAX_REPLAYS} without --force)"
            ),
            Refusal::Unrebuildable(why) => formatter.write_str(why),
        }
    }
}

async fn replay(
    connection: &mut Connection,
    dead: &DeadStream<'_>,
    selection: &Selection,
    dry_run: bool,
    force: bool,
) -> anyhow::Result<ExitCode> {
    let mut totals = ReplayTotals::default();
    match selection {
        Selection::Ids(ids) => {
            for dead_id in ids {
                match one(connection, dead, dead_id).await? {
                    Some(entry) => replay_one(connection, dead, &entry, dry_run, force, &mut totals).await?,
                    None => {
                        eprintln!("dlq: missing {dead_id}: no such dead letter in {}", dead.key);
                        totals.missing += 1;
                    }
                }
            }
        }
        Selection::ReasonContains(_) | Selection::All => {
            // Pages from the last id seen: replayed entries leave the stream as we go, and
            // refused ones stay behind us, so each dead letter is looked at once. Only the
            // letters there at the start: a replayed entry that fails again comes back as a
            // new letter, which this run must not replay a second time.
            let last_at_start = reader::last_id(connection, &dead.key).await?;
            let mut start = "-".to_string();
            loop {
                let page = reader::range(connection, &dead.key, &start, &last_at_start, PAGE_ENTRIES).await?;
                let Some(last) = page.last() else { break };
                start = format!("({}", last.id);
                for entry in &page {
                    if let Selection::ReasonContains(text) = selection
                        && !summarise(dead, entry).reason.contains(text.as_str())
                    {
                        continue;
                    }
                    replay_one(connection, dead, entry, dry_run, force, &mut totals).await?;
                }
            }
        }
    }
    let verb = if dry_run { "would replay" } else { "replayed" };
    eprintln!(
        "dlq: {verb} {} dead letters of {}, refused {}, missing {}",
        totals.replayed, dead.key, totals.refused, totals.missing
    );
    Ok(if totals.refused == 0 && totals.missing == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[derive(Default)]
struct ReplayTotals {
    replayed: u64,
    /// Dead letters there and left there: replayed too often, or not rebuildable.
    refused: u64,
    /// Named ids that are not (or no longer) dead letters: never were, replayed or purged
    /// by another shell before this one could.
    missing: u64,
}

async fn replay_one(
    connection: &mut Connection,
    dead: &DeadStream<'_>,
    entry: &StreamEntry,
    dry_run: bool,
    force: bool,
    totals: &mut ReplayTotals,
) -> anyhow::Result<()> {
    let target = match replay_target(dead, entry, force) {
        Ok(target) => target,
        Err(refusal) => {
            eprintln!("dlq: not replaying {}: {refusal}", entry.id);
            totals.refused += 1;
            return Ok(());
        }
    };
    let destination = match &target {
        ReplayTarget::Stream { stream, .. } => format!("stream {stream}"),
        ReplayTarget::List { list, .. } => format!("list {list}"),
    };
    if dry_run {
        println!("{} would go back to {destination}", entry.id);
        totals.replayed += 1;
        return Ok(());
    }
    match dead_letters::replay(connection, &dead.key, &entry.id, &target)
        .await
        .with_context(|| format!("replaying {} to {destination}", entry.id))?
    {
        Some(new_id) if new_id != "list" => println!("{} replayed to {destination} as {new_id}", entry.id),
        Some(_) => println!("{} replayed to {destination}", entry.id),
        None => {
            eprintln!(
                "dlq: missing {}: removed from {} meanwhile (replayed or purged elsewhere)",
                entry.id, dead.key
            );
            totals.missing += 1;
            return Ok(());
        }
    }
    totals.replayed += 1;
    Ok(())
}

/// Rebuilds the entry a dead letter came from (see the module doc for the shapes).
fn replay_target(dead: &DeadStream, entry: &StreamEntry, force: bool) -> Result<ReplayTarget, Refusal> {
    let missing = |name: &str| Refusal::Unrebuildable(format!("the dead letter has no {name} field"));
    if let Some(sink) = dead.sink {
        let record = field(entry, "alert").ok_or_else(|| missing("alert"))?;
        let Ok(mut alert) = serde_json::from_str::<Map<String, Value>>(record) else {
            return Err(Refusal::Unrebuildable("its alert record is not a JSON object".into()));
        };
        let replays = alert.get(REPLAY_COUNT_FIELD).and_then(Value::as_u64).unwrap_or(0);
        refuse_after_max(replays, force)?;
        let alert_id = field(entry, "alert_id")
            .map(str::to_string)
            .or_else(|| alert.get("alert_id").and_then(Value::as_str).map(str::to_string))
            .ok_or_else(|| missing("alert_id"))?;
        // Routed to this sink only: the others already delivered it.
        alert.insert("sinks".into(), json!([sink]));
        alert.insert(REPLAY_COUNT_FIELD.into(), json!(replays + 1));
        alert.insert(REPLAYED_FROM_FIELD.into(), json!(entry.id));
        return Ok(ReplayTarget::Stream {
            stream: dead.keys.alerts.clone(),
            fields: vec![
                ("id".into(), alert_id),
                ("alert".into(), Value::Object(alert).to_string()),
            ],
        });
    }
    let source = field(entry, "source").ok_or_else(|| missing("source"))?;
    let raw_text = field(entry, "raw").ok_or_else(|| missing("raw"))?;
    let reason = field(entry, "reason").unwrap_or("");
    if reason.contains("proto-max-bulk-len") {
        return Err(Refusal::Unrebuildable(
            "an agent's event larger than Redis takes: its raw is cut, and Redis would refuse it whole".into(),
        ));
    }
    let raw: Value = serde_json::from_str(raw_text)
        .map_err(|error| Refusal::Unrebuildable(format!("its raw field is not JSON: {error}")))?;
    // Stream mode writes the entry id, list mode does not.
    let from_stream = field(entry, "entry").is_some();
    let raw_bytes = match &raw {
        Value::Object(object) => object
            .iter()
            .map(|(name, value)| name.len() + value.as_str().map_or(0, str::len))
            .sum(),
        Value::String(text) => text.len(),
        _ => 0,
    };
    if let Some(original_bytes) = cut_entry_bytes(reason)
        && original_bytes != raw_bytes
    {
        return Err(Refusal::Unrebuildable(format!(
            "its raw fields were cut ({raw_bytes} of {original_bytes} bytes kept): replaying would store a truncated entry"
        )));
    }
    match (from_stream, raw) {
        (true, Value::Object(object)) => {
            let mut fields = Vec::with_capacity(object.len() + 2);
            let mut replays = 0;
            for (name, value) in object {
                let Value::String(text) = value else {
                    return Err(Refusal::Unrebuildable(format!("raw field {name:?} is not a string")));
                };
                if name == REPLAY_COUNT_FIELD {
                    replays = text.parse().unwrap_or(0);
                } else if name != REPLAYED_FROM_FIELD {
                    fields.push((name, text));
                }
            }
            refuse_after_max(replays, force)?;
            if fields.is_empty() {
                return Err(Refusal::Unrebuildable("its raw entry has no fields".into()));
            }
            fields.push((REPLAYED_FROM_FIELD.into(), entry.id.clone()));
            fields.push((REPLAY_COUNT_FIELD.into(), (replays + 1).to_string()));
            Ok(ReplayTarget::Stream {
                stream: source.to_string(),
                fields,
            })
        }
        // One line of a packed entry: back as a one-event entry, which decodes the same.
        (true, Value::String(line)) => Ok(ReplayTarget::Stream {
            stream: source.to_string(),
            fields: vec![
                ("v".into(), ENCODING_VERSION.into()),
                ("event".into(), line),
                (REPLAYED_FROM_FIELD.into(), entry.id.clone()),
                (REPLAY_COUNT_FIELD.into(), "1".into()),
            ],
        }),
        // A list item has no room for a count: it goes back as it was.
        (false, Value::String(item)) => Ok(ReplayTarget::List {
            list: source.to_string(),
            item,
        }),
        _ => Err(Refusal::Unrebuildable(
            "its raw field has a shape the police does not write".into(),
        )),
    }
}

fn refuse_after_max(replays: u64, force: bool) -> Result<(), Refusal> {
    if replays >= MAX_REPLAYS && !force {
        return Err(Refusal::TooManyReplays(replays));
    }
    Ok(())
}

/// The size of an oversized entry, from the police's reason `entry of N bytes is over
/// max_entry_bytes=…`: its raw was cut to 4096 bytes unless it was smaller.
fn cut_entry_bytes(reason: &str) -> Option<usize> {
    let rest = reason.strip_prefix("entry of ")?;
    let (bytes, tail) = rest.split_once(" bytes is over max_entry_bytes")?;
    debug_assert!(tail.contains("truncated") || !tail.is_empty());
    bytes.parse().ok()
}

enum PurgeScope {
    Ids(Vec<String>),
    OlderThan(std::time::Duration),
}

async fn purge(
    connection: &mut Connection,
    dead: &DeadStream<'_>,
    scope: PurgeScope,
    yes: bool,
) -> anyhow::Result<ExitCode> {
    let (count, description, min_id) = match &scope {
        PurgeScope::Ids(ids) => (ids.len() as u64, format!("{} named dead letters", ids.len()), None),
        PurgeScope::OlderThan(age) => {
            let now_ms = reader::server_time_ms(connection).await?;
            let below_ms = now_ms.saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
            let min_id = format!("{below_ms}-0");
            let count = count_below(connection, &dead.key, &min_id).await?;
            let age_text = humantime::format_duration(*age);
            (
                count,
                format!("{count} dead letters older than {age_text}"),
                Some(min_id),
            )
        }
    };
    if count == 0 {
        eprintln!("dlq: nothing to purge in {}", dead.key);
        return Ok(ExitCode::SUCCESS);
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            return Err(crate::config::ConfigError::Usage {
                problem: format!(
                    "refusing to purge {description} from {} without --yes (stdin is not a terminal)",
                    dead.key
                ),
            }
            .into());
        }
        eprint!("remove {description} from {} for good? [y/N] ", dead.key);
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim().to_lowercase().as_str(), "y" | "yes") {
            eprintln!("dlq: nothing purged");
            return Ok(ExitCode::FAILURE);
        }
    }
    let removed = match (&scope, min_id) {
        (PurgeScope::Ids(ids), _) => dead_letters::delete(connection, &dead.key, ids).await?,
        (PurgeScope::OlderThan(_), Some(min_id)) => {
            dead_letters::delete_older_than(connection, &dead.key, &min_id).await?
        }
        (PurgeScope::OlderThan(_), None) => unreachable!("an age always gives a minimum id"),
    };
    println!("purged {removed} dead letters from {}", dead.key);
    Ok(ExitCode::SUCCESS)
}

/// Dead letters with ids below `min_id`, counted page by page.
async fn count_below(connection: &mut Connection, dead_key: &str, min_id: &str) -> anyhow::Result<u64> {
    let end = format!("({min_id}");
    let mut start = "-".to_string();
    let mut count = 0;
    loop {
        let page = reader::range(connection, dead_key, &start, &end, 1000).await?;
        let Some(last) = page.last() else { break };
        count += page.len() as u64;
        start = format!("({}", last.id);
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_are_milliseconds_with_an_optional_sequence() {
        for good in ["1796136907689-0", "1796136907689", "0-1", "18446744073709551615-3"] {
            assert!(is_entry_id(good), "{good}");
        }
        for bad in [
            "",
            "nonsense",
            "1-",
            "-1",
            "1-2-3",
            "1.5",
            "+1-0",
            "18446744073709551616-0",
            "$",
        ] {
            assert!(!is_entry_id(bad), "{bad}");
        }
    }

    fn entry(fields: &[(&str, &str)]) -> StreamEntry {
        StreamEntry {
            id: "5-0".into(),
            fields: Some(fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
        }
    }

    fn police_dead(keys: &Keys) -> DeadStream<'_> {
        DeadStream {
            key: keys.dead.clone(),
            sink: None,
            keys,
        }
    }

    #[test]
    fn a_whole_entry_comes_back_with_its_fields_and_a_count() {
        let keys = Keys::default();
        let dead = police_dead(&keys);
        let raw = r#"{"event":"{}","v":"1"}"#;
        let letter = entry(&[("reason", "bad"), ("source", "logs"), ("entry", "1-0"), ("raw", raw)]);
        let ReplayTarget::Stream { stream, fields } = replay_target(&dead, &letter, false).unwrap() else {
            panic!("a stream entry goes back to a stream");
        };
        assert_eq!(stream, "logs");
        assert!(fields.contains(&("v".into(), "1".into())));
        assert!(fields.contains(&(REPLAYED_FROM_FIELD.into(), "5-0".into())));
        assert!(fields.contains(&(REPLAY_COUNT_FIELD.into(), "1".into())));
    }

    #[test]
    fn the_fourth_replay_needs_force() {
        let keys = Keys::default();
        let dead = police_dead(&keys);
        let raw = r#"{"event":"{}","v":"1","replay_count":"3","replayed_from":"4-0"}"#;
        let letter = entry(&[("reason", "bad"), ("source", "logs"), ("entry", "1-0"), ("raw", raw)]);
        assert_eq!(
            replay_target(&dead, &letter, false).unwrap_err(),
            Refusal::TooManyReplays(3)
        );
        let ReplayTarget::Stream { fields, .. } = replay_target(&dead, &letter, true).unwrap() else {
            panic!("a stream entry goes back to a stream");
        };
        assert!(fields.contains(&(REPLAY_COUNT_FIELD.into(), "4".into())));
        assert_eq!(fields.iter().filter(|(name, _)| name == REPLAYED_FROM_FIELD).count(), 1);
    }

    #[test]
    fn a_cut_raw_is_never_replayed() {
        let keys = Keys::default();
        let dead = police_dead(&keys);
        let reason = "entry of 9000 bytes is over max_entry_bytes=1024, not decoded (raw truncated to 4096 bytes)";
        let letter = entry(&[
            ("reason", reason),
            ("source", "logs"),
            ("entry", "1-0"),
            ("raw", r#"{"v":"1"}"#),
        ]);
        assert!(matches!(
            replay_target(&dead, &letter, true),
            Err(Refusal::Unrebuildable(_))
        ));
        let whole = "entry of 2 bytes is over max_entry_bytes=1, not decoded (raw truncated to 4096 bytes)";
        let small = entry(&[
            ("reason", whole),
            ("source", "logs"),
            ("entry", "1-0"),
            ("raw", r#"{"v":"1"}"#),
        ]);
        assert!(replay_target(&dead, &small, false).is_ok());
    }

    #[test]
    fn an_agents_oversized_event_is_not_replayed() {
        let keys = Keys::default();
        let dead = police_dead(&keys);
        let reason = "event of 600000000 bytes is over redis proto-max-bulk-len (536870912 bytes)";
        let letter = entry(&[("reason", reason), ("source", "agent-1"), ("raw", r#"{"id":"a"#)]);
        assert!(matches!(
            replay_target(&dead, &letter, true),
            Err(Refusal::Unrebuildable(_))
        ));
    }

    #[test]
    fn list_items_and_lines_keep_their_shape() {
        let keys = Keys::default();
        let dead = police_dead(&keys);
        let item = entry(&[("reason", "bad"), ("source", "log_queue"), ("raw", r#""text""#)]);
        assert_eq!(
            replay_target(&dead, &item, false).unwrap(),
            ReplayTarget::List {
                list: "log_queue".into(),
                item: "text".into()
            }
        );
        let line = entry(&[
            ("reason", "bad"),
            ("source", "logs"),
            ("entry", "1-0"),
            ("raw", r#""{}""#),
        ]);
        let ReplayTarget::Stream { fields, .. } = replay_target(&dead, &line, false).unwrap() else {
            panic!("a line goes back to its stream");
        };
        assert_eq!(fields[0], ("v".into(), "1".into()));
        assert_eq!(fields[1], ("event".into(), "{}".into()));
    }

    #[test]
    fn a_sink_record_goes_back_to_that_sink_only() {
        let keys = Keys::default();
        let dead = DeadStream {
            key: keys.sink_dead("hook"),
            sink: Some("hook"),
            keys: &keys,
        };
        let letter = entry(&[
            ("alert_id", "a/1"),
            ("alert", r#"{"alert_id":"a/1","sinks":["hook","mail"]}"#),
            ("status", "500"),
            ("attempts", "5"),
            ("entry", "1-0"),
        ]);
        let ReplayTarget::Stream { stream, fields } = replay_target(&dead, &letter, false).unwrap() else {
            panic!("a record goes back to the alerts stream");
        };
        assert_eq!(stream, keys.alerts);
        let record: Value = serde_json::from_str(&fields[1].1).unwrap();
        assert_eq!(record["sinks"], json!(["hook"]));
        assert_eq!(record[REPLAY_COUNT_FIELD], json!(1));
    }
}
