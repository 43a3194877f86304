//! Alertmanager sink: `POST /api/v2/alerts` to every instance of a cluster, and the
//! re-sends Alertmanager needs (it forgets an alert whose `endsAt` passed, and an
//! instance that restarts forgets everything).
//!
//! Invariants:
//! - every listed instance is sent every alert; a delivery succeeds when at least one
//!   instance took it (2xx). This is Prometheus's convention: the instances of a cluster
//!   share notification state by gossip and each deduplicates notifications, so one that
//!   took the alert is enough for it to reach people, and an instance that missed it gets
//!   it at the next re-send. Retryable only when every instance failed and one of them
//!   with a retryable status; permanent when every instance refused (400)
//! - a request carries at most [`MAX_ALERTS_PER_REQUEST`] alerts
//! - labels identify an alert in Alertmanager, so they are a pure function of the rule,
//!   severity, group values and rule labels (never of event or alert ids, never of time):
//!   a re-send and a resolve of an episode carry the very labels of its first send. The
//!   alert id travels as an annotation
//! - firing: `endsAt` = now + 4 re-send intervals, so an alert survives three lost
//!   re-sends; a per-event alert (an `any` rule without cooldown, such as the built-in
//!   `critical`) has no episode to re-send or resolve, so it is sent with `endsAt` = its
//!   raise + [`PER_EVENT_QUIET`]: Alertmanager resolves it by itself 5 min after the last
//!   match of its label set (every match of the set pushes `endsAt` on); resolved: `endsAt` = the resolve time, never before `startsAt` (Alertmanager
//!   rejects such an alert with 400)
//! - re-sends run in one police at a time, the holder of this sink's lease
//!   (`<rules_prefix>lease:sink:<name>`, its own lease so the re-sends need nothing from
//!   the clock work): every re-send interval it posts each firing episode of
//!   `<rules_prefix>active` and each episode of `<rules_prefix>resolved` resolved within
//!   the last [`RESOLVED_RESEND_WINDOW`] that are routed to this sink. Re-sends are
//!   idempotent (same labels), so a lease briefly held twice only sends twice

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::broker::keys::Keys;
use crate::broker::lease::{Lease, RENEW_INTERVAL};
use crate::broker::{self, Backoff, registry};
use crate::delivery::config::{DEFAULT_TIMEOUT, SetupError, SinkConfig};
use crate::delivery::{AlertSink, Message, SinkError, http};
use crate::police::alert::{Alert, AlertStatus};

/// Alerts per `POST /api/v2/alerts`: keeps each request small (a digest of thousands of
/// alerts becomes many requests), as the issue asks.
pub const MAX_ALERTS_PER_REQUEST: usize = 64;
/// Re-send period of firing alerts unless `resend_interval` is set; Prometheus's default.
pub const DEFAULT_RESEND_INTERVAL: Duration = Duration::from_secs(60);
/// A firing alert's `endsAt` is this many re-send intervals ahead: three re-sends may be
/// lost before Alertmanager resolves it by itself.
const ENDS_AT_INTERVALS: u32 = 4;
/// Resolved alerts are re-sent this long after their resolve, so an instance that was
/// down or restarted at the resolve learns it (the resolved registry keeps them as long).
pub const RESOLVED_RESEND_WINDOW: Duration = Duration::from_secs(15 * 60);
/// A per-event alert ends this long after it was raised (the issue's "an `any` alert
/// resolves after 5 min without new matches"); the clock resolves `any` episodes after as
/// long.
pub const PER_EVENT_QUIET: Duration = crate::police::clock::ANY_QUIET;
/// Default `summary` when the rule has none.
const DEFAULT_SUMMARY_PREFIX: &str = "LogSentinel rule";

/// One instance: where to post, and how to name it in messages and dead letters: only
/// `scheme://host:port`, since a path or query may hold a token (see [`http::redact_url`]).
#[derive(Debug, Clone)]
struct Instance {
    alerts_url: reqwest::Url,
    display: String,
}

pub struct AlertmanagerSink {
    name: String,
    instances: Vec<Instance>,
    resend_interval: Duration,
    client: reqwest::Client,
}

