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
/// Every URL of a sink (`url`, each of `urls`) and every credential takes this syntax.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Secret {
    Value(String),
    Source(SecretSource),
}

/// A plain value is shown as `"***"`: a config dumped to a log or a message never shows one.
impl std::fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Value(_) => formatter.write_str("Value(***)"),
            Secret::Source(source) => source.fmt(formatter),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    pub env: Option<String>,
    pub file: Option<PathBuf>,
}

/// `{ messages = 1, per = "1s" }`: at most `messages` messages per `per`, shared by every
/// police (counted in Redis).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub messages: u64,
    pub per: DurationMs,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
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
        /// Every instance of the Alertmanager cluster (`http://host:9093`); each gets every
        /// alert. Each URL is a [`Secret`]: a plain string, `{ env }` or `{ file }`.
        urls: Vec<Secret>,
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

/// Slack's documented limit for incoming webhooks: about one message per second per hook.
pub const SLACK_DEFAULT_RATE_LIMIT: RateLimit = RateLimit {
    messages: 1,
    per: DurationMs(std::time::Duration::from_secs(1)),
};

/// A secret read at startup. Its `Debug` shows `***`: a resolved secret never reaches a log.
#[derive(Clone)]
pub struct ResolvedSecret(String);

impl ResolvedSecret {
    /// The value, for the one place that sends it (a request URL, a signing key).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ResolvedSecret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("ResolvedSecret(***)")
    }
}

/// Why a sink cannot start. Raised at startup only; the police exits 2 naming the sink.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("sink {sink}: secret {what}: environment variable {variable} is not set")]
    MissingEnv {
        sink: String,
        what: String,
        variable: String,
    },
    #[error("sink {sink}: secret {what}: environment variable {variable} is empty")]
    EmptyEnv {
        sink: String,
        what: String,
        variable: String,
    },
    #[error("sink {sink}: secret {what}: {path} is empty")]
    EmptyFile { sink: String, what: String, path: PathBuf },
    #[error("sink {sink}: secret {what}: cannot read {path}")]
    SecretFile {
        sink: String,
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("sink {sink}: secret {what}: give exactly one of env and file")]
    SecretSource { sink: String, what: String },
    #[error("sink {sink}: cannot open {path}")]
    File {
        sink: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("sink {sink}: {problem}")]
    Invalid { sink: String, problem: String },
}

impl Secret {
    /// Reads the secret (environment or file, trailing newline dropped). `what` names it
    /// in errors (`url`, `secret`, `password`); the value itself is never quoted. A variable
    /// or file that is there but empty is an error too: an empty token never works.
    pub async fn resolve(&self, sink: &str, what: &str) -> Result<ResolvedSecret, SetupError> {
        match self {
            Secret::Value(value) => Ok(ResolvedSecret(value.clone())),
            Secret::Source(SecretSource {
                env: Some(variable),
                file: None,
            }) => match std::env::var_os(variable) {
                None => Err(SetupError::MissingEnv {
                    sink: sink.to_string(),
                    what: what.to_string(),
                    variable: variable.clone(),
                }),
                Some(value) if value.is_empty() => Err(SetupError::EmptyEnv {
                    sink: sink.to_string(),
                    what: what.to_string(),
                    variable: variable.clone(),
                }),
                Some(value) => value
                    .into_string()
                    .map(ResolvedSecret)
                    .map_err(|_| SetupError::Invalid {
                        sink: sink.to_string(),
                        problem: format!("secret {what}: environment variable {variable} is not UTF-8"),
                    }),
            },
            Secret::Source(SecretSource {
                env: None,
                file: Some(path),
            }) => {
                let text = tokio::fs::read_to_string(path)
                    .await
                    .map_err(|source| SetupError::SecretFile {
                        sink: sink.to_string(),
                        what: what.to_string(),
                        path: path.clone(),
                        source,
                    })?;
                let value = text.strip_suffix('\n').unwrap_or(&text);
                let value = value.strip_suffix('\r').unwrap_or(value);
                if value.is_empty() {
                    return Err(SetupError::EmptyFile {
                        sink: sink.to_string(),
                        what: what.to_string(),
                        path: path.clone(),
                    });
                }
                Ok(ResolvedSecret(value.to_string()))
            }
            Secret::Source(_) => Err(SetupError::SecretSource {
                sink: sink.to_string(),
                what: what.to_string(),
            }),
        }
    }
}

/// Resolves every secret of every sink and returns every problem, not only the first, so
/// that one start shows all the variables and files to fix.
pub async fn check_secrets<'a>(sinks: impl IntoIterator<Item = (&'a str, &'a SinkConfig)>) -> Vec<SetupError> {
    let mut problems = Vec::new();
    for (sink, config) in sinks {
        for (what, secret) in config.secrets() {
            if let Err(problem) = secret.resolve(sink, &what).await {
                problems.push(problem);
            }
        }
    }
    problems
}

