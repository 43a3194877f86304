//! Redis access: connections, reconnect backoff, and the commands of each mode.
//!
//! There is one broker, Redis, so there is no broker trait: tests use a real server.

pub mod dead_letters;
pub mod errors;
pub mod keys;
pub mod lease;
pub mod list;
pub mod outbox;
pub mod reader;
pub mod registry;
pub mod scripts;
pub mod stream;

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError, Value};
use tracing::{info, warn};

/// Longest a reply may take before the connection is considered broken (a peer cut off
/// the network sends no reset: only a timeout notices). Blocking reads wait at most
/// `block_ms` (default 1 s), well below this.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

pub type Connection = MultiplexedConnection;

/// Opens one multiplexed connection. Callers reconnect with [`Backoff`] on error.
pub async fn connect(redis_url: &str) -> Result<Connection, RedisError> {
    let client = redis::Client::open(redis_url)?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    client.get_multiplexed_async_connection_with_config(&config).await
}

/// Fails (as refused: retrying cannot help) unless Redis is 7.0 or newer: the scripts rely
/// on script flags (`allow-oom`) and `redis.acl_check_cmd`, both new in 7.0.
pub async fn require_scripting_flags(connection: &mut Connection) -> Result<(), RedisError> {
    let info: String = redis::cmd("INFO").arg("server").query_async(connection).await?;
    let version = info
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .unwrap_or("")
        .trim()
        .to_string();
    let major: u32 = version
        .split('.')
        .next()
        .and_then(|major| major.parse().ok())
        .unwrap_or(0);
    if major >= 7 {
        return Ok(());
    }
    Err(RedisError::from((
        redis::ErrorKind::InvalidClientConfig,
        "unsupported Redis version",
        format!("Redis {version} is older than 7.0, which LogSentinel's police needs"),
    )))
}

/// Marks a consumer alive for `ttl_ms` (see [`scripts::HEARTBEAT`]).
pub async fn heartbeat(connection: &mut Connection, heartbeat_key: &str, ttl_ms: u64) -> Result<(), RedisError> {
    scripts::HEARTBEAT
        .key(heartbeat_key)
        .arg(ttl_ms)
        .invoke_async::<()>(connection)
        .await
}

/// The share of `maxmemory` past which rule state stops growing and delivered alert
/// records are trimmed at once: the rest stays for ingestion (the settle script's
/// `state_memory_share` is the same figure).
pub const STATE_MEMORY_SHARE: f64 = 0.9;

/// How full Redis is: `used_memory - mem_not_counted_for_evict` over `maxmemory`, as Redis
/// counts it for its own limit; 0 when no `maxmemory` is set.
pub async fn memory_share(connection: &mut Connection) -> Result<f64, RedisError> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(connection).await?;
    let figure = |name: &str| -> f64 {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let limit = figure("maxmemory");
    if limit <= 0.0 {
        return Ok(0.0);
    }
    Ok((figure("used_memory") - figure("mem_not_counted_for_evict")) / limit)
}

/// Capped exponential backoff that logs once per change of state (up → down → up),
/// not once per attempt.
#[derive(Debug)]
pub struct Backoff {
    what: &'static str,
    /// The Redis URL without its password, named in every message.
    redis_url: String,
    next_delay: Duration,
    failing_since: Option<tokio::time::Instant>,
    attempts: u64,
}

impl Backoff {
    const FIRST_DELAY: Duration = Duration::from_millis(100);
    const MAX_DELAY: Duration = Duration::from_secs(5);

    pub fn new(what: &'static str, redis_url: &str) -> Backoff {
        Backoff {
            what,
            redis_url: errors::redact_url(redis_url),
            next_delay: Self::FIRST_DELAY,
            failing_since: None,
            attempts: 0,
        }
    }

    /// Records a failure and returns how long to wait before the next attempt.
    pub fn failed(&mut self, error: &RedisError) -> Duration {
        if self.failing_since.is_none() {
            let redis_url = &self.redis_url;
            match errors::classify(error) {
                errors::Failure::OutOfMemory => {
                    warn!(
                        component = self.what,
                        redis_url, "redis out of memory (maxmemory), retrying with backoff"
                    )
                }
                errors::Failure::Unreachable | errors::Failure::Refused => {
                    warn!(component = self.what, redis_url, error = %error, "redis unreachable, retrying with backoff")
                }
            }
            self.failing_since = Some(tokio::time::Instant::now());
        }
        self.attempts += 1;
        let delay = self.next_delay;
        self.next_delay = (self.next_delay * 2).min(Self::MAX_DELAY);
        delay
    }

    /// Records a success; logs the recovery if we were failing.
    pub fn succeeded(&mut self) {
        if let Some(since) = self.failing_since.take() {
            info!(
                component = self.what,
                redis_url = %self.redis_url,
                attempts = self.attempts,
                down_ms = since.elapsed().as_millis() as u64,
                "redis reachable again"
            );
        }
        self.next_delay = Self::FIRST_DELAY;
        self.attempts = 0;
    }

    pub fn is_failing(&self) -> bool {
        self.failing_since.is_some()
    }
}

/// Text of a bulk or simple string reply.
pub fn value_text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(text) => Some(text.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(number) => Some(number.to_string()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

pub fn value_int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(number) => Some(*number),
        other => value_text(other)?.parse().ok(),
    }
}

pub fn value_items(value: &Value) -> &[Value] {
    match value {
        Value::Array(items) | Value::Set(items) => items,
        _ => &[],
    }
}

/// A flat `[name, value, name, value, …]` reply (XINFO, field lists) as pairs.
pub fn value_pairs(value: &Value) -> Vec<(String, &Value)> {
    match value {
        Value::Map(map) => map
            .iter()
            .filter_map(|(name, item)| Some((value_text(name)?, item)))
            .collect(),
        other => value_items(other)
            .chunks_exact(2)
            .filter_map(|pair| Some((value_text(&pair[0])?, &pair[1])))
            .collect(),
    }
}

/// Milliseconds part of a stream id (`<ms>-<seq>`).
pub fn stream_id_millis(entry_id: &str) -> Option<u64> {
    entry_id.split('-').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_settle_script_stops_rule_state_at_the_same_share() {
        assert!(
            scripts::RULE_STATE_SOURCE.contains(&format!("local state_memory_share = {STATE_MEMORY_SHARE}\n")),
            "the settle script's state_memory_share must be STATE_MEMORY_SHARE"
        );
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut backoff = Backoff::new("test", "redis://127.0.0.1:1");
        let error = RedisError::from(std::io::Error::other("down"));
        let delays: Vec<Duration> = (0..8).map(|_| backoff.failed(&error)).collect();
        assert_eq!(delays[0], Duration::from_millis(100));
        assert_eq!(delays[1], Duration::from_millis(200));
        assert_eq!(*delays.last().unwrap(), Duration::from_secs(5));
        assert!(backoff.is_failing());
        backoff.succeeded();
        assert!(!backoff.is_failing());
        assert_eq!(backoff.failed(&error), Duration::from_millis(100));
    }

    #[test]
    fn stream_id_millis_reads_the_time_part() {
        assert_eq!(stream_id_millis("1700000000000-5"), Some(1_700_000_000_000));
        assert_eq!(stream_id_millis("x"), None);
    }
}
