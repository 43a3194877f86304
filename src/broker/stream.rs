//! Stream-mode commands: consumer group setup, reads, claims, consumer cleanup, trimming.

use std::collections::HashMap;

use redis::{RedisError, Value};

use super::keys::Keys;
use super::{Connection, value_int, value_items, value_pairs, value_text};

/// One stream entry as read from Redis. `fields` is `None` when the entry was deleted
/// while it was pending (XREADGROUP then returns its id with no fields).
#[derive(Debug, Clone)]
pub struct StreamEntry {
    pub id: String,
    pub fields: Option<Vec<(String, String)>>,
}

/// Creates the consumer group from id 0 (so entries written before it existed are read),
/// creating the stream too if needed. An existing group is fine; see
/// [`super::scripts::ENSURE_GROUP`] for why this works while Redis is out of memory.
pub async fn ensure_group(connection: &mut Connection, keys: &Keys) -> Result<(), RedisError> {
    super::scripts::ENSURE_GROUP
        .key(&keys.stream)
        .arg(&keys.group)
        .arg("the log stream")
        .invoke_async::<()>(connection)
        .await
}

/// XREADGROUP from `start` (`>` for new entries, an id for our own pending ones).
pub async fn read_group(
    connection: &mut Connection,
    keys: &Keys,
    consumer: &str,
    start: &str,
    count: usize,
    block_ms: Option<u64>,
) -> Result<Vec<StreamEntry>, RedisError> {
    read_group_of(connection, &keys.stream, &keys.group, consumer, start, count, block_ms).await
}

/// XREADGROUP on any stream and group (the police's group on the log stream, a sink's
/// group on the alerts stream).
pub async fn read_group_of(
    connection: &mut Connection,
    stream: &str,
    group: &str,
    consumer: &str,
    start: &str,
    count: usize,
    block_ms: Option<u64>,
) -> Result<Vec<StreamEntry>, RedisError> {
    let mut command = redis::cmd("XREADGROUP");
    command.arg("GROUP").arg(group).arg(consumer).arg("COUNT").arg(count);
    if let Some(block_ms) = block_ms {
        command.arg("BLOCK").arg(block_ms);
    }
    command.arg("STREAMS").arg(stream).arg(start);
    let reply: Value = command.query_async(connection).await?;
    Ok(entries_of_read_reply(reply))
}

/// The entries of an XREAD or XREADGROUP reply, in order.
pub(crate) fn entries_of_read_reply(reply: Value) -> Vec<StreamEntry> {
    let mut entries = Vec::new();
    // [[stream name, [entries]]] in RESP2; a map from stream name to entries in RESP3.
    let streams: Vec<Value> = match reply {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|stream| match stream {
                Value::Array(mut parts) if parts.len() == 2 => parts.pop(),
                _ => None,
            })
            .collect(),
        Value::Map(map) => map.into_iter().map(|(_, stream_entries)| stream_entries).collect(),
        _ => Vec::new(),
    };
    for stream_entries in streams {
        if let Value::Array(items) = stream_entries {
            entries.extend(items.into_iter().filter_map(parse_entry));
        }
    }
    entries
}

/// Takes the reply apart by value: field values move into `String`s without a copy.
pub(crate) fn parse_entry(value: Value) -> Option<StreamEntry> {
    let Value::Array(parts) = value else {
        return None;
    };
    let mut parts = parts.into_iter();
    let id = value_text(&parts.next()?)?;
    let fields = match parts.next()? {
        Value::Array(items) => {
            let mut fields = Vec::with_capacity(items.len() / 2);
            let mut items = items.into_iter();
            while let (Some(name), Some(value)) = (items.next(), items.next()) {
                fields.push((into_string(name)?, into_string(value)?));
            }
            Some(fields)
        }
        _ => None,
    };
    Some(StreamEntry { id, fields })
}

fn into_string(value: Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(
            String::from_utf8(bytes).unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into_owned()),
        ),
        other => value_text(&other),
    }
}

/// Delivery counts of our pending entries between `first` and `last` (inclusive).
pub async fn delivery_counts(
    connection: &mut Connection,
    keys: &Keys,
    consumer: &str,
    first: &str,
    last: &str,
    count: usize,
) -> Result<HashMap<String, u64>, RedisError> {
    let reply: Value = redis::cmd("XPENDING")
        .arg(&keys.stream)
        .arg(&keys.group)
        .arg(first)
        .arg(last)
        .arg(count)
        .arg(consumer)
        .query_async(connection)
        .await?;
    Ok(value_items(&reply)
        .iter()
        .filter_map(|item| {
            let parts = value_items(item);
            let id = value_text(parts.first()?)?;
            let deliveries = value_int(parts.get(3)?)?;
            Some((id, deliveries.max(0) as u64))
        })
        .collect())
}

