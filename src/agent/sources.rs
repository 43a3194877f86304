//! Real sources (stdin, syslog): each source task parses what it receives into events and
//! sends them on one bounded channel; [`ship_events`] numbers, batches and hands them on.
//!
//! Invariants:
//! - the channel is bounded: when Redis is slow, sources wait (stdin and TCP push back on
//!   their peers; UDP datagrams wait in the kernel's buffer)
//! - no source holds more than `max_line_bytes` of one line or message: the rest is read
//!   and discarded up to the line's end, and the event is shipped with `extra.truncated =
//!   "true"` and counted ([`InputCounters::truncated_messages`])
//! - on a stop request the channel is closed and what it holds is still shipped: nothing a
//!   source accepted is dropped
//! - a partial batch waits at most `linger`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncBufRead, AsyncBufReadExt};
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

/// Default of `max_line_bytes`: the longest line or message a source keeps (1 MiB).
pub const DEFAULT_MAX_LINE_BYTES: usize = 1 << 20;

/// Field of `extra` set on an event whose line was cut at `max_line_bytes`.
pub const TRUNCATED_FIELD: &str = "truncated";

/// What the sources refused, cut or could not read, for the agent's summary. Shared by
/// every source task; each counter only grows.
#[derive(Debug, Default)]
pub struct InputCounters {
    /// Lines and messages cut at `max_line_bytes`.
    pub truncated_messages: AtomicU64,
    /// Syslog TCP frames that could not be framed (skipped to the next newline).
    pub framing_errors: AtomicU64,
    /// Syslog TCP connections refused because `syslog_max_connections` were open.
    pub refused_connections: AtomicU64,
    /// Syslog TCP connections closed after `syslog_idle_timeout_ms` without data.
    pub idle_connections_closed: AtomicU64,
    /// Failed `accept` calls (e.g. out of file descriptors), each followed by a backoff.
    pub accept_errors: AtomicU64,
    /// HTTP requests refused with 503 because `http_max_requests` were in flight.
    pub busy_http_requests: AtomicU64,
    /// HTTP requests whose body did not arrive within `http_body_timeout_ms`.
    pub http_body_timeouts: AtomicU64,
    /// HTTP requests whose events were not stored within `http_store_timeout_ms` (503).
    pub http_store_timeouts: AtomicU64,
    /// Files matched by the globs that could not be opened or read (each counted once).
    pub unreadable_files: AtomicU64,
}

/// The figures of [`InputCounters`], as printed in the summary.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct InputCounts {
    pub truncated_messages: u64,
    pub framing_errors: u64,
    pub refused_connections: u64,
    pub idle_connections_closed: u64,
    pub accept_errors: u64,
    pub busy_http_requests: u64,
    pub http_body_timeouts: u64,
    pub http_store_timeouts: u64,
    pub unreadable_files: u64,
}

impl InputCounters {
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> InputCounts {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        InputCounts {
            truncated_messages: read(&self.truncated_messages),
            framing_errors: read(&self.framing_errors),
            refused_connections: read(&self.refused_connections),
            idle_connections_closed: read(&self.idle_connections_closed),
            accept_errors: read(&self.accept_errors),
            busy_http_requests: read(&self.busy_http_requests),
            http_body_timeouts: read(&self.http_body_timeouts),
            http_store_timeouts: read(&self.http_store_timeouts),
            unreadable_files: read(&self.unreadable_files),
        }
    }

    /// Marks `event` as cut at the line limit, and counts it.
    pub fn mark_truncated(&self, event: &mut LogEvent) {
        event.extra.insert(TRUNCATED_FIELD.into(), "true".into());
        Self::count(&self.truncated_messages);
    }
}

