//! Ships batches to Redis: pipelined XADD (stream) or one variadic LPUSH (list), through
//! the disk spool when Redis cannot take them.
//!
//! Invariants:
//! - a batch is settled `Stored` only once Redis replied OK to all of it, or once it is
//!   written to the spool; batches are settled in the order they came
//! - without a spool, a failed batch is resent after a capped exponential backoff (the
//!   queue fills and the sources wait); with one, it goes to the spool at once and every
//!   later batch follows it there until the spool is replayed, so order is kept
//! - at-least-once: a resend after a lost reply, or a replay interrupted by a crash, can
//!   write an entry twice; alert ids make the alerts of such twins count once
//! - entries are never trimmed here (no MAXLEN): trimming is the police's job and only
//!   removes what every group has acknowledged
//! - while the consumers are `max_lag` entries or more behind, nothing is sent: batches go
//!   to the spool, or (without one) are held so that the sources wait
//! - after a stop is requested, retries go on for `shutdown_timeout`; what is still unsent
//!   then is counted and reported, never dropped silently (with a spool it stays there and
//!   is replayed by the next run)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use redis::RedisError;
use tokio::sync::mpsc;
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::batcher::{Batch, Entry, Settled};
use super::spool::{Spool, WhenFull};
use crate::broker::{self, Backoff, Connection, keys::Keys};
use crate::cli::Transport;
use crate::event::ENCODING_VERSION;

/// What reached Redis, what went through the spool, and what could not be delivered.
#[derive(Debug, Default, Clone, Copy)]
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
}

/// How often the consumers' lag is read while they keep up.
const LAG_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long to wait before reading the lag again while it is over the limit.
const LAG_WAIT: Duration = Duration::from_millis(200);
/// How often the open spool segment is synced to the disk.
const SPOOL_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Redis as the shipper sees it: one connection, and the backoff of failed attempts.
struct Target {
    redis_url: String,
    keys: Keys,
    sink: Transport,
    connection: Option<Connection>,
    backoff: Backoff,
    /// No Redis attempt before this instant (backoff after a failure).
    retry_at: Option<Instant>,
}

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
    spool: Option<(Spool, WhenFull)>,
    last_sync: Instant,
    report: ShipReport,
}

enum Replay {
    Shipped,
    Empty,
    /// Redis down or consumers behind: try again at that instant.
    NotBefore(Instant),
}

impl Shipper {
    pub fn new(
        redis_url: String,
        keys: Keys,
        sink: Transport,
        max_lag: u64,
        spool: Option<(Spool, WhenFull)>,
        backpressure: Arc<AtomicBool>,
    ) -> Shipper {
        let backoff = Backoff::new("agent", &redis_url);
        Shipper {
            target: Target {
                redis_url,
                keys,
                sink,
                connection: None,
                backoff,
                retry_at: None,
            },
            max_lag,
            lag_over: false,
            next_lag_check: Instant::now(),
            lag_estimate: 0,
            backpressure,
            spool,
            last_sync: Instant::now(),
            report: ShipReport::default(),
        }
    }

    /// Ships every batch from `batches` until the channel closes.
    pub async fn run(
        mut self,
        mut batches: mpsc::Receiver<Batch>,
        shutdown: CancellationToken,
        shutdown_timeout: Duration,
    ) -> ShipReport {
        if self.spool.is_some() {
            self.run_spooled(&mut batches, &shutdown, shutdown_timeout).await;
        } else {
            self.run_in_memory(&mut batches, &shutdown, shutdown_timeout).await;
        }
        if self.report.unsent_events > 0 {
            error!(
                unsent_events = self.report.unsent_events,
                "redis still unreachable at the stop deadline, events not delivered"
            );
        }
        if let Some((spool, _)) = self.spool.as_mut() {
            if let Err(error) = spool.sync() {
                error!(error = %error, "cannot sync the spool");
            }
            self.report.spool_bytes_left = spool.bytes();
            self.report.corrupt_spool_segments = spool.corrupt_segments;
            if !spool.is_empty() {
                warn!(
                    bytes = spool.bytes(),
                    "batches left in the spool, replayed at the next start"
                );
            }
        }
        self.report
    }

