//! From decoded input to one atomic settle call: alerts out, rule state updated, dead
//! letters out, input acked.
//!
//! Invariants:
//! - the rule updates of an item are applied in the script that acknowledges the item and
//!   only if this consumer owns it (see [`scripts::SETTLE`]): a count is never applied
//!   twice nor for an entry another police settles
//! - items without alerts, dead letters or updates travel as bare ids (the cheap path)
//! - a batch sends each draft once per (rule, group key, window) (its slot), with the sums
//!   of the slot's updates: the script needs a draft only where a window fires, and mostly
//!   the sums only; each item lists its updates (slot number, matches, event times) in one
//!   argument, read by the script where it must apply them one by one

use std::collections::BTreeMap;

// foldhash: the call's maps are hashed once per update; SipHash showed in the profile
use foldhash::{HashMap, HashSet};
use std::fmt::Write;

use redis::RedisError;
use serde::Serialize;

use super::alert::Alert;
use super::rules::RuleSet;
use super::rules::dedup;
use super::rules::evaluate::BatchDrafts;
use super::rules::plan::{EventMark, FIGURE_MARK, RuleUpdate, StatefulKind, StatefulRule};
use crate::broker::{Connection, keys::Keys, scripts};
use crate::event::{DecodedEntry, EventRef, LogEvent, Rejected};

/// What one stream entry (or list item) produced, ready to be settled.
#[derive(Debug)]
pub struct Outcome {
    /// Stream entry id, or the raw list item.
    pub item: String,
    pub event_count: u64,
    pub alerts: Vec<Alert>,
    /// Whether the alerts pass the idempotency guard (see [`scripts::SETTLE`]): yes when
    /// their ids come from the events' own ids, which a resent event repeats; no when the
    /// ids are only a hash of a list item's content, where the same message pushed twice
    /// is two messages, and the processing list already fences a double settle.
    pub deduplicate_alerts: bool,
    pub dead: Vec<Rejected>,
    /// Matches of the stateful rules, folded per (rule, group key, window), for the settle
    /// script to apply to the rule state.
    pub updates: Vec<RuleUpdate>,
    /// The events of our agents among the updates' matches, with their dedup bits.
    pub marks: Vec<EventMark>,
}

impl Outcome {
    /// Runs the rules over the decoded events at wall clock `now_ms`; undecodable parts
    /// become dead letters. The item is settled alone or with others evaluated alone.
    pub fn evaluate<'a>(
        item: String,
        decoded: impl Into<DecodedEntry<EventRef<'a>>>,
        rules: &RuleSet,
        now_ms: i64,
    ) -> Outcome {
        Outcome::evaluate_in_batch(item, decoded, rules, now_ms, &mut BatchDrafts::default())
    }

    /// [`Outcome::evaluate`] of one item of the settle call `batch` (in settle order):
    /// what the police runs. The outcomes of one `batch` go to one settle call.
    pub fn evaluate_in_batch<'a>(
        item: String,
        decoded: impl Into<DecodedEntry<EventRef<'a>>>,
        rules: &RuleSet,
        now_ms: i64,
        batch: &mut BatchDrafts,
    ) -> Outcome {
        let decoded = decoded.into();
        let event_count = decoded.event_count;
        let plan = rules.evaluate_in_batch(&decoded.events, now_ms, batch);
        Outcome {
            item,
            event_count,
            alerts: plan.alerts,
            deduplicate_alerts: true,
            dead: decoded.rejected,
            updates: plan.updates,
            marks: plan.marks,
        }
    }

    /// An entry that is not processed at all, only dead-lettered with `reason`.
    pub fn dead_letter(item: String, reason: String, raw: String) -> Outcome {
        Outcome {
            item,
            event_count: 0,
            alerts: Vec::new(),
            deduplicate_alerts: true,
            dead: vec![Rejected { reason, raw }],
            updates: Vec::new(),
            marks: Vec::new(),
        }
    }
}

/// Running totals of a police. A `Cell` because settling borrows the police immutably
/// while the next read runs beside it (single-threaded runtime: no lock needed).
#[derive(Debug, Default)]
pub struct Totals(std::cell::Cell<Settled>);