impl AlertmanagerSink {
    /// Builds the sink from its `[sinks.NAME]` table (`type = "alertmanager"`).
    pub async fn from_config(name: &str, config: &SinkConfig) -> Result<AlertmanagerSink, SetupError> {
        let invalid = |problem: &str| SetupError::Invalid {
            sink: name.into(),
            problem: problem.into(),
        };
        let SinkConfig::Alertmanager {
            urls,
            resend_interval,
            timeout,
            ..
        } = config
        else {
            return Err(invalid("not an alertmanager sink"));
        };
        if urls.is_empty() {
            return Err(invalid("urls lists no instance"));
        }
        let mut instances = Vec::with_capacity(urls.len());
        for (index, url) in urls.iter().enumerate() {
            let url = url.resolve(name, &format!("urls[{index}]")).await?;
            instances.push(instance(name, url.expose())?);
        }
        let resend_interval = resend_interval.map_or(DEFAULT_RESEND_INTERVAL, |interval| interval.0);
        if resend_interval.is_zero() {
            return Err(invalid("resend_interval must be above zero"));
        }
        let client = http::client(name, timeout.map_or(DEFAULT_TIMEOUT, |timeout| timeout.0))?;
        Ok(AlertmanagerSink {
            name: name.into(),
            instances,
            resend_interval,
            client,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn resend_interval(&self) -> Duration {
        self.resend_interval
    }

    /// Posts the alerts, [`MAX_ALERTS_PER_REQUEST`] per request, to every instance.
    pub async fn post_alerts(&self, alerts: &[Alert]) -> Result<(), SinkError> {
        let now = Utc::now();
        for chunk in alerts.chunks(MAX_ALERTS_PER_REQUEST) {
            let postable: Vec<PostableAlert> = chunk
                .iter()
                .map(|alert| PostableAlert::new(alert, now, self.resend_interval))
                .collect();
            let body = serde_json::to_vec(&postable).expect("serialising alerts into memory cannot fail");
            self.post_to_every_instance(body).await?;
        }
        Ok(())
    }

    /// Sends one body to every instance at once (a hanging instance does not delay the
    /// others); `Ok` when at least one took it, see the module doc.
    async fn post_to_every_instance(&self, body: Vec<u8>) -> Result<(), SinkError> {
        let mut requests = tokio::task::JoinSet::new();
        for instance in &self.instances {
            let (client, sink_name, url, body) = (
                self.client.clone(),
                self.name.clone(),
                instance.alerts_url.clone(),
                // a copy per instance: at most 64 alerts, a few tens of KiB
                body.clone(),
            );
            let instance_name = instance.display.clone();
            requests.spawn(async move {
                let headers = [("content-type", "application/json".to_string())];
                (
                    instance_name,
                    http::post(&client, &sink_name, &url, body, &headers).await,
                )
            });
        }
        let mut any_taken = false;
        let mut failures = Vec::new();
        while let Some(joined) = requests.join_next().await {
            let (instance_name, outcome) = joined.expect("an alertmanager request task does not panic");
            match outcome {
                Ok(()) => any_taken = true,
                Err(failure) => failures.push((instance_name, Failure::from(failure))),
            }
        }
        for (instance_name, failure) in &failures {
            if any_taken {
                warn!(sink = %self.name, instance = %instance_name, status = %failure.status, "alertmanager instance did not take the alerts, another did");
            } else {
                debug!(sink = %self.name, instance = %instance_name, status = %failure.status, "alertmanager instance did not take the alerts");
            }
        }
        if any_taken {
            return Ok(());
        }
        let status = failures
            .iter()
            .map(|(instance_name, failure)| format!("{} from {instance_name}", failure.status))
            .collect::<Vec<_>>()
            .join("; ");
        if failures.iter().any(|(_, failure)| failure.retryable) {
            let retry_after = failures.iter().filter_map(|(_, failure)| failure.retry_after).max();
            return Err(SinkError::Retryable {
                sink: self.name.clone(),
                status,
                retry_after,
            });
        }
        Err(SinkError::Permanent {
            sink: self.name.clone(),
            status,
        })
    }
}

fn instance(sink: &str, url: &str) -> Result<Instance, SetupError> {
    let bad_url = || SetupError::Invalid {
        sink: sink.into(),
        problem: format!("{} is not an http(s) url", http::redact_url(url)),
    };
    let base = reqwest::Url::parse(url).map_err(|_| bad_url())?;
    if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
        return Err(bad_url());
    }
    let mut alerts_url = base.clone();
    let path = format!("{}/api/v2/alerts", base.path().trim_end_matches('/'));
    alerts_url.set_path(&path);
    Ok(Instance {
        alerts_url,
        display: http::redact_url(base.as_str()),
    })
}

#[async_trait::async_trait]
impl AlertSink for AlertmanagerSink {
    async fn deliver(&self, message: &Message<'_>) -> Result<(), SinkError> {
        let alerts: &[Alert] = match message {
            Message::Single(alert) => std::slice::from_ref(*alert),
            // Alertmanager groups alerts itself: a digest is its alerts, each one posted.
            Message::Digest { alerts, .. } => alerts,
        };
        self.post_alerts(alerts).await
    }

    fn max_alerts_per_message(&self) -> usize {
        MAX_ALERTS_PER_REQUEST
    }
}

/// Why one instance did not take a request.
#[derive(Debug)]
struct Failure {
    status: String,
    retryable: bool,
    retry_after: Option<Duration>,
}

impl From<SinkError> for Failure {
    fn from(error: SinkError) -> Failure {
        match error {
            SinkError::Retryable {
                status, retry_after, ..
            } => Failure {
                status,
                retryable: true,
                retry_after,
            },
            SinkError::Permanent { status, .. } => Failure {
                status,
                retryable: false,
                retry_after: None,
            },
        }
    }
}

/// One alert of the Alertmanager v2 API (`postableAlert`).
#[derive(Debug, Serialize, PartialEq)]
pub struct PostableAlert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    #[serde(rename = "startsAt")]
    pub starts_at: String,
    #[serde(rename = "endsAt")]
    pub ends_at: String,
}

impl PostableAlert {
    /// The alert as Alertmanager gets it at `now` (see the module doc for the times).
    pub fn new(alert: &Alert, now: DateTime<Utc>, resend_interval: Duration) -> PostableAlert {
        let raised_at = parse_time(&alert.raised_at).unwrap_or(now);
        let first_event = parse_time(&alert.first_event_time).unwrap_or(raised_at);
        let (starts_at, ends_at) = match alert.status {
            AlertStatus::Firing if alert.is_per_event() => {
                let starts_at = first_event.min(now);
                let quiet = chrono::Duration::from_std(PER_EVENT_QUIET).unwrap_or(chrono::Duration::MAX);
                let ends_at = raised_at.checked_add_signed(quiet).unwrap_or(DateTime::<Utc>::MAX_UTC);
                (starts_at, ends_at.max(starts_at))
            }
            AlertStatus::Firing => {
                // An event time ahead of our clock (a skewed host) would make an alert
                // that starts in the future: start it now at the latest.
                let starts_at = first_event.min(now);
                let ahead =
                    chrono::Duration::from_std(resend_interval * ENDS_AT_INTERVALS).unwrap_or(chrono::Duration::MAX);
                (
                    starts_at,
                    now.checked_add_signed(ahead).unwrap_or(DateTime::<Utc>::MAX_UTC),
                )
            }
            AlertStatus::Resolved => {
                // `raised_at` of a resolve record is the resolve time.
                let resolved_at = raised_at;
                let starts_at = first_event.min(resolved_at);
                (starts_at, resolved_at)
            }
        };
        PostableAlert {
            labels: label_set(alert),
            annotations: annotation_set(alert),
            starts_at: format_time(starts_at),
            ends_at: format_time(ends_at),
        }
    }
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|time| time.with_timezone(&Utc))
}

