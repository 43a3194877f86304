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

/// Waits until the checkpoint file holds `file` read to its current end: every line of it
/// is stored, and nothing more will be read from it until it grows.
fn wait_for_checkpoint_at_end(checkpoints: &Path, file: &Path) {
    let size = std::fs::metadata(file).expect("the file exists").len();
    let name = file.file_name().unwrap().to_str().unwrap().to_string();
    wait_until(
        &format!("{name} checkpointed at its end ({size} bytes)"),
        Duration::from_secs(30),
        || {
            let text = std::fs::read_to_string(checkpoints).unwrap_or_default();
            let saved: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            saved["files"].as_array().is_some_and(|files| {
                files.iter().any(|checkpoint| {
                    checkpoint["path"].as_str().is_some_and(|path| path.ends_with(&name))
                        && checkpoint["offset"].as_u64() == Some(size)
                })
            })
        },
    );
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
    wait_for_checkpoint_at_end(&dir.path().join("checkpoints.json"), &log);
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
    // Everything the agent will read is read and stored: a wrong duplicate would be in.
    wait_for_checkpoint_at_end(&dir.path().join("checkpoints.json"), &log);
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
    wait_for_checkpoint_at_end(&checkpoints, &old);
    wait_for_checkpoint_at_end(&checkpoints, &dir.path().join("new.log"));
    stop_gracefully(agent);
    let seen: Vec<u64> = delivered(&mut connection).into_keys().collect();
    assert_eq!(seen, [10, 11, 12, 13, 14, 100, 101, 102]);
}

/// Peak RSS the agent may reach while reading one huge line: its own ~20–40 MB plus the
/// 1 MiB kept of the line, with room to spare; reading the line whole costs gigabytes.
const PEAK_RSS_BOUND_KIB: u64 = 150 * 1024;

#[test]
fn a_200_mb_line_is_cut_at_the_limit_with_bounded_memory() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("huge.log");
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&log).unwrap());
        file.write_all(b"INFO before\n").unwrap();
        let block = vec![b'x'; 1 << 20];
        for _ in 0..200 {
            file.write_all(&block).unwrap();
        }
        file.write_all(b"\nINFO after\n").unwrap();
    }
    let agent = spawn_tailing_agent(&url, dir.path(), &log, &[]);
    wait_for_lines(&mut connection, 3);
    let peak_rss_kib = peak_rss_kib(agent.id());
    let summary = stop_and_summarise(agent);
    assert!(
        peak_rss_kib < PEAK_RSS_BOUND_KIB,
        "peak RSS {peak_rss_kib} KiB after a 200 MB line"
    );
    assert_eq!(summary.events, 3);
    assert_eq!(summary_count(&summary, "truncated_messages"), 1);
    let events = stream_events(&mut connection);
    let messages: Vec<usize> = events
        .iter()
        .map(|event| event["message"].as_str().unwrap().len())
        .collect();
    assert_eq!(
        messages,
        [11, 1 << 20, 10],
        "the long line is cut at 1 MiB, its neighbours intact"
    );
    assert_eq!(events[1]["extra"]["truncated"], "true");
    assert!(events[0]["extra"].get("truncated").is_none());
    // The checkpoint counts every byte of the cut line: a restart resumes after it.
    let checkpoints = std::fs::read_to_string(dir.path().join("checkpoints.json")).unwrap();
    let expected_offset = std::fs::metadata(&log).unwrap().len();
    assert!(
        checkpoints.contains(&format!("\"offset\": {expected_offset}")),
        "{checkpoints}"
    );
}

#[test]
fn a_symlink_loop_under_a_double_star_is_walked_once_and_the_agent_still_stops() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("a/b")).unwrap();
    std::os::unix::fs::symlink(&tree, tree.join("a/b/up")).unwrap();
    std::os::unix::fs::symlink(tree.join("a"), tree.join("a/again")).unwrap();
    append_lines(&tree.join("a/b/deep.log"), 0..5);
    let log_file = dir.path().join("agent.log");
    let checkpoints = dir.path().join("checkpoints.json");
    let nothing = dir.path().join("none/*.log");
    let agent = spawn_agent_logging(
        &url,
        "files",
        &[
            "--source",
            "file",
            "--file",
            tree.join("**/*.log").to_str().unwrap(),
            "--file",
            nothing.to_str().unwrap(),
            "--checkpoint-file",
            checkpoints.to_str().unwrap(),
        ],
        &log_file,
    );
    wait_for_lines(&mut connection, 5);
    // New files are found by later scans: by the end, three scans (at least) have walked
    // the loop and seen the empty glob.
    append_lines(&tree.join("a/new1.log"), 5..6);
    wait_for_lines(&mut connection, 6);
    append_lines(&tree.join("new2.log"), 6..8);
    wait_for_lines(&mut connection, 8);
    let summary = stop_and_summarise(agent);
    assert_eq!(summary.events, 8);
    let seen = delivered(&mut connection);
    assert_eq!(seen.keys().copied().collect::<Vec<u64>>(), (0..8).collect::<Vec<u64>>());
    assert!(
        seen.values().all(|count| *count == 1),
        "each file read once, though reachable by many paths: {seen:?}"
    );
    assert_eq!(
        log_lines_with(&log_file, "glob matches no file"),
        1,
        "a glob matching nothing is logged once"
    );
}

#[test]
fn an_unreadable_file_is_counted_once_and_the_others_are_read() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    // The agent may run as root here: it is then started as `nobody`, for whom mode 000
    // means unreadable, as it does for any user but root.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let secret = dir.path().join("secret.log");
    append_lines(&secret, 0..3);
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o000)).unwrap();
    append_lines(&dir.path().join("open.log"), 10..12);
    let log_file = dir.path().join("agent.stderr");
    let checkpoints = dir.path().join("checkpoints.json");
    let pattern = dir.path().join("*.log");
    let agent_args = [
        "agent",
        "--agent-id",
        "files",
        "--summary-json",
        "--source",
        "file",
        "--file",
        pattern.to_str().unwrap(),
        "--checkpoint-file",
        checkpoints.to_str().unwrap(),
    ];
    let mut command = if unsafe { libc::geteuid() } == 0 {
        let mut command = std::process::Command::new("setpriv");
        command
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_logsentinel"));
        command
    } else {
        std::process::Command::new(env!("CARGO_BIN_EXE_logsentinel"))
    };
    let agent = command
        .args(["--redis-url", &url])
        .args(agent_args)
        .env("LOGSENTINEL_LOG", "info")
        .env("LOGSENTINEL_ADMIN_LISTEN", "127.0.0.1:0")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log_file).unwrap())
        .spawn()
        .expect("spawn agent (setpriv, util-linux, when run as root)");
    wait_for_lines(&mut connection, 2);
    // Two more scans (a new file each) see the unreadable file again.
    append_lines(&dir.path().join("later1.log"), 12..13);
    wait_for_lines(&mut connection, 3);
    append_lines(&dir.path().join("later2.log"), 13..14);
    wait_for_lines(&mut connection, 4);
    let summary = stop_and_summarise(agent);
    assert_eq!(summary.events, 4);
    assert_eq!(summary_count(&summary, "unreadable_files"), 1);
    assert_eq!(
        log_lines_with(&log_file, "cannot open file"),
        1,
        "logged once, not every second"
    );
}
