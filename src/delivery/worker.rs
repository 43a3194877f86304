//! One delivery worker per sink: an outbox reader in the sink's consumer group.
//!
//! Invariants:
//! - a record is acknowledged in `sink:<name>` only after the sink took its message, after
//!   it was written to the sink's dead letters, or at once when it is not routed to the
//!   sink (the record's `sinks` does not name it); nothing is dropped
//! - a message is tried at most `max_attempts` times; a permanent refusal or the last
//!   failed attempt sends each of its records to `logsentinel:dead:sink:<name>` with the
//!   last status and the attempts made (counted by this worker: a peer that takes a record
//!   over after a crash counts from 1 again)
//! - an attempt in flight is never cut by a stop: a stop is honoured between attempts and
//!   during waits, and records not delivered stay pending for the next reader
//! - records this worker holds (waiting for the rate limit or a retry) are kept alive, so
//!   peers claim only records of dead workers (idle longer than the police's claim idle)
//! - the worker has its own Redis connection and task: ingestion never waits for it, and a
//!   dead receiver only grows this sink's backlog (pending plus not yet read)
//! - one message at a time per worker: a failing message holds back those behind it, which
//!   keeps the order of alerts and their folding into digests simple
//!
//! The runtime is single-threaded (see `main.rs`): the worker's CPU work per message is a
//! JSON parse per record and one serialisation per message.

use std::time::Duration;

use redis::RedisError;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::config::{SetupError, SinkConfig};
use super::digest::{Outgoing, Queued, Waiting};
use super::rate_limit::{Permit, RateLimiter};
use super::retry::{RetryPolicy, jitter_unit};
use super::{AlertSink, SinkError};
use crate::broker::errors::{Failure, classify, redact_url};
use crate::broker::keys::Keys;
use crate::broker::outbox::{self, DeadRecord};
use crate::broker::stream::{self, StreamEntry};
use crate::broker::{self, Backoff, Connection};
use crate::police::alert::Alert;

/// Records held in memory per worker (waiting for the rate limit or behind a retried
/// message). Beyond it the worker stops reading; the rest wait in the stream. A record is
/// one to a few KiB, so this bounds a worker's memory to about 10 MiB.
pub const MAX_WAITING_RECORDS: usize = 5000;
/// XAUTOCLAIM rounds per maintenance, so that claiming cannot starve delivery.
const MAX_CLAIM_ROUNDS: usize = 10;

/// What every worker of one police shares.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub redis_url: String,
    pub keys: Keys,
    /// The police's consumer name: the same name in every sink's group.
    pub consumer: String,
    /// Records idle this long on another consumer are claimed (the police's `--claim-idle`).
    pub claim_idle: Duration,
    /// Period of claiming (the police's `--maintenance-interval`).
    pub maintenance_interval: Duration,
    /// Longest blocking read (the police's `--block`): bounds how long a stop waits.
    pub block: Duration,
    /// Records read per call (the police's `--read-count`).
    pub read_count: usize,
    /// Trim the alerts stream below what every group on it has delivered and acknowledged
    /// (the police's `--trim`).
    pub trim: bool,
    /// How long delivered records stay (the police's `--alerts-retention`).
    pub alerts_retention: Duration,
}

/// One sink with its delivery policy.
pub struct SinkWorker {
    pub name: String,
    pub sink: Box<dyn AlertSink>,
    pub retry: RetryPolicy,
    pub rate_limit: Option<RateLimiter>,
    /// Longest one attempt may take; a slower one counts as a retryable timeout.
    pub timeout: Duration,
}

