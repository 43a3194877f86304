//! The agent: generate (or read real sources) → batch → ship (through the disk spool when
//! Redis cannot take the batches).
//!
//! The generator and the shipper are joined by a bounded channel of batches: when Redis is
//! slow or down, the channel fills and the generator waits (backpressure) instead of
//! dropping or growing memory without bound.
//!
//! The summary tells the truth: its levels count the events stored (in Redis or the spool)
//! by this run, and [`Summary::is_clean`] is false (exit code 1) whenever an accepted event
//! was dropped, lost in the spool or not delivered, or the shipper failed.

pub mod batcher;
pub mod files;
pub mod generator;
pub mod http;
pub mod shipper;
pub mod sources;
pub mod spool;
pub mod stdin;
pub mod syslog;
pub mod target;
pub mod tls;

use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::{AgentConfig, BrokerConfig, ConfigError};
use crate::event::Level;
use crate::options::AgentSource;
use batcher::{Batch, Batcher};
use generator::Generator;
use shipper::{ShipReport, Shipper};

/// Printed when the agent stops.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub agent_id: String,
    pub run_id: String,
    pub events: u64,
    pub events_per_level: std::collections::BTreeMap<&'static str, u64>,
    pub entries: u64,
    pub unsent_events: u64,
    pub spooled_events: u64,
    pub replayed_events: u64,
    pub dropped_events: u64,
    pub spool_bytes_left: u64,
    pub corrupt_spool_segments: u64,
    /// Spool writes that failed (a full disk); undone, their batches kept in hand.
    pub spool_write_failures: u64,
    /// Events too large for Redis, written to the dead-letter stream instead.
    pub dead_lettered_events: u64,
    /// Why the agent stopped early (Redis refused a command for good).
    pub error: Option<String>,
    /// Lines shipped as plain text with level UNKNOWN (no level found).
    pub unknown_level_lines: u64,
    /// What the sources cut, refused or could not read.
    #[serde(flatten)]
    pub inputs: sources::InputCounts,
    pub elapsed_s: f64,
    pub events_per_s: f64,
}

impl Summary {
    /// True when everything accepted was delivered or stored (the exit code is 0).
    pub fn is_clean(&self) -> bool {
        self.unsent_events == 0 && self.dropped_events == 0 && self.corrupt_spool_segments == 0 && self.error.is_none()
    }

    /// The one `key=value` line (a JSON object with `--log-format json`) that ends a counted
    /// run (`--count`), on stderr.
    pub fn key_value_line(&self) -> String {
        use crate::progress::Figure;
        let mut pairs = vec![
            ("agent_id", Figure::from(self.agent_id.clone())),
            ("events", self.events.into()),
            ("entries", self.entries.into()),
            ("unsent", self.unsent_events.into()),
            ("spooled", self.spooled_events.into()),
            ("dropped", self.dropped_events.into()),
            ("dead_lettered", self.dead_lettered_events.into()),
            ("elapsed_s", Figure::Decimal(self.elapsed_s, 3)),
            ("events_per_s", Figure::Decimal(self.events_per_s, 0)),
        ];
        if let Some(error) = &self.error {
            pairs.push(("error", error.clone().into()));
        }
        crate::progress::summary_line("agent", &pairs)
    }

