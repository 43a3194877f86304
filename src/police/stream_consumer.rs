//! Stream mode: one consumer of the consumer group.
//!
//! Invariants:
//! - on start, our own pending entries (read from id `0`) are finished before new ones (`>`)
//! - entries pending on another consumer for longer than `claim_idle` are claimed
//!   (XAUTOCLAIM) and processed here; entries delivered more than `max_deliveries` times
//!   are dead-lettered instead of processed
//! - a read is never raced against the stop request: entries it returns are processed and
//!   settled before the session ends, so a graceful stop leaves nothing pending
//! - under a backlog (full batches) up to three batches are in hand at once: one settling,
//!   one being evaluated, one read ahead; all of them are in our pending list
//! - consumers are removed from the group only by one atomic script that checks they have
//!   nothing pending and, for another police, that their heartbeat key expired: a removal
//!   never drops a pending entry and never removes a live police

use std::collections::HashMap;
use std::sync::Arc;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::rules::RuleSet;
use super::rules::evaluate::BatchDrafts;
use super::settle::{Outcome, Source};
use super::{Police, SessionEnd, SessionError};
use crate::broker::stream::{self, Removal, StreamEntry};
use crate::broker::{self, Backoff, Connection};
use crate::event::{self, Level, fields_as_json};

/// XAUTOCLAIM rounds per maintenance tick, so claiming cannot starve new reads.
const MAX_CLAIM_ROUNDS_PER_TICK: usize = 10;

/// Events a batch of new entries aims at: the entries per read follow the events per entry
/// (`n` of packed entries), so that packed batches stay as large in events, memory and
/// evaluation time as 256 entries of 100 events, while one-event entries come up to
/// `--read-count` a read. The settle script's work per call (rule table, one slot per
/// rule, group key and window) is then shared by more events.
const BATCH_EVENTS: usize = 25_600;

/// How many entries the next read of new entries asks for, and how many the last one did.
#[derive(Debug)]
pub struct ReadSize {
    max: usize,
    next: std::cell::Cell<usize>,
    asked: std::cell::Cell<usize>,
}

impl ReadSize {
    pub fn new(max: usize) -> ReadSize {
        // Until a batch was seen, as if entries were packed 100 to one.
        let first = (BATCH_EVENTS / 100).clamp(1, max);
        ReadSize {
            max,
            next: std::cell::Cell::new(first),
            asked: std::cell::Cell::new(first),
        }
    }

    fn ask(&self) -> usize {
        self.asked.set(self.next.get());
        self.next.get()
    }

    /// Whether the last read came back full (a backlog), and the size of the next one
    /// from its events per entry.
    fn observe(&self, entries: &[StreamEntry]) -> bool {
        if !entries.is_empty() {
            let events: usize = entries.iter().map(events_in).sum();
            let per_entry = events.div_ceil(entries.len()).max(1);
            self.next.set((BATCH_EVENTS / per_entry).clamp(1, self.max));
        }
        entries.len() >= self.asked.get()
    }
}

/// Events an entry says it holds (`n` of a packed entry; one otherwise, also where `n` is
/// unreadable: decoding reports that).
fn events_in(entry: &StreamEntry) -> usize {
    entry
        .fields
        .as_ref()
        .and_then(|fields| fields.iter().find(|(name, _)| name == "n"))
        .and_then(|(_, count)| count.parse::<usize>().ok())
        .unwrap_or(1)
        .clamp(1, BATCH_EVENTS)
}

