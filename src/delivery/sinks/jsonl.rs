//! `jsonl`: one JSON alert record per line appended to a file opened at startup, written
//! and `fdatasync`ed before the record is acknowledged. A digest appends each of its
//! alerts. Several police may append to one file: each message is one `write` on a file
//! opened with `O_APPEND`, so lines of two writers do not interleave.

use std::path::{Path, PathBuf};

use tokio::fs::{File, OpenOptions};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use crate::delivery::config::SetupError;
use crate::delivery::{AlertSink, Message, SinkError};

pub struct JsonlSink {
    name: String,
    path: PathBuf,
    /// A tokio mutex: held across the write and the sync, one message at a time.
    file: Mutex<File>,
}

impl JsonlSink {
    /// Opens (creates) the file for appending; a path that cannot be opened stops startup.
    pub async fn open(name: &str, path: &Path) -> Result<JsonlSink, SetupError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .map_err(|source| SetupError::File {
                sink: name.to_string(),
                path: path.to_path_buf(),
                source,
            })?;
        Ok(JsonlSink {
            name: name.to_string(),
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }
}

#[async_trait::async_trait]
impl AlertSink for JsonlSink {
    async fn deliver(&self, message: &Message<'_>) -> Result<(), SinkError> {
        let alerts = message.alerts();
        let mut lines = Vec::with_capacity(alerts.len() * 512);
        for alert in alerts {
            lines.extend_from_slice(alert.to_json().as_bytes());
            lines.push(b'\n');
        }
        let failed = |error: std::io::Error| SinkError::Retryable {
            sink: self.name.clone(),
            status: format!("{}: {error}", self.path.display()),
            retry_after: None,
        };
        let mut file = self.file.lock().await;
        file.write_all(&lines).await.map_err(failed)?;
        file.flush().await.map_err(failed)?;
        file.sync_data().await.map_err(failed)
    }
}
