//! Command-line interface: one options struct per subcommand, deriving both clap (flags and
//! `LOGSENTINEL_*` variables) and serde (the config file's table), so that each option is
//! declared once, with its default. [`crate::config`] merges the three sources and
//! validates the result.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};

use crate::ops::filter::{LevelFilter, StartAt};
use crate::options::{AgentSource, LogFormat, ReadFrom, Transport, WhenFull};
use crate::options::{DurationMs, DurationS, Size, one_or_many};

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
    /// Run 3 agents and 2 police on a private Redis (or --redis-url's), and show what happens
    Demo(DemoArgs),
    /// Measure throughput, latency and memory against a private Redis
    Bench(BenchArgs),
    /// Live view of streams, groups, consumers, dead letters and sink backlogs (reads Redis only)
    Top(TopArgs),
    /// Exit 0 if Redis answers PING (and, with a health file, the police loop is alive)
    Healthcheck(HealthcheckArgs),
    /// Check a rule file, or replay sample events through it offline (no Redis)
    Rules(RulesArgs),
    /// Print the logs, alerts or dead letters flowing through, as they come (plain XREAD:
    /// takes nothing from the police)
    Tail(TailArgs),
    /// List, show, replay or purge dead letters
    Dlq(DlqArgs),
    /// Print the completion script of a shell on stdout
    Completions(CompletionsArgs),
    /// Write the man pages (logsentinel.1, one per subcommand) into a directory
    Manpage(ManpageArgs),
}

/// Lets the variables of the options' older spellings (`LOGSENTINEL_CLAIM_IDLE_MS` for
/// `--claim-idle`, `LOGSENTINEL_SOURCE` for the police's `--transport`) keep working: each
/// is copied to the current name unless that is set. Clap reads one variable per option.
/// Call before any thread starts (it sets process environment variables).
pub fn accept_old_variable_names() {
    let command = <Cli as clap::CommandFactory>::command();
    for subcommand in std::iter::once(&command).chain(command.get_subcommands()) {
        for argument in subcommand.get_arguments() {
            let Some(current) = argument.get_env() else { continue };
            if std::env::var_os(current).is_some() {
                continue;
            }
            for alias in argument.get_all_aliases().unwrap_or_default() {
                let old = format!("LOGSENTINEL_{}", alias.replace('-', "_").to_uppercase());
                if let Some(value) = std::env::var_os(&old) {
                    // SAFETY: called first thing in main, while the process has one thread.
                    unsafe { std::env::set_var(current, value) };
                    break;
                }
            }
        }
    }
}

/// Options shared by every subcommand. Each field is an option on the command line, a
/// `LOGSENTINEL_*` variable and a key at the top of the config file; the `default_value`
/// here is the one definition of its default.
#[derive(Debug, Args, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommonArgs {
    /// TOML config file (flags > environment > file > defaults)
    #[arg(long, global = true, env = "LOGSENTINEL_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Redis URL: redis://[user:password@]host:port[/db], or rediss:// for TLS
    #[arg(
        long,
        global = true,
        env = "LOGSENTINEL_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    /// Stream the agents write to
    #[arg(long, global = true, env = "LOGSENTINEL_STREAM", default_value = "logsentinel:logs")]
    pub stream: String,
    /// Consumer group of the police
    #[arg(long, global = true, env = "LOGSENTINEL_GROUP", default_value = "police")]
    pub group: String,
    /// Stream the police write alerts to
    #[arg(
        long,
        global = true,
        env = "LOGSENTINEL_ALERTS_STREAM",
        default_value = "logsentinel:alerts"
    )]
    pub alerts_stream: String,
    /// Dead-letter stream
    #[arg(
        long,
        global = true,
        env = "LOGSENTINEL_DEAD_STREAM",
        default_value = "logsentinel:dead"
    )]
    pub dead_stream: String,
    /// List key used in list mode
    #[arg(long, global = true, env = "LOGSENTINEL_KEY", default_value = "log_queue")]
    pub key: String,
    /// Log lines on stderr: text or json (one object per line, the same field names)
    #[arg(long, global = true, env = "LOGSENTINEL_LOG_FORMAT", default_value = "text")]
    #[serde(skip)] // logging starts before the file is read
    pub log_format: LogFormat,
}

