//! Synthetic logs: realistic events of about 200 bytes, reproducible from a seed.

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use crate::config::LevelMix;
use crate::event::Level;

/// Borrowed mirror of [`crate::event::LogEvent`]: same fields in the same order, so the
/// output decodes as a `LogEvent`, without allocating a `LogEvent` per generated event.
#[derive(Serialize)]
struct EventRef<'a> {
    id: &'a str,
    timestamp: &'a str,
    level: &'static str,
    service: &'a str,
    host: &'a str,
    message: &'a str,
    extra: ExtraRef<'a>,
}

#[derive(Serialize)]
struct ExtraRef<'a> {
    region: &'static str,
    request_id: &'a str,
}

const REGIONS: [&str; 4] = ["eu-west-1", "us-east-1", "ap-south-1", "sa-east-1"];
const ROUTES: [&str; 5] = [
    "/api/v1/orders",
    "/api/v1/cart",
    "/api/v1/users",
    "/api/v1/payments",
    "/healthz",
];

pub struct Generator {
    rng: SmallRng,
    /// Cumulative weights, for picking a level with one random draw.
    cumulative_weights: Vec<(u32, Level)>,
    total_weight: u32,
    service: String,
    host: String,
    /// `<agent-id>:<run>:`; the sequence number completes the event id.
    id_prefix: String,
    next_sequence: u64,
    message: String,
    id: String,
    request_id: String,
    timestamp: TimestampCache,
}

impl Generator {
    pub fn new(seed: u64, mix: &LevelMix, service: &str, host: &str, agent_id: &str, run_id: &str) -> Generator {
        let mut cumulative_weights = Vec::new();
        let mut total_weight = 0;
        for (level, weight) in &mix.0 {
            if *weight > 0 {
                total_weight += weight;
                cumulative_weights.push((total_weight, *level));
            }
        }
        Generator {
            rng: SmallRng::seed_from_u64(seed),
            cumulative_weights,
            total_weight,
            service: service.to_string(),
            host: host.to_string(),
            id_prefix: format!("{agent_id}:{run_id}:"),
            next_sequence: 0,
            message: String::with_capacity(160),
            id: String::with_capacity(64),
            request_id: String::with_capacity(16),
            timestamp: TimestampCache::default(),
        }
    }

    /// Appends the JSON of the next event to `out` and returns its level.
    pub fn write_next(&mut self, out: &mut Vec<u8>) -> Level {
        use std::fmt::Write;
        let draw = self.rng.random_range(0..self.total_weight);
        let level = self
            .cumulative_weights
            .iter()
            .find(|(upper, _)| draw < *upper)
            .map(|(_, level)| *level)
            .expect("draw is below the total weight, so some cumulative weight exceeds it");
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.id.clear();
        self.id.push_str(&self.id_prefix);
        write!(self.id, "{sequence}").expect("writing to a String cannot fail");
        self.request_id.clear();
        write!(self.request_id, "{:016x}", self.rng.random::<u64>()).expect("writing to a String cannot fail");
        self.write_message(level);
        let region = REGIONS[self.rng.random_range(0..REGIONS.len())];
        let event = EventRef {
            id: &self.id,
            timestamp: self.timestamp.now(),
            level: level.as_str(),
            service: &self.service,
            host: &self.host,
            message: &self.message,
            extra: ExtraRef {
                region,
                request_id: &self.request_id,
            },
        };
        serde_json::to_writer(out, &event).expect("serialising into memory cannot fail");
        level
    }

