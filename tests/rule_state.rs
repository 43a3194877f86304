//! Rule state in Redis, exactly once: window counts applied in the settle script that
//! acknowledges the entries they count, one alert per episode across police and crashes,
//! clock work (flatline, spike down, resolves) done by the lease holder and taken over when
//! it dies, and the same records as the reference model.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::rules::*;
use common::*;
use logsentinel::broker::keys::Keys;
use logsentinel::event::{self, Level};
use logsentinel::police::alert::AlertStatus;
use logsentinel::police::rules::evaluate::BatchDrafts;
use logsentinel::police::rules::model::Model;
use logsentinel::police::rules::{RuleSet, window};
use logsentinel::police::settle::{self, Outcome};

/// An agent reading JSON lines from its stdin (the test sets every timestamp).
fn spawn_stdin_agent(url: &str, agent_id: &str) -> Child {
    logsentinel(url)
        .args(["agent", "--source", "stdin", "--agent-id", agent_id, "--summary-json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn agent")
}

fn line(ts_ms: i64, level: &str, service: &str, message: &str) -> String {
    format!(
        "{}\n",
        serde_json::json!({
            "timestamp": window::rfc3339(ts_ms),
            "level": level,
            "service": service,
            "host": "h1",
            "message": message,
        })
    )
}

/// Writes events as native v1 entries, one event per entry; the `vault` service's message
/// is "key leak", every other one "m".
fn xadd_events(connection: &mut redis::Connection, events: &[(i64, &str, &str)]) {
    let mut pipeline = redis::pipe();
    for (ts_ms, level, service) in events {
        let sequence: u64 = redis::cmd("INCR").arg("test:seq").query(connection).unwrap();
        let event = serde_json::json!({
            "id": format!("t:1:{sequence}"),
            "timestamp": window::rfc3339(*ts_ms),
            "level": level,
            "service": service,
            "host": "h1",
            "message": if *service == "vault" { "key leak" } else { "m" },
        });
        pipeline
            .cmd("XADD")
            .arg("logsentinel:logs")
            .arg("*")
            .arg("v")
            .arg("1")
            .arg("event")
            .arg(event.to_string())
            .ignore();
    }
    let _: () = pipeline.query(connection).expect("XADD");
}

#[test]
fn frequency_per_service_counts_exactly_once_across_three_agents_two_police_and_a_kill_nine() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    let dir = tempfile::tempdir().unwrap();
    let rules = write_rules(
        dir.path(),
        "[[rules]]\nname = \"errors\"\ntype = \"frequency\"\nfilter = { level = \"ERROR\" }\n\
         group_by = [\"service\"]\nthreshold = 50\nwindow = \"1h\"\ncooldown = \"0s\"\n\
         annotations = { summary = \"{count} errors in {service}\" }\n",
    );
    let police_args = [
        "--rules",
        rules.as_str(),
        "--claim-idle",
        "1s",
        "--read-count",
        "20",
        "--trim",
        "false",
    ];
    let mut first = Some(spawn_police_with(&url, "p1", &police_args, &dir.path().join("p1.log")));
    let second = spawn_police_with(&url, "p2", &police_args, &dir.path().join("p2.log"));

    // All events in the current hour: one window per service, one episode each.
    let window_start = window::window_start(now_ms(), 3_600_000);
    let services = ["api", "db", "web", "auth"];
    let mut naive: BTreeMap<&str, u64> = BTreeMap::new();
    let mut agents: Vec<Child> = (0..3).map(|n| spawn_stdin_agent(&url, &format!("agent{n}"))).collect();
    let mut total = 0u64;
    let per_agent = 3_000u64;
    for round in 0..3u64 {
        for (number, agent) in agents.iter_mut().enumerate() {
            let input = agent.stdin.as_mut().unwrap();
            let mut text = String::new();
            for index in 0..per_agent / 3 {
                let sequence = round * per_agent + index * 3 + number as u64;
                let service = services[(sequence % 4) as usize];
                let level = if sequence.is_multiple_of(3) { "ERROR" } else { "INFO" };
                // the `web` service stays below the threshold
                let level = if service == "web" && !sequence.is_multiple_of(60) {
                    "INFO"
                } else {
                    level
                };
                if level == "ERROR" {
                    *naive.entry(service).or_default() += 1;
                }
                let ts = window_start + (sequence as i64 * 7) % 3_000_000;
                text.push_str(&line(ts.min(window_start + 3_599_999), level, service, "boom"));
                total += 1;
            }
            input.write_all(text.as_bytes()).unwrap();
            input.flush().unwrap();
        }
        if let Some(mut killed) = first.take() {
            // Mid-window: kill -9 one police once it has settled some of the first round.
            wait_until("the first police settled something", Duration::from_secs(60), || {
                processed_events(&mut connection) > 0
            });
            killed.kill().expect("kill -9 police");
            killed.wait().unwrap();
        }
    }
    for mut agent in agents {
        drop(agent.stdin.take());
        let summary = agent_summary(agent);
        assert_eq!(summary.unsent_events, 0);
    }
    wait_until("every event processed", Duration::from_secs(120), || {
        processed_events(&mut connection) == total
    });
    assert_eq!(pending_total(&mut connection), 0);

    for service in services {
        let key = format!("{RULES}count:errors:{}:{window_start}", gk(service));
        let counted = get_integer(&mut connection, &key).unwrap_or(0);
        assert_eq!(
            counted,
            naive.get(service).copied().unwrap_or(0),
            "count of {service} equals the naive model"
        );
    }
    let expected: Vec<(String, String)> = services
        .iter()
        .filter(|service| naive.get(*service).copied().unwrap_or(0) >= 50)
        .map(|service| (format!("errors/{}/{window_start}", gk(service)), "firing".to_string()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut written = record_keys(&mut connection);
    written.sort();
    assert_eq!(written, expected, "exactly one alert per episode");
    for record in records(&mut connection) {
        assert_eq!(record["count"], 50, "fired at the crossing");
        assert!(
            record["annotations"]["summary"]
                .as_str()
                .unwrap()
                .starts_with("50 errors in ")
        );
    }
    stop_gracefully(second);
}

#[test]
fn flatline_fires_once_resolves_on_return_and_survives_killing_the_lease_holder() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    let dir = tempfile::tempdir().unwrap();
    let window_ms = 2_000i64;
    let rules = write_rules(
        dir.path(),
        "max_lateness = \"0s\"\n[[rules]]\nname = \"quiet\"\ntype = \"flatline\"\ngroup_by = [\"service\"]\n\
         threshold = 3\nwindow = \"2s\"\nexpect = [\"db\"]\nannotations = { summary = \"{service} sent {count}\" }\n",
    );
    let args = ["--rules", rules.as_str()];
    let mut police: HashMap<&str, Child> = HashMap::new();
    police.insert("p1", spawn_police_with(&url, "p1", &args, &dir.path().join("p1.log")));
    police.insert("p2", spawn_police_with(&url, "p2", &args, &dir.path().join("p2.log")));

    // api sends 3 events in a window a little ahead, then nothing.
    let sending = window::window_start(now_ms(), window_ms as u64) + 2 * window_ms;
    xadd_events(
        &mut connection,
        &[
            (sending + 10, "INFO", "api"),
            (sending + 20, "INFO", "api"),
            (sending + 30, "INFO", "api"),
        ],
    );
    let db_id_prefix = format!("quiet/{}/", gk("db"));
    wait_until("db (expected, never seen) flatlines", Duration::from_secs(60), || {
        record_keys(&mut connection)
            .iter()
            .any(|(id, _)| id.starts_with(&db_id_prefix))
    });
    // Kill the lease holder before api's silent window closes; the other takes over.
    let holder = lease_owner(&mut connection).expect("a police holds the lease");
    let holder_name = holder.split('/').next().unwrap().to_string();
    let survivor = if holder_name == "p1" { "p2" } else { "p1" };
    let mut killed = police.remove(holder_name.as_str()).unwrap();
    killed.kill().expect("kill -9 the lease holder");
    killed.wait().unwrap();

    let api_id = format!("quiet/{}/{}", gk("api"), sending + window_ms);
    wait_until("the survivor holds the lease", Duration::from_secs(60), || {
        lease_owner(&mut connection).is_some_and(|owner| owner.starts_with(&format!("{survivor}/")))
    });
    wait_until("api's silent window flatlines", Duration::from_secs(60), || {
        record_keys(&mut connection).iter().any(|(id, _)| *id == api_id)
    });
    // Several silent windows later: still one record per episode.
    let settled_at = now_ms();
    wait_until("more windows closed", Duration::from_secs(60), || {
        now_ms() > settled_at + 3 * window_ms
    });
    let written = record_keys(&mut connection);
    assert_eq!(written.len(), 2, "db and api, once each: {written:?}");
    let api_record = records(&mut connection)
        .into_iter()
        .find(|record| record["alert_id"] == api_id.as_str())
        .unwrap();
    assert_eq!(api_record["count"], 0);
    assert_eq!(api_record["annotations"]["summary"], "api sent 0");
    assert!(api_record.get("event").is_none());

    // api comes back: its episode resolves, with the same id.
    let back = window::window_start(now_ms(), window_ms as u64) + window_ms;
    xadd_events(
        &mut connection,
        &[
            (back + 1, "INFO", "api"),
            (back + 2, "INFO", "api"),
            (back + 3, "INFO", "api"),
        ],
    );
    wait_until("api resolves", Duration::from_secs(60), || {
        record_keys(&mut connection).contains(&(api_id.clone(), "resolved".to_string()))
    });
    let active: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("{RULES}active"))
        .query(&mut connection)
        .unwrap();
    assert!(
        !active.contains_key(&format!("quiet/{}", gk("api"))),
        "api is no longer firing"
    );
    assert!(active.contains_key(&format!("quiet/{}", gk("db"))), "db still is");
    let resolved: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("{RULES}resolved"))
        .query(&mut connection)
        .unwrap();
    assert!(resolved.contains_key(&format!("quiet/{}", gk("api"))));
    for (_, child) in police {
        stop_gracefully(child);
    }
    // A clean stop hands the lease back.
    assert_eq!(lease_owner(&mut connection), None);
}

