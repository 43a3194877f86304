//! The alerts stream as an outbox: the commands and scripts of the delivery workers (one
//! consumer group `sink:<name>` per sink, see [`crate::delivery`]).
//!
//! Invariants kept here:
//! - a record leaves a sink's pending list only by XACK after delivery, or by
//!   [`dead_letter`], which writes the sink dead letter and acknowledges in one script
//! - a worker acts only on records still pending on its own consumer: dead-lettering and
//!   keeping records alive ([`keep_pending`]) check ownership in the same script, so a
//!   record claimed by a peer is never dead-lettered twice nor taken back

use std::sync::LazyLock;

use redis::{RedisError, Script};

use super::keys::Keys;
use super::stream::{self, Claimed, StreamEntry};
use super::{Connection, value_items, value_text};

/// Writes records to the sink's dead letters and acknowledges them, each only if it is
/// still pending on this consumer.
///
/// Why one script: XADD then XACK as two calls would, after a crash in between, write the
/// dead letter again on redelivery; XACK first would lose the record. Why the fence: a
/// worker that stalled longer than the claim idle time may find its record claimed and
/// being retried by a peer; then the peer decides. The key type is checked before the first
/// write, so a wrong key fails the call without writing half of it.
/// Flagged `allow-oom`: a dead letter is a copy of a record already in memory, and without
/// it a permanently refused record would stay pending and be retried forever.
/// KEYS: alerts stream, sink dead-letter stream. ARGV: group, consumer, then per record:
/// entry id, alert id, alert JSON (as read), last status, attempts. Returns the number of
/// records dead-lettered.
const DEAD_LETTER_LUA: &str = r#"#!lua flags=allow-oom
local alerts, dead = KEYS[1], KEYS[2]
local group, consumer = ARGV[1], ARGV[2]
local found = redis.call('TYPE', dead)['ok']
if found ~= 'none' and found ~= 'stream' then
  return redis.error_reply('WRONGTYPE logsentinel: key ' .. dead .. ' holds a ' .. found .. ', expected a sink dead-letter stream')
end
local written = 0
for i = 3, #ARGV, 5 do
  local entry = ARGV[i]
  if #redis.call('XPENDING', alerts, group, entry, entry, 1, consumer) == 1 then
    redis.call('XADD', dead, '*', 'alert_id', ARGV[i + 1], 'alert', ARGV[i + 2], 'status', ARGV[i + 3],
      'attempts', ARGV[i + 4], 'entry', entry)
    redis.call('XACK', alerts, group, entry)
    written = written + 1
  end
end
return written
"#;

static DEAD_LETTER: LazyLock<Script> = LazyLock::new(|| Script::new(DEAD_LETTER_LUA));

/// Resets the idle time of records a worker holds (waiting for the rate limit or a retry),
/// so that peers do not claim records of a live worker. Only records still pending on this
/// consumer are touched (`XCLAIM … JUSTID` with min idle 0 would otherwise take a record
/// back from the peer that claimed it); `JUSTID` leaves the delivery count alone.
/// Flagged `allow-oom`: it allocates nothing lasting.
/// KEYS: alerts stream. ARGV: group, consumer, entry ids. Returns the ids no longer ours.
const KEEP_PENDING_LUA: &str = r#"#!lua flags=allow-oom
local lost = {}
for i = 3, #ARGV do
  if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2]) == 1 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
"#;

static KEEP_PENDING: LazyLock<Script> = LazyLock::new(|| Script::new(KEEP_PENDING_LUA));

/// Takes one message permit of a sink's rate limit: `INCR` of the period's counter, its
/// expiry set on the first take. One script so that a counter never lives without its
/// expiry (a crash between INCR and PEXPIRE would block the sink forever). Not `allow-oom`:
/// over `maxmemory` the worker backs off like any writer.
/// KEYS: counter of the period. ARGV: messages per period, ttl (ms). Returns 1 if granted.
const TAKE_PERMIT_LUA: &str = r#"
local taken = redis.call('INCR', KEYS[1])
if taken == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if taken > tonumber(ARGV[1]) then return 0 end
return 1
"#;

static TAKE_PERMIT: LazyLock<Script> = LazyLock::new(|| Script::new(TAKE_PERMIT_LUA));

/// Creates the sink's group at id `0` unless it exists (every record raised before the
/// sink existed is delivered); works over `maxmemory` too.
pub async fn ensure_sink_group(connection: &mut Connection, keys: &Keys, group: &str) -> Result<(), RedisError> {
    // The same script as the police's own group (from id 0, allow-oom).
    super::scripts::ENSURE_GROUP
        .key(&keys.alerts)
        .arg(group)
        .arg("the alerts stream")
        .invoke_async::<()>(connection)
        .await
}

/// XREADGROUP on the alerts stream (`>` for new records, an id for our own pending ones).
pub async fn read(
    connection: &mut Connection,
    keys: &Keys,
    group: &str,
    consumer: &str,
    start: &str,
    count: usize,
    block_ms: Option<u64>,
) -> Result<Vec<StreamEntry>, RedisError> {
    stream::read_group_of(connection, &keys.alerts, group, consumer, start, count, block_ms).await
}

