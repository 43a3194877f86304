//! The lease holder's timed work: flatline and downward spikes at the close of a window,
//! resolves of firing episodes, pruning of old resolved ones.
//!
//! Invariants:
//! - every police runs a clock task, but only the holder of the lease
//!   (`Keys::rules_lease`, owner = consumer name + run id) does clock work; a dead holder's
//!   lease expires within [`crate::broker::lease::LEASE_TTL`] and another police, trying every
//!   [`RENEW_INTERVAL`], takes over
//! - all clock writes are idempotent: records behind guarded ids, each window's close done
//!   once (`clock:<rule>`), so a holder paused past its lease, or a takeover mid-tick,
//!   never doubles an alert
//! - the clock never delays the read/settle loop: its own task and its own connection,
//!   and each step is one short script; on a clean stop it releases the lease
//! - windows close on the wall clock: `now >= W + window + max_lateness`; each tick does
//!   every window closed since the last one done (`clock:<rule>`), oldest first, at most
//!   [`MAX_WINDOWS_PER_TICK`]; the very first tick of a rule only the newest closed one
//! - a window closes only once its input is settled (the gate of [`scripts::CLOCK_CLOSE`],
//!   on Redis's clock and stream ids): a backlog, or entries held by a paused or dead
//!   police, postpone the close (and every later window of the rule) to a later tick
//! - every clock script checks inside itself that this process holds the lease: a holder
//!   paused past its lease (SIGSTOP, a stalled VM) wakes up fenced and writes nothing
//! - each tick's work is proportional to what is due, not to the state kept: resolves read
//!   `resolve_at` up to now, forgetting reads `seen:<rule>` up to now − `forget_after`
//! - a reload that removes a rule, or changes its type, window or `group_by`, closes the
//!   old rule's state (its firing episodes resolve, with the reason) in the lease holder

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::RedisError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use tokio::sync::watch;

use super::rules::plan::{GroupKey, StatefulKind, StatefulRule};
use super::rules::{RuleSet, window};
use super::settle::{draft_body, rule_args, rules_args};
use crate::broker::keys::Keys;
use crate::broker::lease::{Lease, RENEW_INTERVAL};
use crate::broker::{self, Connection, list, scripts};
use crate::options::Transport;

/// How often the holder looks for windows to close and episodes to resolve: a flatline
/// fires within about a second of its window's close.
pub const TICK: Duration = Duration::from_secs(1);
/// An `any` episode resolves after this long (wall clock) without a new match.
pub const ANY_QUIET: Duration = Duration::from_secs(5 * 60);
/// Resolved episodes are kept this long for re-sends (Alertmanager), then dropped.
pub const RESOLVED_KEEP: Duration = Duration::from_secs(15 * 60);

/// Windows closed per rule and tick at most: a clock that stood still longer does only the
/// newest ones (an older silent window would fire the same episode anyway).
pub const MAX_WINDOWS_PER_TICK: i64 = 10_000;

/// What one tick did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ClockTotals {
    pub records_written: u64,
    pub duplicates: u64,
    /// Windows due by the wall clock whose close waits for their input to be settled.
    pub postponed: u64,
    /// Windows closed so late that counts of some groups had expired: those groups passed over.
    pub expired: u64,
    /// A script found the lease held by another process: this one stops its clock work
    /// until it takes the lease again.
    pub fenced: bool,
}

pub struct Clock {
    pub keys: Keys,
    pub redis_url: String,
    /// What the police reads: the gate of a window's close looks at its pending input.
    pub source: Transport,
    pub lease: Lease,
    /// The rules in force (replaced on reload); read at each tick, never held across an
    /// await.
    pub rules: watch::Receiver<Arc<RuleSet>>,
    pub alert_dedup_ttl_s: u64,
}

