//! Ships batches to Redis: pipelined XADD (stream) or one variadic LPUSH (list), through
//! the disk spool when Redis cannot take them.
//!
//! Invariants:
//! - a batch is settled `Stored` only once Redis replied OK to all of it, or once it is
//!   written to the spool; batches are settled in the order they came
//! - a partly failed pipeline is resent only for the entries that failed: what Redis took
//!   is counted and removed from the batch (or the record in replay) at once
//! - without a spool, a failed batch is resent after a capped exponential backoff (the
//!   queue fills and the sources wait); with one, it goes to the spool at once and every
//!   later batch follows it there until the spool is replayed, so order is kept: no batch
//!   is ever shipped ahead of a spooled one, also when the spool cannot take it (disk
//!   full, `when_full = block`: the batch waits in hand while the backlog is replayed)
//! - out of memory (`maxmemory`) is back-pressure, handled as an outage: hold or spool,
//!   retry. A refusal that retrying cannot heal (ACL, auth, a key of the wrong type)
//!   stops the agent with the command and key named; what was spooled stays there
//! - nothing over Redis's `proto-max-bulk-len` is sent (Redis would drop the connection):
//!   a packed entry is sent as single events, a single event goes to the dead-letter
//!   stream with its reason and its first 64 KiB
//! - at-least-once: a resend after a lost reply, or a replay interrupted by a crash, can
//!   write an entry twice; alert ids make the alerts of such twins count once
//! - entries are never trimmed here (no MAXLEN): trimming is the police's job and only
//!   removes what every group has acknowledged
//! - while the consumers are `max_lag` entries or more behind, nothing is sent: batches go
//!   to the spool, or (without one) are held so that the sources wait. The lag is read
//!   again before the entries shipped since the last read could reach `max_lag`, so the
//!   stream outgrows the limit by one batch at most
//! - after a stop is requested (or the sources ended, with a spool), Redis is retried for
//!   `shutdown_timeout`, no sleep or attempt runs past it; what is still unsent then is
//!   counted and reported, never dropped silently (with a spool it stays there and is
//!   replayed by the next run)
//! - spool writes, syncs and reads run on the blocking pool, never on the runtime thread

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::mpsc;
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::batcher::{Batch, Entry, Settled};
use super::spool::{Spool, Spooled};
use super::target::{ShipError, Target};
use crate::broker::errors::{self, Failure};
use crate::broker::keys::Keys;
use crate::event::Level;
use crate::observability::{health, names};
use crate::options::Transport;
use crate::options::WhenFull;
use metrics::{Counter, Gauge, counter, gauge};

/// What reached Redis, what went through the spool, and what could not be delivered.
#[derive(Debug, Default, Clone)]
pub struct ShipReport {
    pub entries: u64,
    pub events: u64,
    pub unsent_events: u64,
    pub spooled_events: u64,
    /// Events read back from the spool and shipped (part of `events`).
    pub replayed_events: u64,
    pub dropped_events: u64,
    /// Bytes left in the spool at exit, replayed by the next run.
    pub spool_bytes_left: u64,
    pub corrupt_spool_segments: u64,
    /// Spool writes that failed (a full disk) and were undone; their batches stayed in hand.
    pub spool_write_failures: u64,
    /// Events over Redis's `proto-max-bulk-len`, written to the dead-letter stream instead.
    pub dead_lettered_events: u64,
    /// Events of this run stored (in Redis or the spool) per level ([`Level::index`]).
    pub stored_per_level: [u64; Level::ALL.len()],
    /// Why the agent stopped early: Redis refused a command for good.
    pub refused: Option<String>,
}

/// Metric handles looked up once: recording is then one atomic add per batch.
struct ShipperMetrics {
    received_per_level: [Counter; Level::ALL.len()],
    batches: Counter,
    shipped_events: Counter,
    entries: Counter,
    replayed_events: Counter,
    spool_records_written: Counter,
    spool_bytes: Gauge,
    backpressure: Gauge,
    discarded_spool_full: Counter,
    discarded_unsent: Counter,
    dead_lettered_too_large: Counter,
    ship_errors: Counter,
    spool_errors: Counter,
}

