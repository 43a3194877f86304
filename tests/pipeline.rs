//! End to end: agents → Redis Stream → police, every event processed, every alert once.

mod common;

use std::time::Duration;

use common::*;

fn three_agents_two_police(pack: &str) {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let police_args = ["--claim-idle-ms", "5000"];
    let police = [
        spawn_police(&url, "p1", &police_args),
        spawn_police(&url, "p2", &police_args),
    ];
    let agents: Vec<_> = (1..=3)
        .map(|index| {
            let seed = index.to_string();
            spawn_agent(
                &url,
                &format!("agent-{index}"),
                &["--count", "50000", "--rate", "0", "--seed", &seed, "--pack", pack],
            )
        })
        .collect();
    let summaries: Vec<AgentSummary> = agents.into_iter().map(agent_summary).collect();
    let sent: u64 = summaries.iter().map(|summary| summary.events).sum();
    let alerting: u64 = summaries.iter().map(|summary| summary.alerting_events).sum();
    assert_eq!(sent, 150_000);
    assert!(alerting > 0, "the default level mix has CRITICAL events");

    let mut connection = redis.connection();
    wait_until("every event processed", Duration::from_secs(120), || {
        counters(&mut connection, "logsentinel:logs:stats").get("events") == Some(&sent)
    });
    assert_alerts_exactly_once(&mut connection, alerting);
    assert_eq!(pending_total(&mut connection), 0);
    let stats = counters(&mut connection, "logsentinel:logs:stats");
    assert_eq!(stats.get("alerts"), Some(&alerting));
    assert_eq!(stats.get("dead"), Some(&0));

    for child in police {
        stop_gracefully(child);
    }
    let consumers: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg("logsentinel:logs")
        .arg("police")
        .query(&mut connection)
        .unwrap();
    assert!(
        consumers.is_empty(),
        "police left the group on a graceful stop: {consumers:?}"
    );
}

#[test]
fn three_agents_two_police_one_event_per_entry() {
    three_agents_two_police("1");
}

#[test]
fn three_agents_two_police_packed_entries() {
    three_agents_two_police("50");
}

#[test]
fn police_stopped_backlog_grows_then_drains_after_restart() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let police = spawn_police(&url, "p1", &[]);
    let agent = spawn_agent(&url, "agent-1", &["--count", "24000", "--rate", "3000", "--seed", "3"]);
    let mut connection = redis.connection();
    wait_until("police processing", Duration::from_secs(30), || {
        counters(&mut connection, "logsentinel:logs:stats")
            .get("events")
            .copied()
            .unwrap_or(0)
            > 1000
    });
    stop_gracefully(police);

    let first_lag = group_lag(&status_json(&url));
    let mut second_lag = first_lag;
    wait_until(
        "the lag to grow while the police is down",
        Duration::from_secs(30),
        || {
            second_lag = group_lag(&status_json(&url));
            second_lag > first_lag + 1000
        },
    );

    let police = spawn_police(&url, "p1", &[]);
    let summary = agent_summary(agent);
    wait_until("the backlog drained", Duration::from_secs(60), || {
        let status = status_json(&url);
        group_lag(&status) == 0
            && status["stream"]["groups"][0]["pending"] == 0
            && status["stream"]["processed"]["events"] == summary.events
    });
    assert_alerts_exactly_once(&mut connection, summary.alerting_events);
    stop_gracefully(police);
}

