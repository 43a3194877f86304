//! `logsentinel tail logs|alerts|dead`: the records flowing through a stream, as they come.
//!
//! Invariants:
//! - reads are plain XREAD ([`crate::broker::reader`]): the police's group, its pending
//!   entries and their delivery counts are never touched, whatever tail does or how it dies
//! - a packed entry is shown as its events; an entry or a line that does not decode is
//!   shown raw with the reason, marked `UNDECODABLE` (`"undecodable": true` in JSON)
//! - `$` is resolved to an id once, then every read asks for what follows the last id
//!   seen: nothing that arrives between two reads is skipped
//! - a reader of stdout that goes away ends tail with status 0 and no message

use anyhow::Context;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::filter::{Filter, StartAt};
use super::output::{Closed, Output, escape_control};
use crate::broker::errors::{Failure, classify, redact_url};
use crate::broker::keys::Keys;
use crate::broker::stream::StreamEntry;
use crate::broker::{self, Backoff, Connection, reader};
use crate::cli::{TailArgs, TailWhat};
use crate::event::{self, Level, LogEvent, Rejected};
use crate::options::Transport;
use crate::police::alert::Alert;

/// Entries per XREAD. Small enough that one reply stays a few MiB even for packed entries.
const READ_COUNT: usize = 100;
/// Longest wait of one blocking read; also how often a gone stdout reader and a stop
/// request are noticed while the stream is quiet.
const BLOCK_MS: u64 = 1000;

/// Runs `tail` until `--limit`, the end of the stream with `--no-follow`, a stop signal or
/// a closed stdout.
pub async fn run(args: TailArgs, redis_url: &str, keys: &Keys, shutdown: CancellationToken) -> anyhow::Result<()> {
    let filter = Filter {
        level: args.level,
        services: args.service.clone(),
        hosts: args.host.clone(),
        rules: args.rule.clone(),
        grep: args.grep.clone(),
    };
    check_filters_apply(args.what, &filter)?;
    let mut output = Output::new(args.format);
    let mut connection = connect(redis_url).await?;
    let outcome = if args.transport == Transport::List {
        anyhow::ensure!(
            args.what == TailWhat::Logs,
            "--transport list applies to tail logs only"
        );
        peek_list(&mut connection, keys, &filter, args.limit, &mut output).await
    } else {
        follow(&args, &filter, redis_url, keys, connection, &mut output, shutdown).await
    };
    match outcome {
        Ok(()) => Ok(()),
        Err(TailError::Closed(Closed)) => Ok(()),
        Err(TailError::Redis(error)) => Err(error),
    }
}

enum TailError {
    Closed(Closed),
    Redis(anyhow::Error),
}

impl From<Closed> for TailError {
    fn from(closed: Closed) -> Self {
        TailError::Closed(closed)
    }
}

fn check_filters_apply(what: TailWhat, filter: &Filter) -> anyhow::Result<()> {
    match what {
        TailWhat::Logs if !filter.rules.is_empty() => Err(crate::config::ConfigError::Option {
            key: "tail logs".into(),
            problem: "--rule filters alerts (tail alerts), not logs".into(),
        }
        .into()),
        TailWhat::Dead if filter.has_field_filters() => Err(crate::config::ConfigError::Option {
            key: "tail dead".into(),
            problem: "dead letters have no level, service, host or rule to filter on; use --grep".into(),
        }
        .into()),
        _ => Ok(()),
    }
}

async fn connect(redis_url: &str) -> anyhow::Result<Connection> {
    broker::connect(redis_url)
        .await
        .with_context(|| format!("cannot reach Redis at {}", redact_url(redis_url)))
}

