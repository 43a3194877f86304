//! `agent --source stdin`: every line of standard input becomes one event, so that
//! `myprog | logsentinel agent --source stdin` ships a program's output.
//!
//! No line is dropped: lines that are neither JSON nor logfmt are shipped as plain text
//! (level from a level word, or UNKNOWN); invalid UTF-8 is replaced, not refused. The
//! source ends at end of input.

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::event::foreign::Defaults;
use crate::event::line::parse_line;
use crate::event::{Level, LogEvent};

pub async fn read_lines(service: String, events: mpsc::Sender<LogEvent>, shutdown: CancellationToken) {
    let host = crate::hostname();
    let defaults = Defaults {
        level: Level::Unknown,
        service: &service,
        host: &host,
    };
    let mut reader = BufReader::new(tokio::io::stdin());
    let mut line_bytes = Vec::with_capacity(1024);
    loop {
        line_bytes.clear();
        let read = tokio::select! {
            read = reader.read_until(b'\n', &mut line_bytes) => read,
            _ = shutdown.cancelled() => return,
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
        if !line.trim().is_empty() {
            // The id is given by the batching loop.
            let (event, _format) = parse_line("", line, &defaults);
            if events.send(event).await.is_err() {
                return;
            }
        }
        if end_of_input {
            return;
        }
    }
}
