//! Edges of the rule state: a window closes only once its input is settled (a backlog, a
//! pending entry), a lease holder paused past its lease is fenced when it wakes, and an
//! event carried by two entries (an agent's re-send) counts once, in Redis as in the
//! reference model.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::process::Child;
use std::sync::Arc;
use std::time::Duration;

use common::rules::*;
use common::*;
use logsentinel::broker::keys::Keys;
use logsentinel::broker::lease::Lease;
use logsentinel::event::{self, Level};
use logsentinel::options::Transport;
use logsentinel::police::clock::Clock;
use logsentinel::police::rules::model::Model;
use logsentinel::police::rules::{RuleSet, group, window};
use logsentinel::police::settle::{self, Outcome};

fn event_json(id: &str, ts_ms: i64, service: &str) -> String {
    serde_json::json!({
        "id": id,
        "timestamp": window::rfc3339(ts_ms),
        "level": "INFO",
        "service": service,
        "host": "h1",
        "message": "m",
    })
    .to_string()
}

/// XADDs one entry of `events` (v1; one event, or a pack) with id `<id_ms>-*`: an entry
/// that reached Redis at `id_ms`, whenever the test writes it.
fn xadd_at(connection: &mut redis::Connection, id_ms: i64, events: &[String]) -> String {
    let mut command = redis::cmd("XADD");
    command.arg(STREAM).arg(format!("{id_ms}-*")).arg("v").arg("1");
    if let [only] = events {
        command.arg("event").arg(only);
    } else {
        command.arg("n").arg(events.len()).arg("events").arg(events.join("\n"));
    }
    command.query(connection).expect("XADD")
}

fn set(connection: &mut redis::Connection, key: &str, value: &str) {
    let _: () = redis::cmd("SET").arg(key).arg(value).query(connection).expect("SET");
}

fn clock(redis: &TestRedis, rules: &RuleSet, source: Transport, owner: &str) -> Clock {
    let keys = Keys::default();
    Clock {
        lease: Lease {
            key: keys.rules_lease(),
            owner: owner.into(),
        },
        keys,
        redis_url: redis.url(),
        source,
        rules: tokio::sync::watch::channel(Arc::new(rules.clone())).1,
        alert_dedup_ttl_s: 600,
    }
}

/// Entries as consumer `consumer` reads them, turned into outcomes under `rules`.
fn read_as(
    connection: &mut redis::Connection,
    consumer: &str,
    rules: &RuleSet,
) -> Vec<(Outcome, logsentinel::police::rules::plan::ItemPlan)> {
    let reply: redis::Value = redis::cmd("XREADGROUP")
        .arg(&["GROUP", "police", consumer, "COUNT", "1000", "STREAMS", STREAM, ">"])
        .query(connection)
        .unwrap();
    type Entries = Vec<(String, Vec<(String, String)>)>;
    let streams: Vec<(String, Entries)> = redis::from_redis_value(reply).unwrap();
    let now_ms = window::now_ms();
    streams
        .into_iter()
        .flat_map(|(_, entries)| entries)
        .map(|(id, fields)| {
            let decoded = event::decode_entry(&id, &fields, Level::Unknown);
            let plan = rules.evaluate(decoded.events.clone(), now_ms);
            (Outcome::evaluate(id, decoded, rules, now_ms), plan)
        })
        .collect()
}