#[test]
fn spike_up_fires_on_the_increment_and_down_at_the_close_of_the_window() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    let dir = tempfile::tempdir().unwrap();
    let window_ms = 2_000i64;
    let rules = write_rules(
        dir.path(),
        "max_lateness = \"0s\"\n[[rules]]\nname = \"surge\"\ntype = \"spike\"\ngroup_by = [\"service\"]\n\
         window = \"2s\"\nratio = 3\ndirection = \"both\"\nmin_count = 6\ncooldown = \"0s\"\n\
         annotations = { summary = \"{count} after {previous_count}\" }\n",
    );
    let police = spawn_police_with(&url, "p1", &["--rules", &rules], &dir.path().join("p1.log"));
    let quiet_window = window::window_start(now_ms(), window_ms as u64) + 2 * window_ms;
    let busy_window = quiet_window + window_ms;
    let mut events: Vec<(i64, &str, &str)> = vec![(quiet_window + 1, "INFO", "web"), (quiet_window + 2, "INFO", "web")];
    events.extend((0..12).map(|n| (busy_window + n, "INFO", "web")));
    xadd_events(&mut connection, &events);

    let up_id = format!("surge/{}/{busy_window}", gk("web"));
    let down_id = format!("surge/{}/{}", gk("web"), busy_window + window_ms);
    wait_until("the spike up", Duration::from_secs(60), || {
        record_keys(&mut connection).iter().any(|(id, _)| *id == up_id)
    });
    let up = records(&mut connection).remove(0);
    assert!(up["count"].as_u64().unwrap() >= 6, "{up}");
    assert!(
        up["annotations"]["summary"].as_str().unwrap().ends_with(" after 2"),
        "{up}"
    );
    // The window after the busy one stays empty: 0 * 3 <= 12 at its close.
    wait_until("the spike down", Duration::from_secs(60), || {
        record_keys(&mut connection).iter().any(|(id, _)| *id == down_id)
    });
    let down = records(&mut connection)
        .into_iter()
        .find(|record| record["alert_id"] == down_id.as_str())
        .unwrap();
    assert_eq!(down["count"], 0);
    assert_eq!(down["annotations"]["summary"], "0 after 12");
    assert_eq!(record_keys(&mut connection).len(), 2);
    stop_gracefully(police);
}

