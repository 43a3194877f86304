//! Redis as the shipper sees it: one connection, its backoff, and the wire side of a batch
//! (pipelined XADD or LPUSH, per-command replies, what exceeds `proto-max-bulk-len`, the
//! consumers' lag). The [`super::shipper`] decides what to send when; this module sends it.

use redis::{RedisError, RedisResult, Value};
use tokio::time::Instant;
use tracing::warn;

use super::batcher::Entry;
use crate::broker::errors::{self, Failure};
use crate::broker::{self, Backoff, Connection, keys::Keys};
use crate::event::ENCODING_VERSION;
use crate::observability::names;
use crate::options::Transport;

/// Redis's default `proto-max-bulk-len`, assumed when `CONFIG GET` is refused.
const DEFAULT_MAX_BULK_BYTES: usize = 512 << 20;
/// Bytes of an oversized event kept in its dead letter: enough to tell where it came from.
const DEAD_LETTER_RAW_BYTES: usize = 64 << 10;

/// A failed Redis call, with what was asked of which key.
#[derive(Debug)]
pub struct ShipError {
    pub failure: Failure,
    /// e.g. `XADD on logsentinel:logs`.
    pub what: String,
    pub error: RedisError,
}

impl ShipError {
    pub(super) fn new(what: String, error: RedisError) -> ShipError {
        ShipError {
            failure: errors::classify(&error),
            what,
            error,
        }
    }

    /// e.g. `redis refused XADD on logsentinel:logs: NOPERM this user has no permissions …`.
    pub(super) fn describe(&self) -> String {
        match (self.error.code(), self.error.detail()) {
            (Some(code), Some(detail)) => format!("redis refused {}: {code} {detail}", self.what),
            _ => format!("redis refused {}: {}", self.what, self.error),
        }
    }
}

/// What one pipelined attempt delivered.
#[derive(Debug, Default)]
pub(super) struct Delivered {
    pub(super) entries: u64,
    pub(super) events: u64,
    pub(super) dead_lettered_events: u64,
}

/// Redis as the shipper sees it: one connection, and the backoff of failed attempts.
pub(super) struct Target {
    pub(super) redis_url: String,
    pub(super) keys: Keys,
    pub(super) sink: Transport,
    /// `source` of the dead letters this agent writes.
    pub(super) agent_id: String,
    pub(super) connection: Option<Connection>,
    /// Redis's `proto-max-bulk-len`, read on connecting.
    pub(super) max_bulk_bytes: usize,
    pub(super) backoff: Backoff,
    /// No Redis attempt before this instant (backoff after a failure).
    pub(super) retry_at: Option<Instant>,
    /// The derived lag is logged once, not once a second.
    pub(super) lag_derivation_logged: bool,
}

impl Target {
    pub(super) fn new(redis_url: String, keys: Keys, sink: Transport, agent_id: String) -> Target {
        let backoff = Backoff::new("agent", &redis_url);
        Target {
            redis_url,
            keys,
            sink,
            agent_id,
            connection: None,
            max_bulk_bytes: DEFAULT_MAX_BULK_BYTES,
            backoff,
            retry_at: None,
            lag_derivation_logged: false,
        }
    }

    /// One pipelined round trip for `entries` (stream: XADD each; list: one LPUSH); what
    /// Redis took is removed from `entries`. An outage drops the connection; every
    /// failure but a refusal sets the time of the next attempt (backoff).
    pub(super) async fn ship(&mut self, entries: &mut Vec<Entry>) -> (Delivered, Result<(), ShipError>) {
        let mut delivered = Delivered::default();
        let result = self.ship_once(entries, &mut delivered).await;
        match &result {
            Ok(()) => {
                self.backoff.succeeded();
                self.retry_at = None;
            }
            Err(failure) => {
                if failure.failure == Failure::Unreachable {
                    self.connection = None;
                }
                if failure.failure != Failure::Refused {
                    self.retry_at = Some(Instant::now() + self.backoff.failed(&failure.error));
                }
            }
        }
        (delivered, result)
    }

    /// The connection, opened if there is none (reading `proto-max-bulk-len` once).
    pub(super) async fn connect(&mut self) -> Result<&mut Connection, ShipError> {
        if self.connection.is_none() {
            let mut connection = broker::connect(&self.redis_url).await.map_err(|error| {
                ShipError::new(
                    format!("the connection to {}", errors::redact_url(&self.redis_url)),
                    error,
                )
            })?;
            self.max_bulk_bytes = max_bulk_bytes(&mut connection).await;
            self.connection = Some(connection);
        }
        Ok(self.connection.as_mut().expect("connection was just set"))
    }

