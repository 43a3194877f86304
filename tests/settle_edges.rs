//! The police at the edges: a settle that fails must not acknowledge, Redis refusing a
//! command stops the police with the reason, consumer removal never loses an entry or a
//! live police, Redis out of memory does not stop the drain, list items are not merged by
//! content.

mod common;

use std::process::{Child, Stdio};
use std::time::Duration;

use common::*;
use logsentinel::broker::keys::Keys;
use logsentinel::event::{self, Level};
use logsentinel::police::rules::RuleSet;
use logsentinel::police::settle::{self, Outcome, SettleTarget, Source};

fn event_json(id: &str, level: &str, message: &str) -> String {
    serde_json::json!({
        "id": id,
        "timestamp": "2026-01-01T00:00:00.000000Z",
        "level": level,
        "service": "checkout",
        "host": "h1",
        "message": message,
    })
    .to_string()
}

/// Writes `count` native entries, every tenth one CRITICAL; returns the CRITICAL count.
fn write_entries(connection: &mut redis::Connection, count: u64) -> u64 {
    let mut pipeline = redis::pipe();
    let mut critical = 0;
    for index in 0..count {
        let level = if index.is_multiple_of(10) { "CRITICAL" } else { "INFO" };
        critical += u64::from(level == "CRITICAL");
        pipeline
            .cmd("XADD")
            .arg("logsentinel:logs")
            .arg("*")
            .arg("v")
            .arg("1")
            .arg("event")
            .arg(event_json(&format!("t:1:{index}"), level, "m"))
            .ignore();
    }
    let _: () = pipeline.query(connection).expect("XADD");
    critical
}

fn processed_events(connection: &mut redis::Connection) -> u64 {
    counters(connection, "logsentinel:logs:stats")
        .get("events")
        .copied()
        .unwrap_or(0)
}

#[tokio::test]
async fn of_two_consumers_settling_one_entry_only_its_holder_writes_the_alert() {
    two_consumers_settle_one_entry(None).await;
}

/// As above, each consumer giving the pending count it expects (one entry read): a's count
/// is one short after b's claim, so a's call reads the owned set and writes nothing.
#[tokio::test]
async fn a_pending_count_short_of_the_expected_one_fences_like_the_owned_set() {
    two_consumers_settle_one_entry(Some(1)).await;
}

async fn two_consumers_settle_one_entry(expected_pending: Option<u64>) {
    let redis = TestRedis::start(&[]);
    let mut sync = redis.connection();
    create_group(&mut sync, "police");
    let _: String = redis::cmd("XADD")
        .arg("logsentinel:logs")
        .arg("*")
        .arg("v")
        .arg("1")
        .arg("event")
        .arg(event_json("a:1:0", "CRITICAL", "disk full"))
        .query(&mut sync)
        .unwrap();
    // Consumer a reads the entry, then b claims it (as after a claim-idle timeout).
    let read: redis::Value = redis::cmd("XREADGROUP")
        .arg(&["GROUP", "police", "a", "STREAMS", "logsentinel:logs", ">"])
        .query(&mut sync)
        .unwrap();
    let entry_id: String = redis::cmd("XRANGE")
        .arg(&["logsentinel:logs", "-", "+"])
        .query::<Vec<(String, Vec<(String, String)>)>>(&mut sync)
        .unwrap()[0]
        .0
        .clone();
    assert!(!matches!(read, redis::Value::Nil));
    let _: redis::Value = redis::cmd("XCLAIM")
        .arg(&["logsentinel:logs", "police", "b", "0", &entry_id])
        .query(&mut sync)
        .unwrap();

    let fields = vec![
        ("v".to_string(), "1".to_string()),
        ("event".to_string(), event_json("a:1:0", "CRITICAL", "disk full")),
    ];
    let rules = RuleSet::builtin(Level::Critical, Vec::new());
    let outcome = || {
        let decoded = event::decode_entry(&entry_id, &fields, Level::Critical);
        Outcome::evaluate(entry_id.clone(), decoded, &rules, 0)
    };
    let keys = Keys::default();
    let target = |consumer| SettleTarget {
        keys: &keys,
        source: Source::Stream,
        consumer,
        alert_dedup_ttl_s: 60,
        rules: &[],
        expected_pending,
    };
    let mut connection = logsentinel::broker::connect(&redis.url()).await.unwrap();
    let by_a = settle::settle(&mut connection, &target("a"), &[outcome()])
        .await
        .unwrap();
    assert_eq!((by_a.items, by_a.alerts_written), (0, 0), "a no longer holds the entry");
    let by_b = settle::settle(&mut connection, &target("b"), &[outcome()])
        .await
        .unwrap();
    assert_eq!((by_b.items, by_b.alerts_written), (1, 1), "b holds it: b settles");
    assert_eq!(by_b.pending_after, Some(0), "b holds nothing more");
    let again = settle::settle(&mut connection, &target("b"), &[outcome()])
        .await
        .unwrap();
    assert_eq!((again.items, again.alerts_written), (0, 0), "settled once only");
    assert_alerts_exactly_once(&mut sync, 1);
}

