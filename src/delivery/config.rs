//! Sink configuration, the `[sinks.NAME]` tables of the rule file. Secrets (tokens, hook
//! URLs, passwords, signing keys) are read from the environment or a file and never logged.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::options::DurationMs;

/// Attempts before a record goes to the sink's dead letters, unless `max_attempts` is set.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 8;
/// Per attempt, unless `timeout` is set.
pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Where a secret comes from: `{ env = "NAME" }` or `{ file = "PATH" }` (trailing newline
/// dropped). A plain string is taken as the value itself (fine for a URL without a token).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Secret {
    Value(String),
    Source(SecretSource),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    pub env: Option<String>,
    pub file: Option<PathBuf>,
}

/// `{ messages = 1, per = "1s" }`: at most `messages` messages per `per`, shared by every
/// police (counted in Redis).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub messages: u64,
    pub per: DurationMs,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SinkConfig {
    Console {
        #[serde(default)]
        max_attempts: Option<u32>,
        #[serde(default)]
        rate_limit: Option<RateLimit>,
    },
    Jsonl {
        path: PathBuf,
        #[serde(default)]
        max_attempts: Option<u32>,
        #[serde(default)]
        rate_limit: Option<RateLimit>,
    },
    Webhook {
        url: Secret,
        /// HMAC-SHA256 signing key (Standard Webhooks: `whsec_` + base64, or raw bytes).
        secret: Option<Secret>,
        #[serde(default)]
        headers: BTreeMap<String, String>,
        #[serde(default)]
        max_attempts: Option<u32>,
        #[serde(default)]
        timeout: Option<DurationMs>,
        #[serde(default)]
        rate_limit: Option<RateLimit>,
    },
    Slack {
        url: Secret,
        #[serde(default)]
        max_attempts: Option<u32>,
        #[serde(default)]
        timeout: Option<DurationMs>,
        #[serde(default)]
        rate_limit: Option<RateLimit>,
    },
    Alertmanager {
        /// Every instance of the Alertmanager cluster (`http://host:9093`); each gets every alert.
        urls: Vec<String>,
        /// Re-send period of firing alerts. Default 60 s.
        #[serde(default)]
        resend_interval: Option<DurationMs>,
        #[serde(default)]
        max_attempts: Option<u32>,
        #[serde(default)]
        timeout: Option<DurationMs>,
    },
    Email {
        /// `host:port` of the SMTP server.
        smtp: String,
        /// `starttls` (default), `tls` or `none` (loopback test servers only).
        #[serde(default)]
        security: Option<String>,
        username: Option<Secret>,
        password: Option<Secret>,
        from: String,
        to: Vec<String>,
        /// PEM file of extra root certificates trusted for the server's TLS certificate
        /// (a private CA), beside the built-in Mozilla roots. Default: none.
        #[serde(default)]
        ca_file: Option<PathBuf>,
        #[serde(default)]
        max_attempts: Option<u32>,
        #[serde(default)]
        timeout: Option<DurationMs>,
        #[serde(default)]
        rate_limit: Option<RateLimit>,
    },
}
