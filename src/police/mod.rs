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
pub mod evaluation_thread;
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
use crate::delivery::config::{SetupError, SinkConfig, check_secrets};
use crate::delivery::sinks::alertmanager::AlertmanagerSink;
use crate::delivery::{SinkWorker, WorkerSettings, worker::WorkerError};
use crate::observability::{health, names};
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
    /// The Alertmanager sinks of the start, whose firing alerts are re-sent (see
    /// [`crate::delivery::sinks::alertmanager::run_resends`]).
    pub resend_sinks: Vec<Arc<AlertmanagerSink>>,
    /// What this police settled; shared cells so that a settle can run beside a read.
    pub totals: settle::Totals,
    /// When the rule-state bounds were last reported in the log (at most once a minute).
    pub bounds_reported: std::cell::Cell<Option<std::time::Instant>>,
    /// Stream mode: entries this consumer holds, as far as it knows (SETTLE's fence).
    pub held: settle::HeldEntries,
    /// Stream mode: entries per read of new entries.
    pub read_size: stream_consumer::ReadSize,
    /// Stream mode: where batches are evaluated.
    pub evaluation: evaluation_thread::EvaluationThread,
    pub shutdown: CancellationToken,
    /// The watchdog's view of the read loop (see [`crate::observability::health`]).
    pub beat: Arc<health::Beat>,
    /// Metric handles of the settle path, looked up once.
    pub metrics: PoliceMetrics,
}

/// Metric handles of the settle path: one atomic add per batch for the counts, a lookup
/// per alert (alerts are rare next to events) and per dead letter.
pub struct PoliceMetrics {
    entries: metrics::Counter,
    events_processed: metrics::Counter,
    settle_errors: metrics::Counter,
    /// Matches the settle script did not count, by why (the figures of the stats hash).
    matches_over_limit: metrics::Counter,
    matches_over_maxmemory: metrics::Counter,
    late_matches: metrics::Counter,
}

impl PoliceMetrics {
    fn new() -> PoliceMetrics {
        let dropped =
            |reason: &'static str| metrics::counter!(names::POLICE_RULE_MATCHES_DROPPED_TOTAL, "reason" => reason);
        // Every series a dashboard or an absence alert needs exists from the start, at 0.
        metrics::counter!(names::ERRORS_TOTAL, "stage" => "session").increment(0);
        for reason in names::DEAD_LETTER_CLASSES {
            metrics::counter!(names::POLICE_DEAD_LETTERS_TOTAL, "reason" => reason).increment(0);
        }
        PoliceMetrics {
            entries: metrics::counter!(names::POLICE_ENTRIES_TOTAL),
            events_processed: metrics::counter!(names::POLICE_EVENTS_PROCESSED_TOTAL),
            settle_errors: metrics::counter!(names::ERRORS_TOTAL, "stage" => "settle"),
            matches_over_limit: dropped("over_limit"),
            matches_over_maxmemory: dropped("over_maxmemory"),
            late_matches: dropped("late"),
        }
    }

    /// The alerts counter of every rule of `rules`, at 0 until its first alert.
    fn register_rules(&self, rules: &RuleSet) {
        for rule in rules.rules() {
            metrics::counter!(names::POLICE_ALERTS_TOTAL, "rule" => rule.name.clone()).increment(0);
        }
    }

    /// Counts the matches a settle call left out (its reply has the totals of the call, not
    /// per rule: so the counter has no `rule` label).
    fn dropped_matches(&self, settled: &Settled) {
        self.matches_over_limit.increment(settled.over_limit);
        self.matches_over_maxmemory.increment(settled.over_maxmemory);
        self.late_matches.increment(settled.late_matches);
    }

