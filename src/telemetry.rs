//! Logging: `tracing` to stderr, filtered by `LOGSENTINEL_LOG` (default `info`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_env("LOGSENTINEL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        // A log line that cannot be written (stderr a closed pipe) is dropped: reporting it
        // would `eprintln!` to the same stderr and panic, killing the task that logged, the
        // signal handler among them, and a stop request would then be ignored.
        .log_internal_errors(false)
        .init();
}
