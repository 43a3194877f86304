//! Configuration: flags and `LOGSENTINEL_*` variables (parsed by clap), an optional TOML
//! file, and defaults, merged in that order of precedence. Every problem names its key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::agent::spool::{SpoolConfig, WhenFull};
use crate::broker::keys::Keys;
use crate::cli::{AgentArgs, AgentSource, CommonArgs, PoliceArgs, ReadFrom, Transport};
use crate::event::Level;

/// A configuration problem; the process exits with code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid config: {key}: {problem}")]
    Invalid { key: &'static str, problem: String },
    #[error("invalid config file {path}: {problem}")]
    File { path: PathBuf, problem: String },
}

fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.into(),
    }
}

/// The TOML file. Unknown keys are errors, so a typo stops startup and is named.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    redis_url: Option<String>,
    stream: Option<String>,
    group: Option<String>,
    alerts_stream: Option<String>,
    dead_stream: Option<String>,
    key: Option<String>,
    #[serde(default)]
    agent: AgentFile,
    #[serde(default)]
    police: PoliceFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentFile {
    source: Option<OneOrMany<AgentSource>>,
    file: Option<OneOrMany<String>>,
    read_from: Option<ReadFrom>,
    checkpoint_file: Option<PathBuf>,
    multiline_continuation: Option<String>,
    level_pattern: Option<String>,
    http_listen: Option<String>,
    http_max_body_bytes: Option<usize>,
    spool_dir: Option<PathBuf>,
    spool_max_bytes: Option<u64>,
    when_full: Option<WhenFull>,
    syslog_udp: Option<String>,
    syslog_tcp: Option<String>,
    rate: Option<u64>,
    count: Option<u64>,
    seed: Option<u64>,
    level_mix: Option<String>,
    service: Option<String>,
    agent_id: Option<String>,
    sink: Option<Transport>,
    pack: Option<usize>,
    batch: Option<usize>,
    batch_max_bytes: Option<usize>,
    linger_ms: Option<u64>,
    queue_batches: Option<usize>,
    shutdown_timeout_ms: Option<u64>,
    max_lag: Option<u64>,
}

/// `key = "a"` or `key = ["a", "b"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(value) => vec![value],
            OneOrMany::Many(values) => values,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoliceFile {
    source: Option<Transport>,
    consumer: Option<String>,
    read_count: Option<usize>,
    block_ms: Option<u64>,
    claim_idle_ms: Option<u64>,
    max_deliveries: Option<u64>,
    alert_level: Option<String>,
    alerts_file: Option<PathBuf>,
    quiet: Option<bool>,
    alert_dedup_ttl_s: Option<u64>,
    consumer_idle_remove_ms: Option<u64>,
    trim: Option<bool>,
    maintenance_interval_ms: Option<u64>,
    health_file: Option<PathBuf>,
}

impl FileConfig {
    /// Reads the file named by `--config`, or returns an empty config when there is none.
    pub fn load(path: Option<&Path>) -> Result<FileConfig, ConfigError> {
        let Some(path) = path else {
            return Ok(FileConfig::default());
        };
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::File {
            path: path.to_path_buf(),
            problem: error.to_string(),
        })?;
        toml::from_str(&text).map_err(|error| ConfigError::File {
            path: path.to_path_buf(),
            problem: error.to_string().trim_end().to_string(),
        })
    }
}

/// Where Redis is and which keys to use.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub redis_url: String,
    pub keys: Keys,
}