/// XAUTOCLAIM of records idle on other consumers of the sink's group.
pub async fn claim_idle(
    connection: &mut Connection,
    keys: &Keys,
    group: &str,
    consumer: &str,
    min_idle_ms: u64,
    cursor: &str,
    count: usize,
) -> Result<Claimed, RedisError> {
    stream::autoclaim_of(connection, &keys.alerts, group, consumer, min_idle_ms, cursor, count).await
}

/// XACK: the records were delivered, or are not routed to this sink.
pub async fn ack(connection: &mut Connection, keys: &Keys, group: &str, entry_ids: &[&str]) -> Result<(), RedisError> {
    if entry_ids.is_empty() {
        return Ok(());
    }
    redis::cmd("XACK")
        .arg(&keys.alerts)
        .arg(group)
        .arg(entry_ids)
        .query_async::<i64>(connection)
        .await?;
    Ok(())
}

/// One record bound for a sink's dead letters.
#[derive(Debug, Clone)]
pub struct DeadRecord<'a> {
    pub entry_id: &'a str,
    pub alert_id: &'a str,
    /// The record as read from the outbox (unparsable ones too).
    pub alert_json: &'a str,
    /// Last HTTP status or error, or why the record could not be read.
    pub status: &'a str,
    pub attempts: u32,
}

/// Writes records to `Keys::sink_dead(sink)` and acknowledges them (see [`DEAD_LETTER_LUA`]).
pub async fn dead_letter(
    connection: &mut Connection,
    keys: &Keys,
    sink: &str,
    group: &str,
    consumer: &str,
    records: &[DeadRecord<'_>],
) -> Result<u64, RedisError> {
    if records.is_empty() {
        return Ok(0);
    }
    let mut invocation = DEAD_LETTER.key(&keys.alerts);
    invocation.key(keys.sink_dead(sink)).arg(group).arg(consumer);
    for record in records {
        invocation
            .arg(record.entry_id)
            .arg(record.alert_id)
            .arg(record.alert_json)
            .arg(record.status)
            .arg(record.attempts);
    }
    let written: i64 = invocation.invoke_async(connection).await?;
    Ok(written.max(0) as u64)
}

/// Keeps our records from being claimed by peers (see [`KEEP_PENDING_LUA`]); returns the
/// ids a peer took over meanwhile, which the caller must let go.
pub async fn keep_pending(
    connection: &mut Connection,
    keys: &Keys,
    group: &str,
    consumer: &str,
    entry_ids: &[&str],
) -> Result<Vec<String>, RedisError> {
    if entry_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut invocation = KEEP_PENDING.key(&keys.alerts);
    invocation.arg(group).arg(consumer).arg(entry_ids);
    let lost: redis::Value = invocation.invoke_async(connection).await?;
    Ok(value_items(&lost).iter().filter_map(value_text).collect())
}

/// Takes a permit of `messages` per `period` for `sink`, counted in Redis across every
/// police. The period index comes from this machine's wall clock: police with skewed
/// clocks share a counter for most of each period, which is what a limit needs.
pub async fn take_permit(
    connection: &mut Connection,
    keys: &Keys,
    sink: &str,
    period_index: u64,
    messages: u64,
    counter_ttl_ms: u64,
) -> Result<bool, RedisError> {
    let granted: i64 = TAKE_PERMIT
        .key(keys.sink_rate(sink, period_index))
        .arg(messages)
        .arg(counter_ttl_ms)
        .invoke_async(connection)
        .await?;
    Ok(granted == 1)
}

/// On a graceful stop: leaves the sink's group if nothing is pending on us (the same
/// atomic check as the police's own group, [`super::scripts::REMOVE_CONSUMER`]).
pub async fn leave_group_if_idle(
    connection: &mut Connection,
    keys: &Keys,
    group: &str,
    consumer: &str,
) -> Result<bool, RedisError> {
    let removed: i64 = super::scripts::REMOVE_CONSUMER
        .key(&keys.alerts)
        .key(keys.consumer_heartbeat(consumer))
        .arg(group)
        .arg(consumer)
        .arg("self")
        .invoke_async(connection)
        .await?;
    Ok(removed == 1)
}

/// Records pending on `consumer` in a sink's group (XPENDING's summary form).
pub async fn pending_of(
    connection: &mut Connection,
    keys: &Keys,
    group: &str,
    consumer: &str,
) -> Result<u64, RedisError> {
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg(&keys.alerts)
        .arg(group)
        .query_async(connection)
        .await?;
    let per_consumer = value_items(&summary).get(3).map(value_items).unwrap_or(&[]);
    Ok(per_consumer
        .iter()
        .find(|pair| value_items(pair).first().and_then(value_text).as_deref() == Some(consumer))
        .and_then(|pair| value_items(pair).get(1).and_then(super::value_int))
        .map_or(0, |count| count.max(0) as u64))
}

/// Records pending in a sink's group plus records not yet delivered to it: the sink's lag.
pub async fn sink_backlog(connection: &mut Connection, keys: &Keys, group: &str) -> Result<Option<u64>, RedisError> {
    let groups = stream::groups(connection, &keys.alerts).await?;
    Ok(groups
        .into_iter()
        .find(|info| info.name == group)
        .and_then(|info| info.lag.map(|lag| lag + info.pending)))
}
