//! `agent --source syslog`: real `logger` (util-linux) sending RFC 3164 and RFC 5424 over
//! UDP and TCP (newline and octet-counting framing) to a real agent.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn logger(port: u16, args: &[&str], message: &str) {
    let status = Command::new("logger")
        .args(["-n", "127.0.0.1", "-P", &port.to_string()])
        .args(args)
        .arg(message)
        .status()
        .expect("this test needs logger (util-linux, Debian package bsdutils)");
    assert!(status.success(), "logger {args:?} failed");
}

#[test]
fn logger_over_udp_and_tcp_in_both_formats() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    let port = logsentinel::local_redis::free_loopback_port().unwrap();
    let address = format!("127.0.0.1:{port}");
    let police = spawn_police(&url, "p1", &[]);
    let agent = logsentinel(&url)
        .args([
            "agent",
            "--source",
            "syslog",
            "--syslog-udp",
            &address,
            "--syslog-tcp",
            &address,
        ])
        .args(["--agent-id", "syslog-agent", "--summary-json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The agent is listening once a TCP connection is accepted.
    wait_until("the agent listening", Duration::from_secs(20), || {
        std::net::TcpStream::connect(&address).is_ok()
    });

    logger(
        port,
        &["-d", "--rfc3164", "-p", "auth.crit", "-t", "su"],
        "udp rfc3164 su failed",
    );
    logger(
        port,
        &[
            "-d",
            "--rfc5424",
            "-p",
            "local4.err",
            "-t",
            "billing",
            "--msgid",
            "ID47",
        ],
        "udp rfc5424 charge failed",
    );
    logger(
        port,
        &["-T", "--rfc5424", "-p", "user.warning", "-t", "web"],
        "tcp newline slow request",
    );
    logger(
        port,
        &["-T", "--octet-count", "--rfc5424", "-p", "daemon.emerg", "-t", "kernel"],
        "tcp octet panic",
    );
    let mut plain = std::net::TcpStream::connect(&address).unwrap();
    plain.write_all(b"not syslog at all\n").unwrap();
    drop(plain);

    wait_until("five events in the stream", Duration::from_secs(20), || {
        redis::cmd("XLEN")
            .arg("logsentinel:logs")
            .query::<u64>(&mut connection)
            .unwrap()
            == 5
    });
    sigterm(&agent);
    let summary = agent_summary(agent);
    assert_eq!(summary.events, 5);
    assert_eq!(summary.alerting_events, 2);

    let events = stream_events(&mut connection);
    let by_message = |message: &str| {
        events
            .iter()
            .find(|event| event["message"] == message)
            .unwrap_or_else(|| panic!("no event {message:?} in {events:?}"))
            .clone()
    };
    let bsd = by_message("udp rfc3164 su failed");
    assert_eq!(
        (bsd["level"].as_str(), bsd["service"].as_str()),
        (Some("CRITICAL"), Some("su"))
    );
    assert_eq!(bsd["extra"]["facility"], "auth");
    let structured = by_message("udp rfc5424 charge failed");
    assert_eq!(structured["level"], "ERROR");
    assert_eq!(structured["service"], "billing");
    assert_eq!(structured["extra"]["msgid"], "ID47");
    assert_eq!(structured["extra"]["facility"], "local4");
    assert_eq!(by_message("tcp newline slow request")["level"], "WARNING");
    assert_eq!(by_message("tcp octet panic")["level"], "EMERGENCY");
    let plain_event = by_message("not syslog at all");
    assert_eq!(plain_event["level"], "UNKNOWN");
    assert_eq!(plain_event["host"], "127.0.0.1");

    wait_until("the police processed all five", Duration::from_secs(20), || {
        counters(&mut connection, "logsentinel:logs:stats").get("events") == Some(&5)
    });
    assert_alerts_exactly_once(&mut connection, 2);
    stop_gracefully(police);
}

#[test]
fn syslog_address_in_use_or_invalid_is_a_clear_error() {
    let (code, stderr) = {
        let output = logsentinel("redis://127.0.0.1:1")
            .args(["agent", "--source", "syslog", "--syslog-udp", "nowhere"])
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("syslog_udp"), "{stderr}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let output = logsentinel("redis://127.0.0.1:1")
        .args(["agent", "--source", "syslog", "--syslog-tcp", &address])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot listen for syslog"), "{stderr}");
}
