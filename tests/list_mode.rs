//! List mode (`log_queue`): batched LPUSH, reliable BLMOVE consumption, kill -9 recovery.

mod common;

use std::time::Duration;

use common::*;

fn list_length(connection: &mut redis::Connection, key: &str) -> u64 {
    redis::cmd("LLEN").arg(key).query(connection).unwrap()
}

#[test]
fn list_mode_round_trip_survives_kill_nine_of_the_consumer() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    let police_args = [
        "--source",
        "list",
        "--key",
        "log_queue",
        "--claim-idle-ms",
        "1000",
        "--maintenance-interval-ms",
        "200",
        "--read-count",
        "100",
    ];
    let agent = spawn_agent(
        &url,
        "list-agent",
        &[
            "--sink",
            "list",
            "--key",
            "log_queue",
            "--count",
            "30000",
            "--rate",
            "6000",
        ],
    );
    let mut consumer = spawn_police(&url, "lp1", &police_args);
    // Killed and restarted under the same name: it re-processes its processing list. At
    // least three kills, more (up to 25) until one caught items in hand: whether a kill
    // lands mid-batch is up to the scheduler.
    let mut kills_mid_batch = 0;
    let mut round = 0;
    while round < 3 || (kills_mid_batch == 0 && round < 25) {
        std::thread::sleep(Duration::from_millis(300));
        consumer.kill().unwrap();
        consumer.wait().unwrap();
        if list_length(&mut connection, "log_queue:processing:lp1") > 0 {
            kills_mid_batch += 1;
        }
        consumer = spawn_police(&url, "lp1", &police_args);
        round += 1;
    }
    // Killed for good: another consumer gives its items back to the list once its
    // heartbeat expires.
    std::thread::sleep(Duration::from_millis(600));
    consumer.kill().unwrap();
    consumer.wait().unwrap();
    let items_left_by_the_dead = list_length(&mut connection, "log_queue:processing:lp1");
    let survivor = spawn_police(&url, "lp2", &police_args);

    let summary = agent_summary(agent);
    wait_until("every list item processed", Duration::from_secs(60), || {
        counters(&mut connection, "log_queue:stats").get("events") == Some(&summary.events)
    });
    assert!(
        kills_mid_batch > 0,
        "{round} kills never caught the consumer with items in hand"
    );
    eprintln!("{kills_mid_batch} of {round} kills mid-batch; {items_left_by_the_dead} items left by the dead consumer");
    assert_eq!(list_length(&mut connection, "log_queue"), 0);
    assert_eq!(list_length(&mut connection, "log_queue:processing:lp1"), 0);
    assert_eq!(list_length(&mut connection, "log_queue:processing:lp2"), 0);
    assert_alerts_exactly_once(&mut connection, summary.alerting_events);
    stop_gracefully(survivor);

    let status = status_json(&url);
    assert_eq!(status["list"]["key"], "log_queue");
    assert_eq!(status["list"]["processed"]["events"], summary.events);
}

#[test]
fn list_items_from_other_shippers_and_garbage() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    let items = [
        r#"{"level":"CRITICAL","message":"original design log","service":"legacy","timestamp":"2026-11-27T10:00:00Z"}"#,
        r#"{"msg":"fine","lvl":"info"}"#,
        "plain garbage",
    ];
    let _: u64 = redis::cmd("LPUSH")
        .arg("log_queue")
        .arg(&items[..])
        .query(&mut connection)
        .unwrap();
    let police = spawn_police(&url, "lp1", &["--source", "list"]);
    wait_until("the list drained", Duration::from_secs(30), || {
        counters(&mut connection, "log_queue:stats").get("dead") == Some(&1)
            && counters(&mut connection, "log_queue:stats").get("events") == Some(&2)
    });
    stop_gracefully(police);
    assert_alerts_exactly_once(&mut connection, 1);
    let dead = read_stream(&mut connection, "logsentinel:dead");
    assert_eq!(dead.len(), 1);
    assert!(dead[0].1["reason"].starts_with("malformed JSON"), "{:?}", dead[0].1);
    assert_eq!(dead[0].1["raw"], "\"plain garbage\"");
    assert_eq!(dead[0].1["source"], "log_queue");
}
