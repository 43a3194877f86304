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

/// A syslog agent listening on TCP only, its log in `log_file`.
fn spawn_tcp_agent(url: &str, address: &str, extra: &[&str], log_file: &std::path::Path) -> std::process::Child {
    let mut args = vec!["--source", "syslog", "--syslog-tcp", address];
    args.extend_from_slice(extra);
    let agent = spawn_agent_logging(url, "syslog-agent", &args, log_file);
    // Read from the log, not probed by connecting: a probe would take a connection.
    wait_until("the agent listening", Duration::from_secs(20), || {
        log_lines_with(log_file, "syslog listening") > 0
    });
    agent
}

/// Reads until the peer closes; the deadline only guards against a hang.
fn wait_for_close(stream: &mut std::net::TcpStream) {
    use std::io::Read;
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buffer = [0u8; 64];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(error) => panic!("the agent did not close the connection: {error}"),
        }
    }
}

#[test]
fn tcp_framing_keeps_digit_lines_cuts_huge_ones_and_skips_bad_counts() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    let address = free_address();
    let dir = tempfile::tempdir().unwrap();
    let log_file = dir.path().join("agent.log");
    let agent = spawn_tcp_agent(&url, &address, &[], &log_file);

    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    stream.write_all(b"2024-05-01 12:00:00 CRITICAL disk full\n").unwrap();
    stream.write_all(b"<11>huge ").unwrap();
    let block = vec![b'z'; 1 << 20];
    for _ in 0..50 {
        stream.write_all(&block).unwrap();
    }
    stream
        .write_all(b"\n99999999 <13>a count far over the limit\n")
        .unwrap();
    let octet_message = b"<14>1 - host app - - - octet counted";
    stream
        .write_all(format!("{} ", octet_message.len()).as_bytes())
        .unwrap();
    stream.write_all(octet_message).unwrap();
    stream
        .write_all(b"77777777 <13>another bad count\nafter the errors\n")
        .unwrap();
    drop(stream);

    wait_until("four events", Duration::from_secs(60), || {
        stream_length(&mut connection) >= 4
    });
    let peak_rss_kib = peak_rss_kib(agent.id());
    let summary = stop_and_summarise(agent);
    assert!(
        peak_rss_kib < 100 * 1024,
        "peak RSS {peak_rss_kib} KiB after a 50 MB line"
    );
    assert_eq!(summary.events, 4);
    assert_eq!(summary.raw["truncated_messages"], 1);
    assert_eq!(summary.raw["framing_errors"], 2);
    assert_eq!(
        log_lines_with(&log_file, "octet count over the line limit"),
        1,
        "logged once per connection"
    );
    let events = stream_events(&mut connection);
    assert_eq!(events.len(), 4);
    assert_eq!(events[0]["message"], "2024-05-01 12:00:00 CRITICAL disk full");
    assert_eq!(events[0]["level"], "CRITICAL");
    assert_eq!(events[1]["extra"]["truncated"], "true");
    assert!(events[1]["message"].as_str().unwrap().len() <= 1 << 20);
    assert_eq!(events[1]["level"], "ERROR");
    assert_eq!(events[2]["message"], "octet counted");
    assert_eq!(events[2]["service"], "app");
    assert_eq!(events[3]["message"], "after the errors");
}

#[test]
fn tcp_connections_over_the_limit_are_closed_and_counted() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    let address = free_address();
    let dir = tempfile::tempdir().unwrap();
    let log_file = dir.path().join("agent.log");
    let agent = spawn_tcp_agent(&url, &address, &["--syslog-max-connections", "3"], &log_file);
    // Three connections, each known to be taken once its message is through.
    let mut held = Vec::new();
    for number in 0..3 {
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        stream.write_all(format!("held {number}\n").as_bytes()).unwrap();
        held.push(stream);
        wait_until("the message of the held connection", Duration::from_secs(20), || {
            stream_length(&mut connection) > number
        });
    }
    let mut refused = std::net::TcpStream::connect(&address).unwrap();
    let _ = refused.write_all(b"never read\n");
    wait_for_close(&mut refused);
    drop(held);
    // Permits come back as the agent sees the held connections close.
    wait_until("a connection taken again", Duration::from_secs(20), || {
        let Ok(mut stream) = std::net::TcpStream::connect(&address) else {
            return false;
        };
        let _ = stream.write_all(b"taken again\n");
        drop(stream);
        stream_messages(&mut connection)
            .iter()
            .any(|message| message == "taken again")
    });
    let summary = stop_and_summarise(agent);
    assert!(summary_count(&summary, "refused_connections") >= 1, "{:?}", summary.raw);
    assert!(
        !stream_messages(&mut connection)
            .iter()
            .any(|message| message == "never read")
    );
}

