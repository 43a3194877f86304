//! Poison entries and entries delivered too often go to the dead-letter stream with a
//! reason; entries of other shippers are accepted.

mod common;

use std::time::Duration;

use common::*;

fn xadd(connection: &mut redis::Connection, fields: &[(&str, &str)]) -> String {
    let mut command = redis::cmd("XADD");
    command.arg("logsentinel:logs").arg("*");
    for (name, value) in fields {
        command.arg(*name).arg(*value);
    }
    command.query(connection).unwrap()
}

#[test]
fn poison_and_over_delivered_entries_land_in_the_dead_letter_stream() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    create_group(&mut connection, "police");

    // An entry a crashing consumer keeps failing on: delivered 9 times already.
    let critical = r#"{"id":"x:1:0","timestamp":"2026-11-27T10:00:00Z","level":"CRITICAL","service":"s","host":"h","message":"m"}"#;
    let over_delivered = xadd(&mut connection, &[("v", "1"), ("event", critical)]);
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("police")
        .arg("ghost")
        .arg("STREAMS")
        .arg("logsentinel:logs")
        .arg(">")
        .query(&mut connection)
        .unwrap();
    let _: redis::Value = redis::cmd("XCLAIM")
        .arg("logsentinel:logs")
        .arg("police")
        .arg("ghost")
        .arg(0)
        .arg(&over_delivered)
        .arg("RETRYCOUNT")
        .arg(9)
        .query(&mut connection)
        .unwrap();

    xadd(&mut connection, &[("v", "1"), ("event", "not json")]);
    xadd(&mut connection, &[("v", "7"), ("event", "{}")]);
    xadd(&mut connection, &[("foo", "bar")]);
    xadd(
        &mut connection,
        &[("msg", "kernel panic"), ("severity", "emerg"), ("app", "kernel")],
    );
    xadd(
        &mut connection,
        &[(
            "data",
            r#"{"@timestamp":"2026-11-27T10:00:00Z","log.level":"fatal","message":"disk gone"}"#,
        )],
    );
    let packed = format!("{critical}\n{{broken\n{}", critical.replace("x:1:0", "x:1:1"));
    xadd(&mut connection, &[("v", "1"), ("n", "3"), ("events", &packed)]);

    let police = spawn_police(
        &url,
        "p1",
        &["--claim-idle-ms", "200", "--maintenance-interval-ms", "100"],
    );
    wait_until("dead letters and alerts written", Duration::from_secs(30), || {
        let dead: u64 = redis::cmd("XLEN")
            .arg("logsentinel:dead")
            .query(&mut connection)
            .unwrap();
        dead >= 5 && pending_total(&mut connection) == 0
    });
    stop_gracefully(police);

    let dead = read_stream(&mut connection, "logsentinel:dead");
    let reasons: Vec<&str> = dead.iter().map(|(_, fields)| fields["reason"].as_str()).collect();
    assert_eq!(dead.len(), 5, "dead letters: {reasons:?}");
    let expected_reasons = [
        "delivered 10 times, more than max_deliveries=5",
        "malformed event",
        "unsupported encoding version \"7\"",
        "no message field",
        "malformed event",
    ];
    for expected in expected_reasons {
        assert!(
            reasons.iter().any(|reason| reason.starts_with(expected)),
            "no dead letter for {expected:?} in {reasons:?}"
        );
    }
    let (_, over_delivered_letter) = dead
        .iter()
        .find(|(_, fields)| fields["reason"].starts_with("delivered"))
        .unwrap();
    assert_eq!(over_delivered_letter["entry"], over_delivered);
    assert!(over_delivered_letter["raw"].contains("x:1:0"), "raw fields are kept");
    assert_eq!(over_delivered_letter["source"], "logsentinel:logs");

    // The over-delivered entry raised nothing; the foreign entries and the two good events
    // of the packed entry did.
    let alerts = read_stream(&mut connection, "logsentinel:alerts");
    let alerted: Vec<String> = alerts
        .iter()
        .map(|(_, fields)| {
            let alert: serde_json::Value = serde_json::from_str(&fields["alert"]).unwrap();
            alert["event"]["message"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(alerts.len(), 4, "alerts: {alerted:?}");
    assert!(alerted.contains(&"kernel panic".to_string()));
    assert!(alerted.contains(&"disk gone".to_string()));
    let stats = counters(&mut connection, "logsentinel:logs:stats");
    assert_eq!(stats.get("dead"), Some(&5));
    assert_eq!(stats.get("events"), Some(&4));
}

#[test]
fn entries_that_cannot_be_read_whole_are_dead_lettered_whole() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    create_group(&mut connection, "police");
    let critical = |id: &str, message: &str| {
        format!(
            r#"{{"id":"{id}","timestamp":"2026-11-27T10:00:00Z","level":"CRITICAL","service":"s","host":"h","message":"{message}"}}"#
        )
    };

    let both = xadd(
        &mut connection,
        &[
            ("v", "1"),
            ("event", &critical("both:1:0", "m")),
            ("n", "1"),
            ("events", &critical("both:1:1", "m")),
        ],
    );
    let cut_short = format!("{}\n{}", critical("short:1:0", "m"), critical("short:1:1", "m"));
    let short = xadd(&mut connection, &[("v", "1"), ("n", "3"), ("events", &cut_short)]);
    // Over the police's default cap of 16 MiB.
    let huge_message = "x".repeat(17 << 20);
    let huge = xadd(
        &mut connection,
        &[("v", "1"), ("event", &critical("huge:1:0", &huge_message))],
    );
    xadd(&mut connection, &[("v", "1"), ("event", &critical("good:1:0", "m"))]);

    let police = spawn_police(&url, "p1", &[]);
    wait_until("three dead letters, nothing pending", Duration::from_secs(60), || {
        let dead: u64 = redis::cmd("XLEN")
            .arg("logsentinel:dead")
            .query(&mut connection)
            .unwrap();
        dead >= 3 && pending_total(&mut connection) == 0
    });
    stop_gracefully(police);

    let dead = read_stream(&mut connection, "logsentinel:dead");
    assert_eq!(
        dead.len(),
        3,
        "{:?}",
        dead.iter().map(|(_, fields)| &fields["reason"]).collect::<Vec<_>>()
    );
    let letter = |entry_id: &str| {
        &dead
            .iter()
            .find(|(_, fields)| fields["entry"] == entry_id)
            .unwrap_or_else(|| panic!("no dead letter for entry {entry_id}"))
            .1
    };
    assert_eq!(
        letter(&both)["reason"],
        "entry v=1 has both an event and an events field"
    );
    assert!(letter(&both)["raw"].contains("both:1:1"), "raw fields are kept");
    assert_eq!(
        letter(&short)["reason"],
        "entry v=1 says n=3 but its events field holds 2 lines"
    );
    let huge_letter = letter(&huge);
    assert!(
        huge_letter["reason"].starts_with("entry of 17825")
            && huge_letter["reason"].contains("max_entry_bytes=16777216"),
        "{}",
        huge_letter["reason"]
    );
    assert!(
        huge_letter["raw"].len() < 5000,
        "raw of {} bytes",
        huge_letter["raw"].len()
    );
    assert!(
        huge_letter["raw"].contains("huge:1:0"),
        "the start of the entry is kept"
    );

    // Only the good entry raised an alert: nothing of the rejected entries was half-read.
    let alerts = read_stream(&mut connection, "logsentinel:alerts");
    let alert_ids: Vec<&str> = alerts.iter().map(|(_, fields)| fields["id"].as_str()).collect();
    assert_eq!(alert_ids, vec!["good:1:0/critical"]);
    let stats = counters(&mut connection, "logsentinel:logs:stats");
    assert_eq!(stats.get("dead"), Some(&3));
    assert_eq!(stats.get("events"), Some(&1));
}
