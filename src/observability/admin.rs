//! The admin HTTP listener of the agent and the police, apart from any ingest port:
//! `GET /metrics` (Prometheus text format), `GET /healthz` (the watchdog, never Redis),
//! `GET /readyz` (Redis answers, the group exists, the rules are loaded, no stop yet).
//!
//! The listener lives until the process exits, past a stop request, so that `/readyz` can
//! answer 503 while the last batches are settled.
//!
//! Invariants (the listener may face a hostile network, see the README's "Operating"):
//! - at most [`MAX_CONNECTIONS`] connections are open at once; beyond that none is accepted
//!   until one closes: the kernel's accept queue holds the others, and they cost no file
//!   descriptor of ours
//! - a connection that has not sent a whole request head [`HEADER_READ_TIMEOUT`] after it
//!   opened (or after its previous answer) is closed, so idle or slow clients free their
//!   slot and a probe waiting in the queue gets its turn

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{health, names, process};
use crate::broker::{self, Connection, errors::redact_credentials, keys::Keys, stream};

/// Where the admin listener listens; `None` is `off`.
pub type AdminListen = Option<SocketAddr>;

/// Parses `--admin-listen`: an address like `127.0.0.1:9464`, or `off`.
pub fn parse_listen(text: &str) -> Result<AdminListen, String> {
    if text.trim().eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    text.trim()
        .parse()
        .map(Some)
        .map_err(|_| format!("{text:?} is not an address like 127.0.0.1:9464, nor off"))
}

/// Which process serves: decides the readiness checks and the `role` of `build_info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Agent,
    /// The police; `stream_mode` adds the consumer-group check to `/readyz`.
    Police {
        stream_mode: bool,
    },
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Police { .. } => "police",
        }
    }
}

/// Longest a readiness check may take: a probe must get an answer, not a hang.
const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections served at once. A scraper and a probe or two use a handful; 256 leaves room
/// for many, while a flood of sockets stays far below a process's usual limit of 1024 fds.
pub const MAX_CONNECTIONS: usize = 256;
/// Longest wait for a whole request head (request line and headers), from the opening of
/// the connection or the end of the previous answer. A scraper sends its request at once;
/// 10 s is far above any honest client, and frees a slot held by a slow one soon enough
/// for a probe queued behind it to be answered 10 s later at most.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (out of fds, say) before the next one, so that the loop
/// does not spin while the cause lasts.
const ACCEPT_RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How often histogram samples are folded into their buckets when nobody scrapes, so that
/// an unscraped process does not keep every sample.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The cause is part of the message and deliberately not a `source`: the binary prints an
/// error with its chain, which would repeat the cause.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on --admin-listen {address}: {io_error} (set another address, or off)")]
pub struct AdminError {
    pub address: SocketAddr,
    pub io_error: std::io::Error,
}

struct AdminState {
    role: Role,
    redis_url: String,
    keys: Keys,
    shutdown: CancellationToken,
    metrics: PrometheusHandle,
    /// Kept between probes; dropped when a check fails so that the next one reconnects.
    connection: tokio::sync::Mutex<Option<Connection>>,
}

/// The process-wide recorder: installed once, whatever the number of listeners.
fn recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(names::REDIS_ROUND_TRIP_SECONDS.to_string()),
                    &names::ROUND_TRIP_BUCKETS_SECONDS,
                )
                .expect("the bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed, which this module alone does.
            let _ = metrics::set_global_recorder(recorder);
            names::describe();
            handle
        })
        .clone()
}

/// Binds the listener (an address in use stops startup, naming the option), installs the
/// recorder and serves until the process exits. Returns the bound address.
pub async fn start(
    address: SocketAddr,
    role: Role,
    redis_url: String,
    keys: Keys,
    shutdown: CancellationToken,
) -> Result<SocketAddr, AdminError> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|io_error| AdminError { address, io_error })?;
    let bound = listener
        .local_addr()
        .map_err(|io_error| AdminError { address, io_error })?;
    let metrics = recorder();
    metrics::gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "role" => role.name()).set(1.0);
    let upkeep_handle = metrics.clone();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            interval.tick().await;
            upkeep_handle.run_upkeep();
        }
    });
    let state = Arc::new(AdminState {
        role,
        redis_url,
        keys,
        shutdown,
        metrics,
        connection: tokio::sync::Mutex::new(None),
    });
    let router = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state);
    tokio::spawn(serve(listener, router));
    info!(address = %bound, "admin listener started (/metrics, /healthz, /readyz)");
    Ok(bound)
}