fn format_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The label set of an alert, in this order of precedence: `alertname` = rule,
/// `severity`, the group-by values (by field name; the field `id` is left out: event ids
/// are never labels), the rule's labels (by name). Names are sanitised
/// ([`sanitise_name`]); a name already taken gets `_2`, `_3`, … in that order, so the same
/// alert always gets the same labels.
pub fn label_set(alert: &Alert) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    insert_unique(&mut labels, "alertname", &alert.rule);
    insert_unique(&mut labels, "severity", &alert.severity);
    for (field, value) in alert.group.iter().filter(|(field, _)| field.as_str() != "id") {
        insert_unique(&mut labels, &sanitise_name(field), value);
    }
    for (name, value) in &alert.labels {
        insert_unique(&mut labels, &sanitise_name(name), value);
    }
    labels
}

/// Annotations: `summary` (the rule's, or a default naming the rule and group), `count`,
/// `alert_id`, `rule_type`, then the rule's other annotations (names sanitised and made
/// unique as for labels: Alertmanager validates annotation names as label names).
pub fn annotation_set(alert: &Alert) -> BTreeMap<String, String> {
    let mut annotations = BTreeMap::new();
    let summary = match alert.annotations.get("summary") {
        Some(summary) => summary.clone(),
        None => default_summary(alert),
    };
    insert_unique(&mut annotations, "summary", &summary);
    insert_unique(&mut annotations, "count", &alert.count.to_string());
    insert_unique(&mut annotations, "alert_id", &alert.alert_id);
    insert_unique(&mut annotations, "rule_type", &alert.rule_type);
    for (name, value) in alert.annotations.iter().filter(|(name, _)| name.as_str() != "summary") {
        insert_unique(&mut annotations, &sanitise_name(name), value);
    }
    annotations
}

