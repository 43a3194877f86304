//! Cuts encoded events into stream entries (`pack` events each) and entries into batches
//! (`batch_entries` each, or fewer once the oldest event has waited `linger` or the batch
//! holds `max_bytes` of payload).
//!
//! Invariant: a batch holds at most `batch_entries` entries, [`MAX_BATCH_EVENTS`] events (or
//! `pack`, if larger) and `max_bytes` of payload plus the one event that crossed the limit.

use tokio::time::{Duration, Instant};

use crate::event::Level;

/// One stream entry (or list item): `event_count` events, newline-separated JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub event_count: u32,
    pub payload: Vec<u8>,
}

/// What became of the events a source handed over, told once the batch holding the last
/// of them is settled (every earlier batch is settled before: batches ship in order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// In Redis, or in the disk spool.
    Stored,
    /// Dropped because the spool was full (`when_full = drop_newest`).
    Dropped,
    /// Still undelivered when the agent stopped (Redis unreachable, no spool).
    Unsent,
}

/// Called with the fate of a source's events: acknowledges an HTTP request, moves a file
/// checkpoint.
pub type Receipt = Box<dyn FnOnce(Settled) + Send + Sync>;

/// Entries shipped in one pipeline, and the receipts to settle once they are stored.
#[derive(Default)]
pub struct Batch {
    pub entries: Vec<Entry>,
    pub event_count: u64,
    pub receipts: Vec<Receipt>,
    /// Events of the batch per level ([`Level::index`]), counted once the batch is stored.
    pub events_per_level: [u64; Level::ALL.len()],
}

impl Batch {
    pub fn settle(&mut self, settled: Settled) {
        for receipt in self.receipts.drain(..) {
            receipt(settled);
        }
    }
}

/// Most events in one batch, whatever `pack` is: with `pack` 100 and 256 entries a batch
/// would hold 25,600 events (~6 MB), and the queue several of them. Measured at pack 100:
/// 2,048-event batches shipped as fast as 8,192-event ones (1.4–1.6 M events/s for both)
/// with a third of the peak RSS (24 MB against 69 MB).
pub const MAX_BATCH_EVENTS: usize = 2048;

/// Default of `--batch-max-bytes`. Generated events (~230 bytes) fill 2,048-event batches
/// at ~470 KB, so this never cuts them; it bounds batches of large events (HTTP bodies of
/// up to 10 MB) to a few MB: one spool record, one pipeline, one allocation.
pub const DEFAULT_BATCH_MAX_BYTES: usize = 4 << 20;

pub struct Batcher {
    pack: u32,
    batch_entries: usize,
    /// Payload bytes at which the batch is full.
    max_bytes: usize,
    /// Payload bytes in `entries` and `open_entry`.
    batch_bytes: usize,
    linger: Duration,
    entries: Vec<Entry>,
    open_entry: Entry,
    batch_event_count: u64,
    /// When the oldest event of the batch was added; the batch is due `linger` later.
    oldest_event_at: Option<Instant>,
    receipts: Vec<Receipt>,
    events_per_level: [u64; Level::ALL.len()],
}

impl Batcher {
    pub fn new(pack: usize, batch_entries: usize, max_bytes: usize, linger: Duration) -> Batcher {
        debug_assert!(pack >= 1 && batch_entries >= 1 && max_bytes >= 1);
        let batch_entries = batch_entries.min(MAX_BATCH_EVENTS / pack).max(1);
        Batcher {
            pack: u32::try_from(pack).unwrap_or(u32::MAX),
            batch_entries,
            max_bytes,
            batch_bytes: 0,
            linger,
            entries: Vec::with_capacity(batch_entries),
            open_entry: Entry {
                event_count: 0,
                payload: Vec::new(),
            },
            batch_event_count: 0,
            oldest_event_at: None,
            receipts: Vec::new(),
            events_per_level: [0; Level::ALL.len()],
        }
    }

    /// Adds one event, written by `write_event` into the entry's payload, which returns
    /// the event's level.
    pub fn push(&mut self, write_event: impl FnOnce(&mut Vec<u8>) -> Level) -> Level {
        debug_assert!(!self.is_full(), "push on a full batch");
        if self.oldest_event_at.is_none() {
            self.oldest_event_at = Some(Instant::now());
        }
        if self.open_entry.event_count > 0 {
            self.open_entry.payload.push(b'\n');
        }
        let length_before = self.open_entry.payload.len();
        let level = write_event(&mut self.open_entry.payload);
        self.batch_bytes += self.open_entry.payload.len() - length_before;
        self.events_per_level[level.index()] += 1;
        self.open_entry.event_count += 1;
        self.batch_event_count += 1;
        if self.open_entry.event_count == self.pack {
            self.close_entry();
        }
        level
    }

    fn close_entry(&mut self) {
        let capacity = self.open_entry.payload.len();
        let closed = std::mem::replace(
            &mut self.open_entry,
            Entry {
                event_count: 0,
                payload: Vec::with_capacity(capacity),
            },
        );
        self.entries.push(closed);
    }

