//! Synthetic logs: realistic events of about 200 bytes, reproducible from a seed.

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use crate::config::LevelMix;
use crate::event::Level;

const REGIONS: [&str; 4] = ["eu-west-1", "us-east-1", "ap-south-1", "sa-east-1"];
const ROUTES: [&str; 5] = [
    "/api/v1/orders",
    "/api/v1/cart",
    "/api/v1/users",
    "/api/v1/payments",
    "/healthz",
];

/// Writes events as JSON by hand: this is the agent's hot path, and serde_json spent most
/// of its time scanning for characters to escape. Only the user-given strings (agent id,
/// service, host) can need escaping; they are escaped once, here, by serde_json. Everything
/// else written per event is ASCII without quotes, backslashes or control characters.
pub struct Generator {
    rng: SmallRng,
    /// Cumulative weights, for picking a level with one random draw.
    cumulative_weights: Vec<(u32, Level)>,
    total_weight: u32,
    /// `{"id":"<agent-id>:<run>:` (escaped); the sequence number completes the id.
    id_prefix: Vec<u8>,
    /// `","service":<service>,"host":<host>,"message":"` (escaped).
    source_fields: Vec<u8>,
    next_sequence: u64,
    message: String,
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
        let quoted = |text: &str| serde_json::to_string(text).expect("a string serialises");
        let quoted_id_prefix = quoted(&format!("{agent_id}:{run_id}:"));
        let mut id_prefix = b"{\"id\":".to_vec();
        // Drop the closing quote: the sequence number and the quote follow per event.
        id_prefix.extend_from_slice(&quoted_id_prefix.as_bytes()[..quoted_id_prefix.len() - 1]);
        let source_fields = format!(
            ",\"service\":{},\"host\":{},\"message\":\"",
            quoted(service),
            quoted(host)
        )
        .into_bytes();
        Generator {
            rng: SmallRng::seed_from_u64(seed),
            cumulative_weights,
            total_weight,
            id_prefix,
            source_fields,
            next_sequence: 0,
            message: String::with_capacity(160),
            timestamp: TimestampCache::default(),
        }
    }

    /// Appends the JSON of the next event to `out` and returns its level.
    pub fn write_next(&mut self, out: &mut Vec<u8>) -> Level {
        let draw = self.rng.random_range(0..self.total_weight);
        let level = self
            .cumulative_weights
            .iter()
            .find(|(upper, _)| draw < *upper)
            .map(|(_, level)| *level)
            .expect("draw is below the total weight, so some cumulative weight exceeds it");
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.write_message(level);
        let region = REGIONS[self.rng.random_range(0..REGIONS.len())];
        let request_id: u64 = self.rng.random();
        let mut integer = itoa::Buffer::new();

        out.extend_from_slice(&self.id_prefix);
        out.extend_from_slice(integer.format(sequence).as_bytes());
        out.extend_from_slice(b"\",\"timestamp\":\"");
        out.extend_from_slice(self.timestamp.now().as_bytes());
        out.extend_from_slice(b"\",\"level\":\"");
        out.extend_from_slice(level.as_str().as_bytes());
        out.push(b'"');
        out.extend_from_slice(&self.source_fields);
        out.extend_from_slice(self.message.as_bytes());
        out.extend_from_slice(b"\",\"extra\":{\"region\":\"");
        out.extend_from_slice(region.as_bytes());
        out.extend_from_slice(b"\",\"request_id\":\"");
        write_hex(out, request_id);
        out.extend_from_slice(b"\"}}");
        level
    }

    fn write_message(&mut self, level: Level) {
        let rng = &mut self.rng;
        let route = ROUTES[rng.random_range(0..ROUTES.len())];
        let number: u32 = rng.random_range(1000..99_999);
        let millis: u32 = rng.random_range(1..2_000);
        let mut integer = itoa::Buffer::new();
        let message = &mut self.message;
        message.clear();
        let mut push_number = |message: &mut String, value: u32| message.push_str(integer.format(value));
        match level {
            Level::Unknown | Level::Trace | Level::Debug => {
                message.push_str("cache lookup for ");
                message.push_str(route);
                message.push('/');
                push_number(message, number);
                message.push_str(if number.is_multiple_of(2) {
                    ": hit in "
                } else {
                    ": miss in "
                });
                push_number(message, millis);
                message.push_str("us");
            }
            Level::Info | Level::Notice => {
                message.push_str("GET ");
                message.push_str(route);
                message.push('/');
                push_number(message, number);
                message.push_str(" 200 ");
                push_number(message, millis);
                message.push_str("ms user=u");
                push_number(message, number % 977);
                message.push_str(" bytes=");
                push_number(message, number * 3);
            }
            Level::Warning => {
                message.push_str("slow request GET ");
                message.push_str(route);
                message.push('/');
                push_number(message, number);
                message.push_str(" took ");
                push_number(message, millis);
                message.push_str("ms (threshold 500ms)");
            }
            Level::Error => {
                message.push_str("upstream payments returned 502 for order ");
                push_number(message, number);
                message.push_str(", retry ");
                push_number(message, millis % 3 + 1);
                message.push_str("/3");
            }
            Level::Critical | Level::Alert | Level::Emergency => {
                message.push_str("database pool exhausted: 100/100 connections busy, ");
                push_number(message, number % 500);
                message.push_str(" requests waiting, ");
                message.push_str(route);
                message.push_str(" failing");
            }
        }
    }
}

/// 16 lower-case hex digits.
fn write_hex(out: &mut Vec<u8>, value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..16).rev() {
        out.push(DIGITS[((value >> (shift * 4)) & 0xf) as usize]);
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
        self.text.replace_range(
            digits_start..digits_start + 6,
            std::str::from_utf8(&digits).expect("ASCII digits"),
        );
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::LogEvent;

    fn generator(seed: u64) -> Generator {
        let mix = LevelMix::parse("TRACE=1,DEBUG=1,INFO=1,NOTICE=1,WARNING=1,ERROR=1,CRITICAL=1,ALERT=1,EMERGENCY=1")
            .unwrap();
        Generator::new(seed, &mix, "checkout", "host-1", "agent-1", "r1")
    }

    #[test]
    fn events_decode_as_log_events_with_sequential_ids() {
        let mut events = generator(7);
        for sequence in 0..2000 {
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
            assert!(
                age >= chrono::TimeDelta::zero() && age < chrono::TimeDelta::seconds(5),
                "{text}"
            );
        }
    }

    #[test]
    fn user_given_strings_are_escaped() {
        let mix = LevelMix::parse("INFO=1").unwrap();
        let mut events = Generator::new(1, &mix, "say \"hi\"\\", "host\n1", "agent\t1", "r");
        let mut out = Vec::new();
        events.write_next(&mut out);
        let event: LogEvent = serde_json::from_slice(&out).unwrap();
        assert_eq!(event.service, "say \"hi\"\\");
        assert_eq!(event.host, "host\n1");
        assert_eq!(event.id, "agent\t1:r:0");
        assert_eq!(event.extra["request_id"].len(), 16);
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