#[test]
fn a_settle_that_fails_acknowledges_nothing_and_stops_the_police() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("police.log");
    let mut police = spawn_police_with(&url, "p1", &["--read-count", "50"], &log);
    wait_until("the police joined the group", Duration::from_secs(20), || {
        redis::cmd("XINFO")
            .arg(&["GROUPS", "logsentinel:logs"])
            .query::<Vec<redis::Value>>(&mut connection)
            .is_ok_and(|groups| !groups.is_empty())
    });
    // The alerts key now holds a string: every XADD to it fails.
    let _: () = redis::cmd("SET")
        .arg(&["logsentinel:alerts", "not a stream"])
        .query(&mut connection)
        .unwrap();
    let critical = write_entries(&mut connection, 500);

    let status = wait_with_deadline(&mut police, Duration::from_secs(30));
    assert!(!status.success(), "a refused settle stops the police");
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        said.contains("WRONGTYPE") && said.contains("logsentinel:alerts"),
        "the reason names the key: {said}"
    );
    assert_eq!(processed_events(&mut connection), 0, "nothing was acknowledged");

    let _: () = redis::cmd("DEL")
        .arg("logsentinel:alerts")
        .query(&mut connection)
        .unwrap();
    let police = spawn_police(&url, "p1", &[]);
    wait_until("every event processed", Duration::from_secs(60), || {
        processed_events(&mut connection) == 500
    });
    assert_alerts_exactly_once(&mut connection, critical);
    stop_gracefully(police);
}

/// What the settle script writes last (the counters) or only when there are outputs (the
/// streams) is checked before its first write, so these too leave everything pending.
#[test]
fn keys_a_late_write_would_fail_on_stop_the_police_before_anything_is_acknowledged() {
    let breakages: [(&str, &[&str], &[&str]); 3] = [
        (
            "counter",
            &["HSET", "logsentinel:logs:stats", "alerts", "abc"],
            &["DEL", "logsentinel:logs:stats"],
        ),
        (
            "stream ids",
            &[
                "XADD",
                "logsentinel:alerts",
                "18446744073709551615-18446744073709551615",
                "f",
                "v",
            ],
            &["DEL", "logsentinel:alerts"],
        ),
        (
            "log stream",
            &["SET", "logsentinel:logs", "x"],
            &["DEL", "logsentinel:logs"],
        ),
    ];
    for (what, break_it, mend_it) in breakages {
        let redis = TestRedis::start(&[]);
        let mut connection = redis.connection();
        let _: redis::Value = redis::cmd(break_it[0])
            .arg(&break_it[1..])
            .query(&mut connection)
            .unwrap();
        let critical = if what == "log stream" {
            0
        } else {
            write_entries(&mut connection, 600)
        };
        let output = logsentinel(&redis.url())
            .args(["police", "--consumer", "p1", "--quiet"])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{what}: the police must stop: {said}");
        assert!(said.contains(break_it[1]), "{what}: the reason names the key: {said}");
        let events_counted: Option<String> = redis::cmd("HGET")
            .arg(&["logsentinel:logs:stats", "events"])
            .query(&mut connection)
            .unwrap();
        assert_eq!(events_counted, None, "{what}: nothing was acknowledged");
        let _: redis::Value = redis::cmd(mend_it[0])
            .arg(&mend_it[1..])
            .query(&mut connection)
            .unwrap();
        if what == "log stream" {
            continue;
        }
        let police = spawn_police(&redis.url(), "p1", &[]);
        wait_until("every event processed", Duration::from_secs(60), || {
            processed_events(&mut connection) == 600
        });
        assert_alerts_exactly_once(&mut connection, critical);
        stop_gracefully(police);
    }
}

