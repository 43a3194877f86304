//! Lua scripts, each with the reason it must be atomic.

use std::sync::LazyLock;

use redis::Script;

/// Settles processed input: writes its alerts, its rule state and its dead letters and
/// acknowledges it, in one atomic step.
///
/// Why atomic: if the alerts were written and the process died before the XACK, the entry
/// would be redelivered and its alerts written twice; if the XACK came first, a crash in
/// between would lose them. Inside one script no other client runs in between. The same
/// holds for rule state: a window count is incremented in the script that acknowledges the
/// entry it counts, and only if this consumer owns the entry (the fences below), so a
/// redelivered or claimed entry is counted exactly once, whichever police settles it.
///
/// Why this order — validate, check ownership, compute, write, acknowledge last: Redis does
/// not roll a script back when a command in it fails; what ran before the failure stays
/// done. So every condition that could make a later command fail is checked before the
/// first write (key types, the dedup ttl, ACL permissions via `redis.acl_check_cmd`,
/// counters that `HINCRBY` can add to, streams with ids left, rule counters holding
/// integers), and an item is acknowledged only after all its outputs are written. The rule
/// state of the whole call is computed in Lua tables first (reads only), then written once
/// per key (one `SET … PXAT` per window counter, however many items touched it), then the
/// items' records and acknowledgements follow. Should a write still fail, the script stops
/// with its error: items settled before it are complete, the failing item and those after
/// it stay pending and are retried; none is acknowledged without its alerts.
/// Out of memory: the script is flagged `allow-oom`, because the police is what frees
/// memory (acknowledged entries get trimmed); its writes are the few alerts and the rule
/// counters of what it acknowledges. Writers (agents) are refused and hold back instead.
/// Rule state grows only below 90 % of maxmemory (docs/ALERTING.md, "Bounds").
///
/// Fences, per item with outputs (checked before anything of it is written):
/// - stream mode: the entry must be pending on *this* consumer, so when a slow consumer
///   and the one that claimed its entry both finish, only the one that holds it writes the
///   outputs and counts the matches. The caller may pass the number of entries it expects
///   to hold: the count this script returned after its last settle plus the entries read
///   with `>` since, on the same connection (so in that order). Other clients can only
///   take entries away from a consumer (claims, acknowledgements, consumer removal), never
///   add to it (no LogSentinel process claims to another's name; an `XCLAIM` by hand that
///   names a running police is not supported), so when the consumer's pending count (`XPENDING` summary, one figure per
///   consumer) equals the expected count, it still holds everything it read, every item of
///   the call included. Otherwise (or without an expected count) one `XPENDING <first>
///   <last> … consumer` over the id range of the call's items (paged by 1000) gives the
///   owned set;
/// - list mode: the item must still be in our processing list (`LPOS`).
///
/// Items without outputs or rule updates (most of them) are acknowledged last with one
/// variadic `XACK` per group of equal event counts: no fence needed, there is nothing to
/// write twice.
///
/// Folded call (stream mode, with an expected pending count): the items whose only outputs
/// are updates of windowed rules travel among the quiet items, their updates in the slots'
/// sums only — but for the slots marked itemized, whose items travel with all their
/// updates. The script applies them only where the sums give what one by one would:
/// every item held, no event of the call counted before (nor twice in the call: the dedup
/// bits are read with `BITFIELD_RO` first), one window per rule in the call, no slot whose
/// sums may cross a threshold unless it is itemized (then it is walked update by update);
/// it checks this with reads only and otherwise returns `-1` as the items settled, having
/// written nothing, followed by the numbers of the slots that may cross where they were
/// the only reason. The caller then sends the call again with those slots itemized, or
/// with every item's updates. A folded call checks the rule keys' types by reading them (every
/// read names the key on a wrong type) and the few it writes unread just before its
/// writes, and sets the dedup bits after its reads, so nothing is written before a check.
///
/// Idempotency guard: an alert with `guarded = 1`, and every record raised by rule state
/// (firing and resolved), is written only if its key `<seen-prefix><id>` does not exist,
/// and the key is set (`EX ttl`) after the record is written, so an event shipped twice
/// (an agent resending a batch whose reply was lost) still raises one alert, and a failed
/// write never leaves a key behind that would hide the alert on retry.
///
/// Rule state (keys under the rules prefix, semantics in `docs/ALERTING.md`): updates are
/// applied in item order, one after the other, exactly as the reference model applies them,
/// or where provably the same (all items with updates owned, a windowed rule with one
/// window in the call, no threshold crossed) the updates of one (rule, group key, window)
/// at once, from their sums; each key is read once per call (`GET`, `HGET`, `ZSCORE`) and written once. Records raised
/// here are built from a draft body (the alert record's JSON without `alert_id`, `status`,
/// `count`, `raised_at`, `first_event_time` and `last_event_time`, see
/// [`crate::police::settle::draft_body`]) as `{"alert_id":…,"status":…,"count":…,
/// "raised_at":…,"first_event_time":…,"last_event_time":…,<body>`, so that the scripts can
/// read and rewrite those six fields of a stored record with one anchored pattern; the
/// figure marks in the body are replaced by the figures. A batch sends one slot per (rule,
/// group key, window), with its draft and the sums of its updates; the event times of a
/// record are those of the update that fired it.
///
/// KEYS: source (stream or processing list), alerts stream, dead stream, stats hash.
/// ARGV: mode (`stream`|`list`), group, consumer, seen prefix, seen ttl (s), source label,
/// rules prefix, first and last id of the items with outputs (stream mode, else empty),
/// the pending count the caller expects (stream mode, or empty: unknown), `1` for a
/// folded call (else empty), number of stateful rules, per rule 10 fields (name, kind `any`|`frequency`|`spike`|
/// `flatline`, window ms, threshold, cooldown ms, max lateness ms, ratio, min count,
/// spike directions `u`|`d`|`b`|`-`, max groups), number of slots, per slot (group key id, group
/// values JSON, draft body, first and last event time, rule number from 1, window start ms,
/// matches, newest last event ms, last event ms of its last update, `1` if every update of
/// it is in the items' lists (always outside a folded call), else empty), number of quiet
/// groups, then per quiet group: events per item, item count, items; then the number of
/// dedup bitmaps, per bitmap its name and its operations when every item is owned
/// (`<first bit>,<width>;` each, covering the items' runs on it in item order); then per item with outputs: item, event count, alert
/// count, dead count, its updates in one argument (`<slot number>,<matches>,<first event
/// ms>,<last event ms>;` each, in the item's order), its dedup marks in one argument (runs
/// of consecutive bits of its events in the events' order, `<bitmap number>,<first
/// bit>,<length>;` each), the events among them that count in only some of its updates
/// (`<event number from 1>:<update numbers from 1, comma-separated>;` each; an event not
/// listed counts in every update of the item), alert count × (alert id, guarded `1`|`0`,
/// alert json), dead count × (reason, raw).
///
/// Exactly once per event (our agents' ids, see [`crate::police::rules::dedup`]): the
/// owned items' events set their bits before any update is applied, with one `BITFIELD`
/// per bitmap and call: consecutive bits of the items (in item order) go as one `SET u<n>`
/// of all ones over at most 48 bits (exact in Lua's numbers), whose old value is zero
/// unless some event was seen before. When every item is owned the call's operations are
/// used as sent, else they are made of the owned items' runs. An event whose bit was set already (also by an
/// earlier item or event of the same call: the operations run in order) counted once, so
/// its matches are taken off the updates it counts in, and the call applies its updates
/// one by one. The bitmaps are `rules:dedup:<run hash>:<chunk>`, type-checked with the
/// other rule keys, expiring after the longest `3 × window + lateness` or cooldown of the
/// rule table plus 5 minutes.
/// Called with no items, it only validates: the police's start-up check (then also the
/// commands of the read loop and of the clock scripts).
/// Returns: {items settled (`-1`: a folded call not folded), alerts written, duplicate alerts skipped, dead letters written,
/// late matches, matches over max_groups, matches over maxmemory, the consumer's pending
/// count after this call (stream mode, else -1)}, and after a refused folded call the
/// numbers of the slots that may cross, if they were its only reason.
const SETTLE_LUA: &str = r#"
local source, alerts, dead, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local mode, group, consumer, seen_prefix, seen_ttl, label = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local rules_prefix, first_id, last_id, expected_pending = ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local folded = ARGV[11] == '1'