impl SinkWorker {
    /// Builds the sink of a `[sinks.NAME]` table (see [`super::sinks::build`]).
    pub async fn from_config(name: &str, config: &SinkConfig) -> Result<SinkWorker, SetupError> {
        let sink = super::sinks::build(name, config).await?;
        Ok(SinkWorker {
            name: name.to_string(),
            sink,
            retry: RetryPolicy {
                max_attempts: config.max_attempts(),
            },
            rate_limit: config.rate_limit().as_ref().map(RateLimiter::new),
            // The HTTP client bounds its own requests by the same timeout; this outer bound
            // also covers the file and console sinks and any time spent around the request.
            timeout: config.timeout() + Duration::from_secs(1),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("delivery to sink {sink}: redis at {redis_url} refused a command")]
    Refused {
        sink: String,
        redis_url: String,
        #[source]
        source: RedisError,
    },
    #[error("delivery worker of sink {sink} panicked")]
    Panicked { sink: String },
}

/// The running workers of one police.
pub struct Workers {
    tasks: JoinSet<Result<(), WorkerError>>,
    /// Sink of each task, to name a worker that panicked.
    sinks: std::collections::HashMap<tokio::task::Id, String>,
    stop: CancellationToken,
}

impl Workers {
    /// Asks every worker to stop (after its attempt in flight) and waits for all of them.
    /// The first failure is returned; a panicked worker is a failure too.
    pub async fn stop_and_wait(mut self) -> Result<(), WorkerError> {
        self.stop.cancel();
        let mut first_failure = None;
        while let Some(joined) = self.tasks.join_next_with_id().await {
            let outcome = match joined {
                Ok((_, outcome)) => outcome,
                Err(join_error) => Err(WorkerError::Panicked {
                    sink: self.sinks.get(&join_error.id()).cloned().unwrap_or_default(),
                }),
            };
            if let Err(failure) = outcome {
                first_failure.get_or_insert(failure);
            }
        }
        first_failure.map_or(Ok(()), Err)
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

/// Starts one task per sink. `stop` ends them (after the attempts in flight); a worker
/// that Redis refuses (permissions, key types) cancels `on_refusal`, so the police stops
/// with the reason instead of running on without delivery.
pub fn spawn_workers(
    settings: WorkerSettings,
    workers: Vec<SinkWorker>,
    stop: CancellationToken,
    on_refusal: CancellationToken,
) -> Workers {
    let mut tasks = JoinSet::new();
    let mut sinks = std::collections::HashMap::new();
    for worker in workers {
        let settings = settings.clone();
        let stop = stop.clone();
        let on_refusal = on_refusal.clone();
        let sink = worker.name.clone();
        let task = tasks.spawn(async move {
            let outcome = run(&worker, &settings, &stop).await;
            if outcome.is_err() {
                on_refusal.cancel();
            }
            outcome
        });
        sinks.insert(task.id(), sink);
    }
    Workers { tasks, sinks, stop }
}

/// Sessions until stopped; an outage ends a session and a new one starts after a backoff.
async fn run(worker: &SinkWorker, settings: &WorkerSettings, stop: &CancellationToken) -> Result<(), WorkerError> {
    info!(sink = %worker.name, group = %Keys::sink_group(&worker.name), "delivery worker started");
    for outcome in ["delivered", "dead_letter", "retry"] {
        metrics::counter!(
            crate::observability::names::SINK_DELIVERIES_TOTAL,
            "sink" => worker.name.clone(),
            "outcome" => outcome
        )
        .increment(0);
    }
    let mut backoff = Backoff::new("delivery", &settings.redis_url);
    let mut totals = Totals::default();
    let outcome = loop {
        let mut session = Session {
            worker,
            settings,
            stop,
            group: Keys::sink_group(&worker.name),
            waiting: Waiting::default(),
            in_flight: Vec::new(),
            limited: false,
            next_claim: Instant::now(),
            next_keep_alive: Instant::now() + keep_alive_interval(settings),
            totals: &mut totals,
        };
        match session.run(&mut backoff).await {
            Ok(()) => break Ok(()),
            // The group was destroyed under us (an operator resetting the sink): the next
            // session creates it again at id 0.
            Err(error) if error.code() == Some("NOGROUP") => {
                warn!(sink = %worker.name, "the sink's consumer group disappeared; creating it again");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.cancelled() => break Ok(()),
                }
            }
            Err(error) if classify(&error) == Failure::Refused => {
                error!(sink = %worker.name, error = %error, "redis refused a delivery command; stopping");
                break Err(WorkerError::Refused {
                    sink: worker.name.clone(),
                    redis_url: redact_url(&settings.redis_url),
                    source: error,
                });
            }
            Err(error) => {
                let delay = backoff.failed(&error);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => break Ok(()),
                }
            }
        }
    };
    info!(
        sink = %worker.name,
        delivered = totals.delivered,
        messages = totals.messages,
        dead = totals.dead,
        "delivery worker stopped"
    );
    outcome
}

/// Records idle on our consumer are refreshed three times per claim idle time, so a live
/// worker's records are never old enough to be claimed.
fn keep_alive_interval(settings: &WorkerSettings) -> Duration {
    (settings.claim_idle / 3).max(Duration::from_millis(100))
}

#[derive(Debug, Default)]
struct Totals {
    /// Alerts delivered (a digest counts each of its alerts).
    delivered: u64,
    messages: u64,
    dead: u64,
}

/// Whether a wait ran to its end or was cut by a stop.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Stopped,
}

struct Session<'a> {
    worker: &'a SinkWorker,
    settings: &'a WorkerSettings,
    stop: &'a CancellationToken,
    group: String,
    waiting: Waiting,
    /// Entry ids of the message being delivered (kept alive like the waiting ones).
    in_flight: Vec<String>,
    /// The rate limit was hit and the backlog is not gone yet: fold into digests.
    limited: bool,
    next_claim: Instant,
    next_keep_alive: Instant,
    totals: &'a mut Totals,
}

