//! `logsentinel dlq`: poison entries go round trip (dead letter → fixed police → processed
//! once), replays are counted and refused at 3, purges ask or need `--yes`.

mod common;

use std::process::Output;
use std::time::Duration;

use common::*;
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(60);
const FAST: [&str; 4] = ["--claim-idle", "200ms", "--maintenance-interval", "100ms"];

fn dlq(url: &str, args: &[&str]) -> Output {
    logsentinel(url).arg("dlq").args(args).output().expect("run dlq")
}

fn stdout_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn dead_length(connection: &mut redis::Connection, key: &str) -> u64 {
    redis::cmd("XLEN").arg(key).query(connection).unwrap()
}

fn xadd(connection: &mut redis::Connection, stream: &str, id: &str, fields: &[(&str, &str)]) -> String {
    let mut command = redis::cmd("XADD");
    command.arg(stream).arg(id);
    for (name, value) in fields {
        command.arg(*name).arg(*value);
    }
    command.query(connection).unwrap()
}

fn critical_event(id: &str, message: &str) -> String {
    serde_json::json!({
        "id": id, "timestamp": "2026-11-27T10:00:00Z", "level": "CRITICAL",
        "service": "api", "host": "web-1", "message": message,
    })
    .to_string()
}

#[test]
fn a_dead_lettered_entry_replayed_to_a_fixed_police_is_processed_once() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    // Too large for a police started with --max-entry-bytes 1KiB, fine for the default.
    let large = critical_event("big:1:0", &"x".repeat(2000));
    xadd(
        &mut connection,
        "logsentinel:logs",
        "*",
        &[("v", "1"), ("event", &large)],
    );
    xadd(&mut connection, "logsentinel:logs", "*", &[("v", "7"), ("event", "{}")]);
    let strict = spawn_police(&url, "strict", &["--max-entry-bytes", "1KiB"]);
    wait_until("two dead letters", DEADLINE, || {
        dead_length(&mut connection, "logsentinel:dead") == 2 && pending_total(&mut connection) == 0
    });
    stop_gracefully(strict);

    let listed: Vec<Value> = stdout_lines(&dlq(&url, &["list", "--json"]))
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(listed.len(), 2);
    assert!(listed[0]["reason"].as_str().unwrap().contains("max_entry_bytes"));
    assert_eq!(listed[0]["replays"], 0);
    assert!(listed[0]["age_s"].is_u64());
    let shown = dlq(&url, &["show", "--json", listed[0]["id"].as_str().unwrap()]);
    let shown: Value = serde_json::from_str(&stdout_lines(&shown)[0]).unwrap();
    assert_eq!(shown["source"], "logsentinel:logs");
    assert!(shown["raw"].as_str().unwrap().contains("big:1:0"));

    let dry_run = dlq(&url, &["replay", "--reason", "max_entry_bytes", "--dry-run"]);
    assert!(dry_run.status.success());
    assert_eq!(stdout_lines(&dry_run).len(), 1);
    assert_eq!(
        dead_length(&mut connection, "logsentinel:dead"),
        2,
        "a dry run changes nothing"
    );

    let police = spawn_police(&url, "fixed", &FAST);
    let replayed = dlq(&url, &["replay", "--reason", "max_entry_bytes"]);
    assert!(
        replayed.status.success(),
        "{}",
        String::from_utf8_lossy(&replayed.stderr)
    );
    wait_until("the replayed entry processed", DEADLINE, || {
        counters(&mut connection, "logsentinel:logs:stats").get("alerts") == Some(&1)
            && pending_total(&mut connection) == 0
    });
    assert_alerts_exactly_once(&mut connection, 1);
    let alerts = read_stream(&mut connection, "logsentinel:alerts");
    assert!(
        alerts[0].1["id"].starts_with("big:1:0/"),
        "the original event id: {alerts:?}"
    );
    assert_eq!(
        dead_length(&mut connection, "logsentinel:dead"),
        1,
        "only the v=7 entry is left"
    );

    // Replaying the same id again finds nothing: no second copy.
    let again = dlq(&url, &["replay", listed[0]["id"].as_str().unwrap()]);
    assert!(!again.status.success());
    assert_eq!(
        counters(&mut connection, "logsentinel:logs:stats").get("alerts"),
        Some(&1)
    );
    stop_gracefully(police);
}

