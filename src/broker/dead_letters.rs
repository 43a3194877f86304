//! Repair commands on a dead-letter stream (`logsentinel dlq`): replay and purge.
//!
//! Invariant: a replayed dead letter leaves its stream only in the script that re-adds its
//! entry, after the re-add ([`REPLAY_LUA`]): a failure gives a duplicate at worst (the
//! entry re-added and the dead letter kept), never a loss. A dead letter removed by someone
//! else in the meantime (a second `dlq replay`, a purge) is not re-added.

use std::sync::LazyLock;

use redis::{RedisError, Script};

use super::Connection;

/// Re-adds one dead letter's entry to where it came from, then removes the dead letter.
///
/// One script, in that order: the XADD (or LPUSH) comes first, so an error in it (a key of
/// the wrong type, OOM) leaves the dead letter in place; XDEL runs only once the entry is
/// back. The existence check makes a second replay of the same id a no-op instead of a
/// duplicate. Not `allow-oom`: a replay adds data, and over `maxmemory` it should wait.
/// KEYS: dead-letter stream, target (stream or list). ARGV: dead-letter id, `stream` or
/// `list`, then for a stream the field/value pairs, for a list the one item.
/// Returns the new entry id (stream), `list` (list), or `0` if the dead letter was gone.
const REPLAY_LUA: &str = r#"
local dead, target = KEYS[1], KEYS[2]
local dead_id, mode = ARGV[1], ARGV[2]
if #redis.call('XRANGE', dead, dead_id, dead_id) == 0 then return '0' end
local added
if mode == 'list' then
  redis.call('LPUSH', target, ARGV[3])
  added = 'list'
else
  added = redis.call('XADD', target, '*', unpack(ARGV, 3))
end
redis.call('XDEL', dead, dead_id)
return added
"#;

static REPLAY: LazyLock<Script> = LazyLock::new(|| Script::new(REPLAY_LUA));

/// Where a replayed dead letter goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayTarget {
    /// XADD to this stream with these fields.
    Stream {
        stream: String,
        fields: Vec<(String, String)>,
    },
    /// LPUSH of this item to this list (where list-mode agents push).
    List { list: String, item: String },
}

/// Replays one dead letter (see [`REPLAY_LUA`]). `Ok(None)`: the dead letter no longer
/// exists, nothing was added; else the new stream entry id (`list` for a list).
pub async fn replay(
    connection: &mut Connection,
    dead_stream: &str,
    dead_id: &str,
    target: &ReplayTarget,
) -> Result<Option<String>, RedisError> {
    let mut invocation = REPLAY.prepare_invoke();
    invocation.key(dead_stream);
    match target {
        ReplayTarget::Stream { stream, fields } => {
            debug_assert!(!fields.is_empty(), "XADD needs at least one field");
            invocation.key(stream).arg(dead_id).arg("stream");
            for (name, value) in fields {
                invocation.arg(name).arg(value);
            }
        }
        ReplayTarget::List { list, item } => {
            invocation.key(list).arg(dead_id).arg("list").arg(item);
        }
    }
    let added: String = invocation.invoke_async(connection).await?;
    Ok((added != "0").then_some(added))
}

/// Removes these dead letters; returns how many existed.
pub async fn delete(connection: &mut Connection, dead_stream: &str, dead_ids: &[String]) -> Result<u64, RedisError> {
    let mut removed = 0;
    // XDEL takes any number of ids; chunks keep one command's size bounded.
    for chunk in dead_ids.chunks(1000) {
        let count: u64 = redis::cmd("XDEL")
            .arg(dead_stream)
            .arg(chunk)
            .query_async(connection)
            .await?;
        removed += count;
    }
    Ok(removed)
}

/// Removes every dead letter whose id is below `min_id` (XTRIM MINID, exact).
pub async fn delete_older_than(
    connection: &mut Connection,
    dead_stream: &str,
    min_id: &str,
) -> Result<u64, RedisError> {
    redis::cmd("XTRIM")
        .arg(dead_stream)
        .arg("MINID")
        .arg(min_id)
        .query_async(connection)
        .await
}
