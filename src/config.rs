//! Configuration: flags and `LOGSENTINEL_*` variables (clap), an optional TOML file, and
//! the defaults, merged in that order of precedence, then validated. Every problem names
//! its key, and the process exits with code 2.
//!
//! The option structs of [`crate::cli`] are the one definition of each option: clap reads
//! them from the command line, serde from the file. The merge starts from what clap parsed
//! (defaults included) and takes a file value wherever clap says the option was not given
//! explicitly (`ArgMatches::value_source`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::ArgMatches;
use clap::parser::ValueSource;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::broker::errors::{redact_credentials, redact_url};
use crate::broker::keys::Keys;
use crate::cli::{AgentArgs, CommonArgs, PoliceArgs};
use crate::event::Level;
use crate::options::{AgentSource, ReadFrom, Transport, WhenFull};

/// A configuration problem; the process exits with code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid config: {key}: {problem}")]
    Invalid { key: &'static str, problem: String },
    #[error("invalid config file {path}: {problem}")]
    File { path: PathBuf, problem: String },
    #[error("invalid config: {key}: {problem}")]
    Option { key: String, problem: String },
    /// A command asked for something it cannot do as asked, with what to do instead
    /// (`refusing to purge … without --yes`): exit 2, like a bad option.
    #[error("{problem}")]
    Usage { problem: String },
}

/// Largest alert dedup ttl, in seconds (ten years).
pub const MAX_ALERT_DEDUP_TTL_S: u64 = 315_360_000;
const ONE_DAY: Duration = Duration::from_secs(86_400);
const THIRTY_DAYS: Duration = Duration::from_secs(30 * 86_400);

/// `value` if it lies in `min..=max`, else an error naming the key and the range.
fn in_range<T: PartialOrd + std::fmt::Debug>(key: &'static str, value: T, min: T, max: T) -> Result<T, ConfigError> {
    if value < min || value > max {
        return Err(invalid(key, format!("{value:?} is not between {min:?} and {max:?}")));
    }
    Ok(value)
}

fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.into(),
    }
}

/// The TOML file: the common keys at the top, `[agent]` and `[police]` tables.
#[derive(Debug, Default)]
pub struct FileConfig {
    path: Option<PathBuf>,
    common: Map<String, Value>,
    agent: Map<String, Value>,
    police: Map<String, Value>,
}

impl FileConfig {
    /// Reads the file named by `--config`, or returns an empty config when there is none.
    pub fn load(path: Option<&Path>) -> Result<FileConfig, ConfigError> {
        let Some(path) = path else {
            return Ok(FileConfig::default());
        };
        let file_error = |problem: String| ConfigError::File {
            path: path.to_path_buf(),
            problem,
        };
        let text = std::fs::read_to_string(path).map_err(|error| file_error(error.to_string()))?;
        let table: toml::Table =
            toml::from_str(&text).map_err(|error| file_error(error.to_string().trim_end().to_string()))?;
        let Value::Object(mut common) = serde_json::to_value(table).map_err(|error| file_error(error.to_string()))?
        else {
            unreachable!("a TOML document is a table");
        };
        let mut section = |name: &str| match common.remove(name) {
            None => Ok(Map::new()),
            Some(Value::Object(table)) => Ok(table),
            Some(_) => Err(file_error(format!("{name}: must be a table ([{name}])"))),
        };
        let agent = section("agent")?;
        let police = section("police")?;
        Ok(FileConfig {
            path: Some(path.to_path_buf()),
            common,
            agent,
            police,
        })
    }