/// A backlog written while no police runs, older than the lateness when the police starts:
/// the clock closes the window only after the backlog is settled, so the group that did
/// speak (at the end of the backlog) does not flatline, the one that did not does, and so
/// does the speaking group in the next window, where it really went silent.
#[test]
fn a_backlog_older_than_the_lateness_raises_no_false_flatline() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    let dir = tempfile::tempdir().unwrap();
    let window_ms = 2_000i64;
    let rules = write_rules(
        dir.path(),
        "max_lateness = \"1s\"\n[[rules]]\nname = \"quiet\"\ntype = \"flatline\"\n\
         filter = { field = \"service\", in = [\"api\", \"db\"] }\ngroup_by = [\"service\"]\n\
         threshold = 3\nwindow = \"2s\"\nexpect = [\"api\", \"db\"]\n",
    );
    // W closed (W + window + lateness <= now) before the police starts, and so did W + window.
    let closed = window::window_start(window::now_ms(), window_ms as u64) - 3 * window_ms;
    // The clock had done the window before W when the police stopped.
    set(
        &mut connection,
        &format!("{RULES}clock:quiet"),
        &(closed - window_ms).to_string(),
    );
    // Entries that reached Redis within W, while no police ran: 20,000 of other services
    // first, api's three at the very end.
    let mut pipeline = redis::pipe();
    for n in 0..20_000i64 {
        let id = format!("filler:00000000000000aa:{n}");
        pipeline
            .cmd("XADD")
            .arg(STREAM)
            .arg(format!("{}-*", closed + 1))
            .arg("v")
            .arg("1")
            .arg("event")
            .arg(event_json(&id, closed + 1 + n % 1000, "web"))
            .ignore();
    }
    let _: () = pipeline.query(&mut connection).expect("XADD the backlog");
    for n in 0..3 {
        xadd_at(
            &mut connection,
            closed + 1_500,
            &[event_json(
                &format!("api-agent:00000000000000bb:{n}"),
                closed + 1_500 + n,
                "api",
            )],
        );
    }

    let police = spawn_police_with(&url, "p1", &["--rules", &rules], &dir.path().join("p1.log"));
    let db_id = format!("quiet/{}/{closed}", gk("db"));
    let api_false_id = format!("quiet/{}/{closed}", gk("api"));
    let api_next_id = format!("quiet/{}/{}", gk("api"), closed + window_ms);
    wait_until("db flatlines in W, api once", Duration::from_secs(60), || {
        let written = record_keys(&mut connection);
        written.iter().any(|(id, _)| *id == db_id)
            && written.iter().any(|(id, _)| *id == api_next_id || *id == api_false_id)
    });
    assert_eq!(processed_events(&mut connection), 20_003);
    assert_eq!(
        get_integer(&mut connection, &format!("{RULES}count:quiet:{}:{closed}", gk("api"))),
        Some(3),
        "api's three events counted in W"
    );
    let written: Vec<String> = record_keys(&mut connection).into_iter().map(|(id, _)| id).collect();
    assert!(
        !written.contains(&api_false_id),
        "no flatline for api in W: {written:?}"
    );
    assert!(
        written.contains(&api_next_id),
        "api silent in the window after: {written:?}"
    );
    assert_eq!(written.len(), 2, "db once (still firing), api once: {written:?}");
    stop_gracefully(police);
}

/// A flatline rule `quiet` (window 2 s, lateness 1 s, `api` expected) whose clock stands
/// one window before W, `back_ms` before the current window, and api's one event in W read
/// (not settled) by consumer `a`.
struct QuietWindow {
    redis: TestRedis,
    sync: redis::Connection,
    rules: RuleSet,
    closed: i64,
    outcomes: Vec<Outcome>,
}

const QUIET_WINDOW_MS: i64 = 2_000;

fn quiet_window(back_ms: i64, event_id: &str) -> QuietWindow {
    let redis = TestRedis::start(&[]);
    let mut sync = redis.connection();
    create_group(&mut sync, "police");
    let rules = RuleSet::parse(
        "rules.toml",
        "max_lateness = \"1s\"\n[[rules]]\nname = \"quiet\"\ntype = \"flatline\"\ngroup_by = [\"service\"]\n\
         threshold = 1\nwindow = \"2s\"\nexpect = [\"api\"]\n",
    )
    .unwrap();
    let closed = window::window_start(window::now_ms(), QUIET_WINDOW_MS as u64) - back_ms;
    set(
        &mut sync,
        &format!("{RULES}clock:quiet"),
        &(closed - QUIET_WINDOW_MS).to_string(),
    );
    xadd_at(&mut sync, closed + 100, &[event_json(event_id, closed + 100, "api")]);
    let outcomes = read_as(&mut sync, "a", &rules)
        .into_iter()
        .map(|(outcome, _)| outcome)
        .collect();
    QuietWindow {
        redis,
        sync,
        rules,
        closed,
        outcomes,
    }
}

