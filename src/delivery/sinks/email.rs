//! Email sink: one SMTP message per alert or per digest, plain text and HTML.
//!
//! Invariants:
//! - `Ok` only once the server accepted the message (250 after DATA); a 4xx answer, a
//!   lost connection, a timeout or a TLS failure is retryable, a 5xx answer permanent
//! - the transport is encrypted unless `security = "none"`, which only a loopback server
//!   may use: STARTTLS is required (never silently skipped) and credentials only travel
//!   inside TLS
//! - the password is read once at startup and never logged
//! - every field comes from the logs: the HTML part escapes each one, the subject and the
//!   alert id header hold no control characters (no header can be injected)
//! - a message carries its alert ids (`X-LogSentinel-Alert-Id`) and a `Message-ID` derived
//!   from them, so the same alert sent again (at-least-once) has the same `Message-ID`
//!   and mail systems can drop the repeat; a resolve replies to its firing message

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;

use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use crate::delivery::config::{DEFAULT_TIMEOUT, SetupError, SinkConfig};
use crate::delivery::{AlertSink, Message, SinkError, shown_status};
use crate::police::alert::{Alert, AlertStatus};

/// The header carrying the alert id (a digest: every id, comma-separated).
pub const ALERT_ID_HEADER: &str = "X-LogSentinel-Alert-Id";
/// Subjects are cut here: a subject holding a whole log line would be unreadable, and
/// some servers refuse very long header lines.
const MAX_SUBJECT_CHARS: usize = 200;

/// How the connection to the SMTP server is protected (`security`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Plain connection upgraded with STARTTLS, which is required (default; port 587).
    StartTls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No encryption: loopback servers only (tests, a local relay).
    None,
}

impl Security {
    fn default_port(self) -> u16 {
        match self {
            Security::StartTls => 587,
            Security::Tls => 465,
            Security::None => 25,
        }
    }
}

pub struct EmailSink {
    name: String,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
    /// Bound of one whole delivery: lettre's own timeout bounds the connect but not every
    /// read of the async transport, and a server that stops answering must not hold the
    /// sink's worker.
    timeout: std::time::Duration,
}

impl EmailSink {
    /// Builds the sink from its `[sinks.NAME]` table (`type = "email"`): addresses
    /// parsed, secrets read, the CA file loaded. Connects only when sending.
    pub async fn from_config(name: &str, config: &SinkConfig) -> Result<EmailSink, SetupError> {
        let SinkConfig::Email {
            smtp,
            security,
            username,
            password,
            from,
            to,
            timeout,
            ca_file,
            ..
        } = config
        else {
            return Err(SetupError::Invalid {
                sink: name.into(),
                problem: "not an email sink".into(),
            });
        };
        let invalid = |problem: String| SetupError::Invalid {
            sink: name.into(),
            problem,
        };
        let security = match security.as_deref() {
            None | Some("starttls") => Security::StartTls,
            Some("tls") => Security::Tls,
            Some("none") => Security::None,
            Some(other) => return Err(invalid(format!("security {other:?} is not starttls, tls or none"))),
        };
        let (host, port) = split_host_port(smtp).ok_or_else(|| invalid(format!("smtp {smtp:?} is not host:port")))?;
        let port = port.unwrap_or(security.default_port());
        if security == Security::None && !is_loopback(&host) {
            return Err(invalid(format!(
                "security = \"none\" is only allowed for a loopback server, not {host}"
            )));
        }
        let from: Mailbox = from
            .parse()
            .map_err(|error| invalid(format!("from {from:?} is not an address: {error}")))?;
        if to.is_empty() {
            return Err(invalid("to lists no address".into()));
        }
        let to = to
            .iter()
            .map(|address| {
                address
                    .parse::<Mailbox>()
                    .map_err(|error| invalid(format!("to {address:?} is not an address: {error}")))
            })
            .collect::<Result<Vec<_>, _>>()?;

        let tls = match security {
            Security::None => Tls::None,
            Security::StartTls => Tls::Required(tls_parameters(name, &host, ca_file.as_deref()).await?),
            Security::Tls => Tls::Wrapper(tls_parameters(name, &host, ca_file.as_deref()).await?),
        };
        let timeout = timeout.map_or(DEFAULT_TIMEOUT, |timeout| timeout.0);
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.as_str())
            .port(port)
            .tls(tls)
            .timeout(Some(timeout));
        match (username, password) {
            (Some(username), Some(password)) => {
                let username = username.resolve(name, "username").await?;
                let password = password.resolve(name, "password").await?;
                builder = builder
                    .credentials(Credentials::new(
                        username.expose().to_string(),
                        password.expose().to_string(),
                    ))
                    .authentication(vec![Mechanism::Plain, Mechanism::Login]);
            }
            (None, None) => {}
            _ => return Err(invalid("give both username and password, or neither".into())),
        }
        Ok(EmailSink {
            name: name.into(),
            transport: builder.build(),
            from,
            to,
            timeout,
        })
    }

    /// The message as it is sent (public for tests and previews).
    pub fn compose(&self, message: &Message<'_>) -> Result<lettre::Message, SinkError> {
        let alerts: &[Alert] = match message {
            Message::Single(alert) => std::slice::from_ref(*alert),
            Message::Digest { alerts, .. } => alerts,
        };
        let Some(first) = alerts.first() else {
            return Err(SinkError::Permanent {
                sink: self.name.clone(),
                status: "empty digest".into(),
            });
        };
        let domain = self.from.email.domain().to_string();
        let (subject, message_id, text, html) = match message {
            Message::Single(alert) => (
                single_subject(alert),
                message_id(&[alert], &domain),
                alert_text(alert),
                html_document(&alert_html(alert)),
            ),
            Message::Digest { rule, alerts } => (
                digest_subject(rule, alerts),
                message_id(&alerts.iter().collect::<Vec<_>>(), &domain),
                digest_text(rule, alerts),
                html_document(&digest_html(rule, alerts)),
            ),
        };
        let alert_ids: Vec<&str> = alerts.iter().map(|alert| alert.alert_id.as_str()).collect();
        let mut builder = lettre::Message::builder()
            .from(self.from.clone())
            .subject(subject)
            .message_id(Some(message_id))
            .user_agent(concat!("LogSentinel/", env!("CARGO_PKG_VERSION")).to_string())
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str(ALERT_ID_HEADER),
                single_line(&alert_ids.join(", ")),
            ));
        if let (Message::Single(alert), AlertStatus::Resolved) = (message, first.status) {
            let firing_id = firing_message_id(alert, &domain);
            builder = builder.in_reply_to(firing_id.clone()).references(firing_id);
        }
        for recipient in &self.to {
            builder = builder.to(recipient.clone());
        }
        builder
            .multipart(MultiPart::alternative_plain_html(text, html))
            .map_err(|error| SinkError::Permanent {
                sink: self.name.clone(),
                status: format!("cannot compose the message: {error}"),
            })
    }
}

