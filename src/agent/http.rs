//! `agent --source http`: `POST /ingest` with NDJSON (one JSON object per line) or a JSON
//! array of objects, in any of the shapes the police accepts from other shippers.
//!
//! - `202 {"accepted": N}` once every event of the request is stored (in Redis or the
//!   spool); a client that got 202 can forget the events
//! - `400 {"error", "line"}` on malformed input: nothing of the request is taken
//! - `401` without the bearer token of `--http-token-file`, when one is set (compared in
//!   constant time)
//! - `408` when the whole body did not come within `--http-body-timeout-ms`
//! - `413` over `--http-max-body-bytes`
//! - `415` unless the content type is JSON or NDJSON (`application/json`,
//!   `application/x-ndjson`, …): a web page can POST `text/plain` or a form to any address
//!   without the browser asking first (no CORS preflight), never JSON
//! - `503` with `Retry-After` while the agent is backpressured (it holds batches because
//!   Redis is down without a spool, the spool is full, or the consumers are `max_lag`
//!   behind; or its queue is nearly full), when the spool dropped the events, or while
//!   stopping
//! - `503` too when the events were taken but not stored within `--http-store-timeout-ms`
//!   (the agent started holding batches after the request came in): every request gets an
//!   answer in bounded time. Its events stay queued and are stored later, so a retry may
//!   store them twice (at-least-once, as a lost 202 would)
//!
//! `GET /health` answers 200 while the agent runs.
//!
//! Memory is bounded: at most `--http-max-requests` requests are handled at once (more get
//! 503 at once, without their body being read), each holding at most
//! `--http-max-body-bytes`, and a body that stalls is given up after
//! `--http-body-timeout-ms`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::batcher::Settled;
use super::sources::{InputCounters, MAX_CHUNK_EVENTS, SOURCE_QUEUE_MESSAGES, SourceMessage};
use super::tls::{ServerTls, TlsListener};
use crate::config::AgentConfig;
use crate::event::foreign::{Defaults, decode_object};
use crate::event::{Level, LogEvent};

/// Seconds a backpressured client is told to wait.
const RETRY_AFTER_S: &str = "1";

/// Media types of the bodies taken (parameters such as `charset` aside).
pub const ACCEPTED_CONTENT_TYPES: [&str; 6] = [
    "application/json",
    "application/x-ndjson",
    "application/ndjson",
    "application/jsonlines",
    "application/x-jsonlines",
    "application/jsonl",
];

/// The token HTTP clients must present. Its `Debug` does not show it.
#[derive(Clone)]
pub struct BearerToken(Arc<str>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("BearerToken(<redacted>)")
    }
}

impl BearerToken {
    /// Reads the token from `path`: its first line, without surrounding white space.
    pub fn read(path: &std::path::Path) -> Result<BearerToken, String> {
        let text = std::fs::read_to_string(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        let token = text.lines().next().unwrap_or("").trim();
        if token.is_empty() {
            return Err(format!("{} holds no token", path.display()));
        }
        Ok(BearerToken(token.into()))
    }

    /// Whether `headers` carry this token. The comparison takes the same time whatever
    /// the bytes, so that the token cannot be guessed byte by byte from response times.
    fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(given) = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
        else {
            return false;
        };
        constant_time_eq(given.as_bytes(), self.0.as_bytes())
    }
}

/// Equality of two byte strings in a time that depends on their lengths only.
fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    if left.len() != right.len() {
        return false;
    }
    let difference = left.iter().zip(right).fold(0u8, |acc, (a, b)| acc | (a ^ b));
    std::hint::black_box(difference) == 0
}

/// Whether the request's content type is one of [`ACCEPTED_CONTENT_TYPES`].
fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()) else {
        return false;
    };
    let media_type = value.split(';').next().unwrap_or("").trim();
    ACCEPTED_CONTENT_TYPES
        .iter()
        .any(|accepted| media_type.eq_ignore_ascii_case(accepted))
}

#[derive(Clone)]
pub struct HttpSource {
    service: Arc<str>,
    host: Arc<str>,
    max_body_bytes: usize,
    messages: mpsc::Sender<SourceMessage>,
    /// Set by the shipper while it holds batches.
    backpressure: Arc<AtomicBool>,
    /// One permit per request being handled: `http_max_requests` in all.
    request_permits: Arc<Semaphore>,
    body_timeout: Duration,
    store_timeout: Duration,
    token: Option<BearerToken>,
    counters: Arc<InputCounters>,
}

impl HttpSource {
    pub fn new(
        config: &AgentConfig,
        token: Option<BearerToken>,
        messages: mpsc::Sender<SourceMessage>,
        backpressure: Arc<AtomicBool>,
        counters: Arc<InputCounters>,
    ) -> HttpSource {
        HttpSource {
            service: config.service.as_str().into(),
            host: crate::hostname().into(),
            max_body_bytes: config.http_max_body_bytes,
            messages,
            backpressure,
            request_permits: Arc::new(Semaphore::new(config.http_max_requests)),
            body_timeout: config.http_body_timeout,
            store_timeout: config.http_store_timeout,
            token,
            counters,
        }
    }
}