impl ShipperMetrics {
    fn new() -> ShipperMetrics {
        let discarded = |reason: &'static str| counter!(names::AGENT_EVENTS_DISCARDED_TOTAL, "reason" => reason);
        ShipperMetrics {
            received_per_level: Level::ALL
                .map(|level| counter!(names::AGENT_EVENTS_RECEIVED_TOTAL, "level" => level.as_str())),
            batches: counter!(names::AGENT_BATCHES_TOTAL),
            shipped_events: counter!(names::AGENT_EVENTS_SHIPPED_TOTAL),
            entries: counter!(names::AGENT_ENTRIES_TOTAL),
            replayed_events: counter!(names::AGENT_SPOOL_EVENTS_REPLAYED_TOTAL),
            spool_records_written: counter!(names::AGENT_SPOOL_RECORDS_WRITTEN_TOTAL),
            spool_bytes: gauge!(names::AGENT_SPOOL_BYTES),
            backpressure: gauge!(names::AGENT_BACKPRESSURE),
            discarded_spool_full: discarded("spool_full"),
            discarded_unsent: discarded("unsent"),
            dead_lettered_too_large: discarded("too_large_for_redis"),
            ship_errors: counter!(names::ERRORS_TOTAL, "stage" => "ship"),
            spool_errors: counter!(names::ERRORS_TOTAL, "stage" => "spool"),
        }
    }

    /// A batch reached the shipper from the sources.
    fn received(&self, batch: &Batch) {
        self.batches.increment(1);
        for (counter, count) in self.received_per_level.iter().zip(batch.events_per_level) {
            if count > 0 {
                counter.increment(count);
            }
        }
    }
}

/// How often the consumers' lag is read while they keep up.
const LAG_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long to wait before reading the lag again while it is over the limit.
const LAG_WAIT: Duration = Duration::from_millis(200);
/// How often the open spool segment is synced to the disk.
const SPOOL_SYNC_INTERVAL: Duration = Duration::from_secs(1);
pub struct Shipper {
    target: Target,
    /// 0 = no limit.
    max_lag: u64,
    lag_over: bool,
    next_lag_check: Instant,
    /// The lag last read, plus the entries shipped since: the lag is read again as soon
    /// as this reaches `max_lag`, so the stream outgrows the limit by one batch at most.
    lag_estimate: u64,
    /// Set while batches are held and the sources must wait (the HTTP source answers 503).
    backpressure: Arc<AtomicBool>,
    /// `None` without a spool; also `None` for the moment a blocking task works on it.
    spool: Option<Spool>,
    when_full: WhenFull,
    /// The spooled record being replayed, with what Redis has not taken yet.
    replay_in_hand: Option<Spooled>,
    /// Set from a failed spool write to the next one that works: logged once each way.
    spool_write_failing: bool,
    last_sync: Instant,
    shutdown: CancellationToken,
    shutdown_timeout: Duration,
    /// Set when a stop is requested or (with a spool) the sources ended: no retry after it.
    stop_deadline: Option<Instant>,
    report: ShipReport,
    metrics: ShipperMetrics,
    /// The watchdog's view of this loop (see [`health`]).
    beat: Arc<health::Beat>,
}

enum Replay {
    Shipped,
    Empty,
    /// Redis down or consumers behind: try again at that instant.
    NotBefore(Instant),
}

impl Shipper {
    #[allow(clippy::too_many_arguments)] // one call site, every argument named there
    pub fn new(
        redis_url: String,
        keys: Keys,
        sink: Transport,
        agent_id: String,
        max_lag: u64,
        spool: Option<(Spool, WhenFull)>,
        backpressure: Arc<AtomicBool>,
        shutdown: CancellationToken,
        shutdown_timeout: Duration,
    ) -> Shipper {
        let (spool, when_full) = match spool {
            Some((spool, when_full)) => (Some(spool), when_full),
            None => (None, WhenFull::Block),
        };
        Shipper {
            target: Target::new(redis_url, keys, sink, agent_id),
            max_lag,
            lag_over: false,
            next_lag_check: Instant::now(),
            lag_estimate: 0,
            backpressure,
            spool,
            when_full,
            replay_in_hand: None,
            spool_write_failing: false,
            last_sync: Instant::now(),
            shutdown,
            shutdown_timeout,
            stop_deadline: None,
            report: ShipReport::default(),
            metrics: ShipperMetrics::new(),
            beat: health::beat("shipper"),
        }
    }

