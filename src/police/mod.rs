//! The police: read → decode → evaluate → settle (ack), in a consumer group (stream mode)
//! or from a list (list mode); beside it, one delivery worker per sink reads the alerts
//! stream (the outbox, see [`crate::delivery`]).
//!
//! Invariants:
//! - input is acknowledged only together with every alert it produced: one atomic script
//!   writes the alerts stream, the dead letters and the acknowledgement (see
//!   [`crate::broker::scripts::SETTLE`]); sinks (console, file, HTTP) read the alerts stream
//!   afterwards, so ingestion never waits for a receiver
//! - an entry delivered more than `max_deliveries` times, and any input that cannot be
//!   decoded, goes to the dead-letter stream with its reason and raw fields
//! - on (re)start a consumer first finishes its own unfinished input, then reads new input
//! - a stop request is honoured between batches, never in the middle of one

pub mod alert;
pub mod clock;
pub mod list_consumer;
pub mod rules;
pub mod settle;
pub mod stream_consumer;

use std::sync::Arc;

use redis::RedisError;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::broker::Backoff;
use crate::broker::errors::{Failure, classify, redact_url};
use crate::config::{BrokerConfig, PoliceConfig};
use crate::delivery::config::{SetupError, SinkConfig};
use crate::delivery::{SinkWorker, WorkerSettings, worker::WorkerError};
use crate::options::Transport;
use rules::{RuleFileError, RuleSet};
use settle::{Outcome, Settled};

/// Shortest life of a group heartbeat key: removal of a dead consumer is tidying up, never
/// urgent, and must not catch a live one between two refreshes.
const MIN_GROUP_HEARTBEAT_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a consumer session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// A stop was requested and the batch in hand is settled.
    Stopped,
}

/// Everything a consumer session needs, kept across reconnects.
pub struct Police {
    pub broker: BrokerConfig,
    pub config: PoliceConfig,
    /// The rules in force; replaced whole when a reload succeeds (see [`Self::refresh_rules`]).
    pub rules: Arc<RuleSet>,
    /// The stateful rules of `rules`, in the order their updates index them.
    pub stateful_rules: Vec<rules::plan::StatefulRule>,
    /// Lowest level any rule matches; events below it are only validated and counted.
    pub interest: crate::event::Level,
    /// Rule sets reloaded on SIGHUP; `None` without a rule file.
    pub reloaded_rules: Option<watch::Receiver<Arc<RuleSet>>>,
    /// One delivery worker per sink of the rules, started by [`Self::run`].
    pub sink_workers: Vec<SinkWorker>,
    /// What this police settled; shared cells so that a settle can run beside a read.
    pub totals: settle::Totals,
    /// When the rule-state bounds were last reported in the log (at most once a minute).
    pub bounds_reported: std::cell::Cell<Option<std::time::Instant>>,
    pub shutdown: CancellationToken,
}

