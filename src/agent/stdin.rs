//! `agent --source stdin`: every line of standard input becomes one event (or, with
//! `--multiline-continuation`, a line and its continuation lines), so that
//! `myprog | logsentinel agent --source stdin` ships a program's output.
//!
//! No line is dropped: lines that are neither JSON nor logfmt are shipped as plain text
//! (level from the level pattern or a level word, or UNKNOWN); invalid UTF-8 is replaced,
//! not refused. A line longer than `max_line_bytes` is cut there (marked and counted), the
//! rest of it read and discarded: memory stays bounded whatever the input. The source ends
//! at end of input.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::BufReader;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::sources::{
    InputCounters, LineBuffer, LineParser, MultilineJoiner, SourceMessage, lossy_line, read_line_bounded,
};

/// A joined event is shipped when no continuation line came for this long.
pub const MULTILINE_FLUSH_AFTER: Duration = Duration::from_millis(500);

pub async fn read_lines(
    parser: LineParser,
    mut joiner: MultilineJoiner,
    max_line_bytes: usize,
    counters: Arc<InputCounters>,
    messages: mpsc::Sender<SourceMessage>,
    shutdown: CancellationToken,
) {
    let mut reader = BufReader::new(tokio::io::stdin());
    let mut line = LineBuffer::default();
    loop {
        let read = tokio::select! {
            // Cancel-safe: a line read halfway stays in `line` for the next round.
            read = read_line_bounded(&mut reader, &mut line, max_line_bytes, None) => read,
            _ = tokio::time::sleep(MULTILINE_FLUSH_AFTER), if joiner.is_pending() => {
                if let Some(joined) = joiner.flush()
                    && messages.send(SourceMessage::Event(parser.parse_line(&joined, &counters))).await.is_err()
                {
                    return;
                }
                continue;
            }
            _ = shutdown.cancelled() => break,
        };
        let end_of_input = match read {
            Ok(got_line) => !got_line,
            Err(error) => {
                tracing::error!(error = %error, "cannot read standard input");
                true
            }
        };
        let text = lossy_line(&line.bytes, line.truncated);
        let text = text.trim_end_matches(['\n', '\r']);
        let joined = if text.trim().is_empty() {
            None
        } else {
            joiner.push(text, line.truncated, 0)
        };
        line.clear();
        if let Some(joined) = joined
            && messages
                .send(SourceMessage::Event(parser.parse_line(&joined, &counters)))
                .await
                .is_err()
        {
            return;
        }
        if end_of_input {
            break;
        }
    }
    if let Some(joined) = joiner.flush() {
        let _ = messages
            .send(SourceMessage::Event(parser.parse_line(&joined, &counters)))
            .await;
    }
}