    /// `flags` with the file's values of `section` wherever the option was not given on
    /// the command line or in the environment.
    fn merge<T: Serialize + DeserializeOwned>(
        &self,
        flags: &T,
        matches: &ArgMatches,
        section: &str,
    ) -> Result<T, ConfigError> {
        let from_file = match section {
            "agent" => &self.agent,
            "police" => &self.police,
            _ => &self.common,
        };
        let Ok(Value::Object(mut merged)) = serde_json::to_value(flags) else {
            unreachable!("option structs serialise to objects");
        };
        for (key, value) in from_file {
            let id = canonical_id(key);
            let explicit = matches!(
                matches.value_source(&id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            );
            if explicit {
                continue;
            }
            merged.remove(&id);
            merged.insert(key.clone(), value.clone());
        }
        serde_path_to_error::deserialize(Value::Object(merged)).map_err(|error| {
            let field = error.path().to_string();
            let from_the_file = from_file.contains_key(field.split('.').next().unwrap_or(&field));
            let problem = redact_credentials(&error.into_inner().to_string());
            match &self.path {
                Some(path) if from_the_file => {
                    let key = if section.is_empty() {
                        field
                    } else {
                        format!("{section}.{field}")
                    };
                    ConfigError::File {
                        path: path.clone(),
                        problem: format!("{key}: {problem}"),
                    }
                }
                // the value came from a flag or a variable
                _ => ConfigError::Option { key: field, problem },
            }
        })
    }
}

/// The field an option is known by in the option struct, for a file key that may be one
/// of its aliases (`claim_idle_ms` for `claim_idle`).
fn canonical_id(key: &str) -> String {
    let command = <crate::cli::Cli as clap::CommandFactory>::command();
    let dashed = key.replace('_', "-");
    let all_commands = std::iter::once(&command).chain(command.get_subcommands());
    for candidate in all_commands {
        for argument in candidate.get_arguments() {
            let aliases = argument.get_all_aliases().unwrap_or_default();
            if aliases.contains(&dashed.as_str()) {
                return argument.get_id().to_string();
            }
        }
    }
    key.to_string()
}

/// The user of `redis://user@host` (a name, no password), which the Redis client ignores.
fn user_without_password(redis_url: &str) -> Option<String> {
    let after_scheme = redis_url.split_once("://")?.1;
    let (credentials, _) = after_scheme.split_once('@')?;
    (!credentials.is_empty() && !credentials.contains(':') && !credentials.contains('/'))
        .then(|| credentials.to_string())
}

/// Where Redis is and which keys to use.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub redis_url: String,
    pub keys: Keys,
}

pub fn broker_config(
    common: &CommonArgs,
    matches: &ArgMatches,
    file: &FileConfig,
) -> Result<BrokerConfig, ConfigError> {
    let common = file.merge(common, matches, "")?;
    let not_empty = |value: String, key: &'static str| {
        if value.is_empty() {
            return Err(invalid(key, "must not be empty"));
        }
        Ok(value)
    };
    let redis_url = not_empty(common.redis_url, "redis_url")?;
    // The URL may hold a password: only its redacted form goes into messages. The parser's
    // own message may quote the URL too, so it is redacted the same way.
    redis::Client::open(redis_url.as_str()).map_err(|error| {
        let shown_url = redact_url(&redis_url);
        let problem = error.to_string().replace(redis_url.as_str(), &shown_url);
        invalid(
            "redis_url",
            format!("{shown_url:?} is not a usable Redis URL: {problem}"),
        )
    })?;
    if let Some(user) = user_without_password(&redis_url) {
        // The client would drop the name and connect as the default user, bypassing the
        // ACL the operator meant to apply.
        return Err(invalid(
            "redis_url",
            format!(
                "names the user {user:?} without a password, which would connect as the default user; \
                 write {user}:PASSWORD@ (any password for an ACL user with nopass)"
            ),
        ));
    }
    let keys = Keys {
        stream: not_empty(common.stream, "stream")?,
        group: not_empty(common.group, "group")?,
        alerts: not_empty(common.alerts_stream, "alerts_stream")?,
        dead: not_empty(common.dead_stream, "dead_stream")?,
        list: not_empty(common.key, "key")?,
    };
    check_keys_distinct(&keys)?;
    Ok(BrokerConfig { redis_url, keys })
}