#[derive(Debug, thiserror::Error)]
pub enum PoliceError {
    #[error("redis at {redis_url} refused a command")]
    Refused {
        redis_url: String,
        #[source]
        source: RedisError,
    },
    /// Every error of the rule file, one `FILE:LINE:COL: message` per line.
    #[error("{0}")]
    Rules(#[source] RuleFileError),
    /// A sink cannot start (a file that cannot be opened, a missing secret): exit 2.
    #[error(transparent)]
    Sink(#[from] SetupError),
    #[error(transparent)]
    Delivery(#[from] WorkerError),
}

/// The sinks of the built-in rule: `console` unless `--quiet`, `jsonl` with `--alerts-file`.
pub fn builtin_sinks(config: &PoliceConfig) -> Vec<(String, SinkConfig)> {
    let mut sinks = Vec::new();
    if !config.quiet {
        let console = SinkConfig::Console {
            max_attempts: None,
            rate_limit: None,
        };
        sinks.push(("console".to_string(), console));
    }
    if let Some(path) = &config.alerts_file {
        let jsonl = SinkConfig::Jsonl {
            path: path.clone(),
            max_attempts: None,
            rate_limit: None,
        };
        sinks.push(("jsonl".to_string(), jsonl));
    }
    sinks
}

impl Police {
    pub async fn new(
        broker: BrokerConfig,
        config: PoliceConfig,
        shutdown: CancellationToken,
    ) -> Result<Police, PoliceError> {
        // Sinks are read once, at start: a reload that changes them is logged and takes
        // effect at the next start (see `refresh_rules`).
        let (rules, reloaded_rules, sinks) = match &config.rules_file {
            Some(path) => {
                let rules = load_rules(path.clone()).await.map_err(PoliceError::Rules)?;
                if rules.sinks().is_empty() {
                    tracing::warn!(
                        path = %path.display(),
                        "the rule file defines no sinks: alerts go to the alerts stream only"
                    );
                }
                if config.alerts_file.is_some() {
                    tracing::warn!(
                        "--alerts-file is for the built-in rule; with --rules, add a jsonl sink to the file"
                    );
                }
                let sinks: Vec<(String, SinkConfig)> = rules
                    .sinks()
                    .iter()
                    .map(|(name, sink)| (name.clone(), sink.clone()))
                    .collect();
                let (sender, receiver) = watch::channel(rules.clone());
                reload_on_hangup(path.clone(), sender);
                (rules, Some(receiver), sinks)
            }
            None => {
                // A SIGHUP must not kill a police that has nothing to reload.
                ignore_hangups();
                let sinks = builtin_sinks(&config);
                let names = sinks.iter().map(|(name, _)| name.clone()).collect();
                (Arc::new(RuleSet::builtin(config.alert_level, names)), None, sinks)
            }
        };
        let mut sink_workers = Vec::new();
        for (name, sink_config) in &sinks {
            sink_workers.push(SinkWorker::from_config(name, sink_config).await?);
        }
        let interest = rules.lowest_level();
        let stateful_rules = rules.stateful_rules();
        Ok(Police {
            rules,
            stateful_rules,
            interest,
            reloaded_rules,
            broker,
            config,
            sink_workers,
            totals: settle::Totals::default(),
            bounds_reported: std::cell::Cell::new(None),
            shutdown,
        })
    }

    /// Takes the newest rule set reloaded on SIGHUP, if any: called between batches, so
    /// that a batch is evaluated under one rule set.
    fn refresh_rules(&mut self) {
        let Some(receiver) = &mut self.reloaded_rules else {
            return;
        };
        if !receiver.has_changed().unwrap_or(false) {
            return;
        }
        let reloaded = receiver.borrow_and_update().clone();
        if !reloaded.sinks().keys().eq(self.rules.sinks().keys()) {
            tracing::warn!(
                "the reloaded rule file names other sinks; delivery keeps the sinks of the start until a restart"
            );
        }
        self.rules = reloaded;
        self.stateful_rules = self.rules.stateful_rules();
        self.interest = self.rules.lowest_level();
    }

    /// Runs sessions until a stop is requested; a Redis outage ends a session, and a new one
    /// starts after a capped backoff. A command Redis refuses (permissions, key types, a
    /// failing script) stops the police with the reason: retrying would only hide it.
    pub async fn run(mut self) -> Result<Settled, PoliceError> {
        info!(consumer = %self.config.consumer, source = ?self.config.source, "police started");
        let mut backoff = Backoff::new("police", &self.broker.redis_url);
        let workers = crate::delivery::spawn_workers(
            self.worker_settings(),
            std::mem::take(&mut self.sink_workers),
            self.shutdown.child_token(),
            self.shutdown.clone(),
        );
        let mut refused = None;
        // Stopped after the last settle, so that the lease is released last.
        let clock_stop = CancellationToken::new();
        let clock = self.spawn_clock(clock_stop.clone());
        let resends = self.spawn_resends(clock_stop.clone());
        loop {
            let session = match self.config.source {
                Transport::Stream => stream_consumer::run_session(&mut self, &mut backoff).await,
                Transport::List => list_consumer::run_session(&mut self, &mut backoff).await,
            };
            match session {
                Ok(SessionEnd::Stopped) => break,
                Err(SessionError::Redis(error)) if classify(&error) == Failure::Refused => {
                    tracing::error!(
                        redis_url = %redact_url(&self.broker.redis_url),
                        error = %error,
                        "redis refused a command; stopping (entries in hand stay pending)"
                    );
                    refused = Some(error);
                    break;
                }
                Err(SessionError::Redis(error)) => {
                    let delay = backoff.failed(&error);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.shutdown.cancelled() => break,
                    }
                }
            }
        }
        clock_stop.cancel();
        for resend in resends {
            if let Err(error) = resend.await {
                tracing::error!(error = %error, "an alertmanager re-send task failed");
            }
        }
        if let Some(clock) = clock
            && let Err(error) = clock.await
        {
            tracing::error!(error = %error, "the rule clock task failed");
        }
        // The workers stop after their attempts in flight; undelivered records stay pending.
        let delivery = workers.stop_and_wait().await;
        let totals = self.totals.get();
        info!(
            consumer = %self.config.consumer,
            settled = totals.items,
            alerts = totals.alerts_written,
            dead = totals.dead_written,
            "police stopped"
        );
        if let Some(source) = refused {
            return Err(PoliceError::Refused {
                redis_url: redact_url(&self.broker.redis_url),
                source,
            });
        }
        delivery?;
        Ok(totals)
    }

    fn worker_settings(&self) -> WorkerSettings {
        WorkerSettings {
            redis_url: self.broker.redis_url.clone(),
            keys: self.broker.keys.clone(),
            consumer: self.config.consumer.clone(),
            claim_idle: self.config.claim_idle,
            maintenance_interval: self.config.maintenance_interval,
            block: self.config.block,
            read_count: self.config.read_count,
        }
    }

    /// Starts the rule clock (see [`clock`]) when rules with state can be in force: a rule
    /// file that has some now, or one that may get some on reload.
    /// Starts the re-sends of every Alertmanager sink of the rule file (see
    /// [`crate::delivery::sinks::alertmanager::run_resends`]): sinks are those of the start,
    /// as for delivery.
    fn spawn_resends(&self, stop: CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
        use crate::delivery::sinks::alertmanager::{AlertmanagerSink, run_resends};
        let mut tasks = Vec::new();
        for (name, sink_config) in self.rules.sinks() {
            if !matches!(sink_config, SinkConfig::Alertmanager { .. }) {
                continue;
            }
            // Checked when the delivery worker built the same sink at start.
            let Ok(sink) = AlertmanagerSink::from_config(name, sink_config) else {
                continue;
            };
            tasks.push(tokio::spawn(run_resends(
                Arc::new(sink),
                self.broker.redis_url.clone(),
                self.broker.keys.clone(),
                clock::Clock::owner(&self.config.consumer),
                stop.clone(),
            )));
        }
        tasks
    }

    fn spawn_clock(&self, stop: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
        if self.stateful_rules.is_empty() && self.reloaded_rules.is_none() {
            return None;
        }
        let rules = match &self.reloaded_rules {
            Some(receiver) => receiver.clone(),
            None => watch::channel(self.rules.clone()).1,
        };
        let keys = self.broker.keys.clone();
        let lease = crate::broker::lease::Lease {
            key: keys.rules_lease(),
            owner: clock::Clock::owner(&self.config.consumer),
        };
        let clock = clock::Clock {
            keys,
            redis_url: self.broker.redis_url.clone(),
            lease,
            rules,
            alert_dedup_ttl_s: self.config.alert_dedup_ttl_s,
        };
        Some(tokio::spawn(clock.run(stop)))
    }

    /// How long our group heartbeat key lives: no less than the idle time after which other
    /// police may remove a consumer, and long enough that a live police always refreshes it
    /// in time, however short the maintenance interval (a slow batch delays the refresh).
    pub fn heartbeat_ttl(&self) -> std::time::Duration {
        self.config
            .consumer_idle_remove
            .max(self.config.maintenance_interval * 3)
            .max(MIN_GROUP_HEARTBEAT_TTL)
    }

    /// List mode: how long our processing list is ours without a refresh (`--claim-idle`),
    /// at least three maintenance intervals, so that a live consumer keeps its items.
    pub fn list_heartbeat_ttl(&self) -> std::time::Duration {
        self.config.claim_idle.max(self.config.maintenance_interval * 3)
    }

    /// Touches the health file (if any): proof for `healthcheck` that the loop runs.
    async fn mark_alive(&self) {
        let Some(path) = &self.config.health_file else {
            return;
        };
        if let Err(error) = tokio::fs::write(path, crate::event::now_rfc3339()).await {
            tracing::warn!(path = %path.display(), error = %error, "cannot write the health file");
        }
    }

    fn settle_target<'a>(&'a self, source: settle::Source<'a>) -> settle::SettleTarget<'a> {
        settle::SettleTarget {
            keys: &self.broker.keys,
            source,
            consumer: &self.config.consumer,
            alert_dedup_ttl_s: self.config.alert_dedup_ttl_s,
            rules: &self.stateful_rules,
        }
    }

    /// Start-up check of a session: Redis version, key types, permissions (see
    /// [`settle::check`]).
    async fn check_redis(
        &self,
        connection: &mut crate::broker::Connection,
        source: settle::Source<'_>,
    ) -> Result<(), SessionError> {
        crate::broker::require_scripting_flags(connection).await?;
        settle::check(connection, &self.settle_target(source)).await?;
        Ok(())
    }

    /// Writes alerts and dead letters to Redis and acknowledges the input, atomically.
    async fn settle(
        &self,
        connection: &mut crate::broker::Connection,
        source: settle::Source<'_>,
        outcomes: &[Outcome],
    ) -> Result<(), SessionError> {
        let settled = settle::settle(connection, &self.settle_target(source), outcomes).await?;
        self.totals.add(settled);
        if settled.dead_written > 0 {
            tracing::warn!(
                dead_letters = settled.dead_written,
                "input sent to the dead-letter stream"
            );
        }
        self.report_bounds(settled);
        Ok(())
    }

    /// Logs matches the rule state could not take (see `docs/ALERTING.md`, "Bounds"), at
    /// most once a minute; the stats hash counts every one of them.
    fn report_bounds(&self, settled: Settled) {
        if settled.over_limit == 0 && settled.over_maxmemory == 0 {
            return;
        }
        let now = std::time::Instant::now();
        if self
            .bounds_reported
            .get()
            .is_some_and(|last| now.duration_since(last) < std::time::Duration::from_secs(60))
        {
            return;
        }
        self.bounds_reported.set(Some(now));
        let totals = self.totals.get();
        if settled.over_maxmemory > 0 {
            tracing::error!(
                matches = settled.over_maxmemory,
                total = totals.over_maxmemory,
                "redis is over maxmemory: matches that need new rule state are not counted (stats field over_maxmemory)"
            );
        }
        if settled.over_limit > 0 {
            tracing::warn!(
                matches = settled.over_limit,
                total = totals.over_limit,
                "a rule tracks max_groups groups: matches of new groups are not counted (stats field over_limit)"
            );
        }
    }
}

/// Reads and compiles a rule file off the runtime thread (many regexes take a while).
pub async fn load_rules(path: std::path::PathBuf) -> Result<Arc<RuleSet>, RuleFileError> {
    let shown = path.display().to_string();
    match tokio::task::spawn_blocking(move || RuleSet::load(&path)).await {
        Ok(loaded) => loaded.map(Arc::new),
        Err(join_error) => Err(RuleFileError::Read {
            path: shown,
            source: std::io::Error::other(join_error.to_string()),
        }),
    }
}

/// Without a rule file, a SIGHUP (sent to every process of a service by some supervisors)
/// is logged and otherwise ignored instead of ending the process.
fn ignore_hangups() {
    let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            info!("SIGHUP ignored: no rule file to reload (--rules)");
        }
    });
}

/// On every SIGHUP, reloads the rule file and hands the new set to the police; a file that
/// does not load keeps the rules in force, and the reason is logged.
fn reload_on_hangup(path: std::path::PathBuf, sender: watch::Sender<Arc<RuleSet>>) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(error) => {
            tracing::warn!(error = %error, "cannot listen for SIGHUP; the rule file will not be reloaded");
            return;
        }
    };
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match load_rules(path.clone()).await {
                Ok(rules) => {
                    info!(path = %path.display(), rules = rules.rules().len(), "rule file reloaded");
                    if sender.send(rules).is_err() {
                        return;
                    }
                }
                Err(error) => tracing::warn!(
                    path = %path.display(),
                    errors = %error.lines().join("; "),
                    "rule file not reloaded, the rules in force stay"
                ),
            }
        }
    });
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Redis(#[from] RedisError),
}