pub async fn run_session(police: &mut Police, backoff: &mut Backoff) -> Result<SessionEnd, SessionError> {
    let mut connection = broker::connect(&police.broker.redis_url).await?;
    stream::ensure_group(&mut connection, &police.broker.keys).await?;
    police.check_redis(&mut connection, Source::Stream).await?;
    refresh_heartbeat(police, &mut connection).await?;
    backoff.succeeded();
    police.held.forget();

    finish_own_pending(police, &mut connection).await?;

    let mut next_maintenance = Instant::now();
    let mut entries_in_hand: Vec<StreamEntry> = Vec::new();
    // Whether the entries in hand were a full read (a backlog).
    let mut batch_full = false;
    loop {
        police.beat.tick();
        if entries_in_hand.is_empty() {
            if police.shutdown.is_cancelled() {
                leave_group_if_idle(police, &mut connection).await?;
                return Ok(SessionEnd::Stopped);
            }
            if Instant::now() >= next_maintenance {
                maintain(police, &mut connection).await?;
                next_maintenance = Instant::now() + police.config.maintenance_interval;
                police.mark_alive().await;
            }
            entries_in_hand = read_new(police, &mut connection, next_maintenance).await?;
            police.held.read(entries_in_hand.len());
            batch_full = police.read_size.observe(&entries_in_hand);
            continue;
        }
        police.refresh_rules();
        // New entries were delivered once so far: no delivery counts needed.
        let evaluator = Evaluator::of(police);
        let entries = std::mem::take(&mut entries_in_hand);
        let outcomes = police.evaluation.run(move || evaluator.evaluate(entries, None)).await;
        if police.shutdown.is_cancelled() || Instant::now() >= next_maintenance {
            police.settle(&mut connection, Source::Stream, &outcomes).await?;
            continue;
        }
        if batch_full {
            entries_in_hand = drain_backlog(police, &mut connection, outcomes, next_maintenance).await?;
            batch_full = police.read_size.observe(&entries_in_hand);
            continue;
        }
        // Settle this batch and read the next one in one round trip: Redis runs the two
        // commands in order, so the read cannot see this batch's entries again.
        let mut read_connection = connection.clone();
        let (settled, next) = tokio::join!(
            police.settle(&mut connection, Source::Stream, &outcomes),
            read_new_with(police, &mut read_connection, Some(next_maintenance)),
        );
        settled?;
        entries_in_hand = next?;
        police.held.read(entries_in_hand.len());
        batch_full = police.read_size.observe(&entries_in_hand);
    }
}

/// A backlog (full batches): the police evaluates batch N+1 on a blocking thread while
/// Redis settles batch N and reads N+2, so the two work at the same time instead of in
/// turns. At most three batches are in this consumer's hands (settling, evaluating, read
/// ahead), all in its pending list: a crash loses none of them, a restart finishes them.
/// Ends when a read comes back short (the backlog is drained), at a stop request or when
/// maintenance is due, after settling what was evaluated; returns the entries read ahead,
/// not evaluated yet.
async fn drain_backlog(
    police: &mut Police,
    connection: &mut Connection,
    mut outcomes: Vec<Outcome>,
    next_maintenance: Instant,
) -> Result<Vec<StreamEntry>, SessionError> {
    let mut ahead = read_new_with(police, connection, None).await?;
    police.held.read(ahead.len());
    let mut read_more = police.read_size.observe(&ahead);
    loop {
        police.beat.tick();
        if ahead.is_empty() || police.shutdown.is_cancelled() || Instant::now() >= next_maintenance {
            police.settle(connection, Source::Stream, &outcomes).await?;
            return Ok(ahead);
        }
        police.refresh_rules();
        let evaluator = Evaluator::of(police);
        let entries = std::mem::take(&mut ahead);
        let evaluation = police.evaluation.run(move || evaluator.evaluate(entries, None));
        let mut read_connection = connection.clone();
        // Polled in order: the settle is sent before the read, so Redis runs them in turn.
        let (settled, next) = tokio::join!(police.settle(connection, Source::Stream, &outcomes), async {
            if read_more {
                read_new_with(police, &mut read_connection, None).await
            } else {
                Ok(Vec::new())
            }
        });
        let evaluated = evaluation.await;
        settled?;
        outcomes = evaluated;
        ahead = next?;
        police.held.read(ahead.len());
        read_more = read_more && police.read_size.observe(&ahead);
    }
}

async fn read_new(
    police: &Police,
    connection: &mut Connection,
    next_maintenance: Instant,
) -> Result<Vec<StreamEntry>, SessionError> {
    read_new_with(police, connection, Some(next_maintenance)).await
}

/// Read of new entries (`>`): blocking, waking up in time for the next maintenance, or,
/// with no maintenance time (a read ahead under a backlog, which has a full batch), not
/// blocking at all.
/// Asks for [`ReadSize`] entries.
async fn read_new_with(
    police: &Police,
    connection: &mut Connection,
    next_maintenance: Option<Instant>,
) -> Result<Vec<StreamEntry>, SessionError> {
    let config = &police.config;
    let block_ms = next_maintenance.map(|at| {
        config
            .block
            .min(at.saturating_duration_since(Instant::now()))
            .as_millis()
            .max(1) as u64
    });
    let count = police.read_size.ask();
    Ok(stream::read_group(connection, &police.broker.keys, &config.consumer, ">", count, block_ms).await?)
}

