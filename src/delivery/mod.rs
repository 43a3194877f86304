//! Delivery: the alerts stream is the outbox; one worker per sink reads it in its own
//! consumer group (`sink:<name>`), so a slow or dead receiver only grows that sink's lag
//! and never holds back ingestion.
//!
//! Invariants (see `docs/ALERTING.md`):
//! - a record is acknowledged in a sink's group only after the sink took it (2xx, SMTP
//!   accepted, file flushed) or after it was written to the sink's dead letters
//!   (`logsentinel:dead:sink:<name>`) with the last status: never dropped
//! - at-least-once: a crash between delivery and XACK delivers again; every payload carries
//!   the alert id (HTTP: `Idempotency-Key`) so receivers can drop repeats
//! - beyond a sink's rate limit, records wait and are folded per rule into digests
//! - text a receiver wrote reaches the log and the sink dead letters only through
//!   [`shown_status`] (one line, no control characters, at most 200 characters); an HTTP
//!   receiver's answer body never does (see `http.rs`)

pub mod config;
pub mod digest;
pub mod http;
pub mod rate_limit;
pub mod retry;
pub mod sinks;
pub mod worker;

pub use worker::{SinkWorker, WorkerSettings, Workers, spawn_workers};

use crate::police::alert::Alert;

/// Most characters of a status shown in the log or stored in a sink dead letter: enough
/// for an SMTP reply (`550 5.1.1 <ops@example.com>: Recipient address rejected`) or a
/// connect error with its causes, bounded so a receiver cannot fill the log.
pub const MAX_STATUS_CHARS: usize = 200;

/// A delivery status as it may be logged and stored in a sink dead letter. A status may
/// carry text the receiver chose (an SMTP server's reply, a TLS or connect error quoting the
/// peer), and the text log writes `%` fields as they are: a newline in it would start a
/// line that looks like the police's own. So every control character, the Unicode line and
/// paragraph separators and the bidirectional overrides are written as `\u{..}` escapes
/// (`\n`, `\r`, `\t` for those three), and the text is cut to [`MAX_STATUS_CHARS`], the last
/// one `…` when cut. Backslashes are kept as they are, so the function is idempotent (a
/// status shown twice reads the same); a receiver can write a literal `\n`, never a newline.
pub fn shown_status(status: &str) -> String {
    let mut shown = String::with_capacity(status.len().min(MAX_STATUS_CHARS * 4));
    let mut shown_chars = 0usize;
    let mut characters = status.chars().peekable();
    while let Some(character) = characters.next() {
        let piece: String = if is_unsafe_in_a_log_line(character) {
            character.escape_default().collect()
        } else {
            character.to_string()
        };
        let piece_chars = piece.chars().count();
        let more_after = characters.peek().is_some();
        // Room for the `…` when anything is left after this piece.
        let room = MAX_STATUS_CHARS - shown_chars - usize::from(more_after);
        if piece_chars > room {
            shown.push('…');
            return shown;
        }
        shown.push_str(&piece);
        shown_chars += piece_chars;
    }
    debug_assert!(shown.chars().count() <= MAX_STATUS_CHARS);
    shown
}

/// Characters that end a line, move the cursor or reorder text on a terminal or in a viewer.
fn is_unsafe_in_a_log_line(character: char) -> bool {
    character.is_control()
        || matches!(
            character,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// How one delivery attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Worth retrying: connect errors, timeouts, 408, 429, 5xx. `retry_after` is the
    /// receiver's `Retry-After`, if it gave one.
    #[error("{sink} delivery failed ({status}), will retry")]
    Retryable {
        sink: String,
        status: String,
        retry_after: Option<std::time::Duration>,
    },
    /// Retrying cannot help (other 4xx, a rejected address): dead-lettered at once.
    #[error("{sink} refused the delivery ({status})")]
    Permanent { sink: String, status: String },
}

impl SinkError {
    /// The same error, its status as [`shown_status`] shows it.
    pub fn with_shown_status(self) -> SinkError {
        match self {
            SinkError::Retryable {
                sink,
                status,
                retry_after,
            } => SinkError::Retryable {
                sink,
                status: shown_status(&status),
                retry_after,
            },
            SinkError::Permanent { sink, status } => SinkError::Permanent {
                sink,
                status: shown_status(&status),
            },
        }
    }
}

/// One message a sink sends: a single alert, or a digest of several alerts of one rule
/// folded together by the rate limit.
#[derive(Debug, Clone)]
pub enum Message<'a> {
    Single(&'a Alert),
    /// The first alerts in full, and how many more were folded in (all ids are listed).
    Digest {
        rule: &'a str,
        alerts: &'a [Alert],
    },
}

impl Message<'_> {
    /// The id receivers dedupe by (`Idempotency-Key`, `webhook-id`): the alert id, or for
    /// a digest `digest/<rule>/<16 hex digits>` of FNV-1a 64 over its alert ids, so that
    /// the same digest sent again carries the same id.
    pub fn id(&self) -> String {
        match self {
            Message::Single(alert) => alert.alert_id.clone(),
            Message::Digest { rule, alerts } => {
                let hash = alerts.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, alert| {
                    alert
                        .alert_id
                        .bytes()
                        .chain(std::iter::once(b'\n'))
                        .fold(hash, |hash, byte| {
                            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
                        })
                });
                format!("digest/{rule}/{hash:016x}")
            }
        }
    }

    /// Every alert of the message.
    pub fn alerts(&self) -> &[Alert] {
        match self {
            Message::Single(alert) => std::slice::from_ref(*alert),
            Message::Digest { alerts, .. } => alerts,
        }
    }
}

#[async_trait::async_trait] // boxed futures so sinks can live in a Vec<Box<dyn AlertSink>>
pub trait AlertSink: Send + Sync {
    /// Returns only once the receiver took the message. May be called again with the same
    /// alerts after a crash or a retry: receivers see the alert ids and must dedupe.
    async fn deliver(&self, message: &Message<'_>) -> Result<(), SinkError>;

    /// At most this many alerts in one `deliver` call of a digest (Alertmanager: 64).
    fn max_alerts_per_message(&self) -> usize {
        100
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_statuses_are_one_bounded_line_and_showing_twice_changes_nothing() {
        assert_eq!(shown_status("404"), "404");
        let injected = "smtp 550: permanent error (550): no\n2026-12-01T12:00:00Z ERROR fake\r\x1b[2J\u{2028}end";
        let shown = shown_status(injected);
        assert_eq!(
            shown,
            "smtp 550: permanent error (550): no\\n2026-12-01T12:00:00Z ERROR fake\\r\\u{1b}[2J\\u{2028}end"
        );
        assert!(!shown.chars().any(is_unsafe_in_a_log_line), "{shown}");
        assert_eq!(shown_status(&shown), shown, "idempotent");
        let long = "x".repeat(500);
        let cut = shown_status(&long);
        assert_eq!(cut.chars().count(), MAX_STATUS_CHARS);
        assert!(cut.ends_with('…'));
        assert_eq!(shown_status(&cut), cut, "idempotent when cut");
        let exact = "y".repeat(MAX_STATUS_CHARS);
        assert_eq!(
            shown_status(&exact),
            exact,
            "a status of exactly the bound is kept whole"
        );
        // An escape is never split by the cut.
        let escapes = "\n".repeat(150);
        let cut = shown_status(&escapes);
        assert!(cut.ends_with("\\n…"), "{cut}");
        assert!(cut.chars().count() <= MAX_STATUS_CHARS);
    }
}
