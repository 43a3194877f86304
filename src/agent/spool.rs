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
//! - a new process never appends to an old segment: a torn record can only be the last one
//!   of a segment written by a process that died
//! - a record whose length or checksum is wrong ends its segment: it is reported, the
//!   segment is renamed `*.corrupt` for inspection, replay goes on with the next segment
//! - the cursor moves only after a record reached Redis: a crash during replay resends
//!   at most the record in flight (at-least-once)

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use tracing::{error, info};

use super::batcher::{Batch, Entry};
pub use crate::config::SpoolConfig;
pub use crate::options::WhenFull;

/// Largest record accepted when reading; anything longer is corruption.
const MAX_RECORD_BYTES: u32 = 256 * 1024 * 1024;
const HEADER_BYTES: u64 = 8;

/// A batch read back from the spool.
pub struct Spooled {
    pub entries: Vec<Entry>,
    pub event_count: u64,
}

struct Writer {
    number: u64,
    file: File,
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
    /// The record read by [`Spool::peek`] and not yet consumed, with its size on disk.
    peeked: Option<(Spooled, u64)>,
    /// Number of the next segment; segment numbers only grow, so the cursor stays valid.
    next_number: u64,
    /// Corrupt segments found since start.
    pub corrupt_segments: u64,
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
            peeked: None,
            next_number: 0,
            corrupt_segments: 0,
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

    fn write_cursor(&self, segment: u64, offset: u64) -> io::Result<()> {
        let temporary = self.path("cursor.tmp");
        fs::write(&temporary, format!("{segment} {offset}\n"))?;
        fs::rename(temporary, self.path("cursor"))
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

    /// True when every record was replayed.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Size on disk of `batch` as a record.
    pub fn record_bytes(batch: &Batch) -> u64 {
        HEADER_BYTES
            + batch
                .entries
                .iter()
                .map(|entry| 8 + entry.payload.len() as u64)
                .sum::<u64>()
    }

    /// Whether `record_bytes` more fit under `max_bytes` (a record larger than the whole
    /// spool fits only into an empty spool, so that it cannot block forever).
    pub fn has_room(&self, record_bytes: u64) -> bool {
        self.is_empty() || self.bytes() + record_bytes <= self.max_bytes
    }

    /// Appends `batch` as one record.
    pub fn append(&mut self, batch: &Batch) -> io::Result<u64> {
        let record_bytes = Self::record_bytes(batch);
        let mut record = Vec::with_capacity(record_bytes as usize);
        record.extend_from_slice(&[0; HEADER_BYTES as usize]);
        for entry in &batch.entries {
            record.extend_from_slice(&entry.event_count.to_le_bytes());
            record.extend_from_slice(&(entry.payload.len() as u32).to_le_bytes());
            record.extend_from_slice(&entry.payload);
        }
        let payload_length = (record.len() as u64 - HEADER_BYTES) as u32;
        let checksum = crc32fast::hash(&record[HEADER_BYTES as usize..]);
        record[0..4].copy_from_slice(&payload_length.to_le_bytes());
        record[4..8].copy_from_slice(&checksum.to_le_bytes());

        if self
            .writer
            .as_ref()
            .is_none_or(|writer| writer.written >= self.segment_max_bytes)
        {
            self.roll_segment()?;
        }
        let writer = self.writer.as_mut().expect("a segment is open");
        writer.file.write_all(&record)?;
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

    /// Flushes the open segment to the disk (called every second and when closing).
    pub fn sync(&mut self) -> io::Result<()> {
        if let Some(writer) = self.writer.as_mut()
            && !writer.synced
        {
            writer.file.sync_data()?;
            writer.synced = true;
        }
        Ok(())
    }

    /// The oldest record not yet replayed. Corrupt records are reported and skipped with
    /// the rest of their segment.
    pub fn peek(&mut self) -> io::Result<Option<&Spooled>> {
        while self.peeked.is_none() {
            let Some(reader) = self.reader.as_mut() else {
                return Ok(None);
            };
            let number = reader.number;
            let is_open_segment = self.writer.as_ref().is_some_and(|writer| writer.number == number);
            match read_record(reader)? {
                RecordRead::Record(spooled, size) => self.peeked = Some((spooled, size)),
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
        Ok(self.peeked.as_ref().map(|(spooled, _)| spooled))
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
        let Some((_, size)) = self.peeked.take() else {
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