#[test]
fn replays_are_counted_and_the_fourth_needs_force() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    let police = spawn_police(&url, "p1", &FAST);
    // A one-event entry whose event is not JSON: dead-lettered on every trip.
    xadd(
        &mut connection,
        "logsentinel:logs",
        "*",
        &[("v", "1"), ("event", "not json")],
    );
    let replays_of_the_letter = || -> Option<u64> {
        let listed = dlq(&url, &["list", "--json"]);
        let lines = stdout_lines(&listed);
        let [line] = lines.as_slice() else { return None };
        let letter: Value = serde_json::from_str(line).unwrap();
        letter["replays"].as_u64()
    };
    wait_until("the first dead letter", DEADLINE, || replays_of_the_letter() == Some(0));
    for trip in 1..=3 {
        let replayed = dlq(&url, &["replay", "--all"]);
        assert!(
            replayed.status.success(),
            "{}",
            String::from_utf8_lossy(&replayed.stderr)
        );
        wait_until("dead-lettered again", DEADLINE, || {
            replays_of_the_letter() == Some(trip)
        });
    }
    let refused = dlq(&url, &["replay", "--all"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("already replayed 3 times"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(dead_length(&mut connection, "logsentinel:dead"), 1);
    let forced = dlq(&url, &["replay", "--all", "--force"]);
    assert!(forced.status.success());
    wait_until("dead-lettered a fourth time", DEADLINE, || {
        replays_of_the_letter() == Some(4)
    });
    let stats = counters(&mut connection, "logsentinel:logs:stats");
    assert_eq!(stats.get("dead"), Some(&5), "one dead letter per trip, none lost");
    stop_gracefully(police);
}

#[test]
fn a_replay_redis_refuses_keeps_the_dead_letter() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    let _: () = redis::cmd("SET")
        .arg("not-a-stream")
        .arg("x")
        .query(&mut connection)
        .unwrap();
    xadd(
        &mut connection,
        "logsentinel:dead",
        "*",
        &[
            ("reason", "malformed event: x"),
            ("source", "not-a-stream"),
            ("entry", "1-0"),
            ("raw", r#"{"v":"1","event":"x"}"#),
        ],
    );
    let failed = dlq(&url, &["replay", "--all"]);
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("WRONGTYPE"));
    assert_eq!(dead_length(&mut connection, "logsentinel:dead"), 1, "not lost");
}

#[test]
fn purge_needs_yes_without_a_terminal_and_keeps_younger_letters() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    let letter = [("reason", "r"), ("source", "logsentinel:logs"), ("raw", "\"x\"")];
    // Ids are times: two letters from 2001, one from now.
    xadd(&mut connection, "logsentinel:dead", "1000000000000-0", &letter);
    xadd(&mut connection, "logsentinel:dead", "1000000000001-0", &letter);
    let young = xadd(&mut connection, "logsentinel:dead", "*", &letter);

    let refused = dlq(&url, &["purge", "--older-than", "1h"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--yes"));
    assert_eq!(dead_length(&mut connection, "logsentinel:dead"), 3);

    let purged = dlq(&url, &["purge", "--older-than", "1h", "--yes"]);
    assert!(purged.status.success());
    assert_eq!(stdout_lines(&purged), ["purged 2 dead letters from logsentinel:dead"]);
    let left = read_stream(&mut connection, "logsentinel:dead");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].0, young);

    let by_id = dlq(&url, &["purge", &young, "--yes"]);
    assert!(by_id.status.success());
    assert_eq!(dead_length(&mut connection, "logsentinel:dead"), 0);
}

#[test]
fn a_sink_dead_letter_goes_back_to_that_sink_only() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    let record = serde_json::json!({"alert_id": "e:1:0/critical", "rule": "critical", "sinks": ["hook", "mail"]});
    xadd(
        &mut connection,
        "logsentinel:dead:sink:hook",
        "*",
        &[
            ("alert_id", "e:1:0/critical"),
            ("alert", &record.to_string()),
            ("status", "HTTP 500"),
            ("attempts", "5"),
            ("entry", "1-0"),
        ],
    );
    let listed = dlq(&url, &["list", "--sink", "hook"]);
    let lines = stdout_lines(&listed);
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0].contains("deliveries=5") && lines[0].contains("HTTP 500"),
        "{}",
        lines[0]
    );
    let replayed = dlq(&url, &["--sink", "hook", "replay", "--all"]);
    assert!(
        replayed.status.success(),
        "{}",
        String::from_utf8_lossy(&replayed.stderr)
    );
    let alerts = read_stream(&mut connection, "logsentinel:alerts");
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].1["id"], "e:1:0/critical");
    let replayed_record: Value = serde_json::from_str(&alerts[0].1["alert"]).unwrap();
    assert_eq!(replayed_record["sinks"], serde_json::json!(["hook"]));
    assert_eq!(replayed_record["replay_count"], 1);
    assert_eq!(dead_length(&mut connection, "logsentinel:dead:sink:hook"), 0);
}