/// A stop in the middle of a backlog, where the police holds a batch settling, one
/// evaluated and one read ahead: it settles all it holds before it exits, nothing stays
/// pending, and what it settled is counted once.
#[test]
fn a_stop_while_draining_a_backlog_leaves_nothing_pending() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let summary = agent_summary(spawn_agent(
        &url,
        "agent-1",
        &["--count", "400000", "--rate", "0", "--seed", "5"],
    ));
    assert_eq!(summary.events, 400_000);
    let mut connection = redis.connection();
    let processed = |connection: &mut redis::Connection| {
        counters(connection, "logsentinel:logs:stats")
            .get("events")
            .copied()
            .unwrap_or(0)
    };
    let police = spawn_police(&url, "p1", &["--read-count", "100"]);
    wait_until("the police draining", Duration::from_secs(60), || {
        processed(&mut connection) > 1000
    });
    stop_gracefully(police);
    let stopped_at = processed(&mut connection);
    assert!(stopped_at < summary.events, "stopped before the end of the backlog");
    assert_eq!(pending_total(&mut connection), 0, "every entry read was settled");
    assert_eq!(
        group_lag(&status_json(&url)),
        summary.events - stopped_at,
        "the rest waits, unread"
    );

    let police = spawn_police(&url, "p1", &[]);
    wait_until("the rest drained", Duration::from_secs(60), || {
        processed(&mut connection) == summary.events
    });
    assert_alerts_exactly_once(&mut connection, summary.alerting_events);
    stop_gracefully(police);
}

#[test]
fn trimming_keeps_unacknowledged_entries() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    // A second group that reads nothing: trimming must keep every entry for it.
    create_group(&mut connection, "archive");
    let police = spawn_police(&url, "p1", &["--maintenance-interval-ms", "100"]);
    let summary = agent_summary(spawn_agent(&url, "agent-1", &["--count", "5000", "--rate", "0"]));
    wait_until("every event processed", Duration::from_secs(60), || {
        counters(&mut connection, "logsentinel:logs:stats").get("events") == Some(&summary.events)
    });
    std::thread::sleep(Duration::from_millis(500)); // several maintenance rounds
    let length: u64 = redis::cmd("XLEN")
        .arg("logsentinel:logs")
        .query(&mut connection)
        .unwrap();
    assert_eq!(length, 5000, "entries the archive group has not read were trimmed");

    // Once the archive group has read and acknowledged everything, the stream is trimmed.
    let entries = read_stream(&mut connection, "logsentinel:logs");
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("archive")
        .arg("reader")
        .arg("COUNT")
        .arg(10_000)
        .arg("STREAMS")
        .arg("logsentinel:logs")
        .arg(">")
        .query(&mut connection)
        .unwrap();
    let ids: Vec<&str> = entries.iter().map(|(id, _)| id.as_str()).collect();
    let _: u64 = redis::cmd("XACK")
        .arg("logsentinel:logs")
        .arg("archive")
        .arg(&ids)
        .query(&mut connection)
        .unwrap();
    wait_until("the acknowledged stream trimmed", Duration::from_secs(30), || {
        redis::cmd("XLEN")
            .arg("logsentinel:logs")
            .query::<u64>(&mut connection)
            .unwrap()
            <= 1
    });
    stop_gracefully(police);
}

#[test]
fn idle_consumers_with_nothing_pending_are_removed_by_any_police() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    for command in [
        vec!["XGROUP", "CREATE", "logsentinel:logs", "police", "0", "MKSTREAM"],
        vec![
            "XGROUP",
            "CREATECONSUMER",
            "logsentinel:logs",
            "police",
            "scaled-down-1",
        ],
        vec![
            "XGROUP",
            "CREATECONSUMER",
            "logsentinel:logs",
            "police",
            "scaled-down-2",
        ],
    ] {
        let _: redis::Value = redis::cmd(command[0])
            .arg(&command[1..])
            .query(&mut connection)
            .unwrap();
    }
    let police = spawn_police(
        &url,
        "survivor",
        &["--consumer-idle-remove-ms", "300", "--maintenance-interval-ms", "100"],
    );
    wait_until("idle consumers removed", Duration::from_secs(20), || {
        let status = status_json(&url);
        let names: Vec<&str> = status["stream"]["groups"][0]["consumers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|consumer| consumer["name"].as_str().unwrap())
            .collect();
        names == ["survivor"]
    });
    stop_gracefully(police);
}

