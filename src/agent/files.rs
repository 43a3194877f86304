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
//! - a line keeps at most `max_line_bytes` in memory: the rest of it is read and discarded
//!   up to its newline, and the event is marked `truncated` and counted; offsets still
//!   count every byte, so checkpoints stay exact
//! - globs are walked by [`GlobWalk`]: a directory is entered once per scan (device and
//!   inode, so a symlink loop under `**` ends), a scan looks at most
//!   [`GLOB_SCAN_MAX_ENTRIES`] directory entries and stops when the agent stops; a scan cut
//!   short marks no file rotated. A glob matching nothing is logged once (until it matches),
//!   a file that cannot be opened or read is logged and counted once
//!
//! Reading runs on its own thread with plain blocking reads: file I/O has no readiness
//! notification, and a thread keeps it off the runtime that ships.

use std::collections::{HashMap, HashSet};
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
use super::sources::{
    InputCounters, JoinedLine, LineParser, MAX_CHUNK_EVENTS, MultilineJoiner, SourceMessage, append_bounded, lossy_line,
};
use super::stdin::MULTILINE_FLUSH_AFTER;
use crate::config::AgentConfig;
use crate::event::LogEvent;
use crate::options::ReadFrom;

const GLOB_INTERVAL: Duration = Duration::from_secs(1);
const IDLE_POLL: Duration = Duration::from_millis(100);
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// A rotated (renamed or deleted) file is closed after this long at its end.
const ROTATED_IDLE: Duration = Duration::from_secs(3);
const READ_BUFFER_BYTES: usize = 1 << 20;
const FINGERPRINT_BYTES: u64 = 1024;
/// Directory entries one scan of the globs looks at, over all globs. A scan runs every
/// second on the reading thread: 100,000 entries is a few tenths of a second of `stat`
/// calls, which bounds the time a huge tree (or a `**` at `/`) can take from reading.
pub const GLOB_SCAN_MAX_ENTRIES: usize = 100_000;

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
    counters: Arc<InputCounters>,
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
        max_line_bytes: config.max_line_bytes,
        counters,
        unreadable: HashSet::new(),
        empty_globs_logged: HashSet::new(),
        scan_cut_logged: false,
    };
    let thread = std::thread::Builder::new()
        .name("file-source".into())
        .spawn(move || tailer.run(shutdown))?;
    Ok(FileSource { thread, checkpoints })
}

struct TailedFile {
    key: FileKey,
    path: PathBuf,
    file: File,
    /// Bytes of the file turned into lines (or held in `partial`).
    offset: u64,
    /// An unterminated last line, waiting for its end (at most `max_line_bytes` of it).
    partial: Vec<u8>,
    /// Bytes of that line read so far, those discarded at the limit included.
    partial_bytes: u64,
    /// A read failed and was logged: logged again only after a good read.
    read_error_logged: bool,
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
        let end_of_lines = self.offset - self.partial_bytes;
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
    max_line_bytes: usize,
    counters: Arc<InputCounters>,
    /// Paths that could not be opened: logged and counted once, until they open.
    unreadable: HashSet<PathBuf>,
    /// Globs that matched nothing, logged once until they match.
    empty_globs_logged: HashSet<String>,
    /// A scan was cut at [`GLOB_SCAN_MAX_ENTRIES`] and that was logged.
    scan_cut_logged: bool,
}

/// The channel closed: the agent is stopping.
struct Closed;

