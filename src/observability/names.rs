//! Metric names, types and help texts, declared once (the README's "Operating" table
//! lists the same). Prefix `logsentinel_`, counters end in `_total`, base units only.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

pub const BUILD_INFO: &str = "logsentinel_build_info";
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "logsentinel_process_resident_memory_bytes";
pub const PROCESS_OPEN_FDS: &str = "logsentinel_process_open_fds";
pub const ERRORS_TOTAL: &str = "logsentinel_errors_total";
pub const REDIS_ROUND_TRIP_SECONDS: &str = "logsentinel_redis_round_trip_seconds";

pub const AGENT_EVENTS_RECEIVED_TOTAL: &str = "logsentinel_agent_events_received_total";
pub const AGENT_EVENTS_SHIPPED_TOTAL: &str = "logsentinel_agent_events_shipped_total";
pub const AGENT_EVENTS_DISCARDED_TOTAL: &str = "logsentinel_agent_events_discarded_total";
pub const AGENT_BATCHES_TOTAL: &str = "logsentinel_agent_batches_total";
pub const AGENT_ENTRIES_TOTAL: &str = "logsentinel_agent_entries_total";
pub const AGENT_SPOOL_BYTES: &str = "logsentinel_agent_spool_bytes";
pub const AGENT_SPOOL_RECORDS_WRITTEN_TOTAL: &str = "logsentinel_agent_spool_records_written_total";
pub const AGENT_SPOOL_EVENTS_REPLAYED_TOTAL: &str = "logsentinel_agent_spool_events_replayed_total";
pub const AGENT_BACKPRESSURE: &str = "logsentinel_agent_backpressure";

pub const POLICE_ENTRIES_TOTAL: &str = "logsentinel_police_entries_total";
pub const POLICE_EVENTS_PROCESSED_TOTAL: &str = "logsentinel_police_events_processed_total";
pub const POLICE_DEAD_LETTERS_TOTAL: &str = "logsentinel_police_dead_letters_total";
pub const POLICE_ALERTS_TOTAL: &str = "logsentinel_police_alerts_total";
pub const POLICE_RULE_MATCHES_DROPPED_TOTAL: &str = "logsentinel_police_rule_matches_dropped_total";
pub const GROUP_LAG: &str = "logsentinel_group_lag";
pub const GROUP_PENDING: &str = "logsentinel_group_pending";
pub const GROUP_OLDEST_PENDING_AGE_SECONDS: &str = "logsentinel_group_oldest_pending_age_seconds";
pub const GROUP_CONSUMERS: &str = "logsentinel_group_consumers";
pub const DEAD_LETTER_LENGTH: &str = "logsentinel_dead_letter_length";
pub const SINK_DELIVERIES_TOTAL: &str = "logsentinel_sink_deliveries_total";
pub const SINK_BACKLOG: &str = "logsentinel_sink_backlog";

/// Upper bounds of the Redis round-trip buckets, in seconds: a pipelined batch takes
/// 0.1–10 ms on a healthy Redis; the top buckets show stalls up to the client's timeout.
pub const ROUND_TRIP_BUCKETS_SECONDS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 1.0, 10.0,
];

/// Registers the help text of every metric (shown as `# HELP` once a metric has a value).
pub fn describe() {
    describe_gauge!(BUILD_INFO, "Version and role of this process (always 1)");
    describe_gauge!(
        PROCESS_RESIDENT_MEMORY_BYTES,
        Unit::Bytes,
        "Resident memory of this process"
    );
    describe_gauge!(PROCESS_OPEN_FDS, "Open file descriptors of this process");
    describe_counter!(ERRORS_TOTAL, "Errors by stage (ship, spool, settle, session, sample)");
    describe_histogram!(REDIS_ROUND_TRIP_SECONDS, Unit::Seconds, "Redis round trips by command");
    describe_counter!(
        AGENT_EVENTS_RECEIVED_TOTAL,
        "Events the sources handed to the shipper, by level"
    );
    describe_counter!(
        AGENT_EVENTS_SHIPPED_TOTAL,
        "Events written to Redis (replayed ones included)"
    );
    describe_counter!(AGENT_EVENTS_DISCARDED_TOTAL, "Events not stored, by reason");
    describe_counter!(AGENT_BATCHES_TOTAL, "Batches the shipper received");
    describe_counter!(AGENT_ENTRIES_TOTAL, "Stream entries (or list items) written to Redis");
    describe_gauge!(AGENT_SPOOL_BYTES, Unit::Bytes, "Bytes in the disk spool");
    describe_counter!(AGENT_SPOOL_RECORDS_WRITTEN_TOTAL, "Batches written to the disk spool");
    describe_counter!(
        AGENT_SPOOL_EVENTS_REPLAYED_TOTAL,
        "Events read back from the spool and shipped"
    );
    describe_gauge!(AGENT_BACKPRESSURE, "1 while batches are held and the sources wait");
    describe_counter!(POLICE_ENTRIES_TOTAL, "Stream entries (or list items) settled");
    describe_counter!(POLICE_EVENTS_PROCESSED_TOTAL, "Events decoded and evaluated");
    describe_counter!(
        POLICE_DEAD_LETTERS_TOTAL,
        "Input sent to the dead-letter stream, by reason"
    );
    describe_counter!(POLICE_ALERTS_TOTAL, "Alerts raised, by rule");
    describe_counter!(
        POLICE_RULE_MATCHES_DROPPED_TOTAL,
        "Rule matches the rule state did not count, by reason (over_limit, over_maxmemory, late)"
    );
    describe_gauge!(GROUP_LAG, "Entries not yet delivered to the consumer group (sampled)");
    describe_gauge!(GROUP_PENDING, "Entries delivered and not yet acknowledged (sampled)");
    describe_gauge!(
        GROUP_OLDEST_PENDING_AGE_SECONDS,
        Unit::Seconds,
        "Age of the oldest pending entry, from its id (sampled)"
    );
    describe_gauge!(GROUP_CONSUMERS, "Consumers in the group (sampled)");
    describe_gauge!(DEAD_LETTER_LENGTH, "Entries in the dead-letter stream (sampled)");
    describe_counter!(SINK_DELIVERIES_TOTAL, "Alerts handed to a sink, by sink and outcome");
    describe_gauge!(
        SINK_BACKLOG,
        "Alerts not yet delivered by a sink: lag plus pending (sampled)"
    );
}

/// Bounded class of a dead-letter reason (the reason text itself names ids and sizes).
/// The `reason` label values of the police's dead letters.
pub const DEAD_LETTER_CLASSES: [&str; 3] = ["max_deliveries", "too_large", "undecodable"];

pub fn dead_letter_class(reason: &str) -> &'static str {
    if reason.starts_with("delivered ") {
        "max_deliveries"
    } else if reason.contains("larger than") || reason.contains("too large") || reason.contains("max_entry_bytes") {
        "too_large"
    } else {
        "undecodable"
    }
}