/// The gate and the fence, one script call at a time: a window whose entry is pending (read,
/// not settled) is postponed, and closes once the entry is settled; a tick by a process
/// that no longer holds the lease writes nothing, closes nothing.
#[tokio::test]
async fn the_clock_waits_for_pending_entries_and_is_fenced_without_the_lease() {
    let QuietWindow {
        redis,
        mut sync,
        rules,
        closed,
        outcomes,
    } = quiet_window(3 * QUIET_WINDOW_MS, "api-agent:00000000000000bb:0");
    let stateful = rules.stateful_rules();
    let window_ms = QUIET_WINDOW_MS;
    let mut connection = logsentinel::broker::connect(&redis.url()).await.unwrap();

    // A paused holder: another process holds the lease now.
    set(&mut sync, &format!("{RULES}lease"), "the-new-holder");
    let stale = clock(&redis, &rules, Transport::Stream, "the-old-holder");
    let totals = stale.tick(&mut connection, window::now_ms()).await.unwrap();
    assert!(totals.fenced, "{totals:?}");
    assert_eq!(totals.records_written, 0);
    assert_eq!(
        get_integer(&mut sync, &format!("{RULES}clock:quiet")),
        Some(closed - window_ms),
        "nothing closed"
    );

    // The holder: api's only event is pending on `a`, so W waits (and so do later windows).
    let holder = clock(&redis, &rules, Transport::Stream, "the-new-holder");
    let totals = holder.tick(&mut connection, window::now_ms()).await.unwrap();
    assert!(!totals.fenced);
    assert!(totals.postponed >= 2, "W and the window after: {totals:?}");
    assert!(record_keys(&mut sync).is_empty());

    let keys = Keys::default();
    settle::settle(&mut connection, &target(&keys, "a", &stateful), &outcomes)
        .await
        .unwrap();
    let totals = holder.tick(&mut connection, window::now_ms()).await.unwrap();
    assert_eq!(totals.postponed, 0, "{totals:?}");
    let written: Vec<String> = record_keys(&mut sync).into_iter().map(|(id, _)| id).collect();
    assert!(
        !written.contains(&format!("quiet/{}/{closed}", gk("api"))),
        "api spoke in W: {written:?}"
    );
    assert!(
        written.contains(&format!("quiet/{}/{}", gk("api"), closed + window_ms)),
        "api is silent in the window after: {written:?}"
    );

    // An entry of W arriving after the close is late: the window's outcome is decided.
    xadd_at(
        &mut sync,
        window::now_ms(),
        &[event_json("api-agent:00000000000000bb:1", closed + 200, "api")],
    );
    let outcomes: Vec<Outcome> = read_as(&mut sync, "a", &rules)
        .into_iter()
        .map(|(outcome, _)| outcome)
        .collect();
    let settled = settle::settle(&mut connection, &target(&keys, "a", &stateful), &outcomes)
        .await
        .unwrap();
    assert_eq!(settled.late_matches, 1);
    assert_eq!(
        get_integer(&mut sync, &format!("{RULES}count:quiet:{}:{closed}", gk("api"))),
        Some(1)
    );
}

/// List mode: a window closes once the list and every processing list are empty.
#[tokio::test]
async fn in_list_mode_the_clock_waits_for_the_processing_lists() {
    let redis = TestRedis::start(&[]);
    let mut sync = redis.connection();
    let rules = RuleSet::parse(
        "rules.toml",
        "max_lateness = \"1s\"\n[[rules]]\nname = \"quiet\"\ntype = \"flatline\"\ngroup_by = [\"service\"]\n\
         threshold = 1\nwindow = \"2s\"\nexpect = [\"api\"]\n",
    )
    .unwrap();
    let window_ms = 2_000i64;
    let closed = window::window_start(window::now_ms(), window_ms as u64) - 3 * window_ms;
    set(
        &mut sync,
        &format!("{RULES}clock:quiet"),
        &(closed - window_ms).to_string(),
    );
    set(&mut sync, &format!("{RULES}lease"), "holder");
    let keys = Keys::default();
    let processing = keys.processing_list("slow-police");
    let _: () = redis::cmd("LPUSH")
        .arg(&processing)
        .arg(event_json("x:00000000000000cc:0", closed + 1, "api"))
        .query(&mut sync)
        .unwrap();
    let mut connection = logsentinel::broker::connect(&redis.url()).await.unwrap();
    let holder = clock(&redis, &rules, Transport::List, "holder");
    let totals = holder.tick(&mut connection, window::now_ms()).await.unwrap();
    assert!(totals.postponed >= 1, "an item is in a processing list: {totals:?}");
    assert!(record_keys(&mut sync).is_empty());
    let _: () = redis::cmd("DEL").arg(&processing).query(&mut sync).unwrap();
    let _: () = redis::cmd("LPUSH")
        .arg(&keys.list)
        .arg("an item not taken yet")
        .query(&mut sync)
        .unwrap();
    let totals = holder.tick(&mut connection, window::now_ms()).await.unwrap();
    assert!(totals.postponed >= 1, "an item waits in the list: {totals:?}");
    let _: () = redis::cmd("DEL").arg(&keys.list).query(&mut sync).unwrap();
    let totals = holder.tick(&mut connection, window::now_ms()).await.unwrap();
    assert_eq!(totals.postponed, 0, "{totals:?}");
    assert!(
        record_keys(&mut sync)
            .iter()
            .any(|(id, _)| *id == format!("quiet/{}/{closed}", gk("api")))
    );
}

