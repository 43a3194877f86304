//! The agent's identity and its exit: run ids of agents sharing an agent id, exit codes and
//! summaries that tell what was and was not delivered.

mod common;

use std::collections::HashSet;

use common::*;

#[test]
fn agents_with_one_agent_id_started_together_get_distinct_run_ids() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    let agents: Vec<_> = (0..2)
        .map(|_| spawn_agent(&url, "same-id", &["--count", "2000", "--rate", "0"]))
        .collect();
    let summaries: Vec<AgentSummary> = agents.into_iter().map(agent_summary).collect();
    assert_ne!(summaries[0].run_id, summaries[1].run_id);
    let events = stream_events(&mut connection);
    assert_eq!(events.len(), 4000);
    let event_ids: HashSet<&str> = events.iter().map(|event| event["id"].as_str().unwrap()).collect();
    assert_eq!(event_ids.len(), 4000, "event ids of the two agents collided");
}

/// An agent reading `lines` on its standard input, its log in `log`.
fn spawn_stdin_agent(url: &str, lines: &str, args: &[&str], log: &std::path::Path) -> std::process::Child {
    let input = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(input.path(), lines).unwrap();
    let log_file = std::fs::File::create(log).unwrap();
    logsentinel(url)
        .args([
            "agent",
            "--agent-id",
            "stdin-agent",
            "--summary-json",
            "--source",
            "stdin",
        ])
        .args(args)
        .stdin(std::fs::File::open(input.path()).unwrap())
        .stdout(std::process::Stdio::piped())
        .stderr(log_file)
        .spawn()
        .unwrap()
}

fn numbered_lines(count: usize) -> String {
    (0..count).map(|line| format!("INFO line {line}\n")).collect()
}

#[test]
fn undelivered_events_fail_the_run_and_are_not_counted_as_delivered_levels() {
    let mut redis = TestRedis::start(&[]);
    let url = redis.url();
    redis.server.kill();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("agent.log");
    let agent = spawn_stdin_agent(&url, &numbered_lines(50), &["--shutdown-timeout-ms", "200"], &log);
    wait_until(
        "the agent to find redis down",
        std::time::Duration::from_secs(30),
        || file_text(&log).contains("redis unreachable"),
    );
    sigterm(&agent);
    let (status, summary) = status_and_summary(agent);
    assert_eq!(status.code(), Some(1), "{summary}");
    assert_eq!(summary["unsent_events"], 50, "{summary}");
    assert_eq!(
        summary["events_per_level"],
        serde_json::json!({}),
        "no level counts events that were not delivered: {summary}"
    );
}

#[test]
fn stdin_with_redis_down_and_a_spool_ends_once_its_input_is_spooled() {
    let mut redis = TestRedis::start(&[]);
    let url = redis.url();
    redis.server.kill();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let log = dir.path().join("agent.log");
    let agent = spawn_stdin_agent(
        &url,
        &numbered_lines(300),
        &["--spool-dir", spool.to_str().unwrap(), "--shutdown-timeout-ms", "200"],
        &log,
    );
    // No signal: the end of input ends the agent.
    let (status, summary) = status_and_summary(agent);
    assert!(status.success(), "everything is stored in the spool: {summary}");
    assert_eq!(summary["spooled_events"], 300, "{summary}");
    assert!(summary["spool_bytes_left"].as_u64().unwrap() > 0, "{summary}");
    assert_eq!(summary["events_per_level"]["INFO"], 300, "{summary}");

    redis.server.restart().unwrap();
    let mut connection = redis.connection();
    let replay = spawn_stdin_agent(&url, "", &["--spool-dir", spool.to_str().unwrap()], &log);
    let (status, summary) = status_and_summary(replay);
    assert!(status.success(), "{summary}");
    assert_eq!(summary["replayed_events"], 300, "{summary}");
    assert_eq!(stream_length(&mut connection), 300);
}