impl Totals {
    pub fn add(&self, settled: Settled) {
        let mut totals = self.0.get();
        totals.items += settled.items;
        totals.alerts_written += settled.alerts_written;
        totals.duplicate_alerts += settled.duplicate_alerts;
        totals.dead_written += settled.dead_written;
        totals.late_matches += settled.late_matches;
        totals.over_limit += settled.over_limit;
        totals.over_maxmemory += settled.over_maxmemory;
        self.0.set(totals);
    }

    pub fn get(&self) -> Settled {
        self.0.get()
    }
}

/// Which fence the settle script uses (see [`scripts::SETTLE`]).
#[derive(Clone, Copy)]
pub enum Source<'a> {
    Stream,
    List { processing_list: &'a str },
}

/// Totals returned by the settle script.
#[derive(Debug, Default, Clone, Copy)]
pub struct Settled {
    pub items: u64,
    pub alerts_written: u64,
    pub duplicate_alerts: u64,
    pub dead_written: u64,
    /// Matches of windows closed longer than the rule's `max_lateness`: not counted.
    pub late_matches: u64,
    /// Matches of new groups beyond a rule's `max_groups`: not counted.
    pub over_limit: u64,
    /// Matches that would have created rule state while Redis was over `maxmemory`: not
    /// counted (see `docs/ALERTING.md`, "Bounds").
    pub over_maxmemory: u64,
    /// Stream mode: the consumer's pending count right after the call; `None` if the
    /// script had to be loaded first or a folded call sent again with every item's updates
    /// (a read sent meanwhile may have run before it).
    pub pending_after: Option<u64>,
    /// Whether the call was folded: the updates of its items with only updates travelled
    /// as the slots' sums (see [`scripts::SETTLE`]).
    pub folded: bool,
}

/// What a settle needs besides the outcomes.
pub struct SettleTarget<'a> {
    pub keys: &'a Keys,
    pub source: Source<'a>,
    pub consumer: &'a str,
    pub alert_dedup_ttl_s: u64,
    /// The stateful rules, indexed by [`RuleUpdate::rule_index`].
    pub rules: &'a [StatefulRule],
    /// Stream mode: how many entries this consumer holds, if known (see
    /// [`scripts::SETTLE`]'s fence and [`HeldEntries`]).
    pub expected_pending: Option<u64>,
}

/// How many entries a consumer holds in its pending list, as far as it knows: the count the
/// last settle returned plus the entries read with `>` since, on one connection. Unknown
/// at start and after anything else that changes the pending list (claims, re-reads of
/// own pending entries, a failed settle, a script reload that may have let a read run
/// first). With a known count, SETTLE's fence needs one figure instead of the owned set.
#[derive(Debug, Default)]
pub struct HeldEntries(std::cell::Cell<Option<u64>>);

impl HeldEntries {
    pub fn get(&self) -> Option<u64> {
        self.0.get()
    }

    /// `entries` more were read with `>` after the last settle was sent.
    pub fn read(&self, entries: usize) {
        self.0.set(self.0.get().map(|held| held + entries as u64));
    }

    pub fn reported(&self, pending: Option<u64>) {
        self.0.set(pending);
    }

    pub fn forget(&self) {
        self.0.set(None);
    }
}

/// Runs the settle script with no items: it checks the key types, the dedup ttl and the
/// Redis user's permissions for every command a settle runs, so that a police that could
/// not settle stops at start with the reason instead of at its first alert.
pub async fn check(connection: &mut Connection, target: &SettleTarget<'_>) -> Result<(), RedisError> {
    invoke(connection, target, &[]).await.map(|_| ())
}

pub async fn settle(
    connection: &mut Connection,
    target: &SettleTarget<'_>,
    outcomes: &[Outcome],
) -> Result<Settled, RedisError> {
    if outcomes.is_empty() {
        return Ok(Settled::default());
    }
    invoke(connection, target, outcomes).await
}