fn default_summary(alert: &Alert) -> String {
    let group: Vec<String> = alert
        .group
        .iter()
        .map(|(field, value)| format!("{field}={value}"))
        .collect();
    let matches = if alert.count == 1 { "match" } else { "matches" };
    if group.is_empty() {
        return format!("{DEFAULT_SUMMARY_PREFIX} {}: {} {matches}", alert.rule, alert.count);
    }
    format!(
        "{DEFAULT_SUMMARY_PREFIX} {} ({}): {} {matches}",
        alert.rule,
        group.join(", "),
        alert.count
    )
}

fn insert_unique(map: &mut BTreeMap<String, String>, name: &str, value: &str) {
    let mut candidate = name.to_string();
    let mut suffix = 2;
    while map.contains_key(&candidate) {
        candidate = format!("{name}_{suffix}");
        suffix += 1;
    }
    map.insert(candidate, value.to_string());
}

/// A label name Alertmanager accepts (`[a-zA-Z_][a-zA-Z0-9_]*`): every other character
/// becomes `_`, a leading digit (or an empty name) gets a `_` in front.
pub fn sanitise_name(name: &str) -> String {
    let mut sanitised: String = name
        .chars()
        .map(|character| {
            if character.is_ascii_alphanumeric() || character == '_' {
                character
            } else {
                '_'
            }
        })
        .collect();
    if sanitised.is_empty() || sanitised.starts_with(|first: char| first.is_ascii_digit()) {
        sanitised.insert(0, '_');
    }
    sanitised
}

/// Re-sends the episodes of the registries routed to `sink` while this process holds the
/// sink's lease, until `shutdown`; releases the lease on the way out. Failures are logged
/// and tried again at the next round: a re-send is never urgent, the next one repeats it.
pub async fn run_resends(
    sink: Arc<AlertmanagerSink>,
    redis_url: String,
    keys: Keys,
    owner: String,
    shutdown: CancellationToken,
) {
    let lease = Lease {
        key: keys.sink_lease(&sink.name),
        owner,
    };
    // Ticks often enough both to renew the lease within its life and to re-send on time.
    let mut ticks = tokio::time::interval(RENEW_INTERVAL.min(sink.resend_interval));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backoff = Backoff::new("alertmanager re-sends", &redis_url);
    let mut connection = None;
    // When the next round is due while we hold the lease; `None` while we do not, so a
    // police taking the lease over re-sends at once (it cannot know when the last was).
    let mut next_round: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticks.tick() => {}
        }
        if connection.is_none() {
            match broker::connect(&redis_url).await {
                Ok(connected) => connection = Some(connected),
                Err(error) => {
                    let delay = backoff.failed(&error);
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => continue,
                    }
                }
            }
        }
        let Some(redis) = connection.as_mut() else { continue };
        let held = match lease.acquire_or_renew(redis).await {
            Ok(held) => held,
            Err(error) => {
                backoff.failed(&error);
                connection = None;
                next_round = None;
                continue;
            }
        };
        backoff.succeeded();
        if !held {
            if next_round.take().is_some() {
                info!(sink = %sink.name, "alertmanager re-sends handed over to another police");
            }
            continue;
        }
        let now = tokio::time::Instant::now();
        if next_round.is_some_and(|due| now < due) {
            continue;
        }
        if next_round.is_none() {
            info!(sink = %sink.name, "alertmanager re-sends run here (lease taken)");
        }
        next_round = Some(now + sink.resend_interval);
        match resend_round(&sink, redis, &keys).await {
            Ok(sent) => debug!(sink = %sink.name, sent, "alertmanager re-send round done"),
            Err(ResendError::Redis(error)) => {
                warn!(sink = %sink.name, error = %error, "alertmanager re-send round could not read the registries");
                connection = None;
            }
            Err(ResendError::Sink(error)) => {
                warn!(sink = %sink.name, error = %error, "alertmanager re-send round failed, next round repeats it")
            }
        }
    }
    if let Some(redis) = connection.as_mut()
        && let Err(error) = lease.release(redis).await
    {
        debug!(sink = %sink.name, error = %error, "could not release the re-send lease, it expires by itself");
    }
}