#[test]
fn a_redis_refusal_stops_the_agent_naming_the_command_and_key() {
    let redis = TestRedis::start(&[]);
    let mut connection = redis.connection();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("shipper")
        .arg("on")
        .arg(">secret")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .arg("-xadd")
        .query(&mut connection)
        .unwrap();
    let url = redis.url().replace("redis://", "redis://shipper:secret@");
    let dir = tempfile::tempdir().unwrap();

    // Without a spool: nothing delivered, said so, exit 1.
    let log = dir.path().join("memory.log");
    let agent = spawn_agent_logging(&url, "refused", &["--count", "1000", "--rate", "0"], &log);
    let (status, summary) = status_and_summary(agent);
    let messages = file_text(&log);
    assert_eq!(status.code(), Some(1), "{summary}");
    assert!(
        messages.contains("redis refused XADD on logsentinel:logs") && messages.contains("NOPERM"),
        "{messages}"
    );
    assert!(
        !messages.contains("unreachable"),
        "a refusal is not an outage: {messages}"
    );
    assert!(summary["error"].as_str().unwrap().contains("NOPERM"), "{summary}");
    assert_eq!(summary["events"], 0);
    assert!(summary["unsent_events"].as_u64().unwrap() > 0, "{summary}");

    // With a spool: what was stored stays there.
    let spool = dir.path().join("spool");
    let log = dir.path().join("spooled.log");
    let agent = spawn_agent_logging(
        &url,
        "refused",
        &["--count", "1000", "--rate", "0", "--spool-dir", spool.to_str().unwrap()],
        &log,
    );
    let (status, summary) = status_and_summary(agent);
    assert_eq!(status.code(), Some(1), "{summary}");
    assert!(summary["spooled_events"].as_u64().unwrap() > 0, "{summary}");
    assert!(summary["spool_bytes_left"].as_u64().unwrap() > 0, "{summary}");
    assert_eq!(stream_length(&mut connection), 0);
}

#[test]
fn an_event_over_proto_max_bulk_len_is_dead_lettered_and_the_rest_shipped() {
    let redis = TestRedis::start(&["--proto-max-bulk-len", "1mb"]);
    let url = redis.url();
    let mut connection = redis.connection();
    let address = free_address();
    let agent = spawn_agent(
        &url,
        "bulky",
        &["--source", "http", "--http-listen", &address, "--pack", "10"],
    );
    wait_until("the HTTP source to listen", std::time::Duration::from_secs(20), || {
        std::net::TcpStream::connect(&address).is_ok()
    });
    let huge = "x".repeat(2 << 20);
    let body =
        format!("{{\"message\":\"small before\"}}\n{{\"message\":\"{huge}\"}}\n{{\"message\":\"small after\"}}\n");
    let (status, response) = curl_post(&address, "/ingest", body.as_bytes());
    assert_eq!(status, 202, "{}", &response[..response.len().min(300)]);
    let (status, _) = curl_post(&address, "/ingest", b"{\"message\":\"next request\"}\n");
    assert_eq!(status, 202);
    let (status, summary) = {
        sigterm(&agent);
        status_and_summary(agent)
    };
    assert!(status.success(), "{summary}");
    assert_eq!(summary["dead_lettered_events"], 1, "{summary}");
    assert_eq!(
        stream_messages(&mut connection),
        ["small before", "small after", "next request"],
        "the packed entry was split around the oversized event"
    );
    let dead = read_stream(&mut connection, "logsentinel:dead");
    assert_eq!(dead.len(), 1);
    let (_, fields) = &dead[0];
    assert!(fields["reason"].contains("proto-max-bulk-len"), "{}", fields["reason"]);
    assert_eq!(fields["source"], "bulky");
    assert_eq!(fields["raw"].len(), 64 << 10, "the first 64 KiB are kept");
}