#[test]
fn a_redis_user_without_a_needed_permission_stops_the_police_at_start() {
    let redis = TestRedis::start(&[]);
    let mut connection = redis.connection();
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "limited", "on", ">s3cret-pw", "~*", "&*", "+@all", "-set"])
        .query(&mut connection)
        .unwrap();
    let critical = write_entries(&mut connection, 200);
    let limited_url = redis.url().replace("redis://", "redis://limited:s3cret-pw@");
    let output = logsentinel(&limited_url)
        .args(["police", "--consumer", "p1", "--quiet"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "police must not run: {said}");
    assert!(
        said.to_lowercase().contains("noperm") && said.contains("SET on logsentinel:alerts:seen:"),
        "names the command and key: {said}"
    );
    assert!(!said.contains("s3cret-pw"), "the password never appears: {said}");
    assert_eq!(processed_events(&mut connection), 0, "nothing was acknowledged");

    let police = spawn_police(&redis.url(), "p1", &[]);
    wait_until("every event processed", Duration::from_secs(60), || {
        processed_events(&mut connection) == 200
    });
    assert_alerts_exactly_once(&mut connection, critical);
    stop_gracefully(police);
}

#[test]
fn a_wrong_password_is_reported_once_not_retried_as_an_outage() {
    let redis = TestRedis::start(&[]);
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "requirepass", "right-pw"])
        .query(&mut redis.connection())
        .unwrap();
    let wrong_url = redis.url().replace("redis://", "redis://default:wrong-pw@");
    let mut police = logsentinel(&wrong_url)
        .args(["police", "--consumer", "p1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_with_deadline(&mut police, Duration::from_secs(30));
    let mut said = String::new();
    std::io::Read::read_to_string(&mut police.stderr.take().unwrap(), &mut said).unwrap();
    assert!(!status.success());
    assert!(said.contains("refused"), "{said}");
    assert!(!said.contains("unreachable"), "not reported as an outage: {said}");
    assert!(!said.contains("wrong-pw"), "the password never appears: {said}");
}

#[test]
fn out_of_range_police_numbers_stop_startup_naming_the_option() {
    for (flag, value, key) in [
        ("--alert-dedup-ttl-s", "10000000000000000", "alert_dedup_ttl"),
        ("--alert-dedup-ttl", "20years", "alert_dedup_ttl"),
        ("--alert-dedup-ttl-s", "0", "alert_dedup_ttl"),
        ("--claim-idle-ms", "0", "claim_idle"),
        ("--consumer-idle-remove-ms", "0", "consumer_idle_remove"),
        (
            "--maintenance-interval-ms",
            "18446744073709551615",
            "maintenance_interval",
        ),
        ("--block=-5s", "", "block"),
        ("--block", "10s", "block"),
        ("--read-count", "0", "read_count"),
    ] {
        let output = logsentinel("redis://127.0.0.1:1")
            .args(["police", flag, value].into_iter().filter(|arg| !arg.is_empty()))
            .output()
            .unwrap();
        // clap names the flag (`--claim-idle`), the validation the key (`claim_idle`)
        let said = String::from_utf8_lossy(&output.stderr).replace('-', "_");
        assert_eq!(output.status.code(), Some(2), "{flag} {value}: {said}");
        assert!(said.contains(key), "{flag} {value}: {said}");
        assert!(!said.contains("panicked"), "{flag} {value}: {said}");
    }
}

/// Three police removing each other's idle consumers as eagerly as allowed: no entry is
/// dropped from a pending list with its consumer, and no live police is removed.
#[test]
fn eager_consumer_removal_loses_nothing_and_spares_live_police() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--consumer-idle-remove-ms",
        "1",
        "--maintenance-interval-ms",
        "10",
        "--read-count",
        "20",
        "--block-ms",
        "5",
    ];
    let names = ["p1", "p2", "p3"];
    let police: Vec<Child> = names
        .iter()
        .map(|name| spawn_police_with(&url, name, &args, &dir.path().join(format!("{name}.log"))))
        .collect();
    let agent = spawn_agent(&url, "a1", &["--count", "20000", "--rate", "20000", "--batch", "16"]);
    let summary = agent_summary(agent);
    assert_eq!(summary.events, 20_000);
    wait_until("every event processed", Duration::from_secs(60), || {
        processed_events(&mut connection) == 20_000
    });
    assert_alerts_exactly_once(&mut connection, summary.alerting_events);
    assert_eq!(pending_total(&mut connection), 0);

    // A police killed without leaving the group is removed once its heartbeat expires.
    let mut police = police;
    let mut killed = police.remove(2);
    killed.kill().unwrap();
    killed.wait().unwrap();
    wait_until("the dead consumer is removed", Duration::from_secs(30), || {
        let consumers: Vec<Vec<redis::Value>> = redis::cmd("XINFO")
            .arg(&["CONSUMERS", "logsentinel:logs", "police"])
            .query(&mut connection)
            .unwrap();
        !format!("{consumers:?}").contains("p3")
    });
    for child in police {
        stop_gracefully(child);
    }
    for live in ["p1", "p2"] {
        for name in names {
            let said = std::fs::read_to_string(dir.path().join(format!("{name}.log"))).unwrap();
            let removed_live = said
                .lines()
                .any(|line| line.contains("removed idle consumer") && line.contains(&format!("consumer={live}")));
            assert!(!removed_live, "{name} removed the live police {live}:\n{said}");
        }
    }
}

