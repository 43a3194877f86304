//! The police's view of the group, sampled every [`SAMPLE_INTERVAL`] on a connection of
//! its own: four cheap commands (XINFO GROUPS twice, XPENDING summary, XLEN), never a
//! scan of the pending list. Every police samples the same figures; dashboards take the
//! max across instances.

use std::time::Duration;

use metrics::gauge;
use redis::RedisError;
use tokio_util::sync::CancellationToken;

use super::names;
use crate::broker::{self, Connection, keys::Keys, stream};

/// Often enough for a dashboard, rare enough to cost Redis nothing measurable.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// Samples until `shutdown`; a failed sample is counted and retried at the next interval.
pub async fn run(redis_url: String, keys: Keys, sinks: Vec<String>, shutdown: CancellationToken) {
    metrics::counter!(names::ERRORS_TOTAL, "stage" => "sample").increment(0);
    let mut connection: Option<Connection> = None;
    let mut interval = tokio::time::interval(SAMPLE_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        if connection.is_none() {
            connection = broker::connect(&redis_url).await.ok();
        }
        let Some(open) = connection.as_mut() else {
            metrics::counter!(names::ERRORS_TOTAL, "stage" => "sample").increment(1);
            continue;
        };
        if sample(open, &keys, &sinks).await.is_err() {
            metrics::counter!(names::ERRORS_TOTAL, "stage" => "sample").increment(1);
            connection = None;
        }
    }
}

async fn sample(connection: &mut Connection, keys: &Keys, sinks: &[String]) -> Result<(), RedisError> {
    let dead_length: u64 = redis::cmd("XLEN").arg(&keys.dead).query_async(connection).await?;
    gauge!(names::DEAD_LETTER_LENGTH).set(dead_length as f64);
    // XINFO GROUPS fails on a missing key: no stream yet means no group figures yet.
    let stream_exists: bool = redis::cmd("EXISTS").arg(&keys.stream).query_async(connection).await?;
    if stream_exists {
        let groups = stream::groups(connection, &keys.stream).await?;
        if let Some(group) = groups.iter().find(|group| group.name == keys.group) {
            if let Some(lag) = group.lag {
                gauge!(names::GROUP_LAG).set(lag as f64);
            }
            gauge!(names::GROUP_PENDING).set(group.pending as f64);
            gauge!(names::GROUP_CONSUMERS).set(group.consumers as f64);
            let oldest_age_s = match stream::oldest_pending_id(connection, &keys.stream, &keys.group).await? {
                Some(entry_id) => {
                    let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
                    let created_ms = broker::stream_id_millis(&entry_id).unwrap_or(now_ms);
                    now_ms.saturating_sub(created_ms) as f64 / 1000.0
                }
                None => 0.0,
            };
            gauge!(names::GROUP_OLDEST_PENDING_AGE_SECONDS).set(oldest_age_s);
        }
    }
    if sinks.is_empty() {
        return Ok(());
    }
    let alerts_exist: bool = redis::cmd("EXISTS").arg(&keys.alerts).query_async(connection).await?;
    if !alerts_exist {
        return Ok(());
    }
    let sink_groups = stream::groups(connection, &keys.alerts).await?;
    for sink in sinks {
        let group_name = Keys::sink_group(sink);
        let Some(group) = sink_groups.iter().find(|group| group.name == group_name) else {
            continue;
        };
        let backlog = group.lag.unwrap_or(0) + group.pending;
        gauge!(names::SINK_BACKLOG, "sink" => sink.clone()).set(backlog as f64);
    }
    Ok(())
}