    pub(super) async fn ship_once(
        &mut self,
        entries: &mut Vec<Entry>,
        delivered: &mut Delivered,
    ) -> Result<(), ShipError> {
        if entries.is_empty() {
            return Ok(()); // a batch of receipts only
        }
        let key = match self.sink {
            Transport::Stream => self.keys.stream.clone(),
            Transport::List => self.keys.list.clone(),
        };
        let max_bulk_bytes = self.max_bulk_bytes;
        let plan = plan_commands(entries, max_bulk_bytes, self.sink);
        let mut pipeline = redis::pipe();
        pipeline.ignore_errors(); // per-command results: resend only what failed
        for command in &plan {
            match &command.kind {
                Kind::Add { payload, event_count } => {
                    let xadd = pipeline.cmd("XADD").arg(&key).arg("*").arg("v").arg(ENCODING_VERSION);
                    if *event_count == 1 {
                        xadd.arg("event").arg(*payload);
                    } else {
                        xadd.arg("n").arg(*event_count).arg("events").arg(*payload);
                    }
                }
                Kind::Push { items } => {
                    let lpush = pipeline.cmd("LPUSH").arg(&key);
                    for item in items {
                        lpush.arg(*item);
                    }
                }
                Kind::DeadLetter { payload } => {
                    let raw = String::from_utf8_lossy(&payload[..payload.len().min(DEAD_LETTER_RAW_BYTES)]);
                    let reason = format!(
                        "event of {} bytes is over redis proto-max-bulk-len ({max_bulk_bytes} bytes)",
                        payload.len()
                    );
                    warn!(bytes = payload.len(), max_bulk_bytes, dead_stream = %self.keys.dead, "event too large for redis, sent to the dead-letter stream");
                    pipeline
                        .cmd("XADD")
                        .arg(&self.keys.dead)
                        .arg("*")
                        .arg("reason")
                        .arg(reason)
                        .arg("source")
                        .arg(&self.agent_id)
                        .arg("raw")
                        .arg(raw.as_ref());
                }
            }
        }
        let dead_stream = self.keys.dead.clone();
        let what = |command: &PlannedCommand| match command.kind {
            Kind::Add { .. } => format!("XADD on {key}"),
            Kind::Push { .. } => format!("LPUSH on {key}"),
            Kind::DeadLetter { .. } => format!("XADD on {dead_stream}"),
        };
        let whole_what = what(&plan[0]);
        let command_name = match self.sink {
            Transport::Stream => "xadd",
            Transport::List => "lpush",
        };
        let connection = self.connect().await?;
        let sent_at = std::time::Instant::now();
        let reply = pipeline.query_async(connection).await;
        metrics::histogram!(names::REDIS_ROUND_TRIP_SECONDS, "command" => command_name).record(sent_at.elapsed());
        let results: Vec<RedisResult<Value>> = reply.map_err(|error| ShipError::new(whole_what.clone(), error))?;
        let results: Vec<RedisResult<Value>> = if results.len() == plan.len() {
            results
        } else {
            let mismatch = || {
                RedisError::from(std::io::Error::other(
                    "pipeline reply count does not match its commands",
                ))
            };
            plan.iter().map(|_| Err(mismatch())).collect()
        };

        // An entry is delivered when every command made of it succeeded.
        let mut entry_failed = vec![false; entries.len()];
        let mut dead_lettered_of_entry = vec![0u64; entries.len()];
        let mut first_failure: Option<ShipError> = None;
        for (command, result) in plan.iter().zip(results) {
            match result {
                Ok(_) => {
                    if let Kind::DeadLetter { .. } = command.kind {
                        dead_lettered_of_entry[command.owners[0]] += 1;
                    }
                }
                Err(error) => {
                    for owner in &command.owners {
                        entry_failed[*owner] = true;
                    }
                    let failure = ShipError::new(what(command), error);
                    // A refusal is reported over an outage: retrying cannot heal it.
                    if first_failure
                        .as_ref()
                        .is_none_or(|first| first.failure != Failure::Refused && failure.failure == Failure::Refused)
                    {
                        first_failure = Some(failure);
                    }
                }
            }
        }
        for (index, entry) in entries.iter().enumerate() {
            if !entry_failed[index] {
                delivered.entries += 1;
                delivered.dead_lettered_events += dead_lettered_of_entry[index];
                delivered.events += u64::from(entry.event_count) - dead_lettered_of_entry[index];
            }
        }
        let mut index = 0;
        entries.retain(|_| {
            let keep = entry_failed[index];
            index += 1;
            keep
        });
        match first_failure {
            None => Ok(()),
            Some(failure) => Err(failure),
        }
    }