impl InputCounts {
    /// The non-zero figures, one line each, in the summary's text form.
    pub fn print(&self) {
        let lines = [
            (self.truncated_messages, "truncated", "lines over max_line_bytes"),
            (
                self.framing_errors,
                "unframed",
                "syslog TCP frames skipped to the next newline",
            ),
            (
                self.refused_connections,
                "refused",
                "syslog TCP connections over the limit",
            ),
            (self.idle_connections_closed, "idle", "syslog TCP connections closed"),
            (self.accept_errors, "accept", "errors (backed off)"),
            (self.busy_http_requests, "busy", "HTTP requests refused (503)"),
            (self.http_body_timeouts, "slow body", "HTTP requests (408)"),
            (
                self.http_store_timeouts,
                "not stored",
                "HTTP requests in time (503, stored later)",
            ),
            (self.unreadable_files, "unreadable", "files"),
        ];
        for (count, label, what) in lines {
            if count > 0 {
                println!("  {label:<10} {count} {what}");
            }
        }
    }
}

/// Appends to `line` what fits of `bytes` under `max_bytes`; returns whether some was cut.
pub fn append_bounded(line: &mut Vec<u8>, bytes: &[u8], max_bytes: usize) -> bool {
    let room = max_bytes.saturating_sub(line.len());
    let kept = bytes.len().min(room);
    line.extend_from_slice(&bytes[..kept]);
    kept < bytes.len()
}

/// Text of a line cut at a byte limit: a character split by the cut is dropped rather than
/// turned into U+FFFD; other invalid UTF-8 is replaced as usual.
pub fn lossy_line(bytes: &[u8], truncated: bool) -> std::borrow::Cow<'_, str> {
    if truncated
        && let Err(error) = std::str::from_utf8(bytes)
        && error.error_len().is_none()
    {
        return String::from_utf8_lossy(&bytes[..error.valid_up_to()]);
    }
    String::from_utf8_lossy(bytes)
}

/// A line being read by [`read_line_bounded`]; kept by the caller, so that a read cancelled
/// halfway (by a timer of the caller) loses nothing.
#[derive(Debug, Default)]
pub struct LineBuffer {
    pub bytes: Vec<u8>,
    /// Some of the line was discarded at the limit.
    pub truncated: bool,
}

impl LineBuffer {
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.truncated = false;
    }
}

