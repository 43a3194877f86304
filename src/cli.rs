//! Command-line interface. Every option is optional here: [`crate::config`] merges flags
//! and `LOGSENTINEL_*` variables (clap) with the TOML file and the defaults.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "logsentinel", version, about = "Log ingestion and alerting on Redis Streams")]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate logs and ship them to Redis in batches
    Agent(Box<AgentArgs>),
    /// Consume logs in a consumer group, raise alerts, acknowledge
    Police(PoliceArgs),
    /// Show stream, group, consumer, lag and dead-letter figures
    Status(StatusArgs),
    /// Run a private Redis, 3 agents and 2 police, and show what happens
    Demo(DemoArgs),
    /// Measure throughput, latency and memory against a private Redis
    Bench(BenchArgs),
    /// Exit 0 if Redis answers PING (and, with a health file, the police loop is alive)
    Healthcheck(HealthcheckArgs),
}

/// Options shared by every subcommand.
#[derive(Debug, Args, Clone, Default)]
pub struct CommonArgs {
    /// TOML config file (flags > environment > file > defaults)
    #[arg(long, global = true, env = "LOGSENTINEL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Redis URL: redis://[user:password@]host:port[/db]
    #[arg(long, global = true, env = "LOGSENTINEL_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Stream the agents write to [default: logsentinel:logs]
    #[arg(long, global = true, env = "LOGSENTINEL_STREAM")]
    pub stream: Option<String>,
    /// Consumer group of the police [default: police]
    #[arg(long, global = true, env = "LOGSENTINEL_GROUP")]
    pub group: Option<String>,
    /// Stream the police write alerts to [default: logsentinel:alerts]
    #[arg(long, global = true, env = "LOGSENTINEL_ALERTS_STREAM")]
    pub alerts_stream: Option<String>,
    /// Dead-letter stream [default: logsentinel:dead]
    #[arg(long, global = true, env = "LOGSENTINEL_DEAD_STREAM")]
    pub dead_stream: Option<String>,
    /// List key used in list mode [default: log_queue]
    #[arg(long, global = true, env = "LOGSENTINEL_KEY")]
    pub key: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Redis Stream with a consumer group (at-least-once)
    Stream,
    /// Plain Redis list (LPUSH / BLMOVE), for list-based shippers
    List,
}

/// Where an agent's events come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentSource {
    /// Realistic synthetic logs at `--rate`
    Synthetic,
    /// Lines read from standard input (JSON, logfmt or plain text), until end of input
    Stdin,
    /// Syslog messages (RFC 5424, RFC 3164) over UDP and TCP
    Syslog,
    /// Files tailed by path or glob, following rotation, with checkpoints
    File,
    /// HTTP `POST /ingest` with NDJSON or a JSON array
    Http,
}

/// Where a file never seen before is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadFrom {
    /// The first line
    Start,
    /// Only lines written after the agent found the file
    End,
}

