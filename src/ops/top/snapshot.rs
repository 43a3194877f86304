//! One reading of the pipeline's figures from Redis, and the rates between two readings.
//!
//! The queries are `status`'s ([`crate::status`]): the log stream and its groups from
//! [`status::collect`], the sinks' groups on the alerts stream from
//! [`status::group_statuses`]. Lag alone misleads: XINFO GROUPS counts undelivered entries
//! only, so a consumer that reads but never acknowledges shows lag 0 while pending grows;
//! every group row therefore shows both, and a sink's backlog is their sum.

use std::time::Instant;

use redis::RedisError;
use serde::Serialize;

use crate::broker::keys::Keys;
use crate::broker::{Connection, stream};
use crate::status::{self, GroupStatus};

/// Prefix of the sinks' consumer groups on the alerts stream ([`Keys::sink_group`]).
const SINK_GROUP_PREFIX: &str = "sink:";

#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// Wall clock of the reading (ms since the epoch).
    pub taken_at_ms: u64,
    pub streams: Vec<StreamRow>,
    pub groups: Vec<GroupRow>,
    pub consumers: Vec<ConsumerRow>,
    /// Events processed by the police, by counter (`events`, `alerts`, `dead`, …).
    pub processed: std::collections::BTreeMap<String, u64>,
}

/// What a stream holds for the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamRole {
    Logs,
    Alerts,
    DeadLetters,
    SinkDeadLetters,
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamRow {
    pub key: String,
    pub role: StreamRole,
    pub length: u64,
    /// Entries ever added (trimming does not lower it); the rate is its change.
    pub entries_added: u64,
    /// Entries added per second since the previous reading; `None` on the first one.
    pub added_per_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupRow {
    pub stream: String,
    pub name: String,
    /// The sink this group delivers to, for the sinks' groups on the alerts stream.
    pub sink: Option<String>,
    /// Entries not yet delivered to the group; `None` when Redis cannot tell.
    pub lag: Option<u64>,
    /// Entries delivered and not yet acknowledged.
    pub pending: u64,
    pub oldest_pending_age_ms: Option<u64>,
    pub entries_read: Option<u64>,
    pub consumers: u64,
    /// Deliveries per second since the previous reading.
    pub delivered_per_s: Option<f64>,
    /// A sink's records not yet delivered: lag plus pending.
    pub backlog: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConsumerRow {
    pub stream: String,
    pub group: String,
    pub name: String,
    pub pending: u64,
    pub idle_ms: u64,
    /// Idle beyond the claim time with entries pending: crashed or stuck, its entries are
    /// about to be claimed by a peer (or are stranded if none runs).
    pub stalled: bool,
}

/// Reads every figure; `claim_idle_ms` is the police's `--claim-idle`, for the stall flag.
pub async fn collect(connection: &mut Connection, keys: &Keys, claim_idle_ms: u64) -> Result<Snapshot, RedisError> {
    let taken_at_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
    let log_status = status::collect(connection, keys).await?;
    let alert_groups = status::group_statuses(connection, &keys.alerts, taken_at_ms).await?;
    let alerts_added = stream::entries_added(connection, &keys.alerts).await?;
    let dead_added = stream::entries_added(connection, &keys.dead).await?;

    let mut streams = vec![
        StreamRow {
            key: log_status.stream.key.clone(),
            role: StreamRole::Logs,
            length: log_status.stream.length,
            entries_added: log_status.stream.entries_added,
            added_per_s: None,
        },
        StreamRow {
            key: log_status.alerts_stream.key.clone(),
            role: StreamRole::Alerts,
            length: log_status.alerts_stream.length,
            entries_added: alerts_added,
            added_per_s: None,
        },
        StreamRow {
            key: log_status.dead_stream.key.clone(),
            role: StreamRole::DeadLetters,
            length: log_status.dead_stream.length,
            entries_added: dead_added,
            added_per_s: None,
        },
    ];
    let mut groups = Vec::new();
    let mut consumers = Vec::new();
    let log_groups = log_status.stream.groups.iter().map(|group| (&keys.stream, group));
    let sink_groups = alert_groups.iter().map(|group| (&keys.alerts, group));
    for (stream_key, group) in log_groups.chain(sink_groups) {
        let sink = (stream_key == &keys.alerts)
            .then(|| group.name.strip_prefix(SINK_GROUP_PREFIX).map(str::to_string))
            .flatten();
        if let Some(sink) = &sink {
            let dead_key = keys.sink_dead(sink);
            let dead = status::key_length(connection, "XLEN", &dead_key).await?;
            streams.push(StreamRow {
                key: dead_key.clone(),
                role: StreamRole::SinkDeadLetters,
                length: dead.length,
                entries_added: stream::entries_added(connection, &dead_key).await?,
                added_per_s: None,
            });
        }
        consumers.extend(consumer_rows(stream_key, group, claim_idle_ms));
        groups.push(group_row(stream_key, group, sink));
    }
    Ok(Snapshot {
        taken_at_ms,
        streams,
        groups,
        consumers,
        processed: log_status.stream.processed,
    })
}

fn group_row(stream_key: &str, group: &GroupStatus, sink: Option<String>) -> GroupRow {
    let backlog = match (&sink, group.lag) {
        (Some(_), Some(lag)) => Some(lag + group.pending),
        _ => None,
    };
    GroupRow {
        stream: stream_key.to_string(),
        name: group.name.clone(),
        sink,
        lag: group.lag,
        pending: group.pending,
        oldest_pending_age_ms: group.oldest_pending_age_ms,
        entries_read: group.entries_read,
        consumers: group.consumers.len() as u64,
        delivered_per_s: None,
        backlog,
    }
}

fn consumer_rows<'a>(
    stream_key: &'a str,
    group: &'a GroupStatus,
    claim_idle_ms: u64,
) -> impl Iterator<Item = ConsumerRow> + 'a {
    group.consumers.iter().map(move |consumer| ConsumerRow {
        stream: stream_key.to_string(),
        group: group.name.clone(),
        name: consumer.name.clone(),
        pending: consumer.pending,
        idle_ms: consumer.idle_ms,
        stalled: is_stalled(consumer.pending, consumer.idle_ms, claim_idle_ms),
    })
}

