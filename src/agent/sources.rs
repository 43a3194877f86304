//! Real sources (stdin, syslog): each source task parses what it receives into events and
//! sends them on one bounded channel; [`ship_events`] numbers, batches and hands them on.
//!
//! Invariants:
//! - the channel is bounded: when Redis is slow, sources wait (stdin and TCP push back on
//!   their peers; UDP datagrams wait in the kernel's buffer)
//! - on a stop request the channel is closed and what it holds is still shipped: nothing a
//!   source accepted is dropped
//! - a partial batch waits at most `linger`

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::batcher::{Batch, Batcher};
use crate::config::AgentConfig;
use crate::event::{Level, LogEvent};

/// Events parsed by sources and not yet batched.
pub const SOURCE_QUEUE_EVENTS: usize = 4096;

/// Batches events until every source has ended (all senders dropped) or a stop request.
/// Returns the count per level.
pub async fn ship_events(
    mut events: mpsc::Receiver<LogEvent>,
    config: &AgentConfig,
    run_id: &str,
    batch_sender: mpsc::Sender<Batch>,
    shutdown: &CancellationToken,
) -> [u64; Level::ALL.len()] {
    let id_prefix = format!("{}:{run_id}:", config.agent_id);
    let mut batcher = Batcher::new(config.pack, config.batch_entries, config.linger);
    let mut events_per_level = [0u64; Level::ALL.len()];
    let mut next_sequence: u64 = 0;
    loop {
        let deadline = batcher.deadline();
        let received = tokio::select! {
            received = events.recv() => received,
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                if let Some(batch) = batcher.take() && batch_sender.send(batch).await.is_err() {
                    break;
                }
                continue;
            }
            _ = shutdown.cancelled(), if !events.is_closed() => {
                // No new events; those already queued are still received below.
                events.close();
                continue;
            }
        };
        let Some(mut event) = received else {
            break;
        };
        event.id = format!("{id_prefix}{next_sequence}");
        next_sequence += 1;
        events_per_level[event.level.index()] += 1;
        batcher.push(|out| event.encode_into(out));
        if batcher.room() == 0
            && let Some(batch) = batcher.take()
            && batch_sender.send(batch).await.is_err()
        {
            break;
        }
    }
    if let Some(batch) = batcher.take() {
        let _ = batch_sender.send(batch).await;
    }
    events_per_level
}