#[test]
fn agent_stopped_by_sigterm_flushes_and_summarises() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let agent = spawn_agent(
        &url,
        "agent-1",
        &["--rate", "20000", "--pack", "7", "--linger-ms", "50"],
    );
    let mut connection = redis.connection();
    wait_until("the agent shipping", Duration::from_secs(30), || {
        redis::cmd("XLEN")
            .arg("logsentinel:logs")
            .query::<u64>(&mut connection)
            .unwrap()
            > 100
    });
    sigterm(&agent);
    let summary = agent_summary(agent);
    let shipped: u64 = read_stream(&mut connection, "logsentinel:logs")
        .iter()
        .map(|(_, fields)| fields.get("n").map_or(1, |count| count.parse::<u64>().unwrap()))
        .sum();
    assert!(summary.events > 0);
    assert_eq!(
        shipped, summary.events,
        "every event generated before the stop was shipped"
    );
}

#[test]
fn demo_runs_and_prints_totals() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_logsentinel"))
        .args(["demo", "--duration", "3", "--rate", "300"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed: {stderr}");
    assert!(stderr.contains("[demo] progress: "), "live line shown: {stderr}");
    let figure = |label: &str| -> u64 {
        let line = stdout
            .lines()
            .find(|line| line.contains(label))
            .unwrap_or_else(|| panic!("{label} in {stdout}"));
        line.split_whitespace().last().unwrap().parse().unwrap()
    };
    let sent = figure("events sent by the agents");
    assert!(sent > 0);
    assert_eq!(figure("events processed by police"), sent);
    assert_eq!(figure("dead letters"), 0);
}

#[test]
fn healthcheck_follows_redis_and_the_police_loop() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    let health_file = dir.path().join("alive");
    let health_path = health_file.to_str().unwrap();
    let healthcheck = |url: &str| {
        logsentinel(url)
            .args(["healthcheck", "--health-file", health_path, "--max-age-s", "2"])
            .output()
            .unwrap()
    };
    let no_loop_here = healthcheck(&url);
    assert!(
        no_loop_here.status.success(),
        "no health file: nothing but Redis to check"
    );

    let police = spawn_police(
        &url,
        "p1",
        &["--health-file", health_path, "--maintenance-interval-ms", "200"],
    );
    // Without the file the check passes too (nothing but Redis to check): wait for the file.
    wait_until("the police marks itself alive", Duration::from_secs(20), || {
        health_file.exists() && healthcheck(&url).status.success()
    });
    stop_gracefully(police);
    wait_until("a stopped police turns unhealthy", Duration::from_secs(20), || {
        let output = healthcheck(&url);
        !output.status.success() && String::from_utf8_lossy(&output.stderr).contains("police loop stalled")
    });
    let unreachable = logsentinel("redis://127.0.0.1:1").arg("healthcheck").output().unwrap();
    assert_eq!(unreachable.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot reach Redis"));
    let redis_only = logsentinel(&url).arg("healthcheck").output().unwrap();
    assert!(
        redis_only.status.success(),
        "{}",
        String::from_utf8_lossy(&redis_only.stderr)
    );
}

#[test]
fn agent_holds_batches_above_max_lag_until_the_police_returns() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    create_group(&mut connection, "police");
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("agent.log");
    // Full batches (no rate limit) make the bound tight: 256 entries per batch.
    let agent = spawn_agent_logging(
        &url,
        "agent-1",
        &["--count", "30000", "--rate", "0", "--batch", "256", "--max-lag", "2000"],
        &log,
    );
    wait_until("the agent to hold its batches", Duration::from_secs(30), || {
        file_text(&log).contains("consumers are behind, holding batches")
    });
    // Nothing ships after that line while no consumer reads; the documented bound is one
    // batch past the limit.
    let held_length = stream_length(&mut connection);
    assert!(
        (2000..2000 + 256).contains(&held_length),
        "stream held at {held_length} with max lag 2000 and batches of 256"
    );

    let police = spawn_police(&url, "p1", &[]);
    let summary = agent_summary(agent);
    assert_eq!(summary.events, 30_000);
    wait_until("the police drained everything", Duration::from_secs(60), || {
        counters(&mut connection, "logsentinel:logs:stats").get("events") == Some(&30_000)
    });
    stop_gracefully(police);
}