impl SinkConfig {
    /// The `type` key: `console`, `jsonl`, `webhook`, `slack`, `alertmanager`, `email`.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Console { .. } => "console",
            SinkConfig::Jsonl { .. } => "jsonl",
            SinkConfig::Webhook { .. } => "webhook",
            SinkConfig::Slack { .. } => "slack",
            SinkConfig::Alertmanager { .. } => "alertmanager",
            SinkConfig::Email { .. } => "email",
        }
    }

    /// Every secret of the sink with the key that holds it (`url`, `urls[1]`, `password`).
    pub fn secrets(&self) -> Vec<(String, &Secret)> {
        match self {
            SinkConfig::Console { .. } | SinkConfig::Jsonl { .. } => Vec::new(),
            SinkConfig::Webhook { url, secret, .. } => std::iter::once(("url".to_string(), url))
                .chain(secret.iter().map(|secret| ("secret".to_string(), secret)))
                .collect(),
            SinkConfig::Slack { url, .. } => vec![("url".to_string(), url)],
            SinkConfig::Alertmanager { urls, .. } => urls
                .iter()
                .enumerate()
                .map(|(index, url)| (format!("urls[{index}]"), url))
                .collect(),
            SinkConfig::Email { username, password, .. } => username
                .iter()
                .map(|username| ("username".to_string(), username))
                .chain(password.iter().map(|password| ("password".to_string(), password)))
                .collect(),
        }
    }

    /// Attempts per message before its alerts go to the sink's dead letters (default 8).
    pub fn max_attempts(&self) -> u32 {
        let configured = match self {
            SinkConfig::Console { max_attempts, .. }
            | SinkConfig::Jsonl { max_attempts, .. }
            | SinkConfig::Webhook { max_attempts, .. }
            | SinkConfig::Slack { max_attempts, .. }
            | SinkConfig::Alertmanager { max_attempts, .. }
            | SinkConfig::Email { max_attempts, .. } => *max_attempts,
        };
        configured.unwrap_or(DEFAULT_MAX_ATTEMPTS)
    }

    /// Longest one attempt may take (default 10 s).
    pub fn timeout(&self) -> std::time::Duration {
        let configured = match self {
            SinkConfig::Console { .. } | SinkConfig::Jsonl { .. } => None,
            SinkConfig::Webhook { timeout, .. }
            | SinkConfig::Slack { timeout, .. }
            | SinkConfig::Alertmanager { timeout, .. }
            | SinkConfig::Email { timeout, .. } => *timeout,
        };
        configured.map(|timeout| timeout.0).unwrap_or(DEFAULT_TIMEOUT)
    }

    /// Messages per period, shared by every police; `None`: unlimited. Slack defaults to
    /// one message per second.
    pub fn rate_limit(&self) -> Option<RateLimit> {
        match self {
            SinkConfig::Slack { rate_limit, .. } => Some(rate_limit.clone().unwrap_or(SLACK_DEFAULT_RATE_LIMIT)),
            SinkConfig::Console { rate_limit, .. }
            | SinkConfig::Jsonl { rate_limit, .. }
            | SinkConfig::Webhook { rate_limit, .. }
            | SinkConfig::Email { rate_limit, .. } => rate_limit.clone(),
            SinkConfig::Alertmanager { .. } => None,
        }
    }

    /// Checks the values serde cannot: attempts, limits and timeouts in range.
    pub fn validate(&self, sink: &str) -> Result<(), SetupError> {
        let invalid = |problem: String| SetupError::Invalid {
            sink: sink.to_string(),
            problem,
        };
        let attempts = self.max_attempts();
        if !(1..=1000).contains(&attempts) {
            return Err(invalid(format!("max_attempts {attempts} is not between 1 and 1000")));
        }
        let timeout = self.timeout();
        if timeout < std::time::Duration::from_millis(1) || timeout > std::time::Duration::from_secs(300) {
            return Err(invalid(format!("timeout {timeout:?} is not between 1ms and 5m")));
        }
        if let Some(limit) = self.rate_limit() {
            if limit.messages == 0 {
                return Err(invalid("rate_limit.messages must be at least 1".into()));
            }
            if limit.per.0 < std::time::Duration::from_millis(1) || limit.per.0 > std::time::Duration::from_secs(86_400)
            {
                return Err(invalid(format!(
                    "rate_limit.per {:?} is not between 1ms and 1d",
                    limit.per.0
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resolved_secret_never_shows_in_debug() {
        let secret = ResolvedSecret("https://hooks.slack.com/services/T/B/token".into());
        assert_eq!(format!("{secret:?}"), "ResolvedSecret(***)");
        assert_eq!(secret.expose(), "https://hooks.slack.com/services/T/B/token");
    }

    #[tokio::test]
    async fn secrets_come_from_a_value_the_environment_or_a_file() {
        let value = Secret::Value("plain".into());
        assert_eq!(value.resolve("s", "url").await.unwrap().expose(), "plain");
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "from-file\n").unwrap();
        let from_file = Secret::Source(SecretSource {
            env: None,
            file: Some(file.path().to_path_buf()),
        });
        assert_eq!(from_file.resolve("s", "secret").await.unwrap().expose(), "from-file");
        let missing = Secret::Source(SecretSource {
            env: Some("LOGSENTINEL_TEST_UNSET_SECRET_VARIABLE".into()),
            file: None,
        });
        let error = missing.resolve("ops", "secret").await.unwrap_err().to_string();
        assert!(error.contains("LOGSENTINEL_TEST_UNSET_SECRET_VARIABLE"), "{error}");
        let both = Secret::Source(SecretSource {
            env: Some("X".into()),
            file: Some("/nonexistent".into()),
        });
        assert!(both.resolve("ops", "secret").await.is_err());
    }

    #[test]
    fn slack_is_limited_to_one_message_per_second_by_default() {
        let slack: SinkConfig = toml::from_str("type = \"slack\"\nurl = \"http://127.0.0.1:1/hook\"\n").unwrap();
        let limit = slack.rate_limit().unwrap();
        assert_eq!((limit.messages, limit.per.0), (1, std::time::Duration::from_secs(1)));
        let webhook: SinkConfig = toml::from_str("type = \"webhook\"\nurl = \"http://127.0.0.1:1/\"\n").unwrap();
        assert!(webhook.rate_limit().is_none());
        assert_eq!(webhook.max_attempts(), DEFAULT_MAX_ATTEMPTS);
        assert_eq!(webhook.timeout(), DEFAULT_TIMEOUT);
    }
}
