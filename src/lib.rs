//! LogSentinel: log ingestion and alerting on Redis Streams.
//!
//! # Layout
//! - [`cli`]: one options struct per subcommand (clap and serde), defaults declared once
//! - [`config`]: flags > environment > TOML file > defaults, validation naming the key
//! - [`options`]: value types of the options (choices, durations, sizes), a leaf module
//! - [`event`]: the event model, severity levels, the on-stream encoding, other shippers'
//!   shapes, parsing of raw lines (JSON, logfmt, plain text)
//! - [`broker`]: Redis connections and backoff, key names, stream and list commands, Lua scripts
//! - [`agent`]: sources (synthetic generator, files, HTTP, stdin, syslog; TLS for the
//!   listeners) → batcher → shipper (what to send when) → target (the Redis wire side),
//!   with backpressure and the disk spool
//! - [`police`]: consumer group loop, list-mode loop, rules, alerts, settle (the alerts
//!   stream it writes is the outbox)
//! - [`delivery`]: outbox readers per sink (retries, rate limit and digests, sink dead
//!   letters) and the sinks: console, jsonl, webhook, slack, alertmanager, email
//! - [`observability`]: the admin listener (`/metrics`, `/healthz`, `/readyz`), metric
//!   names declared once, the loops' watchdog, the police's sampled group figures
//! - [`status`]: stream, group, consumer, lag and dead-letter figures
//! - [`ops`]: operating tools: `top` (live figures in the terminal), `tail` (a live view of
//!   any stream) and `dlq` (dead-letter repair)
//! - [`progress`]: progress of long runs on stderr, and their one-line summaries
//! - [`local_redis`]: a private `redis-server` on a free loopback port (demo and tests)
//! - [`demo`]: Redis, 3 agents and 2 police in one command
//! - [`bench`]: throughput, latency and memory scenarios against a private Redis
//! - [`shutdown`]: signals → cancellation token
//! - [`telemetry`]: tracing subscriber

pub mod agent;
pub mod bench;
pub mod broker;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod demo;
pub mod event;
pub mod local_redis;
pub mod observability;
pub mod ops;
pub mod options;
pub mod police;
pub mod progress;
pub mod shutdown;
pub mod status;
pub mod telemetry;

/// The machine's hostname (the container id inside Docker), or `localhost`.
pub fn hostname() -> String {
    gethostname::gethostname()
        .into_string()
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