/// Reads one line (up to `\n`, which is consumed but not stored) into `line`, keeping at
/// most `max_bytes` of it: the rest of the line is read and discarded, never buffered.
/// Returns false at end of input with nothing read. With `idle`, a read that waits longer
/// than that fails with `TimedOut`. Cancel-safe: what was read is in `line`.
pub async fn read_line_bounded<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut LineBuffer,
    max_bytes: usize,
    idle: Option<Duration>,
) -> std::io::Result<bool> {
    let mut read_any = !line.bytes.is_empty() || line.truncated;
    loop {
        let available = match idle {
            Some(idle) => tokio::time::timeout(idle, reader.fill_buf())
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??,
            None => reader.fill_buf().await?,
        };
        if available.is_empty() {
            return Ok(read_any);
        }
        read_any = true;
        let newline = memchr::memchr(b'\n', available);
        let content_end = newline.unwrap_or(available.len());
        line.truncated |= append_bounded(&mut line.bytes, &available[..content_end], max_bytes);
        let consumed = newline.map_or(content_end, |index| index + 1);
        reader.consume(consumed);
        if newline.is_some() {
            return Ok(true);
        }
    }
}

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
    mut progress: Option<&mut crate::progress::Progress>,
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
        if let Some(progress) = progress.as_deref_mut() {
            progress.update(next_sequence, "");
        }
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

    /// [`LineParser::parse`], then the mark and count of a line cut at the limit.
    pub fn parse_line(&self, line: &JoinedLine, counters: &InputCounters) -> LogEvent {
        let mut event = self.parse(&line.text);
        if line.truncated {
            counters.mark_truncated(&mut event);
        }
        event
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

/// An event's text from the joiner, and whether a part of it was cut at the line limit.
#[derive(Debug, PartialEq, Eq)]
pub struct JoinedLine {
    pub text: String,
    pub truncated: bool,
}

/// Joins continuation lines (those matching `continuation`, e.g. indented stack-trace
/// lines) to the line before them. Tracks the byte offset where the event being joined
/// started, so that a checkpoint never lands inside an event. A joined event holds at most
/// `max_bytes`: continuation lines past it are dropped and the event marked truncated.
pub struct MultilineJoiner {
    continuation: Option<regex::Regex>,
    max_bytes: usize,
    pending: Option<JoinedLine>,
    pending_start: u64,
}

impl MultilineJoiner {
    pub fn new(continuation: Option<regex::Regex>, max_bytes: usize) -> MultilineJoiner {
        MultilineJoiner {
            continuation,
            max_bytes,
            pending: None,
            pending_start: 0,
        }
    }

    /// Takes the line that started at byte `start` (`truncated`: it was cut at the limit);
    /// returns an event's text when the line completes the previous one.
    pub fn push(&mut self, line: &str, truncated: bool, start: u64) -> Option<JoinedLine> {
        let line = JoinedLine {
            text: line.to_string(),
            truncated,
        };
        let Some(continuation) = &self.continuation else {
            return Some(line);
        };
        if let Some(pending) = self.pending.as_mut()
            && continuation.is_match(&line.text)
        {
            pending.truncated |= line.truncated;
            if pending.text.len() + 1 + line.text.len() > self.max_bytes {
                pending.truncated = true;
            } else {
                pending.text.push('\n');
                pending.text.push_str(&line.text);
            }
            return None;
        }
        self.pending_start = start;
        self.pending.replace(line)
    }

    /// The event being joined, if any (at end of input, or after a quiet while).
    pub fn flush(&mut self) -> Option<JoinedLine> {
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
        let mut joiner = MultilineJoiner::new(Some(regex::Regex::new(r"^\s").unwrap()), DEFAULT_MAX_LINE_BYTES);
        let mut events = Vec::new();
        let lines = ["first", "panic: boom", "  at a()", "\tat b()", "next", "last"];
        let mut offset = 0;
        for line in lines {
            events.extend(joiner.push(line, false, offset).map(|joined| joined.text));
            offset += line.len() as u64 + 1;
        }
        assert_eq!(joiner.pending_start(), Some(offset - 5));
        events.extend(joiner.flush().map(|joined| joined.text));
        assert_eq!(events, vec!["first", "panic: boom\n  at a()\n\tat b()", "next", "last"]);
    }

    #[test]
    fn without_a_pattern_every_line_is_an_event() {
        let mut joiner = MultilineJoiner::new(None, DEFAULT_MAX_LINE_BYTES);
        let joined = joiner.push("  indented", false, 0).unwrap();
        assert_eq!(joined.text, "  indented");
        assert!(!joiner.is_pending());
    }

    #[test]
    fn a_joined_event_stops_growing_at_the_limit() {
        let mut joiner = MultilineJoiner::new(Some(regex::Regex::new(r"^\s").unwrap()), 16);
        assert!(joiner.push("panic: boom", false, 0).is_none());
        assert!(joiner.push(" at a()", false, 12).is_none());
        assert!(joiner.push(" at b()", false, 20).is_none());
        let joined = joiner.push("next", false, 28).unwrap();
        assert_eq!(joined.text, "panic: boom");
        assert!(joined.truncated);
    }

    #[tokio::test]
    async fn long_lines_are_cut_and_the_rest_skipped() {
        let input = format!("{}\nshort\n{}", "x".repeat(100), "y".repeat(30));
        let mut reader = tokio::io::BufReader::with_capacity(8, input.as_bytes());
        let mut line = LineBuffer::default();
        let mut lines = Vec::new();
        while read_line_bounded(&mut reader, &mut line, 20, None).await.unwrap() {
            lines.push((String::from_utf8(line.bytes.clone()).unwrap(), line.truncated));
            line.clear();
        }
        assert_eq!(
            lines,
            [
                ("x".repeat(20), true),
                ("short".to_string(), false),
                ("y".repeat(20), true)
            ]
        );
    }

    #[test]
    fn a_character_split_by_the_cut_is_dropped() {
        let bytes = "ab\u{e9}".as_bytes();
        assert_eq!(lossy_line(&bytes[..3], true), "ab");
        assert_eq!(lossy_line(&bytes[..3], false), "ab\u{fffd}");
    }
}