async fn invoke(
    connection: &mut Connection,
    target: &SettleTarget<'_>,
    outcomes: &[Outcome],
) -> Result<Settled, RedisError> {
    let tried_folded = target.expected_pending.is_some()
        && matches!(target.source, Source::Stream)
        && may_fold(outcomes, target.rules);
    if tried_folded {
        // First with every counting item folded; a refusal that names the slots whose sums
        // may cross a threshold is followed by one more folded call with the updates of
        // those slots itemized (their items travel with all their updates), so that a
        // crossing costs the walk of one slot, not of the whole call.
        let mut itemized: HashSet<SlotKey<'_>> = HashSet::default();
        for attempt in 0..2 {
            let (command, slot_keys) = settle_command(target, outcomes, Some(&itemized))?;
            match call(connection, &command).await? {
                Reply::Settled(settled) => {
                    return Ok(Settled {
                        folded: true,
                        // A read sent after a refused call may have run before this one.
                        pending_after: settled.pending_after.filter(|_| attempt == 0),
                        ..settled
                    });
                }
                Reply::Refused { crossing } if attempt == 0 && !crossing.is_empty() => {
                    itemized = crossing
                        .iter()
                        .filter_map(|number| slot_keys.get(number.checked_sub(1)?).copied())
                        .collect();
                }
                Reply::Refused { .. } => break,
            }
        }
    }
    let (command, _) = settle_command(target, outcomes, None)?;
    let Reply::Settled(settled) = call(connection, &command).await? else {
        return Err(RedisError::from((
            redis::ErrorKind::Client,
            "settle: the script asked for the items' updates of a call that sent them",
        )));
    };
    if tried_folded {
        // A read sent after the folded call may have run before this one.
        return Ok(Settled {
            pending_after: None,
            ..settled
        });
    }
    Ok(settled)
}

/// A slot of a settle call: (rule index, group key id, window start).
type SlotKey<'a> = (usize, &'a str, i64);

fn slot_key(update: &RuleUpdate) -> SlotKey<'_> {
    (update.rule_index, update.group.id.as_str(), update.window_start_ms)
}

/// What SETTLE answered.
enum Reply {
    Settled(Settled),
    /// A folded call not folded (nothing written); `crossing`: the numbers (from 1) of the
    /// slots whose sums may cross, where that was the only reason.
    Refused {
        crossing: Vec<usize>,
    },
}

/// Whether a folded call (see [`scripts::SETTLE`]) can settle `outcomes`: some item has
/// only updates of windowed rules (its updates can travel as the slots' sums alone), and
/// no rule has two windows in the call (its slots would not fold).
fn may_fold(outcomes: &[Outcome], rules: &[StatefulRule]) -> bool {
    let mut windows: Vec<Option<i64>> = vec![None; rules.len()];
    let mut folds_some = false;
    for outcome in outcomes {
        for update in &outcome.updates {
            if matches!(rules[update.rule_index].kind, StatefulKind::AnyWithCooldown) {
                continue;
            }
            if *windows[update.rule_index].get_or_insert(update.window_start_ms) != update.window_start_ms {
                return false;
            }
        }
        folds_some |= counted_only(outcome, rules);
    }
    folds_some
}

/// An item whose only output is updates of windowed rules.
fn counted_only(outcome: &Outcome, rules: &[StatefulRule]) -> bool {
    outcome.alerts.is_empty()
        && outcome.dead.is_empty()
        && !outcome.updates.is_empty()
        && outcome
            .updates
            .iter()
            .all(|update| !matches!(rules[update.rule_index].kind, StatefulKind::AnyWithCooldown))
}

/// Runs one SETTLE call.
async fn call(connection: &mut Connection, command: &redis::Cmd) -> Result<Reply, RedisError> {
    let (reply, reloaded): (Vec<i64>, bool) = match command.query_async(connection).await {
        Err(error) if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            scripts::SETTLE.prepare_invoke().load_async(connection).await?;
            (command.query_async(connection).await?, true)
        }
        reply => (reply?, false),
    };
    let figures: [i64; 8] = reply
        .get(..8)
        .and_then(|figures| figures.try_into().ok())
        .ok_or_else(|| {
            RedisError::from((
                redis::ErrorKind::Parse,
                "settle: the script's reply has fewer than 8 figures",
            ))
        })?;
    let [
        items,
        alerts_written,
        duplicate_alerts,
        dead_written,
        late_matches,
        over_limit,
        over_maxmemory,
        pending,
    ] = figures;
    let figure = |value: i64| u64::try_from(value).unwrap_or(0);
    let Ok(items) = u64::try_from(items) else {
        let crossing = reply[8..]
            .iter()
            .filter_map(|&number| usize::try_from(number).ok())
            .collect();
        return Ok(Reply::Refused { crossing });
    };
    Ok(Reply::Settled(Settled {
        items,
        alerts_written: figure(alerts_written),
        duplicate_alerts: figure(duplicate_alerts),
        dead_written: figure(dead_written),
        late_matches: figure(late_matches),
        over_limit: figure(over_limit),
        over_maxmemory: figure(over_maxmemory),
        pending_after: u64::try_from(pending).ok().filter(|_| !reloaded),
        folded: false,
    }))
}