/// The police reads the logs and writes alerts and dead letters: if two of these were one
/// key, what it writes would come back as input (dead letters doubling every round until
/// Redis is full, every alert dead-lettered). The list mode keys, the counters and the
/// alert-id guards must not be any of them either.
fn check_keys_distinct(keys: &Keys) -> Result<(), ConfigError> {
    let named: [(&'static str, &str); 4] = [
        ("stream", &keys.stream),
        ("alerts_stream", &keys.alerts),
        ("dead_stream", &keys.dead),
        ("key", &keys.list),
    ];
    for (index, (key, value)) in named.iter().enumerate() {
        if let Some((other_key, _)) = named[..index].iter().find(|(_, other)| other == value) {
            return Err(invalid(
                key,
                format!(
                    "{value:?} is the same key as {other_key}; stream, alerts_stream, dead_stream and key must be distinct Redis keys"
                ),
            ));
        }
    }
    let derived = [
        (keys.stats(&keys.stream), "the counters of stream"),
        (keys.stats(&keys.list), "the counters of key"),
    ];
    let derived_prefixes = [
        (keys.processing_list(""), "a processing list of key"),
        (keys.heartbeat(""), "a liveness key of key"),
        (keys.alert_seen_prefix(), "an alert-id guard of alerts_stream"),
    ];
    for (key, value) in &named {
        let clash = derived
            .iter()
            .find(|(derived_key, _)| derived_key == value)
            .or_else(|| {
                derived_prefixes
                    .iter()
                    .find(|(prefix, _)| value.starts_with(prefix.as_str()))
            });
        if let Some((_, what)) = clash {
            return Err(invalid(key, format!("{value:?} is {what}; use a key of its own")));
        }
    }
    Ok(())
}

/// Whether a Redis URL was set (flag, environment or file) rather than left to the default:
/// `demo` then runs against that Redis instead of a private one.
pub fn redis_url_given(matches: &ArgMatches, file: &FileConfig) -> bool {
    let explicit = matches!(
        matches.value_source("redis_url"),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    );
    explicit || file.common.contains_key("redis_url")
}

/// Share of each level in the synthetic load, as integer weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LevelMix(pub Vec<(Level, u32)>);

impl LevelMix {
    pub const DEFAULT: &'static str = "INFO=70,WARNING=20,ERROR=8,CRITICAL=2";

    pub fn parse(text: &str) -> Result<LevelMix, String> {
        let mut weights = Vec::new();
        for part in text.split(',').map(str::trim).filter(|part| !part.is_empty()) {
            let Some((name, weight)) = part.split_once('=') else {
                return Err(format!("{part:?} is not LEVEL=WEIGHT"));
            };
            let level: Level = name.parse().map_err(|error| format!("{error}"))?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("weight {weight:?} of {name} is not a whole number"))?;
            weights.push((level, weight));
        }
        if weights.iter().map(|(_, weight)| u64::from(*weight)).sum::<u64>() == 0 {
            return Err("the weights must add up to more than 0".into());
        }
        Ok(LevelMix(weights))
    }
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Synthetic alone, or any set of the real sources.
    pub sources: Vec<AgentSource>,
    pub files: Vec<String>,
    pub read_from: ReadFrom,
    pub checkpoint_file: PathBuf,
    pub multiline_continuation: Option<regex::Regex>,
    pub level_pattern: Option<regex::Regex>,
    pub http_listen: std::net::SocketAddr,
    pub http_max_body_bytes: usize,
    /// HTTP requests handled at once (each may hold `http_max_body_bytes`).
    pub http_max_requests: usize,
    /// Longest wait for a request's whole body.
    pub http_body_timeout: Duration,
    /// Longest wait for a request's events to be stored before it is answered 503.
    pub http_store_timeout: Duration,
    /// File of the token HTTP clients must send as `Authorization: Bearer …`; read when the
    /// agent starts. `None`: no check.
    pub http_token_file: Option<PathBuf>,
    /// Longest line or message kept by the file, stdin and syslog sources, in bytes.
    pub max_line_bytes: usize,
    /// Syslog TCP connections open at once.
    pub syslog_max_connections: usize,
    /// A syslog TCP connection silent this long is closed.
    pub syslog_idle_timeout: Duration,
    /// TLS for the HTTP and syslog TCP listeners, loaded when the agent starts; `None`:
    /// plain TCP.
    pub tls: Option<TlsFiles>,
    pub spool: Option<SpoolConfig>,
    pub syslog_udp: Option<std::net::SocketAddr>,
    pub syslog_tcp: Option<std::net::SocketAddr>,
    pub rate_per_s: u64,
    pub count: Option<u64>,
    pub seed: Option<u64>,
    pub level_mix: LevelMix,
    pub service: String,
    pub agent_id: String,
    pub sink: Transport,
    pub pack: usize,
    pub batch_entries: usize,
    /// Payload bytes at which a batch is cut.
    pub batch_max_bytes: usize,
    pub linger: Duration,
    pub queue_batches: usize,
    pub shutdown_timeout: Duration,
    /// 0 = no limit.
    pub max_lag: u64,
    pub summary_json: bool,
    /// The admin listener's address; `None`: off.
    pub admin_listen: Option<std::net::SocketAddr>,
}

