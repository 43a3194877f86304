//! Crashes: `kill -9` of police processes mid-stream, Redis killed and restarted.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;

#[test]
fn kill_nine_police_repeatedly_loses_nothing_and_duplicates_no_alert() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let police_args = [
        "--claim-idle-ms",
        "1000",
        "--maintenance-interval-ms",
        "200",
        "--read-count",
        "100",
    ];
    let agents: Vec<_> = (1..=3)
        .map(|index| {
            let seed = (10 + index).to_string();
            spawn_agent(
                &url,
                &format!("agent-{index}"),
                &["--count", "60000", "--rate", "5000", "--seed", &seed],
            )
        })
        .collect();
    let mut police = vec![
        ("a".to_string(), spawn_police(&url, "a", &police_args)),
        ("b".to_string(), spawn_police(&url, "b", &police_args)),
    ];
    let mut connection = redis.connection();
    // At least six kills, and more (up to 30) until two of them caught a police with
    // entries in hand: whether a kill lands mid-batch is up to the scheduler.
    let mut kills_mid_batch = 0;
    let mut round = 0;
    while round < 6 || (kills_mid_batch < 2 && round < 30) {
        std::thread::sleep(Duration::from_millis(400));
        let victim = round % 2;
        let (name, mut child) = police.remove(victim);
        child.kill().expect("kill -9 police"); // SIGKILL: no chance to finish its batch
        child.wait().unwrap();
        if consumer_pending(&mut connection, &name) > 0 {
            kills_mid_batch += 1;
        }
        // Even rounds restart under the same name (it must finish its own pending entries),
        // odd rounds under a new one (the survivor must claim the dead one's entries).
        let next_name = if round % 2 == 0 {
            name
        } else {
            format!("{name}-{round}")
        };
        police.insert(
            victim,
            (next_name.clone(), spawn_police(&url, &next_name, &police_args)),
        );
        round += 1;
    }
    let summaries: Vec<AgentSummary> = agents.into_iter().map(agent_summary).collect();
    let sent: u64 = summaries.iter().map(|summary| summary.events).sum();
    let alerting: u64 = summaries.iter().map(|summary| summary.alerting_events).sum();
    wait_until(
        "every event processed after the crashes",
        Duration::from_secs(120),
        || {
            counters(&mut connection, "logsentinel:logs:stats").get("events") == Some(&sent)
                && pending_total(&mut connection) == 0
        },
    );
    assert!(
        kills_mid_batch > 0,
        "{round} kills never caught a police with entries in hand"
    );
    assert_alerts_exactly_once(&mut connection, alerting);
    let dead: u64 = redis::cmd("XLEN")
        .arg("logsentinel:dead")
        .query(&mut connection)
        .unwrap();
    assert_eq!(dead, 0, "no entry was dead-lettered");
    for (_, child) in police {
        stop_gracefully(child);
    }
}

#[test]
fn redis_killed_and_restarted_agents_resume_without_losing_acknowledged_events() {
    // appendfsync always: every write Redis acknowledged is on disk when it is killed.
    let mut redis = TestRedis::start(&["--appendonly", "yes", "--appendfsync", "always"]);
    let url = redis.url();
    let agents: Vec<_> = (1..=2)
        .map(|index| {
            spawn_agent(
                &url,
                &format!("agent-{index}"),
                &["--count", "30000", "--rate", "6000", "--pack", "1"],
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    redis.server.kill();
    std::thread::sleep(Duration::from_millis(1500));
    redis.server.restart().expect("restart redis");
    let summaries: Vec<AgentSummary> = agents.into_iter().map(agent_summary).collect();

    let mut connection = redis.connection();
    let mut sequences: HashMap<String, HashSet<u64>> = HashMap::new();
    for (_, fields) in read_stream(&mut connection, "logsentinel:logs") {
        let event: serde_json::Value = serde_json::from_str(&fields["event"]).unwrap();
        let id = event["id"].as_str().unwrap();
        let (prefix, sequence) = id.rsplit_once(':').unwrap();
        sequences
            .entry(prefix.to_string())
            .or_default()
            .insert(sequence.parse().unwrap());
    }
    for summary in &summaries {
        assert_eq!(summary.unsent_events, 0);
        assert_eq!(summary.events, 30_000);
        let prefix = format!("{}:{}", summary.agent_id, summary.run_id);
        let delivered = sequences.get(&prefix).map_or(0, HashSet::len);
        let missing: Vec<u64> = (0..summary.events)
            .filter(|sequence| !sequences.get(&prefix).is_some_and(|seen| seen.contains(sequence)))
            .take(5)
            .collect();
        assert!(
            missing.is_empty(),
            "{prefix}: {delivered} of 30000 delivered, missing e.g. {missing:?}"
        );
    }
}

fn consumer_pending(connection: &mut redis::Connection, consumer: &str) -> u64 {
    let entries: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg("logsentinel:logs")
        .arg("police")
        .arg("-")
        .arg("+")
        .arg(100_000)
        .arg(consumer)
        .query(connection)
        .unwrap();
    entries.len() as u64
}
