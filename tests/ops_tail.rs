//! `logsentinel tail`: filters, formats, packed and undecodable entries, following without
//! taking entries from the police, and a reader of stdout that goes away.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(60);

fn event_json(id: &str, level: &str, service: &str, host: &str, message: &str) -> String {
    serde_json::json!({
        "id": id, "timestamp": "2026-11-27T10:00:00Z", "level": level,
        "service": service, "host": host, "message": message,
    })
    .to_string()
}

fn xadd(connection: &mut redis::Connection, stream: &str, fields: &[(&str, &str)]) -> String {
    let mut command = redis::cmd("XADD");
    command.arg(stream).arg("*");
    for (name, value) in fields {
        command.arg(*name).arg(*value);
    }
    command.query(connection).unwrap()
}

/// One of each shape: a single event, a packed entry with a bad line, another shipper's
/// entry, an entry of an unknown encoding.
fn write_sample_entries(connection: &mut redis::Connection) {
    let stream = "logsentinel:logs";
    xadd(
        connection,
        stream,
        &[
            ("v", "1"),
            ("event", &event_json("a:1:0", "INFO", "api", "web-1", "started")),
        ],
    );
    let packed = [
        event_json("a:1:1", "ERROR", "api", "web-1", "disk full"),
        "{not an event".to_string(),
        event_json("a:1:2", "CRITICAL", "db", "db-1", "replica lost"),
        event_json("a:1:3", "WARNING", "api", "web-2", "slow request"),
    ]
    .join("\n");
    xadd(connection, stream, &[("v", "1"), ("n", "4"), ("events", &packed)]);
    xadd(
        connection,
        stream,
        &[("msg", "kernel panic"), ("severity", "emerg"), ("app", "kernel")],
    );
    xadd(connection, stream, &[("v", "9"), ("event", "{}")]);
}

/// `tail` run to the end of what is there (`--no-follow`); its stdout lines.
fn tail_lines(url: &str, args: &[&str]) -> Vec<String> {
    let output = logsentinel(url)
        .arg("tail")
        .args(args)
        .args(["--from", "0", "--no-follow"])
        .output()
        .expect("run tail");
    assert!(
        output.status.success(),
        "tail {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn parsed(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{line:?} is not JSON: {error}")))
        .collect()
}

#[test]
fn tail_unpacks_packed_entries_and_marks_what_does_not_decode() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    write_sample_entries(&mut connection);

    let records = parsed(&tail_lines(&url, &["logs", "--format", "json"]));
    let messages: Vec<&str> = records.iter().filter_map(|record| record["message"].as_str()).collect();
    assert_eq!(
        messages,
        ["started", "disk full", "replica lost", "slow request", "kernel panic"],
        "events in stream order, the packed entry unpacked: {records:?}"
    );
    let undecodable: Vec<&Value> = records.iter().filter(|record| record["undecodable"] == true).collect();
    assert_eq!(undecodable.len(), 2, "the bad line and the v=9 entry: {records:?}");
    assert!(undecodable[0]["raw"].as_str().unwrap().contains("{not an event"));
    assert!(
        undecodable[1]["reason"]
            .as_str()
            .unwrap()
            .contains("unsupported encoding version")
    );
    assert!(records.iter().all(|record| record["entry_id"].is_string()));

    let text = tail_lines(&url, &["logs"]);
    assert_eq!(text.len(), 7);
    assert_eq!(
        text.iter().filter(|line| line.contains(" UNDECODABLE (")).count(),
        2,
        "{text:?}"
    );
}

