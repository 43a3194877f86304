//! `console`: one line per alert on stdout ([`Alert::console_line`]), flushed before the
//! record is acknowledged. A digest prints each of its alerts.

use std::io::Write;

use crate::delivery::{AlertSink, Message, SinkError};

pub struct ConsoleSink {
    pub name: String,
}

#[async_trait::async_trait]
impl AlertSink for ConsoleSink {
    async fn deliver(&self, message: &Message<'_>) -> Result<(), SinkError> {
        let mut text = String::new();
        for alert in message.alerts() {
            text.push_str(&alert.console_line());
            text.push('\n');
        }
        // One short write and a flush: cheap enough for the runtime thread (no spawn_blocking).
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
            .map_err(|error| SinkError::Retryable {
                sink: self.name.clone(),
                status: format!("stdout: {error}"),
                retry_after: None,
            })
    }
}
