//! Lua scripts, each with the reason it must be atomic.

use std::sync::LazyLock;

use redis::Script;

/// Settles processed input: writes its alerts and dead letters and acknowledges it, in one
/// atomic step.
///
/// Why atomic: if the alerts were written and the process died before the XACK, the entry
/// would be redelivered and its alerts written twice; if the XACK came first, a crash in
/// between would lose them. Inside one script no other client runs in between.
///
/// Why this order — validate, check ownership, write, acknowledge last: Redis does not roll
/// a script back when a command in it fails; what ran before the failure stays done. So
/// every condition that could make a later command fail is checked before the first write
/// (key types, the dedup ttl, ACL permissions via `redis.acl_check_cmd`, counters that
/// `HINCRBY` can add to, streams with ids left), and an item is
/// acknowledged only after all its outputs are written. Should a write still fail, the
/// script stops with its error: items settled before it are complete, the failing item and
/// those after it stay pending and are retried; none is acknowledged without its alerts.
/// Out of memory: the script is flagged `allow-oom`, because the police is what frees
/// memory (acknowledged entries get trimmed); its writes are the few alerts of what it
/// acknowledges. Writers (agents) are refused and hold back instead.
///
/// Fences, per item with outputs (checked before anything of it is written):
/// - stream mode: the entry must be pending on *this* consumer (`XPENDING … consumer`), so
///   when a slow consumer and the one that claimed its entry both finish, only the one that
///   holds it writes the outputs;
/// - list mode: the item must still be in our processing list (`LPOS`).
///
/// Items without outputs (most of them) are acknowledged last with one variadic `XACK` per
/// group of equal event counts: no fence needed, there is nothing to write twice.
///
/// Idempotency guard: an alert with `guarded = 1` is written only if its key
/// `<seen-prefix><alert-id>` does not exist, and the key is set (`EX ttl`) after the alert
/// is written, so an event shipped twice (an agent resending a batch whose reply was lost)
/// still raises one alert, and a failed write never leaves a key behind that would hide the
/// alert on retry.
///
/// KEYS: source (stream or processing list), alerts stream, dead stream, stats hash.
/// ARGV: mode (`stream`|`list`), group, consumer, seen prefix, seen ttl (s), source label,
/// number of quiet groups, then per quiet group: events per item, item count, items; then per
/// item with outputs: item, event count, alert count, dead count, alert count × (alert id,
/// guarded `1`|`0`, alert json), dead count × (reason, raw).
/// Called with no items, it only validates: the police's start-up check.
/// Returns: {items settled, alerts written, duplicate alerts skipped, dead letters written}.
const SETTLE_LUA: &str = r#"#!lua flags=allow-oom
local source, alerts, dead, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local mode, group, consumer, seen_prefix, seen_ttl, label = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]

-- 1. validate everything a later command could fail on
local ttl = tonumber(seen_ttl)
if not ttl or ttl < 1 or ttl > 315360000 or ttl ~= math.floor(ttl) then
  return redis.error_reply('ERR logsentinel settle: alert dedup ttl ' .. seen_ttl .. ' s is not between 1 and 315360000')
end
local function expect_type(key, wanted)
  local found = redis.call('TYPE', key)['ok']
  if found ~= 'none' and found ~= wanted then
    error({err = 'WRONGTYPE logsentinel settle: key ' .. key .. ' holds a ' .. found .. ', expected a ' .. wanted})
  end
end
local function expect_permission(key, ...)
  if not redis.acl_check_cmd(...) then
    local args = {...}
    error({err = 'NOPERM logsentinel settle: this Redis user may not run ' .. args[1] .. ' on ' .. key})
  end
end
-- counters are incremented last: they must be integers HINCRBY can add to
local function expect_counters(key)
  local fields = {'events', 'alerts', 'dead', 'duplicate_alerts'}
  local values = redis.call('HMGET', key, unpack(fields))
  for k = 1, #fields do
    local value = values[k]
    if value then
      local number = tonumber(value)
      if not number or number ~= math.floor(number) or math.abs(number) > 4503599627370496 then
        error({err = 'ERR logsentinel settle: counter ' .. fields[k] .. ' of ' .. key .. ' holds ' .. value .. ', not an integer it can count on'})
      end
    end
  end
end
-- an XADD with '*' fails once a stream's last id is the largest possible one
local function expect_room(key)
  if redis.call('EXISTS', key) == 0 then return end
  local info = redis.call('XINFO', 'STREAM', key)
  for k = 1, #info, 2 do
    if info[k] == 'last-generated-id' and info[k + 1] == '18446744073709551615-18446744073709551615' then
      error({err = 'ERR logsentinel settle: stream ' .. key .. ' has used up its ids (last id ' .. info[k + 1] .. ')'})
    end
  end