/// Reads `count` entries as `consumer` and turns them into outcomes under `rules`.
fn read_as(
    connection: &mut redis::Connection,
    consumer: &str,
    count: usize,
    rules: &RuleSet,
) -> Vec<(Outcome, Vec<logsentinel::event::LogEvent>)> {
    let reply: redis::Value = redis::cmd("XREADGROUP")
        .arg(&["GROUP", "police", consumer, "COUNT"])
        .arg(count)
        .arg(&["STREAMS", "logsentinel:logs", ">"])
        .query(connection)
        .unwrap();
    type Entries = Vec<(String, Vec<(String, String)>)>;
    let streams: Vec<(String, Entries)> = redis::from_redis_value(reply).unwrap();
    let mut outcomes = Vec::new();
    // One settle call, as the police evaluates it: a draft per (rule, group key, window).
    let mut batch = BatchDrafts::default();
    for (id, fields) in streams.into_iter().flat_map(|(_, entries)| entries) {
        let decoded = event::decode_entry(&id, &fields, Level::Unknown);
        let events = decoded.events.clone();
        outcomes.push((
            Outcome::evaluate_in_batch(id, decoded, rules, now_ms(), &mut batch),
            events,
        ));
    }
    outcomes
}

/// The settle script and the clock script raise what the reference model raises from the
/// same items, in the same order: ids, statuses and counts.
#[tokio::test]
async fn the_scripts_and_the_reference_model_raise_the_same_records() {
    scripts_and_model_agree(25, Fence::OwnedSet).await;
}