pub fn broker_config(common: &CommonArgs, file: &FileConfig) -> Result<BrokerConfig, ConfigError> {
    let defaults = Keys::default();
    let pick = |flag: &Option<String>, from_file: &Option<String>, default: String, key: &'static str| {
        let value = flag.clone().or_else(|| from_file.clone()).unwrap_or(default);
        if value.is_empty() {
            return Err(invalid(key, "must not be empty"));
        }
        Ok(value)
    };
    let redis_url = pick(
        &common.redis_url,
        &file.redis_url,
        "redis://127.0.0.1:6379".into(),
        "redis_url",
    )?;
    redis::Client::open(redis_url.as_str())
        .map_err(|error| invalid("redis_url", format!("{redis_url:?} is not a usable Redis URL: {error}")))?;
    let keys = Keys {
        stream: pick(&common.stream, &file.stream, defaults.stream, "stream")?,
        group: pick(&common.group, &file.group, defaults.group, "group")?,
        alerts: pick(
            &common.alerts_stream,
            &file.alerts_stream,
            defaults.alerts,
            "alerts_stream",
        )?,
        dead: pick(&common.dead_stream, &file.dead_stream, defaults.dead, "dead_stream")?,
        list: pick(&common.key, &file.key, defaults.list, "key")?,
    };
    Ok(BrokerConfig { redis_url, keys })
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
    /// Payload bytes at which a batch is cut. Default: 4 MiB.
    pub batch_max_bytes: usize,
    pub linger: Duration,
    pub queue_batches: usize,
    pub shutdown_timeout: Duration,
    /// 0 = no limit.
    pub max_lag: u64,
    pub summary_json: bool,
}

