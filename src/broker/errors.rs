//! What a Redis error means for the caller: wait and retry, hold writers back, or stop.
//!
//! An outage (connection refused, reset, timeout, a replica promoted, Redis loading its
//! data) heals by itself: callers retry with [`super::Backoff`]. Out of memory heals when
//! the consumers catch up: writers hold back, the consumers that free memory go on.
//! Everything else the server refuses (wrong password, missing ACL permission, a key of
//! the wrong type, an invalid argument, a failing script) stays refused however often it
//! is retried, so it is reported as what it is, never as "unreachable".

use redis::{ErrorKind, RedisError};

/// How a failed Redis call should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Network, timeout, restart, failover: retry with backoff.
    Unreachable,
    /// `OOM command not allowed when used memory > 'maxmemory'`: back-pressure on writers.
    OutOfMemory,
    /// Auth, ACL, type, argument or script errors: retrying cannot help.
    Refused,
}

/// Error codes of a server that is up but temporarily cannot serve the command.
const TRANSIENT_CODES: &[&str] = &[
    "LOADING",
    "BUSY",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "MASTERDOWN",
    "READONLY",
    "MOVED",
    "ASK",
];

pub fn classify(error: &RedisError) -> Failure {
    let code = error.code();
    if code == Some("OOM") {
        return Failure::OutOfMemory;
    }
    if code.is_some_and(|code| TRANSIENT_CODES.contains(&code)) {
        return Failure::Unreachable;
    }
    match error.kind() {
        ErrorKind::AuthenticationFailed | ErrorKind::InvalidClientConfig => Failure::Refused,
        ErrorKind::Server(_) | ErrorKind::Extension => {
            // A full connection table is a passing condition, not a refusal of the command.
            if error.to_string().contains("max number of clients") {
                Failure::Unreachable
            } else {
                Failure::Refused
            }
        }
        _ => Failure::Unreachable,
    }
}

/// The URL without its password, for messages: the `user:password@` part and a
/// `?pass=` / `?password=` query parameter (unix socket URLs).
pub fn redact_url(url: &str) -> String {
    let url = redact_query_password(url);
    let url = url.as_str();
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => format!("{}***{}", &url[..scheme_end + 3], &url[at..]),
            }
        }
        _ => redact_credentials(url),
    }
}

static QUERY_PASSWORD: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    regex::Regex::new(r#"([?&](?:pass|password)=)[^&\s"'*]+"#).expect("the query password pattern is valid")
});

fn redact_query_password(text: &str) -> String {
    QUERY_PASSWORD.replace_all(text, "${1}***").into_owned()
}

/// `text` with the password of every `scheme://user:password@` (or `scheme://password@`) in
/// it replaced by `***`, for messages that may quote a URL or a line of the config file.
pub fn redact_credentials(text: &str) -> String {
    let text = redact_query_password(text);
    let text = text.as_str();
    static CREDENTIALS: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r#"://(?:([^:@/\s"']*):)?[^@/\s"']+@"#).expect("the credentials pattern is valid")
    });
    let with_scheme = CREDENTIALS.replace_all(text, |captures: &regex::Captures| match captures.get(1) {
        Some(user) => format!("://{}:***@", user.as_str()),
        None => "://***@".to_string(),
    });
    // A mistyped URL (`redis//user:password@host`) has no `://`, but its password is one all
    // the same: `user:password@` after a start, a space, a quote or a slash.
    static BARE_CREDENTIALS: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r#"(^|[\s"'/])([^\s"'/:@*]+):([^@/\s"'*]+)@"#).expect("the bare credentials pattern is valid")
    });
    BARE_CREDENTIALS.replace_all(&with_scheme, "${1}${2}:***@").into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(code: &str, detail: &str) -> RedisError {
        redis::make_extension_error(code.to_string(), Some(detail.to_string()))
    }

    #[test]
    fn errors_are_classified_by_what_retrying_can_do() {
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(classify(&io), Failure::Unreachable);
        assert_eq!(
            classify(&server_error("OOM", "command not allowed")),
            Failure::OutOfMemory
        );
        assert_eq!(
            classify(&server_error("LOADING", "loading the dataset")),
            Failure::Unreachable
        );
        assert_eq!(classify(&server_error("NOPERM", "no permissions")), Failure::Refused);
        assert_eq!(
            classify(&server_error("WRONGTYPE", "wrong kind of value")),
            Failure::Refused
        );
        assert_eq!(classify(&server_error("ERR", "invalid expire time")), Failure::Refused);
        assert_eq!(
            classify(&server_error("ERR", "max number of clients reached")),
            Failure::Unreachable
        );
    }

    #[test]
    fn passwords_never_appear_in_redacted_urls() {
        assert_eq!(
            redact_url("redis://user:secret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact_url("redis://:secret@host"), "redis://:***@host");
        assert_eq!(redact_url("redis://secret@host"), "redis://***@host");
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
        assert_eq!(
            redact_url("redis+unix:///run/redis.sock?db=1&pass=secret"),
            "redis+unix:///run/redis.sock?db=1&pass=***"
        );
    }
}

#[cfg(test)]
mod bare_credentials_tests {
    use super::*;

    #[test]
    fn a_mistyped_url_keeps_no_password() {
        assert_eq!(
            redact_credentials(r#"redis_url: "redis//app:s3cret@127.0.0.1:6379" is not usable"#),
            r#"redis_url: "redis//app:***@127.0.0.1:6379" is not usable"#
        );
        assert_eq!(redact_url("app:s3cret@db:6379"), "app:***@db:6379");
        assert_eq!(redact_credentials("redis://app:***@db"), "redis://app:***@db");
        assert_eq!(
            redact_credentials("mail oncall@example.com at 10:30"),
            "mail oncall@example.com at 10:30"
        );
    }
}
