//! `agent --source file`: tails files named by paths and globs.
//!
//! - globs are expanded again every second: new files are picked up (read from the start);
//!   files found at startup without a checkpoint start at `read_from` (start or end)
//! - a file is identified by device and inode, plus a checksum of its first bytes (up to
//!   1 KiB), so that a reused inode or a file truncated and rewritten while the agent was
//!   stopped is read from the start instead of from a stale offset
//! - rotation by rename: the old file is read to its end (the writer may still add a few
//!   lines) and closed once idle; the new file at the path is a new inode, read from 0
//! - rotation by copytruncate: a file shorter than its offset was truncated: read from 0
//!   (the lines written between the copy and the truncation are lost by copytruncate
//!   itself; the copy must not match the globs, or it is read as a new file)
//! - offsets move in the checkpoint file only once the lines before them are stored (in
//!   Redis or the spool): a restart, even after `kill -9`, neither skips nor repeats
//!   lines, except those in flight at a crash (at-least-once)
//! - only complete lines are shipped; a rotated file's unterminated last line is shipped
//!   when the file is closed
//!
//! Reading runs on its own thread with plain blocking reads: file I/O has no readiness
//! notification, and a thread keeps it off the runtime that ships.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::batcher::Settled;
use super::sources::{LineParser, MAX_CHUNK_EVENTS, MultilineJoiner, SourceMessage};
use super::stdin::MULTILINE_FLUSH_AFTER;
use crate::cli::ReadFrom;
use crate::config::AgentConfig;
use crate::event::LogEvent;