    pub fn print(&self, as_json: bool) {
        if as_json {
            println!("{}", serde_json::to_string(self).expect("summary serialises"));
            return;
        }
        println!("agent {} (run {}) summary", self.agent_id, self.run_id);
        for (level, count) in &self.events_per_level {
            println!("  {level:<10} {count}");
        }
        println!("  events     {}", self.events);
        println!("  entries    {}", self.entries);
        if self.unsent_events > 0 {
            println!("  UNSENT     {}", self.unsent_events);
        }
        if self.spooled_events > 0 || self.replayed_events > 0 || self.spool_bytes_left > 0 {
            println!("  spooled    {}", self.spooled_events);
            println!("  replayed   {}", self.replayed_events);
            println!("  in spool   {} bytes", self.spool_bytes_left);
        }
        if self.unknown_level_lines > 0 {
            println!("  no level   {} lines (shipped as UNKNOWN)", self.unknown_level_lines);
        }
        self.inputs.print();
        if self.dropped_events > 0 {
            println!("  DROPPED    {}", self.dropped_events);
        }
        if self.corrupt_spool_segments > 0 {
            println!("  CORRUPT    {} spool segments", self.corrupt_spool_segments);
        }
        if self.spool_write_failures > 0 {
            println!(
                "  spool write failures {} (undone, batches kept)",
                self.spool_write_failures
            );
        }
        if self.dead_lettered_events > 0 {
            println!("  DEAD       {} events too large for redis", self.dead_lettered_events);
        }
        if let Some(error) = &self.error {
            println!("  ERROR      {error}");
        }
        println!("  elapsed    {:.3} s", self.elapsed_s);
        println!("  rate       {:.0} events/s", self.events_per_s);
    }
}