#[async_trait::async_trait]
impl AlertSink for EmailSink {
    async fn deliver(&self, message: &Message<'_>) -> Result<(), SinkError> {
        let email = self.compose(message)?;
        match tokio::time::timeout(self.timeout, self.transport.send(email)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(classify(&self.name, &error)),
            Err(_elapsed) => Err(SinkError::Retryable {
                sink: self.name.clone(),
                status: "timeout".into(),
                retry_after: None,
            }),
        }
    }
}

/// 5xx answers and client-side refusals (no shared auth mechanism) are permanent;
/// 4xx, connection, timeout and TLS failures retryable.
fn classify(sink: &str, error: &lettre::transport::smtp::Error) -> SinkError {
    // The server's reply is in `error` (its lines joined by newlines): shown escaped and cut.
    let status = match error.status() {
        Some(code) => shown_status(&format!("smtp {code}: {error}")),
        None if error.is_timeout() => "timeout".to_string(),
        None => shown_status(&error.to_string()),
    };
    if error.is_permanent() || error.is_client() {
        return SinkError::Permanent {
            sink: sink.into(),
            status,
        };
    }
    SinkError::Retryable {
        sink: sink.into(),
        status,
        retry_after: None,
    }
}

async fn tls_parameters(sink: &str, host: &str, ca_file: Option<&Path>) -> Result<TlsParameters, SetupError> {
    let tls_problem = |error: lettre::transport::smtp::Error| SetupError::Invalid {
        sink: sink.into(),
        problem: format!("TLS setup failed: {error}"),
    };
    let mut builder = TlsParameters::builder(host.to_string());
    if let Some(path) = ca_file {
        let pem = tokio::fs::read(path).await.map_err(|source| SetupError::File {
            sink: sink.into(),
            path: path.to_path_buf(),
            source,
        })?;
        builder = builder.add_root_certificate(Certificate::from_pem(&pem).map_err(tls_problem)?);
    }
    builder.build_rustls().map_err(tls_problem)
}

