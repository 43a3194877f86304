//! `agent --source stdin`: every line of standard input becomes one event (or, with
//! `--multiline-continuation`, a line and its continuation lines), so that
//! `myprog | logsentinel agent --source stdin` ships a program's output.
//!
//! No line is dropped: lines that are neither JSON nor logfmt are shipped as plain text
//! (level from the level pattern or a level word, or UNKNOWN); invalid UTF-8 is replaced,
//! not refused. The source ends at end of input.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::sources::{LineParser, MultilineJoiner, SourceMessage};

/// A joined event is shipped when no continuation line came for this long.
pub const MULTILINE_FLUSH_AFTER: Duration = Duration::from_millis(500);

pub async fn read_lines(
    parser: LineParser,
    mut joiner: MultilineJoiner,
    messages: mpsc::Sender<SourceMessage>,
    shutdown: CancellationToken,
) {
    let mut reader = BufReader::new(tokio::io::stdin());
    let mut line_bytes = Vec::with_capacity(1024);
    loop {
        line_bytes.clear();
        let read = tokio::select! {
            read = reader.read_until(b'\n', &mut line_bytes) => read,
            _ = tokio::time::sleep(MULTILINE_FLUSH_AFTER), if joiner.is_pending() => {
                if let Some(text) = joiner.flush()
                    && messages.send(SourceMessage::Event(parser.parse(&text))).await.is_err()
                {
                    return;
                }
                continue;
            }
            _ = shutdown.cancelled() => break,
        };
        let end_of_input = match read {
            Ok(read_bytes) => read_bytes == 0,
            Err(error) => {
                tracing::error!(error = %error, "cannot read standard input");
                true
            }
        };
        let line = String::from_utf8_lossy(&line_bytes);
        let line = line.trim_end_matches(['\n', '\r']);
        if !line.trim().is_empty()
            && let Some(text) = joiner.push(line, 0)
            && messages.send(SourceMessage::Event(parser.parse(&text))).await.is_err()
        {
            return;
        }
        if end_of_input {
            break;
        }
    }
    if let Some(text) = joiner.flush() {
        let _ = messages.send(SourceMessage::Event(parser.parse(&text))).await;
    }
}