impl Tailer {
    fn run(&mut self, shutdown: CancellationToken) {
        let shutdown = &shutdown;
        let mut next_scan = Instant::now();
        let mut next_save = Instant::now() + CHECKPOINT_INTERVAL;
        // A closed channel: the agent stops (e.g. `--count` reached).
        while !shutdown.is_cancelled() && !self.messages.is_closed() {
            if Instant::now() >= next_scan {
                self.scan(shutdown);
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
    fn scan(&mut self, shutdown: &CancellationToken) {
        let mut walk = GlobWalk::new(GLOB_SCAN_MAX_ENTRIES, shutdown);
        let mut present: HashMap<FileKey, PathBuf> = HashMap::new();
        for pattern in &self.patterns {
            let matched = walk.expand(pattern, &mut present);
            if matched > 0 {
                self.empty_globs_logged.remove(pattern);
            } else if !walk.cut_short() && self.empty_globs_logged.insert(pattern.clone()) {
                warn!(glob = %pattern, "glob matches no file (yet): logged once until it matches");
            }
        }
        if shutdown.is_cancelled() {
            return;
        }
        if walk.cut_short() {
            if !self.scan_cut_logged {
                warn!(
                    max_entries = GLOB_SCAN_MAX_ENTRIES,
                    "glob scan stopped at its limit of directory entries: narrow the globs (logged once)"
                );
                self.scan_cut_logged = true;
            }
        } else {
            // A scan cut short did not look everywhere: a file it missed is not gone.
            for tailed in &mut self.files {
                if !tailed.rotated && !present.contains_key(&tailed.key) {
                    info!(path = %tailed.path.display(), "file rotated or removed: reading it to its end");
                    tailed.rotated = true;
                }
            }
        }
        for (key, path) in present {
            if self.files.iter().any(|tailed| tailed.key == key) {
                continue;
            }
            match self.open(key, &path) {
                Ok(tailed) => {
                    self.unreadable.remove(&path);
                    self.files.push(tailed);
                }
                Err(error) => {
                    if self.unreadable.insert(path.clone()) {
                        InputCounters::count(&self.counters.unreadable_files);
                        warn!(path = %path.display(), error = %error, "cannot open file (logged once until it opens)");
                    }
                }
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
            partial_bytes: 0,
            read_error_logged: false,
            joiner: MultilineJoiner::new(self.continuation.clone(), self.max_line_bytes),
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
            tailed.partial_bytes = 0;
            tailed.joiner = MultilineJoiner::new(self.continuation.clone(), self.max_line_bytes);
            tailed.head_bytes = 0;
            tailed.head_crc = crc32fast::hash(&[]);
        }
        let read = match tailed.file.read(&mut self.buffer) {
            Ok(read) => read,
            Err(error) => {
                if !tailed.read_error_logged {
                    tailed.read_error_logged = true;
                    InputCounters::count(&self.counters.unreadable_files);
                    warn!(path = %tailed.path.display(), error = %error, "cannot read file (logged once until a read succeeds)");
                }
                return Ok(false);
            }
        };
        tailed.read_error_logged = false;
        if read == 0 {
            if tailed.joiner.is_pending() && tailed.last_data.elapsed() >= MULTILINE_FLUSH_AFTER {
                self.flush_pending(index)?;
            }
            return Ok(false);
        }
        tailed.last_data = Instant::now();
        let data = &self.buffer[..read];
        let max_line_bytes = self.max_line_bytes;
        let line_start_offset = tailed.offset - tailed.partial_bytes;
        tailed.offset += read as u64;
        let mut events = Vec::with_capacity(MAX_CHUNK_EVENTS);
        let mut start = 0usize;
        let mut line_offset = line_start_offset;
        for end in memchr::memchr_iter(b'\n', data) {
            let piece = &data[start..end];
            let line_length = tailed.partial_bytes + piece.len() as u64 + 1;
            let truncated = line_length - 1 > max_line_bytes as u64;
            let line_bytes: &[u8] = if tailed.partial_bytes == 0 && !truncated {
                piece
            } else {
                append_bounded(&mut tailed.partial, piece, max_line_bytes);
                &tailed.partial
            };
            let text = lossy_line(line_bytes, truncated);
            let text = text.trim_end_matches('\r');
            if !text.trim().is_empty()
                && let Some(joined) = tailed.joiner.push(text, truncated, line_offset)
            {
                events.push(self.parser.parse_line(&joined, &self.counters));
            }
            tailed.partial.clear();
            tailed.partial_bytes = 0;
            line_offset += line_length;
            start = end + 1;
            if events.len() >= MAX_CHUNK_EVENTS {
                // The checkpoint of this chunk: every line before `line_offset`.
                let saved_offset = tailed.offset;
                tailed.offset = line_offset;
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
        let rest = &data[start..];
        append_bounded(&mut tailed.partial, rest, max_line_bytes);
        tailed.partial_bytes += rest.len() as u64;
        let checkpoint = tailed.checkpoint();
        send(&self.messages, events, checkpoint, &self.checkpoints)?;
        Ok(true)
    }

    /// Ships the event being joined (and, for a rotated file, its unterminated last line).
    fn flush_pending(&mut self, index: usize) -> Result<(), Closed> {
        let tailed = &mut self.files[index];
        let mut events = Vec::new();
        if let Some(joined) = tailed.joiner.flush() {
            events.push(self.parser.parse_line(&joined, &self.counters));
        }
        if tailed.rotated && tailed.partial_bytes > 0 {
            let truncated = tailed.partial_bytes > tailed.partial.len() as u64;
            let last_line = JoinedLine {
                text: lossy_line(&tailed.partial, truncated).into_owned(),
                truncated,
            };
            tailed.partial.clear();
            tailed.partial_bytes = 0;
            if !last_line.text.trim().is_empty() {
                events.push(self.parser.parse_line(&last_line, &self.counters));
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

/// One scan's walk of the globs: the directories under each glob's literal prefix, each
/// entered once (by device and inode, following symlinks), within a budget of directory
/// entries, given up when the agent stops.
struct GlobWalk<'a> {
    entries_left: usize,
    entered: HashSet<FileKey>,
    cut_short: bool,
    shutdown: &'a CancellationToken,
}

impl<'a> GlobWalk<'a> {
    fn new(max_entries: usize, shutdown: &'a CancellationToken) -> GlobWalk<'a> {
        GlobWalk {
            entries_left: max_entries,
            entered: HashSet::new(),
            cut_short: false,
            shutdown,
        }
    }

    /// Whether the walk stopped early (budget spent, or the agent stopping).
    fn cut_short(&self) -> bool {
        self.cut_short
    }

    /// Adds the regular files matching `pattern` to `found`; returns how many matched.
    fn expand(&mut self, pattern: &str, found: &mut HashMap<FileKey, PathBuf>) -> usize {
        // Checked when the config was read; a pattern that fails here matches nothing.
        let Ok(compiled) = glob::Pattern::new(pattern) else {
            return 0;
        };
        let options = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        let mut base = PathBuf::new();
        let mut rest = Vec::new();
        for component in Path::new(pattern).components() {
            let text = component.as_os_str().to_string_lossy();
            if rest.is_empty() && !text.contains(['*', '?', '[']) {
                base.push(component);
            } else {
                rest.push(text.into_owned());
            }
        }
        let mut matched = 0;
        let mut add = |path: PathBuf, metadata: &std::fs::Metadata| {
            let key = FileKey {
                dev: metadata.dev(),
                inode: metadata.ino(),
            };
            found.entry(key).or_insert(path);
            matched += 1;
        };
        if rest.is_empty() {
            if let Ok(metadata) = std::fs::metadata(&base)
                && metadata.is_file()
            {
                add(base, &metadata);
            }
            return matched;
        }
        // Without `**`, files lie exactly `rest.len()` levels below the base.
        let max_depth = if rest.iter().any(|part| part == "**") {
            usize::MAX
        } else {
            rest.len()
        };
        let mut directories = vec![(base, 1usize)];
        while let Some((directory, depth)) = directories.pop() {
            if self.shutdown.is_cancelled() {
                self.cut_short = true;
                return matched;
            }
            let listed = if directory.as_os_str().is_empty() {
                Path::new(".")
            } else {
                directory.as_path()
            };
            let Ok(metadata) = std::fs::metadata(listed) else {
                continue;
            };
            if !self.entered.insert(FileKey {
                dev: metadata.dev(),
                inode: metadata.ino(),
            }) {
                continue; // entered already: a symlink loop, or two globs over one tree
            }
            let Ok(entries) = std::fs::read_dir(listed) else {
                continue;
            };
            for entry in entries.flatten() {
                if self.entries_left == 0 {
                    self.cut_short = true;
                    return matched;
                }
                self.entries_left -= 1;
                let path = directory.join(entry.file_name());
                let Ok(metadata) = std::fs::metadata(&path) else {
                    continue;
                };
                if metadata.is_dir() {
                    if depth < max_depth {
                        directories.push((path, depth + 1));
                    }
                } else if metadata.is_file() && compiled.matches_path_with(&path, options) {
                    add(path, &metadata);
                }
            }
        }
        matched
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

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(pattern: &Path, max_entries: usize) -> (Vec<PathBuf>, bool) {
        let shutdown = CancellationToken::new();
        let mut walk = GlobWalk::new(max_entries, &shutdown);
        let mut found = HashMap::new();
        walk.expand(pattern.to_str().unwrap(), &mut found);
        let mut paths: Vec<PathBuf> = found.into_values().collect();
        paths.sort();
        (paths, walk.cut_short())
    }

    #[test]
    fn globs_match_as_the_shell_does_and_symlink_loops_end() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        for file in ["top.log", "a/one.log", "a/b/two.log", "a/b/skip.txt"] {
            std::fs::write(root.join(file), "x\n").unwrap();
        }
        std::os::unix::fs::symlink(root.join("a"), root.join("a/b/loop")).unwrap();

        let (paths, cut_short) = expand(&root.join("**/*.log"), 10_000);
        assert!(!cut_short);
        let expected: Vec<PathBuf> = ["a/b/two.log", "a/one.log", "top.log"]
            .iter()
            .map(|file| root.join(file))
            .collect();
        assert_eq!(paths, expected);
        // `*` does not cross a `/`.
        assert_eq!(expand(&root.join("*.log"), 10_000).0, [root.join("top.log")]);
        assert_eq!(expand(&root.join("a/*/two.log"), 10_000).0, [root.join("a/b/two.log")]);
        assert_eq!(expand(&root.join("top.log"), 10_000).0, [root.join("top.log")]);
        assert!(expand(&root.join("none/*.log"), 10_000).0.is_empty());
    }

    #[test]
    fn a_walk_stops_at_its_budget() {
        let dir = tempfile::tempdir().unwrap();
        for index in 0..20 {
            std::fs::write(dir.path().join(format!("{index}.log")), "x\n").unwrap();
        }
        let (paths, cut_short) = expand(&dir.path().join("*.log"), 5);
        assert!(cut_short);
        assert_eq!(paths.len(), 5);
    }
}
