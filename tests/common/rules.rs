//! Helpers of the rule tests: rule files, the rule keys in Redis and the alert records.

use std::collections::BTreeSet;

use logsentinel::broker::keys::Keys;
use logsentinel::police::rules::plan::StatefulRule;
use logsentinel::police::rules::{group, window};
use logsentinel::police::settle::{SettleTarget, Source};

use super::{counters, read_stream};

/// The prefix of every rule key.
pub const RULES: &str = "logsentinel:rules:";
pub const STREAM: &str = "logsentinel:logs";
pub const STATS: &str = "logsentinel:logs:stats";

pub fn now_ms() -> i64 {
    window::now_ms()
}

/// The group key of a rule grouped by one field whose value is `value`.
pub fn gk(value: &str) -> String {
    group::key_of([value].into_iter()).id
}

/// Writes `rules.toml` in `dir`; returns its path.
pub fn write_rules(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("rules.toml");
    std::fs::write(&path, text).expect("write rule file");
    path.display().to_string()
}

/// Every record of the alerts stream, parsed.
pub fn records(connection: &mut redis::Connection) -> Vec<serde_json::Value> {
    read_stream(connection, "logsentinel:alerts")
        .into_iter()
        .map(|(_, fields)| serde_json::from_str(&fields["alert"]).expect("alert record is JSON"))
        .collect()
}

/// `(alert_id, status)` of every record; panics on a repeated one.
pub fn record_keys(connection: &mut redis::Connection) -> Vec<(String, String)> {
    let mut seen = BTreeSet::new();
    let mut keys = Vec::new();
    for record in records(connection) {
        let key = (
            record["alert_id"].as_str().unwrap().to_string(),
            record["status"].as_str().unwrap().to_string(),
        );
        assert!(seen.insert(key.clone()), "record written twice: {key:?}");
        keys.push(key);
    }
    keys
}

/// The alert ids of the firing records among `records`.
pub fn firing_ids(records: &[serde_json::Value]) -> BTreeSet<String> {
    records
        .iter()
        .filter(|record| record["status"] == "firing")
        .map(|record| record["alert_id"].as_str().unwrap().to_string())
        .collect()
}

/// A counter's value (`None`: no such key), as the caller's integer type.
pub fn get_integer<T: redis::FromRedisValue>(connection: &mut redis::Connection, key: &str) -> Option<T> {
    redis::cmd("GET").arg(key).query(connection).expect("GET")
}

/// A field of the police's stats hash (0 when absent).
pub fn stat(connection: &mut redis::Connection, field: &str) -> u64 {
    counters(connection, STATS).get(field).copied().unwrap_or(0)
}

pub fn processed_events(connection: &mut redis::Connection) -> u64 {
    stat(connection, "events")
}

/// The lease's owner: `<consumer>/<run id>`.
pub fn lease_owner(connection: &mut redis::Connection) -> Option<String> {
    redis::cmd("GET")
        .arg(format!("{RULES}lease"))
        .query(connection)
        .expect("GET lease")
}

/// Where a settle call of consumer `consumer` writes, for the stream transport.
pub fn target<'a>(keys: &'a Keys, consumer: &'a str, rules: &'a [StatefulRule]) -> SettleTarget<'a> {
    SettleTarget {
        keys,
        source: Source::Stream,
        consumer,
        alert_dedup_ttl_s: 600,
        rules,
        expected_pending: None,
    }
}