impl Session<'_> {
    async fn run(&mut self, backoff: &mut Backoff) -> Result<(), RedisError> {
        let mut connection = broker::connect(&self.settings.redis_url).await?;
        outbox::ensure_sink_group(&mut connection, &self.settings.keys, &self.group).await?;
        backoff.succeeded();
        self.read_own_pending(&mut connection).await?;
        loop {
            if self.stop.is_cancelled() {
                self.leave(&mut connection).await?;
                return Ok(());
            }
            self.maintain(&mut connection).await?;
            if self.waiting.is_empty() {
                self.limited = false;
                let block = self
                    .settings
                    .block
                    .min(self.next_claim.saturating_duration_since(Instant::now()));
                self.read_new(&mut connection, block).await?;
                continue;
            }
            if let Some(limiter) = &self.worker.rate_limit
                && let Permit::Denied { next_period_in } = limiter
                    .take(&mut connection, &self.settings.keys, &self.worker.name)
                    .await?
            {
                self.limited = true;
                self.pause(&mut connection, next_period_in).await?;
                continue;
            }
            let max_alerts = self.worker.sink.max_alerts_per_message();
            let Some(outgoing) = self.waiting.take_message(self.limited, max_alerts) else {
                continue;
            };
            if self.send(&mut connection, outgoing).await? == Flow::Stopped {
                self.leave(&mut connection).await?;
                return Ok(());
            }
        }
    }

    /// Records this consumer name held when an earlier session ended (a Redis outage, or
    /// a restart under the same `--consumer`).
    async fn read_own_pending(&mut self, connection: &mut Connection) -> Result<(), RedisError> {
        let mut after_id = "0-0".to_string();
        loop {
            let entries = outbox::read(
                connection,
                &self.settings.keys,
                &self.group,
                &self.settings.consumer,
                &after_id,
                self.settings.read_count,
                None,
            )
            .await?;
            let Some(last) = entries.last() else {
                return Ok(());
            };
            after_id = last.id.clone();
            self.intake(connection, entries).await?;
        }
    }

    fn room(&self) -> usize {
        MAX_WAITING_RECORDS.saturating_sub(self.waiting.len() + self.in_flight.len())
    }

    /// New records (`>`), blocking up to `block` (at least 1 ms); none while the queue is full.
    async fn read_new(&mut self, connection: &mut Connection, block: Duration) -> Result<(), RedisError> {
        let room = self.room();
        if room == 0 {
            self.sleep(block).await;
            return Ok(());
        }
        let block_ms = block.as_millis().clamp(1, u128::from(u32::MAX)) as u64;
        let entries = outbox::read(
            connection,
            &self.settings.keys,
            &self.group,
            &self.settings.consumer,
            ">",
            self.settings.read_count.min(room),
            Some(block_ms),
        )
        .await?;
        self.intake(connection, entries).await
    }

    /// Sorts records read: not for this sink → acked at once; unreadable → dead letters
    /// with the reason; the rest wait for delivery.
    async fn intake(&mut self, connection: &mut Connection, entries: Vec<StreamEntry>) -> Result<(), RedisError> {
        let mut not_routed: Vec<String> = Vec::new();
        let mut unreadable: Vec<(String, String, String, String)> = Vec::new();
        for entry in entries {
            let Some(fields) = entry.fields else {
                // Deleted from the stream while pending: nothing left to deliver.
                not_routed.push(entry.id);
                continue;
            };
            let field = |name: &str| {
                fields
                    .iter()
                    .find(|(key, _)| key == name)
                    .map(|(_, value)| value.clone())
            };
            let alert_id = field("id").unwrap_or_default();
            let Some(raw) = field("alert") else {
                unreadable.push((
                    entry.id,
                    alert_id,
                    String::new(),
                    "unreadable record: no alert field".into(),
                ));
                continue;
            };
            let alert: Alert = match serde_json::from_str(&raw) {
                Ok(alert) => alert,
                Err(parse_error) => {
                    let reason = format!("unreadable record: {parse_error}");
                    unreadable.push((entry.id, alert_id, raw, reason));
                    continue;
                }
            };
            if !alert.sinks.contains(&self.worker.name) {
                not_routed.push(entry.id);
                continue;
            }
            self.waiting.push(Queued {
                entry_id: entry.id,
                raw,
                alert,
            });
        }
        let not_routed_ids: Vec<&str> = not_routed.iter().map(String::as_str).collect();
        outbox::ack(connection, &self.settings.keys, &self.group, &not_routed_ids).await?;
        if !unreadable.is_empty() {
            let records: Vec<DeadRecord<'_>> = unreadable
                .iter()
                .map(|(entry_id, alert_id, raw, reason)| DeadRecord {
                    entry_id,
                    alert_id,
                    alert_json: raw,
                    status: reason,
                    attempts: 0,
                })
                .collect();
            let written = self.write_dead_letters(connection, &records).await?;
            warn!(sink = %self.worker.name, records = written, "unreadable outbox records sent to the sink's dead letters");
        }
        Ok(())
    }

    /// Writes records to the sink's dead letters, acknowledging them in its group, and
    /// counts them: the one way a record leaves this worker undelivered.
    async fn write_dead_letters(
        &mut self,
        connection: &mut Connection,
        records: &[DeadRecord<'_>],
    ) -> Result<u64, RedisError> {
        let written = outbox::dead_letter(
            connection,
            &self.settings.keys,
            &self.worker.name,
            &self.group,
            &self.settings.consumer,
            records,
        )
        .await?;
        self.totals.dead += written;
        Ok(written)
    }

    /// Keeps our records alive and claims records of dead peers, each when due.
    async fn maintain(&mut self, connection: &mut Connection) -> Result<(), RedisError> {
        let now = Instant::now();
        if now >= self.next_keep_alive {
            let held: Vec<&str> = self
                .waiting
                .entry_ids()
                .chain(self.in_flight.iter().map(String::as_str))
                .collect();
            let lost = outbox::keep_pending(
                connection,
                &self.settings.keys,
                &self.group,
                &self.settings.consumer,
                &held,
            )
            .await?;
            if !lost.is_empty() {
                warn!(sink = %self.worker.name, records = lost.len(), "records were claimed by another police");
                self.waiting.forget(&lost);
            }
            self.next_keep_alive = Instant::now() + keep_alive_interval(self.settings);
        }
        if now >= self.next_claim {
            self.claim(connection).await?;
            if self.settings.trim {
                self.trim_delivered(connection).await?;
            }
            self.next_claim = Instant::now() + self.settings.maintenance_interval;
        }
        Ok(())
    }

    /// The outbox keeps a record until every group on it took it, then for the retention,
    /// or not at all once Redis is past 90 % of maxmemory: without the trim it would grow
    /// for good and, under maxmemory, stall ingestion.
    async fn trim_delivered(&mut self, connection: &mut Connection) -> Result<(), RedisError> {
        let keep_since = if broker::memory_share(connection).await? >= broker::STATE_MEMORY_SHARE {
            None
        } else {
            let now_ms = crate::police::rules::window::now_ms().max(0) as u64;
            Some(now_ms.saturating_sub(self.settings.alerts_retention.as_millis() as u64))
        };
        let trimmed = stream::trim_acknowledged_before(connection, &self.settings.keys.alerts, keep_since).await?;
        if trimmed > 0 {
            debug!(sink = %self.worker.name, trimmed, "trimmed delivered alert records");
        }
        Ok(())
    }

    async fn claim(&mut self, connection: &mut Connection) -> Result<(), RedisError> {
        let min_idle_ms = self.settings.claim_idle.as_millis() as u64;
        let mut cursor = "0-0".to_string();
        for _ in 0..MAX_CLAIM_ROUNDS {
            let room = self.room();
            if room == 0 {
                return Ok(());
            }
            let claimed = outbox::claim_idle(
                connection,
                &self.settings.keys,
                &self.group,
                &self.settings.consumer,
                min_idle_ms,
                &cursor,
                self.settings.read_count.min(room),
            )
            .await?;
            if !claimed.entries.is_empty() {
                info!(sink = %self.worker.name, records = claimed.entries.len(), "claimed records idle on another police");
                self.intake(connection, claimed.entries).await?;
            }
            if claimed.next_cursor == "0-0" {
                return Ok(());
            }
            cursor = claimed.next_cursor;
        }
        Ok(())
    }

    /// Waits `duration`, reading new records meanwhile (they may fold into the next
    /// digest) and keeping ours alive. `Stopped` when a stop came.
    async fn pause(&mut self, connection: &mut Connection, duration: Duration) -> Result<Flow, RedisError> {
        let deadline = Instant::now() + duration;
        loop {
            if self.stop.is_cancelled() {
                return Ok(Flow::Stopped);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Flow::Continue);
            }
            self.maintain(connection).await?;
            let until_due = deadline
                .min(self.next_keep_alive)
                .min(self.next_claim)
                .saturating_duration_since(Instant::now());
            let block = self.settings.block.min(until_due).max(Duration::from_millis(1));
            self.read_new(connection, block).await?;
        }
    }

    /// Sleeps, cut short by a stop.
    async fn sleep(&self, duration: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(duration) => {}
            _ = self.stop.cancelled() => {}
        }
    }

    /// Delivers one message with retries; acks or dead-letters its records.
    async fn send(&mut self, connection: &mut Connection, outgoing: Outgoing) -> Result<Flow, RedisError> {
        debug_assert!(!outgoing.is_empty());
        self.in_flight = outgoing.entry_ids.clone();
        let mut attempts: u32 = 0;
        let flow = loop {
            attempts += 1;
            if attempts > 1 && self.wait_for_permit(connection).await? == Flow::Stopped {
                break Flow::Stopped;
            }
            let message = outgoing.message();
            // Not raced against a stop: an attempt runs to its end or its timeout.
            let attempt = match tokio::time::timeout(self.worker.timeout, self.worker.sink.deliver(&message)).await {
                Ok(result) => result,
                Err(_) => Err(SinkError::Retryable {
                    sink: self.worker.name.clone(),
                    status: format!("timeout after {:?}", self.worker.timeout),
                    retry_after: None,
                }),
            };
            // The status goes to the log and the dead letters: one line, bounded (the sinks
            // show theirs so already; showing twice changes nothing).
            let attempt = attempt.map_err(SinkError::with_shown_status);
            match attempt {
                Ok(()) => {
                    let ids: Vec<&str> = outgoing.entry_ids.iter().map(String::as_str).collect();
                    outbox::ack(connection, &self.settings.keys, &self.group, &ids).await?;
                    self.totals.delivered += outgoing.len() as u64;
                    self.totals.messages += 1;
                    self.count_deliveries("delivered", outgoing.len());
                    break Flow::Continue;
                }
                Err(SinkError::Permanent { status, .. }) => {
                    self.count_deliveries("dead_letter", outgoing.len());
                    self.dead_letter(connection, &outgoing, &status, attempts).await?;
                    break Flow::Continue;
                }
                Err(SinkError::Retryable {
                    status, retry_after, ..
                }) => {
                    if attempts >= self.worker.retry.max_attempts {
                        self.count_deliveries("dead_letter", outgoing.len());
                        self.dead_letter(connection, &outgoing, &status, attempts).await?;
                        break Flow::Continue;
                    }
                    self.count_deliveries("retry", outgoing.len());
                    let delay = self.worker.retry.delay(attempts, retry_after, jitter_unit());
                    warn!(
                        sink = %self.worker.name,
                        message_id = %message.id(),
                        alerts = outgoing.len(),
                        attempts,
                        status = %status,
                        retry_in_ms = delay.as_millis() as u64,
                        "delivery failed, will retry"
                    );
                    if self.pause(connection, delay).await? == Flow::Stopped {
                        break Flow::Stopped;
                    }
                }
            }
        };
        self.in_flight.clear();
        Ok(flow)
    }

    /// Alerts of one attempt by outcome (`delivered`, `dead_letter`, `retry`); the sink names
    /// come from the rule file, a bounded set.
    fn count_deliveries(&self, outcome: &'static str, alerts: usize) {
        metrics::counter!(
            crate::observability::names::SINK_DELIVERIES_TOTAL,
            "sink" => self.worker.name.clone(),
            "outcome" => outcome
        )
        .increment(alerts as u64);
    }

    /// Before a retry: a permit of the rate limit, if the sink has one.
    async fn wait_for_permit(&mut self, connection: &mut Connection) -> Result<Flow, RedisError> {
        let Some(limiter) = self.worker.rate_limit.clone() else {
            return Ok(Flow::Continue);
        };
        loop {
            match limiter.take(connection, &self.settings.keys, &self.worker.name).await? {
                Permit::Granted => return Ok(Flow::Continue),
                Permit::Denied { next_period_in } => {
                    if self.pause(connection, next_period_in).await? == Flow::Stopped {
                        return Ok(Flow::Stopped);
                    }
                }
            }
        }
    }

    async fn dead_letter(
        &mut self,
        connection: &mut Connection,
        outgoing: &Outgoing,
        status: &str,
        attempts: u32,
    ) -> Result<(), RedisError> {
        let records: Vec<DeadRecord<'_>> = outgoing
            .entry_ids
            .iter()
            .zip(&outgoing.raws)
            .zip(&outgoing.alerts)
            .map(|((entry_id, raw), alert)| DeadRecord {
                entry_id,
                alert_id: &alert.alert_id,
                alert_json: raw,
                status,
                attempts,
            })
            .collect();
        self.write_dead_letters(connection, &records).await?;
        error!(
            sink = %self.worker.name,
            alerts = outgoing.len(),
            attempts,
            status,
            dead_letters = %self.settings.keys.sink_dead(&self.worker.name),
            "delivery given up, alerts sent to the sink's dead letters"
        );
        Ok(())
    }

    /// On a stop: leave the group if nothing is pending on us (else a peer claims it).
    async fn leave(&mut self, connection: &mut Connection) -> Result<(), RedisError> {
        let keys = &self.settings.keys;
        if !outbox::leave_group_if_idle(connection, keys, &self.group, &self.settings.consumer).await? {
            // Counted in Redis: the worker's queue misses the message that was in flight.
            let pending = outbox::pending_of(connection, keys, &self.group, &self.settings.consumer).await?;
            info!(
                sink = %self.worker.name,
                records = pending,
                "stopping with undelivered records; they stay pending for the next reader"
            );
        }
        Ok(())
    }
}
