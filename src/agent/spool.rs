//! The disk spool: batches the agent accepted but could not ship yet (Redis down or slow,
//! consumers too far behind), kept in append-only segment files and replayed in order.
//!
//! Layout of `spool_dir`:
//! - `segment-<20-digit number>.spool`: records, each `[u32 LE length][u32 LE CRC-32 of the
//!   payload][payload]`; a payload is one batch: per entry `[u32 LE event count][u32 LE
//!   length][bytes]`
//! - `cursor`: `<segment number> <offset>` of the first record not yet replayed
//!
//! Invariants:
//! - a record is written with one `write` call before the batch counts as stored, so a
//!   `kill -9` of the agent loses nothing it reported stored (an OS crash can lose the last
//!   second: segments are synced every second and when closed)
//! - a failed write (a full disk) is undone: the segment is truncated back to the end of
//!   its last whole record, or, if that fails too, closed (the next record opens a new
//!   segment). No good record ever follows a torn one in a segment; the caller keeps the
//!   batch, which does not count as stored
//! - the spool never takes what it cannot read back: a record over [`MAX_RECORD_BYTES`]
//!   (or with a length that does not fit its `u32` field) is refused before anything is
//!   written
//! - a new process never appends to an old segment: a torn record can only be the last one
//!   of a segment written by a process that died
//! - a record whose length or checksum is wrong ends its segment: it is reported, the
//!   segment is renamed `*.corrupt` for inspection, replay goes on with the next segment
//! - the cursor moves only after a record reached Redis: a crash during replay resends
//!   at most the record in flight (at-least-once). In this process the replay position
//!   lives in memory; a cursor file that cannot be written (a full disk) is written again
//!   at the next move or sync, and what was replayed is never read again
//! - every method does blocking file I/O: the shipper calls them off the runtime thread

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use tracing::{error, info};

use super::batcher::{Batch, Entry};
use crate::config::SpoolConfig;

/// Largest record payload written or read back; a longer length read is corruption. Far
/// above a batch (`--batch-max-bytes` is at most 64 MiB, plus one event).
pub const MAX_RECORD_BYTES: u32 = 256 * 1024 * 1024;
const HEADER_BYTES: u64 = 8;

/// A batch read back from the spool.
pub struct Spooled {
    pub entries: Vec<Entry>,
    pub event_count: u64,
}

struct Writer {
    number: u64,
    file: File,
    /// Bytes of whole records in the file: a failed write is truncated back to this.
    written: u64,
    synced: bool,
}

struct Reader {
    number: u64,
    file: BufReader<File>,
    offset: u64,
}

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_max_bytes: u64,
    /// Segment numbers on disk, oldest first, with their sizes.
    segments: VecDeque<(u64, u64)>,
    writer: Option<Writer>,
    reader: Option<Reader>,
    /// Size on disk of the record handed out by [`Spool::peek`] and not yet consumed.
    peeked_size: Option<u64>,
    /// A cursor position not yet saved (its write failed); saved at the next move or sync.
    unsaved_cursor: Option<(u64, u64)>,
    /// Number of the next segment; segment numbers only grow, so the cursor stays valid.
    next_number: u64,
    /// Corrupt segments found since start.
    pub corrupt_segments: u64,
    /// Failed record writes since start (each undone; the batch stayed with the caller).
    pub write_failures: u64,
}

fn segment_name(number: u64) -> String {
    format!("segment-{number:020}.spool")
}

fn segment_number(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_prefix("segment-")?.strip_suffix(".spool")?.parse().ok()
}