pub fn agent_config(args: &AgentArgs, matches: &ArgMatches, file: &FileConfig) -> Result<AgentConfig, ConfigError> {
    let args = file.merge(args, matches, "agent")?;
    let level_mix = LevelMix::parse(&args.level_mix).map_err(|problem| invalid("level_mix", problem))?;
    let pack = in_range("pack", args.pack, 1, 10_000)?;
    // A batch holds at most 2,048 events whatever the pack, so more entries cannot be used.
    let batch_entries = in_range("batch", args.batch, 1, 2048)?;
    // The upper bound keeps a batch and the one event that crosses the limit far below the
    // spool's largest record and Redis's default proto-max-bulk-len (512 MiB).
    let batch_max_bytes = in_range("batch_max_bytes", args.batch_max_bytes.0, 1024, 64 << 20)? as usize;
    let queue_batches = in_range("queue_batches", args.queue_batches, 1, 1024)?;
    let linger = in_range(
        "linger",
        args.linger.0,
        Duration::from_millis(1),
        Duration::from_secs(60),
    )?;
    let shutdown_timeout = in_range("shutdown_timeout", args.shutdown_timeout.0, Duration::ZERO, ONE_DAY)?;
    let agent_id = args.agent_id.clone().unwrap_or_else(crate::hostname);
    if agent_id.is_empty() || agent_id.contains(char::is_whitespace) {
        return Err(invalid(
            "agent_id",
            format!("{agent_id:?} must be non-empty, without spaces"),
        ));
    }
    let mut sources = args.source.clone();
    sources.dedup();
    if sources.is_empty() {
        sources.push(AgentSource::Synthetic);
    }
    if sources.contains(&AgentSource::Synthetic) && sources.len() > 1 {
        return Err(invalid("source", "synthetic cannot be combined with other sources"));
    }
    let source = sources[0];
    let has = |wanted: AgentSource| sources.contains(&wanted);
    let default_service = match source {
        _ if sources.len() > 1 => "agent",
        AgentSource::Synthetic => "checkout",
        AgentSource::Stdin => "stdin",
        AgentSource::Syslog => "syslog",
        AgentSource::File => "file",
        AgentSource::Http => "http",
    };
    if has(AgentSource::File) && args.file.is_empty() {
        return Err(invalid("file", "the file source needs at least one path or glob"));
    }
    for pattern in &args.file {
        glob::Pattern::new(pattern).map_err(|error| invalid("file", format!("{pattern:?}: {error}")))?;
    }
    let regex = |value: &Option<String>, key: &'static str| {
        value
            .as_ref()
            .map(|text| regex::Regex::new(text).map_err(|error| invalid(key, format!("{text:?}: {error}"))))
            .transpose()
    };
    let multiline_continuation = regex(&args.multiline_continuation, "multiline_continuation")?;
    let level_pattern = regex(&args.level_pattern, "level_pattern")?;
    let http_listen = args.http_listen.parse().map_err(|_| {
        invalid(
            "http_listen",
            format!("{:?} is not an address like 127.0.0.1:8080", args.http_listen),
        )
    })?;
    let http_max_body_bytes = in_range("http_max_body_bytes", args.http_max_body_bytes.0, 1, 1 << 30)?;
    let http_max_requests = in_range("http_max_requests", args.http_max_requests, 1, 10_000)?;
    let http_body_timeout = in_range(
        "http_body_timeout",
        args.http_body_timeout.0,
        Duration::from_millis(1),
        ONE_DAY,
    )?;
    let http_store_timeout = in_range(
        "http_store_timeout",
        args.http_store_timeout.0,
        Duration::from_millis(1),
        ONE_DAY,
    )?;
    let max_line_bytes = in_range("max_line_bytes", args.max_line_bytes.0, 256, 1 << 30)? as usize;
    let syslog_max_connections = in_range("syslog_max_connections", args.syslog_max_connections, 1, 1_000_000)?;
    let syslog_idle_timeout = in_range(
        "syslog_idle_timeout",
        args.syslog_idle_timeout.0,
        Duration::from_millis(1),
        THIRTY_DAYS,
    )?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (None, None) => None,
        (Some(_), None) => return Err(invalid("tls_key", "tls_cert is set: give its private key too")),
        (None, Some(_)) => return Err(invalid("tls_cert", "tls_key is set: give its certificate too")),
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
    };
    let spool_max_bytes = in_range("spool_max_bytes", args.spool_max_bytes.0, 65_536, 1 << 50)?;
    let spool = args.spool_dir.clone().map(|dir| SpoolConfig {
        dir,
        max_bytes: spool_max_bytes,
        when_full: args.when_full,
    });
    let address = |value: &Option<String>, key: &'static str| {
        value
            .as_ref()
            .map(|text| {
                text.parse::<std::net::SocketAddr>()
                    .map_err(|_| invalid(key, format!("{text:?} is not an address like 127.0.0.1:5514")))
            })
            .transpose()
    };
    let mut syslog_udp = address(&args.syslog_udp, "syslog_udp")?;
    let mut syslog_tcp = address(&args.syslog_tcp, "syslog_tcp")?;
    if has(AgentSource::Syslog) && syslog_udp.is_none() && syslog_tcp.is_none() {
        let default_address = std::net::SocketAddr::from(([127, 0, 0, 1], 5514));
        syslog_udp = Some(default_address);
        syslog_tcp = Some(default_address);
    }
    Ok(AgentConfig {
        sources,
        files: args.file.clone(),
        read_from: args.read_from,
        checkpoint_file: args.checkpoint_file.clone(),
        multiline_continuation,
        level_pattern,
        http_listen,
        http_max_body_bytes: http_max_body_bytes as usize,
        http_max_requests,
        http_body_timeout,
        http_store_timeout,
        http_token_file: args.http_token_file.clone(),
        max_line_bytes,
        syslog_max_connections,
        syslog_idle_timeout,
        tls,
        spool,
        syslog_udp,
        syslog_tcp,
        rate_per_s: args.rate,
        count: args.count,
        seed: args.seed,
        level_mix,
        service: args.service.clone().unwrap_or_else(|| default_service.into()),
        agent_id,
        sink: args.sink,
        pack,
        batch_entries,
        batch_max_bytes,
        linger,
        queue_batches,
        shutdown_timeout,
        max_lag: args.max_lag,
        summary_json: args.summary_json,
        admin_listen: admin_listen(&args.admin_listen)?,
    })
}