/// The SETTLE call of `outcomes` and its slots in number order. `folded` (with the slots
/// whose updates are itemized): the items with only updates of windowed rules, none of
/// them in an itemized slot, travel as bare ids, their updates in the slots' sums only.
fn settle_command<'a>(
    target: &SettleTarget<'_>,
    outcomes: &'a [Outcome],
    folded: Option<&HashSet<SlotKey<'_>>>,
) -> Result<(redis::Cmd, Vec<SlotKey<'a>>), RedisError> {
    let keys = target.keys;
    let (mode, source_key, label) = match target.source {
        Source::Stream => ("stream", keys.stream.as_str(), keys.stream.as_str()),
        Source::List { processing_list } => ("list", processing_list, keys.list.as_str()),
    };
    let bare = |outcome: &Outcome| {
        (outcome.alerts.is_empty() && outcome.dead.is_empty() && outcome.updates.is_empty())
            || folded.is_some_and(|itemized| {
                counted_only(outcome, target.rules)
                    && (itemized.is_empty()
                        || !outcome
                            .updates
                            .iter()
                            .any(|update| itemized.contains(&slot_key(update))))
            })
    };
    let (first_id, last_id) = match target.source {
        Source::Stream => id_range(
            outcomes
                .iter()
                .filter(|outcome| !bare(outcome))
                .map(|outcome| outcome.item.as_str()),
        ),
        Source::List { .. } => (String::new(), String::new()),
    };
    // EVALSHA by hand: redis-rs's invoke would load the script and retry on its own, and a
    // read sent after this call could then run before it, unnoticed by `pending_after`.
    let mut invocation = redis::cmd("EVALSHA");
    invocation
        .arg(scripts::SETTLE.get_hash())
        .arg(4)
        .arg(source_key)
        .arg(&keys.alerts)
        .arg(&keys.dead)
        .arg(keys.stats(label))
        .arg(mode)
        .arg(&keys.group)
        .arg(target.consumer)
        .arg(keys.alert_seen_prefix())
        .arg(target.alert_dedup_ttl_s)
        .arg(label)
        .arg(keys.rules_prefix())
        .arg(first_id)
        .arg(last_id)
        .arg(target.expected_pending.map(|held| held.to_string()).unwrap_or_default())
        .arg(if folded.is_some() { "1" } else { "" })
        .arg(rules_args(target.rules));

    // One slot per (rule, group key, window) of the call: its draft (the first one an update
    // of it carries: the first update's, when the items were evaluated as one batch) and the
    // sums of its updates. Each item with outputs lists its updates in one argument, by slot
    // number.
    let mut slot_numbers: HashMap<SlotKey<'a>, usize> = HashMap::default();
    let mut slots: Vec<Slot<'_>> = Vec::new();
    let mut noisy: Vec<&Outcome> = Vec::new();
    let mut quiet_by_event_count: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
    let mut packed_updates: Vec<String> = Vec::new();
    // The dedup bitmaps of the call, numbered from 1, and each item's marks on them.
    let mut bitmaps = Bitmaps::default();
    let mut packed_marks: Vec<(String, String)> = Vec::new();
    for outcome in outcomes {
        let is_bare = bare(outcome);
        if is_bare {
            quiet_by_event_count
                .entry(outcome.event_count)
                .or_default()
                .push(&outcome.item);
        } else {
            noisy.push(outcome);
        }
        let marks = pack_marks(outcome, &mut bitmaps, !is_bare);
        let mut packed = String::new();
        for update in &outcome.updates {
            let number = *slot_numbers.entry(slot_key(update)).or_insert_with(|| {
                slots.push(Slot::of(update));
                slots.len()
            });
            slots[number - 1].add(update);
            if !is_bare {
                // Writing into a String cannot fail.
                let _ = write!(
                    packed,
                    "{number},{},{},{};",
                    update.matches, update.first_event_ms, update.last_event_ms
                );
            }
        }
        if !is_bare {
            packed_updates.push(packed);
            packed_marks.push(marks);
        }
    }
    invocation.arg(slots.len());
    for slot in &slots {
        let Some(draft) = slot.draft else {
            return Err(RedisError::from((
                redis::ErrorKind::Client,
                "settle: no update of a (rule, group key, window) carries its draft",
                format!("rule {} group {}", slot.first.rule_index, slot.first.group.id),
            )));
        };
        invocation
            .arg(&slot.first.group.id)
            .arg(&slot.first.group.values_json)
            .arg(draft_body(draft))
            .arg(&draft.first_event_time)
            .arg(&draft.last_event_time)
            .arg(slot.first.rule_index + 1)
            .arg(slot.first.window_start_ms)
            .arg(slot.matches)
            .arg(slot.newest_ms)
            .arg(slot.last_ms)
            .arg(match folded {
                Some(itemized) if !itemized.contains(&slot_key(slot.first)) => "",
                _ => "1",
            });
    }

    invocation.arg(quiet_by_event_count.len());
    for (event_count, items) in &quiet_by_event_count {
        invocation.arg(event_count).arg(items.len()).arg(items);
    }
    let bitmaps = bitmaps.finish();
    invocation.arg(bitmaps.len());
    for ((run, chunk), operations) in &bitmaps {
        invocation.arg(dedup::bitmap_name(*run, *chunk)).arg(operations);
    }
    for ((outcome, packed), (marks, partial)) in noisy.iter().zip(&packed_updates).zip(&packed_marks) {
        invocation
            .arg(&outcome.item)
            .arg(outcome.event_count)
            .arg(outcome.alerts.len())
            .arg(outcome.dead.len())
            .arg(packed)
            .arg(marks)
            .arg(partial);
        let guarded = if outcome.deduplicate_alerts { "1" } else { "0" };
        for alert in &outcome.alerts {
            invocation.arg(&alert.alert_id).arg(guarded).arg(alert.to_json());
        }
        for rejected in &outcome.dead {
            invocation.arg(&rejected.reason).arg(&rejected.raw);
        }
    }
    Ok((invocation, slots.iter().map(|slot| slot_key(slot.first)).collect()))
}