/// One XAUTOCLAIM call: entries idle longer than `min_idle_ms`, now ours.
pub struct Claimed {
    pub next_cursor: String,
    pub entries: Vec<StreamEntry>,
    /// Ids that were pending but no longer exist in the stream (removed by Redis from the PEL).
    pub deleted_ids: Vec<String>,
}

pub async fn autoclaim(
    connection: &mut Connection,
    keys: &Keys,
    consumer: &str,
    min_idle_ms: u64,
    cursor: &str,
    count: usize,
) -> Result<Claimed, RedisError> {
    autoclaim_of(
        connection,
        &keys.stream,
        &keys.group,
        consumer,
        min_idle_ms,
        cursor,
        count,
    )
    .await
}

/// XAUTOCLAIM on any stream and group.
pub async fn autoclaim_of(
    connection: &mut Connection,
    stream: &str,
    group: &str,
    consumer: &str,
    min_idle_ms: u64,
    cursor: &str,
    count: usize,
) -> Result<Claimed, RedisError> {
    let reply: Value = redis::cmd("XAUTOCLAIM")
        .arg(stream)
        .arg(group)
        .arg(consumer)
        .arg(min_idle_ms)
        .arg(cursor)
        .arg("COUNT")
        .arg(count)
        .query_async(connection)
        .await?;
    let parts = value_items(&reply);
    Ok(Claimed {
        next_cursor: parts.first().and_then(value_text).unwrap_or_else(|| "0-0".into()),
        entries: parts
            .get(1)
            .map(|entries| value_items(entries).iter().cloned().filter_map(parse_entry).collect())
            .unwrap_or_default(),
        deleted_ids: parts
            .get(2)
            .map(|ids| value_items(ids).iter().filter_map(value_text).collect())
            .unwrap_or_default(),
    })
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConsumerInfo {
    pub name: String,
    pub pending: u64,
    pub idle_ms: u64,
}

pub async fn consumers(connection: &mut Connection, keys: &Keys, group: &str) -> Result<Vec<ConsumerInfo>, RedisError> {
    consumers_of(connection, &keys.stream, group).await
}

/// Consumers of `group` on any stream (the sinks' groups live on the alerts stream).
pub async fn consumers_of(
    connection: &mut Connection,
    stream: &str,
    group: &str,
) -> Result<Vec<ConsumerInfo>, RedisError> {
    let reply: Value = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream)
        .arg(group)
        .query_async(connection)
        .await?;
    Ok(value_items(&reply)
        .iter()
        .filter_map(|consumer| {
            let fields: HashMap<String, &Value> = value_pairs(consumer).into_iter().collect();
            Some(ConsumerInfo {
                name: value_text(fields.get("name")?)?,
                pending: value_int(fields.get("pending")?)?.max(0) as u64,
                idle_ms: value_int(fields.get("idle")?)?.max(0) as u64,
            })
        })
        .collect())
}

/// Who asks for a consumer's removal (see [`super::scripts::REMOVE_CONSUMER`]).
pub enum Removal {
    /// Another police, tidying up: only if the consumer's heartbeat expired and it has
    /// been idle for at least this long.
    IdleFor(std::time::Duration),
    /// The consumer itself, leaving on a graceful stop.
    Leaving,
}

/// Removes a consumer from the group if it has nothing pending (and, for [`Removal::IdleFor`],
/// shows no sign of life), in one atomic step. Returns whether it was removed.
pub async fn remove_consumer(
    connection: &mut Connection,
    keys: &Keys,
    consumer: &str,
    removal: Removal,
) -> Result<bool, RedisError> {
    let idle_limit = match removal {
        Removal::IdleFor(limit) => limit.as_millis().to_string(),
        Removal::Leaving => "self".to_string(),
    };
    let removed: i64 = super::scripts::REMOVE_CONSUMER
        .key(&keys.stream)
        .key(keys.consumer_heartbeat(consumer))
        .arg(&keys.group)
        .arg(consumer)
        .arg(idle_limit)
        .invoke_async(connection)
        .await?;
    Ok(removed == 1)
}

/// Summary of one group, from XINFO GROUPS.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GroupInfo {
    pub name: String,
    pub consumers: u64,
    pub pending: u64,
    pub last_delivered_id: String,
    /// `None` when Redis cannot tell (after some deletions); see XINFO GROUPS.
    pub lag: Option<u64>,
    /// Entries ever delivered to the group (Redis 7's `entries-read`); `None` when unknown.
    pub entries_read: Option<u64>,
}

