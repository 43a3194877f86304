//! The watchdog behind `/healthz`: each main loop holds a [`Beat`] and ticks it once per
//! turn; a loop that neither ticked nor said it waits for input for [`STALE_AFTER`] is
//! stale. Also the readiness flags that only the process knows (rules loaded).
//!
//! Beats live in a process-wide list, like the metric recorder, so that a loop deep in the
//! agent or the police can register without threading a handle through every layer.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A loop that has not ticked for this long makes `/healthz` answer 500.
pub const STALE_AFTER: Duration = Duration::from_secs(30);

/// Liveness of one loop.
#[derive(Debug)]
pub struct Beat {
    name: &'static str,
    /// Milliseconds since [`epoch`] at the last tick.
    last_tick_ms: AtomicU64,
    /// Set while the loop waits for input (an idle source is not a stuck loop).
    waiting_for_input: AtomicBool,
}

impl Beat {
    /// The loop made progress.
    pub fn tick(&self) {
        self.last_tick_ms.store(now_ms(), Ordering::Relaxed);
        self.waiting_for_input.store(false, Ordering::Relaxed);
    }

    /// The loop waits for input; the next [`Self::tick`] ends the wait.
    pub fn wait_for_input(&self) {
        self.last_tick_ms.store(now_ms(), Ordering::Relaxed);
        self.waiting_for_input.store(true, Ordering::Relaxed);
    }

    /// How long the loop has been silent, `None` while it waits for input.
    fn silent_for(&self, now_ms: u64) -> Option<Duration> {
        if self.waiting_for_input.load(Ordering::Relaxed) {
            return None;
        }
        let silent_ms = now_ms.saturating_sub(self.last_tick_ms.load(Ordering::Relaxed));
        Some(Duration::from_millis(silent_ms))
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

fn beats() -> &'static Mutex<Vec<Arc<Beat>>> {
    static BEATS: OnceLock<Mutex<Vec<Arc<Beat>>>> = OnceLock::new();
    BEATS.get_or_init(Default::default)
}

/// Registers a loop, ticked now. A loop that ends for good should [`retire`] its beat.
pub fn beat(name: &'static str) -> Arc<Beat> {
    let beat = Arc::new(Beat {
        name,
        last_tick_ms: AtomicU64::new(now_ms()),
        waiting_for_input: AtomicBool::new(false),
    });
    // The lock is never held across an await or a panic-prone call.
    beats().lock().expect("beat list lock").push(beat.clone());
    beat
}

/// Removes a loop that ended (a police session that reconnects registers a new one).
pub fn retire(beat: &Arc<Beat>) {
    beats()
        .lock()
        .expect("beat list lock")
        .retain(|registered| !Arc::ptr_eq(registered, beat));
}

/// The stale loops, with how long each has been silent.
pub fn stale_loops() -> Vec<(&'static str, Duration)> {
    stale_loops_after(STALE_AFTER)
}

fn stale_loops_after(limit: Duration) -> Vec<(&'static str, Duration)> {
    let now = now_ms();
    beats()
        .lock()
        .expect("beat list lock")
        .iter()
        .filter_map(|beat| {
            beat.silent_for(now)
                .filter(|silent| *silent > limit)
                .map(|silent| (beat.name, silent))
        })
        .collect()
}

static RULES_LOADED: AtomicBool = AtomicBool::new(false);

/// The police's rules are compiled and in force (a readiness check).
pub fn set_rules_loaded() {
    RULES_LOADED.store(true, Ordering::Relaxed);
}

pub fn rules_loaded() -> bool {
    RULES_LOADED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_loop_is_stale_and_a_waiting_one_is_not() {
        let silent = beat("silent-test-loop");
        let waiting = beat("waiting-test-loop");
        waiting.wait_for_input();
        std::thread::sleep(Duration::from_millis(20));
        let stale: Vec<_> = stale_loops_after(Duration::from_millis(5))
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert!(stale.contains(&"silent-test-loop"), "{stale:?}");
        assert!(!stale.contains(&"waiting-test-loop"), "{stale:?}");
        silent.tick();
        assert!(
            !stale_loops_after(Duration::from_secs(10))
                .iter()
                .any(|(name, _)| *name == "silent-test-loop")
        );
        retire(&silent);
        retire(&waiting);
    }
}