/// Accepts connections while a slot is free and serves each on a task of its own; see the
/// module doc for the limits.
async fn serve(listener: tokio::net::TcpListener, router: Router) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    loop {
        // Taken before `accept`: while every slot is busy, new connections wait in the
        // kernel's queue, not in our fd table.
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                tracing::warn!(error = %error, "admin listener: accept failed");
                tokio::time::sleep(ACCEPT_RETRY_PAUSE).await;
                continue;
            }
        };
        let connection = http.serve_connection(
            hyper_util::rt::TokioIo::new(stream),
            hyper_util::service::TowerToHyperService::new(router.clone()),
        );
        tokio::spawn(async move {
            // A client that goes away or times out is no error of ours: nothing to log.
            let _ = connection.await;
            drop(slot);
        });
    }
}

async fn metrics_page(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    if let Some(bytes) = process::resident_memory_bytes() {
        metrics::gauge!(names::PROCESS_RESIDENT_MEMORY_BYTES).set(bytes as f64);
    }
    if let Some(fds) = process::open_fds() {
        metrics::gauge!(names::PROCESS_OPEN_FDS).set(fds as f64);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
}

async fn healthz() -> impl IntoResponse {
    let stale = health::stale_loops();
    if stale.is_empty() {
        return (StatusCode::OK, "ok\n".to_string());
    }
    let mut body = String::new();
    for (name, silent) in stale {
        body.push_str(&format!("[-]loop {name}: no progress for {} s\n", silent.as_secs()));
    }
    body.push_str("healthz check failed\n");
    (StatusCode::INTERNAL_SERVER_ERROR, body)
}

async fn readyz(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    let mut lines = Vec::new();
    let mut ready = true;
    let mut check = |name: &str, outcome: Result<(), String>| match outcome {
        Ok(()) => lines.push(format!("[+]{name} ok")),
        Err(problem) => {
            ready = false;
            lines.push(format!("[-]{name}: {problem}"));
        }
    };
    check(
        "shutdown",
        if state.shutdown.is_cancelled() {
            Err("stopping".into())
        } else {
            Ok(())
        },
    );
    if let Role::Police { .. } = state.role {
        check(
            "rules",
            if health::rules_loaded() {
                Ok(())
            } else {
                Err("not loaded yet".into())
            },
        );
    }
    let redis_checks = match tokio::time::timeout(READY_CHECK_TIMEOUT, redis_checks(&state)).await {
        Ok(checks) => checks,
        Err(_) => vec![(
            "redis",
            Err(format!("no answer within {} s", READY_CHECK_TIMEOUT.as_secs())),
        )],
    };
    for (name, outcome) in redis_checks {
        check(name, outcome);
    }
    lines.push(
        if ready {
            "readyz check passed"
        } else {
            "readyz check failed"
        }
        .to_string(),
    );
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, lines.join("\n") + "\n")
}

/// `redis` (PING) and, for a police in stream mode, `group` (the group exists).
async fn redis_checks(state: &AdminState) -> Vec<(&'static str, Result<(), String>)> {
    let mut slot = state.connection.lock().await;
    if slot.is_none() {
        match broker::connect(&state.redis_url).await {
            Ok(connection) => *slot = Some(connection),
            Err(error) => return vec![("redis", Err(describe(&error)))],
        }
    }
    let connection = slot.as_mut().expect("connected above");
    if let Err(error) = redis::cmd("PING").query_async::<String>(connection).await {
        *slot = None;
        return vec![("redis", Err(describe(&error)))];
    }
    let mut checks = vec![("redis", Ok(()))];
    if let Role::Police { stream_mode: true } = state.role {
        let group = match stream::groups(connection, &state.keys.stream).await {
            Ok(groups) if groups.iter().any(|group| group.name == state.keys.group) => Ok(()),
            Ok(_) => Err(format!(
                "group {} does not exist on {}",
                state.keys.group, state.keys.stream
            )),
            // XINFO GROUPS on a missing stream: no group either
            Err(error) if error.code().is_some() => Err(format!("stream {} does not exist", state.keys.stream)),
            Err(error) => {
                *slot = None;
                Err(describe(&error))
            }
        };
        checks.push(("group", group));
    }
    checks
}

/// A Redis error as one lowercase line, without credentials.
fn describe(error: &redis::RedisError) -> String {
    let text = redact_credentials(&error.to_string()).to_lowercase();
    text.lines().next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_values_are_an_address_or_off() {
        assert_eq!(parse_listen("off").unwrap(), None);
        assert_eq!(parse_listen("OFF").unwrap(), None);
        assert_eq!(
            parse_listen("127.0.0.1:9464").unwrap(),
            Some(([127, 0, 0, 1], 9464).into())
        );
        assert!(parse_listen("localhost").unwrap_err().contains("nor off"));
    }
}