/// Re-reads and finishes the entries this consumer name had in hand when it stopped.
async fn finish_own_pending(police: &mut Police, connection: &mut Connection) -> Result<(), SessionError> {
    let mut after_id = "0-0".to_string();
    loop {
        let entries = stream::read_group(
            connection,
            &police.broker.keys,
            &police.config.consumer,
            &after_id,
            police.config.read_count,
            None,
        )
        .await?;
        // Re-reads leave the pending count as it is; forgetting it keeps the reasoning local.
        police.held.forget();
        let Some(last) = entries.last() else {
            return Ok(());
        };
        after_id = last.id.clone();
        info!(
            entries = entries.len(),
            "finishing entries left pending by an earlier run"
        );
        let counts = delivery_counts(police, connection, &entries).await?;
        process(police, connection, entries, Some(counts)).await?;
    }
}

async fn delivery_counts(
    police: &Police,
    connection: &mut Connection,
    entries: &[StreamEntry],
) -> Result<HashMap<String, u64>, SessionError> {
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
        return Ok(HashMap::new());
    };
    Ok(stream::delivery_counts(
        connection,
        &police.broker.keys,
        &police.config.consumer,
        &first.id,
        &last.id,
        entries.len(),
    )
    .await?)
}

/// Decodes and evaluates entries, delivers their alerts, settles them.
/// `delivery_counts` is `None` for entries read with `>` (delivered once).
async fn process(
    police: &mut Police,
    connection: &mut Connection,
    entries: Vec<StreamEntry>,
    delivery_counts: Option<HashMap<String, u64>>,
) -> Result<(), SessionError> {
    police.refresh_rules();
    let evaluator = Evaluator::of(police);
    let outcomes = police
        .evaluation
        .run(move || evaluator.evaluate(entries, delivery_counts.as_ref()))
        .await;
    police.settle(connection, Source::Stream, &outcomes).await
}

/// What evaluating a batch needs of the police, owned: it runs on a blocking thread while
/// the previous batch settles.
struct Evaluator {
    rules: Arc<RuleSet>,
    interest: Level,
    max_entry_bytes: usize,
    max_deliveries: u64,
}

impl Evaluator {
    fn of(police: &Police) -> Evaluator {
        Evaluator {
            rules: police.rules.clone(),
            interest: police.interest,
            max_entry_bytes: police.config.max_entry_bytes,
            max_deliveries: police.config.max_deliveries,
        }
    }

    fn evaluate(&self, entries: Vec<StreamEntry>, delivery_counts: Option<&HashMap<String, u64>>) -> Vec<Outcome> {
        let max_deliveries = self.max_deliveries;
        let now_ms = super::rules::window::now_ms();
        let mut outcomes = Vec::with_capacity(entries.len());
        // These outcomes go to one settle call.
        let mut batch = BatchDrafts::default();
        for entry in entries {
            let deliveries = delivery_counts
                .and_then(|counts| counts.get(&entry.id).copied())
                .unwrap_or(1);
            let Some(fields) = entry.fields else {
                // Deleted from the stream while pending: nothing left to process; ack it.
                warn!(entry_id = %entry.id, "pending entry no longer exists in the stream");
                outcomes.push(Outcome::evaluate(
                    entry.id,
                    event::DecodedEntry::<event::LogEvent>::default(),
                    &self.rules,
                    now_ms,
                ));
                continue;
            };
            if deliveries > max_deliveries {
                let reason = format!("delivered {deliveries} times, more than max_deliveries={max_deliveries}");
                outcomes.push(Outcome::dead_letter(entry.id, reason, fields_as_json(&fields)));
                continue;
            }
            let decoded = event::decode_entry_views_within(&entry.id, &fields, self.interest, self.max_entry_bytes);
            outcomes.push(Outcome::evaluate_in_batch(
                entry.id,
                decoded,
                &self.rules,
                now_ms,
                &mut batch,
            ));
        }
        outcomes
    }
}

/// Keeps our heartbeat key alive for [`Police::heartbeat_ttl`].
async fn refresh_heartbeat(police: &Police, connection: &mut Connection) -> Result<(), SessionError> {
    let heartbeat_key = police.broker.keys.consumer_heartbeat(&police.config.consumer);
    let ttl_ms = police.heartbeat_ttl().as_millis() as u64;
    Ok(broker::heartbeat(connection, &heartbeat_key, ttl_ms).await?)
}

/// Periodic work: heartbeat, claim from dead consumers, remove idle consumers, trim.
async fn maintain(police: &mut Police, connection: &mut Connection) -> Result<(), SessionError> {
    refresh_heartbeat(police, connection).await?;
    claim_idle_entries(police, connection).await?;
    remove_idle_consumers(police, connection).await?;
    if police.config.trim {
        let trimmed = stream::trim_acknowledged(connection, &police.broker.keys.stream).await?;
        if trimmed > 0 {
            debug!(trimmed, "trimmed acknowledged entries");
        }
    }
    Ok(())
}