/// `host:port`, `host`, `[v6]:port` or `[v6]`.
fn split_host_port(address: &str) -> Option<(String, Option<u16>)> {
    let address = address.trim();
    if let Some(rest) = address.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match address.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !host.contains(':') => {
            Some((host.to_string(), Some(port.parse().ok()?)))
        }
        Some(_) => None,
        None if address.is_empty() => None,
        None => Some((address.to_string(), None)),
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn status_word(status: AlertStatus) -> &'static str {
    match status {
        AlertStatus::Firing => "firing",
        AlertStatus::Resolved => "resolved",
    }
}

/// `[LogSentinel] <severity> <rule> <group values> firing|resolved`.
fn single_subject(alert: &Alert) -> String {
    let mut subject = format!("[LogSentinel] {} {}", alert.severity, alert.rule);
    for value in alert.group.values() {
        subject.push(' ');
        subject.push_str(value);
    }
    subject.push(' ');
    subject.push_str(status_word(alert.status));
    cut_subject(&subject)
}

/// `[LogSentinel] <severity> <rule> digest: N alerts (F firing, R resolved)`.
fn digest_subject(rule: &str, alerts: &[Alert]) -> String {
    let firing = alerts
        .iter()
        .filter(|alert| alert.status == AlertStatus::Firing)
        .count();
    let severity = alerts.first().map_or("", |alert| alert.severity.as_str());
    cut_subject(&format!(
        "[LogSentinel] {severity} {rule} digest: {} alerts ({firing} firing, {} resolved)",
        alerts.len(),
        alerts.len() - firing
    ))
}

fn cut_subject(subject: &str) -> String {
    let line = single_line(subject);
    if line.chars().count() <= MAX_SUBJECT_CHARS {
        return line;
    }
    let mut cut: String = line.chars().take(MAX_SUBJECT_CHARS - 1).collect();
    cut.push('\u{2026}');
    cut
}

/// The text with every control character (and the Unicode line separators) turned into
/// a space: header values from the logs can then never start a new header.
fn single_line(text: &str) -> String {
    text.chars()
        .map(|character| {
            if character.is_control() || matches!(character, '\u{2028}' | '\u{2029}') {
                ' '
            } else {
                character
            }
        })
        .collect()
}