end
expect_type(source, mode == 'stream' and 'stream' or 'list')
expect_type(label, mode == 'stream' and 'stream' or 'list')
expect_type(alerts, 'stream')
expect_type(dead, 'stream')
expect_type(stats, 'hash')
expect_counters(stats)
if mode == 'stream' then
  expect_permission(source, 'XACK', source, group, '0-1')
  expect_permission(source, 'XPENDING', source, group, '-', '+', '1', consumer)
else
  expect_permission(source, 'LREM', source, '-1', 'x')
  expect_permission(source, 'LPOS', source, 'x')
end
expect_permission(alerts, 'XADD', alerts, '*', 'id', 'x')
expect_permission(dead, 'XADD', dead, '*', 'reason', 'x')
expect_permission(stats, 'HINCRBY', stats, 'events', '1')
expect_permission(seen_prefix .. '*', 'SET', seen_prefix .. 'x', '1', 'EX', '1')
expect_permission(seen_prefix .. '*', 'EXISTS', seen_prefix .. 'x')
if #ARGV == 7 then
  -- called with no items: the start-up check also covers the commands of the read loop
  if mode == 'stream' then
    expect_permission(source, 'XREADGROUP', 'GROUP', group, consumer, 'STREAMS', source, '>')
    expect_permission(source, 'XAUTOCLAIM', source, group, consumer, '1', '0-0')
    expect_permission(source, 'XINFO', 'CONSUMERS', source, group)
    expect_permission(source, 'XINFO', 'GROUPS', source)
    expect_permission(source, 'XTRIM', source, 'MINID', '0-1')
    expect_permission(source, 'XGROUP', 'DELCONSUMER', source, group, consumer)
  else
    expect_permission(label, 'LMOVE', label, source, 'RIGHT', 'LEFT')
    expect_permission(label, 'BLMOVE', label, source, 'RIGHT', 'LEFT', '1')
    expect_permission(source, 'LRANGE', source, '0', '-1')
  end
end

local function owns(item)
  if mode == 'stream' then
    return #redis.call('XPENDING', source, group, item, item, 1, consumer) == 1
  end
  return redis.call('LPOS', source, item) ~= false
end
local function acknowledge_one(item)
  if mode == 'stream' then return redis.call('XACK', source, group, item) end
  return redis.call('LREM', source, -1, item)
end
local function acknowledge_range(first, last)
  if mode == 'stream' then return redis.call('XACK', source, group, unpack(ARGV, first, last)) end
  local removed = 0
  for k = first, last do removed = removed + redis.call('LREM', source, -1, ARGV[k]) end
  return removed
end

-- 2. skip the quiet groups, acknowledged at the end
local settled, events, written, duplicates, dead_written = 0, 0, 0, 0, 0
local quiet = {}
local i = 8
for _ = 1, tonumber(ARGV[7]) do
  local events_per_item, item_count = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  quiet[#quiet + 1] = {events_per_item, i + 2, i + 1 + item_count}
  i = i + 2 + item_count
end

-- the streams written to must have ids left
local first_noisy, alerts_total, dead_total = i, 0, 0
while i <= #ARGV do
  local alert_count, dead_count = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  alerts_total, dead_total = alerts_total + alert_count, dead_total + dead_count
  i = i + 4 + 3 * alert_count + 2 * dead_count
end
if alerts_total > 0 then expect_room(alerts) end
if dead_total > 0 then expect_room(dead) end
i = first_noisy

-- 3. items with outputs: fence, write, then acknowledge
while i <= #ARGV do
  local item = ARGV[i]
  local event_count, alert_count, dead_count = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  i = i + 4
  local owned = owns(item)
  for _ = 1, alert_count do
    if owned then
      local alert_id, guarded, alert = ARGV[i], ARGV[i + 1], ARGV[i + 2]
      local seen_key = seen_prefix .. alert_id
      if guarded == '1' and redis.call('EXISTS', seen_key) == 1 then
        duplicates = duplicates + 1
      else
        redis.call('XADD', alerts, '*', 'id', alert_id, 'alert', alert)
        if guarded == '1' then redis.call('SET', seen_key, '1', 'EX', ttl) end
        written = written + 1
      end
    end
    i = i + 3
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
  if owned and acknowledge_one(item) == 1 then
    settled = settled + 1
    events = events + event_count
  end
end

-- 4. items without outputs; unpack() is limited by the Lua stack: chunks of 1000
for _, group_of_items in ipairs(quiet) do
  local events_per_item, group_start, group_end = group_of_items[1], group_of_items[2], group_of_items[3]
  for first = group_start, group_end, 1000 do
    local acked = acknowledge_range(first, math.min(first + 999, group_end))
    settled = settled + acked
    events = events + acked * events_per_item
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

/// Creates the consumer group from id 0 (and the stream, if needed) unless it exists, which
/// is checked first (a user allowed to read but not to create groups can still run).
/// Flagged `allow-oom`: Redis refuses `XGROUP CREATE` over `maxmemory` even when the group
/// exists, and a police that cannot start can never drain what fills the memory.
/// KEYS: stream. ARGV: group. Returns 1 when created, 0 when it existed.
const ENSURE_GROUP_LUA: &str = r#"#!lua flags=allow-oom
local found = redis.call('TYPE', KEYS[1])['ok']
if found == 'stream' then
  for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    for k = 1, #group, 2 do
      if group[k] == 'name' and group[k + 1] == ARGV[1] then return 0 end
    end
  end
elseif found ~= 'none' then
  return redis.error_reply('WRONGTYPE logsentinel: key ' .. KEYS[1] .. ' holds a ' .. found .. ', expected the log stream')
end
local created = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
if type(created) == 'table' and created.err then
  if string.sub(created.err, 1, 9) == 'BUSYGROUP' then return 0 end
  return created
end
return 1
"#;

pub static ENSURE_GROUP: LazyLock<Script> = LazyLock::new(|| Script::new(ENSURE_GROUP_LUA));

/// Refreshes a liveness key. Flagged `allow-oom` so that a live consumer stays known as
/// live while Redis is over `maxmemory` (a plain SET is refused then).
/// KEYS: heartbeat key. ARGV: ttl (ms).
const HEARTBEAT_LUA: &str = r#"#!lua flags=allow-oom
return redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
"#;

pub static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| Script::new(HEARTBEAT_LUA));

