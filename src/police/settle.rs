//! From decoded input to one atomic settle call: alerts out, dead letters out, input acked.

use std::collections::BTreeMap;

use redis::RedisError;

use super::alert::Alert;
use super::rules::RuleSet;
use super::rules::plan::RuleUpdate;
use crate::broker::{Connection, keys::Keys, scripts};
use crate::event::{DecodedEntry, Rejected};

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
}

impl Outcome {
    /// Runs the rules over the decoded events at wall clock `now_ms`; undecodable parts
    /// become dead letters.
    pub fn evaluate(item: String, decoded: DecodedEntry, rules: &RuleSet, now_ms: i64) -> Outcome {
        let event_count = decoded.event_count;
        let plan = rules.evaluate(decoded.events, now_ms);
        Outcome {
            item,
            event_count,
            alerts: plan.alerts,
            deduplicate_alerts: true,
            dead: decoded.rejected,
            updates: plan.updates,
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
}

/// What a settle needs besides the outcomes.
pub struct SettleTarget<'a> {
    pub keys: &'a Keys,
    pub source: Source<'a>,
    pub consumer: &'a str,
    pub alert_dedup_ttl_s: u64,
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
    let keys = target.keys;
    let (mode, source_key, label) = match target.source {
        Source::Stream => ("stream", keys.stream.as_str(), keys.stream.as_str()),
        Source::List { processing_list } => ("list", processing_list, keys.list.as_str()),
    };
    let mut invocation = scripts::SETTLE.prepare_invoke();
    invocation
        .key(source_key)
        .key(&keys.alerts)
        .key(&keys.dead)
        .key(keys.stats(label))
        .arg(mode)
        .arg(&keys.group)
        .arg(target.consumer)
        .arg(keys.alert_seen_prefix())
        .arg(target.alert_dedup_ttl_s)
        .arg(label);
    let (quiet, noisy): (Vec<&Outcome>, Vec<&Outcome>) = outcomes
        .iter()
        .partition(|outcome| outcome.alerts.is_empty() && outcome.dead.is_empty());
    let mut quiet_by_event_count: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
    for outcome in quiet {
        quiet_by_event_count
            .entry(outcome.event_count)
            .or_default()
            .push(&outcome.item);
    }
    invocation.arg(quiet_by_event_count.len());
    for (event_count, items) in &quiet_by_event_count {
        invocation.arg(event_count).arg(items.len()).arg(items);
    }
    for outcome in noisy {
        invocation
            .arg(&outcome.item)
            .arg(outcome.event_count)
            .arg(outcome.alerts.len())
            .arg(outcome.dead.len());
        let guarded = if outcome.deduplicate_alerts { "1" } else { "0" };
        for alert in &outcome.alerts {
            invocation.arg(&alert.alert_id).arg(guarded).arg(alert.to_json());
        }
        for rejected in &outcome.dead {
            invocation.arg(&rejected.reason).arg(&rejected.raw);
        }
    }
    let (items, alerts_written, duplicate_alerts, dead_written): (u64, u64, u64, u64) =
        invocation.invoke_async(connection).await?;
    Ok(Settled {
        items,
        alerts_written,
        duplicate_alerts,
        dead_written,
    })
}