#[test]
fn redis_out_of_memory_does_not_stop_the_police_from_draining() {
    let redis = TestRedis::start(&["--maxmemory", "8mb", "--maxmemory-policy", "noeviction"]);
    let mut connection = redis.connection();
    // Fill the stream until Redis refuses writes; no consumer group exists yet.
    let mut written = 0u64;
    let mut critical = 0u64;
    let padding = "x".repeat(500);
    loop {
        let level = if written.is_multiple_of(10) { "CRITICAL" } else { "INFO" };
        let added: redis::RedisResult<String> = redis::cmd("XADD")
            .arg("logsentinel:logs")
            .arg("*")
            .arg("v")
            .arg("1")
            .arg("event")
            .arg(event_json(&format!("t:1:{written}"), level, &padding))
            .query(&mut connection);
        match added {
            Ok(_) => {
                written += 1;
                critical += u64::from(level == "CRITICAL");
            }
            Err(error) => {
                assert_eq!(error.code(), Some("OOM"), "{error}");
                break;
            }
        }
    }
    assert!(written > 1000, "the stream filled the memory ({written} entries)");

    let police = spawn_police(&redis.url(), "p1", &[]);
    wait_until("every entry processed", Duration::from_secs(60), || {
        processed_events(&mut connection) == written
    });
    assert_alerts_exactly_once(&mut connection, critical);
    wait_until("acknowledged entries trimmed", Duration::from_secs(30), || {
        stream_length(&mut connection) < written
    });
    stop_gracefully(police);
}

#[test]
fn the_same_foreign_message_pushed_twice_to_a_list_alerts_twice() {
    let redis = TestRedis::start(&[]);
    let mut connection = redis.connection();
    let item = r#"{"level":"CRITICAL","message":"disk full","service":"db","host":"h1"}"#;
    let _: () = redis::cmd("LPUSH")
        .arg("log_queue")
        .arg(item)
        .query(&mut connection)
        .unwrap();
    let _: () = redis::cmd("LPUSH")
        .arg("log_queue")
        .arg(item)
        .query(&mut connection)
        .unwrap();
    let police = spawn_police(&redis.url(), "lp1", &["--source", "list"]);
    wait_until("both items processed", Duration::from_secs(30), || {
        counters(&mut connection, "log_queue:stats").get("events") == Some(&2)
    });
    let alerts = read_stream(&mut connection, "logsentinel:alerts");
    assert_eq!(alerts.len(), 2, "two messages, two alerts");
    assert_ne!(alerts[0].1["id"], alerts[1].1["id"], "each alert has an id of its own");
    stop_gracefully(police);
}

/// A log reader that went away (a closed stderr pipe) must not make the police deaf to a
/// stop request: a log line that cannot be written is dropped, not a panic.
#[test]
fn a_police_whose_log_pipe_is_closed_still_stops_on_sigterm() {
    let redis = TestRedis::start(&[]);
    let mut connection = redis.connection();
    let mut police = logsentinel(&redis.url())
        .args(["police", "--consumer", "p1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(police.stdout.take());
    drop(police.stderr.take());
    wait_until("the police joined the group", Duration::from_secs(20), || {
        redis::cmd("XINFO")
            .arg(&["CONSUMERS", "logsentinel:logs", "police"])
            .query::<Vec<redis::Value>>(&mut connection)
            .is_ok_and(|consumers| !consumers.is_empty())
    });
    write_entries(&mut connection, 20); // alerts to print on a closed stdout, too
    sigterm(&police);
    let status = wait_with_deadline(&mut police, Duration::from_secs(20));
    assert!(
        status.code().is_some(),
        "the police exits after a stop request: {status}"
    );
}