/// The updates of one (rule, group key, window) within a settle call.
struct Slot<'a> {
    first: &'a RuleUpdate,
    draft: Option<&'a Alert>,
    matches: u64,
    /// The latest last event time of its updates.
    newest_ms: i64,
    /// The last event time of its last update (item order).
    last_ms: i64,
}

impl<'a> Slot<'a> {
    fn of(first: &'a RuleUpdate) -> Slot<'a> {
        Slot {
            first,
            draft: None,
            matches: 0,
            newest_ms: i64::MIN,
            last_ms: first.last_event_ms,
        }
    }

    fn add(&mut self, update: &'a RuleUpdate) {
        if self.draft.is_none() {
            self.draft = update.draft.as_deref();
        }
        self.matches += update.matches;
        self.newest_ms = self.newest_ms.max(update.last_event_ms);
        self.last_ms = update.last_event_ms;
    }
}

/// An item's dedup marks in the layout of SETTLE: the runs of consecutive bits of its
/// events (`<bitmap number>,<first bit>,<length>;`, in the events' order, numbering the
/// call's bitmaps in `bitmaps`) and the events that count in only some of its updates
/// (`<event number from 1>:<update numbers from 1>;`). One event per entry, or a run of
/// an agent's events, is one run: the script sets it with one operation. Not `detailed`
/// (a bare item of a folded call): the runs go to `bitmaps` only.
fn pack_marks(outcome: &Outcome, bitmaps: &mut Bitmaps, detailed: bool) -> (String, String) {
    let mut runs = String::new();
    let mut partial = String::new();
    // The run being extended: (bitmap, its number, first bit, length).
    let mut run: Option<((u64, u64), usize, u32, u32)> = None;
    for (index, mark) in outcome.marks.iter().enumerate() {
        let bitmap = (mark.slot.run, mark.slot.chunk);
        match &mut run {
            Some((of, _, first, length)) if *of == bitmap && *first + *length == mark.slot.bit => *length += 1,
            _ => {
                let number = match run {
                    Some((of, number, ..)) if of == bitmap => number,
                    _ => bitmaps.number_of(bitmap),
                };
                if let Some((_, done, first, length)) = run.replace((bitmap, number, mark.slot.bit, 1)) {
                    if detailed {
                        // Writing into a String cannot fail.
                        let _ = write!(runs, "{done},{first},{length};");
                    }
                    bitmaps.add_run(done, first, length);
                }
            }
        }
        if detailed && !mark.updates.is_empty() && mark.updates.len() != outcome.updates.len() {
            let _ = write!(partial, "{}:", index + 1);
            for (k, position) in mark.updates.iter().enumerate() {
                let separator = if k == 0 { "" } else { "," };
                let _ = write!(partial, "{separator}{}", position + 1);
            }
            partial.push(';');
        }
    }
    if let Some((_, done, first, length)) = run {
        if detailed {
            let _ = write!(runs, "{done},{first},{length};");
        }
        bitmaps.add_run(done, first, length);
    }
    (runs, partial)
}

/// Widest `BITFIELD` operation of SETTLE: its old value stays exact in Lua's numbers.
const OPERATION_BITS: u32 = 48;

/// The dedup bitmaps of a settle call, numbered from 1, each with the operations that set
/// its runs: the items' runs in item order, merged where consecutive, at most
/// [`OPERATION_BITS`] wide (`<first bit>,<width>;` each). SETTLE uses them as they are
/// when every item is owned.
#[derive(Default)]
struct Bitmaps {
    numbers: HashMap<(u64, u64), usize>,
    /// Per bitmap: its (run hash, chunk), its written operations and the open one.
    bitmaps: Vec<(Bitmap, String, Option<Operation>)>,
}

/// A dedup bitmap: (run hash, chunk).
type Bitmap = (u64, u64);
/// A `BITFIELD` operation: (first bit, width).
type Operation = (u32, u32);

impl Bitmaps {
    fn number_of(&mut self, bitmap: (u64, u64)) -> usize {
        *self.numbers.entry(bitmap).or_insert_with(|| {
            self.bitmaps.push((bitmap, String::new(), None));
            self.bitmaps.len()
        })
    }

