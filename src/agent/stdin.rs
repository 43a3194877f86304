//! `agent --source stdin`: every line of standard input becomes one event, so that
//! `myprog | logsentinel agent --source stdin` ships a program's output.
//!
//! Invariants:
//! - no line is dropped: lines that are neither JSON nor logfmt are shipped as plain text
//!   (level from a level word, or UNKNOWN); invalid UTF-8 is replaced, not refused
//! - a partial batch waits at most `linger` for more lines
//! - at end of input (or on SIGTERM) the batch in hand is shipped before the summary

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::batcher::{Batch, Batcher};
use crate::config::AgentConfig;
use crate::event::Level;
use crate::event::foreign::Defaults;
use crate::event::line::parse_line;

/// Reads lines until end of input or a stop request. Returns the count per level.
pub async fn read_lines(
    config: &AgentConfig,
    run_id: &str,
    batch_sender: mpsc::Sender<Batch>,
    shutdown: &CancellationToken,
) -> [u64; Level::ALL.len()] {
    let host = crate::hostname();
    let defaults = Defaults {
        level: Level::Unknown,
        service: &config.service,
        host: &host,
    };
    let id_prefix = format!("{}:{run_id}:", config.agent_id);
    let mut reader = BufReader::new(tokio::io::stdin());
    let mut batcher = Batcher::new(config.pack, config.batch_entries, config.linger);
    let mut events_per_level = [0u64; Level::ALL.len()];
    let mut next_sequence: u64 = 0;
    // Kept across loop turns: `read_until` cancelled by the linger timer leaves the part of
    // the line read so far here, and the next call goes on from there.
    let mut line_bytes = Vec::with_capacity(1024);
    loop {
        let deadline = batcher.deadline();
        let read = tokio::select! {
            read = reader.read_until(b'\n', &mut line_bytes) => read,
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                if let Some(batch) = batcher.take() && batch_sender.send(batch).await.is_err() {
                    break;
                }
                continue;
            }
            _ = shutdown.cancelled() => break,
        };
        let end_of_input = match read {
            Ok(read_bytes) => read_bytes == 0,
            Err(error) => {
                tracing::error!(error = %error, "cannot read standard input");
                true
            }
        };
        let line = String::from_utf8_lossy(&line_bytes);
        let line = line.trim_end_matches(['\n', '\r']);
        if !line.trim().is_empty() {
            let event_id = format!("{id_prefix}{next_sequence}");
            next_sequence += 1;
            let (event, _format) = parse_line(&event_id, line, &defaults);
            events_per_level[event.level.index()] += 1;
            batcher.push(|out| event.encode_into(out));
        }
        line_bytes.clear();
        if batcher.room() == 0
            && let Some(batch) = batcher.take()
            && batch_sender.send(batch).await.is_err()
        {
            break;
        }
        if end_of_input {
            break;
        }
    }
    if let Some(batch) = batcher.take() {
        let _ = batch_sender.send(batch).await;
    }
    events_per_level
}