/// Options of `agent`; in the config file, the `[agent]` table.
#[derive(Debug, Args, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentArgs {
    /// Where events come from: synthetic, or any of stdin, syslog, file, http (repeat the
    /// flag or separate with commas; in the file a string or a list)
    #[arg(
        long,
        env = "LOGSENTINEL_AGENT_SOURCE",
        value_delimiter = ',',
        default_value = "synthetic"
    )]
    #[serde(deserialize_with = "one_or_many")]
    pub source: Vec<AgentSource>,
    /// File source: a path or glob to tail (repeat the flag or separate with commas)
    #[arg(long, env = "LOGSENTINEL_FILE", value_delimiter = ',')]
    #[serde(default, deserialize_with = "one_or_many")]
    pub file: Vec<String>,
    /// File source: where files without a checkpoint are read from
    #[arg(long, env = "LOGSENTINEL_READ_FROM", default_value = "start")]
    pub read_from: ReadFrom,
    /// File source: where read offsets are kept
    #[arg(
        long,
        env = "LOGSENTINEL_CHECKPOINT_FILE",
        default_value = "logsentinel-checkpoints.json"
    )]
    pub checkpoint_file: PathBuf,
    /// File and stdin sources: lines matching this regex continue the previous event (e.g.
    /// '^\s' for indented stack traces); by default every line is an event
    #[arg(long, env = "LOGSENTINEL_MULTILINE_CONTINUATION")]
    pub multiline_continuation: Option<String>,
    /// Plain-text lines: regex finding the level (its first group, or the whole match); by
    /// default the first common level word among the first tokens
    #[arg(long, env = "LOGSENTINEL_LEVEL_PATTERN")]
    pub level_pattern: Option<String>,
    /// HTTP source: address to listen on (0.0.0.0:8080 to accept other hosts)
    #[arg(long, env = "LOGSENTINEL_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
    pub http_listen: String,
    /// HTTP source: largest request body (larger ones get 413)
    #[arg(long, env = "LOGSENTINEL_HTTP_MAX_BODY_BYTES", default_value = "10MiB")]
    pub http_max_body_bytes: Size,
    /// HTTP source: requests handled at once, more get 503; each may hold a whole body
    #[arg(long, env = "LOGSENTINEL_HTTP_MAX_REQUESTS", default_value_t = 16)]
    pub http_max_requests: usize,
    /// HTTP source: longest wait for a request's whole body, then 408
    #[arg(
        long,
        env = "LOGSENTINEL_HTTP_BODY_TIMEOUT",
        alias = "http-body-timeout-ms",
        default_value = "30s"
    )]
    #[serde(alias = "http_body_timeout_ms")]
    pub http_body_timeout: DurationMs,
    /// HTTP source: longest wait for a request's events to be stored; then 503 (the events
    /// stay queued and are stored later)
    #[arg(
        long,
        env = "LOGSENTINEL_HTTP_STORE_TIMEOUT",
        alias = "http-store-timeout-ms",
        default_value = "30s"
    )]
    #[serde(alias = "http_store_timeout_ms")]
    pub http_store_timeout: DurationMs,
    /// HTTP source: file holding a token that requests must send as `Authorization: Bearer
    /// TOKEN` (else 401); by default no token is needed
    #[arg(long, env = "LOGSENTINEL_HTTP_TOKEN_FILE")]
    pub http_token_file: Option<PathBuf>,
    /// File, stdin and syslog sources: longest line or message kept (at least 256); the
    /// rest is discarded and the event marked `truncated`
    #[arg(long, env = "LOGSENTINEL_MAX_LINE_BYTES", default_value = "1MiB")]
    pub max_line_bytes: Size,
    /// Syslog TCP connections open at once; more are closed at once
    #[arg(long, env = "LOGSENTINEL_SYSLOG_MAX_CONNECTIONS", default_value_t = 1000)]
    pub syslog_max_connections: usize,
    /// A syslog TCP connection silent this long is closed
    #[arg(
        long,
        env = "LOGSENTINEL_SYSLOG_IDLE_TIMEOUT",
        alias = "syslog-idle-timeout-ms",
        default_value = "5m"
    )]
    #[serde(alias = "syslog_idle_timeout_ms")]
    pub syslog_idle_timeout: DurationMs,
    /// HTTP and syslog TCP sources: PEM certificate chain; with it both take TLS only
    /// (HTTPS, syslog over TLS); plain TCP by default
    #[arg(long, env = "LOGSENTINEL_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert
    #[arg(long, env = "LOGSENTINEL_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Disk spool directory: batches Redis cannot take go there and are replayed in order;
    /// without one, batches wait in memory and the sources wait
    #[arg(long, env = "LOGSENTINEL_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Largest size of the spool on disk (at least 64KiB)
    #[arg(long, env = "LOGSENTINEL_SPOOL_MAX_BYTES", default_value = "1GiB")]
    pub spool_max_bytes: Size,
    /// When the spool is full: block (sources wait) or drop_newest (dropped, counted)
    #[arg(long, env = "LOGSENTINEL_WHEN_FULL", default_value = "block")]
    pub when_full: WhenFull,
    /// Syslog UDP address to listen on; with --source syslog and neither address given,
    /// both UDP and TCP listen on 127.0.0.1:5514
    #[arg(long, env = "LOGSENTINEL_SYSLOG_UDP")]
    pub syslog_udp: Option<String>,
    /// Syslog TCP address to listen on (see --syslog-udp)
    #[arg(long, env = "LOGSENTINEL_SYSLOG_TCP")]
    pub syslog_tcp: Option<String>,
    /// Synthetic source: events per second, 0 = unlimited
    #[arg(long, env = "LOGSENTINEL_RATE", default_value_t = 1000)]
    pub rate: u64,
    /// Stop after this many events; by default run until stopped
    #[arg(long, env = "LOGSENTINEL_COUNT")]
    pub count: Option<u64>,
    /// Seed of the generator, for reproducible logs; random by default
    #[arg(long, env = "LOGSENTINEL_SEED")]
    pub seed: Option<u64>,
    /// Synthetic source: weight of each level
    #[arg(
        long,
        env = "LOGSENTINEL_LEVEL_MIX",
        default_value = "INFO=70,WARNING=20,ERROR=8,CRITICAL=2"
    )]
    pub level_mix: String,
    /// Service of the events (real sources: of lines that name none); by default checkout
    /// for synthetic logs, else the source's name (stdin, syslog, file, http; agent when
    /// several sources run)
    #[arg(long, env = "LOGSENTINEL_SERVICE")]
    pub service: Option<String>,
    /// Agent id, the first part of every event id; by default the hostname
    #[arg(long, env = "LOGSENTINEL_AGENT_ID")]
    pub agent_id: Option<String>,
    /// Where to ship: stream or list
    #[arg(long, env = "LOGSENTINEL_SINK", default_value = "stream")]
    pub sink: Transport,
    /// Events per stream entry (1 to 10000); 1 keeps entries readable by any tool
    #[arg(long, env = "LOGSENTINEL_PACK", default_value_t = 1)]
    pub pack: usize,
    /// Stream entries (or list items) per pipelined batch (1 to 2048), at most 2048 events
    #[arg(long, env = "LOGSENTINEL_BATCH", default_value_t = 256)]
    pub batch: usize,
    /// Payload size at which a batch is cut, whatever its entry count (1KiB to 64MiB)
    #[arg(long, env = "LOGSENTINEL_BATCH_MAX_BYTES", default_value = "4MiB")]
    pub batch_max_bytes: Size,
    /// Longest wait before a partial batch is sent
    #[arg(long, env = "LOGSENTINEL_LINGER", alias = "linger-ms", default_value = "1ms")]
    #[serde(alias = "linger_ms")]
    pub linger: DurationMs,
    /// Batches waiting for Redis before the sources wait too (1 to 1024)
    #[arg(long, env = "LOGSENTINEL_QUEUE_BATCHES", default_value_t = 4)]
    pub queue_batches: usize,
    /// On stop, how long to keep retrying Redis before giving up
    #[arg(
        long,
        env = "LOGSENTINEL_SHUTDOWN_TIMEOUT",
        alias = "shutdown-timeout-ms",
        default_value = "10s"
    )]
    #[serde(alias = "shutdown_timeout_ms")]
    pub shutdown_timeout: DurationMs,
    /// Hold batches while the consumers are this many entries behind (group lag, or list
    /// length in list mode); 0 = no limit
    #[arg(long, env = "LOGSENTINEL_MAX_LAG", default_value_t = 1_000_000)]
    pub max_lag: u64,
    /// Admin HTTP listener (/metrics, /healthz, /readyz), or off
    #[arg(long, env = "LOGSENTINEL_ADMIN_LISTEN", default_value = "127.0.0.1:9465")]
    pub admin_listen: String,
    /// Print the final summary as one JSON line
    #[arg(long)]
    pub summary_json: bool,
}

