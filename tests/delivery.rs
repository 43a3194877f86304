//! Delivery through the outbox: real redis-server, real HTTP receivers started by the test,
//! the police's delivery workers (in this process, or the built binary for console and
//! JSONL). Every check waits for a condition; no durations are asserted.

mod common;
#[path = "common/receiver.rs"]
mod receiver;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use hmac::Mac;
use logsentinel::broker::keys::Keys;
use logsentinel::delivery::config::{Secret, SinkConfig};
use logsentinel::delivery::{SinkWorker, WorkerSettings, spawn_workers};
use logsentinel::options::DurationMs;
use logsentinel::police::alert::{Alert, AlertStatus};
use tokio_util::sync::CancellationToken;

use common::*;
use receiver::{Answer, Receiver};

const SIGNING_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn alert(alert_id: &str, rule: &str, sinks: &[&str]) -> Alert {
    Alert {
        alert_id: alert_id.into(),
        rule: rule.into(),
        rule_type: "any".into(),
        status: AlertStatus::Firing,
        severity: "critical".into(),
        group: BTreeMap::new(),
        labels: [("team".to_string(), "core".to_string())].into(),
        annotations: [("summary".to_string(), format!("{alert_id} fired"))].into(),
        count: 1,
        first_event_time: "2026-12-01T12:00:00Z".into(),
        last_event_time: "2026-12-01T12:00:00Z".into(),
        raised_at: "2026-12-01T12:00:01Z".into(),
        sinks: sinks.iter().map(|sink| sink.to_string()).collect(),
        event: None,
    }
}

/// Writes records into the outbox as the settle script does (fields `id`, `alert`).
fn write_outbox(connection: &mut redis::Connection, alerts: &[Alert]) {
    let mut pipeline = redis::pipe();
    for alert in alerts {
        pipeline
            .cmd("XADD")
            .arg("logsentinel:alerts")
            .arg("*")
            .arg("id")
            .arg(&alert.alert_id)
            .arg("alert")
            .arg(alert.to_json())
            .ignore();
    }
    let () = pipeline.query(connection).expect("XADD alerts");
}

/// CRITICAL events written straight into the log stream, ids `<prefix>:<n>`.
fn write_critical_events(connection: &mut redis::Connection, prefix: &str, count: usize) {
    for chunk_start in (0..count).step_by(1000) {
        let mut pipeline = redis::pipe();
        for number in chunk_start..(chunk_start + 1000).min(count) {
            let event = serde_json::json!({
                "id": format!("{prefix}:{number}"),
                "timestamp": "2026-12-01T12:00:00Z",
                "level": "CRITICAL",
                "service": "api",
                "host": "web-1",
                "message": format!("disk full {number}"),
            });
            pipeline
                .cmd("XADD")
                .arg("logsentinel:logs")
                .arg("*")
                .arg("v")
                .arg("1")
                .arg("event")
                .arg(event.to_string())
                .ignore();
        }
        let () = pipeline.query(connection).expect("XADD events");
    }
}

fn settings(url: &str, consumer: &str) -> WorkerSettings {
    WorkerSettings {
        redis_url: url.to_string(),
        keys: Keys::default(),
        consumer: consumer.to_string(),
        claim_idle: Duration::from_secs(30),
        maintenance_interval: Duration::from_millis(200),
        block: Duration::from_millis(200),
        read_count: 256,
        trim: true,
        alerts_retention: Duration::from_secs(3600),
    }
}

fn webhook(url: &str, secret: Option<&str>, max_attempts: u32) -> SinkConfig {
    SinkConfig::Webhook {
        url: Secret::Value(url.to_string()),
        secret: secret.map(|secret| Secret::Value(secret.to_string())),
        headers: BTreeMap::new(),
        max_attempts: Some(max_attempts),
        timeout: Some(DurationMs(Duration::from_secs(5))),
        rate_limit: None,
    }
}