/// As above with small settle calls: most lie within one window, so the script applies
/// most windows from their sums, and walks those that cross a threshold.
#[tokio::test]
async fn the_scripts_and_the_reference_model_agree_in_small_settle_calls() {
    scripts_and_model_agree(4, Fence::OwnedSet).await;
}

/// As above with the pending count known, as a police under load settles: calls whose
/// items only count are folded (their updates travel as sums), unless a threshold is
/// crossed, and the records are the same. Calls of 25 span two windows (20 events a
/// minute): never folded, fenced by the pending count alone.
#[tokio::test]
async fn the_scripts_and_the_reference_model_agree_in_folded_settle_calls() {
    let folded = scripts_and_model_agree(4, Fence::PendingCount).await;
    assert!(folded.calls > 0, "some calls were folded");
    assert!(
        folded.firing > 0,
        "some folded calls crossed a threshold (sent again with the crossing slots itemized)"
    );
    scripts_and_model_agree(25, Fence::PendingCount).await;
}

/// Folded settle calls of [`scripts_and_model_agree`].
struct Folded {
    calls: usize,
    /// Folded calls that raised a frequency or spike record: a window crossed in them.
    firing: usize,
}

/// How the settle calls of [`scripts_and_model_agree`] prove that their consumer holds
/// their items.
#[derive(Clone, Copy, PartialEq)]
enum Fence {
    /// No pending count given: the script reads the owned set.
    OwnedSet,
    /// The consumer's pending count given: it holds exactly the call's items.
    PendingCount,
}