#[derive(Debug, Args, Default)]
pub struct AgentArgs {
    /// Where events come from: synthetic, or any of stdin, syslog, file, http (repeat the
    /// flag or separate with commas) [default: synthetic]
    #[arg(long, env = "LOGSENTINEL_AGENT_SOURCE", value_delimiter = ',')]
    pub source: Vec<AgentSource>,
    /// File source: a path or glob to tail (repeat the flag or separate with commas)
    #[arg(long, env = "LOGSENTINEL_FILE", value_delimiter = ',')]
    pub file: Vec<String>,
    /// File source: where files without a checkpoint are read from [default: start]
    #[arg(long, env = "LOGSENTINEL_READ_FROM")]
    pub read_from: Option<ReadFrom>,
    /// File source: where read offsets are kept [default: logsentinel-checkpoints.json]
    #[arg(long, env = "LOGSENTINEL_CHECKPOINT_FILE")]
    pub checkpoint_file: Option<PathBuf>,
    /// File and stdin sources: lines matching this regex continue the previous event (e.g.
    /// '^\s' for indented stack traces) [default: every line is an event]
    #[arg(long, env = "LOGSENTINEL_MULTILINE_CONTINUATION")]
    pub multiline_continuation: Option<String>,
    /// Plain-text lines: regex finding the level (its first group, or the whole match)
    /// [default: the first common level word among the first tokens]
    #[arg(long, env = "LOGSENTINEL_LEVEL_PATTERN")]
    pub level_pattern: Option<String>,
    /// HTTP source: address to listen on [default: 0.0.0.0:8080]
    #[arg(long, env = "LOGSENTINEL_HTTP_LISTEN")]
    pub http_listen: Option<String>,
    /// HTTP source: largest request body, in bytes [default: 10485760]
    #[arg(long, env = "LOGSENTINEL_HTTP_MAX_BODY_BYTES")]
    pub http_max_body_bytes: Option<usize>,
    /// Disk spool directory: batches Redis cannot take go there and are replayed in order
    /// [default: no spool, batches wait in memory and the sources wait]
    #[arg(long, env = "LOGSENTINEL_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Largest size of the spool on disk, in bytes [default: 1073741824]
    #[arg(long, env = "LOGSENTINEL_SPOOL_MAX_BYTES")]
    pub spool_max_bytes: Option<u64>,
    /// When the spool is full: block (sources wait) or drop_newest (counted) [default: block]
    #[arg(long, env = "LOGSENTINEL_WHEN_FULL")]
    pub when_full: Option<crate::agent::spool::WhenFull>,
    /// Syslog UDP address to listen on [default with --source syslog and no TCP: 0.0.0.0:5514]
    #[arg(long, env = "LOGSENTINEL_SYSLOG_UDP")]
    pub syslog_udp: Option<String>,
    /// Syslog TCP address to listen on [default with --source syslog and no UDP: 0.0.0.0:5514]
    #[arg(long, env = "LOGSENTINEL_SYSLOG_TCP")]
    pub syslog_tcp: Option<String>,
    /// Events per second, 0 = unlimited [default: 1000]
    #[arg(long, env = "LOGSENTINEL_RATE")]
    pub rate: Option<u64>,
    /// Stop after this many events [default: run until stopped]
    #[arg(long, env = "LOGSENTINEL_COUNT")]
    pub count: Option<u64>,
    /// Seed of the generator, for reproducible logs [default: random]
    #[arg(long, env = "LOGSENTINEL_SEED")]
    pub seed: Option<u64>,
    /// Share of each level, e.g. INFO=70,WARNING=20,ERROR=8,CRITICAL=2
    #[arg(long, env = "LOGSENTINEL_LEVEL_MIX")]
    pub level_mix: Option<String>,
    /// Service of the events (stdin: when a line names none) [default: checkout; stdin: stdin]
    #[arg(long, env = "LOGSENTINEL_SERVICE")]
    pub service: Option<String>,
    /// Agent id, the first part of every event id [default: the hostname]
    #[arg(long, env = "LOGSENTINEL_AGENT_ID")]
    pub agent_id: Option<String>,
    /// Where to ship: stream or list [default: stream]
    #[arg(long, env = "LOGSENTINEL_SINK")]
    pub sink: Option<Transport>,
    /// Events per stream entry; 1 keeps entries readable by any tool [default: 1]
    #[arg(long, env = "LOGSENTINEL_PACK")]
    pub pack: Option<usize>,
    /// Stream entries (or list items) per pipelined batch, at most 2048 events [default: 256]
    #[arg(long, env = "LOGSENTINEL_BATCH")]
    pub batch: Option<usize>,
    /// Payload bytes at which a batch is cut, whatever its entry count (1024 to 67108864)
    /// [default: 4194304]
    #[arg(long, env = "LOGSENTINEL_BATCH_MAX_BYTES")]
    pub batch_max_bytes: Option<usize>,
    /// Longest wait before a partial batch is sent, in milliseconds [default: 1]
    #[arg(long, env = "LOGSENTINEL_LINGER_MS")]
    pub linger_ms: Option<u64>,
    /// Batches waiting for Redis before the generator waits too [default: 4]
    #[arg(long, env = "LOGSENTINEL_QUEUE_BATCHES")]
    pub queue_batches: Option<usize>,
    /// On stop, how long to keep retrying Redis before giving up, in ms [default: 10000]
    #[arg(long, env = "LOGSENTINEL_SHUTDOWN_TIMEOUT_MS")]
    pub shutdown_timeout_ms: Option<u64>,
    /// Hold batches while the consumers are this many entries behind (group lag, or list
    /// length in list mode); 0 = no limit [default: 1000000]
    #[arg(long, env = "LOGSENTINEL_MAX_LAG")]
    pub max_lag: Option<u64>,
    /// Print the final summary as one JSON line
    #[arg(long)]
    pub summary_json: bool,
}

