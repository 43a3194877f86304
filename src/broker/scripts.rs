//! Lua scripts, each with the reason it must be atomic.

use std::sync::LazyLock;

use redis::Script;

/// Settles processed input: writes its alerts and dead letters and acknowledges it, in one
/// atomic step.
///
/// Why atomic: if the alerts were written and the process died before the XACK, the entry
/// would be redelivered and its alerts written twice; if the XACK came first, a crash in
/// between would lose them. Inside one script, Redis applies all of it or none of it.
///
/// Fences, per input item:
/// - stream mode: `XACK` returns 1 only for the first consumer to acknowledge an entry, so
///   when a slow consumer and the one that claimed its entry both finish, only one of them
///   writes the outputs;
/// - list mode: `LREM` of the item from our processing list plays the same role.
///
/// Idempotency guard: an alert is written only if `SET <seen-prefix><alert-id> NX EX ttl`
/// succeeds, so an event shipped twice (an agent resending a batch whose reply was lost)
/// still raises one alert.
///
/// Items without outputs (most of them) come first, grouped by event count, and are
/// acknowledged with one variadic `XACK` per group: one command instead of one per entry.
///
/// KEYS: source (stream or processing list), alerts stream, dead stream, stats hash.
/// ARGV: mode (`stream`|`list`), group, seen prefix, seen ttl (s), source label, number of
/// quiet groups, then per quiet group: events per item, item count, items; then per item
/// with outputs: item, event count, alert count, dead count, alert count × (alert id,
/// alert json), dead count × (reason, raw).
/// Returns: {items settled, alerts written, duplicate alerts skipped, dead letters written}.
const SETTLE_LUA: &str = r#"
local source, alerts, dead, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local mode, group, seen_prefix, seen_ttl, label = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local settled, events, written, duplicates, dead_written = 0, 0, 0, 0, 0
local i = 7
for _ = 1, tonumber(ARGV[6]) do
  local events_per_item, item_count = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  i = i + 2
  local group_end = i + item_count - 1
  -- unpack() is limited by the Lua stack: acknowledge in chunks of 1000
  for first = i, group_end, 1000 do
    local last = math.min(first + 999, group_end)
    local acked = 0
    if mode == 'stream' then
      acked = redis.call('XACK', source, group, unpack(ARGV, first, last))
    else
      for k = first, last do acked = acked + redis.call('LREM', source, -1, ARGV[k]) end
    end
    settled = settled + acked
    events = events + acked * events_per_item
  end
  i = group_end + 1
end
while i <= #ARGV do
  local item = ARGV[i]
  local event_count, alert_count, dead_count = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  i = i + 4
  local owned
  if mode == 'stream' then
    owned = redis.call('XACK', source, group, item) == 1
  else
    owned = redis.call('LREM', source, -1, item) == 1
  end
  if owned then
    settled = settled + 1
    events = events + event_count
  end
  for _ = 1, alert_count do
    if owned then
      if redis.call('SET', seen_prefix .. ARGV[i], '1', 'NX', 'EX', seen_ttl) then
        redis.call('XADD', alerts, '*', 'id', ARGV[i], 'alert', ARGV[i + 1])
        written = written + 1
      else
        duplicates = duplicates + 1
      end
    end
    i = i + 2
  end
  for _ = 1, dead_count do
    if owned then
      if mode == 'stream' then
        redis.call('XADD', dead, '*', 'reason', ARGV[i], 'source', label, 'entry', item, 'raw', ARGV[i + 1])
      else
        redis.call('XADD', dead, '*', 'reason', ARGV[i], 'source', label, 'raw', ARGV[i + 1])
      end
      dead_written = dead_written + 1
    end
    i = i + 2
  end
end
if settled > 0 then
  redis.call('HINCRBY', stats, 'events', events)
  redis.call('HINCRBY', stats, 'alerts', written)
  redis.call('HINCRBY', stats, 'dead', dead_written)
  if duplicates > 0 then redis.call('HINCRBY', stats, 'duplicate_alerts', duplicates) end
end
return {settled, written, duplicates, dead_written}
"#;

pub static SETTLE: LazyLock<Script> = LazyLock::new(|| Script::new(SETTLE_LUA));

/// Moves up to ARGV[1] items from the source list to the processing list, oldest first.
/// Atomic so that a crash never leaves an item in neither list.
const CLAIM_LIST_ITEMS_LUA: &str = r#"
local moved = {}
for _ = 1, tonumber(ARGV[1]) do
  local item = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not item then break end
  moved[#moved + 1] = item
end
return moved
"#;

pub static CLAIM_LIST_ITEMS: LazyLock<Script> = LazyLock::new(|| Script::new(CLAIM_LIST_ITEMS_LUA));

/// Gives the items of a dead consumer's processing list back to the source list, so that
/// they are the next ones read. Atomic with the liveness check: a consumer whose heartbeat
/// key exists keeps its list.
/// KEYS: processing list, source list, heartbeat key. Returns the number of items moved.
const RETURN_ORPHANED_ITEMS_LUA: &str = r#"
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local moved = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') do moved = moved + 1 end
return moved
"#;

pub static RETURN_ORPHANED_ITEMS: LazyLock<Script> = LazyLock::new(|| Script::new(RETURN_ORPHANED_ITEMS_LUA));
