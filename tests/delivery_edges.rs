//! The police's sinks around their delivery: secrets that cannot be read are all named at
//! once, URLs never show their secret parts (logs, sink dead letters), a reload that changes
//! sinks says what it changed and that it waits for a restart, a timeout that would let a
//! peer deliver twice is warned about, the stop log counts what is really pending, and a
//! receiver's answer never reaches the log.

mod common;
#[path = "common/receiver.rs"]
mod receiver;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::*;
use receiver::{Answer, Receiver};

fn write_rules(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("rules.toml");
    std::fs::write(&path, text).expect("write rule file");
    path
}

fn spawn_police_logged(url: &str, rules: &Path, args: &[&str], envs: &[(&str, &str)], log: &Path) -> Child {
    let mut command = logsentinel(url);
    command
        .args(["police", "--consumer", "p1", "--quiet", "--rules"])
        .arg(rules)
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("police log file"));
    for (name, value) in envs {
        command.env(name, value);
    }
    command.spawn().expect("spawn police")
}

fn push_critical(connection: &mut redis::Connection, id: &str) {
    let event = serde_json::json!({
        "id": id,
        "timestamp": logsentinel::event::now_rfc3339(),
        "level": "CRITICAL",
        "service": "api",
        "host": "h1",
        "message": "disk full",
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

fn stream_length_of(connection: &mut redis::Connection, key: &str) -> u64 {
    redis::cmd("XLEN").arg(key).query(connection).expect("XLEN")
}

#[test]
fn every_unreadable_secret_is_reported_at_once_and_an_empty_variable_is_called_empty() {
    let dir = tempfile::tempdir().unwrap();
    let missing_file = dir.path().join("no-such-secret");
    let rules = write_rules(
        dir.path(),
        &format!(
            r#"
[sinks.hook]
type = "webhook"
url = {{ env = "LOGSENTINEL_TEST_EMPTY_HOOK_URL" }}
secret = {{ env = "LOGSENTINEL_TEST_UNSET_SIGNING_KEY" }}

[sinks.chat]
type = "slack"
url = {{ file = "{}" }}

[sinks.am]
type = "alertmanager"
urls = ["http://127.0.0.1:9093", {{ env = "LOGSENTINEL_TEST_UNSET_AM_URL" }}]

[[rules]]
name = "critical"
type = "any"
filter = {{ level = "CRITICAL" }}
"#,
            missing_file.display()
        ),
    );
    let output = logsentinel("redis://127.0.0.1:1")
        .args(["police", "--quiet", "--rules"])
        .arg(&rules)
        .env("LOGSENTINEL_TEST_EMPTY_HOOK_URL", "")
        .env_remove("LOGSENTINEL_TEST_UNSET_SIGNING_KEY")
        .env_remove("LOGSENTINEL_TEST_UNSET_AM_URL")
        .output()
        .expect("run police");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let problems: Vec<&str> = stderr.lines().filter(|line| line.contains("sink ")).collect();
    assert_eq!(problems.len(), 4, "{stderr}");
    assert!(
        stderr.contains("sink hook: secret url: environment variable LOGSENTINEL_TEST_EMPTY_HOOK_URL is empty"),
        "{stderr}"
    );
    assert!(
        stderr.contains("sink hook: secret secret: environment variable LOGSENTINEL_TEST_UNSET_SIGNING_KEY is not set"),
        "{stderr}"
    );
    assert!(stderr.contains("sink chat: secret url: cannot read"), "{stderr}");
    assert!(
        stderr.contains("sink am: secret urls[1]: environment variable LOGSENTINEL_TEST_UNSET_AM_URL is not set"),
        "{stderr}"
    );
}

#[test]
fn secret_parts_of_urls_never_reach_the_log_or_the_sink_dead_letters() {
    let redis = TestRedis::start(&[]);
    let mut connection = redis.connection();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("police.log");
    // Nobody listens on these: every attempt is a connect error, and the one attempt
    // allowed sends the alert to the sink's dead letters with the last status.
    let closed = free_address();
    let am_url = format!("http://{closed}/am?token=AMSECRET");
    let hook_url_file = dir.path().join("hook_url");
    std::fs::write(&hook_url_file, format!("http://{closed}/hook?token=HOOKSECRET\n")).unwrap();
    let rules = write_rules(
        dir.path(),
        &format!(
            r#"
[sinks.am]
type = "alertmanager"
urls = [{{ env = "LOGSENTINEL_TEST_AM_URL" }}]
max_attempts = 1

[sinks.hook]
type = "webhook"
url = {{ file = "{}" }}
max_attempts = 1

[sinks.chat]
type = "slack"
url = "http://{closed}/services/T000/B000/SLACKSECRET"
max_attempts = 1

[[rules]]
name = "critical"
type = "any"
filter = {{ level = "CRITICAL" }}
cooldown = "0s"
"#,
            hook_url_file.display()
        ),
    );
    let police = spawn_police_logged(
        &redis.url(),
        &rules,
        &[],
        &[("LOGSENTINEL_TEST_AM_URL", &am_url), ("LOGSENTINEL_LOG", "debug")],
        &log,
    );
    push_critical(&mut connection, "t:1:0");
    wait_until("every sink dead-lettered the alert", Duration::from_secs(60), || {
        ["am", "hook", "chat"]
            .iter()
            .all(|sink| stream_length_of(&mut connection, &format!("logsentinel:dead:sink:{sink}")) == 1)
    });
    stop_gracefully(police);
    let mut shown = file_text(&log);
    for sink in ["am", "hook", "chat"] {
        let entries = read_stream(&mut connection, &format!("logsentinel:dead:sink:{sink}"));
        let status = &entries[0].1["status"];
        assert!(status.contains("connect error"), "{sink}: {status}");
        shown.push_str(&format!("{:?}", entries));
    }
    for secret in ["AMSECRET", "HOOKSECRET", "SLACKSECRET", "/services/"] {
        assert!(!shown.contains(secret), "{secret} was shown:\n{shown}");
    }
    let am_status = &read_stream(&mut connection, "logsentinel:dead:sink:am")[0].1["status"];
    assert!(
        am_status.contains(&format!("from http://{closed}/***?***")),
        "the instance is named by scheme, host and port: {am_status}"
    );
}

#[test]
fn a_reload_that_changes_sinks_says_which_and_that_they_wait_for_a_restart() {
    let redis = TestRedis::start(&[]);
    let mut connection = redis.connection();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("police.log");
    let file = |name: &str| dir.path().join(name).display().to_string();
    let rules_text = |edit_path: &str, extra_sink: &str, routes: &str| {
        format!(
            r#"
[sinks.keep]
type = "jsonl"
path = "{}"

[sinks.edit]
type = "jsonl"
path = "{edit_path}"
{extra_sink}

[[rules]]
name = "critical"
type = "any"
filter = {{ level = "CRITICAL" }}
cooldown = "0s"
sinks = [{routes}]
"#,
            file("keep.jsonl")
        )
    };
    let gone = format!("[sinks.gone]\ntype = \"jsonl\"\npath = \"{}\"\n", file("gone.jsonl"));
    let added = format!("[sinks.new]\ntype = \"jsonl\"\npath = \"{}\"\n", file("new.jsonl"));
    let rules = write_rules(dir.path(), &rules_text(&file("edit-1.jsonl"), &gone, "\"edit\""));
    let police = spawn_police_logged(&redis.url(), &rules, &[], &[], &log);
    wait_until("the police started", Duration::from_secs(60), || {
        log_lines_with(&log, "police started") == 1
    });
    std::fs::write(&rules, rules_text(&file("edit-2.jsonl"), &added, "\"edit\", \"new\"")).unwrap();
    // SAFETY: kill(2) on a child we own; no memory is touched.
    unsafe {
        libc::kill(police.id() as libc::pid_t, libc::SIGHUP);
    }
    wait_until("the reload was logged", Duration::from_secs(60), || {
        log_lines_with(&log, "the reloaded rule file changes sinks") == 1
    });
    let text = file_text(&log);
    let line = text
        .lines()
        .find(|line| line.contains("the reloaded rule file changes sinks"))
        .unwrap();
    assert!(line.contains("added=new"), "{line}");
    assert!(line.contains("removed=gone"), "{line}");
    assert!(line.contains("changed=edit"), "{line}");
    assert!(line.contains("take effect at the next restart"), "{line}");
    // As said: the changed sink still delivers with the settings of the start, and the
    // added one has no worker; its alert waits in the outbox until the restart.
    wait_until("the new rules are in force", Duration::from_secs(60), || {
        log_lines_with(&log, "rule file reloaded") == 1
    });
    push_critical(&mut connection, "t:1:0");
    wait_until("the alert reached the sink's old file", Duration::from_secs(60), || {
        std::fs::read_to_string(file("edit-1.jsonl")).is_ok_and(|text| text.lines().count() == 1)
    });
    stop_gracefully(police);
    assert!(!Path::new(&file("edit-2.jsonl")).exists());
    assert!(!Path::new(&file("new.jsonl")).exists());
    let restarted_log = dir.path().join("restarted.log");
    let restarted = spawn_police_logged(&redis.url(), &rules, &[], &[], &restarted_log);
    wait_until(
        "the added sink delivered the waiting alert",
        Duration::from_secs(60),
        || std::fs::read_to_string(file("new.jsonl")).is_ok_and(|text| text.lines().count() == 1),
    );
    stop_gracefully(restarted);
}

#[test]
fn a_timeout_that_outlasts_the_claim_idle_is_warned_about_naming_the_keys() {
    let redis = TestRedis::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("police.log");
    let closed = free_address();
    let rules = write_rules(
        dir.path(),
        &format!(
            r#"
[sinks.slow]
type = "webhook"
url = "http://{closed}/"
timeout = "10s"

[sinks.quick]
type = "webhook"
url = "http://{closed}/"
timeout = "1s"

[[rules]]
name = "critical"
type = "any"
filter = {{ level = "CRITICAL" }}
"#
        ),
    );
    let police = spawn_police_logged(&redis.url(), &rules, &["--claim-idle", "6s"], &[], &log);
    wait_until("the police started", Duration::from_secs(60), || {
        log_lines_with(&log, "police started") == 1
    });
    stop_gracefully(police);
    let text = file_text(&log);
    let warnings: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("may outlast the claim idle time"))
        .collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(warnings[0].contains("sink=slow"), "{}", warnings[0]);
    assert!(warnings[0].contains("--claim-idle"), "{}", warnings[0]);
    assert!(warnings[0].contains("timeout in [sinks.slow]"), "{}", warnings[0]);
}

#[test]
fn the_stop_log_counts_the_record_held_between_retries() {
    let redis = TestRedis::start(&[]);
    let mut connection = redis.connection();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("police.log");
    let closed = free_address();
    let rules = write_rules(
        dir.path(),
        &format!(
            r#"
[sinks.hook]
type = "webhook"
url = "http://{closed}/"

[[rules]]
name = "critical"
type = "any"
filter = {{ level = "CRITICAL" }}
"#
        ),
    );
    let police = spawn_police_logged(&redis.url(), &rules, &[], &[], &log);
    push_critical(&mut connection, "t:1:0");
    wait_until("the first attempt failed", Duration::from_secs(60), || {
        log_lines_with(&log, "delivery failed, will retry") >= 1
    });
    stop_gracefully(police);
    let text = file_text(&log);
    let line = text
        .lines()
        .find(|line| line.contains("stopping with undelivered records"))
        .unwrap_or_else(|| panic!("no stop line:\n{text}"));
    assert!(line.contains("records=1"), "{line}");
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg("logsentinel:alerts")
        .arg("sink:hook")
        .query(&mut connection)
        .expect("XPENDING");
    let redis::Value::Array(summary) = pending else {
        panic!("XPENDING summary: {pending:?}");
    };
    assert_eq!(
        summary[0],
        redis::Value::Int(1),
        "the record stays pending for the next reader"
    );
}

#[test]
fn a_receivers_answer_never_reaches_the_log_nor_the_dead_letters() {
    // A fake log line of the police after a newline, a secret the receiver echoes, a
    // terminal escape and a Unicode line separator.
    const ANSWER: &str = "rejected\n2026-12-01T12:00:00.000000Z ERROR logsentinel::police: INJECTED-LINE \
                          Cannot POST /hook?token=ECHOEDSECRET\x1b[2J\u{2028}INJECTED-AFTER-SEPARATOR";
    let redis = TestRedis::start(&[]);
    let mut connection = redis.connection();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("police.log");
    let hook = Receiver::start();
    // A 500 first (retried: the debug line), then a 400 (refused: the warning, a dead letter).
    hook.script(&[
        Answer::StatusWithBody {
            status: 500,
            body: ANSWER,
        },
        Answer::StatusWithBody {
            status: 400,
            body: ANSWER,
        },
    ]);
    let rules = write_rules(
        dir.path(),
        &format!(
            r#"
[sinks.hook]
type = "webhook"
url = "{}"

[[rules]]
name = "critical"
type = "any"
filter = {{ level = "CRITICAL" }}
cooldown = "0s"
"#,
            hook.url("/hook")
        ),
    );
    let police = spawn_police_logged(&redis.url(), &rules, &[], &[("LOGSENTINEL_LOG", "debug")], &log);
    push_critical(&mut connection, "t:1:0");
    wait_until("the refused alert dead-lettered", Duration::from_secs(60), || {
        stream_length_of(&mut connection, "logsentinel:dead:sink:hook") == 1
    });
    stop_gracefully(police);
    assert_eq!(hook.requests().len(), 2, "the 500 was retried, the 400 was not");
    let dead = read_stream(&mut connection, "logsentinel:dead:sink:hook");
    assert_eq!(dead[0].1["status"], "400", "the dead letter keeps the status code only");
    let text = file_text(&log);
    for shown in ["INJECTED", "ECHOEDSECRET", "\x1b", "\u{2028}"] {
        assert!(!text.contains(shown), "{shown:?} reached the log:\n{text}");
    }
    assert!(
        !text.lines().any(|line| line.starts_with("2026-12-01T12:00:00.000000Z")),
        "a line of the receiver's making:\n{text}"
    );
    let body_bytes = format!("body_bytes={}", ANSWER.len());
    for message in ["receiver asked for a retry", "receiver refused the message"] {
        let line = text
            .lines()
            .find(|line| line.contains(message))
            .unwrap_or_else(|| panic!("no {message:?} line:\n{text}"));
        assert!(line.contains(&body_bytes), "status and length only: {line}");
    }
}

fn push_five(connection: &mut redis::Connection) {
    for number in 0..5 {
        push_critical(connection, &format!("t:1:{number}"));
    }
}

/// A police delivering five CRITICAL events (pushed now unless the stream has them) to a
/// jsonl sink, with `args`.
fn deliver_five(redis: &TestRedis, dir: &Path, args: &[&str]) -> Child {
    let mut connection = redis.connection();
    let out = dir.join("alerts.jsonl");
    let rules = write_rules(
        dir,
        &format!(
            "[sinks.file]\ntype = \"jsonl\"\npath = \"{}\"\n\n[[rules]]\nname = \"crit\"\ntype = \"any\"\n\
             filter = {{ level = \"CRITICAL\" }}\ncooldown = \"0s\"\nsinks = [\"file\"]\n",
            out.display()
        ),
    );
    if stream_length_of(&mut connection, "logsentinel:logs") == 0 {
        push_five(&mut connection);
    }
    let mut all_args = vec!["--maintenance-interval", "200ms"];
    all_args.extend_from_slice(args);
    let police = spawn_police_logged(&redis.url(), &rules, &all_args, &[], &dir.join("p1.log"));
    wait_until("five alerts delivered", Duration::from_secs(60), || {
        std::fs::read_to_string(&out).is_ok_and(|text| text.lines().count() == 5)
    });
    police
}

/// The outbox is trimmed once every sink took its records: right away with a retention
/// of 0 (the stream keeps its last entry, as `XTRIM MINID` at the delivered point does).
#[test]
fn delivered_alert_records_are_trimmed_after_the_retention() {
    let redis = TestRedis::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let police = deliver_five(&redis, dir.path(), &["--alerts-retention", "0s"]);
    let mut connection = redis.connection();
    wait_until("the delivered records trimmed", Duration::from_secs(60), || {
        stream_length_of(&mut connection, "logsentinel:alerts") == 1
    });
    stop_gracefully(police);
}

/// Past 90 % of maxmemory the retention gives way: delivered records are trimmed at
/// once, so the outbox cannot take the room ingestion needs.
#[test]
fn past_nine_tenths_of_maxmemory_delivered_records_are_trimmed_whatever_the_retention() {
    let redis = TestRedis::start(&["--maxmemory", "10mb", "--maxmemory-policy", "noeviction"]);
    let mut connection = redis.connection();
    push_five(&mut connection);
    // fill Redis past 90 % of maxmemory, in pieces (a command's own buffer counts too)
    let piece = "x".repeat(128 << 10);
    let mut pieces = 0;
    while memory_share(&mut connection) < 0.93 {
        let set: redis::RedisResult<()> = redis::cmd("SET")
            .arg(format!("filler:{pieces}"))
            .arg(&piece)
            .query(&mut connection);
        if set.is_err() {
            break;
        }
        pieces += 1;
    }
    assert!(memory_share(&mut connection) >= 0.9, "Redis is past 90 % of maxmemory");
    let dir = tempfile::tempdir().unwrap();
    let police = deliver_five(&redis, dir.path(), &[]);
    wait_until("the delivered records trimmed", Duration::from_secs(60), || {
        stream_length_of(&mut connection, "logsentinel:alerts") == 1
    });
    stop_gracefully(police);
}

/// The retention keeps every delivered record younger than it; without one the stream is
/// trimmed to the delivered point; undelivered records are never trimmed.
#[tokio::test]
async fn the_retention_keeps_young_delivered_records_and_never_undelivered_ones() {
    let redis = TestRedis::start(&[]);
    let mut sync = redis.connection();
    let now_ms = logsentinel::police::rules::window::now_ms() as u64;
    for at in [now_ms - 7_200_000, now_ms - 5_400_000, now_ms - 60_000, now_ms - 1_000] {
        let _: String = redis::cmd("XADD")
            .arg(&["logsentinel:alerts", &format!("{at}-0"), "id", "x"])
            .query(&mut sync)
            .unwrap();
    }
    // a sink group that took the first three records
    let _: () = redis::cmd("XGROUP")
        .arg(&["CREATE", "logsentinel:alerts", "sink:file", "0"])
        .query(&mut sync)
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg(&[
            "GROUP",
            "sink:file",
            "w",
            "COUNT",
            "3",
            "STREAMS",
            "logsentinel:alerts",
            ">",
        ])
        .query(&mut sync)
        .unwrap();
    let ids: Vec<String> = [now_ms - 7_200_000, now_ms - 5_400_000, now_ms - 60_000]
        .iter()
        .map(|at| format!("{at}-0"))
        .collect();
    let _: u64 = redis::cmd("XACK")
        .arg("logsentinel:alerts")
        .arg("sink:file")
        .arg(&ids)
        .query(&mut sync)
        .unwrap();
    let mut connection = logsentinel::broker::connect(&redis.url()).await.unwrap();
    let alerts = "logsentinel:alerts";
    let trimmed =
        logsentinel::broker::stream::trim_acknowledged_before(&mut connection, alerts, Some(now_ms - 3_600_000))
            .await
            .unwrap();
    assert_eq!(trimmed, 2, "the two records older than the hour");
    let trimmed = logsentinel::broker::stream::trim_acknowledged_before(&mut connection, alerts, None)
        .await
        .unwrap();
    assert_eq!(
        trimmed, 0,
        "the delivered point is the third record, which XTRIM MINID keeps"
    );
    assert_eq!(
        stream_length_of(&mut sync, alerts),
        2,
        "the delivered point and the undelivered record"
    );
}

fn memory_share(connection: &mut redis::Connection) -> f64 {
    let info: String = redis::cmd("INFO").arg("memory").query(connection).expect("INFO");
    let figure = |name: &str| -> f64 {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0.0)
    };
    (figure("used_memory") - figure("mem_not_counted_for_evict")) / figure("maxmemory")
}