/// Runs until `count` events are shipped, the sources end, or `shutdown` fires; then
/// flushes and summarises. Fails only when a source cannot start (e.g. an address in use).
pub async fn run(broker: BrokerConfig, config: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<Summary> {
    let run_id = run_id();
    // Read here rather than in config: the file formats are the sources' business. A bad
    // file is still a configuration error (exit 2) naming its key.
    let tls = config
        .tls
        .as_ref()
        .map(|files| {
            tls::ServerTls::load(&files.cert, &files.key).map_err(|error| ConfigError::Invalid {
                key: error.key,
                problem: error.problem,
            })
        })
        .transpose()?;
    let http_token = config
        .http_token_file
        .as_ref()
        .map(|path| {
            http::BearerToken::read(path).map_err(|problem| ConfigError::Invalid {
                key: "http_token_file",
                problem,
            })
        })
        .transpose()?;
    let spool = match &config.spool {
        Some(spool_config) => Some((
            spool::Spool::open(spool_config)
                .map_err(|error| anyhow::anyhow!("cannot open the spool in {}: {error}", spool_config.dir.display()))?,
            spool_config.when_full,
        )),
        None => None,
    };
    let has = |wanted: AgentSource| config.sources.contains(&wanted);
    let syslog_listeners = if has(AgentSource::Syslog) {
        Some(
            syslog::bind(config.syslog_udp, config.syslog_tcp)
                .await
                .map_err(|error| {
                    anyhow::anyhow!(
                        "cannot listen for syslog on udp {:?} / tcp {:?}: {error}",
                        config.syslog_udp,
                        config.syslog_tcp
                    )
                })?,
        )
    } else {
        None
    };
    let http_listener = if has(AgentSource::Http) {
        Some(
            tokio::net::TcpListener::bind(config.http_listen)
                .await
                .map_err(|error| anyhow::anyhow!("cannot listen for HTTP on {}: {error}", config.http_listen))?,
        )
    } else {
        None
    };
    let unknown_level_lines = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let input_counters = std::sync::Arc::new(sources::InputCounters::default());
    let backpressure = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = Instant::now();
    let (batch_sender, batch_receiver) = mpsc::channel::<Batch>(config.queue_batches);
    let shipper = Shipper::new(
        broker.redis_url.clone(),
        broker.keys.clone(),
        config.sink,
        config.agent_id.clone(),
        config.max_lag,
        spool,
        backpressure.clone(),
        shutdown.clone(),
        config.shutdown_timeout,
    );
    let shipper_task = tokio::spawn(shipper.run(batch_receiver));
    info!(agent_id = %config.agent_id, run_id = %run_id, sources = ?config.sources, pack = config.pack, "agent started");

    let mut file_source = None;
    // Events taken in, of `--count`; the summary says how many were stored.
    let mut progress = config
        .count
        .map(|count| crate::progress::Progress::new("[agent]", "events", Some(count)));
    if has(AgentSource::Synthetic) {
        generate(&config, &run_id, batch_sender, progress.as_mut(), &shutdown).await;
    } else {
        let (message_sender, message_receiver) = mpsc::channel(sources::SOURCE_QUEUE_MESSAGES);
        let line_parser = sources::LineParser::new(&config, unknown_level_lines.clone());
        if let Some((udp_socket, tcp_listener)) = syslog_listeners {
            let limits = syslog::SyslogLimits {
                max_line_bytes: config.max_line_bytes,
                max_connections: config.syslog_max_connections,
                idle_timeout: config.syslog_idle_timeout,
            };
            if let Some(socket) = udp_socket {
                let counters = input_counters.clone();
                tokio::spawn(syslog::listen_udp(
                    socket,
                    limits,
                    counters,
                    message_sender.clone(),
                    shutdown.clone(),
                ));
            }
            if let Some(listener) = tcp_listener {
                let counters = input_counters.clone();
                tokio::spawn(syslog::listen_tcp(
                    listener,
                    tls.clone(),
                    limits,
                    counters,
                    message_sender.clone(),
                    shutdown.clone(),
                ));
            }
        }
        if has(AgentSource::Stdin) {
            tokio::spawn(stdin::read_lines(
                line_parser.clone(),
                sources::MultilineJoiner::new(config.multiline_continuation.clone(), config.max_line_bytes),
                config.max_line_bytes,
                input_counters.clone(),
                message_sender.clone(),
                shutdown.clone(),
            ));
        }
        if has(AgentSource::File) {
            file_source = Some(files::start(
                &config,
                line_parser.clone(),
                input_counters.clone(),
                message_sender.clone(),
                shutdown.clone(),
            )?);
        }
        if let Some(listener) = http_listener {
            tokio::spawn(http::serve(
                listener,
                tls.clone(),
                http::HttpSource::new(
                    &config,
                    http_token.clone(),
                    message_sender.clone(),
                    backpressure.clone(),
                    input_counters.clone(),
                ),
                shutdown.clone(),
            ));
        }
        drop(message_sender); // the sources hold the only senders: the loop ends when they do
        sources::ship_events(
            message_receiver,
            &config,
            &run_id,
            batch_sender,
            progress.as_mut(),
            &shutdown,
        )
        .await;
    }
    if let Some(progress) = progress {
        progress.finish();
    }
    let joined = shipper_task.await;
    if let Some(file_source) = file_source {
        file_source.finish().await; // checkpoints hold only stored lines, whatever happened
    }
    let report = shipper_outcome(joined)?;

    let elapsed_s = started.elapsed().as_secs_f64();
    Ok(Summary {
        agent_id: config.agent_id.clone(),
        run_id,
        events: report.events,
        events_per_level: Level::ALL
            .iter()
            .filter(|level| report.stored_per_level[level.index()] > 0)
            .map(|level| (level.as_str(), report.stored_per_level[level.index()]))
            .collect(),
        entries: report.entries,
        unsent_events: report.unsent_events,
        spooled_events: report.spooled_events,
        replayed_events: report.replayed_events,
        dropped_events: report.dropped_events,
        spool_bytes_left: report.spool_bytes_left,
        corrupt_spool_segments: report.corrupt_spool_segments,
        spool_write_failures: report.spool_write_failures,
        dead_lettered_events: report.dead_lettered_events,
        error: report.refused.clone(),
        unknown_level_lines: unknown_level_lines.load(std::sync::atomic::Ordering::Relaxed),
        inputs: input_counters.snapshot(),
        elapsed_s,
        events_per_s: report.events as f64 / elapsed_s.max(1e-9),
    })
}

/// The shipper's report; a shipper that panicked or was cancelled is a failure of the
/// agent (exit 1), never an empty report that looks like a quiet run.
fn shipper_outcome(joined: Result<ShipReport, tokio::task::JoinError>) -> anyhow::Result<ShipReport> {
    joined.map_err(|join_error| {
        anyhow::anyhow!(
            "the shipper failed ({join_error}): the batches it held were not delivered (spooled ones stay in the spool)"
        )
    })
}

/// Identifies this run of the agent, so that event ids stay unique across restarts of an
/// agent with the same id (sequence numbers start again at 0). Random 64 bits from the
/// OS: start time and pid collide when agents with one id start together in containers
/// (pid 1 in each); two runs share an id with probability about n²/2⁶⁵.
fn run_id() -> String {
    use rand::TryRng;
    let random = rand::rngs::SysRng.try_next_u64().unwrap_or_else(|_| {
        // No OS entropy (a very old kernel): fall back to time and pid, as before.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        (now.as_nanos() as u64) ^ (u64::from(std::process::id()) << 48)
    });
    format!("{random:016x}")
}

/// Generates events at the configured rate into batches.
async fn generate(
    config: &AgentConfig,
    run_id: &str,
    batch_sender: mpsc::Sender<Batch>,
    mut progress: Option<&mut crate::progress::Progress>,
    shutdown: &CancellationToken,
) {
    let seed = config.seed.unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        nanos ^ (u64::from(std::process::id()) << 32)
    });
    let host = crate::hostname();
    let mut generator = Generator::new(
        seed,
        &config.level_mix,
        &config.service,
        &host,
        &config.agent_id,
        run_id,
    );
    let mut batcher = Batcher::new(config.pack, config.batch_entries, config.batch_max_bytes, config.linger);
    let mut generated: u64 = 0;
    let limit = config.count.unwrap_or(u64::MAX);
    let started = Instant::now();

    while generated < limit && !shutdown.is_cancelled() {
        let due = if config.rate_per_s == 0 {
            u64::MAX
        } else {
            let owed = (started.elapsed().as_secs_f64() * config.rate_per_s as f64) as u64;
            owed.saturating_sub(generated)
        };
        let now_count = due.min(limit - generated).min(batcher.room());
        for _ in 0..now_count {
            batcher.push(|out| generator.write_next(out));
            generated += 1;
            if batcher.room() == 0 {
                break; // full by bytes before the count
            }
        }
        if let Some(progress) = progress.as_deref_mut() {
            progress.update(generated, "");
        }
        let now = Instant::now();
        if batcher.is_due(now) || (generated == limit) {
            if let Some(batch) = batcher.take()
                && batch_sender.send(batch).await.is_err()
            {
                break;
            }
            continue;
        }
        if now_count == 0 {
            // Nothing owed yet: sleep until the next event is due or the batch's linger ends.
            let next_event_at =
                started + Duration::from_secs_f64((generated + 1) as f64 / config.rate_per_s.max(1) as f64);
            let wake_at = batcher
                .deadline()
                .map_or(next_event_at, |deadline| deadline.min(next_event_at));
            tokio::select! {
                _ = tokio::time::sleep_until(wake_at) => {}
                _ = shutdown.cancelled() => {}
            }
        }
    }
    if let Some(batch) = batcher.take() {
        let _ = batch_sender.send(batch).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_shipper_is_an_error_not_an_empty_report() {
        let joined = tokio::spawn(async {
            panic!("shipper bug");
            #[allow(unreachable_code)]
            ShipReport::default()
        })
        .await;
        let error = shipper_outcome(joined).unwrap_err();
        assert!(error.to_string().contains("the shipper failed"), "{error}");
    }

    #[test]
    fn run_ids_do_not_repeat_within_one_process_and_millisecond() {
        let run_ids: std::collections::HashSet<String> = (0..1000).map(|_| run_id()).collect();
        assert_eq!(run_ids.len(), 1000, "run ids of one pid and millisecond collided");
        assert!(run_ids.iter().all(|run_id| run_id.len() == 16));
    }
}