pub fn agent_config(args: &AgentArgs, file: &FileConfig) -> Result<AgentConfig, ConfigError> {
    let from_file = &file.agent;
    let level_mix_text = args
        .level_mix
        .clone()
        .or_else(|| from_file.level_mix.clone())
        .unwrap_or_else(|| LevelMix::DEFAULT.into());
    let level_mix = LevelMix::parse(&level_mix_text).map_err(|problem| invalid("level_mix", problem))?;
    let pack = args.pack.or(from_file.pack).unwrap_or(1);
    if pack == 0 || pack > 10_000 {
        return Err(invalid("pack", format!("{pack} is not between 1 and 10000")));
    }
    let batch_entries = args.batch.or(from_file.batch).unwrap_or(256);
    if batch_entries == 0 {
        return Err(invalid("batch", "must be at least 1"));
    }
    let batch_max_bytes = args
        .batch_max_bytes
        .or(from_file.batch_max_bytes)
        .unwrap_or(crate::agent::batcher::DEFAULT_BATCH_MAX_BYTES);
    // The upper bound keeps a batch and the one event that crosses the limit far below the
    // spool's largest record and Redis's default proto-max-bulk-len (512 MiB).
    if !(1024..=64 << 20).contains(&batch_max_bytes) {
        return Err(invalid(
            "batch_max_bytes",
            format!("{batch_max_bytes} is not between 1024 and 67108864"),
        ));
    }
    let queue_batches = args.queue_batches.or(from_file.queue_batches).unwrap_or(4);
    if queue_batches == 0 {
        return Err(invalid("queue_batches", "must be at least 1"));
    }
    let agent_id = args
        .agent_id
        .clone()
        .or_else(|| from_file.agent_id.clone())
        .unwrap_or_else(crate::hostname);
    if agent_id.is_empty() || agent_id.contains(char::is_whitespace) {
        return Err(invalid(
            "agent_id",
            format!("{agent_id:?} must be non-empty, without spaces"),
        ));
    }
    let mut sources = if args.source.is_empty() {
        from_file.source.clone().map(OneOrMany::into_vec).unwrap_or_default()
    } else {
        args.source.clone()
    };
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
    let files = if args.file.is_empty() {
        from_file.file.clone().map(OneOrMany::into_vec).unwrap_or_default()
    } else {
        args.file.clone()
    };
    if has(AgentSource::File) && files.is_empty() {
        return Err(invalid("file", "the file source needs at least one path or glob"));
    }
    for pattern in &files {
        glob::Pattern::new(pattern).map_err(|error| invalid("file", format!("{pattern:?}: {error}")))?;
    }
    let regex = |value: Option<String>, key: &'static str| {
        value
            .map(|text| regex::Regex::new(&text).map_err(|error| invalid(key, format!("{text:?}: {error}"))))
            .transpose()
    };
    let multiline_continuation = regex(
        args.multiline_continuation
            .clone()
            .or_else(|| from_file.multiline_continuation.clone()),
        "multiline_continuation",
    )?;
    let level_pattern = regex(
        args.level_pattern.clone().or_else(|| from_file.level_pattern.clone()),
        "level_pattern",
    )?;
    let http_listen_text = args
        .http_listen
        .clone()
        .or_else(|| from_file.http_listen.clone())
        .unwrap_or_else(|| "0.0.0.0:8080".into());
    let http_listen = http_listen_text.parse().map_err(|_| {
        invalid(
            "http_listen",
            format!("{http_listen_text:?} is not an address like 0.0.0.0:8080"),
        )
    })?;
    let http_max_body_bytes = args
        .http_max_body_bytes
        .or(from_file.http_max_body_bytes)
        .unwrap_or(10 << 20);
    if http_max_body_bytes == 0 {
        return Err(invalid("http_max_body_bytes", "must be at least 1"));
    }
    let spool_max_bytes = args.spool_max_bytes.or(from_file.spool_max_bytes).unwrap_or(1 << 30);
    if spool_max_bytes < 65_536 {
        return Err(invalid("spool_max_bytes", format!("{spool_max_bytes} is below 65536")));
    }
    let spool = args
        .spool_dir
        .clone()
        .or_else(|| from_file.spool_dir.clone())
        .map(|dir| SpoolConfig {
            dir,
            max_bytes: spool_max_bytes,
            when_full: args.when_full.or(from_file.when_full).unwrap_or(WhenFull::Block),
        });
    let address = |value: Option<String>, key: &'static str| {
        value
            .map(|text| {
                text.parse::<std::net::SocketAddr>()
                    .map_err(|_| invalid(key, format!("{text:?} is not an address like 0.0.0.0:5514")))
            })
            .transpose()
    };
    let mut syslog_udp = address(
        args.syslog_udp.clone().or_else(|| from_file.syslog_udp.clone()),
        "syslog_udp",
    )?;
    let mut syslog_tcp = address(
        args.syslog_tcp.clone().or_else(|| from_file.syslog_tcp.clone()),
        "syslog_tcp",
    )?;
    if has(AgentSource::Syslog) && syslog_udp.is_none() && syslog_tcp.is_none() {
        let default_address = std::net::SocketAddr::from(([0, 0, 0, 0], 5514));
        syslog_udp = Some(default_address);
        syslog_tcp = Some(default_address);
    }
    Ok(AgentConfig {
        sources,
        files,
        read_from: args.read_from.or(from_file.read_from).unwrap_or(ReadFrom::Start),
        checkpoint_file: args
            .checkpoint_file
            .clone()
            .or_else(|| from_file.checkpoint_file.clone())
            .unwrap_or_else(|| PathBuf::from("logsentinel-checkpoints.json")),
        multiline_continuation,
        level_pattern,
        http_listen,
        http_max_body_bytes,
        spool,
        syslog_udp,
        syslog_tcp,
        rate_per_s: args.rate.or(from_file.rate).unwrap_or(1000),
        count: args.count.or(from_file.count),
        seed: args.seed.or(from_file.seed),
        level_mix,
        service: args
            .service
            .clone()
            .or_else(|| from_file.service.clone())
            .unwrap_or_else(|| default_service.into()),
        agent_id,
        sink: args.sink.or(from_file.sink).unwrap_or(Transport::Stream),
        pack,
        batch_entries,
        batch_max_bytes,
        linger: Duration::from_millis(args.linger_ms.or(from_file.linger_ms).unwrap_or(1)),
        queue_batches,
        shutdown_timeout: Duration::from_millis(
            args.shutdown_timeout_ms
                .or(from_file.shutdown_timeout_ms)
                .unwrap_or(10_000),
        ),
        max_lag: args.max_lag.or(from_file.max_lag).unwrap_or(1_000_000),
        summary_json: args.summary_json,
    })
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
    pub alerts_file: Option<PathBuf>,
    pub quiet: bool,
    pub alert_dedup_ttl_s: u64,
    pub consumer_idle_remove: Duration,
    pub trim: bool,
    pub maintenance_interval: Duration,
    pub health_file: Option<PathBuf>,
}