/// `<HASH.firing@domain>`: FNV-1a 64 over the alert ids and statuses, so a message sent
/// again gets the same id and a different alert (or the resolve) another.
fn message_id(alerts: &[&Alert], domain: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for alert in alerts {
        for byte in alert
            .alert_id
            .bytes()
            .chain(std::iter::once(b'\n'))
            .chain(status_word(alert.status).bytes())
            .chain(std::iter::once(b'\n'))
        {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    let kind = match alerts {
        [single] => status_word(single.status),
        _ => "digest",
    };
    format!("<{hash:016x}.{kind}.logsentinel@{domain}>")
}

/// The `Message-ID` the firing message of this alert had.
fn firing_message_id(alert: &Alert, domain: &str) -> String {
    let mut firing = alert.clone();
    firing.status = AlertStatus::Firing;
    message_id(&[&firing], domain)
}

/// Name/value rows of one alert, in reading order; the values come from the logs.
fn alert_rows(alert: &Alert) -> Vec<(&'static str, String)> {
    let mut rows = vec![
        ("Status", status_word(alert.status).to_string()),
        ("Rule", format!("{} ({})", alert.rule, alert.rule_type)),
        ("Severity", alert.severity.clone()),
    ];
    if let Some(summary) = alert.annotations.get("summary") {
        rows.push(("Summary", summary.clone()));
    }
    if !alert.group.is_empty() {
        rows.push(("Group", pairs(&alert.group)));
    }
    rows.push(("Count", alert.count.to_string()));
    rows.push(("First event", alert.first_event_time.clone()));
    rows.push(("Last event", alert.last_event_time.clone()));
    rows.push(("Raised at", alert.raised_at.clone()));
    if !alert.labels.is_empty() {
        rows.push(("Labels", pairs(&alert.labels)));
    }
    for (name, value) in alert.annotations.iter().filter(|(name, _)| name.as_str() != "summary") {
        rows.push(("Annotation", format!("{name}: {value}")));
    }
    if let Some(event) = &alert.event {
        rows.push((
            "Event",
            format!(
                "{} {} {}@{}: {}",
                event.timestamp, event.level, event.service, event.host, event.message
            ),
        ));
    }
    rows.push(("Alert id", alert.alert_id.clone()));
    rows
}

fn pairs(map: &std::collections::BTreeMap<String, String>) -> String {
    map.iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn alert_text(alert: &Alert) -> String {
    let mut text = String::new();
    for (name, value) in alert_rows(alert) {
        let _ = writeln!(text, "{:<12} {value}", format!("{name}:"));
    }
    text
}

fn digest_text(rule: &str, alerts: &[Alert]) -> String {
    let mut text = format!(
        "{} alerts of rule {rule}, folded into one message by the rate limit.\n",
        alerts.len()
    );
    for alert in alerts {
        text.push('\n');
        text.push_str(&alert_text(alert));
    }
    text
}

fn alert_html(alert: &Alert) -> String {
    let mut html = String::from("<table cellpadding=\"3\" style=\"border-collapse:collapse\">\n");
    for (name, value) in alert_rows(alert) {
        let _ = writeln!(
            html,
            "<tr><th align=\"left\">{name}</th><td>{}</td></tr>",
            escape_html(&value)
        );
    }
    html.push_str("</table>\n");
    html
}

fn digest_html(rule: &str, alerts: &[Alert]) -> String {
    let mut html = format!(
        "<p>{} alerts of rule <b>{}</b>, folded into one message by the rate limit.</p>\n",
        alerts.len(),
        escape_html(rule)
    );
    for alert in alerts {
        html.push_str("<hr>\n");
        html.push_str(&alert_html(alert));
    }
    html
}

fn html_document(body: &str) -> String {
    format!("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"></head><body>\n{body}</body></html>\n")
}

/// Escapes the five characters that matter in HTML text and attribute values.
pub fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn alert(status: AlertStatus) -> Alert {
        Alert {
            alert_id: "errors/9f1c2e4b7a6d3f01/1764590400000".into(),
            rule: "errors".into(),
            rule_type: "frequency".into(),
            status,
            severity: "warning".into(),
            group: BTreeMap::from([("service".into(), "api\r\nBcc: victim@example.com".into())]),
            labels: BTreeMap::new(),
            annotations: BTreeMap::from([("summary".into(), "<script>alert(1)</script> & co".into())]),
            count: 3,
            first_event_time: "2026-12-01T12:00:00Z".into(),
            last_event_time: "2026-12-01T12:00:30Z".into(),
            raised_at: "2026-12-01T12:01:00Z".into(),
            sinks: vec!["mail".into()],
            event: None,
        }
    }

    #[test]
    fn subjects_are_one_line_and_name_status() {
        let subject = single_subject(&alert(AlertStatus::Firing));
        assert_eq!(
            subject,
            "[LogSentinel] warning errors api  Bcc: victim@example.com firing"
        );
        assert!(single_subject(&alert(AlertStatus::Resolved)).ends_with(" resolved"));
        let mut long = alert(AlertStatus::Firing);
        long.group.insert("service".into(), "x".repeat(1000));
        assert_eq!(single_subject(&long).chars().count(), MAX_SUBJECT_CHARS);
    }

    #[test]
    fn html_escapes_every_field() {
        let html = alert_html(&alert(AlertStatus::Firing));
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; co"),
            "{html}"
        );
        assert!(!html.contains("<script>"));
        assert_eq!(escape_html("a\"b'c"), "a&quot;b&#39;c");
    }

    #[test]
    fn message_ids_are_stable_per_alert_and_status() {
        let firing = alert(AlertStatus::Firing);
        let resolved = alert(AlertStatus::Resolved);
        let first = message_id(&[&firing], "example.com");
        assert_eq!(first, message_id(&[&firing], "example.com"));
        assert_ne!(first, message_id(&[&resolved], "example.com"));
        assert_eq!(firing_message_id(&resolved, "example.com"), first);
        assert!(first.starts_with('<') && first.ends_with(".firing.logsentinel@example.com>"));
    }

    #[test]
    fn host_and_port_forms() {
        assert_eq!(
            split_host_port("127.0.0.1:2525"),
            Some(("127.0.0.1".into(), Some(2525)))
        );
        assert_eq!(
            split_host_port("smtp.example.com"),
            Some(("smtp.example.com".into(), None))
        );
        assert_eq!(split_host_port("[::1]:25"), Some(("::1".into(), Some(25))));
        assert_eq!(split_host_port("::1"), None);
        assert_eq!(split_host_port("host:port"), None);
        assert!(is_loopback("127.0.0.1") && is_loopback("localhost") && is_loopback("::1"));
        assert!(!is_loopback("smtp.example.com"));
    }

    #[tokio::test]
    async fn plaintext_is_refused_off_loopback() {
        let config: SinkConfig = toml::from_str(
            "type = \"email\"\nsmtp = \"smtp.example.com:25\"\nsecurity = \"none\"\nfrom = \"a@example.com\"\nto = [\"b@example.com\"]\n",
        )
        .unwrap();
        let error = EmailSink::from_config("mail", &config).await.err().unwrap().to_string();
        assert!(error.contains("loopback"), "{error}");
    }
}