-- 1. validate everything a later command could fail on
local ttl = tonumber(seen_ttl)
if not ttl or ttl < 1 or ttl > 315360000 or ttl ~= math.floor(ttl) then
  return redis.error_reply('ERR logsentinel settle: alert dedup ttl ' .. seen_ttl .. ' s is not between 1 and 315360000')
end
"#;

/// Helpers shared by SETTLE and the clock scripts: validation, the rule table, the cached
/// rule state of one call (read once, written once by `flush_state`), records and their
/// guard. Expects the locals `alerts`, `rules_prefix`, `seen_prefix` and `ttl`.
const RULE_STATE_LUA: &str = r#"
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
local function fmt(number) return string.format('%d', number) end

local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
-- RFC 3339 UTC with milliseconds, as the rules write event times and `raised_at`
local function rfc3339(ms)
  local seconds = math.floor(ms / 1000)
  local days = math.floor(seconds / 86400)
  local rest = seconds - days * 86400
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local day = doy - math.floor((153 * mp + 2) / 5) + 1
  local month = mp < 10 and mp + 3 or mp - 9
  local year = yoe + era * 400 + (month <= 2 and 1 or 0)
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%03dZ', year, month, day,
    math.floor(rest / 3600), math.floor(rest % 3600 / 60), rest % 60, ms - seconds * 1000)
end
local now_text = rfc3339(now_ms)

-- the rule table: 10 fields per rule from ARGV[at]
local function read_rules(at, count)
  local rules = {}
  for r = 1, count do
    local directions = ARGV[at + 8]
    rules[r] = {
      name = ARGV[at], kind = ARGV[at + 1], window = tonumber(ARGV[at + 2]),
      threshold = tonumber(ARGV[at + 3]), cooldown = tonumber(ARGV[at + 4]),
      lateness = tonumber(ARGV[at + 5]), ratio = tonumber(ARGV[at + 6]),
      min_count = tonumber(ARGV[at + 7]),
      up = directions == 'u' or directions == 'b', down = directions == 'd' or directions == 'b',
      max_groups = tonumber(ARGV[at + 9]),
    }
    at = at + 10
  end
  return rules, at
end
local expect_rule_permissions
-- the keys every rule shares: episodes, resolved ones and the clock's schedule
local function expect_shared_rule_keys()
  expect_type(rules_prefix .. 'active', 'hash')
  expect_type(rules_prefix .. 'resolved', 'hash')
  expect_type(rules_prefix .. 'episodes', 'hash')
  expect_type(rules_prefix .. 'resolved_at', 'zset')
  expect_type(rules_prefix .. 'resolve_at', 'zset')
end
local function expect_rule_keys(rules, used)
  expect_shared_rule_keys()
  for r, rule in ipairs(rules) do
    if used == nil or used[r] then
      expect_type(rules_prefix .. 'newest:' .. rule.name, 'string')
      expect_type(rules_prefix .. 'clock:' .. rule.name, 'string')
      expect_type(rules_prefix .. 'groups:' .. rule.name, 'zset')
      expect_type(rules_prefix .. 'groupvals:' .. rule.name, 'hash')
      expect_type(rules_prefix .. 'seen:' .. rule.name, 'zset')
    end
  end
  expect_rule_permissions()
end
expect_rule_permissions = function()
  local any_key, probe = rules_prefix .. '*', rules_prefix .. 'x'
  expect_permission(any_key, 'GET', probe)
  expect_permission(any_key, 'SET', probe, '1', 'PXAT', '1')
  expect_permission(any_key, 'HGET', probe, 'f')
  expect_permission(any_key, 'HSET', probe, 'f', 'v')
  expect_permission(any_key, 'HDEL', probe, 'f')
  expect_permission(any_key, 'HGETALL', probe)
  expect_permission(any_key, 'HMGET', probe, 'f')
  expect_permission(any_key, 'ZADD', probe, 'LT', '1', 'm')
  expect_permission(any_key, 'ZSCORE', probe, 'm')
  expect_permission(any_key, 'ZREM', probe, 'm')
  expect_permission(any_key, 'ZRANGEBYSCORE', probe, '-inf', '+inf')
  expect_permission(any_key, 'ZCARD', probe)
  expect_permission(any_key, 'ZCOUNT', probe, '-inf', '+inf')
  expect_permission(any_key, 'DEL', probe)
  expect_permission(alerts, 'XADD', alerts, '*', 'id', 'x')
  expect_permission(seen_prefix .. '*', 'SET', seen_prefix .. 'x', '1', 'EX', '1')
  expect_permission(seen_prefix .. '*', 'EXISTS', seen_prefix .. 'x')
end

-- a counter of the rule state must hold an integer: it is added to
local function read_integer(key)
  local value = redis.pcall('GET', key)
  if type(value) == 'table' then
    error({err = 'WRONGTYPE logsentinel settle: key ' .. key .. ' holds a ' .. redis.call('TYPE', key)['ok'] .. ', expected a string'})
  end
  if value == false then return nil end
  local number = tonumber(value)
  if not number or number ~= math.floor(number) or math.abs(number) > 4503599627370496 then
    error({err = 'ERR logsentinel settle: key ' .. key .. ' holds ' .. value .. ', not an integer it can count on'})
  end
  return number
end