    /// Events that still fit before the batch is full.
    pub fn room(&self) -> u64 {
        if self.batch_bytes >= self.max_bytes {
            return 0;
        }
        let free_entries = self.batch_entries.saturating_sub(self.entries.len()) as u64;
        (free_entries * u64::from(self.pack)).saturating_sub(u64::from(self.open_entry.event_count))
    }

    pub fn is_full(&self) -> bool {
        self.entries.len() >= self.batch_entries || self.batch_bytes >= self.max_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.batch_event_count == 0 && self.receipts.is_empty()
    }

    /// Settles `receipt` with the batch being built (events pushed before it are in it).
    pub fn attach(&mut self, receipt: Receipt) {
        self.receipts.push(receipt);
    }

    /// When the batch must be sent even if not full.
    pub fn deadline(&self) -> Option<Instant> {
        self.oldest_event_at.map(|oldest| oldest + self.linger)
    }

    pub fn is_due(&self, now: Instant) -> bool {
        self.is_full() || self.deadline().is_some_and(|deadline| now >= deadline)
    }

    /// Takes everything added so far, closing a partly filled entry.
    pub fn take(&mut self) -> Option<Batch> {
        if self.is_empty() {
            return None;
        }
        if self.open_entry.event_count > 0 {
            self.close_entry();
        }
        self.oldest_event_at = None;
        self.batch_bytes = 0;
        let event_count = std::mem::take(&mut self.batch_event_count);
        let entries = std::mem::replace(&mut self.entries, Vec::with_capacity(self.batch_entries));
        Some(Batch {
            entries,
            event_count,
            receipts: std::mem::take(&mut self.receipts),
            events_per_level: std::mem::replace(&mut self.events_per_level, [0; Level::ALL.len()]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn packs_events_into_entries() {
        let mut batcher = Batcher::new(3, 10, usize::MAX, Duration::from_millis(5));
        for index in 0..7 {
            batcher.push(|out| {
                out.extend_from_slice(format!("e{index}").as_bytes());
                Level::Info
            });
        }
        let batch = batcher.take().unwrap();
        assert_eq!(batch.event_count, 7);
        let payloads: Vec<&[u8]> = batch.entries.iter().map(|entry| entry.payload.as_slice()).collect();
        assert_eq!(payloads, vec![&b"e0\ne1\ne2"[..], b"e3\ne4\ne5", b"e6"]);
        assert!(batcher.take().is_none());
    }

    #[test]
    fn a_batch_is_cut_by_bytes() {
        let mut batcher = Batcher::new(1, 256, 1000, Duration::from_millis(5));
        let mut pushed = 0;
        while batcher.room() > 0 {
            batcher.push(|out| {
                out.extend_from_slice(&[b'x'; 300]);
                Level::Warning
            });
            pushed += 1;
        }
        assert_eq!(pushed, 4, "300-byte events: the fourth crosses 1000 bytes");
        assert!(batcher.is_due(Instant::now()));
        let batch = batcher.take().unwrap();
        assert_eq!(batch.events_per_level[Level::Warning.index()], 4);
        assert_eq!(batcher.room(), 256, "the next batch starts empty");
    }

    #[tokio::test(start_paused = true)]
    async fn partial_batch_is_due_after_linger() {
        let mut batcher = Batcher::new(1, 10, usize::MAX, Duration::from_millis(5));
        assert!(!batcher.is_due(Instant::now()));
        batcher.push(|out| {
            out.push(b'x');
            Level::Info
        });
        assert!(!batcher.is_due(Instant::now()));
        tokio::time::advance(Duration::from_millis(5)).await;
        assert!(batcher.is_due(Instant::now()));
    }

    proptest! {
        #[test]
        fn a_batch_never_exceeds_its_limits(pack in proptest::sample::select(vec![1usize, 2, 7, 19, 100, 5000, 10_000]), batch_entries in 1usize..300, max_bytes in 1usize..50_000, event_bytes in 1usize..3000, events in 1usize..20_000) {
            let mut batcher = Batcher::new(pack, batch_entries, max_bytes, Duration::from_millis(5));
            let mut shipped = 0u64;
            for _ in 0..events {
                if batcher.room() == 0 {
                    let batch = batcher.take().unwrap();
                    prop_assert!(batch.entries.len() <= batch_entries);
                    prop_assert!(batch.event_count as usize <= MAX_BATCH_EVENTS.max(pack));
                    let payload_bytes: usize = batch.entries.iter().map(|entry| entry.payload.len()).sum();
                    // Over the limit by the last event only (and the newlines joining packed events).
                    prop_assert!(payload_bytes < max_bytes + event_bytes + batch.event_count as usize);
                    prop_assert_eq!(batch.events_per_level[Level::Info.index()], batch.event_count);
                    shipped += batch.event_count;
                }
                batcher.push(|out| {
                    out.extend(std::iter::repeat_n(b'e', event_bytes));
                    Level::Info
                });
            }
            let last = batcher.take().unwrap();
            prop_assert!(last.entries.len() <= batch_entries);
            for entry in &last.entries {
                prop_assert!(entry.event_count as usize <= pack);
                prop_assert_eq!(entry.payload.iter().filter(|byte| **byte == b'e').count(), entry.event_count as usize * event_bytes);
            }
            prop_assert_eq!(shipped + last.event_count, events as u64);
        }
    }
}
