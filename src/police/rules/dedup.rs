//! Exactly once per event across duplicate entries: where an event of our agents has its
//! bit in the dedup bitmaps of the rule state.
//!
//! An agent that re-sends a batch after an ambiguous failure (the reply lost) writes a
//! second stream entry with the same events. The settle fence stops a *redelivered* entry
//! from being counted twice, not a *duplicate* one, so every event that feeds a stateful
//! rule sets its bit in SETTLE (`BITFIELD … SET u1`, which returns the old bit): an event
//! whose bit was set already takes its matches off the item's updates.
//!
//! Invariants:
//! - only our agents' ids `<agent-id>:<run>:<seq>` (`seq` a decimal `u64`) have a bit; they
//!   name one event for good. Other shippers' ids (`<entry-id>#<index>`) are stable per
//!   entry only, and a redelivered entry is already fenced: nothing more to do for them
//! - one bitmap per (agent run, chunk of [`CHUNK_EVENTS`] sequence numbers): 1 bit per
//!   event, at most `CHUNK_EVENTS / 8` bytes per key, however large a forged `seq` is; the
//!   key names the run by a hash, so a huge agent id never makes a huge key
//! - the bitmaps expire after the longest window (three, as the counters) plus lateness or
//!   cooldown, plus [`crate::broker::scripts::SETTLE`]'s margin: a duplicate arriving later
//!   falls in a window that is late by then

use super::group;

/// Sequence numbers per bitmap: 2^16 bits, 8 KiB at most per key. A larger chunk costs
/// the same per honest event but lets one forged id allocate more.
pub const CHUNK_BITS: u32 = 16;
pub const CHUNK_EVENTS: u64 = 1 << CHUNK_BITS;

/// Where an event's bit lives: its bitmap (the run's hash and the chunk, named by
/// [`bitmap_name`]) and the bit. Plain numbers: no allocation per event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Slot {
    /// FNV-1a 64 over `<agent-id>:<run>`.
    pub run: u64,
    pub chunk: u64,
    pub bit: u32,
}

/// The bitmap's name under `<rules prefix>dedup:`: `<16 hex digits of the run hash>:<chunk>`.
pub fn bitmap_name(run: u64, chunk: u64) -> String {
    format!("{run:016x}:{chunk}")
}

/// The slot of an event id of our agents, `None` for any other id.
pub fn slot_of(event_id: &str) -> Option<Slot> {
    let (run, sequence) = event_id.rsplit_once(':')?;
    let (agent, run_id) = run.rsplit_once(':')?;
    if agent.is_empty()
        || run_id.is_empty()
        || sequence.is_empty()
        || !sequence.bytes().all(|byte| byte.is_ascii_digit())
    {
        return None;
    }
    let sequence: u64 = sequence.parse().ok()?;
    Some(Slot {
        run: group::fnv1a(run.as_bytes()),
        chunk: sequence >> CHUNK_BITS,
        bit: (sequence & (CHUNK_EVENTS - 1)) as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_ids_have_a_slot_and_others_do_not() {
        let first = slot_of("web-1:00ff00ff00ff00ff:5").unwrap();
        assert_eq!(first.bit, 5);
        assert_eq!(first.chunk, 0);
        let later = slot_of("web-1:00ff00ff00ff00ff:65541").unwrap();
        assert_eq!(later.bit, 5);
        assert_eq!(later.chunk, 1);
        assert_eq!(first.run, later.run);
        assert_eq!(bitmap_name(later.run, later.chunk), format!("{:016x}:1", later.run));
        // another run of the same agent: another bitmap
        assert_ne!(slot_of("web-1:00ff00ff00ff00fe:5").unwrap().run, first.run);
        // an agent id with colons keeps them: only the last two parts are run and sequence
        assert!(slot_of("a:b:c:7").is_some());
        for foreign in [
            "1700000000000-0#3",
            "",
            "x:y:",
            ":y:1",
            "x::1",
            "x:y:-1",
            "x:y:1e3",
            "x:y:99999999999999999999",
        ] {
            assert_eq!(slot_of(foreign), None, "{foreign:?}");
        }
        // a forged huge sequence still lands within one chunk's bits
        assert!(slot_of(&format!("x:y:{}", u64::MAX)).unwrap().bit < CHUNK_EVENTS as u32);
    }
}