#[test]
fn an_idle_tcp_connection_is_closed() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    let address = free_address();
    let dir = tempfile::tempdir().unwrap();
    let log_file = dir.path().join("agent.log");
    let agent = spawn_tcp_agent(&url, &address, &["--syslog-idle-timeout-ms", "200"], &log_file);
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    stream.write_all(b"then silence\n").unwrap();
    wait_for_close(&mut stream);
    assert_eq!(stream_messages(&mut connection), ["then silence"]);
    let summary = stop_and_summarise(agent);
    assert!(
        summary_count(&summary, "idle_connections_closed") >= 1,
        "{:?}",
        summary.raw
    );
}

#[test]
fn out_of_file_descriptors_the_accept_loop_backs_off_and_http_still_answers() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let syslog_address = free_address();
    let http_address = free_address();
    let dir = tempfile::tempdir().unwrap();
    let log_file = dir.path().join("agent.log");
    let agent_command = format!(
        "ulimit -n 40; exec {} --redis-url {url} agent --agent-id fd-agent --summary-json \
         --source syslog,http --syslog-tcp {syslog_address} --http-listen {http_address}",
        env!("CARGO_BIN_EXE_logsentinel")
    );
    let agent = std::process::Command::new("sh")
        .args(["-c", &agent_command])
        .env("LOGSENTINEL_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_file).unwrap())
        .spawn()
        .unwrap();
    let health = |address: &str| {
        let output = Command::new("curl")
            .args(["-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("http://{address}/health"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout) == "200"
    };
    wait_until("the agent answering HTTP", Duration::from_secs(20), || {
        health(&http_address)
    });

    // More connections than the agent has descriptors: its accepts start failing.
    let mut clients = Vec::new();
    for _ in 0..60 {
        clients.push(std::net::TcpStream::connect(&syslog_address).unwrap());
    }
    wait_until("the failing accept logged", Duration::from_secs(20), || {
        log_lines_with(&log_file, "accept failed") > 0
    });
    // Not a synchronisation: the window in which a loop spinning on the failing accept
    // would write its lines (millions per second before it backed off).
    std::thread::sleep(Duration::from_secs(1));
    let log_lines_while_failing = log_lines_with(&log_file, "");
    drop(clients);
    wait_until("HTTP answering again", Duration::from_secs(60), || {
        health(&http_address)
    });
    let summary = stop_and_summarise(agent);
    assert_eq!(log_lines_with(&log_file, "accept failed"), 1, "logged once per streak");
    assert!(
        log_lines_while_failing < 50,
        "{log_lines_while_failing} log lines while out of file descriptors"
    );
    assert!(summary_count(&summary, "accept_errors") >= 1, "{:?}", summary.raw);
}

#[test]
fn syslog_over_tls() {
    let redis = TestRedis::start(&[]);
    let url = redis.url();
    let mut connection = redis.connection();
    let address = free_address();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed_certificate(dir.path());
    let log_file = dir.path().join("agent.log");
    let agent = spawn_tcp_agent(
        &url,
        &address,
        &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()],
        &log_file,
    );
    // openssl s_client as the sender: ends at the end of its input.
    let mut sender = Command::new("openssl")
        .args(["s_client", "-quiet", "-no_ign_eof", "-connect", &address, "-CAfile"])
        .arg(&cert)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the TLS tests need the openssl command");
    sender
        .stdin
        .take()
        .unwrap()
        .write_all(b"<10>1 2026-11-27T10:00:00Z host auth - - - over tls\n")
        .unwrap();
    assert!(sender.wait().unwrap().success(), "openssl s_client failed");
    wait_until("the message over TLS", Duration::from_secs(20), || {
        stream_length(&mut connection) == 1
    });
    // A plain-text sender is not taken for a message.
    let mut plain = std::net::TcpStream::connect(&address).unwrap();
    let _ = plain.write_all(b"<10>plain text\n");
    wait_for_close(&mut plain);
    let summary = stop_and_summarise(agent);
    assert_eq!(summary.events, 1);
    assert_eq!(stream_messages(&mut connection), ["over tls"]);
    assert_eq!(stream_events(&mut connection)[0]["level"], "CRITICAL");
}