/// The lease holder stopped (SIGSTOP) past its lease: the other police takes the clock work
/// over; woken (SIGCONT), the old holder is fenced and no record is written twice.
#[test]
fn a_lease_holder_paused_past_its_lease_never_doubles_a_record() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    let dir = tempfile::tempdir().unwrap();
    let rules = write_rules(
        dir.path(),
        "max_lateness = \"0s\"\n[[rules]]\nname = \"quiet\"\ntype = \"flatline\"\ngroup_by = [\"service\"]\n\
         threshold = 1\nwindow = \"1s\"\nexpect = [\"db\"]\n",
    );
    // A short claim idle: an entry delivered to the stopped police is claimed soon.
    let args = ["--rules", rules.as_str(), "--claim-idle", "3s"];
    let mut police: HashMap<String, Child> = HashMap::new();
    for name in ["p1", "p2"] {
        let log = dir.path().join(format!("{name}.log"));
        police.insert(name.to_string(), spawn_police_with(&url, name, &args, &log));
    }
    // db never speaks: it fires once and stays firing.
    let db_prefix = format!("quiet/{}/", gk("db"));
    wait_until("a holder and db's flatline", Duration::from_secs(60), || {
        lease_owner(&mut connection).is_some()
            && record_keys(&mut connection)
                .iter()
                .any(|(id, _)| id.starts_with(&db_prefix))
    });
    let holder = lease_owner(&mut connection).unwrap();
    let holder_name = holder.split('/').next().unwrap().to_string();
    let other = if holder_name == "p1" { "p2" } else { "p1" };
    let paused = police.get(&holder_name).unwrap().id();
    let signal = |name: &str| {
        let status = std::process::Command::new("kill")
            .args([name, &paused.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    };
    signal("-STOP");
    wait_until("the other police takes the lease over", Duration::from_secs(60), || {
        lease_owner(&mut connection).is_some_and(|owner| owner.starts_with(&format!("{other}/")))
    });
    // The new holder closes windows: api, silent after one event, flatlines once (its
    // entry may have gone to the stopped police: the gate waits until it is claimed).
    let api_prefix = format!("quiet/{}/", gk("api"));
    let sent_ms = window::now_ms();
    let mut add = redis.connection();
    xadd_at(
        &mut add,
        sent_ms,
        &[event_json("api-agent:00000000000000dd:0", sent_ms, "api")],
    );
    wait_until("api flatlines after its event", Duration::from_secs(60), || {
        record_keys(&mut connection)
            .iter()
            .any(|(id, _)| id.starts_with(&api_prefix))
    });
    signal("-CONT");
    // Let the woken police run several ticks, then stop both.
    let woke_ms = window::now_ms();
    wait_until("several windows after the wake-up", Duration::from_secs(60), || {
        window::now_ms() > woke_ms + 5_000
    });
    assert!(
        lease_owner(&mut connection).is_some_and(|owner| owner.starts_with(&format!("{other}/"))),
        "the lease stays with the police that took it over"
    );
    let written = record_keys(&mut connection);
    let db_records = written.iter().filter(|(id, _)| id.starts_with(&db_prefix)).count();
    let api_records = written.iter().filter(|(id, _)| id.starts_with(&api_prefix)).count();
    assert_eq!((db_records, api_records), (1, 1), "{written:?}");
    for (_, child) in police {
        stop_gracefully(child);
    }
}

/// The same encoded entry written twice (an agent's re-send), and a pack overlapping
/// another by one event: each event counts once. With N-1 distinct events and a duplicate,
/// a threshold of N does not fire; the reference model agrees.
#[tokio::test]
async fn a_duplicate_entry_counts_its_events_once_as_the_model_does() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut sync = redis.connection();
    let dir = tempfile::tempdir().unwrap();
    let rule_text = "[[rules]]\nname = \"f\"\ntype = \"frequency\"\ngroup_by = [\"service\"]\n\
                     threshold = 5\nwindow = \"1h\"\n";
    let rules_path = write_rules(dir.path(), rule_text);
    let hour = window::window_start(window::now_ms(), 3_600_000);
    let event = |seq: u64| event_json(&format!("web-7:0123456789abcdef:{seq}"), hour + seq as i64, "api");
    let now_ms = window::now_ms();
    // four distinct events: one entry sent twice, a pack of (1, 2) and one of (2, 3)
    xadd_at(&mut sync, now_ms, &[event(0)]);
    xadd_at(&mut sync, now_ms, &[event(0)]);
    xadd_at(&mut sync, now_ms, &[event(1), event(2)]);
    xadd_at(&mut sync, now_ms, &[event(2), event(3)]);
    let police = spawn_police_with(&url, "p1", &["--rules", &rules_path], &dir.path().join("p1.log"));
    wait_until("every entry settled", Duration::from_secs(60), || {
        processed_events(&mut sync) == 6
    });
    let count_key = format!("{RULES}count:f:{}:{hour}", gk("api"));
    assert_eq!(get_integer(&mut sync, &count_key), Some(4), "four distinct events");
    assert!(record_keys(&mut sync).is_empty(), "4 < threshold 5");
    // The fifth distinct event crosses the threshold; its duplicate changes nothing.
    xadd_at(&mut sync, window::now_ms(), &[event(4)]);
    xadd_at(&mut sync, window::now_ms(), &[event(4)]);
    wait_until("the fifth settled", Duration::from_secs(60), || {
        processed_events(&mut sync) == 8
    });
    assert_eq!(get_integer(&mut sync, &count_key), Some(5));
    let fired = format!("f/{}/{hour}", gk("api"));
    assert_eq!(record_keys(&mut sync), [(fired.clone(), "firing".to_string())]);
    stop_gracefully(police);

    // The model, fed the same entries in order, counts and fires the same.
    let rules = RuleSet::parse("rules.toml", rule_text).unwrap();
    let mut model = Model::new(&rules);
    let mut modelled = Vec::new();
    for (id, fields) in read_stream(&mut sync, STREAM) {
        let fields: Vec<(String, String)> = fields.into_iter().collect();
        let decoded = event::decode_entry(&id, &fields, Level::Unknown);
        let plan = rules.evaluate(decoded.events, window::now_ms());
        modelled.extend(
            model
                .apply(plan, window::now_ms())
                .into_iter()
                .map(|alert| (alert.alert_id, alert.count)),
        );
    }
    assert_eq!(modelled, [(fired, 5)]);
}