async fn follow(
    args: &TailArgs,
    filter: &Filter,
    redis_url: &str,
    keys: &Keys,
    mut connection: Connection,
    output: &mut Output,
    shutdown: CancellationToken,
) -> Result<(), TailError> {
    let stream = match args.what {
        TailWhat::Logs => &keys.stream,
        TailWhat::Alerts => &keys.alerts,
        TailWhat::Dead => &keys.dead,
    };
    let mut after_id = start_id(&mut connection, stream, args.from)
        .await
        .map_err(|error| TailError::Redis(error.into()))?;
    let mut printed: u64 = 0;
    let mut backoff = Backoff::new("tail", redis_url);
    let block_ms = (!args.no_follow).then_some(BLOCK_MS);
    loop {
        if args.limit.is_some_and(|limit| printed >= limit) || output.reader_gone() {
            return Ok(());
        }
        let read = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            read = reader::read_after(&mut connection, stream, &after_id, READ_COUNT, block_ms) => read,
        };
        let entries = match read {
            Ok(entries) => {
                backoff.succeeded();
                entries
            }
            Err(error) if classify(&error) == Failure::Refused => {
                return Err(TailError::Redis(
                    anyhow::Error::new(error).context(format!("redis refused XREAD on {stream}")),
                ));
            }
            Err(error) => {
                let delay = backoff.failed(&error);
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
                if let Ok(fresh) = broker::connect(redis_url).await {
                    connection = fresh;
                }
                continue;
            }
        };
        if entries.is_empty() && args.no_follow {
            return Ok(());
        }
        for entry in entries {
            after_id.clone_from(&entry.id);
            let remaining = args.limit.map(|limit| limit - printed);
            printed += print_entry(args.what, &entry, filter, remaining, output)?;
        }
        output.flush()?;
    }
}

/// The id to read after, for `--from`.
async fn start_id(connection: &mut Connection, stream: &str, from: StartAt) -> Result<String, redis::RedisError> {
    Ok(match from {
        StartAt::Newest => reader::last_id(connection, stream).await?,
        StartAt::Id { millis, sequence } => StartAt::id_before(millis, sequence),
        StartAt::Ago(back) => {
            let now_ms = reader::server_time_ms(connection).await?;
            let since_ms = now_ms.saturating_sub(u64::try_from(back.as_millis()).unwrap_or(u64::MAX));
            StartAt::id_before(since_ms, 0)
        }
    })
}

/// Prints what passes the filter, at most `remaining` records; returns how many.
fn print_entry(
    what: TailWhat,
    entry: &StreamEntry,
    filter: &Filter,
    remaining: Option<u64>,
    output: &mut Output,
) -> Result<u64, Closed> {
    let no_fields = Vec::new();
    let fields = entry.fields.as_ref().unwrap_or(&no_fields);
    let mut printed = 0;
    let mut emit = |text: String, record: Value, output: &mut Output| -> Result<bool, Closed> {
        if remaining.is_some_and(|remaining| printed >= remaining) {
            return Ok(false);
        }
        output.record(&text, &record)?;
        printed += 1;
        Ok(true)
    };
    match what {
        TailWhat::Logs => {
            let decoded = event::decode_entry(&entry.id, fields, Level::Unknown);
            for log_event in decoded
                .events
                .iter()
                .filter(|log_event| filter.accepts_event(log_event))
            {
                if !emit(
                    event_text(&entry.id, log_event),
                    event_record(&entry.id, log_event),
                    output,
                )? {
                    return Ok(printed);
                }
            }
            for rejected in &decoded.rejected {
                if filter.accepts_raw(&[&rejected.reason, &rejected.raw]) {
                    emit(
                        undecodable_text(&entry.id, rejected),
                        undecodable_record(&entry.id, rejected),
                        output,
                    )?;
                }
            }
        }
        TailWhat::Alerts => {
            let record_json = field(fields, "alert").unwrap_or_default();
            match serde_json::from_str::<Alert>(record_json) {
                Ok(alert) if filter.accepts_alert(&alert, record_json) => {
                    emit(alert_text(&entry.id, &alert), alert_record(&entry.id, &alert), output)?;
                }
                Ok(_) => {}
                Err(parse_error) => {
                    let rejected = Rejected {
                        reason: format!("unreadable alert record: {parse_error}"),
                        raw: event::fields_as_json(fields),
                    };
                    if filter.accepts_raw(&[&rejected.raw]) {
                        emit(
                            undecodable_text(&entry.id, &rejected),
                            undecodable_record(&entry.id, &rejected),
                            output,
                        )?;
                    }
                }
            }
        }
        TailWhat::Dead => {
            let texts: Vec<&str> = fields.iter().map(|(_, value)| value.as_str()).collect();
            if filter.accepts_raw(&texts) {
                emit(fields_text(&entry.id, fields), fields_record(&entry.id, fields), output)?;
            }
        }
    }
    Ok(printed)
}

