//! Bounds of the rule state: a per-rule group limit (new groups beyond it counted, not
//! tracked), groups forgotten after `forget_after`, rule state that never grows over Redis's
//! `maxmemory` without a count of what it could not take, and episodes of rules a reload
//! removed or changed resolved with the reason. Real redis-server, real police, event
//! timestamps set by the test.

mod common;

use std::collections::BTreeSet;
use std::process::Child;
use std::time::Duration;

use common::rules::*;
use common::*;
use logsentinel::police::rules::{group, window};

fn event_json(sequence: u64, ts_ms: i64, service: &str, message: &str) -> serde_json::Value {
    serde_json::json!({
        "id": format!("t:1:{sequence}"),
        "timestamp": window::rfc3339(ts_ms),
        "level": "ERROR",
        "service": service,
        "host": "h1",
        "message": message,
    })
}

/// Writes one native v1 entry per event; returns the events written.
fn xadd_events(connection: &mut redis::Connection, events: &[(i64, &str)]) -> Vec<serde_json::Value> {
    let mut pipeline = redis::pipe();
    let mut written = Vec::new();
    for (ts_ms, service) in events {
        let sequence: u64 = redis::cmd("INCR").arg("test:seq").query(connection).unwrap();
        let event = event_json(sequence, *ts_ms, service, "m");
        pipeline
            .cmd("XADD")
            .arg("logsentinel:logs")
            .arg("*")
            .arg("v")
            .arg("1")
            .arg("event")
            .arg(event.to_string())
            .ignore();
        written.push(event);
    }
    let _: () = pipeline.query(connection).expect("XADD");
    written
}

fn zcard(connection: &mut redis::Connection, key: &str) -> u64 {
    redis::cmd("ZCARD").arg(key).query(connection).expect("ZCARD")
}

fn exists(connection: &mut redis::Connection, key: &str) -> bool {
    redis::cmd("EXISTS").arg(key).query::<u64>(connection).expect("EXISTS") == 1
}

/// The alerts the reference model raises for `events` (`rules test`).
fn model_firing_ids(dir: &std::path::Path, rules: &str, events: &[serde_json::Value]) -> BTreeSet<String> {
    let sample = dir.join("sample.ndjson");
    let text: String = events.iter().map(|event| format!("{event}\n")).collect();
    std::fs::write(&sample, text).unwrap();
    let output = logsentinel("redis://127.0.0.1:1")
        .args(["rules", "test", rules, "--events"])
        .arg(&sample)
        .output()
        .expect("run rules test");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let alerts: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON alert per line"))
        .collect();
    firing_ids(&alerts)
}

#[test]
fn new_groups_beyond_max_groups_are_counted_not_tracked_as_the_model_says() {
    let redis = TestRedis::start(&[]);
    let mut connection = redis.connection();
    let dir = tempfile::tempdir().unwrap();
    let rules = write_rules(
        dir.path(),
        "max_groups = 3\n[[rules]]\nname = \"f\"\ntype = \"frequency\"\ngroup_by = [\"service\"]\n\
         threshold = 2\nwindow = \"1h\"\n",
    );
    let window_start = window::window_start(now_ms(), 3_600_000);
    let services: Vec<String> = (0..10).map(|n| format!("svc{n}")).collect();
    // every service twice: the first three are tracked and fire, the other seven are not
    let mut events = Vec::new();
    for round in 0..2 {
        for (n, service) in services.iter().enumerate() {
            events.push((window_start + 1 + (round * 10 + n) as i64, service.as_str()));
        }
    }
    let written = xadd_events(&mut connection, &events);
    let log = dir.path().join("p1.log");
    let police = spawn_police_with(&redis.url(), "p1", &["--rules", &rules], &log);
    wait_until("every entry processed", Duration::from_secs(60), || {
        stat(&mut connection, "events") == 20
    });
    assert_eq!(
        stat(&mut connection, "over_limit"),
        14,
        "7 untracked groups × 2 matches"
    );
    assert_eq!(zcard(&mut connection, &format!("{RULES}seen:f")), 3);
    for service in &services[3..] {
        let key = format!("{RULES}count:f:{}:{window_start}", gk(service));
        assert!(
            !exists(&mut connection, &key),
            "no counter for an untracked group: {key}"
        );
    }
    let fired = firing_ids(&records(&mut connection));
    let expected: BTreeSet<String> = services[..3]
        .iter()
        .map(|service| format!("f/{}/{window_start}", gk(service)))
        .collect();
    assert_eq!(fired, expected);
    assert_eq!(
        fired,
        model_firing_ids(dir.path(), &rules, &written),
        "redis and the model agree"
    );
    // the clock reads only what is due: each episode is in resolve_at by its due time
    let due: Vec<(String, i64)> = redis::cmd("ZRANGE")
        .arg(format!("{RULES}resolve_at"))
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query(&mut connection)
        .unwrap();
    assert_eq!(due.len(), 3);
    for (_, score) in &due {
        assert_eq!(*score, window_start + 2 * 3_600_000 + 60_000);
    }
    stop_gracefully(police);
    let said = file_text(&log);
    assert_eq!(
        said.matches("matches of new groups are not counted").count(),
        1,
        "reported once: {said}"
    );
}