/// Certificate chain and private key (PEM) of the agent's TLS listeners.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where the agent spools, how much, and what happens when it is full.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub when_full: WhenFull,
}

#[derive(Debug, Clone)]
pub struct PoliceConfig {
    pub source: Transport,
    pub consumer: String,
    pub read_count: usize,
    pub block: Duration,
    pub claim_idle: Duration,
    pub max_deliveries: u64,
    pub alert_level: Level,
    /// The rule file; `None`: the built-in rule at `alert_level`.
    pub rules_file: Option<PathBuf>,
    pub alerts_file: Option<PathBuf>,
    pub quiet: bool,
    pub alert_dedup_ttl_s: u64,
    pub consumer_idle_remove: Duration,
    pub trim: bool,
    pub alerts_retention: Duration,
    pub maintenance_interval: Duration,
    pub health_file: Option<PathBuf>,
    /// Entries and list items larger than this are dead-lettered without being decoded.
    pub max_entry_bytes: usize,
    /// The admin listener's address; `None`: off.
    pub admin_listen: Option<std::net::SocketAddr>,
}

/// `--admin-listen`: an address, or `off`.
fn admin_listen(text: &str) -> Result<Option<std::net::SocketAddr>, ConfigError> {
    crate::observability::admin::parse_listen(text).map_err(|problem| invalid("admin_listen", problem))
}