impl Spool {
    /// Opens (or creates) the spool directory and finds what earlier runs left there.
    pub fn open(config: &SpoolConfig) -> io::Result<Spool> {
        fs::create_dir_all(&config.dir)?;
        let mut segments = Vec::new();
        for dir_entry in fs::read_dir(&config.dir)? {
            let path = dir_entry?.path();
            if let Some(number) = segment_number(&path) {
                segments.push((number, fs::metadata(&path)?.len()));
            }
        }
        segments.sort_unstable();
        let mut spool = Spool {
            dir: config.dir.clone(),
            max_bytes: config.max_bytes,
            segment_max_bytes: (config.max_bytes / 8).clamp(1 << 20, 64 << 20),
            segments: segments.into(),
            writer: None,
            reader: None,
            peeked_size: None,
            unsaved_cursor: None,
            next_number: 0,
            corrupt_segments: 0,
            write_failures: 0,
        };
        let (cursor_segment, cursor_offset) = spool.read_cursor();
        spool.next_number = spool
            .segments
            .back()
            .map_or(cursor_segment, |(number, _)| (number + 1).max(cursor_segment));
        // Segments wholly before the cursor were replayed by an earlier run.
        while let Some(&(number, _)) = spool.segments.front() {
            if number >= cursor_segment {
                break;
            }
            spool.remove_front_segment()?;
        }
        if let Some(&(number, size)) = spool.segments.front() {
            let offset = if number == cursor_segment {
                cursor_offset.min(size)
            } else {
                0
            };
            spool.open_reader(number, offset)?;
            info!(
                dir = %spool.dir.display(),
                segments = spool.segments.len(),
                bytes = spool.bytes(),
                "spool holds batches from an earlier run; they are replayed first"
            );
        }
        Ok(spool)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn read_cursor(&self) -> (u64, u64) {
        let text = fs::read_to_string(self.path("cursor")).unwrap_or_default();
        let mut parts = text.split_whitespace().map(|part| part.parse::<u64>().ok());
        match (parts.next().flatten(), parts.next().flatten()) {
            (Some(segment), Some(offset)) => (segment, offset),
            _ => (0, 0),
        }
    }

    /// Saves the replay position. A failure is logged and remembered, not returned: the
    /// position in memory is already right, and the next move or sync writes it again.
    fn write_cursor(&mut self, segment: u64, offset: u64) -> io::Result<()> {
        let temporary = self.path("cursor.tmp");
        let saved = fs::write(&temporary, format!("{segment} {offset}\n"))
            .and_then(|()| fs::rename(&temporary, self.path("cursor")));
        match saved {
            Ok(()) => self.unsaved_cursor = None,
            Err(error) => {
                if self.unsaved_cursor.is_none() {
                    error!(error = %error, segment, offset, "cannot save the spool cursor, retrying at the next move");
                }
                let _ = fs::remove_file(&temporary); // give back the space it may hold
                self.unsaved_cursor = Some((segment, offset));
            }
        }
        Ok(())
    }

    /// True while the saved cursor is behind the replay position.
    pub fn cursor_unsaved(&self) -> bool {
        self.unsaved_cursor.is_some()
    }

    fn open_reader(&mut self, number: u64, offset: u64) -> io::Result<()> {
        let mut file = File::open(self.path(&segment_name(number)))?;
        file.seek(SeekFrom::Start(offset))?;
        self.reader = Some(Reader {
            number,
            file: BufReader::with_capacity(256 * 1024, file),
            offset,
        });
        Ok(())
    }

    fn remove_front_segment(&mut self) -> io::Result<()> {
        if let Some((number, _)) = self.segments.pop_front() {
            if self.writer.as_ref().is_some_and(|writer| writer.number == number) {
                self.writer = None;
            }
            match fs::remove_file(self.path(&segment_name(number))) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
                _ => {}
            }
        }
        Ok(())
    }

