//! Ships batches to Redis: pipelined XADD (stream) or one variadic LPUSH (list).
//!
//! Invariants:
//! - a batch is dropped only after Redis replied OK to all of it; on error the same batch
//!   is resent after a capped exponential backoff (at-least-once: a resend after a lost
//!   reply can write an entry twice; alert ids make the alerts of such twins count once)
//! - entries are never trimmed here (no MAXLEN): trimming is the police's job and only
//!   removes what every group has acknowledged
//! - after a stop is requested, retries go on for `shutdown_timeout`; what is still unsent
//!   then is counted and reported, never dropped silently
//! - while the consumers are `max_lag` entries or more behind, batches are held (the queue
//!   fills and the sources wait), so Redis memory cannot grow without bound while the
//!   police is down; a stop request ships what is held regardless

use redis::RedisError;
use tokio::sync::mpsc;
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::error;

use super::batcher::Batch;
use crate::broker::{self, Backoff, Connection, keys::Keys};
use crate::cli::Transport;
use crate::event::ENCODING_VERSION;

/// What reached Redis, and what could not be delivered before the stop deadline.
#[derive(Debug, Default, Clone, Copy)]
pub struct ShipReport {
    pub entries: u64,
    pub events: u64,
    pub unsent_events: u64,
}

/// How often the consumers' lag is read while they keep up.
const LAG_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long to wait before reading the lag again while it is over the limit.
const LAG_WAIT: Duration = Duration::from_millis(200);

pub struct Shipper {
    redis_url: String,
    keys: Keys,
    sink: Transport,
    connection: Option<Connection>,
    backoff: Backoff,
    /// 0 = no limit.
    max_lag: u64,
    next_lag_check: Instant,
}

impl Shipper {
    pub fn new(redis_url: String, keys: Keys, sink: Transport, max_lag: u64) -> Shipper {
        Shipper {
            redis_url,
            keys,
            sink,
            connection: None,
            backoff: Backoff::new("agent"),
            max_lag,
            next_lag_check: Instant::now(),
        }
    }

    /// Ships every batch from `batches` until the channel closes.
    pub async fn run(
        mut self,
        mut batches: mpsc::Receiver<Batch>,
        shutdown: CancellationToken,
        shutdown_timeout: Duration,
    ) -> ShipReport {
        let mut report = ShipReport::default();
        let mut gave_up = false;
        while let Some(batch) = batches.recv().await {
            if !gave_up {
                self.wait_for_consumers(&shutdown).await;
            }
            if !gave_up && self.ship_with_retry(&batch, &shutdown, shutdown_timeout).await {
                report.entries += batch.entries.len() as u64;
                report.events += batch.event_count;
                continue;
            }
            gave_up = true;
            report.unsent_events += batch.event_count;
        }
        if report.unsent_events > 0 {
            error!(
                unsent_events = report.unsent_events,
                "redis still unreachable at the stop deadline, events not delivered"
            );
        }
        report
    }

    /// Holds the next batch while the consumers are `max_lag` entries or more behind.
    /// Errors reading the lag are left to the shipping that follows (and its backoff).
    async fn wait_for_consumers(&mut self, shutdown: &CancellationToken) {
        if self.max_lag == 0 || Instant::now() < self.next_lag_check {
            return;
        }
        let mut holding = false;
        while !shutdown.is_cancelled() {
            let Ok(lag) = self.consumer_lag().await else {
                break;
            };
            if lag < self.max_lag {
                break;
            }
            if !holding {
                tracing::warn!(lag, max_lag = self.max_lag, "consumers are behind, holding batches");
                holding = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(LAG_WAIT) => {}
                _ = shutdown.cancelled() => {}
            }
        }
        if holding {
            tracing::info!("consumers caught up, shipping again");
        }
        self.next_lag_check = Instant::now() + LAG_CHECK_INTERVAL;
    }

    /// Entries not yet delivered to the consumer group (stream; the stream length when
    /// there is no group yet or Redis cannot tell), or the list length (list mode).
    async fn consumer_lag(&mut self) -> Result<u64, RedisError> {
        if self.connection.is_none() {
            self.connection = Some(broker::connect(&self.redis_url).await?);
        }
        let connection = self.connection.as_mut().expect("connection was just set");
        let keys = &self.keys;
        match self.sink {
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

    /// Returns false only when a stop was requested and `shutdown_timeout` has passed.
    async fn ship_with_retry(
        &mut self,
        batch: &Batch,
        shutdown: &CancellationToken,
        shutdown_timeout: Duration,
    ) -> bool {
        let mut give_up_at: Option<Instant> = None;
        loop {
            match self.ship_once(batch).await {
                Ok(()) => {
                    self.backoff.succeeded();
                    return true;
                }
                Err(error) => {
                    self.connection = None;
                    let delay = self.backoff.failed(&error);
                    if shutdown.is_cancelled() {
                        let deadline = *give_up_at.get_or_insert_with(|| Instant::now() + shutdown_timeout);
                        if Instant::now() >= deadline {
                            return false;
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        // wake up at once to start the stop deadline
                        _ = shutdown.cancelled(), if give_up_at.is_none() => {}
                    }
                }
            }
        }
    }

    async fn ship_once(&mut self, batch: &Batch) -> Result<(), RedisError> {
        if self.connection.is_none() {
            self.connection = Some(broker::connect(&self.redis_url).await?);
        }
        let connection = self.connection.as_mut().expect("connection was just set");
        match self.sink {
            Transport::Stream => {
                let mut pipeline = redis::pipe();
                for entry in &batch.entries {
                    let command = pipeline
                        .cmd("XADD")
                        .arg(&self.keys.stream)
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
                command.arg(&self.keys.list);
                for entry in &batch.entries {
                    command.arg(&entry.payload);
                }
                command.query_async::<()>(connection).await
            }
        }
    }
}
