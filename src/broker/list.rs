//! List-mode commands, for list-based shippers (`LPUSH log_queue …`).
//!
//! Reliable consumption: an item is moved atomically from the source list to the
//! consumer's own processing list, and removed from there only when it is settled (see
//! [`super::scripts::SETTLE`]). A consumer re-processes its processing list when it
//! starts; the list of a consumer whose heartbeat key expired is given back to the source
//! list by any other consumer.

use redis::RedisError;

use super::keys::Keys;
use super::{Connection, scripts};

/// Up to `count` items, oldest first, moved into our processing list. Waits up to
/// `block_s` seconds for the first one when the source list is empty.
pub async fn take_items(
    connection: &mut Connection,
    keys: &Keys,
    processing_list: &str,
    count: usize,
    block_s: f64,
) -> Result<Vec<String>, RedisError> {
    let moved: Vec<String> = scripts::CLAIM_LIST_ITEMS
        .key(&keys.list)
        .key(processing_list)
        .arg(count)
        .invoke_async(connection)
        .await?;
    if !moved.is_empty() {
        return Ok(moved);
    }
    let first: Result<Option<String>, RedisError> = redis::cmd("BLMOVE")
        .arg(&keys.list)
        .arg(processing_list)
        .arg("RIGHT")
        .arg("LEFT")
        .arg(block_s)
        .query_async(connection)
        .await;
    match first {
        Ok(first) => Ok(first.into_iter().collect()),
        // Over maxmemory Redis refuses BLMOVE (it may write), though the list is empty and
        // this consumer is what frees memory: wait as the blocking read would have, then
        // take items with the claim script, which is allowed.
        Err(error) if super::errors::classify(&error) == super::errors::Failure::OutOfMemory => {
            tokio::time::sleep(std::time::Duration::from_secs_f64(block_s)).await;
            Ok(Vec::new())
        }
        Err(error) => Err(error),
    }
}

/// Items left in a processing list by an earlier run, oldest first.
pub async fn unfinished_items(connection: &mut Connection, processing_list: &str) -> Result<Vec<String>, RedisError> {
    let mut newest_first: Vec<String> = redis::cmd("LRANGE")
        .arg(processing_list)
        .arg(0)
        .arg(-1)
        .query_async(connection)
        .await?;
    newest_first.reverse();
    Ok(newest_first)
}

/// Gives the processing lists of dead consumers back to the source list. Returns the
/// number of items given back.
pub async fn return_orphaned_items(
    connection: &mut Connection,
    keys: &Keys,
    own_processing_list: &str,
) -> Result<u64, RedisError> {
    let processing_lists = matching_keys(connection, &keys.processing_list_pattern()).await?;
    let prefix = keys.processing_list("");
    let mut returned = 0;
    for processing_list in processing_lists.iter().filter(|name| *name != own_processing_list) {
        let consumer = processing_list.strip_prefix(&prefix).unwrap_or(processing_list);
        let moved: i64 = scripts::RETURN_ORPHANED_ITEMS
            .key(processing_list)
            .key(&keys.list)
            .key(keys.heartbeat(consumer))
            .invoke_async(connection)
            .await?;
        if moved < 0 {
            tracing::warn!(key = %processing_list, "a key named like a processing list is not a list; left alone");
            continue;
        }
        returned += moved as u64;
    }
    Ok(returned)
}

/// Keys matching a pattern, by SCAN (never KEYS, which blocks Redis).
pub async fn matching_keys(connection: &mut Connection, pattern: &str) -> Result<Vec<String>, RedisError> {
    let mut cursor: u64 = 0;
    let mut found = Vec::new();
    loop {
        let (next_cursor, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(connection)
            .await?;
        found.extend(batch);
        if next_cursor == 0 {
            break;
        }
        cursor = next_cursor;
    }
    found.sort();
    found.dedup();
    Ok(found)
}