    /// Bytes on disk in segments.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|(_, size)| size).sum()
    }

    /// True when every record was replayed (an open segment may be listed, empty: the
    /// write that opened it failed).
    pub fn is_empty(&self) -> bool {
        self.bytes() == 0
    }

    /// Size on disk of `batch` as a record.
    pub fn record_bytes(batch: &Batch) -> u64 {
        Self::entries_record_bytes(&batch.entries)
    }

    fn entries_record_bytes(entries: &[Entry]) -> u64 {
        HEADER_BYTES + entries.iter().map(|entry| 8 + entry.payload.len() as u64).sum::<u64>()
    }

    /// Whether `record_bytes` more fit under `max_bytes` (a record larger than the whole
    /// spool fits only into an empty spool, so that it cannot block forever).
    pub fn has_room(&self, record_bytes: u64) -> bool {
        self.is_empty() || self.bytes() + record_bytes <= self.max_bytes
    }

    /// Appends `batch` as one record. Refuses (`InvalidInput`, nothing written) a record
    /// that could not be read back; undoes a failed write (see the module invariants).
    pub fn append(&mut self, batch: &Batch) -> io::Result<u64> {
        let record = encode_record(&batch.entries)?;
        if self
            .writer
            .as_ref()
            .is_none_or(|writer| writer.written >= self.segment_max_bytes)
        {
            self.roll_segment()?;
        }
        let writer = self.writer.as_mut().expect("a segment is open");
        if let Err(write_error) = writer.file.write_all(&record) {
            self.write_failures += 1;
            // Cut the torn bytes off, so that later records do not follow a torn one.
            if let Err(truncate_error) = writer.file.set_len(writer.written) {
                error!(error = %truncate_error, segment = %segment_name(writer.number), "cannot undo a failed spool write, closing the segment");
                self.writer = None; // readers stop at the torn tail; later records go to a new segment
            }
            return Err(write_error);
        }
        writer.written += record.len() as u64;
        writer.synced = false;
        let back = self.segments.back_mut().expect("the open segment is listed");
        back.1 += record.len() as u64;
        if self.reader.is_none() {
            let number = back.0;
            let offset = back.1 - record.len() as u64;
            self.open_reader(number, offset)?;
        }
        Ok(record.len() as u64)
    }

    fn roll_segment(&mut self) -> io::Result<()> {
        self.sync()?;
        let number = self.next_number;
        self.next_number += 1;
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(self.path(&segment_name(number)))?;
        self.segments.push_back((number, 0));
        self.writer = Some(Writer {
            number,
            file,
            written: 0,
            synced: true,
        });
        Ok(())
    }

    /// Flushes the open segment to the disk (called every second and when closing), and
    /// saves a cursor whose last write failed.
    pub fn sync(&mut self) -> io::Result<()> {
        if let Some((segment, offset)) = self.unsaved_cursor {
            self.write_cursor(segment, offset)?;
        }
        if let Some(writer) = self.writer.as_mut()
            && !writer.synced
        {
            writer.file.sync_data()?;
            writer.synced = true;
        }
        Ok(())
    }

    /// The oldest record not yet replayed, handed over until [`Spool::consume`] marks it
    /// replayed (called again before that, it reads the same record again). Corrupt records
    /// are reported and skipped with the rest of their segment.
    pub fn peek(&mut self) -> io::Result<Option<Spooled>> {
        if self.peeked_size.take().is_some() {
            let reader = self.reader.as_mut().expect("a peeked record has a reader");
            reader.file.seek(SeekFrom::Start(reader.offset))?;
        }
        loop {
            let Some(reader) = self.reader.as_mut() else {
                return Ok(None);
            };
            let number = reader.number;
            let is_open_segment = self.writer.as_ref().is_some_and(|writer| writer.number == number);
            match read_record(reader)? {
                RecordRead::Record(spooled, size) => {
                    self.peeked_size = Some(size);
                    return Ok(Some(spooled));
                }
                RecordRead::End if is_open_segment => return Ok(None),
                RecordRead::End => self.finish_segment()?,
                RecordRead::Corrupt(problem) => {
                    let offset = reader.offset;
                    let corrupt_name = format!("{}.corrupt", segment_name(number));
                    error!(
                        segment = %segment_name(number),
                        offset,
                        problem = %problem,
                        kept_as = %corrupt_name,
                        "corrupt spool record: the rest of this segment is skipped"
                    );
                    self.corrupt_segments += 1;
                    if is_open_segment {
                        self.writer = None; // never append after a bad record
                    }
                    fs::rename(self.path(&segment_name(number)), self.path(&corrupt_name))?;
                    self.finish_segment()?;
                }
            }
        }
    }

    /// Drops the current reader's segment and moves to the next one.
    fn finish_segment(&mut self) -> io::Result<()> {
        self.reader = None;
        self.remove_front_segment()?;
        match self.segments.front() {
            Some(&(number, _)) => {
                self.open_reader(number, 0)?;
                self.write_cursor(number, 0)
            }
            None => self.write_cursor(self.next_number, 0),
        }
    }

    /// Marks the record returned by [`Spool::peek`] as replayed.
    pub fn consume(&mut self) -> io::Result<()> {
        let Some(size) = self.peeked_size.take() else {
            return Ok(());
        };
        let reader = self.reader.as_mut().expect("a peeked record has a reader");
        reader.offset += size;
        let (number, offset) = (reader.number, reader.offset);
        let segment_size = self.segments.front().map_or(0, |(_, size)| *size);
        if offset >= segment_size && self.segments.len() == 1 {
            // Everything replayed: start afresh rather than grow an emptied segment.
            self.reader = None;
            self.remove_front_segment()?;
            return self.write_cursor(self.next_number, 0);
        }
        self.write_cursor(number, offset)
    }
}

/// `[length][CRC-32][payload]`, the payload `[count][length][bytes]` per entry; refused
/// when a length does not fit or the payload is over [`MAX_RECORD_BYTES`].
fn encode_record(entries: &[Entry]) -> io::Result<Vec<u8>> {
    let record_bytes = Spool::entries_record_bytes(entries);
    let too_large = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a record of {record_bytes} bytes is over the spool's limit of {MAX_RECORD_BYTES}"),
        )
    };
    let payload_length = u32::try_from(record_bytes - HEADER_BYTES).map_err(|_| too_large())?;
    if payload_length > MAX_RECORD_BYTES {
        return Err(too_large());
    }
    let mut record = Vec::with_capacity(record_bytes as usize);
    record.extend_from_slice(&payload_length.to_le_bytes());
    record.extend_from_slice(&[0; 4]); // the checksum, once the payload is written
    for entry in entries {
        let entry_length = u32::try_from(entry.payload.len()).map_err(|_| too_large())?;
        record.extend_from_slice(&entry.event_count.to_le_bytes());
        record.extend_from_slice(&entry_length.to_le_bytes());
        record.extend_from_slice(&entry.payload);
    }
    let checksum = crc32fast::hash(&record[HEADER_BYTES as usize..]);
    record[4..8].copy_from_slice(&checksum.to_le_bytes());
    Ok(record)
}

