//! The HTTP side of the HTTP sinks (webhook, Slack, Alertmanager): one client per sink,
//! a POST whose answer is mapped to delivered, retry (with the receiver's `Retry-After`)
//! or permanent.
//!
//! Client: reqwest without default features, with rustls on the `ring` provider (the one
//! the crate already uses for Redis TLS) and the Mozilla roots compiled in (webpki-roots),
//! so a container without a CA bundle still verifies hooks. No HTTP/2, proxies, cookies or
//! decompression: a POST of a small JSON body needs none of them. Redirects are not
//! followed (a POST turned into a GET would be "delivered" nowhere).
//!
//! URLs are secrets (a Slack hook URL is its own token, a webhook or Alertmanager URL may
//! carry one in its query): where a URL must be named, [`redact_url`] shows only
//! `scheme://host:port`, and the client's errors are stripped of URLs before they are shown
//! (logs, dead letters).

use std::time::{Duration, SystemTime};

use super::SinkError;
use super::config::{ResolvedSecret, SetupError};
use super::retry::{Verdict, parse_retry_after, verdict};

/// Most bytes of a refusal's body kept for the log: enough for Slack's `invalid_token` or
/// a JSON error, bounded so a large error page cannot flood the log.
const MAX_ERROR_BODY_CHARS: usize = 200;

/// A client for one sink, every attempt bounded by `timeout`.
pub fn client(sink: &str, timeout: Duration) -> Result<reqwest::Client, SetupError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("logsentinel/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|error| SetupError::Invalid {
            sink: sink.to_string(),
            problem: format!("cannot build the HTTP client: {}", error.without_url()),
        })
}

/// Checks that a hook URL is an absolute http(s) URL; the error never quotes it.
pub fn check_url(sink: &str, url: &ResolvedSecret) -> Result<reqwest::Url, SetupError> {
    let parsed = reqwest::Url::parse(url.expose()).map_err(|error| SetupError::Invalid {
        sink: sink.to_string(),
        problem: format!("url is not a valid URL ({error})"),
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(SetupError::Invalid {
            sink: sink.to_string(),
            problem: "url must be an http:// or https:// URL with a host".into(),
        });
    }
    Ok(parsed)
}

/// A URL as it may be shown: `scheme://host:port`, then `/***` when it has a path beyond
/// `/` and `?***` when it has a query. Credentials, path and query are left out: any of them
/// may be the secret (a Slack hook's path, a `?token=`), and none is needed to tell which
/// receiver is meant.
pub fn redact_url(url: &str) -> String {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return "(not a URL)".into();
    };
    let mut shown = format!("{}://{}", parsed.scheme(), parsed.host_str().unwrap_or(""));
    if let Some(port) = parsed.port() {
        shown.push_str(&format!(":{port}"));
    }
    if !matches!(parsed.path(), "" | "/") {
        shown.push_str("/***");
    }
    if parsed.query().is_some() {
        shown.push_str("?***");
    }
    shown
}

/// `text` with every `http(s)://…` in it redacted by [`redact_url`]: for error messages of
/// libraries that may quote the URL they were given.
pub fn redact_urls_in(text: &str) -> String {
    static URL: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r#"(?i)https?://[^\s"'<>()]+"#).expect("the URL pattern is valid")
    });
    URL.replace_all(text, |captures: &regex::Captures| redact_url(&captures[0]))
        .into_owned()
}

/// POSTs `body` with `headers`; `Ok` only on 2xx. Errors carry the status (`500`,
/// `connect error`, `timeout`), never the URL.
pub async fn post(
    client: &reqwest::Client,
    sink: &str,
    url: &reqwest::Url,
    body: Vec<u8>,
    headers: &[(&str, String)],
) -> Result<(), SinkError> {
    let mut request = client.post(url.clone()).body(body);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) => {
            let status = if error.is_timeout() {
                "timeout".to_string()
            } else if error.is_connect() {
                format!("connect error: {}", redact_urls_in(&error_chain(&error)))
            } else {
                format!("request failed: {}", redact_urls_in(&error_chain(&error)))
            };
            return Err(SinkError::Retryable {
                sink: sink.to_string(),
                status,
                retry_after: None,
            });
        }
    };
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| parse_retry_after(value, SystemTime::now()));
    // At most the first 4 KiB of the body are read, for the log line: a hostile receiver
    // answering with a gigabyte must not fill the police's memory. A longer body ends the
    // connection instead of being drained; one that fails to arrive after a 2xx does not
    // undo the delivery.
    let answer = read_body_prefix(response).await;
    match verdict(status) {
        Verdict::Delivered => Ok(()),
        Verdict::Retry => {
            tracing::debug!(sink, status, body = %printable_prefix(&answer), "receiver asked for a retry");
            Err(SinkError::Retryable {
                sink: sink.to_string(),
                status: status.to_string(),
                retry_after,
            })
        }
        Verdict::Permanent => {
            tracing::warn!(sink, status, body = %printable_prefix(&answer), "receiver refused the message");
            Err(SinkError::Permanent {
                sink: sink.to_string(),
                status: status.to_string(),
            })
        }
    }
}

/// Bytes of a receiver's answer kept for the log line.
const ANSWER_PREFIX_BYTES: usize = 4096;

async fn read_body_prefix(mut response: reqwest::Response) -> String {
    let mut prefix = Vec::new();
    while prefix.len() < ANSWER_PREFIX_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = ANSWER_PREFIX_BYTES - prefix.len();
                prefix.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    String::from_utf8_lossy(&prefix).into_owned()
}

/// The error and its causes, without the URL reqwest puts in its messages.
fn error_chain(error: &reqwest::Error) -> String {
    use std::error::Error;
    let mut text = String::new();
    let mut cause: Option<&dyn Error> = error.source();
    while let Some(current) = cause {
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&current.to_string());
        cause = current.source();
    }
    if text.is_empty() {
        text = "no detail".into();
    }
    text
}

/// The first characters of a receiver's answer, control characters replaced.
fn printable_prefix(text: &str) -> String {
    // A receiver may echo the URL it was called on.
    redact_urls_in(text)
        .chars()
        .take(MAX_ERROR_BODY_CHARS)
        .map(|character| if character.is_control() { ' ' } else { character })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_urls_keep_only_scheme_host_and_port() {
        let slack = "https://hooks.slack.com/services/T000/B000/XXXXSECRET";
        assert_eq!(redact_url(slack), "https://hooks.slack.com/***");
        assert_eq!(
            redact_url("http://user:pw@am.internal:9093/am/?token=SECRET"),
            "http://am.internal:9093/***?***"
        );
        assert_eq!(redact_url("http://[::1]:9093/"), "http://[::1]:9093");
        assert_eq!(
            redact_url("https://hooks.example.com?token=SECRET"),
            "https://hooks.example.com?***"
        );
        assert_eq!(redact_url("not a url SECRET"), "(not a URL)");
        let text = format!("error sending request for url ({slack}): refused; see http://x:1/a?k=SECRET.");
        let redacted = redact_urls_in(&text);
        assert!(!redacted.contains("SECRET"), "{redacted}");
        assert!(redacted.contains("(https://hooks.slack.com/***)"), "{redacted}");
    }
}