    fn add_run(&mut self, number: usize, mut first: u32, mut length: u32) {
        let (_, written, open) = &mut self.bitmaps[number - 1];
        while length > 0 {
            let take = match open {
                Some((start, width)) if *start + *width == first && *width < OPERATION_BITS => {
                    let take = length.min(OPERATION_BITS - *width);
                    *width += take;
                    take
                }
                _ => {
                    let take = length.min(OPERATION_BITS);
                    if let Some((start, width)) = open.replace((first, take)) {
                        let _ = write!(written, "{start},{width};");
                    }
                    take
                }
            };
            first += take;
            length -= take;
        }
    }

    fn finish(self) -> Vec<((u64, u64), String)> {
        self.bitmaps
            .into_iter()
            .map(|(bitmap, mut written, open)| {
                if let Some((start, width)) = open {
                    let _ = write!(written, "{start},{width};");
                }
                (bitmap, written)
            })
            .collect()
    }
}

/// The rule table in the layout of the settle and clock scripts: the count, then 10
/// fields per rule.
pub(crate) fn rules_args(rules: &[StatefulRule]) -> Vec<String> {
    let mut args = vec![rules.len().to_string()];
    for rule in rules {
        args.extend(rule_args(rule));
    }
    args
}

/// One rule's 10 fields: name, kind, window ms, threshold, cooldown ms, max lateness ms,
/// ratio, min count, spike directions, max groups.
pub(crate) fn rule_args(rule: &StatefulRule) -> [String; 10] {
    let kind = match rule.kind {
        StatefulKind::AnyWithCooldown => "any",
        StatefulKind::Frequency => "frequency",
        StatefulKind::Spike => "spike",
        StatefulKind::Flatline => "flatline",
    };
    let directions = match (rule.spike_up, rule.spike_down) {
        (true, true) => "b",
        (true, false) => "u",
        (false, true) => "d",
        (false, false) => "-",
    };
    [
        rule.name.clone(),
        kind.to_string(),
        rule.window_ms.max(1).to_string(),
        rule.threshold.to_string(),
        rule.cooldown_ms.to_string(),
        rule.max_lateness_ms.to_string(),
        rule.ratio.to_string(),
        rule.min_count.to_string(),
        directions.to_string(),
        rule.max_groups.to_string(),
    ]
}

/// First and last of a batch's stream ids (`ms-seq`, compared as numbers), the range of
/// the fence's one `XPENDING`; the whole stream if an id does not parse.
fn id_range<'a>(ids: impl Iterator<Item = &'a str>) -> (String, String) {
    let mut range: Option<((u64, u64), (u64, u64))> = None;
    for id in ids {
        let Some(parsed) = id
            .split_once('-')
            .and_then(|(ms, seq)| Some((ms.parse::<u64>().ok()?, seq.parse::<u64>().ok()?)))
        else {
            return ("-".into(), "+".into());
        };
        range = Some(match range {
            None => (parsed, parsed),
            Some((low, high)) => (low.min(parsed), high.max(parsed)),
        });
    }
    match range {
        Some(((low_ms, low_seq), (high_ms, high_seq))) => {
            (format!("{low_ms}-{low_seq}"), format!("{high_ms}-{high_seq}"))
        }
        None => (String::new(), String::new()),
    }
}

