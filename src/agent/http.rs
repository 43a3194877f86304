//! `agent --source http`: `POST /ingest` with NDJSON (one JSON object per line) or a JSON
//! array of objects, in any of the shapes the police accepts from other shippers.
//!
//! - `202 {"accepted": N}` once every event of the request is stored (in Redis or the
//!   spool); a client that got 202 can forget the events
//! - `400 {"error", "line"}` on malformed input: nothing of the request is taken
//! - `413` over `--http-max-body-bytes`
//! - `503` with `Retry-After` while the agent is backpressured (it holds batches because
//!   Redis is down without a spool, the spool is full, or the consumers are `max_lag`
//!   behind; or its queue is nearly full), when the spool dropped the events, or while
//!   stopping
//!
//! `GET /health` answers 200 while the agent runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::batcher::Settled;
use super::sources::{MAX_CHUNK_EVENTS, SOURCE_QUEUE_MESSAGES, SourceMessage};
use crate::config::AgentConfig;
use crate::event::foreign::{Defaults, decode_object};
use crate::event::{Level, LogEvent};

/// Seconds a backpressured client is told to wait.
const RETRY_AFTER_S: &str = "1";

#[derive(Clone)]
pub struct HttpSource {
    service: Arc<str>,
    host: Arc<str>,
    max_body_bytes: usize,
    messages: mpsc::Sender<SourceMessage>,
    /// Set by the shipper while it holds batches.
    backpressure: Arc<AtomicBool>,
}

impl HttpSource {
    pub fn new(
        config: &AgentConfig,
        messages: mpsc::Sender<SourceMessage>,
        backpressure: Arc<AtomicBool>,
    ) -> HttpSource {
        HttpSource {
            service: config.service.as_str().into(),
            host: crate::hostname().into(),
            max_body_bytes: config.http_max_body_bytes,
            messages,
            backpressure,
        }
    }
}

pub async fn serve(listener: TcpListener, source: HttpSource, shutdown: CancellationToken) {
    let address = listener.local_addr().ok();
    let max_body_bytes = source.max_body_bytes;
    let router = Router::new()
        .route("/ingest", post(ingest))
        .route("/health", get(|| async { "ok\n" }))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(source);
    info!(address = ?address, "HTTP source listening");
    if let Err(error) = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        error!(error = %error, "HTTP source stopped");
    }
}

fn unavailable(reason: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, RETRY_AFTER_S)],
        axum::Json(json!({ "error": reason })),
    )
        .into_response()
}

fn bad_request(line: usize, problem: impl std::fmt::Display) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({ "error": format!("line {line}: {problem}"), "line": line })),
    )
        .into_response()
}

async fn ingest(State(source): State<HttpSource>, body: Bytes) -> Response {
    let defaults = Defaults {
        level: Level::Info,
        service: &source.service,
        host: &source.host,
    };
    let events = match parse_body(&body, &defaults) {
        Ok(events) => events,
        Err((line, problem)) => return bad_request(line, problem),
    };
    let accepted = events.len();
    if accepted == 0 {
        return (StatusCode::ACCEPTED, axum::Json(json!({ "accepted": 0 }))).into_response();
    }
    let needed_messages = accepted.div_ceil(MAX_CHUNK_EVENTS).min(SOURCE_QUEUE_MESSAGES / 2);
    if source.backpressure.load(Ordering::Relaxed) || source.messages.capacity() < needed_messages {
        return unavailable("backpressured: the agent holds its batches, retry later");
    }
    let (settled_sender, settled_receiver) = oneshot::channel();
    let mut events = events.into_iter();
    loop {
        let chunk: Vec<LogEvent> = events.by_ref().take(MAX_CHUNK_EVENTS).collect();
        if chunk.is_empty() {
            break;
        }
        if source.messages.send(SourceMessage::Chunk(chunk)).await.is_err() {
            return unavailable("the agent is stopping");
        }
    }
    let receipt = Box::new(move |settled: Settled| {
        let _ = settled_sender.send(settled);
    });
    if source.messages.send(SourceMessage::Receipt(receipt)).await.is_err() {
        return unavailable("the agent is stopping");
    }
    match settled_receiver.await {
        Ok(Settled::Stored) => (StatusCode::ACCEPTED, axum::Json(json!({ "accepted": accepted }))).into_response(),
        Ok(Settled::Dropped) => unavailable("the spool is full (when_full = drop_newest): events dropped"),
        Ok(Settled::Unsent) | Err(_) => unavailable("the agent stopped before the events were stored"),
    }
}

/// NDJSON or a JSON array of objects. The error names the 1-based line of the problem.
fn parse_body(body: &[u8], defaults: &Defaults) -> Result<Vec<LogEvent>, (usize, String)> {
    let text = std::str::from_utf8(body).map_err(|error| {
        let line = body[..error.valid_up_to()]
            .iter()
            .filter(|byte| **byte == b'\n')
            .count()
            + 1;
        (line, "body is not UTF-8".to_string())
    })?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let documents: Vec<Value> = serde_json::from_str(text).map_err(|error| (error.line(), error.to_string()))?;
        // serde_json does not tell where an element starts: an element's problem is
        // reported at the line where its number appears in the array.
        return documents
            .into_iter()
            .enumerate()
            .map(|(index, document)| {
                to_event(document, defaults).map_err(|problem| (1, format!("element {index}: {problem}")))
            })
            .collect();
    }
    let mut events = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let document: Value = serde_json::from_str(line).map_err(|error| (index + 1, error.to_string()))?;
        events.push(to_event(document, defaults).map_err(|problem| (index + 1, problem))?);
    }
    Ok(events)
}

fn to_event(document: Value, defaults: &Defaults) -> Result<LogEvent, String> {
    match document {
        Value::Object(object) => decode_object("", object, defaults).map_err(|error| error.to_string()),
        other => Err(format!("expected a JSON object, found {}", json_kind(&other))),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: Defaults<'static> = Defaults {
        level: Level::Info,
        service: "web",
        host: "h",
    };

    #[test]
    fn ndjson_and_arrays_parse() {
        let body = b"{\"message\":\"a\",\"level\":\"error\"}\n\n{\"msg\":\"b\"}\n";
        let events = parse_body(body, &DEFAULTS).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].level, Level::Error);
        assert_eq!(events[1].message, "b");
        let array = b"[{\"message\":\"a\"},\n {\"message\":\"b\",\"service\":\"api\"}]";
        let events = parse_body(array, &DEFAULTS).unwrap();
        assert_eq!(events[1].service, "api");
    }

    #[test]
    fn malformed_input_names_its_line() {
        let body = b"{\"message\":\"a\"}\n{\"message\":\"b\"}\n{\"message\": oops}\n";
        assert_eq!(parse_body(body, &DEFAULTS).unwrap_err().0, 3);
        assert_eq!(parse_body(b"{\"message\":\"a\"}\n42\n", &DEFAULTS).unwrap_err().0, 2);
        assert_eq!(
            parse_body(b"[{\"message\":\"a\"},\n{\"message\":]", &DEFAULTS)
                .unwrap_err()
                .0,
            2
        );
    }
}
