//! When to try a message again: exponential backoff with full jitter, 1 s doubling up to
//! 5 min, a receiver's `Retry-After` taking precedence, and which HTTP answers are worth
//! retrying at all.

use std::time::{Duration, SystemTime};

/// First backoff ceiling; doubled per failed attempt.
pub const FIRST_DELAY: Duration = Duration::from_secs(1);
/// Longest wait between two attempts, `Retry-After` included: a receiver asking for an hour
/// is tried again after 5 min (the request is idempotent, so an early retry costs a refusal).
pub const MAX_DELAY: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per message, the first included, before its alerts are dead-lettered.
    pub max_attempts: u32,
}

impl RetryPolicy {
    /// Wait before attempt `failed_attempts + 1`. Full jitter (a uniform draw between 0 and
    /// the ceiling `FIRST_DELAY * 2^(failed_attempts - 1)`, capped at [`MAX_DELAY`]) spreads
    /// the retries of many police after a receiver's outage instead of having them hit it
    /// together. `unit` is a uniform draw from `[0, 1)`.
    pub fn delay(&self, failed_attempts: u32, retry_after: Option<Duration>, unit: f64) -> Duration {
        if let Some(asked) = retry_after {
            return asked.min(MAX_DELAY);
        }
        let exponent = failed_attempts.saturating_sub(1).min(20);
        let ceiling = FIRST_DELAY.saturating_mul(1 << exponent).min(MAX_DELAY);
        ceiling.mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// A uniform draw from `[0, 1)` for the jitter.
pub fn jitter_unit() -> f64 {
    use rand::TryRng;
    let bits = rand::rngs::SysRng.try_next_u64().unwrap_or_else(|_| {
        // No OS entropy: the clock's nanoseconds still spread police apart.
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|elapsed| u64::from(elapsed.subsec_nanos()).wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .unwrap_or(0)
    });
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// `Retry-After`: delay seconds (`120`) or an HTTP date (`Wed, 21 Oct 2026 07:28:00 GMT`),
/// relative to `now`. A date in the past means "now"; anything else is ignored.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// How an HTTP answer is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// 408, 429, 5xx.
    Retry,
    /// Any other answer: retrying cannot help (3xx are not followed: a hook that moved is a
    /// configuration to fix).
    Permanent,
}

pub fn verdict(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        408 | 429 | 500..=599 => Verdict::Retry,
        _ => Verdict::Permanent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_doubles_from_one_second_to_five_minutes() {
        let policy = RetryPolicy { max_attempts: 8 };
        let almost_one = 0.999_999;
        assert!(policy.delay(1, None, almost_one) <= Duration::from_secs(1));
        assert!(policy.delay(1, None, almost_one) > Duration::from_millis(999));
        assert!(policy.delay(3, None, almost_one) > Duration::from_millis(3999));
        assert!(policy.delay(3, None, almost_one) <= Duration::from_secs(4));
        assert_eq!(policy.delay(30, None, 1.0), MAX_DELAY);
        assert_eq!(
            policy.delay(2, None, 0.0),
            Duration::ZERO,
            "full jitter goes down to zero"
        );
    }

    #[test]
    fn retry_after_wins_up_to_the_cap() {
        let policy = RetryPolicy { max_attempts: 8 };
        assert_eq!(
            policy.delay(1, Some(Duration::from_secs(7)), 0.0),
            Duration::from_secs(7)
        );
        assert_eq!(policy.delay(1, Some(Duration::from_secs(3600)), 0.0), MAX_DELAY);
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2026 07:28:00 GMT").unwrap();
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2026 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2026 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn only_timeouts_throttling_and_server_errors_are_retried() {
        assert_eq!(verdict(200), Verdict::Delivered);
        assert_eq!(verdict(204), Verdict::Delivered);
        for status in [408, 429, 500, 502, 503, 504] {
            assert_eq!(verdict(status), Verdict::Retry, "{status}");
        }
        for status in [301, 400, 401, 403, 404, 410, 413, 422] {
            assert_eq!(verdict(status), Verdict::Permanent, "{status}");
        }
    }

    #[test]
    fn jitter_draws_stay_in_the_unit_interval() {
        for _ in 0..1000 {
            let unit = jitter_unit();
            assert!((0.0..1.0).contains(&unit), "{unit}");
        }
    }
}