fn stderr_text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

/// A dead letter of a one-event entry of `logsentinel:logs`, replayable as it is.
fn replayable_letter(connection: &mut redis::Connection) -> String {
    let raw = serde_json::json!({"v": "1", "event": critical_event("e:1:0", "fixed")}).to_string();
    xadd(
        connection,
        "logsentinel:dead",
        "*",
        &[
            ("reason", "malformed event: x"),
            ("source", "logsentinel:logs"),
            ("entry", "1-0"),
            ("raw", &raw),
        ],
    )
}

#[test]
fn a_replay_of_an_id_that_is_no_dead_letter_reports_it_missing_not_refused() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    let letter = replayable_letter(&mut connection);
    let replayed = dlq(&url, &["replay", "1-0", &letter]);
    let stderr = stderr_text(&replayed);
    assert_eq!(replayed.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("dlq: missing 1-0: no such dead letter in logsentinel:dead"),
        "{stderr}"
    );
    assert!(
        stderr.contains("dlq: replayed 1 dead letters of logsentinel:dead, refused 0, missing 1"),
        "{stderr}"
    );
    assert_eq!(dead_length(&mut connection, "logsentinel:dead"), 0);
    assert_eq!(stream_length(&mut connection), 1);
}

#[test]
fn of_two_concurrent_replays_of_one_id_the_second_finds_it_missing() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    let letter = replayable_letter(&mut connection);
    let shells: Vec<_> = (0..2)
        .map(|_| {
            logsentinel(&url)
                .args(["dlq", "replay", &letter])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn dlq replay")
        })
        .collect();
    let mut summaries: Vec<(Option<i32>, String)> = shells
        .into_iter()
        .map(|shell| {
            let output = shell.wait_with_output().expect("dlq replay output");
            (output.status.code(), stderr_text(&output))
        })
        .collect();
    // Whichever ran its script first replayed it; the other found it gone, before reading
    // it or between its read and its script.
    summaries.sort_by_key(|(code, _)| *code);
    let [(first_code, first), (second_code, second)] = summaries.as_slice() else {
        unreachable!("two shells")
    };
    assert_eq!(*first_code, Some(0), "{first}");
    assert!(
        first.contains("replayed 1 dead letters of logsentinel:dead, refused 0, missing 0"),
        "{first}"
    );
    assert_eq!(*second_code, Some(1), "{second}");
    assert!(
        second.contains("replayed 0 dead letters of logsentinel:dead, refused 0, missing 1"),
        "{second}"
    );
    assert!(second.contains(&format!("dlq: missing {letter}: ")), "{second}");
    assert_eq!(stream_length(&mut connection), 1, "re-added once");
    assert_eq!(dead_length(&mut connection, "logsentinel:dead"), 0);
}

#[test]
fn an_invalid_id_is_named_once_with_what_an_id_looks_like() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    for action in ["show", "replay", "purge"] {
        let output = dlq(&url, &[action, "nonsense"]);
        let stderr = stderr_text(&output);
        assert_eq!(output.status.code(), Some(2), "{action}: {stderr}");
        assert_eq!(
            stderr.trim_end(),
            r#"logsentinel: "nonsense" is not a dead-letter id (an id looks like 1796136907689-0)"#,
            "{action}"
        );
    }
}

#[test]
fn a_purge_without_yes_and_without_a_terminal_says_what_to_do() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    let first = replayable_letter(&mut connection);
    let second = replayable_letter(&mut connection);
    let output = logsentinel(&url)
        .args(["dlq", "purge", &first, &second])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run dlq purge");
    let stderr = stderr_text(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        "logsentinel: refusing to purge 2 named dead letters from logsentinel:dead without --yes (stdin is not a terminal)"
    );
    assert_eq!(dead_length(&mut connection, "logsentinel:dead"), 2);
}
