//! `slack`: an incoming-webhook POST per message, `text` (the notification line) plus
//! `blocks`.
//!
//! One alert: `text` is the alert's console line; one section block holds it with the
//! severity, rule, labels and annotations. A digest (the rate limit was hit): `text` says
//! how many alerts of which rule ("… and 57 more"), a section shows the first
//! [`DIGEST_LINES`] alerts, and further sections list every alert id, one per line. Each
//! section's text is cut at Slack's 3,000 characters on a character boundary; a message
//! has at most Slack's 50 blocks, which [`MAX_ALERTS_PER_DIGEST`] ids fit in unless they
//! are very long (then the last block says how many ids were left out).
//!
//! Event text is escaped for mrkdwn (`&`, `<`, `>`), so a log line cannot ping `<!channel>`
//! or forge a link. Answers: 2xx delivered; 408, 429 (with `Retry-After`), 5xx retried;
//! other 4xx, 404 and 410 (a removed hook) included, are permanent. The hook URL is a
//! secret and is never logged.

use crate::delivery::config::{ResolvedSecret, SetupError};
use crate::delivery::{AlertSink, Message, SinkError, http};
use crate::police::alert::Alert;

/// Slack's limit on the text of one section block.
pub const SECTION_TEXT_MAX_CHARS: usize = 3000;
/// Slack's limit on blocks per message.
const MAX_BLOCKS: usize = 50;
/// Alerts shown as lines in a digest's first section.
pub const DIGEST_LINES: usize = 5;
/// Alerts per digest: their ids (about 40 characters each) fill about 7 sections.
pub const MAX_ALERTS_PER_DIGEST: usize = 500;

pub struct SlackSink {
    pub name: String,
    pub url: reqwest::Url,
    pub client: reqwest::Client,
}

impl SlackSink {
    pub fn new(name: &str, url: &ResolvedSecret, timeout: std::time::Duration) -> Result<SlackSink, SetupError> {
        Ok(SlackSink {
            name: name.to_string(),
            url: http::check_url(name, url)?,
            client: http::client(name, timeout)?,
        })
    }
}

/// `&`, `<` and `>` as Slack's mrkdwn wants them.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// At most `max_chars` characters of escaped text, never ending inside an `&…;` entity.
pub fn cut(text: &str, max_chars: usize) -> &str {
    let Some((end, _)) = text.char_indices().nth(max_chars) else {
        return text;
    };
    let kept = &text[..end];
    // An entity is at most 5 characters (`&amp;`): a `&` among the last 4 without its `;`
    // was cut in half.
    match kept.rfind('&') {
        Some(amp) if kept.len() - amp < 5 && !kept[amp..].contains(';') => &kept[..amp],
        _ => kept,
    }
}

fn section(text: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "section",
        "text": {"type": "mrkdwn", "text": cut(text, SECTION_TEXT_MAX_CHARS)},
    })
}

fn single_text(alert: &Alert) -> String {
    let mut text = format!(
        "*{}* `{}` {}\n{}",
        escape(&alert.severity.to_uppercase()),
        escape(&alert.rule),
        match alert.status {
            crate::police::alert::AlertStatus::Firing => "firing",
            crate::police::alert::AlertStatus::Resolved => "resolved",
        },
        escape(&alert.console_line())
    );
    for (name, value) in alert.labels.iter().chain(alert.annotations.iter()) {
        text.push_str(&format!("\n{}: {}", escape(name), escape(value)));
    }
    text
}