/// Options of `police`; in the config file, the `[police]` table.
#[derive(Debug, Args, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoliceArgs {
    /// Where to read: stream or list
    #[arg(long, env = "LOGSENTINEL_TRANSPORT", alias = "source", default_value = "stream")]
    #[serde(alias = "source")]
    pub transport: Transport,
    /// Consumer name, unique per instance; by default <hostname>-<pid>
    #[arg(long, env = "LOGSENTINEL_CONSUMER")]
    pub consumer: Option<String>,
    /// Most stream entries (or list items) read per batch (1 to 10000); packed entries are
    /// read fewer at a time, about 25600 events a batch
    #[arg(long, env = "LOGSENTINEL_READ_COUNT", default_value_t = 1024)]
    pub read_count: usize,
    /// Longest blocking read (at most 5s); also bounds how long a graceful stop takes
    #[arg(long, env = "LOGSENTINEL_BLOCK", alias = "block-ms", default_value = "1s")]
    #[serde(alias = "block_ms")]
    pub block: DurationMs,
    /// Entries pending this long on another consumer are claimed; list mode: lifetime of
    /// a consumer's heartbeat
    #[arg(long, env = "LOGSENTINEL_CLAIM_IDLE", alias = "claim-idle-ms", default_value = "30s")]
    #[serde(alias = "claim_idle_ms")]
    pub claim_idle: DurationMs,
    /// Deliveries after which an entry goes to the dead-letter stream
    #[arg(long, env = "LOGSENTINEL_MAX_DELIVERIES", default_value_t = 5)]
    pub max_deliveries: u64,
    /// Lowest level that raises an alert (the built-in rule, used without --rules)
    #[arg(long, env = "LOGSENTINEL_ALERT_LEVEL", default_value = "CRITICAL")]
    pub alert_level: String,
    /// Rule file (TOML, see "Alert rules"); SIGHUP reloads it. Without one, the built-in
    /// rule `critical` raises an alert per event at --alert-level or above
    #[arg(long, env = "LOGSENTINEL_RULES")]
    pub rules: Option<PathBuf>,
    /// Built-in rule: also deliver alerts to this JSONL file (the `jsonl` sink, fsynced)
    #[arg(long, env = "LOGSENTINEL_ALERTS_FILE")]
    pub alerts_file: Option<PathBuf>,
    /// Built-in rule: do not print alerts on stdout (`--quiet` or `--quiet true|false`)
    #[arg(long, env = "LOGSENTINEL_QUIET", num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    pub quiet: bool,
    /// How long an alert id is remembered to drop duplicates (1s to 10 years)
    #[arg(
        long,
        env = "LOGSENTINEL_ALERT_DEDUP_TTL",
        alias = "alert-dedup-ttl-s",
        default_value = "1day"
    )]
    #[serde(alias = "alert_dedup_ttl_s")]
    pub alert_dedup_ttl: DurationS,
    /// Consumers with nothing pending and no heartbeat for this long are removed from the
    /// group
    #[arg(
        long,
        env = "LOGSENTINEL_CONSUMER_IDLE_REMOVE",
        alias = "consumer-idle-remove-ms",
        default_value = "5m"
    )]
    #[serde(alias = "consumer_idle_remove_ms")]
    pub consumer_idle_remove: DurationMs,
    /// Trim acknowledged entries from the stream with XTRIM MINID (`--trim false` keeps them)
    #[arg(long, env = "LOGSENTINEL_TRIM", num_args = 0..=1, default_missing_value = "true", default_value_t = true, action = clap::ArgAction::Set)]
    pub trim: bool,
    /// Delivered alert records stay in the alerts stream this long (for `tail alerts` and
    /// audits), or until Redis is past 90 % of maxmemory; undelivered ones always stay
    #[arg(long, env = "LOGSENTINEL_ALERTS_RETENTION", default_value = "1h")]
    pub alerts_retention: DurationMs,
    /// Period of the maintenance work (heartbeat, claim, cleanup, trim)
    #[arg(
        long,
        env = "LOGSENTINEL_MAINTENANCE_INTERVAL",
        alias = "maintenance-interval-ms",
        default_value = "1s"
    )]
    #[serde(alias = "maintenance_interval_ms")]
    pub maintenance_interval: DurationMs,
    /// File touched by the read loop at least every few seconds, for `healthcheck`
    #[arg(long, env = "LOGSENTINEL_HEALTH_FILE")]
    pub health_file: Option<PathBuf>,
    /// Largest entry (or list item) decoded; larger ones go to the dead-letter stream
    /// whole, with the reason (1KiB to 512MiB)
    #[arg(long, env = "LOGSENTINEL_MAX_ENTRY_BYTES", default_value = "16MiB")]
    pub max_entry_bytes: Size,
    /// Admin HTTP listener (/metrics, /healthz, /readyz), or off
    #[arg(long, env = "LOGSENTINEL_ADMIN_LISTEN", default_value = "127.0.0.1:9464")]
    pub admin_listen: String,
}

