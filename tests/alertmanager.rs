//! The Alertmanager sink against Debian's real `prometheus-alertmanager` on a loopback
//! port, read back through `GET /api/v2/alerts`: labels (a `log.level` group-by sanitised),
//! resolve, and the re-send that brings an alert back after Alertmanager lost its state.

#[path = "common/alerts.rs"]
mod alerts;
mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use alerts::sample_alert;
use common::{TestRedis, free_address, spawn_police, stop_gracefully, wait_until};
use logsentinel::broker::keys::Keys;
use logsentinel::delivery::config::SinkConfig;
use logsentinel::delivery::sinks::alertmanager::{AlertmanagerSink, run_resends};
use logsentinel::delivery::{AlertSink, Message, SinkError};
use logsentinel::police::alert::{Alert, AlertStatus};

const ALERTMANAGER: &str = "prometheus-alertmanager";

/// A real Alertmanager on a fixed loopback address; `restart` starts a fresh one there
/// with a new storage directory, so it remembers nothing.
struct TestAlertmanager {
    address: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
    generation: u32,
}

impl TestAlertmanager {
    fn start() -> TestAlertmanager {
        let dir = tempfile::tempdir().expect("temp dir for alertmanager");
        std::fs::write(
            dir.path().join("alertmanager.yml"),
            "route:\n  receiver: blackhole\n  group_wait: 1s\nreceivers:\n  - name: blackhole\n",
        )
        .expect("write alertmanager config");
        let mut alertmanager = TestAlertmanager {
            address: free_address(),
            dir,
            child: None,
            generation: 0,
        };
        alertmanager.spawn();
        alertmanager
    }

    fn spawn(&mut self) {
        self.generation += 1;
        let storage = self.dir.path().join(format!("data-{}", self.generation));
        std::fs::create_dir_all(&storage).expect("alertmanager storage dir");
        let log = std::fs::File::create(self.dir.path().join(format!("alertmanager-{}.log", self.generation)))
            .expect("alertmanager log file");
        let child = Command::new(ALERTMANAGER)
            .arg(format!("--config.file={}", self.dir.path().join("alertmanager.yml").display()))
            .arg(format!("--storage.path={}", storage.display()))
            .arg(format!("--web.listen-address={}", self.address))
            .arg("--cluster.listen-address=") // no gossip: a lone instance
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| {
                panic!("the Alertmanager tests need Debian's prometheus-alertmanager (apt-get install prometheus-alertmanager): {error}")
            });
        self.child = Some(child);
        let address = self.address.clone();
        wait_until("alertmanager ready", Duration::from_secs(60), || {
            curl_get(&address, "/-/ready").0 == 200
        });
    }

    fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// `GET /api/v2/alerts`: the alerts Alertmanager holds that have not ended.
    fn alerts(&self) -> Vec<serde_json::Value> {
        let (status, body) = curl_get(&self.address, "/api/v2/alerts");
        assert_eq!(status, 200, "GET /api/v2/alerts: {body}");
        serde_json::from_str(&body).expect("alerts JSON")
    }

    fn alerts_named(&self, alertname: &str) -> Vec<serde_json::Value> {
        self.alerts()
            .into_iter()
            .filter(|alert| alert["labels"]["alertname"] == alertname)
            .collect()
    }
}

impl Drop for TestAlertmanager {
    fn drop(&mut self) {
        self.stop();
    }
}

