//! Alerts appended to a JSONL file, one alert per line, synced before acknowledgement.

use std::path::Path;

use tokio::fs::{File, OpenOptions};
use tokio::io::AsyncWriteExt;

use crate::police::alert::Alert;

pub struct JsonlFileSink {
    file: File,
}

impl JsonlFileSink {
    pub async fn open(path: &Path) -> std::io::Result<JsonlFileSink> {
        let file = OpenOptions::new().create(true).append(true).open(path).await?;
        Ok(JsonlFileSink { file })
    }

    pub async fn deliver(&mut self, alerts: &[Alert]) -> std::io::Result<()> {
        let mut lines = Vec::with_capacity(alerts.len() * 400);
        for alert in alerts {
            serde_json::to_writer(&mut lines, alert).map_err(std::io::Error::other)?;
            lines.push(b'\n');
        }
        self.file.write_all(&lines).await?;
        self.file.sync_data().await
    }
}
