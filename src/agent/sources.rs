//! Real sources (stdin, syslog): each source task parses what it receives into events and
//! sends them on one bounded channel; [`ship_events`] numbers, batches and hands them on.
//!
//! Invariants:
//! - the channel is bounded: when Redis is slow, sources wait (stdin and TCP push back on
//!   their peers; UDP datagrams wait in the kernel's buffer)
//! - on a stop request the channel is closed and what it holds is still shipped: nothing a
//!   source accepted is dropped
//! - a partial batch waits at most `linger`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::batcher::{Batch, Batcher, Receipt};
use crate::config::AgentConfig;
use crate::event::foreign::Defaults;
use crate::event::line::parse_line_with;
use crate::event::{Level, LogEvent};

/// Messages parsed by sources and not yet batched (a chunk holds at most [`MAX_CHUNK_EVENTS`]).
/// Measured with syslog over TCP at pack 100 (1 M messages, one connection): 1,024 gave
/// 425–600 k events/s at ~100 MB peak RSS, 512 gave ~300 k at 66 MB, 256 ~270 k at 42 MB.
pub const SOURCE_QUEUE_MESSAGES: usize = 1024;
pub const MAX_CHUNK_EVENTS: usize = 64;

/// What a source hands over.
pub enum SourceMessage {
    Event(LogEvent),
    /// Several events at once (file reading), cheaper than one message each.
    Chunk(Vec<LogEvent>),
    /// To be settled once every event sent before it is stored.
    Receipt(Receipt),
}

/// Batches events until every source has ended (all senders dropped) or a stop request.
pub async fn ship_events(
    mut messages: mpsc::Receiver<SourceMessage>,
    config: &AgentConfig,
    run_id: &str,
    batch_sender: mpsc::Sender<Batch>,
    shutdown: &CancellationToken,
) {
    let id_prefix = format!("{}:{run_id}:", config.agent_id);
    let mut batcher = Batcher::new(config.pack, config.batch_entries, config.batch_max_bytes, config.linger);
    let mut next_sequence: u64 = 0;
    let limit = config.count.unwrap_or(u64::MAX);
    loop {
        if next_sequence >= limit {
            break; // `--count` reached: dropping the receiver ends the sources
        }
        let deadline = batcher.deadline();
        let received = tokio::select! {
            received = messages.recv() => received,
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                if let Some(batch) = batcher.take() && batch_sender.send(batch).await.is_err() {
                    break;
                }
                continue;
            }
            _ = shutdown.cancelled(), if !messages.is_closed() => {
                // No new events; those already queued are still received below.
                messages.close();
                continue;
            }
        };
        // A single event is not boxed into a Vec: stdin and syslog send one at a time.
        let (single, chunk) = match received {
            None => break,
            Some(SourceMessage::Event(event)) => (Some(event), Vec::new()),
            Some(SourceMessage::Chunk(events)) => (None, events),
            Some(SourceMessage::Receipt(receipt)) => {
                batcher.attach(receipt);
                if batcher.deadline().is_none()
                    && let Some(batch) = batcher.take()
                    && batch_sender.send(batch).await.is_err()
                {
                    break;
                }
                continue;
            }
        };
        let mut closed = false;
        for mut event in single.into_iter().chain(chunk) {
            if next_sequence >= limit {
                break;
            }
            event.id.clear();
            event.id.push_str(&id_prefix);
            event.id.push_str(itoa::Buffer::new().format(next_sequence));
            next_sequence += 1;
            batcher.push(|out| {
                event.encode_into(out);
                event.level
            });
            if batcher.room() == 0
                && let Some(batch) = batcher.take()
                && batch_sender.send(batch).await.is_err()
            {
                closed = true;
                break;
            }
        }
        if closed {
            break;
        }
    }
    if let Some(batch) = batcher.take() {
        let _ = batch_sender.send(batch).await;
    }
}

/// Turns lines of the stdin and file sources into events: JSON, logfmt or plain text
/// (level by `level_pattern` or the level words). Counts the lines whose level could not
/// be found (shipped with level UNKNOWN, never dropped).
#[derive(Clone)]
pub struct LineParser {
    service: String,
    host: String,
    level_pattern: Option<regex::Regex>,
    unknown_level_lines: Arc<AtomicU64>,
}

impl LineParser {
    pub fn new(config: &AgentConfig, unknown_level_lines: Arc<AtomicU64>) -> LineParser {
        LineParser {
            service: config.service.clone(),
            host: crate::hostname(),
            level_pattern: config.level_pattern.clone(),
            unknown_level_lines,
        }
    }

    pub fn parse(&self, line: &str) -> LogEvent {
        let defaults = Defaults {
            level: Level::Unknown,
            service: &self.service,
            host: &self.host,
        };
        // The id is given by the batching loop.
        let (event, _format) = parse_line_with("", line, &defaults, self.level_pattern.as_ref());
        if event.level == Level::Unknown {
            self.unknown_level_lines.fetch_add(1, Ordering::Relaxed);
        }
        event
    }
}

/// Joins continuation lines (those matching `continuation`, e.g. indented stack-trace
/// lines) to the line before them. Tracks the byte offset where the event being joined
/// started, so that a checkpoint never lands inside an event.
pub struct MultilineJoiner {
    continuation: Option<regex::Regex>,
    pending: Option<String>,
    pending_start: u64,
}

impl MultilineJoiner {
    pub fn new(continuation: Option<regex::Regex>) -> MultilineJoiner {
        MultilineJoiner {
            continuation,
            pending: None,
            pending_start: 0,
        }
    }

    /// Takes the line that started at byte `start`; returns an event's text when the line
    /// completes the previous one.
    pub fn push(&mut self, line: &str, start: u64) -> Option<String> {
        let Some(continuation) = &self.continuation else {
            return Some(line.to_string());
        };
        if let Some(pending) = self.pending.as_mut()
            && continuation.is_match(line)
        {
            pending.push('\n');
            pending.push_str(line);
            return None;
        }
        self.pending_start = start;
        self.pending.replace(line.to_string())
    }

    /// The event being joined, if any (at end of input, or after a quiet while).
    pub fn flush(&mut self) -> Option<String> {
        self.pending.take()
    }

    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Where the event being joined started; lines before it are complete.
    pub fn pending_start(&self) -> Option<u64> {
        self.pending.as_ref().map(|_| self.pending_start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_indented_lines_to_the_line_before() {
        let mut joiner = MultilineJoiner::new(Some(regex::Regex::new(r"^\s").unwrap()));
        let mut events = Vec::new();
        let lines = ["first", "panic: boom", "  at a()", "\tat b()", "next", "last"];
        let mut offset = 0;
        for line in lines {
            events.extend(joiner.push(line, offset));
            offset += line.len() as u64 + 1;
        }
        assert_eq!(joiner.pending_start(), Some(offset - 5));
        events.extend(joiner.flush());
        assert_eq!(events, vec!["first", "panic: boom\n  at a()\n\tat b()", "next", "last"]);
    }

    #[test]
    fn without_a_pattern_every_line_is_an_event() {
        let mut joiner = MultilineJoiner::new(None);
        assert_eq!(joiner.push("  indented", 0).as_deref(), Some("  indented"));
        assert!(!joiner.is_pending());
    }
}