-- records: {"alert_id":…,"status":…,"count":…,"raised_at":…,"first_event_time":…,
-- "last_event_time":…,<body>; the times are RFC 3339 (no quotes to escape)
local function record_json(record)
  return '{"alert_id":"' .. record.id .. '","status":"' .. record.status .. '","count":' .. fmt(record.count)
    .. ',"raised_at":"' .. record.raised .. '","first_event_time":"' .. record.first
    .. '","last_event_time":"' .. record.last .. '",' .. record.body
end
local function parse_record(json)
  local id, status, count, raised, first, last, body = string.match(json,
    '^{"alert_id":"([^"]*)","status":"(%a+)","count":(%d+),"raised_at":"([^"]*)","first_event_time":"([^"]*)","last_event_time":"([^"]*)",(.*)$')
  if not id then return nil end
  return {id = id, status = status, count = tonumber(count), raised = raised, first = first, last = last, body = body}
end
-- clock-raised and resolved records carry no event; `event` is the body's last field
local function without_event(body)
  local at = string.find(body, ',"event":{', 1, true)
  if at then return string.sub(body, 1, at - 1) .. '}' end
  return body
end

-- a read of the rule state that fails on a key of another type names the key: a folded
-- call (SETTLE) checks types by its reads
local function read_state(command, wanted, key, ...)
  local reply = redis.pcall(command, key, ...)
  if type(reply) == 'table' and reply.err then
    error({err = 'WRONGTYPE logsentinel settle: key ' .. key .. ' holds a ' .. redis.call('TYPE', key)['ok'] .. ', expected a ' .. wanted})
  end
  return reply
end

-- rule state of this call, read once and written once by flush_state
local counts, episodes, resolved_now = {}, {}, {}
local fired, rule_duplicates = {}, 0
local function count_entry(rule, gk, window_start)
  local key = rules_prefix .. 'count:' .. rule.name .. ':' .. gk .. ':' .. fmt(window_start)
  local entry = counts[key]
  if entry == nil then
    local stored = read_integer(key)
    entry = {value = stored or 0, stored = stored ~= nil, window = window_start, rule = rule, dirty = false}
    counts[key] = entry
  end
  return entry
end
local function episode(rule, gk)
  local rk = rule.name .. '/' .. gk
  local ep = episodes[rk]
  if ep == nil then
    ep = {rk = rk, rule = rule, gk = gk}
    episodes[rk] = ep
  end
  return ep
end
local function active_of(ep)
  if ep.active == nil then
    local json = read_state('HGET', 'hash', rules_prefix .. 'active', ep.rk)
    ep.active = json and (parse_record(json) or {raw = json}) or false
  end
  return ep.active
end
local function cooldown_of(ep)
  if ep.cooldown == nil then
    ep.cooldown = read_integer(rules_prefix .. 'cooldown:' .. ep.rule.name .. ':' .. ep.gk) or false
  end
  return ep.cooldown
end
local function mark_of(ep)
  if ep.mark == nil then
    ep.mark = tonumber(read_state('HGET', 'hash', rules_prefix .. 'episodes', ep.rk)) or false
  end
  return ep.mark
end
local function first_seen_of(ep)
  if ep.first == nil then
    ep.first = tonumber(read_state('ZSCORE', 'zset', rules_prefix .. 'groups:' .. ep.rule.name, ep.gk)) or false
  end
  return ep.first
end
local function set_mark(ep, value)
  ep.mark, ep.mark_dirty = value, true
end

-- bounds of the rule state (docs/ALERTING.md, "Bounds"): `seen:<rule>` tracks each group
-- (gk -> wall ms of its last match), at most max_groups of them; `resolve_at` holds each
-- episode the clock resolves by its due time, so the clock reads only what is due
local over_limit, over_maxmemory = 0, 0
-- new groups and window counters are created only below this share of maxmemory: the rest
-- stays free for ingestion and the alerts, so state cannot stall the agents. Dedup bitmaps
-- (at most 8 KiB each, short-lived) go up to maxmemory itself: below it, the matches of
-- tracked groups keep counting while a backlog fills the stream
-- = broker::STATE_MEMORY_SHARE (a test checks it)
local state_memory_share = 0.9
local memory_used = nil
-- whether Redis is past `share` of maxmemory; read once per call, and only by a call
-- that would create state (INFO costs as much as a few dozen commands)
local function memory_past(share)
  if memory_used == nil then
    local info = redis.call('INFO', 'memory')
    local limit = tonumber(string.match(info, 'maxmemory:(%d+)')) or 0
    local used = tonumber(string.match(info, 'used_memory:(%d+)')) or 0
    local uncounted = tonumber(string.match(info, 'mem_not_counted_for_evict:(%d+)')) or 0
    memory_used = limit > 0 and (used - uncounted) / limit or 0
  end
  return memory_used >= share
end
local function state_memory_full() return memory_past(state_memory_share) end
local function tracked(ep)
  if ep.tracked == nil then
    local last_match = read_state('ZSCORE', 'zset', rules_prefix .. 'seen:' .. ep.rule.name, ep.gk)
    ep.tracked, ep.seen_ms = last_match ~= false, tonumber(last_match)
  end
  return ep.tracked
end
-- whether an update of ep (window counter `entry`, nil for `any`) may be applied: over
-- maxmemory only if it creates no group and no counter; never for a group beyond the limit
local function admitted(ep, entry, matches)
  if (not tracked(ep) or (entry and not entry.stored)) and state_memory_full() then
    over_maxmemory = over_maxmemory + matches
    return false
  end
  if not tracked(ep) then
    local rule = ep.rule
    rule.groups = rule.groups or read_state('ZCARD', 'zset', rules_prefix .. 'seen:' .. rule.name)
    if rule.groups >= rule.max_groups then
      over_limit = over_limit + matches
      return false
    end
    rule.groups, ep.tracked = rule.groups + 1, true
  end
  ep.seen_dirty = true
  return true
end
-- = clock::ANY_QUIET (a test checks it)
local any_quiet_ms = 300000
local function resolve_due(rule, mark)
  if rule.kind == 'any' then return mark + any_quiet_ms end
  if rule.kind == 'frequency' or rule.kind == 'spike' then return mark + 2 * rule.window + rule.lateness end
  return nil
end
local function with_reason(body, reason)
  local at = string.find(body, '"annotations":{', 1, true)
  if not at then return body end
  local rest = string.sub(body, at + 15)
  local separator = string.sub(rest, 1, 1) == '}' and '' or ','
  return string.sub(body, 1, at + 14) .. '"resolve_reason":' .. cjson.encode(reason) .. separator .. rest
end
-- writes of the bounds for ep, from flush_state
local function flush_bounds(rk, ep)
  local rule = ep.rule
  if ep.forget then
    redis.call('ZREM', rules_prefix .. 'seen:' .. rule.name, ep.gk)
    redis.call('ZREM', rules_prefix .. 'groups:' .. rule.name, ep.gk)
    redis.call('HDEL', rules_prefix .. 'groupvals:' .. rule.name, ep.gk)
    redis.call('DEL', rules_prefix .. 'cooldown:' .. rule.name .. ':' .. ep.gk)
  elseif ep.seen_dirty and not (ep.seen_ms and now_ms - ep.seen_ms < 1000) then
    -- to within a second: enough for forget_after (1 h at least), and most calls skip it
    redis.call('ZADD', rules_prefix .. 'seen:' .. rule.name, fmt(now_ms), ep.gk)
  end
  if ep.mark_dirty then
    local due = ep.mark and resolve_due(rule, ep.mark)
    if due then
      redis.call('ZADD', rules_prefix .. 'resolve_at', fmt(due), rk)
    else
      redis.call('ZREM', rules_prefix .. 'resolve_at', rk)
    end
  end
end

-- raises a record of ep's rule and group (behind the guard) and makes it the episode,
-- fired by window (or event time) `fired_at`
local function fire(ep, id, fired_at, count, previous, body, first, last, out)
  if fired[id] or redis.call('EXISTS', seen_prefix .. id) == 1 then
    rule_duplicates = rule_duplicates + 1
    return false
  end
  fired[id] = true
  body = string.gsub(body, '\\u0001count\\u0001', fmt(count))
  body = string.gsub(body, '\\u0001previous_count\\u0001', fmt(previous))
  local record = {id = id, status = 'firing', count = count, raised = now_text, first = first, last = last, body = body}
  out[#out + 1] = {id, record_json(record)}
  ep.active, ep.active_dirty = record, true
  set_mark(ep, fired_at)
  return true
end
-- frequency, spike: a later match in the window that fired its episode sets the episode's
-- count to the window's count
local function follow(ep, window_start, count, last_ms)
  local record = active_of(ep)
  if not record or not record.id or mark_of(ep) ~= window_start then return end
  record.count, record.last = count, rfc3339(last_ms)
  ep.active_dirty = true
end
-- a window meeting a frequency or spike condition fires unless in cooldown
local function crossing(ep, window_start, count, previous, body, first, last, out)
  local rule = ep.rule
  local until_ms = cooldown_of(ep)
  if until_ms and window_start < until_ms then return end
  if fire(ep, rule.name .. '/' .. ep.gk .. '/' .. fmt(window_start), window_start, count, previous, body, first, last, out) then
    ep.cooldown, ep.cooldown_dirty = window_start + rule.cooldown, true
  end
end
-- ends ep's firing episode with a resolved record (guard `<id>#resolved`)
-- `reason` (optional) becomes the annotation `resolve_reason`
local function resolve(ep, out, reason)
  local record = active_of(ep)
  if not record then return false end
  if record.id then
    local resolved_id = record.id .. '#resolved'
    local body = without_event(record.body)
    if reason then body = with_reason(body, reason) end
    local resolved = record_json({id = record.id, status = 'resolved', count = record.count, raised = now_text,
      first = record.first, last = record.last, body = body})
    if fired[resolved_id] or redis.call('EXISTS', seen_prefix .. resolved_id) == 1 then
      rule_duplicates = rule_duplicates + 1
    else
      fired[resolved_id] = true
      out[#out + 1] = {resolved_id, resolved}
    end
    resolved_now[ep.rk] = resolved
  end
  ep.active, ep.active_dirty = false, true
  set_mark(ep, false)
  return true
end
-- how much longer the counts of windows the clock closes live: a close postponed (held
-- input) reads them within this, or passes the group over
local function close_hold(rule)
  if rule.kind == 'flatline' or (rule.kind == 'spike' and rule.down) then return 600000 end
  return 0
end
local function flush_state()
  for key, entry in pairs(counts) do
    if entry.dirty then
      local rule = entry.rule
      -- alive until the window's end + 2 windows + lateness, on event time or, if events
      -- lag the wall clock, on wall time: an expiry in the past would delete the count;
      -- windows the clock closes keep theirs CLOSE_HOLD longer, for a close that waits
      local base = math.max(entry.window, math.floor(now_ms / rule.window) * rule.window)
      redis.call('SET', key, fmt(entry.value), 'PXAT', fmt(base + 3 * rule.window + rule.lateness + close_hold(rule)))
    end
  end
  for rk, ep in pairs(episodes) do
    local rule = ep.rule
    if ep.active_dirty then
      if ep.active then
        redis.call('HSET', rules_prefix .. 'active', rk, record_json(ep.active))
      else
        redis.call('HDEL', rules_prefix .. 'active', rk)
      end
    end
    if ep.cooldown_dirty then
      redis.call('SET', rules_prefix .. 'cooldown:' .. rule.name .. ':' .. ep.gk, fmt(ep.cooldown),
        'PXAT', fmt(math.max(ep.cooldown, now_ms) + 86400000))
    end
    if ep.mark_dirty then
      if ep.mark then
        redis.call('HSET', rules_prefix .. 'episodes', rk, fmt(ep.mark))
      else
        redis.call('HDEL', rules_prefix .. 'episodes', rk)
      end
    end
    if ep.first_dirty and not ep.forget then
      redis.call('ZADD', rules_prefix .. 'groups:' .. rule.name, 'LT', fmt(ep.first), ep.gk)
      if ep.values then redis.call('HSET', rules_prefix .. 'groupvals:' .. rule.name, ep.gk, ep.values) end
    end
    flush_bounds(rk, ep)
  end
  for rk, resolved in pairs(resolved_now) do
    redis.call('HSET', rules_prefix .. 'resolved', rk, resolved)
    redis.call('ZADD', rules_prefix .. 'resolved_at', fmt(now_ms), rk)
  end
end
local function write_records(out)
  for _, record in ipairs(out) do
    redis.call('XADD', alerts, '*', 'id', record[1], 'alert', record[2])
    redis.call('SET', seen_prefix .. record[1], '1', 'EX', ttl)
  end
  return #out
end
"#;

/// The shared rule-state Lua, for tests that check its constants.
pub const RULE_STATE_SOURCE: &str = RULE_STATE_LUA;

/// The rest of SETTLE, after [`RULE_STATE_LUA`].
const SETTLE_BODY_LUA: &str = r#"
-- counters are incremented last: they must be integers HINCRBY can add to
local function expect_counters(key)
  local fields = {'events', 'alerts', 'dead', 'duplicate_alerts', 'late', 'over_limit', 'over_maxmemory'}
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

local rules, i = read_rules(13, tonumber(ARGV[12]))
-- the slots: one per (rule, group key, window) of the call, with its draft and the sums
-- of its updates
local slots = {}
local slot_count = tonumber(ARGV[i])
i = i + 1
for d = 1, slot_count do
  local rule_number = tonumber(ARGV[i + 5])
  slots[d] = {gk = ARGV[i], values = ARGV[i + 1], body = ARGV[i + 2], rule_number = rule_number, rule = rules[rule_number],
    window_start = tonumber(ARGV[i + 6]), total = tonumber(ARGV[i + 7]), newest_ms = tonumber(ARGV[i + 8]),
    last_ms = tonumber(ARGV[i + 9]), itemized = ARGV[i + 10] == '1'}
  i = i + 11
end
local quiet_count = tonumber(ARGV[i])
i = i + 1
-- 2. skip the quiet groups, acknowledged at the end
local quiet = {}
for _ = 1, quiet_count do
  local events_per_item, item_count = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  quiet[#quiet + 1] = {events_per_item, i + 2, i + 1 + item_count}
  i = i + 2 + item_count
end
-- the dedup bitmaps of the call's marks, by number
local bitmap_names, bitmap_operations = {}, {}
for b = 1, tonumber(ARGV[i]) do
  bitmap_names[b], bitmap_operations[b] = ARGV[i + 2 * b - 1], ARGV[i + 2 * b]
end
i = i + 1 + 2 * #bitmap_names
local first_noisy = i

if quiet_count == 0 and first_noisy > #ARGV then
  -- called with no items: the start-up check also covers the commands of the read loop
  -- and of the rule state, SETTLE's and the clock's
  if mode == 'stream' then
    expect_permission(source, 'XREADGROUP', 'GROUP', group, consumer, 'STREAMS', source, '>')
    expect_permission(source, 'XAUTOCLAIM', source, group, consumer, '1', '0-0')
    expect_permission(source, 'XINFO', 'CONSUMERS', source, group)
    expect_permission(source, 'XINFO', 'GROUPS', source)
    expect_permission(source, 'XTRIM', source, 'MINID', '0-1')
    expect_permission(source, 'XGROUP', 'DELCONSUMER', source, group, consumer)
    expect_permission(source, 'XRANGE', source, '-', '+', 'COUNT', '1')
  else
    expect_permission(label, 'LLEN', label)
    expect_permission(label, 'LMOVE', label, source, 'RIGHT', 'LEFT')
    expect_permission(label, 'BLMOVE', label, source, 'RIGHT', 'LEFT', '1')
    expect_permission(source, 'LRANGE', source, '0', '-1')
  end
  if #rules > 0 then expect_rule_keys(rules) end
  return {0, 0, 0, 0, 0, 0, 0, -1}
end

-- the streams written to must have ids left; the rule keys must have their types
local alerts_total, dead_total = 0, 0
local used_rules = {}
local noisy = {}
while i <= #ARGV do
  local alert_count, dead_count, updates = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]), ARGV[i + 4]
  alerts_total, dead_total = alerts_total + alert_count, dead_total + dead_count
  noisy[#noisy + 1] = {at = i, alert_count = alert_count, dead_count = dead_count, updates = updates,
    marks = ARGV[i + 5], partial = ARGV[i + 6], raised = {}}
  i = i + 7 + 3 * alert_count + 2 * dead_count
end
for _, slot in ipairs(slots) do used_rules[slot.rule_number] = true end
if alerts_total > 0 or #slots > 0 then expect_room(alerts) end
if dead_total > 0 then expect_room(dead) end
-- only the keys of the rules this call updates: checking all of them costs every call
-- (a folded call checks the types of the rule keys by reading them, before any write)
if #slots > 0 then
  if folded then expect_rule_permissions() else expect_rule_keys(rules, used_rules) end
end
if #bitmap_names > 0 then
  for _, name in ipairs(bitmap_names) do expect_type(rules_prefix .. 'dedup:' .. name, 'string') end
  expect_permission(rules_prefix .. '*', 'BITFIELD', rules_prefix .. 'x', 'SET', 'u1', '0', '1')
  expect_permission(rules_prefix .. '*', 'BITFIELD_RO', rules_prefix .. 'x', 'GET', 'u1', '0')
  expect_permission(rules_prefix .. '*', 'PEXPIRE', rules_prefix .. 'x', '1')
end

-- 3. the fence: which items with outputs this consumer holds. Its pending count equal to
-- the count the caller expects proves it holds every item (nothing can add to it, see
-- above); else one XPENDING over the items' range gives the owned set
local function pending_here()
  local consumers = redis.call('XPENDING', source, group)[4]
  if type(consumers) == 'table' then
    for _, pending in ipairs(consumers) do
      if pending[1] == consumer then return tonumber(pending[2]) end
    end
  end
  return 0
end
local holds_all = mode == 'stream' and (folded or first_noisy <= #ARGV) and expected_pending ~= ''
  and pending_here() == tonumber(expected_pending)
local owned_entries = {}
if mode == 'stream' and first_noisy <= #ARGV and not holds_all then
  local start = first_id
  while true do
    local page = redis.call('XPENDING', source, group, start, last_id, 1000, consumer)
    for _, pending in ipairs(page) do owned_entries[pending[1]] = true end
    if #page < 1000 then break end
    start = '(' .. page[#page][1]
  end
end
local function owns(item)
  if holds_all then return true end
  if mode == 'stream' then return owned_entries[item] == true end
  return redis.call('LPOS', source, item) ~= false
end

-- 4. rule updates of owned items, computed on the cached state. Applied one after the
-- other in item order, as the reference model does; or, where that gives the same result,
-- a slot's updates at once (its sums): when every item with updates is owned, for a
-- windowed rule whose slots of the call all share one window. Then its slots differ in
-- group key only: they share nothing but the rule's newest event time, which none of
-- them can make late (their events lie inside the window). A slot whose sums cross a
-- threshold (or a spike condition) is walked update by update instead, so the crossing
-- happens at the same update, with the same figures and in the same item, as one by one.
local late = 0
local newest = {}
local function newest_of(rule)
  if newest[rule] == nil then
    newest[rule] = {value = read_integer(rules_prefix .. 'newest:' .. rule.name) or -math.huge, dirty = false}
    -- a window the clock has closed (flatline, spike down) is decided: later matches are late
    if rule.kind == 'flatline' or (rule.kind == 'spike' and rule.down) then
      newest[rule].closed = read_integer(rules_prefix .. 'clock:' .. rule.name)
    end
  end
  return newest[rule]
end
local function is_late(rule, window_start)
  local seen_newest = newest_of(rule)
  return window_start + rule.window <= seen_newest.value - rule.lateness
    or (seen_newest.closed ~= nil and window_start <= seen_newest.closed)
end
local function slot_state(slot)
  if slot.ep == nil then slot.ep = episode(slot.rule, slot.gk) end
  if slot.entry == nil and slot.rule.kind ~= 'any' then
    slot.entry = count_entry(slot.rule, slot.gk, slot.window_start)
  end
  return slot.ep, slot.entry
end
-- `matches` updates of `slot` with the first event time `first_ms` (needed only to fire),
-- the newest `newest_ms` and the last in item order `last_ms`
local function apply(slot, matches, first_ms, newest_ms, last_ms, out)
  local rule, gk, body, window_start = slot.rule, slot.gk, slot.body, slot.window_start
  local ep, entry = slot_state(slot)
  local function first_text() return rfc3339(first_ms) end
  if rule.kind == 'any' then
    -- window_start is the event time; no windows, no lateness; the mark is the wall
    -- clock of the last match
    if not admitted(ep, nil, matches) then return end
    local until_ms = cooldown_of(ep)
    if until_ms and window_start < until_ms then
      local record = active_of(ep)
      if record and record.id then
        record.count, record.last = record.count + matches, rfc3339(last_ms)
        ep.active_dirty = true
        set_mark(ep, now_ms)
      end
    elseif fire(ep, rule.name .. '/' .. gk .. '/' .. fmt(window_start), now_ms, matches, 0, body,
        first_text(), rfc3339(last_ms), out) then
      ep.cooldown, ep.cooldown_dirty = window_start + rule.cooldown, true
    end
    return
  end
  local seen_newest = newest_of(rule)
  if is_late(rule, window_start) then
    late = late + matches
    return
  end
  if not admitted(ep, entry, matches) then return end
  if newest_ms > seen_newest.value then seen_newest.value, seen_newest.dirty = newest_ms, true end
  local before = entry.value
  local after = before + matches
  entry.value, entry.dirty = after, true
  local seen_before = false
  if rule.kind == 'spike' or rule.kind == 'flatline' then
    local first = first_seen_of(ep)
    seen_before = first and first < window_start
    if not first or window_start < first then
      if not first then ep.values = slot.values end
      ep.first, ep.first_dirty = window_start, true
    end
  end
  if rule.kind == 'frequency' then
    if before < rule.threshold and after >= rule.threshold then
      crossing(ep, window_start, after, 0, body, first_text(), rfc3339(last_ms), out)
    else
      follow(ep, window_start, after, last_ms)
    end
  elseif rule.kind == 'spike' then
    if slot.previous == nil then slot.previous = count_entry(rule, gk, window_start - rule.window) end
    local previous = slot.previous.value
    local function holds(count) return count >= rule.min_count and count >= rule.ratio * previous end
    if rule.up and seen_before and not holds(before) and holds(after) then
      crossing(ep, window_start, after, previous, body, first_text(), rfc3339(last_ms), out)
    else
      follow(ep, window_start, after, last_ms)
    end
  elseif rule.kind == 'flatline' then
    if before < rule.threshold and after >= rule.threshold then resolve(ep, out) end
  end
end
-- whether the sums of a foldable slot may cross (true where unsure: walking is exact).
-- Reads only, before any update of the call is applied
local function may_cross(slot)
  local rule = slot.rule
  if is_late(rule, slot.window_start) then return false end
  local ep, entry = slot_state(slot)
  local before, after = entry.value, entry.value + slot.total
  if rule.kind == 'spike' then
    if not rule.up then return false end
    -- as apply: only a group seen in an earlier window can spike
    local first = first_seen_of(ep)
    if not (first and first < slot.window_start) then return false end
    if slot.previous == nil then slot.previous = count_entry(rule, slot.gk, slot.window_start - rule.window) end
    local previous = slot.previous.value
    local function holds(count) return count >= rule.min_count and count >= rule.ratio * previous end
    return not holds(before) and holds(after)
  end
  local reaches = before < rule.threshold and after >= rule.threshold
  -- flatline: reaching the threshold resolves the firing episode; without one it does
  -- nothing, so every window of every group that comes back folds
  if rule.kind == 'flatline' then return reaches and active_of(ep) ~= false end
  return reaches
end
-- the records an update raises go to its item, ordered by the update's position there
local function applied(item, position, out)
  if #out > 0 then item.raised[#item.raised + 1] = {position, out} end
end
-- an item's updates: {slot number, matches, first ms, last ms} in the item's order
local function updates_of(item)
  local list = {}
  for d, m, f, l in string.gmatch(item.updates, '(%d+),(%d+),(-?%d+),(-?%d+);') do
    list[#list + 1] = {tonumber(d), tonumber(m), tonumber(f), tonumber(l)}
  end
  return list
end

local all_owned = true
for _, item in ipairs(noisy) do
  item.owned = owns(ARGV[item.at])
  if not item.owned and item.updates ~= '' then all_owned = false end
end
local rule_window = {}
for _, slot in ipairs(slots) do
  local seen = rule_window[slot.rule]
  if seen == nil then
    rule_window[slot.rule] = slot.window_start
  elseif seen ~= slot.window_start then
    rule_window[slot.rule] = false
  end
end
-- all ones in `width` bits, as an exact decimal (formatted where first used)
local ones = setmetatable({}, {__index = function(made, width)
  made[width] = string.format('%.0f', 2 ^ width - 1)
  return made[width]
end})
-- folded call: the quiet items' updates are in the slots' sums only, so every windowed
-- slot must fold (see 4.), with every item held and no event seen before, and a slot whose
-- sums may cross must have its updates itemized (it is walked): checked with reads only;
-- else nothing is written and the caller sends the call again, with the crossing slots
-- itemized (their numbers are returned, where that is the only reason) or with every
-- item's updates
if folded then
  local folds_all = holds_all
  local crossing = {}
  for d, slot in ipairs(slots) do
    if folds_all and slot.rule.kind ~= 'any' then
      if rule_window[slot.rule] == false then
        folds_all = false
      elseif not slot.itemized and may_cross(slot) then
        crossing[#crossing + 1] = d
      end
    end
  end
  for b = 1, #bitmap_names do
    if not folds_all then break end
    -- an event twice in the call: its second bit is found set only while setting
    local ranges = {}
    for first, width in string.gmatch(bitmap_operations[b], '(%d+),(%d+);') do
      ranges[#ranges + 1] = {tonumber(first), tonumber(width)}
    end
    table.sort(ranges, function(x, y) return x[1] < y[1] end)
    for k = 2, #ranges do
      if ranges[k - 1][1] + ranges[k - 1][2] > ranges[k][1] then folds_all = false end
    end
    local key = rules_prefix .. 'dedup:' .. bitmap_names[b]
    if not folds_all then
      break
    elseif redis.call('EXISTS', key) == 0 then
      if memory_past(1) then folds_all = false end
    else
      for from = 1, #ranges, 500 do
        local arguments = {}
        for k = from, math.min(from + 499, #ranges) do
          local n = 3 * (k - from)
          arguments[n + 1], arguments[n + 2], arguments[n + 3] = 'GET', 'u' .. ranges[k][2], ranges[k][1]
        end
        for _, old in ipairs(redis.call('BITFIELD_RO', key, unpack(arguments))) do
          if old ~= 0 then folds_all = false end
        end
      end
    end
  end
  if not folds_all then return {-1, 0, 0, 0, 0, 0, 0, -1} end
  if #crossing > 0 then
    local refused = {-1, 0, 0, 0, 0, 0, 0, -1}
    for _, d in ipairs(crossing) do refused[#refused + 1] = d end
    return refused
  end
end
-- exactly once per event: sets the bits of the owned items' events, one BITFIELD per
-- bitmap; per item and update position, the matches of events whose bit was set already
local dedup_ttl = 300000
for _, rule in ipairs(rules) do
  dedup_ttl = math.max(dedup_ttl, 3 * rule.window + rule.lateness + 300000, rule.cooldown + 300000)
end
-- an event of `item` (number from 1 among its marks) counted before
local function duplicate(item, event)
  if item.duplicates == nil then
    item.duplicates, item.counted_in, item.update_count = {}, {}, 0
    for _ in string.gmatch(item.updates, ';') do item.update_count = item.update_count + 1 end
    for e, list in string.gmatch(item.partial, '(%d+):([%d,]+);') do item.counted_in[tonumber(e)] = list end
  end
  local list, duplicates = item.counted_in[event], item.duplicates
  if list == nil then
    for u = 1, item.update_count do duplicates[u] = (duplicates[u] or 0) + 1 end
    return item.update_count
  end
  local taken = 0
  for u in string.gmatch(list, '%d+') do
    u = tonumber(u)
    duplicates[u], taken = (duplicates[u] or 0) + 1, taken + 1
  end
  return taken
end
local duplicates_found = false
-- per bitmap number, the owned items' runs in item order, {item, first event number,
-- length, flattened start}: where a bit of an operation belongs (built where needed)
local flattened = nil
local function flatten()
  flattened = {}
  for b = 1, #bitmap_names do flattened[b] = {} end
  for _, item in ipairs(noisy) do
    if item.owned and item.marks ~= '' then
      local event = 1
      for b, first, length in string.gmatch(item.marks, '(%d+),(%d+),(%d+);') do
        local runs = flattened[tonumber(b)]
        local last = runs[#runs]
        length = tonumber(length)
        runs[#runs + 1] = {item, event, length, last and last[4] + last[3] or 0, tonumber(first)}
        event = event + length
      end
    end
  end
end
-- the event at flattened position `at` of bitmap `b` was counted before
local function duplicate_at(b, at)
  local runs = flattened[b]
  local low, high = 1, #runs
  while low < high do
    local middle = math.floor((low + high + 1) / 2)
    if runs[middle][4] <= at then low = middle else high = middle - 1 end
  end
  local run = runs[low]
  duplicate(run[1], run[2] + at - run[4])
end
-- per bitmap number, its operations {first bit, width}: the call's when every item is
-- owned (the common case: nothing to parse per item), else made of the owned items' runs
local operations_of = {}
if all_owned then
  for b = 1, #bitmap_names do
    local ops = {}
    for first, width in string.gmatch(bitmap_operations[b], '(%d+),(%d+);') do ops[#ops + 1] = {tonumber(first), tonumber(width)} end
    operations_of[b] = ops
  end
else
  flatten()
  for b = 1, #bitmap_names do
    local ops = {}
    for _, run in ipairs(flattened[b]) do
      local first, length = run[5], run[3]
      while length > 0 do
        local op, take = ops[#ops], nil
        if op and op[1] + op[2] == first and op[2] < 48 then
          take = math.min(length, 48 - op[2])
          op[2] = op[2] + take
        else
          take = math.min(length, 48)
          ops[#ops + 1] = {first, take}
        end
        first, length = first + take, length - take
      end
    end
    operations_of[b] = ops
  end
end
-- a bitmap not there yet is new rule state: over maxmemory it is not created, and the
-- matches of its events are not counted (over_maxmemory), as for a new counter; counting
-- them unmarked could count a re-sent event twice
local function hold_out(b)
  if flattened == nil then flatten() end
  duplicates_found = true
  for _, run in ipairs(flattened[b]) do
    for event = run[2], run[2] + run[3] - 1 do over_maxmemory = over_maxmemory + duplicate(run[1], event) end
  end
end
local function set_dedup_bits()
for b, ops in ipairs(operations_of) do
  local key = rules_prefix .. 'dedup:' .. bitmap_names[b]
  if #ops > 0 and redis.call('EXISTS', key) == 0 and memory_past(1) then
    hold_out(b)
    ops = {}
  end
  -- the operations cover the bitmap's runs in order: `at` is the flattened position
  local at = 0
  -- unpack() is limited by the Lua stack: 500 operations (2000 arguments) per command
  for from = 1, #ops, 500 do
    local to = math.min(from + 499, #ops)
    local arguments = {}
    for o = from, to do
      local n, op = 4 * (o - from), ops[o]
      arguments[n + 1], arguments[n + 2], arguments[n + 3], arguments[n + 4] = 'SET', 'u' .. op[2], op[1], ones[op[2]]
    end
    local old = redis.call('BITFIELD', key, unpack(arguments))
    for o = from, to do
      local value, width = old[o - from + 1], ops[o][2]
      if value ~= 0 then
        if folded then error({err = 'ERR logsentinel settle: a folded call found an event counted before'}) end
        duplicates_found = true
        if flattened == nil then flatten() end
        -- the least significant bit is the operation's last
        for offset = width - 1, 0, -1 do
          local set = value % 2
          value = (value - set) / 2
          if set == 1 then duplicate_at(b, at + offset) end
        end
      end
      at = at + width
    end
  end
  if #ops > 0 then redis.call('PEXPIRE', key, dedup_ttl) end
end
end
-- a folded call found no event counted before (checked above): it sets the bits after
-- its reads, with the other writes
if not folded then set_dedup_bits() end

local function folds(slot)
  return all_owned and not duplicates_found and slot.rule.kind ~= 'any' and rule_window[slot.rule] ~= false
end
local one_by_one = false
for _, slot in ipairs(slots) do
  if not folds(slot) then one_by_one = true end
end
-- per slot, its updates in item order: {item, position, matches, first ms, last ms}
local walks = nil
for _, slot in ipairs(slots) do
  if folds(slot) and may_cross(slot) then
    if walks == nil then
      walks = {}
      for _, item in ipairs(noisy) do
        if item.owned and item.updates ~= '' then
          for position, u in ipairs(updates_of(item)) do
            local walk = walks[u[1]]
            if walk == nil then walk = {}; walks[u[1]] = walk end
            walk[#walk + 1] = {item, position, u[2], u[3], u[4]}
          end
        end
      end
    end
    slot.walk = walks
  end
end
for d, slot in ipairs(slots) do
  if folds(slot) then
    if slot.walk then
      for _, step in ipairs(walks[d] or {}) do
        local out = {}
        apply(slot, step[3], step[4], step[5], step[5], out)
        applied(step[1], step[2], out)
      end
    else
      local out = {}
      apply(slot, slot.total, nil, slot.newest_ms, slot.last_ms, out)
      if #out > 0 then error({err = 'ERR logsentinel settle: folded updates raised a record'}) end
    end
  end
end
if one_by_one then
  for _, item in ipairs(noisy) do
    if item.owned and item.updates ~= '' then
      for position, u in ipairs(updates_of(item)) do
        local slot = slots[u[1]]
        local matches = u[2] - (item.duplicates and item.duplicates[position] or 0)
        if matches > 0 and not folds(slot) then
          local out = {}
          apply(slot, matches, u[3], u[4], u[4], out)
          applied(item, position, out)
        end
      end
    end
  end
end
if folded then
  -- the rule keys written next that no read of this call has checked
  expect_shared_rule_keys()
  for _, ep in pairs(episodes) do
    if ep.first_dirty and ep.values then expect_type(rules_prefix .. 'groupvals:' .. ep.rule.name, 'hash') end
  end
  set_dedup_bits()
end
for rule, seen_newest in pairs(newest) do
  if seen_newest.dirty then redis.call('SET', rules_prefix .. 'newest:' .. rule.name, fmt(seen_newest.value)) end
end
flush_state()

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

-- 5. items with outputs: write, then acknowledge (stream mode: all of them at the end,
-- with one variadic XACK per 1000, after every output is written)
local settled, events, written, duplicates, dead_written = 0, 0, 0, rule_duplicates, 0
local owned_ids, owned_events = {}, 0
for _, noisy_item in ipairs(noisy) do
  local at = noisy_item.at
  local item, alert_count, dead_count = ARGV[at], noisy_item.alert_count, noisy_item.dead_count
  if noisy_item.owned then
    local event_count = tonumber(ARGV[at + 1])
    local k = at + 7
    for _ = 1, alert_count do
      local alert_id, guarded, alert = ARGV[k], ARGV[k + 1], ARGV[k + 2]
      local seen_key = seen_prefix .. alert_id
      if guarded == '1' and redis.call('EXISTS', seen_key) == 1 then
        duplicates = duplicates + 1
      else
        redis.call('XADD', alerts, '*', 'id', alert_id, 'alert', alert)
        if guarded == '1' then redis.call('SET', seen_key, '1', 'EX', ttl) end
        written = written + 1
      end
      k = k + 3
    end
    if #noisy_item.raised > 0 then
      table.sort(noisy_item.raised, function(a, b) return a[1] < b[1] end)
      for _, piece in ipairs(noisy_item.raised) do written = written + write_records(piece[2]) end
    end
    for _ = 1, dead_count do
      if mode == 'stream' then
        redis.call('XADD', dead, '*', 'reason', ARGV[k], 'source', label, 'entry', item, 'raw', ARGV[k + 1])
      else
        redis.call('XADD', dead, '*', 'reason', ARGV[k], 'source', label, 'raw', ARGV[k + 1])
      end
      dead_written = dead_written + 1
      k = k + 2
    end
    if mode == 'stream' then
      owned_ids[#owned_ids + 1] = item
      owned_events = owned_events + event_count
    elseif acknowledge_one(item) == 1 then
      settled = settled + 1
      events = events + event_count
    end
  end
end
if #owned_ids > 0 then
  local acked = 0
  for first = 1, #owned_ids, 1000 do
    acked = acked + redis.call('XACK', source, group, unpack(owned_ids, first, math.min(first + 999, #owned_ids)))
  end
  -- every owned entry is pending on us in this very script: each XACK counts
  settled = settled + acked
  events = events + owned_events
end

-- 6. items without outputs; unpack() is limited by the Lua stack: chunks of 1000
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
if late > 0 then redis.call('HINCRBY', stats, 'late', late) end
if over_limit > 0 then redis.call('HINCRBY', stats, 'over_limit', over_limit) end
if over_maxmemory > 0 then redis.call('HINCRBY', stats, 'over_maxmemory', over_maxmemory) end
return {settled, written, duplicates, dead_written, late, over_limit, over_maxmemory,
  mode == 'stream' and pending_here() or -1}
"#;

pub static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "#!lua flags=allow-oom\n{SETTLE_LUA}{RULE_STATE_LUA}{SETTLE_BODY_LUA}"
    ))
});

/// Clock work at the close of one window of one rule (`now >= W + window + max_lateness`),
/// run by the lease holder: `flatline` fires for every candidate group whose count of the
/// window is below the threshold and that is not firing already (id `<rule>/<gk>/<W>`);
/// a downward `spike` fires for every candidate group where `prev >= min_count` and
/// `cur * ratio <= prev`, unless in cooldown. Each window is handled once: the script
/// records it in `clock:<rule>` and does nothing for a window at or before it; SETTLE
/// counts a later match of such a window as late.
///
/// The gate: a window is closed only once every input that could still hold an on-time
/// event of it is settled, judged on Redis's clock and ids, not the caller's: with
/// `T = W + window + max_lateness`, Redis's time is at least `T` and
/// - stream mode: the group has delivered every entry with an id below `T-0` (none after
///   its last-delivered id is older) and none of them is still pending (the smallest
///   pending id is at or after `T-0`);
/// - list mode (items carry no arrival time): the source list and every processing list
///   named in KEYS are empty.
///
/// Otherwise the window is left for a later tick (`postponed`): a backlog, or entries held
/// by a paused or dead police not yet claimed, never make a silent window out of a busy one.
///
/// The fence: the script does nothing unless `owner` holds the lease, so a holder paused
/// past its lease (another took over) cannot act on what it computed before the pause.
///
/// Why atomic: the checks, the records, the episode registry and the window mark must go
/// together, or a lease taken over between them would raise or skip a record. Every record
/// is behind the idempotency guard besides.
/// KEYS: alerts stream, lease, source (log stream or list), processing lists (list mode).
/// ARGV: rules prefix, seen prefix, seen ttl (s), owner, mode (`stream`|`list`), group, the
/// rule (10 fields as in SETTLE), window start W, then per candidate group: group key id,
/// group values JSON, draft body (clock-raised: without `event`), first and last event
/// time. Returns {records written, duplicates, `closed`|`done`|`postponed`|`expired`|`fenced`}.
const CLOCK_HEAD_LUA: &str = r#"
local alerts, lease = KEYS[1], KEYS[2]
local rules_prefix, seen_prefix, ttl, owner = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local fenced = redis.call('GET', lease) ~= owner
"#;

const CLOCK_CLOSE_BODY_LUA: &str = r#"
if fenced then return {0, 0, 'fenced'} end
local source, mode, group = KEYS[3], ARGV[5], ARGV[6]
local rules = read_rules(7, 1)
local rule = rules[1]
local window_start = tonumber(ARGV[17])
local clock_key = rules_prefix .. 'clock:' .. rule.name
expect_room(alerts)
expect_rule_keys(rules)
local done = read_integer(clock_key)
if done and done >= window_start then return {0, 0, 'done'} end

-- the gate: is every input that may hold an on-time event of the window settled?
local function id_ms(id) return tonumber(string.match(id, '^(%d+)')) end
local function settled_before(boundary)
  if now_ms < boundary then return false end
  if mode == 'list' then
    for k = 3, #KEYS do
      if redis.call('LLEN', KEYS[k]) > 0 then return false end
    end
    return true
  end
  if redis.call('EXISTS', source) == 0 then return true end
  local delivered, has_group = '0-0', false
  for _, info in ipairs(redis.call('XINFO', 'GROUPS', source)) do
    local fields = {}
    for k = 1, #info, 2 do fields[info[k]] = info[k + 1] end
    if fields['name'] == group then delivered, has_group = fields['last-delivered-id'], true end
  end
  local undelivered = redis.call('XRANGE', source, '(' .. delivered, '+', 'COUNT', 1)[1]
  if undelivered and id_ms(undelivered[1]) < boundary then return false end
  if not has_group then return true end
  local pending = redis.call('XPENDING', source, group)
  return pending[1] == 0 or id_ms(pending[2]) >= boundary
end
if not settled_before(window_start + rule.window + rule.lateness) then return {0, 0, 'postponed'} end
-- a close postponed past the life of the window's counts (window end + 2 windows +
-- lateness + 10 min from their last write) would read an expired count as 0 and raise for
-- a group that had events: a group whose count is missing that late is passed over
-- (`expired`)
local counts_expire = window_start + 3 * rule.window + rule.lateness + close_hold(rule)
local passed_over = 0
local function known(entry, expires)
  if entry.stored or now_ms < expires then return true end
  passed_over = passed_over + 1
  return false
end

local out = {}
for at = 18, #ARGV, 5 do
  local ep = episode(rule, ARGV[at])
  local body, first, last = ARGV[at + 2], ARGV[at + 3], ARGV[at + 4]
  local entry = count_entry(rule, ep.gk, window_start)
  local current = entry.value
  if rule.kind == 'flatline' then
    if current < rule.threshold and known(entry, counts_expire) and not active_of(ep) then
      fire(ep, rule.name .. '/' .. ep.gk .. '/' .. fmt(window_start), window_start, current, 0, body, first, last, out)
    end
  elseif rule.kind == 'spike' and rule.down then
    local previous = count_entry(rule, ep.gk, window_start - rule.window).value
    if previous >= rule.min_count and current * rule.ratio <= previous
        and known(entry, counts_expire) then
      crossing(ep, window_start, current, previous, body, first, last, out)
    end
  end
end
flush_state()
redis.call('SET', clock_key, fmt(window_start))
return {write_records(out), rule_duplicates, passed_over > 0 and 'expired' or 'closed'}
"#;

pub static CLOCK_CLOSE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "#!lua flags=allow-oom\n{CLOCK_HEAD_LUA}{RULE_STATE_LUA}{CLOCK_CLOSE_BODY_LUA}"
    ))
});

/// Clock work every second, run by the lease holder: resolves the firing episodes that are
/// due (`any`: `any_quiet_ms` of wall clock since its last match; `frequency`/`spike`: the
/// window after the last firing one has closed, `now >= mark + 2 × window + lateness`),
/// each with a record of status `resolved`, the same `alert_id`, guard `<id>#resolved`,
/// moved from `active` to `resolved`; then drops `resolved` entries older than `keep_ms`.
/// It reads only what is due (`resolve_at`, at most 1000 per tick). Episodes of rules not in
/// the table are looked at again a minute later (another police may run a newer file), and
/// resolved (annotation `resolve_reason`) once their mark is a day old.
///
/// Why atomic: the due check, the record and the move between the registries go together,
/// so a settle extending the episode in between cannot be lost under a resolve.
/// Fenced as [`CLOCK_CLOSE`] is: nothing is done unless `owner` holds the lease.
/// KEYS: alerts stream, lease. ARGV: rules prefix, seen prefix, seen ttl (s), owner,
/// any_quiet_ms, keep_ms, rule count, per rule 10 fields as in SETTLE. Returns {records
/// written, duplicates, resolved entries dropped, `done`|`fenced`}.
const CLOCK_RESOLVE_BODY_LUA: &str = r#"
if fenced then return {0, 0, 0, 'fenced'} end
local keep_ms, abandoned_ms = tonumber(ARGV[6]), 86400000
any_quiet_ms = tonumber(ARGV[5])
local rules = read_rules(8, tonumber(ARGV[7]))
expect_room(alerts)
expect_rule_keys(rules)
local by_name = {}
for _, rule in ipairs(rules) do by_name[rule.name] = rule end
local out = {}
-- only what is due (`resolve_at`), at most 1000 per tick
local resolve_at = rules_prefix .. 'resolve_at'
local due_now = redis.call('ZRANGEBYSCORE', resolve_at, '-inf', fmt(now_ms), 'LIMIT', 0, 1000)
for _, rk in ipairs(due_now) do
  local name, gk = string.match(rk, '^(.*)/([^/]*)$')
  local rule = name and by_name[name]
  local mark = tonumber(redis.call('HGET', rules_prefix .. 'episodes', rk))
  if not mark or not name then
    redis.call('ZREM', resolve_at, rk)
  elseif rule then
    local due = resolve_due(rule, mark)
    if due and due > now_ms then
      -- the rule's window changed since: due later
      redis.call('ZADD', resolve_at, fmt(due), rk)
    else
      local ep = episode(rule, gk)
      if not resolve(ep, out) then set_mark(ep, false) end
    end
  elseif now_ms - mark > abandoned_ms then
    -- a rule no police has loaded for a day: its episode is closed, not left firing
    local ep = episode({name = name, kind = 'unknown'}, gk)
    if not resolve(ep, out, 'rule ' .. name .. ' is no longer loaded') then set_mark(ep, false) end
  else
    -- another police may run a file with this rule: looked at again in a minute
    redis.call('ZADD', resolve_at, fmt(now_ms + 60000), rk)
  end
end
flush_state()
local written = write_records(out)
local dropped = 0
local old = redis.call('ZRANGEBYSCORE', rules_prefix .. 'resolved_at', '-inf', fmt(now_ms - keep_ms), 'LIMIT', 0, 1000)
for _, rk in ipairs(old) do
  redis.call('HDEL', rules_prefix .. 'resolved', rk)
  redis.call('ZREM', rules_prefix .. 'resolved_at', rk)
  dropped = dropped + 1
end
return {written, rule_duplicates, dropped, 'done'}
"#;

pub static CLOCK_RESOLVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "#!lua flags=allow-oom\n{CLOCK_HEAD_LUA}{RULE_STATE_LUA}{CLOCK_RESOLVE_BODY_LUA}"
    ))
});

/// Forgets groups of one rule, run by the lease holder: `keep` mode, every group whose
/// last match (`seen:<rule>`) is at or before the cutoff, except the listed ones (a
/// flatline's `expect`, whose last match is set to now so they are looked at again one
/// `forget_after` later); `close` mode (a rule a reload removed or changed), every group of
/// the rule and the listed ones, and once none is left the rule's own keys. A forgotten
/// group's firing episode resolves with `reason` as the annotation `resolve_reason`; its
/// cooldown, first-seen entry and values go with it (its counters expire by themselves).
/// At most 1000 groups per call: the caller repeats while some are left.
///
/// Why atomic: a settle between the check and the removal would count a match for a group
/// then forgotten; in one script the group is either seen again (kept) or gone.
/// Fenced as [`CLOCK_CLOSE`] is: nothing is done unless `owner` holds the lease.
/// KEYS: alerts stream, lease. ARGV: rules prefix, seen prefix, seen ttl (s), owner, the
/// rule (10 fields as in SETTLE), cutoff ms (or `+inf`), reason, `keep`|`close`, then group
/// key ids. Returns {records written, duplicates, groups forgotten, groups left at or
/// before the cutoff} (all 0 when fenced).
const FORGET_GROUPS_BODY_LUA: &str = r#"
if fenced then return {0, 0, 0, 0} end
local rule = read_rules(5, 1)[1]
local cutoff, reason, closing = ARGV[15], ARGV[16], ARGV[17] == 'close'
expect_room(alerts)
expect_rule_keys({rule})
local seen_key = rules_prefix .. 'seen:' .. rule.name
local listed = {}
for at = 18, #ARGV do listed[ARGV[at]] = true end
local out, forgotten, kept = {}, 0, {}
local function forget(gk)
  local ep = episode(rule, gk)
  resolve(ep, out, reason)
  ep.forget = true
  forgotten = forgotten + 1
end
for _, gk in ipairs(redis.call('ZRANGEBYSCORE', seen_key, '-inf', cutoff, 'LIMIT', 0, 1000)) do
  if listed[gk] and not closing then kept[#kept + 1] = gk else forget(gk) end
end
if closing then
  for gk in pairs(listed) do
    if not episodes[rule.name .. '/' .. gk] then forget(gk) end
  end
end
flush_state()
for _, gk in ipairs(kept) do redis.call('ZADD', seen_key, fmt(now_ms), gk) end
local written = write_records(out)
local left = redis.call('ZCOUNT', seen_key, '-inf', cutoff)
if closing and left == 0 then
  for _, name in ipairs({'seen:', 'groups:', 'groupvals:', 'newest:', 'clock:'}) do
    redis.call('DEL', rules_prefix .. name .. rule.name)
  end
end
return {written, rule_duplicates, forgotten, left}
"#;

pub static FORGET_GROUPS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "#!lua flags=allow-oom\n{CLOCK_HEAD_LUA}{RULE_STATE_LUA}{FORGET_GROUPS_BODY_LUA}"
    ))
});

/// Creates the consumer group from id 0 (and the stream, if needed) unless it exists, which
/// is checked first (a user allowed to read but not to create groups can still run).
/// Flagged `allow-oom`: Redis refuses `XGROUP CREATE` over `maxmemory` even when the group
/// exists, and a police that cannot start can never drain what fills the memory.
/// Used for the log stream's group and for every sink's group on the alerts stream.
/// KEYS: stream. ARGV: group, what the stream is (for the error). Returns 1 when created,
/// 0 when it existed.
const ENSURE_GROUP_LUA: &str = r#"#!lua flags=allow-oom
local found = redis.call('TYPE', KEYS[1])['ok']
if found == 'stream' then
  for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    for k = 1, #group, 2 do
      if group[k] == 'name' and group[k + 1] == ARGV[1] then return 0 end
    end
  end
elseif found ~= 'none' then
  return redis.error_reply('WRONGTYPE logsentinel: key ' .. KEYS[1] .. ' holds a ' .. found .. ', expected ' .. ARGV[2])
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