#[test]
fn silent_groups_are_forgotten_after_forget_after_and_their_episode_resolves_expected_ones_stay() {
    let redis = TestRedis::start(&[]);
    let mut connection = redis.connection();
    let dir = tempfile::tempdir().unwrap();
    let rules = write_rules(
        dir.path(),
        "max_lateness = \"0s\"\n[[rules]]\nname = \"quiet\"\ntype = \"flatline\"\ngroup_by = [\"service\"]\n\
         threshold = 1\nwindow = \"1s\"\nforget_after = \"4s\"\nexpect = [\"db\"]\n",
    );
    let police = spawn_police_with(&redis.url(), "p1", &["--rules", &rules], &dir.path().join("p1.log"));
    let start = now_ms();
    xadd_events(&mut connection, &[(start, "api"), (start, "db")]);
    let api_rk = format!("quiet/{}", gk("api"));
    // api (seen, then silent) and db (expected) fire; api is forgotten 4 s after its match
    wait_until(
        "the forgotten group's episode resolves",
        Duration::from_secs(60),
        || {
            records(&mut connection)
                .iter()
                .any(|record| record["status"] == "resolved" && record["group"]["service"] == "api")
        },
    );
    let all = records(&mut connection);
    let resolve = all
        .iter()
        .find(|record| record["status"] == "resolved" && record["group"]["service"] == "api")
        .unwrap();
    assert_eq!(resolve["annotations"]["resolve_reason"], "forgotten: no match for 4s");
    let seen: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("{RULES}seen:quiet"))
        .arg(0)
        .arg(-1)
        .query(&mut connection)
        .unwrap();
    assert_eq!(seen, [gk("db")], "the expected group is never forgotten");
    let groups: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("{RULES}groups:quiet"))
        .arg(0)
        .arg(-1)
        .query(&mut connection)
        .unwrap();
    assert!(
        !groups.contains(&gk("api")),
        "flatline stops expecting a forgotten group"
    );
    let active: Option<String> = redis::cmd("HGET")
        .arg(format!("{RULES}active"))
        .arg(&api_rk)
        .query(&mut connection)
        .unwrap();
    assert_eq!(active, None);
    // a few windows later api has not fired again, db still fires (expected)
    let api_firings = |records: &[serde_json::Value]| {
        records
            .iter()
            .filter(|record| record["status"] == "firing" && record["group"]["service"] == "api")
            .count()
    };
    let before = api_firings(&all);
    std::thread::sleep(Duration::from_secs(3));
    let later = records(&mut connection);
    assert_eq!(
        api_firings(&later),
        before,
        "a forgotten group is not expected any more"
    );
    assert!(
        later
            .iter()
            .any(|record| record["status"] == "firing" && record["group"]["service"] == "db")
    );
    stop_gracefully(police);
}