#[derive(Debug, thiserror::Error)]
enum ResendError {
    #[error("reading the registries failed")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// One round: the firing and recently resolved episodes routed to the sink, posted.
/// Returns how many alerts were sent.
async fn resend_round(
    sink: &AlertmanagerSink,
    connection: &mut broker::Connection,
    keys: &Keys,
) -> Result<usize, ResendError> {
    let mut records = registry::records(connection, &keys.rules_active()).await?;
    records.extend(registry::records(connection, &keys.rules_resolved()).await?);
    let alerts = resendable(&sink.name, &records, Utc::now());
    sink.post_alerts(&alerts).await?;
    Ok(alerts.len())
}

/// The records worth re-sending at `now`: routed to `sink_name`, firing or resolved
/// within [`RESOLVED_RESEND_WINDOW`]. Unreadable records are skipped (logged).
fn resendable(sink_name: &str, records: &[String], now: DateTime<Utc>) -> Vec<Alert> {
    let window = chrono::Duration::from_std(RESOLVED_RESEND_WINDOW).expect("15 min fit a chrono duration");
    let mut alerts = Vec::new();
    for record in records {
        let alert: Alert = match serde_json::from_str(record) {
            Ok(alert) => alert,
            Err(error) => {
                warn!(error = %error, "skipping an unreadable alert record in a registry");
                continue;
            }
        };
        if !alert.sinks.iter().any(|name| name == sink_name) {
            continue;
        }
        let recent = match alert.status {
            AlertStatus::Firing => true,
            AlertStatus::Resolved => parse_time(&alert.raised_at).is_none_or(|resolved_at| now - resolved_at <= window),
        };
        if recent {
            alerts.push(alert);
        }
    }
    alerts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(status: AlertStatus) -> Alert {
        Alert {
            alert_id: "errors/9f1c2e4b7a6d3f01/1764590400000".into(),
            rule: "errors".into(),
            rule_type: "frequency".into(),
            status,
            severity: "warning".into(),
            group: BTreeMap::from([
                ("log.level".into(), "error".into()),
                ("log_level".into(), "x".into()),
                ("9lives".into(), "cat".into()),
                ("id".into(), "a:1:0".into()),
            ]),
            labels: BTreeMap::from([("team".into(), "core".into()), ("alertname".into(), "spoof".into())]),
            annotations: BTreeMap::from([("runbook-url".into(), "https://runbooks/x".into())]),
            count: 7,
            first_event_time: "2026-12-01T12:00:00Z".into(),
            last_event_time: "2026-12-01T12:00:30Z".into(),
            raised_at: "2026-12-01T12:01:00Z".into(),
            sinks: vec!["am".into()],
            event: None,
        }
    }

    #[test]
    fn names_are_sanitised_to_label_names() {
        assert_eq!(sanitise_name("log.level"), "log_level");
        assert_eq!(sanitise_name("9lives"), "_9lives");
        assert_eq!(sanitise_name(""), "_");
        assert_eq!(sanitise_name("caf\u{e9}-x"), "caf__x");
        assert_eq!(sanitise_name("ok_Name9"), "ok_Name9");
    }

    #[test]
    fn labels_resolve_collisions_in_a_fixed_order_and_leave_ids_out() {
        let labels = label_set(&alert(AlertStatus::Firing));
        let expected: BTreeMap<String, String> = [
            ("alertname", "errors"),
            ("severity", "warning"),
            ("_9lives", "cat"),
            ("log_level", "error"),
            ("log_level_2", "x"),
            ("alertname_2", "spoof"),
            ("team", "core"),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
        assert_eq!(labels, expected);
    }

    #[test]
    fn firing_ends_four_intervals_ahead_and_resolved_at_the_resolve() {
        let now = parse_time("2026-12-01T12:02:00Z").unwrap();
        let firing = PostableAlert::new(&alert(AlertStatus::Firing), now, Duration::from_secs(60));
        assert_eq!(firing.starts_at, "2026-12-01T12:00:00.000Z");
        assert_eq!(firing.ends_at, "2026-12-01T12:06:00.000Z");
        assert_eq!(firing.annotations["count"], "7");
        assert_eq!(firing.annotations["alert_id"], "errors/9f1c2e4b7a6d3f01/1764590400000");
        assert_eq!(firing.annotations["runbook_url"], "https://runbooks/x");
        assert!(firing.annotations["summary"].contains("errors"));

        let resolved = PostableAlert::new(&alert(AlertStatus::Resolved), now, Duration::from_secs(60));
        assert_eq!(resolved.ends_at, "2026-12-01T12:01:00.000Z");
        assert_eq!(
            resolved.labels, firing.labels,
            "a resolve must carry the labels of the firing alert"
        );
    }

    #[test]
    fn a_per_event_alert_ends_five_minutes_after_its_raise() {
        let event = crate::event::LogEvent {
            id: "a:1:7".into(),
            timestamp: "2026-12-01T12:00:00Z".into(),
            level: crate::event::Level::Critical,
            service: "api".into(),
            host: "h1".into(),
            message: "down".into(),
            extra: BTreeMap::new(),
        };
        let mut per_event = Alert::for_event("critical", "critical", &["am".into()], event);
        per_event.raised_at = "2026-12-01T12:00:01Z".into();
        assert!(per_event.is_per_event());
        let now = parse_time("2026-12-01T12:03:00Z").unwrap();
        let posted = PostableAlert::new(&per_event, now, Duration::from_secs(60));
        assert_eq!(posted.ends_at, "2026-12-01T12:05:01.000Z");
        // an episode of a rule with a cooldown is re-sent instead
        assert!(!alert(AlertStatus::Firing).is_per_event());
    }

    #[test]
    fn times_never_make_an_invalid_alert() {
        let now = parse_time("2026-12-01T11:00:00Z").unwrap();
        let mut skewed = alert(AlertStatus::Resolved);
        skewed.first_event_time = "2026-12-01T13:00:00Z".into(); // ahead of the resolve
        let resolved = PostableAlert::new(&skewed, now, Duration::from_secs(60));
        assert!(resolved.starts_at <= resolved.ends_at, "{resolved:?}");
        skewed.status = AlertStatus::Firing;
        let firing = PostableAlert::new(&skewed, now, Duration::from_secs(60));
        assert_eq!(firing.starts_at, "2026-12-01T11:00:00.000Z");
        let mut unparsable = alert(AlertStatus::Firing);
        unparsable.first_event_time = "yesterday".into();
        unparsable.raised_at = "soon".into();
        assert_eq!(
            PostableAlert::new(&unparsable, now, Duration::from_secs(1)).starts_at,
            "2026-12-01T11:00:00.000Z"
        );
    }

    #[test]
    fn the_rule_summary_wins_over_the_default() {
        let mut with_summary = alert(AlertStatus::Firing);
        with_summary
            .annotations
            .insert("summary".into(), "7 errors in api".into());
        assert_eq!(annotation_set(&with_summary)["summary"], "7 errors in api");
        assert!(!annotation_set(&with_summary).contains_key("summary_2"));
    }

    #[test]
    fn resendable_keeps_routed_firing_and_recent_resolves() {
        let now = parse_time("2026-12-01T12:20:00Z").unwrap();
        let firing = alert(AlertStatus::Firing);
        let mut recent = alert(AlertStatus::Resolved);
        recent.raised_at = "2026-12-01T12:10:00Z".into();
        let mut old = alert(AlertStatus::Resolved);
        old.raised_at = "2026-12-01T12:01:00Z".into();
        let mut elsewhere = alert(AlertStatus::Firing);
        elsewhere.sinks = vec!["mail".into()];
        let records: Vec<String> = [&firing, &recent, &old, &elsewhere]
            .iter()
            .map(|alert| alert.to_json())
            .chain(["not json".to_string()])
            .collect();
        let kept = resendable("am", &records, now);
        assert_eq!(kept, vec![firing, recent]);
    }

    #[test]
    fn instance_urls_get_the_api_path_and_lose_credentials_in_messages() {
        let with_path = instance("am", "http://user:secret@127.0.0.1:9093/am/?token=t0ken").unwrap();
        assert_eq!(
            with_path.alerts_url.as_str(),
            "http://user:secret@127.0.0.1:9093/am/api/v2/alerts?token=t0ken"
        );
        assert_eq!(with_path.display, "http://127.0.0.1:9093/***?***");
        assert!(instance("am", "ftp://host").is_err());
        assert!(instance("am", "not a url").is_err());
        let refused = instance("am", "ftp://host/path?token=t0ken").err().unwrap().to_string();
        assert!(!refused.contains("t0ken"), "{refused}");
    }
}