/// A rule file with `sinks_toml` (its `[sinks.NAME]` tables) and the rule `critical`: an
/// alert for every CRITICAL event (cooldown 0), routed to `rule_sinks`.
fn rule_file(dir: &std::path::Path, sinks_toml: &str, rule_sinks: &[&str]) -> PathBuf {
    let path = dir.join("rules.toml");
    let sinks: Vec<String> = rule_sinks.iter().map(|sink| format!("{sink:?}")).collect();
    let text = format!(
        "{sinks_toml}\n[[rules]]\nname = \"critical\"\ntype = \"any\"\nfilter = {{ level = \"CRITICAL\" }}\n\
         cooldown = \"0s\"\nseverity = \"critical\"\nsinks = [{}]\n",
        sinks.join(", ")
    );
    std::fs::write(&path, text).expect("write the rule file");
    path
}

/// `police --rules FILE` as a child process.
fn spawn_police_with_rules(url: &str, consumer: &str, rules: &std::path::Path) -> std::process::Child {
    spawn_police(url, consumer, &["--rules", rules.to_str().unwrap(), "--block", "200ms"])
}

async fn wait_for(what: &str, deadline: Duration, mut condition: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sink_group_pending(connection: &mut redis::Connection, sink: &str) -> u64 {
    let reply: redis::Value = redis::cmd("XPENDING")
        .arg("logsentinel:alerts")
        .arg(format!("sink:{sink}"))
        .query(connection)
        .expect("XPENDING");
    match reply {
        redis::Value::Array(parts) => redis::from_redis_value::<u64>(parts[0].clone()).unwrap(),
        other => panic!("unexpected XPENDING reply {other:?}"),
    }
}

/// XINFO GROUPS lag + pending of a sink's group: what it has left to deliver.
fn sink_backlog(connection: &mut redis::Connection, sink: &str) -> u64 {
    let groups: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg("logsentinel:alerts")
        .query(connection)
        .expect("XINFO GROUPS");
    let group = groups
        .iter()
        .find(|group| redis::from_redis_value::<String>(group["name"].clone()).unwrap() == format!("sink:{sink}"))
        .expect("the sink's group exists");
    let lag: u64 = redis::from_redis_value(group["lag"].clone()).unwrap_or(u64::MAX);
    let pending: u64 = redis::from_redis_value(group["pending"].clone()).unwrap();
    lag + pending
}

fn verify_signature(request: &receiver::Request) {
    let id = request.header("webhook-id").expect("webhook-id");
    let timestamp = request.header("webhook-timestamp").expect("webhook-timestamp");
    let signature = request.header("webhook-signature").expect("webhook-signature");
    let key = base64::engine::general_purpose::STANDARD
        .decode(SIGNING_SECRET.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&request.body);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    assert_eq!(signature, expected, "signature of {id}");
    assert_eq!(request.header("idempotency-key"), Some(id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_answering_500_then_200_gets_every_alert_signed() {
    let redis = TestRedis::start(&[]);
    let mut connection = redis.connection();
    let hook = Receiver::start();
    hook.script(&[Answer::Status(500), Answer::Status(503), Answer::HangUp]);
    let routed: Vec<Alert> = (0..20)
        .map(|n| alert(&format!("a:{n}/critical"), "critical", &["hook"]))
        .collect();
    let elsewhere: Vec<Alert> = (0..5)
        .map(|n| alert(&format!("b:{n}/critical"), "critical", &["other"]))
        .collect();
    write_outbox(&mut connection, &routed[..10]);
    write_outbox(&mut connection, &elsewhere);
    write_outbox(&mut connection, &routed[10..]);

    let worker = SinkWorker::from_config("hook", &webhook(&hook.url("/alerts"), Some(SIGNING_SECRET), 8))
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let workers = spawn_workers(settings(&redis.url(), "p1"), vec![worker], stop.clone(), stop.clone());
    let expected: BTreeSet<String> = routed.iter().map(|alert| alert.alert_id.clone()).collect();
    let delivered_ids = |hook: &Receiver| -> BTreeSet<String> {
        hook.requests()
            .iter()
            .filter(|request| request.delivered())
            .map(|request| request.json()["alert_id"].as_str().unwrap().to_string())
            .collect()
    };
    wait_for("every alert delivered", Duration::from_secs(60), || {
        delivered_ids(&hook) == expected
    })
    .await;
    wait_for("the sink's group drained", Duration::from_secs(30), || {
        sink_group_pending(&mut connection, "hook") == 0
    })
    .await;
    workers.stop_and_wait().await.unwrap();

    let requests = hook.requests();
    assert!(
        requests.len() >= 23,
        "three refused attempts, then every alert: {}",
        requests.len()
    );
    for request in &requests {
        assert_eq!((request.method.as_str(), request.path.as_str()), ("POST", "/alerts"));
        assert_eq!(request.header("content-type"), Some("application/json"));
        verify_signature(request);
        let body = request.json();
        assert_eq!(request.header("idempotency-key"), body["alert_id"].as_str());
        for field in [
            "rule",
            "status",
            "severity",
            "labels",
            "annotations",
            "first_event_time",
            "last_event_time",
            "count",
        ] {
            assert!(!body[field].is_null(), "{field} in {body}");
        }
        assert!(body.get("sinks").is_none(), "routing is not sent: {body}");
    }
    assert_eq!(
        delivered_ids(&hook),
        expected,
        "exactly the routed alerts, never the others"
    );
    assert!(read_stream(&mut connection, "logsentinel:dead:sink:hook").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_goes_to_the_sink_dead_letters_after_one_attempt() {
    let redis = TestRedis::start(&[]);
    let mut connection = redis.connection();
    let hook = Receiver::start();
    hook.answer_by_default(Answer::Status(404));
    let refused = alert("gone:1/critical", "critical", &["hook"]);
    write_outbox(&mut connection, std::slice::from_ref(&refused));
    // Unreadable records go to the dead letters too, with the reason.
    let _: String = redis::cmd("XADD")
        .arg("logsentinel:alerts")
        .arg("*")
        .arg("id")
        .arg("broken/1")
        .arg("alert")
        .arg("{not json")
        .query(&mut connection)
        .unwrap();

    let worker = SinkWorker::from_config("hook", &webhook(&hook.url("/"), None, 8))
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let workers = spawn_workers(settings(&redis.url(), "p1"), vec![worker], stop.clone(), stop.clone());
    wait_for("two sink dead letters", Duration::from_secs(30), || {
        read_stream(&mut connection, "logsentinel:dead:sink:hook").len() == 2
    })
    .await;
    wait_for("nothing pending", Duration::from_secs(30), || {
        sink_group_pending(&mut connection, "hook") == 0
    })
    .await;
    workers.stop_and_wait().await.unwrap();

    assert_eq!(hook.requests().len(), 1, "a 404 is not retried");
    let dead = read_stream(&mut connection, "logsentinel:dead:sink:hook");
    let by_id: HashMap<&str, &HashMap<String, String>> = dead
        .iter()
        .map(|(_, fields)| (fields["alert_id"].as_str(), fields))
        .collect();
    let letter = by_id["gone:1/critical"];
    assert_eq!(letter["status"], "404");
    assert_eq!(letter["attempts"], "1");
    let kept: Alert = serde_json::from_str(&letter["alert"]).unwrap();
    assert_eq!(kept, refused, "the record is kept whole for a replay");
    let broken = by_id["broken/1"];
    assert!(broken["status"].starts_with("unreadable record"), "{broken:?}");
    assert_eq!(broken["alert"], "{not json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_at_max_attempts_and_honour_retry_after() {
    let redis = TestRedis::start(&[]);
    let mut connection = redis.connection();
    let hook = Receiver::start();
    hook.script(&[Answer::TooManyRequests { retry_after_s: 1 }]);
    hook.answer_by_default(Answer::Status(502));
    write_outbox(&mut connection, &[alert("slow:1/critical", "critical", &["hook"])]);

    let worker = SinkWorker::from_config("hook", &webhook(&hook.url("/"), None, 3))
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let workers = spawn_workers(settings(&redis.url(), "p1"), vec![worker], stop.clone(), stop.clone());
    wait_for("the sink dead letter", Duration::from_secs(60), || {
        read_stream(&mut connection, "logsentinel:dead:sink:hook").len() == 1
    })
    .await;
    workers.stop_and_wait().await.unwrap();
    let dead = read_stream(&mut connection, "logsentinel:dead:sink:hook");
    assert_eq!(dead[0].1["status"], "502");
    assert_eq!(dead[0].1["attempts"], "3");
    assert_eq!(hook.requests().len(), 3, "max_attempts = 3");
    assert_eq!(sink_group_pending(&mut connection, "hook"), 0);
}

#[test]
fn a_receiver_down_for_the_whole_run_holds_back_nothing_but_its_own_backlog() {
    let redis = TestRedis::start(&[]);
    let mut connection = redis.connection();
    create_group(&mut connection, "police");
    let dir = tempfile::tempdir().unwrap();
    let address = free_address();
    // Many attempts: the receiver stays down longer than the default 8 attempts may last.
    let sinks = format!("[sinks.hook]\ntype = \"webhook\"\nurl = \"http://{address}/\"\nmax_attempts = 1000\n");
    let rules = rule_file(dir.path(), &sinks, &["hook"]);
    let police = spawn_police_with_rules(&redis.url(), "p1", &rules);
    write_critical_events(&mut connection, "down", 300);
    wait_until("every event settled", Duration::from_secs(60), || {
        counters(&mut connection, "logsentinel:logs:stats").get("events") == Some(&300)
    });
    assert_alerts_exactly_once(&mut connection, 300);
    assert_eq!(pending_total(&mut connection), 0, "ingestion is done");
    wait_until("a delivery attempt", Duration::from_secs(30), || {
        sink_group_pending(&mut connection, "hook") > 0
    });
    assert_eq!(
        sink_backlog(&mut connection, "hook"),
        300,
        "all of it waits for the receiver"
    );

    let hook = Receiver::start_on(&address);
    let expected = alert_ids_in_stream(&mut connection);
    wait_until("the backlog drained", Duration::from_secs(120), || {
        sink_backlog(&mut connection, "hook") == 0
    });
    let delivered: BTreeSet<String> = hook
        .requests()
        .iter()
        .filter(|request| request.delivered())
        .map(|request| request.header("idempotency-key").unwrap().to_string())
        .collect();
    assert_eq!(delivered, expected);
    stop_gracefully(police);
    assert!(read_stream(&mut connection, "logsentinel:dead:sink:hook").is_empty());
}

/// Alert ids a Slack-shaped message carries: the `Idempotency-Key` of a single alert, the
/// listed ids of a digest.
fn slack_alert_ids(request: &receiver::Request) -> Vec<String> {
    let key = request.header("idempotency-key").unwrap();
    if !key.starts_with("digest/") {
        return vec![key.to_string()];
    }
    let body = request.json();
    let blocks = body["blocks"].as_array().unwrap();
    let mut ids = Vec::new();
    for block in &blocks[1..] {
        let text = block["text"]["text"].as_str().unwrap();
        // mrkdwn escapes `&`, `<` and `>`.
        let unescaped = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&");
        ids.extend(
            unescaped
                .lines()
                .filter(|line| *line != "alert ids:")
                .map(str::to_string),
        );
    }
    ids
}

#[test]
fn a_storm_of_5000_critical_events_reaches_slack_in_digests() {
    let redis = TestRedis::start(&[]);
    let mut connection = redis.connection();
    create_group(&mut connection, "police");
    let dir = tempfile::tempdir().unwrap();
    let slack = Receiver::start();
    let sinks = "[sinks.slack]\ntype = \"slack\"\nurl = { env = \"TEST_SLACK_HOOK\" }\n\
                 rate_limit = { messages = 1, per = \"1s\" }\n";
    let rules = rule_file(dir.path(), sinks, &["slack"]);
    let police = logsentinel(&redis.url())
        .args([
            "police",
            "--consumer",
            "p1",
            "--quiet",
            "--rules",
            rules.to_str().unwrap(),
        ])
        .env("TEST_SLACK_HOOK", slack.url("/services/T000/B000/XXXX"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn police");
    write_critical_events(&mut connection, "storm", 5000);
    let expected = alert_ids_in_stream_when_settled(&mut connection, 5000);
    wait_until("the slack backlog drained", Duration::from_secs(180), || {
        sink_backlog(&mut connection, "slack") == 0
    });
    stop_gracefully(police);

    let requests = slack.requests();
    let mut received: Vec<String> = Vec::new();
    let mut digests = 0;
    for request in &requests {
        assert!(request.delivered());
        assert_eq!(request.path, "/services/T000/B000/XXXX");
        let body = request.json();
        assert!(body["text"].is_string() && body["blocks"].is_array(), "{body}");
        for block in body["blocks"].as_array().unwrap() {
            assert!(block["text"]["text"].as_str().unwrap().chars().count() <= 3000);
        }
        if request.header("idempotency-key").unwrap().starts_with("digest/") {
            digests += 1;
            assert!(body["text"].as_str().unwrap().contains("more"), "{body}");
        }
        received.extend(slack_alert_ids(request));
    }
    assert!(digests > 0, "the limit folds the storm into digests");
    assert!(requests.len() < 100, "{} messages for 5000 alerts", requests.len());
    let received_set: BTreeSet<String> = received.iter().cloned().collect();
    let missing: Vec<&String> = expected.difference(&received_set).take(5).collect();
    let unexpected: Vec<&String> = received_set.difference(&expected).take(5).collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "every alert accounted for: missing {missing:?}, unexpected {unexpected:?}"
    );
    assert_eq!(received.len(), expected.len(), "no alert twice without a crash");
    assert!(read_stream(&mut connection, "logsentinel:dead:sink:slack").is_empty());
}

/// Alert ids in a JSONL file, in order, repeats kept.
fn jsonl_ids(path: &std::path::Path) -> Vec<String> {
    file_text(path)
        .lines()
        .map(|line| {
            let alert: serde_json::Value = serde_json::from_str(line).expect("each line is one JSON record");
            alert["alert_id"].as_str().unwrap().to_string()
        })
        .collect()
}

fn alert_ids_in_stream(connection: &mut redis::Connection) -> BTreeSet<String> {
    read_stream(connection, "logsentinel:alerts")
        .into_iter()
        .map(|(_, fields)| fields["id"].clone())
        .collect()
}

#[test]
fn two_police_share_the_jsonl_sink_and_lose_nothing_when_one_is_killed() {
    let redis = TestRedis::start(&[]);
    let mut connection = redis.connection();
    create_group(&mut connection, "police");
    let dir = tempfile::tempdir().unwrap();
    let file: PathBuf = dir.path().join("alerts.jsonl");
    let file_arg = file.to_str().unwrap();
    let police_args = ["--alerts-file", file_arg, "--claim-idle", "2s", "--block", "100ms"];
    let first = spawn_police(&redis.url(), "p1", &police_args);
    let mut second = spawn_police(&redis.url(), "p2", &police_args);

    write_critical_events(&mut connection, "calm", 1000);
    wait_until("the first 1000 alerts in the file", Duration::from_secs(60), || {
        jsonl_ids(&file).len() >= 1000
    });
    let ids = jsonl_ids(&file);
    let unique: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(unique, alert_ids_in_stream(&mut connection));
    assert_eq!(ids.len(), unique.len(), "without a crash, each alert once");

    write_critical_events(&mut connection, "storm", 2000);
    wait_until("more alerts arriving", Duration::from_secs(60), || {
        jsonl_ids(&file).len() > 1200
    });
    second.kill().expect("kill -9 the second police");
    let _ = second.wait();
    let expected = alert_ids_in_stream_when_settled(&mut connection, 3000);
    wait_until("every alert in the file", Duration::from_secs(90), || {
        jsonl_ids(&file).into_iter().collect::<BTreeSet<_>>() == expected
    });
    wait_until("the sink's group drained", Duration::from_secs(60), || {
        sink_backlog(&mut connection, "jsonl") == 0
    });
    stop_gracefully(first);
    let ids = jsonl_ids(&file);
    let unique: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(unique, expected, "at-least-once: nothing lost");
    assert!(read_stream(&mut connection, "logsentinel:dead:sink:jsonl").is_empty());
}

fn alert_ids_in_stream_when_settled(connection: &mut redis::Connection, count: u64) -> BTreeSet<String> {
    wait_until("every event settled", Duration::from_secs(90), || {
        counters(connection, "logsentinel:logs:stats").get("events") == Some(&count)
    });
    let ids = alert_ids_in_stream(connection);
    assert_eq!(ids.len() as u64, count);
    ids
}

#[test]
fn an_alerts_file_that_cannot_be_opened_stops_startup_with_exit_2() {
    let redis = TestRedis::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing-dir").join("alerts.jsonl");
    let output = logsentinel(&redis.url())
        .args(["police", "--consumer", "p1", "--alerts-file", path.to_str().unwrap()])
        .output()
        .expect("run police");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(path.to_str().unwrap()), "names the file: {stderr}");
}
