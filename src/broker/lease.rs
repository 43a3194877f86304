//! A lease in Redis: at most one holder at a time for work that must run once across all
//! police (clock-driven rule work, re-sends). A holder renews it well within its life; a
//! dead holder's lease expires and another process takes it over within one life.
//!
//! A lease is not a lock: a holder paused longer than the life (a stalled VM) may still
//! act once after another took over. Work done under it is therefore idempotent too
//! (guarded alert ids), and the lease only keeps it from being done N times.

use std::time::Duration;

use redis::RedisError;

use super::{Connection, scripts};

/// Life of a lease; holders renew it every [`RENEW_INTERVAL`], so a dead holder is
/// replaced within this long.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// A third of the life: two renewals may fail (a slow Redis) before the lease is lost.
pub const RENEW_INTERVAL: Duration = Duration::from_secs(3);

pub struct Lease {
    pub key: String,
    /// This process's identity, unique per run (the consumer name plus the run id).
    pub owner: String,
}

impl Lease {
    /// Takes the lease if free, renews it if ours; `Ok(true)` when we hold it now.
    pub async fn acquire_or_renew(&self, connection: &mut Connection) -> Result<bool, RedisError> {
        let held: i64 = scripts::LEASE
            .key(&self.key)
            .arg(&self.owner)
            .arg(LEASE_TTL.as_millis() as u64)
            .invoke_async(connection)
            .await?;
        Ok(held == 1)
    }

    /// Gives the lease up if ours (on a clean stop), so another police takes it at once.
    pub async fn release(&self, connection: &mut Connection) -> Result<(), RedisError> {
        let _: i64 = scripts::RELEASE_LEASE
            .key(&self.key)
            .arg(&self.owner)
            .invoke_async(connection)
            .await?;
        Ok(())
    }
}