#[test]
fn a_lag_redis_reports_wrongly_does_not_hold_the_agent() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    create_group(&mut connection, "police");
    for number in 0..10 {
        let _: String = redis::cmd("XADD")
            .arg("logsentinel:logs")
            .arg("*")
            .arg("n")
            .arg(number)
            .query(&mut connection)
            .unwrap();
    }
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("police")
        .arg("reader")
        .arg("COUNT")
        .arg(100)
        .arg("STREAMS")
        .arg("logsentinel:logs")
        .arg(">")
        .query(&mut connection)
        .unwrap();
    let last_id: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
        .arg("logsentinel:logs")
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query(&mut connection)
        .unwrap();
    // As after AOF restarts: everything delivered, yet entries-added far above entries-read.
    let _: () = redis::cmd("XSETID")
        .arg("logsentinel:logs")
        .arg(&last_id[0].0)
        .arg("ENTRIESADDED")
        .arg(10_000_000)
        .query(&mut connection)
        .unwrap();
    assert!(group_lag(&status_json(&url)) > 1_000_000, "the reproduction holds");

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("agent.log");
    let agent = spawn_agent_logging(
        &url,
        "lagged",
        &["--count", "500", "--rate", "0", "--max-lag", "1000"],
        &log,
    );
    let (status, summary) = status_and_summary(agent);
    assert!(status.success(), "{summary}");
    assert_eq!(summary["events"], 500);
    assert!(
        file_text(&log).contains("using one derived from the stream"),
        "the derivation is logged"
    );
}

#[test]
fn a_pipeline_cut_by_out_of_memory_resends_only_what_failed() {
    let redis = TestRedis::start(&["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"]);
    let url = redis.url();
    let mut connection = redis.connection();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("agent.log");
    let agent = spawn_agent_logging(&url, "oom", &["--count", "40000", "--rate", "0"], &log);
    let oom_errors = |connection: &mut redis::Connection| -> bool {
        let info: String = redis::cmd("INFO").arg("errorstats").query(connection).unwrap();
        info.contains("errorstat_OOM")
    };
    wait_until(
        "redis to refuse writes (maxmemory)",
        std::time::Duration::from_secs(60),
        || oom_errors(&mut connection),
    );
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("0")
        .query(&mut connection)
        .unwrap();
    let (status, summary) = status_and_summary(agent);
    assert!(status.success(), "{summary}");
    let events = stream_events(&mut connection);
    let event_ids: HashSet<&str> = events.iter().map(|event| event["id"].as_str().unwrap()).collect();
    assert_eq!(event_ids.len(), 40_000, "every event shipped");
    assert_eq!(events.len(), 40_000, "no entry written twice");
    let messages = file_text(&log);
    assert!(messages.contains("redis out of memory"), "{messages}");
    assert!(
        !messages.contains("unreachable"),
        "out of memory is not an outage: {messages}"
    );
}

#[test]
fn a_wrong_password_and_a_key_of_the_wrong_type_are_refusals_not_outages() {
    let redis = TestRedis::start(&[]);
    let mut connection = redis.connection();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("shipper")
        .arg("on")
        .arg(">right")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query(&mut connection)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();

    let wrong_password = redis.url().replace("redis://", "redis://shipper:wrong@");
    let log = dir.path().join("password.log");
    let agent = spawn_agent_logging(&wrong_password, "refused", &["--count", "10", "--rate", "0"], &log);
    let (status, summary) = status_and_summary(agent);
    let messages = file_text(&log);
    assert_eq!(status.code(), Some(1), "{summary}");
    assert!(
        messages.contains("redis refused the connection to redis://shipper:***@"),
        "{messages}"
    );
    assert!(
        !messages.contains("unreachable") && !messages.contains("wrong@"),
        "{messages}"
    );
    assert_eq!(summary["unsent_events"], 10, "{summary}");

    let url = redis.url().replace("redis://", "redis://shipper:right@");
    let _: () = redis::cmd("SET")
        .arg("logsentinel:logs")
        .arg("not a stream")
        .query(&mut connection)
        .unwrap();
    let log = dir.path().join("type.log");
    let agent = spawn_agent_logging(
        &url,
        "refused",
        &["--count", "10", "--rate", "0", "--max-lag", "0"],
        &log,
    );
    let (status, summary) = status_and_summary(agent);
    let messages = file_text(&log);
    assert_eq!(status.code(), Some(1), "{summary}");
    assert!(
        messages.contains("redis refused XADD on logsentinel:logs: WRONGTYPE"),
        "{messages}"
    );
}

#[test]
fn a_batch_byte_limit_out_of_range_is_a_config_error_naming_the_key() {
    let output = logsentinel("redis://127.0.0.1:1")
        .args(["agent", "--batch-max-bytes", "10"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("batch_max_bytes: 10 is not between 1024 and 67108864"),
        "{stderr}"
    );
}