async fn claim_idle_entries(police: &mut Police, connection: &mut Connection) -> Result<(), SessionError> {
    let min_idle_ms = police.config.claim_idle.as_millis() as u64;
    let mut cursor = "0-0".to_string();
    for _ in 0..MAX_CLAIM_ROUNDS_PER_TICK {
        let claimed = stream::autoclaim(
            connection,
            &police.broker.keys,
            &police.config.consumer,
            min_idle_ms,
            &cursor,
            police.config.read_count,
        )
        .await?;
        // Claimed entries join our pending list, deleted ones leave it.
        police.held.forget();
        if !claimed.deleted_ids.is_empty() {
            warn!(
                entries = claimed.deleted_ids.len(),
                "pending entries were deleted from the stream before being processed"
            );
        }
        if !claimed.entries.is_empty() {
            info!(
                entries = claimed.entries.len(),
                "claimed entries idle on another consumer"
            );
            let counts = delivery_counts(police, connection, &claimed.entries).await?;
            process(police, connection, claimed.entries, Some(counts)).await?;
        }
        if claimed.next_cursor == "0-0" {
            break;
        }
        cursor = claimed.next_cursor;
    }
    Ok(())
}

/// Removes consumers that have had nothing pending for `consumer_idle_remove` and no
/// heartbeat, so that scaling down leaves no dead consumers behind. `XINFO CONSUMERS` only
/// picks the candidates; the script decides atomically.
async fn remove_idle_consumers(police: &Police, connection: &mut Connection) -> Result<(), SessionError> {
    let keys = &police.broker.keys;
    let idle_limit = police.config.consumer_idle_remove;
    for consumer in stream::consumers(connection, keys, &keys.group).await? {
        let candidate = consumer.pending == 0
            && consumer.idle_ms >= idle_limit.as_millis() as u64
            && consumer.name != police.config.consumer;
        if candidate && stream::remove_consumer(connection, keys, &consumer.name, Removal::IdleFor(idle_limit)).await? {
            info!(consumer = %consumer.name, idle_ms = consumer.idle_ms, "removed idle consumer");
        }
    }
    Ok(())
}

/// On a graceful stop: remove our consumer if nothing is pending on it, and our heartbeat.
async fn leave_group_if_idle(police: &Police, connection: &mut Connection) -> Result<(), SessionError> {
    let keys = &police.broker.keys;
    let consumer = &police.config.consumer;
    if stream::remove_consumer(connection, keys, consumer, Removal::Leaving).await? {
        info!(consumer = %consumer, "left the consumer group");
    } else {
        warn!(consumer = %consumer, "stopping with pending entries; another police will claim them");
    }
    // Expire rather than DEL: the heartbeat script is what the start-up check covers.
    broker::heartbeat(connection, &keys.consumer_heartbeat(consumer), 1).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(count: usize, n: Option<&str>) -> Vec<StreamEntry> {
        (0..count)
            .map(|k| StreamEntry {
                id: format!("1-{k}"),
                fields: Some(match n {
                    Some(n) => vec![
                        ("v".into(), "1".into()),
                        ("n".into(), n.into()),
                        ("events".into(), "…".into()),
                    ],
                    None => vec![("v".into(), "1".into()), ("event".into(), "{}".into())],
                }),
            })
            .collect()
    }

    #[test]
    fn reads_follow_the_events_per_entry_up_to_the_read_count() {
        let size = ReadSize::new(1024);
        assert_eq!(size.ask(), 256, "before any batch: as for entries of 100 events");
        assert!(size.observe(&entries(256, None)), "as many as asked: a full batch");
        assert_eq!(size.ask(), 1024, "one event per entry: the read count");
        assert!(!size.observe(&entries(10, Some("100"))), "fewer than asked");
        assert_eq!(size.ask(), 256);
        assert!(size.observe(&entries(256, Some("100"))));
        size.observe(&entries(3, Some("25600")));
        assert_eq!(size.ask(), 1, "never below one entry");
        size.observe(&entries(3, Some("many")));
        assert_eq!(size.ask(), 1024, "an unreadable n counts as one event");
        size.observe(&[]);
        assert_eq!(size.ask(), 1024, "an empty read keeps the size");

        let small = ReadSize::new(50);
        assert_eq!(small.ask(), 50, "never above the read count");
        assert!(small.observe(&entries(50, Some("10"))));
        assert_eq!(small.ask(), 50);
    }
}