#[test]
fn over_maxmemory_no_rule_state_is_created_and_no_match_is_lost_uncounted() {
    let redis = TestRedis::start(&["--maxmemory", "8mb", "--maxmemory-policy", "noeviction"]);
    let mut connection = redis.connection();
    let dir = tempfile::tempdir().unwrap();
    let rules = write_rules(
        dir.path(),
        "[[rules]]\nname = \"f\"\ntype = \"frequency\"\ngroup_by = [\"service\"]\nthreshold = 1000000\nwindow = \"1h\"\n",
    );
    let window_start = window::window_start(now_ms(), 3_600_000);
    // api is tracked, with its counter, before Redis fills up
    xadd_events(&mut connection, &[(window_start + 1, "api")]);
    let police = spawn_police_with(&redis.url(), "p1", &["--rules", &rules], &dir.path().join("p1.log"));
    wait_until("the first entry processed", Duration::from_secs(60), || {
        stat(&mut connection, "events") == 1
    });
    stop_gracefully(police);
    // three events of api from another agent run, whose dedup bitmap does not exist yet
    let other_run = 3u64;
    let mut pipeline = redis::pipe();
    for sequence in 0..other_run {
        let mut event = event_json(sequence, window_start + 2, "api", "m");
        event["id"] = format!("t:2:{sequence}").into();
        pipeline
            .cmd("XADD")
            .arg(&["logsentinel:logs", "*", "v", "1", "event"])
            .arg(event.to_string())
            .ignore();
    }
    let _: () = pipeline.query(&mut connection).expect("XADD");
    let bitmaps_before = dedup_bitmaps(&mut connection);
    // fill Redis: every other event of a new group (sequence numbers in the bitmap of the
    // first event, which exists)
    let padding = "x".repeat(500);
    let mut written = 1u64;
    let mut api_events = 1u64;
    loop {
        let service = if written.is_multiple_of(2) {
            "api".to_string()
        } else {
            format!("new{written}")
        };
        let event = event_json(written + 1, window_start + 2, &service, &padding);
        let added: redis::RedisResult<String> = redis::cmd("XADD")
            .arg(&["logsentinel:logs", "*", "v", "1", "event"])
            .arg(event.to_string())
            .query(&mut connection);
        match added {
            Ok(_) => {
                written += 1;
                if service == "api" {
                    api_events += 1;
                }
            }
            Err(error) => {
                assert_eq!(error.code(), Some("OOM"), "{error}");
                break;
            }
        }
    }
    let log = dir.path().join("p2.log");
    let police = spawn_police_with(&redis.url(), "p2", &["--rules", &rules], &log);
    wait_until("every entry processed", Duration::from_secs(60), || {
        stat(&mut connection, "events") == written + other_run
    });
    stop_gracefully(police);
    assert_eq!(
        dedup_bitmaps(&mut connection),
        bitmaps_before,
        "no dedup bitmap is created over maxmemory"
    );
    let api_count: Option<u64> = redis::cmd("GET")
        .arg(format!("{RULES}count:f:{}:{window_start}", gk("api")))
        .query(&mut connection)
        .unwrap();
    assert_eq!(
        api_count,
        Some(api_events),
        "a tracked group's counter is counted in place"
    );
    let tracked_new = zcard(&mut connection, &format!("{RULES}seen:f")) - 1;
    let refused = stat(&mut connection, "over_maxmemory");
    assert!(refused > 0, "new groups were refused while Redis was full");
    assert_eq!(
        tracked_new + refused,
        written - api_events + other_run,
        "every match of a new group, and of the other run's events, is either counted or counted as refused"
    );
    let said = file_text(&log);
    assert!(said.contains("over maxmemory"), "the refusal is logged: {said}");
}

/// The names of the dedup bitmaps in Redis.
fn dedup_bitmaps(connection: &mut redis::Connection) -> BTreeSet<String> {
    redis::cmd("KEYS")
        .arg(format!("{RULES}dedup:*"))
        .query::<Vec<String>>(connection)
        .expect("KEYS")
        .into_iter()
        .collect()
}

fn memory_figure(connection: &mut redis::Connection, name: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg("memory").query(connection).expect("INFO");
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("{name}:")))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("INFO memory has no {name}"))
}