#[derive(Debug, Args, Default)]
pub struct StatusArgs {
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

// `demo` runs a private Redis, or the one `--redis-url` (or its variable or file key) names.
// clap prints each `default_value_t` itself: the doc comments must not repeat it.
#[derive(Debug, Args, Default)]
pub struct DemoArgs {
    /// How long to run, e.g. 20s or 2m; a bare number is seconds (Ctrl-C stops earlier, cleanly)
    #[arg(long, default_value = "20s")]
    pub duration: DurationS,
    /// Events per second of each agent
    #[arg(long, default_value_t = 500)]
    pub rate: u64,
    /// Events per stream entry
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
    /// Run only the scenarios whose name contains this text (e.g. `drain`, `latency`,
    /// `spool`); the XADD ceiling is always measured
    #[arg(long, value_name = "TEXT")]
    pub only: Option<String>,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Time between readings
    #[arg(long, default_value = "1s")]
    pub refresh: DurationMs,
    /// Consumers idle longer than this with entries pending are flagged STALLED (the
    /// police's --claim-idle)
    #[arg(long, env = "LOGSENTINEL_CLAIM_IDLE", default_value = "30s")]
    pub claim_idle: DurationMs,
    /// Print one reading and exit: the screen as text, or JSON with --json
    #[arg(long)]
    pub once: bool,
    /// With --once: print the reading as JSON
    #[arg(long, requires = "once")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RulesArgs {
    #[command(subcommand)]
    pub action: RulesAction,
}

#[derive(Debug, Subcommand)]
pub enum RulesAction {
    /// Check a rule file: exit 0 with a one-line summary, or 2 with every error as
    /// FILE:LINE:COL: message
    Check {
        /// The rule file (TOML)
        file: PathBuf,
    },
    /// Replay sample events through the rules (no Redis) and print the alerts that would
    /// fire, one JSON record per line; the clock work runs at the end of the input
    Test {
        /// The rule file (TOML)
        file: PathBuf,
        /// Sample events, one JSON event per line (the stream's v1 event shape); a line that
        /// is not an event is reported as FILE:LINE: reason and skipped
        #[arg(long)]
        events: PathBuf,
        /// Exit 1 at the end if any line of --events was not an event (default: report them
        /// and exit 0)
        #[arg(long)]
        strict: bool,
        /// The police's clock for the future clamp (RFC 3339): an event stamped more than
        /// 5 min after it (or after the newest event time so far, if later) is replayed at
        /// the newest event time so far, as the police places it at its clock; default: the
        /// wall clock
        #[arg(long, value_name = "TIME", value_parser = parse_rfc3339_ms)]
        now: Option<i64>,
    },
}

/// `--now` of `rules test`: an RFC 3339 time, in ms since the epoch.
fn parse_rfc3339_ms(text: &str) -> Result<i64, String> {
    crate::police::rules::window::parse_ms(text)
        .ok_or_else(|| format!("{text:?} is not an RFC 3339 time (write e.g. 2026-12-01T12:00:00Z)"))
}

#[derive(Debug, Args, Default)]
pub struct HealthcheckArgs {
    /// Also require this file (a police's `--health-file`), when it exists, to be fresh
    #[arg(long, env = "LOGSENTINEL_HEALTH_FILE")]
    pub health_file: Option<PathBuf>,
    /// Oldest acceptable age of the health file, e.g. 30s; a bare number is seconds
    #[arg(long, alias = "max-age-s", default_value = "30s")]
    pub max_age: DurationS,
    /// Probe an admin URL instead (e.g. http://127.0.0.1:9464/readyz): exit 0 on a 200.
    /// Several (comma-separated): the first that accepts the connection decides, so one
    /// probe serves an image that runs either the agent or the police
    #[arg(long, env = "LOGSENTINEL_HEALTHCHECK_URL", value_delimiter = ',')]
    pub url: Vec<String>,
}

/// Options of `tail`. Not in the config file: a viewer's choices are made per run.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// What to print: logs (the log stream), alerts (the alerts stream) or dead (the
    /// dead-letter stream)
    pub what: TailWhat,
    /// Where to start: `$` (what arrives from now on), an entry id (that entry and later),
    /// `0` (the whole stream) or a time back from now (`-5m`, `-1h`)
    #[arg(long, default_value = "$", allow_hyphen_values = true)]
    pub from: StartAt,
    /// Only events at these levels (alerts: severities): `>=ERROR`, `>WARNING`, `<=INFO`,
    /// `=ERROR`; a bare level means `>=`
    #[arg(long)]
    pub level: Option<LevelFilter>,
    /// Only events (alerts: of events) of these services (repeat or separate with commas)
    #[arg(long, value_delimiter = ',')]
    pub service: Vec<String>,
    /// Only events (alerts: of events) of these hosts (repeat or separate with commas)
    #[arg(long, value_delimiter = ',')]
    pub host: Vec<String>,
    /// Alerts only: of these rules (repeat or separate with commas)
    #[arg(long, value_delimiter = ',')]
    pub rule: Vec<String>,
    /// Only records matching this regex: logs, the message; alerts, the record's JSON;
    /// dead letters, the reason and raw fields; undecodable entries, their raw fields
    #[arg(long)]
    pub grep: Option<regex::Regex>,
    /// Exit after printing this many records
    #[arg(long)]
    pub limit: Option<u64>,
    /// Output: text, json (one object per line) or logfmt
    #[arg(long, default_value = "text")]
    pub format: TailFormat,
    /// Print what is there from --from, then exit instead of waiting for more
    #[arg(long)]
    pub no_follow: bool,
    /// Logs only: `list` peeks at the items waiting in the list (--key), oldest first,
    /// without taking them, and exits (a list keeps no history to follow)
    #[arg(long, default_value = "stream")]
    pub transport: Transport,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TailWhat {
    /// The log stream (--stream): events, packed entries unpacked
    Logs,
    /// The alerts stream (--alerts-stream): alert records
    Alerts,
    /// The dead-letter stream (--dead-stream)
    Dead,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TailFormat {
    /// One line per record, control characters escaped
    Text,
    /// One JSON object per line
    Json,
    /// One logfmt line per record (nested fields as `a.b=`)
    Logfmt,
}

/// Options of `dlq`.
#[derive(Debug, Args)]
pub struct DlqArgs {
    /// Work on this sink's dead letters (`logsentinel:dead:sink:<name>`) instead of the
    /// police's (--dead-stream)
    #[arg(long, global = true)]
    pub sink: Option<String>,
    #[command(subcommand)]
    pub action: DlqAction,
}

#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// One line per dead letter, oldest first: id, age, deliveries, replays, reason
    List {
        /// Print at most this many
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object per line instead of text
        #[arg(long)]
        json: bool,
    },
    /// Every raw field of these dead letters
    Show {
        /// Dead-letter ids
        #[arg(required = true)]
        ids: Vec<String>,
        /// One JSON object per line instead of text
        #[arg(long)]
        json: bool,
    },
    /// Add dead letters back to the stream (or list) they came from, then remove them
    Replay {
        /// Dead-letter ids
        ids: Vec<String>,
        /// Every dead letter whose reason contains this text
        #[arg(long, conflicts_with_all = ["ids", "all"])]
        reason: Option<String>,
        /// Every dead letter
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// Say what would be replayed, change nothing
        #[arg(long)]
        dry_run: bool,
        /// Also replay entries already replayed 3 times
        #[arg(long)]
        force: bool,
    },
    /// Remove dead letters for good
    Purge {
        /// Dead-letter ids
        ids: Vec<String>,
        /// Every dead letter older than this (e.g. 7d, 12h)
        #[arg(long, conflicts_with = "ids")]
        older_than: Option<DurationS>,
        /// Do not ask (needed when stdin is not a terminal)
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManpageArgs {
    /// Directory to write the pages into (created if missing)
    pub dir: PathBuf,
}