enum RecordRead {
    Record(Spooled, u64),
    End,
    Corrupt(String),
}

fn read_record(reader: &mut Reader) -> io::Result<RecordRead> {
    let mut header = [0u8; HEADER_BYTES as usize];
    match read_full(&mut reader.file, &mut header)? {
        0 => return Ok(RecordRead::End),
        read if read < header.len() => return Ok(RecordRead::Corrupt(format!("torn header ({read} bytes)"))),
        _ => {}
    }
    let length = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let checksum = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    if length > MAX_RECORD_BYTES {
        return Ok(RecordRead::Corrupt(format!("record length {length} is not plausible")));
    }
    let mut payload = vec![0u8; length as usize];
    let read = read_full(&mut reader.file, &mut payload)?;
    if read < payload.len() {
        return Ok(RecordRead::Corrupt(format!("torn record ({read} of {length} bytes)")));
    }
    if crc32fast::hash(&payload) != checksum {
        return Ok(RecordRead::Corrupt("checksum mismatch".into()));
    }
    match decode_payload(&payload) {
        Some(spooled) => Ok(RecordRead::Record(spooled, HEADER_BYTES + u64::from(length))),
        None => Ok(RecordRead::Corrupt("entry lengths do not add up".into())),
    }
}

/// Reads until `buffer` is full or the end of the file; returns the bytes read.
fn read_full(file: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

fn decode_payload(mut payload: &[u8]) -> Option<Spooled> {
    let mut entries = Vec::new();
    let mut event_count = 0u64;
    while !payload.is_empty() {
        let count = u32::from_le_bytes(payload.get(0..4)?.try_into().ok()?);
        let length = u32::from_le_bytes(payload.get(4..8)?.try_into().ok()?) as usize;
        let bytes = payload.get(8..8 + length)?;
        entries.push(Entry {
            event_count: count,
            payload: bytes.to_vec(),
        });
        event_count += u64::from(count);
        payload = &payload[8 + length..];
    }
    Some(Spooled { entries, event_count })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::WhenFull;

    fn batch(texts: &[&str]) -> Batch {
        Batch {
            entries: texts
                .iter()
                .map(|text| Entry {
                    event_count: 1,
                    payload: text.as_bytes().to_vec(),
                })
                .collect(),
            event_count: texts.len() as u64,
            receipts: Vec::new(),
            events_per_level: Default::default(),
        }
    }

    fn config(dir: &Path) -> SpoolConfig {
        SpoolConfig {
            dir: dir.to_path_buf(),
            max_bytes: 1 << 20,
            when_full: WhenFull::Block,
        }
    }

    /// Peeks and consumes everything, returning the payloads in order.
    fn drain(spool: &mut Spool) -> Vec<String> {
        let mut payloads = Vec::new();
        while let Some(spooled) = spool.peek().unwrap() {
            assert_eq!(
                spool.peek().unwrap().unwrap().entries,
                spooled.entries,
                "a record peeked again until consumed"
            );
            payloads.extend(
                spooled
                    .entries
                    .iter()
                    .map(|entry| String::from_utf8(entry.payload.clone()).unwrap()),
            );
            spool.consume().unwrap();
        }
        payloads
    }

    fn segment_count(dir: &Path) -> usize {
        fs::read_dir(dir)
            .unwrap()
            .filter(|entry| segment_number(&entry.as_ref().unwrap().path()).is_some())
            .count()
    }

    #[test]
    fn replays_in_order_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(&config(dir.path())).unwrap();
        spool.append(&batch(&["a", "b"])).unwrap();
        spool.append(&batch(&["c"])).unwrap();
        spool.append(&batch(&["d"])).unwrap();
        assert_eq!(spool.peek().unwrap().unwrap().event_count, 2);
        spool.consume().unwrap();
        drop(spool);

        // A new process resumes after the cursor and writes to a new segment.
        let mut spool = Spool::open(&config(dir.path())).unwrap();
        spool.append(&batch(&["e"])).unwrap();
        assert_eq!(segment_count(dir.path()), 2);
        assert_eq!(drain(&mut spool), ["c", "d", "e"]);
        assert!(spool.is_empty());
        assert_eq!(segment_count(dir.path()), 0, "replayed segments are removed");
        drop(spool);

        let mut spool = Spool::open(&config(dir.path())).unwrap();
        assert!(spool.is_empty());
        spool.append(&batch(&["f"])).unwrap();
        drop(spool);
        let mut spool = Spool::open(&config(dir.path())).unwrap();
        assert_eq!(
            drain(&mut spool),
            ["f"],
            "a segment written after the spool emptied is not skipped"
        );
    }

    #[test]
    fn a_corrupt_record_skips_the_rest_of_its_segment_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(&config(dir.path())).unwrap();
        spool.append(&batch(&["good"])).unwrap();
        spool.append(&batch(&["flipped"])).unwrap();
        spool.append(&batch(&["lost with its segment"])).unwrap();
        drop(spool);
        let first = dir.path().join(segment_name(0));
        let mut bytes = fs::read(&first).unwrap();
        let position = bytes.windows(7).position(|window| window == b"flipped").unwrap();
        bytes[position] ^= 0x20;
        fs::write(&first, bytes).unwrap();

        let mut spool = Spool::open(&config(dir.path())).unwrap();
        spool.append(&batch(&["next segment"])).unwrap();
        assert_eq!(drain(&mut spool), ["good", "next segment"]);
        assert_eq!(spool.corrupt_segments, 1);
        assert!(dir.path().join(format!("{}.corrupt", segment_name(0))).exists());
    }

    #[test]
    fn a_torn_tail_is_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(&config(dir.path())).unwrap();
        spool.append(&batch(&["kept"])).unwrap();
        drop(spool);
        let mut segment = OpenOptions::new()
            .append(true)
            .open(dir.path().join(segment_name(0)))
            .unwrap();
        segment.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
        drop(segment);
        let mut spool = Spool::open(&config(dir.path())).unwrap();
        assert_eq!(drain(&mut spool), ["kept"]);
        assert_eq!(spool.corrupt_segments, 1);
        assert!(spool.is_empty());
    }

    #[test]
    fn a_record_that_could_not_be_read_back_is_refused_unwritten() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(&config(dir.path())).unwrap();
        spool.append(&batch(&["before"])).unwrap();
        // calloc'd and never touched: no memory is really used
        let half = (MAX_RECORD_BYTES / 2) as usize + 1;
        let oversized = Batch {
            entries: (0..2)
                .map(|_| Entry {
                    event_count: 1,
                    payload: vec![0; half],
                })
                .collect(),
            event_count: 2,
            receipts: Vec::new(),
            events_per_level: Default::default(),
        };
        let refused = spool.append(&oversized).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::InvalidInput, "{refused}");
        spool.append(&batch(&["after"])).unwrap();
        assert_eq!(drain(&mut spool), ["before", "after"]);
        assert_eq!(spool.corrupt_segments, 0);
    }

    #[test]
    fn a_cursor_that_cannot_be_saved_is_saved_later_and_never_replays_in_process() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(&config(dir.path())).unwrap();
        for text in ["a", "b", "c"] {
            spool.append(&batch(&[text])).unwrap();
        }
        // A directory where the cursor's temporary file goes: every cursor write fails.
        fs::create_dir(dir.path().join("cursor.tmp")).unwrap();
        assert_eq!(spool.peek().unwrap().unwrap().entries[0].payload, b"a");
        spool.consume().unwrap();
        assert!(spool.cursor_unsaved());
        assert_eq!(
            spool.peek().unwrap().unwrap().entries[0].payload,
            b"b",
            "what was replayed is not read again"
        );
        spool.consume().unwrap();

        fs::remove_dir(dir.path().join("cursor.tmp")).unwrap();
        spool.sync().unwrap();
        assert!(!spool.cursor_unsaved());
        drop(spool);
        let mut spool = Spool::open(&config(dir.path())).unwrap();
        assert_eq!(drain(&mut spool), ["c"], "the next run resumes after the saved cursor");
    }

    #[test]
    fn room_is_bounded_by_max_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(&SpoolConfig {
            max_bytes: 100,
            ..config(dir.path())
        })
        .unwrap();
        let big = batch(&[&"x".repeat(80)]);
        assert!(
            spool.has_room(Spool::record_bytes(&big)),
            "an empty spool takes any record"
        );
        spool.append(&big).unwrap();
        assert!(!spool.has_room(Spool::record_bytes(&big)));
        assert!(spool.has_room(4));
    }
}