/// Rule state stops growing at 90 % of maxmemory: once a police creating a new group for
/// every event has filled its share in small batches, batches ten times as large still
/// pass (state grown to the brim would leave room for one small batch only).
#[test]
fn rule_state_leaves_a_tenth_of_maxmemory_to_ingestion() {
    let redis = TestRedis::start(&["--maxmemory", "16mb", "--maxmemory-policy", "noeviction"]);
    let mut connection = redis.connection();
    let dir = tempfile::tempdir().unwrap();
    let rules = write_rules(
        dir.path(),
        "max_groups = 1000000\n[[rules]]\nname = \"f\"\ntype = \"frequency\"\ngroup_by = [\"service\"]\n\
         threshold = 1000000\nwindow = \"1h\"\n",
    );
    let window_start = window::window_start(now_ms(), 3_600_000);
    let police = spawn_police_with(
        &redis.url(),
        "p1",
        &["--rules", &rules, "--maintenance-interval", "200ms"],
        &dir.path().join("p1.log"),
    );
    let mut written = 0u64;
    let mut write_batch = |connection: &mut redis::Connection, size: u64| {
        let mut pipeline = redis::pipe();
        for _ in 0..size {
            written += 1;
            let event = event_json(written, window_start + 1, &format!("s{written}"), "m");
            pipeline
                .cmd("XADD")
                .arg(&["logsentinel:logs", "*", "v", "1", "event"])
                .arg(event.to_string())
                .ignore();
        }
        let added: redis::RedisResult<()> = pipeline.query(connection);
        if let Err(error) = added {
            panic!(
                "ingestion refused after {written} events, used_memory {}: {:?}",
                memory_figure(connection, "used_memory"),
                error.code()
            );
        }
        let expected = written;
        wait_until("the batch settled and trimmed", Duration::from_secs(60), || {
            stat(connection, "events") == expected && stream_length(connection) <= 1
        });
    };
    while stat(&mut connection, "over_maxmemory") == 0 {
        assert!(
            memory_figure(&mut connection, "used_memory") < 32 << 20,
            "the rule state never stopped growing"
        );
        write_batch(&mut connection, 200);
    }
    for _ in 0..3 {
        write_batch(&mut connection, 2000);
    }
    let written = written;
    stop_gracefully(police);
    let tracked = zcard(&mut connection, &format!("{RULES}seen:f"));
    let refused = stat(&mut connection, "over_maxmemory");
    assert_eq!(tracked + refused, written, "every match counted, or counted as refused");
}

#[test]
fn a_reload_resolves_the_episodes_of_removed_and_changed_rules_with_the_reason() {
    let redis = TestRedis::start(&[]);
    let mut connection = redis.connection();
    let dir = tempfile::tempdir().unwrap();
    let first = "[[rules]]\nname = \"gone\"\ntype = \"frequency\"\ngroup_by = [\"service\"]\nthreshold = 1\nwindow = \"1h\"\n\
                 [[rules]]\nname = \"changed\"\ntype = \"any\"\ncooldown = \"1h\"\ngroup_by = [\"service\"]\n\
                 [[rules]]\nname = \"kept\"\ntype = \"any\"\ncooldown = \"1h\"\n";
    let rules = write_rules(dir.path(), first);
    let police = spawn_police_with(&redis.url(), "p1", &["--rules", &rules], &dir.path().join("p1.log"));
    xadd_events(&mut connection, &[(now_ms(), "api"), (now_ms(), "web")]);
    wait_until("five episodes firing", Duration::from_secs(60), || {
        firing_ids(&records(&mut connection)).len() == 5
    });
    wait_until("the police holds the clock lease", Duration::from_secs(60), || {
        exists(&mut connection, &format!("{RULES}lease"))
    });
    let second = "[[rules]]\nname = \"changed\"\ntype = \"any\"\ncooldown = \"1h\"\n\
                  [[rules]]\nname = \"kept\"\ntype = \"any\"\ncooldown = \"1h\"\n";
    std::fs::write(&rules, second).unwrap();
    sigterm_with(&police, "-HUP");
    wait_until("four resolves", Duration::from_secs(60), || {
        records(&mut connection)
            .iter()
            .filter(|record| record["status"] == "resolved")
            .count()
            == 4
    });
    for record in records(&mut connection)
        .iter()
        .filter(|record| record["status"] == "resolved")
    {
        let reason = record["annotations"]["resolve_reason"].as_str().unwrap();
        match record["rule"].as_str().unwrap() {
            "gone" => assert_eq!(reason, "rule removed by a reload"),
            "changed" => assert_eq!(reason, "rule changed by a reload (type, window or group_by)"),
            other => panic!("rule {other} was not retired"),
        }
    }
    let active: Vec<String> = redis::cmd("HKEYS")
        .arg(format!("{RULES}active"))
        .query(&mut connection)
        .unwrap();
    assert_eq!(
        active,
        ["kept/".to_string() + &group::key_of(std::iter::empty::<&str>()).id]
    );
    for key in ["seen:gone", "seen:changed", "newest:gone"] {
        assert!(!exists(&mut connection, &format!("{RULES}{key}")), "{key} removed");
    }
    let cooldowns: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{RULES}cooldown:changed:*"))
        .query(&mut connection)
        .unwrap();
    assert!(cooldowns.is_empty(), "{cooldowns:?}");
    stop_gracefully(police);
}

fn sigterm_with(child: &Child, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(signal)
        .arg(child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success());
}