    async fn run_in_memory(
        &mut self,
        batches: &mut mpsc::Receiver<Batch>,
        shutdown: &CancellationToken,
        shutdown_timeout: Duration,
    ) {
        let mut gave_up = false;
        while let Some(mut batch) = batches.recv().await {
            if !gave_up {
                while !shutdown.is_cancelled() && !self.consumers_keep_up().await {
                    self.set_backpressure(true);
                    tokio::select! {
                        _ = tokio::time::sleep(LAG_WAIT) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
            }
            if !gave_up && self.ship_with_retry(&batch, shutdown, shutdown_timeout).await {
                self.shipped(batch.entries.len() as u64, batch.event_count);
                self.set_backpressure(false);
                batch.settle(Settled::Stored);
                continue;
            }
            gave_up = true;
            self.report.unsent_events += batch.event_count;
            batch.settle(Settled::Unsent);
        }
    }

    async fn run_spooled(
        &mut self,
        batches: &mut mpsc::Receiver<Batch>,
        shutdown: &CancellationToken,
        shutdown_timeout: Duration,
    ) {
        let mut open = true;
        let mut stop_deadline: Option<Instant> = None;
        loop {
            if shutdown.is_cancelled() && stop_deadline.is_none() {
                stop_deadline = Some(Instant::now() + shutdown_timeout);
            }
            if !self.has_backlog() {
                if !open {
                    break;
                }
                match batches.recv().await {
                    Some(batch) => self.accept(batch, shutdown, stop_deadline).await,
                    None => open = false,
                }
                continue;
            }
            // Backlog: new batches go behind it, then one record is replayed.
            if open {
                match batches.try_recv() {
                    Ok(batch) => {
                        self.accept(batch, shutdown, stop_deadline).await;
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                    Err(mpsc::error::TryRecvError::Empty) => {}
                }
            }
            match self.replay_one().await {
                Replay::Shipped | Replay::Empty => {}
                Replay::NotBefore(at) => {
                    // Stopping: what is in the spool is safe there, the next run replays it.
                    if stop_deadline.is_some() && !open {
                        break;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        batch = batches.recv(), if open => match batch {
                            Some(batch) => self.accept(batch, shutdown, stop_deadline).await,
                            None => open = false,
                        },
                        _ = shutdown.cancelled(), if stop_deadline.is_none() => {}
                    }
                }
            }
            if stop_deadline.is_some_and(|deadline| Instant::now() >= deadline) && !open {
                break;
            }
        }
    }

    fn has_backlog(&self) -> bool {
        self.spool.as_ref().is_some_and(|(spool, _)| !spool.is_empty())
    }

    /// Counts what reached Redis.
    fn shipped(&mut self, entries: u64, events: u64) {
        self.report.entries += entries;
        self.report.events += events;
        self.lag_estimate += entries;
    }

    fn set_backpressure(&self, on: bool) {
        self.backpressure.store(on, Ordering::Relaxed);
    }

    /// Ships `batch` directly when nothing waits in the spool and Redis is up, else spools it.
    async fn accept(&mut self, mut batch: Batch, shutdown: &CancellationToken, stop_deadline: Option<Instant>) {
        if batch.entries.is_empty() {
            batch.settle(Settled::Stored);
            return;
        }
        let redis_may_be_up = self.target.retry_at.is_none_or(|at| Instant::now() >= at);
        if !self.has_backlog()
            && redis_may_be_up
            && self.consumers_keep_up().await
            && self.target.ship(&batch.entries).await.is_ok()
        {
            self.shipped(batch.entries.len() as u64, batch.event_count);
            self.set_backpressure(false);
            batch.settle(Settled::Stored);
            return;
        }
        self.spool_batch(batch, shutdown, stop_deadline).await;
    }

    async fn spool_batch(&mut self, mut batch: Batch, shutdown: &CancellationToken, stop_deadline: Option<Instant>) {
        let record_bytes = Spool::record_bytes(&batch);
        let mut warned_full = false;
        loop {
            let (spool, when_full) = self.spool.as_mut().expect("spooled mode");
            let when_full = *when_full;
            if spool.has_room(record_bytes) {
                match spool.append(&batch) {
                    Ok(_) => {
                        self.backpressure.store(false, Ordering::Relaxed);
                        self.report.spooled_events += batch.event_count;
                        if self.last_sync.elapsed() >= SPOOL_SYNC_INTERVAL {
                            self.last_sync = Instant::now();
                            if let Err(error) = spool.sync() {
                                error!(error = %error, "cannot sync the spool");
                            }
                        }
                        batch.settle(Settled::Stored);
                        return;
                    }
                    Err(error) => {
                        // Disk trouble: hold the batch in memory and keep trying Redis.
                        error!(error = %error, "cannot write to the spool, holding the batch in memory");
                        let timeout = stop_deadline.map_or(Duration::from_secs(3600 * 24 * 365), |deadline| {
                            deadline.saturating_duration_since(Instant::now())
                        });
                        if self.ship_with_retry(&batch, shutdown, timeout).await {
                            self.shipped(batch.entries.len() as u64, batch.event_count);
                            self.set_backpressure(false);
                            batch.settle(Settled::Stored);
                        } else {
                            self.report.unsent_events += batch.event_count;
                            batch.settle(Settled::Unsent);
                        }
                        return;
                    }
                }
            }
            match when_full {
                WhenFull::DropNewest => {
                    if self.report.dropped_events == 0 || self.report.dropped_events % 100_000 < batch.event_count {
                        warn!(
                            dropped_events = self.report.dropped_events + batch.event_count,
                            "spool full: dropping the newest events (when_full = drop_newest)"
                        );
                    }
                    self.report.dropped_events += batch.event_count;
                    batch.settle(Settled::Dropped);
                    return;
                }
                WhenFull::Block => {
                    self.set_backpressure(true);
                    if !warned_full {
                        warn!("spool full: sources wait until the spool is replayed (when_full = block)");
                        warned_full = true;
                    }
                    if stop_deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                        self.report.unsent_events += batch.event_count;
                        batch.settle(Settled::Unsent);
                        return;
                    }
                    if let Replay::NotBefore(at) = self.replay_one().await {
                        tokio::select! {
                            _ = tokio::time::sleep_until(at) => {}
                            _ = shutdown.cancelled(), if stop_deadline.is_none() => {}
                        }
                    }
                }
            }
        }
    }

    /// Ships the oldest spooled record, if Redis and the consumers allow.
    async fn replay_one(&mut self) -> Replay {
        if let Some(at) = self.target.retry_at
            && Instant::now() < at
        {
            return Replay::NotBefore(at);
        }
        if !self.consumers_keep_up().await {
            return Replay::NotBefore(Instant::now() + LAG_WAIT);
        }
        let Some((spool, _)) = self.spool.as_mut() else {
            return Replay::Empty;
        };
        let spooled = match spool.peek() {
            Ok(Some(spooled)) => spooled,
            Ok(None) => return Replay::Empty,
            Err(error) => {
                error!(error = %error, "cannot read the spool");
                return Replay::NotBefore(Instant::now() + Duration::from_secs(1));
            }
        };
        if self.target.ship(&spooled.entries).await.is_err() {
            return Replay::NotBefore(self.target.retry_at.unwrap_or_else(Instant::now));
        }
        let (entries, events) = (spooled.entries.len() as u64, spooled.event_count);
        if let Err(error) = spool.consume() {
            error!(error = %error, "cannot move the spool cursor");
        }
        self.shipped(entries, events);
        self.report.replayed_events += events;
        Replay::Shipped
    }

    /// False while the consumers are `max_lag` entries or more behind. The lag is read
    /// every second while they keep up, and sooner once what was shipped since could
    /// have reached the limit; errors reading it are left to the shipping
    /// that follows (and its backoff).
    async fn consumers_keep_up(&mut self) -> bool {
        let estimate_reached = !self.lag_over && self.lag_estimate >= self.max_lag;
        if self.max_lag == 0 || (Instant::now() < self.next_lag_check && !estimate_reached) {
            return !self.lag_over;
        }
        let Ok(lag) = self.target.consumer_lag().await else {
            return true;
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

    /// Returns false only when a stop was requested and `shutdown_timeout` has passed.
    async fn ship_with_retry(
        &mut self,
        batch: &Batch,
        shutdown: &CancellationToken,
        shutdown_timeout: Duration,
    ) -> bool {
        let mut give_up_at: Option<Instant> = None;
        while self.target.ship(&batch.entries).await.is_err() {
            self.set_backpressure(true);
            if shutdown.is_cancelled() {
                let deadline = *give_up_at.get_or_insert_with(|| Instant::now() + shutdown_timeout);
                if Instant::now() >= deadline {
                    return false;
                }
            }
            let retry_at = self.target.retry_at.unwrap_or_else(Instant::now);
            tokio::select! {
                _ = tokio::time::sleep_until(retry_at) => {}
                // wake up at once to start the stop deadline
                _ = shutdown.cancelled(), if give_up_at.is_none() => {}
            }
        }
        true
    }
}

impl Target {
    /// One pipelined round trip for `entries` (stream: XADD each; list: one LPUSH). A
    /// failure drops the connection and sets the time of the next attempt (backoff).
    async fn ship(&mut self, entries: &[Entry]) -> Result<(), RedisError> {
        match self.ship_once(entries).await {
            Ok(()) => {
                self.backoff.succeeded();
                self.retry_at = None;
                Ok(())
            }
            Err(error) => {
                self.connection = None;
                self.retry_at = Some(Instant::now() + self.backoff.failed(&error));
                Err(error)
            }
        }
    }

    /// The connection, opened if there is none, and the key names.
    async fn connect(&mut self) -> Result<(&mut Connection, &Keys), RedisError> {
        if self.connection.is_none() {
            self.connection = Some(broker::connect(&self.redis_url).await?);
        }
        let connection = self.connection.as_mut().expect("connection was just set");
        Ok((connection, &self.keys))
    }

    async fn ship_once(&mut self, entries: &[Entry]) -> Result<(), RedisError> {
        if entries.is_empty() {
            return Ok(()); // a batch of receipts only
        }
        let sink = self.sink;
        let (connection, keys) = self.connect().await?;
        match sink {
            Transport::Stream => {
                let mut pipeline = redis::pipe();
                for entry in entries {
                    let command = pipeline
                        .cmd("XADD")
                        .arg(&keys.stream)
                        .arg("*")
                        .arg("v")
                        .arg(ENCODING_VERSION);
                    if entry.event_count == 1 {
                        command.arg("event").arg(&entry.payload).ignore();
                    } else {
                        command
                            .arg("n")
                            .arg(entry.event_count)
                            .arg("events")
                            .arg(&entry.payload)
                            .ignore();
                    }
                }
                pipeline.query_async::<()>(connection).await
            }
            Transport::List => {
                let mut command = redis::cmd("LPUSH");
                command.arg(&keys.list);
                for entry in entries {
                    command.arg(&entry.payload);
                }
                command.query_async::<()>(connection).await
            }
        }
    }

    /// Entries not yet delivered to the consumer group (stream; the stream length when
    /// there is no group yet or Redis cannot tell), or the list length (list mode).
    async fn consumer_lag(&mut self) -> Result<u64, RedisError> {
        let lag = self.read_lag().await;
        if lag.is_err() {
            self.connection = None;
        }
        lag
    }

    async fn read_lag(&mut self) -> Result<u64, RedisError> {
        let sink = self.sink;
        let (connection, keys) = self.connect().await?;
        match sink {
            Transport::List => redis::cmd("LLEN").arg(&keys.list).query_async(connection).await,
            Transport::Stream => {
                let exists: bool = redis::cmd("EXISTS").arg(&keys.stream).query_async(connection).await?;
                if !exists {
                    return Ok(0);
                }
                let group_lag = broker::stream::groups(connection, &keys.stream)
                    .await?
                    .into_iter()
                    .find(|group| group.name == keys.group)
                    .and_then(|group| group.lag);
                match group_lag {
                    Some(lag) => Ok(lag),
                    None => redis::cmd("XLEN").arg(&keys.stream).query_async(connection).await,
                }
            }
        }
    }
}