    fn write_message(&mut self, level: Level) {
        use std::fmt::Write;
        let rng = &mut self.rng;
        let route = ROUTES[rng.random_range(0..ROUTES.len())];
        let number = rng.random_range(1000..99_999);
        let millis = rng.random_range(1..2_000);
        self.message.clear();
        let written = match level {
            Level::Trace | Level::Debug => write!(
                self.message,
                "cache lookup for {route}/{number}: hit={} in {millis}us",
                number % 2 == 0
            ),
            Level::Info | Level::Notice => write!(
                self.message,
                "GET {route}/{number} 200 {millis}ms user=u{} bytes={}",
                number % 977,
                number * 3
            ),
            Level::Warning => write!(
                self.message,
                "slow request GET {route}/{number} took {millis}ms (threshold 500ms)"
            ),
            Level::Error => write!(
                self.message,
                "upstream payments returned 502 for order {number}, retry {}/3",
                millis % 3 + 1
            ),
            Level::Critical | Level::Alert | Level::Emergency => write!(
                self.message,
                "database pool exhausted: 100/100 connections busy, {} requests waiting, {route} failing",
                number % 500
            ),
        };
        written.expect("writing to a String cannot fail");
    }
}

/// Formats the date and time once per second and only the microseconds per event:
/// `2026-11-27T10:00:00.123456Z`. Microseconds let the benchmark measure latency.
#[derive(Default)]
struct TimestampCache {
    second: i64,
    text: String,
}

impl TimestampCache {
    fn now(&mut self) -> &str {
        let now = chrono::Utc::now();
        let second = now.timestamp();
        if second != self.second || self.text.is_empty() {
            self.second = second;
            self.text = now.format("%Y-%m-%dT%H:%M:%S.000000Z").to_string();
        }
        let micros = now.timestamp_subsec_micros().min(999_999);
        // Overwrite the six digits before the final 'Z' in place.
        let digits_start = self.text.len() - 7;
        let mut digits = [b'0'; 6];
        let mut rest = micros;
        for digit in digits.iter_mut().rev() {
            *digit = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        self.text
            .replace_range(digits_start..digits_start + 6, std::str::from_utf8(&digits).expect("ASCII digits"));
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::LogEvent;

    fn generator(seed: u64) -> Generator {
        let mix = LevelMix::parse(LevelMix::DEFAULT).unwrap();
        Generator::new(seed, &mix, "checkout", "host-1", "agent-1", "r1")
    }

    #[test]
    fn events_decode_as_log_events_with_sequential_ids() {
        let mut events = generator(7);
        for sequence in 0..100 {
            let mut out = Vec::new();
            let level = events.write_next(&mut out);
            let event: LogEvent = serde_json::from_slice(&out).unwrap();
            assert_eq!(event.id, format!("agent-1:r1:{sequence}"));
            assert_eq!(event.level, level);
            assert!((120..320).contains(&out.len()), "event of {} bytes", out.len());
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let mut cache = TimestampCache::default();
        for _ in 0..1000 {
            let text = cache.now().to_string();
            assert_eq!(text.len(), 27, "{text}");
            let parsed = chrono::DateTime::parse_from_rfc3339(&text).unwrap();
            let age = chrono::Utc::now().signed_duration_since(parsed);
            assert!(age >= chrono::TimeDelta::zero() && age < chrono::TimeDelta::seconds(5), "{text}");
        }
    }

    #[test]
    fn same_seed_gives_same_levels_and_messages() {
        let (mut first, mut second) = (generator(42), generator(42));
        for _ in 0..50 {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            assert_eq!(first.write_next(&mut a), second.write_next(&mut b));
            let (a, b): (LogEvent, LogEvent) =
                (serde_json::from_slice(&a).unwrap(), serde_json::from_slice(&b).unwrap());
            assert_eq!(a.message, b.message);
        }
    }

    #[test]
    fn level_mix_is_respected() {
        let mix = LevelMix::parse("INFO=1,CRITICAL=1").unwrap();
        let mut events = Generator::new(1, &mix, "s", "h", "a", "r");
        let critical = (0..10_000)
            .filter(|_| events.write_next(&mut Vec::new()) == Level::Critical)
            .count();
        assert!((4_500..5_500).contains(&critical), "{critical} critical of 10000");
    }
}