/// The request body of a message (see the module doc).
pub fn payload(message: &Message<'_>) -> serde_json::Value {
    let Message::Digest { rule, alerts } = message else {
        let alert = &message.alerts()[0];
        return serde_json::json!({
            "text": cut(&escape(&alert.console_line()), SECTION_TEXT_MAX_CHARS),
            "blocks": [section(&single_text(alert))],
        });
    };
    let total = alerts.len();
    let more = total.saturating_sub(DIGEST_LINES);
    let mut summary = format!("*{total} alerts* of rule `{}`", escape(rule));
    for alert in alerts.iter().take(DIGEST_LINES) {
        summary.push('\n');
        summary.push_str(&escape(&alert.console_line()));
    }
    if more > 0 {
        summary.push_str(&format!("\n… and {more} more"));
    }
    let mut blocks = vec![section(&summary)];
    let mut ids_text = String::from("alert ids:");
    let mut listed = 0;
    for alert in alerts.iter() {
        let line = escape(&alert.alert_id);
        if ids_text.chars().count() + 1 + line.chars().count() > SECTION_TEXT_MAX_CHARS {
            if blocks.len() == MAX_BLOCKS - 1 {
                break;
            }
            blocks.push(section(&ids_text));
            ids_text = String::new();
        }
        if !ids_text.is_empty() {
            ids_text.push('\n');
        }
        ids_text.push_str(&line);
        listed += 1;
    }
    if listed < total {
        ids_text = format!(
            "{}\n… {} more ids not shown",
            cut(&ids_text, SECTION_TEXT_MAX_CHARS - 40),
            total - listed
        );
    }
    blocks.push(section(&ids_text));
    let first_line = alerts.first().map(|alert| alert.console_line()).unwrap_or_default();
    let text = format!("{total} alerts of rule {rule}: {first_line} … and {} more", total - 1);
    serde_json::json!({
        "text": cut(&escape(&text), SECTION_TEXT_MAX_CHARS),
        "blocks": blocks,
    })
}

#[async_trait::async_trait]
impl AlertSink for SlackSink {
    async fn deliver(&self, message: &Message<'_>) -> Result<(), SinkError> {
        let body = serde_json::to_vec(&payload(message)).expect("a JSON value serialises");
        let headers = [
            ("content-type", "application/json".to_string()),
            ("idempotency-key", message.id()),
        ];
        http::post(&self.client, &self.name, &self.url, body, &headers).await
    }

    fn max_alerts_per_message(&self) -> usize {
        MAX_ALERTS_PER_DIGEST
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::police::alert::AlertStatus;

    fn alert(id: &str, message: &str) -> Alert {
        Alert {
            alert_id: id.into(),
            rule: "critical".into(),
            rule_type: "any".into(),
            status: AlertStatus::Firing,
            severity: "critical".into(),
            group: Default::default(),
            labels: Default::default(),
            annotations: [("summary".to_string(), message.to_string())].into(),
            count: 1,
            first_event_time: String::new(),
            last_event_time: String::new(),
            raised_at: String::new(),
            sinks: vec!["slack".into()],
            event: None,
        }
    }

    fn section_texts(payload: &serde_json::Value) -> Vec<String> {
        payload["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|block| block["text"]["text"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn sections_are_cut_at_3000_characters_on_a_char_boundary() {
        let long = "é".repeat(5000);
        let single = alert("a/1", &long);
        let body = payload(&Message::Single(&single));
        for text in section_texts(&body) {
            assert!(text.chars().count() <= SECTION_TEXT_MAX_CHARS);
        }
        assert_eq!(cut("ab&amp;c", 4), "ab", "an entity is never cut in half");
        assert_eq!(cut("ab&amp;c", 7), "ab&amp;");
        assert_eq!(cut("short", 3000), "short");
    }

    #[test]
    fn log_text_cannot_ping_the_channel() {
        let single = alert("a/1", "<!channel> & <https://evil|click>");
        let body = payload(&Message::Single(&single)).to_string();
        assert!(!body.contains("<!channel>"), "{body}");
        assert!(body.contains("&lt;!channel&gt; &amp;"), "{body}");
    }

    #[test]
    fn a_digest_lists_every_alert_id() {
        let alerts: Vec<Alert> = (0..MAX_ALERTS_PER_DIGEST)
            .map(|index| alert(&format!("web-1:19b2c3d4e5f60a1b:{index}/critical"), "disk full"))
            .collect();
        let body = payload(&Message::Digest {
            rule: "critical",
            alerts: &alerts,
        });
        let texts = section_texts(&body);
        assert!(texts.len() <= MAX_BLOCKS);
        assert!(texts[0].contains(&format!("… and {} more", MAX_ALERTS_PER_DIGEST - DIGEST_LINES)));
        let listed: Vec<&str> = texts[1..]
            .iter()
            .flat_map(|text| text.lines())
            .filter(|line| line.contains("/critical"))
            .collect();
        assert_eq!(listed.len(), alerts.len());
        for (listed, alert) in listed.iter().zip(&alerts) {
            assert_eq!(*listed, alert.alert_id);
        }
        assert!(body["text"].as_str().unwrap().contains("and 499 more"));
    }
}
