//! Local alert outputs: console and JSONL file.
//!
//! Both are at-least-once: they are written before the source entries are settled, so a
//! crash in between writes them again on redelivery. Each line carries the alert id, by
//! which a reader can drop repeats. The alerts stream is exactly-once (see
//! [`crate::broker::scripts::SETTLE`]).

pub mod console;
pub mod file;

use super::alert::Alert;

pub struct LocalSinks {
    pub console: Option<console::ConsoleSink>,
    pub file: Option<file::JsonlFileSink>,
}

impl LocalSinks {
    /// Returns once every alert is written (and, for the file, flushed to disk).
    pub async fn deliver(&mut self, alerts: &[Alert]) -> std::io::Result<()> {
        if alerts.is_empty() {
            return Ok(());
        }
        if let Some(console) = &mut self.console {
            console.deliver(alerts)?;
        }
        if let Some(file) = &mut self.file {
            file.deliver(alerts).await?;
        }
        Ok(())
    }
}