#[test]
fn tail_filters_by_level_service_host_and_regex() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    write_sample_entries(&mut connection);

    let messages = |args: &[&str]| -> Vec<String> {
        let mut all_args = vec!["logs", "--format", "json"];
        all_args.extend_from_slice(args);
        parsed(&tail_lines(&url, &all_args))
            .iter()
            .map(|record| {
                record["message"]
                    .as_str()
                    .expect("only events pass a field filter")
                    .to_string()
            })
            .collect()
    };
    assert_eq!(
        messages(&["--level", ">=ERROR"]),
        ["disk full", "replica lost", "kernel panic"]
    );
    assert_eq!(messages(&["--level", "<WARNING"]), ["started"]);
    assert_eq!(messages(&["--level", "=WARNING"]), ["slow request"]);
    assert_eq!(
        messages(&["--service", "api", "--host", "web-1"]),
        ["started", "disk full"]
    );
    assert_eq!(messages(&["--service", "db,kernel"]), ["replica lost", "kernel panic"]);
    assert_eq!(messages(&["--level", "ERROR", "--service", "api"]), ["disk full"]);
    // --grep searches messages, and the raw text of undecodable entries.
    let grepped = parsed(&tail_lines(
        &url,
        &["logs", "--format", "json", "--grep", "^(disk|kernel)"],
    ));
    assert_eq!(grepped.len(), 2, "{grepped:?}");

    // --rule is for alerts; dead letters have only --grep.
    let refused = logsentinel(&url)
        .args(["tail", "logs", "--rule", "x", "--no-follow"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let refused = logsentinel(&url)
        .args(["tail", "dead", "--level", "ERROR", "--no-follow"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let refused = logsentinel(&url)
        .args(["tail", "logs", "--grep", "(unclosed"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2), "an invalid regex is a usage error");
}

#[test]
fn tail_limit_and_logfmt() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    write_sample_entries(&mut connection);

    let limited = tail_lines(&url, &["logs", "--limit", "2", "--format", "json"]);
    assert_eq!(limited.len(), 2, "{limited:?}");
    // --limit counts records, not entries: the second one comes from the packed entry.
    assert_eq!(parsed(&limited)[1]["message"], "disk full");

    let logfmt = tail_lines(&url, &["logs", "--format", "logfmt", "--level", ">=ERROR"]);
    assert_eq!(logfmt.len(), 3);
    assert!(logfmt[0].contains("level=ERROR"), "{}", logfmt[0]);
    assert!(logfmt[0].contains(r#"message="disk full""#), "{}", logfmt[0]);
    assert!(logfmt[0].contains("service=api"), "{}", logfmt[0]);

    // A start id is inclusive: from the packed entry's id on.
    let entries = read_stream(&mut connection, "logsentinel:logs");
    let from_packed = logsentinel(&url)
        .args([
            "tail",
            "logs",
            "--format",
            "json",
            "--no-follow",
            "--from",
            &entries[1].0,
        ])
        .output()
        .unwrap();
    let records = parsed(
        &String::from_utf8(from_packed.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>(),
    );
    assert_eq!(records[0]["message"], "disk full");
    assert_eq!(records.len(), 6);
    // Everything here was written within the last hour (Redis's clock).
    let last_hour = logsentinel(&url)
        .args(["tail", "logs", "--no-follow", "--from", "-1h"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(last_hour.stdout).unwrap().lines().count(), 7);
}

#[test]
fn tail_alerts_filters_by_rule_and_tail_dead_shows_raw_fields() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    for (rule, severity) in [("disk", "critical"), ("auth", "warning"), ("disk", "error")] {
        let alert = serde_json::json!({
            "alert_id": format!("{rule}/{severity}"), "rule": rule, "type": "any", "status": "firing",
            "severity": severity, "count": 1, "first_event_time": "t", "last_event_time": "t",
            "raised_at": "t", "sinks": ["console"],
            "event": serde_json::from_str::<Value>(&event_json("e:1:0", "ERROR", "api", "web-1", "boom")).unwrap(),
        });
        xadd(
            &mut connection,
            "logsentinel:alerts",
            &[("id", &format!("{rule}/{severity}")), ("alert", &alert.to_string())],
        );
    }
    xadd(
        &mut connection,
        "logsentinel:alerts",
        &[("id", "x"), ("alert", "not json")],
    );
    let disk = parsed(&tail_lines(&url, &["alerts", "--rule", "disk", "--format", "json"]));
    assert_eq!(disk.len(), 2, "{disk:?}");
    assert!(disk.iter().all(|alert| alert["rule"] == "disk"));
    let severe = parsed(&tail_lines(&url, &["alerts", "--level", ">=ERROR", "--format", "json"]));
    assert_eq!(severe.len(), 2, "critical and error: {severe:?}");
    let all = tail_lines(&url, &["alerts"]);
    assert_eq!(all.len(), 4);
    assert!(
        all[3].contains("UNDECODABLE"),
        "an unreadable record is marked: {}",
        all[3]
    );

    xadd(
        &mut connection,
        "logsentinel:dead",
        &[
            ("reason", "malformed event: x"),
            ("source", "logsentinel:logs"),
            ("raw", "\"x\""),
        ],
    );
    let dead = parsed(&tail_lines(&url, &["dead", "--format", "json", "--grep", "malformed"]));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["source"], "logsentinel:logs");
}

#[test]
fn tail_follows_new_entries_and_takes_nothing_from_the_police() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    let police = spawn_police(&url, "p1", &[]);
    wait_until("the police made its group", DEADLINE, || {
        redis::cmd("XINFO")
            .arg("GROUPS")
            .arg("logsentinel:logs")
            .query::<Vec<redis::Value>>(&mut connection)
            .is_ok_and(|groups| !groups.is_empty())
    });
    let mut tail = logsentinel(&url)
        .args(["tail", "logs", "--format", "json", "--limit", "500"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Tail starts at `$`: it is following once it waits in XREAD (the police uses XREADGROUP).
    wait_until("tail waiting in XREAD", DEADLINE, || {
        let clients: String = redis::cmd("CLIENT").arg("LIST").query(&mut connection).unwrap();
        clients.contains("cmd=xread ")
    });
    let agent = spawn_agent(&url, "t1", &["--count", "500", "--rate", "0", "--pack", "10"]);
    let summary = agent_summary(agent);
    assert_eq!(summary.events, 500);

    let stdout = tail.stdout.take().unwrap();
    let lines: Vec<String> = BufReader::new(stdout).lines().map(Result::unwrap).collect();
    let status = wait_with_deadline(&mut tail, DEADLINE);
    assert!(status.success(), "tail exited with {status}");
    let records = parsed(&lines);
    assert_eq!(records.len(), 500, "tail saw every event");
    let mut sequence_numbers: Vec<u64> = records
        .iter()
        .map(|record| {
            record["id"]
                .as_str()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    sequence_numbers.sort_unstable();
    sequence_numbers.dedup();
    assert_eq!(sequence_numbers.len(), 500, "each event once");

    // The police processed all of them: tail took none, and is no consumer of the group.
    wait_until("the police processed every event", DEADLINE, || {
        counters(&mut connection, "logsentinel:logs:stats").get("events") == Some(&500)
    });
    assert_eq!(pending_total(&mut connection), 0);
    assert_alerts_exactly_once(&mut connection, summary.alerting_events);
    let consumers: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg("logsentinel:logs")
        .arg("police")
        .query(&mut connection)
        .unwrap();
    assert_eq!(consumers.len(), 1, "only the police reads in the group");
    stop_gracefully(police);
}

/// `tail … | head -1`, the pipeline's status (pipefail) and tail's stderr.
fn tail_into_head(url: &str, tail_args: &str) -> (std::process::ExitStatus, String) {
    let binary = env!("CARGO_BIN_EXE_logsentinel");
    let work_dir = tempfile::tempdir().unwrap();
    let output = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; '{binary}' --redis-url '{url}' tail {tail_args} 2>tail.err | head -1 >/dev/null; status=$?; cat tail.err; exit $status"
        ))
        .current_dir(work_dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (output.status, String::from_utf8_lossy(&output.stdout).into_owned())
}

#[test]
fn tail_into_head_exits_zero_without_a_message() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    // Many entries: tail is writing when head goes away.
    let mut pipeline = redis::pipe();
    for sequence in 0..5000 {
        pipeline
            .cmd("XADD")
            .arg("logsentinel:logs")
            .arg("*")
            .arg("v")
            .arg("1")
            .arg("event")
            .arg(event_json(&format!("h:1:{sequence}"), "INFO", "api", "web-1", "line"));
    }
    let _: Vec<String> = pipeline.query(&mut connection).unwrap();
    let (status, stderr) = tail_into_head(&url, "logs --from 0");
    assert!(status.success(), "pipeline exited with {status}: {stderr}");
    assert_eq!(stderr, "", "no message from tail");

    // A quiet stream: tail waits for entries, and still notices that head is gone.
    let (status, stderr) = tail_into_head(&url, "logs --from -1h --limit 6000");
    assert!(status.success(), "pipeline exited with {status}: {stderr}");
    assert_eq!(stderr, "");
}

#[test]
fn tail_peeks_at_a_list_without_taking_items() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    for message in ["first", "second", "third"] {
        let _: () = redis::cmd("LPUSH")
            .arg("log_queue")
            .arg(event_json(&format!("l:1:{message}"), "ERROR", "api", "h", message))
            .query(&mut connection)
            .unwrap();
    }
    let _: () = redis::cmd("LPUSH")
        .arg("log_queue")
        .arg("garbage")
        .query(&mut connection)
        .unwrap();
    let output = logsentinel(&url)
        .args(["tail", "logs", "--transport", "list", "--format", "json"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let records = parsed(
        &String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>(),
    );
    let messages: Vec<&str> = records.iter().filter_map(|record| record["message"].as_str()).collect();
    assert_eq!(messages, ["first", "second", "third"], "oldest first");
    assert_eq!(records[3]["undecodable"], true);
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot be followed"));
    let length: u64 = redis::cmd("LLEN").arg("log_queue").query(&mut connection).unwrap();
    assert_eq!(length, 4, "nothing taken");
}

#[test]
fn a_password_in_the_url_never_appears_in_tail_or_dlq_output() {
    let redis = TestRedis::start(&[]);
    let port = redis.url().rsplit(':').next().unwrap().to_string();
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "requirepass", "right-one"])
        .query(&mut redis.connection())
        .unwrap();
    let url = format!("redis://:hunter2-secret@127.0.0.1:{port}");
    for args in [
        vec!["tail", "logs", "--no-follow"],
        vec!["dlq", "list"],
        vec!["dlq", "replay", "--all"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_logsentinel"))
            .arg("--redis-url")
            .arg(&url)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?} with a wrong password");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!all.contains("hunter2-secret"), "{args:?} printed the password: {all}");
        assert!(all.contains("***"), "{args:?} names the redacted URL: {all}");
    }
}

#[test]
fn tail_goes_on_after_redis_restarts() {
    let mut redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut tail = logsentinel(&url)
        .args(["tail", "logs", "--format", "json", "--from", "0", "--limit", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (lines_sender, lines) = std::sync::mpsc::channel();
    let stdout = tail.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines_sender.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    xadd(
        &mut redis.connection(),
        "logsentinel:logs",
        &[
            ("v", "1"),
            ("event", &event_json("r:1:0", "INFO", "api", "h", "before")),
        ],
    );
    let first: Value = serde_json::from_str(&lines.recv_timeout(DEADLINE).expect("first record")).unwrap();
    assert_eq!(first["message"], "before");

    redis.server.kill();
    redis.server.restart().expect("redis restarts");
    xadd(
        &mut redis.connection(),
        "logsentinel:logs",
        &[("v", "1"), ("event", &event_json("r:1:1", "INFO", "api", "h", "after"))],
    );
    let second: Value = serde_json::from_str(&lines.recv_timeout(DEADLINE).expect("second record")).unwrap();
    assert_eq!(second["message"], "after");
    let status = wait_with_deadline(&mut tail, DEADLINE);
    assert!(status.success(), "tail exited with {status}");
}

/// Names anyone who can write to Redis chooses (a consumer created with `XGROUP
/// CREATECONSUMER`) reach an operator's terminal through `status`: escaped, they can
/// neither rewrite it nor forge a line.
#[test]
fn status_shows_a_hostile_consumer_name_escaped() {
    let redis = TestRedis::start(&[]);
    let mut connection = redis.connection();
    create_group(&mut connection, "police");
    let hostile = "evil\u{1b}]0;PWN\u{7}\u{1b}[2J\u{202e}name\nconsumer forged: pending 0";
    let _: i64 = redis::cmd("XGROUP")
        .arg(&["CREATECONSUMER", "logsentinel:logs", "police", hostile])
        .query(&mut connection)
        .unwrap();
    let output = logsentinel(&redis.url()).arg("status").output().expect("run status");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    assert!(
        !text.contains(['\u{1b}', '\u{7}', '\u{202e}']),
        "raw escapes in: {text:?}"
    );
    assert!(!text.lines().any(|line| line.starts_with("consumer forged")), "{text}");
    assert!(
        text.contains(r"evil\u{1b}]0;PWN\u{7}\u{1b}[2J\u{202e}name\nconsumer forged"),
        "{text}"
    );
}