/// Shows the items waiting in the list (list mode), oldest first, without taking any.
async fn peek_list(
    connection: &mut Connection,
    keys: &Keys,
    filter: &Filter,
    limit: Option<u64>,
    output: &mut Output,
) -> Result<(), TailError> {
    /// Items shown at most without `--limit`: a list can hold millions.
    const DEFAULT_PEEK_ITEMS: u64 = 1000;
    let wanted = limit.unwrap_or(DEFAULT_PEEK_ITEMS);
    let items = reader::peek_list(connection, &keys.list, usize::try_from(wanted).unwrap_or(usize::MAX))
        .await
        .map_err(|error| {
            TailError::Redis(anyhow::Error::new(error).context(format!("cannot read list {}", keys.list)))
        })?;
    eprintln!(
        "tail: list {}: the {} oldest items waiting, taken by nobody; a list keeps no history, so it cannot be followed",
        keys.list,
        items.len()
    );
    let mut printed = 0;
    for (position, item) in items.iter().enumerate() {
        if printed >= wanted {
            break;
        }
        let item_id = format!("{}#{position}", keys.list);
        let decoded = event::decode_list_item(&item_id, item, Level::Unknown);
        for log_event in decoded
            .events
            .iter()
            .filter(|log_event| filter.accepts_event(log_event))
        {
            output.record(&event_text(&item_id, log_event), &event_record(&item_id, log_event))?;
            printed += 1;
        }
        for rejected in &decoded.rejected {
            if filter.accepts_raw(&[&rejected.reason, &rejected.raw]) {
                output.record(
                    &undecodable_text(&item_id, rejected),
                    &undecodable_record(&item_id, rejected),
                )?;
                printed += 1;
            }
        }
    }
    output.flush()?;
    Ok(())
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

fn event_text(entry_id: &str, log_event: &LogEvent) -> String {
    let mut text = format!(
        "{entry_id} {} {:<8} {}@{} {}",
        log_event.timestamp,
        log_event.level.as_str(),
        log_event.service,
        log_event.host,
        log_event.message
    );
    for (name, value) in &log_event.extra {
        text.push_str(&format!(" {name}={value}"));
    }
    escape_control(&text)
}

fn event_record(entry_id: &str, log_event: &LogEvent) -> Value {
    let mut record = serde_json::to_value(log_event).expect("a LogEvent serialises to JSON");
    if let Value::Object(object) = &mut record {
        object.insert("entry_id".into(), json!(entry_id));
    }
    record
}

fn alert_text(entry_id: &str, alert: &Alert) -> String {
    let status = serde_json::to_value(alert.status)
        .ok()
        .and_then(|status| status.as_str().map(str::to_string))
        .unwrap_or_default();
    let mut text = format!(
        "{entry_id} {} {} {status} rule={} count={}",
        alert.raised_at, alert.severity, alert.rule, alert.count
    );
    if let Some(log_event) = &alert.event {
        text.push_str(&format!(
            " {}@{}: {}",
            log_event.service, log_event.host, log_event.message
        ));
    }
    text.push_str(&format!(" (alert {})", alert.alert_id));
    escape_control(&text)
}

fn alert_record(entry_id: &str, alert: &Alert) -> Value {
    let mut record = serde_json::to_value(alert).expect("an Alert serialises to JSON");
    if let Value::Object(object) = &mut record {
        object.insert("entry_id".into(), json!(entry_id));
    }
    record
}

fn undecodable_text(entry_id: &str, rejected: &Rejected) -> String {
    escape_control(&format!(
        "{entry_id} UNDECODABLE ({}) raw={}",
        rejected.reason, rejected.raw
    ))
}

fn undecodable_record(entry_id: &str, rejected: &Rejected) -> Value {
    json!({"entry_id": entry_id, "undecodable": true, "reason": rejected.reason, "raw": rejected.raw})
}

fn fields_text(entry_id: &str, fields: &[(String, String)]) -> String {
    let mut text = entry_id.to_string();
    for (name, value) in fields {
        text.push_str(&format!(" {name}={value}"));
    }
    escape_control(&text)
}

fn fields_record(entry_id: &str, fields: &[(String, String)]) -> Value {
    let mut object = serde_json::Map::new();
    object.insert("entry_id".into(), json!(entry_id));
    for (name, value) in fields {
        object.insert(name.clone(), json!(value));
    }
    Value::Object(object)
}
