//! List mode: reliable consumption of a plain Redis list.
//!
//! Invariants:
//! - an item leaves the source list only by an atomic move into our processing list, and
//!   leaves the processing list only in the settle script that writes its alerts
//! - on start, items left in our processing list by an earlier run are processed first
//! - a consumer keeps a heartbeat key alive; the processing list of a consumer whose
//!   heartbeat expired is given back to the source list by any other consumer

use tokio::time::Instant;
use tracing::info;

use super::rules::evaluate::BatchDrafts;
use super::settle::{Outcome, Source};
use super::{Police, SessionEnd, SessionError};
use crate::broker::{self, Backoff, Connection, list};
use crate::event;

pub async fn run_session(police: &mut Police, backoff: &mut Backoff) -> Result<SessionEnd, SessionError> {
    let mut connection = broker::connect(&police.broker.redis_url).await?;
    let keys = police.broker.keys.clone();
    let processing_list = keys.processing_list(&police.config.consumer);
    let heartbeat_key = keys.heartbeat(&police.config.consumer);
    let heartbeat_ttl_ms = police.list_heartbeat_ttl().as_millis() as u64;
    broker::heartbeat(&mut connection, &heartbeat_key, heartbeat_ttl_ms).await?;
    police
        .check_redis(
            &mut connection,
            Source::List {
                processing_list: &processing_list,
            },
        )
        .await?;
    backoff.succeeded();

    let unfinished = list::unfinished_items(&mut connection, &processing_list).await?;
    if !unfinished.is_empty() {
        info!(
            items = unfinished.len(),
            "finishing items left in the processing list by an earlier run"
        );
        for chunk in unfinished.chunks(police.config.read_count) {
            process(police, &mut connection, &processing_list, chunk.to_vec()).await?;
        }
    }

    let block_s = police.config.block.as_secs_f64();
    let mut next_maintenance = Instant::now();
    loop {
        police.beat.tick();
        if police.shutdown.is_cancelled() {
            // Expire rather than DEL: the heartbeat script is what the start-up check covers.
            broker::heartbeat(&mut connection, &heartbeat_key, 1).await?;
            return Ok(SessionEnd::Stopped);
        }
        if Instant::now() >= next_maintenance {
            broker::heartbeat(&mut connection, &heartbeat_key, heartbeat_ttl_ms).await?;
            let returned = list::return_orphaned_items(&mut connection, &keys, &processing_list).await?;
            if returned > 0 {
                info!(items = returned, "gave items of a dead consumer back to the list");
            }
            next_maintenance = Instant::now() + police.config.maintenance_interval;
            police.mark_alive().await;
        }
        let items = list::take_items(
            &mut connection,
            &keys,
            &processing_list,
            police.config.read_count,
            block_s,
        )
        .await?;
        if !items.is_empty() {
            process(police, &mut connection, &processing_list, items).await?;
        }
    }
}

async fn process(
    police: &mut Police,
    connection: &mut Connection,
    processing_list: &str,
    items: Vec<String>,
) -> Result<(), SessionError> {
    police.refresh_rules();
    let now_ms = super::rules::window::now_ms();
    // These outcomes go to one settle call.
    let mut batch = BatchDrafts::default();
    let outcomes: Vec<Outcome> = items
        .into_iter()
        .map(|item| {
            let item_id = format!("{}#{:016x}", police.broker.keys.list, fnv1a(item.as_bytes()));
            let decoded =
                event::decode_list_item_within(&item_id, &item, police.interest, police.config.max_entry_bytes);
            // Items without an id of their own get one from their content: the same message
            // pushed twice is two messages, each alerted (the processing list already fences
            // a double settle of one item).
            let carries_own_id = decoded.events.iter().all(|event| event.id != item_id);
            let mut outcome = Outcome::evaluate_in_batch(item, decoded, &police.rules, now_ms, &mut batch);
            outcome.deduplicate_alerts = carries_own_id;
            if !carries_own_id {
                // Two pushes of one message are two alerts: they get two ids.
                for alert in &mut outcome.alerts {
                    alert.alert_id = format!("{}/{:016x}", alert.alert_id, occurrence_nonce());
                }
            }
            outcome
        })
        .collect();
    police
        .settle(connection, Source::List { processing_list }, &outcomes)
        .await
}

/// A random number telling apart two alerts for equal list items.
fn occurrence_nonce() -> u64 {
    use rand::TryRng;
    rand::rngs::SysRng.try_next_u64().unwrap_or_else(|_| {
        // No OS entropy: time and a counter still differ between two alerts of one process.
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        (now.as_nanos() as u64) ^ COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    })
}

/// FNV-1a: a stable content hash, so a re-processed foreign item gets the same event id.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
