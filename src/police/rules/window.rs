//! Event time and tumbling windows.
//!
//! Invariants (`docs/ALERTING.md`, "Time"):
//! - windows are aligned to multiples of their length since the Unix epoch:
//!   `window_start = floor(ts_ms / window_ms) * window_ms`, floor for negative times too
//! - an event's time is its RFC 3339 `timestamp`; an unparsable one, or one more than
//!   [`MAX_FUTURE_MS`] ahead of the wall clock of the evaluation, uses that wall clock (one
//!   event stamped 2099 would otherwise make every later event late, for good)

/// Start of the window of length `window_ms` holding `ts_ms`.
pub fn window_start(ts_ms: i64, window_ms: u64) -> i64 {
    debug_assert!(window_ms > 0, "windows are at least 1 ms long (checked at load)");
    let window = i64::try_from(window_ms).unwrap_or(i64::MAX);
    ts_ms.div_euclid(window) * window
}

/// How far ahead of the wall clock an event time is believed: clocks of senders drift by
/// seconds, not by minutes.
pub const MAX_FUTURE_MS: i64 = 5 * 60 * 1000;

/// The event time of `timestamp` in ms since the epoch, or `now_ms` if it is not RFC 3339
/// or lies more than [`MAX_FUTURE_MS`] ahead of `now_ms`.
pub fn event_ms(timestamp: &str, now_ms: i64) -> i64 {
    parse_ms(timestamp)
        .filter(|ms| *ms <= now_ms.saturating_add(MAX_FUTURE_MS))
        .unwrap_or(now_ms)
}

/// `timestamp` (RFC 3339) in ms since the epoch, as written.
pub fn parse_ms(timestamp: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(timestamp)
        .map(|time| time.timestamp_millis())
        .ok()
}

/// RFC 3339 UTC text of `ms`, with milliseconds (`2026-12-01T12:00:00.000Z`).
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Wall clock in ms since the epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_floor_also_before_the_epoch() {
        assert_eq!(window_start(0, 60_000), 0);
        assert_eq!(window_start(59_999, 60_000), 0);
        assert_eq!(window_start(60_000, 60_000), 60_000);
        assert_eq!(window_start(-1, 60_000), -60_000);
        assert_eq!(window_start(-60_000, 60_000), -60_000);
        assert_eq!(window_start(-60_001, 60_000), -120_000);
    }

    #[test]
    fn event_time_reads_rfc3339_and_falls_back_to_now() {
        let now = parse_ms("2026-12-01T12:00:00Z").unwrap();
        assert_eq!(event_ms("1970-01-01T00:01:00Z", now), 60_000);
        assert_eq!(event_ms("1970-01-01T01:01:00+01:00", now), 60_000);
        assert_eq!(event_ms("2026-12-01T12:00:00.250Z", now) % 1000, 250);
        assert_eq!(event_ms("2026-12-01T12:04:59Z", now), now + 299_000);
        assert_eq!(event_ms("2099-01-01T00:00:00Z", now), now, "far future: the wall clock");
        assert_eq!(event_ms("yesterday", 5), 5);
        assert_eq!(rfc3339(60_000), "1970-01-01T00:01:00.000Z");
    }
}