const GLOB_INTERVAL: Duration = Duration::from_secs(1);
const IDLE_POLL: Duration = Duration::from_millis(100);
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// A rotated (renamed or deleted) file is closed after this long at its end.
const ROTATED_IDLE: Duration = Duration::from_secs(3);
const READ_BUFFER_BYTES: usize = 1 << 20;
const FINGERPRINT_BYTES: u64 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct FileKey {
    dev: u64,
    inode: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Checkpoint {
    dev: u64,
    inode: u64,
    path: PathBuf,
    offset: u64,
    /// CRC-32 of the first `head_bytes` bytes of the file.
    head_bytes: u64,
    head_crc: u32,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CheckpointFile {
    version: u32,
    files: Vec<Checkpoint>,
}

/// Offsets of the files being read, as far as their lines are stored.
#[derive(Default)]
struct Checkpoints {
    path: PathBuf,
    stored: Mutex<HashMap<FileKey, Checkpoint>>,
    /// Something changed since the last save.
    changed: std::sync::atomic::AtomicBool,
}

impl Checkpoints {
    fn load(path: &Path) -> anyhow::Result<Checkpoints> {
        let stored = match std::fs::read_to_string(path) {
            Ok(text) => {
                let file: CheckpointFile = serde_json::from_str(&text)
                    .map_err(|error| anyhow::anyhow!("checkpoint file {} is damaged: {error}", path.display()))?;
                file.files
                    .into_iter()
                    .map(|checkpoint| {
                        let key = FileKey {
                            dev: checkpoint.dev,
                            inode: checkpoint.inode,
                        };
                        (key, checkpoint)
                    })
                    .collect()
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => HashMap::new(),
            Err(error) => anyhow::bail!("cannot read checkpoint file {}: {error}", path.display()),
        };
        Ok(Checkpoints {
            path: path.to_path_buf(),
            stored: Mutex::new(stored),
            changed: Default::default(),
        })
    }

    fn get(&self, key: FileKey) -> Option<Checkpoint> {
        self.stored.lock().expect("checkpoints lock").get(&key).cloned()
    }

    /// Called by receipts: only files still being read are updated.
    fn advance(&self, checkpoint: Checkpoint) {
        let key = FileKey {
            dev: checkpoint.dev,
            inode: checkpoint.inode,
        };
        let mut stored = self.stored.lock().expect("checkpoints lock");
        if let Some(current) = stored.get_mut(&key)
            && (checkpoint.offset >= current.offset || checkpoint.head_crc != current.head_crc)
        {
            if current.offset != checkpoint.offset {
                self.changed.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            *current = checkpoint;
        }
    }

    fn track(&self, checkpoint: Checkpoint) {
        let key = FileKey {
            dev: checkpoint.dev,
            inode: checkpoint.inode,
        };
        self.stored.lock().expect("checkpoints lock").insert(key, checkpoint);
        self.changed.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn forget(&self, key: FileKey) {
        self.stored.lock().expect("checkpoints lock").remove(&key);
        self.changed.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Writes the file atomically (temporary file + rename), when something changed.
    fn save(&self) -> io::Result<()> {
        if !self.changed.swap(false, std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let mut files: Vec<Checkpoint> = self
            .stored
            .lock()
            .expect("checkpoints lock")
            .values()
            .cloned()
            .collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let text = serde_json::to_string_pretty(&CheckpointFile { version: 1, files }).expect("serialises");
        let mut temporary = self.path.clone().into_os_string();
        temporary.push(".tmp");
        let written = File::create(&temporary).and_then(|mut file| {
            io::Write::write_all(&mut file, text.as_bytes())?;
            // Synced before the rename, so that a power loss leaves the old file or the new one.
            file.sync_all()?;
            std::fs::rename(&temporary, &self.path)
        });
        if written.is_err() {
            self.changed.store(true, std::sync::atomic::Ordering::Relaxed); // try again next time
        }
        written
    }
}

/// The running file source; [`FileSource::finish`] waits for it and saves the checkpoints.
pub struct FileSource {
    thread: std::thread::JoinHandle<()>,
    checkpoints: Arc<Checkpoints>,
}

impl FileSource {
    /// Call once every batch is settled, so that the last offsets are saved.
    pub async fn finish(self) {
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        if let Err(error) = self.checkpoints.save() {
            warn!(error = %error, path = %self.checkpoints.path.display(), "cannot save the file checkpoints");
        }
    }
}

pub fn start(
    config: &AgentConfig,
    parser: LineParser,
    messages: mpsc::Sender<SourceMessage>,
    shutdown: CancellationToken,
) -> anyhow::Result<FileSource> {
    let checkpoints = Arc::new(Checkpoints::load(&config.checkpoint_file)?);
    let mut tailer = Tailer {
        patterns: config.files.clone(),
        read_from: config.read_from,
        continuation: config.multiline_continuation.clone(),
        parser,
        messages,
        checkpoints: checkpoints.clone(),
        files: Vec::new(),
        buffer: vec![0; READ_BUFFER_BYTES],
        first_scan: true,
    };
    let thread = std::thread::Builder::new()
        .name("file-source".into())
        .spawn(move || tailer.run(&shutdown))?;
    Ok(FileSource { thread, checkpoints })
}

struct TailedFile {
    key: FileKey,
    path: PathBuf,
    file: File,
    /// Bytes of the file turned into lines (or held in `partial`).
    offset: u64,
    /// An unterminated last line, waiting for its end.
    partial: Vec<u8>,
    joiner: MultilineJoiner,
    head_bytes: u64,
    head_crc: u32,
    /// When a read last returned data.
    last_data: Instant,
    /// The path now names another file (or none): rotated by rename, or deleted.
    rotated: bool,
}

impl TailedFile {
    /// Offset up to which every line is complete and handed over.
    fn safe_offset(&self) -> u64 {
        let end_of_lines = self.offset - self.partial.len() as u64;
        self.joiner.pending_start().unwrap_or(end_of_lines).min(end_of_lines)
    }

    fn checkpoint(&mut self) -> Checkpoint {
        let offset = self.safe_offset();
        if self.head_bytes < FINGERPRINT_BYTES && offset > self.head_bytes {
            (self.head_bytes, self.head_crc) = fingerprint(&self.file, offset).unwrap_or((0, 0));
        }
        Checkpoint {
            dev: self.key.dev,
            inode: self.key.inode,
            path: self.path.clone(),
            offset,
            head_bytes: self.head_bytes,
            head_crc: self.head_crc,
        }
    }
}

/// CRC-32 of the first `min(limit, 1 KiB)` bytes, read without moving the file position.
fn fingerprint(file: &File, limit: u64) -> io::Result<(u64, u32)> {
    use std::os::unix::fs::FileExt;
    let mut head = vec![0u8; limit.min(FINGERPRINT_BYTES) as usize];
    let mut filled = 0;
    while filled < head.len() {
        let read = file.read_at(&mut head[filled..], filled as u64)?;
        if read == 0 {
            break;
        }
        filled += read;
    }
    Ok((filled as u64, crc32fast::hash(&head[..filled])))
}

struct Tailer {
    patterns: Vec<String>,
    read_from: ReadFrom,
    continuation: Option<regex::Regex>,
    parser: LineParser,
    messages: mpsc::Sender<SourceMessage>,
    checkpoints: Arc<Checkpoints>,
    files: Vec<TailedFile>,
    buffer: Vec<u8>,
    first_scan: bool,
}

/// The channel closed: the agent is stopping.
struct Closed;

impl Tailer {
    fn run(&mut self, shutdown: &CancellationToken) {
        let mut next_scan = Instant::now();
        let mut next_save = Instant::now() + CHECKPOINT_INTERVAL;
        // A closed channel: the agent stops (e.g. `--count` reached).
        while !shutdown.is_cancelled() && !self.messages.is_closed() {
            if Instant::now() >= next_scan {
                self.scan();
                next_scan = Instant::now() + GLOB_INTERVAL;
            }
            let read_any = match self.read_all() {
                Ok(read_any) => read_any,
                Err(Closed) => break,
            };
            if self.close_rotated().is_err() {
                break;
            }
            if Instant::now() >= next_save {
                if let Err(error) = self.checkpoints.save() {
                    warn!(error = %error, path = %self.checkpoints.path.display(), "cannot save the file checkpoints");
                }
                next_save = Instant::now() + CHECKPOINT_INTERVAL;
            }
            if !read_any {
                std::thread::sleep(IDLE_POLL);
            }
        }
        // Stopping: joined events still pending are shipped if the agent still takes them.
        for index in 0..self.files.len() {
            let _ = self.flush_pending(index);
        }
    }

    /// Expands the globs: opens files not seen yet, marks files whose path moved on.
    fn scan(&mut self) {
        let mut present: HashMap<FileKey, PathBuf> = HashMap::new();
        for pattern in &self.patterns {
            let Ok(paths) = glob::glob(pattern) else { continue };
            for path in paths.flatten() {
                if let Ok(metadata) = std::fs::metadata(&path)
                    && metadata.is_file()
                {
                    let key = FileKey {
                        dev: metadata.dev(),
                        inode: metadata.ino(),
                    };
                    present.entry(key).or_insert(path);
                }
            }
        }
        for tailed in &mut self.files {
            if !tailed.rotated && !present.contains_key(&tailed.key) {
                info!(path = %tailed.path.display(), "file rotated or removed: reading it to its end");
                tailed.rotated = true;
            }
        }
        for (key, path) in present {
            if self.files.iter().any(|tailed| tailed.key == key) {
                continue;
            }
            match self.open(key, &path) {
                Ok(tailed) => self.files.push(tailed),
                Err(error) => warn!(path = %path.display(), error = %error, "cannot open file"),
            }
        }
        self.first_scan = false;
    }

    fn open(&self, key: FileKey, path: &Path) -> io::Result<TailedFile> {
        let mut file = File::open(path)?;
        let size = file.metadata()?.len();
        let resumed = self.checkpoints.get(key).filter(|checkpoint| {
            checkpoint.offset <= size
                && fingerprint(&file, checkpoint.head_bytes).ok() == Some((checkpoint.head_bytes, checkpoint.head_crc))
        });
        let offset = match (&resumed, self.first_scan, self.read_from) {
            (Some(checkpoint), _, _) => checkpoint.offset,
            (None, true, ReadFrom::End) => size,
            _ => 0,
        };
        file.seek(SeekFrom::Start(offset))?;
        info!(path = %path.display(), offset, resumed = resumed.is_some(), "tailing file");
        let (head_bytes, head_crc) = fingerprint(&file, offset)?;
        let mut tailed = TailedFile {
            key,
            path: path.to_path_buf(),
            file,
            offset,
            partial: Vec::new(),
            joiner: MultilineJoiner::new(self.continuation.clone()),
            head_bytes,
            head_crc,
            last_data: Instant::now(),
            rotated: false,
        };
        self.checkpoints.track(tailed.checkpoint());
        Ok(tailed)
    }

    /// One read of every file. Returns whether any data came.
    fn read_all(&mut self) -> Result<bool, Closed> {
        let mut read_any = false;
        for index in 0..self.files.len() {
            read_any |= self.read_file(index)?;
        }
        Ok(read_any)
    }

    fn read_file(&mut self, index: usize) -> Result<bool, Closed> {
        let tailed = &mut self.files[index];
        if let Ok(metadata) = tailed.file.metadata()
            && metadata.len() < tailed.offset
        {
            info!(path = %tailed.path.display(), size = metadata.len(), offset = tailed.offset, "file truncated (copytruncate): reading it from the start");
            let _ = tailed.file.seek(SeekFrom::Start(0));
            tailed.offset = 0;
            tailed.partial.clear();
            tailed.joiner = MultilineJoiner::new(self.continuation.clone());
            tailed.head_bytes = 0;
            tailed.head_crc = crc32fast::hash(&[]);
        }
        let read = match tailed.file.read(&mut self.buffer) {
            Ok(read) => read,
            Err(error) => {
                warn!(path = %tailed.path.display(), error = %error, "cannot read file");
                return Ok(false);
            }
        };
        if read == 0 {
            if tailed.joiner.is_pending() && tailed.last_data.elapsed() >= MULTILINE_FLUSH_AFTER {
                self.flush_pending(index)?;
            }
            return Ok(false);
        }
        tailed.last_data = Instant::now();
        let data = &self.buffer[..read];
        let line_start_offset = tailed.offset - tailed.partial.len() as u64;
        tailed.offset += read as u64;
        let mut events = Vec::with_capacity(MAX_CHUNK_EVENTS);
        let mut start = 0usize;
        let mut line_offset = line_start_offset;
        for end in memchr::memchr_iter(b'\n', data) {
            let line_bytes: &[u8] = if tailed.partial.is_empty() {
                &data[start..end]
            } else {
                tailed.partial.extend_from_slice(&data[start..end]);
                &tailed.partial
            };
            let line_length = line_bytes.len() as u64 + 1;
            let text = String::from_utf8_lossy(line_bytes);
            let text = text.trim_end_matches('\r');
            if !text.trim().is_empty()
                && let Some(joined) = tailed.joiner.push(text, line_offset)
            {
                events.push(self.parser.parse(&joined));
            }
            tailed.partial.clear();
            line_offset += line_length;
            start = end + 1;
            if events.len() >= MAX_CHUNK_EVENTS {
                // The checkpoint of this chunk: every line before `line_offset`.
                let saved_offset = tailed.offset;
                tailed.offset = line_offset + tailed.partial.len() as u64;
                let checkpoint = tailed.checkpoint();
                tailed.offset = saved_offset;
                send(
                    &self.messages,
                    std::mem::take(&mut events),
                    checkpoint,
                    &self.checkpoints,
                )?;
            }
        }
        tailed.partial.extend_from_slice(&data[start..]);
        let checkpoint = tailed.checkpoint();
        send(&self.messages, events, checkpoint, &self.checkpoints)?;
        Ok(true)
    }

    /// Ships the event being joined (and, for a rotated file, its unterminated last line).
    fn flush_pending(&mut self, index: usize) -> Result<(), Closed> {
        let tailed = &mut self.files[index];
        let mut events = Vec::new();
        if let Some(joined) = tailed.joiner.flush() {
            events.push(self.parser.parse(&joined));
        }
        if tailed.rotated && !tailed.partial.is_empty() {
            let text = String::from_utf8_lossy(&tailed.partial).into_owned();
            tailed.partial.clear();
            if !text.trim().is_empty() {
                events.push(self.parser.parse(&text));
            }
        }
        if events.is_empty() {
            return Ok(());
        }
        let checkpoint = tailed.checkpoint();
        send(&self.messages, events, checkpoint, &self.checkpoints)
    }

    /// Closes rotated files that stayed at their end for a while.
    fn close_rotated(&mut self) -> Result<(), Closed> {
        let mut index = 0;
        while index < self.files.len() {
            let tailed = &self.files[index];
            if tailed.rotated && tailed.last_data.elapsed() >= ROTATED_IDLE {
                self.flush_pending(index)?;
                let tailed = self.files.swap_remove(index);
                info!(path = %tailed.path.display(), offset = tailed.offset, "rotated file read to its end, closed");
                self.checkpoints.forget(tailed.key);
                continue;
            }
            index += 1;
        }
        Ok(())
    }
}

/// Hands `events` over, then a receipt that moves the checkpoint once they are stored.
fn send(
    messages: &mpsc::Sender<SourceMessage>,
    events: Vec<LogEvent>,
    checkpoint: Checkpoint,
    checkpoints: &Arc<Checkpoints>,
) -> Result<(), Closed> {
    if !events.is_empty() {
        messages
            .blocking_send(SourceMessage::Chunk(events))
            .map_err(|_| Closed)?;
    }
    let checkpoints = checkpoints.clone();
    messages
        .blocking_send(SourceMessage::Receipt(Box::new(move |settled| {
            if settled != Settled::Unsent {
                checkpoints.advance(checkpoint);
            }
        })))
        .map_err(|_| Closed)
}
