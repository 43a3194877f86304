//! A sink's rate limit, shared by every police: a counter per sink and period in Redis
//! ([`crate::broker::outbox::take_permit`]). A message needs one permit per attempt; a
//! worker refused one waits for the next period, and meanwhile the records behind it fold
//! into digests ([`super::digest`]).

use std::time::{Duration, SystemTime};

use redis::RedisError;

use super::config::RateLimit;
use crate::broker::{Connection, keys::Keys, outbox};

#[derive(Debug, Clone)]
pub struct RateLimiter {
    pub messages: u64,
    pub period: Duration,
}

/// Whether a message may go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    Granted,
    /// The period's messages are used up: the next period starts this much later.
    Denied {
        next_period_in: Duration,
    },
}

impl RateLimiter {
    pub fn new(limit: &RateLimit) -> RateLimiter {
        RateLimiter {
            messages: limit.messages,
            period: limit.per.0.max(Duration::from_millis(1)),
        }
    }

    pub async fn take(&self, connection: &mut Connection, keys: &Keys, sink: &str) -> Result<Permit, RedisError> {
        let now_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let period_ms = self.period.as_millis().max(1) as u64;
        let period_index = now_ms / period_ms;
        // Two periods: long enough to outlive every police's view of this period.
        let counter_ttl_ms = period_ms.saturating_mul(2);
        if outbox::take_permit(connection, keys, sink, period_index, self.messages, counter_ttl_ms).await? {
            return Ok(Permit::Granted);
        }
        let next_period_in = Duration::from_millis(period_ms - now_ms % period_ms);
        Ok(Permit::Denied { next_period_in })
    }
}
