//! Logging: `tracing` to stderr, filtered by `LOGSENTINEL_LOG` (default `info`), as text or
//! as one JSON object per line (`--log-format`).
//!
//! Invariant: no log line carries a Redis password. Call sites log URLs through
//! [`crate::broker::errors::redact_url`]; the writer redacts every line once more, because
//! an error of a library may quote a URL that no call site saw.

use std::io::{IsTerminal, Write};
use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::broker::errors::redact_credentials;
use crate::options::LogFormat;

/// The format chosen at [`init`]; text before it (unit tests, library use).
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// The format of log lines, for the lines written beside `tracing` (progress, summaries),
/// which must come out in the same format, and for child processes, which inherit it.
pub fn format() -> LogFormat {
    FORMAT.get().copied().unwrap_or_default()
}

/// Starts logging. `silent` turns it off (a full-screen view owns the terminal).
pub fn init(format: LogFormat, silent: bool) {
    let _ = FORMAT.set(format);
    let filter = if silent {
        EnvFilter::new("off")
    } else {
        EnvFilter::try_from_env("LOGSENTINEL_LOG").unwrap_or_else(|_| EnvFilter::new("info"))
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(RedactingStderr)
        .with_target(false)
        // A log line that cannot be written (stderr a closed pipe) is dropped: reporting it
        // would `eprintln!` to the same stderr and panic, killing the task that logged, the
        // signal handler among them, and a stop request would then be ignored.
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        // Flattened: `message` and the event's fields at the top level, the names the text
        // format prints as `key=value`.
        LogFormat::Json => builder.json().flatten_event(true).with_ansi(false).init(),
    }
}

/// Stderr, each line with its credentials replaced by `***`.
struct RedactingStderr;

impl<'a> MakeWriter<'a> for RedactingStderr {
    type Writer = RedactingWriter;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter { line: Vec::new() }
    }
}

/// Collects one formatted event (the formatter writes it in pieces) and writes it redacted,
/// in one write, when dropped.
struct RedactingWriter {
    line: Vec<u8>,
}

impl Write for RedactingWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for RedactingWriter {
    fn drop(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let redacted = redact_credentials(&String::from_utf8_lossy(&self.line));
        // Ignored on purpose: see `log_internal_errors` above.
        let _ = std::io::stderr().lock().write_all(redacted.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_written_redacted() {
        let mut writer = RedactingWriter { line: Vec::new() };
        writer
            .write_all(b"cannot reach redis://app:s3cret@db:6379/0\n")
            .unwrap();
        let redacted = redact_credentials(&String::from_utf8_lossy(&writer.line));
        assert_eq!(redacted, "cannot reach redis://app:***@db:6379/0\n");
        writer.line.clear(); // nothing printed by this test
    }
}