/// A close postponed past the life of a window's counts must not read an expired count as
/// 0: the group that spoke in W is passed over, not flatlined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_postponed_past_the_counts_life_raises_nothing_for_a_group_that_spoke() {
    // W lies 10 min + 5 windows back: its counts (W + 3 windows + lateness + 10 min, the
    // hold of windows the clock closes) are past their life
    let QuietWindow {
        redis,
        mut sync,
        rules,
        closed,
        outcomes,
    } = quiet_window(5 * QUIET_WINDOW_MS + 600_000, "api-agent:00000000000000cc:0");
    let stateful = rules.stateful_rules();
    let mut connection = logsentinel::broker::connect(&redis.url()).await.unwrap();
    let keys = Keys::default();
    settle::settle(&mut connection, &target(&keys, "a", &stateful), &outcomes)
        .await
        .unwrap();
    // the count of W expires while the close waits (held input), as a long wait makes it
    let count_key = format!("{RULES}count:quiet:{}:{closed}", gk("api"));
    let removed: i64 = redis::cmd("DEL").arg(&count_key).query(&mut sync).unwrap();
    assert_eq!(removed, 1, "the settle counted api in W under {count_key}");

    let holder = clock(&redis, &rules, Transport::Stream, "the-holder");
    set(&mut sync, &format!("{RULES}lease"), "the-holder");
    let totals = holder.tick(&mut connection, window::now_ms()).await.unwrap();
    assert!(!totals.fenced, "{totals:?}");
    assert!(totals.expired >= 1, "W passed over: {totals:?}");
    let written: Vec<String> = record_keys(&mut sync).into_iter().map(|(id, _)| id).collect();
    assert!(
        !written.contains(&format!("quiet/{}/{closed}", gk("api"))),
        "api spoke in W, its expired count is not a 0: {written:?}"
    );
}