pub async fn groups(connection: &mut Connection, stream: &str) -> Result<Vec<GroupInfo>, RedisError> {
    let reply: Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(connection)
        .await?;
    Ok(value_items(&reply)
        .iter()
        .filter_map(|group| {
            let fields: HashMap<String, &Value> = value_pairs(group).into_iter().collect();
            Some(GroupInfo {
                name: value_text(fields.get("name")?)?,
                consumers: value_int(fields.get("consumers")?)?.max(0) as u64,
                pending: value_int(fields.get("pending")?)?.max(0) as u64,
                last_delivered_id: value_text(fields.get("last-delivered-id")?)?,
                lag: fields
                    .get("lag")
                    .and_then(|lag| value_int(lag))
                    .map(|lag| lag.max(0) as u64),
                entries_read: fields
                    .get("entries-read")
                    .and_then(|read| value_int(read))
                    .map(|read| read.max(0) as u64),
            })
        })
        .collect())
}

/// Entries ever added to `stream` (XINFO STREAM's `entries-added`; trimming does not lower
/// it), 0 for a missing stream.
pub async fn entries_added(connection: &mut Connection, stream: &str) -> Result<u64, RedisError> {
    let exists: bool = redis::cmd("EXISTS").arg(stream).query_async(connection).await?;
    if !exists {
        return Ok(0);
    }
    let info: Value = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(stream)
        .query_async(connection)
        .await?;
    Ok(value_pairs(&info)
        .into_iter()
        .find(|(name, _)| name == "entries-added")
        .and_then(|(_, value)| value_int(value))
        .unwrap_or(0)
        .max(0) as u64)
}

/// Oldest pending id of a group (XPENDING summary), if any entry is pending.
pub async fn oldest_pending_id(
    connection: &mut Connection,
    stream: &str,
    group: &str,
) -> Result<Option<String>, RedisError> {
    let reply: Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async(connection)
        .await?;
    let parts = value_items(&reply);
    let pending = parts.first().and_then(value_int).unwrap_or(0);
    if pending == 0 {
        return Ok(None);
    }
    Ok(parts.get(1).and_then(value_text))
}

/// Trims entries that every group on the stream has delivered and acknowledged.
///
/// Order matters: the groups' last-delivered ids are read *before* their oldest pending
/// ids. An entry pending at trim time was either pending at the second read (so it is at
/// or above the oldest pending id) or delivered after the first read (so it is above the
/// last-delivered id read then). Entries never delivered are above both. The trim point
/// is the minimum of all of them, so nothing unacknowledged or undelivered is trimmed.
/// Returns the number of entries removed; with no group on the stream nothing is trimmed.
pub async fn trim_acknowledged(connection: &mut Connection, stream: &str) -> Result<u64, RedisError> {
    trim_acknowledged_before(connection, stream, None).await
}

/// [`trim_acknowledged`], keeping as well every entry whose id time is at or after
/// `keep_since_ms` (a retention), when given.
pub async fn trim_acknowledged_before(
    connection: &mut Connection,
    stream: &str,
    keep_since_ms: Option<u64>,
) -> Result<u64, RedisError> {
    let group_infos = groups(connection, stream).await?;
    let Some(mut trim_below) = group_infos
        .iter()
        .map(|group| parse_stream_id(&group.last_delivered_id))
        .min()
    else {
        return Ok(0);
    };
    for group in &group_infos {
        if let Some(oldest_pending) = oldest_pending_id(connection, stream, &group.name).await? {
            trim_below = trim_below.min(parse_stream_id(&oldest_pending));
        }
    }
    if let Some(keep_since_ms) = keep_since_ms {
        trim_below = trim_below.min((keep_since_ms, 0));
    }
    if trim_below == (0, 0) {
        return Ok(0);
    }
    let removed: i64 = redis::cmd("XTRIM")
        .arg(stream)
        .arg("MINID")
        .arg(format!("{}-{}", trim_below.0, trim_below.1))
        .query_async(connection)
        .await?;
    Ok(removed.max(0) as u64)
}

fn parse_stream_id(entry_id: &str) -> (u64, u64) {
    let (millis, sequence) = entry_id.split_once('-').unwrap_or((entry_id, "0"));
    (millis.parse().unwrap_or(0), sequence.parse().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_compare_numerically() {
        assert!(parse_stream_id("10-0") > parse_stream_id("9-99"));
        assert!(parse_stream_id("5-10") > parse_stream_id("5-9"));
        assert_eq!(parse_stream_id("0-0"), (0, 0));
    }
}
