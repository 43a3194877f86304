//! Every Redis key name, built in one place.

/// Names of the Redis keys one deployment uses. All are configurable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// The log stream agents write to.
    pub stream: String,
    /// The consumer group of the police on `stream`.
    pub group: String,
    /// The stream alerts are written to.
    pub alerts: String,
    /// The dead-letter stream.
    pub dead: String,
    /// The list used in list mode.
    pub list: String,
}

impl Default for Keys {
    fn default() -> Self {
        Keys {
            stream: "logsentinel:logs".into(),
            group: "police".into(),
            alerts: "logsentinel:alerts".into(),
            dead: "logsentinel:dead".into(),
            list: "log_queue".into(),
        }
    }
}

impl Keys {
    /// Hash of counters (events, alerts, dead) updated atomically with each acknowledgement.
    pub fn stats(&self, source_key: &str) -> String {
        format!("{source_key}:stats")
    }

    /// Prefix of the per-alert idempotency keys (`SET NX EX`).
    pub fn alert_seen_prefix(&self) -> String {
        format!("{}:seen:", self.alerts)
    }

    /// Prefix of every key of the rule state (`docs/ALERTING.md`): `logsentinel:rules:`
    /// beside the alerts stream's own prefix.
    pub fn rules_prefix(&self) -> String {
        let base = self.alerts.strip_suffix(":alerts").unwrap_or(&self.alerts);
        format!("{base}:rules:")
    }

    /// Lease of the clock-driven rule work and re-sends (see [`super::lease`]).
    pub fn rules_lease(&self) -> String {
        format!("{}lease", self.rules_prefix())
    }

    /// Consumer group of one sink on the alerts stream.
    pub fn sink_group(sink: &str) -> String {
        format!("sink:{sink}")
    }

    /// Dead letters of one sink: records it could not deliver, with the last status.
    pub fn sink_dead(&self, sink: &str) -> String {
        let base = self.dead.strip_suffix(":dead").unwrap_or(&self.dead);
        format!("{base}:dead:sink:{sink}")
    }

    /// Rate-limit counter of one sink for one period (`<period index>` = wall-clock ms
    /// divided by the period), shared by every police (see [`super::outbox::take_permit`]).
    pub fn sink_rate(&self, sink: &str, period_index: u64) -> String {
        format!("{}rate:{sink}:{period_index}", self.rules_prefix())
    }

    /// Liveness key of one consumer of the group; a consumer whose key exists is never
    /// removed from the group by another police.
    pub fn consumer_heartbeat(&self, consumer: &str) -> String {
        format!("{}:{}:alive:{consumer}", self.stream, self.group)
    }

    /// Processing list of one list-mode consumer.
    pub fn processing_list(&self, consumer: &str) -> String {
        format!("{}:processing:{consumer}", self.list)
    }

    /// Pattern matching every processing list of `list`.
    pub fn processing_list_pattern(&self) -> String {
        format!("{}:processing:*", self.list)
    }

    /// Liveness key of one list-mode consumer; expires when the consumer dies.
    pub fn heartbeat(&self, consumer: &str) -> String {
        format!("{}:alive:{consumer}", self.list)
    }
}
