//! Alerts as human-readable lines on stdout.

use std::io::Write;

use crate::police::alert::Alert;

pub struct ConsoleSink;

impl ConsoleSink {
    pub fn deliver(&mut self, alerts: &[Alert]) -> std::io::Result<()> {
        // One lock and one flush per batch; stdout writes are short, so no spawn_blocking.
        let mut stdout = std::io::stdout().lock();
        for alert in alerts {
            writeln!(stdout, "{}", alert.console_line())?;
        }
        stdout.flush()
    }
}