/// Removes a consumer from the group, only if that cannot lose anything or anyone: it has
/// nothing pending, and (unless it is the caller leaving the group itself) its heartbeat
/// key has expired and Redis has seen it idle for at least the limit.
///
/// Why one script: checked in one round trip and removed in another, an entry delivered in
/// between would be dropped from the pending list with the consumer, and the police holding
/// it could no longer settle it. Why the heartbeat: an empty blocking read does not reset a
/// consumer's idle time on every Redis version, so idle time alone removes live consumers.
/// KEYS: stream, heartbeat key of the consumer. ARGV: group, consumer, idle limit (ms), or
/// `self` to skip the liveness checks. Returns 1 when removed, else 0.
const REMOVE_CONSUMER_LUA: &str = r#"#!lua flags=allow-oom
local stream, heartbeat = KEYS[1], KEYS[2]
local group, consumer, idle_limit = ARGV[1], ARGV[2], ARGV[3]
if #redis.call('XPENDING', stream, group, '-', '+', 1, consumer) > 0 then return 0 end
if idle_limit ~= 'self' then
  if redis.call('EXISTS', heartbeat) == 1 then return 0 end
  local idle = nil
  for _, info in ipairs(redis.call('XINFO', 'CONSUMERS', stream, group)) do
    local fields = {}
    for k = 1, #info, 2 do fields[info[k]] = info[k + 1] end
    if fields['name'] == consumer then idle = fields['idle'] end
  end
  if idle == nil or idle < tonumber(idle_limit) then return 0 end
end
redis.call('XGROUP', 'DELCONSUMER', stream, group, consumer)
return 1
"#;

pub static REMOVE_CONSUMER: LazyLock<Script> = LazyLock::new(|| Script::new(REMOVE_CONSUMER_LUA));

/// Moves up to ARGV[1] items from the source list to the processing list, oldest first.
/// Atomic so that a crash never leaves an item in neither list. Flagged `allow-oom`: moving
/// an item costs no memory, and the consumer is what frees it.
const CLAIM_LIST_ITEMS_LUA: &str = r#"#!lua flags=allow-oom
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
/// KEYS: processing list, source list, heartbeat key. Returns the number of items moved,
/// or -1 when the key is not a list.
const RETURN_ORPHANED_ITEMS_LUA: &str = r#"#!lua flags=allow-oom
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
-- a stray key matching the pattern is not a processing list: leave it alone
if redis.call('TYPE', KEYS[1])['ok'] ~= 'list' then return -1 end
local moved = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') do moved = moved + 1 end
return moved
"#;

pub static RETURN_ORPHANED_ITEMS: LazyLock<Script> = LazyLock::new(|| Script::new(RETURN_ORPHANED_ITEMS_LUA));

/// Takes or renews a lease: `SET key owner NX PX ttl` if nobody holds it, `PEXPIRE` if
/// `owner` does, nothing otherwise. Atomic so that a holder never renews a lease another
/// process took in between (after ours expired).
/// KEYS: lease. ARGV: owner, ttl (ms). Returns 1 if `owner` holds the lease now, else 0.
const LEASE_LUA: &str = r#"#!lua flags=allow-oom
local holder = redis.call('GET', KEYS[1])
if holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

pub static LEASE: LazyLock<Script> = LazyLock::new(|| Script::new(LEASE_LUA));

/// Gives a lease up if `owner` holds it, so that a stopping holder hands over at once.
/// KEYS: lease. ARGV: owner. Returns 1 if it was released.
const RELEASE_LEASE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

pub static RELEASE_LEASE: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE_LEASE_LUA));