/// Serves until `shutdown`; over TLS (HTTPS) when `tls` is given.
pub async fn serve(listener: TcpListener, tls: Option<ServerTls>, source: HttpSource, shutdown: CancellationToken) {
    let address = listener.local_addr().ok();
    let max_body_bytes = source.max_body_bytes;
    let router = Router::new()
        .route("/ingest", post(ingest))
        .route("/health", get(|| async { "ok\n" }))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(source);
    info!(address = ?address, tls = tls.is_some(), "HTTP source listening");
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let served = match tls {
        None => {
            axum::serve(LimitedListener::new(listener, connections), router)
                .with_graceful_shutdown(shutdown.clone().cancelled_owned())
                .await
        }
        Some(tls) => match TlsListener::spawn(listener, tls, shutdown.clone()) {
            Ok(tls_listener) => {
                axum::serve(LimitedListener::new(tls_listener, connections), router)
                    .with_graceful_shutdown(shutdown.clone().cancelled_owned())
                    .await
            }
            Err(error) => Err(error),
        },
    };
    if let Err(error) = served {
        error!(error = %error, "HTTP source stopped");
    }
}

/// Open HTTP connections at most. Each idle one costs a few tens of KiB and a file
/// descriptor; past the cap new ones wait in the kernel's accept queue, so that clients
/// holding connections open (slowloris) cannot grow the agent's memory or use up its
/// descriptors, which its Redis connection and files need too.
const MAX_CONNECTIONS: usize = 256;

/// A listener that accepts a connection only while fewer than the semaphore's permits are
/// open; the permit is released when the connection closes.
struct LimitedListener<L> {
    inner: L,
    permits: Arc<Semaphore>,
}

impl<L> LimitedListener<L> {
    fn new(inner: L, permits: Arc<Semaphore>) -> LimitedListener<L> {
        LimitedListener { inner, permits }
    }
}

impl<L: axum::serve::Listener> axum::serve::Listener for LimitedListener<L> {
    type Io = LimitedIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the connection semaphore is never closed");
        let (io, address) = self.inner.accept().await;
        (LimitedIo { io, _permit: permit }, address)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection holding one permit of [`LimitedListener`].
struct LimitedIo<I> {
    io: I,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl<I: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for LimitedIo<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
        buffer: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(context, buffer)
    }
}

impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for LimitedIo<I> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(context, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(context)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(context)
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

fn refused(status: StatusCode, reason: String) -> Response {
    (status, axum::Json(json!({ "error": reason }))).into_response()
}

async fn ingest(State(source): State<HttpSource>, request: Request) -> Response {
    if let Some(token) = &source.token
        && !token.admits(request.headers())
    {
        let mut response = refused(StatusCode::UNAUTHORIZED, "a valid bearer token is required".into());
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        return response;
    }
    if !json_content_type(request.headers()) {
        return refused(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content type must be one of {}", ACCEPTED_CONTENT_TYPES.join(", ")),
        );
    }
    // Held until the answer: bounds the bodies and events held by requests at once.
    let Ok(_permit) = source.request_permits.clone().try_acquire_owned() else {
        InputCounters::count(&source.counters.busy_http_requests);
        return unavailable("busy: too many requests in flight, retry later");
    };
    // The body limit (413) is applied by the extractor, from `DefaultBodyLimit`.
    let body = match tokio::time::timeout(source.body_timeout, Bytes::from_request(request, &())).await {
        Ok(Ok(body)) => body,
        Ok(Err(rejection)) => return rejection.into_response(),
        Err(_) => {
            InputCounters::count(&source.counters.http_body_timeouts);
            return refused(
                StatusCode::REQUEST_TIMEOUT,
                format!("the body did not arrive within {} ms", source.body_timeout.as_millis()),
            );
        }
    };
    let defaults = Defaults {
        level: Level::Info,
        service: &source.service,
        host: &source.host,
    };
    let events = match parse_body(&body, &defaults) {
        Ok(events) => events,
        Err((line, problem)) => return bad_request(line, problem),
    };
    match tokio::time::timeout(source.store_timeout, store(&source, events)).await {
        Ok(response) => response,
        Err(_) => {
            InputCounters::count(&source.counters.http_store_timeouts);
            unavailable(
                "the agent holds its batches: the events are queued and will be stored later, a retry may store them twice",
            )
        }
    }
}

/// Hands the events over and waits until they are stored.
async fn store(source: &HttpSource, events: Vec<LogEvent>) -> Response {
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
    fn content_types_and_tokens() {
        let mut headers = HeaderMap::new();
        assert!(!json_content_type(&headers));
        headers.insert(header::CONTENT_TYPE, "Application/JSON; charset=utf-8".parse().unwrap());
        assert!(json_content_type(&headers));
        headers.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert!(!json_content_type(&headers));

        let token = BearerToken("s3cret".into());
        assert!(!token.admits(&headers));
        headers.insert(header::AUTHORIZATION, "bearer s3cret".parse().unwrap());
        assert!(token.admits(&headers));
        headers.insert(header::AUTHORIZATION, "Bearer s3cre".parse().unwrap());
        assert!(!token.admits(&headers));
        headers.insert(header::AUTHORIZATION, "Basic s3cret".parse().unwrap());
        assert!(!token.admits(&headers));
        assert_eq!(format!("{token:?}"), "BearerToken(<redacted>)");
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
