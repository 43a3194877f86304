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

pub mod config;
pub mod digest;
pub mod http;
pub mod rate_limit;
pub mod retry;
pub mod sinks;
pub mod worker;

pub use worker::{SinkWorker, WorkerSettings, Workers, spawn_workers};

use crate::police::alert::Alert;

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