    /// Ships every batch from `batches` until the channel closes.
    pub async fn run(mut self, mut batches: mpsc::Receiver<Batch>) -> ShipReport {
        self.update_spool_gauge();
        if self.spool.is_some() {
            self.run_spooled(&mut batches).await;
        } else {
            self.run_in_memory(&mut batches).await;
        }
        if self.report.unsent_events > 0 {
            let why = if self.report.refused.is_some() {
                "events not delivered: redis refused them"
            } else {
                "events not delivered: redis did not take them before the stop deadline"
            };
            error!(unsent_events = self.report.unsent_events, "{why}");
        }
        if self.spool.is_some() {
            if let Err(error) = self.on_spool(|spool| spool.sync()).await {
                error!(error = %error, "cannot sync the spool");
            }
            let spool = self.spool.as_ref().expect("spooled mode");
            self.report.spool_bytes_left = spool.bytes();
            self.report.corrupt_spool_segments = spool.corrupt_segments;
            self.report.spool_write_failures = spool.write_failures;
            if !spool.is_empty() {
                warn!(
                    bytes = spool.bytes(),
                    "batches left in the spool, replayed at the next start"
                );
            }
        }
        health::retire(&self.beat);
        self.report
    }

    async fn run_in_memory(&mut self, batches: &mut mpsc::Receiver<Batch>) {
        loop {
            self.beat.wait_for_input();
            let Some(mut batch) = batches.recv().await else {
                break;
            };
            self.beat.tick();
            self.metrics.received(&batch);
            while self.report.refused.is_none() && !self.shutdown.is_cancelled() && !self.consumers_keep_up().await {
                self.set_backpressure(true);
                self.beat.tick();
                tokio::select! {
                    _ = tokio::time::sleep(LAG_WAIT) => {}
                    _ = self.shutdown.cancelled() => {}
                }
            }
            if self.ship_with_retry(&mut batch).await {
                self.set_backpressure(false);
                self.settle(&mut batch, Settled::Stored);
            } else {
                self.report.unsent_events += batch.event_count;
                self.metrics.discarded_unsent.increment(batch.event_count);
                self.settle(&mut batch, Settled::Unsent);
            }
        }
    }

    async fn run_spooled(&mut self, batches: &mut mpsc::Receiver<Batch>) {
        let mut open = true;
        loop {
            self.beat.tick();
            self.check_stop();
            if !self.has_backlog() {
                if !open {
                    break;
                }
                self.beat.wait_for_input();
                match batches.recv().await {
                    Some(batch) => self.accept(batch).await,
                    None => open = false,
                }
                continue;
            }
            // Backlog: new batches go behind it, then one record is replayed.
            if open {
                match batches.try_recv() {
                    Ok(batch) => {
                        self.accept(batch).await;
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                    Err(mpsc::error::TryRecvError::Empty) => {}
                }
            }
            if !open && self.stop_deadline.is_none() {
                // The sources ended: replay while Redis takes it, retry no longer than a stop.
                self.stop_deadline = Some(Instant::now() + self.shutdown_timeout);
            }
            let passed = self.stop_deadline.is_some_and(|deadline| Instant::now() >= deadline);
            match self.replay_one().await {
                Replay::Shipped => {
                    if !open && passed && self.shutdown.is_cancelled() {
                        break; // a stop request bounds the replay too
                    }
                }
                Replay::Empty => {
                    // Nothing readable (the open segment is empty): wait for a batch.
                    if !open {
                        break;
                    }
                    self.beat.wait_for_input();
                    match batches.recv().await {
                        Some(batch) => self.accept(batch).await,
                        None => open = false,
                    }
                }
                Replay::NotBefore(at) => {
                    // Stopping: what is in the spool is safe there, the next run replays it.
                    if !open && (passed || self.report.refused.is_some()) {
                        break;
                    }
                    let wake_at = self.stop_deadline.map_or(at, |deadline| at.min(deadline));
                    let watch_stop = self.stop_deadline.is_none();
                    tokio::select! {
                        _ = tokio::time::sleep_until(wake_at) => {}
                        batch = batches.recv(), if open => match batch {
                            Some(batch) => self.accept(batch).await,
                            None => open = false,
                        },
                        _ = self.shutdown.cancelled(), if watch_stop => {}
                    }
                }
            }
        }
    }

    /// Starts the stop deadline once a stop is requested; returns it.
    fn check_stop(&mut self) -> Option<Instant> {
        if self.shutdown.is_cancelled() && self.stop_deadline.is_none() {
            self.stop_deadline = Some(Instant::now() + self.shutdown_timeout);
        }
        self.stop_deadline
    }

    fn stop_deadline_passed(&mut self) -> bool {
        self.check_stop().is_some_and(|deadline| Instant::now() >= deadline)
    }

    /// Sleeps until `at`, the stop deadline or a stop request, whichever comes first.
    async fn pause_until(&mut self, at: Instant) {
        let deadline = self.check_stop();
        let wake_at = deadline.map_or(at, |deadline| at.min(deadline));
        tokio::select! {
            _ = tokio::time::sleep_until(wake_at) => {}
            _ = self.shutdown.cancelled(), if deadline.is_none() => {}
        }
    }

    fn update_spool_gauge(&self) {
        if let Some(spool) = &self.spool {
            self.metrics.spool_bytes.set(spool.bytes() as f64);
        }
    }

    /// Records in the spool, or a record in replay.
    fn has_backlog(&self) -> bool {
        self.replay_in_hand.is_some() || self.spool.as_ref().is_some_and(|spool| !spool.is_empty())
    }

    fn set_backpressure(&self, on: bool) {
        self.backpressure.store(on, Ordering::Relaxed);
        self.metrics.backpressure.set(if on { 1.0 } else { 0.0 });
    }

    fn settle(&mut self, batch: &mut Batch, settled: Settled) {
        if settled == Settled::Stored {
            for (stored, count) in self.report.stored_per_level.iter_mut().zip(batch.events_per_level) {
                *stored += count;
            }
        }
        batch.settle(settled);
    }

    /// Runs blocking spool I/O on the blocking pool, so that no source waits for the disk.
    async fn on_spool<T: Send + 'static>(&mut self, work: impl FnOnce(&mut Spool) -> T + Send + 'static) -> T {
        let mut spool = self
            .spool
            .take()
            .expect("spooled mode, and no other spool task running");
        let (spool, output) = tokio::task::spawn_blocking(move || {
            let output = work(&mut spool);
            (spool, output)
        })
        .await
        .expect("spool I/O never panics");
        self.spool = Some(spool);
        output
    }