    /// Entries not yet delivered to the consumer group (stream; the stream length when
    /// there is no group yet), or the list length (list mode). Redis's group lag is
    /// checked against the stream and derived when it cannot be right (see [`derive_lag`]).
    pub(super) async fn consumer_lag(&mut self) -> Result<u64, ShipError> {
        let lag = self.read_lag().await;
        if let Err(failure) = &lag
            && failure.failure == Failure::Unreachable
        {
            self.connection = None;
        }
        lag
    }

    pub(super) async fn read_lag(&mut self) -> Result<u64, ShipError> {
        let sink = self.sink;
        let keys = self.keys.clone();
        let connection = self.connect().await?;
        let on_stream = |command: &str| format!("{command} on {}", keys.stream);
        match sink {
            Transport::List => redis::cmd("LLEN")
                .arg(&keys.list)
                .query_async(connection)
                .await
                .map_err(|error| ShipError::new(format!("LLEN on {}", keys.list), error)),
            Transport::Stream => {
                let exists: bool = redis::cmd("EXISTS")
                    .arg(&keys.stream)
                    .query_async(connection)
                    .await
                    .map_err(|error| ShipError::new(on_stream("EXISTS"), error))?;
                if !exists {
                    return Ok(0);
                }
                let group = broker::stream::groups(connection, &keys.stream)
                    .await
                    .map_err(|error| ShipError::new(on_stream("XINFO GROUPS"), error))?
                    .into_iter()
                    .find(|group| group.name == keys.group);
                let stream: Value = redis::cmd("XINFO")
                    .arg("STREAM")
                    .arg(&keys.stream)
                    .query_async(connection)
                    .await
                    .map_err(|error| ShipError::new(on_stream("XINFO STREAM"), error))?;
                let fields = broker::value_pairs(&stream);
                let field = |name: &str| fields.iter().find(|(field, _)| field == name).map(|(_, value)| *value);
                let length = field("length").and_then(broker::value_int).unwrap_or(0).max(0) as u64;
                let Some(group) = group else {
                    return Ok(length);
                };
                let last_generated_id = field("last-generated-id")
                    .and_then(broker::value_text)
                    .unwrap_or_default();
                let (lag, derived) = derive_lag(group.lag, &group.last_delivered_id, &last_generated_id, length);
                if derived && !self.lag_derivation_logged {
                    self.lag_derivation_logged = true;
                    warn!(
                        reported_lag = ?group.lag,
                        derived_lag = lag,
                        length,
                        last_delivered_id = %group.last_delivered_id,
                        last_generated_id = %last_generated_id,
                        "redis group lag is missing or inconsistent with the stream, using one derived from the stream"
                    );
                }
                Ok(lag)
            }
        }
    }
}

/// `proto-max-bulk-len`, or Redis's default when `CONFIG GET` is refused (ACL).
async fn max_bulk_bytes(connection: &mut Connection) -> usize {
    let reply: RedisResult<Value> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("proto-max-bulk-len")
        .query_async(connection)
        .await;
    let configured = reply.ok().and_then(|reply| {
        broker::value_pairs(&reply)
            .into_iter()
            .find(|(name, _)| name == "proto-max-bulk-len")
            .and_then(|(_, value)| broker::value_int(value))
    });
    match configured {
        Some(bytes) if bytes > 0 => bytes as usize,
        _ => DEFAULT_MAX_BULK_BYTES,
    }
}

/// The group lag to act on. Redis's own is trusted unless it cannot be right: nothing is
/// undelivered when the group has delivered the stream's last id (after AOF restarts Redis
/// was seen reporting 193,701 then), and never more than the stream holds (the police
/// trims only what every group has read). When Redis cannot tell (null), the stream length
/// bounds it. Returns the lag and whether it was derived.
fn derive_lag(reported: Option<u64>, last_delivered_id: &str, last_generated_id: &str, length: u64) -> (u64, bool) {
    if last_delivered_id == last_generated_id {
        return (0, reported != Some(0));
    }
    match reported {
        None => (length, true),
        Some(lag) if lag > length => (length, true),
        Some(lag) => (lag, false),
    }
}