pub fn police_config(args: &PoliceArgs, file: &FileConfig) -> Result<PoliceConfig, ConfigError> {
    let from_file = &file.police;
    let read_count = args.read_count.or(from_file.read_count).unwrap_or(256);
    if read_count == 0 {
        return Err(invalid("read_count", "must be at least 1"));
    }
    let max_deliveries = args.max_deliveries.or(from_file.max_deliveries).unwrap_or(5);
    if max_deliveries == 0 {
        return Err(invalid("max_deliveries", "must be at least 1"));
    }
    let alert_level_text = args
        .alert_level
        .clone()
        .or_else(|| from_file.alert_level.clone())
        .unwrap_or_else(|| "CRITICAL".into());
    let alert_level = alert_level_text
        .parse()
        .map_err(|error| invalid("alert_level", format!("{error}")))?;
    let alert_dedup_ttl_s = args.alert_dedup_ttl_s.or(from_file.alert_dedup_ttl_s).unwrap_or(86_400);
    if alert_dedup_ttl_s == 0 {
        return Err(invalid("alert_dedup_ttl_s", "must be at least 1"));
    }
    let block_ms = args.block_ms.or(from_file.block_ms).unwrap_or(1000);
    if block_ms == 0 {
        return Err(invalid("block_ms", "must be at least 1 (0 would block forever)"));
    }
    let consumer = args
        .consumer
        .clone()
        .or_else(|| from_file.consumer.clone())
        .unwrap_or_else(|| format!("{}-{}", crate::hostname(), std::process::id()));
    if consumer.is_empty() {
        return Err(invalid("consumer", "must not be empty"));
    }
    let maintenance_interval_ms = args
        .maintenance_interval_ms
        .or(from_file.maintenance_interval_ms)
        .unwrap_or(1000);
    if maintenance_interval_ms == 0 {
        return Err(invalid("maintenance_interval_ms", "must be at least 1"));
    }
    Ok(PoliceConfig {
        source: args.source.or(from_file.source).unwrap_or(Transport::Stream),
        consumer,
        read_count,
        block: Duration::from_millis(block_ms),
        claim_idle: Duration::from_millis(args.claim_idle_ms.or(from_file.claim_idle_ms).unwrap_or(30_000)),
        max_deliveries,
        alert_level,
        alerts_file: args.alerts_file.clone().or_else(|| from_file.alerts_file.clone()),
        quiet: args.quiet.or(from_file.quiet).unwrap_or(false),
        alert_dedup_ttl_s,
        consumer_idle_remove: Duration::from_millis(
            args.consumer_idle_remove_ms
                .or(from_file.consumer_idle_remove_ms)
                .unwrap_or(300_000),
        ),
        trim: args.trim.or(from_file.trim).unwrap_or(true),
        maintenance_interval: Duration::from_millis(maintenance_interval_ms),
        health_file: args.health_file.clone().or_else(|| from_file.health_file.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_mix_parses_and_names_problems() {
        let mix = LevelMix::parse("info=70, crit=2").unwrap();
        assert_eq!(mix.0, vec![(Level::Info, 70), (Level::Critical, 2)]);
        assert!(LevelMix::parse("INFO").unwrap_err().contains("LEVEL=WEIGHT"));
        assert!(LevelMix::parse("LOUD=3").unwrap_err().contains("unknown level"));
        assert!(LevelMix::parse("INFO=x").unwrap_err().contains("not a whole number"));
        assert!(LevelMix::parse("INFO=0").is_err());
    }

    #[test]
    fn flags_beat_file_beats_defaults() {
        let file: FileConfig = toml::from_str("[agent]\nrate = 5\npack = 4\n").unwrap();
        let args = AgentArgs {
            rate: Some(7),
            ..AgentArgs::default()
        };
        let config = agent_config(&args, &file).unwrap();
        assert_eq!(config.rate_per_s, 7);
        assert_eq!(config.pack, 4);
        assert_eq!(config.batch_entries, 256);
    }

    #[test]
    fn unknown_file_key_is_named() {
        let error = toml::from_str::<FileConfig>("[police]\nclaim_idle = 5\n").unwrap_err();
        assert!(error.to_string().contains("claim_idle"), "{error}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let args = AgentArgs {
            pack: Some(0),
            ..AgentArgs::default()
        };
        let error = agent_config(&args, &FileConfig::default()).unwrap_err();
        assert_eq!(error.to_string(), "invalid config: pack: 0 is not between 1 and 10000");
        let common = CommonArgs {
            redis_url: Some("http://nope".into()),
            ..CommonArgs::default()
        };
        let error = broker_config(&common, &FileConfig::default()).unwrap_err();
        assert!(error.to_string().starts_with("invalid config: redis_url:"), "{error}");
    }
}