/// A consumer holding entries that it has not touched for longer than the claim time.
pub fn is_stalled(pending: u64, idle_ms: u64, claim_idle_ms: u64) -> bool {
    pending > 0 && idle_ms > claim_idle_ms
}

/// A snapshot and the monotonic instant it was read at, to compute rates from.
pub struct Reading {
    pub snapshot: Snapshot,
    pub at: Instant,
}

/// Fills the rates of `current` from the counters' change since `previous`. Counters that
/// went down (the stream deleted and recreated, `FLUSHALL`) give no rate rather than a
/// negative one.
pub fn fill_rates(current: &mut Reading, previous: &Reading) {
    let elapsed_s = current.at.duration_since(previous.at).as_secs_f64();
    if elapsed_s <= 0.0 {
        return;
    }
    let rate = |now: u64, before: u64| (now >= before).then(|| (now - before) as f64 / elapsed_s);
    for stream_row in &mut current.snapshot.streams {
        stream_row.added_per_s = previous
            .snapshot
            .streams
            .iter()
            .find(|earlier| earlier.key == stream_row.key)
            .and_then(|earlier| rate(stream_row.entries_added, earlier.entries_added));
    }
    for group_row in &mut current.snapshot.groups {
        group_row.delivered_per_s = previous
            .snapshot
            .groups
            .iter()
            .find(|earlier| earlier.stream == group_row.stream && earlier.name == group_row.name)
            .and_then(|earlier| Some((group_row.entries_read?, earlier.entries_read?)))
            .and_then(|(now, before)| rate(now, before));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(entries_added: u64, entries_read: Option<u64>) -> Snapshot {
        Snapshot {
            taken_at_ms: 0,
            streams: vec![StreamRow {
                key: "logs".into(),
                role: StreamRole::Logs,
                length: 0,
                entries_added,
                added_per_s: None,
            }],
            groups: vec![GroupRow {
                stream: "logs".into(),
                name: "police".into(),
                sink: None,
                lag: Some(0),
                pending: 0,
                oldest_pending_age_ms: None,
                entries_read,
                consumers: 1,
                delivered_per_s: None,
                backlog: None,
            }],
            consumers: Vec::new(),
            processed: Default::default(),
        }
    }

    #[test]
    fn rates_are_the_change_per_second_and_never_negative() {
        let start = Instant::now();
        let previous = Reading {
            snapshot: snapshot(100, Some(50)),
            at: start,
        };
        let mut current = Reading {
            snapshot: snapshot(300, Some(40)),
            at: start + std::time::Duration::from_secs(2),
        };
        fill_rates(&mut current, &previous);
        assert_eq!(current.snapshot.streams[0].added_per_s, Some(100.0));
        assert_eq!(
            current.snapshot.groups[0].delivered_per_s, None,
            "a counter that went down"
        );
    }

    #[test]
    fn a_consumer_is_stalled_only_with_entries_and_beyond_the_claim_time() {
        assert!(is_stalled(1, 30_001, 30_000));
        assert!(!is_stalled(0, 90_000, 30_000));
        assert!(!is_stalled(5, 30_000, 30_000));
    }
}
