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

use super::config::{ResolvedSecret, SetupError};
use super::retry::{Verdict, parse_retry_after, verdict};
use super::{SinkError, shown_status};

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
            // The causes may quote the peer (a TLS alert, a certificate's names).
            let status = if error.is_timeout() {
                "timeout".to_string()
            } else if error.is_connect() {
                shown_status(&format!("connect error: {}", redact_urls_in(&error_chain(&error))))
            } else {
                shown_status(&format!("request failed: {}", redact_urls_in(&error_chain(&error))))
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
    // The answer's body is read (so the connection can serve the next request) and counted,
    // never shown: the log and the dead letters get the status code and the body's length
    // only. The body is the receiver's text: it may echo what it was sent, secrets included
    // (Express's default 404 page is `Cannot POST /services/T000/B000/XXXX`, and a Slack
    // hook's path is its token; a proxy may echo the Authorization header made from a URL's
    // credentials), in forms no redaction can recognise, and a hostile receiver writes what
    // it likes (fake log lines, terminal escapes). To read a refusal, send the request by
    // hand. At most the first 4 KiB are read: a receiver answering with a gigabyte must not
    // hold the police; a longer body ends the connection instead of being drained, and one
    // that fails to arrive after a 2xx does not undo the delivery.
    let body_bytes = read_body_length(response).await;
    match verdict(status) {
        Verdict::Delivered => Ok(()),
        Verdict::Retry => {
            tracing::debug!(sink, status, body_bytes, "receiver asked for a retry");
            Err(SinkError::Retryable {
                sink: sink.to_string(),
                status: status.to_string(),
                retry_after,
            })
        }
        Verdict::Permanent => {
            tracing::warn!(sink, status, body_bytes, "receiver refused the message");
            Err(SinkError::Permanent {
                sink: sink.to_string(),
                status: status.to_string(),
            })
        }
    }
}

/// Bytes of a receiver's answer read at most (see [`post`]).
const ANSWER_READ_BYTES: usize = 4096;

/// The length of the answer's body, counted up to [`ANSWER_READ_BYTES`] (a longer one is
/// reported as that many).
async fn read_body_length(mut response: reqwest::Response) -> usize {
    let mut read_bytes = 0usize;
    while read_bytes < ANSWER_READ_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => read_bytes += chunk.len(),
            Ok(None) | Err(_) => break,
        }
    }
    read_bytes.min(ANSWER_READ_BYTES)
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
