//! `webhook`: a JSON POST per message.
//!
//! Payload of one alert: the alert record (`docs/ALERTING.md`) without its routing
//! (`sinks`): `alert_id`, `rule`, `type`, `status` (firing|resolved), `severity`, `group`,
//! `labels`, `annotations`, `count`, `first_event_time`, `last_event_time`, `raised_at`,
//! and `event` when an event raised it. A digest:
//! `{"digest": true, "digest_id", "rule", "count", "alert_ids": [every id],
//!   "alerts": [the first DIGEST_FULL_ALERTS records], "more": count - shown}`.
//!
//! Headers: `Content-Type: application/json`, `Idempotency-Key: <alert or digest id>`, the
//! configured `headers`, and with a `secret` the Standard Webhooks signature: `webhook-id`
//! (the same id), `webhook-timestamp` (Unix seconds of the attempt) and
//! `webhook-signature: v1,<base64 of HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`, where the
//! key is the base64 after `whsec_`, or the secret's bytes when it has no such prefix.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::delivery::config::{ResolvedSecret, SetupError};
use crate::delivery::{AlertSink, Message, SinkError, http};
use crate::police::alert::Alert;

/// Records of a digest sent in full; every id is listed in `alert_ids` anyway.
pub const DIGEST_FULL_ALERTS: usize = 10;
/// Alerts per digest message: bounded so one request body stays well below the 1 MiB many
/// receivers accept (a record is at most a few KiB, the ids are short).
const MAX_ALERTS_PER_DIGEST: usize = 500;

pub struct WebhookSink {
    pub name: String,
    pub url: reqwest::Url,
    pub signing_key: Option<Vec<u8>>,
    pub headers: Vec<(String, String)>,
    pub client: reqwest::Client,
}

impl WebhookSink {
    pub fn new(
        name: &str,
        url: &ResolvedSecret,
        secret: Option<&ResolvedSecret>,
        headers: &std::collections::BTreeMap<String, String>,
        timeout: std::time::Duration,
    ) -> Result<WebhookSink, SetupError> {
        let invalid = |problem: String| SetupError::Invalid {
            sink: name.to_string(),
            problem,
        };
        let url = http::check_url(name, url)?;
        let signing_key = secret
            .map(|secret| signing_key(secret.expose()))
            .transpose()
            .map_err(invalid)?;
        for (header, value) in headers {
            reqwest::header::HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| invalid(format!("headers: {header:?} is not a valid header name")))?;
            reqwest::header::HeaderValue::from_str(value)
                .map_err(|_| invalid(format!("headers: the value of {header} is not a valid header value")))?;
        }
        Ok(WebhookSink {
            name: name.to_string(),
            url,
            signing_key,
            headers: headers
                .iter()
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
            client: http::client(name, timeout)?,
        })
    }
}

/// The HMAC key of a Standard Webhooks secret: base64 after `whsec_`, else the raw bytes.
pub fn signing_key(secret: &str) -> Result<Vec<u8>, String> {
    match secret.strip_prefix("whsec_") {
        Some(encoded) => BASE64
            .decode(encoded)
            .map_err(|_| "secret: the part after whsec_ is not valid base64".to_string()),
        None if secret.is_empty() => Err("secret: must not be empty".into()),
        None => Ok(secret.as_bytes().to_vec()),
    }
}

/// `v1,<base64 of HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`.
pub fn signature(key: &[u8], message_id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(message_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// An alert record as the webhook sends it: everything but the routing.
fn alert_payload(alert: &Alert) -> serde_json::Value {
    let mut value = serde_json::to_value(alert).expect("an Alert serialises into a JSON value");
    if let Some(fields) = value.as_object_mut() {
        fields.remove("sinks");
    }
    value
}

/// The request body of a message (see the module doc).
pub fn payload(message: &Message<'_>) -> serde_json::Value {
    match message {
        Message::Single(alert) => alert_payload(alert),
        Message::Digest { rule, alerts } => {
            let shown: Vec<serde_json::Value> = alerts.iter().take(DIGEST_FULL_ALERTS).map(alert_payload).collect();
            serde_json::json!({
                "digest": true,
                "digest_id": message.id(),
                "rule": rule,
                "count": alerts.len(),
                "alert_ids": alerts.iter().map(|alert| alert.alert_id.as_str()).collect::<Vec<_>>(),
                "more": alerts.len() - shown.len(),
                "alerts": shown,
            })
        }
    }
}

#[async_trait::async_trait]
impl AlertSink for WebhookSink {
    async fn deliver(&self, message: &Message<'_>) -> Result<(), SinkError> {
        let message_id = message.id();
        let body = serde_json::to_vec(&payload(message)).expect("a JSON value serialises");
        let mut headers: Vec<(&str, String)> = vec![
            ("content-type", "application/json".into()),
            ("idempotency-key", message_id.clone()),
        ];
        for (name, value) in &self.headers {
            headers.push((name.as_str(), value.clone()));
        }
        if let Some(key) = &self.signing_key {
            let timestamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            headers.push(("webhook-signature", signature(key, &message_id, timestamp, &body)));
            headers.push(("webhook-id", message_id.clone()));
            headers.push(("webhook-timestamp", timestamp.to_string()));
        }
        http::post(&self.client, &self.name, &self.url, body, &headers).await
    }

    fn max_alerts_per_message(&self) -> usize {
        MAX_ALERTS_PER_DIGEST
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_standard_webhooks() {
        // The example of the Standard Webhooks specification's reference libraries.
        let key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert_eq!(signing_key("raw-secret").unwrap(), b"raw-secret");
        assert!(signing_key("whsec_not base64!").is_err());
    }
}