impl Clock {
    /// Owner name of this process's lease: the consumer name and a random run id, so a
    /// restarted police under the same name is a new owner.
    pub fn owner(consumer: &str) -> String {
        use rand::TryRng;
        let run_id = rand::rngs::SysRng.try_next_u64().unwrap_or_else(|_| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64
                ^ u64::from(std::process::id())
        });
        format!("{consumer}/{run_id:016x}")
    }

    /// Ticks until `shutdown`; Redis failures are logged and retried on the next tick with
    /// a new connection (the read loop reports outages; the clock only waits them out).
    pub async fn run(self, shutdown: CancellationToken) {
        let mut connection: Option<Connection> = None;
        let mut holding = false;
        let mut next_renew = Instant::now();
        let mut next_tick = Instant::now();
        // The rule set the last tick ran under: a reload retires the rules it dropped.
        let mut previous_rules: Arc<RuleSet> = self.rules.borrow().clone();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(next_tick) => {}
            }
            next_tick = Instant::now() + TICK;
            let open = match connection.as_mut() {
                Some(open) => open,
                None => match broker::connect(&self.redis_url).await {
                    Ok(opened) => connection.insert(opened),
                    Err(error) => {
                        warn!(error = %error, "clock cannot reach redis");
                        holding = false;
                        continue;
                    }
                },
            };
            let current_rules: Arc<RuleSet> = self.rules.borrow().clone();
            if !Arc::ptr_eq(&current_rules, &previous_rules) {
                // Only the holder closes, once; a police without the lease leaves it to the
                // holder's own reload (or to the abandoned-episode resolve a day later).
                if holding && let Err(error) = self.retire(open, &previous_rules, &current_rules).await {
                    warn!(error = %error, "cannot close the state of retired rules; their episodes resolve later");
                }
                previous_rules = current_rules;
            }
            let has_state = !self.rules.borrow().stateful_rules().is_empty();
            if !has_state {
                // Nothing timed to do: leave the lease to a police that has work.
                if holding && self.lease.release(open).await.is_ok() {
                    holding = false;
                }
                continue;
            }
            if Instant::now() >= next_renew || !holding {
                match self.lease.acquire_or_renew(open).await {
                    Ok(held) => {
                        if held != holding {
                            info!(owner = %self.lease.owner, held, "rule clock lease");
                        }
                        holding = held;
                        next_renew = Instant::now() + RENEW_INTERVAL;
                    }
                    Err(error) => {
                        warn!(error = %error, "clock lease renewal failed");
                        holding = false;
                        connection = None;
                        continue;
                    }
                }
            }
            if !holding {
                continue;
            }
            match self.tick(open, wall_clock_ms()).await {
                Ok(totals) if totals.fenced => {
                    info!(owner = %self.lease.owner, "rule clock lease held by another police; clock work stopped");
                    holding = false;
                }
                Ok(totals) if totals.postponed > 0 => {
                    debug!(
                        windows = totals.postponed,
                        "window close postponed: its input is not settled yet"
                    );
                }
                Ok(_) => {}
                Err(error) => {
                    warn!(error = %error, "clock work failed; retried next tick");
                    connection = None;
                }
            }
        }
        if let (true, Some(open)) = (holding, connection.as_mut()) {
            match self.lease.release(open).await {
                Ok(()) => info!(owner = %self.lease.owner, "rule clock lease released"),
                Err(error) => warn!(error = %error, "cannot release the clock lease; it expires within its life"),
            }
        }
    }

    /// One round of clock work at wall clock `now_ms`: every window that closed is
    /// handled, then due episodes resolved.
    pub async fn tick(&self, connection: &mut Connection, now_ms: i64) -> Result<ClockTotals, RedisError> {
        let rule_set: Arc<RuleSet> = self.rules.borrow().clone();
        let stateful = rule_set.stateful_rules();
        let mut totals = ClockTotals::default();
        for (index, rule) in stateful.iter().enumerate() {
            let closes = match rule.kind {
                StatefulKind::Flatline => true,
                StatefulKind::Spike => rule.spike_down,
                StatefulKind::AnyWithCooldown | StatefulKind::Frequency => false,
            };
            if !closes {
                continue;
            }
            let due = self.windows_to_close(connection, rule, now_ms).await?;
            for (position, window_start) in due.iter().enumerate() {
                let (written, duplicates, status): (u64, u64, String) = self
                    .close_window(connection, &rule_set, rule, index, *window_start, now_ms)
                    .await?;
                totals.records_written += written;
                totals.duplicates += duplicates;
                match status.as_str() {
                    "fenced" => {
                        totals.fenced = true;
                        return Ok(totals);
                    }
                    // windows close in order: the later ones wait as well
                    "postponed" => {
                        totals.postponed += (due.len() - position) as u64;
                        break;
                    }
                    "expired" => {
                        totals.expired += 1;
                        warn!(
                            rule = %rule.name,
                            window_start = %window::rfc3339(*window_start),
                            "window closed after counts of it expired (its input was held that long): those groups passed over"
                        );
                    }
                    _ => {}
                }
            }
        }
        for (index, rule) in stateful.iter().enumerate() {
            let cutoff = now_ms.saturating_sub(rule.forget_after_ms as i64);
            let expected: Vec<&str> = rule_set
                .expected_groups(index)
                .iter()
                .map(|group| group.id.as_str())
                .collect();
            let reason = format!(
                "forgotten: no match for {}",
                humantime::format_duration(Duration::from_millis(rule.forget_after_ms))
            );
            let (written, duplicates, _forgotten, _left) = self
                .forget_groups(connection, rule, &cutoff.to_string(), &reason, false, &expected)
                .await?;
            totals.records_written += written;
            totals.duplicates += duplicates;
        }
        let (written, duplicates, _dropped, status): (u64, u64, u64, String) = {
            let mut invocation = scripts::CLOCK_RESOLVE.prepare_invoke();
            invocation
                .key(&self.keys.alerts)
                .key(&self.lease.key)
                .arg(self.keys.rules_prefix())
                .arg(self.keys.alert_seen_prefix())
                .arg(self.alert_dedup_ttl_s)
                .arg(&self.lease.owner)
                .arg(ANY_QUIET.as_millis() as u64)
                .arg(RESOLVED_KEEP.as_millis() as u64);
            invocation.arg(rules_args(&stateful));
            invocation.invoke_async(connection).await?
        };
        totals.records_written += written;
        totals.duplicates += duplicates;
        totals.fenced = status == "fenced";
        Ok(totals)
    }

    /// One call of [`scripts::FORGET_GROUPS`]: groups of `rule` last matched at or before
    /// `cutoff` forgotten (`close`: every group, then the rule's keys), except `listed` ones
    /// (`close`: the listed ones as well). Returns (records, duplicates, forgotten, left).
    async fn forget_groups(
        &self,
        connection: &mut Connection,
        rule: &StatefulRule,
        cutoff: &str,
        reason: &str,
        close: bool,
        listed: &[&str],
    ) -> Result<(u64, u64, u64, u64), RedisError> {
        let mut invocation = scripts::FORGET_GROUPS.prepare_invoke();
        invocation
            .key(&self.keys.alerts)
            .key(&self.lease.key)
            .arg(self.keys.rules_prefix())
            .arg(self.keys.alert_seen_prefix())
            .arg(self.alert_dedup_ttl_s)
            .arg(&self.lease.owner);
        invocation.arg(&rule_args(rule)[..]);
        invocation
            .arg(cutoff)
            .arg(reason)
            .arg(if close { "close" } else { "keep" })
            .arg(listed);
        invocation.invoke_async(connection).await
    }

    /// Closes the state of the rules of `old` that `new` drops or changes (type, window,
    /// `group_by`): their firing episodes resolve with the reason, their keys go.
    async fn retire(&self, connection: &mut Connection, old: &RuleSet, new: &RuleSet) -> Result<(), RedisError> {
        let old_stateful = old.stateful_rules();
        for (index, reason) in old.retired_by(new) {
            let rule = &old_stateful[index];
            let expected: Vec<&str> = old
                .expected_groups(index)
                .iter()
                .map(|group| group.id.as_str())
                .collect();
            let mut records = 0;
            // 1000 groups per call; bounded so that a peer re-adding groups cannot loop us
            for _ in 0..1_000 {
                let (written, _, _, left) = self
                    .forget_groups(connection, rule, "+inf", reason, true, &expected)
                    .await?;
                records += written;
                if left == 0 {
                    break;
                }
            }
            info!(rule = %rule.name, reason, resolved = records, "rule state closed after a reload");
        }
        Ok(())
    }

    /// Windows of `rule` closed at `now_ms` and not done yet, oldest first.
    async fn windows_to_close(
        &self,
        connection: &mut Connection,
        rule: &StatefulRule,
        now_ms: i64,
    ) -> Result<Vec<i64>, RedisError> {
        let window_ms = rule.window_ms.max(1) as i64;
        // W is closed when W + window + max_lateness <= now.
        let newest_closed = (now_ms - window_ms - rule.max_lateness_ms as i64).div_euclid(window_ms) * window_ms;
        let done: Option<String> = redis::cmd("GET")
            .arg(format!("{}clock:{}", self.keys.rules_prefix(), rule.name))
            .query_async(connection)
            .await
            .unwrap_or(None);
        let done: Option<i64> = done.and_then(|text| text.parse().ok());
        let first = match done {
            Some(done) => (done + window_ms).max(newest_closed - (MAX_WINDOWS_PER_TICK - 1) * window_ms),
            None => newest_closed,
        };
        Ok((0..)
            .map(|step| first + step * window_ms)
            .take_while(|window_start| *window_start <= newest_closed)
            .collect())
    }

    /// The close of window `window_start` of rule `index`, handled once.
    async fn close_window(
        &self,
        connection: &mut Connection,
        rule_set: &RuleSet,
        rule: &StatefulRule,
        index: usize,
        window_start: i64,
        now_ms: i64,
    ) -> Result<(u64, u64, String), RedisError> {
        let prefix = self.keys.rules_prefix();
        // Candidates: flatline, the groups first seen before the window and the expected
        // ones; spike down, every group seen.
        let seen_before = match rule.kind {
            StatefulKind::Flatline => format!("({window_start}"),
            _ => "+inf".to_string(),
        };
        let seen: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(format!("{prefix}groups:{}", rule.name))
            .arg("-inf")
            .arg(seen_before)
            .query_async(connection)
            .await?;
        let mut candidates: Vec<GroupKey> = Vec::with_capacity(seen.len());
        if !seen.is_empty() {
            let values: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(format!("{prefix}groupvals:{}", rule.name))
                .arg(&seen)
                .query_async(connection)
                .await?;
            for (id, values_json) in seen.into_iter().zip(values) {
                candidates.push(GroupKey {
                    id,
                    values_json: values_json.unwrap_or_else(|| "[]".into()),
                });
            }
        }
        if rule.kind == StatefulKind::Flatline {
            for expected in rule_set.expected_groups(index) {
                if !candidates.iter().any(|group| group.id == expected.id) {
                    candidates.push(expected.clone());
                }
            }
        }
        let mut invocation = scripts::CLOCK_CLOSE.prepare_invoke();
        invocation.key(&self.keys.alerts).key(&self.lease.key);
        let mode = match self.source {
            Transport::Stream => {
                invocation.key(&self.keys.stream);
                "stream"
            }
            Transport::List => {
                // The gate, list mode: once the list is empty at a moment after the window's
                // due time, every item that could hold an on-time event of it is settled or
                // in a processing list that exists from then until it is settled, so the
                // scan below finds it and the script checks that none holds an item.
                let due_ms = window_start + rule.window_ms as i64 + rule.max_lateness_ms as i64;
                let ((seconds, micros), queued): ((i64, i64), u64) = redis::pipe()
                    .cmd("TIME")
                    .cmd("LLEN")
                    .arg(&self.keys.list)
                    .query_async(connection)
                    .await?;
                if seconds * 1000 + micros / 1000 < due_ms || queued > 0 {
                    return Ok((0, 0, "postponed".into()));
                }
                invocation.key(&self.keys.list);
                for processing_list in list::matching_keys(connection, &self.keys.processing_list_pattern()).await? {
                    invocation.key(processing_list);
                }
                "list"
            }
        };
        invocation
            .arg(&prefix)
            .arg(self.keys.alert_seen_prefix())
            .arg(self.alert_dedup_ttl_s)
            .arg(&self.lease.owner)
            .arg(mode)
            .arg(&self.keys.group);
        invocation.arg(&rule_args(rule)[..]);
        invocation.arg(window_start);
        for group in &candidates {
            let Some(mut draft) = rule_set.clock_draft(index, group, window_start, now_ms) else {
                continue;
            };
            draft.event = None;
            invocation
                .arg(&group.id)
                .arg(&group.values_json)
                .arg(draft_body(&draft))
                .arg(&draft.first_event_time)
                .arg(&draft.last_event_time);
        }
        invocation.invoke_async(connection).await
    }
}

fn wall_clock_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scripts_resolve_any_episodes_after_any_quiet() {
        assert!(
            scripts::RULE_STATE_SOURCE.contains(&format!("local any_quiet_ms = {}\n", ANY_QUIET.as_millis())),
            "the due time SETTLE writes to resolve_at must use ANY_QUIET"
        );
    }
}