pub fn police_config(args: &PoliceArgs, matches: &ArgMatches, file: &FileConfig) -> Result<PoliceConfig, ConfigError> {
    let args = file.merge(args, matches, "police")?;
    // Each read is held in memory whole, and settled by one script call.
    let read_count = in_range("read_count", args.read_count, 1, 10_000)?;
    let max_deliveries = in_range("max_deliveries", args.max_deliveries, 1, 1_000_000)?;
    let alert_level = args
        .alert_level
        .parse()
        .map_err(|error| invalid("alert_level", format!("{error}")))?;
    let one_ms = Duration::from_millis(1);
    // Ten years at most: Redis refuses larger expire times, and every settle would fail.
    let alert_dedup_ttl = in_range(
        "alert_dedup_ttl",
        args.alert_dedup_ttl.0,
        Duration::from_secs(1),
        Duration::from_secs(MAX_ALERT_DEDUP_TTL_S),
    )?;
    let consumer = args
        .consumer
        .clone()
        .unwrap_or_else(|| format!("{}-{}", crate::hostname(), std::process::id()));
    if consumer.is_empty() {
        return Err(invalid("consumer", "must not be empty"));
    }
    Ok(PoliceConfig {
        source: args.transport,
        consumer,
        read_count,
        // 0 would block forever; longer than 5 s would outlast the client's reply timeout
        block: in_range("block", args.block.0, one_ms, Duration::from_secs(5))?,
        claim_idle: in_range("claim_idle", args.claim_idle.0, one_ms, THIRTY_DAYS)?,
        max_deliveries,
        alert_level,
        rules_file: args.rules.clone(),
        alerts_file: args.alerts_file.clone(),
        quiet: args.quiet,
        alert_dedup_ttl_s: alert_dedup_ttl.as_secs(),
        consumer_idle_remove: in_range("consumer_idle_remove", args.consumer_idle_remove.0, one_ms, THIRTY_DAYS)?,
        trim: args.trim,
        alerts_retention: in_range("alerts_retention", args.alerts_retention.0, Duration::ZERO, THIRTY_DAYS)?,
        maintenance_interval: in_range("maintenance_interval", args.maintenance_interval.0, one_ms, ONE_DAY)?,
        health_file: args.health_file.clone(),
        // 512 MiB is the largest value Redis stores by default (proto-max-bulk-len).
        max_entry_bytes: in_range("max_entry_bytes", args.max_entry_bytes.0, 1024, 512 << 20)? as usize,
        admin_listen: admin_listen(&args.admin_listen)?,
    })
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches};

    use super::*;
    use crate::cli::{Cli, Command};

    #[test]
    fn level_mix_parses_and_names_problems() {
        let mix = LevelMix::parse("info=70, crit=2").unwrap();
        assert_eq!(mix.0, vec![(Level::Info, 70), (Level::Critical, 2)]);
        assert!(LevelMix::parse("INFO").unwrap_err().contains("LEVEL=WEIGHT"));
        assert!(LevelMix::parse("LOUD=3").unwrap_err().contains("unknown level"));
        assert!(LevelMix::parse("INFO=x").unwrap_err().contains("not a whole number"));
        assert!(LevelMix::parse("INFO=0").is_err());
    }

    fn file(text: &str) -> FileConfig {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logsentinel.toml");
        std::fs::write(&path, text).unwrap();
        FileConfig::load(Some(&path)).unwrap()
    }

    fn agent(flags: &[&str], file: &FileConfig) -> Result<AgentConfig, ConfigError> {
        let matches = Cli::command().get_matches_from(["logsentinel", "agent"].iter().chain(flags));
        let cli = Cli::from_arg_matches(&matches).unwrap();
        let (_, sub_matches) = matches.subcommand().unwrap();
        let Command::Agent(args) = cli.command else {
            unreachable!()
        };
        agent_config(&args, sub_matches, file)
    }

    fn police(flags: &[&str], file: &FileConfig) -> Result<PoliceConfig, ConfigError> {
        let matches = Cli::command().get_matches_from(["logsentinel", "police"].iter().chain(flags));
        let cli = Cli::from_arg_matches(&matches).unwrap();
        let (_, sub_matches) = matches.subcommand().unwrap();
        let Command::Police(args) = cli.command else {
            unreachable!()
        };
        police_config(&args, sub_matches, file)
    }

    #[test]
    fn flags_beat_file_beats_defaults() {
        let file = file("[agent]\nrate = 5\npack = 4\nlinger_ms = 7\n");
        let config = agent(&["--rate", "7"], &file).unwrap();
        assert_eq!(config.rate_per_s, 7);
        assert_eq!(config.pack, 4);
        assert_eq!(config.linger, Duration::from_millis(7), "old _ms keys still read");
        assert_eq!(config.batch_entries, 256);
        let config = agent(&["--linger", "3ms", "--summary-json"], &file).unwrap();
        assert_eq!(config.linger, Duration::from_millis(3), "a flag beats the file's alias");
        assert!(config.summary_json, "flags the file does not name survive the merge");
    }

    #[test]
    fn listeners_default_to_loopback_and_inputs_are_bounded() {
        let none = FileConfig::default();
        let config = agent(&["--source", "syslog,http"], &none).unwrap();
        assert_eq!(config.http_listen.to_string(), "127.0.0.1:8080");
        assert_eq!(
            config.syslog_udp.map(|address| address.to_string()).as_deref(),
            Some("127.0.0.1:5514")
        );
        assert_eq!(
            config.syslog_tcp.map(|address| address.to_string()).as_deref(),
            Some("127.0.0.1:5514")
        );
        assert_eq!(config.max_line_bytes, 1 << 20);
        assert_eq!(config.syslog_max_connections, 1000);
        assert_eq!(config.http_max_requests, 16);
        assert!(config.http_token_file.is_none());
        let error = agent(&[], &file("[agent]\nmax_line_bytes = 10\n")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid config: max_line_bytes: 10 is not between 256 and 1073741824"
        );
        let error = agent(&["--tls-cert", "cert.pem"], &none).unwrap_err();
        assert!(error.to_string().starts_with("invalid config: tls_key:"), "{error}");
    }

    #[test]
    fn durations_and_sizes_take_human_units_old_flags_bare_numbers() {
        let none = FileConfig::default();
        let config = police(&["--claim-idle", "45s", "--block-ms", "250"], &none).unwrap();
        assert_eq!(config.claim_idle, Duration::from_secs(45));
        assert_eq!(config.block, Duration::from_millis(250));
        let config = agent(&["--spool-dir", "x", "--spool-max-bytes", "2GiB"], &none).unwrap();
        assert_eq!(config.spool.unwrap().max_bytes, 2 << 30);
        let file = file("[police]\nclaim_idle = \"2m\"\nsource = \"list\"\nalert_dedup_ttl_s = 60\n");
        let config = police(&[], &file).unwrap();
        assert_eq!(config.claim_idle, Duration::from_secs(120));
        assert_eq!(
            config.source,
            Transport::List,
            "the police's old `source` key still reads"
        );
        assert_eq!(config.alert_dedup_ttl_s, 60);
    }

    #[test]
    fn unknown_or_mistyped_file_keys_are_named() {
        let file = file("[police]\nclaim_idlex = 5\n");
        let error = police(&[], &file).unwrap_err().to_string();
        assert!(error.contains("claim_idlex"), "{error}");
        let file = self::file("[agent]\npack = \"many\"\n");
        let error = agent(&[], &file).unwrap_err().to_string();
        assert!(error.contains("agent.pack"), "{error}");
    }

    #[test]
    fn credentials_are_redacted_wherever_a_url_is_quoted() {
        assert_eq!(
            redact_credentials("1 | redis_url = redis://u:secret@h:6379/0"),
            "1 | redis_url = redis://u:***@h:6379/0"
        );
        assert_eq!(redact_credentials("\"rediss://:secret@h\""), "\"rediss://:***@h\"");
        assert_eq!(redact_credentials("redis://secret@h"), "redis://***@h");
        assert_eq!(
            redact_credentials("at unix:///tmp/s?pass=secret refused, pass=*** kept"),
            "at unix:///tmp/s?pass=*** refused, pass=*** kept"
        );
        assert_eq!(
            redact_credentials("redis://h:6379 and no@password"),
            "redis://h:6379 and no@password"
        );
        let error = broker(&["--redis-url", "redis://limited@127.0.0.1:6379"])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("names the user \"limited\" without a password"),
            "{error}"
        );
        assert!(broker(&["--redis-url", "redis://limited:x@127.0.0.1:6379"]).is_ok());
        let error = broker(&["--redis-url", "redis://u:secret@bad-host:99999"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("redis://u:***@bad-host:99999"), "{error}");
        assert!(!error.contains("secret"), "{error}");
    }

    fn broker(flags: &[&str]) -> Result<BrokerConfig, ConfigError> {
        let matches = Cli::command().get_matches_from(["logsentinel"].iter().chain(flags).chain(&["status"]));
        let cli = Cli::from_arg_matches(&matches).unwrap();
        broker_config(&cli.common, &matches, &FileConfig::default())
    }

    #[test]
    fn keys_that_would_feed_the_police_its_own_output_are_refused() {
        let with = |flag: &str, value: &str| broker(&[flag, value]).map(|config| config.keys);
        assert!(broker(&[]).is_ok());
        let error = with("--dead-stream", "logsentinel:logs").unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid config: dead_stream: \"logsentinel:logs\" is the same key as stream; stream, alerts_stream, \
             dead_stream and key must be distinct Redis keys"
        );
        let error = with("--alerts-stream", "logsentinel:logs").unwrap_err();
        assert!(
            error.to_string().starts_with("invalid config: alerts_stream: "),
            "{error}"
        );
        let error = with("--key", "logsentinel:dead").unwrap_err();
        assert!(error.to_string().starts_with("invalid config: key: "), "{error}");
        let error = with("--dead-stream", "log_queue:processing:p1").unwrap_err();
        assert!(error.to_string().contains("a processing list of key"), "{error}");
        let error = with("--alerts-stream", "logsentinel:logs:stats").unwrap_err();
        assert!(error.to_string().contains("the counters of stream"), "{error}");
        let error = with("--stream", "logsentinel:alerts:seen:x").unwrap_err();
        assert!(error.to_string().contains("an alert-id guard"), "{error}");
        let error = with("--key", "logsentinel:logs:stats").unwrap_err();
        assert!(error.to_string().starts_with("invalid config: key: "), "{error}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let none = FileConfig::default();
        let error = agent(&["--pack", "0"], &none).unwrap_err();
        assert_eq!(error.to_string(), "invalid config: pack: 0 is not between 1 and 10000");
        let error = agent(&["--queue-batches", "18446744073709551615"], &none).unwrap_err();
        assert!(error.to_string().contains("queue_batches"), "{error}");
        let error = police(&["--alert-dedup-ttl-s", "400000000"], &none).unwrap_err();
        assert!(error.to_string().contains("alert_dedup_ttl"), "{error}");
        let matches = Cli::command().get_matches_from(["logsentinel", "--redis-url", "http://u:secret@nope", "status"]);
        let cli = Cli::from_arg_matches(&matches).unwrap();
        let error = broker_config(&cli.common, &matches, &none).unwrap_err().to_string();
        assert!(error.starts_with("invalid config: redis_url:"), "{error}");
        assert!(!error.contains("secret"), "{error}");
    }
}