fn curl_get(address: &str, path: &str) -> (u16, String) {
    let output = Command::new("curl")
        .args(["-s", "-m", "10", "-w", "\n%{http_code}"])
        .arg(format!("http://{address}{path}"))
        .output()
        .expect("the tests need curl");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn sink_config(toml_text: &str) -> SinkConfig {
    toml::from_str(toml_text).expect("sink config")
}

fn frequency_alert(status: AlertStatus) -> Alert {
    let now = logsentinel::event::now_rfc3339();
    Alert {
        group: BTreeMap::from([("log.level".into(), "error".into()), ("service".into(), "api".into())]),
        annotations: BTreeMap::from([("summary".into(), "5 errors in api".into())]),
        count: 5,
        first_event_time: now.clone(),
        last_event_time: now.clone(),
        raised_at: now,
        ..sample_alert(
            "errors-by-level/9f1c2e4b7a6d3f01/1764590400000",
            "errors-by-level",
            "frequency",
            status,
            "am",
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firing_alert_is_active_with_sanitised_labels_even_with_one_instance_down() {
    let alertmanager = TestAlertmanager::start();
    let down_instance = format!("http://{}", free_address()); // nothing listens there
    let config = sink_config(&format!(
        "type = \"alertmanager\"\nurls = [\"{down_instance}\", \"{}\"]\ntimeout = \"2s\"\n",
        alertmanager.url()
    ));
    let sink = AlertmanagerSink::from_config("am", &config).await.expect("sink");
    assert_eq!(sink.max_alerts_per_message(), 64);

    let alert = frequency_alert(AlertStatus::Firing);
    sink.deliver(&Message::Single(&alert))
        .await
        .expect("delivered: one of two instances took it");

    let shown = alertmanager.alerts_named("errors-by-level");
    assert_eq!(shown.len(), 1, "{shown:?}");
    let labels = &shown[0]["labels"];
    let expected_labels = serde_json::json!({
        "alertname": "errors-by-level", "severity": "critical",
        "log_level": "error", "service": "api", "team": "core",
    });
    assert_eq!(labels, &expected_labels);
    assert_eq!(shown[0]["status"]["state"], "active");
    assert_eq!(shown[0]["annotations"]["summary"], "5 errors in api");
    assert_eq!(shown[0]["annotations"]["count"], "5");
    assert_eq!(shown[0]["annotations"]["alert_id"], alert.alert_id);

    // a digest of more alerts than one request takes: every one arrives
    let many: Vec<Alert> = (0..150)
        .map(|index| {
            let mut one = frequency_alert(AlertStatus::Firing);
            one.rule = "storm".into();
            one.alert_id = format!("storm/{index:016x}/0");
            one.group = BTreeMap::from([("service".into(), format!("svc-{index}"))]);
            one
        })
        .collect();
    sink.deliver(&Message::Digest {
        rule: "storm",
        alerts: &many,
    })
    .await
    .expect("digest delivered");
    assert_eq!(alertmanager.alerts_named("storm").len(), 150);

    sink.deliver(&Message::Single(&frequency_alert(AlertStatus::Resolved)))
        .await
        .expect("resolve delivered");
    wait_until("the resolved alert no longer active", Duration::from_secs(30), || {
        alertmanager.alerts_named("errors-by-level").is_empty()
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_instance_down_is_retryable() {
    let config = sink_config(&format!(
        "type = \"alertmanager\"\nurls = [\"http://{}\"]\ntimeout = \"2s\"\n",
        free_address()
    ));
    let sink = AlertmanagerSink::from_config("am", &config).await.expect("sink");
    let alert = frequency_alert(AlertStatus::Firing);
    match sink.deliver(&Message::Single(&alert)).await {
        Err(SinkError::Retryable { status, .. }) => assert!(status.contains("connect"), "{status}"),
        other => panic!("expected a retryable error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_sends_bring_an_alert_back_after_a_restart_and_resolve_it() {
    let redis = TestRedis::start(&[]);
    let mut alertmanager = TestAlertmanager::start();
    let config = sink_config(&format!(
        "type = \"alertmanager\"\nurls = [\"{}\"]\nresend_interval = \"1s\"\ntimeout = \"2s\"\n",
        alertmanager.url()
    ));
    let sink = Arc::new(AlertmanagerSink::from_config("am", &config).await.expect("sink"));
    let keys = Keys::default();
    let firing = frequency_alert(AlertStatus::Firing);
    let episode = "errors-by-level/9f1c2e4b7a6d3f01";
    let mut connection = redis.connection();
    let _: () = redis::cmd("HSET")
        .arg(keys.rules_active())
        .arg(episode)
        .arg(firing.to_json())
        .query(&mut connection)
        .expect("HSET active");

    let shutdown = tokio_util::sync::CancellationToken::new();
    let resends = tokio::spawn(run_resends(
        Arc::clone(&sink),
        redis.url(),
        keys.clone(),
        "police-1/test".into(),
        shutdown.clone(),
    ));

    wait_until("the firing episode re-sent", Duration::from_secs(60), || {
        alertmanager.alerts_named("errors-by-level").len() == 1
    });
    let lease_holder: Option<String> = redis::cmd("GET")
        .arg(keys.sink_lease("am"))
        .query(&mut connection)
        .expect("GET lease");
    assert_eq!(lease_holder.as_deref(), Some("police-1/test"));

    alertmanager.restart();
    assert!(
        alertmanager.alerts_named("errors-by-level").is_empty(),
        "a fresh alertmanager remembers nothing"
    );
    wait_until(
        "the alert active again after the restart",
        Duration::from_secs(60),
        || {
            let shown = alertmanager.alerts_named("errors-by-level");
            shown.len() == 1 && shown[0]["status"]["state"] == "active" && shown[0]["labels"]["log_level"] == "error"
        },
    );

    // the episode resolves: the clock moves it from the active to the resolved registry
    let mut resolved = frequency_alert(AlertStatus::Resolved);
    resolved.raised_at = logsentinel::event::now_rfc3339();
    let _: () = redis::pipe()
        .atomic()
        .cmd("HDEL")
        .arg(keys.rules_active())
        .arg(episode)
        .cmd("HSET")
        .arg(keys.rules_resolved())
        .arg(episode)
        .arg(resolved.to_json())
        .query(&mut connection)
        .expect("move to resolved");
    wait_until("the alert inactive after the resolve", Duration::from_secs(60), || {
        alertmanager.alerts_named("errors-by-level").is_empty()
    });
    shutdown.cancel();
    resends.await.expect("re-sends stop cleanly");
    let lease_holder: Option<String> = redis::cmd("GET")
        .arg(keys.sink_lease("am"))
        .query(&mut connection)
        .expect("GET lease");
    assert_eq!(lease_holder, None, "the lease is released on a clean stop");
}

fn push_error(connection: &mut redis::Connection, id: &str, timestamp: &str) {
    let event = serde_json::json!({
        "id": id, "timestamp": timestamp, "level": "ERROR", "service": "api", "host": "web-1",
        "message": "upstream timed out", "extra": {"log.level": "error"},
    });
    let _: String = redis::cmd("XADD")
        .arg("logsentinel:logs")
        .arg("*")
        .arg("v")
        .arg("1")
        .arg("event")
        .arg(event.to_string())
        .query(connection)
        .expect("XADD");
}

/// `held` fires and stays firing for the whole test (a one-hour window); `brief` fires
/// and resolves within seconds (a two-second window closes with nothing in the next).
const BLACK_BOX_RULES: &str = r#"
max_lateness = "1s"

[sinks.am]
type = "alertmanager"
urls = ["URL"]
resend_interval = "1s"
timeout = "2s"

[[rules]]
name = "held"
type = "frequency"
filter = { level = "ERROR" }
group_by = ["log.level", "service"]
threshold = 3
window = "1h"
severity = "critical"
labels = { team = "core" }
annotations = { summary = "{count} errors in {service}" }
sinks = ["am"]

[[rules]]
name = "brief"
type = "frequency"
filter = { level = "ERROR" }
group_by = ["log.level"]
threshold = 3
window = "2s"
sinks = ["am"]
"#;

#[test]
fn police_alerts_are_active_resolve_and_come_back_after_an_alertmanager_restart() {
    let redis = TestRedis::start(&[]);
    let mut alertmanager = TestAlertmanager::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, BLACK_BOX_RULES.replace("URL", &alertmanager.url())).expect("write rules");
    let police = spawn_police(
        &redis.url(),
        "police-1",
        &["--rules", rules.to_str().expect("utf-8 path")],
    );
    let mut connection = redis.connection();
    // one timestamp for all three: they fall into one window whatever its alignment
    let now = logsentinel::event::now_rfc3339();
    for sequence in 0..3 {
        push_error(&mut connection, &format!("agent-1:{sequence}:0"), &now);
    }

    wait_until("both alerts active in alertmanager", Duration::from_secs(60), || {
        alertmanager.alerts_named("held").len() == 1 && !alertmanager.alerts_named("brief").is_empty()
    });
    let held = &alertmanager.alerts_named("held")[0];
    let expected_labels = serde_json::json!({
        "alertname": "held", "severity": "critical", "log_level": "error", "service": "api", "team": "core",
    });
    assert_eq!(held["labels"], expected_labels, "log.level sanitised to log_level");
    assert_eq!(held["status"]["state"], "active");
    assert_eq!(held["annotations"]["summary"], "3 errors in api");
    assert_eq!(held["annotations"]["count"], "3");

    wait_until(
        "the brief alert inactive once resolved",
        Duration::from_secs(90),
        || alertmanager.alerts_named("brief").is_empty(),
    );

    alertmanager.restart();
    wait_until(
        "the held alert active again after the restart (re-sent)",
        Duration::from_secs(60),
        || {
            let shown = alertmanager.alerts_named("held");
            shown.len() == 1 && shown[0]["status"]["state"] == "active" && shown[0]["labels"] == expected_labels
        },
    );
    assert!(
        alertmanager.alerts_named("brief").is_empty(),
        "a resolved alert is re-sent resolved"
    );
    stop_gracefully(police);
}
