//! `myprog | logsentinel agent --source stdin`: every line shipped, parsed, alerted on.

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use common::*;

#[test]
fn stdin_lines_are_shipped_parsed_and_alerted_on() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    let police = spawn_police(&url, "p1", &[]);
    let mut agent = logsentinel(&url)
        .args(["agent", "--source", "stdin", "--agent-id", "myprog", "--summary-json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut input = agent.stdin.take().unwrap();

    // A lone line is shipped after the linger time, without waiting for more input.
    input
        .write_all(b"2026-11-27 10:00:00 CRITICAL database unreachable\n")
        .unwrap();
    input.flush().unwrap();
    wait_until(
        "the first line shipped before end of input",
        Duration::from_secs(20),
        || {
            redis::cmd("XLEN")
                .arg("logsentinel:logs")
                .query::<u64>(&mut connection)
                .unwrap()
                == 1
        },
    );

    input
        .write_all(
            b"{\"level\":\"fatal\",\"msg\":\"out of memory\",\"service\":\"api\"}\n\
              level=info msg=\"request served\" duration_ms=12\n\
              \n\
              just some text\n\
              \xff not utf-8 [error]\n\
              no newline at the end",
        )
        .unwrap();
    drop(input); // end of input
    let summary = agent_summary(agent);
    assert_eq!(summary.events, 6, "blank lines are not events, every other line is");
    assert_eq!(summary.alerting_events, 2);

    let events = stream_events(&mut connection);
    let by_message = |message: &str| {
        events
            .iter()
            .find(|event| event["message"].as_str().unwrap().contains(message))
            .unwrap_or_else(|| panic!("no event with {message:?} in {events:?}"))
            .clone()
    };
    assert_eq!(by_message("database unreachable")["level"], "CRITICAL");
    assert_eq!(by_message("out of memory")["level"], "CRITICAL");
    assert_eq!(by_message("out of memory")["service"], "api");
    let logfmt = by_message("request served");
    assert_eq!(logfmt["level"], "INFO");
    assert_eq!(logfmt["extra"]["duration_ms"], "12");
    assert_eq!(by_message("just some text")["level"], "UNKNOWN");
    assert_eq!(by_message("just some text")["service"], "stdin");
    assert_eq!(by_message("not utf-8")["level"], "ERROR");
    assert_eq!(by_message("no newline at the end")["level"], "UNKNOWN");
    assert!(
        events
            .iter()
            .all(|event| event["id"].as_str().unwrap().starts_with("myprog:"))
    );

    wait_until("both CRITICAL lines alerted", Duration::from_secs(20), || {
        counters(&mut connection, "logsentinel:logs:stats").get("events") == Some(&6)
    });
    assert_alerts_exactly_once(&mut connection, 2);
    stop_gracefully(police);
}

#[test]
fn a_100_mb_line_is_cut_at_the_limit_with_bounded_memory() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    let mut agent = logsentinel(&url)
        .args(["agent", "--source", "stdin", "--agent-id", "big", "--summary-json"])
        .args(["--max-line-bytes", "65536"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut input = agent.stdin.take().unwrap();
    input.write_all(b"ERROR first\n").unwrap();
    let block = vec![b'y'; 1 << 20];
    for _ in 0..100 {
        input.write_all(&block).unwrap();
    }
    input.write_all(b"\nWARN last\n").unwrap();
    input.flush().unwrap();
    wait_until("three events", Duration::from_secs(60), || {
        stream_length(&mut connection) == 3
    });
    let peak_rss_kib = peak_rss_kib(agent.id());
    drop(input);
    let summary = agent_summary(agent);
    assert!(
        peak_rss_kib < 100 * 1024,
        "peak RSS {peak_rss_kib} KiB after a 100 MB line"
    );
    assert_eq!(summary.events, 3);
    assert_eq!(summary.raw["truncated_messages"], 1);
    let events = stream_events(&mut connection);
    assert_eq!(events[1]["message"].as_str().unwrap().len(), 65536);
    assert_eq!(events[1]["extra"]["truncated"], "true");
    assert_eq!(events[2]["message"], "WARN last");
}
