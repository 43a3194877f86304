//! `agent --source file`: rotation by rename and by copytruncate, restarts (graceful and
//! `kill -9`) in between, multi-line joining and a custom level pattern.

mod common;

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::process::Child;
use std::time::Duration;

use common::*;

fn append_lines(path: &Path, numbers: std::ops::Range<u64>) {
    let mut file = OpenOptions::new().create(true).append(true).open(path).unwrap();
    let text: String = numbers.map(|number| format!("INFO line {number}\n")).collect();
    file.write_all(text.as_bytes()).unwrap();
}

/// An agent tailing `pattern`, its checkpoints in `checkpoints.json` beside `dir`'s files.
fn spawn_tailing_agent(url: &str, dir: &Path, pattern: &Path, extra: &[&str]) -> Child {
    let checkpoints = dir.join("checkpoints.json");
    let mut args = vec![
        "--source",
        "file",
        "--file",
        pattern.to_str().unwrap(),
        "--checkpoint-file",
        checkpoints.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    spawn_agent(url, "files", &args)
}

fn spawn_file_agent(url: &str, dir: &Path) -> Child {
    spawn_tailing_agent(url, dir, &dir.join("*.log"), &[])
}

/// Line numbers in the stream, each with how many times it arrived.
fn delivered(connection: &mut redis::Connection) -> BTreeMap<u64, u32> {
    let mut seen = BTreeMap::new();
    for message in stream_messages(connection) {
        let number: u64 = message.strip_prefix("INFO line ").unwrap().parse().unwrap();
        *seen.entry(number).or_insert(0) += 1;
    }
    seen
}

fn wait_for_lines(connection: &mut redis::Connection, expected: u64) {
    wait_until(
        &format!("{expected} lines in the stream"),
        Duration::from_secs(60),
        || stream_length(connection) >= expected,
    );
}

#[test]
fn rotation_and_restarts_deliver_every_line_exactly_once() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");

    append_lines(&log, 0..1000);
    let agent = spawn_file_agent(&url, dir.path());
    wait_for_lines(&mut connection, 1000);

    // Rotation by rename: the writer adds a few lines to the old file, then opens a new one.
    append_lines(&log, 1000..1500);
    std::fs::rename(&log, dir.path().join("app.log.1")).unwrap();
    append_lines(&dir.path().join("app.log.1"), 1500..1600);
    append_lines(&log, 1600..2000);
    wait_for_lines(&mut connection, 2000);

    // Graceful restart, with lines written while the agent is stopped.
    stop_gracefully(agent);
    append_lines(&log, 2000..2300);
    let agent = spawn_file_agent(&url, dir.path());
    wait_for_lines(&mut connection, 2300);

    // Rotation by copytruncate, after the agent read everything.
    std::fs::copy(&log, dir.path().join("app.log.2")).unwrap();
    OpenOptions::new().write(true).open(&log).unwrap().set_len(0).unwrap();
    append_lines(&log, 2300..2400);
    wait_for_lines(&mut connection, 2400);

    // kill -9 once the checkpoint of what was shipped is saved (it is saved every second).
    std::thread::sleep(Duration::from_millis(2500));
    let mut agent = agent;
    agent.kill().unwrap();
    agent.wait().unwrap();
    append_lines(&log, 2400..2500);
    // Truncated and rewritten longer while the agent is down: the checksum of the head
    // tells it is not the file the checkpoint's offset belongs to.
    std::fs::copy(&log, dir.path().join("app.log.3")).unwrap();
    OpenOptions::new().write(true).open(&log).unwrap().set_len(0).unwrap();
    append_lines(&log, 2500..2800);
    let agent = spawn_file_agent(&url, dir.path());
    wait_for_lines(&mut connection, 2700); // 2400..2500 are gone, see below
    std::thread::sleep(Duration::from_millis(1500)); // room for a wrong duplicate to show up
    stop_gracefully(agent);

    let seen = delivered(&mut connection);
    // Lines 2400..2500 were copied away and truncated while the agent was down: the
    // copy does not match the glob and the truncation removed them from app.log, so
    // copytruncate lost them (as it does for every tailer). Everything else arrives once.
    let expected: Vec<u64> = (0..2400).chain(2500..2800).collect();
    let missing: Vec<u64> = expected
        .iter()
        .copied()
        .filter(|number| !seen.contains_key(number))
        .collect();
    let duplicated: Vec<(u64, u32)> = seen
        .iter()
        .filter(|(_, count)| **count > 1)
        .map(|(n, c)| (*n, *c))
        .collect();
    assert!(missing.is_empty(), "lines never delivered: {missing:?}");
    assert!(duplicated.is_empty(), "lines delivered more than once: {duplicated:?}");
    let unexpected: Vec<u64> = seen
        .keys()
        .copied()
        .filter(|number| (2400..2500).contains(number) || *number >= 2800)
        .collect();
    assert!(
        unexpected.is_empty(),
        "lines that were never in a tailed file: {unexpected:?}"
    );
}

#[test]
fn stack_traces_are_joined_and_levels_found_by_pattern() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("java.log");
    std::fs::write(
        &log,
        "2026-11-28 10:00:00 <fatal> payment failed\n\
         java.lang.IllegalStateException: boom\n\
         \tat com.shop.Pay.run(Pay.java:42)\n\
         \tat java.lang.Thread.run(Thread.java:833)\n\
         2026-11-28 10:00:01 <info> retry scheduled\n\
         no level at all\n",
    )
    .unwrap();
    let agent = spawn_tailing_agent(
        &url,
        dir.path(),
        &log,
        &[
            "--multiline-continuation",
            r"^(\s|java\.)",
            "--level-pattern",
            r"<(\w+)>",
            "--service",
            "shop",
        ],
    );
    wait_until("three events", Duration::from_secs(30), || {
        stream_length(&mut connection) >= 3
    });
    stop_gracefully(agent);
    let events = stream_events(&mut connection);
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[0]["level"], "CRITICAL");
    assert_eq!(
        events[0]["message"],
        "2026-11-28 10:00:00 <fatal> payment failed\njava.lang.IllegalStateException: boom\n\
         \tat com.shop.Pay.run(Pay.java:42)\n\tat java.lang.Thread.run(Thread.java:833)"
    );
    assert_eq!(events[0]["service"], "shop");
    assert_eq!(events[1]["level"], "INFO");
    assert_eq!(events[2]["level"], "UNKNOWN");
    assert_eq!(events[2]["message"], "no level at all");
}

#[test]
fn read_from_end_ships_only_new_lines_and_new_files_from_their_start() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.log");
    append_lines(&old, 0..10);
    let checkpoints = dir.path().join("checkpoints.json");
    let agent = spawn_tailing_agent(&url, dir.path(), &dir.path().join("*.log"), &["--read-from", "end"]);
    // The agent has found old.log once its checkpoint names it.
    wait_until("old.log in the checkpoint file", Duration::from_secs(20), || {
        std::fs::read_to_string(&checkpoints).is_ok_and(|text| text.contains("old.log"))
    });
    append_lines(&old, 10..15);
    append_lines(&dir.path().join("new.log"), 100..103);
    wait_until("eight lines", Duration::from_secs(30), || {
        stream_length(&mut connection) >= 8
    });
    std::thread::sleep(Duration::from_millis(500));
    stop_gracefully(agent);
    let seen: Vec<u64> = delivered(&mut connection).into_keys().collect();
    assert_eq!(seen, [10, 11, 12, 13, 14, 100, 101, 102]);
}