/// One command of a pipeline and the entries (indexes) it is made of.
#[derive(Debug, PartialEq)]
struct PlannedCommand<'a> {
    kind: Kind<'a>,
    owners: Vec<usize>,
}

#[derive(Debug, PartialEq)]
enum Kind<'a> {
    /// XADD of one entry (or one event of an entry too large for one bulk string).
    Add { payload: &'a [u8], event_count: u32 },
    /// List mode: one LPUSH of every item that fits.
    Push { items: Vec<&'a [u8]> },
    /// An event too large for Redis, to the dead-letter stream.
    DeadLetter { payload: &'a [u8] },
}

/// The commands that ship `entries` without any argument over `max_bulk_bytes`: a packed
/// entry too large is split into its events (one JSON document per line), an event too
/// large becomes a dead letter.
fn plan_commands(entries: &[Entry], max_bulk_bytes: usize, sink: Transport) -> Vec<PlannedCommand<'_>> {
    let mut commands = Vec::new();
    let mut push_items = Vec::new();
    let mut push_owners = Vec::new();
    // (payload, event count, owner) of every XADD or list item that fits.
    let mut fitting: Vec<(&[u8], u32, usize)> = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        if entry.payload.len() <= max_bulk_bytes {
            fitting.push((entry.payload.as_slice(), entry.event_count, index));
            continue;
        }
        for event in entry.payload.split(|byte| *byte == b'\n') {
            if event.len() <= max_bulk_bytes {
                fitting.push((event, 1, index));
            } else {
                commands.push(PlannedCommand {
                    kind: Kind::DeadLetter { payload: event },
                    owners: vec![index],
                });
            }
        }
    }
    for (payload, event_count, owner) in fitting {
        match sink {
            Transport::Stream => commands.push(PlannedCommand {
                kind: Kind::Add { payload, event_count },
                owners: vec![owner],
            }),
            Transport::List => {
                push_items.push(payload);
                push_owners.push(owner);
            }
        }
    }
    if !push_items.is_empty() {
        commands.push(PlannedCommand {
            kind: Kind::Push { items: push_items },
            owners: push_owners,
        });
    }
    commands
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(text: &str, event_count: u32) -> Entry {
        Entry {
            event_count,
            payload: text.as_bytes().to_vec(),
        }
    }

    #[test]
    fn the_lag_is_derived_only_when_redis_cannot_be_right() {
        assert_eq!(derive_lag(Some(5), "1-1", "1-6", 10), (5, false));
        assert_eq!(
            derive_lag(Some(193_701), "9-0", "9-0", 0),
            (0, true),
            "everything delivered"
        );
        assert_eq!(derive_lag(Some(0), "9-0", "9-0", 0), (0, false));
        assert_eq!(
            derive_lag(Some(50), "1-1", "1-6", 10),
            (10, true),
            "never more than the stream holds"
        );
        assert_eq!(derive_lag(None, "1-1", "1-6", 10), (10, true));
    }

    #[test]
    fn nothing_over_the_bulk_limit_is_planned() {
        let entries = vec![entry("small", 1), entry("aaaa\nbb\ncccccccc", 3), entry("dddddddd", 1)];
        let plan = plan_commands(&entries, 5, Transport::Stream);
        let expected = vec![
            PlannedCommand {
                kind: Kind::DeadLetter { payload: b"cccccccc" },
                owners: vec![1],
            },
            PlannedCommand {
                kind: Kind::DeadLetter { payload: b"dddddddd" },
                owners: vec![2],
            },
            PlannedCommand {
                kind: Kind::Add {
                    payload: b"small",
                    event_count: 1,
                },
                owners: vec![0],
            },
            PlannedCommand {
                kind: Kind::Add {
                    payload: b"aaaa",
                    event_count: 1,
                },
                owners: vec![1],
            },
            PlannedCommand {
                kind: Kind::Add {
                    payload: b"bb",
                    event_count: 1,
                },
                owners: vec![1],
            },
        ];
        assert_eq!(plan, expected);

        let plan = plan_commands(&entries, 5, Transport::List);
        assert_eq!(plan.len(), 3, "two dead letters and one LPUSH: {plan:?}");
        assert_eq!(
            plan[2],
            PlannedCommand {
                kind: Kind::Push {
                    items: vec![b"small", b"aaaa", b"bb"]
                },
                owners: vec![0, 1, 1]
            }
        );
    }
}