#[derive(Debug, Args, Default)]
pub struct PoliceArgs {
    /// Where to read: stream or list [default: stream]
    #[arg(long, env = "LOGSENTINEL_SOURCE")]
    pub source: Option<Transport>,
    /// Consumer name, unique per instance [default: <hostname>-<pid>]
    #[arg(long, env = "LOGSENTINEL_CONSUMER")]
    pub consumer: Option<String>,
    /// Stream entries (or list items) read per batch [default: 256]
    #[arg(long, env = "LOGSENTINEL_READ_COUNT")]
    pub read_count: Option<usize>,
    /// Longest blocking read, in milliseconds [default: 1000]
    #[arg(long, env = "LOGSENTINEL_BLOCK_MS")]
    pub block_ms: Option<u64>,
    /// Entries pending this long on another consumer are claimed, in ms [default: 30000]
    #[arg(long, env = "LOGSENTINEL_CLAIM_IDLE_MS")]
    pub claim_idle_ms: Option<u64>,
    /// Deliveries after which an entry goes to the dead-letter stream [default: 5]
    #[arg(long, env = "LOGSENTINEL_MAX_DELIVERIES")]
    pub max_deliveries: Option<u64>,
    /// Lowest level that raises an alert [default: CRITICAL]
    #[arg(long, env = "LOGSENTINEL_ALERT_LEVEL")]
    pub alert_level: Option<String>,
    /// Also append alerts to this JSONL file
    #[arg(long, env = "LOGSENTINEL_ALERTS_FILE")]
    pub alerts_file: Option<PathBuf>,
    /// Do not print alerts on stdout (`--quiet` or `--quiet true|false`)
    #[arg(long, env = "LOGSENTINEL_QUIET", num_args = 0..=1, default_missing_value = "true")]
    pub quiet: Option<bool>,
    /// How long an alert id is remembered to drop duplicates, in seconds [default: 86400]
    #[arg(long, env = "LOGSENTINEL_ALERT_DEDUP_TTL_S")]
    pub alert_dedup_ttl_s: Option<u64>,
    /// Consumers idle this long with nothing pending are removed, in ms [default: 300000]
    #[arg(long, env = "LOGSENTINEL_CONSUMER_IDLE_REMOVE_MS")]
    pub consumer_idle_remove_ms: Option<u64>,
    /// Trim acknowledged entries from the stream with XTRIM MINID [default: true]
    #[arg(long, env = "LOGSENTINEL_TRIM", num_args = 0..=1, default_missing_value = "true")]
    pub trim: Option<bool>,
    /// Period of the maintenance work (claim, trim, cleanup), in ms [default: 1000]
    #[arg(long, env = "LOGSENTINEL_MAINTENANCE_INTERVAL_MS")]
    pub maintenance_interval_ms: Option<u64>,
    /// File touched by the read loop at least every few seconds, for `healthcheck`
    #[arg(long, env = "LOGSENTINEL_HEALTH_FILE")]
    pub health_file: Option<PathBuf>,
}

#[derive(Debug, Args, Default)]
pub struct StatusArgs {
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Default)]
pub struct DemoArgs {
    /// How long to run, in seconds [default: 20]
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Events per second of each agent [default: 500]
    #[arg(long, default_value_t = 500)]
    pub rate: u64,
    /// Events per stream entry [default: 1]
    #[arg(long, default_value_t = 1)]
    pub pack: usize,
}

#[derive(Debug, Args, Default)]
pub struct BenchArgs {
    /// A few seconds in all: tiny counts, one run per scenario (for CI)
    #[arg(long)]
    pub smoke: bool,
    /// Runs per scenario; the table shows median, min and max [default: 3, smoke: 1]
    #[arg(long)]
    pub repeat: Option<usize>,
    /// Events per throughput run [default: 1000000, smoke: 20000]
    #[arg(long)]
    pub events: Option<u64>,
    /// Events per entry in the packed scenarios
    #[arg(long, default_value_t = 100)]
    pub pack: usize,
    /// Turn Redis AOF on (appendfsync everysec); off by default
    #[arg(long)]
    pub aof: bool,
    /// Where to write the JSON results
    #[arg(long, default_value = "bench-results.json")]
    pub json_out: PathBuf,
}

#[derive(Debug, Args, Default)]
pub struct HealthcheckArgs {
    /// Also require this file (a police's `--health-file`), when it exists, to be fresh
    #[arg(long, env = "LOGSENTINEL_HEALTH_FILE")]
    pub health_file: Option<PathBuf>,
    /// Oldest acceptable age of the health file, in seconds
    #[arg(long, default_value_t = 30)]
    pub max_age_s: u64,
}