    /// Counts a settled batch.
    fn settled(&self, outcomes: &[Outcome]) {
        let mut events = 0;
        for outcome in outcomes {
            events += outcome.event_count;
            for alert in &outcome.alerts {
                metrics::counter!(names::POLICE_ALERTS_TOTAL, "rule" => alert.rule.clone()).increment(1);
            }
            for rejected in &outcome.dead {
                let reason = names::dead_letter_class(&rejected.reason);
                metrics::counter!(names::POLICE_DEAD_LETTERS_TOTAL, "reason" => reason).increment(1);
            }
        }
        self.entries.increment(outcomes.len() as u64);
        self.events_processed.increment(events);
    }
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
    /// A sink cannot start (a file that cannot be opened, a bad value): exit 2.
    #[error(transparent)]
    Sink(#[from] SetupError),
    /// Secrets that cannot be read (unset or empty variables, unreadable files), all of
    /// them, one per line: exit 2.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Secrets(Vec<SetupError>),
    #[error(transparent)]
    Delivery(#[from] WorkerError),
    #[error("cannot start the evaluation thread")]
    Thread(#[source] std::io::Error),
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
        // effect at the next start (see `reload_on_hangup`).
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
                reload_on_hangup(path.clone(), rules.sinks().clone(), sender);
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
        let secret_problems = check_secrets(sinks.iter().map(|(name, sink)| (name.as_str(), sink))).await;
        if !secret_problems.is_empty() {
            return Err(PoliceError::Secrets(secret_problems));
        }
        let mut sink_workers = Vec::new();
        let mut resend_sinks = Vec::new();
        for (name, sink_config) in &sinks {
            let worker = SinkWorker::from_config(name, sink_config).await?;
            if !matches!(sink_config, SinkConfig::Console { .. } | SinkConfig::Jsonl { .. }) {
                // Local writes take milliseconds; only receivers over a network can hang.
                warn_if_claimed_in_flight(&worker, config.claim_idle);
            }
            sink_workers.push(worker);
            if matches!(sink_config, SinkConfig::Alertmanager { .. }) {
                resend_sinks.push(Arc::new(AlertmanagerSink::from_config(name, sink_config).await?));
            }
        }
        let interest = rules.lowest_level();
        let stateful_rules = rules.stateful_rules();
        let read_size = stream_consumer::ReadSize::new(config.read_count);
        Ok(Police {
            rules,
            stateful_rules,
            interest,
            reloaded_rules,
            broker,
            config,
            sink_workers,
            resend_sinks,
            totals: settle::Totals::default(),
            bounds_reported: std::cell::Cell::new(None),
            held: settle::HeldEntries::default(),
            read_size,
            evaluation: evaluation_thread::EvaluationThread::start().map_err(PoliceError::Thread)?,
            shutdown,
            beat: health::beat("police"),
            metrics: PoliceMetrics::new(),
        })
        .inspect(|police: &Police| police.metrics.register_rules(&police.rules))
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
        // A change of sinks was logged when the file was reloaded (see `reload_on_hangup`).
        self.rules = receiver.borrow_and_update().clone();
        self.metrics.register_rules(&self.rules);
        self.stateful_rules = self.rules.stateful_rules();
        self.interest = self.rules.lowest_level();
    }

    /// Runs sessions until a stop is requested; a Redis outage ends a session, and a new one
    /// starts after a capped backoff. A command Redis refuses (permissions, key types, a
    /// failing script) stops the police with the reason: retrying would only hide it.
    pub async fn run(mut self) -> Result<Settled, PoliceError> {
        info!(consumer = %self.config.consumer, source = ?self.config.source, "police started");
        let mut backoff = Backoff::new("police", &self.broker.redis_url);
        health::set_rules_loaded();
        if self.config.admin_listen.is_some() {
            let sink_names = self.sink_workers.iter().map(|worker| worker.name.clone()).collect();
            tokio::spawn(crate::observability::sampler::run(
                self.broker.redis_url.clone(),
                self.broker.keys.clone(),
                sink_names,
                self.shutdown.child_token(),
            ));
        }
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
            self.beat.tick();
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
                    metrics::counter!(names::ERRORS_TOTAL, "stage" => "session").increment(1);
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
        health::retire(&self.beat);
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
            trim: self.config.trim,
            alerts_retention: self.config.alerts_retention,
        }
    }

    /// Starts the re-sends of every Alertmanager sink of the start (see
    /// [`crate::delivery::sinks::alertmanager::run_resends`]).
    fn spawn_resends(&self, stop: CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
        use crate::delivery::sinks::alertmanager::run_resends;
        self.resend_sinks
            .iter()
            .map(|sink| {
                tokio::spawn(run_resends(
                    sink.clone(),
                    self.broker.redis_url.clone(),
                    self.broker.keys.clone(),
                    clock::Clock::owner(&self.config.consumer),
                    stop.clone(),
                ))
            })
            .collect()
    }

    /// Starts the rule clock (see [`clock`]) when rules with state can be in force: a rule
    /// file that has some now, or one that may get some on reload.
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
            source: self.config.source,
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
            expected_pending: match source {
                settle::Source::Stream => self.held.get(),
                settle::Source::List { .. } => None,
            },
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
        let sent_at = std::time::Instant::now();
        let reply = settle::settle(connection, &self.settle_target(source), outcomes).await;
        metrics::histogram!(names::REDIS_ROUND_TRIP_SECONDS, "command" => "settle").record(sent_at.elapsed());
        let settled = reply.inspect_err(|_| {
            self.metrics.settle_errors.increment(1);
            self.held.forget();
        })?;
        if !outcomes.is_empty() {
            self.held.reported(settled.pending_after);
        }
        self.metrics.settled(outcomes);
        self.metrics.dropped_matches(&settled);
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
/// does not load keeps the rules in force, and the reason is logged. Rules take effect at
/// the next batch; sinks do not (see [`SinkChanges`]), and a reload that changes them says so.
///
/// A reload accepts only a file the police could start with: every secret of every sink of
/// the file is resolved as at start (unchanged sinks too: a restart reads them again), and
/// the network sinks are built (see [`start_problems_of`]); a file with a secret that cannot
/// be read (an unset variable, a missing file) or a sink that cannot be built keeps the
/// rules in force, each problem named by sink and key. Otherwise such a file would run until
/// the next restart, which then fails, and the alerts routed to an added sink would wait for
/// a worker that cannot start.
fn reload_on_hangup(
    path: std::path::PathBuf,
    start_sinks: std::collections::BTreeMap<String, SinkConfig>,
    sender: watch::Sender<Arc<RuleSet>>,
) {
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
                    let start_problems = start_problems_of(rules.sinks()).await;
                    if !start_problems.is_empty() {
                        let problems: Vec<String> = start_problems.iter().map(ToString::to_string).collect();
                        tracing::error!(
                            path = %path.display(),
                            errors = %problems.join("; "),
                            "rule file not reloaded, the rules in force stay: a sink of it cannot start"
                        );
                        continue;
                    }
                    info!(path = %path.display(), rules = rules.rules().len(), "rule file reloaded");
                    let changes = SinkChanges::between(&start_sinks, rules.sinks());
                    if !changes.is_empty() {
                        tracing::warn!(
                            path = %path.display(),
                            added = %changes.added.join(", "),
                            removed = %changes.removed.join(", "),
                            changed = %changes.changed.join(", "),
                            "the reloaded rule file changes sinks; they take effect at the next restart: \
                             until then delivery runs with the sinks of the start, and alerts routed to an \
                             added sink wait in the alerts stream"
                        );
                    }
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

/// What would stop a start with `sinks`: every secret that cannot be read; when all can,
/// every network sink (webhook, Slack, Alertmanager, email) that cannot be built (a URL that
/// is not one, a bad `smtp` address). Console and jsonl sinks are not built: a jsonl sink
/// would open (and create) its file, a side effect a reload that changes no sink must not
/// have; a start reports those.
async fn start_problems_of(sinks: &std::collections::BTreeMap<String, SinkConfig>) -> Vec<SetupError> {
    // Named pairs collected first: an iterator with a closure, held across the await inside
    // a spawned task, trips rustc's "FnOnce is not general enough".
    let named_sinks: Vec<(&str, &SinkConfig)> = sinks.iter().map(|(name, sink)| (name.as_str(), sink)).collect();
    let secret_problems = check_secrets(named_sinks).await;
    if !secret_problems.is_empty() {
        return secret_problems;
    }
    let mut build_problems = Vec::new();
    for (name, sink) in sinks {
        if matches!(sink, SinkConfig::Console { .. } | SinkConfig::Jsonl { .. }) {
            continue;
        }
        if let Err(problem) = crate::delivery::sinks::build(name, sink).await {
            build_problems.push(problem);
        }
    }
    build_problems
}

/// How the sinks of a reloaded file differ from those of the start, by name. Delivery
/// workers and Alertmanager re-sends are built once, at start (secrets read, files opened),
/// so none of these changes takes effect before a restart: a removed sink keeps delivering
/// what is routed to it, a changed one keeps its old settings, and an added one is read by
/// no worker; its consumer group is created at the restart from the start of the alerts
/// stream, so the alerts routed to it meanwhile are delivered then. A sink whose secret
/// comes from `{ env }` or `{ file }` is compared by that source, not by the value.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SinkChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl SinkChanges {
    pub fn between(
        start: &std::collections::BTreeMap<String, SinkConfig>,
        reloaded: &std::collections::BTreeMap<String, SinkConfig>,
    ) -> SinkChanges {
        let mut changes = SinkChanges::default();
        for (name, config) in reloaded {
            match start.get(name) {
                None => changes.added.push(name.clone()),
                Some(start_config) if start_config != config => changes.changed.push(name.clone()),
                Some(_) => {}
            }
        }
        changes.removed = start
            .keys()
            .filter(|name| !reloaded.contains_key(*name))
            .cloned()
            .collect();
        changes
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// Warns when one delivery attempt of `worker` may outlast `claim_idle`. Records in flight are
/// not kept alive during an attempt (it is never interrupted), so once idle for `claim_idle`
/// another police claims them and delivers them a second time. A keep-alive may be due up to
/// a third of `claim_idle` before the attempt starts, hence the two thirds.
fn warn_if_claimed_in_flight(worker: &SinkWorker, claim_idle: std::time::Duration) {
    let longest_attempt = worker.timeout;
    let safe_attempt = claim_idle * 2 / 3;
    if longest_attempt <= safe_attempt {
        return;
    }
    let needed_claim_idle = longest_attempt * 3 / 2 + std::time::Duration::from_secs(1);
    tracing::warn!(
        sink = %worker.name,
        attempt_bound = %humantime::format_duration(longest_attempt),
        claim_idle = %humantime::format_duration(claim_idle),
        "a delivery attempt of this sink may outlast the claim idle time: another police would claim \
         an alert still being delivered and deliver it twice; raise the police's --claim-idle \
         (claim_idle in [police] of the config file) to at least {}, or lower timeout in [sinks.{}] \
         of the rule file below {}",
        humantime::format_duration(round_up_to_second(needed_claim_idle)),
        worker.name,
        humantime::format_duration(safe_attempt.saturating_sub(std::time::Duration::from_secs(1))),
    );
}

fn round_up_to_second(duration: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_secs(duration.as_secs() + u64::from(duration.subsec_nanos() > 0))
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Redis(#[from] RedisError),
}