    /// One attempt at `entries`; what Redis took is counted and removed from them. Returns
    /// the events that left `entries` and whether all did. A refusal stops the agent.
    async fn try_ship(&mut self, entries: &mut Vec<Entry>) -> (u64, bool) {
        if self.report.refused.is_some() {
            return (0, false);
        }
        // Only a stop request cuts an attempt; after the end of input a slow Redis that
        // answers is waited for (the deadline then bounds the retries, not the replay).
        let deadline = if self.shutdown.is_cancelled() {
            self.check_stop()
        } else {
            None
        };
        let attempt = self.target.ship(entries);
        let (delivered, result) = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, attempt).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    // Cut at the stop deadline; the entries may have reached Redis (at-least-once).
                    self.target.connection = None;
                    return (0, false);
                }
            },
            None => attempt.await,
        };
        self.report.entries += delivered.entries;
        self.report.events += delivered.events;
        self.report.dead_lettered_events += delivered.dead_lettered_events;
        self.metrics.entries.increment(delivered.entries);
        self.metrics.shipped_events.increment(delivered.events);
        if delivered.dead_lettered_events > 0 {
            self.metrics
                .dead_lettered_too_large
                .increment(delivered.dead_lettered_events);
        }
        self.lag_estimate += delivered.entries;
        let left_events = delivered.events + delivered.dead_lettered_events;
        match result {
            Ok(()) => (left_events, true),
            Err(failure) => {
                self.metrics.ship_errors.increment(1);
                if failure.failure == Failure::Refused {
                    self.refuse(&failure);
                }
                (left_events, false)
            }
        }
    }

    /// Redis refused for good: say what, and stop the agent.
    fn refuse(&mut self, failure: &ShipError) {
        let message = failure.describe();
        error!(redis_url = %errors::redact_url(&self.target.redis_url), "{message}; stopping");
        self.report.refused = Some(message);
        self.shutdown.cancel();
    }

    /// Ships `batch` directly when nothing waits in the spool and Redis is up, else spools it.
    async fn accept(&mut self, mut batch: Batch) {
        self.beat.tick();
        self.metrics.received(&batch);
        if batch.entries.is_empty() {
            self.settle(&mut batch, Settled::Stored);
            return;
        }
        let redis_may_be_up = self.target.retry_at.is_none_or(|at| Instant::now() >= at);
        if !self.has_backlog() && redis_may_be_up && self.report.refused.is_none() && self.consumers_keep_up().await {
            let (left_events, all) = self.try_ship(&mut batch.entries).await;
            batch.event_count -= left_events;
            if all {
                self.set_backpressure(false);
                self.settle(&mut batch, Settled::Stored);
                return;
            }
        }
        self.spool_batch(batch).await;
    }

    /// Writes `batch` to the spool. When the spool cannot take it (byte limit, or the disk),
    /// `drop_newest` drops it; `block` keeps it in hand and replays the backlog until it
    /// fits, so it never overtakes a spooled batch.
    async fn spool_batch(&mut self, mut batch: Batch) {
        let record_bytes = Spool::record_bytes(&batch);
        let mut warned_full = false;
        loop {
            // Waiting for room while Redis is down is progress for the watchdog: /healthz
            // must not depend on Redis.
            self.beat.tick();
            if self.spool.as_ref().expect("spooled mode").has_room(record_bytes) {
                let (returned, appended) = self
                    .on_spool(move |spool| {
                        let appended = spool.append(&batch);
                        (batch, appended)
                    })
                    .await;
                batch = returned;
                match appended {
                    Ok(_) => {
                        if self.spool_write_failing {
                            self.spool_write_failing = false;
                            info!("the spool takes batches again");
                        }
                        self.set_backpressure(false);
                        self.report.spooled_events += batch.event_count;
                        self.metrics.spool_records_written.increment(1);
                        self.update_spool_gauge();
                        if self.last_sync.elapsed() >= SPOOL_SYNC_INTERVAL {
                            self.last_sync = Instant::now();
                            if let Err(error) = self.on_spool(|spool| spool.sync()).await {
                                error!(error = %error, "cannot sync the spool");
                            }
                        }
                        self.settle(&mut batch, Settled::Stored);
                        return;
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::InvalidInput => {
                        warn!(error = %error, "batch too large for the spool: shipped once the spool is replayed");
                        self.ship_behind_backlog(batch).await;
                        return;
                    }
                    Err(error) => {
                        self.metrics.spool_errors.increment(1);
                        if !self.spool_write_failing {
                            self.spool_write_failing = true;
                            error!(error = %error, "cannot write to the spool, the batch stays in memory (undone, not stored)");
                        }
                    }
                }
            }
            match self.when_full {
                WhenFull::DropNewest => {
                    if self.report.dropped_events == 0 || self.report.dropped_events % 100_000 < batch.event_count {
                        warn!(
                            dropped_events = self.report.dropped_events + batch.event_count,
                            "spool full (size limit or disk): dropping the newest events (when_full = drop_newest)"
                        );
                    }
                    self.report.dropped_events += batch.event_count;
                    self.metrics.discarded_spool_full.increment(batch.event_count);
                    self.settle(&mut batch, Settled::Dropped);
                    return;
                }
                WhenFull::Block => {
                    self.set_backpressure(true);
                    if !warned_full {
                        warn!(
                            "spool full (size limit or disk): sources wait until the spool is replayed (when_full = block)"
                        );
                        warned_full = true;
                    }
                    let Some(replay) = self.replay_ahead_of(&mut batch).await else {
                        return;
                    };
                    match replay {
                        Replay::Shipped => {}
                        Replay::Empty => {
                            // Nothing spooled to keep ahead of it (the disk is full of
                            // other files): send it directly, else retry the write later.
                            let (left_events, all) = self.try_ship(&mut batch.entries).await;
                            batch.event_count -= left_events;
                            if all {
                                self.set_backpressure(false);
                                self.settle(&mut batch, Settled::Stored);
                                return;
                            }
                            let retry_at = self
                                .target
                                .retry_at
                                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
                            self.pause_until(retry_at).await;
                        }
                        Replay::NotBefore(at) => self.pause_until(at).await,
                    }
                }
            }
        }
    }

    /// Ships a batch the spool cannot hold, after everything spooled before it.
    async fn ship_behind_backlog(&mut self, mut batch: Batch) {
        while self.has_backlog() {
            self.beat.tick();
            let Some(replay) = self.replay_ahead_of(&mut batch).await else {
                return;
            };
            match replay {
                Replay::Shipped => {}
                Replay::Empty => break,
                Replay::NotBefore(at) => self.pause_until(at).await,
            }
        }
        if self.ship_with_retry(&mut batch).await {
            self.set_backpressure(false);
            self.settle(&mut batch, Settled::Stored);
        } else {
            self.report.unsent_events += batch.event_count;
            self.metrics.discarded_unsent.increment(batch.event_count);
            self.settle(&mut batch, Settled::Unsent);
        }
    }

    /// One step of waiting behind the spooled backlog: gives `batch` up (unsent) once the
    /// stop deadline passed or Redis refused us (`None`), else replays one spooled record.
    async fn replay_ahead_of(&mut self, batch: &mut Batch) -> Option<Replay> {
        if self.stop_deadline_passed() || self.report.refused.is_some() {
            self.report.unsent_events += batch.event_count;
            self.metrics.discarded_unsent.increment(batch.event_count);
            self.settle(batch, Settled::Unsent);
            return None;
        }
        Some(self.replay_one().await)
    }

    /// Ships the oldest spooled record (or what is left of it), if Redis and the consumers
    /// allow.
    async fn replay_one(&mut self) -> Replay {
        if self.report.refused.is_some() {
            return Replay::NotBefore(Instant::now() + Duration::from_secs(3600));
        }
        if let Some(at) = self.target.retry_at
            && Instant::now() < at
        {
            return Replay::NotBefore(at);
        }
        if !self.consumers_keep_up().await {
            return Replay::NotBefore(Instant::now() + LAG_WAIT);
        }
        let mut record = match self.replay_in_hand.take() {
            Some(record) => record,
            None => match self.on_spool(|spool| spool.peek()).await {
                Ok(Some(record)) => record,
                Ok(None) => return Replay::Empty,
                Err(error) => {
                    error!(error = %error, "cannot read the spool");
                    return Replay::NotBefore(Instant::now() + Duration::from_secs(1));
                }
            },
        };
        let (left_events, all) = self.try_ship(&mut record.entries).await;
        record.event_count -= left_events;
        self.report.replayed_events += left_events;
        self.metrics.replayed_events.increment(left_events);
        if !all {
            // Kept in hand: only what Redis did not take is sent again.
            self.replay_in_hand = Some(record);
            return Replay::NotBefore(self.target.retry_at.unwrap_or_else(Instant::now));
        }
        if let Err(error) = self.on_spool(|spool| spool.consume()).await {
            self.metrics.spool_errors.increment(1);
            error!(error = %error, "cannot move the spool cursor");
        }
        self.update_spool_gauge();
        Replay::Shipped
    }

    /// False while the consumers are `max_lag` entries or more behind. The lag is read
    /// every second while they keep up, and sooner once what was shipped since could
    /// have reached the limit; outages reading it are left to the shipping that follows
    /// (and its backoff); a refusal stops the agent.
    async fn consumers_keep_up(&mut self) -> bool {
        let estimate_reached = !self.lag_over && self.lag_estimate >= self.max_lag;
        if self.max_lag == 0 || (Instant::now() < self.next_lag_check && !estimate_reached) {
            return !self.lag_over;
        }
        let lag = match self.target.consumer_lag().await {
            Ok(lag) => lag,
            Err(failure) if failure.failure == Failure::Refused => {
                self.refuse(&failure);
                return false;
            }
            Err(_) => return true,
        };
        let over = lag >= self.max_lag;
        self.lag_estimate = lag;
        if over && !self.lag_over {
            warn!(lag, max_lag = self.max_lag, "consumers are behind, holding batches");
        } else if !over && self.lag_over {
            info!("consumers caught up, shipping again");
        }
        self.lag_over = over;
        self.next_lag_check = Instant::now() + if over { LAG_WAIT } else { LAG_CHECK_INTERVAL };
        !over
    }

    /// Ships `batch` (what is left of it after each attempt), retrying with backoff.
    /// Returns false once Redis refused, or when a stop was requested and
    /// `shutdown_timeout` has passed.
    async fn ship_with_retry(&mut self, batch: &mut Batch) -> bool {
        loop {
            let (left_events, all) = self.try_ship(&mut batch.entries).await;
            batch.event_count -= left_events;
            if all {
                return true;
            }
            if self.report.refused.is_some() || self.stop_deadline_passed() {
                return false;
            }
            self.set_backpressure(true);
            self.beat.tick();
            let retry_at = self.target.retry_at.unwrap_or_else(Instant::now);
            self.pause_until(retry_at).await;
        }
    }
}