/// The alert record's JSON without `alert_id`, `status`, `count`, `raised_at`,
/// `first_event_time` and `last_event_time` and without its opening brace: the scripts
/// prepend those six (see [`scripts::SETTLE`]). The figure
/// marks may appear only in labels and annotations (where the script replaces them), so a
/// mark in any other field (event text, group values) is replaced by U+FFFD here.
pub fn draft_body(draft: &Alert) -> String {
    if !marks_only_in_templates(draft) {
        return draft_body(&without_stray_marks(draft));
    }
    let Alert {
        alert_id: _,
        rule,
        rule_type,
        status: _,
        severity,
        group,
        labels,
        annotations,
        count: _,
        first_event_time: _,
        last_event_time: _,
        raised_at: _,
        sinks,
        event,
    } = draft;
    let body = DraftBody {
        rule,
        rule_type,
        severity,
        group,
        labels,
        annotations,
        sinks,
        event: event.as_ref(),
    };
    let json = serde_json::to_string(&body).expect("serialising a draft into memory cannot fail");
    debug_assert!(json.starts_with('{'));
    json[1..].to_string()
}

/// [`Alert`] but for the six fields the scripts write; `event` last (the scripts cut it
/// off for records without an event).
#[derive(Serialize)]
struct DraftBody<'a> {
    rule: &'a str,
    #[serde(rename = "type")]
    rule_type: &'a str,
    severity: &'a str,
    group: &'a BTreeMap<String, String>,
    labels: &'a BTreeMap<String, String>,
    annotations: &'a BTreeMap<String, String>,
    sinks: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a LogEvent>,
}

fn marks_only_in_templates(draft: &Alert) -> bool {
    let clean = |text: &String| !text.contains(FIGURE_MARK);
    let event_clean = draft.event.as_ref().is_none_or(|event| {
        [&event.id, &event.timestamp, &event.service, &event.host, &event.message]
            .into_iter()
            .all(clean)
            && event.extra.iter().all(|(name, value)| clean(name) && clean(value))
    });
    event_clean
        && [
            &draft.rule,
            &draft.rule_type,
            &draft.severity,
            &draft.first_event_time,
            &draft.last_event_time,
        ]
        .into_iter()
        .all(clean)
        && draft.group.iter().all(|(name, value)| clean(name) && clean(value))
        && draft.sinks.iter().all(clean)
        && draft.labels.keys().chain(draft.annotations.keys()).all(clean)
}

fn without_stray_marks(draft: &Alert) -> Alert {
    let scrub = |text: &str| text.replace(FIGURE_MARK, "\u{fffd}");
    let scrub_map =
        |map: &BTreeMap<String, String>| map.iter().map(|(name, value)| (scrub(name), scrub(value))).collect();
    let mut clean = draft.clone();
    clean.rule = scrub(&draft.rule);
    clean.rule_type = scrub(&draft.rule_type);
    clean.severity = scrub(&draft.severity);
    clean.first_event_time = scrub(&draft.first_event_time);
    clean.last_event_time = scrub(&draft.last_event_time);
    clean.group = scrub_map(&draft.group);
    clean.sinks = draft.sinks.iter().map(|sink| scrub(sink)).collect();
    clean.labels = draft
        .labels
        .iter()
        .map(|(name, value)| (scrub(name), value.clone()))
        .collect();
    clean.annotations = draft
        .annotations
        .iter()
        .map(|(name, value)| (scrub(name), value.clone()))
        .collect();
    if let Some(event) = &mut clean.event {
        event.id = scrub(&event.id);
        event.timestamp = scrub(&event.timestamp);
        event.service = scrub(&event.service);
        event.host = scrub(&event.host);
        event.message = scrub(&event.message);
        event.extra = scrub_map(&event.extra);
    }
    clean
}
