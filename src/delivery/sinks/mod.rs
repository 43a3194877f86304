//! One file per sink: console, jsonl, webhook, slack, alertmanager, email.

pub mod alertmanager;
pub mod console;
pub mod email;
pub mod jsonl;
pub mod slack;
pub mod webhook;

use super::AlertSink;
use super::config::{SetupError, SinkConfig};

/// Builds a sink from its table: secrets resolved, files opened, URLs checked. Every
/// problem stops startup, naming the sink (never the secret).
pub async fn build(name: &str, config: &SinkConfig) -> Result<Box<dyn AlertSink>, SetupError> {
    config.validate(name)?;
    let timeout = config.timeout();
    match config {
        SinkConfig::Console { .. } => Ok(Box::new(console::ConsoleSink { name: name.to_string() })),
        SinkConfig::Jsonl { path, .. } => Ok(Box::new(jsonl::JsonlSink::open(name, path).await?)),
        SinkConfig::Webhook {
            url, secret, headers, ..
        } => {
            let url = url.resolve(name, "url").await?;
            let secret = match secret {
                Some(secret) => Some(secret.resolve(name, "secret").await?),
                None => None,
            };
            Ok(Box::new(webhook::WebhookSink::new(
                name,
                &url,
                secret.as_ref(),
                headers,
                timeout,
            )?))
        }
        SinkConfig::Slack { url, .. } => {
            let url = url.resolve(name, "url").await?;
            Ok(Box::new(slack::SlackSink::new(name, &url, timeout)?))
        }
        SinkConfig::Alertmanager { .. } => Ok(Box::new(
            alertmanager::AlertmanagerSink::from_config(name, config).await?,
        )),
        SinkConfig::Email { .. } => Ok(Box::new(email::EmailSink::from_config(name, config).await?)),
    }
}
