//! `logsentinel status`: stream length, groups, consumers, pending, lag, dead letters.

use std::collections::BTreeMap;

use redis::RedisError;
use serde::Serialize;

use crate::broker::stream::{self, ConsumerInfo};
use crate::broker::{Connection, keys::Keys, list, stream_id_millis};
use crate::ops::output::escape_control;

#[derive(Debug, Serialize)]
pub struct Status {
    pub stream: StreamStatus,
    pub alerts_stream: KeyLength,
    pub dead_stream: KeyLength,
    pub list: ListStatus,
}

#[derive(Debug, Serialize)]
pub struct KeyLength {
    pub key: String,
    pub length: u64,
}

#[derive(Debug, Serialize)]
pub struct StreamStatus {
    pub key: String,
    pub length: u64,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    /// Entries ever added to the stream (trimming does not lower it).
    pub entries_added: u64,
    pub groups: Vec<GroupStatus>,
    /// Counters kept by the police, atomically with each acknowledgement.
    pub processed: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
pub struct GroupStatus {
    pub name: String,
    pub consumers: Vec<ConsumerInfo>,
    pub pending: u64,
    pub last_delivered_id: String,
    /// Entries not yet delivered to the group; `None` when Redis cannot tell.
    pub lag: Option<u64>,
    pub oldest_pending_id: Option<String>,
    pub oldest_pending_age_ms: Option<u64>,
    /// Entries ever delivered to the group; `None` when Redis cannot tell.
    pub entries_read: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct ListStatus {
    pub key: String,
    pub length: u64,
    /// Items in hand of each list-mode consumer.
    pub processing: BTreeMap<String, u64>,
    pub processed: BTreeMap<String, u64>,
}

pub async fn collect(connection: &mut Connection, keys: &Keys) -> Result<Status, RedisError> {
    let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
    // Read before the stream figures, so that "processed" never exceeds "added".
    let stream_processed = counters(connection, &keys.stats(&keys.stream)).await?;
    let length: u64 = redis::cmd("XLEN").arg(&keys.stream).query_async(connection).await?;
    let exists: bool = redis::cmd("EXISTS").arg(&keys.stream).query_async(connection).await?;
    let (mut first_id, mut last_id, mut entries_added) = (None, None, 0);
    let mut groups = Vec::new();
    if exists {
        entries_added = stream::entries_added(connection, &keys.stream).await?;
        first_id = boundary_id(connection, &keys.stream, "XRANGE", "-", "+").await?;
        last_id = boundary_id(connection, &keys.stream, "XREVRANGE", "+", "-").await?;
        groups = group_statuses(connection, &keys.stream, now_ms).await?;
    }
    let mut processing = BTreeMap::new();
    let prefix = keys.processing_list("");
    for processing_list in list::matching_keys(connection, &keys.processing_list_pattern()).await? {
        let items: u64 = redis::cmd("LLEN").arg(&processing_list).query_async(connection).await?;
        let consumer = processing_list
            .strip_prefix(&prefix)
            .unwrap_or(&processing_list)
            .to_string();
        processing.insert(consumer, items);
    }
    Ok(Status {
        stream: StreamStatus {
            key: keys.stream.clone(),
            length,
            first_id,
            last_id,
            entries_added,
            groups,
            processed: stream_processed,
        },
        alerts_stream: key_length(connection, "XLEN", &keys.alerts).await?,
        dead_stream: key_length(connection, "XLEN", &keys.dead).await?,
        list: ListStatus {
            key: keys.list.clone(),
            length: key_length(connection, "LLEN", &keys.list).await?.length,
            processing,
            processed: counters(connection, &keys.stats(&keys.list)).await?,
        },
    })
}

/// Every group on `stream` with its consumers and oldest pending entry (the police's group on
/// the log stream, the sinks' groups on the alerts stream); none for a missing stream.
pub async fn group_statuses(
    connection: &mut Connection,
    stream: &str,
    now_ms: u64,
) -> Result<Vec<GroupStatus>, RedisError> {
    let mut statuses = Vec::new();
    let exists: bool = redis::cmd("EXISTS").arg(stream).query_async(connection).await?;
    if !exists {
        return Ok(statuses);
    }
    for group in stream::groups(connection, stream).await? {
        let consumers = stream::consumers_of(connection, stream, &group.name).await?;
        let oldest_pending_id = stream::oldest_pending_id(connection, stream, &group.name).await?;
        let oldest_pending_age_ms = oldest_pending_id
            .as_deref()
            .and_then(stream_id_millis)
            .map(|created_ms| now_ms.saturating_sub(created_ms));
        statuses.push(GroupStatus {
            name: group.name,
            consumers,
            pending: group.pending,
            last_delivered_id: group.last_delivered_id,
            lag: group.lag,
            oldest_pending_id,
            oldest_pending_age_ms,
            entries_read: group.entries_read,
        });
    }
    Ok(statuses)
}

async fn boundary_id(
    connection: &mut Connection,
    stream: &str,
    command: &str,
    from: &str,
    to: &str,
) -> Result<Option<String>, RedisError> {
    let reply: redis::Value = redis::cmd(command)
        .arg(stream)
        .arg(from)
        .arg(to)
        .arg("COUNT")
        .arg(1)
        .query_async(connection)
        .await?;
    Ok(crate::broker::value_items(&reply)
        .first()
        .and_then(|entry| crate::broker::value_items(entry).first())
        .and_then(crate::broker::value_text))
}

pub async fn key_length(connection: &mut Connection, command: &str, key: &str) -> Result<KeyLength, RedisError> {
    let length: u64 = redis::cmd(command).arg(key).query_async(connection).await?;
    Ok(KeyLength {
        key: key.to_string(),
        length,
    })
}

async fn counters(connection: &mut Connection, key: &str) -> Result<BTreeMap<String, u64>, RedisError> {
    redis::cmd("HGETALL").arg(key).query_async(connection).await
}

impl Status {
    pub fn print_text(&self) {
        let stream = &self.stream;
        println!(
            "stream {}: length {}, first {}, last {}",
            escape_control(&stream.key),
            stream.length,
            stream.first_id.as_deref().unwrap_or("-"),
            stream.last_id.as_deref().unwrap_or("-")
        );
        if !stream.processed.is_empty() {
            println!("  processed: {}", format_counters(&stream.processed));
        }
        for group in &stream.groups {
            println!(
                "  group {}: lag {}, pending {}, oldest pending {}, last delivered {}",
                escape_control(&group.name),
                group.lag.map_or_else(|| "unknown".into(), |lag| lag.to_string()),
                group.pending,
                group
                    .oldest_pending_age_ms
                    .map_or_else(|| "-".into(), |age| format!("{:.1} s old", age as f64 / 1000.0)),
                group.last_delivered_id
            );
            for consumer in &group.consumers {
                println!(
                    "    consumer {}: pending {}, idle {:.1} s",
                    escape_control(&consumer.name),
                    consumer.pending,
                    consumer.idle_ms as f64 / 1000.0
                );
            }
        }
        println!(
            "alerts stream {}: length {}",
            self.alerts_stream.key, self.alerts_stream.length
        );
        println!(
            "dead-letter stream {}: length {}",
            self.dead_stream.key, self.dead_stream.length
        );
        let list = &self.list;
        if list.length > 0 || !list.processing.is_empty() || !list.processed.is_empty() {
            println!("list {}: length {}", list.key, list.length);
            for (consumer, items) in &list.processing {
                println!("  processing {}: {items}", escape_control(consumer));
            }
            if !list.processed.is_empty() {
                println!("  processed: {}", format_counters(&list.processed));
            }
        }
    }
}

fn format_counters(counters: &BTreeMap<String, u64>) -> String {
    counters
        .iter()
        .map(|(name, value)| format!("{name} {value}"))
        .collect::<Vec<_>>()
        .join(", ")
}