/// Returns how many settle calls were folded.
async fn scripts_and_model_agree(read_count: usize, fence: Fence) -> Folded {
    let redis = TestRedis::start(&[]);
    let mut sync = redis.connection();
    create_group(&mut sync, "police");
    let rules = RuleSet::parse(
        "rules.toml",
        "max_lateness = \"1m\"\n\
         [[rules]]\nname = \"f\"\ntype = \"frequency\"\nfilter = { level = \"ERROR\" }\ngroup_by = [\"service\"]\n\
         threshold = 4\nwindow = \"1m\"\ncooldown = \"2m\"\n\
         [[rules]]\nname = \"s\"\ntype = \"spike\"\ngroup_by = [\"service\"]\nwindow = \"1m\"\nratio = 2\n\
         direction = \"both\"\nmin_count = 3\ncooldown = \"0s\"\n\
         [[rules]]\nname = \"q\"\ntype = \"flatline\"\ngroup_by = [\"service\"]\nthreshold = 2\nwindow = \"1m\"\n\
         expect = [\"db\"]\n\
         [[rules]]\nname = \"a\"\ntype = \"any\"\nfilter = { message = \"leak\" }\ncooldown = \"1m\"\n\
         [[rules]]\nname = \"c\"\ntype = \"any\"\nfilter = { level = \"CRITICAL\" }\ncooldown = \"0s\"\n",
    )
    .expect("valid rules");
    let stateful = rules.stateful_rules();
    // Twenty minutes of events ending two minutes ago, with some out of order and late.
    let minute = 60_000i64;
    let start = window::window_start(now_ms(), minute as u64) - 22 * minute;
    let mut events: Vec<(i64, &str, &str)> = Vec::new();
    let services = ["api", "web", "db"];
    for step in 0..400i64 {
        let minute_index = step / 20;
        let service = services[(step % 3) as usize];
        // db only speaks in the first minutes: flatline; web bursts every fifth minute: spikes
        if service == "db" && minute_index > 3 {
            continue;
        }
        let per_minute = if service == "web" && minute_index % 5 == 4 {
            3
        } else {
            1
        };
        for burst in 0..per_minute {
            let level = match (step + burst) % 7 {
                0 | 3 => "ERROR",
                5 if step % 50 == 0 => "CRITICAL",
                _ => "INFO",
            };
            let mut ts = start + minute_index * minute + (step % 20) * 2_000 + burst;
            if step % 37 == 0 {
                ts -= 3 * minute; // late: its window closed more than a minute before the newest
            }
            events.push((ts, level, service));
        }
    }
    // leaks: an episode folding three matches, then one after its cooldown
    for offset in [0, 10_000, 50_000, 200_000] {
        events.push((start + 5 * minute + offset, "INFO", "vault"));
    }
    xadd_events(&mut sync, &events);
    let mut connection = logsentinel::broker::connect(&redis.url()).await.unwrap();
    let keys = Keys::default();
    let mut model = Model::new(&rules);
    let mut expected: Vec<(String, String, u64)> = Vec::new();
    let mut folded = Folded { calls: 0, firing: 0 };
    loop {
        let batch = read_as(&mut sync, "a", read_count, &rules);
        if batch.is_empty() {
            break;
        }
        let mut outcomes = Vec::new();
        for (outcome, events) in batch {
            let plan = rules.evaluate(events, now_ms());
            for alert in model.apply(plan, now_ms()) {
                expected.push((alert.alert_id.clone(), status_of(alert.status), alert.count));
            }
            outcomes.push(outcome);
        }
        let mut target = target(&keys, "a", &stateful);
        if fence == Fence::PendingCount {
            target.expected_pending = Some(outcomes.len() as u64);
        }
        let records_before = records(&mut sync).len();
        let settled = settle::settle(&mut connection, &target, &outcomes).await.unwrap();
        assert_eq!(settled.items, outcomes.len() as u64);
        // None after a script load or a folded call sent again: a read could have run between
        assert!(
            matches!(settled.pending_after, None | Some(0)),
            "every entry read is settled: {settled:?}"
        );
        if settled.folded {
            folded.calls += 1;
            let fired = records(&mut sync)[records_before..].iter().any(|record| {
                let id = record["alert_id"].as_str().unwrap_or_default();
                id.starts_with("f/") || id.starts_with("s/")
            });
            folded.firing += usize::from(fired);
        }
    }
    // Clock work now: the newest closed window of each rule, then resolves.
    let clock = logsentinel::police::clock::Clock {
        keys: keys.clone(),
        redis_url: redis.url(),
        source: logsentinel::options::Transport::Stream,
        lease: logsentinel::broker::lease::Lease {
            key: keys.rules_lease(),
            owner: "test".into(),
        },
        rules: tokio::sync::watch::channel(Arc::new(rules.clone())).1,
        alert_dedup_ttl_s: 600,
    };
    // The clock scripts act only for the lease's holder.
    let _: () = redis::cmd("SET")
        .arg(keys.rules_lease())
        .arg("test")
        .query(&mut sync)
        .unwrap();
    let tick_at = now_ms();
    let totals = clock.tick(&mut connection, tick_at).await.unwrap();
    assert!(!totals.fenced && totals.postponed == 0, "{totals:?}");
    for alert in model.tick(tick_at) {
        expected.push((alert.alert_id.clone(), status_of(alert.status), alert.count));
    }
    let written: Vec<(String, String, u64)> = records(&mut sync)
        .iter()
        .map(|record| {
            (
                record["alert_id"].as_str().unwrap().to_string(),
                record["status"].as_str().unwrap().to_string(),
                record["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        written.iter().any(|(id, _, _)| id.starts_with("f/")),
        "a frequency alert"
    );
    assert!(written.iter().any(|(id, _, _)| id.starts_with("s/")), "a spike alert");
    assert!(
        written.iter().any(|(id, _, _)| id.starts_with("q/")),
        "a flatline alert"
    );
    assert!(
        written.iter().any(|(id, _, _)| id.starts_with("a/")),
        "an any-with-cooldown alert"
    );
    assert!(written.iter().any(|(_, status, _)| status == "resolved"), "a resolve");
    assert_eq!(written, expected, "the scripts and the model raise the same records");
    assert_eq!(
        counters(&mut sync, "logsentinel:logs:stats")
            .get("late")
            .copied()
            .unwrap_or(0),
        model.late,
        "the same late matches"
    );
    folded
}

fn status_of(status: AlertStatus) -> String {
    match status {
        AlertStatus::Firing => "firing".into(),
        AlertStatus::Resolved => "resolved".into(),
    }
}

/// A redelivered entry (claimed from a police that read it, as after a kill -9) is
/// counted once: by the police that holds it, in the settle that acknowledges it.
#[tokio::test]
async fn a_claimed_entry_is_counted_once_by_its_holder() {
    let redis = TestRedis::start(&[]);
    let mut sync = redis.connection();
    create_group(&mut sync, "police");
    let rules = RuleSet::parse(
        "rules.toml",
        "[[rules]]\nname = \"f\"\ntype = \"frequency\"\ngroup_by = [\"service\"]\nthreshold = 4\nwindow = \"1h\"\n",
    )
    .unwrap();
    let stateful = rules.stateful_rules();
    let window_start = window::window_start(now_ms(), 3_600_000);
    xadd_events(&mut sync, &[(window_start + 1, "INFO", "api"); 6]);
    let read_by_a = read_as(&mut sync, "a", 6, &rules);
    // b claims the first four entries, as XAUTOCLAIM does for a dead consumer's entries.
    let claimed: Vec<String> = read_by_a
        .iter()
        .take(4)
        .map(|(outcome, _)| outcome.item.clone())
        .collect();
    let _: redis::Value = redis::cmd("XCLAIM")
        .arg(&["logsentinel:logs", "police", "b", "0"])
        .arg(&claimed)
        .query(&mut sync)
        .unwrap();
    let outcomes_of = |ids: &[String]| -> Vec<Outcome> { read_as_again(&mut redis.connection(), ids, &rules) };
    let keys = Keys::default();
    let mut connection = logsentinel::broker::connect(&redis.url()).await.unwrap();
    let all: Vec<String> = read_by_a.iter().map(|(outcome, _)| outcome.item.clone()).collect();
    // a, slow, settles all six: only its two are counted.
    let by_a = settle::settle(&mut connection, &target(&keys, "a", &stateful), &outcomes_of(&all))
        .await
        .unwrap();
    assert_eq!(by_a.items, 2);
    let count_key = format!("{RULES}count:f:{}:{window_start}", gk("api"));
    assert_eq!(get_integer(&mut sync, &count_key), Some(2));
    assert!(records(&mut sync).is_empty(), "below the threshold");
    // b settles its four (twice: the second settle finds nothing pending).
    for _ in 0..2 {
        settle::settle(&mut connection, &target(&keys, "b", &stateful), &outcomes_of(&claimed))
            .await
            .unwrap();
    }
    assert_eq!(get_integer(&mut sync, &count_key), Some(6));
    assert_eq!(
        record_keys(&mut sync),
        [(format!("f/{}/{window_start}", gk("api")), "firing".to_string())]
    );
    assert_eq!(records(&mut sync)[0]["count"], 4, "fired at the crossing");
    let active: String = redis::cmd("HGET")
        .arg(format!("{RULES}active"))
        .arg(format!("f/{}", gk("api")))
        .query(&mut sync)
        .unwrap();
    let active: serde_json::Value = serde_json::from_str(&active).unwrap();
    assert_eq!(active["count"], 6, "the episode follows its window");
    assert_eq!(pending_total(&mut sync), 0);
}

/// Outcomes of the given entries, read again with XRANGE (as a redelivery reads them).
fn read_as_again(connection: &mut redis::Connection, ids: &[String], rules: &RuleSet) -> Vec<Outcome> {
    ids.iter()
        .map(|id| {
            let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
                .arg("logsentinel:logs")
                .arg(id)
                .arg(id)
                .query(connection)
                .unwrap();
            let decoded = event::decode_entry(id, &entries[0].1, Level::Unknown);
            Outcome::evaluate(id.clone(), decoded, rules, now_ms())
        })
        .collect()
}

#[test]
fn a_rules_key_of_the_wrong_type_stops_the_police_at_start_naming_the_key() {
    let redis = TestRedis::start(&[]);
    let mut connection = redis.connection();
    let dir = tempfile::tempdir().unwrap();
    let rules = write_rules(
        dir.path(),
        "[[rules]]\nname = \"quiet\"\ntype = \"flatline\"\nthreshold = 1\nwindow = \"1m\"\n",
    );
    let _: () = redis::cmd("SET")
        .arg(format!("{RULES}groups:quiet"))
        .arg("not a zset")
        .query(&mut connection)
        .unwrap();
    xadd_events(&mut connection, &[(now_ms(), "INFO", "api")]);
    let output = logsentinel(&redis.url())
        .args(["police", "--consumer", "p1", "--quiet", "--rules", &rules])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the police must stop: {said}");
    assert!(
        said.contains("WRONGTYPE") && said.contains("logsentinel:rules:groups:quiet"),
        "the reason names the key: {said}"
    );
    assert_eq!(processed_events(&mut connection), 0, "nothing was acknowledged");
}

#[test]
fn redis_at_maxmemory_still_settles_and_accounts_for_every_match() {
    let redis = TestRedis::start(&["--maxmemory", "8mb", "--maxmemory-policy", "noeviction"]);
    let mut connection = redis.connection();
    let dir = tempfile::tempdir().unwrap();
    let rules = write_rules(
        dir.path(),
        "[[rules]]\nname = \"f\"\ntype = \"frequency\"\ngroup_by = [\"service\"]\nthreshold = 100\nwindow = \"1h\"\n",
    );
    let window_start = window::window_start(now_ms(), 3_600_000);
    let padding = "x".repeat(500);
    let mut written = 0u64;
    loop {
        let event = serde_json::json!({
            "id": format!("t:1:{written}"),
            "timestamp": window::rfc3339(window_start + 1),
            "level": "INFO",
            "service": "api",
            "host": "h1",
            "message": padding,
        });
        let added: redis::RedisResult<String> = redis::cmd("XADD")
            .arg(&["logsentinel:logs", "*", "v", "1", "event"])
            .arg(event.to_string())
            .query(&mut connection);
        match added {
            Ok(_) => written += 1,
            Err(error) => {
                assert_eq!(error.code(), Some("OOM"), "{error}");
                break;
            }
        }
    }
    let police = spawn_police_with(&redis.url(), "p1", &["--rules", &rules], &dir.path().join("p1.log"));
    wait_until("every entry processed", Duration::from_secs(60), || {
        processed_events(&mut connection) == written
    });
    // Over maxmemory the police creates no rule state: matches that would need a new
    // counter are counted as over_maxmemory instead, until its trims free memory.
    let count_key = format!("{RULES}count:f:{}:{window_start}", gk("api"));
    let counted = get_integer(&mut connection, &count_key).unwrap_or(0);
    let refused = counters(&mut connection, "logsentinel:logs:stats")
        .get("over_maxmemory")
        .copied()
        .unwrap_or(0);
    assert_eq!(counted + refused, written, "every match counted, or counted as refused");
    assert!(
        record_keys(&mut connection).len() <= 1,
        "at most one alert for the window"
    );
    stop_gracefully(police);
}
