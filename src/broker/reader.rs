//! Plain reads for the read-only views (`tail`, `dlq list`): XREAD, XRANGE, LRANGE, TIME.
//!
//! Invariant: nothing here reads through a consumer group (no XREADGROUP, no XCLAIM), so a
//! viewer never takes an entry from the police nor changes a pending list or a delivery
//! count. LRANGE peeks at a list without moving items.

use redis::{RedisError, Value};

use super::Connection;
use super::stream::{StreamEntry, entries_of_read_reply, parse_entry};
use super::value_items;

/// Entries of `stream` with ids strictly above `after_id`, oldest first: at most `count`,
/// waiting up to `block_ms` for the first one (`None`: do not wait).
pub async fn read_after(
    connection: &mut Connection,
    stream: &str,
    after_id: &str,
    count: usize,
    block_ms: Option<u64>,
) -> Result<Vec<StreamEntry>, RedisError> {
    let mut command = redis::cmd("XREAD");
    command.arg("COUNT").arg(count);
    if let Some(block_ms) = block_ms {
        command.arg("BLOCK").arg(block_ms);
    }
    command.arg("STREAMS").arg(stream).arg(after_id);
    let reply: Value = command.query_async(connection).await?;
    Ok(entries_of_read_reply(reply))
}

/// XRANGE `start` `end` COUNT `count` (`-` and `+` for the ends, `(id` for exclusive).
pub async fn range(
    connection: &mut Connection,
    stream: &str,
    start: &str,
    end: &str,
    count: usize,
) -> Result<Vec<StreamEntry>, RedisError> {
    let reply: Value = redis::cmd("XRANGE")
        .arg(stream)
        .arg(start)
        .arg(end)
        .arg("COUNT")
        .arg(count)
        .query_async(connection)
        .await?;
    Ok(value_items(&reply).iter().cloned().filter_map(parse_entry).collect())
}

/// Id of the newest entry of `stream`, `0-0` when it is empty or missing: where "from now
/// on" starts. Asking once, then reading after that id, misses nothing between two blocking
/// reads (re-sending `$` each time would skip what arrived in between).
pub async fn last_id(connection: &mut Connection, stream: &str) -> Result<String, RedisError> {
    let reply: Value = redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(connection)
        .await?;
    Ok(value_items(&reply)
        .iter()
        .cloned()
        .filter_map(parse_entry)
        .next()
        .map(|entry| entry.id)
        .unwrap_or_else(|| "0-0".into()))
}

/// Up to `count` items of a list, in the order a consumer takes them (oldest first: agents
/// push on the left, the police takes from the right). Moves nothing.
pub async fn peek_list(connection: &mut Connection, list: &str, count: usize) -> Result<Vec<String>, RedisError> {
    let last = count.max(1) as i64;
    let mut newest_first: Vec<String> = redis::cmd("LRANGE")
        .arg(list)
        .arg(-last)
        .arg(-1)
        .query_async(connection)
        .await?;
    newest_first.reverse();
    Ok(newest_first)
}

/// Redis's clock in milliseconds: stream ids are stamped by it, so ages and `-5m` are
/// measured against it, not against this machine's clock.
pub async fn server_time_ms(connection: &mut Connection) -> Result<u64, RedisError> {
    let (seconds, micros): (u64, u64) = redis::cmd("TIME").query_async(connection).await?;
    Ok(seconds * 1000 + micros / 1000)
}