/// The dedup bits go as runs: a pack crossing a bitmap chunk and longer than one
/// operation, the same pack again in the same call, an overlapping pack, an event twice
/// in one entry and events that count in only some of their entry's updates all count
/// once, as the model counts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_of_bits_across_chunks_and_entries_count_each_event_once_as_the_model_does() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut sync = redis.connection();
    let dir = tempfile::tempdir().unwrap();
    let rule_text = "[[rules]]\nname = \"f\"\ntype = \"frequency\"\ngroup_by = [\"service\"]\n\
                     threshold = 40\nwindow = \"1h\"\n\n\
                     [[rules]]\nname = \"h\"\ntype = \"frequency\"\nthreshold = 100000\nwindow = \"1h\"\n";
    let rules_path = write_rules(dir.path(), rule_text);
    let hour = window::window_start(window::now_ms(), 3_600_000);
    let service = |seq: u64| if seq.is_multiple_of(2) { "api" } else { "db" };
    let event = |run: &str, seq: u64| event_json(&format!("{run}:{seq}"), hour + (seq % 1000) as i64, service(seq));
    let (a, b) = ("web-7:0123456789abcdef", "web-8:0123456789abcdef");
    let crossing: Vec<String> = (65_500..65_600).map(|seq| event(a, seq)).collect();
    let overlapping: Vec<String> = (65_590..65_611).chain([7, 7]).map(|seq| event(a, seq)).collect();
    let other_run: Vec<String> = (0..60).map(|seq| event(b, seq)).collect();
    let now_ms = window::now_ms();
    xadd_at(&mut sync, now_ms, &crossing);
    xadd_at(&mut sync, now_ms, &crossing);
    xadd_at(&mut sync, now_ms, &overlapping);
    xadd_at(&mut sync, now_ms, &other_run);
    xadd_at(&mut sync, now_ms, &[event(a, 65_535)]);
    let total = 2 * crossing.len() + overlapping.len() + other_run.len() + 1;
    let police = spawn_police_with(&url, "p1", &["--rules", &rules_path], &dir.path().join("p1.log"));
    wait_until("every entry settled", Duration::from_secs(60), || {
        processed_events(&mut sync) == total as u64
    });
    stop_gracefully(police);

    let mut distinct: BTreeSet<(&str, u64)> = BTreeSet::new();
    distinct.extend((65_500..65_611).map(|seq| (a, seq)));
    distinct.insert((a, 7));
    distinct.extend((0..60).map(|seq| (b, seq)));
    for name in ["api", "db"] {
        let expected = distinct.iter().filter(|(_, seq)| service(*seq) == name).count() as i64;
        let count_key = format!("{RULES}count:f:{}:{hour}", gk(name));
        assert_eq!(get_integer(&mut sync, &count_key), Some(expected), "{name}");
    }
    let all_key = format!("{RULES}count:h:{}:{hour}", group::key_of(std::iter::empty::<&str>()).id);
    assert_eq!(get_integer(&mut sync, &all_key), Some(distinct.len() as i64));

    // The model, fed the same entries in order, counts and fires the same.
    let rules = RuleSet::parse("rules.toml", rule_text).unwrap();
    let mut model = Model::new(&rules);
    let mut modelled = Vec::new();
    for (id, fields) in read_stream(&mut sync, STREAM) {
        let fields: Vec<(String, String)> = fields.into_iter().collect();
        let decoded = event::decode_entry(&id, &fields, Level::Unknown);
        let plan = rules.evaluate(decoded.events, window::now_ms());
        modelled.extend(
            model
                .apply(plan, window::now_ms())
                .into_iter()
                .map(|alert| alert.alert_id),
        );
    }
    let mut written: Vec<String> = record_keys(&mut sync).into_iter().map(|(id, _)| id).collect();
    written.sort();
    modelled.sort();
    assert_eq!(written, modelled);
    assert_eq!(written.len(), 2, "api and db both cross 40: {written:?}");
}
